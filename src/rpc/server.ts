// The data-plane API's server: `patu manager` serves a Dataplane implementation (in
// patu: LocalDataplane, src/dataplane/local.ts) over gRPC (ConnectRPC's gRPC protocol only,
// on Node's http2) with mutual TLS, on a unix socket or TCP.
//
// TLS everywhere, one mechanism: the unix socket carries the same mutual TLS as TCP (not
// SO_PEERCRED), and is mode 0660 besides. The TLS options come from src/rpc/tls.ts
// (serverTlsOptions: TLS 1.3, a client certificate required and verified). In TLS 1.3 the
// client certificate is judged after the handshake: connections Node refuses are logged
// from 'tlsClientError', and every accepted one is checked again with clientCertProblem
// (verified, clientAuth EKU) and destroyed, with the reason logged, if it fails. No request
// is read from a connection before that check (both run in the tick that accepts it).
//
// Deadlines: the client's deadline (grpc-timeout) bounds the answer, not the work. The
// implementation is called without the request's abort signal, so a deadline that passes
// mid-apply answers DEADLINE_EXCEEDED while the apply goes on to complete (or roll back)
// as a whole; the client's retry with the same generation is then answered from the
// session's last result. (LocalDataplane's map writes are synchronous: nothing can even
// interleave with them.)
//
// Errors: a DataplaneError keeps its code (src/rpc/errors.ts: gRPC status + trailer) and
// message; anything else answers INTERNAL with its message only. Stacks and causes stay
// in this side's log.
import { chmodSync, lstatSync, mkdirSync, unlinkSync } from 'node:fs';
import { createSecureServer, type Http2SecureServer, type ServerHttp2Session } from 'node:http2';
import { connect as netConnect, type AddressInfo } from 'node:net';
import { dirname } from 'node:path';
import type { TLSSocket, TlsOptions } from 'node:tls';
import type { ConnectRouter, ServiceImpl } from '@connectrpc/connect';
import { connectNodeAdapter } from '@connectrpc/connect-node';
import { PatuError, errnoOf, messageOf } from '../errors.js';
import { DEFAULTS } from '../defaults.js';
import type { CniCommand, Dataplane } from '../dataplane/api.js';
import { Dataplane as DataplaneService } from './gen/patu/dataplane/v1/dataplane_pb.js';
import * as cv from './convert.js';
import { toConnectError } from './errors.js';
import { formatDataplaneAddress, parseDataplaneAddress } from './address.js';
import { clientCertProblem, tlsClientErrorReason } from './tls.js';
import type { DataplaneRpcMetrics } from './metrics.js';
import type { RpcLog } from './log.js';

export class DataplaneServerError extends PatuError {
  readonly code = 'DATAPLANE_SERVER';
}

export interface DataplaneServerOptions {
  /** unix:///path or tcp://host:port (port 0: a free one, see `port`). */
  listen: string;
  /** serverTlsOptions(loadTlsDir(dir, 'server')) from src/rpc/tls.ts. */
  tls: TlsOptions;
  impl: Dataplane;
  log: RpcLog;
  metrics?: DataplaneRpcMetrics;
  /** The unix socket's mode (default 0660: owner and group). */
  socketMode?: number;
  /** The largest request read (default DEFAULTS.managerMaxMessageBytes); a bigger one is INVALID_ARGUMENT-like RESOURCE_EXHAUSTED. */
  readMaxBytes?: number;
  /** How long close() lets calls in flight finish before cutting their connections (default 5 s). */
  closeGraceMs?: number;
}

export interface DataplaneServer {
  /** The address served, with the port a tcp://...:0 listen got. */
  readonly address: string;
  readonly port?: number;
  /** Rotation: new connections use these; existing ones are closed gracefully (GOAWAY) so they reconnect with them. */
  setTls(tls: TlsOptions): void;
  /** Stops accepting, lets calls in flight finish (up to closeGraceMs), closes every connection. */
  close(): Promise<void>;
}

/** How long the server waits for a TLS handshake (a connection that never sends one holds a socket). */
const HANDSHAKE_TIMEOUT_MS = 10_000;
/** The same rejection is logged at most once per this many ms (the rest are counted and summed in the next line). */
const REJECT_LOG_EVERY_MS = 10_000;

/** A bounded label for the rejections counter: the bracketed OpenSSL/Node code, or a fixed word. */
export function rejectionClass(reason: string): string {
  const code = /\[([A-Z0-9_]+)\]/.exec(reason)?.[1];
  if (code) return code;
  if (/no client certificate/.test(reason)) return 'NO_CERTIFICATE';
  if (/clientAuth/.test(reason)) return 'NO_CLIENT_AUTH_EKU';
  if (/plaintext/.test(reason)) return 'PLAINTEXT';
  if (/TLS 1\.3/.test(reason)) return 'NOT_TLS13';
  if (/ALPN|h2/.test(reason)) return 'NOT_H2';
  return 'OTHER';
}

/** Serves `impl` at `listen`; resolves once listening. */
export async function startDataplaneServer(o: DataplaneServerOptions): Promise<DataplaneServer> {
  const addr = parseDataplaneAddress(o.listen);
  const { log, metrics, impl } = o;
  const shutdown = new AbortController();

  const handler = connectNodeAdapter({
    routes: (router: ConnectRouter) => router.service(DataplaneService, serviceImpl(impl, o)),
    grpc: true,
    grpcWeb: false,
    connect: false,
    readMaxBytes: o.readMaxBytes ?? DEFAULTS.managerMaxMessageBytes,
    // Responses are small except Status; compressing would cost CPU on both sides for nothing.
    acceptCompression: [],
    shutdownSignal: shutdown.signal,
  });

  const server: Http2SecureServer = createSecureServer({
    ...o.tls,
    allowHTTP1: false,
    handshakeTimeout: HANDSHAKE_TIMEOUT_MS,
    settings: { maxConcurrentStreams: 128 },
  }, handler);

  // ---- refused connections: logged (rate-limited per reason) and counted, never with certificate or key bytes.
  const lastLogged = new Map<string, { at: number; suppressed: number }>();
  const reject = (reason: string, peer: string | undefined): void => {
    const cls = rejectionClass(reason);
    metrics?.tlsRejections.inc({ reason: cls });
    const now = Date.now();
    const seen = lastLogged.get(cls);
    if (seen && now - seen.at < REJECT_LOG_EVERY_MS) {
      seen.suppressed++;
      return;
    }
    lastLogged.set(cls, { at: now, suppressed: 0 });
    log.warn({ peer: peer ?? 'unix', reason, ...(seen?.suppressed ? { alsoRefusedSinceLastLine: seen.suppressed } : {}) }, 'data-plane API: connection refused');
  };
  const peerOf = (s: { remoteAddress?: string | undefined; remotePort?: number | undefined }): string | undefined =>
    s.remoteAddress ? `${s.remoteAddress}:${s.remotePort}` : undefined;

  server.on('tlsClientError', (err: Error, sock: TLSSocket) => reject(tlsClientErrorReason(err, sock), peerOf(sock)));
  server.on('secureConnection', (sock: TLSSocket) => {
    // http2's own listener (registered first) has made the session; it has read nothing yet.
    const problem = clientCertProblem(sock);
    if (problem !== undefined) {
      reject(problem, peerOf(sock));
      sock.destroy();
    }
  });
  server.on('unknownProtocol', (sock: TLSSocket) => {
    reject('the client did not offer HTTP/2 (ALPN h2)', peerOf(sock));
    sock.destroy();
  });

  const sessions = new Set<ServerHttp2Session>();
  server.on('session', (s: ServerHttp2Session) => {
    sessions.add(s);
    s.on('close', () => sessions.delete(s));
    // A connection's own failure (reset, timeout) is that connection's: logged, never thrown.
    s.on('error', (e) => log.debug({ err: messageOf(e) }, 'data-plane API: connection error'));
  });
  server.on('sessionError', (e: Error) => log.debug({ err: messageOf(e) }, 'data-plane API: session error'));

  if (addr.kind === 'unix') await prepareSocketPath(addr.path);
  await new Promise<void>((resolve, reject) => {
    const onError = (e: Error) => reject(new DataplaneServerError(`data-plane API: cannot listen on ${o.listen}: ${errnoOf(e) ?? messageOf(e)}`, { cause: e }));
    server.once('error', onError);
    const done = () => {
      server.off('error', onError);
      resolve();
    };
    if (addr.kind === 'unix') server.listen(addr.path, done);
    else server.listen(addr.port, addr.host, done);
  });
  server.on('error', (e) => log.error({ err: messageOf(e) }, 'data-plane API: server error'));

  let port: number | undefined;
  if (addr.kind === 'unix') {
    // Both ends are on this node; TLS authenticates the client, the mode keeps other users from even connecting.
    // Between bind and chmod the socket has the umask's mode (0755 with the usual 022: no one else may connect).
    chmodSync(addr.path, o.socketMode ?? 0o660);
  } else {
    port = (server.address() as AddressInfo).port;
  }
  const address = formatDataplaneAddress(addr.kind === 'unix' ? addr : { ...addr, port: port! });
  log.info({ address }, 'data-plane API: serving (gRPC, mutual TLS)');

  let closing: Promise<void> | undefined;
  return {
    address,
    ...(port !== undefined ? { port } : {}),
    setTls(tls: TlsOptions): void {
      server.setSecureContext(tls);
      // Connections made with the old files are judged again under the new ones: each gets a GOAWAY (calls in
      // flight finish; the client's next call opens a new connection and handshakes with the new files). A client
      // whose certificate the new CA does not sign is cut off here, not whenever it happens to reconnect.
      for (const s of sessions) s.close();
      log.info({ connections: sessions.size }, 'data-plane API: TLS files reloaded; connections re-establish with them');
    },
    close(): Promise<void> {
      closing ??= (async () => {
        const closed = new Promise<void>((resolve) => server.close(() => resolve()));
        // GOAWAY: calls in flight finish, no new ones start; idle connections close now.
        for (const s of sessions) s.close();
        const cut = setTimeout(() => {
          for (const s of sessions) s.destroy();
        }, o.closeGraceMs ?? 5000);
        await closed;
        clearTimeout(cut);
        shutdown.abort();
      })();
      return closing;
    },
  };
}

/**
 * A socket path can be reused when nothing is there or a dead server's socket is (a crash or kill -9
 * leaves it): that one is removed. Another server answering on it, or anything not a socket, is an error.
 */
async function prepareSocketPath(path: string): Promise<void> {
  mkdirSync(dirname(path), { recursive: true, mode: 0o755 });
  let st;
  try {
    st = lstatSync(path);
  } catch (e) {
    if (errnoOf(e) === 'ENOENT') return;
    throw new DataplaneServerError(`${path}: ${errnoOf(e) ?? messageOf(e)}`, { cause: e });
  }
  if (!st.isSocket()) throw new DataplaneServerError(`${path} exists and is not a socket; not removing it`);
  const live = await new Promise<boolean>((resolve) => {
    const s = netConnect(path);
    const done = (v: boolean) => {
      s.destroy();
      resolve(v);
    };
    s.once('connect', () => done(true));
    // ECONNREFUSED: nobody listens (a stale socket). Anything else (EACCES...): not ours to judge; treat as live.
    s.once('error', (e) => done(errnoOf(e) !== 'ECONNREFUSED'));
    s.setTimeout(2000, () => done(true));
  });
  if (live) throw new DataplaneServerError(`${path}: another server answers on this socket (is a manager already running?)`);
  unlinkSync(path);
}

/** The API's methods over `impl`: decode, call (without the request's signal: see the header), encode; metrics per call. */
function serviceImpl(impl: Dataplane, o: DataplaneServerOptions): ServiceImpl<typeof DataplaneService> {
  const { metrics, log } = o;
  const wrap = <I, O>(method: string, fn: (req: I) => Promise<O>) => async (req: I): Promise<O> => {
    const t0 = performance.now();
    let code = 'ok';
    try {
      return await fn(req);
    } catch (e) {
      const { wire, code: c } = toConnectError(e);
      code = c;
      if (c === 'internal') log.error({ method, err: e }, 'data-plane API: call failed');
      else log.debug({ method, code: c, err: messageOf(e) }, 'data-plane API: call refused');
      throw wire;
    } finally {
      metrics?.observe('server', method, code, (performance.now() - t0) / 1000);
    }
  };
  const cni = (method: string, command: CniCommand) =>
    wrap(method, async (req: Parameters<typeof cv.cniCallFromProto>[1]) => cv.cniReplyToProto(await impl.cni(cv.cniCallFromProto(command, req))));
  return {
    cniAdd: cni('CniAdd', 'ADD'),
    cniDel: cni('CniDel', 'DEL'),
    cniCheck: cni('CniCheck', 'CHECK'),
    cniStatus: cni('CniStatus', 'STATUS'),
    applyServices: wrap('ApplyServices', async (req) => cv.servicesAppliedToProto(await impl.applyServices(cv.serviceChangeFromProto(req)))),
    setAcceleration: wrap('SetAcceleration', async (req) => cv.accelerationToProto(await impl.setAcceleration(req.enabled))),
    setPodFlags: wrap('SetPodFlags', async (req) => cv.podFlagsAppliedToProto(await impl.setPodFlags(cv.podFlagsFromProto(req)))),
    setNodeSettings: wrap('SetNodeSettings', async (req) => ({ conflistWritten: (await impl.setNodeSettings(cv.nodeSettingsFromProto(req))).conflistWritten })),
    applyPolicy: wrap('ApplyPolicy', async (req) => cv.policyAppliedToProto(await impl.applyPolicy(cv.policyChangeFromProto(req)))),
    health: wrap('Health', async () => cv.healthToProto(await impl.health())),
    status: wrap('Status', async () => cv.statusToProto(await impl.status())),
  };
}
