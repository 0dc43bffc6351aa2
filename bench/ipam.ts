// IPAM cost on the ADD/DEL path: allocate and release in a warm process with a
// given number of addresses already held, on a real file system.
//   node dist/bench/ipam.js [dir=/var/tmp] [held=110]
// (110 is the default kubelet max pods per node.)
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { parseIpamConfig } from '../src/ipam/config.js';
import { IpamStore } from '../src/ipam/store.js';
import { allocate, release } from '../src/ipam/allocator.js';

const base = process.argv[2] ?? '/var/tmp';
const held = Number(process.argv[3] ?? 110);
const dir = mkdtempSync(join(base, 'patu-ipam-bench-'));
try {
  const cfg = parseIpamConfig({ ranges: [[{ subnet: '10.98.0.0/22' }]], dataDir: dir });
  const store = IpamStore.open(dir, 'bench');
  for (let i = 0; i < held; i++) allocate(cfg, store, `held-${i}`, 'eth0');
  const rounds = 200;
  const a: number[] = [];
  const r: number[] = [];
  for (let i = 0; i < rounds; i++) {
    let t = performance.now();
    allocate(cfg, store, `pod-${i}`, 'eth0');
    a.push(performance.now() - t);
    t = performance.now();
    release(cfg, store, `pod-${i}`, 'eth0');
    r.push(performance.now() - t);
  }
  const pct = (xs: number[], p: number) => xs.sort((x, y) => x - y)[Math.floor((xs.length - 1) * p)]!.toFixed(3);
  console.log(`held=${held} fs=${base}: allocate p50 ${pct(a, 0.5)} ms p99 ${pct(a, 0.99)} ms; release p50 ${pct(r, 0.5)} ms p99 ${pct(r, 0.99)} ms`);
  store.close();
} finally {
  rmSync(dir, { recursive: true, force: true });
}
