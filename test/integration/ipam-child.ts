// Child process for ipam-concurrency.test.ts: one real process per CNI ADD, as a
// container runtime would start them. Not a test file itself.
//   node ipam-child.js <mode> <ipam-config-json> <containerId> [startFile]
// modes: alloc | hold | crash-before-link | crash-after-link | churn
import fs from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';
import { parseIpamConfig } from '../../src/ipam/config.js';
import { IpamStore } from '../../src/ipam/store.js';
import { allocate, release } from '../../src/ipam/allocator.js';

const [mode, cfgJson, containerId, startFile] = process.argv.slice(2);
const cfg = parseIpamConfig(JSON.parse(cfgJson!));
const store = IpamStore.open(cfg.dataDir, 'conc', { lockTimeoutMs: 20_000 });

const die = (): never => {
  process.kill(process.pid, 'SIGKILL');
  throw new Error('unreachable');
};

// A start barrier makes all children hit the lock at once rather than one by one
// as they finish starting up. Bounded: 10 s.
if (startFile) {
  const until = Date.now() + 10_000;
  while (!fs.existsSync(startFile)) {
    if (Date.now() > until) throw new Error(`start file ${startFile} never appeared`);
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 2);
  }
}

switch (mode) {
  case 'alloc': {
    const t0 = performance.now();
    const got = allocate(cfg, store, containerId!, 'eth0');
    process.stdout.write(JSON.stringify({ ips: got.map((a) => a.ip), ms: performance.now() - t0 }));
    break;
  }
  case 'hold':
    store.lock();
    process.stdout.write('locked\n');
    setInterval(() => {}, 1 << 30); // wait for SIGKILL with the lock held
    break;
  case 'crash-before-link':
    // Dies after the record's temp file is written and fsync'd, before it is linked
    // into place: the moment a non-atomic writer would leave a half record.
    (fs as { linkSync: unknown }).linkSync = die;
    syncBuiltinESMExports();
    allocate(cfg, store, containerId!, 'eth0');
    break;
  case 'crash-after-link': {
    const realLink = fs.linkSync;
    (fs as { linkSync: unknown }).linkSync = (a: fs.PathLike, b: fs.PathLike) => {
      realLink(a, b);
      die();
    };
    syncBuiltinESMExports();
    allocate(cfg, store, containerId!, 'eth0');
    break;
  }
  case 'churn':
    // Allocate and release in a loop until killed (bounded, in case nobody does). The test
    // times its kill from this line.
    fs.writeSync(1, 'started\n');
    for (let i = 0; i < 100_000; i++) {
      allocate(cfg, store, `${containerId}-${i}`, 'eth0');
      if (i % 3 !== 0) release(cfg, store, `${containerId}-${i}`, 'eth0');
    }
    break;
  default:
    throw new Error(`unknown mode ${mode}`);
}
