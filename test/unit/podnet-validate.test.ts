// src/podnet/validate.ts: one NodeNetwork / PodNetworkConfig object -> typed value, or
// problems naming the field with their reason. The same inputs are sent to a real
// apiserver with the CRDs in test/integration/podnet-crd.test.ts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseNodeNetwork, parsePodNetworkConfig } from '../../src/podnet/validate.js';
import { REASONS } from '../../src/podnet/types.js';

const network = (spec: Record<string, unknown>, meta: Record<string, unknown> = {}) => ({
  apiVersion: 'network.patu.dev/v1alpha1', kind: 'NodeNetwork',
  metadata: { name: 'field', uid: 'u1', generation: 3, creationTimestamp: '2026-01-01T00:00:00Z', ...meta },
  spec,
});
const config = (interfaces: unknown[], extra: Record<string, unknown> = {}) => ({
  apiVersion: 'network.patu.dev/v1alpha1', kind: 'PodNetworkConfig',
  metadata: { name: 'cnf', namespace: 'team-a', uid: 'u2', generation: 1 },
  spec: { podSelector: { matchLabels: { app: 'cnf' } }, interfaces, ...extra },
});
const iface = (o: Record<string, unknown> = {}) => ({ name: 'net1', network: 'field', ...o });

/** The problems as 'field reason' strings. */
const problemsOf = (r: { ok: boolean; problems?: { field: string; reason: string }[] }): string[] =>
  r.ok ? [] : r.problems!.map((p) => `${p.field} ${p.reason}`);

test('a full NodeNetwork parses to exactly its fields', () => {
  const r = parseNodeNetwork(network({
    bridge: 'field0', subnet: '10.210.0.0/24', gateway: '10.210.0.1', mtu: 1500, rangeStart: '10.210.0.10', rangeEnd: '10.210.0.200',
    namespaceSelector: { matchLabels: { tenant: 'a' }, matchExpressions: [{ key: 'env', operator: 'In', values: ['prod'] }] },
    unknownField: 'pruned by the apiserver, ignored here',
  }, { deletionTimestamp: '2026-01-02T00:00:00Z' }));
  assert.deepEqual(r, {
    ok: true,
    value: {
      name: 'field', uid: 'u1', generation: 3, deleting: true, creationTimestamp: '2026-01-01T00:00:00Z',
      spec: {
        bridge: 'field0', subnet: '10.210.0.0/24', gateway: '10.210.0.1', mtu: 1500, rangeStart: '10.210.0.10', rangeEnd: '10.210.0.200',
        namespaceSelector: { matchLabels: { tenant: 'a' }, matchExpressions: [{ key: 'env', operator: 'In', values: ['prod'] }] },
      },
    },
  });
  const v = parseNodeNetwork(network({ vlan: { link: 'eth1', id: 100 }, subnet: '10.211.0.0/24' }));
  assert.deepEqual(v.ok && v.value.spec, { vlan: { link: 'eth1', id: 100 }, subnet: '10.211.0.0/24' });
});

test('NodeNetwork: each bad field is named, with its reason', () => {
  const cases: [Record<string, unknown>, string[]][] = [
    [{ subnet: '10.210.0.0/24' }, ['spec InvalidSpec']],
    [{ bridge: 'a-very-long-bridge-name', subnet: '10.210.0.0/24' }, ['spec.bridge InvalidSpec']],
    [{ bridge: 'br/0', subnet: '10.210.0.0/24' }, ['spec.bridge InvalidSpec']],
    [{ vlan: { link: 'eth1', id: 0 }, subnet: '10.210.0.0/24' }, ['spec.vlan.id InvalidVlan']],
    [{ vlan: { link: 'eth1', id: 4095 }, subnet: '10.210.0.0/24' }, ['spec.vlan.id InvalidVlan']],
    [{ vlan: { link: 'eth1', id: 1.5 }, subnet: '10.210.0.0/24' }, ['spec.vlan.id InvalidSpec']],
    [{ bridge: 'b', subnet: '10.210.0.5/24' }, ['spec.subnet InvalidSpec']],
    [{ bridge: 'b', subnet: '10.210.0.0/31' }, ['spec.subnet InvalidSpec']],
    [{ bridge: 'b', subnet: 'fd00::/64' }, ['spec.subnet InvalidSpec']],
    [{ bridge: 'b', subnet: '10.210.0.0/24', gateway: '10.211.0.1' }, ['spec.gateway AddressOutsideSubnet']],
    [{ bridge: 'b', subnet: '10.210.0.0/24', gateway: '10.210.0.255' }, ['spec.gateway AddressOutsideSubnet']],
    [{ bridge: 'b', subnet: '10.210.0.0/24', gateway: '010.210.0.1' }, ['spec.gateway InvalidSpec']],
    [{ bridge: 'b', subnet: '10.210.0.0/24', rangeStart: '10.210.0.50', rangeEnd: '10.210.0.40' }, ['spec.rangeEnd InvalidSpec']],
    [{ bridge: 'b', subnet: '10.210.0.0/24', mtu: 67 }, ['spec.mtu InvalidSpec']],
    [{ bridge: 'b', subnet: '10.210.0.0/24', namespaceSelector: { matchExpressions: [{ key: 'k', operator: 'In' }] } }, ['spec.namespaceSelector.matchExpressions[0].values InvalidSpec']],
    [{ bridge: 'b', subnet: '10.210.0.0/24', namespaceSelector: { matchExpressions: [{ key: 'k', operator: 'Exists', values: ['x'] }] } }, ['spec.namespaceSelector.matchExpressions[0].values InvalidSpec']],
    [{ bridge: 'b', subnet: '10.210.0.0/24', namespaceSelector: { matchExpressions: [{ key: 'k', operator: 'Like' }] } }, ['spec.namespaceSelector.matchExpressions[0].operator InvalidSpec']],
    [{ bridge: 'b', subnet: 7 }, ['spec.subnet InvalidSpec']],
  ];
  for (const [spec, want] of cases) assert.deepEqual(problemsOf(parseNodeNetwork(network(spec))), want, JSON.stringify(spec));
  assert.deepEqual(parseNodeNetwork({ metadata: {} }), {
    ok: false, problems: [
      { field: 'metadata.name', reason: REASONS.invalidSpec, message: 'Invalid input: expected string, received undefined' },
      { field: 'spec', reason: REASONS.invalidSpec, message: 'Invalid input: expected object, received undefined' },
    ],
  });
  const r = parseNodeNetwork(network({ vlan: { link: 'eth1', id: 4095 }, subnet: '10.210.0.0/24' }));
  assert.equal(r.ok, false);
  assert.equal(!r.ok && r.name, 'field');
  assert.match(!r.ok ? r.problems[0]!.message : '', /4095 is outside 1-4094/);
});

test('a full PodNetworkConfig parses to exactly its fields', () => {
  const r = parsePodNetworkConfig(config([iface({
    address: '10.210.0.10/24', mtu: 1400, mac: '02:AA:bb:cc:dd:ee',
    routes: [{ to: '10.211.0.0/16', via: '10.210.0.1', table: 100 }, { to: 'default', via: '10.210.0.1', table: 100, metric: 5 }],
    rules: [{ from: '10.210.0.0/24', table: 100 }, { to: '10.212.0.0/16', table: 100, priority: 900 }],
  }), iface({ name: 'net2', network: 'other.example' })]));
  assert.deepEqual(r, {
    ok: true,
    value: {
      namespace: 'team-a', name: 'cnf', uid: 'u2', generation: 1, deleting: false,
      spec: {
        podSelector: { matchLabels: { app: 'cnf' } },
        interfaces: [
          {
            name: 'net1', network: 'field', address: '10.210.0.10/24', mtu: 1400, mac: '02:AA:bb:cc:dd:ee',
            routes: [{ to: '10.211.0.0/16', via: '10.210.0.1', table: 100 }, { to: 'default', via: '10.210.0.1', table: 100, metric: 5 }],
            rules: [{ from: '10.210.0.0/24', table: 100 }, { to: '10.212.0.0/16', table: 100, priority: 900 }],
          },
          { name: 'net2', network: 'other.example' },
        ],
      },
    },
  });
});

test('PodNetworkConfig: each bad field is named, with its reason', () => {
  const cases: [unknown[], string[]][] = [
    [[], ['spec.interfaces InvalidSpec']],
    [[iface(), iface({ network: 'x' })], ['spec.interfaces[1].name DuplicateInterface']],
    [[iface({ name: 'eth0' })], ['spec.interfaces[0].name InvalidSpec']],
    [[iface({ name: 'lo' })], ['spec.interfaces[0].name InvalidSpec']],
    [[iface({ name: 'net 1' })], ['spec.interfaces[0].name InvalidSpec']],
    [[iface({ network: 'Field' })], ['spec.interfaces[0].network InvalidSpec']],
    [[iface({ address: '10.210.0.10' })], ['spec.interfaces[0].address InvalidSpec']],
    [[iface({ address: '10.210.0.300/24' })], ['spec.interfaces[0].address InvalidSpec']],
    [[iface({ address: '10.210.0.10/32' })], ['spec.interfaces[0].address InvalidSpec']],
    [[iface({ mac: '01:00:5e:00:00:01' })], ['spec.interfaces[0].mac InvalidSpec']],
    [[iface({ mac: '02-00-00-00-00-01' })], ['spec.interfaces[0].mac InvalidSpec']],
    [[iface({ mtu: 70000 })], ['spec.interfaces[0].mtu InvalidSpec']],
    [[iface({ routes: [{ to: '10.211.0.0/16', table: 254 }] })], ['spec.interfaces[0].routes[0].table ReservedTable']],
    [[iface({ routes: [{ to: '10.211.0.0/16', table: 255 }] })], ['spec.interfaces[0].routes[0].table ReservedTable']],
    [[iface({ routes: [{ to: '10.211.0.0/16', table: 253 }] })], ['spec.interfaces[0].routes[0].table ReservedTable']],
    [[iface({ routes: [{ to: '10.211.0.0/16', table: 0 }] })], ['spec.interfaces[0].routes[0].table ReservedTable']],
    [[iface({ routes: [{ to: '10.211.0.0/16', table: 4294967296 }] })], ['spec.interfaces[0].routes[0].table InvalidSpec']],
    [[iface({ routes: [{ to: '10.211.0.1/16', table: 100 }] })], ['spec.interfaces[0].routes[0].to InvalidSpec']],
    [[iface({ routes: [{ to: '10.211.0.0/16', via: 'gw', table: 100 }] })], ['spec.interfaces[0].routes[0].via InvalidSpec']],
    [[iface({ routes: [{ to: '10.211.0.0/16' }] })], ['spec.interfaces[0].routes[0].table InvalidSpec']],
    [[iface({ rules: [{ from: '10.210.0.0/24', table: 254 }] })], ['spec.interfaces[0].rules[0].table ReservedTable']],
    [[iface({ rules: [{ from: '10.210.0.0/24', table: 100, priority: 32766 }] })], ['spec.interfaces[0].rules[0].priority InvalidSpec']],
    [[iface({ rules: [{ from: 'x', table: 100 }] })], ['spec.interfaces[0].rules[0].from InvalidSpec']],
    [Array.from({ length: 17 }, (_, i) => iface({ name: `net${i}` })), ['spec.interfaces InvalidSpec']],
  ];
  for (const [interfaces, want] of cases) assert.deepEqual(problemsOf(parsePodNetworkConfig(config(interfaces))), want, JSON.stringify(interfaces));
  // Several problems at once: all reported.
  assert.deepEqual(problemsOf(parsePodNetworkConfig(config([iface({ routes: [{ to: '10.211.0.0/16', table: 254 }] }), iface({ address: 'x' })]))),
    ['spec.interfaces[0].routes[0].table ReservedTable', 'spec.interfaces[1].address InvalidSpec', 'spec.interfaces[1].name DuplicateInterface']);
  const noNs = parsePodNetworkConfig({ metadata: { name: 'cnf' }, spec: { podSelector: {}, interfaces: [iface()] } });
  assert.deepEqual(problemsOf(noNs), ['metadata.namespace InvalidSpec']);
  const bad = parsePodNetworkConfig(config([iface({ name: 'eth0' })]));
  assert.deepEqual(!bad.ok && bad.ref, { namespace: 'team-a', name: 'cnf' });
  assert.deepEqual(problemsOf(parsePodNetworkConfig(config([iface()], { podSelector: undefined }))), ['spec.podSelector InvalidSpec']);
  assert.deepEqual(problemsOf(parsePodNetworkConfig(null)), ['(root) InvalidSpec']);
});
