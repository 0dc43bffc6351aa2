// NetworkPolicy on a new pod's veth (CNI ADD). Policy is on for a node when the
// agent pinned its programs (<pinRoot>/policy/prog_*): then the plugin attaches
// them to the host end of the veth it just made and records the pod's address
// for that veth (anti-spoofing, IPv6). It never loads a program. A failure here
// fails the ADD (rolled back with the veth): a pod must not come up unenforced on
// a node that enforces policy. With no pins (policy off) nothing happens.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { NetConf } from './netconf.js';

/** What the ADD did, for the rollback of a later failure (the veth's deletion detaches the programs). */
export async function attachPolicy(conf: NetConf, hostIfindex: number, ipv4s: string[]): Promise<boolean> {
  // The cheap look first: most nodes without policy stop here without loading libbpf.
  if (!existsSync(join(conf.pinRoot, 'policy', 'prog_from_pod'))) return false;
  const { PolicyDataplane } = await import('../dataplane/policy-tc.js');
  const dp = PolicyDataplane.openExisting(conf.pinRoot);
  if (!dp) return false;
  try {
    // Address first: the moment the programs run, the endpoint (if programmed) is bound to this veth.
    for (const ip of ipv4s) dp.bindDevice(ip, hostIfindex);
    dp.attach(hostIfindex);
    return true;
  } catch (err) {
    throw new Error(`attaching NetworkPolicy programs to ifindex ${hostIfindex}: ${(err as Error).message}`, { cause: err });
  } finally {
    dp.close();
  }
}
