// Bridge mode, the default data path: one host bridge per network whose address is
// the pods' gateway, and a veth per pod with one end on the bridge and the other,
// named CNI_IFNAME, inside the pod.
//
//   pod netns: eth0 10.200.0.5/24, default via 10.200.0.1
//        |  veth pair
//   host:    patu<hash> --master--> patu0 10.200.0.1/24 --(routing, masquerade)--> world
import { Rtnl, type LinkInfo } from '../kernel/netlink/rtnl.js';
import { SysError, close } from '../kernel/ffi/libc.js';
import { readSysctl, writeSysctl } from '../kernel/sysctl.js';
import { openNetns, withNetns } from '../kernel/netns.js';
import { sha256 } from '../sha256.js';
import { PatuError } from '../errors.js';

/** The configured bridge name belongs to a link patu did not create: patu leaves it alone. */
export class ForeignLinkError extends PatuError {
  readonly code = 'FOREIGN_LINK';
  constructor(readonly link: string, message: string) {
    super(message);
  }
}

export interface GatewayAddress {
  /** The gateway with the subnet's prefix, e.g. 10.200.0.1/24: the bridge's address. */
  cidr: string;
  family: 4 | 6;
}

export interface BridgeSpec {
  name: string;
  mtu: number;
  gateways: GatewayAddress[];
}

export interface EnsuredBridge {
  link: LinkInfo;
  /** True when this call created the bridge: the caller sets up node-wide things once. */
  created: boolean;
}

/**
 * A fixed, locally administered MAC derived from the bridge name: the gateway's MAC
 * then never changes as pods come and go (see Rtnl.createBridge).
 */
export function bridgeMac(name: string): string {
  const d = sha256(`patu-bridge/${name}`);
  d[0] = (d[0]! & 0xfc) | 0x02; // unicast, locally administered
  return [...d.subarray(0, 6)].map((b) => b.toString(16).padStart(2, '0')).join(':');
}

const isErrno = (err: unknown, code: string): boolean => err instanceof SysError && err.code === code;

/** Creates the bridge if needed and makes sure it carries every gateway address and is up. */
export function ensureBridge(rtnl: Rtnl, spec: BridgeSpec): EnsuredBridge {
  let link = rtnl.linkByName(spec.name);
  let created = false;
  if (!link) {
    try {
      rtnl.createBridge(spec.name, { mtu: spec.mtu, mac: bridgeMac(spec.name) });
      created = true;
    } catch (err) {
      // Another ADD may have created it between our lookup and create.
      if (!isErrno(err, 'EEXIST')) throw err;
    }
    link = rtnl.linkByName(spec.name);
    if (!link) throw new Error(`bridge '${spec.name}' not found right after it was created`);
  }
  // Never touch a link patu did not create: an address added to `lo`, a NIC or someone
  // else's bridge changes the host's routing and stays there. patu's bridges carry
  // bridgeMac(name), which nothing else picks.
  if (link.kind !== 'bridge') {
    const what = link.kind ? `a '${link.kind}'` : 'a device without a link kind (loopback or hardware)';
    throw new ForeignLinkError(spec.name, `link '${spec.name}' exists and is ${what}, not a bridge; patu never changes a link it did not create`);
  }
  if (!created && link.mac !== bridgeMac(spec.name)) {
    throw new ForeignLinkError(
      spec.name,
      `bridge '${spec.name}' exists but patu did not create it (MAC ${link.mac}, patu's would be ${bridgeMac(spec.name)}); patu never changes a link it did not create: remove it or name another bridge`,
    );
  }
  const have = new Set(rtnl.listAddresses(link.index).map((a) => `${a.address}/${a.prefixLen}`));
  for (const gw of spec.gateways) {
    if (have.has(gw.cidr)) continue;
    try {
      rtnl.addAddress(link.index, gw.cidr);
    } catch (err) {
      if (!isErrno(err, 'EEXIST')) throw err;
    }
  }
  if (!link.up) rtnl.setUp(link.index);
  ensureForwarding(spec.gateways);
  return { link, created };
}

/**
 * What ensureBridge established, remembered by a long-lived process (the agent) so that
 * an ADD does not check the bridge, its addresses and ip_forward again: two netlink round
 * trips and a sysctl read of every ADD. An entry holds for `ttlMs` (an operator's change
 * to the bridge is seen within that long), and the caller drops it when a pod could not be
 * attached (a bridge deleted behind our back: the veth's IFLA_MASTER then fails with EINVAL).
 */
export class BridgeCache {
  private readonly known = new Map<string, { bridge: EnsuredBridge; gateways: Set<string>; until: number }>();
  private readonly checked = new Map<string, number>();

  constructor(private readonly ttlMs = 10_000, private readonly now: () => number = () => performance.now()) {}

  /** ensureBridge, or what it found within ttlMs for the same bridge and gateways. `cached` says which. */
  ensure(rtnl: Rtnl, spec: BridgeSpec): EnsuredBridge & { cached: boolean } {
    const hit = this.known.get(spec.name);
    if (hit && hit.until > this.now() && spec.gateways.every((g) => hit.gateways.has(g.cidr))) {
      return { link: hit.bridge.link, created: false, cached: true };
    }
    const bridge = ensureBridge(rtnl, spec);
    this.known.set(spec.name, { bridge, gateways: new Set(spec.gateways.map((g) => g.cidr)), until: this.now() + this.ttlMs });
    return { ...bridge, cached: false };
  }

  forget(name: string): void {
    this.known.delete(name);
    for (const key of this.checked.keys()) if (key.startsWith(`${name}\n`)) this.checked.delete(key);
  }

  /**
   * Other per-bridge checks the agent need not repeat on every ADD (masquerade): true
   * when `key` (starting with the bridge name and a newline) was marked within ttlMs.
   * The key holds everything the check depends on, so a changed config checks at once.
   */
  recentlyChecked(key: string): boolean {
    return (this.checked.get(key) ?? -Infinity) > this.now();
  }

  markChecked(key: string): void {
    this.checked.set(key, this.now() + this.ttlMs);
  }
}

/** ip_forward (and IPv6 forwarding with an IPv6 gateway) on: the host routes pods' traffic. */
export function ensureForwarding(gateways: Pick<GatewayAddress, 'family'>[]): void {
  const keys = ['net.ipv4.ip_forward'];
  if (gateways.some((g) => g.family === 6)) keys.push('net.ipv6.conf.all.forwarding');
  for (const key of keys) if (readSysctl(key).trim() !== '1') writeSysctl(key, '1');
}

export interface PodSpec {
  hostVeth: string;
  ifname: string;
  netnsPath: string;
  bridgeIndex: number;
  mtu: number;
  hairpin: boolean;
  /** Addresses with prefix, e.g. 10.200.0.5/24, and the gateway of each. */
  addresses: { cidr: string; gateway?: string; family: 4 | 6 }[];
  /** Extra routes from the IPAM config; a default route via each family's gateway is always added. */
  routes: { dst: string; gw?: string }[];
}

export interface AttachedPod {
  hostMac: string;
  /** ifindex of the host end (NetworkPolicy programs attach there). */
  hostIndex: number;
  podMac: string;
  podIndex: number;
}

/**
 * A random unicast, locally administered MAC (what the kernel would pick, known without
 * asking it). Math.random is enough: the MAC only has to differ from its neighbours on the
 * bridge, and node:crypto is not worth its load time on the plugin's path.
 */
function randomMac(): string {
  const b = Array.from({ length: 6 }, () => Math.floor(Math.random() * 256));
  b[0] = (b[0]! & 0xfc) | 0x02;
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join(':');
}

/** What createPodVeth needs: the names, the pod's netns, and how the host end is born. */
export interface PodVethSpec {
  hostVeth: string;
  ifname: string;
  netnsPath: string;
  mtu: number;
  /** Born as a port of this bridge (bridge mode). */
  masterIndex?: number;
  /** The host end's MAC (routed mode: the gateway's); else the kernel's random one. */
  hostMac?: string;
}

/**
 * The pod's veth, up on the host side, its peer born inside the pod netns with a MAC
 * chosen here (no move step, no look-ups; the creation is echoed back). A stale veth
 * of the same name (an ADD killed half-way) is removed only on EEXIST.
 */
export function createPodVeth(host: Rtnl, spec: PodVethSpec): { hostLink: LinkInfo; podMac: string } {
  const podMac = randomMac();
  const nsFd = openNetns(spec.netnsPath);
  let echoed: LinkInfo | undefined;
  try {
    const create = () => host.createVeth(spec.hostVeth, spec.ifname, {
      mtu: spec.mtu,
      peerNetnsFd: nsFd,
      peerMac: podMac,
      ...(spec.masterIndex !== undefined ? { masterIndex: spec.masterIndex } : {}),
      ...(spec.hostMac !== undefined ? { mac: spec.hostMac } : {}),
      up: true,
    });
    try {
      echoed = create();
    } catch (err) {
      if (!isErrno(err, 'EEXIST')) throw err;
      // A previous ADD that was killed half-way left its veth behind: start clean.
      const stale = host.linkByName(spec.hostVeth);
      if (!stale) throw err; // the pod's end of the name is taken: not ours to remove
      host.deleteLink(stale.index);
      echoed = create();
    }
  } finally {
    close(nsFd);
  }
  const hostLink = echoed ?? host.linkByName(spec.hostVeth);
  if (!hostLink) throw new Error(`veth '${spec.hostVeth}' not found right after it was created`);
  return { hostLink, podMac };
}

/**
 * Wires one pod: veth created with its peer directly inside the pod netns (no move
 * step), host end on the bridge, addresses and routes inside the pod. The fewest
 * round trips the kernel allows: the creation is echoed back (host end's index and MAC,
 * the peer's index), the peer's MAC is chosen here, and a stale veth is looked for only
 * when the name turns out taken.
 */
export function attachPod(host: Rtnl, spec: PodSpec): AttachedPod {
  // Born on the bridge and up, in one request: an ADD killed at any point never
  // leaves a patu veth outside its bridge, where GC (which looks only at this
  // network's bridge ports) could not tell which network it belonged to.
  const { hostLink, podMac } = createPodVeth(host, { ...spec, masterIndex: spec.bridgeIndex });
  if (spec.hairpin) host.setHairpin(hostLink.index, true);

  const pod = Rtnl.openInNetns(spec.netnsPath);
  try {
    const podIndex = hostLink.linkIndex ?? pod.linkByName(spec.ifname)?.index;
    if (podIndex === undefined) throw new Error(`interface '${spec.ifname}' not found in ${spec.netnsPath} after veth creation`);
    if (spec.addresses.some((a) => a.family === 6)) {
      // Pods get their IPv6 address statically: duplicate address detection would
      // only delay it, and router advertisements are not how patu routes.
      withNetns(spec.netnsPath, () => writeSysctl(`net/ipv6/conf/${spec.ifname}/accept_ra`, '0')); // slashes: ifnames may hold dots
    }
    for (const a of spec.addresses) pod.addAddress(podIndex, a.cidr);
    pod.setUp(podIndex);
    const lo = pod.linkByName('lo');
    if (lo && !lo.up) pod.setUp(lo.index);
    for (const a of spec.addresses) {
      if (a.gateway) pod.addRoute({ dst: 'default', gateway: a.gateway, oif: podIndex });
    }
    for (const r of spec.routes) {
      if (r.dst === '0.0.0.0/0' || r.dst === '::/0') continue; // the default route above covers it
      const family = r.dst.includes(':') ? 6 : 4;
      const gw = r.gw ?? spec.addresses.find((a) => a.family === family)?.gateway;
      pod.addRoute({ dst: r.dst, oif: podIndex, ...(gw ? { gateway: gw } : {}) });
    }
    return { hostMac: hostLink.mac, hostIndex: hostLink.index, podMac, podIndex };
  } finally {
    pod.close();
  }
}

/** Removes a pod's veth (its peer goes with it). True when there was one. */
export function detachPod(host: Rtnl, hostVeth: string): boolean {
  const link = host.linkByName(hostVeth);
  if (!link) return false;
  try {
    host.deleteLink(link.index);
  } catch (err) {
    if (isErrno(err, 'ENODEV')) return false; // deleted concurrently (its netns went away)
    throw err;
  }
  return true;
}
