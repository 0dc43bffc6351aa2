// GC (spec 1.1): the runtime lists every attachment that is still valid; patu
// releases addresses and removes veths that belong to none of them. This is what
// cleans up after an ADD that was killed half-way.
import type { NetConf } from '../netconf.js';
import { invalidConfig, toCniError } from '../errors.js';
import { ipamFor, type IpamOpenOptions } from '../ipam.js';
import { Rtnl } from '../../kernel/netlink/rtnl.js';
import { detachPod } from '../../dataplane/bridge.js';
import { hostVethName, isPatuVethName } from '../../dataplane/names.js';
import { sweepAccelRegistry, unregisterPodFromAccel, type Warn } from '../register-accel.js';
import { gcHostPorts } from '../hostports.js';
import { openPodNetApplier } from '../../podnet/apply.js';
import { ROUTED_GATEWAY_MAC } from '../../dataplane/routed-gateway.js';

export async function cmdGc(conf: NetConf, opts: IpamOpenOptions & { warn?: Warn } = {}): Promise<void> {
  const valid = conf.validAttachments;
  if (!valid) throw invalidConfig('cni.dev/valid-attachments', 'GC needs the list of valid attachments');
  let released: string[];
  const ipam = ipamFor(conf, opts);
  try {
    released = ipam.gc(valid.map((v) => ({ containerId: v.containerID, ifname: v.ifname })));
  } catch (err) {
    throw toCniError(err, 'releasing stale addresses');
  }
  try {
    gcHostPorts(conf, ipam.config.dataDir, valid.map((v) => ({ containerId: v.containerID, ifname: v.ifname })), opts);
  } catch (err) {
    throw toCniError(err, 'removing stale hostPort records');
  }
  // The extra interfaces' pools (issue 12) like the main one: records and host veths of
  // containers with no valid attachment go.
  const podnet = openPodNetApplier({ dataDir: ipam.config.dataDir, ...(opts.lockTimeoutMs !== undefined ? { lockTimeoutMs: opts.lockTimeoutMs } : {}) });
  try {
    podnet.gc(new Set(valid.map((v) => v.containerID)));
  } catch (err) {
    throw toCniError(err, 'removing stale extra interfaces');
  } finally {
    podnet.close();
  }
  const warn = opts.warn ?? (() => {});
  await unregisterPodFromAccel(conf, released, warn);
  // Entries whose release was recorded but whose unregistration never ran (a DEL
  // killed in between) are found by address: in this network's ranges, held by no record.
  await sweepAccelRegistry(conf, (ip) => ipam.inRanges(ip), () => new Set(ipam.reservations().map((r) => r.ip)), warn);

  const keep = new Set(valid.map((v) => hostVethName(v.containerID, v.ifname)));
  if (conf.mode === 'routed') return gcRouted(conf, ipam, released, keep);
  const host = Rtnl.open();
  try {
    const bridge = host.linkByName(conf.bridge);
    if (!bridge) return;
    for (const link of host.listLinks()) {
      if (link.masterIndex === bridge.index && isPatuVethName(link.name) && !keep.has(link.name)) {
        detachPod(host, link.name);
      }
    }
  } catch (err) {
    throw toCniError(err, 'removing stale veths');
  } finally {
    host.close();
  }
}

/**
 * Routed mode: redirect entries of released addresses, and any in our ranges that no
 * record holds (a DEL killed half-way), then stale routed veths. A routed veth is a
 * patu-named veth with the gateway MAC and no master; it is this network's when its
 * routes lead into our ranges, or when it has none (an ADD killed before its routes:
 * a routed network's GC may then remove another routed network's veth that is being
 * made at this very moment, as bridge mode's GC may remove an in-flight port).
 */
async function gcRouted(conf: NetConf, ipam: ReturnType<typeof ipamFor>, released: string[], keep: Set<string>): Promise<void> {
  const { unpublishRoutedPods, sweepRoutedPods } = await import('../../dataplane/routed.js');
  try {
    unpublishRoutedPods(conf.pinRoot, released);
    sweepRoutedPods(conf.pinRoot, (ip) => ipam.inRanges(ip), () => new Set(ipam.reservations().map((r) => r.ip)));
  } catch (err) {
    throw toCniError(err, 'removing stale routed entries');
  }
  const host = Rtnl.open();
  try {
    const routes = host.listRoutes({ family: 4 }).concat(host.listRoutes({ family: 6 }));
    for (const link of host.listLinks()) {
      if (link.kind !== 'veth' || link.masterIndex !== undefined || link.mac !== ROUTED_GATEWAY_MAC) continue;
      if (!isPatuVethName(link.name) || keep.has(link.name)) continue;
      const dsts = routes.filter((r) => r.oif === link.index && r.dst !== 'default').map((r) => r.dst.split('/')[0]!);
      if (dsts.length === 0 || dsts.some((ip) => ipam.inRanges(ip))) detachPod(host, link.name);
    }
  } catch (err) {
    throw toCniError(err, 'removing stale veths');
  } finally {
    host.close();
  }
}
