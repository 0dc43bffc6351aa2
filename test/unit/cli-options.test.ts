// Options reach the command they were written for, wherever they appear on the command line.
// (commander lets a parent command's options follow a subcommand: a copy of an option on both
// once made `patu services list --pin-root X` read the production pins.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { REPO_ROOT } from '../helpers/cni.js';

const cli = (args: string[]) => spawnSync(process.execPath, [join(REPO_ROOT, 'dist', 'src', 'cli', 'index.js'), ...args], { encoding: 'utf8', timeout: 20_000 });
const root = `/sys/fs/bpf/patu-test-cliopt-${process.pid}`;

for (const args of [['services', 'list', '--pin-root', root], ['services', '--pin-root', root, 'list'], ['services', '--pin-root', root]]) {
  test(`patu ${args.join(' ')} reads ${root}`, () => {
    const r = cli(args);
    assert.match(r.stdout + r.stderr, new RegExp(`no maps under ${root}`), `${r.stdout}${r.stderr}`);
  });
}

test('patu services list --json --pin-root X: both options reach list', () => {
  const r = cli(['services', 'list', '--json', '--pin-root', root]);
  const out = JSON.parse(r.stdout) as { pinRoot: string; programmed: boolean };
  assert.deepEqual(out, { ...out, pinRoot: root, programmed: false });
});
