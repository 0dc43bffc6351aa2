// Routing netlink for patu: links (bridge, veth), addresses, routes, neighbours,
// spoken directly over one AF_NETLINK socket. A socket belongs to the netns it was
// opened in for its whole life, which is how one process configures a pod's
// namespace without keeping its thread switched into it.
import { open, close, O_RDONLY } from '../ffi/libc.js';
import { withNetns } from '../netns.js';
import { NetlinkSocket } from './socket.js';
import {
  NlMsg, NetlinkError, AttrMap, Family,
  attr, attrU8, attrU32, attrStr, attrNested,
  encodeIfInfo, decodeIfInfo, encodeIfAddr, decodeIfAddr, encodeRtMsg, decodeRtMsg, encodeNdMsg, decodeNdMsg,
  toNlPrefix, ipToBytes, bytesToIp, maskBytes, familyToAf, afToFamily, macToBytes, bytesToMac,
  RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK, RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR,
  RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE, RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH, RTM_NEWRULE, RTM_DELRULE, RTM_GETRULE,
  encodeFibRuleHdr, decodeFibRuleHdr, FRA_DST, FRA_SRC, FRA_PRIORITY, FRA_TABLE, FRA_PROTOCOL, FR_ACT_TO_TBL,
  IFLA_IFALIAS, IFALIASZ,
  NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_DUMP, NLM_F_ECHO,
  AF_UNSPEC, AF_INET, AF_INET6, AF_BRIDGE, IFF_UP,
  IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER, IFLA_PROTINFO, IFLA_LINKINFO, IFLA_NET_NS_FD,
  IFLA_EXT_MASK, IFLA_LINK_NETNSID, IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_INFO_SLAVE_KIND, IFLA_INFO_SLAVE_DATA,
  VETH_INFO_PEER, IFLA_BRPORT_MODE, RTEXT_FILTER_SKIP_STATS,
  IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS, IFA_F_NODAD,
  RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_PREFSRC, RTA_TABLE,
  RT_TABLE_MAIN, RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_NOWHERE, RTPROT_BOOT, RTPROT_UNSPEC, RTN_UNICAST, RTN_UNSPEC,
  RTM_F_CLONED, NDA_DST, NDA_LLADDR, NDA_IFINDEX, NUD_PERMANENT, NUD_REACHABLE, NUD_NOARP, NTF_SELF, RTNH_F_ONLINK,
  IFLA_VXLAN_ID, IFLA_VXLAN_LOCAL, IFLA_VXLAN_LEARNING, IFLA_VXLAN_PORT,
} from './message.js';

export interface LinkInfo {
  index: number;
  name: string;
  mtu: number;
  /** IFF_* flags as the kernel reports them. */
  flags: number;
  /** IFF_UP: administratively up (carrier is a separate matter). */
  up: boolean;
  /** Hardware address as aa:bb:cc:dd:ee:ff ('' for links without one). */
  mac: string;
  /** IFLA_INFO_KIND: 'bridge', 'veth', ... (absent for physical devices and lo). */
  kind?: string;
  /** IFLA_MASTER: the bridge this link is a port of. */
  masterIndex?: number;
  /** IFLA_LINK: for a veth, its peer's index (in the peer's own netns). */
  linkIndex?: number;
  /** IFLA_LINK_NETNSID: set when the peer lives in another netns. */
  linkNetnsId?: number;
  /** IFLA_INFO_SLAVE_KIND: 'bridge' for a bridge port. */
  slaveKind?: string;
  /** Bridge port hairpin mode (IFLA_BRPORT_MODE), only present on bridge ports. */
  hairpin?: boolean;
  /** IFLA_IFALIAS (`ip link set x alias ...`), when the link has one. */
  alias?: string;
  /** A vxlan link's settings (IFLA_INFO_DATA), as the kernel reports them. */
  vxlan?: { vni: number; local?: string; port: number; learning: boolean };
}

/** A vxlan device as patu makes them: unicast only (per-peer FDB entries), no learning. */
export interface VxlanOptions {
  /** VXLAN network identifier (24 bits). */
  vni: number;
  /** UDP destination port (IANA: 4789). */
  port: number;
  /** The node's own (underlay) address: the outer source. */
  local: string;
  mtu?: number;
  mac?: string;
}

/**
 * The RTM_NEWLINK body that creates a vxlan link (exported for the encoding's unit test).
 * Learning is off: every peer's MAC and address are programmed (FDB), none learnt from
 * what arrives, so a spoofed outer source cannot redirect a pod subnet.
 */
export function vxlanLinkBody(name: string, o: VxlanOptions): Buffer[] {
  checkName(name, 'vxlan');
  if (!Number.isInteger(o.vni) || o.vni < 1 || o.vni > 0xffffff) throw new Error(`vxlan '${name}': vni ${o.vni}: want 1 to 16777215`);
  if (!Number.isInteger(o.port) || o.port < 1 || o.port > 65535) throw new Error(`vxlan '${name}': port ${o.port}: want 1 to 65535`);
  const local = ipToBytes(o.local);
  if (local.length !== 4) throw new Error(`vxlan '${name}': local ${o.local}: IPv4 only`);
  const body = [encodeIfInfo({}), attrStr(IFLA_IFNAME, name)];
  if (o.mtu !== undefined) body.push(attrU32(IFLA_MTU, o.mtu));
  if (o.mac !== undefined) body.push(attr(IFLA_ADDRESS, macToBytes(o.mac)));
  const port = Buffer.alloc(2);
  port.writeUInt16BE(o.port);
  body.push(attrNested(IFLA_LINKINFO, [
    attrStr(IFLA_INFO_KIND, 'vxlan'),
    attrNested(IFLA_INFO_DATA, [
      attrU32(IFLA_VXLAN_ID, o.vni),
      attr(IFLA_VXLAN_LOCAL, local),
      attr(IFLA_VXLAN_PORT, port),
      attrU8(IFLA_VXLAN_LEARNING, 0),
    ]),
  ]));
  return body;
}

/** An entry of a vxlan device's own forwarding table: frames for `mac` go to `dst` (the peer's underlay address). */
export interface FdbEntry {
  index: number;
  mac: string;
  dst: string;
}

/** The RTM_NEWNEIGH/RTM_DELNEIGH body of a vxlan FDB entry (`bridge fdb ... dev X dst Y self permanent`). */
export function fdbBody(e: FdbEntry): Buffer[] {
  return [
    encodeNdMsg({ family: AF_BRIDGE, index: e.index, state: NUD_PERMANENT | NUD_NOARP, flags: NTF_SELF }),
    attr(NDA_LLADDR, macToBytes(e.mac)),
    attr(NDA_DST, ipToBytes(e.dst)),
  ];
}

export interface AddressInfo {
  index: number;
  family: Family;
  address: string;
  prefixLen: number;
}

export interface Route {
  /** Destination as a CIDR, or 'default'. */
  dst: string;
  gateway?: string;
  oif?: number;
  /** Routing table id; main (254) when omitted. */
  table?: number;
  /** RT_SCOPE_*; when omitted: universe with a gateway, link without. */
  scope?: number;
  /** Preferred source address (RTA_PREFSRC). */
  src?: string;
  /** RTPROT_*; boot (3) when omitted, like `ip route`. */
  protocol?: number;
  /** RTA_PRIORITY. */
  metric?: number;
  /** Only needed for 'default' without a gateway: which family's default. */
  family?: Family;
  /** RTN_* route type, reported by listRoutes. */
  type?: number;
  /** RTNH_F_ONLINK: the gateway is taken to be on `oif` whatever its subnets (`ip route ... onlink`). */
  onlink?: boolean;
}

/** A policy routing rule (`ip rule`): traffic matching from/to looks up `table`. */
export interface Rule {
  /** Source CIDR matched (absent: any). */
  from?: string;
  /** Destination CIDR matched (absent: any). */
  to?: string;
  /** Table looked up (any id: FRA_TABLE carries ids above 255). */
  table: number;
  /** FRA_PRIORITY (`pref`); the kernel picks one below the lowest when absent on add. */
  priority?: number;
  /** Needed only without from/to: which family's rule (default 4). */
  family?: Family;
  /** FRA_PROTOCOL: who made the rule (RTPROT_*), kept as-is by the kernel. */
  protocol?: number;
  /** FR_ACT_* as listRules reports it (1: to table). */
  action?: number;
}

export interface Neighbour {
  index: number;
  family: Family;
  ip: string;
  mac?: string;
  /** NUD_* state bits. */
  state: number;
  permanent: boolean;
}

export interface VethOptions {
  mtu?: number;
  /** Create the peer directly inside this netns (an fd from open(nsPath)). */
  peerNetnsFd?: number;
  /** Same, by path; opened and closed here. */
  peerNetnsPath?: string;
  /**
   * Enslave the new (host) end to this bridge in the same request: one round trip
   * less, and no window in which a killed caller leaves a veth outside the bridge.
   */
  masterIndex?: number;
  /** Bring the new (host) end up in the same request (the peer stays down). */
  up?: boolean;
  /** The peer's MAC (aa:bb:..); without it the kernel picks a random one. */
  peerMac?: string;
  /** The new (host) end's MAC; without it the kernel picks a random one. */
  mac?: string;
}

const IFNAMSIZ = 16;

function checkName(name: string, what: string): void {
  if (name.length === 0 || Buffer.byteLength(name) >= IFNAMSIZ || /[\s/:]/.test(name) || name === '.' || name === '..') {
    throw new Error(`invalid ${what} name '${name}': 1-15 bytes, no whitespace, '/' or ':'`);
  }
}

const isErr = (err: unknown, code: string): boolean => err instanceof NetlinkError && err.code === code;

export class Rtnl {
  private readonly sock: NetlinkSocket;

  private constructor(sock: NetlinkSocket) {
    this.sock = sock;
  }

  /** A handle on the calling thread's current network namespace. */
  static open(): Rtnl {
    return new Rtnl(NetlinkSocket.open());
  }

  /**
   * A handle on the netns at nsPath: the socket is opened inside it (setns there
   * and back), and keeps talking to that namespace until closed.
   */
  static openInNetns(nsPath: string): Rtnl {
    return new Rtnl(withNetns(nsPath, () => NetlinkSocket.open()));
  }

  close(): void {
    this.sock.close();
  }

  // ------------------------------------------------------------------ links

  listLinks(): LinkInfo[] {
    const msgs = this.sock.request(RTM_GETLINK, NLM_F_DUMP, [encodeIfInfo({}), attrU32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS)], {
      object: 'links (dump)',
    });
    return msgs.filter((m) => m.type === RTM_NEWLINK).map(parseLink);
  }

  /** Exact name match (an alternative name does not count); undefined when absent. */
  linkByName(name: string): LinkInfo | undefined {
    if (name.length === 0 || Buffer.byteLength(name) >= IFNAMSIZ) return undefined;
    const link = this.getLink([encodeIfInfo({}), attrStr(IFLA_IFNAME, name), attrU32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS)], `link '${name}'`);
    return link && link.name === name ? link : undefined;
  }

  linkByIndex(index: number): LinkInfo | undefined {
    if (!Number.isInteger(index) || index <= 0 || index > 0x7fffffff) return undefined;
    return this.getLink([encodeIfInfo({ index }), attrU32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS)], `link #${index}`);
  }

  private getLink(body: Buffer[], object: string): LinkInfo | undefined {
    try {
      const m = this.sock.request(RTM_GETLINK, 0, body, { object }).find((x) => x.type === RTM_NEWLINK);
      return m ? parseLink(m) : undefined;
    } catch (err) {
      if (isErr(err, 'ENODEV')) return undefined;
      throw err;
    }
  }

  /**
   * Creates a bridge. Give `mac` to pin its address: a bridge without one adopts
   * its lowest port's MAC and changes it when that port leaves, which leaves pods
   * with a stale ARP entry for their gateway.
   */
  createBridge(name: string, opts: { mtu?: number; mac?: string } = {}): void {
    checkName(name, 'bridge');
    const body = [encodeIfInfo({}), attrStr(IFLA_IFNAME, name)];
    if (opts.mtu !== undefined) body.push(attrU32(IFLA_MTU, opts.mtu));
    if (opts.mac !== undefined) body.push(attr(IFLA_ADDRESS, macToBytes(opts.mac)));
    body.push(attrNested(IFLA_LINKINFO, [attrStr(IFLA_INFO_KIND, 'bridge')]));
    this.sock.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body, { object: `bridge '${name}'` });
  }

  /** Creates a vxlan link (vxlanLinkBody); returns it as the kernel echoes it (undefined without an echo). */
  createVxlan(name: string, opts: VxlanOptions): LinkInfo | undefined {
    const echoed = this.sock.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO, vxlanLinkBody(name, opts), { object: `vxlan '${name}' (vni ${opts.vni}, port ${opts.port}, local ${opts.local})` })
      .find((m) => m.type === RTM_NEWLINK);
    const link = echoed ? parseLink(echoed) : undefined;
    return link && link.name === name ? link : undefined;
  }

  /**
   * Creates a veth pair. With peerNetnsFd/peerNetnsPath the peer is born inside
   * that netns (IFLA_NET_NS_FD inside VETH_INFO_PEER), which saves a move. The peer
   * is down: bring it up from a handle on its netns (IFF_UP here fails, ENOTCONN).
   * Returns the new (host) end as the kernel echoes it (NLM_F_ECHO: index, MAC, and the
   * peer's index in its own netns as linkIndex), which saves looking it up; undefined on a
   * kernel that does not echo link creation.
   */
  createVeth(name: string, peerName: string, opts: VethOptions = {}): LinkInfo | undefined {
    checkName(name, 'veth');
    checkName(peerName, 'veth peer');
    const object = `veth '${name}' (peer '${peerName}'${opts.peerNetnsPath ? ` in ${opts.peerNetnsPath}` : ''})`;
    let fd = opts.peerNetnsFd;
    let opened = -1;
    if (fd === undefined && opts.peerNetnsPath !== undefined) fd = opened = open(opts.peerNetnsPath, O_RDONLY);
    try {
      const peer = [encodeIfInfo({}), attrStr(IFLA_IFNAME, peerName)];
      if (opts.mtu !== undefined) peer.push(attrU32(IFLA_MTU, opts.mtu));
      if (fd !== undefined) peer.push(attrU32(IFLA_NET_NS_FD, fd));
      if (opts.peerMac !== undefined) peer.push(attr(IFLA_ADDRESS, macToBytes(opts.peerMac)));
      const body = [encodeIfInfo(opts.up ? { flags: IFF_UP, change: IFF_UP } : {}), attrStr(IFLA_IFNAME, name)];
      if (opts.mtu !== undefined) body.push(attrU32(IFLA_MTU, opts.mtu));
      if (opts.masterIndex !== undefined) body.push(attrU32(IFLA_MASTER, opts.masterIndex));
      if (opts.mac !== undefined) body.push(attr(IFLA_ADDRESS, macToBytes(opts.mac)));
      body.push(attrNested(IFLA_LINKINFO, [
        attrStr(IFLA_INFO_KIND, 'veth'),
        attrNested(IFLA_INFO_DATA, [attr(VETH_INFO_PEER, Buffer.concat(peer))]),
      ]));
      const echoed = this.sock.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO, body, { object })
        .find((m) => m.type === RTM_NEWLINK);
      const link = echoed ? parseLink(echoed) : undefined;
      return link && link.name === name ? link : undefined;
    } finally {
      if (opened >= 0) close(opened);
    }
  }

  setUp(index: number): void {
    this.setLink(index, [encodeIfInfo({ index, flags: IFF_UP, change: IFF_UP })], 'setting up');
  }

  setDown(index: number): void {
    this.setLink(index, [encodeIfInfo({ index, flags: 0, change: IFF_UP })], 'setting down');
  }

  setMtu(index: number, mtu: number): void {
    this.setLink(index, [encodeIfInfo({ index }), attrU32(IFLA_MTU, mtu)], `setting mtu ${mtu} on`);
  }

  /** Makes the link a port of masterIndex (0 detaches it). */
  setMaster(index: number, masterIndex: number): void {
    this.setLink(index, [encodeIfInfo({ index }), attrU32(IFLA_MASTER, masterIndex)], `attaching to master #${masterIndex}:`);
  }

  /** Moves the link into the netns behind nsFd. It loses its addresses on the way. */
  setNetns(index: number, nsFd: number): void {
    this.setLink(index, [encodeIfInfo({ index }), attrU32(IFLA_NET_NS_FD, nsFd)], 'moving to another netns:');
  }

  rename(index: number, name: string): void {
    checkName(name, 'link');
    this.setLink(index, [encodeIfInfo({ index }), attrStr(IFLA_IFNAME, name)], `renaming to '${name}':`);
  }

  /** Bridge port hairpin mode: lets a pod reach itself through a service address. */
  setHairpin(index: number, on: boolean): void {
    const body = [encodeIfInfo({ family: AF_BRIDGE, index }), attrNested(IFLA_PROTINFO, [attrU8(IFLA_BRPORT_MODE, on ? 1 : 0)], true)];
    this.onLink(index, `setting hairpin ${on ? 'on' : 'off'} on bridge port`, () => this.sock.request(RTM_SETLINK, 0, body, { op: 'RTM_SETLINK', object: '' }));
  }

  /**
   * Sets the link's IFLA_IFALIAS ('' removes it). The kernel ignores an alias given in
   * RTM_NEWLINK, so marking a new link is always this separate request.
   */
  setAlias(index: number, alias: string): void {
    if (Buffer.byteLength(alias) >= IFALIASZ) throw new Error(`link alias of ${Buffer.byteLength(alias)} bytes: at most ${IFALIASZ - 1}`);
    // Not attrStr: the kernel stores the payload's length as given, NUL included.
    this.setLink(index, [encodeIfInfo({ index }), attr(IFLA_IFALIAS, Buffer.from(alias, 'utf8'))], 'setting the alias of');
  }

  deleteLink(index: number): void {
    this.onLink(index, 'deleting', () => this.sock.request(RTM_DELLINK, 0, [encodeIfInfo({ index })], { object: '' }));
  }

  private setLink(index: number, body: Buffer[], what: string): void {
    this.onLink(index, what, () => this.sock.request(RTM_SETLINK, 0, body, { object: '' }));
  }

  /**
   * Runs a request about one link; on failure, names the link (looked up only then,
   * so the fast path costs nothing extra).
   */
  private onLink<T>(index: number, what: string, fn: () => T): T {
    try {
      return fn();
    } catch (err) {
      if (!(err instanceof NetlinkError)) throw err;
      throw new NetlinkError(err.op, `${what} ${this.describeLink(index)}`.trim(), err.errno, err.extack);
    }
  }

  private describeLink(index: number): string {
    let l: LinkInfo | undefined;
    try {
      l = this.linkByIndex(index);
    } catch {
      l = undefined;
    }
    return l ? `link '${l.name}' (#${index})` : `link #${index} (no such link)`;
  }

  // ------------------------------------------------------------------ addresses

  /** Adds '10.200.0.5/24' or 'fd00::5/64'. IPv6 gets IFA_F_NODAD: usable at once. */
  addAddress(index: number, cidr: string): void {
    this.addrRequest(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, index, cidr, 'adding address');
  }

  deleteAddress(index: number, cidr: string): void {
    this.addrRequest(RTM_DELADDR, 0, index, cidr, 'deleting address');
  }

  private addrRequest(type: number, flags: number, index: number, cidr: string, what: string): void {
    const c = toNlPrefix(cidr);
    const body = [encodeIfAddr({ family: familyToAf(c.family), prefixLen: c.prefixLen, index })];
    body.push(attr(IFA_LOCAL, c.bytes), attr(IFA_ADDRESS, c.bytes));
    if (c.family === 6 && type === RTM_NEWADDR) body.push(attrU32(IFA_FLAGS, IFA_F_NODAD));
    this.onLink(index, `${what} ${cidr} on`, () => this.sock.request(type, flags, body, { object: '' }));
  }

  listAddresses(index?: number): AddressInfo[] {
    const msgs = this.sock.request(RTM_GETADDR, NLM_F_DUMP, [encodeIfAddr({ index: index ?? 0 })], {
      object: index === undefined ? 'addresses (dump)' : `addresses of link #${index} (dump)`,
    });
    const out: AddressInfo[] = [];
    for (const m of msgs) {
      if (m.type !== RTM_NEWADDR) continue;
      const h = decodeIfAddr(m.payload);
      if (h.family !== AF_INET && h.family !== AF_INET6) continue;
      if (index !== undefined && h.index !== index) continue;
      const a = AttrMap.parse(m.payload, 8);
      // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on point-to-point links.
      const raw = a.get(IFA_LOCAL) ?? a.get(IFA_ADDRESS);
      if (!raw) continue;
      out.push({ index: h.index, family: afToFamily(h.family), address: bytesToIp(raw), prefixLen: h.prefixLen });
    }
    return out;
  }

  // ------------------------------------------------------------------ routes

  addRoute(r: Route): void {
    this.routeRequest(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, r, 'adding');
  }

  replaceRoute(r: Route): void {
    this.routeRequest(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, r, 'replacing');
  }

  deleteRoute(r: Route): void {
    this.routeRequest(RTM_DELROUTE, 0, r, 'deleting');
  }

  private routeRequest(type: number, flags: number, r: Route, what: string): void {
    const isDel = type === RTM_DELROUTE;
    let family: Family;
    let dstBytes: Buffer | undefined;
    let dstLen = 0;
    if (r.dst === 'default') {
      family = r.family ?? (r.gateway ? toNlPrefix(r.gateway).family : r.src ? toNlPrefix(r.src).family : 4);
    } else {
      const c = toNlPrefix(r.dst);
      family = c.family;
      dstLen = c.prefixLen;
      dstBytes = maskBytes(c.bytes, c.prefixLen);
    }
    const table = r.table ?? RT_TABLE_MAIN;
    const scope = r.scope ?? (isDel ? RT_SCOPE_NOWHERE : r.gateway ? RT_SCOPE_UNIVERSE : RT_SCOPE_LINK);
    const body = [encodeRtMsg({
      family: familyToAf(family), dstLen, table: table < 256 ? table : 0,
      protocol: r.protocol ?? (isDel ? RTPROT_UNSPEC : RTPROT_BOOT), scope, type: isDel ? RTN_UNSPEC : RTN_UNICAST,
      flags: r.onlink ? RTNH_F_ONLINK : 0,
    })];
    body.push(attrU32(RTA_TABLE, table));
    if (dstBytes && dstLen > 0) body.push(attr(RTA_DST, dstBytes));
    if (r.gateway) body.push(attr(RTA_GATEWAY, sameFamily(r.gateway, family, 'gateway')));
    if (r.src) body.push(attr(RTA_PREFSRC, sameFamily(r.src, family, 'src')));
    if (r.oif !== undefined) body.push(attrU32(RTA_OIF, r.oif));
    if (r.metric !== undefined) body.push(attrU32(RTA_PRIORITY, r.metric));
    const object = `route ${r.dst}${r.gateway ? ` via ${r.gateway}` : ''}${r.oif !== undefined ? ` dev #${r.oif}` : ''}${table !== RT_TABLE_MAIN ? ` table ${table}` : ''}`;
    const run = (): unknown => this.sock.request(type, flags, body, { object: `${what} ${object}` });
    if (r.oif !== undefined) {
      this.onLinkRoute(r.oif, `${what} ${object}`, run);
    } else {
      run();
    }
  }

  private onLinkRoute(oif: number, object: string, fn: () => unknown): void {
    try {
      fn();
    } catch (err) {
      if (!(err instanceof NetlinkError)) throw err;
      throw new NetlinkError(err.op, `${object} (dev ${this.describeLink(oif)})`, err.errno, err.extack);
    }
  }

  /** Routes of one table (main by default; table 0 = every table), both families unless one is given. */
  listRoutes(filter: { family?: Family; table?: number } = {}): Route[] {
    const af = filter.family ? familyToAf(filter.family) : AF_UNSPEC;
    const table = filter.table ?? RT_TABLE_MAIN;
    const msgs = this.sock.request(RTM_GETROUTE, NLM_F_DUMP, [encodeRtMsg({ family: af })], { object: 'routes (dump)' });
    const out: Route[] = [];
    for (const m of msgs) {
      if (m.type !== RTM_NEWROUTE) continue;
      const h = decodeRtMsg(m.payload);
      if (h.family !== AF_INET && h.family !== AF_INET6) continue;
      if (h.flags & RTM_F_CLONED) continue;
      const a = AttrMap.parse(m.payload, 12);
      const t = a.u32(RTA_TABLE) ?? h.table;
      if (table !== 0 && t !== table) continue;
      const dst = a.get(RTA_DST);
      const r: Route = {
        dst: h.dstLen === 0 || !dst ? 'default' : `${bytesToIp(dst)}/${h.dstLen}`,
        table: t, scope: h.scope, protocol: h.protocol, type: h.type, family: afToFamily(h.family),
      };
      const gw = a.get(RTA_GATEWAY);
      if (gw) r.gateway = bytesToIp(gw);
      const oif = a.u32(RTA_OIF);
      if (oif !== undefined) r.oif = oif;
      const src = a.get(RTA_PREFSRC);
      if (src) r.src = bytesToIp(src);
      const metric = a.u32(RTA_PRIORITY);
      if (metric !== undefined) r.metric = metric;
      if (h.flags & RTNH_F_ONLINK) r.onlink = true;
      out.push(r);
    }
    return out;
  }

  // ------------------------------------------------------------------ policy rules

  /** Adds a rule; EEXIST when an identical one exists (NLM_F_EXCL). */
  addRule(r: Rule): void {
    this.ruleRequest(RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL, r, 'adding');
  }

  /** Deletes the first rule matching every field given; ENOENT when none does. */
  deleteRule(r: Rule): void {
    this.ruleRequest(RTM_DELRULE, 0, r, 'deleting');
  }

  private ruleRequest(type: number, flags: number, r: Rule, what: string): void {
    const from = r.from !== undefined ? toNlPrefix(r.from) : undefined;
    const to = r.to !== undefined ? toNlPrefix(r.to) : undefined;
    const family = from?.family ?? to?.family ?? r.family ?? 4;
    if ((from && from.family !== family) || (to && to.family !== family)) throw new Error(`rule from ${r.from} to ${r.to}: mixed address families`);
    if (!Number.isInteger(r.table) || r.table <= 0 || r.table > 0xffffffff) throw new Error(`rule table ${r.table}: want 1 to 2^32-1`);
    const body = [encodeFibRuleHdr({
      family: familyToAf(family), srcLen: from?.prefixLen ?? 0, dstLen: to?.prefixLen ?? 0,
      table: r.table < 256 ? r.table : 0, action: FR_ACT_TO_TBL,
    })];
    body.push(attrU32(FRA_TABLE, r.table));
    if (from && from.prefixLen > 0) body.push(attr(FRA_SRC, maskBytes(from.bytes, from.prefixLen)));
    if (to && to.prefixLen > 0) body.push(attr(FRA_DST, maskBytes(to.bytes, to.prefixLen)));
    if (r.priority !== undefined) body.push(attrU32(FRA_PRIORITY, r.priority));
    if (r.protocol !== undefined) body.push(attrU8(FRA_PROTOCOL, r.protocol));
    this.sock.request(type, flags, body, { object: `${what} rule ${describeRule(r)}` });
  }

  /** Every rule of both families (or one), as `ip rule` lists them. */
  listRules(filter: { family?: Family } = {}): Rule[] {
    const af = filter.family ? familyToAf(filter.family) : AF_UNSPEC;
    const msgs = this.sock.request(RTM_GETRULE, NLM_F_DUMP, [encodeFibRuleHdr({ family: af })], { object: 'rules (dump)' });
    const out: Rule[] = [];
    for (const m of msgs) {
      if (m.type !== RTM_NEWRULE) continue;
      const h = decodeFibRuleHdr(m.payload);
      if (h.family !== AF_INET && h.family !== AF_INET6) continue;
      const a = AttrMap.parse(m.payload, 12);
      const r: Rule = { table: a.u32(FRA_TABLE) ?? h.table, family: afToFamily(h.family), action: h.action };
      const src = a.get(FRA_SRC);
      if (src && h.srcLen > 0) r.from = `${bytesToIp(src)}/${h.srcLen}`;
      const dst = a.get(FRA_DST);
      if (dst && h.dstLen > 0) r.to = `${bytesToIp(dst)}/${h.dstLen}`;
      const prio = a.u32(FRA_PRIORITY);
      if (prio !== undefined) r.priority = prio;
      const proto = a.u8(FRA_PROTOCOL);
      if (proto !== undefined) r.protocol = proto;
      out.push(r);
    }
    return out;
  }

  // ------------------------------------------------------------------ neighbours

  /** A static neighbour entry (reachable, or permanent: never expires, never probed). */
  addNeighbour(n: { index: number; ip: string; mac: string; permanent?: boolean }): void {
    const ip = ipToBytes(n.ip);
    const body = [
      encodeNdMsg({ family: ip.length === 4 ? AF_INET : AF_INET6, index: n.index, state: n.permanent ? NUD_PERMANENT : NUD_REACHABLE }),
      attr(NDA_DST, ip),
      attr(NDA_LLADDR, macToBytes(n.mac)),
    ];
    this.onLink(n.index, `adding neighbour ${n.ip} lladdr ${n.mac} on`, () => this.sock.request(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_EXCL, body, { object: '' }));
  }

  /** Adds or updates a permanent neighbour entry (`ip neigh replace ... nud permanent`). */
  replaceNeighbour(n: { index: number; ip: string; mac: string }): void {
    const ip = ipToBytes(n.ip);
    const body = [
      encodeNdMsg({ family: ip.length === 4 ? AF_INET : AF_INET6, index: n.index, state: NUD_PERMANENT }),
      attr(NDA_DST, ip),
      attr(NDA_LLADDR, macToBytes(n.mac)),
    ];
    this.onLink(n.index, `replacing neighbour ${n.ip} lladdr ${n.mac} on`, () => this.sock.request(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, body, { object: '' }));
  }

  deleteNeighbour(n: { index: number; ip: string }): void {
    const ip = ipToBytes(n.ip);
    const body = [encodeNdMsg({ family: ip.length === 4 ? AF_INET : AF_INET6, index: n.index }), attr(NDA_DST, ip)];
    this.onLink(n.index, `deleting neighbour ${n.ip} on`, () => this.sock.request(RTM_DELNEIGH, 0, body, { object: '' }));
  }

  // ------------------------------------------------------------------ vxlan FDB

  /** Adds or updates a vxlan FDB entry (`bridge fdb replace MAC dev X dst IP self permanent`). */
  replaceFdb(e: FdbEntry): void {
    this.onLink(e.index, `replacing fdb ${e.mac} dst ${e.dst} on`, () => this.sock.request(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, fdbBody(e), { object: '' }));
  }

  deleteFdb(e: FdbEntry): void {
    this.onLink(e.index, `deleting fdb ${e.mac} dst ${e.dst} on`, () => this.sock.request(RTM_DELNEIGH, 0, fdbBody(e), { object: '' }));
  }

  /** The FDB entries of one device that name a remote (NDA_DST): a vxlan's unicast table. */
  listFdb(index: number): FdbEntry[] {
    const msgs = this.sock.request(RTM_GETNEIGH, NLM_F_DUMP, [encodeNdMsg({ family: AF_BRIDGE })], { object: `fdb of link #${index} (dump)` });
    const out: FdbEntry[] = [];
    for (const m of msgs) {
      if (m.type !== RTM_NEWNEIGH) continue;
      const h = decodeNdMsg(m.payload);
      if (h.family !== AF_BRIDGE || h.index !== index) continue;
      const a = AttrMap.parse(m.payload, 12);
      const ll = a.get(NDA_LLADDR);
      const dst = a.get(NDA_DST);
      if (!ll || !dst) continue;
      out.push({ index, mac: bytesToMac(ll), dst: bytesToIp(dst) });
    }
    return out;
  }

  listNeighbours(index?: number): Neighbour[] {
    // Strict dump checking refuses an index in the header; the filter goes in NDA_IFINDEX.
    const body = [encodeNdMsg({})];
    if (index !== undefined) body.push(attrU32(NDA_IFINDEX, index));
    const msgs = this.sock.request(RTM_GETNEIGH, NLM_F_DUMP, body, { object: index === undefined ? 'neighbours (dump)' : `neighbours of link #${index} (dump)` });
    const out: Neighbour[] = [];
    for (const m of msgs) {
      if (m.type !== RTM_NEWNEIGH) continue;
      const h = decodeNdMsg(m.payload);
      // AF_UNSPEC dumps include the bridge FDB (AF_BRIDGE): not IP neighbours.
      if (h.family !== AF_INET && h.family !== AF_INET6) continue;
      if (index !== undefined && h.index !== index) continue;
      const a = AttrMap.parse(m.payload, 12);
      const dst = a.get(NDA_DST);
      if (!dst) continue;
      const n: Neighbour = { index: h.index, family: afToFamily(h.family), ip: bytesToIp(dst), state: h.state, permanent: (h.state & NUD_PERMANENT) !== 0 };
      const ll = a.get(NDA_LLADDR);
      if (ll && ll.length > 0) n.mac = bytesToMac(ll);
      out.push(n);
    }
    return out;
  }
}

const describeRule = (r: Rule): string =>
  `${r.priority !== undefined ? `pref ${r.priority} ` : ''}from ${r.from ?? 'all'}${r.to ? ` to ${r.to}` : ''} table ${r.table}`;

function sameFamily(ip: string, family: Family, what: string): Buffer {
  const b = ipToBytes(ip);
  if ((b.length === 4 ? 4 : 6) !== family) throw new Error(`route ${what} ${ip} is not IPv${family} like the destination`);
  return b;
}

function parseLink(m: NlMsg): LinkInfo {
  const h = decodeIfInfo(m.payload);
  const a = AttrMap.parse(m.payload, 16);
  const mac = a.get(IFLA_ADDRESS);
  const l: LinkInfo = {
    index: h.index,
    name: a.str(IFLA_IFNAME) ?? '',
    mtu: a.u32(IFLA_MTU) ?? 0,
    flags: h.flags,
    up: (h.flags & IFF_UP) !== 0,
    mac: mac ? bytesToMac(mac) : '',
  };
  const master = a.u32(IFLA_MASTER);
  if (master !== undefined && master !== 0) l.masterIndex = master;
  const link = a.s32(IFLA_LINK);
  if (link !== undefined && link !== h.index && link !== 0) l.linkIndex = link;
  const nsid = a.s32(IFLA_LINK_NETNSID);
  if (nsid !== undefined) l.linkNetnsId = nsid;
  const alias = a.str(IFLA_IFALIAS);
  if (alias) l.alias = alias;
  const li = a.nested(IFLA_LINKINFO);
  if (li) {
    const kind = li.str(IFLA_INFO_KIND);
    if (kind) l.kind = kind;
    const sk = li.str(IFLA_INFO_SLAVE_KIND);
    if (sk) l.slaveKind = sk;
    if (sk === 'bridge') {
      const mode = li.nested(IFLA_INFO_SLAVE_DATA)?.u8(IFLA_BRPORT_MODE);
      if (mode !== undefined) l.hairpin = mode !== 0;
    }
    if (kind === 'vxlan') {
      const d = li.nested(IFLA_INFO_DATA);
      if (d) {
        const local = d.get(IFLA_VXLAN_LOCAL);
        const port = d.get(IFLA_VXLAN_PORT);
        l.vxlan = { vni: d.u32(IFLA_VXLAN_ID) ?? 0, port: port && port.length >= 2 ? port.readUInt16BE(0) : 0, learning: (d.u8(IFLA_VXLAN_LEARNING) ?? 1) !== 0 };
        if (local) l.vxlan.local = bytesToIp(local);
      }
    }
  }
  return l;
}
