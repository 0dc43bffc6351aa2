// What the Kubernetes benches share (bench/k8s-proxy.ts, bench/nodeport.ts): an admin API client for bulk
// writes, Services with hand-written EndpointSlices, patu's agent started with its ServiceAccount token, small
// HTTP/metrics readers and the machine-load note.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { Agent, request } from 'node:https';
import { get as httpGet } from 'node:http';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import YAML from 'yaml';
import { NODE, freePort, type TestCluster } from '../../test/helpers/k8s-cluster.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));

export const now = (): number => performance.now();
export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The apiserver with the admin client certificate; `concurrency` requests in flight at most. */
export class Api {
  private readonly agent: Agent;
  constructor(private readonly base: string, pki: string, concurrency: number) {
    this.agent = new Agent({
      keepAlive: true, maxSockets: concurrency,
      ca: readFileSync(join(pki, 'ca.crt')), cert: readFileSync(join(pki, 'admin.crt')), key: readFileSync(join(pki, 'admin.key')),
    });
  }
  call<T = any>(method: string, path: string, body?: unknown, contentType = 'application/json'): Promise<T> {
    const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    return new Promise<T>((resolve, reject) => {
      const req = request(this.base + path, {
        method, agent: this.agent, timeout: 30_000,
        headers: { Accept: 'application/json', ...(data ? { 'Content-Type': contentType, 'Content-Length': data.length } : {}) },
      }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          if ((res.statusCode ?? 0) >= 300) reject(new Error(`${method} ${path}: HTTP ${res.statusCode}: ${text.slice(0, 300)}`));
          else resolve(text ? JSON.parse(text) : undefined);
        });
        res.on('error', reject);
      });
      req.on('timeout', () => req.destroy(new Error(`${method} ${path}: no answer in 30 s`)));
      req.on('error', reject);
      req.end(data);
    });
  }
  close(): void {
    this.agent.destroy();
  }
}

/** Runs `job(i)` for i in [0, n) with `concurrency` in flight. */
export async function inParallel(n: number, concurrency: number, job: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (next < n) await job(next++);
  }));
}

// ---------------------------------------------------------------- Services with hand-written EndpointSlices

// What the endpointslice controller sets: kube-proxy then reports its network programming latency.
export const TRIGGER = 'endpoints.kubernetes.io/last-change-trigger-time';
export const endpointsOf = (ips: string[]) => ips.map((ip) => ({ addresses: [ip], conditions: { ready: true, serving: true, terminating: false } }));

export interface PortSpec {
  port: number;
  targetPort: number;
  /** Set: a NodePort Service on this node port. */
  nodePort?: number;
}

export const serviceBody = (ns: string, name: string, p: PortSpec) => ({
  apiVersion: 'v1', kind: 'Service',
  metadata: { name, namespace: ns },
  // No selector: the endpoints come from the slice below, as for any service without pods.
  spec: {
    type: p.nodePort ? 'NodePort' : 'ClusterIP',
    ports: [{ name: 'p', port: p.port, protocol: 'TCP', targetPort: p.targetPort, ...(p.nodePort ? { nodePort: p.nodePort } : {}) }],
  },
});

export const sliceBody = (ns: string, s: { name: string; uid: string; ips: string[] }, targetPort: number) => ({
  apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice',
  metadata: {
    name: `${s.name}-1`, namespace: ns,
    annotations: { [TRIGGER]: new Date().toISOString() },
    labels: { 'kubernetes.io/service-name': s.name, 'endpointslice.kubernetes.io/managed-by': 'patu-bench' },
    // The garbage collector deletes the slice with its Service, as for a controller-made slice.
    ownerReferences: [{ apiVersion: 'v1', kind: 'Service', name: s.name, uid: s.uid }],
  },
  addressType: 'IPv4',
  endpoints: endpointsOf(s.ips),
  ports: [{ name: 'p', port: targetPort, protocol: 'TCP' }],
});

export interface Svc {
  name: string;
  vip: string;
  uid: string;
  ips: string[];
}

/**
 * POST that survives a dropped connection (the apiserver at load ~10 hangs up now and then): retried, and an
 * object that the lost attempt did create (409) is read back instead.
 */
async function create<T>(api: Api, collection: string, name: string, body: unknown): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await api.call<T>('POST', collection, body);
    } catch (e) {
      if (/HTTP 409/.test((e as Error).message) && attempt > 1) return api.call<T>('GET', `${collection}/${name}`);
      if (attempt >= 5 || /HTTP 4\d\d/.test((e as Error).message)) throw e;
      await sleep(500 * attempt);
    }
  }
}

/** A Service and its one EndpointSlice with `ips` as ready endpoints. */
export async function createService(api: Api, ns: string, name: string, p: PortSpec, ips: string[]): Promise<Svc> {
  const svc = await create<any>(api, `/api/v1/namespaces/${ns}/services`, name, serviceBody(ns, name, p));
  const s: Svc = { name, vip: svc.spec.clusterIP, uid: svc.metadata.uid, ips };
  await create(api, `/apis/discovery.k8s.io/v1/namespaces/${ns}/endpointslices`, `${name}-1`, sliceBody(ns, s, p.targetPort));
  return s;
}

// ---------------------------------------------------------------- patu's agent against the cluster

/** The ServiceAccount, ClusterRole and ClusterRoleBinding of deploy/patu.yaml, nothing else. */
function rbacDocs(): object {
  const docs = YAML.parseAllDocuments(readFileSync(join(ROOT, 'deploy', 'patu.yaml'), 'utf8')).map((d) => d.toJS() as { kind?: string });
  const keep = docs.filter((d) => d && ['ServiceAccount', 'ClusterRole', 'ClusterRoleBinding'].includes(d.kind ?? ''));
  if (keep.length !== 3) throw new Error(`deploy/patu.yaml: expected a ServiceAccount, ClusterRole and ClusterRoleBinding, found ${keep.map((d) => d.kind).join(', ')}`);
  return { apiVersion: 'v1', kind: 'List', items: keep };
}

/**
 * A kubeconfig for patu's agent: its ServiceAccount with deploy/patu.yaml's least-privilege role and a bound
 * token (no admin credentials), written to `dir`.
 */
export function agentKubeconfig(cluster: TestCluster, dir: string): string {
  cluster.must(['apply', '-f', '-'], JSON.stringify(rbacDocs()));
  const token = cluster.must(['create', 'token', 'patu', '-n', 'kube-system', '--duration=2h']).trim();
  const kubeconfig = join(dir, 'patu.kubeconfig');
  writeFileSync(kubeconfig, YAML.stringify({
    apiVersion: 'v1', kind: 'Config',
    clusters: [{ name: 'bench', cluster: { server: cluster.apiServer, 'certificate-authority': join(cluster.state, 'pki', 'ca.crt') } }],
    users: [{ name: 'patu', user: { token } }],
    contexts: [{ name: 'bench', context: { cluster: 'bench', user: 'patu' } }],
    'current-context': 'bench',
  }), { mode: 0o600 });
  return kubeconfig;
}

export interface AgentRun {
  child: ChildProcess;
  metricsPort: number;
  logFile: string;
}

/**
 * `patu agent --kubernetes` (bin/patu) with its programs on `cgroup` and its pins under `pinRoot`; resolves
 * once /readyz answers 200 (programmed). BENCH_AGENT_NODE_ARGS="--cpu-prof --cpu-prof-dir=/tmp/x" runs it
 * under node with those flags instead (NODE_OPTIONS refuses --cpu-prof); the profile is written when it stops.
 */
export async function startAgent(o: { kubeconfig: string; pinRoot: string; cgroup: string; dir: string; extraArgs?: string[]; readyMs?: number; nodeName?: string }): Promise<AgentRun> {
  const metricsPort = await freePort();
  const logFile = join(o.dir, 'agent.log');
  const fd = openSync(logFile, 'a');
  const nodeArgs = process.env.BENCH_AGENT_NODE_ARGS?.split(' ').filter(Boolean);
  const [cmd, pre] = nodeArgs ? [process.execPath, [...nodeArgs, join(ROOT, 'dist', 'src', 'cli', 'index.js')]] : [join(ROOT, 'bin', 'patu'), []];
  const child = spawn(cmd, [
    ...pre, 'agent', '--kubernetes', '--kubeconfig', o.kubeconfig, '--node-name', o.nodeName ?? NODE, '--cluster-cidr', '10.202.0.0/16',
    '--cni-conf-dir', '', '--pin-root', o.pinRoot, '--cgroup', o.cgroup, '--metrics-addr', `127.0.0.1:${metricsPort}`,
    '--cni-socket', join(o.dir, 'agent.sock'), '--node-routing', 'off', ...(o.extraArgs ?? []),
  ], {
    stdio: ['ignore', fd, fd],
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin' },
  });
  closeSync(fd);
  await waitReady(`http://127.0.0.1:${metricsPort}/readyz`, o.readyMs ?? 60_000, child, logFile);
  return { child, metricsPort, logFile };
}

/** SIGTERM, then SIGKILL after `ms`; resolves once the process is gone. */
export async function stopChild(child: ChildProcess | undefined, ms = 10_000): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  const end = Date.now() + ms;
  while (child.exitCode === null && child.signalCode === null && Date.now() < end) await sleep(100);
  if (child.exitCode === null && child.signalCode === null) {
    child.kill('SIGKILL');
    while (child.exitCode === null && child.signalCode === null) await sleep(50);
  }
}

/** Resolves once `url` answers 200; rejects (with the log's tail) when `child` exits or `ms` passes. */
export async function waitReady(url: string, ms: number, child: ChildProcess, logFile: string): Promise<void> {
  const end = Date.now() + ms;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`${url}: the process exited (${child.exitCode}) before ready: ${readFileSync(logFile, 'utf8').slice(-2000)}`);
    try {
      await fetchText(url);
      return;
    } catch { /* not yet */ }
    if (Date.now() > end) throw new Error(`not ready after ${ms} ms (${url}): ${readFileSync(logFile, 'utf8').slice(-2000)}`);
    await sleep(200);
  }
}

// ---------------------------------------------------------------- readers

export function fetchText(url: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = httpGet(url, { timeout: 5000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => ((res.statusCode ?? 0) === 200 ? resolve(Buffer.concat(chunks).toString('utf8')) : reject(new Error(`GET ${url}: HTTP ${res.statusCode}`))));
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${url}: timeout`)));
    req.on('error', reject);
  });
}

/** A Prometheus gauge (the first series), from the text format; NaN when absent. */
export function gauge(text: string, name: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`));
  return line ? Number(line.slice(line.lastIndexOf(' ') + 1)) : NaN;
}

/** The machine is shared: load and how many OTHER clusters run (their apiservers), for the notes. */
export function otherLoad(ours: number): string {
  const apis = Number(spawnSync('pgrep', ['-c', '-x', 'kube-apiserver'], { encoding: 'utf8' }).stdout.trim() || 0) - ours;
  return `load average ${loadavg().map((x) => x.toFixed(2)).join(' ')}; other clusters' apiservers: ${apis}`;
}

/** Refuses to run next to another kube-proxy: its ports (10249/10256) and its iptables/nftables state are per host. */
export function assertNoOtherKubeProxy(who: string): void {
  const other = spawnSync('pgrep', ['-a', '-x', 'kube-proxy'], { encoding: 'utf8' }).stdout.trim();
  if (other) throw new Error(`${who}: another kube-proxy runs on this host (${other}); its ports and KUBE-* chains are per host`);
}
