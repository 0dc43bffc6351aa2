// healthCheckNodePort for externalTrafficPolicy Local services, as kube-proxy
// serves it: an HTTP server per port on every node address, answering any GET
// with 200 and a JSON body while this node has a local endpoint of the service
// (503 with the same body when it has none), so an external load balancer
// sends traffic only to nodes that can serve it locally.
//
// Bad input never stops the rest: a port two services ask for goes to the one
// that had it (or the first by name), a port already taken on the node is
// retried at the next update; both are reported through onError (the agent
// logs them and counts them in /metrics).
import { createServer, type Server } from 'node:http';

export interface HealthCheckEntry {
  /** `namespace/name`. */
  ref: string;
  port: number;
  localEndpoints: number;
}

export interface HealthCheckServerOptions {
  /** Where to listen (default '0.0.0.0': every node address, as kube-proxy). */
  host?: string;
  onError?: (e: { ref: string; port: number; reason: 'conflict' | 'listen'; message: string }) => void;
  onListening?: (e: { ref: string; port: number }) => void;
}

interface Listener {
  ref: string;
  count: number;
  server: Server;
  ready: boolean;
}

export class HealthCheckServer {
  private readonly listeners = new Map<number, Listener>();
  private closed = false;

  constructor(private readonly opts: HealthCheckServerOptions = {}) {}

  /** Makes the set of served ports exactly `entries` (by ref; one port each). */
  update(entries: Iterable<HealthCheckEntry>): void {
    if (this.closed) return;
    const byPort = new Map<number, HealthCheckEntry>();
    // The holder of a port keeps it; others in ref order.
    const list = [...entries].sort((a, b) => a.ref.localeCompare(b.ref));
    for (const e of list) {
      if (this.listeners.get(e.port)?.ref === e.ref) byPort.set(e.port, e);
    }
    for (const e of list) {
      const cur = byPort.get(e.port);
      if (cur === undefined) byPort.set(e.port, e);
      else if (cur.ref !== e.ref) {
        this.opts.onError?.({ ref: e.ref, port: e.port, reason: 'conflict', message: `healthCheckNodePort ${e.port} is already used by ${cur.ref}` });
      }
    }
    for (const [port, l] of this.listeners) {
      const want = byPort.get(port);
      if (!want || want.ref !== l.ref) {
        l.server.close();
        l.server.closeAllConnections?.();
        this.listeners.delete(port);
      }
    }
    for (const [port, e] of byPort) {
      const l = this.listeners.get(port);
      if (l) {
        l.count = e.localEndpoints;
        continue;
      }
      this.listen(e);
    }
  }

  private listen(e: HealthCheckEntry): void {
    const [namespace, name] = [e.ref.slice(0, e.ref.indexOf('/')), e.ref.slice(e.ref.indexOf('/') + 1)];
    const l: Listener = { ref: e.ref, count: e.localEndpoints, ready: false, server: createServer() };
    l.server.on('request', (req, res) => {
      const body = JSON.stringify({ service: { namespace, name }, localEndpoints: l.count, serviceProxyHealthy: true });
      res.writeHead(l.count > 0 ? 200 : 503, {
        'Content-Type': 'application/json',
        'X-Content-Type-Options': 'nosniff',
        'X-Load-Balancing-Endpoint-Weight': String(l.count),
      });
      res.end(req.method === 'HEAD' ? undefined : body);
    });
    l.server.on('error', (err: NodeJS.ErrnoException) => {
      // Dropped: the next update() tries again.
      if (this.listeners.get(e.port) === l) this.listeners.delete(e.port);
      this.opts.onError?.({ ref: e.ref, port: e.port, reason: 'listen', message: `healthCheckNodePort ${e.port}: ${err.code ?? err.message}` });
    });
    l.server.listen(e.port, this.opts.host ?? '0.0.0.0', () => {
      l.ready = true;
      this.opts.onListening?.({ ref: e.ref, port: e.port });
    });
    this.listeners.set(e.port, l);
  }

  /** Ports being served, with their service and count. */
  served(): HealthCheckEntry[] {
    return [...this.listeners].map(([port, l]) => ({ ref: l.ref, port, localEndpoints: l.count }));
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.all([...this.listeners.values()].map((l) => new Promise<void>((resolve) => {
      l.server.closeAllConnections?.();
      l.server.close(() => resolve());
    })));
    this.listeners.clear();
  }
}
