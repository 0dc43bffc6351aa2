// bpffs housekeeping: where patu pins its maps/programs/links, and safe cleanup
// that can only ever touch a directory under /sys/fs/bpf (never bpffs itself).
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { mount } from '../ffi/libc.js';
import { DEFAULTS } from '../../defaults.js';

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

/** Creates the pin directory (and bpffs, if needed). Returns its absolute path. */
export function ensurePinDir(root: string = DEFAULTS.pinRoot, opts: BpffsOptions = {}): string {
  const abs = assertPinRoot(root);
  ensureBpffs(opts);
  mkdirSync(abs, { recursive: true });
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
