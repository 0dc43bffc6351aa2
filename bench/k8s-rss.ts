// RSS of the REAL agent process (`bin/patu agent --kubernetes`, as deployed: NetworkPolicy on)
// against a real kube-apiserver + etcd on loopback: idle (synced, only default/kubernetes), then
// after 1,000 and 10,000 ClusterIP Services, each with an EndpointSlice of 3 ready endpoints, all
// programmed into the agent's pinned service map. RSS_KIND=pods measures the cluster-wide Pod watch
// of NetworkPolicy instead: 1,000 and 10,000 Running pods (labels, 2 named container ports, an
// address), 1 in 20 on the agent's node (the rest on 20 other nodes), in 10 namespaces, with
// 10 NetworkPolicies selecting them; each point waits until the agent's policy state has them all
// (its names file lists the local pods as endpoints). The agent uses a least-privilege token (the rules of
// deploy/patu.yaml), its own pin root and cgroup, no CNI conflist. Each point is read after the
// agent has been quiet for SETTLE_MS; the agent is never asked to collect garbage, so the numbers
// are what it keeps in practice. Node's own floor (an idle `node -e`) is measured in the same run.
//
//   bash scripts/build.sh && node dist/bench/k8s-rss.js [--json]     (root; kube-apiserver and etcd
//   from /var/cache/patu/k8s/<version>/bin or $PATU_K8S_BIN_DIR, as scripts/k8s/build.sh leaves them)
//   RSS_KIND=services|pods  RSS_COUNTS=1000,10000  RSS_SETTLE_MS=5000  RSS_CONCURRENCY=16  RSS_MAPS=1 (RSS by mapping, from smaps)
//   RSS_THREADS=1 (the agent's CPU so far per thread)
//   RSS_AGENT_NODE_ARGS="--max-semi-space-size=1 ..." runs `node <args> dist/src/cli/index.js agent`
//   instead of bin/patu (to compare V8 flags; bin/patu passes its own); RSS_AGENT_SCRIPT=<file.js> runs
//   that script instead of dist/src/cli/index.js; RSS_AGENT_ENV="K=V ..." adds to the agent's environment.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { Agent, request } from 'node:https';
import { get as httpGet } from 'node:http';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readProgrammed } from '../src/dataplane/service-lb.js';
import { policyNamesPath } from '../src/policy/names.js';
import { Scratch } from '../test/helpers/kernel.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const COUNTS = (process.env.RSS_COUNTS ?? '1000,10000').split(',').map(Number);
const KIND = process.env.RSS_KIND === 'pods' ? 'pods' : 'services';
/** Pods mode: every LOCAL_EVERY-th pod runs on the agent's node; namespaces and policies. */
const LOCAL_EVERY = 20;
const POD_NAMESPACES = 10;
const SETTLE_MS = Number(process.env.RSS_SETTLE_MS ?? 5000);
const CONC = Number(process.env.RSS_CONCURRENCY ?? 16);
const JSON_OUT = process.argv.includes('--json');
const scratch = new Scratch('patu-test-rss');
const PIN = scratch.pinRoot();
let CG = '';
const NODE = `patu-rss-node-${process.pid}`;
const TOKEN_ADMIN = `admin-${process.pid}-${Math.random().toString(36).slice(2)}`;
const TOKEN_AGENT = `agent-${process.pid}-${Math.random().toString(36).slice(2)}`;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const r1 = (n: number): number => Math.round(n * 10) / 10;
const log = (m: string): void => {
  if (!JSON_OUT) console.error(`k8s-rss: ${m}`);
};

function binDir(): string | undefined {
  if (process.env.PATU_K8S_BIN_DIR) return process.env.PATU_K8S_BIN_DIR;
  const cache = process.env.PATU_K8S_CACHE ?? '/var/cache/patu/k8s';
  for (const d of [join(cache, 'bin'), ...(existsSync(cache) ? readdirSync(cache).filter((v) => v.startsWith('v')).sort().reverse().map((v) => join(cache, v, 'bin')) : [])]) {
    if (existsSync(join(d, 'kube-apiserver'))) return d;
  }
  return undefined;
}

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
}

interface Mem {
  rssMB: number;
  /** Anonymous memory: V8 heap, malloc, thread stacks. */
  anonMB: number;
  /** File-backed: node's binary, shared libraries (libbpf, koffi's .node) as far as touched. */
  fileMB: number;
}

/** utime+stime of a process so far, seconds (CLK_TCK 100 on Linux x86-64). */
function cpuS(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / 100;
}

/** CPU seconds so far per thread (name:tid, RSS_THREADS=1): V8's GC helpers, libuv's pool, the CNI workers. */
function threadCpu(pid: number): Record<string, number> {
  const out: Record<string, number> = {};
  for (const t of readdirSync(`/proc/${pid}/task`)) {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${t}/stat`, 'utf8');
      const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      const cpu = (Number(f[11]) + Number(f[12])) / 100;
      if (cpu > 0) out[`${comm}:${t}`] = cpu;
    } catch { /* the thread ended */ }
  }
  return out;
}

function mem(pid: number): Mem {
  const s = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (k: string): number => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(s)?.[1] ?? NaN);
  return { rssMB: r1(kb('VmRSS') / 1024), anonMB: r1(kb('RssAnon') / 1024), fileMB: r1((kb('RssFile') + kb('RssShmem')) / 1024) };
}

class Api {
  private readonly agent = new Agent({ keepAlive: true, maxSockets: CONC, rejectUnauthorized: false });
  constructor(private readonly port: number) {}
  call(method: string, path: string, body?: unknown): Promise<{ status: number; json: any }> {
    return new Promise((resolve, reject) => {
      const data = body === undefined ? undefined : JSON.stringify(body);
      const r = request({ host: '127.0.0.1', port: this.port, path, method, agent: this.agent, timeout: 30_000,
        headers: { Authorization: `Bearer ${TOKEN_ADMIN}`, 'Content-Type': 'application/json', ...(data ? { 'Content-Length': Buffer.byteLength(data) } : {}) } }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString();
          let json: unknown = text;
          try { json = JSON.parse(text); } catch { /* readyz is text */ }
          resolve({ status: res.statusCode ?? 0, json });
        });
      });
      r.on('error', (e) => reject(new Error(`${method} ${path}: ${e.message}`)));
      r.on('timeout', () => r.destroy(new Error(`${method} ${path}: timeout`)));
      r.end(data);
    });
  }
  async must(method: string, path: string, body?: unknown): Promise<any> {
    const r = await this.call(method, path, body);
    if (r.status >= 300) throw new Error(`${method} ${path}: HTTP ${r.status}: ${JSON.stringify(r.json).slice(0, 300)}`);
    return r.json;
  }
  close(): void {
    this.agent.destroy();
  }
}

async function until(what: string, cond: () => boolean | Promise<boolean>, ms: number, alive?: () => string | undefined): Promise<void> {
  const end = Date.now() + ms;
  for (;;) {
    const dead = alive?.();
    if (dead) throw new Error(`waiting for ${what}: ${dead}`);
    try {
      if (await cond()) return;
    } catch { /* not yet */ }
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(200);
  }
}

/** RSS by mapping (smaps): which files and anonymous regions hold the resident pages. */
function byMapping(pid: number, top = 8): Record<string, number> {
  const sums = new Map<string, number>();
  let cur = '';
  for (const line of readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    const head = /^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \d+\s*(.*)$/.exec(line);
    if (head) {
      cur = head[1] || '[anon]';
      continue;
    }
    const rss = /^Rss:\s+(\d+) kB/.exec(line);
    if (rss) sums.set(cur, (sums.get(cur) ?? 0) + Number(rss[1]));
  }
  return Object.fromEntries([...sums].sort((x, y) => y[1] - x[1]).slice(0, top).map(([k, v]) => [k.replace(/^.*\/node_modules\//, ''), r1(v / 1024)]));
}

function httpText(url: string): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    httpGet(url, { timeout: 5000 }, (res) => {
      let t = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (t += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text: t }));
    }).on('error', reject);
  });
}

/** The agent's own view (prom-client default metrics): V8 heap used/total, external. */
async function heap(metricsUrl: string): Promise<{ heapUsedMB: number; heapTotalMB: number; externalMB: number }> {
  const { text } = await httpText(metricsUrl);
  const v = (name: string): number => r1(Number(new RegExp(`^${name} ([0-9.e+]+)$`, 'm').exec(text)?.[1] ?? NaN) / 1048576);
  return { heapUsedMB: v('patu_nodejs_heap_size_used_bytes'), heapTotalMB: v('patu_nodejs_heap_size_total_bytes'), externalMB: v('patu_nodejs_external_memory_bytes') };
}

/** Node itself doing nothing, same binary, same machine, same run: the floor. */
async function nodeFloor(args: string[]): Promise<number> {
  const p = spawn(process.execPath, [...args, '-e', 'setTimeout(() => {}, 1e6)'], { stdio: 'ignore' });
  await sleep(1500);
  const m = mem(p.pid!);
  p.kill('SIGKILL');
  return m.rssMB;
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('k8s-rss: needs root (BPF pins, cgroup)');
  const bin = binDir();
  if (!bin) throw new Error('k8s-rss: no kube-apiserver (build it with scripts/k8s/build.sh or set PATU_K8S_BIN_DIR)');
  const etcdBin = existsSync(join(bin, 'etcd')) ? join(bin, 'etcd') : 'etcd';
  // The floor first: a run cut short still has it.
  const floor = { node: await nodeFloor([]), nodeSemi1: await nodeFloor(['--max-semi-space-size=1']) };
  log(`Node's floor: ${floor.node} MB; with --max-semi-space-size=1: ${floor.nodeSemi1} MB`);
  const tmp = mkdtempSync(join(tmpdir(), 'patu-rss-'));
  const procs: ChildProcess[] = [];
  let agent: ChildProcess | undefined;
  let api: Api | undefined;
  // Ctrl-C or a timeout's SIGTERM: stop the children, so the wait in progress fails and the
  // finally below removes the pins, the cgroup and the temp dir.
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      log(`${sig}: stopping`);
      agent?.kill('SIGTERM');
      for (const p of procs) p.kill('SIGTERM');
    });
  }
  try {
    const [etcdPort, peerPort, apiPort, metricsPort] = [await freePort(), await freePort(), await freePort(), await freePort()];
    writeFileSync(join(tmp, 'tokens.csv'), `${TOKEN_ADMIN},rss-admin,1,"system:masters"\n${TOKEN_AGENT},rss-agent,2,\n`);
    const k = spawnSync('openssl', ['genrsa', '-out', join(tmp, 'sa.key'), '2048'], { encoding: 'utf8' });
    if (k.status !== 0) throw new Error(`openssl genrsa: ${k.stderr}`);
    procs.push(spawn(etcdBin, [`--data-dir=${join(tmp, 'etcd')}`, `--listen-client-urls=http://127.0.0.1:${etcdPort}`,
      `--advertise-client-urls=http://127.0.0.1:${etcdPort}`, `--listen-peer-urls=http://127.0.0.1:${peerPort}`,
      `--initial-advertise-peer-urls=http://127.0.0.1:${peerPort}`, `--initial-cluster=default=http://127.0.0.1:${peerPort}`], { stdio: 'ignore' }));
    const apiserver = spawn(join(bin, 'kube-apiserver'), [
      `--etcd-servers=http://127.0.0.1:${etcdPort}`, `--secure-port=${apiPort}`, '--bind-address=127.0.0.1',
      `--cert-dir=${join(tmp, 'certs')}`, `--token-auth-file=${join(tmp, 'tokens.csv')}`, '--authorization-mode=RBAC',
      '--service-account-issuer=https://kubernetes.default.svc', `--service-account-key-file=${join(tmp, 'sa.key')}`,
      `--service-account-signing-key-file=${join(tmp, 'sa.key')}`, '--service-cluster-ip-range=10.96.0.0/16',
      '--enable-priority-and-fairness=false', '--max-mutating-requests-inflight=400', '--v=0',
    ], { stdio: ['ignore', 'ignore', 'pipe'] });
    procs.push(apiserver);
    let apiErr = '';
    apiserver.stderr!.on('data', (d: Buffer) => { apiErr = (apiErr + d.toString()).slice(-3000); });
    api = new Api(apiPort);
    const a = api;
    await until('kube-apiserver /readyz', async () => (await a.call('GET', '/readyz')).status === 200, 90_000,
      () => (apiserver.exitCode !== null ? `kube-apiserver exited: ${apiErr}` : undefined));
    // The agent's permissions: those of deploy/patu.yaml's ClusterRole.
    await a.must('POST', '/apis/rbac.authorization.k8s.io/v1/clusterroles', {
      metadata: { name: 'patu-rss' },
      rules: [
        { apiGroups: [''], resources: ['services', 'pods', 'nodes', 'namespaces'], verbs: ['list', 'watch'] },
        { apiGroups: ['discovery.k8s.io'], resources: ['endpointslices'], verbs: ['list', 'watch'] },
        { apiGroups: ['networking.k8s.io'], resources: ['networkpolicies'], verbs: ['list', 'watch'] },
      ],
    });
    await a.must('POST', '/apis/rbac.authorization.k8s.io/v1/clusterrolebindings', {
      metadata: { name: 'patu-rss' },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'patu-rss' },
      subjects: [{ kind: 'User', name: 'rss-agent', apiGroup: 'rbac.authorization.k8s.io' }],
    });
    await a.must('POST', '/api/v1/nodes', { metadata: { name: NODE }, spec: { podCIDR: '10.244.0.0/24' } });
    await a.must('POST', '/api/v1/namespaces', { metadata: { name: 'rss' } });
    if (KIND === 'pods') {
      for (let n = 0; n < POD_NAMESPACES; n++) {
        await a.must('POST', '/api/v1/namespaces', { metadata: { name: `rss-${n}`, labels: { team: `t${n % 3}` } } });
        // No controller-manager to create it; the ServiceAccount admission wants it for a pod.
        await a.must('POST', `/api/v1/namespaces/rss-${n}/serviceaccounts`, { metadata: { name: 'default' } });
        // One policy per namespace: its pods with app=a<k> admit the same app from teams t0/t1 on a named port.
        await a.must('POST', `/apis/networking.k8s.io/v1/namespaces/rss-${n}/networkpolicies`, {
          metadata: { name: 'p' },
          spec: {
            podSelector: { matchLabels: { tier: 'web' } },
            ingress: [{ from: [{ namespaceSelector: { matchExpressions: [{ key: 'team', operator: 'In', values: ['t0', 't1'] }] }, podSelector: { matchLabels: { tier: 'web' } } }], ports: [{ port: 'http' }] }],
          },
        });
      }
    }
    // JSON, so the agent does not load a YAML parser that it never loads in a pod (ServiceAccount).
    writeFileSync(join(tmp, 'kubeconfig'), JSON.stringify({
      apiVersion: 'v1', kind: 'Config', 'current-context': 'rss',
      clusters: [{ name: 'rss', cluster: { server: `https://127.0.0.1:${apiPort}`, 'insecure-skip-tls-verify': true } }],
      users: [{ name: 'agent', user: { token: TOKEN_AGENT } }],
      contexts: [{ name: 'rss', context: { cluster: 'rss', user: 'agent' } }],
    }), { mode: 0o600 });

    CG = scratch.cgroup();
    const agentLog = join(tmp, 'agent.log');
    const fd = openSync(agentLog, 'a');
    const nodeArgs = process.env.RSS_AGENT_NODE_ARGS?.split(' ').filter(Boolean);
    const script = process.env.RSS_AGENT_SCRIPT ?? join(ROOT, 'dist', 'src', 'cli', 'index.js');
    const [cmd, pre] = nodeArgs ? [process.execPath, [...nodeArgs, script]] : [join(ROOT, 'bin', 'patu'), []];
    const extraEnv = Object.fromEntries((process.env.RSS_AGENT_ENV ?? '').split(' ').filter(Boolean).map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]));
    const args = [...pre, 'agent', '--kubernetes', '--kubeconfig', join(tmp, 'kubeconfig'), '--node-name', NODE,
      '--cluster-cidr', '10.244.0.0/16', '--cni-conf-dir', '', '--pin-root', PIN, '--cgroup', CG, '--node-routing', 'off',
      // A bridge of no one: the policy programs attach only to veths of the agent's bridge (none here).
      '--bridge', `prss${process.pid % 100000}`,
      '--metrics-addr', `127.0.0.1:${metricsPort}`, '--cni-socket', join(tmp, 'agent.sock')];
    const t0 = performance.now();
    agent = spawn(cmd, args, { stdio: ['ignore', fd, fd], env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...extraEnv } });
    closeSync(fd);
    const ag = agent;
    const dead = (): string | undefined => (ag.exitCode !== null ? `agent exited ${ag.exitCode}: ${readFileSync(agentLog, 'utf8').slice(-2000)}` : undefined);
    const metricsUrl = `http://127.0.0.1:${metricsPort}`;
    await until('agent /readyz', async () => (await httpText(`${metricsUrl}/readyz`)).status === 200, 60_000, dead);
    const readyMs = Math.round(performance.now() - t0);
    log(`agent ready in ${readyMs} ms (pid ${ag.pid}): ${cmd} ${args.join(' ')}`);

    const rows: Record<string, unknown>[] = [];
    // The agent's CPU since the previous point (its start, for the first): what creating the services cost it.
    let lastCpu = 0;
    const point = async (services: number, extra: Record<string, unknown> = {}): Promise<void> => {
      await sleep(SETTLE_MS);
      const m = mem(ag.pid!);
      const cpu = cpuS(ag.pid!);
      const cpuPhaseS = Math.round((cpu - lastCpu) * 100) / 100;
      lastCpu = cpu;
      const h = await heap(`${metricsUrl}/metrics`);
      const row = { services, ...m, cpuPhaseS, ...h, ...extra, ...(process.env.RSS_MAPS ? { maps: byMapping(ag.pid!) } : {}), ...(process.env.RSS_THREADS ? { threads: threadCpu(ag.pid!) } : {}) };
      rows.push(row);
      log(JSON.stringify(row));
    };
    await point(0, { readyMs });

    if (KIND === 'pods') {
      await podsMode(a, metricsUrl, dead, point);
    } else {
    let have = 0;
    const ports = (): number => (readProgrammed(PIN) ?? []).filter((v) => v.vip.startsWith('10.96.') && v.port === 80).length;
    for (const target of COUNTS) {
      const tw = performance.now();
      let next = have;
      await Promise.all(Array.from({ length: CONC }, async () => {
        while (next < target) {
          const i = next++;
          await a.must('POST', '/api/v1/namespaces/rss/services', {
            metadata: { name: `s${i}`, labels: { app: `a${i}` } },
            spec: { ports: [{ name: 'http', port: 80, targetPort: 8080, protocol: 'TCP' }], selector: { app: `a${i}` } },
          });
          await a.must('POST', '/apis/discovery.k8s.io/v1/namespaces/rss/endpointslices', {
            metadata: { name: `s${i}-x`, labels: { 'kubernetes.io/service-name': `s${i}` } },
            addressType: 'IPv4',
            endpoints: [0, 1, 2].map((e) => ({
              addresses: [`10.${245 + e}.${(i >> 8) & 255}.${i & 255}`], conditions: { ready: true, serving: true, terminating: false },
              nodeName: NODE, targetRef: { kind: 'Pod', namespace: 'rss', name: `a${i}-${e}` },
            })),
            ports: [{ name: 'http', port: 8080, protocol: 'TCP' }],
          });
        }
      }));
      const writeMs = Math.round(performance.now() - tw);
      // default/kubernetes is on 443: port 80 under 10.96/16 counts only ours, each with its 3 backends.
      await until(`${target} services programmed`, () => ports() >= target
        && (readProgrammed(PIN) ?? []).filter((v) => v.port === 80).every((v) => v.backends.length === 3), 300_000, dead)
        .catch((e: Error) => {
          throw new Error(`${e.message} (${ports()} programmed); agent log: ${readFileSync(agentLog, 'utf8').slice(-2000)}`, { cause: e });
        });
      const programmedMs = Math.round(performance.now() - tw);
      have = target;
      log(`${target} services + slices written in ${writeMs} ms, all programmed after ${programmedMs} ms`);
      await point(target, { writeMs, programmedMs });
    }
    }

    const out = { command: `${Object.entries(extraEnv).map(([k, v]) => `${k}=${v} `).join('')}${cmd} ${pre.join(' ')}`.trim(), nodeVersion: process.version, nodeFloorMB: floor, points: rows };
    if (JSON_OUT) {
      console.log(JSON.stringify(out));
    } else {
      console.log(`agent: ${out.command} agent --kubernetes ...   (Node ${process.version})`);
      console.log(`Node's floor (node -e "setTimeout(()=>{},1e6)"): ${floor.node} MB; with --max-semi-space-size=1: ${floor.nodeSemi1} MB`);
      console.log(`${KIND.padStart(8)}    RSS MB   anon MB   file MB   V8 heap used/total MB   external MB   CPU s (since last row)`);
      for (const r of rows as unknown as (Mem & { services: number; heapUsedMB: number; heapTotalMB: number; externalMB: number; cpuPhaseS: number })[]) {
        console.log(`${String(r.services).padStart(8)}  ${String(r.rssMB).padStart(7)}  ${String(r.anonMB).padStart(8)}  ${String(r.fileMB).padStart(8)}  ${`${r.heapUsedMB} / ${r.heapTotalMB}`.padStart(22)}  ${String(r.externalMB).padStart(11)}  ${String(r.cpuPhaseS).padStart(10)}`);
      }
    }
  } finally {
    if (agent && agent.exitCode === null) {
      const p = agent;
      await new Promise<void>((r) => { p.once('exit', () => r()); p.kill('SIGTERM'); setTimeout(() => { p.kill('SIGKILL'); }, 10_000).unref(); });
    }
    api?.close();
    for (const p of procs.reverse()) {
      if (p.exitCode !== null) continue;
      await new Promise<void>((r) => { p.once('exit', () => r()); p.kill('SIGTERM'); setTimeout(() => { p.kill('SIGKILL'); }, 10_000).unref(); });
    }
    rmSync(tmp, { recursive: true, force: true });
    await scratch.cleanup();
  }
}

/** RSS_KIND=pods: pods cluster-wide (the NetworkPolicy watch), each point once the agent has seen every pod write. */
async function podsMode(a: Api, metricsUrl: string, dead: () => string | undefined, point: (n: number, extra?: Record<string, unknown>) => Promise<void>): Promise<void> {
  const upserts = async (): Promise<number> => {
    const { text } = await httpText(`${metricsUrl}/metrics`);
    return Number(/^patu_informer_events_total\{resource="pods",event="upsert"\} (\d+)/m.exec(text)?.[1] ?? 0);
  };
  const namesFile = policyNamesPath(PIN);
  const endpoints = (): number => {
    try {
      return Object.keys((JSON.parse(readFileSync(namesFile, 'utf8')) as { endpoints?: object }).endpoints ?? {}).length;
    } catch {
      return -1;
    }
  };
  let have = 0;
  for (const target of COUNTS) {
    const tw = performance.now();
    let next = have;
    await Promise.all(Array.from({ length: CONC }, async () => {
      while (next < target) {
        const i = next++;
        const ns = `rss-${i % POD_NAMESPACES}`;
        const node = i % LOCAL_EVERY === 0 ? NODE : `rss-other-${i % 20}`;
        const pod = await a.must('POST', `/api/v1/namespaces/${ns}/pods`, {
          metadata: { name: `p${i}`, labels: { app: `a${i % 50}`, tier: i % 2 ? 'web' : 'db', 'pod-template-hash': `h${i % 7}` } },
          spec: { nodeName: node, containers: [{ name: 'c', image: 'none', ports: [{ name: 'http', containerPort: 8080 }, { name: 'metrics', containerPort: 9090 }] }] },
        });
        const ip = `10.${244 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`;
        await a.must('PUT', `/api/v1/namespaces/${ns}/pods/p${i}/status`, { ...pod, status: { phase: 'Running', podIP: ip, podIPs: [{ ip }] } });
      }
    }));
    const writeMs = Math.round(performance.now() - tw);
    const locals = Math.ceil(target / LOCAL_EVERY);
    // Two writes per pod (create, status): the agent has seen them all; its policy state then has the local ones as endpoints.
    await until(`${target} pods seen`, async () => (await upserts()) >= 2 * target && endpoints() >= locals, 600_000, dead)
      .catch(async (e: Error) => { throw new Error(`${e.message} (${await upserts()} pod upserts, ${endpoints()} endpoints)`, { cause: e }); });
    const programmedMs = Math.round(performance.now() - tw);
    have = target;
    log(`${target} pods written in ${writeMs} ms, all in the agent's policy state after ${programmedMs} ms (${endpoints()} local endpoints)`);
    await point(target, { writeMs, programmedMs, localEndpoints: endpoints() });
  }
}

main().catch((e) => {
  console.error(`k8s-rss: ${(e as Error).message}`);
  process.exitCode = 1;
});
