// The data-plane API's client: a Dataplane whose calls go to `patu manager` over gRPC with
// mutual TLS (ConnectRPC's gRPC transport on Node's http2). `patu agent --manager ADDR`
// uses it behind its DataplaneMirror (src/agent/mirror.ts), which owns retries and resyncs.
//
//   - Every call has a deadline: the caller's timeoutMs, else defaultTimeoutMs
//     (DEFAULTS.managerCallTimeoutMs). A deadline that passes is 'deadline': the manager may
//     still have applied the change (it does not cancel an apply), so the retry repeats the
//     same generation.
//   - Errors are DataplaneErrors (src/rpc/errors.ts): the manager's code when it sent one;
//     'unavailable' for anything on the way (refused, reset, TLS refused, socket missing).
//   - One HTTP/2 connection, opened on the first call and re-opened on the next call after it
//     broke (a manager restart answers 'unavailable' once, then works without a new client).
//     A connection that stops answering (the manager's host gone without a FIN) is found by
//     HTTP/2 PINGs (DEFAULTS.managerPingIntervalMs) and dropped the same way.
//   - setTls(): certificate rotation. Later calls go through a new connection with the new
//     files; the old connection is closed once its calls in flight are done.
//   - unix:// addresses: TLS over the unix socket (tls.connect({ path })), as on TCP.
import { connect as tlsConnect, type ConnectionOptions } from 'node:tls';
import type { SecureClientSessionOptions } from 'node:http2';
import { createClient, type Client } from '@connectrpc/connect';
import { createGrpcTransport, Http2SessionManager } from '@connectrpc/connect-node';
import { DEFAULTS } from '../defaults.js';
import {
  DataplaneError,
  type AccelerationState, type CallOptions, type CniCall, type CniReply, type Dataplane, type DataplaneHealth,
  type DataplaneStatus, type NodeSettings, type PodFlagsApplied, type PodFlagsUpdate, type PolicyApplied,
  type PolicyChange, type ServiceChange, type ServicesApplied,
} from '../dataplane/api.js';
import { Dataplane as DataplaneService } from './gen/patu/dataplane/v1/dataplane_pb.js';
import * as cv from './convert.js';
import { fromCallError } from './errors.js';
import { parseDataplaneAddress, type DataplaneAddress } from './address.js';
import type { DataplaneRpcMetrics } from './metrics.js';
import type { RpcLog } from './log.js';

export interface RemoteDataplaneOptions {
  /** unix:///path or tcp://host:port */
  address: string;
  /** clientTlsOptions(loadTlsDir(dir, 'client'), serverName) from src/rpc/tls.ts: the server's name is checked. */
  tls: ConnectionOptions;
  log: RpcLog;
  /** A call's deadline when the caller gives none (default DEFAULTS.managerCallTimeoutMs). */
  defaultTimeoutMs?: number;
  metrics?: DataplaneRpcMetrics;
  /** Connection set-up (TCP/unix connect + TLS handshake) gives up after this long (default 5 s): 'unavailable'. */
  connectTimeoutMs?: number;
  /** The largest answer read (default DEFAULTS.managerMaxMessageBytes). */
  readMaxBytes?: number;
  /** HTTP/2 PING keepalive (default DEFAULTS.managerPingIntervalMs / managerPingTimeoutMs). */
  pingIntervalMs?: number;
  pingTimeoutMs?: number;
}

/** One connection's worth of client: replaced whole by setTls. */
interface Channel {
  manager: Http2SessionManager;
  client: Client<typeof DataplaneService>;
  inflight: number;
  retired: boolean;
}

export class RemoteDataplane implements Dataplane {
  private readonly target: DataplaneAddress;
  private channel: Channel;
  private closed = false;

  constructor(private readonly o: RemoteDataplaneOptions) {
    this.target = parseDataplaneAddress(o.address);
    this.channel = this.open(o.tls);
  }

  private open(tls: ConnectionOptions): Channel {
    const t = this.target;
    // Our own connection for both kinds: TLS straight on the socket, ALPN h2 (the server speaks nothing else).
    // The authority in the URL is what :authority carries; the TLS options name the server to check.
    const createConnection = () =>
      tlsConnect({ ...tls, ALPNProtocols: ['h2'], ...(t.kind === 'unix' ? { path: t.path } : { host: t.host, port: t.port }) });
    const baseUrl = t.kind === 'unix' ? 'https://localhost' : `https://${t.host.includes(':') ? `[${t.host}]` : t.host}:${t.port}`;
    const nodeOptions: SecureClientSessionOptions = { createConnection };
    const manager = new Http2SessionManager(baseUrl, {
      connectTimeoutMs: this.o.connectTimeoutMs ?? 5000,
      pingIntervalMs: this.o.pingIntervalMs ?? DEFAULTS.managerPingIntervalMs,
      pingTimeoutMs: this.o.pingTimeoutMs ?? DEFAULTS.managerPingTimeoutMs,
    }, nodeOptions);
    const transport = createGrpcTransport({
      baseUrl,
      sessionManager: manager,
      readMaxBytes: this.o.readMaxBytes ?? DEFAULTS.managerMaxMessageBytes,
      acceptCompression: [],
      defaultTimeoutMs: this.o.defaultTimeoutMs ?? DEFAULTS.managerCallTimeoutMs,
    });
    return { manager, client: createClient(DataplaneService, transport), inflight: 0, retired: false };
  }

  /** Certificate rotation: the next call connects with `tls`; the current connection closes when its calls are done. */
  setTls(tls: ConnectionOptions): void {
    if (this.closed) return;
    const old = this.channel;
    this.channel = this.open(tls);
    this.retire(old);
    this.o.log.info({ address: this.o.address }, 'data-plane API client: TLS files reloaded; reconnecting with them');
  }

  private retire(c: Channel): void {
    c.retired = true;
    if (c.inflight === 0) c.manager.abort();
  }

  private async call<T>(method: string, opts: CallOptions | undefined, fn: (c: Client<typeof DataplaneService>, o: { timeoutMs: number; signal?: AbortSignal }) => Promise<T>): Promise<T> {
    const t0 = performance.now();
    let code = 'ok';
    const ch = this.channel;
    ch.inflight++;
    try {
      if (this.closed) throw new DataplaneError('unavailable', `${method}: the client is closed`);
      const timeoutMs = opts?.timeoutMs ?? this.o.defaultTimeoutMs ?? DEFAULTS.managerCallTimeoutMs;
      return await fn(ch.client, { timeoutMs, ...(opts?.signal ? { signal: opts.signal } : {}) });
    } catch (e) {
      const de = fromCallError(e, method, opts?.signal?.aborted === true);
      code = de.code;
      this.o.log.debug({ method, code: de.code, err: de.message }, 'data-plane API call failed');
      throw de;
    } finally {
      ch.inflight--;
      if (ch.retired && ch.inflight === 0) ch.manager.abort();
      this.o.metrics?.observe('client', method, code, (performance.now() - t0) / 1000);
    }
  }

  cni(call: CniCall, opts?: CallOptions): Promise<CniReply> {
    const method = ({ ADD: 'CniAdd', DEL: 'CniDel', CHECK: 'CniCheck', STATUS: 'CniStatus' } as const)[call.command];
    const key = ({ ADD: 'cniAdd', DEL: 'cniDel', CHECK: 'cniCheck', STATUS: 'cniStatus' } as const)[call.command];
    if (!method) return Promise.reject(new DataplaneError('invalid', `cni: unknown command ${JSON.stringify(call.command)}`));
    return this.call(method, opts, async (c, o) => cv.cniReplyFromProto(await c[key](cv.cniCallToProto(call), o)));
  }

  applyServices(change: ServiceChange, opts?: CallOptions): Promise<ServicesApplied> {
    return this.call('ApplyServices', opts, async (c, o) => cv.servicesAppliedFromProto(await c.applyServices(cv.serviceChangeToProto(change), o)));
  }

  setAcceleration(enabled: boolean, opts?: CallOptions): Promise<AccelerationState> {
    return this.call('SetAcceleration', opts, async (c, o) => cv.accelerationFromProto(await c.setAcceleration({ enabled }, o)));
  }

  setPodFlags(pods: PodFlagsUpdate[], opts?: CallOptions): Promise<PodFlagsApplied> {
    return this.call('SetPodFlags', opts, async (c, o) => cv.podFlagsAppliedFromProto(await c.setPodFlags(cv.podFlagsToProto(pods), o)));
  }

  setNodeSettings(settings: NodeSettings, opts?: CallOptions): Promise<{ conflistWritten: boolean }> {
    return this.call('SetNodeSettings', opts, async (c, o) => ({ conflistWritten: (await c.setNodeSettings(cv.nodeSettingsToProto(settings), o)).conflistWritten }));
  }

  applyPolicy(change: PolicyChange, opts?: CallOptions): Promise<PolicyApplied> {
    return this.call('ApplyPolicy', opts, async (c, o) => cv.policyAppliedFromProto(await c.applyPolicy(cv.policyChangeToProto(change), o)));
  }

  health(opts?: CallOptions): Promise<DataplaneHealth> {
    return this.call('Health', opts, async (c, o) => cv.healthFromProto(await c.health({}, o)));
  }

  status(opts?: CallOptions): Promise<DataplaneStatus> {
    return this.call('Status', opts, async (c, o) => cv.statusFromProto(await c.status({}, o)));
  }

  /** Closes the connection (calls in flight fail 'unavailable'); the manager keeps its state. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.channel.manager.abort();
  }
}

/** A Dataplane reached over the API at `o.address`. Connects lazily: the first call opens the connection. */
export function connectDataplane(o: RemoteDataplaneOptions): RemoteDataplane {
  return new RemoteDataplane(o);
}
