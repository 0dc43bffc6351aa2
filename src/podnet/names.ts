// The names and marks of what apply.ts makes, pure so that desired.ts, the CNI DEL/GC
// and the tests derive the same ones. Host-side names are deterministic from
// (container id, pod ifname), so DEL finds them without saved state; every link also
// carries an IFLA_IFALIAS (types.ts PODNET_ALIAS_PREFIX), and only a link whose alias says
// it is patu's is ever changed or deleted.
import { sha256Hex } from '../sha256.js';
import { PODNET_ALIAS_PREFIX, type ObjectRef } from './types.js';

/** Pools live in `<ipam dataDir>/<PODNET_POOL_DIR>/<network>/` (a CNI network of this name would collide). */
export const PODNET_POOL_DIR = 'patu-podnet';
/**
 * rtm_protocol / FRA_PROTOCOL of the routes and rules patu adds in a pod (`ip route`
 * shows `proto 154`): a rule or route without it is never deleted.
 */
export const PODNET_RTPROT = 154;

/** 'pn' + 13 hex digits of sha256: 15 bytes, the kernel's limit; distinct from the primary network's 'patu...'. */
export function podnetVethName(containerId: string, ifname: string): string {
  return `pn${sha256Hex(`podnet/${containerId}/${ifname}`).slice(0, 13)}`;
}
export const isPodnetVethName = (name: string): boolean => /^pn[0-9a-f]{13}$/.test(name);

export const hostAlias = (containerId: string, ifname: string, network: string): string =>
  `${PODNET_ALIAS_PREFIX} ${containerId} ${ifname} ${network}`;
export const podAlias = (network: string, config: ObjectRef): string =>
  `${PODNET_ALIAS_PREFIX} ${network} ${config.namespace}/${config.name}`;
export const bridgeAlias = (network: string): string => `${PODNET_ALIAS_PREFIX}-bridge ${network}`;

export type PodnetAlias =
  | { kind: 'host'; containerId: string; ifname: string; network: string }
  | { kind: 'pod'; network: string; config: ObjectRef }
  | { kind: 'bridge'; network: string }
  | { kind: 'trunk'; network: string };

/** What a link's alias says about it, or undefined when it is not one of patu's podnet marks. */
export function parseAlias(alias: string | undefined): PodnetAlias | undefined {
  if (!alias) return undefined;
  const parts = alias.split(' ');
  switch (parts[0]) {
    case PODNET_ALIAS_PREFIX: {
      if (parts.length === 4 && parts[1] && parts[2] && parts[3]) return { kind: 'host', containerId: parts[1], ifname: parts[2], network: parts[3] };
      const slash = parts[2]?.indexOf('/') ?? -1;
      if (parts.length === 3 && parts[1] && slash > 0 && slash < parts[2]!.length - 1) {
        return { kind: 'pod', network: parts[1], config: { namespace: parts[2]!.slice(0, slash), name: parts[2]!.slice(slash + 1) } };
      }
      return undefined;
    }
    case `${PODNET_ALIAS_PREFIX}-bridge`:
      return parts.length === 2 && parts[1] ? { kind: 'bridge', network: parts[1] } : undefined;
    case `${PODNET_ALIAS_PREFIX}-trunk`:
      return parts.length === 2 && parts[1] ? { kind: 'trunk', network: parts[1] } : undefined;
    default:
      return undefined;
  }
}

/**
 * A pod interface's MAC when the spec gives none: fixed by its address (02:50 + the
 * IPv4 address), so a recreated interface keeps it and neighbours' ARP caches stay
 * right. Addresses are unique in the network's pool, so MACs are too.
 */
export function derivedMac(ipv4: string): string {
  const octets = ipv4.split('.').map(Number);
  if (octets.length !== 4 || octets.some((o) => !Number.isInteger(o) || o < 0 || o > 255)) throw new Error(`derivedMac: '${ipv4}' is not an IPv4 address`);
  return ['02', '50', ...octets.map((o) => o.toString(16).padStart(2, '0'))].join(':');
}
