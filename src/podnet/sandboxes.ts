// Which pod sandboxes this node has, from the primary network's IPAM records: the CNI
// ADD writes the netns and the pod (K8S_POD_* of CNI_ARGS) into each record
// (src/ipam/store.ts). This is how the agent finds a running pod's netns without CRI.
// A pod started before patu wrote these lines has two-line records and is not listed:
// it is found again on its next ADD (a sandbox restart), not through CRI.
import { IpamStore } from '../ipam/store.js';
import type { PodSandbox } from './types.js';

/**
 * The sandboxes whose records name a pod and a netns, one per container id (a
 * dual-stack attachment has a record per family). Reads without the lock: records
 * appear atomically (link(2)). Two sandboxes of one pod (a restart whose old DEL has
 * not run yet) are both listed; the caller tells them apart by containerId.
 */
export function listSandboxes(dataDir: string, network: string): PodSandbox[] {
  const store = IpamStore.open(dataDir, network);
  const out = new Map<string, PodSandbox>();
  for (const r of store.list()) {
    if (!r.pod || !r.netns || out.has(r.containerId)) continue;
    out.set(r.containerId, { pod: { ...r.pod }, containerId: r.containerId, netns: r.netns });
  }
  return [...out.values()];
}
