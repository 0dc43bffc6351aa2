// podman -p HOSTPORT:CONTAINERPORT on the patu network (CNI backend): podman passes
// runtimeConfig.portMappings to patu (the conflist declares the capability), patu
// records the mapping, and patu's agent (--hostports, in this test's cgroup) makes
// 127.0.0.1:HOSTPORT reach the container's httpd. `podman rm -f` removes the record
// and the entry. Needs root and podman; skips, saying so, if podman passes no
// portMappings. Same private podman setup as podman.test.ts (own containers.conf,
// config dir, storage root); an own cgroup, pin root and agent socket.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { patuFlavour, type Flavour } from '../helpers/cni.js';
import { busyboxPath, PodmanSandbox, podmanSkipReason, ULIMITS } from '../helpers/podman.js';
import { scratchForTests } from '../helpers/kernel.js';
import { readProgrammed } from '../../src/dataplane/service-lb.js';
import { HOSTPORT_DIR } from '../../src/hostport/records.js';

const skip = podmanSkipReason('podman with the CNI backend, eBPF, cgroups') ?? patuFlavour().skipReason() ?? false;

const scratch = scratchForTests('patu-test-hostport-podman');
const HP = 45000 + (process.pid % 2000);
let f: Flavour;
let dir = '';
let CG = '';
let PIN = '';
let agent: ChildProcess | undefined;
let log = '';
const image = `localhost/hpbb-${process.pid}:latest`;
const name = `hpsrv-${process.pid}`;

// podman hands its environment to the plugins (libcni): bin/patu then forwards to this test's agent.
let sandbox: PodmanSandbox;
const podman = (args: string[], timeoutMs?: number) => sandbox.run(args, timeoutMs);
const show = PodmanSandbox.show;
const records = (): string[] => {
  const d = join(f.dataDir, HOSTPORT_DIR);
  return existsSync(d) ? readdirSync(d).filter((n) => n !== 'lock') : [];
};
const entries = (): string[] => (readProgrammed(PIN) ?? []).filter((s) => s.name.startsWith('patu:hostport/')).map((s) => `${s.vip}:${s.port}/${s.protocol}`);

async function waitFor(cond: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 50));
  }
  return true;
}

before(async () => {
  if (skip) return;
  f = patuFlavour();
  scratch.defer('test network', () => f.destroy());
  CG = scratch.cgroup();
  PIN = scratch.pinRoot();
  dir = scratch.tmpDir('patu-hp-podman');
  agent = spawn(f.bin, ['agent', '--cni-socket', join(dir, 'agent.sock'), '--hostports', '--cgroup', CG, '--pin-root', PIN, '--data-dir', f.dataDir], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin' },
  });
  agent.stdout!.setEncoding('utf8').on('data', (d: string) => (log += d));
  agent.stderr!.setEncoding('utf8').on('data', (d: string) => (log += d));
  scratch.defer('agent', async () => {
    if (!agent || agent.exitCode !== null) return;
    const exited = new Promise((r) => agent!.once('exit', r));
    agent.kill('SIGTERM');
    await Promise.race([exited, new Promise((r) => setTimeout(r, 5_000))]);
    agent.kill('SIGKILL');
  });
  assert.ok(await waitFor(() => log.includes('serving CNI requests'), 15_000), `agent start: ${log}`);

  sandbox = new PodmanSandbox(dir, { PATU_AGENT_SOCKET: join(dir, 'agent.sock') });
  // What patu's own conflist declares (src/cni/conflist.ts).
  const list = f.conflist();
  list.plugins[0] = { ...list.plugins[0], capabilities: { portMappings: true } };
  sandbox.configure(f.bin, f.netName, list);
  sandbox.importBusybox(image, ['sh', 'httpd'], { 'index.html': `hello from ${name}\n` });
  scratch.defer('podman state', () => {
    podman(['rm', '-f', '-t', '0', name]);
    podman(['rmi', '-f', image]);
  });
});
after(() => agent?.kill('SIGKILL'));

/** HTTP GET through 127.0.0.1:HP from a process in the test cgroup (where the agent's programs are attached). */
function get(): { status: number | null; out: string } {
  const r = spawnSync('sh', ['-c', `echo $$ > ${CG}/cgroup.procs && printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | exec ${busyboxPath} nc -w 3 127.0.0.1 ${HP}`], { encoding: 'utf8', timeout: 10_000 });
  return { status: r.status, out: `${r.stdout ?? ''}${r.stderr ?? ''}` };
}

test('podman -p HP:8080 on the patu network: 127.0.0.1:HP reaches the container; rm -f removes the mapping', { skip, timeout: 180_000 }, async (t) => {
  const run = podman(['run', '-d', '--name', name, '--network', f.netName, '-p', `${HP}:8080`, ...ULIMITS, image, '/bin/httpd', '-f', '-p', '8080', '-h', '/www']);
  assert.equal(run.status, 0, show(run));
  if (!(await waitFor(() => records().length > 0, 3_000))) {
    t.skip(`podman's CNI backend passed no portMappings to patu (no record under ${f.dataDir}/${HOSTPORT_DIR})`);
    return;
  }
  assert.deepEqual(records(), [`tcp-any-${HP}`]);
  assert.ok(await waitFor(() => entries().includes(`0.0.0.0:${HP}/TCP`), 5_000), `the agent programmed the entry: ${entries().join(' ')}; ${log.slice(-2000)}`);
  const r = get();
  assert.match(r.out, /200 OK/, `GET 127.0.0.1:${HP}: ${r.out}`);
  assert.ok(r.out.includes(`hello from ${name}`), r.out);

  const rm = podman(['rm', '-f', '-t', '0', name]);
  assert.equal(rm.status, 0, show(rm));
  assert.deepEqual(records(), [], 'podman rm -f (CNI DEL) removed the record');
  assert.ok(await waitFor(() => entries().length === 0, 5_000), `the agent removed the entry: ${entries().join(' ')}`);
});
