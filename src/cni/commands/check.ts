// CHECK: compares the attachment with what ADD reported (prevResult) and with
// patu's own state (IPAM records), and fails naming the first thing that differs.
import { messageOf } from '../../errors.js';
import type { CniEnv } from '../env.js';
import type { NetConf } from '../netconf.js';
import { CniCode, CniError, invalidConfig, toCniError } from '../errors.js';
import { ipamFor } from '../ipam.js';
import { Rtnl } from '../../kernel/netlink/rtnl.js';
import { hostVethName } from '../../dataplane/names.js';
import { checkHostPorts } from '../hostports.js';
import { ROUTED_GATEWAY_MAC } from '../../dataplane/routed-gateway.js';

const fail = (what: string, cause?: unknown): CniError =>
  new CniError(CniCode.CheckFailed, `CHECK failed: ${what}`, '', cause === undefined ? undefined : { cause });

export async function cmdCheck(env: CniEnv, conf: NetConf): Promise<void> {
  const prev = conf.prevResult;
  if (!prev) throw invalidConfig('prevResult', 'CHECK needs the result of the preceding ADD');
  const expected = (prev.ips ?? []).map((ip) => ip.address);

  let held: string[];
  const ipam = ipamFor(conf);
  try {
    held = ipam.addressesOf(env.containerId, env.ifname);
  } catch (err) {
    throw toCniError(err, 'reading IPAM state');
  }
  for (const cidr of expected) {
    if (!held.includes(cidr.split('/')[0]!)) throw fail(`address ${cidr} is no longer reserved for ${env.containerId}/${env.ifname}`);
  }
  try {
    checkHostPorts(conf, env, ipam.config.dataDir, expected.map((c) => c.split('/')[0]!));
  } catch (err) {
    throw toCniError(err, 'reading hostPort records');
  }

  if (conf.mode === 'routed') await checkRoutedHost(env, conf, expected);
  else checkBridgeHost(env, conf);

  let pod: Rtnl;
  try {
    pod = Rtnl.openInNetns(env.netns);
  } catch (err) {
    throw fail(`cannot enter netns ${env.netns}: ${messageOf(err)}`, err);
  }
  try {
    const link = pod.linkByName(env.ifname);
    if (!link) throw fail(`interface '${env.ifname}' is missing in ${env.netns}`);
    if (!link.up) throw fail(`interface '${env.ifname}' in ${env.netns} is down`);
    const have = new Set(pod.listAddresses(link.index).map((a) => `${a.address}/${a.prefixLen}`));
    for (const cidr of expected) {
      if (!have.has(cidr)) throw fail(`address ${cidr} is missing on '${env.ifname}' in ${env.netns}`);
    }
    const routes = pod.listRoutes({});
    for (const ip of prev.ips ?? []) {
      if (!ip.gateway) continue;
      const ok = routes.some((r) => r.dst === 'default' && r.gateway === ip.gateway);
      if (!ok) throw fail(`default route via ${ip.gateway} is missing in ${env.netns}`);
    }
  } finally {
    pod.close();
  }
}

function checkBridgeHost(env: CniEnv, conf: NetConf): void {
  const host = Rtnl.open();
  try {
    const bridge = host.linkByName(conf.bridge);
    if (!bridge) throw fail(`bridge '${conf.bridge}' is missing`);
    const vethName = hostVethName(env.containerId, env.ifname);
    const veth = host.linkByName(vethName);
    if (!veth) throw fail(`host veth '${vethName}' is missing`);
    if (veth.masterIndex !== bridge.index) throw fail(`host veth '${vethName}' is not attached to bridge '${conf.bridge}'`);
    if (!veth.up) throw fail(`host veth '${vethName}' is down`);
  } finally {
    host.close();
  }
}

/** Routed mode: the veth (gateway MAC, no master, up), the program on its ingress, the host's route to each address. */
async function checkRoutedHost(env: CniEnv, conf: NetConf, expected: string[]): Promise<void> {
  const vethName = hostVethName(env.containerId, env.ifname);
  const host = Rtnl.open();
  let index: number;
  try {
    const veth = host.linkByName(vethName);
    if (!veth) throw fail(`host veth '${vethName}' is missing`);
    if (!veth.up) throw fail(`host veth '${vethName}' is down`);
    if (veth.masterIndex !== undefined) throw fail(`host veth '${vethName}' is a port of another device: routed veths have no master`);
    if (veth.mac !== ROUTED_GATEWAY_MAC) throw fail(`host veth '${vethName}' has MAC ${veth.mac}, not the routed gateway's ${ROUTED_GATEWAY_MAC}`);
    index = veth.index;
    const routes = host.listRoutes({ family: 4 }).concat(host.listRoutes({ family: 6 }));
    for (const cidr of expected) {
      const ip = cidr.split('/')[0]!;
      const full = `${ip}/${ip.includes(':') ? 128 : 32}`;
      if (!routes.some((r) => r.dst === full && r.oif === index)) throw fail(`host route ${full} dev ${vethName} is missing`);
    }
  } finally {
    host.close();
  }
  const { routedProgramAttached } = await import('../../dataplane/routed.js');
  if (!routedProgramAttached(index)) throw fail(`the routed program (patu_routed) is not on the ingress of '${vethName}'`);
}
