// Routes to the other nodes' pods, programmed over netlink (src/kernel/netlink/rtnl.ts):
//   - direct: `podCIDR via <peer address>` when the peer is on a link we share (its
//     address lies in the subnet of one of our addresses), so packets go as they are;
//   - VXLAN otherwise: one kernel vxlan device (`patu.vxlan`, learning off, local = our
//     address) with, per peer, a permanent FDB entry (peer vtep MAC -> peer address), a
//     permanent neighbour entry (peer vtep address -> peer vtep MAC) and the route
//     `podCIDR via <peer vtep address> dev patu.vxlan onlink`.
// Every route carries protocol NODE_ROUTES_RTPROT, so a reconcile reads back its own
// routes only and never touches anyone else's; everything on the vxlan device is ours.
// apply() is a full reconcile from the kernel's state: idempotent, and an agent restart
// (or a node leaving) converges the same way. Nothing is removed when the agent stops.
import type { LinkInfo, Rtnl, Route } from '../kernel/netlink/rtnl.js';
import { NetlinkError } from '../kernel/netlink/message.js';
import { contains, parseCidr } from '../net/cidr.js';
import { vtepAddress, vtepMac, type NodeInfo } from '../nodes/model.js';
import { DEFAULTS } from '../defaults.js';
import { PatuError } from '../errors.js';

/** rtm_protocol of patu's node routes (`ip route show proto 156`): podnet uses 154. */
export const NODE_ROUTES_RTPROT = 156;

/** VXLAN adds 50 bytes (outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14). */
export const VXLAN_OVERHEAD = 50;

export type RoutingMode = 'auto' | 'direct' | 'vxlan';

/**
 * The pod MTU to give new pods when node routing may use VXLAN: the MTU of the link the
 * IPv4 default route leaves by (else the lowest of the links that are up and not patu's
 * or loopback), minus VXLAN_OVERHEAD. Pods get it from their first day, so a VXLAN peer
 * that appears later never meets pods whose full-size packets cannot pass the tunnel.
 */
export function vxlanPodMtu(rtnl: Rtnl): number {
  const links = rtnl.listLinks();
  const def = rtnl.listRoutes({ family: 4 }).find((r) => r.dst === 'default' && r.oif !== undefined);
  const up = def ? links.find((l) => l.index === def.oif) : undefined;
  const mtu = up?.mtu ?? Math.min(DEFAULTS.mtu, ...links.filter((l) => l.up && l.name !== 'lo' && l.kind !== 'bridge' && l.kind !== 'veth' && l.kind !== 'vxlan').map((l) => l.mtu));
  return mtu - VXLAN_OVERHEAD;
}

export interface NodeRoutesOptions {
  /** 'auto' (default): direct when the peer's address is on one of our subnets, else VXLAN. */
  mode?: RoutingMode;
  vxlanName?: string;
  vni?: number;
  port?: number;
}

export interface PeerRoute {
  node: string;
  podCIDR: string;
  via: 'direct' | 'vxlan';
  gateway: string;
}

export interface NodeRoutesResult {
  routes: PeerRoute[];
  /** Peers not programmed, each with why (a route to the same CIDR that is not ours, ...). */
  skipped: { node: string; reason: string }[];
  added: number;
  removed: number;
  /** The vxlan device's MTU when it exists (pods whose MTU is above it would lose large packets to VXLAN peers). */
  vxlanMtu?: number;
  ms: number;
}

const routeKey = (r: Pick<Route, 'dst' | 'gateway' | 'oif'>): string => `${r.dst} ${r.gateway ?? ''} ${r.oif ?? ''}`;

export class NodeRoutes {
  readonly mode: RoutingMode;
  readonly vxlanName: string;
  readonly vni: number;
  readonly port: number;

  constructor(private readonly rtnl: Rtnl, opts: NodeRoutesOptions = {}) {
    this.mode = opts.mode ?? 'auto';
    this.vxlanName = opts.vxlanName ?? DEFAULTS.vxlanDevice;
    this.vni = opts.vni ?? DEFAULTS.vxlanVni;
    this.port = opts.port ?? DEFAULTS.vxlanPort;
  }

  /** Whether a peer at `address` is reached directly: on one of our subnets (not the vxlan device's, not a /32). */
  onLink(address: string, addrs = this.rtnl.listAddresses(), vxIndex?: number): boolean {
    return addrs.some((a) => a.family === 4 && a.prefixLen < 32 && a.index !== vxIndex && contains(parseCidr(`${a.address}/${a.prefixLen}`), address));
  }

  /** Programs routes to `peers` (already checked by planPeers) and removes every other route, FDB and neighbour entry of ours. */
  apply(self: NodeInfo, peers: readonly NodeInfo[]): NodeRoutesResult {
    const t0 = performance.now();
    const addrs = this.rtnl.listAddresses();
    let vx = this.rtnl.linkByName(this.vxlanName);
    const skipped: NodeRoutesResult['skipped'] = [];
    const via = new Map<string, 'direct' | 'vxlan'>();
    for (const p of peers) via.set(p.name, this.mode === 'direct' ? 'direct' : this.mode === 'vxlan' ? 'vxlan' : this.onLink(p.address, addrs, vx?.index) ? 'direct' : 'vxlan');
    const vxPeers = peers.filter((p) => via.get(p.name) === 'vxlan');
    let added = 0;
    let removed = 0;

    if (vxPeers.length) {
      vx = this.ensureVxlan(self, vx, addrs);
    }
    const all = this.rtnl.listRoutes({ family: 4 });
    const ours = all.filter((r) => r.protocol === NODE_ROUTES_RTPROT);
    const foreign = new Set(all.filter((r) => r.protocol !== NODE_ROUTES_RTPROT).map((r) => r.dst));
    const want = new Map<string, Route>();
    const routes: PeerRoute[] = [];
    for (const p of peers) {
      if (foreign.has(p.podCIDR)) {
        skipped.push({ node: p.name, reason: `a route to ${p.podCIDR} that patu did not make is in the main table: left alone` });
        continue;
      }
      const r: Route = via.get(p.name) === 'direct'
        ? { dst: p.podCIDR, gateway: p.address, protocol: NODE_ROUTES_RTPROT }
        : { dst: p.podCIDR, gateway: vtepAddress(p.podCIDR), oif: vx!.index, onlink: true, protocol: NODE_ROUTES_RTPROT };
      want.set(routeKey(r), r);
      routes.push({ node: p.name, podCIDR: p.podCIDR, via: via.get(p.name)!, gateway: r.gateway! });
    }
    // Routes first out (a node that left, or one that moved between direct and VXLAN), then in.
    for (const r of ours) {
      if (want.has(routeKey(r))) {
        want.delete(routeKey(r));
        continue;
      }
      this.ignoreMissing(() => this.rtnl.deleteRoute({ dst: r.dst, protocol: NODE_ROUTES_RTPROT, ...(r.gateway ? { gateway: r.gateway } : {}), ...(r.oif !== undefined ? { oif: r.oif } : {}) }));
      removed++;
    }
    if (vx && vxPeers.length) removed += this.syncVxlanEntries(vx, vxPeers.filter((p) => routes.some((r) => r.node === p.name)));
    for (const r of want.values()) {
      this.rtnl.replaceRoute(r);
      added++;
    }
    let vxlanMtu: number | undefined;
    if (!vxPeers.length && vx) {
      // No VXLAN peer left: the device goes, and with it its FDB, neighbours and routes.
      this.rtnl.deleteLink(vx.index);
      removed++;
    } else if (vx) {
      vxlanMtu = vx.mtu;
    }
    return { routes, skipped, added, removed, ...(vxlanMtu !== undefined ? { vxlanMtu } : {}), ms: Math.round((performance.now() - t0) * 100) / 100 };
  }

  /** Removes everything apply() made (routes marked ours, the vxlan device). */
  clear(): number {
    let n = 0;
    for (const r of this.rtnl.listRoutes({ family: 4 }).filter((x) => x.protocol === NODE_ROUTES_RTPROT)) {
      this.ignoreMissing(() => this.rtnl.deleteRoute({ dst: r.dst, protocol: NODE_ROUTES_RTPROT, ...(r.gateway ? { gateway: r.gateway } : {}), ...(r.oif !== undefined ? { oif: r.oif } : {}) }));
      n++;
    }
    const vx = this.rtnl.linkByName(this.vxlanName);
    if (vx) {
      this.rtnl.deleteLink(vx.index);
      n++;
    }
    return n;
  }

  /**
   * The vxlan device as it must be: made when missing, remade when its VNI, port, local
   * address or learning differ (an earlier run with other settings, or our address
   * changed); up, with our vtep address and MAC, and an MTU of the uplink's minus 50.
   */
  private ensureVxlan(self: NodeInfo, vx: LinkInfo | undefined, addrs: ReturnType<Rtnl['listAddresses']>): LinkInfo {
    const mac = vtepMac(self.address);
    const uplink = addrs.find((a) => a.family === 4 && a.address === self.address);
    if (!uplink) throw new NodeRoutesError(`this node's address ${self.address} (node ${self.name}) is on none of its links: cannot be the VXLAN source`);
    const uplinkMtu = this.rtnl.linkByIndex(uplink.index)?.mtu ?? DEFAULTS.mtu;
    const mtu = uplinkMtu - VXLAN_OVERHEAD;
    const okAs = (l: LinkInfo): boolean => l.kind === 'vxlan' && l.vxlan !== undefined && l.vxlan.vni === this.vni && l.vxlan.port === this.port && l.vxlan.local === self.address && !l.vxlan.learning && l.mac === mac;
    if (vx && !okAs(vx)) {
      this.rtnl.deleteLink(vx.index);
      vx = undefined;
    }
    if (!vx) {
      this.rtnl.createVxlan(this.vxlanName, { vni: this.vni, port: this.port, local: self.address, mtu, mac });
      vx = this.rtnl.linkByName(this.vxlanName);
      if (!vx) throw new NodeRoutesError(`vxlan device ${this.vxlanName} vanished right after it was created`);
    }
    if (vx.mtu !== mtu) this.rtnl.setMtu(vx.index, mtu);
    const vtep = vtepAddress(self.podCIDR);
    const have = this.rtnl.listAddresses(vx.index).filter((a) => a.family === 4);
    for (const a of have) if (a.address !== vtep || a.prefixLen !== 32) this.ignoreMissing(() => this.rtnl.deleteAddress(vx!.index, `${a.address}/${a.prefixLen}`));
    if (!have.some((a) => a.address === vtep && a.prefixLen === 32)) this.rtnl.addAddress(vx.index, `${vtep}/32`);
    if (!vx.up) this.rtnl.setUp(vx.index);
    return { ...vx, mtu };
  }

  /** FDB and neighbour entries of the vxlan device: exactly one of each per VXLAN peer. Returns how many went. */
  private syncVxlanEntries(vx: LinkInfo, peers: readonly NodeInfo[]): number {
    let removed = 0;
    const fdbWant = new Map(peers.map((p) => [vtepMac(p.address), p.address]));
    for (const e of this.rtnl.listFdb(vx.index)) {
      if (fdbWant.get(e.mac) === e.dst) {
        fdbWant.delete(e.mac);
        continue;
      }
      this.ignoreMissing(() => this.rtnl.deleteFdb(e));
      removed++;
    }
    for (const [mac, dst] of fdbWant) this.rtnl.replaceFdb({ index: vx.index, mac, dst });
    const neighWant = new Map(peers.map((p) => [vtepAddress(p.podCIDR), vtepMac(p.address)]));
    for (const n of this.rtnl.listNeighbours(vx.index)) {
      if (n.family !== 4) continue;
      if (n.permanent && n.mac !== undefined && neighWant.get(n.ip) === n.mac) {
        neighWant.delete(n.ip);
        continue;
      }
      this.ignoreMissing(() => this.rtnl.deleteNeighbour({ index: vx.index, ip: n.ip }));
      removed++;
    }
    for (const [ip, mac] of neighWant) this.rtnl.replaceNeighbour({ index: vx.index, ip, mac });
    return removed;
  }

  private ignoreMissing(fn: () => void): void {
    try {
      fn();
    } catch (e) {
      if (e instanceof NetlinkError && (e.code === 'ESRCH' || e.code === 'ENOENT' || e.code === 'EADDRNOTAVAIL')) return;
      throw e;
    }
  }
}

export class NodeRoutesError extends PatuError {
  readonly code = 'NODE_ROUTES';
}
