// Which file-system paths patu accepts from configuration for its own state (IPAM
// data, pins, sockets). Import-free (node:path only), so every layer can apply it.
//
// Why: a path under /proc, /sys or /dev is never state storage, and some of them
// are traps. mkdir -p of an `ipam.dataDir` under /proc made Node's recursive
// mkdirSync spin at 94% CPU forever (issue 15), and the agent with it. `..` makes
// a path mean something other than what it reads as, so it is refused outright.
import { posix } from 'node:path';

const KERNEL_TREES = ['/proc', '/sys', '/dev'];

/**
 * Why `p` is not acceptable as a state path, or undefined when it is. `allowUnder`
 * names a kernel tree that is the point of this path (bpffs pins live under /sys/fs/bpf).
 */
export function unsafePathProblem(p: string, allowUnder?: string): string | undefined {
  if (p.length === 0) return 'must not be empty';
  if (p.length > 4096) return `must be at most 4096 characters (PATH_MAX), got ${p.length}`;
  if (p.includes('\0')) return 'must not contain a NUL byte';
  if (!p.startsWith('/')) return `must be an absolute path, got '${p}'`;
  if (p.split('/').includes('..')) return `must not contain '..', got '${p}'`;
  const norm = posix.normalize(p);
  if (allowUnder && (norm === allowUnder || norm.startsWith(`${allowUnder}/`))) return undefined;
  const tree = KERNEL_TREES.find((t) => norm === t || norm.startsWith(`${t}/`));
  if (tree) return `must not be under ${tree} (kernel interfaces, not storage), got '${p}'`;
  return undefined;
}
