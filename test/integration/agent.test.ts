// The agent's own duties beyond serving CNI (which the CNI suite's patu-agent
// flavour covers): switching acceleration on, watching a services file into the
// maps, keeping the last good state on a bad file, and leaving pinned state in
// place across a restart. Needs root; uses its own cgroup, pins and socket.
// Runs in both modes (test/helpers/agent-proc.ts): PATU_TEST_SPLIT=1 starts `patu manager`
// + `patu agent --manager` instead, and the same assertions hold.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PATU_BIN, isRoot } from '../helpers/cni.js';
import { scratchForTests } from '../helpers/kernel.js';
import { MODE, startAgentProc, type AgentProc } from '../helpers/agent-proc.js';

const scratch = scratchForTests('patu-test-agt');
const pinRoot = scratch.pinRoot();
let cgroup = '';
const dir = scratch.tmpDir('patu-agent-test');
const socket = join(dir, 'agent.sock');
const servicesFile = join(dir, 'services.yaml');
const skip = !isRoot() ? 'needs root (eBPF, cgroups)' : !existsSync(PATU_BIN) ? `${PATU_BIN} not built (scripts/build.sh)` : false;

let agent: AgentProc | undefined;
let log = '';

async function startAgent(): Promise<void> {
  const a = startAgentProc(['--cni-socket', socket, '--accel', '--services-file', servicesFile, '--cgroup', cgroup, '--pin-root', pinRoot], {
    dir,
    // Split mode: the manager's limits must admit this file's backends.
    managerArgs: ['--cluster-cidr', '10.0.0.0/8'],
  });
  agent = a;
  log = '';
  a.onOutput(() => (log = a.log));
  await a.ready();
}

async function stopAgent(): Promise<void> {
  if (!agent) return;
  await agent.stop();
  log = agent.log;
  agent = undefined;
}

async function waitFor(cond: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}; agent log:\n${log}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function status(): any {
  const r = spawnSync(PATU_BIN, ['status', '--json', '--pin-root', pinRoot, '--data-dir', join(dir, 'none')], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout);
}

const backendsOf = (s: any, vip: string): string[] =>
  (s.services ?? []).filter((x: any) => x.vip === vip).flatMap((x: any) => x.backends.map((b: any) => `${b.ip}:${b.port}`)).sort();

const file = (vip: string, ips: string[]) =>
  `services:\n  - name: web\n    clusterIP: ${vip}\n    ports: [{ port: 80, targetPort: 8080 }]\n    endpoints:\n${ips.map((ip) => `      - ip: ${ip}\n`).join('')}`;

before(() => {
  if (skip) return;
  cgroup = scratch.cgroup();
  scratch.defer('agent', stopAgent);
  writeFileSync(servicesFile, file('10.96.7.1', ['10.251.7.2', '10.251.7.3']));
});

test(`agent (${MODE}): --accel and --services-file program the node; edits apply; a bad file keeps the last good state`, { skip }, async () => {
  await startAgent();
  let s = status();
  assert.equal(s.accel.enabled, true, 'acceleration switched on');
  assert.equal(s.accel.attached, true, 'sock_ops attached');
  assert.deepEqual(backendsOf(s, '10.96.7.1'), ['10.251.7.2:8080', '10.251.7.3:8080']);

  writeFileSync(servicesFile, file('10.96.7.1', ['10.251.7.4']));
  await waitFor(() => backendsOf(status(), '10.96.7.1').join() === '10.251.7.4:8080', 5_000, 'edited file applied');

  writeFileSync(servicesFile, 'services: [ { name: broken, clusterIP: nope } ]\n');
  await waitFor(() => log.includes('services file rejected'), 5_000, 'bad file reported');
  assert.match(log, /services\[0\]\.clusterIP/, 'the error names the entry and field');
  s = status();
  assert.deepEqual(backendsOf(s, '10.96.7.1'), ['10.251.7.4:8080'], 'last good state stays programmed');
});

test(`agent (${MODE}): stopping keeps pinned state; a restart reuses it without duplicate attachments`, { skip }, async () => {
  await stopAgent();
  let s = status();
  assert.equal(s.accel.attached, true, 'acceleration stays attached while the agent is down');
  assert.deepEqual(backendsOf(s, '10.96.7.1'), ['10.251.7.4:8080'], 'services stay programmed while the agent is down');

  writeFileSync(servicesFile, file('10.96.7.1', ['10.251.7.5', '10.251.7.6']));
  await startAgent();
  await waitFor(() => backendsOf(status(), '10.96.7.1').length === 2, 5_000, 'file applied after restart');
  s = status();
  assert.deepEqual(backendsOf(s, '10.96.7.1'), ['10.251.7.5:8080', '10.251.7.6:8080']);
  // One set of cgroup programs on our cgroup, not one per agent start.
  const attached = spawnSync('bpftool', ['cgroup', 'show', cgroup], { encoding: 'utf8' }).stdout;
  for (const prog of ['patu_connect4', 'patu_sockops']) {
    const n = attached.split('\n').filter((l) => l.includes(prog)).length;
    assert.equal(n, 1, `${prog} attached ${n} times to ${cgroup}:\n${attached}`);
  }
});
