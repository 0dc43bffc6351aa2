// CNI ADD/DEL latency, patu vs the reference bridge + host-local plugins, in the same
// run and interleaved (pod i: one flavour then the other, alternating who goes
// first), so machine noise hits both alike. Needs root.
//
//   node dist/bench/cni-add-del.js            200 pods per flavour
//   BENCH_PODS=50 PATU_BIN=/path/to/patu node dist/bench/cni-add-del.js
//   BENCH_AGENT=0 ...                         without the patu-agent column
//
// patu runs two ways: "patu" (bin/patu runs the plugin in Node per call, no agent)
// and "patu-agent" (bin/patu forwards to a `patu agent` on a private socket).
//
// Timed: the plugin exec as a runtime does it (spawn, stdin, wait for exit), so
// process start-up is included: it is part of what a pod pays. The netns is made
// outside the timed section; the "+netns" rows add `ip netns add` before ADD and
// `ip netns del` after DEL, which is what a pod start/stop costs end to end.
//
// Floors measured in the same run: a bare `node -e 0` exec (spawned the same way, once per
// pod, interleaved) is what any Node plugin pays per call; the "patu" row minus it is what
// patu's own code costs. The agent's RSS after serving every request is printed against an
// idle bare `node` (with and without the agent's --max-semi-space-size=1).
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import {
  addNetns,
  delNetns,
  describe as show,
  execPlugin,
  isRoot,
  patuAgentFlavour,
  patuFlavour,
  referenceFlavour,
  type Flavour,
} from '../test/helpers/cni.js';

const PODS = Number(process.env.BENCH_PODS ?? 200);

/** One exec of `node -e 0`, spawned and waited for like a plugin: the floor of a Node plugin. */
function nodeStart(): Promise<number> {
  const t0 = performance.now();
  const child = spawn(process.execPath, ['-e', '0'], { env: { PATH: process.env.PATH ?? '/usr/bin:/bin' }, stdio: ['pipe', 'pipe', 'pipe'] });
  child.stdin.on('error', () => {});
  child.stdin.end('{}');
  child.stdout.resume();
  child.stderr.resume();
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', () => resolve(performance.now() - t0));
  });
}

const rssMB = (pid: number): number => Number(/^VmRSS:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? NaN) / 1024;

/** An idle bare node's RSS: the floor under the agent's. */
async function nodeFloorMB(args: string[]): Promise<number> {
  const p = spawn(process.execPath, [...args, '-e', 'setTimeout(() => {}, 1e6)'], { stdio: 'ignore' });
  await new Promise((r) => setTimeout(r, 1500));
  const m = rssMB(p.pid!);
  p.kill('SIGKILL');
  return m;
}

interface Samples {
  add: number[];
  del: number[];
  netnsAdd: number[];
  netnsDel: number[];
}

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]!;
}
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
const fmt = (x: number) => (Number.isFinite(x) ? x.toFixed(1).padStart(8) : '     n/a');

async function main(): Promise<void> {
  if (!isRoot()) {
    console.error('cni-add-del bench: needs root (creates network namespaces, bridges, veths)');
    process.exit(2);
  }
  if (PODS > 250) throw new Error(`BENCH_PODS=${PODS}: a /24 holds at most 253 pods`);
  const flavours: Flavour[] = [];
  let agentIdleMB = NaN;
  const ref = referenceFlavour();
  flavours.push(ref);
  const patu = patuFlavour();
  const patuAgent = patuAgentFlavour();
  const patuSkip = patu.skipReason();
  if (patuSkip) {
    console.error(`patu skipped: ${patuSkip}`);
    patu.destroy();
    patuAgent.destroy();
  } else {
    flavours.push(patu);
    if (process.env.BENCH_AGENT !== '0') {
      const agent = await patuAgent.start();
      await new Promise((r) => setTimeout(r, 1500));
      agentIdleMB = rssMB(agent.pid);
      flavours.push(patuAgent);
    } else patuAgent.destroy();
  }
  const refSkip = ref.skipReason();
  if (refSkip) throw new Error(refSkip);

  const samples = new Map<Flavour, Samples>(flavours.map((f) => [f, { add: [], del: [], netnsAdd: [], netnsDel: [] }]));
  const live: { f: Flavour; ns: string; id: string }[] = [];
  const nodeStarts: number[] = [];
  let agentServedMB = NaN;
  const tag = `bn${process.pid.toString(36)}`;
  try {
    // One untimed ADD/DEL per flavour: creates the bridge and warms the page cache.
    for (const f of flavours) {
      const ns = `${tag}${flavours.indexOf(f)}w`;
      const path = addNetns(ns);
      try {
        const a = await execPlugin(f.bin, 'ADD', f.netconf(), { containerId: `${ns}-ctr`, netns: path, env: f.env });
        if (a.code !== 0) throw new Error(`${f.id} warm-up ADD failed: ${show(a)}`);
        const d = await execPlugin(f.bin, 'DEL', f.netconf(), { containerId: `${ns}-ctr`, netns: path, env: f.env });
        if (d.code !== 0) throw new Error(`${f.id} warm-up DEL failed: ${show(d)}`);
      } finally {
        delNetns(ns);
      }
    }

    await nodeStart();
    const order = (i: number) => (i % 2 === 0 ? flavours : [...flavours].reverse());
    for (let i = 0; i < PODS; i++) {
      if (i % 2 === 0) nodeStarts.push(await nodeStart());
      for (const f of order(i)) {
        const s = samples.get(f)!;
        const ns = `${tag}${flavours.indexOf(f)}n${i}`;
        const t0 = performance.now();
        const path = addNetns(ns);
        s.netnsAdd.push(performance.now() - t0);
        const id = `${ns}-ctr`;
        live.push({ f, ns, id });
        // What kubelet passes: patu records the pod (issue 12), the reference plugins ignore it.
        const args = `IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=${ns};K8S_POD_UID=00000000-0000-4000-8000-${String(i).padStart(12, '0')}`;
        const r = await execPlugin(f.bin, 'ADD', f.netconf(), { containerId: id, netns: path, env: f.env, args });
        if (r.code !== 0) throw new Error(`${f.id} ADD of pod ${i} failed: ${show(r)}`);
        s.add.push(r.ms);
      }
    }
    for (let i = 0; i < PODS; i++) {
      for (const f of order(i)) {
        const s = samples.get(f)!;
        const ns = `${tag}${flavours.indexOf(f)}n${i}`;
        const r = await execPlugin(f.bin, 'DEL', f.netconf(), { containerId: `${ns}-ctr`, netns: `/var/run/netns/${ns}`, env: f.env });
        if (r.code !== 0) throw new Error(`${f.id} DEL of pod ${i} failed: ${show(r)}`);
        s.del.push(r.ms);
        const t0 = performance.now();
        delNetns(ns);
        s.netnsDel.push(performance.now() - t0);
        live.splice(live.findIndex((l) => l.ns === ns), 1);
      }
      if (i % 2 === 1) nodeStarts.push(await nodeStart());
    }
    if (patuAgent.agent) agentServedMB = rssMB(patuAgent.agent.pid);
  } finally {
    for (const l of live) {
      await execPlugin(l.f.bin, 'DEL', l.f.netconf(), { containerId: l.id, netns: `/var/run/netns/${l.ns}`, env: l.f.env }).catch(() => undefined);
      delNetns(l.ns);
    }
    if (patuAgent.agent) {
      const served = patuAgent.agent.served();
      await patuAgent.agent.stop();
      // Every patu-agent exec must have gone through the agent, or its rows measure Node.
      const expected = 2 * (samples.get(patuAgent)?.add.length ?? 0);
      if (served < expected) console.error(`warning: the agent served ${served} requests, expected >= ${expected}: some fell back to Node`);
    }
    for (const f of flavours) f.destroy();
  }

  const rows: { name: string; f: Flavour; xs: number[] }[] = [];
  for (const f of flavours) {
    const s = samples.get(f)!;
    rows.push({ name: 'ADD', f, xs: s.add });
    rows.push({ name: 'DEL', f, xs: s.del });
    rows.push({ name: 'ADD+netns', f, xs: s.add.map((x, i) => x + s.netnsAdd[i]!) });
    rows.push({ name: 'DEL+netns', f, xs: s.del.map((x, i) => x + s.netnsDel[i]!) });
  }
  console.log(`CNI ADD/DEL latency, ${PODS} pods per flavour, interleaved, ms (exec incl. process start)`);
  console.log(`  reference:  ${ref.bin} (+ host-local)`);
  for (const f of flavours.filter((x) => x.id !== 'reference')) console.log(`  ${`${f.id}:`.padEnd(11)} ${f.bin}${f.env.PATU_AGENT_SOCKET ? ' -> patu agent' : ' (Node per call)'}`);
  console.log(`${'op'.padEnd(10)} ${'flavour'.padEnd(11)} ${'p50'.padStart(8)} ${'p99'.padStart(8)} ${'mean'.padStart(8)} ${'max'.padStart(8)}`);
  for (const r of rows.sort((a, b) => a.name.localeCompare(b.name))) {
    console.log(`${r.name.padEnd(10)} ${r.f.id.padEnd(11)} ${fmt(pct(r.xs, 50))} ${fmt(pct(r.xs, 99))} ${fmt(mean(r.xs))} ${fmt(Math.max(...r.xs))}`);
  }
  console.log(`${'exec'.padEnd(10)} ${'node -e 0'.padEnd(11)} ${fmt(pct(nodeStarts, 50))} ${fmt(pct(nodeStarts, 99))} ${fmt(mean(nodeStarts))} ${fmt(Math.max(...nodeStarts))}`);
  const plain = rows.find((r) => r.name === 'ADD' && r.f.id === 'patu');
  if (plain) {
    console.log(`\npatu ADD (Node per call) over a bare \`node -e 0\` exec: p50 +${(pct(plain.xs, 50) - pct(nodeStarts, 50)).toFixed(1)} ms (target <= +15 ms)`);
  }
  if (Number.isFinite(agentServedMB)) {
    const [floor, floorSemi] = [await nodeFloorMB([]), await nodeFloorMB(['--max-semi-space-size=1'])];
    console.log(`agent RSS (CNI only) after ${2 * PODS + 2} requests: ${agentServedMB.toFixed(1)} MB (idle after start: ${agentIdleMB.toFixed(1)} MB); `
      + `bare node: ${floor.toFixed(1)} MB (--max-semi-space-size=1: ${floorSemi.toFixed(1)} MB) -> node +${(agentServedMB - floor).toFixed(1)} MB (target <= +10 MB)`);
  }
  for (const f of flavours.filter((x) => x.id !== 'reference')) {
    console.log(`\nratio ${f.id}/reference (below 1: ${f.id} is faster)`);
    for (const op of ['ADD', 'DEL', 'ADD+netns', 'DEL+netns']) {
      const p = rows.find((r) => r.name === op && r.f === f)!.xs;
      const q = rows.find((r) => r.name === op && r.f.id === 'reference')!.xs;
      console.log(`${op.padEnd(10)} p50 ${(pct(p, 50) / pct(q, 50)).toFixed(2)}  p99 ${(pct(p, 99) / pct(q, 99)).toFixed(2)}`);
    }
  }
}

main().catch((err) => {
  console.error(`cni-add-del bench failed: ${(err as Error).stack ?? err}`);
  process.exit(1);
});
