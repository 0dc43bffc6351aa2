// The agent remembers a network's bridge between ADDs (BridgeCache) instead of checking
// it on every request. A bridge deleted behind its back must not break the next ADD: the
// veth cannot be enslaved to a missing bridge, and the agent then checks the bridge for
// real (recreating it with its gateway address) and attaches the pod. Needs root.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { addNetns, delNetns, describe as show, execPlugin, isRoot, patuAgentFlavour, ping } from '../helpers/cni.js';

const f = patuAgentFlavour();
const skip = !isRoot() ? 'needs root (netns, links)' : f.skipReason() ?? false;
const tag = `ab${process.pid.toString(36)}`;
const pods: string[] = [];

after(async () => {
  for (const ns of pods) {
    await execPlugin(f.bin, 'DEL', f.netconf(), { containerId: `${ns}-c`, netns: `/var/run/netns/${ns}`, env: f.env }).catch(() => undefined);
    delNetns(ns);
  }
  await f.agent?.stop();
  f.destroy();
});

async function add(i: number) {
  const ns = `${tag}p${i}`;
  pods.push(ns);
  const r = await execPlugin(f.bin, 'ADD', f.netconf(), { containerId: `${ns}-c`, netns: addNetns(ns), env: f.env });
  assert.equal(r.code, 0, show(r));
  return { ns, r };
}

test('agent: a bridge deleted between two ADDs is recreated, and the pod reaches its gateway', { skip }, async () => {
  const agent = await f.start();
  // bin/patu runs the agent from its bundle (scripts/build.sh), not the module tree.
  assert.match(readFileSync(`/proc/${agent.pid}/cmdline`, 'utf8'), /dist\/agent\/index\.js/);
  await add(1);
  await add(2); // served with the remembered bridge
  assert.equal(spawnSync('ip', ['link', 'del', f.bridge]).status, 0);
  const { ns, r } = await add(3);
  assert.equal(agent.served(), 3, `every ADD served by the agent (none fell back to Node):\n${agent.log()}`);
  const br = JSON.parse(spawnSync('ip', ['-j', 'addr', 'show', 'dev', f.bridge], { encoding: 'utf8' }).stdout || '[]');
  assert.equal(br.length, 1, 'bridge recreated');
  assert.ok(br[0].addr_info.some((a: { local: string }) => a.local === f.gateway), `gateway ${f.gateway} on the bridge: ${JSON.stringify(br[0].addr_info)}`);
  assert.equal(r.json.interfaces[0].mac, br[0].address, 'the result names the new bridge');
  const p = ping(ns, f.gateway);
  assert.ok(p.ok, p.out);
});
