// The agent's side of the split (`patu agent --manager`): the desired data-plane state,
// kept here and pushed through a Dataplane (src/dataplane/api.ts: the gRPC client in
// production, any implementation in tests).
//
// The sources (Kubernetes, services file, policy file) were written against synchronous
// sinks that program the kernel in-process (ServiceLb, PolicyEngine, the pod registry).
// The mirror gives them the same sinks: a call records the desired state and returns at
// once; one pump pushes what changed, one call at a time, so changes that arrive while a
// call is in flight coalesce into the next one.
//
// Nothing is lost when the manager restarts or the connection drops:
//   - services and policy carry this mirror's session (random per agent start) and a
//     generation that only grows; a delta the manager cannot place answers 'resync' and
//     the mirror sends everything;
//   - after any failed call (transport down, deadline, anything) the next push of every
//     kind is a full one: the mirror cannot know what the manager applied or still holds;
//   - a heartbeat (Status) notices a manager that restarted while the agent had nothing
//     to push (its session or generation is not ours any more) and re-sends everything;
//   - transient failures are retried with exponential backoff (capped, jittered), for
//     ever: the agent's readiness says meanwhile that the data plane is not in step.
import { randomUUID } from 'node:crypto';
import { DEFAULTS } from '../defaults.js';
import { messageOf } from '../errors.js';
import type { ApplyStats, ServiceSinkLike } from '../dataplane/service-lb.js';
import type { DesiredServicePort } from '../services/model.js';
import type { PolicyState } from '../policy/types.js';
import {
  DataplaneError,
  type Dataplane, type DataplaneStatus, type NodeSettings, type PolicyApplied, type RefusedService, type ServicesApplied,
} from '../dataplane/api.js';

export interface MirrorLog {
  debug(o: object, msg: string): void;
  info(o: object, msg: string): void;
  warn(o: object, msg: string): void;
  error(o: object, msg: string): void;
}

export interface DataplaneMirrorOptions {
  dataplane: Dataplane;
  log?: MirrorLog;
  /** The services/policy session (default: a random UUID). */
  session?: string;
  /** Deadline of every call (default: none set here, so the Dataplane's own applies: the gRPC client's DEFAULTS.managerCallTimeoutMs). */
  callTimeoutMs?: number;
  /** First retry delay after a failure, doubled per failure up to maxBackoffMs (defaults DEFAULTS.mirrorBackoff*). */
  backoffMs?: number;
  maxBackoffMs?: number;
  /** Status poll while idle, to notice a restarted manager (default DEFAULTS.mirrorHeartbeatMs; 0: none). */
  heartbeatMs?: number;
  /** [0, 1) for the jitter (tests). */
  random?: () => number;
  /** After every answered services push (metrics). */
  onServicesApplied?: (r: ServicesApplied, full: boolean) => void;
  /** A service the manager refused (outside its limits), once per change of its refusal (metrics). */
  onServiceRefused?: (r: RefusedService) => void;
  /** After every answered policy push (metrics). */
  onPolicyApplied?: (r: PolicyApplied) => void;
  /** After every failed call. */
  onCallFailed?: (kind: PushKind, err: unknown) => void;
}

/** What the mirror pushes, in this order within a round (node settings before services: the service CIDR). */
export const PUSH_KINDS = ['node', 'acceleration', 'services', 'podFlags', 'policy'] as const;
export type PushKind = (typeof PUSH_KINDS)[number];

/** The pod opt-out side of K8sSource (src/k8s/source.ts PodFlagSink). */
export interface PodFlagsSink {
  /** Records the flag; whether that changed what the mirror holds. */
  setOptOut(ip: string, optOut: boolean): boolean;
  /** The pod is gone: its flag is not re-sent (its address may be given to another pod). */
  forget(ip: string): void;
}

const TRANSIENT = new Set(['unavailable', 'deadline']);

/** Two services' ports, in any order, are the same entries with the same backends. */
function samePorts(a: readonly DesiredServicePort[], b: readonly DesiredServicePort[]): boolean {
  if (a.length !== b.length) return false;
  const key = (l: readonly DesiredServicePort[]) => l.map((p) => JSON.stringify(p)).sort().join('\n');
  return key(a) === key(b);
}

const codeOf = (e: unknown): string | undefined => (e instanceof DataplaneError ? e.code : undefined);

export class DataplaneMirror {
  readonly session: string;
  private readonly opts: DataplaneMirrorOptions;
  private readonly dp: Dataplane;
  private readonly log: MirrorLog | undefined;
  /** Per-call options: a deadline only when one was given (else the client's default). */
  private readonly callOpts: { timeoutMs?: number };
  private readonly backoffMs: number;
  private readonly maxBackoffMs: number;
  private readonly random: () => number;

  // ---- desired state
  private readonly servicesByRef = new Map<string, DesiredServicePort[]>();
  private servicesHeld = false;
  private readonly dirtyRefs = new Set<string>();
  private node: NodeSettings = {};
  private accel: boolean | undefined;
  private readonly podFlags = new Map<string, boolean>();
  private readonly dirtyPods = new Set<string>();
  private policyState: PolicyState | undefined;
  /** Policy is off (--network-policy=off): the manager is told to stop enforcing, instead of a state. */
  private policyOffWanted = false;
  /** The policy source's pods may take addresses CNI ADD gave them in an earlier run (the policy file's: PolicyChange.rememberCniAddresses). */
  private policyRemember = false;

  // ---- what the pump owes the manager
  private readonly pending = new Set<PushKind>();
  private readonly full = new Set<PushKind>(PUSH_KINDS);
  private servicesGen = 0n;
  private policyGen = 0n;
  /** What the manager last acknowledged (for the heartbeat's comparison). */
  private ackedServicesGen: bigint | undefined;
  private ackedPolicyGen: bigint | undefined;
  private lastUptime = -1;
  private ackedNode = false;
  private ackedAccel = false;
  private nodeMismatchResent: string | undefined;

  // ---- pump
  private running = false;
  private closed = false;
  private failures = 0;
  private retryTimer: NodeJS.Timeout | undefined;
  private heartbeat: NodeJS.Timeout | undefined;
  private heartbeatBusy = false;
  private pushSeq = 0;
  private disconnected: string | undefined;
  private pushedOnce = false;
  private inStepLogged = false;
  /** Any call answered (a push, or the heartbeat's Status). */
  private answered = false;
  private idleWaiters: (() => void)[] = [];
  /** Conflicts last logged (key -> wanted), so a lasting one is logged once. */
  private conflictsLogged = new Map<string, string>();
  /** Services the manager refused, as last logged (ref -> key + reason): logged once per change, not per push. */
  private refusedLogged = new Map<string, string>();

  readonly services: ServiceSinkLike;
  readonly policy: { setState(state: PolicyState, opts?: { rememberCniAddresses?: boolean }): void };
  readonly pods: PodFlagsSink;

  constructor(opts: DataplaneMirrorOptions) {
    this.dp = opts.dataplane;
    this.log = opts.log;
    this.session = opts.session ?? randomUUID();
    this.callOpts = opts.callTimeoutMs !== undefined ? { timeoutMs: opts.callTimeoutMs } : {};
    this.backoffMs = opts.backoffMs ?? DEFAULTS.mirrorBackoffMs;
    this.maxBackoffMs = Math.max(this.backoffMs, opts.maxBackoffMs ?? DEFAULTS.mirrorMaxBackoffMs);
    this.random = opts.random ?? Math.random;
    this.opts = opts;
    this.services = {
      resync: (desired) => this.setServices(undefined, desired),
      applyChanges: (refs, desired) => this.setServices(refs, desired),
    };
    this.policy = { setState: (s, o) => this.setPolicy(s, o?.rememberCniAddresses === true) };
    this.pods = {
      setOptOut: (ip, optOut) => this.setPodOptOut(ip, optOut),
      forget: (ip) => {
        this.podFlags.delete(ip);
        this.dirtyPods.delete(ip);
      },
    };
    const hb = opts.heartbeatMs ?? DEFAULTS.mirrorHeartbeatMs;
    if (hb > 0) {
      this.heartbeat = setInterval(() => void this.beat(), hb);
      this.heartbeat.unref();
    }
  }

  // ---- the sinks

  private setServices(refs: ReadonlySet<string> | undefined, desired: ReadonlyMap<string, DesiredServicePort>): ApplyStats {
    const t0 = performance.now();
    if (refs === undefined) {
      // A resync from the source (the services file reloads whole on every edit): only the services
      // that differ from what the mirror holds are sent, as a delta. The manager's state is known
      // exactly through the session's generations; after anything that makes it unknown, the push is full anyway.
      const next = new Map<string, DesiredServicePort[]>();
      for (const d of desired.values()) {
        let l = next.get(d.ref);
        if (!l) next.set(d.ref, (l = []));
        l.push(d);
      }
      for (const ref of new Set([...this.servicesByRef.keys(), ...next.keys()])) {
        const a = this.servicesByRef.get(ref);
        const b = next.get(ref);
        if (!a || !b || !samePorts(a, b)) this.dirtyRefs.add(ref);
      }
      this.servicesByRef.clear();
      for (const [ref, l] of next) this.servicesByRef.set(ref, l);
    } else {
      for (const ref of refs) {
        this.servicesByRef.delete(ref);
        this.dirtyRefs.add(ref);
      }
      for (const d of desired.values()) {
        // A delta's `desired` holds only the changed services' ports; anything else in it is ignored, as ServiceLb does.
        if (!refs.has(d.ref)) continue;
        let l = this.servicesByRef.get(d.ref);
        if (!l) this.servicesByRef.set(d.ref, (l = []));
        l.push(d);
      }
    }
    const first = !this.servicesHeld;
    this.servicesHeld = true;
    if (first || this.dirtyRefs.size > 0) this.kick('services');
    // Nothing is written here: the manager's answer (logged, onServicesApplied) has the map operations.
    return { ops: 0, services: this.servicesByRef.size, syscallBatches: 0, ms: performance.now() - t0, attachedNow: false };
  }

  private setPolicy(state: PolicyState, remember: boolean): void {
    this.policyState = state;
    this.policyRemember = remember;
    this.policyOffWanted = false;
    this.kick('policy');
  }

  private setPodOptOut(ip: string, optOut: boolean): boolean {
    const cur = this.podFlags.get(ip);
    if (cur === optOut) return false;
    this.podFlags.set(ip, optOut);
    this.dirtyPods.add(ip);
    this.kick('podFlags');
    return true;
  }

  /**
   * Policy off on this node: the manager detaches and unpins its policy programs (as the default agent
   * does at start), so a state from an earlier run is not enforced with nothing updating it. Re-sent
   * like a state (a restarted manager, a failure); a later setState turns it back into a state.
   */
  setPolicyOff(): void {
    this.policyState = undefined;
    this.policyOffWanted = true;
    this.kick('policy');
  }

  /** Node settings: merged into what the mirror holds (an absent field keeps its value). */
  setNodeSettings(s: NodeSettings): void {
    const next: NodeSettings = { ...this.node };
    for (const [k, v] of Object.entries(s) as [keyof NodeSettings, NodeSettings[keyof NodeSettings]][]) {
      if (v !== undefined) (next as Record<string, unknown>)[k] = v;
    }
    if (JSON.stringify(next) === JSON.stringify(this.node)) return;
    this.node = next;
    this.kick('node');
  }

  /** The node-wide acceleration switch (--accel). */
  setAcceleration(enabled: boolean): void {
    if (this.accel === enabled) return;
    this.accel = enabled;
    this.kick('acceleration');
  }

  // ---- state for tests, /readyz and status

  /** The desired services as one map (key -> port), as a full push sends them. */
  desiredServices(): Map<string, DesiredServicePort> {
    const m = new Map<string, DesiredServicePort>();
    for (const l of this.servicesByRef.values()) for (const d of l) m.set(d.key, d);
    return m;
  }

  desiredPodFlags(): Map<string, boolean> {
    return new Map(this.podFlags);
  }

  get nodeSettings(): NodeSettings {
    return { ...this.node };
  }

  /** Undefined when everything asked for so far has reached the manager, else why not. */
  notReady(): string | undefined {
    if (this.disconnected !== undefined) return `data plane manager: ${this.disconnected}`;
    if (!this.pushedOnce && (this.pending.size > 0 || this.running)) return 'data plane manager: nothing pushed yet';
    if (!this.pushedOnce && !this.answered) return 'data plane manager: not reached yet';
    return undefined;
  }

  /** Whether the last call to the manager failed in transport (not answered). */
  get isDisconnected(): boolean {
    return this.disconnected !== undefined;
  }

  /** Resolves once nothing is pending or in flight (a failing manager: not before it answers again). */
  idle(): Promise<void> {
    if (!this.running && this.pending.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Stops pushing (a call in flight finishes); the manager keeps what it was given. */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.retryTimer);
    clearInterval(this.heartbeat);
    await this.idle();
  }

  // ---- the pump

  private kick(kind: PushKind): void {
    this.pending.add(kind);
    // While a retry waits, the change rides along with it.
    if (this.running || this.retryTimer || this.closed) return;
    this.running = true;
    // Next turn of the event loop: the changes of one event batch go in one call.
    setImmediate(() => void this.pump());
  }

  private async pump(): Promise<void> {
    try {
      while (!this.closed && this.pending.size > 0) {
        const kind = PUSH_KINDS.find((k) => this.pending.has(k))!;
        this.pending.delete(kind);
        try {
          await this.push(kind);
          this.failures = 0;
          if (this.disconnected !== undefined) this.log?.info({ session: this.session }, 'data plane manager reachable again; state re-sent');
          this.disconnected = undefined;
          this.pushedOnce = true;
          this.answered = true;
        } catch (e) {
          this.pending.add(kind);
          this.failed(kind, e);
          if (codeOf(e) === 'resync') continue; // at once, as a full push
          const delay = this.nextDelay();
          this.scheduleRetry(delay);
          this.log?.debug({ kind, retryInMs: delay }, 'data plane push retry scheduled');
          return;
        }
      }
    } finally {
      // A scheduled retry restarts the pump itself (kick() leaves it alone meanwhile).
      this.running = false;
      if (this.pushedOnce && !this.inStepLogged && this.pending.size === 0 && !this.retryTimer) {
        this.inStepLogged = true;
        this.log?.info({ session: this.session }, 'data plane manager in step (everything asked for so far is pushed)');
      }
      if (this.closed || (this.pending.size === 0 && !this.retryTimer)) {
        const w = this.idleWaiters;
        this.idleWaiters = [];
        for (const f of w) f();
      }
    }
  }

  private failed(kind: PushKind, e: unknown): void {
    const code = codeOf(e);
    this.opts.onCallFailed?.(kind, e);
    if (code === 'resync') {
      this.full.add(kind);
      this.log?.info({ kind, session: this.session }, 'data plane manager asked for a full resync (restarted, or another session pushed)');
      return;
    }
    // The call may or may not have been applied, and the manager may have restarted: everything goes again, whole.
    for (const k of PUSH_KINDS) {
      this.full.add(k);
      if (this.has(k)) this.pending.add(k);
    }
    this.failures++;
    if (code === undefined || TRANSIENT.has(code)) {
      const was = this.disconnected;
      this.disconnected = messageOf(e);
      // Before the first answer this is the usual start (the manager's container starts beside the agent's): not an error yet.
      if (was === undefined && !this.answered) this.log?.info({ kind, err: this.disconnected }, 'waiting for the data plane manager (unreachable); retrying with backoff');
      else if (was === undefined) this.log?.error({ kind, err: this.disconnected }, 'data plane manager unreachable; retrying with backoff (pinned state keeps forwarding)');
      else this.log?.debug({ kind, err: this.disconnected, failures: this.failures }, 'data plane manager still unreachable');
    } else {
      // Answered, but refused (invalid, capacity, internal): the manager kept its last state. Retried as a whole.
      this.log?.error({ kind, code, err: messageOf(e) }, 'data plane manager refused the change; its last state stays; retrying');
    }
  }

  private scheduleRetry(delay: number): void {
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      if (this.closed || this.running) return;
      this.running = true;
      void this.pump();
    }, delay);
  }

  private nextDelay(): number {
    const exp = Math.min(this.maxBackoffMs, this.backoffMs * 2 ** Math.min(this.failures - 1, 30));
    // Full jitter over the upper half: agents restarted together do not retry in step.
    return Math.round(exp / 2 + (exp / 2) * this.random());
  }

  /** Whether the mirror holds anything of this kind (nothing is pushed for a kind no source set). */
  private has(kind: PushKind): boolean {
    switch (kind) {
      case 'node': return Object.keys(this.node).length > 0;
      case 'acceleration': return this.accel !== undefined;
      case 'services': return this.servicesHeld;
      case 'podFlags': return this.podFlags.size > 0 || this.dirtyPods.size > 0;
      case 'policy': return this.policyState !== undefined || this.policyOffWanted;
    }
  }

  private async push(kind: PushKind): Promise<void> {
    this.pushSeq++;
    const opts = this.callOpts;
    const full = this.full.has(kind);
    switch (kind) {
      case 'node': {
        const sent = this.node;
        await this.dp.setNodeSettings(sent, opts);
        this.full.delete(kind);
        this.ackedNode = true;
        this.log?.info({ ...sent }, 'node settings pushed to the data plane manager');
        return;
      }
      case 'acceleration': {
        if (this.accel === undefined) return;
        const r = await this.dp.setAcceleration(this.accel, opts);
        this.full.delete(kind);
        this.ackedAccel = true;
        this.log?.info({ enabled: r.enabled, pods: r.pods, sockets: r.sockets }, r.enabled ? 'socket acceleration on (manager)' : 'socket acceleration off (manager)');
        return;
      }
      case 'services': return this.pushServices(full);
      case 'podFlags': {
        const ips = full ? [...this.podFlags.keys()] : [...this.dirtyPods];
        this.dirtyPods.clear();
        const pods = ips.flatMap((ip) => {
          const v = this.podFlags.get(ip);
          return v === undefined ? [] : [{ ip, accelOptOut: v }];
        });
        try {
          if (pods.length) {
            const r = await this.dp.setPodFlags(pods, opts);
            this.log?.info({ pods: pods.length, updated: r.updated, unknown: r.unknown }, 'pod acceleration flags pushed');
          }
        } catch (e) {
          for (const ip of ips) this.dirtyPods.add(ip);
          throw e;
        }
        this.full.delete(kind);
        // A flag turned back on was needed once (to undo the opt-out); kept, a re-send could touch the address's next pod.
        for (const p of pods) if (!p.accelOptOut && this.podFlags.get(p.ip) === false) this.podFlags.delete(p.ip);
        return;
      }
      case 'policy': {
        const off = this.policyOffWanted;
        const state = off ? { namespaces: [], pods: [], policies: [], nodeAddresses: [] } : this.policyState;
        if (!state) return;
        const generation = ++this.policyGen;
        const r = await this.dp.applyPolicy({ session: this.session, generation, state, ...(off ? { enforcementOff: true } : this.policyRemember ? { rememberCniAddresses: true } : {}) }, opts);
        this.full.delete(kind);
        this.ackedPolicyGen = r.generation;
        this.opts.onPolicyApplied?.(r);
        if (off) {
          this.log?.info({ generation: String(r.generation) }, 'network policy off: the data plane manager stopped enforcing (programs detached)');
          return;
        }
        if (r.mapChanges || r.flowsCutOff || r.socketsEvicted) {
          this.log?.info({ generation: String(r.generation), mapChanges: r.mapChanges, flowsCutOff: r.flowsCutOff, socketsEvicted: r.socketsEvicted, ms: r.applyMs }, 'network policy programmed (manager)');
        }
        if (r.fallback) this.log?.error({ generation: String(r.generation), problems: r.problems }, 'network policy could not be programmed: isolated pods deny everything (manager fallback)');
        else if (r.problems.length) this.log?.warn({ generation: String(r.generation), problems: r.problems }, 'network policy programmed with parts left out (manager)');
        return;
      }
    }
  }

  private async pushServices(full: boolean): Promise<void> {
    const refs = full ? [] : [...this.dirtyRefs];
    if (!full && refs.length === 0) return;
    const ports = full ? [...this.servicesByRef.values()].flat() : refs.flatMap((r) => this.servicesByRef.get(r) ?? []);
    const taken = new Set(this.dirtyRefs);
    this.dirtyRefs.clear();
    const generation = ++this.servicesGen;
    let r: ServicesApplied;
    try {
      r = await this.dp.applyServices({ session: this.session, generation, full, refs, ports }, this.callOpts);
    } catch (e) {
      for (const ref of taken) this.dirtyRefs.add(ref);
      throw e;
    }
    this.full.delete('services');
    this.ackedServicesGen = r.generation;
    this.opts.onServicesApplied?.(r, full);
    if (full || r.mapOps > 0) {
      this.log?.info({ kind: full ? 'resync' : 'delta', generation: String(r.generation), changed: full ? ports.length : refs.length, mapOps: r.mapOps, services: r.services, ms: r.applyMs, ...(r.repeatedGeneration ? { repeated: true } : {}) },
        'services programmed (manager)');
    }
    this.logConflicts(r);
    this.logRefused(r, full, refs);
  }

  /**
   * Services the manager left out because they break its limits: warned once each, again only when
   * the refusal changes (another entry or reason). A full answer is the whole list; a delta's speaks
   * for the refs it changed only, so the others keep their last state.
   */
  private logRefused(r: ServicesApplied, full: boolean, refs: readonly string[]): void {
    const now = full ? new Map<string, string>() : new Map(this.refusedLogged);
    if (!full) for (const ref of refs) now.delete(ref);
    for (const x of r.refused ?? []) {
      const sig = `${x.key}\n${x.reason}`;
      now.set(x.ref, sig);
      if (this.refusedLogged.get(x.ref) === sig) continue;
      this.log?.warn({ service: x.ref, entry: x.key, reason: x.reason }, 'service not programmed: the data plane manager refused it (outside its limits); the rest is applied');
      this.opts.onServiceRefused?.(x);
    }
    this.refusedLogged = now;
  }

  private logConflicts(r: ServicesApplied): void {
    const now = new Map<string, string>();
    for (const c of r.conflicts) {
      now.set(c.key, c.wanted);
      if (this.conflictsLogged.get(c.key) !== c.wanted) this.log?.error({ entry: c.key, service: c.wanted, heldBy: c.heldBy }, 'data plane manager left an entry out: another source holds it');
    }
    this.conflictsLogged = now;
  }

  /** The fields this mirror set that the manager reports otherwise (as a comparable string), or undefined. */
  private nodeDiffers(theirs: NodeSettings): string | undefined {
    const diff: string[] = [];
    for (const [k, v] of Object.entries(this.node) as [keyof NodeSettings, unknown][]) {
      const t = theirs[k];
      const same = typeof v === 'boolean' ? (t ?? false) === v : (t ?? '') === v;
      if (!same) diff.push(`${k}=${String(t)}`);
    }
    return diff.length ? diff.join(' ') : undefined;
  }

  /** Idle: asks the manager how it is; a restarted one (not our session/generation) gets everything again. */
  private async beat(): Promise<void> {
    if (this.closed || this.running || this.heartbeatBusy) return;
    this.heartbeatBusy = true;
    const seq = this.pushSeq;
    try {
      let st: DataplaneStatus;
      try {
        st = await this.dp.status(this.callOpts);
      } catch (e) {
        if (this.closed || this.running) return;
        this.failed('node', e);
        if (this.pending.size && !this.retryTimer) this.scheduleRetry(this.nextDelay());
        return;
      }
      // A push ran meanwhile: this answer may predate it.
      if (this.closed || this.running || seq !== this.pushSeq) return;
      this.answered = true;
      if (this.disconnected !== undefined && this.pending.size === 0) {
        this.log?.info({ session: this.session }, 'data plane manager reachable again');
        this.disconnected = undefined;
      }
      const restarted = st.uptimeSeconds < this.lastUptime;
      this.lastUptime = st.uptimeSeconds;
      const lostServices = this.servicesHeld && this.ackedServicesGen !== undefined && (st.servicesSession !== this.session || st.servicesGeneration !== this.ackedServicesGen);
      const lostPolicy = this.has('policy') && this.ackedPolicyGen !== undefined && (st.policySession !== this.session || st.policyGeneration !== this.ackedPolicyGen);
      // Acceleration and node settings carry no session: the manager's own view says whether they are ours.
      const lostAccel = this.accel !== undefined && this.ackedAccel && st.acceleration !== this.accel;
      const nodeDiff = this.ackedNode ? this.nodeDiffers(st.node) : undefined;
      // A value the manager reports differently from how it was sent (normalised): re-sent once, not every beat.
      const lostNode = nodeDiff !== undefined && nodeDiff !== this.nodeMismatchResent;
      if (restarted || lostServices || lostPolicy || lostAccel || lostNode) {
        if (lostNode) this.nodeMismatchResent = nodeDiff;
        this.log?.warn({ restarted, servicesSession: st.servicesSession, policySession: st.policySession, ...(lostAccel ? { acceleration: st.acceleration } : {}), ...(lostNode ? { node: st.node } : {}) },
          'data plane manager does not hold this agent\'s state (restarted, or another agent pushed); re-sending everything');
        for (const k of PUSH_KINDS) {
          this.full.add(k);
          if (this.has(k)) this.kick(k);
        }
      }
    } finally {
      this.heartbeatBusy = false;
    }
  }
}
