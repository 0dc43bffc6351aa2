// `patu install` / `patu uninstall` for hosts run by systemd, and the
// Kubernetes init container (`patu install --cni-only`).
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { install, uninstall, type InstallMode, type InstallOptions } from '../install/install.js';
import { FLAVOUR_DEFAULTS, UNIT_NAME, type PathOptions } from '../install/paths.js';
import { findCgroup2Root } from '../kernel/cgroup.js';
import { messageOf } from '../errors.js';

/** The path flags (see PathOptions), install's own options, and what only the command line has. */
export interface InstallCliOptions extends PathOptions, Pick<InstallOptions, 'cniOnly' | 'bundleNode' | 'conflist' | 'force'> {
  /** --cluster-cidr and --pod-cidr (commander's names for them): install's clusterCIDR and podCIDR. */
  clusterCidr?: string;
  podCidr?: string;
  /** --symlink: mode 'symlink' instead of a copy. */
  symlink?: boolean;
  json?: boolean;
}

/** systemd is managing this host (and we are installing into it, not a staging root). */
function liveSystemd(root: string | undefined): boolean {
  return (root === undefined || root === '/') && existsSync('/run/systemd/system');
}

function systemctl(args: string[]): void {
  try {
    execFileSync('systemctl', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (e) {
    const err = e as { stderr?: Buffer; message: string };
    process.stderr.write(`patu: systemctl ${args.join(' ')}: ${err.stderr?.toString().trim() || err.message}\n`);
  }
}

export async function installCommand(o: InstallCliOptions): Promise<number> {
  const lines: string[] = [];
  const res = install({
    ...(o.flavour ? { flavour: o.flavour } : {}),
    ...(o.cniBinDir ? { cniBinDir: o.cniBinDir } : {}),
    ...(o.cniConfDir ? { cniConfDir: o.cniConfDir } : {}),
    ...(o.prefix ? { prefix: o.prefix } : {}),
    ...(o.root ? { root: o.root } : {}),
    ...(o.stateDir ? { stateDir: o.stateDir } : {}),
    ...(o.clusterCidr ? { clusterCIDR: o.clusterCidr } : {}),
    ...(o.podCidr ? { podCIDR: o.podCidr } : {}),
    mode: (o.symlink ? 'symlink' : 'copy') as InstallMode,
    cniOnly: Boolean(o.cniOnly),
    bundleNode: Boolean(o.bundleNode),
    conflist: o.conflist !== false,
    force: Boolean(o.force),
    log: (l) => lines.push(l),
  });
  if (!o.cniOnly && liveSystemd(o.root)) systemctl(['daemon-reload']);
  if (o.json) {
    process.stdout.write(JSON.stringify({ manifest: res.manifest, written: res.written }, null, 2) + '\n');
    return 0;
  }
  const p = res.paths;
  process.stdout.write(`patu installed (${p.flavour}: ${FLAVOUR_DEFAULTS[p.flavour].note})${p.root !== '/' ? ` under ${p.root}` : ''}\n`);
  for (const l of lines) process.stdout.write(`  ${l}\n`);
  if (!o.cniOnly) {
    // The unit's agent attaches where it finds cgroup2 when it starts; say now where that
    // is on this host, or what is missing, rather than at the first `systemctl start`.
    if (p.root === '/') {
      try {
        process.stdout.write(`\nThe agent's cgroup eBPF programs will attach to the cgroup2 root: ${findCgroup2Root()}\n`);
      } catch (e) {
        process.stdout.write(`\nwarning: the agent's --accel and services need cgroup2, and this host has none usable: ${messageOf(e)}\n`);
      }
    }
    process.stdout.write(`\nStart the agent (not started by install):  systemctl enable --now ${UNIT_NAME}\n`);
  }
  process.stdout.write('Remove everything listed above with:  patu uninstall' + (p.root !== '/' ? ` --root ${p.root}` : '') + '\n');
  return 0;
}

export interface UninstallCliOptions {
  root?: string;
  stateDir?: string;
  pinRoot?: string;
  pins?: boolean;
  json?: boolean;
}

export async function uninstallCommand(o: UninstallCliOptions): Promise<number> {
  if (liveSystemd(o.root) && existsSync(`/etc/systemd/system/${UNIT_NAME}`)) {
    // The agent holds the programs while it runs; stop it before its files and pins go.
    systemctl(['disable', '--now', UNIT_NAME]);
  }
  const lines: string[] = [];
  const report = await uninstall({
    ...(o.root ? { root: o.root } : {}),
    ...(o.stateDir ? { stateDir: o.stateDir } : {}),
    ...(o.pins === false ? { pinRoot: null } : o.pinRoot ? { pinRoot: o.pinRoot } : {}),
    log: (l) => lines.push(l),
  });
  if (liveSystemd(o.root)) systemctl(['daemon-reload']);
  if (o.json) {
    process.stdout.write(JSON.stringify(report, null, 2) + '\n');
    return 0;
  }
  for (const l of lines) process.stdout.write(`${l}\n`);
  if (!report.found) process.stdout.write(`nothing recorded at ${report.manifest}\n`);
  const kept = report.kept.filter((k) => k.reason !== 'already gone');
  if (kept.length) {
    process.stdout.write('left in place:\n');
    for (const k of kept) process.stdout.write(`  ${k.path}: ${k.reason}\n`);
  }
  return 0;
}
