// The reference evaluator against the cases of the Kubernetes NetworkPolicy docs and
// the upstream Netpol e2e suite (test/e2e/network/netpol/network_policy.go): each
// case states the policies and the probes whose verdicts the suite expects.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { evaluate, selectorMatches } from '../../src/policy/evaluate.js';
import type { NetworkPolicy, PolicyState } from '../../src/policy/types.js';
import { E2E_NAMESPACES, E2E_PODS, e2eIp, e2eState, np } from '../helpers/policy-gen.js';

const TCP = 6;
const UDP = 17;
const SCTP = 132;

/** 'x/a' -> its address */
const at = (ref: string): string => {
  const [ns, pod] = ref.split('/');
  return e2eIp(ns!, pod!);
};
const allowed = (s: PolicyState, from: string, to: string, port = 80, proto = TCP): boolean =>
  evaluate(s, { src: at(from), dst: at(to), proto, dport: port }).allowed;

/**
 * The e2e "reachability" matrix: every pod to every pod on one port/protocol, as
 * 'x/a->y/b' strings of the pairs that are NOT allowed (self-probes included).
 */
function denied(s: PolicyState, port = 80, proto = TCP): string[] {
  const all = E2E_NAMESPACES.flatMap((ns) => E2E_PODS.map((p) => `${ns}/${p}`));
  const out: string[] = [];
  for (const from of all) for (const to of all) if (!allowed(s, from, to, port, proto)) out.push(`${from}->${to}`);
  return out;
}
const allPods = E2E_NAMESPACES.flatMap((ns) => E2E_PODS.map((p) => `${ns}/${p}`));
const pairs = (froms: string[], tos: string[]): string[] => froms.flatMap((f) => tos.map((t) => `${f}->${t}`));
const sorted = (l: string[]): string[] => [...l].sort();

test('no policy: everything allowed, every protocol', () => {
  const s = e2eState();
  assert.deepEqual(denied(s), []);
  assert.deepEqual(denied(s, 81, SCTP), []);
  assert.equal(evaluate(s, { src: at('x/a'), dst: '8.8.8.8', proto: 1, dport: 0 }).allowed, true);
});

test('default-deny-ingress: nothing reaches x/*, x may still send out; the node still reaches x (kubelet probes)', () => {
  const s = e2eState([np('x', 'deny-ingress', { podSelector: {}, policyTypes: ['Ingress'] })]);
  const x = allPods.filter((p) => p.startsWith('x/'));
  assert.deepEqual(sorted(denied(s)), sorted(pairs(allPods, x)));
  assert.equal(evaluate(s, { src: '10.200.0.1', dst: at('x/a'), proto: TCP, dport: 80 }).allowed, true);
  assert.equal(evaluate(s, { src: '10.200.0.1', dst: at('x/a'), proto: TCP, dport: 80 }).host, true);
  // policyTypes absent and no rules is the same (Ingress is always implied).
  const s2 = e2eState([np('x', 'deny-ingress', { podSelector: {} })]);
  assert.deepEqual(sorted(denied(s2)), sorted(pairs(allPods, x)));
});

test('default-deny-all (Ingress+Egress) and deny egress of a namespace', () => {
  const s = e2eState([np('x', 'deny-all', { podSelector: {}, policyTypes: ['Ingress', 'Egress'] })]);
  const x = allPods.filter((p) => p.startsWith('x/'));
  const expect = new Set([...pairs(allPods, x), ...pairs(x, allPods)]);
  assert.deepEqual(sorted(denied(s)), sorted([...expect]));
  // Egress to the node stays allowed (HOST).
  assert.equal(evaluate(s, { src: at('x/a'), dst: '192.168.1.10', proto: UDP, dport: 53 }).allowed, true);
  const e = e2eState([np('x', 'deny-egress', { podSelector: {}, policyTypes: ['Egress'] })]);
  assert.deepEqual(sorted(denied(e)), sorted(pairs(x, allPods)));
});

test('allow-all ingress rule ({}), and it takes precedence over a deny in another policy', () => {
  const s = e2eState([
    np('x', 'deny', { podSelector: {}, policyTypes: ['Ingress'] }),
    np('x', 'allow-all', { podSelector: {}, ingress: [{}] }),
  ]);
  assert.deepEqual(denied(s), []);
  assert.deepEqual(denied(s, 81, SCTP), []);
  const v = evaluate(s, { src: at('y/a'), dst: at('x/b'), proto: TCP, dport: 80 });
  assert.deepEqual(v.ingress.allowedBy, ['x/allow-all']);
  assert.equal(v.ingress.isolated, true);
  // The same for egress.
  const e = e2eState([
    np('x', 'deny', { podSelector: {}, policyTypes: ['Egress'] }),
    np('x', 'allow-all', { podSelector: {}, policyTypes: ['Egress'], egress: [{}] }),
  ]);
  assert.deepEqual(denied(e), []);
});

test('allow from pods of the server namespace by podSelector (podSelector peers are in the policy\'s namespace)', () => {
  const s = e2eState([np('x', 'allow-b', { podSelector: { matchLabels: { pod: 'a' } }, ingress: [{ from: [{ podSelector: { matchLabels: { pod: 'b' } } }] }] })]);
  const expect = allPods.filter((p) => p !== 'x/b').map((p) => `${p}->x/a`);
  assert.deepEqual(sorted(denied(s)), sorted(expect));
});

test('allow from a namespace (namespaceSelector), and from a different namespace only', () => {
  const s = e2eState([np('x', 'allow-ns-y', {
    podSelector: { matchLabels: { pod: 'a' } },
    ingress: [{ from: [{ namespaceSelector: { matchLabels: { ns: 'y' } } }] }],
  })]);
  const expect = allPods.filter((p) => !p.startsWith('y/')).map((p) => `${p}->x/a`);
  assert.deepEqual(sorted(denied(s)), sorted(expect));
  // The default kubernetes.io/metadata.name label (e2e: "using default ns label").
  const d = e2eState([np('x', 'allow-ns-y', {
    podSelector: { matchLabels: { pod: 'a' } },
    ingress: [{ from: [{ namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'y' } } }] }],
  })]);
  assert.deepEqual(sorted(denied(d)), sorted(expect));
});

test('namespaceSelector with matchExpressions (NotIn x: y and z)', () => {
  const s = e2eState([np('x', 'allow-not-x', {
    podSelector: { matchLabels: { pod: 'a' } },
    ingress: [{ from: [{ namespaceSelector: { matchExpressions: [{ key: 'ns', operator: 'NotIn', values: ['x'] }] } }] }],
  })]);
  assert.deepEqual(sorted(denied(s)), sorted(['x/a->x/a', 'x/b->x/a', 'x/c->x/a']));
});

test('podSelector AND namespaceSelector in one peer, OR as two peers (the docs\' example)', () => {
  const and = e2eState([np('x', 'and', {
    podSelector: { matchLabels: { pod: 'a' } },
    ingress: [{ from: [{ namespaceSelector: { matchExpressions: [{ key: 'ns', operator: 'NotIn', values: ['x'] }] }, podSelector: { matchLabels: { pod: 'b' } } }] }],
  })]);
  assert.deepEqual(sorted(allPods.filter((p) => !['y/b', 'z/b'].includes(p)).map((p) => `${p}->x/a`)), sorted(denied(and)));
  const or = e2eState([np('x', 'or', {
    podSelector: { matchLabels: { pod: 'a' } },
    ingress: [{ from: [{ namespaceSelector: { matchExpressions: [{ key: 'ns', operator: 'NotIn', values: ['x'] }] } }, { podSelector: { matchLabels: { pod: 'b' } } }] }],
  })]);
  assert.deepEqual(sorted(denied(or)), sorted(['x/a->x/a', 'x/c->x/a']));
});

test('multiple podSelectors and namespaceSelectors; any podSelector ({})', () => {
  const s = e2eState([np('x', 'multi', {
    podSelector: { matchLabels: { pod: 'a' } },
    ingress: [{ from: [{ namespaceSelector: { matchExpressions: [{ key: 'ns', operator: 'NotIn', values: ['x'] }] }, podSelector: { matchExpressions: [{ key: 'pod', operator: 'In', values: ['b', 'c'] }] } }] }],
  })]);
  assert.deepEqual(sorted(denied(s)), sorted(['x/a', 'x/b', 'x/c', 'y/a', 'z/a'].map((p) => `${p}->x/a`)));
  const any = e2eState([np('x', 'any', { podSelector: { matchLabels: { pod: 'a' } }, ingress: [{ from: [{ podSelector: {} }] }] })]);
  assert.deepEqual(sorted(denied(any)), sorted(allPods.filter((p) => !p.startsWith('x/')).map((p) => `${p}->x/a`)));
});

test('ports: only 81 allowed; stacked policies add up (80 and 81)', () => {
  const p81: NetworkPolicy = np('x', 'allow-81', { podSelector: { matchLabels: { pod: 'a' } }, ingress: [{ ports: [{ port: 81 }], from: [{ namespaceSelector: {} }] }] });
  const s = e2eState([p81]);
  assert.deepEqual(sorted(denied(s, 80)), sorted(allPods.map((p) => `${p}->x/a`)));
  assert.deepEqual(denied(s, 81), []);
  const both = e2eState([p81, np('x', 'allow-80', { podSelector: { matchLabels: { pod: 'a' } }, ingress: [{ ports: [{ port: 80, protocol: 'TCP' }] }] })]);
  assert.deepEqual(denied(both, 80), []);
  assert.deepEqual(denied(both, 81), []);
  assert.deepEqual(sorted(denied(both, 82)), sorted(allPods.map((p) => `${p}->x/a`)));
});

test('named ports: ingress resolves on the server pod, egress on the destination pod', () => {
  const ing = e2eState([np('x', 'named', { podSelector: {}, ingress: [{ ports: [{ port: 'serve-80-tcp' }] }] })]);
  assert.deepEqual(denied(ing, 80), []);
  assert.deepEqual(sorted(denied(ing, 81)), sorted(pairs(allPods, allPods.filter((p) => p.startsWith('x/')))));
  // A UDP port named like a TCP one does not match TCP, and the name's protocol must agree.
  assert.equal(allowed(ing, 'y/a', 'x/a', 80, UDP), false);
  const udp = e2eState([np('x', 'named-udp', { podSelector: {}, ingress: [{ ports: [{ port: 'serve-80-udp', protocol: 'UDP' }] }] })]);
  assert.equal(allowed(udp, 'y/a', 'x/a', 80, UDP), true);
  assert.equal(allowed(udp, 'y/a', 'x/a', 80, TCP), false);
  // From a namespace on one named port.
  const nsNamed = e2eState([np('x', 'ns-named', { podSelector: {}, ingress: [{ from: [{ namespaceSelector: { matchLabels: { ns: 'y' } } }], ports: [{ port: 'serve-80-tcp' }] }] })]);
  assert.equal(allowed(nsNamed, 'y/a', 'x/a', 80), true);
  assert.equal(allowed(nsNamed, 'z/a', 'x/a', 80), false);
  assert.equal(allowed(nsNamed, 'y/a', 'x/a', 81), false);

  // Egress on one named port: the destination's number counts. Give y/b a different number for the name.
  const eg = e2eState([np('x', 'eg-named', { podSelector: {}, egress: [{ ports: [{ port: 'serve-80-tcp' }] }] })]);
  eg.pods.find((p) => p.namespace === 'y' && p.name === 'b')!.ports = [{ name: 'serve-80-tcp', containerPort: 8080, protocol: 'TCP' }];
  assert.equal(allowed(eg, 'x/a', 'y/a', 80), true);
  assert.equal(allowed(eg, 'x/a', 'y/b', 80), false);
  assert.equal(allowed(eg, 'x/a', 'y/b', 8080), true);
  assert.equal(allowed(eg, 'x/a', 'y/a', 81), false);
  // To an address that is no pod a named port matches nothing.
  assert.equal(evaluate(eg, { src: at('x/a'), dst: '8.8.8.8', proto: TCP, dport: 80 }).allowed, false);
});

test('endPort: a port range', () => {
  const s = e2eState([np('x', 'range', { podSelector: {}, ingress: [{ ports: [{ port: 80, endPort: 82, protocol: 'TCP' }] }] })]);
  assert.equal(allowed(s, 'y/a', 'x/a', 79), false);
  assert.equal(allowed(s, 'y/a', 'x/a', 80), true);
  assert.equal(allowed(s, 'y/a', 'x/a', 82), true);
  assert.equal(allowed(s, 'y/a', 'x/a', 83), false);
  assert.equal(allowed(s, 'y/a', 'x/a', 81, UDP), false);
});

test('protocols: SCTP is not TCP, UDP-only is not TCP, a protocol without a port is all its ports', () => {
  const sctp = e2eState([np('x', 'sctp', { podSelector: { matchLabels: { pod: 'a' } }, ingress: [{ ports: [{ port: 80, protocol: 'SCTP' }] }] })]);
  assert.equal(allowed(sctp, 'y/a', 'x/a', 80, TCP), false); // "should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP'"
  assert.equal(allowed(sctp, 'y/a', 'x/a', 80, SCTP), true);
  assert.equal(allowed(sctp, 'y/a', 'x/a', 81, SCTP), false);
  const udp = e2eState([np('x', 'udp', { podSelector: { matchLabels: { pod: 'a' } }, ingress: [{ ports: [{ port: 81, protocol: 'UDP' }] }] })]);
  assert.equal(allowed(udp, 'y/a', 'x/a', 81, TCP), false); // "should not allow access by TCP when a policy specifies only UDP"
  assert.equal(allowed(udp, 'y/a', 'x/a', 81, UDP), true);
  const anyPort = e2eState([np('x', 'any-tcp', { podSelector: { matchLabels: { pod: 'a' } }, ingress: [{ ports: [{ protocol: 'TCP' }] }] })]);
  assert.equal(allowed(anyPort, 'y/a', 'x/a', 81, TCP), true);
  assert.equal(allowed(anyPort, 'y/a', 'x/a', 9999, TCP), true);
  assert.equal(allowed(anyPort, 'y/a', 'x/a', 80, UDP), false);
  // A rule with ports never allows ICMP; one without ports does.
  assert.equal(evaluate(anyPort, { src: at('y/a'), dst: at('x/a'), proto: 1, dport: 0 }).allowed, false);
  const noPorts = e2eState([np('x', 'from-y', { podSelector: {}, ingress: [{ from: [{ namespaceSelector: { matchLabels: { ns: 'y' } } }] }] })]);
  assert.equal(evaluate(noPorts, { src: at('y/a'), dst: at('x/a'), proto: 1, dport: 0 }).allowed, true);
});

test('egress ipBlock with except (e2e: allow egress to a server in a CIDR block, except clause, overlapping IP allowed)', () => {
  const serverIp = at('y/b');
  const s = e2eState([np('x', 'cidr', { podSelector: { matchLabels: { pod: 'a' } }, egress: [{ to: [{ ipBlock: { cidr: '10.200.2.0/24' } }] }] })]);
  assert.equal(allowed(s, 'x/a', 'y/b'), true);
  assert.equal(allowed(s, 'x/a', 'z/b'), false);
  assert.equal(allowed(s, 'x/b', 'z/b'), true); // not selected
  const ex = e2eState([np('x', 'except', { podSelector: { matchLabels: { pod: 'a' } }, egress: [{ to: [{ ipBlock: { cidr: '10.200.2.0/24', except: [`${serverIp}/32`] } }] }] })]);
  assert.equal(allowed(ex, 'x/a', 'y/b'), false);
  assert.equal(allowed(ex, 'x/a', 'y/a'), true);
  const overlap = e2eState([
    np('x', 'except', { podSelector: { matchLabels: { pod: 'a' } }, egress: [{ to: [{ ipBlock: { cidr: '10.200.2.0/24', except: [`${serverIp}/32`] } }] }] }),
    np('x', 'allow-ip', { podSelector: { matchLabels: { pod: 'a' } }, egress: [{ to: [{ ipBlock: { cidr: `${serverIp}/32` } }] }] }),
  ]);
  assert.equal(allowed(overlap, 'x/a', 'y/b'), true);
  // ipBlock towards the world.
  const world = e2eState([np('x', 'world', { podSelector: {}, egress: [{ to: [{ ipBlock: { cidr: '0.0.0.0/0', except: ['10.0.0.0/8'] } }] }] })]);
  assert.equal(evaluate(world, { src: at('x/a'), dst: '8.8.8.8', proto: UDP, dport: 53 }).allowed, true);
  assert.equal(allowed(world, 'x/a', 'y/a'), false);
});

test('the docs\' test-network-policy example', () => {
  const s: PolicyState = {
    namespaces: [{ name: 'default', labels: {} }, { name: 'myproject', labels: { project: 'myproject' } }],
    pods: [
      { namespace: 'default', name: 'db', labels: { role: 'db' }, ips: ['10.200.0.10'], ports: [], local: true },
      { namespace: 'default', name: 'fe', labels: { role: 'frontend' }, ips: ['10.200.0.11'], ports: [], local: true },
      { namespace: 'default', name: 'other', labels: {}, ips: ['10.200.0.12'], ports: [], local: true },
      { namespace: 'myproject', name: 'any', labels: {}, ips: ['10.200.0.13'], ports: [], local: true },
    ],
    policies: [np('default', 'test-network-policy', {
      podSelector: { matchLabels: { role: 'db' } },
      policyTypes: ['Ingress', 'Egress'],
      ingress: [{
        from: [
          { ipBlock: { cidr: '172.17.0.0/16', except: ['172.17.1.0/24'] } },
          { namespaceSelector: { matchLabels: { project: 'myproject' } } },
          { podSelector: { matchLabels: { role: 'frontend' } } },
        ],
        ports: [{ protocol: 'TCP', port: 6379 }],
      }],
      egress: [{ to: [{ ipBlock: { cidr: '10.0.0.0/24' } }], ports: [{ protocol: 'TCP', port: 5978 }] }],
    })],
    nodeAddresses: ['10.200.0.1'],
  };
  const v = (src: string, dst: string, dport: number, proto = TCP) => evaluate(s, { src, dst, proto, dport }).allowed;
  assert.equal(v('172.17.0.5', '10.200.0.10', 6379), true);
  assert.equal(v('172.17.1.5', '10.200.0.10', 6379), false);
  assert.equal(v('10.200.0.13', '10.200.0.10', 6379), true);
  assert.equal(v('10.200.0.11', '10.200.0.10', 6379), true);
  assert.equal(v('10.200.0.12', '10.200.0.10', 6379), false);
  assert.equal(v('10.200.0.11', '10.200.0.10', 6380), false);
  assert.equal(v('10.200.0.10', '10.0.0.7', 5978), true);
  assert.equal(v('10.200.0.10', '10.0.0.7', 5979), false);
  assert.equal(v('10.200.0.10', '10.200.0.11', 80), false); // db's egress
  assert.equal(v('10.200.0.11', '10.200.0.12', 80), true); // others are not isolated
  assert.equal(v('10.200.0.1', '10.200.0.10', 80), true); // the node
});

test('policyTypes defaulting: egress rules make Egress; egress: [] does not; explicit Egress only leaves ingress open', () => {
  const withEgress = e2eState([np('x', 'p', { podSelector: { matchLabels: { pod: 'a' } }, egress: [{ to: [{ podSelector: { matchLabels: { pod: 'b' } } }] }] })]);
  assert.equal(allowed(withEgress, 'x/a', 'x/b'), true);
  assert.equal(allowed(withEgress, 'x/a', 'x/c'), false);
  assert.equal(allowed(withEgress, 'x/c', 'x/a'), false); // and Ingress with no rules
  const emptyEgress = e2eState([np('x', 'p', { podSelector: { matchLabels: { pod: 'a' } }, egress: [] })]);
  assert.equal(allowed(emptyEgress, 'x/a', 'x/c'), true);
  assert.equal(allowed(emptyEgress, 'x/c', 'x/a'), false);
  const egressOnly = e2eState([np('x', 'p', { podSelector: { matchLabels: { pod: 'a' } }, policyTypes: ['Egress'], ingress: [{ from: [{ podSelector: { matchLabels: { pod: 'b' } } }] }] })]);
  assert.equal(allowed(egressOnly, 'x/c', 'x/a'), true); // ingress rules ignored, not isolated
  assert.equal(allowed(egressOnly, 'x/a', 'x/c'), false);
});

test('client-side egress deny wins over a server that allows; ingress and egress controlled independently', () => {
  const s = e2eState([
    np('x', 'deny-egress-a', { podSelector: { matchLabels: { pod: 'a' } }, policyTypes: ['Egress'] }),
    np('y', 'allow-all-in', { podSelector: {}, ingress: [{}] }),
  ]);
  const v = evaluate(s, { src: at('x/a'), dst: at('y/b'), proto: TCP, dport: 80 });
  assert.equal(v.allowed, false);
  assert.equal(v.egress.allowed, false);
  assert.equal(v.ingress.allowed, true);
  assert.deepEqual(v.ingress.allowedBy, ['y/allow-all-in']);
});

test('a policy in another namespace does not select; other namespaces\' pods named like ours are not peers', () => {
  const s = e2eState([np('y', 'deny', { podSelector: { matchLabels: { pod: 'a' } } })]);
  assert.equal(allowed(s, 'x/b', 'x/a'), true);
  assert.equal(allowed(s, 'x/b', 'y/a'), false);
});

test('only local pods are judged (unless allNodes); host-network pods are the node', () => {
  const s = e2eState([np('x', 'deny', { podSelector: {} })]);
  s.pods.find((p) => p.namespace === 'x' && p.name === 'a')!.local = false;
  assert.equal(allowed(s, 'y/a', 'x/a'), true);
  assert.equal(evaluate(s, { src: at('y/a'), dst: at('x/a'), proto: TCP, dport: 80 }, { allNodes: true }).allowed, false);
  s.pods.push({ namespace: 'kube-system', name: 'hn', labels: {}, ips: ['10.1.2.3'], ports: [], hostNetwork: true, local: true });
  assert.equal(evaluate(s, { src: '10.1.2.3', dst: at('x/b'), proto: TCP, dport: 80 }).allowed, true);
});

test('ipBlock matches pod addresses too, hairpin (a pod to itself) needs both its egress and ingress', () => {
  const s = e2eState([np('x', 'self', { podSelector: { matchLabels: { pod: 'a' } }, ingress: [{ from: [{ ipBlock: { cidr: `${at('x/a')}/32` } }] }] })]);
  assert.equal(allowed(s, 'x/a', 'x/a'), true);
  assert.equal(allowed(s, 'x/b', 'x/a'), false);
});

test('label selectors: matchLabels AND matchExpressions, every operator, empty selects all', () => {
  const l = { app: 'web', tier: 'fe' };
  assert.equal(selectorMatches({}, l), true);
  assert.equal(selectorMatches({ matchLabels: { app: 'web' } }, l), true);
  assert.equal(selectorMatches({ matchLabels: { app: 'web', tier: 'be' } }, l), false);
  assert.equal(selectorMatches({ matchExpressions: [{ key: 'tier', operator: 'In', values: ['fe', 'be'] }] }, l), true);
  assert.equal(selectorMatches({ matchExpressions: [{ key: 'env', operator: 'In', values: ['x'] }] }, l), false);
  assert.equal(selectorMatches({ matchExpressions: [{ key: 'env', operator: 'NotIn', values: ['x'] }] }, l), true);
  assert.equal(selectorMatches({ matchExpressions: [{ key: 'app', operator: 'NotIn', values: ['web'] }] }, l), false);
  assert.equal(selectorMatches({ matchExpressions: [{ key: 'app', operator: 'Exists' }] }, l), true);
  assert.equal(selectorMatches({ matchExpressions: [{ key: 'env', operator: 'DoesNotExist' }] }, l), true);
  assert.equal(selectorMatches({ matchLabels: { app: 'web' }, matchExpressions: [{ key: 'tier', operator: 'DoesNotExist' }] }, l), false);
  // Inherited object properties are not labels.
  assert.equal(selectorMatches({ matchExpressions: [{ key: 'toString', operator: 'Exists' }] }, {}), false);
});
