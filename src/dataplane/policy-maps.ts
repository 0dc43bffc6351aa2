// TS mirror of bpf/policy.h (NetworkPolicy maps) and the pin layout, plus the
// pure parts of programming them: port ranges <-> LPM prefix blocks, the
// contents <-> map entries. Kept apart from policy-tc.ts so the model, the CLI
// and the unit tests do not pull in object loading. test/unit/bpf-layout.test.ts
// compares every codec with the compiled object's BTF.
import { join } from 'node:path';
import { structCodec, u8, u16, u32, u64, be16, ipv4, type Codec } from '../kernel/bpf/map.js';

/** Big-endian __be32 as a number (ids in LPM keys: the trie compares bytes in order). */
export const be32: Codec<number> = {
  size: 4, align: 4,
  encode: (v, b, o) => { b.writeUInt32BE(v >>> 0, o); },
  decode: (b, o) => b.readUInt32BE(o),
};

export const POL = {
  EP_MAX: 16384,
  PEER_MAX: 65536,
  RULE_MAX: 262144,
  CT_MAX: 262144,
  STATS_MAX: 65536,
  EVENTS_SIZE: 256 * 1024,
  INGRESS: 0,
  EGRESS: 1,
  EP_ISOLATED_INGRESS: 1,
  EP_ISOLATED_EGRESS: 2,
  CLASS_WORLD: 0,
  CLASS_HOST: 1,
  CLASS_FIRST: 16,
  RULE_PREFIX_ANY_PROTO: 72,
  RULE_PREFIX_ANY_PORT: 80,
  RULE_PREFIX_FULL: 96,
  CT_SYN_SEEN: 1,
  CT_ESTABLISHED: 2,
  CT_CLOSING: 4,
  CT_DENIED: 8,
  VERDICT_ALLOW: 0,
  VERDICT_DROP: 1,
  REASON_NO_RULE: 1,
  REASON_SPOOF: 2,
  REASON_IPV6: 3,
  REASON_ALLOW: 16,
} as const;

// --- C mirrors -------------------------------------------------------------------------------
export interface EpValC { epId: number; ifindex: number; flags: number; pad: number }
export const epValC = structCodec<EpValC>({ epId: u32, ifindex: u32, flags: u32, pad: u32 });

export interface PeerKeyC { prefixlen: number; ip: string }
export const peerKeyC = structCodec<PeerKeyC>({ prefixlen: u32, ip: ipv4 });

export interface RuleKeyC { prefixlen: number; epId: number; peerClass: number; dir: number; proto: number; port: number }
export const ruleKeyC = structCodec<RuleKeyC>({ prefixlen: u32, epId: be32, peerClass: be32, dir: u8, proto: u8, port: be16 });

export interface CtKeyC { src: string; dst: string; sport: number; dport: number; proto: number; dir: number; pad: number }
export const ctKeyC = structCodec<CtKeyC>({ src: ipv4, dst: ipv4, sport: be16, dport: be16, proto: u8, dir: u8, pad: u16 });

export interface CtValC { expiresNs: bigint; policy: number; epId: number; flags: number; pad: number }
export const ctValC = structCodec<CtValC>({ expiresNs: u64, policy: u32, epId: u32, flags: u32, pad: u32 });

export interface CfgC { monitor: number; monitorAllow: number; generation: number; pad: number }
export const cfgC = structCodec<CfgC>({ monitor: u32, monitorAllow: u32, generation: u32, pad: u32 });

export interface StatsKeyC { epId: number; policy: number; dir: number; verdict: number; pad: number }
export const statsKeyC = structCodec<StatsKeyC>({ epId: u32, policy: u32, dir: u8, verdict: u8, pad: u16 });
export interface StatsValC { packets: bigint; bytes: bigint }
export const statsValC = structCodec<StatsValC>({ packets: u64, bytes: u64 });

export interface EventC {
  tsNs: bigint; src: string; dst: string; sport: number; dport: number; proto: number; dir: number; reason: number; pad: number; epId: number; policy: number;
}
export const eventC = structCodec<EventC>({
  tsNs: u64, src: ipv4, dst: ipv4, sport: be16, dport: be16, proto: u8, dir: u8, reason: u8, pad: u8, epId: u32, policy: u32,
});

/** Every map of bpf/policy.c userspace opens with a codec, by C name (patu_pol_events is a ring buffer: kernel-only layout). */
export const POLICY_MAP_CODECS = {
  patu_pol_ep: { key: ipv4, value: epValC },
  patu_pol_dev: { key: u32, value: ipv4 },
  patu_pol_peer: { key: peerKeyC, value: u32 },
  patu_pol_rule: { key: ruleKeyC, value: u32 },
  patu_pol_ct: { key: ctKeyC, value: ctValC },
  patu_pol_cfg: { key: u32, value: cfgC },
  patu_pol_stats: { key: statsKeyC, value: statsValC },
} as const;

export const POLICY_PROGRAMS = { fromPod: 'patu_pol_from_pod', toPod: 'patu_pol_to_pod' } as const;

/** Everything policy pins lives in <pinRoot>/policy. */
export const policyPinDir = (pinRoot: string): string => join(pinRoot, 'policy');
export const policyPins = (pinRoot: string) => {
  const dir = policyPinDir(pinRoot);
  const m = (n: keyof typeof POLICY_MAP_CODECS | 'patu_pol_events'): string => join(dir, n);
  return {
    dir,
    ep: m('patu_pol_ep'), dev: m('patu_pol_dev'), peer: m('patu_pol_peer'), rule: m('patu_pol_rule'), ct: m('patu_pol_ct'),
    cfg: m('patu_pol_cfg'), stats: m('patu_pol_stats'), events: m('patu_pol_events'),
    progFromPod: join(dir, 'prog_from_pod'),
    progToPod: join(dir, 'prog_to_pod'),
  };
};

// --- the contract's types (POLICY-CONTRACT.md) ----------------------------------------------
export interface PolicyEndpoint { ip: string; epId: number; ifindex: number; isolatedIngress: boolean; isolatedEgress: boolean }
export interface PeerPrefix { cidr: string; peerClass: number }
export interface RuleEntry {
  epId: number; peerClass: number; dir: 'ingress' | 'egress';
  /** null: any protocol (then no ports) */
  proto: number | null;
  /** inclusive; null: any port */
  portFrom: number | null; portTo: number | null;
  policyId: number;
}
export interface PolicyMapContents { endpoints: PolicyEndpoint[]; peers: PeerPrefix[]; rules: RuleEntry[] }
/**
 * What one sync() changed, for judging only the flows it can have changed: endpoints whose rules
 * were written or removed (by id), endpoints written or removed (by address), peer prefixes written
 * or removed. A flow between addresses none of these touch keeps its verdict.
 */
export interface SyncTouched { epIds: Set<number>; ips: Set<string>; peers: string[] }

export interface CtKey { src: string; dst: string; sport: number; dport: number; proto: number; dir: 'ingress' | 'egress'; /** a fragment entry (sport = IP id) */ fragment: boolean }
export interface CtVal { expiresNs: bigint; policy: number; epId: number; flags: number; /** kernel monotonic clock: expired when expiresNs <= now */ }

export interface StatsEntry { epId: number; policy: number; dir: 'ingress' | 'egress'; verdict: 'allow' | 'drop'; packets: bigint; bytes: bigint }

export interface PolicyEvent {
  /** bpf_ktime_get_ns() (CLOCK_MONOTONIC) of the decision */
  tsNs: bigint;
  src: string; dst: string; sport: number; dport: number; proto: number;
  /** the endpoint's direction: 'egress' = leaving the pod (ingress hook), 'ingress' = to the pod */
  dir: 'ingress' | 'egress';
  reason: 'no-rule' | 'spoof' | 'ipv6' | 'allow' | `reason-${number}`;
  /** the raw PATU_POL_REASON_* */
  reasonCode: number;
  epId: number;
  /** deciding policy id (0 for drops and for flows of a pod open in that direction) */
  policy: number;
}

export const dirName = (d: number): 'ingress' | 'egress' => (d === POL.EGRESS ? 'egress' : 'ingress');
export const dirNum = (d: 'ingress' | 'egress'): number => (d === 'egress' ? POL.EGRESS : POL.INGRESS);
const REASONS: Record<number, PolicyEvent['reason']> = { 1: 'no-rule', 2: 'spoof', 3: 'ipv6', 16: 'allow' };

export function decodeEvent(b: Buffer): PolicyEvent {
  const e = eventC.decode(b, 0);
  return {
    tsNs: e.tsNs, src: e.src, dst: e.dst, sport: e.sport, dport: e.dport, proto: e.proto,
    dir: dirName(e.dir), reason: REASONS[e.reason] ?? `reason-${e.reason}`, reasonCode: e.reason, epId: e.epId, policy: e.policy,
  };
}

// --- port ranges <-> prefix blocks ------------------------------------------------------------
/** [from, to] inclusive as aligned power-of-two blocks: {port, bits} where bits = fixed high bits (16 = one port). */
export function portBlocks(from: number, to: number): { port: number; bits: number }[] {
  if (!Number.isInteger(from) || !Number.isInteger(to) || from < 0 || to > 65535 || from > to) {
    throw new RangeError(`port range ${from}-${to} is not within 0-65535`);
  }
  const out: { port: number; bits: number }[] = [];
  let p = from;
  while (p <= to) {
    let size = 1;
    let bits = 16;
    // Grow while aligned and inside the range.
    while (bits > 0 && p % (size * 2) === 0 && p + size * 2 - 1 <= to) {
      size *= 2;
      bits--;
    }
    out.push({ port: p, bits });
    p += size;
  }
  return out;
}

const ipToNum = (ip: string): number => ip.split('.').reduce((a, x) => a * 256 + Number(x), 0);
const numToIp = (n: number): string => [24, 16, 8, 0].map((s) => (n >>> s) & 255).join('.');

/** a.b.c.d/n -> the trie key (host bits cleared). */
export function peerKey(cidr: string): PeerKeyC {
  const m = /^(\d{1,3}(?:\.\d{1,3}){3})\/(\d{1,2})$/.exec(cidr);
  if (!m) throw new Error(`peer prefix ${JSON.stringify(cidr)} is not a.b.c.d/n`);
  const len = Number(m[2]);
  const ipStr = m[1]!;
  if (len > 32 || ipStr.split('.').some((x) => Number(x) > 255)) throw new Error(`peer prefix ${cidr} is not a valid IPv4 prefix`);
  const mask = len === 0 ? 0 : (0xffffffff << (32 - len)) >>> 0;
  return { prefixlen: len, ip: numToIp((ipToNum(ipStr) & mask) >>> 0) };
}

const RULE_DIRS = { ingress: POL.INGRESS, egress: POL.EGRESS } as const;

/** One rule as its LPM keys. */
export function ruleKeys(r: RuleEntry): RuleKeyC[] {
  const base = { epId: r.epId, peerClass: r.peerClass, dir: RULE_DIRS[r.dir] };
  if (r.proto === null) {
    if (r.portFrom !== null || r.portTo !== null) throw new Error(`rule of endpoint ${r.epId}: ports without a protocol`);
    return [{ ...base, prefixlen: POL.RULE_PREFIX_ANY_PROTO, proto: 0, port: 0 }];
  }
  if (!Number.isInteger(r.proto) || r.proto < 0 || r.proto > 255) throw new Error(`rule of endpoint ${r.epId}: protocol ${r.proto}`);
  if (r.portFrom === null && r.portTo === null) return [{ ...base, prefixlen: POL.RULE_PREFIX_ANY_PORT, proto: r.proto, port: 0 }];
  const from = r.portFrom ?? r.portTo!;
  const to = r.portTo ?? from;
  return portBlocks(from, to).map((b) => ({ ...base, prefixlen: POL.RULE_PREFIX_ANY_PORT + b.bits, proto: r.proto!, port: b.port }));
}

export const ruleKeyString = (k: RuleKeyC): string => `${k.epId}/${k.peerClass}/${k.dir}/${k.proto}/${k.port}/${k.prefixlen}`;

/** ruleKeys(r).map(ruleKeyString), without the objects (sync() diffs hundreds of thousands of these). */
export function ruleKeyStrings(r: RuleEntry, out: string[]): void {
  const head = `${r.epId}/${r.peerClass}/${RULE_DIRS[r.dir]}/`;
  if (r.proto === null || r.portFrom === null && r.portTo === null || r.portFrom === r.portTo && r.portFrom !== null && Number.isInteger(r.portFrom) && r.portFrom >= 0 && r.portFrom <= 65535) {
    if (r.proto === null) {
      if (r.portFrom !== null || r.portTo !== null) throw new Error(`rule of endpoint ${r.epId}: ports without a protocol`);
      out.push(`${head}0/0/${POL.RULE_PREFIX_ANY_PROTO}`);
      return;
    }
    if (!Number.isInteger(r.proto) || r.proto < 0 || r.proto > 255) throw new Error(`rule of endpoint ${r.epId}: protocol ${r.proto}`);
    out.push(r.portFrom === null ? `${head}${r.proto}/0/${POL.RULE_PREFIX_ANY_PORT}` : `${head}${r.proto}/${r.portFrom}/${POL.RULE_PREFIX_FULL}`);
    return;
  }
  for (const k of ruleKeys(r)) out.push(`${head}${k.proto}/${k.port}/${k.prefixlen}`);
}

export function parseRuleKeyString(s: string): RuleKeyC {
  const [epId, peerClass, dir, proto, port, prefixlen] = s.split('/').map(Number) as [number, number, number, number, number, number];
  return { prefixlen, epId, peerClass, dir, proto, port };
}
export const peerKeyString = (k: PeerKeyC): string => `${k.ip}/${k.prefixlen}`;

/** Rule keys back to entries: port blocks of one (ep, class, dir, proto, policy) merged into ranges. */
export function rulesFromKeys(entries: Iterable<[RuleKeyC, number]>): RuleEntry[] {
  const groups = new Map<string, { k: RuleKeyC; policy: number; ranges: [number, number][] }>();
  const out: RuleEntry[] = [];
  for (const [k, policy] of entries) {
    const dir = dirName(k.dir);
    if (k.prefixlen <= POL.RULE_PREFIX_ANY_PROTO) {
      out.push({ epId: k.epId, peerClass: k.peerClass, dir, proto: null, portFrom: null, portTo: null, policyId: policy });
      continue;
    }
    if (k.prefixlen <= POL.RULE_PREFIX_ANY_PORT) {
      out.push({ epId: k.epId, peerClass: k.peerClass, dir, proto: k.proto, portFrom: null, portTo: null, policyId: policy });
      continue;
    }
    const bits = Math.min(16, k.prefixlen - POL.RULE_PREFIX_ANY_PORT);
    const size = 2 ** (16 - bits);
    const g = `${k.epId}/${k.peerClass}/${k.dir}/${k.proto}/${policy}`;
    let e = groups.get(g);
    if (!e) groups.set(g, (e = { k, policy, ranges: [] }));
    e.ranges.push([k.port, k.port + size - 1]);
  }
  for (const { k, policy, ranges } of groups.values()) {
    ranges.sort((a, b) => a[0] - b[0]);
    let cur: [number, number] | undefined;
    const flush = (): void => {
      if (cur) out.push({ epId: k.epId, peerClass: k.peerClass, dir: dirName(k.dir), proto: k.proto, portFrom: cur[0], portTo: cur[1], policyId: policy });
    };
    for (const r of ranges) {
      if (cur && r[0] <= cur[1] + 1) cur[1] = Math.max(cur[1], r[1]);
      else {
        flush();
        cur = [r[0], r[1]];
      }
    }
    flush();
  }
  const dirOrder = (d: string): number => (d === 'ingress' ? 0 : 1);
  return out.sort((a, b) => a.epId - b.epId || a.peerClass - b.peerClass || dirOrder(a.dir) - dirOrder(b.dir) ||
    (a.proto ?? -1) - (b.proto ?? -1) || (a.portFrom ?? -1) - (b.portFrom ?? -1) || a.policyId - b.policyId);
}

export function epFlags(e: Pick<PolicyEndpoint, 'isolatedIngress' | 'isolatedEgress'>): number {
  return (e.isolatedIngress ? POL.EP_ISOLATED_INGRESS : 0) | (e.isolatedEgress ? POL.EP_ISOLATED_EGRESS : 0);
}
