// /metrics (Prometheus text, src/k8s/prom.ts), /healthz and /readyz for the agent.
// One registry per agent, not a global one, so tests can run several in a process.
import { createServer, type Server } from 'node:http';
import { Counter, Gauge, Histogram, MirrorCounter, Registry, processMetrics } from './prom.js';

export class AgentMetrics {
  readonly registry = new Registry();
  readonly servicesProgrammed = new Gauge({ name: 'patu_services_programmed', help: 'Services in the data plane (ClusterIP services with at least one TCP/UDP port)', registers: [this.registry] });
  readonly servicePortsProgrammed = new Gauge({ name: 'patu_service_ports_programmed', help: 'Service ports (vip:port/proto entries) in the data plane', registers: [this.registry] });
  readonly endpointsProgrammed = new Gauge({ name: 'patu_endpoints_programmed', help: 'Selectable backends (ip:port) summed over service ports', registers: [this.registry] });
  readonly applySeconds = new Histogram({
    name: 'patu_service_apply_duration_seconds',
    help: 'Time to program one batch of service changes into the maps',
    labelNames: ['kind'] as const,
    buckets: [0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    registers: [this.registry],
  });
  readonly mapOps = new Counter({ name: 'patu_service_map_ops_total', help: 'Single-entry map operations written for services', registers: [this.registry] });
  readonly applyErrors = new Counter({ name: 'patu_service_apply_errors_total', help: 'Failed applies (retried as a full resync)', registers: [this.registry] });
  readonly cniRequests = new Counter({ name: 'patu_cni_requests_total', help: 'CNI requests served by the agent', labelNames: ['command', 'result'] as const, registers: [this.registry] });
  readonly informerRestarts = new Counter({ name: 'patu_informer_restarts_total', help: 'Informer restarts after an error (apiserver unreachable, watch failed)', labelNames: ['resource'] as const, registers: [this.registry] });
  readonly informerEvents = new Counter({ name: 'patu_informer_events_total', help: 'Objects added, updated or deleted as seen by the informers', labelNames: ['resource', 'event'] as const, registers: [this.registry] });
  readonly udpSocketsDestroyed = new Counter({ name: 'patu_udp_sockets_destroyed_total', help: 'Connected UDP sockets destroyed because their service backend departed', registers: [this.registry] });
  readonly serviceConflicts = new Counter({ name: 'patu_service_conflicts_total', help: 'Services left out because another service already holds one of their entries (a nodePort, externalIP or LoadBalancer IP with the same port and protocol)', registers: [this.registry] });
  readonly servicesRejected = new Gauge({ name: 'patu_services_rejected', help: 'Services not programmed right now because of bad input (conflicts, addresses outside the ranges)', registers: [this.registry] });
  readonly serviceInputErrors = new Counter({ name: 'patu_service_input_errors_total', help: 'Services or fields refused as bad input (by reason)', labelNames: ['reason'] as const, registers: [this.registry] });
  readonly healthCheckErrors = new Counter({ name: 'patu_health_check_node_port_errors_total', help: 'healthCheckNodePort listeners that could not be opened (port taken, bad port)', registers: [this.registry] });
  readonly hostPortsProgrammed = new Gauge({ name: 'patu_hostports_programmed', help: 'hostPort records the agent found (each one a map entry unless it conflicts)', registers: [this.registry] });
  readonly hostPortConflicts = new Counter({ name: 'patu_hostport_conflicts_total', help: 'hostPort mappings the agent could not program: the port is a service\'s (service) or another record overlaps it (record); counted when first seen', labelNames: ['kind'] as const, registers: [this.registry] });
  readonly podAccelUpdates = new Counter({ name: 'patu_pod_accel_updates_total', help: 'Acceleration opt-out flag changes written from pod annotations', registers: [this.registry] });

  // NetworkPolicy counters, mirrored from patu_pol_stats at each scrape (setPolicySource). Drops count packets;
  // allows count new flows admitted (the programs do not count every packet of an admitted flow). policy is the
  // admitting policy's name (its namespace is the pod's), empty for drops and for pods no policy isolates.
  readonly policyPackets = new MirrorCounter({ name: 'patu_policy_packets_total', help: 'NetworkPolicy verdicts per pod and policy: dropped packets (verdict=drop) and admitted new flows (verdict=allow)', labelNames: ['namespace', 'pod', 'policy', 'direction', 'verdict'] as const, registers: [this.registry] });
  readonly policyBytes = new MirrorCounter({ name: 'patu_policy_bytes_total', help: 'Bytes of the packets counted by patu_policy_packets_total', labelNames: ['namespace', 'pod', 'policy', 'direction', 'verdict'] as const, registers: [this.registry] });
  readonly policyApplyErrors = new Counter({ name: 'patu_policy_apply_errors_total', help: 'NetworkPolicy applies that left something out, by reason: capacity (rules that did not fit the maps), duplicate-address, bad-address, fallback (programmed deny-only)', labelNames: ['reason'] as const, registers: [this.registry] });

  // Pod network configuration (issue 12): src/k8s/podnet-source.ts.
  readonly podnetReconciles = new Counter({ name: 'patu_podnet_reconciles_total', help: 'Pod network reconciles (kernel sync of every pod with a change, then status writes), by result', labelNames: ['result'] as const, registers: [this.registry] });
  readonly podnetReconcileSeconds = new Histogram({
    name: 'patu_podnet_reconcile_duration_seconds', help: 'Time of one pod network reconcile, apiserver writes included',
    buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5], registers: [this.registry],
  });
  readonly podnetInterfaces = new Gauge({ name: 'patu_podnet_interfaces', help: 'Extra pod interfaces applied on this node (PodNetworkConfig)', registers: [this.registry] });
  readonly podnetFailures = new Counter({ name: 'patu_podnet_failures_total', help: 'Extra interfaces the agent could not apply, by reason (each retried)', labelNames: ['reason'] as const, registers: [this.registry] });
  readonly podnetCniAddSeconds = new Histogram({
    name: 'patu_podnet_cni_add_duration_seconds', help: 'Time the CNI ADD answer waited for the pod\'s extra interfaces',
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5], registers: [this.registry],
  });

  constructor(opts: { defaultMetrics?: boolean } = {}) {
    // process_resident_memory_bytes and friends: the agent's footprint is a goal.
    if (opts.defaultMetrics !== false) processMetrics(this.registry, 'patu_');
  }

  /**
   * Where the policy counters come from: read at every scrape (one dump of patu_pol_stats). A source that throws
   * leaves the last values (the scrape still answers).
   */
  setPolicySource(read: () => PolicyCounterSeries[]): void {
    this.registry.beforeScrape(() => {
      let series: PolicyCounterSeries[];
      try {
        series = read();
      } catch {
        return;
      }
      this.policyPackets.replace(series.map((s) => ({ labels: s.labels, value: s.packets })));
      this.policyBytes.replace(series.map((s) => ({ labels: s.labels, value: s.bytes })));
    });
  }
}

export interface PolicyCounterSeries {
  labels: { namespace: string; pod: string; policy: string; direction: string; verdict: string };
  packets: number;
  bytes: number;
}

export interface HealthServerOptions {
  /** host:port; port 0 picks a free one. */
  addr: string;
  metrics: AgentMetrics;
  /** Why the agent is not ready, or undefined when it is. */
  notReady: () => string | undefined;
}

export function parseAddr(addr: string): { host: string; port: number } {
  const m = /^\[?([^\]]*?)\]?:(\d+)$/.exec(addr);
  if (!m || Number(m[2]) > 65535) throw new Error(`--metrics-addr ${JSON.stringify(addr)}: expected host:port`);
  return { host: m[1] || '127.0.0.1', port: Number(m[2]) };
}

export async function startHealthServer(opts: HealthServerOptions): Promise<{ server: Server; port: number; close(): Promise<void> }> {
  const { host, port } = parseAddr(opts.addr);
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { Allow: 'GET, HEAD' }).end();
      return;
    }
    if (path === '/healthz') {
      res.writeHead(200, { 'Content-Type': 'text/plain' }).end('ok\n');
    } else if (path === '/readyz') {
      const why = opts.notReady();
      res.writeHead(why ? 503 : 200, { 'Content-Type': 'text/plain' }).end(why ? `not ready: ${why}\n` : 'ok\n');
    } else if (path === '/metrics') {
      opts.metrics.registry.metrics().then(
        (text) => res.writeHead(200, { 'Content-Type': opts.metrics.registry.contentType }).end(text),
        (e: Error) => res.writeHead(500, { 'Content-Type': 'text/plain' }).end(`metrics: ${e.message}\n`),
      );
    } else {
      res.writeHead(404, { 'Content-Type': 'text/plain' }).end('not found: try /metrics, /healthz, /readyz\n');
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) => reject(new Error(`metrics server: listen ${host}:${port}: ${e.code ?? e.message}`)));
    server.listen(port, host, () => resolve());
  });
  const bound = server.address();
  return {
    server,
    port: typeof bound === 'object' && bound ? bound.port : port,
    close: () => new Promise<void>((resolve) => {
      server.closeAllConnections?.();
      server.close(() => resolve());
    }),
  };
}
