// The patu node agent: a long-running process that
//   - serves CNI requests from bin/patu over a unix socket (pod events skip a Node start),
//   - with --accel, switches on same-node socket acceleration (pinned: survives restarts),
//   - with --services-file, watches a services file and programs ClusterIP load balancing,
//   - with --policy-file, watches a policy file and enforces its NetworkPolicies (src/policy),
//   - with --nodes-file, routes to the other nodes' pods (direct or VXLAN: src/nodes),
//   - or with --kubernetes, takes services, endpoints, pod opt-outs and the pod subnet
//     from the apiserver (src/k8s), and serves /metrics, /healthz, /readyz.
//   - or with --manager (split mode, src/agent/split.ts), does none of the kernel's part
//     itself: the same sources feed `patu manager` over gRPC with mutual TLS.
// State lives in pinned eBPF objects, so stopping or restarting the agent never
// breaks established connections; bin/patu falls back to running the plugin itself.
import { createLog } from './log.js';
import { openNodeParts, type Closer, policyCniHook, serveUntilSignal, startCniServing, startHostPorts, startNodeAddresses, startNodePortTc } from './node.js';
import { DEFAULTS } from '../defaults.js';
import { libbpfLog } from '../kernel/bpf/log.js';
// Types only: the Kubernetes side is loaded on demand, with --kubernetes.
import type { KubernetesAgentOptions } from '../k8s/agent-k8s.js';
import type { SplitOptions } from './split.js';
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
  /** Route to the other nodes' pods from this nodes file (watched; a bad edit keeps the last good routes). */
  nodesFile?: string;
  /** Node routing: auto (direct on a shared link, else VXLAN), direct or vxlan; VXLAN's VNI and port. */
  nodeRouting?: { mode?: 'auto' | 'direct' | 'vxlan' | 'off'; vni?: number; port?: number };
  /** --pod-mtu: the MTU the conflist gives pods (Kubernetes mode); undefined: detected (see KubernetesAgentOptions.podMtu). */
  podMtu?: number;
  /** --node-name for --nodes-file (default NODE_NAME, else the hostname). */
  nodeName?: string;
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
  /**
   * Pod network configuration from NodeNetworks and PodNetworkConfigs (--pod-networks):
   * default on with --kubernetes; ignored without it.
   */
  podNetworks?: boolean;
  /** Split mode (--manager): the data plane is `patu manager`'s at this address; nothing of the kernel is opened here. */
  manager?: SplitOptions;
}

/** Options that act on the kernel or the host: the manager's in split mode (named as the CLI spells them). */
export function kernelOptionsGiven(opts: AgentOptions): string[] {
  const given: string[] = [];
  if ((opts.nodeportDevices ?? []).some((d) => d.trim() !== '')) given.push('--nodeport-devices');
  if (opts.cgroup !== undefined) given.push('--cgroup');
  if (opts.cgroupFs !== undefined) given.push('--cgroup-fs');
  if (opts.hostPorts === true) given.push('--hostports');
  if (opts.nodesFile !== undefined) given.push('--nodes-file');
  return given;
}

export async function runAgent(opts: AgentOptions): Promise<void> {
  const log = createLog({ level: opts.logLevel, base: { component: 'patu-agent' } });
  // libbpf's own warnings into the agent's log (the CLI pointed them at stderr).
  libbpfLog.sink = (text) => log.warn({ libbpf: text.trimEnd() }, 'libbpf');
  if (opts.manager) {
    const refused = kernelOptionsGiven(opts);
    if (refused.length) throw new Error(`agent: ${refused.join(', ')} ${refused.length > 1 ? 'act' : 'acts'} on the kernel, which is the manager's in split mode: give ${refused.length > 1 ? 'them' : 'it'} to \`patu manager\`, not to \`patu agent --manager\``);
    // Dynamic: the default single process never loads gRPC or TLS code.
    const { runSplitAgent } = await import('./split.js');
    return runSplitAgent(opts, opts.manager, log);
  }
  const closers: Closer[] = [];
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

  // The node-local parts (src/agent/node.ts, shared with `patu manager`): the cgroup2
  // attach point, acceleration, the one ServiceLb and its hostPorts partition.
  const hostPorts = opts.hostPorts ?? Boolean(opts.servicesFile || opts.kubernetes);
  const node = await openNodeParts({
    log,
    who: 'agent',
    pinRoot: opts.pinRoot,
    ...(opts.cgroup !== undefined ? { cgroup: opts.cgroup } : {}),
    ...(opts.cgroupFs !== undefined ? { cgroupFs: opts.cgroupFs } : {}),
    ...(opts.mountBpffs !== undefined ? { mountBpffs: opts.mountBpffs } : {}),
    accel: opts.accel,
    services: Boolean(opts.servicesFile || opts.kubernetes),
    hostPorts,
  });
  const { bpffs, cgroup, lb } = node;

  if (opts.servicesFile) {
    // The standalone service source; the Kubernetes source feeds the same model.
    const { startServicesFile } = await import('./services-watch.js');
    const file = opts.servicesFile;
    closers.push(await startServicesFile(file, log, {
      pinRoot: opts.pinRoot,
      cgroupPath: cgroup,
      ...(lb ? { lb } : {}),
      ...bpffs,
      ...(opts.serviceCidr !== undefined ? { serviceCidr: opts.serviceCidr } : {}),
      nodeAddresses: { onChange: (c) => log.info(c, 'node addresses changed (NodePorts answer on these)') },
      onApplied: (stats) => {
        log.info({ file, services: stats.services, mapOps: stats.ops, ms: stats.ms }, 'services programmed');
        const d = stats.udpDestroy && describeUdpDestroy(stats.udpDestroy);
        if (d) log[d.level](d.fields, d.msg);
      },
      onRepair: (repair) => log.warn({ pinRoot: opts.pinRoot, repair }, 'service map pins repaired'),
    }));
  }

  if (opts.nodesFile) {
    if (opts.kubernetes) throw new Error('agent: --nodes-file and --kubernetes both give the node list (Kubernetes: the Node objects); use one');
    const { startNodesFile } = await import('./nodes-watch.js');
    const { resolveNodeName } = await import('../k8s/agent-k8s.js');
    const nodeName = resolveNodeName(opts.nodeName, process.env);
    const { mode, ...rest } = opts.nodeRouting ?? {};
    if (mode === 'off') throw new Error('agent: --nodes-file is for routing between nodes: --node-routing off contradicts it');
    const stop = await startNodesFile(opts.nodesFile, log, { nodeName, ...rest, ...(mode ? { mode } : {}) });
    closers.push(stop);
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
        if (r.changed || r.flushed || r.evicted) log.info({ file, mapChanges: r.changed, flowsCutOff: r.flushed, socketsEvicted: r.evicted, ms: r.ms, phases: r.phases }, 'network policy programmed');
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
  let beforeAnswer: ((req: import('./cni-wire.js').CniRequest, stdout: string) => void | Promise<void>) | undefined;
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
    const routing = opts.nodeRouting;
    if (opts.podMtu !== undefined) opts.kubernetes = { ...opts.kubernetes, podMtu: opts.podMtu };
    const k8s = await startKubernetes({
      ...(policy ? { policy } : {}),
      ...(routing ? { nodeRouting: routing.mode === 'off' ? false : { ...(routing.mode ? { mode: routing.mode } : {}), ...(routing.vni ? { vni: routing.vni } : {}), ...(routing.port ? { port: routing.port } : {}) } } : {}),
      ...(opts.podNetworks !== undefined ? { podNetworks: opts.podNetworks } : {}),
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
    const podnet = k8s.podnet;
    if (podnet) {
      // After policy (synchronous), the pod's extra interfaces: the answer waits for them (bounded: cni-server.ts).
      const policyHook = beforeAnswer;
      beforeAnswer = (req, stdout) => {
        void policyHook?.(req, stdout);
        return podnet.cniHook(req, stdout);
      };
    }
  }

  if (policyFileEngine) {
    // A pod the policy file names without an address (status.podIP) gets it from its CNI ADD (K8S_POD_NAMESPACE/NAME in CNI_ARGS).
    const engine = policyFileEngine;
    beforeAnswer = await policyCniHook(() => engine, log);
  }

  await startNodePortTc(node, { log, devices: opts.nodeportDevices, hasServiceSource: Boolean(opts.servicesFile || opts.kubernetes) });
  if (node.hostPortSink) {
    // hostPorts alone (before their first apply attaches the programs): nobody else keeps patu_node_addr, where hostPorts without a hostIP answer.
    if (!opts.servicesFile && !opts.kubernetes && lb) await startNodeAddresses(node, { log, what: 'hostPorts' });
    await startHostPorts(node, {
      log,
      ...(opts.dataDir !== undefined ? { dataDir: opts.dataDir } : {}),
      ...(opts.hostPortResyncMs !== undefined ? { resyncMs: opts.hostPortResyncMs } : {}),
      ...(metrics ? { metrics } : {}),
    });
  }
  // Last: the sources above stop writing first (lb closes after every node part).
  closers.push(...node.closers());

  const cni = await startCniServing({
    log,
    socketPath: opts.cniSocket,
    ...(opts.requestTimeoutMs !== undefined ? { requestTimeoutMs: opts.requestTimeoutMs } : {}),
    ...(metrics ? { metrics } : {}),
    ...(beforeAnswer ? { beforeAnswer } : {}),
  });
  await serveUntilSignal({ log, cni, closers });
}
