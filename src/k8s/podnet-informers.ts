// The informers of pod network configuration (issue 12), one per kind: NodeNetworks and
// PodNetworkConfigs (cluster-wide), Namespaces (labels only, for namespaceSelector) and
// this node's Pods (spec.nodeName field selector, trimmed). A CRD that is not installed
// answers 404: that kind counts as listed and empty (logged once), and its informer keeps
// retrying with the informers' capped backoff, so installing the CRDs later needs no restart.
import type { ClientConfig } from './kubeconfig.js';
import { ApiError, startInformer, type BackoffOptions, type RunningInformer } from './informers.js';
import { messageOf } from '../errors.js';
import type { Logger } from './source.js';
import {
  podNetPath, slimNamespaceLabels, slimNodeNetwork, slimPodNetPod, slimPodNetworkConfig,
  type K8sNamespaceLabels, type K8sNodeNetwork, type K8sPodNetPod, type K8sPodNetworkConfig,
} from './podnet-api.js';
import type { K8sPodNetSource, PodNetResource } from './podnet-source.js';

export interface PodNetInformers {
  informers: RunningInformer<never>[];
  stop(): Promise<void>;
}

export function startPodNetInformers(cfg: ClientConfig, src: K8sPodNetSource, o: { nodeName: string; log: Logger; backoff?: BackoffOptions; onEvent?: (resource: PodNetResource) => void }): PodNetInformers {
  const lastError = new Map<string, string>();
  const handlers = <T>(resource: PodNetResource, up: (x: T) => void, del: (x: T) => void) => ({
    onUpsert: (x: T) => {
      o.onEvent?.(resource);
      up(x);
    },
    onDelete: (x: T) => {
      o.onEvent?.(resource);
      del(x);
    },
    onSynced: () => {
      lastError.delete(resource);
      src.markSynced(resource);
    },
    onError: (e: Error, restartInMs: number) => {
      if (e instanceof ApiError && e.statusCode === 404 && (resource === 'nodenetworks' || resource === 'podnetworkconfigs')) {
        src.kindNotInstalled(resource);
        return;
      }
      // Logged when the error changes, not at every retry.
      const msg = messageOf(e);
      if (lastError.get(resource) === msg) return;
      lastError.set(resource, msg);
      o.log.error({ resource, err: msg, restartInMs }, 'pod networks: informer failed; retrying');
    },
  });
  const b = o.backoff ?? {};
  const informers = [
    startInformer<K8sNodeNetwork>(cfg, { resource: 'nodenetworks', path: podNetPath('nodenetworks'), slim: slimNodeNetwork },
      handlers<K8sNodeNetwork>('nodenetworks', (x) => src.handleNetwork(x), (x) => src.handleNetworkDelete(x)), b),
    startInformer<K8sPodNetworkConfig>(cfg, { resource: 'podnetworkconfigs', path: podNetPath('podnetworkconfigs'), slim: slimPodNetworkConfig },
      handlers<K8sPodNetworkConfig>('podnetworkconfigs', (x) => src.handleConfig(x), (x) => src.handleConfigDelete(x)), b),
    startInformer<K8sNamespaceLabels>(cfg, { resource: 'namespaces', path: '/api/v1/namespaces', slim: slimNamespaceLabels },
      handlers<K8sNamespaceLabels>('namespaces', (x) => src.handleNamespace(x), (x) => src.handleNamespaceDelete(x)), b),
    startInformer<K8sPodNetPod>(cfg, { resource: 'pods', path: '/api/v1/pods', fieldSelector: `spec.nodeName=${o.nodeName}`, slim: slimPodNetPod },
      handlers<K8sPodNetPod>('pods', (x) => src.handlePod(x), (x) => src.handlePodDelete(x)), b),
  ] as unknown as RunningInformer<never>[];
  return {
    informers,
    stop: async () => {
      await Promise.all(informers.map((i) => i.stop()));
    },
  };
}
