// The nodes of the cluster as patu routes between them: each node's name, pod CIDR and
// underlay address, from the Node objects (src/k8s/nodes-source.ts) or a nodes file
// (./file-source.ts). planPeers decides, from that list alone, which peers may be
// programmed: a pod CIDR that overlaps ours or another node's is refused (never routed)
// with a reason, since routing it would take traffic from pods that own those addresses.
// No kernel here: src/dataplane/node-routes.ts programs the plan.
import { contains, formatNetwork, networkAddress, overlaps, parseCidr, parseIp, bigIntToIp } from '../net/cidr.js';
import { bytesToMac } from '../kernel/netlink/message.js';

export interface NodeInfo {
  name: string;
  /** The node's IPv4 pod CIDR, as a network ('10.200.1.0/24'). */
  podCIDR: string;
  /** The node's IPv4 underlay address (Kubernetes: status.addresses InternalIP). */
  address: string;
}

export interface RefusedNode {
  node: NodeInfo;
  reason: string;
}

export interface PeerPlan {
  /** This node's entry; undefined when the list does not name it (nothing can be programmed then). */
  self?: NodeInfo;
  /** Peers to route to, by name. */
  peers: NodeInfo[];
  /** Peers left out, each with why (logged by the caller). */
  refused: RefusedNode[];
}

/**
 * Which peers of `nodes` this node (`selfName`) routes to. Refused: a peer whose pod
 * CIDR overlaps ours, or another peer's (both are refused: either could be the wrong
 * one), a peer with our address, a peer whose address lies in a pod CIDR.
 */
export function planPeers(selfName: string, nodes: readonly NodeInfo[]): PeerPlan {
  const self = nodes.find((n) => n.name === selfName);
  const refused: RefusedNode[] = [];
  const others = nodes.filter((n) => n.name !== selfName).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const cidrOf = new Map(nodes.map((n) => [n.name, parseCidr(n.podCIDR)]));
  const bad = new Map<string, string>();
  // A peer over our own CIDR is refused first, and then does not knock out the peers it also overlaps.
  const overSelf = (n: NodeInfo): boolean => self !== undefined && overlaps(cidrOf.get(n.name)!, cidrOf.get(self.name)!);
  const candidates = others.filter((n) => !overSelf(n));
  for (const n of others) {
    const c = cidrOf.get(n.name)!;
    if (overSelf(n)) {
      bad.set(n.name, `podCIDR ${n.podCIDR} overlaps this node's (${self!.name}: ${self!.podCIDR})`);
      continue;
    }
    const clash = candidates.find((o) => o !== n && overlaps(c, cidrOf.get(o.name)!));
    if (clash) {
      bad.set(n.name, `podCIDR ${n.podCIDR} overlaps node ${clash.name}'s (${clash.podCIDR}); neither is routed`);
      continue;
    }
    if (self && n.address === self.address) {
      bad.set(n.name, `address ${n.address} is this node's own`);
      continue;
    }
    const inside = nodes.find((o) => contains(cidrOf.get(o.name)!, n.address));
    if (inside) bad.set(n.name, `address ${n.address} is inside node ${inside.name}'s podCIDR ${inside.podCIDR}`);
  }
  const peers: NodeInfo[] = [];
  for (const n of others) {
    const reason = bad.get(n.name);
    if (reason) refused.push({ node: n, reason });
    else peers.push(n);
  }
  return { ...(self ? { self } : {}), peers, refused };
}

/**
 * A node's VXLAN tunnel endpoint address: the network address of its pod CIDR (as
 * flannel does; IPAM never hands it to a pod). It sits as a /32 on the node's vxlan
 * device, so traffic from the node itself to remote pods leaves with a source the peer
 * routes back through the tunnel.
 */
export function vtepAddress(podCIDR: string): string {
  const c = parseCidr(podCIDR);
  return bigIntToIp(networkAddress(c), c.family);
}

/**
 * A node's vxlan device MAC, derived from its underlay address (0e:70 + the four
 * bytes: locally administered, unicast), so no node has to publish it: every peer
 * computes the same value from the address it already knows.
 */
export function vtepMac(address: string): string {
  const ip = parseIp(address);
  if (ip.family !== 4) throw new Error(`vtep MAC of ${address}: IPv4 only`);
  const b = [0x0e, 0x70, Number((ip.value >> 24n) & 0xffn), Number((ip.value >> 16n) & 0xffn), Number((ip.value >> 8n) & 0xffn), Number(ip.value & 0xffn)];
  return bytesToMac(Buffer.from(b));
}

/** The pod CIDR as a network (host bits cleared): '10.200.1.7/24' -> '10.200.1.0/24'. */
export const normalCidr = (text: string): string => formatNetwork(parseCidr(text));
