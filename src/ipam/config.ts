// The IPAM section of a patu network config, validated and filled in with the
// host-local defaults. Every problem is an IpamConfigError whose `field` is the
// JSON path of the offending value (ipam.ranges[0][1].gateway), so the CNI layer
// can report it as spec error 7 naming the field.
//
//   "ipam": {
//     "ranges": [ [ {"subnet": "10.200.0.0/24", "rangeStart": "10.200.0.10", "gateway": "10.200.0.1"} ],
//                 [ {"subnet": "fd00:200::/64"} ] ],
//     "routes": [ {"dst": "0.0.0.0/0"} ],
//     "reserved": ["10.200.0.5", "10.200.0.240/28"],
//     "dataDir": "/var/lib/patu/ipam"
//   }
//
// One address per range set. Exactly one IPv4 set is required, at most one IPv6 set
// may be added (dual stack): a pod gets one address per family.
import { unsafePathProblem } from '../safe-path.js';
import {
  broadcastAddress,
  bigIntToIp,
  familyBits,
  formatNetwork,
  networkAddress,
  parseCidr,
  parseIp,
  type Cidr,
  type Family,
} from '../net/cidr.js';
import { DEFAULTS } from '../defaults.js';
import { messageOf, PatuError } from '../errors.js';


export class IpamConfigError extends PatuError {
  readonly code = 'IPAM_CONFIG';
  /** JSON path of the bad value, e.g. `ipam.ranges[0][0].subnet`. */
  readonly field: string;
  /** What is wrong with it, without the field. */
  readonly problem: string;
  constructor(field: string, problem: string, options?: { cause?: unknown }) {
    super(`${field}: ${problem}`, options);
    this.field = field;
    this.problem = problem;
  }
}

export interface RawRange {
  subnet?: unknown;
  rangeStart?: unknown;
  rangeEnd?: unknown;
  gateway?: unknown;
}

export interface RawIpamConfig {
  ranges?: unknown;
  routes?: unknown;
  dataDir?: unknown;
  reserved?: unknown;
}

export interface IpamRange {
  family: Family;
  /** The subnet, host bits cleared. */
  subnet: Cidr;
  /** '10.200.0.0/24' */
  subnetText: string;
  prefixLen: number;
  /** First and last address handed out, inclusive. */
  rangeStart: bigint;
  rangeEnd: bigint;
  gateway: bigint;
  gatewayText: string;
}

export interface IpamRangeSet {
  family: Family;
  ranges: IpamRange[];
}

/** An address or block never handed out automatically (inclusive bounds). */
export interface ReservedBlock {
  family: Family;
  start: bigint;
  end: bigint;
  text: string;
}

export interface IpamRoute {
  dst: string;
  gw?: string;
}

export interface IpamConfig {
  rangeSets: IpamRangeSet[];
  routes: IpamRoute[];
  dataDir: string;
  reserved: ReservedBlock[];
}

const str = (v: unknown, field: string): string => {
  if (typeof v !== 'string' || v.length === 0) throw new IpamConfigError(field, `must be a non-empty string, got ${JSON.stringify(v)}`);
  return v;
};

function addressIn(v: unknown, field: string, what: string, subnet: Cidr, subnetText: string): bigint {
  const text = str(v, field);
  let ip;
  try {
    ip = parseIp(text);
  } catch (err) {
    throw new IpamConfigError(field, messageOf(err), { cause: err });
  }
  if (ip.family !== subnet.family) throw new IpamConfigError(field, `${what} ${text} is IPv${ip.family} but subnet ${subnetText} is IPv${subnet.family}`);
  const net = networkAddress(subnet);
  const last = broadcastAddress(subnet);
  if (ip.value < net || ip.value > last) throw new IpamConfigError(field, `${what} ${text} is outside subnet ${subnetText}`);
  if (ip.value === net) throw new IpamConfigError(field, `${what} ${text} is the network address of ${subnetText}`);
  if (subnet.family === 4 && ip.value === last) throw new IpamConfigError(field, `${what} ${text} is the broadcast address of ${subnetText}`);
  return ip.value;
}

function parseRange(raw: unknown, at: string): IpamRange {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw new IpamConfigError(at, 'must be an object with a subnet');
  const r = raw as RawRange;
  const subnetField = `${at}.subnet`;
  let subnet: Cidr;
  try {
    subnet = parseCidr(str(r.subnet, subnetField));
  } catch (err) {
    if (err instanceof IpamConfigError) throw err;
    throw new IpamConfigError(subnetField, messageOf(err), { cause: err });
  }
  const subnetText = formatNetwork(subnet);
  if (networkAddress(subnet) !== subnet.ip) {
    throw new IpamConfigError(subnetField, `${r.subnet as string} has host bits set; the network is ${subnetText}`);
  }
  // Network address, gateway and (v4) broadcast take three addresses: below four
  // there is nothing left to hand out.
  const bits = familyBits(subnet.family);
  if (subnet.prefix > bits - 2) {
    throw new IpamConfigError(subnetField, `${subnetText} is too small to allocate from (at most /${bits - 2} for IPv${subnet.family})`);
  }
  const net = networkAddress(subnet);
  const lastUsable = subnet.family === 4 ? broadcastAddress(subnet) - 1n : broadcastAddress(subnet);
  const gateway = r.gateway === undefined ? net + 1n : addressIn(r.gateway, `${at}.gateway`, 'gateway', subnet, subnetText);
  const rangeStart = r.rangeStart === undefined ? net + 1n : addressIn(r.rangeStart, `${at}.rangeStart`, 'rangeStart', subnet, subnetText);
  const rangeEnd = r.rangeEnd === undefined ? lastUsable : addressIn(r.rangeEnd, `${at}.rangeEnd`, 'rangeEnd', subnet, subnetText);
  const fmt = (v: bigint): string => bigIntToIp(v, subnet.family);
  if (rangeStart > rangeEnd) {
    throw new IpamConfigError(`${at}.rangeStart`, `rangeStart ${fmt(rangeStart)} is after rangeEnd ${fmt(rangeEnd)}`);
  }
  if (rangeStart === rangeEnd && rangeStart === gateway) {
    throw new IpamConfigError(at, `range ${fmt(rangeStart)}-${fmt(rangeEnd)} holds only the gateway: no address to hand out`);
  }
  return {
    family: subnet.family,
    subnet: { family: subnet.family, ip: net, prefix: subnet.prefix },
    subnetText,
    prefixLen: subnet.prefix,
    rangeStart,
    rangeEnd,
    gateway,
    gatewayText: fmt(gateway),
  };
}

function parseReserved(raw: unknown, at: string, sets: IpamRangeSet[]): ReservedBlock {
  const text = str(raw, at);
  let family: Family;
  let start: bigint;
  let end: bigint;
  try {
    if (text.includes('/')) {
      const c = parseCidr(text);
      family = c.family;
      start = networkAddress(c);
      end = broadcastAddress(c);
    } else {
      const ip = parseIp(text);
      family = ip.family;
      start = end = ip.value;
    }
  } catch (err) {
    throw new IpamConfigError(at, messageOf(err), { cause: err });
  }
  // A reservation outside every subnet does nothing; it is almost surely a typo.
  const inSome = sets.some((s) =>
    s.ranges.some((r) => r.family === family && start <= broadcastAddress(r.subnet) && end >= networkAddress(r.subnet)),
  );
  if (!inSome) throw new IpamConfigError(at, `${text} is not inside any configured subnet`);
  return { family, start, end, text };
}

function parseRoute(raw: unknown, at: string): IpamRoute {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw new IpamConfigError(at, 'must be an object with a dst');
  const r = raw as { dst?: unknown; gw?: unknown };
  let dst: Cidr;
  try {
    dst = parseCidr(str(r.dst, `${at}.dst`));
  } catch (err) {
    if (err instanceof IpamConfigError) throw err;
    throw new IpamConfigError(`${at}.dst`, messageOf(err), { cause: err });
  }
  const out: IpamRoute = { dst: formatNetwork(dst) };
  if (r.gw !== undefined) {
    let gw;
    try {
      gw = parseIp(str(r.gw, `${at}.gw`));
    } catch (err) {
      if (err instanceof IpamConfigError) throw err;
      throw new IpamConfigError(`${at}.gw`, messageOf(err), { cause: err });
    }
    if (gw.family !== dst.family) throw new IpamConfigError(`${at}.gw`, `gateway ${r.gw as string} is IPv${gw.family} but dst ${out.dst} is IPv${dst.family}`);
    out.gw = bigIntToIp(gw.value, gw.family);
  }
  return out;
}

/**
 * Validates an IPAM section and fills in the defaults. `path` prefixes every field
 * path in errors ('ipam' for a network config).
 */
export function parseIpamConfig(raw: unknown, path = 'ipam'): IpamConfig {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw new IpamConfigError(path, 'must be an object');
  const c = raw as RawIpamConfig;

  const rangesField = `${path}.ranges`;
  if (!Array.isArray(c.ranges)) throw new IpamConfigError(rangesField, 'must be an array of range sets ([[{"subnet": ...}]])');
  if (c.ranges.length === 0) throw new IpamConfigError(rangesField, 'must hold at least one range set');
  const rangeSets: IpamRangeSet[] = c.ranges.map((set: unknown, i: number) => {
    const setField = `${rangesField}[${i}]`;
    if (!Array.isArray(set)) throw new IpamConfigError(setField, 'must be an array of ranges');
    if (set.length === 0) throw new IpamConfigError(setField, 'is an empty range set');
    const ranges = set.map((r: unknown, j: number) => parseRange(r, `${setField}[${j}]`));
    const family = ranges[0]!.family;
    ranges.forEach((r, j) => {
      if (r.family !== family) {
        throw new IpamConfigError(`${setField}[${j}].subnet`, `${r.subnetText} is IPv${r.family} but range set ${i} is IPv${family}: a set holds one family`);
      }
      for (let k = 0; k < j; k++) {
        const o = ranges[k]!;
        if (r.rangeStart <= o.rangeEnd && o.rangeStart <= r.rangeEnd) {
          throw new IpamConfigError(`${setField}[${j}]`, `range ${bigIntToIp(r.rangeStart, family)}-${bigIntToIp(r.rangeEnd, family)} overlaps ${setField}[${k}] (${bigIntToIp(o.rangeStart, family)}-${bigIntToIp(o.rangeEnd, family)})`);
        }
      }
    });
    return { family, ranges };
  });
  rangeSets.forEach((s, i) => {
    const k = rangeSets.findIndex((o) => o.family === s.family);
    if (k !== i) {
      throw new IpamConfigError(`${rangesField}[${i}]`, `is a second IPv${s.family} range set (${rangesField}[${k}] is IPv${s.family} already); one set per family`);
    }
  });
  if (!rangeSets.some((s) => s.family === 4)) throw new IpamConfigError(rangesField, 'needs an IPv4 range set (IPv6 is only supported next to IPv4)');

  let reserved: ReservedBlock[] = [];
  if (c.reserved !== undefined) {
    if (!Array.isArray(c.reserved)) throw new IpamConfigError(`${path}.reserved`, 'must be an array of addresses or CIDRs');
    reserved = c.reserved.map((r: unknown, i: number) => parseReserved(r, `${path}.reserved[${i}]`, rangeSets));
  }

  let routes: IpamRoute[] = [];
  if (c.routes !== undefined) {
    if (!Array.isArray(c.routes)) throw new IpamConfigError(`${path}.routes`, 'must be an array of {dst, gw?}');
    routes = c.routes.map((r: unknown, i: number) => parseRoute(r, `${path}.routes[${i}]`));
  }

  let dataDir: string = DEFAULTS.dataDir;
  if (c.dataDir !== undefined) {
    dataDir = str(c.dataDir, `${path}.dataDir`);
    const bad = unsafePathProblem(dataDir);
    if (bad) throw new IpamConfigError(`${path}.dataDir`, bad);
  }

  return { rangeSets, routes, dataDir, reserved };
}

/** Number of addresses the allocator can hand out from a set (gateway and reservations excluded). */
export function allocatableCount(cfg: IpamConfig, setIndex: number): bigint {
  const set = cfg.rangeSets[setIndex];
  if (!set) throw new RangeError(`no range set ${setIndex}`);
  let n = 0n;
  for (const r of set.ranges) {
    // Merge the excluded intervals inside [rangeStart, rangeEnd] so overlaps count once.
    const ex: [bigint, bigint][] = [[r.gateway, r.gateway]];
    for (const b of cfg.reserved) if (b.family === r.family) ex.push([b.start, b.end]);
    const clipped = ex
      .map(([a, b]): [bigint, bigint] => [a < r.rangeStart ? r.rangeStart : a, b > r.rangeEnd ? r.rangeEnd : b])
      .filter(([a, b]) => a <= b)
      .sort((x, y) => (x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : 0));
    let excluded = 0n;
    let cur: [bigint, bigint] | undefined;
    for (const [a, b] of clipped) {
      if (cur && a <= cur[1] + 1n) {
        if (b > cur[1]) cur[1] = b;
        continue;
      }
      if (cur) excluded += cur[1] - cur[0] + 1n;
      cur = [a, b];
    }
    if (cur) excluded += cur[1] - cur[0] + 1n;
    n += r.rangeEnd - r.rangeStart + 1n - excluded;
  }
  return n;
}
