// Split mode's faults (issue 13), with the real processes: `patu manager` (root, its own
// cgroup and pins) and `patu agent --manager` (a services file), mutual TLS on a unix socket.
//   1. kill -9 of the manager under service churn: the services file is rewritten in a
//      bounded loop (seeded, so a failure replays), the manager is killed with SIGKILL in
//      the middle and restarted later; the agent reconnects with backoff and resyncs, and
//      the final maps (read from the pins with readProgrammed) equal the file's last state.
//      Edits made while the manager was down must be in the maps too: nothing is lost.
//   2. the agent killed (SIGKILL): the manager keeps the last state; an edit nobody sends
//      changes nothing; a new agent brings the maps back in step.
// Needs root (eBPF); uses its own cgroup, pins and directory (test/helpers/kernel.ts).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PATU_BIN, isRoot } from '../helpers/cni.js';
import { scratchForTests } from '../helpers/kernel.js';
import { startAgentProc, type AgentProc } from '../helpers/agent-proc.js';
import { readProgrammed } from '../../src/dataplane/service-lb.js';
import { seededRandom } from '../helpers/random.js';

const skip = !isRoot() ? 'needs root (eBPF, cgroups)' : !existsSync(PATU_BIN) ? `${PATU_BIN} not built (scripts/build.sh)` : false;
const scratch = scratchForTests('patu-test-splitf');
const dir = scratch.tmpDir('patu-split-faults');
const servicesFile = join(dir, 'services.yaml');
const SEED = Number(process.env.PATU_TEST_SEED ?? Date.now() % 1_000_000);
const SERVICES = 24;
const EDITS = 60;


type Desired = Map<string, string[]>;

/** A random file: a subset of the services, each with 1-4 backends; returns the file text and the map entries it means. */
function randomFile(r: () => number): { text: string; want: Desired } {
  const want: Desired = new Map();
  const lines = ['services:'];
  for (let i = 0; i < SERVICES; i++) {
    if (r() < 0.3) continue;
    const n = 1 + Math.floor(r() * 4);
    const ips = [...new Set(Array.from({ length: n }, () => `10.244.${i}.${1 + Math.floor(r() * 200)}`))].sort();
    const vip = `10.96.120.${i + 1}`;
    lines.push(`  - { name: s${i}, namespace: churn, clusterIP: ${vip}, ports: [{ port: 80, targetPort: 8080 }], endpoints: [${ips.map((ip) => `{ ip: ${ip} }`).join(', ')}] }`);
    want.set(`${vip}:80/TCP`, ips.map((ip) => `${ip}:8080`).sort());
  }
  if (lines.length === 1) lines[0] = 'services: []';
  return { text: `${lines.join('\n')}\n`, want };
}

/** Written whole and renamed into place, as an editor or a ConfigMap update does. */
function writeFile(text: string): void {
  writeFileSync(`${servicesFile}.tmp`, text);
  renameSync(`${servicesFile}.tmp`, servicesFile);
}

function programmed(pin: string): Desired {
  const m: Desired = new Map();
  for (const s of readProgrammed(pin) ?? []) {
    if (!s.vip.startsWith('10.96.120.')) continue;
    m.set(`${s.vip}:${s.port}/${s.protocol}`, s.backends.map((b) => `${b.ip}:${b.port}`).sort());
  }
  return m;
}

const show = (d: Desired): string => [...d].sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) => `${k}=${v.join(',')}`).join(' ');
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function until(what: string, cond: () => boolean, ms: number, log: () => string): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms: ${what} (seed ${SEED}); log tail:\n${log().slice(-3000)}`);
    await sleep(50);
  }
}

let proc: AgentProc | undefined;

function start(pin: string, cg: string): AgentProc {
  const p = startAgentProc(['--cni-socket', join(dir, 'cni.sock'), '--services-file', servicesFile, '--cgroup', cg, '--pin-root', pin, '--log-level', 'debug'], {
    dir,
    split: true,
    managerArgs: ['--cluster-cidr', '10.244.0.0/16'],
  });
  proc = p;
  return p;
}

test(`split faults: kill -9 of the manager under service churn; after its restart the maps equal the file (seed ${SEED})`, { skip, timeout: 180_000 }, async () => {
  const pin = scratch.pinRoot();
  const cg = scratch.cgroup();
  scratch.defer('split processes', async () => { await proc?.stop(); });
  const r = seededRandom(SEED);
  let last = randomFile(r);
  writeFile(last.text);
  const p = start(pin, cg);
  await p.ready(30_000);
  await until('first state programmed', () => show(programmed(pin)) === show(last.want), 20_000, () => p.log);

  const killAt = Math.floor(EDITS / 4);
  const restartAt = Math.floor(EDITS / 2);
  let atKill: Desired | undefined;
  let editsWhileDown = 0;
  for (let i = 0; i < EDITS; i++) {
    if (i === killAt) {
      p.main.kill('SIGKILL');
      await new Promise((res) => (p.main.exitCode !== null || p.main.signalCode !== null ? res(undefined) : p.main.once('exit', res)));
      atKill = programmed(pin);
    }
    if (i === restartAt) p.restartManager();
    last = randomFile(r);
    writeFile(last.text);
    if (i >= killAt && i < restartAt) editsWhileDown++;
    await sleep(20 + Math.floor(r() * 60));
  }
  assert.ok(editsWhileDown > 0);
  await until('the maps equal the file\'s last state', () => show(programmed(pin)) === show(last.want), 60_000, () => p.log);
  assert.equal(show(programmed(pin)), show(last.want));
  assert.notEqual(show(atKill!), show(last.want), 'the manager had work to catch up on (else this proves nothing)');
  assert.match(p.log, /data plane manager unreachable/, 'the agent noticed the manager was gone');
  assert.match(p.log, /reachable again|re-sending everything/, 'and re-sent its state to the new one');
  // The pinned state kept the services while the manager was down: the maps were never emptied.
  assert.ok(atKill!.size > 0);
});

test(`split faults: the agent killed, the manager keeps the last state; a new agent brings the maps back in step (seed ${SEED})`, { skip, timeout: 120_000 }, async () => {
  const pin = scratch.pinRoot('agentkill');
  const cg = scratch.cgroup('agentkill');
  await proc?.stop();
  const r = seededRandom(SEED + 1);
  const first = randomFile(r);
  writeFile(first.text);
  const p = start(pin, cg);
  await p.ready(30_000);
  await until('first state programmed', () => show(programmed(pin)) === show(first.want), 20_000, () => p.log);

  p.agent!.kill('SIGKILL');
  await new Promise((res) => p.agent!.once('exit', res));
  let next = randomFile(r);
  while (show(next.want) === show(first.want)) next = randomFile(r);
  writeFile(next.text);
  await sleep(1500);
  assert.equal(show(programmed(pin)), show(first.want), 'without an agent the manager keeps what it was last given');
  assert.equal(p.main.exitCode, null, 'the manager runs on');

  // A new agent (a new session) with the same manager: the maps follow the file again.
  p.restartAgent();
  await until('the new agent\'s state programmed', () => show(programmed(pin)) === show(next.want), 30_000, () => p.log);
});
