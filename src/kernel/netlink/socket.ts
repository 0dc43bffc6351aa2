// A synchronous request/response netlink socket. Synchronous on purpose: the CNI
// plugin is short-lived, and everything done inside a switched netns must stay on
// the one thread that switched (setns is per thread).
import {
  AF_NETLINK, SOCK_RAW, SOCK_CLOEXEC, SOL_SOCKET, SOL_NETLINK, SO_RCVBUF, SO_RCVBUFFORCE, SO_SNDBUF, SO_RCVTIMEO,
  NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK, MSG_TRUNC, MSG_DONTWAIT, SO_NETNS_COOKIE,
  socket, bind, sendto, recv, setsockoptInt, setsockoptBuf, getsockoptBuf, close, SysError,
} from '../ffi/libc.js';
import {
  NETLINK_ROUTE, NLMSG_ERROR, NLMSG_DONE, NLMSG_NOOP, NLMSG_OVERRUN, NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR,
  NlMsg, NetlinkError, encodeMsg, parseMsgs, parseErrorPayload, msgTypeName,
} from './message.js';

export interface RequestContext {
  /** Operation name for errors; defaults to the message type's name (RTM_NEWLINK). */
  op?: string;
  /** What the request was about, for errors: "veth 'patu1a2b'", 'link #7'. */
  object: string;
}

export interface NetlinkSocketOptions {
  /** Netlink protocol, NETLINK_ROUTE by default. */
  protocol?: number;
  /** Receive buffer size asked of the kernel (SO_RCVBUF(FORCE)). */
  rcvbuf?: number;
  /** Give up waiting for the kernel after this long; a hung request then throws EAGAIN. */
  timeoutMs?: number;
  /**
   * Multicast groups to join at bind (RTMGRP_* bits): the socket then receives the
   * kernel's notifications, read with drainEvents(). Keep such a socket for events
   * only: request() skips messages that are not its reply.
   */
  groups?: number;
}

/** What drainEvents() found. */
export interface NetlinkEvents {
  msgs: NlMsg[];
  /** The kernel dropped notifications (ENOBUFS: the receive buffer overflowed): re-read the state. */
  overrun: boolean;
}

// A dump message batch is at most 32 KiB on current kernels; single replies for
// links with many VFs can be larger. 1 MiB leaves a wide margin, and MSG_TRUNC
// detects (and names) anything that still does not fit.
// The buffer is shared by every socket of this thread's module instance: requests are
// synchronous and each datagram is copied out before the next recv, so one 1 MiB
// allocation per process is enough (allocating it per socket cost ~40 us per open).
const RECV_BUF = 1 << 20;
let sharedBuf: Buffer | undefined;
const recvBuf = (): Buffer => (sharedBuf ??= Buffer.allocUnsafe(RECV_BUF));
const DUMP_RETRIES = 5;

export class NetlinkSocket {
  readonly fd: number;
  private seq: number;
  private closed = false;

  private constructor(fd: number) {
    this.fd = fd;
    // Random start so replies to an earlier socket with the same fd cannot be mistaken for ours.
    this.seq = (Math.random() * 0x7fffffff) >>> 0;
  }

  /** Opens a socket in the calling thread's current network namespace. */
  static open(opts: NetlinkSocketOptions = {}): NetlinkSocket {
    const fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, opts.protocol ?? NETLINK_ROUTE);
    try {
      const rcvbuf = opts.rcvbuf ?? 1 << 20;
      try {
        setsockoptInt(fd, SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf);
      } catch {
        // Without CAP_NET_ADMIN only the rmem_max-capped variant is allowed.
        setsockoptInt(fd, SOL_SOCKET, SO_RCVBUF, rcvbuf);
      }
      setsockoptInt(fd, SOL_SOCKET, SO_SNDBUF, 1 << 18);
      setsockoptInt(fd, SOL_NETLINK, NETLINK_EXT_ACK, 1);
      // Lets the kernel filter dumps by the header fields we set (index, table).
      try {
        setsockoptInt(fd, SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1);
      } catch {
        /* older kernels: we filter on our side anyway */
      }
      const tv = Buffer.alloc(16);
      const ms = opts.timeoutMs ?? 10_000;
      tv.writeBigInt64LE(BigInt(Math.floor(ms / 1000)), 0);
      tv.writeBigInt64LE(BigInt((ms % 1000) * 1000), 8);
      setsockoptBuf(fd, SOL_SOCKET, SO_RCVTIMEO, tv);
      const sa = Buffer.alloc(12);
      sa.writeUInt16LE(AF_NETLINK, 0);
      sa.writeUInt32LE((opts.groups ?? 0) >>> 0, 8);
      bind(fd, sa);
    } catch (err) {
      close(fd);
      throw err;
    }
    return new NetlinkSocket(fd);
  }

  /** The cookie of the network namespace this socket belongs to (bpf_get_netns_cookie's value for it). */
  netnsCookie(): bigint {
    const b = Buffer.alloc(8);
    getsockoptBuf(this.fd, SOL_SOCKET, SO_NETNS_COOKIE, b);
    return b.readBigUInt64LE(0);
  }

  /**
   * Reads every notification queued on a socket opened with `groups`, without
   * blocking (at most `max` datagrams per call, so a flood cannot stall the caller).
   */
  drainEvents(max = 1024): NetlinkEvents {
    const out: NetlinkEvents = { msgs: [], overrun: false };
    for (let i = 0; i < max && !this.closed; i++) {
      const buf = recvBuf();
      let n: number;
      try {
        n = recv(this.fd, buf, MSG_TRUNC | MSG_DONTWAIT);
      } catch (err) {
        if (err instanceof SysError && err.code === 'EINTR') continue;
        if (err instanceof SysError && (err.code === 'EAGAIN' || err.code === 'EWOULDBLOCK')) break;
        if (err instanceof SysError && err.code === 'ENOBUFS') {
          out.overrun = true;
          continue;
        }
        throw annotate(err, 'recv', 'notifications');
      }
      // A notification too big for the buffer was cut: the state must be re-read.
      if (n > buf.length) {
        out.overrun = true;
        continue;
      }
      for (const m of parseMsgs(Buffer.from(buf.subarray(0, n)))) {
        if (m.type === NLMSG_OVERRUN) out.overrun = true;
        else if (m.type !== NLMSG_NOOP && m.type !== NLMSG_DONE && m.type !== NLMSG_ERROR) out.msgs.push(m);
      }
    }
    return out;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    close(this.fd);
  }

  /**
   * Sends one request with NLM_F_ACK and waits for the kernel's answer. Returns the
   * data messages of the reply (for a dump: every part, until NLMSG_DONE). Throws
   * NetlinkError naming ctx.op and ctx.object when the kernel refuses.
   */
  request(type: number, flags: number, body: Buffer[], ctx: RequestContext): NlMsg[] {
    if (this.closed) throw new Error(`netlink socket closed: cannot send ${ctx.op ?? msgTypeName(type)} ${ctx.object}`);
    const isDump = (flags & NLM_F_DUMP) === NLM_F_DUMP;
    for (let attempt = 0; ; attempt++) {
      const { msgs, interrupted } = this.exchange(type, flags, body, ctx, isDump);
      // A dump that raced a change is flagged inconsistent: ask again rather than
      // hand out a list with a hole in it.
      if (!interrupted || attempt >= DUMP_RETRIES) return msgs;
    }
  }

  private exchange(type: number, flags: number, body: Buffer[], ctx: RequestContext, isDump: boolean): { msgs: NlMsg[]; interrupted: boolean } {
    const op = ctx.op ?? msgTypeName(type);
    this.seq = (this.seq + 1) >>> 0;
    const seq = this.seq;
    const req = encodeMsg(type, flags | NLM_F_REQUEST | NLM_F_ACK, seq, body);
    try {
      sendto(this.fd, req, null);
    } catch (err) {
      throw annotate(err, op, ctx.object);
    }
    const out: NlMsg[] = [];
    let interrupted = false;
    for (;;) {
      const buf = recvBuf();
      let n: number;
      try {
        n = recv(this.fd, buf, MSG_TRUNC);
      } catch (err) {
        if (err instanceof SysError && err.code === 'EINTR') continue;
        throw annotate(err, op, ctx.object);
      }
      if (n > buf.length) {
        throw new NetlinkError(op, ctx.object, 90 /* EMSGSIZE */, `reply of ${n} bytes exceeds the ${buf.length}-byte receive buffer`);
      }
      // One copy per datagram: the messages must outlive the next recv into the shared buffer.
      for (const m of parseMsgs(Buffer.from(buf.subarray(0, n)))) {
        // Leftovers of an earlier request that threw half-way are not ours.
        if (m.seq !== seq) continue;
        if (m.flags & NLM_F_DUMP_INTR) interrupted = true;
        if (m.type === NLMSG_ERROR) {
          const e = parseErrorPayload(m);
          if (e.errno !== 0) throw new NetlinkError(op, ctx.object, e.errno, e.extack);
          // A dump never gets an ack (NLMSG_DONE ends it), so an ack ends any request.
          return { msgs: out, interrupted };
        }
        if (m.type === NLMSG_DONE) {
          const e = parseErrorPayload(m);
          if (e.errno !== 0) throw new NetlinkError(op, ctx.object, e.errno, e.extack);
          if (isDump) return { msgs: out, interrupted };
          continue;
        }
        if (m.type === NLMSG_NOOP || m.type === NLMSG_OVERRUN) continue;
        out.push(m);
      }
    }
  }
}

function annotate(err: unknown, op: string, object: string): unknown {
  if (err instanceof SysError && !(err instanceof NetlinkError)) {
    return new NetlinkError(op, object, err.errno, `${err.syscall} on the netlink socket failed`);
  }
  return err;
}
