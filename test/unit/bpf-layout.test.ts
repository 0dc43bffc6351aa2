// C and TypeScript agree on every map layout, field by field: each codec the
// control plane opens a map with is compared with the key/value types in the
// compiled object's BTF (offsets and sizes, not just the total size that
// TypedMap checks at open time). Needs the objects from scripts/build.sh, no root.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { mapLayouts, layoutMismatches, type MapLayout } from '../../src/kernel/bpf/btf.js';
import { structCodec, u32, type Codec } from '../../src/kernel/bpf/map.js';
import { SOCK_LB_MAP_CODECS } from '../../src/dataplane/service-lb.js';
import { ACCEL_MAP_CODECS } from '../../src/dataplane/accel-maps.js';
import { SOCK_DESTROY_MAP_CODECS } from '../../src/dataplane/udp-destroy.js';
import { NODEPORT_MAP_CODECS } from '../../src/dataplane/nodeport-tc.js';
import { POLICY_MAP_CODECS, eventC } from '../../src/dataplane/policy-maps.js';
import { VLAN_MAP_CODECS } from '../../src/dataplane/vlan-tc.js';
import { ROUTED_MAP_CODECS } from '../../src/dataplane/routed-tc.js';

const obj = (rel: string): string => fileURLToPath(new URL(`../../../build/${rel}`, import.meta.url));
const SOCK_LB = obj('bpf/sock_lb.o');
const ACCEL = obj('bpf/accel.o');
const SOCK_DESTROY = obj('bpf/sock_destroy.o');
const NODEPORT = obj('bpf/nodeport.o');
const POLICY = obj('bpf/policy.o');
const VLAN = obj('bpf/vlan.o');
const ROUTED = obj('bpf/routed.o');
const FIXTURE = obj('test/bpf/test_maps.o');
const built = [SOCK_LB, ACCEL, SOCK_DESTROY, NODEPORT, POLICY, VLAN, ROUTED, FIXTURE].every(existsSync);
const skip = built ? false : 'needs the eBPF objects: run scripts/build.sh';

type Codecs = Record<string, { key: Codec<unknown>; value: Codec<unknown> }>;

function check(objectPath: string, codecs: Codecs, kernelOnly: readonly string[]): void {
  const layouts = mapLayouts(objectPath);
  // Every map is either mirrored or declared kernel-only: a new map needs a decision.
  assert.deepEqual(layouts.map((l) => l.map).sort(), [...Object.keys(codecs), ...kernelOnly].sort(), `maps of ${objectPath}`);
  const problems: string[] = [];
  for (const l of layouts) {
    const c = codecs[l.map];
    if (!c) continue;
    for (const m of layoutMismatches(l.key, c.key)) problems.push(`${l.map} key: ${m}`);
    for (const m of layoutMismatches(l.value, c.value)) problems.push(`${l.map} value: ${m}`);
  }
  assert.deepEqual(problems, []);
}

test('sock_lb maps: every codec matches the C layout field by field', { skip }, () => {
  check(SOCK_LB, SOCK_LB_MAP_CODECS as Codecs, ['patu_sock_nat']);
});

test('sock_destroy maps: every codec matches the C layout; the maps it shares with sock_lb have the same layout there', { skip }, () => {
  check(SOCK_DESTROY, SOCK_DESTROY_MAP_CODECS as Codecs, ['patu_sock_nat', 'patu_revnat']);
  // Reused by fd from sock_lb.o: the same struct (sock_lb.h) on both sides.
  const lb = mapLayouts(SOCK_LB);
  for (const l of mapLayouts(SOCK_DESTROY).filter((x) => x.map === 'patu_sock_nat' || x.map === 'patu_revnat')) {
    const twin = lb.find((x) => x.map === l.map);
    assert.deepEqual({ key: l.key, value: l.value }, { key: twin?.key, value: twin?.value }, l.map);
  }
});

test('accel maps: every codec matches the C layout field by field', { skip }, () => {
  check(ACCEL, ACCEL_MAP_CODECS as Codecs, []);
});

test('nodeport (tc) maps, its own and the service maps it shares by pin: every codec matches the C layout', { skip }, () => {
  check(NODEPORT, NODEPORT_MAP_CODECS as Codecs, []);
});

test('policy maps: every codec matches the C layout field by field (the ring buffer has no key/value types)', { skip }, () => {
  check(POLICY, POLICY_MAP_CODECS as Codecs, []);
});

test('vlan maps (bpf/vlan.h): every codec matches the C layout field by field', { skip }, () => {
  check(VLAN, VLAN_MAP_CODECS as Codecs, []);
});

test('routed maps (bpf/routed.h): every codec matches the C layout field by field', { skip }, () => {
  check(ROUTED, ROUTED_MAP_CODECS as Codecs, []);
});

test('policy ring buffer records: the event codec is struct patu_pol_event (not in BTF: no map names it), field by field', () => {
  // bpf/policy.h: u64 ts_ns; be32 src, dst; be16 sport, dport; u8 proto, dir, reason, pad; u32 ep_id, policy.
  const c = { name: 'patu_pol_event', size: 32, fields: [
    { name: 'ts_ns', offset: 0, size: 8 }, { name: 'src', offset: 8, size: 4 }, { name: 'dst', offset: 12, size: 4 },
    { name: 'sport', offset: 16, size: 2 }, { name: 'dport', offset: 18, size: 2 }, { name: 'proto', offset: 20, size: 1 },
    { name: 'dir', offset: 21, size: 1 }, { name: 'reason', offset: 22, size: 1 }, { name: 'pad', offset: 23, size: 1 },
    { name: 'ep_id', offset: 24, size: 4 }, { name: 'policy', offset: 28, size: 4 },
  ] };
  assert.deepEqual(layoutMismatches(c, eventC), []);
});

test('BTF gives the offset and size of each field', { skip }, () => {
  const svc = mapLayouts(SOCK_LB).find((l) => l.map === 'patu_svc');
  assert.ok(svc);
  assert.deepEqual(svc.key, {
    name: 'patu_svc_key', size: 8,
    fields: [{ name: 'vip', offset: 0, size: 4 }, { name: 'port', offset: 4, size: 2 }, { name: 'proto', offset: 6, size: 1 }, { name: 'pad', offset: 7, size: 1 }],
  });
  const slot = mapLayouts(SOCK_LB).find((l) => l.map === 'patu_svc_slot');
  assert.deepEqual(slot?.value, { name: 'unsigned int', size: 4, fields: null });
});

test('a codec with two same-size fields swapped has the right size and fails the check', { skip }, () => {
  const pairs: MapLayout | undefined = mapLayouts(FIXTURE).find((l) => l.map === 'patu_test_pairs');
  assert.ok(pairs, 'fixture map patu_test_pairs');
  const right = structCodec<{ first: number; second: number }>({ first: u32, second: u32 });
  const swapped = structCodec<{ second: number; first: number }>({ second: u32, first: u32 });
  assert.equal(swapped.size, pairs.value.size, 'a size check alone passes');
  assert.deepEqual(layoutMismatches(pairs.value, right), []);
  assert.deepEqual(layoutMismatches(pairs.value, swapped), [
    'struct test_pair.first is at offset 0 in C, 4 in the codec (first)',
    'struct test_pair.second is at offset 4 in C, 0 in the codec (second)',
  ]);
});

test('renamed, missing and extra fields, wrong sizes and struct-vs-scalar are reported', { skip }, () => {
  const pairs = mapLayouts(FIXTURE).find((l) => l.map === 'patu_test_pairs')!;
  const renamed = structCodec<{ first: number; other: number }>({ first: u32, other: u32 });
  assert.deepEqual(layoutMismatches(pairs.value, renamed), [
    'struct test_pair.second (offset 4, 4 bytes) has no codec field',
    'codec field other (other) is not in struct test_pair',
  ]);
  assert.deepEqual(layoutMismatches(pairs.value, u32), [
    'struct test_pair is 8 bytes, the codec 4',
    'struct test_pair has fields first, second, the codec is not a struct codec',
  ]);
  const struct = structCodec<{ first: number; second: number }>({ first: u32, second: u32 });
  assert.deepEqual(layoutMismatches(pairs.key, struct), [
    'C type unsigned int is 4 bytes, the codec 8',
    'C type unsigned int is not a struct, the codec has fields first, second',
  ]);
});
