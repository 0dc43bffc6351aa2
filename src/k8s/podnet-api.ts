// The apiserver calls of pod network configuration (issue 12), behind one interface so
// the reconciler (podnet-source.ts) runs the same against a real apiserver and in unit
// tests: the objects as cached (trimmed), reads of one object, and the writes the agent's
// ClusterRole allows: status subresources, finalizers (merge patch with a resourceVersion
// precondition: a concurrent writer makes it fail with 409 and the caller re-reads),
// events, and the pod's network-status annotation.
import { PODNET_API_VERSION, type NodeNetworkStatus, type PodNetworkConfigStatus } from '../podnet/types.js';
import type { ClientConfig } from './kubeconfig.js';
import { ApiError, getJson } from './informers.js';
import { MERGE_PATCH, sendJson } from './api-write.js';
import { NETWORK_STATUS_ANNOTATION } from '../podnet/types.js';

export interface PodNetMeta {
  name?: string;
  namespace?: string;
  uid?: string;
  resourceVersion?: string;
  generation?: number;
  deletionTimestamp?: string;
  creationTimestamp?: string;
  finalizers?: string[];
}

export interface K8sNodeNetwork {
  metadata: PodNetMeta;
  spec?: unknown;
  status?: NodeNetworkStatus;
}

export interface K8sPodNetworkConfig {
  metadata: PodNetMeta;
  spec?: unknown;
  status?: PodNetworkConfigStatus;
}

/** A pod as the reconciler's cache holds it. */
export interface K8sPodNetPod {
  metadata: PodNetMeta & { labels?: Record<string, string>; annotations?: Record<string, string> };
  spec?: { hostNetwork?: boolean; nodeName?: string };
  status?: { podIPs?: { ip: string }[] };
}

export interface K8sNamespaceLabels {
  metadata: PodNetMeta & { labels?: Record<string, string> };
}

const metaOf = (m: PodNetMeta): PodNetMeta => ({
  name: m.name, uid: m.uid, resourceVersion: m.resourceVersion,
  ...(m.namespace ? { namespace: m.namespace } : {}),
  ...(m.generation !== undefined ? { generation: m.generation } : {}),
  ...(m.deletionTimestamp ? { deletionTimestamp: m.deletionTimestamp } : {}),
  ...(m.creationTimestamp ? { creationTimestamp: m.creationTimestamp } : {}),
  ...(m.finalizers?.length ? { finalizers: [...m.finalizers] } : {}),
});

export const slimNodeNetwork = (o: K8sNodeNetwork): K8sNodeNetwork => ({ metadata: metaOf(o.metadata), spec: o.spec, ...(o.status ? { status: o.status } : {}) });
export const slimPodNetworkConfig = (o: K8sPodNetworkConfig): K8sPodNetworkConfig => ({ metadata: metaOf(o.metadata), spec: o.spec, ...(o.status ? { status: o.status } : {}) });
export const slimNamespaceLabels = (o: K8sNamespaceLabels): K8sNamespaceLabels => ({
  metadata: { name: o.metadata.name, resourceVersion: o.metadata.resourceVersion, labels: { ...(o.metadata.labels ?? {}) } },
});
/** Labels, uid, hostNetwork, deletion, the addresses (eth0's network-status entry) and our annotation only. */
export function slimPodNetPod(o: K8sPodNetPod): K8sPodNetPod {
  const ann = o.metadata.annotations?.[NETWORK_STATUS_ANNOTATION];
  return {
    metadata: {
      ...metaOf(o.metadata),
      labels: { ...(o.metadata.labels ?? {}) },
      ...(ann !== undefined ? { annotations: { [NETWORK_STATUS_ANNOTATION]: ann } } : {}),
    },
    spec: { hostNetwork: o.spec?.hostNetwork ?? false, ...(o.spec?.nodeName ? { nodeName: o.spec.nodeName } : {}) },
    status: { podIPs: (o.status?.podIPs ?? []).map((p) => ({ ip: p.ip })) },
  };
}

export type PodNetKind = 'nodenetworks' | 'podnetworkconfigs';

export const podNetPath = (kind: PodNetKind, namespace?: string, name?: string): string =>
  `/apis/${PODNET_API_VERSION}${namespace ? `/namespaces/${encodeURIComponent(namespace)}` : ''}/${kind}${name ? `/${encodeURIComponent(name)}` : ''}`;

export interface EventSpec {
  /** The object the event is about. */
  kind: 'PodNetworkConfig' | 'NodeNetwork';
  namespace?: string;
  name: string;
  uid?: string;
  type: 'Normal' | 'Warning';
  reason: string;
  message: string;
}

export interface PodNetApi {
  /** undefined: not found. */
  getPod(namespace: string, name: string): Promise<K8sPodNetPod | undefined>;
  getConfig(namespace: string, name: string): Promise<K8sPodNetworkConfig | undefined>;
  getNetwork(name: string): Promise<K8sNodeNetwork | undefined>;
  /** Rejects with ApiError 409 when `resourceVersion` is not current. */
  patchConfigStatus(namespace: string, name: string, resourceVersion: string, status: PodNetworkConfigStatus): Promise<K8sPodNetworkConfig>;
  patchNetworkStatus(name: string, resourceVersion: string, status: NodeNetworkStatus): Promise<K8sNodeNetwork>;
  /** Replaces metadata.finalizers (409 when `resourceVersion` is not current). */
  setFinalizers(kind: PodNetKind, namespace: string | undefined, name: string, resourceVersion: string, finalizers: string[]): Promise<void>;
  /** Sets (string) or removes (null) the pod's network-status annotation. */
  patchPodAnnotation(namespace: string, name: string, value: string | null): Promise<void>;
  createEvent(e: EventSpec, node: string): Promise<void>;
}

const notFound = <T>(p: Promise<T>): Promise<T | undefined> =>
  p.catch((e: unknown) => {
    if (e instanceof ApiError && e.statusCode === 404) return undefined;
    throw e;
  });

/** PodNetApi over the agent's ClientConfig. */
export function httpPodNetApi(cfg: ClientConfig): PodNetApi {
  return {
    // Asked during a CNI ADD (whose answer waits at most DEFAULTS.beforeAnswerTimeoutMs): short.
    getPod: (ns, name) => notFound(getJson<K8sPodNetPod>(cfg, `/api/v1/namespaces/${encodeURIComponent(ns)}/pods/${encodeURIComponent(name)}`, 2_000)),
    getConfig: (ns, name) => notFound(getJson<K8sPodNetworkConfig>(cfg, podNetPath('podnetworkconfigs', ns, name), 10_000)),
    getNetwork: (name) => notFound(getJson<K8sNodeNetwork>(cfg, podNetPath('nodenetworks', undefined, name), 10_000)),
    patchConfigStatus: (ns, name, rv, status) =>
      sendJson(cfg, 'PATCH', `${podNetPath('podnetworkconfigs', ns, name)}/status`, { metadata: { resourceVersion: rv }, status }, MERGE_PATCH),
    patchNetworkStatus: (name, rv, status) =>
      sendJson(cfg, 'PATCH', `${podNetPath('nodenetworks', undefined, name)}/status`, { metadata: { resourceVersion: rv }, status }, MERGE_PATCH),
    setFinalizers: async (kind, ns, name, rv, finalizers) => {
      await sendJson(cfg, 'PATCH', podNetPath(kind, ns, name), { metadata: { resourceVersion: rv, finalizers } }, MERGE_PATCH);
    },
    patchPodAnnotation: async (ns, name, value) => {
      await sendJson(cfg, 'PATCH', `/api/v1/namespaces/${encodeURIComponent(ns)}/pods/${encodeURIComponent(name)}`,
        { metadata: { annotations: { [NETWORK_STATUS_ANNOTATION]: value } } }, MERGE_PATCH);
    },
    createEvent: async (e, node) => {
      const ns = e.namespace ?? 'default';
      const now = new Date().toISOString();
      await sendJson(cfg, 'POST', `/api/v1/namespaces/${encodeURIComponent(ns)}/events`, {
        apiVersion: 'v1',
        kind: 'Event',
        metadata: { generateName: `${e.name}.`, namespace: ns },
        involvedObject: { apiVersion: PODNET_API_VERSION, kind: e.kind, name: e.name, ...(e.namespace ? { namespace: e.namespace } : {}), ...(e.uid ? { uid: e.uid } : {}) },
        type: e.type,
        reason: e.reason,
        message: e.message.slice(0, 1024),
        source: { component: 'patu-agent', host: node },
        reportingComponent: 'patu-agent',
        reportingInstance: node,
        firstTimestamp: now,
        lastTimestamp: now,
        count: 1,
      });
    },
  };
}
