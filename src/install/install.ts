// `patu install` / `patu uninstall`: put patu's files on a host (or a staging
// root), and take away exactly what was put there.
//
// What install writes, all recorded in <stateDir>/install.json:
//   <prefix>/            the launcher, dist/, build/bpf/*.o and the production node_modules
//                        (copy mode), or a symlink to a checkout (symlink mode, development)
//   <cniBinDir>/patu     a relative symlink to <prefix>/bin/patu: the launcher finds dist/
//                        through its real path, so the link must not be a plain copy
//   <cniConfDir>/10-patu.conflist   unless --no-conflist (then the agent writes it with --kubernetes;
//                                    it is recorded either way, so uninstall removes it)
//   /etc/systemd/system/patu-agent.service   unless --cni-only
//   /etc/crio/crio.conf.d/50-patu.conf       MicroShift only
// plus every directory it had to create. Uninstall removes those entries and
// nothing else: a file that changed since install (other than the agent-managed
// conflist) is left in place and reported, a directory is removed only if it
// was created by install and is empty, and patu's pins go with removePins on
// patu's own pin root (never bpffs itself).
import { createHash } from 'node:crypto';
import {
  chmodSync, copyFileSync, cpSync, existsSync, lstatSync, mkdirSync, readFileSync, readlinkSync, renameSync, rmdirSync, rmSync,
  symlinkSync, writeFileSync, type Stats,
} from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { patuHome } from '../home.js';
import { buildConflist } from '../cni/conflist.js';
import { DEFAULTS } from '../defaults.js';
import { CidrParseError, firstSubnet24, parseCidr } from '../net/cidr.js';
import { errnoOf, messageOf, PatuError } from '../errors.js';
import {
  cniLinkTarget, crioDropIn, resolvePaths, within,
  type InstallPaths, type PathOptions,
} from './paths.js';

/** The checkout or install this code runs from (<home>/dist/src/install -> <home>). */
export const PATU_HOME = patuHome();

/** Written into a copied prefix: uninstall removes a prefix tree only if it carries this marker. */
export const PREFIX_MARKER = '.patu-install';

export type InstallMode = 'copy' | 'symlink';

export interface InstallOptions extends PathOptions {
  /** The built patu tree to install from (default: the one this code runs from). */
  source?: string;
  mode?: InstallMode;
  /** No systemd unit: the Kubernetes init container (the agent runs in the DaemonSet). */
  cniOnly?: boolean;
  /** Copy the node binary running this install into <prefix>/node/bin (hosts without Node.js). */
  bundleNode?: boolean;
  /** Write the conflist (default true). */
  conflist?: boolean;
  clusterCIDR?: string;
  podCIDR?: string;
  /** Take over target files that exist but were not installed by patu. */
  force?: boolean;
  log?: (line: string) => void;
}

export type EntryKind = 'tree' | 'file' | 'symlink';

export interface ManifestEntry {
  /** Host path (without the staging root). */
  path: string;
  kind: EntryKind;
  /** file: sha256 of what install wrote; uninstall keeps a file that no longer matches. */
  sha256?: string;
  /** symlink: its target. */
  target?: string;
  /** A file another patu component rewrites (the conflist): removed even if changed. */
  managed?: boolean;
  what: string;
}

export interface InstallManifest {
  version: 1;
  patuVersion: string;
  installedAt: string;
  flavour: string;
  mode: InstallMode;
  prefix: string;
  cniBinDir: string;
  cniConfDir: string;
  entries: ManifestEntry[];
  /** Directories install created, so uninstall may remove them when empty (host paths). */
  createdDirs: string[];
}

export class InstallError extends PatuError {
  readonly code = 'INSTALL';
  constructor(readonly path: string, message: string, options?: { cause?: unknown }) {
    super(`install: ${path}: ${message}`, options);
  }
}

const errCode = (e: unknown): string => errnoOf(e) ?? messageOf(e);

function lstatOrNull(p: string): Stats | null {
  try {
    return lstatSync(p);
  } catch (e) {
    if (errnoOf(e) === 'ENOENT') return null;
    throw new InstallError(p, `lstat: ${errCode(e)}`, { cause: e });
  }
}

const sha256 = (data: string | Buffer): string => createHash('sha256').update(data).digest('hex');

/** Files a built tree must have; checked up front so a half-built source fails before anything is written. */
export const REQUIRED_SOURCE_FILES = ['bin/patu', 'dist/cni.cjs', 'dist/src/cli/index.js', 'package.json', 'build/bpf/accel.o', 'build/bpf/sock_lb.o'];

export function checkSource(source: string): void {
  const missing = REQUIRED_SOURCE_FILES.filter((f) => !existsSync(join(source, f)));
  if (missing.length) {
    throw new InstallError(source, `not a built patu tree: missing ${missing.join(', ')} (run: bash scripts/build.sh)`);
  }
}

/**
 * The production dependency closure as top-level node_modules directories
 * (relative to source). Nested node_modules travel inside their parent.
 */
export function productionModules(source: string): string[] {
  const top = new Set<string>();
  const seen = new Set<string>();
  const rootPkg = JSON.parse(readFileSync(join(source, 'package.json'), 'utf8'));
  // required: `dependencies`; optional: optional and peer dependencies (absent for another platform, or provided by the user).
  const queue: Array<{ from: string; required: string[]; optional: string[] }> = [
    { from: source, required: Object.keys(rootPkg.dependencies ?? {}), optional: Object.keys(rootPkg.optionalDependencies ?? {}) },
  ];
  while (queue.length) {
    const { from, required, optional } = queue.shift()!;
    for (const name of [...required, ...optional]) {
      // Node's resolution: the nearest node_modules/<name> walking up, not past source.
      let dir = from;
      let found: string | null = null;
      for (;;) {
        const cand = join(dir, 'node_modules', name);
        if (existsSync(join(cand, 'package.json'))) {
          found = cand;
          break;
        }
        if (dir === source || !within(dir, source)) break;
        dir = dirname(dir);
      }
      if (!found) {
        if (required.includes(name) && !optional.includes(name)) {
          throw new InstallError(join(from, 'node_modules', name), `dependency of ${relative(source, from) || 'patu'} not installed (run: npm ci)`);
        }
        continue;
      }
      if (seen.has(found)) continue;
      seen.add(found);
      const rel = relative(join(source, 'node_modules'), found);
      if (!rel.includes('node_modules')) top.add(rel);
      const pkg = JSON.parse(readFileSync(join(found, 'package.json'), 'utf8'));
      queue.push({
        from: found,
        required: Object.keys(pkg.dependencies ?? {}),
        optional: [...Object.keys(pkg.optionalDependencies ?? {}), ...Object.keys(pkg.peerDependencies ?? {})],
      });
    }
  }
  return [...top].sort().map((n) => join('node_modules', n));
}

/** What a copied prefix holds (relative to source). */
export function prefixContents(source: string): string[] {
  const list = ['bin/patu', 'dist/cni.cjs', 'dist/src', 'build/bpf', 'package.json', 'deploy'];
  // dist/agent: the agent's bundle (bin/patu falls back to dist/src without it).
  for (const opt of ['dist/agent', 'README.md', 'ARCHITECTURE.md', 'LICENSE']) if (existsSync(join(source, opt))) list.push(opt);
  return [...list, ...productionModules(source)];
}

export function readManifest(paths: Pick<InstallPaths, 'manifest' | 'staged'>): InstallManifest | null {
  const file = paths.staged(paths.manifest);
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    if (errnoOf(e) === 'ENOENT') return null;
    throw new InstallError(file, `read manifest: ${errCode(e)}`, { cause: e });
  }
  try {
    const m = JSON.parse(text) as InstallManifest;
    if (m.version !== 1 || !Array.isArray(m.entries) || !Array.isArray(m.createdDirs)) throw new Error('unknown layout');
    return m;
  } catch (e) {
    throw new InstallError(file, `manifest is not valid (${messageOf(e)}); remove it by hand after checking what it lists`, { cause: e });
  }
}

/** mkdir -p that reports which directories it created (host paths, outermost first). */
function mkdirRecorded(paths: InstallPaths, hostDir: string, created: string[]): void {
  const missing: string[] = [];
  let d = hostDir;
  while (d !== '/' && !lstatOrNull(paths.staged(d))) {
    missing.unshift(d);
    d = dirname(d);
  }
  for (const m of missing) {
    try {
      mkdirSync(paths.staged(m), { mode: 0o755 });
    } catch (e) {
      if (errnoOf(e) !== 'EEXIST') throw new InstallError(paths.staged(m), `mkdir: ${errCode(e)}`, { cause: e });
      continue;
    }
    created.push(m);
  }
}

/** Writes a file by temp + rename in its directory, so a runtime never reads half of it. */
function writeAtomic(path: string, content: string, mode: number): void {
  // A dot name: runtimes load only *.conf/*.conflist/*.json, so they never pick up the temp file.
  const tmp = join(dirname(path), `.patu-${process.pid}.tmp`);
  try {
    writeFileSync(tmp, content, { mode });
    renameSync(tmp, path);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw new InstallError(path, `write: ${errCode(e)}`, { cause: e });
  }
}

function symlinkAtomic(path: string, target: string): void {
  const tmp = join(dirname(path), `.patu-${process.pid}.lnk`);
  try {
    rmSync(tmp, { force: true });
    symlinkSync(target, tmp);
    renameSync(tmp, path);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw new InstallError(path, `symlink -> ${target}: ${errCode(e)}`, { cause: e });
  }
}

function packageVersion(source: string): string {
  try {
    return String(JSON.parse(readFileSync(join(source, 'package.json'), 'utf8')).version);
  } catch {
    return 'unknown';
  }
}

export interface InstallResult {
  paths: InstallPaths;
  manifest: InstallManifest;
  /** Entries whose content changed (or were new) in this run: empty on an idempotent rerun (prefix excepted in copy mode). */
  written: string[];
}

/**
 * Installs (or reinstalls: idempotent) patu. A target that exists and is not in
 * the previous manifest is refused unless `force`: install never overwrites a
 * file it cannot later account for.
 */
export function install(o: InstallOptions = {}): InstallResult {
  const log = o.log ?? (() => {});
  const paths = resolvePaths(o);
  const source = resolve(o.source ?? PATU_HOME);
  const mode: InstallMode = o.mode ?? 'copy';
  checkSource(source);
  if (mode === 'copy' && within(paths.staged(paths.prefix), source)) {
    throw new InstallError(paths.staged(paths.prefix), `prefix is inside the source tree ${source}`);
  }
  if (paths.root !== '/' && !lstatOrNull(paths.root)) throw new InstallError(paths.root, '--root does not exist');

  const clusterCIDR = o.clusterCIDR ?? DEFAULTS.clusterCIDR;
  let podCIDR = '';
  if (o.conflist !== false) {
    const flagged = <T>(flag: string, fn: () => T): T => {
      try {
        return fn();
      } catch (e) {
        throw new InstallError(paths.conflist, `${flag}: ${messageOf(e)}`, { cause: e });
      }
    };
    const ipv4Cidr = (flag: string, text: string): void => flagged(flag, () => {
      if (parseCidr(text).family !== 4) throw new CidrParseError(text, 'is not an IPv4 CIDR');
    });
    ipv4Cidr('--cluster-cidr', clusterCIDR);
    // Like the agent without a Node podCIDR: the first /24 of the cluster CIDR (which
    // must hold one: a smaller one names --cluster-cidr, not only the CIDR).
    if (o.podCIDR !== undefined) ipv4Cidr('--pod-cidr', o.podCIDR);
    podCIDR = o.podCIDR ?? flagged('--cluster-cidr', () => firstSubnet24(clusterCIDR));
  }

  const previous = readManifest(paths);
  const ours = new Map((previous?.entries ?? []).map((e) => [e.path, e]));
  const created: string[] = [...(previous?.createdDirs ?? [])];
  const entries: ManifestEntry[] = [];
  const written: string[] = [];

  const claim = (hostPath: string): Stats | null => {
    const st = lstatOrNull(paths.staged(hostPath));
    if (st && !ours.has(hostPath) && !o.force) {
      throw new InstallError(paths.staged(hostPath), 'exists and was not installed by patu (not in its install manifest); move it away or pass --force');
    }
    return st;
  };

  // Every target is checked before anything is written.
  const targets = [paths.prefix, paths.cniBinary];
  if (o.conflist !== false) targets.push(paths.conflist);
  if (!o.cniOnly) targets.push(paths.unit);
  if (paths.crioDropIn) targets.push(paths.crioDropIn);
  for (const t of targets) claim(t);

  // The manifest is written last. A state directory that cannot take it (read-only, not
  // mounted) must fail now, before any file is placed: a retry would otherwise find
  // unrecorded files in its way and refuse them.
  mkdirRecorded(paths, dirname(paths.manifest), created);
  const probe = `${paths.staged(paths.manifest)}.probe-${process.pid}`;
  try {
    writeFileSync(probe, '');
    rmSync(probe);
  } catch (e) {
    throw new InstallError(paths.staged(paths.manifest), `state directory not writable: ${errCode(e)}`, { cause: e });
  }

  // A failure half way takes back what this run placed (not what an earlier install
  // recorded), so the host is as before and a retry starts clean.
  const rollback = (): void => {
    for (const p of [...written].reverse()) if (!ours.has(p)) rmSync(paths.staged(p), { recursive: true, force: true });
    const before = new Set(previous?.createdDirs ?? []);
    for (const d of [...new Set(created)].filter((x) => !before.has(x)).sort((x, y) => y.length - x.length)) {
      try {
        rmdirSync(paths.staged(d));
      } catch {
        // Not empty (something else lives there now): leave it.
      }
    }
  };
  try {
    // 1. The prefix: staged next to its final place and renamed in, so a runtime
    //    running the plugin meanwhile sees the old tree or the new one.
    mkdirRecorded(paths, dirname(paths.prefix), created);
    const prefixNow = paths.staged(paths.prefix);
    const old = lstatOrNull(prefixNow);
    if (mode === 'symlink') {
      if (old?.isSymbolicLink() && readlinkSync(prefixNow) === source) {
        log(`prefix ${paths.prefix} -> ${source} (unchanged)`);
      } else {
        if (old && !old.isSymbolicLink()) rmSync(prefixNow, { recursive: true, force: true });
        symlinkAtomic(prefixNow, source);
        written.push(paths.prefix);
        log(`prefix ${paths.prefix} -> ${source} (symlink, development)`);
      }
      entries.push({ path: paths.prefix, kind: 'symlink', target: source, what: 'patu tree (symlink to a checkout)' });
    } else {
      const fresh = `${prefixNow}.patu-new-${process.pid}`;
      rmSync(fresh, { recursive: true, force: true });
      try {
        mkdirSync(fresh, { mode: 0o755 });
        const contents = prefixContents(source);
        for (const rel of contents) {
          const dst = join(fresh, rel);
          mkdirSync(dirname(dst), { recursive: true });
          cpSync(join(source, rel), dst, { recursive: true, verbatimSymlinks: true, dereference: false });
        }
        if (o.bundleNode) {
          // The launcher runs <prefix>/node/bin/node before any other node: bin/patu keeps working
          // (plugin fallback while the agent is down) on a host that has no Node.js of its own.
          mkdirSync(join(fresh, 'node', 'bin'), { recursive: true });
          copyFileSync(process.execPath, join(fresh, 'node', 'bin', 'node'));
          chmodSync(join(fresh, 'node', 'bin', 'node'), 0o755);
        }
        writeFileSync(join(fresh, PREFIX_MARKER), `patu ${packageVersion(source)} installed from ${source}\n`);
      } catch (e) {
        rmSync(fresh, { recursive: true, force: true });
        throw new InstallError(prefixNow, `copy from ${source}: ${e instanceof InstallError ? e.message : errCode(e)}`, { cause: e });
      }
      const retired = `${prefixNow}.patu-old-${process.pid}`;
      if (old) renameSync(prefixNow, retired);
      try {
        renameSync(fresh, prefixNow);
      } catch (e) {
        if (old) renameSync(retired, prefixNow);
        rmSync(fresh, { recursive: true, force: true });
        throw new InstallError(prefixNow, `rename ${fresh} into place: ${errCode(e)}`, { cause: e });
      }
      if (old) rmSync(retired, { recursive: true, force: true });
      written.push(paths.prefix);
      log(`prefix ${paths.prefix}: copied from ${source}`);
      entries.push({ path: paths.prefix, kind: 'tree', what: 'patu tree (launcher, dist, eBPF objects, node_modules)' });
    }

    const putSymlink = (hostPath: string, target: string, what: string): void => {
      mkdirRecorded(paths, dirname(hostPath), created);
      const now = paths.staged(hostPath);
      const st = lstatOrNull(now);
      if (!(st?.isSymbolicLink() && readlinkSync(now) === target)) {
        if (st?.isDirectory()) throw new InstallError(now, 'is a directory');
        symlinkAtomic(now, target);
        written.push(hostPath);
      }
      entries.push({ path: hostPath, kind: 'symlink', target, what });
      log(`${what}: ${hostPath} -> ${target}`);
    };
    const putFile = (hostPath: string, content: string, what: string, managed = false): void => {
      mkdirRecorded(paths, dirname(hostPath), created);
      const now = paths.staged(hostPath);
      const st = lstatOrNull(now);
      let same = false;
      if (st?.isFile()) {
        try {
          same = readFileSync(now, 'utf8') === content;
        } catch (e) {
          throw new InstallError(now, `read: ${errCode(e)}`, { cause: e });
        }
      } else if (st?.isDirectory()) {
        throw new InstallError(now, 'is a directory');
      }
      if (!same) {
        writeAtomic(now, content, 0o644);
        written.push(hostPath);
      }
      entries.push({ path: hostPath, kind: 'file', sha256: sha256(content), ...(managed ? { managed } : {}), what });
      log(`${what}: ${hostPath}${same ? ' (unchanged)' : ''}`);
    };

    // 2. The CNI binary.
    putSymlink(paths.cniBinary, cniLinkTarget(paths), 'CNI plugin');

    // 3. The conflist. A conflist the agent has rewritten since (with the Node's
    //    podCIDR) is kept: reinstalling must not undo the agent's work.
    if (o.conflist !== false) {
      const prevConf = ours.get(paths.conflist);
      const now = paths.staged(paths.conflist);
      const content = buildConflist({ podCIDR, clusterCIDR });
      if (prevConf && lstatOrNull(now)?.isFile() && sha256(readFileSync(now)) !== prevConf.sha256) {
        entries.push(prevConf);
        log(`CNI network config: ${paths.conflist} (rewritten since install, e.g. by the agent: kept)`);
      } else {
        putFile(paths.conflist, content, 'CNI network config', true);
      }
    } else {
      // The agent writes it (with the Node's podCIDR); recorded so uninstall removes it too.
      entries.push({ path: paths.conflist, kind: 'file', managed: true, what: 'CNI network config (written by the agent)' });
    }

    // 4. The systemd unit, pointing at this prefix.
    if (!o.cniOnly) {
      const unitSrc = join(source, 'deploy', 'patu-agent.service');
      let unit: string;
      try {
        unit = readFileSync(unitSrc, 'utf8');
      } catch (e) {
        throw new InstallError(unitSrc, `read unit template: ${errCode(e)}`, { cause: e });
      }
      putFile(paths.unit, unit.replaceAll(DEFAULTS.prefix, paths.prefix), 'systemd unit');
    }

    // 5. MicroShift: tell CRI-O which network to wait for and where the binary is.
    if (paths.crioDropIn) putFile(paths.crioDropIn, crioDropIn(paths), 'CRI-O drop-in');

    // 6. The manifest, last: it lists only what exists.
    const manifest: InstallManifest = {
      version: 1,
      patuVersion: packageVersion(source),
      installedAt: new Date().toISOString(),
      flavour: paths.flavour,
      mode,
      prefix: paths.prefix,
      cniBinDir: paths.cniBinDir,
      cniConfDir: paths.cniConfDir,
      entries,
      createdDirs: [],
    };
    mkdirRecorded(paths, dirname(paths.manifest), created);
    manifest.createdDirs = [...new Set(created)];
    writeAtomic(paths.staged(paths.manifest), JSON.stringify(manifest, null, 2) + '\n', 0o644);
    log(`manifest: ${paths.manifest}`);
    return { paths, manifest, written };
  } catch (e) {
    rollback();
    throw e;
  }
}

export interface UninstallOptions {
  root?: string;
  stateDir?: string;
  /** Pin root to remove (removePins). null: leave pins alone. Default: patu's pin root on a live host, none with --root. */
  pinRoot?: string | null;
  /**
   * Remove the routes to other nodes' pods (proto 156), the vxlan device and the node SNAT
   * table (docs/multinode.md). Default: on a live host only (never with --root: a staging
   * root has no kernel of its own).
   */
  nodeRoutes?: boolean;
  log?: (line: string) => void;
}

export interface UninstallReport {
  manifest: string;
  found: boolean;
  removed: string[];
  kept: Array<{ path: string; reason: string }>;
  pinsRemoved: string | null;
  /** Routes, vxlan device and SNAT table of routing between nodes removed (0 when none or not asked). */
  nodeRoutesRemoved?: number;
}

/** Removes what the manifest lists (and only that), then the created directories if empty, then patu's pins. */
export async function uninstall(o: UninstallOptions = {}): Promise<UninstallReport> {
  const log = o.log ?? (() => {});
  const paths = resolvePaths({ ...(o.root !== undefined ? { root: o.root } : {}), stateDir: o.stateDir ?? DEFAULTS.stateDir });
  const report: UninstallReport = { manifest: paths.staged(paths.manifest), found: false, removed: [], kept: [], pinsRemoved: null };
  const manifest = readManifest(paths);
  if (manifest) {
    report.found = true;
    for (const e of [...manifest.entries].reverse()) {
      const now = paths.staged(e.path);
      const st = lstatOrNull(now);
      if (!st) {
        report.kept.push({ path: e.path, reason: 'already gone' });
        continue;
      }
      let ok = false;
      let reason = '';
      if (e.kind === 'symlink') {
        ok = st.isSymbolicLink() && readlinkSync(now) === e.target;
        reason = `no longer a symlink to ${e.target}`;
      } else if (e.kind === 'tree') {
        ok = st.isDirectory() && existsSync(join(now, PREFIX_MARKER));
        reason = `not a patu install tree (no ${PREFIX_MARKER})`;
      } else {
        ok = st.isFile() && (e.managed === true || sha256(readFileSync(now)) === e.sha256);
        reason = 'changed since install';
      }
      if (!ok) {
        report.kept.push({ path: e.path, reason });
        log(`kept ${e.path}: ${reason}`);
        continue;
      }
      try {
        rmSync(now, { recursive: e.kind === 'tree', force: false });
      } catch (err) {
        throw new InstallError(now, `remove: ${errCode(err)}`);
      }
      report.removed.push(e.path);
      log(`removed ${e.what}: ${e.path}`);
    }
    try {
      rmSync(paths.staged(paths.manifest));
    } catch (err) {
      throw new InstallError(paths.staged(paths.manifest), `remove manifest: ${errCode(err)}`);
    }
    report.removed.push(paths.manifest);
    // Deepest first; a directory that holds anything else (IPAM state, other plugins) stays.
    for (const d of [...manifest.createdDirs].sort((a, b) => b.length - a.length)) {
      try {
        rmdirSync(paths.staged(d));
        report.removed.push(d);
      } catch (err) {
        const code = errnoOf(err);
        if (code === 'ENOENT') continue;
        report.kept.push({ path: d, reason: code === 'ENOTEMPTY' ? 'directory not empty' : `rmdir: ${code}` });
      }
    }
  } else {
    log(`no install manifest at ${report.manifest}: no files to remove`);
  }
  const pinRoot = o.pinRoot === undefined ? (paths.root === '/' ? DEFAULTS.pinRoot : null) : o.pinRoot;
  if (pinRoot) {
    // Only patu's own pin directory: assertPinRoot refuses bpffs itself.
    const { removePins, assertPinRoot } = await import('../kernel/bpf/pins.js');
    const abs = assertPinRoot(pinRoot);
    if (existsSync(abs)) {
      removePins(abs);
      report.pinsRemoved = abs;
      log(`removed pins under ${abs}`);
    }
  }
  if (o.nodeRoutes ?? paths.root === '/') {
    const { Rtnl } = await import('../kernel/netlink/rtnl.js');
    const { NodeRoutes } = await import('../dataplane/node-routes.js');
    const { syncNodeSnat } = await import('../dataplane/node-snat.js');
    const rtnl = Rtnl.open();
    try {
      report.nodeRoutesRemoved = new NodeRoutes(rtnl).clear();
    } finally {
      rtnl.close();
    }
    try {
      syncNodeSnat([], []);
    } catch (e) {
      // No nft on the host: then there is no table of ours either.
      log(`node SNAT table not checked: ${(e as Error).message}`);
    }
    if (report.nodeRoutesRemoved) log(`removed ${report.nodeRoutesRemoved} route(s)/device(s) of routing between nodes`);
  }
  return report;
}
