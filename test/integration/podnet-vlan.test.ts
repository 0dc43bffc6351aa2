// VLAN networks in eBPF (bpf/vlan.c, src/podnet/vlan.ts) against the real
// kernel (needs root). Everything lives in namespaces this file creates
// (test/helpers/kernel.ts removes them even when a test fails); nothing is
// attached to the host's interfaces and no frame leaves them:
//
//   pod1 (eth1 10.210.0.10/24) --veth-- [node: bridge nbr100]--trunk(VLAN 100)--+
//   pod2 (eth1 10.210.0.11/24)  --veth-- [node: bridge nbr200]--trunk(VLAN 200)--+-- vlink ==veth== vfar --[far]
//                                         node: vlink 192.168.77.1/24 (untagged)             far: vfar 192.168.77.2/24
//   far: trunks for VLAN 100 -> bridge fbr100, 200 -> fbr200, 300 -> fbr300 (10.230.0.254/24, the far end itself)
//   r100 (eth1 10.210.0.254/24) --veth-- fbr100      r200 (eth1 10.210.0.254/24, .253/24) --veth-- fbr200
//
// The far end untags with the same eBPF (its own pin root: ifindexes are per netns),
// so it answers tagged ARP and ICMP. Both VLANs use the same subnet and the same
// responder address on purpose: only the tag keeps them apart.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, utimesSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { createHash, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { Rtnl } from '../../src/kernel/netlink/rtnl.js';
import { tcxQuery } from '../../src/kernel/bpf/tcx.js';
import { withNetns } from '../../src/kernel/netns.js';
import { listPins } from '../../src/kernel/bpf/pins.js';
import { ensureVlanTrunk, removeVlanTrunk, listVlanTrunks, trunkNames, VlanTrunkError, type VlanEnv } from '../../src/podnet/vlan.js';
import { readVlanStats, vlanPinDir } from '../../src/dataplane/vlan-tc.js';
import { NodePortTc } from '../../src/dataplane/nodeport-tc.js';
import { BpfProgram } from '../../src/kernel/bpf/object.js';
import { testRun, type TestRunResult } from '../../src/kernel/bpf/test-run.js';
import { scratchForTests, netnsPath } from '../helpers/kernel.js';

const isRoot = process.getuid?.() === 0;
const skip = isRoot ? false : 'needs root (netns, tc BPF programs)';
const scratch = scratchForTests('patu-test-vlan');
const NODE = scratch.name('node');
const FAR = scratch.name('far');
const POD1 = scratch.name('pod1');
const POD2 = scratch.name('pod2');
const R100 = scratch.name('r100');
const R200 = scratch.name('r200');
const NODE_PINS = scratch.pinRoot('node');
const FAR_PINS = scratch.pinRoot('far');
const NP_PINS = scratch.pinRoot('np');
const TC_ACT_UNSPEC = -1;
const TC_ACT_SHOT = 2;
const TC_ACT_REDIRECT = 7;

function sh(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 20_000 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr}${r.stdout}`);
  return r.stdout;
}
const ipn = (ns: string, ...args: string[]): string => sh('ip', ['-n', ns, ...args]);
const inNs = (ns: string, argv: string[]): { status: number | null; out: string } => {
  const r = spawnSync('ip', ['netns', 'exec', ns, ...argv], { encoding: 'utf8', timeout: 20_000 });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
};
const ping = (ns: string, ip: string, count = 1): { status: number | null; out: string } =>
  inNs(ns, ['ping', '-c', String(count), '-i', '0.2', '-W', '1', ip]);

const nodeEnv: VlanEnv = { pinRoot: NODE_PINS, netnsPath: netnsPath(NODE) };
const farEnv: VlanEnv = { pinRoot: FAR_PINS, netnsPath: netnsPath(FAR) };
const withRtnl = <T>(ns: string, fn: (r: Rtnl) => T): T => {
  const r = Rtnl.openInNetns(netnsPath(ns));
  try {
    return fn(r);
  } finally {
    r.close();
  }
};
const ifindex = (ns: string, name: string): number => withRtnl(ns, (r) => r.linkByName(name)!.index);
const ingressChain = (ns: string, name: string): string[] =>
  withNetns(netnsPath(ns), () => tcxQuery(ifindex(ns, name), 'ingress').map((p) => p.name));

const NET100 = { network: 'field', link: 'vlink', id: 100, bridge: 'nbr100', mtu: 1500 };
const NET200 = { network: 'lab', link: 'vlink', id: 200, bridge: 'nbr200', mtu: 1500 };
const FAR100 = { network: 'far100', link: 'vfar', id: 100, bridge: 'fbr100', mtu: 1500 };
const FAR200 = { network: 'far200', link: 'vfar', id: 200, bridge: 'fbr200', mtu: 1500 };
const FAR300 = { network: 'far300', link: 'vfar', id: 300, bridge: 'fbr300', mtu: 1500 };

/** A pod-like netns with eth1 on a bridge of `bridgeNs`. */
function podOn(pod: string, bridgeNs: string, bridge: string, host: string, addrs: string[]): void {
  ipn(bridgeNs, 'link', 'add', host, 'type', 'veth', 'peer', 'name', 'eth1', 'netns', pod);
  ipn(bridgeNs, 'link', 'set', host, 'master', bridge, 'up');
  for (const a of addrs) ipn(pod, 'addr', 'add', a, 'dev', 'eth1');
  ipn(pod, 'link', 'set', 'eth1', 'up');
}

/** tcpdump -e -nn on a link while fn runs; returns what it printed. */
async function capture(ns: string, dev: string, filter: string[], fn: () => void): Promise<string> {
  const p = spawn('ip', ['netns', 'exec', ns, 'tcpdump', '-e', '-nn', '-l', '-i', dev, ...filter], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  p.stdout.on('data', (d) => (out += d));
  p.stderr.on('data', (d) => (err += d));
  const done = new Promise((r) => p.on('exit', r));
  const t0 = Date.now();
  while (!/listening on/.test(err) && Date.now() - t0 < 5000) await new Promise((r) => setTimeout(r, 50));
  try {
    fn();
    await new Promise((r) => setTimeout(r, 300));
  } finally {
    p.kill('SIGINT');
    await done;
  }
  return out;
}

before(() => {
  if (!isRoot) return;
  for (const ns of [NODE, FAR, POD1, POD2, R100, R200]) {
    scratch.netns(ns);
    // IPv4 only: no IPv6 DAD/MLD chatter of their own, so the counters below count this file's frames.
    sh('ip', ['netns', 'exec', ns, 'sysctl', '-qw', 'net.ipv6.conf.all.disable_ipv6=1', 'net.ipv6.conf.default.disable_ipv6=1']);
  }
  // The "host link": a veth from the node to the far end, with an untagged subnet of its own.
  ipn(NODE, 'link', 'add', 'vlink', 'type', 'veth', 'peer', 'name', 'vfar', 'netns', FAR);
  ipn(NODE, 'addr', 'add', '192.168.77.1/24', 'dev', 'vlink');
  ipn(FAR, 'addr', 'add', '192.168.77.2/24', 'dev', 'vfar');
  ipn(NODE, 'link', 'set', 'vlink', 'up');
  ipn(FAR, 'link', 'set', 'vfar', 'up');
  for (const [ns, br] of [[NODE, 'nbr100'], [NODE, 'nbr200'], [FAR, 'fbr100'], [FAR, 'fbr200'], [FAR, 'fbr300']] as const) {
    ipn(ns, 'link', 'add', br, 'type', 'bridge');
    ipn(ns, 'link', 'set', br, 'up');
  }
  ipn(FAR, 'addr', 'add', '10.230.0.254/24', 'dev', 'fbr300');
  podOn(POD1, NODE, 'nbr100', 'p1', ['10.210.0.10/24']);
  podOn(POD2, NODE, 'nbr200', 'p2', ['10.210.0.11/24']);
  podOn(R100, FAR, 'fbr100', 'r100', ['10.210.0.254/24']);
  podOn(R200, FAR, 'fbr200', 'r200', ['10.210.0.254/24', '10.210.0.253/24']);
});

test('refuses, naming the field: an id outside 1-4094, a missing link, a missing bridge', { skip }, () => {
  withRtnl(NODE, (r) => {
    for (const id of [0, 4095, 1.5]) {
      assert.throws(() => ensureVlanTrunk(r, { ...NET100, id }, nodeEnv), (e: unknown) => e instanceof VlanTrunkError && e.field === 'spec.vlan.id' && /outside 1-4094/.test(e.message));
    }
    assert.throws(() => ensureVlanTrunk(r, { ...NET100, link: 'nolink0' }, nodeEnv), (e: unknown) => e instanceof VlanTrunkError && e.field === 'spec.vlan.link' && /'nolink0' does not exist/.test(e.message));
    assert.throws(() => ensureVlanTrunk(r, { ...NET100, bridge: 'nobr0' }, nodeEnv), (e: unknown) => e instanceof VlanTrunkError && e.field === 'spec.bridge');
  });
  assert.equal(existsSync(vlanPinDir(NODE_PINS)), false, 'nothing pinned by a refused request');
});

test('pod pings the far end over VLAN 100: tagged on the link, untagged in the pod; idempotent ensure', { skip }, async () => {
  // nodeport's tc program is on the link first, as on a node with --nodeport-devices.
  const np = NodePortTc.open({ pinRoot: NP_PINS, devices: ['vlink'], netnsPath: netnsPath(NODE) });
  try {
    np.sync();
  } finally {
    np.close();
  }
  assert.deepEqual(ingressChain(NODE, 'vlink'), ['patu_np_ingress']);

  withRtnl(NODE, (r) => ensureVlanTrunk(r, NET100, nodeEnv));
  withRtnl(FAR, (r) => {
    ensureVlanTrunk(r, FAR100, farEnv);
    ensureVlanTrunk(r, FAR200, farEnv);
    ensureVlanTrunk(r, FAR300, farEnv);
  });
  // Ahead of nodeport on the link, so a tagged frame is never taken for the node's own.
  assert.deepEqual(ingressChain(NODE, 'vlink'), ['patu_vlan_link', 'patu_np_ingress']);
  const t = trunkNames('field', 100);
  assert.deepEqual(ingressChain(NODE, t.outer), ['patu_vlan_trunk']);
  const names = withRtnl(NODE, (r) => r.listLinks().filter((l) => l.name.startsWith('pv')).map((l) => [l.name, l.alias, l.mtu]));
  assert.deepEqual(names.sort(), [[t.bridgeEnd, 'patu-podnet-trunk field', 1500], [t.outer, 'patu-podnet-trunk field', 1500]]);
  assert.equal(withRtnl(NODE, (r) => r.linkByName(t.bridgeEnd)!.masterIndex), ifindex(NODE, 'nbr100'));

  const dump = await capture(NODE, 'vlink', [], () => {
    const p = ping(POD1, '10.210.0.254', 3);
    assert.equal(p.status, 0, p.out);
  });
  assert.match(dump, /vlan 100, p 0, ethertype IPv4.*10\.210\.0\.10 > 10\.210\.0\.254: ICMP echo request/);
  assert.match(dump, /vlan 100, p 0, ethertype IPv4.*10\.210\.0\.254 > 10\.210\.0\.10: ICMP echo reply/);
  assert.match(dump, /vlan 100, p 0, ethertype ARP/);
  assert.doesNotMatch(dump, /ethertype IPv4 \(0x0800\), length \d+: 10\.210\./, 'no untagged VLAN traffic on the link');
  // Full-size frames: the tag does not count against the link's 1500-byte MTU.
  const big = inNs(POD1, ['ping', '-c', '1', '-W', '1', '-M', 'do', '-s', '1472', '10.210.0.254']);
  assert.equal(big.status, 0, big.out);
  // Untagged inside the pod.
  const inPod = await capture(POD1, 'eth1', [], () => assert.equal(ping(POD1, '10.210.0.254').status, 0));
  assert.match(inPod, /ethertype IPv4.*ICMP echo reply/);
  assert.doesNotMatch(inPod, /vlan/);

  // Idempotent: same links, same one program per hook, same entries.
  const before = { trunk: ifindex(NODE, t.outer), chain: ingressChain(NODE, 'vlink'), list: withRtnl(NODE, (r) => listVlanTrunks(r, nodeEnv)) };
  withRtnl(NODE, (r) => ensureVlanTrunk(r, NET100, nodeEnv));
  assert.equal(ifindex(NODE, t.outer), before.trunk);
  assert.deepEqual(ingressChain(NODE, 'vlink'), before.chain);
  assert.deepEqual(withRtnl(NODE, (r) => listVlanTrunks(r, nodeEnv)), before.list);
  assert.deepEqual(before.list, [{ network: 'field', link: 'vlink', id: 100, bridge: 'nbr100', trunk: t.outer }]);
  const s = readVlanStats(NODE_PINS)!;
  assert.ok(s.popped >= 3n && s.pushed >= 3n, JSON.stringify(s, (_k, v) => (typeof v === 'bigint' ? Number(v) : v)));
  // Frames arriving on a veth: the receive path moved the tag into the skb's metadata before tc.
  assert.equal(s.tagInPayload, 0n);
});

test('tag in the payload (BPF_PROG_TEST_RUN, no receive path to untag it) is popped too; a frame the pod tagged is dropped', { skip }, () => {
  const dir = vlanPinDir(NODE_PINS);
  const linkProg = BpfProgram.fromPin(join(dir, 'prog_link'));
  const trunkProg = BpfProgram.fromPin(join(dir, 'prog_trunk'));
  try {
    const macs = Buffer.from('02000000000102000000000281', 'hex').subarray(0, 12);
    const ip = Buffer.alloc(20);
    ip[0] = 0x45;
    const tagged = (vid: number): Buffer => Buffer.concat([macs, Buffer.from([0x81, 0x00, vid >> 8, vid & 0xff, 0x08, 0x00]), ip]);
    const untagged = Buffer.concat([macs, Buffer.from([0x08, 0x00]), ip]);
    const s0 = readVlanStats(NODE_PINS)!;
    const run = (prog: BpfProgram, ifindexOf: string, data: Buffer): TestRunResult =>
      withNetns(netnsPath(NODE), () => testRun(prog.fd, { data, skb: { ifindex: ifindex(NODE, ifindexOf) }, dataOutSize: 256 }));
    let r = run(linkProg, 'vlink', tagged(100));
    assert.equal(r.retval, TC_ACT_REDIRECT);
    assert.deepEqual(r.dataOut, untagged, 'tag removed from the payload');
    r = run(linkProg, 'vlink', tagged(999));
    assert.equal(r.retval | 0, TC_ACT_UNSPEC, 'unknown id: handed on');
    assert.deepEqual(r.dataOut, tagged(999));
    r = run(trunkProg, trunkNames('field', 100).outer, untagged);
    assert.equal(r.retval, TC_ACT_REDIRECT);
    r = run(trunkProg, trunkNames('field', 100).outer, tagged(200));
    assert.equal(r.retval, TC_ACT_SHOT, 'a pod may not choose its VLAN');
    r = run(trunkProg, 'vlink', untagged);
    assert.equal(r.retval, TC_ACT_SHOT, 'not a trunk');
    const s1 = readVlanStats(NODE_PINS)!;
    assert.equal(s1.tagInPayload - s0.tagInPayload, 1n);
    assert.equal(s1.droppedTagged - s0.droppedTagged, 1n);
    assert.equal(s1.droppedNoMap - s0.droppedNoMap, 1n);
  } finally {
    linkProg.close();
    trunkProg.close();
  }
});

test('untagged frames and other VLAN ids reach the node stack as before', { skip }, async () => {
  const s0 = readVlanStats(NODE_PINS)!;
  // Untagged: an address on the link itself, both ways.
  let p = ping(NODE, '192.168.77.2', 2);
  assert.equal(p.status, 0, p.out);
  p = ping(FAR, '192.168.77.1', 2);
  assert.equal(p.status, 0, p.out);
  // VLAN 300: the far end has a network on it, the node does not. Its ARPs arrive tagged 300
  // and are handed on (passed), not sent into either trunk.
  const pod1Rx0 = Number(inNs(POD1, ['cat', '/sys/class/net/eth1/statistics/rx_packets']).out);
  const dump = await capture(NODE, 'vlink', ['vlan', '300'], () => {
    assert.notEqual(ping(FAR, '10.230.0.1', 2).status, 0);
  });
  assert.match(dump, /vlan 300, p 0, ethertype ARP.*Request who-has 10\.230\.0\.1 tell 10\.230\.0\.254/);
  const s1 = readVlanStats(NODE_PINS)!;
  assert.ok(s1.passed - s0.passed >= 6n, `passed ${s0.passed} -> ${s1.passed}`);
  assert.equal(s1.popped, s0.popped, 'nothing of VLAN 300 or untagged was popped');
  const pod1Rx1 = Number(inNs(POD1, ['cat', '/sys/class/net/eth1/statistics/rx_packets']).out);
  assert.equal(pod1Rx1 - pod1Rx0, 0, 'pod1 (VLAN 100) received nothing');
});

test('two VLAN networks on one link are kept apart (same subnet, same responder address on both)', { skip }, () => {
  withRtnl(NODE, (r) => ensureVlanTrunk(r, NET200, nodeEnv));
  assert.deepEqual(ingressChain(NODE, 'vlink'), ['patu_vlan_link', 'patu_np_ingress'], 'one program on the link serves both ids');
  for (const pod of [POD1, POD2]) {
    const p = ping(pod, '10.210.0.254', 2);
    assert.equal(p.status, 0, `${pod}: ${p.out}`);
  }
  const macOf = (ns: string): string => JSON.parse(ipn(ns, '-j', 'link', 'show', 'eth1'))[0].address;
  const neigh = (pod: string): string => JSON.parse(ipn(pod, '-j', 'neigh', 'show', '10.210.0.254', 'dev', 'eth1'))[0]?.lladdr ?? '';
  assert.equal(neigh(POD1), macOf(R100), 'pod1 (VLAN 100) reached r100');
  assert.equal(neigh(POD2), macOf(R200), 'pod2 (VLAN 200) reached r200');
  // .253 exists on VLAN 200 only.
  assert.equal(ping(POD2, '10.210.0.253').status, 0);
  assert.notEqual(ping(POD1, '10.210.0.253').status, 0);
  // And the pods of the two networks do not see each other (same subnet, different VLANs).
  assert.notEqual(ping(POD1, '10.210.0.11').status, 0);
  // Another network cannot take a (link, id) held.
  withRtnl(NODE, (r) => {
    assert.throws(() => ensureVlanTrunk(r, { ...NET200, network: 'thief', bridge: 'nbr100' }, nodeEnv),
      (e: unknown) => e instanceof VlanTrunkError && e.field === 'spec.vlan' && /VLAN 200 on 'vlink' belongs to network 'lab'/.test(e.message));
    assert.deepEqual(listVlanTrunks(r, nodeEnv).map((x) => [x.network, x.link, x.id, x.bridge]), [['field', 'vlink', 100, 'nbr100'], ['lab', 'vlink', 200, 'nbr200']]);
  });
  assert.equal(withRtnl(NODE, (r) => r.linkByName(trunkNames('thief', 200).outer)), undefined, 'nothing made for the refused network');
});

test('repairs: a trunk deleted by hand is made again; a newer vlan.o is swapped in place on the link', { skip }, () => {
  const t = trunkNames('field', 100);
  ipn(NODE, 'link', 'del', t.outer);
  assert.notEqual(ping(POD1, '10.210.0.254').status, 0, 'no trunk, no VLAN');
  withRtnl(NODE, (r) => ensureVlanTrunk(r, NET100, nodeEnv));
  assert.equal(ping(POD1, '10.210.0.254').status, 0);
  const entries = withRtnl(NODE, (r) => listVlanTrunks(r, nodeEnv));
  assert.deepEqual(entries.map((e) => [e.network, e.link, e.id]), [['field', 'vlink', 100], ['lab', 'vlink', 200]]);
  // An upgrade: the object is newer than the pinned programs.
  const idsBefore = withNetns(netnsPath(NODE), () => tcxQuery(ifindex(NODE, 'vlink'), 'ingress').map((p) => p.id));
  const obj = fileURLToPath(new URL('../../../build/bpf/vlan.o', import.meta.url));
  const later = new Date(Date.now() + 1000);
  utimesSync(obj, later, later);
  withRtnl(NODE, (r) => ensureVlanTrunk(r, NET100, nodeEnv));
  const after = withNetns(netnsPath(NODE), () => tcxQuery(ifindex(NODE, 'vlink'), 'ingress'));
  assert.deepEqual(after.map((p) => p.name), ['patu_vlan_link', 'patu_np_ingress']);
  assert.notEqual(after[0]!.id, idsBefore[0], 'the new program runs');
  assert.equal(after[1]!.id, idsBefore[1], 'nodeport untouched');
  for (const pod of [POD1, POD2]) assert.equal(ping(pod, '10.210.0.254').status, 0, pod);
  // The other network's trunk still runs the old trunk program until its next ensure, which swaps it.
  withRtnl(NODE, (r) => ensureVlanTrunk(r, NET200, nodeEnv));
  const trunkProgs = [t.outer, trunkNames('lab', 200).outer].map((n) => ingressChain(NODE, n));
  assert.deepEqual(trunkProgs, [['patu_vlan_trunk'], ['patu_vlan_trunk']]);
});

test('TCP over the VLAN: an 8 MiB transfer arrives whole (sha256 on both ends)', { skip }, async () => {
  const dir = scratch.tmpDir('patu-test-vlan');
  const file = join(dir, 'payload');
  writeFileSync(file, randomBytes(8 * 1024 * 1024));
  const want = createHash('sha256').update(readFileSync(file)).digest('hex');
  const srv = spawn('ip', ['netns', 'exec', R100, 'sh', '-c', 'nc -l 10.210.0.254 5001 | sha256sum'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let got = '';
  srv.stdout.on('data', (d) => (got += d));
  const exited = new Promise((r) => srv.on('exit', r));
  try {
    let r = { status: 1 as number | null, out: '' };
    for (let i = 0; i < 20 && r.status !== 0; i++) {
      spawnSync('sleep', ['0.1']);
      r = inNs(POD1, ['sh', '-c', `nc -N -w 10 10.210.0.254 5001 < ${file}`]);
    }
    assert.equal(r.status, 0, r.out);
    await Promise.race([exited, new Promise((res) => setTimeout(res, 10_000))]);
    assert.equal(got.split(/\s/)[0], want);
  } finally {
    srv.kill();
  }
});

test('removal: no programs, pins or links are left; the link keeps nodeport; removal is idempotent', { skip }, () => {
  withRtnl(NODE, (r) => {
    removeVlanTrunk(r, NET100, nodeEnv);
    // VLAN 200 still on the link: its program stays.
    assert.deepEqual(ingressChain(NODE, 'vlink'), ['patu_vlan_link', 'patu_np_ingress']);
    assert.deepEqual(listVlanTrunks(r, nodeEnv).map((x) => x.network), ['lab']);
    removeVlanTrunk(r, NET200, nodeEnv);
    removeVlanTrunk(r, NET200, nodeEnv);
    removeVlanTrunk(r, NET100, nodeEnv);
    assert.deepEqual(listVlanTrunks(r, nodeEnv), []);
    assert.deepEqual(r.listLinks().filter((l) => l.name.startsWith('pv') || l.alias?.startsWith('patu-podnet')), []);
  });
  assert.deepEqual(ingressChain(NODE, 'vlink'), ['patu_np_ingress'], 'nodeport untouched');
  assert.equal(existsSync(vlanPinDir(NODE_PINS)), false);
  assert.deepEqual(listPins(NODE_PINS), []);
  const progs = JSON.parse(sh('bpftool', ['-j', 'prog', 'show'])) as { name?: string; id: number }[];
  const farIds = withNetns(netnsPath(FAR), () => tcxQuery(ifindex(FAR, 'vfar'), 'ingress').map((p) => p.id));
  const leftover = progs.filter((p) => p.name?.startsWith('patu_vlan_') && !farIds.includes(p.id));
  // The far end still holds its own (pinned under FAR_PINS): only those may remain.
  const farPinned = listPins(FAR_PINS).filter((p) => p.includes('prog_')).length;
  assert.ok(leftover.length <= farPinned, `patu_vlan_ programs left: ${JSON.stringify(leftover)}`);
  // Untagged traffic on the link is as before.
  assert.equal(ping(NODE, '192.168.77.2').status, 0);
  withRtnl(FAR, (r) => {
    for (const n of [FAR100, FAR200, FAR300]) removeVlanTrunk(r, n, farEnv);
  });
  assert.deepEqual(ingressChain(FAR, 'vfar'), []);
  assert.equal(existsSync(join(FAR_PINS, 'vlan')), false);
});
