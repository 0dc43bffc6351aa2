// `patu agent --manager ADDR --tls-dir DIR`: the agent of split mode. It watches its
// sources (Kubernetes, a services file, a policy file) exactly as the single process does,
// but owns no kernel state: no CNI socket (the manager serves the launcher), no cgroup, no
// bpf, no host paths. What the sources want goes into a DataplaneMirror (mirror.ts), which
// pushes it to the manager over gRPC with mutual TLS (src/rpc/client.ts); the manager
// validates and programs it. Loaded only with --manager (runAgent imports this module
// dynamically), so the default single process never loads gRPC or TLS code.
//
// Certificates: the client's pair and CA are read from --tls-dir (patu's layout or a
// cert-manager Secret's) and watched: new files are used for the next connection, without
// a restart.
import { DEFAULTS } from '../defaults.js';
import { messageOf } from '../errors.js';
import type { Log } from './log.js';
import type { AgentOptions } from './agent.js';
import type { Closer } from './node.js';

export interface SplitOptions {
  /** unix:///path or tcp://host:port of `patu manager`. */
  address: string;
  /** The client's certificate, key and CA. */
  tlsDir: string;
  /** The name the manager's certificate must carry (default DEFAULTS.managerServerName). */
  serverName?: string;
}

export async function runSplitAgent(opts: AgentOptions, split: SplitOptions, log: Log): Promise<void> {
  const closers: Closer[] = [];
  const serverName = split.serverName ?? DEFAULTS.managerServerName;
  if (opts.kubernetes && opts.servicesFile) throw new Error('agent: --kubernetes and --services-file both program the same service maps; use one');
  if (opts.kubernetes && opts.policyFile) throw new Error('agent: --policy-file and --kubernetes both program the policy maps; use one');

  // Files first: a bad --tls-dir is an error at start, naming the file.
  const { loadTlsDir, clientTlsOptions, watchTlsDir } = await import('../rpc/tls.js');
  const tls = clientTlsOptions(loadTlsDir(split.tlsDir, 'client'), serverName);

  let metrics: import('../k8s/metrics.js').AgentMetrics | undefined;
  let rpcMetrics: import('../rpc/metrics.js').DataplaneRpcMetrics | undefined;
  let notReady: () => string | undefined = () => 'starting';
  const metricsAddr = opts.metricsAddr ?? (opts.kubernetes ? DEFAULTS.metricsAddr : undefined);
  if (metricsAddr) {
    const { AgentMetrics, startHealthServer } = await import('../k8s/metrics.js');
    const { DataplaneRpcMetrics } = await import('../rpc/metrics.js');
    metrics = new AgentMetrics();
    rpcMetrics = new DataplaneRpcMetrics(metrics.registry);
    const health = await startHealthServer({ addr: metricsAddr, metrics, notReady: () => notReady() });
    log.info({ addr: metricsAddr, port: health.port }, 'serving /metrics, /healthz, /readyz');
    closers.push(() => health.close());
  }

  const { connectDataplane } = await import('../rpc/client.js');
  const { DataplaneMirror } = await import('./mirror.js');
  const dp = connectDataplane({ address: split.address, tls, log, ...(rpcMetrics ? { metrics: rpcMetrics } : {}) });
  const m = metrics;
  const mirror = new DataplaneMirror({
    dataplane: dp,
    log,
    onServicesApplied: (r, full) => {
      m?.mapOps.inc(r.mapOps);
      m?.applySeconds.observe({ kind: full ? 'resync' : 'delta' }, r.applyMs / 1000);
    },
    // Bad input, as the in-process sources count theirs (a ClusterIP outside the service CIDR, a bad address).
    onServiceRefused: () => m?.serviceInputErrors.inc({ reason: 'managerLimits' }),
    onPolicyApplied: (r) => {
      if (r.problems.length) m?.policyApplyErrors.inc({ reason: 'manager' }, r.problems.length);
      if (r.fallback) m?.policyApplyErrors.inc({ reason: 'fallback' });
    },
    onCallFailed: (kind) => {
      if (kind === 'services') m?.applyErrors.inc();
    },
  });
  log.info({ manager: split.address, serverName, session: mirror.session, tlsDir: split.tlsDir }, 'split mode: the data plane is the manager\'s; this agent holds no kernel state');

  // Rotation: the next connection uses the new files (calls in flight finish on the old one).
  const tlsWatch = watchTlsDir(split.tlsDir, () => {
    try {
      dp.setTls(clientTlsOptions(loadTlsDir(split.tlsDir, 'client'), serverName));
    } catch (e) {
      log.error({ tlsDir: split.tlsDir, err: messageOf(e) }, 'TLS files changed but cannot be used; keeping the ones loaded');
    }
  });

  if (opts.accel) mirror.setAcceleration(true);

  let sourceNotReady: () => string | undefined = () => undefined;
  if (opts.servicesFile) {
    // The service CIDR is the manager's to apply: named, it is sent; absent, the check is off (as in-process).
    mirror.setNodeSettings(opts.serviceCidr ? { serviceCidr: opts.serviceCidr, serviceCidrOff: false } : { serviceCidrOff: true });
    const { startServicesFile } = await import('./services-watch.js');
    closers.push(await startServicesFile(opts.servicesFile, log, { pinRoot: '', cgroupPath: '', sink: mirror.services }));
  }

  if (opts.policyFile) {
    const { policyFileToSink } = await import('./policy-file-remote.js');
    const pf = await policyFileToSink(opts.policyFile, { sink: mirror.policy, log });
    closers.push(() => pf.close());
  }

  if (opts.kubernetes) {
    const { startKubernetes, resolveNodeName } = await import('../k8s/agent-k8s.js');
    const policyOn = opts.networkPolicy ?? true;
    if (!policyOn) {
      // As the default agent's teardown at start: a state from a run with policy on must not stay enforced with nothing updating it.
      mirror.setPolicyOff();
      log.info({}, 'network policy off (--network-policy=off): the manager is told to stop enforcing (detach and unpin its policy programs)');
    }
    const k8s = await startKubernetes({
      ...opts.kubernetes,
      ...(policyOn ? { policy: mirror.policy } : {}),
      ...(opts.podNetworks !== undefined ? { podNetworks: opts.podNetworks } : {}),
      nodeName: resolveNodeName(opts.kubernetes.nodeName, process.env),
      env: process.env,
      ...(opts.serviceCidr !== undefined ? { serviceCIDR: opts.serviceCidr } : {}),
      pinRoot: '',
      cgroup: '',
      remote: { services: mirror.services, pods: mirror.pods, setNodeSettings: (s) => mirror.setNodeSettings(s) },
      log,
      ...(metrics ? { metrics } : {}),
    });
    sourceNotReady = () => k8s.source.notReady();
    closers.push(() => k8s.close());
  }
  notReady = () => sourceNotReady() ?? mirror.notReady();

  await new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      log.info({ signal }, 'shutting down (the manager keeps the data plane as it is)');
      resolve();
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
  // Sources first (they stop feeding the mirror), then whatever push is in flight gets a moment to land.
  for (const c of closers.reverse()) await Promise.resolve().then(c).catch((e: unknown) => log.error({ err: messageOf(e) }, 'closing failed'));
  tlsWatch.close();
  await Promise.race([mirror.close(), new Promise((r) => setTimeout(r, 2000).unref())]);
  await dp.close();
}
