// test/helpers/kernel.ts: scratch state is removed when a test fails, including a
// cgroup that still has a process in it. Needs root (cgroups, netns, bpffs).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Scratch, netnsPath } from '../helpers/kernel.js';

const skip = process.getuid?.() === 0 ? false : 'needs root (cgroups, netns, bpffs)';
const FIXTURE = fileURLToPath(new URL('./fixtures/scratch-failing.js', import.meta.url));

test('a failing test still leaves no cgroup, pins, netns, directory or process behind', { skip }, () => {
  const prefix = `patu-test-scrf${process.pid}`;
  // Run as a plain script (it still runs its test), outside this runner's reporting channel.
  const env: NodeJS.ProcessEnv = { ...process.env, SCRATCH_PREFIX: prefix };
  delete env.NODE_TEST_CONTEXT;
  const r = spawnSync(process.execPath, ['--test-reporter=tap', FIXTURE], { encoding: 'utf8', timeout: 30_000, env });
  assert.notEqual(r.status, 0, `the fixture's test must fail:\n${r.stdout}`);
  assert.match(r.stdout, /deliberate failure/);
  const line = r.stdout.split('\n').find((l) => l.includes('SCRATCH {'));
  assert.ok(line, `fixture printed no scratch names:\n${r.stdout}\n${r.stderr}`);
  const s = JSON.parse(line.slice(line.indexOf('{'))) as { cg: string; pins: string; ns: string; dir: string; pid: number };
  assert.ok(s.cg.includes(prefix) && s.ns.includes(prefix), JSON.stringify(s));
  assert.equal(existsSync(s.cg), false, `cgroup ${s.cg} left behind`);
  assert.equal(existsSync(s.pins), false, `pin root ${s.pins} left behind`);
  assert.equal(existsSync(netnsPath(s.ns)), false, `netns ${s.ns} left behind`);
  assert.equal(existsSync(s.dir), false, `directory ${s.dir} left behind`);
  assert.equal(existsSync(`/proc/${s.pid}`), false, `process ${s.pid} in the cgroup still runs`);
});

test('every cleanup runs when one fails, newest first, and the failure names what it was cleaning', async () => {
  const s = new Scratch('patu-test-order');
  const ran: string[] = [];
  s.defer('first', () => void ran.push('first'));
  s.defer('broken', () => {
    throw new Error('boom');
  });
  s.defer('last', () => void ran.push('last'));
  await assert.rejects(s.cleanup(), (e: unknown) => e instanceof AggregateError && /cleanup of broken failed: boom/.test((e as Error).message));
  assert.deepEqual(ran, ['last', 'first']);
  await s.cleanup(); // a second call does nothing
  assert.deepEqual(ran, ['last', 'first']);
});
