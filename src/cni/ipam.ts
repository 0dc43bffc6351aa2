// The CNI layer's view of IPAM: one network's allocator and store, opened from the
// netconf. Keeps the commands free of IPAM plumbing.
import type { NetConf } from './netconf.js';
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
} from '../ipam/index.js';

export interface NetworkIpam {
  config: IpamConfig;
  allocate(containerId: string, ifname: string, requestedIps: string[]): Allocation[];
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
    allocate: (containerId, ifname, ips) => allocate(config, store, containerId, ifname, { ips }),
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
