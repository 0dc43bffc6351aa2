// The netlink wire codec without a kernel: framing, attribute alignment, nesting,
// NLMSG_ERROR with extended ack, and the address text forms.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  attr, attrU8, attrU16, attrU32, attrStr, attrNested, parseAttrs, AttrMap, align4,
  encodeMsg, parseMsgs, parseErrorPayload, NetlinkError,
  encodeIfInfo, decodeIfInfo, encodeIfAddr, decodeIfAddr, encodeRtMsg, decodeRtMsg, encodeNdMsg, decodeNdMsg,
  encodeFibRuleHdr, decodeFibRuleHdr, FIBRULEHDR_LEN, FR_ACT_TO_TBL,
  ipToBytes, bytesToIp, toNlPrefix, maskBytes, macToBytes, bytesToMac,
  NLMSG_ERROR, NLMSG_DONE, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLMSGERR_ATTR_MSG, NLMSGERR_ATTR_OFFS, NLA_F_NESTED,
  RTM_NEWLINK, NLM_F_REQUEST, NLM_F_ACK, NLM_F_MULTI, IFLA_IFNAME, IFLA_LINKINFO, IFLA_INFO_KIND,
} from '../../src/kernel/netlink/message.js';
import { SysError } from '../../src/kernel/ffi/libc.js';
import { CidrParseError } from '../../src/net/cidr.js';

test('attributes are padded to 4 bytes, the length field excludes the padding', () => {
  const a = attrStr(IFLA_IFNAME, 'eth0'); // 4 header + 5 bytes incl. NUL = 9 -> 12
  assert.equal(a.length, 12);
  assert.equal(a.readUInt16LE(0), 9);
  assert.equal(a.readUInt16LE(2), IFLA_IFNAME);
  assert.deepEqual([...a.subarray(9)], [0, 0, 0]);
  assert.equal(attrU8(1, 0xab).length, 8);
  assert.equal(attrU8(1, 0xab).readUInt16LE(0), 5);
  assert.equal(attrU16(1, 0xbeef).readUInt16LE(4), 0xbeef);
  assert.equal(attrU32(1, 0xdeadbeef).readUInt32LE(4), 0xdeadbeef);
  assert.equal(attr(7, Buffer.alloc(0)).length, 4);
});

test('attributes decode back, including the one after a padded one', () => {
  const buf = Buffer.concat([attrStr(3, 'abc'), attrU8(4, 9), attrU32(5, 1500)]);
  const m = AttrMap.parse(buf);
  assert.equal(m.str(3), 'abc');
  assert.equal(m.u8(4), 9);
  assert.equal(m.u32(5), 1500);
  assert.equal(m.get(6), undefined);
});

test('nested attributes: NLA_F_NESTED is reported and masked off the type', () => {
  const inner = [attrStr(IFLA_INFO_KIND, 'veth'), attrU32(2, 7)];
  const plain = AttrMap.parse(attrNested(IFLA_LINKINFO, inner));
  const flagged = parseAttrs(attrNested(IFLA_LINKINFO, inner, true));
  assert.equal(plain.list[0]!.nested, false);
  assert.equal(flagged[0]!.nested, true);
  assert.equal(flagged[0]!.type, IFLA_LINKINFO);
  assert.equal(attrNested(IFLA_LINKINFO, inner, true).readUInt16LE(2), IFLA_LINKINFO | NLA_F_NESTED);
  const li = plain.nested(IFLA_LINKINFO)!;
  assert.equal(li.str(IFLA_INFO_KIND), 'veth');
  assert.equal(li.u32(2), 7);
});

test('malformed attributes are rejected, not read past the end', () => {
  const a = attrU32(1, 1);
  a.writeUInt16LE(40, 0); // claims more than there is
  assert.throws(() => parseAttrs(a), /malformed rtattr at offset 0: length 40/);
  const b = attrU32(1, 1);
  b.writeUInt16LE(2, 0); // shorter than its own header
  assert.throws(() => parseAttrs(b), /malformed rtattr/);
});

test('messages: header fields round trip and several messages share one datagram', () => {
  const m1 = encodeMsg(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, 42, [encodeIfInfo({ index: 7, flags: 1, change: 1 }), attrStr(IFLA_IFNAME, 'x')], 99);
  const m2 = encodeMsg(NLMSG_DONE, NLM_F_MULTI, 43, [Buffer.alloc(4)]);
  assert.equal(m1.readUInt32LE(0), m1.length);
  const msgs = parseMsgs(Buffer.concat([m1, m2]));
  assert.equal(msgs.length, 2);
  assert.deepEqual({ ...msgs[0]!, payload: undefined }, { type: RTM_NEWLINK, flags: NLM_F_REQUEST | NLM_F_ACK, seq: 42, pid: 99, payload: undefined });
  assert.equal(decodeIfInfo(msgs[0]!.payload).index, 7);
  assert.equal(AttrMap.parse(msgs[0]!.payload, 16).str(IFLA_IFNAME), 'x');
  assert.equal(msgs[1]!.seq, 43);
  const cut = Buffer.concat([m1, m2]).subarray(0, m1.length + 8);
  assert.deepEqual(parseMsgs(cut).length, 1, 'a trailing partial header is ignored');
  const lying = Buffer.from(m1);
  lying.writeUInt32LE(m1.length + 100, 0);
  assert.throws(() => parseMsgs(lying), /malformed nlmsghdr/);
});

test('fixed headers round trip', () => {
  assert.deepEqual(decodeIfInfo(encodeIfInfo({ family: 7, type: 1, index: 12, flags: 0x1003, change: 0xffffffff })),
    { family: 7, type: 1, index: 12, flags: 0x1003, change: 0xffffffff });
  assert.deepEqual(decodeIfAddr(encodeIfAddr({ family: 10, prefixLen: 64, flags: 2, scope: 253, index: 300 })),
    { family: 10, prefixLen: 64, flags: 2, scope: 253, index: 300 });
  const rt = { family: 2, dstLen: 24, srcLen: 0, tos: 0, table: 254, protocol: 3, scope: 0, type: 1, flags: 0x200 };
  assert.deepEqual(decodeRtMsg(encodeRtMsg(rt)), rt);
  assert.deepEqual(decodeNdMsg(encodeNdMsg({ family: 2, index: 5, state: 0x80, flags: 0, type: 0 })),
    { family: 2, index: 5, state: 0x80, flags: 0, type: 0 });
  assert.throws(() => decodeRtMsg(Buffer.alloc(5)), /rtmsg: 5 bytes, need 12/);
});

test('fib_rule_hdr: 12 bytes, the action in byte 7 after two reserved bytes, round trips', () => {
  const h = { family: 2, dstLen: 16, srcLen: 24, tos: 0, table: 100, action: FR_ACT_TO_TBL, flags: 0 };
  const b = encodeFibRuleHdr(h);
  assert.equal(b.length, FIBRULEHDR_LEN);
  assert.deepEqual([...b.subarray(0, 8)], [2, 16, 24, 0, 100, 0, 0, 1]);
  assert.deepEqual(decodeFibRuleHdr(b), h);
  assert.throws(() => decodeFibRuleHdr(Buffer.alloc(8)), /fib_rule_hdr: 8 bytes, need 12/);
});

// Builds an NLMSG_ERROR the way the kernel does (net/netlink/af_netlink.c, netlink_ack).
function kernelError(errno: number, request: Buffer, capped: boolean, extack?: string): Buffer {
  const err = Buffer.alloc(4);
  err.writeInt32LE(-errno);
  const echoed = capped ? request.subarray(0, 16) : request;
  const tlvs = extack ? [attrStr(NLMSGERR_ATTR_MSG, extack), attrU32(NLMSGERR_ATTR_OFFS, 20)] : [];
  const flags = (capped ? NLM_F_CAPPED : 0) | (extack ? NLM_F_ACK_TLVS : 0);
  return encodeMsg(NLMSG_ERROR, flags, request.readUInt32LE(8), [err, echoed, ...tlvs]);
}

test('NLMSG_ERROR: errno, echoed seq and the extended ack text, capped or not', () => {
  const req = encodeMsg(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, 77, [encodeIfInfo({}), attrStr(IFLA_IFNAME, 'patu1a2b')]);
  for (const capped of [true, false]) {
    const [m] = parseMsgs(kernelError(17, req, capped, 'File exists here'));
    assert.deepEqual(parseErrorPayload(m!), { errno: 17, seq: 77, extack: 'File exists here' });
  }
  const [ack] = parseMsgs(kernelError(0, req, true));
  assert.deepEqual(parseErrorPayload(ack!), { errno: 0, seq: 77 });
  const done = encodeMsg(NLMSG_DONE, NLM_F_MULTI, 5, [Buffer.from([0xf0, 0xff, 0xff, 0xff])]); // -16
  assert.equal(parseErrorPayload(parseMsgs(done)[0]!).errno, 16);
});

test('NetlinkError names the operation and object and is a SysError', () => {
  const e = new NetlinkError('RTM_NEWLINK', "veth 'patu1a2b'", 17);
  assert.ok(e instanceof SysError);
  assert.equal(e.message, "RTM_NEWLINK veth 'patu1a2b': EEXIST (errno 17)");
  assert.equal(e.code, 'EEXIST');
  assert.equal(e.errno, 17);
  const x = new NetlinkError('RTM_SETLINK', 'link #9', 19, 'Unknown device');
  assert.equal(x.message, 'RTM_SETLINK link #9: ENODEV (errno 19): Unknown device');
  assert.equal(x.extack, 'Unknown device');
});

test('IP text forms: RFC 5952 output, strict parsing', () => {
  const cases: [string, string][] = [
    ['10.200.0.5', '10.200.0.5'],
    ['fd00::5', 'fd00::5'],
    ['FD00:0:0:0:0:0:0:5', 'fd00::5'],
    ['2001:db8:0:1:1:1:1:1', '2001:db8:0:1:1:1:1:1'], // one zero group is not compressed
    ['2001:db8:0:0:1:0:0:1', '2001:db8::1:0:0:1'], // first of two equal runs
    ['2001:0:0:1:0:0:0:1', '2001:0:0:1::1'], // longest run wins
    ['::', '::'],
    ['::1', '::1'],
    ['1::', '1::'],
    ['::ffff:10.0.0.1', '::ffff:10.0.0.1'],
    ['64:ff9b::192.0.2.33', '64:ff9b::c000:221'],
  ];
  for (const [input, want] of cases) assert.equal(bytesToIp(ipToBytes(input)), want, input);
  for (const bad of ['10.0.0', '10.0.0.256', '1.2.3.4.5', 'fd00::1::2', '1:2:3:4:5:6:7:8:9', '12345::', 'g::1', '1:2:3:4:5:6:7', '']) {
    assert.throws(() => ipToBytes(bad), CidrParseError, bad);
  }
});

test('CIDRs and masks (parsed by the one parseCidr of src/net/cidr)', () => {
  assert.deepEqual({ ...toNlPrefix('10.200.0.5/24'), bytes: undefined }, { family: 4, address: '10.200.0.5', prefixLen: 24, bytes: undefined });
  assert.deepEqual(toNlPrefix('10.200.0.5/24').bytes, Buffer.from([10, 200, 0, 5]));
  assert.equal(toNlPrefix('fd00::5').prefixLen, 128);
  for (const bad of ['10.0.0.1/33', 'fd00::1/129', '10.0.0.1/-1', '10.0.0.1/24/1', '10.0.0.1/', '010.0.0.1/8', '256.0.0.0/8']) {
    assert.throws(() => toNlPrefix(bad), CidrParseError, bad);
  }
  assert.equal(bytesToIp(maskBytes(ipToBytes('10.200.7.5'), 20)), '10.200.0.0');
  assert.equal(bytesToIp(maskBytes(ipToBytes('fd00:1:2:3:4:5:6:7'), 50)), 'fd00:1:2::');
});

test('MAC text form round trips and rejects junk', () => {
  assert.equal(bytesToMac(macToBytes('02:AB:cd:00:01:ff')), '02:ab:cd:00:01:ff');
  assert.throws(() => macToBytes('02:ab:cd:00:01'), /invalid MAC address/);
});

// ------------------------------------------------------------------ properties

type Tree = { type: number; data: Uint8Array } | { type: number; children: Tree[] };
const leaf = fc.record({ type: fc.integer({ min: 0, max: 0x3fff }), data: fc.uint8Array({ maxLength: 70 }) }, { noNullPrototype: true });
const { tree } = fc.letrec<{ tree: Tree }>((tie) => ({
  tree: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    leaf,
    fc.record({ type: fc.integer({ min: 0, max: 0x3fff }), children: fc.array(tie('tree'), { maxLength: 4 }) }, { noNullPrototype: true }),
  ),
}));

const encodeTree = (t: Tree): Buffer =>
  'children' in t ? attrNested(t.type, t.children.map(encodeTree), true) : attr(t.type, Buffer.from(t.data));

function decodeTree(a: { type: number; nested: boolean; data: Buffer }): Tree {
  return a.nested ? { type: a.type, children: parseAttrs(a.data).map(decodeTree) } : { type: a.type, data: new Uint8Array(a.data) };
}

test('property: any run of (nested) attributes decodes to what was encoded', () => {
  fc.assert(
    fc.property(fc.array(tree, { maxLength: 6 }), (attrs) => {
      const buf = Buffer.concat(attrs.map(encodeTree));
      assert.equal(buf.length % 4, 0);
      assert.deepEqual(parseAttrs(buf).map(decodeTree), attrs);
    }),
    { numRuns: 300 },
  );
});

test('property: attribute lengths are exact and the padding is zero', () => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 0x3fff }), fc.uint8Array({ maxLength: 300 }), (type, data) => {
      const a = attr(type, Buffer.from(data));
      assert.equal(a.length, align4(4 + data.length));
      assert.equal(a.readUInt16LE(0), 4 + data.length);
      assert.ok(a.subarray(4 + data.length).every((x) => x === 0));
    }),
  );
});

test('property: IPv6 text agrees with the WHATWG URL parser and bytes round trip', () => {
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 16, maxLength: 16 }), fc.integer({ min: 0, max: 7 }), (raw, zeros) => {
      const b = Buffer.from(raw);
      b.fill(0, 0, zeros * 2); // make zero runs common
      const text = bytesToIp(b);
      assert.deepEqual(ipToBytes(text), b);
      // WHATWG never prints the dotted IPv4-mapped form; everything else must match.
      if (!text.includes('.')) {
        assert.equal(text, new URL(`http://[${text}]/`).hostname.slice(1, -1));
      }
    }),
    { numRuns: 500 },
  );
  fc.assert(fc.property(fc.ipV4(), (ip) => assert.equal(bytesToIp(ipToBytes(ip)), ip)));
  // Any text form fast-check writes (embedded IPv4 included) parses to the same bytes as the URL parser's.
  fc.assert(fc.property(fc.ipV6(), (ip) => assert.deepEqual(ipToBytes(ip), ipToBytes(new URL(`http://[${ip}]/`).hostname.slice(1, -1)))));
});
