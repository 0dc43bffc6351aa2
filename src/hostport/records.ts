// hostPort records: which pod holds which node port. The CNI plugin writes them
// (ADD: runtimeConfig.portMappings, capability "portMappings") and removes them
// (DEL, GC); the agent reads them and programs the service maps (it is the only
// writer of those: DESIGN-16.md). One directory per IPAM dataDir, shared by
// every network using it, because a node port is node-wide:
//
//   <ipam.dataDir>/_hostports/       ('_' never starts a network name, so never an IPAM directory)
//     lock                 flock(LOCK_EX) around every check-and-create and every removal
//     tcp-any-8080         one file per mapping: <proto>-<hostIP, or 'any' for ''/0.0.0.0>-<hostPort>
//     udp-10.0.0.5-53      content: JSON {network, containerId, ifname, podIp, containerPort}
//     .tmp.<name>.<pid>.<rnd>  a record being written; only ever seen after a crash
//
// A record is created like an IPAM record: written to a temp file, then hard-linked
// to its name (link(2) fails with EEXIST and is atomic), so a name exists only with
// its whole content and a kill -9 leaves at worst a temp file, swept by the next
// locked writer. The O_EXCL-style link is what makes "two pods, one port" lose on the
// second ADD; the lock only makes the wildcard rule exact: an 'any' mapping conflicts
// with every specific address on the same port and protocol, which no single file
// name can express.
import * as fs from 'node:fs';
import { join } from 'node:path';
import { errnoOf, messageOf, PatuError } from '../errors.js';
import { canonicalIp, parseIp } from '../net/cidr.js';
import { flock, open as libcOpen, LOCK_EX, LOCK_NB, LOCK_UN, O_CREAT, O_RDWR, SysError } from '../kernel/ffi/libc.js';
import { noteLockFd } from '../ipam/store.js';

export type HostPortProtocol = 'tcp' | 'udp';

/** One runtimeConfig.portMappings entry, checked (netconf.ts) and normalised. */
export interface PortMapping {
  hostPort: number;
  containerPort: number;
  protocol: HostPortProtocol;
  /** Canonical IPv4 address, or '' for every node address. */
  hostIP: string;
}

/** Who holds a mapping and where it leads. */
export interface HostPortOwner {
  network: string;
  containerId: string;
  ifname: string;
  podIp: string;
}

export interface HostPortRecord extends HostPortOwner {
  /** The file name: `tcp-any-8080`. */
  name: string;
  protocol: HostPortProtocol;
  hostIP: string;
  hostPort: number;
  containerPort: number;
}

export const HOSTPORT_DIR = '_hostports';
const LOCK_FILE = 'lock';
const TEMP_PREFIX = '.tmp.';
const DIR_MODE = 0o700;
const FILE_MODE = 0o600;
/** A record is a few hundred bytes; container ids are capped by env.ts. */
const MAX_RECORD = 16 << 10;
export const DEFAULT_HOSTPORT_LOCK_MS = 10_000;
const NAME = /^(tcp|udp)-(any|\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})-(\d{1,5})$/;

export const hostPortDir = (dataDir: string): string => join(dataDir, HOSTPORT_DIR);

/** `tcp-any-8080`, `udp-10.0.0.5-53`. */
export const recordName = (m: Pick<PortMapping, 'protocol' | 'hostIP' | 'hostPort'>): string =>
  `${m.protocol}-${m.hostIP === '' ? 'any' : m.hostIP}-${m.hostPort}`;

/** The mapping a file name stands for, or undefined for a name that is not a record. */
export function parseRecordName(name: string): Pick<PortMapping, 'protocol' | 'hostIP' | 'hostPort'> | undefined {
  const m = NAME.exec(name);
  if (!m) return undefined;
  const hostPort = Number(m[3]);
  if (hostPort < 1 || hostPort > 65535) return undefined;
  let hostIP = '';
  if (m[2] !== 'any') {
    try {
      hostIP = canonicalIp(m[2]!);
    } catch {
      return undefined;
    }
    // Only the canonical spelling is a record name (no '010.0.0.1' twin of '10.0.0.1').
    if (hostIP !== m[2]) return undefined;
  }
  return { protocol: m[1] as HostPortProtocol, hostIP, hostPort };
}

/** Whether two mappings claim the same node port: same protocol and port, and the same address or either is 'any'. */
export const overlaps = (a: Pick<PortMapping, 'protocol' | 'hostIP' | 'hostPort'>, b: Pick<PortMapping, 'protocol' | 'hostIP' | 'hostPort'>): boolean =>
  a.protocol === b.protocol && a.hostPort === b.hostPort && (a.hostIP === '' || b.hostIP === '' || a.hostIP === b.hostIP);

const describe = (m: Pick<PortMapping, 'protocol' | 'hostIP' | 'hostPort'>): string =>
  `hostPort ${m.hostPort}/${m.protocol.toUpperCase()} on ${m.hostIP === '' ? 'every node address' : m.hostIP}`;

const sameOwner = (a: HostPortOwner, b: HostPortOwner): boolean =>
  a.network === b.network && a.containerId === b.containerId && a.ifname === b.ifname;

/** Another attachment already holds an overlapping mapping: the second ADD fails with this. */
export class HostPortConflictError extends PatuError {
  readonly code = 'HOSTPORT_CONFLICT';
  constructor(readonly wanted: PortMapping, readonly held: HostPortRecord, sameRequest = false) {
    super(
      sameRequest
        ? `${describe(wanted)} (to container port ${wanted.containerPort}) overlaps ${describe(held)} (to container port ${held.containerPort}) in the same request`
        : `${describe(wanted)} is already taken: ${describe(held)} is mapped to ${held.podIp}:${held.containerPort} ` +
          `for container ${held.containerId} (${held.ifname}, network ${held.network}); two pods cannot map the same hostIP, port and protocol`,
    );
  }
}

export class HostPortLockTimeoutError extends PatuError {
  readonly code = 'HOSTPORT_LOCK_TIMEOUT';
  constructor(path: string, ms: number) {
    super(`flock(LOCK_EX) on ${path}: still held by another process after ${ms} ms`);
  }
}

// One lock fd per lock file per process, kept open (as the IPAM store does): the agent
// closes the fds of a worker it abandons, which is only safe for fds that stay ours.
const lockFds = new Map<string, number>();
const sleeper = new Int32Array(new SharedArrayBuffer(4));
/** One read buffer for every record (reads are synchronous): not 16 KiB zero-filled per file. */
const readBuf = Buffer.allocUnsafe(MAX_RECORD);

function parseRecord(name: string, text: string): HostPortRecord | undefined {
  const key = parseRecordName(name);
  if (!key) return undefined;
  let v: Record<string, unknown>;
  try {
    v = JSON.parse(text) as Record<string, unknown>;
  } catch {
    return undefined;
  }
  if (v === null || typeof v !== 'object') return undefined;
  const { network, containerId, ifname, podIp, containerPort } = v;
  if (typeof network !== 'string' || typeof containerId !== 'string' || typeof ifname !== 'string' || typeof podIp !== 'string') return undefined;
  if (typeof containerPort !== 'number' || !Number.isInteger(containerPort) || containerPort < 1 || containerPort > 65535) return undefined;
  try {
    if (parseIp(podIp).family !== 4) return undefined;
  } catch {
    return undefined;
  }
  return { name, ...key, network, containerId, ifname, podIp, containerPort };
}

/** The on-disk hostPort records of one data directory. */
export class HostPortStore {
  readonly lockPath: string;
  private constructor(readonly dir: string, readonly lockTimeoutMs: number) {
    this.lockPath = join(dir, LOCK_FILE);
  }

  /** Opens the directory, creating it (0700: records say which pod holds what) when `create`. */
  static open(dataDir: string, opts: { create?: boolean; lockTimeoutMs?: number } = {}): HostPortStore {
    const dir = hostPortDir(dataDir);
    if (opts.create !== false) {
      try {
        fs.mkdirSync(dir, { recursive: true, mode: DIR_MODE });
      } catch (err) {
        throw new Error(`hostPort records: cannot create ${dir}: ${errnoOf(err) ?? messageOf(err)}`, { cause: err });
      }
    }
    return new HostPortStore(dir, opts.lockTimeoutMs ?? DEFAULT_HOSTPORT_LOCK_MS);
  }

  /** Whether the directory exists (DEL and GC need nothing when no pod ever mapped a port). */
  get exists(): boolean {
    return fs.existsSync(this.dir);
  }

  withLock<T>(fn: () => T): T {
    let fd = lockFds.get(this.lockPath);
    if (fd === undefined) {
      fd = libcOpen(this.lockPath, O_RDWR | O_CREAT, FILE_MODE);
      lockFds.set(this.lockPath, fd);
      noteLockFd(fd);
    }
    const deadline = Date.now() + this.lockTimeoutMs;
    let wait = 0.25;
    for (;;) {
      try {
        flock(fd, LOCK_EX | LOCK_NB, this.lockPath);
        break;
      } catch (err) {
        if (!(err instanceof SysError) || (err.errno !== 11 && err.errno !== 4)) throw err;
      }
      if (Date.now() >= deadline) throw new HostPortLockTimeoutError(this.lockPath, this.lockTimeoutMs);
      Atomics.wait(sleeper, 0, 0, wait);
      wait = Math.min(wait * 2, 2);
    }
    try {
      return fn();
    } finally {
      flock(fd, LOCK_UN, this.lockPath);
    }
  }

  /**
   * Every record. Files that are not records (a temp file, something a person put
   * there, a record that cannot be read as one) are skipped, and reported through
   * `bad` when given; with `sweep` (the lock held) leftover temp files are removed.
   */
  list(opts: { sweep?: boolean; bad?: (name: string, problem: string) => void } = {}): HostPortRecord[] {
    const names = readdirOrEmpty(this.dir);
    const out: HostPortRecord[] = [];
    for (const name of names.sort()) {
      if (name === LOCK_FILE) continue;
      if (name.startsWith(TEMP_PREFIX)) {
        if (opts.sweep) fs.rmSync(join(this.dir, name), { force: true });
        continue;
      }
      if (!parseRecordName(name)) {
        opts.bad?.(name, 'not a hostPort record name (<tcp|udp>-<any|IPv4>-<port>)');
        continue;
      }
      const text = this.read(name);
      if (text === undefined) continue; // removed meanwhile
      const rec = parseRecord(name, text);
      if (rec) out.push(rec);
      else opts.bad?.(name, 'content is not a hostPort record (JSON with network, containerId, ifname, podIp, containerPort)');
    }
    return out;
  }

  /** A record's text; undefined when gone. Never blocks on a FIFO and never follows a symlink. */
  private read(name: string): string | undefined {
    let fd: number;
    try {
      fd = fs.openSync(join(this.dir, name), fs.constants.O_RDONLY | fs.constants.O_NONBLOCK | fs.constants.O_NOFOLLOW);
    } catch (err) {
      if (errnoOf(err) === 'ENOENT') return undefined;
      if (errnoOf(err) === 'ELOOP') return '';
      throw err;
    }
    try {
      if (!fs.fstatSync(fd).isFile()) return '';
      return readBuf.toString('utf8', 0, fs.readSync(fd, readBuf, 0, MAX_RECORD, 0));
    } finally {
      fs.closeSync(fd);
    }
  }

  /**
   * Records every mapping for `owner`, or none: the first conflict (with a record of
   * another attachment, or between two of these mappings) removes what this call
   * created and throws HostPortConflictError. A record the same attachment already
   * holds (a retried ADD) is rewritten with the new pod address. Returns the names held.
   */
  reserve(owner: HostPortOwner, mappings: readonly PortMapping[]): string[] {
    if (mappings.length === 0) return [];
    return this.withLock(() => {
      const existing = this.list({ sweep: true });
      const created: string[] = [];
      const held: string[] = [];
      try {
        for (let i = 0; i < mappings.length; i++) {
          const m = mappings[i]!;
          const name = recordName(m);
          // Two entries of one request: the same port twice is one mapping asked twice
          // only if it leads to the same container port.
          for (let j = 0; j < i; j++) {
            const o = mappings[j]!;
            if (overlaps(m, o) && !(recordName(o) === name && o.containerPort === m.containerPort)) {
              throw new HostPortConflictError(m, { ...owner, name: recordName(o), ...o }, true);
            }
          }
          if (held.includes(name)) continue;
          const clash = existing.find((r) => overlaps(m, r) && !(sameOwner(r, owner) && r.name === name));
          if (clash) throw new HostPortConflictError(m, clash);
          const mine = existing.find((r) => r.name === name);
          const body = JSON.stringify({ ...owner, containerPort: m.containerPort, protocol: m.protocol, hostIP: m.hostIP, hostPort: m.hostPort });
          if (mine) {
            this.replace(name, body);
          } else {
            if (!this.create(name, body)) {
              // Only a writer that does not take the lock gets here: re-read and report.
              const now = this.list().find((r) => r.name === name);
              throw now ? new HostPortConflictError(m, now) : new Error(`hostPort records: ${name} appeared and vanished during ADD; retry`);
            }
            created.push(name);
          }
          held.push(name);
        }
        return held;
      } catch (err) {
        for (const name of created) fs.rmSync(join(this.dir, name), { force: true });
        throw err;
      }
    });
  }

  /** Creates `name` with `body` via a temp file and link(2); false when it exists. */
  private create(name: string, body: string): boolean {
    const tmp = join(this.dir, `${TEMP_PREFIX}${name}.${process.pid}.${Math.random().toString(36).slice(2, 8)}`);
    fs.writeFileSync(tmp, body, { flag: 'wx', mode: FILE_MODE });
    try {
      fs.linkSync(tmp, join(this.dir, name));
      return true;
    } catch (err) {
      if (errnoOf(err) === 'EEXIST') return false;
      throw err;
    } finally {
      fs.rmSync(tmp, { force: true });
    }
  }

  /** Rewrites a record this attachment holds (temp file + rename: never half a record). */
  private replace(name: string, body: string): void {
    const tmp = join(this.dir, `${TEMP_PREFIX}${name}.${process.pid}.${Math.random().toString(36).slice(2, 8)}`);
    fs.writeFileSync(tmp, body, { flag: 'wx', mode: FILE_MODE });
    try {
      fs.renameSync(tmp, join(this.dir, name));
    } catch (err) {
      fs.rmSync(tmp, { force: true });
      throw err;
    }
  }

  /** Removes the records of one attachment (DEL, a failed ADD's rollback); returns their names. */
  releaseOwner(owner: Pick<HostPortOwner, 'network' | 'containerId' | 'ifname'>): string[] {
    return this.releaseWhere((r) => r.network === owner.network && r.containerId === owner.containerId && r.ifname === owner.ifname);
  }

  /** Removes the named records (a failed ADD's rollback): only those still held by `owner`. */
  releaseNames(owner: HostPortOwner, names: readonly string[]): string[] {
    const set = new Set(names);
    return this.releaseWhere((r) => set.has(r.name) && sameOwner(r, owner));
  }

  /**
   * GC: removes the records of `network` whose attachment is not in `valid`. Records of
   * other networks sharing this directory are not this GC's to judge.
   */
  gc(network: string, valid: readonly { containerId: string; ifname: string }[]): string[] {
    const keep = new Set(valid.map((v) => `${v.containerId}\n${v.ifname}`));
    return this.releaseWhere((r) => r.network === network && !keep.has(`${r.containerId}\n${r.ifname}`));
  }

  private releaseWhere(pred: (r: HostPortRecord) => boolean): string[] {
    // Every DEL comes here, hostPorts or not: with no record at all (the common case),
    // one readdir and no lock. A record created meanwhile belongs to an ADD that is
    // not this DEL's pod (the runtime does not run ADD and DEL of one pod at once).
    const names = readdirOrEmpty(this.dir);
    if (!names.some((n) => parseRecordName(n))) return [];
    return this.withLock(() => {
      const gone: string[] = [];
      for (const r of this.list({ sweep: true })) {
        if (!pred(r)) continue;
        fs.rmSync(join(this.dir, r.name), { force: true });
        gone.push(r.name);
      }
      return gone;
    });
  }
}

/** The names in dir; none when it does not exist yet (no hostPort was ever recorded). */
function readdirOrEmpty(dir: string): string[] {
  try {
    return fs.readdirSync(dir);
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return [];
    throw err;
  }
}
