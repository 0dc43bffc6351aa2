// NodePort from outside the node through patu's tc path (bpf/nodeport.c),
// one run on one kernel (needs root), against the same client going straight
// to the pods (no translation: the ceiling), interleaved rounds:
//   1. connect()+close() rate (bench/connect-rate.c: the kernel's cost, not Node's)
//      with 10 and with 2,000 NodePort services (10 endpoints each), plus
//      10,000 ClusterIP services alongside in the same maps;
//   2. one-stream TCP throughput (iperf3, 2 s) through the NodePort vs direct.
// Topology (all made here, removed at the end, also on failure or Ctrl-C):
//   netns patu-bench-nptc-<pid>-out (client 192.168.78.2) --veth-- netns ...-node
//   (uplink 192.168.78.1 with the tc programs, bridge 10.78.1.1/24) --veth-- netns
//   ...-pod (10.78.1.2..11, accept-sink and iperf3 -s); pins /sys/fs/bpf/patu-bench-nptc-<pid>.
//
//   bash scripts/build.sh && node dist/bench/nodeport-tc.js
//   BENCH_SECONDS=0.5 BENCH_ROUNDS=3 BENCH_SCALES=10,2000 BENCH_CLUSTERIPS=10000 node dist/bench/nodeport-tc.js
import { spawn, spawnSync } from 'node:child_process';
import { ServiceLb } from '../src/dataplane/service-lb.js';
import { NodePortTc } from '../src/dataplane/nodeport-tc.js';
import { ServiceModel, type Endpoint, type Service } from '../src/services/model.js';
import { Scratch, netnsPath } from '../test/helpers/kernel.js';
import { acceptSink, buildTools, connectRate, median, perSec, type Rate } from './lib/connect-rate.js';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 1);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const SCALES = (process.env.BENCH_SCALES ?? '10,2000').split(',').map(Number);
const CLUSTERIPS = Number(process.env.BENCH_CLUSTERIPS ?? 10_000);
const ENDPOINTS = 10;
const PORT = 8080;
const IPERF_PORT = 5201;
const NODE_IP = '192.168.78.1';
const CLIENT_IP = '192.168.78.2';
const PODS = Array.from({ length: ENDPOINTS }, (_, i) => `10.78.1.${i + 2}`);
const FIRST_NODEPORT = 30000;
const scratch = new Scratch('patu-bench-nptc');
const OUT = scratch.name('out');
const NODE = scratch.name('node');
const POD = scratch.name('pod');
const PIN = scratch.pinRoot();

function sh(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 1 << 26 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.slice(0, 6).join(' ')} failed (${r.status}): ${r.stderr}`);
  return r.stdout;
}
const ipn = (ns: string, ...args: string[]): string => sh('ip', ['-n', ns, ...args]);

const rate = (ip: string, port: number): Promise<Rate> => connectRate(OUT, ip, { port, ms: SECONDS * 1000, max: 200000 });

function iperf(ip: string, port: number): number {
  const out = sh('ip', ['netns', 'exec', OUT, 'iperf3', '-c', ip, '-p', String(port), '-t', '2', '-J']);
  const doc = JSON.parse(out) as { end: { sum_received: { bits_per_second: number } } };
  return doc.end.sum_received.bits_per_second / 1e9;
}

const spread = (xs: number[]): string => `${fmt(Math.min(...xs))}-${fmt(Math.max(...xs))}`;
const fmt = (x: number, d = 0): string => x.toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d });

const eps = (): Endpoint[] => PODS.map((ip) => ({ ip, ready: true, serving: true, terminating: false }));
function services(nodePorts: number): { service: Service; endpoints: Endpoint[] }[] {
  const out: { service: Service; endpoints: Endpoint[] }[] = [];
  for (let i = 0; i < nodePorts; i++) {
    out.push({
      service: {
        namespace: 'bench', name: `np${i}`, clusterIP: `10.100.${(i + 1) >> 8}.${(i + 1) & 255}`, type: 'NodePort',
        sessionAffinity: 'None', affinityTimeoutSeconds: 10800,
        ports: [{ port: 80, protocol: 'TCP', targetPort: PORT, nodePort: FIRST_NODEPORT + i }],
      },
      endpoints: eps(),
    });
  }
  out.push({
    service: {
      namespace: 'bench', name: 'iperf', clusterIP: '10.100.255.1', type: 'NodePort', sessionAffinity: 'None', affinityTimeoutSeconds: 10800,
      ports: [{ port: IPERF_PORT, protocol: 'TCP', targetPort: IPERF_PORT, nodePort: 32767 }],
    },
    endpoints: [{ ip: PODS[0]!, ready: true, serving: true, terminating: false }],
  });
  for (let i = 0; i < CLUSTERIPS; i++) {
    out.push({
      service: {
        namespace: 'bench', name: `c${i}`, clusterIP: `10.96.${(i + 1) >> 8}.${(i + 1) & 255}`, sessionAffinity: 'None', affinityTimeoutSeconds: 10800,
        ports: [{ port: 80, protocol: 'TCP', targetPort: PORT }],
      },
      endpoints: eps(),
    });
  }
  return out;
}

async function topology(): Promise<void> {
  for (const ns of [OUT, NODE, POD]) scratch.netns(ns);
  sh('ip', ['link', 'add', 'npbu0', 'netns', NODE, 'type', 'veth', 'peer', 'name', 'npbo0', 'netns', OUT]);
  ipn(OUT, 'addr', 'add', `${CLIENT_IP}/24`, 'dev', 'npbo0');
  ipn(OUT, 'link', 'set', 'npbo0', 'up');
  // Only the direct reference uses this route (the pods are otherwise not reachable from outside).
  ipn(OUT, 'route', 'add', '10.78.1.0/24', 'via', NODE_IP);
  ipn(NODE, 'addr', 'add', `${NODE_IP}/24`, 'dev', 'npbu0');
  ipn(NODE, 'link', 'set', 'npbu0', 'up');
  ipn(NODE, 'link', 'add', 'npbbr', 'type', 'bridge');
  ipn(NODE, 'addr', 'add', '10.78.1.1/24', 'dev', 'npbbr');
  ipn(NODE, 'link', 'set', 'npbbr', 'up');
  sh('ip', ['netns', 'exec', NODE, 'sysctl', '-qw', 'net.ipv4.ip_forward=1']);
  sh('ip', ['link', 'add', 'npbv0', 'netns', NODE, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', POD]);
  ipn(NODE, 'link', 'set', 'npbv0', 'master', 'npbbr', 'up');
  for (const ip of PODS) ipn(POD, 'addr', 'add', `${ip}/24`, 'dev', 'eth0');
  ipn(POD, 'link', 'set', 'eth0', 'up');
  ipn(POD, 'route', 'add', 'default', 'via', '10.78.1.1');
  const sink = await acceptSink(POD, PORT);
  scratch.defer('accept-sink', () => void sink.kill('SIGKILL'));
  const iperfd = spawn('ip', ['netns', 'exec', POD, 'iperf3', '-s', '-p', String(IPERF_PORT)], { stdio: 'ignore' });
  scratch.defer('iperf3 -s', () => void iperfd.kill('SIGKILL'));
  await new Promise((r) => setTimeout(r, 300));
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('bench/nodeport-tc needs root (netns, BPF)');
  buildTools();
  console.log(`# patu NodePort (tc) from outside the node (${new Date().toISOString()}, kernel ${sh('uname', ['-r']).trim()})`);
  console.log(`# ${ENDPOINTS} endpoints per service, ${fmt(CLUSTERIPS)} ClusterIP services alongside; connect-rate ${SECONDS}s x ${ROUNDS} rounds, interleaved (median, min-max)\n`);
  await topology();
  const lb = ServiceLb.open({ pinRoot: PIN });
  scratch.defer('service LB', () => lb.close());
  lb.setNodeAddresses(new Map([[NODE_IP, 0]]));
  const np = NodePortTc.open({ pinRoot: PIN, devices: ['npbu0'], netnsPath: netnsPath(NODE) });
  scratch.defer('nodeport tc', () => {
    try {
      np.detach();
    } finally {
      np.close();
    }
  });
  np.sync();
  const model = new ServiceModel();

  console.log('| NodePort services | via NodePort (tc) conn/s | direct to the pods conn/s | NodePort / direct | p50 connect NodePort / direct |');
  console.log('|---:|---:|---:|---:|---:|');
  for (const n of SCALES) {
    model.replaceAll(services(n));
    const t0 = performance.now();
    const st = lb.resync(model.desired());
    const applyMs = performance.now() - t0;
    const viaNp: number[] = [];
    const direct: number[] = [];
    const p50: [number[], number[]] = [[], []];
    for (let r = 0; r < ROUNDS; r++) {
      // The last NodePort (the hash lookup does not care; kube-proxy's iptables walk would).
      const a = await rate(NODE_IP, FIRST_NODEPORT + n - 1);
      const b = await rate(PODS[r % PODS.length]!, PORT);
      viaNp.push(perSec(a));
      direct.push(perSec(b));
      p50[0].push(a.p50_ns / 1000);
      p50[1].push(b.p50_ns / 1000);
    }
    console.log(`| ${fmt(n)} (+${fmt(CLUSTERIPS)} ClusterIP; programmed in ${fmt(applyMs)} ms, ${fmt(st.ops)} map ops) | ${fmt(median(viaNp))} (${spread(viaNp)}) | ${fmt(median(direct))} (${spread(direct)}) | ${fmt(median(viaNp) / median(direct), 2)} | ${fmt(median(p50[0]), 1)} / ${fmt(median(p50[1]), 1)} us |`);
  }

  const thr: [number[], number[]] = [[], []];
  for (let r = 0; r < ROUNDS; r++) {
    thr[0].push(iperf(NODE_IP, 32767));
    thr[1].push(iperf(PODS[0]!, IPERF_PORT));
  }
  console.log(`\n1-stream TCP (iperf3 2 s): via NodePort ${fmt(median(thr[0]), 1)} Gbit/s (${thr[0].map((x) => fmt(x, 1)).join(', ')}), direct ${fmt(median(thr[1]), 1)} Gbit/s (${thr[1].map((x) => fmt(x, 1)).join(', ')}), ratio ${fmt(median(thr[0]) / median(thr[1]), 2)}`);
  const s = np.readStats();
  console.log(`tc counters: ${fmt(Number(s.newFlows))} new flows, ${fmt(Number(s.forwardHits))} forward hits, ${fmt(Number(s.replies))} replies translated, ${fmt(Number(s.noBackend))} no-backend drops`);
}

scratch.cleanupOnSignals();
main()
  .catch((e) => {
    process.exitCode = 1;
    console.error(e);
  })
  .finally(() => scratch.cleanup());
