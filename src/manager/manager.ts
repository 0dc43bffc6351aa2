// `patu manager`: the privileged half of split mode (issue 13). It owns the node's data
// plane (the same node parts the single-process agent opens: src/agent/node.ts), serves
// the CNI socket the launcher forwards to (the privileged side answers the runtime), and
// serves the data-plane API (LocalDataplane, src/dataplane/local.ts) over gRPC with mutual
// TLS (src/rpc/server.ts) to the unprivileged `patu agent --manager`, which watches
// Kubernetes or local files and tells it what to program.
//
// Faults: the agent going away changes nothing here (the last applied state stays
// programmed); SIGTERM closes the sockets and releases fds, and every pinned program, map
// and link stays in place, so traffic keeps flowing while the manager restarts (bin/patu
// runs the plugin itself meanwhile).
import { DEFAULTS } from '../defaults.js';
import { messageOf } from '../errors.js';
import { libbpfLog } from '../kernel/bpf/log.js';
import { createLog, type Log } from '../agent/log.js';
import {
  openNodeParts,
  policyCniHook,
  serveUntilSignal,
  startCniServing,
  startHostPorts,
  startNodeAddresses,
  startNodePortTc,
  type Closer,
  type NodeParts,
} from '../agent/node.js';
import type { AgentPolicyEngine } from '../agent/policy-engine.js';
import type { CniServer } from '../agent/cni-server.js';
import type { AgentMetrics } from '../k8s/metrics.js';
import { Limits, defaultLimits, DEFAULT_NETNS_DIRS } from '../dataplane/limits.js';
import { LocalDataplane } from '../dataplane/local.js';

export interface ManagerDataplaneOptions {
  log: Log;
  pinRoot: string;
  cgroup?: string;
  cgroupFs?: string;
  mountBpffs?: boolean;
  /** The CNI socket bin/patu forwards to (default DEFAULTS.agentSocket: the manager takes the agent's place). */
  cniSocket: string;
  requestTimeoutMs?: number;
  /** The service CIDRs VIPs must lie in (the first one is also the maps' refuse-unanswered range). */
  serviceCidrs: string[];
  clusterCidrs: string[];
  externalCidrs?: string[];
  backendCidrs?: string[];
  netnsDirs?: string[];
  nodePortRange?: [number, number];
  /** What the plugin config must say, and the conflist says: bridge, IPAM directory, masquerade. */
  bridge?: string;
  dataDir?: string;
  masquerade?: boolean;
  /** Where a podCidr setting writes 10-patu.conflist ('' = never). */
  cniConfDir?: string;
  nodeportDevices?: string[];
  hostPortResyncMs?: number;
  /** The node's netns for address tracking (tests: their own). */
  nodeNetns?: string;
  metrics?: AgentMetrics;
  version: string;
}

export interface ManagerDataplane {
  dataplane: LocalDataplane;
  parts: NodeParts;
  cni: CniServer;
  limits: Limits;
  /** Everything but the CNI server, in the order to close. */
  closers: Closer[];
  /** Closes the API implementation, the CNI socket and the parts (pinned state stays). */
  close(): Promise<void>;
}

/**
 * Opens the node's data plane for the API: node parts (cgroup, ServiceLb + hostPorts, node
 * addresses, nodeport tc), the policy engine when an earlier run pinned it (else on the
 * first ApplyPolicy), the CNI socket, and LocalDataplane on top. No gRPC here: tests drive
 * the returned LocalDataplane directly.
 */
export async function openManagerDataplane(o: ManagerDataplaneOptions): Promise<ManagerDataplane> {
  const { log } = o;
  const limits = new Limits(defaultLimits({
    serviceCidrs: o.serviceCidrs,
    clusterCidrs: o.clusterCidrs,
    externalCidrs: o.externalCidrs ?? [],
    backendCidrs: o.backendCidrs ?? [],
    netnsDirs: o.netnsDirs ?? [...DEFAULT_NETNS_DIRS],
    ...(o.nodePortRange ? { nodePortRange: o.nodePortRange } : {}),
    bridge: o.bridge ?? DEFAULTS.bridge,
    pinRoot: o.pinRoot,
    dataDir: o.dataDir ?? DEFAULTS.dataDir,
    // Filled in below, once the tracker runs.
    nodeAddresses: () => nodeAddrs(),
  }));
  let nodeAddrs = (): string[] => [];
  const parts = await openNodeParts({
    log,
    who: 'manager',
    pinRoot: o.pinRoot,
    ...(o.cgroup !== undefined ? { cgroup: o.cgroup } : {}),
    ...(o.cgroupFs !== undefined ? { cgroupFs: o.cgroupFs } : {}),
    ...(o.mountBpffs !== undefined ? { mountBpffs: o.mountBpffs } : {}),
    // Switched by the API (SetAcceleration), never at start: the agent's --accel decides.
    accel: false,
    services: true,
    hostPorts: true,
  });
  const closers: Closer[] = [];
  let dp: LocalDataplane | undefined;
  let cni: CniServer | undefined;
  try {
    const lb = parts.lb!;
    // Before the first apply (which attaches the programs), so they start fully configured.
    const serviceCidr = o.serviceCidrs[0] ?? '';
    lb.configure({ serviceCidr });
    log.info({ serviceCidrs: o.serviceCidrs, clusterCidrs: o.clusterCidrs, externalCidrs: o.externalCidrs ?? [], backendCidrs: o.backendCidrs ?? [], netnsDirs: limits.l.netnsDirs, nodePortRange: limits.l.nodePortRange.join('-') }, 'request limits');
    const tracker = await startNodeAddresses(parts, {
      log,
      what: 'NodePorts and hostPorts',
      ...(o.nodeNetns ? { netns: o.nodeNetns } : {}),
      onChange: () => dp?.nodeAddressesChanged(),
    });
    nodeAddrs = () => tracker.addresses();

    // The policy engine: reused at start when an earlier run pinned its programs (the CNI
    // hook then puts new pods under the policies at once); otherwise opened by the first ApplyPolicy.
    let policy: AgentPolicyEngine | undefined;
    const { openPolicyEngine } = await import('../agent/policy-engine.js');
    const { policyPinned, teardownPolicy } = await import('../dataplane/policy-tc.js');
    const openPolicy = (): AgentPolicyEngine => {
      if (!policy) {
        policy = openPolicyEngine({ pinRoot: o.pinRoot, log, ...parts.bpffs, ...(o.bridge ? { bridges: [o.bridge] } : {}) });
        log.info({ pinRoot: o.pinRoot }, 'network policy programs open');
      }
      return policy;
    };
    if (policyPinned(o.pinRoot)) openPolicy();
    closers.push(() => policy?.close());

    await startNodePortTc(parts, { log, devices: o.nodeportDevices, hasServiceSource: true });
    await startHostPorts(parts, {
      log,
      ...(o.dataDir !== undefined ? { dataDir: o.dataDir } : {}),
      ...(o.hostPortResyncMs !== undefined ? { resyncMs: o.hostPortResyncMs } : {}),
      ...(o.metrics ? { metrics: o.metrics } : {}),
    });

    const { Accel } = await import('../dataplane/accel.js');
    let accel: import('../dataplane/accel.js').Accel | undefined;
    dp = new LocalDataplane({
      log,
      limits,
      pinRoot: o.pinRoot,
      lb,
      serviceCidr,
      cni: () => cni,
      accel: () => (accel ??= Accel.open({ pinRoot: o.pinRoot, cgroupPath: parts.cgroup, ...parts.bpffs, log: (msg) => log.info({ cgroup: parts.cgroup }, msg) })),
      policy: openPolicy,
      policyOpen: () => policy !== undefined,
      policyOff: () => {
        // Closed first (the CNI hook then has no engine), then every patu_pol_* program detached and the pins removed: as the default agent does.
        policy?.close();
        policy = undefined;
        return policyPinned(o.pinRoot) ? teardownPolicy(o.pinRoot) : 0;
      },
      nodeAddresses: nodeAddrs,
      conflist: {
        dir: o.cniConfDir ?? DEFAULTS.cniConfDir,
        clusterCidr: o.clusterCidrs[0] ?? DEFAULTS.clusterCIDR,
        ...(o.bridge ? { bridge: o.bridge } : {}),
        ...(o.dataDir ? { dataDir: o.dataDir } : {}),
        ...(o.masquerade !== undefined ? { masquerade: o.masquerade } : {}),
      },
      version: o.version,
      ...(o.metrics
        ? {
          onServicesApplied: (stats, full, programmed) => {
            const m = o.metrics!;
            m.applySeconds.observe({ kind: full ? 'resync' : 'delta' }, stats.ms / 1000);
            m.mapOps.inc(stats.ops);
            // Every entry in the maps (hostPorts' too): what this node answers on.
            m.servicePortsProgrammed.set(programmed);
            if (stats.udpDestroy) m.udpSocketsDestroyed.inc(stats.udpDestroy.sockets);
          },
        }
        : {}),
    });
    const local = dp;
    closers.unshift(() => local.close());

    // CNI ADD (from the runtime or over the API) tells the policy engine the new pod's address before it is answered.
    const hook = await policyCniHook(() => policy?.engine, log);
    cni = await startCniServing({
      log,
      socketPath: o.cniSocket,
      ...(o.requestTimeoutMs !== undefined ? { requestTimeoutMs: o.requestTimeoutMs } : {}),
      ...(o.metrics ? { metrics: o.metrics } : {}),
      beforeAnswer: hook,
    });
  } catch (e) {
    await Promise.allSettled([...closers, ...parts.closers()].map(async (c) => c()));
    throw e;
  }
  const all = [...closers, ...parts.closers()];
  const server = cni;
  return {
    dataplane: dp,
    parts,
    cni: server,
    limits,
    closers: all,
    close: async () => {
      await server.close();
      for (const c of all) {
        try {
          await c();
        } catch (e) {
          log.error({ err: messageOf(e) }, 'closing a data-plane part failed');
        }
      }
    },
  };
}

export interface ManagerOptions extends Omit<ManagerDataplaneOptions, 'log' | 'metrics' | 'version'> {
  /** unix:///run/patu/manager.sock or tcp://ADDR:PORT */
  listen: string;
  /** The manager's TLS files (src/rpc/tls.ts: ca.crt + server.crt/.key, or a Secret's tls.crt/tls.key). */
  tlsDir: string;
  logLevel: string;
  /** host:port for /metrics, /healthz, /readyz (default DEFAULTS.managerMetricsAddr). */
  metricsAddr?: string;
  version: string;
}

export async function runManager(opts: ManagerOptions): Promise<void> {
  const log = createLog({ level: opts.logLevel, base: { component: 'patu-manager' } });
  libbpfLog.sink = (text) => log.warn({ libbpf: text.trimEnd() }, 'libbpf');
  // TLS first: a manager that cannot serve the API safely starts nothing.
  const { loadTlsDir, serverTlsOptions, watchTlsDir } = await import('../rpc/tls.js');
  const tlsFiles = loadTlsDir(opts.tlsDir, 'server');

  const closers: Closer[] = [];
  const { AgentMetrics, startHealthServer } = await import('../k8s/metrics.js');
  const { DataplaneRpcMetrics } = await import('../rpc/metrics.js');
  const metrics = new AgentMetrics();
  const rpcMetrics = new DataplaneRpcMetrics(metrics.registry);
  let notReady: () => string | undefined = () => 'starting';
  const metricsAddr = opts.metricsAddr ?? DEFAULTS.managerMetricsAddr;
  if (metricsAddr) {
    const health = await startHealthServer({ addr: metricsAddr, metrics, notReady: () => notReady() });
    log.info({ addr: metricsAddr, port: health.port }, 'serving /metrics, /healthz, /readyz');
    closers.push(() => health.close());
  }

  const md = await openManagerDataplane({ ...opts, log, metrics });
  const { startDataplaneServer } = await import('../rpc/server.js');
  const server = await startDataplaneServer({ listen: opts.listen, tls: serverTlsOptions(tlsFiles), impl: md.dataplane, log, metrics: rpcMetrics });
  log.info({ listen: server.address, tlsDir: opts.tlsDir }, 'serving the data-plane API (gRPC, mutual TLS 1.3)');
  // Rotation: new files are picked up without a restart; a bad set keeps the old one.
  const watch = watchTlsDir(opts.tlsDir, () => {
    try {
      server.setTls(serverTlsOptions(loadTlsDir(opts.tlsDir, 'server')));
      log.info({ tlsDir: opts.tlsDir }, 'TLS files changed: new connections use them');
    } catch (e) {
      log.error({ tlsDir: opts.tlsDir, err: messageOf(e) }, 'TLS files changed but cannot be used; the previous ones stay in use');
    }
  });
  notReady = () => undefined;
  // The API stops first (no new changes), then the data plane's parts; pins stay.
  await serveUntilSignal({
    log,
    cni: md.cni,
    closers: [
      async () => {
        watch.close();
        await server.close();
        for (const c of md.closers) await c();
      },
      ...closers,
    ],
  });
}
