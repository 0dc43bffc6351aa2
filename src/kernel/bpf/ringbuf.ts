// The consumer side of a BPF_MAP_TYPE_RINGBUF through libbpf's ring_buffer
// API. Node cannot block on the map's fd without a thread, so it is drained
// without waiting: poll() runs ring_buffer__consume, whose callback (called
// synchronously, on this thread) copies each record out. Call it on a timer.
// One consumer per ring: the consumer position lives in the map itself, so two
// readers would split the records between them.
import koffi from 'koffi';
import { raw, closeRawFd, errno, RingBufferSampleFn, type Ptr } from './libbpf.js';
import { BpfError } from './errors.js';
import { mapInfoByFd } from './introspect.js';

export class RingBufferReader {
  private rb: Ptr | null;
  private pending: Buffer[] = [];
  private readonly cb: unknown;
  private constructor(private readonly fd: number, readonly name: string) {
    this.cb = koffi.register((_ctx: unknown, data: unknown, size: number | bigint) => {
      const n = Number(size);
      this.pending.push(Buffer.from(koffi.decode(data, 'uint8_t', n) as number[]));
      return 0;
    }, koffi.pointer(RingBufferSampleFn));
    const rb = raw.ring_buffer__new(fd, this.cb, null, null) as Ptr | null;
    if (rb == null) {
      const e = errno();
      koffi.unregister(this.cb as never);
      throw new BpfError('ring_buffer__new', e, { map: name });
    }
    this.rb = rb;
  }

  static fromPin(path: string): RingBufferReader {
    const fd = raw.bpf_obj_get(path) as number;
    if (fd < 0) throw new BpfError('bpf_obj_get', -fd, { path });
    try {
      const info = mapInfoByFd(fd);
      if (info.type !== 'ringbuf') throw new Error(`${path}: a ${info.type} map, not a ring buffer`);
      return new RingBufferReader(fd, info.name || path);
    } catch (e) {
      closeRawFd(fd);
      throw e;
    }
  }

  /** Every record submitted since the last call (never waits), at most `max` per call. */
  poll(max = 4096): Buffer[] {
    if (this.rb == null) throw new Error(`ring buffer ${this.name} is closed`);
    const rc = raw.ring_buffer__consume(this.rb) as number;
    if (rc < 0) throw new BpfError('ring_buffer__consume', -rc, { map: this.name });
    const out = this.pending.length > max ? this.pending.splice(0, max) : this.pending;
    if (out === this.pending) this.pending = [];
    return out;
  }

  close(): void {
    if (this.rb == null) return;
    raw.ring_buffer__free(this.rb);
    this.rb = null;
    koffi.unregister(this.cb as never);
    closeRawFd(this.fd);
  }
}
