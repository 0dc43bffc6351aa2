// The patu node agent: a long-running process that
//   - serves CNI requests from bin/patu over a unix socket (pod events skip a Node start),
//   - with --accel, switches on same-node socket acceleration (pinned: survives restarts),
//   - with --services-file, watches a services file and programs ClusterIP load balancing.
// State lives in pinned eBPF objects, so stopping or restarting the agent never
// breaks established connections; bin/patu falls back to running the plugin itself.
import pino from 'pino';
import { startCniServer } from './cni-server.js';

export interface AgentOptions {
  cniSocket: string;
  logLevel: string;
  pinRoot: string;
  /** cgroup2 directory the cgroup programs attach to (production: the cgroup2 root). */
  cgroup: string;
  accel: boolean;
  servicesFile?: string;
}

export async function runAgent(opts: AgentOptions): Promise<void> {
  const log = pino({ level: opts.logLevel, base: { component: 'patu-agent' } });
  const closers: (() => void)[] = [];

  if (opts.accel) {
    const { Accel } = await import('../dataplane/accel.js');
    const accel = Accel.open({ pinRoot: opts.pinRoot, cgroupPath: opts.cgroup });
    accel.enable();
    const st = accel.status();
    log.info({ cgroup: opts.cgroup, pods: st.pods.length, sockets: st.sockets }, 'socket acceleration on');
  }

  if (opts.servicesFile) {
    // The standalone service source; the Kubernetes source feeds the same model.
    const { servicesWatch } = await import('../cli/services.js');
    const file = opts.servicesFile;
    const watch = await servicesWatch(file, {
      pinRoot: opts.pinRoot,
      cgroupPath: opts.cgroup,
      onApplied: (stats) => log.info({ file, services: stats.services, mapOps: stats.ops, ms: stats.ms }, 'services programmed'),
      onError: (err) => log.error({ file, err: err.message }, 'services file rejected; the last good state stays programmed'),
    });
    closers.push(() => watch.close());
  }

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
          ...(outcome.exitCode > 0 ? { error: outcome.stdout.trim() } : {}),
        },
        'cni request',
      ),
  });
  log.info({ socket: opts.cniSocket }, 'serving CNI requests');

  await new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      log.info({ signal }, 'shutting down (pinned eBPF state stays in place)');
      for (const close of closers) close();
      // Closing the socket makes bin/patu fall back to running the plugin itself.
      server.close(() => resolve());
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
}
