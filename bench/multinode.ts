// Cross-node pod-to-pod traffic, direct routes against VXLAN, same run, same kernel.
// Two pairs of netns "nodes" (test/helpers/nodes.ts, as test/integration/multinode):
// A and B share a link (direct: podCIDR via the node), C and D sit on two subnets behind a
// router netns (VXLAN through patu.vxlan). Pods are made by the real CNI plugin (MTU 1450
// on both pairs, so the pod side is the same) and the routes by the agent's node routing.
// Per run: iperf3 1 stream (128 KiB writes), sockperf TCP ping-pong 64 B (p50, p99,
// round trips/s), sockperf UDP ping-pong 64 B; direct and VXLAN alternate which goes
// first. Prints each figure's median and min-max over the runs, and VXLAN/direct.
//
//   node dist/bench/multinode.js [--seconds 3] [--runs 3] [--json out.json]
//
// Needs root, iperf3, sockperf. Nothing leaves the namespaces it makes.
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { Scratch } from '../test/helpers/kernel.js';
import { NodeLab, type Pod } from '../test/helpers/nodes.js';
import { iperf3, sockperfPingPong, median, type Exec } from './lib/netperf.js';

const args = process.argv.slice(2);
const opt = (name: string, dflt: string): string => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] ? args[i + 1]! : dflt;
};
const SECONDS = Number(opt('seconds', '3'));
const RUNS = Number(opt('runs', '3'));
const JSON_OUT = opt('json', '');
const IPERF_PORT = 5201;
const SOCKPERF_PORT = 11111;

const scratch = new Scratch('patu-bench-mn');
const lab = new NodeLab(scratch);
const children: ChildProcess[] = [];
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface Pair { label: string; client: Pod; server: Pod }

async function pair(label: string, vxlan: boolean): Promise<Pair> {
  const [x, y] = [lab.node(`${label}1`), lab.node(`${label}2`)];
  const nodes = vxlan
    ? [{ name: 'x', podCIDR: '10.246.0.0/24', address: '192.168.91.1' }, { name: 'y', podCIDR: '10.246.1.0/24', address: '192.168.92.1' }]
    : [{ name: 'x', podCIDR: '10.247.0.0/24', address: '192.168.90.1' }, { name: 'y', podCIDR: '10.247.1.0/24', address: '192.168.90.2' }];
  if (vxlan) {
    const r = lab.node(`${label}r`);
    lab.wire(x, '192.168.91.1/24', r, '192.168.91.254/24', 'up0', 'tox');
    lab.wire(y, '192.168.92.1/24', r, '192.168.92.254/24', 'up0', 'toy');
    lab.sh(x, 'ip route add default via 192.168.91.254');
    lab.sh(y, 'ip route add default via 192.168.92.254');
  } else {
    lab.wire(x, '192.168.90.1/24', y, '192.168.90.2/24');
  }
  const client = lab.pod(x, `${label}c`, nodes[0]!.podCIDR);
  const server = lab.pod(y, `${label}s`, nodes[1]!.podCIDR);
  const file = lab.path(`${label}.yaml`);
  writeFileSync(file, `nodes:\n${nodes.map((n) => `  - { name: ${n.name}, podCIDR: ${n.podCIDR}, address: ${n.address} }`).join('\n')}\n`);
  await lab.routing(x, 'x', file);
  await lab.routing(y, 'y', file);
  const via = lab.sh(x, 'ip route show proto 156');
  if (!via.includes(vxlan ? 'patu.vxlan' : 'via 192.168.90.2')) throw new Error(`${label}: unexpected route ${via}`);
  const daemon = (argv: string[]): void => void children.push(spawn('ip', ['netns', 'exec', server.ns, ...argv], { stdio: 'ignore' }));
  daemon(['iperf3', '-s', '-B', server.ip, '-p', String(IPERF_PORT)]);
  daemon(['sockperf', 'sr', '-i', server.ip, '-p', String(SOCKPERF_PORT), '--tcp']);
  daemon(['sockperf', 'sr', '-i', server.ip, '-p', String(SOCKPERF_PORT + 1)]);
  return { label, client, server };
}

type Figures = Record<string, number>;

function measure(p: Pair, run: number): Figures {
  const ex: Exec = (argv, timeoutMs) => execFileSync('ip', ['netns', 'exec', p.client.ns, ...argv], { encoding: 'utf8', timeout: timeoutMs });
  const f: Figures = {};
  const s = iperf3(ex, p.server.ip, IPERF_PORT, { seconds: SECONDS, len: '128K' });
  f['iperf3 1x128K Gbit/s'] = s.gbps;
  f['iperf3 1x128K CPU s/GB'] = s.cpuSecPerGB;
  const t = sockperfPingPong(ex, p.server.ip, SOCKPERF_PORT, { seconds: SECONDS, size: 64 });
  f['TCP 64 B p50 us'] = t.p50us;
  f['TCP 64 B p99 us'] = t.p99us;
  f['TCP 64 B round trips/s'] = t.rrPerSec;
  const u = sockperfPingPong(ex, p.server.ip, SOCKPERF_PORT + 1, { seconds: SECONDS, size: 64, udp: true });
  f['UDP 64 B p50 us'] = u.p50us;
  f['UDP 64 B round trips/s'] = u.rrPerSec;
  process.stderr.write(`  run ${run} ${p.label}: ${s.gbps.toFixed(2)} Gbit/s, TCP p50 ${t.p50us} us, UDP p50 ${u.p50us} us (load ${loadavg()[0]!.toFixed(1)})\n`);
  return f;
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('bench/multinode needs root');
  scratch.cleanupOnSignals();
  scratch.defer('servers', async () => {
    for (const c of children) c.kill('SIGKILL');
    await sleep(200);
  });
  try {
    const direct = await pair('d', false);
    const vxlan = await pair('v', true);
    await sleep(700);
    for (const p of [direct, vxlan]) {
      const r = spawnSync('ip', ['netns', 'exec', p.client.ns, 'busybox', 'ping', '-c', '1', '-W', '2', p.server.ip], { encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`${p.label}: no answer from ${p.server.ip}: ${r.stdout}${r.stderr}`);
    }
    const kernel = execFileSync('uname', ['-r'], { encoding: 'utf8' }).trim();
    const load0 = loadavg()[0]!;
    process.stderr.write(`bench/multinode: kernel ${kernel}, ${SECONDS} s per figure, ${RUNS} runs, load ${load0.toFixed(1)}\n`);
    const runs: { direct: Figures; vxlan: Figures }[] = [];
    for (let run = 1; run <= RUNS; run++) {
      if (run % 2) {
        const d = measure(direct, run);
        runs.push({ direct: d, vxlan: measure(vxlan, run) });
      } else {
        const v = measure(vxlan, run);
        runs.push({ direct: measure(direct, run), vxlan: v });
      }
    }
    const fmt = (x: number): string => (x >= 1000 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2));
    const cell = (xs: number[]): string => `${fmt(median(xs))} (${fmt(Math.min(...xs))}-${fmt(Math.max(...xs))})`;
    const rows = Object.keys(runs[0]!.direct).map((k) => {
      const d = runs.map((r) => r.direct[k]!);
      const v = runs.map((r) => r.vxlan[k]!);
      return [k, cell(d), cell(v), (median(v) / median(d)).toFixed(2)];
    });
    const head = ['figure', 'direct route: median (min-max)', 'VXLAN (patu.vxlan)', 'vxlan/direct'];
    const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
    const line = (r: string[]): string => r.map((c, i) => c.padEnd(widths[i]!)).join('  ');
    console.log(`\ncross-node pod to pod, direct vs VXLAN, kernel ${kernel}, ${RUNS} runs x ${SECONDS} s, pod MTU 1450, load ${load0.toFixed(1)} -> ${loadavg()[0]!.toFixed(1)}`);
    console.log(line(head));
    for (const r of rows) console.log(line(r));
    if (JSON_OUT) writeFileSync(JSON_OUT, JSON.stringify({ kernel, seconds: SECONDS, runs }, null, 2));
  } finally {
    await scratch.cleanup();
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`${(e as Error).stack ?? String(e)}\n`);
  process.exitCode = 1;
});
