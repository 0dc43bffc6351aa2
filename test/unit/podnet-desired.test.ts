// src/podnet/desired.ts: the cross-object rules, by example, then as properties over
// random networks, configs, namespaces and pods (fast-check): no two interfaces share an
// address or a pod's name, nobody gets an interface from another namespace's config or
// from a network that does not admit it, a config applies to a pod whole or not at all,
// and the result does not depend on the order of the input.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { computeDesired, namespaceAdmitted, labelsMatch, resolveNetwork, vlanBridgeName, type DesiredInput } from '../../src/podnet/desired.js';
import { parseNodeNetwork, parsePodNetworkConfig } from '../../src/podnet/validate.js';
import { REASONS, type InterfaceSpec, type NodeNetwork, type NodeNetworkSpec, type PodInfo, type PodNetworkConfig, type Problem } from '../../src/podnet/types.js';

const net = (name: string, spec: Partial<NodeNetworkSpec> = {}, meta: Partial<NodeNetwork> = {}): NodeNetwork =>
  ({ name, uid: `u-${name}`, generation: 1, deleting: false, spec: { bridge: `br-${name}`, subnet: '10.210.0.0/24', namespaceSelector: {}, ...spec }, ...meta });
const cfg = (namespace: string, name: string, interfaces: InterfaceSpec[], o: Partial<PodNetworkConfig> = {}): PodNetworkConfig =>
  ({ namespace, name, uid: `u-${namespace}-${name}`, generation: 1, deleting: false, spec: { podSelector: { matchLabels: { app: 'cnf' } }, interfaces }, ...o });
const pod = (namespace: string, name: string, labels: Record<string, string> = { app: 'cnf' }, o: Partial<PodInfo> = {}): PodInfo =>
  ({ namespace, name, uid: `u-${namespace}-${name}`, labels, hostNetwork: false, deleting: false, ...o });
const nsMap = (...names: string[]): Map<string, Record<string, string>> =>
  new Map(names.map((n) => [n, { 'kubernetes.io/metadata.name': n, tenant: n === 'team-a' ? 'a' : 'other' }]));
const input = (o: Partial<DesiredInput>): DesiredInput => ({ networks: [], configs: [], namespaces: nsMap('team-a', 'team-b'), pods: [], clusterCidrs: ['10.200.0.0/16'], ...o });
/** Per pod key, 'ifname network address'. */
const summary = (d: ReturnType<typeof computeDesired>): Record<string, string[]> =>
  Object.fromEntries([...d.pods].map(([k, v]) => [k, v.interfaces.map((i) => `${i.ifname} ${i.network.name}${i.address ? ` ${i.address}` : ''}`)]));
const reasons = (ps: Problem[] | undefined): string[] => (ps ?? []).map((p) => `${p.field} ${p.reason}`);

test('a matching pod gets the interface, resolved against its network; others get nothing', () => {
  const d = computeDesired(input({
    networks: [net('field', { gateway: '10.210.0.1', mtu: 9000 })],
    configs: [cfg('team-a', 'cnf', [{ name: 'net1', network: 'field', address: '10.210.0.10/24', mac: '02:AA:00:00:00:01', routes: [{ to: '10.211.0.0/16', via: '10.210.0.1', table: 100 }], rules: [{ from: '10.210.0.0/24', table: 100 }] }])],
    pods: [pod('team-a', 'p1'), pod('team-a', 'other', { app: 'web' }), pod('team-a', 'host', { app: 'cnf' }, { hostNetwork: true }), pod('team-b', 'p1')],
  }));
  assert.deepEqual([...d.pods.keys()], ['team-a/p1']);
  assert.deepEqual(d.pods.get('team-a/p1')!.interfaces, [{
    config: { namespace: 'team-a', name: 'cnf' }, ifname: 'net1',
    network: { name: 'field', bridge: 'br-field', subnet: '10.210.0.0/24', gateway: '10.210.0.1', mtu: 9000 },
    address: '10.210.0.10/24', mac: '02:aa:00:00:00:01', mtu: 9000,
    routes: [{ to: '10.211.0.0/16', via: '10.210.0.1', table: 100 }], rules: [{ from: '10.210.0.0/24', table: 100 }],
  }]);
  assert.deepEqual([...d.networksInUse.keys()], ['field']);
  assert.deepEqual(Object.fromEntries([...d.configProblems].map(([k, v]) => [k, reasons(v)])), { 'team-a/cnf': [] });
  assert.deepEqual(Object.fromEntries([...d.networkProblems].map(([k, v]) => [k, reasons(v)])), { field: [] });
});

test('namespaceSelector: absent admits nobody, {} everyone, labels the selected; excluded configs configure nothing', () => {
  const closed = net('closed', { subnet: '10.210.1.0/24', namespaceSelector: undefined });
  const open = net('open', { subnet: '10.210.2.0/24', namespaceSelector: {} });
  const a = net('a-only', { subnet: '10.210.3.0/24', namespaceSelector: { matchLabels: { tenant: 'a' } } });
  assert.equal(namespaceAdmitted(closed, { tenant: 'a' }), false);
  assert.equal(namespaceAdmitted(open, undefined), true);
  assert.equal(namespaceAdmitted(a, undefined), false, 'unknown labels: not admitted');
  assert.equal(labelsMatch({ matchExpressions: [{ key: 'tenant', operator: 'NotIn', values: ['b'] }] }, { tenant: 'a' }), true);
  const d = computeDesired(input({
    networks: [closed, open, a],
    configs: [
      cfg('team-a', 'ok', [{ name: 'net1', network: 'a-only' }, { name: 'net2', network: 'open' }]),
      cfg('team-b', 'sneaky', [{ name: 'net1', network: 'a-only' }, { name: 'net2', network: 'open' }]),
      cfg('team-a', 'closed', [{ name: 'net3', network: 'closed' }]),
    ],
    pods: [pod('team-a', 'p'), pod('team-b', 'q')],
  }));
  assert.deepEqual(summary(d), { 'team-a/p': ['net1 a-only', 'net2 open'] }, 'team-b gets nothing at all, not even net2 on the open network');
  assert.deepEqual(reasons(d.configProblems.get('team-b/sneaky')), ['spec.interfaces[0].network NamespaceNotAllowed']);
  assert.deepEqual(reasons(d.configProblems.get('team-a/closed')), ['spec.interfaces[0].network NamespaceNotAllowed']);
  assert.match(d.configProblems.get('team-a/closed')![0]!.message, /no namespaceSelector/);
});

test('unknown network, address outside the subnet / the gateway / network address, MTU above the network\'s, next hop outside: config-level, nothing applied', () => {
  const networks = [net('field', { gateway: '10.210.0.1', mtu: 1500 })];
  const one = (i: InterfaceSpec) => {
    const d = computeDesired(input({ networks, configs: [cfg('team-a', 'c', [{ name: 'ok0', network: 'field' }, i])], pods: [pod('team-a', 'p')] }));
    assert.equal(d.pods.size, 0, `nothing half-applied: ${JSON.stringify(i)}`);
    return reasons(d.configProblems.get('team-a/c'));
  };
  assert.deepEqual(one({ name: 'net1', network: 'nope' }), ['spec.interfaces[1].network UnknownNetwork']);
  assert.deepEqual(one({ name: 'net1', network: 'field', address: '10.211.0.10/24' }), ['spec.interfaces[1].address AddressOutsideSubnet']);
  assert.deepEqual(one({ name: 'net1', network: 'field', address: '10.210.0.10/16' }), ['spec.interfaces[1].address AddressOutsideSubnet']);
  assert.deepEqual(one({ name: 'net1', network: 'field', address: '10.210.0.0/24' }), ['spec.interfaces[1].address AddressOutsideSubnet']);
  assert.deepEqual(one({ name: 'net1', network: 'field', address: '10.210.0.255/24' }), ['spec.interfaces[1].address AddressOutsideSubnet']);
  assert.deepEqual(one({ name: 'net1', network: 'field', address: '10.210.0.1/24' }), ['spec.interfaces[1].address AddressInUse']);
  assert.deepEqual(one({ name: 'net1', network: 'field', mtu: 1501 }), ['spec.interfaces[1].mtu InvalidSpec']);
  assert.deepEqual(one({ name: 'net1', network: 'field', routes: [{ to: 'default', via: '10.9.0.1', table: 7 }] }), ['spec.interfaces[1].routes[0].via InvalidSpec']);
  // The same static address twice in one config.
  const d = computeDesired(input({ networks, configs: [cfg('team-a', 'c', [{ name: 'a', network: 'field', address: '10.210.0.5/24' }, { name: 'b', network: 'field', address: '10.210.0.5/24' }])], pods: [pod('team-a', 'p')] }));
  assert.deepEqual(reasons(d.configProblems.get('team-a/c')), ['spec.interfaces[1].address AddressInUse']);
});

test('a static address with several matching pods: the first by name gets it (across nodes with remotePods), the others AddressInUse', () => {
  const networks = [net('field')];
  const configs = [cfg('team-a', 'c', [{ name: 'net1', network: 'field', address: '10.210.0.10/24' }])];
  const d = computeDesired(input({ networks, configs, pods: [pod('team-a', 'p2'), pod('team-a', 'p1'), pod('team-a', 'p3')] }));
  assert.deepEqual(summary(d), { 'team-a/p1': ['net1 field 10.210.0.10/24'] });
  assert.deepEqual(reasons(d.configProblems.get('team-a/c')), ['spec.interfaces[0].address AddressInUse'], 'one problem naming the pods');
  assert.equal(d.configProblems.get('team-a/c')![0]!.message,
    '10.210.0.10/24 is already pod team-a/p1 (net1)\'s (the first pod by name keeps it): nothing from this config for pods p2, p3');
  // Many pods: the first ten named, the rest counted.
  const many = computeDesired(input({ networks, configs, pods: Array.from({ length: 30 }, (_, i) => pod('team-a', `p${String(i).padStart(2, '0')}`)) }));
  assert.match(many.configProblems.get('team-a/c')![0]!.message, /for pods p01, p02, .*, p10 and 19 more$/);
  // p1 runs on another node: p2 here gets nothing, and no problem is reported for p1 by this node.
  const r = computeDesired(input({ networks, configs, pods: [pod('team-a', 'p2')], remotePods: [pod('team-a', 'p1')] }));
  assert.deepEqual(summary(r), {});
  assert.deepEqual(reasons(r.configProblems.get('team-a/c')), ['spec.interfaces[0].address AddressInUse']);
});

test('the same interface name from two configs: the older config keeps it, the newer is refused for that pod whole', () => {
  const networks = [net('n1'), net('n2', { subnet: '10.211.0.0/24' })];
  const d = computeDesired(input({
    networks,
    configs: [
      cfg('team-a', 'zz-old', [{ name: 'net1', network: 'n1' }], { creationTimestamp: '2026-01-01T00:00:00Z' }),
      cfg('team-a', 'aa-new', [{ name: 'net1', network: 'n2' }, { name: 'net2', network: 'n2' }], { creationTimestamp: '2026-01-02T00:00:00Z' }),
    ],
    pods: [pod('team-a', 'p'), pod('team-a', 'q', { app: 'cnf', only: 'new' })],
  }));
  assert.deepEqual(summary(d), { 'team-a/p': ['net1 n1'], 'team-a/q': ['net1 n1'] });
  assert.deepEqual(reasons(d.configProblems.get('team-a/aa-new')), ['spec.interfaces[0].name DuplicateInterface']);
  assert.equal(d.configProblems.get('team-a/aa-new')![0]!.message,
    'net1 is already given by PodNetworkConfig team-a/zz-old (the older config keeps it): nothing from this config for pods p, q');
});

test('network conflicts: overlap with the cluster CIDR or an older network, a VLAN tag or VLAN bridge taken; the older keeps it', () => {
  const d = computeDesired(input({
    networks: [
      net('cluster', { subnet: '10.200.5.0/24' }),
      net('old', { subnet: '10.210.0.0/16' }, { creationTimestamp: '2026-01-01T00:00:00Z' }),
      net('new', { subnet: '10.210.7.0/24' }, { creationTimestamp: '2026-01-02T00:00:00Z' }),
      net('v1', { bridge: undefined, vlan: { link: 'eth1', id: 100 }, subnet: '10.220.0.0/24' }, { creationTimestamp: '2026-01-03T00:00:00Z' }),
      net('v2', { bridge: undefined, vlan: { link: 'eth1', id: 100 }, subnet: '10.221.0.0/24' }, { creationTimestamp: '2026-01-04T00:00:00Z' }),
      net('v3', { bridge: 'br-old', vlan: { link: 'eth1', id: 101 }, subnet: '10.222.0.0/24' }, { creationTimestamp: '2026-01-05T00:00:00Z' }),
    ],
    configs: [cfg('team-a', 'c', [{ name: 'net1', network: 'new' }])],
    pods: [pod('team-a', 'p')],
  }));
  assert.deepEqual(Object.fromEntries([...d.networkProblems].map(([k, v]) => [k, reasons(v)])), {
    cluster: ['spec.subnet SubnetOverlap'], new: ['spec.subnet SubnetOverlap'], old: [], v1: [], v2: ['spec.vlan InvalidVlan'], v3: ['spec.bridge InvalidVlan'],
  });
  assert.deepEqual(summary(d), {});
  assert.deepEqual(reasons(d.configProblems.get('team-a/c')), ['spec.interfaces[0].network UnknownNetwork']);
  assert.match(d.configProblems.get('team-a/c')![0]!.message, /cannot be used/);
  assert.equal(resolveNetwork(net('v1', { bridge: undefined, vlan: { link: 'eth1', id: 100 } })).bridge, vlanBridgeName('v1', 100));
  assert.match(vlanBridgeName('v1', 4094), /^pv4094-[0-9a-f]{6}$/);
});

test('a terminating network keeps the pods attached to it and takes no new ones', () => {
  const networks = [net('field', {}, { deleting: true })];
  const configs = [cfg('team-a', 'c', [{ name: 'net1', network: 'field' }])];
  const d = computeDesired(input({
    networks, configs, pods: [pod('team-a', 'old'), pod('team-a', 'new')],
    attached: new Map([['team-a/old', [{ ifname: 'net1', network: 'field' }]], ['team-a/new', [{ ifname: 'net1', network: 'elsewhere' }]]]),
  }));
  assert.deepEqual(summary(d), { 'team-a/old': ['net1 field'] });
  assert.deepEqual(reasons(d.configProblems.get('team-a/c')), ['spec.interfaces[0].network NetworkTerminating']);
  assert.deepEqual(summary(computeDesired(input({ networks, configs, pods: [pod('team-a', 'old')] }))), {}, 'no attached input: no users');
});

test('a config being deleted asks for nothing; a pod being deleted keeps its interfaces', () => {
  const d = computeDesired(input({
    networks: [net('field')],
    configs: [cfg('team-a', 'gone', [{ name: 'net1', network: 'field' }], { deleting: true }), cfg('team-a', 'c', [{ name: 'net2', network: 'field' }])],
    pods: [pod('team-a', 'p', { app: 'cnf' }, { deleting: true })],
  }));
  assert.deepEqual(summary(d), { 'team-a/p': ['net2 field'] });
  assert.deepEqual([...d.configProblems.keys()], ['team-a/c']);
});

test('validate.ts output feeds computeDesired', () => {
  const n = parseNodeNetwork({ metadata: { name: 'field', uid: 'x', generation: 1 }, spec: { bridge: 'field0', subnet: '10.210.0.0/24', namespaceSelector: { matchLabels: { tenant: 'a' } } } });
  const c = parsePodNetworkConfig({ metadata: { name: 'c', namespace: 'team-a', uid: 'y', generation: 1 }, spec: { podSelector: {}, interfaces: [{ name: 'net1', network: 'field' }] } });
  assert.ok(n.ok && c.ok);
  const d = computeDesired(input({ networks: [n.value], configs: [c.value], pods: [pod('team-a', 'p', {})] }));
  assert.deepEqual(summary(d), { 'team-a/p': ['net1 field'] });
});

// ---- Properties ------------------------------------------------------------------------

const NS = ['team-a', 'team-b', 'team-c'];
const LABELS = ['x', 'y'];
const labelsArb = fc.dictionary(fc.constantFrom('app', 'tier'), fc.constantFrom(...LABELS), { maxKeys: 2 });
const selectorArb = fc.oneof(
  fc.constant({}),
  fc.constant({}),
  fc.record({ matchLabels: labelsArb }),
  fc.record({ matchExpressions: fc.array(fc.record({ key: fc.constantFrom('app', 'tier'), operator: fc.constantFrom('In' as const, 'NotIn' as const), values: fc.array(fc.constantFrom(...LABELS), { minLength: 1, maxLength: 2 }) }), { maxLength: 2 }) }),
);
const tsArb = fc.option(fc.integer({ min: 1, max: 9 }).map((d) => `2026-01-0${d}T00:00:00Z`), { nil: undefined });
const rare = (weight = 1) => fc.oneof({ arbitrary: fc.constant(false), weight: 6 }, { arbitrary: fc.constant(true), weight });
const networkArb = (i: number): fc.Arbitrary<NodeNetwork> => fc.record({
  // Mostly a subnet of its own (10.21<i>.0.0/24); sometimes one that overlaps another
  // network's or the cluster CIDR.
  subnet: fc.oneof({ arbitrary: fc.constant(`10.21${i}.0.0/24`), weight: 6 }, { arbitrary: fc.constantFrom('10.210.0.0/16', '10.200.9.0/24', '10.211.0.0/24'), weight: 1 }),
  ns: fc.oneof({ arbitrary: fc.constant({}), weight: 4 }, { arbitrary: fc.constant(undefined), weight: 1 },
    { arbitrary: fc.record({ matchLabels: fc.record({ tenant: fc.constantFrom('a', 'b', 'c') }) }), weight: 2 }),
  deleting: rare(),
  ts: tsArb,
}).map((r) => ({
  name: `n${i}`, uid: `u${i}`, generation: 1, deleting: r.deleting, ...(r.ts ? { creationTimestamp: r.ts } : {}),
  spec: { bridge: `br${i}`, subnet: r.subnet, ...(r.ns ? { namespaceSelector: r.ns } : {}) },
}));
const ifaceArb: fc.Arbitrary<InterfaceSpec> = fc.record({
  name: fc.constantFrom('net1', 'net2', 'net3'),
  net: fc.oneof({ arbitrary: fc.integer({ min: 0, max: 3 }), weight: 8 }, { arbitrary: fc.constant(9), weight: 1 }),
  // Mostly dynamic; static ones mostly inside their network's /24, a few outside or with another prefix.
  address: fc.oneof({ arbitrary: fc.constant(undefined), weight: 3 }, { arbitrary: fc.constantFrom('10', '11'), weight: 3 },
    { arbitrary: fc.constantFrom('out', 'prefix'), weight: 1 }),
}).map((i) => {
  const network = i.net === 9 ? 'missing' : `n${i.net}`;
  if (i.address === undefined) return { name: i.name, network };
  const address = i.address === 'out' ? '10.199.0.10/24' : i.address === 'prefix' ? `10.21${i.net}.0.10/16` : `10.21${i.net}.0.${i.address}/24`;
  return { name: i.name, network, address };
});
const configArb = (i: number): fc.Arbitrary<PodNetworkConfig> => fc.record({
  ns: fc.constantFrom(...NS), sel: selectorArb, ts: tsArb, deleting: rare(),
  ifaces: fc.uniqueArray(ifaceArb, { minLength: 1, maxLength: 2, selector: (x) => x.name }),
}).map((r) => cfg(r.ns, `c${i}`, r.ifaces, { deleting: r.deleting, ...(r.ts ? { creationTimestamp: r.ts } : {}), spec: { podSelector: r.sel, interfaces: r.ifaces } }));
const podArb = (i: number): fc.Arbitrary<PodInfo> => fc.record({ ns: fc.constantFrom(...NS), labels: labelsArb, hostNetwork: rare() })
  .map((r) => pod(r.ns, `p${i}`, r.labels, { hostNetwork: r.hostNetwork }));
const indexed = <T>(f: (i: number) => fc.Arbitrary<T>, min: number, max: number): fc.Arbitrary<T[]> =>
  fc.integer({ min, max }).chain((n) => (n === 0 ? fc.constant([]) : fc.tuple(...Array.from({ length: n }, (_, i) => f(i)))));
const worldArb = fc.record({
  networks: indexed(networkArb, 3, 4),
  configs: indexed(configArb, 1, 5),
  pods: indexed(podArb, 1, 8),
  nsLabels: fc.record({ 'team-a': fc.constantFrom('a', 'b'), 'team-b': fc.constantFrom('a', 'b', 'c') }),
  attachedSome: fc.boolean(),
}).map((w): DesiredInput => ({
  networks: w.networks, configs: w.configs, pods: w.pods, clusterCidrs: ['10.200.0.0/16'],
  // team-c's labels are not known (a namespace not synced yet).
  namespaces: new Map([['team-a', { tenant: w.nsLabels['team-a'] }], ['team-b', { tenant: w.nsLabels['team-b'] }]]),
  ...(w.attachedSome ? { attached: new Map(w.pods.map((p) => [`${p.namespace}/${p.name}`, [{ ifname: 'net1', network: 'n0' }]])) } : {}),
}));

/** A comparable rendering of the whole result (Map order included). */
const render = (d: ReturnType<typeof computeDesired>): string => JSON.stringify({
  pods: [...d.pods], networksInUse: [...d.networksInUse], configProblems: [...d.configProblems], networkProblems: [...d.networkProblems],
});

test('property: no two interfaces share an address or a pod\'s name; nothing crosses a namespace or a selector; a config applies whole or not at all', () => {
  const stats = { pods: 0, static: 0, reasons: new Set<string>(), count: {} as Record<string, number> };
  fc.assert(fc.property(worldArb, (w) => {
    const d = computeDesired(w);
    const configs = new Map(w.configs.map((c) => [`${c.namespace}/${c.name}`, c]));
    const networks = new Map(w.networks.map((n) => [n.name, n]));
    const seenAddr = new Set<string>();
    for (const [key, { pod: p, interfaces }] of d.pods) {
      assert.equal(key, `${p.namespace}/${p.name}`);
      assert.ok(w.pods.includes(p), 'only this node\'s pods');
      assert.equal(p.hostNetwork, false);
      assert.ok(interfaces.length > 0);
      const names = interfaces.map((i) => i.ifname);
      assert.equal(new Set(names).size, names.length, `one name once per pod: ${names}`);
      const perConfig = new Map<string, number>();
      for (const i of interfaces) {
        const c = configs.get(`${i.config.namespace}/${i.config.name}`)!;
        assert.equal(c.namespace, p.namespace, 'a config configures its own namespace only');
        assert.equal(c.deleting, false);
        assert.ok(labelsMatch(c.spec.podSelector, p.labels), 'the podSelector matches');
        const n = networks.get(i.network.name)!;
        assert.ok(n.spec.namespaceSelector !== undefined, 'never a network without namespaceSelector');
        assert.ok(namespaceAdmitted(n, w.namespaces.get(p.namespace)), 'the network admits the namespace');
        assert.ok(d.networksInUse.has(n.name));
        assert.deepEqual(d.networkProblems.get(n.name), [], 'never an unusable network');
        if (n.deleting) assert.ok(w.attached?.get(key)?.some((a) => a.ifname === i.ifname && a.network === n.name), 'terminating: existing users only');
        if (i.address) {
          const a = `${i.network.name}|${i.address.split('/')[0]}`;
          assert.ok(!seenAddr.has(a), `address ${a} given twice`);
          seenAddr.add(a);
        }
        perConfig.set(`${i.config.namespace}/${i.config.name}`, (perConfig.get(`${i.config.namespace}/${i.config.name}`) ?? 0) + 1);
      }
      for (const [ck, count] of perConfig) assert.equal(count, configs.get(ck)!.spec.interfaces.length, `config ${ck} applied whole to ${key}`);
    }
    // Every config and network is accounted for.
    assert.deepEqual([...d.configProblems.keys()].sort(), w.configs.filter((c) => !c.deleting).map((c) => `${c.namespace}/${c.name}`).sort());
    assert.deepEqual([...d.networkProblems.keys()].sort(), w.networks.map((n) => n.name).sort());
    // Usable networks never overlap each other or the cluster CIDR.
    const usable = w.networks.filter((n) => d.networkProblems.get(n.name)!.length === 0);
    for (const n of usable) assert.ok(!n.spec.subnet.startsWith('10.200.'));
    const has16 = usable.some((n) => n.spec.subnet === '10.210.0.0/16');
    if (has16) assert.ok(!usable.some((n) => n.spec.subnet === '10.210.0.0/24' || n.spec.subnet === '10.210.1.0/24'));
    stats.pods += d.pods.size;
    stats.static += [...d.pods.values()].flatMap((x) => x.interfaces).filter((i) => i.address).length;
    for (const ps of d.configProblems.values()) for (const p of ps) { stats.reasons.add(p.reason); stats.count[p.reason] = (stats.count[p.reason] ?? 0) + 1; }
  }), { numRuns: 400 });
  // Not vacuous: the worlds give pods interfaces, static addresses, and every kind of refusal.
  assert.ok(stats.pods > 80 && stats.static > 25, JSON.stringify({ ...stats, reasons: [...stats.reasons] }));
  assert.deepEqual([...stats.reasons].sort(), [REASONS.addressInUse, REASONS.addressOutsideSubnet, REASONS.duplicateInterface, REASONS.namespaceNotAllowed, REASONS.networkTerminating, REASONS.unknownNetwork].sort());
});

test('property: the result does not depend on the order of the input', () => {
  fc.assert(fc.property(worldArb, fc.integer(), (w, seed) => {
    const shuffle = <T>(a: T[]): T[] => {
      const out = [...a];
      let s = seed >>> 0;
      for (let i = out.length - 1; i > 0; i--) {
        s = (Math.imul(s, 1103515245) + 12345) >>> 0;
        const j = s % (i + 1);
        [out[i], out[j]] = [out[j]!, out[i]!];
      }
      return out;
    };
    const a = computeDesired(w);
    const b = computeDesired({ ...w, networks: shuffle(w.networks), configs: shuffle(w.configs), pods: shuffle(w.pods), namespaces: new Map(shuffle([...w.namespaces])) });
    assert.equal(render(b), render(a));
  }), { numRuns: 300 });
});
