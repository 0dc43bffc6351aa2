// (owner: policy-obs) What `patu monitor`, `patu status` and the agent's /metrics show of NetworkPolicy enforcement, in people's terms: the policy engine's
// names file (/run/patu/policy/<pin root's name>.names.json: policy ids and endpoint ids -> namespace/name) joined with the counters
// of patu_pol_stats and the events of patu_pol_events. Pure functions: the commands do the reading.
import type { PolicyEvent, StatsEntry } from '../dataplane/policy-maps.js';
import { policyNamesPath, readPolicyNames as readNamesFile } from './names.js';

export interface PolicyNames {
  /** policy id -> "namespace/name" */
  policies: Map<number, string>;
  /** endpoint id -> its pod, addresses and the ids of the policies that isolate it per direction */
  endpoints: Map<number, { pod: string; ips: string[]; ingress: number[]; egress: number[] }>;
}

export const EMPTY_NAMES: PolicyNames = { policies: new Map(), endpoints: new Map() };

/** Where the engine keeps the names of a pin root's maps (bpffs holds no plain files): src/policy/names.ts. */
export const policyNamesFile = (pinRoot: string, dir?: string): string => policyNamesPath(pinRoot, dir);

/**
 * The names file of this pin root as maps, or empty names when there is none or it cannot be read (no engine ran,
 * or a damaged file): the views then show ids, which is still correct.
 */
export function readPolicyNames(pinRoot: string, dir?: string): PolicyNames {
  try {
    return parsePolicyNames(readNamesFile(pinRoot, dir));
  } catch {
    return EMPTY_NAMES;
  }
}

/** Tolerant of shape: fields it does not know are skipped, never fatal (the CLI must show what it can). */
export function parsePolicyNames(raw: unknown): PolicyNames {
  const out: PolicyNames = { policies: new Map(), endpoints: new Map() };
  if (!raw || typeof raw !== 'object') return out;
  const r = raw as Record<string, unknown>;
  const nameOf = (v: unknown): string | undefined => {
    if (typeof v === 'string') return v;
    if (v && typeof v === 'object' && typeof (v as { name?: unknown }).name === 'string') {
      const o = v as { namespace?: string; name: string };
      return o.namespace ? `${o.namespace}/${o.name}` : o.name;
    }
    return undefined;
  };
  const ids = (v: unknown): number[] => (Array.isArray(v) ? v.filter((x): x is number => Number.isInteger(x)) : []);
  for (const [k, v] of Object.entries((r.policies ?? {}) as Record<string, unknown>)) {
    const n = nameOf(v);
    if (Number.isInteger(Number(k)) && n) out.policies.set(Number(k), n);
  }
  for (const [k, v] of Object.entries((r.endpoints ?? {}) as Record<string, unknown>)) {
    if (!Number.isInteger(Number(k)) || !v || typeof v !== 'object') continue;
    const e = v as { pod?: unknown; ips?: unknown; ingress?: unknown; egress?: unknown };
    const pod = nameOf(e.pod) ?? nameOf(v);
    if (!pod) continue;
    out.endpoints.set(Number(k), {
      pod,
      ips: Array.isArray(e.ips) ? e.ips.filter((x): x is string => typeof x === 'string') : [],
      ingress: ids(e.ingress),
      egress: ids(e.egress),
    });
  }
  return out;
}

const PROTOS: Record<number, string> = { 1: 'ICMP', 6: 'TCP', 17: 'UDP', 132: 'SCTP' };
export const protoName = (p: number): string => PROTOS[p] ?? `proto ${p}`;

export const policyLabel = (names: PolicyNames, id: number): string => (id === 0 ? '' : names.policies.get(id) ?? `#${id}`);

// ---------------------------------------------------------------- counters

/** One patu_pol_stats entry, summed over CPUs (PolicyDataplane.stats()). */
export type PolicyStat = StatsEntry;

/** Per pod: drops and admitted flows by direction, and which policies admitted them. */
export interface PodPolicyCounters {
  pod: string;
  epId: number;
  dropped: { ingress: bigint; egress: bigint };
  allowed: { ingress: bigint; egress: bigint };
  byPolicy: { policy: string; dir: 'ingress' | 'egress'; verdict: 'allow' | 'drop'; packets: bigint }[];
}

export function podCounters(stats: PolicyStat[], names: PolicyNames): PodPolicyCounters[] {
  const by = new Map<number, PodPolicyCounters>();
  for (const s of stats) {
    let c = by.get(s.epId);
    if (!c) {
      by.set(s.epId, (c = { pod: names.endpoints.get(s.epId)?.pod ?? `endpoint #${s.epId}`, epId: s.epId, dropped: { ingress: 0n, egress: 0n }, allowed: { ingress: 0n, egress: 0n }, byPolicy: [] }));
    }
    (s.verdict === 'drop' ? c.dropped : c.allowed)[s.dir] += s.packets;
    if (s.policy !== 0) c.byPolicy.push({ policy: policyLabel(names, s.policy), dir: s.dir, verdict: s.verdict, packets: s.packets });
  }
  return [...by.values()].sort((a, b) => a.pod.localeCompare(b.pod));
}

/** The series of patu_policy_packets_total / patu_policy_bytes_total: labels of one stats entry. */
export function statLabels(s: PolicyStat, names: PolicyNames): { namespace: string; pod: string; policy: string; direction: string; verdict: string } {
  const pod = names.endpoints.get(s.epId)?.pod;
  const [namespace, name] = pod?.includes('/') ? [pod.slice(0, pod.indexOf('/')), pod.slice(pod.indexOf('/') + 1)] : ['', pod ?? `endpoint-${s.epId}`];
  const p = policyLabel(names, s.policy);
  // A NetworkPolicy applies to pods of its own namespace: the policy label is its name alone.
  return { namespace, pod: name, policy: p.includes('/') ? p.slice(p.indexOf('/') + 1) : p, direction: s.dir, verdict: s.verdict };
}

/** The agent's /metrics series (patu_policy_packets_total, patu_policy_bytes_total) for a dump of patu_pol_stats. */
export function policySeries(stats: PolicyStat[], names: PolicyNames): { labels: ReturnType<typeof statLabels>; packets: number; bytes: number }[] {
  return stats.map((s) => ({ labels: statLabels(s, names), packets: Number(s.packets), bytes: Number(s.bytes) }));
}

// ---------------------------------------------------------------- events

/** One patu_pol_events record (PolicyEvents.poll()). */
export type PolicyEventView = PolicyEvent;

export const REASONS: Record<string, string> = { 'no-rule': 'no rule allows', spoof: 'spoofed source', ipv6: 'IPv6 to/from an isolated pod', allow: 'allowed' };

/** The pod on either side of an event, by address (names.json's endpoint addresses). */
function podByIp(names: PolicyNames): Map<string, string> {
  const m = new Map<string, string>();
  for (const e of names.endpoints.values()) for (const ip of e.ips) m.set(ip, e.pod);
  return m;
}

export interface EventRow {
  time: string;
  verdict: 'DROP' | 'ALLOW';
  direction: 'ingress' | 'egress';
  source: string;
  destination: string;
  protocol: string;
  policy: string;
  reason: string;
}

const hostPort = (pod: string | undefined, ip: string, port: number, proto: number): string =>
  `${pod ? `${pod} ` : ''}${ip}${proto === 6 || proto === 17 || proto === 132 ? `:${port}` : ''}`;

/**
 * An event in people's terms. `wallOf` turns the kernel's monotonic timestamp into wall-clock ms. Direction is the
 * endpoint's (ingress: to the pod, its ingress policy decided; egress: from the pod).
 */
export function eventRow(e: PolicyEventView, names: PolicyNames, wallOf: (tsNs: bigint) => number, pods = podByIp(names)): EventRow {
  const d = new Date(wallOf(e.tsNs));
  const time = `${String(d.getUTCHours()).padStart(2, '0')}:${String(d.getUTCMinutes()).padStart(2, '0')}:${String(d.getUTCSeconds()).padStart(2, '0')}.${String(d.getUTCMilliseconds()).padStart(3, '0')}`;
  const allow = e.reason === 'allow';
  let policy: string;
  if (allow) policy = e.policy === 0 ? '(not isolated)' : policyLabel(names, e.policy);
  else {
    const iso = names.endpoints.get(e.epId)?.[e.dir] ?? [];
    policy = iso.length ? `isolated by ${iso.map((id) => policyLabel(names, id)).join(', ')}` : '-';
  }
  return {
    time,
    verdict: allow ? 'ALLOW' : 'DROP',
    direction: e.dir,
    source: hostPort(pods.get(e.src), e.src, e.sport, e.proto),
    destination: hostPort(pods.get(e.dst), e.dst, e.dport, e.proto),
    protocol: protoName(e.proto),
    policy,
    reason: REASONS[e.reason] ?? e.reason,
  };
}

export function formatEventRow(r: EventRow): string {
  return `${r.time}  ${r.verdict.padEnd(5)}  ${r.direction.padEnd(7)}  ${r.source.padEnd(36)} -> ${r.destination.padEnd(36)}  ${r.protocol.padEnd(4)}  ${r.verdict === 'DROP' ? `${r.reason}; ${r.policy}` : r.policy}`;
}

/** --pod ns/name: whether an event concerns that pod (its endpoint, or its address on either side). */
export function eventMatchesPod(e: PolicyEventView, names: PolicyNames, pod: string): boolean {
  for (const [id, ep] of names.endpoints) {
    if (ep.pod !== pod) continue;
    if (id === e.epId || ep.ips.includes(e.src) || ep.ips.includes(e.dst)) return true;
  }
  return false;
}

