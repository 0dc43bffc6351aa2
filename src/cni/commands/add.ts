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
import { checkModeConflicts, routedMasqueradeKey } from '../routed-checks.js';
import { ROUTED_GATEWAY4, ROUTED_GATEWAY6 } from '../../dataplane/routed-gateway.js';

export interface AddOptions extends IpamOpenOptions {
  warn?: Warn;
  /** A long-lived caller's memory of bridges already ensured (the agent's). */
  bridges?: BridgeCache;
}

export async function cmdAdd(env: CniEnv, conf: NetConf, opts: AddOptions = {}): Promise<CniResult> {
  // A bad runtimeConfig.portMappings is refused before anything is allocated.
  portMappingsOf(conf);
  const ipam = ipamFor(conf, opts);
  // Routed and bridged pods never share a subnet; 169.254.1.1 is nobody's address (routed-checks.ts).
  await checkModeConflicts(conf, ipam);
  if (conf.mode === 'routed') return addRouted(env, conf, ipam, opts);
  const allocations = allocate(env, conf, ipam);

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
    if (conf.masquerade) checkMasquerade(conf.bridge, conf, ipam, opts);

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
    rollBack(vethCreated ? host : undefined, hostVeth, undoHostPorts, () => ipam.release(env.containerId, env.ifname));
    if (err instanceof ForeignLinkError) throw invalidConfig('bridge', err.message, { cause: err });
    throw toCniError(err, `setting up ${env.ifname} in ${env.netns}`);
  } finally {
    host?.close();
  }
}

/**
 * ADD in routed mode (docs/routed.md): the same address, hostPort, policy, acceleration
 * and rollback steps as bridge mode, with a /32 pod behind 169.254.1.1 instead of a bridge.
 */
async function addRouted(env: CniEnv, conf: NetConf, ipam: ReturnType<typeof ipamFor>, opts: AddOptions): Promise<CniResult> {
  // Loaded here: libbpf (koffi) is for routed networks only, never on bridge mode's path.
  const { attachRoutedPod, publishRoutedPod, unpublishRoutedPods } = await import('../../dataplane/routed.js');
  const allocations = allocate(env, conf, ipam);
  const hostVeth = hostVethName(env.containerId, env.ifname);
  let host: Rtnl | undefined;
  let vethCreated = false;
  let undoHostPorts = (): void => {};
  try {
    undoHostPorts = reserveHostPorts(conf, env, ipam.config.dataDir, allocations.map((a) => a.ip), opts);
    host = Rtnl.open();
    if (conf.masquerade) checkMasquerade(routedMasqueradeKey(conf), conf, ipam, opts);
    vethCreated = true;
    const attached = attachRoutedPod(host, {
      hostVeth,
      ifname: env.ifname,
      netnsPath: env.netns,
      mtu: conf.mtu,
      pinRoot: conf.pinRoot,
      addresses: allocations.map((a) => ({ ip: a.ip, family: a.family })),
      routes: ipam.routes(),
    });
    // Policy before the redirect entry: the moment other pods deliver past the stack, the
    // veth is already marked if it carries policy programs (bpf/routed.c patu_routed_nopeer).
    await attachPolicy(conf, attached.hostIndex, allocations.filter((a) => a.family === 4).map((a) => a.ip));
    publishRoutedPod(conf.pinRoot, attached.hostIndex, attached.podMac, allocations.map((a) => a.ip));

    const accelOn = conf.accel && env.args.PATU_ACCEL !== 'off';
    await registerPodForAccel(conf, allocations.map((a) => a.ip), { optOut: !accelOn, warn: opts.warn ?? (() => {}) });

    const gw = (a: { family: 4 | 6 }): string => (a.family === 4 ? ROUTED_GATEWAY4 : ROUTED_GATEWAY6);
    return {
      cniVersion: conf.cniVersion,
      interfaces: [
        { name: hostVeth, mac: attached.hostMac },
        { name: env.ifname, mac: attached.podMac, sandbox: env.netns },
      ],
      ips: allocations.map((a) => ({ address: `${a.ip}/${a.family === 4 ? 32 : 128}`, interface: 1, gateway: gw(a) })),
      routes: [
        ...[...new Set(allocations.map((a) => a.family))].map((f) => ({ dst: f === 4 ? '0.0.0.0/0' : '::/0', gw: gw({ family: f }) })),
        ...ipam.routes().filter((r) => r.dst !== '0.0.0.0/0' && r.dst !== '::/0').map((r) => ({ dst: r.dst, gw: gw({ family: r.dst.includes(':') ? 6 : 4 }) })),
      ],
      dns: {},
    };
  } catch (err) {
    // The veth's deletion takes its routes and program with it; the map entries go by address.
    try {
      unpublishRoutedPods(conf.pinRoot, allocations.map((a) => a.ip));
    } catch {
      /* best effort: GC sweeps entries no record holds */
    }
    rollBack(vethCreated ? host : undefined, hostVeth, undoHostPorts, () => ipam.release(env.containerId, env.ifname));
    throw toCniError(err, `setting up ${env.ifname} in ${env.netns}`);
  } finally {
    host?.close();
  }
}

/** One address per range set for (container, ifname), the pod's identity in the record; a failure is the CNI error. */
function allocate(env: CniEnv, conf: NetConf, ipam: ReturnType<typeof ipamFor>) {
  try {
    return ipam.allocate(env.containerId, env.ifname, conf.requestedIps, recordMetaOf(env));
  } catch (err) {
    throw toCniError(err, 'allocating an address');
  }
}

/**
 * The masquerade rules of `key` (a bridge, or a routed network's key) checked and reinstalled
 * when missing; the agent remembers a check for a BridgeCache TTL per key, subnets and cluster CIDR.
 */
function checkMasquerade(key: string, conf: NetConf, ipam: ReturnType<typeof ipamFor>, opts: AddOptions): void {
  const memo = `${key}\nmasquerade\n${ipam.subnets().join(',')}\n${conf.clusterCIDR}`;
  if (opts.bridges?.recentlyChecked(memo)) return;
  ensureMasqueradeInPlace(key, ipam.subnets(), conf.clusterCIDR);
  opts.bridges?.markChecked(memo);
}

/**
 * A failed ADD undoes what it made, in reverse order: the veth (when this ADD created it),
 * the hostPort records, the address. Each step is best effort and never hides the ADD's own
 * error: DEL and GC remove whatever a failed step leaves.
 */
function rollBack(host: Rtnl | undefined, hostVeth: string, undoHostPorts: () => void, releaseAddress: () => void): void {
  const steps = [() => host && detachPod(host, hostVeth), undoHostPorts, releaseAddress];
  for (const step of steps) {
    try {
      step();
    } catch {
      /* best effort, see above */
    }
  }
}
