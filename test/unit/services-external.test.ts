// NodePort, externalIPs, LoadBalancer IPs, traffic policies, proxy labels and
// entry claims: Kubernetes objects -> the model -> map entries, and the same
// shapes from a services file. Pure logic, no root.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { convertService, mergeSlices, slimEndpointSlice, slimService, type K8sEndpointSlice, type K8sService } from '../../src/k8s/convert.js';
import { desiredPorts, ServiceModel, type Endpoint, type Service } from '../../src/services/model.js';
import { validateServices } from '../../src/services/file-source.js';

const svc = (spec: K8sService['spec'], extra: Partial<K8sService> = {}, name = 'web'): K8sService => ({ metadata: { name, namespace: 'default', ...extra.metadata }, spec, ...(extra.status ? { status: extra.status } : {}) });
const slice = (endpoints: K8sEndpointSlice['endpoints'], ports: K8sEndpointSlice['ports'], service = 'web', name = `${service}-a`): K8sEndpointSlice => ({
  metadata: { name, namespace: 'default', labels: { 'kubernetes.io/service-name': service } }, addressType: 'IPv4', endpoints, ports,
});
const keysOf = (d: { key: string }[]): string[] => d.map((x) => x.key).sort();

const nodePortSvc: K8sService['spec'] = {
  type: 'NodePort', clusterIP: '10.96.0.10',
  ports: [{ name: 'http', port: 80, protocol: 'TCP', targetPort: 8080, nodePort: 30080 }, { name: 'dns', port: 53, protocol: 'UDP', targetPort: 53, nodePort: 30053 }],
};
const eps = slice([
  { addresses: ['10.200.0.5'], conditions: { ready: true }, nodeName: 'n1' },
  { addresses: ['10.200.1.5'], conditions: { ready: true }, nodeName: 'n2' },
], [{ name: 'http', port: 8080, protocol: 'TCP' }, { name: 'dns', port: 53, protocol: 'UDP' }]);

test('NodePort: one wildcard entry (0.0.0.0) per port and protocol beside the ClusterIP, same backends', () => {
  const c = convertService(svc(nodePortSvc));
  assert.ok(c.service);
  const d = desiredPorts(c.service, mergeSlices([eps]), 'n1');
  assert.deepEqual(keysOf(d), ['0.0.0.0:30053/UDP', '0.0.0.0:30080/TCP', '10.96.0.10:53/UDP', '10.96.0.10:80/TCP']);
  const np = d.find((x) => x.key === '0.0.0.0:30080/TCP')!;
  assert.deepEqual(np.backends, ['10.200.0.5:8080', '10.200.1.5:8080']);
  assert.equal(np.ref, 'default/web');
  assert.equal(np.vip, '0.0.0.0');
  assert.equal(np.port, 30080);
});

test('a ClusterIP service keeps no node ports even if the object carries them; externalIPs work on any type', () => {
  const c = convertService(svc({ ...nodePortSvc, type: 'ClusterIP', externalIPs: ['192.0.2.7', 'fd00::1', 'bogus'] }));
  assert.ok(c.service);
  assert.deepEqual(c.skippedAddresses, ['externalIPs: fd00::1', 'externalIPs: bogus']);
  const d = desiredPorts(c.service, mergeSlices([eps]));
  assert.deepEqual(keysOf(d), ['10.96.0.10:53/UDP', '10.96.0.10:80/TCP', '192.0.2.7:53/UDP', '192.0.2.7:80/TCP']);
});

test('LoadBalancer: ingress IPs are served like externalIPs (ipMode Proxy ones are not), node ports too', () => {
  const c = convertService(svc({ ...nodePortSvc, type: 'LoadBalancer' }, {
    status: { loadBalancer: { ingress: [{ ip: '203.0.113.9' }, { ip: '203.0.113.10', ipMode: 'Proxy' }, { hostname: 'lb.example' }] } },
  }));
  assert.ok(c.service);
  const d = desiredPorts(c.service, mergeSlices([eps]));
  assert.deepEqual(keysOf(d).filter((k) => k.startsWith('203.')), ['203.0.113.9:53/UDP', '203.0.113.9:80/TCP']);
  assert.equal(d.filter((x) => x.vip === '0.0.0.0').length, 2);
  // Without allocated node ports (allocateLoadBalancerNodePorts false): no wildcard entries.
  const noNp = convertService(svc({ ...nodePortSvc, type: 'LoadBalancer', ports: nodePortSvc!.ports!.map(({ nodePort: _n, ...p }) => p) }));
  assert.equal(desiredPorts(noNp.service!, []).filter((x) => x.vip === '0.0.0.0').length, 0);
});

test('internalTrafficPolicy Local: the ClusterIP uses this node\'s endpoints only (none: refused); external entries all', () => {
  const c = convertService(svc({ ...nodePortSvc, internalTrafficPolicy: 'Local' }));
  const d = desiredPorts(c.service!, mergeSlices([eps]), 'n1');
  assert.deepEqual(d.find((x) => x.key === '10.96.0.10:80/TCP')!.backends, ['10.200.0.5:8080']);
  assert.deepEqual(d.find((x) => x.key === '0.0.0.0:30080/TCP')!.backends, ['10.200.0.5:8080', '10.200.1.5:8080']);
  const other = desiredPorts(c.service!, mergeSlices([eps]), 'n3');
  assert.deepEqual(other.find((x) => x.key === '10.96.0.10:80/TCP')!.backends, []);
});

test('externalTrafficPolicy Local: socket-level entries still use every endpoint (kube-proxy\'s short-circuit for in-node clients); the model counts local ones', () => {
  const c = convertService(svc({ ...nodePortSvc, type: 'LoadBalancer', externalTrafficPolicy: 'Local', healthCheckNodePort: 31000 }));
  assert.equal(c.service!.externalTrafficPolicy, 'Local');
  assert.equal(c.service!.healthCheckNodePort, 31000);
  const m = new ServiceModel({ nodeName: 'n2' });
  m.upsertService(c.service!);
  m.setEndpoints('default/web', mergeSlices([eps]));
  assert.deepEqual(m.desired().get('0.0.0.0:30080/TCP')!.backends, ['10.200.0.5:8080', '10.200.1.5:8080']);
  assert.deepEqual(m.localEndpoints('default/web').map((e) => e.ip), ['10.200.1.5']);
  // ETP on a ClusterIP service means nothing (the apiserver refuses it; dropped here).
  assert.equal(convertService(svc({ clusterIP: '10.96.0.9', ports: [{ port: 80 }], externalTrafficPolicy: 'Local', healthCheckNodePort: 31000 })).service!.healthCheckNodePort, undefined);
});

test('service-proxy-name and headless labels: patu leaves the Service alone; clusterIP None and ExternalName too', () => {
  assert.equal(convertService(svc(nodePortSvc, { metadata: { labels: { 'service.kubernetes.io/service-proxy-name': 'foo-bar' } } })).skipped, 'otherProxy');
  assert.ok(convertService(svc(nodePortSvc, { metadata: { labels: { 'service.kubernetes.io/service-proxy-name': '' } } })).service, 'an empty name is no other proxy');
  assert.equal(convertService(svc(nodePortSvc, { metadata: { labels: { 'service.kubernetes.io/headless': '' } } })).skipped, 'headless');
  assert.equal(convertService(svc({ clusterIP: 'None', ports: [{ port: 80 }] })).skipped, 'headless');
  assert.equal(convertService(svc({ type: 'ExternalName', ports: [{ port: 80 }] })).skipped, 'externalName');
  // The labels survive slimming (the informer keeps only slimmed objects).
  const slim = slimService(svc(nodePortSvc, { metadata: { labels: { 'service.kubernetes.io/service-proxy-name': 'x', app: 'web' } }, status: { loadBalancer: { ingress: [{ ip: '203.0.113.9' }] } } }));
  assert.deepEqual(slim.metadata.labels, { 'service.kubernetes.io/service-proxy-name': 'x' });
  const lb = svc({ ...nodePortSvc, type: 'LoadBalancer', externalIPs: ['192.0.2.1'], externalTrafficPolicy: 'Local', internalTrafficPolicy: 'Local', healthCheckNodePort: 31000 }, { status: { loadBalancer: { ingress: [{ ip: '203.0.113.9' }] } } });
  assert.deepEqual(convertService(slimService(lb)), convertService(lb));
  assert.deepEqual(mergeSlices([slimEndpointSlice(eps)]), mergeSlices([eps]));
});

test('selectorless service with hand-made slices: several ports, several addresses, two slices', () => {
  const c = convertService(svc({ clusterIP: '10.96.0.30', ports: [{ name: 'a', port: 80, protocol: 'TCP' }, { name: 'b', port: 81, protocol: 'TCP' }] }));
  const s1 = slice([{ addresses: ['10.1.0.1'] }, { addresses: ['10.1.0.2'] }], [{ name: 'a', port: 9000, protocol: 'TCP' }, { name: 'b', port: 9001, protocol: 'TCP' }], 'web', 'hand-1');
  const s2 = slice([{ addresses: ['10.1.0.3'] }], [{ name: 'a', port: 9100, protocol: 'TCP' }], 'web', 'hand-2');
  const d = desiredPorts(c.service!, mergeSlices([s1, s2]));
  assert.deepEqual(d.find((x) => x.port === 80)!.backends, ['10.1.0.1:9000', '10.1.0.2:9000', '10.1.0.3:9100']);
  assert.deepEqual(d.find((x) => x.port === 81)!.backends, ['10.1.0.1:9001', '10.1.0.2:9001']);
});

test('the same port for TCP and UDP gives two entries; removing the UDP port removes its entry only', () => {
  const m = new ServiceModel();
  const both: Service = { namespace: 'd', name: 's', clusterIP: '10.96.0.40', sessionAffinity: 'None', affinityTimeoutSeconds: 10800, type: 'NodePort',
    ports: [{ port: 80, protocol: 'TCP', targetPort: 80, nodePort: 30100, name: 'tcp' }, { port: 80, protocol: 'UDP', targetPort: 80, nodePort: 30100, name: 'udp' }] };
  m.upsertService(both);
  m.setEndpoints('d/s', [{ ip: '10.1.0.1', ready: true, serving: true, terminating: false }]);
  assert.deepEqual([...m.desired().keys()].sort(), ['0.0.0.0:30100/TCP', '0.0.0.0:30100/UDP', '10.96.0.40:80/TCP', '10.96.0.40:80/UDP']);
  m.takeChanges();
  m.upsertService({ ...both, ports: [both.ports[0]!] });
  const ch = m.takeChanges();
  assert.deepEqual([...m.desired(ch).keys()].sort(), ['0.0.0.0:30100/TCP', '10.96.0.40:80/TCP']);
});

test('a nodePort claimed by two services: the first keeps it, the second is not programmed at all, and gets it when the first lets go', () => {
  const m = new ServiceModel();
  const mk = (name: string, clusterIP: string): Service => ({ namespace: 'd', name, clusterIP, sessionAffinity: 'None', affinityTimeoutSeconds: 10800, type: 'NodePort',
    ports: [{ port: 80, protocol: 'TCP', targetPort: 80, nodePort: 30200 }] });
  const ep: Endpoint[] = [{ ip: '10.1.0.1', ready: true, serving: true, terminating: false }];
  m.upsertService(mk('a', '10.96.0.50'));
  m.setEndpoints('d/a', ep);
  assert.deepEqual([...m.desired(m.takeChanges()).keys()].sort(), ['0.0.0.0:30200/TCP', '10.96.0.50:80/TCP']);
  m.upsertService(mk('b', '10.96.0.51'));
  m.setEndpoints('d/b', ep);
  const second = m.desired(m.takeChanges());
  assert.deepEqual([...second.keys()], [], 'b: not even its ClusterIP (never half-programmed)');
  assert.deepEqual(m.conflicts(), [{ ref: 'd/b', key: '0.0.0.0:30200/TCP', holder: 'd/a' }]);
  // A full pass keeps the holder.
  assert.equal(m.desired().get('0.0.0.0:30200/TCP')!.ref, 'd/a');
  m.deleteService('d/a');
  const gone = m.desired(m.takeChanges());
  assert.equal(gone.size, 0);
  assert.ok(m.hasChanges, 'b is due now');
  const now = m.desired(m.takeChanges());
  assert.deepEqual([...now.keys()].sort(), ['0.0.0.0:30200/TCP', '10.96.0.51:80/TCP']);
  assert.deepEqual(m.conflicts(), []);
});

test('services file: type NodePort with nodePort, externalIPs, loadBalancerIPs, policies and nodeName', () => {
  const [it] = validateServices({ services: [{
    name: 'web', clusterIP: '10.96.0.60', type: 'LoadBalancer', externalIPs: ['192.0.2.1'], loadBalancerIPs: ['203.0.113.1'],
    externalTrafficPolicy: 'Local', internalTrafficPolicy: 'Local', healthCheckNodePort: 31001,
    ports: [{ port: 80, targetPort: 8080, nodePort: 30080 }, { port: 80, protocol: 'UDP', targetPort: 8080, nodePort: 30080 }],
    endpoints: [{ ip: '10.1.0.1', nodeName: 'n1' }, { ip: '10.1.0.2' }],
  }] });
  assert.ok(it);
  const d = desiredPorts(it.service, it.endpoints, 'n1');
  // ETP Local: each NodePort/external entry has an external-local twin (the tc path's) with this node's endpoints only.
  assert.deepEqual(keysOf(d), [
    '0.0.0.0:30080/TCP', '0.0.0.0:30080/TCP/external-local', '0.0.0.0:30080/UDP', '0.0.0.0:30080/UDP/external-local',
    '10.96.0.60:80/TCP', '10.96.0.60:80/UDP',
    '192.0.2.1:80/TCP', '192.0.2.1:80/TCP/external-local', '192.0.2.1:80/UDP', '192.0.2.1:80/UDP/external-local',
    '203.0.113.1:80/TCP', '203.0.113.1:80/TCP/external-local', '203.0.113.1:80/UDP', '203.0.113.1:80/UDP/external-local',
  ]);
  assert.deepEqual(d.find((x) => x.key === '10.96.0.60:80/TCP')!.backends, ['10.1.0.1:8080'], 'ITP Local');
  assert.deepEqual(d.find((x) => x.key === '0.0.0.0:30080/TCP')!.backends, ['10.1.0.1:8080', '10.1.0.2:8080'], 'sockets: every endpoint');
  const local = d.find((x) => x.key === '0.0.0.0:30080/TCP/external-local')!;
  assert.deepEqual([local.backends, local.scope, local.vip, local.port], [['10.1.0.1:8080'], 'external-local', '0.0.0.0', 30080]);
  // Cluster policy: no twins.
  assert.ok(!keysOf(desiredPorts({ ...it.service, externalTrafficPolicy: 'Cluster' }, it.endpoints, 'n1')).some((k) => k.endsWith('/external-local')));
  // A file without the new fields gives the same object as before them.
  const [plain] = validateServices({ services: [{ name: 'p', clusterIP: '10.96.0.61', ports: [{ port: 80 }] }] });
  assert.deepEqual(Object.keys(plain!.service).sort(), ['affinityTimeoutSeconds', 'clusterIP', 'name', 'namespace', 'ports', 'sessionAffinity']);
});

test('services file: bad node ports and addresses are errors naming the field', () => {
  const bad = (s: object, msg: RegExp): void => assert.throws(() => validateServices({ services: [{ name: 'w', clusterIP: '10.96.0.70', ports: [{ port: 80 }], ...s }] }), msg);
  bad({ ports: [{ port: 80, nodePort: 30080 }] }, /services\[0\]\.ports\[0\]\.nodePort: only with type NodePort or LoadBalancer/);
  bad({ type: 'NodePort', ports: [{ port: 80, nodePort: 70000 }] }, /ports\[0\]\.nodePort: must be an integer from 1 to 65535/);
  bad({ type: 'Other' }, /services\[0\]\.type: must be ClusterIP, NodePort or LoadBalancer/);
  bad({ externalIPs: ['fd00::1'] }, /externalIPs\[0\]: must be an IPv4 address/);
  bad({ externalIPs: ['0.0.0.0'] }, /externalIPs\[0\]: 0\.0\.0\.0 means every node address/);
  bad({ loadBalancerIPs: ['203.0.113.1'] }, /loadBalancerIPs: only with type LoadBalancer/);
  bad({ externalTrafficPolicy: 'Local' }, /externalTrafficPolicy: Local only with type NodePort or LoadBalancer/);
  bad({ type: 'NodePort', healthCheckNodePort: 31000 }, /healthCheckNodePort: only with externalTrafficPolicy Local/);
  bad({ endpoints: [{ ip: '10.1.0.1', nodeName: '' }] }, /endpoints\[0\]\.nodeName: must be a node name/);
  assert.throws(() => validateServices({ services: [
    { name: 'a', clusterIP: '10.96.0.71', type: 'NodePort', ports: [{ port: 80, nodePort: 30080 }] },
    { name: 'b', clusterIP: '10.96.0.72', type: 'NodePort', ports: [{ port: 81, nodePort: 30080 }] },
  ] }), /services\[1\]\.ports\[0\]\.nodePort: nodePort 0\.0\.0\.0:30080\/TCP is already used by services\[0\]\.ports\[0\]\.nodePort/);
  assert.throws(() => validateServices({ services: [
    { name: 'a', clusterIP: '10.96.0.71', externalIPs: ['192.0.2.1'], ports: [{ port: 80 }] },
    { name: 'b', clusterIP: '10.96.0.72', externalIPs: ['192.0.2.1'], ports: [{ port: 80 }] },
  ] }), /services\[1\]\.ports\[0\]: address 192\.0\.2\.1:80\/TCP is already used by services\[0\]\.ports\[0\]/);
});

test('ClientIP affinity switched on and off reaches every entry of the service (NodePort and external ones too)', () => {
  const on = convertService(svc({ ...nodePortSvc, externalIPs: ['192.0.2.7'], sessionAffinity: 'ClientIP', sessionAffinityConfig: { clientIP: { timeoutSeconds: 10 } } }));
  const d = desiredPorts(on.service!, mergeSlices([eps]));
  assert.equal(d.length, 6);
  assert.ok(d.every((x) => x.affinity && x.affinityTimeoutSeconds === 10), JSON.stringify(d.map((x) => [x.key, x.affinity, x.affinityTimeoutSeconds])));
  const off = convertService(svc({ ...nodePortSvc, externalIPs: ['192.0.2.7'], sessionAffinity: 'None' }));
  assert.ok(desiredPorts(off.service!, mergeSlices([eps])).every((x) => !x.affinity && x.affinityTimeoutSeconds === 0));
});

test('publishNotReadyAddresses is the slice\'s business: an endpoint the controller marks ready is used, a terminating one only when none is ready', () => {
  const c = convertService(svc({ clusterIP: '10.96.0.80', ports: [{ name: 'http', port: 80, protocol: 'TCP' }] }));
  const s = slice([
    { addresses: ['10.1.0.1'], conditions: { ready: true, serving: true, terminating: false } }, // not-ready pod, published
    { addresses: ['10.1.0.2'], conditions: { ready: false, serving: true, terminating: true } },
  ], [{ name: 'http', port: 80, protocol: 'TCP' }]);
  assert.deepEqual(desiredPorts(c.service!, mergeSlices([s]))[0]!.backends, ['10.1.0.1:80']);
  const onlyTerminating = slice([s.endpoints![1]!], s.ports);
  assert.deepEqual(desiredPorts(c.service!, mergeSlices([onlyTerminating]))[0]!.backends, ['10.1.0.2:80']);
});

test('patu services shows a wildcard entry as answering on every node address', async () => {
  const { formatServicesTable } = await import('../../src/cli/services.js');
  const text = formatServicesTable([{ name: 'd/web:http', vip: '0.0.0.0', port: 30080, protocol: 'TCP', svcId: 1, sessionAffinity: 'None', affinityTimeoutSeconds: 0, backends: [] }]);
  assert.match(text, /\*:30080\/TCP \(node\)/);
});

test('after a restart the holder of a contested nodePort is the one the maps name, not the first by name', () => {
  const mk = (name: string, clusterIP: string): Service => ({ namespace: 'd', name, clusterIP, sessionAffinity: 'None', affinityTimeoutSeconds: 10800, type: 'NodePort',
    ports: [{ port: 80, protocol: 'TCP', targetPort: 80, nodePort: 30300 }] });
  const m = new ServiceModel();
  m.seedOwners([['0.0.0.0:30300/TCP', 'd/zz'], ['10.96.0.91:80/TCP', 'd/zz'], ['10.96.9.9:80/TCP', 'd/gone']]);
  for (const [n, ip] of [['aa', '10.96.0.90'], ['zz', '10.96.0.91']] as const) m.upsertService(mk(n, ip));
  const d = m.desired();
  assert.equal(d.get('0.0.0.0:30300/TCP')?.ref, 'd/zz');
  assert.deepEqual(m.conflicts(), [{ ref: 'd/aa', key: '0.0.0.0:30300/TCP', holder: 'd/zz' }]);
  assert.equal(d.has('10.96.9.9:80/TCP'), false, 'a gone ref lets go');
});
