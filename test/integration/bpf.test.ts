// Integration tests for src/kernel/bpf (needs root: loads programs into the kernel).
// Creates only: pins under /sys/fs/bpf/patu-test-bpf-<pid>/, the cgroup
// patu-test-bpf-<pid> under the cgroup2 root, and two netns patu-test-bpf-<pid>-a/b
// joined by a veth pair (for tcx and XDP links); all removed after the file, also
// when a test fails (test/helpers/kernel.ts).
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { BpfObject, BpfLink, XDP_FLAGS } from '../../src/kernel/bpf/object.js';
import { TypedMap, structCodec, u8, u32, u64, ipv4, bytes, type Codec } from '../../src/kernel/bpf/map.js';
import { BpfError, BpfMapSizeError } from '../../src/kernel/bpf/errors.js';
import { ensurePinDir, listPins, removePins } from '../../src/kernel/bpf/pins.js';
import { listPrograms, listMaps, listLinks, patuPrograms } from '../../src/kernel/bpf/introspect.js';
import { withNetns } from '../../src/kernel/netns.js';
import { scratchForTests, netnsPath } from '../helpers/kernel.js';

const isRoot = process.getuid?.() === 0;
const skip = isRoot ? false : 'needs root (loads BPF programs, pins on bpffs, attaches to a cgroup and a veth)';
const OBJ = fileURLToPath(new URL('../../../build/test/bpf/test_maps.o', import.meta.url));
const scratch = scratchForTests('patu-test-bpf');
const PIN_ROOT = scratch.pinRoot();
let CGROUP = '';
// veth va (10.254.7.1, in NS_A) <-> veth vb (10.254.7.2, in NS_B); programs attach to va.
let NS_A = '';
let NS_B = '';
const IP_A = '10.254.7.1';

interface TestVal { bytes: bigint; packets: number; flags: number }
const testVal: Codec<TestVal> = structCodec<TestVal>({ bytes: u64, packets: u32, flags: u8 });

let obj: BpfObject | undefined;

before(() => {
  if (!isRoot) return;
  assert.ok(existsSync(OBJ), `${OBJ} missing: run scripts/build.sh first`);
  ensurePinDir(PIN_ROOT);
  CGROUP = scratch.cgroup();
  // Deleting the namespaces deletes the veth pair and whatever is attached to it.
  NS_A = scratch.netns(scratch.name('a'));
  NS_B = scratch.netns(scratch.name('b'));
  sh(`ip -n ${NS_A} link add name va type veth peer name vb netns ${NS_B}`);
  sh(`ip -n ${NS_A} addr add ${IP_A}/30 dev va && ip -n ${NS_A} link set va up`);
  sh(`ip -n ${NS_B} addr add 10.254.7.2/30 dev vb && ip -n ${NS_B} link set vb up`);
  obj = BpfObject.open(OBJ, { pinRoot: PIN_ROOT });
  scratch.defer('test object', () => obj?.close());
  obj.load();
});

function sh(cmd: string): string {
  const r = spawnSync('sh', ['-c', cmd], { encoding: 'utf8', timeout: 10_000 });
  assert.equal(r.status, 0, `${cmd}: ${r.stderr}`);
  return r.stdout;
}

test('structCodec lays fields out like C (natural alignment, tail padding)', () => {
  assert.equal(testVal.size, 16);
  const b = Buffer.alloc(16, 0xff);
  testVal.encode({ bytes: 1n << 40n, packets: 7, flags: 3 }, b, 0);
  assert.equal(b.readBigUInt64LE(0), 1n << 40n);
  assert.equal(b.readUInt32LE(8), 7);
  assert.equal(b[12], 3);
  assert.deepEqual([...b.subarray(13)], [0, 0, 0], 'padding must be zeroed for bytewise hash keys');
  const ip = Buffer.alloc(4);
  ipv4.encode('10.244.1.7', ip, 0);
  assert.deepEqual([...ip], [10, 244, 1, 7]);
  assert.throws(() => ipv4.encode('10.244.1', ip, 0), /invalid IPv4/);
  assert.throws(() => ipv4.encode('10.244.1.256', ip, 0), /invalid IPv4/);
});

test('load exposes programs and maps by name', { skip }, () => {
  assert.ok(obj);
  assert.deepEqual(obj.programs().map((p) => p.name).sort(),
    ['patu_test_bad', 'patu_test_egress', 'patu_test_tcx_eg', 'patu_test_tcx_in', 'patu_test_xdp']);
  assert.ok(obj.program('patu_test_egress').fd > 0);
  assert.ok(obj.program('patu_test_bad').fd < 0, 'autoload-disabled program must not be loaded');
  const names = obj.maps().map((m) => m.name);
  for (const n of ['patu_test_hash', 'patu_test_counters', 'patu_test_pairs', 'patu_test_pinned']) assert.ok(names.includes(n), n);
  assert.throws(() => obj!.program('nope'), (e: unknown) => e instanceof BpfError && /nope/.test(e.message) && e.code === 'ENOENT');
});

test('typed hash map round trip, batch update/delete, iteration, clear', { skip }, () => {
  const m = obj!.map('patu_test_hash').typed(u32, testVal);
  assert.equal(m.info.type, 'hash');
  assert.equal(m.info.maxEntries, 1024);
  assert.equal(m.lookup(1), undefined);
  m.update(1, { bytes: 123n, packets: 4, flags: 1 });
  assert.deepEqual(m.lookup(1), { bytes: 123n, packets: 4, flags: 1 });
  assert.throws(() => m.update(1, { bytes: 0n, packets: 0, flags: 0 }, 'noexist'), (e: unknown) => e instanceof BpfError && e.code === 'EEXIST');
  assert.throws(() => m.update(2, { bytes: 0n, packets: 0, flags: 0 }, 'exist'), (e: unknown) => e instanceof BpfError && e.code === 'ENOENT');
  assert.equal(m.delete(1), true);
  assert.equal(m.delete(1), false);

  const entries: [number, TestVal][] = Array.from({ length: 500 }, (_, i) => [i + 100, { bytes: BigInt(i) * 1000n, packets: i, flags: i & 0xff }]);
  m.batchUpdate(entries);
  const seen = new Map(m.entries());
  assert.equal(seen.size, 500);
  for (const [k, v] of entries) assert.deepEqual(seen.get(k), v);
  assert.equal([...m.keys()].length, 500);

  // Includes keys that do not exist: they must not abort the batch.
  const removed = m.batchDelete([100, 101, 102, 99999, 103]);
  assert.equal(removed, 4);
  assert.equal(m.lookup(101), undefined);
  assert.deepEqual(m.lookup(104), entries[4]![1]);
  m.clear();
  assert.equal([...m.keys()].length, 0);
});

test('array map: lookup of every slot, clear zeroes', { skip }, () => {
  const a = obj!.map('patu_test_counters').typed(u32, u64);
  a.batchUpdate([[1, 11n], [2, 22n]]);
  assert.equal(a.lookup(2), 22n);
  assert.equal([...a.keys()].length, 4);
  a.clear();
  assert.deepEqual([...a.entries()].map(([, v]) => v), [0n, 0n, 0n, 0n]);
  assert.throws(() => a.update(4, 1n), (e: unknown) => e instanceof BpfError && e.code === 'E2BIG' && /patu_test_count/.test(e.message));
});

test('codec size mismatch names the map and both sizes', { skip }, () => {
  const fd = obj!.map('patu_test_hash').fd;
  assert.throws(() => TypedMap.fromFd(fd, u32, u64), (e: unknown) =>
    e instanceof BpfMapSizeError && e.map === 'patu_test_hash' && e.codecSize === 8 && e.mapSize === 16 &&
    /patu_test_hash.*value.*8 bytes.*16/.test(e.message));
  assert.throws(() => TypedMap.fromFd(fd, bytes(8), testVal), (e: unknown) =>
    e instanceof BpfMapSizeError && e.field === 'key' && e.codecSize === 8 && e.mapSize === 4);
});

test('a program the verifier rejects fails with errno, program name and the verifier log', { skip }, () => {
  const bad = BpfObject.open(OBJ);
  try {
    bad.program('patu_test_bad').setAutoload(true);
    let caught: unknown;
    try {
      bad.load();
    } catch (e) {
      caught = e;
    }
    assert.ok(caught instanceof BpfError, `expected BpfError, got ${String(caught)}`);
    assert.equal(caught.code, 'EACCES');
    assert.equal(caught.program, 'patu_test_bad');
    assert.match(caught.log, /map_value_or_null/, 'full verifier log on .log');
    assert.match(caught.message, /bpf_object__load.*patu_test_bad/);
    assert.match(caught.message, /invalid mem access 'map_value_or_null'/, 'verifier tail in the message');
    assert.ok(caught.message.length < caught.log.length + 400);
  } finally {
    bad.close();
  }
});

test('pin/unpin maps and programs; LIBBPF_PIN_BY_NAME maps are reused by the next load', { skip }, () => {
  const pinned = `${PIN_ROOT}/patu_test_pinned`;
  assert.ok(existsSync(pinned), 'pin-by-name map pinned under the object pin root');
  const first = obj!.map('patu_test_pinned').typed(u32, u32);
  first.update(7, 70);

  const again = BpfObject.open(OBJ, { pinRoot: PIN_ROOT });
  try {
    again.load();
    const second = again.map('patu_test_pinned').typed(u32, u32);
    assert.equal(second.info.id, first.info.id, 'same kernel map reused');
    assert.equal(second.lookup(7), 70);
    assert.notEqual(again.map('patu_test_hash').info().id, obj!.map('patu_test_hash').info().id, 'unpinned maps are fresh');
  } finally {
    again.close();
  }

  obj!.map('patu_test_hash').pin(`${PIN_ROOT}/hash`);
  obj!.program('patu_test_egress').pin(`${PIN_ROOT}/prog_egress`);
  const viaPin = TypedMap.fromPin(`${PIN_ROOT}/hash`, u32, testVal);
  try {
    obj!.map('patu_test_hash').typed(u32, testVal).update(5, { bytes: 5n, packets: 5, flags: 5 });
    assert.deepEqual(viaPin.lookup(5), { bytes: 5n, packets: 5, flags: 5 });
    viaPin.delete(5);
  } finally {
    viaPin.close();
  }
  assert.deepEqual(listPins(PIN_ROOT), [`${PIN_ROOT}/hash`, pinned, `${PIN_ROOT}/prog_egress`].sort());
  assert.throws(() => TypedMap.fromPin(`${PIN_ROOT}/missing`, u32, u32), (e: unknown) => e instanceof BpfError && e.code === 'ENOENT' && /missing/.test(e.message));
  assert.throws(() => removePins('/sys/fs/bpf'), /below \/sys\/fs\/bpf/);
  assert.throws(() => removePins('/sys/fs/bpf/../bpf'), /below/);

  const sub = `${PIN_ROOT}/sub`;
  ensurePinDir(sub);
  obj!.map('patu_test_counters').pin(`${sub}/counters`);
  removePins(sub);
  assert.equal(existsSync(sub), false);
  assert.ok(existsSync(pinned), 'removePins(sub) touched only sub');
});

/** Sends `n` UDP datagrams on loopback from a process placed in the test cgroup. */
function trafficFromCgroup(n: number): void {
  const script = `const s=require('dgram').createSocket('udp4');let i=0;const go=()=>{if(i++>=${n})return s.close();s.send('x',9,'127.0.0.1',go)};go();`;
  const r = spawnSync('sh', ['-c', `echo $$ > ${CGROUP}/cgroup.procs && exec "${process.execPath}" -e "${script}"`], { encoding: 'utf8', timeout: 10_000 });
  assert.equal(r.status, 0, `traffic helper failed: ${r.stderr}`);
}

test('attach to a cgroup2 sub-cgroup, pin the link, reopen it, destroy detaches', { skip }, () => {
  const counters = obj!.map('patu_test_counters').typed(u32, u64);
  counters.clear();
  trafficFromCgroup(5);
  assert.equal(counters.lookup(0), 0n, 'nothing counted before attach');

  const link = obj!.program('patu_test_egress').attachCgroup(CGROUP);
  trafficFromCgroup(5);
  const afterAttach = counters.lookup(0) ?? 0n;
  assert.ok(afterAttach >= 5n, `expected >= 5 egress packets counted, got ${afterAttach}`);

  link.pin(`${PIN_ROOT}/link_egress`);
  const info = link.info();
  assert.equal(info.type, 'cgroup');
  assert.ok(listLinks().some((l) => l.id === info.id), 'link visible to introspection');
  link.close(); // pinned: stays attached without our fd
  trafficFromCgroup(2);
  assert.ok((counters.lookup(0) ?? 0n) >= afterAttach + 2n, 'pinned link keeps the program attached');

  const reopened = BpfLink.fromPin(`${PIN_ROOT}/link_egress`);
  assert.equal(reopened.info().id, info.id);
  reopened.destroy();
  assert.equal(existsSync(`${PIN_ROOT}/link_egress`), false, 'destroy unpins');
  const settled = counters.lookup(0) ?? 0n;
  trafficFromCgroup(5);
  assert.equal(counters.lookup(0), settled, 'no counting after destroy');
});

test('introspection lists loaded programs (15-char names) and maps by id', { skip }, () => {
  const progs = patuPrograms();
  const mine = progs.find((p) => p.name === 'patu_test_egres');
  assert.ok(mine, `patu_test_egress (kernel keeps 15 chars) not found among ${progs.map((p) => p.name).join(',')}`);
  assert.equal(mine.type, 'cgroup_skb');
  assert.ok(listPrograms().length >= progs.length);
  const hashId = obj!.map('patu_test_hash').info().id;
  assert.ok(listMaps().some((m) => m.id === hashId && m.name === 'patu_test_hash' && m.keySize === 4 && m.valueSize === 16));
});

/** Pings veth va from NS_B: n echo requests arrive on its ingress, n replies leave by its egress. */
function pingA(n: number): void {
  sh(`ip netns exec ${NS_B} busybox ping -q -c ${n} -i 0.05 -W 1 ${IP_A}`);
}

const ifindexOfA = (): number => Number(sh(`ip netns exec ${NS_A} cat /sys/class/net/va/ifindex`).trim());

test('attachTcx: ingress and egress links on a veth count its packets; destroy detaches both', { skip }, () => {
  const counters = obj!.map('patu_test_counters').typed(u32, u64);
  counters.clear();
  const ifindex = ifindexOfA();
  // The ifindex means something only in NS_A: attach from a thread switched there.
  const [ing, eg] = withNetns(netnsPath(NS_A), () => [
    obj!.program('patu_test_tcx_in').attachTcx(ifindex, 'ingress'),
    obj!.program('patu_test_tcx_eg').attachTcx(ifindex, 'egress'),
  ]);
  const ids = [ing!.info().id, eg!.info().id];
  try {
    const infos = [ing!.info(), eg!.info()];
    for (const info of infos) {
      assert.equal(info.type, 'tcx');
      assert.equal(info.ifindex, ifindex);
      assert.ok(listLinks().some((l) => l.id === info.id), 'tcx link visible to introspection');
    }
    assert.deepEqual(infos.map((i) => i.attachType), [46, 47], 'BPF_TCX_INGRESS, BPF_TCX_EGRESS');
    pingA(3);
    assert.ok((counters.lookup(1) ?? 0n) >= 3n, `ingress counted ${counters.lookup(1)}`);
    assert.ok((counters.lookup(2) ?? 0n) >= 3n, `egress counted ${counters.lookup(2)}`);
  } finally {
    ing!.destroy();
    eg!.destroy();
  }
  assert.deepEqual(listLinks().filter((l) => ids.includes(l.id)), [], 'both tcx links gone');
  const before = [counters.lookup(1), counters.lookup(2)];
  pingA(2);
  assert.deepEqual([counters.lookup(1), counters.lookup(2)], before, 'nothing counted after destroy');
});

test('attachXdp: an XDP link on a veth sees its ingress packets; destroy detaches it', { skip }, () => {
  const counters = obj!.map('patu_test_counters').typed(u32, u64);
  counters.clear();
  const ifindex = ifindexOfA();
  const link = withNetns(netnsPath(NS_A), () => obj!.program('patu_test_xdp').attachXdp(ifindex, XDP_FLAGS.SKB_MODE));
  let id: number;
  try {
    const info = link.info();
    id = info.id;
    assert.equal(info.type, 'xdp');
    assert.equal(info.ifindex, ifindex);
    assert.match(sh(`ip -n ${NS_A} -d link show dev va`), /xdpgeneric/, 'the kernel reports generic XDP on the device');
    pingA(3);
    assert.ok((counters.lookup(3) ?? 0n) >= 3n, `xdp counted ${counters.lookup(3)}`);
  } finally {
    link.destroy();
  }
  assert.ok(!listLinks().some((l) => l.id === id), 'xdp link gone');
  assert.doesNotMatch(sh(`ip -n ${NS_A} -d link show dev va`), /xdp/, 'no XDP program left on the device');
  const settled = counters.lookup(3);
  pingA(2);
  assert.equal(counters.lookup(3), settled, 'nothing counted after destroy');
});
