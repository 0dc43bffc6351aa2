// The long fuzz run (needs root):
//   npm run fuzz -- --runs 20000             CNI requests, in-process and through the agent
//   npm run fuzz -- --storm 500              kill -9 storm cycles
//   npm run fuzz -- --services 2000          services files through `patu services apply`
//   --workers N       N scratch nodes (own host netns and agent each) share the CNI runs, seeds seed..seed+N-1
//   --minutes M       stop every part after M minutes and report the counts reached
//   --keep-going      record every failing case and carry on (a survey) instead of stopping at the first
//   FC_SEED=<seed> FC_PATH=<path> npm run fuzz -- --runs N      replays a failure (one worker)
// The parts given run at the same time. Prints the seeds first, and for a failure the
// FC_SEED/FC_PATH to replay it and a shell script that replays the request by hand.
// Exits 1 when anything failed.
import { mkdirSync } from 'node:fs';
import { Scratch } from '../helpers/kernel.js';
import { FuzzNode } from './node.js';
import { fuzzCni, type FuzzRunResult } from './cni-run.js';
import { killStorm } from './storm.js';
import { fuzzServices } from './services-run.js';

const args = process.argv.slice(2);
const opt = (name: string): string | undefined => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : undefined;
};
const num = (name: string, dflt: number): number => Number(opt(name) ?? dflt);
const runs = num('runs', 0);
const storm = num('storm', 0);
const services = num('services', 0);
const workers = Math.max(1, num('workers', 1));
const minutes = num('minutes', 0);
const keepGoing = args.includes('--keep-going');
const seed = process.env.FC_SEED ? Number(process.env.FC_SEED) : Number(opt('seed') ?? Date.now() % 2 ** 31);
const path = process.env.FC_PATH ?? opt('path');
const timeoutMs = num('timeout-ms', 15_000);
const reproDir = opt('repro-dir') ?? '/tmp/patu-fuzz';
const out = (s: string): void => void process.stderr.write(s);

if (process.getuid?.() !== 0) {
  out('patu fuzz: needs root (network namespaces, bpffs, cgroups)\n');
  process.exit(2);
}
if (!runs && !storm && !services) {
  out('usage: npm run fuzz -- [--runs N] [--storm CYCLES] [--services N] [--workers N] [--minutes M] [--keep-going] [--seed S] [--timeout-ms MS]\n');
  process.exit(2);
}
mkdirSync(reproDir, { recursive: true });
const scratch = new Scratch('patu-fuzz');
scratch.cleanupOnSignals();
const t0 = Date.now();
const timeLimitMs = minutes ? minutes * 60_000 : undefined;
let failed = false;

function report(what: string, r: FuzzRunResult): void {
  if (r.failed) {
    failed = true;
    out(`${what} FAILED: FC_SEED=${r.failed.seed} FC_PATH=${r.failed.path}\n  ${r.failed.problems.join('\n  ')}\n  replay by hand: ${r.failed.reproducer}\n`);
  }
  if (r.failures.length) failed = true;
}

async function cniPart(): Promise<void> {
  const per = Math.ceil(runs / workers);
  const results = await Promise.all(
    Array.from({ length: workers }, async (_, w) => {
      const node = await FuzzNode.create(scratch, { tag: `cni${w}`, agent: true, pods: 2 });
      const s = seed + w;
      const r = await fuzzCni(node, { runs: per, seed: s, ...(path && workers === 1 ? { path } : {}), batch: 25, timeoutMs, keepGoing, reproDir, log: out, ...(timeLimitMs ? { timeLimitMs } : {}) });
      report(`CNI worker ${w} (seed ${s})`, r);
      return r;
    }),
  );
  const total = results.reduce((n, r) => n + r.runs, 0);
  const outcomes: Record<string, number> = {};
  for (const r of results) for (const [k, v] of Object.entries(r.outcomes)) outcomes[k] = (outcomes[k] ?? 0) + v;
  const fails = results.reduce((n, r) => n + r.failures.length + (r.failed ? 1 : 0), 0);
  out(`CNI: ${total} cases (each in-process and through the agent; ${workers} worker(s), seeds ${seed}..${seed + workers - 1}) in ${((Date.now() - t0) / 1000).toFixed(0)} s; ${fails} failing\n  answers (in-process): ${JSON.stringify(outcomes)}\n`);
}

async function servicesPart(): Promise<void> {
  const r = await fuzzServices(scratch, { runs: services, seed, ...(path ? { path } : {}), timeoutMs: Math.max(timeoutMs, 60_000), keepGoing, reproDir, log: out, ...(timeLimitMs ? { timeLimitMs } : {}) });
  out(`services: ${r.runs} files in ${(r.ms / 1000).toFixed(0)} s; ${r.failures.length + (r.failed ? 1 : 0)} failing\n  exits: ${JSON.stringify(r.outcomes)}\n`);
  report('services', r);
}

async function stormPart(): Promise<void> {
  const r = await killStorm(scratch, { cycles: storm, seed, log: out, ...(timeLimitMs ? { deadline: t0 + timeLimitMs } : {}) });
  out(`kill storm: ${r.cycles} cycles (seed ${seed}), ${r.pluginKills} plugin kills, ${r.agentKills} agent kills, ${r.adds} ADDs, ${r.dels} DELs, ${r.gcRemoved} leftovers removed by GC, in ${(r.ms / 1000).toFixed(0)} s\n`);
  if (r.problems.length) {
    failed = true;
    out(`kill storm FAILED (seed ${seed}):\n  ${r.problems.join('\n  ')}\n`);
  }
}

try {
  out(`patu fuzz: seed ${seed}${path ? ` path ${path}` : ''}; replay with FC_SEED=${seed}\n`);
  const parts: Promise<void>[] = [];
  if (runs) parts.push(cniPart());
  if (services) parts.push(servicesPart());
  if (storm) parts.push(stormPart());
  const settled = await Promise.allSettled(parts);
  for (const s of settled) {
    if (s.status === 'rejected') {
      failed = true;
      out(`patu fuzz: ${(s.reason as Error)?.stack ?? s.reason}\n`);
    }
  }
} finally {
  await scratch.cleanup();
}
process.exitCode = failed ? 1 : 0;
