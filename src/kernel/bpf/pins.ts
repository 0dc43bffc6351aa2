// bpffs housekeeping: where patu pins its maps/programs/links, and safe cleanup
// that can only ever touch a directory under /sys/fs/bpf (never bpffs itself).
import { chmodSync, existsSync, lstatSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, type Stats } from 'node:fs';
import { join, relative, resolve, sep } from 'node:path';
import { mount, open as openFd, close as closeFd, flock, O_RDONLY, LOCK_EX, LOCK_UN } from '../ffi/libc.js';
import { DEFAULTS } from '../../defaults.js';
import { errnoOf } from '../../errors.js';

const BPFFS = DEFAULTS.bpffs;

function bpffsMounted(): boolean {
  const mounts = readFileSync('/proc/self/mounts', 'utf8');
  return mounts.split('\n').some((line) => {
    const [, target, fstype] = line.split(' ');
    return target === BPFFS && fstype === 'bpf';
  });
}

export interface BpffsOptions {
  /**
   * Mount bpffs at /sys/fs/bpf when it is not there (default true). In a container
   * (the DaemonSet: PATU_BPFFS_MOUNT=never, read by the CLI) a mount made there would
   * be the container's alone: pins would vanish with it and the host-side plugin
   * would not see them, so there it is an error instead.
   */
  mountBpffs?: boolean;
}

/** Mounts bpffs at /sys/fs/bpf unless it is already there (or says it is missing, see BpffsOptions). */
export function ensureBpffs(opts: BpffsOptions = {}): void {
  if (bpffsMounted()) return;
  if (opts.mountBpffs === false) {
    throw new Error(`bpffs is not mounted at ${BPFFS} on this host: mount it there first (mount -t bpf bpf ${BPFFS}; systemd does so at boot)`);
  }
  mkdirSync(BPFFS, { recursive: true });
  mount('bpf', BPFFS, 'bpf', 0);
}

/**
 * A pin root must be a strict sub-directory of /sys/fs/bpf: a typo that
 * resolves to bpffs itself would otherwise let removePins wipe every pin on
 * the machine, including other software's.
 */
export function assertPinRoot(root: string): string {
  const abs = resolve(root);
  if (!abs.startsWith(BPFFS + '/') || abs.length <= BPFFS.length + 1) {
    throw new Error(`pin root ${root} must be a directory below ${BPFFS}`);
  }
  return abs;
}

/** A pin directory patu must not use: someone else made it, or can change what is in it. */
export class PinDirError extends Error {
  readonly code = 'EPINDIR';
  constructor(readonly path: string, reason: string) {
    super(`pin directory ${path} ${reason}: patu keeps its pins only in directories that root owns and no one else can write (remove it, or choose another pin root)`);
    this.name = 'PinDirError';
  }
}

const lstatOrNull = (p: string): Stats | null => {
  try {
    return lstatSync(p);
  } catch (e) {
    if (errnoOf(e) === 'ENOENT') return null;
    throw e;
  }
};

/**
 * Creates the pin directory (and bpffs, if needed) and returns its absolute
 * path. bpffs is often mounted 1777, so any local user can create a directory
 * there before patu does, and whoever owns (or can write) a pin directory can
 * remove or replace the pins in it under patu's attached programs. So each
 * directory from below bpffs down to root must be a real directory owned by
 * root that neither group nor others can write; what is missing is created
 * 0700. One that root owns with a looser but safe mode (0755, as patu used to
 * make them) is tightened to 0700.
 */
export function ensurePinDir(root: string = DEFAULTS.pinRoot, opts: BpffsOptions = {}): string {
  const abs = assertPinRoot(root);
  ensureBpffs(opts);
  let dir: string = BPFFS;
  for (const part of relative(BPFFS, abs).split(sep)) {
    dir = join(dir, part);
    let st = lstatOrNull(dir);
    if (!st) {
      try {
        mkdirSync(dir, { mode: 0o700 });
      } catch (e) {
        // Someone made it between the look and the mkdir: checked below like any other.
        if (errnoOf(e) !== 'EEXIST') throw e;
      }
      st = lstatSync(dir);
    }
    if (!st.isDirectory()) throw new PinDirError(dir, st.isSymbolicLink() ? 'is a symbolic link' : 'is not a directory');
    if (st.uid !== 0) throw new PinDirError(dir, `is owned by uid ${st.uid}, not root`);
    const mode = st.mode & 0o7777;
    if (mode & 0o022) throw new PinDirError(dir, `is writable by group or others (mode ${mode.toString(8)})`);
    if ((mode & 0o777) !== 0o700) chmodSync(dir, 0o700);
  }
  return abs;
}

/** Every pinned object under root, as absolute paths (directories excluded), sorted. */
export function listPins(root: string = DEFAULTS.pinRoot): string[] {
  const abs = assertPinRoot(root);
  if (!existsSync(abs)) return [];
  const out: string[] = [];
  const walk = (dir: string): void => {
    for (const ent of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, ent.name);
      if (ent.isDirectory()) walk(p);
      else out.push(p);
    }
  };
  walk(abs);
  return out.sort();
}

/**
 * Unpins everything under root and removes root. Unpinning drops the pin's
 * reference only: programs still attached through another reference (an fd,
 * a cgroup attachment) keep running.
 */
export function removePins(root: string = DEFAULTS.pinRoot): void {
  const abs = assertPinRoot(root);
  if (!existsSync(abs)) return;
  if (!statSync(abs).isDirectory()) {
    rmSync(abs);
    return;
  }
  rmSync(abs, { recursive: true, force: true });
}

const O_DIRECTORY = 0o200000;

/**
 * Runs fn holding flock(LOCK_EX) on a pin directory: the writers of one set of
 * pins (the agent, CNI workers, the CLI) take turns at loading, pinning and
 * programming what is under it.
 */
export function withPinDirLock<T>(dir: string, fn: () => T): T {
  const fd = openFd(dir, O_RDONLY | O_DIRECTORY);
  try {
    flock(fd, LOCK_EX, dir);
    return fn();
  } finally {
    try { flock(fd, LOCK_UN, dir); } finally { closeFd(fd); }
  }
}
