// The agent's Kubernetes source: Services, EndpointSlices, the Pods of this
// node and this Node, turned into (1) the service model the data plane is
// programmed from, (2) acceleration opt-out flags in the pod registry, and
// (3) the node's pod subnet.
//
// Event handling is separate from the informers (the handle* methods), so the
// same code runs against a real apiserver, in unit tests and in the memory
// measurement. Nothing is applied before Services and EndpointSlices have both
// been listed: the first apply is one full resync against what the pinned
// maps hold (a restart changes only what really changed, no delete-all then
// add-all). After that changes are applied for the changed services only: an
// isolated change at once (on the next turn of the event loop, so the events
// of one watch chunk go together), and while events keep coming, at most one
// apply per window: coalesceMs at first, doubled after each apply that had to
// wait for it, up to maxCoalesceMs, back to coalesceMs after a quiet spell. Each
// apply has a fixed cost (diff, map syscalls, metrics, a log line): with a fixed
// 20 ms window, 1,000 services created at the apiserver's pace meant ~1,000
// applies, most of the agent's CPU (profiled with bench/k8s-rss.ts).
import type { ApplyStats } from '../dataplane/service-lb.js';
import type { PodRegistry } from '../dataplane/accel-registry.js';
import { ServiceModel, type DesiredServicePort } from '../services/model.js';
import type { ClientConfig } from './kubeconfig.js';
import {
  ACCEL_ANNOTATION, convertService, mergeSlices, nodeInternalIPv4, nodePodCidr, podAccel, refOf, sliceService,
  slimEndpointSlice, slimNode, slimPod, slimService,
  type K8sEndpointSlice, type K8sNode, type K8sPod, type K8sService,
} from './convert.js';
import type { AgentMetrics } from './metrics.js';
import { startInformer, type BackoffOptions, type RunningInformer } from './informers.js';
import { slimNamespace, slimNetworkPolicy, slimPolicyPod, type K8sNamespace, type K8sNetworkPolicy, type K8sPolicyPod } from './policy-convert.js';
import type { K8sPolicySource } from './policy-source.js';
import { messageOf } from '../errors.js';
import { normalCidr, type NodeInfo } from '../nodes/model.js';
import { contains, firstSubnet24, parseCidr, type Cidr } from '../net/cidr.js';

/** What programs services: ServiceLb in the agent, a recorder in tests. */
export interface ServiceSink {
  /** Everything: what is programmed and not in `desired` goes. */
  resync(desired: ReadonlyMap<string, DesiredServicePort>): ApplyStats;
  /** Only the services in `refs`; `desired` holds the ports of those that still exist. */
  applyChanges(refs: ReadonlySet<string>, desired: ReadonlyMap<string, DesiredServicePort>): ApplyStats;
}

/**
 * Where pod acceleration opt-outs go instead of the pod registry (split mode: the agent's
 * DataplaneMirror, which pushes them to the manager as pod flags).
 */
export interface PodFlagSink {
  /** Sets (true) or reverts (false) a pod address's opt-out; whether that changed anything. */
  setOptOut(ip: string, optOut: boolean): boolean;
  /** The address is no longer this pod's: its flag is not to be re-sent. */
  forget(ip: string): void;
}

export interface Logger {
  debug(o: object, msg: string): void;
  info(o: object, msg: string): void;
  warn(o: object, msg: string): void;
  error(o: object, msg: string): void;
}

export interface K8sSourceOptions {
  nodeName: string;
  /** Used for the pod subnet when the Node has no spec.podCIDR (its first /24). */
  clusterCIDR: string;
  /**
   * The service CIDR the programs refuse unanswered addresses in: a ClusterIP outside
   * it is still programmed, but reported (the agent's --service-cidr is then probably
   * not the apiserver's --service-cluster-ip-range).
   */
  serviceCIDR?: string;
  /** A ClusterIP outside serviceCIDR was seen (called once per service; before that service is applied). */
  onOutsideServiceCidr?: (ref: string, clusterIP: string) => void;
  sink?: ServiceSink;
  /** Opens the acceleration pod registry; undefined while acceleration was never set up. */
  podRegistry?: () => PodRegistry | undefined;
  /** Instead of podRegistry (split mode): the opt-outs go here. */
  podFlags?: PodFlagSink;
  /** At most one apply per this many ms while events keep coming (default 20 ms); a change after a quiet spell is applied at once. */
  coalesceMs?: number;
  /** While events keep coming the window doubles after each held-back apply, up to this (default 160 ms, at least coalesceMs). */
  maxCoalesceMs?: number;
  /** Recompute everything from the informer caches this often (default 5 min; 0: never). */
  resyncMs?: number;
  /** After a failed apply, retry as a full resync after this long (default 1 s). */
  retryMs?: number;
  log?: Logger;
  metrics?: AgentMetrics;
  /** Called with the pod subnet once the Node informer has synced, then on every change. */
  onPodCidr?: (cidr: string) => void;
  /**
   * Routing to other nodes: the Node watch becomes cluster-wide and every node with a
   * podCIDR and an IPv4 InternalIP is handed here (this node with its pod subnet) once
   * the watch has synced, then on every change of a node's name, podCIDR or address.
   */
  onNodes?: (nodes: NodeInfo[]) => void;
  /** The healthCheckNodePorts to serve (all of them), called when one changed. */
  onHealthChecks?: (entries: { ref: string; port: number; localEndpoints: number }[]) => void;
  /** Called after every successful apply. */
  onApplied?: (stats: ApplyStats, kind: 'resync' | 'delta') => void;
  backoff?: BackoffOptions;
  /**
   * NetworkPolicy: the Pod watch becomes cluster-wide (selectors span namespaces; the
   * acceleration side still looks only at this node's pods) and Namespaces and
   * NetworkPolicies are watched too, all fed to this source.
   */
  policy?: K8sPolicySource;
}

export const RESOURCES = ['services', 'endpointslices', 'pods', 'node'] as const;
export type Resource = (typeof RESOURCES)[number] | 'namespaces' | 'networkpolicies';

const nolog: Logger = { debug() {}, info() {}, warn() {}, error() {} };

export class K8sSource {
  readonly model: ServiceModel;
  private readonly services = new Map<string, K8sService>();
  /** Service ref -> slice name -> slice. */
  private readonly slices = new Map<string, Map<string, K8sEndpointSlice>>();
  /** Slice `namespace/name` -> the service ref it was filed under (the label can change). */
  private readonly sliceOwner = new Map<string, string>();
  private readonly dirty = new Set<string>();
  private readonly synced = new Set<Resource>();
  private programmed = false;
  private needResync = true;
  private timer: NodeJS.Timeout | undefined;
  private resyncTimer: NodeJS.Timeout | undefined;
  private informers: RunningInformer<any>[] = [];
  private closed = false;
  private readonly log: Logger;
  /** Pod `namespace/name` -> its IPv4 address as last seen. */
  private readonly podIps = new Map<string, string>();
  /** Addresses whose opt-out flag this agent set (only those are reverted when the annotation goes). */
  private readonly optedOut = new Set<string>();
  private node: K8sNode | undefined;
  /** With onNodes: every Node by name. */
  private readonly allNodes = new Map<string, K8sNode>();
  private lastNodes = '';
  private lastCidr: string | undefined;
  private lastError: string | undefined;
  /** When the last apply started (performance.now()); -Infinity before the first. */
  private lastFlush = -Infinity;
  /** The current coalescing window (ms): see the header. */
  private window: number;
  /** Whether the pending apply waits for the window (events kept coming), so the window grows after it. */
  private heldBack = false;
  /** Per service ref: the ports and backends it last contributed to the gauges, so they cost O(changed) per apply. */
  private readonly counted = new Map<string, { ports: number; backends: number }>();
  private portsCounted = 0;
  private backendsCounted = 0;

  constructor(private readonly opts: K8sSourceOptions) {
    this.log = opts.log ?? nolog;
    this.model = new ServiceModel({ nodeName: opts.nodeName });
    this.window = opts.coalesceMs ?? 20;
    firstSubnet24(opts.clusterCIDR); // validates early
    const resync = opts.resyncMs ?? 300_000;
    if (resync > 0) {
      this.resyncTimer = setInterval(() => this.resync(), resync);
      this.resyncTimer.unref();
    }
  }

  /** Starts the four informers against an apiserver. */
  start(cfg: ClientConfig): void {
    const node = this.opts.nodeName;
    const policy = this.opts.policy;
    const on = <T>(resource: Resource, up: (o: T) => void, del: (o: T) => void) => ({
      onUpsert: (o: T) => {
        this.opts.metrics?.informerEvents.inc({ resource, event: 'upsert' });
        up(o);
      },
      onDelete: (o: T) => {
        this.opts.metrics?.informerEvents.inc({ resource, event: 'delete' });
        del(o);
      },
      onSynced: () => this.markSynced(resource),
      onError: (err: Error, ms: number) => {
        this.lastError = `${resource}: ${err.message}`;
        this.log.warn({ resource, err: err.message, retryInMs: ms }, 'informer failed; the data plane keeps its last state');
      },
      onRestart: () => {
        this.opts.metrics?.informerRestarts.inc({ resource });
        this.log.info({ resource }, 'informer restarting');
      },
    });
    const b = this.opts.backoff ?? {};
    this.informers = [
      startInformer<K8sService>(cfg, { resource: 'services', path: '/api/v1/services', slim: slimService },
        on('services', (o) => this.handleService(o), (o) => this.handleServiceDelete(o)), b),
      startInformer<K8sEndpointSlice>(cfg, { resource: 'endpointslices', path: '/apis/discovery.k8s.io/v1/endpointslices', slim: slimEndpointSlice },
        on('endpointslices', (o) => this.handleSlice(o), (o) => this.handleSliceDelete(o)), b),
      policy
        // Every pod of the cluster, trimmed to what policy needs (src/k8s/policy-convert.ts).
        ? startInformer<K8sPolicyPod>(cfg, { resource: 'pods', path: '/api/v1/pods', slim: (o) => slimPolicyPod(o, ACCEL_ANNOTATION, true) },
          on('pods', (o) => this.handlePod(o), (o) => this.handlePodDelete(o, true)), b)
        : startInformer<K8sPod>(cfg, { resource: 'pods', path: '/api/v1/pods', fieldSelector: `spec.nodeName=${node}`, slim: slimPod },
          on('pods', (o) => this.handlePod(o), (o) => this.handlePodDelete(o, true)), b),
      startInformer<K8sNode>(cfg, { resource: 'node', path: '/api/v1/nodes', ...(this.opts.onNodes ? {} : { fieldSelector: `metadata.name=${node}` }), slim: slimNode },
        on('node', (o) => this.handleNode(o), (o) => this.handleNodeDelete(o)), b),
    ];
    if (policy) {
      this.informers.push(
        startInformer<K8sNamespace>(cfg, { resource: 'namespaces', path: '/api/v1/namespaces', slim: slimNamespace },
          on('namespaces', (o) => policy.handleNamespace(o), (o) => policy.handleNamespaceDelete(o)), b),
        startInformer<K8sNetworkPolicy>(cfg, { resource: 'networkpolicies', path: '/apis/networking.k8s.io/v1/networkpolicies', slim: slimNetworkPolicy },
          on('networkpolicies', (o) => policy.handlePolicy(o), (o) => policy.handlePolicyDelete(o)), b),
      );
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    clearInterval(this.resyncTimer);
    await Promise.all(this.informers.map((i) => i.stop()));
  }

  // ---- services and endpoints

  handleService(o: K8sService): void {
    const ref = refOf(o.metadata);
    this.services.set(ref, o);
    this.markDirty(ref);
  }

  handleServiceDelete(o: K8sService): void {
    const ref = refOf(o.metadata);
    this.services.delete(ref);
    this.markDirty(ref);
  }

  handleSlice(o: K8sEndpointSlice): void {
    const key = refOf(o.metadata);
    const owner = sliceService(o);
    const prev = this.sliceOwner.get(key);
    if (prev !== undefined && prev !== owner) this.dropSlice(key, prev);
    if (owner === undefined) return;
    let m = this.slices.get(owner);
    if (!m) this.slices.set(owner, (m = new Map()));
    m.set(o.metadata.name ?? '', o);
    this.sliceOwner.set(key, owner);
    this.markDirty(owner);
  }

  handleSliceDelete(o: K8sEndpointSlice): void {
    const key = refOf(o.metadata);
    const owner = this.sliceOwner.get(key);
    if (owner !== undefined) this.dropSlice(key, owner);
  }

  private dropSlice(key: string, owner: string): void {
    const m = this.slices.get(owner);
    m?.delete(key.slice(key.indexOf('/') + 1));
    if (m && m.size === 0) this.slices.delete(owner);
    this.sliceOwner.delete(key);
    this.markDirty(owner);
  }

  markSynced(resource: Resource): void {
    if (this.synced.has(resource)) return;
    this.synced.add(resource);
    this.log.info({ resource }, 'informer synced');
    if (resource === 'pods' || resource === 'namespaces' || resource === 'networkpolicies') this.opts.policy?.markSynced(resource);
    if (resource === 'node') {
      this.publishCidr();
      this.publishNodes();
    }
    if (resource === 'pods') this.resyncPods();
    this.schedule();
  }

  private markDirty(ref: string): void {
    this.dirty.add(ref);
    this.schedule();
  }

  private schedule(delay?: number): void {
    if (this.timer || this.closed) return;
    // Leading edge: the first change after a quiet spell waits for nothing; later ones share the next window.
    if (delay === undefined) {
      const since = performance.now() - this.lastFlush;
      delay = Math.max(0, this.window - since);
      this.heldBack = delay > 0;
      // A quiet spell (nothing for a whole window since the last apply): back to the shortest window.
      if (!this.heldBack) this.window = this.opts.coalesceMs ?? 20;
    } else {
      this.heldBack = false;
    }
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.flush();
    }, delay);
  }

  /** Brings the model in line with the cached objects of one service. */
  private updateModel(ref: string): void {
    const svc = this.services.get(ref);
    const conv = svc ? convertService(svc) : undefined;
    if (conv && conv.skippedPorts.length) this.log.debug({ service: ref, ports: conv.skippedPorts }, 'ports skipped: only TCP and UDP are balanced');
    if (conv?.skippedAddresses) {
      this.opts.metrics?.serviceInputErrors.inc({ reason: 'address' }, conv.skippedAddresses.length);
      this.log.warn({ service: ref, addresses: conv.skippedAddresses }, 'addresses skipped: not IPv4 addresses (the rest of the service is programmed)');
    }
    if (!conv?.service) {
      if (conv?.skipped) this.log.debug({ service: ref, reason: conv.skipped }, 'service not programmed');
      this.model.deleteService(ref);
      return;
    }
    this.checkRange(ref, conv.service.clusterIP);
    this.model.upsertService(conv.service);
    this.model.setEndpoints(ref, mergeSlices(this.slices.get(ref)?.values() ?? []));
  }

  /** Applies pending changes now (normally run by the coalescing timer). */
  flush(): void {
    if (this.closed || !this.synced.has('services') || !this.synced.has('endpointslices')) return;
    const sink = this.opts.sink;
    const resync = this.needResync;
    const t0 = performance.now();
    if (resync) {
      // One full pass: every cached service, and services the model had that are gone.
      const refs = new Set([...this.services.keys(), ...this.model.refs()]);
      for (const ref of refs) this.updateModel(ref);
    } else {
      for (const ref of this.dirty) this.updateModel(ref);
    }
    this.dirty.clear();
    const changed = this.model.takeChanges();
    if (!resync && changed.size === 0) return;
    this.lastFlush = t0;
    if (this.heldBack) this.window = Math.min(this.window * 2, Math.max(this.opts.maxCoalesceMs ?? 160, this.opts.coalesceMs ?? 20));
    this.heldBack = false;
    try {
      // Derived once: the sink programs it and the gauges count it.
      const desired = this.model.desired(resync ? undefined : changed);
      const stats: ApplyStats = sink
        ? (resync ? sink.resync(desired) : sink.applyChanges(changed, desired))
        : { ops: 0, services: changed.size, syscallBatches: 0, ms: performance.now() - t0, attachedNow: false };
      this.needResync = false;
      const first = !this.programmed;
      this.programmed = true;
      this.lastError = undefined;
      this.record(stats, resync ? 'resync' : 'delta', changed, desired);
      if (first || stats.ops > 0) {
        this.log.info({ kind: resync ? 'resync' : 'delta', services: this.model.size, changed: changed.size, mapOps: stats.ops, ms: Math.round(stats.ms * 100) / 100 },
          first ? 'services programmed (initial resync)' : 'services programmed');
      }
      this.opts.onApplied?.(stats, resync ? 'resync' : 'delta');
      this.reportConflicts();
      this.updateHealthChecks(resync ? undefined : changed);
      // An entry another service gave up: the service waiting for it is programmed next.
      if (this.model.hasChanges) this.schedule();
    } catch (e) {
      // The maps may hold part of this batch: the next attempt compares everything.
      this.needResync = true;
      this.lastError = `apply: ${messageOf(e)}`;
      this.opts.metrics?.applyErrors.inc();
      this.log.error({ err: messageOf(e), retryInMs: this.opts.retryMs ?? 1000 }, 'programming services failed; retrying as a full resync');
      if (!this.closed) {
        clearTimeout(this.timer);
        this.timer = setTimeout(() => {
          this.timer = undefined;
          this.flush();
        }, this.opts.retryMs ?? 1000);
      }
    }
  }

  private serviceRange: Cidr | undefined;
  private readonly outOfRange = new Set<string>();
  private checkRange(ref: string, clusterIP: string): void {
    if (!this.opts.serviceCIDR) return;
    this.serviceRange ??= parseCidr(this.opts.serviceCIDR);
    if (contains(this.serviceRange, clusterIP)) {
      this.outOfRange.delete(ref);
      return;
    }
    if (this.outOfRange.has(ref)) return;
    this.outOfRange.add(ref);
    this.opts.metrics?.serviceInputErrors.inc({ reason: 'clusterIPOutsideServiceCIDR' });
    this.log.warn({ service: ref, clusterIP, serviceCIDR: this.opts.serviceCIDR },
      'ClusterIP outside the service CIDR: programmed anyway; is --service-cidr the apiserver\'s --service-cluster-ip-range?');
    this.opts.onOutsideServiceCidr?.(ref, clusterIP);
  }

  /** ref -> the healthCheckNodePort it wants served; kept per changed ref, so an apply costs O(changed). */
  private readonly healthChecks = new Map<string, { ref: string; port: number; localEndpoints: number }>();
  private updateHealthChecks(changed: ReadonlySet<string> | undefined): void {
    if (!this.opts.onHealthChecks) return;
    let dirty = false;
    const refs = changed ?? new Set([...this.model.refs(), ...this.healthChecks.keys()]);
    for (const ref of refs) {
      const now = this.model.healthCheck(ref);
      const old = this.healthChecks.get(ref);
      if (now?.port === old?.port && now?.localEndpoints === old?.localEndpoints) continue;
      dirty = true;
      if (now) this.healthChecks.set(ref, now);
      else this.healthChecks.delete(ref);
    }
    if (dirty) this.opts.onHealthChecks([...this.healthChecks.values()]);
  }

  /** Services left out for an entry another holds: logged once per conflict (the metric counts them). */
  private readonly reported = new Map<string, string>();
  private reportConflicts(): void {
    const now = new Map<string, string>();
    for (const c of this.model.conflicts()) {
      const why = `${c.key} is already used by ${c.holder}`;
      now.set(c.ref, why);
      if (this.reported.get(c.ref) !== why) {
        this.opts.metrics?.serviceConflicts.inc();
        this.log.error({ service: c.ref, entry: c.key, holder: c.holder }, `service not programmed: ${why} (the first to claim an address, port and protocol keeps it)`);
      }
    }
    for (const ref of this.reported.keys()) if (!now.has(ref)) this.log.info({ service: ref }, 'service conflict resolved; programmed');
    this.reported.clear();
    for (const [k, v] of now) this.reported.set(k, v);
    this.opts.metrics?.servicesRejected.set(now.size);
  }

  private record(stats: ApplyStats, kind: 'resync' | 'delta', changed: ReadonlySet<string>, desired: ReadonlyMap<string, DesiredServicePort>): void {
    const m = this.opts.metrics;
    if (!m) return;
    m.applySeconds.observe({ kind }, stats.ms / 1000);
    m.mapOps.inc(stats.ops);
    // Recounting every service on every apply made each change O(all services) (at 1,000 services it was
    // most of the agent's CPU while services were being created): only the changed ones are recounted.
    if (kind === 'resync') {
      this.counted.clear();
      this.portsCounted = 0;
      this.backendsCounted = 0;
    }
    // Counted from the desired state the sink was given, not derived a second time.
    const now = new Map<string, { ports: number; backends: number }>();
    for (const d of desired.values()) {
      const c = now.get(d.ref) ?? { ports: 0, backends: 0 };
      c.ports++;
      c.backends += d.backends.length;
      now.set(d.ref, c);
    }
    for (const ref of kind === 'resync' ? now.keys() : changed) {
      const old = this.counted.get(ref);
      if (old) {
        this.portsCounted -= old.ports;
        this.backendsCounted -= old.backends;
        this.counted.delete(ref);
      }
      const c = now.get(ref);
      if (!c) continue;
      this.counted.set(ref, c);
      this.portsCounted += c.ports;
      this.backendsCounted += c.backends;
    }
    m.servicesProgrammed.set(this.model.size);
    m.servicePortsProgrammed.set(this.portsCounted);
    m.endpointsProgrammed.set(this.backendsCounted);
  }

  /** Recomputes everything from the caches (a safety net against a missed event). */
  resync(): void {
    if (!this.programmed) return;
    this.needResync = true;
    this.schedule(0);
    this.resyncPods();
  }

  // ---- pods: acceleration opt-out

  handlePod(o: K8sPod | K8sPolicyPod): void {
    const policy = this.opts.policy;
    if (policy) {
      policy.handlePod(o as K8sPolicyPod);
      // The watch is cluster-wide: acceleration flags are this node's pods' only.
      if ((o as K8sPolicyPod).spec?.nodeName !== this.opts.nodeName) {
        this.handlePodDelete(o);
        return;
      }
    }
    const key = refOf(o.metadata);
    const acc = podAccel(o);
    const prevIp = this.podIps.get(key);
    if (prevIp && prevIp !== acc?.ip) this.forgetPodIp(key, prevIp);
    if (!acc) return;
    this.podIps.set(key, acc.ip);
    this.setOptOut(acc.ip, acc.optOut);
  }

  handlePodDelete(o: K8sPod | K8sPolicyPod, fromWatch = false): void {
    if (fromWatch) this.opts.policy?.handlePodDelete(o as K8sPolicyPod);
    const key = refOf(o.metadata);
    const ip = this.podIps.get(key);
    // The registry entry itself is removed by CNI DEL, which owns it.
    if (ip) this.forgetPodIp(key, ip);
  }

  private forgetPodIp(key: string, ip: string): void {
    this.podIps.delete(key);
    if (this.optedOut.delete(ip)) this.opts.podFlags?.forget(ip);
  }

  private setOptOut(ip: string, optOut: boolean): void {
    if (!optOut && !this.optedOut.has(ip)) return; // an opt-out from CNI_ARGS is not ours to undo
    const flags = this.opts.podFlags;
    if (flags) {
      const changed = flags.setOptOut(ip, optOut);
      if (optOut) this.optedOut.add(ip);
      else this.optedOut.delete(ip);
      if (!changed) return;
      this.opts.metrics?.podAccelUpdates.inc();
      this.log.info({ ip, optOut }, optOut ? 'pod opted out of acceleration (annotation patu.dev/accel=off; pushed to the manager)' : 'pod acceleration back on (annotation removed; pushed to the manager)');
      return;
    }
    const reg = this.opts.podRegistry?.();
    if (!reg) return;
    const cur = reg.lookup(ip);
    if (optOut && cur?.optOut) {
      this.optedOut.add(ip);
      return;
    }
    if (!optOut && !cur) {
      this.optedOut.delete(ip);
      return;
    }
    if (!optOut && cur && !cur.optOut) {
      this.optedOut.delete(ip);
      return;
    }
    // Keep what CNI ADD recorded (ifindex, netns cookie); only the flag changes.
    reg.register(ip, optOut, cur ? { ifindex: cur.ifindex, netnsCookie: cur.netnsCookie } : {});
    if (optOut) this.optedOut.add(ip);
    else this.optedOut.delete(ip);
    this.opts.metrics?.podAccelUpdates.inc();
    this.log.info({ ip, optOut }, optOut ? 'pod opted out of acceleration (annotation patu.dev/accel=off)' : 'pod acceleration back on (annotation removed)');
  }

  private resyncPods(): void {
    const pods = this.informers.find((i) => i.resource === 'pods');
    for (const p of (pods?.list() ?? []) as K8sPod[]) this.handlePod(p);
  }

  // ---- node: pod subnet

  handleNode(o: K8sNode): void {
    const self = o.metadata.name === this.opts.nodeName;
    if (self) this.node = o;
    if (this.opts.onNodes) this.allNodes.set(o.metadata.name ?? '', o);
    if (!this.synced.has('node')) return;
    if (self) this.publishCidr();
    if (this.opts.onNodes) this.publishNodes();
  }

  handleNodeDelete(o: K8sNode): void {
    if (this.opts.onNodes && o.metadata.name !== this.opts.nodeName) {
      this.allNodes.delete(o.metadata.name ?? '');
      if (this.synced.has('node')) this.publishNodes();
    }
    if (o.metadata.name !== this.opts.nodeName) return;
    // Keep the last subnet: pods keep their addresses; a re-created Node updates it.
    this.log.warn({ node: o.metadata.name }, 'this Node was deleted; keeping its pod subnet');
  }

  /** node.spec.podCIDR, else the first /24 of the cluster CIDR. */
  podCIDR(): string {
    return nodePodCidr(this.node) ?? this.lastCidr ?? firstSubnet24(this.opts.clusterCIDR);
  }

  /** The nodes to route between (this one with its pod subnet, which may be the cluster CIDR's first /24). */
  nodeInfos(): NodeInfo[] {
    const out: NodeInfo[] = [];
    for (const [name, n] of this.allNodes) {
      const podCIDR = name === this.opts.nodeName ? this.podCIDR() : nodePodCidr(n);
      const address = nodeInternalIPv4(n);
      if (!podCIDR || !address) continue;
      out.push({ name, podCIDR: normalCidr(podCIDR), address });
    }
    return out.sort((a, b) => (a.name < b.name ? -1 : 1));
  }

  private publishNodes(): void {
    const nodes = this.nodeInfos();
    const key = JSON.stringify(nodes);
    if (key === this.lastNodes) return;
    this.lastNodes = key;
    try {
      this.opts.onNodes?.(nodes);
    } catch (e) {
      this.log.error({ err: messageOf(e) }, 'routes to other nodes not programmed');
    }
  }

  private publishCidr(): void {
    const cidr = this.podCIDR();
    if (cidr === this.lastCidr) return;
    this.lastCidr = cidr;
    this.log.info({ podCIDR: cidr, from: nodePodCidr(this.node) ? 'node.spec.podCIDR' : 'cluster CIDR' }, 'pod subnet');
    try {
      this.opts.onPodCidr?.(cidr);
    } catch (e) {
      this.log.error({ err: messageOf(e) }, 'pod subnet change not written');
    }
  }

  // ---- state

  /** Undefined when ready (informers synced, data plane programmed), else why not. */
  notReady(): string | undefined {
    const missing = [...RESOURCES, ...(this.opts.policy ? ['namespaces', 'networkpolicies'] as const : [])].filter((r) => !this.synced.has(r));
    if (missing.length) return `informers not synced: ${missing.join(', ')}${this.lastError ? ` (last error: ${this.lastError})` : ''}`;
    if (!this.programmed) return `services not programmed yet${this.lastError ? ` (${this.lastError})` : ''}`;
    return this.opts.policy?.notReady();
  }

  get isProgrammed(): boolean {
    return this.programmed;
  }
}
