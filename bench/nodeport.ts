// NodePorts reached from outside the node: patu's tc path (--nodeport-devices) against the real kube-proxy in
// iptables mode and in nftables mode, on the same cluster, in the same run, one proxy at a time.
//
// Topology (all made here or by scripts/k8s/cluster.sh, nothing leaves the machine):
//   client: the cluster's "outside" netns (cluster.sh), connecting to the node's InternalIP over the uplink veth;
//   node:   the host (cluster.sh's node address on that veth); patu's agent attaches its tc programs to the
//           uplink, kube-proxy programs the host's iptables/nftables;
//   backends: ONE netns of ours behind a veth from the node (10.202.22x.1 on the node, .2 and .3 inside), with
//           bench/accept-sink.c on 8080 and iperf3 -s on 5201 listening on every address. Every NodePort Service
//           has the two addresses as its endpoints (a hand-written EndpointSlice, no pods: pods cost a sandbox
//           each and add nothing to the path measured, which is node -> routed veth -> a listening socket,
//           the same for both proxies).
// Services (selectorless, hand-written EndpointSlices, as bench/k8s-proxy.ts): BENCH_CLUSTERIPS ClusterIP
// Services (2 endpoints each at unrouted addresses; never connected to, they are the rule set a real node
// carries) plus NodePort Services on 30000, 30001, ... (first the smaller count, then more are added), plus one
// NodePort Service for iperf3 on 32767 (the last port of the default range; not counted).
// Per NodePort count, in this order: direct (no proxy; the client connects to a backend address: the ceiling),
// patu, kube-proxy iptables, kube-proxy nftables. Each proxy is started, waited for until every NodePort answers
// from outside, measured BENCH_RUNS times, stopped and its state flushed before the next one starts (patu: agent
// stopped and its pins removed, which detaches its programs; kube-proxy: `kube-proxy --cleanup`), never two at
// once. BENCH_INTERLEAVE=1 starts each afresh per run instead (load drifting over minutes then hits all alike;
// slow: every kube-proxy start syncs the whole rule set).
// A run: connect()+close() from the outside netns to nodeIP:30000..30000+N-1 round robin (bench/connect-rate.c,
// RST close, BENCH_CONNECT_MS long), then one iperf3 stream through the iperf3 NodePort (BENCH_IPERF_S s, the
// first second omitted).
// externalTrafficPolicy is Cluster (the default) for both: kube-proxy then masquerades (SNAT to the node's
// address toward the backend), patu's tc path does not SNAT (one node: the backend's reply comes back through it).
//
//   bash scripts/build.sh && node dist/bench/nodeport.js          (root; Kubernetes binaries incl. kube-proxy
//   from scripts/k8s/build.sh; iperf3; no other kube-proxy may run on the host)
//   BENCH_NODEPORTS=10,2000 BENCH_CLUSTERIPS=10000 BENCH_RUNS=3 BENCH_CONNECT_MS=3000 BENCH_IPERF_S=4
//   BENCH_PROXIES=direct,patu,iptables,nftables BENCH_CONCURRENCY=16 BENCH_INTERLEAVE=0 BENCH_ADOPT=<pid of a killed run>
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readProgrammed } from '../src/dataplane/service-lb.js';
import { K8S_BIN, NODE, TestCluster, clusterSkipReason, reapStaleClusters } from '../test/helpers/k8s-cluster.js';
import { Scratch, removeCgroup } from '../test/helpers/kernel.js';
import { acceptSink, buildTools, connectRate, perSec, median } from './lib/connect-rate.js';
import { Api, agentKubeconfig, assertNoOtherKubeProxy, createService, fetchText, gauge, inParallel, now, otherLoad, sleep, startAgent, stopChild, waitReady } from './lib/k8s.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const env = (k: string, d: string): string => process.env[k] ?? d;
const SCALES = env('BENCH_NODEPORTS', '10,2000').split(',').map(Number);
const CLUSTERIPS = Number(env('BENCH_CLUSTERIPS', '10000'));
const RUNS = Number(env('BENCH_RUNS', '3'));
const CONNECT_MS = Number(env('BENCH_CONNECT_MS', '3000'));
const IPERF_S = Number(env('BENCH_IPERF_S', '4'));
const CONC = Number(env('BENCH_CONCURRENCY', '16'));
const PROXIES = env('BENCH_PROXIES', 'direct,patu,iptables,nftables').split(',') as Proxy[];
type Proxy = 'direct' | 'patu' | 'iptables' | 'nftables';
const LABEL: Record<Proxy, string> = { direct: 'direct (no service)', patu: 'patu (tc)', iptables: 'kube-proxy iptables', nftables: 'kube-proxy nftables' };

const NS = 'patu-bench-np';
const FIRST_NODEPORT = 30000;
const IPERF_NODEPORT = 32767;
const SINK_PORT = 8080;
const IPERF_PORT = 5201;
const scratch = new Scratch('patu-bench-np');
const PIN = scratch.pinRoot();
// Our backend /24: beside every test cluster's pod /24 (10.202.20-219.0/24) and below bench/k8s-proxy's fake
// endpoints (10.202.230+).
// BENCH_ADOPT=<pid>: carry on with the cluster, Services and backends a killed run (pid) left behind (creating
// 10,000 Services takes ~15 min at this machine's load); its leftovers are removed at the end like ours.
const ADOPT = process.env.BENCH_ADOPT ? Number(process.env.BENCH_ADOPT) : undefined;
const OWNER = ADOPT ?? process.pid;
// Proxies started once per NodePort count and measured RUNS times in a row (default), or afresh per run,
// interleaved (BENCH_INTERLEAVE=1: a kube-proxy iptables initial sync of 10,000 Services took over 5 min here at
// load ~10, per run).
const INTERLEAVE = env('BENCH_INTERLEAVE', '0') === '1';
const BE_NET = `10.202.${220 + (OWNER % 10)}`;
const BACKENDS = [`${BE_NET}.2`, `${BE_NET}.3`];
const log = (msg: string): void => console.error(`nodeport: ${msg}`);

function sh(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 1 << 28, env: { ...process.env, PATH: `${K8S_BIN}:${process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin'}` } });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ').slice(0, 200)}: exit ${r.status}: ${(r.stderr ?? '').trim().slice(-1000)}`);
  return r.stdout;
}

// ---------------------------------------------------------------- backends

/** The backend netns: a veth from the node, two addresses, accept-sink and iperf3 -s listening on all. */
async function backends(): Promise<void> {
  if (spawnSync('ip', ['route', 'show', `${BE_NET}.0/24`], { encoding: 'utf8' }).stdout.trim()) {
    throw new Error(`nodeport: ${BE_NET}.0/24 is routed already (another run with the same pid % 10?)`);
  }
  const ns = scratch.netns(scratch.name('be'));
  const veth = `npb${OWNER % 100000}`;
  sh('ip', ['link', 'add', veth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
  scratch.defer(`veth ${veth}`, () => void spawnSync('ip', ['link', 'del', veth]));
  sh('ip', ['addr', 'add', `${BE_NET}.1/24`, 'dev', veth]);
  sh('ip', ['link', 'set', veth, 'up']);
  for (const ip of BACKENDS) sh('ip', ['-n', ns, 'addr', 'add', `${ip}/24`, 'dev', 'eth0']);
  sh('ip', ['-n', ns, 'link', 'set', 'eth0', 'up']);
  sh('ip', ['-n', ns, 'route', 'add', 'default', 'via', `${BE_NET}.1`]);
  const sink = await acceptSink(ns, SINK_PORT);
  scratch.defer('accept-sink', () => void sink.kill('SIGKILL'));
  const iperf = spawn('ip', ['netns', 'exec', ns, 'iperf3', '-s', '-p', String(IPERF_PORT)], { stdio: 'ignore' });
  scratch.defer('iperf3 -s', () => void iperf.kill('SIGKILL'));
}

// ---------------------------------------------------------------- services

/** Endpoints of the ClusterIP services: never connected to; an own range nothing routes. */
const fakeIps = (i: number): string[] => [2 * i, 2 * i + 1].map((c) => `10.205.${c >> 8}.${c & 255}`);

async function createServices(api: Api, what: string, n: number, make: (i: number) => Promise<unknown>): Promise<void> {
  const t0 = now();
  let done = 0;
  const tick = setInterval(() => log(`${what}: ${done}/${n}`), 30_000);
  try {
    await inParallel(n, CONC, async (i) => {
      await make(i);
      done++;
    });
  } finally {
    clearInterval(tick);
  }
  log(`${what}: ${n} Services + EndpointSlices written in ${Math.round((now() - t0) / 1000)} s`);
}

// ---------------------------------------------------------------- proxies

interface Running {
  stop(): Promise<void>;
  /** What it programmed, for the notes. */
  size(): string;
}

async function startPatu(cluster: TestCluster, kubeconfig: string, cgroup: string, dir: string): Promise<Running> {
  const run = await startAgent({ kubeconfig, pinRoot: PIN, cgroup, dir, extraArgs: ['--nodeport-devices', cluster.names.uplink], readyMs: 300_000 });
  return {
    size: () => `${readProgrammed(PIN)?.length ?? 0} service entries in patu_svc`,
    stop: async () => {
      await stopChild(run.child);
      // The pins hold the programs' links (tc on the uplink, cgroup hooks): removing them detaches.
      rmSync(PIN, { recursive: true, force: true });
      const tc = spawnSync('bpftool', ['net', 'show', 'dev', cluster.names.uplink], { encoding: 'utf8' }).stdout;
      if (/patu_np/.test(tc)) throw new Error(`nodeport: patu's tc programs still on ${cluster.names.uplink} after its pins were removed: ${tc}`);
    },
  };
}

/** kube-proxy with cluster.sh's settings (its certificate and kubeconfig), in the given mode. */
async function startKubeProxy(cluster: TestCluster, mode: 'iptables' | 'nftables', dir: string): Promise<Running> {
  const cfg = join(dir, `kube-proxy-${mode}.yaml`);
  writeFileSync(cfg, [
    'apiVersion: kubeproxy.config.k8s.io/v1alpha1',
    'kind: KubeProxyConfiguration',
    `mode: ${mode}`,
    `clientConnection: {kubeconfig: "${join(cluster.state, 'kube-proxy.kubeconfig')}"}`,
    'clusterCIDR: "10.202.0.0/16"',
    `hostnameOverride: "${NODE}"`,
    'bindAddress: 127.0.0.1',
    'healthzBindAddress: 127.0.0.1:10256',
    'metricsBindAddress: 127.0.0.1:10249',
    // As cluster.sh: leave the host's conntrack sysctls alone; no localhost NodePorts (route_localnet stays 0).
    'conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}',
    'iptables: {localhostNodePorts: false}',
    '',
  ].join('\n'));
  // cluster.sh down runs `kube-proxy --cleanup` when it finds this, also after a crash of ours.
  writeFileSync(join(cluster.state, 'kube-proxy-ran'), '');
  const logFile = join(dir, `kube-proxy-${mode}.log`);
  const fd = openSync(logFile, 'a');
  const child = spawn(join(K8S_BIN, 'kube-proxy'), ['--config', cfg], { stdio: ['ignore', fd, fd], detached: false });
  closeSync(fd);
  await waitReady('http://127.0.0.1:10256/healthz', 600_000, child, logFile);
  // Synced: nothing pending in its own counters (the NodePort probe then checks the rules themselves).
  const end = Date.now() + 600_000;
  for (;;) {
    const m = await fetchText('http://127.0.0.1:10249/metrics').catch(() => '');
    const pend = gauge(m, 'kubeproxy_sync_proxy_rules_endpoint_changes_pending') + gauge(m, 'kubeproxy_sync_proxy_rules_service_changes_pending');
    if (gauge(m, 'kubeproxy_sync_proxy_rules_last_timestamp_seconds') > 0 && pend === 0) break;
    if (Date.now() > end) throw new Error(`nodeport: kube-proxy ${mode} not synced after 600 s`);
    await sleep(500);
  }
  return {
    size: () => (mode === 'iptables'
      ? `${sh('iptables-save', ['-t', 'nat']).split('\n').filter((l) => l.startsWith('-A ')).length} nat rules`
      : `${sh('nft', ['list', 'table', 'ip', 'kube-proxy']).split('\n').length} lines in nft table ip kube-proxy`),
    stop: async () => {
      await stopChild(child);
      sh(join(K8S_BIN, 'kube-proxy'), ['--cleanup']);
      const left = sh('iptables-save', []).split('\n').filter((l) => /KUBE-(SERVICES|NODEPORTS|SVC-|SEP-)/.test(l)).length;
      const nft = spawnSync('nft', ['list', 'table', 'ip', 'kube-proxy'], { encoding: 'utf8' }).status === 0;
      if (left || nft) throw new Error(`nodeport: kube-proxy --cleanup left ${left} iptables lines${nft ? ' and the nft table ip kube-proxy' : ''}`);
    },
  };
}

/** Until every NodePort 30000..30000+n-1 answers from outside in one pass (unprogrammed ones are refused). */
async function waitNodePorts(outside: string, nodeIP: string, n: number, ms: number): Promise<void> {
  const end = Date.now() + ms;
  const range = `${FIRST_NODEPORT}-${FIRST_NODEPORT + n - 1}`;
  for (;;) {
    const r = await connectRate(outside, nodeIP, { port: range, ms: 30_000, max: n, allowErrors: true });
    if (r.errors === 0 && r.count === n) return;
    if (Date.now() > end) throw new Error(`nodeport: NodePorts ${range} not all answering after ${ms} ms (last pass: ${r.count} ok, ${r.errors} refused)`);
    await sleep(1000);
  }
}

// ---------------------------------------------------------------- measuring

interface Sample {
  connectPerSec: number;
  connectErrors: number;
  p99us: number;
  gbps: number;
}

function iperf(outside: string, ip: string, port: number): number {
  const r = spawnSync('ip', ['netns', 'exec', outside, 'iperf3', '-c', ip, '-p', String(port), '-t', String(IPERF_S + 1), '-O', '1', '-J'], { encoding: 'utf8', timeout: (IPERF_S + 30) * 1000 });
  let j: { end?: { sum_received?: { bits_per_second?: number } }; error?: string };
  try {
    j = JSON.parse(r.stdout);
  } catch {
    throw new Error(`iperf3 -c ${ip}:${port}: exit ${r.status}: ${r.stdout.slice(0, 300)}${r.stderr}`);
  }
  const bps = j.end?.sum_received?.bits_per_second;
  if (j.error || !bps) throw new Error(`iperf3 -c ${ip}:${port}: ${j.error ?? 'no result'}`);
  return bps / 1e9;
}

async function measure(outside: string, ip: string, ports: string, iperfPort: number): Promise<Sample> {
  const c = await connectRate(outside, ip, { port: ports, ms: CONNECT_MS, max: 2_000_000, allowErrors: true });
  // iperf3 -s serves one test at a time: a retry covers a control connection caught in a previous test's end.
  let gbps: number;
  try {
    gbps = iperf(outside, ip, iperfPort);
  } catch (e) {
    log(`${(e as Error).message}; retrying once`);
    await sleep(1000);
    gbps = iperf(outside, ip, iperfPort);
  }
  return { connectPerSec: perSec(c), connectErrors: c.errors, p99us: c.p99_ns / 1000, gbps };
}

// ---------------------------------------------------------------- output

interface Row {
  nodePorts: number;
  proxy: Proxy;
  samples: Sample[];
  /** Seconds from start until every NodePort answered, per run. */
  ready: number[];
  /** What it programmed (last run). */
  size: string;
  /** 1-minute load average after each run. */
  load: number[];
}

const spread = (xs: number[], d: number): string => `${median(xs).toFixed(d)} [${Math.min(...xs).toFixed(d)}-${Math.max(...xs).toFixed(d)}]`;

function render(rows: Row[]): string {
  const out: string[] = [];
  const head = ['NodePorts', 'proxy', 'connect/s median [min-max]', 'p99 connect us', 'errors', '1-stream Gbit/s median [min-max]'];
  const cells = rows.map((r) => [
    String(r.nodePorts), LABEL[r.proxy],
    spread(r.samples.map((s) => s.connectPerSec), 0),
    median(r.samples.map((s) => s.p99us)).toFixed(0),
    String(r.samples.reduce((a, s) => a + s.connectErrors, 0)),
    spread(r.samples.map((s) => s.gbps), 2),
  ]);
  const w = head.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)));
  const line = (c: string[]) => c.map((x, i) => (i < 2 ? x.padEnd(w[i]!) : x.padStart(w[i]!))).join('  ');
  out.push(line(head), ...cells.map(line), '');
  out.push('ratios of medians, patu / kube-proxy (target at 2,000 NodePorts: connect >= 2.00, throughput >= 1.00):');
  for (const n of SCALES) {
    const at = (p: Proxy) => rows.find((r) => r.nodePorts === n && r.proxy === p);
    const patu = at('patu');
    if (!patu) continue;
    for (const kp of ['iptables', 'nftables'] as const) {
      const k = at(kp);
      if (!k) continue;
      const c = median(patu.samples.map((s) => s.connectPerSec)) / median(k.samples.map((s) => s.connectPerSec));
      const t = median(patu.samples.map((s) => s.gbps)) / median(k.samples.map((s) => s.gbps));
      const verdict = n >= 2000 ? `  (target ${c >= 2 ? 'met' : 'MISSED'} for connect, ${t >= 1 ? 'met' : 'MISSED'} for throughput)` : '';
      out.push(`  ${String(n).padStart(5)} NodePorts vs ${kp.padEnd(8)}: connect ${c.toFixed(2)}  throughput ${t.toFixed(2)}${verdict}`);
    }
  }
  out.push('', 'per row: what was programmed; seconds from the proxy start until every NodePort answered (per run); 1-min load after each run:');
  for (const r of rows) {
    const ready = r.ready.length ? `${r.size}; ready ${r.ready.map((x) => x.toFixed(0)).join('/')} s` : 'no proxy: client -> backend address';
    out.push(`  ${String(r.nodePorts).padStart(5)} ${LABEL[r.proxy].padEnd(20)} ${ready}; load ${r.load.map((x) => x.toFixed(1)).join('/')}`);
  }
  return out.join('\n');
}

// ---------------------------------------------------------------- the run

/** BENCH_ADOPT: the killed run's cluster (its apiserver port from its kubeconfig) and its backends, removed at the end. */
function adopt(cluster: TestCluster, cgroupRoot: string): void {
  const m = /server: "?https:\/\/[\d.]+:(\d+)/.exec(readFileSync(cluster.kubeconfig, 'utf8'));
  if (!m) throw new Error(`nodeport: no apiserver port in ${cluster.kubeconfig}`);
  cluster.apiPort = Number(m[1]);
  const ns = `patu-bench-np-${OWNER}-be`;
  const veth = `npb${OWNER % 100000}`;
  const cg = join(cgroupRoot, `patu-bench-np-${OWNER}`);
  scratch.defer(`adopted ${ns}, ${veth}, ${cg}`, async () => {
    const pids = spawnSync('ip', ['netns', 'pids', ns], { encoding: 'utf8' }).stdout.split('\n').filter(Boolean);
    for (const p of pids) process.kill(Number(p), 'SIGKILL');
    spawnSync('ip', ['link', 'del', veth]);
    spawnSync('ip', ['netns', 'del', ns]);
    if (existsSync(cg)) await removeCgroup(cg);
  });
  if (!existsSync(`/run/netns/${ns}`)) throw new Error(`nodeport: the adopted run's backend netns ${ns} is gone`);
}

async function main(): Promise<void> {
  const skip = clusterSkipReason(['kube-proxy']);
  if (skip) throw new Error(`nodeport: cannot run: ${skip}`);
  if (!existsSync(join(ROOT, 'build', 'bpf', 'nodeport.o'))) throw new Error('nodeport: build/bpf/nodeport.o missing: run scripts/build.sh');
  if (spawnSync('iperf3', ['--version']).status !== 0) throw new Error('nodeport: iperf3 missing (apt-get install iperf3)');
  if (SCALES.some((n) => !(n >= 1 && FIRST_NODEPORT + n - 1 < IPERF_NODEPORT))) throw new Error(`nodeport: BENCH_NODEPORTS=${SCALES}: each must be 1..${IPERF_NODEPORT - FIRST_NODEPORT}`);
  buildTools();
  // Not with BENCH_ADOPT: the adopted cluster's owner is gone, so it would be reaped.
  if (ADOPT === undefined) reapStaleClusters();
  if (PROXIES.some((p) => p === 'iptables' || p === 'nftables')) assertNoOtherKubeProxy('nodeport');

  const cluster = new TestCluster(OWNER);
  const tmp = scratch.tmpDir('patu-bench-np');
  let api: Api | undefined;
  let running: Running | undefined;
  let cleaned = false;
  const cleanup = async (): Promise<void> => {
    if (cleaned) return;
    cleaned = true;
    api?.close();
    await running?.stop().catch((e: Error) => log(`stopping the proxy: ${e.message}`));
    await scratch.cleanup().catch((e: Error) => log(e.message));
    const d = cluster.down();
    if (!d.ok) log(`cluster.sh down failed: ${d.detail}`);
  };
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      log(`${sig}: cleaning up`);
      void cleanup().finally(() => process.exit(130));
    });
  }

  const rows: Row[] = [];
  const started = new Date();
  const loadStart = otherLoad(0);
  try {
    log(`${ADOPT === undefined ? 'cluster up' : 'adopting'} ${cluster.state}; ${loadStart}`);
    const cgroup = scratch.cgroup();
    if (ADOPT === undefined) {
      await cluster.up([]);
      await backends();
    } else adopt(cluster, dirname(cgroup));
    const { nodeIP, outsideNs } = cluster.names;
    const kubeconfig = agentKubeconfig(cluster, tmp);

    api = new Api(cluster.apiServer, join(cluster.state, 'pki'), CONC);
    let have = 0;
    if (ADOPT === undefined) {
      await api.call('POST', '/api/v1/namespaces', { apiVersion: 'v1', kind: 'Namespace', metadata: { name: NS } });
      await createService(api, NS, 'iperf', { port: IPERF_PORT, targetPort: IPERF_PORT, nodePort: IPERF_NODEPORT }, BACKENDS);
      await createServices(api, 'ClusterIP', CLUSTERIPS, (i) => createService(api!, NS, `c${i}`, { port: 80, targetPort: SINK_PORT }, fakeIps(i)));
    } else {
      const exists = (name: string) => api!.call('GET', `/api/v1/namespaces/${NS}/services/${name}`).then(() => true, () => false);
      if (!(await exists(`c${CLUSTERIPS - 1}`)) || (await exists(`c${CLUSTERIPS}`))) throw new Error(`nodeport: the adopted cluster does not hold exactly ${CLUSTERIPS} ClusterIP Services`);
      while (await exists(`n${have}`)) have++;
      log(`adopted ${cluster.state}: ${CLUSTERIPS} ClusterIP and ${have} NodePort Services there`);
    }
    for (const n of [...SCALES].sort((a, b) => a - b)) {
      const from = have;
      if (n > from) await createServices(api, `NodePort ${from}..${n - 1}`, n - from, (i) =>
        createService(api!, NS, `n${from + i}`, { port: 80, targetPort: SINK_PORT, nodePort: FIRST_NODEPORT + from + i }, BACKENDS));
      have = n;
      const range = `${FIRST_NODEPORT}-${FIRST_NODEPORT + n - 1}`;
      const at = new Map<Proxy, Row>(PROXIES.map((p) => [p, { nodePorts: n, proxy: p, samples: [], ready: [], size: '', load: [] }]));
      // Interleaved (default): every run starts each proxy afresh, so a change in the machine's load over the
      // minutes hits every proxy alike instead of deciding a ratio. Otherwise each proxy is started once and
      // measured RUNS times in a row.
      const plan = INTERLEAVE
        ? Array.from({ length: RUNS }, (_, r) => PROXIES.map((p) => ({ r, p }))).flat()
        : PROXIES.flatMap((p) => Array.from({ length: RUNS }, (_, r) => ({ r, p })));
      for (const [k, { r, p: proxy }] of plan.entries()) {
        const row = at.get(proxy)!;
        if (!running && proxy !== 'direct') {
          const t0 = now();
          running = proxy === 'patu' ? await startPatu(cluster, kubeconfig, cgroup, tmp) : await startKubeProxy(cluster, proxy, tmp);
          await waitNodePorts(outsideNs, nodeIP, n, 600_000);
          row.ready.push((now() - t0) / 1000);
          row.size = running.size();
        }
        // direct: the same loop, to one backend address and port (no translation on the way).
        const s = proxy === 'direct'
          ? await measure(outsideNs, BACKENDS[0]!, String(SINK_PORT), IPERF_PORT)
          : await measure(outsideNs, nodeIP, range, IPERF_NODEPORT);
        row.load.push(loadavg()[0]!);
        log(`${n} NodePorts, run ${r + 1}, ${proxy}: ${Math.round(s.connectPerSec)} connects/s (${s.connectErrors} errors), ${s.gbps.toFixed(2)} Gbit/s${running ? `; ${row.size}, all NodePorts answering ${row.ready.at(-1)!.toFixed(0)} s after start` : ''}`);
        row.samples.push(s);
        if (plan[k + 1]?.p !== proxy) {
          await running?.stop();
          running = undefined;
        }
      }
      rows.push(...at.values());
    }
    const loadEnd = otherLoad(1);
    console.log(`# NodePort from outside the node: patu vs kube-proxy, ${started.toISOString()}, kernel ${spawnSync('uname', ['-r'], { encoding: 'utf8' }).stdout.trim()}`);
    console.log(`# ${CLUSTERIPS} ClusterIP Services alongside; ${RUNS} runs each (${INTERLEAVE ? 'proxies interleaved, each started afresh per run' : 'each proxy started once per NodePort count, its runs in a row'}): connect()+close() ${CONNECT_MS} ms round robin over the NodePorts, iperf3 1 stream ${IPERF_S} s`);
    console.log(`# machine: at start ${loadStart}; at end ${loadEnd}${loadavg()[0]! > 4 ? ' (LOADED: absolute numbers are low; compare the ratios, measured in the same run)' : ''}`);
    console.log(render(rows));
  } finally {
    await cleanup();
  }
}

main().catch((e) => {
  console.error((e as Error).stack ?? String(e));
  process.exitCode = 1;
});
