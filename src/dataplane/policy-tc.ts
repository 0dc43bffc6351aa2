// NetworkPolicy enforcement, the kernel side (bpf/policy.c): loads and pins the
// two tc programs and their maps under <pinRoot>/policy, attaches them to pod
// veths with BPF_PROG_ATTACH (tcx, no links: the attachment goes with the veth),
// and programs the maps from PolicyMapContents (the compiler's output) with a
// diff against what they hold. Layouts and the pure helpers: policy-maps.ts.
//
// Who calls what:
//   agent   PolicyDataplane.open (load or reuse pins) -> attachAll -> sync on each change,
//           flushConntrack/evictSockets for flows a change denies, stats, setMonitor
//   plugin  PolicyDataplane.openExisting (pins only, never loads) -> attach(veth) + bindDevice(ip, veth)
//   CLI     openExisting -> read(), stats(); PolicyEvents for `patu monitor`
import { existsSync, readdirSync, rmSync, statSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { BpfObject, BpfProgram } from '../kernel/bpf/object.js';
import { BpfError } from '../kernel/bpf/errors.js';
import { TypedMap, u64, ipv4 } from '../kernel/bpf/map.js';
import { PerCpuHash } from '../kernel/bpf/percpu.js';
import { RingBufferReader } from '../kernel/bpf/ringbuf.js';
import { tcxAttach, tcxDetachId, tcxQuery, type TcxDirection } from '../kernel/bpf/tcx.js';
import { testRun, type TestRunOptions, type TestRunResult } from '../kernel/bpf/test-run.js';
import { progInfoByFd } from '../kernel/bpf/introspect.js';
import { assertPinRoot, ensurePinDir, withPinDirLock, type BpffsOptions } from '../kernel/bpf/pins.js';
import { Rtnl } from '../kernel/netlink/rtnl.js';
import { PatuError } from '../errors.js';
import { bpfObjectPath } from '../home.js';
import { accelPins, sockKeyCodec } from './accel-maps.js';
import { isPatuVethName } from './names.js';
import { markPolicyVeth } from './routed-tc.js';
import { ROUTED_GATEWAY_MAC } from './routed-gateway.js';
import {
  POL, POLICY_MAP_CODECS, POLICY_PROGRAMS, policyPins, epFlags, peerKey, peerKeyString, ruleKeyString, ruleKeyStrings, parseRuleKeyString, rulesFromKeys,
  dirName, decodeEvent, ctKeyC, ctValC,
  type PolicyMapContents, type PolicyEndpoint, type PeerPrefix, type EpValC, type PeerKeyC, type RuleKeyC, type CtKey, type CtVal,
  type StatsEntry, type SyncTouched, type RuleEntry, type PolicyEvent, type CfgC, type CtKeyC, type CtValC,
} from './policy-maps.js';

export * from './policy-maps.js';

/** How long a tombstone keeps a denied flow's packets off (TCP gives up retransmitting well before). */
const POL_TOMBSTONE_S = 6 * 3600;

/** The desired contents do not fit a map: nothing was written. */
export class PolicyCapacityError extends PatuError {
  readonly code = 'POLICY_CAPACITY';
  constructor(readonly map: string, readonly needed: number, readonly max: number) {
    super(`policy map ${map} cannot hold ${needed} entries (max ${max}): nothing was changed`);
  }
}

/** A bad entry in the desired contents (duplicate endpoint, bad prefix...): nothing was written. */
export class PolicyContentsError extends PatuError {
  readonly code = 'POLICY_CONTENTS';
}

export interface PolicyOpenOptions extends BpffsOptions {
  /** Production: /sys/fs/bpf/patu; pins go to <pinRoot>/policy. */
  pinRoot: string;
  /** Directory holding policy.o (default: build/bpf of this tree). */
  objectDir?: string;
  /** Load the object even when pinned programs exist (an upgrade). Default: only when missing or when policy.o is newer than the pins. */
  reload?: boolean;
  /** What open() did that is worth knowing but not an error (the caller's log). */
  log?: (msg: string, fields: Record<string, unknown>) => void;
}

type Hook = 'fromPod' | 'toPod';
const HOOK_DIR: Record<Hook, TcxDirection> = { fromPod: 'ingress', toPod: 'egress' };

type MapName = keyof typeof POLICY_MAP_CODECS;
type TypedOf<N extends MapName> = TypedMap<
  ReturnType<(typeof POLICY_MAP_CODECS)[N]['key']['decode']>,
  ReturnType<(typeof POLICY_MAP_CODECS)[N]['value']['decode']>
>;

/** What the last sync() of an instance left in the tries: every key, and the contents it was given when they were canonical. */
interface Written {
  generation: number;
  peers: Map<string, [PeerKeyC, number]>;
  rules: Map<string, number>;
  /** The rules and peers as given (canonical: see canonicalRules), for diffing the next contents against. */
  last: { rules: RuleEntry[]; peers: Map<string, number> } | undefined;
}

interface TrieDiff {
  ruleAdds: [RuleKeyC, number][];
  ruleDels: RuleKeyC[];
  peerAdds: [PeerKeyC, number][];
  peerDels: PeerKeyC[];
  /** Keys wanted, and in the maps during the update (the old and the new ones). */
  ruleCount: number;
  ruleUnion: number;
  peerCount: number;
  peerUnion: number;
  /** What the tries hold after the update. */
  rules: Map<string, number>;
  peers: Map<string, [PeerKeyC, number]>;
  last: Written['last'];
}

const DIR_ORDER = { egress: 0, ingress: 1 } as const;
/** The compiler's order of rules: endpoint, class, direction (egress first), protocol (any first), first port (any first). */
function ruleOrder(a: RuleEntry, b: RuleEntry): number {
  return a.epId - b.epId || a.peerClass - b.peerClass || DIR_ORDER[a.dir] - DIR_ORDER[b.dir] ||
    (a.proto ?? -1) - (b.proto ?? -1) || (a.portFrom ?? -1) - (b.portFrom ?? -1);
}

/**
 * Whether rules are sorted (ruleOrder) and no two of them share an LPM key: per endpoint, class and
 * direction, an any-protocol entry stands alone, an any-port entry alone in its protocol, and port
 * ranges are disjoint. The compiler's output is; then each key comes from exactly one entry, and the
 * keys of what changed can be worked out from the entries that changed.
 */
function canonicalRules(rules: readonly RuleEntry[]): boolean {
  for (let i = 1; i < rules.length; i++) {
    const a = rules[i - 1]!;
    const b = rules[i]!;
    const o = ruleOrder(a, b);
    if (o > 0) return false;
    if (a.epId !== b.epId || a.peerClass !== b.peerClass || a.dir !== b.dir) continue;
    if (a.proto === null || b.proto === null) return false;
    if (a.proto !== b.proto) continue;
    if (a.portFrom === null || b.portFrom === null || a.portTo === null || b.portTo === null || b.portFrom <= a.portTo) return false;
  }
  return true;
}

/** Every key of the desired contents against the tries (cached, or read): the full diff. */
function fullDiff(desired: PolicyMapContents, cached: Written | undefined, peerMap: TypedMap<PeerKeyC, number>, ruleMap: TypedMap<RuleKeyC, number>): TrieDiff {
  const wantPeer = new Map<string, [PeerKeyC, number]>();
  for (const p of desired.peers) {
    let k: PeerKeyC;
    try {
      k = peerKey(p.cidr);
    } catch (e) {
      throw new PolicyContentsError((e as Error).message, { cause: e });
    }
    const s = peerKeyString(k);
    const had = wantPeer.get(s);
    if (had && had[1] !== p.peerClass) throw new PolicyContentsError(`peer prefix ${p.cidr} given classes ${had[1]} and ${p.peerClass}`);
    wantPeer.set(s, [k, p.peerClass >>> 0]);
  }
  const wantRule = new Map<string, number>();
  const strs: string[] = [];
  for (const r of desired.rules) {
    strs.length = 0;
    try {
      ruleKeyStrings(r, strs);
    } catch (e) {
      throw new PolicyContentsError((e as Error).message, { cause: e });
    }
    const pol = r.policyId >>> 0;
    for (const k of strs) {
      const had = wantRule.get(k);
      // Two policies allowing the same thing: the lower id is reported (either one allows).
      if (had === undefined || pol < had) wantRule.set(k, pol);
    }
  }
  const havePeer = cached?.peers ?? new Map<string, [PeerKeyC, number]>([...peerMap.entries()].map(([k, v]) => [peerKeyString(k), [k, v]]));
  const haveRule = cached?.rules ?? new Map<string, number>([...ruleMap.entries()].map(([k, v]) => [ruleKeyString(k), v]));
  const ruleAdds: [RuleKeyC, number][] = [];
  let ruleUnion = haveRule.size;
  for (const [s, v] of wantRule) {
    const h = haveRule.get(s);
    if (h === undefined) ruleUnion++;
    if (h !== v) ruleAdds.push([parseRuleKeyString(s), v]);
  }
  const ruleDels: RuleKeyC[] = [];
  for (const s of haveRule.keys()) if (!wantRule.has(s)) ruleDels.push(parseRuleKeyString(s));
  const peerAdds: [PeerKeyC, number][] = [];
  let peerUnion = havePeer.size;
  for (const [s, [k, v]] of wantPeer) {
    const h = havePeer.get(s);
    if (!h) peerUnion++;
    if (h?.[1] !== v) peerAdds.push([k, v]);
  }
  const peerDels = [...havePeer].filter(([s]) => !wantPeer.has(s)).map(([, [k]]) => k);
  let last: Written['last'];
  if (canonicalRules(desired.rules)) {
    const peers = new Map<string, number>();
    let plain = true;
    for (const p of desired.peers) {
      if (peers.has(p.cidr) || !wantPeer.has(p.cidr)) plain = false; // written otherwise than given: diffs go the full way
      peers.set(p.cidr, p.peerClass >>> 0);
    }
    if (plain) last = { rules: desired.rules.map((r) => ({ ...r })), peers }; // copies: the caller may reuse its objects
  }
  return { ruleAdds, ruleDels, peerAdds, peerDels, ruleCount: wantRule.size, ruleUnion, peerCount: wantPeer.size, peerUnion, rules: wantRule, peers: wantPeer, last };
}

/**
 * The diff from the contents the last sync was given, when both they and the new ones are canonical:
 * the sorted rule lists walked side by side (numbers only), keys made only for entries that differ.
 * Undefined when it cannot be taken that way (the full diff is).
 */
function diffFromLast(w: Written, desired: PolicyMapContents): TrieDiff | undefined {
  const last = w.last;
  if (!last || !canonicalRules(desired.rules)) return undefined;
  // Peers: by the cidr as given (the compiler gives them normalized; anything else goes the full way).
  const wantPeers = new Map<string, number>();
  for (const p of desired.peers) {
    if (wantPeers.has(p.cidr)) return undefined;
    wantPeers.set(p.cidr, p.peerClass >>> 0);
  }
  const peerAdds: [PeerKeyC, number][] = [];
  const peerDels: PeerKeyC[] = [];
  for (const [cidr, c] of wantPeers) {
    if (last.peers.get(cidr) === c) continue;
    let k: PeerKeyC;
    try {
      k = peerKey(cidr);
    } catch (e) {
      throw new PolicyContentsError((e as Error).message, { cause: e });
    }
    if (peerKeyString(k) !== cidr) return undefined;
    peerAdds.push([k, c]);
  }
  for (const cidr of last.peers.keys()) if (!wantPeers.has(cidr)) peerDels.push(w.peers.get(cidr)![0]);
  // Rules: entries only in the old list lose their keys, entries only in the new one (or with another
  // policy) write theirs; a key both do (a range that grew) is written, not deleted.
  const a = last.rules;
  const b = desired.rules;
  const gone: RuleEntry[] = [];
  const come: RuleEntry[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    const x = a[i];
    const y = b[j];
    const o = x === undefined ? 1 : y === undefined ? -1 : ruleOrder(x, y);
    if (o === 0 && x!.portTo === y!.portTo) {
      if (x!.policyId !== y!.policyId) come.push(y!);
      i++;
      j++;
    } else if (o < 0 || (o === 0 && x!.portTo! < y!.portTo!)) {
      gone.push(x!);
      i++;
    } else {
      if (o === 0) gone.push(x!), i++; // same start, other end: the old one goes, the new one comes
      come.push(y!);
      j++;
    }
  }
  const strs: string[] = [];
  const addKeys = new Map<string, number>();
  for (const r of come) {
    strs.length = 0;
    try {
      ruleKeyStrings(r, strs);
    } catch (e) {
      throw new PolicyContentsError((e as Error).message, { cause: e });
    }
    for (const k of strs) addKeys.set(k, r.policyId >>> 0);
  }
  const delKeys: string[] = [];
  for (const r of gone) {
    strs.length = 0;
    ruleKeyStrings(r, strs);
    for (const k of strs) if (!addKeys.has(k)) delKeys.push(k);
  }
  const rules = w.rules;
  const ruleAdds: [RuleKeyC, number][] = [];
  let ruleUnion = rules.size;
  let ruleCount = rules.size;
  for (const [k, v] of addKeys) {
    const h = rules.get(k);
    if (h === undefined) {
      ruleUnion++;
      ruleCount++;
    }
    if (h !== v) ruleAdds.push([parseRuleKeyString(k), v]);
  }
  ruleCount -= delKeys.length;
  const ruleDels = delKeys.map(parseRuleKeyString);
  let peerUnion = w.peers.size;
  for (const [k] of peerAdds) if (!w.peers.has(peerKeyString(k))) peerUnion++;
  const peerCount = wantPeers.size;
  // The tries' keys after the update (the cached maps are this instance's own: updated in place).
  for (const k of delKeys) rules.delete(k);
  for (const [k, v] of addKeys) rules.set(k, v);
  const peers = w.peers;
  for (const k of peerDels) peers.delete(peerKeyString(k));
  for (const [k, v] of peerAdds) peers.set(peerKeyString(k), [k, v]);
  return { ruleAdds, ruleDels, peerAdds, peerDels, ruleCount, ruleUnion, peerCount, peerUnion, rules, peers, last: { rules: b.map((r) => ({ ...r })), peers: wantPeers } };
}

export class PolicyDataplane {
  private readonly pins: ReturnType<typeof policyPins>;
  private readonly opened = new Map<string, { close(): void }>();
  private readonly progIds: Record<Hook, number>;
  /** What the last sync() of this instance left in the tries, and the generation it wrote. */
  private written: Written | undefined;

  private constructor(readonly pinRoot: string, private readonly progs: Record<Hook, BpfProgram>) {
    this.pins = policyPins(pinRoot);
    this.progIds = { fromPod: progInfoByFd(progs.fromPod.fd).id, toPod: progInfoByFd(progs.toPod.fd).id };
  }

  /**
   * Loads bpf/policy.o and pins its maps and programs under <pinRoot>/policy,
   * or reuses what is pinned there (restarts keep maps and conntrack). Serialised
   * with flock on the pin directory. After a (re)load, attachAll() swaps the
   * new programs in on every veth.
   */
  static open(opts: PolicyOpenOptions): PolicyDataplane {
    const root = ensurePinDir(opts.pinRoot, opts.mountBpffs === undefined ? {} : { mountBpffs: opts.mountBpffs });
    const pins = policyPins(root);
    ensurePinDir(pins.dir);
    const objectPath = opts.objectDir ? join(opts.objectDir, 'policy.o') : bpfObjectPath('policy');
    return withPinDirLock(pins.dir, () => {
      const mapPins = Object.keys(POLICY_MAP_CODECS).map((n) => join(pins.dir, n)).concat(pins.events);
      const have = [pins.progFromPod, pins.progToPod, ...mapPins].every((p) => existsSync(p));
      let load = !have || opts.reload === true;
      if (!load && existsSync(objectPath)) load = statSync(objectPath).mtimeMs > statSync(pins.progFromPod).mtimeMs;
      if (load) {
        if (!existsSync(objectPath)) throw new Error(`PolicyDataplane.open: BPF object ${objectPath} is missing (run scripts/build.sh)`);
        const loadAndPin = (): void => {
          const obj = BpfObject.open(objectPath, { pinRoot: pins.dir });
          try {
            obj.load(); // maps pinned by name: reused when there, created and pinned when not
            for (const [name, path] of [[POLICY_PROGRAMS.fromPod, pins.progFromPod], [POLICY_PROGRAMS.toPod, pins.progToPod]] as const) {
              if (existsSync(path)) unlinkSync(path);
              obj.program(name).pin(path);
            }
          } finally {
            obj.close();
          }
        };
        try {
          loadAndPin();
        } catch (e) {
          // Maps pinned by a build with other layouts (an upgrade that changed bpf/policy.h): libbpf refuses to
          // reuse them. New maps, then; the programs still attached keep the old ones until attachAll() swaps them.
          if (!(e instanceof BpfError) || !/reuse pinned map/i.test(e.log)) throw e;
          const stale = mapPins.filter((p) => existsSync(p));
          for (const p of stale) unlinkSync(p);
          opts.log?.('policy maps pinned by an older build had other layouts: unpinned, new maps created (conntrack starts empty)', { maps: stale });
          loadAndPin();
        }
      }
      const dp = PolicyDataplane.fromPins(root);
      if (!dp) throw new Error(`PolicyDataplane.open: pins under ${pins.dir} incomplete after loading`);
      return dp;
    });
  }

  /** The pinned programs, if policy was set up under pinRoot; never loads anything (the CNI plugin, the CLI). */
  static openExisting(pinRoot: string): PolicyDataplane | null {
    return PolicyDataplane.fromPins(pinRoot);
  }

  private static fromPins(pinRoot: string): PolicyDataplane | null {
    const pins = policyPins(pinRoot);
    if (!existsSync(pins.progFromPod) || !existsSync(pins.progToPod)) return null;
    const from = BpfProgram.fromPin(pins.progFromPod);
    let to: BpfProgram | undefined;
    try {
      to = BpfProgram.fromPin(pins.progToPod);
      return new PolicyDataplane(pinRoot, { fromPod: from, toPod: to });
    } catch (e) {
      from.close();
      to?.close();
      throw e;
    }
  }

  /** A pinned map, opened once per instance. */
  private map<N extends MapName>(name: N): TypedOf<N> {
    let m = this.opened.get(name);
    if (!m) {
      const c = POLICY_MAP_CODECS[name];
      m = TypedMap.fromPin(join(this.pins.dir, name), c.key as never, c.value as never);
      this.opened.set(name, m);
    }
    return m as TypedOf<N>;
  }

  /** Kernel ids of the two programs (what attach() puts on a veth). */
  programIds(): { fromPod: number; toPod: number } {
    return { ...this.progIds };
  }

  programFd(hook: Hook): number {
    return this.progs[hook].fd;
  }

  /** BPF_PROG_TEST_RUN of one program on a crafted frame (property test, benchmark). */
  testRun(hook: Hook, opts: TestRunOptions): TestRunResult {
    return testRun(this.progs[hook].fd, opts);
  }

  // --- programming the maps ------------------------------------------------------------------

  /**
   * Makes the maps hold `desired`: only what differs is written. Order: new
   * rules, new peers, endpoints (added or changed), then removed endpoints,
   * peers and rules, so a flow allowed before and after is never dropped
   * mid-update. Capacity is checked before the first write. An endpoint with
   * ifindex 0 keeps the veth the map (CNI ADD: bindDevice) already knows.
   */
  sync(desired: PolicyMapContents): { changed: number; touched: SyncTouched } {
    // Everything computed and checked before anything is written.
    const wantEp = new Map<string, EpValC>();
    for (const e of desired.endpoints) {
      if (wantEp.has(e.ip)) throw new PolicyContentsError(`endpoint ${e.ip} appears twice`);
      if (!Number.isInteger(e.epId) || e.epId <= 0 || e.epId > 0xffffffff) throw new PolicyContentsError(`endpoint ${e.ip}: ep id ${e.epId} must be a nonzero u32`);
      ipv4.encode(e.ip, Buffer.alloc(4), 0);
      wantEp.set(e.ip, { epId: e.epId, ifindex: e.ifindex >>> 0, flags: epFlags(e), pad: 0 });
    }

    return withPinDirLock(this.pins.dir, () => {
      const epMap = this.map('patu_pol_ep');
      const devMap = this.map('patu_pol_dev');
      const peerMap = this.map('patu_pol_peer');
      const ruleMap = this.map('patu_pol_rule');
      const cfgMap = this.map('patu_pol_cfg');
      const cfg = cfgMap.lookup(0) ?? { monitor: 0, monitorAllow: 0, generation: 0, pad: 0 };
      // Endpoints and veth bindings are read every time (the CNI plugin writes them too; hash maps: batch reads).
      const haveEp = new Map(epMap.entriesBatch());
      const devIp = new Map(devMap.entriesBatch());
      const devOf = new Map<string, number>();
      for (const [ifindex, ip] of devIp) devOf.set(ip, Math.max(devOf.get(ip) ?? 0, ifindex));
      // The tries only sync() writes: what this instance wrote last, unless another writer bumped the generation since.
      const cached = this.written?.generation === cfg.generation ? this.written : undefined;
      this.written = undefined; // until the writes below are all done
      // What differs from the tries: from the last contents when they are known and canonical (a walk
      // over the sorted entries, then keys only for what changed), else key by key over everything.
      const diff = (cached && diffFromLast(cached, desired)) || fullDiff(desired, cached, peerMap, ruleMap);
      const { ruleAdds, ruleDels, peerAdds, peerDels } = diff;
      // The latest binding of the address (CNI ADD) first: an ifindex the map holds may be a deleted veth's.
      for (const [ip, v] of wantEp) if (v.ifindex === 0) v.ifindex = devOf.get(ip) || haveEp.get(ip)?.ifindex || 0;

      const capacity = (name: string, want: number, union: number, max: number): boolean => {
        if (want > max) throw new PolicyCapacityError(name, want, max);
        return union > max; // removes must go first to make room
      };
      let epUnion = haveEp.size;
      for (const ip of wantEp.keys()) if (!haveEp.has(ip)) epUnion++;
      const epFirst = capacity('patu_pol_ep', wantEp.size, epUnion, epMap.info.maxEntries);
      const peerFirst = capacity('patu_pol_peer', diff.peerCount, diff.peerUnion, peerMap.info.maxEntries);
      const ruleFirst = capacity('patu_pol_rule', diff.ruleCount, diff.ruleUnion, ruleMap.info.maxEntries);

      let changed = 0;
      const epAdds: [string, EpValC][] = [];
      for (const [ip, v] of wantEp) {
        const h = haveEp.get(ip);
        if (!h || h.epId !== v.epId || h.ifindex !== v.ifindex || h.flags !== v.flags) epAdds.push([ip, v]);
      }
      const epDels = [...haveEp.keys()].filter((ip) => !wantEp.has(ip));
      const devAdds: [number, string][] = [];
      for (const [ip, v] of wantEp) if (v.ifindex && devIp.get(v.ifindex) !== ip) devAdds.push([v.ifindex, ip]);

      // A map too full for both the old and the new entries frees room first (a moment of deny, never of allow).
      if (epFirst) changed += epMap.batchDelete(epDels);
      if (peerFirst) changed += peerMap.batchDelete(peerDels);
      if (ruleFirst) changed += ruleMap.batchDelete(ruleDels);
      ruleMap.batchUpdate(ruleAdds);
      peerMap.batchUpdate(peerAdds);
      epMap.batchUpdate(epAdds);
      devMap.batchUpdate(devAdds);
      changed += ruleAdds.length + peerAdds.length + epAdds.length;
      if (!epFirst) changed += epMap.batchDelete(epDels);
      if (!peerFirst) changed += peerMap.batchDelete(peerDels);
      if (!ruleFirst) changed += ruleMap.batchDelete(ruleDels);
      const generation = (cfg.generation + 1) >>> 0;
      cfgMap.update(0, { ...cfg, generation });
      this.written = { generation, peers: diff.peers, rules: diff.rules, last: diff.last };
      const touched: SyncTouched = { epIds: new Set(), ips: new Set(), peers: [] };
      for (const [k] of ruleAdds) touched.epIds.add(k.epId);
      for (const k of ruleDels) touched.epIds.add(k.epId);
      for (const [ip] of epAdds) touched.ips.add(ip);
      for (const ip of epDels) touched.ips.add(ip);
      for (const [k] of peerAdds) touched.peers.push(peerKeyString(k));
      for (const k of peerDels) touched.peers.push(peerKeyString(k));
      return { changed, touched };
    });
  }

  /** What the maps hold, port blocks merged back into ranges (for `patu policy`). */
  read(): PolicyMapContents {
    const endpoints: PolicyEndpoint[] = [...this.map('patu_pol_ep').entries()].map(([ip, v]) => ({
      ip, epId: v.epId, ifindex: v.ifindex,
      isolatedIngress: (v.flags & POL.EP_ISOLATED_INGRESS) !== 0, isolatedEgress: (v.flags & POL.EP_ISOLATED_EGRESS) !== 0,
    })).sort((a, b) => a.epId - b.epId || (a.ip < b.ip ? -1 : 1));
    const peers: PeerPrefix[] = [...this.map('patu_pol_peer').entries()].map(([k, c]) => ({ cidr: `${k.ip}/${k.prefixlen}`, peerClass: c }))
      .sort((a, b) => a.peerClass - b.peerClass || (a.cidr < b.cidr ? -1 : 1));
    const rules = rulesFromKeys(this.map('patu_pol_rule').entries());
    return { endpoints, peers, rules };
  }

  /**
   * CNI ADD: the pod's address is on this veth. Recorded in patu_pol_dev (IPv6
   * judged by the veth; sync() fills ifindex from it) and, when the endpoint is
   * already programmed, in its entry (the anti-spoof check).
   */
  bindDevice(ip: string, ifindex: number): void {
    this.map('patu_pol_dev').update(ifindex, ip);
    const ep = this.map('patu_pol_ep');
    const v = ep.lookup(ip);
    if (v && v.ifindex !== ifindex) {
      try {
        ep.update(ip, { ...v, ifindex }, 'exist');
      } catch (e) {
        if ((e as { errno?: number }).errno !== 2) throw e; // removed meanwhile
      }
    }
  }

  // --- attaching ------------------------------------------------------------------------------

  /**
   * Both programs on one host-side veth (TCX_INGRESS: from the pod, TCX_EGRESS:
   * to it). Idempotent: a veth that runs them already is left alone; an older
   * patu_pol_* program there is replaced in place. Returns true when anything changed.
   */
  attach(ifindex: number): boolean {
    // A routed pod's veth: bpf_redirect_peer must not skip these programs (bpf/routed.c).
    markPolicyVeth(this.pinRoot, ifindex);
    let changed = false;
    for (const hook of ['toPod', 'fromPod'] as const) {
      const dir = HOOK_DIR[hook];
      const cur = tcxQuery(ifindex, dir);
      const mine = cur.some((p) => p.id === this.progIds[hook]);
      const old = cur.filter((p) => p.name.startsWith('patu_pol_') && p.id !== this.progIds[hook]);
      let rest = old;
      if (!mine) {
        const first = old[0];
        changed = tcxAttach(this.progs[hook].fd, ifindex, dir, first?.id) || changed;
        rest = old.slice(1);
      }
      for (const o of rest) changed = tcxDetachId(o.id, ifindex, dir) || changed;
    }
    return changed;
  }

  /** Every patu_pol_* program off this veth. Returns how many were detached. */
  detach(ifindex: number): number {
    let n = 0;
    for (const dir of ['ingress', 'egress'] as const) {
      for (const p of tcxQuery(ifindex, dir)) if (p.name.startsWith('patu_pol_') && tcxDetachId(p.id, ifindex, dir)) n++;
    }
    return n;
  }

  /**
   * Attaches to every patu host veth of this netns (ports of the named bridges,
   * default: every veth named like a patu host end). Removes patu_pol_dev
   * entries of devices that are gone. Returns how many veths changed.
   */
  attachAll(bridgeNames?: string[]): number {
    const rtnl = Rtnl.open();
    let links;
    try {
      links = rtnl.listLinks();
    } finally {
      rtnl.close();
    }
    const bridges = bridgeNames ? new Set(links.filter((l) => l.kind === 'bridge' && bridgeNames.includes(l.name)).map((l) => l.index)) : undefined;
    // Routed pods' veths (no bridge: patu-named, gateway MAC, no master) are always included.
    const routed = (l: (typeof links)[number]): boolean => l.masterIndex === undefined && l.mac === ROUTED_GATEWAY_MAC && isPatuVethName(l.name);
    const veths = links.filter((l) => l.kind === 'veth' && (bridges ? (l.masterIndex !== undefined && bridges.has(l.masterIndex)) || routed(l) : isPatuVethName(l.name)));
    let n = 0;
    const errors: Error[] = [];
    for (const l of veths) {
      try {
        if (this.attach(l.index)) n++;
      } catch (e) {
        // A veth that went away meanwhile is no error; others are reported after the rest are done.
        if ((e as { errno?: number }).errno === 19 /* ENODEV */) continue;
        errors.push(new Error(`${l.name} (ifindex ${l.index}): ${(e as Error).message}`, { cause: e }));
      }
    }
    const present = new Set(links.map((l) => l.index));
    const dev = this.map('patu_pol_dev');
    for (const ifindex of [...dev.keys()]) if (!present.has(ifindex)) dev.delete(ifindex);
    if (errors.length) throw new AggregateError(errors, `policy programs not attached to ${errors.map((e) => e.message).join('; ')}`);
    return n;
  }

  // --- flows ----------------------------------------------------------------------------------

  /**
   * Deletes the conntrack entries pred picks (their next packets are judged again). Returns how many.
   * With `tombstone`, the entries pred picks become tombstones instead (PATU_POL_CT_DENIED, 6 h): every
   * packet of those flows, either way, is dropped until a SYN on the tuple is judged again; and
   * tombstones pred no longer picks (the flow is allowed again) are deleted. That is the cut-off a
   * policy change needs: deleted, a flow's mid-stream packet from the side whose own policy is open
   * would re-create an entry admitting the other side's packets as replies.
   * With `only` (addresses as big-endian numbers), entries it does not pick are not even decoded: they stay as they are.
   */
  flushConntrack(pred: (k: CtKey, v: CtVal) => boolean, opts: { tombstone?: boolean; only?: (src: number, dst: number) => boolean } = {}): number {
    const ct = this.map('patu_pol_ct');
    const doomed: CtKeyC[] = [];
    const tombs: [CtKeyC, CtValC][] = [];
    // CLOCK_MONOTONIC: the base of the kernel's coarse clock, never behind it.
    const until = process.hrtime.bigint() + BigInt(POL_TOMBSTONE_S) * 1_000_000_000n;
    const one = (k: CtKeyC, v: CtValC): void => {
      const key: CtKey = { src: k.src, dst: k.dst, sport: k.sport, dport: k.dport, proto: k.proto, dir: dirName(k.dir), fragment: k.pad === 1 };
      const denied = pred(key, { expiresNs: v.expiresNs, policy: v.policy, epId: v.epId, flags: v.flags });
      if (!opts.tombstone) {
        if (denied) doomed.push(k);
      } else if (v.flags & POL.CT_DENIED) {
        if (!denied) doomed.push(k);
      } else if (denied) {
        tombs.push([k, { ...v, flags: v.flags | POL.CT_DENIED, expiresNs: until }]);
      }
    };
    const only = opts.only;
    // With `only`, entries are picked by their addresses (the key's first 8 bytes) before anything is decoded.
    const raw = only && ct.batchesRaw((keys, vals, n) => {
      for (let i = 0; i < n; i++) {
        const o = i * ctKeyC.size;
        if (!only(keys.readUInt32BE(o), keys.readUInt32BE(o + 4))) continue;
        one(ctKeyC.decode(keys, o), ctValC.decode(vals, i * ctValC.size));
      }
    });
    if (!raw) for (const [k, v] of ct.entriesBatch()) one(k, v);
    ct.batchUpdate(tombs);
    return tombs.length + ct.batchDelete(doomed);
  }

  /** Every conntrack entry (tests, `patu policy --ct`). */
  conntrack(): [CtKey, CtVal][] {
    return this.map('patu_pol_ct').entriesBatch().map(([k, v]: [CtKeyC, CtValC]) => [
      { src: k.src, dst: k.dst, sport: k.sport, dport: k.dport, proto: k.proto, dir: dirName(k.dir), fragment: k.pad === 1 },
      { expiresNs: v.expiresNs, policy: v.policy, epId: v.epId, flags: v.flags },
    ]);
  }

  /**
   * Removes accelerated sockets (the accel sockhash, when acceleration is set
   * up under the same pin root) that pred picks, so their next send goes
   * through the veth and meets the tc verdict. Each end of a connection is its
   * own entry: src/sport is that socket's local end. Returns how many.
   */
  evictSockets(pred: (flow: { src: string; dst: string; sport: number; dport: number }) => boolean): number {
    const path = accelPins(this.pinRoot).sockHash;
    if (!existsSync(path)) return 0;
    const m = TypedMap.fromPin(path, sockKeyCodec, u64);
    try {
      let n = 0;
      for (const k of [...m.keys()]) {
        if (pred({ src: k.localIp4, dst: k.remoteIp4, sport: k.localPort, dport: k.remotePort }) && m.delete(k)) n++;
      }
      return n;
    } finally {
      m.close();
    }
  }

  // --- observing ------------------------------------------------------------------------------

  /** Drop events (and with allows, new-flow allows) into the ring buffer; off: the programs submit nothing. */
  setMonitor(on: boolean, allows = false): void {
    const cfg = this.map('patu_pol_cfg');
    withPinDirLock(this.pins.dir, () => {
      const cur = cfg.lookup(0);
      const v: CfgC = { monitor: on ? 1 : 0, monitorAllow: on && allows ? 1 : 0, generation: cur?.generation ?? 0, pad: 0 };
      cfg.update(0, v);
    });
  }

  monitor(): { on: boolean; allows: boolean } {
    const v = this.map('patu_pol_cfg').lookup(0);
    return { on: (v?.monitor ?? 0) !== 0, allows: (v?.monitorAllow ?? 0) !== 0 };
  }

  /** Counters summed over CPUs: drops per endpoint and direction, new flows allowed per endpoint, policy, direction. */
  stats(): StatsEntry[] {
    const m = PerCpuHash.fromPin(this.pins.stats, POLICY_MAP_CODECS.patu_pol_stats.key, POLICY_MAP_CODECS.patu_pol_stats.value);
    try {
      const out: StatsEntry[] = [];
      for (const [k, vals] of m.entries()) {
        let packets = 0n;
        let bytes = 0n;
        for (const v of vals) {
          packets += v.packets;
          bytes += v.bytes;
        }
        out.push({ epId: k.epId, policy: k.policy, dir: dirName(k.dir), verdict: k.verdict === POL.VERDICT_DROP ? 'drop' : 'allow', packets, bytes });
      }
      return out.sort((a, b) => a.epId - b.epId || a.policy - b.policy || (a.dir < b.dir ? -1 : a.dir > b.dir ? 1 : 0) || (a.verdict < b.verdict ? -1 : 1));
    } finally {
      m.close();
    }
  }

  /** Counters of endpoints no longer programmed (stats keys are ep ids): removed so the map does not fill. */
  pruneStats(keepEpIds: ReadonlySet<number>): number {
    const m = PerCpuHash.fromPin(this.pins.stats, POLICY_MAP_CODECS.patu_pol_stats.key, POLICY_MAP_CODECS.patu_pol_stats.value);
    try {
      let n = 0;
      for (const [k] of [...m.entries()]) if (!keepEpIds.has(k.epId) && m.delete(k)) n++;
      return n;
    } finally {
      m.close();
    }
  }

  /** The ring buffer reader on this pin root (PolicyEvents.open: monitor switched on until its close()). */
  openEvents(opts: { allows?: boolean; keepMonitor?: boolean } = {}): PolicyEvents {
    return PolicyEvents.open(this.pinRoot, opts);
  }

  close(): void {
    for (const m of this.opened.values()) m.close();
    this.opened.clear();
    this.progs.fromPod.close();
    this.progs.toPod.close();
  }
}

/**
 * `patu monitor`'s source: the policy ring buffer, drained without blocking.
 * open() switches submission on (setMonitor), close() off again (unless
 * keepMonitor). One reader at a time per node (the consumer position is shared).
 */
export class PolicyEvents {
  private constructor(private readonly reader: RingBufferReader, private readonly dp: PolicyDataplane | null) {}

  static open(pinRoot: string, opts: { allows?: boolean; keepMonitor?: boolean } = {}): PolicyEvents {
    const path = policyPins(pinRoot).events;
    if (!existsSync(path)) throw new Error(`policy enforcement is not set up under ${pinRoot} (no ${path})`);
    const reader = RingBufferReader.fromPin(path);
    const dp = PolicyDataplane.openExisting(pinRoot);
    try {
      dp?.setMonitor(true, opts.allows ?? false);
    } catch (e) {
      reader.close();
      dp?.close();
      throw e;
    }
    return new PolicyEvents(reader, opts.keepMonitor ? (dp?.close(), null) : dp);
  }

  /** Events submitted since the last poll (never waits). Call every ~100 ms. */
  poll(max?: number): PolicyEvent[] {
    return this.reader.poll(max).map(decodeEvent);
  }

  close(): void {
    try {
      this.dp?.setMonitor(false);
    } finally {
      this.dp?.close();
      this.reader.close();
    }
  }
}

/**
 * Policy off: every patu_pol_* program detached from every link of this netns
 * (whatever loaded it), then the pins under <pinRoot>/policy removed (maps and
 * conntrack go with the last reference). Loads nothing. Returns how many
 * programs were detached. For the agent started without policy after a run with it.
 */
export function teardownPolicy(pinRoot: string): number {
  const rtnl = Rtnl.open();
  let links;
  try {
    links = rtnl.listLinks();
  } finally {
    rtnl.close();
  }
  let n = 0;
  for (const l of links) {
    for (const dir of ['ingress', 'egress'] as const) {
      let progs;
      try {
        progs = tcxQuery(l.index, dir);
      } catch (e) {
        if ((e as { errno?: number }).errno === 19 /* ENODEV: gone meanwhile */) continue;
        throw e;
      }
      for (const p of progs) if (p.name.startsWith('patu_pol_') && tcxDetachId(p.id, l.index, dir)) n++;
    }
  }
  const dir = policyPins(assertPinRoot(pinRoot)).dir;
  if (existsSync(dir)) rmSync(dir, { recursive: true, force: true });
  return n;
}

/** Pinned policy state present under pinRoot (without opening anything). */
export function policyPinned(pinRoot: string): boolean {
  const pins = policyPins(pinRoot);
  return existsSync(pins.progFromPod) && existsSync(pins.progToPod);
}

/** Names of what is pinned under <pinRoot>/policy (status, cleanup checks). */
export function policyPinNames(pinRoot: string): string[] {
  const dir = policyPins(pinRoot).dir;
  return existsSync(dir) ? readdirSync(dir).sort() : [];
}

