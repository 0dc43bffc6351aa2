// Network namespace switching for the calling thread. setns() moves only the
// thread that calls it (PLATFORM.md), so every switched section here is
// synchronous and always switches back, even when it throws.
import { access, existsSync, fstatSync, mkdirSync, readdirSync, rmSync, statSync, statfsSync } from 'node:fs';
import { join } from 'node:path';
import {
  open, close, ioctl, setns, unshare, mount, umount2, SysError,
  CLONE_NEWNET, O_RDONLY, O_CREAT, O_NONBLOCK, O_PATH, NS_GET_NSTYPE, MS_BIND, MNT_DETACH,
} from './ffi/libc.js';
import { messageOf, PatuError } from '../errors.js';

/** Where `ip netns add` puts named namespaces. */
export const NETNS_RUN_DIR = '/run/netns';
const NSFS_MAGIC = 0x6e736673;
const SELF_NET = '/proc/thread-self/ns/net';
const O_EXCL = 0o200;

let poolWarm = false;
/**
 * libuv starts its threadpool lazily, on the first async job, and new threads
 * inherit the netns of the thread that spawns them. Submitting one job now,
 * before any setns, makes the pool start in the original namespace instead of a
 * pod's. uv_queue_work creates the threads synchronously at submission.
 */
export function warmThreadpool(): void {
  if (poolWarm) return;
  poolWarm = true;
  access('/', () => {});
}

/** Inode of the calling thread's current network namespace (identifies it). */
export function currentNetnsInode(): number {
  return statSync(SELF_NET).ino;
}

/** True when path is a network namespace handle (a bind-mounted nsfs file or /proc/<pid>/ns/net). */
export function netnsExists(path: string): boolean {
  try {
    return statfsSync(path).type === NSFS_MAGIC;
  } catch {
    return false;
  }
}

export interface NetnsHandle {
  path: string;
  /** The namespace's inode (what /proc/<pid>/ns/net links to as net:[inode]). */
  inode: number;
}

/**
 * The network namespaces bind-mounted in dirs (/run/netns: `ip netns add`,
 * containerd, CRI-O and podman put pod namespaces there), one handle per
 * namespace (two names for one namespace count once), without those whose
 * inode is in `exclude` (e.g. currentNetnsInode()). Leftover files that are no
 * longer a namespace mount, and a missing dir, are skipped.
 */
export function listNetns(dirs: readonly string[], exclude: ReadonlySet<number> = new Set()): NetnsHandle[] {
  const seen = new Set<number>(exclude);
  const out: NetnsHandle[] = [];
  for (const dir of dirs) {
    let names: string[];
    try {
      names = readdirSync(dir);
    } catch {
      continue;
    }
    for (const name of names.sort()) {
      const path = join(dir, name);
      if (!netnsExists(path)) continue;
      let inode: number;
      try {
        inode = statSync(path).ino;
      } catch {
        continue;
      }
      if (seen.has(inode)) continue;
      seen.add(inode);
      out.push({ path, inode });
    }
  }
  return out;
}

/** A path that is not a network namespace handle (a FIFO, a device, a directory, a /proc file, ...). */
export class NotANetnsError extends PatuError {
  readonly code = 'NOT_A_NETNS';
  readonly path: string;
  constructor(path: string, problem: string, options?: { cause?: unknown }) {
    super(`'${path}' ${problem}`, options);
    this.path = path;
  }
}

/**
 * Opens a network namespace handle without ever blocking: a plain open(O_RDONLY)
 * of a FIFO waits for a writer forever, and of a device may have side effects. So
 * the path is first opened O_PATH (no open of the object itself), must be a regular
 * file (nsfs handles are), and is then reopened through /proc/self/fd non-blocking
 * and asked NS_GET_NSTYPE, which only an nsfs file answers. Returns the fd (the
 * caller closes it); throws NotANetnsError for anything but a network namespace.
 */
export function openNetns(path: string): number {
  let pathFd: number;
  try {
    pathFd = open(path, O_PATH);
  } catch (err) {
    throw new NotANetnsError(path, `cannot be opened: ${messageOf(err)}`, { cause: err });
  }
  let fd: number;
  try {
    const st = fstatSync(pathFd);
    if (!st.isFile()) throw new NotANetnsError(path, `is a ${fileKind(st)}, not a network namespace`);
    try {
      fd = open(`/proc/self/fd/${pathFd}`, O_RDONLY | O_NONBLOCK);
    } catch (err) {
      throw new NotANetnsError(path, `cannot be opened: ${messageOf(err)}`, { cause: err });
    }
  } finally {
    close(pathFd);
  }
  try {
    let type: number;
    try {
      type = ioctl(fd, NS_GET_NSTYPE, path);
    } catch (err) {
      throw new NotANetnsError(path, 'is not a namespace handle (NS_GET_NSTYPE refused it)', { cause: err });
    }
    if (type !== CLONE_NEWNET) throw new NotANetnsError(path, `is a namespace of another kind (type 0x${type.toString(16)}), not a network namespace`);
    return fd;
  } catch (err) {
    close(fd);
    throw err;
  }
}

/** Throws NotANetnsError unless path is a network namespace handle (see openNetns). */
export function checkNetns(path: string): void {
  close(openNetns(path));
}

function fileKind(st: import('node:fs').Stats): string {
  if (st.isDirectory()) return 'directory';
  if (st.isFIFO()) return 'FIFO';
  if (st.isCharacterDevice()) return 'character device';
  if (st.isBlockDevice()) return 'block device';
  if (st.isSocket()) return 'socket';
  return 'special file';
}

/** Runs fn with the calling thread inside nsPath; switches back afterwards, even on throw. */
export function withNetns<T>(nsPath: string, fn: () => T): T {
  warmThreadpool();
  const target = openNetns(nsPath);
  let orig: number;
  try {
    orig = open(SELF_NET, O_RDONLY);
  } catch (err) {
    close(target);
    throw err;
  }
  try {
    try {
      setns(target, CLONE_NEWNET);
    } catch (err) {
      throw new SysError('setns', (err as SysError).errno, `entering netns ${nsPath}`);
    }
    try {
      return fn();
    } finally {
      restore(orig, nsPath);
    }
  } finally {
    close(orig);
    close(target);
  }
}

function restore(origFd: number, from: string): void {
  try {
    setns(origFd, CLONE_NEWNET);
  } catch (err) {
    // Carrying on would run the rest of the program (and every later netlink
    // socket) in the pod's namespace: there is no safe way forward.
    process.stderr.write(`patu: fatal: cannot switch back from netns ${from}: ${messageOf(err)}\n`);
    process.abort();
  }
}

const namedPath = (name: string): string => {
  if (!/^[A-Za-z0-9_.-]{1,200}$/.test(name) || name === '.' || name === '..') {
    throw new Error(`invalid netns name '${name}'`);
  }
  return `${NETNS_RUN_DIR}/${name}`;
};

/**
 * Creates a named network namespace under /run/netns, as `ip netns add` does:
 * unshare a new netns on this thread, bind-mount its handle, switch back.
 * Returns the path. Throws EEXIST when the name is taken.
 */
export function createNamedNetns(name: string): string {
  const path = namedPath(name);
  warmThreadpool();
  mkdirSync(NETNS_RUN_DIR, { recursive: true, mode: 0o755 });
  close(open(path, O_RDONLY | O_CREAT | O_EXCL, 0o444));
  const orig = open(SELF_NET, O_RDONLY);
  let mounted = false;
  try {
    unshare(CLONE_NEWNET);
    try {
      mount(SELF_NET, path, 'none', MS_BIND);
      mounted = true;
    } finally {
      restore(orig, `new netns ${name}`);
    }
  } catch (err) {
    if (mounted) umount2(path, MNT_DETACH);
    rmSync(path, { force: true });
    throw err;
  } finally {
    close(orig);
  }
  return path;
}

/**
 * Unmounts and removes a named namespace, as `ip netns del` does. The kernel tears
 * the namespace (and links still in it) down asynchronously once nothing holds it.
 * Returns false when there was no such namespace.
 */
export function deleteNamedNetns(name: string): boolean {
  const path = namedPath(name);
  if (!existsSync(path)) return false;
  try {
    umount2(path, MNT_DETACH);
  } catch (err) {
    // EINVAL: not a mount point (a leftover file from an interrupted create).
    if (!(err instanceof SysError && err.code === 'EINVAL')) throw err;
  }
  rmSync(path, { force: true });
  return true;
}
