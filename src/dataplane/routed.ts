// Routed mode (docs/routed.md): no bridge. Each pod has a /32 (and a /128) on its
// eth0 and routes everything via 169.254.1.1 (fe80::1), which exists nowhere: the
// tc program on the host veth (bpf/routed.c, src/dataplane/routed-tc.ts) answers
// its ARP and neighbour solicitations with the host veth's MAC, the same on every
// routed veth (ROUTED_GATEWAY_MAC). The host reaches the pod by a /32 (/128) route
// to the veth; the host veth has no IPv4 address and proxy_arp stays off.
//
//   pod netns: eth0 10.200.0.5/32, 169.254.1.1 dev eth0 scope link, default via 169.254.1.1
//        |  veth pair (host end MAC 02:50:a9:fe:01:01, patu_routed on its tcx ingress)
//   host:    patu<hash>; route 10.200.0.5/32 dev patu<hash>
import { Rtnl } from '../kernel/netlink/rtnl.js';
import { readSysctl, writeSysctl } from '../kernel/sysctl.js';
import { withNetns } from '../kernel/netns.js';
import { createPodVeth, ensureForwarding, type AttachedPod } from './bridge.js';
import { RoutedTc, ROUTED_PROGRAM } from './routed-tc.js';
import { tcxQuery } from '../kernel/bpf/tcx.js';
import { ROUTED_GATEWAY4, ROUTED_GATEWAY6, ROUTED_GATEWAY_MAC } from './routed-gateway.js';

export interface RoutedPodSpec {
  hostVeth: string;
  ifname: string;
  netnsPath: string;
  mtu: number;
  pinRoot: string;
  /** Bare addresses (the pod gets each as a /32 or /128). */
  addresses: { ip: string; family: 4 | 6 }[];
  /** Extra routes from the IPAM config: via the gateway of their family. */
  routes: { dst: string }[];
}

/** RTPROT_STATIC: host routes to pods, like `ip route add ... proto static`. */
const RTPROT_STATIC = 4;
const RT_SCOPE_LINK = 253;

/**
 * Wires one routed pod: veth (host end with the gateway MAC, up), the program on its
 * ingress, the host's routes to the pod, the pod's addresses and routes. The pod map
 * entry (the redirect into this pod) is written by publishRoutedPod, last in the ADD:
 * before it, packets to the pod take the stack path, which always works.
 */
export function attachRoutedPod(host: Rtnl, spec: RoutedPodSpec): AttachedPod {
  ensureForwarding(spec.addresses);
  const { hostLink, podMac } = createPodVeth(host, { ...spec, hostMac: ROUTED_GATEWAY_MAC });
  const hostIndex = hostLink.index;
  // No ARP proxying by the kernel: the program answers for the gateway, nothing else is answered.
  const proxy = `net/ipv4/conf/${spec.hostVeth}/proxy_arp`;
  if (readSysctl(proxy).trim() !== '0') writeSysctl(proxy, '0');
  RoutedTc.lock(spec.pinRoot, () => {
    const tc = RoutedTc.open({ pinRoot: spec.pinRoot });
    try {
      tc.setPolicy(hostIndex, false); // an ifindex reused from a veth that had policy
      tc.attach(hostIndex);
    } finally {
      tc.close();
    }
  });
  for (const a of spec.addresses) {
    host.replaceRoute({ dst: `${a.ip}/${a.family === 4 ? 32 : 128}`, oif: hostIndex, scope: RT_SCOPE_LINK, protocol: RTPROT_STATIC });
  }

  const pod = Rtnl.openInNetns(spec.netnsPath);
  try {
    const podIndex = hostLink.linkIndex ?? pod.linkByName(spec.ifname)?.index;
    if (podIndex === undefined) throw new Error(`interface '${spec.ifname}' not found in ${spec.netnsPath} after veth creation`);
    const v6 = spec.addresses.some((a) => a.family === 6);
    if (v6) withNetns(spec.netnsPath, () => writeSysctl(`net/ipv6/conf/${spec.ifname}/accept_ra`, '0'));
    for (const a of spec.addresses) pod.addAddress(podIndex, `${a.ip}/${a.family === 4 ? 32 : 128}`);
    pod.setUp(podIndex);
    const lo = pod.linkByName('lo');
    if (lo && !lo.up) pod.setUp(lo.index);
    // The gateway is on the link (no subnet says so: the pod has a /32), then the default via it.
    pod.addRoute({ dst: `${ROUTED_GATEWAY4}/32`, oif: podIndex, scope: RT_SCOPE_LINK });
    pod.addRoute({ dst: 'default', gateway: ROUTED_GATEWAY4, oif: podIndex });
    if (v6) pod.addRoute({ dst: 'default', gateway: ROUTED_GATEWAY6, oif: podIndex, family: 6 });
    for (const r of spec.routes) {
      if (r.dst === '0.0.0.0/0' || r.dst === '::/0') continue;
      const six = r.dst.includes(':');
      pod.addRoute({ dst: r.dst, oif: podIndex, gateway: six ? ROUTED_GATEWAY6 : ROUTED_GATEWAY4 });
    }
    return { hostMac: hostLink.mac, hostIndex, podMac, podIndex };
  } finally {
    pod.close();
  }
}

/** The pod's addresses into the redirect map: from now on, routed pods deliver to it past the stack. */
export function publishRoutedPod(pinRoot: string, hostIndex: number, podMac: string, ips: string[]): void {
  RoutedTc.lock(pinRoot, () => {
    const tc = RoutedTc.open({ pinRoot });
    try {
      for (const ip of ips) tc.setPod({ ip, ifindex: hostIndex, mac: podMac });
    } finally {
      tc.close();
    }
  });
}

/** DEL, GC: the pod's addresses out of the redirect map (before its veth goes: an ifindex can be reused). */
export function unpublishRoutedPods(pinRoot: string, ips: string[]): void {
  if (ips.length === 0) return;
  const tc = RoutedTc.openExisting(pinRoot);
  if (!tc) return;
  try {
    RoutedTc.lock(pinRoot, () => {
      for (const ip of ips) tc.deletePod(ip);
    });
  } finally {
    tc.close();
  }
}

/** GC: entries whose address is in the network's ranges but held by no IPAM record (a DEL killed half-way). */
export function sweepRoutedPods(pinRoot: string, inRanges: (ip: string) => boolean, held: () => Set<string>): string[] {
  const tc = RoutedTc.openExisting(pinRoot);
  if (!tc) return [];
  try {
    return RoutedTc.lock(pinRoot, () => {
      const keep = held();
      const gone = tc.podIps().filter((ip) => inRanges(ip) && !keep.has(ip));
      for (const ip of gone) tc.deletePod(ip);
      return gone;
    });
  } finally {
    tc.close();
  }
}

/** Routed pod addresses under this pin root (IPv4), for the bridge-mode side of the mixed-subnet check. */
export function routedPodIps(pinRoot: string): string[] {
  const tc = RoutedTc.openExisting(pinRoot);
  if (!tc) return [];
  try {
    return tc.podIps();
  } finally {
    tc.close();
  }
}

/** CHECK: patu_routed is on the veth's tcx ingress (whichever load it came from). */
export function routedProgramAttached(ifindex: number): boolean {
  return tcxQuery(ifindex, 'ingress').some((p) => p.name === ROUTED_PROGRAM);
}
