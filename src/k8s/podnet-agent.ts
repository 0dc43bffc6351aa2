// Pod network configuration in the single-process agent (issue 12): the kernel applier
// (src/podnet/apply.ts), the pure resolver and parsers (desired.ts, validate.ts), the
// sandboxes from the primary network's IPAM records (sandboxes.ts), the reconciler and its
// informers, and the CNI hook that makes a new pod's extra interfaces before its ADD is
// answered. Loaded by startKubernetes only when pod networks are on (--pod-networks).
import { DEFAULTS } from '../defaults.js';
import { messageOf } from '../errors.js';
import type { CniRequest } from '../agent/cni-wire.js';
import { cniPodOf } from '../agent/cni-pod.js';
import type { ClientConfig } from './kubeconfig.js';
import type { AgentMetrics } from './metrics.js';
import type { Logger } from './source.js';
import { httpPodNetApi, type K8sNodeNetwork, type K8sPodNetworkConfig } from './podnet-api.js';
import { startPodNetInformers } from './podnet-informers.js';
import { K8sPodNetSource, type PodNetParsers } from './podnet-source.js';
import { openPodNetApplier, vlanTrunkOps } from '../podnet/apply.js';
import { computeDesired } from '../podnet/desired.js';
import { parseNodeNetwork, parsePodNetworkConfig } from '../podnet/validate.js';
import { listSandboxes } from '../podnet/sandboxes.js';

export interface PodNetAgentOptions {
  cfg: ClientConfig;
  nodeName: string;
  /** The primary network's IPAM directory (its records name each pod's netns; the extra pools live below it). */
  dataDir?: string;
  /** The primary network's name (the conflist's): its records, and eth0's network-status entry. */
  network?: string;
  clusterCidrs: string[];
  /** The node's pin root (VLAN trunks pin their programs below it). */
  pinRoot: string;
  log: Logger;
  metrics?: AgentMetrics;
  /** Tests: quicker retries and resyncs. */
  retryMs?: number;
  resyncMs?: number;
}

export interface PodNetAgent {
  source: K8sPodNetSource;
  /** For the CNI server's beforeAnswer: ADD makes the pod's interfaces (a promise), DEL forgets it. */
  cniHook(req: CniRequest, stdout: string): Promise<void> | undefined;
  close(): Promise<void>;
}

/** validate.ts's results in the reconciler's shape. */
const parse: PodNetParsers = {
  network: (o: K8sNodeNetwork) => {
    const r = parseNodeNetwork(o);
    return r.ok ? { value: r.value, problems: [] } : { problems: r.problems };
  },
  config: (o: K8sPodNetworkConfig) => {
    const r = parsePodNetworkConfig(o);
    return r.ok ? { value: r.value, problems: [] } : { problems: r.problems };
  },
};

export function startPodNetworks(o: PodNetAgentOptions): PodNetAgent {
  const dataDir = o.dataDir ?? DEFAULTS.dataDir;
  const network = o.network ?? 'patu';
  const applier = openPodNetApplier({ dataDir, vlan: vlanTrunkOps({ pinRoot: o.pinRoot }) });
  const m = o.metrics;
  const source = new K8sPodNetSource({
    nodeName: o.nodeName,
    applier,
    resolve: computeDesired,
    parse,
    api: httpPodNetApi(o.cfg),
    clusterCidrs: o.clusterCidrs,
    primaryNetwork: network,
    listSandboxes: () => listSandboxes(dataDir, network),
    log: o.log,
    ...(o.retryMs !== undefined ? { retryMs: o.retryMs } : {}),
    ...(o.resyncMs !== undefined ? { resyncMs: o.resyncMs } : {}),
    ...(m
      ? {
        metrics: {
          reconcile: (result, s) => {
            m.podnetReconciles.inc({ result });
            m.podnetReconcileSeconds.observe(s);
          },
          failure: (reason) => m.podnetFailures.inc({ reason }),
          interfaces: (n) => m.podnetInterfaces.set(n),
          cniAdd: (s) => m.podnetCniAddSeconds.observe(s),
        },
      }
      : {}),
  });
  const informers = startPodNetInformers(o.cfg, source, {
    nodeName: o.nodeName,
    log: o.log,
    ...(m ? { onEvent: (resource) => m.informerEvents.inc({ resource, event: 'change' }) } : {}),
  });
  source.start();
  o.log.info({ node: o.nodeName, network, dataDir }, 'pod networks on (NodeNetworks, PodNetworkConfigs, Namespaces and this node\'s Pods are watched)');
  return {
    source,
    cniHook: (req, stdout) => {
      const pod = cniPodOf(req.env, stdout);
      if (!pod || !pod.containerId) return undefined;
      if (pod.command === 'DEL') {
        source.podDeleted(pod.containerId);
        return undefined;
      }
      if (!pod.netns) return undefined;
      return source.podAdded({
        namespace: pod.namespace, name: pod.name, ...(pod.uid ? { uid: pod.uid } : {}),
        containerId: pod.containerId, netns: pod.netns, ifname: pod.ifname, ips: pod.ips,
      }).then(() => undefined, (e: unknown) => {
        o.log.error({ pod: `${pod.namespace}/${pod.name}`, err: messageOf(e) }, 'pod networks: CNI ADD hook failed; the reconciler retries');
      });
    },
    close: async () => {
      await informers.stop();
      await source.close();
      applier.close();
    },
  };
}
