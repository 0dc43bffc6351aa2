// src/errors.ts: what every patu error shares (a stable code, the cause kept), and
// the two readers that replace `(e as Error).message` casts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { errnoOf, messageOf, PatuError } from '../../src/errors.js';
import { IpamConfigError, IpamExhaustedError, IpamLockTimeoutError, IpamStoreError, IpamUnavailableError, CidrParseError, parseCidr } from '../../src/ipam/index.js';
import { ServiceFileError } from '../../src/services/file-source.js';
import { KubeConfigError } from '../../src/k8s/kubeconfig.js';
import { InstallError } from '../../src/install/install.js';

test('messageOf reads anything thrown; errnoOf only errno names', () => {
  assert.equal(messageOf(new Error('boom')), 'boom');
  assert.equal(messageOf('plain'), 'plain');
  assert.equal(messageOf({ a: 1 }), '{"a":1}');
  assert.equal(messageOf(undefined), 'undefined');
  const circular: Record<string, unknown> = {};
  circular.self = circular;
  assert.equal(messageOf(circular), '[object Object]');
  assert.equal(errnoOf(Object.assign(new Error('x'), { code: 'ENOENT' })), 'ENOENT');
  assert.equal(errnoOf(Object.assign(new Error('x'), { code: 'ERR_INVALID_ARG_TYPE' })), undefined, 'a Node error code is not an errno');
  assert.equal(errnoOf(new IpamExhaustedError(0, { family: 4, ranges: [] }, 0n)), undefined);
  assert.equal(errnoOf(null), undefined);
});

test('domain errors: their class name, a stable code, and the cause they wrap', () => {
  const cause = new Error('underneath');
  const cases: [PatuError, string][] = [
    [new IpamConfigError('ipam.dataDir', 'bad', { cause }), 'IPAM_CONFIG'],
    [new IpamUnavailableError('held'), 'IPAM_UNAVAILABLE'],
    [new IpamLockTimeoutError('/x/lock', 5), 'IPAM_LOCK_TIMEOUT'],
    [new IpamStoreError('cannot', { cause }), 'IPAM_STORE'],
    [new ServiceFileError('f.yaml', ['x: bad']), 'SERVICES_FILE'],
    [new KubeConfigError('no', { cause }), 'KUBECONFIG'],
    [new InstallError('/p', 'no', { cause }), 'INSTALL'],
  ];
  for (const [e, code] of cases) {
    assert.ok(e instanceof PatuError && e instanceof Error);
    assert.equal(e.code, code);
    assert.equal(e.name, e.constructor.name);
  }
  assert.equal(cases[0]![0].cause, cause);
  assert.throws(() => parseCidr('10.0.0.0/33'), (e: unknown) => e instanceof CidrParseError && e.code === 'CIDR_PARSE');
});
