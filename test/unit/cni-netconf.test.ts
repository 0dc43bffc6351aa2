// Unit tests for the CNI config and environment parsing: every bad input gets the
// spec's error code and a message that names the field.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseNetConf, decodeStdin, MAX_CONFIG_BYTES } from '../../src/cni/netconf.js';
import { DEFAULTS } from '../../src/defaults.js';
import { readEnv, readCommand, parseCniArgs, validIfname, MAX_CONTAINER_ID } from '../../src/cni/env.js';
import { CniError, toCniError } from '../../src/cni/errors.js';
import { IpamConfigError, IpamLockTimeoutError, IpamUnavailableError } from '../../src/ipam/index.js';
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
  // issue 15: each of these was accepted
  ['pinRoot ..', { ...base, pinRoot: '/sys/fs/bpf/..' }, 7, 'pinRoot'],
  ['pinRoot .', { ...base, pinRoot: '/sys/fs/bpf/.' }, 7, 'pinRoot'],
  ['clusterCIDR 999.999.999.999/99', { ...base, clusterCIDR: '999.999.999.999/99' }, 7, 'clusterCIDR'],
  ['clusterCIDR /33', { ...base, clusterCIDR: '10.241.0.0/33' }, 7, 'clusterCIDR'],
  ['clusterCIDR 256.0.0.0/8', { ...base, clusterCIDR: '256.0.0.0/8' }, 7, 'clusterCIDR'],
  ['clusterCIDR with a leading zero', { ...base, clusterCIDR: '010.241.0.0/24' }, 7, 'clusterCIDR'],
  ['clusterCIDR IPv6', { ...base, clusterCIDR: 'fd00::/64' }, 7, 'clusterCIDR'],
  ['podCIDR /33', { ...base, podCIDR: '10.1.0.0/33' }, 7, 'podCIDR'],
  ['bridge with a NUL byte', { ...base, bridge: 'prb\u0000x' }, 7, 'bridge'],
  ['bridge with U+FFFD (was invalid UTF-8)', { ...base, bridge: 'prb\ufffd' }, 7, 'bridge'],
  ['bridge of 9 two-byte characters (18 bytes)', { ...base, bridge: 'ééééééééé' }, 7, 'bridge'],
  ['bridge with a space', { ...base, bridge: 'a b' }, 7, 'bridge'],
  ['network name of 256 characters', { ...base, name: 'n'.repeat(256) }, 7, 'name'],
  ['prevResult.ips not a list', { ...base, prevResult: { ips: 'x' } }, 7, 'prevResult.ips'],
  ['prevResult.ips[0].address not a CIDR', { ...base, prevResult: { ips: [{ address: '10.0.0.5' }] } }, 7, 'prevResult.ips[0].address'],
  ['prevResult.ips[0].gateway not an address', { ...base, prevResult: { ips: [{ address: '10.0.0.5/24', gateway: 'x' }] } }, 7, 'prevResult.ips[0].gateway'],
  ['prevResult.interfaces not a list', { ...base, prevResult: { interfaces: {} } }, 7, 'prevResult.interfaces'],
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

test('a network name of 255 characters (NAME_MAX) is accepted', () => {
  assert.equal(parseNetConf({ ...base, name: 'n'.repeat(255) }).name.length, 255);
});

test('stdin: over 16 MiB is code 7, invalid UTF-8 is code 6; good bytes decode', () => {
  expectCni(() => decodeStdin(new Uint8Array(MAX_CONFIG_BYTES + 1)), 7, '16 MiB');
  expectCni(() => decodeStdin(Buffer.from([0x7b, 0xff, 0x7d])), 6, 'UTF-8');
  expectCni(() => decodeStdin(Buffer.from([0x7b, 0xed, 0xa0, 0x80, 0x7d])), 6, 'UTF-8'); // an encoded lone surrogate
  assert.equal(decodeStdin(Buffer.from('{"a":"é"}')), '{"a":"é"}');
});

test('CNI_CONTAINERID over 1024 characters is code 4', () => {
  const env = { CNI_CONTAINERID: 'c'.repeat(MAX_CONTAINER_ID + 1), CNI_NETNS: '/proc/self/ns/net', CNI_IFNAME: 'eth0' };
  expectCni(() => readEnv(env, 'DEL'), 4, 'CNI_CONTAINERID');
  assert.equal(readEnv({ ...env, CNI_CONTAINERID: 'c'.repeat(MAX_CONTAINER_ID) }, 'DEL').containerId.length, MAX_CONTAINER_ID);
});

test('interface names: printable ASCII, 1-15 bytes, no / or :', () => {
  for (const ok of ['eth0', 'net1', 'patu0', 'a.b-c_d', 'x'.repeat(15)]) assert.equal(validIfname(ok), undefined, ok);
  for (const bad of ['', '.', '..', 'x'.repeat(16), 'a/b', 'a:b', 'a b', 'a\tb', 'a\u0000', 'é', 'a\u007f']) {
    assert.ok(validIfname(bad), `should refuse ${JSON.stringify(bad)}`);
  }
});

test('IPAM errors map to CNI codes by class: config 7 (CNI_* fields 4), exhausted 102, taken 103, lock 11, others 100 without a stack', () => {
  const cfg = toCniError(new IpamConfigError('ipam.ranges[0][0].subnet', 'bad'), 'x');
  assert.equal(cfg.code, 7);
  assert.equal(cfg.details, 'ipam.ranges[0][0].subnet');
  assert.ok(cfg.cause instanceof IpamConfigError);
  assert.equal(toCniError(new IpamConfigError('CNI_IFNAME', 'bad'), 'x').code, 4);
  assert.equal(toCniError(new IpamUnavailableError('held'), 'x').code, 103);
  assert.equal(toCniError(new IpamLockTimeoutError('/l', 5), 'x').code, 11);
  // A look-alike with the same name is not an IPAM error: classes decide, not names.
  const fake = Object.assign(new Error('fake'), { name: 'IpamExhaustedError' });
  const internal = toCniError(fake, 'doing it');
  assert.equal(internal.code, 100);
  assert.equal(internal.message, 'doing it: fake');
  assert.equal(internal.cause, fake);
  const sys = toCniError(Object.assign(new Error('mkdir /x: no'), { code: 'ENOTDIR' }), 'creating');
  assert.equal(sys.details, 'creating (ENOTDIR)');
  for (const e of [cfg, internal, sys]) assert.doesNotMatch(JSON.stringify(e.toJSON('1.1.0')), /\n\s*at /);
});
