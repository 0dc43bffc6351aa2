// src/rpc/convert.ts: API types -> proto message -> wire bytes -> proto message -> API types.
// Every round trip goes through the binary encoding (toBinary/fromBinary), as a call does.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { fromBinary, toBinary, create, type DescMessage, type MessageShape } from '@bufbuild/protobuf';
import * as pb from '../../src/rpc/gen/patu/dataplane/v1/dataplane_pb.js';
import * as cv from '../../src/rpc/convert.js';
import { DataplaneError, type PolicyChange, type ServiceChange, type ServicesApplied } from '../../src/dataplane/api.js';
import { portKey, type DesiredServicePort } from '../../src/services/model.js';
import type { PolicyState } from '../../src/policy/types.js';
import { Evaluator } from '../../src/policy/evaluate.js';
import { e2eState, flowArb, np, stateArb } from '../helpers/policy-gen.js';

/** Through the wire bytes, as a call carries it. */
const wire = <D extends DescMessage>(schema: D, m: MessageShape<D>): MessageShape<D> => fromBinary(schema, toBinary(schema, m));

const ipArb = fc.tuple(fc.integer({ min: 1, max: 254 }), fc.nat(255), fc.nat(255), fc.integer({ min: 1, max: 254 })).map((o) => o.join('.'));
const portArb = fc.integer({ min: 1, max: 65535 });

const servicePortArb: fc.Arbitrary<DesiredServicePort> = fc.record({
  vip: fc.oneof(ipArb, fc.constant('0.0.0.0')),
  port: portArb,
  protocol: fc.constantFrom('TCP' as const, 'UDP' as const),
  ns: fc.constantFrom('default', 'kube-system', 'a-b'),
  svc: fc.stringMatching(/^[a-z][a-z0-9-]{0,20}$/),
  portName: fc.option(fc.stringMatching(/^[a-z]{1,10}$/), { nil: undefined }),
  affinity: fc.boolean(),
  timeout: fc.integer({ min: 1, max: 86400 }),
  backends: fc.uniqueArray(fc.tuple(ipArb, portArb).map(([ip, p]) => `${ip}:${p}`), { maxLength: 20 }),
  external: fc.boolean(),
}).map((r): DesiredServicePort => {
  const ref = `${r.ns}/${r.svc}`;
  const scope = r.external ? ('external-local' as const) : undefined;
  return {
    key: portKey(r.vip, r.port, r.protocol, scope), ref, vip: r.vip, port: r.port, protocol: r.protocol,
    name: `${ref}:${r.portName ?? r.port}`, affinity: r.affinity, affinityTimeoutSeconds: r.affinity ? r.timeout : 0,
    backends: [...r.backends].sort(), ...(scope ? { scope } : {}),
  };
});

const serviceChangeArb: fc.Arbitrary<ServiceChange> = fc.record({
  session: fc.uuid(),
  generation: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
  full: fc.boolean(),
  refs: fc.array(fc.stringMatching(/^[a-z]{1,8}\/[a-z]{1,8}$/), { maxLength: 5 }),
  ports: fc.array(servicePortArb, { maxLength: 10 }),
}).map((c) => ({ ...c })); // fc.record's objects have a null prototype

const serviceChangeRoundTrip = (c: ServiceChange): ServiceChange => cv.serviceChangeFromProto(wire(pb.ApplyServicesRequestSchema, cv.serviceChangeToProto(c)));
const policyRoundTrip = (s: PolicyState): PolicyState => cv.policyStateFromProto(wire(pb.PolicyStateSchema, cv.policyStateToProto(s)));

/**
 * What the wire cannot keep apart, made the same on both sides (convert.ts's header): an empty optional list
 * is an absent one, an empty matchLabels an absent one, hostNetwork false an absent one.
 */
function canonical(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(canonical);
  if (v === null || typeof v !== 'object' || Buffer.isBuffer(v)) return v;
  const out: Record<string, unknown> = {};
  for (const [k, x] of Object.entries(v)) {
    if (x === undefined || (Array.isArray(x) && x.length === 0)) continue;
    if (k === 'matchLabels' && Object.keys(x as object).length === 0) continue;
    if (k === 'hostNetwork' && x === false) continue;
    out[k] = canonical(x);
  }
  return out;
}

test('DesiredServicePort: every generated one survives the wire exactly (key rebuilt from vip/port/protocol/scope)', () => {
  fc.assert(fc.property(servicePortArb, (p) => {
    assert.deepEqual(cv.servicePortFromProto(wire(pb.ServicePortSchema, cv.servicePortToProto(p))), p);
  }), { numRuns: 300 });
});

test('ServiceChange: session, 64-bit generation, full, refs and ports survive the wire exactly', () => {
  fc.assert(fc.property(serviceChangeArb, (c) => assert.deepEqual(serviceChangeRoundTrip(c), c)), { numRuns: 200 });
});

const servicesAppliedArb: fc.Arbitrary<ServicesApplied> = fc.record({
  generation: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
  mapOps: fc.nat(0xffffffff),
  services: fc.nat(0xffffffff),
  applyMs: fc.double({ noNaN: true, noDefaultInfinity: true }),
  repeatedGeneration: fc.boolean(),
  conflicts: fc.array(fc.record({ key: fc.string(), wanted: fc.string(), heldBy: fc.string() }).map((c) => ({ ...c })), { maxLength: 3 }),
  refused: fc.option(fc.array(fc.record({ ref: fc.string(), key: fc.string(), reason: fc.string() }).map((r) => ({ ...r })), { minLength: 1, maxLength: 4 }), { nil: undefined }),
}).map(({ refused, ...a }) => ({ ...a, ...(refused ? { refused } : {}) }));

test('ServicesApplied: every field survives the wire, the services refused alone included (absent stays absent)', () => {
  fc.assert(fc.property(servicesAppliedArb, (a) => {
    assert.deepEqual(cv.servicesAppliedFromProto(wire(pb.ApplyServicesResponseSchema, cv.servicesAppliedToProto(a))), a);
  }), { numRuns: 200 });
  // An empty list is absent on the wire: decoded as absent, as LocalDataplane answers when none is refused.
  const none = { generation: 1n, mapOps: 0, services: 0, applyMs: 0, repeatedGeneration: false, conflicts: [], refused: [] };
  assert.equal(cv.servicesAppliedFromProto(wire(pb.ApplyServicesResponseSchema, cv.servicesAppliedToProto(none))).refused, undefined);
});

test('PolicyState: generated states survive the wire up to absent-vs-empty, are a fixed point after one trip, and every flow gets the same verdict', () => {
  fc.assert(fc.property(stateArb({ maxPods: 6, maxPolicies: 4 }).chain((s) => fc.tuple(fc.constant(s), fc.array(flowArb(s), { minLength: 1, maxLength: 30 }))), ([state, flows]) => {
    const once = policyRoundTrip(state);
    // np() sets apiVersion/kind; the decoder always does: the generated policies carry them.
    assert.deepEqual(canonical(once), canonical(state));
    assert.deepEqual(policyRoundTrip(once), once);
    const before = new Evaluator(state, { allNodes: true });
    const after = new Evaluator(once, { allNodes: true });
    for (const f of flows) assert.deepEqual(after.verdict(f), before.verdict(f), JSON.stringify(f));
  }), { numRuns: 200 });
});

test('PolicyState: the Netpol e2e model with every peer and port form keeps each distinction that changes a verdict', () => {
  const policies = [
    // An empty rule: every source, every port.
    np('x', 'allow-all', { podSelector: {}, ingress: [{}] }),
    // No rules: deny all ingress.
    np('y', 'deny-all', { podSelector: {}, policyTypes: ['Ingress'], ingress: [] }),
    // {podSelector: {}}: every pod of x; {namespaceSelector: {}} every pod anywhere; both set: AND.
    np('z', 'peers', {
      podSelector: { matchLabels: { pod: 'a' } },
      policyTypes: ['Ingress', 'Egress'],
      ingress: [
        { from: [{ podSelector: {} }], ports: [{ port: 'serve-80-tcp' }] },
        { from: [{ namespaceSelector: {} }], ports: [{ protocol: 'UDP', port: 81 }] },
        { from: [{ podSelector: { matchExpressions: [{ key: 'pod', operator: 'In', values: ['b', 'c'] }] }, namespaceSelector: { matchLabels: { ns: 'x' } } }] },
        { from: [{ ipBlock: { cidr: '10.200.0.0/16', except: ['10.200.1.0/24'] } }], ports: [{ protocol: 'SCTP', port: 80, endPort: 81 }] },
      ],
      egress: [{ to: [{ podSelector: { matchExpressions: [{ key: 'pod', operator: 'Exists' }] } }] }, { ports: [{ protocol: 'TCP' }] }],
    }),
  ];
  const state = e2eState(policies);
  const back = policyRoundTrip(state);
  assert.deepEqual(back, canonical(state));
  const z = back.policies[2]!.spec;
  assert.deepEqual(z.ingress![0]!.from, [{ podSelector: {} }], 'an empty podSelector stays present');
  assert.equal(z.ingress![0]!.ports![0]!.port, 'serve-80-tcp', 'a named port stays a name');
  assert.equal(z.ingress![1]!.ports![0]!.port, 81, 'a numbered port stays a number');
  assert.equal(z.ingress![3]!.ports![0]!.endPort, 81);
  assert.deepEqual(back.policies[0]!.spec.ingress, [{}], 'an empty rule (allow all) stays one rule');
  assert.equal(back.policies[1]!.spec.ingress, undefined, 'no rules stays no rules');
  // And through the evaluator: x's pods take everything, y's nothing, z/a what its rules say.
  const ev = new Evaluator(back, { allNodes: true });
  const tcp = (src: string, dst: string, dport: number) => ev.verdict({ src, dst, proto: 6, dport }).allowed;
  assert.equal(tcp('10.200.2.10', '10.200.1.11', 12345), true);
  assert.equal(tcp('10.200.1.10', '10.200.2.11', 80), false);
});

test('PolicyChange: rememberCniAddresses survives the wire; false reads as absent', () => {
  const rt = (c: PolicyChange): PolicyChange => cv.policyChangeFromProto(wire(pb.ApplyPolicyRequestSchema, cv.policyChangeToProto(c)));
  const state: PolicyState = { namespaces: [], pods: [], policies: [], nodeAddresses: [] };
  assert.deepEqual(rt({ session: 's', generation: 3n, state, rememberCniAddresses: true }), { session: 's', generation: 3n, state, rememberCniAddresses: true });
  assert.deepEqual(rt({ session: 's', generation: 3n, state, rememberCniAddresses: false }), { session: 's', generation: 3n, state });
  assert.deepEqual(rt({ session: 's', generation: 3n, state }), { session: 's', generation: 3n, state });
});

test('NodeSettings: absent stays absent (left as it is), every present value survives, "" and false included', () => {
  const rt = (s: Parameters<typeof cv.nodeSettingsToProto>[0]) => cv.nodeSettingsFromProto(wire(pb.NodeSettingsSchema, cv.nodeSettingsToProto(s)));
  assert.deepEqual(rt({}), {});
  assert.deepEqual(rt({ podCidr: '10.200.3.0/24' }), { podCidr: '10.200.3.0/24' });
  const all = { podCidr: '10.200.3.0/24', clusterCidr: '10.200.0.0/16', serviceCidr: '10.96.0.0/12', serviceCidrOff: true, snatAddress: '192.168.1.5' };
  assert.deepEqual(rt(all), all);
  // false switches the service CIDR check back on; "" goes back to the uplink's SNAT address: neither is "unchanged".
  assert.deepEqual(rt({ snatAddress: '', serviceCidrOff: false }), { snatAddress: '', serviceCidrOff: false });
  assert.deepEqual(rt({ serviceCidr: '10.96.0.0/12', serviceCidrOff: false }), { serviceCidr: '10.96.0.0/12', serviceCidrOff: false });
  assert.deepEqual(cv.nodeSettingsFromProto(undefined), {});
});

test('responses, CNI and status survive the wire', () => {
  const applied = { generation: 18446744073709551615n, mapOps: 12, services: 3, applyMs: 0.25, repeatedGeneration: true, conflicts: [{ key: '0.0.0.0:30000/TCP', wanted: 'a/b', heldBy: 'c/d' }] };
  assert.deepEqual(cv.servicesAppliedFromProto(wire(pb.ApplyServicesResponseSchema, cv.servicesAppliedToProto(applied))), applied);
  const pol = { generation: 7n, mapChanges: 1, flowsCutOff: 2, socketsEvicted: 3, applyMs: 1.5, fallback: true, problems: ['x'], repeatedGeneration: false };
  assert.deepEqual(cv.policyAppliedFromProto(wire(pb.ApplyPolicyResponseSchema, cv.policyAppliedToProto(pol))), pol);
  const call = { command: 'ADD' as const, containerId: 'c1', netns: '/run/netns/x', ifname: 'eth0', args: 'K=V', path: '/opt/cni/bin', config: Buffer.from('{"cniVersion":"1.0.0"}') };
  const back = cv.cniCallFromProto('ADD', wire(pb.CniRequestSchema, cv.cniCallToProto(call)));
  assert.deepEqual({ ...back, config: back.config.toString() }, { ...call, config: call.config.toString() });
  assert.ok(Buffer.isBuffer(back.config));
  assert.deepEqual(cv.cniReplyFromProto(wire(pb.CniResultSchema, cv.cniReplyToProto({ exitCode: 7, stdout: '{}' }))), { exitCode: 7, stdout: '{}' });
  const status = {
    version: '0.1.0', backend: 'ebpf', servicesSession: 's', servicesGeneration: 4n, services: 9, policySession: 'p', policyGeneration: 2n,
    policyEndpoints: 5, acceleration: true, acceleratedPods: 3, node: { podCidr: '10.200.0.0/24' }, nodeAddresses: ['192.168.1.5'], uptimeSeconds: 12.5,
  };
  assert.deepEqual(cv.statusFromProto(wire(pb.StatusResponseSchema, cv.statusToProto(status))), status);
  assert.deepEqual(cv.healthFromProto(wire(pb.HealthResponseSchema, cv.healthToProto({ ok: false, problems: ['maps'] }))), { ok: false, problems: ['maps'] });
  const flags = [{ ip: '10.200.0.5', accelOptOut: true }];
  assert.deepEqual(cv.podFlagsFromProto(wire(pb.SetPodFlagsRequestSchema, cv.podFlagsToProto(flags))), flags);
});

/** The DataplaneError a function throws (fails when it throws nothing or something else). */
function invalidOf(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof DataplaneError, String(e));
    assert.equal(e.code, 'invalid');
    return e.message;
  }
  assert.fail('no error');
}

test('decoding refuses what the types cannot hold, naming the field', () => {
  const port = (init: Record<string, unknown>) => create(pb.ServicePortSchema, { ref: 'a/b', vip: '10.96.0.1', port: 80, protocol: pb.Protocol.TCP, ...init });
  assert.match(invalidOf(() => cv.servicePortFromProto(port({ protocol: pb.Protocol.UNSPECIFIED }), 'ports[3]')), /^ports\[3\]\.protocol: /);
  assert.match(invalidOf(() => cv.servicePortFromProto(port({ vip: 'fe80::1' }))), /^port\.vip: /);
  assert.match(invalidOf(() => cv.servicePortFromProto(port({ port: 70000 }))), /^port\.port: /);
  assert.match(invalidOf(() => cv.servicePortFromProto(port({ scope: 9 }))), /^port\.scope: /);
  assert.match(invalidOf(() => cv.servicePortFromProto(port({ backends: [{ ip: '1.2.3.4:5', port: 80 }] }))), /^port\.backends\[0\]\.ip: /);
  const badOp = create(pb.PolicyStateSchema, { policies: [{ namespace: 'x', name: 'p', podSelector: { matchExpressions: [{ key: 'k', operator: 'Maybe' }] } }] });
  assert.match(invalidOf(() => cv.policyStateFromProto(badOp)), /^state\.policies\[0\]\.podSelector\.matchExpressions\[0\]\.operator: "Maybe"/);
  const badProto = create(pb.PolicyStateSchema, { policies: [{ namespace: 'x', name: 'p', ingress: [{ ports: [{ protocol: 'ICMP' }] }] }] });
  assert.match(invalidOf(() => cv.policyStateFromProto(badProto)), /^state\.policies\[0\]\.ingress\[0\]\.ports\[0\]\.protocol: /);
  const badType = create(pb.PolicyStateSchema, { policies: [{ namespace: 'x', name: 'p', policyTypes: ['Sideways'] }] });
  assert.match(invalidOf(() => cv.policyStateFromProto(badType)), /^state\.policies\[0\]\.policyTypes\[0\]: /);
  const badPod = create(pb.PolicyStateSchema, { pods: [{ namespace: 'x', name: 'a', ports: [{ containerPort: 80, protocol: '' }] }] });
  assert.match(invalidOf(() => cv.policyStateFromProto(badPod)), /^state\.pods\[0\]\.ports\[0\]\.protocol: /);
  // Encoding: a backend that is not ip:port never reaches the wire.
  const dsp: DesiredServicePort = { key: 'k', ref: 'a/b', vip: '10.96.0.1', port: 80, protocol: 'TCP', name: 'a/b:80', affinity: false, affinityTimeoutSeconds: 0, backends: ['10.0.0.1'] };
  assert.match(invalidOf(() => cv.servicePortToProto(dsp)), /^port\.backends\[0\]: /);
});

test('a label key "__proto__" from the wire is an own label, not a prototype', () => {
  const m = create(pb.PolicyStateSchema, { namespaces: [{ name: 'x', labels: {} }] });
  Object.defineProperty(m.namespaces[0]!.labels, '__proto__', { value: 'v', enumerable: true, writable: true, configurable: true });
  const back = cv.policyStateFromProto(wire(pb.PolicyStateSchema, m));
  const l = back.namespaces[0]!.labels;
  assert.equal(Object.getPrototypeOf(l), Object.prototype);
  assert.ok(Object.hasOwn(l, '__proto__'));
  assert.equal(l['__proto__'], 'v');
});
