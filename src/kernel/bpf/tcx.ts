// tcx attachments without links: BPF_PROG_ATTACH / BPF_PROG_DETACH / BPF_PROG_QUERY
// with the TCX attach types and an ifindex as the target (kernel >= 6.6). Such an
// attachment needs no pin and no fd to stay: it lives as long as the device does
// (a pod's veth), so nothing is left to clean when the pod goes.
import { raw, closeRawFd } from './libbpf.js';
import { BpfError } from './errors.js';
import { AttachType } from './object.js';
import { progInfoByFd } from './introspect.js';

export type TcxDirection = 'ingress' | 'egress';
const typeOf = (d: TcxDirection): number => (d === 'ingress' ? AttachType.TCX_INGRESS : AttachType.TCX_EGRESS);

/** BPF_F_REPLACE: attr.replace_bpf_fd names the program to swap out in place. */
const BPF_F_REPLACE = 1 << 2;
/** BPF_F_BEFORE with no relative program: at the head of the chain (bpf_mprog). */
const BPF_F_BEFORE = 1 << 3;
const ENOENT = 2;
const ENODEV = 19;

export interface TcxProgram { id: number; name: string }

/** The programs attached to ifindex in that direction, in run order. [] for a device without any. */
export function tcxQuery(ifindex: number, dir: TcxDirection): TcxProgram[] {
  let cap = 16;
  for (;;) {
    const ids = Buffer.alloc(4 * cap);
    const cnt = [cap];
    const flags = [0];
    const rc = raw.bpf_prog_query(ifindex, typeOf(dir), 0, flags, ids, cnt) as number;
    const n = cnt[0] ?? 0;
    if (rc === -28 /* ENOSPC */ && n > cap) {
      cap = n;
      continue;
    }
    if (rc < 0) throw new BpfError(`bpf_prog_query(tcx ${dir})`, -rc, { path: `ifindex ${ifindex}` });
    const out: TcxProgram[] = [];
    for (let i = 0; i < Math.min(n, cap); i++) {
      const id = ids.readUInt32LE(4 * i);
      const fd = raw.bpf_prog_get_fd_by_id(id) as number;
      if (fd < 0) continue; // gone meanwhile
      try {
        out.push({ id, name: progInfoByFd(fd).name });
      } finally {
        closeRawFd(fd);
      }
    }
    return out;
  }
}

function attachOpts(flags: number, replaceFd: number): Buffer {
  // struct bpf_prog_attach_opts { size_t sz; unsigned flags; int replace_prog_fd; } (libbpf 1.1)
  const b = Buffer.alloc(16);
  b.writeBigUInt64LE(16n, 0);
  b.writeUInt32LE(flags >>> 0, 8);
  b.writeInt32LE(replaceFd, 12);
  return b;
}

/**
 * Attaches progFd to ifindex (appended to the chain; with `first`, ahead of every
 * program already there), or, with replaceId, swaps that attached program for
 * progFd in place (no moment without either). Returns false when progFd was
 * attached there already (EEXIST).
 */
export function tcxAttach(progFd: number, ifindex: number, dir: TcxDirection, replaceId?: number, opts: { first?: boolean } = {}): boolean {
  let replaceFd = -1;
  if (replaceId !== undefined) {
    replaceFd = raw.bpf_prog_get_fd_by_id(replaceId) as number;
    if (replaceFd < 0) throw new BpfError('bpf_prog_get_fd_by_id', -replaceFd, { program: `id ${replaceId}` });
  }
  try {
    const o = replaceFd >= 0 ? attachOpts(BPF_F_REPLACE, replaceFd) : opts.first ? attachOpts(BPF_F_BEFORE, 0) : null;
    const rc = raw.bpf_prog_attach_opts(progFd, ifindex, typeOf(dir), o) as number;
    if (rc === -17 /* EEXIST */) return false;
    if (rc < 0) throw new BpfError(`bpf_prog_attach(tcx ${dir})`, -rc, { path: `ifindex ${ifindex}` });
    return true;
  } finally {
    if (replaceFd >= 0) closeRawFd(replaceFd);
  }
}

/** Detaches the program with this id from ifindex. false when it was not attached (or the device is gone). */
export function tcxDetachId(progId: number, ifindex: number, dir: TcxDirection): boolean {
  const fd = raw.bpf_prog_get_fd_by_id(progId) as number;
  if (fd < 0) {
    if (-fd === ENOENT) return false;
    throw new BpfError('bpf_prog_get_fd_by_id', -fd, { program: `id ${progId}` });
  }
  try {
    const rc = raw.bpf_prog_detach2(fd, ifindex, typeOf(dir)) as number;
    if (rc === -ENOENT || rc === -ENODEV) return false;
    if (rc < 0) throw new BpfError(`bpf_prog_detach(tcx ${dir})`, -rc, { path: `ifindex ${ifindex}`, program: `id ${progId}` });
    return true;
  } finally {
    closeRawFd(fd);
  }
}
