// IPv4/IPv6 addresses and prefixes as bigints: the one parser of addresses and
// CIDRs for the whole tree (netconf, IPAM, netlink, Kubernetes, install), so a value
// one layer accepts is never refused or read differently by another. No node:net:
// the CNI ADD path loads this on every pod, and bigint arithmetic makes v4 and v6
// one code path (a v6 /64 does not fit in a double).
//
// Parsing is strict on purpose: an address that Go's net.ParseIP (and so the
// reference host-local plugin) would reject is rejected here too, e.g. IPv4 octets
// with leading zeros (ambiguous with octal) and IPv6 zone ids.

import { PatuError } from '../errors.js';

export type Family = 4 | 6;

export interface Ip {
  family: Family;
  value: bigint;
}

export interface Cidr {
  family: Family;
  /** The address as written (may have host bits set, e.g. 10.0.0.5/24 for a pod address). */
  ip: bigint;
  prefix: number;
}

export const familyBits = (family: Family): number => (family === 4 ? 32 : 128);
const maxValue = (family: Family): bigint => (family === 4 ? 0xffff_ffffn : (1n << 128n) - 1n);

/** Thrown for text that is not an address or prefix; the message quotes the text. */
export class CidrParseError extends PatuError {
  readonly code = 'CIDR_PARSE';
  constructor(text: string, why: string) {
    super(`'${text}' ${why}`);
  }
}

function parseV4(text: string, whole: string): bigint {
  const parts = text.split('.');
  if (parts.length !== 4) throw new CidrParseError(whole, 'is not an IPv4 address (need four dotted octets)');
  let v = 0n;
  for (const p of parts) {
    if (!/^(0|[1-9][0-9]{0,2})$/.test(p)) throw new CidrParseError(whole, `has a bad IPv4 octet '${p}'`);
    const n = Number(p);
    if (n > 255) throw new CidrParseError(whole, `has an IPv4 octet above 255 ('${p}')`);
    v = (v << 8n) | BigInt(n);
  }
  return v;
}

function parseV6(text: string): bigint {
  if (text.includes('%')) throw new CidrParseError(text, 'has an IPv6 zone, which is not allowed here');
  const halves = text.split('::');
  if (halves.length > 2) throw new CidrParseError(text, "has more than one '::'");
  const groupsOf = (s: string, isLast: boolean): bigint[] => {
    if (s === '') return [];
    const out: bigint[] = [];
    const parts = s.split(':');
    parts.forEach((p, i) => {
      if (isLast && i === parts.length - 1 && p.includes('.')) {
        const v4 = parseV4(p, text);
        out.push(v4 >> 16n, v4 & 0xffffn);
      } else if (/^[0-9a-fA-F]{1,4}$/.test(p)) {
        out.push(BigInt(`0x${p}`));
      } else {
        throw new CidrParseError(text, `has a bad IPv6 group '${p}'`);
      }
    });
    return out;
  };
  let groups: bigint[];
  if (halves.length === 2) {
    const head = groupsOf(halves[0]!, false);
    const tail = groupsOf(halves[1]!, true);
    const fill = 8 - head.length - tail.length;
    if (fill < 1) throw new CidrParseError(text, "has '::' but already eight groups");
    groups = [...head, ...new Array<bigint>(fill).fill(0n), ...tail];
  } else {
    groups = groupsOf(text, true);
    if (groups.length !== 8) throw new CidrParseError(text, 'is not an IPv6 address (need eight groups or ::)');
  }
  return groups.reduce((acc, g) => (acc << 16n) | g, 0n);
}

/** Dotted-quad IPv4 without leading zeros; hand-rolled because it runs for every endpoint. */
export function isIPv4(s: unknown): s is string {
  if (typeof s !== 'string') return false;
  let parts = 0;
  let val = 0;
  let digits = 0;
  for (let i = 0; i <= s.length; i++) {
    const c = i < s.length ? s.charCodeAt(i) : 46;
    if (c === 46) {
      if (digits === 0 || val > 255) return false;
      parts++;
      val = 0;
      digits = 0;
    } else if (c >= 48 && c <= 57) {
      if (digits > 0 && val === 0) return false;
      val = val * 10 + (c - 48);
      if (++digits > 3) return false;
    } else return false;
  }
  return parts === 4;
}

/** Parses an IPv4 or IPv6 address (no prefix). */
export function parseIp(text: string): Ip {
  if (typeof text !== 'string' || text.length === 0) throw new CidrParseError(String(text), 'is not an IP address');
  if (text.includes(':')) return { family: 6, value: parseV6(text) };
  return { family: 4, value: parseV4(text, text) };
}

/** The bigint of an address (either family). */
export const ipToBigInt = (text: string): bigint => parseIp(text).value;

/**
 * Canonical text of an address: dotted quad for v4, RFC 5952 for v6 (lowercase,
 * longest run of two or more zero groups compressed, IPv4-mapped in mixed form).
 */
export function bigIntToIp(value: bigint, family: Family): string {
  if (value < 0n || value > maxValue(family)) throw new RangeError(`${value} is not an IPv${family} address value`);
  if (family === 4) {
    return [24n, 16n, 8n, 0n].map((s) => String((value >> s) & 0xffn)).join('.');
  }
  if (value >> 32n === 0xffffn) return `::ffff:${bigIntToIp(value & 0xffff_ffffn, 4)}`;
  const groups: number[] = [];
  for (let s = 112n; s >= 0n; s -= 16n) groups.push(Number((value >> s) & 0xffffn));
  let bestAt = -1;
  let bestLen = 1; // RFC 5952 4.2.2: a single zero group is not compressed
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) {
      bestAt = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = (gs: number[]): string => gs.map((g) => g.toString(16)).join(':');
  if (bestAt < 0) return hex(groups);
  return `${hex(groups.slice(0, bestAt))}::${hex(groups.slice(bestAt + bestLen))}`;
}

/** Re-formats an address in canonical form (e.g. 'FE80:0::1' -> 'fe80::1'). */
export const canonicalIp = (text: string): string => {
  const ip = parseIp(text);
  return bigIntToIp(ip.value, ip.family);
};

/** Parses 'a.b.c.d/n' or 'x::y/n'. Host bits are kept in `ip`; use networkAddress for the network. */
export function parseCidr(text: string): Cidr {
  if (typeof text !== 'string') throw new CidrParseError(String(text), 'is not a CIDR');
  const slash = text.indexOf('/');
  if (slash < 0) throw new CidrParseError(text, 'is not a CIDR (missing /prefix)');
  const ip = parseIp(text.slice(0, slash));
  const p = text.slice(slash + 1);
  if (!/^(0|[1-9][0-9]{0,2})$/.test(p)) throw new CidrParseError(text, `has a bad prefix length '${p}'`);
  const prefix = Number(p);
  if (prefix > familyBits(ip.family)) {
    throw new CidrParseError(text, `has prefix /${prefix}, more than ${familyBits(ip.family)} bits for IPv${ip.family}`);
  }
  return { family: ip.family, ip: ip.value, prefix };
}

const hostMask = (c: Pick<Cidr, 'family' | 'prefix'>): bigint =>
  (1n << BigInt(familyBits(c.family) - c.prefix)) - 1n;

export const networkAddress = (c: Cidr): bigint => c.ip & ~hostMask(c) & maxValue(c.family);

/** The last address of the prefix (the broadcast address for IPv4). */
export const broadcastAddress = (c: Cidr): bigint => networkAddress(c) | hostMask(c);

/** Number of addresses in the prefix. */
export const prefixSize = (c: Pick<Cidr, 'family' | 'prefix'>): bigint => hostMask(c) + 1n;

/**
 * The n-th address of the prefix, counting from the network address (n = 0); a
 * negative n counts back from the last address (-1 is the broadcast for IPv4).
 */
export function nthAddress(c: Cidr, n: bigint | number): bigint {
  const k = BigInt(n);
  const size = prefixSize(c);
  const off = k < 0n ? size + k : k;
  if (off < 0n || off >= size) throw new RangeError(`address #${k} is outside ${formatCidr(c)} (${size} addresses)`);
  return networkAddress(c) + off;
}

/** Whether `ip` is inside the prefix. A different family is never inside. */
export function contains(c: Cidr, ip: Ip | string): boolean {
  const a = typeof ip === 'string' ? parseIp(ip) : ip;
  return a.family === c.family && (a.value & ~hostMask(c) & maxValue(c.family)) === networkAddress(c);
}

export function overlaps(a: Cidr, b: Cidr): boolean {
  if (a.family !== b.family) return false;
  return networkAddress(a) <= broadcastAddress(b) && networkAddress(b) <= broadcastAddress(a);
}

/** 'ip/prefix' with the address as stored (host bits kept), for messages. */
const formatCidr = (c: Cidr): string => `${bigIntToIp(c.ip, c.family)}/${c.prefix}`;

/** The network itself, host bits cleared: 10.0.0.0/24. */
export const formatNetwork = (c: Cidr): string => `${bigIntToIp(networkAddress(c), c.family)}/${c.prefix}`;

/** The first /24 of an IPv4 CIDR (the default pod subnet when the node has no podCIDR). */
export function firstSubnet24(cidr: string): string {
  const c = parseCidr(cidr);
  if (c.family !== 4) throw new CidrParseError(cidr, 'is not an IPv4 CIDR');
  if (c.prefix > 24) throw new CidrParseError(cidr, 'is smaller than a /24');
  return formatNetwork({ ...c, ip: networkAddress(c), prefix: 24 });
}
