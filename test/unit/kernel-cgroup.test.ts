// Finding the cgroup2 attach point from mountinfo (src/kernel/cgroup.ts), on real
// mountinfo samples of each host layout. The samples were taken on the real kernel by
// test/unit/fixtures/mountinfo/generate.sh (layouts other than this hybrid host's own
// made in private mount and cgroup namespaces). Whether a directory is the hierarchy's
// true root needs the live file system: here the `isRoot` hook stands for it, and
// test/integration/cgroup.test.ts checks the real thing in a private cgroup namespace.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import {
  cgroup2Candidates, checkCgroup2Dir, CgroupError, findCgroup2Root, parseMountinfo, resolveCgroup, unescapeMountPath,
} from '../../src/kernel/cgroup.js';

const FIX = fileURLToPath(new URL('../../../test/unit/fixtures/mountinfo/', import.meta.url));
const sample = (name: string): string => readFileSync(FIX + name, 'utf8');
const B = '/tmp/patu-mountinfo-fixture';
const points = (text: string, under?: string): string[] => cgroup2Candidates(parseMountinfo(text), under).map((m) => m.mountPoint);
const everyRoot = (): boolean => true;
const isCode = (code: string, re?: RegExp) => (e: unknown): boolean => {
  assert.ok(e instanceof CgroupError, `a CgroupError, got ${String(e)}`);
  assert.equal(e.code, code);
  if (re) assert.match(e.message, re);
  return true;
};

test('parseMountinfo reads every field of a real line, optional fields and all', () => {
  const [m] = parseMountinfo('31 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 master:2 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n');
  assert.deepEqual(m, {
    id: 31, parentId: 22, device: '0:26', root: '/', mountPoint: '/sys/fs/cgroup',
    mountOptions: 'rw,nosuid,nodev,noexec,relatime', fsType: 'cgroup2', source: 'cgroup2', superOptions: 'rw,nsdelegate,memory_recursiveprot',
  });
  const hybrid = parseMountinfo(sample('hybrid.txt'));
  assert.ok(hybrid.length >= 15);
  assert.equal(hybrid.filter((x) => x.fsType === 'cgroup').length, 9, 'the nine v1 hierarchies of this host');
});

test('mountinfo escapes (\\040 space, \\011 tab, \\012 newline, \\134 backslash) are undone in paths', () => {
  assert.equal(unescapeMountPath('/a\\040b\\011c\\012d\\134e'), '/a b\tc\nd\\e');
  const [m] = parseMountinfo('40 30 0:26 /a\\040b /mnt/cgroup\\040v2 rw - cgroup2 none\\040x rw\n');
  assert.equal(m!.root, '/a b');
  assert.equal(m!.mountPoint, '/mnt/cgroup v2');
  assert.equal(m!.source, 'none x');
  // The real sample: a second cgroup2 mounted at a path with a space.
  assert.ok(points(sample('twice.txt')).includes(`${B}/patu cg2`));
});

test('a line that is not in the proc(5) format is an error naming the line, not a guess', () => {
  assert.throws(() => parseMountinfo('31 22 0:26 / /sys/fs/cgroup rw\n'), isCode('BAD_MOUNTINFO', /line 1/));
  assert.throws(() => parseMountinfo('\n22 1 0:21 / /proc rw - proc proc rw\nx y 0:26 / /sys rw - sysfs sysfs rw\n'), isCode('BAD_MOUNTINFO', /line 3/));
});

test('hybrid host (this machine): cgroup2 is /sys/fs/cgroup/unified, the v1 tmpfs at /sys/fs/cgroup is not', () => {
  assert.deepEqual(points(sample('hybrid.txt')), ['/sys/fs/cgroup/unified']);
  assert.equal(findCgroup2Root({ mountinfo: sample('hybrid.txt'), isRoot: everyRoot }), '/sys/fs/cgroup/unified');
});

test('pure cgroup v2 host: /sys/fs/cgroup', () => {
  assert.equal(findCgroup2Root({ mountinfo: sample('pure-v2.txt'), isRoot: everyRoot }), '/sys/fs/cgroup');
});

test('v1-only host: an error that says cgroup2 is missing and how to get it', () => {
  assert.throws(
    () => findCgroup2Root({ mountinfo: sample('v1-only.txt'), isRoot: everyRoot }),
    isCode('NO_CGROUP2', /no cgroup2 file system is mounted \(this host has only cgroup v1: 9 v1 hierarchies\).*mount -t cgroup2/),
  );
});

test('cgroup2 mounted twice: the standard place wins, a bind mount of a sub-cgroup is never a candidate', () => {
  const text = sample('twice.txt');
  const all = parseMountinfo(text).filter((m) => m.fsType === 'cgroup2');
  assert.equal(all.length, 3, 'the sample has /sys/fs/cgroup, a second full mount and a sub-cgroup bind');
  assert.ok(all.some((m) => m.mountPoint === `${B}/patu-sub` && m.root.startsWith('/patu-fixture-')));
  assert.deepEqual(points(text), ['/sys/fs/cgroup', `${B}/patu cg2`]);
  assert.equal(findCgroup2Root({ mountinfo: text, isRoot: everyRoot }), '/sys/fs/cgroup');
  // If the standard place is not the hierarchy's root, the next whole-tree mount is taken.
  assert.equal(findCgroup2Root({ mountinfo: text, isRoot: (d) => d !== '/sys/fs/cgroup' }), `${B}/patu cg2`);
  // Mounted twice at the same point: one candidate, the later (topmost) line.
  const over = '61 54 0:38 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n70 61 0:38 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n';
  const c = cgroup2Candidates(parseMountinfo(over));
  assert.deepEqual(c.map((m) => m.id), [70]);
  // Mount order breaks ties between non-standard places: the earlier mount first.
  assert.deepEqual(points('50 1 0:38 / /b rw - cgroup2 x rw\n40 1 0:38 / /a rw - cgroup2 x rw\n'), ['/b', '/a']);
});

test('container on a hybrid host: its own /sys/fs/cgroup is refused, the host\'s mount under /host is found', () => {
  const text = sample('container-hybrid.txt');
  const host = `${B}/host/sys/fs/cgroup`;
  // Inside its cgroup namespace, the container's own mount shows "/" and the host's "/..".
  const cg2 = parseMountinfo(text).filter((m) => m.fsType === 'cgroup2');
  assert.deepEqual(cg2.map((m) => [m.mountPoint, m.root]), [[`${host}/unified`, '/..'], ['/sys/fs/cgroup', '/']]);
  // The root field cannot tell them apart as "the root": the file system check does
  // (the container's own directory has cgroup.type, the host's root has not).
  const containerOwnIsNotRoot = (d: string): boolean => d !== '/sys/fs/cgroup';
  assert.equal(findCgroup2Root({ mountinfo: text, isRoot: containerOwnIsNotRoot }), `${host}/unified`);
  assert.equal(findCgroup2Root({ mountinfo: text, under: host, isRoot: containerOwnIsNotRoot }), `${host}/unified`);
  assert.equal(findCgroup2Root({ mountinfo: text, under: `${host}/`, isRoot: containerOwnIsNotRoot }), `${host}/unified`);
  assert.throws(
    () => findCgroup2Root({ mountinfo: text, under: '/sys/fs/cgroup', isRoot: containerOwnIsNotRoot }),
    isCode('NOT_HIERARCHY_ROOT', /not the root of the host's cgroup hierarchy.*cover only\s+this container/s),
  );
  assert.throws(
    () => findCgroup2Root({ mountinfo: text, under: '/host/sys/fs/cgroup', isRoot: everyRoot }),
    isCode('NO_CGROUP2', /no cgroup2 mount at or below \/host\/sys\/fs\/cgroup.*mount the host's \/sys\/fs\/cgroup there/),
  );
});

test('container on a pure v2 host: the host mount itself is the root', () => {
  const text = sample('container-v2.txt');
  const host = `${B}/host/sys/fs/cgroup`;
  assert.deepEqual(points(text, host), [host]);
  assert.equal(findCgroup2Root({ mountinfo: text, under: host, isRoot: (d) => d === host }), host);
  // Without `under`, the standard place ranks first but is the container's own: skipped.
  assert.deepEqual(points(text), ['/sys/fs/cgroup', host]);
  assert.equal(findCgroup2Root({ mountinfo: text, isRoot: (d) => d === host }), host);
});

test('only sub-cgroups mounted: no candidate, and the error lists what is mounted', () => {
  assert.throws(
    () => findCgroup2Root({ mountinfo: '65 63 0:38 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n', isRoot: everyRoot }),
    isCode('NO_CGROUP2', /only sub-cgroups are mounted: \/sys\/fs\/cgroup \(shows \/kubepods\/pod1\)/),
  );
});

test('an explicit directory must be on cgroup2: the hybrid host\'s /sys/fs/cgroup (a tmpfs) is refused', () => {
  assert.throws(() => checkCgroup2Dir('/sys/fs/cgroup', { mountinfo: sample('hybrid.txt') }), isCode('NOT_CGROUP2', /on tmpfs mounted at \/sys\/fs\/cgroup/));
  assert.equal(checkCgroup2Dir('/sys/fs/cgroup', { mountinfo: sample('pure-v2.txt') }), '/sys/fs/cgroup');
  assert.equal(resolveCgroup({ cgroup: '/sys/fs/cgroup', mountinfo: sample('pure-v2.txt') }), '/sys/fs/cgroup');
  assert.throws(() => checkCgroup2Dir('/nonexistent/patu-cg', { mountinfo: sample('pure-v2.txt') }), (e: unknown) => {
    assert.ok(e instanceof CgroupError && e.code === 'NOT_CGROUP2' && /ENOENT/.test(e.message));
    assert.ok(e.cause instanceof Error, 'the file system error is kept as the cause');
    return true;
  });
});

test('resolveCgroup: an explicit directory wins; an empty one (the DaemonSet\'s default --cgroup=) means discover', () => {
  const text = sample('container-v2.txt');
  const host = `${B}/host/sys/fs/cgroup`;
  const isRoot = (d: string): boolean => d === host;
  assert.equal(resolveCgroup({ cgroup: '', under: host, mountinfo: text, isRoot }), host);
  assert.equal(resolveCgroup({ cgroup: undefined, under: '', mountinfo: text, isRoot }), host, 'an empty --cgroup-fs looks everywhere');
  // Explicit: checked to be on cgroup2 (here: the hybrid sample's tmpfs is not), never searched.
  assert.throws(() => resolveCgroup({ cgroup: '/sys/fs/cgroup', under: host, mountinfo: sample('hybrid.txt'), isRoot }), isCode('NOT_CGROUP2'));
});
