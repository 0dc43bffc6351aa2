// Address parsing and prefix math. node:net is the independent oracle for what is
// a valid address; hand-written tables pin the canonical text and prefix math.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isIPv4, isIPv6 } from 'node:net';
import fc from 'fast-check';
import {
  bigIntToIp,
  broadcastAddress,
  canonicalIp,
  contains,
  ipToBigInt,
  networkAddress,
  nthAddress,
  overlaps,
  parseCidr,
  parseIp,
  prefixSize,
  formatNetwork,
  CidrParseError,
  isIPv4 as fastIsIPv4,
} from '../../src/net/cidr.js';

test('IPv4 parse and format', () => {
  assert.equal(ipToBigInt('0.0.0.0'), 0n);
  assert.equal(ipToBigInt('10.200.0.1'), 0x0ac80001n);
  assert.equal(ipToBigInt('255.255.255.255'), 0xffffffffn);
  assert.equal(bigIntToIp(0x0ac80001n, 4), '10.200.0.1');
  for (const bad of ['1.2.3', '1.2.3.4.5', '256.0.0.1', '01.2.3.4', '1.2.3.-4', '1..3.4', '', ' 1.2.3.4', '1.2.3.4 ', 'a.b.c.d']) {
    assert.throws(() => parseIp(bad), /IPv4|IP address|IPv6/, `should reject '${bad}'`);
  }
});

test('IPv6 parse and RFC 5952 format', () => {
  const table: [string, string][] = [
    ['::', '::'],
    ['::1', '::1'],
    ['0:0:0:0:0:0:0:1', '::1'],
    ['2001:0DB8:0000:0000:0001:0000:0000:0001', '2001:db8::1:0:0:1'],
    ['2001:db8:0:1:1:1:1:1', '2001:db8:0:1:1:1:1:1'],
    ['fe80:0:0:1:0:0:0:0', 'fe80:0:0:1::'],
    ['fe80::1:0:0:0', 'fe80::1:0:0:0'],
    ['1::', '1::'],
    ['fd00:200::a', 'fd00:200::a'],
    ['::ffff:10.0.0.1', '::ffff:10.0.0.1'],
    ['::ffff:a00:1', '::ffff:10.0.0.1'],
    ['1:2:3:4:5:6:7::', '1:2:3:4:5:6:7:0'],
  ];
  for (const [input, want] of table) assert.equal(canonicalIp(input), want, input);
  for (const bad of [':::', '1::2::3', '1:2:3:4:5:6:7:8:9', '12345::', 'fe80::1%eth0', 'g::1', '1:2:3:4:5:6:7:8::', '::1.2.3']) {
    assert.throws(() => parseIp(bad), CidrParseError, `should reject '${bad}'`);
  }
});

test('format/parse round trip agrees with node:net on random values', () => {
  fc.assert(
    fc.property(fc.bigInt({ min: 0n, max: (1n << 128n) - 1n }), (v) => {
      const text = bigIntToIp(v, 6);
      assert.ok(isIPv6(text), `${text} is not IPv6 for node:net`);
      assert.equal(ipToBigInt(text), v);
    }),
    { numRuns: 2000 },
  );
  fc.assert(
    fc.property(fc.bigInt({ min: 0n, max: 0xffffffffn }), (v) => {
      const text = bigIntToIp(v, 4);
      assert.ok(isIPv4(text));
      assert.equal(ipToBigInt(text), v);
    }),
    { numRuns: 2000 },
  );
});

test('parse accepts what node:net accepts (v6 text from random groups, any case, any compression)', () => {
  fc.assert(
    fc.property(fc.ipV6(), (text) => {
      // fast-check may produce zone-free v6 forms including embedded IPv4.
      assert.equal(isIPv6(text), true);
      const v = ipToBigInt(text);
      assert.equal(ipToBigInt(bigIntToIp(v, 6)), v);
    }),
    { numRuns: 1000 },
  );
});

test('parseCidr keeps host bits; network and broadcast clear/set them', () => {
  const c = parseCidr('10.200.0.77/24');
  assert.deepEqual(c, { family: 4, ip: ipToBigInt('10.200.0.77'), prefix: 24 });
  assert.equal(bigIntToIp(networkAddress(c), 4), '10.200.0.0');
  assert.equal(bigIntToIp(broadcastAddress(c), 4), '10.200.0.255');
  assert.equal(formatNetwork(c), '10.200.0.0/24');
  assert.equal(prefixSize(c), 256n);
  const z = parseCidr('0.0.0.0/0');
  assert.equal(broadcastAddress(z), 0xffffffffn);
  const h = parseCidr('10.1.2.3/32');
  assert.equal(networkAddress(h), broadcastAddress(h));
  const v6 = parseCidr('fd00:200::5/64');
  assert.equal(bigIntToIp(networkAddress(v6), 6), 'fd00:200::');
  assert.equal(bigIntToIp(broadcastAddress(v6), 6), 'fd00:200::ffff:ffff:ffff:ffff');
  assert.equal(prefixSize(v6), 1n << 64n);
  assert.equal(bigIntToIp(broadcastAddress(parseCidr('::/0')), 6), 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff');
  for (const bad of ['10.0.0.0', '10.0.0.0/33', '10.0.0.0/-1', '10.0.0.0/08', '10.0.0.0/', 'fd00::/129', '/24', '10.0.0.0/24/1']) {
    assert.throws(() => parseCidr(bad), CidrParseError, `should reject '${bad}'`);
  }
});

test('nthAddress counts from the network, negative from the end, and refuses to leave the prefix', () => {
  const c = parseCidr('192.168.4.0/22');
  assert.equal(bigIntToIp(nthAddress(c, 0), 4), '192.168.4.0');
  assert.equal(bigIntToIp(nthAddress(c, 1), 4), '192.168.4.1');
  assert.equal(bigIntToIp(nthAddress(c, 256), 4), '192.168.5.0');
  assert.equal(bigIntToIp(nthAddress(c, -1), 4), '192.168.7.255');
  assert.equal(bigIntToIp(nthAddress(c, -2), 4), '192.168.7.254');
  assert.throws(() => nthAddress(c, 1024), /outside 192\.168\.4\.0\/22/);
  assert.throws(() => nthAddress(c, -1025), /outside/);
  const v6 = parseCidr('fd00::/120');
  assert.equal(bigIntToIp(nthAddress(v6, 255n), 6), 'fd00::ff');
});

test('contains and overlaps', () => {
  const a = parseCidr('10.0.0.0/16');
  assert.equal(contains(a, '10.0.255.255'), true);
  assert.equal(contains(a, '10.1.0.0'), false);
  assert.equal(contains(a, '::ffff:10.0.0.1'), false, 'a v6 address is never inside a v4 prefix');
  assert.equal(overlaps(a, parseCidr('10.0.128.0/17')), true);
  assert.equal(overlaps(parseCidr('10.0.128.0/17'), a), true);
  assert.equal(overlaps(a, parseCidr('10.1.0.0/16')), false);
  assert.equal(overlaps(a, parseCidr('0.0.0.0/0')), true);
  assert.equal(overlaps(parseCidr('fd00::/8'), parseCidr('fd12::/16')), true);
  assert.equal(overlaps(parseCidr('fd00::/16'), parseCidr('fd01::/16')), false);
  assert.equal(overlaps(parseCidr('0.0.0.0/0'), parseCidr('::/0')), false);
});

test('contains/overlaps agree with brute force on random small prefixes', () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 0, max: 0xffffffff }),
      fc.integer({ min: 20, max: 32 }),
      fc.integer({ min: 0, max: 0xffffffff }),
      fc.integer({ min: 20, max: 32 }),
      (x, px, y, py) => {
        const a = parseCidr(`${bigIntToIp(BigInt(x), 4)}/${px}`);
        const b = parseCidr(`${bigIntToIp(BigInt(y), 4)}/${py}`);
        // Brute force via integer division instead of masks.
        const la = BigInt(x) - (BigInt(x) % (1n << BigInt(32 - px)));
        const lb = BigInt(y) - (BigInt(y) % (1n << BigInt(32 - py)));
        assert.equal(networkAddress(a), la);
        const ha = la + (1n << BigInt(32 - px)) - 1n;
        const hb = lb + (1n << BigInt(32 - py)) - 1n;
        assert.equal(broadcastAddress(a), ha);
        assert.equal(overlaps(a, b), la <= hb && lb <= ha);
        assert.equal(contains(a, { family: 4, value: BigInt(y) }), BigInt(y) >= la && BigInt(y) <= ha);
      },
    ),
    { numRuns: 2000 },
  );
});

test('isIPv4 (the fast check for endpoints) agrees with parseIp on every string', () => {
  const parsesAsV4 = (s: string): boolean => {
    try {
      return parseIp(s).family === 4;
    } catch {
      return false;
    }
  };
  for (const s of ['10.0.0.1', '0.0.0.0', '255.255.255.255', '256.0.0.1', '010.0.0.1', '1.2.3', '1.2.3.4.5', '1..2.3', '', '1.2.3.4 ', '::1', '1.2.3.-4']) {
    assert.equal(fastIsIPv4(s), parsesAsV4(s), s);
  }
  const octet = fc.oneof(fc.integer({ min: 0, max: 300 }).map(String), fc.constantFrom('00', '01', '010', '', '-1', 'a'));
  fc.assert(fc.property(fc.array(octet, { minLength: 1, maxLength: 6 }).map((xs) => xs.join('.')), (s) => fastIsIPv4(s) === parsesAsV4(s)), { seed: 15, numRuns: 2000 });
  assert.equal(fastIsIPv4(undefined), false);
});
