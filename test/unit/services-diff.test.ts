// Properties of the service map diff, checked against a simulated map state
// that also plays the BPF reader after every single operation.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { diffServices, commit, departedBackends, emptyState, IdAllocator, type MapOp, type ProgrammedState } from '../../src/services/diff.js';
import { ServiceModel, desiredPorts, selectable, type DesiredServicePort, type Endpoint, type Service } from '../../src/services/model.js';

/** The kernel maps as plain maps, keyed like the C structs. */
interface Sim {
  svc: Map<string, { count: number; svcId: number; affinity: boolean; timeout: number }>;
  slot: Map<string, number>; // `${svcId}/${slot}`
  backend: Map<number, { ip: string; port: number; svcId: number }>;
  meta: Map<number, string>;
}
const newSim = (): Sim => ({ svc: new Map(), slot: new Map(), backend: new Map(), meta: new Map() });
const skey = (k: { vip: string; port: number; protocol: string }): string => `${k.vip}:${k.port}/${k.protocol}`;

function applyOp(sim: Sim, op: MapOp): void {
  switch (op.map) {
    case 'backend':
      if (op.op === 'update') sim.backend.set(op.id, op.value);
      else sim.backend.delete(op.id);
      break;
    case 'meta':
      if (op.op === 'update') sim.meta.set(op.svcId, op.name);
      else sim.meta.delete(op.svcId);
      break;
    case 'slot':
      if (op.op === 'update') sim.slot.set(`${op.svcId}/${op.slot}`, op.backendId);
      else sim.slot.delete(`${op.svcId}/${op.slot}`);
      break;
    case 'svc':
      if (op.op === 'update') sim.svc.set(skey(op.key), { count: op.value.count, svcId: op.value.svcId, affinity: op.value.affinity, timeout: op.value.affinityTimeoutSeconds });
      else sim.svc.delete(skey(op.key));
      break;
  }
}

/** What a BPF program sees: every slot below count resolves to a backend of that service. */
function assertReaderSafe(sim: Sim, where: string): void {
  for (const [key, s] of sim.svc) {
    for (let i = 0; i < s.count; i++) {
      const bid = sim.slot.get(`${s.svcId}/${i}`);
      assert.notEqual(bid, undefined, `${where}: ${key} slot ${i} < count ${s.count} is missing`);
      const b = sim.backend.get(bid!);
      assert.ok(b, `${where}: ${key} slot ${i} names backend ${bid} which does not exist`);
      assert.equal(b.svcId, s.svcId, `${where}: ${key} slot ${i} names a backend of service ${b.svcId}`);
    }
  }
}

/** The simulated maps decoded back into the desired form; also checks nothing is left over. */
function decode(sim: Sim): Map<string, { name: string; backends: string[]; affinity: boolean; timeout: number }> {
  const out = new Map<string, { name: string; backends: string[]; affinity: boolean; timeout: number }>();
  const liveSlots = new Set<string>();
  const liveBackends = new Set<number>();
  for (const [key, s] of sim.svc) {
    const backends: string[] = [];
    for (let i = 0; i < s.count; i++) {
      const bid = sim.slot.get(`${s.svcId}/${i}`)!;
      liveSlots.add(`${s.svcId}/${i}`);
      liveBackends.add(bid);
      const b = sim.backend.get(bid)!;
      backends.push(`${b.ip}:${b.port}`);
    }
    out.set(key, { name: sim.meta.get(s.svcId) ?? '', backends: backends.sort(), affinity: s.affinity, timeout: s.timeout });
  }
  for (const k of sim.slot.keys()) assert.ok(liveSlots.has(k), `stale slot ${k} left behind`);
  for (const id of sim.backend.keys()) assert.ok(liveBackends.has(id), `backend ${id} is in no slot`);
  const svcIds = new Set([...sim.svc.values()].map((s) => s.svcId));
  for (const id of sim.meta.keys()) assert.ok(svcIds.has(id), `name of deleted service ${id} left behind`);
  return out;
}

function expected(desired: ReadonlyMap<string, DesiredServicePort>): ReturnType<typeof decode> {
  const out: ReturnType<typeof decode> = new Map();
  for (const [k, d] of desired) out.set(k, { name: d.name, backends: [...d.backends].sort(), affinity: d.affinity, timeout: d.affinityTimeoutSeconds });
  return out;
}

// Small address spaces on purpose: collisions (same VIP, same backend in two services) must happen.
const ipArb = fc.constantFrom('10.0.0.1', '10.0.0.2', '10.0.0.3', '10.0.0.4', '10.0.0.5', '10.0.0.6');
const endpointArb: fc.Arbitrary<Endpoint> = fc.record({
  ip: ipArb, ready: fc.boolean(), serving: fc.boolean(), terminating: fc.boolean(),
});
const svcArb = (name: string): fc.Arbitrary<{ service: Service; endpoints: Endpoint[] }> =>
  fc.record({
    vip: fc.constantFrom('10.96.0.1', '10.96.0.2'),
    ports: fc.uniqueArray(fc.record({ port: fc.constantFrom(53, 80), protocol: fc.constantFrom('TCP' as const, 'UDP' as const), target: fc.constantFrom(8080, 9090) }), { selector: (p) => `${p.port}/${p.protocol}`, minLength: 1, maxLength: 3 }),
    affinity: fc.boolean(),
    timeout: fc.integer({ min: 1, max: 100 }),
    endpoints: fc.array(endpointArb, { maxLength: 8 }),
  }).map((r) => ({
    service: {
      namespace: 'ns', name, clusterIP: r.vip, sessionAffinity: r.affinity ? 'ClientIP' : 'None', affinityTimeoutSeconds: r.timeout,
      ports: r.ports.map((p) => ({ port: p.port, protocol: p.protocol, targetPort: p.target })),
    } satisfies Service,
    endpoints: r.endpoints,
  }));

/** A world: up to 4 services whose port keys do not collide (the file source rejects collisions). */
const worldArb = fc.array(fc.option(fc.integer({ min: 0, max: 1000 }), { nil: undefined }), { minLength: 4, maxLength: 4 })
  .chain((seeds) => fc.tuple(...seeds.map((s, i) => (s === undefined ? fc.constant(undefined) : svcArb(`s${i}`)))))
  .map((svcs) => {
    const used = new Set<string>();
    return svcs.filter((s): s is NonNullable<typeof s> => {
      if (!s) return false;
      const keys = s.service.ports.map((p) => `${s.service.clusterIP}:${p.port}/${p.protocol}`);
      if (keys.some((k) => used.has(k))) return false;
      keys.forEach((k) => used.add(k));
      return true;
    });
  });

function modelOf(world: { service: Service; endpoints: Endpoint[] }[]): ServiceModel {
  const m = new ServiceModel();
  m.replaceAll(world);
  return m;
}

function run(state: ProgrammedState, sim: Sim, ids: IdAllocator, desired: ReadonlyMap<string, DesiredServicePort>, refs?: Set<string>): MapOp[] {
  const r = diffServices(state, desired, ids, refs);
  r.ops.forEach((op, i) => {
    applyOp(sim, op);
    assertReaderSafe(sim, `after op ${i} (${op.map} ${op.op})`);
  });
  commit(state, r);
  return r.ops;
}

test('applying the diff to the programmed maps yields the desired state, and every step is safe for readers', () => {
  fc.assert(fc.property(fc.array(worldArb, { minLength: 1, maxLength: 5 }), (worlds) => {
    const state = emptyState();
    const sim = newSim();
    const ids = new IdAllocator((id) => state.backends.has(id) || [...state.services.values()].some((s) => s.id === id));
    for (const w of worlds) {
      const desired = modelOf(w).desired();
      run(state, sim, ids, desired);
      assert.deepEqual(decode(sim), expected(desired));
    }
  }), { numRuns: 300 });
});

test('incremental diff of the changed services equals a full diff, and untouched services produce no ops', () => {
  fc.assert(fc.property(worldArb, worldArb, (w1, w2) => {
    const state = emptyState();
    const sim = newSim();
    const ids = new IdAllocator((id) => state.backends.has(id));
    const model = modelOf(w1);
    model.takeChanges();
    run(state, sim, ids, model.desired());
    const before = new Map([...state.services].map(([k, s]) => [k, s.id]));

    model.replaceAll(w2);
    const changed = model.takeChanges();
    const ops = run(state, sim, ids, model.desired(changed), changed);
    assert.deepEqual(decode(sim), expected(model.desired()));

    // Every op touches a service that changed (by id, or a new id).
    const changedIds = new Set([...state.services.values()].filter((s) => changed.has(s.ref)).map((s) => s.id));
    for (const [k, id] of before) {
      const ref = w1.find((x) => x.service.clusterIP === k.split(':')[0] && x.service.ports.some((p) => `${x.service.clusterIP}:${p.port}/${p.protocol}` === k));
      if (ref && changed.has(`ns/${ref.service.name}`)) changedIds.add(id);
    }
    for (const op of ops) {
      const id = 'svcId' in op ? op.svcId : op.map === 'backend' && op.op === 'update' ? op.value.svcId : undefined;
      if (id !== undefined) assert.ok(changedIds.has(id), `op on service ${id}, which did not change`);
    }
    // A second diff of the same content does nothing at all.
    assert.equal(diffServices(state, model.desired(), ids).ops.length, 0);
  }), { numRuns: 300 });
});

/** Every (service address, backend address) pair of one protocol the state holds, as strings. */
function pairs(state: ProgrammedState, protocol: 'TCP' | 'UDP'): Set<string> {
  const out = new Set<string>();
  for (const s of state.services.values()) {
    if (s.protocol !== protocol) continue;
    for (const bid of s.slots) {
      const b = state.backends.get(bid)!;
      out.add(`${s.vip}:${s.port}>${b.ip}:${b.port}`);
    }
  }
  return out;
}

test('departedBackends: exactly the (service, backend) pairs of the protocol that the diff removes, for a full or an incremental diff', () => {
  fc.assert(fc.property(worldArb, worldArb, fc.boolean(), (w1, w2, incremental) => {
    const state = emptyState();
    const ids = new IdAllocator((id) => state.backends.has(id));
    const model = modelOf(w1);
    model.takeChanges();
    commit(state, diffServices(state, model.desired(), ids));
    const before = { UDP: pairs(state, 'UDP'), TCP: pairs(state, 'TCP') };

    model.replaceAll(w2);
    const changed = model.takeChanges();
    const diff = incremental ? diffServices(state, model.desired(changed), ids, changed) : diffServices(state, model.desired(), ids);
    const got = { UDP: departedBackends(state, diff, 'UDP'), TCP: departedBackends(state, diff, 'TCP') };
    commit(state, diff);
    for (const proto of ['UDP', 'TCP'] as const) {
      const after = pairs(state, proto);
      const want = [...before[proto]].filter((x) => !after.has(x)).sort();
      assert.deepEqual(got[proto].map((g) => `${g.vip}:${g.vport}>${g.ip}:${g.port}`).sort(), want, proto);
    }
  }), { numRuns: 300 });
});

test('endpoint shrink leaves no stale slots and keeps surviving backends in place', () => {
  const state = emptyState();
  const sim = newSim();
  const ids = new IdAllocator((id) => state.backends.has(id));
  const svc: Service = { namespace: 'ns', name: 'a', clusterIP: '10.96.0.1', ports: [{ port: 80, protocol: 'TCP', targetPort: 80 }], sessionAffinity: 'None', affinityTimeoutSeconds: 1 };
  const ep = (ip: string): Endpoint => ({ ip, ready: true, serving: true, terminating: false });
  const m = new ServiceModel();
  m.upsertService(svc);
  m.setEndpoints('ns/a', ['10.0.0.1', '10.0.0.2', '10.0.0.3', '10.0.0.4'].map(ep));
  run(state, sim, ids, m.desired());
  const keptId = state.services.get('10.96.0.1:80/TCP')!.slots[0];
  m.setEndpoints('ns/a', ['10.0.0.1', '10.0.0.4'].map(ep));
  const ops = run(state, sim, ids, m.desired());
  assert.equal(state.services.get('10.96.0.1:80/TCP')!.slots[0], keptId, 'a surviving backend keeps its slot and id');
  assert.deepEqual(ops.filter((o) => o.map === 'slot' && o.op === 'delete').map((o) => (o as { slot: number }).slot).sort(), [2, 3]);
  assert.equal(sim.slot.size, 2);
  assert.equal(sim.backend.size, 2);
  // Order: the count shrinks before the slots behind it are deleted.
  const shrink = ops.findIndex((o) => o.map === 'svc');
  const firstDelete = ops.findIndex((o) => o.map === 'slot' && o.op === 'delete');
  assert.ok(shrink >= 0 && shrink < firstDelete);
});

test('backend ids are unique across services even for the same endpoint address', () => {
  const m = new ServiceModel();
  const base = { namespace: 'ns', sessionAffinity: 'None' as const, affinityTimeoutSeconds: 1 };
  m.upsertService({ ...base, name: 'a', clusterIP: '10.96.0.1', ports: [{ port: 53, protocol: 'UDP', targetPort: 53 }, { port: 53, protocol: 'TCP', targetPort: 53 }] });
  m.setEndpoints('ns/a', [{ ip: '10.0.0.1', ready: true, serving: true, terminating: false }]);
  m.upsertService({ ...base, name: 'b', clusterIP: '10.96.0.2', ports: [{ port: 53, protocol: 'UDP', targetPort: 53 }] });
  m.setEndpoints('ns/b', [{ ip: '10.0.0.1', ready: true, serving: true, terminating: false }]);
  const state = emptyState();
  const ids = new IdAllocator((id) => state.backends.has(id));
  const r = diffServices(state, m.desired(), ids);
  commit(state, r);
  assert.equal(state.services.size, 3, 'TCP and UDP on one port are distinct services');
  const all = [...state.services.values()].flatMap((s) => [s.id, ...s.slots]);
  assert.equal(new Set(all).size, all.length, 'no id names two things');
});

test('selectable: ready endpoints, else serving terminating ones, never not-serving', () => {
  const e = (ip: string, ready: boolean, serving: boolean, terminating: boolean): Endpoint => ({ ip, ready, serving, terminating });
  assert.deepEqual(selectable([e('1.1.1.1', true, true, false), e('1.1.1.2', false, true, true)]).map((x) => x.ip), ['1.1.1.1']);
  assert.deepEqual(selectable([e('1.1.1.1', false, false, true), e('1.1.1.2', false, true, true)]).map((x) => x.ip), ['1.1.1.2']);
  assert.deepEqual(selectable([e('1.1.1.1', false, false, false)]), []);
  const svc: Service = { namespace: 'n', name: 's', clusterIP: '10.96.0.1', ports: [{ name: 'dns', port: 53, protocol: 'UDP', targetPort: 'dns' }], sessionAffinity: 'None', affinityTimeoutSeconds: 1 };
  const d = desiredPorts(svc, [{ ...e('1.1.1.1', true, true, false), ports: { dns: 5353 } }, e('1.1.1.2', true, true, false)]);
  assert.deepEqual(d[0]!.backends, ['1.1.1.1:5353'], 'a named target port resolves per endpoint; endpoints without it are skipped');
});

test('IdAllocator skips ids in use after wrapping and never hands out 0', () => {
  const used = new Set([0xffff_ffff, 1, 2]);
  const a = new IdAllocator((id) => used.has(id), 0xffff_fffe);
  assert.equal(a.alloc(), 0xffff_fffe);
  assert.equal(a.alloc(), 3);
});
