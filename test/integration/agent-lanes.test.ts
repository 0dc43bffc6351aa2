// The agent's CNI server (src/agent/cni-server.ts) on its own: real worker threads, a
// real unix socket, a real IPAM directory. A request stuck in a system call while it
// holds its network's IPAM lock is abandoned at its deadline and the lock is free
// again afterwards; an idle network's worker exits and closes its lock file. Needs
// root only because GC talks rtnetlink; it changes no link (no bridge of that name).
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { closeSync, constants as fsc, mkdirSync, mkdtempSync, openSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startCniServer, type CniServer } from '../../src/agent/cni-server.js';

const skip = process.getuid?.() === 0 ? false : 'needs root (GC lists links over rtnetlink)';
const dir = mkdtempSync(join(tmpdir(), 'patu-lanes-'));
const servers: CniServer[] = [];
const fifos: string[] = [];
after(async () => {
  // Let any thread blocked on our FIFOs return, so this process can exit.
  for (const f of fifos) {
    try {
      closeSync(openSync(f, fsc.O_WRONLY | fsc.O_NONBLOCK));
    } catch {
      /* nobody blocked */
    }
  }
  for (const s of servers) await s.close();
  rmSync(dir, { recursive: true, force: true });
});

function request(socket: string, env: Record<string, string>, stdin: object): Promise<{ code: string; body: any; ms: number }> {
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    const sock = connect(socket);
    let got = '';
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => (got += d));
    sock.on('error', reject);
    sock.on('close', () => {
      const text = got.trimStart();
      const nl = text.indexOf('\n');
      resolve({ code: text.slice(0, nl), body: nl >= 0 && text.length > nl + 1 ? JSON.parse(text.slice(nl + 1)) : undefined, ms: performance.now() - t0 });
    });
    sock.end(`${Object.entries(env).map(([k, v]) => `${k}=${v}\n`).join('')}\n${JSON.stringify(stdin)}`);
  });
}

const netconf = (name: string) => ({
  cniVersion: '1.1.0',
  name,
  type: 'patu',
  bridge: `nobr${process.pid.toString(36)}`,
  masquerade: false,
  ipam: { ranges: [[{ subnet: '10.251.9.0/24' }]], dataDir: join(dir, 'ipam') },
  pinRoot: `/sys/fs/bpf/patu-test-lanes-${process.pid}`,
  'cni.dev/valid-attachments': [],
});

/** Whether this process holds an fd on `path`. */
const holds = (path: string): boolean =>
  readdirSync('/proc/self/fd').some((fd) => {
    try {
      return readlinkSync(`/proc/self/fd/${fd}`) === path;
    } catch {
      return false;
    }
  });

/** Whether someone (any process) holds the flock on `path`: flock -n fails then. */
const lockBusy = (path: string): boolean => spawnSync('flock', ['-n', '-x', path, 'true']).status !== 0;

test('a request stuck holding its IPAM lock is abandoned at its deadline, and the lock is free again', { skip }, async () => {
  const socket = join(dir, 'a.sock');
  const server = await startCniServer({ socketPath: socket, requestTimeoutMs: 1_500 });
  servers.push(server);
  const net = join(dir, 'ipam', 'stuck');
  mkdirSync(net, { recursive: true });
  const fifo = join(net, '10.251.9.7'); // a "record" GC must read: its open() blocks
  assert.equal(spawnSync('mkfifo', [fifo]).status, 0);
  fifos.push(fifo);

  const stuck = request(socket, { CNI_COMMAND: 'GC' }, netconf('stuck'));
  await new Promise((r) => setTimeout(r, 500));
  assert.ok(lockBusy(join(net, 'lock')), 'the stuck GC holds the IPAM lock');
  const v = await request(socket, { CNI_COMMAND: 'VERSION' }, {});
  assert.equal(v.code, '0');
  assert.ok(v.ms < 500, `VERSION took ${v.ms} ms while a request was stuck`);

  const r = await stuck;
  assert.equal(r.code, '1');
  assert.equal(r.body.code, 11);
  assert.match(r.body.msg, /abandoned this GC after 1500 ms/);
  assert.equal(server.stuckThreads(), 1, 'the worker thread is still blocked in open()');
  assert.ok(!lockBusy(join(net, 'lock')), 'the abandoned request no longer holds the IPAM lock');
  assert.ok(!holds(join(net, 'lock')), 'its lock fd was closed');

  // A writer lets the blocked open() return: the terminated thread then ends without
  // running any more of the request.
  closeSync(openSync(fifo, fsc.O_WRONLY | fsc.O_NONBLOCK));
  rmSync(fifo);
  for (let i = 0; i < 50 && server.stuckThreads() > 0; i++) await new Promise((res) => setTimeout(res, 100));
  assert.equal(server.stuckThreads(), 0, 'the abandoned thread ended once its system call returned');
  // The network works again on a fresh worker once the bad "record" is gone.
  const again = await request(socket, { CNI_COMMAND: 'GC' }, netconf('stuck'));
  assert.equal(again.code, '0', JSON.stringify(again.body));
});

test('an idle network\'s worker exits and closes its lock file', { skip }, async () => {
  const socket = join(dir, 'b.sock');
  const server = await startCniServer({ socketPath: socket, idleWorkerMs: 300 });
  servers.push(server);
  const r = await request(socket, { CNI_COMMAND: 'GC' }, netconf('idle'));
  assert.equal(r.code, '0', JSON.stringify(r.body));
  const lock = join(dir, 'ipam', 'idle', 'lock');
  assert.ok(holds(lock), 'the worker keeps its lock fd between requests');
  for (let i = 0; i < 50 && holds(lock); i++) await new Promise((res) => setTimeout(res, 100));
  assert.ok(!holds(lock), 'the lock fd is closed after the worker went idle');
  assert.equal(server.stuckThreads(), 0);
});

test('beforeAnswer runs on the main thread before a successful answer is written; a throw in it is reported and the answer still goes out', { skip }, async () => {
  const socket = join(dir, 'c.sock');
  const seen: string[] = [];
  const problems: string[] = [];
  let answered = false;
  const server = await startCniServer({
    socketPath: socket,
    onProblem: (what) => problems.push(what),
    beforeAnswer: (req, outcome) => {
      // The client cannot have the answer yet: it is written after this returns.
      seen.push(`${req.env.CNI_COMMAND} ${outcome.exitCode} answered=${answered}`);
      if (req.env.CNI_ARGS === 'THROW=1') throw new Error('hook failed');
    },
  });
  servers.push(server);
  const r = await request(socket, { CNI_COMMAND: 'VERSION' }, { cniVersion: '1.1.0' });
  answered = true;
  assert.equal(r.code, '0');
  assert.ok(Array.isArray(r.body.supportedVersions));
  const t = await request(socket, { CNI_COMMAND: 'VERSION', CNI_ARGS: 'THROW=1' }, { cniVersion: '1.1.0' });
  assert.equal(t.code, '0', 'the answer goes out although the hook threw');
  assert.deepEqual(seen, ['VERSION 0 answered=false', 'VERSION 0 answered=true']);
  assert.deepEqual(problems, ['before answering VERSION']);
});

test('an asynchronous beforeAnswer: the answer waits for it, and goes out at its bound when it does not finish', { skip }, async () => {
  const socket = join(dir, 'd.sock');
  const problems: string[] = [];
  const server = await startCniServer({
    socketPath: socket,
    beforeAnswerTimeoutMs: 300,
    onProblem: (what) => problems.push(what),
    beforeAnswer: (req) => {
      if (req.env.CNI_ARGS === 'HANG=1') return new Promise<void>(() => {}); // never settles
      if (req.env.CNI_ARGS === 'REJECT=1') return Promise.reject(new Error('hook failed'));
      return new Promise<void>((r) => setTimeout(r, 100));
    },
  });
  servers.push(server);
  const ok = await request(socket, { CNI_COMMAND: 'VERSION' }, { cniVersion: '1.1.0' });
  assert.equal(ok.code, '0');
  assert.ok(ok.ms >= 95, `waited for the hook (${ok.ms} ms)`);
  const hung = await request(socket, { CNI_COMMAND: 'VERSION', CNI_ARGS: 'HANG=1' }, { cniVersion: '1.1.0' });
  assert.equal(hung.code, '0', 'answered at the bound');
  assert.ok(hung.ms >= 295 && hung.ms < 3_000, `${hung.ms} ms`);
  const rej = await request(socket, { CNI_COMMAND: 'VERSION', CNI_ARGS: 'REJECT=1' }, { cniVersion: '1.1.0' });
  assert.equal(rej.code, '0', 'a rejected hook does not fail the answer');
  assert.equal(problems.length, 2);
  assert.match(problems[0]!, /still busy after 300 ms/);
  assert.equal(problems[1], 'before answering VERSION');
});
