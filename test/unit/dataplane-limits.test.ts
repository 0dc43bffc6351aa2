// The manager's request limits (src/dataplane/limits.ts): the threat model's rules, each
// refused with DataplaneError('invalid') naming the field, and what is accepted.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Limits, defaultLimits } from '../../src/dataplane/limits.js';
import { DataplaneError, type CniCall, type ServiceChange } from '../../src/dataplane/api.js';
import { portKey, type DesiredServicePort } from '../../src/services/model.js';
import type { PolicyState } from '../../src/policy/types.js';

const limits = new Limits(defaultLimits({
  serviceCidrs: ['10.96.0.0/12'],
  clusterCidrs: ['10.200.0.0/16'],
  nodeAddresses: () => ['192.168.1.10', '127.0.0.1'],
}));

const port = (o: Partial<DesiredServicePort> = {}): DesiredServicePort => {
  const p = { ref: 'default/web', vip: '10.96.0.10', port: 80, protocol: 'TCP' as const, name: 'default/web:http', affinity: false, affinityTimeoutSeconds: 0, backends: ['10.200.0.5:8080'], ...o };
  return { key: portKey(p.vip, p.port, p.protocol, p.scope), ...p, ...(o.key ? { key: o.key } : {}) };
};
const change = (ports: DesiredServicePort[], o: Partial<ServiceChange> = {}): ServiceChange => ({ session: 's1', generation: 1n, full: true, refs: [], ports, ...o });

/** Asserts the change passes as a request and refuses exactly these services alone, for these reasons. */
function alone(refusals: { ref: string; key: string; reason: string }[], want: [string, RegExp][]): void {
  assert.equal(refusals.length, want.length, JSON.stringify(refusals));
  want.forEach(([ref, msg], i) => {
    assert.equal(refusals[i]!.ref, ref);
    assert.match(refusals[i]!.reason, msg);
  });
}

/** Asserts a DataplaneError('invalid') whose message matches. */
function refused(fn: () => unknown, msg: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof DataplaneError, `not a DataplaneError: ${String(e)}`);
    assert.equal(e.code, 'invalid');
    assert.match(e.message, msg);
    return true;
  });
}

test('services: VIPs inside the service CIDRs, NodePorts in the range, backends in the cluster CIDRs or node addresses (else the service alone is refused); malformed requests refused whole', () => {
  alone(limits.checkServiceChange(change([
    port(),
    port({ vip: '0.0.0.0', port: 30080, backends: ['10.200.0.5:8080', '192.168.1.10:6443'] }),
    port({ vip: '10.96.0.10', port: 80, scope: 'external-local' }),
  ])), []);
  // Addresses that break the limits refuse their service alone (its first problem), the request passes.
  alone(limits.checkServiceChange(change([port(), port({ ref: 'default/ext', vip: '8.8.8.8' })])), [['default/ext', /^ports\[1\]\.vip 8\.8\.8\.8 is outside the service CIDRs 10\.96\.0\.0\/12/]]);
  alone(limits.checkServiceChange(change([port({ vip: '0.0.0.0', port: 22 })])), [['default/web', /ports\[0\]\.vip 0\.0\.0\.0 .* port 22: outside the NodePort range 30000-32767/]]);
  alone(limits.checkServiceChange(change([port({ backends: ['10.200.0.5:80', '1.2.3.4:80'] }), port({ port: 81, vip: '9.9.9.9' })])), [['default/web', /^ports\[0\]\.backends\[1\] 1\.2\.3\.4 is outside the cluster CIDRs 10\.200\.0\.0\/16/]]);
  // Loopback is a node address, never a backend.
  alone(limits.checkServiceChange(change([port({ backends: ['127.0.0.1:80'] })])), [['default/web', /backends\[0\] 127\.0\.0\.1/]]);
  refused(() => limits.checkServiceChange(change([port({ backends: ['10.200.0.5'] })])), /backends\[0\] .* must be IPv4:port/);
  refused(() => limits.checkServiceChange(change([port({ backends: ['10.200.0.5:0'] })])), /must be IPv4:port/);
  refused(() => limits.checkServiceChange(change([port({ key: '10.96.0.11:80/TCP' })])), /ports\[0\]\.key .* does not match/);
  refused(() => limits.checkServiceChange(change([port(), port()])), /ports\[1\]\.key .* appears twice in default\/web/);
  // Two services wanting one entry: a conflict for the data plane to settle, not malformed.
  limits.checkServiceChange(change([port(), port({ ref: 'default/other' })]));
  refused(() => limits.checkServiceChange(change([port({ ref: 'patu:hostport/tcp-any-80' })])), /ports\[0\]\.ref .* hostPort entries are the manager's own/);
  refused(() => limits.checkServiceChange(change([port({ port: 70000 })])), /ports\[0\]\.port 70000/);
  refused(() => limits.checkServiceChange(change([port({ protocol: 'SCTP' as 'TCP' })])), /ports\[0\]\.protocol "SCTP"/);
  refused(() => limits.checkServiceChange(change([port({ ref: 'x'.repeat(2000) })])), /ports\[0\]\.ref: 2000 characters, at most 1024/);
  refused(() => limits.checkServiceChange(change([port()], { session: '' })), /^session must not be empty/);
  // A delta's ports belong to the refs it names.
  limits.checkServiceChange(change([port()], { full: false, refs: ['default/web', 'default/gone'] }));
  refused(() => limits.checkServiceChange(change([port()], { full: false, refs: ['default/other'] })), /ports\[0\]\.ref default\/web is not among the delta's refs/);
});

test('services: externalIPs and LoadBalancer IPs only inside --external-cidr; extra backend CIDRs', () => {
  alone(limits.checkServiceChange(change([port({ vip: '192.168.1.10' })])), [['default/web', /outside the service CIDRs .*need --external-cidr/]]);
  const wider = new Limits(defaultLimits({ externalCidrs: ['203.0.113.0/24'], backendCidrs: ['192.168.0.0/16'] }));
  alone(wider.checkServiceChange(change([port({ vip: '203.0.113.7', backends: ['192.168.5.5:6443'] })])), []);
  alone(wider.checkServiceChange(change([port({ vip: '203.0.114.7' })])), [['default/web', /and the external CIDRs 203\.0\.113\.0\/24/]]);
});

test('services: counts bounded', () => {
  const small = new Limits(defaultLimits({ maxServicePorts: 2, maxBackendsPerPort: 2, maxBackends: 3 }));
  const ports = [1, 2, 3].map((i) => port({ port: i }));
  refused(() => small.checkServiceChange(change(ports)), /^ports: 3 entries, at most 2/);
  // A service with more endpoints than the limit is refused alone (a big Deployment must not stop the others).
  alone(small.checkServiceChange(change([port({ backends: ['10.200.0.1:1', '10.200.0.2:1', '10.200.0.3:1'] })])), [['default/web', /ports\[0\]\.backends: 3 entries, at most 2/]]);
  refused(() => small.checkServiceChange(change([port({ port: 1, backends: ['10.200.0.1:1', '10.200.0.2:1'] }), port({ port: 2, backends: ['10.200.0.1:1', '10.200.0.2:1'] })])), /^ports: 4 backends in all, at most 3/);
});

test('pod flags and node settings: inside the manager\'s CIDRs; no SNAT address', () => {
  limits.checkPodFlags([{ ip: '10.200.3.4', accelOptOut: true }]);
  refused(() => limits.checkPodFlags([{ ip: '10.200.3.4', accelOptOut: true }, { ip: '10.1.1.1', accelOptOut: false }]), /^pods\[1\]\.ip 10\.1\.1\.1 is outside the cluster CIDRs/);
  refused(() => new Limits(defaultLimits({ maxPodFlags: 1 })).checkPodFlags([{ ip: '10.200.0.1', accelOptOut: true }, { ip: '10.200.0.2', accelOptOut: true }]), /^pods: 2 entries, at most 1/);
  limits.checkNodeSettings({ podCidr: '10.200.7.0/24', clusterCidr: '10.200.0.0/16', serviceCidr: '10.96.0.0/16', serviceCidrOff: true, snatAddress: '' });
  refused(() => limits.checkNodeSettings({ podCidr: '10.201.0.0/24' }), /^podCidr 10\.201\.0\.0\/24 is not inside the cluster CIDRs 10\.200\.0\.0\/16/);
  refused(() => limits.checkNodeSettings({ clusterCidr: '10.0.0.0/8' }), /^clusterCidr 10\.0\.0\.0\/8 is not inside/);
  refused(() => limits.checkNodeSettings({ serviceCidr: '10.0.0.0/8' }), /^serviceCidr 10\.0\.0\.0\/8 is not inside the service CIDRs 10\.96\.0\.0\/12/);
  refused(() => limits.checkNodeSettings({ podCidr: 'nope' }), /^podCidr "nope"/);
  refused(() => limits.checkNodeSettings({ snatAddress: '192.168.1.10' }), /^snatAddress "192\.168\.1\.10": .*cannot SNAT/);
});

test('policy state: counts and strings bounded, pod addresses in the cluster CIDRs (host-network pods excepted)', () => {
  const st = (o: Partial<PolicyState> = {}): PolicyState => ({ namespaces: [{ name: 'default', labels: { a: 'b' } }], pods: [{ namespace: 'default', name: 'p', labels: {}, ips: ['10.200.0.9'], ports: [], local: true }], policies: [], nodeAddresses: [], ...o });
  limits.checkPolicyState(st(), 's');
  limits.checkPolicyState(st({ pods: [{ namespace: 'kube-system', name: 'h', labels: {}, ips: ['192.168.1.10'], ports: [], hostNetwork: true, local: false }] }), 's');
  refused(() => limits.checkPolicyState(st({ pods: [{ namespace: 'default', name: 'p', labels: {}, ips: ['8.8.8.8'], ports: [], local: true }] }), 's'), /^state\.pods\[0\]\.ips\[0\] 8\.8\.8\.8 is outside the cluster CIDRs/);
  refused(() => limits.checkPolicyState(st({ nodeAddresses: ['x'] }), 's'), /^state\.nodeAddresses\[0\]/);
  refused(() => limits.checkPolicyState(st({ namespaces: [{ name: 'n', labels: { k: 'v'.repeat(64) } }] }), 's'), /state\.namespaces\[0\]\.labels\["k"\]: 64 characters, at most 63/);
  const pol = { metadata: { namespace: 'default', name: 'x' }, spec: { podSelector: {}, ingress: [{ from: [{ ipBlock: { cidr: '10.0.0.0/8', except: ['bad'] } }] }] } };
  refused(() => limits.checkPolicyState(st({ policies: [pol] }), 's'), /^state\.policies\[0\]\.ingress\[0\]\.peers\[0\]\.ipBlock\.except\[0\] "bad"/);
  const few = new Limits(defaultLimits({ maxPolicyObjects: 1 }));
  const ok = { metadata: { namespace: 'default', name: 'x' }, spec: { podSelector: {} } };
  refused(() => few.checkPolicyState(st({ policies: [ok, ok] }), 's'), /^state\.policies: 2 entries, at most 1/);
});

test('CNI over the API: netns under the netns dirs (resolved), the manager\'s own bridge/pins/IPAM dir, no portMappings', (t) => {
  const root = mkdtempSync(join(tmpdir(), 'patu-limits-'));
  t.after(() => rmSync(root, { recursive: true, force: true }));
  const dir = join(root, 'netns');
  const other = join(root, 'elsewhere');
  mkdirSync(dir);
  mkdirSync(other);
  writeFileSync(join(dir, 'pod1'), '');
  writeFileSync(join(other, 'host'), '');
  symlinkSync(join(other, 'host'), join(dir, 'escape'));
  symlinkSync(dir, join(root, 'alias'));
  const l = new Limits(defaultLimits({ netnsDirs: [dir, join(root, 'alias')] }));
  const conf = (o: Record<string, unknown> = {}): Buffer => Buffer.from(JSON.stringify({ cniVersion: '1.0.0', name: 'patu', type: 'patu', ...o }));
  const call = (o: Partial<CniCall> = {}): CniCall => ({ command: 'ADD', containerId: 'c1', netns: join(dir, 'pod1'), ifname: 'eth0', args: '', path: '/opt/cni/bin', config: conf(), ...o });

  assert.equal(l.checkCniCall(call()), join(dir, 'pod1'));
  // Through a symlinked directory: resolved to the real file, still inside.
  assert.equal(l.checkCniCall(call({ netns: join(root, 'alias', 'pod1') })), join(dir, 'pod1'));
  refused(() => l.checkCniCall(call({ netns: join(dir, 'escape') })), /^netns .*escape resolves to .*elsewhere\/host, outside the netns directories/);
  refused(() => l.checkCniCall(call({ netns: '/proc/1/ns/net' })), /^netns "\/proc\/1\/ns\/net" is not directly under the netns directories/);
  refused(() => l.checkCniCall(call({ netns: `${dir}/../elsewhere/host` })), /^netns .* must be an absolute path without '\.\.'/);
  refused(() => l.checkCniCall(call({ netns: join(dir, 'missing') })), /^netns .*missing: .*ENOENT/);
  refused(() => l.checkCniCall(call({ netns: '' })), /^netns must not be empty/);
  assert.equal(l.checkCniCall(call({ command: 'DEL', netns: '' })), '');
  refused(() => l.checkCniCall(call({ config: conf({ bridge: 'eth0' }) })), /^config\.bridge "eth0" is not the manager's \(patu0\)/);
  refused(() => l.checkCniCall(call({ config: conf({ ipam: { dataDir: '/etc' } }) })), /^config\.ipam\.dataDir "\/etc" is not the manager's/);
  refused(() => l.checkCniCall(call({ config: conf({ pinRoot: '/sys/fs/bpf/other' }) })), /^config\.pinRoot/);
  refused(() => l.checkCniCall(call({ config: conf({ podCIDR: '192.168.0.0/24' }) })), /^config\.podCIDR 192\.168\.0\.0\/24 is not inside the cluster CIDRs/);
  refused(() => l.checkCniCall(call({ config: conf({ ipam: { ranges: [[{ subnet: '1.0.0.0/24' }]] } }) })), /^config\.ipam\.ranges\[0\]\[0\]\.subnet 1\.0\.0\.0\/24/);
  refused(() => l.checkCniCall(call({ config: conf({ runtimeConfig: { portMappings: [{ hostPort: 22, containerPort: 22 }] } }) })), /^config\.runtimeConfig\.portMappings/);
  refused(() => l.checkCniCall(call({ config: conf({ type: 'bridge' }) })), /^config\.type "bridge"/);
  refused(() => l.checkCniCall(call({ config: Buffer.from('{') })), /^config is not JSON/);
  refused(() => l.checkCniCall(call({ config: Buffer.alloc((1 << 20) + 1, 32) })), /^config: 1048577 bytes, at most 1 MiB/);
  refused(() => l.checkCniCall(call({ ifname: 'a'.repeat(16) })), /^ifname: 16 characters, at most 15/);
  refused(() => l.checkCniCall(call({ containerId: 'a/b' })), /^containerId must hold only/);
  refused(() => l.checkCniCall(call({ command: 'GC' as 'ADD' })), /^command "GC"/);
});

test('limits: bad flags fail at start, naming the flag', () => {
  assert.throws(() => new Limits(defaultLimits({ serviceCidrs: ['10.96.0.0/33'] })), /--service-cidr 10\.96\.0\.0\/33/);
  assert.throws(() => new Limits(defaultLimits({ clusterCidrs: ['fd00::/64'] })), /--cluster-cidr fd00::\/64: must be IPv4/);
  assert.throws(() => new Limits(defaultLimits({ netnsDirs: ['run/netns'] })), /--netns-dirs run\/netns/);
  assert.throws(() => new Limits(defaultLimits({ nodePortRange: [40000, 30000] })), /--node-port-range/);
});
