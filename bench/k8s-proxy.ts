// patu's agent against the real kube-proxy (iptables mode), same cluster, same run, same apiserver:
//   1. N ClusterIP Services (default 1,000), each with a hand-written EndpointSlice (2-3 ready endpoints,
//      no pods), created with parallel API requests; time from the first write until all N are programmed
//      in each data plane: patu = vip:port in the pinned service map with exactly its backends (read from
//      the pins, never through ServiceLb.open, which would repair/write); kube-proxy = the KUBE-SERVICES
//      jump to a KUBE-SVC-* chain whose KUBE-SEP-* chains DNAT to exactly those backends (iptables-save -t nat).
//   2. M single changes on top (default 100: add an endpoint, remove one, create a service, delete it),
//      each timed from the API write returning until each data plane shows it; p50/p99.
//   3. VmRSS and CPU seconds (utime+stime; kube-proxy also with its iptables-restore children) of both
//      processes: idle, after the N services, after the changes.
// Both are observed from outside the same way, by polling: a change counts as programmed at the MIDPOINT of
// the first poll that shows it (iptables-save takes milliseconds, a map lookup microseconds; the JSON keeps
// the dump times, which bound the error). patu's agent runs with a ServiceAccount token made from the
// RBAC docs of deploy/patu.yaml (no admin kubeconfig), its programs on a cgroup of its own.
//
//   bash scripts/build.sh && node dist/bench/k8s-proxy.js [--json]        (root; Kubernetes binaries from
//   scripts/k8s/build.sh, kube-proxy included; no other kube-proxy may run: ports 10249/10256 and the
//   host's KUBE-* iptables chains are per host)
//   BENCH_SERVICES=1000 BENCH_CHANGES=100 BENCH_GAP_MS=1500 BENCH_CONCURRENCY=16
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readProgrammed, SOCK_LB_MAP_CODECS as C } from '../src/dataplane/service-lb.js';
import { TypedMap } from '../src/kernel/bpf/map.js';
import { TestCluster, clusterSkipReason, reapStaleClusters } from '../test/helpers/k8s-cluster.js';
import { Scratch } from '../test/helpers/kernel.js';
import { Api, TRIGGER, agentKubeconfig, assertNoOtherKubeProxy, createService, endpointsOf, fetchText, gauge, now, otherLoad, serviceBody, sleep, sliceBody, startAgent, stopChild, type Svc } from './lib/k8s.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const N = Number(process.env.BENCH_SERVICES ?? 1000);
const M = Number(process.env.BENCH_CHANGES ?? 100);
const GAP_MS = Number(process.env.BENCH_GAP_MS ?? 1500);
const CONC = Number(process.env.BENCH_CONCURRENCY ?? 16);
const TIMEOUT_MS = Number(process.env.BENCH_TIMEOUT_MS ?? 300_000);
const JSON_OUT = process.argv.includes('--json');
const NS = 'patu-bench';
const scratch = new Scratch('patu-bench-k8s');
const PIN = scratch.pinRoot();
let CG = '';
const SVC_PORT = 80;
const TARGET_PORT = 8080;

const r1 = (n: number): number => Math.round(n * 10) / 10;
const log = (msg: string): void => {
  if (!JSON_OUT || process.env.BENCH_VERBOSE) console.error(`k8s-proxy: ${msg}`);
};

// ---------------------------------------------------------------- services and expectations

let ipCounter = 0;
/** Endpoint addresses in the cluster CIDR but outside every test cluster's pod /24 (10.202.20-219.0/24). */
const nextIp = (): string => {
  const c = ipCounter++;
  return `10.202.${230 + (c >> 8)}.${c & 255}`;
};

/** `vip:port` -> sorted `ip:port` backends joined by commas, as both data planes must show it. */
const expectOf = (s: Svc): string => s.ips.map((ip) => `${ip}:${TARGET_PORT}`).sort().join(',');
const keyOf = (s: Svc): string => `${s.vip}:${SVC_PORT}`;

const PORTS = { port: SVC_PORT, targetPort: TARGET_PORT };
const serviceBodyOf = (name: string) => serviceBody(NS, name, PORTS);
const sliceOf = (s: Svc) => sliceBody(NS, s, TARGET_PORT);

// ---------------------------------------------------------------- what each data plane holds

/** patu, all services: the pinned maps read the way `patu services list` reads them. */
function patuAll(): Map<string, string> {
  const out = new Map<string, string>();
  for (const v of readProgrammed(PIN) ?? []) {
    if (v.protocol !== 'TCP') continue;
    out.set(`${v.vip}:${v.port}`, v.backends.map((b) => `${b.ip}:${b.port}`).sort().join(','));
  }
  return out;
}

/**
 * patu, one service: a few lookups on the pinned maps (microseconds), for the per-change polls, with
 * the codecs ServiceLb uses (checked field by field against the BTF in test/unit/bpf-layout.test.ts).
 */
class PatuReader {
  private readonly svc = TypedMap.fromPin(join(PIN, 'patu_svc'), C.patu_svc.key, C.patu_svc.value);
  private readonly slot = TypedMap.fromPin(join(PIN, 'patu_svc_slot'), C.patu_svc_slot.key, C.patu_svc_slot.value);
  private readonly backend = TypedMap.fromPin(join(PIN, 'patu_backend'), C.patu_backend.key, C.patu_backend.value);

  /** Sorted backends, or undefined when the service port is not in the map. */
  get(vip: string, port: number): string | undefined {
    const v = this.svc.lookup({ vip, port, proto: 6, pad: 0 });
    if (!v) return undefined;
    const out: string[] = [];
    for (let i = 0; i < v.count; i++) {
      const id = this.slot.lookup({ svcId: v.svcId, slot: i });
      const b = id === undefined ? undefined : this.backend.lookup(id);
      if (b) out.push(`${b.ip}:${b.port}`);
    }
    return out.sort().join(',');
  }
  close(): void {
    this.svc.close();
    this.slot.close();
    this.backend.close();
  }
}

/** kube-proxy: iptables-save -t nat, parsed into `vip:port` -> sorted DNAT targets of its KUBE-SEP chains. */
function iptablesSave(): Promise<{ text: string; ms: number }> {
  const t0 = now();
  return new Promise((resolve, reject) => {
    const p = spawn('iptables-save', ['-t', 'nat'], { stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    p.stdout.on('data', (c: Buffer) => out.push(c));
    p.stderr.on('data', (c: Buffer) => err.push(c));
    p.on('error', reject);
    p.on('close', (code) => {
      if (code !== 0) reject(new Error(`iptables-save -t nat: exit ${code}: ${Buffer.concat(err).toString().trim()}`));
      else resolve({ text: Buffer.concat(out).toString('utf8'), ms: now() - t0 });
    });
  });
}

const RE_SERVICES = /^-A KUBE-SERVICES -d (\d+\.\d+\.\d+\.\d+)\/32 -p tcp .*--dport (\d+) -j (KUBE-SVC-\S+)/;
const RE_SVC = /^-A (KUBE-SVC-\S+) .*-j (KUBE-SEP-\S+)/;
const RE_SEP = /^-A (KUBE-SEP-\S+) .*--to-destination (\S+)/;

export function parseKubeProxy(text: string): Map<string, string> {
  const vipToSvc = new Map<string, string>();
  const svcToSeps = new Map<string, string[]>();
  const sepToDest = new Map<string, string>();
  for (const line of text.split('\n')) {
    if (!line.startsWith('-A KUBE-S')) continue;
    let m: RegExpExecArray | null;
    if ((m = RE_SERVICES.exec(line))) vipToSvc.set(`${m[1]}:${m[2]}`, m[3]!);
    else if ((m = RE_SVC.exec(line))) {
      let l = svcToSeps.get(m[1]!);
      if (!l) svcToSeps.set(m[1]!, (l = []));
      l.push(m[2]!);
    } else if ((m = RE_SEP.exec(line))) sepToDest.set(m[1]!, m[2]!);
  }
  // Every service jump is in the map (a deleted service is one without); its value matches a programmed
  // service's only when every KUBE-SEP chain it jumps to DNATs.
  const out = new Map<string, string>();
  for (const [vip, chain] of vipToSvc) {
    const dests = (svcToSeps.get(chain) ?? []).map((s) => sepToDest.get(s));
    out.set(vip, dests.some((d) => d === undefined) ? 'incomplete' : (dests as string[]).sort().join(','));
  }
  return out;
}

// ---------------------------------------------------------------- process figures

interface ProcFig {
  rssMB: number;
  /** utime+stime of the process itself, seconds. */
  cpuS: number;
  /** Plus the CPU of children it waited for (kube-proxy's iptables-restore). */
  cpuWithChildrenS: number;
}

function proc(pid: number): ProcFig {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const rssKb = Number(/^VmRSS:\s+(\d+)/m.exec(status)?.[1] ?? NaN);
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the ")" of comm (which may hold spaces): state is field 3, utime 14, stime 15, cutime 16, cstime 17.
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const tick = 100; // CLK_TCK on Linux x86-64
  const self = (Number(f[11]) + Number(f[12])) / tick;
  const kids = (Number(f[13]) + Number(f[14])) / tick;
  return { rssMB: r1(rssKb / 1024), cpuS: self, cpuWithChildrenS: self + kids };
}

/** An idle bare node's RSS, same binary, same run: the floor under the agent's. */
async function nodeFloorMB(): Promise<number> {
  const p = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 1e6)'], { stdio: 'ignore' });
  await new Promise((r) => setTimeout(r, 1500));
  const m = proc(p.pid!).rssMB;
  p.kill('SIGKILL');
  return m;
}

const r2 = (n: number): number => Math.round(n * 100) / 100;
const diffCpu = (a: ProcFig, b: ProcFig) => ({ cpuS: r2(b.cpuS - a.cpuS), cpuWithChildrenS: r2(b.cpuWithChildrenS - a.cpuWithChildrenS) });

/** Sum and count of a Prometheus histogram (optionally one label set), from the text format. */
function histo(text: string, name: string, label = ''): { count: number; meanMs: number } {
  const pick = (suffix: string): number => {
    let total = 0;
    for (const line of text.split('\n')) {
      if (!line.startsWith(`${name}${suffix}`)) continue;
      if (label && !line.includes(label)) continue;
      total += Number(line.slice(line.lastIndexOf(' ') + 1));
    }
    return total;
  };
  const count = pick('_count');
  return { count, meanMs: count ? r1((pick('_sum') / count) * 1000) : 0 };
}

// ---------------------------------------------------------------- statistics and output

function pct(xs: number[], p: number): number {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]!;
}
const ratio = (a: number, b: number): string => (Number.isFinite(a) && Number.isFinite(b) && b > 0 ? (a / b).toFixed(2) : '-');
const fmt = (n: number, unit: string): string => (Number.isFinite(n) ? `${unit === 's' ? n.toFixed(2) : r1(n)} ${unit}` : 'n/a');

function table(rows: [string, number, number, string][]): string {
  const cells = rows.map(([what, a, b, unit]) => [what, fmt(a, unit), fmt(b, unit), ratio(a, b)]);
  const head = ['', 'patu', 'kube-proxy', 'patu/kube-proxy'];
  const w = head.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)));
  const line = (c: string[]) => c.map((x, i) => (i === 0 ? x.padEnd(w[i]!) : x.padStart(w[i]!))).join('  ');
  return [line(head), ...cells.map(line)].join('\n');
}

// ---------------------------------------------------------------- the run

interface Polls {
  patuMs: number;
  kubeProxyMs: number;
}

/**
 * Polls both data planes independently until each satisfies its check (or the deadline passes) and returns,
 * for each, the midpoint of the first poll that saw it, relative to t0.
 */
async function whenProgrammed(t0: number, patuOk: () => boolean, kpOk: (m: Map<string, string>) => boolean, opts: { patuEveryMs: number; deadlineMs: number; onDump?: (ms: number) => void; gate?: () => boolean; kpEveryMs?: number }): Promise<Polls> {
  const gate = opts.gate ?? (() => true);
  const deadline = t0 + opts.deadlineMs;
  const patu = (async () => {
    for (;;) {
      const ts = now();
      if (gate() && patuOk()) return (ts + now()) / 2 - t0;
      if (ts > deadline) return NaN;
      await sleep(opts.patuEveryMs);
    }
  })();
  const kp = (async () => {
    for (;;) {
      const ts = now();
      if (!gate()) {
        await sleep(5);
        continue;
      }
      const d = await iptablesSave();
      opts.onDump?.(d.ms);
      if (kpOk(parseKubeProxy(d.text))) return ts + d.ms / 2 - t0;
      if (ts > deadline) return NaN;
      await sleep(opts.kpEveryMs ?? 20);
    }
  })();
  const [patuMs, kubeProxyMs] = await Promise.all([patu, kp]);
  return { patuMs, kubeProxyMs };
}

/** Waits until kube-proxy's last rules sync is at least `ms` old (its own metric, wall clock). */
async function kubeProxyQuiet(ms: number): Promise<void> {
  const end = Date.now() + 30_000;
  while (Date.now() < end) {
    const last = gauge(await fetchText('http://127.0.0.1:10249/metrics'), 'kubeproxy_sync_proxy_rules_last_timestamp_seconds');
    const age = Date.now() - last * 1000;
    if (!Number.isFinite(age) || age >= ms) return;
    await sleep(ms - age + 5);
  }
}

async function main(): Promise<void> {
  const skip = clusterSkipReason(['kube-proxy']);
  if (skip) throw new Error(`k8s-proxy: cannot run: ${skip}`);
  if (!existsSync(join(ROOT, 'build', 'bpf', 'sock_lb.o'))) throw new Error('k8s-proxy: build/bpf/sock_lb.o missing: run scripts/build.sh');
  reapStaleClusters();
  assertNoOtherKubeProxy('k8s-proxy');

  const cluster = new TestCluster();
  const tmp = mkdtempSync(join(tmpdir(), 'patu-k8s-proxy-'));
  let agent: ChildProcess | undefined;
  let api: Api | undefined;
  let reader: PatuReader | undefined;
  let cleaned = false;
  const cleanup = async (): Promise<void> => {
    if (cleaned) return;
    cleaned = true;
    reader?.close();
    api?.close();
    await stopChild(agent);
    // The agent's cgroup and pins (unpinning its links detaches its programs).
    try {
      await scratch.cleanup();
    } catch (e) {
      console.error(`k8s-proxy: ${(e as Error).message}`);
    }
    const d = cluster.down();
    if (!d.ok) console.error(`k8s-proxy: cluster.sh down failed: ${d.detail}`);
    rmSync(tmp, { recursive: true, force: true });
  };
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      console.error(`k8s-proxy: ${sig}: cleaning up`);
      void cleanup().finally(() => process.exit(130));
    });
  }

  try {
    const loadBefore = otherLoad(0);
    log(`cluster up with kube-proxy (${cluster.state}); ${loadBefore}`);
    const tUp = now();
    await cluster.up(['--kube-proxy']);
    log(`cluster up in ${Math.round((now() - tUp) / 1000)} s`);
    const kpPid = cluster.pidOf('kube-proxy');
    if (!kpPid) throw new Error('k8s-proxy: no kube-proxy pid after cluster.sh up --kube-proxy');

    // 1. The agent's credentials: its ServiceAccount, its least-privilege role, a bound token.
    const kubeconfig = agentKubeconfig(cluster, tmp);
    CG = scratch.cgroup();
    const run = await startAgent({ kubeconfig, pinRoot: PIN, cgroup: CG, dir: tmp });
    agent = run.child;
    const agentPid = run.child.pid!;
    const metricsPort = run.metricsPort;
    // readyz answers 503 until programmed; fetchText rejects on non-200, so this is "programmed".
    log(`agent ready (pid ${agentPid}); kube-proxy pid ${kpPid}`);

    api = new Api(cluster.apiServer, join(cluster.state, 'pki'), CONC);
    await api.call('POST', '/api/v1/namespaces', { apiVersion: 'v1', kind: 'Namespace', metadata: { name: NS } });
    await sleep(3000);
    const idle = { patu: proc(agentPid), kubeProxy: proc(kpPid) };

    // 2. N services as fast as the apiserver takes them.
    const svcs: Svc[] = [];
    const dumpMs: number[] = [];
    const t0 = now();
    let next = 0;
    const workers = Array.from({ length: CONC }, async () => {
      while (next < N) {
        const i = next++;
        svcs.push(await createService(api!, NS, `s${i}`, PORTS, Array.from({ length: 2 + (i % 2) }, nextIp)));
      }
    });
    let createdMs = NaN;
    const created = Promise.all(workers).then(() => {
      createdMs = now() - t0;
      log(`${N} services and slices written in ${Math.round(createdMs)} ms`);
    });
    // The expectation is complete only once every write returned; until then "all N" cannot hold.
    let allWritten = false;
    void created.then(() => {
      allWritten = true;
    });
    const allIn = (m: Map<string, string>): boolean => svcs.every((s) => m.get(keyOf(s)) === expectOf(s));
    // Polls start once every write returned (before that "all N" cannot hold, and polling would only load the machine).
    const create = await whenProgrammed(t0, () => allIn(patuAll()), allIn, { patuEveryMs: 20, deadlineMs: TIMEOUT_MS, onDump: (ms) => dumpMs.push(ms), gate: () => allWritten });
    await created;
    log(`all ${N} programmed: patu ${Math.round(create.patuMs)} ms, kube-proxy ${Math.round(create.kubeProxyMs)} ms`);
    await sleep(3000);
    const at1k = { patu: proc(agentPid), kubeProxy: proc(kpPid) };
    const ruleLines = (await iptablesSave()).text.split('\n').filter((l) => l.startsWith('-A ')).length;
    const patuSvcs = readProgrammed(PIN)?.length ?? 0;

    // 3. Single changes, one at a time, each once both data planes are settled and kube-proxy has not synced
    // for GAP_MS: it syncs at most once per minSyncPeriod (1 s by default), so a change right after one of its
    // syncs would measure its rate limit rather than its programming (and a sync held back by that limit fires
    // exactly 1 s after the last one: GAP_MS must exceed it by a margin, or the change races that sync) (a created service is two events,
    // Service then EndpointSlice, and meets that limit by itself: that is kube-proxy's real behaviour).
    reader = new PatuReader();
    const kinds = ['add-endpoint', 'remove-endpoint', 'create-service', 'delete-service'] as const;
    const lat: Record<string, { patu: number[]; kubeProxy: number[] }> = Object.fromEntries(kinds.map((k) => [k, { patu: [], kubeProxy: [] }]));
    const changeDump: number[] = [];
    let extra: Svc | undefined;
    let extraN = 0;
    for (let c = 0; c < M; c++) {
      const kind = kinds[c % kinds.length]!;
      await kubeProxyQuiet(GAP_MS);
      let target: Svc;
      let t: number;
      if (kind === 'add-endpoint' || kind === 'remove-endpoint') {
        target = svcs[(c * 37) % svcs.length]!;
        if (kind === 'add-endpoint') target.ips.push(nextIp());
        else if (target.ips.length > 1) target.ips.shift();
        await api.call('PATCH', `/apis/discovery.k8s.io/v1/namespaces/${NS}/endpointslices/${target.name}-1`, { metadata: { annotations: { [TRIGGER]: new Date().toISOString() } }, endpoints: endpointsOf(target.ips) }, 'application/merge-patch+json');
        t = now();
      } else if (kind === 'create-service') {
        const name = `x${extraN++}`;
        const svc = await api.call('POST', `/api/v1/namespaces/${NS}/services`, serviceBodyOf(name));
        target = extra = { name, vip: svc.spec.clusterIP, uid: svc.metadata.uid, ips: [nextIp(), nextIp()] };
        // Timed from the slice: only then is there something to program in either data plane.
        await api.call('POST', `/apis/discovery.k8s.io/v1/namespaces/${NS}/endpointslices`, sliceOf(target));
        t = now();
      } else {
        target = extra!;
        await api.call('DELETE', `/api/v1/namespaces/${NS}/services/${target.name}`);
        t = now();
      }
      const gone = kind === 'delete-service';
      const want = expectOf(target);
      const key = keyOf(target);
      const r = await whenProgrammed(t,
        () => (gone ? reader!.get(target.vip, SVC_PORT) === undefined : reader!.get(target.vip, SVC_PORT) === want),
        (m) => (gone ? !m.has(key) : m.get(key) === want),
        { patuEveryMs: 1, kpEveryMs: 2, deadlineMs: 30_000, onDump: (ms) => changeDump.push(ms) });
      lat[kind]!.patu.push(r.patuMs);
      lat[kind]!.kubeProxy.push(r.kubeProxyMs);
      if (gone) {
        // The garbage collector deletes the slice a moment later: one more event for both, which must not
        // land in the next change's window.
        const end = Date.now() + 15_000;
        while (Date.now() < end && (await api.call('GET', `/apis/discovery.k8s.io/v1/namespaces/${NS}/endpointslices/${target.name}-1`).then(() => true, () => false))) await sleep(100);
      }
    }
    await sleep(2000);
    const end = { patu: proc(agentPid), kubeProxy: proc(kpPid) };

    const patuMetrics = await fetchText(`http://127.0.0.1:${metricsPort}/metrics`);
    const kpMetrics = await fetchText('http://127.0.0.1:10249/metrics').catch(() => '');
    const all = (who: 'patu' | 'kubeProxy') => kinds.flatMap((k) => lat[k]![who]);
    const result = {
      services: N, changes: M, gapMs: GAP_MS, concurrency: CONC,
      createWritesMs: Math.round(createdMs),
      programmedAllMs: { patu: Math.round(create.patuMs), kubeProxy: Math.round(create.kubeProxyMs) },
      perChangeMs: Object.fromEntries([['all', { patu: all('patu'), kubeProxy: all('kubeProxy') }], ...kinds.map((k) => [k, lat[k]!])].map(([k, v]) => {
        const x = v as { patu: number[]; kubeProxy: number[] };
        return [k, { n: x.patu.length, patu: { p50: r1(pct(x.patu, 50)), p99: r1(pct(x.patu, 99)) }, kubeProxy: { p50: r1(pct(x.kubeProxy, 50)), p99: r1(pct(x.kubeProxy, 99)) } }];
      })),
      rssMB: {
        bareNode: await nodeFloorMB(),
        idle: { patu: idle.patu.rssMB, kubeProxy: idle.kubeProxy.rssMB },
        at1k: { patu: at1k.patu.rssMB, kubeProxy: at1k.kubeProxy.rssMB },
        afterChanges: { patu: end.patu.rssMB, kubeProxy: end.kubeProxy.rssMB },
      },
      cpuS: {
        create: { patu: diffCpu(idle.patu, at1k.patu), kubeProxy: diffCpu(idle.kubeProxy, at1k.kubeProxy) },
        changes: { patu: diffCpu(at1k.patu, end.patu), kubeProxy: diffCpu(at1k.kubeProxy, end.kubeProxy) },
      },
      programmed: { patuServicePorts: patuSvcs, natRules: ruleLines },
      ownMetrics: {
        patuApplyResync: histo(patuMetrics, 'patu_service_apply_duration_seconds', 'kind="resync"'),
        patuApplyDelta: histo(patuMetrics, 'patu_service_apply_duration_seconds', 'kind="delta"'),
        kubeProxySyncRules: histo(kpMetrics, 'kubeproxy_sync_proxy_rules_duration_seconds'),
        kubeProxyNetworkProgramming: histo(kpMetrics, 'kubeproxy_network_programming_duration_seconds'),
        // Where the agent's RSS is: V8 heap vs the rest (code, koffi, libbpf, buffers).
        patuHeapUsedMB: r1(gauge(patuMetrics, 'patu_nodejs_heap_size_used_bytes') / 1048576),
        patuHeapTotalMB: r1(gauge(patuMetrics, 'patu_nodejs_heap_size_total_bytes') / 1048576),
        patuExternalMB: r1(gauge(patuMetrics, 'patu_nodejs_external_memory_bytes') / 1048576),
        kubeProxyGoHeapMB: r1(gauge(kpMetrics, 'go_memstats_heap_inuse_bytes') / 1048576),
      },
      polling: {
        iptablesSaveMsP50: r1(pct([...dumpMs, ...changeDump], 50)),
        iptablesSaveMsMax: r1(Math.max(...dumpMs, ...changeDump)),
        patuPollMs: { create: 20, change: 1 },
      },
      machine: { before: loadBefore, after: otherLoad(1) },
    };

    if (JSON_OUT) console.log(JSON.stringify(result));
    else {
      const pc = result.perChangeMs as Record<string, { n: number; patu: { p50: number; p99: number }; kubeProxy: { p50: number; p99: number } }>;
      const rows: [string, number, number, string][] = [
        [`${N} services -> all programmed`, result.programmedAllMs.patu, result.programmedAllMs.kubeProxy, 'ms'],
        ['  of which after the last API write', result.programmedAllMs.patu - result.createWritesMs, result.programmedAllMs.kubeProxy - result.createWritesMs, 'ms'],
      ];
      for (const k of ['all', ...kinds]) {
        rows.push([`change ${k} p50 (n=${pc[k]!.n})`, pc[k]!.patu.p50, pc[k]!.kubeProxy.p50, 'ms']);
        rows.push([`change ${k} p99`, pc[k]!.patu.p99, pc[k]!.kubeProxy.p99, 'ms']);
      }
      rows.push(['RSS idle', idle.patu.rssMB, idle.kubeProxy.rssMB, 'MB']);
      rows.push([`RSS at ${N}`, at1k.patu.rssMB, at1k.kubeProxy.rssMB, 'MB']);
      rows.push(['RSS after changes', end.patu.rssMB, end.kubeProxy.rssMB, 'MB']);
      rows.push(['CPU create phase', result.cpuS.create.patu.cpuS, result.cpuS.create.kubeProxy.cpuS, 's']);
      rows.push(['CPU create phase incl. children', result.cpuS.create.patu.cpuWithChildrenS, result.cpuS.create.kubeProxy.cpuWithChildrenS, 's']);
      rows.push(['CPU change phase', result.cpuS.changes.patu.cpuS, result.cpuS.changes.kubeProxy.cpuS, 's']);
      rows.push(['CPU change phase incl. children', result.cpuS.changes.patu.cpuWithChildrenS, result.cpuS.changes.kubeProxy.cpuWithChildrenS, 's']);
      console.log(table(rows));
      const om = result.ownMetrics;
      console.log(`API writes for ${N} services + slices: ${result.createWritesMs} ms (${CONC} in parallel); programmed: patu ${patuSvcs} service ports, kube-proxy ${ruleLines} nat rules`);
      console.log(`own metrics: patu applies resync ${om.patuApplyResync.count} (mean ${om.patuApplyResync.meanMs} ms), delta ${om.patuApplyDelta.count} (mean ${om.patuApplyDelta.meanMs} ms); kube-proxy syncs ${om.kubeProxySyncRules.count} (mean ${om.kubeProxySyncRules.meanMs} ms), network programming mean ${om.kubeProxyNetworkProgramming.meanMs} ms over ${om.kubeProxyNetworkProgramming.count}`);
      console.log(`floor: a bare idle node, same binary, same run: ${result.rssMB.bareNode} MB; the agent idle is node + ${r1(idle.patu.rssMB - result.rssMB.bareNode)} MB, at ${N} services node + ${r1(at1k.patu.rssMB - result.rssMB.bareNode)} MB`);
      console.log(`memory: patu V8 heap used ${r1(om.patuHeapUsedMB)} MB of ${r1(om.patuHeapTotalMB)} MB, external ${r1(om.patuExternalMB)} MB; kube-proxy Go heap in use ${r1(om.kubeProxyGoHeapMB)} MB`);
      console.log(`polling: iptables-save -t nat p50 ${result.polling.iptablesSaveMsP50} ms (max ${result.polling.iptablesSaveMsMax}); patu maps every 20 ms (create) / 1 ms (changes); a change counts at the midpoint of the first poll that shows it`);
      console.log(`machine: before: ${result.machine.before}; after: ${result.machine.after}`);
    }
  } finally {
    await cleanup();
  }
}

main().catch((e) => {
  console.error((e as Error).stack ?? String(e));
  process.exitCode = 1;
});
