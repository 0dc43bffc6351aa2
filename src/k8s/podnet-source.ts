// Pod network configuration's reconciler (issue 12), in the agent: no daemon of its own.
//
//   informers (podnet-informers.ts): NodeNetworks, PodNetworkConfigs (cluster-wide),
//   Namespaces (labels), this node's Pods (trimmed)      -> handle*() here
//   CNI ADD (agent main thread, before the answer)       -> podAdded(): the pod's sandbox,
//                                                           its interfaces made now
//   CNI DEL                                              -> podDeleted(): forgotten (the plugin's
//                                                           DEL released the links: apply.ts)
//   coalesced reconcile: parse -> resolve (desired.ts, pure) -> per sandbox applier.sync
//   -> ensureNetwork / pruneNetworks / gc -> status, finalizers, events, annotations
//
// The kernel part of a reconcile is synchronous (netlink is), so an ADD's sync never
// interleaves with a reconcile's. The apiserver part is async and written only when it
// changed; a failed write or a failed interface is retried after retryMs.
//
// Finalizers: a PodNetworkConfig gets PODNET_FINALIZER once some pod on this node should
// have its interfaces; deleted, it leaves the desired state at once (its interfaces go),
// and the finalizer is removed when no interface of it is left on this node. A NodeNetwork
// in use gets it too; deleted, it stays (Terminating, its status naming its users) until
// no pod on this node has an interface on it (a config naming it is not a use: networkUsers). With several nodes
// the first agent with nothing left removes the finalizer; the others still remove their
// interfaces on the DELETED event (the objects are gone from their caches).
import {
  NETWORK_STATUS_ANNOTATION,
  PODNET_FINALIZER,
  REASONS,
  type AppliedInterface,
  type DesiredState,
  type InterfaceResult,
  type NodeNetwork,
  type PodInfo,
  type PodInterfaceStatus,
  type PodNetApplier,
  type PodNetworkConfig,
  type PodSandbox,
  type Problem,
  type ResolvedNetwork,
} from '../podnet/types.js';
import type { DesiredInput } from '../podnet/desired.js';
import { messageOf } from '../errors.js';
import { ApiError } from './informers.js';
import type { Logger } from './source.js';
import {
  configStatus, describeProblems, networkStatus, networkStatusAnnotation, sameConfigStatus, sameNetworkStatus, PENDING_MESSAGE,
} from './podnet-status.js';
import type {
  K8sNamespaceLabels, K8sNodeNetwork, K8sPodNetPod, K8sPodNetworkConfig, PodNetApi, PodNetKind,
} from './podnet-api.js';
import { slimPodNetPod } from './podnet-api.js';

export type { DesiredInput };

/** One object as the apiserver sends it -> the typed object, or the problems naming fields (validate.ts). */
export interface PodNetParsers {
  network(o: K8sNodeNetwork): { value?: NodeNetwork; problems: Problem[] };
  config(o: K8sPodNetworkConfig): { value?: PodNetworkConfig; problems: Problem[] };
}

/** Counters the agent exports (src/k8s/metrics.ts); absent in tests. */
export interface PodNetMetrics {
  reconcile(result: 'ok' | 'error', seconds: number): void;
  failure(reason: string): void;
  interfaces(n: number): void;
  cniAdd(seconds: number, interfaces: number): void;
}

export const PODNET_KINDS = ['nodenetworks', 'podnetworkconfigs', 'namespaces', 'pods'] as const;
export type PodNetResource = (typeof PODNET_KINDS)[number];

export interface PodNetSourceOptions {
  nodeName: string;
  applier: PodNetApplier;
  resolve: (input: DesiredInput) => DesiredState;
  parse: PodNetParsers;
  api: PodNetApi;
  /** The primary network's CIDRs (a NodeNetwork's subnet may not overlap them). */
  clusterCidrs: string[];
  /** The primary network's name for the network-status annotation (the conflist's). */
  primaryNetwork?: string;
  /**
   * Every sandbox the IPAM records know (pods ADDed before this agent started, or while
   * it was down). Absent: only ADDs seen by this agent, and no GC (gc() would take
   * pods made before the start for dead ones).
   */
  listSandboxes?: () => PodSandbox[];
  log?: Logger;
  metrics?: PodNetMetrics;
  /** Delay of a reconcile after a change (default 20 ms: a burst of events is one reconcile). */
  coalesceMs?: number;
  /** After a failed interface or write, reconcile again after this long (default 2 s). */
  retryMs?: number;
  /** A full reconcile (sandboxes re-read, GC, kernel drift) this often (default 60 s). */
  resyncMs?: number;
  /** How long a CNI ADD waits for the informers' first lists (default 1 s). */
  syncWaitMs?: number;
  /** Clock for status timestamps (tests). */
  now?: () => string;
}

const nolog: Logger = { debug() {}, info() {}, warn() {}, error() {} };
const keyOf = (m: { namespace?: string; name?: string }): string => `${m.namespace ?? ''}/${m.name ?? ''}`;

/** What a pod got, per interface, at the last sync (status, events, annotation). */
interface PodOutcome {
  results: InterfaceResult[];
  /** The config of each interface asked for (failed ones carry no `applied`). */
  want: Map<string, { config: string; network: string }>;
  /**
   * What was synced: the sandbox and the desired interfaces, serialized. The same again,
   * with every interface made, skips the kernel (a reconcile runs for any event, and a
   * sync of an unchanged pod still costs a netns round trip: at 80 pods, ~100 ms of main
   * thread that a CNI ADD's answer would wait behind). The periodic full reconcile syncs
   * every pod anyway (drift: a link removed by hand).
   */
  synced?: string;
}

/** A sandbox the CNI ADD or the IPAM records told us of, with eth0's addresses when known. */
interface KnownSandbox extends PodSandbox {
  ifname?: string;
  ips?: string[];
}

export interface CniAddInfo {
  namespace: string;
  name: string;
  uid?: string;
  containerId: string;
  netns: string;
  ifname: string;
  ips: string[];
}

export interface PodNetView {
  pod: string;
  containerId: string;
  interfaces: { ifname: string; network: string; config: string; address?: string; ready: boolean; message: string }[];
}

export class K8sPodNetSource {
  private readonly networks = new Map<string, K8sNodeNetwork>();
  private readonly configs = new Map<string, K8sPodNetworkConfig>();
  private readonly namespaces = new Map<string, Record<string, string>>();
  private readonly pods = new Map<string, K8sPodNetPod>();
  private readonly sandboxes = new Map<string, KnownSandbox>();
  private readonly outcomes = new Map<string, PodOutcome>();
  /** `pod/ifname` -> 'ok' | failure message: events are sent on changes only. */
  private readonly lastEvent = new Map<string, string>();
  private readonly synced = new Set<PodNetResource>();
  private readonly waiters: (() => void)[] = [];
  private readonly log: Logger;
  private readonly notInstalled = new Set<PodNetKind>();
  private timer: NodeJS.Timeout | undefined;
  private resyncTimer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private pending = false;
  private closed = false;
  /** The next reconcile syncs every sandbox, re-reads the records and runs GC. */
  private full = true;
  private desired: DesiredState | undefined;
  private configProblems = new Map<string, Problem[]>();
  private networkProblems = new Map<string, Problem[]>();
  private networkFailures = new Map<string, string>();
  private lastError: string | undefined;
  reconciles = 0;

  constructor(private readonly opts: PodNetSourceOptions) {
    this.log = opts.log ?? nolog;
  }

  // ---- events (informers)

  handleNetwork(o: K8sNodeNetwork): void {
    this.networks.set(o.metadata.name ?? '', o);
    this.changed();
  }
  handleNetworkDelete(o: K8sNodeNetwork): void {
    if (this.networks.delete(o.metadata.name ?? '')) this.changed();
  }
  handleConfig(o: K8sPodNetworkConfig): void {
    this.configs.set(keyOf(o.metadata), o);
    this.changed();
  }
  handleConfigDelete(o: K8sPodNetworkConfig): void {
    if (this.configs.delete(keyOf(o.metadata))) this.changed();
  }
  handleNamespace(o: K8sNamespaceLabels): void {
    const name = o.metadata.name ?? '';
    const labels = o.metadata.labels ?? {};
    const prev = this.namespaces.get(name);
    this.namespaces.set(name, labels);
    if (!prev || JSON.stringify(prev) !== JSON.stringify(labels)) this.changed();
  }
  handleNamespaceDelete(o: K8sNamespaceLabels): void {
    if (this.namespaces.delete(o.metadata.name ?? '')) this.changed();
  }
  handlePod(o: K8sPodNetPod): void {
    const key = keyOf(o.metadata);
    const prev = this.pods.get(key);
    this.pods.set(key, o);
    // Status-only updates (the kubelet's) change nothing here but the addresses.
    if (!prev || JSON.stringify(prev.metadata.labels) !== JSON.stringify(o.metadata.labels) || prev.metadata.uid !== o.metadata.uid
      || !!prev.metadata.deletionTimestamp !== !!o.metadata.deletionTimestamp || prev.spec?.hostNetwork !== o.spec?.hostNetwork
      || prev.metadata.annotations?.[NETWORK_STATUS_ANNOTATION] !== o.metadata.annotations?.[NETWORK_STATUS_ANNOTATION]) this.changed();
  }
  handlePodDelete(o: K8sPodNetPod): void {
    if (this.pods.delete(keyOf(o.metadata))) this.changed();
  }

  markSynced(r: PodNetResource): void {
    if (this.synced.has(r)) return;
    this.synced.add(r);
    if (this.isSynced) for (const w of this.waiters.splice(0)) w();
    this.changed();
  }

  /** A CRD that is not installed (404): no objects of that kind; the informer keeps retrying. */
  kindNotInstalled(kind: PodNetKind): void {
    if (!this.notInstalled.has(kind)) {
      this.notInstalled.add(kind);
      this.log.warn({ resource: kind }, 'pod networks: this CRD is not installed (deploy/ has it); treated as empty, retried');
    }
    this.markSynced(kind);
  }

  get isSynced(): boolean {
    return PODNET_KINDS.every((k) => this.synced.has(k));
  }

  /** Undefined when ready, else why not (for /readyz: never blocks the agent, see agent-k8s.ts). */
  notReady(): string | undefined {
    const missing = PODNET_KINDS.filter((k) => !this.synced.has(k));
    return missing.length ? `pod network informers not synced: ${missing.join(', ')}` : undefined;
  }

  // ---- CNI

  /**
   * CNI ADD succeeded (agent main thread, before the answer): remembers the sandbox, and
   * when a config asks for interfaces for this pod, makes them now. Resolves when done;
   * the caller bounds the wait (cni-server.ts) and answers anyway: the reconciler finishes.
   * Never throws for the pod's sake: failures go to the status and are retried.
   */
  async podAdded(a: CniAddInfo): Promise<{ interfaces: number; failed: number }> {
    const t0 = performance.now();
    const key = `${a.namespace}/${a.name}`;
    this.sandboxes.set(key, { pod: { namespace: a.namespace, name: a.name, uid: a.uid ?? '' }, containerId: a.containerId, netns: a.netns, ifname: a.ifname, ips: a.ips });
    if (this.closed) return { interfaces: 0, failed: 0 };
    if (!this.isSynced) {
      // Just started (or the apiserver is away): wait a little for the lists, not for ever:
      // every pod's start would wait the CNI server's whole bound. The reconciler catches up.
      let timer: NodeJS.Timeout | undefined;
      await new Promise<void>((r) => {
        this.waiters.push(r);
        timer = setTimeout(r, this.opts.syncWaitMs ?? 1000);
      });
      clearTimeout(timer);
      if (!this.isSynced) {
        this.log.warn({ pod: key, notReady: this.notReady() }, 'pod networks: CNI ADD answered before the informers listed; the reconciler adds the pod\'s interfaces later');
        return { interfaces: 0, failed: 0 };
      }
    }
    const cached = this.pods.get(key);
    if (!cached || (a.uid && cached.metadata.uid !== a.uid)) {
      // The watch lags the kubelet (an agent just started, a slow apiserver): ask.
      try {
        const got = await this.opts.api.getPod(a.namespace, a.name);
        if (got && (!a.uid || got.metadata.uid === a.uid)) this.pods.set(key, slimPodNetPod(got));
      } catch (e) {
        this.log.warn({ pod: key, err: messageOf(e) }, 'pod networks: reading the pod at CNI ADD failed; the reconciler retries');
      }
    }
    let r = { interfaces: 0, failed: 0 };
    if (this.pods.has(key)) {
      this.desired = this.computeDesired();
      const out = this.syncPod(key, this.desired);
      if (out) {
        r = { interfaces: out.results.filter((x) => x.ok).length, failed: out.results.filter((x) => !x.ok).length };
      }
    }
    this.opts.metrics?.cniAdd((performance.now() - t0) / 1000, r.interfaces);
    if (r.interfaces || r.failed) this.log.info({ pod: key, ...r, ms: Math.round((performance.now() - t0) * 100) / 100 }, 'pod networks: interfaces made during CNI ADD');
    this.changed(); // status, annotation, events
    return r;
  }

  /** CNI DEL: the plugin released the container's links and addresses; forget it here. */
  podDeleted(containerId: string): void {
    for (const [key, sb] of this.sandboxes) {
      if (sb.containerId !== containerId) continue;
      this.sandboxes.delete(key);
      this.outcomes.delete(key);
      this.changed();
    }
  }

  // ---- reconciling

  private changed(): void {
    this.pending = true;
    this.schedule(this.opts.coalesceMs ?? 20);
  }

  private schedule(ms: number): void {
    if (this.closed || this.timer || !this.isSynced) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.reconcile();
    }, ms);
  }

  /** Starts the periodic full reconcile (the agent; tests call reconcile() themselves). */
  start(): void {
    const every = this.opts.resyncMs ?? 60_000;
    this.resyncTimer = setInterval(() => {
      this.full = true;
      this.changed();
    }, every);
    this.resyncTimer.unref();
  }

  /** One reconcile now (after the one running, if any). Resolves when its writes are done. */
  async reconcile(): Promise<void> {
    while (this.running) await this.running;
    if (this.closed || !this.isSynced) return;
    this.pending = false;
    this.running = this.reconcileOnce().finally(() => (this.running = undefined));
    await this.running;
    if (this.pending) this.schedule(this.opts.coalesceMs ?? 20);
  }

  private parseAll(): { networks: NodeNetwork[]; configs: PodNetworkConfig[] } {
    const networks: NodeNetwork[] = [];
    const configs: PodNetworkConfig[] = [];
    this.networkProblems = new Map();
    this.configProblems = new Map();
    for (const [name, o] of this.networks) {
      const r = this.opts.parse.network(o);
      if (r.value) networks.push(r.value);
      if (r.problems.length) this.networkProblems.set(name, r.problems);
    }
    for (const [key, o] of this.configs) {
      const r = this.opts.parse.config(o);
      if (r.value) configs.push(r.value);
      if (r.problems.length) this.configProblems.set(key, r.problems);
    }
    return { networks, configs };
  }

  private computeDesired(): DesiredState {
    const { networks, configs } = this.parseAll();
    const pods: PodInfo[] = [];
    for (const p of this.pods.values()) {
      if (p.spec?.nodeName && p.spec.nodeName !== this.opts.nodeName) continue;
      pods.push({
        namespace: p.metadata.namespace ?? '', name: p.metadata.name ?? '', uid: p.metadata.uid ?? '',
        labels: p.metadata.labels ?? {}, hostNetwork: p.spec?.hostNetwork ?? false, deleting: !!p.metadata.deletionTimestamp,
      });
    }
    // A config being deleted asks for nothing: its interfaces go, then its finalizer.
    const attached = new Map<string, { ifname: string; network: string }[]>();
    for (const [key, out] of this.outcomes) {
      const have = out.results.flatMap((r) => (r.ok ? [{ ifname: r.ifname, network: r.applied.network }] : []));
      if (have.length) attached.set(key, have);
    }
    const desired = this.opts.resolve({
      networks, configs: configs.filter((c) => !c.deleting), namespaces: this.namespaces, pods, clusterCidrs: this.opts.clusterCidrs, attached,
    });
    for (const [k, ps] of desired.configProblems) if (ps.length) this.configProblems.set(k, [...(this.configProblems.get(k) ?? []), ...ps]);
    for (const [k, ps] of desired.networkProblems) if (ps.length) this.networkProblems.set(k, [...(this.networkProblems.get(k) ?? []), ...ps]);
    return desired;
  }

  /** Makes one pod's interfaces what `desired` says (synchronous: the kernel side). */
  private syncPod(key: string, desired: DesiredState): PodOutcome | undefined {
    const sb = this.sandboxes.get(key);
    if (!sb) return undefined;
    const d = desired.pods.get(key);
    const pod = this.pods.get(key);
    // A sandbox of an older pod of the same name (a StatefulSet's): not this pod's.
    if (pod && sb.pod.uid && pod.metadata.uid && pod.metadata.uid !== sb.pod.uid) return undefined;
    const prev = this.outcomes.get(key);
    const want = d?.interfaces ?? [];
    if (!want.length && !prev?.results.length && !this.full) return prev;
    const fingerprint = JSON.stringify([sb.containerId, sb.netns, want]);
    if (!this.full && prev?.synced === fingerprint && prev.results.every((r) => r.ok)) return prev;
    const ready: typeof want = [];
    const results: InterfaceResult[] = [];
    for (const w of want) {
      const failure = this.networkFailures.get(w.network.name);
      if (failure) results.push({ ifname: w.ifname, ok: false, reason: REASONS.applyFailed, message: `network ${w.network.name}: ${failure}` });
      else ready.push(w);
    }
    try {
      results.push(...this.opts.applier.sync(sb, ready));
    } catch (e) {
      // The applier reports per interface; a throw is the whole pod (its netns unusable, a bug).
      for (const w of ready) results.push({ ifname: w.ifname, ok: false, reason: REASONS.applyFailed, message: messageOf(e) });
    }
    const out: PodOutcome = { results, want: new Map(want.map((w) => [w.ifname, { config: keyOf(w.config), network: w.network.name }])), synced: fingerprint };
    for (const r of results) if (!r.ok) this.opts.metrics?.failure(r.reason);
    if (results.length || want.length) this.outcomes.set(key, out);
    else this.outcomes.delete(key);
    return out;
  }

  private ensureNetworks(inUse: Map<string, ResolvedNetwork>): void {
    this.networkFailures = new Map();
    for (const [name, net] of inUse) {
      try {
        this.opts.applier.ensureNetwork(net);
      } catch (e) {
        this.networkFailures.set(name, messageOf(e));
        this.opts.metrics?.failure(REASONS.applyFailed);
        this.log.error({ network: name, err: messageOf(e) }, 'pod networks: setting the network up failed; retried');
      }
    }
  }

  /** The kernel part: synchronous, whole. */
  private applyKernel(): { failed: number } {
    const full = this.full;
    if (full && this.opts.listSandboxes) {
      let listed: PodSandbox[] = [];
      try {
        listed = this.opts.listSandboxes();
      } catch (e) {
        this.log.error({ err: messageOf(e) }, 'pod networks: reading the IPAM records failed');
      }
      const live = new Set<string>();
      for (const s of listed) {
        live.add(s.containerId);
        const key = keyOf(s.pod);
        const known = this.sandboxes.get(key);
        if (!known || known.containerId !== s.containerId) {
          // The records are the truth at a restart; an ADD seen since is as new (same container).
          if (!known) this.sandboxes.set(key, { ...s });
        }
      }
      for (const [key, sb] of this.sandboxes) if (!live.has(sb.containerId)) { this.sandboxes.delete(key); this.outcomes.delete(key); }
      try {
        const rep = this.opts.applier.gc(live);
        if (rep.links.length || rep.addresses.length) this.log.info({ ...rep }, 'pod networks: GC removed what no live container owns');
      } catch (e) {
        this.log.error({ err: messageOf(e) }, 'pod networks: GC failed');
      }
    }
    if (full) {
      // What the kernel has (a restart: nothing known yet): users of networks being deleted, and what to compare with.
      for (const [key, sb] of this.sandboxes) {
        if (this.outcomes.has(key)) continue;
        let have: AppliedInterface[] = [];
        try {
          have = this.opts.applier.list(sb);
        } catch (e) {
          this.log.warn({ pod: key, err: messageOf(e) }, 'pod networks: reading the pod\'s interfaces failed');
        }
        if (have.length) {
          // Already there before this agent: no new "Applied" event for them.
          for (const a of have) this.lastEvent.set(`${key}/${a.ifname}`, `ok ${a.address}`);
          this.outcomes.set(key, {
            results: have.map((a) => ({ ifname: a.ifname, ok: true as const, applied: a })),
            want: new Map(have.map((a) => [a.ifname, { config: keyOf(a.config), network: a.network }])),
          });
        }
      }
    }
    const desired = this.computeDesired();
    this.desired = desired;
    this.ensureNetworks(desired.networksInUse);
    let failed = 0;
    for (const key of new Set([...this.sandboxes.keys(), ...this.outcomes.keys()])) {
      const out = this.syncPod(key, desired);
      failed += out?.results.filter((r) => !r.ok).length ?? 0;
    }
    const inUse = new Set(desired.networksInUse.keys());
    for (const out of this.outcomes.values()) for (const r of out.results) if (r.ok) inUse.add(r.applied.network);
    try {
      const rep = this.opts.applier.pruneNetworks(inUse);
      if (rep.bridges.length || rep.links.length) this.log.info({ ...rep }, 'pod networks: removed what no network in use needs');
    } catch (e) {
      this.log.error({ err: messageOf(e) }, 'pod networks: pruning networks failed');
    }
    this.full = false;
    let n = 0;
    for (const out of this.outcomes.values()) n += out.results.filter((r) => r.ok).length;
    this.opts.metrics?.interfaces(n);
    return { failed: failed + this.networkFailures.size };
  }

  private async reconcileOnce(): Promise<void> {
    const t0 = performance.now();
    let retry = false;
    try {
      const { failed } = this.applyKernel();
      retry = failed > 0;
      const writesOk = await this.writeBack();
      retry ||= !writesOk;
      this.lastError = undefined;
      this.reconciles++;
      this.opts.metrics?.reconcile('ok', (performance.now() - t0) / 1000);
    } catch (e) {
      retry = true;
      this.lastError = messageOf(e);
      this.opts.metrics?.reconcile('error', (performance.now() - t0) / 1000);
      this.log.error({ err: this.lastError }, 'pod networks: reconcile failed; retried');
    }
    if (retry && !this.closed) {
      setTimeout(() => this.changed(), this.opts.retryMs ?? 2000).unref();
    }
  }

  // ---- the apiserver side

  /** This node's entries of a config's status. */
  private entriesOf(configKey: string): PodInterfaceStatus[] {
    const out: PodInterfaceStatus[] = [];
    const node = this.opts.nodeName;
    const desired = this.desired;
    if (!desired) return out;
    for (const [podKey, d] of desired.pods) {
      const name = d.pod.name;
      for (const w of d.interfaces) {
        if (keyOf(w.config) !== configKey) continue;
        const res = this.outcomes.get(podKey)?.results.find((r) => r.ifname === w.ifname);
        if (!this.sandboxes.has(podKey) || !res) {
          out.push({ name, node, interface: w.ifname, network: w.network.name, ready: false, message: PENDING_MESSAGE });
        } else if (res.ok) {
          out.push({ name, node, interface: w.ifname, network: w.network.name, address: res.applied.address, ready: true, message: '' });
        } else {
          out.push({ name, node, interface: w.ifname, network: w.network.name, ready: false, message: `${res.reason}: ${res.message}` });
        }
      }
    }
    return out;
  }

  /** Interfaces of a config still present on this node (its finalizer waits for none). */
  private appliedOf(configKey: string): number {
    let n = 0;
    for (const out of this.outcomes.values()) for (const r of out.results) if (r.ok && keyOf(r.applied.config) === configKey) n++;
    return n;
  }

  /** Runs every write; false when one failed (the reconcile is retried). */
  private async writeBack(): Promise<boolean> {
    const jobs: Promise<boolean>[] = [];
    for (const [key, o] of this.configs) jobs.push(this.guard(`config ${key}`, () => this.writeConfig(key, o)));
    for (const [name, o] of this.networks) jobs.push(this.guard(`network ${name}`, () => this.writeNetwork(name, o)));
    jobs.push(this.guard('events', () => this.sendEvents()));
    for (const key of new Set([...this.outcomes.keys(), ...this.pods.keys()])) jobs.push(this.guard(`pod ${key}`, () => this.writeAnnotation(key)));
    const r = await Promise.all(jobs);
    return r.every(Boolean);
  }

  private async guard(what: string, job: () => Promise<void>): Promise<boolean> {
    try {
      await job();
      return true;
    } catch (e) {
      if (this.closed) return true;
      this.log.warn({ what, err: messageOf(e) }, 'pod networks: writing to the apiserver failed; retried');
      return false;
    }
  }

  /** Re-reads the object and retries a write that lost a resourceVersion race (409). */
  private async withConflicts<T extends { metadata: { resourceVersion?: string } }>(
    initial: T, reread: () => Promise<T | undefined>, write: (o: T) => Promise<T | undefined | void>, onWritten?: (o: T) => void,
  ): Promise<void> {
    let o: T | undefined = initial;
    for (let attempt = 0; o && attempt < 5; attempt++) {
      try {
        const written = await write(o);
        if (written && onWritten) onWritten(written);
        return;
      } catch (e) {
        if (!(e instanceof ApiError) || e.statusCode !== 409) {
          if (e instanceof ApiError && e.statusCode === 404) return; // gone meanwhile
          throw e;
        }
        o = await reread();
      }
    }
    if (o) throw new Error('gave up after 5 resourceVersion conflicts');
  }

  private async writeConfig(key: string, obj: K8sPodNetworkConfig): Promise<void> {
    const ns = obj.metadata.namespace ?? '';
    const name = obj.metadata.name ?? '';
    const deleting = !!obj.metadata.deletionTimestamp;
    const has = obj.metadata.finalizers?.includes(PODNET_FINALIZER) ?? false;
    const mine = this.entriesOf(key);
    const wants = mine.length > 0 && !deleting;
    const reread = () => this.opts.api.getConfig(ns, name);
    // Finalizer first, so a deletion from now on waits for the cleanup.
    if (wants && !has) {
      await this.withConflicts(obj, reread, async (o) => {
        const f = o.metadata.finalizers ?? [];
        if (f.includes(PODNET_FINALIZER) || o.metadata.deletionTimestamp) return;
        await this.opts.api.setFinalizers('podnetworkconfigs', ns, name, o.metadata.resourceVersion ?? '', [...f, PODNET_FINALIZER]);
      });
      return; // the watch brings the new object; its status is written then
    }
    if (deleting) {
      if (has && this.appliedOf(key) === 0) {
        await this.withConflicts(obj, reread, async (o) => {
          const f = o.metadata.finalizers ?? [];
          if (!f.includes(PODNET_FINALIZER)) return;
          await this.opts.api.setFinalizers('podnetworkconfigs', ns, name, o.metadata.resourceVersion ?? '', f.filter((x) => x !== PODNET_FINALIZER));
        });
        this.log.info({ config: key }, 'pod networks: config deleted, its interfaces are gone on this node: finalizer removed');
      }
      return;
    }
    const problems = this.configProblems.get(key) ?? [];
    await this.withConflicts(obj, reread, async (o) => {
      const next = configStatus({
        generation: o.metadata.generation ?? 0, node: this.opts.nodeName, problems, mine, current: o.status, now: this.now(),
      });
      if (sameConfigStatus(o.status, next)) return;
      return this.opts.api.patchConfigStatus(ns, name, o.metadata.resourceVersion ?? '', next);
    }, (written) => {
      // Until the watch brings it: the next reconcile compares against what was written.
      const cur = this.configs.get(key);
      if (cur && cur.metadata.uid === written.metadata.uid) this.configs.set(key, { ...cur, metadata: { ...cur.metadata, resourceVersion: written.metadata.resourceVersion }, ...(written.status ? { status: written.status } : {}) });
    });
  }

  /**
   * Who holds a network on this node: the pods with an interface on it and the configs that gave
   * them one. A config that merely names the network is not a user: otherwise any tenant, even
   * one the network's namespaceSelector never admitted, could keep the admin's deletion waiting
   * forever by writing a PodNetworkConfig.
   */
  private networkUsers(name: string): string[] {
    const users = new Set<string>();
    for (const [podKey, out] of this.outcomes) {
      for (const r of out.results) {
        if (!r.ok || r.applied.network !== name) continue;
        users.add(podKey);
        users.add(`${r.applied.config.namespace}/${r.applied.config.name}`);
      }
    }
    return [...users].sort();
  }

  private async writeNetwork(name: string, obj: K8sNodeNetwork): Promise<void> {
    const deleting = !!obj.metadata.deletionTimestamp;
    const has = obj.metadata.finalizers?.includes(PODNET_FINALIZER) ?? false;
    const users = this.networkUsers(name);
    const reread = () => this.opts.api.getNetwork(name);
    if (!deleting && !has && users.length) {
      await this.withConflicts(obj, reread, async (o) => {
        const f = o.metadata.finalizers ?? [];
        if (f.includes(PODNET_FINALIZER) || o.metadata.deletionTimestamp) return;
        await this.opts.api.setFinalizers('nodenetworks', undefined, name, o.metadata.resourceVersion ?? '', [...f, PODNET_FINALIZER]);
      });
      return;
    }
    if (deleting && has && users.length === 0) {
      await this.withConflicts(obj, reread, async (o) => {
        const f = o.metadata.finalizers ?? [];
        if (!f.includes(PODNET_FINALIZER)) return;
        await this.opts.api.setFinalizers('nodenetworks', undefined, name, o.metadata.resourceVersion ?? '', f.filter((x) => x !== PODNET_FINALIZER));
      });
      this.log.info({ network: name }, 'pod networks: network deleted and unused on this node: finalizer removed');
      return;
    }
    const problems = this.networkProblems.get(name) ?? [];
    const failure = this.networkFailures.get(name);
    await this.withConflicts(obj, reread, async (o) => {
      const next = networkStatus({
        generation: o.metadata.generation ?? 0, deleting: !!o.metadata.deletionTimestamp, problems, users,
        ...(failure ? { failure } : {}), current: o.status, now: this.now(),
      });
      if (sameNetworkStatus(o.status, next)) return;
      return this.opts.api.patchNetworkStatus(name, o.metadata.resourceVersion ?? '', next);
    }, (written) => {
      const cur = this.networks.get(name);
      if (cur && cur.metadata.uid === written.metadata.uid) this.networks.set(name, { ...cur, metadata: { ...cur.metadata, resourceVersion: written.metadata.resourceVersion }, ...(written.status ? { status: written.status } : {}) });
    });
  }

  /** One event per interface whose outcome changed (applied, or failed with a new message). */
  private async sendEvents(): Promise<void> {
    const seen = new Set<string>();
    const sends: Promise<void>[] = [];
    for (const [podKey, out] of this.outcomes) {
      for (const r of out.results) {
        const id = `${podKey}/${r.ifname}`;
        seen.add(id);
        const state = r.ok ? `ok ${r.applied.address}` : `${r.reason}: ${r.message}`;
        if (this.lastEvent.get(id) === state) continue;
        const cfgKey = r.ok ? keyOf(r.applied.config) : out.want.get(r.ifname)?.config;
        const cfg = cfgKey ? this.configs.get(cfgKey) : undefined;
        if (!cfg) continue;
        this.lastEvent.set(id, state);
        const [, pod] = podKey.split('/');
        sends.push(this.opts.api.createEvent({
          kind: 'PodNetworkConfig', namespace: cfg.metadata.namespace ?? '', name: cfg.metadata.name ?? '', ...(cfg.metadata.uid ? { uid: cfg.metadata.uid } : {}),
          type: r.ok ? 'Normal' : 'Warning',
          reason: r.ok ? 'Applied' : 'ApplyFailed',
          message: r.ok ? `pod ${pod}: ${r.ifname} on ${r.applied.network} with ${r.applied.address} (node ${this.opts.nodeName})` : `pod ${pod}: ${r.ifname}: ${r.reason}: ${r.message} (node ${this.opts.nodeName}; retried)`,
        }, this.opts.nodeName).catch((e: unknown) => {
          this.lastEvent.delete(id);
          throw e;
        }));
      }
    }
    for (const id of [...this.lastEvent.keys()]) if (!seen.has(id)) this.lastEvent.delete(id);
    await Promise.all(sends);
  }

  private async writeAnnotation(podKey: string): Promise<void> {
    const pod = this.pods.get(podKey);
    if (!pod || pod.metadata.deletionTimestamp) return;
    const current = pod.metadata.annotations?.[NETWORK_STATUS_ANNOTATION];
    const applied: AppliedInterface[] = [];
    for (const r of this.outcomes.get(podKey)?.results ?? []) if (r.ok) applied.push(r.applied);
    if (!applied.length) {
      // Ours to remove only if it lists nothing but the primary network (another component may own it otherwise).
      if (current !== undefined && this.onlyPrimary(current)) {
        await this.opts.api.patchPodAnnotation(pod.metadata.namespace ?? '', pod.metadata.name ?? '', null);
        pod.metadata.annotations = {};
      }
      return;
    }
    const sb = this.sandboxes.get(podKey);
    const ips = sb?.ips?.length ? sb.ips : (pod.status?.podIPs ?? []).map((p) => p.ip);
    const value = networkStatusAnnotation({ network: this.opts.primaryNetwork ?? 'patu', ifname: sb?.ifname ?? 'eth0', ips }, applied);
    if (value === current) return;
    await this.opts.api.patchPodAnnotation(pod.metadata.namespace ?? '', pod.metadata.name ?? '', value);
    pod.metadata.annotations = { [NETWORK_STATUS_ANNOTATION]: value };
  }

  private onlyPrimary(value: string): boolean {
    try {
      const v = JSON.parse(value) as { default?: boolean }[];
      return Array.isArray(v) && v.every((e) => e.default === true);
    } catch {
      return false;
    }
  }

  private now(): string {
    return this.opts.now?.() ?? new Date().toISOString().replace(/\.\d+Z$/, 'Z');
  }

  // ---- views

  /** What each pod of this node has, as the last sync left it (`patu status` through the agent, tests). */
  view(): PodNetView[] {
    const out: PodNetView[] = [];
    for (const [key, o] of this.outcomes) {
      const sb = this.sandboxes.get(key);
      out.push({
        pod: key,
        containerId: sb?.containerId ?? '',
        interfaces: o.results.map((r) => r.ok
          ? { ifname: r.ifname, network: r.applied.network, config: keyOf(r.applied.config), address: r.applied.address, ready: true, message: '' }
          : { ifname: r.ifname, network: o.want.get(r.ifname)?.network ?? '', config: o.want.get(r.ifname)?.config ?? '', ready: false, message: `${r.reason}: ${r.message}` }),
      });
    }
    return out.sort((a, b) => a.pod.localeCompare(b.pod));
  }

  /** Problems by config key (tests and logs). */
  problems(): Map<string, string> {
    return new Map([...this.configProblems].map(([k, ps]) => [k, describeProblems(ps)]));
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    clearInterval(this.resyncTimer);
    for (const w of this.waiters.splice(0)) w();
    while (this.running) await this.running;
  }
}
