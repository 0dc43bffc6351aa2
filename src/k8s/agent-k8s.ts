// `patu agent --kubernetes`: the Kubernetes source wired to the data plane,
// the pod registry, the CNI conflist and the health/metrics server.
//
// Two ways to the data plane:
//   - in-process (the default): ServiceLb, the node address tracker, the pod registry and
//     the conflist are this process's (loaded on demand: the split agent never loads them);
//   - split (`patu agent --manager`, `remote` below): everything goes to the agent's
//     DataplaneMirror, and the manager does the kernel's part: the service CIDR and the pod
//     subnet become node settings (the manager writes the conflist), pod opt-outs become
//     pod flags, and policy carries no node addresses (the manager fills in its own).
//     healthCheckNodePorts are served here either way (unprivileged ports, and only this
//     side knows the local endpoint counts).
import { hostname } from 'node:os';
import { DEFAULTS } from '../defaults.js';
import type { PodRegistry } from '../dataplane/accel-registry.js';
import type { ServiceLb } from '../dataplane/service-lb.js';
import type { NodeAddressTracker } from '../dataplane/node-addrs.js';
import type { NodeSettings } from '../dataplane/api.js';
import { HealthCheckServer } from '../services/health-check.js';
import { messageOf } from '../errors.js';
import { bigIntToIp, contains, parseCidr } from '../net/cidr.js';
import { describeUdpDestroy } from '../dataplane/udp-destroy-report.js';
import { loadClientConfig } from './kubeconfig.js';
import type { AgentMetrics } from './metrics.js';
import { K8sSource, type Logger, type PodFlagSink, type ServiceSink } from './source.js';
import { K8sPolicySource, type PolicyStateSink } from './policy-source.js';

/** Split mode: where the source's output goes instead of the kernel (the agent's DataplaneMirror). */
export interface RemoteDataplaneSinks {
  services: ServiceSink;
  pods: PodFlagSink;
  /** Merged into what the data plane holds (an absent field keeps its value). */
  setNodeSettings(s: NodeSettings): void;
}

export interface KubernetesAgentOptions {
  kubeconfig?: string;
  /** This node's name (the agent: --node-name, else NODE_NAME, else the hostname: see resolveNodeName). */
  nodeName: string;
  /** The agent's environment: in a pod, KUBERNETES_SERVICE_HOST/PORT locate the apiserver. */
  env: NodeJS.ProcessEnv;
  /** Mount bpffs if missing (false in the DaemonSet: see BpffsOptions). */
  mountBpffs?: boolean;
  clusterCIDR?: string;
  /** Service CIDR: unanswered addresses in it are refused (default DEFAULTS.serviceCIDR; '' = none). */
  serviceCIDR?: string;
  /** Where healthCheckNodePorts listen (default 0.0.0.0; tests: 127.0.0.1). */
  healthCheckHost?: string;
  /** The node's netns for address tracking (tests: their own; default: the agent's). */
  nodeNetns?: string;
  /** Where 10-patu.conflist goes; '' to not write one. */
  cniConfDir?: string;
  /** What the conflist tells the plugin: host bridge, IPAM directory, masquerade (defaults: the plugin's). */
  bridge?: string;
  dataDir?: string;
  masquerade?: boolean;
  /** In-process only (ignored with `remote`). */
  pinRoot: string;
  cgroup: string;
  /** Split mode: the data plane is the manager's, reached through these sinks (no kernel access here). */
  remote?: RemoteDataplaneSinks;
  /** Compiled sock_lb.o (tests). */
  objectPath?: string;
  /** The agent's ServiceLb, shared with its hostPorts (not closed by close()); else one is opened here. */
  lb?: ServiceLb;
  log: Logger;
  metrics?: AgentMetrics;
  coalesceMs?: number;
  resyncMs?: number;
  /**
   * NetworkPolicy enforcement (--network-policy): where the state built from Pods
   * (cluster-wide), Namespaces and NetworkPolicies goes (the agent's PolicyEngine).
   * Undefined: no policy watches, and the Pod watch stays this node's.
   */
  policy?: PolicyStateSink;
  /**
   * Pod network configuration (--pod-networks, default on): NodeNetworks and
   * PodNetworkConfigs give pods extra interfaces (src/k8s/podnet-agent.ts). In-process only:
   * split mode does not cover it yet (the manager's API has no call for it).
   */
  podNetworks?: boolean;
  /**
   * Routes to the other nodes' pods from the Node objects (src/nodes; --node-routing):
   * default auto (direct on a shared link, else VXLAN); false: off (something else routes
   * between nodes). In-process only: split mode does not route between nodes yet.
   */
  nodeRouting?: import('../dataplane/node-routes.js').NodeRoutesOptions | false;
  /**
   * The pods' MTU written to the conflist (--pod-mtu). Undefined: with node routing that may
   * use VXLAN (auto, vxlan), the uplink's MTU minus 50 (vxlanPodMtu); otherwise the plugin's default.
   */
  podMtu?: number;
  /** Pod networks: the primary network's name in the conflist (its IPAM records name each pod's netns). */
  network?: string;
}

/** The NetworkPolicy side of the Kubernetes source, when the agent enforces policy (o.policy). */
function policySourceOf(o: KubernetesAgentOptions, nodeName: string): K8sPolicySource | undefined {
  return o.policy
    ? new K8sPolicySource({
      nodeName,
      sink: o.policy,
      log: o.log,
      ...(o.coalesceMs !== undefined ? { coalesceMs: o.coalesceMs } : {}),
    })
    : undefined;
}

/** --node-name, else NODE_NAME (the DaemonSet sets it from spec.nodeName), else the hostname. */
export const resolveNodeName = (flag: string | undefined, env: NodeJS.ProcessEnv): string => flag || env.NODE_NAME || hostname();

export interface KubernetesAgent {
  source: K8sSource;
  /** With `policy`: the NetworkPolicy side (CNI ADD tells it new pods' addresses). */
  policy?: K8sPolicySource;
  /** In-process mode's ServiceLb (undefined in split mode). */
  lb?: ServiceLb;
  /** Pod networks (in-process, unless switched off): its CNI hook goes into the CNI server's beforeAnswer. */
  podnet?: import('./podnet-agent.js').PodNetAgent;
  close(): Promise<void>;
}

export async function startKubernetes(o: KubernetesAgentOptions): Promise<KubernetesAgent> {
  if (o.remote) return startKubernetesRemote(o, o.remote);
  const cfg = loadClientConfig({ env: o.env, ...(o.kubeconfig ? { kubeconfig: o.kubeconfig } : {}) });
  const nodeName = o.nodeName;
  const clusterCIDR = o.clusterCIDR ?? DEFAULTS.clusterCIDR;
  const own = !o.lb;
  // Loaded here, not at the top: the split agent (startKubernetesRemote) never loads the kernel side.
  const { ServiceLb } = await import('../dataplane/service-lb.js');
  const { NodeAddressTracker } = await import('../dataplane/node-addrs.js');
  const { openPodRegistry } = await import('../dataplane/accel-registry.js');
  const { buildConflist, writeConflistIfChanged } = await import('../cni/conflist.js');
  const lb = o.lb ?? ServiceLb.open({ pinRoot: o.pinRoot, cgroupPath: o.cgroup, ...(o.mountBpffs === undefined ? {} : { mountBpffs: o.mountBpffs }), ...(o.objectPath ? { objectPath: o.objectPath } : {}) });
  if (own) for (const repair of lb.repairs) o.log.warn({ pinRoot: o.pinRoot, repair }, 'service map pins repaired');
  let tracker: NodeAddressTracker;
  const policy = policySourceOf(o, nodeName);
  try {
    // Before the first apply (which attaches the programs), so they start fully configured.
    const serviceCIDR = o.serviceCIDR ?? DEFAULTS.serviceCIDR;
    lb.configure({ serviceCidr: serviceCIDR });
    o.log.info({ serviceCIDR: serviceCIDR || 'none' }, serviceCIDR ? 'service CIDR: unanswered addresses in it are refused' : 'no service CIDR');
    tracker = new NodeAddressTracker({
      // The node's addresses also go to policy: traffic from the node (kubelet probes) is always allowed.
      sink: policy
        ? {
          configure: (c) => lb.configure(c),
          setNodeAddresses: (addrs) => {
            policy.setNodeAddresses([...addrs.keys()].filter((a) => !a.startsWith('127.')));
            return lb.setNodeAddresses(addrs);
          },
        }
        : lb,
      ...(o.nodeNetns ? { netns: o.nodeNetns } : {}),
      pollMs: DEFAULTS.nodeAddrPollMs,
      onChange: (c) => o.log.info(c, 'node addresses changed (NodePorts answer on these)'),
      onError: (e) => o.log.error({ err: messageOf(e) }, 'reading node addresses failed; retrying'),
    });
  } catch (e) {
    if (own) lb.close();
    throw e;
  }
  let nodeSync: import('../nodes/routes-sync.js').NodeRoutesSync | undefined;
  const outsideWarned = new Set<string>();
  if (o.nodeRouting !== false) {
    const { NodeRoutesSync, nodeRoutesLogging } = await import('../nodes/routes-sync.js');
    nodeSync = new NodeRoutesSync({ nodeName, ...(o.nodeRouting ?? {}), ...(o.nodeNetns ? { netns: o.nodeNetns } : {}), ...nodeRoutesLogging(o.log, { source: 'Nodes' }) });
  }
  let podMtu = o.podMtu;
  if (podMtu === undefined && o.nodeRouting !== false && o.nodeRouting?.mode !== 'direct') {
    const { vxlanPodMtu } = await import('../dataplane/node-routes.js');
    const { Rtnl } = await import('../kernel/netlink/rtnl.js');
    const rtnl = o.nodeNetns ? Rtnl.openInNetns(o.nodeNetns) : Rtnl.open();
    try {
      podMtu = vxlanPodMtu(rtnl);
    } finally {
      rtnl.close();
    }
    o.log.info({ podMtu }, 'pod MTU: the uplink\'s minus 50, so pods fit a VXLAN tunnel to any node (set --pod-mtu, ConfigMap pod-mtu, to choose)');
  }
  let registry: PodRegistry | undefined;
  const confDir = o.cniConfDir ?? DEFAULTS.cniConfDir;
  const health = healthCheckServer(o);
  let cidrOff = false;
  const source = new K8sSource({
    serviceCIDR: o.serviceCIDR ?? DEFAULTS.serviceCIDR,
    // A ClusterIP outside the configured range means the range is not this cluster's
    // (k3s uses 10.43.0.0/16, the default here is kubeadm's): refusing a range that is
    // not the cluster's could refuse real hosts of the node's network, so the check goes off.
    onOutsideServiceCidr: (ref, clusterIP) => {
      if (cidrOff) return;
      cidrOff = true;
      try {
        lb.configure({ serviceCidr: '' });
        o.log.error({ service: ref, clusterIP, serviceCIDR: o.serviceCIDR ?? DEFAULTS.serviceCIDR },
          'service CIDR check switched off: this ClusterIP is outside it, so it is not the cluster\'s range; set --service-cidr (ConfigMap service-cidr) to the apiserver\'s --service-cluster-ip-range');
      } catch (e) {
        o.log.error({ err: messageOf(e) }, 'switching the service CIDR check off failed');
      }
    },
    onHealthChecks: (entries) => health.update(entries),
    nodeName,
    clusterCIDR,
    ...(nodeSync ? { onNodes: (nodes: import('../nodes/model.js').NodeInfo[]) => {
      // The pods' masquerade exempts the cluster CIDR only: a node's pods outside it would be reached masqueraded.
      for (const n of nodes) {
        if (outsideWarned.has(n.name) || cidrInside(n.podCIDR, clusterCIDR)) continue;
        outsideWarned.add(n.name);
        o.log.warn({ node: n.name, podCIDR: n.podCIDR, clusterCIDR }, 'a node\'s podCIDR is outside the cluster CIDR: pod traffic to it is masqueraded; set --cluster-cidr (ConfigMap cluster-cidr) to cover every node');
      }
      nodeSync.update(nodes);
    } } : {}),
    sink: lb,
    log: o.log,
    ...(o.metrics ? { metrics: o.metrics } : {}),
    ...(o.coalesceMs !== undefined ? { coalesceMs: o.coalesceMs } : {}),
    ...(o.resyncMs !== undefined ? { resyncMs: o.resyncMs } : {}),
    ...(policy ? { policy } : {}),
    // Opened on first need: the registry exists once acceleration was switched on.
    podRegistry: () => (registry ??= openPodRegistry(o.pinRoot)),
    // ServiceLb attaches after its first successful apply (never against half-filled maps).
    onApplied: (stats) => {
      if (stats.attachedNow) o.log.info({ cgroup: o.cgroup }, 'service programs attached');
      if (stats.udpDestroy) {
        o.metrics?.udpSocketsDestroyed.inc(stats.udpDestroy.sockets);
        const d = describeUdpDestroy(stats.udpDestroy);
        if (d) o.log[d.level](d.fields, d.msg);
      }
    },
    onPodCidr: (cidr) => {
      if (!confDir) return;
      const conflist = buildConflist({
        podCIDR: cidr,
        clusterCIDR,
        pinRoot: o.pinRoot,
        ...(o.bridge ? { bridge: o.bridge } : {}),
        ...(o.dataDir ? { dataDir: o.dataDir } : {}),
        ...(o.masquerade !== undefined ? { masquerade: o.masquerade } : {}),
        ...(podMtu !== undefined ? { mtu: podMtu } : {}),
      });
      const wrote = writeConflistIfChanged(confDir, conflist);
      o.log.info({ file: `${confDir}/${DEFAULTS.conflistName}`, podCIDR: cidr, changed: wrote }, wrote ? 'CNI conflist written' : 'CNI conflist up to date');
    },
  });
  // A contested entry stays with the service the maps give it to (an agent restart must not flip it).
  source.model.seedOwners([...lb.programmedState.services.values()].map((s) => [s.key, s.ref] as const));
  source.start(cfg);
  o.log.info({ apiserver: cfg.server, credentials: cfg.source, node: nodeName }, 'watching Kubernetes');
  let podnet: import('./podnet-agent.js').PodNetAgent | undefined;
  if (o.podNetworks !== false) {
    const { startPodNetworks } = await import('./podnet-agent.js');
    podnet = startPodNetworks({
      cfg, nodeName, clusterCidrs: [clusterCIDR], pinRoot: o.pinRoot, log: o.log,
      ...(o.dataDir ? { dataDir: o.dataDir } : {}),
      ...(o.network ? { network: o.network } : {}),
      ...(o.metrics ? { metrics: o.metrics } : {}),
    });
  }
  return {
    source,
    ...(policy ? { policy } : {}),
    ...(podnet ? { podnet } : {}),
    lb,
    close: async () => {
      await podnet?.close();
      policy?.close();
      await source.close();
      nodeSync?.close();
      await health.close();
      tracker.close();
      registry?.close();
      if (own) lb.close();
    },
  };
}

/** Whether CIDR `inner` lies inside `outer` (both IPv4 text; false when either does not parse). */
function cidrInside(inner: string, outer: string): boolean {
  try {
    const i = parseCidr(inner);
    const o = parseCidr(outer);
    return i.prefix >= o.prefix && contains(o, bigIntToIp(i.ip, i.family));
  } catch {
    return false;
  }
}

function healthCheckServer(o: KubernetesAgentOptions): HealthCheckServer {
  return new HealthCheckServer({
    ...(o.healthCheckHost !== undefined ? { host: o.healthCheckHost } : {}),
    onError: (e) => {
      o.metrics?.healthCheckErrors.inc();
      o.log.error({ service: e.ref, port: e.port, reason: e.reason }, `${e.message}; the service is programmed, its health check is not served`);
    },
    onListening: (e) => o.log.info({ service: e.ref, port: e.port }, 'serving healthCheckNodePort'),
  });
}

/**
 * Split mode: the same source, its output to the manager through `remote`. Nothing here
 * touches the kernel or the host's files: no ServiceLb, no node address tracker (policy's
 * node addresses stay empty: the manager uses its own view), no pod registry, no conflist.
 */
async function startKubernetesRemote(o: KubernetesAgentOptions, remote: RemoteDataplaneSinks): Promise<KubernetesAgent> {
  const cfg = loadClientConfig({ env: o.env, ...(o.kubeconfig ? { kubeconfig: o.kubeconfig } : {}) });
  const nodeName = o.nodeName;
  const clusterCIDR = o.clusterCIDR ?? DEFAULTS.clusterCIDR;
  const serviceCIDR = o.serviceCIDR ?? DEFAULTS.serviceCIDR;
  const policy = policySourceOf(o, nodeName);
  // Before any service: the mirror pushes node settings first in every round.
  remote.setNodeSettings({ clusterCidr: clusterCIDR, serviceCidr: serviceCIDR, serviceCidrOff: serviceCIDR === '' });
  o.log.info({ serviceCIDR: serviceCIDR || 'none', clusterCIDR }, 'service and cluster CIDR handed to the data plane manager');
  const health = healthCheckServer(o);
  let cidrOff = false;
  const source = new K8sSource({
    serviceCIDR,
    onOutsideServiceCidr: (ref, clusterIP) => {
      if (cidrOff) return;
      cidrOff = true;
      remote.setNodeSettings({ serviceCidrOff: true });
      o.log.error({ service: ref, clusterIP, serviceCIDR },
        'service CIDR check switched off (manager): this ClusterIP is outside it, so it is not the cluster\'s range; set --service-cidr (ConfigMap service-cidr) to the apiserver\'s --service-cluster-ip-range');
    },
    onHealthChecks: (entries) => health.update(entries),
    nodeName,
    clusterCIDR,
    sink: remote.services,
    podFlags: remote.pods,
    log: o.log,
    ...(o.metrics ? { metrics: o.metrics } : {}),
    ...(o.coalesceMs !== undefined ? { coalesceMs: o.coalesceMs } : {}),
    ...(o.resyncMs !== undefined ? { resyncMs: o.resyncMs } : {}),
    ...(policy ? { policy } : {}),
    // The manager writes the conflist (it owns the host's CNI conf dir).
    onPodCidr: (cidr) => remote.setNodeSettings({ podCidr: cidr }),
  });
  source.start(cfg);
  o.log.info({ apiserver: cfg.server, credentials: cfg.source, node: nodeName }, 'watching Kubernetes (data plane: the manager)');
  // Asked for explicitly: say it is not done (the default's silence is the same as off).
  if (o.podNetworks === true) o.log.warn({}, 'pod networks (NodeNetwork, PodNetworkConfig) are not covered in split mode yet: run the single-process agent for them');
  return {
    source,
    ...(policy ? { policy } : {}),
    close: async () => {
      policy?.close();
      await source.close();
      await health.close();
    },
  };
}
