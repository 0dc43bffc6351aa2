// hostPort records as service map entries (pure): a mapping {hostIP, hostPort,
// proto} -> {podIp, containerPort} is a one-backend "service" whose VIP is the
// hostIP, or the wildcard 0.0.0.0 (every node address, 127.0.0.1 included: the
// DESIGN-16.md contract, the same kind of entry as a NodePort). Their refs live in
// a namespace no Kubernetes object or services file can have (':' is not in a DNS
// label), so the agent's hostPort partition of ServiceLb owns exactly these.
import { portKey, type DesiredServicePort } from '../services/model.js';
import { overlaps, type HostPortRecord } from './records.js';

export const HOSTPORT_REF_PREFIX = 'patu:hostport/';
export const isHostPortRef = (ref: string): boolean => ref.startsWith(HOSTPORT_REF_PREFIX);
export const WILDCARD_VIP = '0.0.0.0';

/** Two records that claim the same node port (only files written around the plugin's lock can). */
export interface RecordOverlap {
  record: HostPortRecord;
  /** The record kept (first by name). */
  keptName: string;
}

export function hostPortEntry(r: HostPortRecord): DesiredServicePort {
  const vip = r.hostIP === '' ? WILDCARD_VIP : r.hostIP;
  const protocol = r.protocol === 'udp' ? 'UDP' : 'TCP';
  const ref = `${HOSTPORT_REF_PREFIX}${r.name}`;
  return {
    key: portKey(vip, r.hostPort, protocol),
    ref,
    vip,
    port: r.hostPort,
    protocol,
    // The meta name (63 bytes at most): the ref survives an agent restart through it.
    name: `${ref}:${r.hostPort}`,
    affinity: false,
    affinityTimeoutSeconds: 0,
    backends: [`${r.podIp}:${r.containerPort}`],
  };
}

/**
 * The entries for `records`, keyed like ServiceModel.desired(). Of records that
 * overlap (an 'any' and a specific address on one port and protocol) the first by
 * name is kept and the others reported.
 */
export function hostPortDesired(records: readonly HostPortRecord[]): { desired: Map<string, DesiredServicePort>; overlaps: RecordOverlap[] } {
  const desired = new Map<string, DesiredServicePort>();
  const kept: HostPortRecord[] = [];
  const found: RecordOverlap[] = [];
  for (const r of [...records].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
    const clash = kept.find((k) => overlaps(k, r));
    if (clash) {
      found.push({ record: r, keptName: clash.name });
      continue;
    }
    kept.push(r);
    const e = hostPortEntry(r);
    desired.set(e.key, e);
  }
  return { desired, overlaps: found };
}
