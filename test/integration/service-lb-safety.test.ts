// ServiceLb refuses what would leave the data plane wrong, against the real
// kernel (needs root): applies beyond a map's capacity, and (below) pin
// directories and pins that someone else made, removed or replaced.
// Creates only (test/helpers/kernel.ts, removed after the file even when a test
// fails): pin roots /sys/fs/bpf/patu-test-svcsafe-<pid>-*, and the cgroup
// patu-test-svcsafe-<pid> that the programs attach to.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { ServiceLb } from '../../src/dataplane/service-lb.js';
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
