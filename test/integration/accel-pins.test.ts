// Acceleration's map pins stay true to the running programs (needs root): a
// registry pin removed or replaced under the attached sock_ops is put back by
// the next enable (an agent start or `patu accel on`), so the pods the CNI
// plugin registers are the ones sock_ops reads. Creates only (removed after
// the file, also when a test fails): the cgroup patu-test-accpin-<pid> under
// the cgroup2 root, and pin roots /sys/fs/bpf/patu-test-accpin-<pid>-*.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, renameSync, statSync, unlinkSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Accel } from '../../src/dataplane/accel.js';
import { openPodRegistry } from '../../src/dataplane/accel-registry.js';
import { accelPins } from '../../src/dataplane/accel-maps.js';
import { BpfLink } from '../../src/kernel/bpf/object.js';
import { mapInfoById, progMapIds } from '../../src/kernel/bpf/introspect.js';
import { pinnedMapId } from '../../src/kernel/bpf/map.js';
import { scratchForTests } from '../helpers/kernel.js';

const isRoot = process.getuid?.() === 0;
const skip = isRoot ? false : 'needs root (BPF programs, pins on bpffs, a cgroup)';
const OBJ = fileURLToPath(new URL('../../../build/bpf/accel.o', import.meta.url));
const scratch = scratchForTests('patu-test-accpin');
let CG = '';

before(() => {
  if (!isRoot) return;
  CG = scratch.cgroup();
});

/** Sets acceleration up under a fresh pin root, with one pod registered. */
function setUp(tag: string): { accel: Accel; pinRoot: string; pins: ReturnType<typeof accelPins>; logs: string[] } {
  const pinRoot = scratch.pinRoot(tag);
  const logs: string[] = [];
  const accel = Accel.open({ pinRoot, cgroupPath: CG, objectPath: OBJ, log: (m) => logs.push(m) });
  scratch.defer(`accel ${tag}`, () => accel.teardown());
  accel.enable();
  const reg = openPodRegistry(pinRoot)!;
  reg.register('10.250.0.7', false);
  reg.close();
  return { accel, pinRoot, pins: accelPins(pinRoot), logs };
}

/** The id of the pod registry the attached sock_ops reads. */
function attachedPodsId(linkPin: string): number {
  const link = BpfLink.fromPin(linkPin);
  try {
    const id = progMapIds(link.info().progId).find((m) => mapInfoById(m).name === 'patu_pods');
    assert.ok(id !== undefined, 'sock_ops uses patu_pods');
    return id;
  } finally {
    link.close();
  }
}

test('accel pin directory is created root-owned 0700', { skip }, () => {
  const { pins } = setUp('mode');
  assert.equal(statSync(pins.dir).mode & 0o777, 0o700);
});

test('a removed registry pin is put back by the next enable: registered pods survive and the pin is the map sock_ops reads', { skip }, () => {
  const { accel, pinRoot, pins, logs } = setUp('removed');
  const attached = attachedPodsId(pins.linkSockops);
  unlinkSync(pins.pods);
  assert.equal(existsSync(pins.pods), false);

  accel.enable(); // an agent restart
  assert.equal(attachedPodsId(pins.linkSockops), attached, 'sock_ops still reads the same registry');
  assert.equal(pinnedMapId(pins.pods), attached, 'the registry pin is that map again');
  const reg = openPodRegistry(pinRoot)!;
  try {
    assert.deepEqual(reg.list(), [{ ip: '10.250.0.7', optOut: false }], 'the pod registered before is still there');
  } finally {
    reg.close();
  }
  assert.deepEqual(logs.filter((l) => l.startsWith('repaired')), [`repaired: patu_pods: pin was missing; re-pinned map id ${attached}, which the attached patu_sockops uses`]);
});

test('a replaced registry pin is put back by the next enable', { skip }, () => {
  const { accel, pins, logs } = setUp('replaced');
  const other = setUp('impostor');
  const attached = attachedPodsId(pins.linkSockops);
  const impostor = pinnedMapId(other.pins.pods)!;
  unlinkSync(pins.pods);
  renameSync(other.pins.pods, pins.pods);

  accel.enable();
  assert.equal(pinnedMapId(pins.pods), attached);
  assert.equal(attachedPodsId(pins.linkSockops), attached);
  assert.deepEqual(logs.filter((l) => l.startsWith('repaired')), [`repaired: patu_pods: pin held map id ${impostor}, the attached patu_sockops uses ${attached}; re-pinned ${attached}`]);
});
