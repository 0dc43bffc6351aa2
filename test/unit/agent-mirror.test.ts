// DataplaneMirror (src/agent/mirror.ts) against a Dataplane in memory that fails on
// demand (test/helpers/fake-dataplane.ts): the sinks return at once, pushes coalesce,
// a 'resync' answer brings a full push, failures are retried with capped backoff and
// followed by full pushes, a restarted manager is noticed and refilled, and (property)
// any interleaving of changes, failures and restarts ends with the data plane holding
// exactly the desired state.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import fc from 'fast-check';
import { DataplaneMirror, type MirrorLog } from '../../src/agent/mirror.js';
import { FakeDataplane, type FailMode } from '../helpers/fake-dataplane.js';
import type { DesiredServicePort } from '../../src/services/model.js';
import type { PolicyState } from '../../src/policy/types.js';

function port(ref: string, i: number, backends: number, vip = `10.96.0.${i}`): DesiredServicePort {
  return {
    key: `${vip}:80/TCP`, ref, vip, port: 80, protocol: 'TCP', name: `${ref}:http`, affinity: false, affinityTimeoutSeconds: 0,
    backends: Array.from({ length: backends }, (_, b) => `10.200.0.${b + 1}:8080`),
  };
}

const byKey = (ports: DesiredServicePort[]): Map<string, DesiredServicePort> => new Map(ports.map((p) => [p.key, p]));

function recordingLog(): MirrorLog & { lines: { level: string; o: any; msg: string }[] } {
  const lines: { level: string; o: any; msg: string }[] = [];
  const at = (level: string) => (o: object, msg: string) => void lines.push({ level, o, msg });
  return { lines, debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
}

const policy = (n: number): PolicyState => ({ namespaces: [{ name: `ns${n}`, labels: {} }], pods: [], policies: [], nodeAddresses: [] });

test('mirror: the sinks return at once; the first push is a full one, later ones deltas of the changed services', async (t) => {
  const dp = new FakeDataplane();
  const m = new DataplaneMirror({ dataplane: dp, heartbeatMs: 0 });
  t.after(() => m.close());
  assert.match(m.notReady() ?? '', /not reached yet/, 'never answered: not ready');
  const st = m.services.resync(byKey([port('a/x', 1, 2), port('a/y', 2, 1)]));
  assert.equal(st.ops, 0, 'nothing is written synchronously');
  assert.equal(dp.calls.length, 0, 'no call before the event loop turns');
  assert.match(m.notReady() ?? '', /nothing pushed yet/);
  await m.idle();
  assert.equal(m.notReady(), undefined);
  assert.deepEqual(dp.calls.map((c) => [c.method, c.full]), [['applyServices', true]]);
  assert.deepEqual([...dp.services.keys()].sort(), ['10.96.0.1:80/TCP', '10.96.0.2:80/TCP']);
  m.services.applyChanges(new Set(['a/x']), byKey([port('a/x', 1, 3)]));
  m.services.applyChanges(new Set(['a/y']), new Map());
  await m.idle();
  const last = dp.calls.at(-1)!;
  assert.equal(last.full, false);
  assert.deepEqual(last.refs?.sort(), ['a/x', 'a/y'], 'both changes of one event-loop turn in one delta');
  assert.deepEqual([...dp.services.keys()], ['10.96.0.1:80/TCP']);
  assert.equal(dp.services.get('10.96.0.1:80/TCP')!.backends.length, 3);
});

test('mirror: changes made while a call is in flight go together in the next call', async (t) => {
  const dp = new FakeDataplane();
  const m = new DataplaneMirror({ dataplane: dp, heartbeatMs: 0 });
  t.after(() => m.close());
  m.services.resync(new Map());
  await m.idle();
  let open!: () => void;
  dp.gate = new Promise((r) => (open = r));
  m.services.applyChanges(new Set(['s/0']), byKey([port('s/0', 0, 1)]));
  await sleep(5); // the delta for s/0 is now waiting at the gate
  for (let i = 1; i <= 50; i++) m.services.applyChanges(new Set([`s/${i}`]), byKey([port(`s/${i}`, i, 1)]));
  open();
  dp.gate = undefined;
  await m.idle();
  const deltas = dp.calls.filter((c) => c.method === 'applyServices' && !c.full);
  assert.equal(deltas.length, 2, `one call in flight, then one for the 50 changes made meanwhile (got ${deltas.map((d) => d.refs?.length).join(', ')})`);
  assert.equal(deltas[1]!.refs?.length, 50);
  assert.equal(dp.services.size, 51);
});

test('mirror: a delta the manager cannot place (resync) is followed at once by a full push', async (t) => {
  const dp = new FakeDataplane();
  const log = recordingLog();
  const m = new DataplaneMirror({ dataplane: dp, heartbeatMs: 0, log });
  t.after(() => m.close());
  m.services.resync(byKey([port('a/x', 1, 1)]));
  await m.idle();
  dp.servicesSession = 'someone-else'; // another session pushed (or the manager restarted with its maps)
  m.services.applyChanges(new Set(['a/y']), byKey([port('a/y', 2, 1)]));
  await m.idle();
  assert.deepEqual(dp.calls.map((c) => `${c.full ? 'full' : 'delta'}:${c.outcome}`), ['full:ok', 'delta:resync', 'full:ok']);
  assert.deepEqual([...dp.services.keys()].sort(), ['10.96.0.1:80/TCP', '10.96.0.2:80/TCP']);
  assert.ok(log.lines.some((l) => /full resync/.test(l.msg)));
});

test('mirror: an unreachable manager is retried with doubling, capped, jittered delays; then everything is sent whole', async (t) => {
  const dp = new FakeDataplane();
  const log = recordingLog();
  let r = 0.999;
  const m = new DataplaneMirror({ dataplane: dp, heartbeatMs: 0, log, backoffMs: 2, maxBackoffMs: 16, random: () => r });
  t.after(() => m.close());
  m.setNodeSettings({ podCidr: '10.200.1.0/24', serviceCidr: '10.96.0.0/12' });
  m.setAcceleration(true);
  m.policy.setState(policy(1));
  m.services.resync(byKey([port('a/x', 1, 1)]));
  await m.idle();
  assert.equal(m.notReady(), undefined);
  dp.down = true;
  m.services.applyChanges(new Set(['a/y']), byKey([port('a/y', 2, 1)]));
  await sleep(150);
  assert.match(m.notReady() ?? '', /data plane manager: .*ECONNREFUSED/, 'readiness says the manager is unreachable');
  const delays = log.lines.filter((l) => l.o.retryInMs !== undefined).map((l) => l.o.retryInMs as number);
  assert.ok(delays.length >= 6, `retried (${delays.length})`);
  assert.deepEqual(delays.slice(0, 6), [2, 4, 8, 16, 16, 16], 'doubling, capped at maxBackoffMs (random 1: the top of the range)');
  r = 0;
  const before = delays.length;
  await sleep(60);
  const later = log.lines.filter((l) => l.o.retryInMs !== undefined).slice(before).map((l) => l.o.retryInMs as number);
  assert.ok(later.length > 0 && later.every((d) => d === 8), `jitter: random 0 gives half the cap (${later.join(',')})`);
  assert.equal(log.lines.filter((l) => l.level === 'error' && /unreachable/.test(l.msg)).length, 1, 'logged once, not per retry');
  dp.restart(); // it comes back empty
  const n = dp.calls.length;
  dp.down = false;
  await sleep(20);
  await m.idle();
  assert.equal(m.notReady(), undefined);
  const after = dp.calls.slice(n);
  assert.deepEqual(after.filter((c) => c.outcome === 'ok').map((c) => `${c.method}${c.full ? ':full' : ''}`),
    ['setNodeSettings', 'setAcceleration', 'applyServices:full', 'applyPolicy'], 'every kind re-sent, services whole');
  assert.deepEqual([...dp.services.keys()].sort(), ['10.96.0.1:80/TCP', '10.96.0.2:80/TCP']);
  assert.deepEqual(dp.node, { podCidr: '10.200.1.0/24', serviceCidr: '10.96.0.0/12' });
  assert.equal(dp.acceleration, true);
  assert.deepEqual(dp.policy, policy(1));
  assert.ok(log.lines.some((l) => /reachable again/.test(l.msg)));
});

test('mirror: an answer lost after the apply (deadline) is followed by a full push: nothing applied twice as a delta', async (t) => {
  const dp = new FakeDataplane();
  const m = new DataplaneMirror({ dataplane: dp, heartbeatMs: 0, backoffMs: 1, maxBackoffMs: 2 });
  t.after(() => m.close());
  m.services.resync(byKey([port('a/x', 1, 1)]));
  await m.idle();
  dp.failNext.push('after');
  m.services.applyChanges(new Set(['a/x']), new Map());
  await sleep(20);
  await m.idle();
  assert.deepEqual(dp.calls.map((c) => `${c.full ? 'full' : 'delta'}:${c.outcome}`), ['full:ok', 'delta:deadline', 'full:ok']);
  assert.equal(dp.services.size, 0);
});

test('mirror: the heartbeat notices a manager that restarted while nothing changed and refills it', async (t) => {
  const dp = new FakeDataplane();
  const log = recordingLog();
  const m = new DataplaneMirror({ dataplane: dp, heartbeatMs: 5, log });
  t.after(() => m.close());
  m.setNodeSettings({ podCidr: '10.200.3.0/24' });
  m.pods.setOptOut('10.200.3.7', true);
  m.services.resync(byKey([port('a/x', 1, 2)]));
  m.policy.setState(policy(2));
  await m.idle();
  await sleep(30);
  dp.restart();
  dp.podFlags.clear(); // (a real manager keeps them pinned; here they go too, to see them re-sent)
  for (let i = 0; i < 100 && (dp.services.size === 0 || dp.policy === undefined || dp.podFlags.size === 0); i++) await sleep(10);
  await m.idle();
  assert.equal(dp.services.size, 1);
  assert.deepEqual(dp.policy, policy(2));
  assert.deepEqual(dp.node, { podCidr: '10.200.3.0/24' });
  assert.deepEqual([...dp.podFlags], [['10.200.3.7', true]]);
  assert.ok(log.lines.some((l) => /re-sending everything/.test(l.msg)));
});

test('mirror: pod flags: opt-outs are re-sent after a failure, a reverted one is sent once, a forgotten pod never again', async (t) => {
  const dp = new FakeDataplane();
  const m = new DataplaneMirror({ dataplane: dp, heartbeatMs: 0, backoffMs: 1, maxBackoffMs: 2 });
  t.after(() => m.close());
  assert.equal(m.pods.setOptOut('10.0.0.1', true), true);
  assert.equal(m.pods.setOptOut('10.0.0.1', true), false, 'no change');
  m.pods.setOptOut('10.0.0.2', true);
  m.pods.setOptOut('10.0.0.3', true);
  await m.idle();
  m.pods.setOptOut('10.0.0.2', false);
  m.pods.forget('10.0.0.3');
  await m.idle();
  assert.deepEqual(Object.fromEntries(dp.podFlags), { '10.0.0.1': true, '10.0.0.2': false, '10.0.0.3': true });
  dp.podFlags.clear();
  dp.failNext.push('before');
  m.setNodeSettings({ snatAddress: '192.0.2.1' });
  await sleep(20);
  await m.idle();
  assert.deepEqual(Object.fromEntries(dp.podFlags), { '10.0.0.1': true }, 'the full re-send holds the opt-out only');
});

type Op =
  | { t: 'set'; svc: number; backends: number }
  | { t: 'del'; svc: number }
  | { t: 'resync' }
  | { t: 'policy'; n: number }
  | { t: 'flag'; pod: number; optOut: boolean }
  | { t: 'node'; n: number }
  | { t: 'accel'; on: boolean }
  | { t: 'fail'; mode: FailMode }
  | { t: 'restart' }
  | { t: 'down'; on: boolean }
  | { t: 'wait'; ms: number };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ t: fc.constant('set' as const), svc: fc.nat(7), backends: fc.nat(3) }) },
  { weight: 3, arbitrary: fc.record({ t: fc.constant('del' as const), svc: fc.nat(7) }) },
  { weight: 1, arbitrary: fc.constant({ t: 'resync' as const }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('policy' as const), n: fc.nat(5) }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('flag' as const), pod: fc.nat(4), optOut: fc.boolean() }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('node' as const), n: fc.nat(3) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('accel' as const), on: fc.boolean() }) },
  { weight: 3, arbitrary: fc.record({ t: fc.constant('fail' as const), mode: fc.constantFrom<FailMode>('before', 'after') }) },
  { weight: 1, arbitrary: fc.constant({ t: 'restart' as const }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('down' as const), on: fc.boolean() }) },
  { weight: 3, arbitrary: fc.record({ t: fc.constant('wait' as const), ms: fc.integer({ min: 0, max: 6 }) }) },
);

test('mirror (property): any interleaving of changes, failures and restarts ends with the data plane holding exactly the desired state', async () => {
  let runs = 0;
  await fc.assert(
    fc.asyncProperty(fc.array(opArb, { minLength: 1, maxLength: 40 }), async (ops) => {
      runs++;
      const dp = new FakeDataplane();
      const m = new DataplaneMirror({ dataplane: dp, heartbeatMs: 3, backoffMs: 1, maxBackoffMs: 4 });
      const want = new Map<number, DesiredServicePort>();
      const flags = new Map<string, boolean>();
      let node: number | undefined;
      let accel: boolean | undefined;
      let pol: number | undefined;
      let svcTouched = false;
      try {
        for (const op of ops) {
          switch (op.t) {
            case 'set': {
              const p = port(`ns/s${op.svc}`, op.svc, op.backends);
              want.set(op.svc, p);
              m.services.applyChanges(new Set([p.ref]), byKey([p]));
              svcTouched = true;
              break;
            }
            case 'del':
              want.delete(op.svc);
              m.services.applyChanges(new Set([`ns/s${op.svc}`]), new Map());
              svcTouched = true;
              break;
            case 'resync':
              m.services.resync(byKey([...want.values()]));
              svcTouched = true;
              break;
            case 'policy': pol = op.n; m.policy.setState(policy(op.n)); break;
            case 'flag': flags.set(`10.200.0.${op.pod}`, op.optOut); m.pods.setOptOut(`10.200.0.${op.pod}`, op.optOut); break;
            case 'node': node = op.n; m.setNodeSettings({ podCidr: `10.200.${op.n}.0/24` }); break;
            case 'accel': accel = op.on; m.setAcceleration(op.on); break;
            case 'fail': dp.failNext.push(op.mode); break;
            case 'restart': dp.restart(); break;
            case 'down': dp.down = op.on; break;
            case 'wait': await sleep(op.ms); break;
          }
        }
        // The faults end; the mirror must get there on its own (retries, heartbeat).
        dp.down = false;
        dp.failNext.length = 0;
        const settled = (): boolean => {
          const keys = [...want.values()].map((p) => p.key).sort();
          if (svcTouched && [...dp.services.keys()].sort().join() !== keys.join()) return false;
          for (const p of want.values()) if (JSON.stringify(dp.services.get(p.key)) !== JSON.stringify(p)) return false;
          if (pol !== undefined && JSON.stringify(dp.policy) !== JSON.stringify(policy(pol))) return false;
          if (node !== undefined && dp.node.podCidr !== `10.200.${node}.0/24`) return false;
          if (accel !== undefined && (dp.acceleration ?? false) !== accel) return false; // a restarted manager reports its switch off: off is off
          // An opt-out must be there; a reverted one may be missing (a restarted manager: the registry entry starts without it).
          for (const [ip, v] of flags) if (v ? dp.podFlags.get(ip) !== true : dp.podFlags.get(ip) === true) return false;
          return m.notReady() === undefined;
        };
        for (let i = 0; i < 200 && !settled(); i++) await sleep(5);
        await m.idle();
        assert.ok(settled(), `data plane not in the desired state: services ${[...dp.services.keys()].sort().join(' ')} want ${[...want.values()].map((p) => p.key).sort().join(' ')}; policy ${JSON.stringify(dp.policy)} want ${pol}; node ${JSON.stringify(dp.node)} want ${node}; accel ${dp.acceleration} want ${accel}; flags ${JSON.stringify([...dp.podFlags])} want ${JSON.stringify([...flags])}`);
        assert.equal(m.notReady(), undefined);
      } finally {
        await m.close();
      }
    }),
    { numRuns: 60 },
  );
  assert.equal(runs >= 60, true);
});

test('mirror (property check can fail): a data plane that drops a delta silently is caught', async () => {
  // The same check against a broken data plane: it acknowledges one delta without applying it.
  const dp = new FakeDataplane();
  const m = new DataplaneMirror({ dataplane: dp, heartbeatMs: 0 });
  try {
    m.services.resync(byKey([port('a/x', 1, 1)]));
    await m.idle();
    const real = dp.applyServices.bind(dp);
    let dropped = false;
    dp.applyServices = async (c, o) => {
      if (!c.full && !dropped) {
        dropped = true;
        dp.servicesGeneration = c.generation;
        return { generation: c.generation, mapOps: 0, services: dp.services.size, applyMs: 0, repeatedGeneration: false, conflicts: [] };
      }
      return real(c, o);
    };
    m.services.applyChanges(new Set(['a/y']), byKey([port('a/y', 2, 1)]));
    await m.idle();
    assert.notDeepEqual([...dp.services.keys()].sort(), [...m.desiredServices().keys()].sort(), 'the comparison sees the difference');
  } finally {
    await m.close();
  }
});

test('mirror: a service the manager refuses (outside its limits) is warned once per change of its refusal, naming ref, entry and reason', async (t) => {
  const dp = new FakeDataplane();
  const real = dp.applyServices.bind(dp);
  // A manager whose limits refuse any VIP outside 10.96.0.0/16: left out, the rest applied.
  dp.applyServices = async (c, o) => {
    const bad = c.ports.filter((p) => !p.vip.startsWith('10.96.'));
    const r = await real({ ...c, ports: c.ports.filter((p) => !bad.includes(p)) }, o);
    const refused = bad.map((p) => ({ ref: p.ref, key: p.key, reason: `vip ${p.vip} is outside the service CIDRs` }));
    return { ...r, ...(refused.length ? { refused } : {}) };
  };
  const log = recordingLog();
  const counted: string[] = [];
  const m = new DataplaneMirror({ dataplane: dp, heartbeatMs: 0, backoffMs: 1, log, onServiceRefused: (r) => counted.push(r.ref) });
  t.after(() => m.close());
  const warned = () => log.lines.filter((l) => l.level === 'warn' && /refused it/.test(l.msg)).map((l) => `${l.o.service} ${l.o.entry} ${l.o.reason}`);
  m.services.resync(byKey([port('a/ok', 1, 1), port('a/bad', 0, 1, '8.8.8.8')]));
  await m.idle();
  assert.deepEqual(warned(), ['a/bad 8.8.8.8:80/TCP vip 8.8.8.8 is outside the service CIDRs']);
  assert.deepEqual([...dp.services.keys()], ['10.96.0.1:80/TCP'], 'the rest applied');
  // Other changes, a delta and a full push after a failure: the lasting refusal is not logged again.
  m.services.applyChanges(new Set(['a/ok']), byKey([port('a/ok', 1, 2)]));
  await m.idle();
  dp.failNext.push('after' as FailMode);
  m.services.applyChanges(new Set(['a/ok']), byKey([port('a/ok', 1, 3)]));
  await m.idle();
  assert.ok(dp.calls.filter((c) => c.method === 'applyServices' && c.full).length >= 2, 'a full push re-sent the refused service');
  assert.equal(warned().length, 1, 'once per change, not per push');
  // The refusal changes (another address): logged again; the service fixed then broken again: logged again.
  m.services.applyChanges(new Set(['a/bad']), byKey([port('a/bad', 0, 1, '9.9.9.9')]));
  await m.idle();
  m.services.applyChanges(new Set(['a/bad']), byKey([port('a/bad', 7, 1)]));
  await m.idle();
  m.services.applyChanges(new Set(['a/bad']), byKey([port('a/bad', 0, 1, '9.9.9.9')]));
  await m.idle();
  assert.deepEqual(warned().slice(1), ['a/bad 9.9.9.9:80/TCP vip 9.9.9.9 is outside the service CIDRs', 'a/bad 9.9.9.9:80/TCP vip 9.9.9.9 is outside the service CIDRs']);
  assert.deepEqual(counted, ['a/bad', 'a/bad', 'a/bad'], 'counted as often as logged');
});

test('mirror: policy off is pushed as enforcementOff (state ignored), re-sent whole after a restarted manager, and a later state replaces it', async (t) => {
  const dp = new FakeDataplane();
  const m = new DataplaneMirror({ dataplane: dp, heartbeatMs: 20, backoffMs: 1 });
  t.after(() => m.close());
  m.setPolicyOff();
  await m.idle();
  assert.equal(dp.policyOff, true);
  assert.equal(m.notReady(), undefined);
  dp.restart();
  assert.equal(dp.policyOff, true, 'the fake keeps the flag until the next call');
  dp.policyOff = false;
  const calls = dp.calls.length;
  for (let i = 0; i < 100 && dp.calls.length === calls; i++) await sleep(10);
  await m.idle();
  assert.equal(dp.policyOff, true, 'the heartbeat noticed the restart and told it again');
  assert.equal(dp.policySession, m.session);
  m.policy.setState(policy(1), { rememberCniAddresses: true });
  await m.idle();
  assert.equal(dp.policyOff, false);
  assert.equal(dp.remembered, true);
  assert.deepEqual(dp.policy, policy(1));
});

test('mirror: sets no deadline of its own unless given one, so the client\'s default (DEFAULTS.managerCallTimeoutMs) is the one deadline', async () => {
  for (const given of [undefined, 250]) {
    const dp = new FakeDataplane();
    const seen: (number | undefined)[] = [];
    const apply = dp.applyServices.bind(dp);
    const status = dp.status.bind(dp);
    dp.applyServices = (c, o) => (seen.push(o?.timeoutMs), apply(c, o));
    dp.status = (o) => (seen.push(o?.timeoutMs), status(o));
    const m = new DataplaneMirror({ dataplane: dp, heartbeatMs: 10, ...(given !== undefined ? { callTimeoutMs: given } : {}) });
    try {
      m.services.resync(byKey([port('a/x', 1, 1)]));
      await m.idle();
      for (let i = 0; i < 100 && seen.length < 2; i++) await sleep(10);
    } finally {
      await m.close();
    }
    assert.ok(seen.length >= 2, 'a push and a heartbeat');
    assert.deepEqual(new Set(seen), new Set([given]), `callTimeoutMs ${String(given)}`);
  }
});
