// UDP socket destroyer benchmark, one run on one kernel (needs root, 6.5+):
//  1. time to destroy N connected UDP sockets (one client holding them, all
//     translated to the backend that leaves), for each N in BENCH_SOCKETS;
//  2. cost of the namespace walk when nothing is to be destroyed, with M more
//     network namespaces (BENCH_NETNS) and E more UDP sockets bound in one of
//     them (BENCH_EXTRA; the kernel's UDP hash table is shared by all
//     namespaces, so every walk visits them), against the map writes of the
//     same apply (the reference, measured in the same run).
// The walk covers every namespace under /run/netns, this machine's others
// included: the count is printed. Everything this script creates (netns
// patu-bench-udpd-<pid>[-n<i>], a cgroup, pins under
// /sys/fs/bpf/patu-bench-udpd-<pid>) is removed at the end, also on failure or Ctrl-C.
//
//   bash scripts/build.sh && node dist/bench/udp-destroy.js
//   BENCH_SOCKETS=100,2000 BENCH_NETNS=0,100 BENCH_EXTRA=0,5000 BENCH_ROUNDS=7 node dist/bench/udp-destroy.js
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { ServiceLb } from '../src/dataplane/service-lb.js';
import { portKey, type DesiredServicePort } from '../src/services/model.js';
import { Scratch } from '../test/helpers/kernel.js';

const list = (v: string | undefined, d: string): number[] => (v ?? d).split(',').map(Number);
const SOCKETS = list(process.env.BENCH_SOCKETS, '100,2000');
const NETNS = list(process.env.BENCH_NETNS, '0,100');
const EXTRA = list(process.env.BENCH_EXTRA, '0,5000');
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 7);
const FIX = fileURLToPath(new URL('../test/integration/fixtures/', import.meta.url));
const scratch = new Scratch('patu-bench-udpd');
const NS = scratch.name();
const A = '10.78.0.1';
const B = '10.78.0.2';
const VIP = '10.96.78.1';
const PORT = 5353;
const children: ChildProcess[] = [];

function sh(cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr}`);
}

/** Runs `node ...argv` in NS (in the cgroup when given); resolves once it prints "ready". */
async function start(argv: [string, string], cgroup?: string): Promise<ChildProcess> {
  const script = argv[0];
  const p = cgroup
    ? spawn('sh', ['-c', `echo $$ > ${cgroup}/cgroup.procs && exec ip netns exec ${NS} "$0" "$1" "$2"`, process.execPath, ...argv], { stdio: ['pipe', 'pipe', 'inherit'] })
    : spawn('ip', ['netns', 'exec', NS, process.execPath, ...argv], { stdio: ['pipe', 'pipe', 'inherit'] });
  children.push(p);
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`${script}: not ready in 60 s`)), 60_000);
    createInterface({ input: p.stdout! }).once('line', (l) => {
      clearTimeout(t);
      if (l === 'ready') resolve();
      else reject(new Error(`${script}: ${l}`));
    });
  });
  return p;
}

const stop = (p: ChildProcess): Promise<void> => new Promise((r) => {
  p.once('exit', () => r());
  p.kill('SIGKILL');
});

/** The service on UDP and TCP (the client also holds a TCP connection), with one backend. */
function udp(backend: string): Map<string, DesiredServicePort> {
  const e = (protocol: 'UDP' | 'TCP'): DesiredServicePort => ({
    key: portKey(VIP, PORT, protocol), ref: 'bench/dns', vip: VIP, port: PORT, protocol, name: `bench/dns:${PORT}`,
    affinity: false, affinityTimeoutSeconds: 0, backends: [`${backend}:${PORT}`],
  });
  return new Map([e('UDP'), e('TCP')].map((d) => [d.key, d]));
}

/** A node program that binds n UDP sockets on the netns' loopback, says ready and waits to be killed. */
const holdSockets = (n: number): string =>
  `const d = require('node:dgram'); let k = 0; for (let i = 0; i < ${n}; i++) d.createSocket('udp4').bind(0, '127.0.0.1', () => { if (++k === ${n}) console.log('ready'); }); setInterval(() => {}, 1e9);`;

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const spread = (xs: number[]): string => `${Math.min(...xs).toFixed(2)}-${Math.max(...xs).toFixed(2)}`;

async function main(): Promise<void> {
  const cg = scratch.cgroup();
  scratch.netns(NS);
  for (const ip of [A, B]) sh('ip', ['-n', NS, 'addr', 'add', `${ip}/32`, 'dev', 'lo']);
  const lb = ServiceLb.open({ pinRoot: scratch.pinRoot(), cgroupPath: cg });
  scratch.defer('service LB', () => {
    try {
      lb.detach();
    } finally {
      lb.close();
    }
  });
  scratch.defer('children', () => children.forEach((c) => c.kill('SIGKILL')));
  lb.attach();
  const refs = new Set(['bench/dns']);
  await start([join(FIX, 'svc-server.js'), JSON.stringify([A, B].map((ip) => ({ ip, port: PORT })))]);

  // Loads the destroyer (once per ServiceLb, ~20 ms) outside the figures.
  lb.applyChanges(refs, udp(A));
  lb.applyChanges(refs, udp(B));
  console.log('1. destroying N connected UDP sockets (one namespace holds them)');
  for (const n of SOCKETS) {
    lb.applyChanges(refs, udp(A));
    const client = await start([join(FIX, 'udp-hold-client.js'), JSON.stringify({ vip: VIP, vport: PORT, direct: { ip: A, port: PORT }, many: n - 1 })], cg);
    const d = lb.applyChanges(refs, udp(B)).udpDestroy!;
    if (d.sockets !== n || d.errors.length) throw new Error(`expected ${n} sockets destroyed: ${JSON.stringify(d)}`);
    console.log(`   ${n} sockets: ${d.ms.toFixed(1)} ms (${((d.ms * 1000) / n).toFixed(1)} us/socket), ${d.netns} namespaces walked`);
    await stop(client);
  }

  console.log(`2. walking the namespaces with nothing to destroy (median of ${ROUNDS}, min-max), against the map writes of the same apply`);
  let made = 0;
  for (const m of NETNS) {
    for (; made < m; made++) scratch.netns(scratch.name(`n${made}`));
    for (const e of EXTRA) {
      const sockets = e ? await start(['-e', holdSockets(e)]) : undefined;
      const walk: number[] = [];
      const apply: number[] = [];
      let walked = 0;
      for (let r = 0; r < ROUNDS; r++) {
        lb.applyChanges(refs, udp(A));
        const s = lb.applyChanges(refs, udp(B));
        walk.push(s.udpDestroy!.ms);
        apply.push(s.ms);
        walked = s.udpDestroy!.netns;
      }
      console.log(`   +${m} netns (${walked} walked), +${e} UDP sockets: walk ${median(walk).toFixed(2)} ms (${spread(walk)}), ` +
        `${((median(walk) * 1000) / walked).toFixed(0)} us/netns; map writes ${median(apply).toFixed(3)} ms; walk/map writes ${(median(walk) / median(apply)).toFixed(0)}x`);
      if (sockets) await stop(sockets);
    }
  }
}

scratch.cleanupOnSignals();
main()
  .catch((e) => {
    console.error(e);
    process.exitCode = 1;
  })
  .finally(() => scratch.cleanup());
