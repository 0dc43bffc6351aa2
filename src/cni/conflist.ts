// The CNI network configuration for the container runtime, as `patu install` and
// the agent (with --kubernetes) write it: /etc/cni/net.d/10-patu.conflist with this
// node's pod subnet. Written
// atomically (temp file + rename in the same directory), so a runtime reading
// it at any moment sees the old or the new file, never half of one; and only
// when the content changes, so a restart does not make runtimes reload.
import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync, fsyncSync, openSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { DEFAULTS } from '../defaults.js';
import { errnoOf, messageOf } from '../errors.js';

export interface ConflistOptions {
  podCIDR: string;
  clusterCIDR: string;
  /** Network name (default "patu"). */
  name?: string;
  bridge?: string;
  mtu?: number;
  dataDir?: string;
  pinRoot?: string;
  /** Masquerade traffic leaving the cluster CIDR (default true). */
  masquerade?: boolean;
  cniVersion?: string;
}

export function buildConflist(o: ConflistOptions): string {
  const plugin: Record<string, unknown> = {
    type: 'patu',
    ...(o.bridge ? { bridge: o.bridge } : {}),
    ...(o.mtu ? { mtu: o.mtu } : {}),
    hairpin: true,
    masquerade: o.masquerade ?? true,
    clusterCIDR: o.clusterCIDR,
    podCIDR: o.podCIDR,
    accel: true,
    // The runtime then passes runtimeConfig.portMappings (pod hostPorts): patu records
    // them and the agent serves them (src/hostport), no portmap plugin in the chain.
    capabilities: { portMappings: true },
    ...(o.pinRoot ? { pinRoot: o.pinRoot } : {}),
    // podCIDR, not ipam.ranges: the plugin refuses both at once.
    ...(o.dataDir ? { ipam: { dataDir: o.dataDir } } : {}),
  };
  const doc = { cniVersion: o.cniVersion ?? '1.0.0', name: o.name ?? 'patu', plugins: [plugin] };
  return JSON.stringify(doc, null, 2) + '\n';
}

/**
 * Writes `content` to dir/name unless the file already holds exactly that.
 * Returns whether it wrote. Errors name the path and the failing call.
 */
export function writeConflistIfChanged(dir: string, content: string, name: string = DEFAULTS.conflistName): boolean {
  const path = join(dir, name);
  try {
    if (readFileSync(path, 'utf8') === content) return false;
  } catch (e) {
    if (errnoOf(e) !== 'ENOENT') throw new Error(`conflist: read ${path}: ${errnoOf(e) ?? messageOf(e)}`, { cause: e });
  }
  try {
    mkdirSync(dir, { recursive: true });
  } catch (e) {
    throw new Error(`conflist: mkdir ${dir}: ${errnoOf(e) ?? messageOf(e)}`, { cause: e });
  }
  // A dot name: runtimes load only *.conf/*.conflist/*.json, so they never pick up the temp file.
  const tmp = join(dir, `.${name}.${process.pid}.tmp`);
  try {
    writeFileSync(tmp, content, { mode: 0o644 });
    const fd = openSync(tmp, 'r');
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, path);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw new Error(`conflist: write ${path} (via ${tmp}): ${errnoOf(e) ?? messageOf(e)}`, { cause: e });
  }
  return true;
}
