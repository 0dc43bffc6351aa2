// IPAM under real concurrency and real crashes: separate node processes share one
// store, as concurrent CNI ADDs do. Needs no root (only a temp directory).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseIpamConfig } from '../../src/ipam/config.js';
import { IpamStore } from '../../src/ipam/store.js';
import { allocate, gc } from '../../src/ipam/allocator.js';

const CHILD = fileURLToPath(new URL('./ipam-child.js', import.meta.url));
const root = mkdtempSync(join(tmpdir(), `patu-ipam-conc-${process.pid}-`));
const children = new Set<ChildProcess>();
after(() => {
  for (const c of children) c.kill('SIGKILL');
  rmSync(root, { recursive: true, force: true });
});

let n = 0;
function freshConfig(subnet: string): { raw: object; dir: string } {
  const dataDir = join(root, `d${n++}`);
  return { raw: { ranges: [[{ subnet }]], dataDir }, dir: join(dataDir, 'conc') };
}

interface Done {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

function child(mode: string, raw: object, containerId: string, startFile?: string): { proc: ChildProcess; done: Promise<Done> } {
  const env = { ...process.env };
  delete env.NODE_EXTRA_CA_CERTS;
  const proc = spawn(process.execPath, [CHILD, mode, JSON.stringify(raw), containerId, ...(startFile ? [startFile] : [])], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env,
  });
  children.add(proc);
  let stdout = '';
  let stderr = '';
  proc.stdout!.on('data', (b: Buffer) => (stdout += b.toString()));
  proc.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
  // Every child is killed after 30 s at the latest: a wedged lock fails the test, not CI.
  const timer = setTimeout(() => proc.kill('SIGKILL'), 30_000);
  const done = new Promise<Done>((resolve) =>
    proc.on('close', (code, signal) => {
      clearTimeout(timer);
      children.delete(proc);
      resolve({ code, signal, stdout, stderr });
    }),
  );
  return { proc, done };
}

/** Resolves once a churn child has printed "started" (bounded: its own 30 s kill ends it otherwise). */
function started(proc: ChildProcess): Promise<void> {
  return new Promise((resolve, reject) => {
    let seen = '';
    const onData = (b: Buffer): void => {
      seen += b.toString();
      if (seen.includes('started\n')) {
        proc.stdout!.off('data', onData);
        resolve();
      }
    };
    proc.stdout!.on('data', onData);
    proc.once('close', () => reject(new Error(`churn child ended before it started: ${seen}`)));
  });
}

/** Every record on disk, read without product code; fails on anything half-written. */
function records(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const name of readdirSync(dir)) {
    if (name === 'lock' || name.startsWith('last_reserved_ip.') || name.startsWith('.tmp.') || name.startsWith('.owner.')) continue;
    const text = readFileSync(join(dir, name), 'utf8');
    assert.match(text, /^[A-Za-z0-9-]+\neth0$/, `record ${name} is not a complete "<id>\\n<ifname>": ${JSON.stringify(text)}`);
    out.set(name, text.split('\n')[0]!);
  }
  return out;
}
const temps = (dir: string): string[] => readdirSync(dir).filter((f) => f.startsWith('.tmp.'));

test('32 concurrent ADD processes get 32 distinct addresses', async () => {
  const { raw, dir } = freshConfig('10.91.0.0/24');
  const start = join(root, `start-${n}`);
  const runs = Array.from({ length: 32 }, (_, i) => child('alloc', raw, `ctr-${i}`, start));
  // Give the children time to start and park on the barrier, then release them all at once.
  await new Promise((r) => setTimeout(r, 1500));
  writeFileSync(start, '');
  const results = await Promise.all(runs.map((r) => r.done));
  const ips = results.map((r, i) => {
    assert.equal(r.code, 0, `child ${i} failed: ${r.stderr}`);
    return (JSON.parse(r.stdout) as { ips: string[] }).ips[0]!;
  });
  assert.equal(new Set(ips).size, 32, `duplicates among ${ips.join(' ')}`);
  for (const ip of ips) assert.match(ip, /^10\.91\.0\.([2-9]|[1-9][0-9]|1[0-9][0-9]|2[0-4][0-9]|25[0-4])$/);
  // The disk says the same, owner by owner.
  const disk = records(dir);
  assert.equal(disk.size, 32);
  ips.forEach((ip, i) => assert.equal(disk.get(ip), `ctr-${i}`));
  assert.deepEqual(temps(dir), []);
  const ms = results.map((r) => (JSON.parse(r.stdout) as { ms: number }).ms).sort((a, b) => a - b);
  console.log(`# 32 concurrent allocations: per-process allocate() p50 ${ms[16]!.toFixed(1)} ms, max ${ms[31]!.toFixed(1)} ms`);
});

test('a child SIGKILLed while holding the lock does not wedge the next allocation', async () => {
  const { raw, dir } = freshConfig('10.92.0.0/24');
  const holder = child('hold', raw, 'holder');
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('holder never reported the lock')), 10_000);
    holder.proc.stdout!.on('data', (b: Buffer) => {
      if (b.toString().includes('locked')) {
        clearTimeout(t);
        resolve();
      }
    });
  });
  const waiter = child('alloc', raw, 'waiter');
  let finished = false;
  void waiter.done.then(() => (finished = true));
  // The lock is real: the waiter cannot finish while the holder lives.
  await new Promise((r) => setTimeout(r, 1000));
  assert.equal(finished, false, 'allocation went through while another process held the lock');
  assert.equal(existsSync(join(dir, '10.92.0.2')), false);
  const killedAt = Date.now();
  holder.proc.kill('SIGKILL');
  const w = await waiter.done;
  assert.equal(w.code, 0, w.stderr);
  assert.deepEqual((JSON.parse(w.stdout) as { ips: string[] }).ips, ['10.92.0.2']);
  assert.ok(Date.now() - killedAt < 5000, `waiter took ${Date.now() - killedAt} ms after the holder died`);
});

test('in-process lock wait gives up with IpamLockTimeoutError naming the lock file', async () => {
  const { raw, dir } = freshConfig('10.93.0.0/24');
  const holder = child('hold', raw, 'holder');
  await new Promise<void>((resolve) => holder.proc.stdout!.on('data', () => resolve()));
  const cfg = parseIpamConfig(raw);
  const store = IpamStore.open(cfg.dataDir, 'conc', { lockTimeoutMs: 300 });
  const t0 = Date.now();
  assert.throws(() => allocate(cfg, store, 'x', 'eth0'), (err: unknown) => {
    assert.equal((err as Error).name, 'IpamLockTimeoutError');
    assert.ok((err as Error).message.includes(join(dir, 'lock')), (err as Error).message);
    return true;
  });
  assert.ok(Date.now() - t0 >= 300 && Date.now() - t0 < 2000);
  holder.proc.kill('SIGKILL');
  await holder.done;
  store.close();
});

test('a crash before the record is linked leaves only a temp file, which the next run removes', async () => {
  const { raw, dir } = freshConfig('10.94.0.0/24');
  const crash = await child('crash-before-link', raw, 'crasher').done;
  assert.equal(crash.signal, 'SIGKILL', `child should have died mid-write: ${crash.stderr}`);
  const left = temps(dir);
  assert.equal(left.length, 1, `expected the crashed writer's temp file, found ${left.join(', ') || 'none'}`);
  assert.equal(readFileSync(join(dir, left[0]!), 'utf8'), 'crasher\neth0');
  assert.equal(records(dir).size, 0, 'no record may exist for an address whose write never finished');

  // Same shape as a torn write by hand: a truncated temp file that was never renamed.
  writeFileSync(join(dir, '.tmp.10.94.0.3.99999.abcdef'), 'half-writ');
  const next = await child('alloc', raw, 'next').done;
  assert.equal(next.code, 0, next.stderr);
  assert.deepEqual((JSON.parse(next.stdout) as { ips: string[] }).ips, ['10.94.0.2'], 'the never-written address is free');
  assert.deepEqual(temps(dir), [], 'the next locked run cleans temp files');
  assert.deepEqual([...records(dir)], [['10.94.0.2', 'next']]);
});

test('a crash after the link leaves a complete record; GC releases it', async () => {
  const { raw, dir } = freshConfig('10.95.0.0/24');
  const crash = await child('crash-after-link', raw, 'crasher').done;
  assert.equal(crash.signal, 'SIGKILL', crash.stderr);
  assert.deepEqual([...records(dir)], [['10.95.0.2', 'crasher']]);
  const next = await child('alloc', raw, 'next').done;
  assert.equal(next.code, 0, next.stderr);
  assert.deepEqual((JSON.parse(next.stdout) as { ips: string[] }).ips, ['10.95.0.3']);
  assert.deepEqual(temps(dir), []);
  const cfg = parseIpamConfig(raw);
  const store = IpamStore.open(cfg.dataDir, 'conc');
  assert.deepEqual(gc(cfg, store, [{ containerId: 'next', ifname: 'eth0' }]), ['10.95.0.2']);
  store.close();
});

test('kill -9 at random moments during alloc/release churn never leaves a corrupt record', async () => {
  const { raw, dir } = freshConfig('10.96.0.0/20');
  const cfg = parseIpamConfig(raw);
  for (let round = 0; round < 6; round++) {
    const runs = Array.from({ length: 3 }, (_, i) => child('churn', raw, `r${round}c${i}`));
    // Kill them somewhere in their working time: counted from when each says it has started its
    // loop, not from the spawn (a loaded machine can take far longer than usual to start node).
    await Promise.all(runs.map((r) => started(r.proc)));
    await new Promise((r) => setTimeout(r, 20 + Math.floor(Math.random() * 180)));
    for (const r of runs) r.proc.kill('SIGKILL');
    const ends = await Promise.all(runs.map((r) => r.done));
    for (const e of ends) assert.equal(e.signal, 'SIGKILL', `a churn child ended on its own: ${e.stderr}`);
    records(dir); // asserts every record is complete
  }
  // A locked run afterwards leaves neither temp files nor duplicate owners.
  const store = IpamStore.open(cfg.dataDir, 'conc');
  allocate(cfg, store, 'after', 'eth0');
  assert.deepEqual(temps(dir), []);
  const owners = [...records(dir).values()];
  assert.equal(new Set(owners).size, owners.length, 'one address per owner');
  assert.ok(owners.length > 6, `churn children made too little progress to test anything (${owners.length} records)`);
  store.close();
});
