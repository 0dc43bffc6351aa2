// RSS of patu on a node with N services from a services file, in the same run: the default single
// process (`patu agent`) against split mode (`patu manager` + the unprivileged `patu agent
// --manager`, mutual TLS on a unix socket), each process and both together (issue 13's benchmark).
// Each side is started with the same file (N services, 2 backends each), measured after it is in
// step and has settled, then stopped; pins, cgroup and files are the run's own and removed at the end.
//
//   node dist/bench/split-rss.js            BENCH_SERVICES=1000 BENCH_SETTLE_MS=5000 node dist/bench/split-rss.js
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Scratch } from '../test/helpers/kernel.js';
import { isRoot } from '../test/helpers/cni.js';
import { startAgentProc } from '../test/helpers/agent-proc.js';

const SERVICES = Number(process.env.BENCH_SERVICES ?? 100);
const SETTLE_MS = Number(process.env.BENCH_SETTLE_MS ?? 5000);
const rssMB = (pid: number): number => Number(/^VmRSS:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? NaN) / 1024;

async function main(): Promise<void> {
  if (!isRoot()) throw new Error('split-rss: needs root (eBPF, cgroups)');
  const scratch = new Scratch('patu-bench-splitrss');
  process.once('SIGINT', () => void scratch.cleanup().then(() => process.exit(130)));
  try {
    const dir = scratch.tmpDir();
    const file = join(dir, 'services.yaml');
    const lines = ['services:'];
    for (let i = 0; i < SERVICES; i++) {
      const ip = (n: number) => `10.244.${n + Math.floor(i / 250)}.${(i % 250) + 1}`;
      lines.push(`  - { name: s${i}, namespace: bench, clusterIP: 10.96.${130 + Math.floor(i / 250)}.${(i % 250) + 1}, ports: [{ port: 80, targetPort: 8080 }], endpoints: [{ ip: ${ip(0)} }, { ip: ${ip(100)} }] }`);
    }
    writeFileSync(file, `${lines.join('\n')}\n`);
    const rows: string[] = [];
    for (const split of [false, true]) {
      const d = scratch.tmpDir(split ? 'split' : 'single');
      const p = startAgentProc(['--cni-socket', join(d, 'cni.sock'), '--services-file', file, '--cgroup', scratch.cgroup(split ? 'split' : 'single'),
        '--pin-root', scratch.pinRoot(split ? 'split' : 'single'), '--data-dir', join(d, 'ipam')], { dir: d, split, managerArgs: ['--cluster-cidr', '10.244.0.0/16'] });
      try {
        await p.ready(120_000);
        await new Promise((r) => setTimeout(r, SETTLE_MS));
        if (split) {
          const m = rssMB(p.main.pid!);
          const a = rssMB(p.agent!.pid!);
          rows.push(`  split: patu manager         ${m.toFixed(1)}`, `  split: patu agent --manager ${a.toFixed(1)}`, `  split: both                 ${(m + a).toFixed(1)}`);
        } else {
          rows.push(`  single: patu agent          ${rssMB(p.main.pid!).toFixed(1)}`);
        }
      } finally {
        await p.stop();
      }
    }
    console.log(`RSS (MiB) with ${SERVICES} services from a services file, ${SETTLE_MS} ms after the state was programmed`);
    for (const r of rows) console.log(r);
  } finally {
    await scratch.cleanup();
  }
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
