// Traffic peer for test/integration/accel.test.ts and bench (runs inside a test
// netns, in the test cgroup). Every transfer is checksummed end to end; results
// go to stdout as JSON lines. All loops are bounded by byte counts or timers.
//
//   server <port> [host]                    serve until SIGTERM ('::' = dual-stack by default)
//   client <host> <port> <send> <resp> [n]  n parallel connections: send <send> bytes, half-close,
//                                           expect sha256 of them + <resp> bytes with their sha256
//   reset  <host> <port>                    send 1 MiB (echoed), abort with RST once the server answers
//   hold   <host> <port> <ms>               1 KiB ping-pong every 20 ms for <ms>, verifying each echo
import net from 'node:net';
import { createHash, randomBytes } from 'node:crypto';

const out = (o: object): void => { process.stdout.write(JSON.stringify(o) + '\n'); };
const MODE_TRANSFER = 0;
const MODE_ECHO = 1;
const CHUNK = 64 * 1024;

function server(port: number, host: string): void {
  let conns = 0;
  // allowHalfOpen: the client half-closes and then reads the whole response.
  const srv = net.createServer({ allowHalfOpen: true }, (s) => {
    const id = ++conns;
    let header: Buffer | null = null;
    let pending = Buffer.alloc(0);
    const hash = createHash('sha256');
    let received = 0;
    let ended = false;
    s.on('data', (d: Buffer) => {
      if (!header) {
        pending = Buffer.concat([pending, d]);
        if (pending.length < 8) return;
        header = pending.subarray(0, 8);
        d = pending.subarray(8);
      }
      if (header.readUInt32LE(4) === MODE_ECHO) { s.write(d); return; }
      hash.update(d);
      received += d.length;
    });
    s.on('end', () => {
      ended = true;
      if (!header || header.readUInt32LE(4) === MODE_ECHO) { s.end(); return; }
      const respSize = header.readUInt32LE(0);
      s.write(hash.digest());
      const rh = createHash('sha256');
      let left = respSize;
      const pump = (): void => {
        while (left > 0) {
          const c = randomBytes(Math.min(CHUNK, left));
          left -= c.length;
          rh.update(c);
          if (!s.write(c)) { s.once('drain', pump); return; }
        }
        s.end(rh.digest());
      };
      pump();
    });
    s.on('error', (e: NodeJS.ErrnoException) => out({ ev: 'error', id, code: e.code }));
    s.on('close', () => out({ ev: ended ? 'done' : 'aborted', id, received }));
  });
  srv.listen({ port, host, ipv6Only: false }, () => out({ ev: 'listening', port, host }));
  process.on('SIGTERM', () => process.exit(0));
}

function transfer(host: string, port: number, send: number, resp: number): Promise<{ ok: boolean; why?: string; sent: number; recv: number }> {
  return new Promise((resolve) => {
    const s = net.connect({ host, port });
    const sentHash = createHash('sha256');
    const chunks: Buffer[] = [];
    let recv = 0;
    let settled = false;
    const done = (r: { ok: boolean; why?: string }): void => {
      if (settled) return;
      settled = true;
      resolve({ ...r, sent: send, recv });
    };
    s.on('connect', () => {
      const h = Buffer.alloc(8);
      h.writeUInt32LE(resp, 0);
      h.writeUInt32LE(MODE_TRANSFER, 4);
      s.write(h);
      let left = send;
      const pump = (): void => {
        while (left > 0) {
          const c = randomBytes(Math.min(CHUNK, left));
          left -= c.length;
          sentHash.update(c);
          if (!s.write(c)) { s.once('drain', pump); return; }
        }
        s.end(); // half-close: the server answers only after our FIN
      };
      pump();
    });
    s.on('data', (d: Buffer) => { chunks.push(d); recv += d.length; });
    s.on('end', () => {
      const all = Buffer.concat(chunks);
      if (all.length !== 32 + resp + 32) return done({ ok: false, why: `got ${all.length} bytes, want ${64 + resp}` });
      if (!all.subarray(0, 32).equals(sentHash.digest())) return done({ ok: false, why: 'server saw different bytes than sent' });
      const body = all.subarray(32, 32 + resp);
      if (!createHash('sha256').update(body).digest().equals(all.subarray(32 + resp))) return done({ ok: false, why: 'response corrupted' });
      done({ ok: true });
    });
    s.on('error', (e: NodeJS.ErrnoException) => done({ ok: false, why: e.code ?? e.message }));
  });
}

async function client(host: string, port: number, send: number, resp: number, n: number): Promise<void> {
  const rs = await Promise.all(Array.from({ length: n }, () => transfer(host, port, send, resp)));
  const failures = rs.filter((r) => !r.ok).map((r) => r.why);
  out({ ok: failures.length === 0, conns: n, failures: failures.slice(0, 5), nfail: failures.length });
  process.exit(failures.length === 0 ? 0 : 1);
}

function reset(host: string, port: number): void {
  const s = net.connect({ host, port }, () => {
    // Echo mode: the first byte back proves the server accepted the connection. A reset
    // before accept() can be dropped from the listen queue without the server ever
    // hearing of it (redirected writes finish fast enough for that race to be common).
    const h = Buffer.alloc(8);
    h.writeUInt32LE(MODE_ECHO, 4);
    s.write(h);
    s.write(randomBytes(1 << 20));
    s.once('data', () => {
      s.resetAndDestroy();
      out({ ok: true });
      setTimeout(() => process.exit(0), 50);
    });
  });
  s.on('error', (e: NodeJS.ErrnoException) => { out({ ok: false, why: e.code }); process.exit(1); });
}

function hold(host: string, port: number, ms: number): void {
  const s = net.connect({ host, port });
  let rounds = 0;
  let expect: Buffer | null = null;
  let got = Buffer.alloc(0);
  const finish = (ok: boolean, why?: string): void => {
    out({ ok, rounds, why });
    process.exit(ok ? 0 : 1);
  };
  const ping = (): void => {
    expect = randomBytes(1024);
    got = Buffer.alloc(0);
    s.write(expect);
  };
  s.on('connect', () => {
    const h = Buffer.alloc(8);
    h.writeUInt32LE(MODE_ECHO, 4);
    s.write(h);
    out({ ev: 'connected', local: `${s.localAddress}:${s.localPort}` });
    ping();
    setTimeout(() => { s.end(); finish(true); }, ms);
  });
  s.on('data', (d: Buffer) => {
    got = Buffer.concat([got, d]);
    if (!expect || got.length < expect.length) return;
    if (!got.subarray(0, expect.length).equals(expect)) return finish(false, 'echo mismatch');
    rounds++;
    setTimeout(ping, 20);
  });
  s.on('end', () => finish(false, 'peer closed'));
  s.on('error', (e: NodeJS.ErrnoException) => finish(false, e.code));
}

const [mode, ...a] = process.argv.slice(2);
switch (mode) {
  case 'server': server(Number(a[0]), a[1] ?? '::'); break;
  case 'client': void client(a[0]!, Number(a[1]), Number(a[2]), Number(a[3]), Number(a[4] ?? 1)); break;
  case 'reset': reset(a[0]!, Number(a[1])); break;
  case 'hold': hold(a[0]!, Number(a[1]), Number(a[2])); break;
  default: process.stderr.write(`accel-peer: unknown mode ${mode}\n`); process.exit(2);
}
