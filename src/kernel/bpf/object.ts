// BPF objects, programs and links over libbpf 1.1. Links are kept as plain
// kernel link fds (bpf_link_create) rather than libbpf's struct bpf_link, so a
// link can be pinned, re-opened from its pin after a restart, and destroyed the
// same way whatever created it.
import koffi from 'koffi';
import { basename } from 'node:path';
import { readSync, unlinkSync } from 'node:fs';
import { raw, captureLibbpf, closeRawFd, errno, type Ptr } from './libbpf.js';
import { BpfError } from './errors.js';
import { TypedMap, type Codec } from './map.js';
import { linkInfoByFd, mapInfoByFd, progInfoByFd, type LinkInfo, type MapInfo } from './introspect.js';
import { open as openFile, O_RDONLY } from '../ffi/libc.js';
import { errnoOf, messageOf } from '../../errors.js';

const O_DIRECTORY = 0o200000;

/** enum bpf_attach_type values used by patu. */
export const AttachType = {
  CGROUP_INET_INGRESS: 0,
  CGROUP_INET_EGRESS: 1,
  CGROUP_INET_SOCK_CREATE: 2,
  CGROUP_SOCK_OPS: 3,
  SK_SKB_STREAM_PARSER: 4,
  SK_SKB_STREAM_VERDICT: 5,
  SK_MSG_VERDICT: 7,
  CGROUP_INET4_CONNECT: 10,
  CGROUP_INET6_CONNECT: 11,
  CGROUP_UDP4_SENDMSG: 14,
  CGROUP_UDP6_SENDMSG: 15,
  CGROUP_UDP4_RECVMSG: 19,
  CGROUP_UDP6_RECVMSG: 20,
  TRACE_ITER: 28,
  CGROUP_INET4_GETPEERNAME: 29,
  CGROUP_INET6_GETPEERNAME: 30,
  CGROUP_INET4_GETSOCKNAME: 31,
  CGROUP_INET6_GETSOCKNAME: 32,
  XDP: 37,
  SK_SKB_VERDICT: 38,
  TCX_INGRESS: 46,
  TCX_EGRESS: 47,
} as const;

export const XDP_FLAGS = { UPDATE_IF_NOEXIST: 1, SKB_MODE: 2, DRV_MODE: 4, HW_MODE: 8, REPLACE: 16 } as const;

function linkCreateOpts(flags: number): Buffer | null {
  if (!flags) return null;
  // struct bpf_link_create_opts { size_t sz; __u32 flags; ... } (64 bytes in libbpf 1.1)
  const b = Buffer.alloc(64);
  b.writeBigUInt64LE(64n, 0);
  b.writeUInt32LE(flags >>> 0, 8);
  return b;
}

/** A kernel BPF link (fd). Closing it detaches unless it is pinned; destroy() always detaches. */
export class BpfLink {
  private pinPath: string | undefined;
  private constructor(private linkFd: number, readonly description: string, pinPath?: string) {
    this.pinPath = pinPath;
  }

  /** @internal */
  static fromFd(fd: number, description: string): BpfLink {
    return new BpfLink(fd, description);
  }

  /** Re-opens a pinned link, e.g. after an agent restart. */
  static fromPin(path: string): BpfLink {
    const fd = raw.bpf_obj_get(path) as number;
    if (fd < 0) throw new BpfError('bpf_obj_get', -fd, { path });
    return new BpfLink(fd, `pinned link ${path}`, path);
  }

  get fd(): number {
    return this.linkFd;
  }

  info(): LinkInfo {
    return linkInfoByFd(this.linkFd);
  }

  pin(path: string): void {
    const rc = raw.bpf_obj_pin(this.linkFd, path) as number;
    if (rc < 0) throw new BpfError('bpf_obj_pin', -rc, { path, program: this.description });
    this.pinPath = path;
  }

  /** Removes the pin; the link stays attached while this fd is open. */
  unpin(): void {
    if (!this.pinPath) return;
    try {
      unlinkSync(this.pinPath);
    } catch (e) {
      if (errnoOf(e) !== 'ENOENT') throw e;
    }
    this.pinPath = undefined;
  }

  /** Atomically swaps the attached program (upgrade without a detach gap). */
  update(progFd: number): void {
    const rc = raw.bpf_link_update(this.linkFd, progFd, null) as number;
    if (rc < 0) throw new BpfError('bpf_link_update', -rc, { program: this.description });
  }

  /**
   * For an iterator link (BpfProgram.attachIter): one pass of the iterator,
   * i.e. bpf_iter_create, read until EOF, close. Returns what the program
   * wrote (bpf_seq_write/bpf_seq_printf). An iterator over sockets walks the
   * network namespace of the calling thread at the moment of this call.
   */
  iterate(): Buffer {
    const fd = raw.bpf_iter_create(this.linkFd) as number;
    if (fd < 0) throw new BpfError('bpf_iter_create', -fd, { program: this.description });
    const chunks: Buffer[] = [];
    try {
      const buf = Buffer.allocUnsafe(64 * 1024);
      for (;;) {
        let n: number;
        try {
          n = readSync(fd, buf, 0, buf.length, null);
        } catch (e) {
          throw new Error(`reading the ${this.description}: ${messageOf(e)}`, { cause: e });
        }
        if (n === 0) break;
        chunks.push(Buffer.from(buf.subarray(0, n)));
      }
    } finally {
      closeRawFd(fd);
    }
    return Buffer.concat(chunks);
  }

  /** Detaches the program now (even if other references or pins exist), unpins and closes. */
  destroy(): void {
    if (this.linkFd < 0) return;
    const rc = raw.bpf_link_detach(this.linkFd) as number;
    // EINVAL/EOPNOTSUPP: link types without detach support; closing releases them.
    if (rc < 0 && -rc !== 22 && -rc !== 95) {
      throw new BpfError('bpf_link_detach', -rc, { program: this.description });
    }
    this.unpin();
    closeRawFd(this.linkFd);
    this.linkFd = -1;
  }

  /** Releases this process's fd; the link lives on only if pinned. */
  close(): void {
    if (this.linkFd < 0) return;
    closeRawFd(this.linkFd);
    this.linkFd = -1;
  }
}

export class BpfProgram {
  private ownFd = -1;
  private pinnedName = '';
  /** @internal */
  constructor(private readonly ptr: Ptr | null, private readonly objectName: string) {}

  /**
   * A program re-opened from its pin (e.g. after an agent restart), without
   * its object. Its section is unknown, so pass attach types explicitly.
   */
  static fromPin(path: string): BpfProgram {
    const fd = raw.bpf_obj_get(path) as number;
    if (fd < 0) throw new BpfError('bpf_obj_get', -fd, { path });
    const p = new BpfProgram(null, `pinned ${path}`);
    p.ownFd = fd;
    try {
      p.pinnedName = progInfoByFd(fd).name;
    } catch (e) {
      closeRawFd(fd);
      throw e;
    }
    return p;
  }

  get name(): string {
    return this.ptr == null ? this.pinnedName : (raw.bpf_program__name(this.ptr) as string);
  }

  /** The kernel's id of the loaded program. */
  get id(): number {
    return progInfoByFd(this.loadedFd('bpf_obj_get_info_by_fd')).id;
  }

  /** Negative (-ENOENT) until the object is loaded. */
  get fd(): number {
    return this.ptr == null ? this.ownFd : (raw.bpf_program__fd(this.ptr) as number);
  }

  /** -1 for a program opened from a pin (the kernel does not report it). */
  get expectedAttachType(): number {
    return this.ptr == null ? -1 : (raw.bpf_program__expected_attach_type(this.ptr) as number);
  }

  /** Closes the fd of a program opened with fromPin (object programs close with their object). */
  close(): void {
    if (this.ownFd >= 0) closeRawFd(this.ownFd);
    this.ownFd = -1;
  }

  /** Skip this program at load() (must be called before load). */
  setAutoload(on: boolean): void {
    if (this.ptr == null) throw new Error(`setAutoload: ${this.name} is a pinned program, already loaded`);
    const rc = raw.bpf_program__set_autoload(this.ptr, on) as number;
    if (rc < 0) throw new BpfError('bpf_program__set_autoload', -rc, { object: this.objectName, program: this.name });
  }

  private loadedFd(op: string): number {
    const fd = this.fd;
    if (fd < 0) throw new BpfError(op, 9 /* EBADF */, { object: this.objectName, program: `${this.name} (not loaded)` });
    return fd;
  }

  /**
   * Attaches to a cgroup2 directory with a BPF link, using the attach type
   * libbpf derived from the program's section (sockops, cgroup/connect4, ...).
   */
  attachCgroup(cgroupPath: string, attachType = this.expectedAttachType): BpfLink {
    if (attachType < 0) throw new Error(`attachCgroup: attach type of ${this.name} unknown, pass it explicitly`);
    const progFd = this.loadedFd('bpf_link_create');
    const cgFd = openFile(cgroupPath, O_RDONLY | O_DIRECTORY);
    try {
      const fd = raw.bpf_link_create(progFd, cgFd, attachType, null) as number;
      if (fd < 0) {
        throw new BpfError('bpf_link_create', -fd, { object: this.objectName, program: this.name, path: cgroupPath });
      }
      return BpfLink.fromFd(fd, `${this.name} on cgroup ${cgroupPath}`);
    } finally {
      closeRawFd(cgFd);
    }
  }

  /**
   * Attaches an sk_msg/sk_skb program to a sockmap/sockhash with
   * bpf_prog_attach: libbpf 1.1 has no sockmap link, so the attachment lives
   * as long as the map does (pin the map to keep it across restarts).
   */
  attachToMap(mapFd: number, attachType: number = AttachType.SK_MSG_VERDICT): void {
    const rc = raw.bpf_prog_attach(this.loadedFd('bpf_prog_attach'), mapFd, attachType, 0) as number;
    if (rc < 0) throw new BpfError('bpf_prog_attach', -rc, { object: this.objectName, program: this.name, map: `fd ${mapFd}` });
  }

  detachFromMap(mapFd: number, attachType: number = AttachType.SK_MSG_VERDICT): void {
    const rc = raw.bpf_prog_detach2(this.loadedFd('bpf_prog_detach2'), mapFd, attachType) as number;
    if (rc < 0) throw new BpfError('bpf_prog_detach2', -rc, { object: this.objectName, program: this.name, map: `fd ${mapFd}` });
  }

  attachXdp(ifindex: number, flags = 0): BpfLink {
    const fd = raw.bpf_link_create(this.loadedFd('bpf_link_create'), ifindex, AttachType.XDP, linkCreateOpts(flags)) as number;
    if (fd < 0) throw new BpfError('bpf_link_create(xdp)', -fd, { object: this.objectName, program: this.name, path: `ifindex ${ifindex}` });
    return BpfLink.fromFd(fd, `${this.name} xdp on ifindex ${ifindex}`);
  }

  /** tcx (kernel >= 6.6): a tc program as a link, no clsact qdisc needed. */
  attachTcx(ifindex: number, direction: 'ingress' | 'egress'): BpfLink {
    const type = direction === 'ingress' ? AttachType.TCX_INGRESS : AttachType.TCX_EGRESS;
    const fd = raw.bpf_link_create(this.loadedFd('bpf_link_create'), ifindex, type, null) as number;
    if (fd < 0) {
      throw new BpfError(`bpf_link_create(tcx ${direction})`, -fd, { object: this.objectName, program: this.name, path: `ifindex ${ifindex}` });
    }
    return BpfLink.fromFd(fd, `${this.name} tcx ${direction} on ifindex ${ifindex}`);
  }

  /**
   * An iterator program (SEC("iter/...")) as a link; run it with
   * BpfLink.iterate(). The link is not tied to a namespace: each iterate()
   * walks the caller's.
   */
  attachIter(): BpfLink {
    const fd = raw.bpf_link_create(this.loadedFd('bpf_link_create'), 0, AttachType.TRACE_ITER, null) as number;
    if (fd < 0) throw new BpfError('bpf_link_create(iter)', -fd, { object: this.objectName, program: this.name });
    return BpfLink.fromFd(fd, `${this.name} iterator`);
  }

  pin(path: string): void {
    const rc = raw.bpf_obj_pin(this.loadedFd('bpf_obj_pin'), path) as number;
    if (rc < 0) throw new BpfError('bpf_obj_pin', -rc, { object: this.objectName, program: this.name, path });
  }
}

/** A map inside a BpfObject (fd valid after load, or after reuse of a pinned map). */
export class BpfMapRef {
  /** @internal */
  constructor(private readonly ptr: Ptr, private readonly objectName: string) {}

  get name(): string {
    return raw.bpf_map__name(this.ptr) as string;
  }

  get fd(): number {
    return raw.bpf_map__fd(this.ptr) as number;
  }

  info(): MapInfo {
    return mapInfoByFd(this.loadedFd('bpf_obj_get_info_by_fd'));
  }

  private loadedFd(op: string): number {
    const fd = this.fd;
    if (fd < 0) throw new BpfError(op, 9, { object: this.objectName, map: `${this.name} (not loaded)` });
    return fd;
  }

  pin(path: string): void {
    const rc = raw.bpf_obj_pin(this.loadedFd('bpf_obj_pin'), path) as number;
    if (rc < 0) throw new BpfError('bpf_obj_pin', -rc, { object: this.objectName, map: this.name, path });
  }

  /**
   * Before load: use this existing map (e.g. another object's) instead of
   * creating one. libbpf dups the fd; the caller keeps its own.
   */
  reuseFd(fd: number): void {
    const rc = raw.bpf_map__reuse_fd(this.ptr, fd) as number;
    if (rc < 0) throw new BpfError('bpf_map__reuse_fd', -rc, { object: this.objectName, map: this.name });
  }

  /** A typed view sharing this object's fd (valid until the object is closed). */
  typed<K, V>(keyCodec: Codec<K>, valueCodec: Codec<V>): TypedMap<K, V> {
    return TypedMap.fromFd(this.loadedFd('bpf_map__fd'), keyCodec, valueCodec, this.name);
  }
}

export interface OpenOptions {
  /** Directory where maps declared with LIBBPF_PIN_BY_NAME are pinned (and reused if already there). */
  pinRoot?: string;
}

export class BpfObject {
  private ptr: Ptr | null;
  private constructor(ptr: Ptr, readonly path: string, readonly name: string) {
    this.ptr = ptr;
  }

  static open(path: string, opts: OpenOptions = {}): BpfObject {
    const log: string[] = [];
    let optsBuf: Buffer | null = null;
    let pinRootBuf: Buffer | null = null;
    if (opts.pinRoot) {
      // struct bpf_object_open_opts (80 bytes in libbpf 1.1): sz@0, pin_root_path@24.
      // libbpf strdup()s the path during open, so the buffer only has to outlive the call.
      pinRootBuf = Buffer.from(opts.pinRoot + '\0');
      optsBuf = Buffer.alloc(80);
      optsBuf.writeBigUInt64LE(80n, 0);
      optsBuf.writeBigUInt64LE(addressOf(pinRootBuf), 24);
    }
    const ptr = captureLibbpf(log, () => raw.bpf_object__open_file(path, optsBuf) as Ptr | null);
    void pinRootBuf;
    if (ptr == null) throw new BpfError('bpf_object__open_file', errno(), { object: path, log: log.join('') });
    const name = raw.bpf_object__name(ptr) as string;
    return new BpfObject(ptr, path, name || basename(path, '.o'));
  }

  private handle(): Ptr {
    if (this.ptr == null) throw new Error(`BPF object ${this.name} is closed`);
    return this.ptr;
  }

  /** Loads every program and creates (or reuses pinned) maps; a verifier rejection becomes a BpfError with its log. */
  load(): void {
    const log: string[] = [];
    const rc = captureLibbpf(log, () => raw.bpf_object__load(this.handle()) as number);
    if (rc < 0) {
      const text = log.join('');
      const failed = /prog '([^']+)': failed to load/.exec(text)?.[1];
      throw new BpfError('bpf_object__load', -rc, { object: this.name, program: failed, log: text });
    }
  }

  program(name: string): BpfProgram {
    const p = raw.bpf_object__find_program_by_name(this.handle(), name) as Ptr | null;
    if (p == null) {
      throw new BpfError('bpf_object__find_program_by_name', 2, { object: this.name, program: `${name} (have: ${this.programs().map((x) => x.name).join(', ')})` });
    }
    return new BpfProgram(p, this.name);
  }

  map(name: string): BpfMapRef {
    const m = raw.bpf_object__find_map_by_name(this.handle(), name) as Ptr | null;
    if (m == null) {
      throw new BpfError('bpf_object__find_map_by_name', 2, { object: this.name, map: `${name} (have: ${this.maps().map((x) => x.name).join(', ')})` });
    }
    return new BpfMapRef(m, this.name);
  }

  programs(): BpfProgram[] {
    const out: BpfProgram[] = [];
    const obj = this.handle();
    for (let p = raw.bpf_object__next_program(obj, null) as Ptr | null; p != null; p = raw.bpf_object__next_program(obj, p) as Ptr | null) {
      out.push(new BpfProgram(p, this.name));
    }
    return out;
  }

  maps(): BpfMapRef[] {
    const out: BpfMapRef[] = [];
    const obj = this.handle();
    for (let m = raw.bpf_object__next_map(obj, null) as Ptr | null; m != null; m = raw.bpf_object__next_map(obj, m) as Ptr | null) {
      out.push(new BpfMapRef(m, this.name));
    }
    return out;
  }

  /** Frees libbpf state and closes program/map fds. Links and pins keep their programs/maps alive. */
  close(): void {
    if (this.ptr == null) return;
    raw.bpf_object__close(this.ptr);
    this.ptr = null;
  }
}

function addressOf(buf: Buffer): bigint {
  return koffi.address(buf);
}
