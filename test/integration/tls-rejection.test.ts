// The manager's TLS policy against real connections (issue 13, "Mutual TLS, on TCP"): a
// server built the way the manager builds its own (http2.createSecureServer with
// serverTlsOptions, clientCertProblem on every accepted connection, tlsClientErrorReason on
// every refused one) on loopback, the real server on a unix socket too, and clients that
// should get in and clients that must not: Node's tls/http2 and `openssl s_client`.
//
// What a refusal looks like in TLS 1.3 (client certificates are judged after the handshake):
//   - no certificate: OpenSSL's alert certificate_required (116) on the client's first read;
//   - TLS 1.2: alert protocol_version during the handshake;
//   - a foreign CA, an expired certificate, a server certificate as the client's: Node's
//     verify callback accepts every chain and judges it once the handshake is done, so the
//     server sends no alert; it closes the connection before a single byte of HTTP/2 (the
//     client's request fails: gRPC UNAVAILABLE), and logs UNABLE_TO_VERIFY_LEAF_SIGNATURE /
//     CERT_HAS_EXPIRED / INVALID_PURPOSE as the reason.
// Each case asserts both sides: what the client saw and the reason the server logged, and
// that no log line holds key material. The first tests use a bare server built from
// src/rpc/tls.ts alone (the policy); the last runs the same cases through the manager's real
// server (src/rpc/server.ts) and client (src/rpc/client.ts), where a refusal is gRPC UNAVAILABLE.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http2 from 'node:http2';
import net, { type AddressInfo } from 'node:net';
import tls, { type ConnectionOptions, type TLSSocket } from 'node:tls';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateCerts, writeCertDir, type CertPair, type CertSet } from '../../src/rpc/certs.js';
import { clientCertProblem, clientTlsOptions, loadTlsDir, serverTlsOptions, tlsClientErrorReason, watchTlsDir, type TlsFiles } from '../../src/rpc/tls.js';
import { DEFAULT_SERVER_NAME } from '../../src/defaults.js';
import { DataplaneError, type Dataplane } from '../../src/dataplane/api.js';
import { startDataplaneServer } from '../../src/rpc/server.js';
import { fromCallError } from '../../src/rpc/errors.js';
import { connectDataplane, type RemoteDataplane } from '../../src/rpc/client.js';
import { Dataplane as DataplaneService } from '../../src/rpc/gen/patu/dataplane/v1/dataplane_pb.js';
import { Code, ConnectError, createClient } from '@connectrpc/connect';
import { createGrpcTransport } from '@connectrpc/connect-node';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const OPENSSL = '/usr/bin/openssl';

function scratchDir(t: { after: (fn: () => void) => void }, tag: string): string {
  const dir = mkdtempSync(join(tmpdir(), `patu-tlsrej-${tag}-`));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A log line never holds a private key: neither the PEM armour nor a line of any key's body. */
function assertNoKeyMaterial(lines: string[], sets: CertSet[]): void {
  const text = lines.join('\n');
  assert.ok(!/PRIVATE KEY/.test(text), 'PEM armour in the log');
  for (const s of sets) {
    for (const pair of [s.ca, s.server, s.client]) {
      for (const body of pair.key.split('\n').filter((l) => l.length > 20 && !l.startsWith('-----'))) {
        assert.ok(!text.includes(body), 'a key line in the log');
      }
    }
  }
}

interface ServerUnderTest {
  port: number;
  /** JSON log lines: {msg:'tls rejected', reason, peer} and {msg:'tls reloaded'|'tls reload failed'}. */
  logs: string[];
  close(): Promise<void>;
}

/**
 * The manager's TLS front: an HTTP/2 server with serverTlsOptions that answers 200 "ok" to
 * any request from an accepted client. clientCertProblem runs before http2's own
 * 'secureConnection' listener, so a refused socket never gets a session (not even SETTINGS).
 */
async function startServer(t: { after: (fn: () => Promise<void> | void) => void }, dir: string, watch = false): Promise<ServerUnderTest> {
  const logs: string[] = [];
  const log = (o: Record<string, unknown>) => { logs.push(JSON.stringify(o)); };
  const server = http2.createSecureServer({ ...serverTlsOptions(loadTlsDir(dir, 'server')), allowHTTP1: false });
  const peerOf = (s: TLSSocket) => `${s.remoteAddress}:${s.remotePort}`;
  server.on('tlsClientError', (err: Error, sock: TLSSocket) => log({ msg: 'tls rejected', reason: tlsClientErrorReason(err, sock), peer: peerOf(sock) }));
  server.prependListener('secureConnection', (sock: TLSSocket) => {
    const problem = clientCertProblem(sock);
    if (problem) {
      log({ msg: 'tls rejected', reason: problem, peer: peerOf(sock) });
      sock.destroy();
    }
  });
  server.on('stream', (stream) => {
    stream.respond({ ':status': 200, 'content-type': 'text/plain' });
    stream.end('ok');
  });
  server.on('sessionError', () => { /* a refused socket's session, if any */ });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const watcher = watch
    ? watchTlsDir(dir, () => {
      try {
        server.setSecureContext(serverTlsOptions(loadTlsDir(dir, 'server')));
        log({ msg: 'tls reloaded' });
      } catch (e) {
        log({ msg: 'tls reload failed', reason: (e as Error).message });
      }
    }, { pollMs: 200, settleMs: 200 })
    : undefined;
  const close = async () => {
    watcher?.close();
    await new Promise<void>((resolve) => {
      server.close(() => resolve());
      // sessions still open would hold close(): tests end them, but never wait on a stuck one
      setTimeout(resolve, 2000).unref();
    });
  };
  t.after(close);
  return { port: (server.address() as AddressInfo).port, logs, close };
}

/** Client options from a CA and a certificate pair (undefined: no client certificate). */
function clientOpts(ca: CertPair, pair: CertPair | undefined, serverName: string = DEFAULT_SERVER_NAME): ConnectionOptions {
  const files: TlsFiles = { ca: Buffer.from(ca.cert), cert: Buffer.from(pair?.cert ?? ''), key: Buffer.from(pair?.key ?? ''), dir: '(test)', layout: 'patu' };
  const o = clientTlsOptions(files, serverName);
  if (!pair) {
    delete o.cert;
    delete o.key;
  }
  return o;
}

type Outcome = { ok: true; status: number; body: string } | { ok: false; error: string };

/** One HTTP/2 request over TLS: the response, or the error that ended the session (the TLS one, not the stream's cancel). */
async function h2Request(port: number, opts: ConnectionOptions): Promise<Outcome> {
  return new Promise((resolve) => {
    let settled = false;
    let sessionError: string | undefined;
    let streamError: string | undefined;
    const done = (o: Outcome) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      session.destroy();
      resolve(o);
    };
    const session = http2.connect(`https://127.0.0.1:${port}`, opts);
    const timer = setTimeout(() => done({ ok: false, error: 'timeout' }), 20_000);
    // The session's error is the TLS one; a stream's cancel may come first: give the session a moment.
    session.on('error', (e: NodeJS.ErrnoException) => {
      sessionError ??= e.code ?? e.message;
      done({ ok: false, error: sessionError });
    });
    session.on('close', () => done({ ok: false, error: sessionError ?? streamError ?? 'closed' }));
    const req = session.request({ ':path': '/patu.dataplane.v1.Dataplane/Health' });
    let body = '';
    let status = 0;
    req.setEncoding('utf8');
    req.on('response', (h) => { status = Number(h[':status']); });
    req.on('data', (d: string) => { body += d; });
    req.on('end', () => { if (status) done({ ok: true, status, body }); });
    req.on('error', (e: NodeJS.ErrnoException) => {
      streamError ??= e.code ?? e.message;
      setTimeout(() => done({ ok: false, error: sessionError ?? streamError ?? 'closed' }), 500);
    });
    req.end();
  });
}

/** A raw TLS connection offering h2: did the handshake finish, which error came, how many bytes the server sent. */
async function tlsProbe(port: number, opts: ConnectionOptions): Promise<{ secure: boolean; error?: string; bytes: number }> {
  return new Promise((resolve) => {
    let secure = false;
    let bytes = 0;
    let error: string | undefined;
    const sock = tls.connect({ ...opts, host: '127.0.0.1', port, ALPNProtocols: ['h2'] }, () => {
      secure = true;
      // the HTTP/2 client preface: an accepted client gets the server's SETTINGS back
      sock.write('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00');
    });
    const timer = setTimeout(() => sock.destroy(), 5000);
    sock.on('data', (d: Buffer) => {
      bytes += d.length;
      sock.destroy(); // seen enough: the server talks to us
    });
    sock.on('error', (e: NodeJS.ErrnoException) => { error ??= e.code ?? e.message; });
    sock.on('close', () => {
      clearTimeout(timer);
      resolve({ secure, ...(error ? { error } : {}), bytes });
    });
  });
}

/** openssl s_client offering h2; stdout is what the server sent (raw, -quiet), stderr its diagnostics. */
async function sClient(target: number | string, args: string[]): Promise<{ stdout: Buffer; stderr: string }> {
  return new Promise((resolve) => {
    const where = typeof target === 'string' ? ['-unix', target] : ['-connect', `127.0.0.1:${target}`];
    const p = spawn(OPENSSL, ['s_client', ...where, '-alpn', 'h2', '-quiet', '-verify_return_error', ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let err = '';
    const timer = setTimeout(() => p.kill('SIGKILL'), 8000);
    p.stdout.on('data', (d: Buffer) => {
      out.push(d);
      setTimeout(() => p.kill('SIGTERM'), 200); // the server answered: enough
    });
    p.stderr.on('data', (d: Buffer) => { err += d.toString(); });
    p.on('close', () => {
      clearTimeout(timer);
      resolve({ stdout: Buffer.concat(out), stderr: err });
    });
    p.stdin.on('error', () => { /* closed by a refusal */ });
    p.stdin.write('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');
  });
}

/** Waits until a log line matches (the server logs a refusal when it sees the socket close). */
async function logged(s: ServerUnderTest, want: RegExp, ms = 10_000): Promise<string> {
  for (let waited = 0; ; waited += 50) {
    const line = s.logs.find((l) => want.test(l));
    if (line) return line;
    if (waited > ms) assert.fail(`no log line matching ${want}; logs:\n${s.logs.join('\n')}`);
    await sleep(50);
  }
}

/** A client certificate without any extended key usage, signed by `ca`, made with the openssl CLI: OpenSSL's own purpose check lets it through. */
function noEkuClientCert(dir: string, ca: CertPair): CertPair {
  writeFileSync(join(dir, 'ca.pem'), ca.cert);
  writeFileSync(join(dir, 'ca.key'), ca.key, { mode: 0o600 });
  const run = (args: string[]) => {
    const r = spawnSync(OPENSSL, args, { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
  };
  run(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', join(dir, 'noeku.key'), '-out', join(dir, 'noeku.csr'), '-subj', '/CN=no-eku']);
  writeFileSync(join(dir, 'noeku.ext'), 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n');
  run(['x509', '-req', '-in', join(dir, 'noeku.csr'), '-CA', join(dir, 'ca.pem'), '-CAkey', join(dir, 'ca.key'), '-CAcreateserial', '-days', '2', '-extfile', join(dir, 'noeku.ext'), '-out', join(dir, 'noeku.crt')]);
  return { cert: readFileSync(join(dir, 'noeku.crt'), 'utf8'), key: readFileSync(join(dir, 'noeku.key'), 'utf8') };
}

test('the manager\'s TLS policy: the right client gets in; every wrong one is refused with its reason logged and no key material', async (t) => {
  const dir = scratchDir(t, 'srv');
  const good = await generateCerts();
  writeCertDir(dir, good);
  const foreign = await generateCerts();
  const expired = await generateCerts({ ca: good.ca, expiredClient: true });
  const noEku = noEkuClientCert(scratchDir(t, 'noeku'), good.ca);
  const server = await startServer(t, dir);

  await t.test('control: a client certificate of our CA with clientAuth gets an answer (Node and openssl)', async () => {
    const r = await h2Request(server.port, clientOpts(good.ca, good.client));
    assert.deepEqual(r, { ok: true, status: 200, body: 'ok' });
    const s = await sClient(server.port, ['-servername', DEFAULT_SERVER_NAME, '-verify_hostname', DEFAULT_SERVER_NAME, '-CAfile', join(dir, 'ca.crt'), '-cert', join(dir, 'client.crt'), '-key', join(dir, 'client.key')]);
    assert.ok(s.stdout.length >= 9 && s.stdout[3] === 0x04, `the server's SETTINGS frame; s_client said: ${s.stderr}`);
    assert.equal(server.logs.length, 0, server.logs.join('\n'));
  });

  await t.test('plaintext: a TCP client speaking HTTP/2 and an http:// client get nothing; "not TLS" logged', async () => {
    const before = server.logs.length;
    const got = await new Promise<number>((resolve) => {
      let n = 0;
      const s = net.connect(server.port, '127.0.0.1', () => s.write('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'));
      s.on('data', (d) => { n += d.length; });
      s.on('error', () => {});
      s.on('close', () => resolve(n));
    });
    assert.equal(got, 0, 'no bytes for a plaintext client');
    const r = await new Promise<Outcome>((resolve) => {
      const session = http2.connect(`http://127.0.0.1:${server.port}`);
      session.on('error', (e: NodeJS.ErrnoException) => resolve({ ok: false, error: e.code ?? e.message }));
      session.on('close', () => resolve({ ok: false, error: 'closed' }));
      const req = session.request({ ':path': '/' });
      req.on('error', () => {});
      req.on('response', (h) => resolve({ ok: true, status: Number(h[':status']), body: '' }));
      req.end();
    });
    assert.equal(r.ok, false);
    await logged(server, /"reason":"not TLS \(plaintext\?\)"/);
    assert.ok(server.logs.length >= before + 2, server.logs.join('\n'));
  });

  await t.test('no client certificate: alert certificate_required (Node and openssl s_client)', async () => {
    const p = await tlsProbe(server.port, clientOpts(good.ca, undefined));
    assert.equal(p.error, 'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED');
    assert.equal(p.bytes, 0);
    const r = await h2Request(server.port, clientOpts(good.ca, undefined));
    assert.deepEqual(r, { ok: false, error: 'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED' });
    const s = await sClient(server.port, ['-servername', DEFAULT_SERVER_NAME, '-CAfile', join(dir, 'ca.crt')]);
    assert.match(s.stderr, /tlsv13 alert certificate required/);
    assert.equal(s.stdout.length, 0);
    await logged(server, /"reason":"no client certificate"/);
  });

  const refusedAfterHandshake: { name: string; pair: CertPair; ca?: CertPair; reason: RegExp }[] = [
    { name: 'a foreign CA', pair: foreign.client, reason: /not signed by our CA \(a foreign CA\) \[UNABLE_TO_VERIFY_LEAF_SIGNATURE\]/ },
    { name: 'an expired client certificate', pair: expired.client, reason: /client certificate expired \[CERT_HAS_EXPIRED\]/ },
    { name: 'a server certificate presented as the client\'s', pair: good.server, reason: /no clientAuth extended key usage.*\[INVALID_PURPOSE\]/ },
    { name: 'a certificate without any EKU (OpenSSL lets it pass; clientCertProblem does not)', pair: noEku, reason: /CN=no-eku serial=\w+ has no clientAuth extended key usage/ },
  ];
  for (const c of refusedAfterHandshake) {
    await t.test(`${c.name}: handshake done, then closed before any HTTP/2 byte; the request fails; reason logged (Node and openssl s_client)`, async () => {
      const before = server.logs.length;
      const p = await tlsProbe(server.port, clientOpts(good.ca, c.pair));
      assert.equal(p.secure, true, 'TLS 1.3: the client finished its handshake');
      assert.equal(p.bytes, 0, 'not one byte from the server');
      const r = await h2Request(server.port, clientOpts(good.ca, c.pair));
      assert.equal(r.ok, false, JSON.stringify(r));

      const d = scratchDir(t, 'sc');
      writeFileSync(join(d, 'c.crt'), c.pair.cert);
      writeFileSync(join(d, 'c.key'), c.pair.key, { mode: 0o600 });
      const s = await sClient(server.port, ['-servername', DEFAULT_SERVER_NAME, '-CAfile', join(dir, 'ca.crt'), '-cert', join(d, 'c.crt'), '-key', join(d, 'c.key')]);
      assert.equal(s.stdout.length, 0, 'openssl got no byte from the server');
      assert.match(s.stderr, /unexpected eof while reading|errno=104|Connection reset/, s.stderr);

      const line = await logged(server, c.reason);
      assert.match(line, /"msg":"tls rejected"/);
      for (let i = 0; i < 100 && server.logs.length < before + 3; i++) await sleep(50);
      assert.equal(server.logs.slice(before).filter((l) => c.reason.test(l)).length, 3, `three refusals logged:\n${server.logs.slice(before).join('\n')}`);
    });
  }

  await t.test('TLS 1.2: alert protocol_version (Node and openssl s_client)', async () => {
    const p = await tlsProbe(server.port, { ...clientOpts(good.ca, good.client), minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2' });
    assert.equal(p.secure, false);
    assert.equal(p.error, 'ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION');
    const s = await sClient(server.port, ['-tls1_2', '-servername', DEFAULT_SERVER_NAME, '-CAfile', join(dir, 'ca.crt'), '-cert', join(dir, 'client.crt'), '-key', join(dir, 'client.key')]);
    assert.match(s.stderr, /alert protocol version/);
    await logged(server, /"reason":"not TLS 1\.3"/);
  });

  await t.test('no log line holds key material', () => {
    assert.ok(server.logs.length >= 10, server.logs.join('\n'));
    assertNoKeyMaterial(server.logs, [good, foreign, expired, { ca: good.ca, server: good.server, client: noEku }]);
  });
});

test('the agent\'s side: it refuses a server whose name does not match or whose CA is not its own', async (t) => {
  const dir = scratchDir(t, 'name');
  const set = await generateCerts({ serverName: 'patu-manager' });
  writeCertDir(dir, set);
  const server = await startServer(t, dir);
  assert.deepEqual(await h2Request(server.port, clientOpts(set.ca, set.client, 'patu-manager')), { ok: true, status: 200, body: 'ok' });
  assert.deepEqual(await h2Request(server.port, clientOpts(set.ca, set.client, 'other-manager')), { ok: false, error: 'ERR_TLS_CERT_ALTNAME_INVALID' });
  const foreign = await generateCerts({ serverName: 'patu-manager' });
  // Our client certificate is fine for the server; the server's certificate is not for us.
  // (OpenSSL sends the server's CA along with its certificate, completing the chain from the
  // server's store: the client sees a self-signed root it does not trust.)
  assert.deepEqual(await h2Request(server.port, clientOpts(foreign.ca, set.client)), { ok: false, error: 'SELF_SIGNED_CERT_IN_CHAIN' });
});

test('rotation: new files in the directory are served without a restart; clients of the new CA get in, of the old one no longer', async (t) => {
  const dir = scratchDir(t, 'rot');
  const a = await generateCerts();
  writeCertDir(dir, a);
  const server = await startServer(t, dir, true);
  assert.deepEqual(await h2Request(server.port, clientOpts(a.ca, a.client)), { ok: true, status: 200, body: 'ok' });

  // A whole new set (new CA), as `patu certs generate --force` writes it.
  const b = await generateCerts();
  writeCertDir(dir, b, { force: true });
  await logged(server, /"msg":"tls reloaded"/);
  assert.deepEqual(await h2Request(server.port, clientOpts(b.ca, b.client)), { ok: true, status: 200, body: 'ok' });
  assert.deepEqual(await h2Request(server.port, clientOpts(a.ca, a.client)), { ok: false, error: 'SELF_SIGNED_CERT_IN_CHAIN' }, 'the old CA no longer vouches for the server');
  // and the old client certificate is refused by the server (the server now trusts only b's CA)
  assert.equal((await h2Request(server.port, clientOpts(b.ca, a.client))).ok, false);
  await logged(server, /foreign CA/);

  // New leaves under the same CA (patu certs generate --keep-ca --force): old and new client certificates both work.
  const reloads = server.logs.filter((l) => /tls reloaded/.test(l)).length;
  const c = await generateCerts({ ca: b.ca });
  writeCertDir(dir, c, { force: true, keepCa: true });
  for (let i = 0; i < 200 && server.logs.filter((l) => /tls reloaded/.test(l)).length === reloads; i++) await sleep(50);
  assert.equal(server.logs.filter((l) => /tls reloaded/.test(l)).length, reloads + 1, server.logs.join('\n'));
  assert.deepEqual(await h2Request(server.port, clientOpts(b.ca, c.client)), { ok: true, status: 200, body: 'ok' });
  assert.deepEqual(await h2Request(server.port, clientOpts(b.ca, b.client)), { ok: true, status: 200, body: 'ok' });

  // A half-written rotation (a key that does not match its certificate) keeps the last good context.
  const d = await generateCerts({ ca: b.ca });
  writeFileSync(join(dir, 'server.key'), d.server.key, { mode: 0o600 });
  await logged(server, /tls reload failed.*server\.key is not the private key of/);
  assert.deepEqual(await h2Request(server.port, clientOpts(b.ca, c.client)), { ok: true, status: 200, body: 'ok' });
  assertNoKeyMaterial(server.logs, [a, b, c, d]);
});

// ------------------------------------------------ the same policy through the real data-plane server

/** A Dataplane that answers Health and nothing else: what is under test is the door, not the house. */
class HealthOnly implements Dataplane {
  calls = 0;
  async health() {
    this.calls++;
    return { ok: true, problems: [] };
  }
  private no(): never {
    throw new DataplaneError('internal', 'not in this test');
  }
  async cni(): Promise<never> { this.no(); }
  async applyServices(): Promise<never> { this.no(); }
  async setAcceleration(): Promise<never> { this.no(); }
  async setPodFlags(): Promise<never> { this.no(); }
  async setNodeSettings(): Promise<never> { this.no(); }
  async applyPolicy(): Promise<never> { this.no(); }
  async status(): Promise<never> { this.no(); }
  async close() {}
}

function recordingLog() {
  const lines: string[] = [];
  const at = (level: string) => (fields: object, msg: string) => void lines.push(JSON.stringify({ level, msg, ...fields }));
  return { lines, log: { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') } };
}

/** The DataplaneError code of a call (or 'ok'). */
async function callCode(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (e) {
    assert.ok(e instanceof DataplaneError, String(e));
    return e.code;
  }
}

for (const kind of ['tcp', 'unix'] as const) test(`through the manager's real server (src/rpc/server.ts) and client, on ${kind}: every refusal is a gRPC UNAVAILABLE for the client and a logged reason for the manager`, async (t) => {
  const dir = scratchDir(t, 'real');
  const sockPath = join(scratchDir(t, 'sock'), 'manager.sock');
  const good = await generateCerts();
  writeCertDir(dir, good);
  const foreign = await generateCerts();
  const expired = await generateCerts({ ca: good.ca, expiredClient: true });
  const noEku = noEkuClientCert(scratchDir(t, 'noeku2'), good.ca);
  const impl = new HealthOnly();
  const { lines, log } = recordingLog();
  const server = await startDataplaneServer({ listen: kind === 'tcp' ? 'tcp://127.0.0.1:0' : `unix://${sockPath}`, tls: serverTlsOptions(loadTlsDir(dir, 'server')), impl, log });
  const target = kind === 'tcp' ? server.port! : sockPath;
  t.after(() => server.close());
  const clients: RemoteDataplane[] = [];
  t.after(async () => { for (const c of clients) await c.close(); });
  const client = (tlsOpts: ConnectionOptions) => {
    const c = connectDataplane({ address: server.address, tls: tlsOpts, log: recordingLog().log, connectTimeoutMs: 10_000 });
    clients.push(c);
    return c;
  };
  const refused = (want: RegExp) => logged({ port: 0, logs: lines, close: async () => {} }, want);

  assert.equal(await callCode(client(clientOpts(good.ca, good.client)).health({ timeoutMs: 15_000 })), 'ok');
  assert.equal(impl.calls, 1);

  const cases: { name: string; opts: ConnectionOptions; reason: RegExp }[] = [
    { name: 'no client certificate', opts: clientOpts(good.ca, undefined), reason: /"reason":"no client certificate"/ },
    { name: 'a foreign CA', opts: clientOpts(good.ca, foreign.client), reason: /foreign CA\) \[UNABLE_TO_VERIFY_LEAF_SIGNATURE\]/ },
    { name: 'an expired certificate', opts: clientOpts(good.ca, expired.client), reason: /expired \[CERT_HAS_EXPIRED\]/ },
    { name: 'a server certificate as the client\'s', opts: clientOpts(good.ca, good.server), reason: /\[INVALID_PURPOSE\]/ },
    { name: 'a certificate without the clientAuth EKU', opts: clientOpts(good.ca, noEku), reason: /CN=no-eku .*has no clientAuth/ },
    { name: 'TLS 1.2', opts: { ...clientOpts(good.ca, good.client), minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2' }, reason: /"reason":"not TLS 1\.3"/ },
  ];
  for (const c of cases) {
    await t.test(`${c.name}: UNAVAILABLE, reason logged, the implementation never called`, async () => {
      assert.equal(await callCode(client(c.opts).health({ timeoutMs: 15_000 })), 'unavailable');
      const line = await refused(c.reason);
      assert.match(line, /"level":"warn".*connection refused/);
      assert.equal(impl.calls, 1);
    });
  }

  await t.test('plaintext: a gRPC client over h2c fails (its stream cancelled: UNAVAILABLE to the agent\'s client); "plaintext" logged', async () => {
    const transport = kind === 'tcp'
      ? createGrpcTransport({ baseUrl: `http://127.0.0.1:${server.port}` })
      : createGrpcTransport({ baseUrl: 'http://localhost', nodeOptions: { createConnection: () => net.connect(sockPath) } });
    const plain = createClient(DataplaneService, transport);
    await assert.rejects(plain.health({}, { timeoutMs: 15_000 }), (e: unknown) => {
      assert.ok(e instanceof ConnectError, String(e));
      assert.ok(e.code === Code.Canceled || e.code === Code.Unavailable, e.message);
      assert.equal(fromCallError(e, 'Health').code, 'unavailable');
      return true;
    });
    await refused(/plaintext/);
    assert.equal(impl.calls, 1);
  });

  await t.test('openssl s_client: certificate_required without a certificate; nothing but a close with a foreign one', async () => {
    const port = target;
    const none = await sClient(port, ['-servername', DEFAULT_SERVER_NAME, '-CAfile', join(dir, 'ca.crt')]);
    assert.match(none.stderr, /tlsv13 alert certificate required/);
    const d = scratchDir(t, 'sc2');
    writeFileSync(join(d, 'c.crt'), foreign.client.cert);
    writeFileSync(join(d, 'c.key'), foreign.client.key, { mode: 0o600 });
    const f = await sClient(port, ['-servername', DEFAULT_SERVER_NAME, '-CAfile', join(dir, 'ca.crt'), '-cert', join(d, 'c.crt'), '-key', join(d, 'c.key')]);
    assert.equal(f.stdout.length, 0);
    const ok = await sClient(port, ['-servername', DEFAULT_SERVER_NAME, '-verify_hostname', DEFAULT_SERVER_NAME, '-CAfile', join(dir, 'ca.crt'), '-cert', join(dir, 'client.crt'), '-key', join(dir, 'client.key')]);
    assert.ok(ok.stdout.length >= 9 && ok.stdout[3] === 0x04, `SETTINGS from the server; s_client: ${ok.stderr}`);
  });

  await t.test('rotation: the manager reloads the directory (setTls), a client with the new files gets in, one with the old CA does not', async () => {
    const watcher = watchTlsDir(dir, () => server.setTls(serverTlsOptions(loadTlsDir(dir, 'server'))), { pollMs: 200, settleMs: 200 });
    t.after(() => watcher.close());
    const next = await generateCerts();
    writeCertDir(dir, next, { force: true });
    await refused(/TLS files reloaded/);
    const rotated = client(clientOpts(good.ca, good.client));
    assert.equal(await callCode(rotated.health({ timeoutMs: 15_000 })), 'unavailable', 'the old CA does not vouch for the new server certificate');
    rotated.setTls(clientOpts(next.ca, next.client));
    assert.equal(await callCode(rotated.health({ timeoutMs: 15_000 })), 'ok', 'the same client, reconnected with the new files');
  });

  await t.test('no log line holds key material', () => {
    assertNoKeyMaterial(lines, [good, foreign, expired, { ca: good.ca, server: good.server, client: noEku }]);
  });
});
