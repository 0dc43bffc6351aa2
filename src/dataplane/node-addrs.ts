// Keeps patu_node_addr (the addresses a NodePort or a hostPort without a
// hostIP answers on) equal to the node's IPv4 addresses, every link included,
// lo too: NodePorts answer on 127.0.0.1 as with kube-proxy's iptables mode
// (only for the node's own processes: a pod's 127.0.0.1 is the pod's, which
// the programs tell apart by the netns cookie written here).
//
// Changes arrive as RTM_NEWADDR/RTM_DELADDR on a subscribed socket, read by a
// short timer (non-blocking, one recv when nothing happened): Node cannot
// wait on a netlink fd without a thread. Any notification triggers a full
// re-read and a diff against the map, so a lost or reordered one cannot leave
// the map wrong for longer than one poll.
import { AddressWatch } from '../kernel/netlink/addr-watch.js';
import { messageOf } from '../errors.js';
import { NODE_ADDR_F_LOOPBACK, type LbConfig } from './service-lb.js';

/** What the tracker writes: ServiceLb, or a recorder in tests. */
export interface NodeAddressSink {
  setNodeAddresses(addrs: ReadonlyMap<string, number>): { added: string[]; removed: string[] };
  configure(cfg: LbConfig): void;
}

export interface NodeAddressTrackerOptions {
  sink: NodeAddressSink;
  /** The node's netns (a test's own); default: the calling thread's current one. */
  netns?: string;
  /** How often notifications are read (ms); default 200. */
  pollMs?: number;
  onChange?: (change: { added: string[]; removed: string[]; addresses: string[] }) => void;
  onError?: (err: Error) => void;
}

const isLoopback = (ip: string): boolean => ip.startsWith('127.');

export class NodeAddressTracker {
  private readonly watch: AddressWatch;
  private timer: NodeJS.Timeout | undefined;
  private failing = false;

  /** Opens the watch, records the netns cookie, writes the current addresses and starts polling. */
  constructor(private readonly opts: NodeAddressTrackerOptions) {
    this.watch = AddressWatch.open(opts.netns);
    try {
      opts.sink.configure({ hostNetnsCookie: this.watch.netnsCookie() });
      this.sync();
    } catch (e) {
      this.watch.close();
      throw e;
    }
    this.timer = setInterval(() => this.tick(), opts.pollMs ?? 200);
    this.timer.unref();
  }

  /** Re-reads every address and writes the difference; returns the addresses now in the map. */
  sync(): string[] {
    const addrs = new Map<string, number>();
    for (const a of this.watch.list()) addrs.set(a.address, isLoopback(a.address) ? NODE_ADDR_F_LOOPBACK : 0);
    const ch = this.opts.sink.setNodeAddresses(addrs);
    const addresses = [...addrs.keys()].sort();
    if (ch.added.length || ch.removed.length) this.opts.onChange?.({ ...ch, addresses });
    return addresses;
  }

  private tick(): void {
    try {
      // After a failure, re-read on every tick until it works again.
      if (this.watch.poll() || this.failing) this.sync();
      this.failing = false;
    } catch (e) {
      if (!this.failing) this.opts.onError?.(e instanceof Error ? e : new Error(messageOf(e)));
      this.failing = true;
    }
  }

  close(): void {
    clearInterval(this.timer);
    this.timer = undefined;
    this.watch.close();
  }
}
