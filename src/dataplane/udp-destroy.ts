// Destroys connected UDP sockets that the socket LB translated to a backend
// which has left its service (bpf/sock_destroy.c: a UDP socket iterator that
// calls bpf_sock_destroy, kernel 6.5+). ServiceLb runs it after an apply that
// removed UDP backends.
//
// A socket iterator walks the network namespace of the thread that creates
// it, and pods have their own: the iterator is run once in the caller's
// namespace (the host's, for the agent) and once inside every namespace
// bind-mounted under the given directories (/run/netns, where containerd,
// CRI-O and podman keep pod namespaces; Cilium walks the same directory).
// Entering is setns on this thread, synchronous, always switched back
// (src/kernel/netns.ts). /proc/<pid>/ns/net is not walked: the DaemonSet runs
// without hostPID, and a pod's namespace is always pinned by its runtime.
import { existsSync } from 'node:fs';
import { BpfObject, type BpfLink } from '../kernel/bpf/object.js';
import { structCodec, be16, ipv4, u32, type TypedMap } from '../kernel/bpf/map.js';
import { currentNetnsInode, listNetns, withNetns, NotANetnsError } from '../kernel/netns.js';
import { messageOf } from '../errors.js';
import type { UdpDestroyStats } from './udp-destroy-report.js';

export type { UdpDestroyStats };

export const UDP_DESTROY_PROGRAM = 'patu_udp_destroy';
/** PATU_UDP_GONE_MAX in bpf/sock_destroy.h: entries per iterator pass. */
const GONE_MAX = 4096;

/** A backend that left a UDP service: connected sockets translated vip:vport -> ip:port go. */
export interface UdpGone {
  /** The service address; '0.0.0.0' for a NodePort (any node address). */
  vip: string;
  vport: number;
  ip: string;
  port: number;
}

interface GoneKeyC { vip: string; backendIp: string; vport: number; backendPort: number }
const goneKeyC = structCodec<GoneKeyC>({ vip: ipv4, backendIp: ipv4, vport: be16, backendPort: be16 });

/**
 * Codecs of bpf/sock_destroy.c's maps, by C name (test/unit/bpf-layout.test.ts
 * checks them). Its patu_sock_nat and patu_revnat are sock_lb.c's maps, reused
 * by fd and declared with sock_lb.h's structs: userspace never reads them here.
 */
export const SOCK_DESTROY_MAP_CODECS = {
  patu_udp_gone: { key: goneKeyC, value: u32 },
} as const;

export interface UdpDestroyOptions {
  /** Directories of bind-mounted pod namespaces; production: /run/netns. */
  netnsDirs: readonly string[];
  /** No namespace is entered once this much time has passed; the rest are counted in skippedNetns. */
  budgetMs: number;
}


export class UdpSocketDestroyer {
  private constructor(
    private readonly obj: BpfObject,
    private readonly link: BpfLink,
    private readonly gone: TypedMap<GoneKeyC, number>,
  ) {}

  /**
   * Loads bpf/sock_destroy.c over the socket LB's own maps (their fds, from
   * the ServiceLb that owns them). Throws where the kernel lacks the UDP
   * iterator or bpf_sock_destroy (before 6.5), with libbpf's log.
   */
  static open(opts: { objectPath: string; sockNatFd: number; revnatFd: number }): UdpSocketDestroyer {
    if (!existsSync(opts.objectPath)) throw new Error(`UdpSocketDestroyer: BPF object ${opts.objectPath} is missing (run scripts/build.sh)`);
    const obj = BpfObject.open(opts.objectPath);
    try {
      obj.map('patu_sock_nat').reuseFd(opts.sockNatFd);
      obj.map('patu_revnat').reuseFd(opts.revnatFd);
      obj.load();
      const gone = obj.map('patu_udp_gone').typed(SOCK_DESTROY_MAP_CODECS.patu_udp_gone.key, SOCK_DESTROY_MAP_CODECS.patu_udp_gone.value);
      const link = obj.program(UDP_DESTROY_PROGRAM).attachIter();
      return new UdpSocketDestroyer(obj, link, gone);
    } catch (e) {
      obj.close();
      throw e;
    }
  }

  /**
   * Destroys every connected UDP socket, in this thread's namespace and in
   * each one under opts.netnsDirs, that the socket LB translated to one of
   * `gone`. Never throws for a namespace: its error is in the result.
   */
  destroy(gone: readonly UdpGone[], opts: UdpDestroyOptions): UdpDestroyStats {
    const t0 = performance.now();
    const stats: UdpDestroyStats = { backends: gone.length, netns: 0, skippedNetns: 0, sockets: 0, ms: 0, errors: [] };
    if (gone.length === 0) return stats;
    const own = currentNetnsInode();
    const others = listNetns(opts.netnsDirs, new Set([own]));
    for (let i = 0; i < gone.length; i += GONE_MAX) {
      const chunk = gone.slice(i, i + GONE_MAX).map((g) => [{ vip: g.vip, backendIp: g.ip, vport: g.vport, backendPort: g.port }, 1] as const);
      this.gone.batchUpdate(chunk);
      try {
        const walked = this.walk(others, t0, opts.budgetMs, stats);
        stats.netns = Math.max(stats.netns, walked);
      } finally {
        this.gone.batchDelete(chunk.map(([k]) => k));
      }
    }
    stats.skippedNetns = others.length + 1 - stats.netns;
    stats.ms = performance.now() - t0;
    return stats;
  }

  /** One pass over the caller's namespace and `others`; returns how many were walked. */
  private walk(others: readonly { path: string }[], t0: number, budgetMs: number, stats: UdpDestroyStats): number {
    let walked = 1;
    try {
      stats.sockets += this.link.iterate().length / 8;
    } catch (e) {
      stats.errors.push(`own netns: ${messageOf(e)}`);
    }
    for (const ns of others) {
      if (performance.now() - t0 > budgetMs) break;
      walked++;
      try {
        stats.sockets += withNetns(ns.path, () => this.link.iterate()).length / 8;
      } catch (e) {
        // Deleted since it was listed (a pod that went away): nothing to destroy there.
        if (e instanceof NotANetnsError) continue;
        stats.errors.push(`${ns.path}: ${messageOf(e)}`);
      }
    }
    return walked;
  }

  close(): void {
    this.link.destroy();
    this.gone.close();
    this.obj.close();
  }
}

