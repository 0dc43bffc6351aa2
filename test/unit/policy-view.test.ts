// What `patu monitor`, `patu status` and /metrics make of patu_pol_stats and patu_pol_events (src/policy/view.ts),
// and the mirrored counters of the agent's /metrics.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AgentMetrics } from '../../src/k8s/metrics.js';
import { MirrorCounter, Registry } from '../../src/k8s/prom.js';
import { eventMatchesPod, eventRow, formatEventRow, parsePolicyNames, podCounters, policySeries, type PolicyEventView, type PolicyStat } from '../../src/policy/view.js';
import { formatPolicyStatus } from '../../src/cli/policy-status.js';

const names = parsePolicyNames({
  policies: { 3: 'shop/allow-web', 4: { namespace: 'shop', name: 'deny-all' }, bad: 'x' },
  endpoints: {
    7: { pod: 'shop/web-1', ips: ['10.200.0.5'], ingress: [3, 4], egress: [] },
    8: { pod: { namespace: 'shop', name: 'db-0' }, ips: ['10.200.0.6'], ingress: [4] },
    nope: { pod: 'x/y' },
  },
});

test('names.json: policies and endpoints by id, unknown shapes skipped', () => {
  assert.deepEqual([...names.policies], [[3, 'shop/allow-web'], [4, 'shop/deny-all']]);
  assert.deepEqual(names.endpoints.get(8), { pod: 'shop/db-0', ips: ['10.200.0.6'], ingress: [4], egress: [] });
  assert.equal(names.endpoints.size, 2);
  assert.deepEqual(parsePolicyNames(null), { policies: new Map(), endpoints: new Map() });
  assert.deepEqual(parsePolicyNames('garbage').policies.size, 0);
});

const drop: PolicyEventView = { tsNs: 5_000_000_000n, src: '10.200.0.9', dst: '10.200.0.5', sport: 43210, dport: 80, proto: 6, dir: 'ingress', reason: 'no-rule', reasonCode: 1, epId: 7, policy: 0 };

test('a drop event: pods by address, the isolating policies, UTC time from the monotonic stamp', () => {
  const wallOf = (ts: bigint): number => Date.UTC(2026, 11, 2, 14, 3, 4, 0) + Number(ts / 1_000_000n) - 5000;
  const r = eventRow(drop, names, wallOf);
  assert.deepEqual(r, {
    time: '14:03:04.000', verdict: 'DROP', direction: 'ingress', source: '10.200.0.9:43210', destination: 'shop/web-1 10.200.0.5:80',
    protocol: 'TCP', policy: 'isolated by shop/allow-web, shop/deny-all', reason: 'no rule allows',
  });
  assert.match(formatEventRow(r), /^14:03:04\.000 {2}DROP {3}ingress {2}10\.200\.0\.9:43210 +-> shop\/web-1 10\.200\.0\.5:80 +TCP {3}no rule allows; isolated by shop\/allow-web, shop\/deny-all$/);
  const allow = eventRow({ ...drop, reason: 'allow', policy: 3, proto: 1, dport: 0 }, names, wallOf);
  assert.equal(allow.verdict, 'ALLOW');
  assert.equal(allow.policy, 'shop/allow-web');
  assert.equal(allow.destination, 'shop/web-1 10.200.0.5', 'no port for ICMP');
  assert.equal(eventRow({ ...drop, reason: 'allow', policy: 99 }, names, wallOf).policy, '#99', 'an id the names file does not know yet');
  assert.equal(eventRow({ ...drop, proto: 132 }, names, wallOf).protocol, 'SCTP');
});

test('--pod: the endpoint itself, or its address on either side', () => {
  assert.equal(eventMatchesPod(drop, names, 'shop/web-1'), true);
  assert.equal(eventMatchesPod({ ...drop, epId: 99, dst: '10.200.0.1' }, names, 'shop/web-1'), false);
  assert.equal(eventMatchesPod({ ...drop, epId: 99, src: '10.200.0.6', dst: '10.200.0.1' }, names, 'shop/db-0'), true);
  assert.equal(eventMatchesPod(drop, names, 'shop/nope'), false);
});

const stats: PolicyStat[] = [
  { epId: 7, policy: 0, dir: 'ingress', verdict: 'drop', packets: 12n, bytes: 720n },
  { epId: 7, policy: 3, dir: 'ingress', verdict: 'allow', packets: 5n, bytes: 300n },
  { epId: 8, policy: 0, dir: 'egress', verdict: 'allow', packets: 2n, bytes: 120n },
  { epId: 9, policy: 0, dir: 'egress', verdict: 'drop', packets: 1n, bytes: 60n },
];

test('per-pod counters for patu status', () => {
  const c = podCounters(stats, names);
  assert.deepEqual(c.map((x) => [x.pod, x.dropped.ingress, x.dropped.egress, x.allowed.ingress, x.allowed.egress]), [
    ['endpoint #9', 0n, 1n, 0n, 0n], ['shop/db-0', 0n, 0n, 0n, 2n], ['shop/web-1', 12n, 0n, 5n, 0n],
  ]);
  const text = formatPolicyStatus({ endpoints: 2, isolatedIngress: 2, isolatedEgress: 0, rules: 4, monitor: false, pods: c });
  assert.match(text, /NetworkPolicy: 2 pods enforced \(2 isolated for ingress, 0 for egress\), 4 rules/);
  assert.match(text, /shop\/web-1 +12 +0 +5 +0 +shop\/allow-web \(5\)/);
  assert.match(formatPolicyStatus(null), /not set up/);
});

test('/metrics: patu_policy_packets_total and _bytes_total mirror the map at each scrape', async () => {
  const m = new AgentMetrics({ defaultMetrics: false });
  let current = stats;
  m.setPolicySource(() => policySeries(current, names));
  let text = await m.registry.metrics();
  assert.match(text, /^patu_policy_packets_total\{namespace="shop",pod="web-1",policy="",direction="ingress",verdict="drop"\} 12$/m);
  assert.match(text, /^patu_policy_packets_total\{namespace="shop",pod="web-1",policy="allow-web",direction="ingress",verdict="allow"\} 5$/m);
  assert.match(text, /^patu_policy_bytes_total\{namespace="shop",pod="db-0",policy="",direction="egress",verdict="allow"\} 120$/m);
  assert.match(text, /^patu_policy_packets_total\{namespace="",pod="endpoint-9",policy="",direction="egress",verdict="drop"\} 1$/m);
  // A pod that went away leaves the output; a failing read keeps the last values.
  current = stats.slice(0, 2);
  text = await m.registry.metrics();
  assert.doesNotMatch(text, /db-0/);
  m.setPolicySource(() => {
    throw new Error('map gone');
  });
  assert.match(await m.registry.metrics(), /pod="web-1"/);
});

test('MirrorCounter: replaced whole, summed when two entries share labels', async () => {
  const r = new Registry();
  const c = new MirrorCounter({ name: 'm_total', help: 'm', labelNames: ['a'] as const, registers: [r] });
  c.replace([{ labels: { a: 'x' }, value: 2 }, { labels: { a: 'x' }, value: 3 }, { labels: { a: 'y' }, value: 1 }]);
  assert.equal(await r.metrics(), '# HELP m_total m\n# TYPE m_total counter\nm_total{a="x"} 5\nm_total{a="y"} 1\n');
  c.replace([]);
  assert.equal(await r.metrics(), '# HELP m_total m\n# TYPE m_total counter\n');
});
