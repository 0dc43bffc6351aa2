// rtnetlink wire format: nlmsghdr framing, rtattr TLVs (nested, 4-byte aligned),
// the fixed family headers (ifinfomsg, ifaddrmsg, rtmsg, ndmsg), NLMSG_ERROR with
// extended ack, and the address/MAC text forms used by the Rtnl API.
// Everything is host byte order (little-endian on every machine patu targets)
// except addresses, which are network order byte strings.
import { SysError } from '../ffi/libc.js';
import { bigIntToIp, familyBits, parseCidr, parseIp, type Family } from '../../net/cidr.js';

// ---------------------------------------------------------------- constants

export const NETLINK_ROUTE = 0;

export const NLMSG_NOOP = 1;
export const NLMSG_ERROR = 2;
export const NLMSG_DONE = 3;
export const NLMSG_OVERRUN = 4;

export const NLM_F_REQUEST = 0x01;
export const NLM_F_MULTI = 0x02;
export const NLM_F_ACK = 0x04;
export const NLM_F_ECHO = 0x08;
export const NLM_F_DUMP_INTR = 0x10;
export const NLM_F_ROOT = 0x100;
export const NLM_F_MATCH = 0x200;
export const NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH;
export const NLM_F_REPLACE = 0x100;
export const NLM_F_EXCL = 0x200;
export const NLM_F_CREATE = 0x400;
export const NLM_F_APPEND = 0x800;
// Flags the kernel sets on NLMSG_ERROR acks.
export const NLM_F_CAPPED = 0x100;
export const NLM_F_ACK_TLVS = 0x200;

export const NLMSGERR_ATTR_MSG = 1;
export const NLMSGERR_ATTR_OFFS = 2;
export const NLMSGERR_ATTR_COOKIE = 3;

export const RTM_NEWLINK = 16;
export const RTM_DELLINK = 17;
export const RTM_GETLINK = 18;
export const RTM_SETLINK = 19;
export const RTM_NEWADDR = 20;
export const RTM_DELADDR = 21;
export const RTM_GETADDR = 22;
export const RTM_NEWROUTE = 24;
export const RTM_DELROUTE = 25;
export const RTM_GETROUTE = 26;
export const RTM_NEWNEIGH = 28;
export const RTM_DELNEIGH = 29;
export const RTM_GETNEIGH = 30;
export const RTM_NEWRULE = 32;
export const RTM_DELRULE = 33;
export const RTM_GETRULE = 34;

export const AF_UNSPEC = 0;
export const AF_INET = 2;
export const AF_BRIDGE = 7;
export const AF_INET6 = 10;

export const IFF_UP = 0x1;
export const IFF_BROADCAST = 0x2;
export const IFF_LOOPBACK = 0x8;
export const IFF_RUNNING = 0x40;
export const IFF_LOWER_UP = 0x10000;

export const IFLA_ADDRESS = 1;
export const IFLA_BROADCAST = 2;
export const IFLA_IFNAME = 3;
export const IFLA_MTU = 4;
export const IFLA_LINK = 5;
export const IFLA_MASTER = 10;
/** The link's description (`ip link set x alias ...`): a string of at most IFALIASZ - 1 = 255 bytes. */
export const IFLA_IFALIAS = 20;
export const IFALIASZ = 256;
export const IFLA_PROTINFO = 12;
export const IFLA_LINKINFO = 18;
export const IFLA_NET_NS_PID = 19;
export const IFLA_NET_NS_FD = 28;
export const IFLA_EXT_MASK = 29;
export const IFLA_LINK_NETNSID = 37;
export const IFLA_ALT_IFNAME = 53;

export const IFLA_INFO_KIND = 1;
export const IFLA_INFO_DATA = 2;
export const IFLA_INFO_SLAVE_KIND = 4;
export const IFLA_INFO_SLAVE_DATA = 5;

export const VETH_INFO_PEER = 1;

/** IFLA_INFO_DATA of a vxlan link (include/uapi/linux/if_link.h). */
export const IFLA_VXLAN_ID = 1;
export const IFLA_VXLAN_LINK = 3;
export const IFLA_VXLAN_LOCAL = 4;
export const IFLA_VXLAN_TTL = 5;
export const IFLA_VXLAN_LEARNING = 7;
/** The UDP destination port, in network byte order (big endian). */
export const IFLA_VXLAN_PORT = 15;

export const IFLA_BRPORT_STATE = 1;
export const IFLA_BRPORT_MODE = 4; // hairpin
export const IFLA_BRPORT_LEARNING = 8;

export const RTEXT_FILTER_SKIP_STATS = 1 << 3;

export const IFA_ADDRESS = 1;
export const IFA_LOCAL = 2;
export const IFA_LABEL = 3;
export const IFA_BROADCAST = 4;
export const IFA_FLAGS = 8;
export const IFA_F_NODAD = 0x02;
export const IFA_F_PERMANENT = 0x80;

export const RTA_DST = 1;
export const RTA_SRC = 2;
export const RTA_IIF = 3;
export const RTA_OIF = 4;
export const RTA_GATEWAY = 5;
export const RTA_PRIORITY = 6;
export const RTA_PREFSRC = 7;
export const RTA_TABLE = 15;

export const RT_TABLE_UNSPEC = 0;
export const RT_TABLE_MAIN = 254;
export const RT_TABLE_LOCAL = 255;

export const RT_SCOPE_UNIVERSE = 0;
export const RT_SCOPE_LINK = 253;
export const RT_SCOPE_HOST = 254;
export const RT_SCOPE_NOWHERE = 255;

export const RTPROT_UNSPEC = 0;
export const RTPROT_KERNEL = 2;
export const RTPROT_BOOT = 3;
export const RTPROT_STATIC = 4;

// fib_rule_hdr's attributes (linux/fib_rules.h).
export const FRA_DST = 1;
export const FRA_SRC = 2;
export const FRA_PRIORITY = 6;
export const FRA_TABLE = 15;
export const FRA_PROTOCOL = 21;
export const FR_ACT_TO_TBL = 1;

export const RTN_UNSPEC = 0;
export const RTN_UNICAST = 1;
export const RTN_LOCAL = 2;

export const RTM_F_CLONED = 0x200;

export const NDA_DST = 1;
export const NDA_LLADDR = 2;
export const NDA_IFINDEX = 8;

/** ndm_flags: an FDB entry of the device itself (a vxlan's own table), not of a bridge master. */
export const NTF_SELF = 0x02;
/** rtm_flags: the gateway is on the link even without a matching subnet (`onlink`). */
export const RTNH_F_ONLINK = 0x4;

export const NUD_INCOMPLETE = 0x01;
export const NUD_REACHABLE = 0x02;
export const NUD_STALE = 0x04;
export const NUD_NOARP = 0x40;
export const NUD_PERMANENT = 0x80;

export const NLA_F_NESTED = 0x8000;
export const NLA_F_NET_BYTEORDER = 0x4000;
const NLA_TYPE_MASK = ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) & 0xffff;

export const NLMSG_HDRLEN = 16;
export const RTA_HDRLEN = 4;
export const IFINFOMSG_LEN = 16;
export const IFADDRMSG_LEN = 8;
export const RTMSG_LEN = 12;
export const NDMSG_LEN = 12;
export const FIBRULEHDR_LEN = 12;

export const align4 = (n: number): number => (n + 3) & ~3;

const msgTypeNames: Record<number, string> = {
  [RTM_NEWLINK]: 'RTM_NEWLINK', [RTM_DELLINK]: 'RTM_DELLINK', [RTM_GETLINK]: 'RTM_GETLINK',
  [RTM_SETLINK]: 'RTM_SETLINK', [RTM_NEWADDR]: 'RTM_NEWADDR', [RTM_DELADDR]: 'RTM_DELADDR',
  [RTM_GETADDR]: 'RTM_GETADDR', [RTM_NEWROUTE]: 'RTM_NEWROUTE', [RTM_DELROUTE]: 'RTM_DELROUTE',
  [RTM_GETROUTE]: 'RTM_GETROUTE', [RTM_NEWNEIGH]: 'RTM_NEWNEIGH', [RTM_DELNEIGH]: 'RTM_DELNEIGH',
  [RTM_GETNEIGH]: 'RTM_GETNEIGH', [RTM_NEWRULE]: 'RTM_NEWRULE', [RTM_DELRULE]: 'RTM_DELRULE',
  [RTM_GETRULE]: 'RTM_GETRULE',
};
export const msgTypeName = (t: number): string => msgTypeNames[t] ?? `nlmsg type ${t}`;

// ---------------------------------------------------------------- attributes (encode)

/** One encoded rtattr, padded to 4 bytes (the padding is part of the buffer). */
export function attr(type: number, payload: Buffer): Buffer {
  const len = RTA_HDRLEN + payload.length;
  if (len > 0xffff) throw new RangeError(`rtattr ${type}: payload of ${payload.length} bytes exceeds 65531`);
  const out = Buffer.alloc(align4(len));
  out.writeUInt16LE(len, 0);
  out.writeUInt16LE(type, 2);
  payload.copy(out, RTA_HDRLEN);
  return out;
}

export const attrU8 = (type: number, v: number): Buffer => attr(type, Buffer.from([v & 0xff]));
export function attrU16(type: number, v: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16LE(v);
  return attr(type, b);
}
export function attrU32(type: number, v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v >>> 0);
  return attr(type, b);
}
/** NUL-terminated string, as the kernel's NLA_STRING/NLA_NUL_STRING policies expect. */
export const attrStr = (type: number, s: string): Buffer => attr(type, Buffer.concat([Buffer.from(s, 'utf8'), Buffer.alloc(1)]));
/**
 * A nested attribute. `flagNested` sets NLA_F_NESTED, which some handlers require
 * (AF_BRIDGE IFLA_PROTINFO treats a non-flagged payload as a legacy port state byte).
 */
export const attrNested = (type: number, children: Buffer[], flagNested = false): Buffer =>
  attr(flagNested ? type | NLA_F_NESTED : type, Buffer.concat(children));

// ---------------------------------------------------------------- attributes (decode)

export interface Attr {
  /** Type with NLA_F_NESTED / NLA_F_NET_BYTEORDER masked off. */
  type: number;
  nested: boolean;
  data: Buffer;
}

/** Decodes a run of rtattrs. Throws on a truncated or malformed attribute. */
export function parseAttrs(buf: Buffer, offset = 0, end = buf.length): Attr[] {
  const out: Attr[] = [];
  let off = offset;
  while (off + RTA_HDRLEN <= end) {
    const len = buf.readUInt16LE(off);
    const rawType = buf.readUInt16LE(off + 2);
    if (len < RTA_HDRLEN || off + len > end) {
      throw new RangeError(`malformed rtattr at offset ${off}: length ${len}, ${end - off} bytes left`);
    }
    out.push({ type: rawType & NLA_TYPE_MASK, nested: (rawType & NLA_F_NESTED) !== 0, data: buf.subarray(off + RTA_HDRLEN, off + len) });
    off += align4(len);
  }
  return out;
}

/** Attributes keyed by type (last one wins, as in the kernel's nla_parse). */
export class AttrMap {
  readonly list: Attr[];
  private readonly byType = new Map<number, Buffer>();
  constructor(list: Attr[]) {
    this.list = list;
    for (const a of list) this.byType.set(a.type, a.data);
  }
  static parse(buf: Buffer, offset = 0, end = buf.length): AttrMap {
    return new AttrMap(parseAttrs(buf, offset, end));
  }
  has(t: number): boolean {
    return this.byType.has(t);
  }
  get(t: number): Buffer | undefined {
    return this.byType.get(t);
  }
  u8(t: number): number | undefined {
    const b = this.byType.get(t);
    return b && b.length >= 1 ? b.readUInt8(0) : undefined;
  }
  u16(t: number): number | undefined {
    const b = this.byType.get(t);
    return b && b.length >= 2 ? b.readUInt16LE(0) : undefined;
  }
  u32(t: number): number | undefined {
    const b = this.byType.get(t);
    return b && b.length >= 4 ? b.readUInt32LE(0) : undefined;
  }
  s32(t: number): number | undefined {
    const b = this.byType.get(t);
    return b && b.length >= 4 ? b.readInt32LE(0) : undefined;
  }
  /** String up to the first NUL (or the whole payload when there is none). */
  str(t: number): string | undefined {
    const b = this.byType.get(t);
    if (!b) return undefined;
    const nul = b.indexOf(0);
    return b.toString('utf8', 0, nul < 0 ? b.length : nul);
  }
  nested(t: number): AttrMap | undefined {
    const b = this.byType.get(t);
    return b ? AttrMap.parse(b) : undefined;
  }
}

// ---------------------------------------------------------------- messages

export interface NlMsg {
  type: number;
  flags: number;
  seq: number;
  pid: number;
  /** Everything after the 16-byte header, without trailing alignment padding. */
  payload: Buffer;
}

export function encodeMsg(type: number, flags: number, seq: number, body: Buffer[], pid = 0): Buffer {
  const bodyLen = body.reduce((n, b) => n + b.length, 0);
  const hdr = Buffer.alloc(NLMSG_HDRLEN);
  hdr.writeUInt32LE(NLMSG_HDRLEN + bodyLen, 0);
  hdr.writeUInt16LE(type, 4);
  hdr.writeUInt16LE(flags, 6);
  hdr.writeUInt32LE(seq >>> 0, 8);
  hdr.writeUInt32LE(pid >>> 0, 12);
  return Buffer.concat([hdr, ...body], NLMSG_HDRLEN + bodyLen);
}

/** Splits one datagram into messages. Throws on a truncated header or length. */
export function parseMsgs(buf: Buffer, len = buf.length): NlMsg[] {
  const out: NlMsg[] = [];
  let off = 0;
  while (off + NLMSG_HDRLEN <= len) {
    const mlen = buf.readUInt32LE(off);
    if (mlen < NLMSG_HDRLEN || off + mlen > len) {
      throw new RangeError(`malformed nlmsghdr at offset ${off}: length ${mlen}, ${len - off} bytes left`);
    }
    out.push({
      type: buf.readUInt16LE(off + 4),
      flags: buf.readUInt16LE(off + 6),
      seq: buf.readUInt32LE(off + 8),
      pid: buf.readUInt32LE(off + 12),
      payload: buf.subarray(off + NLMSG_HDRLEN, off + mlen),
    });
    off += align4(mlen);
  }
  return out;
}

// ---------------------------------------------------------------- fixed headers

export interface IfInfoMsg {
  family: number;
  type: number;
  index: number;
  flags: number;
  change: number;
}
export function encodeIfInfo(m: Partial<IfInfoMsg>): Buffer {
  const b = Buffer.alloc(IFINFOMSG_LEN);
  b.writeUInt8(m.family ?? AF_UNSPEC, 0);
  b.writeUInt16LE(m.type ?? 0, 2);
  b.writeInt32LE(m.index ?? 0, 4);
  b.writeUInt32LE((m.flags ?? 0) >>> 0, 8);
  b.writeUInt32LE((m.change ?? 0) >>> 0, 12);
  return b;
}
export function decodeIfInfo(b: Buffer): IfInfoMsg {
  need(b, IFINFOMSG_LEN, 'ifinfomsg');
  return { family: b.readUInt8(0), type: b.readUInt16LE(2), index: b.readInt32LE(4), flags: b.readUInt32LE(8), change: b.readUInt32LE(12) };
}

export interface IfAddrMsg {
  family: number;
  prefixLen: number;
  flags: number;
  scope: number;
  index: number;
}
export function encodeIfAddr(m: Partial<IfAddrMsg>): Buffer {
  const b = Buffer.alloc(IFADDRMSG_LEN);
  b.writeUInt8(m.family ?? AF_UNSPEC, 0);
  b.writeUInt8(m.prefixLen ?? 0, 1);
  b.writeUInt8(m.flags ?? 0, 2);
  b.writeUInt8(m.scope ?? 0, 3);
  b.writeUInt32LE(m.index ?? 0, 4);
  return b;
}
export function decodeIfAddr(b: Buffer): IfAddrMsg {
  need(b, IFADDRMSG_LEN, 'ifaddrmsg');
  return { family: b.readUInt8(0), prefixLen: b.readUInt8(1), flags: b.readUInt8(2), scope: b.readUInt8(3), index: b.readUInt32LE(4) };
}

export interface RtMsg {
  family: number;
  dstLen: number;
  srcLen: number;
  tos: number;
  table: number;
  protocol: number;
  scope: number;
  type: number;
  flags: number;
}
export function encodeRtMsg(m: Partial<RtMsg>): Buffer {
  const b = Buffer.alloc(RTMSG_LEN);
  b.writeUInt8(m.family ?? AF_UNSPEC, 0);
  b.writeUInt8(m.dstLen ?? 0, 1);
  b.writeUInt8(m.srcLen ?? 0, 2);
  b.writeUInt8(m.tos ?? 0, 3);
  b.writeUInt8(m.table ?? 0, 4);
  b.writeUInt8(m.protocol ?? 0, 5);
  b.writeUInt8(m.scope ?? 0, 6);
  b.writeUInt8(m.type ?? 0, 7);
  b.writeUInt32LE((m.flags ?? 0) >>> 0, 8);
  return b;
}
export function decodeRtMsg(b: Buffer): RtMsg {
  need(b, RTMSG_LEN, 'rtmsg');
  return {
    family: b.readUInt8(0), dstLen: b.readUInt8(1), srcLen: b.readUInt8(2), tos: b.readUInt8(3), table: b.readUInt8(4),
    protocol: b.readUInt8(5), scope: b.readUInt8(6), type: b.readUInt8(7), flags: b.readUInt32LE(8),
  };
}

export interface NdMsg {
  family: number;
  index: number;
  state: number;
  flags: number;
  type: number;
}
export function encodeNdMsg(m: Partial<NdMsg>): Buffer {
  const b = Buffer.alloc(NDMSG_LEN);
  b.writeUInt8(m.family ?? AF_UNSPEC, 0);
  b.writeInt32LE(m.index ?? 0, 4);
  b.writeUInt16LE(m.state ?? 0, 8);
  b.writeUInt8(m.flags ?? 0, 10);
  b.writeUInt8(m.type ?? 0, 11);
  return b;
}
export function decodeNdMsg(b: Buffer): NdMsg {
  need(b, NDMSG_LEN, 'ndmsg');
  return { family: b.readUInt8(0), index: b.readInt32LE(4), state: b.readUInt16LE(8), flags: b.readUInt8(10), type: b.readUInt8(11) };
}

/** struct fib_rule_hdr: a policy rule's fixed header (the table byte holds ids < 256 only; FRA_TABLE any). */
export interface FibRuleHdr {
  family: number;
  dstLen: number;
  srcLen: number;
  tos: number;
  table: number;
  action: number;
  flags: number;
}
export function encodeFibRuleHdr(m: Partial<FibRuleHdr>): Buffer {
  const b = Buffer.alloc(FIBRULEHDR_LEN);
  b.writeUInt8(m.family ?? AF_UNSPEC, 0);
  b.writeUInt8(m.dstLen ?? 0, 1);
  b.writeUInt8(m.srcLen ?? 0, 2);
  b.writeUInt8(m.tos ?? 0, 3);
  b.writeUInt8(m.table ?? 0, 4);
  // bytes 5, 6: reserved
  b.writeUInt8(m.action ?? 0, 7);
  b.writeUInt32LE((m.flags ?? 0) >>> 0, 8);
  return b;
}
export function decodeFibRuleHdr(b: Buffer): FibRuleHdr {
  need(b, FIBRULEHDR_LEN, 'fib_rule_hdr');
  return {
    family: b.readUInt8(0), dstLen: b.readUInt8(1), srcLen: b.readUInt8(2), tos: b.readUInt8(3),
    table: b.readUInt8(4), action: b.readUInt8(7), flags: b.readUInt32LE(8),
  };
}

function need(b: Buffer, n: number, what: string): void {
  if (b.length < n) throw new RangeError(`${what}: ${b.length} bytes, need ${n}`);
}

// ---------------------------------------------------------------- errors

/** A netlink request the kernel refused; names the operation and the object it was about. */
export class NetlinkError extends SysError {
  /** e.g. 'RTM_NEWLINK' */
  readonly op: string;
  /** e.g. "veth 'patu1a2b'" */
  readonly object: string;
  /** The kernel's extended ack text (NETLINK_EXT_ACK), when it gave one. */
  readonly extack: string | undefined;
  constructor(op: string, object: string, errno: number, extack?: string) {
    super(op, errno, object);
    this.name = 'NetlinkError';
    this.op = op;
    this.object = object;
    this.extack = extack || undefined;
    this.message = `${op} ${object}: ${this.code} (errno ${errno})${this.extack ? `: ${this.extack}` : ''}`;
  }
}

export interface ErrorPayload {
  /** errno as a positive number; 0 for a plain ack. */
  errno: number;
  extack?: string;
  /** Seq of the request this answers (from the echoed header). */
  seq: number;
}

/**
 * Decodes an NLMSG_ERROR payload (struct nlmsgerr plus extended ack TLVs) or the
 * int error that NLMSG_DONE carries at the end of a dump.
 */
export function parseErrorPayload(msg: NlMsg): ErrorPayload {
  const p = msg.payload;
  need(p, 4, msg.type === NLMSG_DONE ? 'NLMSG_DONE' : 'nlmsgerr');
  const errno = -p.readInt32LE(0) || 0; // no -0 for a plain ack
  if (msg.type === NLMSG_DONE) {
    const out: ErrorPayload = { errno: Math.max(errno, 0), seq: msg.seq };
    if (msg.flags & NLM_F_ACK_TLVS && p.length > 4) {
      const m = AttrMap.parse(p, 4).str(NLMSGERR_ATTR_MSG);
      if (m) out.extack = m;
    }
    return out;
  }
  need(p, 4 + NLMSG_HDRLEN, 'nlmsgerr');
  const origLen = p.readUInt32LE(4);
  const seq = p.readUInt32LE(4 + 8);
  const out: ErrorPayload = { errno, seq };
  if (msg.flags & NLM_F_ACK_TLVS) {
    // Without NLM_F_CAPPED the whole original request is echoed before the TLVs.
    const tlvStart = 4 + (msg.flags & NLM_F_CAPPED ? NLMSG_HDRLEN : align4(origLen));
    if (tlvStart < p.length) {
      const m = AttrMap.parse(p, tlvStart).str(NLMSGERR_ATTR_MSG);
      if (m) out.extack = m;
    }
  }
  return out;
}

// ---------------------------------------------------------------- addresses

export type { Family };

/** IPv4 or IPv6 text to network-order bytes (4 or 16), parsed by src/net/cidr. Throws naming the bad text. */
export function ipToBytes(ip: string): Buffer {
  const a = parseIp(ip);
  return valueToBytes(a.value, a.family);
}

function valueToBytes(value: bigint, family: Family): Buffer {
  const b = Buffer.alloc(family === 4 ? 4 : 16);
  let v = value;
  for (let i = b.length - 1; i >= 0; i--) {
    b[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  return b;
}

/** Network-order bytes to text; IPv6 in RFC 5952 form (what `ip` and Go print). */
export function bytesToIp(b: Buffer): string {
  if (b.length === 4) return `${b[0]}.${b[1]}.${b[2]}.${b[3]}`;
  if (b.length !== 16) throw new RangeError(`address of ${b.length} bytes is neither IPv4 nor IPv6`);
  return bigIntToIp(BigInt(`0x${b.toString('hex')}`), 6);
}

/** An address with its prefix length as netlink carries it. */
export interface NlPrefix {
  family: Family;
  /** The address as written (host bits kept: 10.0.0.5/24 stays 10.0.0.5). */
  address: string;
  bytes: Buffer;
  prefixLen: number;
}

/** '10.0.0.5/24', 'fd00::5/64', or a bare address (full-length prefix); parsed by src/net/cidr's parseCidr. */
export function toNlPrefix(text: string): NlPrefix {
  const c = text.includes('/') ? parseCidr(text) : (() => {
    const a = parseIp(text);
    return { family: a.family, ip: a.value, prefix: familyBits(a.family) };
  })();
  return { family: c.family, address: bigIntToIp(c.ip, c.family), bytes: valueToBytes(c.ip, c.family), prefixLen: c.prefix };
}

/** Zeroes the host bits, as the kernel requires for route destinations. */
export function maskBytes(bytes: Buffer, prefixLen: number): Buffer {
  const out = Buffer.from(bytes);
  for (let bit = prefixLen; bit < out.length * 8; bit++) out[bit >> 3]! &= ~(0x80 >> (bit & 7));
  return out;
}

export const familyToAf = (f: Family): number => (f === 4 ? AF_INET : AF_INET6);
export const afToFamily = (af: number): Family => (af === AF_INET ? 4 : 6);

export function macToBytes(mac: string): Buffer {
  const parts = mac.split(':');
  if (parts.length !== 6 || !parts.every((p) => /^[0-9a-fA-F]{2}$/.test(p))) throw new Error(`invalid MAC address '${mac}'`);
  return Buffer.from(parts.map((p) => parseInt(p, 16)));
}
export const bytesToMac = (b: Buffer): string => [...b].map((x) => x.toString(16).padStart(2, '0')).join(':');
