import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  convertService, mergeSlices, nodePodCidr, podAccel, sliceService, slimEndpointSlice, slimPod, slimService,
  type K8sEndpointSlice, type K8sService,
} from '../../src/k8s/convert.js';
import { desiredPorts, ServiceModel } from '../../src/services/model.js';
import { firstSubnet24 } from '../../src/net/cidr.js';

const svc = (spec: K8sService['spec'], name = 'web', namespace = 'default'): K8sService => ({ metadata: { name, namespace }, spec });

const slice = (name: string, service: string, endpoints: K8sEndpointSlice['endpoints'], ports: K8sEndpointSlice['ports'], addressType = 'IPv4'): K8sEndpointSlice => ({
  metadata: { name, namespace: 'default', labels: { 'kubernetes.io/service-name': service } },
  addressType, endpoints, ports,
});

/** Service + slices -> the programmed view, as the data plane would get it. */
function programmed(s: K8sService, slices: K8sEndpointSlice[]) {
  const c = convertService(s);
  assert.ok(c.service, `service skipped: ${c.skipped}`);
  return desiredPorts(c.service, mergeSlices(slices));
}

test('ClusterIP service with a numeric targetPort: backends are slice addresses at the slice port', () => {
  const s = svc({ type: 'ClusterIP', clusterIP: '10.96.0.10', ports: [{ port: 80, protocol: 'TCP', targetPort: 8080 }] });
  const d = programmed(s, [slice('web-a', 'web', [
    { addresses: ['10.200.0.5'], conditions: { ready: true } },
    { addresses: ['10.200.0.6'], conditions: { ready: true } },
  ], [{ name: '', port: 8080, protocol: 'TCP' }])]);
  assert.equal(d.length, 1);
  assert.equal(d[0]!.key, '10.96.0.10:80/TCP');
  assert.deepEqual(d[0]!.backends, ['10.200.0.5:8080', '10.200.0.6:8080']);
  assert.equal(d[0]!.ref, 'default/web');
});

test('named targetPort resolves per endpoint: pods of two slices listen on different numbers', () => {
  const s = svc({ clusterIP: '10.96.0.11', ports: [{ name: 'http', port: 80, protocol: 'TCP', targetPort: 'web' }, { name: 'metrics', port: 9100, targetPort: 9100 }] });
  const d = programmed(s, [
    slice('web-a', 'web', [{ addresses: ['10.200.0.5'], conditions: { ready: true } }], [{ name: 'http', port: 8080, protocol: 'TCP' }, { name: 'metrics', port: 9100, protocol: 'TCP' }]),
    slice('web-b', 'web', [{ addresses: ['10.200.0.7'], conditions: { ready: true } }], [{ name: 'http', port: 8081, protocol: 'TCP' }]),
  ]);
  const byKey = new Map(d.map((x) => [x.key, x.backends]));
  assert.deepEqual(byKey.get('10.96.0.11:80/TCP'), ['10.200.0.5:8080', '10.200.0.7:8081']);
  // web-b does not declare "metrics": its pod cannot serve that port.
  assert.deepEqual(byKey.get('10.96.0.11:9100/TCP'), ['10.200.0.5:9100']);
});

test('a port with the same name but another protocol does not match', () => {
  const s = svc({ clusterIP: '10.96.0.12', ports: [{ name: 'dns', port: 53, protocol: 'UDP', targetPort: 53 }, { name: 'dns-tcp', port: 53, protocol: 'TCP', targetPort: 53 }] });
  const d = programmed(s, [slice('dns-a', 'web', [{ addresses: ['10.200.0.9'], conditions: {} }], [{ name: 'dns', port: 5353, protocol: 'UDP' }, { name: 'dns-tcp', port: 5354, protocol: 'TCP' }])]);
  const byKey = new Map(d.map((x) => [x.key, x.backends]));
  assert.deepEqual(byKey.get('10.96.0.12:53/UDP'), ['10.200.0.9:5353']);
  assert.deepEqual(byKey.get('10.96.0.12:53/TCP'), ['10.200.0.9:5354']);
});

test('not-ready endpoints are left out while a ready one exists; terminating-but-serving ones fill in when none is ready', () => {
  const s = svc({ clusterIP: '10.96.0.13', ports: [{ port: 80, targetPort: 80 }] });
  const ports = [{ port: 80, protocol: 'TCP' }];
  const some = programmed(s, [slice('a', 'web', [
    { addresses: ['10.200.0.1'], conditions: { ready: true, serving: true, terminating: false } },
    { addresses: ['10.200.0.2'], conditions: { ready: false, serving: false, terminating: false } },
    { addresses: ['10.200.0.3'], conditions: { ready: false, serving: true, terminating: true } },
  ], ports)]);
  assert.deepEqual(some[0]!.backends, ['10.200.0.1:80']);
  const none = programmed(s, [slice('a', 'web', [
    { addresses: ['10.200.0.2'], conditions: { ready: false, serving: false, terminating: false } },
    { addresses: ['10.200.0.3'], conditions: { ready: false, serving: true, terminating: true } },
    { addresses: ['10.200.0.4'], conditions: { ready: false, serving: false, terminating: true } },
  ], ports)]);
  assert.deepEqual(none[0]!.backends, ['10.200.0.3:80']);
});

test('unset conditions follow the API: ready and serving unknown count as true, terminating as false', () => {
  const eps = mergeSlices([slice('a', 'web', [{ addresses: ['10.200.0.1'] }, { addresses: ['10.200.0.2'], conditions: { ready: null, serving: null, terminating: null } }], [{ port: 80 }])]);
  for (const e of eps) assert.deepEqual([e.ready, e.serving, e.terminating], [true, true, false]);
});

test('SCTP ports are skipped (and reported), TCP/UDP ports of the same service kept', () => {
  const c = convertService(svc({ clusterIP: '10.96.0.14', ports: [{ port: 80, protocol: 'TCP' }, { port: 3868, protocol: 'SCTP' }, { port: 53, protocol: 'UDP' }] }));
  assert.deepEqual(c.service?.ports.map((p) => `${p.port}/${p.protocol}`), ['80/TCP', '53/UDP']);
  assert.deepEqual(c.skippedPorts, ['3868/SCTP']);
  const only = convertService(svc({ clusterIP: '10.96.0.15', ports: [{ port: 3868, protocol: 'SCTP' }] }));
  assert.equal(only.service, undefined);
  assert.equal(only.skipped, 'noTcpUdpPorts');
});

test('headless, ExternalName, no-ClusterIP and IPv6 services are not programmed', () => {
  assert.equal(convertService(svc({ clusterIP: 'None', ports: [{ port: 80 }] })).skipped, 'headless');
  assert.equal(convertService(svc({ type: 'ExternalName', ports: [{ port: 80 }] })).skipped, 'externalName');
  assert.equal(convertService(svc({ type: 'ClusterIP', ports: [{ port: 80 }] })).skipped, 'noClusterIP');
  assert.equal(convertService(svc({ clusterIP: '', ports: [{ port: 80 }] })).skipped, 'noClusterIP');
  assert.equal(convertService(svc({ clusterIP: 'fd00::10', ports: [{ port: 80 }] })).skipped, 'notIPv4');
  // NodePort and LoadBalancer services have a ClusterIP too: that part is programmed.
  assert.ok(convertService(svc({ type: 'NodePort', clusterIP: '10.96.0.16', ports: [{ port: 80 }] })).service);
});

test('sessionAffinity ClientIP carries timeoutSeconds, default 10800; None has no affinity', () => {
  const a = convertService(svc({ clusterIP: '10.96.0.17', ports: [{ port: 80 }], sessionAffinity: 'ClientIP', sessionAffinityConfig: { clientIP: { timeoutSeconds: 60 } } })).service!;
  assert.deepEqual([a.sessionAffinity, a.affinityTimeoutSeconds], ['ClientIP', 60]);
  assert.equal(desiredPorts(a, [])[0]!.affinityTimeoutSeconds, 60);
  const d = convertService(svc({ clusterIP: '10.96.0.17', ports: [{ port: 80 }], sessionAffinity: 'ClientIP' })).service!;
  assert.equal(d.affinityTimeoutSeconds, 10800);
  const n = convertService(svc({ clusterIP: '10.96.0.17', ports: [{ port: 80 }], sessionAffinity: 'None' })).service!;
  assert.equal(n.sessionAffinity, 'None');
  assert.equal(desiredPorts(n, [])[0]!.affinity, false);
});

test('endpoints merge across slices; a duplicate address keeps the better conditions; IPv6 and FQDN slices ignored', () => {
  const ports = [{ port: 80, protocol: 'TCP' }];
  const eps = mergeSlices([
    slice('b', 'web', [{ addresses: ['10.200.0.2'], conditions: { ready: false, serving: true, terminating: true } }], ports),
    slice('a', 'web', [{ addresses: ['10.200.0.2'], conditions: { ready: true } }, { addresses: ['10.200.0.1'], conditions: { ready: true } }], ports),
    slice('c', 'web', [{ addresses: ['fd00::2'], conditions: { ready: true } }], ports, 'IPv6'),
    slice('d', 'web', [{ addresses: ['example.com'], conditions: { ready: true } }], ports, 'FQDN'),
  ]);
  assert.deepEqual(eps.map((e) => [e.ip, e.ready, e.terminating]), [['10.200.0.1', true, false], ['10.200.0.2', true, false]]);
});

test('merge result does not depend on the order slices arrive in', () => {
  const ip = fc.tuple(fc.integer({ min: 1, max: 6 })).map(([n]) => `10.200.0.${n}`);
  const ep = fc.record({ addresses: fc.tuple(ip).map((a) => [...a]), conditions: fc.record({ ready: fc.boolean(), serving: fc.boolean(), terminating: fc.boolean() }) });
  const sl = fc.tuple(fc.array(ep, { maxLength: 5 }), fc.constantFrom(80, 81)).map(([eps, port]) => ({ eps, port }));
  fc.assert(fc.property(fc.array(sl, { minLength: 1, maxLength: 4 }), (raw) => {
    const slices = raw.map((r, i) => slice(`s${i}`, 'web', r.eps, [{ port: r.port, protocol: 'TCP' }]));
    const fwd = mergeSlices(slices);
    const rev = mergeSlices([...slices].reverse());
    assert.deepEqual(rev, fwd);
  }), { numRuns: 200 });
});

test('slice owner comes from the kubernetes.io/service-name label', () => {
  assert.equal(sliceService(slice('x', 'web', [], [])), 'default/web');
  assert.equal(sliceService({ metadata: { name: 'x', namespace: 'default' } }), undefined);
});

test('slimming keeps what the conversion reads and drops the rest', () => {
  const fat = {
    metadata: { name: 'web', namespace: 'default', resourceVersion: '7', managedFields: [{ big: 'x'.repeat(1000) }], annotations: { a: 'b' } },
    spec: { clusterIP: '10.96.0.20', clusterIPs: ['10.96.0.20'], ports: [{ name: 'http', port: 80, protocol: 'TCP', targetPort: 'web' }], selector: { app: 'web' }, sessionAffinity: 'None' },
  } as unknown as K8sService;
  const slim = slimService(fat);
  assert.deepEqual(convertService(slim), convertService(fat));
  assert.ok(!JSON.stringify(slim).includes('managedFields'));
  const fatSlice = { ...slice('a', 'web', [{ addresses: ['10.200.0.1', '10.200.0.99'], conditions: { ready: true }, nodeName: 'n1', targetRef: { kind: 'Pod' } } as never], [{ name: 'http', port: 8080, protocol: 'TCP' }]) };
  assert.deepEqual(mergeSlices([slimEndpointSlice(fatSlice)]), mergeSlices([fatSlice]));
  const pod = slimPod({ metadata: { name: 'p', namespace: 'd', annotations: { 'patu.dev/accel': 'off', other: 'x' } }, spec: { hostNetwork: false }, status: { podIP: '10.200.0.5', phase: 'Running' } });
  assert.deepEqual(pod.metadata.annotations, { 'patu.dev/accel': 'off' });
  assert.deepEqual(podAccel(pod), { ip: '10.200.0.5', optOut: true });
});

test('pod acceleration: annotation off opts out; host-network, finished and address-less pods are ignored', () => {
  const base = { metadata: { name: 'p', namespace: 'd' }, spec: {}, status: { phase: 'Running', podIP: '10.200.0.5' } };
  assert.deepEqual(podAccel(base), { ip: '10.200.0.5', optOut: false });
  assert.deepEqual(podAccel({ ...base, metadata: { ...base.metadata, annotations: { 'patu.dev/accel': 'on' } } }), { ip: '10.200.0.5', optOut: false });
  assert.equal(podAccel({ ...base, spec: { hostNetwork: true } }), undefined);
  assert.equal(podAccel({ ...base, status: { phase: 'Succeeded', podIP: '10.200.0.5' } }), undefined);
  assert.equal(podAccel({ ...base, status: { phase: 'Pending' } }), undefined);
  assert.deepEqual(podAccel({ ...base, status: { phase: 'Running', podIP: 'fd00::5', podIPs: [{ ip: 'fd00::5' }, { ip: '10.200.0.6' }] } }), { ip: '10.200.0.6', optOut: false });
});

test('pod subnet: node.spec.podCIDR, else the first /24 of the cluster CIDR', () => {
  assert.equal(nodePodCidr({ metadata: { name: 'n' }, spec: { podCIDR: '10.244.3.0/24' } }), '10.244.3.0/24');
  assert.equal(nodePodCidr({ metadata: { name: 'n' }, spec: { podCIDRs: ['fd00:1::/64', '10.244.4.0/24'] } }), '10.244.4.0/24');
  assert.equal(nodePodCidr({ metadata: { name: 'n' }, spec: {} }), undefined);
  assert.equal(firstSubnet24('10.200.0.0/16'), '10.200.0.0/24');
  assert.equal(firstSubnet24('10.201.77.9/16'), '10.201.0.0/24');
  assert.equal(firstSubnet24('192.168.5.0/24'), '192.168.5.0/24');
  assert.throws(() => firstSubnet24('10.0.0.0/25'), /smaller than a \/24/);
  assert.throws(() => firstSubnet24('fd00::/64'), /not an IPv4 CIDR/);
});

test('the model built from converted services programs exactly the converted ports', () => {
  const model = new ServiceModel();
  const c = convertService(svc({ clusterIP: '10.96.0.30', ports: [{ name: 'http', port: 80, targetPort: 'web' }] }));
  model.upsertService(c.service!);
  model.setEndpoints('default/web', mergeSlices([slice('a', 'web', [{ addresses: ['10.200.0.8'], conditions: { ready: true } }], [{ name: 'http', port: 8080, protocol: 'TCP' }])]));
  const d = [...model.desired().values()];
  assert.deepEqual(d.map((x) => [x.key, x.name, x.backends]), [['10.96.0.30:80/TCP', 'default/web:http', ['10.200.0.8:8080']]]);
});

test('ports the apiserver would refuse (a 100,000-character name, port 0 or 70000) are skipped, not programmed; targetPort "80" is never a name', () => {
  const long = 'p'.repeat(100_000);
  const c = convertService(svc({ clusterIP: '10.96.0.12', ports: [
    { name: long, port: 80, protocol: 'TCP', targetPort: 8080 },
    { name: 'ok', port: 0, protocol: 'TCP', targetPort: 8080 },
    { name: 'big', port: 70000, protocol: 'TCP', targetPort: 8080 },
    { name: 'http', port: 81, protocol: 'TCP', targetPort: '80' },
  ] }));
  assert.deepEqual(c.service?.ports.map((p) => p.port), [81]);
  assert.equal(c.skippedPorts.length, 3);
  for (const p of c.skippedPorts) assert.ok(p.length < 80, p);
  // The quoted "80" played no part: the backend port comes from the slice port named http.
  const d = desiredPorts(c.service!, mergeSlices([slice('s', 'web', [{ addresses: ['10.200.0.9'] }], [
    { name: 'http', port: 8080, protocol: 'TCP' },
    { name: long, port: 9999, protocol: 'TCP' },
  ])]));
  assert.deepEqual(d[0]!.backends, ['10.200.0.9:8080']);
  const merged = mergeSlices([slice('s', 'web', [{ addresses: ['10.200.0.9'] }], [{ name: long, port: 1, protocol: 'TCP' }, { name: 'x', port: 0, protocol: 'TCP' }])]);
  assert.deepEqual(merged[0]!.ports, {}, 'bad slice ports are not kept');
});
