// Keeps the node's socket-acceleration pod registry in step with CNI ADD/DEL.
//
// Acceleration is a node-wide feature switched on by `patu accel on` (or the agent);
// the plugin only registers pod addresses in its pinned map. When the node never set
// it up, there is no pin directory and nothing is loaded (no libbpf on this path).
// A registry failure never fails ADD/DEL: the pod's networking works without
// acceleration, so it is reported on stderr (the runtime's log) instead.
import { existsSync } from 'node:fs';
import { messageOf } from '../errors.js';
import type { NetConf } from './netconf.js';

type Registry = { register(ip: string, optOut: boolean): void; unregister(ip: string): void };

async function openRegistry(pinRoot: string): Promise<Registry | undefined> {
  const { openPodRegistry } = await import('../dataplane/accel-registry.js');
  return openPodRegistry(pinRoot);
}

function warn(what: string, err: unknown): void {
  process.stderr.write(`patu: warning: ${what}: ${messageOf(err)}\n`);
}

export async function registerPodForAccel(conf: NetConf, ips: string[], opts: { optOut: boolean }): Promise<void> {
  if (!existsSync(conf.pinRoot)) return;
  try {
    const reg = await openRegistry(conf.pinRoot);
    for (const ip of ips) reg?.register(ip, opts.optOut);
  } catch (err) {
    warn(`registering ${ips.join(', ')} for socket acceleration`, err);
  }
}

export async function unregisterPodFromAccel(conf: NetConf, ips: string[]): Promise<void> {
  if (ips.length === 0 || !existsSync(conf.pinRoot)) return;
  try {
    const reg = await openRegistry(conf.pinRoot);
    for (const ip of ips) reg?.unregister(ip);
  } catch (err) {
    warn(`unregistering ${ips.join(', ')} from socket acceleration`, err);
  }
}
