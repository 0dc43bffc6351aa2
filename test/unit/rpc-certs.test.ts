// `patu certs generate` (src/rpc/certs.ts): what it writes, read back with node:crypto's own
// X509Certificate (not the library that wrote it) and checked against openssl's verifier.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { CertsError, generateCerts, parseSan, readCa, writeCertDir } from '../../src/rpc/certs.js';
import { REPO_ROOT } from '../helpers/cni.js';

const SERVER_AUTH = '1.3.6.1.5.5.7.3.1';
const CLIENT_AUTH = '1.3.6.1.5.5.7.3.2';
const DAY = 86_400_000;

function scratch(t: { after: (fn: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'patu-certs-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** openssl's text dump of one certificate (key usage is not in node's X509Certificate). */
function opensslText(pem: string): string {
  const r = spawnSync('openssl', ['x509', '-noout', '-text'], { input: pem, encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout;
}

function opensslVerify(dir: string, cert: string, purpose: 'sslserver' | 'sslclient'): { ok: boolean; out: string } {
  const r = spawnSync('openssl', ['verify', '-CAfile', join(dir, 'ca.crt'), '-purpose', purpose, join(dir, cert)], { encoding: 'utf8' });
  return { ok: r.status === 0, out: r.stdout + r.stderr };
}

test('generate: CA, server and client with exclusive EKUs, SANs, key usage, validity; openssl agrees', async (t) => {
  const dir = scratch(t);
  const now = new Date();
  const set = await generateCerts({ days: 30, sans: ['IP:10.0.0.5', 'DNS:manager.example', '192.0.2.7'], now });
  writeCertDir(dir, set);

  const ca = new X509Certificate(readFileSync(join(dir, 'ca.crt')));
  const server = new X509Certificate(readFileSync(join(dir, 'server.crt')));
  const client = new X509Certificate(readFileSync(join(dir, 'client.crt')));

  assert.equal(ca.ca, true);
  assert.equal(server.ca, false);
  assert.equal(client.ca, false);
  assert.ok(server.checkIssued(ca) && server.verify(ca.publicKey), 'server signed by the CA');
  assert.ok(client.checkIssued(ca) && client.verify(ca.publicKey), 'client signed by the CA');
  assert.equal(ca.publicKey.asymmetricKeyDetails?.namedCurve, 'prime256v1');
  assert.equal(server.publicKey.asymmetricKeyDetails?.namedCurve, 'prime256v1');
  assert.equal(client.publicKey.asymmetricKeyDetails?.namedCurve, 'prime256v1');

  // node's keyUsage is the extended key usage list.
  assert.deepEqual(server.keyUsage, [SERVER_AUTH]);
  assert.deepEqual(client.keyUsage, [CLIENT_AUTH]);
  assert.equal(ca.keyUsage, undefined, 'the CA has no EKU');

  assert.equal(server.subjectAltName, 'DNS:patu-manager, DNS:localhost, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1, IP Address:10.0.0.5, DNS:manager.example, IP Address:192.0.2.7');
  assert.equal(client.subjectAltName, undefined);
  assert.ok(server.checkHost('patu-manager'));
  assert.ok(server.checkIP('::1'));
  assert.equal(server.checkHost('evil.example'), undefined);

  const caText = opensslText(set.ca.cert);
  assert.match(caText, /Basic Constraints: critical\s+CA:TRUE, pathlen:0/);
  assert.match(caText, /Key Usage: critical\s+Certificate Sign, CRL Sign/);
  for (const leaf of [set.server.cert, set.client.cert]) {
    const text = opensslText(leaf);
    assert.match(text, /Basic Constraints: critical\s+CA:FALSE/);
    assert.match(text, /Key Usage: critical\s+Digital Signature\n/);
    assert.match(text, /Authority Key Identifier/);
  }

  // validity: --days for the leaves, backdated a few minutes for clock skew; the CA lasts longer
  const validTo = Date.parse(server.validTo);
  assert.ok(Math.abs(validTo - (now.getTime() + 30 * DAY)) < 2000, server.validTo);
  assert.ok(Date.parse(server.validFrom) < now.getTime() && Date.parse(server.validFrom) > now.getTime() - 10 * 60_000, server.validFrom);
  assert.ok(Date.parse(ca.validTo) > now.getTime() + 3000 * DAY, ca.validTo);

  // keys: PKCS#8 PEM, P-256, each belongs to its certificate
  for (const [crt, key] of [[server, 'server.key'], [client, 'client.key'], [ca, 'ca.key']] as const) {
    const pem = readFileSync(join(dir, key), 'utf8');
    assert.match(pem, /^-----BEGIN PRIVATE KEY-----\n/);
    const k = createPrivateKey(pem);
    assert.equal(k.asymmetricKeyType, 'ec');
    assert.ok(crt.checkPrivateKey(k), key);
  }

  // openssl's own purpose checks: each leaf is good for its role only
  assert.ok(opensslVerify(dir, 'server.crt', 'sslserver').ok);
  assert.ok(opensslVerify(dir, 'client.crt', 'sslclient').ok);
  assert.match(opensslVerify(dir, 'server.crt', 'sslclient').out, /(unsuitable|unsupported) certificate purpose/);
  assert.match(opensslVerify(dir, 'client.crt', 'sslserver').out, /(unsuitable|unsupported) certificate purpose/);
});

test('write: keys 0600 and certificates 0644 whatever the umask, directory 0700, no temporary files left', async (t) => {
  const dir = join(scratch(t), 'tls');
  const old = process.umask(0o000);
  try {
    writeCertDir(dir, await generateCerts());
  } finally {
    process.umask(old);
  }
  assert.equal(statSync(dir).mode & 0o777, 0o700);
  for (const f of ['ca.key', 'server.key', 'client.key']) assert.equal(statSync(join(dir, f)).mode & 0o777, 0o600, f);
  for (const f of ['ca.crt', 'server.crt', 'client.crt']) assert.equal(statSync(join(dir, f)).mode & 0o777, 0o644, f);
  const { readdirSync } = await import('node:fs');
  assert.deepEqual(readdirSync(dir).sort(), ['ca.crt', 'ca.key', 'client.crt', 'client.key', 'server.crt', 'server.key']);
});

test('write: refuses to overwrite without force, and then writes nothing at all', async (t) => {
  const dir = scratch(t);
  writeFileSync(join(dir, 'client.key'), 'precious');
  const set = await generateCerts();
  assert.throws(() => writeCertDir(dir, set), (e: unknown) => e instanceof CertsError && /client\.key already there; --force/.test(e.message));
  const { readdirSync } = await import('node:fs');
  assert.deepEqual(readdirSync(dir), ['client.key'], 'nothing written');
  assert.equal(readFileSync(join(dir, 'client.key'), 'utf8'), 'precious');
  writeCertDir(dir, set, { force: true });
  assert.equal(readFileSync(join(dir, 'client.key'), 'utf8'), set.client.key);
});

test('--keep-ca: new leaves signed by the CA already there, which is not rewritten', async (t) => {
  const dir = scratch(t);
  const first = await generateCerts();
  writeCertDir(dir, first);
  const caBefore = statSync(join(dir, 'ca.crt')).mtimeMs;
  const second = await generateCerts({ ca: readCa(dir) });
  writeCertDir(dir, second, { force: true, keepCa: true });
  assert.equal(statSync(join(dir, 'ca.crt')).mtimeMs, caBefore);
  assert.equal(readFileSync(join(dir, 'ca.crt'), 'utf8'), first.ca.cert);
  assert.notEqual(second.server.cert, first.server.cert);
  const ca = new X509Certificate(first.ca.cert);
  assert.ok(new X509Certificate(second.client.cert).verify(ca.publicKey));
  // a leaf may not outlive its CA
  await assert.rejects(generateCerts({ ca: readCa(dir), days: 5000 }), /outlive their CA/);
});

test('test variants: an expired client, a foreign CA, a server certificate as the client', async () => {
  const now = new Date();
  const expired = await generateCerts({ expiredClient: true, now });
  const c = new X509Certificate(expired.client.cert);
  assert.ok(Date.parse(c.validTo) < now.getTime(), c.validTo);
  assert.ok(Date.parse(new X509Certificate(expired.server.cert).validTo) > now.getTime());

  const swapped = await generateCerts({ serverCertAsClient: true });
  assert.equal(swapped.client.cert, swapped.server.cert);
  assert.deepEqual(new X509Certificate(swapped.client.cert).keyUsage, [SERVER_AUTH]);

  const a = await generateCerts();
  const b = await generateCerts();
  const caA = new X509Certificate(a.ca.cert);
  assert.equal(new X509Certificate(b.client.cert).verify(caA.publicKey), false, 'another run, another CA');
});

test('SANs: IP and DNS forms, bare addresses, bad ones refused', () => {
  assert.deepEqual(parseSan('IP:10.0.0.1'), { type: 'ip', value: '10.0.0.1' });
  assert.deepEqual(parseSan('ip:fd00::1'), { type: 'ip', value: 'fd00::1' });
  assert.deepEqual(parseSan('2001:db8::5'), { type: 'ip', value: '2001:db8::5' });
  assert.deepEqual(parseSan('DNS:Manager.Example'), { type: 'dns', value: 'manager.example' });
  assert.deepEqual(parseSan('*.patu.svc'), { type: 'dns', value: '*.patu.svc' });
  for (const bad of ['IP:10.0.0.300', 'DNS:', 'DNS:a b', 'DNS:-x.example', 'DNS:a..b', '']) {
    assert.throws(() => parseSan(bad), CertsError, bad);
  }
});

test('patu certs generate: the command line writes the set, refuses a second run, --force and --keep-ca, --help', (t) => {
  const dir = join(scratch(t), 'out');
  const cli = (args: string[]) => spawnSync(process.execPath, [join(REPO_ROOT, 'dist', 'src', 'cli', 'index.js'), 'certs', 'generate', ...args], { encoding: 'utf8', timeout: 60_000 });
  let r = cli(['--dir', dir, '--days', '10', '--server-name', 'mgr.patu', '--san', 'IP:10.9.8.7', '--json']);
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout) as { written: string[] };
  assert.equal(out.written.length, 6);
  const server = new X509Certificate(readFileSync(join(dir, 'server.crt')));
  assert.match(server.subjectAltName ?? '', /^DNS:mgr\.patu, DNS:localhost, .*IP Address:10\.9\.8\.7$/);
  assert.match(server.subject, /CN=mgr\.patu/);

  r = cli(['--dir', dir]);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /already there; --force replaces them/);

  const ca = readFileSync(join(dir, 'ca.crt'), 'utf8');
  r = cli(['--dir', dir, '--keep-ca', '--force']);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(readFileSync(join(dir, 'ca.crt'), 'utf8'), ca);
  assert.match(r.stdout, /CA kept/);

  r = cli(['--dir', dir, '--days', '0']);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /--days: want whole days/);

  r = cli(['--help']);
  assert.equal(r.status, 0);
  for (const want of [/--server-name/, /--san/, /--keep-ca/, /serverAuth only/, /clientAuth only/, /tls\.crt/]) assert.match(r.stdout, want);
});
