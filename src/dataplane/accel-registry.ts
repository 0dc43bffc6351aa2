// The pod registry as the CNI plugin sees it: open the pinned map, add or
// remove one address, close. Loads no BPF program; when acceleration was never
// set up on this node (no pinned registry) it returns undefined and ADD/DEL go on.
import { existsSync } from 'node:fs';
import { TypedMap, ipv4 } from '../kernel/bpf/map.js';
import { accelPins, podInfoCodec, POD_F_ACCEL_OPTOUT, type PodInfo } from './accel-maps.js';

export interface PodRegistry {
  register(ip: string, optOut: boolean, extra?: { ifindex?: number; netnsCookie?: bigint }): void;
  /** False when the address was not registered. */
  unregister(ip: string): boolean;
  lookup(ip: string): { optOut: boolean; ifindex: number; netnsCookie: bigint } | undefined;
  list(): { ip: string; optOut: boolean }[];
  close(): void;
}

export function openPodRegistry(pinRoot: string): PodRegistry | undefined {
  const path = accelPins(pinRoot).pods;
  if (!existsSync(path)) return undefined;
  const map = TypedMap.fromPin(path, ipv4, podInfoCodec);
  return {
    register(ip, optOut, extra = {}) {
      const v: PodInfo = {
        flags: optOut ? POD_F_ACCEL_OPTOUT : 0,
        ifindex: extra.ifindex ?? 0,
        netnsCookie: extra.netnsCookie ?? 0n,
      };
      map.update(ip, v);
    },
    unregister: (ip) => map.delete(ip),
    lookup(ip) {
      const v = map.lookup(ip);
      return v && { optOut: (v.flags & POD_F_ACCEL_OPTOUT) !== 0, ifindex: v.ifindex, netnsCookie: v.netnsCookie };
    },
    list: () => [...map.entries()].map(([ip, v]) => ({ ip, optOut: (v.flags & POD_F_ACCEL_OPTOUT) !== 0 })),
    close: () => map.close(),
  };
}
