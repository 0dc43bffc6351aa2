// Address allocation with host-local semantics: one address per range set, found
// round-robin after the set's last reserved address (so a released address is not
// handed out again at once), skipping the gateway and reserved addresses. Every
// state-changing call holds the store lock for its whole duration.
import { bigIntToIp, canonicalIp, parseCidr, parseIp, type Family } from '../net/cidr.js';
import { messageOf, PatuError } from '../errors.js';
import { allocatableCount, IpamConfigError, type IpamConfig, type IpamRange, type IpamRangeSet } from './config.js';
import type { RecordMeta, Store } from './backend.js';

export interface Allocation {
  version: '4' | '6';
  family: Family;
  /** Address with the subnet's prefix, as a CNI result wants it: '10.200.0.5/24'. */
  address: string;
  /** Bare address: '10.200.0.5'. */
  ip: string;
  prefixLen: number;
  gateway?: string;
  rangeSetIndex: number;
}

export interface Owner {
  containerId: string;
  ifname: string;
}

export class IpamExhaustedError extends PatuError {
  readonly code = 'IPAM_EXHAUSTED';
  readonly rangeSetIndex: number;
  constructor(setIndex: number, set: IpamRangeSet, size: bigint) {
    super(`no free address in range set ${setIndex} (${describeSet(set)}): all ${size} allocatable addresses are taken`);
    this.rangeSetIndex = setIndex;
  }
}

/** A specific address was asked for but cannot be given (held by someone else). */
export class IpamUnavailableError extends PatuError {
  readonly code = 'IPAM_UNAVAILABLE';
}

const describeSet = (set: IpamRangeSet): string =>
  set.ranges.map((r) => `${bigIntToIp(r.rangeStart, r.family)}-${bigIntToIp(r.rangeEnd, r.family)} in ${r.subnetText}`).join(', ');

const rangeOf = (set: IpamRangeSet, family: Family, v: bigint): IpamRange | undefined =>
  set.family === family ? set.ranges.find((r) => v >= r.rangeStart && v <= r.rangeEnd) : undefined;

const reservedBlock = (cfg: IpamConfig, family: Family, v: bigint) =>
  cfg.reserved.find((b) => b.family === family && v >= b.start && v <= b.end);

function toAllocation(setIndex: number, r: IpamRange, v: bigint): Allocation {
  const ip = bigIntToIp(v, r.family);
  return {
    version: r.family === 4 ? '4' : '6',
    family: r.family,
    address: `${ip}/${r.prefixLen}`,
    ip,
    prefixLen: r.prefixLen,
    gateway: r.gatewayText,
    rangeSetIndex: setIndex,
  };
}

/**
 * The first free address of the set after `last`, wrapping around once. Runs in
 * O(held + reserved blocks) steps, not O(range size): a reserved block is skipped in
 * one step, which matters for an IPv6 /64.
 */
function pickFree(cfg: IpamConfig, set: IpamRangeSet, taken: Set<bigint>, last: bigint | undefined): { r: IpamRange; v: bigint } | undefined {
  const ranges = set.ranges;
  let total = 0n;
  for (const r of ranges) total += r.rangeEnd - r.rangeStart + 1n;
  let ri = 0;
  let cur = ranges[0]!.rangeStart;
  if (last !== undefined) {
    const at = ranges.findIndex((r) => last >= r.rangeStart && last <= r.rangeEnd);
    if (at >= 0) {
      ri = at;
      cur = last + 1n;
    }
  }
  let seen = 0n;
  while (seen < total) {
    let r = ranges[ri]!;
    if (cur > r.rangeEnd) {
      ri = (ri + 1) % ranges.length;
      r = ranges[ri]!;
      cur = r.rangeStart;
    }
    const block = reservedBlock(cfg, set.family, cur);
    if (block) {
      const end = block.end < r.rangeEnd ? block.end : r.rangeEnd;
      seen += end - cur + 1n;
      cur = end + 1n;
    } else if (cur === r.gateway || taken.has(cur)) {
      seen++;
      cur++;
    } else {
      return { r, v: cur };
    }
  }
  return undefined;
}

function checkOwner(containerId: string, ifname: string): void {
  // Records are read back trimmed: an id with outer whitespace would never match
  // itself again and every re-ADD would take a new address.
  if (!containerId || /[\r\n\0]/.test(containerId) || containerId.trim() !== containerId) {
    throw new IpamConfigError('CNI_CONTAINERID', `container id ${JSON.stringify(containerId)} is empty, holds a line break or has outer whitespace`);
  }
  if (!ifname || /[\r\n\0/]/.test(ifname)) throw new IpamConfigError('CNI_IFNAME', `ifname ${JSON.stringify(ifname)} is empty or holds a line break or '/'`);
}

/** Maps each requested address to the one range set it belongs to. */
function placeRequested(cfg: IpamConfig, ips: string[]): Map<number, { r: IpamRange; v: bigint; text: string }> {
  const out = new Map<number, { r: IpamRange; v: bigint; text: string }>();
  ips.forEach((text, i) => {
    const field = `runtimeConfig.ips[${i}]`;
    let ip;
    try {
      // An address, or an address with a prefix (what libcni passes): the prefix must
      // be a real one (not /33, /-1, /24/1 or /), though the range decides the pod's.
      if (typeof text === 'string' && text.includes('/')) {
        const c = parseCidr(text);
        ip = { family: c.family, value: c.ip };
      } else {
        ip = parseIp(text);
      }
    } catch (err) {
      throw new IpamConfigError(field, messageOf(err), { cause: err });
    }
    const shown = bigIntToIp(ip.value, ip.family);
    const setIndex = cfg.rangeSets.findIndex((s) => rangeOf(s, ip.family, ip.value));
    if (setIndex < 0) throw new IpamConfigError(field, `requested address ${shown} is not inside any configured range`);
    const r = rangeOf(cfg.rangeSets[setIndex]!, ip.family, ip.value)!;
    if (ip.value === r.gateway) throw new IpamConfigError(field, `requested address ${shown} is the gateway of ${r.subnetText}`);
    const block = reservedBlock(cfg, ip.family, ip.value);
    if (block) throw new IpamConfigError(field, `requested address ${shown} is reserved (ipam.reserved '${block.text}')`);
    const prev = out.get(setIndex);
    if (prev) throw new IpamConfigError(field, `requested address ${shown} is in the same range set (${setIndex}) as ${prev.text}: one address per set`);
    out.set(setIndex, { r, v: ip.value, text: shown });
  });
  return out;
}

/**
 * One address per range set for containerId/ifname. Idempotent: addresses the
 * owner already holds are returned as they are. `requested.ips` (runtimeConfig
 * "ips") pins the address of the set each one falls in; all of them are honoured or
 * the call fails and reserves nothing. `requested.meta` (netns, pod) goes into new
 * records; an address the owner already holds keeps the record it has.
 */
export function allocate(
  cfg: IpamConfig,
  store: Store,
  containerId: string,
  ifname: string,
  requested: { ips?: string[]; meta?: RecordMeta } = {},
): Allocation[] {
  checkOwner(containerId, ifname);
  const wanted = placeRequested(cfg, requested.ips ?? []);
  return store.withLock(() => {
    // The directory listing gives what is taken; the owner index what this owner
    // already holds: no record but the owner's own is read (see store.ts).
    const taken: Record<Family, Set<bigint>> = { 4: new Set(), 6: new Set() };
    for (const text of store.heldIps()) {
      const ip = parseIp(text);
      taken[ip.family].add(ip.value);
    }
    const mine = store.findByOwnerIndexed(containerId, ifname).map((text) => {
      const ip = parseIp(text);
      return { family: ip.family, v: ip.value };
    });

    const fresh: string[] = [];
    try {
      return cfg.rangeSets.map((set, i): Allocation => {
        const have = mine.map((m) => ({ m, r: rangeOf(set, m.family, m.v) })).find((x) => x.r);
        const want = wanted.get(i);
        if (have) {
          if (want && want.v !== have.m.v) {
            throw new IpamUnavailableError(`${containerId}/${ifname} already holds ${bigIntToIp(have.m.v, set.family)} in range set ${i}; cannot also take requested ${want.text}`);
          }
          return toAllocation(i, have.r!, have.m.v);
        }
        let pick: { r: IpamRange; v: bigint } | undefined;
        if (want) {
          const held = taken[set.family].has(want.v) ? store.ownerOf(want.text) : undefined;
          const holder = held ? `${held.containerId}/${held.ifname}` : undefined;
          if (holder !== undefined) throw new IpamUnavailableError(`requested address ${want.text} is already held by ${holder}`);
          pick = want;
        } else {
          const lastText = store.lastReserved(i);
          let last: bigint | undefined;
          if (lastText !== undefined) {
            const l = parseIp(lastText);
            if (l.family === set.family) last = l.value;
          }
          pick = pickFree(cfg, set, taken[set.family], last);
          if (!pick) throw new IpamExhaustedError(i, set, allocatableCount(cfg, i));
        }
        const text = bigIntToIp(pick.v, set.family);
        if (!store.reserve(text, containerId, ifname, requested.meta)) {
          // Only a writer that ignores the lock can get here.
          throw new IpamUnavailableError(`address ${text} was taken while the lock of ${store.location} was held`);
        }
        fresh.push(text);
        taken[set.family].add(pick.v);
        store.setLastReserved(i, text);
        return toAllocation(i, pick.r, pick.v);
      });
    } catch (err) {
      // All or nothing: a partial dual-stack allocation would leak the first address.
      for (const ip of fresh) {
        try {
          store.release(ip);
        } catch {
          /* GC releases what is left */
        }
      }
      throw err;
    }
  });
}

/** Releases every address of containerId/ifname; returns them. Unknown owners are fine (DEL is idempotent). */
export function release(_cfg: IpamConfig, store: Store, containerId: string, ifname: string): string[] {
  return store.withLock(() => store.releaseByOwner(containerId.trim(), ifname));
}

/** Addresses containerId/ifname holds (canonical, no prefix). Reads without the lock: records appear atomically. */
export function addressesOf(store: Store, containerId: string, ifname: string): string[] {
  return store.findByOwner(containerId, ifname).map(canonicalIp);
}

/**
 * Releases every address whose owner is not in `valid` (CNI GC); returns them.
 * Records that name no owner (unreadable) are released too: nothing valid can own them.
 */
export function gc(_cfg: IpamConfig, store: Store, valid: Owner[]): string[] {
  const keep = new Set(valid.map((o) => `${o.containerId.trim()}\n${o.ifname}`));
  return store.withLock(() => {
    const gone: string[] = [];
    for (const rec of store.list()) {
      if (keep.has(`${rec.containerId}\n${rec.ifname}`)) continue;
      if (store.release(rec.ip)) gone.push(rec.ip);
    }
    return gone;
  });
}
