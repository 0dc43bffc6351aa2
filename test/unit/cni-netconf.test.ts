// Unit tests for the CNI config and environment parsing: every bad input gets the
// spec's error code and a message that names the field.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseNetConf } from '../../src/cni/netconf.js';
import { DEFAULTS } from '../../src/defaults.js';
import { readEnv, readCommand, parseCniArgs } from '../../src/cni/env.js';
import { CniError } from '../../src/cni/errors.js';
import { resultForVersion, compareVersions } from '../../src/cni/spec.js';

const base = { cniVersion: '1.1.0', name: 'patu', type: 'patu' };

function expectCni(fn: () => unknown, code: number, mentions: string): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof CniError, `expected CniError, got ${String(err)}`);
    assert.equal(err.code, code, `code for: ${err.message}`);
    assert.ok(err.message.includes(mentions), `message '${err.message}' should mention '${mentions}'`);
    return true;
  });
}

test('defaults fill in a minimal config', () => {
  const c = parseNetConf(base);
  assert.equal(c.bridge, DEFAULTS.bridge);
  assert.equal(c.mtu, 1500);
  assert.equal(c.hairpin, true);
  assert.equal(c.masquerade, true);
  assert.deepEqual(c.ipam.ranges, [[{ subnet: '10.200.0.0/24' }]]);
  assert.equal(c.ipam.dataDir, DEFAULTS.dataDir);
});

test('podCIDR shorthand becomes the only range', () => {
  const c = parseNetConf({ ...base, podCIDR: '10.200.7.0/24' });
  assert.deepEqual(c.ipam.ranges, [[{ subnet: '10.200.7.0/24' }]]);
});

test('older spec versions are accepted', () => {
  for (const v of ['0.4.0', '1.0.0', '1.1.0']) assert.equal(parseNetConf({ ...base, cniVersion: v }).cniVersion, v);
});

const bad: [string, Record<string, unknown>, number, string][] = [
  ['unsupported version', { ...base, cniVersion: '9.9.9' }, 1, 'cniVersion'],
  ['missing name', { cniVersion: '1.1.0', type: 'patu' }, 7, 'name'],
  ['bad name', { ...base, name: '-x' }, 7, 'name'],
  ['wrong type', { ...base, type: 'bridge' }, 7, 'type'],
  ['mtu too big', { ...base, mtu: 70000 }, 7, 'mtu'],
  ['mtu not an integer', { ...base, mtu: 1500.5 }, 7, 'mtu'],
  ['mtu as string', { ...base, mtu: '1500' }, 7, 'mtu'],
  ['bridge name too long', { ...base, bridge: 'averyveryverylongname' }, 7, 'bridge'],
  ['unknown ipam type', { ...base, ipam: { type: 'host-local' } }, 7, 'ipam.type'],
  ['hairpin not boolean', { ...base, hairpin: 'yes' }, 7, 'hairpin'],
  ['bad clusterCIDR', { ...base, clusterCIDR: '10.0.0.0' }, 7, 'clusterCIDR'],
  ['podCIDR and ranges', { ...base, podCIDR: '10.1.0.0/24', ipam: { ranges: [[{ subnet: '10.1.0.0/24' }]] } }, 7, 'podCIDR'],
  ['pinRoot outside bpffs', { ...base, pinRoot: '/tmp/x' }, 7, 'pinRoot'],
];
for (const [what, conf, code, field] of bad) {
  test(`bad config: ${what} -> code ${code} naming ${field}`, () => expectCni(() => parseNetConf(conf), code, field));
}

test('config that is not an object is invalid', () => expectCni(() => parseNetConf([]), 7, '(root)'));

test('environment: each missing or bad variable is named (code 4)', () => {
  const good = { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'abc', CNI_NETNS: '/proc/self/ns/net', CNI_IFNAME: 'eth0' };
  assert.equal(readEnv(good, 'ADD').ifname, 'eth0');
  expectCni(() => readCommand({}), 4, 'CNI_COMMAND');
  expectCni(() => readCommand({ CNI_COMMAND: 'FROB' }), 4, 'CNI_COMMAND');
  expectCni(() => readEnv({ ...good, CNI_CONTAINERID: '' }, 'ADD'), 4, 'CNI_CONTAINERID');
  expectCni(() => readEnv({ ...good, CNI_CONTAINERID: '_x' }, 'ADD'), 4, 'CNI_CONTAINERID');
  expectCni(() => readEnv({ ...good, CNI_IFNAME: 'a/b' }, 'ADD'), 4, 'CNI_IFNAME');
  expectCni(() => readEnv({ ...good, CNI_IFNAME: 'x'.repeat(16) }, 'ADD'), 4, 'CNI_IFNAME');
  expectCni(() => readEnv({ ...good, CNI_NETNS: '/nonexistent/ns' }, 'ADD'), 4, 'CNI_NETNS');
  // DEL must work when the netns is already gone.
  assert.equal(readEnv({ ...good, CNI_NETNS: '/nonexistent/ns' }, 'DEL').containerId, 'abc');
});

test('CNI_ARGS parsing', () => {
  assert.deepEqual(parseCniArgs('A=1;B=x=y;'), { A: '1', B: 'x=y' });
  expectCni(() => parseCniArgs('novalue'), 4, 'CNI_ARGS');
});

test('results: 0.4.0 carries ip.version, 1.x does not', () => {
  const r = { cniVersion: '1.1.0', ips: [{ address: '10.0.0.2/24' }, { address: 'fd00::2/64' }] };
  assert.deepEqual(resultForVersion(r, '0.4.0').ips?.map((i) => i.version), ['4', '6']);
  assert.equal(resultForVersion(r, '1.0.0').ips?.[0]?.version, undefined);
  assert.equal(compareVersions('0.4.0', '1.0.0'), -1);
  assert.equal(compareVersions('1.1.0', '1.1.0'), 0);
});
