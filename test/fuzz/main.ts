// The long fuzz run (needs root):
//   npm run fuzz -- --runs 20000             CNI requests, in-process and through the agent
//   npm run fuzz -- --storm 500              kill -9 storm cycles
//   npm run fuzz -- --services 2000          services files through `patu services apply`
//   FC_SEED=<seed> FC_PATH=<path> npm run fuzz -- --runs N     replays a failure
//   --keep-going                             record every failing case and carry on (a survey)
// Prints the seed first, and for a failure the FC_SEED/FC_PATH to replay it and a
// shell line that replays the request by hand. Exits 1 when anything failed.
import { mkdirSync } from 'node:fs';
import { Scratch } from '../helpers/kernel.js';
import { FuzzNode } from './node.js';
import { fuzzCni } from './cni-run.js';
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
  out('usage: npm run fuzz -- [--runs N] [--storm CYCLES] [--services N] [--keep-going] [--seed S] [--timeout-ms MS]\n');
  process.exit(2);
}
mkdirSync(reproDir, { recursive: true });
const scratch = new Scratch('patu-fuzz');
scratch.cleanupOnSignals();
let failed = false;
try {
  out(`patu fuzz: seed ${seed}${path ? ` path ${path}` : ''}; replay with FC_SEED=${seed}\n`);
  if (runs) {
    const node = await FuzzNode.create(scratch, { tag: 'cni', agent: true, pods: 2 });
    const r = await fuzzCni(node, { runs, seed, ...(path ? { path } : {}), batch: 25, timeoutMs, keepGoing, reproDir, log: out });
    out(`CNI: ${r.runs} cases (each in-process and through the agent) in ${(r.ms / 1000).toFixed(0)} s; ${r.failures.length} failing (keep-going)\n  answers (in-process): ${JSON.stringify(r.outcomes)}\n`);
    if (r.failed) {
      failed = true;
      out(`CNI FAILED: FC_SEED=${r.failed.seed} FC_PATH=${r.failed.path}\n  ${r.failed.problems.join('\n  ')}\n  replay by hand: ${r.failed.reproducer}\n`);
    }
    if (r.failures.length) failed = true;
  }
  if (services) {
    const r = await fuzzServices(scratch, { runs: services, seed, ...(path ? { path } : {}), timeoutMs, keepGoing, reproDir, log: out });
    out(`services: ${r.runs} files in ${(r.ms / 1000).toFixed(0)} s; ${r.failures.length} failing (keep-going)\n  exits: ${JSON.stringify(r.outcomes)}\n`);
    if (r.failed) {
      failed = true;
      out(`services FAILED: FC_SEED=${r.failed.seed} FC_PATH=${r.failed.path}\n  ${r.failed.problems.join('\n  ')}\n  replay by hand: ${r.failed.reproducer}\n`);
    }
    if (r.failures.length) failed = true;
  }
  if (storm) {
    const r = await killStorm(scratch, { cycles: storm, seed, log: out });
    out(`kill storm: ${r.cycles} cycles, ${r.pluginKills} plugin kills, ${r.agentKills} agent kills, ${r.adds} ADDs, ${r.dels} DELs, ${r.gcRemoved} leftovers removed by GC, in ${(r.ms / 1000).toFixed(0)} s\n`);
    if (r.problems.length) {
      failed = true;
      out(`kill storm FAILED (seed ${seed}):\n  ${r.problems.join('\n  ')}\n`);
    }
  }
} finally {
  await scratch.cleanup();
}
process.exitCode = failed ? 1 : 0;
