// Owns the packet-level service path for traffic from outside the node
// (bpf/nodeport.c): loads it against the socket LB's pinned service maps,
// attaches patu_np_ingress/patu_np_egress as tcx links on the chosen uplinks
// (and on matching links that appear later: rtnetlink link notifications), and
// pins those links, so an agent restart or a program reload keeps translating.
// The ServiceLb stays the only writer of the service maps and of patu_lb_cfg
// (the service CIDR both paths keep on the node); this module only reads them.
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { BpfObject, BpfLink, type BpfProgram } from '../kernel/bpf/object.js';
import { TypedMap, PerCpuCounters, structCodec, u8, u16, u32, u64, be16, ipv4 } from '../kernel/bpf/map.js';
import { ensurePinDir, type BpffsOptions } from '../kernel/bpf/pins.js';
import { Rtnl, type LinkInfo } from '../kernel/netlink/rtnl.js';
import { LinkEvents } from '../kernel/netlink/events.js';
import { withNetns } from '../kernel/netns.js';
import { DEFAULTS } from '../defaults.js';
import { messageOf } from '../errors.js';
import { bpfObjectPath } from '../home.js';
import { SOCK_LB_MAP_CODECS } from './service-lb.js';

export const NODEPORT_PROGRAMS = { ingress: 'patu_np_ingress', egress: 'patu_np_egress' } as const;
type Direction = keyof typeof NODEPORT_PROGRAMS;

// Mirrors of bpf/nodeport.h (test/unit/bpf-layout.test.ts checks them against the BTF).
export interface CtKeyC { src: string; dst: string; sport: number; dport: number; proto: number; dir: number; pad: number }
export interface CtValC { ip: string; port: number; pad: number; backendId: number; svcId: number }
const ctKeyC = structCodec<CtKeyC>({ src: ipv4, dst: ipv4, sport: be16, dport: be16, proto: u8, dir: u8, pad: u16 });
const ctValC = structCodec<CtValC>({ ip: ipv4, port: be16, pad: u16, backendId: u32, svcId: u32 });

export const NODEPORT_MAP_CODECS = {
  patu_svc: SOCK_LB_MAP_CODECS.patu_svc,
  patu_svc_slot: SOCK_LB_MAP_CODECS.patu_svc_slot,
  patu_backend: SOCK_LB_MAP_CODECS.patu_backend,
  patu_affinity: SOCK_LB_MAP_CODECS.patu_affinity,
  patu_node_addr: SOCK_LB_MAP_CODECS.patu_node_addr,
  patu_lb_cfg: SOCK_LB_MAP_CODECS.patu_lb_cfg,
  patu_np_ct: { key: ctKeyC, value: ctValC },
  patu_np_stats: { key: u32, value: u64 },
} as const;

/** patu_np_stats indexes (bpf/nodeport.h PATU_NP_*). */
export const NODEPORT_STATS = ['newFlows', 'forwardHits', 'replies', 'noBackend', 'serviceCidrDroppedIn', 'serviceCidrDroppedOut'] as const;
export type NodePortStats = Record<(typeof NODEPORT_STATS)[number], bigint>;

export interface NodePortTcOptions extends BpffsOptions {
  /** The socket LB's pin root (the service maps are reused from there); production: /sys/fs/bpf/patu. */
  pinRoot?: string;
  /**
   * Uplinks by name: exact names, or a prefix ending in '*' ("eth*"). Links that
   * appear later and match are attached by watch().
   */
  devices: readonly string[];
  /** The netns the uplinks live in (tests); default: the calling thread's (the host's). */
  netnsPath?: string;
  /** Compiled bpf/nodeport.c. */
  objectPath?: string;
  /** What attach/detach did, for the agent's log. */
  log?: (msg: string, fields: Record<string, unknown>) => void;
}

/** Checks the --nodeport-devices list; throws naming the bad entry. */
export function parseDevices(list: readonly string[], field = 'nodeport devices'): string[] {
  const out: string[] = [];
  for (const raw of list) {
    const d = raw.trim();
    if (d === '') continue;
    const name = d.endsWith('*') ? d.slice(0, -1) : d;
    if (Buffer.byteLength(name) >= 16 || /[\s/:*]/.test(name) || (name === '' && d !== '*') || name === '.' || name === '..') {
      throw new Error(`${field}: '${raw}' is not an interface name or a prefix ending in '*'`);
    }
    out.push(d);
  }
  if (out.length === 0) throw new Error(`${field}: no interface given`);
  return out;
}

export const deviceMatches = (patterns: readonly string[], name: string): boolean =>
  patterns.some((p) => (p.endsWith('*') ? name.startsWith(p.slice(0, -1)) : name === p));

const PIN_DIR = 'links/nodeport';
// Pins are named by ifindex: bpffs refuses names with a '.', which interface
// names may have (eth0.100), and the link's own info says which ifindex it is on.
const pinName = (ifindex: number, dir: Direction): string => `${dir}-${ifindex}`;
const PIN_RE = /^(ingress|egress)-([0-9]+)$/;

export class NodePortTc {
  private events: LinkEvents | undefined;
  private timer: NodeJS.Timeout | undefined;
  private readonly linkDir: string;

  private constructor(
    private readonly obj: BpfObject,
    readonly pinRoot: string,
    readonly devices: readonly string[],
    private readonly netnsPath: string | undefined,
    private readonly stats: PerCpuCounters,
    readonly ct: TypedMap<CtKeyC, CtValC>,
    private readonly log: (msg: string, fields: Record<string, unknown>) => void,
  ) {
    this.linkDir = join(pinRoot, PIN_DIR);
  }

  /**
   * Loads the programs with the maps pinned under pinRoot (creating any that
   * are missing, so it may come up before the socket LB). Packets to the
   * service CIDR that ServiceLb configured (patu_lb_cfg) and that were not
   * translated are dropped. Attaches nothing: sync() does.
   */
  static open(opts: NodePortTcOptions): NodePortTc {
    const devices = parseDevices(opts.devices);
    const pinRoot = ensurePinDir(opts.pinRoot ?? DEFAULTS.pinRoot, opts.mountBpffs === undefined ? {} : { mountBpffs: opts.mountBpffs });
    const objectPath = opts.objectPath ?? bpfObjectPath('nodeport');
    if (!existsSync(objectPath)) throw new Error(`NodePortTc.open: BPF object ${objectPath} is missing (run scripts/build.sh)`);
    const obj = BpfObject.open(objectPath, { pinRoot });
    try {
      obj.load();
      const c = NODEPORT_MAP_CODECS;
      const stats = PerCpuCounters.fromFd(obj.map('patu_np_stats').fd, 'patu_np_stats');
      const ct = obj.map('patu_np_ct').typed(c.patu_np_ct.key, c.patu_np_ct.value);
      return new NodePortTc(obj, pinRoot, devices, opts.netnsPath, stats, ct, opts.log ?? (() => {}));
    } catch (e) {
      obj.close();
      throw e;
    }
  }

  private inNetns<T>(fn: () => T): T {
    return this.netnsPath ? withNetns(this.netnsPath, fn) : fn();
  }

  private listLinks(): LinkInfo[] {
    const rtnl = this.netnsPath ? Rtnl.openInNetns(this.netnsPath) : Rtnl.open();
    try {
      return rtnl.listLinks();
    } finally {
      rtnl.close();
    }
  }

  private program(dir: Direction): BpfProgram {
    return this.obj.program(NODEPORT_PROGRAMS[dir]);
  }

  /**
   * Makes the pinned links match the links: every matching link has both
   * programs attached, running this object's programs (a link pinned by an
   * earlier run is switched over in place with bpf_link_update, so there is no
   * moment without translation); pins of links that are gone are removed.
   * Returns the names attached now (new attachments only).
   */
  sync(): string[] {
    ensurePinDir(join(this.pinRoot, 'links'));
    ensurePinDir(this.linkDir);
    const links = this.listLinks().filter((l) => deviceMatches(this.devices, l.name));
    const wanted = new Set<string>();
    const attached: string[] = [];
    const failed: Error[] = [];
    for (const l of links) {
      // Egress first: a packet is only translated on the way in once its reply can be translated back.
      for (const dir of ['egress', 'ingress'] as const) wanted.add(pinName(l.index, dir));
      try {
        for (const dir of ['egress', 'ingress'] as const) {
          if (this.ensureLink(l, dir) && dir === 'ingress') attached.push(l.name);
        }
      } catch (e) {
        // One link that cannot take the programs does not keep the others from them.
        failed.push(new Error(`${l.name} (ifindex ${l.index}): ${messageOf(e)}`, { cause: e }));
      }
    }
    for (const name of this.pinnedNames()) {
      if (wanted.has(name)) continue;
      BpfLink.fromPin(join(this.linkDir, name)).destroy();
      this.log('tc link pin removed (device gone or no longer chosen)', { pin: name });
    }
    if (failed.length) throw new AggregateError(failed, `tc programs not attached to ${failed.map((e) => e.message).join('; ')}`);
    return attached;
  }

  /** Makes one pinned link run this object's program on l; true when it had to be attached. */
  private ensureLink(l: LinkInfo, dir: Direction): boolean {
    const pin = join(this.linkDir, pinName(l.index, dir));
    const prog = this.program(dir);
    if (existsSync(pin)) {
      const old = BpfLink.fromPin(pin);
      try {
        if (old.info().ifindex === l.index) {
          if (old.info().progId !== prog.id) old.update(prog.fd);
          return false;
        }
        // The device was removed (its links went with it, ifindex 0) and the index reused.
        old.destroy();
      } finally {
        old.close();
      }
    }
    const link = this.inNetns(() => prog.attachTcx(l.index, dir));
    try {
      link.pin(pin);
    } catch (e) {
      link.destroy();
      throw e;
    }
    link.close();
    this.log('tc programs attached', { device: l.name, ifindex: l.index, direction: dir });
    return true;
  }

  private pinnedNames(): string[] {
    return existsSync(this.linkDir) ? readdirSync(this.linkDir).filter((n) => PIN_RE.test(n)) : [];
  }

  /** The devices with both programs attached through pins, by name. */
  attachedDevices(): string[] {
    const names = new Set(this.pinnedNames());
    return this.listLinks()
      .filter((l) => names.has(pinName(l.index, 'ingress')) && names.has(pinName(l.index, 'egress')))
      .filter((l) => this.linkIfindex(pinName(l.index, 'ingress')) === l.index)
      .map((l) => l.name)
      .sort();
  }

  private linkIfindex(pin: string): number | undefined {
    const l = BpfLink.fromPin(join(this.linkDir, pin));
    try {
      return l.info().ifindex;
    } finally {
      l.close();
    }
  }

  /**
   * Follows link notifications: a matching link that appears (or is
   * re-created) is attached, pins of removed links go. Drained every
   * `pollMs`; sync() is idempotent, so an overrun just re-syncs, and a full
   * sync every `resyncMs` repairs what no notification announces (a pin
   * removed by hand, a sync that failed).
   */
  watch(opts: { pollMs: number; resyncMs: number; onError?: (e: unknown) => void }): void {
    if (this.timer) return;
    this.events = LinkEvents.open(this.netnsPath);
    // Links that appeared between open() and the subscription are caught by this first sync.
    this.sync();
    let last = Date.now();
    this.timer = setInterval(() => {
      try {
        const { events, overrun } = this.events!.drain();
        if (overrun || events.some((e) => deviceMatches(this.devices, e.name)) || Date.now() - last >= opts.resyncMs) {
          last = Date.now();
          this.sync();
        }
      } catch (e) {
        opts.onError?.(e);
      }
    }, opts.pollMs);
    this.timer.unref();
  }

  /** Detaches both programs from every link (pins included). The maps stay (the socket LB's are not ours). */
  detach(): void {
    this.stopWatching();
    for (const name of this.pinnedNames()) BpfLink.fromPin(join(this.linkDir, name)).destroy();
  }

  /** Ids of this object's two programs (what sync() puts behind the links). */
  programIds(): Record<Direction, number> {
    return { ingress: this.program('ingress').id, egress: this.program('egress').id };
  }

  /** The program ids behind the pinned links, by pin name. */
  linkedPrograms(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const name of this.pinnedNames()) {
      const l = BpfLink.fromPin(join(this.linkDir, name));
      try {
        out[name] = l.info().progId;
      } finally {
        l.close();
      }
    }
    return out;
  }

  readStats(): NodePortStats {
    const out = {} as NodePortStats;
    NODEPORT_STATS.forEach((k, i) => (out[k] = this.stats.sum(i)));
    return out;
  }

  private stopWatching(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.events?.close();
    this.events = undefined;
  }

  /** Releases fds; pinned links and maps stay, so translation goes on without this process. */
  close(): void {
    this.stopWatching();
    this.stats.close();
    this.ct.close();
    this.obj.close();
  }
}

export interface NodePortTcStatus {
  /** The pinned links: direction, the ifindex the kernel reports (0: its device is gone) and its name now. */
  links: { direction: Direction; ifindex: number; device: string | null; progId: number }[];
  stats: NodePortStats | null;
}

/**
 * The tc path as the pins show it, without loading anything (`patu status`
 * next to a running agent). null: never set up under this pin root.
 */
export function readNodePortTc(pinRoot: string = DEFAULTS.pinRoot, nameOf: (ifindex: number) => string | undefined = () => undefined): NodePortTcStatus | null {
  const dir = join(pinRoot, PIN_DIR);
  const statsPin = join(pinRoot, 'patu_np_stats');
  if (!existsSync(dir) && !existsSync(statsPin)) return null;
  const links: NodePortTcStatus['links'] = [];
  for (const name of existsSync(dir) ? readdirSync(dir).filter((n) => PIN_RE.test(n)).sort() : []) {
    const l = BpfLink.fromPin(join(dir, name));
    try {
      const info = l.info();
      const ifindex = info.ifindex ?? 0;
      links.push({ direction: PIN_RE.exec(name)![1] as Direction, ifindex, device: ifindex ? nameOf(ifindex) ?? null : null, progId: info.progId });
    } finally {
      l.close();
    }
  }
  let stats: NodePortStats | null = null;
  if (existsSync(statsPin)) {
    const m = PerCpuCounters.fromPin(statsPin);
    try {
      stats = {} as NodePortStats;
      NODEPORT_STATS.forEach((k, i) => (stats![k] = m.sum(i)));
    } finally {
      m.close();
    }
  }
  return { links, stats };
}

/**
 * Detaches every tc link pinned under pinRoot (the agent with the tc path off),
 * without loading anything. Returns the pin names removed.
 */
export function detachNodePortLinks(pinRoot: string = DEFAULTS.pinRoot): string[] {
  const dir = join(pinRoot, PIN_DIR);
  if (!existsSync(dir)) return [];
  const names = readdirSync(dir).filter((n) => PIN_RE.test(n));
  for (const name of names) BpfLink.fromPin(join(dir, name)).destroy();
  return names;
}
