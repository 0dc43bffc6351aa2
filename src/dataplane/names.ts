// Deterministic host-side names, so DEL and GC can find a pod's veth from its
// (container id, ifname) alone, without any saved state.
import { sha256Hex } from '../sha256.js';

export const HOST_VETH_PREFIX = 'patu';

/** 'patu' + 11 hex digits of sha256(containerId/ifname): 15 characters, the kernel's limit. */
export function hostVethName(containerId: string, ifname: string): string {
  const digest = sha256Hex(`${containerId}/${ifname}`);
  return HOST_VETH_PREFIX + digest.slice(0, 11);
}

export const isPatuVethName = (name: string): boolean => /^patu[0-9a-f]{11}$/.test(name);
