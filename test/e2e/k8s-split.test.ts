// deploy/patu-split.yaml on a real single-node cluster (scripts/k8s/cluster.sh up --no-cni, then
// `PATU_MANIFEST=patu-split cluster.sh deploy`: the manifest as shipped, host paths rendered):
//   - both containers ready; the agent runs as uid 65532 with no capability (CapEff and CapBnd 0, no new
//     privileges, a seccomp filter), holds no bpf object and mounts no host path; the manager wrote the
//     conflist with the Node's podCIDR (the agent sent it as a node setting);
//   - a Deployment behind a ClusterIP Service with a client connecting every 50 ms: scaling up and down,
//     and the DaemonSet pod deleted (manager and agent restarted together) mid-traffic: no failed connect;
//     the new agent's first push rewrites nothing (the manager answers mapOps 0).
// Needs root, the Kubernetes binaries and podman (as test/e2e/k8s-patu.test.ts; skips saying so).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import net from 'node:net';
import tls, { type ConnectionOptions } from 'node:tls';
import { join } from 'node:path';
import { REPO_ROOT } from '../helpers/cni.js';
import { ServiceClientLog, serviceClientPod } from '../helpers/svc-client.js';
import { TEST_IMAGE, TestCluster, clusterSkipReason, freePort, reapStaleClusters, until } from '../helpers/k8s-cluster.js';
import { generateCerts } from '../../src/rpc/certs.js';

const skip = clusterSkipReason() ?? (spawnSync('sh', ['-c', 'command -v podman'], { encoding: 'utf8' }).status !== 0 ? 'podman not installed (scripts/image.sh needs it)' : undefined);
const cluster = new TestCluster(process.pid, { PATU_MANIFEST: 'patu-split' });
const { state: STATE, cgroup: CGROUP, podCIDR: POD_CIDR } = cluster.names;
const PIN_ROOT = `/sys/fs/bpf/patu-test-${CGROUP}`;
const CONFLIST = join(STATE, 'cni', 'net.d', '10-patu.conflist');
const NS = 'default';

const WEB = {
  apiVersion: 'apps/v1', kind: 'Deployment', metadata: { name: 'web', namespace: NS },
  spec: {
    replicas: 2, selector: { matchLabels: { app: 'web' } },
    template: {
      metadata: { labels: { app: 'web' } },
      spec: {
        terminationGracePeriodSeconds: 10,
        containers: [{
          name: 'httpd', image: TEST_IMAGE, imagePullPolicy: 'Never',
          command: ['sh', '-c', 'mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www'],
          readinessProbe: { tcpSocket: { port: 8080 }, periodSeconds: 1 },
          lifecycle: { preStop: { exec: { command: ['sleep', '3'] } } },
        }],
      },
    },
  },
};
const SERVICE = { apiVersion: 'v1', kind: 'Service', metadata: { name: 'web', namespace: NS }, spec: { selector: { app: 'web' }, ports: [{ port: 80, targetPort: 8080 }] } };
const CLIENT = serviceClientPod(NS);
const client = new ServiceClientLog(cluster, NS);
const attempts = () => client.attempts();
const failures = (since: number) => client.failures(since);
const lastAttempt = () => client.lastAttempt();

function programmedBackends(): string[] {
  const r = spawnSync(join(REPO_ROOT, 'bin', 'patu'), ['services', 'list', '--json', '--pin-root', PIN_ROOT], { encoding: 'utf8', timeout: 20_000 });
  if (r.status !== 0) throw new Error(`patu services list: ${r.stderr}`);
  const s = (JSON.parse(r.stdout) as { services: { name: string; backends: { ip: string; port: number }[] }[] }).services;
  return (s.find((x) => x.name === `${NS}/web:80`)?.backends ?? []).map((b) => `${b.ip}:${b.port}`).sort();
}

function webPods(): { name: string; ip: string; ready: boolean; deleting: boolean }[] {
  return (JSON.parse(cluster.must(['get', 'pods', '-n', NS, '-l', 'app=web', '-o', 'json'])).items as any[]).map((p) => ({
    name: p.metadata.name, ip: p.status.podIP ?? '', deleting: Boolean(p.metadata.deletionTimestamp),
    ready: (p.status.conditions ?? []).some((c: any) => c.type === 'Ready' && c.status === 'True'),
  }));
}

async function scaleTo(n: number): Promise<void> {
  cluster.must(['scale', '-n', NS, 'deployment/web', `--replicas=${n}`]);
  await until(`${n} ready web pods, programmed as the Service's backends`, 120_000, () => {
    const pods = webPods();
    if (pods.length !== n || !pods.every((p) => p.ready && !p.deleting)) return undefined;
    return JSON.stringify(programmedBackends()) === JSON.stringify(pods.map((p) => `${p.ip}:8080`).sort()) ? true : undefined;
  });
}

const patuPod = (): { name: string; uid: string; ready: boolean } | undefined => {
  const live = (JSON.parse(cluster.must(['get', 'pods', '-n', 'kube-system', '-l', 'app.kubernetes.io/name=patu', '-o', 'json'])).items as any[]).filter((p) => !p.metadata.deletionTimestamp);
  if (live.length !== 1) return undefined;
  const p = live[0];
  return { name: p.metadata.name, uid: p.metadata.uid, ready: (p.status.conditions ?? []).some((c: any) => c.type === 'Ready' && c.status === 'True') };
};

/** The split agent's process on this machine (its command line names the manager). */
function agentPid(): number {
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const cmd = readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0');
      if (cmd.includes('agent') && cmd.some((a) => a === '--manager=tcp://127.0.0.1:9466') && cmd.some((a) => a === `--metrics-addr=127.0.0.1:${cluster.env.PATU_K8S_METRICS_PORT}`)) return Number(d);
    } catch { /* gone */ }
  }
  throw new Error('no split agent process found');
}

/** The manager's process on this machine (its command line names this cluster's pin root). */
function managerPid(): number {
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const cmd = readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0');
      if (cmd.includes('manager') && cmd.includes(`--pin-root=${PIN_ROOT}`)) return Number(d);
    } catch { /* gone */ }
  }
  throw new Error('no manager process found');
}

/** A TLS connection to the manager's API offering h2: did the handshake finish, the client's error, bytes the manager sent. */
function probeManager(opts: ConnectionOptions): Promise<{ secure: boolean; error?: string; bytes: number }> {
  return new Promise((resolve) => {
    let secure = false;
    let bytes = 0;
    let error: string | undefined;
    const s = tls.connect({ ...opts, host: '127.0.0.1', port: 9466, ALPNProtocols: ['h2'] }, () => {
      secure = true;
      s.write('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00');
    });
    const timer = setTimeout(() => s.destroy(), 10_000);
    s.on('data', (d: Buffer) => { bytes += d.length; s.destroy(); });
    s.on('error', (e: NodeJS.ErrnoException) => { error ??= e.code ?? e.message; });
    s.on('close', () => { clearTimeout(timer); resolve({ secure, ...(error ? { error } : {}), bytes }); });
  });
}

describe('patu from deploy/patu-split.yaml on a real cluster: an unprivileged agent, services, scaling, restart', { skip: skip ?? false }, () => {
  before(async () => {
    reapStaleClusters();
    cluster.env.PATU_K8S_METRICS_PORT = String(await freePort());
    await cluster.up(['--no-cni']);
  });
  after(() => {
    const d = cluster.down();
    if (!d.ok) console.error(`cluster.sh down failed: ${d.detail}`);
  });

  test('the split manifest installs patu: both containers ready, the agent without privileges, the conflist from the Node\'s podCIDR', () => {
    const d = cluster.script(['deploy'], 300_000);
    assert.ok(d.ok, `cluster.sh deploy (patu-split): ${d.detail}${cluster.logTail('kubelet')}`);
    const pod = patuPod()!;
    const statuses = JSON.parse(cluster.must(['get', 'pod', '-n', 'kube-system', pod.name, '-o', 'json'])).status.containerStatuses as any[];
    assert.deepEqual(statuses.map((s) => [s.name, s.ready]).sort(), [['agent', true], ['manager', true]]);
    assert.equal(JSON.parse(readFileSync(CONFLIST, 'utf8')).plugins[0].podCIDR, POD_CIDR, 'the manager wrote the conflist with the podCIDR the agent sent');

    const pid = agentPid();
    const st = readFileSync(`/proc/${pid}/status`, 'utf8');
    assert.match(st, /^Uid:\s+65532\s+65532\s+65532\s+65532$/m);
    assert.match(st, /^CapEff:\s+0+$/m);
    assert.match(st, /^CapBnd:\s+0+$/m);
    assert.match(st, /^NoNewPrivs:\s+1$/m);
    assert.match(st, /^Seccomp:\s+2$/m);
    const fds = readdirSync(`/proc/${pid}/fd`).map((fd) => { try { return readlinkSync(`/proc/${pid}/fd/${fd}`); } catch { return ''; } });
    assert.deepEqual(fds.filter((l) => /bpf/.test(l)), [], 'the agent holds no bpf object');
    const mounts = readFileSync(`/proc/${pid}/mountinfo`, 'utf8');
    assert.doesNotMatch(mounts, / \/sys\/fs\/bpf /, 'no bpffs in the agent\'s mounts');
    const log = cluster.must(['logs', '-n', 'kube-system', pod.name, '-c', 'agent']);
    assert.match(log, /"credentials":"serviceaccount /, 'the agent uses the projected ServiceAccount token');
    assert.match(log, /data plane manager in step/);
  });

  test('a Service under scaling and a restart of the DaemonSet pod: no failed connect; the new agent rewrites nothing', async () => {
    cluster.must(['apply', '-f', '-'], JSON.stringify({ apiVersion: 'v1', kind: 'List', items: [WEB, SERVICE] }));
    await scaleTo(2);
    cluster.must(['apply', '-f', '-'], JSON.stringify(CLIENT));
    await until('client answering', 120_000, () => (attempts().some((a) => a.ok) ? true : undefined));
    const mark = lastAttempt();
    await scaleTo(4);
    await scaleTo(1);
    const old = patuPod()!;
    cluster.must(['delete', 'pod', '-n', 'kube-system', old.name, '--wait=true']);
    const fresh = await until('a new, ready patu pod', 120_000, () => {
      const p = patuPod();
      return p && p.uid !== old.uid && p.ready ? p : undefined;
    });
    await scaleTo(3);
    await until('more attempts', 60_000, () => (lastAttempt() > mark + 200 ? true : undefined));
    assert.deepEqual(failures(mark), [], 'failed connects while scaling and across the restart');
    const log = await until('the new agent\'s first push answered', 60_000, () => {
      const l = cluster.must(['logs', '-n', 'kube-system', fresh.name, '-c', 'agent']);
      return /services programmed \(manager\)/.test(l) ? l : undefined;
    });
    const first = JSON.parse(log.split('\n').find((l) => l.includes('services programmed (manager)'))!) as { kind: string; mapOps: number; services: number };
    assert.equal(first.kind, 'resync');
    assert.ok(first.services >= 2, JSON.stringify(first));
    assert.equal(first.mapOps, 0, 'the restarted pair found the maps as they should be');
  });
  test('mutual TLS on the node: each container holds only its own key (no CA key anywhere); the manager refuses plaintext, no certificate and a foreign CA, logging why', async () => {
    const agent = agentPid();
    const manager = managerPid();
    const files = (pid: number) => readdirSync(`/proc/${pid}/root/tls`).filter((n) => !n.startsWith('..')).sort();
    assert.deepEqual(files(agent), ['ca.crt', 'client.crt', 'client.key'], 'the agent sees its own pair and the CA certificate only');
    assert.deepEqual(files(manager), ['ca.crt', 'server.crt', 'server.key'], 'the manager sees its own pair and the CA certificate only');
    const key = statSync(`/proc/${agent}/root/tls/client.key`);
    assert.equal(key.mode & 0o777, 0o600);
    assert.equal(key.uid, 65532, 'the agent\'s key belongs to the agent\'s user');
    const read = (pid: number, f: string) => readFileSync(`/proc/${pid}/root/tls/${f}`);
    const ca = read(manager, 'ca.crt');
    const base = { ca, servername: 'patu-manager', minVersion: 'TLSv1.3' as const };

    // the agent's own files get in (so the refusals below are about the certificate, not the path)
    const good = await probeManager({ ...base, cert: read(agent, 'client.crt'), key: read(agent, 'client.key') });
    assert.ok(good.secure && good.bytes > 0, `the agent's certificate is answered: ${JSON.stringify(good)}`);
    const none = await probeManager(base);
    assert.equal(none.error, 'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED');
    const foreign = await generateCerts();
    const f = await probeManager({ ...base, cert: foreign.client.cert, key: foreign.client.key });
    assert.ok(f.secure && f.bytes === 0, `a foreign CA's certificate: closed after the handshake, not one byte: ${JSON.stringify(f)}`);
    const plain = await new Promise<number>((resolve) => {
      let n = 0;
      const c = net.connect(9466, '127.0.0.1', () => c.write('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'));
      c.on('data', (d) => { n += d.length; });
      c.on('error', () => {});
      c.on('close', () => resolve(n));
    });
    assert.equal(plain, 0, 'plaintext gets nothing');

    const log = await until('the refusals in the manager\'s log', 30_000, () => {
      const l = cluster.must(['logs', '-n', 'kube-system', patuPod()!.name, '-c', 'manager']);
      const refused = l.split('\n').filter((x) => x.includes('connection refused'));
      return ['no client certificate', 'a foreign CA', 'plaintext'].every((r) => refused.some((x) => x.includes(r))) ? l : undefined;
    });
    assert.doesNotMatch(log, /PRIVATE KEY|BEGIN CERTIFICATE/, 'no certificate or key bytes in the manager\'s log');
  });
});
