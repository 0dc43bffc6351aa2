// Where cgroup2 is on this host. patu's cgroup eBPF programs (sock_ops for
// acceleration, connect4/sendmsg4/... for services) attach to a cgroup2 directory;
// attached at the root of the hierarchy they cover every pod and the host. The root
// is mounted at different places, so it is found, never assumed:
//   pure cgroup v2 (Ubuntu 22.04+, Debian 12, RHEL 9, Fedora)    /sys/fs/cgroup
//   hybrid (v1 controllers, systemd's "unified" hierarchy)       /sys/fs/cgroup/unified
//   a container with the host's /sys/fs/cgroup mounted at /host  /host/sys/fs/cgroup[/unified]
//   v1 only (no cgroup2 mounted)                                 an error that says so
//
// Two facts decide it:
//  - /proc/self/mountinfo lists every mount with its file system type and the
//    directory of the hierarchy the mount shows (the "root" field). That field is
//    relative to the reader's cgroup namespace: "/" for a mount of the namespace's
//    root, "/.." (one per level) for a mount of something above it (the host's root
//    seen from inside a container), "/system.slice" for a bind mount of a sub-cgroup.
//  - The kernel creates `cgroup.type` in every cgroup except the hierarchy's true root
//    (CFTYPE_NOT_ON_ROOT in kernel/cgroup/cgroup.c, since 4.14). So a directory
//    without it is the root of the host's hierarchy, whatever namespace we are in.
//    The root field alone cannot tell: in a container with a private cgroup
//    namespace, its own /sys/fs/cgroup shows "/" as well, and attaching there would
//    cover only that container.
import { existsSync, readFileSync, realpathSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { messageOf } from '../errors.js';

/** One line of /proc/self/mountinfo (proc(5)); paths unescaped. */
export interface MountInfo {
  id: number;
  parentId: number;
  /** st_dev of the file system, "major:minor". */
  device: string;
  /** The directory of the file system this mount shows (for cgroup2: relative to our cgroup namespace). */
  root: string;
  mountPoint: string;
  mountOptions: string;
  fsType: string;
  source: string;
  superOptions: string;
}

export type CgroupErrorCode = 'NO_CGROUP2' | 'NOT_CGROUP2' | 'NOT_HIERARCHY_ROOT' | 'BAD_MOUNTINFO';

export class CgroupError extends Error {
  override readonly name = 'CgroupError';
  constructor(
    readonly code: CgroupErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** mountinfo escapes space, tab, newline and backslash in paths as \040 \011 \012 \134. */
export function unescapeMountPath(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

/**
 * Parses /proc/self/mountinfo:
 *   36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
 *   (1)(2)(3)   (4)   (5)      (6)      (7..)   -  (8)    (9)          (10)
 * The optional fields (7) are ended by a lone "-". A line that does not have this
 * shape is an error naming the line: guessing would pick a wrong attach point.
 */
export function parseMountinfo(text: string): MountInfo[] {
  const out: MountInfo[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    if (line.trim() === '') continue;
    const f = line.split(' ');
    const sep = f.indexOf('-', 6);
    if (f.length < 10 || sep < 0 || sep + 3 > f.length || !/^\d+$/.test(f[0]!) || !/^\d+$/.test(f[1]!)) {
      throw new CgroupError('BAD_MOUNTINFO', `mountinfo line ${i + 1} is not in the proc(5) format: ${JSON.stringify(line)}`);
    }
    out.push({
      id: Number(f[0]),
      parentId: Number(f[1]),
      device: f[2]!,
      root: unescapeMountPath(f[3]!),
      mountPoint: unescapeMountPath(f[4]!),
      mountOptions: f[5]!,
      fsType: f[sep + 1]!,
      source: unescapeMountPath(f[sep + 2]!),
      superOptions: f[sep + 3] ?? '',
    });
  }
  return out;
}

const within = (path: string, dir: string): boolean => dir === '/' || path === dir || path.startsWith(dir + '/');

/** "/" or "/.."(repeated): the mount shows our cgroup namespace's root, or a cgroup above it. */
const showsWholeTree = (root: string): boolean => /^(\/\.\.)*\/?$/.test(root) && root !== '';

/**
 * The cgroup2 mounts that can be the hierarchy's root, best first. The rule:
 *  1. file system type cgroup2; with `under`, only mounts at or below that directory;
 *  2. the mount shows a whole tree (root field "/" or "/.."...), not a bind mount of a
 *     sub-cgroup such as a container runtime's "/kubepods/...";
 *  3. where one mount point appears twice, the later line (mounted over the first,
 *     so the one a path lookup reaches);
 *  4. the standard places first: <base>, then <base>/unified, where base is `under`
 *     or /sys/fs/cgroup; then the others in mount order (the earliest first: the one
 *     the init system made at boot, not one a tool or a test added later).
 * Whether a candidate really is the host's root needs the file system (see
 * isHierarchyRoot): findCgroup2Root takes the first one that is.
 */
export function cgroup2Candidates(mounts: readonly MountInfo[], underDir?: string): MountInfo[] {
  const under = underDir === undefined ? undefined : underDir.replace(/(.)\/+$/, '$1');
  const byPoint = new Map<string, MountInfo>();
  for (const m of mounts) {
    if (m.fsType !== 'cgroup2' || !showsWholeTree(m.root)) continue;
    if (under !== undefined && !within(m.mountPoint, under)) continue;
    byPoint.delete(m.mountPoint); // re-insert: a later mount over the same point shadows the earlier
    byPoint.set(m.mountPoint, m);
  }
  const base = under === undefined || under === '/' ? '/sys/fs/cgroup' : under;
  const rank = (m: MountInfo): number => (m.mountPoint === base ? 0 : m.mountPoint === `${base}/unified` ? 1 : 2);
  // Map order is mountinfo order (the mount tree, parents before children); sort is stable.
  return [...byPoint.values()].sort((a, b) => rank(a) - rank(b));
}

/** The true root of the cgroup2 hierarchy: every cgroup but the root has cgroup.type (see the top of this file). */
export function isHierarchyRoot(dir: string): boolean {
  return existsSync(join(dir, 'cgroup.procs')) && !existsSync(join(dir, 'cgroup.type'));
}

export interface FindCgroupOptions {
  /** Only consider cgroup2 mounts at or below this directory (in a container: where the host's /sys/fs/cgroup is mounted). */
  under?: string;
  /** mountinfo text (tests); default: /proc/self/mountinfo. */
  mountinfo?: string;
  /** Decides whether a candidate directory is the hierarchy's root (tests); default: isHierarchyRoot. */
  isRoot?: (dir: string) => boolean;
}

const readMountinfo = (o: { mountinfo?: string }): MountInfo[] => parseMountinfo(o.mountinfo ?? readFileSync('/proc/self/mountinfo', 'utf8'));

/**
 * The directory of the cgroup2 hierarchy's root, checked to be the host's root
 * (not a container's namespaced view). Throws a CgroupError that says what is
 * missing: no cgroup2 at all (a v1-only host), none under `under`, or only
 * mounts that are not the root of the hierarchy.
 */
export function findCgroup2Root(opts: FindCgroupOptions = {}): string {
  const mounts = readMountinfo(opts);
  const all = mounts.filter((m) => m.fsType === 'cgroup2');
  if (all.length === 0) {
    const v1 = mounts.filter((m) => m.fsType === 'cgroup').length;
    throw new CgroupError(
      'NO_CGROUP2',
      `no cgroup2 file system is mounted${v1 ? ` (this host has only cgroup v1: ${v1} v1 hierarchies)` : ''}; ` +
        'patu attaches its socket programs to cgroup2. Boot with systemd.unified_cgroup_hierarchy=1, ' +
        'or mount it: mount -t cgroup2 none /sys/fs/cgroup/unified',
    );
  }
  const candidates = cgroup2Candidates(mounts, opts.under);
  if (candidates.length === 0) {
    const seen = all.map((m) => `${m.mountPoint} (shows ${m.root})`).join(', ');
    throw new CgroupError(
      'NO_CGROUP2',
      opts.under !== undefined
        ? `no cgroup2 mount at or below ${opts.under} (cgroup2 is mounted at: ${seen}); in a container, mount the host's /sys/fs/cgroup there`
        : `no cgroup2 mount shows a whole hierarchy (only sub-cgroups are mounted: ${seen})`,
    );
  }
  const isRoot = opts.isRoot ?? isHierarchyRoot;
  const root = candidates.find((m) => isRoot(m.mountPoint));
  if (root) return root.mountPoint;
  const where = candidates.map((m) => m.mountPoint).join(', ');
  throw new CgroupError(
    'NOT_HIERARCHY_ROOT',
    `the cgroup2 mount at ${where} is not the root of the host's cgroup hierarchy (it has cgroup.type: ` +
      'a container\'s private cgroup namespace shows its own cgroup as "/"). Attaching there would cover only ' +
      'this container: mount the host\'s /sys/fs/cgroup into it and look for cgroup2 there',
  );
}

/**
 * Checks a directory given explicitly (`--cgroup`, tests and the demo: a sub-cgroup
 * they made) is on a cgroup2 file system, and returns its real path. On a hybrid
 * host /sys/fs/cgroup itself is a tmpfs of v1 hierarchies: this says so instead of
 * letting the attach fail with EBADF.
 */
export function checkCgroup2Dir(dir: string, opts: { mountinfo?: string } = {}): string {
  let real: string;
  try {
    real = realpathSync(dir);
    if (!statSync(real).isDirectory()) throw new Error('not a directory');
  } catch (e) {
    throw new CgroupError('NOT_CGROUP2', `cgroup directory ${dir}: ${messageOf(e)}`, { cause: e });
  }
  let best: MountInfo | undefined;
  for (const m of readMountinfo(opts)) {
    // The last (topmost) mount of the longest mount point that contains the path.
    if (within(real, m.mountPoint) && (!best || m.mountPoint.length >= best.mountPoint.length)) best = m;
  }
  if (!best || best.fsType !== 'cgroup2') {
    throw new CgroupError(
      'NOT_CGROUP2',
      `cgroup directory ${dir} is not in a cgroup2 file system (it is on ${best ? `${best.fsType} mounted at ${best.mountPoint}` : 'no mount'})`,
    );
  }
  return real;
}

export interface ResolveCgroupOptions {
  /** An explicit directory (a sub-cgroup is fine): checked to be on cgroup2, used as is. */
  cgroup?: string | undefined;
  /** Without `cgroup`: look for the hierarchy's root at or below this directory only. */
  under?: string | undefined;
  mountinfo?: string;
  isRoot?: (dir: string) => boolean;
}

/**
 * The attach point the CLI and the agent use: the explicit directory, else the
 * discovered root. An empty string is "not given" (the DaemonSet's default
 * cgroup-path arrives as --cgroup=).
 */
export function resolveCgroup(o: ResolveCgroupOptions = {}): string {
  const mi = o.mountinfo !== undefined ? { mountinfo: o.mountinfo } : {};
  if (o.cgroup !== undefined && o.cgroup !== '') return checkCgroup2Dir(o.cgroup, mi);
  return findCgroup2Root({ ...mi, ...(o.isRoot ? { isRoot: o.isRoot } : {}), ...(o.under !== undefined && o.under !== '' ? { under: o.under } : {}) });
}
