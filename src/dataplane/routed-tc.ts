// Routed mode, the kernel side (bpf/routed.c, layouts in bpf/routed.h, docs/routed.md):
// loads patu_routed once and pins it with its maps under <pinRoot>/routed,
// attaches it to the tcx ingress of each routed pod's host veth, and keeps the maps:
// pod address -> host veth (+ the pod's MAC) for the redirect into pods, and the veths
// with NetworkPolicy programs (no redirect from or into them).
//
// The CNI plugin itself calls this (routed pods must come up without the agent), so
// the first routed ADD on a node loads the object; every writer holds the pin-root
// lock. Ifindexes are per netns: one pin root serves the veths of one netns.
import { existsSync, statSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { BpfObject, BpfProgram } from '../kernel/bpf/object.js';
import { TypedMap, PerCpuCounters, structCodec, bytes, ipv4, u16, u32, u64 } from '../kernel/bpf/map.js';
import { tcxAttach, tcxDetachId, tcxQuery } from '../kernel/bpf/tcx.js';
import { ensurePinDir, withPinDirLock, assertPinRoot, type BpffsOptions } from '../kernel/bpf/pins.js';
import { parseIp } from '../net/cidr.js';
import { PatuError } from '../errors.js';
import { bpfObjectPath } from '../home.js';
import { bytesToMac, macToBytes } from '../kernel/netlink/message.js';

export const ROUTED_PROGRAM = 'patu_routed';
export { ROUTED_GATEWAY4, ROUTED_GATEWAY6, ROUTED_GATEWAY_MAC } from './routed-gateway.js';

// Mirrors of bpf/routed.h (test/unit/bpf-layout.test.ts checks them against the BTF).
export interface RoutedPodC { ifindex: number; mac: Buffer; pad: number }
const routedPodC = structCodec<RoutedPodC>({ ifindex: u32, mac: bytes(6), pad: u16 });
const ip6C = structCodec<{ addr: Buffer }>({ addr: bytes(16) });

export const ROUTED_MAP_CODECS = {
  patu_routed_pods: { key: ipv4, value: routedPodC },
  patu_routed_pods6: { key: ip6C, value: routedPodC },
  patu_routed_nopeer: { key: u32, value: u32 },
  patu_routed_cfg: { key: u32, value: u32 },
  patu_routed_stats: { key: u32, value: u64 },
} as const;

/** patu_routed_stats indexes (bpf/routed.h PATU_ROUTED_*). */
export const ROUTED_STATS = ['arp', 'nd', 'redirected', 'stack', 'policy', 'ttl'] as const;
export type RoutedStats = Record<(typeof ROUTED_STATS)[number], bigint>;

export const routedPinDir = (pinRoot: string): string => join(assertPinRoot(pinRoot), 'routed');
const progPin = (dir: string): string => join(dir, 'prog_from_pod');
const MAP_NAMES = Object.keys(ROUTED_MAP_CODECS) as (keyof typeof ROUTED_MAP_CODECS)[];

export class RoutedTcError extends PatuError {
  readonly code = 'ROUTED_TC';
}

export interface RoutedTcOptions extends BpffsOptions {
  /** Production: DEFAULTS.pinRoot. */
  pinRoot: string;
  /** Compiled bpf/routed.c (default: build/bpf/routed.o of this tree). */
  objectPath?: string;
}

const ip6Key = (ip: string): { addr: Buffer } => {
  const v = parseIp(ip).value;
  const b = Buffer.alloc(16);
  b.writeBigUInt64BE(v >> 64n, 0);
  b.writeBigUInt64BE(v & 0xffffffffffffffffn, 8);
  return { addr: b };
};

/** A pod as the maps hold it. */
export interface RoutedPod { ip: string; ifindex: number; mac: string }

export class RoutedTc {
  private constructor(
    readonly dir: string,
    private readonly prog: BpfProgram,
    private readonly pods: TypedMap<string, RoutedPodC>,
    private readonly pods6: TypedMap<{ addr: Buffer }, RoutedPodC>,
    private readonly nopeer: TypedMap<number, number>,
    private readonly cfg: TypedMap<number, number>,
  ) {}

  /**
   * Loads bpf/routed.o and pins the program and maps under <pinRoot>/routed, or
   * reuses the pins (the maps survive restarts). A routed.o newer than the pinned
   * program is loaded again against the same maps; attach() swaps it in on each
   * veth it is called for. Call it, and every write after, inside lock().
   */
  static open(opts: RoutedTcOptions): RoutedTc {
    ensurePinDir(opts.pinRoot, opts.mountBpffs === undefined ? {} : { mountBpffs: opts.mountBpffs });
    const dir = ensurePinDir(routedPinDir(opts.pinRoot));
    const objectPath = opts.objectPath ?? bpfObjectPath('routed');
    const pins = [progPin(dir), ...MAP_NAMES.map((n) => join(dir, n))];
    let load = !pins.every((p) => existsSync(p));
    if (!load && existsSync(objectPath)) load = statSync(objectPath).mtimeMs > statSync(progPin(dir)).mtimeMs;
    if (load) {
      if (!existsSync(objectPath)) throw new RoutedTcError(`BPF object ${objectPath} is missing (run scripts/build.sh)`);
      const obj = BpfObject.open(objectPath, { pinRoot: dir });
      try {
        obj.load(); // maps pinned by name: reused when there
        if (existsSync(progPin(dir))) unlinkSync(progPin(dir));
        obj.program(ROUTED_PROGRAM).pin(progPin(dir));
      } finally {
        obj.close();
      }
    }
    return RoutedTc.fromPins(dir);
  }

  /** The pins only (never loads); null when routed mode never ran under this pin root. */
  static openExisting(pinRoot: string): RoutedTc | null {
    const dir = routedPinDir(pinRoot);
    if (![progPin(dir), ...MAP_NAMES.map((n) => join(dir, n))].every((p) => existsSync(p))) return null;
    return RoutedTc.fromPins(dir);
  }

  private static fromPins(dir: string): RoutedTc {
    const opened: { close(): void }[] = [];
    try {
      const prog = BpfProgram.fromPin(progPin(dir));
      opened.push(prog);
      const c = ROUTED_MAP_CODECS;
      const pods = TypedMap.fromPin(join(dir, 'patu_routed_pods'), c.patu_routed_pods.key, c.patu_routed_pods.value);
      opened.push(pods);
      const pods6 = TypedMap.fromPin(join(dir, 'patu_routed_pods6'), c.patu_routed_pods6.key, c.patu_routed_pods6.value);
      opened.push(pods6);
      const nopeer = TypedMap.fromPin(join(dir, 'patu_routed_nopeer'), c.patu_routed_nopeer.key, c.patu_routed_nopeer.value);
      opened.push(nopeer);
      const cfg = TypedMap.fromPin(join(dir, 'patu_routed_cfg'), c.patu_routed_cfg.key, c.patu_routed_cfg.value);
      return new RoutedTc(dir, prog, pods, pods6, nopeer, cfg);
    } catch (e) {
      for (const o of opened) o.close();
      throw e;
    }
  }

  /** Runs fn holding the lock every writer of these pins takes (flock on the pin root). */
  static lock<T>(pinRoot: string, fn: () => T, opts: BpffsOptions = {}): T {
    return withPinDirLock(ensurePinDir(pinRoot, opts), fn);
  }

  get programId(): number {
    return this.prog.id;
  }

  /**
   * The program on the veth's tcx ingress (appended: NetworkPolicy's program, when
   * there, runs first), or an older load swapped for it in place. In the veth's netns.
   */
  attach(ifindex: number): void {
    const ours = tcxQuery(ifindex, 'ingress').filter((p) => p.name === ROUTED_PROGRAM);
    if (ours.some((p) => p.id === this.prog.id)) return;
    tcxAttach(this.prog.fd, ifindex, 'ingress', ours[0]?.id);
    for (const old of ours.slice(1)) tcxDetachId(old.id, ifindex, 'ingress');
  }

  /** A pod's address: from now on, packets to it from routed pods go straight into its netns. */
  setPod(p: RoutedPod): void {
    const v = { ifindex: p.ifindex, mac: macToBytes(p.mac), pad: 0 };
    if (p.ip.includes(':')) this.pods6.update(ip6Key(p.ip), v);
    else this.pods.update(p.ip, v);
  }

  deletePod(ip: string): void {
    if (ip.includes(':')) this.pods6.delete(ip6Key(ip));
    else this.pods.delete(ip);
  }

  pod(ip: string): RoutedPod | undefined {
    const v = ip.includes(':') ? this.pods6.lookup(ip6Key(ip)) : this.pods.lookup(ip);
    return v ? { ip, ifindex: v.ifindex, mac: bytesToMac(v.mac) } : undefined;
  }

  /** Every IPv4 pod address in the map (GC sweeps those no IPAM record holds). */
  podIps(): string[] {
    return this.pods.entriesBatch().map(([ip]) => ip);
  }

  /** Marks a veth as carrying NetworkPolicy programs (no redirect from or into it), or clears it. */
  setPolicy(ifindex: number, on: boolean): void {
    if (on) {
      this.nopeer.update(ifindex, 1);
      // The program reads the per-veth marks only once there is one (never reset: marks stay until their veths go).
      this.cfg.update(0, 1);
    } else this.nopeer.delete(ifindex);
  }

  hasPolicy(ifindex: number): boolean {
    return this.nopeer.lookup(ifindex) !== undefined;
  }

  close(): void {
    this.prog.close();
    this.pods.close();
    this.pods6.close();
    this.nopeer.close();
    this.cfg.close();
  }
}

/**
 * Called wherever NetworkPolicy programs are attached to a veth: when routed mode runs
 * under this pin root, the veth is marked so no packet from or to it skips those
 * programs by bpf_redirect_peer. Nothing happens on a node without routed pods.
 */
export function markPolicyVeth(pinRoot: string, ifindex: number): void {
  // Pin by pin, not openExisting: pins of an older build (no patu_routed_cfg) still get the mark their program reads.
  const dir = routedPinDir(pinRoot);
  for (const [name, key] of [['patu_routed_nopeer', ifindex], ['patu_routed_cfg', 0]] as const) {
    if (!existsSync(join(dir, name))) continue;
    const m = TypedMap.fromPin(join(dir, name), u32, u32);
    try {
      m.update(key, 1);
    } finally {
      m.close();
    }
  }
}

/** Sums patu_routed_stats; null when nothing is pinned under pinRoot. */
export function readRoutedStats(pinRoot: string): RoutedStats | null {
  const pin = join(routedPinDir(pinRoot), 'patu_routed_stats');
  if (!existsSync(pin)) return null;
  const m = PerCpuCounters.fromPin(pin);
  try {
    const out = {} as RoutedStats;
    ROUTED_STATS.forEach((k, i) => (out[k] = m.sum(i)));
    return out;
  } finally {
    m.close();
  }
}
