// The fuzz suite's oracle (test/fuzz/cni-gen.ts): which invalid values a request
// holds after its mutations, and the bytes it sends. A wrong oracle would make the
// fuzz suite pass bugs or fail correct answers, so it is checked on its own here.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { cniCaseArb, materialize, type CniCase, type NodeContext } from '../fuzz/cni-gen.js';

const ctx: NodeContext = {
  base: { cniVersion: '1.1.0', name: 'net', type: 'patu', bridge: 'br0', ipam: { ranges: [[{ subnet: '10.250.0.0/24' }]], dataDir: '/tmp/d' } },
  vars: { '@@BRIDGE@@': 'br0', '@@PREFIX@@': '10.250.0', '@@DATADIR@@': '/tmp/d' },
  netnsPath: (k) => (k === 'pod' ? '/run/netns/p' : k === 'unset' ? undefined : `/tmp/${k}`),
  pathEnv: { PATH: '/bin' },
};
const plain: CniCase = { command: 'ADD', netns: 'pod', containerId: 'c1', ifname: 'eth0', conf: [], env: [] };

test('a valid request has no expectation and sends the base netconf', () => {
  const m = materialize(plain, ctx);
  assert.deepEqual(m.expects, []);
  assert.deepEqual(JSON.parse(m.stdin.toString()), ctx.base);
  assert.equal(m.env.CNI_NETNS, '/run/netns/p');
  assert.equal(m.askedVersion, '1.1.0');
});

test('an invalid value obliges the commands it applies to, and only while it is still in place', () => {
  const bad = { path: ['mtu'], value: 70000, why: 'mtu 70000', expect: { codes: [7], field: 'mtu', commands: ['ADD', 'DEL'] } };
  assert.deepEqual(materialize({ ...plain, conf: [bad] }, ctx).expects.map((e) => e.field), ['mtu']);
  assert.deepEqual(materialize({ ...plain, command: 'STATUS', conf: [bad] }, ctx).expects, [], 'STATUS may ignore it');
  assert.ok(materialize({ ...plain, command: 'STATUS', conf: [bad] }, ctx).allowedCodes.includes(7), '...or refuse it');
  assert.deepEqual(materialize({ ...plain, command: 'GC' }, ctx).expects.map((e) => e.field), ['valid-attachments'], 'GC needs its list');
  const fixed = { path: ['mtu'], value: 1500, why: 'mtu 1500' };
  assert.deepEqual(materialize({ ...plain, conf: [bad, fixed] }, ctx).expects, [], 'overwritten by a later mutation');
});

test('the last value of an environment variable is the one checked', () => {
  const junk = { name: 'CNI_ARGS', value: 'junk', why: 'junk', expect: { codes: [4], field: 'CNI_ARGS', commands: ['ADD'] } };
  const ok = { name: 'CNI_ARGS', value: 'A=1', why: 'ok' };
  assert.equal(materialize({ ...plain, env: [junk] }, ctx).expects.length, 1);
  const m = materialize({ ...plain, env: [junk, ok] }, ctx);
  assert.deepEqual(m.expects, []);
  assert.equal(m.env.CNI_ARGS, 'A=1');
});

test('the environment fields: bad container id, ifname in bytes, a netns that is not one (not for DEL)', () => {
  assert.deepEqual(materialize({ ...plain, containerId: 'a/b' }, ctx).expects.map((e) => e.field), ['CNI_CONTAINERID']);
  assert.deepEqual(materialize({ ...plain, ifname: 'éééééééé' }, ctx).expects.map((e) => e.field), ['CNI_IFNAME'], '16 bytes');
  assert.deepEqual(materialize({ ...plain, netns: 'fifo' }, ctx).expects.map((e) => e.field), ['CNI_NETNS']);
  assert.deepEqual(materialize({ ...plain, command: 'DEL', netns: 'fifo' }, ctx).expects, []);
  assert.deepEqual(materialize({ ...plain, command: 'VERSION', containerId: undefined }, ctx).expects, []);
});

test('an unknown command is the only thing that counts; raw bytes are spliced as they are', () => {
  const m = materialize({ ...plain, command: 'FOO', containerId: '' }, ctx);
  assert.deepEqual(m.expects.map((e) => e.field), ['CNI_COMMAND']);
  assert.deepEqual(m.allowedCodes, [4]);
  const raw = materialize({ ...plain, conf: [{ path: ['bridge'], value: { $bytes: Buffer.from([0x22, 0xff, 0x22]).toString('base64') }, why: 'raw' }] }, ctx);
  assert.ok(raw.stdin.includes(Buffer.from([0x3a, 0x22, 0xff, 0x22])), raw.stdin.toString('latin1'));
  assert.equal(raw.conf, undefined, 'not an object any more: no DEL with it');
});

test('every generated case materializes to a request a runtime could send', () => {
  fc.assert(
    fc.property(cniCaseArb, (c) => {
      const m = materialize(c, ctx);
      for (const [k, v] of Object.entries(m.env)) assert.ok(!v.includes('\0') && Buffer.byteLength(`${k}=${v}`) < 128 * 1024, `${k} cannot be passed to exec`);
      for (const e of m.expects) assert.ok(e.codes.every((x) => [1, 4, 6, 7, 11, 50, 100, 101, 102, 103, 104].includes(x)), e.why);
    }),
    { numRuns: 300, ...(process.env.FC_SEED ? { seed: Number(process.env.FC_SEED), path: process.env.FC_PATH } : {}) },
  );
});
