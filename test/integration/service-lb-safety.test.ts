// ServiceLb refuses what would leave the data plane wrong, against the real
// kernel (needs root): applies beyond a map's capacity, pin directories that
// someone else made or can write, and map pins removed or replaced under the
// attached programs.
// Creates only (test/helpers/kernel.ts, removed after the file even when a test
// fails): pin roots /sys/fs/bpf/patu-test-svcsafe-<pid>-*, and the cgroup
// patu-test-svcsafe-<pid> that the programs attach to.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readdirSync, renameSync, statSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { ServiceLb } from '../../src/dataplane/service-lb.js';
import { BpfLink } from '../../src/kernel/bpf/object.js';
import { mapInfoById, progMapIds } from '../../src/kernel/bpf/introspect.js';
import { pinnedMapId } from '../../src/kernel/bpf/map.js';
import type { DesiredServicePort } from '../../src/services/model.js';
import { scratchForTests } from '../helpers/kernel.js';

const isRoot = process.getuid?.() === 0;
const skip = isRoot ? false : 'needs root (BPF maps and programs, pins on bpffs, a cgroup)';
const scratch = scratchForTests('patu-test-svcsafe');
let CG = '';

before(() => {
  if (!isRoot) return;
  CG = scratch.cgroup();
});

/** `n` service ports 10.96.x.y:80, each with `backends` backends 10.77.x.y:8080.. (distinct per port). */
function desiredPorts(n: number, backends: number, first = 0): Map<string, DesiredServicePort> {
  const out = new Map<string, DesiredServicePort>();
  for (let i = first; i < first + n; i++) {
    const vip = `10.${96 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`;
    const key = `${vip}:80/TCP`;
    const bs: string[] = [];
    for (let b = 0; b < backends; b++) bs.push(`10.${77 + (b >> 16)}.${(b >> 8) & 255}.${b & 255}:${8080 + (i % 1000)}`);
    out.set(key, {
      key, ref: `cap/s${i}`, vip, port: 80, protocol: 'TCP', name: `cap/s${i}:80`,
      affinity: false, affinityTimeoutSeconds: 0, backends: bs.sort(),
    });
  }
  return out;
}

/** Entries in each map, read from the kernel (what an interrupted apply would leave behind). */
function entries(lb: ServiceLb): Record<string, number> {
  const count = (m: { keys(): Iterable<unknown> }): number => {
    let n = 0;
    for (const _ of m.keys()) n++;
    return n;
  };
  return { svc: count(lb.maps.svc), slot: count(lb.maps.slot), backend: count(lb.maps.backend), meta: count(lb.maps.meta) };
}

test('an apply beyond a map capacity is refused before the first write, naming the map and its limit, and changes nothing', { skip }, () => {
  const pinRoot = scratch.pinRoot('cap');
  const lb = ServiceLb.open({ pinRoot, cgroupPath: CG });
  scratch.defer('capacity LB', () => {
    lb.detach();
    lb.close();
  });
  // What was programmed before: it must stay as it was, and stay attached.
  const small = desiredPorts(3, 2);
  assert.equal(lb.resync(small).attachedNow, true);
  const before = { programmed: lb.programmed(), entries: entries(lb) };
  assert.deepEqual(before.entries, { svc: 3, slot: 6, backend: 6, meta: 3 });

  // 65,537 service ports: one more than patu_svc holds.
  const tooManyPorts = new Map([...small, ...desiredPorts(65_537 - 3, 1, 3)]);
  assert.equal(tooManyPorts.size, 65_537);
  assert.throws(() => lb.resync(tooManyPorts), (e: Error & { code?: string }) =>
    e.code === 'ECAPACITY' && /65,537 entries in patu_svc, which holds at most 65,536; nothing was changed/.test(e.message), 'refused with the limit named');
  assert.deepEqual(entries(lb), before.entries, 'no entry written for the refused apply');
  assert.deepEqual(lb.programmed(), before.programmed);

  // 300,000 backends (3 services of 100,000): more than patu_backend's 262,144.
  const tooManyBackends = desiredPorts(3, 100_000, 10);
  assert.throws(() => lb.resync(tooManyBackends), (e: Error & { code?: string }) =>
    e.code === 'ECAPACITY' && /too many backends: 300,000 entries in patu_backend, which holds at most 262,144/.test(e.message));
  assert.deepEqual(entries(lb), before.entries);

  // A resync that fits afterwards but not while the old ports are replaced
  // (the phases add before they remove): 32,769 ports, then 32,769 others.
  const half = desiredPorts(32_769, 1, 100);
  lb.resync(half);
  const otherHalf = desiredPorts(32_769, 1, 40_000);
  assert.throws(() => lb.resync(otherHalf), (e: Error & { code?: string }) =>
    e.code === 'ECAPACITY' && /at once while old entries are replaced .*: 65,538 entries in patu_svc/.test(e.message));
  assert.deepEqual(entries(lb), { svc: 32_769, slot: 32_769, backend: 32_769, meta: 32_769 }, 'the refused swap wrote nothing');

  // The diff base still matches the maps: a later apply that fits works, and a
  // fresh open from the pins (which repairs orphans) finds nothing to remove.
  lb.resync(small);
  const addrs = (l: ServiceLb): string[] => l.programmed().map((v) => `${v.name} ${v.backends.map((x) => `${x.ip}:${x.port}`).join(',')}`);
  assert.deepEqual(addrs(lb), before.programmed.map((v) => `${v.name} ${v.backends.map((x) => `${x.ip}:${x.port}`).join(',')}`));
  const again = ServiceLb.open({ pinRoot });
  try {
    assert.deepEqual(entries(again), before.entries);
    assert.equal(again.resync(small).ops, 0);
  } finally {
    again.close();
  }
});

test('a write the kernel refuses half way leaves nothing unreachable behind, and the next apply works', { skip }, () => {
  const pinRoot = scratch.pinRoot('fail');
  const lb = ServiceLb.open({ pinRoot });
  scratch.defer('half-way LB', () => lb.close());
  lb.resync(desiredPorts(2, 2));
  // Something else fills patu_backend to the brim with entries no slot names, so
  // the kernel refuses the next apply's first batch part way (E2BIG).
  const free = lb.maps.backend.info.maxEntries - entries(lb).backend!;
  lb.maps.backend.batchUpdate(Array.from({ length: free - 1 }, (_, i) => [10_000_000 + i, { ip: '10.9.9.9', port: 1, pad: 0, svcId: 0 }] as const));
  assert.throws(() => lb.resync(desiredPorts(3, 2)), (e: Error & { code?: string }) => e.code === 'E2BIG' && /patu_backend/.test(e.message));
  // What no service can reach is gone: the filler and the part of the batch that got in.
  assert.deepEqual(entries(lb), { svc: 2, slot: 4, backend: 4, meta: 2 });
  assert.deepEqual(lb.resync(desiredPorts(3, 2)).services, 1);
  assert.deepEqual(lb.programmed().map((v) => `${v.name} ${v.backends.length}`), ['cap/s0:80 2', 'cap/s1:80 2', 'cap/s2:80 2']);
  assert.deepEqual(entries(lb), { svc: 3, slot: 6, backend: 6, meta: 3 });
});

/** Runs argv as nobody (uid/gid 65534, no groups): what any local user can do. */
function asNobody(argv: string[]): { status: number | null; stderr: string } {
  const r = spawnSync('setpriv', ['--reuid', '65534', '--regid', '65534', '--clear-groups', '--', ...argv], { encoding: 'utf8', timeout: 10_000 });
  return { status: r.status, stderr: r.stderr };
}

const modeOf = (p: string): number => statSync(p).mode & 0o7777;

test('pin directories: patu makes its own 0700, and refuses one a local user made or can write (bpffs is 1777)', { skip }, () => {
  assert.equal(modeOf('/sys/fs/bpf') & 0o002, 0o002, 'bpffs is world-writable here: anyone can make a directory in it');

  // Made by patu: root-owned 0700, the links directory too.
  const own = scratch.pinRoot('own');
  const lb = ServiceLb.open({ pinRoot: own, cgroupPath: CG });
  try {
    lb.resync(desiredPorts(1, 1));
    for (const d of [own, join(own, 'links')]) {
      assert.equal(statSync(d).uid, 0, d);
      assert.equal(modeOf(d), 0o700, `${d} is ${modeOf(d).toString(8)}`);
    }
    // So a local user can neither list nor remove the pins in it.
    const rm = asNobody(['rm', '-f', join(own, 'patu_svc')]);
    assert.notEqual(rm.status, 0);
    assert.match(rm.stderr, /Permission denied/);
    assert.ok(existsSync(join(own, 'patu_svc')));
  } finally {
    lb.detach();
    lb.close();
  }

  // Made by a local user before patu ran: refused, and nothing is pinned there.
  const planted = scratch.pinRoot('planted');
  const mk = asNobody(['mkdir', '-m', '0700', planted]);
  assert.equal(mk.status, 0, mk.stderr);
  assert.throws(() => ServiceLb.open({ pinRoot: planted, cgroupPath: CG }), (e: Error) =>
    e.message.includes(planted) && /owned by uid 65534, not root/.test(e.message));
  assert.deepEqual(readdirSync(planted), []);

  // Root's, but writable by others: refused too (anyone could swap pins in it).
  const open = scratch.pinRoot('open');
  mkdirSync(open);
  chmodSync(open, 0o1777);
  assert.throws(() => ServiceLb.open({ pinRoot: open }), (e: Error) => e.message.includes(open) && /writable by group or others \(mode 1777\)/.test(e.message));
  assert.deepEqual(readdirSync(open), []);

  // A nested pin root is checked all the way down from bpffs.
  const parent = scratch.pinRoot('parent');
  assert.equal(asNobody(['mkdir', parent]).status, 0);
  assert.throws(() => ServiceLb.open({ pinRoot: join(parent, 'patu') }), (e: Error) => e.message.includes(parent) && /owned by uid 65534/.test(e.message));
  assert.equal(existsSync(join(parent, 'patu')), false);

  // Root's 0755, as an older patu made it: nobody else can write it; tightened to 0700.
  const older = scratch.pinRoot('older');
  mkdirSync(older, { mode: 0o755 });
  const l2 = ServiceLb.open({ pinRoot: older });
  l2.close();
  assert.equal(modeOf(older), 0o700);
});

/** Ids of the sock_lb maps the attached programs use, by map name (through the pinned links). */
function attachedMapIds(pinRoot: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const prog of ['patu_connect4', 'patu_recvmsg4']) {
    const link = BpfLink.fromPin(join(pinRoot, 'links', prog));
    try {
      for (const id of progMapIds(link.info().progId)) out[mapInfoById(id).name] = id;
    } finally {
      link.close();
    }
  }
  return out;
}

const SVC_MAPS = ['patu_svc', 'patu_svc_slot', 'patu_backend', 'patu_revnat', 'patu_sock_nat', 'patu_affinity', 'patu_node_addr', 'patu_lb_cfg'];

/** Ids of the maps pinned under pinRoot, by name (absent: no pin). */
function pinnedMapIds(pinRoot: string): Record<string, number | undefined> {
  return Object.fromEntries(SVC_MAPS.map((n) => [n, pinnedMapId(join(pinRoot, n))]));
}

/** Programs the same services through a fresh open, as a later `patu services apply` does. */
function laterApply(pinRoot: string, desired: Map<string, DesiredServicePort>): { repairs: readonly string[]; programmed: string[] } {
  const lb = ServiceLb.open({ pinRoot, cgroupPath: CG });
  try {
    lb.resync(desired);
    return { repairs: lb.repairs, programmed: lb.programmed().map((v) => v.name) };
  } finally {
    lb.close();
  }
}

/** Attaches the service programs under pinRoot with two services programmed; detached at cleanup. */
function attachedWithTwoServices(pinRoot: string, label: string): void {
  const first = ServiceLb.open({ pinRoot, cgroupPath: CG });
  scratch.defer(`${label} LB`, () => {
    const l = ServiceLb.open({ pinRoot });
    try {
      l.detach();
    } finally {
      l.close();
    }
  });
  first.resync(desiredPorts(2, 2));
  first.close();
}

test('map pins removed under the attached programs: the next open re-pins the maps they use, so an apply reaches them', { skip }, () => {
  const pinRoot = scratch.pinRoot('removed');
  attachedWithTwoServices(pinRoot, 'removed-pins');
  const attached = attachedMapIds(pinRoot);
  assert.deepEqual(pinnedMapIds(pinRoot), attached, 'pins and attached programs agree after a normal apply');

  // Whoever removed them (a local user could, in a pin directory that was theirs):
  // the programs stay attached through their pinned links, with the old maps.
  for (const n of ['patu_svc', 'patu_svc_slot', 'patu_backend']) unlinkSync(join(pinRoot, n));

  const later = laterApply(pinRoot, desiredPorts(3, 2));
  assert.deepEqual(attachedMapIds(pinRoot), attached, 'the attached programs were not touched');
  assert.deepEqual(pinnedMapIds(pinRoot), attached, 'the pins point at the maps the attached programs use again');
  assert.deepEqual(later.programmed, ['cap/s0:80', 'cap/s1:80', 'cap/s2:80'], 'what was programmed before survives, and the apply landed in those maps');
  assert.equal(later.repairs.length, 3);
  for (const n of ['patu_svc', 'patu_svc_slot', 'patu_backend']) {
    assert.ok(later.repairs.some((r) => r.startsWith(`${n}: pin was missing; re-pinned map id ${attached[n]}, which the attached patu_connect4 uses`)), `${n} repair reported: ${later.repairs.join('; ')}`);
  }
});

test('map pins replaced under the attached programs: the pins are put back to the maps the programs use', { skip }, () => {
  const pinRoot = scratch.pinRoot('replaced');
  const other = scratch.pinRoot('impostor');
  attachedWithTwoServices(pinRoot, 'replaced-pins');
  const attached = attachedMapIds(pinRoot);

  // A map of the same shape (from another pin root, never attached) takes patu_svc's place.
  const impostor = ServiceLb.open({ pinRoot: other });
  impostor.resync(desiredPorts(1, 1, 500));
  impostor.close();
  const impostorId = pinnedMapId(join(other, 'patu_svc'));
  unlinkSync(join(pinRoot, 'patu_svc'));
  renameSync(join(other, 'patu_svc'), join(pinRoot, 'patu_svc'));
  assert.equal(pinnedMapId(join(pinRoot, 'patu_svc')), impostorId);

  const later = laterApply(pinRoot, desiredPorts(2, 2));
  assert.deepEqual(pinnedMapIds(pinRoot), attached);
  assert.deepEqual(later.programmed, ['cap/s0:80', 'cap/s1:80']);
  assert.deepEqual(later.repairs, [`patu_svc: pin held map id ${impostorId}, the attached patu_connect4 uses ${attached.patu_svc}; re-pinned ${attached.patu_svc}`]);
});
