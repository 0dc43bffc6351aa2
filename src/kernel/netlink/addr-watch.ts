// The node's IPv4 addresses, and notice when they change: a dump over one
// rtnetlink socket, and a second socket subscribed to RTNLGRP_IPV4_IFADDR
// (RTM_NEWADDR/RTM_DELADDR) that is only ever drained, never asked. Two
// sockets because a notification that arrives while a dump is being read on
// the same socket would be skipped with the dump's other traffic, and a change
// made during the dump could then be lost; on its own socket it stays queued
// and the next poll() re-reads. Both sockets belong to the netns they were
// opened in for as long as they live (a test passes its own netns).
import { withNetns } from '../netns.js';
import { AF_INET, RTM_DELADDR, RTM_NEWADDR } from './message.js';
import { Rtnl } from './rtnl.js';
import { NetlinkSocket } from './socket.js';

/** rtnetlink multicast group bit of IPv4 address changes (RTNLGRP_IPV4_IFADDR = 5). */
export const RTMGRP_IPV4_IFADDR = 0x10;

export interface NodeAddress {
  address: string;
  index: number;
  prefixLen: number;
}

export class AddressWatch {
  private constructor(private readonly rtnl: Rtnl, private readonly events: NetlinkSocket) {}

  /** Watches the netns at nsPath (default: the calling thread's current one). */
  static open(nsPath?: string): AddressWatch {
    const openBoth = (): [Rtnl, NetlinkSocket] => {
      // Subscribed before the first dump, so no change falls between the two.
      const events = NetlinkSocket.open({ groups: RTMGRP_IPV4_IFADDR, rcvbuf: 1 << 20 });
      try {
        return [Rtnl.open(), events];
      } catch (e) {
        events.close();
        throw e;
      }
    };
    const [rtnl, events] = nsPath === undefined ? openBoth() : withNetns(nsPath, openBoth);
    return new AddressWatch(rtnl, events);
  }

  /** Every IPv4 address on every link of the netns, lo included. */
  list(): NodeAddress[] {
    return this.rtnl.listAddresses().filter((a) => a.family === 4).map((a) => ({ address: a.address, index: a.index, prefixLen: a.prefixLen }));
  }

  /** Whether an address changed (or notifications were lost) since the last call; never blocks. */
  poll(): boolean {
    const ev = this.events.drainEvents();
    return ev.overrun || ev.msgs.some((m) => (m.type === RTM_NEWADDR || m.type === RTM_DELADDR) && m.payload[0] === AF_INET);
  }

  /** The watched netns' cookie (what bpf_get_netns_cookie() says for its sockets). */
  netnsCookie(): bigint {
    return this.events.netnsCookie();
  }

  close(): void {
    this.events.close();
    this.rtnl.close();
  }
}
