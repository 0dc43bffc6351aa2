// The agent's wire format and limits (src/agent/cni-wire.ts): what crosses the socket,
// and that a request past the limits is refused as it arrives, before it is kept.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MAX_HEADER_BYTES, MAX_STDIN_BYTES, RequestReader, clip, decodeRequest, networkOf } from '../../src/agent/cni-wire.js';

test('only CNI_* variables and a well-formed request id cross the socket', () => {
  const id = '0123456789abcdef0123456789abcdef';
  const r = decodeRequest(Buffer.from(`CNI_COMMAND=ADD\nPATH=/evil\nNODE_OPTIONS=--x\nPATU_REQUEST_ID=${id}\nCNI_ARGS=A=b=c\n\n{"a":1}\n\nrest`));
  assert.deepEqual(r.env, { CNI_COMMAND: 'ADD', CNI_ARGS: 'A=b=c' });
  assert.equal(r.id, id);
  assert.equal(r.stdin.toString(), '{"a":1}\n\nrest');
  assert.equal(decodeRequest(Buffer.from('PATU_REQUEST_ID=../../etc/passwd\n\n')).id, undefined, 'an id is never a path');
});

test('the reader finds the header end across chunk boundaries', () => {
  const rd = new RequestReader();
  for (const part of ['CNI_COMMAND=DEL\n', '\n', '{"name":"n"}']) assert.equal(rd.push(Buffer.from(part)), 'more');
  const req = rd.finish();
  assert.deepEqual(req.env, { CNI_COMMAND: 'DEL' });
  assert.equal(req.stdin.toString(), '{"name":"n"}');
});

test('a request past 1 MB of stdin, or a header past its limit, is refused as it arrives', () => {
  const rd = new RequestReader();
  assert.equal(rd.push(Buffer.from('CNI_COMMAND=ADD\n\n')), 'more');
  assert.equal(rd.push(Buffer.alloc(MAX_STDIN_BYTES, 'a')), 'more', 'exactly the limit is fine');
  assert.equal(rd.push(Buffer.from('a')), 'too-large');

  const hd = new RequestReader();
  let state = 'more';
  for (let i = 0; i < 100 && state === 'more'; i++) state = hd.push(Buffer.alloc(MAX_HEADER_BYTES / 32, 'x'));
  assert.equal(state, 'too-large', 'a header that never ends');
});

test('log strings are clipped; the lane is the network name or empty', () => {
  assert.equal(clip('abc', 5), 'abc');
  assert.equal(clip('x'.repeat(1000), 10), `${'x'.repeat(10)}... (1000 chars)`);
  assert.equal(clip(undefined), undefined);
  assert.equal(networkOf(Buffer.from('{"name":"net1"}')), 'net1');
  assert.equal(networkOf(Buffer.from('{"name":7}')), '');
  assert.equal(networkOf(Buffer.from('not json')), '');
  assert.equal(networkOf(Buffer.from(`{"name":"${'n'.repeat(300)}"}`)), '');
});
