// The CNI layer's view of IPAM: one network's allocator and store, opened from the
// netconf. Keeps the commands free of IPAM plumbing.
import type { NetConf } from './netconf.js';
import type { CniEnv } from './env.js';
import {
  allocate,
  allocatableCount,
  addressesOf,
  gc,
  parseIpamConfig,
  parseIp,
  release,
  IpamStore,
  type Allocation,
  type IpamConfig,
  type Owner,
  type RecordMeta,
} from '../ipam/index.js';

const oneLine = (v: string | undefined): v is string => v !== undefined && v !== '' && !/[\r\n\0]/.test(v);

/**
 * What an ADD's records say beyond the owner: CNI_NETNS and the pod from CNI_ARGS
 * (K8S_POD_NAMESPACE, K8S_POD_NAME, K8S_POD_UID; some runtimes leave out the UID: then
 * blank). A runtime that names no pod (podman) gets the netns only; a value that would
 * break the record's line format is left out rather than failing the ADD.
 */
export function recordMetaOf(env: Pick<CniEnv, 'netns' | 'args'>): RecordMeta {
  const meta: RecordMeta = {};
  if (oneLine(env.netns)) meta.netns = env.netns;
  const { K8S_POD_NAMESPACE: namespace, K8S_POD_NAME: name, K8S_POD_UID: uid } = env.args;
  if (oneLine(namespace) && !namespace.includes('/') && oneLine(name) && (uid === undefined || !/[\r\n\0]/.test(uid))) {
    meta.pod = { namespace, name, uid: uid ?? '' };
  }
  return meta;
}

export interface NetworkIpam {
  config: IpamConfig;
  /** `meta` (recordMetaOf) goes into the records: which netns and pod the addresses belong to. */
  allocate(containerId: string, ifname: string, requestedIps: string[], meta?: RecordMeta): Allocation[];
  /** Releases and returns the bare addresses the owner held. */
  release(containerId: string, ifname: string): string[];
  addressesOf(containerId: string, ifname: string): string[];
  gc(valid: Owner[]): string[];
  /** Free addresses left, summed over range sets (STATUS). */
  freeCount(): number;
  /** Whether `ip` lies in one of this network's ranges (could be handed out here). */
  inRanges(ip: string): boolean;
  /** Every range's subnet, e.g. ['10.200.0.0/24'] (masquerade sources). */
  subnets(): string[];
  routes(): { dst: string; gw?: string }[];
  /** Every reservation in this network: `patu status`. */
  reservations(): { ip: string; containerId: string; ifname: string }[];
}

export interface IpamOpenOptions {
  /** Overrides ipam.lockTimeoutMs: the agent waits only briefly (see src/agent/cni-server.ts). */
  lockTimeoutMs?: number;
}

export function ipamFor(conf: NetConf, opts: IpamOpenOptions = {}): NetworkIpam {
  const { lockTimeoutMs: confTimeout, ...raw } = conf.ipam;
  const config = parseIpamConfig(raw, 'ipam');
  const lockTimeoutMs = opts.lockTimeoutMs ?? confTimeout;
  const store = IpamStore.open(config.dataDir, conf.name, lockTimeoutMs !== undefined ? { lockTimeoutMs } : {});
  return {
    config,
    allocate: (containerId, ifname, ips, meta) => allocate(config, store, containerId, ifname, meta ? { ips, meta } : { ips }),
    release: (containerId, ifname) => release(config, store, containerId, ifname),
    addressesOf: (containerId, ifname) => addressesOf(store, containerId, ifname),
    gc: (valid) => gc(config, store, valid),
    freeCount() {
      const held = store.list().map((r) => parseIp(r.ip));
      let free = 0n;
      config.rangeSets.forEach((set, i) => {
        const inSet = held.filter((ip) =>
          set.ranges.some((r) => r.family === ip.family && ip.value >= r.rangeStart && ip.value <= r.rangeEnd),
        ).length;
        const left = allocatableCount(config, i) - BigInt(inSet);
        if (left > 0n) free += left;
      });
      return Number(free > 1_000_000n ? 1_000_000n : free);
    },
    inRanges(text) {
      let ip;
      try {
        ip = parseIp(text);
      } catch {
        return false;
      }
      return config.rangeSets.some((set) => set.ranges.some((r) => r.family === ip.family && ip.value >= r.rangeStart && ip.value <= r.rangeEnd));
    },
    subnets: () => config.rangeSets.flatMap((s) => s.ranges.map((r) => r.subnetText)),
    routes: () => config.routes,
    reservations: () => store.list().map((r) => ({ ip: r.ip, containerId: r.containerId, ifname: r.ifname })),
  };
}
