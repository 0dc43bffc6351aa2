// Conversions between the wire messages (src/rpc/gen, generated from
// proto/patu/dataplane/v1/dataplane.proto) and the API's TypeScript types
// (src/dataplane/api.ts, src/services/model.ts, src/policy/types.ts). Pure: no I/O,
// no logging; both the server (decoding what an agent sends) and the client (decoding
// what the manager answers) use it.
//
// What the wire cannot tell apart, and how it is read back:
//   - an absent optional list or map and an empty one (rules' from/to/ports, selectors'
//     matchLabels/matchExpressions, ipBlock.except, a requirement's values,
//     policyTypes): the same meaning in networking.k8s.io/v1 (empty rule peers = every
//     peer, empty ports = every port, {} selector = everything). Decoded as absent.
//   - hostNetwork false and an absent one; a pod port's name "" and an absent one.
//   - ServicesApplied.refused absent and empty (decoded as absent); PolicyChange.rememberCniAddresses
//     and enforcementOff false and absent (decoded as absent).
// What the wire keeps: NodeSettings' presence (absent = leave it; `serviceCidrOff: false`
// and `snatAddress: ''` are values), a peer's podSelector/namespaceSelector/ipBlock presence
// (`optional` messages: {podSelector: {}} selects every pod of the policy's namespace,
// an absent one does not), a port's number-or-name (oneof) and endPort presence.
//
// Decoding validates only what the TypeScript types promise (enums and unions, the
// `ip:port` backend form, IPv4 addresses where the model is IPv4-only); the manager's
// limits (CIDRs, sizes, netns paths) are checked by the data plane behind the server.
// A message that breaks a promise is DataplaneError 'invalid', naming the field.
//
// Messages are built as literals ({ $typeName, ...every field }), not with protobuf-es's
// create(): create() walks the schema per message, and a 1,000-service resync (11,000
// messages) took 12 ms in it against 3-4 ms as literals (measured on this loaded 2-core
// machine). tsc checks each literal against the generated type.
import { isIPv4 } from '../net/cidr.js';
import { portKey, type DesiredServicePort } from '../services/model.js';
import type {
  IPBlock, LabelSelector, LabelSelectorRequirement, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort,
  PolicyPod, PolicyPodPort, PolicyProtocol, PolicyState, PolicyType,
} from '../policy/types.js';
import {
  DataplaneError,
  type AccelerationState, type CniCall, type CniReply, type DataplaneHealth, type DataplaneStatus,
  type NodeSettings, type PodFlagsApplied, type PodFlagsUpdate, type PolicyApplied, type PolicyChange,
  type ServiceChange, type ServicesApplied,
} from '../dataplane/api.js';
import * as pb from './gen/patu/dataplane/v1/dataplane_pb.js';

const invalid = (field: string, what: string): DataplaneError => new DataplaneError('invalid', `${field}: ${what}`);

// ---------------------------------------------------------------- CNI

export const cniCallToProto = (c: CniCall): pb.CniRequest =>
  ({ $typeName: 'patu.dataplane.v1.CniRequest', containerId: c.containerId, netns: c.netns, ifname: c.ifname, args: c.args, path: c.path, config: c.config });

export const cniCallFromProto = (command: CniCall['command'], m: pb.CniRequest): CniCall => ({
  command, containerId: m.containerId, netns: m.netns, ifname: m.ifname, args: m.args, path: m.path,
  // A view of the decoded bytes, not a copy.
  config: Buffer.from(m.config.buffer, m.config.byteOffset, m.config.byteLength),
});

export const cniReplyToProto = (r: CniReply): pb.CniResult => ({ $typeName: 'patu.dataplane.v1.CniResult', exitCode: r.exitCode, stdout: r.stdout });
export const cniReplyFromProto = (m: pb.CniResult): CniReply => ({ exitCode: m.exitCode, stdout: m.stdout });

// ---------------------------------------------------------------- services

function protocolToProto(p: string, field: string): pb.Protocol {
  if (p === 'TCP') return pb.Protocol.TCP;
  if (p === 'UDP') return pb.Protocol.UDP;
  throw invalid(field, `protocol ${JSON.stringify(p)} is not TCP or UDP`);
}

function protocolFromProto(p: pb.Protocol, field: string): 'TCP' | 'UDP' {
  if (p === pb.Protocol.TCP) return 'TCP';
  if (p === pb.Protocol.UDP) return 'UDP';
  throw invalid(field, `protocol ${p} is not TCP or UDP`);
}

/** `ip:port` -> Backend. Runs for every backend of a resync: no regexp, no field path built unless it fails. */
function backendToProto(b: string, field: string, index: number): pb.Backend {
  const i = b.lastIndexOf(':');
  let port = i > 0 && b.length - i - 1 >= 1 && b.length - i - 1 <= 5 ? 0 : NaN;
  for (let k = i + 1; k < b.length && port === port; k++) {
    const d = b.charCodeAt(k) - 48;
    port = d >= 0 && d <= 9 ? port * 10 + d : NaN;
  }
  if (!(port <= 65535)) throw invalid(`${field}.backends[${index}]`, `${JSON.stringify(b)} is not ip:port`);
  return { $typeName: 'patu.dataplane.v1.Backend', ip: b.slice(0, i), port };
}

export function servicePortToProto(p: DesiredServicePort, field = 'port'): pb.ServicePort {
  return {
    $typeName: 'patu.dataplane.v1.ServicePort',
    ref: p.ref, vip: p.vip, port: p.port, protocol: protocolToProto(p.protocol, `${field}.protocol`), name: p.name,
    affinity: p.affinity, affinityTimeoutSeconds: p.affinityTimeoutSeconds,
    backends: p.backends.map((b, i) => backendToProto(b, field, i)),
    scope: p.scope === 'external-local' ? pb.EntryScope.EXTERNAL_LOCAL : pb.EntryScope.ALL,
  };
}

export function servicePortFromProto(m: pb.ServicePort, field = 'port'): DesiredServicePort {
  if (!isIPv4(m.vip)) throw invalid(`${field}.vip`, `${JSON.stringify(m.vip)} is not an IPv4 address`);
  if (m.port > 65535) throw invalid(`${field}.port`, `${m.port} is not a port`);
  const protocol = protocolFromProto(m.protocol, `${field}.protocol`);
  let scope: DesiredServicePort['scope'];
  if (m.scope === pb.EntryScope.EXTERNAL_LOCAL) scope = 'external-local';
  else if (m.scope !== pb.EntryScope.ALL) throw invalid(`${field}.scope`, `unknown scope ${m.scope}`);
  const backends = m.backends.map((b, i) => {
    if (!isIPv4(b.ip)) throw invalid(`${field}.backends[${i}].ip`, `${JSON.stringify(b.ip)} is not an IPv4 address`);
    if (b.port > 65535) throw invalid(`${field}.backends[${i}].port`, `${b.port} is not a port`);
    return `${b.ip}:${b.port}`;
  });
  return {
    key: portKey(m.vip, m.port, protocol, scope), ref: m.ref, vip: m.vip, port: m.port, protocol, name: m.name,
    affinity: m.affinity, affinityTimeoutSeconds: m.affinityTimeoutSeconds, backends,
    ...(scope ? { scope } : {}),
  };
}

export const serviceChangeToProto = (c: ServiceChange): pb.ApplyServicesRequest => ({
  $typeName: 'patu.dataplane.v1.ApplyServicesRequest',
  session: c.session, generation: c.generation, full: c.full, refs: c.refs,
  ports: c.ports.map((p, i) => servicePortToProto(p, `ports[${i}]`)),
});

export const serviceChangeFromProto = (m: pb.ApplyServicesRequest): ServiceChange => ({
  session: m.session, generation: m.generation, full: m.full, refs: m.refs,
  ports: m.ports.map((p, i) => servicePortFromProto(p, `ports[${i}]`)),
});

export const servicesAppliedToProto = (a: ServicesApplied): pb.ApplyServicesResponse => ({
  $typeName: 'patu.dataplane.v1.ApplyServicesResponse',
  generation: a.generation, mapOps: a.mapOps, services: a.services, applyMs: a.applyMs, repeatedGeneration: a.repeatedGeneration,
  conflicts: a.conflicts.map((c) => ({ $typeName: 'patu.dataplane.v1.ServiceConflict', key: c.key, wanted: c.wanted, heldBy: c.heldBy })),
  refused: (a.refused ?? []).map((r) => ({ $typeName: 'patu.dataplane.v1.RefusedService', ref: r.ref, key: r.key, reason: r.reason })),
});

export const servicesAppliedFromProto = (m: pb.ApplyServicesResponse): ServicesApplied => ({
  generation: m.generation, mapOps: m.mapOps, services: m.services, applyMs: m.applyMs, repeatedGeneration: m.repeatedGeneration,
  conflicts: m.conflicts.map((c) => ({ key: c.key, wanted: c.wanted, heldBy: c.heldBy })),
  // Absent when empty, as LocalDataplane answers.
  ...(m.refused.length ? { refused: m.refused.map((r) => ({ ref: r.ref, key: r.key, reason: r.reason })) } : {}),
});

// ---------------------------------------------------------------- acceleration, pods

export const accelerationToProto = (a: AccelerationState): pb.SetAccelerationResponse =>
  ({ $typeName: 'patu.dataplane.v1.SetAccelerationResponse', enabled: a.enabled, pods: a.pods, sockets: a.sockets });
export const accelerationFromProto = (m: pb.SetAccelerationResponse): AccelerationState => ({ enabled: m.enabled, pods: m.pods, sockets: m.sockets });

export const podFlagsToProto = (pods: PodFlagsUpdate[]): pb.SetPodFlagsRequest => ({
  $typeName: 'patu.dataplane.v1.SetPodFlagsRequest',
  pods: pods.map((p) => ({ $typeName: 'patu.dataplane.v1.PodFlags', ip: p.ip, accelOptOut: p.accelOptOut })),
});
export const podFlagsFromProto = (m: pb.SetPodFlagsRequest): PodFlagsUpdate[] => m.pods.map((p) => ({ ip: p.ip, accelOptOut: p.accelOptOut }));

export const podFlagsAppliedToProto = (a: PodFlagsApplied): pb.SetPodFlagsResponse =>
  ({ $typeName: 'patu.dataplane.v1.SetPodFlagsResponse', updated: a.updated, unknown: a.unknown });
export const podFlagsAppliedFromProto = (m: pb.SetPodFlagsResponse): PodFlagsApplied => ({ updated: m.updated, unknown: m.unknown });

// ---------------------------------------------------------------- node

const NODE_FIELDS = ['podCidr', 'clusterCidr', 'serviceCidr', 'serviceCidrOff', 'snatAddress'] as const;

/** Every field keeps its presence: absent is "leave it", present is set (false and "" too). */
export function nodeSettingsToProto(s: NodeSettings): pb.NodeSettings {
  const m: pb.NodeSettings = { $typeName: 'patu.dataplane.v1.NodeSettings' };
  for (const k of NODE_FIELDS) if (s[k] !== undefined) (m as Record<string, unknown>)[k] = s[k];
  return m;
}

export function nodeSettingsFromProto(m: pb.NodeSettings | undefined): NodeSettings {
  const out: NodeSettings = {};
  if (!m) return out;
  for (const k of NODE_FIELDS) if (m[k] !== undefined) (out as Record<string, unknown>)[k] = m[k];
  return out;
}

// ---------------------------------------------------------------- policy

const OPERATORS: readonly string[] = ['In', 'NotIn', 'Exists', 'DoesNotExist'];
const PROTOCOLS: readonly string[] = ['TCP', 'UDP', 'SCTP'];
const POLICY_TYPES: readonly string[] = ['Ingress', 'Egress'];

function oneOf<T extends string>(allowed: readonly string[], v: string, field: string): T {
  if (!allowed.includes(v)) throw invalid(field, `${JSON.stringify(v)} is not one of ${allowed.join(', ')}`);
  return v as T;
}

const labelSelectorToProto = (s: LabelSelector): pb.LabelSelector => ({
  $typeName: 'patu.dataplane.v1.LabelSelector',
  matchLabels: { ...s.matchLabels },
  matchExpressions: (s.matchExpressions ?? []).map((r) => ({ $typeName: 'patu.dataplane.v1.LabelSelectorRequirement', key: r.key, operator: r.operator, values: r.values ?? [] })),
});

/** A proto map as a label record: copied (own properties only), so nothing of the message is shared. */
const labels = (m: { [k: string]: string }): Record<string, string> => ({ ...m });

function labelSelectorFromProto(m: pb.LabelSelector | undefined, field: string): LabelSelector {
  const out: LabelSelector = {};
  if (!m) return out;
  if (Object.keys(m.matchLabels).length) out.matchLabels = labels(m.matchLabels);
  if (m.matchExpressions.length) {
    out.matchExpressions = m.matchExpressions.map((r, i): LabelSelectorRequirement => ({
      key: r.key,
      operator: oneOf(OPERATORS, r.operator, `${field}.matchExpressions[${i}].operator`),
      ...(r.values.length ? { values: [...r.values] } : {}),
    }));
  }
  return out;
}

const ipBlockToProto = (b: IPBlock): pb.IPBlock => ({ $typeName: 'patu.dataplane.v1.IPBlock', cidr: b.cidr, except: b.except ?? [] });
const ipBlockFromProto = (m: pb.IPBlock): IPBlock => ({ cidr: m.cidr, ...(m.except.length ? { except: [...m.except] } : {}) });

const peerToProto = (p: NetworkPolicyPeer): pb.NetworkPolicyPeer => ({
  $typeName: 'patu.dataplane.v1.NetworkPolicyPeer',
  ...(p.podSelector ? { podSelector: labelSelectorToProto(p.podSelector) } : {}),
  ...(p.namespaceSelector ? { namespaceSelector: labelSelectorToProto(p.namespaceSelector) } : {}),
  ...(p.ipBlock ? { ipBlock: ipBlockToProto(p.ipBlock) } : {}),
});

function peerFromProto(m: pb.NetworkPolicyPeer, field: string): NetworkPolicyPeer {
  const out: NetworkPolicyPeer = {};
  if (m.podSelector) out.podSelector = labelSelectorFromProto(m.podSelector, `${field}.podSelector`);
  if (m.namespaceSelector) out.namespaceSelector = labelSelectorFromProto(m.namespaceSelector, `${field}.namespaceSelector`);
  if (m.ipBlock) out.ipBlock = ipBlockFromProto(m.ipBlock);
  return out;
}

function portToProto(p: NetworkPolicyPort): pb.NetworkPolicyPort {
  const port: pb.NetworkPolicyPort['port'] =
    typeof p.port === 'number' ? { case: 'number', value: p.port }
      : typeof p.port === 'string' ? { case: 'name', value: p.port }
        : { case: undefined };
  return { $typeName: 'patu.dataplane.v1.NetworkPolicyPort', protocol: p.protocol ?? '', port, ...(p.endPort !== undefined ? { endPort: p.endPort } : {}) };
}

function portFromProto(m: pb.NetworkPolicyPort, field: string): NetworkPolicyPort {
  const out: NetworkPolicyPort = {};
  if (m.protocol) out.protocol = oneOf<PolicyProtocol>(PROTOCOLS, m.protocol, `${field}.protocol`);
  if (m.port.case === 'number') out.port = m.port.value;
  else if (m.port.case === 'name') out.port = m.port.value;
  if (m.endPort !== undefined) out.endPort = m.endPort;
  return out;
}

const ruleToProto = (peers: NetworkPolicyPeer[] | undefined, ports: NetworkPolicyPort[] | undefined): pb.NetworkPolicyRule =>
  ({ $typeName: 'patu.dataplane.v1.NetworkPolicyRule', peers: (peers ?? []).map(peerToProto), ports: (ports ?? []).map(portToProto) });

function ruleFromProto(m: pb.NetworkPolicyRule, field: string): { peers?: NetworkPolicyPeer[]; ports?: NetworkPolicyPort[] } {
  return {
    ...(m.peers.length ? { peers: m.peers.map((p, i) => peerFromProto(p, `${field}.peers[${i}]`)) } : {}),
    ...(m.ports.length ? { ports: m.ports.map((p, i) => portFromProto(p, `${field}.ports[${i}]`)) } : {}),
  };
}

const policyToProto = (p: NetworkPolicy): pb.NetworkPolicy => ({
  $typeName: 'patu.dataplane.v1.NetworkPolicy',
  namespace: p.metadata.namespace, name: p.metadata.name,
  podSelector: labelSelectorToProto(p.spec.podSelector),
  policyTypes: p.spec.policyTypes ?? [],
  ingress: (p.spec.ingress ?? []).map((r) => ruleToProto(r.from, r.ports)),
  egress: (p.spec.egress ?? []).map((r) => ruleToProto(r.to, r.ports)),
});

function policyFromProto(m: pb.NetworkPolicy, field: string): NetworkPolicy {
  const spec: NetworkPolicy['spec'] = { podSelector: labelSelectorFromProto(m.podSelector, `${field}.podSelector`) };
  if (m.policyTypes.length) spec.policyTypes = m.policyTypes.map((t, i) => oneOf<PolicyType>(POLICY_TYPES, t, `${field}.policyTypes[${i}]`));
  if (m.ingress.length) {
    spec.ingress = m.ingress.map((r, i) => {
      const { peers, ports } = ruleFromProto(r, `${field}.ingress[${i}]`);
      return { ...(peers ? { from: peers } : {}), ...(ports ? { ports } : {}) };
    });
  }
  if (m.egress.length) {
    spec.egress = m.egress.map((r, i) => {
      const { peers, ports } = ruleFromProto(r, `${field}.egress[${i}]`);
      return { ...(peers ? { to: peers } : {}), ...(ports ? { ports } : {}) };
    });
  }
  return { apiVersion: 'networking.k8s.io/v1', kind: 'NetworkPolicy', metadata: { namespace: m.namespace, name: m.name }, spec };
}

const podToProto = (p: PolicyPod): pb.PolicyPod => ({
  $typeName: 'patu.dataplane.v1.PolicyPod',
  namespace: p.namespace, name: p.name, labels: { ...p.labels }, ips: p.ips,
  ports: p.ports.map((q) => ({ $typeName: 'patu.dataplane.v1.PolicyPodPort', name: q.name ?? '', containerPort: q.containerPort, protocol: q.protocol })),
  hostNetwork: p.hostNetwork ?? false, local: p.local,
});

function podFromProto(m: pb.PolicyPod, field: string): PolicyPod {
  return {
    namespace: m.namespace, name: m.name, labels: labels(m.labels), ips: [...m.ips],
    ports: m.ports.map((q, i): PolicyPodPort => ({
      ...(q.name ? { name: q.name } : {}),
      containerPort: q.containerPort,
      protocol: oneOf<PolicyProtocol>(PROTOCOLS, q.protocol, `${field}.ports[${i}].protocol`),
    })),
    ...(m.hostNetwork ? { hostNetwork: true } : {}),
    local: m.local,
  };
}

export const policyStateToProto = (s: PolicyState): pb.PolicyState => ({
  $typeName: 'patu.dataplane.v1.PolicyState',
  namespaces: s.namespaces.map((n) => ({ $typeName: 'patu.dataplane.v1.PolicyNamespace', name: n.name, labels: { ...n.labels } })),
  pods: s.pods.map(podToProto),
  policies: s.policies.map(policyToProto),
  nodeAddresses: s.nodeAddresses,
});

export const policyStateFromProto = (m: pb.PolicyState | undefined): PolicyState => ({
  namespaces: (m?.namespaces ?? []).map((n) => ({ name: n.name, labels: labels(n.labels) })),
  pods: (m?.pods ?? []).map((p, i) => podFromProto(p, `state.pods[${i}]`)),
  policies: (m?.policies ?? []).map((p, i) => policyFromProto(p, `state.policies[${i}]`)),
  nodeAddresses: [...(m?.nodeAddresses ?? [])],
});

export const policyChangeToProto = (c: PolicyChange): pb.ApplyPolicyRequest => ({
  $typeName: 'patu.dataplane.v1.ApplyPolicyRequest', session: c.session, generation: c.generation, state: policyStateToProto(c.state),
  rememberCniAddresses: c.rememberCniAddresses === true, enforcementOff: c.enforcementOff === true,
});

/** rememberCniAddresses: false on the wire reads as absent (the default). */
export const policyChangeFromProto = (m: pb.ApplyPolicyRequest): PolicyChange => ({
  session: m.session, generation: m.generation, state: policyStateFromProto(m.state),
  ...(m.rememberCniAddresses ? { rememberCniAddresses: true } : {}),
  ...(m.enforcementOff ? { enforcementOff: true } : {}),
});

export const policyAppliedToProto = (a: PolicyApplied): pb.ApplyPolicyResponse => ({
  $typeName: 'patu.dataplane.v1.ApplyPolicyResponse',
  generation: a.generation, mapChanges: a.mapChanges, flowsCutOff: a.flowsCutOff, socketsEvicted: a.socketsEvicted,
  applyMs: a.applyMs, fallback: a.fallback, problems: a.problems, repeatedGeneration: a.repeatedGeneration,
});

export const policyAppliedFromProto = (m: pb.ApplyPolicyResponse): PolicyApplied => ({
  generation: m.generation, mapChanges: m.mapChanges, flowsCutOff: m.flowsCutOff, socketsEvicted: m.socketsEvicted,
  applyMs: m.applyMs, fallback: m.fallback, problems: [...m.problems], repeatedGeneration: m.repeatedGeneration,
});

// ---------------------------------------------------------------- health, status

export const healthToProto = (h: DataplaneHealth): pb.HealthResponse => ({ $typeName: 'patu.dataplane.v1.HealthResponse', ok: h.ok, problems: h.problems });
export const healthFromProto = (m: pb.HealthResponse): DataplaneHealth => ({ ok: m.ok, problems: [...m.problems] });

export const statusToProto = (s: DataplaneStatus): pb.StatusResponse => ({
  $typeName: 'patu.dataplane.v1.StatusResponse',
  version: s.version, backend: s.backend, servicesSession: s.servicesSession, servicesGeneration: s.servicesGeneration,
  services: s.services, policySession: s.policySession, policyGeneration: s.policyGeneration, policyEndpoints: s.policyEndpoints,
  acceleration: s.acceleration, acceleratedPods: s.acceleratedPods, node: nodeSettingsToProto(s.node),
  nodeAddresses: s.nodeAddresses, uptimeSeconds: s.uptimeSeconds,
});

export const statusFromProto = (m: pb.StatusResponse): DataplaneStatus => ({
  version: m.version, backend: m.backend, servicesSession: m.servicesSession, servicesGeneration: m.servicesGeneration,
  services: m.services, policySession: m.policySession, policyGeneration: m.policyGeneration, policyEndpoints: m.policyEndpoints,
  acceleration: m.acceleration, acceleratedPods: m.acceleratedPods, node: nodeSettingsFromProto(m.node),
  nodeAddresses: [...m.nodeAddresses], uptimeSeconds: m.uptimeSeconds,
});
