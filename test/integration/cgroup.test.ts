// cgroup2 discovery against the real kernel (needs root, and unshare(1)).
// Everything unusual happens in private mount (and cgroup) namespaces that end with
// their child process, so the host's mounts are never changed. Creates on the host,
// through test/helpers/kernel.ts (removed in `after`, also when a test fails): temp
// directories (a tmpfs is mounted over them inside the namespaces only), the
// sub-cgroups patu-test-cg-<pid>-{probe,a,c} of the real hierarchy, and pin roots
// /sys/fs/bpf/patu-test-cg-<pid>[-c].
// Programs attach only to the sub-cgroup the test made, never to a root.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { findCgroup2Root, isHierarchyRoot } from '../../src/kernel/cgroup.js';
import { removeCgroup, scratchForTests } from '../helpers/kernel.js';

const isRoot = process.getuid?.() === 0;
const haveUnshare = spawnSync('unshare', ['--version']).status === 0;
const skip = !isRoot ? 'needs root (mount and cgroup namespaces, BPF programs)' : !haveUnshare ? 'needs unshare(1) (util-linux)' : false;
const CHILD = fileURLToPath(new URL('./cgroup-child.js', import.meta.url));
const scratch = scratchForTests('patu-test-cg');
const hostRoot = (): string => findCgroup2Root();

function run(args: string[]): Record<string, unknown> {
  const r = spawnSync(args[0]!, args.slice(1), { encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.status, 0, `child failed (${r.status} ${r.signal ?? ''}): ${r.stderr}`);
  const last = r.stdout.trim().split('\n').pop()!;
  return JSON.parse(last) as Record<string, unknown>;
}

test('this host: the discovered root is the hierarchy root; a sub-cgroup is not', { skip }, () => {
  const root = hostRoot();
  assert.ok(isHierarchyRoot(root), `${root} has no cgroup.type`);
  const sub = scratch.cgroup('probe');
  assert.equal(relative(root, sub), scratch.name('probe'), 'Scratch makes its cgroups below the discovered root');
  assert.equal(isHierarchyRoot(sub), false, 'every cgroup below the root has cgroup.type');
});

test('cgroup2 mounted only at an unusual path (private mount namespace): found there, and accel + service programs attach to a sub-cgroup of it', { skip }, () => {
  // Unmount every cgroup2 mount (in the new namespace only), mount it again below T.
  const T = scratch.tmpDir('patu-cg');
  const PIN = scratch.pinRoot();
  const sub = scratch.name('a');
  // Made by the child in its own mount of the hierarchy: the same cgroup on the host.
  scratch.defer(`cgroup ${sub}`, () => removeCgroup(join(hostRoot(), sub)));
  const script = [
    'set -e',
    'mount -t tmpfs tmpfs "$1"',
    'for m in $(awk \'$9 == "cgroup2" { print $5 }\' /proc/self/mountinfo | sort -r); do umount -l "$m"; done',
    'mkdir "$1/elsewhere"',
    'mount -t cgroup2 none "$1/elsewhere"',
    'exec "$2" "$3" attach "$4" "$5"',
  ].join('\n');
  const r = run(['unshare', '-m', '--propagation', 'private', 'sh', '-c', script, 'sh', T, process.execPath, CHILD, PIN, sub]);
  assert.equal(r.root, join(T, 'elsewhere'), 'discovered, not assumed');
  assert.equal(r.rootIsHierarchyRoot, true);
  // The project's own introspection: links whose cgroup id is the sub-cgroup's.
  // (Kernel program names are cut at 15 characters.)
  assert.deepEqual(r.attached, ['patu_connect4', 'patu_getpeernam', 'patu_recvmsg4', 'patu_sendmsg4', 'patu_sockops']);
  assert.equal(r.afterCleanup, 0, 'teardown detached everything');
  assert.equal(existsSync(join(hostRoot(), sub)), false, 'the sub-cgroup is gone from the real hierarchy too');
});

test('in a container (private cgroup namespace): its own /sys/fs/cgroup is refused with a clear error, the host\'s mount is used', { skip }, () => {
  const root = hostRoot();
  const cg = scratch.cgroup('c');
  const T = scratch.tmpDir('patu-cg');
  const PIN = scratch.pinRoot('c');
  // Like runc: the process sits in its own cgroup, unshares the cgroup namespace and
  // mounts a fresh cgroup2 at /sys/fs/cgroup; the host's /sys/fs/cgroup stays visible
  // at T/host (the DaemonSet's /host/sys/fs/cgroup).
  const script = [
    'set -e',
    'mount -t tmpfs tmpfs "$1"',
    'mkdir "$1/host"',
    'mount --rbind /sys/fs/cgroup "$1/host"',
    'umount -R /sys/fs/cgroup',
    'mount -t cgroup2 none /sys/fs/cgroup',
    'exec "$2" "$3" container "$1/host" "$4"',
  ].join('\n');
  const r = run(['sh', '-c', `echo $$ > ${cg}/cgroup.procs && exec unshare -C -m --propagation private sh -c '${script.replace(/'/g, `'\\''`)}' sh ${T} ${process.execPath} ${CHILD} ${PIN}`]);
  const hostView = join(T, 'host', relative('/sys/fs/cgroup', root));
  // The premise: mountinfo shows the container's own mount as "/" too; only the file system tells.
  assert.deepEqual(r.ownRootField, ['/']);
  assert.equal(r.ownIsHierarchyRoot, false);
  assert.equal(r.found, hostView, 'discovery skips the container\'s own mount and takes the host\'s');
  assert.equal(r.underHost, hostView);
  assert.match(String(r.underOwn), /^NOT_HIERARCHY_ROOT: .*not the root of the host's cgroup hierarchy.*cover only\s+this container/s);
  // The agent told to look only at the container's own /sys/fs/cgroup refuses, naming its options.
  assert.match(String(r.agent), /^agent: the cgroup2 mount at \/sys\/fs\/cgroup is not the root.*--cgroup-fs/s);
});
