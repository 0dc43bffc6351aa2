// Socket acceleration benchmark (issue 4), on one kernel:
//   (a) two pods over a bridge, acceleration off
//   (b) the same pods, acceleration on
//   (d) the same pods through a minimal sockops + sk_msg pair (bench/bpf/accel_min.c: no
//       registry, no switch, no checks): the floor of what sk_msg redirection costs here,
//       the anchor patu's own figures are held against (b/d)
//   (c) loopback inside one pod netns
// iperf3 (1 and 4 streams, 128 KiB and 4 KiB writes), sockperf ping-pong
// (64 B, 1 KiB: p50/p99 and request/response rate), CPU seconds per GB, and
// bytes that crossed pod 1's veth. Prints every figure and the ratios b/a, b/d, b/c.
//
//   sudo node dist/bench/accel.js [--seconds 3] [--runs 3] [--json out.json]
// Each run measures a, b, d, c in turn; the table shows every figure's median over the runs
// and the spread (min-max) of b and d, since runs on a shared VM vary a lot.
// Needs root, iperf3, sockperf and build/bpf/accel.o. Creates its own netns,
// cgroup and pins (named after its pid) and removes them at the end.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Accel } from '../src/dataplane/accel.js';
import { BpfObject, AttachType, type BpfLink } from '../src/kernel/bpf/object.js';
import { Scratch } from '../test/helpers/kernel.js';
import { iperf3, sockperfPingPong, type Stream, type PingPong } from './lib/netperf.js';

const args = process.argv.slice(2);
const opt = (name: string, dflt: string): string => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] ? args[i + 1]! : dflt;
};
const SECONDS = Number(opt('seconds', '3'));
const JSON_OUT = opt('json', '');
const RUNS = Number(opt('runs', '3'));

const scratch = new Scratch('patu-bench-accel');
const NS_NODE = scratch.name('n');
const NS1 = scratch.name('a');
const NS2 = scratch.name('b');
let CG = '';
const PIN_ROOT = scratch.pinRoot();
const OBJ = fileURLToPath(new URL('../../build/bpf/accel.o', import.meta.url));
const MIN_OBJ = fileURLToPath(new URL('../../build/bench/bpf/accel_min.o', import.meta.url));
const NODE_IP = '172.31.78.1';
const IP1 = '172.31.78.11';
const IP2 = '172.31.78.12';
const IPERF_PORT = 5201;
const SOCKPERF_PORT = 11111;
/**
 * A second sockperf server, pinned with its client to one CPU. On this 2-vCPU VM a
 * ping-pong across CPUs is dominated by the ~30 us cross-CPU wake-up (an IPI and a
 * VM exit), the same for every path; on one CPU the wake-up is a context switch and
 * what remains is the network path itself, which is what acceleration removes.
 */
const SOCKPERF_PINNED_PORT = 11112;
const PIN_CPU = '1';

const ip = (...a: string[]): string => execFileSync('ip', a, { encoding: 'utf8' });
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const children: ChildProcess[] = [];
let minimal: { obj: BpfObject; link: BpfLink } | undefined;

/** (d): the minimal pair on the bench cgroup; minimalOff() detaches it again. */
function minimalOn(): void {
  const obj = BpfObject.open(MIN_OBJ);
  obj.load();
  obj.program('min_skmsg').attachToMap(obj.map('min_sock_hash').fd, AttachType.SK_MSG_VERDICT);
  minimal = { obj, link: obj.program('min_sockops').attachCgroup(CG, AttachType.CGROUP_SOCK_OPS) };
}
function minimalOff(): void {
  if (!minimal) return;
  minimal.link.destroy();
  minimal.obj.close();
  minimal = undefined;
}

/** argv run inside netns `ns` and inside the bench cgroup (where sock_ops is attached). */
function wrap(ns: string, argv: string[]): string[] {
  const q = argv.map((a) => `'${a}'`).join(' ');
  return ['sh', '-c', `echo $$ > ${CG}/cgroup.procs && exec ip netns exec ${ns} ${q}`];
}

function daemon(ns: string, argv: string[]): void {
  const [cmd, ...rest] = wrap(ns, argv);
  const p = spawn(cmd!, rest, { stdio: 'ignore' });
  children.push(p);
}

function run(ns: string, argv: string[], timeoutMs: number): string {
  const [cmd, ...rest] = wrap(ns, argv);
  return execFileSync(cmd!, rest, { encoding: 'utf8', timeout: timeoutMs, maxBuffer: 64 << 20 });
}

function vethBytes(): number {
  const [l] = JSON.parse(ip('-n', NS1, '-j', '-s', 'link', 'show', 'dev', 'eth0')) as { stats64: { rx: { bytes: number }; tx: { bytes: number } } }[];
  return l!.stats64.rx.bytes + l!.stats64.tx.bytes;
}

function iperf(ns: string, host: string, port: number, streams: number, len: string): Stream {
  return iperf3((argv, t) => run(ns, argv, t), host, port, { seconds: SECONDS, streams, len });
}

function sockperf(ns: string, host: string, port: number, size: number, pinned = false): PingPong {
  return sockperfPingPong((argv, t) => run(ns, argv, t), host, port, { seconds: SECONDS, size, ...(pinned ? { prefix: ['taskset', '-c', PIN_CPU] } : {}) });
}

type Figures = Record<string, number>;
function measure(ns: string, host: string, label: string): Figures {
  const f: Figures = {};
  const v0 = vethBytes();
  for (const streams of [1, 4]) {
    for (const len of ['128K', '4K']) {
      const s = iperf(ns, host, IPERF_PORT, streams, len);
      f[`iperf3 ${streams}x ${len} Gbit/s`] = s.gbps;
      f[`iperf3 ${streams}x ${len} CPU s/GB`] = s.cpuSecPerGB;
      process.stderr.write(`  ${label}: iperf3 ${streams}x${len} ${s.gbps.toFixed(2)} Gbit/s\n`);
    }
  }
  for (const size of [64, 1024]) {
    const p = sockperf(ns, host, SOCKPERF_PORT, size);
    f[`sockperf ${size} B p50 us`] = p.p50us;
    f[`sockperf ${size} B p99 us`] = p.p99us;
    f[`sockperf ${size} B req/resp per s`] = p.rrPerSec;
    process.stderr.write(`  ${label}: sockperf ${size} B p50 ${p.p50us} us\n`);
    const q = sockperf(ns, host, SOCKPERF_PINNED_PORT, size, true);
    f[`sockperf ${size} B one CPU p50 us`] = q.p50us;
    f[`sockperf ${size} B one CPU p99 us`] = q.p99us;
    f[`sockperf ${size} B one CPU req/resp per s`] = q.rrPerSec;
    process.stderr.write(`  ${label}: sockperf ${size} B one CPU p50 ${q.p50us} us\n`);
  }
  f['veth bytes (pod 1)'] = vethBytes() - v0;
  return f;
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('bench/accel needs root');
  for (const o of [OBJ, MIN_OBJ]) if (!existsSync(o)) throw new Error(`${o} missing: run scripts/build.sh`);
  CG = scratch.cgroup();
  for (const ns of [NS_NODE, NS1, NS2]) scratch.netns(ns);
  ip('-n', NS_NODE, 'link', 'add', 'br0', 'type', 'bridge');
  ip('-n', NS_NODE, 'addr', 'add', `${NODE_IP}/24`, 'dev', 'br0');
  ip('-n', NS_NODE, 'link', 'set', 'br0', 'up');
  for (const [ns, addr, veth] of [[NS1, IP1, 'v1'], [NS2, IP2, 'v2']] as const) {
    ip('-n', NS_NODE, 'link', 'add', veth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns);
    ip('-n', NS_NODE, 'link', 'set', veth, 'master', 'br0', 'up');
    ip('-n', ns, 'addr', 'add', `${addr}/24`, 'dev', 'eth0');
    ip('-n', ns, 'link', 'set', 'eth0', 'up');
    ip('-n', ns, 'link', 'set', 'lo', 'up');
  }
  const accel = Accel.open({ pinRoot: PIN_ROOT, cgroupPath: CG, objectPath: OBJ });
  scratch.defer('accel', () => accel.teardown());
  scratch.defer('servers', async () => {
    for (const p of children) p.kill('SIGKILL');
    await sleep(200);
  });
  accel.enable();
  accel.registerPod(IP1);
  accel.registerPod(IP2);
  accel.disable();

  // Servers: pod 2 (for a/b) and pod 1's loopback (for c), all in the cgroup.
  daemon(NS2, ['iperf3', '-s', '-p', String(IPERF_PORT)]);
  daemon(NS2, ['sockperf', 'sr', '-i', IP2, '-p', String(SOCKPERF_PORT), '--tcp']);
  daemon(NS1, ['iperf3', '-s', '-p', String(IPERF_PORT)]);
  daemon(NS1, ['sockperf', 'sr', '-i', '127.0.0.1', '-p', String(SOCKPERF_PORT), '--tcp']);
  daemon(NS2, ['taskset', '-c', PIN_CPU, 'sockperf', 'sr', '-i', IP2, '-p', String(SOCKPERF_PINNED_PORT), '--tcp']);
  daemon(NS1, ['taskset', '-c', PIN_CPU, 'sockperf', 'sr', '-i', '127.0.0.1', '-p', String(SOCKPERF_PINNED_PORT), '--tcp']);
  await sleep(700);

  const kernel = execFileSync('uname', ['-r'], { encoding: 'utf8' }).trim();
  process.stderr.write(`bench/accel: kernel ${kernel}, ${SECONDS} s per figure, ${RUNS} runs\n`);
  scratch.defer('minimal pair', () => minimalOff());
  const runs: { a: Figures; b: Figures; d: Figures; c: Figures }[] = [];
  let sockets = 0;
  for (let run = 1; run <= RUNS; run++) {
    const a = measure(NS1, IP2, `run ${run} a bridge`);
    accel.enable();
    const b = measure(NS1, IP2, `run ${run} b accel`);
    await sleep(100);
    sockets = Math.max(sockets, accel.status().sockets);
    accel.disable();
    minimalOn();
    const d = measure(NS1, IP2, `run ${run} d minimal`);
    minimalOff();
    const c = measure(NS1, '127.0.0.1', `run ${run} c loopback`);
    runs.push({ a, b, d, c });
  }

  const fmt = (n: number | undefined): string => (n === undefined ? '-' : n >= 1000 ? n.toFixed(0) : n.toPrecision(4));
  const median = (xs: number[]): number => {
    const s = [...xs].sort((x, y) => x - y);
    return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
  };
  type Col = 'a' | 'b' | 'd' | 'c';
  const col = (k: Col): Figures => Object.fromEntries(Object.keys(runs[0]!.a).map((f) => [f, median(runs.map((r) => r[k][f]!))]));
  const spread = (k: Col, f: string): string => {
    const xs = runs.map((r) => r[k][f]!);
    return `${fmt(Math.min(...xs))}-${fmt(Math.max(...xs))}`;
  };
  const [a, b, d, c] = [col('a'), col('b'), col('d'), col('c')];
  const keys = Object.keys(a);
  const w = Math.max(...keys.map((k) => k.length));
  const ratio = (x: number, y: number | undefined): string => (y ? (x / y).toFixed(2) : '-');
  const lines = [
    `patu socket acceleration, kernel ${kernel}, ${SECONDS} s per figure, median of ${RUNS} runs, ${new Date().toISOString()}`,
    `${'figure'.padEnd(w)}  ${'a:bridge'.padStart(10)}  ${'b:accel'.padStart(10)}  ${'d:minimal'.padStart(10)}  ${'c:loopback'.padStart(10)}  ${'b/a'.padStart(6)}  ${'b/d'.padStart(6)}  ${'b/c'.padStart(6)}  spread of b | d`,
  ];
  for (const k of keys) {
    const va = a[k]!, vb = b[k]!, vd = d[k]!, vc = c[k];
    const veth = k.startsWith('veth');
    lines.push(`${k.padEnd(w)}  ${fmt(va).padStart(10)}  ${fmt(vb).padStart(10)}  ${fmt(vd).padStart(10)}  ${fmt(vc).padStart(10)}  ${ratio(vb, va).padStart(6)}  ${(veth ? '-' : ratio(vb, vd)).padStart(6)}  ${(veth ? '-' : ratio(vb, vc)).padStart(6)}  ${spread('b', k)} | ${spread('d', k)}`);
  }
  lines.push(`sockhash entries right after (b): ${sockets} (benchmark connections closed; expect 0, no leak)`);
  lines.push('latency: sockperf half round trip; lower is better for latency and CPU s/GB, higher for the rest');
  lines.push('d: bench/bpf/accel_min.c redirects every IPv4 TCP socket of the cgroup with no checks; b/d is what patu\'s registry and switch cost');
  lines.push(`"one CPU": client and server pinned to CPU ${PIN_CPU}, so a cross-CPU wake-up (~30 us on this VM, the same for every path) does not hide the network path`);
  process.stdout.write(lines.join('\n') + '\n');
  if (JSON_OUT) writeFileSync(JSON_OUT, JSON.stringify({ kernel, seconds: SECONDS, runs: RUNS, median: { a, b, d, c }, each: runs, sockets }, null, 2));
}

scratch.cleanupOnSignals();
try {
  await main();
} catch (e) {
  process.stderr.write(`bench/accel: ${(e as Error).stack ?? e}\n`);
  process.exitCode = 1;
} finally {
  await scratch.cleanup();
}
