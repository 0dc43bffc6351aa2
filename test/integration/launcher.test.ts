// bin/patu, the launcher a runtime execs: what it does with the environment a
// runtime hands it (libcni passes the runtime's own environment through).
// Needs only the built binary; VERSION touches nothing on the host.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { PATU_BIN } from '../helpers/cni.js';

const skip = existsSync(PATU_BIN) ? false : `${PATU_BIN} not built (bash scripts/build.sh)`;

// Node 20's ICU dies of SIGSEGV at start-up when LANG or LC_ALL holds a
// path-like value of 12 or more characters (found by the fuzz suite, LANG=/nonexistent).
test('a hostile locale in the environment does not crash the in-process plugin', { skip }, () => {
  for (const [k, v] of [['LANG', '/nonexistent'], ['LC_ALL', '/aaaaaaaaaaaaaaaa'], ['LANG', 'x'.repeat(300)]] as const) {
    const r = spawnSync(PATU_BIN, [], {
      env: { PATH: '/usr/bin:/bin', CNI_COMMAND: 'VERSION', PATU_NO_AGENT: '1', [k]: v },
      encoding: 'utf8',
      timeout: 20_000,
    });
    assert.equal(r.signal, null, `${k}=${v}: plugin killed by ${r.signal}`);
    assert.equal(r.status, 0, `${k}=${v}: exit ${r.status}: ${r.stdout}${r.stderr}`);
    assert.ok(Array.isArray(JSON.parse(r.stdout).supportedVersions), r.stdout);
  }
});
