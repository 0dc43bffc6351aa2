// The one place patu binds libc through koffi. Everything that needs a raw
// syscall (netlink sockets, setns, flock) goes through these typed wrappers,
// which turn a -1 return into a SysError naming the call and errno.
import koffi from 'koffi';
import { constants as osConstants } from 'node:os';

const lib = koffi.load('libc.so.6');

const errnoNames: Record<number, string> = Object.fromEntries(
  Object.entries(osConstants.errno).map(([name, num]) => [num, name]),
);

/** A failed system call: carries errno and its symbolic name (EEXIST, ENOENT, ...). */
export class SysError extends Error {
  readonly errno: number;
  readonly code: string;
  readonly syscall: string;
  constructor(syscall: string, errno: number, detail?: string) {
    const code = errnoNames[errno] ?? `E${errno}`;
    super(`${syscall}${detail ? ` (${detail})` : ''}: ${code} (errno ${errno})`);
    this.name = 'SysError';
    this.errno = errno;
    this.code = code;
    this.syscall = syscall;
  }
}

export const errno = (): number => koffi.errno();

const raw = {
  socket: lib.func('int socket(int domain, int type, int protocol)'),
  bind: lib.func('int bind(int fd, const void *addr, uint32_t addrlen)'),
  sendto: lib.func('intptr_t sendto(int fd, const void *buf, size_t len, int flags, const void *addr, uint32_t addrlen)'),
  recv: lib.func('intptr_t recv(int fd, _Out_ void *buf, size_t len, int flags)'),
  setsockopt: lib.func('int setsockopt(int fd, int level, int name, const void *val, uint32_t len)'),
  getsockopt: lib.func('int getsockopt(int fd, int level, int name, _Out_ void *val, _Inout_ uint32_t *len)'),
  close: lib.func('int close(int fd)'),
  open: lib.func('int open(const char *path, int flags, int mode)'),
  ioctl: lib.func('int ioctl(int fd, unsigned long request, ...)'),
  setns: lib.func('int setns(int fd, int nstype)'),
  unshare: lib.func('int unshare(int flags)'),
  flock: lib.func('int flock(int fd, int op)'),
  mount: lib.func('int mount(const char *src, const char *target, const char *fstype, unsigned long flags, const void *data)'),
  umount2: lib.func('int umount2(const char *target, int flags)'),
  _exit: lib.func('void _exit(int status)'),
};

function check(name: string, rc: number | bigint, detail?: string): number {
  const n = Number(rc);
  if (n < 0) throw new SysError(name, koffi.errno(), detail);
  return n;
}

export const AF_NETLINK = 16;
export const SOCK_RAW = 3;
export const SOCK_CLOEXEC = 0o2000000;
export const O_RDONLY = 0;
export const O_RDWR = 2;
export const O_CREAT = 0o100;
const O_CLOEXEC = 0o2000000;
export const O_NONBLOCK = 0o4000;
export const O_PATH = 0o10000000;
/** ioctl on an nsfs fd: which kind of namespace it is (linux/nsfs.h: _IO(0xb7, 0x3)). */
export const NS_GET_NSTYPE = 0xb703;
export const CLONE_NEWNET = 0x40000000;
export const LOCK_EX = 2;
export const LOCK_NB = 4;
export const LOCK_UN = 8;
export const SOL_SOCKET = 1;
export const SOL_NETLINK = 270;
export const SO_SNDBUF = 7;
export const SO_RCVBUF = 8;
export const NETLINK_EXT_ACK = 11;
export const NETLINK_GET_STRICT_CHK = 12;
export const MS_BIND = 4096;
export const MNT_DETACH = 2;
export const SO_RCVTIMEO = 20;
export const SO_RCVBUFFORCE = 33;
export const MSG_TRUNC = 0x20;
export const MSG_DONTWAIT = 0x40;
/** The socket's network namespace cookie (u64, Linux 5.14+): what bpf_get_netns_cookie() returns for it. */
export const SO_NETNS_COOKIE = 71;

export const socket = (domain: number, type: number, protocol: number): number =>
  check('socket', raw.socket(domain, type, protocol));
export const bind = (fd: number, addr: Buffer): void => {
  check('bind', raw.bind(fd, addr, addr.length));
};
export const sendto = (fd: number, buf: Buffer, addr: Buffer | null): number =>
  check('sendto', raw.sendto(fd, buf, buf.length, 0, addr, addr ? addr.length : 0));
/** Receives into buf, returns the byte count. */
export const recv = (fd: number, buf: Buffer, flags = 0): number =>
  check('recv', raw.recv(fd, buf, buf.length, flags));
export const setsockoptInt = (fd: number, level: number, name: number, value: number): void => {
  const v = Buffer.alloc(4);
  v.writeInt32LE(value);
  check('setsockopt', raw.setsockopt(fd, level, name, v, 4));
};
export const close = (fd: number): void => {
  raw.close(fd);
};
export const open = (path: string, flags: number, mode = 0o644): number =>
  check('open', raw.open(path, flags | O_CLOEXEC, mode), path);
/** ioctl without an argument (NS_GET_NSTYPE, ...): returns its non-negative result. */
export const ioctl = (fd: number, request: number, what?: string): number =>
  check('ioctl', raw.ioctl(fd, request), what);
export const setns = (fd: number, nstype: number): void => {
  check('setns', raw.setns(fd, nstype));
};
export const unshare = (flags: number): void => {
  check('unshare', raw.unshare(flags));
};
export const flock = (fd: number, op: number, what?: string): void => {
  check('flock', raw.flock(fd, op), what);
};
export const mount = (src: string, target: string, fstype: string | null, flags: number): void => {
  check('mount', raw.mount(src, target, fstype, flags, null), target);
};
export const umount2 = (target: string, flags: number): void => {
  check('umount2', raw.umount2(target, flags), target);
};
/**
 * Ends the process at once (exit_group), without Node's teardown. For one case only:
 * Node's exit joins every worker thread, and a worker blocked in a system call that
 * never returns (an open() of a FIFO) would keep the process alive forever.
 */
export const exitNow = (status: number): never => {
  raw._exit(status);
  throw new Error('unreachable: _exit returned');
};
/** getsockopt into a buffer of the option's size; returns the length the kernel wrote. */
export const getsockoptBuf = (fd: number, level: number, name: number, out: Buffer): number => {
  const len = [out.length];
  check('getsockopt', raw.getsockopt(fd, level, name, out, len));
  return len[0]!;
};
/** setsockopt with a raw option value (struct timeval, ...). */
export const setsockoptBuf = (fd: number, level: number, name: number, value: Buffer): void => {
  check('setsockopt', raw.setsockopt(fd, level, name, value, value.length));
};
