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

type Registry = { register(ip: string, optOut: boolean): void; unregister(ip: string): void };

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
    for (const ip of ips) reg?.register(ip, opts.optOut);
  } catch (err) {
    opts.warn(describe(`registering ${ips.join(', ')} for socket acceleration`, err));
  }
}

export async function unregisterPodFromAccel(conf: NetConf, ips: string[], warn: Warn): Promise<void> {
  if (ips.length === 0 || !existsSync(conf.pinRoot)) return;
  try {
    const reg = await openRegistry(conf.pinRoot);
    for (const ip of ips) reg?.unregister(ip);
  } catch (err) {
    warn(describe(`unregistering ${ips.join(', ')} from socket acceleration`, err));
  }
}
