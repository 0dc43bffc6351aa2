// `patu agent --manager` as it runs in deploy/patu-split.yaml's agent container: a user
// that is not root, with no capabilities (setpriv), talking mutual TLS to a data-plane API
// server. Behind the server is an in-memory data plane (test/helpers/fake-dataplane.ts):
// what is under test is the agent (its sources, its mirror, its client, its certificates),
// not the manager (split-faults.test.ts runs the real one).
//   - the services file's state reaches the data plane, and edits follow as deltas;
//   - the policy file's state too (without node addresses: the manager fills in its own);
//   - the agent holds no capability and no bpf object, serves no CNI socket;
//   - the manager goes away and comes back empty on the same port: /readyz says so
//     meanwhile, then everything is re-sent and the new one holds the file's state;
//   - certificate rotation: new files in --tls-dir are used without a restart.
// Needs root only to drop to another user; all traffic is on loopback.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chownSync, existsSync, readdirSync, readFileSync, readlinkSync, writeFileSync, chmodSync, renameSync, cpSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { request } from 'node:http';
import { PATU_BIN, isRoot } from '../helpers/cni.js';
import { scratchForTests } from '../helpers/kernel.js';
import { FakeDataplane } from '../helpers/fake-dataplane.js';
import { startDataplaneServer, type DataplaneServer } from '../../src/rpc/server.js';
import { loadTlsDir, serverTlsOptions } from '../../src/rpc/tls.js';

const skip = !isRoot() ? 'needs root (to run the agent as another user without capabilities)' : !existsSync(PATU_BIN) ? `${PATU_BIN} not built` : false;
const UID = 65534;
const scratch = scratchForTests('patu-split-agent');
const dir = scratch.tmpDir('patu-split-agent');
chmodSync(dir, 0o755); // mkdtemp makes it 0700: the agent's user must reach the files
const tlsDir = join(dir, 'tls');
const servicesFile = join(dir, 'services.yaml');
const policyFile = join(dir, 'policy.yaml');
const quiet = { debug() {}, info() {}, warn() {}, error() {} };

const procs: ChildProcess[] = [];
after(() => {
  for (const p of procs) p.kill('SIGKILL');
});

function certs(into: string): void {
  const r = spawnSync(PATU_BIN, ['certs', 'generate', '--dir', into], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  for (const f of readdirSync(into)) chownSync(join(into, f), UID, UID);
  chownSync(into, UID, UID);
}

function services(ips: string[]): string {
  return `services:\n  - { name: web, namespace: it, clusterIP: 10.96.55.1, ports: [{ port: 80, targetPort: 8080 }], endpoints: [${ips.map((ip) => `{ ip: ${ip} }`).join(', ')}] }\n`;
}

const POLICY = `apiVersion: v1
kind: Namespace
metadata: { name: it, labels: { team: a } }
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: { namespace: it, name: deny-all }
spec: { podSelector: {} }
`;

async function waitFor(cond: () => boolean, ms: number, what: string, log: () => string): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}; agent log:\n${log().slice(-4000)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function readyz(port: number): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path: '/readyz' }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => (body += d)).on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

async function serve(dp: FakeDataplane, port = 0): Promise<DataplaneServer> {
  return startDataplaneServer({ listen: `tcp://127.0.0.1:${port}`, tls: serverTlsOptions(loadTlsDir(tlsDir, 'server')), impl: dp, log: quiet, closeGraceMs: 200 });
}

test('patu agent --manager, as an unprivileged user: the services and policy files reach the manager; it survives the manager going away; certificates rotate', { skip, timeout: 120_000 }, async () => {
  mkdirSync(tlsDir);
  certs(tlsDir);
  writeFileSync(servicesFile, services(['10.77.0.1']));
  writeFileSync(policyFile, POLICY);
  for (const f of [servicesFile, policyFile]) chmodSync(f, 0o644);
  let dp = new FakeDataplane();
  let server = await serve(dp);
  const port = server.port!;
  scratch.defer('data-plane API server', () => server.close());

  let log = '';
  const agent = spawn('setpriv', [`--reuid=${UID}`, `--regid=${UID}`, '--clear-groups', '--inh-caps=-all', '--bounding-set=-all', '--no-new-privs',
    PATU_BIN, 'agent', '--manager', `tcp://127.0.0.1:${port}`, '--tls-dir', tlsDir, '--services-file', servicesFile, '--policy-file', policyFile,
    '--service-cidr', '10.96.0.0/12', '--accel', '--metrics-addr', '127.0.0.1:0', '--log-level', 'debug'], { stdio: ['ignore', 'pipe', 'pipe'] });
  procs.push(agent);
  agent.stdout!.setEncoding('utf8').on('data', (d: string) => (log += d));
  agent.stderr!.setEncoding('utf8').on('data', (d: string) => (log += d));
  const getLog = () => log;

  await waitFor(() => dp.services.has('10.96.55.1:80/TCP') && dp.policy !== undefined, 20_000, 'the files\' state at the data plane', getLog);
  assert.deepEqual(dp.services.get('10.96.55.1:80/TCP')!.backends, ['10.77.0.1:8080']);
  assert.deepEqual(dp.policy!.policies.map((p) => p.metadata.name), ['deny-all']);
  assert.deepEqual(dp.policy!.nodeAddresses, [], 'no node addresses: the manager uses its own view');
  assert.equal(dp.acceleration, true, '--accel is forwarded');
  assert.equal(dp.node.serviceCidr, '10.96.0.0/12');
  const metricsPort = Number(/"port":(\d+)[^\n]*serving \/metrics/.exec(log)?.[1]);
  assert.ok(metricsPort > 0, 'metrics port in the log');
  assert.equal((await readyz(metricsPort)).status, 200);

  // No privileges, no kernel objects, no CNI socket.
  const st = readFileSync(`/proc/${agent.pid}/status`, 'utf8');
  // setpriv execs the launcher, which execs node: the pid is the agent's.
  assert.match(st, /^Uid:\s+65534\s/m);
  assert.match(st, /^CapEff:\s+0+$/m);
  assert.match(st, /^CapBnd:\s+0+$/m);
  const fds = readdirSync(`/proc/${agent.pid}/fd`).map((fd) => { try { return readlinkSync(`/proc/${agent.pid}/fd/${fd}`); } catch { return ''; } });
  assert.ok(!fds.some((l) => /bpf/.test(l)), `no bpf object held: ${fds.filter((l) => /bpf/.test(l)).join(' ')}`);
  assert.doesNotMatch(log, /serving CNI requests/);

  // An edit: a delta.
  writeFileSync(servicesFile, services(['10.77.0.1', '10.77.0.2']));
  await waitFor(() => dp.services.get('10.96.55.1:80/TCP')?.backends.length === 2, 10_000, 'the edit', getLog);
  assert.equal(dp.calls.filter((c) => c.method === 'applyServices').at(-1)!.full, false, `an edit is a delta: ${JSON.stringify(dp.calls, (_k, v) => typeof v === 'bigint' ? String(v) : v)}\n${log}`);

  // The manager goes away; the file changes meanwhile; a new, empty one comes back on the same port.
  await server.close();
  writeFileSync(servicesFile, services(['10.77.0.3']));
  await waitFor(() => /unreachable/.test(log), 20_000, 'the agent noticing', getLog);
  const down = await readyz(metricsPort);
  assert.equal(down.status, 503);
  assert.match(down.body, /data plane manager/);
  dp = new FakeDataplane();
  server = await serve(dp, port);
  await waitFor(() => dp.services.get('10.96.55.1:80/TCP')?.backends.join() === '10.77.0.3:8080' && dp.policy !== undefined && dp.acceleration === true, 30_000, 'the state re-sent to the new manager', getLog);
  assert.equal(dp.calls.find((c) => c.method === 'applyServices')!.full, true, 'a full resync first');
  assert.equal(dp.node.serviceCidr, '10.96.0.0/12');
  await waitFor(() => /reachable again/.test(log), 10_000, 'recovery logged', getLog);
  assert.equal((await readyz(metricsPort)).status, 200);

  // Rotation: a new certificate set (new CA) in place; the server switches to it; the agent follows without a restart.
  const next = join(dir, 'tls-next');
  mkdirSync(next);
  certs(next);
  for (const f of readdirSync(next)) {
    cpSync(join(next, f), join(tlsDir, `.${f}.tmp`), { preserveTimestamps: true });
    chownSync(join(tlsDir, `.${f}.tmp`), UID, UID);
    chmodSync(join(tlsDir, `.${f}.tmp`), f.endsWith('.key') ? 0o600 : 0o644);
    renameSync(join(tlsDir, `.${f}.tmp`), join(tlsDir, f));
  }
  server.setTls(serverTlsOptions(loadTlsDir(tlsDir, 'server')));
  await waitFor(() => /TLS files reloaded/.test(log), 20_000, 'the agent reloading its files', getLog);
  writeFileSync(servicesFile, services(['10.77.0.4']));
  await waitFor(() => dp.services.get('10.96.55.1:80/TCP')?.backends.join() === '10.77.0.4:8080', 20_000, 'a change after rotation', getLog);

  // The agent stops: the data plane keeps the last state.
  const exited = new Promise((r) => agent.once('exit', r));
  agent.kill('SIGTERM');
  await exited;
  assert.equal(dp.services.get('10.96.55.1:80/TCP')?.backends.join(), '10.77.0.4:8080');
});
