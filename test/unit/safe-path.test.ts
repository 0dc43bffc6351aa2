// The path rule for state directories from configuration (src/safe-path.ts), and
// ipam.dataDir using it: a dataDir under /proc once made mkdir -p spin forever.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { unsafePathProblem } from '../../src/safe-path.js';
import { IpamConfigError, parseIpamConfig } from '../../src/ipam/config.js';
import { IpamStore } from '../../src/ipam/store.js';

test('state paths: absolute, no .., not under /proc, /sys or /dev', () => {
  for (const ok of ['/var/lib/patu/ipam', '/tmp/x', '/run/patu/a.sock', '/var/lib/./patu', '/devices', '/system']) {
    assert.equal(unsafePathProblem(ok), undefined, ok);
  }
  const bad: [string, RegExp][] = [
    ['', /empty/],
    ['var/lib', /absolute/],
    ['/var/lib/../../proc', /'\.\.'/],
    ['/..', /'\.\.'/],
    ['/proc', /under \/proc/],
    ['/proc/self/net/x', /under \/proc/],
    ['//proc/1', /under \/proc/],
    ['/./sys/fs/cgroup', /under \/sys/],
    ['/dev/shm/ipam', /under \/dev/],
    ['/tmp/a\0b', /NUL/],
    [`/${'a'.repeat(5000)}`, /4096/],
  ];
  for (const [p, want] of bad) assert.match(unsafePathProblem(p) ?? 'accepted', want, JSON.stringify(p.slice(0, 40)));
  assert.equal(unsafePathProblem('/sys/fs/bpf/patu', '/sys/fs/bpf'), undefined, 'a tree allowed on purpose');
  assert.match(unsafePathProblem('/sys/fs/bpf/../x', '/sys/fs/bpf') ?? '', /'\.\.'/);
});

test('ipam.dataDir under /proc, /sys, /dev or with .. is a config error naming the field', () => {
  for (const dataDir of ['/proc/self', '/sys/kernel/x', '/dev/null', '/var/lib/patu/../../proc']) {
    assert.throws(
      () => parseIpamConfig({ ranges: [[{ subnet: '10.9.0.0/24' }]], dataDir }, 'ipam'),
      (e: unknown) => e instanceof IpamConfigError && e.field === 'ipam.dataDir',
      dataDir,
    );
  }
});

test('an ipam.dataDir whose symlink leads into /proc is refused before mkdir, not spun on', () => {
  const dir = mkdtempSync(join(tmpdir(), 'patu-safe-path-'));
  try {
    symlinkSync('/proc/self', join(dir, 'trap'));
    const t0 = performance.now();
    assert.throws(
      () => IpamStore.open(join(dir, 'trap', 'deeper', 'ipam'), 'net'),
      (e: unknown) => e instanceof IpamConfigError && e.field === 'ipam.dataDir' && /\/proc/.test(e.message),
    );
    assert.ok(performance.now() - t0 < 1_000);
    IpamStore.open(join(dir, 'fine'), 'net'); // an ordinary path still works
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
