// --nodeport-devices: which uplinks the tc path attaches to, and reading its per-CPU counters (pure logic, no root).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseDevices, deviceMatches } from '../../src/dataplane/nodeport-tc.js';
import { possibleCpus } from '../../src/kernel/bpf/map.js';

test('names and prefixes ending in * are kept (blanks dropped); a prefix matches every name it starts', () => {
  const d = parseDevices([' eth0', 'ens*', '', 'bond0.100']);
  assert.deepEqual(d, ['eth0', 'ens*', 'bond0.100']);
  assert.ok(deviceMatches(d, 'eth0'));
  assert.ok(!deviceMatches(d, 'eth01'), 'an exact name is not a prefix');
  assert.ok(deviceMatches(d, 'ens3') && deviceMatches(d, 'ens'));
  assert.ok(deviceMatches(d, 'bond0.100'));
  assert.ok(!deviceMatches(d, 'lo') && !deviceMatches(d, 'patu0'));
  assert.ok(deviceMatches(parseDevices(['*']), 'anything'), "'*' alone: every link");
});

test('bad entries are refused naming the field and the entry', () => {
  const bad = (list: string[], re: RegExp): void => assert.throws(() => parseDevices(list, '--nodeport-devices'), re);
  bad(['eth 0'], /--nodeport-devices: 'eth 0' is not an interface name/);
  bad(['a/b'], /'a\/b' is not/);
  bad(['e*th'], /'e\*th' is not/);
  bad(['x'.repeat(16)], /is not an interface name/);
  bad(['..'], /'\.\.' is not/);
  bad([], /--nodeport-devices: no interface given/);
  bad(['', ' '], /no interface given/);
});

test('possible CPUs (the per-CPU counters\' slot count) from the kernel\'s list format', () => {
  assert.equal(possibleCpus('0-1\n'), 2);
  assert.equal(possibleCpus('0'), 1);
  assert.equal(possibleCpus('0-3,8-11'), 12, 'holes still have slots');
  assert.throws(() => possibleCpus('x'), /cannot read the possible CPUs from 'x'/);
  assert.ok(possibleCpus() >= 1, 'this machine');
});
