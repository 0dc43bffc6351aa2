// What an ADD checks before allocating, so a refused request leaves nothing behind:
// routed and bridged pods never share a subnet, and the routed gateway is no pod's
// address. All refusals are spec code 7 naming the field.
//
// Mixed modes are found from the kernel and the pins, never from other conflists
// (a node may hold networks no file describes any more):
//   routed ADD: an address of a host bridge inside one of our subnets is a bridge-mode
//               network's gateway there;
//   bridge ADD: when routed mode ever ran under this pin root (its pinned pod map
//               exists; a node without routed pods does one existsSync), a routed pod
//               address inside our ranges.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { NetConf } from './netconf.js';
import { invalidConfig } from './errors.js';
import type { NetworkIpam } from './ipam.js';
import { Rtnl } from '../kernel/netlink/rtnl.js';
import { contains, parseCidr, parseIp } from '../net/cidr.js';
import { ROUTED_GATEWAY4, ROUTED_GATEWAY6 } from '../dataplane/routed-gateway.js';

/** The nftables chain key of a routed network's masquerade (bridge mode keys by bridge name). */
export const routedMasqueradeKey = (conf: Pick<NetConf, 'name'>): string => `routed-${conf.name}`;

export async function checkModeConflicts(conf: NetConf, ipam: NetworkIpam): Promise<void> {
  if (conf.mode === 'routed') {
    checkGatewayNotPodAddress(conf, ipam);
    checkNoBridgeOnSubnets(ipam);
  } else {
    await checkNoRoutedPodsInRanges(conf, ipam);
  }
}

function checkGatewayNotPodAddress(conf: NetConf, ipam: NetworkIpam): void {
  const gw = { 4: parseIp(ROUTED_GATEWAY4).value, 6: parseIp(ROUTED_GATEWAY6).value };
  ipam.config.rangeSets.forEach((set, i) => set.ranges.forEach((r, j) => {
    const g = gw[r.family];
    if (g >= r.rangeStart && g <= r.rangeEnd) {
      throw invalidConfig(`ipam.ranges[${i}][${j}]`, `range ${r.subnetText} can hand out ${r.family === 4 ? ROUTED_GATEWAY4 : ROUTED_GATEWAY6}, the gateway of every routed pod: no pod may have that address in routed mode`);
    }
  }));
  conf.requestedIps.forEach((ip, k) => {
    let v;
    try {
      v = parseIp(ip.split('/')[0]!);
    } catch {
      return; // IPAM refuses it with its own message
    }
    if (v.value === gw[v.family]) {
      throw invalidConfig(`runtimeConfig.ips[${k}]`, `${ip} is the gateway of every routed pod: no pod may have that address in routed mode`);
    }
  });
}

function checkNoBridgeOnSubnets(ipam: NetworkIpam): void {
  const subnets = ipam.subnets().map((s) => parseCidr(s));
  const host = Rtnl.open();
  try {
    const links = new Map(host.listLinks().map((l) => [l.index, l]));
    for (const a of host.listAddresses()) {
      const link = links.get(a.index);
      if (link?.kind !== 'bridge') continue;
      const s = subnets.find((c) => c.family === a.family && contains(c, a.address));
      if (s) {
        throw invalidConfig('mode', `subnet ${ipam.subnets()[subnets.indexOf(s)]} is served in bridge mode on this node (bridge '${link.name}' has ${a.address}/${a.prefixLen}): routed and bridged pods never share a subnet`);
      }
    }
  } finally {
    host.close();
  }
}

async function checkNoRoutedPodsInRanges(conf: NetConf, ipam: NetworkIpam): Promise<void> {
  if (!existsSync(join(conf.pinRoot, 'routed', 'patu_routed_pods'))) return;
  // libbpf only where routed mode ran.
  const { routedPodIps } = await import('../dataplane/routed.js');
  const hit = routedPodIps(conf.pinRoot).find((ip) => ipam.inRanges(ip));
  if (hit) {
    throw invalidConfig('mode', `routed pod ${hit} is in this network's ranges (${ipam.subnets().join(', ')}) on this node: routed and bridged pods never share a subnet`);
  }
}
