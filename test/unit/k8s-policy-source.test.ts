// The Kubernetes NetworkPolicy source: conversion of Pods, Namespaces and NetworkPolicies to
// the policy model's state, the sync gate (nothing before all three are listed), coalescing,
// CNI ADD's addresses ahead of the watch, and the cluster-wide Pod watch shared with the
// service side (acceleration flags stay this node's).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { K8sPolicySource, type PolicyStateSink } from '../../src/k8s/policy-source.js';
import { convertNetworkPolicy, policyPod, slimPolicyPod, type K8sNetworkPolicy, type K8sPolicyPod } from '../../src/k8s/policy-convert.js';
import { K8sSource } from '../../src/k8s/source.js';
import { cniPodOf } from '../../src/agent/cni-pod.js';
import type { PolicyState } from '../../src/policy/types.js';
import type { PodRegistry } from '../../src/dataplane/accel-registry.js';

class Recorder implements PolicyStateSink {
  states: PolicyState[] = [];
  fail = 0;
  setState(s: PolicyState): void {
    if (this.fail > 0) {
      this.fail--;
      throw new Error('patu_pol_rule: capacity');
    }
    this.states.push(s);
  }
  get last(): PolicyState {
    return this.states.at(-1)!;
  }
}

const pod = (ns: string, name: string, extra: { ip?: string; node?: string; labels?: Record<string, string>; phase?: string; hostNetwork?: boolean } = {}): K8sPolicyPod => ({
  metadata: { namespace: ns, name, resourceVersion: '1', labels: extra.labels ?? { app: name }, annotations: { 'kubectl.kubernetes.io/last-applied-configuration': 'x'.repeat(500) } },
  spec: {
    nodeName: extra.node ?? 'n1',
    hostNetwork: extra.hostNetwork ?? false,
    containers: [
      { ports: [{ name: 'serve-80-tcp', containerPort: 80, protocol: 'TCP' }, { name: 'serve-81-udp', containerPort: 81, protocol: 'UDP' }] },
      { ports: [{ containerPort: 82 }, { name: 'serve-83-sctp', containerPort: 83, protocol: 'SCTP' }] },
    ],
  },
  status: { phase: extra.phase ?? 'Running', ...(extra.ip ? { podIP: extra.ip, podIPs: [{ ip: extra.ip }] } : {}) },
});

const netpol = (ns: string, name: string, spec: K8sNetworkPolicy['spec']): K8sNetworkPolicy => ({ metadata: { namespace: ns, name, resourceVersion: '1' }, spec });

function synced(s: K8sPolicySource): void {
  for (const r of ['pods', 'namespaces', 'networkpolicies'] as const) s.markSynced(r);
}

test('policyPod: labels, IPv4 addresses, every container port (TCP default), local by nodeName; finished pods are dropped', () => {
  const slim = slimPolicyPod(pod('x', 'a', { ip: '10.1.0.5', labels: { pod: 'a' } }), 'patu.dev/accel', true);
  assert.equal(slim.metadata.annotations, undefined, 'annotations other than patu.dev/accel are dropped');
  const p = policyPod(slim, 'n1')!;
  assert.deepEqual(p, {
    namespace: 'x', name: 'a', labels: { pod: 'a' }, ips: ['10.1.0.5'], local: true,
    ports: [
      { name: 'serve-80-tcp', containerPort: 80, protocol: 'TCP' }, { name: 'serve-81-udp', containerPort: 81, protocol: 'UDP' },
      { containerPort: 82, protocol: 'TCP' }, { name: 'serve-83-sctp', containerPort: 83, protocol: 'SCTP' },
    ],
  });
  assert.equal(policyPod(slimPolicyPod(pod('x', 'a', { node: 'n2' }), 'patu.dev/accel', true), 'n1')!.local, false);
  assert.equal(policyPod(pod('x', 'a', { phase: 'Succeeded', ip: '10.1.0.5' }), 'n1'), undefined);
  assert.equal(policyPod(pod('x', 'h', { hostNetwork: true, ip: '10.0.0.1' }), 'n1')!.hostNetwork, true);
  // CNI-known addresses fill in until the status has some.
  assert.deepEqual(policyPod(pod('x', 'a'), 'n1', ['10.1.0.9'])!.ips, ['10.1.0.9']);
  assert.deepEqual(policyPod(pod('x', 'a', { ip: '10.1.0.5' }), 'n1', ['10.1.0.9'])!.ips, ['10.1.0.5']);
  // The service side's shape (policy off) keeps neither labels nor ports.
  const svcSide = slimPolicyPod(pod('x', 'a', { ip: '10.1.0.5' }), 'patu.dev/accel', false);
  assert.equal(svcSide.metadata.labels, undefined);
  assert.equal(svcSide.spec?.containers, undefined);
});

test('convertNetworkPolicy: null and empty lists, selectors, ipBlock except, named ports, endPort, SCTP', () => {
  const p = convertNetworkPolicy(netpol('x', 'p', {
    podSelector: { matchLabels: { pod: 'a' } },
    policyTypes: ['Ingress', 'Egress'],
    ingress: [
      { from: [{ namespaceSelector: { matchExpressions: [{ key: 'ns', operator: 'In', values: ['y'] }] }, podSelector: {} }], ports: [{ port: 'serve-80-tcp' }] },
      { from: null, ports: null },
    ],
    egress: [{ to: [{ ipBlock: { cidr: '10.0.0.0/8', except: ['10.1.0.5/32'] } }], ports: [{ protocol: 'SCTP', port: 80 }, { protocol: 'TCP', port: 1000, endPort: 2000 }] }],
  }));
  assert.deepEqual(p, {
    metadata: { namespace: 'x', name: 'p' },
    spec: {
      podSelector: { matchLabels: { pod: 'a' } },
      policyTypes: ['Ingress', 'Egress'],
      ingress: [
        { from: [{ namespaceSelector: { matchExpressions: [{ key: 'ns', operator: 'In', values: ['y'] }] }, podSelector: {} }], ports: [{ protocol: 'TCP', port: 'serve-80-tcp' }] },
        {},
      ],
      egress: [{ to: [{ ipBlock: { cidr: '10.0.0.0/8', except: ['10.1.0.5/32'] } }], ports: [{ protocol: 'SCTP', port: 80 }, { protocol: 'TCP', port: 1000, endPort: 2000 }] }],
    },
  });
  // deny-all ingress: an empty podSelector and no rules.
  assert.deepEqual(convertNetworkPolicy(netpol('x', 'deny', { podSelector: {}, policyTypes: ['Ingress'] })).spec, { podSelector: {}, policyTypes: ['Ingress'] });
  assert.deepEqual(convertNetworkPolicy(netpol('x', 'deny', { podSelector: {}, ingress: [] })).spec, { podSelector: {}, ingress: [] });
});

test('K8sPolicySource: nothing before Pods, Namespaces and NetworkPolicies are all listed; then one coalesced state', async () => {
  const r = new Recorder();
  const s = new K8sPolicySource({ nodeName: 'n1', sink: r, coalesceMs: 5 });
  s.handleNamespace({ metadata: { name: 'x', labels: { 'kubernetes.io/metadata.name': 'x' } } });
  s.handlePod(slimPolicyPod(pod('x', 'a', { ip: '10.1.0.5' }), 'patu.dev/accel', true));
  s.handlePod(slimPolicyPod(pod('x', 'b', { ip: '10.1.0.6', node: 'n2' }), 'patu.dev/accel', true));
  s.markSynced('pods');
  s.markSynced('namespaces');
  await sleep(20);
  assert.equal(r.states.length, 0, 'a partial state is never programmed');
  assert.match(s.notReady()!, /networkpolicies/);
  s.handlePolicy(netpol('x', 'deny', { podSelector: {}, policyTypes: ['Ingress'] }));
  s.markSynced('networkpolicies');
  s.setNodeAddresses(['10.0.0.1', '10.1.0.1']);
  await sleep(20);
  assert.equal(r.states.length, 1);
  assert.equal(s.notReady(), undefined);
  assert.deepEqual(r.last.namespaces, [{ name: 'x', labels: { 'kubernetes.io/metadata.name': 'x' } }]);
  assert.deepEqual(r.last.pods.map((p) => `${p.name} ${p.ips} ${p.local}`), ['a 10.1.0.5 true', 'b 10.1.0.6 false']);
  assert.deepEqual(r.last.policies.map((p) => p.metadata.name), ['deny']);
  assert.deepEqual(r.last.nodeAddresses, ['10.0.0.1', '10.1.0.1']);
  // A burst of changes: applied together.
  for (let i = 0; i < 50; i++) s.handlePod(slimPolicyPod(pod('x', `p${i}`, { ip: `10.1.1.${i}` }), 'patu.dev/accel', true));
  s.handlePolicyDelete(netpol('x', 'deny', {}));
  await sleep(40);
  assert.ok(r.states.length <= 3, `${r.states.length} applies for one burst`);
  assert.equal(r.last.pods.length, 52);
  assert.equal(r.last.policies.length, 0);
  // A pod that finished leaves the state (its address may be reused).
  s.handlePod(slimPolicyPod(pod('x', 'a', { ip: '10.1.0.5', phase: 'Failed' }), 'patu.dev/accel', true));
  s.handleNamespaceDelete({ metadata: { name: 'x' } });
  await sleep(20);
  assert.equal(r.last.pods.length, 51);
  assert.equal(r.last.namespaces.length, 0);
  s.close();
});

test('K8sPolicySource: an isolated change is applied at once; only a stream is held back, and the window grows', async () => {
  const r = new Recorder();
  const s = new K8sPolicySource({ nodeName: 'n1', sink: r, coalesceMs: 100, maxCoalesceMs: 400 });
  synced(s);
  await sleep(150);
  const n = r.states.length;
  assert.ok(n >= 1, 'the initial state');
  // Long after the last apply: no wait (the next turn of the event loop).
  s.handlePolicy(netpol('x', 'a', { podSelector: {} }));
  await new Promise((res) => setImmediate(res));
  await new Promise((res) => setImmediate(res));
  assert.equal(r.states.length, n + 1, 'applied without waiting for the window');
  // Right after it: held back until the window has passed since that apply, then one apply for all.
  s.handlePolicy(netpol('x', 'b', { podSelector: {} }));
  s.handlePolicy(netpol('x', 'c', { podSelector: {} }));
  await sleep(30);
  assert.equal(r.states.length, n + 1, 'a stream waits for the window');
  await sleep(120);
  assert.equal(r.states.length, n + 2, 'then one apply');
  assert.deepEqual(r.last.policies.map((p) => p.metadata.name), ['a', 'b', 'c']);
  s.close();
});

test('K8sPolicySource: a failed apply is retried with the whole state', async () => {
  const r = new Recorder();
  r.fail = 2;
  const s = new K8sPolicySource({ nodeName: 'n1', sink: r, coalesceMs: 1, retryMs: 5 });
  synced(s);
  s.handlePolicy(netpol('x', 'p', { podSelector: {} }));
  await sleep(10);
  assert.match(s.notReady()!, /not programmed yet \(patu_pol_rule: capacity\)/);
  await sleep(40);
  assert.equal(r.states.length, 1);
  assert.equal(r.last.policies.length, 1);
  assert.equal(s.notReady(), undefined);
  s.close();
});

test('K8sPolicySource: CNI ADD addresses are applied at once, kept until the status has them, dropped on DEL', async () => {
  const r = new Recorder();
  const s = new K8sPolicySource({ nodeName: 'n1', sink: r, coalesceMs: 50, maxCoalesceMs: 50 });
  synced(s);
  s.handlePod(slimPolicyPod(pod('x', 'a'), 'patu.dev/accel', true)); // scheduled, no address yet
  await sleep(80);
  const n = r.states.length;
  assert.deepEqual(r.last.pods[0]!.ips, []);
  // ADD: synchronous, before the answer.
  assert.equal(s.podAddressKnown('x', 'a', ['10.1.0.7']), true);
  assert.equal(r.states.length, n + 1);
  assert.deepEqual(r.last.pods[0]!.ips, ['10.1.0.7']);
  // A later watch event without the address (e.g. a label change) keeps it.
  s.handlePod(slimPolicyPod(pod('x', 'a', { labels: { app: 'a', v: '2' } }), 'patu.dev/accel', true));
  await sleep(80);
  assert.deepEqual(r.last.pods[0]!.ips, ['10.1.0.7']);
  // The status catches up: the status is the truth from then on.
  s.handlePod(slimPolicyPod(pod('x', 'a', { ip: '10.1.0.7' }), 'patu.dev/accel', true));
  assert.equal(s.podAddressKnown('x', 'a', ['10.1.0.8']), false, 'the watch already has an address');
  // A pod the watch has not shown yet: kept for its arrival.
  assert.equal(s.podAddressKnown('x', 'late', ['10.1.0.9']), false);
  s.handlePod(slimPolicyPod(pod('x', 'late'), 'patu.dev/accel', true));
  await sleep(80);
  assert.deepEqual(r.last.pods.find((p) => p.name === 'late')!.ips, ['10.1.0.9']);
  s.podAddressGone('x', 'late');
  await sleep(80);
  assert.deepEqual(r.last.pods.find((p) => p.name === 'late')!.ips, []);
  s.close();
});

test('cniPodOf: the pod and addresses of a successful ADD from CNI_ARGS and the result', () => {
  const env = { CNI_COMMAND: 'ADD', CNI_ARGS: 'IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=a;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1', CNI_CONTAINERID: 'abc', CNI_NETNS: '/run/netns/x', CNI_IFNAME: 'eth0' };
  const out = JSON.stringify({ cniVersion: '1.0.0', ips: [{ address: '10.1.0.7/24', gateway: '10.1.0.1' }, { address: 'fd00::7/64' }] });
  const sandbox = { uid: 'u-1', containerId: 'abc', netns: '/run/netns/x', ifname: 'eth0' };
  assert.deepEqual(cniPodOf(env, out), { command: 'ADD', namespace: 'x', name: 'a', ips: ['10.1.0.7'], ...sandbox });
  assert.deepEqual(cniPodOf({ ...env, CNI_COMMAND: 'DEL' }, ''), { command: 'DEL', namespace: 'x', name: 'a', ips: [], ...sandbox });
  assert.equal(cniPodOf({ CNI_COMMAND: 'ADD', CNI_ARGS: 'PATU_ACCEL=off' }, out), undefined, 'not a Kubernetes pod (podman)');
  assert.equal(cniPodOf({ ...env, CNI_COMMAND: 'CHECK' }, out), undefined);
  assert.equal(cniPodOf(env, 'not json'), undefined);
  assert.equal(cniPodOf(env, '{"ips":[{"address":7}]}'), undefined);
});

test('K8sSource with policy: the cluster-wide pod watch feeds policy; acceleration flags only for this node\'s pods', async () => {
  const registered: string[] = [];
  const reg = {
    lookup: () => undefined,
    register: (ip: string, optOut: boolean) => registered.push(`${ip} ${optOut}`),
  } as unknown as PodRegistry;
  const r = new Recorder();
  const policy = new K8sPolicySource({ nodeName: 'n1', sink: r, coalesceMs: 1 });
  const src = new K8sSource({ nodeName: 'n1', clusterCIDR: '10.200.0.0/16', coalesceMs: 1, resyncMs: 0, podRegistry: () => reg, policy });
  const off = (p: K8sPolicyPod): K8sPolicyPod => slimPolicyPod({ ...p, metadata: { ...p.metadata, annotations: { 'patu.dev/accel': 'off' } } }, 'patu.dev/accel', true);
  src.handlePod(off(pod('x', 'here', { ip: '10.1.0.5' })));
  src.handlePod(off(pod('x', 'there', { ip: '10.1.0.6', node: 'n2' })));
  for (const res of ['services', 'endpointslices', 'pods', 'node', 'namespaces', 'networkpolicies'] as const) src.markSynced(res);
  await sleep(10);
  assert.deepEqual(registered, ['10.1.0.5 true']);
  assert.deepEqual(r.last.pods.map((p) => `${p.name} ${p.local}`).sort(), ['here true', 'there false']);
  src.handlePodDelete(off(pod('x', 'there', { ip: '10.1.0.6', node: 'n2' })), true);
  await sleep(10);
  assert.deepEqual(r.last.pods.map((p) => p.name), ['here']);
  assert.equal(src.notReady(), undefined);
  await src.close();
  policy.close();
});
