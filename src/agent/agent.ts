// The patu node agent: a long-running process that
//   - serves CNI requests from bin/patu over a unix socket (pod events skip a Node start),
//   - with --accel, switches on same-node socket acceleration (pinned: survives restarts),
//   - with --services-file, watches a services file and programs ClusterIP load balancing,
//   - with --policy-file, watches a policy file and enforces its NetworkPolicies (src/policy),
//   - or with --kubernetes, takes services, endpoints, pod opt-outs and the pod subnet
//     from the apiserver (src/k8s), and serves /metrics, /healthz, /readyz.
// State lives in pinned eBPF objects, so stopping or restarting the agent never
// breaks established connections; bin/patu falls back to running the plugin itself.
import { hostname } from 'node:os';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { createLog } from './log.js';
import { startCniServer } from './cni-server.js';
import { clip } from './cni-wire.js';
import { DEFAULTS } from '../defaults.js';
import { libbpfLog } from '../kernel/bpf/log.js';
// Types only: the Kubernetes side is loaded on demand, with --kubernetes.
import type { KubernetesAgentOptions } from '../k8s/agent-k8s.js';
import { messageOf } from '../errors.js';
import { describeUdpDestroy } from '../dataplane/udp-destroy-report.js';

export interface AgentOptions {
  cniSocket: string;
  logLevel: string;
  pinRoot: string;
  /** cgroup2 directory the cgroup programs attach to (default: the hierarchy's root, discovered). */
  cgroup?: string;
  /** Look for the hierarchy's root only at or below this directory (in the DaemonSet: the host's /sys/fs/cgroup, mounted at /host/...). */
  cgroupFs?: string;
  accel: boolean;
  servicesFile?: string;
  /** Enforce the NetworkPolicies of this policy file (watched; a bad edit keeps the last good state). */
  policyFile?: string;
  /** The pod bridge whose veths the policy programs attach to at start (--bridge; default: every patu veth). */
  policyBridge?: string;
  /** Watch a Kubernetes apiserver for services, endpoints, this node's pods and Node (the rest comes from here). */
  kubernetes?: Omit<KubernetesAgentOptions, 'pinRoot' | 'cgroup' | 'log' | 'metrics' | 'env' | 'nodeName' | 'mountBpffs'> & {
    /** --node-name; else NODE_NAME, else the hostname. */
    nodeName?: string;
  };
  /** Mount bpffs when missing (the CLI: false with PATU_BPFFS_MOUNT=never, as in the DaemonSet). */
  mountBpffs?: boolean;
  /** host:port for /metrics, /healthz, /readyz (Kubernetes mode: default DEFAULTS.metricsAddr). */
  metricsAddr?: string;
  /**
   * Service CIDR (--service-cidr): unanswered addresses in it are refused. Undefined:
   * DEFAULTS.serviceCIDR with --kubernetes, none with --services-file; '': none.
   */
  serviceCidr?: string;
  /** Deadline of one CNI request (default DEFAULTS.agentRequestTimeoutMs). */
  requestTimeoutMs?: number;
  /** Uplinks where packets from outside are translated to services by tc (src/dataplane/nodeport-tc.ts); none: off. */
  nodeportDevices?: string[];
  /**
   * Serve pod hostPorts (records under <dataDir>/_hostports): default on when the
   * agent programs services (--services-file, --kubernetes), which is when it owns the
   * service maps anyway; true also without a service source; false never.
   */
  hostPorts?: boolean;
  /** The IPAM data directory the plugin uses (default DEFAULTS.dataDir). */
  dataDir?: string;
  /** hostPort full resync interval (default 10 s; tests). */
  hostPortResyncMs?: number;
  /**
   * Enforce NetworkPolicy from the Kubernetes API (--network-policy): default on with
   * --kubernetes (a CNI that ignores policies silently allows what they deny); false
   * leaves the policy programs and maps alone (a cluster where another component enforces
   * policy). Ignored without --kubernetes.
   */
  networkPolicy?: boolean;
}

export async function runAgent(opts: AgentOptions): Promise<void> {
  const log = createLog({ level: opts.logLevel, base: { component: 'patu-agent' } });
  // libbpf's own warnings into the agent's log (the CLI pointed them at stderr).
  libbpfLog.sink = (text) => log.warn({ libbpf: text.trimEnd() }, 'libbpf');
  const closers: (() => void | Promise<void>)[] = [];
  if (opts.kubernetes && opts.servicesFile) {
    throw new Error('agent: --kubernetes and --services-file both program the same service maps; use one');
  }
  if (opts.kubernetes && opts.policyFile) {
    throw new Error('agent: --policy-file and --kubernetes both program the policy maps; use one');
  }
  // The health server comes first, so /healthz answers while the informers sync.
  let metrics: import('../k8s/metrics.js').AgentMetrics | undefined;
  let notReady: () => string | undefined = () => undefined;
  const metricsAddr = opts.metricsAddr ?? (opts.kubernetes ? DEFAULTS.metricsAddr : undefined);
  if (metricsAddr) {
    const { AgentMetrics, startHealthServer } = await import('../k8s/metrics.js');
    metrics = new AgentMetrics();
    const health = await startHealthServer({ addr: metricsAddr, metrics, notReady: () => notReady() });
    log.info({ addr: metricsAddr, port: health.port }, 'serving /metrics, /healthz, /readyz');
    closers.push(() => health.close());
  }

  const bpffs = opts.mountBpffs === undefined ? {} : { mountBpffs: opts.mountBpffs };
  // Found once, here at the top: the layers below take the directory as a parameter.
  // Serving CNI alone needs no cgroup, so a host without cgroup2 can still do that.
  let cgroup = '';
  const hostPorts = opts.hostPorts ?? Boolean(opts.servicesFile || opts.kubernetes);
  if (opts.accel || opts.servicesFile || opts.kubernetes || hostPorts) {
    const { resolveCgroup } = await import('../kernel/cgroup.js');
    try {
      cgroup = resolveCgroup({ cgroup: opts.cgroup, under: opts.cgroupFs });
    } catch (e) {
      throw new Error(`agent: ${messageOf(e)} (--cgroup names the directory explicitly; --cgroup-fs where to look)`, { cause: e });
    }
    log.info({ cgroup, ...(opts.cgroup ? {} : { discovered: true }) }, 'cgroup2 attach point');
  }

  if (opts.accel) {
    const { Accel } = await import('../dataplane/accel.js');
    const accel = Accel.open({ pinRoot: opts.pinRoot, cgroupPath: cgroup, ...bpffs, log: (msg) => log.info({ cgroup }, msg) });
    accel.enable();
    const st = accel.status();
    log.info({ cgroup, pods: st.pods.length, sockets: st.sockets }, 'socket acceleration on');
  }

  // One ServiceLb for every source of service map entries (the agent is their only
  // writer): the services file or Kubernetes, and hostPorts in their own partition,
  // registered before the main source's first resync so that resync leaves them alone.
  let lb: import('../dataplane/service-lb.js').ServiceLb | undefined;
  let pokeHostPorts = (): void => {};
  let hostPortSink: import('../dataplane/service-lb.js').ServiceSinkLike | undefined;
  if (opts.servicesFile || opts.kubernetes || hostPorts) {
    const { ServiceLb } = await import('../dataplane/service-lb.js');
    const { isHostPortRef } = await import('../hostport/desired.js');
    lb = ServiceLb.open({ pinRoot: opts.pinRoot, cgroupPath: cgroup, ...bpffs });
    for (const repair of lb.repairs) log.warn({ pinRoot: opts.pinRoot, repair }, 'service map pins repaired');
    // After a service apply the hostPorts resync: a port a service let go is served at once.
    if (hostPorts) hostPortSink = lb.partition(isHostPortRef, () => pokeHostPorts());
  }

  if (opts.servicesFile) {
    // The standalone service source; the Kubernetes source feeds the same model.
    const { servicesWatch } = await import('./services-watch.js');
    const { HealthCheckServer } = await import('../services/health-check.js');
    const health = new HealthCheckServer({
      onError: (e) => log.error({ service: e.ref, port: e.port, reason: e.reason }, `${e.message}; the service is programmed, its health check is not served`),
      onListening: (e) => log.info({ service: e.ref, port: e.port }, 'serving healthCheckNodePort'),
    });
    closers.push(() => health.close());
    const file = opts.servicesFile;
    const watch = await servicesWatch(file, {
      pinRoot: opts.pinRoot,
      cgroupPath: cgroup,
      ...(lb ? { lb } : {}),
      ...bpffs,
      ...(opts.serviceCidr !== undefined ? { serviceCidr: opts.serviceCidr } : {}),
      // As with --kubernetes: NODE_NAME, else the hostname (endpoints' nodeName in the file say "local").
      nodeName: process.env.NODE_NAME || hostname(),
      onHealthChecks: (entries) => health.update(entries),
      onConflict: (c) => log.error({ file, service: c.ref, entry: c.key, holder: c.holder }, `service not programmed: ${c.key} is already used by ${c.holder}`),
      nodeAddresses: { onChange: (c) => log.info(c, 'node addresses changed (NodePorts answer on these)') },
      onApplied: (stats) => {
        log.info({ file, services: stats.services, mapOps: stats.ops, ms: stats.ms }, 'services programmed');
        const d = stats.udpDestroy && describeUdpDestroy(stats.udpDestroy);
        if (d) log[d.level](d.fields, d.msg);
      },
      onRepair: (repair) => log.warn({ pinRoot: opts.pinRoot, repair }, 'service map pins repaired'),
      onError: (err) => log.error({ file, err: err.message }, 'services file rejected; the last good state stays programmed'),
    });
    closers.push(() => watch.close());
  }

  let policyFileEngine: import('../policy/engine.js').PolicyEngine | undefined;
  if (opts.policyFile) {
    // The standalone policy source; enforcement stays (pinned, attached) when the agent stops.
    const { policyWatch } = await import('./policy-watch.js');
    const file = opts.policyFile;
    const pw = await policyWatch(file, {
      pinRoot: opts.pinRoot,
      ...bpffs,
      log,
      ...(opts.policyBridge ? { bridges: [opts.policyBridge] } : {}),
      onApplied: (r) => {
        if (r.changed || r.flushed || r.evicted) log.info({ file, mapChanges: r.changed, flowsCutOff: r.flushed, socketsEvicted: r.evicted, ms: r.ms }, 'network policy programmed');
        // Applies that left something out (rules that did not fit, duplicate addresses) or fell back to deny-only.
        for (const p of r.problems) metrics?.policyApplyErrors.inc({ reason: p.kind });
        if (r.fallback) metrics?.policyApplyErrors.inc({ reason: 'fallback' });
      },
    });
    closers.push(() => pw.close());
    policyFileEngine = pw.engine;
    if (metrics) {
      const { policySeries, readPolicyNames } = await import('../policy/view.js');
      metrics.setPolicySource(() => policySeries(pw.dp.stats(), readPolicyNames(opts.pinRoot)));
    }
  }

  // CNI requests for Kubernetes pods: a successful ADD puts the pod under its policies before it is answered.
  let beforeAnswer: ((req: import('./cni-wire.js').CniRequest, stdout: string) => void) | undefined;
  if (opts.kubernetes) {
    const { startKubernetes, resolveNodeName } = await import('../k8s/agent-k8s.js');
    let policy: import('../k8s/policy-source.js').PolicyStateSink | undefined;
    if (opts.networkPolicy ?? true) {
      const { openPolicyEngine } = await import('./policy-engine.js');
      const engine = openPolicyEngine({ pinRoot: opts.pinRoot, log, ...bpffs, ...(opts.kubernetes.bridge ? { bridges: [opts.kubernetes.bridge] } : {}) });
      policy = engine.sink;
      closers.push(() => engine.close());
      if (metrics) {
        const { policySeries, readPolicyNames } = await import('../policy/view.js');
        metrics.setPolicySource(() => policySeries(engine.dp.stats(), readPolicyNames(opts.pinRoot)));
      }
      log.info({ pinRoot: opts.pinRoot }, 'network policy on (NetworkPolicies, Namespaces and every Pod are watched)');
    } else {
      // Off after a run with it on: the old programs would keep enforcing a state nothing updates any more.
      const { policyPinned, teardownPolicy } = await import('../dataplane/policy-tc.js');
      const detached = policyPinned(opts.pinRoot) ? teardownPolicy(opts.pinRoot) : 0;
      log.info({ detached }, 'network policy off (--network-policy=off): NetworkPolicies are not enforced by patu');
    }
    const k8s = await startKubernetes({
      ...(policy ? { policy } : {}),
      ...opts.kubernetes,
      // The agent is where the process environment is read: the layers below get values.
      nodeName: resolveNodeName(opts.kubernetes.nodeName, process.env),
      env: process.env,
      ...bpffs,
      ...(opts.serviceCidr !== undefined ? { serviceCIDR: opts.serviceCidr } : {}),
      pinRoot: opts.pinRoot,
      cgroup,
      log,
      ...(lb ? { lb } : {}),
      ...(metrics ? { metrics } : {}),
    });
    notReady = () => k8s.source.notReady();
    closers.push(() => k8s.close());
    const policySource = k8s.policy;
    if (policySource) {
      const { cniPodOf } = await import('./cni-pod.js');
      beforeAnswer = (req, stdout) => {
        const pod = cniPodOf(req.env, stdout);
        if (!pod) return;
        if (pod.command === 'DEL') {
          policySource.podAddressGone(pod.namespace, pod.name);
          return;
        }
        const t0 = performance.now();
        const now = policySource.podAddressKnown(pod.namespace, pod.name, pod.ips);
        log.debug({ pod: `${pod.namespace}/${pod.name}`, ips: pod.ips, appliedNow: now, ms: Math.round((performance.now() - t0) * 100) / 100 }, 'policy: pod address from CNI ADD');
      };
    }
  }

  if (policyFileEngine) {
    // A pod the policy file names without an address (status.podIP) gets it from its CNI ADD (K8S_POD_NAMESPACE/NAME in CNI_ARGS).
    const engine = policyFileEngine;
    const { cniPodOf } = await import('./cni-pod.js');
    beforeAnswer = (req, stdout) => {
      const pod = cniPodOf(req.env, stdout);
      if (!pod) return;
      const r = pod.command === 'DEL' ? engine.podAddressGone(pod.namespace, pod.name) : engine.podAddressKnown(pod.namespace, pod.name, pod.ips);
      if (r) log.info({ pod: `${pod.namespace}/${pod.name}`, command: pod.command, ips: pod.ips, mapChanges: r.changed, ms: r.ms }, 'network policy: pod address from CNI');
    };
  }

  const nodeportDevices = (opts.nodeportDevices ?? []).map((d) => d.trim()).filter((d) => d !== '');
  if (nodeportDevices.length === 0) {
    // Off (the flag absent, or '' as the DaemonSet's ConfigMap says by default): links an
    // earlier run pinned would go on translating without anyone to follow the uplinks.
    if (existsSync(join(opts.pinRoot, 'links', 'nodeport'))) {
      const { detachNodePortLinks } = await import('../dataplane/nodeport-tc.js');
      const removed = detachNodePortLinks(opts.pinRoot);
      if (removed.length) log.info({ links: removed }, 'nodeport tc path off: links of an earlier run detached');
    }
  } else {
    // After the service source opened the maps (it repairs their pins first); the tc
    // programs only read them. Checked here, before anything is loaded: a bad list names itself.
    const { NodePortTc, parseDevices } = await import('../dataplane/nodeport-tc.js');
    const devices = parseDevices(nodeportDevices, '--nodeport-devices');
    if (!opts.servicesFile && !opts.kubernetes && !hostPortSink) log.warn({ devices }, 'nodeport tc path without a service source (--services-file or --kubernetes) or hostPorts: nothing will be translated');
    const np = NodePortTc.open({
      pinRoot: opts.pinRoot, devices, ...bpffs,
      log: (msg, fields) => log.info(fields, msg),
    });
    np.watch({
      pollMs: DEFAULTS.nodeportLinkPollMs,
      resyncMs: DEFAULTS.nodeportResyncMs,
      onError: (err) => log.error({ err: messageOf(err) }, 'nodeport tc: attaching to the uplinks failed; retried on the next link change or resync'),
    });
    log.info({ devices, attached: np.attachedDevices() }, 'nodeport tc path on');
    // Closing releases fds only: the pinned links keep translating while the agent is away.
    closers.push(() => np.close());
  }

  if (hostPortSink) {
    const { hostPortsWatch } = await import('./hostports-watch.js');
    const dataDir = opts.dataDir ?? DEFAULTS.dataDir;
    if (!opts.servicesFile && !opts.kubernetes && lb) {
      // hostPorts alone (before their first apply attaches the programs): nobody else keeps patu_node_addr, where hostPorts without a hostIP answer.
      const { NodeAddressTracker } = await import('../dataplane/node-addrs.js');
      const tracker = new NodeAddressTracker({
        sink: lb,
        pollMs: DEFAULTS.nodeAddrPollMs,
        onChange: (c) => log.info(c, 'node addresses changed (hostPorts answer on these)'),
        onError: (e) => log.error({ err: messageOf(e) }, 'reading node addresses failed; retrying'),
      });
      closers.push(() => tracker.close());
    }
    let last = -1;
    const hp = hostPortsWatch({
      dataDir,
      sink: hostPortSink,
      ...(opts.hostPortResyncMs !== undefined ? { resyncMs: opts.hostPortResyncMs } : {}),
      onApplied: (stats, records) => {
        metrics?.hostPortsProgrammed.set(records);
        if (stats.ops > 0 || records !== last) log.info({ records, mapOps: stats.ops, ms: Math.round(stats.ms * 100) / 100 }, 'hostPorts programmed');
        if (stats.attachedNow) log.info({ cgroup }, 'service programs attached');
        const d = stats.udpDestroy && describeUdpDestroy(stats.udpDestroy);
        if (d) log[d.level](d.fields, d.msg);
        if (stats.udpDestroy) metrics?.udpSocketsDestroyed.inc(stats.udpDestroy.sockets);
        last = records;
      },
      onConflict: (c) => {
        metrics?.hostPortConflicts.inc({ kind: c.kind });
        if (c.kind === 'service') log.error({ record: c.record, entry: c.key, heldBy: c.heldBy }, 'hostPort not served: a service holds the same address, port and protocol');
        else log.error({ record: c.record, kept: c.keptName }, 'hostPort not served: another record claims the same port (written around the CNI plugin?)');
      },
      onBadRecord: (name, problem) => log.warn({ dir: `${dataDir}/_hostports`, file: name, problem }, 'ignoring a file that is not a hostPort record'),
      onError: (e) => log.error({ err: e.message }, 'hostPorts: programming failed; retried at the next change or resync'),
    });
    pokeHostPorts = () => hp.poke();
    log.info({ dir: `${dataDir}/_hostports` }, 'serving hostPorts');
    closers.push(() => {
      pokeHostPorts = () => {};
      hp.close();
    });
  }

  // Last: the sources above stop writing first.
  if (lb) {
    const opened = lb;
    closers.push(() => opened.close());
  }

  const cni = await startCniServer({
    socketPath: opts.cniSocket,
    ...(opts.requestTimeoutMs !== undefined ? { requestTimeoutMs: opts.requestTimeoutMs } : {}),
    onProblem: (what, err) => log.error({ err: clip(messageOf(err), 1024) }, what),
    ...(beforeAnswer ? { beforeAnswer: (req: import('./cni-wire.js').CniRequest, outcome: { stdout: string }) => beforeAnswer!(req, outcome.stdout) } : {}),
    onRequest: (req, outcome, millis) => {
      const result = outcome.dropped ? 'dropped' : outcome.timedOut ? 'timeout' : outcome.deferred ? 'deferred' : outcome.exitCode === 0 ? 'ok' : 'error';
      metrics?.cniRequests.inc({ command: clip(req.env.CNI_COMMAND, 16) ?? 'unknown', result });
      // Every string here comes from the client: clipped, so a log line stays a line.
      log.info(
        {
          command: clip(req.env.CNI_COMMAND, 16),
          containerId: clip(req.env.CNI_CONTAINERID, 128),
          ifname: clip(req.env.CNI_IFNAME, 32),
          exitCode: outcome.exitCode,
          ...(outcome.deferred ? { deferred: 'IPAM lock busy: handed back to bin/patu' } : {}),
          ...(outcome.dropped ? { dropped: outcome.dropped } : {}),
          ...(outcome.timedOut ? { timedOut: true } : {}),
          ms: Math.round(millis * 100) / 100,
          ...(outcome.exitCode > 0 ? { error: clip(outcome.stdout.trim(), 2048) } : {}),
          ...(outcome.warnings ? { warnings: outcome.warnings.map((w) => clip(w, 1024)) } : {}),
        },
        'cni request',
      );
      // The CNI answer carries no stack; this is where to find it (cause chain included).
      if (outcome.error) log.debug({ command: req.env.CNI_COMMAND, containerId: req.env.CNI_CONTAINERID, err: outcome.error }, 'cni request failed');
    },
  });
  log.info({ socket: opts.cniSocket }, 'serving CNI requests');

  await new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      log.info({ signal }, 'shutting down (pinned eBPF state stays in place)');
      // Closing the socket makes bin/patu fall back to running the plugin itself.
      const closed = cni.close();
      Promise.allSettled([...closers.map(async (close) => close()), closed]).then(() => resolve());
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
  const stuck = cni.stuckThreads();
  if (stuck > 0) {
    // Node's exit would wait for these threads forever (blocked in system calls).
    log.warn({ threads: stuck }, 'exiting with CNI worker threads stuck in system calls');
    log.flush?.();
    const { exitNow } = await import('../kernel/ffi/libc.js');
    exitNow(0);
  }
}
