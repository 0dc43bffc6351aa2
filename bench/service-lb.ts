// Service load balancing benchmark, one run on one kernel (needs root):
//  1. connect()+close() rate to a service address with 10, 1,000 and 10,000
//     services (10 endpoints each): patu's socket LB vs the same services as
//     kube-proxy-style iptables rules (KUBE-SERVICES -> KUBE-SVC-* with
//     statistic random jumps -> KUBE-SEP-* DNAT) loaded with iptables-restore;
//     plus a direct connect to a backend (the ceiling). The client is a small
//     C loop (bench/connect-rate.c) so the runtime's cost does not hide the
//     kernel's; rounds are interleaved so machine noise hits both alike.
//     The last service is also a NodePort (30000): its rate through a node
//     address (the wildcard lookup) is printed beside its ClusterIP rate.
//  2. time to program 10,000 services / 100,000 endpoints into empty maps;
//  3. latency of a single service change: model -> maps, and file write ->
//     watcher -> maps (p50/p99).
// Everything runs in two network namespaces this script creates (patu's has
// no iptables rules at all, as on a node without kube-proxy), a cgroup under
// the cgroup2 root and pins under /sys/fs/bpf/patu-bench-svc-<pid>; all removed
// at the end, also on failure or Ctrl-C (test/helpers/kernel.ts).
//
//   bash scripts/build.sh && node dist/bench/service-lb.js
//   BENCH_SECONDS=0.5 BENCH_ROUNDS=3 BENCH_SCALES=10,1000,10000 node dist/bench/service-lb.js
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ServiceLb, type ApplyStats } from '../src/dataplane/service-lb.js';
import { ServiceModel, type Endpoint, type Service } from '../src/services/model.js';
import { ServicesFileWatcher, ServicesDirWatcher, applyToModel, type ServiceWithEndpoints } from '../src/services/file-source.js';
import { removePins } from '../src/kernel/bpf/pins.js';
import { Scratch } from '../test/helpers/kernel.js';
import { acceptSink, buildTools, connectRate, median, perSec, type Rate } from './lib/connect-rate.js';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 1);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const SCALES = (process.env.BENCH_SCALES ?? '10,1000,10000').split(',').map(Number);
const ENDPOINTS = 10;
const PORT = 8080;
const scratch = new Scratch('patu-bench-svc');
const NSP = scratch.name('p');
const NSI = scratch.name('i');
let CG = '';
const PIN = scratch.pinRoot();
const BACKENDS = Array.from({ length: ENDPOINTS }, (_, i) => `10.78.0.${i + 1}`);
const tmp = scratch.tmpDir('patu-svc-bench');

/** A node address in patu's namespace (NodePorts answer on it) and the last service's nodePort. */
const NODE_IP = '192.168.78.1';
const NODE_PORT = 30000;
const vipOf = (i: number): string => `10.96.${(i + 1) >> 8}.${(i + 1) & 255}`;

function sh(cmd: string, args: string[], input?: string): { ms: number } {
  const t0 = performance.now();
  const r = spawnSync(cmd, args, { encoding: 'utf8', input, maxBuffer: 1 << 28 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.slice(0, 4).join(' ')} failed (${r.status}): ${r.stderr}`);
  return { ms: performance.now() - t0 };
}

function items(n: number, epOf: (i: number) => Endpoint[] = () => BACKENDS.map((ip) => ({ ip, ready: true, serving: true, terminating: false }))): ServiceWithEndpoints[] {
  return Array.from({ length: n }, (_, i) => ({
    service: {
      namespace: 'bench', name: `s${i}`, clusterIP: vipOf(i), sessionAffinity: 'None', affinityTimeoutSeconds: 10800,
      ports: [{ name: 'http', port: 80, protocol: 'TCP', targetPort: PORT }],
    } satisfies Service,
    endpoints: epOf(i),
  }));
}

/** kube-proxy's iptables layout for n services (nat table only; filter rules do not apply to these connects). */
function kubeProxyRules(n: number): string {
  const h = (s: string): string => createHash('sha256').update(s).digest('hex').slice(0, 16).toUpperCase();
  const chains: string[] = [':KUBE-SERVICES - [0:0]', ':KUBE-NODEPORTS - [0:0]', ':KUBE-MARK-MASQ - [0:0]', ':KUBE-POSTROUTING - [0:0]'];
  const rules: string[] = [
    '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
    '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
    '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
    '-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000',
    '-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN',
    '-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0',
    '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully',
  ];
  const svcRules: string[] = [];
  for (let i = 0; i < n; i++) {
    const name = `bench/s${i}:http`;
    const svcChain = `KUBE-SVC-${h(name)}`;
    chains.push(`:${svcChain} - [0:0]`);
    svcRules.push(`-A KUBE-SERVICES -d ${vipOf(i)}/32 -p tcp -m comment --comment "${name} cluster IP" -m tcp --dport 80 -j ${svcChain}`);
    BACKENDS.forEach((ip, j) => {
      const sep = `KUBE-SEP-${h(`${name}/${ip}`)}`;
      chains.push(`:${sep} - [0:0]`);
      const left = BACKENDS.length - j;
      rules.push(left > 1
        ? `-A ${svcChain} -m comment --comment "${name} -> ${ip}:${PORT}" -m statistic --mode random --probability ${(1 / left).toFixed(11)} -j ${sep}`
        : `-A ${svcChain} -m comment --comment "${name} -> ${ip}:${PORT}" -j ${sep}`);
      rules.push(`-A ${sep} -s ${ip}/32 -m comment --comment "${name}" -j KUBE-MARK-MASQ`);
      rules.push(`-A ${sep} -p tcp -m comment --comment "${name}" -m tcp -j DNAT --to-destination ${ip}:${PORT}`);
    });
  }
  svcRules.push('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS');
  return ['*nat', ...chains, ...rules, ...svcRules, 'COMMIT', ''].join('\n');
}

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]!;
}
const fmt = (x: number, d = 0): string => x.toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d });

async function netnsWithBackends(ns: string): Promise<void> {
  scratch.netns(ns);
  for (const ip of BACKENDS) sh('ip', ['-n', ns, 'addr', 'add', `${ip}/32`, 'dev', 'lo']);
  // A route for the service range, as a node has (its default route): iptables DNATs only
  // after routing has accepted the destination. Same in both namespaces for symmetry.
  sh('ip', ['-n', ns, 'route', 'add', '10.96.0.0/16', 'dev', 'lo']);
  const sink = await acceptSink(ns, PORT);
  scratch.defer(`accept-sink in ${ns}`, () => void sink.kill('SIGKILL'));
}

/** Applies what changed in the model since the last call (as the agent's sources do). */
function applyDelta(lb: ServiceLb, model: ServiceModel): ApplyStats {
  const changed = model.takeChanges();
  return lb.applyChanges(changed, model.desired(changed));
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('bench/service-lb needs root (netns, cgroup, BPF, iptables)');
  buildTools();
  CG = scratch.cgroup();
  const started = performance.now();
  console.log(`# patu service LB benchmark (${new Date().toISOString()}, kernel ${sh('uname', ['-r']).ms >= 0 ? spawnSync('uname', ['-r'], { encoding: 'utf8' }).stdout.trim() : ''})`);
  console.log(`# ${ENDPOINTS} endpoints per service; connect-rate runs ${SECONDS}s x ${ROUNDS} rounds (median), interleaved\n`);

  // 2. Cold programming into empty maps (three times, fresh pins each).
  const maxScale = Math.max(...SCALES);
  const coldModel = new ServiceModel();
  coldModel.replaceAll(items(maxScale));
  const cold: number[] = [];
  for (let i = 0; i < 3; i++) {
    const root = `${PIN}-cold${i}`;
    const lbCold = ServiceLb.open({ pinRoot: root }); // maps only: nothing attaches
    try {
      const st = lbCold.resync(coldModel.desired());
      cold.push(st.ms);
      if (i === 0) console.log(`cold programming: ${fmt(maxScale)} services / ${fmt(maxScale * ENDPOINTS)} endpoints = ${fmt(st.ops)} map ops in ${st.syscallBatches} batch syscalls`);
    } finally {
      lbCold.close();
      removePins(root);
    }
  }
  console.log(`cold programming time: ${cold.map((x) => fmt(x, 1)).join(' / ')} ms (median ${fmt(median(cold), 1)} ms; target < 1000 ms)\n`);

  await netnsWithBackends(NSP);
  await netnsWithBackends(NSI);
  sh('ip', ['-n', NSP, 'addr', 'add', `${NODE_IP}/32`, 'dev', 'lo']);
  const lb = ServiceLb.open({ pinRoot: PIN, cgroupPath: CG });
  lb.attach();
  // What the agent's NodeAddressTracker keeps: the node's addresses (just the one we measure).
  lb.setNodeAddresses(new Map([[NODE_IP, 0]]));
  const model = new ServiceModel();
  const nodePorts: { scale: number; clusterIP: number; nodePort: number }[] = [];
  try {
    // 1. Connect rate.
    const table: { scale: number; target: string; patu: number; ipt: number; patuP99: number; iptP99: number }[] = [];
    let direct = 0;
    for (const n of SCALES) {
      model.replaceAll(items(n));
      const last = model.get(`bench/s${n - 1}`)!.service;
      model.upsertService({ ...last, type: 'NodePort', ports: last.ports.map((p) => ({ ...p, nodePort: NODE_PORT })) });
      const st = applyDelta(lb, model);
      const restore = sh('ip', ['netns', 'exec', NSI, 'iptables-restore'], kubeProxyRules(n));
      console.log(`${fmt(n)} services: patu programmed in ${fmt(st.ms, 1)} ms; iptables-restore of ${fmt(n * (1 + 3 * ENDPOINTS) + 8)} rules in ${fmt(restore.ms)} ms`);
      const targets = [['middle', Math.floor(n / 2)], ['last', n - 1]] as const;
      const samples = new Map<string, Rate[]>();
      const add = (k: string, r: Rate): void => {
        const l = samples.get(k) ?? [];
        l.push(r);
        samples.set(k, l);
      };
      for (let round = 0; round < ROUNDS; round++) {
        for (const [label, idx] of targets) {
          // Alternate who goes first so drift in machine load does not favour one side.
          // The last service's NodePort goes between its two ClusterIP measurements.
          const order = label === 'last'
            ? (round % 2 === 0 ? ['patu', 'np', 'ipt'] : ['ipt', 'np', 'patu'])
            : (round % 2 === 0 ? ['patu', 'ipt'] : ['ipt', 'patu']);
          for (const who of order) {
            if (who === 'np') add('patu/nodeport', await connectRate(NSP, NODE_IP, { port: NODE_PORT, ms: SECONDS * 1000, max: 200000, cgroup: CG }));
            else if (who === 'patu') add(`patu/${label}`, await connectRate(NSP, vipOf(idx), { port: 80, ms: SECONDS * 1000, max: 200000, cgroup: CG }));
            else add(`ipt/${label}`, await connectRate(NSI, vipOf(idx), { port: 80, ms: SECONDS * 1000, max: 200000 }));
          }
        }
        if (n === SCALES[0]) add('direct', await connectRate(NSP, BACKENDS[0]!, { port: PORT, ms: SECONDS * 1000, max: 200000, cgroup: CG }));
      }
      nodePorts.push({ scale: n, clusterIP: median(samples.get('patu/last')!.map(perSec)), nodePort: median(samples.get('patu/nodeport')!.map(perSec)) });
      if (samples.has('direct')) direct = median(samples.get('direct')!.map(perSec));
      for (const [label] of targets) {
        const p = samples.get(`patu/${label}`)!;
        const q = samples.get(`ipt/${label}`)!;
        table.push({
          scale: n, target: label,
          patu: median(p.map(perSec)), ipt: median(q.map(perSec)),
          patuP99: median(p.map((r) => r.p99_ns)) / 1000, iptP99: median(q.map((r) => r.p99_ns)) / 1000,
        });
      }
    }
    console.log(`\nconnect()+close() per second (median of ${ROUNDS}); direct to a backend, no service: ${fmt(direct)}/s`);
    console.log('services  target  patu/s    iptables/s  patu:ipt  patu p99 us  ipt p99 us');
    for (const r of table) {
      console.log(`${fmt(r.scale).padStart(8)}  ${r.target.padEnd(6)}  ${fmt(r.patu).padStart(8)}  ${fmt(r.ipt).padStart(10)}  ${fmt(r.patu / r.ipt, 2).padStart(7)}x  ${fmt(r.patuP99, 1).padStart(11)}  ${fmt(r.iptP99, 1).padStart(10)}`);
    }
    for (const r of nodePorts) {
      console.log(`${fmt(r.scale)} services, last service: NodePort via a node address ${fmt(r.nodePort)}/s, ClusterIP ${fmt(r.clusterIP)}/s (${fmt(r.nodePort / r.clusterIP, 2)}x)`);
    }
    const at = (scale: number, target: string): (typeof table)[number] | undefined => table.find((r) => r.scale === scale && r.target === target);
    const lo = at(Math.min(...SCALES), 'last');
    const hi = at(maxScale, 'last');
    const hiMid = at(maxScale, 'middle');
    if (lo && hi && hiMid) {
      console.log(`\npatu at ${fmt(maxScale)} vs ${fmt(Math.min(...SCALES))} services (last): ${fmt((hi.patu / lo.patu - 1) * 100, 1)}% rate change (target within 10%)`);
      console.log(`patu vs iptables at ${fmt(maxScale)} services: ${fmt(hi.patu / hi.ipt, 2)}x (last service), ${fmt(hiMid.patu / hiMid.ipt, 2)}x (middle) (target >= 5x)`);
      console.log(`patu vs direct connect: ${fmt((hi.patu / direct) * 100, 1)}% of the ceiling at ${fmt(maxScale)} services`);
    }

    // 3a. Single change through the model (what the Kubernetes source will do).
    const refs = model.refs();
    const lat: number[] = [];
    for (let i = 0; i < 1000; i++) {
      const ref = refs[(i * 7919) % refs.length]!;
      const cur = model.get(ref)!;
      const flip = i % ENDPOINTS;
      const eps = cur.endpoints.map((e, j) => (j === flip ? { ...e, ready: !e.ready } : e));
      const t0 = performance.now();
      model.setEndpoints(ref, eps);
      applyDelta(lb, model);
      lat.push(performance.now() - t0);
    }
    console.log(`\nsingle service change, model -> maps, ${fmt(model.size)} services (1000 changes): p50 ${fmt(pct(lat, 50), 3)} ms, p99 ${fmt(pct(lat, 99), 3)} ms (target p99 < 10 ms)`);

    // 3b. Single change through the services file and its watcher.
    for (const n of [100, maxScale]) {
      const file = join(tmp, `services-${n}.json`);
      const base = items(n);
      const docOf = (changed: number, ready: boolean): string => JSON.stringify({
        services: base.map((it, i) => ({
          name: it.service.name, namespace: it.service.namespace, clusterIP: it.service.clusterIP, ports: it.service.ports,
          endpoints: it.endpoints.map((e, j) => ({ ip: e.ip, ready: i === changed && j === 0 ? ready : true })),
        })),
      });
      writeFileSync(file, docOf(-1, true));
      let resolveApplied: ((t: number) => void) | undefined;
      const fileModel = new ServiceModel();
      const w = new ServicesFileWatcher(file, {
        onChange: (list) => {
          fileModel.replaceAll(list);
          applyDelta(lb, fileModel);
          resolveApplied?.(performance.now());
        },
        onError: (e) => console.error(`watcher: ${e.message}`),
      });
      const fl: number[] = [];
      const iters = n > 1000 ? 30 : 100;
      try {
        await w.start();
        for (let i = 0; i < iters; i++) {
          const text = docOf(i % n, i % 2 === 1);
          const applied = new Promise<number>((r) => (resolveApplied = r));
          const t0 = performance.now();
          writeFileSync(file, text);
          const t1 = await Promise.race([applied, new Promise<number>((_, rej) => setTimeout(() => rej(new Error('watcher did not apply within 5 s')), 5000))]);
          fl.push(t1 - t0);
          await w.settled();
          await new Promise((r) => setTimeout(r, 5));
        }
      } finally {
        w.close();
      }
      console.log(`single service change, file write -> watcher -> maps, ${fmt(n)} services in one ${(docOf(-1, true).length / 1e6).toFixed(2)} MB file (${iters} changes): p50 ${fmt(pct(fl, 50), 1)} ms, p99 ${fmt(pct(fl, 99), 1)} ms`);
      // Leave the maps as the model had them (the file model replaced the same services).
      lb.resync(model.desired());
    }
    // 3c. The same through a directory of files (100 services per file): only the edited file is read.
    {
      const n = maxScale;
      const perFile = 100;
      const d = join(tmp, 'services.d');
      mkdirSync(d);
      const base = items(n);
      const fileText = (f: number, changed: number, ready: boolean): string => JSON.stringify({
        services: base.slice(f * perFile, (f + 1) * perFile).map((it, k) => ({
          name: it.service.name, namespace: it.service.namespace, clusterIP: it.service.clusterIP, ports: it.service.ports,
          endpoints: it.endpoints.map((e, j) => ({ ip: e.ip, ready: k === changed && j === 0 ? ready : true })),
        })),
      });
      const files = Math.ceil(n / perFile);
      for (let f = 0; f < files; f++) writeFileSync(join(d, `svc-${f}.json`), fileText(f, -1, true));
      let resolveApplied: ((t: number) => void) | undefined;
      const dirModel = new ServiceModel();
      const w = new ServicesDirWatcher(d, {
        onChange: (all, delta) => {
          applyToModel(dirModel, all, delta);
          applyDelta(lb, dirModel);
          resolveApplied?.(performance.now());
        },
        onError: (e) => console.error(`dir watcher: ${e.message}`),
      });
      const dl: number[] = [];
      try {
        await w.start();
        for (let i = 0; i < 200; i++) {
          const f = (i * 37) % files;
          // A different service of this file than on its previous edit, so every write is a change.
          const text = fileText(f, Math.floor(i / files) % perFile, false);
          const applied = new Promise<number>((r) => (resolveApplied = r));
          const t0 = performance.now();
          writeFileSync(join(d, `svc-${f}.json`), text);
          const t1 = await Promise.race([applied, new Promise<number>((_, rej) => setTimeout(() => rej(new Error('dir watcher did not apply within 5 s')), 5000))]);
          dl.push(t1 - t0);
          await w.settled();
          await new Promise((r) => setTimeout(r, 2));
        }
      } finally {
        w.close();
      }
      console.log(`single service change, file write -> directory watcher -> maps, ${fmt(n)} services in ${files} files (200 changes): p50 ${fmt(pct(dl, 50), 2)} ms, p99 ${fmt(pct(dl, 99), 2)} ms (target p99 < 10 ms)`);
      lb.resync(model.desired());
    }
    console.log(`\nbench wall time ${fmt((performance.now() - started) / 1000, 1)} s`);
  } finally {
    lb.detach();
    lb.close();
  }
}

scratch.cleanupOnSignals();
main().then(() => scratch.cleanup(), async (e) => {
  console.error(e);
  await scratch.cleanup();
  process.exitCode = 1;
});
