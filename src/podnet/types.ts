// Pod network configuration (issue 12): the contract between its parts.
//
// A cluster admin declares NodeNetworks (cluster-scoped: a bridge, or a VLAN on a host
// link, with a subnet patu allocates from); a tenant declares PodNetworkConfigs
// (namespaced: which of its pods get which extra interfaces on which network). The agent
// gives the pods those interfaces, from the CNI ADD itself when it can, and keeps them in
// step as the objects and the pods' labels change. Nothing here touches the pod's eth0,
// its main routing table, or a link patu did not create.
//
//   src/podnet/validate.ts   one object (as the apiserver sends it) -> typed spec, or problems naming fields
//   src/podnet/desired.ts    pure: networks x configs x namespaces x this node's pods -> what each pod
//                            should have, and each config's status (cross-object rules live here)
//   src/podnet/apply.ts      kernel: makes one pod's extra interfaces exactly what desired.ts says
//                            (veth born in the pod's netns, addresses from the network's own pool,
//                            MTU, routes in a named table, policy rules); DEL/GC/restart cleanup
//   src/podnet/vlan.ts       kernel: a VLAN network's trunk (bpf/vlan.c: tag pop/push at tc)
//   src/k8s/podnet-source.ts informers for the two kinds, namespaces and this node's pods; status,
//                            finalizers, events, the network-status annotation; the CNI ADD hook
//
// This module holds only types and constants: it imports nothing.

export const PODNET_GROUP = 'network.patu.dev';
export const PODNET_VERSION = 'v1alpha1';
export const PODNET_API_VERSION = `${PODNET_GROUP}/${PODNET_VERSION}`;
/** Finalizer the agent puts on PodNetworkConfigs and NodeNetworks it acts on. */
export const PODNET_FINALIZER = 'network.patu.dev/cleanup';
/** The Multus-convention annotation the agent writes on pods with extra interfaces. */
export const NETWORK_STATUS_ANNOTATION = 'k8s.v1.cni.cncf.io/network-status';
/**
 * Every link patu creates for this feature carries an IFLA_IFALIAS starting with this,
 * so the agent never touches (lists, changes, deletes) a link it did not make.
 * Host-side veth: `patu-podnet <containerId> <podIfname> <network>`;
 * pod-side end: `patu-podnet <network> <configNamespace>/<configName>`;
 * a bridge patu created: `patu-podnet-bridge <network>`; a VLAN trunk end: `patu-podnet-trunk <network>`.
 */
export const PODNET_ALIAS_PREFIX = 'patu-podnet';
/** Routing tables a tenant may not name (they belong to the pod's primary network). */
export const RESERVED_TABLES: ReadonlyMap<number, string> = new Map([
  [0, 'unspec'],
  [253, 'default'],
  [254, 'main'],
  [255, 'local'],
]);
/** Default priority of a policy rule without one (below main's 32766, above nothing reserved). */
export const DEFAULT_RULE_PRIORITY = 1000;
export const DEFAULT_PODNET_MTU = 1500;

/** A metav1.LabelSelector. Absent and `{}` differ where a field says so. */
export interface LabelSelector {
  matchLabels?: Record<string, string>;
  matchExpressions?: { key: string; operator: 'In' | 'NotIn' | 'Exists' | 'DoesNotExist'; values?: string[] }[];
}

// ---- NodeNetwork (cluster-scoped, the cluster admin's) --------------------------------

export interface NodeNetworkSpec {
  /**
   * The bridge the pods' interfaces join. An existing bridge patu did not create is used
   * as it is (patu never changes its settings, adds no address to it, never deletes it);
   * a missing one is created (marked as patu's) and removed when no pod uses it.
   * With `vlan`, optional: defaults to `pv<id>-<hash>`-style name chosen by apply.ts.
   */
  bridge?: string;
  /** Tagged on a host link: frames from the pods leave `link` tagged `id` (1-4094), done in eBPF (vlan.ts). */
  vlan?: { link: string; id: number };
  /** IPv4 CIDR the pods' addresses on this network come from (patu's IPAM, a pool of its own). */
  subnet: string;
  /** Optional: an address in `subnet`, put on the bridge (host side) when patu created the bridge; never allocated to pods. */
  gateway?: string;
  /** MTU of the bridge patu creates and the default of the pods' interfaces (default 1500). */
  mtu?: number;
  /** First and last address pods may get (default: the subnet's usable range, minus the gateway). */
  rangeStart?: string;
  rangeEnd?: string;
  /**
   * Which namespaces may attach pods. Absent: none (an admin opens a network on purpose);
   * `{}`: every namespace.
   */
  namespaceSelector?: LabelSelector;
}

// ---- PodNetworkConfig (namespaced, a tenant's) ---------------------------------------

export interface RouteSpec {
  /** Destination CIDR, or 'default'. */
  to: string;
  /** Next hop on this interface's network; absent: a link route. */
  via?: string;
  /** Routing table (1 to 2^32-1, not a RESERVED_TABLES one): required, since the main table is the primary network's and never written. */
  table: number;
  metric?: number;
}

export interface RuleSpec {
  /** Source CIDR the rule matches (absent: any). */
  from?: string;
  /** Destination CIDR the rule matches (absent: any). */
  to?: string;
  /** Look up this table (not a RESERVED_TABLES one). */
  table: number;
  /** Rule priority (1-32765; default DEFAULT_RULE_PRIORITY + the rule's index). */
  priority?: number;
}

export interface InterfaceSpec {
  /** Name inside the pod (1-15 bytes; not eth0, lo, or another interface of the same pod). */
  name: string;
  /** A NodeNetwork's name. */
  network: string;
  /** Static 'a.b.c.d/len' inside the network's subnet; absent: one per pod from the network's pool. */
  address?: string;
  /** Default: the network's MTU. */
  mtu?: number;
  /** Static MAC (aa:bb:cc:dd:ee:ff); absent: derived from the address like the primary network does. */
  mac?: string;
  routes?: RouteSpec[];
  rules?: RuleSpec[];
}

export interface PodNetworkConfigSpec {
  /** Pods of this namespace the config applies to (`{}`: all of them). */
  podSelector: LabelSelector;
  interfaces: InterfaceSpec[];
}

/** metav1.Condition. */
export interface Condition {
  type: 'Ready' | 'Degraded' | 'InUse';
  status: 'True' | 'False' | 'Unknown';
  reason: string;
  message: string;
  observedGeneration?: number;
  lastTransitionTime?: string;
}

/** One pod's interface, as a PodNetworkConfig's status lists it. */
export interface PodInterfaceStatus {
  /** Pod name (same namespace as the config). */
  name: string;
  /** The node whose agent wrote this entry (each agent rewrites only its own node's entries). */
  node: string;
  interface: string;
  network: string;
  address?: string;
  ready: boolean;
  message: string;
}

export interface PodNetworkConfigStatus {
  conditions: Condition[];
  pods: PodInterfaceStatus[];
  observedGeneration?: number;
}

export interface NodeNetworkStatus {
  conditions: Condition[];
  /** Who uses it on this node (`namespace/config`, `namespace/pod`), while a deletion waits for them. */
  users?: string[];
  observedGeneration?: number;
}

// ---- Reasons (stable, for conditions and tests) ---------------------------------------

export const REASONS = {
  ready: 'Ready',
  /** The object itself is malformed (validate.ts; the CRD schema should have caught it). */
  invalidSpec: 'InvalidSpec',
  unknownNetwork: 'UnknownNetwork',
  /** The network's namespaceSelector does not admit the config's namespace. */
  namespaceNotAllowed: 'NamespaceNotAllowed',
  addressOutsideSubnet: 'AddressOutsideSubnet',
  addressInUse: 'AddressInUse',
  duplicateInterface: 'DuplicateInterface',
  reservedTable: 'ReservedTable',
  invalidVlan: 'InvalidVlan',
  /** The network's subnet overlaps the cluster CIDR or another NodeNetwork's. */
  subnetOverlap: 'SubnetOverlap',
  /** The kernel refused (the message names the call); retried. */
  applyFailed: 'ApplyFailed',
  poolExhausted: 'PoolExhausted',
  /** Waiting: the pod's sandbox is not known on this node yet (no CNI ADD seen). */
  podPending: 'PodPending',
  networkTerminating: 'NetworkTerminating',
  networkInUse: 'NetworkInUse',
} as const;
export type Reason = (typeof REASONS)[keyof typeof REASONS];

export interface Problem {
  /** JSON path of the field at fault, e.g. `spec.interfaces[1].address`. */
  field: string;
  reason: Reason;
  message: string;
}

// ---- What the agent works with --------------------------------------------------------

export interface ObjectRef {
  namespace: string;
  name: string;
}

export interface PodRef extends ObjectRef {
  uid: string;
}

/** A validated NodeNetwork. */
export interface NodeNetwork {
  name: string;
  uid: string;
  generation: number;
  /** metadata.deletionTimestamp is set. */
  deleting: boolean;
  /** metadata.creationTimestamp (RFC 3339): the older of two conflicting networks keeps its subnet. */
  creationTimestamp?: string;
  spec: NodeNetworkSpec;
}

/** A validated PodNetworkConfig. */
export interface PodNetworkConfig extends ObjectRef {
  uid: string;
  generation: number;
  deleting: boolean;
  /** metadata.creationTimestamp (RFC 3339): of two configs asking one pod for the same interface name, the older keeps it. */
  creationTimestamp?: string;
  spec: PodNetworkConfigSpec;
}

/** A pod on this node, as the agent's trimmed cache holds it. */
export interface PodInfo extends PodRef {
  labels: Record<string, string>;
  /** spec.hostNetwork pods get nothing. */
  hostNetwork: boolean;
  deleting: boolean;
}

/**
 * A pod's network namespace as the CNI ADD saw it (IPAM record fields; see
 * src/ipam/store.ts `RecordOwner`). Pods started before patu recorded these are found
 * again on their next ADD (a sandbox restart), not through CRI.
 */
export interface PodSandbox {
  pod: PodRef;
  containerId: string;
  /** CNI_NETNS of the ADD, e.g. /var/run/netns/cni-1234... */
  netns: string;
}

/** A NodeNetwork reduced to what the kernel side needs. */
export interface ResolvedNetwork {
  name: string;
  /** The bridge to join (created by apply.ts when missing). */
  bridge: string;
  vlan?: { link: string; id: number };
  /** Normalised CIDR. */
  subnet: string;
  gateway?: string;
  rangeStart?: string;
  rangeEnd?: string;
  mtu: number;
}

/** One extra interface one pod should have: checked against every cross-object rule. */
export interface DesiredInterface {
  /** The PodNetworkConfig asking for it. */
  config: ObjectRef;
  /** Name inside the pod. */
  ifname: string;
  network: ResolvedNetwork;
  /** Static address with prefix length; absent: allocated from the network's pool. */
  address?: string;
  mac?: string;
  mtu: number;
  routes: RouteSpec[];
  rules: RuleSpec[];
}

/** What desired.ts decides for the node. */
export interface DesiredState {
  /** Per pod (key `namespace/name`): the interfaces it should have. Pods with none are absent. */
  pods: Map<string, { pod: PodInfo; interfaces: DesiredInterface[] }>;
  /** Networks some pod on this node should be attached to (their bridges/trunks must exist). */
  networksInUse: Map<string, ResolvedNetwork>;
  /** Per config (key `namespace/name`): problems that keep (part of) it from being applied. */
  configProblems: Map<string, Problem[]>;
  /** Per NodeNetwork name: problems with the network itself. */
  networkProblems: Map<string, Problem[]>;
}

/** An extra interface as it exists (read back from the kernel and the pools). */
export interface AppliedInterface {
  ifname: string;
  network: string;
  /** Address with prefix length. */
  address: string;
  mac: string;
  mtu: number;
  /** The host-side veth's name. */
  hostIfname: string;
  config: ObjectRef;
}

export type InterfaceResult =
  | { ifname: string; ok: true; applied: AppliedInterface }
  | { ifname: string; ok: false; reason: Reason; message: string };

/** What GC or a restart's reconciliation removed, for logs and tests. */
export interface CleanupReport {
  links: string[];
  addresses: string[];
  bridges: string[];
}

/**
 * The kernel side (apply.ts). Synchronous like Rtnl (netlink from Node is synchronous
 * here: shared/PLATFORM.md); each call is idempotent, and a failure leaves the pod as it
 * was before the call for the interface that failed (never a half-made interface).
 */
export interface PodNetApplier {
  /**
   * Makes the sandbox's patu-made extra interfaces exactly `want`: missing ones created,
   * ones whose network/address/MTU/MAC differ recreated, routes and rules brought in step,
   * ones not in `want` removed with their addresses released. Never touches another link.
   */
  sync(sandbox: PodSandbox, want: DesiredInterface[]): InterfaceResult[];
  /** What the sandbox has now (empty when its netns is gone). */
  list(sandbox: PodSandbox): AppliedInterface[];
  /** Removes every extra interface of the container and releases its addresses (CNI DEL; netns may be gone). */
  release(containerId: string, netns?: string): CleanupReport;
  /** Makes sure a network in use has its bridge (and VLAN trunk) on this node. */
  ensureNetwork(net: ResolvedNetwork): void;
  /** Removes the bridges/trunks patu created for networks not in `inUse`, and pools with no records. */
  pruneNetworks(inUse: ReadonlySet<string>): CleanupReport;
  /** Releases links and addresses of containers not in `live` (after a crash, an agent restart). */
  gc(liveContainerIds: ReadonlySet<string>): CleanupReport;
}
