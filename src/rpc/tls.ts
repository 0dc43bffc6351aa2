// Mutual TLS between `patu agent --manager` (client) and `patu manager` (server): which
// files, which options, which client certificates the server accepts, and when the files
// changed. Node's own TLS (OpenSSL) does the cryptography; this module only decides policy.
//
// Files: a directory in one of two layouts, chosen per role:
//   - patu's (`patu certs generate`): ca.crt + server.crt/server.key or client.crt/client.key;
//   - cert-manager's Secret: ca.crt + tls.crt/tls.key, usually a Kubernetes Secret volume,
//     whose files are symlinks through `..data` (the kubelet swaps that link to rotate).
// The role's own pair wins when both are present (a `patu certs generate` dir holds both roles).
//
// Key file modes: a key that group or others may read is refused in patu's layout
// (`patu certs generate` writes 0600; looser is someone's mistake). In a Secret volume
// (the directory has `..data`) it is accepted: the kubelet sets the modes from the
// volume's defaultMode (0644 unless the manifest says otherwise), the volume is visible
// only to the containers that mount it, and refusing would break cert-manager's default.
// The README tells to set defaultMode: 0400 anyway.
//
// How a rejected client looks (measured with Node 20 / OpenSSL 3, TLS 1.3):
//   - no certificate: OpenSSL fails the handshake and sends certificate_required (alert 116);
//     the server's 'tlsClientError' fires with ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE.
//   - a foreign CA, an expired certificate, a serverAuth-only certificate: Node's verify
//     callback accepts every chain and judges it after the handshake, so no alert is sent:
//     with rejectUnauthorized the server destroys the socket before 'secureConnection', the
//     client sees EOF on its first read (gRPC: UNAVAILABLE), and the server's
//     'tlsClientError' fires (ECONNRESET, "socket hang up") with the TLSSocket whose
//     authorizationError is UNABLE_TO_VERIFY_LEAF_SIGNATURE / CERT_HAS_EXPIRED / INVALID_PURPOSE.
//   So a server logs rejections from 'tlsClientError' with tlsClientErrorReason(err, sock),
//   and checks every accepted connection with clientCertProblem(sock) ('secureConnection').
import { X509Certificate, createHash, createPrivateKey } from 'node:crypto';
import { closeSync, constants as fsc, fstatSync, openSync, readSync, statSync, watch, existsSync, lstatSync, type FSWatcher } from 'node:fs';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { checkServerIdentity, type ConnectionOptions, type PeerCertificate, type TLSSocket, type TlsOptions } from 'node:tls';
import { PatuError, errnoOf, messageOf } from '../errors.js';
import { DEFAULTS } from '../defaults.js';

export type TlsRole = 'server' | 'client';

export interface TlsFiles {
  ca: Buffer;
  cert: Buffer;
  key: Buffer;
  /** The directory the files were read from. */
  dir: string;
  /** 'patu': ca.crt + <role>.crt/<role>.key; 'secret': ca.crt + tls.crt/tls.key (cert-manager). */
  layout: 'patu' | 'secret';
}

export class TlsConfigError extends PatuError {
  readonly code = 'TLS_CONFIG';
}

/** The clientAuth extended key usage, which the server requires of every client certificate. */
export const EKU_CLIENT_AUTH = '1.3.6.1.5.5.7.3.2';
export const EKU_SERVER_AUTH = '1.3.6.1.5.5.7.3.1';

/** PEM files are small; a bigger one is not a certificate (and is not read whole). */
const MAX_PEM_BYTES = 256 * 1024;

/** Every file name either layout uses: what watchTlsDir fingerprints. */
const TLS_FILE_NAMES = ['ca.crt', 'server.crt', 'server.key', 'client.crt', 'client.key', 'tls.crt', 'tls.key'] as const;

/** A regular file (symlinks followed), at most MAX_PEM_BYTES. Errors name the file, never its content. */
function readPem(path: string): Buffer {
  let fd: number;
  try {
    fd = openSync(path, fsc.O_RDONLY | fsc.O_NONBLOCK);
  } catch (e) {
    const errno = errnoOf(e);
    throw new TlsConfigError(`${path}: ${errno === 'ENOENT' ? 'missing' : `cannot read (${errno ?? messageOf(e)})`}`, { cause: e });
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new TlsConfigError(`${path}: not a regular file`);
    if (st.size > MAX_PEM_BYTES) throw new TlsConfigError(`${path}: ${st.size} bytes; a PEM file here may hold at most ${MAX_PEM_BYTES}`);
    const buf = Buffer.alloc(st.size);
    let n = 0;
    while (n < buf.length) {
      const got = readSync(fd, buf, n, buf.length - n, null);
      if (got === 0) break;
      n += got;
    }
    return buf.subarray(0, n);
  } catch (e) {
    if (e instanceof TlsConfigError) throw e;
    throw new TlsConfigError(`${path}: cannot read (${errnoOf(e) ?? messageOf(e)})`, { cause: e });
  } finally {
    closeSync(fd);
  }
}

/** Whether `dir` is a Kubernetes Secret/projected volume: the kubelet's atomic writer keeps a `..data` symlink. */
function isSecretVolume(dir: string): boolean {
  try {
    return lstatSync(join(dir, '..data')).isSymbolicLink();
  } catch {
    return false;
  }
}

function parseCert(path: string, pem: Buffer): X509Certificate {
  // Only the error's kind is kept: Node's parse errors carry no content, but say nothing useful either.
  try {
    return new X509Certificate(pem);
  } catch (e) {
    throw new TlsConfigError(`${path}: not a PEM certificate`, { cause: e });
  }
}

/**
 * Reads the TLS files of `role` from `dir` (see the layouts above), checks that each
 * certificate parses, that the key parses and belongs to the certificate, and that the key
 * is not readable by group/other outside a Secret volume. Throws TlsConfigError naming the
 * file; no message ever contains key material.
 */
export function loadTlsDir(dir: string, role: TlsRole): TlsFiles {
  let st;
  try {
    st = statSync(dir);
  } catch (e) {
    throw new TlsConfigError(`TLS directory ${dir}: ${errnoOf(e) === 'ENOENT' ? 'missing' : `cannot read (${errnoOf(e) ?? messageOf(e)})`}`, { cause: e });
  }
  if (!st.isDirectory()) throw new TlsConfigError(`TLS directory ${dir}: not a directory`);

  const own = { cert: join(dir, `${role}.crt`), key: join(dir, `${role}.key`) };
  const secret = { cert: join(dir, 'tls.crt'), key: join(dir, 'tls.key') };
  let layout: TlsFiles['layout'];
  let paths: { cert: string; key: string };
  if (existsSync(own.cert) || existsSync(own.key)) {
    layout = 'patu';
    paths = own;
  } else if (existsSync(secret.cert) || existsSync(secret.key)) {
    layout = 'secret';
    paths = secret;
  } else {
    throw new TlsConfigError(`TLS directory ${dir}: neither ${role}.crt + ${role}.key (patu certs generate) nor tls.crt + tls.key (a cert-manager Secret) is there`);
  }
  const caPath = join(dir, 'ca.crt');
  const ca = readPem(caPath);
  const cert = readPem(paths.cert);
  const key = readPem(paths.key);

  // stat follows the Secret volume's symlinks to the file whose mode counts.
  const keyMode = statSync(paths.key).mode & 0o777;
  if ((keyMode & 0o077) !== 0 && !isSecretVolume(dir)) {
    throw new TlsConfigError(`${paths.key}: mode ${keyMode.toString(8).padStart(4, '0')} lets group or others read the private key; chmod 600 it (or regenerate with patu certs generate)`);
  }

  parseCert(caPath, ca);
  const x509 = parseCert(paths.cert, cert);
  let privateKey;
  try {
    privateKey = createPrivateKey(key);
  } catch (e) {
    throw new TlsConfigError(`${paths.key}: not a PEM private key`, { cause: e });
  }
  if (!x509.checkPrivateKey(privateKey)) {
    throw new TlsConfigError(`${paths.key} is not the private key of ${paths.cert}`);
  }
  return { ca, cert, key, dir, layout };
}

/**
 * Options for http2.createSecureServer (and server.setSecureContext on rotation): TLS 1.3
 * only, a client certificate required and verified against the CA. Pair with
 * clientCertProblem on 'secureConnection' and tlsClientErrorReason on 'tlsClientError'.
 */
export function serverTlsOptions(f: TlsFiles): TlsOptions {
  return {
    minVersion: 'TLSv1.3',
    maxVersion: 'TLSv1.3',
    requestCert: true,
    rejectUnauthorized: true,
    ca: f.ca,
    cert: f.cert,
    key: f.key,
  };
}

/**
 * Options for http2.connect / tls.connect: TLS 1.3 only, the server verified against the
 * CA and its certificate's name checked against `serverName` whatever address is dialled
 * (a manager reached as tcp://10.0.0.5:7443 must still present patu-manager).
 */
export function clientTlsOptions(f: TlsFiles, serverName: string): ConnectionOptions {
  return {
    minVersion: 'TLSv1.3',
    maxVersion: 'TLSv1.3',
    rejectUnauthorized: true,
    ca: f.ca,
    cert: f.cert,
    key: f.key,
    // SNI carries host names only (RFC 6066); an IP server name is still checked below.
    ...(isIP(serverName) === 0 ? { servername: serverName } : {}),
    checkServerIdentity: (_host: string, cert: PeerCertificate) => checkServerIdentity(serverName, cert),
  };
}

/** OpenSSL's verify codes as Node names them, said plainly (the code is kept in brackets). */
const VERIFY_REASONS: Record<string, string> = {
  UNABLE_TO_VERIFY_LEAF_SIGNATURE: 'not signed by our CA (a foreign CA)',
  UNABLE_TO_GET_ISSUER_CERT_LOCALLY: 'not signed by our CA (a foreign CA)',
  UNABLE_TO_GET_ISSUER_CERT: 'not signed by our CA (a foreign CA)',
  SELF_SIGNED_CERT_IN_CHAIN: 'chains to a CA that is not ours',
  DEPTH_ZERO_SELF_SIGNED_CERT: 'self-signed',
  CERT_SIGNATURE_FAILURE: 'bad signature',
  CERT_HAS_EXPIRED: 'expired',
  CERT_NOT_YET_VALID: 'not yet valid',
  INVALID_PURPOSE: 'not for client authentication (no clientAuth extended key usage: a server certificate?)',
  CERT_REVOKED: 'revoked',
};

function describeVerifyError(code: string): string {
  return `client certificate ${VERIFY_REASONS[code] ?? 'failed verification'} [${code}]`;
}

/**
 * Why the server must not talk to this connection's peer, or undefined when it may: a
 * certificate is present, verified against the CA, and carries the clientAuth EKU. Run on
 * every connection after the handshake (TLS 1.3 judges the client certificate then). OpenSSL
 * already refuses a serverAuth-only certificate (INVALID_PURPOSE) and Node already refuses an
 * unverified one; this repeats the checks so that a change of options cannot let one through,
 * and gives the log line its reason. Never returns certificate or key material, only the
 * subject's CN and serial number.
 */
export function clientCertProblem(sock: TLSSocket): string | undefined {
  if (sock.authorizationError) return describeVerifyError(String(sock.authorizationError));
  const peer = sock.getPeerX509Certificate();
  if (!peer) return 'no client certificate';
  if (!sock.authorized) return 'client certificate not verified';
  const eku = peer.keyUsage; // Node: the extended key usage OIDs (undefined when the extension is absent)
  if (!eku || !eku.includes(EKU_CLIENT_AUTH)) {
    return `client certificate ${certLabel(peer)} has no clientAuth extended key usage (${EKU_CLIENT_AUTH})${eku?.includes(EKU_SERVER_AUTH) ? ': a server certificate' : ''}`;
  }
  return undefined;
}

/** What identifies a certificate in a log line: its subject CN and serial, nothing else. */
export function certLabel(cert: X509Certificate): string {
  const cn = /(?:^|\n)CN=([^\n]*)/.exec(cert.subject)?.[1];
  return `CN=${cn ?? '?'} serial=${cert.serialNumber}`;
}

/**
 * The reason to log for a server's 'tlsClientError' (err, sock): a connection refused
 * during or right after the handshake. The socket's authorizationError says why Node
 * destroyed a connection whose certificate failed verification (the error itself only
 * says "socket hang up"); otherwise OpenSSL's reason (no certificate, TLS 1.2, plaintext).
 */
export function tlsClientErrorReason(err: Error, sock?: TLSSocket): string {
  const authErr = sock?.authorizationError;
  if (authErr) return describeVerifyError(String(authErr));
  const code = (err as { code?: unknown }).code;
  switch (code) {
    case 'ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE':
      return 'no client certificate';
    case 'ERR_SSL_UNSUPPORTED_PROTOCOL':
      return 'not TLS 1.3';
    case 'ERR_SSL_WRONG_VERSION_NUMBER':
    case 'ERR_SSL_HTTP_REQUEST':
    case 'ERR_SSL_PACKET_LENGTH_TOO_LONG':
      return 'not TLS (plaintext?)';
    default: {
      // OpenSSL's message names the step ("...:tls_process_client_hello:unsupported protocol:...");
      // keep its reason part only: no paths, no bytes.
      const msg = messageOf(err);
      const m = /:([a-z0-9 _-]+):\.\.\/.*$/i.exec(msg) ?? /SSL routines:[^:]*:([^:]+)/.exec(msg);
      return `TLS handshake failed: ${m?.[1] ?? msg.split('\n')[0]}${typeof code === 'string' ? ` [${code}]` : ''}`;
    }
  }
}

/** sha256 over every file either layout could use (missing ones too): changes when any of them does. */
function fingerprint(dir: string): string {
  const h = createHash('sha256');
  for (const name of TLS_FILE_NAMES) {
    h.update(name);
    try {
      h.update(readPem(join(dir, name)));
    } catch (e) {
      h.update(`\0${e instanceof TlsConfigError ? e.message : 'unreadable'}`);
    }
  }
  return h.digest('hex');
}

export interface TlsWatchOptions {
  /** Re-read the files this often even without events (a Secret volume on a filesystem fs.watch misses). */
  pollMs?: number;
  /** A change is reported once the files have stayed the same for this long. */
  settleMs?: number;
}

/**
 * Calls onChange once per settled change of the TLS files in `dir`: fs.watch on the
 * directory (cp, mv, and a Secret volume's atomic swap of `..data` all show there) plus a
 * poll fallback; a change is reported only after two reads settleMs apart agree and
 * differ from the last reported state, so a writer caught between cert and key is not
 * reported half-way. onChange should reload with loadTlsDir and keep the old context when
 * that throws. Timers do not keep the process alive.
 */
export function watchTlsDir(dir: string, onChange: () => void, opts: TlsWatchOptions = {}): { close(): void } {
  const pollMs = opts.pollMs ?? DEFAULTS.tlsPollMs;
  const settleMs = opts.settleMs ?? DEFAULTS.tlsSettleMs;
  let reported = fingerprint(dir);
  let candidate: string | undefined;
  let timer: NodeJS.Timeout | undefined;
  let closed = false;

  const check = (): void => {
    timer = undefined;
    if (closed) return;
    const fp = fingerprint(dir);
    if (fp === reported) {
      candidate = undefined;
      return;
    }
    if (fp !== candidate) {
      candidate = fp; // still moving, or first sight: look again once it had time to settle
      kick();
      return;
    }
    reported = fp;
    candidate = undefined;
    onChange();
  };
  const kick = (): void => {
    if (closed) return;
    if (timer) clearTimeout(timer);
    timer = setTimeout(check, settleMs);
    timer.unref();
  };

  let watcher: FSWatcher | undefined;
  try {
    watcher = watch(dir, { persistent: false }, () => kick());
    watcher.on('error', () => { watcher?.close(); watcher = undefined; }); // the poll still runs
  } catch {
    watcher = undefined; // no inotify (or the dir went away): the poll alone
  }
  const poll = setInterval(() => {
    if (!timer && fingerprint(dir) !== reported) kick();
  }, pollMs);
  poll.unref();

  return {
    close(): void {
      closed = true;
      watcher?.close();
      clearInterval(poll);
      if (timer) clearTimeout(timer);
    },
  };
}
