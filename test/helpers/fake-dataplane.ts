// A Dataplane in memory that keeps what it was told the way the manager does (session +
// generation rules for services and policy, whole values for the rest) and fails on
// demand: before applying (the call never arrived: 'unavailable'), after applying (the
// answer was lost: 'deadline'), or by restarting (its sessions, node settings and
// acceleration switch are gone and its services and policy emptied; the pod flags stay,
// as the pinned pod registry keeps them across a real manager's restart). For the
// DataplaneMirror's tests.
import {
  DataplaneError,
  type AccelerationState, type CallOptions, type CniCall, type CniReply, type Dataplane, type DataplaneHealth,
  type DataplaneStatus, type NodeSettings, type PodFlagsApplied, type PodFlagsUpdate, type PolicyApplied,
  type PolicyChange, type ServiceChange, type ServicesApplied,
} from '../../src/dataplane/api.js';
import type { DesiredServicePort } from '../../src/services/model.js';
import type { PolicyState } from '../../src/policy/types.js';

export type FailMode = 'before' | 'after';

export interface RecordedCall {
  method: string;
  full?: boolean;
  generation?: bigint;
  refs?: string[];
  ports?: number;
  outcome: 'ok' | 'unavailable' | 'deadline' | 'resync';
}

export class FakeDataplane implements Dataplane {
  readonly services = new Map<string, DesiredServicePort>();
  servicesSession = '';
  servicesGeneration = 0n;
  node: NodeSettings = {};
  acceleration: boolean | undefined;
  readonly podFlags = new Map<string, boolean>();
  policy: PolicyState | undefined;
  /** The last policy call said enforcement off / asked for CNI-learned addresses. */
  policyOff = false;
  remembered = false;
  policySession = '';
  policyGeneration = 0n;
  /** Failures the next calls take, in order (one per call). */
  readonly failNext: FailMode[] = [];
  /** Every call refused while true. */
  down = false;
  /** Each call waits for this before answering (tests of coalescing). */
  gate: Promise<void> | undefined;
  readonly calls: RecordedCall[] = [];
  restarts = 0;
  private ticks = 0;

  restart(): void {
    this.services.clear();
    this.servicesSession = '';
    this.servicesGeneration = 0n;
    this.node = {};
    this.acceleration = undefined;
    this.policy = undefined;
    this.policySession = '';
    this.policyGeneration = 0n;
    this.ticks = 0;
    this.restarts++;
  }

  private async call<T>(rec: Omit<RecordedCall, 'outcome'>, apply: () => T): Promise<T> {
    if (this.gate) await this.gate;
    this.ticks++;
    if (this.down) {
      this.calls.push({ ...rec, outcome: 'unavailable' });
      throw new DataplaneError('unavailable', 'connect ECONNREFUSED 127.0.0.1:1 (fake)');
    }
    const fail = this.failNext.shift();
    if (fail === 'before') {
      this.calls.push({ ...rec, outcome: 'unavailable' });
      throw new DataplaneError('unavailable', 'stream reset (fake, before apply)');
    }
    let r: T;
    try {
      r = apply();
    } catch (e) {
      this.calls.push({ ...rec, outcome: 'resync' });
      throw e;
    }
    if (fail === 'after') {
      this.calls.push({ ...rec, outcome: 'deadline' });
      throw new DataplaneError('deadline', 'deadline exceeded (fake, after apply)');
    }
    this.calls.push({ ...rec, outcome: 'ok' });
    return r;
  }

  cni(_call: CniCall, _opts?: CallOptions): Promise<CniReply> {
    return Promise.resolve({ exitCode: 0, stdout: '{}' });
  }

  applyServices(c: ServiceChange, _opts?: CallOptions): Promise<ServicesApplied> {
    return this.call({ method: 'applyServices', full: c.full, generation: c.generation, refs: [...c.refs], ports: c.ports.length }, () => {
      let ops = 0;
      if (c.full) {
        ops = this.services.size + c.ports.length;
        this.services.clear();
        for (const p of c.ports) this.services.set(p.key, p);
      } else {
        if (c.session !== this.servicesSession) throw new DataplaneError('resync', `session ${c.session} is not the last applied one`);
        if (c.generation === this.servicesGeneration) {
          return { generation: c.generation, mapOps: 0, services: this.services.size, applyMs: 0, repeatedGeneration: true, conflicts: [] };
        }
        if (c.generation !== this.servicesGeneration + 1n) throw new DataplaneError('resync', `generation ${c.generation} does not continue ${this.servicesGeneration}`);
        const refs = new Set(c.refs);
        for (const [k, p] of this.services) if (refs.has(p.ref)) {
          this.services.delete(k);
          ops++;
        }
        for (const p of c.ports) {
          this.services.set(p.key, p);
          ops++;
        }
      }
      this.servicesSession = c.session;
      this.servicesGeneration = c.generation;
      return { generation: c.generation, mapOps: ops, services: this.services.size, applyMs: 0.1, repeatedGeneration: false, conflicts: [] };
    });
  }

  setAcceleration(enabled: boolean, _opts?: CallOptions): Promise<AccelerationState> {
    return this.call({ method: 'setAcceleration' }, () => {
      this.acceleration = enabled;
      return { enabled, pods: this.podFlags.size, sockets: 0 };
    });
  }

  setPodFlags(pods: PodFlagsUpdate[], _opts?: CallOptions): Promise<PodFlagsApplied> {
    return this.call({ method: 'setPodFlags', ports: pods.length }, () => {
      for (const p of pods) this.podFlags.set(p.ip, p.accelOptOut);
      return { updated: pods.length, unknown: 0 };
    });
  }

  setNodeSettings(s: NodeSettings, _opts?: CallOptions): Promise<{ conflistWritten: boolean }> {
    return this.call({ method: 'setNodeSettings' }, () => {
      this.node = { ...this.node, ...Object.fromEntries(Object.entries(s).filter(([, v]) => v !== undefined)) };
      return { conflistWritten: s.podCidr !== undefined };
    });
  }

  applyPolicy(c: PolicyChange, _opts?: CallOptions): Promise<PolicyApplied> {
    return this.call({ method: 'applyPolicy', generation: c.generation }, () => {
      if (c.session === this.policySession && c.generation <= this.policyGeneration) {
        return { generation: this.policyGeneration, mapChanges: 0, flowsCutOff: 0, socketsEvicted: 0, applyMs: 0, fallback: false, problems: [], repeatedGeneration: true };
      }
      this.policy = c.state;
      this.policyOff = c.enforcementOff === true;
      this.remembered = c.rememberCniAddresses === true;
      this.policySession = c.session;
      this.policyGeneration = c.generation;
      return { generation: c.generation, mapChanges: 1, flowsCutOff: 0, socketsEvicted: 0, applyMs: 0.1, fallback: false, problems: [], repeatedGeneration: false };
    });
  }

  health(_opts?: CallOptions): Promise<DataplaneHealth> {
    return this.call({ method: 'health' }, () => ({ ok: true, problems: [] }));
  }

  status(_opts?: CallOptions): Promise<DataplaneStatus> {
    // Not counted against failNext: failures are for the pushes under test; `down` still refuses it.
    if (this.down) return Promise.reject(new DataplaneError('unavailable', 'connect ECONNREFUSED (fake)'));
    this.ticks++;
    return Promise.resolve({
      version: 'fake', backend: 'fake',
      servicesSession: this.servicesSession, servicesGeneration: this.servicesGeneration, services: this.services.size,
      policySession: this.policySession, policyGeneration: this.policyGeneration, policyEndpoints: 0,
      acceleration: this.acceleration ?? false, acceleratedPods: 0, node: { ...this.node }, nodeAddresses: [],
      uptimeSeconds: this.ticks,
    });
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}
