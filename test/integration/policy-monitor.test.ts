// `patu monitor`, `patu status`'s policy table and the /metrics counters against the real kernel (needs root):
// a "node" netns with a bridge and two pods, patu's policy programs on the pods' veths with hand-written map
// contents (the server isolated for ingress, one rule allowing the client on port 8080), real traffic, and what the
// observability side makes of the ring buffer and the counters. Also: the monitor flag is set only while a monitor
// reads, and cleared when it stops. All named after this pid, removed after the file (test/helpers/kernel.ts).
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { PolicyDataplane } from '../../src/dataplane/policy-tc.js';
import { monitorCommand } from '../../src/cli/monitor-command.js';
import { collectPolicyStatus } from '../../src/cli/status-command.js';
import { formatPolicyStatus } from '../../src/cli/policy-status.js';
import { AgentMetrics } from '../../src/k8s/metrics.js';
import { policyNamesFile, policySeries, readPolicyNames } from '../../src/policy/view.js';
import { scratchForTests } from '../helpers/kernel.js';

const isRoot = process.getuid?.() === 0;
const skip = isRoot ? false : 'needs root (netns, BPF programs)';
const scratch = scratchForTests('patu-test-polmon');
const NODE = scratch.name('n');
const CLI = scratch.name('c');
const SRV = scratch.name('s');
const PIN = scratch.pinRoot();
const GW = '172.31.79.1';
const CLIENT = '172.31.79.11';
const SERVER = '172.31.79.12';
const ip = (...a: string[]): string => execFileSync('ip', a, { encoding: 'utf8' });
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const procs: ChildProcess[] = [];
let dp: PolicyDataplane;
const ifindex: Record<string, number> = {};

/** Whether the client connects to the server's port within 1 s. */
const connects = (port: number): boolean => spawnSync('ip', ['netns', 'exec', CLI, 'nc', '-z', '-w', '1', SERVER, String(port)]).status === 0;

before(async () => {
  if (skip) return;
  for (const ns of [NODE, CLI, SRV]) scratch.netns(ns);
  ip('-n', NODE, 'link', 'add', 'br0', 'type', 'bridge');
  ip('-n', NODE, 'addr', 'add', `${GW}/24`, 'dev', 'br0');
  ip('-n', NODE, 'link', 'set', 'br0', 'up');
  for (const [ns, addr, veth] of [[CLI, CLIENT, 'vc'], [SRV, SERVER, 'vs']] as const) {
    ip('-n', NODE, 'link', 'add', veth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns);
    ip('-n', NODE, 'link', 'set', veth, 'master', 'br0', 'up');
    ip('-n', ns, 'addr', 'add', `${addr}/24`, 'dev', 'eth0');
    ip('-n', ns, 'link', 'set', 'eth0', 'up');
    ifindex[addr] = (JSON.parse(ip('-n', NODE, '-j', 'link', 'show', 'dev', veth)) as { ifindex: number }[])[0]!.ifindex;
  }
  for (const port of [8080, 8081]) {
    const p = spawn('ip', ['netns', 'exec', SRV, 'nc', '-lk', String(port)], { stdio: 'ignore' });
    procs.push(p);
  }
  scratch.defer('servers', () => {
    for (const p of procs) p.kill('SIGKILL');
  });
  dp = PolicyDataplane.open({ pinRoot: PIN });
  scratch.defer('policy dataplane', () => dp.close());
  for (const [a, i] of Object.entries(ifindex)) dp.bindDevice(a, i);
  dp.sync({
    endpoints: [
      { ip: CLIENT, epId: 1, ifindex: ifindex[CLIENT]!, isolatedIngress: false, isolatedEgress: false },
      { ip: SERVER, epId: 2, ifindex: ifindex[SERVER]!, isolatedIngress: true, isolatedEgress: false },
    ],
    peers: [{ cidr: `${CLIENT}/32`, peerClass: 16 }],
    rules: [{ epId: 2, peerClass: 16, dir: 'ingress', proto: 6, portFrom: 8080, portTo: 8080, policyId: 5 }],
  });
  // What the engine writes (src/policy/names.ts): names of policy 5 and of the endpoints.
  const names = { version: 1, policies: { 5: 'shop/allow-web' }, endpoints: { 1: { pod: 'shop/client', ips: [CLIENT], ingress: [], egress: [] }, 2: { pod: 'shop/server', ips: [SERVER], ingress: [5], egress: [] } }, classes: {} };
  const file = policyNamesFile(PIN);
  mkdirSync(dirname(file), { recursive: true });
  writeFileSync(file, JSON.stringify(names));
  scratch.defer(`names ${file}`, () => rmSync(file, { force: true }));
  const netns = (await import('../../src/kernel/netns.js')).withNetns;
  netns(`/run/netns/${NODE}`, () => {
    dp.attach(ifindex[CLIENT]!);
    dp.attach(ifindex[SERVER]!);
  });
  await sleep(200);
});

test('the rule is enforced: 8080 connects, 8081 does not', { skip }, () => {
  assert.equal(connects(8080), true);
  assert.equal(connects(8081), false);
});

test('patu monitor: drops live with pods and the isolating policy, allows with --allows; the flag is on only while it reads', { skip }, async () => {
  assert.deepEqual(dp.monitor(), { on: false, allows: false });
  const lines: string[] = [];
  let stop!: () => void;
  const until = new Promise<void>((r) => (stop = r));
  const running = monitorCommand({ pinRoot: PIN, pod: 'shop/server', allows: true, out: (l) => lines.push(l), until });
  await sleep(300);
  assert.deepEqual(dp.monitor(), { on: true, allows: true });
  assert.equal(connects(8081), false);
  assert.equal(connects(8080), true);
  await sleep(400);
  stop();
  assert.equal(await running, 0);
  assert.deepEqual(dp.monitor(), { on: false, allows: false }, 'cleared on exit');
  const text = lines.join('\n');
  assert.match(lines[0]!, /^TIME +VERDICT +DIR +SOURCE/);
  assert.match(text, new RegExp(`DROP +ingress +shop/client ${CLIENT.replace(/\./g, '\\.')}:\\d+ +-> shop/server ${SERVER.replace(/\./g, '\\.')}:8081 +TCP +no rule allows; isolated by shop/allow-web`), text);
  assert.match(text, new RegExp(`ALLOW +ingress +shop/client ${CLIENT.replace(/\./g, '\\.')}:\\d+ +-> shop/server ${SERVER.replace(/\./g, '\\.')}:8080 +TCP +shop/allow-web`), text);
  // Without --allows, and filtered to another pod: nothing of the server's.
  const other: string[] = [];
  let stop2!: () => void;
  const r2 = monitorCommand({ pinRoot: PIN, pod: 'shop/nobody', json: true, out: (l) => other.push(l), until: new Promise<void>((r) => (stop2 = r)) });
  await sleep(200);
  assert.equal(connects(8081), false);
  await sleep(300);
  stop2();
  await r2;
  assert.deepEqual(other, []);
});

test('patu status and /metrics: drops and admitted flows per pod and policy', { skip }, async () => {
  const st = collectPolicyStatus(PIN);
  assert.ok(st);
  assert.equal(st.endpoints, 2);
  assert.equal(st.isolatedIngress, 1);
  const server = st.pods.find((p) => p.pod === 'shop/server');
  assert.ok(server && server.dropped.ingress >= 2n, JSON.stringify(st, (_k, v) => (typeof v === 'bigint' ? String(v) : v)));
  assert.ok(server.allowed.ingress >= 1n);
  assert.match(formatPolicyStatus(st), /shop\/server +\d+ +0 +\d+ +0 +shop\/allow-web \(\d+\)/);
  const m = new AgentMetrics({ defaultMetrics: false });
  m.setPolicySource(() => policySeries(dp.stats(), readPolicyNames(PIN)));
  const text = await m.registry.metrics();
  assert.match(text, /^patu_policy_packets_total\{namespace="shop",pod="server",policy="",direction="ingress",verdict="drop"\} [1-9]\d*$/m, text);
  assert.match(text, /^patu_policy_packets_total\{namespace="shop",pod="server",policy="allow-web",direction="ingress",verdict="allow"\} [1-9]\d*$/m, text);
});
