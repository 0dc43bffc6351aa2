// The policy compiler's cost (src/policy/compile.ts), and one change's cost through the engine:
//   first     a fresh PolicyCompiler on the whole state (agent start)
//   again     the same state once more (an event that changed nothing the maps see)
//   +policy   one policy added (a NetworkPolicy create)
//   +pod      one pod added (a Pod create with its labels and address)
//   change    --changes random single changes (a policy deleted, one added, one edited: its port
//             moved), one after the other on one compiler: p50/p99 of each compile
//   engine    (root, --engine) the same changes through a PolicyEngine on real maps (a scratch pin
//             root, --ct conntrack entries between the pods), by phase: compile, map sync, names
//             file, conntrack + socket judging; p50/p99 of each
// Shapes (--shape):
//   synthetic P policies x N pods (default 1,000 x 1,000: 10 namespaces, 100 app labels, each policy
//             selecting one app and allowing another app, a team of namespaces on a named port and a
//             port range, and an egress ipBlock with an except)
//   bench     bench/policy.ts's latency section: P policies (bench/lib/policy-objects.ts) on its two pods;
//             with --toggle the changes are that section's (its allowing policy deleted, written back)
// Median and spread of --runs for the first four.
//
//   node dist/bench/policy-compile.js [--shape synthetic|bench] [--policies 1000] [--pods 1000] [--runs 5]
//        [--changes 50] [--toggle] [--engine] [--ct 10000] [--json out.json]
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { PolicyCompiler } from '../src/policy/compile.js';
import type { PolicyEngine as PolicyEngineT } from '../src/policy/engine.js';
import { convertNetworkPolicy } from '../src/k8s/policy-convert.js';
import type { NetworkPolicy, PolicyPod, PolicyState } from '../src/policy/types.js';
import { BENCH_NS, benchNamespace, benchPods, benchPolicies } from './lib/policy-objects.js';

const args = process.argv.slice(2);
const opt = (name: string, dflt: string): string => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] ? args[i + 1]! : dflt;
};
const SHAPE = opt('shape', 'synthetic');
const P = Number(opt('policies', '1000'));
const N = Number(opt('pods', '1000'));
const RUNS = Number(opt('runs', '5'));
const CHANGES = Number(opt('changes', '50'));
const ENGINE = args.includes('--engine');
const CT = Number(opt('ct', '10000'));
const JSON_OUT = opt('json', '');
/** --toggle (bench shape): the changes are the latency bench's, its allowing policy deleted and written back in turn. */
const TOGGLE = args.includes('--toggle');

const pod = (i: number): PolicyPod => ({
  namespace: `ns${i % 10}`, name: `p${i}`, labels: { app: `app${i % 100}`, tier: ['fe', 'be', 'db'][i % 3]! },
  ips: [`10.${200 + ((i + 2) >> 16)}.${((i + 2) >> 8) & 255}.${(i + 2) & 255}`], ports: [{ name: 'http', containerPort: 8080, protocol: 'TCP' }], local: true,
});
const synthetic = (k: number): NetworkPolicy => ({
  metadata: { namespace: `ns${k % 10}`, name: `pol${k}` },
  spec: {
    podSelector: { matchLabels: { app: `app${k % 100}` } },
    ingress: [{
      from: [{ podSelector: { matchLabels: { app: `app${(k + 1) % 100}` } } }, { namespaceSelector: { matchLabels: { team: `t${k % 7}` } } }],
      ports: [{ port: 'http' }, { port: 9000 + (k % 50), endPort: 9010 + (k % 50) }],
    }],
    egress: [{ to: [{ ipBlock: { cidr: `10.${k % 250}.0.0/16`, except: [`10.${k % 250}.1.0/24`] } }] }],
  },
});
// The bench shape: its fillers as policy k (k >= P: more of the same), named so they sort before the allowing two.
const benchAll = SHAPE === 'bench' ? benchPolicies(Math.max(P, 2) + RUNS + CHANGES + 2).map(convertNetworkPolicy) : [];
const benchFillers = benchAll.filter((p) => p.metadata.name.startsWith('filler-'));
const benchAllow = benchAll.filter((p) => !p.metadata.name.startsWith('filler-'));
const policy = (k: number): NetworkPolicy => (SHAPE === 'bench' ? benchFillers[k]! : synthetic(k));

function state(p: number, n: number): PolicyState {
  if (SHAPE === 'bench') {
    const pods = benchPods('10.208.1.11', '10.208.1.12').map((b): PolicyPod => ({ namespace: BENCH_NS, name: b.name, labels: b.labels, ips: [b.ip], ports: b.ports, local: true }));
    const ns = benchNamespace().metadata;
    return { namespaces: [{ name: ns.name, labels: ns.labels }], pods, policies: [...benchFillers.slice(0, Math.max(0, p - 2)), ...benchAllow], nodeAddresses: ['10.208.1.1'] };
  }
  return {
    namespaces: Array.from({ length: 10 }, (_, i) => ({ name: `ns${i}`, labels: { team: `t${i % 7}` } })),
    pods: Array.from({ length: n }, (_, i) => pod(i)),
    policies: Array.from({ length: p }, (_, k) => policy(k)),
    nodeAddresses: ['10.200.0.1'],
  };
}

const timed = (fn: () => void): number => {
  const t = performance.now();
  fn();
  return performance.now() - t;
};
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const q = (xs: number[], f: number): number => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.max(0, Math.ceil(f * xs.length) - 1))]!;
const load = (): string => loadavg()[0]!.toFixed(1);

/** Deterministic random numbers (the same changes every run). */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** --changes single changes to a state: each the state after it and what it was. */
function changes(s0: PolicyState, count: number): { state: PolicyState; what: string }[] {
  const rand = rng(42);
  let next = P + RUNS + 1;
  let s = s0;
  const out: { state: PolicyState; what: string }[] = [];
  // Only fillers change (the bench shape's two allowing policies stay).
  const changeable = (): number[] => s.policies.map((p, i) => [p, i] as const).filter(([p]) => SHAPE !== 'bench' || p.metadata.name.startsWith('filler-')).map(([, i]) => i);
  for (let i = 0; i < count; i++) {
    if (TOGGLE) {
      // The latency bench's change: the policy that allows the probe deleted, then written back.
      const allow = s0.policies.find((p) => p.metadata.name === 'zz-allow-server-ingress')!;
      s = { ...s, policies: i % 2 === 0 ? s.policies.filter((p) => p !== allow) : [...s.policies, allow] };
      out.push({ state: s, what: i % 2 === 0 ? 'delete' : 'add' });
      continue;
    }
    const kind = i % 3;
    const idx = changeable();
    const pick = idx[Math.floor(rand() * idx.length)];
    let policies = s.policies;
    if (kind === 0 && pick !== undefined) policies = policies.filter((_, j) => j !== pick);
    else if (kind === 1 || pick === undefined) policies = [...policies.slice(0, idx.length ? idx[idx.length - 1]! + 1 : 0), policy(next++), ...policies.slice(idx.length ? idx[idx.length - 1]! + 1 : 0)];
    else {
      const old = policies[pick]!;
      const edited: NetworkPolicy = JSON.parse(JSON.stringify(old));
      for (const r of [...(edited.spec.ingress ?? []), ...(edited.spec.egress ?? [])]) {
        for (const port of r.ports ?? []) if (typeof port.port === 'number') port.port += 1;
      }
      policies = policies.map((p, j) => (j === pick ? edited : p));
    }
    s = { ...s, policies };
    out.push({ state: s, what: ['delete', 'add', 'edit'][kind]! });
  }
  return out;
}

const lines: string[] = [];
const say = (l: string): void => {
  lines.push(l);
  process.stdout.write(`${l}\n`);
};
const loadStart = load();
const results: Record<string, number[]> = { first: [], again: [], '+policy': [], '+pod': [] };
let stats: object = {};
for (let r = 0; r < RUNS; r++) {
  const s = state(P, N);
  const c = new PolicyCompiler();
  results.first!.push(timed(() => {
    stats = c.compile(s).stats;
  }));
  results.again!.push(timed(() => c.compile(s)));
  const s2 = { ...s, policies: [...s.policies, policy(P + r)] };
  results['+policy']!.push(timed(() => c.compile(s2)));
  const s3 = { ...s2, pods: [...s2.pods, SHAPE === 'bench' ? { ...s2.pods[0]!, name: `extra${r}`, ips: [`10.208.1.${100 + r}`] } : pod(N + r)] };
  results['+pod']!.push(timed(() => c.compile(s3)));
}
const s0 = state(P, N);
say(`policy compile, shape ${SHAPE}, ${s0.policies.length} policies x ${s0.pods.length} pods, ${RUNS} runs (ms: median, min-max), load ${loadStart}`);
for (const [k, v] of Object.entries(results)) say(`  ${k.padEnd(8)} ${median(v).toFixed(1).padStart(8)}   ${Math.min(...v).toFixed(1)}-${Math.max(...v).toFixed(1)}`);
say(`  output: ${JSON.stringify(stats)}`);

const seq = changes(s0, CHANGES);
const compileMs: number[] = [];
{
  const c = new PolicyCompiler();
  c.compile(s0);
  for (const ch of seq) compileMs.push(timed(() => c.compile(ch.state)));
}
const fmt = (xs: number[]): string => `p50 ${q(xs, 0.5).toFixed(1).padStart(7)}  p99 ${q(xs, 0.99).toFixed(1).padStart(7)}  max ${Math.max(...xs).toFixed(1).padStart(7)}`;
say(`${CHANGES} single changes (${TOGGLE ? 'the allowing policy deleted, written back' : 'delete, add, edit a policy'} in turn), compile only, ms: ${fmt(compileMs)}  (load ${load()})`);

const engine: Record<string, number[]> = {};
if (ENGINE) {
  const { PolicyDataplane } = await import('../src/dataplane/policy-tc.js');
  const { PolicyEngine } = await import('../src/policy/engine.js');
  const { TypedMap } = await import('../src/kernel/bpf/map.js');
  const { ctKeyC, ctValC, policyPins, POL } = await import('../src/dataplane/policy-maps.js');
  const { Scratch } = await import('../test/helpers/kernel.js');
  const scratch = new Scratch('patu-bench-polc');
  scratch.cleanupOnSignals();
  const tmp = mkdtempSync(join(tmpdir(), 'patu-bench-polc-'));
  try {
    const pin = scratch.pinRoot();
    const dp = PolicyDataplane.open({ pinRoot: pin });
    try {
      const quiet = { info() {}, warn() {}, error() {} };
      const e: PolicyEngineT = new PolicyEngine(dp, quiet, { namesFile: join(tmp, 'names.json') });
      const first = e.setState(s0);
      // Conntrack: CT flows between random pods (both ends' entries, as the programs write them).
      const ips = s0.pods.flatMap((p) => p.ips);
      const ct = TypedMap.fromPin(policyPins(pin).ct, ctKeyC, ctValC);
      const rand = rng(7);
      const entries: [ReturnType<typeof ctKeyC.decode>, ReturnType<typeof ctValC.decode>][] = [];
      for (let i = 0; i < CT; i++) {
        const src = ips[Math.floor(rand() * ips.length)]!;
        const dst = ips[Math.floor(rand() * ips.length)]!;
        const sport = 30000 + (i % 30000);
        for (const dir of [POL.EGRESS, POL.INGRESS]) {
          entries.push([{ src, dst, sport, dport: 8080, proto: 6, dir, pad: 0 }, { expiresNs: 1n << 62n, policy: 1, epId: 1, flags: POL.CT_ESTABLISHED, pad: 0 }]);
        }
      }
      ct.batchUpdate(entries);
      ct.close();
      say(`engine on real maps: initial apply ${first.ms.toFixed(1)} ms (${JSON.stringify(first.phases)}), ${entries.length} conntrack entries`);
      for (const k of ['total', 'compile', 'sync', 'names', 'flush']) engine[k] = [];
      // --profile FILE: a CPU profile of the changes alone (started here: under --cpu-prof the verifier, interrupted by the profiler's signals, fails to load the programs).
      const profile = opt('profile', '');
      const { Session } = await import('node:inspector');
      const session = profile ? new Session() : undefined;
      const post = (m: string, p?: object): Promise<any> => new Promise((res, rej) => session!.post(m, p ?? {}, (err, r) => (err ? rej(err) : res(r))));
      if (session) {
        session.connect();
        await post('Profiler.enable');
        await post('Profiler.start');
      }
      for (const ch of seq) {
        const r = e.setState(ch.state);
        engine.total!.push(r.ms);
        if (args.includes('--verbose')) process.stderr.write(`${ch.what} changed ${r.changed} flushed ${r.flushed} ${JSON.stringify(r.phases)}\n`);
        for (const [k, v] of Object.entries(r.phases)) engine[k]!.push(v);
      }
      if (session) {
        writeFileSync(profile, JSON.stringify((await post('Profiler.stop')).profile));
        session.disconnect();
      }
      say(`the same ${CHANGES} changes through PolicyEngine.setState on real maps, ms (load ${load()}):`);
      for (const [k, v] of Object.entries(engine)) say(`  ${k.padEnd(8)} ${fmt(v)}`);
    } finally {
      dp.close();
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
    await scratch.cleanup();
  }
}
if (JSON_OUT) writeFileSync(JSON_OUT, JSON.stringify({ shape: SHAPE, policies: P, pods: N, runs: RUNS, ms: results, stats, changes: compileMs, engine, lines }, null, 2));
