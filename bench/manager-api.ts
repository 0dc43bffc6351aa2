// What split mode (issue 13) costs, in one run and interleaved so machine noise hits
// both sides alike (needs root):
//   - a service change (one service's backends) and a 1,000-service full resync through
//     LocalDataplane called in this process (what the data plane does) vs the same calls
//     through a real `patu manager` over gRPC + mutual TLS on a unix socket
//     (RemoteDataplane: encode, TLS, http2, decode, the limits, the apply, the answer);
//   - CNI ADD and DEL through bin/patu (as a runtime calls it) answered by a `patu agent`
//     (the default single process) vs by a `patu manager` (split mode: the manager serves
//     the launcher's socket with the same code);
//   - the RSS of the agent and of the manager after the runs.
//
//   node dist/bench/manager-api.js
//   BENCH_CHANGES=300 BENCH_SERVICES=1000 BENCH_RESYNCS=5 BENCH_PODS=40 BENCH_WARMUP=500 node dist/bench/manager-api.js
//
// Everything runs in a netns and cgroup of its own (test/helpers/kernel.ts Scratch, removed
// at the end and on Ctrl-C); the service addresses are never connected to.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Scratch } from '../test/helpers/kernel.js';
import { PATU_BIN, isRoot } from '../test/helpers/cni.js';
import { openManagerDataplane } from '../src/manager/manager.js';
import { createLog } from '../src/agent/log.js';
import { portKey, type DesiredServicePort } from '../src/services/model.js';
import type { Dataplane, ServiceChange } from '../src/dataplane/api.js';

const CHANGES = Number(process.env.BENCH_CHANGES ?? 300);
const SERVICES = Number(process.env.BENCH_SERVICES ?? 1000);
const RESYNCS = Number(process.env.BENCH_RESYNCS ?? 5);
const PODS = Number(process.env.BENCH_PODS ?? 40);
const WARMUP = Number(process.env.BENCH_WARMUP ?? 500);
const scratch = new Scratch('patu-bench-mgr');
const quiet = createLog({ level: 'fatal' });
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

const pct = (xs: number[], p: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};
const f2 = (n: number): string => n.toFixed(2);
const rssMB = (pid: number): number => Number(/^VmRSS:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? NaN) / 1024;

const svcPort = (i: number, set: number): DesiredServicePort => {
  const vip = `10.96.${(i >> 8) & 255}.${i & 255}`;
  return {
    key: portKey(vip, 80, 'TCP'), ref: `bench/s${i}`, vip, port: 80, protocol: 'TCP', name: `bench/s${i}:80`, affinity: false, affinityTimeoutSeconds: 0,
    backends: [1, 2, 3].map((b) => `10.202.${(i >> 8) & 255}.${(i & 255)}:${8000 + b + set * 10}`),
  };
};

interface Proc {
  child: ChildProcess;
  log: () => string;
}

async function startProc(node: string, args: string[], ready: string): Promise<Proc> {
  // nsenter, not `ip netns exec` (which mounts a fresh /sys, hiding bpffs and cgroup2); it execs
  // bin/patu, which execs node: the child's pid is the process measured.
  const child = spawn('nsenter', [`--net=/run/netns/${node}`, PATU_BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (log = (log + d).slice(-200_000)));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (log = (log + d).slice(-200_000)));
  scratch.defer(`patu ${args[0]}`, () => void child.kill('SIGKILL'));
  const end = Date.now() + 30_000;
  while (!log.includes(ready)) {
    if (child.exitCode !== null || Date.now() > end) throw new Error(`patu ${args[0]} did not start: ${log.slice(-2000)}`);
    await sleep(50);
  }
  return { child, log: () => log };
}

/** bin/patu as a runtime runs it (spawn, stdin, wait), in the node netns; the socket says who answers. */
function launcher(node: string, socket: string, command: string, conf: object, containerId: string, netns: string): Promise<{ ms: number; code: number | null; out: string }> {
  const env: Record<string, string> = {
    PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
    CNI_COMMAND: command, CNI_CONTAINERID: containerId, CNI_IFNAME: 'eth0', CNI_PATH: '/opt/cni/bin', CNI_NETNS: netns,
    PATU_AGENT_SOCKET: socket,
  };
  const t0 = performance.now();
  const p = spawn('nsenter', [`--net=/run/netns/${node}`, PATU_BIN], { env, stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  p.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  p.stderr!.resume();
  p.stdin!.end(JSON.stringify(conf));
  return new Promise((resolve) => p.on('close', (code) => resolve({ ms: performance.now() - t0, code, out })));
}

async function main(): Promise<void> {
  if (!isRoot()) throw new Error('needs root (netns, cgroups, BPF programs)');
  const dir = scratch.tmpDir('patu-bench-mgr');
  const node = scratch.netns(scratch.name('node'));
  const cgA = scratch.cgroup('a');
  const cgB = scratch.cgroup('b');
  const pinA = scratch.pinRoot('a');
  const pinB = scratch.pinRoot('b');
  const pinC = scratch.pinRoot('c');
  const { generateCerts, writeCertDir } = await import('../src/rpc/certs.js');
  const tls = join(dir, 'tls');
  writeCertDir(tls, await generateCerts());

  // In-process: the manager's data plane in this process (what the default mode's agent does to the maps).
  const md = await openManagerDataplane({
    log: quiet, pinRoot: pinA, cgroup: cgA, cniSocket: join(dir, 'a-cni.sock'), serviceCidrs: ['10.96.0.0/12'], clusterCidrs: ['10.202.0.0/16'],
    bridge: 'bmgnone', dataDir: join(dir, 'a-ipam'), cniConfDir: '', nodeNetns: `/run/netns/${node}`, version: 'bench',
  });
  scratch.defer('in-process data plane', async () => {
    md.parts.lb?.detach();
    await md.close();
  });
  // Split: a real manager over mutual TLS.
  const msock = join(dir, 'manager.sock');
  const mcni = join(dir, 'manager-cni.sock');
  const manager = await startProc(node, ['manager', '--listen', `unix://${msock}`, '--tls-dir', tls, '--pin-root', pinB, '--cgroup', cgB, '--bridge', 'bmgbr',
    '--data-dir', join(dir, 'b-ipam'), '--cni-conf-dir', '', '--cni-socket', mcni, '--service-cidr', '10.96.0.0/12', '--cluster-cidr', '10.202.0.0/16,10.203.0.0/16',
    '--metrics-addr', '127.0.0.1:19466', '--log-level', 'info'], 'serving the data-plane API');
  // The default mode's CNI side: a plain agent.
  const acni = join(dir, 'agent-cni.sock');
  const agent = await startProc(node, ['agent', '--cni-socket', acni, '--pin-root', pinC, '--no-hostports', '--log-level', 'info'], 'serving CNI requests');
  const { connectDataplane } = await import('../src/rpc/client.js');
  const { clientTlsOptions, loadTlsDir } = await import('../src/rpc/tls.js');
  const remote = connectDataplane({ address: `unix://${msock}`, tls: clientTlsOptions(loadTlsDir(tls, 'client'), 'patu-manager'), log: quiet, defaultTimeoutMs: 60_000 });
  scratch.defer('client', () => remote.close());
  const sides: [string, Dataplane][] = [['in-process', md.dataplane], ['split (gRPC+mTLS, unix)', remote]];
  console.log(`patu manager-api bench: ${SERVICES} services x 1 port x 3 backends, ${CHANGES} changes (after ${WARMUP} warm-up), ${RESYNCS} resyncs, ${PODS} pods per side; load ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')}`);

  // 1,000-service full resync, alternating two backend sets so every round rewrites them all.
  const gen = new Map<string, bigint>(sides.map(([n]) => [n, 0n]));
  const apply = async (name: string, dp: Dataplane, c: Omit<ServiceChange, 'session' | 'generation'>): Promise<number> => {
    const g = gen.get(name)! + 1n;
    gen.set(name, g);
    const t0 = performance.now();
    await dp.applyServices({ session: 'bench', generation: g, ...c });
    return performance.now() - t0;
  };
  const resync: Record<string, number[]> = {};
  for (let r = 0; r < RESYNCS; r++) {
    const ports = Array.from({ length: SERVICES }, (_, i) => svcPort(i, r % 2));
    for (const [name, dp] of r % 2 ? [...sides].reverse() : sides) (resync[name] ??= []).push(await apply(name, dp, { full: true, refs: [], ports }));
  }
  // Warm-up (JIT, http2 and TLS buffers), not recorded: the first few hundred calls of a process cost several times a warm one.
  for (let i = 0; i < WARMUP; i++) {
    const p = svcPort(SERVICES - 1 - (i % 10), i % 2 ? 4 : 5);
    for (const [name, dp] of sides) await apply(name, dp, { full: false, refs: [p.ref], ports: [p] });
  }
  // One service's backends, flipped back and forth.
  const change: Record<string, number[]> = {};
  for (let i = 0; i < CHANGES; i++) {
    const p = svcPort(i % SERVICES, (i + 1) % 2 === 0 ? 2 : 3);
    for (const [name, dp] of i % 2 ? [...sides].reverse() : sides) (change[name] ??= []).push(await apply(name, dp, { full: false, refs: [p.ref], ports: [p] }));
  }
  // The floor of a call: Status does no work on either side.
  const status: Record<string, number[]> = {};
  for (let i = 0; i < CHANGES; i++) {
    for (const [name, dp] of i % 2 ? [...sides].reverse() : sides) {
      const t0 = performance.now();
      await dp.status();
      (status[name] ??= []).push(performance.now() - t0);
    }
  }
  console.log('\nservices (ms, wall time of the awaited call; Status: a call that does no work)');
  console.log(`  ${'side'.padEnd(26)} ${'Status p50'.padStart(10)} ${'change p50'.padStart(10)} ${'change p99'.padStart(10)} ${'resync med'.padStart(10)} ${'resync max'.padStart(10)}`);
  for (const [name] of sides) {
    console.log(`  ${name.padEnd(26)} ${f2(pct(status[name]!, 50)).padStart(10)} ${f2(pct(change[name]!, 50)).padStart(10)} ${f2(pct(change[name]!, 99)).padStart(10)} ${f2(pct(resync[name]!, 50)).padStart(10)} ${f2(Math.max(...resync[name]!)).padStart(10)}`);
  }
  // The manager's own view (its rpc histogram: the data plane's work, from request decoded to answer built).
  const metrics = spawnSync('nsenter', [`--net=/run/netns/${node}`, 'curl', '-sf', 'http://127.0.0.1:19466/metrics'], { encoding: 'utf8' }).stdout;
  // p50 from the cumulative buckets: the bucket bound the median call stays under.
  const serverP50 = (method: string): string => {
    const re = new RegExp(`patu_dataplane_rpc_duration_seconds_bucket\\{side="server",method="${method}",le="([^"]+)"\\} (\\S+)`, 'g');
    const buckets = [...metrics.matchAll(re)].map((m) => [Number(m[1]), Number(m[2])] as const);
    const total = buckets.at(-1)?.[1] ?? 0;
    const at = buckets.find(([, n]) => n >= total / 2);
    return at ? `<= ${f2(at[0] * 1000)}` : '?';
  };
  console.log(`  in the manager (its rpc histogram, from decoded request to answer): p50 Status ${serverP50('Status')} ms, ApplyServices ${serverP50('ApplyServices')} ms`);
  const [a, b] = sides.map(([n]) => n) as [string, string];
  console.log(`  split adds: change p50 +${f2(pct(change[b]!, 50) - pct(change[a]!, 50))} ms, p99 +${f2(pct(change[b]!, 99) - pct(change[a]!, 99))} ms; resync median +${f2(pct(resync[b]!, 50) - pct(resync[a]!, 50))} ms`);

  // CNI ADD/DEL through the launcher: agent vs manager, interleaved.
  const conf = (br: string, subnet: string) => ({ cniVersion: '1.1.0', name: br, type: 'patu', bridge: br, clusterCIDR: '10.203.0.0/16', masquerade: false, ipam: { ranges: [[{ subnet }]], dataDir: join(dir, `${br}-ipam`) } });
  const targets = [
    { name: 'agent (default)', socket: acni, conf: { ...conf('bagbr', '10.203.1.0/24'), pinRoot: pinC } },
    { name: 'manager (split)', socket: mcni, conf: { ...conf('bmgbr', '10.203.2.0/24'), pinRoot: pinB } },
  ];
  const add: Record<string, number[]> = {};
  const del: Record<string, number[]> = {};
  for (let i = 0; i < PODS; i++) {
    for (const t of i % 2 ? [...targets].reverse() : targets) {
      const ns = `${scratch.name('p')}-${t.name[0]}${i}`;
      spawnSync('ip', ['netns', 'add', ns]);
      scratch.defer(`netns ${ns}`, () => void spawnSync('ip', ['netns', 'del', ns]));
      const r = await launcher(node, t.socket, 'ADD', t.conf, `b-${ns}`, `/run/netns/${ns}`);
      if (r.code !== 0) throw new Error(`${t.name} ADD: ${r.out}`);
      (add[t.name] ??= []).push(r.ms);
      const d = await launcher(node, t.socket, 'DEL', t.conf, `b-${ns}`, `/run/netns/${ns}`);
      if (d.code !== 0) throw new Error(`${t.name} DEL: ${d.out}`);
      (del[t.name] ??= []).push(d.ms);
      spawnSync('ip', ['netns', 'del', ns]);
    }
  }
  const served = (p: Proc): number => (p.log().match(/"msg":"cni request"/g) ?? []).length;
  console.log('\nCNI through bin/patu (ms, spawn to exit; netns made outside the timing)');
  console.log(`  ${'answered by'.padEnd(26)} ${'ADD p50'.padStart(10)} ${'ADD p99'.padStart(10)} ${'DEL p50'.padStart(10)} ${'DEL p99'.padStart(10)}`);
  for (const t of targets) console.log(`  ${t.name.padEnd(26)} ${f2(pct(add[t.name]!, 50)).padStart(10)} ${f2(pct(add[t.name]!, 99)).padStart(10)} ${f2(pct(del[t.name]!, 50)).padStart(10)} ${f2(pct(del[t.name]!, 99)).padStart(10)}`);
  console.log(`  split adds: ADD p50 +${f2(pct(add[targets[1]!.name]!, 50) - pct(add[targets[0]!.name]!, 50))} ms, p99 +${f2(pct(add[targets[1]!.name]!, 99) - pct(add[targets[0]!.name]!, 99))} ms (served: agent ${served(agent)}, manager ${served(manager)} requests)`);

  console.log('\nRSS after the runs (MiB)');
  console.log(`  patu agent (CNI only)      ${rssMB(agent.child.pid!).toFixed(1)}`);
  console.log(`  patu manager               ${rssMB(manager.child.pid!).toFixed(1)}`);
}

scratch.cleanupOnSignals();
main().then(() => scratch.cleanup(), async (e) => {
  console.error(e);
  await scratch.cleanup();
  process.exitCode = 1;
});
