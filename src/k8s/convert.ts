// Kubernetes objects -> the service model (src/services/model.ts). Pure
// functions, no client import, so the rules can be unit-tested and measured
// without an apiserver.
//
// Backend ports follow kube-proxy: the endpoints controller has already
// resolved each service port's targetPort (a number, or a container port name
// that may differ per pod) into the EndpointSlice's ports, which carry the
// *service port's* name. So a service port is matched to a slice port by name
// and protocol, per slice, hence per endpoint. This also works for
// selector-less services whose slices are written by hand.
import { isIPv4, parseCidr } from '../net/cidr.js';
import { DEFAULT_AFFINITY_TIMEOUT, isServicePortName, type Endpoint, type Protocol, type Service, type ServicePort } from '../services/model.js';

/** A Service with this label belongs to another proxy (kube-proxy's rule): patu leaves it alone. */
export const SERVICE_PROXY_NAME_LABEL = 'service.kubernetes.io/service-proxy-name';
/** A Service with this label has no proxying at all (kube-proxy ignores it too). */
export const HEADLESS_LABEL = 'service.kubernetes.io/headless';

/** The fields of a v1 Service patu reads (everything else is dropped on arrival: see slim*). */
export interface K8sService {
  metadata: { name?: string; namespace?: string; resourceVersion?: string; labels?: Record<string, string> };
  spec?: {
    type?: string;
    clusterIP?: string;
    ports?: { name?: string; port: number; protocol?: string; targetPort?: number | string; nodePort?: number }[];
    sessionAffinity?: string;
    sessionAffinityConfig?: { clientIP?: { timeoutSeconds?: number } };
    externalIPs?: string[] | null;
    externalTrafficPolicy?: string;
    internalTrafficPolicy?: string;
    healthCheckNodePort?: number;
  };
  status?: { loadBalancer?: { ingress?: { ip?: string; hostname?: string; ipMode?: string }[] | null } };
}

export interface K8sEndpointSlice {
  metadata: { name?: string; namespace?: string; resourceVersion?: string; labels?: Record<string, string> };
  addressType?: string;
  endpoints?: {
    addresses?: string[];
    conditions?: { ready?: boolean | null; serving?: boolean | null; terminating?: boolean | null };
    nodeName?: string | null;
  }[] | null;
  ports?: { name?: string | null; port?: number | null; protocol?: string | null }[] | null;
}

export interface K8sPod {
  metadata: { name?: string; namespace?: string; resourceVersion?: string; annotations?: Record<string, string> };
  spec?: { hostNetwork?: boolean; nodeName?: string };
  status?: { phase?: string; podIP?: string; podIPs?: { ip: string }[] };
}

export interface K8sNode {
  metadata: { name?: string; resourceVersion?: string };
  spec?: { podCIDR?: string; podCIDRs?: string[] };
  status?: { addresses?: { type?: string; address?: string }[] };
}

export const SERVICE_NAME_LABEL = 'kubernetes.io/service-name';
export const ACCEL_ANNOTATION = 'patu.dev/accel';


export const refOf = (m: { name?: string; namespace?: string }): string => `${m.namespace ?? ''}/${m.name ?? ''}`;

/** Why a service is not programmed (for debug logs and tests). */
export type SkipReason = 'headless' | 'externalName' | 'noClusterIP' | 'notIPv4' | 'noTcpUdpPorts' | 'otherProxy';

export interface ConvertedService {
  service?: Service;
  skipped?: SkipReason;
  /** Ports left out (SCTP or unknown protocols), as `port/PROTO`. */
  skippedPorts: string[];
  /** Addresses left out (not IPv4, or not an address), as `field: value`. */
  skippedAddresses?: string[];
}

const isValidPort = (v: unknown): v is number => Number.isInteger(v) && (v as number) >= 1 && (v as number) <= 65535;

/** Key under which a slice port is found from a service port: its name and protocol. */
const portSlot = (name: string | null | undefined, protocol: string): string => `${name ?? ''}/${protocol}`;

export function convertService(svc: K8sService): ConvertedService {
  const spec = svc.spec ?? {};
  const skippedPorts: string[] = [];
  const labels = svc.metadata.labels ?? {};
  // kube-proxy's rule: a non-empty service-proxy-name means another proxy serves it.
  if (labels[SERVICE_PROXY_NAME_LABEL]) return { skipped: 'otherProxy', skippedPorts };
  if (HEADLESS_LABEL in labels) return { skipped: 'headless', skippedPorts };
  if (spec.type === 'ExternalName') return { skipped: 'externalName', skippedPorts };
  const ip = spec.clusterIP;
  if (ip === 'None') return { skipped: 'headless', skippedPorts };
  if (!ip) return { skipped: 'noClusterIP', skippedPorts };
  // The socket LB is IPv4 only; an IPv6 single-stack service is left to others.
  if (!isIPv4(ip)) return { skipped: 'notIPv4', skippedPorts };
  const withNodePorts = spec.type === 'NodePort' || spec.type === 'LoadBalancer';
  const ports: ServicePort[] = [];
  for (const p of spec.ports ?? []) {
    const protocol = (p.protocol ?? 'TCP').toUpperCase();
    if (protocol !== 'TCP' && protocol !== 'UDP') {
      skippedPorts.push(`${p.port}/${protocol}`);
      continue;
    }
    // The apiserver validates these; a port it would refuse is left out here too rather
    // than programmed half-right. targetPort is not read at all: the slices carry the
    // resolved numbers, so a quoted "80" can never be mistaken for a name here.
    if (!isValidPort(p.port) || (p.name !== undefined && p.name !== '' && !isServicePortName(p.name))) {
      skippedPorts.push(`${String(p.port).slice(0, 12)}/${protocol} (invalid port or name)`);
      continue;
    }
    ports.push({
      ...(p.name ? { name: p.name } : {}),
      port: p.port,
      protocol: protocol as Protocol,
      // Resolved per endpoint from the slice port of the same name (see the header).
      targetPort: portSlot(p.name, protocol),
      ...(withNodePorts && isValidPort(p.nodePort) ? { nodePort: p.nodePort } : {}),
    });
  }
  if (ports.length === 0) return { skipped: 'noTcpUdpPorts', skippedPorts };
  const skippedAddresses: string[] = [];
  const v4 = (field: string, list: readonly (string | undefined)[]): string[] => {
    const out: string[] = [];
    for (const a of list) {
      if (a === undefined || a === '') continue;
      if (isIPv4(a)) out.push(a);
      else skippedAddresses.push(`${field}: ${String(a).slice(0, 45)}`);
    }
    return [...new Set(out)];
  };
  const externalIPs = v4('externalIPs', spec.externalIPs ?? []);
  // ipMode Proxy: the load balancer proxies to the node itself, so its IP must not be
  // short-circuited here (kube-proxy skips those too).
  const lbIPs = spec.type === 'LoadBalancer'
    ? v4('status.loadBalancer.ingress', (svc.status?.loadBalancer?.ingress ?? []).filter((i) => i.ipMode !== 'Proxy').map((i) => i.ip))
    : [];
  const affinity = spec.sessionAffinity === 'ClientIP';
  const service: Service = {
    namespace: svc.metadata.namespace ?? '',
    name: svc.metadata.name ?? '',
    clusterIP: ip,
    ports,
    sessionAffinity: affinity ? 'ClientIP' : 'None',
    affinityTimeoutSeconds: affinity
      ? (spec.sessionAffinityConfig?.clientIP?.timeoutSeconds ?? DEFAULT_AFFINITY_TIMEOUT)
      : DEFAULT_AFFINITY_TIMEOUT,
  };
  if (withNodePorts) service.type = spec.type as 'NodePort' | 'LoadBalancer';
  if (externalIPs.length) service.externalIPs = externalIPs;
  if (lbIPs.length) service.loadBalancerIPs = lbIPs;
  if (spec.externalTrafficPolicy === 'Local' && withNodePorts) service.externalTrafficPolicy = 'Local';
  if (spec.internalTrafficPolicy === 'Local') service.internalTrafficPolicy = 'Local';
  if (service.externalTrafficPolicy === 'Local' && isValidPort(spec.healthCheckNodePort)) service.healthCheckNodePort = spec.healthCheckNodePort;
  return { service, skippedPorts, ...(skippedAddresses.length ? { skippedAddresses } : {}) };
}

/**
 * Endpoints of one service, merged across its slices. Only IPv4 slices; the
 * first address of an endpoint (as kube-proxy). Conditions follow the API's
 * nil rules: ready and serving unknown -> true, terminating unknown -> false.
 * publishNotReadyAddresses needs nothing here: the EndpointSlice controller
 * already marks such a Service's endpoints ready (kube-proxy reads only that).
 * An address in two slices (a slice being replaced) keeps the better
 * conditions and the union of ports.
 */
export function mergeSlices(slices: Iterable<K8sEndpointSlice>): Endpoint[] {
  const byIp = new Map<string, Endpoint>();
  // Slices in a stable order, so the merge does not depend on event order.
  const sorted = [...slices].sort((a, b) => (a.metadata.name ?? '').localeCompare(b.metadata.name ?? ''));
  for (const slice of sorted) {
    if (slice.addressType !== 'IPv4') continue;
    const ports: Record<string, number> = {};
    for (const p of slice.ports ?? []) {
      if (!isValidPort(p.port) || (p.name != null && p.name !== '' && !isServicePortName(p.name))) continue;
      ports[portSlot(p.name, (p.protocol ?? 'TCP').toUpperCase())] = p.port;
    }
    for (const ep of slice.endpoints ?? []) {
      const ip = ep.addresses?.[0];
      if (!isIPv4(ip)) continue;
      const c = ep.conditions ?? {};
      const e: Endpoint = {
        ip,
        ready: c.ready !== false,
        serving: c.serving !== false,
        terminating: c.terminating === true,
        ports: { ...ports },
        ...(ep.nodeName ? { nodeName: ep.nodeName } : {}),
      };
      const prev = byIp.get(ip);
      if (!prev) {
        byIp.set(ip, e);
        continue;
      }
      prev.ready ||= e.ready;
      prev.serving ||= e.serving;
      prev.terminating &&= e.terminating;
      prev.ports = { ...e.ports, ...prev.ports };
      if (!prev.nodeName && e.nodeName) prev.nodeName = e.nodeName;
    }
  }
  return [...byIp.values()].sort((a, b) => (a.ip < b.ip ? -1 : a.ip > b.ip ? 1 : 0));
}

/** The owning service of a slice (`namespace/name`), or undefined for a slice of no service. */
export function sliceService(slice: K8sEndpointSlice): string | undefined {
  const svc = slice.metadata.labels?.[SERVICE_NAME_LABEL];
  return svc ? `${slice.metadata.namespace ?? ''}/${svc}` : undefined;
}

/** What a pod means to the acceleration registry: its IPv4 address and whether it opts out. */
export function podAccel(pod: K8sPod): { ip: string; optOut: boolean } | undefined {
  if (pod.spec?.hostNetwork) return undefined;
  const phase = pod.status?.phase;
  if (phase === 'Succeeded' || phase === 'Failed') return undefined;
  const ip = [pod.status?.podIP, ...(pod.status?.podIPs ?? []).map((p) => p.ip)].find(isIPv4);
  if (!ip) return undefined;
  return { ip, optOut: pod.metadata.annotations?.[ACCEL_ANNOTATION] === 'off' };
}

const isIPv4Cidr = (text: unknown): text is string => {
  if (typeof text !== 'string') return false;
  try {
    return parseCidr(text).family === 4;
  } catch {
    return false;
  }
};

/** node.spec.podCIDR (the IPv4 one of podCIDRs), else undefined. */
export function nodePodCidr(node: K8sNode | undefined): string | undefined {
  const all = [node?.spec?.podCIDR, ...(node?.spec?.podCIDRs ?? [])];
  return all.find(isIPv4Cidr);
}

// Objects are trimmed to these fields as they arrive, before the informer
// caches them: managedFields, annotations and pod specs are most of a real
// object's size, and the informer keeps every object for its lifetime.

export function slimService(o: K8sService): K8sService {
  const s = o.spec ?? {};
  const labels: Record<string, string> = {};
  for (const k of [SERVICE_PROXY_NAME_LABEL, HEADLESS_LABEL]) {
    const v = o.metadata.labels?.[k];
    if (v !== undefined) labels[k] = v;
  }
  const ingress = o.status?.loadBalancer?.ingress;
  return {
    metadata: {
      name: o.metadata.name, namespace: o.metadata.namespace, resourceVersion: o.metadata.resourceVersion,
      ...(Object.keys(labels).length ? { labels } : {}),
    },
    spec: {
      type: s.type, clusterIP: s.clusterIP,
      ports: (s.ports ?? []).map((p) => ({ name: p.name, port: p.port, protocol: p.protocol, targetPort: p.targetPort, ...(p.nodePort ? { nodePort: p.nodePort } : {}) })),
      sessionAffinity: s.sessionAffinity,
      ...(s.sessionAffinityConfig ? { sessionAffinityConfig: s.sessionAffinityConfig } : {}),
      ...(s.externalIPs?.length ? { externalIPs: s.externalIPs } : {}),
      ...(s.externalTrafficPolicy ? { externalTrafficPolicy: s.externalTrafficPolicy } : {}),
      ...(s.internalTrafficPolicy ? { internalTrafficPolicy: s.internalTrafficPolicy } : {}),
      ...(s.healthCheckNodePort ? { healthCheckNodePort: s.healthCheckNodePort } : {}),
    },
    ...(ingress?.length ? { status: { loadBalancer: { ingress: ingress.map((i) => ({ ip: i.ip, ...(i.ipMode ? { ipMode: i.ipMode } : {}) })) } } } : {}),
  } as K8sService;
}

export function slimEndpointSlice(o: K8sEndpointSlice): K8sEndpointSlice {
  const svc = o.metadata.labels?.[SERVICE_NAME_LABEL];
  return {
    metadata: {
      name: o.metadata.name, namespace: o.metadata.namespace, resourceVersion: o.metadata.resourceVersion,
      ...(svc ? { labels: { [SERVICE_NAME_LABEL]: svc } } : {}),
    },
    addressType: o.addressType,
    endpoints: (o.endpoints ?? []).map((e) => ({ addresses: e.addresses?.slice(0, 1), conditions: e.conditions ?? {}, ...(e.nodeName ? { nodeName: e.nodeName } : {}) })),
    ports: (o.ports ?? []).map((p) => ({ name: p.name, port: p.port, protocol: p.protocol })),
  } as K8sEndpointSlice;
}

export function slimPod(o: K8sPod): K8sPod {
  const accel = o.metadata.annotations?.[ACCEL_ANNOTATION];
  return {
    metadata: {
      name: o.metadata.name, namespace: o.metadata.namespace, resourceVersion: o.metadata.resourceVersion,
      ...(accel !== undefined ? { annotations: { [ACCEL_ANNOTATION]: accel } } : {}),
    },
    spec: { hostNetwork: o.spec?.hostNetwork ?? false },
    status: { phase: o.status?.phase, podIP: o.status?.podIP, podIPs: o.status?.podIPs?.map((p) => ({ ip: p.ip })) },
  } as K8sPod;
}

export function slimNode(o: K8sNode): K8sNode {
  return {
    metadata: { name: o.metadata.name, resourceVersion: o.metadata.resourceVersion },
    spec: { podCIDR: o.spec?.podCIDR, podCIDRs: o.spec?.podCIDRs },
    // Routing to other nodes needs their InternalIP only (not images, conditions, ...).
    status: { addresses: (o.status?.addresses ?? []).filter((a) => a.type === 'InternalIP').map((a) => ({ type: a.type, address: a.address })) },
  } as K8sNode;
}

/** The node's first IPv4 InternalIP (status.addresses), where other nodes reach it. */
export function nodeInternalIPv4(node: K8sNode | undefined): string | undefined {
  return (node?.status?.addresses ?? []).find((a) => a.type === 'InternalIP' && isIPv4(a.address))?.address;
}
