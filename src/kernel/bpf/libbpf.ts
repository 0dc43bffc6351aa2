// Private raw bindings to the system libbpf.so.1 (v1.1) through koffi. Nothing
// outside src/kernel/bpf/ imports this file: object.ts, map.ts, introspect.ts
// wrap it in typed classes that check sizes and turn failures into BpfError.
//
// libbpf 1.x conventions relied on here: int-returning calls return -errno;
// pointer-returning calls return NULL and set errno.
import koffi from 'koffi';
import { libbpfLog } from './log.js';

const bpf = koffi.load('libbpf.so.1');
const libc = koffi.load('libc.so.6');

/** Opaque libbpf pointers (struct bpf_object *, struct bpf_program *, struct bpf_map *). */
export type Ptr = bigint;

const PrintFn = koffi.proto('int patu_libbpf_print_fn(int level, const char *fmt, void *args)');
/** ring_buffer_sample_fn: called for each record, synchronously inside ring_buffer__poll/consume. */
export const RingBufferSampleFn = koffi.proto('int patu_rb_sample_fn(void *ctx, void *data, size_t size)');

export const raw = {
  // object lifecycle
  bpf_object__open_file: bpf.func('void *bpf_object__open_file(const char *path, const void *opts)'),
  bpf_object__load: bpf.func('int bpf_object__load(void *obj)'),
  bpf_object__close: bpf.func('void bpf_object__close(void *obj)'),
  bpf_object__name: bpf.func('const char *bpf_object__name(void *obj)'),
  bpf_object__find_program_by_name: bpf.func('void *bpf_object__find_program_by_name(void *obj, const char *name)'),
  bpf_object__find_map_by_name: bpf.func('void *bpf_object__find_map_by_name(void *obj, const char *name)'),
  bpf_object__next_program: bpf.func('void *bpf_object__next_program(void *obj, void *prev)'),
  bpf_object__next_map: bpf.func('void *bpf_object__next_map(void *obj, void *prev)'),
  bpf_object__btf: bpf.func('void *bpf_object__btf(void *obj)'),
  // programs
  bpf_program__name: bpf.func('const char *bpf_program__name(void *prog)'),
  bpf_program__fd: bpf.func('int bpf_program__fd(void *prog)'),
  bpf_program__expected_attach_type: bpf.func('int bpf_program__expected_attach_type(void *prog)'),
  bpf_program__set_autoload: bpf.func('int bpf_program__set_autoload(void *prog, bool autoload)'),
  // maps
  bpf_map__name: bpf.func('const char *bpf_map__name(void *map)'),
  bpf_map__fd: bpf.func('int bpf_map__fd(void *map)'),
  bpf_map__btf_key_type_id: bpf.func('uint32_t bpf_map__btf_key_type_id(void *map)'),
  bpf_map__btf_value_type_id: bpf.func('uint32_t bpf_map__btf_value_type_id(void *map)'),
  bpf_map__reuse_fd: bpf.func('int bpf_map__reuse_fd(void *map, int fd)'),
  // BTF of an opened object (btf.h)
  btf__type_by_id: bpf.func('void *btf__type_by_id(void *btf, uint32_t id)'),
  btf__name_by_offset: bpf.func('const char *btf__name_by_offset(void *btf, uint32_t off)'),
  btf__resolve_size: bpf.func('int64_t btf__resolve_size(void *btf, uint32_t id)'),
  btf__resolve_type: bpf.func('int btf__resolve_type(void *btf, uint32_t id)'),
  // low-level syscall wrappers (bpf.h)
  bpf_map_update_elem: bpf.func('int bpf_map_update_elem(int fd, const void *key, const void *value, uint64_t flags)'),
  bpf_map_lookup_elem: bpf.func('int bpf_map_lookup_elem(int fd, const void *key, void *value)'),
  bpf_map_delete_elem: bpf.func('int bpf_map_delete_elem(int fd, const void *key)'),
  bpf_map_get_next_key: bpf.func('int bpf_map_get_next_key(int fd, const void *key, void *next_key)'),
  bpf_map_update_batch: bpf.func('int bpf_map_update_batch(int fd, const void *keys, const void *values, _Inout_ uint32_t *count, const void *opts)'),
  bpf_map_lookup_batch: bpf.func('int bpf_map_lookup_batch(int fd, void *in_batch, void *out_batch, void *keys, void *values, _Inout_ uint32_t *count, const void *opts)'),
  bpf_map_delete_batch: bpf.func('int bpf_map_delete_batch(int fd, const void *keys, _Inout_ uint32_t *count, const void *opts)'),
  bpf_obj_pin: bpf.func('int bpf_obj_pin(int fd, const char *path)'),
  bpf_obj_get: bpf.func('int bpf_obj_get(const char *path)'),
  bpf_obj_get_info_by_fd: bpf.func('int bpf_obj_get_info_by_fd(int fd, void *info, _Inout_ uint32_t *len)'),
  bpf_prog_attach: bpf.func('int bpf_prog_attach(int prog_fd, int target_fd, int type, unsigned int flags)'),
  bpf_prog_attach_opts: bpf.func('int bpf_prog_attach_opts(int prog_fd, int target, int type, const void *opts)'),
  bpf_prog_detach2: bpf.func('int bpf_prog_detach2(int prog_fd, int target_fd, int type)'),
  bpf_link_create: bpf.func('int bpf_link_create(int prog_fd, int target_fd, int type, const void *opts)'),
  bpf_link_detach: bpf.func('int bpf_link_detach(int link_fd)'),
  bpf_link_update: bpf.func('int bpf_link_update(int link_fd, int new_prog_fd, const void *opts)'),
  bpf_iter_create: bpf.func('int bpf_iter_create(int link_fd)'),
  bpf_prog_test_run_opts: bpf.func('int bpf_prog_test_run_opts(int prog_fd, void *opts)'),
  bpf_prog_query: bpf.func('int bpf_prog_query(int target_fd, int type, uint32_t query_flags, _Out_ uint32_t *attach_flags, void *prog_ids, _Inout_ uint32_t *prog_cnt)'),
  // ring buffers (libbpf.h): the consumer side, polled without blocking
  ring_buffer__new: bpf.func('void *ring_buffer__new(int map_fd, patu_rb_sample_fn *sample_cb, void *ctx, const void *opts)'),
  ring_buffer__poll: bpf.func('int ring_buffer__poll(void *rb, int timeout_ms)'),
  ring_buffer__consume: bpf.func('int ring_buffer__consume(void *rb)'),
  ring_buffer__free: bpf.func('void ring_buffer__free(void *rb)'),
  bpf_prog_get_next_id: bpf.func('int bpf_prog_get_next_id(uint32_t start, _Out_ uint32_t *next)'),
  bpf_map_get_next_id: bpf.func('int bpf_map_get_next_id(uint32_t start, _Out_ uint32_t *next)'),
  bpf_link_get_next_id: bpf.func('int bpf_link_get_next_id(uint32_t start, _Out_ uint32_t *next)'),
  bpf_prog_get_fd_by_id: bpf.func('int bpf_prog_get_fd_by_id(uint32_t id)'),
  bpf_map_get_fd_by_id: bpf.func('int bpf_map_get_fd_by_id(uint32_t id)'),
  bpf_link_get_fd_by_id: bpf.func('int bpf_link_get_fd_by_id(uint32_t id)'),
  libbpf_set_print: bpf.func('void *libbpf_set_print(patu_libbpf_print_fn *fn)'),
};

const vasprintf = libc.func('int vasprintf(_Out_ void **strp, const char *fmt, void *ap)');
const free = libc.func('void free(void *p)');
const closeFd = libc.func('int close(int fd)');

export const closeRawFd = (fd: number): void => {
  if (fd >= 0) closeFd(fd);
};

// --- libbpf's print callback -------------------------------------------------
// libbpf prints warnings and, when a program fails to load, the verifier log
// through one global callback with a va_list. We format it with vasprintf (one
// pass over the va_list, any length) and collect lines into the innermost active
// capture, so a failing call can attach exactly what libbpf said about it.
const LIBBPF_WARN = 0;
const LIBBPF_INFO = 1;
const captures: string[][] = [];

function onPrint(level: number, fmt: string, ap: bigint): number {
  if (level > LIBBPF_INFO && !libbpfLog.debug) return 0;
  const out: (bigint | null)[] = [null];
  const n = vasprintf(out, fmt, ap) as number;
  const p = out[0];
  if (n < 0 || p == null) return 0;
  const text = koffi.decode(p, 'char', n) as string;
  free(p);
  const sink = captures[captures.length - 1];
  if (sink) sink.push(text);
  if (libbpfLog.debug || (!sink && level === LIBBPF_WARN)) libbpfLog.sink?.(text);
  return n;
}
// Registered once for the life of the process: libbpf keeps the pointer globally.
const printCb = koffi.register(onPrint, koffi.pointer(PrintFn));
raw.libbpf_set_print(printCb);

/** Collects libbpf's output into an array the caller owns (for error reporting after the call). */
export function captureLibbpf<T>(sink: string[], fn: () => T): T {
  captures.push(sink);
  try {
    return fn();
  } finally {
    captures.pop();
  }
}

export const errno = (): number => koffi.errno();
