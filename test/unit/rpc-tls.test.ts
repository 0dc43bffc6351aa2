// src/rpc/tls.ts without a network: which files it reads in each layout, what it refuses
// (and that its errors never carry key material), the options it builds, and the watcher
// that drives rotation. The TLS policy against real connections is
// test/integration/tls-rejection.test.ts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateCerts, writeCertDir, type CertSet } from '../../src/rpc/certs.js';
import { clientTlsOptions, loadTlsDir, serverTlsOptions, TlsConfigError, tlsClientErrorReason, watchTlsDir } from '../../src/rpc/tls.js';

function scratch(t: { after: (fn: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'patu-tls-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** The body of every PEM block in `set` (what must never appear in a message). */
function secrets(set: CertSet): string[] {
  return [set.ca.key, set.server.key, set.client.key].map((k) => k.split('\n')[1]!);
}

/**
 * A Secret volume as the kubelet's atomic writer lays it out: the files in a timestamped
 * directory, `..data` -> that directory, and each name -> `..data/<name>`. Returns a
 * function that swaps in new contents the way the kubelet does (new dir, rename over ..data).
 */
function secretVolume(dir: string, files: Record<string, string>, mode = 0o644): (next: Record<string, string>) => void {
  let n = 0;
  const put = (content: Record<string, string>): string => {
    const ts = `..2026_12_02_00_00_0${n++}`;
    mkdirSync(join(dir, ts));
    for (const [name, body] of Object.entries(content)) {
      writeFileSync(join(dir, ts, name), body);
      chmodSync(join(dir, ts, name), mode);
    }
    return ts;
  };
  symlinkSync(put(files), join(dir, '..data'));
  for (const name of Object.keys(files)) symlinkSync(join('..data', name), join(dir, name));
  return (next) => {
    const ts = put(next);
    symlinkSync(ts, join(dir, '..data_tmp'));
    renameSync(join(dir, '..data_tmp'), join(dir, '..data'));
  };
}

test('patu layout: each role reads its own pair and the CA', async (t) => {
  const dir = scratch(t);
  const set = await generateCerts();
  writeCertDir(dir, set);
  const s = loadTlsDir(dir, 'server');
  assert.equal(s.layout, 'patu');
  assert.equal(s.cert.toString(), set.server.cert);
  assert.equal(s.key.toString(), set.server.key);
  assert.equal(s.ca.toString(), set.ca.cert);
  const c = loadTlsDir(dir, 'client');
  assert.equal(c.cert.toString(), set.client.cert);
  assert.equal(c.key.toString(), set.client.key);
  assert.equal(c.dir, dir);
});

test('cert-manager Secret layout through ..data symlinks, with the kubelet\'s default 0644 modes', async (t) => {
  const dir = scratch(t);
  const set = await generateCerts();
  secretVolume(dir, { 'ca.crt': set.ca.cert, 'tls.crt': set.client.cert, 'tls.key': set.client.key });
  const f = loadTlsDir(dir, 'client');
  assert.equal(f.layout, 'secret');
  assert.equal(f.cert.toString(), set.client.cert);
  assert.equal(f.key.toString(), set.client.key);
  // The same layout as a plain directory (no ..data): the key's 0644 is refused.
  const plain = scratch(t);
  for (const [n, b] of [['ca.crt', set.ca.cert], ['tls.crt', set.server.cert], ['tls.key', set.server.key]] as const) writeFileSync(join(plain, n), b, { mode: 0o644 });
  chmodSync(join(plain, 'tls.key'), 0o644);
  assert.throws(() => loadTlsDir(plain, 'server'), /tls\.key: mode 0644 lets group or others read the private key/);
  chmodSync(join(plain, 'tls.key'), 0o600);
  assert.equal(loadTlsDir(plain, 'server').layout, 'secret');
});

test('refused: group/other-readable key, missing files, a key of another certificate, garbage; never key material in the message', async (t) => {
  const dir = scratch(t);
  const set = await generateCerts();
  writeCertDir(dir, set);
  const other = await generateCerts();
  const leaks = [...secrets(set), ...secrets(other)];
  const refuse = (role: 'server' | 'client', want: RegExp): void => {
    assert.throws(() => loadTlsDir(dir, role), (e: unknown) => {
      assert.ok(e instanceof TlsConfigError, String(e));
      assert.match(e.message, want);
      for (const s of leaks) assert.ok(!e.message.includes(s), 'key material in the message');
      return true;
    });
  };

  chmodSync(join(dir, 'server.key'), 0o640);
  refuse('server', /server\.key: mode 0640 lets group or others read the private key; chmod 600/);
  chmodSync(join(dir, 'server.key'), 0o600);

  writeFileSync(join(dir, 'server.key'), other.server.key, { mode: 0o600 });
  refuse('server', /server\.key is not the private key of .*server\.crt/);

  writeFileSync(join(dir, 'server.key'), `junk ${set.server.key.slice(30, 90)}`, { mode: 0o600 });
  refuse('server', /server\.key: not a PEM private key/);

  writeFileSync(join(dir, 'server.crt'), set.server.key, { mode: 0o644 });
  refuse('server', /server\.crt: not a PEM certificate/);

  unlinkSync(join(dir, 'client.key'));
  refuse('client', /client\.key: missing/);

  unlinkSync(join(dir, 'ca.crt'));
  writeCertDir(join(dir, 'x'), set);
  unlinkSync(join(dir, 'x', 'ca.crt'));
  assert.throws(() => loadTlsDir(join(dir, 'x'), 'client'), /x\/ca\.crt: missing/);

  const empty = scratch(t);
  assert.throws(() => loadTlsDir(empty, 'server'), /neither server\.crt \+ server\.key .* nor tls\.crt \+ tls\.key/);
  assert.throws(() => loadTlsDir(join(empty, 'nope'), 'server'), /TLS directory .*nope: missing/);
});

test('options: TLS 1.3 only both ways, client certificate required, the server name checked whatever the address', async (t) => {
  const dir = scratch(t);
  writeCertDir(dir, await generateCerts({ serverName: 'mgr.patu' }));
  const s = serverTlsOptions(loadTlsDir(dir, 'server'));
  assert.equal(s.minVersion, 'TLSv1.3');
  assert.equal(s.maxVersion, 'TLSv1.3');
  assert.equal(s.requestCert, true);
  assert.equal(s.rejectUnauthorized, true);
  const files = loadTlsDir(dir, 'client');
  const c = clientTlsOptions(files, 'mgr.patu');
  assert.equal(c.minVersion, 'TLSv1.3');
  assert.equal(c.maxVersion, 'TLSv1.3');
  assert.equal(c.rejectUnauthorized, true);
  assert.equal(c.servername, 'mgr.patu');
  const { X509Certificate } = await import('node:crypto');
  const peer = new X509Certificate(readFileSync(join(dir, 'server.crt'))).toLegacyObject();
  assert.equal(c.checkServerIdentity!('10.0.0.5', peer), undefined, 'dialled by address, named mgr.patu: accepted');
  assert.match(String(clientTlsOptions(files, 'other.patu').checkServerIdentity!('mgr.patu', peer)), /does not match certificate's altnames/);
  // An IP server name is checked but not sent as SNI (RFC 6066 forbids it).
  const ip = clientTlsOptions(files, '127.0.0.1');
  assert.equal(ip.servername, undefined);
  assert.equal(ip.checkServerIdentity!('localhost', peer), undefined);
});

test('tlsClientErrorReason: the socket\'s verify error first, then what OpenSSL said', () => {
  const err = (code: string, message = 'x'): Error => Object.assign(new Error(message), { code });
  const sock = (authorizationError: string) => ({ authorizationError }) as never;
  assert.match(tlsClientErrorReason(err('ECONNRESET', 'socket hang up'), sock('CERT_HAS_EXPIRED')), /expired \[CERT_HAS_EXPIRED\]/);
  assert.match(tlsClientErrorReason(err('ECONNRESET'), sock('UNABLE_TO_VERIFY_LEAF_SIGNATURE')), /foreign CA/);
  assert.match(tlsClientErrorReason(err('ECONNRESET'), sock('INVALID_PURPOSE')), /no clientAuth/);
  assert.equal(tlsClientErrorReason(err('ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE')), 'no client certificate');
  assert.equal(tlsClientErrorReason(err('ERR_SSL_UNSUPPORTED_PROTOCOL')), 'not TLS 1.3');
  assert.match(tlsClientErrorReason(err('ERR_SSL_WRONG_VERSION_NUMBER')), /plaintext/);
  assert.match(tlsClientErrorReason(err('ERR_SSL_X', 'C0:error:0A0000F4:SSL routines:tls_x:some reason:../deps/openssl/ssl/x.c:1:\n')), /TLS handshake failed: some reason \[ERR_SSL_X\]/);
});

test('watchTlsDir: one call per settled change (five files written back to back), none without a change; a Secret ..data swap is seen', async (t) => {
  const dir = scratch(t);
  const set = await generateCerts();
  writeCertDir(dir, set);
  let calls = 0;
  const w = watchTlsDir(dir, () => { calls++; }, { pollMs: 100, settleMs: 150 });
  t.after(() => w.close());
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  const waitFor = async (n: number) => {
    for (let i = 0; i < 100 && calls < n; i++) await sleep(50);
  };
  await sleep(400);
  assert.equal(calls, 0, 'nothing changed');

  // A rotation that writes five files one after the other (five fs events): one call, after the
  // last. Written without yielding, so no timer can run between them whatever the machine's load.
  const next = await generateCerts();
  for (const f of ['ca.crt', 'server.key', 'server.crt', 'client.key', 'client.crt']) {
    const part = next[f.split('.')[0] as keyof CertSet];
    writeFileSync(join(dir, f), f.endsWith('.key') ? part.key : part.cert);
  }
  await waitFor(1);
  await sleep(500);
  assert.equal(calls, 1);
  assert.equal(loadTlsDir(dir, 'server').cert.toString(), next.server.cert, 'settled on the whole new set');

  // The kubelet's swap of ..data
  const sdir = scratch(t);
  const swap = secretVolume(sdir, { 'ca.crt': set.ca.cert, 'tls.crt': set.server.cert, 'tls.key': set.server.key });
  let scalls = 0;
  const sw = watchTlsDir(sdir, () => { scalls++; }, { pollMs: 100, settleMs: 150 });
  t.after(() => sw.close());
  swap({ 'ca.crt': next.ca.cert, 'tls.crt': next.server.cert, 'tls.key': next.server.key });
  for (let i = 0; i < 100 && scalls < 1; i++) await sleep(50);
  await sleep(400);
  assert.equal(scalls, 1);
  assert.equal(loadTlsDir(sdir, 'server').cert.toString(), next.server.cert);

  w.close();
  writeFileSync(join(dir, 'ca.crt'), set.ca.cert);
  await sleep(500);
  assert.equal(calls, 1, 'closed: no more calls');
});
