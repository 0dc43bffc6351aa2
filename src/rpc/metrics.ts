// The data-plane API's metrics, on both sides of the wire: calls, errors (by code) and
// latency per method, and the connections the server refused. Made on a Registry the
// caller owns (the manager's or the agent's /metrics), so this module starts no server
// and several sides can live in one process (tests).
import { Counter, Histogram, type Registry } from '../k8s/prom.js';

export type RpcSide = 'server' | 'client';

export class DataplaneRpcMetrics {
  /** code: 'ok' or the DataplaneError code the call ended with. */
  readonly calls: Counter<'side' | 'method' | 'code'>;
  readonly duration: Histogram<'side' | 'method'>;
  /** Connections the server refused or dropped before serving them (reason: tlsClientErrorReason / clientCertProblem, shortened). */
  readonly tlsRejections: Counter<'reason'>;

  constructor(registry: Registry) {
    this.calls = new Counter({
      name: 'patu_dataplane_rpc_calls_total',
      help: 'Data-plane API calls by side (server: patu manager, client: patu agent --manager), method and result code (ok, or invalid, resync, capacity, unavailable, deadline, internal)',
      labelNames: ['side', 'method', 'code'] as const,
      registers: [registry],
    });
    this.duration = new Histogram({
      name: 'patu_dataplane_rpc_duration_seconds',
      help: 'Data-plane API call latency by side and method (client: from the call to its answer, over the wire; server: the data plane\'s work)',
      labelNames: ['side', 'method'] as const,
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [registry],
    });
    this.tlsRejections = new Counter({
      name: 'patu_dataplane_tls_rejections_total',
      help: 'Connections to the data-plane API refused by the server (no or bad client certificate, not TLS 1.3, plaintext), by reason',
      labelNames: ['reason'] as const,
      registers: [registry],
    });
  }

  observe(side: RpcSide, method: string, code: string, seconds: number): void {
    this.calls.inc({ side, method, code });
    this.duration.observe({ side, method }, seconds);
  }
}
