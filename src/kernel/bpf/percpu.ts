// Per-CPU hash maps read from userspace (TypedMap refuses per-CPU maps): a
// lookup returns one value per possible CPU, each rounded up to 8 bytes; the
// reader sums them with the caller's function.
import { raw, closeRawFd } from './libbpf.js';
import { BpfError, BpfMapSizeError } from './errors.js';
import { mapInfoByFd, type MapInfo } from './introspect.js';
import { possibleCpus, type Codec } from './map.js';

const ENOENT = 2;

export class PerCpuHash<K, V> {
  private readonly kbuf: Buffer;
  private readonly vbuf: Buffer;
  private readonly stride: number;
  private readonly cpus: number;
  private closed = false;
  private constructor(readonly fd: number, private readonly ownsFd: boolean, readonly info: MapInfo,
    private readonly key: Codec<K>, private readonly value: Codec<V>) {
    if (info.type !== 'percpu_hash' && info.type !== 'lru_percpu_hash') throw new Error(`map ${info.name}: ${info.type}, not a per-CPU hash`);
    if (key.size !== info.keySize) throw new BpfMapSizeError(info.name, 'key', key.size, info.keySize);
    if (value.size !== info.valueSize) throw new BpfMapSizeError(info.name, 'value', value.size, info.valueSize);
    this.cpus = possibleCpus();
    this.stride = Math.ceil(value.size / 8) * 8;
    this.kbuf = Buffer.alloc(key.size);
    this.vbuf = Buffer.alloc(this.stride * this.cpus);
  }

  static fromPin<K, V>(path: string, key: Codec<K>, value: Codec<V>): PerCpuHash<K, V> {
    const fd = raw.bpf_obj_get(path) as number;
    if (fd < 0) throw new BpfError('bpf_obj_get', -fd, { path });
    try {
      return new PerCpuHash(fd, true, mapInfoByFd(fd), key, value);
    } catch (e) {
      closeRawFd(fd);
      throw e;
    }
  }

  /** Every entry: its key and each CPU's value. */
  *entries(): Generator<[K, V[]]> {
    const keys: Buffer[] = [];
    let prev: Buffer | null = null;
    const next = Buffer.alloc(this.key.size);
    for (let i = 0; i <= this.info.maxEntries; i++) {
      const rc = raw.bpf_map_get_next_key(this.fd, prev, next) as number;
      if (rc === -ENOENT) break;
      if (rc < 0) throw new BpfError('bpf_map_get_next_key', -rc, { map: this.info.name });
      prev = Buffer.from(next);
      keys.push(prev);
    }
    for (const k of keys) {
      const rc = raw.bpf_map_lookup_elem(this.fd, k, this.vbuf) as number;
      if (rc === -ENOENT) continue;
      if (rc < 0) throw new BpfError('bpf_map_lookup_elem', -rc, { map: this.info.name });
      const vals: V[] = [];
      for (let c = 0; c < this.cpus; c++) vals.push(this.value.decode(this.vbuf, c * this.stride));
      yield [this.key.decode(k, 0), vals];
    }
  }

  delete(k: K): boolean {
    this.key.encode(k, this.kbuf, 0);
    const rc = raw.bpf_map_delete_elem(this.fd, this.kbuf) as number;
    if (rc === -ENOENT) return false;
    if (rc < 0) throw new BpfError('bpf_map_delete_elem', -rc, { map: this.info.name });
    return true;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.ownsFd) closeRawFd(this.fd);
  }
}
