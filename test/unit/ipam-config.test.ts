// IPAM config validation: defaults match host-local, and every bad config names
// the exact JSON path of the bad field.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { allocatableCount, IpamConfigError, parseIpamConfig } from '../../src/ipam/config.js';
import { DEFAULTS } from '../../src/defaults.js';
import { bigIntToIp } from '../../src/net/cidr.js';

const v4 = (r: Record<string, unknown>) => ({ ranges: [[{ subnet: '10.9.0.0/24', ...r }]] });

test('defaults: gateway and rangeStart are network+1, rangeEnd is broadcast-1 (v4) or the last address (v6)', () => {
  const c = parseIpamConfig({ ranges: [[{ subnet: '10.9.0.0/24' }], [{ subnet: 'fd00:9::/120' }]] });
  assert.equal(c.dataDir, DEFAULTS.dataDir);
  assert.deepEqual(c.routes, []);
  assert.deepEqual(c.reserved, []);
  const [r4] = c.rangeSets[0]!.ranges;
  const [r6] = c.rangeSets[1]!.ranges;
  assert.equal(c.rangeSets[0]!.family, 4);
  assert.equal(r4!.subnetText, '10.9.0.0/24');
  assert.equal(r4!.prefixLen, 24);
  assert.equal(bigIntToIp(r4!.gateway, 4), '10.9.0.1');
  assert.equal(r4!.gatewayText, '10.9.0.1');
  assert.equal(bigIntToIp(r4!.rangeStart, 4), '10.9.0.1');
  assert.equal(bigIntToIp(r4!.rangeEnd, 4), '10.9.0.254');
  assert.equal(c.rangeSets[1]!.family, 6);
  assert.equal(bigIntToIp(r6!.gateway, 6), 'fd00:9::1');
  assert.equal(bigIntToIp(r6!.rangeStart, 6), 'fd00:9::1');
  assert.equal(bigIntToIp(r6!.rangeEnd, 6), 'fd00:9::ff');
  // 254 usable minus the gateway; 255 v6 addresses after the network minus the gateway.
  assert.equal(allocatableCount(c, 0), 253n);
  assert.equal(allocatableCount(c, 1), 254n);
});

test('explicit fields are kept and canonicalised; reserved and routes are parsed', () => {
  const c = parseIpamConfig({
    ranges: [[
      { subnet: '10.9.0.0/24', rangeStart: '10.9.0.10', rangeEnd: '10.9.0.20', gateway: '10.9.0.254' },
      { subnet: '10.9.1.0/24' },
    ]],
    reserved: ['10.9.0.12', '10.9.0.16/30', '10.9.0.254'],
    routes: [{ dst: '0.0.0.0/0' }, { dst: '192.168.1.7/24', gw: '10.9.0.254' }, { dst: 'FD00::/8', gw: 'FD00::1' }],
    dataDir: '/tmp/x',
  });
  const r = c.rangeSets[0]!.ranges[0]!;
  assert.equal(bigIntToIp(r.rangeStart, 4), '10.9.0.10');
  assert.equal(bigIntToIp(r.rangeEnd, 4), '10.9.0.20');
  assert.equal(r.gatewayText, '10.9.0.254');
  assert.equal(c.dataDir, '/tmp/x');
  assert.deepEqual(c.routes, [{ dst: '0.0.0.0/0' }, { dst: '192.168.1.0/24', gw: '10.9.0.254' }, { dst: 'fd00::/8', gw: 'fd00::1' }]);
  assert.deepEqual(c.reserved.map((b) => [bigIntToIp(b.start, 4), bigIntToIp(b.end, 4)]), [
    ['10.9.0.12', '10.9.0.12'],
    ['10.9.0.16', '10.9.0.19'],
    ['10.9.0.254', '10.9.0.254'],
  ]);
  // Range 0: 11 addresses, minus .12 and .16-.19 (the gateway .254 is outside it) = 6.
  // Range 1: .1-.254 minus its own gateway .1 = 253.
  assert.equal(allocatableCount(c, 0), 6n + 253n);
});

// [description, ipam section, exact field path, a word the message must contain]
const bad: [string, unknown, string, RegExp][] = [
  ['not an object', [], 'ipam', /object/],
  ['ranges missing', {}, 'ipam.ranges', /array of range sets/],
  ['ranges empty', { ranges: [] }, 'ipam.ranges', /at least one/],
  ['range set not an array', { ranges: [{ subnet: '10.0.0.0/24' }] }, 'ipam.ranges[0]', /array of ranges/],
  ['empty range set', { ranges: [[]] }, 'ipam.ranges[0]', /empty range set/],
  ['range not an object', { ranges: [['10.0.0.0/24']] }, 'ipam.ranges[0][0]', /object/],
  ['subnet missing', { ranges: [[{}]] }, 'ipam.ranges[0][0].subnet', /non-empty string/],
  ['subnet not a CIDR', v4({ subnet: '10.9.0.0' }), 'ipam.ranges[0][0].subnet', /missing \/prefix/],
  ['subnet bad octet', v4({ subnet: '10.9.0.300/24' }), 'ipam.ranges[0][0].subnet', /above 255/],
  ['subnet bad prefix', v4({ subnet: '10.9.0.0/33' }), 'ipam.ranges[0][0].subnet', /\/33/],
  ['subnet host bits', v4({ subnet: '10.9.0.5/24' }), 'ipam.ranges[0][0].subnet', /host bits.*10\.9\.0\.0\/24/],
  ['subnet /31', v4({ subnet: '10.9.0.0/31' }), 'ipam.ranges[0][0].subnet', /too small/],
  ['subnet /32', v4({ subnet: '10.9.0.0/32' }), 'ipam.ranges[0][0].subnet', /too small/],
  ['v6 subnet /127', { ranges: [[{ subnet: '10.9.0.0/24' }], [{ subnet: 'fd00::/127' }]] }, 'ipam.ranges[1][0].subnet', /too small/],
  ['rangeStart outside subnet', v4({ rangeStart: '10.9.1.5' }), 'ipam.ranges[0][0].rangeStart', /outside subnet 10\.9\.0\.0\/24/],
  ['rangeStart is the network address', v4({ rangeStart: '10.9.0.0' }), 'ipam.ranges[0][0].rangeStart', /network address/],
  ['rangeStart not an address', v4({ rangeStart: 'ten' }), 'ipam.ranges[0][0].rangeStart', /IPv4/],
  ['rangeStart wrong family', v4({ rangeStart: 'fd00::1' }), 'ipam.ranges[0][0].rangeStart', /IPv6/],
  ['rangeStart not a string', v4({ rangeStart: 5 }), 'ipam.ranges[0][0].rangeStart', /string/],
  ['rangeEnd is broadcast', v4({ rangeEnd: '10.9.0.255' }), 'ipam.ranges[0][0].rangeEnd', /broadcast/],
  ['rangeEnd outside', v4({ rangeEnd: '10.9.2.1' }), 'ipam.ranges[0][0].rangeEnd', /outside/],
  ['start after end', v4({ rangeStart: '10.9.0.50', rangeEnd: '10.9.0.20' }), 'ipam.ranges[0][0].rangeStart', /after rangeEnd/],
  ['range holds only the gateway', v4({ rangeStart: '10.9.0.1', rangeEnd: '10.9.0.1' }), 'ipam.ranges[0][0]', /only the gateway/],
  ['gateway outside subnet', v4({ gateway: '10.8.0.1' }), 'ipam.ranges[0][0].gateway', /outside subnet/],
  ['gateway is broadcast', v4({ gateway: '10.9.0.255' }), 'ipam.ranges[0][0].gateway', /broadcast/],
  ['gateway wrong family', v4({ gateway: '::1' }), 'ipam.ranges[0][0].gateway', /IPv6/],
  [
    'overlapping ranges in a set',
    { ranges: [[{ subnet: '10.9.0.0/24', rangeEnd: '10.9.0.100' }, { subnet: '10.9.0.0/24', rangeStart: '10.9.0.100' }]] },
    'ipam.ranges[0][1]',
    /overlaps ipam\.ranges\[0\]\[0\]/,
  ],
  [
    'overlapping subnets in a set',
    { ranges: [[{ subnet: '10.9.0.0/24' }, { subnet: '10.9.1.0/24' }, { subnet: '10.9.0.0/16' }]] },
    'ipam.ranges[0][2]',
    /overlaps ipam\.ranges\[0\]\[0\]/,
  ],
  ['mixed families in a set', { ranges: [[{ subnet: '10.9.0.0/24' }, { subnet: 'fd00::/64' }]] }, 'ipam.ranges[0][1].subnet', /one family/],
  ['two IPv4 sets', { ranges: [[{ subnet: '10.9.0.0/24' }], [{ subnet: '10.10.0.0/24' }]] }, 'ipam.ranges[1]', /second IPv4.*ipam\.ranges\[0\]/],
  [
    'two IPv6 sets',
    { ranges: [[{ subnet: 'fd00::/64' }], [{ subnet: '10.9.0.0/24' }], [{ subnet: 'fd01::/64' }]] },
    'ipam.ranges[2]',
    /second IPv6/,
  ],
  ['IPv6 only', { ranges: [[{ subnet: 'fd00::/64' }]] }, 'ipam.ranges', /needs an IPv4/],
  ['reserved not an array', { ...v4({}), reserved: '10.9.0.5' }, 'ipam.reserved', /array/],
  ['reserved not an address', { ...v4({}), reserved: ['10.9.0.5', 'x'] }, 'ipam.reserved[1]', /IPv4/],
  ['reserved outside every subnet', { ...v4({}), reserved: ['10.10.0.5'] }, 'ipam.reserved[0]', /not inside any configured subnet/],
  ['route not an object', { ...v4({}), routes: ['0.0.0.0/0'] }, 'ipam.routes[0]', /object/],
  ['route dst missing', { ...v4({}), routes: [{ gw: '10.9.0.1' }] }, 'ipam.routes[0].dst', /string/],
  ['route dst bad', { ...v4({}), routes: [{ dst: '0.0.0.0/0' }, { dst: '1.2.3.4/40' }] }, 'ipam.routes[1].dst', /\/40/],
  ['route gw bad', { ...v4({}), routes: [{ dst: '0.0.0.0/0', gw: '10.9.0' }] }, 'ipam.routes[0].gw', /IPv4/],
  ['route gw family', { ...v4({}), routes: [{ dst: '0.0.0.0/0', gw: 'fd00::1' }] }, 'ipam.routes[0].gw', /IPv6/],
  ['dataDir relative', { ...v4({}), dataDir: 'var/lib' }, 'ipam.dataDir', /absolute/],
  ['dataDir empty', { ...v4({}), dataDir: '' }, 'ipam.dataDir', /non-empty/],
];

for (const [what, raw, field, msg] of bad) {
  test(`rejects: ${what} -> ${field}`, () => {
    assert.throws(
      () => parseIpamConfig(raw),
      (err: unknown) => {
        assert.ok(err instanceof IpamConfigError, `expected IpamConfigError, got ${String(err)}`);
        assert.equal(err.name, 'IpamConfigError');
        assert.equal(err.field, field, err.message);
        assert.ok(err.message.startsWith(`${field}: `), `message should name the field: ${err.message}`);
        assert.match(err.message, msg);
        return true;
      },
    );
  });
}

test('the path prefix is configurable (e.g. for a conflist plugin entry)', () => {
  assert.throws(() => parseIpamConfig({ ranges: [[{ subnet: 'x' }]] }, 'plugins[0].ipam'), (err: unknown) => {
    assert.equal((err as IpamConfigError).field, 'plugins[0].ipam.ranges[0][0].subnet');
    return true;
  });
});

test('a minimal valid config is accepted at the size limits (/30 v4, /126 v6)', () => {
  const c = parseIpamConfig({ ranges: [[{ subnet: '10.9.0.0/30' }], [{ subnet: 'fd00::/126' }]] });
  assert.equal(allocatableCount(c, 0), 1n); // .1 gateway, .2 usable, .3 broadcast
  assert.equal(allocatableCount(c, 1), 2n); // ::1 gateway, ::2 and ::3 usable
});
