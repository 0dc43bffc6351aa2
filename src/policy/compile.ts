// The policy compiler: PolicyState -> what the maps of bpf/policy.h hold.
//
//   endpoints  every local pod (not host-network) with an IPv4 address, with its
//              isolation per direction (some policy selects it for that direction)
//   peers      an LPM table address prefix -> peer class. A class is a set of
//              addresses every peer of every policy treats alike: the same
//              memberships in the policies' peer "atoms" (podSelector in a namespace,
//              namespaceSelector (+ podSelector), ipBlock) and, where an egress rule
//              names a port, the same number for that name. Pods with equal label
//              sets in one namespace fall into one class (Cilium's identities, but
//              per the policies that exist). ipBlock cidrs and excepts are prefixes;
//              0.0.0.0/0 is always one (the addresses no selector names), pod /32s
//              only where their class differs from the prefix around them; node
//              addresses and host-network pods are class HOST.
//   rules      (endpoint, class, direction, protocol, port range) -> deciding policy,
//              normalized: an any-protocol entry hides the others of its
//              (endpoint, class, direction), an any-port one the ranges of its
//              protocol, overlapping ranges are cut (the lowest policy id decides).
//
// Ids are stable across compiles of one PolicyCompiler (ep ids by pod address,
// classes by what they mean, policies by namespace/name), so a change rewrites
// only what it changed; ids are never reused within a compiler's life (a class
// number that meant something else a moment ago could briefly allow what the new
// state denies while the maps are updated). seed() takes them over from the
// maps and names.json after a restart, so a restarted agent writes nothing.
import { isIPv4, parseCidr } from '../net/cidr.js';
import {
  IPPROTO, NAMESPACE_NAME_LABEL, PEER_CLASS_FIRST, PEER_CLASS_HOST, policyRef, policyTypesOf,
  type LabelSelector, type NetworkPolicy, type NetworkPolicyEgressRule, type NetworkPolicyIngressRule, type NetworkPolicyPeer,
  type NetworkPolicyPort, type PeerPrefix, type PolicyEndpoint, type PolicyMapContents, type PolicyPod, type PolicyState, type RuleEntry,
} from './types.js';

/** bpf/policy.h capacities. */
export const POLICY_CAPACITY = { endpoints: 16384, peers: 65536, rules: 262144 } as const;

export interface CompileProblem {
  kind: 'duplicate-address' | 'capacity' | 'bad-address';
  message: string;
  pod?: string;
  policy?: string;
}

export interface CompileStats {
  endpoints: number;
  peers: number;
  rules: number;
  /** LPM entries the rules become once port ranges are split into prefix blocks. */
  ruleBlocks: number;
  classes: number;
  atoms: number;
  ms: number;
}

export interface CompileResult {
  contents: PolicyMapContents;
  /** policy id -> its namespace and name (names.json). */
  policyIds: Map<number, { namespace: string; name: string }>;
  problems: CompileProblem[];
  stats: CompileStats;
  /** Policies whose rules were left out (they did not fit): their pods stay isolated without them. */
  dropped: string[];
  /** endpoint id -> its pod and the ids of the policies that isolate it, per direction (names.json). */
  endpointInfo: Map<number, { namespace: string; name: string; ip: string; ingress: number[]; egress: number[] }>;
  /** peer class -> up to 8 members: `ns/pod` or an address prefix (names.json, `patu policy`). */
  classMembers: Map<number, string[]>;
}

// ---------- IPv4 prefixes as unsigned 32-bit numbers ----------

interface Prefix { net: number; len: number }
const maskOf = (len: number): number => (len === 0 ? 0 : (0xffffffff << (32 - len)) >>> 0);
const v4 = (text: string): number | undefined => {
  const parts = text.split('.');
  if (parts.length !== 4) return undefined;
  return ((Number(parts[0]) << 24) | (Number(parts[1]) << 16) | (Number(parts[2]) << 8) | Number(parts[3])) >>> 0;
};
const v4Text = (n: number): string => `${n >>> 24}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`;
const prefixText = (p: Prefix): string => `${v4Text(p.net)}/${p.len}`;
const prefixKey = (p: Prefix): number => p.net * 64 + p.len; // unique, exact in a double
function parsePrefix(cidr: string): Prefix | undefined {
  const c = parseCidr(cidr);
  if (c.family !== 4) return undefined;
  const len = c.prefix;
  return { net: (Number(c.ip) & maskOf(len)) >>> 0, len };
}
/** a contains b (as prefixes: a is b or shorter and around it). */
const prefixContains = (a: Prefix, b: Prefix): boolean => a.len <= b.len && ((b.net & maskOf(a.len)) >>> 0) === a.net;
const addrIn = (a: Prefix, ip: number): boolean => ((ip & maskOf(a.len)) >>> 0) === a.net;

/** How many aligned prefix blocks cover from..to (the LPM entries of one port range). */
export function portBlocks(from: number, to: number): number {
  let n = 0;
  let lo = from;
  while (lo <= to) {
    let size = 1;
    while (size < 65536 && lo % (size * 2) === 0 && lo + size * 2 - 1 <= to) size *= 2;
    lo += size;
    n++;
  }
  return n;
}
const blocksOf = (r: RuleEntry): number => (r.proto === null || r.portFrom === null ? 1 : portBlocks(r.portFrom, r.portTo ?? r.portFrom));

// ---------- selectors, compiled once ----------

type Matcher = (labels: Record<string, string>) => boolean;

/** Canonical text of a value: object keys sorted (selectors that mean the same are one atom). */
function canon(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canon).join(',')}]`;
  if (v && typeof v === 'object') {
    return `{${Object.keys(v).sort().map((k) => `${JSON.stringify(k)}:${canon((v as Record<string, unknown>)[k])}`).join(',')}}`;
  }
  return JSON.stringify(v);
}
function canonSelector(s: LabelSelector): string {
  const ml = s.matchLabels ?? {};
  const me = (s.matchExpressions ?? []).map((e) => canon({ k: e.key, o: e.operator, v: [...(e.values ?? [])].sort() })).sort();
  return canon({ l: ml, e: me });
}
function compileSelector(s: LabelSelector): Matcher {
  const ml = Object.entries(s.matchLabels ?? {});
  const me = s.matchExpressions ?? [];
  if (ml.length === 0 && me.length === 0) return () => true;
  return (labels) => {
    for (const [k, v] of ml) if (!Object.hasOwn(labels, k) || labels[k] !== v) return false;
    for (const e of me) {
      const has = Object.hasOwn(labels, e.key);
      if (e.operator === 'In') {
        if (!has || !(e.values ?? []).includes(labels[e.key]!)) return false;
      } else if (e.operator === 'NotIn') {
        if (has && (e.values ?? []).includes(labels[e.key]!)) return false;
      } else if (e.operator === 'Exists') {
        if (!has) return false;
      } else if (e.operator === 'DoesNotExist') {
        if (has) return false;
      } else return false;
    }
    return true;
  };
}

// ---------- the compiler ----------

interface Atom {
  /** Stable number (the compiler's life). */
  id: number;
  kind: 'sel' | 'ip';
  /** sel: namespaces the peer may be in (null: the namespaceSelector decides). */
  ns: string | null;
  nsMatch: Matcher | null;
  podMatch: Matcher | null;
  /** ip */
  cidr?: Prefix;
  except?: Prefix[];
}

/** A set of pods with one namespace and one label set: they match the same selectors. */
interface Group { key: string; ns: string; labels: Record<string, string>; atoms: number[] }

interface PeerInfo {
  /** The class signature: atom ids (sorted) and named-port numbers. */
  sig: string;
  atoms: number[];
  /** egress named port key ("name/proto") -> port number */
  named: Map<string, number>;
}

type Raw = { proto: number | null; from: number | null; to: number | null; pid: number };

/** One endpoint group's rules as the last compile worked them out, and what they came from. */
interface RuleMemo {
  /** The policies that selected the group (objects and ids), in state order. */
  selecting: { pol: NetworkPolicy; id: number }[];
  /** Atoms the peers of those policies' rules name; whether a rule had no peers (every class) or an egress named port. */
  atoms: Set<number>;
  usesAll: boolean;
  usesNamed: boolean;
  isoIn: number[];
  isoOut: number[];
  /** Normalized, in output order (ruleOrderNoEp); and their LPM blocks per endpoint. */
  norm: Omit<RuleEntry, 'epId'>[];
  blocks: number;
  /** Per endpoint id: the rules stamped with it (the same objects while nothing changes). */
  stamped: Map<number, RuleEntry[]>;
}

interface PolicyPrep {
  ref: string;
  name: { namespace: string; name: string };
  ingress: boolean;
  egress: boolean;
  sel: Matcher;
  /** Each peer's atom key and matchers (atom undefined: IPv6, matches nothing), or why its ipBlock is bad. */
  peers: { peer: NetworkPolicyPeer; key: string; atom?: Omit<Atom, 'id'> | undefined; bad?: string }[];
  egressNames: string[];
}

export interface CompilerSeed {
  /** What the maps hold now (PolicyDataplane.read()). */
  contents?: PolicyMapContents;
  /** names.json's policies: id -> namespace/name. */
  policies?: Record<string, string> | Map<number, { namespace: string; name: string }>;
}

export class PolicyCompiler {
  private readonly atomIds = new Map<string, number>();
  private nextAtom = 1;
  private readonly classIds = new Map<string, number>();
  private nextClass = PEER_CLASS_FIRST;
  private readonly epIds = new Map<string, number>();
  private nextEp = 1;
  private readonly policyIdByRef = new Map<string, number>();
  private nextPolicy = 1;
  /** After a restart: prefix -> class the maps hold, used to give classes their old numbers. */
  private seedPeers: Map<string, number> | undefined;
  /** The ipBlock atoms of the last compile by cidr, and the cidr lengths in use. */
  private ipIndex: { key: string; at: Map<number, Atom[]>; lens: number[] } | undefined;
  /** The regions of the last compile (see the classes section of compile()). */
  private regionMemo: { key: string; infos: PeerInfo[]; at: (ip: number, maxLen?: number) => PeerInfo; written: [string, PeerInfo][]; members: [PeerInfo, string][] } | undefined;
  /** Endpoint group key -> its rules (see the rules section of compile()). */
  private readonly ruleMemo = new Map<string, RuleMemo>();
  /** What the classes were at the last compile: used signature -> class, the egress port names, per atom its classes, every class. */
  private lastUsed = new Map<string, number>();
  private lastNamed = '';
  private lastAtomClasses = new Map<number, string>();
  private lastAllClasses = '';
  /** The last compile finished: ruleMemo agrees with the fields above. */
  private memoSound = true;
  /** Per policy object: what prepOf() worked out (dropped with the object). */
  private preps = new WeakMap<NetworkPolicy, PolicyPrep>();
  /** Atom key -> its matchers (undefined: an IPv6 ipBlock), while some policy of the last compile has it. */
  private readonly atomProtos = new Map<string, Omit<Atom, 'id'> | undefined>();
  /** Atom key -> the atom with its id, as the last compile used it. */
  private readonly atomObjs = new Map<string, Atom>();

  /** Takes over the numbers a previous run left in the maps, so an unchanged state compiles to the same contents. */
  seed(seed: CompilerSeed): void {
    const c = seed.contents;
    if (c) {
      for (const e of c.endpoints) {
        this.nextEp = Math.max(this.nextEp, e.epId + 1);
        // Claimed by address at the first compile (the pod's name is not in the maps).
        this.epIds.set(`ip ${e.ip}`, e.epId);
      }
      this.seedPeers = new Map();
      for (const p of c.peers) {
        this.seedPeers.set(p.cidr, p.peerClass);
        this.nextClass = Math.max(this.nextClass, p.peerClass + 1);
      }
      for (const r of c.rules) {
        this.nextClass = Math.max(this.nextClass, r.peerClass + 1);
        this.nextEp = Math.max(this.nextEp, r.epId + 1);
        this.nextPolicy = Math.max(this.nextPolicy, r.policyId + 1);
      }
    }
    const pol = seed.policies;
    if (pol) {
      const entries: [number, string][] = pol instanceof Map
        ? [...pol].map(([id, r]) => [id, `${r.namespace}/${r.name}`])
        : Object.entries(pol).map(([id, r]) => [Number(id), r]);
      for (const [id, ref] of entries) {
        if (!Number.isInteger(id) || id < 1 || typeof ref !== 'string') continue;
        this.policyIdByRef.set(ref, id);
        this.nextPolicy = Math.max(this.nextPolicy, id + 1);
      }
    }
  }

  /**
   * What compile() needs of one policy that depends on nothing else: its ref, types, podSelector,
   * the atom (key and matchers) of each peer, its egress named ports. Kept per policy object, so
   * an unchanged policy is not looked at again; states are immutable (a source that changes a
   * policy hands a new object).
   */
  private prepOf(p: NetworkPolicy): PolicyPrep {
    let prep = this.preps.get(p);
    if (prep) return prep;
    const ref = policyRef(p);
    const ns = p.metadata.namespace;
    const types = policyTypesOf(p);
    prep = { ref, name: { namespace: ns, name: p.metadata.name }, ingress: types.includes('Ingress'), egress: types.includes('Egress'), sel: compileSelector(p.spec.podSelector), peers: [], egressNames: [] };
    const add = (peer: NetworkPolicyPeer): void => {
      let key: string;
      let make: () => Omit<Atom, 'id'> | undefined;
      if (peer.ipBlock) {
        const b = peer.ipBlock;
        key = `ip ${b.cidr} ${[...(b.except ?? [])].sort().join(',')}`;
        make = () => {
          const cidr = parsePrefix(b.cidr);
          if (!cidr) return undefined; // IPv6: matches no IPv4 address
          const except = (b.except ?? []).map(parsePrefix).filter((e): e is Prefix => e !== undefined);
          return { kind: 'ip', ns: null, nsMatch: null, podMatch: null, cidr, except };
        };
      } else {
        const ps = peer.podSelector ? canonSelector(peer.podSelector) : '';
        key = peer.namespaceSelector ? `sel * ${canonSelector(peer.namespaceSelector)} ${ps}` : `sel ${ns} ${ps}`;
        make = () => ({
          kind: 'sel',
          ns: peer.namespaceSelector ? null : ns,
          nsMatch: peer.namespaceSelector ? compileSelector(peer.namespaceSelector) : null,
          podMatch: peer.podSelector ? compileSelector(peer.podSelector) : null,
        });
      }
      // An atom is what its key says: made once while some policy has it.
      if (this.atomProtos.has(key)) {
        prep!.peers.push({ peer, key, atom: this.atomProtos.get(key) });
        return;
      }
      try {
        const atom = make();
        this.atomProtos.set(key, atom);
        prep!.peers.push({ peer, key, atom });
      } catch (e) {
        prep!.peers.push({ peer, key, bad: `policy ${ref}: ipBlock ${peer.ipBlock!.cidr}: ${(e as Error).message}; it matches nothing` });
      }
    };
    for (const r of p.spec.ingress ?? []) for (const peer of r.from ?? []) add(peer);
    for (const r of p.spec.egress ?? []) {
      for (const peer of r.to ?? []) add(peer);
      for (const port of r.ports ?? []) if (typeof port.port === 'string') prep.egressNames.push(`${port.port}/${port.protocol ?? 'TCP'}`);
    }
    this.preps.set(p, prep);
    return prep;
  }

  private atomId(key: string): number {
    let id = this.atomIds.get(key);
    if (id === undefined) {
      id = this.nextAtom++;
      this.atomIds.set(key, id);
    }
    return id;
  }

  compile(state: PolicyState): CompileResult {
    const t0 = performance.now();
    // A compile that threw half-way may have left the memo behind what the last-compile fields say.
    if (!this.memoSound) this.ruleMemo.clear();
    this.memoSound = false;
    const problems: CompileProblem[] = [];

    // --- addresses: hosts, then pods (the first pod listed at an address has it) ---
    const hostIps = new Set<number>();
    const addHost = (ip: string): void => {
      const n = v4(ip);
      if (isIPv4(ip)) hostIps.add(n!);
    };
    for (const a of state.nodeAddresses) addHost(a);
    for (const p of state.pods) if (p.hostNetwork) for (const ip of p.ips) addHost(ip);
    const podAt = new Map<number, PolicyPod>();
    for (const p of state.pods) {
      if (p.hostNetwork) continue;
      for (const ip of p.ips) {
        if (!isIPv4(ip)) continue;
        const n = v4(ip)!;
        if (hostIps.has(n)) continue;
        const other = podAt.get(n);
        if (other) {
          if (other !== p) {
            problems.push({
              kind: 'duplicate-address', pod: `${p.namespace}/${p.name}`,
              message: `pod ${p.namespace}/${p.name}: address ${ip} is also pod ${other.namespace}/${other.name}'s; the first one keeps it`,
            });
          }
          continue;
        }
        podAt.set(n, p);
      }
    }

    // --- namespaces and label groups ---
    const nsLabels = new Map<string, Record<string, string>>();
    for (const n of state.namespaces) nsLabels.set(n.name, { ...n.labels, [NAMESPACE_NAME_LABEL]: n.name });
    const groups = new Map<string, Group>();
    const groupOf = new Map<PolicyPod, Group>();
    const groupsByNs = new Map<string, Group[]>();
    for (const p of new Set(podAt.values())) {
      if (!nsLabels.has(p.namespace)) nsLabels.set(p.namespace, { [NAMESPACE_NAME_LABEL]: p.namespace });
      const key = `${p.namespace}\0${canon(p.labels)}`;
      let g = groups.get(key);
      if (!g) {
        g = { key, ns: p.namespace, labels: p.labels, atoms: [] };
        groups.set(key, g);
        let l = groupsByNs.get(p.namespace);
        if (!l) groupsByNs.set(p.namespace, (l = []));
        l.push(g);
      }
      groupOf.set(p, g);
    }

    // --- policy ids, atoms ---
    const policyIds = new Map<number, { namespace: string; name: string }>();
    const pid = new Map<NetworkPolicy, number>();
    for (const p of state.policies) {
      const prep = this.prepOf(p);
      let id = this.policyIdByRef.get(prep.ref);
      if (id === undefined) {
        id = this.nextPolicy++;
        this.policyIdByRef.set(prep.ref, id);
      }
      pid.set(p, id);
      policyIds.set(id, prep.name);
    }
    const atoms = new Map<number, Atom>();
    const peerAtom = new Map<NetworkPolicyPeer, number>();
    const badCidr = new Set<string>();
    // Named ports of egress rules: the peer's number for each is part of its class.
    const egressNames = new Set<string>();
    const liveAtomKeys = new Set<string>();
    for (const p of state.policies) {
      const prep = this.prepOf(p);
      for (const e of prep.peers) {
        if (e.bad !== undefined) {
          if (!badCidr.has(e.key)) {
            badCidr.add(e.key);
            problems.push({ kind: 'bad-address', policy: prep.ref, message: e.bad });
          }
          continue;
        }
        if (!e.atom) continue; // IPv6: matches no IPv4 address
        const id = this.atomId(e.key);
        liveAtomKeys.add(e.key);
        if (!atoms.has(id)) {
          let atom = this.atomObjs.get(e.key);
          if (!atom || atom.id !== id) this.atomObjs.set(e.key, (atom = { id, ...e.atom }));
          atoms.set(id, atom);
        }
        peerAtom.set(e.peer, id);
      }
      for (const n of prep.egressNames) egressNames.add(n);
    }
    for (const k of this.atomProtos.keys()) if (!liveAtomKeys.has(k)) this.atomProtos.delete(k);
    for (const k of this.atomObjs.keys()) if (!liveAtomKeys.has(k)) this.atomObjs.delete(k);
    const namedList = [...egressNames].sort();

    // --- memberships: selector atoms per label group, ipBlock atoms per address ---
    const ipAtoms: Atom[] = [];
    for (const a of atoms.values()) {
      if (a.kind === 'ip') {
        ipAtoms.push(a);
        continue;
      }
      const inNs: Group[] = [];
      if (a.ns !== null) inNs.push(...(groupsByNs.get(a.ns) ?? []));
      else for (const [ns, gs] of groupsByNs) if (a.nsMatch!(nsLabels.get(ns)!)) inNs.push(...gs);
      for (const g of inNs) if (!a.podMatch || a.podMatch(g.labels)) g.atoms.push(a.id);
    }
    // ipBlock atoms by their cidr: what contains an address or a prefix is found by walking up its
    // prefix lengths (one lookup per length in use), not by trying every atom.
    // Kept while the ipBlock atoms stay (an atom's id stands for its cidr and excepts).
    const ipKey = ipAtoms.map((x) => x.id).sort((x, y) => x - y).join(',');
    if (this.ipIndex?.key !== ipKey) {
      const at = new Map<number, Atom[]>();
      for (const a of ipAtoms) {
        const k = prefixKey(a.cidr!);
        const l = at.get(k);
        if (l) l.push(a);
        else at.set(k, [a]);
      }
      this.ipIndex = { key: ipKey, at, lens: [...new Set(ipAtoms.map((a) => a.cidr!.len))].sort((x, y) => x - y) };
    }
    const ipAtomsAt = this.ipIndex.at;
    const cidrLens = this.ipIndex.lens;
    /** The ipBlock atoms whose cidr contains q (an address: len 32) and none of whose excepts does. */
    const ipAtomsOver = (q: Prefix): number[] => {
      const out: number[] = [];
      for (const len of cidrLens) {
        if (len > q.len) break;
        const l = ipAtomsAt.get(prefixKey({ net: (q.net & maskOf(len)) >>> 0, len }));
        if (l) for (const a of l) if (!a.except!.some((e) => prefixContains(e, q))) out.push(a.id);
      }
      return out;
    };
    const ipAtomsOf = (ip: number): number[] => ipAtomsOver({ net: ip, len: 32 });

    // --- classes ---
    const infoBySig = new Map<string, PeerInfo>();
    const classOfSig = new Map<string, number>();
    const sigPrefixes = new Map<string, string[]>(); // for seeding: where each class is written
    const infoFor = (atomIds: number[], named: Map<string, number>): PeerInfo => {
      atomIds.sort((x, y) => x - y);
      const sig = `${atomIds.join(',')}|${namedList.map((k) => named.get(k) ?? '').join(',')}`;
      let info = infoBySig.get(sig);
      if (!info) infoBySig.set(sig, (info = { sig, atoms: atomIds, named }));
      return info;
    };
    // Regions: every ipBlock cidr and except, and 0.0.0.0/0. What they are depends only on the
    // ipBlock atoms (and the number of egress port names, in the signatures): kept while those stay.
    const regionKey = `${namedList.length}#${ipKey}`;
    let rm = this.regionMemo?.key === regionKey ? this.regionMemo : undefined;
    if (!rm) {
      const regionPrefixes = new Map<number, Prefix>();
      regionPrefixes.set(0, { net: 0, len: 0 });
      for (const x of ipAtoms) for (const q of [x.cidr!, ...x.except!]) regionPrefixes.set(prefixKey(q), q);
      const byLen = new Map<number, Map<number, PeerInfo>>();
      const infos: PeerInfo[] = [];
      const regionInfo = new Map<number, PeerInfo>();
      for (const [k, q] of regionPrefixes) {
        const info = infoFor(ipAtomsOver(q), new Map());
        infos.push(info);
        regionInfo.set(k, info);
        let m = byLen.get(q.len);
        if (!m) byLen.set(q.len, (m = new Map()));
        m.set(q.net, info);
      }
      const lens = [...byLen.keys()].sort((x, y) => y - x);
      const world = regionInfo.get(0)!;
      const at = (ip: number, maxLen = 32): PeerInfo => {
        for (const len of lens) {
          if (len > maxLen) continue;
          const info = byLen.get(len)!.get((ip & maskOf(len)) >>> 0);
          if (info) return info;
        }
        return world;
      };
      const written: [string, PeerInfo][] = [];
      const members: [PeerInfo, string][] = [];
      for (const [k, q] of regionPrefixes) {
        const info = regionInfo.get(k)!;
        members.push([info, prefixText(q)]);
        if (q.len > 0 && at(q.net, q.len - 1) === info) continue; // same as around it
        written.push([prefixText(q), info]);
      }
      rm = { key: regionKey, infos, at, written, members };
      this.regionMemo = rm;
    } else {
      // The same signatures are the same objects (regionAt compares them).
      for (const info of rm.infos) if (!infoBySig.has(info.sig)) infoBySig.set(info.sig, info);
    }
    /** The region an address (or a prefix, strictly inside: below maxLen) falls in. */
    const regionAt = rm.at;
    const peerOf = new Map<string, PeerInfo>(rm.written); // cidr -> info (before classes are numbered)
    const podInfo = new Map<PolicyPod, PeerInfo>();
    for (const [ip, p] of podAt) {
      const named = new Map<string, number>();
      for (const k of namedList) {
        const [name, proto] = k.split('/');
        const cp = p.ports.find((x) => x.name === name && x.protocol === proto);
        if (cp) named.set(k, cp.containerPort);
      }
      const ids = [...groupOf.get(p)!.atoms, ...(ipAtoms.length ? ipAtomsOf(ip) : [])];
      const info = infoFor(ids, named);
      podInfo.set(p, info);
      const cidr = `${v4Text(ip)}/32`;
      // Left out where the prefix around it gives the same class (a /32 region at this very address included).
      if (regionAt(ip) !== info) peerOf.set(cidr, info);
    }
    // Number the classes: known meanings keep their numbers; after a restart, a class takes
    // the number the maps hold at its prefixes when they all agree.
    if (this.seedPeers) {
      for (const [cidr, info] of peerOf) {
        let l = sigPrefixes.get(info.sig);
        if (!l) sigPrefixes.set(info.sig, (l = []));
        l.push(cidr);
      }
    }
    const taken = new Set<number>();
    for (const info of infoBySig.values()) {
      const id = this.classIds.get(info.sig);
      if (id !== undefined) {
        classOfSig.set(info.sig, id);
        taken.add(id);
      }
    }
    if (this.seedPeers) {
      for (const info of infoBySig.values()) {
        if (classOfSig.has(info.sig)) continue;
        const at = sigPrefixes.get(info.sig) ?? [];
        const old = at.map((c) => this.seedPeers!.get(c));
        const first = old[0];
        if (first !== undefined && first >= PEER_CLASS_FIRST && !taken.has(first) && old.every((o) => o === first)) {
          classOfSig.set(info.sig, first);
          this.classIds.set(info.sig, first);
          taken.add(first);
        }
      }
      this.seedPeers = undefined;
    }
    for (const info of infoBySig.values()) {
      if (classOfSig.has(info.sig)) continue;
      const id = this.nextClass++;
      classOfSig.set(info.sig, id);
      this.classIds.set(info.sig, id);
    }
    // Forget meanings no longer present (their numbers are not handed out again).
    for (const sig of [...this.classIds.keys()]) if (!infoBySig.has(sig)) this.classIds.delete(sig);

    const peers: PeerPrefix[] = [];
    const usedClasses = new Set<number>();
    for (const [cidr, info] of peerOf) {
      const c = classOfSig.get(info.sig)!;
      peers.push({ cidr, peerClass: c });
      usedClasses.add(c);
    }
    for (const ip of hostIps) peers.push({ cidr: `${v4Text(ip)}/32`, peerClass: PEER_CLASS_HOST });
    const classMembers = new Map<number, string[]>();
    const member = (c: number, m: string): void => {
      const l = classMembers.get(c);
      if (!l) classMembers.set(c, [m]);
      else if (l.length < 8) l.push(m);
    };
    for (const [info, text] of rm.members) member(classOfSig.get(info.sig)!, text);
    for (const [p, info] of podInfo) member(classOfSig.get(info.sig)!, `${p.namespace}/${p.name}`);
    if (hostIps.size) classMembers.set(PEER_CLASS_HOST, ['(node)', ...[...hostIps].slice(0, 7).map(v4Text)]);
    // Every class a lookup can return (pods whose /32 was left out share their region's).
    const allClasses = [...usedClasses].sort((x, y) => x - y);
    const classesOfAtom = new Map<number, number[]>();
    const usedInfos: PeerInfo[] = [];
    for (const info of infoBySig.values()) {
      const c = classOfSig.get(info.sig)!;
      if (!usedClasses.has(c)) continue;
      usedInfos.push(info);
      for (const a of info.atoms) {
        let l = classesOfAtom.get(a);
        if (!l) classesOfAtom.set(a, (l = []));
        l.push(c);
      }
    }

    // --- endpoints ---
    const endpoints: PolicyEndpoint[] = [];
    const liveEpKeys = new Set<string>();
    const epList: [PolicyPod, PolicyEndpoint][] = [];
    const epsByNs = new Map<string, [PolicyPod, PolicyEndpoint][]>();
    for (const [ip, p] of podAt) {
      if (!p.local) continue;
      const ipText = v4Text(ip);
      const key = `${ipText} ${p.namespace}/${p.name}`;
      let id = this.epIds.get(key);
      if (id === undefined) {
        const seeded = this.epIds.get(`ip ${ipText}`);
        if (seeded !== undefined) {
          id = seeded;
          this.epIds.delete(`ip ${ipText}`);
        } else id = this.nextEp++;
        this.epIds.set(key, id);
      }
      liveEpKeys.add(key);
      const ep: PolicyEndpoint = { ip: ipText, epId: id, ifindex: 0, isolatedIngress: false, isolatedEgress: false };
      endpoints.push(ep);
      epList.push([p, ep]);
      let l = epsByNs.get(p.namespace);
      if (!l) epsByNs.set(p.namespace, (l = []));
      l.push([p, ep]);
    }
    for (const k of [...this.epIds.keys()]) if (!liveEpKeys.has(k)) this.epIds.delete(k);

    // --- rules ---
    // Endpoints with one namespace, label set and container ports get the same rules (only
    // the endpoint id differs): worked out once per such group, then stamped per endpoint.
    // A group's rules are kept between compiles (ruleMemo) and worked out again only when what
    // they come from changed: the policies that select it (objects and ids), or the classes of
    // an atom its policies' peers name (all classes: a rule without peers; any class change: an
    // egress named port). A policy change recomputes the groups it selects, and those whose
    // peers' classes it split or merged.
    interface EpGroup { key: string; pod: PolicyPod; labels: Record<string, string>; eps: PolicyEndpoint[]; pods: PolicyPod[] }
    const epGroups = new Map<string, EpGroup>();
    for (const [p, ep] of epList) {
      const g = groupOf.get(p)!;
      const key = `${g.key}\0${p.ports.length ? canon(p.ports) : ''}`;
      let eg = epGroups.get(key);
      if (!eg) epGroups.set(key, (eg = { key, pod: p, labels: g.labels, eps: [], pods: [] }));
      eg.eps.push(ep);
      eg.pods.push(p);
    }
    const endpointInfo: CompileResult['endpointInfo'] = new Map();
    type Selecting = { pol: NetworkPolicy; id: number; ingress: boolean; egress: boolean; sel: Matcher };
    const policiesByNs = new Map<string, Selecting[]>();
    for (const pol of state.policies) {
      const prep = this.prepOf(pol);
      let l = policiesByNs.get(pol.metadata.namespace);
      if (!l) policiesByNs.set(pol.metadata.namespace, (l = []));
      l.push({ pol, id: pid.get(pol)!, ingress: prep.ingress, egress: prep.egress, sel: prep.sel });
    }
    // Per rule: the classes its peers match; per egress named port: [class, number] among them.
    const ruleClasses = new Map<object, number[]>();
    const classesOfRule = (peersOfRule: NetworkPolicyPeer[] | undefined, rule: object): number[] => {
      let classes = ruleClasses.get(rule);
      if (classes) return classes;
      if (!peersOfRule || peersOfRule.length === 0) classes = allClasses;
      else {
        const set = new Set<number>();
        for (const peer of peersOfRule) {
          const a = peerAtom.get(peer);
          if (a !== undefined) for (const c of classesOfAtom.get(a) ?? []) set.add(c);
        }
        classes = [...set];
      }
      ruleClasses.set(rule, classes);
      return classes;
    };
    const egressNamed = new Map<object, [number, number][]>();
    const egressNamedOf = (port: NetworkPolicyPort, classes: number[]): [number, number][] => {
      let l = egressNamed.get(port);
      if (l) return l;
      const k = `${port.port}/${port.protocol ?? 'TCP'}`;
      const cs = new Set(classes);
      l = [];
      for (const info of usedInfos) {
        const c = classOfSig.get(info.sig)!;
        const n = info.named.get(k);
        if (n !== undefined && cs.has(c)) l.push([c, n]);
      }
      egressNamed.set(port, l);
      return l;
    };
    // What the classes are this time, against the last compile: per atom, all of them, any at all.
    // (The classes are their used signatures with their numbers: the same pairs, the same classes.)
    const usedNow = new Map<string, number>();
    for (const i of usedInfos) usedNow.set(i.sig, classOfSig.get(i.sig)!);
    const names = namedList.join(',');
    const lastUsed = this.lastUsed;
    let anyClassChanged = names !== this.lastNamed || usedNow.size !== lastUsed.size;
    if (!anyClassChanged) for (const [sig, c] of usedNow) if (lastUsed.get(sig) !== c) anyClassChanged = true;
    const lastAtomClasses = this.lastAtomClasses;
    let atomClasses = lastAtomClasses;
    let allChanged = false;
    if (anyClassChanged) {
      atomClasses = new Map<number, string>();
      for (const [a, l] of classesOfAtom) atomClasses.set(a, l.join(','));
      allChanged = allClasses.join(',') !== this.lastAllClasses;
      this.lastAllClasses = allClasses.join(',');
    }
    const atomChanged = (a: number): boolean => anyClassChanged && atomClasses.get(a) !== lastAtomClasses.get(a);
    this.lastUsed = usedNow;
    this.lastNamed = names;
    this.lastAtomClasses = atomClasses;

    const INGRESS = 0;
    const EGRESS = 1;
    /** A group's rules before normalizing, keyed by class * 2 + direction; and what they depend on. */
    const rawOf = (eg: EpGroup, selecting: Selecting[]): { raw: Map<number, Raw[]>; isoIn: number[]; isoOut: number[]; atoms: Set<number>; usesAll: boolean; usesNamed: boolean } => {
      const raw = new Map<number, Raw[]>();
      const push = (c: number, dir: number, r: Raw): void => {
        const k = c * 2 + dir;
        const l = raw.get(k);
        if (l) l.push(r);
        else raw.set(k, [r]);
      };
      const isoIn: number[] = [];
      const isoOut: number[] = [];
      const atomsUsed = new Set<number>();
      let usesAll = false;
      let usesNamed = false;
      for (const cp of selecting) {
        for (const dir of [INGRESS, EGRESS]) {
          if (dir === INGRESS ? !cp.ingress : !cp.egress) continue;
          (dir === INGRESS ? isoIn : isoOut).push(cp.id);
          const rules: (NetworkPolicyIngressRule | NetworkPolicyEgressRule)[] = (dir === INGRESS ? cp.pol.spec.ingress : cp.pol.spec.egress) ?? [];
          for (const rule of rules) {
            const peersOfRule = dir === INGRESS ? (rule as NetworkPolicyIngressRule).from : (rule as NetworkPolicyEgressRule).to;
            if (!peersOfRule || peersOfRule.length === 0) usesAll = true;
            else for (const peer of peersOfRule) {
              const at = peerAtom.get(peer);
              if (at !== undefined) atomsUsed.add(at);
            }
            const classes = classesOfRule(peersOfRule, rule);
            if (classes.length === 0) continue;
            const ports = rule.ports ?? [];
            if (ports.length === 0) {
              const r: Raw = { proto: null, from: null, to: null, pid: cp.id };
              for (const c of classes) push(c, dir, r);
              continue;
            }
            for (const port of ports) {
              const proto = IPPROTO[port.protocol ?? 'TCP'];
              let r: Raw;
              if (typeof port.port === 'string') {
                if (dir === EGRESS) {
                  usesNamed = true;
                  for (const [c, n] of egressNamedOf(port, classes)) push(c, dir, { proto, from: n, to: n, pid: cp.id });
                  continue;
                }
                const n = namedPort(eg.pod, port);
                if (n === undefined) continue;
                r = { proto, from: n, to: n, pid: cp.id };
              } else if (port.port === undefined) {
                r = { proto, from: null, to: null, pid: cp.id };
              } else {
                const to = port.endPort ?? port.port;
                if (to < port.port) continue;
                r = { proto, from: port.port, to, pid: cp.id };
              }
              for (const c of classes) push(c, dir, r);
            }
          }
        }
      }
      return { raw, isoIn, isoOut, atoms: atomsUsed, usesAll, usesNamed };
    };
    const selectingOf = (eg: EpGroup): Selecting[] => (policiesByNs.get(eg.pod.namespace) ?? []).filter((cp) => cp.sel(eg.labels));

    // Each group's normalized rules (memo or worked out), stamped per endpoint, in the order of the output.
    const liveGroups = new Set<string>();
    const groupOfEp = new Map<number, RuleMemo>();
    let ruleBlocks = 0;
    for (const eg of epGroups.values()) {
      liveGroups.add(eg.key);
      const selecting = selectingOf(eg);
      let m = this.ruleMemo.get(eg.key);
      const valid = m !== undefined && m.selecting.length === selecting.length &&
        m.selecting.every((x, i) => x.pol === selecting[i]!.pol && x.id === selecting[i]!.id) &&
        !(m.usesAll && allChanged) && !(m.usesNamed && anyClassChanged) && ![...m.atoms].some(atomChanged);
      if (!valid) {
        const r = rawOf(eg, selecting);
        const norm: Omit<RuleEntry, 'epId'>[] = [];
        for (const [k, list] of r.raw) {
          const peerClass = Math.floor(k / 2);
          const dir = k % 2 === INGRESS ? 'ingress' : 'egress';
          for (const x of normalize(list)) norm.push({ peerClass, dir, proto: x.proto, portFrom: x.from, portTo: x.to, policyId: x.pid });
        }
        norm.sort(ruleOrderNoEp);
        let blocks = 0;
        for (const x of norm) blocks += blocksOf(x as RuleEntry);
        m = { selecting: selecting.map((x) => ({ pol: x.pol, id: x.id })), atoms: r.atoms, usesAll: r.usesAll, usesNamed: r.usesNamed, isoIn: r.isoIn, isoOut: r.isoOut, norm, blocks, stamped: new Map() };
        this.ruleMemo.set(eg.key, m);
      }
      const memo = m!;
      const stamped = new Map<number, RuleEntry[]>();
      eg.eps.forEach((ep, i) => {
        ep.isolatedIngress = memo.isoIn.length > 0;
        ep.isolatedEgress = memo.isoOut.length > 0;
        const p = eg.pods[i]!;
        endpointInfo.set(ep.epId, { namespace: p.namespace, name: p.name, ip: ep.ip, ingress: memo.isoIn, egress: memo.isoOut });
        stamped.set(ep.epId, memo.stamped.get(ep.epId) ?? memo.norm.map((x) => ({ epId: ep.epId, ...x })));
        groupOfEp.set(ep.epId, memo);
        ruleBlocks += memo.blocks;
      });
      memo.stamped = stamped;
    }
    for (const k of this.ruleMemo.keys()) if (!liveGroups.has(k)) this.ruleMemo.delete(k);
    endpoints.sort((a, b) => a.epId - b.epId);
    let rules: RuleEntry[] = [];
    for (const ep of endpoints) for (const r of groupOfEp.get(ep.epId)!.stamped.get(ep.epId)!) rules.push(r);

    // --- capacity: leave out the rules of the largest policies until the rest fits (less allowed, never more) ---
    const dropped: string[] = [];
    if (ruleBlocks > POLICY_CAPACITY.rules) {
      // Worked out afresh, without the memo: a policy's share, and the rules without the dropped ones.
      const raws = [...epGroups.values()].map((eg) => ({ eg, raw: rawOf(eg, selectingOf(eg)).raw }));
      const perPolicyBlocks = new Map<number, number>();
      const build = (drop: Set<number>): RuleEntry[] => {
        const out: RuleEntry[] = [];
        for (const { eg, raw } of raws) {
          for (const [k, all] of raw) {
            const list = drop.size ? all.filter((r) => !drop.has(r.pid)) : all;
            if (list.length === 0) continue;
            const peerClass = Math.floor(k / 2);
            const dir = k % 2 === INGRESS ? 'ingress' : 'egress';
            for (const r of normalize(list)) {
              for (const ep of eg.eps) {
                const entry: RuleEntry = { epId: ep.epId, peerClass, dir, proto: r.proto, portFrom: r.from, portTo: r.to, policyId: r.pid };
                out.push(entry);
                if (!drop.size) perPolicyBlocks.set(r.pid, (perPolicyBlocks.get(r.pid) ?? 0) + blocksOf(entry));
              }
            }
          }
        }
        return out;
      };
      build(new Set());
      const order = [...perPolicyBlocks].sort((a, b) => b[1] - a[1] || b[0] - a[0]);
      const drop = new Set<number>();
      while (ruleBlocks > POLICY_CAPACITY.rules && drop.size < order.length) {
        for (const [id, n] of order) {
          if (ruleBlocks <= POLICY_CAPACITY.rules) break;
          if (drop.has(id)) continue;
          drop.add(id);
          ruleBlocks -= n;
          const ref = policyIds.get(id)!;
          dropped.push(`${ref.namespace}/${ref.name}`);
        }
        // A port another policy also allows may have been decided by a dropped one: built again without them.
        rules = build(drop);
        ruleBlocks = rules.reduce((n, r) => n + blocksOf(r), 0);
      }
      rules.sort((a, b) => a.epId - b.epId || ruleOrderNoEp(a, b));
      problems.push({
        kind: 'capacity',
        message: `the rules need more than the ${POLICY_CAPACITY.rules} entries of patu_pol_rule: left out the rules of ${dropped.length} policies (${dropped.slice(0, 5).join(', ')}${dropped.length > 5 ? ', ...' : ''}); the pods they select stay isolated without them`,
      });
    }
    if (endpoints.length > POLICY_CAPACITY.endpoints || peers.length > POLICY_CAPACITY.peers) {
      problems.push({
        kind: 'capacity',
        message: `${endpoints.length} endpoints and ${peers.length} peer prefixes; patu_pol_ep holds ${POLICY_CAPACITY.endpoints}, patu_pol_peer ${POLICY_CAPACITY.peers}`,
      });
    }

    peers.sort((a, b) => (a.cidr < b.cidr ? -1 : a.cidr > b.cidr ? 1 : 0));
    this.memoSound = true;
    return {
      contents: { endpoints, peers, rules },
      policyIds,
      problems,
      dropped,
      endpointInfo,
      classMembers,
      stats: {
        endpoints: endpoints.length, peers: peers.length, rules: rules.length, ruleBlocks,
        classes: usedClasses.size, atoms: atoms.size, ms: Math.round((performance.now() - t0) * 100) / 100,
      },
    };
  }
}

/** The order of rules within an endpoint: class, direction (egress first), protocol (any first), first port (any first). */
function ruleOrderNoEp(a: Omit<RuleEntry, 'epId'>, b: Omit<RuleEntry, 'epId'>): number {
  return a.peerClass - b.peerClass || (a.dir < b.dir ? -1 : a.dir > b.dir ? 1 : 0) || (a.proto ?? -1) - (b.proto ?? -1) || (a.portFrom ?? -1) - (b.portFrom ?? -1);
}

function namedPort(pod: PolicyPod, port: NetworkPolicyPort): number | undefined {
  const protocol = port.protocol ?? 'TCP';
  return pod.ports.find((cp) => cp.name === port.port && cp.protocol === protocol)?.containerPort;
}

/**
 * One (endpoint, class, direction)'s entries made canonical: any protocol hides the
 * rest, any port of a protocol hides its ranges, ranges are cut where they overlap
 * (each port decided by the lowest policy id) and joined where they touch.
 */
function normalize(list: { proto: number | null; from: number | null; to: number | null; pid: number }[]) {
  if (list.length === 1) return list;
  const anyProto = list.filter((r) => r.proto === null);
  if (anyProto.length) return [{ proto: null, from: null, to: null, pid: Math.min(...anyProto.map((r) => r.pid)) }];
  const out: { proto: number | null; from: number | null; to: number | null; pid: number }[] = [];
  const protos = [...new Set(list.map((r) => r.proto!))].sort((a, b) => a - b);
  for (const proto of protos) {
    const mine = list.filter((r) => r.proto === proto);
    const anyPort = mine.filter((r) => r.from === null);
    if (anyPort.length) {
      out.push({ proto, from: null, to: null, pid: Math.min(...anyPort.map((r) => r.pid)) });
      continue;
    }
    // Lowest policy first; each takes what is still free.
    mine.sort((a, b) => a.pid - b.pid || a.from! - b.from!);
    const taken: { from: number; to: number; pid: number }[] = [];
    for (const r of mine) {
      let pieces = [{ from: r.from!, to: r.to! }];
      for (const t of taken) {
        const next: { from: number; to: number }[] = [];
        for (const p of pieces) {
          if (p.to < t.from || p.from > t.to) next.push(p);
          else {
            if (p.from < t.from) next.push({ from: p.from, to: t.from - 1 });
            if (p.to > t.to) next.push({ from: t.to + 1, to: p.to });
          }
        }
        pieces = next;
        if (!pieces.length) break;
      }
      for (const p of pieces) taken.push({ ...p, pid: r.pid });
    }
    taken.sort((a, b) => a.from - b.from);
    const merged: { from: number; to: number; pid: number }[] = [];
    for (const t of taken) {
      const last = merged[merged.length - 1];
      if (last && last.pid === t.pid && last.to + 1 === t.from) last.to = t.to;
      else merged.push({ ...t });
    }
    for (const m of merged) out.push({ proto, from: m.from, to: m.to, pid: m.pid });
  }
  return out;
}

/** Compiles with fresh ids (tests, the one-shot CLI); the engine keeps one PolicyCompiler. */
export function compile(state: PolicyState): CompileResult {
  return new PolicyCompiler().compile(state);
}

/**
 * What the programs decide for a new flow, in TypeScript, over compiled contents (the
 * compiler's unit test; the property test runs the programs themselves). Per
 * bpf/policy.h: at the source's veth its egress, at the destination's its ingress.
 */
export function lookupCompiled(c: PolicyMapContents, flow: { src: string; dst: string; proto: number; dport: number }): boolean {
  const ports = new Set([IPPROTO.TCP, IPPROTO.UDP, IPPROTO.SCTP] as number[]);
  const classOf = (ip: string): number => {
    const n = v4(ip)!;
    let best: PeerPrefix | undefined;
    let bestLen = -1;
    for (const p of c.peers) {
      const q = parsePrefix(p.cidr)!;
      if (q.len > bestLen && addrIn(q, n)) {
        best = p;
        bestLen = q.len;
      }
    }
    return best ? best.peerClass : 0;
  };
  const side = (epIp: string, peerIp: string, dir: 'ingress' | 'egress'): boolean => {
    const ep = c.endpoints.find((e) => e.ip === epIp);
    if (!ep) return true;
    if (!(dir === 'ingress' ? ep.isolatedIngress : ep.isolatedEgress)) return true;
    const cls = classOf(peerIp);
    if (cls === PEER_CLASS_HOST) return true;
    return c.rules.some((r) => r.epId === ep.epId && r.peerClass === cls && r.dir === dir &&
      (r.proto === null || (r.proto === flow.proto && (r.portFrom === null || (ports.has(flow.proto) && flow.dport >= r.portFrom && flow.dport <= r.portTo!)))));
  };
  return side(flow.src, flow.dst, 'egress') && side(flow.dst, flow.src, 'ingress');
}
