// The REFERENCE evaluator: whether one flow is allowed, decided straight from the
// Kubernetes NetworkPolicy documentation (concepts/services-networking/network-policies,
// and the networking.k8s.io/v1 API reference), not from the compiler. It is slow on
// purpose (every policy, every peer, every flow) and is what the compiler, the
// kernel programs (test/integration/policy-property.test.ts) and the engine's
// conntrack flush are checked against.
//
// What the documentation says, and where it shows up below:
//  - A pod is isolated for ingress (egress) when any NetworkPolicy in its namespace
//    selects it (spec.podSelector) and has Ingress (Egress) in its policyTypes. A
//    pod that is not isolated in a direction allows everything in that direction.
//  - policyTypes absent: Ingress always, Egress when the policy has egress rules.
//  - Policies add up: a flow is allowed in a direction when any rule of any policy
//    selecting the pod for that direction allows it. There are no deny rules.
//  - A connection between two pods needs the source's egress AND the destination's
//    ingress to allow it.
//  - A rule allows a peer when from/to is empty or absent (everything), or one of its
//    peers matches; and the port when ports is empty or absent (everything), or one
//    of its ports matches.
//  - Peer: podSelector alone = pods of the POLICY's namespace; namespaceSelector alone
//    = every pod of the selected namespaces; both = the selected pods of the selected
//    namespaces; ipBlock = addresses in cidr and in no except (patu: pod addresses too).
//  - Port: protocol (default TCP) and port by number (endPort: a range) or by name. A
//    named port resolves against the pod on the receiving side: for ingress the
//    selected pod's own container ports, for egress the destination pod's.
//  - Selectors: matchLabels and matchExpressions (In, NotIn, Exists, DoesNotExist)
//    all hold; an empty selector selects everything. Namespaces carry
//    kubernetes.io/metadata.name = their name.
// And what patu adds (POLICY-CONTRACT.md): the node's addresses and host-network pods
// (class HOST) are always allowed both ways (kubelet probes); only pods this node
// enforces (local) are judged unless allNodes is set.
import { contains, parseCidr, parseIp } from '../net/cidr.js';
import {
  IPPROTO, NAMESPACE_NAME_LABEL, policyRef, policyTypesOf,
  type Flow, type LabelSelector, type NetworkPolicy, type NetworkPolicyEgressRule, type NetworkPolicyIngressRule, type NetworkPolicyPeer, type NetworkPolicyPort, type PolicyPod, type PolicyState, type PolicyType,
} from './types.js';

export interface DirectionVerdict {
  /** The pod whose policy was judged (`ns/name`), if any. */
  pod?: string;
  /** Some policy selects the pod for this direction. */
  isolated: boolean;
  allowed: boolean;
  /** `ns/name` of the policies that allow it (empty when not isolated). */
  allowedBy: string[];
}

export interface Verdict {
  allowed: boolean;
  /** One end is the node or a host-network pod: always allowed. */
  host: boolean;
  /** The source pod's egress policy. */
  egress: DirectionVerdict;
  /** The destination pod's ingress policy. */
  ingress: DirectionVerdict;
}

export interface EvaluateOptions {
  /** Judge pods of every node, not only local ones (the cluster-wide answer). */
  allNodes?: boolean;
}

/** Whether labels satisfy a label selector (metav1.LabelSelector semantics). */
export function selectorMatches(sel: LabelSelector, labels: Record<string, string>): boolean {
  for (const [k, v] of Object.entries(sel.matchLabels ?? {})) {
    if (!Object.hasOwn(labels, k) || labels[k] !== v) return false;
  }
  for (const e of sel.matchExpressions ?? []) {
    const has = Object.hasOwn(labels, e.key);
    const values = e.values ?? [];
    switch (e.operator) {
      case 'In':
        if (!has || !values.includes(labels[e.key]!)) return false;
        break;
      case 'NotIn':
        if (has && values.includes(labels[e.key]!)) return false;
        break;
      case 'Exists':
        if (!has) return false;
        break;
      case 'DoesNotExist':
        if (has) return false;
        break;
      default:
        return false;
    }
  }
  return true;
}

/** Parsed cidrs (the engine judges many flows against the same ipBlocks); emptied when large. */
const cidrs = new Map<string, ReturnType<typeof parseCidr>>();
function cidrOf(text: string): ReturnType<typeof parseCidr> {
  let c = cidrs.get(text);
  if (c === undefined) {
    c = parseCidr(text);
    if (cidrs.size >= 100_000) cidrs.clear();
    cidrs.set(text, c);
  }
  return c;
}

function inIpBlock(block: { cidr: string; except?: string[] }, ip: string): boolean {
  const a = parseIp(ip);
  if (!contains(cidrOf(block.cidr), a)) return false;
  return !(block.except ?? []).some((e) => contains(cidrOf(e), a));
}

/** Whether a peer of a policy in namespace policyNs matches the address (and the pod at it, if any). */
function peerMatches(nsLabels: (ns: string) => Record<string, string>, policyNs: string, peer: NetworkPolicyPeer, ip: string, pod: PolicyPod | undefined): boolean {
  if (peer.ipBlock) return inIpBlock(peer.ipBlock, ip);
  if (!pod) return false;
  if (peer.namespaceSelector) {
    if (!selectorMatches(peer.namespaceSelector, nsLabels(pod.namespace))) return false;
  } else if (pod.namespace !== policyNs) {
    return false;
  }
  return peer.podSelector ? selectorMatches(peer.podSelector, pod.labels) : true;
}

const PROTOCOL_OF: Record<number, 'TCP' | 'UDP' | 'SCTP'> = { [IPPROTO.TCP]: 'TCP', [IPPROTO.UDP]: 'UDP', [IPPROTO.SCTP]: 'SCTP' };

/** Whether a rule port matches; portsPod resolves named ports (the receiving pod). */
function portMatches(rp: NetworkPolicyPort, proto: number, dport: number, portsPod: PolicyPod | undefined): boolean {
  const protocol = rp.protocol ?? 'TCP';
  if (PROTOCOL_OF[proto] !== protocol) return false;
  if (rp.port === undefined) return true;
  if (typeof rp.port === 'number') {
    const end = rp.endPort ?? rp.port;
    return dport >= rp.port && dport <= end;
  }
  const named = portsPod?.ports.find((cp) => cp.name === rp.port && cp.protocol === protocol);
  return named !== undefined && named.containerPort === dport;
}

const NOT_JUDGED: DirectionVerdict = Object.freeze({ isolated: false, allowed: true, allowedBy: [] }) as unknown as DirectionVerdict;

/**
 * The evaluator over one state. The constructor only indexes (pods by address, namespaces
 * by name, policies by namespace) so that many flows can be judged against one state
 * (the engine judges every conntrack entry after a change); the rules are applied per flow.
 */
export class Evaluator {
  private readonly hosts = new Set<string>();
  private readonly podByIp = new Map<string, PolicyPod>();
  private readonly nsLabelsOf = new Map<string, Record<string, string>>();
  private readonly policiesOf = new Map<string, NetworkPolicy[]>();

  constructor(readonly state: PolicyState, private readonly opts: EvaluateOptions = {}) {
    for (const a of state.nodeAddresses) this.hosts.add(a);
    for (const p of state.pods) {
      // Host-network pods have the node's address: they are the node.
      if (p.hostNetwork) for (const ip of p.ips) this.hosts.add(ip);
      // The first pod listed at an address has it.
      else for (const ip of p.ips) if (!this.podByIp.has(ip)) this.podByIp.set(ip, p);
    }
    for (const n of state.namespaces) if (!this.nsLabelsOf.has(n.name)) this.nsLabelsOf.set(n.name, n.labels);
    for (const p of state.policies) {
      const l = this.policiesOf.get(p.metadata.namespace);
      if (l) l.push(p);
      else this.policiesOf.set(p.metadata.namespace, [p]);
    }
  }

  /** A namespace's labels: as declared, plus kubernetes.io/metadata.name (also for namespaces only pods mention). */
  private readonly nsLabelsMemo = new Map<string, Record<string, string>>();
  private readonly nsLabels = (name: string): Record<string, string> => {
    let l = this.nsLabelsMemo.get(name);
    if (!l) this.nsLabelsMemo.set(name, (l = { ...(this.nsLabelsOf.get(name) ?? {}), [NAMESPACE_NAME_LABEL]: name }));
    return l;
  };

  /**
   * The verdict on a new flow from src to dst (IPv4 addresses) with this IP protocol
   * and destination port: the source pod's egress and the destination pod's ingress,
   * each judged when that pod is known (and local, unless opts.allNodes).
   */
  verdict(flow: Flow): Verdict {
    if (this.hosts.has(flow.src) || this.hosts.has(flow.dst)) {
      return { allowed: true, host: true, egress: NOT_JUDGED, ingress: NOT_JUDGED };
    }
    const srcPod = this.podByIp.get(flow.src);
    const dstPod = this.podByIp.get(flow.dst);
    const judged = (p: PolicyPod | undefined): p is PolicyPod => p !== undefined && (this.opts.allNodes === true || p.local);
    const egress = judged(srcPod) ? this.judge(srcPod, 'Egress', flow.dst, dstPod, flow.proto, flow.dport) : NOT_JUDGED;
    const ingress = judged(dstPod) ? this.judge(dstPod, 'Ingress', flow.src, srcPod, flow.proto, flow.dport) : NOT_JUDGED;
    return { allowed: egress.allowed && ingress.allowed, host: false, egress, ingress };
  }

  private judge(pod: PolicyPod, dir: PolicyType, peerIp: string, peerPod: PolicyPod | undefined, proto: number, dport: number): DirectionVerdict {
    const ref = `${pod.namespace}/${pod.name}`;
    // The policies of the pod's namespace that select it for this direction.
    const selecting = (this.policiesOf.get(pod.namespace) ?? []).filter(
      (p) => selectorMatches(p.spec.podSelector, pod.labels) && policyTypesOf(p).includes(dir),
    );
    if (selecting.length === 0) return { pod: ref, isolated: false, allowed: true, allowedBy: [] };
    const allowedBy: string[] = [];
    // Named ports: ingress -> the selected pod's own ports; egress -> the destination's.
    const portsPod = dir === 'Ingress' ? pod : peerPod;
    for (const p of selecting) {
      const rules = (dir === 'Ingress' ? p.spec.ingress : p.spec.egress) ?? [];
      const allows = rules.some((r) => {
        const peers = dir === 'Ingress' ? (r as NetworkPolicyIngressRule).from : (r as NetworkPolicyEgressRule).to;
        const peerOk = !peers || peers.length === 0 || peers.some((x) => peerMatches(this.nsLabels, p.metadata.namespace, x, peerIp, peerPod));
        if (!peerOk) return false;
        return !r.ports || r.ports.length === 0 || r.ports.some((rp) => portMatches(rp, proto, dport, portsPod));
      });
      if (allows) allowedBy.push(policyRef(p));
    }
    return { pod: ref, isolated: true, allowed: allowedBy.length > 0, allowedBy };
  }
}

/** The verdict on one flow (see Evaluator.verdict); for many flows against one state, use an Evaluator. */
export function evaluate(state: PolicyState, flow: Flow, opts: EvaluateOptions = {}): Verdict {
  return new Evaluator(state, opts).verdict(flow);
}
