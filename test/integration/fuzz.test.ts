// The fuzz suite's fixed budget in `npm test` (needs root): generated CNI requests
// against the real plugin in-process and through the agent, generated services
// files through `patu services apply`, and a short kill -9 storm. What each one
// checks is in test/fuzz/cni-run.ts, services-run.ts and storm.ts; the long runs
// are `npm run fuzz -- --runs 20000` and `npm run fuzz -- --storm 500`.
//
// The seed is new each run and printed; a failure prints FC_SEED/FC_PATH (set
// them to replay it here or with npm run fuzz) and a shell script that replays
// the request by hand. FUZZ_RUNS, FUZZ_SERVICES and FUZZ_STORM change the budget.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync } from 'node:fs';
import { PATU_BIN, REPO_ROOT, isRoot } from '../helpers/cni.js';
import { scratchForTests } from '../helpers/kernel.js';
import { FuzzNode } from '../fuzz/node.js';
import { fuzzCni } from '../fuzz/cni-run.js';
import { fuzzServices } from '../fuzz/services-run.js';
import { killStorm } from '../fuzz/storm.js';
import { join } from 'node:path';

const skip = !isRoot()
  ? 'needs root: network namespaces, bpffs pins, a cgroup for the agent'
  : !existsSync(PATU_BIN) || !existsSync(join(REPO_ROOT, 'dist', 'cni.cjs'))
    ? `${PATU_BIN} or dist/cni.cjs not built (bash scripts/build.sh)`
    : false;
const seed = process.env.FC_SEED ? Number(process.env.FC_SEED) : Math.floor(Math.random() * 2 ** 31);
const path = process.env.FC_PATH;
const reproDir = '/tmp/patu-fuzz';
const scratch = scratchForTests('patu-fuzz');
const replay = (s: number, p: string): string => `FC_SEED=${s} FC_PATH=${p} node --test ${join(REPO_ROOT, 'dist/test/integration/fuzz.test.js')}`;

test('fuzz: generated CNI requests, in-process and through the agent: table codes, named fields, no stack, no hang, no leak', { skip, timeout: 600_000 }, async (t) => {
  mkdirSync(reproDir, { recursive: true });
  const runs = Number(process.env.FUZZ_RUNS ?? 120);
  const node = await FuzzNode.create(scratch, { tag: 'cni', agent: true, pods: 2 });
  const r = await fuzzCni(node, { runs, seed, ...(path ? { path } : {}), batch: 20, timeoutMs: 15_000, reproDir });
  t.diagnostic(`seed ${seed}: ${r.runs} cases in ${(r.ms / 1000).toFixed(0)} s; in-process answers: ${JSON.stringify(r.outcomes)}`);
  if (r.failed) {
    assert.fail(`fuzz case failed (replay: ${replay(r.failed.seed, r.failed.path)}):\n  ${r.failed.problems.join('\n  ')}\n  by hand: ${r.failed.reproducer}`);
  }
  assert.equal(r.runs, runs, 'every case ran');
});

test('fuzz: generated services files through `patu services apply`: exit 0 or 1, fields named, refused files change nothing', { skip, timeout: 600_000 }, async (t) => {
  mkdirSync(reproDir, { recursive: true });
  const runs = Number(process.env.FUZZ_SERVICES ?? 30);
  // 60 s: a 30,000-endpoint YAML file takes ~9 s on this machine under load, a real hang never ends.
  const r = await fuzzServices(scratch, { runs, seed, ...(path ? { path } : {}), timeoutMs: 60_000, reproDir });
  t.diagnostic(`seed ${seed}: ${r.runs} files in ${(r.ms / 1000).toFixed(0)} s; exits: ${JSON.stringify(r.outcomes)}`);
  if (r.failed) {
    assert.fail(`services fuzz case failed (replay: ${replay(r.failed.seed, r.failed.path)}):\n  ${r.failed.problems.join('\n  ')}\n  by hand: ${r.failed.reproducer}`);
  }
});

test('kill -9 storm: plugins and the agent killed during ADD and DEL, then GC: no record, veth, registry entry or pin left', { skip, timeout: 600_000 }, async (t) => {
  const cycles = Number(process.env.FUZZ_STORM ?? 8);
  const r = await killStorm(scratch, { cycles, seed, minLeftovers: 1 });
  t.diagnostic(`seed ${seed}: ${r.cycles} cycles, ${r.pluginKills} plugin kills, ${r.agentKills} agent kills, ${r.adds} ADDs, ${r.dels} DELs, GC removed ${r.gcRemoved} leftovers, ${(r.ms / 1000).toFixed(0)} s`);
  assert.deepEqual(r.problems, [], `kill storm (seed ${seed}; FC_SEED=${seed} replays its choices)`);
  assert.ok(r.pluginKills > 0, 'some plugin was killed mid-command');
  assert.ok(r.gcRemoved > 0, 'the kills left something that only GC removed (else the storm tested nothing)');
});
