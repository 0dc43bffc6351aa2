// `patu certs generate`: a CA plus one server and one client certificate for split mode,
// ECDSA P-256, made with @peculiar/x509 on node:crypto's WebCrypto (no hand-made ASN.1).
//
// Exclusive extended key usages: the server's certificate says serverAuth only, the
// client's clientAuth only, so neither can stand in for the other (the manager refuses a
// server certificate presented by a client: src/rpc/tls.ts). The CA: basicConstraints
// CA:true, pathLen 0, keyCertSign + cRLSign. Keys are PKCS#8 PEM, written 0600.
//
// Only `patu certs` and tests load this module (and x509 with it): the agent never does.
import './reflect-metadata.js';
import * as x509 from '@peculiar/x509';
import { randomBytes, webcrypto } from 'node:crypto';
import { closeSync, existsSync, fchmodSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, writeSync, constants as fsc } from 'node:fs';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { PatuError } from '../errors.js';
import { DEFAULTS } from '../defaults.js';

export class CertsError extends PatuError {
  readonly code = 'CERTS';
}

const crypto = webcrypto as unknown as Crypto;
const ALG = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
const DAY_MS = 86_400_000;
/** Certificates start a little in the past: a node whose clock lags must not see them as not yet valid. */
const BACKDATE_MS = 5 * 60_000;

export const CERT_FILES = ['ca.crt', 'ca.key', 'server.crt', 'server.key', 'client.crt', 'client.key'] as const;
export type CertFile = (typeof CERT_FILES)[number];

/** A PEM certificate and its PKCS#8 PEM key. */
export interface CertPair {
  cert: string;
  key: string;
}

export interface CertSet {
  ca: CertPair;
  server: CertPair;
  client: CertPair;
}

export interface GenerateOptions {
  /** Validity of the server and client certificates, in days (default 365). */
  days?: number;
  /** Validity of a new CA, in days (default 3650). */
  caDays?: number;
  /** The name the agent checks (DNS SAN and CN of the server certificate). */
  serverName?: string;
  /** More server SANs: 'IP:10.0.0.5', 'DNS:manager.example', or bare (an address is an IP). */
  sans?: string[];
  /** Reuse this CA (rotating the leaves without touching what trusts the CA). */
  ca?: CertPair;
  /** The clock (tests). */
  now?: Date;
  /** Tests: a client certificate that expired yesterday. */
  expiredClient?: boolean;
  /** Tests: the server's certificate and key copied as the client's (a serverAuth-only client). */
  serverCertAsClient?: boolean;
}

type San = { type: 'dns' | 'ip'; value: string };

/** 'IP:1.2.3.4', 'DNS:name', or a bare address or name. */
export function parseSan(s: string): San {
  const m = /^(ip|dns):(.*)$/i.exec(s.trim());
  const kind = m?.[1]?.toLowerCase();
  const value = (m ? m[2]! : s).trim();
  if (value === '') throw new CertsError(`--san ${JSON.stringify(s)}: empty`);
  if (kind === 'ip' || (!kind && isIP(value) !== 0)) {
    if (isIP(value) === 0) throw new CertsError(`--san ${JSON.stringify(s)}: not an IP address`);
    return { type: 'ip', value };
  }
  // RFC 1123 labels, a leading wildcard label allowed.
  if (!/^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/i.test(value) || value.length > 253) {
    throw new CertsError(`--san ${JSON.stringify(s)}: not a DNS name (or write IP:<address>)`);
  }
  return { type: 'dns', value: value.toLowerCase() };
}

function serial(): string {
  const b = randomBytes(16);
  b[0] = b[0]! & 0x7f; // positive
  if (b[0] === 0) b[0] = 1; // and no leading zero byte to strip
  return b.toString('hex');
}

async function newKeys(): Promise<CryptoKeyPair> {
  return (await crypto.subtle.generateKey(ALG, true, ['sign', 'verify'])) as CryptoKeyPair;
}

async function keyPem(key: CryptoKey): Promise<string> {
  const der = await crypto.subtle.exportKey('pkcs8', key);
  return x509.PemConverter.encode(der, 'PRIVATE KEY');
}

async function importCa(ca: CertPair): Promise<{ cert: x509.X509Certificate; key: CryptoKey }> {
  const cert = new x509.X509Certificate(ca.cert);
  const der = x509.PemConverter.decodeFirst(ca.key);
  let key: CryptoKey;
  try {
    key = await crypto.subtle.importKey('pkcs8', der, ALG, false, ['sign']);
  } catch (e) {
    throw new CertsError('ca.key: not an ECDSA P-256 PKCS#8 private key', { cause: e });
  }
  const bc = cert.getExtension(x509.BasicConstraintsExtension);
  if (!bc?.ca) throw new CertsError('ca.crt: not a CA certificate (basicConstraints CA:true missing)');
  return { cert, key };
}

async function makeCa(now: Date, days: number): Promise<{ cert: x509.X509Certificate; key: CryptoKey; pair: CertPair }> {
  const keys = await newKeys();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial(),
    // A name of its own: OpenSSL finds issuers by name, and two CAs both called "patu CA" turn
    // a foreign CA's certificate into a confusing SELF_SIGNED_CERT_IN_CHAIN instead of UNABLE_TO_VERIFY_LEAF_SIGNATURE.
    name: `CN=patu CA ${randomBytes(4).toString('hex')}`,
    notBefore: new Date(now.getTime() - BACKDATE_MS),
    notAfter: new Date(now.getTime() + days * DAY_MS),
    keys,
    signingAlgorithm: ALG,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey, false, crypto),
    ],
  }, crypto);
  return { cert, key: keys.privateKey, pair: { cert: cert.toString('pem'), key: await keyPem(keys.privateKey) } };
}

async function issue(
  ca: { cert: x509.X509Certificate; key: CryptoKey },
  leaf: { cn: string; eku: x509.ExtendedKeyUsage; sans: San[]; notBefore: Date; notAfter: Date },
): Promise<CertPair> {
  const keys = await newKeys();
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serial(),
    subject: `CN=${leaf.cn}`,
    issuer: ca.cert.subject,
    notBefore: leaf.notBefore,
    notAfter: leaf.notAfter,
    publicKey: keys.publicKey,
    signingKey: ca.key,
    signingAlgorithm: ALG,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      // ECDSA keys sign (the TLS 1.3 CertificateVerify); they never encipher.
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([leaf.eku], false),
      ...(leaf.sans.length > 0 ? [new x509.SubjectAlternativeNameExtension(leaf.sans, false)] : []),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey, false, crypto),
      await x509.AuthorityKeyIdentifierExtension.create(ca.cert.publicKey, false, crypto),
    ],
  }, crypto);
  return { cert: cert.toString('pem'), key: await keyPem(keys.privateKey) };
}

/** A CA (new, or `opts.ca`), a server and a client certificate signed by it. */
export async function generateCerts(opts: GenerateOptions = {}): Promise<CertSet> {
  const now = opts.now ?? new Date();
  const days = opts.days ?? 365;
  const caDays = opts.caDays ?? 3650;
  for (const [name, v] of [['--days', days], ['--ca-days', caDays]] as const) {
    if (!Number.isInteger(v) || v < 1 || v > 36_500) throw new CertsError(`${name}: want whole days from 1 to 36500, got ${v}`);
  }
  const serverName = opts.serverName ?? DEFAULTS.managerServerName;
  const first = parseSan(serverName);
  const sans: San[] = [];
  const seen = new Set<string>();
  for (const s of [first, { type: 'dns', value: 'localhost' } as San, { type: 'ip', value: '127.0.0.1' } as San, { type: 'ip', value: '::1' } as San, ...(opts.sans ?? []).map(parseSan)]) {
    const k = `${s.type}:${s.value}`;
    if (!seen.has(k)) {
      seen.add(k);
      sans.push(s);
    }
  }

  let ca: { cert: x509.X509Certificate; key: CryptoKey };
  let caPair: CertPair;
  if (opts.ca) {
    ca = await importCa(opts.ca);
    caPair = opts.ca;
  } else {
    const made = await makeCa(now, caDays);
    ca = made;
    caPair = made.pair;
  }
  const notBefore = new Date(now.getTime() - BACKDATE_MS);
  const notAfter = new Date(now.getTime() + days * DAY_MS);
  if (notAfter > ca.cert.notAfter) {
    throw new CertsError(`the certificates would outlive their CA (it expires ${ca.cert.notAfter.toISOString()}): lower --days, or make a new CA`);
  }
  const server = await issue(ca, { cn: serverName, eku: x509.ExtendedKeyUsage.serverAuth, sans, notBefore, notAfter });
  const client = opts.serverCertAsClient
    ? server
    : await issue(ca, {
      cn: 'patu-agent',
      eku: x509.ExtendedKeyUsage.clientAuth,
      sans: [],
      ...(opts.expiredClient
        ? { notBefore: new Date(now.getTime() - 2 * DAY_MS), notAfter: new Date(now.getTime() - DAY_MS) }
        : { notBefore, notAfter }),
    });
  return { ca: caPair, server, client };
}

/** The file each part goes to, and its mode. */
export function certFiles(set: CertSet): { name: CertFile; content: string; mode: number }[] {
  return [
    { name: 'ca.crt', content: set.ca.cert, mode: 0o644 },
    { name: 'ca.key', content: set.ca.key, mode: 0o600 },
    { name: 'server.crt', content: set.server.cert, mode: 0o644 },
    { name: 'server.key', content: set.server.key, mode: 0o600 },
    { name: 'client.crt', content: set.client.cert, mode: 0o644 },
    { name: 'client.key', content: set.client.key, mode: 0o600 },
  ];
}

/** Writes `content` to `path` through a temporary file in the same directory: readers see the old or the new file, whole. */
function writeAtomic(path: string, content: string, mode: number): void {
  const tmp = `${path}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  const fd = openSync(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, mode);
  try {
    fchmodSync(fd, mode); // whatever the umask said
    const buf = Buffer.from(content);
    let n = 0;
    while (n < buf.length) n += writeSync(fd, buf, n);
    fsyncSync(fd);
  } catch (e) {
    closeSync(fd);
    rmSync(tmp, { force: true });
    throw e;
  }
  closeSync(fd);
  try {
    renameSync(tmp, path);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
}

export interface WriteOptions {
  /** Replace files that exist. */
  force?: boolean;
  /** Leave ca.crt and ca.key as they are (the set's CA was read from them). */
  keepCa?: boolean;
}

/**
 * Writes the set into `dir` (made 0700 if missing). Without force, refuses before writing
 * anything when any target exists. Certificates 0644, keys 0600, each renamed into place.
 * The CA's key goes first and the leaves' keys before their certificates, so a watcher sees
 * each leaf's new key no later than its certificate (src/rpc/tls.ts waits for both anyway).
 */
export function writeCertDir(dir: string, set: CertSet, opts: WriteOptions = {}): string[] {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const files = certFiles(set).filter((f) => !(opts.keepCa && f.name.startsWith('ca.')));
  if (!opts.force) {
    const there = files.filter((f) => existsSync(join(dir, f.name))).map((f) => f.name);
    if (there.length > 0) throw new CertsError(`${dir}: ${there.join(', ')} already there; --force replaces them`);
  }
  const order: CertFile[] = ['ca.key', 'ca.crt', 'server.key', 'server.crt', 'client.key', 'client.crt'];
  const written: string[] = [];
  for (const name of order) {
    const f = files.find((x) => x.name === name);
    if (!f) continue;
    const path = join(dir, f.name);
    writeAtomic(path, f.content, f.mode);
    written.push(path);
  }
  return written;
}

/** The CA in `dir` (ca.crt + ca.key), for --keep-ca. */
export function readCa(dir: string): CertPair {
  const read = (name: string): string => {
    try {
      return readFileSync(join(dir, name), 'utf8');
    } catch (e) {
      throw new CertsError(`--keep-ca: ${join(dir, name)} cannot be read`, { cause: e });
    }
  };
  return { cert: read('ca.crt'), key: read('ca.key') };
}
