// Owns the socket load-balancing BPF object (bpf/sock_lb.c): its pinned maps,
// its cgroup attachments, and the translation of the service model into map
// entries through the phased diff in src/services/diff.ts.
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { BpfObject, BpfLink } from '../kernel/bpf/object.js';
import { TypedMap, structCodec, u8, u16, u32, u64, be16, ipv4, bytes, type Codec } from '../kernel/bpf/map.js';
import { mapsUsedBy, repinMaps, type UsedMap } from '../kernel/bpf/repin.js';
import { ensurePinDir, type BpffsOptions } from '../kernel/bpf/pins.js';
import { DEFAULTS } from '../defaults.js';
import { messageOf } from '../errors.js';
import { bigIntToIp, ipToBigInt, networkAddress, parseCidr } from '../net/cidr.js';
import { bpfObjectPath } from '../home.js';
import { UdpSocketDestroyer, type UdpDestroyOptions, type UdpDestroyStats } from './udp-destroy.js';
import {
  commit, departedBackends, diffServices, emptyState, IdAllocator, setService,
  type DiffResult, type MapOp, type ProgrammedBackend, type ProgrammedService, type ProgrammedState, type SvcKey,
} from '../services/diff.js';
import { portKey, type DesiredServicePort, type Protocol } from '../services/model.js';

export const SOCK_LB_PROGRAMS = ['patu_connect4', 'patu_sendmsg4', 'patu_recvmsg4', 'patu_getpeername4'] as const;

const IPPROTO: Record<Protocol, number> = { TCP: 6, UDP: 17 };
const PROTO_NAME: Record<number, Protocol | undefined> = { 6: 'TCP', 17: 'UDP' };
const F_AFFINITY = 1;
const NAME_LEN = 64;

// Mirrors of bpf/sock_lb.h: TypedMap checks the sizes against the kernel at open
// time, test/unit/bpf-layout.test.ts every field offset against the BTF.
interface SvcKeyC { vip: string; port: number; proto: number; pad: number }
interface SvcValC { count: number; svcId: number; flags: number; affinityTimeout: number }
interface SlotKeyC { svcId: number; slot: number }
interface BackendC { ip: string; port: number; pad: number; svcId: number }
export interface RevNatKeyC { cookie: bigint; ip: string; port: number; pad: number }
export interface RevNatValC { vip: string; port: number; pad: number }
export interface AffKeyC { netnsCookie: bigint; svcId: number; pad: number }
export interface AffValC { backendId: number; pad: number; lastUsedNs: bigint }
export interface LbCfgC { svcNet: string; svcMask: string; hostNetnsCookie: bigint }

const svcKeyC = structCodec<SvcKeyC>({ vip: ipv4, port: be16, proto: u8, pad: u8 });
const svcValC = structCodec<SvcValC>({ count: u32, svcId: u32, flags: u32, affinityTimeout: u32 });
const slotKeyC = structCodec<SlotKeyC>({ svcId: u32, slot: u32 });
const backendC = structCodec<BackendC>({ ip: ipv4, port: be16, pad: u16, svcId: u32 });
export const revNatKeyC = structCodec<RevNatKeyC>({ cookie: u64, ip: ipv4, port: be16, pad: u16 });
export const revNatValC = structCodec<RevNatValC>({ vip: ipv4, port: be16, pad: u16 });
export const affKeyC = structCodec<AffKeyC>({ netnsCookie: u64, svcId: u32, pad: u32 });
export const affValC = structCodec<AffValC>({ backendId: u32, pad: u32, lastUsedNs: u64 });
export const lbCfgC = structCodec<LbCfgC>({ svcNet: ipv4, svcMask: ipv4, hostNetnsCookie: u64 });
const raw64 = bytes(NAME_LEN);
const nameC: Codec<string> = {
  size: NAME_LEN, align: 1,
  encode(v, b, o) {
    b.fill(0, o, o + NAME_LEN);
    // Truncated on a UTF-8 boundary is not worth the cost here: names are ASCII (DNS labels).
    b.write(v.slice(0, NAME_LEN - 1), o, 'utf8');
  },
  decode(b, o) {
    const s = raw64.decode(b, o);
    const z = s.indexOf(0);
    return s.subarray(0, z < 0 ? NAME_LEN : z).toString('utf8');
  },
};

/**
 * The codecs of every map of bpf/sock_lb.c that userspace opens, by C map
 * name; test/unit/bpf-layout.test.ts compares each with the object's BTF.
 * (patu_sock_nat is socket storage: only the programs read it.)
 */
export const SOCK_LB_MAP_CODECS = {
  patu_svc: { key: svcKeyC, value: svcValC },
  patu_svc_slot: { key: slotKeyC, value: u32 },
  patu_backend: { key: u32, value: backendC },
  patu_svc_meta: { key: u32, value: nameC },
  patu_revnat: { key: revNatKeyC, value: revNatValC },
  patu_affinity: { key: affKeyC, value: affValC },
  patu_node_addr: { key: ipv4, value: u32 },
  patu_lb_cfg: { key: u32, value: lbCfgC },
} as const;

/** patu_node_addr value flags (bpf/sock_lb.h). */
export const NODE_ADDR_F_LOOPBACK = 1;

/** Node-wide settings of the service programs (patu_lb_cfg). */
export interface LbConfig {
  /**
   * The cluster's service CIDR (IPv4): a connect()/sendmsg() to an address in
   * it that no service port answers is refused with ECONNREFUSED. Undefined: none.
   */
  serviceCidr?: string;
  /** Cookie of the node's own netns: loopback node addresses are node addresses only there. */
  hostNetnsCookie?: bigint;
}

/** Checks and encodes a service CIDR for patu_lb_cfg: IPv4, at least /8 long, so it never swallows the world. */
export function serviceCidrConfig(cidr: string | undefined): { svcNet: string; svcMask: string } {
  if (cidr === undefined || cidr === '') return { svcNet: '0.0.0.0', svcMask: '0.0.0.0' };
  let c;
  try {
    c = parseCidr(cidr);
  } catch (e) {
    throw new Error(`service CIDR: ${messageOf(e)}`, { cause: e });
  }
  if (c.family !== 4) throw new Error(`service CIDR ${cidr}: must be IPv4 (the socket load balancer is IPv4 only)`);
  if (c.prefix < 8) throw new Error(`service CIDR ${cidr}: /${c.prefix} is wider than /8; refusing to reject connections to that much of the address space`);
  const mask = c.prefix === 0 ? 0n : (0xffff_ffffn << BigInt(32 - c.prefix)) & 0xffff_ffffn;
  return { svcNet: bigIntToIp(networkAddress(c), 4), svcMask: bigIntToIp(mask, 4) };
}

export interface ServiceLbOptions extends BpffsOptions {
  /** bpffs directory for the maps and links; production: /sys/fs/bpf/patu. */
  pinRoot?: string;
  /**
   * cgroup2 directory the programs are attached to after the first apply that
   * succeeds, if they are not attached yet (production: the hierarchy's root,
   * which the caller finds). Without one they are never attached by an apply
   * (attach() then throws): the maps alone are programmed.
   */
  cgroupPath?: string;
  /** Compiled bpf/sock_lb.c. */
  objectPath?: string;
  /**
   * After an apply that removes UDP backends, destroy the connected UDP
   * sockets translated to them (src/dataplane/udp-destroy.ts), in this
   * namespace and in each one under netnsDirs (default DEFAULTS.podNetnsDir).
   * false: never.
   */
  udpDestroy?: false | Partial<UdpDestroyOptions & { objectPath: string }>;
}

export interface ProgrammedServiceView {
  name: string;
  vip: string;
  port: number;
  protocol: Protocol;
  svcId: number;
  sessionAffinity: 'None' | 'ClientIP';
  affinityTimeoutSeconds: number;
  /** Selectable backends in slot order. */
  backends: { id: number; ip: string; port: number }[];
  /** 'external-local': the externalTrafficPolicy Local entry packets from outside use (tc path). */
  scope?: 'external-local';
}

export interface ApplyStats {
  /** Map entries another source holds, left to it (partition applies only: see ServiceLb.partition). */
  conflicts?: PartitionConflict[];
  ops: number;
  services: number;
  syscallBatches: number;
  ms: number;
  /** This apply attached the programs (the first one that succeeded with a cgroup to attach to). */
  attachedNow: boolean;
  /** UDP backends left services: what destroying their connected sockets did (its failures are here, never thrown). */
  udpDestroy?: UdpDestroyStats;
}

/** A port a partition wanted that another source's service holds (services win over hostPorts). */
export interface PartitionConflict {
  key: string;
  /** The partition's ref that wanted it. */
  wanted: string;
  /** The ref that holds it. */
  heldBy: string;
}

/** What a source programs through: ServiceLb itself, or one of its partitions. */
export interface ServiceSinkLike {
  resync(desired: ReadonlyMap<string, DesiredServicePort>): ApplyStats;
  applyChanges(refs: ReadonlySet<string>, desired: ReadonlyMap<string, DesiredServicePort>): ApplyStats;
}

/** An apply that would not fit in a map: refused before anything is written. */
export class ServiceCapacityError extends Error {
  readonly code = 'ECAPACITY';
  constructor(
    readonly map: string,
    /** What the map would have to hold: at once during the apply, or after it. */
    readonly needed: number,
    readonly capacity: number,
    what: string,
  ) {
    super(`${what}: ${needed.toLocaleString('en-US')} entries in ${map}, which holds at most ${capacity.toLocaleString('en-US')}; nothing was changed`);
    this.name = 'ServiceCapacityError';
  }
}

interface Maps {
  svc: TypedMap<SvcKeyC, SvcValC>;
  slot: TypedMap<SlotKeyC, number>;
  backend: TypedMap<number, BackendC>;
  meta: TypedMap<number, string>;
  revnat: TypedMap<RevNatKeyC, RevNatValC>;
  affinity: TypedMap<AffKeyC, AffValC>;
  nodeAddr: TypedMap<string, number>;
  cfg: TypedMap<number, LbCfgC>;
}

type OpOf<M extends MapOp['map'], O extends MapOp['op']> = Extract<MapOp, { map: M; op: O }>;

/** One phase's operations, sorted by map and kind: each list is one batch syscall. */
interface PhaseBatch {
  backendUpdate: OpOf<'backend', 'update'>[];
  metaUpdate: OpOf<'meta', 'update'>[];
  slotUpdate: OpOf<'slot', 'update'>[];
  svcUpdate: OpOf<'svc', 'update'>[];
  svcDelete: OpOf<'svc', 'delete'>[];
  slotDelete: OpOf<'slot', 'delete'>[];
  backendDelete: OpOf<'backend', 'delete'>[];
  metaDelete: OpOf<'meta', 'delete'>[];
}

const emptyBatch = (): PhaseBatch => ({
  backendUpdate: [], metaUpdate: [], slotUpdate: [], svcUpdate: [], svcDelete: [], slotDelete: [], backendDelete: [], metaDelete: [],
});

function sortInto(b: PhaseBatch, op: MapOp): void {
  switch (op.map) {
    case 'backend':
      if (op.op === 'update') b.backendUpdate.push(op);
      else b.backendDelete.push(op);
      return;
    case 'meta':
      if (op.op === 'update') b.metaUpdate.push(op);
      else b.metaDelete.push(op);
      return;
    case 'slot':
      if (op.op === 'update') b.slotUpdate.push(op);
      else b.slotDelete.push(op);
      return;
    case 'svc':
      if (op.op === 'update') b.svcUpdate.push(op);
      else b.svcDelete.push(op);
      return;
  }
}

/** bpf/sock_lb.h PATU_PROTO_EXT_LOCAL: or-ed into the protocol byte of entries only the tc path reads. */
export const PROTO_EXT_LOCAL = 0x80;
const svcKeyOf = (k: SvcKey): SvcKeyC => ({ vip: k.vip, port: k.port, proto: IPPROTO[k.protocol] | (k.scope === 'external-local' ? PROTO_EXT_LOCAL : 0), pad: 0 });

export class ServiceLb {
  private links: BpfLink[] = [];
  private state: ProgrammedState;
  private ids: IdAllocator;
  private readonly svcIds = new Set<number>();
  /** Slot entries in the map (the sum of every programmed service's count). */
  private slotCount = 0;
  /** Loaded on the first apply that removes a UDP backend; null when that failed (the reason: destroyerError). */
  private destroyer: UdpSocketDestroyer | null | undefined;
  private destroyerError = '';
  /** Which refs each partition owns: the plain resync/applyChanges leave those alone. */
  private readonly partitions: ((ref: string) => boolean)[] = [];
  private readonly partitionWatchers: (() => void)[] = [];

  private constructor(
    private readonly obj: BpfObject,
    readonly maps: Maps,
    readonly pinRoot: string,
    readonly cgroupPath: string | undefined,
    /** What open() found wrong under pinRoot and repaired (map pins put back to the maps the attached programs use). */
    readonly repairs: readonly string[],
    private readonly udpDestroy: false | (UdpDestroyOptions & { objectPath: string }),
  ) {
    this.state = emptyState();
    this.ids = this.loadState(1);
  }

  /** Takes the diff base from what the maps hold; ids continue from `next` or past every id in use. */
  private loadState(next: number): IdAllocator {
    this.state = readState(this.maps);
    this.svcIds.clear();
    this.slotCount = 0;
    for (const s of this.state.services.values()) {
      this.svcIds.add(s.id);
      this.slotCount += s.slots.length;
    }
    let max = 0;
    for (const id of this.state.backends.keys()) max = Math.max(max, id);
    for (const id of this.svcIds) max = Math.max(max, id);
    return new IdAllocator((id) => this.state.backends.has(id) || this.svcIds.has(id), Math.max(next, max + 1));
  }

  /**
   * Loads the programs, reusing maps already pinned under pinRoot (an agent
   * restart keeps every service and established translation), and repairs
   * what an interrupted apply may have left (slots beyond count, backends in
   * no slot).
   */
  static open(opts: ServiceLbOptions = {}): ServiceLb {
    const pinRoot = ensurePinDir(opts.pinRoot ?? DEFAULTS.pinRoot, opts.mountBpffs === undefined ? {} : { mountBpffs: opts.mountBpffs });
    const objectPath = opts.objectPath ?? bpfObjectPath('sock_lb');
    if (!existsSync(objectPath)) throw new Error(`ServiceLb.open: BPF object ${objectPath} is missing (run scripts/build.sh)`);
    // Before libbpf reuses (or, for a missing pin, creates and pins) the maps.
    const repairs = repinAttachedMaps(pinRoot);
    const obj = BpfObject.open(objectPath, { pinRoot });
    try {
      obj.load();
      assertAttachedUse(pinRoot, obj);
      const c = SOCK_LB_MAP_CODECS;
      const maps: Maps = {
        svc: obj.map('patu_svc').typed(c.patu_svc.key, c.patu_svc.value),
        slot: obj.map('patu_svc_slot').typed(c.patu_svc_slot.key, c.patu_svc_slot.value),
        backend: obj.map('patu_backend').typed(c.patu_backend.key, c.patu_backend.value),
        meta: obj.map('patu_svc_meta').typed(c.patu_svc_meta.key, c.patu_svc_meta.value),
        revnat: obj.map('patu_revnat').typed(c.patu_revnat.key, c.patu_revnat.value),
        affinity: obj.map('patu_affinity').typed(c.patu_affinity.key, c.patu_affinity.value),
        nodeAddr: obj.map('patu_node_addr').typed(c.patu_node_addr.key, c.patu_node_addr.value),
        cfg: obj.map('patu_lb_cfg').typed(c.patu_lb_cfg.key, c.patu_lb_cfg.value),
      };
      repair(maps);
      const ud = opts.udpDestroy === false ? false : {
        netnsDirs: opts.udpDestroy?.netnsDirs ?? [DEFAULTS.podNetnsDir],
        budgetMs: opts.udpDestroy?.budgetMs ?? DEFAULTS.udpDestroyBudgetMs,
        objectPath: opts.udpDestroy?.objectPath ?? join(dirname(objectPath), 'sock_destroy.o'),
      };
      return new ServiceLb(obj, maps, pinRoot, opts.cgroupPath, repairs, ud);
    } catch (e) {
      obj.close();
      throw e;
    }
  }

  private linkPin(prog: string): string {
    return join(this.pinRoot, 'links', prog);
  }

  /**
   * Attaches the four programs to the cgroup with pinned links (they survive
   * the agent). A link already pinned from an earlier run is replaced only
   * after the new one is attached, so there is no moment without translation;
   * two copies running for that moment is harmless (the second sees a backend
   * address, not a service address).
   */
  attach(): void {
    if (this.links.length) return;
    const cgroup = this.cgroupPath;
    if (cgroup === undefined) throw new Error('ServiceLb.attach: no cgroup2 directory to attach to (cgroupPath)');
    ensurePinDir(join(this.pinRoot, 'links'));
    const created: BpfLink[] = [];
    try {
      for (const name of SOCK_LB_PROGRAMS) {
        const link = this.obj.program(name).attachCgroup(cgroup);
        created.push(link);
        const pin = this.linkPin(name);
        if (existsSync(pin)) BpfLink.fromPin(pin).destroy();
        link.pin(pin);
      }
    } catch (e) {
      for (const l of created) l.destroy();
      throw e;
    }
    this.links = created;
  }

  /** Detaches the programs (also links pinned by an earlier run) and removes their pins. */
  detach(): void {
    for (const l of this.links) l.destroy();
    this.links = [];
    for (const name of SOCK_LB_PROGRAMS) {
      const pin = this.linkPin(name);
      if (existsSync(pin)) BpfLink.fromPin(pin).destroy();
    }
  }

  get attached(): boolean {
    return this.links.length > 0;
  }

  /** Whether every program is attached through a link pinned under pinRoot (by this or an earlier process). */
  linksPinned(): boolean {
    return SOCK_LB_PROGRAMS.every((name) => existsSync(this.linkPin(name)));
  }

  /**
   * Makes the maps hold exactly `desired`: what they hold and `desired` does
   * not is removed (the first apply of a source, or a periodic safety net).
   */
  resync(desired: ReadonlyMap<string, DesiredServicePort>): ApplyStats {
    return this.mainApplied(this.run(desired));
  }

  /**
   * Applies the services in `refs` only: `desired` holds the ports of those
   * that still exist (model.desired(refs)), and programmed ports of a ref that
   * `desired` lacks are removed. One change costs the same whatever the
   * number of services.
   */
  applyChanges(refs: ReadonlySet<string>, desired: ReadonlyMap<string, DesiredServicePort>): ApplyStats {
    for (const d of desired.values()) {
      if (!refs.has(d.ref)) throw new Error(`ServiceLb.applyChanges: ${d.key} belongs to ${d.ref}, which is not among the changed services`);
    }
    return this.mainApplied(this.run(desired, refs));
  }

  /** After the main source changed the maps: partitions may get a port back, or lose one. */
  private mainApplied(stats: ApplyStats): ApplyStats {
    if (stats.ops > 0) for (const cb of this.partitionWatchers) cb();
    return stats;
  }

  /**
   * A second source programming the same maps (the agent's hostPorts beside the
   * services file or Kubernetes): it owns the refs `owns` accepts. Its resync
   * touches only those; the plain resync and applyChanges of the main source leave
   * them alone. A port both want goes to the main source's service: the partition's
   * entry is left out and reported in ApplyStats.conflicts (the next partition
   * resync programs it once the service lets the port go). Register partitions
   * before the main source's first resync, or that resync removes their entries.
   * `onMainApplied` is called after every main-source apply that wrote something
   * (the partition then resyncs: a port a service let go is served at once).
   */
  partition(owns: (ref: string) => boolean, onMainApplied?: () => void): ServiceSinkLike {
    this.partitions.push(owns);
    if (onMainApplied) this.partitionWatchers.push(onMainApplied);
    const scoped = (desired: ReadonlyMap<string, DesiredServicePort>, refs: Set<string>): ApplyStats => {
      const kept = new Map<string, DesiredServicePort>();
      const conflicts: PartitionConflict[] = [];
      for (const [key, d] of desired) {
        if (!owns(d.ref)) throw new Error(`ServiceLb partition: ${d.key} belongs to ${d.ref}, which this partition does not own`);
        const held = this.state.services.get(key);
        if (held && !owns(held.ref)) conflicts.push({ key, wanted: d.ref, heldBy: held.ref });
        else kept.set(key, d);
        refs.add(d.ref);
      }
      const stats = this.run(kept, refs);
      return conflicts.length ? { ...stats, conflicts } : stats;
    };
    return {
      resync: (desired) => scoped(desired, new Set([...this.state.byRef.keys()].filter(owns))),
      applyChanges: (refs, desired) => {
        for (const d of desired.values()) {
          if (!refs.has(d.ref)) throw new Error(`ServiceLb partition applyChanges: ${d.key} belongs to ${d.ref}, which is not among the changed refs`);
        }
        return scoped(desired, new Set(refs));
      },
    };
  }

  private run(desired: ReadonlyMap<string, DesiredServicePort>, refs?: ReadonlySet<string>): ApplyStats {
    if (refs === undefined && this.partitions.length) {
      // A full resync of the main source: everything but what partitions own.
      const own = new Set<string>();
      for (const ref of this.state.byRef.keys()) if (!this.partitions.some((p) => p(ref))) own.add(ref);
      for (const d of desired.values()) own.add(d.ref);
      refs = own;
    }
    const t0 = performance.now();
    this.checkFits(desired, refs);
    const diff = diffServices(this.state, desired, this.ids, refs);
    this.checkCapacity(diff);
    const goneUdp = this.udpDestroy ? departedBackends(this.state, diff, 'UDP') : [];
    let batches: number;
    try {
      batches = this.write(diff.ops);
    } catch (e) {
      // The kernel refused a write half way (the maps hold part of this diff):
      // remove what no service can reach, as open() does, and diff against
      // what the maps really hold from now on.
      repair(this.maps);
      this.ids = this.loadState(this.ids.peek);
      throw e;
    }
    this.record(diff);
    const ms = performance.now() - t0;
    // Attached only once the maps hold a whole state, so no connect() is
    // translated against half-filled maps.
    let attachedNow = false;
    if (this.cgroupPath !== undefined && !this.attached && !this.linksPinned()) {
      this.attach();
      attachedNow = true;
    }
    const stats: ApplyStats = { ops: diff.ops.length, services: diff.services.size, syscallBatches: batches, ms, attachedNow };
    // After the maps stopped offering these backends, so a socket that reconnects gets a live one.
    if (goneUdp.length) stats.udpDestroy = this.destroyUdp(goneUdp);
    return stats;
  }

  /** Runs the UDP socket destroyer (loaded on first use); every failure ends up in the stats. */
  private destroyUdp(gone: Parameters<UdpSocketDestroyer['destroy']>[0]): UdpDestroyStats {
    const opts = this.udpDestroy as UdpDestroyOptions & { objectPath: string };
    if (this.destroyer === undefined) {
      try {
        this.destroyer = UdpSocketDestroyer.open({
          objectPath: opts.objectPath, sockNatFd: this.obj.map('patu_sock_nat').fd, revnatFd: this.obj.map('patu_revnat').fd,
        });
      } catch (e) {
        this.destroyer = null;
        this.destroyerError = `UDP socket destroyer unavailable (needs the UDP socket iterator and bpf_sock_destroy, kernel 6.5+): ${messageOf(e)}`;
      }
    }
    if (!this.destroyer) {
      // Said once (the agent warns): this kernel will not change its mind.
      const errors = this.destroyerError ? [this.destroyerError] : [];
      this.destroyerError = '';
      return { backends: gone.length, netns: 0, skippedNetns: 0, sockets: 0, ms: 0, errors };
    }
    try {
      return this.destroyer.destroy(gone, opts);
    } catch (e) {
      return { backends: gone.length, netns: 0, skippedNetns: 0, sockets: 0, ms: 0, errors: [`UDP socket destroyer: ${messageOf(e)}`] };
    }
  }

  /**
   * Refuses, before the diff is even computed, an apply whose result cannot
   * fit: as many service ports and backends as the maps will hold afterwards
   * (each backend has one slot, so the slot map holds as many as the backend map).
   */
  private checkFits(desired: ReadonlyMap<string, DesiredServicePort>, refs?: ReadonlySet<string>): void {
    let ports = refs ? this.state.services.size : 0;
    let backends = refs ? this.slotCount : 0;
    if (refs) {
      for (const ref of refs) {
        for (const key of this.state.byRef.get(ref) ?? []) {
          ports--;
          backends -= this.state.services.get(key)?.slots.length ?? 0;
        }
      }
    }
    for (const d of desired.values()) {
      ports++;
      backends += d.backends.length;
    }
    if (ports > this.maps.svc.info.maxEntries) throw new ServiceCapacityError(this.maps.svc.name, ports, this.maps.svc.info.maxEntries, 'too many service ports');
    if (backends > this.maps.backend.info.maxEntries) throw new ServiceCapacityError(this.maps.backend.name, backends, this.maps.backend.info.maxEntries, 'too many backends');
  }

  /**
   * Refuses a diff that would overflow a map, before its first write. The
   * phases add before they remove (so readers never miss a backend), so a map
   * briefly holds its old entries plus the new ones: that peak must fit too.
   */
  private checkCapacity(diff: DiffResult): void {
    let newSvcs = 0;
    let goneSvcs = 0;
    let slotsAfter = this.slotCount;
    let slotPeak = this.slotCount;
    for (const [key, s] of diff.services) {
      const old = this.state.services.get(key);
      const oldSlots = old?.slots.length ?? 0;
      if (!old && s) newSvcs++;
      if (old && !s) goneSvcs++;
      const n = s ? s.slots.length : 0;
      slotsAfter += n - oldSlots;
      if (n > oldSlots) slotPeak += n - oldSlots;
    }
    const backendsNow = this.state.backends.size;
    const svcsNow = this.state.services.size;
    const limits: [{ name: string; info: { maxEntries: number } }, number, number, string][] = [
      [this.maps.svc, svcsNow + newSvcs - goneSvcs, svcsNow + newSvcs, 'service ports'],
      [this.maps.meta, svcsNow + newSvcs - goneSvcs, svcsNow + newSvcs, 'service ports'],
      [this.maps.backend, backendsNow + diff.addedBackends.size - diff.removedBackends.length, backendsNow + diff.addedBackends.size, 'backends'],
      [this.maps.slot, slotsAfter, slotPeak, 'backend slots'],
    ];
    for (const [map, after, peak, what] of limits) {
      const cap = map.info.maxEntries;
      if (after > cap) throw new ServiceCapacityError(map.name, after, cap, `too many ${what}`);
      if (peak > cap) throw new ServiceCapacityError(map.name, peak, cap, `too many ${what} at once while old entries are replaced (apply the change in smaller steps)`);
    }
  }

  private record(diff: DiffResult): void {
    for (const [key, s] of diff.services) {
      const old = this.state.services.get(key);
      if (old) this.slotCount -= old.slots.length;
      if (s) this.slotCount += s.slots.length;
      if (old && (!s || s.id !== old.id)) this.svcIds.delete(old.id);
      if (s) this.svcIds.add(s.id);
    }
    commit(this.state, diff);
  }

  /**
   * Writes ops phase by phase (the order is what keeps readers consistent);
   * within a phase, one batch syscall per map and kind.
   */
  private write(ops: readonly MapOp[]): number {
    let batches = 0;
    let i = 0;
    while (i < ops.length) {
      const phase = ops[i]!.phase;
      const b = emptyBatch();
      for (; i < ops.length && ops[i]!.phase === phase; i++) sortInto(b, ops[i]!);
      batches += this.writeBatch(b);
    }
    return batches;
  }

  private writeBatch(b: PhaseBatch): number {
    const m = this.maps;
    let n = 0;
    const each = <T>(list: T[], write: (list: T[]) => unknown): void => {
      if (list.length === 0) return;
      write(list);
      n++;
    };
    each(b.backendUpdate, (l) => m.backend.batchUpdate(l.map((o) => [o.id, { ip: o.value.ip, port: o.value.port, pad: 0, svcId: o.value.svcId }] as const)));
    each(b.metaUpdate, (l) => m.meta.batchUpdate(l.map((o) => [o.svcId, o.name] as const)));
    each(b.slotUpdate, (l) => m.slot.batchUpdate(l.map((o) => [{ svcId: o.svcId, slot: o.slot }, o.backendId] as const)));
    each(b.svcUpdate, (l) => m.svc.batchUpdate(l.map((o) => [svcKeyOf(o.key), {
      count: o.value.count, svcId: o.value.svcId, flags: o.value.affinity ? F_AFFINITY : 0, affinityTimeout: o.value.affinityTimeoutSeconds,
    }] as const)));
    each(b.svcDelete, (l) => m.svc.batchDelete(l.map((o) => svcKeyOf(o.key))));
    each(b.slotDelete, (l) => m.slot.batchDelete(l.map((o) => ({ svcId: o.svcId, slot: o.slot }))));
    each(b.backendDelete, (l) => m.backend.batchDelete(l.map((o) => o.id)));
    each(b.metaDelete, (l) => m.meta.batchDelete(l.map((o) => o.svcId)));
    return n;
  }

  /**
   * Writes the node-wide settings (service CIDR, the node's netns cookie).
   * Throws, writing nothing, on a bad CIDR. Fields left out keep their value.
   */
  configure(cfg: LbConfig): void {
    const cur = this.maps.cfg.lookup(0) ?? { svcNet: '0.0.0.0', svcMask: '0.0.0.0', hostNetnsCookie: 0n };
    const next: LbCfgC = { ...cur };
    if ('serviceCidr' in cfg) Object.assign(next, serviceCidrConfig(cfg.serviceCidr));
    if (cfg.hostNetnsCookie !== undefined) next.hostNetnsCookie = cfg.hostNetnsCookie;
    this.maps.cfg.update(0, next);
  }

  /** The settings as the map holds them. */
  config(): LbConfig {
    const c = this.maps.cfg.lookup(0);
    if (!c) return {};
    const out: LbConfig = { hostNetnsCookie: c.hostNetnsCookie };
    if (c.svcMask !== '0.0.0.0') out.serviceCidr = `${c.svcNet}/${maskBits(c.svcMask)}`;
    return out;
  }

  /**
   * Makes patu_node_addr hold exactly `addrs` (IPv4 address -> NODE_ADDR_F_*):
   * the addresses a wildcard (NodePort) entry answers on. Writes only the
   * difference; returns what changed.
   */
  setNodeAddresses(addrs: ReadonlyMap<string, number>): { added: string[]; removed: string[] } {
    const cur = new Map(this.maps.nodeAddr.entries());
    const removed = [...cur.keys()].filter((a) => !addrs.has(a));
    const upd: [string, number][] = [];
    const added: string[] = [];
    for (const [a, f] of addrs) {
      const old = cur.get(a);
      if (old === f) continue;
      upd.push([a, f]);
      if (old === undefined) added.push(a);
    }
    if (upd.length + cur.size - removed.length > this.maps.nodeAddr.info.maxEntries) {
      throw new ServiceCapacityError(this.maps.nodeAddr.name, upd.length + cur.size - removed.length, this.maps.nodeAddr.info.maxEntries, 'too many node addresses');
    }
    // New addresses first: a moment with both is harmless, one with neither refuses a NodePort.
    if (upd.length) this.maps.nodeAddr.batchUpdate(upd);
    if (removed.length) this.maps.nodeAddr.batchDelete(removed);
    return { added: added.sort(), removed: removed.sort() };
  }

  /** patu_node_addr as the map holds it. */
  nodeAddresses(): Map<string, number> {
    return new Map(this.maps.nodeAddr.entries());
  }

  /** Services and backends as the maps hold them now (not as intended). */
  programmed(): ProgrammedServiceView[] {
    return programmedView(this.maps);
  }

  /** The diff base (what this process believes is programmed). */
  get programmedState(): ProgrammedState {
    return this.state;
  }

  /** Releases fds; pinned maps and links stay, so translation continues. */
  close(): void {
    this.destroyer?.close();
    this.destroyer = undefined;
    for (const l of this.links) l.close();
    this.links = [];
    for (const m of Object.values(this.maps)) (m as TypedMap<unknown, unknown>).close();
    this.obj.close();
  }
}

/** Every map of bpf/sock_lb.c: all are pinned by name under the pin root. */
const SOCK_LB_MAPS: ReadonlySet<string> = new Set([...Object.keys(SOCK_LB_MAP_CODECS), 'patu_sock_nat']);

/** The sock_lb maps the programs attached through links pinned under pinRoot use, by name. */
function attachedMaps(pinRoot: string): Map<string, UsedMap> {
  const programs: { progId: number; label: string }[] = [];
  for (const prog of SOCK_LB_PROGRAMS) {
    const pin = join(pinRoot, 'links', prog);
    if (!existsSync(pin)) continue;
    const link = BpfLink.fromPin(pin);
    try {
      programs.push({ progId: link.info().progId, label: `the attached ${prog}` });
    } finally {
      link.close();
    }
  }
  return mapsUsedBy(programs, SOCK_LB_MAPS);
}

/**
 * Before libbpf loads (and reuses the pinned maps, or creates a missing one):
 * each sock_lb map an attached program uses is pinned back where it belongs,
 * so an apply writes the maps the running programs read. Returns what was repaired.
 */
const repinAttachedMaps = (pinRoot: string): string[] => repinMaps(pinRoot, attachedMaps(pinRoot));

/** After load: the object's maps are the attached programs' maps, or this process would program maps nobody reads. */
function assertAttachedUse(pinRoot: string, obj: BpfObject): void {
  for (const [name, { id, by }] of attachedMaps(pinRoot)) {
    const ours = obj.map(name).info().id;
    if (ours !== id) {
      throw new Error(`${name} under ${pinRoot} changed while it was being opened: ${by} uses map id ${id}, the pin map id ${ours}; apply again`);
    }
  }
}

function readState(m: Maps): ProgrammedState {
  const state = emptyState();
  const names = new Map<number, string>(m.meta.entries());
  for (const [k, v] of m.svc.entries()) {
    const protocol = PROTO_NAME[k.proto & ~PROTO_EXT_LOCAL];
    if (!protocol) continue;
    const scope = k.proto & PROTO_EXT_LOCAL ? 'external-local' as const : undefined;
    const slots: number[] = [];
    for (let i = 0; i < v.count; i++) {
      const bid = m.slot.lookup({ svcId: v.svcId, slot: i });
      if (bid === undefined) break;
      slots.push(bid);
      const b = m.backend.lookup(bid);
      if (b) state.backends.set(bid, { ip: b.ip, port: b.port, svcId: b.svcId });
    }
    const name = names.get(v.svcId) ?? `?/svc-${v.svcId}:${k.port}`;
    const key = portKey(k.vip, k.port, protocol, scope);
    const svc: ProgrammedService = {
      key, ref: name.slice(0, name.lastIndexOf(':')), vip: k.vip, port: k.port, protocol, id: v.svcId, name,
      affinity: (v.flags & F_AFFINITY) !== 0, affinityTimeoutSeconds: v.affinityTimeout, slots,
      ...(scope ? { scope } : {}),
    };
    setService(state, svc);
  }
  return state;
}

/** Removes entries no service can reach: leftovers of an apply interrupted between phases. */
function repair(m: Maps): void {
  const counts = new Map<number, number>();
  for (const [, v] of m.svc.entries()) counts.set(v.svcId, v.count);
  const live = new Set<number>();
  const staleSlots: SlotKeyC[] = [];
  for (const [k, bid] of m.slot.entries()) {
    const count = counts.get(k.svcId);
    if (count === undefined || k.slot >= count) staleSlots.push(k);
    else live.add(bid);
  }
  m.slot.batchDelete(staleSlots);
  m.backend.batchDelete([...m.backend.keys()].filter((id) => !live.has(id)));
  m.meta.batchDelete([...m.meta.keys()].filter((id) => !counts.has(id)));
}

function programmedView(m: Pick<Maps, 'svc' | 'slot' | 'backend' | 'meta'>): ProgrammedServiceView[] {
  const out: ProgrammedServiceView[] = [];
  for (const [k, v] of m.svc.entries()) {
    const backends: ProgrammedServiceView['backends'] = [];
    for (let i = 0; i < v.count; i++) {
      const bid = m.slot.lookup({ svcId: v.svcId, slot: i });
      const b = bid === undefined ? undefined : m.backend.lookup(bid);
      if (bid !== undefined && b) backends.push({ id: bid, ip: b.ip, port: b.port });
    }
    const affinity = (v.flags & F_AFFINITY) !== 0;
    out.push({
      name: m.meta.lookup(v.svcId) ?? '',
      vip: k.vip, port: k.port, protocol: PROTO_NAME[k.proto & ~PROTO_EXT_LOCAL] ?? 'TCP', svcId: v.svcId,
      ...(k.proto & PROTO_EXT_LOCAL ? { scope: 'external-local' as const } : {}),
      sessionAffinity: affinity ? 'ClientIP' : 'None',
      affinityTimeoutSeconds: affinity ? v.affinityTimeout : 0,
      backends,
    });
  }
  return out.sort((a, b) => a.name.localeCompare(b.name) || a.vip.localeCompare(b.vip) || a.port - b.port);
}

/** Prefix length of a dotted mask ('255.240.0.0' -> 12). */
function maskBits(mask: string): number {
  let n = 0;
  for (let m = ipToBigInt(mask); m; m &= m - 1n) n++;
  return n;
}

/**
 * The node-wide settings from the pins, without loading programs (`patu status`):
 * the service CIDR and the addresses NodePorts answer on. Null when not set up.
 */
export function readLbSettings(pinRoot: string = DEFAULTS.pinRoot): { serviceCidr: string | null; nodeAddresses: string[] } | null {
  const p = (n: string): string => join(pinRoot, n);
  if (!existsSync(p('patu_lb_cfg')) || !existsSync(p('patu_node_addr'))) return null;
  const c = SOCK_LB_MAP_CODECS;
  const cfg = TypedMap.fromPin(p('patu_lb_cfg'), c.patu_lb_cfg.key, c.patu_lb_cfg.value);
  const addrs = TypedMap.fromPin(p('patu_node_addr'), c.patu_node_addr.key, c.patu_node_addr.value);
  try {
    const v = cfg.lookup(0);
    const serviceCidr = v && v.svcMask !== '0.0.0.0' ? `${v.svcNet}/${maskBits(v.svcMask)}` : null;
    return { serviceCidr, nodeAddresses: [...addrs.keys()].sort() };
  } finally {
    cfg.close();
    addrs.close();
  }
}

/**
 * Reads the programmed services from pinned maps without loading programs
 * (for `patu services` / `patu status` next to a running agent).
 */
export function readProgrammed(pinRoot: string = DEFAULTS.pinRoot): ProgrammedServiceView[] | null {
  const p = (n: string): string => join(pinRoot, n);
  if (!existsSync(p('patu_svc'))) return null;
  const c = SOCK_LB_MAP_CODECS;
  const maps: Pick<Maps, 'svc' | 'slot' | 'backend' | 'meta'> = {
    svc: TypedMap.fromPin(p('patu_svc'), c.patu_svc.key, c.patu_svc.value),
    slot: TypedMap.fromPin(p('patu_svc_slot'), c.patu_svc_slot.key, c.patu_svc_slot.value),
    backend: TypedMap.fromPin(p('patu_backend'), c.patu_backend.key, c.patu_backend.value),
    meta: TypedMap.fromPin(p('patu_svc_meta'), c.patu_svc_meta.key, c.patu_svc_meta.value),
  };
  try {
    return programmedView(maps);
  } finally {
    for (const x of Object.values(maps)) x.close();
  }
}

export type { ProgrammedBackend };
