// RSS of the default single-process agent, several builds in the same run (issue 13: split
// mode must leave the default agent's footprint where it was). Each build's own bin/patu runs
// `patu agent --cni-socket --accel --services-file` (N ClusterIP services of 3 endpoints) on a
// scratch cgroup and pin root of its own; once it serves and has been quiet for SETTLE_MS,
// VmRSS is read from /proc. Builds alternate round by round, so drift in the machine's load
// hits all of them alike. Prints the median, min and max per build.
//
//   git worktree add /tmp/rss-base b751d4a~1 && (cd /tmp/rss-base && ln -s <repo>/node_modules . && bash scripts/build.sh)
//   node dist/bench/agent-rss-default.js base=/tmp/rss-base main=. [--json]       (root)
//   RSS_ROUNDS=5  RSS_SERVICES=100  RSS_SETTLE_MS=3000
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Scratch } from '../test/helpers/kernel.js';

const ROUNDS = Number(process.env.RSS_ROUNDS ?? 5);
const SERVICES = Number(process.env.RSS_SERVICES ?? 100);
const SETTLE_MS = Number(process.env.RSS_SETTLE_MS ?? 3000);
const JSON_OUT = process.argv.includes('--json');
const builds = process.argv.slice(2).filter((a) => a.includes('=')).map((a) => {
  const [label, tree] = a.split('=') as [string, string];
  return { label, tree: resolve(tree) };
});
if (builds.length === 0) {
  process.stderr.write('usage: node dist/bench/agent-rss-default.js <label>=<tree> [<label>=<tree> ...] [--json]\n');
  process.exit(2);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const scratch = new Scratch('patu-bench-rssdef');
scratch.cleanupOnSignals();

function servicesYaml(n: number): string {
  const out = ['services:'];
  for (let i = 0; i < n; i++) {
    const vip = `10.96.${Math.floor(i / 250)}.${(i % 250) + 1}`;
    out.push(`  - name: s${i}`, `    clusterIP: ${vip}`, '    ports: [{ port: 80, targetPort: 8080 }]', '    endpoints:');
    for (let e = 0; e < 3; e++) out.push(`      - ip: 10.251.${e}.${(i % 250) + 1}`);
  }
  return `${out.join('\n')}\n`;
}

function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for ${pid}`);
  return Number(m[1]);
}

async function measure(build: { label: string; tree: string }, dir: string, cgroup: string, pinRoot: string): Promise<number> {
  const p = spawn(join(build.tree, 'bin', 'patu'), [
    'agent', '--cni-socket', join(dir, `${build.label}.sock`), '--accel', '--services-file', join(dir, 'services.yaml'),
    '--cgroup', cgroup, '--pin-root', pinRoot, '--data-dir', join(dir, `ipam-${build.label}`),
  ], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  p.stdout!.setEncoding('utf8').on('data', (d: string) => { log += d; });
  p.stderr!.setEncoding('utf8').on('data', (d: string) => { log += d; });
  const exited = new Promise<void>((r) => p.once('exit', () => r()));
  try {
    for (let waited = 0; !log.includes('serving CNI requests'); waited += 50) {
      if (waited > 60_000) throw new Error(`${build.label}: not serving after 60 s:\n${log}`);
      if (p.exitCode !== null) throw new Error(`${build.label}: exited:\n${log}`);
      await sleep(50);
    }
    // every service programmed (read back from the maps by the same build's CLI)
    for (let waited = 0; ; waited += 250) {
      const st = spawnSync(join(build.tree, 'bin', 'patu'), ['services', '--json', '--pin-root', pinRoot], { encoding: 'utf8' });
      const n = st.status === 0 ? (JSON.parse(st.stdout) as { services: unknown[] }).services.length : 0;
      if (n >= SERVICES) break;
      if (waited > 60_000) throw new Error(`${build.label}: ${n} of ${SERVICES} services programmed after 60 s:\n${log}`);
      await sleep(250);
    }
    await sleep(SETTLE_MS);
    return rssKiB(p.pid!);
  } finally {
    p.kill('SIGTERM');
    await Promise.race([exited, sleep(5000)]);
    p.kill('SIGKILL');
  }
}

async function main(): Promise<void> {
  const dir = scratch.tmpDir('patu-bench-rssdef');
  writeFileSync(join(dir, 'services.yaml'), servicesYaml(SERVICES));
  const per = new Map<string, { cgroup: string; pinRoot: string; samples: number[] }>();
  for (const b of builds) per.set(b.label, { cgroup: scratch.cgroup(b.label), pinRoot: scratch.pinRoot(b.label), samples: [] });
  for (let round = 0; round < ROUNDS; round++) {
    const order = round % 2 === 0 ? builds : [...builds].reverse();
    for (const b of order) {
      const s = per.get(b.label)!;
      const kib = await measure(b, dir, s.cgroup, s.pinRoot);
      s.samples.push(kib);
      if (!JSON_OUT) process.stderr.write(`round ${round + 1}/${ROUNDS} ${b.label}: ${(kib / 1024).toFixed(1)} MiB\n`);
    }
  }
  const mib = (k: number) => Math.round((k / 1024) * 10) / 10;
  const result = builds.map((b) => {
    const xs = [...per.get(b.label)!.samples].sort((x, y) => x - y);
    return { build: b.label, tree: b.tree, medianMiB: mib(xs[Math.floor(xs.length / 2)]!), minMiB: mib(xs[0]!), maxMiB: mib(xs.at(-1)!), samplesMiB: per.get(b.label)!.samples.map(mib) };
  });
  if (JSON_OUT) process.stdout.write(`${JSON.stringify({ rounds: ROUNDS, services: SERVICES, settleMs: SETTLE_MS, result })}\n`);
  else {
    process.stdout.write(`default agent (--accel --services-file, ${SERVICES} services x 3 endpoints), VmRSS after ${SETTLE_MS} ms quiet, ${ROUNDS} rounds interleaved\n`);
    for (const r of result) process.stdout.write(`  ${r.build.padEnd(10)} median ${r.medianMiB} MiB  (min ${r.minMiB}, max ${r.maxMiB})  ${r.tree}\n`);
    if (result.length > 1) process.stdout.write(`  ${result[1]!.build} - ${result[0]!.build}: ${Math.round((result[1]!.medianMiB - result[0]!.medianMiB) * 10) / 10} MiB at the median\n`);
  }
}

main()
  .catch((e) => {
    process.stderr.write(`${(e as Error).stack ?? e}\n`);
    process.exitCode = 1;
  })
  .finally(() => scratch.cleanup());
