// The CNI layer's view of hostPort records (src/hostport/records.ts): ADD records
// runtimeConfig.portMappings for the attachment, DEL and GC remove them, CHECK
// compares them. The plugin never writes the service maps: the agent watches the
// record directory and programs them (DESIGN-16.md, ARCHITECTURE.md "hostPort").
import type { CniEnv } from './env.js';
import { portMappingsOf, type NetConf } from './netconf.js';
import { CniCode, CniError, invalidConfig } from './errors.js';
import { HostPortStore, recordName, type HostPortOwner } from '../hostport/records.js';
import { isIPv4 } from '../net/cidr.js';

export interface HostPortOptions {
  /** How long to wait for the records' lock (the agent: briefly, then the launcher runs the request). */
  lockTimeoutMs?: number;
}

const owner = (conf: NetConf, env: Pick<CniEnv, 'containerId' | 'ifname'>, podIp: string): HostPortOwner => ({
  network: conf.name,
  containerId: env.containerId,
  ifname: env.ifname,
  podIp,
});

const open = (dataDir: string, opts: HostPortOptions, create: boolean): HostPortStore =>
  HostPortStore.open(dataDir, { create, ...(opts.lockTimeoutMs !== undefined ? { lockTimeoutMs: opts.lockTimeoutMs } : {}) });

/**
 * ADD: records every mapping for this attachment, leading to its IPv4 address, or
 * none (a conflict throws HostPortConflictError, code 104). Returns an undo for the
 * ADD's rollback. Nothing to do without mappings.
 */
export function reserveHostPorts(conf: NetConf, env: CniEnv, dataDir: string, podIps: readonly string[], opts: HostPortOptions = {}): () => void {
  const mappings = portMappingsOf(conf);
  if (mappings.length === 0) return () => {};
  const podIp = podIps.find((ip) => isIPv4(ip));
  if (!podIp) throw invalidConfig('runtimeConfig.portMappings', 'hostPorts need an IPv4 pod address, and this network handed out none');
  const store = open(dataDir, opts, true);
  const who = owner(conf, env, podIp);
  const names = store.reserve(who, mappings);
  return () => {
    store.releaseNames(who, names);
  };
}

/** DEL: the attachment's records go, whatever runtimeConfig says now. */
export function releaseHostPorts(conf: NetConf, env: Pick<CniEnv, 'containerId' | 'ifname'>, dataDir: string, opts: HostPortOptions = {}): string[] {
  const store = open(dataDir, opts, false);
  if (!store.exists) return [];
  return store.releaseOwner({ network: conf.name, containerId: env.containerId, ifname: env.ifname });
}

/** GC: this network's records whose attachment the runtime no longer lists. */
export function gcHostPorts(conf: NetConf, dataDir: string, valid: readonly { containerId: string; ifname: string }[], opts: HostPortOptions = {}): string[] {
  const store = open(dataDir, opts, false);
  if (!store.exists) return [];
  return store.gc(conf.name, valid);
}

/** CHECK: every mapping asked for is recorded for this attachment, to one of `podIps`, on the asked container port. */
export function checkHostPorts(conf: NetConf, env: Pick<CniEnv, 'containerId' | 'ifname'>, dataDir: string, podIps: readonly string[]): void {
  const mappings = portMappingsOf(conf);
  if (mappings.length === 0) return;
  const records = new Map(open(dataDir, {}, false).list().map((r) => [r.name, r]));
  for (const m of mappings) {
    const name = recordName(m);
    const r = records.get(name);
    const fail = (what: string): CniError => new CniError(CniCode.CheckFailed, `CHECK failed: hostPort record ${name}: ${what}`, 'runtimeConfig.portMappings');
    if (!r) throw fail('missing');
    if (r.network !== conf.name || r.containerId !== env.containerId || r.ifname !== env.ifname) {
      throw fail(`held by container ${r.containerId} (${r.ifname}, network ${r.network}), not ${env.containerId}/${env.ifname}`);
    }
    if (r.containerPort !== m.containerPort) throw fail(`leads to container port ${r.containerPort}, not ${m.containerPort}`);
    if (!podIps.includes(r.podIp)) throw fail(`leads to ${r.podIp}, which is not this attachment's address (${podIps.join(', ') || 'none'})`);
  }
}
