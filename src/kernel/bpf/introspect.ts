// Read-only views of what the kernel has loaded: programs, maps and links by id,
// with names, via bpf_*_get_next_id + bpf_obj_get_info_by_fd. `patu status`
// uses this to show every program whose name starts with `patu_`.
import koffi from 'koffi';
import { raw, closeRawFd } from './libbpf.js';
import { BpfError } from './errors.js';

export const MAP_TYPES = [
  'unspec', 'hash', 'array', 'prog_array', 'perf_event_array', 'percpu_hash', 'percpu_array', 'stack_trace',
  'cgroup_array', 'lru_hash', 'lru_percpu_hash', 'lpm_trie', 'array_of_maps', 'hash_of_maps', 'devmap', 'sockmap',
  'cpumap', 'xskmap', 'sockhash', 'cgroup_storage', 'reuseport_sockarray', 'percpu_cgroup_storage', 'queue', 'stack',
  'sk_storage', 'devmap_hash', 'struct_ops', 'ringbuf', 'inode_storage', 'task_storage', 'bloom_filter',
  'user_ringbuf', 'cgrp_storage', 'arena',
] as const;

export const PROG_TYPES = [
  'unspec', 'socket_filter', 'kprobe', 'sched_cls', 'sched_act', 'tracepoint', 'xdp', 'perf_event', 'cgroup_skb',
  'cgroup_sock', 'lwt_in', 'lwt_out', 'lwt_xmit', 'sock_ops', 'sk_skb', 'cgroup_device', 'sk_msg',
  'raw_tracepoint', 'cgroup_sock_addr', 'lwt_seg6local', 'lirc_mode2', 'sk_reuseport', 'flow_dissector',
  'cgroup_sysctl', 'raw_tracepoint_writable', 'cgroup_sockopt', 'tracing', 'struct_ops', 'ext', 'lsm', 'sk_lookup',
  'syscall', 'netfilter',
] as const;

export const LINK_TYPES = [
  'unspec', 'raw_tracepoint', 'tracing', 'cgroup', 'iter', 'netns', 'xdp', 'perf_event', 'kprobe_multi',
  'struct_ops', 'netfilter', 'tcx', 'uprobe_multi', 'netkit', 'sockmap',
] as const;

const typeName = (names: readonly string[], t: number): string => names[t] ?? `type_${t}`;

function cstr(buf: Buffer, off: number, len: number): string {
  const end = buf.indexOf(0, off);
  return buf.toString('latin1', off, end < 0 || end > off + len ? off + len : end);
}

function infoByFd(fd: number, size: number, what: string): Buffer {
  const buf = Buffer.alloc(size);
  const len = [size];
  const rc = raw.bpf_obj_get_info_by_fd(fd, buf, len) as number;
  if (rc < 0) throw new BpfError('bpf_obj_get_info_by_fd', -rc, { path: `${what} fd ${fd}` });
  return buf;
}

export interface MapInfo {
  type: string;
  typeId: number;
  id: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  flags: number;
  name: string;
}

export function mapInfoByFd(fd: number): MapInfo {
  // Offsets of struct bpf_map_info (linux/bpf.h, stable UAPI).
  const b = infoByFd(fd, 88, 'map');
  const typeId = b.readUInt32LE(0);
  return {
    type: typeName(MAP_TYPES, typeId),
    typeId,
    id: b.readUInt32LE(4),
    keySize: b.readUInt32LE(8),
    valueSize: b.readUInt32LE(12),
    maxEntries: b.readUInt32LE(16),
    flags: b.readUInt32LE(20),
    name: cstr(b, 24, 16),
  };
}

export interface ProgInfo {
  type: string;
  typeId: number;
  id: number;
  /** The kernel keeps only the first 15 characters of a program name. */
  name: string;
  tag: string;
  loadTimeNs: bigint;
  mapIds: number;
}

export function progInfoByFd(fd: number): ProgInfo {
  // struct bpf_prog_info: type@0 id@4 tag[8]@8 load_time@40 nr_map_ids@52 name[16]@64.
  const b = infoByFd(fd, 232, 'program');
  const typeId = b.readUInt32LE(0);
  return {
    type: typeName(PROG_TYPES, typeId),
    typeId,
    id: b.readUInt32LE(4),
    name: cstr(b, 64, 16),
    tag: b.subarray(8, 16).toString('hex'),
    loadTimeNs: b.readBigUInt64LE(40),
    mapIds: b.readUInt32LE(52),
  };
}

/** The maps a loaded program uses (what its instructions reference), by id. */
export function progMapIds(progId: number): number[] {
  const fd = raw.bpf_prog_get_fd_by_id(progId) as number;
  if (fd < 0) throw new BpfError('bpf_prog_get_fd_by_id', -fd, { program: `id ${progId}` });
  try {
    const n = progInfoByFd(fd).mapIds;
    if (n === 0) return [];
    // Asked again with room for them: nr_map_ids@52, map_ids (a user pointer)@56.
    const ids = Buffer.alloc(4 * n);
    const info = Buffer.alloc(232);
    info.writeUInt32LE(n, 52);
    info.writeBigUInt64LE(koffi.address(ids), 56);
    const len = [info.length];
    const rc = raw.bpf_obj_get_info_by_fd(fd, info, len) as number;
    if (rc < 0) throw new BpfError('bpf_obj_get_info_by_fd', -rc, { program: `id ${progId}` });
    const got = Math.min(n, info.readUInt32LE(52));
    return Array.from({ length: got }, (_, i) => ids.readUInt32LE(4 * i));
  } finally {
    closeRawFd(fd);
  }
}

export function mapInfoById(id: number): MapInfo {
  const fd = raw.bpf_map_get_fd_by_id(id) as number;
  if (fd < 0) throw new BpfError('bpf_map_get_fd_by_id', -fd, { map: `id ${id}` });
  try {
    return mapInfoByFd(fd);
  } finally {
    closeRawFd(fd);
  }
}

export interface LinkInfo {
  type: string;
  typeId: number;
  id: number;
  progId: number;
  /** For cgroup links: the cgroup id and attach type; for xdp/tcx: the ifindex. */
  cgroupId?: bigint;
  attachType?: number;
  ifindex?: number;
}

export function linkInfoByFd(fd: number): LinkInfo {
  // struct bpf_link_info: type@0 id@4 prog_id@8, then a per-type union @16.
  const b = infoByFd(fd, 48, 'link');
  const typeId = b.readUInt32LE(0);
  const info: LinkInfo = { type: typeName(LINK_TYPES, typeId), typeId, id: b.readUInt32LE(4), progId: b.readUInt32LE(8) };
  if (info.type === 'cgroup') {
    info.cgroupId = b.readBigUInt64LE(16);
    info.attachType = b.readUInt32LE(24);
  } else if (info.type === 'xdp') {
    info.ifindex = b.readUInt32LE(16);
  } else if (info.type === 'tcx') {
    info.ifindex = b.readUInt32LE(16);
    info.attachType = b.readUInt32LE(20);
  }
  return info;
}

type NextId = (start: number, out: number[]) => number;
type FdById = (id: number) => number;

function* walkIds<T>(next: NextId, fdById: FdById, read: (fd: number) => T): Generator<T> {
  let id = 0;
  const out = [0];
  // Bounded: ids are increasing, and the kernel's idr cannot hold more than 2^31.
  for (;;) {
    const rc = next(id, out);
    if (rc < 0) return; // -ENOENT: no more ids
    id = out[0] ?? 0;
    const fd = fdById(id);
    if (fd < 0) continue; // unloaded between the two calls
    try {
      yield read(fd);
    } finally {
      closeRawFd(fd);
    }
  }
}

export function listPrograms(): ProgInfo[] {
  return [...walkIds(raw.bpf_prog_get_next_id as NextId, raw.bpf_prog_get_fd_by_id as FdById, progInfoByFd)];
}

export function listMaps(): MapInfo[] {
  return [...walkIds(raw.bpf_map_get_next_id as NextId, raw.bpf_map_get_fd_by_id as FdById, mapInfoByFd)];
}

export function listLinks(): LinkInfo[] {
  return [...walkIds(raw.bpf_link_get_next_id as NextId, raw.bpf_link_get_fd_by_id as FdById, linkInfoByFd)];
}

/** Programs whose (15-char truncated) kernel name starts with prefix, default `patu_`. */
export function patuPrograms(prefix = 'patu_'): ProgInfo[] {
  return listPrograms().filter((p) => p.name.startsWith(prefix));
}
