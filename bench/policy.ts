// NetworkPolicy enforcement (issue 11): patu's tc programs against the real kube-router's iptables + ipset firewall,
// on the same pods, with the same policies, in one run.
//
// Topology (all made here; nothing on the host's own interfaces):
//   a "node" netns with a bridge (10.208.K.1/24) and two pods (netns) on it: client .11 and server .12, each behind a
//   veth whose node-side end is on the bridge (patu's layout: its programs attach to that node-side end);
//   the server runs sockperf sr (11111), iperf3 -s (5201), bench/accept-sink.c on 8080 and on 8081 (8081: a port no
//   policy allows: the enforcement check); every client and server runs in a scratch cgroup, where patu's socket
//   acceleration (sock_ops + sk_msg) is attached for the accelerated rows.
// Policies (bench/lib/policy-objects.ts): N NetworkPolicies selecting the two pods, N-2 fillers that allow other
// peers on other ports, and the two that allow client -> server on the bench ports (sorted last).
// Sections (BENCH_WHAT, comma-separated; all by default):
//   testrun  per-packet cost of patu's tc programs via BPF_PROG_TEST_RUN with repeat, at each N: a packet of an
//            admitted flow (a conntrack hit after the first repeat), a SYN that no rule allows (the full lookup and a
//            drop, every repeat), both programs; and the same drop with the event code compiled out
//            (-DPATU_POL_NO_EVENTS) and with the monitor on, for the "idle monitor costs nothing" figure.
//   patu     per run, per N: policies programmed (PolicyEngine over the pods, as the file source does), then
//            request/response (sockperf ping-pong, 64 B), 1-stream throughput (iperf3) and connect rate
//            (bench/connect-rate.c, connect+close) bridged, then accelerated. N = "none" is the same pods with no
//            programs attached at all (the floor).
//   kube-router  a test cluster's apiserver (scripts/k8s/cluster.sh), the pods as Pod objects on a Node object of
//            their own, kube-router in the node netns (firewall only); per N: policies written, its rules awaited,
//            enforcement checked, measured RUNS times (bridged: sockmap-redirected sockets would bypass iptables).
//   latency  `patu agent --kubernetes` (as the pods' node, on the same apiserver) enforcing the largest N; a probe in
//            the client connects every ~1 ms (bench/policy-probe.c); rounds of deleting and re-writing the policy that
//            allows it, each timed from the apiserver's answer to the first probe attempt with the new verdict.
//   rss      `patu agent --policy-file` in the node netns with 0 and with the largest N: its VmRSS and V8 heap.
// Every configuration is checked before it is measured: 8080 connects, 8081 does not (N > 0) or does (N = 0).
//
//   bash scripts/build.sh && node dist/bench/policy.js        (root; iperf3, sockperf, ipset; kube-router rows also
//   need the Kubernetes binaries of scripts/k8s/build.sh and Go for scripts/bench/kube-router.sh)
//   BENCH_POLICIES=0,100,1000 BENCH_RUNS=3 BENCH_SECONDS=3 BENCH_WHAT=testrun,patu,kube-router,latency,rss BENCH_REPEAT=200000
//   BENCH_LATENCY_ROUNDS=25  BENCH_AGENT_LOG=FILE (keep the latency agent's log)  BENCH_APISERVER=bare (latency alone on a bare kube-apiserver + etcd: no cluster, no cluster lock)
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import YAML from 'yaml';
import { Accel } from '../src/dataplane/accel.js';
import { PolicyDataplane } from '../src/dataplane/policy-tc.js';
import { policyNamesPath } from '../src/policy/names.js';
import { withNetns } from '../src/kernel/netns.js';
import { TestCluster, clusterSkipReason, freePort, reapStaleClusters } from '../test/helpers/k8s-cluster.js';
import { Scratch } from '../test/helpers/kernel.js';
import { acceptSink, buildTools, connectRate, perSec, median } from './lib/connect-rate.js';
import { Api, agentKubeconfig, inParallel, sleep, startAgent, stopChild } from './lib/k8s.js';
import { createFakeNode, createPods, kubeRouterBinary, kubeRouterChains, kubeRouterVersion, startKubeRouter, stopKubeRouter, type KubeRouterRun } from './lib/kube-router.js';
import { BENCH_NS, DENIED_PORT, SERVER_PORTS, benchNamespace, benchPods, benchPolicies } from './lib/policy-objects.js';
import { PatuPolicy, buildNoEventsObject, tcpPacket } from './lib/patu-policy.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const env = (k: string, d: string): string => process.env[k] ?? d;
const SCALES = env('BENCH_POLICIES', '0,100,1000').split(',').map(Number);
const RUNS = Number(env('BENCH_RUNS', '3'));
const SECONDS = Number(env('BENCH_SECONDS', '3'));
const REPEAT = Number(env('BENCH_REPEAT', '200000'));
const WHAT = new Set(env('BENCH_WHAT', 'testrun,patu,kube-router,latency,rss').split(','));
const log = (msg: string): void => console.error(`policy: ${msg}`);

const scratch = new Scratch('patu-bench-pol');
const K = (process.pid % 200) + 20;
const NET = `10.208.${K}`;
const GW = `${NET}.1`;
const CLIENT_IP = `${NET}.11`;
const SERVER_IP = `${NET}.12`;
const NODE_NS = scratch.name('node');
const CLIENT_NS = scratch.name('cli');
const SERVER_NS = scratch.name('srv');
const PIN = scratch.pinRoot();
let CG = '';

function sh(cmd: string, args: string[], timeoutMs = 60_000): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: timeoutMs, maxBuffer: 1 << 28 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ').slice(0, 200)}: exit ${r.status ?? r.signal}: ${(r.stderr ?? '').trim().slice(-1000)}`);
  return r.stdout;
}
const ip = (...a: string[]): string => sh('ip', a);

// ---------------------------------------------------------------- topology

const children: ChildProcess[] = [];
/** argv in netns `ns` and in the bench cgroup (where the socket programs are attached). */
const wrap = (ns: string, argv: string[]): string[] => ['sh', '-c', `echo $$ > ${CG}/cgroup.procs && exec ip netns exec ${ns} "$@"`, 'sh', ...argv];
function daemon(ns: string, argv: string[]): void {
  const [cmd, ...rest] = wrap(ns, argv);
  children.push(spawn(cmd!, rest, { stdio: 'ignore' }));
}
function run(ns: string, argv: string[], timeoutMs: number): string {
  const [cmd, ...rest] = wrap(ns, argv);
  return sh(cmd!, rest, timeoutMs);
}

interface Topology {
  clientIfindex: number;
  serverIfindex: number;
}

async function topology(): Promise<Topology> {
  CG = scratch.cgroup();
  for (const ns of [NODE_NS, CLIENT_NS, SERVER_NS]) scratch.netns(ns);
  ip('-n', NODE_NS, 'link', 'add', 'br0', 'type', 'bridge');
  ip('-n', NODE_NS, 'addr', 'add', `${GW}/24`, 'dev', 'br0');
  ip('-n', NODE_NS, 'link', 'set', 'br0', 'up');
  const idx: number[] = [];
  for (const [ns, addr, veth] of [[CLIENT_NS, CLIENT_IP, 'vcli'], [SERVER_NS, SERVER_IP, 'vsrv']] as const) {
    ip('-n', NODE_NS, 'link', 'add', veth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns);
    ip('-n', NODE_NS, 'link', 'set', veth, 'master', 'br0', 'up');
    ip('-n', ns, 'addr', 'add', `${addr}/24`, 'dev', 'eth0');
    ip('-n', ns, 'link', 'set', 'eth0', 'up');
    ip('-n', ns, 'route', 'add', 'default', 'via', GW);
    idx.push((JSON.parse(ip('-n', NODE_NS, '-j', 'link', 'show', 'dev', veth)) as { ifindex: number }[])[0]!.ifindex);
  }
  scratch.defer('servers', async () => {
    for (const p of children) p.kill('SIGKILL');
    await sleep(200);
  });
  daemon(SERVER_NS, ['sockperf', 'sr', '-i', SERVER_IP, '-p', String(SERVER_PORTS.rr), '--tcp']);
  daemon(SERVER_NS, ['iperf3', '-s', '-p', String(SERVER_PORTS.iperf)]);
  for (const port of [SERVER_PORTS.sink, DENIED_PORT]) {
    const s = await acceptSink(SERVER_NS, port);
    children.push(s);
  }
  await sleep(500);
  return { clientIfindex: idx[0]!, serverIfindex: idx[1]! };
}

/** Whether the client can open a TCP connection to the server's `port` within 1 s. */
function connects(port: number): boolean {
  const [cmd, ...rest] = wrap(CLIENT_NS, ['nc', '-z', '-w', '1', SERVER_IP, String(port)]);
  return spawnSync(cmd!, rest, { timeout: 5000 }).status === 0;
}

/** The enforcement check every configuration passes before it is measured. */
function checkEnforced(what: string, n: number): void {
  const ok = connects(SERVER_PORTS.sink);
  const denied = !connects(DENIED_PORT);
  if (!ok) throw new Error(`${what}: the client cannot reach the server's allowed port ${SERVER_PORTS.sink}`);
  if (n > 0 && !denied) throw new Error(`${what}: port ${DENIED_PORT} is reachable although no policy allows it (not enforced)`);
  if (n === 0 && denied) throw new Error(`${what}: port ${DENIED_PORT} is unreachable with no policy`);
}

// ---------------------------------------------------------------- measuring

interface Sample {
  rr: number;
  rrP50us: number;
  gbps: number;
  connectPerSec: number;
}

function sockperf(): { rr: number; p50: number } {
  const out = run(CLIENT_NS, ['sockperf', 'pp', '-i', SERVER_IP, '-p', String(SERVER_PORTS.rr), '--tcp', '-m', '64', '-t', String(SECONDS)], (SECONDS + 20) * 1000);
  const num = (re: RegExp): number => {
    const m = re.exec(out);
    if (!m) throw new Error(`sockperf output lacks ${re}: ${out.slice(-500)}`);
    return Number(m[1]);
  };
  // sockperf: one message out, one back per round trip; rate = completed round trips per second.
  return { rr: num(/\[Valid Duration\].*ReceivedMessages=(\d+)/) / num(/\[Valid Duration\] RunTime=([\d.]+) sec/), p50: num(/percentile 50\.000 =\s*([\d.]+)/) };
}

function iperf(): number {
  for (let attempt = 1; ; attempt++) {
    try {
      const out = run(CLIENT_NS, ['iperf3', '-c', SERVER_IP, '-p', String(SERVER_PORTS.iperf), '-t', String(SECONDS + 1), '-O', '1', '-J'], (SECONDS + 30) * 1000);
      return (JSON.parse(out) as { end: { sum_received: { bits_per_second: number } } }).end.sum_received.bits_per_second / 1e9;
    } catch (e) {
      // iperf3 -s serves one test at a time: a retry covers a control connection caught in the previous test's end.
      if (attempt >= 2) throw e;
      spawnSync('sleep', ['1']);
    }
  }
}

async function measure(label: string): Promise<Sample> {
  const p = sockperf();
  const gbps = iperf();
  const c = await connectRate(CLIENT_NS, SERVER_IP, { port: SERVER_PORTS.sink, ms: SECONDS * 1000, max: 5_000_000, cgroup: CG });
  const s = { rr: p.rr, rrP50us: p.p50, gbps, connectPerSec: perSec(c) };
  log(`${label}: rr ${s.rr.toFixed(0)}/s (p50 ${s.rrP50us} us), ${s.gbps.toFixed(2)} Gbit/s, ${s.connectPerSec.toFixed(0)} connects/s`);
  return s;
}

// ---------------------------------------------------------------- output

type Enforcer = 'none' | 'patu bridged' | 'patu accelerated' | 'kube-router';
interface Row {
  enforcer: Enforcer;
  n: number;
  samples: Sample[];
  note: string;
}
const rows: Row[] = [];
function record(enforcer: Enforcer, n: number, s: Sample, note = ''): void {
  let r = rows.find((x) => x.enforcer === enforcer && x.n === n);
  if (!r) rows.push((r = { enforcer, n, samples: [], note }));
  r.samples.push(s);
  if (note) r.note = note;
}
const spread = (xs: number[], d: number): string => `${median(xs).toFixed(d)} [${Math.min(...xs).toFixed(d)}-${Math.max(...xs).toFixed(d)}]`;
const med = (r: Row | undefined, k: keyof Sample): number => (r ? median(r.samples.map((s) => s[k])) : NaN);

function table(head: string[], cells: string[][], left = 2): string[] {
  const w = head.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)));
  const line = (c: string[]) => c.map((x, i) => (i < left ? x.padEnd(w[i]!) : x.padStart(w[i]!))).join('  ');
  return [line(head), ...cells.map(line)];
}

function renderTraffic(): string[] {
  const out: string[] = [];
  out.push(`pod-to-pod, median [min-max] of ${RUNS} runs, ${SECONDS} s per figure:`);
  out.push(...table(['enforcer', 'policies', 'req/resp per s', 'rr p50 us', '1-stream Gbit/s', 'connect/s'],
    rows.map((r) => [r.enforcer, r.enforcer === 'none' ? '-' : String(r.n),
      spread(r.samples.map((s) => s.rr), 0), median(r.samples.map((s) => s.rrP50us)).toFixed(1),
      spread(r.samples.map((s) => s.gbps), 2), spread(r.samples.map((s) => s.connectPerSec), 0)])));
  out.push('', 'ratios of medians:');
  const at = (e: Enforcer, n: number) => rows.find((r) => r.enforcer === e && r.n === n);
  const big = Math.max(...SCALES);
  for (const e of ['patu bridged', 'patu accelerated', 'kube-router'] as const) {
    const base = at(e, 0);
    for (const n of SCALES.filter((x) => x > 0)) {
      const r = at(e, n);
      if (!r || !base) continue;
      const rr = med(r, 'rr') / med(base, 'rr');
      const target = e !== 'kube-router' && n === big ? `  (target rr >= 0.95: ${rr >= 0.95 ? 'met' : 'MISSED'})` : '';
      out.push(`  ${e.padEnd(16)} ${String(n).padStart(5)} / 0 policies: rr ${rr.toFixed(3)}  Gbit/s ${(med(r, 'gbps') / med(base, 'gbps')).toFixed(3)}  connect ${(med(r, 'connectPerSec') / med(base, 'connectPerSec')).toFixed(3)}${target}`);
    }
  }
  for (const n of SCALES) {
    const k = at('kube-router', n);
    for (const e of ['patu bridged', 'patu accelerated'] as const) {
      const p = at(e, n);
      if (!k || !p) continue;
      const rr = med(p, 'rr') / med(k, 'rr');
      const target = n === big ? `  (target > 1: ${rr > 1 ? 'met' : 'MISSED'})` : '';
      out.push(`  ${e.padEnd(16)} / kube-router at ${String(n).padStart(5)}: rr ${rr.toFixed(2)}  Gbit/s ${(med(p, 'gbps') / med(k, 'gbps')).toFixed(2)}  connect ${(med(p, 'connectPerSec') / med(k, 'connectPerSec')).toFixed(2)}${target}`);
    }
  }
  const notes = rows.filter((r) => r.note);
  if (notes.length) out.push('', ...notes.map((r) => `  ${r.enforcer} at ${r.n}: ${r.note}`));
  return out;
}

// ---------------------------------------------------------------- sections

const testRunLines: string[] = [];

/** Per-packet ns of the tc programs via BPF_PROG_TEST_RUN: one row per N. */
function testRunSection(pp: PatuPolicy, tmp: string): void {
  const PASS = -1; // TC_ACT_UNSPEC: the programs' "no objection"
  const SHOT = 2;
  const pkt = (sport: number, dport: number, flags: 'syn' | 'ack') => tcpPacket({ src: CLIENT_IP, dst: SERVER_IP, sport, dport, flags });
  const admitted = pkt(40000, SERVER_PORTS.rr, 'ack');
  const deniedSyn = pkt(40001, DENIED_PORT, 'syn');
  const runs = Math.max(3, RUNS);
  /** Median [min-max] of `runs` test runs, each checked for the verdict it must give. */
  const ns = (what: string, f: () => { ns: number; retval: number }, want: number): string => {
    const xs = Array.from({ length: runs }, () => {
      const r = f();
      if (r.retval !== want) throw new Error(`test run ${what}: verdict ${r.retval}, expected ${want}`);
      return r.ns;
    });
    return spread(xs, 1);
  };
  const rowsTr: string[][] = [];
  for (const n of SCALES) {
    pp.apply(n);
    // The admitted flow's conntrack entries, made by its SYN at both veths (the client's egress, the server's ingress).
    for (const prog of ['from_pod', 'to_pod'] as const) {
      const r = pp.testRun(prog, pkt(40000, SERVER_PORTS.rr, 'syn'), 1);
      if (r.retval !== PASS) throw new Error(`test run: the bench flow's SYN is not admitted by ${prog} at ${n} policies (${r.retval})`);
    }
    rowsTr.push([String(n),
      ns(`from_pod established at ${n}`, () => pp.testRun('from_pod', admitted, REPEAT), PASS),
      ns(`to_pod established at ${n}`, () => pp.testRun('to_pod', admitted, REPEAT), PASS),
      n > 0 ? ns(`to_pod denied SYN at ${n}`, () => pp.testRun('to_pod', deniedSyn, REPEAT), SHOT) : '-']);
  }
  testRunLines.push(`tc program per packet, ns (BPF_PROG_TEST_RUN, repeat ${REPEAT}, median [min-max] of ${runs}; a 54-byte TCP frame):`);
  testRunLines.push(...table(['policies', 'from_pod, established flow', 'to_pod, established flow', 'to_pod, SYN no rule allows (full lookup, drop)'], rowsTr, 1));
  // Idle monitor: the same drop with cfg.monitor = 0, with the event code compiled out, and with the monitor on.
  const big = Math.max(...SCALES);
  if (big > 0) {
    pp.apply(big);
    const obj = buildNoEventsObject(tmp);
    const idle = ns('idle monitor', () => pp.testRun('to_pod', deniedSyn, REPEAT), SHOT);
    const without = obj ? ns('no events', () => pp.testRunWith(obj.dir, 'to_pod', deniedSyn, REPEAT, big), SHOT) : undefined;
    pp.setMonitor(true);
    let on: string;
    try {
      on = ns('monitor on', () => pp.testRun('to_pod', deniedSyn, REPEAT), SHOT);
    } finally {
      pp.setMonitor(false);
    }
    // And the idle figure once more after, so drift between the three shows.
    const idle2 = ns('idle monitor again', () => pp.testRun('to_pod', deniedSyn, REPEAT), SHOT);
    testRunLines.push('', `drop path (to_pod, SYN no rule allows) at ${big} policies, ns per packet:`);
    testRunLines.push(`  monitor idle (patu_pol_cfg.monitor = 0):      ${idle}, again after the others ${idle2}`);
    testRunLines.push(`  event code compiled out (${obj?.how ?? 'not built'}): ${without ?? '-'}`);
    testRunLines.push(`  monitor on, nobody reading (a reserve per drop; fails once the 256 KiB ring is full): ${on}`);
  }
}

async function patuSection(pp: PatuPolicy, topo: Topology, accel: Accel): Promise<void> {
  for (let r = 1; r <= RUNS; r++) {
    pp.detach(topo);
    checkEnforced('no enforcement', 0);
    record('none', 0, await measure(`run ${r} none`));
    pp.attach(topo);
    for (const n of SCALES) {
      pp.apply(n);
      checkEnforced(`patu bridged at ${n}`, n);
      record('patu bridged', n, await measure(`run ${r} patu bridged ${n}`));
      accel.enable();
      checkEnforced(`patu accelerated at ${n}`, n);
      record('patu accelerated', n, await measure(`run ${r} patu accelerated ${n}`));
      accel.disable();
    }
  }
  pp.apply(0);
  pp.detach(topo);
}

/** The test cluster the kube-router and latency sections share: its apiserver, the pods as Pod objects on a Node of their own. */
interface ClusterCtx {
  /** The full test cluster (kube-router needs its kubeconfig); absent on a bare apiserver. */
  cluster?: TestCluster;
  api: Api;
  /** A kubeconfig for `patu agent --kubernetes`, written under dir. */
  agentKubeconfig(dir: string): string;
  node: string;
  tmp: string;
}

async function clusterSetup(tmp: string): Promise<ClusterCtx> {
  const skip = clusterSkipReason();
  if (skip) throw new Error(`the kube-router and latency sections need the test cluster: ${skip}`);
  reapStaleClusters();
  const cluster = new TestCluster(process.pid);
  scratch.defer('cluster', () => {
    const d = cluster.down();
    if (!d.ok) log(`cluster.sh down failed: ${d.detail}`);
  });
  log('bringing up the test cluster (apiserver) ...');
  await cluster.up(['--no-cni']);
  // The node netns reaches the apiserver (on the cluster's node address, in the host) over a veth of its own.
  const up = `pbu${process.pid % 100000}`;
  const LINK = `10.209.${K}`;
  ip('link', 'add', up, 'type', 'veth', 'peer', 'name', 'up0', 'netns', NODE_NS);
  scratch.defer(`veth ${up}`, () => void spawnSync('ip', ['link', 'del', up]));
  ip('addr', 'add', `${LINK}.1/30`, 'dev', up);
  ip('link', 'set', up, 'up');
  ip('-n', NODE_NS, 'addr', 'add', `${LINK}.2/30`, 'dev', 'up0');
  ip('-n', NODE_NS, 'link', 'set', 'up0', 'up');
  ip('-n', NODE_NS, 'route', 'add', `${cluster.names.nodeIP}/32`, 'via', `${LINK}.1`);
  const api = new Api(cluster.apiServer, join(cluster.state, 'pki'), 16);
  scratch.defer('api client', () => api.close());
  const node = `patu-bench-pol-${process.pid}`;
  await createFakeNode(api, node, GW);
  await api.call('POST', '/api/v1/namespaces', benchNamespace());
  // Pods need the namespace's default ServiceAccount, which the controller manager makes a moment later.
  for (const end = Date.now() + 60_000; ; await sleep(200)) {
    try {
      await api.call('GET', `/api/v1/namespaces/${BENCH_NS}/serviceaccounts/default`);
      break;
    } catch (e) {
      if (Date.now() > end) throw e;
    }
  }
  await createPods(api, node, GW, benchPods(CLIENT_IP, SERVER_IP));
  return { cluster, api, agentKubeconfig: (dir) => agentKubeconfig(cluster, dir), node, tmp };
}

/**
 * The latency section alone on a bare kube-apiserver + etcd (test/helpers/apiserver.ts: free loopback
 * ports, no controllers, no cluster lock needed; BENCH_APISERVER=bare): the same objects, the agent
 * with the admin's token. What differs from the test cluster: no controller manager (the namespace's
 * default ServiceAccount is made here), and the apiserver is on loopback.
 */
async function bareSetup(tmp: string): Promise<ClusterCtx> {
  const { BareApiserver, apiserverSkipReason } = await import('../test/helpers/apiserver.js');
  const skip = apiserverSkipReason();
  if (skip) throw new Error(`BENCH_APISERVER=bare: ${skip}`);
  log('starting a bare kube-apiserver ...');
  const bs = await BareApiserver.start();
  scratch.defer('bare apiserver', () => bs.stop());
  const api = { call: (method: string, path: string, body?: unknown, contentType?: string) => bs.must(method, path, body, contentType ? { contentType } : {}) } as unknown as Api;
  const node = `patu-bench-pol-${process.pid}`;
  await createFakeNode(api, node, GW);
  await api.call('POST', '/api/v1/namespaces', benchNamespace());
  await api.call('POST', `/api/v1/namespaces/${BENCH_NS}/serviceaccounts`, { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: 'default', namespace: BENCH_NS } });
  await createPods(api, node, GW, benchPods(CLIENT_IP, SERVER_IP));
  return { api, agentKubeconfig: () => bs.kubeconfig(), node, tmp };
}

/** Writes the policies of benchPolicies(n) that are not in the apiserver yet (they only grow along SCALES). */
async function writePolicies(api: Api, n: number): Promise<number> {
  const all = benchPolicies(n);
  const missing = all.filter((p) => !existingPolicy.has(p.metadata.name));
  await inParallel(missing.length, 16, async (i) => {
    const p = missing[i]!;
    await api.call('POST', `/apis/networking.k8s.io/v1/namespaces/${BENCH_NS}/networkpolicies`, p);
    existingPolicy.add(p.metadata.name);
  });
  return all.length;
}

async function kubeRouterSection(ctx: ClusterCtx): Promise<void> {
  const bin = kubeRouterBinary();
  const version = kubeRouterVersion(bin);
  const kubeconfig = join(ctx.tmp, 'kube-router.kubeconfig');
  if (!ctx.cluster) throw new Error('the kube-router section needs the test cluster (not BENCH_APISERVER=bare)');
  writeFileSync(kubeconfig, readFileSync(ctx.cluster.kubeconfig, 'utf8'), { mode: 0o600 });
  let running: KubeRouterRun | undefined;
  scratch.defer('kube-router', () => stopKubeRouter(running, bin, NODE_NS));
  running = await startKubeRouter({ bin, ns: NODE_NS, node: ctx.node, kubeconfig, dir: ctx.tmp, healthPort: await freePort() });
  for (const n of SCALES) {
    const t0 = Date.now();
    const have = await writePolicies(ctx.api, n);
    // Programmed: a KUBE-NWPLCY chain per policy, and the traffic verdicts right.
    const end = Date.now() + 900_000;
    for (;;) {
      const c = kubeRouterChains(NODE_NS);
      if (c.policyChains >= have && connects(SERVER_PORTS.sink) && (have === 0 || !connects(DENIED_PORT))) break;
      if (running.child.exitCode !== null) throw new Error(`kube-router exited ${running.child.exitCode}: ${readFileSync(running.logFile, 'utf8').slice(-3000)}`);
      if (Date.now() > end) throw new Error(`kube-router: ${c.policyChains}/${have} policy chains after 900 s`);
      await sleep(500);
    }
    const synced = (Date.now() - t0) / 1000;
    await sleep(2000);
    checkEnforced(`kube-router at ${n}`, n);
    const c = kubeRouterChains(NODE_NS);
    const note = `${version}: ${c.policyChains} policy chains, ${c.rules} filter rules, ${c.ipsets} ipsets; programmed ${synced.toFixed(1)} s after the writes began`;
    log(note);
    for (let r = 1; r <= RUNS; r++) record('kube-router', n, await measure(`run ${r} kube-router ${n}`), note);
  }
  await stopKubeRouter(running, bin, NODE_NS);
  running = undefined;
}

const latencyLines: string[] = [];

/**
 * Policy-change latency through the agent's Kubernetes source: `patu agent --kubernetes` (its ServiceAccount and
 * deploy/patu.yaml's role) as the bench pods' node, its pinned programs attached to their veths; a probe in the
 * client connects to the server's 8080 every ~1 ms (bench/policy-probe.c). Each round deletes the policy that allows
 * it (the fillers stay: the largest N) and times from the apiserver's answer to the first probe attempt that fails,
 * then writes it back and times until the first that connects.
 */
async function latencySection(ctx: ClusterCtx): Promise<void> {
  const rounds = Number(env('BENCH_LATENCY_ROUNDS', '25'));
  const big = Math.max(...SCALES, 2);
  await writePolicies(ctx.api, big);
  const probe = join(ROOT, 'build', 'bench', 'policy-probe');
  sh('cc', ['-O2', '-Wall', '-o', probe, join(ROOT, 'bench', 'policy-probe.c')]);
  const pin = scratch.pinRoot('lat');
  scratch.defer('names file', () => rmSync(policyNamesPath(pin), { force: true }));
  const dir = join(ctx.tmp, 'agent-lat');
  mkdirSync(dir, { recursive: true });
  const kubeconfig = ctx.agentKubeconfig(dir);
  // --bridge: a name no bridge has, so its start-up attach finds no veth of the host's; ours are attached below.
  const agent = await startAgent({ kubeconfig, pinRoot: pin, cgroup: CG, dir, nodeName: ctx.node, readyMs: 300_000, extraArgs: ['--bridge', `pbnone${process.pid % 10000}`] });
  scratch.defer('agent (latency)', () => stopChild(agent.child));
  let dp: PolicyDataplane | null = null;
  for (const end = Date.now() + 120_000; !(dp = PolicyDataplane.openExisting(pin)); await sleep(200)) {
    if (Date.now() > end || agent.child.exitCode !== null) throw new Error(`patu agent --kubernetes: no policy programs under ${pin}: ${readFileSync(agent.logFile, 'utf8').slice(-3000)}`);
  }
  const pdp = dp;
  scratch.defer('latency dataplane', () => {
    withNetns(`/run/netns/${NODE_NS}`, () => {
      pdp.detach(topoRef!.clientIfindex);
      pdp.detach(topoRef!.serverIfindex);
    });
    pdp.close();
  });
  pdp.bindDevice(CLIENT_IP, topoRef!.clientIfindex);
  pdp.bindDevice(SERVER_IP, topoRef!.serverIfindex);
  withNetns(`/run/netns/${NODE_NS}`, () => {
    pdp.attach(topoRef!.clientIfindex);
    pdp.attach(topoRef!.serverIfindex);
  });
  const until = async (what: string, f: () => boolean, ms = 60_000): Promise<void> => {
    const end = Date.now() + ms;
    while (!f()) {
      if (Date.now() > end) throw new Error(`latency: ${what} not seen after ${ms} ms: ${readFileSync(agent.logFile, 'utf8').slice(-1500)}`);
      await sleep(1);
    }
  };
  await until('the agent enforcing (8081 refused, 8080 open)', () => !connects(DENIED_PORT) && connects(SERVER_PORTS.sink));
  const p = spawn('ip', ['netns', 'exec', CLIENT_NS, probe, SERVER_IP, String(SERVER_PORTS.sink), '1000'], { stdio: ['ignore', 'pipe', 'inherit'] });
  scratch.defer('probe', () => void p.kill('SIGKILL'));
  const seen: { t: bigint; ok: boolean }[] = [];
  let buf = '';
  p.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const [t, v] = buf.slice(0, i).split(' ');
      buf = buf.slice(i + 1);
      seen.push({ t: BigInt(t!), ok: v === 'ok' });
    }
  });
  await until('the probe connecting', () => seen.at(-1)?.ok === true);
  const allow = benchPolicies(big).find((x) => x.metadata.name === 'zz-allow-server-ingress');
  const url = `/apis/networking.k8s.io/v1/namespaces/${BENCH_NS}/networkpolicies`;
  const deny: number[] = [];
  const grant: number[] = [];
  const change = async (write: () => Promise<unknown>, want: boolean, into: number[]): Promise<void> => {
    const from = seen.length;
    await write();
    const answered = process.hrtime.bigint();
    await until(`the probe seeing ${want ? 'ok' : 'fail'}`, () => seen.slice(from).some((x) => x.ok === want), 10_000);
    const first = seen.slice(from).find((x) => x.ok === want)!;
    // A watch event can reach the agent before the HTTP answer reaches us: clamp at 0 (it took effect by then).
    into.push(Math.max(0, Number(first.t - answered) / 1e6));
  };
  for (let r = 0; r < rounds; r++) {
    await change(() => ctx.api.call('DELETE', `${url}/${allow.metadata.name}`), false, deny);
    await sleep(50);
    await change(() => ctx.api.call('POST', url, allow), true, grant);
    await sleep(50);
  }
  p.kill('SIGKILL');
  // BENCH_AGENT_LOG=FILE: the agent's log kept (each apply's phases: 'network policy programmed').
  if (process.env.BENCH_AGENT_LOG) writeFileSync(process.env.BENCH_AGENT_LOG, readFileSync(agent.logFile));
  const q = (xs: number[], f: number): number => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.ceil(f * xs.length) - 1)]!;
  const fmt = (xs: number[]) => `p50 ${q(xs, 0.5).toFixed(1)} ms, p99 ${q(xs, 0.99).toFixed(1)} ms, max ${Math.max(...xs).toFixed(1)} ms`;
  const p99 = Math.max(q(deny, 0.99), q(grant, 0.99));
  latencyLines.push(`policy change -> new verdict (patu agent --kubernetes on ${ctx.cluster ? 'the test cluster\'s apiserver' : 'a bare kube-apiserver (BENCH_APISERVER=bare)'}, ${big} policies, probe every ~1 ms, ${rounds} rounds each way):`);
  latencyLines.push(`  allowing policy deleted -> first refused connect:  ${fmt(deny)}`);
  latencyLines.push(`  allowing policy written -> first connect:          ${fmt(grant)}`);
  latencyLines.push(`  target p99 < 20 ms: ${p99 < 20 ? 'met' : 'MISSED'}`);
}

const existingPolicy = new Set<string>();
let topoRef: Topology | undefined;

/** VmRSS of `patu agent --policy-file` (in the node netns) with `n` policies, after it programmed them. */
async function agentRss(n: number, tmp: string): Promise<{ rssMiB: number; heapMiB: number; readyS: number }> {
  const file = join(tmp, `policies-${n}.yaml`);
  const pods = benchPods(CLIENT_IP, SERVER_IP);
  const docs = [benchNamespace(), ...pods.map((p) => ({
    apiVersion: 'v1', kind: 'Pod', metadata: { namespace: BENCH_NS, name: p.name, labels: p.labels },
    spec: { containers: [{ name: 'c', ports: p.ports }] }, status: { podIP: p.ip },
  })), ...benchPolicies(n)];
  writeFileSync(file, docs.map((d) => YAML.stringify(d)).join('---\n'));
  const pin = scratch.pinRoot(`agent${n}`);
  scratch.defer('names file', () => rmSync(policyNamesPath(pin), { force: true }));
  const dir = join(tmp, `agent-${n}`);
  mkdirSync(dir, { recursive: true });
  const port = await freePort();
  const t0 = Date.now();
  const child = spawn('ip', ['netns', 'exec', NODE_NS, join(ROOT, 'bin', 'patu'), 'agent', '--policy-file', file, '--pin-root', pin, '--cgroup', CG,
    '--cni-conf-dir', '', '--cni-socket', join(dir, 'agent.sock'), '--metrics-addr', `127.0.0.1:${port}`], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stdout!.on('data', (d: Buffer) => {
    log += d.toString();
    err = (err + d.toString()).slice(-4000);
  });
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-4000)));
  try {
    const end = Date.now() + 120_000;
    for (;;) {
      if (child.exitCode !== null) throw new Error(`patu agent exited ${child.exitCode}: ${err}`);
      const r = spawnSync('ip', ['netns', 'exec', NODE_NS, 'curl', '-sf', `http://127.0.0.1:${port}/readyz`], { encoding: 'utf8' });
      if (r.status === 0) break;
      if (Date.now() > end) throw new Error(`patu agent not ready after 120 s: ${err}`);
      await sleep(200);
    }
    // Programmed: its log says so (its pins are in the bpffs it mounted in `ip netns exec`'s mount namespace, out of
    // our sight); then a few seconds for the compile's garbage to go.
    while (!new RegExp(`"policies":${n},"msg":"network policy enforced`).test(log)) {
      if (Date.now() > end) throw new Error(`patu agent: no "network policy enforced" with ${n} policies after 120 s: ${err}`);
      await sleep(200);
    }
    const readyS = (Date.now() - t0) / 1000;
    await sleep(5000);
    const kb = Number(/^VmRSS:\s+(\d+)/m.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'))?.[1] ?? NaN);
    const metrics = spawnSync('ip', ['netns', 'exec', NODE_NS, 'curl', '-sf', `http://127.0.0.1:${port}/metrics`], { encoding: 'utf8' }).stdout ?? '';
    const heap = Number(/^patu_nodejs_heap_size_used_bytes (\S+)$/m.exec(metrics)?.[1] ?? NaN) / 1048576;
    return { rssMiB: kb / 1024, heapMiB: heap, readyS };
  } finally {
    child.kill('SIGTERM');
    await new Promise((r) => (child.exitCode !== null ? r(undefined) : child.once('exit', r)));
  }
}

// ---------------------------------------------------------------- the run

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('bench/policy needs root');
  for (const t of ['iperf3', 'sockperf', 'nc']) if (spawnSync('sh', ['-c', `command -v ${t}`]).status !== 0) throw new Error(`${t} missing (scripts/setup.sh installs it)`);
  buildTools();
  const tmp = scratch.tmpDir('patu-bench-pol');
  const started = new Date().toISOString();
  const load0 = loadavg()[0]!;
  const topo = await topology();
  topoRef = topo;
  const accel = Accel.open({ pinRoot: PIN, cgroupPath: CG });
  scratch.defer('accel', () => accel.teardown());
  accel.enable();
  accel.registerPod(CLIENT_IP);
  accel.registerPod(SERVER_IP);
  accel.disable();
  const pp = PatuPolicy.open(PIN, NODE_NS, topo, CLIENT_IP, SERVER_IP, GW);
  scratch.defer('patu policy', () => pp.close());

  const out: string[] = [];
  if (WHAT.has('testrun')) {
    pp.attach(topo);
    testRunSection(pp, tmp);
    pp.apply(0);
    pp.detach(topo);
  }
  if (WHAT.has('patu')) await patuSection(pp, topo, accel);
  if (WHAT.has('kube-router') || WHAT.has('latency')) {
    const ctx = process.env.BENCH_APISERVER === 'bare' && !WHAT.has('kube-router') ? await bareSetup(tmp) : await clusterSetup(tmp);
    if (WHAT.has('kube-router')) await kubeRouterSection(ctx);
    if (WHAT.has('latency')) await latencySection(ctx);
  }
  const rss: string[] = [];
  const agentHelp = spawnSync(join(ROOT, 'bin', 'patu'), ['agent', '--help'], { encoding: 'utf8' }).stdout ?? '';
  if (WHAT.has('rss') && !agentHelp.includes('--policy-file')) rss.push('  not measured: this build\'s `patu agent` has no --policy-file');
  else if (WHAT.has('rss')) {
    for (const n of [0, Math.max(...SCALES)]) {
      const r = await agentRss(n, tmp);
      rss.push(`  ${String(n).padStart(5)} policies: VmRSS ${r.rssMiB.toFixed(1)} MiB, V8 heap used ${r.heapMiB.toFixed(1)} MiB (programmed ${r.readyS.toFixed(1)} s after start; read 5 s later)`);
    }
  }
  out.push(`patu NetworkPolicy bench, ${started}, kernel ${sh('uname', ['-r']).trim()}, policies ${SCALES.join('/')}, load ${load0.toFixed(1)} at start, ${loadavg()[0]!.toFixed(1)} at end`);
  if (testRunLines.length) out.push('', ...testRunLines);
  if (rows.length) out.push('', ...renderTraffic());
  if (rss.length) out.push('', 'patu agent (--policy-file) resident memory:', ...rss);
  if (latencyLines.length) out.push('', ...latencyLines);
  process.stdout.write(out.join('\n') + '\n');
}

scratch.cleanupOnSignals();
try {
  await main();
} catch (e) {
  process.stderr.write(`bench/policy: ${(e as Error).stack ?? e}\n`);
  process.exitCode = 1;
} finally {
  await scratch.cleanup().catch((e: Error) => log(e.message));
}
