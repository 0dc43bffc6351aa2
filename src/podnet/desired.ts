// What every pod on this node should have, from the validated objects (validate.ts) and
// the node's pods: the rules that need more than one object. Pure and deterministic:
// the same input in any order gives the same output (everything is sorted by content
// first), so the reconciler can compare two results and an agent restart decides exactly
// what the previous run did.
//
// Rules, in the order they are applied:
//  1. Networks, oldest first (creationTimestamp, then name). A network is unusable (its
//     problem in networkProblems, no pod gets it) when its subnet overlaps a cluster CIDR
//     or a usable older network's subnet (SubnetOverlap), or when it is a VLAN network and
//     an older usable network already has that link + id, or shares a bridge with it
//     (InvalidVlan: two trunks on one tag, or a VLAN's frames on another network's bridge).
//  2. Configs, oldest first (creationTimestamp, namespace, name); one being deleted asks for
//     nothing (its interfaces go, then the reconciler drops its finalizer). A config whose
//     interface names an unknown or unusable network, a network whose namespaceSelector
//     does not admit its namespace (absent: nobody; `{}`: every namespace; a namespace whose
//     labels are not known yet: nobody), a static address outside the subnet or equal to
//     the gateway, an MTU above the network's, or a route via a next hop outside the
//     subnet configures nothing on any pod (config-level problem).
//  3. Then each pod of the config's namespace its podSelector matches (host-network pods
//     never), by name. A config applies to a pod whole or not at all: it is refused for
//     that pod (a problem naming the pod) when an older config already gave the pod one of
//     its interface names (DuplicateInterface), when one of its static addresses is held by
//     a pod earlier in this order (AddressInUse: the first pod by name of the oldest config
//     gets it), or when one of its networks is being deleted and the pod does not have that
//     interface on it already (NetworkTerminating: a terminating network keeps its users,
//     and gets no new ones, until they are gone). Each such problem is reported once per
//     config, naming the pods it hit (the first ten, then a count).
// A pod being deleted keeps what it would have (its interfaces go at CNI DEL, so a graceful
// shutdown can still use them).
//
// Static addresses are unique across the cluster only when the caller passes the other
// nodes' pods as `remotePods` (they take part in who-gets-it, but nothing is decided or
// reported for them here: their own agents do that); without them, per node.
import { sha256Hex } from '../sha256.js';
import { broadcastAddress, formatNetwork, networkAddress, overlaps, parseCidr, parseIp, type Cidr } from '../net/cidr.js';
import { selectorMatches } from '../policy/evaluate.js';
import {
  DEFAULT_PODNET_MTU, REASONS,
  type AppliedInterface, type DesiredInterface, type DesiredState, type LabelSelector, type NodeNetwork, type PodInfo,
  type PodNetworkConfig, type Problem, type ResolvedNetwork,
} from './types.js';

/** Whether labels satisfy a metav1.LabelSelector (`{}` matches everything): the one NetworkPolicy uses. */
export function labelsMatch(sel: LabelSelector, labels: Record<string, string>): boolean {
  return selectorMatches(sel, labels);
}

/**
 * Whether a network's namespaceSelector admits a namespace. Absent: nobody (an admin opens
 * a network on purpose); `{}`: everyone; otherwise the namespace's labels must be known.
 */
export function namespaceAdmitted(net: NodeNetwork, labels: Record<string, string> | undefined): boolean {
  const sel = net.spec.namespaceSelector;
  if (!sel) return false;
  const empty = Object.keys(sel.matchLabels ?? {}).length === 0 && (sel.matchExpressions ?? []).length === 0;
  if (empty) return true;
  return labels !== undefined && selectorMatches(sel, labels);
}

/** The bridge of a VLAN network without one: `pv<id>-<6 hex of sha256(name)>` (at most 13 bytes). */
export const vlanBridgeName = (network: string, id: number): string => `pv${id}-${sha256Hex(network).slice(0, 6)}`;

/** A (validated) NodeNetwork as the kernel side needs it: bridge and MTU filled in, subnet normalised. */
export function resolveNetwork(n: NodeNetwork): ResolvedNetwork {
  const s = n.spec;
  const c = parseCidr(s.subnet);
  return {
    name: n.name,
    bridge: s.bridge ?? vlanBridgeName(n.name, s.vlan!.id),
    ...(s.vlan ? { vlan: { link: s.vlan.link, id: s.vlan.id } } : {}),
    subnet: formatNetwork(c),
    ...(s.gateway !== undefined ? { gateway: s.gateway } : {}),
    ...(s.rangeStart !== undefined ? { rangeStart: s.rangeStart } : {}),
    ...(s.rangeEnd !== undefined ? { rangeEnd: s.rangeEnd } : {}),
    mtu: s.mtu ?? DEFAULT_PODNET_MTU,
  };
}

export interface DesiredInput {
  networks: NodeNetwork[];
  configs: PodNetworkConfig[];
  /** Namespace name -> its labels (as the apiserver has them, kubernetes.io/metadata.name included). */
  namespaces: ReadonlyMap<string, Record<string, string>>;
  /** This node's pods. */
  pods: PodInfo[];
  /** Pod addresses of the cluster: no NodeNetwork subnet may overlap them. */
  clusterCidrs: string[];
  /**
   * What this node's pods have now (key `namespace/name`; PodNetApplier.list gives it): a
   * network being deleted keeps these users. Absent: none known (no new or old users).
   */
  attached?: ReadonlyMap<string, readonly Pick<AppliedInterface, 'ifname' | 'network'>[]>;
  /** Pods of other nodes: they take part in who gets a static address, nothing else. */
  remotePods?: PodInfo[];
}

const cmp = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);
const keyOf = (o: { namespace: string; name: string }): string => `${o.namespace}/${o.name}`;

interface UsableNetwork {
  net: NodeNetwork;
  resolved: ResolvedNetwork;
  subnet: Cidr;
}

/** Step 1: which networks may be used, and what is wrong with the others. */
function checkNetworks(networks: NodeNetwork[], clusterCidrs: string[], problems: Map<string, Problem[]>): Map<string, UsableNetwork> {
  const usable = new Map<string, UsableNetwork>();
  const cluster = clusterCidrs.map((c) => ({ text: c, cidr: parseCidr(c) }));
  const sorted = [...networks].sort((a, b) => cmp(a.creationTimestamp ?? '', b.creationTimestamp ?? '') || cmp(a.name, b.name));
  for (const n of sorted) {
    if (problems.has(n.name)) continue; // a duplicate name: the first one counts
    const list: Problem[] = [];
    problems.set(n.name, list);
    const resolved = resolveNetwork(n);
    const subnet = parseCidr(resolved.subnet);
    for (const c of cluster) {
      if (overlaps(subnet, c.cidr)) list.push({ field: 'spec.subnet', reason: REASONS.subnetOverlap, message: `${n.spec.subnet} overlaps the cluster CIDR ${c.text} (the pods' primary addresses)` });
    }
    for (const u of usable.values()) {
      if (overlaps(subnet, u.subnet)) {
        list.push({ field: 'spec.subnet', reason: REASONS.subnetOverlap, message: `${n.spec.subnet} overlaps NodeNetwork ${u.net.name}'s ${u.net.spec.subnet} (the older network keeps it)` });
      }
      const v = resolved.vlan;
      const uv = u.resolved.vlan;
      if (v && uv && v.link === uv.link && v.id === uv.id) {
        list.push({ field: 'spec.vlan', reason: REASONS.invalidVlan, message: `VLAN ${v.id} on ${v.link} is already NodeNetwork ${u.net.name}'s` });
      }
      if ((v || uv) && resolved.bridge === u.resolved.bridge) {
        list.push({ field: 'spec.bridge', reason: REASONS.invalidVlan, message: `bridge ${resolved.bridge} is NodeNetwork ${u.net.name}'s: a VLAN network's bridge carries that VLAN only` });
      }
    }
    if (list.length === 0) usable.set(n.name, { net: n, resolved, subnet });
  }
  return usable;
}

/** One interface of a config, checked against its network (step 2). */
interface PlannedInterface {
  index: number;
  want: Omit<DesiredInterface, 'config'>;
  /** The static address's value, for claims. */
  staticIp?: bigint;
  terminating: boolean;
}

function planConfig(cfg: PodNetworkConfig, usable: Map<string, UsableNetwork>, known: ReadonlySet<string>, nsLabels: Record<string, string> | undefined): { plan: PlannedInterface[]; problems: Problem[] } {
  const problems: Problem[] = [];
  const plan: PlannedInterface[] = [];
  cfg.spec.interfaces.forEach((i, index) => {
    const at = `spec.interfaces[${index}]`;
    const u = usable.get(i.network);
    if (!u) {
      problems.push(known.has(i.network)
        ? { field: `${at}.network`, reason: REASONS.unknownNetwork, message: `NodeNetwork ${i.network} cannot be used (see its status)` }
        : { field: `${at}.network`, reason: REASONS.unknownNetwork, message: `no NodeNetwork ${i.network}` });
      return;
    }
    if (!namespaceAdmitted(u.net, nsLabels)) {
      const why = !u.net.spec.namespaceSelector ? 'it has no namespaceSelector (no namespace may attach)'
        : nsLabels === undefined ? `namespace ${cfg.namespace}'s labels are not known yet` : 'its namespaceSelector does not select it';
      problems.push({ field: `${at}.network`, reason: REASONS.namespaceNotAllowed, message: `NodeNetwork ${i.network} does not admit namespace ${cfg.namespace}: ${why}` });
      return;
    }
    const net = u.resolved;
    let staticIp: bigint | undefined;
    let bad = false;
    if (i.address !== undefined) {
      const a = parseCidr(i.address);
      const ipv = a.ip;
      if (a.family !== 4 || a.prefix !== u.subnet.prefix || networkAddress(a) !== networkAddress(u.subnet)) {
        problems.push({ field: `${at}.address`, reason: REASONS.addressOutsideSubnet, message: `${i.address} is not in NodeNetwork ${i.network}'s subnet ${net.subnet} (address and prefix length)` });
        bad = true;
      } else if (ipv === networkAddress(u.subnet) || ipv === broadcastAddress(u.subnet)) {
        problems.push({ field: `${at}.address`, reason: REASONS.addressOutsideSubnet, message: `${i.address} is ${net.subnet}'s ${ipv === networkAddress(u.subnet) ? 'network' : 'broadcast'} address, not a host address` });
        bad = true;
      } else if (net.gateway !== undefined && parseIp(net.gateway).value === ipv) {
        problems.push({ field: `${at}.address`, reason: REASONS.addressInUse, message: `${i.address} is NodeNetwork ${i.network}'s gateway` });
        bad = true;
      } else if (plan.some((q) => q.staticIp === ipv && q.want.network.name === net.name)) {
        problems.push({ field: `${at}.address`, reason: REASONS.addressInUse, message: `${i.address} is also another interface's of this config` });
        bad = true;
      } else {
        staticIp = ipv;
      }
    }
    const mtu = i.mtu ?? net.mtu;
    if (mtu > net.mtu) {
      problems.push({ field: `${at}.mtu`, reason: REASONS.invalidSpec, message: `${mtu} is above NodeNetwork ${i.network}'s MTU ${net.mtu}` });
      bad = true;
    }
    (i.routes ?? []).forEach((r, k) => {
      if (r.via === undefined) return;
      const via = parseIp(r.via).value;
      if (networkAddress({ ...u.subnet, ip: via }) !== networkAddress(u.subnet) || via === networkAddress(u.subnet) || via === broadcastAddress(u.subnet)) {
        problems.push({ field: `${at}.routes[${k}].via`, reason: REASONS.invalidSpec, message: `next hop ${r.via} is not a host of NodeNetwork ${i.network}'s subnet ${net.subnet}` });
        bad = true;
      }
    });
    if (bad) return;
    plan.push({
      index,
      staticIp,
      terminating: u.net.deleting,
      want: {
        ifname: i.name,
        network: net,
        ...(i.address !== undefined ? { address: i.address } : {}),
        ...(i.mac !== undefined ? { mac: i.mac.toLowerCase() } : {}),
        mtu,
        routes: (i.routes ?? []).map((r) => ({ ...r })),
        rules: (i.rules ?? []).map((r) => ({ ...r })),
      },
    });
  });
  return { plan, problems };
}

/** Pods one config was refused for, the same problem once with the pods it hit (a status stays short). */
class Refusals {
  private readonly byKey = new Map<string, { problem: Problem; pods: string[] }>();
  add(p: Problem, pod: string): void {
    const key = `${p.field}\0${p.reason}\0${p.message}`;
    const e = this.byKey.get(key) ?? { problem: p, pods: [] };
    e.pods.push(pod);
    this.byKey.set(key, e);
  }
  problems(): Problem[] {
    return [...this.byKey.values()].map(({ problem, pods }) => {
      const shown = pods.slice(0, MAX_PODS_NAMED).join(', ') + (pods.length > MAX_PODS_NAMED ? ` and ${pods.length - MAX_PODS_NAMED} more` : '');
      return { ...problem, message: `${problem.message}: nothing from this config for pod${pods.length > 1 ? 's' : ''} ${shown}` };
    });
  }
}
/** Pods a refusal names before it counts the rest. */
const MAX_PODS_NAMED = 10;

/** Networks x configs x namespaces x pods -> what each pod on this node should have. */
export function computeDesired(input: DesiredInput): DesiredState {
  const networkProblems = new Map<string, Problem[]>();
  const usable = checkNetworks(input.networks, input.clusterCidrs, networkProblems);
  const known = new Set(input.networks.map((n) => n.name));

  const local = new Set<string>();
  const allPods = new Map<string, PodInfo>();
  for (const p of input.remotePods ?? []) allPods.set(keyOf(p), p);
  for (const p of input.pods) {
    allPods.set(keyOf(p), p); // a pod listed as both is this node's
    local.add(keyOf(p));
  }
  const podsByNs = new Map<string, PodInfo[]>();
  for (const p of allPods.values()) {
    if (p.hostNetwork) continue;
    const l = podsByNs.get(p.namespace) ?? [];
    l.push(p);
    podsByNs.set(p.namespace, l);
  }
  for (const l of podsByNs.values()) l.sort((a, b) => cmp(a.name, b.name));

  const configs = input.configs.filter((c) => !c.deleting)
    .sort((a, b) => cmp(a.creationTimestamp ?? '', b.creationTimestamp ?? '') || cmp(a.namespace, b.namespace) || cmp(a.name, b.name));
  const configProblems = new Map<string, Problem[]>();
  /** Pod key -> ifname -> the config that gave it. */
  const ifnames = new Map<string, Map<string, string>>();
  /** Network name + address -> who holds it. */
  const addresses = new Map<string, string>();
  const out = new Map<string, DesiredInterface[]>();

  for (const cfg of configs) {
    const ckey = keyOf(cfg);
    if (configProblems.has(ckey)) continue; // a duplicate: the first one counts
    const { plan, problems } = planConfig(cfg, usable, known, input.namespaces.get(cfg.namespace));
    configProblems.set(ckey, problems);
    if (problems.length > 0) continue;
    const refusals = new Refusals();
    for (const pod of podsByNs.get(cfg.namespace) ?? []) {
      if (!selectorMatches(cfg.spec.podSelector, pod.labels)) continue;
      const pkey = keyOf(pod);
      const isLocal = local.has(pkey);
      const have = ifnames.get(pkey) ?? new Map<string, string>();
      const refused: Problem[] = [];
      for (const p of plan) {
        const at = `spec.interfaces[${p.index}]`;
        const owner = have.get(p.want.ifname);
        if (owner !== undefined) {
          refused.push({ field: `${at}.name`, reason: REASONS.duplicateInterface, message: `${p.want.ifname} is already given by PodNetworkConfig ${owner} (the older config keeps it)` });
        }
        if (p.staticIp !== undefined) {
          const holder = addresses.get(`${p.want.network.name}|${p.staticIp}`);
          if (holder !== undefined) refused.push({ field: `${at}.address`, reason: REASONS.addressInUse, message: `${p.want.address} is already ${holder}'s (the first pod by name keeps it)` });
        }
        if (p.terminating) {
          const kept = isLocal && (input.attached?.get(pkey) ?? []).some((a) => a.ifname === p.want.ifname && a.network === p.want.network.name);
          if (!kept) refused.push({ field: `${at}.network`, reason: REASONS.networkTerminating, message: `NodeNetwork ${p.want.network.name} is being deleted: it keeps the pods attached to it and takes no new one` });
        }
      }
      if (refused.length > 0) {
        if (isLocal) for (const r of refused) refusals.add(r, pod.name);
        continue;
      }
      for (const p of plan) {
        have.set(p.want.ifname, ckey);
        if (p.staticIp !== undefined) addresses.set(`${p.want.network.name}|${p.staticIp}`, `pod ${pkey} (${p.want.ifname})`);
      }
      ifnames.set(pkey, have);
      if (!isLocal) continue;
      const list = out.get(pkey) ?? [];
      for (const p of plan) list.push({ config: { namespace: cfg.namespace, name: cfg.name }, ...p.want });
      out.set(pkey, list);
    }
    problems.push(...refusals.problems());
  }

  const pods: DesiredState['pods'] = new Map();
  const networksInUse = new Map<string, ResolvedNetwork>();
  for (const key of [...out.keys()].sort(cmp)) {
    const interfaces = out.get(key)!;
    pods.set(key, { pod: allPods.get(key)!, interfaces });
    for (const i of interfaces) networksInUse.set(i.network.name, i.network);
  }
  const sortedMap = <V>(m: Map<string, V>): Map<string, V> => new Map([...m.entries()].sort(([a], [b]) => cmp(a, b)));
  return {
    pods,
    networksInUse: sortedMap(networksInUse),
    configProblems: sortedMap(configProblems),
    networkProblems: sortedMap(networkProblems),
  };
}
