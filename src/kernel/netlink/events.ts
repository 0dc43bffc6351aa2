// rtnetlink notifications (multicast groups) without blocking the event loop:
// a non-blocking AF_NETLINK socket subscribed to the groups asked for, drained
// on demand. The kernel queues every notification on the socket as it happens,
// so a caller that drains on a timer misses nothing (short of an overrun,
// reported as `overrun`: then the caller re-lists what it watches).
// A blocking recv would hold a libuv thread for good; a drain is one syscall.
import { AF_NETLINK, SOCK_RAW, SOCK_CLOEXEC, SOL_SOCKET, SO_RCVBUF, SO_RCVBUFFORCE, MSG_TRUNC, socket, bind, recv, setsockoptInt, close, SysError } from '../ffi/libc.js';
import { withNetns } from '../netns.js';
import { NETLINK_ROUTE, RTM_NEWLINK, RTM_DELLINK, IFLA_IFNAME, IFINFOMSG_LEN, AttrMap, parseMsgs, decodeIfInfo } from './message.js';

const SOCK_NONBLOCK = 0o4000;
/** RTMGRP_LINK: link created, changed, removed. */
export const RTMGRP_LINK = 0x1;

export interface LinkEvent {
  type: 'new' | 'del';
  index: number;
  /** IFLA_IFNAME ('' when the message lacks it). */
  name: string;
  flags: number;
}

export class LinkEvents {
  private closed = false;
  private readonly buf = Buffer.allocUnsafe(1 << 16);
  private constructor(readonly fd: number) {}

  /** Subscribes in the calling thread's netns, or in the netns at nsPath (the socket stays bound to it). */
  static open(nsPath?: string): LinkEvents {
    const make = (): number => {
      const fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, NETLINK_ROUTE);
      try {
        try {
          setsockoptInt(fd, SOL_SOCKET, SO_RCVBUFFORCE, 1 << 20);
        } catch {
          setsockoptInt(fd, SOL_SOCKET, SO_RCVBUF, 1 << 20);
        }
        // struct sockaddr_nl { sa_family_t nl_family; unsigned short pad; __u32 nl_pid; __u32 nl_groups; }
        const sa = Buffer.alloc(12);
        sa.writeUInt16LE(AF_NETLINK, 0);
        sa.writeUInt32LE(RTMGRP_LINK, 8);
        bind(fd, sa);
        return fd;
      } catch (e) {
        close(fd);
        throw e;
      }
    };
    return new LinkEvents(nsPath ? withNetns(nsPath, make) : make());
  }

  /**
   * Everything queued since the last drain. `overrun`: the kernel dropped
   * notifications (ENOBUFS), so the list is incomplete: re-list the links.
   */
  drain(): { events: LinkEvent[]; overrun: boolean } {
    const events: LinkEvent[] = [];
    let overrun = false;
    if (this.closed) return { events, overrun };
    // Bounded: a socket flooded faster than we read still returns.
    for (let i = 0; i < 4096; i++) {
      let n: number;
      try {
        n = recv(this.fd, this.buf, MSG_TRUNC);
      } catch (e) {
        if (e instanceof SysError && (e.code === 'EAGAIN' || e.code === 'EWOULDBLOCK')) break;
        if (e instanceof SysError && e.code === 'EINTR') continue;
        if (e instanceof SysError && e.code === 'ENOBUFS') {
          overrun = true;
          continue;
        }
        throw e;
      }
      if (n > this.buf.length) {
        overrun = true;
        continue;
      }
      for (const m of parseMsgs(Buffer.from(this.buf.subarray(0, n)))) {
        if ((m.type !== RTM_NEWLINK && m.type !== RTM_DELLINK) || m.payload.length < IFINFOMSG_LEN) continue;
        const h = decodeIfInfo(m.payload);
        const a = AttrMap.parse(m.payload, IFINFOMSG_LEN);
        events.push({ type: m.type === RTM_NEWLINK ? 'new' : 'del', index: h.index, name: a.str(IFLA_IFNAME) ?? '', flags: h.flags });
      }
    }
    return { events, overrun };
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    close(this.fd);
  }
}
