// STATUS (spec 1.1): can this plugin serve an ADD right now? It can when its IPAM
// store is usable and has a free address.
import { messageOf } from '../../errors.js';
import type { NetConf } from '../netconf.js';
import { CniCode, CniError } from '../errors.js';
import { ipamFor } from '../ipam.js';

export function cmdStatus(conf: NetConf): void {
  let free: number;
  try {
    free = ipamFor(conf).freeCount();
  } catch (err) {
    throw new CniError(CniCode.NotAvailable, `plugin not available: IPAM store: ${messageOf(err)}`, 'ipam', { cause: err });
  }
  if (free === 0) throw new CniError(CniCode.NotAvailable, `plugin not available: no free address in network '${conf.name}'`);
}
