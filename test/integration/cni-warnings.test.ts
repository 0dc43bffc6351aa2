// A failure that does not fail the command (registering the pod for socket
// acceleration) is reported by whoever runs the plugin, not printed by the CNI
// code: the plugin process writes it to stderr (the runtime's log), runPlugin
// (what the agent calls) hands it back in outcome.warnings. Root: a netns, a
// bridge, an IPAM dir and a pin root of this test's, all removed in `after`.
// The pin root holds accel/patu_pods as a plain directory where a pinned map
// should be, so opening the pod registry fails every time.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { scratchForTests } from '../helpers/kernel.js';
import { PATU_BIN, execPlugin, describe, isRoot, startAgent } from '../helpers/cni.js';
import { runPlugin } from '../../src/cni/plugin.js';

const skip = !isRoot() ? 'needs root (netns, bridge, bpffs)' : false;
const scratch = scratchForTests('patu-test-warn');
const tag = `wn${process.pid.toString(36)}`;

test('an acceleration registry that cannot be opened: ADD and DEL succeed, the warning reaches the caller', { skip }, async () => {
  const pinRoot = scratch.pinRoot();
  mkdirSync(join(pinRoot, 'accel', 'patu_pods'), { recursive: true });
  const dataDir = scratch.tmpDir('patu-warn-ipam');
  const bridge = `${tag}br`;
  scratch.defer(`bridge ${bridge}`, () => { spawnSync('ip', ['link', 'del', bridge], { stdio: 'ignore' }); });
  const ns = scratch.netns(`${tag}-a`);
  const ns2 = scratch.netns(`${tag}-b`);
  const conf = {
    cniVersion: '1.1.0', name: `${tag}net`, type: 'patu', bridge, masquerade: false, pinRoot,
    ipam: { ranges: [[{ subnet: '10.204.9.0/24' }]], dataDir },
  };

  // The plugin process (no agent): ADD answers a result, the warning is on stderr.
  const env = { PATU_NO_AGENT: '1' };
  const add = await execPlugin(PATU_BIN, 'ADD', conf, { containerId: `${tag}-c1`, netns: `/run/netns/${ns}`, env });
  assert.equal(add.code, 0, describe(add));
  assert.match(add.stderr, /^patu: warning: registering 10\.204\.9\.\d+ for socket acceleration: /m);
  assert.doesNotMatch(add.stdout, /warning/, 'stdout holds only the result');
  const del = await execPlugin(PATU_BIN, 'DEL', conf, { containerId: `${tag}-c1`, netns: `/run/netns/${ns}`, env });
  assert.equal(del.code, 0, describe(del));
  assert.match(del.stderr, /^patu: warning: unregistering 10\.204\.9\.\d+ from socket acceleration: /m);

  // In process (the agent's path): nothing is printed, the outcome carries it.
  const cniEnv = { CNI_CONTAINERID: `${tag}-c2`, CNI_NETNS: `/run/netns/${ns2}`, CNI_IFNAME: 'eth0', CNI_PATH: '/opt/cni/bin' };
  const out = await runPlugin({ ...cniEnv, CNI_COMMAND: 'ADD' }, JSON.stringify(conf));
  assert.equal(out.exitCode, 0, out.stdout);
  assert.equal(out.warnings?.length, 1);
  assert.match(out.warnings![0]!, /^registering 10\.204\.9\.\d+ for socket acceleration: /);
  const gone = await runPlugin({ ...cniEnv, CNI_COMMAND: 'DEL' }, JSON.stringify(conf));
  assert.equal(gone.exitCode, 0, gone.stdout);
  assert.match(gone.warnings?.[0] ?? '', /^unregistering 10\.204\.9\.\d+ from socket acceleration: /);
  // Through the agent (bin/patu -> socket -> a worker thread): the agent logs it with the request.
  const ns3 = scratch.netns(`${tag}-c`);
  const agent = await startAgent(PATU_BIN, join(scratch.tmpDir('patu-warn-sock'), 'agent.sock'));
  scratch.defer('agent', async () => { await agent.stop(); });
  const viaAgent = { PATU_AGENT_SOCKET: agent.socket };
  const add3 = await execPlugin(PATU_BIN, 'ADD', conf, { containerId: `${tag}-c3`, netns: `/run/netns/${ns3}`, env: viaAgent });
  assert.equal(add3.code, 0, describe(add3));
  assert.equal(agent.served(), 1, `served by the agent: ${agent.log().slice(0, 2000)}`);
  assert.equal(add3.stderr, '', 'the agent answers; the warning is the agent\'s to log');
  const logged = agent.log().split('\n').filter((l) => l.includes('"cni request"')).map((l) => JSON.parse(l) as { warnings?: string[] });
  assert.match(logged[0]?.warnings?.[0] ?? '', /^registering 10\.204\.9\.\d+ for socket acceleration: /);
  const del3 = await execPlugin(PATU_BIN, 'DEL', conf, { containerId: `${tag}-c3`, netns: `/run/netns/${ns3}`, env: viaAgent });
  assert.equal(del3.code, 0, describe(del3));

  // A clean ADD has no warnings field at all.
  const version = await runPlugin({ CNI_COMMAND: 'VERSION' }, '');
  assert.equal(version.warnings, undefined);
});
