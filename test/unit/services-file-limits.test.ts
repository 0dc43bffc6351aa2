// A services file that is not a file, is huge, or nests absurdly deep is refused
// quickly with a clear error, never read forever (issue 15: a FIFO or /dev/zero as
// the services file hung the reader; deep YAML nesting made parsing crawl).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MAX_NESTING, MAX_SERVICES_FILE_BYTES, ServiceFileError, loadServices, nestingDepth, parseServicesText } from '../../src/services/file-source.js';

const GOOD = 'services:\n  - name: web\n    clusterIP: 10.96.0.10\n    ports: [{ port: 80, targetPort: 8080 }]\n    endpoints:\n      - ip: 10.200.0.5\n';

async function refused(path: string, want: RegExp): Promise<void> {
  const t0 = performance.now();
  await assert.rejects(loadServices(path), (e: unknown) => e instanceof ServiceFileError && want.test(e.message), path);
  assert.ok(performance.now() - t0 < 2_000, `${path}: took ${performance.now() - t0} ms`);
}

test('a FIFO, a device or a socket path as the services file is refused, not read', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'patu-svc-limits-'));
  try {
    const fifo = join(dir, 'services.yaml');
    assert.equal(spawnSync('mkfifo', [fifo]).status, 0);
    await refused(fifo, /is a FIFO/);
    await refused('/dev/zero', /is a device/);
    await refused('/dev/null', /is a device/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a services file over the size limit is refused before it is read', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'patu-svc-limits-'));
  try {
    const big = join(dir, 'big.yaml');
    writeFileSync(big, GOOD);
    truncateSync(big, MAX_SERVICES_FILE_BYTES + 1); // sparse: no disk used
    await refused(big, new RegExp(`at most ${MAX_SERVICES_FILE_BYTES}`));
    const fine = join(dir, 'fine.yaml');
    writeFileSync(fine, GOOD);
    assert.equal((await loadServices(fine)).length, 1);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('nesting deeper than the limit is refused before parsing, in flow and in block style', async () => {
  const flow = `services: ${'['.repeat(100_000)}${']'.repeat(100_000)}\n`;
  const t0 = performance.now();
  await assert.rejects(parseServicesText(flow, 'deep.yaml'), /nested \d+ levels deep/);
  await assert.rejects(parseServicesText(`{"services": ${'['.repeat(5000)}${']'.repeat(5000)}}`, 'deep.json'), /nested \d+ levels deep/);
  assert.ok(performance.now() - t0 < 1_000, `took ${performance.now() - t0} ms`);
  const block = Array.from({ length: 200 }, (_, i) => `${' '.repeat(i)}a${i}:`).join('\n') + ' 1\n';
  await assert.rejects(parseServicesText(block, 'deep.yaml'), /nested \d+ levels deep/);
  const dashes = `services:\n  ${'- '.repeat(100)}x\n`;
  await assert.rejects(parseServicesText(dashes, 'deep.yaml'), /nested \d+ levels deep/);
});

test('the depth estimate: real files are far below the limit; quoted brackets and comments do not count', () => {
  assert.ok(nestingDepth(GOOD) <= 8, `good file depth ${nestingDepth(GOOD)}`);
  assert.ok(nestingDepth(GOOD) < MAX_NESTING);
  assert.equal(nestingDepth(`a: "${'['.repeat(500)}"\nb: '${'{'.repeat(500)}'\n# ${'['.repeat(500)}\n`), 1);
  assert.equal(nestingDepth('a: [1, [2, [3]]]\n'), 4);
});
