// The policy engine: one per agent, fed by a source (the policy file, Kubernetes) and by
// the CNI ADD hook. On every change it
//   1. compiles the state (one PolicyCompiler: ids stay stable, so the diff is small),
//   2. syncs the maps (PolicyDataplane: adds before removes, capacity checked first),
//   3. writes the names file (ids -> names) for the CLI, the monitor and the metrics,
//   4. deletes the conntrack entries and evicts the accelerated sockets of flows the new
//      state denies (each judged by the reference evaluator), so their next packet meets
//      the tc verdict: an established connection is cut off, not only new ones.
// When in doubt, deny: if the state cannot be compiled or does not fit the maps, the
// engine programs every isolated endpoint with no rules (only the node reaches them),
// counts it and says why; it never leaves a half-applied state that allows more.
import { messageOf } from '../errors.js';
import { PolicyCompiler, type CompileProblem, type CompileResult } from './compile.js';
import { Evaluator } from './evaluate.js';
import { policyNamesPath, readPolicyNamesFile, writePolicyNames, type PolicyNames } from './names.js';
import { PEER_CLASS_HOST, type PolicyMapContents, type PolicyState } from './types.js';
import type { SyncTouched } from '../dataplane/policy-maps.js';

/** What the engine needs of the kernel side (src/dataplane/policy-tc.ts PolicyDataplane has it). */
export interface PolicyDataplaneLike {
  /** `touched`, when given, lets the engine judge only the flows the sync can have changed. */
  sync(desired: PolicyMapContents): { changed: number; touched?: SyncTouched };
  read(): PolicyMapContents;
  /** With `tombstone`, denied flows are marked (every packet dropped, either way) rather than deleted. */
  flushConntrack(pred: (k: { src: string; dst: string; sport: number; dport: number; proto: number; dir: 'ingress' | 'egress'; fragment?: boolean }, v: { flags: number }) => boolean, opts?: { tombstone?: boolean; only?: (src: number, dst: number) => boolean }): number;
  evictSockets(pred: (flow: { src: string; dst: string; sport: number; dport: number }) => boolean): number;
  /** Counters of endpoints no longer programmed are dropped (the stats map is keyed by endpoint id). */
  pruneStats?(keepEpIds: ReadonlySet<number>): number;
}

export interface PolicyLog {
  info(fields: object, msg: string): void;
  warn(fields: object, msg: string): void;
  error(fields: object, msg: string): void;
}

export interface PolicyEngineOptions {
  /** The pin root: the names file goes to policyNamesPath(pinRoot). */
  pinRoot?: string;
  /** Or the names file itself (tests); '' = none. */
  namesFile?: string;
  /**
   * Apply the addresses CNI ADD told an earlier run (the names file keeps them, whatever this
   * says) to pods the source names without one: the policy file's. Not for Kubernetes, whose
   * pods carry their addresses: there an old address could be another pod's by now. The
   * default of every state; setState's own flag overrides it (the manager serves both sources).
   */
  rememberCniAddresses?: boolean;
}

export interface SetStateOptions {
  /** This state takes the addresses an earlier run learned from CNI ADD (default: the engine's option). */
  rememberCniAddresses?: boolean;
}

export interface PolicyApplyResult {
  /** Map entries written or removed. */
  changed: number;
  /** Conntrack entries deleted and accelerated sockets evicted (flows the new state denies). */
  flushed: number;
  evicted: number;
  problems: CompileProblem[];
  /** The deny-only fallback was programmed (see counters.fallbacks). */
  fallback: boolean;
  /**
   * Why not all of the state is programmed: 'capacity' (the maps cannot hold it: rules left
   * out, or the fallback), 'compile' or 'sync' (the fallback was programmed). Absent: all is.
   */
  failure?: 'capacity' | 'compile' | 'sync';
  ms: number;
  /** Where the time went, ms: compiling, writing the maps, the names file, judging conntrack and sockets. */
  phases: { compile: number; sync: number; names: number; flush: number };
}

export interface PolicyEngineCounters {
  applies: number;
  /** Applies that programmed the deny-only fallback (compile failure, maps too small). */
  fallbacks: number;
  /** Applies where even the fallback could not be written (the maps keep what they had). */
  failures: number;
  /** Compile problems (duplicate addresses, capacity: rules left out). */
  problems: number;
  flushed: number;
  evicted: number;
}

const TCP = 6;
/** bpf/policy.h PATU_POL_CT_DENIED: a tombstone (the flow was cut off). */
const CT_DENIED = 8;

/**
 * Whether an address is one a sync can have changed the verdicts of: an endpoint it wrote or removed,
 * one whose rules it wrote or removed (ids of the contents before and after), or an address under a
 * peer prefix it wrote or removed (its class may differ).
 */
function affectedBy(t: SyncTouched, before: PolicyMapContents, after: PolicyMapContents): { num(ip: number): boolean; ip(ip: string): boolean } {
  const ips = new Set<number>();
  for (const ip of t.ips) ips.add(ipNum(ip));
  for (const c of [before, after]) for (const e of c.endpoints) if (t.epIds.has(e.epId)) ips.add(ipNum(e.ip));
  const prefixes = new Map<number, Set<number>>(); // length -> networks
  for (const cidr of t.peers) {
    const [a, l] = cidr.split('/');
    const len = Number(l);
    let s = prefixes.get(len);
    if (!s) prefixes.set(len, (s = new Set()));
    s.add((ipNum(a!) & maskOf(len)) >>> 0);
  }
  const lens = [...prefixes].map(([len, nets]) => [maskOf(len), nets] as const);
  const num = (n: number): boolean => {
    if (ips.has(n)) return true;
    for (const [mask, nets] of lens) if (nets.has((n & mask) >>> 0)) return true;
    return false;
  };
  return { num, ip: (ip) => num(ipNum(ip)) };
}
const maskOf = (len: number): number => (len === 0 ? 0 : (0xffffffff << (32 - len)) >>> 0);
const ipNum = (ip: string): number => ip.split('.').reduce((a, x) => a * 256 + Number(x), 0) >>> 0;

export class PolicyEngine {
  private readonly compiler = new PolicyCompiler();
  /** The state as the source gave it, and with the addresses learned from CNI ADD (what is programmed). */
  private source: PolicyState = { namespaces: [], pods: [], policies: [], nodeAddresses: [] };
  private state: PolicyState = this.source;
  /** Addresses the CNI ADD hook told us before the source did: ns/name -> ips. */
  private readonly learned = new Map<string, string[]>();
  /**
   * What CNI ADD told an earlier run (the names file's fromCni entries): ns/name -> ips. Applied only
   * while the current state asks for it (`remember`); a new ADD for the pod replaces it.
   */
  private readonly remembered = new Map<string, string[]>();
  private readonly rememberDefault: boolean;
  /** Whether the current state takes `remembered` (its own flag, or the engine's default). */
  private remember: boolean;
  /** What the last successful sync wrote (unset after a failure or the fallback). */
  private lastSynced: PolicyMapContents | undefined;
  /** The last judging of conntrack and sockets failed: the next one judges every flow. */
  private judgeAll = false;
  private lastNames: PolicyNames = { version: 1, policies: {}, endpoints: {}, classes: {} };
  private readonly namesFile: string;
  readonly counters: PolicyEngineCounters = { applies: 0, fallbacks: 0, failures: 0, problems: 0, flushed: 0, evicted: 0 };
  /** The last error (compile, sync, names file), cleared by a clean apply. */
  lastError: string | undefined;

  constructor(private readonly dp: PolicyDataplaneLike, private readonly log: PolicyLog, opts: PolicyEngineOptions = {}) {
    this.namesFile = opts.namesFile ?? (opts.pinRoot ? policyNamesPath(opts.pinRoot) : '');
    this.rememberDefault = this.remember = opts.rememberCniAddresses === true;
    // A restart: take over the numbers in the maps and the names file, so the same state
    // compiles to the same contents and the first sync writes nothing.
    let names: PolicyNames | null = null;
    try {
      names = this.namesFile ? readPolicyNamesFile(this.namesFile) : null;
    } catch (e) {
      log.warn({ file: this.namesFile, err: messageOf(e) }, 'policy names file unreadable; policy ids start afresh');
    }
    try {
      this.compiler.seed({ contents: dp.read(), ...(names ? { policies: names.policies } : {}) });
    } catch (e) {
      log.warn({ err: messageOf(e) }, 'reading the policy maps failed; ids start afresh');
    }
    if (names) {
      this.lastNames = names;
      // Always read: whether they apply is each state's to say.
      for (const e of Object.values(names.endpoints)) {
        if (!e.fromCni || !e.ips.length) continue;
        const had = this.remembered.get(e.pod) ?? [];
        this.remembered.set(e.pod, [...had, ...e.ips.filter((ip) => !had.includes(ip))]);
      }
    }
  }

  /** The state as last given (with addresses learned from CNI ADD filled in). */
  current(): PolicyState {
    return this.state;
  }

  /** ids -> names, as in the names file. */
  names(): PolicyNames {
    return this.lastNames;
  }

  /** A new state from the source: applied at once (compile, sync, names, flush). */
  setState(state: PolicyState, opts: SetStateOptions = {}): PolicyApplyResult {
    const before = this.source;
    this.source = state;
    this.remember = opts.rememberCniAddresses ?? this.rememberDefault;
    // Pods the source had and no longer has: what CNI ADD said of them is forgotten
    // (a pod the source has not seen yet keeps it: its ADD came first).
    const had = new Set(before.pods.map((p) => `${p.namespace}/${p.name}`));
    const has = new Set(state.pods.map((p) => `${p.namespace}/${p.name}`));
    for (const m of [this.learned, this.remembered]) for (const ref of [...m.keys()]) if (had.has(ref) && !has.has(ref)) m.delete(ref);
    this.state = this.withLearned(state);
    return this.apply();
  }

  /**
   * CNI ADD: the pod now has these addresses on this node. Applied at once when the pod is
   * in the state (its labels decide its policies); false when it is not (nothing to decide
   * by yet: the source's update will bring it, and these addresses with it) or when the
   * source already has its address. Kept until the source has addresses for the pod, so a
   * source lagging behind the ADD does not take them away again.
   */
  podAddressKnown(namespace: string, name: string, ips: string[]): PolicyApplyResult | false {
    const ref = `${namespace}/${name}`;
    const v4 = ips.filter((ip) => !ip.includes(':'));
    if (v4.length === 0) return false;
    const src = this.source.pods.find((p) => p.namespace === namespace && p.name === name);
    if (src?.hostNetwork) return false;
    if (src && src.ips.some((ip) => !ip.includes(':'))) return false; // the source knows it
    const had = this.learned.get(ref) ?? (this.remember ? this.remembered.get(ref) : undefined);
    this.learned.set(ref, v4);
    this.remembered.delete(ref); // this run's ADD replaces an earlier run's
    if (!src) return false;
    if (had && had.length === v4.length && had.every((ip) => v4.includes(ip))) return false; // told already
    this.state = this.withLearned(this.source);
    return this.apply();
  }

  /**
   * CNI DEL: the pod's addresses on this node are gone. What CNI ADD told is forgotten;
   * applied when the state had the pod's addresses from it alone. Returns whether it applied.
   */
  podAddressGone(namespace: string, name: string): PolicyApplyResult | false {
    const ref = `${namespace}/${name}`;
    const wasApplied = this.learned.has(ref) || (this.remember && this.remembered.has(ref));
    this.learned.delete(ref);
    this.remembered.delete(ref);
    if (!wasApplied) return false;
    if (!this.source.pods.some((p) => p.namespace === namespace && p.name === name)) return false;
    this.state = this.withLearned(this.source);
    return this.apply();
  }

  /** The source's state with the addresses CNI ADD told for pods the source has none for. */
  private withLearned(state: PolicyState): PolicyState {
    if (this.learned.size === 0 && (!this.remember || this.remembered.size === 0)) return state;
    const pods = state.pods.map((p) => {
      const ref = `${p.namespace}/${p.name}`;
      const ips = this.learnedFor(ref);
      if (!ips) return p;
      if (p.hostNetwork || p.ips.some((ip) => !ip.includes(':'))) {
        this.learned.delete(ref); // the source caught up
        this.remembered.delete(ref);
        return p;
      }
      return { ...p, ips: [...p.ips, ...ips], local: true };
    });
    return { ...state, pods };
  }

  /** The CNI addresses in effect for a pod: this run's, else (when the state asks) an earlier run's. */
  private learnedFor(ref: string): string[] | undefined {
    return this.learned.get(ref) ?? (this.remember ? this.remembered.get(ref) : undefined);
  }

  private apply(): PolicyApplyResult {
    const t0 = performance.now();
    const ms2 = (t: number): number => Math.round(t * 100) / 100;
    const phases = { compile: 0, sync: 0, names: 0, flush: 0 };
    this.counters.applies++;
    const state = this.state;
    let compiled: CompileResult | undefined;
    let changed = 0;
    let touched: SyncTouched | undefined;
    // What the maps held, judged flow by flow (unset after a failure or the fallback): what a sync diff is taken against.
    const before = this.lastSynced;
    let fallback = false;
    let error: string | undefined;
    let failure: PolicyApplyResult['failure'];
    try {
      compiled = this.compiler.compile(state);
    } catch (e) {
      error = `compiling the policy state failed: ${messageOf(e)}`;
      failure = 'compile';
      fallback = true;
    }
    let t = performance.now();
    phases.compile = ms2(t - t0);
    if (compiled) {
      for (const p of compiled.problems) this.log.warn({ kind: p.kind, ...(p.pod ? { pod: p.pod } : {}), ...(p.policy ? { policy: p.policy } : {}) }, p.message);
      this.counters.problems += compiled.problems.length;
      if (compiled.problems.some((p) => p.kind === 'capacity')) failure = 'capacity';
      // The same contents as the last sync (an event that changed nothing the maps see): no map
      // reads at all. The maps are this engine's alone; a restart syncs once in full.
      if (!this.lastSynced || !sameContents(this.lastSynced, compiled.contents)) {
        this.lastSynced = undefined;
        try {
          ({ changed, touched } = this.dp.sync(compiled.contents));
          this.lastSynced = compiled.contents;
        } catch (e) {
          error = messageOf(e);
          failure = (e as { code?: unknown }).code === 'POLICY_CAPACITY' ? 'capacity' : 'sync';
          fallback = true;
        }
      }
    }
    if (fallback) {
      // When in doubt, deny: every pod some policy isolates gets no rules (only the node reaches it).
      this.counters.fallbacks++;
      const contents = this.denyOnly(compiled);
      try {
        changed = this.dp.sync(contents).changed;
        this.log.error({ err: error, endpoints: contents.endpoints.length }, 'policy state could not be programmed; every isolated pod now denies all traffic but the node\'s until a state that fits is applied');
      } catch (e2) {
        this.counters.failures++;
        error = `${error}; and the deny-only fallback failed too: ${messageOf(e2)}`;
        this.log.error({ err: error }, 'policy maps could not be written; they keep what they held');
      }
    }
    this.lastError = error;
    phases.sync = ms2(performance.now() - t);
    t = performance.now();
    if (compiled) {
      this.writeNames(compiled);
      if (changed > 0 && this.dp.pruneStats) {
        try {
          this.dp.pruneStats(new Set(compiled.contents.endpoints.map((e) => e.epId)));
        } catch (e) {
          this.log.warn({ err: messageOf(e) }, 'policy: removing the counters of gone endpoints failed');
        }
      }
    }
    // Flows the new state denies: cut off, also when already established (the kernel only
    // judges new flows and those without a conntrack entry).
    phases.names = ms2(performance.now() - t);
    t = performance.now();
    let flushed = 0;
    let evicted = 0;
    if (changed > 0) {
      const judge = fallback ? this.denyOnlyJudge(compiled) : this.judge(state);
      // Only flows whose verdict the sync can have changed are judged (an end whose endpoint or rules
      // changed, or whose address is under a peer prefix that changed); the others keep what the last
      // judging left (the compiled maps decide as the evaluator does: the property tests). Everything is
      // judged after a failure, the fallback, or a dataplane that does not say what it touched.
      const affected = !fallback && before && compiled && touched && !this.judgeAll ? affectedBy(touched, before, compiled.contents) : undefined;
      try {
        const known = new Set<string>();
        flushed = this.dp.flushConntrack((k, v) => {
          if (affected && !affected.ip(k.src) && !affected.ip(k.dst)) return (v.flags & CT_DENIED) !== 0; // as it is
          if (k.proto === TCP) known.add(`${k.src} ${k.sport} ${k.dst} ${k.dport}`); // (sockets of unaffected flows are not looked at)
          return !judge(k.src, k.dst, k.proto, k.dport);
          // Tombstones, not deletion: deleted, a mid-stream packet from the side whose own policy is
          // open would re-create an entry that lets the other side's packets in as its replies.
        }, { tombstone: true, ...(affected ? { only: (src: number, dst: number) => affected.num(src) || affected.num(dst) } : {}) });
        // A socket sees its own end of a connection: the one the conntrack map knows as the
        // opener says which way it was opened; without an entry, either way denied cuts it.
        evicted = this.dp.evictSockets((f) => {
          if (affected && !affected.ip(f.src) && !affected.ip(f.dst)) return false;
          if (known.has(`${f.src} ${f.sport} ${f.dst} ${f.dport}`)) return !judge(f.src, f.dst, TCP, f.dport);
          if (known.has(`${f.dst} ${f.dport} ${f.src} ${f.sport}`)) return !judge(f.dst, f.src, TCP, f.sport);
          return !judge(f.src, f.dst, TCP, f.dport) || !judge(f.dst, f.src, TCP, f.sport);
        });
        this.judgeAll = false;
      } catch (e) {
        this.judgeAll = true; // the flows it did not get to are judged next time
        this.lastError = `${this.lastError ? `${this.lastError}; ` : ''}cutting off denied flows failed: ${messageOf(e)}`;
        this.log.error({ err: messageOf(e) }, 'policy: deleting conntrack entries / evicting sockets of denied flows failed');
      }
      this.counters.flushed += flushed;
      this.counters.evicted += evicted;
    }
    phases.flush = ms2(performance.now() - t);
    const ms = ms2(performance.now() - t0);
    return { changed, flushed, evicted, problems: compiled?.problems ?? [], fallback, ...(failure ? { failure } : {}), ms, phases };
  }

  /** A verdict function over the state (memoized: many conntrack entries share a flow). */
  private judge(state: PolicyState): (src: string, dst: string, proto: number, dport: number) => boolean {
    const ev = new Evaluator(state);
    const memo = new Map<string, boolean>();
    return (src, dst, proto, dport) => {
      const k = `${proto} ${src} ${dst} ${dport}`;
      let v = memo.get(k);
      if (v === undefined) {
        v = ev.verdict({ src, dst, proto, dport }).allowed;
        memo.set(k, v);
      }
      return v;
    };
  }

  /** Under the fallback: allowed only where neither end is an isolated endpoint. */
  private denyOnlyJudge(compiled: CompileResult | undefined): (src: string, dst: string) => boolean {
    const contents = this.denyOnly(compiled);
    const hosts = new Set(contents.peers.map((p) => p.cidr.replace(/\/32$/, '')));
    const eg = new Set(contents.endpoints.filter((e) => e.isolatedEgress).map((e) => e.ip));
    const ing = new Set(contents.endpoints.filter((e) => e.isolatedIngress).map((e) => e.ip));
    return (src, dst) => hosts.has(src) || hosts.has(dst) || (!eg.has(src) && !ing.has(dst));
  }

  /** Isolated endpoints, no rules, HOST peers: what the fallback programs. */
  private denyOnly(compiled: CompileResult | undefined): PolicyMapContents {
    if (compiled) {
      const endpoints = compiled.contents.endpoints.filter((e) => e.isolatedIngress || e.isolatedEgress);
      return { endpoints, peers: compiled.contents.peers.filter((p) => p.peerClass === PEER_CLASS_HOST), rules: [] };
    }
    // Nothing compiled (a bug): the endpoints the maps isolate now stay isolated, with no rules.
    let now: PolicyMapContents;
    try {
      now = this.dp.read();
    } catch {
      now = { endpoints: [], peers: [], rules: [] };
    }
    return {
      endpoints: now.endpoints.filter((e) => e.isolatedIngress || e.isolatedEgress),
      peers: now.peers.filter((p) => p.peerClass === PEER_CLASS_HOST),
      rules: [],
    };
  }

  private writeNames(c: CompileResult): void {
    const names: PolicyNames = { version: 1, policies: {}, endpoints: {}, classes: {} };
    for (const [id, r] of c.policyIds) names.policies[id] = `${r.namespace}/${r.name}`;
    for (const [id, e] of c.endpointInfo) {
      const pod = `${e.namespace}/${e.name}`;
      names.endpoints[id] = { pod, ips: [e.ip], ingress: e.ingress, egress: e.egress, ...(this.learnedFor(pod)?.includes(e.ip) ? { fromCni: true } : {}) };
    }
    for (const [id, m] of c.classMembers) names.classes[id] = m;
    this.lastNames = names;
    if (!this.namesFile) return;
    try {
      writePolicyNames(this.namesFile, names);
    } catch (e) {
      this.log.error({ file: this.namesFile, err: messageOf(e) }, 'writing the policy names file failed (`patu policy` shows ids only)');
    }
  }
}

/** Compiled contents compared entry by entry (the compiler's output is sorted). */
function sameContents(a: PolicyMapContents, b: PolicyMapContents): boolean {
  if (a.endpoints.length !== b.endpoints.length || a.peers.length !== b.peers.length || a.rules.length !== b.rules.length) return false;
  for (let i = 0; i < a.endpoints.length; i++) {
    const x = a.endpoints[i]!;
    const y = b.endpoints[i]!;
    if (x.ip !== y.ip || x.epId !== y.epId || x.ifindex !== y.ifindex || x.isolatedIngress !== y.isolatedIngress || x.isolatedEgress !== y.isolatedEgress) return false;
  }
  for (let i = 0; i < a.peers.length; i++) {
    if (a.peers[i]!.cidr !== b.peers[i]!.cidr || a.peers[i]!.peerClass !== b.peers[i]!.peerClass) return false;
  }
  for (let i = 0; i < a.rules.length; i++) {
    const x = a.rules[i]!;
    const y = b.rules[i]!;
    if (x.epId !== y.epId || x.peerClass !== y.peerClass || x.dir !== y.dir || x.proto !== y.proto || x.portFrom !== y.portFrom || x.portTo !== y.portTo || x.policyId !== y.policyId) return false;
  }
  return true;
}
