// The policy model's types (issue 11, /work/wt/POLICY-CONTRACT.md): NetworkPolicy as
// networking.k8s.io/v1 defines it, the pods and namespaces its selectors look at, and
// what the compiler hands the kernel side. Every source (the policy file, Kubernetes)
// builds a PolicyState; the reference evaluator (evaluate.ts) and the compiler
// (compile.ts) both read only this.

export type PolicyProtocol = 'TCP' | 'UDP' | 'SCTP';
export type PolicyType = 'Ingress' | 'Egress';

/** IP protocol numbers as packets carry them. */
export const IPPROTO = { ICMP: 1, TCP: 6, UDP: 17, SCTP: 132 } as const;
export const protoNumber = (p: PolicyProtocol): number => IPPROTO[p];

/** metav1.LabelSelectorRequirement */
export interface LabelSelectorRequirement {
  key: string;
  operator: 'In' | 'NotIn' | 'Exists' | 'DoesNotExist';
  /** In/NotIn: non-empty; Exists/DoesNotExist: empty or absent. */
  values?: string[];
}

/** metav1.LabelSelector: matchLabels AND matchExpressions; empty selects everything. */
export interface LabelSelector {
  matchLabels?: Record<string, string>;
  matchExpressions?: LabelSelectorRequirement[];
}

/** networking.k8s.io/v1 IPBlock */
export interface IPBlock {
  cidr: string;
  except?: string[];
}

/** networking.k8s.io/v1 NetworkPolicyPeer: ipBlock alone, or podSelector and/or namespaceSelector. */
export interface NetworkPolicyPeer {
  podSelector?: LabelSelector;
  namespaceSelector?: LabelSelector;
  ipBlock?: IPBlock;
}

/** networking.k8s.io/v1 NetworkPolicyPort */
export interface NetworkPolicyPort {
  /** Default TCP. */
  protocol?: PolicyProtocol;
  /** A number, or a named container port (IANA_SVC_NAME). Absent: every port of the protocol. */
  port?: number | string;
  /** With a numeric port: the range port..endPort. */
  endPort?: number;
}

export interface NetworkPolicyIngressRule {
  /** Empty or absent: every source. */
  from?: NetworkPolicyPeer[];
  /** Empty or absent: every port and protocol. */
  ports?: NetworkPolicyPort[];
}

export interface NetworkPolicyEgressRule {
  /** Empty or absent: every destination. */
  to?: NetworkPolicyPeer[];
  ports?: NetworkPolicyPort[];
}

export interface NetworkPolicySpec {
  /** Pods of the policy's namespace it applies to; {} selects all of them. */
  podSelector: LabelSelector;
  /** Absent or empty: Ingress, plus Egress if spec.egress has rules (policyTypesOf). */
  policyTypes?: PolicyType[];
  ingress?: NetworkPolicyIngressRule[];
  egress?: NetworkPolicyEgressRule[];
}

/** networking.k8s.io/v1 NetworkPolicy (the fields that decide traffic). */
export interface NetworkPolicy {
  apiVersion?: 'networking.k8s.io/v1';
  kind?: 'NetworkPolicy';
  metadata: { namespace: string; name: string };
  spec: NetworkPolicySpec;
}

export interface PolicyPodPort {
  name?: string;
  containerPort: number;
  protocol: PolicyProtocol;
}

export interface PolicyPod {
  namespace: string;
  name: string;
  labels: Record<string, string>;
  /** status.podIPs (IPv4 ones are enforced; patu is IPv4-only). */
  ips: string[];
  /** spec.containers[].ports of every container (named ports resolve here). */
  ports: PolicyPodPort[];
  /** Host-network pods are neither endpoints nor peers: their address is the node's (class HOST). */
  hostNetwork?: boolean;
  /** This node enforces its policies (k8s: spec.nodeName is this node; file source: every pod). */
  local: boolean;
}

export interface PolicyNamespace {
  name: string;
  labels: Record<string, string>;
}

export interface PolicyState {
  namespaces: PolicyNamespace[];
  pods: PolicyPod[];
  policies: NetworkPolicy[];
  /** Addresses of the node(s): always allowed both ways (kubelet probes), like host-network pods' addresses. */
  nodeAddresses: string[];
}

export const EMPTY_STATE: PolicyState = Object.freeze({ namespaces: [], pods: [], policies: [], nodeAddresses: [] }) as PolicyState;

/** The label every namespace carries (the apiserver sets it since Kubernetes 1.22). */
export const NAMESPACE_NAME_LABEL = 'kubernetes.io/metadata.name';

/** Absent or empty policyTypes: Ingress, and Egress when the policy has egress rules (the apiserver's defaulting). */
export function policyTypesOf(p: NetworkPolicy): PolicyType[] {
  const t = p.spec.policyTypes;
  if (t && t.length) return t;
  return p.spec.egress && p.spec.egress.length ? ['Ingress', 'Egress'] : ['Ingress'];
}

export const policyRef = (p: { metadata: { namespace: string; name: string } }): string => `${p.metadata.namespace}/${p.metadata.name}`;

// What the compiler hands the kernel side: the kernel side's types (types only: nothing of it is loaded here).
export type { PeerPrefix, PolicyEndpoint, PolicyMapContents, RuleEntry } from '../dataplane/policy-maps.js';

/** bpf/policy.h's reserved peer classes. */
export const PEER_CLASS_WORLD = 0;
export const PEER_CLASS_HOST = 1;
export const PEER_CLASS_FIRST = 16;

/** One flow as the programs see it: addresses and the destination port (0 for ICMP). */
export interface Flow {
  src: string;
  dst: string;
  /** IP protocol number (6, 17, 132, 1, ...). */
  proto: number;
  dport: number;
}
