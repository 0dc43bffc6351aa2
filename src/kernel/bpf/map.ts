// Typed access to BPF maps. A TypedMap pairs a map fd with key/value codecs
// whose sizes were checked against the kernel's own key_size/value_size, so a
// layout drift between C and TS fails loudly at open time instead of silently
// corrupting entries. Calls go straight to libbpf's low-level bpf_map_* (one
// syscall each, ~1.5 us) with preallocated scratch buffers.
import { readFileSync } from 'node:fs';
import { raw, closeRawFd } from './libbpf.js';
import { BpfError, BpfMapSizeError } from './errors.js';
import { mapInfoByFd, type MapInfo } from './introspect.js';

export interface Codec<T> {
  size: number;
  /** C alignment of the type, used by structCodec for padding; defaults to 1. */
  align?: number;
  /** For struct codecs: where each field sits, to compare with the C layout in BTF (btf.ts). */
  fields?: readonly CodecField[];
  encode(v: T, buf: Buffer, off: number): void;
  decode(buf: Buffer, off: number): T;
}

export const u8: Codec<number> = {
  size: 1, align: 1,
  encode: (v, b, o) => { b.writeUInt8(v, o); },
  decode: (b, o) => b.readUInt8(o),
};
export const u16: Codec<number> = {
  size: 2, align: 2,
  encode: (v, b, o) => { b.writeUInt16LE(v, o); },
  decode: (b, o) => b.readUInt16LE(o),
};
/** Host-order (little-endian here) __u32. */
export const u32: Codec<number> = {
  size: 4, align: 4,
  encode: (v, b, o) => { b.writeUInt32LE(v, o); },
  decode: (b, o) => b.readUInt32LE(o),
};
/** __u64 as bigint (cookies and counters exceed 2^53). */
export const u64: Codec<bigint> = {
  size: 8, align: 8,
  encode: (v, b, o) => { b.writeBigUInt64LE(v, o); },
  decode: (b, o) => b.readBigUInt64LE(o),
};
/** Big-endian 16-bit value, for ports kept in network order. */
export const be16: Codec<number> = {
  size: 2, align: 2,
  encode: (v, b, o) => { b.writeUInt16BE(v, o); },
  decode: (b, o) => b.readUInt16BE(o),
};

/** Dotted IPv4 string <-> 4 bytes in network order (a __be32 in C, as the kernel stores addresses). */
export const ipv4: Codec<string> = {
  size: 4, align: 4,
  encode(v, b, o) {
    const parts = v.split('.');
    if (parts.length !== 4) throw new Error(`invalid IPv4 address ${JSON.stringify(v)}`);
    for (let i = 0; i < 4; i++) {
      const s = parts[i] ?? '';
      const n = Number(s);
      if (!/^\d{1,3}$/.test(s) || n > 255) throw new Error(`invalid IPv4 address ${JSON.stringify(v)}`);
      b[o + i] = n;
    }
  },
  decode: (b, o) => `${b[o]}.${b[o + 1]}.${b[o + 2]}.${b[o + 3]}`,
};

/** Fixed-size raw bytes (copied out on decode). */
export function bytes(size: number): Codec<Buffer> {
  return {
    size, align: 1,
    encode(v, b, o) {
      if (v.length !== size) throw new Error(`bytes codec: expected ${size} bytes, got ${v.length}`);
      v.copy(b, o);
    },
    decode: (b, o) => Buffer.from(b.subarray(o, o + size)),
  };
}

export interface CodecField {
  /** The TypeScript name (camelCase); the C name is its snake_case. */
  name: string;
  offset: number;
  size: number;
}

type FieldsOf<S> = { [K in keyof S]: Codec<S[K]> };

/**
 * A C struct from named field codecs, laid out in the given key order with
 * natural C alignment and trailing padding, so `structCodec({a: u8, b: u32})`
 * is 8 bytes like `struct { __u8 a; __u32 b; }`. Padding bytes encode as zero
 * (hash maps compare keys bytewise).
 */
export function structCodec<S extends object>(fields: FieldsOf<S>): Codec<S> {
  const layout: { name: keyof S; codec: Codec<unknown>; off: number }[] = [];
  let off = 0;
  let maxAlign = 1;
  for (const name of Object.keys(fields) as (keyof S)[]) {
    const codec = fields[name] as Codec<unknown>;
    const align = codec.align ?? 1;
    off = Math.ceil(off / align) * align;
    layout.push({ name, codec, off });
    off += codec.size;
    maxAlign = Math.max(maxAlign, align);
  }
  const size = Math.ceil(off / maxAlign) * maxAlign;
  return {
    size,
    align: maxAlign,
    fields: layout.map((f) => ({ name: String(f.name), offset: f.off, size: f.codec.size })),
    encode(v, b, o) {
      b.fill(0, o, o + size);
      for (const f of layout) {
        const val = v[f.name];
        if (val === undefined) throw new Error(`structCodec: missing field ${String(f.name)}`);
        f.codec.encode(val, b, o + f.off);
      }
    },
    decode(b, o) {
      const out = {} as S;
      for (const f of layout) out[f.name] = f.codec.decode(b, o + f.off) as S[keyof S];
      return out;
    },
  };
}

export type UpdateFlag = 'any' | 'noexist' | 'exist';
const FLAG: Record<UpdateFlag, number> = { any: 0, noexist: 1, exist: 2 };

const ENOENT = 2;
const EINVAL = 22;
const ENOTSUPP = 524; // kernel-internal, leaks to userspace for unsupported batch ops
const EOPNOTSUPP = 95;

const ARRAY_LIKE = new Set(['array', 'percpu_array', 'prog_array', 'perf_event_array', 'cgroup_array']);

export class TypedMap<K, V> {
  readonly info: MapInfo;
  private readonly kbuf: Buffer;
  private readonly vbuf: Buffer;
  private readonly nbuf: Buffer;
  private closed = false;

  private constructor(
    readonly fd: number,
    private readonly keyCodec: Codec<K>,
    private readonly valueCodec: Codec<V>,
    private readonly ownsFd: boolean,
    label: string,
  ) {
    this.info = mapInfoByFd(fd);
    const name = this.info.name || label;
    if (this.info.type.startsWith('percpu') || this.info.type === 'lru_percpu_hash') {
      throw new Error(`map ${name}: per-CPU maps (${this.info.type}) are not supported by TypedMap`);
    }
    if (keyCodec.size !== this.info.keySize) throw new BpfMapSizeError(name, 'key', keyCodec.size, this.info.keySize);
    if (valueCodec.size !== this.info.valueSize) {
      throw new BpfMapSizeError(name, 'value', valueCodec.size, this.info.valueSize);
    }
    this.kbuf = Buffer.alloc(keyCodec.size);
    this.vbuf = Buffer.alloc(valueCodec.size);
    this.nbuf = Buffer.alloc(keyCodec.size);
  }

  /** Wraps an fd someone else owns (e.g. a BpfObject's map); close() leaves the fd open. */
  static fromFd<K, V>(fd: number, keyCodec: Codec<K>, valueCodec: Codec<V>, name = `fd ${fd}`): TypedMap<K, V> {
    try {
      return new TypedMap(fd, keyCodec, valueCodec, false, name);
    } catch (e) {
      if (e instanceof BpfError) throw new BpfError('bpf_obj_get_info_by_fd', e.errno, { map: name });
      throw e;
    }
  }

  /** Opens a pinned map; the TypedMap owns the new fd. */
  static fromPin<K, V>(path: string, keyCodec: Codec<K>, valueCodec: Codec<V>): TypedMap<K, V> {
    const fd = raw.bpf_obj_get(path) as number;
    if (fd < 0) throw new BpfError('bpf_obj_get', -fd, { path });
    try {
      return new TypedMap(fd, keyCodec, valueCodec, true, path);
    } catch (e) {
      closeRawFd(fd);
      throw e;
    }
  }

  get name(): string {
    return this.info.name;
  }

  private fail(op: string, rc: number): never {
    throw new BpfError(op, -rc, { map: this.info.name || `id ${this.info.id}` });
  }

  lookup(k: K): V | undefined {
    this.keyCodec.encode(k, this.kbuf, 0);
    const rc = raw.bpf_map_lookup_elem(this.fd, this.kbuf, this.vbuf) as number;
    if (rc === -ENOENT) return undefined;
    if (rc < 0) this.fail('bpf_map_lookup_elem', rc);
    return this.valueCodec.decode(this.vbuf, 0);
  }

  update(k: K, v: V, flags: UpdateFlag = 'any'): void {
    this.keyCodec.encode(k, this.kbuf, 0);
    this.valueCodec.encode(v, this.vbuf, 0);
    const rc = raw.bpf_map_update_elem(this.fd, this.kbuf, this.vbuf, FLAG[flags]) as number;
    if (rc < 0) this.fail('bpf_map_update_elem', rc);
  }

  /** Returns false when the key was not there. */
  delete(k: K): boolean {
    this.keyCodec.encode(k, this.kbuf, 0);
    const rc = raw.bpf_map_delete_elem(this.fd, this.kbuf) as number;
    if (rc === -ENOENT) return false;
    if (rc < 0) this.fail('bpf_map_delete_elem', rc);
    return true;
  }

  /** One bpf_map_update_batch syscall; per-entry updates where the map type has no batch op. */
  batchUpdate(entries: readonly (readonly [K, V])[], flags: UpdateFlag = 'any'): void {
    const n = entries.length;
    if (n === 0) return;
    const ks = Buffer.alloc(n * this.keyCodec.size);
    const vs = Buffer.alloc(n * this.valueCodec.size);
    entries.forEach(([k, v], i) => {
      this.keyCodec.encode(k, ks, i * this.keyCodec.size);
      this.valueCodec.encode(v, vs, i * this.valueCodec.size);
    });
    const count = [n];
    const opts = batchOpts(FLAG[flags]);
    const rc = raw.bpf_map_update_batch(this.fd, ks, vs, count, opts) as number;
    if (rc === 0) return;
    const done = count[0] ?? 0;
    if ((rc === -EINVAL || rc === -ENOTSUPP || rc === -EOPNOTSUPP) && done === 0) {
      for (const [k, v] of entries) this.update(k, v, flags);
      return;
    }
    this.fail(`bpf_map_update_batch (${done}/${n} applied)`, rc);
  }

  /** Deletes keys; returns how many existed. Missing keys are not an error. */
  batchDelete(keys: readonly K[]): number {
    if (keys.length === 0) return 0;
    if (!ARRAY_LIKE.has(this.info.type)) {
      const n = keys.length;
      const ks = Buffer.alloc(n * this.keyCodec.size);
      keys.forEach((k, i) => this.keyCodec.encode(k, ks, i * this.keyCodec.size));
      const count = [n];
      const rc = raw.bpf_map_delete_batch(this.fd, ks, count, batchOpts(0)) as number;
      if (rc === 0) return count[0] ?? n;
      // The kernel stops at the first missing key (ENOENT): finish one by one.
      if (rc !== -ENOENT && rc !== -EINVAL && rc !== -ENOTSUPP && rc !== -EOPNOTSUPP) {
        this.fail('bpf_map_delete_batch', rc);
      }
      const done = rc === -ENOENT ? (count[0] ?? 0) : 0;
      let deleted = done;
      for (const k of keys.slice(done)) if (this.delete(k)) deleted++;
      return deleted;
    }
    let deleted = 0;
    for (const k of keys) if (this.delete(k)) deleted++;
    return deleted;
  }

  /** Keys in kernel iteration order. Bounded by max_entries so concurrent deletes cannot loop forever. */
  *keys(): Generator<K> {
    let prev: Buffer | null = null;
    const limit = this.info.maxEntries + 1;
    for (let i = 0; i < limit; i++) {
      const rc = raw.bpf_map_get_next_key(this.fd, prev, this.nbuf) as number;
      if (rc === -ENOENT) return;
      if (rc < 0) this.fail('bpf_map_get_next_key', rc);
      const key = this.keyCodec.decode(this.nbuf, 0);
      prev = Buffer.from(this.nbuf);
      yield key;
    }
  }

  /** [key, value] pairs; entries deleted while iterating are skipped. */
  *entries(): Generator<[K, V]> {
    for (const k of [...this.keys()]) {
      const v = this.lookup(k);
      if (v !== undefined) yield [k, v];
    }
  }

  /**
   * Every entry with BPF_MAP_LOOKUP_BATCH: a few syscalls for the whole map
   * instead of two per entry (hash and LRU maps). Falls back to entries() where
   * the map type has no batch lookup.
   */
  entriesBatch(chunk = 4096): [K, V][] {
    const out: [K, V][] = [];
    const ksz = this.keyCodec.size;
    const vsz = this.valueCodec.size;
    const all = this.batchesRaw((keys, vals, n) => {
      for (let i = 0; i < n; i++) out.push([this.keyCodec.decode(keys, i * ksz), this.valueCodec.decode(vals, i * vsz)]);
    }, chunk);
    return all ? out : [...this.entries()];
  }

  /**
   * Every entry in batches, undecoded: fn gets each batch's keys and values (count of each, packed
   * at the codecs' sizes), for scans that decode only the few entries they look at. Returns false,
   * having read nothing, on kernels without batch lookups for this map type (use entries()).
   */
  batchesRaw(fn: (keys: Buffer, vals: Buffer, count: number) => void, chunk = 4096): boolean {
    const ksz = this.keyCodec.size;
    const vsz = this.valueCodec.size;
    const keys = Buffer.alloc(chunk * ksz);
    const vals = Buffer.alloc(chunk * vsz);
    // The batch token: a bucket index for hash maps; room for a key to be safe.
    const inTok = Buffer.alloc(Math.max(8, ksz));
    const outTok = Buffer.alloc(Math.max(8, ksz));
    let first = true;
    for (let round = 0; round <= this.info.maxEntries; round++) {
      const count = [chunk];
      const rc = raw.bpf_map_lookup_batch(this.fd, first ? null : inTok, outTok, keys, vals, count, batchOpts(0)) as number;
      if (rc < 0 && rc !== -ENOENT) {
        if (first && (rc === -EINVAL || rc === -ENOTSUPP || rc === -EOPNOTSUPP)) return false;
        this.fail('bpf_map_lookup_batch', rc);
      }
      fn(keys, vals, count[0] ?? 0);
      if (rc === -ENOENT) break; // the last batch
      outTok.copy(inTok);
      first = false;
    }
    return true;
  }

  /** Empties a hash-like map; for array maps (which cannot delete) zeroes every slot. */
  clear(): void {
    if (ARRAY_LIKE.has(this.info.type)) {
      const zero = Buffer.alloc(this.valueCodec.size);
      for (const k of [...this.keys()]) {
        this.keyCodec.encode(k, this.kbuf, 0);
        const rc = raw.bpf_map_update_elem(this.fd, this.kbuf, zero, 0) as number;
        if (rc < 0) this.fail('bpf_map_update_elem', rc);
      }
      return;
    }
    this.batchDelete([...this.keys()]);
  }

  pin(path: string): void {
    const rc = raw.bpf_obj_pin(this.fd, path) as number;
    if (rc < 0) throw new BpfError('bpf_obj_pin', -rc, { map: this.info.name, path });
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.ownsFd) closeRawFd(this.fd);
  }
}

function batchOpts(elemFlags: number): Buffer {
  // struct bpf_map_batch_opts { size_t sz; __u64 elem_flags; __u64 flags; }
  const b = Buffer.alloc(24);
  b.writeBigUInt64LE(24n, 0);
  b.writeBigUInt64LE(BigInt(elemFlags), 8);
  return b;
}

/** The id of the map pinned at path, or undefined when nothing is pinned there. */
export function pinnedMapId(path: string): number | undefined {
  const fd = raw.bpf_obj_get(path) as number;
  if (fd === -ENOENT) return undefined;
  if (fd < 0) throw new BpfError('bpf_obj_get', -fd, { path });
  try {
    return mapInfoByFd(fd).id;
  } finally {
    closeRawFd(fd);
  }
}

/** Pins the kernel map with this id at path (re-pinning a map that lost its pin but is still in use). */
export function pinMapById(id: number, path: string): void {
  const fd = raw.bpf_map_get_fd_by_id(id) as number;
  if (fd < 0) throw new BpfError('bpf_map_get_fd_by_id', -fd, { map: `id ${id}`, path });
  try {
    const rc = raw.bpf_obj_pin(fd, path) as number;
    if (rc < 0) throw new BpfError('bpf_obj_pin', -rc, { map: `id ${id}`, path });
  } finally {
    closeRawFd(fd);
  }
}

/** Possible CPUs (/sys/devices/system/cpu/possible: "0-3,8"): a per-CPU map has one value slot for each. */
export function possibleCpus(text: string = readFileSync('/sys/devices/system/cpu/possible', 'utf8')): number {
  let max = -1;
  for (const part of text.trim().split(',')) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part.trim());
    if (!m) throw new Error(`cannot read the possible CPUs from '${text.trim()}'`);
    max = Math.max(max, Number(m[2] ?? m[1]));
  }
  return max + 1;
}

/**
 * A BPF_MAP_TYPE_PERCPU_ARRAY of __u64 counters (TypedMap refuses per-CPU maps):
 * programs increment their own CPU's slot without atomics, readers sum them.
 */
export class PerCpuCounters {
  private readonly buf: Buffer;
  private readonly key = Buffer.alloc(4);
  private closed = false;
  private constructor(readonly fd: number, private readonly ownsFd: boolean, readonly info: MapInfo, private readonly cpus: number) {
    // The kernel copies value_size rounded up to 8 bytes per possible CPU.
    this.buf = Buffer.alloc(cpus * 8);
  }

  private static make(fd: number, ownsFd: boolean, label: string): PerCpuCounters {
    const info = mapInfoByFd(fd);
    if (info.type !== 'percpu_array') throw new Error(`map ${info.name || label}: ${info.type}, not a percpu_array of counters`);
    if (info.keySize !== 4) throw new BpfMapSizeError(info.name || label, 'key', 4, info.keySize);
    if (info.valueSize !== 8) throw new BpfMapSizeError(info.name || label, 'value', 8, info.valueSize);
    return new PerCpuCounters(fd, ownsFd, info, possibleCpus());
  }

  /** Wraps an fd someone else owns (a BpfObject's map). */
  static fromFd(fd: number, label = `fd ${fd}`): PerCpuCounters {
    return PerCpuCounters.make(fd, false, label);
  }

  static fromPin(path: string): PerCpuCounters {
    const fd = raw.bpf_obj_get(path) as number;
    if (fd < 0) throw new BpfError('bpf_obj_get', -fd, { path });
    try {
      return PerCpuCounters.make(fd, true, path);
    } catch (e) {
      closeRawFd(fd);
      throw e;
    }
  }

  /** The counter at index, summed over every CPU. */
  sum(index: number): bigint {
    this.key.writeUInt32LE(index >>> 0, 0);
    const rc = raw.bpf_map_lookup_elem(this.fd, this.key, this.buf) as number;
    if (rc < 0) throw new BpfError('bpf_map_lookup_elem', -rc, { map: this.info.name || `id ${this.info.id}` });
    let total = 0n;
    for (let c = 0; c < this.cpus; c++) total += this.buf.readBigUInt64LE(c * 8);
    return total;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.ownsFd) closeRawFd(this.fd);
  }
}
