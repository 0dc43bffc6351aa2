// Allocator properties on a real store in a temp directory. A model (owner ->
// addresses) written independently of the allocator is checked against every
// result and against the files on disk after every step. The pool each range set
// can hand out is enumerated by brute force here, not taken from the product code.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { allocate, gc, release, addressesOf, IpamExhaustedError, IpamUnavailableError, type Allocation } from '../../src/ipam/allocator.js';
import { IpamConfigError, parseIpamConfig, type IpamConfig } from '../../src/ipam/config.js';
import { IpamStore } from '../../src/ipam/store.js';

const root = mkdtempSync(join(tmpdir(), `patu-ipam-alloc-${process.pid}-`));
after(() => rmSync(root, { recursive: true, force: true }));
let seq = 0;
const freshStore = (): IpamStore => IpamStore.open(root, `net${seq++}`);

// ---------------------------------------------------------------------------
// Generated configs: small ranges so that exhaustion is reached in a short run.

interface Shape {
  start: number; // offsets into 10.77.0.0/27 (v4) and fd00:77::/123 (v6)
  end: number;
  gw: number;
  reserved: number[];
  reservedBlock: boolean; // also reserve 10.77.0.8/30
  v6: boolean;
  v6start: number;
}

const shapeArb: fc.Arbitrary<Shape> = fc.record({
  start: fc.integer({ min: 1, max: 10 }),
  end: fc.integer({ min: 12, max: 30 }),
  gw: fc.integer({ min: 1, max: 30 }),
  reserved: fc.uniqueArray(fc.integer({ min: 1, max: 30 }), { maxLength: 4 }),
  reservedBlock: fc.boolean(),
  v6: fc.boolean(),
  // Often a v6 pool smaller than the v4 one, so that set 1 runs out while set 0
  // still has room: the all-or-nothing rollback is then on the line.
  v6start: fc.oneof(fc.integer({ min: 1, max: 30 }), fc.integer({ min: 24, max: 30 })),
});

const raw = (s: Shape, dataDir: string) => ({
  ranges: [
    [{ subnet: '10.77.0.0/27', rangeStart: `10.77.0.${s.start}`, rangeEnd: `10.77.0.${s.end}`, gateway: `10.77.0.${s.gw}` }],
    ...(s.v6 ? [[{ subnet: 'fd00:77::/123', rangeStart: `fd00:77::${s.v6start.toString(16)}` }]] : []),
  ],
  reserved: [...s.reserved.map((o) => `10.77.0.${o}`), ...(s.reservedBlock ? ['10.77.0.8/30'] : [])],
  dataDir,
});

/** Every address set i may hand out, by brute force over the subnet. */
function pool(s: Shape, setIndex: number): Set<string> {
  const out = new Set<string>();
  if (setIndex === 0) {
    const reserved = new Set(s.reserved);
    for (let o = s.start; o <= s.end; o++) {
      if (o === s.gw || reserved.has(o) || (s.reservedBlock && o >= 8 && o <= 11)) continue;
      out.add(`10.77.0.${o}`);
    }
  } else {
    // Defaults for v6: gateway ::1, rangeEnd = last address of the /123 (offset 31).
    for (let o = s.v6start; o <= 31; o++) if (o !== 1) out.add(`fd00:77::${o.toString(16)}`);
  }
  return out;
}

// ---------------------------------------------------------------------------
// Operations

type Op =
  | { kind: 'alloc'; owner: number }
  | { kind: 'request'; owner: number; offset: number }
  | { kind: 'release'; owner: number }
  | { kind: 'gc'; keep: number[] };

const OWNERS = 24;
const ownerOf = (k: number) => ({ containerId: `ctr-${k >> 1}`, ifname: `eth${k & 1}` });
const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ kind: fc.constant('alloc' as const), owner: fc.integer({ min: 0, max: OWNERS - 1 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('request' as const), owner: fc.integer({ min: 0, max: OWNERS - 1 }), offset: fc.integer({ min: 0, max: 31 }) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('release' as const), owner: fc.integer({ min: 0, max: OWNERS - 1 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('gc' as const), keep: fc.uniqueArray(fc.integer({ min: 0, max: OWNERS - 1 }), { maxLength: OWNERS }) }) },
);

/**
 * What the files on disk say, read without the product code: ip -> "ctr/ifname".
 * Also checks the owner index: after completed calls every record has exactly one
 * marker, named by the hash of its owner, and no marker is left without a record.
 */
function disk(store: IpamStore): Map<string, string> {
  const out = new Map<string, string>();
  const markers: string[] = [];
  for (const name of readdirSync(store.dir)) {
    if (name === 'lock' || name.startsWith('last_reserved_ip.')) continue;
    assert.ok(!name.startsWith('.tmp.'), `temp file ${name} left behind by a completed call`);
    if (name.startsWith('.owner.')) {
      markers.push(name);
      continue;
    }
    const [cid, ifn] = readFileSync(join(store.dir, name), 'utf8').split('\n');
    out.set(name, `${cid}/${ifn}`);
  }
  const expected = [...out].map(([ip, owner]) => {
    const [cid, ifn] = owner.split('/');
    return `.owner.${createHash('sha256').update(`${cid}\n${ifn}`).digest('hex').slice(0, 20)}.${ip}`;
  });
  assert.deepEqual(markers.sort(), expected.sort(), 'owner index markers match the records');
  return out;
}

function run(shape: Shape, ops: Op[]): void {
  const store = freshStore();
  const cfg = parseIpamConfig(raw(shape, root));
  const sets = cfg.rangeSets.length;
  const pools = Array.from({ length: sets }, (_, i) => pool(shape, i));
  const model = new Map<number, string[]>(); // owner -> addresses, one per set, in set order
  const holders = (): Map<string, string> => {
    const m = new Map<string, string>();
    for (const [k, ips] of model) for (const ip of ips) m.set(ip, `${ownerOf(k).containerId}/${ownerOf(k).ifname}`);
    return m;
  };
  const freeIn = (i: number): number => {
    const h = holders();
    return [...pools[i]!].filter((ip) => !h.has(ip)).length;
  };
  const checkAlloc = (k: number, got: Allocation[]) => {
    assert.equal(got.length, sets, 'one address per range set');
    got.forEach((a, i) => {
      assert.equal(a.rangeSetIndex, i);
      assert.ok(pools[i]!.has(a.ip), `${a.ip} is outside set ${i}'s pool (gateway, reserved, network, broadcast or out of range)`);
      assert.equal(a.address, `${a.ip}/${i === 0 ? 27 : 123}`);
      assert.equal(a.gateway, i === 0 ? `10.77.0.${shape.gw}` : 'fd00:77::1');
    });
  };

  try {
    for (const op of ops) {
      const o = ownerOf(op.kind === 'gc' ? 0 : op.owner);
      if (op.kind === 'alloc' || op.kind === 'request') {
        const had = model.get(op.owner);
        const requested = op.kind === 'request' ? `10.77.0.${op.offset}` : undefined;
        const freeBefore = Array.from({ length: sets }, (_, i) => freeIn(i));
        let got: Allocation[] | undefined;
        let error: unknown;
        try {
          got = allocate(cfg, store, o.containerId, o.ifname, requested ? { ips: [requested] } : {});
        } catch (err) {
          error = err;
        }
        if (had) {
          // Idempotent: the same addresses, whatever else happened since.
          if (requested && requested !== had[0]) {
            const inPool = pools[0]!.has(requested);
            assert.ok(error instanceof (inPool ? IpamUnavailableError : IpamConfigError), `asked ${requested} while holding ${had[0]}: ${String(error)}`);
          } else {
            assert.ok(got, `re-ADD failed: ${String(error)}`);
            assert.deepEqual(got.map((a) => a.ip), had);
          }
        } else if (requested) {
          const holder = holders().get(requested);
          if (!pools[0]!.has(requested)) {
            assert.ok(error instanceof IpamConfigError, `requested ${requested} outside the pool: ${String(error)}`);
            assert.equal(error.field, 'runtimeConfig.ips[0]');
          } else if (holder) {
            assert.ok(error instanceof IpamUnavailableError, `requested ${requested} held by ${holder}: ${String(error)}`);
          } else if (sets === 2 && freeBefore[1] === 0) {
            assert.ok(error instanceof IpamExhaustedError && error.rangeSetIndex === 1, String(error));
          } else {
            assert.ok(got, `requested free ${requested}: ${String(error)}`);
            checkAlloc(op.owner, got);
            assert.equal(got[0]!.ip, requested);
            model.set(op.owner, got.map((a) => a.ip));
          }
        } else {
          const exhausted = freeBefore.findIndex((n) => n === 0);
          if (exhausted >= 0) {
            assert.ok(error instanceof IpamExhaustedError, `set ${exhausted} has no free address, expected IpamExhaustedError, got ${String(got?.map((a) => a.ip) ?? error)}`);
            assert.equal(error.rangeSetIndex, exhausted);
          } else {
            assert.ok(got, `pool not exhausted (${freeBefore}) but allocation failed: ${String(error)}`);
            checkAlloc(op.owner, got);
            const h = holders();
            for (const a of got) assert.ok(!h.has(a.ip), `${a.ip} given to ${o.containerId}/${o.ifname} but held by ${h.get(a.ip)}`);
            model.set(op.owner, got.map((a) => a.ip));
          }
        }
      } else if (op.kind === 'release') {
        const gone = release(cfg, store, o.containerId, o.ifname);
        assert.deepEqual(new Set(gone), new Set(model.get(op.owner) ?? []));
        model.delete(op.owner);
      } else {
        const keep = new Set(op.keep);
        const expected = [...model].filter(([k]) => !keep.has(k)).flatMap(([, ips]) => ips);
        const gone = gc(cfg, store, op.keep.map(ownerOf));
        assert.deepEqual(new Set(gone), new Set(expected));
        assert.equal(gone.length, expected.length);
        for (const k of [...model.keys()]) if (!keep.has(k)) model.delete(k);
      }
      // The disk agrees with the model after every step: nothing leaked, nothing lost.
      assert.deepEqual(disk(store), holders());
    }
  } finally {
    store.close();
    rmSync(store.dir, { recursive: true, force: true });
  }
}

test('any sequence of allocate/request/release/gc keeps addresses unique, in range and consistent on disk', () => {
  fc.assert(fc.property(shapeArb, fc.array(opArb, { minLength: 1, maxLength: 50 }), run), { numRuns: 60 });
});

test('exhaustion happens exactly at the pool size, and release makes room again', () => {
  fc.assert(
    fc.property(shapeArb, (shape) => {
      const store = freshStore();
      try {
        const cfg = parseIpamConfig(raw(shape, root));
        const size = Math.min(...cfg.rangeSets.map((_, i) => pool(shape, i).size));
        const got = new Set<string>();
        for (let k = 0; k < size; k++) {
          const [a] = allocate(cfg, store, `c${k}`, 'eth0');
          got.add(a!.ip);
        }
        assert.equal(got.size, size);
        assert.throws(() => allocate(cfg, store, 'one-too-many', 'eth0'), IpamExhaustedError);
        // A shape whose reserved block and gateway leave no address at all: nothing to release.
        if (size === 0) return;
        assert.deepEqual(release(cfg, store, 'c0', 'eth0').length, cfg.rangeSets.length);
        assert.doesNotThrow(() => allocate(cfg, store, 'one-too-many', 'eth0'));
      } finally {
        store.close();
        rmSync(store.dir, { recursive: true, force: true });
      }
    }),
    { numRuns: 40, ...(process.env.FC_SEED ? { seed: Number(process.env.FC_SEED), path: process.env.FC_PATH } : {}) },
  );
});

test('round robin: a released address is not handed out again until the range wraps', () => {
  const store = freshStore();
  const cfg = parseIpamConfig({ ranges: [[{ subnet: '10.78.0.0/29' }]], dataDir: root }); // .2-.6 usable
  const ip = (id: string) => allocate(cfg, store, id, 'eth0')[0]!.ip;
  assert.equal(ip('a'), '10.78.0.2');
  assert.equal(ip('b'), '10.78.0.3');
  release(cfg, store, 'a', 'eth0');
  assert.equal(ip('c'), '10.78.0.4', 'continues after the last reserved, not at the freed .2');
  assert.equal(ip('d'), '10.78.0.5');
  assert.equal(ip('e'), '10.78.0.6');
  assert.equal(ip('f'), '10.78.0.2', 'wraps to the start, skipping the gateway');
  assert.equal(readFileSync(join(store.dir, 'last_reserved_ip.0'), 'utf8'), '10.78.0.2');
  // A garbled cursor is only a hint: allocation still works.
  writeFileSync(join(store.dir, 'last_reserved_ip.0'), 'garbage');
  release(cfg, store, 'c', 'eth0');
  assert.equal(ip('g'), '10.78.0.4');
  store.close();
});

test('the round-robin cursor is rewritten in place, exactly the address (host-local format), also when it gets shorter', () => {
  const store = freshStore();
  const file = join(store.dir, 'last_reserved_ip.1');
  assert.equal(store.lastReserved(1), undefined);
  store.setLastReserved(1, 'fd00:77::1234:5678');
  const ino = statSync(file).ino;
  store.setLastReserved(1, '10.1.0.100');
  store.setLastReserved(1, '10.1.0.9');
  assert.equal(readFileSync(file, 'utf8'), '10.1.0.9');
  assert.equal(store.lastReserved(1), '10.1.0.9');
  assert.equal(statSync(file).ino, ino, 'same file: no temp file renamed over it');
  assert.deepEqual(readdirSync(store.dir).filter((n) => n.startsWith('.tmp')), []);
  store.close();
});

test('requested addresses: honoured, or the whole call fails and reserves nothing (dual stack)', () => {
  const store = freshStore();
  const cfg: IpamConfig = parseIpamConfig({
    ranges: [[{ subnet: '10.79.0.0/24' }], [{ subnet: 'fd00:79::/64' }]],
    reserved: ['10.79.0.9'],
    dataDir: root,
  });
  const got = allocate(cfg, store, 'p1', 'eth0', { ips: ['10.79.0.50/24', 'fd00:79::50'] });
  assert.deepEqual(got.map((a) => a.address), ['10.79.0.50/24', 'fd00:79::50/64']);
  assert.deepEqual(addressesOf(store, 'p1', 'eth0').sort(), ['10.79.0.50', 'fd00:79::50']);
  assert.throws(() => allocate(cfg, store, 'p2', 'eth0', { ips: ['10.79.0.50'] }), /10\.79\.0\.50 is already held by p1\/eth0/);
  assert.throws(() => allocate(cfg, store, 'p2', 'eth0', { ips: ['10.79.0.1'] }), /gateway/);
  assert.throws(() => allocate(cfg, store, 'p2', 'eth0', { ips: ['10.79.0.9'] }), /reserved/);
  assert.throws(() => allocate(cfg, store, 'p2', 'eth0', { ips: ['10.80.0.9'] }), /not inside any configured range/);
  assert.throws(() => allocate(cfg, store, 'p2', 'eth0', { ips: ['10.79.0.7', '10.79.0.8'] }), /same range set/);
  // v4 request is fine but the v6 one is taken: nothing of p2's may remain.
  assert.throws(() => allocate(cfg, store, 'p2', 'eth0', { ips: ['10.79.0.60', 'fd00:79::50'] }), IpamUnavailableError);
  assert.deepEqual(addressesOf(store, 'p2', 'eth0'), []);
  assert.deepEqual(readdirSync(store.dir).filter((n) => /^[0-9a-f]/.test(n)).sort(), ['10.79.0.50', 'fd00:79::50']);
  store.close();
});

test('gc releases records that name no owner (unreadable) and never touches valid owners', () => {
  const store = freshStore();
  const cfg = parseIpamConfig({ ranges: [[{ subnet: '10.81.0.0/24' }]], dataDir: root });
  allocate(cfg, store, 'keep', 'eth0');
  allocate(cfg, store, 'drop', 'eth0');
  writeFileSync(join(store.dir, '10.81.0.200'), ''); // e.g. left by an old writer
  writeFileSync(join(store.dir, 'README'), 'not an address'); // foreign files are ignored
  // The empty record still holds its address until GC.
  const before = allocate(cfg, store, 'x', 'eth0')[0]!.ip;
  assert.notEqual(before, '10.81.0.200');
  assert.deepEqual(gc(cfg, store, [{ containerId: 'keep', ifname: 'eth0' }, { containerId: 'x', ifname: 'eth0' }]).sort(), ['10.81.0.200', '10.81.0.3']);
  assert.deepEqual(addressesOf(store, 'keep', 'eth0'), ['10.81.0.2']);
  assert.ok(readdirSync(store.dir).includes('README'));
  store.close();
});

test('bad owners are rejected before anything is written', () => {
  const store = freshStore();
  const cfg = parseIpamConfig({ ranges: [[{ subnet: '10.82.0.0/24' }]], dataDir: root });
  assert.throws(() => allocate(cfg, store, '', 'eth0'), (e: unknown) => (e as IpamConfigError).field === 'CNI_CONTAINERID');
  assert.throws(() => allocate(cfg, store, 'a\nb', 'eth0'), (e: unknown) => (e as IpamConfigError).field === 'CNI_CONTAINERID');
  assert.throws(() => allocate(cfg, store, ' a', 'eth0'), (e: unknown) => (e as IpamConfigError).field === 'CNI_CONTAINERID');
  assert.throws(() => allocate(cfg, store, 'a', ''), (e: unknown) => (e as IpamConfigError).field === 'CNI_IFNAME');
  assert.deepEqual(readdirSync(store.dir).filter((n) => n !== 'lock'), []);
  store.close();
});
