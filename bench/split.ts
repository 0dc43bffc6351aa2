// Split mode's cost (issue 13's Benchmark), in-process against split in ONE run, interleaved
// so machine noise hits every side alike (needs root):
//   1. service change to map, API level: one service's backends through the data-plane API
//      (a direct Dataplane.applyServices call, what the agent's services source ends in; the
//      services-file edit and its watch before it are the same code in both modes, not timed):
//        in-process  LocalDataplane (real maps) in this process, as `patu agent` does;
//        split       a real `patu manager` (bin/patu, its LocalDataplane) over gRPC + mTLS, unix socket;
//      and two references, same run, that say where the split's extra time goes:
//        gRPC ref    the same client/server code (ConnectRPC, HTTP/2, TLS 1.3, another process) to
//                    a data plane that only keeps a Map: the framework + transport, no maps;
//        h2+tls ref  the same request bytes on HTTP/2 + TLS to a server answering a fixed message,
//                    no RPC framework: the transport's own cost;
//   2. a full resync of N (1,000) services, the same four sides;
//   3. CNI ADD/DEL through bin/patu as a runtime runs it, answered by `patu agent` (default) vs
//      `patu manager` (split: it serves the launcher's socket with the same code);
//   4. RSS, same services file of N services: the single `patu agent`, and split's `patu manager`
//      and `patu agent --manager`, each and both together (each side started, in step, settled).
//
//   bash scripts/build.sh && node dist/bench/split.js
//   SPLIT_CHANGES=1000 SPLIT_WARMUP=300 SPLIT_SERVICES=1000 SPLIT_RESYNCS=5 SPLIT_PODS=40 SPLIT_SETTLE_MS=3000 node dist/bench/split.js
//
// Everything runs in a netns, cgroups and pin roots of its own (test/helpers/kernel.ts Scratch,
// removed at the end and on Ctrl-C); the service addresses are never connected to. The processes
// under test are started through bin/patu, so they run with the launcher's bundle and V8 flags.
import { fork, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Scratch } from '../test/helpers/kernel.js';
import { PATU_BIN, isRoot } from '../test/helpers/cni.js';
import { startAgentProc } from '../test/helpers/agent-proc.js';
import { openManagerDataplane } from '../src/manager/manager.js';
import { createLog } from '../src/agent/log.js';
import { portKey, type DesiredServicePort } from '../src/services/model.js';
import {
  DataplaneError, type Dataplane, type DataplaneStatus, type ServiceChange, type ServicesApplied,
} from '../src/dataplane/api.js';

const CHANGES = Number(process.env.SPLIT_CHANGES ?? 1000);
const WARMUP = Number(process.env.SPLIT_WARMUP ?? 300);
const SERVICES = Number(process.env.SPLIT_SERVICES ?? 1000);
const RESYNCS = Number(process.env.SPLIT_RESYNCS ?? 5);
const PODS = Number(process.env.SPLIT_PODS ?? 40);
const SETTLE_MS = Number(process.env.SPLIT_SETTLE_MS ?? 3000);
const SELF = fileURLToPath(import.meta.url);
const quiet = createLog({ level: 'fatal' });
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const pct = (xs: number[], p: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};
const f2 = (n: number): string => n.toFixed(2);
/** A difference, signed. */
const d2 = (n: number): string => `${n < 0 ? '' : '+'}${f2(n)}`;
const rssMiB = (pid: number | 'self'): number => Number(/^VmRSS:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? NaN) / 1024;
const loadavg = (): string => readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');

const svcPort = (i: number, set: number): DesiredServicePort => {
  const vip = `10.96.${(i >> 8) & 255}.${i & 255}`;
  return {
    key: portKey(vip, 80, 'TCP'), ref: `bench/s${i}`, vip, port: 80, protocol: 'TCP', name: `bench/s${i}:80`, affinity: false, affinityTimeoutSeconds: 0,
    backends: [1, 2, 3].map((b) => `10.202.${(i >> 8) & 255}.${(i & 255)}:${8000 + b + set * 10}`),
  };
};

// ---------------------------------------------------------------- the references' server (a child process)

/** The API's session/generation rules on a Map, no kernel: what the gRPC reference serves. */
class MapDataplane implements Dataplane {
  private readonly entries = new Map<string, DesiredServicePort>();
  private session = '';
  private generation = 0n;

  async applyServices(c: ServiceChange): Promise<ServicesApplied> {
    const t0 = performance.now();
    if (!c.full && (c.session !== this.session || c.generation !== this.generation + 1n)) throw new DataplaneError('resync', `generation ${c.generation} does not continue ${this.generation}`);
    if (c.full) this.entries.clear();
    else for (const [k, p] of this.entries) if (c.refs.includes(p.ref)) this.entries.delete(k);
    for (const p of c.ports) this.entries.set(p.key, p);
    this.session = c.session;
    this.generation = c.generation;
    return { generation: c.generation, mapOps: c.ports.length, services: this.entries.size, applyMs: performance.now() - t0, repeatedGeneration: false, conflicts: [] };
  }
  async cni(): Promise<never> { throw new DataplaneError('unavailable', 'not in this bench'); }
  async setAcceleration(enabled: boolean) { return { enabled, pods: 0, sockets: 0 }; }
  async setPodFlags() { return { updated: 0, unknown: 0 }; }
  async setNodeSettings() { return { conflistWritten: false }; }
  async applyPolicy(): Promise<never> { throw new DataplaneError('unavailable', 'not in this bench'); }
  async health() { return { ok: true, problems: [] }; }
  async status(): Promise<DataplaneStatus> {
    return {
      version: 'bench', backend: 'map', servicesSession: this.session, servicesGeneration: this.generation, services: this.entries.size,
      policySession: '', policyGeneration: 0n, policyEndpoints: 0, acceleration: false, acceleratedPods: 0, node: {}, nodeAddresses: [], uptimeSeconds: 0,
    };
  }
  async close() {}
}

async function tlsFor(dir: string) {
  const { clientTlsOptions, loadTlsDir, serverTlsOptions } = await import('../src/rpc/tls.js');
  return { server: () => serverTlsOptions(loadTlsDir(dir, 'server')), client: () => clientTlsOptions(loadTlsDir(dir, 'client'), 'patu-manager') };
}

/** Child role: the gRPC reference (MapDataplane) and the h2+tls reference, on unix sockets in dir. */
async function serveReferences(dir: string): Promise<void> {
  const { startDataplaneServer } = await import('../src/rpc/server.js');
  const { createSecureServer } = await import('node:http2');
  const tls = await tlsFor(join(dir, 'tls'));
  const grpc = await startDataplaneServer({ listen: `unix://${join(dir, 'ref-grpc.sock')}`, tls: tls.server(), impl: new MapDataplane(), log: quiet });
  const answer = Buffer.from([0, 0, 0, 0, 4, 8, 1, 16, 1]); // gRPC-framed ApplyServicesResponse{generation: 1, map_ops: 1}
  const raw = createSecureServer({ ...tls.server(), allowHTTP1: false }, (req, res) => {
    req.on('data', () => {});
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'application/grpc+proto' });
      res.addTrailers({ 'grpc-status': '0' });
      res.end(answer);
    });
  });
  await new Promise<void>((r) => raw.listen(join(dir, 'ref-h2.sock'), r));
  process.on('message', (m: string) => {
    if (m === 'rss') process.send!({ rss: rssMiB('self') });
    if (m === 'stop') void Promise.all([grpc.close(), new Promise((r) => raw.close(r))]).then(() => process.exit(0));
  });
  process.send!({ ready: true });
}

/** The h2+tls reference's client: applyServices sends the request the gRPC client would (protobuf, gRPC-framed), nothing else. */
async function rawH2Dataplane(path: string, tlsOpts: import('node:tls').ConnectionOptions): Promise<Dataplane> {
  const { connect: h2connect } = await import('node:http2');
  const { connect: tlsConnect } = await import('node:tls');
  const { toBinary } = await import('@bufbuild/protobuf');
  const { ApplyServicesRequestSchema } = await import('../src/rpc/gen/patu/dataplane/v1/dataplane_pb.js');
  const { serviceChangeToProto } = await import('../src/rpc/convert.js');
  const session = h2connect('https://localhost', { createConnection: () => tlsConnect({ ...tlsOpts, path, ALPNProtocols: ['h2'] }) });
  const dp = new MapDataplane();
  dp.applyServices = (c: ServiceChange) => new Promise((resolve, reject) => {
    const body = toBinary(ApplyServicesRequestSchema, serviceChangeToProto(c));
    const frame = Buffer.alloc(5 + body.length);
    frame.writeUInt32BE(body.length, 1);
    frame.set(body, 5);
    const st = session.request({ ':method': 'POST', ':path': '/patu.dataplane.v1.Dataplane/ApplyServices', 'content-type': 'application/grpc+proto', te: 'trailers' });
    st.on('data', () => {});
    st.on('end', () => resolve({ generation: c.generation, mapOps: 1, services: 0, applyMs: 0, repeatedGeneration: false, conflicts: [] }));
    st.on('error', reject);
    st.end(frame);
  });
  dp.close = async () => void session.close();
  return dp;
}

// ---------------------------------------------------------------- processes under test

const scratch = new Scratch('patu-bench-split');

interface Proc {
  child: ChildProcess;
  log: () => string;
}

async function startPatu(node: string, args: string[], ready: string): Promise<Proc> {
  // nsenter, not `ip netns exec` (which mounts a fresh /sys, hiding bpffs and cgroup2); it execs
  // bin/patu, which execs node: the child's pid is the process measured.
  const child = spawn('nsenter', [`--net=/run/netns/${node}`, PATU_BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (log = (log + d).slice(-200_000)));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (log = (log + d).slice(-200_000)));
  scratch.defer(`patu ${args[0]}`, () => void child.kill('SIGKILL'));
  const end = Date.now() + 60_000;
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

// ---------------------------------------------------------------- main

async function main(): Promise<void> {
  if (!isRoot()) throw new Error('bench/split: needs root (netns, cgroups, BPF programs)');
  const started = performance.now();
  const dir = scratch.tmpDir('patu-bench-split');
  const node = scratch.netns(scratch.name('node'));
  const [pinA, pinB, pinC] = ['a', 'b', 'c'].map((s) => scratch.pinRoot(s)) as [string, string, string];
  const { generateCerts, writeCertDir } = await import('../src/rpc/certs.js');
  const tlsDir = join(dir, 'tls');
  writeCertDir(tlsDir, await generateCerts());
  const tls = await tlsFor(tlsDir);
  console.log(`# patu split-mode benchmark: ${new Date().toISOString()}, node ${process.version}, ${spawnSync('nproc', { encoding: 'utf8' }).stdout.trim()} CPUs, load ${loadavg()}`);
  console.log(`# ${SERVICES} services x 1 port x 3 backends; ${CHANGES} changes (after ${WARMUP} warm-up), ${RESYNCS} resyncs, ${PODS} pods per side; sides interleaved`);

  // In-process: the manager's data plane in this process (what the default mode's agent does to the maps).
  const md = await openManagerDataplane({
    log: quiet, pinRoot: pinA, cgroup: scratch.cgroup('a'), cniSocket: join(dir, 'a-cni.sock'), serviceCidrs: ['10.96.0.0/12'], clusterCidrs: ['10.202.0.0/16'],
    bridge: 'bspnone', dataDir: join(dir, 'a-ipam'), cniConfDir: '', nodeNetns: `/run/netns/${node}`, version: 'bench',
  });
  scratch.defer('in-process data plane', async () => {
    md.parts.lb?.detach();
    await md.close();
  });
  // Split: a real manager (bin/patu) over mutual TLS.
  const msock = join(dir, 'manager.sock');
  const mcni = join(dir, 'manager-cni.sock');
  const manager = await startPatu(node, ['manager', '--listen', `unix://${msock}`, '--tls-dir', tlsDir, '--pin-root', pinB, '--cgroup', scratch.cgroup('b'), '--bridge', 'bspbr',
    '--data-dir', join(dir, 'b-ipam'), '--cni-conf-dir', '', '--cni-socket', mcni, '--service-cidr', '10.96.0.0/12', '--cluster-cidr', '10.202.0.0/16,10.203.0.0/16',
    '--metrics-addr', '127.0.0.1:19467', '--log-level', 'info'], 'serving the data-plane API');
  // The default mode's CNI side: a plain agent.
  const acni = join(dir, 'agent-cni.sock');
  const agent = await startPatu(node, ['agent', '--cni-socket', acni, '--pin-root', pinC, '--no-hostports', '--log-level', 'info'], 'serving CNI requests');
  // The references' server: another process, as bin/patu runs the agent (--max-semi-space-size=1).
  const ref = fork(SELF, ['ref', dir], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv: ['--max-semi-space-size=1'] });
  scratch.defer('reference server', () => void ref.kill('SIGKILL'));
  const refMsg = (): Promise<{ ready?: boolean; rss?: number }> => new Promise((resolve, reject) => {
    ref.once('message', resolve);
    ref.once('exit', (c) => reject(new Error(`reference server exited (${c})`)));
  });
  await refMsg();

  const { connectDataplane } = await import('../src/rpc/client.js');
  const grpcTo = (sock: string) => connectDataplane({ address: `unix://${sock}`, tls: tls.client(), log: quiet, defaultTimeoutMs: 60_000 });
  const remote = grpcTo(msock);
  const grpcRef = grpcTo(join(dir, 'ref-grpc.sock'));
  const h2Ref = await rawH2Dataplane(join(dir, 'ref-h2.sock'), tls.client());
  for (const c of [remote, grpcRef, h2Ref]) scratch.defer('client', () => c.close());
  const sides: [string, Dataplane][] = [
    ['in-process (LocalDataplane)', md.dataplane],
    ['split (patu manager)', remote],
    ['ref: gRPC+mTLS, Map', grpcRef],
    ['ref: h2+TLS, no framework', h2Ref],
  ];
  const gen = new Map<string, bigint>(sides.map(([n]) => [n, 0n]));
  const apply = async (name: string, dp: Dataplane, c: Omit<ServiceChange, 'session' | 'generation'>): Promise<number> => {
    const g = gen.get(name)! + 1n;
    gen.set(name, g);
    const t0 = performance.now();
    await dp.applyServices({ session: 'bench', generation: g, ...c });
    return performance.now() - t0;
  };
  /** The sides in a rotating order, so none is always first after an idle moment. */
  const rotated = (i: number): [string, Dataplane][] => sides.map((_, k) => sides[(k + i) % sides.length]!);

  // 2. Full resyncs, alternating two backend sets so every round rewrites them all (first: the initial state).
  const resync: Record<string, number[]> = {};
  for (let r = 0; r < RESYNCS; r++) {
    const ports = Array.from({ length: SERVICES }, (_, i) => svcPort(i, r % 2));
    for (const [name, dp] of rotated(r)) (resync[name] ??= []).push(await apply(name, dp, { full: true, refs: [], ports }));
  }
  // Warm-up (JIT, HTTP/2 and TLS buffers), not recorded: a process's first few hundred calls cost several times a warm one.
  for (let i = 0; i < WARMUP; i++) {
    const p = svcPort(SERVICES - 1 - (i % 10), i % 2 ? 4 : 5);
    for (const [name, dp] of rotated(i)) await apply(name, dp, { full: false, refs: [p.ref], ports: [p] });
  }
  // 1. One service's backends, flipped back and forth.
  const change: Record<string, number[]> = {};
  for (let i = 0; i < CHANGES; i++) {
    const p = svcPort(i % SERVICES, (i + 1) % 2 === 0 ? 2 : 3);
    for (const [name, dp] of rotated(i)) (change[name] ??= []).push(await apply(name, dp, { full: false, refs: [p.ref], ports: [p] }));
  }
  // A call that does no work on either side (in-process and the real manager only).
  const status: Record<string, number[]> = {};
  for (let i = 0; i < CHANGES; i++) {
    for (const [name, dp] of rotated(i).filter(([n]) => !n.startsWith('ref'))) {
      const t0 = performance.now();
      await dp.status();
      (status[name] ??= []).push(performance.now() - t0);
    }
  }
  const base = sides[0]![0];
  const adds = (xs: Record<string, number[]>, name: string, p: number): string => (name === base ? '' : d2(pct(xs[name]!, p) - pct(xs[base]!, p)));
  console.log('\n## 1. service change to map, API level (ms, the awaited Dataplane.applyServices: one service, 3 backends)');
  console.log(`  ${'side'.padEnd(28)} ${'p50'.padStart(7)} ${'p99'.padStart(7)} ${'max'.padStart(7)} ${'adds p50'.padStart(9)} ${'adds p99'.padStart(9)}   Status p50`);
  for (const [name] of sides) {
    const c = change[name]!;
    console.log(`  ${name.padEnd(28)} ${f2(pct(c, 50)).padStart(7)} ${f2(pct(c, 99)).padStart(7)} ${f2(Math.max(...c)).padStart(7)} ${adds(change, name, 50).padStart(9)} ${adds(change, name, 99).padStart(9)}   ${status[name] ? f2(pct(status[name]!, 50)) : '-'}`);
  }
  // The manager's own view (its rpc histogram: from request decoded to answer built), p50 bucket bound.
  const metrics = spawnSync('nsenter', [`--net=/run/netns/${node}`, 'curl', '-sf', 'http://127.0.0.1:19467/metrics'], { encoding: 'utf8' }).stdout ?? '';
  const serverP50 = (method: string): string => {
    const re = new RegExp(`patu_dataplane_rpc_duration_seconds_bucket\\{side="server",method="${method}",le="([^"]+)"\\} (\\S+)`, 'g');
    const buckets = [...metrics.matchAll(re)].map((m) => [Number(m[1]), Number(m[2])] as const);
    const total = buckets.at(-1)?.[1] ?? 0;
    const at = buckets.find(([, n]) => n >= total / 2);
    return at ? `<= ${f2(at[0] * 1000)}` : '?';
  };
  const split = sides[1]![0];
  console.log(`  inside the manager (its rpc histogram, decoded request to answer): ApplyServices p50 ${serverP50('ApplyServices')} ms, Status p50 ${serverP50('Status')} ms`);
  console.log(`  split adds p50 ${d2(pct(change[split]!, 50) - pct(change[base]!, 50))} / p99 ${d2(pct(change[split]!, 99) - pct(change[base]!, 99))} ms (target <= 1 / <= 3); of the p50: transport alone (h2+TLS ref) ${d2(pct(change[sides[3]![0]]!, 50) - pct(change[base]!, 50))}, with the RPC framework (gRPC ref) ${d2(pct(change[sides[2]![0]]!, 50) - pct(change[base]!, 50))}`);

  console.log(`\n## 2. full resync of ${SERVICES} services (ms, ${RESYNCS} rounds; the first programs the maps from empty)`);
  console.log(`  ${'side'.padEnd(28)} ${'median'.padStart(8)} ${'max'.padStart(8)} ${'adds'.padStart(8)}`);
  for (const [name] of sides) {
    const r = resync[name]!;
    console.log(`  ${name.padEnd(28)} ${f2(pct(r, 50)).padStart(8)} ${f2(Math.max(...r)).padStart(8)} ${adds(resync, name, 50).padStart(8)}`);
  }
  for (const c of [remote, grpcRef, h2Ref]) await c.close();

  // 3. CNI ADD/DEL through the launcher: agent vs manager, interleaved.
  const conf = (br: string, subnet: string) => ({ cniVersion: '1.1.0', name: br, type: 'patu', bridge: br, clusterCIDR: '10.203.0.0/16', masquerade: false, ipam: { ranges: [[{ subnet }]], dataDir: join(dir, `${br}-ipam`) } });
  const targets = [
    { name: 'patu agent (default)', socket: acni, conf: { ...conf('bsagbr', '10.203.1.0/24'), pinRoot: pinC } },
    { name: 'patu manager (split)', socket: mcni, conf: { ...conf('bspbr', '10.203.2.0/24'), pinRoot: pinB } },
  ];
  const add: Record<string, number[]> = {};
  const del: Record<string, number[]> = {};
  for (let i = 0; i < PODS; i++) {
    for (const t of i % 2 ? [...targets].reverse() : targets) {
      const ns = `${scratch.name('p')}-${t.name[5]}${i}`;
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
  const [ta, tm] = targets.map((t) => t.name) as [string, string];
  console.log(`\n## 3. CNI through bin/patu (ms, spawn to exit; the pod netns made outside the timing), ${PODS} pods per side`);
  console.log(`  ${'answered by'.padEnd(28)} ${'ADD p50'.padStart(8)} ${'ADD p99'.padStart(8)} ${'DEL p50'.padStart(8)} ${'DEL p99'.padStart(8)}`);
  for (const t of targets) console.log(`  ${t.name.padEnd(28)} ${f2(pct(add[t.name]!, 50)).padStart(8)} ${f2(pct(add[t.name]!, 99)).padStart(8)} ${f2(pct(del[t.name]!, 50)).padStart(8)} ${f2(pct(del[t.name]!, 99)).padStart(8)}`);
  console.log(`  split adds: ADD p50 ${d2(pct(add[tm]!, 50) - pct(add[ta]!, 50))} ms, p99 ${d2(pct(add[tm]!, 99) - pct(add[ta]!, 99))} ms (target <= 1 / <= 3; served: agent ${served(agent)}, manager ${served(manager)} requests)`);
  const afterApi = { manager: rssMiB(manager.child.pid!), agent: rssMiB(agent.child.pid!) };
  ref.send('rss');
  const refRss = (await refMsg()).rss!;
  ref.send('stop');
  for (const p of [manager, agent]) {
    p.child.kill('SIGTERM');
    await Promise.race([new Promise((r) => p.child.once('exit', r)), sleep(5000)]);
  }

  // 4. RSS: the same services file, the single process against split's two, each in step and settled.
  const file = join(dir, 'services.yaml');
  const lines = ['services:'];
  for (let i = 0; i < SERVICES; i++) {
    const ip = (n: number) => `10.244.${n + Math.floor(i / 250)}.${(i % 250) + 1}`;
    lines.push(`  - { name: s${i}, namespace: bench, clusterIP: 10.96.${130 + Math.floor(i / 250)}.${(i % 250) + 1}, ports: [{ port: 80, targetPort: 8080 }], endpoints: [{ ip: ${ip(0)} }, { ip: ${ip(100)} }] }`);
  }
  writeFileSync(file, `${lines.join('\n')}\n`);
  const rows: string[] = [];
  for (const split of [false, true]) {
    const d = scratch.tmpDir(split ? 'rss-split' : 'rss-single');
    const p = startAgentProc(['--cni-socket', join(d, 'cni.sock'), '--services-file', file, '--cgroup', scratch.cgroup(split ? 'rss-split' : 'rss-single'),
      '--pin-root', scratch.pinRoot(split ? 'rss-split' : 'rss-single'), '--data-dir', join(d, 'ipam')], { dir: d, split, managerArgs: ['--cluster-cidr', '10.244.0.0/16'] });
    try {
      await p.ready(120_000);
      await sleep(SETTLE_MS);
      if (split) {
        const m = rssMiB(p.main.pid!);
        const a = rssMiB(p.agent!.pid!);
        rows.push(`  split: patu manager                ${m.toFixed(1)}`, `  split: patu agent --manager        ${a.toFixed(1)}`, `  split: both                        ${(m + a).toFixed(1)}`);
      } else {
        rows.push(`  single: patu agent                 ${rssMiB(p.main.pid!).toFixed(1)}`);
      }
    } finally {
      await p.stop();
    }
  }
  console.log(`\n## 4. RSS (MiB), ${SERVICES} services from a services file (2 backends each), ${SETTLE_MS} ms after in step; started by bin/patu`);
  for (const r of rows) console.log(r);
  console.log(`  after sections 1-3: patu manager ${afterApi.manager.toFixed(1)}, patu agent (CNI only) ${afterApi.agent.toFixed(1)}, the references' server (node, no bundle) ${refRss.toFixed(1)}`);
  console.log(`\n# wall time ${((performance.now() - started) / 1000).toFixed(0)} s, load at the end ${loadavg()}`);
}

if (process.argv[2] === 'ref') {
  serveReferences(process.argv[3]!).catch((e) => {
    console.error(e);
    process.exit(1);
  });
} else {
  scratch.cleanupOnSignals();
  main().then(() => scratch.cleanup(), async (e) => {
    console.error(e);
    await scratch.cleanup();
    process.exitCode = 1;
  });
}
