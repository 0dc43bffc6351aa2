// ADD: address from IPAM, bridge and veth, addresses and routes in the pod, then
// NetworkPolicy programs on the veth (when the node enforces policy) and
// (optionally) registration for socket acceleration. Any failure rolls back what
// this call did, so a failed ADD leaves no address, link or route behind.
import type { CniEnv } from '../env.js';
import { portMappingsOf, type NetConf } from '../netconf.js';
import type { CniResult } from '../spec.js';
import { invalidConfig, toCniError } from '../errors.js';
import { ipamFor, recordMetaOf, type IpamOpenOptions } from '../ipam.js';
import { Rtnl } from '../../kernel/netlink/rtnl.js';
import { attachPod, detachPod, ensureBridge, ForeignLinkError, type BridgeCache, type EnsuredBridge } from '../../dataplane/bridge.js';
import { ensureMasqueradeInPlace } from '../../dataplane/masquerade.js';
import { hostVethName } from '../../dataplane/names.js';
import { registerPodForAccel, type Warn } from '../register-accel.js';
import { reserveHostPorts } from '../hostports.js';
import { attachPolicy } from '../policy-attach.js';

export interface AddOptions extends IpamOpenOptions {
  warn?: Warn;
  /** A long-lived caller's memory of bridges already ensured (the agent's). */
  bridges?: BridgeCache;
}

export async function cmdAdd(env: CniEnv, conf: NetConf, opts: AddOptions = {}): Promise<CniResult> {
  // A bad runtimeConfig.portMappings is refused before anything is allocated.
  portMappingsOf(conf);
  const ipam = ipamFor(conf, opts);
  const allocations = (() => {
    try {
      return ipam.allocate(env.containerId, env.ifname, conf.requestedIps, recordMetaOf(env));
    } catch (err) {
      throw toCniError(err, 'allocating an address');
    }
  })();

  const hostVeth = hostVethName(env.containerId, env.ifname);
  let host: Rtnl | undefined;
  let vethCreated = false;
  let undoHostPorts = (): void => {};
  try {
    // Before any link work: a hostPort another pod holds fails the ADD early, and
    // the records lead to the address just allocated.
    undoHostPorts = reserveHostPorts(conf, env, ipam.config.dataDir, allocations.map((a) => a.ip), opts);
    host = Rtnl.open();
    const bridgeSpec = {
      name: conf.bridge,
      mtu: conf.mtu,
      gateways: allocations.filter((a) => a.gateway).map((a) => ({
        cidr: `${a.gateway}/${a.prefixLen}`,
        family: a.family,
      })),
    };
    const ensured: EnsuredBridge & { cached?: boolean } = opts.bridges ? opts.bridges.ensure(host, bridgeSpec) : ensureBridge(host, bridgeSpec);
    let bridge = ensured.link;
    // Every ADD, not only the one that created the bridge: that one may have been killed
    // before it got here, or someone removed the table since (cheap check first). The
    // agent repeats the check once per BridgeCache TTL for the same bridge, subnets and
    // cluster CIDR: a config that turns masquerade on, or changes, is checked at once.
    if (conf.masquerade) {
      const key = `${conf.bridge}\nmasquerade\n${ipam.subnets().join(',')}\n${conf.clusterCIDR}`;
      if (!opts.bridges?.recentlyChecked(key)) {
        ensureMasqueradeInPlace(conf.bridge, ipam.subnets(), conf.clusterCIDR);
        opts.bridges?.markChecked(key);
      }
    }

    vethCreated = true;
    const podSpec = {
      hostVeth,
      ifname: env.ifname,
      netnsPath: env.netns,
      bridgeIndex: bridge.index,
      mtu: conf.mtu,
      hairpin: conf.hairpin,
      addresses: allocations.map((a) => ({
        cidr: a.address,
        family: a.family,
        ...(a.gateway ? { gateway: a.gateway } : {}),
      })),
      routes: ipam.routes(),
    };
    let attached;
    try {
      attached = attachPod(host, podSpec);
    } catch (err) {
      if (!ensured.cached) throw err;
      // The remembered bridge may be gone or changed: check it for real, then try once more.
      opts.bridges!.forget(conf.bridge);
      detachPod(host, hostVeth);
      const fresh = opts.bridges!.ensure(host, bridgeSpec);
      if (conf.masquerade) ensureMasqueradeInPlace(conf.bridge, ipam.subnets(), conf.clusterCIDR);
      bridge = fresh.link;
      attached = attachPod(host, { ...podSpec, bridgeIndex: bridge.index });
    }

    // NetworkPolicy (when the node enforces it): before the pod's container runs. A failure fails the ADD.
    await attachPolicy(conf, attached.hostIndex, allocations.filter((a) => a.family === 4).map((a) => a.ip));

    const accelOn = conf.accel && env.args.PATU_ACCEL !== 'off';
    await registerPodForAccel(conf, allocations.map((a) => a.ip), { optOut: !accelOn, warn: opts.warn ?? (() => {}) });

    return {
      cniVersion: conf.cniVersion,
      interfaces: [
        { name: conf.bridge, mac: bridge.mac },
        { name: hostVeth, mac: attached.hostMac },
        { name: env.ifname, mac: attached.podMac, sandbox: env.netns },
      ],
      ips: allocations.map((a) => ({
        address: a.address,
        interface: 2,
        ...(a.gateway ? { gateway: a.gateway } : {}),
      })),
      routes: [
        ...allocations.filter((a) => a.gateway).map((a) => ({ dst: a.family === 4 ? '0.0.0.0/0' : '::/0', gw: a.gateway! })),
        ...ipam.routes().filter((r) => r.dst !== '0.0.0.0/0' && r.dst !== '::/0'),
      ],
      dns: {},
    };
  } catch (err) {
    // Roll back in reverse order; a rollback failure must not hide the cause.
    if (vethCreated && host) {
      try {
        detachPod(host, hostVeth);
      } catch {
        /* best effort: GC removes what is left */
      }
    }
    try {
      undoHostPorts();
    } catch {
      /* best effort: DEL and GC remove the attachment's records */
    }
    try {
      ipam.release(env.containerId, env.ifname);
    } catch {
      /* best effort: GC releases what is left */
    }
    if (err instanceof ForeignLinkError) throw invalidConfig('bridge', err.message, { cause: err });
    throw toCniError(err, `setting up ${env.ifname} in ${env.netns}`);
  } finally {
    host?.close();
  }
}
