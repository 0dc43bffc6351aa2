// The on-disk IPAM store, laid out like the reference host-local plugin's:
//
//   <dataDir>/<network>/
//     lock                    flock(LOCK_EX) serialises every state change
//     10.200.0.2              one file per address held: "<containerID>\n<ifname>"
//     fd00:200::2
//     last_reserved_ip.0      round-robin cursor of range set 0 (a hint)
//     .tmp.<ip>.<pid>.<rnd>   a record being written; only ever seen after a crash
//
// Crash safety: a record is written to a temp file, fsync'd, then hard-linked to its
// final name. link(2) is atomic and fails with EEXIST, so the final name either does
// not exist or names a complete, durable record: a kill -9 at any point leaves at
// worst a temp file, which every later locked reader removes. The directory is
// fsync'd after the link so an ADD that returned survives a power cut too.
//
// Locking: the kernel drops a flock when the holder's last fd closes, including on
// SIGKILL, so a killed ADD never wedges the next one. Waiting polls LOCK_NB with a
// deadline instead of blocking in flock(2): the agent serves CNI requests in-process
// and must get an error (IpamLockTimeoutError), not a hung event loop.
import * as fs from 'node:fs';
import { join } from 'node:path';
import { flock, open as libcOpen, close as libcClose, O_CREAT, O_RDWR, LOCK_EX, LOCK_NB, LOCK_UN, SysError } from '../kernel/ffi/libc.js';
import { canonicalIp, parseIp } from './cidr.js';

export interface Reservation {
  ip: string;
  containerId: string;
  ifname: string;
}

export class IpamLockTimeoutError extends Error {
  constructor(lockPath: string, ms: number) {
    super(`flock(LOCK_EX) on ${lockPath}: still held by another process after ${ms} ms`);
    this.name = 'IpamLockTimeoutError';
  }
}

export const LOCK_FILE = 'lock';
export const TEMP_PREFIX = '.tmp.';
export const LAST_RESERVED_PREFIX = 'last_reserved_ip.';
export const DEFAULT_LOCK_TIMEOUT_MS = 30_000;

const EWOULDBLOCK = 11;
const EINTR = 4;
const NETWORK_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;

// One lock fd per lock file per process, with a hold count: two IpamStore objects
// for the same network in one process (the agent) must not flock against each other
// on separate open file descriptions, which would deadlock a single thread.
const held = new Map<string, { fd: number; depth: number }>();

const sleeper = new Int32Array(new SharedArrayBuffer(4));
const sleepMs = (ms: number): void => {
  Atomics.wait(sleeper, 0, 0, ms);
};

// A record is "<containerID>\n<ifname>": container ids are at most a few hundred bytes.
const readBuf = Buffer.alloc(4096);

const validOwnerPart = (v: string): boolean => v.length > 0 && !/[\r\n\0]/.test(v);

export class IpamStore {
  readonly dir: string;
  readonly lockPath: string;
  lockTimeoutMs: number;

  private constructor(dir: string, lockTimeoutMs: number) {
    this.dir = dir;
    this.lockPath = join(dir, LOCK_FILE);
    this.lockTimeoutMs = lockTimeoutMs;
  }

  /** Opens (creating directories as needed) the store of one network. */
  static open(dataDir: string, network: string, opts: { lockTimeoutMs?: number } = {}): IpamStore {
    if (!NETWORK_NAME.test(network)) {
      throw new Error(`IPAM store: network name '${network}' must start with a letter or digit and hold only letters, digits, _ . -`);
    }
    const dir = join(dataDir, network);
    fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
    return new IpamStore(dir, opts.lockTimeoutMs ?? DEFAULT_LOCK_TIMEOUT_MS);
  }

  /** Whether this process holds the store's lock. */
  get locked(): boolean {
    return (held.get(this.lockPath)?.depth ?? 0) > 0;
  }

  /** Takes the exclusive lock (re-entrant within the process). */
  lock(timeoutMs = this.lockTimeoutMs): void {
    let h = held.get(this.lockPath);
    if (!h) {
      h = { fd: libcOpen(this.lockPath, O_RDWR | O_CREAT, 0o644), depth: 0 };
      held.set(this.lockPath, h);
    }
    if (h.depth > 0) {
      h.depth++;
      return;
    }
    const deadline = Date.now() + timeoutMs;
    let wait = 0.25;
    for (;;) {
      try {
        flock(h.fd, LOCK_EX | LOCK_NB, this.lockPath);
        break;
      } catch (err) {
        if (!(err instanceof SysError) || (err.errno !== EWOULDBLOCK && err.errno !== EINTR)) throw err;
      }
      if (Date.now() >= deadline) throw new IpamLockTimeoutError(this.lockPath, timeoutMs);
      sleepMs(wait);
      wait = Math.min(wait * 2, 2);
    }
    h.depth = 1;
  }

  unlock(): void {
    const h = held.get(this.lockPath);
    if (!h || h.depth === 0) throw new Error(`IPAM store: unlock of ${this.lockPath} without holding the lock`);
    h.depth--;
    if (h.depth === 0) flock(h.fd, LOCK_UN, this.lockPath);
  }

  withLock<T>(fn: () => T): T {
    this.lock();
    try {
      return fn();
    } finally {
      this.unlock();
    }
  }

  /** Closes the lock fd if nothing in this process holds the lock. */
  close(): void {
    const h = held.get(this.lockPath);
    if (h && h.depth === 0) {
      libcClose(h.fd);
      held.delete(this.lockPath);
    }
  }

  private recordPath(ip: string): string {
    return join(this.dir, canonicalIp(ip));
  }

  /**
   * Records `ip` as held by containerId/ifname. Returns false if the address is
   * already held (by anyone). Call with the lock held.
   */
  reserve(ip: string, containerId: string, ifname: string): boolean {
    if (!validOwnerPart(containerId)) throw new Error(`IPAM store: container id ${JSON.stringify(containerId)} is empty or holds a line break`);
    if (!validOwnerPart(ifname)) throw new Error(`IPAM store: ifname ${JSON.stringify(ifname)} is empty or holds a line break`);
    if (Buffer.byteLength(containerId) + Buffer.byteLength(ifname) + 1 > readBuf.length) {
      throw new Error(`IPAM store: container id + ifname exceed ${readBuf.length} bytes`);
    }
    const name = canonicalIp(ip);
    const final = join(this.dir, name);
    const tmp = join(this.dir, `${TEMP_PREFIX}${name}.${process.pid}.${Math.random().toString(36).slice(2, 8)}`);
    const fd = fs.openSync(tmp, 'wx', 0o644);
    try {
      fs.writeSync(fd, `${containerId}\n${ifname}`);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    try {
      fs.linkSync(tmp, final);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw err;
    } finally {
      fs.rmSync(tmp, { force: true });
    }
    this.syncDir();
    return true;
  }

  /** Forgets `ip`; returns whether it was held. */
  release(ip: string): boolean {
    try {
      fs.unlinkSync(this.recordPath(ip));
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw err;
    }
  }

  releaseByOwner(containerId: string, ifname: string): string[] {
    const ips = this.findByOwner(containerId, ifname);
    for (const ip of ips) this.release(ip);
    return ips;
  }

  findByOwner(containerId: string, ifname: string): string[] {
    const cid = containerId.trim();
    return this.list()
      .filter((r) => r.containerId === cid && r.ifname === ifname)
      .map((r) => r.ip);
  }

  /** Addresses held, from the directory listing alone (no record is read). */
  heldIps(): string[] {
    return this.names().ips;
  }

  /**
   * Every record. A record whose content cannot be read as an owner still holds its
   * address (containerId ''), so it is never handed out twice; GC releases it.
   * With the lock held, leftover temp files of crashed writers are removed.
   */
  list(): Reservation[] {
    const out: Reservation[] = [];
    for (const ip of this.names().ips) {
      let text: string;
      try {
        // open+read+close into one buffer: a third cheaper than readFileSync, and
        // ADD reads every record (110 pods per node by default).
        const fd = fs.openSync(join(this.dir, ip), 'r');
        try {
          text = readBuf.toString('utf8', 0, fs.readSync(fd, readBuf, 0, readBuf.length, 0));
        } finally {
          fs.closeSync(fd);
        }
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue; // released by a locked writer meanwhile
        throw err;
      }
      // host-local writes "\r\n" between the two; older host-local wrote the id only.
      const [cid = '', ifn = ''] = text.split(/\r?\n/);
      out.push({ ip, containerId: cid.trim(), ifname: ifn.trim() });
    }
    return out;
  }

  private names(): { ips: string[] } {
    const ips: string[] = [];
    const sweep = this.locked;
    for (const name of fs.readdirSync(this.dir)) {
      if (name.startsWith(TEMP_PREFIX)) {
        if (sweep) fs.rmSync(join(this.dir, name), { force: true });
        continue;
      }
      if (name === LOCK_FILE || name.startsWith(LAST_RESERVED_PREFIX)) continue;
      try {
        parseIp(name);
      } catch {
        continue; // not ours (an editor's backup, a README): never an address
      }
      ips.push(name);
    }
    return { ips };
  }

  /** Removes temp files left by crashed writers; needs the lock. Returns their names. */
  sweepTemp(): string[] {
    if (!this.locked) throw new Error(`IPAM store: sweeping ${this.dir} needs the lock`);
    const gone = fs.readdirSync(this.dir).filter((n) => n.startsWith(TEMP_PREFIX));
    for (const n of gone) fs.rmSync(join(this.dir, n), { force: true });
    return gone;
  }

  /** The last address handed out from range set `setIndex`, if recorded and parseable. */
  lastReserved(setIndex: number): string | undefined {
    let text: string;
    try {
      text = fs.readFileSync(join(this.dir, `${LAST_RESERVED_PREFIX}${setIndex}`), 'utf8').trim();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
    try {
      return canonicalIp(text);
    } catch {
      return undefined;
    }
  }

  /**
   * Atomic (temp + rename) but not fsync'd: the cursor only decides where the next
   * search starts, so losing an update to a power cut costs nothing but order.
   */
  setLastReserved(setIndex: number, ip: string): void {
    const final = join(this.dir, `${LAST_RESERVED_PREFIX}${setIndex}`);
    const tmp = join(this.dir, `${TEMP_PREFIX}${LAST_RESERVED_PREFIX}${setIndex}.${process.pid}`);
    fs.writeFileSync(tmp, canonicalIp(ip));
    fs.renameSync(tmp, final);
  }

  private syncDir(): void {
    const fd = fs.openSync(this.dir, 'r');
    try {
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
  }
}
