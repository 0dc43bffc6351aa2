// The compiler: a TypeScript copy of the programs' lookup over the compiled contents
// agrees with the reference evaluator on random states (this checks the compiler only;
// test/integration/policy-property.test.ts runs the kernel programs), ids stay stable
// across recompiles and restarts, and what does not fit is left out, never allowed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { compile, lookupCompiled, portBlocks, PolicyCompiler, POLICY_CAPACITY } from '../../src/policy/compile.js';
import { evaluate } from '../../src/policy/evaluate.js';
import { PEER_CLASS_HOST, type PolicyState } from '../../src/policy/types.js';
import { e2eIp, e2eState, flowArb, np, stateArb, E2E_NAMESPACES, E2E_PODS } from '../helpers/policy-gen.js';

test('random states: the compiled lookup agrees with evaluate() on random flows', () => {
  fc.assert(
    fc.property(stateArb().chain((s) => fc.tuple(fc.constant(s), fc.array(flowArb(s), { minLength: 1, maxLength: 40 }))), ([state, flows]) => {
      const { contents } = compile(state);
      for (const f of flows) {
        const want = evaluate(state, f).allowed;
        const got = lookupCompiled(contents, f);
        if (want !== got) {
          assert.fail(`flow ${JSON.stringify(f)}: evaluate says ${want}, compiled says ${got}\nstate: ${JSON.stringify(state)}\ncontents: ${JSON.stringify(contents)}`);
        }
      }
    }),
    { numRuns: 400 },
  );
});

test('the e2e model: every pod pair on both ports and protocols agrees', () => {
  const policies = [
    np('x', 'deny', { podSelector: {}, policyTypes: ['Ingress', 'Egress'] }),
    np('x', 'named', { podSelector: { matchLabels: { pod: 'a' } }, ingress: [{ from: [{ namespaceSelector: { matchLabels: { ns: 'y' } } }], ports: [{ port: 'serve-81-udp', protocol: 'UDP' }] }] }),
    np('x', 'eg', { podSelector: { matchLabels: { pod: 'b' } }, egress: [{ to: [{ ipBlock: { cidr: '10.200.0.0/16', except: ['10.200.3.0/24'] } }], ports: [{ port: 'serve-80-tcp' }, { port: 81, endPort: 81, protocol: 'SCTP' }] }] }),
    np('y', 'sctp', { podSelector: {}, ingress: [{ ports: [{ port: 80, protocol: 'SCTP' }] }] }),
  ];
  const s = e2eState(policies);
  const { contents } = compile(s);
  for (const a of E2E_NAMESPACES) for (const p of E2E_PODS) for (const b of E2E_NAMESPACES) for (const q of E2E_PODS) {
    for (const proto of [6, 17, 132]) for (const dport of [80, 81]) {
      const f = { src: e2eIp(a, p), dst: e2eIp(b, q), proto, dport };
      assert.equal(lookupCompiled(contents, f), evaluate(s, f).allowed, JSON.stringify(f));
    }
  }
});

test('recompiling the same state gives the same contents; a change touches only what it changes', () => {
  const c = new PolicyCompiler();
  const s = e2eState([np('x', 'a', { podSelector: { matchLabels: { pod: 'a' } }, ingress: [{ from: [{ podSelector: { matchLabels: { pod: 'b' } } }] }] })]);
  const r1 = c.compile(s);
  const r2 = c.compile(structuredClone(s));
  assert.deepEqual(r2.contents, r1.contents);
  // A second policy: the first one's id and entries stay.
  const s3 = structuredClone(s);
  s3.policies.push(np('y', 'b', { podSelector: {}, ingress: [{ from: [{ namespaceSelector: { matchLabels: { ns: 'z' } } }] }] }));
  const r3 = c.compile(s3);
  assert.equal([...r3.policyIds].find(([, r]) => r.name === 'a')![0], [...r1.policyIds][0]![0]);
  const key = (e: object) => JSON.stringify(e);
  const before = new Set(r1.contents.rules.map(key));
  assert.ok(r3.contents.rules.filter((r) => before.has(key(r))).length === r1.contents.rules.length, 'old rules kept');
  for (const e of r1.contents.endpoints) assert.ok(r3.contents.endpoints.some((x) => x.ip === e.ip && x.epId === e.epId));
});

test('seeded from the maps (an agent restart), the same state compiles to the same contents', () => {
  const s = e2eState([
    np('x', 'a', { podSelector: { matchLabels: { pod: 'a' } }, ingress: [{ from: [{ podSelector: { matchLabels: { pod: 'b' } } }, { ipBlock: { cidr: '10.200.2.0/24', except: ['10.200.2.11/32'] } }] }] }),
    np('y', 'b', { podSelector: {}, egress: [{ to: [{ namespaceSelector: { matchLabels: { ns: 'z' } } }], ports: [{ port: 'serve-80-tcp' }] }] }),
  ]);
  const first = new PolicyCompiler();
  first.compile(e2eState([np('z', 'gone', { podSelector: {}, ingress: [{ from: [{ podSelector: { matchLabels: { pod: 'c' } } }] }] })])); // ids move on
  const r1 = first.compile(s);
  const restarted = new PolicyCompiler();
  restarted.seed({ contents: r1.contents, policies: r1.policyIds });
  const r2 = restarted.compile(s);
  assert.deepEqual(r2.contents, r1.contents);
});

test('ids are never reused for another meaning within a compiler\'s life', () => {
  const c = new PolicyCompiler();
  const s1 = e2eState([np('x', 'a', { podSelector: {}, ingress: [{ from: [{ podSelector: { matchLabels: { pod: 'b' } } }] }] })]);
  const r1 = c.compile(s1);
  const s2 = e2eState([np('x', 'a', { podSelector: {}, ingress: [{ from: [{ podSelector: { matchLabels: { pod: 'c' } } }] }] })]);
  const r2 = c.compile(s2);
  const classes1 = new Set(r1.contents.rules.map((r) => r.peerClass));
  const classes2 = new Set(r2.contents.rules.map((r) => r.peerClass));
  for (const k of classes2) assert.ok(!classes1.has(k), `class ${k} was reused for another peer set`);
});

test('node addresses and host-network pods are class HOST; pods only where their class differs from the prefix around them', () => {
  const s = e2eState([np('x', 'a', { podSelector: {}, ingress: [{ from: [{ podSelector: { matchLabels: { pod: 'b' } } }] }] })]);
  const { contents } = compile(s);
  assert.ok(contents.peers.some((p) => p.cidr === '192.168.1.10/32' && p.peerClass === PEER_CLASS_HOST));
  assert.ok(contents.peers.some((p) => p.cidr === '0.0.0.0/0'));
  // x/b is the only pod in its class: /32; the others share the world's class: no entry.
  const pods = contents.peers.filter((p) => p.cidr.startsWith('10.200.') && p.peerClass !== PEER_CLASS_HOST);
  assert.deepEqual(pods.map((p) => p.cidr), [`${e2eIp('x', 'b')}/32`]);
});

test('rules: ranges cut where policies overlap (lowest id decides), any port hides ranges, any protocol hides all', () => {
  const s = e2eState([
    np('x', 'p1', { podSelector: { matchLabels: { pod: 'a' } }, ingress: [{ ports: [{ port: 80, endPort: 90 }] }] }),
    np('x', 'p2', { podSelector: { matchLabels: { pod: 'a' } }, ingress: [{ ports: [{ port: 85, endPort: 100 }, { port: 101 }, { protocol: 'UDP' }, { port: 53, protocol: 'UDP' }] }] }),
  ]);
  const r = compile(s);
  const ids = new Map([...r.policyIds].map(([id, ref]) => [ref.name, id]));
  const tcp = r.contents.rules.filter((x) => x.proto === 6).map((x) => [x.portFrom, x.portTo, x.policyId]);
  assert.deepEqual(tcp, [[80, 90, ids.get('p1')], [91, 101, ids.get('p2')]]);
  assert.deepEqual(r.contents.rules.filter((x) => x.proto === 17).map((x) => [x.portFrom, x.portTo]), [[null, null]]);
  const all = compile(e2eState([
    np('x', 'p1', { podSelector: { matchLabels: { pod: 'a' } }, ingress: [{ ports: [{ port: 80 }] }, {}] }),
  ]));
  assert.ok(all.contents.rules.every((x) => x.proto === null));
});

test('portBlocks: the LPM entries of a range', () => {
  assert.equal(portBlocks(80, 80), 1);
  assert.equal(portBlocks(0, 65535), 1);
  assert.equal(portBlocks(80, 81), 1);
  assert.equal(portBlocks(81, 82), 2);
  assert.equal(portBlocks(1, 65535), 16);
  assert.equal(portBlocks(32000, 32768), 3); // 32000-32255, 32256-32767, 32768
});

test('more rules than patu_pol_rule holds: the largest policies\' rules are left out, their pods stay isolated, reported', () => {
  // One endpoint, 600 classes (pods with distinct labels), 30 policies each allowing every class 20 ports of its own: 360,000 entries.
  const pods = Array.from({ length: 600 }, (_, i) => ({ namespace: 'n', name: `p${i}`, labels: { id: String(i) }, ips: [`10.1.${i >> 8}.${i & 255}`], ports: [], local: i === 0 }));
  const policies = Array.from({ length: 30 }, (_, k) => np('n', `big${k}`, {
    podSelector: { matchLabels: { id: '0' } },
    ingress: [{ from: pods.map((p) => ({ podSelector: { matchLabels: p.labels } })), ports: Array.from({ length: 20 }, (_, j) => ({ port: 1000 + k * 100 + j * 3, protocol: 'TCP' as const })) }],
  }));
  policies.push(np('n', 'small', { podSelector: { matchLabels: { id: '0' } }, ingress: [{ from: [{ podSelector: { matchLabels: { id: '1' } } }], ports: [{ port: 9, protocol: 'UDP' }] }] }));
  const state: PolicyState = { namespaces: [], pods, policies, nodeAddresses: [] };
  const r = compile(state);
  assert.ok(r.stats.ruleBlocks <= POLICY_CAPACITY.rules, `${r.stats.ruleBlocks}`);
  assert.ok(r.problems.some((p) => p.kind === 'capacity'));
  assert.ok(r.dropped.length > 0 && !r.dropped.includes('n/small'));
  assert.ok(r.contents.endpoints[0]!.isolatedIngress);
  // What is left allows nothing evaluate() denies.
  for (const f of [{ src: '10.1.0.1', dst: '10.1.0.0', proto: 17, dport: 9 }, { src: '10.1.0.1', dst: '10.1.0.0', proto: 6, dport: 8 }, { src: '10.1.0.2', dst: '10.1.0.0', proto: 6, dport: 100 }]) {
    if (lookupCompiled(r.contents, f)) assert.ok(evaluate(state, f).allowed, JSON.stringify(f));
  }
  assert.equal(lookupCompiled(r.contents, { src: '10.1.0.1', dst: '10.1.0.0', proto: 17, dport: 9 }), true);
});

test('two pods at one address: the first keeps it (evaluate agrees), reported', () => {
  const s = e2eState([np('x', 'deny', { podSelector: { matchLabels: { pod: 'a' } } })]);
  s.pods.push({ namespace: 'z', name: 'dup', labels: {}, ips: [e2eIp('x', 'a')], ports: [], local: true });
  const r = compile(s);
  assert.ok(r.problems.some((p) => p.kind === 'duplicate-address' && p.pod === 'z/dup'));
  const f = { src: e2eIp('y', 'a'), dst: e2eIp('x', 'a'), proto: 6, dport: 80 };
  assert.equal(lookupCompiled(r.contents, f), false);
  assert.equal(evaluate(s, f).allowed, false);
});

test('compile time at 1,000 policies x 1,000 pods (noted in the report)', () => {
  const pods = Array.from({ length: 1000 }, (_, i) => ({
    namespace: `ns${i % 10}`, name: `p${i}`, labels: { app: `app${i % 100}`, tier: ['fe', 'be', 'db'][i % 3]! },
    ips: [`10.200.${i >> 8}.${(i & 255) + 0}`], ports: [{ name: 'http', containerPort: 8080, protocol: 'TCP' as const }], local: true,
  }));
  const policies = Array.from({ length: 1000 }, (_, k) => np(`ns${k % 10}`, `pol${k}`, {
    podSelector: { matchLabels: { app: `app${k % 100}` } },
    ingress: [{ from: [{ podSelector: { matchLabels: { app: `app${(k + 1) % 100}` } } }, { namespaceSelector: { matchLabels: { team: `t${k % 7}` } } }], ports: [{ port: 'http' }, { port: 9000 + (k % 50), endPort: 9010 + (k % 50) }] }],
    egress: [{ to: [{ ipBlock: { cidr: `10.${k % 250}.0.0/16`, except: [`10.${k % 250}.1.0/24`] } }] }],
  }));
  const state: PolicyState = { namespaces: Array.from({ length: 10 }, (_, i) => ({ name: `ns${i}`, labels: { team: `t${i % 7}` } })), pods, policies, nodeAddresses: ['10.200.0.1'] };
  const c = new PolicyCompiler();
  const t0 = performance.now();
  const r = c.compile(state);
  const first = performance.now() - t0;
  const t1 = performance.now();
  c.compile(state);
  const again = performance.now() - t1;
  process.stdout.write(`# compile 1000 policies x 1000 pods: first ${first.toFixed(1)} ms, again ${again.toFixed(1)} ms; ${JSON.stringify(r.stats)}\n`);
  assert.ok(first < 5000);
});
