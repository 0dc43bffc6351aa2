// The long fuzz run (needs root):
//   npm run fuzz -- --runs 20000             CNI requests, in-process and through the agent
//   npm run fuzz -- --storm 500              kill -9 storm cycles
//   npm run fuzz -- --services 2000          services files through `patu services apply`
//   --workers N       N processes share the CNI runs, each with its own scratch node (host netns, agent) and seed seed+i
//   --minutes M       stop every part after M minutes and report the counts reached
//   --keep-going      record every failing case and carry on (a survey) instead of stopping at the first
//   FC_SEED=<seed> FC_PATH=<path> npm run fuzz -- --runs N      replays a failure (one worker)
// The parts given run at the same time. Prints the seeds first, and for a failure the
// FC_SEED/FC_PATH to replay it and a shell script that replays the request by hand.
// Exits 1 when anything failed.
import { spawn, type ChildProcess } from 'node:child_process';
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
// A --workers child cleans up after its parent may have gone (a signal reaches both): writing to
// the parent's closed pipe then fails with EPIPE, which must not cut the cleanup short.
process.stderr.on('error', () => {});
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
  if (workers > 1) return cniWorkers();
  const node = await FuzzNode.create(scratch, { tag: 'cni', agent: true, pods: 2 });
  const r = await fuzzCni(node, { runs, seed, ...(path ? { path } : {}), batch: 25, timeoutMs, keepGoing, reproDir, log: out, ...(timeLimitMs ? { timeLimitMs } : {}) });
  const fails = r.failures.length + (r.failed ? 1 : 0);
  // The last line is read by a parent run with --workers: keep its shape.
  out(`CNI: ${r.runs} cases (each in-process and through the agent; seed ${seed}) in ${((Date.now() - t0) / 1000).toFixed(0)} s; ${fails} failing\n  answers (in-process): ${JSON.stringify(r.outcomes)}\n`);
  report(`CNI (seed ${seed})`, r);
}

/**
 * --workers N: N processes of this command, each with its own scratch node and seed.
 * Processes, not promises: the snapshots shell out synchronously, which would make
 * workers of one process wait for each other.
 */
async function cniWorkers(): Promise<void> {
  const per = Math.ceil(runs / workers);
  const children: ChildProcess[] = [];
  // A signal to this process alone (kill <pid>) would leave the workers running with their
  // scratch nodes: pass it on, so each cleans up its own.
  for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => children.forEach((c) => c.kill(sig)));
  const results = await Promise.all(
    Array.from({ length: workers }, (_, w) => new Promise<{ cases: number; fails: number; outcomes: Record<string, number>; code: number | null }>((resolve) => {
      const a = [process.argv[1]!, '--runs', String(per), '--seed', String(seed + w), '--timeout-ms', String(timeoutMs), '--repro-dir', reproDir];
      if (minutes) a.push('--minutes', String(minutes));
      if (keepGoing) a.push('--keep-going');
      const env = { ...process.env };
      delete env.FC_SEED;
      delete env.FC_PATH;
      const child = spawn(process.execPath, a, { env, stdio: ['ignore', 'inherit', 'pipe'] });
      children.push(child);
      let text = '';
      child.stderr!.setEncoding('utf8').on('data', (d: string) => {
        text += d;
        out(d.split('\n').map((l) => (l ? `[w${w}] ${l}` : l)).join('\n'));
      });
      child.on('close', (code) => {
        const m = /CNI: (\d+) cases .*; (\d+) failing\n {2}answers \(in-process\): (\{.*\})/.exec(text);
        resolve({ cases: Number(m?.[1] ?? 0), fails: Number(m?.[2] ?? 0), outcomes: m ? (JSON.parse(m[3]!) as Record<string, number>) : {}, code });
      });
    })),
  );
  const total = results.reduce((n, r) => n + r.cases, 0);
  const fails = results.reduce((n, r) => n + r.fails, 0);
  const outcomes: Record<string, number> = {};
  for (const r of results) for (const [k, v] of Object.entries(r.outcomes)) outcomes[k] = (outcomes[k] ?? 0) + v;
  if (fails || results.some((r) => r.code !== 0)) failed = true;
  out(`CNI total: ${total} cases (each in-process and through the agent; ${workers} workers, seeds ${seed}..${seed + workers - 1}) in ${((Date.now() - t0) / 1000).toFixed(0)} s; ${fails} failing\n  answers (in-process): ${JSON.stringify(outcomes)}\n`);
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
