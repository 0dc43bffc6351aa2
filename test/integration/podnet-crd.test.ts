// The pod network configuration API against a REAL kube-apiserver (test/helpers/apiserver.ts):
// deploy/podnet-crds.yaml applies cleanly and the CRDs become Established (structural
// schemas, CEL cost estimates within limits); every in-object bad input is refused by the
// apiserver naming the field, and by src/podnet/validate.ts naming the same field; valid
// objects are accepted by both, and what the apiserver stores parses back to the same spec.
// RBAC: the agent's ClusterRole from deploy/patu.yaml allows exactly its writes (finalizers
// by merge patch, status, events, the pod annotation) and not more; the tenant Role of
// deploy/podnet-tenant-role.yaml lets its ServiceAccount (a real token) manage
// PodNetworkConfigs in its namespace only, and neither NodeNetworks nor status.
// Needs no root: nothing touches the kernel. Skips, saying why, without the binaries.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { BareApiserver, apiserverSkipReason, until, type ApiResponse } from '../helpers/apiserver.js';
import { loadManifest, type Doc } from '../helpers/manifests.js';
import { parseNodeNetwork, parsePodNetworkConfig } from '../../src/podnet/validate.js';
import { NETWORK_STATUS_ANNOTATION, PODNET_API_VERSION, PODNET_FINALIZER } from '../../src/podnet/types.js';

const skip = apiserverSkipReason() ?? false;
const NN = '/apis/network.patu.dev/v1alpha1/nodenetworks';
const pncPath = (ns: string, name = ''): string => `/apis/network.patu.dev/v1alpha1/namespaces/${ns}/podnetworkconfigs${name ? `/${name}` : ''}`;
const MERGE = { contentType: 'application/merge-patch+json' };
let api: BareApiserver | undefined;

before(async () => {
  if (skip) return;
  api = await BareApiserver.start();
  const docs = loadManifest('podnet-crds.yaml');
  await api.create(docs);
  await api.crdsReady(docs.filter((d) => d.kind === 'CustomResourceDefinition'));
  for (const ns of ['team-a', 'team-b']) await api.must('POST', '/api/v1/namespaces', { metadata: { name: ns } });
});

after(async () => {
  await api?.stop();
});

const network = (name: string, spec: Doc): Doc => ({ apiVersion: PODNET_API_VERSION, kind: 'NodeNetwork', metadata: { name }, spec });
const config = (ns: string, name: string, interfaces: Doc[], podSelector: Doc = { matchLabels: { app: 'cnf' } }): Doc =>
  ({ apiVersion: PODNET_API_VERSION, kind: 'PodNetworkConfig', metadata: { name, namespace: ns }, spec: { podSelector, interfaces } });

/** The fields the apiserver's 422 names (details.causes[].field). */
const refusedFields = (r: ApiResponse): string[] => ((r.json?.details?.causes ?? []) as Doc[]).map((c) => String(c.field)).sort();

// Each bad object, and the field both the apiserver and validate.ts must name.
const BAD_NETWORKS: [string, Doc, string][] = [
  ['vlan id 0', { vlan: { link: 'eth1', id: 0 }, subnet: '10.210.0.0/24' }, 'spec.vlan.id'],
  ['vlan id 4095', { vlan: { link: 'eth1', id: 4095 }, subnet: '10.210.0.0/24' }, 'spec.vlan.id'],
  ['neither bridge nor vlan', { subnet: '10.210.0.0/24' }, 'spec'],
  ['bad CIDR', { bridge: 'b0', subnet: '10.210.0.0/33' }, 'spec.subnet'],
  ['not a CIDR', { bridge: 'b0', subnet: '10.210.0.0' }, 'spec.subnet'],
  ['IPv6 subnet', { bridge: 'b0', subnet: 'fd00::/64' }, 'spec.subnet'],
  ['host bits in subnet', { bridge: 'b0', subnet: '10.210.0.1/24' }, 'spec.subnet'],
  ['subnet too small', { bridge: 'b0', subnet: '10.210.0.0/31' }, 'spec.subnet'],
  ['gateway outside', { bridge: 'b0', subnet: '10.210.0.0/24', gateway: '10.211.0.1' }, 'spec.gateway'],
  ['gateway = network address', { bridge: 'b0', subnet: '10.210.0.0/24', gateway: '10.210.0.0' }, 'spec.gateway'],
  ['bad gateway', { bridge: 'b0', subnet: '10.210.0.0/24', gateway: '010.210.0.1' }, 'spec.gateway'],
  ['rangeStart outside', { bridge: 'b0', subnet: '10.210.0.0/24', rangeStart: '10.211.0.1' }, 'spec.rangeStart'],
  ['bridge name too long', { bridge: 'a-very-long-bridge', subnet: '10.210.0.0/24' }, 'spec.bridge'],
  ['bridge name with /', { bridge: 'br/0', subnet: '10.210.0.0/24' }, 'spec.bridge'],
  ['mtu 67', { bridge: 'b0', subnet: '10.210.0.0/24', mtu: 67 }, 'spec.mtu'],
  ['In without values', { bridge: 'b0', subnet: '10.210.0.0/24', namespaceSelector: { matchExpressions: [{ key: 'k', operator: 'In' }] } }, 'spec.namespaceSelector.matchExpressions[0]'],
  ['unknown operator', { bridge: 'b0', subnet: '10.210.0.0/24', namespaceSelector: { matchExpressions: [{ key: 'k', operator: 'Like', values: ['x'] }] } }, 'spec.namespaceSelector.matchExpressions[0].operator'],
];
const net1 = (o: Doc = {}): Doc => ({ name: 'net1', network: 'field', ...o });
const BAD_CONFIGS: [string, Doc[], string][] = [
  ['table 254', [net1({ routes: [{ to: '10.211.0.0/16', table: 254 }] })], 'spec.interfaces[0].routes[0].table'],
  ['table 255', [net1({ routes: [{ to: '10.211.0.0/16', table: 255 }] })], 'spec.interfaces[0].routes[0].table'],
  ['table 253', [net1({ rules: [{ from: '10.210.0.0/24', table: 253 }] })], 'spec.interfaces[0].rules[0].table'],
  ['table 0', [net1({ rules: [{ from: '10.210.0.0/24', table: 0 }] })], 'spec.interfaces[0].rules[0].table'],
  ['duplicate interface names', [net1(), net1({ network: 'other' })], 'spec.interfaces'],
  ['eth0', [net1({ name: 'eth0' })], 'spec.interfaces[0].name'],
  ['lo', [net1({ name: 'lo' })], 'spec.interfaces[0].name'],
  ['name with a space', [net1({ name: 'net 1' })], 'spec.interfaces[0].name'],
  ['network not a name', [net1({ network: 'Field_1' })], 'spec.interfaces[0].network'],
  ['bad address', [net1({ address: '10.210.0.300/24' })], 'spec.interfaces[0].address'],
  ['address without prefix', [net1({ address: '10.210.0.10' })], 'spec.interfaces[0].address'],
  ['address /32', [net1({ address: '10.210.0.10/32' })], 'spec.interfaces[0].address'],
  ['bad route destination', [net1({ routes: [{ to: '10.211.0.1/16', table: 100 }] })], 'spec.interfaces[0].routes[0].to'],
  ['bad next hop', [net1({ routes: [{ to: 'default', via: 'gw', table: 100 }] })], 'spec.interfaces[0].routes[0].via'],
  ['bad rule source', [net1({ rules: [{ from: '10.210.0.0/33', table: 100 }] })], 'spec.interfaces[0].rules[0].from'],
  ['priority 32766', [net1({ rules: [{ table: 100, priority: 32766 }] })], 'spec.interfaces[0].rules[0].priority'],
  ['bad MAC', [net1({ mac: '02-00-00-00-00-01' })], 'spec.interfaces[0].mac'],
  ['mtu 65536', [net1({ mtu: 65536 })], 'spec.interfaces[0].mtu'],
  ['no interfaces', [], 'spec.interfaces'],
];

test('the CRDs are Established; valid objects are accepted and what the apiserver stores parses back to the same spec', { skip }, async () => {
  const nn = await api!.must('POST', NN, network('field', {
    bridge: 'field0', subnet: '10.210.0.0/24', gateway: '10.210.0.1', mtu: 1500, rangeStart: '10.210.0.10', rangeEnd: '10.210.0.200',
    namespaceSelector: { matchLabels: { tenant: 'a' }, matchExpressions: [{ key: 'env', operator: 'NotIn', values: ['dev'] }, { key: 'x', operator: 'DoesNotExist' }] },
    notInSchema: 'pruned',
  }));
  assert.equal(nn.spec.notInSchema, undefined, 'unknown fields are pruned (structural schema)');
  const pn = parseNodeNetwork(nn);
  assert.ok(pn.ok, JSON.stringify(pn));
  assert.equal(pn.value.uid, nn.metadata.uid);
  assert.equal(pn.value.generation, 1);
  assert.equal(pn.value.creationTimestamp, nn.metadata.creationTimestamp);
  const vlan = await api!.must('POST', NN, network('field-vlan', { vlan: { link: 'eth1', id: 4094 }, subnet: '10.212.0.0/30', namespaceSelector: {} }));
  assert.deepEqual(parseNodeNetwork(vlan).ok && (parseNodeNetwork(vlan) as { value: { spec: unknown } }).value.spec, vlan.spec);

  const c = await api!.must('POST', pncPath('team-a'), config('team-a', 'cnf', [
    net1({ address: '10.210.0.10/24', mtu: 1400, mac: '02:aa:bb:cc:dd:ee',
      routes: [{ to: '10.211.0.0/16', via: '10.210.0.1', table: 100 }, { to: 'default', via: '10.210.0.1', table: 256, metric: 10 }],
      rules: [{ from: '10.210.0.0/24', table: 100 }, { to: '10.211.0.0/16', table: 4294967295, priority: 32765 }] }),
    { name: 'vlan1', network: 'field-vlan' },
  ]));
  const pc = parsePodNetworkConfig(c);
  assert.ok(pc.ok, JSON.stringify(pc));
  assert.deepEqual(pc.value.spec, c.spec);
  await api!.must('POST', pncPath('team-a'), config('team-a', 'all-pods', [net1()], {}));

  // kubectl's columns come from the printer columns.
  const t = await api!.must('GET', NN, undefined, { accept: 'application/json;as=Table;v=v1;g=meta.k8s.io' });
  assert.deepEqual((t.columnDefinitions as Doc[]).map((d) => d.name), ['Name', 'Bridge', 'Link', 'VLAN', 'Subnet', 'Ready', 'Reason', 'Age']);
});

test('every in-object bad NodeNetwork is refused by the apiserver and by validate.ts, both naming the field', { skip }, async () => {
  for (const [what, spec, field] of BAD_NETWORKS) {
    const obj = network(`bad-${what.replace(/[^a-z0-9]+/g, '-')}`, spec);
    const r = await api!.api('POST', NN, obj);
    assert.equal(r.status, 422, `${what}: apiserver answered ${r.status} ${JSON.stringify(r.json).slice(0, 300)}`);
    assert.ok(refusedFields(r).includes(field), `${what}: apiserver names ${JSON.stringify(refusedFields(r))}, want ${field}: ${r.json.message}`);
    const v = parseNodeNetwork(obj);
    assert.equal(v.ok, false, `${what}: validate.ts accepted it`);
    const fields = v.ok ? [] : v.problems.map((p) => p.field);
    assert.ok(fields.some((f) => f === field || f.startsWith(`${field}.`)), `${what}: validate.ts names ${JSON.stringify(fields)}, want ${field}`);
  }
});

test('every in-object bad PodNetworkConfig is refused by the apiserver and by validate.ts, both naming the field', { skip }, async () => {
  for (const [what, interfaces, field] of BAD_CONFIGS) {
    const obj = config('team-a', `bad-${what.replace(/[^a-z0-9]+/g, '-')}`, interfaces);
    const r = await api!.api('POST', pncPath('team-a'), obj);
    assert.equal(r.status, 422, `${what}: apiserver answered ${r.status} ${JSON.stringify(r.json).slice(0, 300)}`);
    assert.ok(refusedFields(r).includes(field), `${what}: apiserver names ${JSON.stringify(refusedFields(r))}, want ${field}: ${r.json.message}`);
    const v = parsePodNetworkConfig(obj);
    assert.equal(v.ok, false, `${what}: validate.ts accepted it`);
    const fields = v.ok ? [] : v.problems.map((p) => p.field);
    assert.ok(fields.some((f) => f === field || f.startsWith(`${field}[`) || f.startsWith(`${field}.`)), `${what}: validate.ts names ${JSON.stringify(fields)}, want ${field}`);
  }
  // The messages say what is wrong.
  const r = await api!.api('POST', pncPath('team-a'), config('team-a', 'msg', [net1({ routes: [{ to: 'default', table: 254 }] })]));
  assert.match(r.json.message, /spec\.interfaces\[0\]\.routes\[0\]\.table.*reserved table: .*254 \(main\)/);
  const v = await api!.api('POST', NN, network('msg', { vlan: { link: 'eth1', id: 0 }, subnet: '10.210.0.0/24' }));
  assert.match(v.json.message, /spec\.vlan\.id.*VLAN id must be 1-4094/);
});

/** The agent's ServiceAccount, ClusterRole and binding exactly as deploy/patu.yaml ships them; a real token for it. */
async function agentToken(): Promise<string> {
  const docs = loadManifest('patu.yaml').filter((d) => ['ServiceAccount', 'ClusterRole', 'ClusterRoleBinding'].includes(d.kind));
  assert.equal(docs.length, 3);
  await api!.create(docs);
  return api!.serviceAccountToken('kube-system', 'patu');
}

test('the agent\'s ClusterRole (deploy/patu.yaml), as its ServiceAccount: watch both kinds, finalizers by merge patch, status, events, the pod annotation; nothing more', { skip }, async () => {
  const as = { token: await agentToken() };
  await api!.must('POST', NN, network('agent-net', { bridge: 'an0', subnet: '10.230.0.0/24', namespaceSelector: {} }));
  await api!.must('POST', pncPath('team-b'), config('team-b', 'agent-cfg', [{ name: 'net1', network: 'agent-net' }]));
  await until('agent RBAC in effect', async () => (await api!.api('GET', NN, undefined, as)).status === 200);
  assert.equal((await api!.api('GET', '/apis/network.patu.dev/v1alpha1/podnetworkconfigs', undefined, as)).status, 200, 'list all configs');
  assert.equal((await api!.api('GET', `${NN}?watch=true&timeoutSeconds=1`, undefined, as)).status, 200, 'watch');

  // Finalizer on, status written, finalizer off: all merge patches.
  const cfg = await api!.must('GET', pncPath('team-b', 'agent-cfg'));
  const rv = cfg.metadata.resourceVersion;
  let r = await api!.api('PATCH', pncPath('team-b', 'agent-cfg'), { metadata: { resourceVersion: rv, finalizers: [PODNET_FINALIZER] } }, { ...as, ...MERGE });
  assert.equal(r.status, 200, `finalizer patch: ${JSON.stringify(r.json).slice(0, 300)}`);
  r = await api!.api('PATCH', `${pncPath('team-b', 'agent-cfg')}/status`, { status: { conditions: [{ type: 'Ready', status: 'True', reason: 'Ready', message: '', lastTransitionTime: '2026-01-01T00:00:00Z' }], pods: [] } }, { ...as, ...MERGE });
  assert.equal(r.status, 200, `status patch: ${JSON.stringify(r.json).slice(0, 300)}`);
  assert.equal(r.json.status.conditions[0].reason, 'Ready');
  // Status is unbounded (no CEL reads it): a long message and many pods always fit.
  const long = { conditions: [{ type: 'Ready', status: 'False', reason: 'AddressInUse', message: 'x'.repeat(50_000), lastTransitionTime: '2026-01-01T00:00:00Z' }],
    pods: Array.from({ length: 2000 }, (_, i) => ({ name: `p${i}`, node: 'n', interface: 'net1', network: 'agent-net', address: '10.230.0.9/24', ready: false, message: 'y'.repeat(100) })) };
  r = await api!.api('PATCH', `${pncPath('team-b', 'agent-cfg')}/status`, { status: long }, { ...as, ...MERGE });
  assert.equal(r.status, 200, `long status: ${JSON.stringify(r.json).slice(0, 300)}`);
  r = await api!.api('PATCH', `${NN}/agent-net/status`, { status: { conditions: [{ type: 'Ready', status: 'True', reason: 'Ready', message: '', lastTransitionTime: '2026-01-01T00:00:00Z' }], users: ['team-b/agent-cfg'] } }, { ...as, ...MERGE });
  assert.equal(r.status, 200, `network status patch: ${JSON.stringify(r.json).slice(0, 300)}`);
  r = await api!.api('PATCH', `${NN}/agent-net`, { metadata: { finalizers: [PODNET_FINALIZER] } }, { ...as, ...MERGE });
  assert.equal(r.status, 200, 'finalizer on a NodeNetwork');
  r = await api!.api('PATCH', pncPath('team-b', 'agent-cfg'), { metadata: { finalizers: null } }, { ...as, ...MERGE });
  assert.equal(r.status, 200, 'finalizer removed');

  // Events: create only.
  const ev = { metadata: { generateName: 'agent-cfg.' }, involvedObject: { apiVersion: PODNET_API_VERSION, kind: 'PodNetworkConfig', namespace: 'team-b', name: 'agent-cfg' }, reason: 'Ready', message: 'ok', type: 'Normal', source: { component: 'patu' } };
  r = await api!.api('POST', '/api/v1/namespaces/team-b/events', ev, as);
  assert.equal(r.status, 201, `event: ${JSON.stringify(r.json).slice(0, 300)}`);
  assert.equal((await api!.api('DELETE', `/api/v1/namespaces/team-b/events/${r.json.metadata.name}`, undefined, as)).status, 403, 'no deleting events');

  // The pod annotation: patch a pod (set, then remove).
  await api!.must('POST', '/api/v1/namespaces/team-b/serviceaccounts', { metadata: { name: 'default' } });
  await api!.must('POST', '/api/v1/namespaces/team-b/pods', { metadata: { name: 'p', labels: { app: 'cnf' }, annotations: { keep: 'me' } }, spec: { nodeName: 'n', containers: [{ name: 'c', image: 'none' }] } });
  r = await api!.api('PATCH', '/api/v1/namespaces/team-b/pods/p', { metadata: { annotations: { [NETWORK_STATUS_ANNOTATION]: '[]' } } }, { ...as, ...MERGE });
  assert.equal(r.status, 200, `pod annotation: ${JSON.stringify(r.json).slice(0, 300)}`);
  r = await api!.api('PATCH', '/api/v1/namespaces/team-b/pods/p', { metadata: { annotations: { [NETWORK_STATUS_ANNOTATION]: null } } }, { ...as, ...MERGE });
  assert.equal(r.status, 200, `pod annotation removed: ${JSON.stringify(r.json).slice(0, 300)}`);

  // And nothing more: RBAC (403) ...
  const denied: [string, string, unknown, Doc?][] = [
    ['POST', NN, network('agent-made', { bridge: 'x0', subnet: '10.231.0.0/24' })],
    ['POST', pncPath('team-b'), config('team-b', 'agent-made', [{ name: 'net1', network: 'agent-net' }])],
    ['PUT', pncPath('team-b', 'agent-cfg'), await api!.must('GET', pncPath('team-b', 'agent-cfg'))],
    ['PUT', `${pncPath('team-b', 'agent-cfg')}/status`, await api!.must('GET', pncPath('team-b', 'agent-cfg'))],
    ['DELETE', pncPath('team-b', 'agent-cfg'), undefined],
    ['DELETE', `${NN}/agent-net`, undefined],
    ['PUT', '/api/v1/namespaces/team-b/pods/p', await api!.must('GET', '/api/v1/namespaces/team-b/pods/p')],
    ['DELETE', '/api/v1/namespaces/team-b/pods/p', undefined],
    ['POST', '/api/v1/namespaces/team-b/pods', { metadata: { name: 'q' }, spec: { containers: [{ name: 'c', image: 'none' }] } }],
    ['PATCH', '/api/v1/namespaces/team-b', { metadata: { labels: { x: 'y' } } }, MERGE],
    ['GET', '/api/v1/namespaces/team-b/secrets', undefined],
    ['POST', '/apis/apiextensions.k8s.io/v1/customresourcedefinitions', { metadata: { name: 'x' } }],
  ];
  for (const [method, path, body, extra] of denied) {
    const d = await api!.api(method, path, body, { ...as, ...(extra ?? {}) });
    assert.equal(d.status, 403, `${method} ${path} must be forbidden to the agent, got ${d.status}`);
  }
  // ... and what its patch grants allow but the ValidatingAdmissionPolicy in podnet-crds.yaml refuses.
  await api!.must('PATCH', pncPath('team-b', 'agent-cfg'), { metadata: { finalizers: ['someone/else'] } }, MERGE);
  const refused: [string, unknown, RegExp][] = [
    ['/api/v1/namespaces/team-b/pods/p', { metadata: { labels: { app: 'other' } } }, /may not change labels/],
    ['/api/v1/namespaces/team-b/pods/p', { metadata: { annotations: { other: 'x' } } }, /only the k8s.v1.cni.cncf.io\/network-status annotation/],
    ['/api/v1/namespaces/team-b/pods/p', { metadata: { annotations: { keep: null } } }, /only the k8s.v1.cni.cncf.io\/network-status annotation/],
    ['/api/v1/namespaces/team-b/pods/p', { metadata: { finalizers: [PODNET_FINALIZER] } }, /only its own finalizer.*not on pods/],
    ['/api/v1/namespaces/team-b/pods/p', { spec: { activeDeadlineSeconds: 5 } }, /may not change a spec/],
    [pncPath('team-b', 'agent-cfg'), { spec: { podSelector: { matchLabels: { app: 'x' } } } }, /may not change a spec/],
    [pncPath('team-b', 'agent-cfg'), { metadata: { labels: { x: 'y' } } }, /may not change labels/],
    [pncPath('team-b', 'agent-cfg'), { metadata: { annotations: { [NETWORK_STATUS_ANNOTATION]: '[]' } } }, /only on pods/],
    [pncPath('team-b', 'agent-cfg'), { metadata: { finalizers: ['someone/else', 'another/one'] } }, /only its own finalizer/],
    [pncPath('team-b', 'agent-cfg'), { metadata: { finalizers: [PODNET_FINALIZER] } }, /only its own finalizer/],
    [`${NN}/agent-net`, { spec: { namespaceSelector: null } }, /may not change a spec/],
  ];
  for (const [path, patch, msg] of refused) {
    const d = await api!.api('PATCH', path, patch, { ...as, ...MERGE });
    assert.ok(d.status === 422 || d.status === 403, `PATCH ${path} ${JSON.stringify(patch)} must be refused, got ${d.status}`);
    assert.match(String(d.json.message), msg, `PATCH ${path} ${JSON.stringify(patch)}`);
  }
  // Adding and removing its own finalizer next to someone else's is fine; the admin is not bound by the policy.
  r = await api!.api('PATCH', pncPath('team-b', 'agent-cfg'), { metadata: { finalizers: ['someone/else', PODNET_FINALIZER] } }, { ...as, ...MERGE });
  assert.equal(r.status, 200, JSON.stringify(r.json).slice(0, 300));
  await api!.must('PATCH', '/api/v1/namespaces/team-b/pods/p', { metadata: { labels: { app: 'other' } } }, MERGE);
  await api!.must('PATCH', pncPath('team-b', 'agent-cfg'), { metadata: { finalizers: null } }, MERGE);
  await api!.must('PATCH', `${NN}/agent-net`, { metadata: { finalizers: null } }, MERGE);
});

test('the tenant Role (deploy/podnet-tenant-role.yaml), with a real ServiceAccount token: PodNetworkConfigs in its namespace only, no NodeNetworks, no status', { skip }, async () => {
  const docs = loadManifest('podnet-tenant-role.yaml');
  const ns = docs[0]!.metadata.namespace as string;
  assert.equal(ns, 'team-a');
  await api!.must('POST', `/api/v1/namespaces/${ns}/serviceaccounts`, docs[0]);
  await api!.must('POST', `/apis/rbac.authorization.k8s.io/v1/namespaces/${ns}/roles`, docs[1]);
  await api!.must('POST', `/apis/rbac.authorization.k8s.io/v1/namespaces/${ns}/rolebindings`, docs[2]);
  const token = await api!.serviceAccountToken(ns, docs[0]!.metadata.name);
  const as = { token };
  const whoami = await api!.must('POST', '/apis/authentication.k8s.io/v1/selfsubjectreviews', { apiVersion: 'authentication.k8s.io/v1', kind: 'SelfSubjectReview' }, as);
  assert.equal(whoami.status.userInfo.username, `system:serviceaccount:${ns}:${docs[0]!.metadata.name}`);

  let r: ApiResponse = { status: 0, json: null };
  await until('tenant RBAC in effect', async () => {
    r = await api!.api('POST', pncPath(ns), config(ns, 'tenant-cfg', [{ name: 'net1', network: 'field' }]), as);
    return r.status === 201;
  });
  assert.equal((await api!.api('GET', pncPath(ns, 'tenant-cfg'), undefined, as)).status, 200);
  assert.equal((await api!.api('GET', pncPath(ns), undefined, as)).status, 200);
  r = await api!.api('PATCH', pncPath(ns, 'tenant-cfg'), { spec: { podSelector: { matchLabels: { app: 'other' } } } }, { ...as, ...MERGE });
  assert.equal(r.status, 200, 'edit its own config');
  const mine = await api!.must('GET', pncPath(ns, 'tenant-cfg'));
  assert.equal((await api!.api('PUT', pncPath(ns, 'tenant-cfg'), mine, as)).status, 200, 'update');

  const denied: [string, string, unknown, Doc?][] = [
    ['POST', pncPath('team-b'), config('team-b', 'tenant-cfg', [{ name: 'net1', network: 'field' }])],
    ['GET', pncPath('team-b'), undefined],
    ['GET', '/apis/network.patu.dev/v1alpha1/podnetworkconfigs', undefined],
    ['POST', NN, network('tenant-net', { bridge: 't0', subnet: '10.240.0.0/24', namespaceSelector: {} })],
    ['PATCH', `${NN}/field`, { spec: { namespaceSelector: {} } }, MERGE],
    ['GET', NN, undefined],
    ['PATCH', `${pncPath(ns, 'tenant-cfg')}/status`, { status: { conditions: [{ type: 'Ready', status: 'True', reason: 'Ready', message: 'forged', lastTransitionTime: '2026-01-01T00:00:00Z' }] } }, MERGE],
    ['PUT', `${pncPath(ns, 'tenant-cfg')}/status`, mine],
    ['PATCH', `/api/v1/namespaces/${ns}`, { metadata: { labels: { tenant: 'a' } } }, MERGE],
  ];
  for (const [method, path, body, extra] of denied) {
    const d = await api!.api(method, path, body, { ...as, ...(extra ?? {}) });
    assert.equal(d.status, 403, `${method} ${path} must be forbidden to the tenant, got ${d.status}`);
  }
  // A status field sent with the object itself is dropped (the status subresource is the only way in).
  const sneaky = config(ns, 'sneaky', [{ name: 'net1', network: 'field' }]);
  r = await api!.api('POST', pncPath(ns), { ...sneaky, status: { conditions: [{ type: 'Ready', status: 'True', reason: 'Ready', message: 'forged', lastTransitionTime: '2026-01-01T00:00:00Z' }] } }, as);
  assert.equal(r.status, 201);
  assert.equal(r.json.status, undefined, 'status ignored on create');
  assert.equal((await api!.api('DELETE', pncPath(ns, 'sneaky'), undefined, as)).status, 200, 'delete its own config');
});

// ---- Parity: the apiserver and validate.ts agree on random objects ---------------------

/** What validate.ts refuses that CEL cannot express (docs/podnet.md): fields only the agent checks. */
function agentOnlyFields(kind: 'NodeNetwork' | 'PodNetworkConfig', spec: Doc): Set<string> {
  const out = new Set<string>();
  if (kind === 'NodeNetwork') {
    const m = /^(\d+)\.(\d+)\.(\d+)\.(\d+)\/(\d+)$/.exec(String(spec.subnet));
    const num = (ip: unknown): number | undefined => {
      const p = /^(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(String(ip));
      return p ? p.slice(1).reduce((a, o) => a * 256 + Number(o), 0) : undefined;
    };
    if (m) {
      const base = m.slice(1, 5).reduce((a, o) => a * 256 + Number(o), 0);
      const bcast = base + 2 ** (32 - Number(m[5])) - 1;
      for (const f of ['gateway', 'rangeStart', 'rangeEnd']) if (num(spec[f]) === bcast) out.add(`spec.${f}`);
      const s = num(spec.rangeStart);
      const e = num(spec.rangeEnd);
      if (s !== undefined && e !== undefined && s > e) out.add('spec.rangeEnd');
    }
  } else {
    (spec.interfaces as Doc[] ?? []).forEach((i, k) => {
      if (typeof i.mac === 'string' && /^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/.test(i.mac)
        && ((parseInt(i.mac.slice(0, 2), 16) & 1) === 1 || /^(00:){5}00$/.test(i.mac))) out.add(`spec.interfaces[${k}].mac`);
    });
  }
  return out;
}

test('parity: on 300 random objects, the apiserver (dry run) and validate.ts accept and refuse the same, except the documented agent-only rules', { skip }, async (t) => {
  // PATU_PARITY_RUNS=2000 for a longer hunt.
  const runs = Number(process.env.PATU_PARITY_RUNS ?? 150);
  // Each field: mostly a valid value, sometimes one of the bad ones (so most objects have
  // at most one or two faults, and the rules are met one at a time).
  const mostly = <T>(good: T[], bad: T[]): fc.Arbitrary<T> =>
    fc.oneof({ arbitrary: fc.constantFrom(...good), weight: 12 }, { arbitrary: fc.constantFrom(...bad), weight: 1 });
  const opt = <T>(a: fc.Arbitrary<T>) => fc.option(a, { nil: undefined, freq: 2 });
  const ifname = mostly(['net1', 'eth1', 'br-lan.100', 'x'], ['a-very-long-name', 'br/0', '', '.x', 'x y']);
  const hostIp = mostly(['10.210.0.1', '10.210.0.3', '10.210.0.200', '10.210.0.10'], ['10.210.0.0', '10.210.0.255', '10.211.0.1', '010.210.0.1', 'x', '::1']);
  const subnet = mostly(['10.210.0.0/24'], ['10.210.0.1/24', '10.210.0.0/30', '10.210.0.0/31', '0.0.0.0/0', 'fd00::/64', '10.210.0.0', '10.210.0.0/33', '10.210.0.0/16']);
  const address = mostly(['10.210.0.10/24', '10.210.0.11/24'], ['10.210.0.10/32', '10.210.0.300/24', '10.210.0.10', 'fd00::1/64', '10.210.0.10/31']);
  const net = mostly(['10.211.0.0/16', '10.210.0.0/24', '0.0.0.0/0'], ['10.211.0.1/16', '10.211.0.0', 'fd00::/64', '10.211.0.0/33']);
  const selector = mostly<Doc>([{}, { matchLabels: { a: 'b' } }, { matchExpressions: [{ key: 'k', operator: 'In', values: ['v'] }] }, { matchExpressions: [{ key: 'k', operator: 'Exists' }] }],
    [{ matchExpressions: [{ key: 'k', operator: 'In' }] }, { matchExpressions: [{ key: 'k', operator: 'DoesNotExist', values: ['x'] }] }, { matchExpressions: [{ key: '', operator: 'Exists' }] }, { matchExpressions: [{ key: 'k', operator: 'Like' }] }]);
  const table = mostly([1, 100, 252, 256, 4294967295], [0, 253, 254, 255, 4294967296, -1]);
  const mtu = mostly([68, 1400, 1500, 65535], [67, 65536, 0]);
  const clean = (o: Doc): Doc => Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined));
  const networkSpec = fc.record({
    bridge: fc.option(ifname, { nil: undefined, freq: 5 }), vlan: opt(fc.record({ link: ifname, id: mostly([1, 100, 4094], [-1, 0, 4095]) })), subnet,
    gateway: opt(hostIp), mtu: opt(mtu), rangeStart: opt(hostIp), rangeEnd: opt(hostIp), namespaceSelector: opt(selector),
  }).map(clean);
  const iface = fc.record({
    name: mostly(['net1', 'net2', 'net3', 'n', 'vlan100'], ['eth0', 'lo', 'net 1', 'a-very-long-ifname']),
    network: mostly(['field', 'field-vlan', 'a.b'], ['Field', '-x', '', 'a_b']),
    address: opt(address), mtu: opt(mtu),
    mac: opt(mostly(['02:00:00:00:00:01', '02:AA:bb:00:00:01'], ['01:00:5e:00:00:01', '00:00:00:00:00:00', '02-00-00-00-00-01', 'ZZ:00:00:00:00:01'])),
    routes: opt(fc.array(fc.record({ to: fc.oneof(net, fc.constant('default')), via: opt(hostIp), table, metric: opt(mostly([0, 10], [-1, 4294967296])) }).map(clean), { maxLength: 2 })),
    rules: opt(fc.array(fc.record({ from: opt(net), to: opt(net), table, priority: opt(mostly([1, 1000, 32765], [0, 32766])) }).map(clean), { maxLength: 2 })),
  }).map(clean);
  const configSpec = fc.record({ podSelector: selector, interfaces: fc.array(iface, { minLength: 0, maxLength: 3 }) });
  const seen = { accepted: 0, refused: 0, agentOnly: 0 };
  let n = 0;
  const check = async (kind: 'NodeNetwork' | 'PodNetworkConfig', spec: Doc): Promise<void> => {
    const name = `parity-${n++}`;
    const obj = kind === 'NodeNetwork' ? network(name, spec) : config('team-b', name, spec.interfaces as Doc[], spec.podSelector as Doc);
    const path = kind === 'NodeNetwork' ? `${NN}?dryRun=All` : `${pncPath('team-b')}?dryRun=All`;
    const r = await api!.api('POST', path, obj);
    assert.ok(r.status === 201 || r.status === 422, `${kind} ${JSON.stringify(spec)}: HTTP ${r.status} ${JSON.stringify(r.json).slice(0, 300)}`);
    const v = kind === 'NodeNetwork' ? parseNodeNetwork(obj) : parsePodNetworkConfig(obj);
    const why = `${kind} ${JSON.stringify(spec)}: apiserver ${r.status} ${r.status === 422 ? r.json.message : ''}; validate.ts ${v.ok ? 'ok' : JSON.stringify(v.problems)}`;
    if (r.status === 422) {
      seen.refused++;
      assert.equal(v.ok, false, `the apiserver refuses what validate.ts accepts: ${why}`);
    } else if (!v.ok) {
      seen.agentOnly++;
      const allowed = agentOnlyFields(kind, spec);
      for (const p of v.problems) assert.ok(allowed.has(p.field), `validate.ts refuses ${p.field}, which the apiserver accepted and is not an agent-only rule: ${why}`);
    } else {
      seen.accepted++;
    }
  };
  await fc.assert(fc.asyncProperty(networkSpec, (s) => check('NodeNetwork', s)), { numRuns: runs });
  await fc.assert(fc.asyncProperty(configSpec, (s) => check('PodNetworkConfig', s)), { numRuns: runs });
  t.diagnostic(`accepted ${seen.accepted}, refused by both ${seen.refused}, agent-only ${seen.agentOnly}`);
  // Not vacuous: both answers, and the agent-only rules, were seen.
  assert.ok(seen.accepted >= 50 && seen.refused >= 50 && seen.agentOnly >= 1, JSON.stringify(seen));
});
