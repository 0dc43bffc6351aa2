// The NetworkPolicy side of the Kubernetes source: Pods (cluster-wide), Namespaces and
// NetworkPolicies, turned into one PolicyState (src/policy/types.ts) for the policy engine.
//
// The informers are K8sSource's (one cluster-wide Pod watch serves both sides); their
// events arrive here through the handle* methods, so the same code runs against a real
// apiserver and in unit tests. Nothing is handed to the engine before all three kinds
// have been listed: a restarted agent must not program a partial state over the pinned
// maps (that would drop or allow what the full state says otherwise). After that a change
// is applied on the next turn of the event loop, and while events keep coming at most once
// per window (coalesceMs, doubling up to maxCoalesceMs, as the service side does).
//
// CNI ADD closes the window between a pod's creation and its first watch event with an
// address (the kubelet writes status.podIPs only after ADD has answered): the agent calls
// podAddressKnown() with the addresses ADD just gave out, before answering. The pod's
// labels and policies are known from the watch by then (the pod was bound to this node
// before the kubelet ran ADD), so the pod is enforced as its policies say from its first
// packet. What remains open is described in ARCHITECTURE.md (NetworkPolicy on Kubernetes).
import type { NetworkPolicy, PolicyNamespace, PolicyPod, PolicyState } from '../policy/types.js';
import { messageOf } from '../errors.js';
import { isIPv4 } from '../net/cidr.js';
import {
  convertNetworkPolicy, podIPv4s, policyNamespace, policyPod,
  type K8sNamespace, type K8sNetworkPolicy, type K8sPolicyPod,
} from './policy-convert.js';
import type { Logger } from './source.js';

/** What programs policy: the PolicyEngine in the agent, a recorder in tests. */
export interface PolicyStateSink {
  /** The whole desired state; throws when it could not be programmed (retried). */
  setState(state: PolicyState): void;
}

export const POLICY_RESOURCES = ['pods', 'namespaces', 'networkpolicies'] as const;
export type PolicyResource = (typeof POLICY_RESOURCES)[number];

export interface K8sPolicySourceOptions {
  nodeName: string;
  sink: PolicyStateSink;
  log?: Logger;
  /** At most one apply per this many ms while events keep coming (default 20 ms). */
  coalesceMs?: number;
  /** Upper bound of the growing window (default 160 ms). */
  maxCoalesceMs?: number;
  /** After a failed apply, retry after this long (default 1 s). */
  retryMs?: number;
  /** CNI-known addresses of pods the watch has not shown with an address are forgotten after this long (default 10 min). */
  cniAddressTtlMs?: number;
  /** Called after each successful apply. */
  onApplied?: (info: { pods: number; namespaces: number; policies: number; ms: number }) => void;
  onError?: (err: unknown) => void;
}

/**
 * fn after ms; with no wait, right after the events of this turn of the event loop (setImmediate:
 * not a timer's 1 ms at least, and every event the watch delivered in this chunk is in).
 */
function later(ms: number, fn: () => void): { cancel(): void } {
  if (ms <= 0) {
    const h = setImmediate(fn);
    return { cancel: () => clearImmediate(h) };
  }
  const h = setTimeout(fn, ms);
  return { cancel: () => clearTimeout(h) };
}

const nolog: Logger = { debug() {}, info() {}, warn() {}, error() {} };
const keyOf = (m: { namespace?: string; name?: string }): string => `${m.namespace ?? ''}/${m.name ?? ''}`;

export class K8sPolicySource {
  private readonly pods = new Map<string, PolicyPod>();
  /** The raw pod (slim), kept to recompute its PolicyPod when CNI addresses arrive or expire. */
  private readonly rawPods = new Map<string, K8sPolicyPod>();
  private readonly namespaces = new Map<string, PolicyNamespace>();
  private readonly policies = new Map<string, NetworkPolicy>();
  /** ns/name -> addresses CNI ADD gave out, until the pod's status carries them. */
  private readonly cniAddresses = new Map<string, { ips: string[]; at: number }>();
  private nodeAddresses: string[] = [];
  private readonly synced = new Set<PolicyResource>();
  private programmed = false;
  private lastError: string | undefined;
  private timer: { cancel(): void } | undefined;
  private closed = false;
  private readonly log: Logger;
  private lastFlush = -Infinity;
  private window: number;
  private heldBack = false;
  private pending = false;

  constructor(private readonly opts: K8sPolicySourceOptions) {
    this.log = opts.log ?? nolog;
    this.window = opts.coalesceMs ?? 20;
  }

  // ---- events

  handlePod(o: K8sPolicyPod): void {
    const key = keyOf(o.metadata);
    const cni = this.cniAddresses.get(key);
    if (cni && podIPv4s(o).length) this.cniAddresses.delete(key); // the status has caught up
    this.rawPods.set(key, o);
    const p = policyPod(o, this.opts.nodeName, this.cniAddresses.get(key)?.ips);
    if (p) this.pods.set(key, p);
    else this.pods.delete(key);
    this.changed();
  }

  handlePodDelete(o: K8sPolicyPod): void {
    const key = keyOf(o.metadata);
    this.rawPods.delete(key);
    this.cniAddresses.delete(key);
    if (this.pods.delete(key)) this.changed();
  }

  handleNamespace(o: K8sNamespace): void {
    this.namespaces.set(o.metadata.name ?? '', policyNamespace(o));
    this.changed();
  }

  handleNamespaceDelete(o: K8sNamespace): void {
    if (this.namespaces.delete(o.metadata.name ?? '')) this.changed();
  }

  handlePolicy(o: K8sNetworkPolicy): void {
    this.policies.set(keyOf(o.metadata), convertNetworkPolicy(o));
    this.changed();
  }

  handlePolicyDelete(o: K8sNetworkPolicy): void {
    if (this.policies.delete(keyOf(o.metadata))) this.changed();
  }

  /** The node's own addresses (always allowed: kubelet probes come from them). */
  setNodeAddresses(addresses: readonly string[]): void {
    const next = [...new Set(addresses)].sort();
    if (next.length === this.nodeAddresses.length && next.every((a, i) => a === this.nodeAddresses[i])) return;
    this.nodeAddresses = next;
    this.changed();
  }

  markSynced(resource: PolicyResource): void {
    if (this.synced.has(resource)) return;
    this.synced.add(resource);
    this.changed();
  }

  get isSynced(): boolean {
    return POLICY_RESOURCES.every((r) => this.synced.has(r));
  }

  /**
   * CNI ADD answered `ips` for pod namespace/name (called on the agent's main thread before
   * the answer goes back). If the watch knows the pod but not yet its address, the state is
   * applied now, synchronously, so the pod's policies hold from its first packet. Returns
   * whether it was applied now (false: not synced yet, or the pod is not known yet: the
   * addresses are kept and used when it arrives).
   */
  podAddressKnown(namespace: string, name: string, ips: readonly string[]): boolean {
    const v4 = ips.filter((ip) => isIPv4(ip));
    if (v4.length === 0 || this.closed) return false;
    const key = `${namespace}/${name}`;
    this.expireCniAddresses();
    const raw = this.rawPods.get(key);
    if (raw && podIPv4s(raw).length) return false; // the watch was first: nothing to add
    this.cniAddresses.set(key, { ips: v4, at: performance.now() });
    if (!raw) return false;
    const p = policyPod(raw, this.opts.nodeName, v4);
    if (!p) return false;
    this.pods.set(key, p);
    if (!this.isSynced) return false;
    // The whole state, now: it also carries any change still waiting for its window (the
    // engine compiles the whole state either way, so a one-pod path would cost the same).
    this.pending = true;
    this.timer?.cancel();
    this.timer = undefined;
    this.flush();
    return this.programmed && !this.pending;
  }

  /** CNI DEL: the addresses ADD reported are no longer the pod's. */
  podAddressGone(namespace: string, name: string): void {
    const key = `${namespace}/${name}`;
    if (!this.cniAddresses.delete(key)) return;
    const raw = this.rawPods.get(key);
    if (!raw) return;
    const p = policyPod(raw, this.opts.nodeName);
    if (p) this.pods.set(key, p);
    else this.pods.delete(key);
    this.changed();
  }

  private expireCniAddresses(): void {
    const ttl = this.opts.cniAddressTtlMs ?? 600_000;
    const old = performance.now() - ttl;
    for (const [key, v] of this.cniAddresses) {
      if (v.at >= old) continue;
      this.cniAddresses.delete(key);
      const raw = this.rawPods.get(key);
      if (!raw) continue;
      const p = policyPod(raw, this.opts.nodeName);
      if (p) this.pods.set(key, p);
      else this.pods.delete(key);
      this.pending = true;
    }
  }

  // ---- applying

  /** The state as the caches have it now. */
  state(): PolicyState {
    return {
      namespaces: [...this.namespaces.values()],
      pods: [...this.pods.values()],
      policies: [...this.policies.values()],
      nodeAddresses: [...this.nodeAddresses],
    };
  }

  private changed(): void {
    this.pending = true;
    this.schedule();
  }

  private schedule(delay?: number): void {
    if (this.timer || this.closed || !this.isSynced) return;
    if (delay === undefined) {
      const since = performance.now() - this.lastFlush;
      delay = Math.max(0, this.window - since);
      this.heldBack = delay > 0;
      if (!this.heldBack) this.window = this.opts.coalesceMs ?? 20;
    } else {
      this.heldBack = false;
    }
    this.timer = later(delay, () => {
      this.timer = undefined;
      this.flush();
    });
  }

  /** Hands the whole state to the engine now (normally run by the coalescing timer). */
  flush(): void {
    if (this.closed || !this.isSynced) return;
    if (!this.pending && this.programmed) return;
    this.expireCniAddresses();
    const t0 = performance.now();
    this.lastFlush = t0;
    if (this.heldBack) this.window = Math.min(this.window * 2, Math.max(this.opts.maxCoalesceMs ?? 160, this.opts.coalesceMs ?? 20));
    this.heldBack = false;
    this.pending = false;
    const state = this.state();
    try {
      this.opts.sink.setState(state);
      const first = !this.programmed;
      this.programmed = true;
      this.lastError = undefined;
      const info = { pods: state.pods.length, namespaces: state.namespaces.length, policies: state.policies.length, ms: Math.round((performance.now() - t0) * 100) / 100 };
      if (first) this.log.info(info, 'network policy programmed (initial state)');
      else this.log.debug(info, 'network policy programmed');
      this.opts.onApplied?.(info);
    } catch (e) {
      this.pending = true;
      this.lastError = messageOf(e);
      this.opts.onError?.(e);
      this.log.error({ err: this.lastError, retryInMs: this.opts.retryMs ?? 1000 }, 'programming network policy failed; retrying');
      if (!this.closed) {
        this.timer?.cancel();
        this.timer = later(this.opts.retryMs ?? 1000, () => {
          this.timer = undefined;
          this.flush();
        });
      }
    }
  }

  /** Undefined when every policy informer has synced and the state was programmed once, else why not. */
  notReady(): string | undefined {
    const missing = POLICY_RESOURCES.filter((r) => !this.synced.has(r));
    if (missing.length) return `policy informers not synced: ${missing.join(', ')}`;
    if (!this.programmed) return `network policy not programmed yet${this.lastError ? ` (${this.lastError})` : ''}`;
    return undefined;
  }

  close(): void {
    this.closed = true;
    this.timer?.cancel();
    this.timer = undefined;
  }
}
