// The pod network reconciler (src/k8s/podnet-source.ts) against an in-memory applier and
// apiserver: the kernel and the apiserver are the integration test's
// (test/integration/podnet-agent.test.ts); here, the decisions: what is synced when, the
// finalizers' order, the status entries and conditions, conflicts retried, events only on
// change, the annotation, the ADD path (pod fetched when the watch lags), restart via the
// records (GC with the live containers), a missing CRD.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { K8sPodNetSource, type DesiredInput, type PodNetParsers } from '../../src/k8s/podnet-source.js';
import type { EventSpec, K8sNodeNetwork, K8sPodNetPod, K8sPodNetworkConfig, PodNetApi, PodNetKind } from '../../src/k8s/podnet-api.js';
import { ApiError } from '../../src/k8s/informers.js';
import {
  NETWORK_STATUS_ANNOTATION, PODNET_FINALIZER, REASONS,
  type AppliedInterface, type CleanupReport, type DesiredInterface, type DesiredState, type InterfaceResult, type NodeNetwork,
  type NodeNetworkSpec, type PodNetApplier, type PodNetworkConfig, type PodNetworkConfigSpec, type PodSandbox, type Problem, type ResolvedNetwork,
} from '../../src/podnet/types.js';
import { configStatus, networkStatusAnnotation, PENDING_MESSAGE } from '../../src/k8s/podnet-status.js';

const NODE = 'n1';
const empty = (): CleanupReport => ({ links: [], addresses: [], bridges: [] });

/** The kernel as a map: containerId -> interfaces; addresses from a counter per network. */
class MemApplier implements PodNetApplier {
  readonly have = new Map<string, AppliedInterface[]>();
  readonly calls: string[] = [];
  readonly networks = new Set<string>();
  failNetwork = new Set<string>();
  private next = 10;
  sync(sb: PodSandbox, want: DesiredInterface[]): InterfaceResult[] {
    this.calls.push(`sync ${sb.pod.name} ${want.map((w) => w.ifname).join(',')}`);
    const cur = this.have.get(sb.containerId) ?? [];
    const out: InterfaceResult[] = [];
    const kept: AppliedInterface[] = [];
    for (const w of want) {
      if (this.failNetwork.has(w.network.name)) {
        out.push({ ifname: w.ifname, ok: false, reason: REASONS.applyFailed, message: 'RTM_NEWLINK: EPERM' });
        continue;
      }
      let a = cur.find((c) => c.ifname === w.ifname && c.network === w.network.name);
      a ??= { ifname: w.ifname, network: w.network.name, address: w.address ?? `10.210.0.${this.next++}/24`, mac: '02:00:00:00:00:01', mtu: w.mtu, hostIfname: `pn${this.next}`, config: w.config };
      kept.push(a);
      out.push({ ifname: w.ifname, ok: true, applied: a });
    }
    if (kept.length) this.have.set(sb.containerId, kept);
    else this.have.delete(sb.containerId);
    return out;
  }
  list(sb: PodSandbox): AppliedInterface[] {
    return this.have.get(sb.containerId) ?? [];
  }
  release(containerId: string): CleanupReport {
    this.have.delete(containerId);
    return empty();
  }
  ensureNetwork(net: ResolvedNetwork): void {
    if (this.failNetwork.has(`ensure:${net.name}`)) throw new Error('bridge: EPERM');
    this.networks.add(net.name);
  }
  pruneNetworks(inUse: ReadonlySet<string>): CleanupReport {
    const r = empty();
    for (const n of [...this.networks]) if (!inUse.has(n)) { this.networks.delete(n); r.bridges.push(n); }
    return r;
  }
  gc(live: ReadonlySet<string>): CleanupReport {
    const r = empty();
    for (const id of [...this.have.keys()]) if (!live.has(id)) { this.have.delete(id); r.links.push(id); }
    return r;
  }
}

/** An apiserver holding the two kinds: resourceVersions, finalizers, status; a 409 on a stale one. */
class MemApi implements PodNetApi {
  rv = 100;
  readonly configs = new Map<string, K8sPodNetworkConfig>();
  readonly networks = new Map<string, K8sNodeNetwork>();
  readonly pods = new Map<string, K8sPodNetPod>();
  readonly events: EventSpec[] = [];
  readonly annotations = new Map<string, string | null>();
  statusWrites = 0;
  conflictsToInject = 0;
  async getPod(ns: string, name: string) { return this.pods.get(`${ns}/${name}`); }
  async getConfig(ns: string, name: string) { return structuredClone(this.configs.get(`${ns}/${name}`)); }
  async getNetwork(name: string) { return structuredClone(this.networks.get(name)); }
  private check(o: { metadata: { resourceVersion?: string } } | undefined, rv: string): void {
    if (!o) throw new ApiError(404, 'not found');
    if (this.conflictsToInject > 0) {
      this.conflictsToInject--;
      o.metadata.resourceVersion = String(++this.rv); // someone else wrote
    }
    if (o.metadata.resourceVersion !== rv) throw new ApiError(409, 'conflict');
    o.metadata.resourceVersion = String(++this.rv);
  }
  async patchConfigStatus(ns: string, name: string, rv: string, status: K8sPodNetworkConfig['status']) {
    const o = this.configs.get(`${ns}/${name}`);
    this.check(o, rv);
    this.statusWrites++;
    o!.status = structuredClone(status);
    return structuredClone(o!);
  }
  async patchNetworkStatus(name: string, rv: string, status: K8sNodeNetwork['status']) {
    const o = this.networks.get(name);
    this.check(o, rv);
    this.statusWrites++;
    o!.status = structuredClone(status);
    return structuredClone(o!);
  }
  async setFinalizers(kind: PodNetKind, ns: string | undefined, name: string, rv: string, finalizers: string[]) {
    const m = kind === 'nodenetworks' ? this.networks : this.configs;
    const key = kind === 'nodenetworks' ? name : `${ns}/${name}`;
    const o = m.get(key);
    this.check(o, rv);
    o!.metadata.finalizers = [...finalizers];
    if (o!.metadata.deletionTimestamp && finalizers.length === 0) m.delete(key);
  }
  async patchPodAnnotation(ns: string, name: string, value: string | null) { this.annotations.set(`${ns}/${name}`, value); }
  async createEvent(e: EventSpec) { this.events.push(e); }
}

const net = (name: string, spec: Partial<NodeNetworkSpec> = {}): K8sNodeNetwork => ({
  metadata: { name, uid: `uid-${name}`, generation: 1, resourceVersion: '1' },
  spec: { bridge: `br-${name}`, subnet: '10.210.0.0/24', namespaceSelector: {}, ...spec },
});
const cfg = (ns: string, name: string, spec: PodNetworkConfigSpec): K8sPodNetworkConfig => ({
  metadata: { name, namespace: ns, uid: `uid-${ns}-${name}`, generation: 1, resourceVersion: '1' },
  spec,
});
const pod = (ns: string, name: string, labels: Record<string, string>, uid = `uid-${name}`): K8sPodNetPod => ({
  metadata: { name, namespace: ns, uid, resourceVersion: '1', labels },
  spec: { nodeName: NODE, hostNetwork: false },
  status: { podIPs: [{ ip: '10.200.0.5' }] },
});

/** Parsers that trust their input (the real ones are validate.ts's); 'bad' specs get a problem. */
const parse: PodNetParsers = {
  network: (o) => ({
    value: { name: o.metadata.name!, uid: o.metadata.uid!, generation: o.metadata.generation!, deleting: !!o.metadata.deletionTimestamp, spec: o.spec as NodeNetworkSpec },
    problems: [],
  }),
  config: (o) => {
    const spec = o.spec as PodNetworkConfigSpec;
    const bad = spec.interfaces.findIndex((i) => i.name === 'eth0');
    if (bad >= 0) return { problems: [{ field: `spec.interfaces[${bad}].name`, reason: REASONS.invalidSpec, message: 'eth0 is the primary network\'s' }] };
    return {
      value: { namespace: o.metadata.namespace!, name: o.metadata.name!, uid: o.metadata.uid!, generation: o.metadata.generation!, deleting: !!o.metadata.deletionTimestamp, spec },
      problems: [],
    };
  },
};

/** A small resolver with desired.ts's shape: matchLabels only, unknown networks reported. */
function resolve(i: DesiredInput): DesiredState {
  const nets = new Map(i.networks.map((n) => [n.name, n] as const));
  const out: DesiredState = { pods: new Map(), networksInUse: new Map(), configProblems: new Map(), networkProblems: new Map() };
  for (const c of i.configs) {
    const problems: Problem[] = [];
    c.spec.interfaces.forEach((f, idx) => { if (!nets.has(f.network)) problems.push({ field: `spec.interfaces[${idx}].network`, reason: REASONS.unknownNetwork, message: `no NodeNetwork ${f.network}` }); });
    if (problems.length) { out.configProblems.set(`${c.namespace}/${c.name}`, problems); continue; }
    for (const p of i.pods) {
      if (p.namespace !== c.namespace || p.hostNetwork) continue;
      if (!Object.entries(c.spec.podSelector.matchLabels ?? {}).every(([k, v]) => p.labels[k] === v)) continue;
      const key = `${p.namespace}/${p.name}`;
      const e = out.pods.get(key) ?? { pod: p, interfaces: [] };
      for (const f of c.spec.interfaces) {
        const n: NodeNetwork = nets.get(f.network)!;
        const rn: ResolvedNetwork = { name: n.name, bridge: n.spec.bridge!, subnet: n.spec.subnet, mtu: n.spec.mtu ?? 1500 };
        out.networksInUse.set(n.name, rn);
        e.interfaces.push({ config: { namespace: c.namespace, name: c.name }, ifname: f.name, network: rn, ...(f.address ? { address: f.address } : {}), mtu: f.mtu ?? rn.mtu, routes: f.routes ?? [], rules: f.rules ?? [] });
      }
      out.pods.set(key, e);
    }
  }
  return out;
}

function setup(o: { listSandboxes?: () => PodSandbox[] } = {}) {
  const applier = new MemApplier();
  const api = new MemApi();
  const src = new K8sPodNetSource({
    nodeName: NODE, applier, api, parse, resolve, clusterCidrs: ['10.200.0.0/16'], coalesceMs: 1, retryMs: 60_000,
    now: () => '2026-12-03T00:00:00Z', ...o,
  });
  /** Objects go to the apiserver and to the source (the watch's part). */
  const addNet = (n: K8sNodeNetwork) => { api.networks.set(n.metadata.name!, structuredClone(n)); src.handleNetwork(structuredClone(n)); };
  const addCfg = (c: K8sPodNetworkConfig) => { api.configs.set(`${c.metadata.namespace}/${c.metadata.name}`, structuredClone(c)); src.handleConfig(structuredClone(c)); };
  const addPod = (p: K8sPodNetPod) => { api.pods.set(`${p.metadata.namespace}/${p.metadata.name}`, p); src.handlePod(structuredClone(p)); };
  /** What a watch would deliver after the writes: the apiserver's objects. */
  const echo = () => {
    for (const n of api.networks.values()) src.handleNetwork(structuredClone(n));
    for (const c of api.configs.values()) src.handleConfig(structuredClone(c));
  };
  const syncAll = () => { for (const k of ['nodenetworks', 'podnetworkconfigs', 'namespaces', 'pods'] as const) src.markSynced(k); };
  const add = (ns: string, name: string, containerId: string, uid = `uid-${name}`) =>
    src.podAdded({ namespace: ns, name, uid, containerId, netns: `/run/netns/${containerId}`, ifname: 'eth0', ips: ['10.200.0.5'] });
  return { applier, api, src, addNet, addCfg, addPod, echo, syncAll, add };
}

const cnfSpec: PodNetworkConfigSpec = { podSelector: { matchLabels: { app: 'cnf' } }, interfaces: [{ name: 'net1', network: 'field' }] };

test('config before ADD: net1 is made during the ADD; finalizers, status, event and annotation follow', async () => {
  const t = setup();
  t.src.handleNamespace({ metadata: { name: 'team-a', labels: { tenant: 'a' } } });
  t.addNet(net('field'));
  t.addCfg(cfg('team-a', 'cnf', cnfSpec));
  t.addPod(pod('team-a', 'p1', { app: 'cnf' }));
  t.syncAll();
  const r = await t.add('team-a', 'p1', 'c1');
  assert.deepEqual(r, { interfaces: 1, failed: 0 });
  assert.equal(t.applier.have.get('c1')?.[0]?.ifname, 'net1', 'made before the ADD answered');
  await t.src.reconcile();
  assert.deepEqual(t.api.configs.get('team-a/cnf')!.metadata.finalizers, [PODNET_FINALIZER]);
  assert.deepEqual(t.api.networks.get('field')!.metadata.finalizers, [PODNET_FINALIZER]);
  t.echo();
  await t.src.reconcile();
  const st = t.api.configs.get('team-a/cnf')!.status!;
  assert.equal(st.conditions.find((c) => c.type === 'Ready')?.status, 'True');
  assert.deepEqual(st.pods, [{ name: 'p1', node: NODE, interface: 'net1', network: 'field', address: '10.210.0.10/24', ready: true, message: '' }]);
  assert.equal(st.observedGeneration, 1);
  const ns = t.api.networks.get('field')!.status!;
  assert.deepEqual(ns.users, ['team-a/cnf', 'team-a/p1']);
  assert.equal(t.api.events.filter((e) => e.reason === 'Applied').length, 1);
  const ann = JSON.parse(t.api.annotations.get('team-a/p1')!);
  assert.deepEqual(ann.map((e: { interface: string }) => e.interface), ['eth0', 'net1']);
  assert.equal(ann[0].default, true);
  assert.deepEqual(ann[1].ips, ['10.210.0.10']);

  // Nothing changed: nothing written, no event, the kernel untouched for pods without change.
  const writes = t.api.statusWrites;
  const syncs = t.applier.calls.length;
  t.echo();
  t.src.handleNamespace({ metadata: { name: 'team-a', labels: { tenant: 'a', more: 'x' } } });
  await t.src.reconcile();
  assert.equal(t.api.statusWrites, writes, 'status written only when it changed');
  assert.equal(t.applier.calls.length, syncs, 'an unchanged pod is not synced again (the periodic full reconcile does)');
  assert.equal(t.api.events.length, 1, 'events only on change');
});

test('existing pod gets net1 when the config appears; label removal takes it away; the network is pruned', async () => {
  const t = setup();
  t.src.handleNamespace({ metadata: { name: 'a', labels: {} } });
  t.addNet(net('field'));
  t.addPod(pod('a', 'p1', { app: 'cnf' }));
  t.syncAll();
  await t.add('a', 'p1', 'c1');
  assert.equal(t.applier.have.size, 0);
  t.addCfg(cfg('a', 'cnf', cnfSpec));
  await t.src.reconcile();
  assert.equal(t.applier.have.get('c1')?.length, 1);
  assert.ok(t.applier.networks.has('field'));
  t.addPod(pod('a', 'p1', {}));
  await t.src.reconcile();
  assert.equal(t.applier.have.size, 0, 'label removed: interfaces gone');
  assert.equal(t.applier.networks.size, 0, 'no pod uses the network: pruned');
});

test('config deleted: interfaces removed first, then the finalizer', async () => {
  const t = setup();
  t.src.handleNamespace({ metadata: { name: 'a' } });
  t.addNet(net('field'));
  t.addCfg(cfg('a', 'cnf', cnfSpec));
  t.addPod(pod('a', 'p1', { app: 'cnf' }));
  t.syncAll();
  await t.add('a', 'p1', 'c1');
  await t.src.reconcile();
  t.echo();
  const c = t.api.configs.get('a/cnf')!;
  c.metadata.deletionTimestamp = '2026-12-03T00:00:01Z';
  t.src.handleConfig(structuredClone(c));
  await t.src.reconcile();
  assert.equal(t.applier.have.size, 0, 'interfaces gone');
  assert.equal(t.api.configs.has('a/cnf'), false, 'finalizer removed: the apiserver deleted it');
});

test('NodeNetwork deleted while in use stays until nothing uses it, naming its users', async () => {
  const t = setup();
  t.src.handleNamespace({ metadata: { name: 'a' } });
  t.addNet(net('field'));
  t.addCfg(cfg('a', 'cnf', cnfSpec));
  t.addPod(pod('a', 'p1', { app: 'cnf' }));
  t.syncAll();
  await t.add('a', 'p1', 'c1');
  await t.src.reconcile();
  t.echo();
  const n = t.api.networks.get('field')!;
  n.metadata.deletionTimestamp = '2026-12-03T00:00:01Z';
  t.src.handleNetwork(structuredClone(n));
  await t.src.reconcile();
  const inUse = t.api.networks.get('field')!.status!.conditions.find((c) => c.type === 'InUse')!;
  assert.equal(inUse.status, 'True');
  assert.match(inUse.message, /deletion waits .*a\/cnf.*a\/p1/);
  assert.equal(t.applier.have.size, 1, 'the pod keeps its interface meanwhile');
  // The tenant deletes the config (no finalizer echo needed: the api holds it).
  t.echo();
  const c = t.api.configs.get('a/cnf')!;
  t.api.configs.delete('a/cnf');
  t.src.handleConfigDelete(c);
  await t.src.reconcile();
  t.echo();
  await t.src.reconcile();
  assert.equal(t.api.networks.has('field'), false, 'unused: finalizer removed, deleted');
});

test('bad input: parse problems and cross-object problems become conditions; nothing applied', async () => {
  const t = setup();
  t.src.handleNamespace({ metadata: { name: 'a' } });
  t.addNet(net('field'));
  t.addCfg(cfg('a', 'eth0', { podSelector: {}, interfaces: [{ name: 'eth0', network: 'field' }] }));
  t.addCfg(cfg('a', 'nonet', { podSelector: {}, interfaces: [{ name: 'net1', network: 'nowhere' }] }));
  t.addPod(pod('a', 'p1', {}));
  t.syncAll();
  await t.add('a', 'p1', 'c1');
  await t.src.reconcile();
  assert.equal(t.applier.have.size, 0);
  const r1 = t.api.configs.get('a/eth0')!.status!.conditions.find((c) => c.type === 'Ready')!;
  assert.deepEqual([r1.status, r1.reason], ['False', REASONS.invalidSpec]);
  assert.match(r1.message, /spec\.interfaces\[0\]\.name/);
  const r2 = t.api.configs.get('a/nonet')!.status!.conditions.find((c) => c.type === 'Degraded')!;
  assert.deepEqual([r2.status, r2.reason], ['True', REASONS.unknownNetwork]);
  assert.equal(t.api.configs.get('a/nonet')!.metadata.finalizers, undefined, 'not acted on: no finalizer');
});

test('a failed interface: Degraded ApplyFailed, a Warning event once, retried; eth0 untouched', async () => {
  const t = setup();
  t.src.handleNamespace({ metadata: { name: 'a' } });
  t.addNet(net('field'));
  t.addCfg(cfg('a', 'cnf', cnfSpec));
  t.addPod(pod('a', 'p1', { app: 'cnf' }));
  t.syncAll();
  t.applier.failNetwork.add('field');
  const r = await t.add('a', 'p1', 'c1');
  assert.deepEqual(r, { interfaces: 0, failed: 1 });
  await t.src.reconcile();
  t.echo();
  await t.src.reconcile();
  const st = t.api.configs.get('a/cnf')!.status!;
  const d = st.conditions.find((c) => c.type === 'Degraded')!;
  assert.deepEqual([d.status, d.reason], ['True', REASONS.applyFailed]);
  assert.match(st.pods[0]!.message, /EPERM/);
  assert.equal(t.api.events.filter((e) => e.type === 'Warning').length, 1);
  t.applier.failNetwork.clear();
  await t.src.reconcile();
  assert.equal(t.applier.have.get('c1')?.length, 1, 'retried and made');
});

test('ADD before the watch shows the pod: it is read from the apiserver', async () => {
  const t = setup();
  t.src.handleNamespace({ metadata: { name: 'a' } });
  t.addNet(net('field'));
  t.addCfg(cfg('a', 'cnf', cnfSpec));
  t.api.pods.set('a/p1', pod('a', 'p1', { app: 'cnf' }));
  t.syncAll();
  const r = await t.add('a', 'p1', 'c1');
  assert.equal(r.interfaces, 1);
});

test('pending pods (no sandbox yet) are listed not ready, PodPending; status conflicts are retried', async () => {
  const t = setup();
  t.src.handleNamespace({ metadata: { name: 'a' } });
  t.addNet(net('field'));
  t.addCfg(cfg('a', 'cnf', cnfSpec));
  t.addPod(pod('a', 'p1', { app: 'cnf' }));
  t.syncAll();
  await t.src.reconcile();
  t.echo();
  t.api.conflictsToInject = 2;
  await t.src.reconcile();
  const st = t.api.configs.get('a/cnf')!.status!;
  assert.equal(st.pods[0]!.message, PENDING_MESSAGE);
  assert.equal(st.conditions.find((c) => c.type === 'Ready')!.reason, REASONS.podPending);
  assert.equal(st.conditions.find((c) => c.type === 'Degraded')!.status, 'False', 'waiting is not a failure');
});

test('restart: sandboxes come from the records; GC gets the live set; a synced pod keeps what it has', async () => {
  const sb: PodSandbox = { pod: { namespace: 'a', name: 'p1', uid: 'uid-p1' }, containerId: 'c1', netns: '/run/netns/c1' };
  const t = setup({ listSandboxes: () => [sb] });
  // What the previous agent left: c1's net1 and a dead container's link.
  t.applier.have.set('c1', [{ ifname: 'net1', network: 'field', address: '10.210.0.77/24', mac: 'm', mtu: 1500, hostIfname: 'x', config: { namespace: 'a', name: 'cnf' } }]);
  t.applier.have.set('dead', [{ ifname: 'net1', network: 'field', address: '10.210.0.78/24', mac: 'm', mtu: 1500, hostIfname: 'y', config: { namespace: 'a', name: 'cnf' } }]);
  t.src.handleNamespace({ metadata: { name: 'a' } });
  t.addNet(net('field'));
  t.addCfg(cfg('a', 'cnf', cnfSpec));
  t.addPod(pod('a', 'p1', { app: 'cnf' }));
  t.syncAll();
  await t.src.reconcile();
  assert.equal(t.applier.have.has('dead'), false, 'GC took the dead container');
  assert.equal(t.applier.have.get('c1')![0]!.address, '10.210.0.77/24', 'the same interface, not a new one');
});

test('CNI DEL forgets the sandbox; a pod with another uid (name reused) gets nothing from the old sandbox', async () => {
  const t = setup();
  t.src.handleNamespace({ metadata: { name: 'a' } });
  t.addNet(net('field'));
  t.addCfg(cfg('a', 'cnf', cnfSpec));
  t.addPod(pod('a', 'p1', { app: 'cnf' }));
  t.syncAll();
  await t.add('a', 'p1', 'c1');
  t.applier.release('c1'); // the plugin's DEL
  t.src.podDeleted('c1');
  await t.src.reconcile();
  assert.deepEqual(t.src.view(), []);
  t.addPod(pod('a', 'p1', { app: 'cnf' }, 'uid-new'));
  await t.src.reconcile();
  assert.equal(t.applier.have.size, 0);
});

test('an ADD before the informers listed waits briefly, then is answered without interfaces; the reconciler adds them', async () => {
  const t = setup();
  t.src.handleNamespace({ metadata: { name: 'a' } });
  t.addNet(net('field'));
  t.addCfg(cfg('a', 'cnf', cnfSpec));
  t.addPod(pod('a', 'p1', { app: 'cnf' }));
  const t0 = performance.now();
  const r = await t.add('a', 'p1', 'c1');
  assert.deepEqual(r, { interfaces: 0, failed: 0 });
  assert.ok(performance.now() - t0 >= 900 && performance.now() - t0 < 3000, 'waited ~1 s');
  t.syncAll();
  await t.src.reconcile();
  assert.equal(t.applier.have.get('c1')?.length, 1, 'made by the reconciler');
});

test('a CRD that is not installed counts as empty; the reconciler still runs', async () => {
  const t = setup();
  t.src.kindNotInstalled('nodenetworks');
  t.src.kindNotInstalled('podnetworkconfigs');
  t.src.markSynced('namespaces');
  t.src.markSynced('pods');
  assert.equal(t.src.notReady(), undefined);
  await t.src.reconcile();
  assert.equal(t.src.reconciles, 1);
});

test('configStatus keeps the other nodes\' entries; the annotation lists eth0 first', () => {
  const st = configStatus({
    generation: 3, node: 'n1', problems: [], now: 'T',
    mine: [{ name: 'p1', node: 'n1', interface: 'net1', network: 'f', address: '10.0.0.2/24', ready: true, message: '' }],
    current: { conditions: [], pods: [
      { name: 'p0', node: 'n0', interface: 'net1', network: 'f', ready: false, message: 'ApplyFailed: x' },
      { name: 'p1', node: 'n1', interface: 'net1', network: 'f', ready: false, message: 'old' },
    ] },
  });
  assert.deepEqual(st.pods.map((p) => `${p.node}/${p.name}/${p.ready}`), ['n0/p0/false', 'n1/p1/true']);
  assert.equal(st.conditions.find((c) => c.type === 'Degraded')!.status, 'True');
  const a = JSON.parse(networkStatusAnnotation({ network: 'patu', ifname: 'eth0', ips: ['10.200.0.5'] }, [
    { ifname: 'net1', network: 'f', address: '10.0.0.2/24', mac: '02:00:00:00:00:02', mtu: 1500, hostIfname: 'h', config: { namespace: 'a', name: 'c' } },
  ]));
  assert.deepEqual(a, [
    { name: 'patu', interface: 'eth0', ips: ['10.200.0.5'], default: true, dns: {} },
    { name: 'f', interface: 'net1', ips: ['10.0.0.2'], mac: '02:00:00:00:00:02', dns: {} },
  ]);
  assert.ok(NETWORK_STATUS_ANNOTATION);
});

test('a config that only names a NodeNetwork does not hold its deletion (a tenant cannot block the admin)', async () => {
  const t = setup();
  t.src.handleNamespace({ metadata: { name: 'a' } });
  t.addNet(net('field'));
  t.addCfg(cfg('a', 'cnf', cnfSpec));
  t.addPod(pod('a', 'p1', { app: 'cnf' }));
  t.syncAll();
  await t.add('a', 'p1', 'c1');
  await t.src.reconcile();
  t.echo();
  // The pod stops matching: its interface goes, the config still names the network.
  t.addPod({ ...pod('a', 'p1', { app: 'other' }), metadata: { ...pod('a', 'p1', { app: 'other' }).metadata, resourceVersion: '2' } });
  await t.src.reconcile();
  t.echo();
  assert.equal(t.applier.have.size, 0, 'interface removed with the label');
  const n = t.api.networks.get('field')!;
  n.metadata.deletionTimestamp = '2026-12-03T00:00:01Z';
  t.src.handleNetwork(structuredClone(n));
  await t.src.reconcile();
  t.echo();
  await t.src.reconcile();
  assert.equal(t.api.networks.has('field'), false, 'no pod uses it: deleted although a config names it');
});
