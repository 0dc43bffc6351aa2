// src/podnet/apply.ts against the real kernel (root): pods are netns this file creates
// (each with a stand-in eth0 that must stay as it is), bridges and pools are its own
// (names from the pid), and every test removes what it made in after hooks, even on
// failure. `ip -n` is the oracle for what the pods see; busybox ping for traffic.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openPodNetApplier, type OpenedPodNetApplier } from '../../src/podnet/apply.js';
import { podnetVethName, PODNET_POOL_DIR } from '../../src/podnet/names.js';
import { REASONS, type DesiredInterface, type PodSandbox, type ResolvedNetwork } from '../../src/podnet/types.js';
import { createNamedNetns, deleteNamedNetns } from '../../src/kernel/netns.js';
import { execPlugin, patuFlavour, describe as show, type Flavour } from '../helpers/cni.js';

const isRoot = process.getuid?.() === 0;
const skip = isRoot ? false : 'needs root (creates network namespaces, bridges and veths)';
const tag = `pa${(process.pid % 46656).toString(36)}`;
const n = (process.pid % 200) + 20;
const SUBNET = `10.203.${n}.0/24`;
const SUBNET2 = `10.204.${n}.0/24`;
const P = `10.203.${n}`;
const dataDir = mkdtempSync(join(tmpdir(), `patu-podnet-apply-${process.pid}-`));
const netnsNames: string[] = [];
const hostLinks = new Set<string>();
const appliers: OpenedPodNetApplier[] = [];
let flavour: Flavour | undefined;

function ip(args: string[]): string {
  const r = spawnSync('ip', args, { encoding: 'utf8', timeout: 5000 });
  return `${r.stdout}${r.stderr}`;
}
function ok(cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 5000 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
}
const linkExists = (name: string, ns?: string): boolean =>
  spawnSync('ip', [...(ns ? ['-n', ns] : []), 'link', 'show', 'dev', name], { stdio: 'ignore' }).status === 0;

/** A pod: its netns with a stand-in eth0 (a veth whose peer stays inside), address and default route. */
function makePod(i: number): PodSandbox {
  const name = `${tag}p${i}`;
  deleteNamedNetns(name);
  const path = createNamedNetns(name);
  netnsNames.push(name);
  ok('ip', ['-n', name, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0p']);
  ok('ip', ['-n', name, 'addr', 'add', `10.99.0.${i + 2}/24`, 'dev', 'eth0']);
  ok('ip', ['-n', name, 'link', 'set', 'eth0', 'up']);
  ok('ip', ['-n', name, 'link', 'set', 'eth0p', 'up']);
  ok('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
  ok('ip', ['-n', name, 'route', 'add', 'default', 'via', '10.99.0.1', 'dev', 'eth0']);
  return { pod: { namespace: 'team-a', name: `cnf-${i}`, uid: `uid-${i}` }, containerId: `${tag}ctr${i}`, netns: path };
}
const nsName = (s: PodSandbox): string => s.netns.split('/').pop()!;

function network(name: string, o: Partial<ResolvedNetwork> = {}): ResolvedNetwork {
  const bridge = o.bridge ?? `${tag}${name}`;
  hostLinks.add(bridge);
  return { name: `${tag}-${name}`, bridge, subnet: SUBNET, mtu: 1500, ...o };
}

function iface(net: ResolvedNetwork, o: Partial<DesiredInterface> = {}): DesiredInterface {
  return { config: { namespace: 'team-a', name: 'cnf' }, ifname: 'net1', network: net, mtu: net.mtu, routes: [], rules: [], ...o };
}

function open(): OpenedPodNetApplier {
  const a = openPodNetApplier({ dataDir });
  appliers.push(a);
  return a;
}

/** The pool's records of one network, as files. */
function records(net: ResolvedNetwork): string[] {
  const dir = join(dataDir, PODNET_POOL_DIR, net.name);
  return existsSync(dir) ? readdirSync(dir).filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f)) : [];
}
function okResult<T extends { ok: boolean }>(r: T[]): T[] {
  for (const x of r) assert.ok(x.ok, `interface failed: ${JSON.stringify(x)}`);
  return r;
}

before(() => {
  if (!isRoot) return;
  ok('busybox', ['true']);
});

after(() => {
  if (!isRoot) return;
  for (const a of appliers) a.close();
  for (const ns of netnsNames) {
    try {
      deleteNamedNetns(ns);
    } catch (err) {
      process.stderr.write(`cleanup of netns ${ns}: ${(err as Error).message}\n`);
    }
  }
  for (const l of hostLinks) spawnSync('ip', ['link', 'del', l], { stdio: 'ignore' });
  flavour?.destroy();
  rmSync(dataDir, { recursive: true, force: true });
});

test('two pods get net1 on a bridge network and ping over it; table 100, rules, MTU; eth0 and main untouched; re-sync is a no-op', { skip }, () => {
  const a = open();
  const net = network('br1', { gateway: `${P}.1`, mtu: 1500 });
  const pods = [makePod(1), makePod(2)];
  const before = pods.map((p) => ({
    eth0: ip(['-n', nsName(p), 'addr', 'show', 'dev', 'eth0']),
    main: ip(['-n', nsName(p), 'route', 'show', 'table', 'main']),
  }));
  const want = (i: number): DesiredInterface[] => [iface(net, {
    address: `${P}.${10 + i}/24`, mtu: 1400,
    routes: [{ to: '10.211.0.0/16', via: `${P}.1`, table: 100 }, { to: 'default', via: `${P}.1`, table: 100 }],
    rules: [{ from: `${P}.0/24`, table: 100 }],
  })];
  const res = pods.map((p, i) => okResult(a.sync(p, want(i))));
  assert.deepEqual(res[0]![0], { ifname: 'net1', ok: true, applied: {
    ifname: 'net1', network: net.name, address: `${P}.10/24`, mac: `02:50:0a:cb:${n.toString(16).padStart(2, '0')}:0a`, mtu: 1400,
    hostIfname: podnetVethName(pods[0]!.containerId, 'net1'), config: { namespace: 'team-a', name: 'cnf' },
  } });

  const ns0 = nsName(pods[0]!);
  const link = ip(['-n', ns0, '-d', 'link', 'show', 'dev', 'net1']);
  assert.match(link, /mtu 1400 /);
  assert.match(link, /state UP/);
  assert.match(link, new RegExp(`alias patu-podnet ${net.name} team-a/cnf`));
  assert.match(ip(['-n', ns0, 'addr', 'show', 'dev', 'net1']), new RegExp(`inet ${P}\\.10/24`));
  const t100 = ip(['-n', ns0, 'route', 'show', 'table', '100']);
  assert.match(t100, new RegExp(`10\\.211\\.0\\.0/16 via ${P}\\.1 dev net1 proto 154`));
  assert.match(t100, new RegExp(`default via ${P}\\.1 dev net1 proto 154`));
  assert.match(ip(['-n', ns0, 'rule', 'show']), new RegExp(`1000:\\s+from ${P}\\.0/24 lookup 100 proto 154`));
  // eth0 as it was; main only gained the kernel's connected route of net1's subnet.
  pods.forEach((p, i) => {
    assert.equal(ip(['-n', nsName(p), 'addr', 'show', 'dev', 'eth0']), before[i]!.eth0);
    const main = ip(['-n', nsName(p), 'route', 'show', 'table', 'main']).split('\n').filter((l) => !/dev net1 proto kernel/.test(l)).join('\n');
    assert.equal(main, before[i]!.main);
  });
  // Host side: our bridge with the alias, the gateway and the network's MTU; veths on it, marked.
  const br = ip(['-d', 'link', 'show', 'dev', net.bridge]);
  assert.match(br, new RegExp(`alias patu-podnet-bridge ${net.name}`));
  assert.match(br, /mtu 1500 /);
  assert.match(ip(['addr', 'show', 'dev', net.bridge]), new RegExp(`inet ${P}\\.1/24`));
  const hostEnd = ip(['-d', 'link', 'show', 'dev', podnetVethName(pods[0]!.containerId, 'net1')]);
  assert.match(hostEnd, new RegExp(`master ${net.bridge}`));
  assert.match(hostEnd, new RegExp(`alias patu-podnet ${pods[0]!.containerId} net1 ${net.name}`));
  // Traffic over net1 (from net1's address; eth0 leads nowhere).
  const ping = spawnSync('ip', ['netns', 'exec', ns0, 'busybox', 'ping', '-c1', '-W2', '-I', 'net1', `${P}.11`], { encoding: 'utf8', timeout: 5000 });
  assert.equal(ping.status, 0, `ping over net1: ${ping.stdout}${ping.stderr}`);
  assert.deepEqual(records(net).sort(), [`${P}.10`, `${P}.11`]);
  assert.deepEqual(a.list(pods[0]!), [res[0]![0]!.ok ? res[0]![0]!.applied : undefined]);

  // Re-sync: the same links (same ifindex), nothing re-added.
  const idx = ip(['-n', ns0, '-o', 'link', 'show', 'dev', 'net1']).split(':')[0];
  const rules = ip(['-n', ns0, 'rule', 'show']);
  assert.deepEqual(a.sync(pods[0]!, want(0)), res[0]);
  assert.equal(ip(['-n', ns0, '-o', 'link', 'show', 'dev', 'net1']).split(':')[0], idx);
  assert.equal(ip(['-n', ns0, 'rule', 'show']), rules);
  // A fresh applier (an agent restart) sees the same and changes nothing either.
  const b = open();
  assert.deepEqual(b.list(pods[0]!), a.list(pods[0]!));
  assert.deepEqual(b.sync(pods[0]!, want(0)), res[0]);
  assert.equal(ip(['-n', ns0, '-o', 'link', 'show', 'dev', 'net1']).split(':')[0], idx);

  // Routes and rules follow the spec without recreating the link.
  const changed = [{ ...want(0)[0]!, routes: [{ to: '10.212.0.0/16', via: `${P}.1`, table: 100 }], rules: [{ from: `${P}.0/24`, table: 100, priority: 1500 }] }];
  okResult(a.sync(pods[0]!, changed));
  assert.equal(ip(['-n', ns0, '-o', 'link', 'show', 'dev', 'net1']).split(':')[0], idx);
  assert.equal(ip(['-n', ns0, 'route', 'show', 'table', '100']).trim(), `10.212.0.0/16 via ${P}.1 dev net1 proto 154`);
  assert.doesNotMatch(ip(['-n', ns0, 'rule', 'show']), /^1000:/m);
  assert.match(ip(['-n', ns0, 'rule', 'show']), /^1500:/m);

  // A changed address recreates the interface; the old record goes.
  const moved = [{ ...changed[0]!, address: `${P}.20/24` }];
  okResult(a.sync(pods[0]!, moved));
  assert.notEqual(ip(['-n', ns0, '-o', 'link', 'show', 'dev', 'net1']).split(':')[0], idx);
  assert.match(ip(['-n', ns0, 'addr', 'show', 'dev', 'net1']), new RegExp(`inet ${P}\\.20/24`));
  assert.deepEqual(records(net).sort(), [`${P}.11`, `${P}.20`]);

  // A removed interface goes with its record and its rules.
  assert.deepEqual(a.sync(pods[0]!, []), []);
  assert.equal(linkExists('net1', ns0), false);
  assert.equal(linkExists(podnetVethName(pods[0]!.containerId, 'net1')), false);
  assert.doesNotMatch(ip(['-n', ns0, 'rule', 'show']), /proto 154/);
  assert.deepEqual(records(net), [`${P}.11`]);
  assert.ok(linkExists('eth0', ns0));

  // release: nothing of the container left; a second release is a no-op.
  const rep = a.release(pods[1]!.containerId, pods[1]!.netns);
  assert.deepEqual(rep.addresses, [`${P}.11`]);
  assert.deepEqual(rep.links, [podnetVethName(pods[1]!.containerId, 'net1')]);
  assert.equal(linkExists('net1', nsName(pods[1]!)), false);
  assert.doesNotMatch(ip(['-n', nsName(pods[1]!), 'rule', 'show']), /proto 154/);
  assert.deepEqual(records(net), []);
  assert.deepEqual(a.release(pods[1]!.containerId, pods[1]!.netns), { links: [], addresses: [], bridges: [] });

  // Pruning: the network still in use keeps its bridge; then it goes with its pool.
  assert.deepEqual(a.pruneNetworks(new Set([net.name])).bridges, []);
  assert.ok(linkExists(net.bridge));
  assert.deepEqual(a.pruneNetworks(new Set()).bridges, [net.bridge]);
  assert.equal(linkExists(net.bridge), false);
  assert.equal(existsSync(join(dataDir, PODNET_POOL_DIR, net.name)), false);
});

test('a foreign bridge is used as it is (MTU, addresses, no alias) and survives pruning', { skip }, () => {
  const a = open();
  const name = `${tag}fb`;
  hostLinks.add(name);
  // MTU set after creation, as an admin does: the kernel then stops adjusting it to its ports'.
  ok('ip', ['link', 'add', name, 'type', 'bridge']);
  ok('ip', ['link', 'set', name, 'mtu', '1450']);
  ok('ip', ['addr', 'add', '192.0.2.1/32', 'dev', name]);
  // What patu could change (the kernel itself gives a bridge its first port's MAC and TSO size).
  const settings = (): string => `${ip(['-br', 'addr', 'show', 'dev', name]).replace(/\s+(UP|DOWN|UNKNOWN)\s+/, ' ')}|${/mtu \d+/.exec(ip(['link', 'show', 'dev', name]))?.[0]}|${/alias .*/.exec(ip(['-d', 'link', 'show', 'dev', name]))?.[0] ?? ''}`;
  const before = settings();
  const net = network('fb', { bridge: name, gateway: `10.204.${n}.1`, subnet: SUBNET2, mtu: 1450 });
  const pod = makePod(3);
  const [r] = okResult(a.sync(pod, [iface(net, { mtu: 1400 })]));
  assert.ok(r && r.ok && r.applied.address.startsWith(`10.204.${n}.`));
  assert.ok(linkExists('net1', nsName(pod)));
  assert.equal(settings(), before, 'no address, alias or MTU change');
  a.release(pod.containerId, pod.netns);
  assert.deepEqual(a.pruneNetworks(new Set()).bridges, []);
  assert.match(ip(['link', 'show', 'dev', name]), /mtu 1450/);
  assert.doesNotMatch(ip(['-d', 'link', 'show', 'dev', name]), /alias/);
});

test('a foreign link named like ours, or a foreign net1 in the pod, is left alone (applyFailed)', { skip }, () => {
  const a = open();
  const net = network('fl', { subnet: SUBNET2 });
  const pod = makePod(4);
  const hostName = podnetVethName(pod.containerId, 'net1');
  hostLinks.add(hostName);
  ok('ip', ['link', 'add', hostName, 'type', 'bridge']);
  const [r] = a.sync(pod, [iface(net)]);
  assert.ok(r && !r.ok && r.reason === REASONS.applyFailed, JSON.stringify(r));
  assert.ok(linkExists(hostName), 'the foreign link is still there');
  assert.equal(linkExists('net1', nsName(pod)), false);
  assert.deepEqual(records(net), [], 'the address went back');
  assert.deepEqual(a.release(pod.containerId, pod.netns).links, []);
  assert.ok(linkExists(hostName), 'release leaves it too');
  ok('ip', ['link', 'del', hostName]);

  ok('ip', ['-n', nsName(pod), 'link', 'add', 'net2', 'type', 'veth', 'peer', 'name', 'net2p']);
  const [r2] = a.sync(pod, [iface(net, { ifname: 'net2' })]);
  assert.ok(r2 && !r2.ok && r2.reason === REASONS.applyFailed && /not patu's/.test(r2.message), JSON.stringify(r2));
  assert.ok(linkExists('net2', nsName(pod)));
  assert.deepEqual(a.sync(pod, []), []);
  assert.ok(linkExists('net2', nsName(pod)), 'a foreign link is never removed as "not wanted"');
});

test('static address collision -> AddressInUse, pool exhaustion -> PoolExhausted; nothing half-made', { skip }, () => {
  const a = open();
  const net = network('ex', { subnet: SUBNET2, rangeStart: `10.204.${n}.50`, rangeEnd: `10.204.${n}.50` });
  const [p1, p2] = [makePod(5), makePod(6)];
  okResult(a.sync(p1, [iface(net)]));
  assert.deepEqual(records(net), [`10.204.${n}.50`]);
  const [full] = a.sync(p2, [iface(net)]);
  assert.ok(full && !full.ok && full.reason === REASONS.poolExhausted, JSON.stringify(full));
  const [dup] = a.sync(p2, [iface(net, { address: `10.204.${n}.50/24` })]);
  assert.ok(dup && !dup.ok && dup.reason === REASONS.addressInUse, JSON.stringify(dup));
  assert.equal(linkExists('net1', nsName(p2)), false);
  assert.equal(linkExists(podnetVethName(p2.containerId, 'net1')), false);
  // An address outside the range but in the subnet is still the pool's to give (static).
  okResult(a.sync(p2, [iface(net, { address: `10.204.${n}.60/24` })]));
  // Moving p1 onto p2's address is refused before p1 loses its own.
  const [move] = a.sync(p1, [iface(net, { address: `10.204.${n}.60/24` })]);
  assert.ok(move && !move.ok && move.reason === REASONS.addressInUse, JSON.stringify(move));
  assert.match(ip(['-n', nsName(p1), 'addr', 'show', 'dev', 'net1']), new RegExp(`10\\.204\\.${n}\\.50/24`));
  a.release(p1.containerId, p1.netns);
  a.release(p2.containerId, p2.netns);
  assert.deepEqual(records(net), []);
  a.pruneNetworks(new Set());
});

test('gc after a crash: records and links of vanished containers go, live ones stay', { skip }, () => {
  const crashed = open();
  const net = network('gc', { subnet: SUBNET2 });
  const [live, gone] = [makePod(7), makePod(8)];
  okResult(crashed.sync(live, [iface(net)]));
  okResult(crashed.sync(gone, [iface(net), iface(net, { ifname: 'net2' })]));
  crashed.close(); // the agent died; a new one starts with nothing in memory
  const a = open();
  const rep = a.gc(new Set([live.containerId]));
  for (const ifn of ['net1', 'net2']) assert.ok(rep.links.includes(podnetVethName(gone.containerId, ifn)), JSON.stringify(rep));
  assert.ok(!rep.links.includes(podnetVethName(live.containerId, 'net1')));
  assert.equal(linkExists('net1', nsName(gone)), false);
  assert.ok(linkExists('net1', nsName(live)));
  assert.deepEqual(records(net), [crashed.list(live)[0]!.address.split('/')[0]]);
  a.release(live.containerId, live.netns);
  a.pruneNetworks(new Set());
});

test('CNI DEL through the real plugin removes the extra interfaces and their records (no agent)', { skip }, async () => {
  flavour = patuFlavour();
  const why = flavour.skipReason();
  if (why) return void assert.fail(why);
  hostLinks.add(flavour.bridge);
  const pod = makePod(9);
  ok('ip', ['-n', nsName(pod), 'link', 'del', 'eth0']); // the plugin makes the real eth0
  const conf = flavour.netconf();
  const args = `IgnoreUnknown=1;K8S_POD_NAMESPACE=team-a;K8S_POD_NAME=cnf-9;K8S_POD_UID=uid-9`;
  const add = await execPlugin(flavour.bin, 'ADD', conf, { containerId: pod.containerId, netns: pod.netns, ifname: 'eth0', args, env: flavour.env });
  assert.equal(add.code, 0, show(add));
  const a = openPodNetApplier({ dataDir: flavour.dataDir });
  appliers.push(a);
  const { listSandboxes } = await import('../../src/podnet/sandboxes.js');
  const [sb] = listSandboxes(flavour.dataDir, flavour.netName);
  assert.deepEqual(sb, { pod: { namespace: 'team-a', name: 'cnf-9', uid: 'uid-9' }, containerId: pod.containerId, netns: pod.netns });
  const net = network('del', { subnet: SUBNET2 });
  okResult(a.sync(sb!, [iface(net), iface(net, { ifname: 'net2', rules: [{ from: SUBNET2, table: 100 }] })]));
  assert.equal(readdirSync(join(flavour.dataDir, PODNET_POOL_DIR, net.name)).filter((f) => /^10\./.test(f)).length, 2);
  const del = await execPlugin(flavour.bin, 'DEL', conf, { containerId: pod.containerId, netns: pod.netns, ifname: 'eth0', env: flavour.env });
  assert.equal(del.code, 0, show(del));
  for (const ifn of ['net1', 'net2']) {
    assert.equal(linkExists(ifn, nsName(pod)), false);
    assert.equal(linkExists(podnetVethName(pod.containerId, ifn)), false);
  }
  assert.doesNotMatch(ip(['-n', nsName(pod), 'rule', 'show']), /proto 154/);
  assert.deepEqual(readdirSync(join(flavour.dataDir, PODNET_POOL_DIR, net.name)).filter((f) => /^10\./.test(f)), []);
  assert.ok(linkExists(net.bridge), 'DEL never removes a bridge: pruneNetworks does');
  a.pruneNetworks(new Set());
});

test('VLAN networks: the trunk is ensured with the bridge, and removed by a restarted applier\'s prune (network.json)', { skip }, () => {
  const calls: string[] = [];
  const vlan = {
    ensure: (_h: unknown, o: { network: string; link: string; id: number; bridge: string; mtu: number }) => void calls.push(`ensure ${o.network} ${o.link}.${o.id} ${o.bridge} ${o.mtu}`),
    remove: (_h: unknown, o: { network: string; link: string; id: number }) => void calls.push(`remove ${o.network} ${o.link}.${o.id}`),
  };
  const first = openPodNetApplier({ dataDir, vlan });
  appliers.push(first);
  const net = network('vl', { subnet: SUBNET2, vlan: { link: 'eth9', id: 100 } });
  const pod = makePod(10);
  okResult(first.sync(pod, [iface(net)]));
  assert.deepEqual(calls, [`ensure ${net.name} eth9.100 ${net.bridge} 1500`]);
  first.release(pod.containerId, pod.netns);
  first.close();
  const again = openPodNetApplier({ dataDir, vlan });
  appliers.push(again);
  const rep = again.pruneNetworks(new Set());
  assert.deepEqual(calls.slice(1), [`remove ${net.name} eth9.100`]);
  assert.deepEqual(rep.bridges, [net.bridge]);
  assert.equal(existsSync(join(dataDir, PODNET_POOL_DIR, net.name)), false);
});
