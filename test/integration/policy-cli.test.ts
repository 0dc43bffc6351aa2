// `patu policy apply FILE` and `patu policy [--pod] [--json]` through bin/patu against a
// scratch pin root (needs root: BPF maps). No veth is touched: --bridge names a bridge
// that does not exist, so the programs are loaded and the maps written, nothing attached.
// Creates only pins under /sys/fs/bpf/patu-test-polcli-<pid>/ and its names file
// under /run/patu/policy/ (both removed after the file).
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { policyNamesPath } from '../../src/policy/names.js';
import { scratchForTests } from '../helpers/kernel.js';
import { PATU_BIN, isRoot } from '../helpers/cni.js';

const skip = !isRoot() ? 'needs root (BPF maps)' : !existsSync(PATU_BIN) ? `${PATU_BIN} not built (scripts/build.sh)` : false;
const scratch = scratchForTests('patu-test-polcli');
const PIN = scratch.pinRoot();
let DIR = '';

const patu = (...args: string[]) => {
  const r = spawnSync(PATU_BIN, args, { encoding: 'utf8' });
  return { code: r.status, out: r.stdout, err: r.stderr };
};
const list = (...extra: string[]) => patu('policy', '--pin-root', PIN, ...extra);
const apply = (file: string, ...extra: string[]) => patu('policy', 'apply', file, '--pin-root', PIN, '--bridge', 'patu-none0', ...extra);

const GOOD = `
apiVersion: v1
kind: Pod
metadata: { name: db, namespace: shop, labels: { role: db } }
spec: { containers: [{ name: pg, ports: [{ name: pg, containerPort: 5432 }] }] }
status: { podIP: 10.90.0.10 }
---
apiVersion: v1
kind: Pod
metadata: { name: web, namespace: shop, labels: { role: web } }
status: { podIP: 10.90.0.11 }
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: { name: db, namespace: shop }
spec:
  podSelector: { matchLabels: { role: db } }
  ingress: [{ from: [{ podSelector: { matchLabels: { role: web } } }], ports: [{ port: pg }] }]
`;

before(() => {
  if (skip) return;
  DIR = scratch.tmpDir();
  scratch.defer('names file', () => rmSync(policyNamesPath(PIN), { force: true }));
});

test('nothing programmed yet: says so', { skip }, () => {
  const r = list();
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /no network policy programmed/);
});

test('apply programs the file; `patu policy` reads the rules back with their names; applying it again changes nothing', { skip }, () => {
  const file = join(DIR, 'good.yaml');
  writeFileSync(file, GOOD);
  const r = apply(file, '--json');
  assert.equal(r.code, 0, r.err);
  const res = JSON.parse(r.out) as { policies: number; endpoints: number; isolated: number; mapChanges: number };
  assert.equal(res.policies, 1);
  assert.equal(res.endpoints, 2);
  assert.equal(res.isolated, 1);
  assert.ok(res.mapChanges > 0);
  const again = JSON.parse(apply(file, '--json').out) as { mapChanges: number };
  assert.equal(again.mapChanges, 0);

  const text = list();
  assert.equal(text.code, 0, text.err);
  assert.match(text.out, /shop\/db\s+10\.90\.0\.10\s+isolated by shop\/db\s+open/);
  assert.match(text.out, /shop\/web\s+TCP\s+5432\s+shop\/db/);
  const one = JSON.parse(list('--pod', 'shop/db', '--json').out) as { endpoints: { pod: string; rules: { dir: string; peerClass: number; peers: string[]; protocol: string; ports: string; policy: string }[] }[] };
  assert.equal(one.endpoints.length, 1);
  assert.deepEqual(one.endpoints[0]!.rules.map(({ peerClass: _, ...r }) => r), [{ dir: 'ingress', peers: ['shop/web'], protocol: 'TCP', ports: '5432', policy: 'shop/db' }]);
  const none = list('--pod', 'shop/nope');
  assert.equal(none.code, 1);
  assert.match(none.err, /no pod shop\/nope/);
});

test('an invalid file exits 1 naming every problem, and nothing changes', { skip }, () => {
  const before = list('--json').out;
  const file = join(DIR, 'bad.yaml');
  writeFileSync(file, `${GOOD}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: { name: x, namespace: shop }\nspec:\n  podSelector: {}\n  ingress: [{ ports: [{ port: pg, endPort: 6000 }] }]\n  egres: []\n`);
  const r = apply(file);
  assert.equal(r.code, 1);
  assert.match(r.err, /document 4 \(NetworkPolicy shop\/x\): spec\.ingress\[0\]\.ports\[0\]\.endPort: needs a numeric port/);
  assert.match(r.err, /document 4 \(NetworkPolicy shop\/x\): spec: .*egres/);
  assert.equal(list('--json').out, before);
  const empty = join(DIR, 'empty.yaml');
  writeFileSync(empty, '');
  assert.equal(apply(empty).code, 1);
  assert.equal(list('--json').out, before);
});

test('an empty List removes every policy: no pod isolated any more', { skip }, () => {
  const file = join(DIR, 'none.yaml');
  writeFileSync(file, 'apiVersion: v1\nkind: List\nitems: []\n');
  const r = apply(file, '--json');
  assert.equal(r.code, 0, r.err);
  const v = JSON.parse(list('--json').out) as { endpoints: unknown[] };
  assert.deepEqual(v.endpoints, []);
});
