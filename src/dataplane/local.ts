// LocalDataplane: the data-plane API (src/dataplane/api.ts) on patu's own eBPF and netlink
// code, as `patu manager` serves it. Every request is checked against the manager's
// limits first (limits.ts: the threat model), and a refused one writes nothing.
//
// What it is built on (opened by the manager: src/manager/manager.ts, src/agent/node.ts):
//   - the node's one ServiceLb (the API is its main source; hostPorts keep their partition),
//   - the CNI server's run() (the same lanes and workers the launcher's socket uses),
//   - Accel and the pinned pod registry, the policy engine (opened on first use, or at
//     start when an earlier run pinned it), the node's addresses.
// Nothing here is torn down when a client goes: the last applied state stays programmed.
//
// Services, session + generation (the proto's rules): a full resync is always applied; a
// delta is applied only when it continues the last applied generation of the same session;
// a repeat of the last applied generation returns the last answer with repeatedGeneration
// and writes nothing; anything else is DataplaneError('resync'). ServiceLb is synchronous
// and refuses a change that does not fit before writing (ServiceCapacityError -> 'capacity'),
// so a deadline never interrupts an apply and nothing is half-programmed. A kernel failure
// mid-write ('internal') forgets the session's generation: the next delta gets 'resync'.
//
// A service whose addresses break the limits (limits.ts: VIP, NodePort range, backends) is
// left out whole and reported in `refused`; the rest of the change is applied.
//
// Two services claiming one entry (vip:port/proto): the one programmed keeps it, the other
// is left out whole (never half), reported in `conflicts`, and programmed once the entry is
// free (the agent's ServiceModel settles this before sending; this is the manager's guard).
import type { Accel } from './accel.js';
import { openPodRegistry, type PodRegistry } from './accel-registry.js';
import { ServiceCapacityError, type ApplyStats, type ServiceLb } from './service-lb.js';
import { describeUdpDestroy } from './udp-destroy-report.js';
import type { Limits } from './limits.js';
import {
  DataplaneError,
  type AccelerationState,
  type CniCall,
  type CniReply,
  type Dataplane,
  type DataplaneHealth,
  type DataplaneStatus,
  type NodeSettings,
  type PodFlagsApplied,
  type PodFlagsUpdate,
  type PolicyApplied,
  type PolicyChange,
  type ServiceChange,
  type ServiceConflict,
  type ServicesApplied,
} from './api.js';
import { buildConflist, writeConflistIfChanged } from '../cni/conflist.js';
import { isHostPortRef } from '../hostport/desired.js';
import type { DesiredServicePort } from '../services/model.js';
import type { PolicyApplyResult } from '../policy/engine.js';
import type { PolicyState } from '../policy/types.js';
import { messageOf } from '../errors.js';

export interface LocalLog {
  debug(fields: object, msg: string): void;
  info(fields: object, msg: string): void;
  warn(fields: object, msg: string): void;
  error(fields: object, msg: string): void;
}

/** What the CNI server gives (src/agent/cni-server.ts CniServer.run). */
export interface CniRunner {
  run(req: { env: Record<string, string>; stdin: Buffer }): Promise<{ exitCode: number; stdout: string }>;
}

/** The policy engine as LocalDataplane uses it (src/agent/policy-engine.ts openPolicyEngine gives it). */
export interface PolicyEngineHandle {
  engine: {
    setState(state: PolicyState, opts?: { rememberCniAddresses?: boolean }): PolicyApplyResult;
    names(): { endpoints: Record<string, unknown> };
    lastError: string | undefined;
  };
}

export interface LocalDataplaneOptions {
  log: LocalLog;
  limits: Limits;
  pinRoot: string;
  lb: ServiceLb;
  /** The manager's service CIDR the maps were configured with ('' = none): what serviceCidrOff=false restores. */
  serviceCidr: string;
  /** The CNI server (undefined until it listens: cni() answers 'unavailable'). */
  cni: () => CniRunner | undefined;
  /** Opened on demand (setAcceleration); Accel.open is cheap. */
  accel: () => Accel;
  /** The policy engine: opened by the first applyPolicy unless already open. */
  policy: () => PolicyEngineHandle;
  /** Whether the policy engine is open (status, health, the CNI hook). */
  policyOpen: () => boolean;
  /** Policy off: closes the engine, detaches the policy programs from every link and unpins them; how many were detached. */
  policyOff: () => number;
  /** The node's addresses now (the manager's NodeAddressTracker). */
  nodeAddresses: () => string[];
  /** Where the CNI conflist goes on a podCidr ('' = not written) and what it tells the plugin. */
  conflist: { dir: string; clusterCidr: string; bridge?: string; dataDir?: string; masquerade?: boolean };
  version: string;
  /** After each services apply (the manager's metrics): what ServiceLb did, and the entries programmed now. */
  onServicesApplied?: (stats: ApplyStats, full: boolean, programmed: number) => void;
}

interface Session {
  session: string;
  generation: bigint;
  /** The last answer (a repeat returns it); undefined after a failure: the next delta must resync. */
  last?: ServicesApplied;
}

const round = (ms: number): number => Math.round(ms * 1000) / 1000;

export class LocalDataplane implements Dataplane {
  private readonly started = performance.now();
  private services: Session | undefined;
  private policySession: { session: string; generation: bigint; last: PolicyApplied } | undefined;
  /** Services a client wants that conflict with programmed ones: ref -> its ports. */
  private readonly leftOut = new Map<string, DesiredServicePort[]>();
  private node: NodeSettings = {};
  /** The last policy state as sent (node addresses filled in when it had none). */
  private policyState: PolicyState | undefined;
  /** Whether that state takes the addresses an earlier run learned from CNI ADD (PolicyChange.rememberCniAddresses). */
  private policyRemember = false;
  private registry: PodRegistry | undefined;
  private lastError: { what: string; message: string } | undefined;
  private closed = false;

  constructor(private readonly o: LocalDataplaneOptions) {}

  // ---------------------------------------------------------------- CNI

  async cni(call: CniCall): Promise<CniReply> {
    this.open();
    const netns = this.o.limits.checkCniCall(call);
    const server = this.o.cni();
    if (!server) throw new DataplaneError('unavailable', 'the manager is not serving CNI yet');
    const env: Record<string, string> = {
      CNI_COMMAND: call.command,
      CNI_CONTAINERID: call.containerId,
      CNI_IFNAME: call.ifname,
      CNI_ARGS: call.args,
      CNI_PATH: call.path,
    };
    if (netns) env.CNI_NETNS = netns;
    if (call.command === 'STATUS') {
      delete env.CNI_CONTAINERID;
      delete env.CNI_IFNAME;
    }
    let out;
    try {
      out = await server.run({ env, stdin: Buffer.from(call.config) });
    } catch (e) {
      throw new DataplaneError('unavailable', `CNI ${call.command}: ${messageOf(e)}`, { cause: e });
    }
    if (out.exitCode === 0) return { exitCode: 0, stdout: out.stdout };
    // The plugin exits 1 with the CNI error code in its JSON: the API carries the code.
    let code = 999;
    try {
      const c = (JSON.parse(out.stdout) as { code?: unknown }).code;
      if (typeof c === 'number' && Number.isInteger(c) && c > 0) code = c;
    } catch {
      /* not JSON: 999, the spec's "unknown" */
    }
    return { exitCode: code, stdout: out.stdout };
  }

  // ---------------------------------------------------------------- services

  async applyServices(change: ServiceChange): Promise<ServicesApplied> {
    this.open();
    // Malformed or oversized: thrown (nothing applied). Services whose addresses break the limits: left out alone.
    const refused = this.o.limits.checkServiceChange(change);
    const cur = this.services;
    if (!change.full) {
      if (!cur || cur.session !== change.session) {
        throw new DataplaneError('resync', `services delta of session ${change.session} but the last applied session is ${cur?.session ?? '(none)'}: send a full resync`);
      }
      if (change.generation === cur.generation && cur.last) return { ...cur.last, repeatedGeneration: true };
      if (change.generation !== cur.generation + 1n || !cur.last) {
        throw new DataplaneError('resync', `services delta generation ${change.generation} does not continue generation ${cur.generation}${cur.last ? '' : ' (its apply failed)'}: send a full resync`);
      }
    }
    const t0 = performance.now();
    const plan = this.plan(change, new Set(refused.map((r) => r.ref)));
    const lb = this.o.lb;
    let stats: ApplyStats;
    try {
      stats = change.full ? lb.resync(plan.desired) : lb.applyChanges(plan.refs, plan.desired);
    } catch (e) {
      if (e instanceof ServiceCapacityError) {
        // Refused before the first write: the maps and the session are as they were.
        throw new DataplaneError('capacity', e.message, { cause: e });
      }
      // The kernel refused a write half way (ServiceLb repaired and re-read the maps): the
      // client cannot know what is programmed, so its next delta gets 'resync'.
      if (this.services) this.services.last = undefined;
      this.fail('services', e);
      throw new DataplaneError('internal', `services apply: ${messageOf(e)}`, { cause: e });
    }
    for (const r of plan.accepted) this.leftOut.delete(r);
    if (change.full) this.leftOut.clear();
    for (const r of refused) this.leftOut.delete(r.ref);
    for (const [r, ports] of plan.leftOut) this.leftOut.set(r, ports);
    if (this.lastError?.what === 'services') this.lastError = undefined;
    const answer: ServicesApplied = {
      generation: change.generation,
      mapOps: stats.ops,
      services: lb.programmedState.services.size,
      applyMs: round(performance.now() - t0),
      repeatedGeneration: false,
      conflicts: plan.conflicts,
      ...(refused.length ? { refused } : {}),
    };
    this.services = { session: change.session, generation: change.generation, last: answer };
    if (stats.attachedNow) this.o.log.info({ cgroup: lb.cgroupPath }, 'service programs attached');
    const d = stats.udpDestroy && describeUdpDestroy(stats.udpDestroy);
    if (d) this.o.log[d.level](d.fields, d.msg);
    for (const c of plan.conflicts) this.o.log.warn({ service: c.wanted, entry: c.key, heldBy: c.heldBy }, `service not programmed: ${c.key} is already used by ${c.heldBy}`);
    for (const r of refused) this.o.log.warn({ service: r.ref, entry: r.key, reason: r.reason }, 'service not programmed: outside the manager\'s limits');
    this.o.onServicesApplied?.(stats, change.full, answer.services);
    return answer;
  }

  /**
   * Which refs are programmed: a ref whose entries another programmed (or earlier
   * accepted) ref holds is left out whole. Full: every ref competes, those programmed now
   * first (a holder keeps its entry). Delta: the changed refs, then the left-out ones (an
   * entry may have been freed), against the programmed refs that do not change.
   */
  private plan(change: ServiceChange, refused: ReadonlySet<string>): { desired: Map<string, DesiredServicePort>; refs: Set<string>; accepted: string[]; leftOut: Map<string, DesiredServicePort[]>; conflicts: ServiceConflict[] } {
    const state = this.o.lb.programmedState;
    const byRef = new Map<string, DesiredServicePort[]>();
    for (const p of change.ports) {
      if (refused.has(p.ref)) continue; // left out whole: a delta removes what it had
      const l = byRef.get(p.ref);
      if (l) l.push(p);
      else byRef.set(p.ref, [p]);
    }
    const refs = new Set<string>(change.full ? [] : change.refs);
    let candidates: [string, DesiredServicePort[]][];
    if (change.full) {
      const programmed = [...byRef].filter(([r]) => state.byRef.has(r));
      const rest = [...byRef].filter(([r]) => !state.byRef.has(r));
      candidates = [...programmed, ...rest];
    } else {
      candidates = [...refs].map((r) => [r, byRef.get(r) ?? []] as [string, DesiredServicePort[]]);
      for (const [r, ports] of this.leftOut) if (!refs.has(r)) candidates.push([r, ports]);
    }
    const claims = new Map<string, string>();
    const holder = (key: string): string | undefined => {
      const c = claims.get(key);
      if (c) return c;
      if (change.full) return undefined; // everything is re-decided
      const h = state.services.get(key)?.ref;
      // Services win over hostPorts (their partition reports it); the changed refs let go of theirs.
      return h === undefined || isHostPortRef(h) || refs.has(h) ? undefined : h;
    };
    const desired = new Map<string, DesiredServicePort>();
    const accepted: string[] = [];
    const leftOut = new Map<string, DesiredServicePort[]>();
    const conflicts: ServiceConflict[] = [];
    for (const [ref, ports] of candidates) {
      if (ports.length === 0) {
        accepted.push(ref); // removed
        continue;
      }
      const taken = ports.find((p) => holder(p.key) !== undefined);
      if (taken) {
        leftOut.set(ref, ports);
        conflicts.push({ key: taken.key, wanted: ref, heldBy: holder(taken.key)! });
        // A left-out ref that is programmed now must lose its entries (never half: all of them).
        if (!change.full && state.byRef.has(ref)) refs.add(ref);
        continue;
      }
      for (const p of ports) {
        claims.set(p.key, ref);
        desired.set(p.key, p);
      }
      accepted.push(ref);
      refs.add(ref);
    }
    return { desired, refs, accepted, leftOut, conflicts };
  }

  // ---------------------------------------------------------------- acceleration, pods

  async setAcceleration(enabled: boolean): Promise<AccelerationState> {
    this.open();
    if (typeof enabled !== 'boolean') throw new DataplaneError('invalid', 'enabled must be a boolean');
    const accel = this.o.accel();
    try {
      if (enabled) accel.enable();
      else accel.disable();
    } catch (e) {
      this.fail('acceleration', e);
      throw new DataplaneError('internal', `acceleration ${enabled ? 'on' : 'off'}: ${messageOf(e)}`, { cause: e });
    }
    const st = accel.status();
    this.o.log.info({ enabled: st.enabled, pods: st.pods.length, sockets: st.sockets }, enabled ? 'socket acceleration on' : 'socket acceleration off');
    return { enabled: st.enabled, pods: st.pods.length, sockets: st.sockets };
  }

  async setPodFlags(pods: PodFlagsUpdate[]): Promise<PodFlagsApplied> {
    this.open();
    this.o.limits.checkPodFlags(pods);
    // The registry exists once acceleration was switched on (CNI ADD fills it).
    const reg = (this.registry ??= openPodRegistry(this.o.pinRoot));
    if (!reg) return { updated: 0, unknown: pods.length };
    let updated = 0;
    let unknown = 0;
    try {
      for (const p of pods) {
        const cur = reg.lookup(p.ip);
        if (!cur) {
          unknown++; // no CNI record: the flag is set when the pod's ADD registers it (CNI_ARGS) or on the next push
          continue;
        }
        if (cur.optOut === p.accelOptOut) continue;
        // Keep what CNI ADD recorded (ifindex, netns cookie); only the flag changes.
        reg.register(p.ip, p.accelOptOut, { ifindex: cur.ifindex, netnsCookie: cur.netnsCookie });
        updated++;
      }
    } catch (e) {
      this.fail('pod flags', e);
      throw new DataplaneError('internal', `pod flags: ${messageOf(e)}`, { cause: e });
    }
    if (updated) this.o.log.info({ updated, unknown }, 'pod acceleration flags written');
    return { updated, unknown };
  }

  // ---------------------------------------------------------------- node

  async setNodeSettings(s: NodeSettings): Promise<{ conflistWritten: boolean }> {
    this.open();
    this.o.limits.checkNodeSettings(s);
    const next: NodeSettings = { ...this.node };
    for (const k of ['podCidr', 'clusterCidr', 'serviceCidr'] as const) if (s[k]) next[k] = s[k];
    if (s.serviceCidrOff !== undefined) next.serviceCidrOff = s.serviceCidrOff;
    try {
      const wantCidr = next.serviceCidrOff ? '' : next.serviceCidr ?? this.o.serviceCidr;
      if ((this.o.lb.config().serviceCidr ?? '') !== wantCidr) {
        this.o.lb.configure({ serviceCidr: wantCidr });
        this.o.log.info({ serviceCidr: wantCidr || 'none' }, wantCidr ? 'service CIDR: unanswered addresses in it are refused' : 'service CIDR check off');
      }
    } catch (e) {
      this.fail('node settings', e);
      throw new DataplaneError('internal', `serviceCidr: ${messageOf(e)}`, { cause: e });
    }
    let conflistWritten = false;
    const c = this.o.conflist;
    if (c.dir && next.podCidr && (s.podCidr || s.clusterCidr)) {
      const conflist = buildConflist({
        podCIDR: next.podCidr,
        clusterCIDR: next.clusterCidr || c.clusterCidr,
        pinRoot: this.o.pinRoot,
        ...(c.bridge ? { bridge: c.bridge } : {}),
        ...(c.dataDir ? { dataDir: c.dataDir } : {}),
        ...(c.masquerade !== undefined ? { masquerade: c.masquerade } : {}),
      });
      try {
        conflistWritten = writeConflistIfChanged(c.dir, conflist);
      } catch (e) {
        this.fail('node settings', e);
        throw new DataplaneError('internal', messageOf(e), { cause: e });
      }
      this.o.log.info({ dir: c.dir, podCIDR: next.podCidr, changed: conflistWritten }, conflistWritten ? 'CNI conflist written' : 'CNI conflist up to date');
    }
    this.node = next;
    return { conflistWritten };
  }

  // ---------------------------------------------------------------- policy

  async applyPolicy(change: PolicyChange): Promise<PolicyApplied> {
    this.open();
    this.o.limits.checkPolicyState(change.state, change.session);
    if (typeof change.generation !== 'bigint' || change.generation < 0n) throw new DataplaneError('invalid', `generation ${String(change.generation)} must be a non-negative integer`);
    const cur = this.policySession;
    // Every call is a whole state: only a repeat of the last is special (nothing written).
    if (cur && cur.session === change.session && cur.generation === change.generation) return { ...cur.last, repeatedGeneration: true };
    if (change.enforcementOff) return this.policyOff(change);
    let pe: PolicyEngineHandle;
    try {
      pe = this.o.policy();
    } catch (e) {
      this.fail('policy', e);
      throw new DataplaneError('internal', `opening the policy programs: ${messageOf(e)}`, { cause: e });
    }
    const given = change.state;
    const state = given.nodeAddresses.length ? given : { ...given, nodeAddresses: this.policyNodeAddresses() };
    let r: PolicyApplyResult;
    try {
      // Learned addresses are the policy file's (pods without status.podIP); never Kubernetes' (an old one may be another pod's now).
      r = pe.engine.setState(state, { rememberCniAddresses: change.rememberCniAddresses === true });
    } catch (e) {
      this.policySession = undefined;
      this.fail('policy', e);
      throw new DataplaneError('internal', `policy apply: ${messageOf(e)}`, { cause: e });
    }
    this.policyState = given;
    this.policyRemember = change.rememberCniAddresses === true;
    const answer: PolicyApplied = {
      generation: change.generation,
      mapChanges: r.changed,
      flowsCutOff: r.flushed,
      socketsEvicted: r.evicted,
      applyMs: round(r.ms),
      fallback: r.fallback,
      problems: r.problems.map((p) => p.message),
      repeatedGeneration: false,
    };
    this.policySession = { session: change.session, generation: change.generation, last: answer };
    if (r.changed || r.flushed || r.evicted) this.o.log.info({ mapChanges: r.changed, flowsCutOff: r.flushed, socketsEvicted: r.evicted, ms: answer.applyMs }, 'network policy programmed');
    if (r.fallback) this.o.log.error({ problems: answer.problems.slice(0, 10) }, 'network policy could not be programmed whole: isolated pods deny everything (fallback)');
    return answer;
  }

  /** Policy off (the agent's --network-policy=off): nothing enforces a state nobody updates any more. */
  private policyOff(change: PolicyChange): PolicyApplied {
    const t0 = performance.now();
    let detached: number;
    try {
      detached = this.o.policyOff();
    } catch (e) {
      this.policySession = undefined;
      this.fail('policy', e);
      throw new DataplaneError('internal', `policy off: detaching the policy programs: ${messageOf(e)}`, { cause: e });
    }
    this.policyState = undefined;
    this.policyRemember = false;
    const answer: PolicyApplied = {
      generation: change.generation, mapChanges: 0, flowsCutOff: 0, socketsEvicted: 0, applyMs: round(performance.now() - t0),
      fallback: false, problems: [], repeatedGeneration: false,
    };
    this.policySession = { session: change.session, generation: change.generation, last: answer };
    this.o.log.info({ detached }, 'network policy off (the agent\'s --network-policy=off): policy programs detached and unpinned');
    return answer;
  }

  /** The node's addresses for policy (always allowed): the tracker's, loopback left out. */
  private policyNodeAddresses(): string[] {
    return this.o.nodeAddresses().filter((a) => !a.startsWith('127.'));
  }

  /** The node's addresses changed: a policy state that carried none is applied again with the new ones. */
  nodeAddressesChanged(): void {
    const st = this.policyState;
    if (this.closed || !st || st.nodeAddresses.length || !this.o.policyOpen()) return;
    try {
      const r = this.o.policy().engine.setState({ ...st, nodeAddresses: this.policyNodeAddresses() }, { rememberCniAddresses: this.policyRemember });
      this.o.log.info({ mapChanges: r.changed, ms: round(r.ms) }, 'network policy: node addresses changed (always allowed to and from pods)');
    } catch (e) {
      this.fail('policy', e);
    }
  }

  // ---------------------------------------------------------------- health, status

  async health(): Promise<DataplaneHealth> {
    const problems: string[] = [];
    if (this.closed) problems.push('the manager is stopping');
    if (!this.o.cni()) problems.push('not serving CNI');
    if (this.lastError) problems.push(`${this.lastError.what}: ${this.lastError.message}`);
    if (this.o.policyOpen()) {
      const err = this.o.policy().engine.lastError;
      if (err) problems.push(`policy: ${err}`);
    }
    return { ok: problems.length === 0, problems };
  }

  async status(): Promise<DataplaneStatus> {
    let acceleration = false;
    let acceleratedPods = 0;
    try {
      const st = this.o.accel().status();
      acceleration = st.enabled;
      acceleratedPods = st.pods.filter((p) => !p.optOut).length;
    } catch (e) {
      this.fail('acceleration status', e);
    }
    const policyEndpoints = this.o.policyOpen() ? Object.keys(this.o.policy().engine.names().endpoints).length : 0;
    return {
      version: this.o.version,
      backend: 'ebpf',
      servicesSession: this.services?.session ?? '',
      servicesGeneration: this.services?.generation ?? 0n,
      services: this.o.lb.programmedState.services.size,
      policySession: this.policySession?.session ?? '',
      policyGeneration: this.policySession?.generation ?? 0n,
      policyEndpoints,
      acceleration,
      acceleratedPods,
      node: { ...this.node },
      nodeAddresses: this.o.nodeAddresses(),
      uptimeSeconds: (performance.now() - this.started) / 1000,
    };
  }

  /** Stops answering; the programs, maps and pins stay (the manager closes the parts). */
  async close(): Promise<void> {
    this.closed = true;
    this.registry?.close();
    this.registry = undefined;
  }

  private open(): void {
    if (this.closed) throw new DataplaneError('unavailable', 'the manager is stopping');
  }

  private fail(what: string, e: unknown): void {
    this.lastError = { what, message: messageOf(e) };
    this.o.log.error({ err: messageOf(e) }, `${what} failed`);
  }
}
