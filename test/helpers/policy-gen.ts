// Policy states for the tests: the upstream Netpol e2e model (namespaces x, y, z with
// pods a, b, c serving 80 and 81 over TCP, UDP and SCTP with named ports) and
// fast-check arbitraries of random pods, labels, namespaces, policies and ports,
// shared by the compiler's unit test and the kernel property test.
import fc from 'fast-check';
import type {
  LabelSelector, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
  PolicyPod, PolicyProtocol, PolicyState,
} from '../../src/policy/types.js';

export const E2E_NAMESPACES = ['x', 'y', 'z'] as const;
export const E2E_PODS = ['a', 'b', 'c'] as const;
const PROTOS: PolicyProtocol[] = ['TCP', 'UDP', 'SCTP'];

/** 10.200.<ns index + 1>.<pod index + 10> */
export const e2eIp = (ns: string, pod: string): string =>
  `10.200.${E2E_NAMESPACES.indexOf(ns as 'x') + 1}.${E2E_PODS.indexOf(pod as 'a') + 10}`;

/** The Netpol e2e suite's model: 3 namespaces x 3 pods, each serving 80/81 on every protocol with named ports. */
export function e2eState(policies: NetworkPolicy[] = []): PolicyState {
  const pods: PolicyPod[] = [];
  for (const ns of E2E_NAMESPACES) {
    for (const pod of E2E_PODS) {
      pods.push({
        namespace: ns, name: pod, labels: { pod }, ips: [e2eIp(ns, pod)], local: true,
        ports: PROTOS.flatMap((protocol) => [80, 81].map((containerPort) => ({ name: `serve-${containerPort}-${protocol.toLowerCase()}`, containerPort, protocol }))),
      });
    }
  }
  return { namespaces: E2E_NAMESPACES.map((name) => ({ name, labels: { ns: name } })), pods, policies, nodeAddresses: ['10.200.0.1', '192.168.1.10'] };
}

export const np = (namespace: string, name: string, spec: NetworkPolicy['spec']): NetworkPolicy => ({
  apiVersion: 'networking.k8s.io/v1', kind: 'NetworkPolicy', metadata: { namespace, name }, spec,
});

// ---------- random states ----------

const LABEL_KEYS = ['app', 'tier', 'env'];
const LABEL_VALUES = ['a', 'b', 'c'];
const NS_NAMES = ['n1', 'n2', 'n3'];
const PORT_NAMES = ['http', 'dns', 'alt'];
const PORTS = [53, 80, 81, 443, 8080];

const labelsArb = fc.dictionary(fc.constantFrom(...LABEL_KEYS), fc.constantFrom(...LABEL_VALUES), { maxKeys: 3 });

const selectorArb: fc.Arbitrary<LabelSelector> = fc.record({
  matchLabels: fc.option(fc.dictionary(fc.constantFrom(...LABEL_KEYS), fc.constantFrom(...LABEL_VALUES), { maxKeys: 2 }), { nil: undefined }),
  matchExpressions: fc.option(fc.array(fc.oneof(
    fc.record({ key: fc.constantFrom(...LABEL_KEYS), operator: fc.constantFrom('In' as const, 'NotIn' as const), values: fc.uniqueArray(fc.constantFrom(...LABEL_VALUES), { minLength: 1, maxLength: 2 }) }),
    fc.record({ key: fc.constantFrom(...LABEL_KEYS), operator: fc.constantFrom('Exists' as const, 'DoesNotExist' as const) }),
  ), { maxLength: 2 }), { nil: undefined }),
}, { requiredKeys: [] }).map((s) => {
  const out: LabelSelector = {};
  if (s.matchLabels && Object.keys(s.matchLabels).length) out.matchLabels = s.matchLabels;
  if (s.matchExpressions && s.matchExpressions.length) out.matchExpressions = s.matchExpressions;
  return out;
});

/** Pod addresses are 10.9.<ns>.<n>; ipBlocks are drawn around them and outside. */
const cidrArb = fc.oneof(
  fc.constantFrom('10.9.0.0/16', '10.9.1.0/24', '10.9.2.0/24', '10.9.1.0/25', '10.9.1.128/25', '0.0.0.0/0', '192.168.0.0/16', '10.0.0.0/8'),
  fc.tuple(fc.integer({ min: 1, max: 3 }), fc.integer({ min: 0, max: 15 }), fc.constantFrom(28, 30, 32)).map(([a, b, len]) => {
    const host = (b * 16) >> 0;
    const mask = len === 32 ? 255 : 256 - (1 << (32 - len));
    return `10.9.${a}.${host & mask}/${len}`;
  }),
);

const peerArb: fc.Arbitrary<NetworkPolicyPeer> = fc.oneof(
  selectorArb.map((podSelector) => ({ podSelector })),
  selectorArb.map((namespaceSelector) => ({ namespaceSelector })),
  fc.tuple(selectorArb, selectorArb).map(([podSelector, namespaceSelector]) => ({ podSelector, namespaceSelector })),
  fc.tuple(cidrArb, fc.array(cidrArb, { maxLength: 2 })).map(([cidr, ex]) => {
    // except must be inside cidr (the API says so): keep those that are.
    const [net, len] = cidr.split('/');
    const toN = (t: string): number => t.split('.').reduce((acc, o) => acc * 256 + Number(o), 0);
    const inside = ex.filter((e) => {
      const [en, el] = e.split('/');
      if (Number(el) <= Number(len)) return false;
      const size = 2 ** (32 - Number(len));
      return Math.floor(toN(en!) / size) === Math.floor(toN(net!) / size);
    });
    return { ipBlock: inside.length ? { cidr, except: inside } : { cidr } };
  }),
);

const portArb: fc.Arbitrary<NetworkPolicyPort> = fc.record({
  protocol: fc.option(fc.constantFrom(...PROTOS), { nil: undefined }),
  port: fc.option(fc.oneof(fc.constantFrom(...PORTS), fc.constantFrom(...PORT_NAMES)), { nil: undefined }),
  range: fc.option(fc.integer({ min: 0, max: 400 }), { nil: undefined }),
}).map(({ protocol, port, range }) => {
  const out: NetworkPolicyPort = {};
  if (protocol) out.protocol = protocol;
  if (port !== undefined) out.port = port;
  if (typeof port === 'number' && range !== undefined) out.endPort = port + range;
  return out;
});

const ruleArb = fc.record({
  peers: fc.option(fc.array(peerArb, { maxLength: 3 }), { nil: undefined }),
  ports: fc.option(fc.array(portArb, { maxLength: 3 }), { nil: undefined }),
});

export const policyArb = (name: string): fc.Arbitrary<NetworkPolicy> => fc.record({
  ns: fc.constantFrom(...NS_NAMES),
  podSelector: selectorArb,
  types: fc.option(fc.subarray(['Ingress', 'Egress'] as ('Ingress' | 'Egress')[], { minLength: 1 }), { nil: undefined }),
  ingress: fc.option(fc.array(ruleArb, { maxLength: 3 }), { nil: undefined }),
  egress: fc.option(fc.array(ruleArb, { maxLength: 3 }), { nil: undefined }),
}).map(({ ns, podSelector, types, ingress, egress }) => {
  const spec: NetworkPolicy['spec'] = { podSelector };
  if (types) spec.policyTypes = types;
  if (ingress) spec.ingress = ingress.map((r): NetworkPolicyIngressRule => ({ ...(r.peers ? { from: r.peers } : {}), ...(r.ports ? { ports: r.ports } : {}) }));
  if (egress) spec.egress = egress.map((r): NetworkPolicyEgressRule => ({ ...(r.peers ? { to: r.peers } : {}), ...(r.ports ? { ports: r.ports } : {}) }));
  return np(ns, name, spec);
});

const podPortsArb = fc.array(fc.record({
  name: fc.option(fc.constantFrom(...PORT_NAMES), { nil: undefined }),
  containerPort: fc.constantFrom(...PORTS),
  protocol: fc.constantFrom(...PROTOS),
}), { maxLength: 3 }).map((ps) => {
  // Names are unique within a pod.
  const seen = new Set<string>();
  return ps.map((p) => {
    if (p.name === undefined || seen.has(p.name)) return { containerPort: p.containerPort, protocol: p.protocol };
    seen.add(p.name);
    return { name: p.name, containerPort: p.containerPort, protocol: p.protocol };
  });
});

export interface RandomStateOptions {
  maxPods?: number;
  maxPolicies?: number;
  /** All pods local (the kernel test: every pod has a veth). */
  allLocal?: boolean;
}

/** Random states: pods at 10.9.<ns>.<n>, some remote, one host-network; policies over them. */
export function stateArb(opts: RandomStateOptions = {}): fc.Arbitrary<PolicyState> {
  return fc.record({
    nsLabels: fc.tuple(labelsArb, labelsArb, labelsArb),
    pods: fc.array(fc.record({ ns: fc.integer({ min: 0, max: 2 }), labels: labelsArb, ports: podPortsArb, local: opts.allLocal ? fc.constant(true) : fc.boolean(), host: fc.integer({ min: 0, max: 30 }) }), { minLength: 1, maxLength: opts.maxPods ?? 8 }),
    policies: fc.integer({ min: 0, max: opts.maxPolicies ?? 4 }).chain((n) => fc.tuple(...Array.from({ length: n }, (_, i) => policyArb(`p${i}`)))),
  }).map(({ nsLabels, pods, policies }) => ({
    namespaces: NS_NAMES.map((name, i) => ({ name, labels: nsLabels[i]! })),
    pods: pods.map((p, i): PolicyPod => ({
      namespace: NS_NAMES[p.ns]!, name: `pod${i}`, labels: p.labels, ports: p.ports,
      ips: [`10.9.${p.ns + 1}.${i * 16 + 1}`], local: p.local,
      ...(p.host === 0 ? { hostNetwork: true } : {}),
    })),
    policies: policies as NetworkPolicy[],
    nodeAddresses: ['10.9.0.1'],
  }));
}

/** Flows between the state's addresses and a few outside ones, on the ports the generators use. */
export function flowArb(state: PolicyState): fc.Arbitrary<{ src: string; dst: string; proto: number; dport: number }> {
  // Mostly pod to pod on the ports the policies name: where rules decide (the node, the world and other ports less often).
  const podIps = state.pods.flatMap((p) => p.ips);
  const addr = fc.oneof(
    { arbitrary: fc.constantFrom(...podIps), weight: 6 },
    { arbitrary: fc.constantFrom('10.9.0.1', '10.9.1.200', '192.168.3.4', '8.8.8.8', '10.9.2.7'), weight: 1 },
  );
  return fc.record({
    src: addr,
    dst: addr,
    proto: fc.oneof({ arbitrary: fc.constantFrom(6, 17, 132), weight: 6 }, { arbitrary: fc.constant(1), weight: 1 }),
    dport: fc.oneof({ arbitrary: fc.constantFrom(...PORTS), weight: 6 }, { arbitrary: fc.integer({ min: 53, max: 500 }), weight: 2 }, { arbitrary: fc.integer({ min: 1, max: 65535 }), weight: 1 }),
  }).map((f) => (f.proto === 1 ? { ...f, dport: 0 } : f));
}

/**
 * A state and what follows it: `length` single changes, each applied to the state before (a policy
 * added, deleted or rewritten, a pod's labels changed, a pod gone, a namespace's labels changed).
 * The incremental tests apply them one by one and compare with a compile from scratch.
 */
export function changesArb(opts: RandomStateOptions & { length?: number } = {}): fc.Arbitrary<PolicyState[]> {
  const change = fc.oneof(
    fc.record({ kind: fc.constant('add' as const), p: policyArb('new') }),
    fc.record({ kind: fc.constant('delete' as const), i: fc.nat() }),
    fc.record({ kind: fc.constant('edit' as const), i: fc.nat(), p: policyArb('edit') }),
    fc.record({ kind: fc.constant('podLabels' as const), i: fc.nat(), labels: labelsArb }),
    fc.record({ kind: fc.constant('podGone' as const), i: fc.nat() }),
    fc.record({ kind: fc.constant('nsLabels' as const), i: fc.nat({ max: 2 }), labels: labelsArb }),
  );
  return fc.tuple(stateArb(opts), fc.array(change, { minLength: 1, maxLength: opts.length ?? 8 })).map(([s0, cs]) => {
    const out = [s0];
    let s = s0;
    let n = 0;
    for (const c of cs) {
      const policies = s.policies;
      const pods = s.pods;
      if (c.kind === 'add') s = { ...s, policies: [...policies, { ...c.p, metadata: { ...c.p.metadata, name: `c${n++}` } }] };
      else if (c.kind === 'delete' && policies.length) s = { ...s, policies: policies.filter((_, j) => j !== c.i % policies.length) };
      else if (c.kind === 'edit' && policies.length) {
        const j = c.i % policies.length;
        s = { ...s, policies: policies.map((p, k) => (k === j ? { ...p, spec: c.p.spec } : p)) };
      } else if (c.kind === 'podLabels' && pods.length) {
        const j = c.i % pods.length;
        s = { ...s, pods: pods.map((p, k) => (k === j ? { ...p, labels: c.labels } : p)) };
      } else if (c.kind === 'podGone' && pods.length > 1) s = { ...s, pods: pods.filter((_, k) => k !== c.i % pods.length) };
      else if (c.kind === 'nsLabels') s = { ...s, namespaces: s.namespaces.map((x, k) => (k === c.i ? { ...x, labels: c.labels } : x)) };
      out.push(s);
    }
    return out;
  });
}
