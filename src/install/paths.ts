// Where `patu install` puts things on each kind of host. Pure: no file system
// access, so the choice of paths can be unit tested on any machine.
//
// Every default below was checked against the project that owns the path
// (see docs in README "Install on k3s / MicroShift / kubeadm / podman"):
//   k3s         containerd's generated config.toml: bin_dir "/var/lib/rancher/k3s/data/cni"
//               (a stable directory k3s keeps since v1.28.15/v1.29.10; older releases used
//               data/current/bin), conf_dir "/var/lib/rancher/k3s/agent/etc/cni/net.d"
//   kubeadm     containerd's default CRI config (`containerd config default`):
//               bin_dir "/opt/cni/bin", conf_dir "/etc/cni/net.d"
//   microshift  CRI-O reads conflists from /etc/cni/net.d; MicroShift's own drop-ins set
//               plugin_dirs (/run/cni/bin for OVN-K, /usr/libexec/cni for kindnet) and
//               cni_default_network, so patu adds its own drop-in naming both (see crioDropIn)
//   podman      Debian's containernetworking-plugins installs to /usr/lib/cni, which is in
//               containers.conf's default cni_plugin_dirs; networks are /etc/cni/net.d conflists
import { PatuError } from '../errors.js';
import { isAbsolute, join, normalize, relative, dirname } from 'node:path';
import { DEFAULTS } from '../defaults.js';

export const FLAVOURS = ['kubeadm', 'k3s', 'microshift', 'podman'] as const;
export type Flavour = (typeof FLAVOURS)[number];

export interface FlavourDefaults {
  cniBinDir: string;
  cniConfDir: string;
  /** CRI-O drop-in that makes the runtime pick patu's network and find its binary (MicroShift only). */
  crioDropInDir?: string;
  /** One line for `patu install --help` and the summary. */
  note: string;
}

export const FLAVOUR_DEFAULTS: Readonly<Record<Flavour, FlavourDefaults>> = {
  kubeadm: { cniBinDir: DEFAULTS.cniBinDir, cniConfDir: DEFAULTS.cniConfDir, note: 'containerd or CRI-O with their default CNI paths' },
  k3s: {
    cniBinDir: '/var/lib/rancher/k3s/data/cni',
    cniConfDir: '/var/lib/rancher/k3s/agent/etc/cni/net.d',
    note: 'k3s started with --flannel-backend=none --disable-network-policy --disable-kube-proxy',
  },
  microshift: {
    cniBinDir: '/usr/libexec/cni',
    cniConfDir: DEFAULTS.cniConfDir,
    crioDropInDir: '/etc/crio/crio.conf.d',
    note: 'MicroShift without the microshift-networking (OVN-K) package; CRI-O is told to use the "patu" network',
  },
  podman: { cniBinDir: '/usr/lib/cni', cniConfDir: DEFAULTS.cniConfDir, note: 'podman with network_backend="cni" (Debian packages)' },
};

export const MANIFEST_NAME = 'install.json';
export const UNIT_NAME = 'patu-agent.service';
export const SYSTEMD_DIR = '/etc/systemd/system';
export const CNI_BIN_NAME = 'patu';
export const CRIO_DROPIN_NAME = '50-patu.conf';

export interface PathOptions {
  flavour?: string;
  cniBinDir?: string;
  cniConfDir?: string;
  prefix?: string;
  /** Staging root: every host path is placed below it (tests, image builds). Default "/". */
  root?: string;
  stateDir?: string;
}

/** Host paths (as the running system will see them) and where to write them now (under root). */
export interface InstallPaths {
  flavour: Flavour;
  root: string;
  prefix: string;
  cniBinDir: string;
  cniConfDir: string;
  stateDir: string;
  manifest: string;
  unit: string;
  cniBinary: string;
  conflist: string;
  crioDropIn?: string;
  /** Host path -> path to write now (root joined). */
  staged(hostPath: string): string;
}

export class InstallPathError extends PatuError {
  readonly code = 'INSTALL_PATH';
  constructor(readonly field: string, message: string) {
    super(`install: ${field}: ${message}`);
  }
}

function hostDir(field: string, p: string): string {
  if (!p) throw new InstallPathError(field, 'must not be empty');
  if (!isAbsolute(p)) throw new InstallPathError(field, `${p} must be an absolute path`);
  const n = normalize(p);
  const clean = n.length > 1 && n.endsWith('/') ? n.slice(0, -1) : n;
  if (clean === '/') throw new InstallPathError(field, 'must not be / itself');
  return clean;
}

export function isFlavour(s: string): s is Flavour {
  return (FLAVOURS as readonly string[]).includes(s);
}

/**
 * Resolves every path install and uninstall use. Explicit --cni-bin-dir /
 * --cni-conf-dir win over the flavour's defaults; the flavour defaults to kubeadm.
 */
export function resolvePaths(o: PathOptions = {}): InstallPaths {
  const flavourName = o.flavour ?? 'kubeadm';
  if (!isFlavour(flavourName)) {
    throw new InstallPathError('--flavour', `unknown flavour "${flavourName}" (known: ${FLAVOURS.join(', ')})`);
  }
  const d = FLAVOUR_DEFAULTS[flavourName];
  const root = o.root === undefined || o.root === '' ? '/' : o.root;
  if (!isAbsolute(root)) throw new InstallPathError('--root', `${root} must be an absolute path`);
  const rootAbs = normalize(root);
  const prefix = hostDir('--prefix', o.prefix ?? DEFAULTS.prefix);
  const cniBinDir = hostDir('--cni-bin-dir', o.cniBinDir ?? d.cniBinDir);
  const cniConfDir = hostDir('--cni-conf-dir', o.cniConfDir ?? d.cniConfDir);
  const stateDir = hostDir('--state-dir', o.stateDir ?? DEFAULTS.stateDir);
  // The prefix is removed as a whole on uninstall: it must not contain (or be) a
  // directory patu shares with others.
  for (const [field, dir] of [['--cni-bin-dir', cniBinDir], ['--cni-conf-dir', cniConfDir], ['--state-dir', stateDir], ['systemd unit dir', SYSTEMD_DIR]] as const) {
    if (within(dir, prefix)) throw new InstallPathError('--prefix', `${prefix} contains ${field} ${dir}; uninstall removes the prefix as a whole`);
  }
  const staged = (hostPath: string): string => (rootAbs === '/' ? hostPath : join(rootAbs, hostPath));
  const out: InstallPaths = {
    flavour: flavourName,
    root: rootAbs,
    prefix,
    cniBinDir,
    cniConfDir,
    stateDir,
    manifest: join(stateDir, MANIFEST_NAME),
    unit: join(SYSTEMD_DIR, UNIT_NAME),
    cniBinary: join(cniBinDir, CNI_BIN_NAME),
    conflist: join(cniConfDir, DEFAULTS.conflistName),
    staged,
  };
  if (d.crioDropInDir) out.crioDropIn = join(d.crioDropInDir, CRIO_DROPIN_NAME);
  return out;
}

/** Whether `inner` is `outer` or below it. */
export function within(inner: string, outer: string): boolean {
  const r = relative(outer, inner);
  return r === '' || (!r.startsWith('..') && !isAbsolute(r));
}

/**
 * The CNI binary is a symlink to <prefix>/bin/patu, never a copy: the launcher
 * finds its dist/ through its own real path. On a live host the target is
 * absolute, so the link works wherever the runtime's bin dir is mounted (the
 * DaemonSet's init container sees it at another path on k3s); in a staging
 * root it is relative, so it resolves inside the root.
 */
export function cniLinkTarget(p: InstallPaths): string {
  const target = join(p.prefix, 'bin', 'patu');
  return p.root === '/' ? target : relative(dirname(p.cniBinary), target);
}

/** CRI-O drop-in for MicroShift: later files in crio.conf.d win, so this one overrides MicroShift's network choice. */
export function crioDropIn(p: InstallPaths, networkName = 'patu'): string {
  return (
    '# Written by `patu install --flavour microshift`; removed by `patu uninstall`.\n' +
    '# CRI-O waits for the network named here and looks for plugin binaries in plugin_dirs.\n' +
    '[crio.network]\n' +
    `cni_default_network = "${networkName}"\n` +
    `network_dir = "${p.cniConfDir}/"\n` +
    `plugin_dirs = [\n  "${p.cniBinDir}",\n]\n`
  );
}
