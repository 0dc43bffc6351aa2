import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fc from 'fast-check';
import { sha256, sha256Hex } from '../../src/sha256.js';

const ref = (x: string | Uint8Array): string => createHash('sha256').update(x).digest('hex');

test('sha256: the FIPS 180-4 examples and every padding boundary (55, 56, 63, 64, 119 bytes)', () => {
  assert.equal(sha256Hex('abc'), 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
  assert.equal(sha256Hex(''), 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
  assert.equal(sha256Hex('abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq'), '248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1');
  for (const n of [55, 56, 63, 64, 65, 119, 120, 1000]) assert.equal(sha256Hex('x'.repeat(n)), ref('x'.repeat(n)), `${n} bytes`);
});

test('sha256 equals node:crypto on any string (UTF-8) and any bytes', () => {
  fc.assert(fc.property(fc.string({ unit: 'binary', maxLength: 300 }), (s) => sha256Hex(s) === ref(s)), { numRuns: 500 });
  fc.assert(fc.property(fc.uint8Array({ maxLength: 300 }), (b) => Buffer.from(sha256(b)).toString('hex') === ref(b)), { numRuns: 500 });
});
