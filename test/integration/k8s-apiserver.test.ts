// The agent's Kubernetes source against a REAL kube-apiserver (with etcd):
// least-privilege credentials, services and hand-written EndpointSlices
// programmed into real service maps, an apiserver outage, and an agent restart
// that writes nothing; and the informer itself: watches the apiserver ends are
// resumed without a relist, bookmarks arrive, and a resourceVersion compacted away
// while the apiserver was down (410) leads to one relist that reports what changed. Needs root (BPF maps, never attached here: no program
// runs) and the binaries (test/helpers/apiserver.ts: kube-apiserver from scripts/k8s's
// cache, etcd from there or PATH). Skips, saying which, when any is missing. Creates: a
// temp dir, etcd and apiserver on loopback ports, pins under /sys/fs/bpf/patu-test-k8sapi-<pid>/.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ServiceLb } from '../../src/dataplane/service-lb.js';
import { K8sSource } from '../../src/k8s/source.js';
import { openServiceSink } from '../helpers/service-sink.js';
import { MODE } from '../helpers/agent-proc.js';
import { BareApiserver, apiserverSkipReason, until, type ApiResponse } from '../helpers/apiserver.js';
import { kubeconfigFile } from '../../src/k8s/kubeconfig.js';
import { AgentMetrics } from '../../src/k8s/metrics.js';
import { startInformer } from '../../src/k8s/informers.js';
import { slimService, type K8sService } from '../../src/k8s/convert.js';
import { K8sPolicySource } from '../../src/k8s/policy-source.js';
import type { PolicyState } from '../../src/policy/types.js';

const skip = process.getuid?.() !== 0 ? 'needs root (BPF maps)' : (apiserverSkipReason() ?? false);

const PIN = `/sys/fs/bpf/patu-test-k8sapi-${process.pid}`;
const NODE = `patu-it-node-${process.pid}`;
let server: BareApiserver | undefined;
/** The temp dir the apiserver lives in (the agent's kubeconfig is written there). */
let tmp = '';
let etcdPort = 0;

const api = (method: string, path: string, body?: unknown): Promise<ApiResponse> => server!.api(method, path, body);
const must = (method: string, path: string, body?: unknown): Promise<any> => server!.must(method, path, body);
const startApiserver = (): Promise<void> => server!.startApiserver();
const stopApiserver = (): Promise<void> => server!.stopApiserver();

before(async () => {
  if (skip) return;
  server = await BareApiserver.start([{ name: 'patu-it-agent' }]);
  tmp = server.dir;
  etcdPort = server.etcdPort;
  // The agent's permissions: what deploy/patu.yaml must grant, nothing more.
  await must('POST', '/apis/rbac.authorization.k8s.io/v1/clusterroles', {
    metadata: { name: `patu-it-${process.pid}` },
    rules: [
      { apiGroups: [''], resources: ['services', 'pods', 'nodes', 'namespaces'], verbs: ['list', 'watch'] },
      { apiGroups: ['discovery.k8s.io'], resources: ['endpointslices'], verbs: ['list', 'watch'] },
      { apiGroups: ['networking.k8s.io'], resources: ['networkpolicies'], verbs: ['list', 'watch'] },
    ],
  });
  await must('POST', '/apis/rbac.authorization.k8s.io/v1/clusterrolebindings', {
    metadata: { name: `patu-it-${process.pid}` },
    roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: `patu-it-${process.pid}` },
    subjects: [{ kind: 'User', name: 'patu-it-agent', apiGroup: 'rbac.authorization.k8s.io' }],
  });
  server.kubeconfig(server.tokens.get('patu-it-agent'), 'kubeconfig');
  await must('POST', '/api/v1/nodes', { metadata: { name: NODE }, spec: { podCIDR: '10.244.7.0/24' } });
});

after(async () => {
  await server?.stop();
  if (existsSync(PIN)) rmSync(PIN, { recursive: true, force: true });
});

const slice = (name: string, svc: string, eps: { ip: string; ready: boolean }[]) => ({
  apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice',
  metadata: { name, namespace: 'default', labels: { 'kubernetes.io/service-name': svc } },
  addressType: 'IPv4',
  endpoints: eps.map((e) => ({ addresses: [e.ip], conditions: { ready: e.ready } })),
  ports: [{ name: 'http', port: 8080, protocol: 'TCP' }],
});

test(`services and slices from a real apiserver are programmed; outage and agent restart keep the data plane (${MODE})`, { skip }, async () => {
  const svc = await must('POST', '/api/v1/namespaces/default/services', {
    metadata: { name: 'web' },
    spec: { ports: [{ name: 'http', port: 80, targetPort: 'web' }, { name: 'sctp', port: 3868, protocol: 'SCTP' }], selector: { app: 'none' } },
  });
  await must('POST', '/api/v1/namespaces/default/services', { metadata: { name: 'headless' }, spec: { clusterIP: 'None', ports: [{ port: 80 }] } });
  const vip: string = svc.spec.clusterIP;
  await must('POST', '/apis/discovery.k8s.io/v1/namespaces/default/endpointslices', slice('web-1', 'web', [{ ip: '10.244.7.10', ready: true }, { ip: '10.244.7.11', ready: false }]));

  const cfg = kubeconfigFile(join(tmp, 'kubeconfig'));
  // Split mode (PATU_TEST_SPLIT=1): the source feeds the agent's mirror, which pushes through the gRPC client to LocalDataplane over these maps.
  const svcSink = await openServiceSink({ pinRoot: PIN, dir: tmp, clusterCidrs: ['10.244.0.0/16'] });
  const lb = svcSink.lb;
  const metrics = new AgentMetrics({ defaultMetrics: false });
  const cidrs: string[] = [];
  let lastApply = Date.now();
  let source = new K8sSource({ nodeName: NODE, clusterCIDR: '10.200.0.0/16', sink: svcSink.sink, metrics, resyncMs: 0, onPodCidr: (c) => cidrs.push(c), onApplied: () => (lastApply = Date.now()), backoff: { initialMs: 200, maxMs: 1000 } });
  const backends = () => lb.programmed().find((s) => s.vip === vip && s.port === 80)?.backends.map((b) => `${b.ip}:${b.port}`).sort();
  try {
    source.start(cfg);
    await until('agent ready', () => source.notReady() === undefined);
    await svcSink.settle();
    assert.deepEqual(backends(), ['10.244.7.10:8080']);
    // The apiserver always creates default/kubernetes: it is programmed like any other
    // ClusterIP service (pods reach the apiserver through it). Of this test's services
    // only the ClusterIP TCP port counts: SCTP and headless are skipped.
    const ours = lb.programmed().filter((s) => !s.name.startsWith('default/kubernetes:'));
    assert.deepEqual(ours.map((s) => s.name), ['default/web:http'], 'only the ClusterIP TCP port: SCTP and headless skipped');
    assert.ok(lb.programmed().some((s) => s.name.startsWith('default/kubernetes:')), `default/kubernetes programmed: ${JSON.stringify(lb.programmed().map((s) => s.name))}`);
    assert.deepEqual(cidrs, ['10.244.7.0/24']);

    await must('PUT', '/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/web-1', slice('web-1', 'web', [{ ip: '10.244.7.10', ready: true }, { ip: '10.244.7.11', ready: true }]));
    await until('second endpoint programmed', () => backends()?.length === 2);

    // Outage: the apiserver stops. The maps keep what they had.
    await stopApiserver();
    await sleep(1500);
    assert.deepEqual(backends(), ['10.244.7.10:8080', '10.244.7.11:8080']);
    await startApiserver();
    await must('DELETE', '/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/web-1');
    await must('POST', '/apis/discovery.k8s.io/v1/namespaces/default/endpointslices', slice('web-2', 'web', [{ ip: '10.244.7.12', ready: true }]));
    await until('caught up after the outage', () => backends()?.join() === '10.244.7.12:8080', 30_000);
    const restarts = (await metrics.informerRestarts.get()).values.reduce((n, v) => n + v.value, 0);
    assert.ok(restarts >= 1, 'informer restarts must be counted');

    // Agent restart: a new source on the same pinned maps programs nothing new. The
    // restarted apiserver rewrites default/kubernetes' endpoints on its own schedule:
    // let the first agent apply that (2 s without an apply) before stopping it.
    await until('first agent quiet', () => Date.now() - lastApply > 2000, 30_000);
    await source.close();
    await svcSink.close();
    const sink2 = await openServiceSink({ pinRoot: PIN, dir: tmp, clusterCidrs: ['10.244.0.0/16'] });
    const lb2 = sink2.lb;
    let firstOps = -1;
    source = new K8sSource({ nodeName: NODE, clusterCIDR: '10.200.0.0/16', sink: sink2.sink, resyncMs: 0, onApplied: (s) => { if (firstOps < 0) firstOps = s.ops; } });
    try {
      source.start(cfg);
      await until('restarted agent ready', () => source.notReady() === undefined);
      await sink2.settle();
      // Split: the sink's own stats say nothing (it returns before the apply); the manager's first answer does.
      if (sink2.split) firstOps = sink2.answers[0]?.mapOps ?? -1;
      assert.equal(firstOps, 0, 'a restart with nothing changed must write no map entry');
      assert.deepEqual(lb2.programmed().find((s) => s.vip === vip)?.backends.map((b) => b.ip), ['10.244.7.12']);
    } finally {
      await source.close();
      await sink2.close();
    }
  } finally {
    await source.close();
    await svcSink.close();
  }
});

/** etcd's JSON gateway (v3 API): the test changes etcd behind the apiserver's back. */
async function etcdCall(op: string, body: Record<string, unknown>): Promise<any> {
  const res = await fetch(`http://127.0.0.1:${etcdPort}/v3/${op}`, { method: 'POST', body: JSON.stringify(body) });
  const json = await res.json();
  if (!res.ok) throw new Error(`etcd ${op}: HTTP ${res.status}: ${JSON.stringify(json)}`);
  return json;
}
const b64 = (s: string): string => Buffer.from(s).toString('base64');

test('informer on a real apiserver: watches resume without relisting, bookmarks arrive, a compacted resourceVersion (410) relists the differences', { skip }, async () => {
  const label = `patu-it-inf-${process.pid}`;
  const mk = (name: string) => must('POST', '/api/v1/namespaces/default/services', {
    metadata: { name, labels: { [label]: 'y' } }, spec: { ports: [{ port: 80 }], selector: { app: name } },
  });
  await mk('inf-a');
  await mk('inf-b');
  const upserts: string[] = [];
  const deletes: string[] = [];
  const cfg = kubeconfigFile(join(tmp, 'kubeconfig'));
  // Watches of 3 s: the apiserver ends each one, and sends a bookmark 2 s before it does.
  const inf = startInformer<K8sService>(cfg, { resource: 'services', path: '/api/v1/services', labelSelector: label, slim: slimService, watchTimeoutSeconds: 3 }, {
    onUpsert: (o) => upserts.push(o.metadata.name!),
    onDelete: (o) => deletes.push(o.metadata.name!),
    onSynced: () => {},
  }, { initialMs: 200, maxMs: 1000 });
  try {
    await until('informer synced', () => inf.synced);
    assert.deepEqual([...upserts].sort(), ['inf-a', 'inf-b']);
    assert.equal(inf.stats.lists, 1);

    // Resume: the apiserver ends the watch every 3 s; the informer reopens it from the last
    // resourceVersion and never lists again; a change after that still arrives. A service
    // outside the selector moves the resourceVersion without an event for this watch: the
    // apiserver only sends a bookmark (2 s before the end) when it has a newer one to give.
    await must('POST', '/api/v1/namespaces/default/services', { metadata: { name: 'inf-other' }, spec: { ports: [{ port: 80 }], selector: { app: 'x' } } });
    const watchesThen = inf.stats.watches;
    await until('two watches ended and reopened', () => inf.stats.watches >= watchesThen + 2, 20_000);
    await mk('inf-c');
    await until('inf-c seen through the resumed watch', () => upserts.includes('inf-c'));
    assert.equal(inf.stats.lists, 1, `no relist while watches end normally: ${JSON.stringify(inf.stats)}`);
    assert.equal(inf.stats.errors, 0, `no errors: ${JSON.stringify(inf.stats)}`);
    assert.ok(inf.stats.bookmarks >= 1, `bookmarks must arrive (allowWatchBookmarks): ${JSON.stringify(inf.stats)}`);

    // 410: with the apiserver down, inf-b is deleted in etcd itself and etcd is compacted past
    // the informer's resourceVersion. The restarted apiserver cannot serve a watch from there:
    // the informer must relist, report inf-b deleted, and nothing else (inf-a, inf-c unchanged).
    await stopApiserver();
    await etcdCall('kv/deleterange', { key: b64('/registry/services/specs/default/inf-b') });
    const put = await etcdCall('kv/put', { key: b64(`/patu-it-${process.pid}`), value: b64('x') });
    await etcdCall('kv/compaction', { revision: put.header.revision, physical: true });
    const before = upserts.length;
    await startApiserver();
    await until('inf-b reported deleted after the relist', () => deletes.includes('inf-b'), 30_000);
    assert.ok(inf.stats.expired >= 1, `the watch must have met 410 Gone: ${JSON.stringify(inf.stats)}`);
    assert.equal(inf.stats.lists, 2, `one relist: ${JSON.stringify(inf.stats)}`);
    assert.deepEqual(deletes, ['inf-b']);
    assert.deepEqual(upserts.slice(before), [], 'unchanged services are not reported again by the relist');
    assert.deepEqual(inf.list().map((o) => o.metadata.name).sort(), ['inf-a', 'inf-c']);
  } finally {
    await inf.stop();
  }
});

test('every Service shape from a real apiserver: NodePort (TCP+UDP on one number), LoadBalancer (ETP Local, healthCheckNodePort, status ingress), externalIPs, proxy labels, ExternalName', { skip }, async () => {
  const pin = `${PIN}-shapes`;
  const np = await must('POST', '/api/v1/namespaces/default/services', {
    metadata: { name: 'shape-np' },
    spec: { type: 'NodePort', ports: [{ name: 'tcp', port: 80, protocol: 'TCP', targetPort: 8080, nodePort: 30555 }, { name: 'udp', port: 80, protocol: 'UDP', targetPort: 8080, nodePort: 30555 }] },
  });
  const lbSvc = await must('POST', '/api/v1/namespaces/default/services', {
    metadata: { name: 'shape-lb' },
    spec: { type: 'LoadBalancer', externalTrafficPolicy: 'Local', externalIPs: ['192.0.2.55'], ports: [{ name: 'http', port: 80, targetPort: 8080 }] },
  });
  const hc: number = lbSvc.spec.healthCheckNodePort;
  assert.ok(hc > 0, 'the apiserver allocates a healthCheckNodePort for ETP Local');
  await must('PUT', '/api/v1/namespaces/default/services/shape-lb/status', { ...lbSvc, status: { loadBalancer: { ingress: [{ ip: '203.0.113.55' }] } } });
  await must('POST', '/api/v1/namespaces/default/services', { metadata: { name: 'shape-other', labels: { 'service.kubernetes.io/service-proxy-name': 'someone-else' } }, spec: { ports: [{ port: 81 }] } });
  await must('POST', '/api/v1/namespaces/default/services', { metadata: { name: 'shape-hl', labels: { 'service.kubernetes.io/headless': '' } }, spec: { ports: [{ port: 82 }] } });
  await must('POST', '/api/v1/namespaces/default/services', { metadata: { name: 'shape-ext' }, spec: { type: 'ExternalName', externalName: 'example.org' } });
  const sl = (name: string, svc: string, eps: { ip: string; nodeName?: string }[], ports: { name: string; protocol: string }[]) => ({
    apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice',
    metadata: { name, namespace: 'default', labels: { 'kubernetes.io/service-name': svc } },
    addressType: 'IPv4',
    endpoints: eps.map((e) => ({ addresses: [e.ip], conditions: { ready: true }, ...(e.nodeName ? { nodeName: e.nodeName } : {}) })),
    ports: ports.map((p) => ({ ...p, port: 8080 })),
  });
  await must('POST', '/apis/discovery.k8s.io/v1/namespaces/default/endpointslices', sl('shape-np-1', 'shape-np', [{ ip: '10.244.9.1' }, { ip: '10.244.9.2' }], [{ name: 'tcp', protocol: 'TCP' }, { name: 'udp', protocol: 'UDP' }]));
  await must('POST', '/apis/discovery.k8s.io/v1/namespaces/default/endpointslices', sl('shape-lb-1', 'shape-lb', [{ ip: '10.244.9.3', nodeName: NODE }, { ip: '10.244.9.4', nodeName: 'elsewhere' }], [{ name: 'http', protocol: 'TCP' }]));
  for (const name of ['shape-other', 'shape-hl']) {
    await must('POST', '/apis/discovery.k8s.io/v1/namespaces/default/endpointslices', sl(`${name}-1`, name, [{ ip: '10.244.9.9' }], [{ name: '', protocol: 'TCP' }]));
  }

  const lb = ServiceLb.open({ pinRoot: pin });
  const health: { ref: string; port: number; localEndpoints: number }[][] = [];
  const source = new K8sSource({ nodeName: NODE, clusterCIDR: '10.200.0.0/16', serviceCIDR: '10.96.0.0/16', sink: lb, resyncMs: 0, onHealthChecks: (e) => health.push(e) });
  const entries = (prefix: string) => lb.programmed().filter((s) => s.name.startsWith(prefix))
    .map((s) => `${s.vip}:${s.port}/${s.protocol}${s.scope ? ` ${s.scope}` : ''} ${s.backends.map((b) => `${b.ip}:${b.port}`).sort().join(',')}`).sort();
  try {
    source.start(kubeconfigFile(join(tmp, 'kubeconfig')));
    // shape-lb: 4 entries for clients on the node, plus 3 external-local twins for the tc path (ETP Local).
    await until('shapes programmed', () => entries('default/shape-lb').length === 7 && entries('default/shape-np').length === 4);
    const npIp: string = np.spec.clusterIP;
    const lbIp: string = lbSvc.spec.clusterIP;
    const two = '10.244.9.1:8080,10.244.9.2:8080';
    assert.deepEqual(entries('default/shape-np'), [`0.0.0.0:30555/TCP ${two}`, `0.0.0.0:30555/UDP ${two}`, `${npIp}:80/TCP ${two}`, `${npIp}:80/UDP ${two}`].sort());
    const lbNodePort: number = lbSvc.spec.ports[0].nodePort;
    const both = '10.244.9.3:8080,10.244.9.4:8080';
    const local = '10.244.9.3:8080';
    assert.deepEqual(entries('default/shape-lb'), [
      `0.0.0.0:${lbNodePort}/TCP ${both}`, `192.0.2.55:80/TCP ${both}`, `203.0.113.55:80/TCP ${both}`, `${lbIp}:80/TCP ${both}`,
      `0.0.0.0:${lbNodePort}/TCP external-local ${local}`, `192.0.2.55:80/TCP external-local ${local}`, `203.0.113.55:80/TCP external-local ${local}`,
    ].sort());
    assert.deepEqual(entries('default/shape-other'), [], 'service-proxy-name: another proxy serves it');
    assert.deepEqual(entries('default/shape-hl'), [], 'service.kubernetes.io/headless: not proxied');
    assert.deepEqual(entries('default/shape-ext'), []);
    assert.deepEqual(health.at(-1), [{ ref: 'default/shape-lb', port: hc, localEndpoints: 1 }]);

    // The UDP port goes: its two entries go with it, TCP stays.
    await must('PUT', '/api/v1/namespaces/default/services/shape-np', { ...np, metadata: { ...np.metadata, resourceVersion: undefined }, spec: { ...np.spec, ports: [np.spec.ports[0]] } });
    await until('UDP entries removed', () => entries('default/shape-np').length === 2);
    assert.ok(entries('default/shape-np').every((e) => e.includes('/TCP')));
  } finally {
    await source.close();
    lb.close();
    rmSync(pin, { recursive: true, force: true });
  }
});

test('the agent (startKubernetes) with a service CIDR that is not the cluster\'s switches the check off at the first ClusterIP outside it, and says why', { skip }, async () => {
  const { startKubernetes } = await import('../../src/k8s/agent-k8s.js');
  const { readLbSettings } = await import('../../src/dataplane/service-lb.js');
  const { Scratch } = await import('../helpers/kernel.js');
  const scratch = new Scratch('patu-test-svcsock-k8sagent');
  const pin = scratch.pinRoot();
  const errors: string[] = [];
  const log = { debug() {}, info() {}, warn() {}, error: (_o: object, m: string) => errors.push(m) };
  try {
    const cgroup = scratch.cgroup();
    const agent = await startKubernetes({
      kubeconfig: join(tmp, 'kubeconfig'), nodeName: NODE, env: {}, pinRoot: pin, cgroup, cniConfDir: '',
      // The apiserver's range is 10.96.0.0/16 (default/kubernetes is 10.96.0.1).
      serviceCIDR: '10.50.0.0/16', healthCheckHost: '127.0.0.1', log, resyncMs: 0,
    });
    try {
      await until('agent ready', () => agent.source.notReady() === undefined);
      assert.equal(readLbSettings(pin)?.serviceCidr, null, 'the check is off');
      assert.ok(errors.some((m) => m.startsWith('service CIDR check switched off')), errors.join('\n'));
      assert.ok(readLbSettings(pin)!.nodeAddresses.includes('127.0.0.1'), 'node addresses tracked');
    } finally {
      await agent.close();
    }
  } finally {
    await scratch.cleanup();
  }
});

test('NetworkPolicy from a real apiserver: cluster-wide pods, namespaces and policies (as the apiserver defaults them) reach the policy state; the CNI address fills in until the status has one', { skip }, async () => {
  const ns = `patu-it-pol-${process.pid}`;
  await must('POST', '/api/v1/namespaces', { metadata: { name: ns, labels: { team: 'a' } } });
  // No controller-manager here to create it; the ServiceAccount admission wants it for a pod.
  await must('POST', `/api/v1/namespaces/${ns}/serviceaccounts`, { metadata: { name: 'default' } });
  const podBody = (name: string, node: string) => ({
    metadata: { name, labels: { pod: name } },
    spec: {
      nodeName: node,
      containers: [{ name: 'c', image: 'none', ports: [{ name: 'serve-80-tcp', containerPort: 80 }, { name: 'serve-81-sctp', containerPort: 81, protocol: 'SCTP' }] }],
    },
  });
  await must('POST', `/api/v1/namespaces/${ns}/pods`, podBody('here', NODE));
  await must('POST', `/api/v1/namespaces/${ns}/pods`, podBody('there', 'another-node'));
  const here = await must('GET', `/api/v1/namespaces/${ns}/pods/here`);
  await must('PUT', `/api/v1/namespaces/${ns}/pods/here/status`, { ...here, status: { phase: 'Running', podIP: '10.244.7.20', podIPs: [{ ip: '10.244.7.20' }] } });
  await must('POST', `/apis/networking.k8s.io/v1/namespaces/${ns}/networkpolicies`, {
    metadata: { name: 'p' },
    spec: {
      podSelector: { matchLabels: { pod: 'here' } },
      ingress: [{ from: [{ namespaceSelector: { matchLabels: { team: 'a' } }, podSelector: {} }], ports: [{ port: 'serve-80-tcp' }, { protocol: 'SCTP', port: 81 }] }],
      egress: [{ to: [{ ipBlock: { cidr: '10.244.0.0/16', except: ['10.244.7.0/24'] } }], ports: [{ port: 1000, endPort: 2000 }] }],
    },
  });

  const states: PolicyState[] = [];
  const policy = new K8sPolicySource({ nodeName: NODE, sink: { setState: (st) => void states.push(st) }, coalesceMs: 5 });
  const source = new K8sSource({ nodeName: NODE, clusterCIDR: '10.200.0.0/16', resyncMs: 0, policy, backoff: { initialMs: 200, maxMs: 1000 } });
  const last = () => states.at(-1)!;
  try {
    source.start(kubeconfigFile(join(tmp, 'kubeconfig')));
    await until('policy programmed', () => source.notReady() === undefined && states.length > 0);
    const pods = last().pods.filter((p) => p.namespace === ns).sort((a, b) => a.name.localeCompare(b.name));
    assert.deepEqual(pods, [
      { namespace: ns, name: 'here', labels: { pod: 'here' }, ips: ['10.244.7.20'], local: true,
        ports: [{ name: 'serve-80-tcp', containerPort: 80, protocol: 'TCP' }, { name: 'serve-81-sctp', containerPort: 81, protocol: 'SCTP' }] },
      { namespace: ns, name: 'there', labels: { pod: 'there' }, ips: [], local: false,
        ports: [{ name: 'serve-80-tcp', containerPort: 80, protocol: 'TCP' }, { name: 'serve-81-sctp', containerPort: 81, protocol: 'SCTP' }] },
    ]);
    assert.deepEqual(last().namespaces.find((n) => n.name === ns)?.labels, { team: 'a', 'kubernetes.io/metadata.name': ns }, 'the apiserver adds the name label');
    // As the apiserver defaults it: protocol TCP, policyTypes from the rules.
    assert.deepEqual(last().policies.find((p) => p.metadata.namespace === ns), {
      metadata: { namespace: ns, name: 'p' },
      spec: {
        podSelector: { matchLabels: { pod: 'here' } },
        policyTypes: ['Ingress', 'Egress'],
        ingress: [{ from: [{ namespaceSelector: { matchLabels: { team: 'a' } }, podSelector: {} }], ports: [{ protocol: 'TCP', port: 'serve-80-tcp' }, { protocol: 'SCTP', port: 81 }] }],
        egress: [{ to: [{ ipBlock: { cidr: '10.244.0.0/16', except: ['10.244.7.0/24'] } }], ports: [{ protocol: 'TCP', port: 1000, endPort: 2000 }] }],
      },
    });
    // CNI ADD for the remote pod's name (as if it were scheduled here): applied at once.
    const n = states.length;
    assert.equal(policy.podAddressKnown(ns, 'there', ['10.244.7.21']), true);
    assert.equal(states.length, n + 1);
    assert.deepEqual(last().pods.find((p) => p.name === 'there')?.ips, ['10.244.7.21']);
    // Changes flow: a label on the namespace, the policy deleted, a pod deleted.
    const nsObj = await must('GET', `/api/v1/namespaces/${ns}`);
    await must('PUT', `/api/v1/namespaces/${ns}`, { ...nsObj, metadata: { ...nsObj.metadata, labels: { ...nsObj.metadata.labels, team: 'b' } } });
    await must('DELETE', `/apis/networking.k8s.io/v1/namespaces/${ns}/networkpolicies/p`);
    await must('DELETE', `/api/v1/namespaces/${ns}/pods/there?gracePeriodSeconds=0`);
    await until('changes seen', () => last().namespaces.find((n) => n.name === ns)?.labels.team === 'b'
      && !last().policies.some((p) => p.metadata.namespace === ns) && !last().pods.some((p) => p.name === 'there'));
  } finally {
    policy.close();
    await source.close();
    await api('DELETE', `/api/v1/namespaces/${ns}`);
  }
});
