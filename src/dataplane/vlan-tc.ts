// VLAN tagging in eBPF, the kernel side (bpf/vlan.c, layouts in bpf/vlan.h):
// loads the two tc programs once and pins them with their maps under
// <pinRoot>/vlan, attaches patu_vlan_link at the head of a host link's tcx
// ingress chain (ahead of nodeport's, so a tagged frame is never translated as
// the node's own) and patu_vlan_trunk on a trunk's outer end, and keeps the two
// maps. Attachments are BPF_PROG_ATTACH without links (like policy-tc): they go
// with the device, and a host link's is detached when its last VLAN goes.
//
// Ifindexes are per netns, so one pin root serves the links of one netns (the
// node's; tests give each netns its own pin root).
import { existsSync, rmSync, statSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { BpfObject, BpfProgram } from '../kernel/bpf/object.js';
import { TypedMap, PerCpuCounters, structCodec, u16, u32, u64 } from '../kernel/bpf/map.js';
import { tcxAttach, tcxDetachId, tcxQuery } from '../kernel/bpf/tcx.js';
import { ensurePinDir, withPinDirLock, assertPinRoot, type BpffsOptions } from '../kernel/bpf/pins.js';
import { PatuError } from '../errors.js';
import { bpfObjectPath } from '../home.js';

export const VLAN_PROGRAMS = { link: 'patu_vlan_link', trunk: 'patu_vlan_trunk' } as const;
const PROG_PREFIX = 'patu_vlan_';

// Mirrors of bpf/vlan.h (test/unit/bpf-layout.test.ts checks them against the BTF).
export interface VlanKeyC { ifindex: number; vid: number; pad: number }
export interface VlanUpC { link: number; vid: number; pad: number }
const vlanKeyC = structCodec<VlanKeyC>({ ifindex: u32, vid: u16, pad: u16 });
const vlanUpC = structCodec<VlanUpC>({ link: u32, vid: u16, pad: u16 });

export const VLAN_MAP_CODECS = {
  patu_vlan_down: { key: vlanKeyC, value: u32 },
  patu_vlan_up: { key: u32, value: vlanUpC },
  patu_vlan_stats: { key: u32, value: u64 },
} as const;

/** patu_vlan_stats indexes (bpf/vlan.h PATU_VLAN_*). */
export const VLAN_STATS = ['popped', 'passed', 'pushed', 'droppedTagged', 'droppedNoMap', 'droppedError', 'tagInPayload'] as const;
export type VlanStats = Record<(typeof VLAN_STATS)[number], bigint>;

export const vlanPinDir = (pinRoot: string): string => join(assertPinRoot(pinRoot), 'vlan');
const progPin = (dir: string, which: keyof typeof VLAN_PROGRAMS): string => join(dir, `prog_${which}`);
const MAP_NAMES = Object.keys(VLAN_MAP_CODECS) as (keyof typeof VLAN_MAP_CODECS)[];

export class VlanTcError extends PatuError {
  readonly code = 'VLAN_TC';
}

export interface VlanTcOptions extends BpffsOptions {
  /** Production: DEFAULTS.pinRoot. */
  pinRoot: string;
  /** Compiled bpf/vlan.c (default: build/bpf/vlan.o of this tree). */
  objectPath?: string;
}

/** One trunk as the maps hold it. */
export interface VlanEntry { trunk: number; link: number; vid: number }

export class VlanTc {
  private constructor(
    readonly dir: string,
    private readonly progs: Record<keyof typeof VLAN_PROGRAMS, BpfProgram>,
    readonly down: TypedMap<VlanKeyC, number>,
    readonly up: TypedMap<number, VlanUpC>,
  ) {}

  /**
   * Loads bpf/vlan.o and pins its programs and maps under <pinRoot>/vlan, or
   * reuses the pins (the maps, hence every trunk, survive restarts). A vlan.o
   * newer than the pinned programs is loaded again against the same maps; the
   * ensure* calls then swap the new programs in where the old ones run.
   * Call it, and everything after, inside lock().
   */
  static open(opts: VlanTcOptions): VlanTc {
    ensurePinDir(opts.pinRoot, opts.mountBpffs === undefined ? {} : { mountBpffs: opts.mountBpffs });
    const dir = ensurePinDir(vlanPinDir(opts.pinRoot));
    const objectPath = opts.objectPath ?? bpfObjectPath('vlan');
    const pins = [progPin(dir, 'link'), progPin(dir, 'trunk'), ...MAP_NAMES.map((n) => join(dir, n))];
    let load = !pins.every((p) => existsSync(p));
    if (!load && existsSync(objectPath)) load = statSync(objectPath).mtimeMs > statSync(progPin(dir, 'link')).mtimeMs;
    if (load) {
      if (!existsSync(objectPath)) throw new VlanTcError(`BPF object ${objectPath} is missing (run scripts/build.sh)`);
      const obj = BpfObject.open(objectPath, { pinRoot: dir });
      try {
        obj.load(); // maps pinned by name: reused when there
        for (const which of ['link', 'trunk'] as const) {
          const p = progPin(dir, which);
          if (existsSync(p)) unlinkSync(p);
          obj.program(VLAN_PROGRAMS[which]).pin(p);
        }
      } finally {
        obj.close();
      }
    }
    const opened: { close(): void }[] = [];
    try {
      const link = BpfProgram.fromPin(progPin(dir, 'link'));
      opened.push(link);
      const trunk = BpfProgram.fromPin(progPin(dir, 'trunk'));
      opened.push(trunk);
      const c = VLAN_MAP_CODECS;
      const down = TypedMap.fromPin(join(dir, 'patu_vlan_down'), c.patu_vlan_down.key, c.patu_vlan_down.value);
      opened.push(down);
      const up = TypedMap.fromPin(join(dir, 'patu_vlan_up'), c.patu_vlan_up.key, c.patu_vlan_up.value);
      return new VlanTc(dir, { link, trunk }, down, up);
    } catch (e) {
      for (const o of opened) o.close();
      throw e;
    }
  }

  /**
   * Runs fn holding the lock every writer of these pins takes: flock on the pin
   * root itself, not on <pinRoot>/vlan, which the last removal deletes.
   */
  static lock<T>(pinRoot: string, fn: () => T, opts: BpffsOptions = {}): T {
    return withPinDirLock(ensurePinDir(pinRoot, opts), fn);
  }

  /** Kernel ids of the two programs. */
  programIds(): { link: number; trunk: number } {
    return { link: this.progs.link.id, trunk: this.progs.trunk.id };
  }

  /**
   * patu_vlan_link runs first on the link's tcx ingress: attached at the head of
   * the chain, or an older patu_vlan_link swapped for it in place. Must run in
   * the link's netns (the ifindex is resolved in the calling thread's).
   */
  ensureOnLink(ifindex: number): void {
    this.ensure(ifindex, 'link', true);
  }

  /** patu_vlan_trunk on the trunk's outer end (tcx ingress). Same netns rule. */
  ensureOnTrunk(ifindex: number): void {
    this.ensure(ifindex, 'trunk', false);
  }

  private ensure(ifindex: number, which: keyof typeof VLAN_PROGRAMS, first: boolean): void {
    const prog = this.progs[which];
    const ours = tcxQuery(ifindex, 'ingress').filter((p) => p.name === VLAN_PROGRAMS[which]);
    if (ours.some((p) => p.id === prog.id)) return;
    // A program of an older load: replaced where it stands (no moment without tagging).
    tcxAttach(prog.fd, ifindex, 'ingress', ours[0]?.id, { first });
    for (const old of ours.slice(1)) tcxDetachId(old.id, ifindex, 'ingress');
  }

  /** Detaches every patu_vlan_* program from the link's ingress (whichever load it came from). */
  static detachFrom(ifindex: number): number {
    let n = 0;
    for (const p of tcxQuery(ifindex, 'ingress')) {
      if (p.name.startsWith(PROG_PREFIX) && tcxDetachId(p.id, ifindex, 'ingress')) n++;
    }
    return n;
  }

  /** Every trunk in patu_vlan_up (the outgoing direction is the one keyed by trunk). */
  entries(): VlanEntry[] {
    return this.up.entriesBatch().map(([trunk, v]) => ({ trunk, link: v.link, vid: v.vid }));
  }

  /** The trunk patu_vlan_down sends (link, vid) to. */
  trunkOf(link: number, vid: number): number | undefined {
    return this.down.lookup({ ifindex: link, vid, pad: 0 });
  }

  /** Writes both directions: up first, so replies can leave before frames come in. */
  set(e: VlanEntry): void {
    this.up.update(e.trunk, { link: e.link, vid: e.vid, pad: 0 });
    this.down.update({ ifindex: e.link, vid: e.vid, pad: 0 }, e.trunk);
  }

  /** Removes a trunk's entries: the incoming direction first; the (link, vid) entry only while it still names this trunk. */
  delete(trunk: number): VlanEntry | undefined {
    const v = this.up.lookup(trunk);
    if (v && this.trunkOf(v.link, v.vid) === trunk) this.down.delete({ ifindex: v.link, vid: v.vid, pad: 0 });
    this.up.delete(trunk);
    return v ? { trunk, link: v.link, vid: v.vid } : undefined;
  }

  deleteDown(link: number, vid: number): void {
    this.down.delete({ ifindex: link, vid, pad: 0 });
  }

  /** Links that still have a VLAN. */
  linksInUse(): Set<number> {
    return new Set(this.down.entriesBatch().map(([k]) => k.ifindex));
  }

  close(): void {
    this.progs.link.close();
    this.progs.trunk.close();
    this.down.close();
    this.up.close();
  }
}

/** Sums patu_vlan_stats; null when nothing is pinned under pinRoot. */
export function readVlanStats(pinRoot: string): VlanStats | null {
  const pin = join(vlanPinDir(pinRoot), 'patu_vlan_stats');
  if (!existsSync(pin)) return null;
  const m = PerCpuCounters.fromPin(pin);
  try {
    const out = {} as VlanStats;
    VLAN_STATS.forEach((k, i) => (out[k] = m.sum(i)));
    return out;
  } finally {
    m.close();
  }
}

/** Unpins the programs and maps (no VLAN left on the node): the directory goes with them. */
export function removeVlanPins(pinRoot: string): void {
  const dir = vlanPinDir(pinRoot);
  if (existsSync(dir)) rmSync(dir, { recursive: true, force: true });
}
