// Split mode's cost: the data-plane API called in-process against the same calls over gRPC
// with mutual TLS (src/rpc/server.ts + client.ts) to a server in ANOTHER process, on a unix
// socket and on TCP loopback, in one run:
//   1. one service change (a delta naming one service: 1 port, 10 backends): p50/p99 of the
//      call as the agent sees it, and what the split adds (target: <= 1 ms p50, <= 3 ms p99);
//   2. a full resync of 1,000 services (10 backends each): time per resync;
//   3. RSS of each process after the same workload: the single process (data plane in-process,
//      no gRPC loaded), the split's agent side (client) and manager side (server), and Node's floor.
// Rounds interleave the three paths so machine noise hits all alike.
//
// The data plane behind both paths is the same class, MapDataplane below: the
// session/generation rules on a Map, no kernel maps; so the numbers are the API's own cost
// (conversion, protobuf, ConnectRPC, HTTP/2, TLS, the process hop), split from what the
// transport alone costs (the h2+tls floor: the same request bytes, no RPC framework) and
// with each side's CPU per call, which load inflates less than latency. The same calls with
// LocalDataplane (the real maps) and a real `patu manager` are bench/manager-api.ts (root).
// No root needed here; traffic only on loopback and unix sockets in a temporary directory.
//
//   bash scripts/build.sh && node dist/bench/split.js
//   SPLIT_CHANGES=2000 SPLIT_RESYNCS=20 SPLIT_SERVICES=1000 node dist/bench/split.js
import { fork, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  DataplaneError, type CallOptions, type Dataplane, type DataplaneStatus, type ServiceChange, type ServicesApplied,
} from '../src/dataplane/api.js';
import type { DesiredServicePort } from '../src/services/model.js';

const CHANGES = Number(process.env.SPLIT_CHANGES ?? 2000);
const RESYNCS = Number(process.env.SPLIT_RESYNCS ?? 20);
const SERVICES = Number(process.env.SPLIT_SERVICES ?? 1000);
const BACKENDS = 10;
const SELF = fileURLToPath(import.meta.url);
const role = process.argv[2] ?? 'main';

const quietLog = { debug() {}, info() {}, warn(f: object, m: string) { console.error('warn', m, JSON.stringify(f)); }, error(f: object, m: string) { console.error('error', m, JSON.stringify(f)); } };
const rssMiB = (): number => Number(/^VmRSS:\s+(\d+)/m.exec(readFileSync('/proc/self/status', 'utf8'))?.[1] ?? NaN) / 1024;
const pct = (xs: number[], p: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};
const f3 = (n: number): string => n.toFixed(3);

// ---------------------------------------------------------------- the data plane both paths call

/** The API's rules for services (full resync, deltas continuing the session's generation, repeats) on a Map. */
class MapDataplane implements Dataplane {
  private readonly entries = new Map<string, DesiredServicePort>();
  private session = '';
  private generation = -1n;
  private last: ServicesApplied | undefined;

  async applyServices(c: ServiceChange): Promise<ServicesApplied> {
    const t0 = performance.now();
    if (c.session === this.session && c.generation === this.generation && this.last) return { ...this.last, repeatedGeneration: true };
    if (!c.full && (c.session !== this.session || c.generation !== this.generation + 1n)) throw new DataplaneError('resync', `generation ${c.generation} does not continue ${this.generation}`);
    let ops = 0;
    if (c.full) {
      ops += this.entries.size;
      this.entries.clear();
    } else {
      const refs = new Set(c.refs);
      for (const [k, p] of this.entries) {
        if (refs.has(p.ref)) {
          this.entries.delete(k);
          ops++;
        }
      }
    }
    for (const p of c.ports) {
      this.entries.set(p.key, p);
      ops += 1 + p.backends.length;
    }
    this.session = c.session;
    this.generation = c.generation;
    this.last = { generation: c.generation, mapOps: ops, services: this.entries.size, applyMs: performance.now() - t0, repeatedGeneration: false, conflicts: [] };
    return this.last;
  }
  async cni(): Promise<never> { throw new DataplaneError('unavailable', 'not in this bench'); }
  async setAcceleration(enabled: boolean) { return { enabled, pods: 0, sockets: 0 }; }
  async setPodFlags() { return { updated: 0, unknown: 0 }; }
  async setNodeSettings() { return { conflistWritten: false }; }
  async applyPolicy(): Promise<never> { throw new DataplaneError('unavailable', 'not in this bench'); }
  async health() { return { ok: true, problems: [] }; }
  async status(): Promise<DataplaneStatus> {
    return {
      version: 'bench', backend: 'map', servicesSession: this.session, servicesGeneration: this.generation < 0n ? 0n : this.generation, services: this.entries.size,
      policySession: '', policyGeneration: 0n, policyEndpoints: 0, acceleration: false, acceleratedPods: 0, node: {}, nodeAddresses: [], uptimeSeconds: 0,
    };
  }
  async close() {}
}

// ---------------------------------------------------------------- the workload

const vip = (i: number): string => `10.96.${(i >> 8) & 255}.${i & 255}`;
function port(i: number, salt = 0): DesiredServicePort {
  const v = vip(i + 1);
  const backends = Array.from({ length: BACKENDS }, (_, b) => `10.200.${(b + salt) & 255}.${(i % 250) + 1}:8080`).sort();
  return { key: `${v}:80/TCP`, ref: `bench/s${i}`, vip: v, port: 80, protocol: 'TCP', name: `bench/s${i}:http`, affinity: false, affinityTimeoutSeconds: 0, backends };
}
const allPorts = (n: number): DesiredServicePort[] => Array.from({ length: n }, (_, i) => port(i));

/** One path to a data plane, its own session: full resync first, then deltas. */
class Path {
  private gen = 0n;
  readonly session: string;
  constructor(readonly name: string, readonly dp: Dataplane) {
    this.session = `${name}-${process.pid}-${Math.random().toString(36).slice(2)}`;
  }
  resync(ports: DesiredServicePort[], opts?: CallOptions) {
    return this.dp.applyServices({ session: this.session, generation: ++this.gen, full: true, refs: [], ports }, opts);
  }
  change(i: number) {
    const s = i % SERVICES;
    return this.dp.applyServices({ session: this.session, generation: ++this.gen, full: false, refs: [`bench/s${s}`], ports: [port(s, i)] });
  }
}

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}

/** What every RSS child runs: one resync, CHANGES deltas, one more resync. */
async function workload(p: Path): Promise<void> {
  await p.resync(allPorts(SERVICES));
  for (let i = 0; i < CHANGES; i++) await p.change(i);
  await p.resync(allPorts(SERVICES));
}

/**
 * The floor of any RPC over this transport: the same request bytes (the ApplyServicesRequest the client would send,
 * gRPC-framed) on HTTP/2 + TLS to a server that answers a fixed message. Only applyServices, for the bench.
 */
async function rawFloor(path: string, tlsOpts: import('node:tls').ConnectionOptions): Promise<Dataplane> {
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

// ---------------------------------------------------------------- child roles

interface Msg { type: string; [k: string]: unknown }
const send = (m: Msg): void => void process.send!(m);
/** The last message of a child that measured itself. */
const sendAndExit = (m: Msg): void => void process.send!(m, () => process.exit(0));

async function certsIn(dir: string) {
  const { clientTlsOptions, loadTlsDir, serverTlsOptions } = await import('../src/rpc/tls.js');
  return { server: () => serverTlsOptions(loadTlsDir(dir, 'server')), client: () => clientTlsOptions(loadTlsDir(dir, 'client'), 'patu-manager') };
}

async function serve(dir: string): Promise<void> {
  const { startDataplaneServer } = await import('../src/rpc/server.js');
  const tls = await certsIn(dir);
  // A data plane per listener: each remembers one agent's session, as a manager does.
  const unix = await startDataplaneServer({ listen: `unix://${join(dir, 'manager.sock')}`, tls: tls.server(), impl: new MapDataplane(), log: quietLog });
  const tcp = await startDataplaneServer({ listen: 'tcp://127.0.0.1:0', tls: tls.server(), impl: new MapDataplane(), log: quietLog });
  // The floor: HTTP/2 + the same TLS on a unix socket, a fixed gRPC-framed answer, no RPC framework.
  const { createSecureServer } = await import('node:http2');
  const answer = Buffer.from([0, 0, 0, 0, 4, 8, 1, 16, 1]); // ApplyServicesResponse{generation: 1, map_ops: 1}
  const raw = createSecureServer({ ...tls.server(), allowHTTP1: false }, (req, res) => {
    req.on('data', () => {});
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'application/grpc+proto' });
      res.addTrailers({ 'grpc-status': '0' });
      res.end(answer);
    });
  });
  const rawPath = join(dir, 'raw.sock');
  await new Promise<void>((r) => raw.listen(rawPath, r));
  process.on('message', (m: Msg) => {
    if (m.type === 'rss') send({ type: 'rss', rss: rssMiB() });
    if (m.type === 'cpu') {
      const c = process.cpuUsage();
      send({ type: 'cpu', us: c.user + c.system });
    }
    if (m.type === 'stop') void Promise.all([unix.close(), tcp.close(), new Promise((r) => raw.close(r))]).then(() => process.exit(0));
  });
  send({ type: 'ready', unix: unix.address, tcp: tcp.address, raw: rawPath });
}

async function rssClient(dir: string, address: string): Promise<void> {
  const { connectDataplane } = await import('../src/rpc/client.js');
  const tls = await certsIn(dir);
  const dp = connectDataplane({ address, tls: tls.client(), log: quietLog });
  await workload(new Path('rss-client', dp));
  const rss = rssMiB();
  await dp.close();
  sendAndExit({ type: 'rss', rss });
}

async function rssInproc(): Promise<void> {
  await workload(new Path('rss-inproc', new MapDataplane()));
  sendAndExit({ type: 'rss', rss: rssMiB() });
}

function child(args: string[]): { proc: ChildProcess; next: (type: string) => Promise<Msg> } {
  // bin/patu starts the agent with --max-semi-space-size=1 (a smaller young generation: less RSS); every process here gets it.
  const proc = fork(SELF, args, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv: ['--max-semi-space-size=1'] });
  const queue: Msg[] = [];
  const waiters: { type: string; resolve: (m: Msg) => void }[] = [];
  proc.on('message', (m: Msg) => {
    const w = waiters.findIndex((x) => x.type === m.type);
    if (w >= 0) waiters.splice(w, 1)[0]!.resolve(m);
    else queue.push(m);
  });
  const next = (type: string) => new Promise<Msg>((resolve, reject) => {
    const q = queue.findIndex((x) => x.type === type);
    if (q >= 0) return resolve(queue.splice(q, 1)[0]!);
    waiters.push({ type, resolve });
    proc.once('exit', (code) => reject(new Error(`child ${args[0]} exited (${code}) before '${type}'`)));
  });
  return { proc, next };
}

// ---------------------------------------------------------------- main

async function main(): Promise<void> {
  const started = performance.now();
  const dir = mkdtempSync(join(tmpdir(), 'patu-bench-split-'));
  const children: ChildProcess[] = [];
  try {
    const { generateCerts, writeCertDir } = await import('../src/rpc/certs.js');
    writeCertDir(dir, await generateCerts());
    const load = spawnSync('cat', ['/proc/loadavg'], { encoding: 'utf8' }).stdout.trim().split(' ').slice(0, 3).join(' ');
    console.log(`# patu split-mode benchmark (${new Date().toISOString()}, node ${process.version}, load ${load})`);
    console.log('# data plane: MapDataplane (the API\'s session/generation rules on a Map; no kernel maps): the API\'s own cost');
    console.log(`# ${CHANGES} single-service changes and ${RESYNCS} resyncs of ${SERVICES} services (${BACKENDS} backends each), interleaved: in-process | unix socket | TCP loopback; server in another process, mutual TLS 1.3\n`);

    const server = child(['serve', dir]);
    children.push(server.proc);
    const ready = await server.next('ready');
    const { connectDataplane } = await import('../src/rpc/client.js');
    const { Registry } = await import('../src/k8s/prom.js');
    const { DataplaneRpcMetrics } = await import('../src/rpc/metrics.js');
    const metrics = new DataplaneRpcMetrics(new Registry());
    const tls = await certsIn(dir);
    const paths = [
      new Path('in-process', new MapDataplane()),
      new Path('h2+tls floor', await rawFloor(ready.raw as string, tls.client())),
      new Path('unix', connectDataplane({ address: ready.unix as string, tls: tls.client(), log: quietLog, metrics })),
      new Path('tcp', connectDataplane({ address: ready.tcp as string, tls: tls.client(), log: quietLog, metrics })),
    ];

    // Warm-up (JIT, connection, TLS handshake): not measured.
    for (const p of paths) await p.resync(allPorts(SERVICES));
    for (let i = 0; i < 200; i++) for (const p of paths) await p.change(i);

    // 1. single service changes
    const lat = paths.map(() => [] as number[]);
    for (let i = 0; i < CHANGES; i++) {
      for (let k = 0; k < paths.length; k++) lat[k]!.push(await timed(() => paths[k]!.change(i)));
    }
    console.log('single service change (delta: 1 service, 1 port, 10 backends), call -> answer, ms');
    console.log('path           p50     p90     p99     max     adds to in-process p50 / p99');
    paths.forEach((p, k) => {
      const l = lat[k]!;
      const add = k === 0 ? '' : `${f3(pct(l, 50) - pct(lat[0]!, 50))} / ${f3(pct(l, 99) - pct(lat[0]!, 99))}${k >= 2 ? '  (target <= 1 / <= 3)' : '  (no RPC framework: the transport\'s own cost)'}`;
      console.log(`${p.name.padEnd(13)} ${f3(pct(l, 50)).padStart(6)}  ${f3(pct(l, 90)).padStart(6)}  ${f3(pct(l, 99)).padStart(6)}  ${f3(Math.max(...l)).padStart(6)}     ${add}`);
    });

    // 1b. CPU per change on each side, in blocks (not interleaved: each side's CPU counter covers one path only)
    const serverCpu = async (): Promise<number> => {
      server.proc.send({ type: 'cpu' });
      return (await server.next('cpu')).us as number;
    };
    const BLOCK = Math.max(200, Math.floor(CHANGES / 4));
    const cpuRows: string[] = [];
    for (const [k, p] of paths.entries()) {
      const s0 = await serverCpu();
      const c0 = process.cpuUsage();
      for (let i = 0; i < BLOCK; i++) await p.change(CHANGES + i);
      const c = process.cpuUsage(c0);
      const sv = k === 0 ? 0 : ((await serverCpu()) - s0) / BLOCK;
      cpuRows.push(`${p.name.padEnd(13)} ${(((c.user + c.system) / BLOCK) / 1000).toFixed(3).padStart(7)}  ${(sv / 1000).toFixed(3).padStart(7)}`);
    }
    console.log(`\nCPU per single service change (${BLOCK} in a row per path), ms: what the load cannot inflate as much as latency`);
    console.log('path          caller   server');
    for (const r of cpuRows) console.log(r);

    // 2. full resyncs
    const all = allPorts(SERVICES);
    const { ApplyServicesRequestSchema } = await import('../src/rpc/gen/patu/dataplane/v1/dataplane_pb.js');
    const { serviceChangeToProto } = await import('../src/rpc/convert.js');
    const { toBinary } = await import('@bufbuild/protobuf');
    const wireBytes = (n: number) => toBinary(ApplyServicesRequestSchema, serviceChangeToProto({ session: 's', generation: 1n, full: true, refs: [], ports: allPorts(n) })).length;
    const res = paths.map(() => [] as number[]);
    for (let r = 0; r < RESYNCS; r++) {
      for (let k = 0; k < paths.length; k++) res[k]!.push(await timed(() => paths[k]!.resync(all)));
    }
    console.log(`\nfull resync of ${SERVICES} services (${(wireBytes(SERVICES) / 1024).toFixed(0)} KiB on the wire; 10,000 services: ${(wireBytes(10_000) / 1048576).toFixed(1)} MiB), ms`);
    console.log('path           p50      max      vs in-process (p50)');
    res.forEach((l, k) => {
      console.log(`${paths[k]!.name.padEnd(13)} ${f3(pct(l, 50)).padStart(7)}  ${f3(Math.max(...l)).padStart(7)}  ${k === 0 ? '' : `+${f3(pct(l, 50) - pct(res[0]!, 50))} ms, ${(pct(l, 50) / pct(res[0]!, 50)).toFixed(1)}x`}`);
    });
    for (const p of paths.slice(1)) await p.dp.close();

    // 3. RSS, each process after the same workload (1 resync + changes + 1 resync)
    const floor = child(['floor']);
    children.push(floor.proc);
    const floorRss = (await floor.next('rss')).rss as number;
    const inproc = child(['inproc']);
    children.push(inproc.proc);
    const inprocRss = (await inproc.next('rss')).rss as number;
    const client = child(['client', dir, ready.unix as string]);
    children.push(client.proc);
    const clientRss = (await client.next('rss')).rss as number;
    server.proc.send({ type: 'rss' });
    const serverRss = (await server.next('rss')).rss as number;
    console.log(`\nRSS (MiB; node --max-semi-space-size=1 as bin/patu runs the agent), each process after the workload (1 resync, ${CHANGES} changes, 1 resync):`);
    console.log(`  node floor (idle, nothing loaded)          ${floorRss.toFixed(1)}`);
    console.log(`  single process: the API in-process         ${inprocRss.toFixed(1)}`);
    console.log(`  split, agent side: the same over the client ${clientRss.toFixed(1)}  (+${(clientRss - inprocRss).toFixed(1)} for the gRPC/TLS client)`);
    console.log(`  split, manager side: the server            ${serverRss.toFixed(1)}  (served this whole bench; +${(serverRss - floorRss).toFixed(1)} over the floor)`);
    console.log(`  split, both processes                      ${(clientRss + serverRss).toFixed(1)}  (${((clientRss + serverRss) / inprocRss).toFixed(2)}x the single process)`);
    console.log(`\nbench wall time ${((performance.now() - started) / 1000).toFixed(1)} s`);
    server.proc.send({ type: 'stop' });
    await new Promise((r) => server.proc.once('exit', r));
  } finally {
    for (const c of children) if (c.exitCode === null) c.kill();
    rmSync(dir, { recursive: true, force: true });
  }
}

const run = role === 'serve' ? serve(process.argv[3]!)
  : role === 'client' ? rssClient(process.argv[3]!, process.argv[4]!)
    : role === 'inproc' ? rssInproc()
      : role === 'floor' ? Promise.resolve(sendAndExit({ type: 'rss', rss: rssMiB() }))
        : main();
run.catch((e) => {
  console.error(e);
  process.exit(1);
});
