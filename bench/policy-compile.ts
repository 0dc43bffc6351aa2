// The policy compiler's cost (src/policy/compile.ts), no kernel needed:
//   first     a fresh PolicyCompiler on the whole state (agent start)
//   again     the same state once more (an event that changed nothing the maps see)
//   +policy   one policy added (a NetworkPolicy create)
//   +pod      one pod added (a Pod create with its labels and address)
// at P policies x N pods (default 1,000 x 1,000: 10 namespaces, 100 app labels, each
// policy selecting one app and allowing another app, a team of namespaces on a named port
// and a port range, and an egress ipBlock with an except). Median and spread of --runs.
//
//   node dist/bench/policy-compile.js [--policies 1000] [--pods 1000] [--runs 5] [--json out.json]
import { writeFileSync } from 'node:fs';
import { PolicyCompiler } from '../src/policy/compile.js';
import type { NetworkPolicy, PolicyPod, PolicyState } from '../src/policy/types.js';

const args = process.argv.slice(2);
const opt = (name: string, dflt: string): string => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] ? args[i + 1]! : dflt;
};
const P = Number(opt('policies', '1000'));
const N = Number(opt('pods', '1000'));
const RUNS = Number(opt('runs', '5'));
const JSON_OUT = opt('json', '');

const pod = (i: number): PolicyPod => ({
  namespace: `ns${i % 10}`, name: `p${i}`, labels: { app: `app${i % 100}`, tier: ['fe', 'be', 'db'][i % 3]! },
  ips: [`10.${200 + ((i + 2) >> 16)}.${((i + 2) >> 8) & 255}.${(i + 2) & 255}`], ports: [{ name: 'http', containerPort: 8080, protocol: 'TCP' }], local: true,
});
const policy = (k: number): NetworkPolicy => ({
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
const state = (p: number, n: number): PolicyState => ({
  namespaces: Array.from({ length: 10 }, (_, i) => ({ name: `ns${i}`, labels: { team: `t${i % 7}` } })),
  pods: Array.from({ length: n }, (_, i) => pod(i)),
  policies: Array.from({ length: p }, (_, k) => policy(k)),
  nodeAddresses: ['10.200.0.1'],
});

const timed = (fn: () => void): number => {
  const t = performance.now();
  fn();
  return performance.now() - t;
};
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

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
  const s3 = { ...s2, pods: [...s2.pods, pod(N + r)] };
  results['+pod']!.push(timed(() => c.compile(s3)));
}
process.stdout.write(`policy compile, ${P} policies x ${N} pods, ${RUNS} runs (ms: median, min-max)\n`);
for (const [k, v] of Object.entries(results)) {
  process.stdout.write(`  ${k.padEnd(8)} ${median(v).toFixed(1).padStart(8)}   ${Math.min(...v).toFixed(1)}-${Math.max(...v).toFixed(1)}\n`);
}
process.stdout.write(`  output: ${JSON.stringify(stats)}\n`);
if (JSON_OUT) writeFileSync(JSON_OUT, JSON.stringify({ policies: P, pods: N, runs: RUNS, ms: results, stats }, null, 2));
