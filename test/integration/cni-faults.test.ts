// Faults that must never wedge, fool or bloat patu (issue 15): a CNI_NETNS that is
// not a network namespace, requests that get stuck, requests the launcher gave up on,
// oversized requests. Each case runs the real bin/patu, in-process (PATU_NO_AGENT)
// and through a real `patu agent`, and every case is bounded: a hang fails the test
// instead of hanging it. Needs root (network namespaces, bridges, veths).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  addNetns,
  delNetns,
  describe as show,
  execPlugin,
  isRoot,
  patuFlavour,
  startAgent,
  type AgentHandle,
  type ExecOptions,
  type Flavour,
} from '../helpers/cni.js';

const skip = !isRoot()
  ? 'needs root: creates network namespaces, bridges and veths'
  : (patuFlavour().skipReason() ?? false);

const tag = `cf${process.pid.toString(36)}`;
const made: string[] = [];
const cleanups: (() => void | Promise<void>)[] = [];
let f: Flavour;
let agent: AgentHandle | undefined;
let scratch: string;

function newNetns(): { name: string; path: string; id: string } {
  const name = `${tag}n${made.length}`;
  made.push(name);
  return { name, path: addNetns(name), id: `${name}-ctr` };
}

const inProcess = (o: ExecOptions = {}): ExecOptions => ({ timeoutMs: 20_000, ...o, env: { PATU_NO_AGENT: '1', ...o.env } });
const viaAgent = (o: ExecOptions = {}): ExecOptions => ({ timeoutMs: 20_000, ...o, env: { PATU_AGENT_SOCKET: agent!.socket, ...o.env } });

const ipamFiles = (dataDir: string, net: string): string[] => {
  const dir = join(dataDir, net);
  return existsSync(dir) ? readdirSync(dir).filter((n) => /^\d+\.\d+\.\d+\.\d+$/.test(n)) : [];
};

before(async () => {
  if (skip) return;
  f = patuFlavour();
  cleanups.push(() => f.destroy());
  scratch = mkdtempSync(join(tmpdir(), 'patu-faults-'));
  cleanups.push(() => rmSync(scratch, { recursive: true, force: true }));
  agent = await startAgent(f.bin, join(scratch, 'agent.sock'));
  cleanups.push(() => agent?.stop());
});

after(async () => {
  for (const c of cleanups.reverse()) {
    try {
      await c();
    } catch {
      /* keep cleaning */
    }
  }
  for (const n of made) delNetns(n);
});

describe('CNI_NETNS that is not a network namespace', { skip }, () => {
  // Each of these once blocked open() (FIFO) or was entered as if it were a netns.
  const cases: [string, () => string][] = [
    ['a FIFO', () => {
      const p = join(scratch, 'fifo');
      if (!existsSync(p)) spawnSync('mkfifo', [p]);
      return p;
    }],
    ['/dev/zero', () => '/dev/zero'],
    ['a directory', () => scratch],
    ['a /proc file', () => '/proc/self/status'],
    ['a regular file', () => {
      const p = join(scratch, 'plain');
      writeFileSync(p, 'not a netns\n');
      return p;
    }],
    ['a mount namespace', () => '/proc/self/ns/mnt'],
  ];
  for (const [mode, opts] of [['in-process', inProcess], ['through the agent', viaAgent]] as const) {
    for (const [what, path] of cases) {
      test(`${what} as CNI_NETNS fails fast with code 4 naming CNI_NETNS (${mode})`, async () => {
        const id = `${tag}-bad-${what.replace(/\W/g, '')}`;
        const r = await execPlugin(f.bin, 'ADD', f.netconf(), opts({ containerId: id, netns: path() }));
        assert.equal(r.signal, null, `the plugin hung and was killed: ${show(r)}`);
        assert.equal(r.code, 1, show(r));
        assert.equal(r.json?.code, 4, show(r));
        assert.match(r.json.msg, /CNI_NETNS/, show(r));
        assert.ok(r.ms < 10_000, `took ${r.ms} ms`);
        assert.deepEqual(ipamFiles(f.dataDir, f.netName), [], 'no address left reserved');
      });
    }
  }

  test('the agent still answers after them, and a real netns still works', async () => {
    const v = await execPlugin(f.bin, 'VERSION', '', viaAgent({ timeoutMs: 5_000 }));
    assert.equal(v.code, 0, show(v));
    const pod = newNetns();
    const add = await execPlugin(f.bin, 'ADD', f.netconf(), viaAgent({ containerId: pod.id, netns: pod.path }));
    assert.equal(add.code, 0, show(add));
    const del = await execPlugin(f.bin, 'DEL', f.netconf(), viaAgent({ containerId: pod.id, netns: pod.path }));
    assert.equal(del.code, 0, show(del));
  });
});


describe('ipam.dataDir in a kernel tree', { skip }, () => {
  // mkdir -p under /proc once spun at 94% CPU forever and the agent ignored SIGTERM.
  for (const [mode, opts] of [['in-process', inProcess], ['through the agent', viaAgent]] as const) {
    for (const dataDir of ['/proc/patu-ipam', '/proc/self/fdinfo/ipam', '/sys/fs/patu-ipam']) {
      test(`ipam.dataDir ${dataDir} is code 7 naming ipam.dataDir, fast (${mode})`, async () => {
        const pod = newNetns();
        const conf = f.netconf();
        const r = await execPlugin(f.bin, 'ADD', { ...conf, ipam: { ...conf.ipam, dataDir } }, opts({ containerId: pod.id, netns: pod.path }));
        assert.equal(r.signal, null, `the plugin hung and was killed: ${show(r)}`);
        assert.equal(r.json?.code, 7, show(r));
        assert.match(r.json.msg, /ipam\.dataDir/, show(r));
      });
    }
  }
  test('the agent still answers', async () => {
    const v = await execPlugin(f.bin, 'VERSION', '', viaAgent({ timeoutMs: 5_000 }));
    assert.equal(v.code, 0, show(v));
  });
});
