// IPAM records with the sandbox's netns and pod (issue 12): written beside the owner's
// two host-local lines, read back tolerantly (old two-line records, host-local's "\r\n",
// unknown lines), and listed per sandbox for the agent.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { allocate } from '../../src/ipam/allocator.js';
import { parseIpamConfig } from '../../src/ipam/config.js';
import { IpamStore, decodeRecord, encodeRecordMeta } from '../../src/ipam/store.js';
import { recordMetaOf } from '../../src/cni/ipam.js';
import { listSandboxes } from '../../src/podnet/sandboxes.js';

const root = mkdtempSync(join(tmpdir(), `patu-ipam-rec-${process.pid}-`));
after(() => rmSync(root, { recursive: true, force: true }));

test('decodeRecord: two-line, host-local CRLF, id-only, extra and unknown lines', () => {
  assert.deepEqual(decodeRecord('abc\neth0'), { containerId: 'abc', ifname: 'eth0' });
  assert.deepEqual(decodeRecord('abc\r\neth0'), { containerId: 'abc', ifname: 'eth0' });
  assert.deepEqual(decodeRecord('abc'), { containerId: 'abc', ifname: '' });
  assert.deepEqual(decodeRecord('abc\neth0\nnetns=/var/run/netns/cni-1\npod=team-a/cnf-0\nuid=u-1\nfuture=x\nnot a pair'), {
    containerId: 'abc', ifname: 'eth0', netns: '/var/run/netns/cni-1', pod: { namespace: 'team-a', name: 'cnf-0', uid: 'u-1' },
  });
  assert.deepEqual(decodeRecord('abc\neth0\npod=team-a/cnf-0'), { containerId: 'abc', ifname: 'eth0', pod: { namespace: 'team-a', name: 'cnf-0', uid: '' } });
  assert.deepEqual(decodeRecord('abc\neth0\npod=noslash\nnetns='), { containerId: 'abc', ifname: 'eth0' });
});

test('encodeRecordMeta round trips and refuses line breaks', () => {
  const meta = { netns: '/run/netns/p', pod: { namespace: 'ns', name: 'p-0', uid: '' } };
  assert.deepEqual(decodeRecord(`c\neth0${encodeRecordMeta(meta)}`), { containerId: 'c', ifname: 'eth0', ...meta });
  assert.equal(encodeRecordMeta(undefined), '');
  assert.throws(() => encodeRecordMeta({ netns: '/a\nb' }), /netns/);
  assert.throws(() => encodeRecordMeta({ pod: { namespace: 'a/b', name: 'x', uid: '' } }), /namespace/);
});

test('recordMetaOf: netns always, the pod only when CNI_ARGS name one (UID may be absent)', () => {
  assert.deepEqual(recordMetaOf({ netns: '/run/netns/x', args: {} }), { netns: '/run/netns/x' });
  assert.deepEqual(recordMetaOf({ netns: '/run/netns/x', args: { K8S_POD_NAMESPACE: 'a', K8S_POD_NAME: 'p', K8S_POD_UID: 'u' } }),
    { netns: '/run/netns/x', pod: { namespace: 'a', name: 'p', uid: 'u' } });
  assert.deepEqual(recordMetaOf({ netns: '', args: { K8S_POD_NAMESPACE: 'a', K8S_POD_NAME: 'p' } }), { pod: { namespace: 'a', name: 'p', uid: '' } });
  assert.deepEqual(recordMetaOf({ netns: '/n', args: { K8S_POD_NAMESPACE: 'a' } }), { netns: '/n' }, 'no name: no pod');
});

test('allocate writes the meta lines after host-local\'s two; listSandboxes lists each sandbox once', () => {
  const cfg = parseIpamConfig({ type: 'patu', dataDir: root, ranges: [[{ subnet: '10.77.0.0/24' }], [{ subnet: 'fd00:77::/64' }]] }, 'ipam');
  const store = IpamStore.open(root, 'net');
  const meta = { netns: '/var/run/netns/cni-a', pod: { namespace: 'team-a', name: 'cnf-0', uid: 'uid-a' } };
  const [v4] = allocate(cfg, store, 'ctr-a', 'eth0', { meta });
  assert.equal(readFileSync(join(root, 'net', v4!.ip), 'utf8'), 'ctr-a\neth0\nnetns=/var/run/netns/cni-a\npod=team-a/cnf-0\nuid=uid-a');
  assert.deepEqual(store.ownerOf(v4!.ip), { containerId: 'ctr-a', ifname: 'eth0' });
  allocate(cfg, store, 'ctr-b', 'eth0', { meta: { netns: '/var/run/netns/cni-b' } }); // podman: no pod
  allocate(cfg, store, 'ctr-c', 'eth0'); // an old-style ADD
  writeFileSync(join(root, 'net', '10.77.0.200'), 'ctr-d\r\neth0'); // host-local's own record
  assert.deepEqual(listSandboxes(root, 'net'), [{ pod: meta.pod, containerId: 'ctr-a', netns: meta.netns }]);
  const d = store.list().find((r) => r.ip === '10.77.0.200')!;
  assert.deepEqual(d, { ip: '10.77.0.200', containerId: 'ctr-d', ifname: 'eth0' });
  // An owner's repeated ADD keeps its record as it was (same addresses, no rewrite).
  assert.equal(allocate(cfg, store, 'ctr-a', 'eth0', { meta: { netns: '/elsewhere' } })[0]!.ip, v4!.ip);
  assert.equal(listSandboxes(root, 'net')[0]!.netns, '/var/run/netns/cni-a');
});
