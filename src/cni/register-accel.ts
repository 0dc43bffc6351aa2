// Keeps the node's socket-acceleration pod registry in step with CNI ADD/DEL.
//
// Acceleration is a node-wide feature switched on by `patu accel on` (or the agent);
// the plugin only registers pod addresses in its pinned map. When the node never set
// it up, there is no pin directory and nothing is loaded (no libbpf on this path).
// A registry failure never fails ADD/DEL: the pod's networking works without
// acceleration, so it is handed to `warn` instead (the plugin process writes it to
// stderr, the runtime's log; the agent logs it).
import { existsSync } from 'node:fs';
import { messageOf } from '../errors.js';
import type { NetConf } from './netconf.js';

type Registry = {
  register(ip: string, optOut: boolean): void;
  unregister(ip: string): void;
  list(): { ip: string }[];
  close(): void;
};

async function openRegistry(pinRoot: string): Promise<Registry | undefined> {
  const { openPodRegistry } = await import('../dataplane/accel-registry.js');
  return openPodRegistry(pinRoot);
}

/** Receives a line about something that went wrong but did not fail the command. */
export type Warn = (line: string) => void;

const describe = (what: string, err: unknown): string => `${what}: ${messageOf(err)}`;

export async function registerPodForAccel(conf: NetConf, ips: string[], opts: { optOut: boolean; warn: Warn }): Promise<void> {
  if (!existsSync(conf.pinRoot)) return;
  try {
    const reg = await openRegistry(conf.pinRoot);
    try {
      for (const ip of ips) reg?.register(ip, opts.optOut);
    } finally {
      reg?.close(); // the agent serves thousands of these: no map fd may stay behind
    }
  } catch (err) {
    opts.warn(describe(`registering ${ips.join(', ')} for socket acceleration`, err));
  }
}

export async function unregisterPodFromAccel(conf: NetConf, ips: string[], warn: Warn): Promise<void> {
  if (ips.length === 0 || !existsSync(conf.pinRoot)) return;
  try {
    const reg = await openRegistry(conf.pinRoot);
    try {
      for (const ip of ips) reg?.unregister(ip);
    } finally {
      reg?.close();
    }
  } catch (err) {
    warn(describe(`unregistering ${ips.join(', ')} from socket acceleration`, err));
  }
}

/**
 * GC: removes registry entries of this network (`ours`) whose address no IPAM record
 * holds, e.g. after a DEL killed between releasing the address and unregistering it.
 * The registry is read before the records (`held`): an ADD reserves its address before
 * it registers it, so an entry seen here whose record is not seen afterwards is stale.
 * Returns the addresses removed.
 */
export async function sweepAccelRegistry(conf: NetConf, ours: (ip: string) => boolean, held: () => Set<string>, warn: Warn): Promise<string[]> {
  if (!existsSync(conf.pinRoot)) return [];
  try {
    const reg = await openRegistry(conf.pinRoot);
    if (!reg) return [];
    try {
      const candidates = reg.list().map((e) => e.ip).filter(ours);
      if (candidates.length === 0) return [];
      const keep = held();
      const stale = candidates.filter((ip) => !keep.has(ip));
      for (const ip of stale) reg.unregister(ip);
      return stale;
    } finally {
      reg.close();
    }
  } catch (err) {
    warn(describe('removing stale socket-acceleration registry entries', err));
    return [];
  }
}
