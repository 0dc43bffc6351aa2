// How the agent reports a run of the UDP socket destroyer (pure logic).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { describeUdpDestroy, type UdpDestroyStats } from '../../src/dataplane/udp-destroy-report.js';

const run = (over: Partial<UdpDestroyStats>): UdpDestroyStats => ({ backends: 1, netns: 3, skippedNetns: 0, sockets: 0, ms: 1.234, errors: [], ...over });

test('nothing destroyed and every namespace walked: nothing to log', () => {
  assert.equal(describeUdpDestroy(run({})), undefined);
});

test('sockets destroyed: info with the counts', () => {
  const d = describeUdpDestroy(run({ sockets: 7 }));
  assert.equal(d?.level, 'info');
  assert.deepEqual(d?.fields, { backends: 1, netns: 3, sockets: 7, ms: 1.23 });
});

test('a namespace failed or was skipped: warn, with at most 10 errors', () => {
  const errors = Array.from({ length: 12 }, (_, i) => `/run/netns/p${i}: EPERM`);
  const failed = describeUdpDestroy(run({ sockets: 2, errors }));
  assert.equal(failed?.level, 'warn');
  assert.equal((failed?.fields as { errors: string[] }).errors.length, 10);
  const skipped = describeUdpDestroy(run({ skippedNetns: 4 }));
  assert.equal(skipped?.level, 'warn');
  assert.equal((skipped?.fields as { skippedNetns: number }).skippedNetns, 4);
});
