// Rtnl, netns and sysctl against the real kernel (needs root). Everything happens in
// namespaces this file creates: a "node" netns holding the bridge, and two pod
// netns whose veth peers are created directly inside them. `ip netns exec ... ping`
// is used only as the oracle that the wiring really carries traffic.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Rtnl } from '../../src/kernel/netlink/rtnl.js';
import { NetlinkError } from '../../src/kernel/netlink/message.js';
import { createNamedNetns, deleteNamedNetns, netnsExists, withNetns, currentNetnsInode } from '../../src/kernel/netns.js';
import { readSysctl, writeSysctl } from '../../src/kernel/sysctl.js';
import { open, close, O_RDONLY } from '../../src/kernel/ffi/libc.js';

const isRoot = process.getuid?.() === 0;
const skip = isRoot ? false : 'needs root (creates network namespaces, links and routes)';
const tag = `nlt${process.pid}`;
const NODE = `${tag}n`;
const POD_A = `${tag}a`;
const POD_B = `${tag}b`;
const paths: Record<string, string> = {};

function nsRun(ns: string, argv: string[]): { status: number | null; out: string } {
  const r = spawnSync('ip', ['netns', 'exec', ns, ...argv], { encoding: 'utf8', timeout: 5000 });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}
const ping = (ns: string, ip: string): { status: number | null; out: string } =>
  nsRun(ns, ['busybox', 'ping', ip.includes(':') ? '-6' : '-4', '-c1', '-W1', ip]);

function expectErr(fn: () => unknown, code: string, mention: RegExp): NetlinkError {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof NetlinkError, `expected a NetlinkError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    assert.match(err.message, mention);
    return err;
  }
  assert.fail(`expected ${code}`);
}

before(() => {
  if (!isRoot) return;
  for (const n of [NODE, POD_A, POD_B]) {
    deleteNamedNetns(n); // a leftover of an earlier run with the same pid
    paths[n] = createNamedNetns(n);
  }
});

after(() => {
  if (!isRoot) return;
  for (const n of [NODE, POD_A, POD_B]) {
    try {
      deleteNamedNetns(n);
    } catch (err) {
      process.stderr.write(`cleanup of netns ${n} failed: ${(err as Error).message}\n`);
    }
  }
});

test('createNamedNetns makes a real netns handle; a duplicate name is EEXIST', { skip }, () => {
  for (const n of [NODE, POD_A, POD_B]) assert.ok(netnsExists(paths[n]!), n);
  assert.equal(netnsExists('/etc/hostname'), false);
  assert.equal(netnsExists(`/run/netns/${tag}-none`), false);
  assert.notEqual(statSync(paths[POD_A]!).ino, statSync(paths[POD_B]!).ino);
  assert.notEqual(statSync(paths[POD_A]!).ino, currentNetnsInode());
  assert.throws(() => createNamedNetns(POD_A), (e: Error & { code?: string }) => e.code === 'EEXIST' && e.message.includes(POD_A));
  const extra = `${tag}x`;
  const p = createNamedNetns(extra);
  assert.ok(netnsExists(p));
  assert.equal(deleteNamedNetns(extra), true);
  assert.equal(netnsExists(p), false);
  assert.equal(deleteNamedNetns(extra), false);
});

test('withNetns switches this thread and always switches back, even on throw', { skip }, () => {
  const home = currentNetnsInode();
  const podIno = statSync(paths[POD_A]!).ino;
  assert.equal(withNetns(paths[POD_A]!, () => currentNetnsInode()), podIno);
  assert.equal(currentNetnsInode(), home);
  assert.throws(() => withNetns(paths[POD_A]!, () => {
    assert.equal(currentNetnsInode(), podIno);
    throw new Error('boom inside the pod');
  }), /boom inside the pod/);
  assert.equal(currentNetnsInode(), home);
  // Nested: the inner switch returns to the outer namespace, not to home.
  withNetns(paths[POD_A]!, () => {
    withNetns(paths[POD_B]!, () => assert.equal(currentNetnsInode(), statSync(paths[POD_B]!).ino));
    assert.equal(currentNetnsInode(), podIno);
  });
  assert.equal(currentNetnsInode(), home);
  assert.throws(() => withNetns(`/run/netns/${tag}-none`, () => 1), /ENOENT/);
  assert.equal(currentNetnsInode(), home);
});

test('the libuv threadpool stays in the original netns even when first used inside withNetns', { skip }, () => {
  // A fresh CommonJS process that loads netns.js with require(esm): unlike the ESM
  // loader, that reads files synchronously, so nothing has started the pool before
  // withNetns. Async work first submitted inside the switched section must still run
  // on threads in the home netns (the check that this test can fail: with the warm-up
  // in warmThreadpool() removed, "pool" comes back equal to "inside").
  const netnsJs = fileURLToPath(new URL('../../src/kernel/netns.js', import.meta.url));
  const script = `
    const { readdirSync, readlinkSync, promises: fsp } = require('node:fs');
    const { withNetns } = require(${JSON.stringify(netnsJs)});
    const threadsBefore = readdirSync('/proc/self/task').length;
    const home = readlinkSync('/proc/thread-self/ns/net');
    let pending;
    const inside = withNetns(${JSON.stringify(paths[POD_A])}, () => {
      pending = fsp.readlink('/proc/thread-self/ns/net');
      return readlinkSync('/proc/thread-self/ns/net');
    });
    pending.then((pool) => console.log(JSON.stringify({ home, inside, pool, threadsBefore, threadsAfter: readdirSync('/proc/self/task').length })));`;
  const r = spawnSync(process.execPath, ['--experimental-require-module', '--no-warnings', '-e', script], { encoding: 'utf8', timeout: 10_000 });
  assert.equal(r.status, 0, r.stderr);
  const got = JSON.parse(r.stdout) as { home: string; inside: string; pool: string; threadsBefore: number; threadsAfter: number };
  assert.ok(got.threadsAfter > got.threadsBefore, `the pool started during the test (${got.threadsBefore} -> ${got.threadsAfter} threads)`);
  assert.equal(got.inside, `net:[${statSync(paths[POD_A]!).ino}]`, 'the main thread was in the pod');
  assert.equal(got.pool, got.home, 'threadpool threads were started in the home netns');
});

test('setNetns moves a link into a pod netns; it arrives without its addresses', { skip }, () => {
  const node = Rtnl.openInNetns(paths[NODE]!);
  const pod = Rtnl.openInNetns(paths[POD_B]!);
  try {
    node.createVeth('mv0', 'mv1');
    const mv1 = node.linkByName('mv1')!;
    node.addAddress(mv1.index, '10.66.0.2/24');
    const fd = open(paths[POD_B]!, O_RDONLY);
    try {
      node.setNetns(mv1.index, fd);
    } finally {
      close(fd);
    }
    assert.equal(node.linkByName('mv1'), undefined);
    const moved = pod.linkByName('mv1')!;
    assert.equal(moved.kind, 'veth');
    assert.deepEqual(pod.listAddresses(moved.index), []);
    assert.notEqual(node.linkByName('mv0')!.linkNetnsId, undefined);
    node.deleteLink(node.linkByName('mv0')!.index);
    assert.equal(pod.linkByName('mv1'), undefined);
  } finally {
    node.close();
    pod.close();
  }
});

test('sysctl writes inside withNetns land in that netns only', { skip }, () => {
  const key = 'net.ipv4.ip_default_ttl';
  const hostBefore = readSysctl(key);
  const want = hostBefore === '37' ? '38' : '37';
  withNetns(paths[POD_A]!, () => {
    writeSysctl(key, want);
    assert.equal(readSysctl(key), want);
  });
  // The oracle reads the file from a process that entered the pod netns by itself.
  assert.equal(nsRun(POD_A, ['cat', '/proc/sys/net/ipv4/ip_default_ttl']).out.trim(), want);
  assert.equal(nsRun(POD_B, ['cat', '/proc/sys/net/ipv4/ip_default_ttl']).out.trim(), '64');
  assert.equal(readSysctl(key), hostBefore);
  assert.throws(() => readSysctl('net.ipv4.no_such_knob'), /sysctl net.ipv4.no_such_knob.*ENOENT/);
});

test('openInNetns: the socket keeps talking to the pod netns after switching back', { skip }, () => {
  const home = currentNetnsInode();
  const pod = Rtnl.openInNetns(paths[POD_B]!);
  try {
    assert.equal(currentNetnsInode(), home);
    assert.deepEqual(pod.listLinks().map((l) => l.name), ['lo']);
    pod.createBridge('onlyhere');
    assert.ok(pod.linkByName('onlyhere'));
    assert.ok(nsRun(POD_B, ['ip', 'link', 'show', 'onlyhere']).status === 0, 'the bridge exists in the pod netns');
    assert.equal(spawnSync('ip', ['link', 'show', 'onlyhere'], { stdio: 'ignore' }).status !== 0, true, 'and not in ours');
    pod.deleteLink(pod.linkByName('onlyhere')!.index);
    assert.equal(pod.linkByName('onlyhere'), undefined);
  } finally {
    pod.close();
  }
});

test('bridge + veths into two pods: addresses, default routes, hairpin, MTU, ping, teardown', { skip }, () => {
  const node = Rtnl.openInNetns(paths[NODE]!);
  const podA = Rtnl.openInNetns(paths[POD_A]!);
  const podB = Rtnl.openInNetns(paths[POD_B]!);
  try {
    node.createBridge('br0', { mtu: 1400 });
    const br = node.linkByName('br0')!;
    assert.equal(br.kind, 'bridge');
    assert.equal(br.mtu, 1400);
    assert.equal(br.up, false);
    node.addAddress(br.index, '10.77.0.1/24');
    node.addAddress(br.index, 'fd77::1/64');
    node.setUp(br.index);
    assert.equal(node.linkByIndex(br.index)!.up, true);

    // Pod A's peer by path, pod B's by fd: both ways of naming the target netns.
    node.createVeth('va', 'eth0', { mtu: 1400, peerNetnsPath: paths[POD_A]! });
    const fdB = open(paths[POD_B]!, O_RDONLY);
    let echoed;
    try {
      // B's host end is enslaved and up in the creating request itself, its peer's MAC set.
      echoed = node.createVeth('vb', 'eth0', { mtu: 1400, peerNetnsFd: fdB, masterIndex: br.index, up: true, peerMac: '02:77:00:00:00:0b' });
    } finally {
      close(fdB);
    }
    // The kernel's echo of the creation names the host end and its peer's index in the pod.
    const vbNow = node.linkByName('vb')!;
    assert.deepEqual([echoed?.name, echoed?.index, echoed?.mac, echoed?.linkIndex], [vbNow.name, vbNow.index, vbNow.mac, podB.linkByName('eth0')!.index]);
    assert.equal(podB.linkByName('eth0')!.mac, '02:77:00:00:00:0b');
    assert.deepEqual([node.linkByName('vb')!.masterIndex, node.linkByName('vb')!.up], [br.index, true]);
    assert.deepEqual([node.linkByName('va')!.masterIndex, node.linkByName('va')!.up], [undefined, false]);
    const pods: [Rtnl, string, string][] = [[podA, '10.77.0.2', 'fd77::2'], [podB, '10.77.0.3', 'fd77::3']];
    for (const [host, [pod, v4, v6]] of [['va', pods[0]!], ['vb', pods[1]!]] as const) {
      const h = node.linkByName(host)!;
      assert.equal(h.kind, 'veth');
      assert.equal(h.mtu, 1400);
      assert.notEqual(h.linkNetnsId, undefined, 'the peer lives in another netns');
      node.setMaster(h.index, br.index);
      node.setUp(h.index);
      const eth0 = pod.linkByName('eth0')!;
      assert.equal(eth0.kind, 'veth');
      assert.equal(eth0.mtu, 1400);
      assert.equal(eth0.linkIndex, h.index, 'IFLA_LINK of the pod end is the host end');
      assert.equal(h.linkIndex, eth0.index);
      pod.addAddress(eth0.index, `${v4}/24`);
      pod.addAddress(eth0.index, `${v6}/64`);
      pod.setUp(eth0.index);
      pod.setUp(pod.linkByName('lo')!.index);
      pod.addRoute({ dst: 'default', gateway: '10.77.0.1', oif: eth0.index });
      pod.addRoute({ dst: 'default', gateway: 'fd77::1', oif: eth0.index });
      const addrs = pod.listAddresses(eth0.index).map((a) => `${a.address}/${a.prefixLen}`);
      assert.ok(addrs.includes(`${v4}/24`) && addrs.includes(`${v6}/64`), addrs.join(' '));
      assert.ok(pod.listAddresses().some((a) => a.address === '127.0.0.1' && a.index !== eth0.index), 'unfiltered list has lo too');
      const routes = pod.listRoutes({});
      const def4 = routes.find((r) => r.dst === 'default' && r.family === 4);
      const def6 = routes.find((r) => r.dst === 'default' && r.family === 6);
      assert.deepEqual([def4?.gateway, def4?.oif, def4?.table], ['10.77.0.1', eth0.index, 254]);
      assert.deepEqual([def6?.gateway, def6?.oif], ['fd77::1', eth0.index]);
      assert.ok(routes.some((r) => r.dst === '10.77.0.0/24' && r.oif === eth0.index), 'connected route');
      assert.deepEqual(pod.listRoutes({ family: 4 }).filter((r) => r.family === 6), []);
      // The same default again is refused, a replace is accepted.
      expectErr(() => pod.addRoute({ dst: 'default', gateway: '10.77.0.1', oif: eth0.index }), 'EEXIST', /route default via 10\.77\.0\.1.*'eth0'/);
      pod.replaceRoute({ dst: 'default', gateway: '10.77.0.1', oif: eth0.index, metric: 0 });
    }

    // Hairpin: set, read back through IFLA_INFO_SLAVE_DATA, and off again.
    const va = node.linkByName('va')!;
    const vb = node.linkByName('vb')!;
    assert.deepEqual([va.masterIndex, va.slaveKind, va.hairpin], [br.index, 'bridge', false]);
    node.setHairpin(va.index, true);
    assert.equal(node.linkByName('va')!.hairpin, true);
    assert.equal(node.linkByName('vb')!.hairpin, false);
    assert.match(nsRun(NODE, ['ip', '-d', 'link', 'show', 'va']).out, /hairpin on/);
    node.setHairpin(va.index, false);
    assert.equal(node.linkByName('va')!.hairpin, false);
    expectErr(() => node.setHairpin(br.index, true), 'EOPNOTSUPP', /hairpin.*'br0'/);

    // The wiring carries traffic: pod to gateway, pod to pod over both families.
    for (const [ns, ip] of [[POD_A, '10.77.0.1'], [POD_A, '10.77.0.3'], [POD_B, '10.77.0.2'], [POD_A, 'fd77::3'], [POD_B, 'fd77::1']] as const) {
      const r = ping(ns, ip);
      assert.equal(r.status, 0, `ping ${ip} from ${ns}: ${r.out}`);
    }
    // ... and stops when the path is cut, so the ping above is a real oracle.
    node.setDown(vb.index);
    assert.notEqual(ping(POD_A, '10.77.0.3').status, 0, 'ping must fail with the host end of B down');
    node.setUp(vb.index);

    // MTU and rename on the host end.
    node.setMtu(vb.index, 1300);
    assert.equal(node.linkByIndex(vb.index)!.mtu, 1300);
    node.setDown(vb.index);
    node.rename(vb.index, 'vb-renamed');
    assert.equal(node.linkByIndex(vb.index)!.name, 'vb-renamed');
    assert.equal(node.linkByName('vb'), undefined);
    node.rename(vb.index, 'vb');

    // Neighbours: a permanent entry is listed with its MAC.
    const eth0A = podA.linkByName('eth0')!;
    podA.addNeighbour({ index: eth0A.index, ip: '10.77.0.99', mac: '02:77:00:00:00:99', permanent: true });
    const n = podA.listNeighbours(eth0A.index).find((x) => x.ip === '10.77.0.99');
    assert.deepEqual([n?.mac, n?.permanent], ['02:77:00:00:00:99', true]);
    expectErr(() => podA.addNeighbour({ index: eth0A.index, ip: '10.77.0.99', mac: '02:77:00:00:00:98' }), 'EEXIST', /neighbour 10\.77\.0\.99.*'eth0'/);

    // Addresses and routes come off again.
    podA.deleteRoute({ dst: 'default', gateway: 'fd77::1', oif: eth0A.index });
    assert.equal(podA.listRoutes({ family: 6 }).some((r) => r.dst === 'default'), false);
    podA.deleteAddress(eth0A.index, 'fd77::2/64');
    assert.equal(podA.listAddresses(eth0A.index).some((a) => a.address === 'fd77::2'), false);

    // Teardown: deleting the host end takes the pod end with it.
    node.deleteLink(va.index);
    assert.equal(podA.linkByName('eth0'), undefined);
    node.deleteLink(node.linkByName('vb')!.index);
    assert.equal(podB.linkByName('eth0'), undefined);
    node.deleteLink(br.index);
    assert.deepEqual(node.listLinks().map((l) => l.name), ['lo']);
    assert.deepEqual(podA.listLinks().map((l) => l.name), ['lo']);
    assert.deepEqual(podB.listLinks().map((l) => l.name), ['lo']);
  } finally {
    node.close();
    podA.close();
    podB.close();
  }
});

test('errors name the link: EEXIST on duplicates, ENODEV on unknown indexes; lookups are exact', { skip }, () => {
  const node = Rtnl.openInNetns(paths[NODE]!);
  try {
    node.createBridge('dup0', { mac: '02:77:00:00:00:01' });
    assert.equal(node.linkByName('dup0')!.mac, '02:77:00:00:00:01', 'a pinned bridge MAC is kept');
    assert.throws(() => node.createBridge('dup1', { mac: '02:77:00:00:01' }), /invalid MAC address/);
    const dup = expectErr(() => node.createBridge('dup0'), 'EEXIST', /^RTM_NEWLINK bridge 'dup0': EEXIST \(errno 17\)/);
    assert.equal(dup.errno, 17);
    node.createVeth('pair0', 'pair1');
    expectErr(() => node.createVeth('pair0', 'other1'), 'EEXIST', /RTM_NEWLINK veth 'pair0' \(peer 'other1'\)/);
    expectErr(() => node.createVeth('other0', 'dup0'), 'EEXIST', /veth 'other0' \(peer 'dup0'\)/);
    assert.equal(node.linkByName('other0'), undefined, 'a failed create leaves nothing behind');
    expectErr(() => node.createVeth('atom0', 'atom1', { masterIndex: 999_999, up: true }), 'EINVAL', /veth 'atom0'/);
    assert.equal(node.linkByName('atom0') ?? node.linkByName('atom1'), undefined, 'a bad master fails the whole create');

    const missing = 999_999;
    for (const fn of [() => node.setUp(missing), () => node.deleteLink(missing), () => node.setMtu(missing, 1400), () => node.addAddress(missing, '10.1.1.1/24')]) {
      expectErr(fn, 'ENODEV', /link #999999 \(no such link\)/);
    }
    assert.equal(node.linkByIndex(missing), undefined);
    assert.equal(node.linkByName('dup'), undefined, 'no prefix match');
    assert.equal(node.linkByName('dup00'), undefined);
    assert.equal(node.linkByName('a-name-longer-than-15'), undefined);
    assert.equal(node.linkByName('dup0')!.name, 'dup0');
    const idx = node.linkByName('dup0')!.index;
    assert.equal(node.linkByIndex(idx)!.name, 'dup0');
    expectErr(() => node.setMaster(node.linkByName('pair0')!.index, node.linkByName('pair1')!.index), 'EOPNOTSUPP', /'pair0'/);
    node.addAddress(idx, '10.5.0.1/24');
    expectErr(() => node.addAddress(idx, '10.5.0.1/24'), 'EEXIST', /address 10\.5\.0\.1\/24 on link 'dup0'/);
    expectErr(() => node.deleteRoute({ dst: '10.250.0.0/16', oif: idx }), 'ESRCH', /route 10\.250\.0\.0\/16/);
    assert.throws(() => node.createBridge('bad name'), /invalid bridge name 'bad name'/);
    assert.throws(() => node.addAddress(idx, '10.5.0.300/24'), /'10.5.0.300' has an IPv4 octet above 255/);
    node.deleteLink(node.linkByName('pair0')!.index);
    node.deleteLink(idx);
    assert.deepEqual(node.listLinks().map((l) => l.name), ['lo']);
  } finally {
    node.close();
  }
});

test('policy rules: from/to, tables above 255 (FRA_TABLE), priority; list, EEXIST, delete', { skip }, () => {
  const node = Rtnl.openInNetns(paths[NODE]!);
  try {
    const before = node.listRules({ family: 4 }).length;
    node.addRule({ from: '10.210.0.0/24', table: 100, priority: 1000 });
    node.addRule({ from: '10.210.0.5/24', to: '10.211.0.0/16', table: 70000, priority: 1001 }); // host bits masked off
    node.addRule({ from: 'fd00:210::/64', table: 100, priority: 1000 });
    const v4 = node.listRules({ family: 4 });
    assert.equal(v4.length, before + 2);
    assert.deepEqual(v4.find((r) => r.priority === 1000), { table: 100, family: 4, action: 1, from: '10.210.0.0/24', priority: 1000, protocol: 0 });
    assert.deepEqual(v4.find((r) => r.priority === 1001), { table: 70000, family: 4, action: 1, from: '10.210.0.0/24', to: '10.211.0.0/16', priority: 1001, protocol: 0 });
    assert.ok(node.listRules({ family: 6 }).some((r) => r.from === 'fd00:210::/64' && r.table === 100));
    const shown = nsRun(NODE, ['ip', 'rule', 'show']).out;
    assert.match(shown, /1000:\s+from 10\.210\.0\.0\/24 lookup 100/);
    assert.match(shown, /1001:\s+from 10\.210\.0\.0\/24 to 10\.211\.0\.0\/16 lookup 70000/);
    expectErr(() => node.addRule({ from: '10.210.0.0/24', table: 100, priority: 1000 }), 'EEXIST', /rule pref 1000 from 10\.210\.0\.0\/24 table 100/);
    assert.throws(() => node.addRule({ from: '10.0.0.0/8', to: 'fd00::/8', table: 100 }), /mixed address families/);
    assert.throws(() => node.addRule({ table: 0 }), /rule table 0/);
    node.deleteRule({ from: '10.210.0.0/24', to: '10.211.0.0/16', table: 70000, priority: 1001 });
    node.deleteRule({ from: '10.210.0.0/24', table: 100, priority: 1000 });
    node.deleteRule({ from: 'fd00:210::/64', table: 100, priority: 1000 });
    expectErr(() => node.deleteRule({ from: '10.210.0.0/24', table: 100, priority: 1000 }), 'ENOENT', /deleting rule/);
    assert.equal(node.listRules({ family: 4 }).length, before, 'main, local and default rules untouched');
  } finally {
    node.close();
  }
});

test('ifalias: set, read back into LinkInfo.alias, cleared with an empty string', { skip }, () => {
  const node = Rtnl.openInNetns(paths[NODE]!);
  try {
    node.createBridge('alias0');
    const idx = node.linkByName('alias0')!.index;
    assert.equal(node.linkByName('alias0')!.alias, undefined);
    node.setAlias(idx, 'patu-podnet-bridge field');
    assert.equal(node.linkByName('alias0')!.alias, 'patu-podnet-bridge field');
    assert.equal(node.listLinks().find((l) => l.index === idx)!.alias, 'patu-podnet-bridge field');
    assert.match(nsRun(NODE, ['ip', 'link', 'show', 'alias0']).out, /alias patu-podnet-bridge field/);
    assert.throws(() => node.setAlias(idx, 'x'.repeat(256)), /at most 255/);
    node.setAlias(idx, '');
    assert.equal(node.linkByName('alias0')!.alias, undefined);
    node.deleteLink(idx);
  } finally {
    node.close();
  }
});
