// The policy engine's logic against a fake dataplane (the kernel side has its own tests;
// test/integration/policy-*.test.ts run the engine on the real maps): what it programs,
// the names file, cutting off flows a change denies, the CNI ADD window, restarts, and
// "when in doubt, deny" when the maps cannot hold the state.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PolicyEngine, type PolicyDataplaneLike } from '../../src/policy/engine.js';
import { lookupCompiled } from '../../src/policy/compile.js';
import { readPolicyNamesFile } from '../../src/policy/names.js';
import type { PolicyMapContents, PolicyState } from '../../src/policy/types.js';
import { e2eIp, e2eState, np } from '../helpers/policy-gen.js';

const dir = mkdtempSync(join(tmpdir(), 'patu-pol-engine-'));
after(() => rmSync(dir, { recursive: true, force: true }));

type Ct = { src: string; dst: string; sport: number; dport: number; proto: number; dir: 'ingress' | 'egress' };
type Sock = { src: string; dst: string; sport: number; dport: number };

class FakeDp implements PolicyDataplaneLike {
  contents: PolicyMapContents = { endpoints: [], peers: [], rules: [] };
  ct: Ct[] = [];
  socks: Sock[] = [];
  maxRules = Infinity;
  syncs = 0;
  sync(desired: PolicyMapContents): { changed: number } {
    if (desired.rules.length > this.maxRules) throw Object.assign(new Error(`policy map patu_pol_rule cannot hold ${desired.rules.length} entries`), { code: 'POLICY_CAPACITY' });
    this.syncs++;
    const diff = (a: object[], b: object[]): number => {
      const sa = new Set(a.map((x) => JSON.stringify(x)));
      const sb = new Set(b.map((x) => JSON.stringify(x)));
      let n = 0;
      for (const x of sa) if (!sb.has(x)) n++;
      for (const x of sb) if (!sa.has(x)) n++;
      return n;
    };
    const changed = diff(this.contents.endpoints, desired.endpoints) + diff(this.contents.peers, desired.peers) + diff(this.contents.rules, desired.rules);
    this.contents = structuredClone(desired);
    return { changed };
  }
  read(): PolicyMapContents {
    return structuredClone(this.contents);
  }
  flushConntrack(pred: (k: Ct, v: { flags: number }) => boolean): number {
    const before = this.ct.length;
    this.ct = this.ct.filter((k) => !pred({ ...k }, { flags: 0 }));
    return before - this.ct.length;
  }
  evictSockets(pred: (f: Sock) => boolean): number {
    const before = this.socks.length;
    this.socks = this.socks.filter((s) => !pred({ ...s }));
    return before - this.socks.length;
  }
}

const quiet = { info: () => {}, warn: () => {}, error: () => {} };
const logged: string[] = [];
const log = { info: () => {}, warn: (_f: object, m: string) => void logged.push(m), error: (_f: object, m: string) => void logged.push(m) };

test('programs the compiled state, writes the names file, an unchanged state writes nothing', () => {
  const dp = new FakeDp();
  const namesFile = join(dir, 'a.names.json');
  const engine = new PolicyEngine(dp, quiet, { namesFile });
  const s = e2eState([np('x', 'deny', { podSelector: { matchLabels: { pod: 'a' } } })]);
  const r = engine.setState(s);
  assert.ok(r.changed > 0);
  assert.equal(r.fallback, false);
  assert.equal(lookupCompiled(dp.contents, { src: e2eIp('y', 'a'), dst: e2eIp('x', 'a'), proto: 6, dport: 80 }), false);
  const names = readPolicyNamesFile(namesFile)!;
  assert.deepEqual(Object.values(names.policies), ['x/deny']);
  const xa = Object.values(names.endpoints).find((e) => e.pod === 'x/a')!;
  assert.deepEqual(xa.ips, [e2eIp('x', 'a')]);
  assert.deepEqual(xa.ingress, [Number(Object.keys(names.policies)[0])]);
  assert.deepEqual(engine.names(), names);
  const syncs = dp.syncs;
  assert.equal(engine.setState(structuredClone(s)).changed, 0);
  assert.equal(dp.syncs, syncs, 'the same contents: the maps are not even read');
  // A change the maps do not see (a remote pod's label no policy looks at): no sync either.
  const s2 = structuredClone(s);
  s2.pods.find((p) => p.name === 'c' && p.namespace === 'z')!.labels.extra = 'x';
  assert.equal(engine.setState(s2).changed, 0);
  assert.equal(dp.syncs, syncs);
});

test('a change that denies established flows deletes their conntrack entries and evicts their sockets (both ends), and only theirs', () => {
  const dp = new FakeDp();
  const engine = new PolicyEngine(dp, quiet, { namesFile: '' });
  engine.setState(e2eState());
  const [xa, xb, ya] = [e2eIp('x', 'a'), e2eIp('x', 'b'), e2eIp('y', 'a')];
  dp.ct = [
    { src: ya, dst: xa, sport: 40000, dport: 80, proto: 6, dir: 'ingress' }, // to be denied
    { src: xb, dst: xa, sport: 40001, dport: 80, proto: 6, dir: 'ingress' }, // stays allowed
    { src: xa, dst: ya, sport: 40002, dport: 80, proto: 6, dir: 'egress' }, // x/a's egress is not isolated
  ];
  dp.socks = [
    { src: ya, dst: xa, sport: 40000, dport: 80 }, { src: xa, dst: ya, sport: 80, dport: 40000 }, // the denied connection's two ends
    { src: xb, dst: xa, sport: 40001, dport: 80 }, { src: xa, dst: xb, sport: 80, dport: 40001 },
    { src: xa, dst: ya, sport: 40002, dport: 80 }, { src: ya, dst: xa, sport: 80, dport: 40002 },
  ];
  const r = engine.setState(e2eState([np('x', 'only-x', { podSelector: { matchLabels: { pod: 'a' } }, ingress: [{ from: [{ podSelector: {} }] }] })]));
  assert.equal(r.flushed, 1);
  assert.equal(r.evicted, 2);
  assert.deepEqual(dp.ct.map((c) => c.sport), [40001, 40002]);
  assert.deepEqual(dp.socks.map((s) => `${s.sport}-${s.dport}`), ['40001-80', '80-40001', '40002-80', '80-40002']);
  assert.equal(engine.counters.flushed, 1);
  assert.equal(engine.counters.evicted, 2);
});

test('CNI ADD closes the window: a known pod\'s address is programmed at once and kept until the source has it', () => {
  const dp = new FakeDp();
  const engine = new PolicyEngine(dp, quiet, { namesFile: '' });
  const s = e2eState([np('x', 'deny', { podSelector: {} })]);
  const noIp = (st: PolicyState) => {
    const c = structuredClone(st);
    const p = c.pods.find((q) => q.namespace === 'x' && q.name === 'c')!;
    p.ips = [];
    return c;
  };
  engine.setState(noIp(s));
  const ip = e2eIp('x', 'c');
  assert.ok(!dp.contents.endpoints.some((e) => e.ip === ip));
  assert.equal(engine.podAddressKnown('q', 'unknown', ['10.1.1.1']), false);
  const r = engine.podAddressKnown('x', 'c', [ip, 'fd00::1']);
  assert.ok(r && r.changed > 0);
  assert.ok(dp.contents.endpoints.some((e) => e.ip === ip && e.isolatedIngress));
  // The source still without the address (its watch lags): the endpoint stays.
  engine.setState(noIp(s));
  assert.ok(dp.contents.endpoints.some((e) => e.ip === ip));
  // The source caught up, then the pod is deleted: gone.
  engine.setState(s);
  assert.ok(dp.contents.endpoints.some((e) => e.ip === ip));
  const gone = structuredClone(s);
  gone.pods = gone.pods.filter((p) => !(p.namespace === 'x' && p.name === 'c'));
  engine.setState(gone);
  assert.ok(!dp.contents.endpoints.some((e) => e.ip === ip));
  // Told again for an already known address: nothing to do.
  engine.setState(s);
  assert.equal(engine.podAddressKnown('x', 'c', [ip]), false);
  // CNI DEL: an address known only from the ADD goes; one the source gives stays.
  engine.setState(noIp(s));
  assert.ok(engine.podAddressKnown('x', 'c', [ip]));
  assert.ok(dp.contents.endpoints.some((e) => e.ip === ip));
  assert.ok(engine.podAddressGone('x', 'c'));
  assert.ok(!dp.contents.endpoints.some((e) => e.ip === ip));
  assert.equal(engine.podAddressGone('x', 'c'), false);
  engine.setState(s);
  assert.equal(engine.podAddressGone('x', 'c'), false);
  assert.ok(dp.contents.endpoints.some((e) => e.ip === ip));
});

test('a restarted engine takes over the ids: the same state writes nothing', () => {
  const dp = new FakeDp();
  const namesFile = join(dir, 'restart.names.json');
  const s = e2eState([
    np('x', 'p1', { podSelector: {}, ingress: [{ from: [{ namespaceSelector: { matchLabels: { ns: 'y' } } }], ports: [{ port: 'serve-80-tcp' }] }] }),
    np('y', 'p2', { podSelector: { matchLabels: { pod: 'b' } }, egress: [{ to: [{ ipBlock: { cidr: '10.200.0.0/16', except: ['10.200.1.0/24'] } }] }] }),
  ]);
  const first = new PolicyEngine(dp, quiet, { namesFile });
  first.setState(e2eState([np('z', 'other', { podSelector: {} })]));
  first.setState(s);
  const syncs = dp.syncs;
  const second = new PolicyEngine(dp, quiet, { namesFile });
  assert.equal(second.setState(structuredClone(s)).changed, 0);
  assert.equal(dp.syncs, syncs + 1);
  assert.deepEqual(readPolicyNamesFile(namesFile)!.policies, first.names().policies);
});

test('the policy file\'s pods addressed by CNI ADD keep their addresses across an engine restart (names file), Kubernetes\' do not', () => {
  const dp = new FakeDp();
  const namesFile = join(dir, 'cni.names.json');
  const s = e2eState([np('x', 'deny', { podSelector: {} })]);
  const ip = e2eIp('x', 'c');
  s.pods.find((p) => p.namespace === 'x' && p.name === 'c')!.ips = [];
  const first = new PolicyEngine(dp, quiet, { namesFile, rememberCniAddresses: true });
  first.setState(s);
  assert.ok(first.podAddressKnown('x', 'c', [ip]));
  const ep = Object.values(readPolicyNamesFile(namesFile)!.endpoints).find((e) => e.pod === 'x/c')!;
  assert.equal(ep.fromCni, true);
  assert.equal(Object.values(readPolicyNamesFile(namesFile)!.endpoints).find((e) => e.pod === 'x/a')!.fromCni, undefined);
  const restarted = new PolicyEngine(dp, quiet, { namesFile, rememberCniAddresses: true });
  assert.equal(restarted.setState(structuredClone(s)).changed, 0);
  assert.ok(dp.contents.endpoints.some((e) => e.ip === ip && e.isolatedIngress));
  const k8s = new PolicyEngine(dp, quiet, { namesFile });
  assert.ok(k8s.setState(structuredClone(s)).changed > 0);
  assert.ok(!dp.contents.endpoints.some((e) => e.ip === ip));
});

test('the manager\'s engine (no engine-wide option): learned addresses are recorded always, and an earlier run\'s apply only to states that ask', () => {
  const dp = new FakeDp();
  const namesFile = join(dir, 'cni-per-state.names.json');
  const s = e2eState([np('x', 'deny', { podSelector: {} })]);
  const ip = e2eIp('x', 'c');
  s.pods.find((p) => p.namespace === 'x' && p.name === 'c')!.ips = [];
  // A Kubernetes-like state (no flag): the ADD applies within the run and is recorded as learned.
  const first = new PolicyEngine(dp, quiet, { namesFile });
  first.setState(s);
  assert.ok(first.podAddressKnown('x', 'c', [ip]));
  assert.equal(Object.values(readPolicyNamesFile(namesFile)!.endpoints).find((e) => e.pod === 'x/c')!.fromCni, true);
  // Restarted: a state that asks takes the address back (nothing to write); one that does not, drops it.
  const asks = new PolicyEngine(dp, quiet, { namesFile });
  assert.equal(asks.setState(structuredClone(s), { rememberCniAddresses: true }).changed, 0);
  assert.ok(dp.contents.endpoints.some((e) => e.ip === ip && e.isolatedIngress));
  assert.equal(Object.values(readPolicyNamesFile(namesFile)!.endpoints).find((e) => e.pod === 'x/c')!.fromCni, true, 'still recorded as learned');
  const other = new PolicyEngine(dp, quiet, { namesFile });
  assert.ok(other.setState(structuredClone(s)).changed > 0);
  assert.ok(!dp.contents.endpoints.some((e) => e.ip === ip), 'an old address is never applied to a state that does not ask');
});

test('when in doubt, deny: a state the maps cannot hold leaves every selected pod isolated with no rules, counted and logged', () => {
  const dp = new FakeDp();
  logged.length = 0;
  const engine = new PolicyEngine(dp, log, { namesFile: '' });
  engine.setState(e2eState([np('x', 'allow-y', { podSelector: {}, ingress: [{ from: [{ namespaceSelector: { matchLabels: { ns: 'y' } } }] }] })]));
  const [xa, ya, yb] = [e2eIp('x', 'a'), e2eIp('y', 'a'), e2eIp('y', 'b')];
  assert.equal(lookupCompiled(dp.contents, { src: ya, dst: xa, proto: 6, dport: 80 }), true);
  dp.ct = [{ src: ya, dst: xa, sport: 1, dport: 80, proto: 6, dir: 'ingress' }, { src: ya, dst: yb, sport: 2, dport: 80, proto: 6, dir: 'ingress' }];
  dp.maxRules = 2;
  const r = engine.setState(e2eState([
    np('x', 'allow-y', { podSelector: {}, ingress: [{ from: [{ namespaceSelector: { matchLabels: { ns: 'y' } } }] }] }),
    np('y', 'allow-x', { podSelector: {}, ingress: [{ from: [{ namespaceSelector: { matchLabels: { ns: 'x' } } }] }] }),
  ]));
  assert.equal(r.fallback, true);
  assert.equal(r.failure, 'capacity');
  assert.equal(engine.counters.fallbacks, 1);
  assert.match(engine.lastError ?? '', /cannot hold/);
  assert.ok(logged.some((m) => /denies all traffic/.test(m)));
  assert.equal(dp.contents.rules.length, 0);
  assert.ok(dp.contents.endpoints.every((e) => e.isolatedIngress));
  assert.equal(dp.contents.endpoints.length, 6);
  assert.equal(lookupCompiled(dp.contents, { src: ya, dst: xa, proto: 6, dport: 80 }), false);
  assert.equal(lookupCompiled(dp.contents, { src: '10.200.0.1', dst: xa, proto: 6, dport: 80 }), true);
  assert.equal(dp.ct.length, 0, 'flows into isolated pods are cut off');
  // A state that fits again: programmed, the error cleared.
  dp.maxRules = Infinity;
  const ok = engine.setState(e2eState([np('x', 'allow-y', { podSelector: {}, ingress: [{ from: [{ namespaceSelector: { matchLabels: { ns: 'y' } } }] }] })]));
  assert.equal(ok.fallback, false);
  assert.equal(ok.failure, undefined);
  assert.equal(engine.lastError, undefined);
  assert.equal(lookupCompiled(dp.contents, { src: ya, dst: xa, proto: 6, dport: 80 }), true);
});

test('the names file is replaced atomically (no temporary file left)', () => {
  const dp = new FakeDp();
  const namesFile = join(dir, 'atomic', 'n.names.json');
  const engine = new PolicyEngine(dp, quiet, { namesFile });
  engine.setState(e2eState([np('x', 'p', { podSelector: {} })]));
  engine.setState(e2eState([np('x', 'q', { podSelector: {} })]));
  assert.deepEqual(Object.values(JSON.parse(readFileSync(namesFile, 'utf8')).policies), ['x/q']);
  assert.deepEqual(readdirSync(join(dir, 'atomic')), ['n.names.json']);
});
