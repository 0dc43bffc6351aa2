// Kubernetes objects -> the policy model's state (src/policy/types.ts): Pods (cluster-wide:
// selectors span namespaces), Namespaces and NetworkPolicies. Pure functions, no client
// import, so they can be unit-tested and measured without an apiserver.
//
// Objects are trimmed as they arrive (slim*), before the informer caches them: with a
// cluster-wide Pod watch the cache holds every pod of the cluster, so it keeps only what
// policy needs (labels, addresses, container ports, hostNetwork, nodeName, phase) and
// what the service side reads (the acceleration annotation).
import { isIPv4 } from '../net/cidr.js';
import type {
  IPBlock, LabelSelector, LabelSelectorRequirement, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule,
  NetworkPolicyPeer, NetworkPolicyPort, PolicyNamespace, PolicyPod, PolicyPodPort, PolicyProtocol, PolicyType,
} from '../policy/types.js';

export interface K8sNamespace {
  metadata: { name?: string; resourceVersion?: string; labels?: Record<string, string> };
}

/** networking.k8s.io/v1 NetworkPolicy as the apiserver sends it (validated there; read defensively here). */
export interface K8sNetworkPolicy {
  metadata: { name?: string; namespace?: string; resourceVersion?: string };
  spec?: {
    podSelector?: LabelSelector | null;
    policyTypes?: string[] | null;
    ingress?: { from?: K8sPeer[] | null; ports?: K8sPort[] | null }[] | null;
    egress?: { to?: K8sPeer[] | null; ports?: K8sPort[] | null }[] | null;
  };
}
interface K8sPeer {
  podSelector?: LabelSelector | null;
  namespaceSelector?: LabelSelector | null;
  ipBlock?: { cidr?: string; except?: string[] | null } | null;
}
interface K8sPort { protocol?: string | null; port?: number | string | null; endPort?: number | null }

/** The Pod fields policy reads (the service side's K8sPod is a subset of this). */
export interface K8sPolicyPod {
  metadata: { name?: string; namespace?: string; resourceVersion?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  spec?: {
    hostNetwork?: boolean;
    nodeName?: string;
    containers?: { ports?: { name?: string; containerPort?: number; protocol?: string }[] | null }[] | null;
  };
  status?: { phase?: string; podIP?: string; podIPs?: { ip: string }[] };
}

const PROTOCOLS: readonly string[] = ['TCP', 'UDP', 'SCTP'];
const isProtocol = (p: unknown): p is PolicyProtocol => typeof p === 'string' && PROTOCOLS.includes(p);

/** Every container's ports (init containers serve nothing), trimmed to name/port/protocol. */
function slimPorts(spec: K8sPolicyPod['spec']): { name?: string; containerPort?: number; protocol?: string }[] | undefined {
  const out: { name?: string; containerPort?: number; protocol?: string }[] = [];
  for (const c of spec?.containers ?? []) {
    for (const p of c.ports ?? []) out.push({ ...(p.name ? { name: p.name } : {}), containerPort: p.containerPort, ...(p.protocol && p.protocol !== 'TCP' ? { protocol: p.protocol } : {}) });
  }
  return out.length ? out : undefined;
}

/**
 * A Pod trimmed for the cache: what policy needs and the acceleration annotation.
 * `withPolicy` false keeps the per-node service-side shape (no labels, no ports).
 */
export function slimPolicyPod(o: K8sPolicyPod, accelAnnotation: string, withPolicy: boolean): K8sPolicyPod {
  const accel = o.metadata.annotations?.[accelAnnotation];
  const labels = withPolicy && o.metadata.labels && Object.keys(o.metadata.labels).length ? o.metadata.labels : undefined;
  const ports = withPolicy ? slimPorts(o.spec) : undefined;
  return {
    metadata: {
      name: o.metadata.name, namespace: o.metadata.namespace, resourceVersion: o.metadata.resourceVersion,
      ...(labels ? { labels } : {}),
      ...(accel !== undefined ? { annotations: { [accelAnnotation]: accel } } : {}),
    },
    spec: {
      hostNetwork: o.spec?.hostNetwork ?? false,
      ...(withPolicy && o.spec?.nodeName ? { nodeName: o.spec.nodeName } : {}),
      ...(ports ? { containers: [{ ports }] } : {}),
    },
    status: { phase: o.status?.phase, podIP: o.status?.podIP, podIPs: o.status?.podIPs?.map((p) => ({ ip: p.ip })) },
  };
}

export function slimNamespace(o: K8sNamespace): K8sNamespace {
  return { metadata: { name: o.metadata.name, resourceVersion: o.metadata.resourceVersion, ...(o.metadata.labels ? { labels: o.metadata.labels } : {}) } };
}

/** A NetworkPolicy keeps its whole spec (that is what decides traffic) and nothing of its metadata but the names. */
export function slimNetworkPolicy(o: K8sNetworkPolicy): K8sNetworkPolicy {
  return { metadata: { name: o.metadata.name, namespace: o.metadata.namespace, resourceVersion: o.metadata.resourceVersion }, spec: o.spec ?? {} };
}

/** The pod's IPv4 addresses (status.podIPs, else status.podIP), deduplicated. */
export function podIPv4s(pod: K8sPolicyPod): string[] {
  const all = [...(pod.status?.podIPs ?? []).map((p) => p.ip), pod.status?.podIP];
  return [...new Set(all.filter((ip): ip is string => isIPv4(ip)))];
}

/**
 * A Pod as the policy model sees it, or undefined for a pod that has finished
 * (Succeeded/Failed: its address may already be another pod's). `extraIps` are
 * addresses known before the pod's status carries them (CNI ADD: see
 * K8sPolicySource.podAddressKnown); the status wins once it has any.
 */
export function policyPod(pod: K8sPolicyPod, nodeName: string, extraIps?: readonly string[]): PolicyPod | undefined {
  const phase = pod.status?.phase;
  if (phase === 'Succeeded' || phase === 'Failed') return undefined;
  let ips = podIPv4s(pod);
  if (ips.length === 0 && extraIps?.length) ips = [...extraIps];
  const ports: PolicyPodPort[] = [];
  for (const c of pod.spec?.containers ?? []) {
    for (const p of c.ports ?? []) {
      const protocol = p.protocol ?? 'TCP';
      if (!isProtocol(protocol) || !Number.isInteger(p.containerPort)) continue;
      ports.push({ ...(p.name ? { name: p.name } : {}), containerPort: p.containerPort!, protocol });
    }
  }
  return {
    namespace: pod.metadata.namespace ?? '',
    name: pod.metadata.name ?? '',
    labels: pod.metadata.labels ?? {},
    ips,
    ports,
    ...(pod.spec?.hostNetwork ? { hostNetwork: true } : {}),
    local: pod.spec?.nodeName === nodeName,
  };
}

export function policyNamespace(ns: K8sNamespace): PolicyNamespace {
  return { name: ns.metadata.name ?? '', labels: ns.metadata.labels ?? {} };
}

function selector(s: LabelSelector | null | undefined): LabelSelector | undefined {
  if (s === null || s === undefined) return undefined;
  const out: LabelSelector = {};
  if (s.matchLabels && Object.keys(s.matchLabels).length) out.matchLabels = { ...s.matchLabels };
  if (s.matchExpressions?.length) {
    out.matchExpressions = s.matchExpressions.map((e): LabelSelectorRequirement => ({
      key: e.key, operator: e.operator, ...(e.values?.length ? { values: [...e.values] } : {}),
    }));
  }
  return out;
}

function peer(p: K8sPeer): NetworkPolicyPeer {
  const out: NetworkPolicyPeer = {};
  const pod = selector(p.podSelector);
  const ns = selector(p.namespaceSelector);
  if (pod) out.podSelector = pod;
  if (ns) out.namespaceSelector = ns;
  if (p.ipBlock) {
    const b: IPBlock = { cidr: p.ipBlock.cidr ?? '' };
    if (p.ipBlock.except?.length) b.except = [...p.ipBlock.except];
    out.ipBlock = b;
  }
  return out;
}

function port(p: K8sPort): NetworkPolicyPort {
  const out: NetworkPolicyPort = {};
  // The apiserver defaults protocol to TCP; an unknown one is passed on for the compiler to report.
  out.protocol = (p.protocol ?? 'TCP') as PolicyProtocol;
  if (p.port !== null && p.port !== undefined) out.port = p.port;
  if (p.endPort !== null && p.endPort !== undefined) out.endPort = p.endPort;
  return out;
}

/**
 * A NetworkPolicy as the model types it. null and absent lists are the same to the API
 * (an absent `from` is every source), so both become absent; an empty podSelector ({})
 * stays, since it selects every pod.
 */
export function convertNetworkPolicy(o: K8sNetworkPolicy): NetworkPolicy {
  const s = o.spec ?? {};
  const spec: NetworkPolicy['spec'] = { podSelector: selector(s.podSelector) ?? {} };
  if (s.policyTypes?.length) spec.policyTypes = s.policyTypes.filter((t): t is PolicyType => t === 'Ingress' || t === 'Egress');
  if (s.ingress) {
    spec.ingress = s.ingress.map((r): NetworkPolicyIngressRule => ({
      ...(r.from?.length ? { from: r.from.map(peer) } : {}),
      ...(r.ports?.length ? { ports: r.ports.map(port) } : {}),
    }));
  }
  if (s.egress) {
    spec.egress = s.egress.map((r): NetworkPolicyEgressRule => ({
      ...(r.to?.length ? { to: r.to.map(peer) } : {}),
      ...(r.ports?.length ? { ports: r.ports.map(port) } : {}),
    }));
  }
  return { metadata: { namespace: o.metadata.namespace ?? '', name: o.metadata.name ?? '' }, spec };
}
