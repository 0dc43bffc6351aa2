// The patu node agent: a long-running process that serves CNI requests from
// bin/patu over a unix socket (so pod events skip a Node start) and, as later
// features land, owns the node's eBPF state.
import pino from 'pino';
import { startCniServer } from './cni-server.js';

export interface AgentOptions {
  cniSocket: string;
  logLevel: string;
}

export async function runAgent(opts: AgentOptions): Promise<void> {
  const log = pino({ level: opts.logLevel, base: { component: 'patu-agent' } });
  const server = await startCniServer({
    socketPath: opts.cniSocket,
    onRequest: (req, outcome, millis) =>
      log.info(
        {
          command: req.env.CNI_COMMAND,
          containerId: req.env.CNI_CONTAINERID,
          ifname: req.env.CNI_IFNAME,
          exitCode: outcome.exitCode,
          ...(outcome.deferred ? { deferred: 'IPAM lock busy: handed back to bin/patu' } : {}),
          ms: Math.round(millis * 100) / 100,
          ...(outcome.exitCode !== 0 ? { error: outcome.stdout.trim() } : {}),
        },
        'cni request',
      ),
  });
  log.info({ socket: opts.cniSocket }, 'serving CNI requests');

  await new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      log.info({ signal }, 'shutting down');
      // Closing the socket makes bin/patu fall back to running the plugin itself.
      server.close(() => resolve());
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
}
