// The agent's services-file source (--services-file): programs a services file or
// directory and keeps the maps in step with it while the agent runs. The one-shot
// `patu services apply` is the CLI's (src/cli/services.ts); both feed ServiceLb.
// Split mode (`patu agent --manager`): the same watcher feeds the agent's DataplaneMirror
// (`sink`) and nothing of the kernel side is loaded: the manager keeps the node addresses
// and the service CIDR is a node setting the agent hands it.
import { hostname } from 'node:os';
import type { ApplyStats, ServiceLb, ServiceSinkLike } from '../dataplane/service-lb.js';
import type { BpffsOptions } from '../kernel/bpf/pins.js';
import { applyToModel, watchServices } from '../services/file-source.js';
import { ServiceModel, type Conflict } from '../services/model.js';
import type { NodeAddressTracker } from '../dataplane/node-addrs.js';
import type { Log } from './log.js';

export interface ServicesWatchOptions extends BpffsOptions {
  /** bpffs directory of the service maps and links. */
  pinRoot: string;
  /** cgroup2 directory to attach to if not attached yet (the agent found it: src/kernel/cgroup.ts). */
  cgroupPath: string;
  /** Compiled sock_lb.o (default: build/bpf/sock_lb.o next to this install). */
  objectPath?: string;
  /** A bad file/directory after a change (the last good state stays programmed), or a kernel error. */
  onError?: (e: Error) => void;
  /** The healthCheckNodePorts to serve (all of them), after every apply. */
  onHealthChecks?: (entries: { ref: string; port: number; localEndpoints: number }[]) => void;
  /** A service left out because another holds one of its entries (after every apply while it lasts). */
  onConflict?: (c: Conflict) => void;
  /** After every successful apply (for logs/metrics). */
  onApplied?: (stats: ApplyStats) => void;
  /** Map pins that open found removed or replaced under the attached programs, and put back. */
  onRepair?: (repair: string) => void;
  /** This node's name: endpoints with this nodeName are local (traffic policies Local). */
  nodeName?: string;
  /** Service CIDR: unanswered addresses in it are refused (ECONNREFUSED); undefined or '': none. */
  serviceCidr?: string;
  /**
   * Keep patu_node_addr (where NodePorts answer) in step with the addresses of this
   * netns (default: the calling thread's, i.e. the node's); false: do not track.
   */
  nodeAddresses?: { netns?: string; pollMs?: number; onChange?: (c: { added: string[]; removed: string[]; addresses: string[] }) => void } | false;
  /** The agent's ServiceLb, shared with its hostPorts (not closed by close()); else one is opened here. */
  lb?: ServiceLb;
  /**
   * Split mode: program through this sink (the DataplaneMirror's) instead of a ServiceLb;
   * no ServiceLb is opened, no node addresses tracked, serviceCidr not applied here.
   */
  sink?: ServiceSinkLike;
}

export interface ServicesWatchHandle {
  /** Undefined in split mode (`sink`). */
  readonly lb: ServiceLb | undefined;
  readonly model: ServiceModel;
  /** Stops watching and releases fds; programs and maps stay (pinned) and keep translating. */
  close(): void;
}

/**
 * Programs a services file or directory and keeps the maps in step with the
 * source (ServiceLb attaches the programs after its first apply if they are
 * not attached yet). The first load is a full resync (removes services an earlier run
 * programmed that the source no longer has); later changes diff only the
 * services that changed. Throws if the initial source is invalid.
 */
export async function servicesWatch(path: string, opts: ServicesWatchOptions): Promise<ServicesWatchHandle> {
  const own = !opts.lb && !opts.sink;
  let lb = opts.lb;
  if (own) {
    const { ServiceLb } = await import('../dataplane/service-lb.js');
    lb = ServiceLb.open({ pinRoot: opts.pinRoot, cgroupPath: opts.cgroupPath, ...(opts.mountBpffs === undefined ? {} : { mountBpffs: opts.mountBpffs }), ...(opts.objectPath ? { objectPath: opts.objectPath } : {}) });
    for (const r of lb.repairs) opts.onRepair?.(r);
  }
  const sink: ServiceSinkLike = opts.sink ?? lb!;
  const close = (): void => {
    if (own) lb?.close();
  };
  const model = new ServiceModel(opts.nodeName !== undefined ? { nodeName: opts.nodeName } : {});
  let tracker: NodeAddressTracker | undefined;
  try {
    // Before the first apply, which attaches the programs: they start with the whole configuration.
    lb?.configure({ serviceCidr: opts.serviceCidr ?? '' });
    if (lb && opts.nodeAddresses !== false) {
      const na = opts.nodeAddresses ?? {};
      const { NodeAddressTracker } = await import('../dataplane/node-addrs.js');
      tracker = new NodeAddressTracker({
        sink: lb,
        ...(na.netns !== undefined ? { netns: na.netns } : {}),
        ...(na.pollMs !== undefined ? { pollMs: na.pollMs } : {}),
        ...(na.onChange ? { onChange: na.onChange } : {}),
        onError: (e) => opts.onError?.(e),
      });
    }
    const watcher = await watchServices(path, {
      onChange: (all, delta) => {
        applyToModel(model, all, delta);
        const changed = model.takeChanges();
        const stats = delta ? sink.applyChanges(changed, model.desired(changed)) : sink.resync(model.desired());
        opts.onApplied?.(stats);
        // A service waiting for an entry that another one gave up in this change: its turn now.
        for (let i = 0; i < 8 && model.hasChanges; i++) {
          const next = model.takeChanges();
          opts.onApplied?.(sink.applyChanges(next, model.desired(next)));
        }
        for (const c of model.conflicts()) opts.onConflict?.(c);
        if (opts.onHealthChecks) opts.onHealthChecks(model.refs().flatMap((r) => model.healthCheck(r) ?? []));
      },
      onError: (e) => opts.onError?.(e),
    });
    // The first load is applied in start(): that apply attaches the programs.
    await watcher.start();
    return {
      lb,
      model,
      close: () => {
        watcher.close();
        tracker?.close();
        close();
      },
    };
  } catch (e) {
    tracker?.close();
    close();
    throw e;
  }
}

/**
 * `--services-file` as both agents run it (the single process and split mode's): the
 * watcher, the healthCheckNodePort servers it asks for (they stay in the agent in split
 * mode: unprivileged listeners in the NodePort range), and the log lines every mode shares.
 * `extra` carries the mode's own options (ServiceLb and pins, or the mirror's sink).
 */
export async function startServicesFile(file: string, log: Log, extra: Omit<ServicesWatchOptions, 'onHealthChecks' | 'onConflict' | 'onError' | 'nodeName'>): Promise<() => Promise<void>> {
  const { HealthCheckServer } = await import('../services/health-check.js');
  const health = new HealthCheckServer({
    onError: (e) => log.error({ service: e.ref, port: e.port, reason: e.reason }, `${e.message}; the service is programmed, its health check is not served`),
    onListening: (e) => log.info({ service: e.ref, port: e.port }, 'serving healthCheckNodePort'),
  });
  let watch: ServicesWatchHandle;
  try {
    watch = await servicesWatch(file, {
      ...extra,
      // As with --kubernetes: NODE_NAME, else the hostname (endpoints' nodeName in the file say "local").
      nodeName: process.env.NODE_NAME || hostname(),
      onHealthChecks: (entries) => health.update(entries),
      onConflict: (c) => log.error({ file, service: c.ref, entry: c.key, holder: c.holder }, `service not programmed: ${c.key} is already used by ${c.holder}`),
      onError: (err) => log.error({ file, err: err.message }, 'services file rejected; the last good state stays programmed'),
    });
  } catch (e) {
    await health.close();
    throw e;
  }
  return async () => {
    watch.close();
    await health.close();
  };
}
