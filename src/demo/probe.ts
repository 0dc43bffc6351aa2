// Tiny TCP peers for the demo, run inside lab pods with the same Node that runs
// patu: a server that answers each connection with its name, and a client that
// connects N times to an address and counts who answered. Bounded by count and
// by a per-connection timeout.
export const nameServerScript = (name: string, port: number): string =>
  `require('net').createServer((s) => { s.on('error', () => {}); s.end(${JSON.stringify(name)}); }).listen(${port})`;

export const countClientScript = (host: string, port: number, count: number): string => `
const net = require('net');
const seen = {}; let failed = 0; let done = 0;
const t0 = process.hrtime.bigint();
function one(i) {
  if (i >= ${count}) { finish(); return; }
  const s = net.connect(${port}, ${JSON.stringify(host)});
  let data = '';
  s.setTimeout(2000, () => { s.destroy(); failed++; one(i + 1); });
  s.on('data', (d) => { data += d; });
  s.on('error', () => { failed++; one(i + 1); });
  s.on('end', () => { seen[data] = (seen[data] || 0) + 1; done++; one(i + 1); });
}
function finish() {
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  process.stdout.write(JSON.stringify({ seen, failed, done, ms }));
}
one(0);
`;

/**
 * connect() as fast as one Node client can, one at a time, for `ms`, to each of `hosts` in
 * turn (several: the same spread over servers as a service's backends): each connection is
 * reset as soon as it is up (no data, no TIME_WAIT). What the figure holds is a connect
 * through the service's translation plus Node's own cost per socket, which dominates; a C
 * loop (bench/service-lb.ts) shows the kernel's alone.
 */
export const connectLoopScript = (hosts: readonly string[], port: number, ms: number): string => `
const net = require('net');
const hosts = ${JSON.stringify(hosts)};
let done = 0, failed = 0, n = 0;
const t0 = process.hrtime.bigint();
const end = t0 + ${Math.round(ms)}n * 1000000n;
function one() {
  if (process.hrtime.bigint() >= end) {
    process.stdout.write(JSON.stringify({ done, failed, ms: Number(process.hrtime.bigint() - t0) / 1e6 }));
    return;
  }
  const s = net.connect(${port}, hosts[n++ % hosts.length]);
  let up = false, over = false;
  const next = (ok) => { if (over) return; over = true; if (ok) done++; else failed++; one(); };
  s.setTimeout(2000, () => { s.destroy(); next(false); });
  s.on('connect', () => { up = true; s.setTimeout(0); s.resetAndDestroy(); next(true); });
  s.on('error', () => { if (!up) next(false); });
}
one();
`;

export interface ConnectLoopResult {
  done: number;
  failed: number;
  ms: number;
}

export interface CountResult {
  seen: Record<string, number>;
  failed: number;
  done: number;
  ms: number;
}
