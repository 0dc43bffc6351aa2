// sysctl through /proc/sys. Network sysctls resolve against the netns of the task
// that opens the file, i.e. the calling thread: node's *Sync fs calls run on the
// calling thread, so inside withNetns() they read and write the pod's values
// (test/integration/netlink.test.ts proves it).
import { readFileSync, writeFileSync } from 'node:fs';
import { SysError } from './ffi/libc.js';
import { messageOf } from '../errors.js';

/**
 * 'net.ipv4.ip_forward' -> /proc/sys/net/ipv4/ip_forward. A key written with '/'
 * separators is taken as a path as is, for interface names containing dots
 * ('net/ipv4/conf/eth0.100/rp_filter'), like sysctl(8) allows.
 */
export function sysctlPath(key: string): string {
  if (key.length === 0 || key.includes('..') || key.startsWith('/') || key.startsWith('.')) {
    throw new Error(`invalid sysctl key '${key}'`);
  }
  return `/proc/sys/${key.includes('/') ? key : key.replaceAll('.', '/')}`;
}

/** The value with its trailing newline removed. */
export function readSysctl(key: string): string {
  const path = sysctlPath(key);
  try {
    return readFileSync(path, 'utf8').replace(/\n$/, '');
  } catch (err) {
    throw wrap(err, 'reading', key, path);
  }
}

export function writeSysctl(key: string, value: string): void {
  const path = sysctlPath(key);
  try {
    writeFileSync(path, value);
  } catch (err) {
    throw wrap(err, `writing '${value}' to`, key, path);
  }
}

function wrap(err: unknown, what: string, key: string, path: string): Error {
  const errno = (err as { errno?: unknown } | null)?.errno;
  if (typeof errno === 'number') return new SysError(`sysctl ${key}`, -errno, `${what} ${path}`);
  return err instanceof Error ? err : new Error(messageOf(err));
}
