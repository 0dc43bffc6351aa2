// What the agent writes back for pod network configuration (issue 12), computed purely
// from what it knows: a PodNetworkConfig's status (conditions + this node's `pods`
// entries merged with the other nodes'), a NodeNetwork's status (InUse, users), and the
// Multus-convention network-status annotation of a pod. Equality ignores
// lastTransitionTime, so the agent writes only when something really changed.
import {
  REASONS,
  type AppliedInterface,
  type Condition,
  type NodeNetworkStatus,
  type PodInterfaceStatus,
  type PodNetworkConfigStatus,
  type Problem,
  type Reason,
} from '../podnet/types.js';

/** A condition's content, without its transition time (compared, then stamped). */
type CondBody = Omit<Condition, 'lastTransitionTime'>;

/** Keeps the previous lastTransitionTime when a condition's status did not change. */
export function stampConditions(next: CondBody[], prev: readonly Condition[] | undefined, now: string): Condition[] {
  return next.map((c) => {
    const old = prev?.find((p) => p.type === c.type);
    return { ...c, lastTransitionTime: old && old.status === c.status && old.lastTransitionTime ? old.lastTransitionTime : now };
  });
}

const condKey = (c: Condition): string => JSON.stringify([c.type, c.status, c.reason, c.message, c.observedGeneration ?? null]);
const podKey = (p: PodInterfaceStatus): string => JSON.stringify([p.name, p.node, p.interface, p.network, p.address ?? null, p.ready, p.message]);

function sameList<T>(a: readonly T[] | undefined, b: readonly T[] | undefined, key: (x: T) => string): boolean {
  const x = (a ?? []).map(key).sort();
  const y = (b ?? []).map(key).sort();
  return x.length === y.length && x.every((v, i) => v === y[i]);
}

export function sameConfigStatus(a: PodNetworkConfigStatus | undefined, b: PodNetworkConfigStatus): boolean {
  return !!a && (a.observedGeneration ?? null) === (b.observedGeneration ?? null)
    && sameList(a.conditions, b.conditions, condKey) && sameList(a.pods, b.pods, podKey);
}

export function sameNetworkStatus(a: NodeNetworkStatus | undefined, b: NodeNetworkStatus): boolean {
  return !!a && (a.observedGeneration ?? null) === (b.observedGeneration ?? null)
    && sameList(a.conditions, b.conditions, condKey) && sameList(a.users, b.users, (u) => u);
}

/** Problems as one message: each names its field ("spec.interfaces[0].address: ..."). */
export const describeProblems = (ps: readonly Problem[]): string => ps.map((p) => `${p.field}: ${p.message}`).join('; ');

export interface ConfigStatusInput {
  generation: number;
  node: string;
  /** Validation and cross-object problems (nothing of the config is applied while it has any). */
  problems: readonly Problem[];
  /** This node's entries (pods of the config on this node, one per interface). */
  mine: PodInterfaceStatus[];
  /** The status as the apiserver has it (the other nodes' entries are kept). */
  current: PodNetworkConfigStatus | undefined;
  now: string;
}

/**
 * A config's status: the other nodes' `pods` entries as they are, this node's replaced;
 * Ready when it has no problem and every entry is ready; Degraded when it has problems or
 * an entry failed. The reason is the first problem's, else the first failing entry's.
 */
export function configStatus(i: ConfigStatusInput): PodNetworkConfigStatus {
  const others = (i.current?.pods ?? []).filter((p) => p.node !== i.node);
  const pods = [...others, ...i.mine].sort((a, b) => a.name.localeCompare(b.name) || a.interface.localeCompare(b.interface) || a.node.localeCompare(b.node));
  const g = i.generation;
  const conds: CondBody[] = [];
  if (i.problems.length) {
    const reason = i.problems[0]!.reason;
    const message = describeProblems(i.problems);
    conds.push({ type: 'Ready', status: 'False', reason, message, observedGeneration: g });
    conds.push({ type: 'Degraded', status: 'True', reason, message, observedGeneration: g });
  } else {
    const notReady = pods.filter((p) => !p.ready);
    const failed = notReady.filter((p) => !p.message.startsWith(PENDING_PREFIX));
    if (notReady.length === 0) {
      const message = pods.length ? `${pods.length} interface${pods.length > 1 ? 's' : ''} ready` : 'no matching pod';
      conds.push({ type: 'Ready', status: 'True', reason: REASONS.ready, message, observedGeneration: g });
    } else {
      const first = failed[0] ?? notReady[0]!;
      const reason: Reason = failed.length ? REASONS.applyFailed : REASONS.podPending;
      const message = `${notReady.length} of ${pods.length} interfaces not ready; ${first.name}/${first.interface}: ${first.message}`;
      conds.push({ type: 'Ready', status: 'False', reason, message, observedGeneration: g });
    }
    conds.push(failed.length
      ? { type: 'Degraded', status: 'True', reason: REASONS.applyFailed, message: `${failed[0]!.name}/${failed[0]!.interface}: ${failed[0]!.message}`, observedGeneration: g }
      : { type: 'Degraded', status: 'False', reason: REASONS.ready, message: '', observedGeneration: g });
  }
  return { conditions: stampConditions(conds, i.current?.conditions, i.now), pods, observedGeneration: g };
}

/** Message of an entry still waiting for the pod's sandbox (not a failure). */
export const PENDING_PREFIX = 'waiting';
export const PENDING_MESSAGE = `${PENDING_PREFIX} for the pod's CNI ADD on this node`;

export interface NetworkStatusInput {
  generation: number;
  deleting: boolean;
  problems: readonly Problem[];
  /** `namespace/config` and `namespace/pod` names using the network (sorted). */
  users: string[];
  /** The kernel refused to set the network up on this node (ensureNetwork). */
  failure?: string;
  current: NodeNetworkStatus | undefined;
  now: string;
}

export function networkStatus(i: NetworkStatusInput): NodeNetworkStatus {
  const g = i.generation;
  const names = i.users.slice(0, 20).join(', ') + (i.users.length > 20 ? `, and ${i.users.length - 20} more` : '');
  const conds: CondBody[] = [];
  if (i.users.length) {
    conds.push(i.deleting
      ? { type: 'InUse', status: 'True', reason: REASONS.networkInUse, message: `deletion waits until nothing uses it: ${names}`, observedGeneration: g }
      : { type: 'InUse', status: 'True', reason: REASONS.networkInUse, message: `used by ${names}`, observedGeneration: g });
  } else {
    conds.push({ type: 'InUse', status: 'False', reason: i.deleting ? REASONS.networkTerminating : REASONS.ready, message: '', observedGeneration: g });
  }
  if (i.problems.length || i.failure) {
    const reason = i.problems[0]?.reason ?? REASONS.applyFailed;
    const message = [describeProblems(i.problems), i.failure ?? ''].filter(Boolean).join('; ');
    conds.push({ type: 'Ready', status: 'False', reason, message, observedGeneration: g });
    conds.push({ type: 'Degraded', status: 'True', reason, message, observedGeneration: g });
  } else {
    conds.push({ type: 'Ready', status: 'True', reason: REASONS.ready, message: '', observedGeneration: g });
    conds.push({ type: 'Degraded', status: 'False', reason: REASONS.ready, message: '', observedGeneration: g });
  }
  return { conditions: stampConditions(conds, i.current?.conditions, i.now), users: i.users, observedGeneration: g };
}

/** One entry of k8s.v1.cni.cncf.io/network-status (Multus' NetworkStatus). */
export interface NetworkStatusEntry {
  name: string;
  interface: string;
  ips: string[];
  mac?: string;
  default?: boolean;
  dns: Record<string, never>;
}

/**
 * The pod's network-status annotation value: the primary network's eth0 first (as Multus
 * writes it, `default: true`, addresses from the CNI ADD or the pod's status; its MAC is
 * not known to the agent), then each extra interface (`name`: the NodeNetwork).
 */
export function networkStatusAnnotation(primary: { network: string; ifname: string; ips: readonly string[] } | undefined, extras: readonly AppliedInterface[]): string {
  const entries: NetworkStatusEntry[] = [];
  if (primary && primary.ips.length) entries.push({ name: primary.network, interface: primary.ifname, ips: [...primary.ips], default: true, dns: {} });
  for (const a of [...extras].sort((x, y) => x.ifname.localeCompare(y.ifname))) {
    entries.push({ name: a.network, interface: a.ifname, ips: [a.address.split('/')[0]!], mac: a.mac, dns: {} });
  }
  return JSON.stringify(entries, null, 2);
}
