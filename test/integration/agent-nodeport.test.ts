// The agent (bin/patu agent --services-file --service-cidr), run inside a netns
// this test makes as its "node": NodePorts on the netns' addresses and on
// 127.0.0.1, an address added later, the service CIDR refused, the
// healthCheckNodePort served, and a second service asking for a taken nodePort
// reported while the first keeps working. Needs root. Creates only (removed
// after the file, also on failure): netns patu-test-svcsock-agt-<pid>, the cgroup
// of that name, pins /sys/fs/bpf/patu-test-svcsock-agt-<pid>, a temp directory.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PATU_BIN, isRoot } from '../helpers/cni.js';
import { scratchForTests } from '../helpers/kernel.js';

const scratch = scratchForTests('patu-test-svcsock-agt');
const NS = scratch.name();
const pinRoot = scratch.pinRoot();
let cgroup = '';
const dir = scratch.tmpDir('patu-svcsock-agent');
const servicesFile = join(dir, 'services.yaml');
const FIX = fileURLToPath(new URL('./fixtures/', import.meta.url));
const skip = !isRoot() ? 'needs root (eBPF, cgroups, netns)' : !existsSync(PATU_BIN) ? `${PATU_BIN} not built (scripts/build.sh)` : false;
const NODE = 'svcsock-node';
const NODE_IP = '192.168.81.1';
const LATER_IP = '192.168.81.2';
const HC_PORT = 32081;

let agent: ChildProcess | undefined;
let log = '';
const servers: ChildProcess[] = [];

function sh(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr}`);
  return r.stdout;
}

async function waitFor(cond: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}; agent log:\n${log}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

interface ClientResult { ok: number; byBackend: Record<string, number>; errors: Record<string, number>; peers: Record<string, number> }

function runClient(job: object): Promise<ClientResult> {
  const p = spawn('sh', ['-c', `echo $$ > ${cgroup}/cgroup.procs && exec ip netns exec ${NS} "$0" "$1" "$2"`, process.execPath, join(FIX, 'svc-client.js'), JSON.stringify(job)], { stdio: ['pipe', 'pipe', 'inherit'] });
  let out = '';
  p.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  return new Promise((resolve, reject) => p.on('exit', (code) => {
    try {
      resolve(JSON.parse(out.trim().split('\n').at(-1) ?? '') as ClientResult);
    } catch {
      reject(new Error(`client exited with ${code}: ${out}`));
    }
  }));
}

/** GET from inside the netns (outside the cgroup: the health check is plain HTTP on the node). */
function httpGet(url: string): { status: number; body: unknown } {
  const code = `fetch(${JSON.stringify(url)}).then(async (r) => console.log(JSON.stringify({ status: r.status, body: await r.json() })), (e) => console.log(JSON.stringify({ status: 0, body: String(e.cause?.code ?? e) })))`;
  return JSON.parse(sh('ip', ['netns', 'exec', NS, process.execPath, '-e', code]).trim()) as { status: number; body: unknown };
}

const lbService = (nodeName: string): string => `
  - name: shop
    namespace: it
    clusterIP: 10.96.81.1
    type: LoadBalancer
    externalTrafficPolicy: Local
    healthCheckNodePort: ${HC_PORT}
    loadBalancerIPs: [203.0.113.81]
    ports:
      - { port: 80, targetPort: 8080, nodePort: 30081 }
      - { port: 80, targetPort: 8080, nodePort: 30081, protocol: UDP }
    endpoints:
      - { ip: 10.81.0.1, nodeName: ${nodeName} }
`;
const rival = `
  - name: rival
    namespace: it
    clusterIP: 10.96.81.2
    type: NodePort
    ports: [{ port: 80, targetPort: 8080, nodePort: 30081 }]
    endpoints: [{ ip: 10.81.0.1 }]
`;

before(async () => {
  if (skip) return;
  cgroup = scratch.cgroup();
  scratch.netns(NS);
  for (const ip of ['10.81.0.1', NODE_IP]) sh('ip', ['-n', NS, 'addr', 'add', `${ip}/32`, 'dev', 'lo']);
  const srv = spawn('ip', ['netns', 'exec', NS, process.execPath, join(FIX, 'svc-server.js'), JSON.stringify([{ ip: '10.81.0.1', port: 8080 }])], { stdio: ['pipe', 'pipe', 'inherit'] });
  servers.push(srv);
  scratch.defer('servers', () => servers.forEach((s) => s.kill('SIGKILL')));
  await new Promise<void>((resolve, reject) => {
    srv.stdout!.on('data', (d: Buffer) => d.toString().includes('ready') && resolve());
    srv.on('exit', (c) => reject(new Error(`server exited ${c}`)));
  });
  writeFileSync(servicesFile, `services:${lbService(NODE)}`);
  // nsenter, not `ip netns exec`: that mounts a fresh /sys, hiding bpffs and cgroup2 from the agent.
  agent = spawn('nsenter', [`--net=/run/netns/${NS}`, PATU_BIN, 'agent', '--cni-socket', join(dir, 'agent.sock'), '--services-file', servicesFile,
    '--service-cidr', '10.96.0.0/12', '--cgroup', cgroup, '--pin-root', pinRoot], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NODE_NAME: NODE } });
  agent.stdout!.setEncoding('utf8').on('data', (d: string) => (log += d));
  agent.stderr!.setEncoding('utf8').on('data', (d: string) => (log += d));
  scratch.defer('agent', async () => {
    if (!agent) return;
    const exited = new Promise((r) => agent!.once('exit', r));
    agent.kill('SIGTERM');
    await Promise.race([exited, new Promise((r) => setTimeout(r, 5_000))]);
    agent.kill('SIGKILL');
  });
  await waitFor(() => log.includes('serving CNI requests') && log.includes('serving healthCheckNodePort'), 15_000, 'agent start');
});

test('agent in a netns: the NodePort answers on its address and 127.0.0.1 (TCP, UDP), the LB IP too; the service CIDR is refused', { skip }, async () => {
  for (const [host, port] of [[NODE_IP, 30081], ['127.0.0.1', 30081], ['203.0.113.81', 80], ['10.96.81.1', 80]] as const) {
    const t = await runClient({ mode: 'tcp', host, port, count: 3 });
    assert.deepEqual(t.errors, {}, `TCP ${host}:${port}`);
    assert.deepEqual(t.byBackend, { '10.81.0.1:8080': 3 });
    const u = await runClient({ mode: 'udp', host, port, count: 2 });
    assert.deepEqual(u.errors, {}, `UDP ${host}:${port}`);
  }
  const refused = await runClient({ mode: 'tcp', host: '10.96.81.1', port: 81, count: 2 });
  assert.deepEqual(refused.errors, { ECONNREFUSED: 2 });
  const st = JSON.parse(sh(PATU_BIN, ['status', '--json', '--pin-root', pinRoot, '--data-dir', join(dir, 'none')])) as { serviceSettings: { serviceCidr: string; nodeAddresses: string[] } };
  assert.equal(st.serviceSettings.serviceCidr, '10.96.0.0/12');
  assert.deepEqual(st.serviceSettings.nodeAddresses, ['10.81.0.1', '127.0.0.1', NODE_IP].sort());
});

test('agent: an address added to the node answers the NodePort, and the log says so', { skip }, async () => {
  sh('ip', ['-n', NS, 'addr', 'add', `${LATER_IP}/32`, 'dev', 'lo']);
  await waitFor(() => log.includes(LATER_IP), 5_000, 'the address change in the log');
  const r = await runClient({ mode: 'tcp', host: LATER_IP, port: 30081, count: 2 });
  assert.deepEqual(r.errors, {});
});

test('agent: healthCheckNodePort says 200 with the local endpoint, 503 once the endpoint is on another node', { skip }, async () => {
  const ok = httpGet(`http://${NODE_IP}:${HC_PORT}/healthz`);
  assert.deepEqual(ok, { status: 200, body: { service: { namespace: 'it', name: 'shop' }, localEndpoints: 1, serviceProxyHealthy: true } });
  writeFileSync(servicesFile, `services:${lbService('elsewhere')}`);
  await waitFor(() => httpGet(`http://${NODE_IP}:${HC_PORT}/`).status === 503, 5_000, '503');
  // The socket-level NodePort still serves in-node clients with every endpoint (kube-proxy's short-circuit).
  const r = await runClient({ mode: 'tcp', host: NODE_IP, port: 30081, count: 2 });
  assert.deepEqual(r.errors, {});
});

test('agent: a second service asking for a taken nodePort is refused with a clear error; the first keeps working', { skip }, async () => {
  // In one file the validator refuses it outright (the last good content stays).
  writeFileSync(servicesFile, `services:${lbService(NODE)}${rival}`);
  await waitFor(() => /nodePort 0\.0\.0\.0:30081\/TCP is already used by services\[0\]\.ports\[0\]\.nodePort/.test(log), 5_000, 'the conflict in the log');
  const r = await runClient({ mode: 'tcp', host: NODE_IP, port: 30081, count: 2 });
  assert.deepEqual(r.errors, {});
  const rivalIp = await runClient({ mode: 'tcp', host: '10.96.81.2', port: 80, count: 1 });
  assert.deepEqual(rivalIp.errors, { ECONNREFUSED: 1 }, 'the rival is not half-programmed (its ClusterIP is refused as unknown)');
});
