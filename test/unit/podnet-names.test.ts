// The names and marks apply.ts gives what it makes: deterministic, within the kernel's
// limits, and read back only when they are exactly patu's.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { bridgeAlias, derivedMac, hostAlias, isPodnetVethName, parseAlias, podAlias, podnetVethName } from '../../src/podnet/names.js';
import { trunkAlias } from '../../src/podnet/vlan.js';
import { hostVethName, isPatuVethName } from '../../src/dataplane/names.js';

test('host veth names: 15 bytes, deterministic, never the primary network\'s', () => {
  fc.assert(fc.property(fc.string({ minLength: 1, maxLength: 80 }), fc.string({ minLength: 1, maxLength: 15 }), (cid, ifn) => {
    const name = podnetVethName(cid, ifn);
    assert.equal(name.length, 15);
    assert.equal(name, podnetVethName(cid, ifn));
    assert.ok(isPodnetVethName(name));
    assert.ok(!isPatuVethName(name));
    assert.notEqual(name, hostVethName(cid, ifn));
  }));
  assert.notEqual(podnetVethName('c', 'net1'), podnetVethName('c', 'net2'));
});

test('aliases round trip; anything else is not patu\'s', () => {
  assert.deepEqual(parseAlias(hostAlias('abc123', 'net1', 'field')), { kind: 'host', containerId: 'abc123', ifname: 'net1', network: 'field' });
  assert.deepEqual(parseAlias(podAlias('field', { namespace: 'team-a', name: 'cnf' })), { kind: 'pod', network: 'field', config: { namespace: 'team-a', name: 'cnf' } });
  assert.deepEqual(parseAlias(bridgeAlias('field')), { kind: 'bridge', network: 'field' });
  assert.deepEqual(parseAlias(trunkAlias('field')), { kind: 'trunk', network: 'field' });
  for (const other of [undefined, '', 'patu-podnet', 'patu-podnet field', 'patu-podnet field team-a', 'patu-podnet field /cnf', 'patu-podnetx a b c',
    'patu-podnet-bridge', 'patu-podnet-bridge a b', 'my bridge', 'patu-podnet a b c d']) {
    assert.equal(parseAlias(other), undefined, String(other));
  }
});

test('derived MACs: locally administered unicast, fixed by the address', () => {
  assert.equal(derivedMac('10.210.0.23'), '02:50:0a:d2:00:17');
  assert.throws(() => derivedMac('fd00::1'), /not an IPv4 address/);
  assert.throws(() => derivedMac('10.0.0.256'), /not an IPv4 address/);
});
