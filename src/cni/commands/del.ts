// DEL: idempotent and forgiving. It succeeds for containers patu never saw, for a
// netns that is already gone, and when called twice.
import type { CniEnv } from '../env.js';
import type { NetConf } from '../netconf.js';
import { toCniError } from '../errors.js';
import { ipamFor, type IpamOpenOptions } from '../ipam.js';
import { Rtnl } from '../../kernel/netlink/rtnl.js';
import { detachPod } from '../../dataplane/bridge.js';
import { hostVethName } from '../../dataplane/names.js';
import { unregisterPodFromAccel, type Warn } from '../register-accel.js';
import { releaseHostPorts } from '../hostports.js';
import { openPodNetApplier } from '../../podnet/apply.js';

export async function cmdDel(env: CniEnv, conf: NetConf, opts: IpamOpenOptions & { warn?: Warn } = {}): Promise<void> {
  const ipam = ipamFor(conf, opts);
  // The host veth is deleted by us rather than left to the netns teardown, which
  // the kernel does asynchronously (PLATFORM.md): the next ADD may reuse the name.
  if (conf.mode === 'routed') {
    // The redirect entries first: once the veth goes, its ifindex may name another link.
    try {
      const { unpublishRoutedPods } = await import('../../dataplane/routed.js');
      unpublishRoutedPods(conf.pinRoot, ipam.addressesOf(env.containerId, env.ifname));
    } catch (err) {
      throw toCniError(err, `removing the routed entries of ${env.containerId}/${env.ifname}`);
    }
  }
  const host = Rtnl.open();
  try {
    detachPod(host, hostVethName(env.containerId, env.ifname));
  } catch (err) {
    throw toCniError(err, `removing the veth of ${env.containerId}/${env.ifname}`);
  } finally {
    host.close();
  }
  let released: string[];
  try {
    released = ipam.release(env.containerId, env.ifname);
  } catch (err) {
    throw toCniError(err, `releasing the addresses of ${env.containerId}/${env.ifname}`);
  }
  // The container's extra interfaces (issue 12): their veths and pool records, here in
  // the DEL itself so a pod deletion leaves nothing even when the agent is down.
  const podnet = openPodNetApplier({ dataDir: ipam.config.dataDir, ...(opts.lockTimeoutMs !== undefined ? { lockTimeoutMs: opts.lockTimeoutMs } : {}) });
  try {
    podnet.release(env.containerId, env.netns || undefined);
  } catch (err) {
    throw toCniError(err, `removing the extra interfaces of ${env.containerId}`);
  } finally {
    podnet.close();
  }
  try {
    releaseHostPorts(conf, env, ipam.config.dataDir, opts);
  } catch (err) {
    throw toCniError(err, `removing the hostPort records of ${env.containerId}/${env.ifname}`);
  }
  await unregisterPodFromAccel(conf, released, opts.warn ?? (() => {}));
}
