// The pure half of the policy dataplane: port ranges as LPM prefix blocks and
// back, peer prefixes, rule keys (bpf/policy.h's 72/80/80+k prefix lengths).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { portBlocks, ruleKeys, ruleKeyString, ruleKeyStrings, parseRuleKeyString, rulesFromKeys, peerKey, POL, type RuleEntry } from '../../src/dataplane/policy-maps.js';

const covered = (blocks: { port: number; bits: number }[]): number[] =>
  blocks.flatMap((b) => Array.from({ length: 2 ** (16 - b.bits) }, (_, i) => b.port + i));

test('portBlocks: a range becomes aligned blocks covering exactly it, fewest first-fit', () => {
  assert.deepEqual(portBlocks(80, 80), [{ port: 80, bits: 16 }]);
  assert.deepEqual(portBlocks(0, 65535), [{ port: 0, bits: 0 }]);
  assert.deepEqual(portBlocks(8000, 8003), [{ port: 8000, bits: 14 }]);
  assert.deepEqual(portBlocks(1, 6), [{ port: 1, bits: 16 }, { port: 2, bits: 15 }, { port: 4, bits: 15 }, { port: 6, bits: 16 }]);
  for (const [a, b] of [[1, 65535], [0, 65534], [1024, 2047], [33, 9999], [65535, 65535], [12345, 23456]] as const) {
    const blocks = portBlocks(a, b);
    assert.deepEqual(covered(blocks), Array.from({ length: b - a + 1 }, (_, i) => a + i), `${a}-${b}`);
    for (const bl of blocks) assert.equal(bl.port % 2 ** (16 - bl.bits), 0, 'aligned');
    assert.ok(blocks.length <= 30, `${a}-${b}: ${blocks.length} blocks`);
  }
  assert.throws(() => portBlocks(5, 4), RangeError);
  assert.throws(() => portBlocks(0, 65536), RangeError);
});

test('ruleKeys: any protocol = 72, any port of a protocol = 80, ports = 80 + fixed bits', () => {
  const base = { epId: 7, peerClass: 16, dir: 'egress' as const, policyId: 3 };
  assert.deepEqual(ruleKeys({ ...base, proto: null, portFrom: null, portTo: null }),
    [{ epId: 7, peerClass: 16, dir: POL.EGRESS, prefixlen: 72, proto: 0, port: 0 }]);
  assert.deepEqual(ruleKeys({ ...base, proto: 132, portFrom: null, portTo: null }),
    [{ epId: 7, peerClass: 16, dir: POL.EGRESS, prefixlen: 80, proto: 132, port: 0 }]);
  assert.deepEqual(ruleKeys({ ...base, proto: 6, portFrom: 8080, portTo: 8081 }),
    [{ epId: 7, peerClass: 16, dir: POL.EGRESS, prefixlen: 95, proto: 6, port: 8080 }]);
  assert.deepEqual(ruleKeys({ ...base, proto: 17, portFrom: 53, portTo: null }).map((k) => [k.prefixlen, k.port]), [[96, 53]]);
  assert.throws(() => ruleKeys({ ...base, proto: null, portFrom: 1, portTo: 2 }));
});

test('rulesFromKeys merges the blocks of a rule back into its range; adjacent ranges of one policy merge', () => {
  const rules: RuleEntry[] = [
    { epId: 1, peerClass: 16, dir: 'ingress', proto: 6, portFrom: 33, portTo: 9999, policyId: 2 },
    { epId: 1, peerClass: 16, dir: 'ingress', proto: 6, portFrom: 20000, portTo: 20000, policyId: 2 },
    { epId: 1, peerClass: 17, dir: 'egress', proto: null, portFrom: null, portTo: null, policyId: 4 },
    { epId: 2, peerClass: 16, dir: 'ingress', proto: 17, portFrom: null, portTo: null, policyId: 5 },
  ];
  const keys = rules.flatMap((r) => ruleKeys(r).map((k) => [k, r.policyId] as [typeof k, number]));
  assert.deepEqual(rulesFromKeys(keys), rules);
  const adj = [{ epId: 1, peerClass: 16, dir: 'ingress' as const, proto: 6, portFrom: 80, portTo: 80, policyId: 2 },
    { epId: 1, peerClass: 16, dir: 'ingress' as const, proto: 6, portFrom: 81, portTo: 90, policyId: 2 }];
  assert.deepEqual(rulesFromKeys(adj.flatMap((r) => ruleKeys(r).map((k) => [k, 2] as [typeof k, number]))),
    [{ ...adj[0]!, portTo: 90 }]);
});

test('peerKey: host bits cleared, bad prefixes refused', () => {
  assert.deepEqual(peerKey('10.1.2.3/16'), { prefixlen: 16, ip: '10.1.0.0' });
  assert.deepEqual(peerKey('0.0.0.0/0'), { prefixlen: 0, ip: '0.0.0.0' });
  assert.deepEqual(peerKey('192.168.1.7/32'), { prefixlen: 32, ip: '192.168.1.7' });
  for (const bad of ['10.0.0.0', '10.0.0.0/33', '300.0.0.0/8', '::1/128', '10.0.0/8']) assert.throws(() => peerKey(bad), bad);
});

test('ruleKeyStrings (the fast path sync() uses) names exactly the keys ruleKeys builds', () => {
  const cases: RuleEntry[] = [
    { epId: 1, peerClass: 16, dir: 'ingress', proto: null, portFrom: null, portTo: null, policyId: 1 },
    { epId: 2, peerClass: 17, dir: 'egress', proto: 17, portFrom: null, portTo: null, policyId: 1 },
    { epId: 3, peerClass: 18, dir: 'egress', proto: 6, portFrom: 443, portTo: 443, policyId: 1 },
    { epId: 4, peerClass: 19, dir: 'ingress', proto: 132, portFrom: 1000, portTo: 2000, policyId: 1 },
    { epId: 5, peerClass: 20, dir: 'ingress', proto: 6, portFrom: 53, portTo: null, policyId: 1 },
  ];
  for (const r of cases) {
    const out: string[] = [];
    ruleKeyStrings(r, out);
    assert.deepEqual(out, ruleKeys(r).map(ruleKeyString), JSON.stringify(r));
    assert.deepEqual(out.map(parseRuleKeyString), ruleKeys(r));
  }
  assert.throws(() => ruleKeyStrings({ ...cases[0]!, portFrom: 1, portTo: 1 }, []));
  assert.throws(() => ruleKeyStrings({ ...cases[2]!, proto: 256 }, []));
  assert.throws(() => ruleKeyStrings({ ...cases[2]!, portFrom: 70000, portTo: 70000 }, []), RangeError);
});
