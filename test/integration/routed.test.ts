// Routed mode (issue 14, docs/routed.md), needs root. The plugin runs as a runtime
// runs it, but inside a "node" netns this test makes (nsenter --net: only the netns
// changes, so bpffs and the pins stay the test's), so nothing touches the machine's
// own interfaces, routes or nftables. An "outside" netns linked to the node stands for
// the world (masquerade). Checks:
//   - the gateway's ARP answer comes from the program: `ip neigh` in the pod shows
//     169.254.1.1 at the host veth's MAC; the host veth has no IPv4 address and
//     proxy_arp is 0; the program's ARP counter moved
//   - ICMP, TCP and UDP between pods, delivered by bpf_redirect_peer (its counter
//     grows, and the destination's host veth transmits nothing: the frames never
//     crossed it)
//   - pod -> node, node -> pod; pod -> outside masqueraded (the outside sees the node)
//   - CHECK, DEL (leaves nothing), GC, and kill -9 of ADDs in progress then GC
//   - NetworkPolicy on a veth (patu_routed_nopeer): the stack path instead
//   - bad input: 169.254.1.1 in a range or asked for, a subnet a bridge network
//     serves: code 7 naming the field, nothing left behind
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  PATU_BIN,
  addNetns,
  delNetns,
  describe as show,
  diffSnapshots,
  execPlugin,
  isRoot,
  nsRun,
  patuFlavour,
  ping,
  snapshotHost,
  startPlugin,
  tcpExchange,
  type CniCommandName,
  type ExecOptions,
} from '../helpers/cni.js';
import { readRoutedStats, RoutedTc } from '../../src/dataplane/routed-tc.js';
import { ROUTED_GATEWAY_MAC } from '../../src/dataplane/routed-gateway.js';
import { withNetns } from '../../src/kernel/netns.js';
import { tcxQuery } from '../../src/kernel/bpf/tcx.js';
import { PolicyDataplane } from '../../src/dataplane/policy-tc.js';

const ROOT = isRoot();
const tag = `rt${process.pid.toString(36)}`;

describe('routed mode', { skip: ROOT ? false : 'needs root: creates network namespaces and veths' }, () => {
  const f = patuFlavour();
  const node = `${tag}node`;
  const outside = `${tag}out`;
  const made = new Set<string>([node, outside]);
  const live = new Map<string, string>();
  const dir = mkdtempSync(join(tmpdir(), 'patu-routed-'));
  const bin = join(dir, 'patu-in-node');
  const conf = (over: Record<string, unknown> = {}) => f.netconf({ mode: 'routed', masquerade: true, clusterCIDR: `${f.prefix}.0/24`, ...over });
  const pinRoot = conf().pinRoot as string;
  const nodeIp = '10.97.0.1';
  let counter = 0;

  const ip = (...a: string[]): string => execFileSync('ip', a, { encoding: 'utf8' });
  const inNode = <T>(fn: () => T): T => withNetns(`/run/netns/${node}`, fn);
  const run = (cmd: CniCommandName, c: object, o: ExecOptions = {}) => execPlugin(bin, cmd, c, o);
  const newPod = () => {
    const name = `${tag}p${counter++}`;
    made.add(name);
    return { name, path: addNetns(name), id: `${name}-ctr` };
  };
  type Pod = ReturnType<typeof newPod>;
  const add = async (p: Pod, c = conf()) => {
    const r = await run('ADD', c, { containerId: p.id, netns: p.path, ifname: 'eth0' });
    if (r.code === 0) live.set(p.id, p.path);
    return r;
  };
  const del = async (p: Pod, c = conf()) => {
    const r = await run('DEL', c, { containerId: p.id, netns: p.path, ifname: 'eth0' });
    if (r.code === 0) live.delete(p.id);
    return r;
  };
  const ipOf = (r: any): string => String(r.ips[0].address).split('/')[0]!;
  const hostVethOf = (r: any): string => r.interfaces[0].name;
  const linkJson = (ns: string, dev: string): any => JSON.parse(ip('-n', ns, '-s', '-j', 'link', 'show', dev))[0];
  const stats = () => readRoutedStats(pinRoot)!;
  const scope = () => ({ bridge: '-none-', prefix: f.prefix, dataDir: f.dataDir, netns: [...made] });
  const snapshot = () => inNode(() => snapshotHost(scope()));
  const udpEcho = (serverNs: string, addr: string, port: number): { ok: boolean; out: string } => {
    const srv = spawn('ip', ['netns', 'exec', serverNs, process.execPath, '-e',
      `const s=require('dgram').createSocket('udp4');s.on('message',(m,r)=>{s.send(m,r.port,r.address,()=>s.close())});s.bind(${port},'${addr}');setTimeout(()=>process.exit(0),5000)`], { stdio: 'ignore' });
    spawnSync('sleep', ['0.3']);
    return { ok: true, out: String(srv.pid) };
  };
  const udpAsk = (clientNs: string, addr: string, port: number): string =>
    nsRun(clientNs, [process.execPath, '-e',
      `const s=require('dgram').createSocket('udp4');s.on('message',(m)=>{console.log(String(m));process.exit(0)});s.send('patu-udp',${port},'${addr}');setTimeout(()=>process.exit(3),2000)`]).stdout.trim();

  before(() => {
    addNetns(node);
    addNetns(outside);
    // The node's own IPv6 chatter on new veths (router solicitations, MLD reports) would
    // count as host-veth transmissions in the redirect check below; this test is IPv4.
    ip('netns', 'exec', node, 'sysctl', '-qw', 'net.ipv6.conf.all.disable_ipv6=1', 'net.ipv6.conf.default.disable_ipv6=1');
    // The node: an address of its own (on lo), and a link to the outside.
    ip('-n', node, 'addr', 'add', `${nodeIp}/32`, 'dev', 'lo');
    ip('-n', node, 'link', 'add', 'up0', 'type', 'veth', 'peer', 'name', 'out0', 'netns', outside);
    ip('-n', node, 'addr', 'add', '10.96.0.1/24', 'dev', 'up0');
    ip('-n', node, 'link', 'set', 'up0', 'up');
    ip('-n', outside, 'addr', 'add', '10.96.0.2/24', 'dev', 'out0');
    ip('-n', outside, 'link', 'set', 'out0', 'up');
    writeFileSync(bin, `#!/bin/sh\nexec nsenter --net=/run/netns/${node} ${PATU_BIN} "$@"\n`);
    chmodSync(bin, 0o755);
  });

  after(async () => {
    for (const [id, path] of live) await run('DEL', conf(), { containerId: id, netns: path, ifname: 'eth0' }).catch(() => undefined);
    for (const n of made) delNetns(n);
    rmSync(pinRoot, { recursive: true, force: true });
    rmSync(dir, { recursive: true, force: true });
    f.destroy();
  });

  test('two pods: ARP answered by the program, ICMP/TCP/UDP redirected into the peer, node and outside reachable, CHECK, DEL leaves nothing', async (t) => {
    const a = newPod();
    const b = newPod();
    const before = snapshot();
    const ra = await add(a);
    assert.equal(ra.code, 0, show(ra));
    const rb = await add(b);
    assert.equal(rb.code, 0, show(rb));
    const [ipA, ipB] = [ipOf(ra.json), ipOf(rb.json)];
    assert.equal(ra.json.ips[0].address, `${ipA}/32`);
    assert.equal(ra.json.ips[0].gateway, '169.254.1.1');
    const [vethA, vethB] = [hostVethOf(ra.json), hostVethOf(rb.json)];

    // Host side: no IPv4 address, proxy_arp off, the gateway MAC, a /32 route, the program attached.
    for (const v of [vethA, vethB]) {
      assert.equal(ip('-n', node, '-4', 'addr', 'show', 'dev', v).trim(), '', `${v} has an IPv4 address`);
      assert.equal(nsRun(node, ['cat', `/proc/sys/net/ipv4/conf/${v}/proxy_arp`]).stdout.trim(), '0', `${v} proxy_arp`);
      assert.equal(linkJson(node, v).address, ROUTED_GATEWAY_MAC);
    }
    assert.match(ip('-n', node, 'route', 'show', `${ipA}/32`), new RegExp(`dev ${vethA}`));
    const progs = inNode(() => tcxQuery(linkJson(node, vethA).ifindex, 'ingress').map((x) => x.name));
    assert.deepEqual(progs, ['patu_routed'], `programs on ${vethA}'s ingress`);
    assert.equal(nsRun(node, ['cat', '/proc/sys/net/ipv4/conf/all/proxy_arp']).stdout.trim(), '0');

    // ARP: the pod resolves its gateway; the answer is the program's (counter) with the host veth's MAC.
    const arpBefore = stats().arp;
    const p0 = ping(a.name, ipB);
    assert.ok(p0.ok, `ping a -> b: ${p0.out}`);
    const neigh = ip('-n', a.name, 'neigh', 'show', '169.254.1.1', 'dev', 'eth0');
    assert.match(neigh, new RegExp(`lladdr ${ROUTED_GATEWAY_MAC}`), `pod a's neighbour table: ${neigh}`);
    assert.equal(linkJson(node, vethA).address, ROUTED_GATEWAY_MAC, 'the MAC answered is the host veth\'s');
    assert.ok(stats().arp > arpBefore, 'the ARP counter did not move: someone else answered');

    // Pod to pod: redirected (counter), and b's host veth transmitted none of it (both
    // pods' gateway entries resolved first: the program's ARP answers do leave by the veth).
    assert.ok(ping(b.name, ipA).ok, 'ping b -> a');
    const sBefore = stats();
    const redirectedBefore = sBefore.redirected;
    const txB = linkJson(node, vethB).stats64.tx.packets;
    const p1 = ping(a.name, ipB, 5);
    assert.ok(p1.ok, `ping a -> b: ${p1.out}`);
    const p2 = ping(b.name, ipA, 5);
    assert.ok(p2.ok, `ping b -> a: ${p2.out}`);
    const tcp = await tcpExchange(b.name, a.name, ipB, 7301);
    assert.ok(tcp.ok, `TCP a -> b: ${tcp.received} ${tcp.detail}`);
    udpEcho(b.name, ipB, 7302);
    assert.equal(udpAsk(a.name, ipB, 7302), 'patu-udp', 'UDP a -> b');
    const moved = stats().redirected - redirectedBefore;
    const sAfter = stats();
    const txDelta = BigInt(linkJson(node, vethB).stats64.tx.packets - txB);
    // What b's host veth may send meanwhile: the program's own answers (ARP re-probes of the gateway entry, ND).
    const answers = sAfter.arp - sBefore.arp + sAfter.nd - sBefore.nd;
    t.diagnostic(`redirected ${moved} packets; ${vethB} tx ${txDelta}, gateway answers ${answers}`);
    assert.ok(moved >= 20n, `only ${moved} packets redirected`);
    assert.ok(txDelta <= answers, `${vethB} transmitted ${txDelta} packets, more than the ${answers} gateway answers: pod traffic crossed the host stack`);

    // Pod <-> node (the stack path both ways), pod -> outside masqueraded.
    assert.ok(ping(a.name, nodeIp).ok, 'pod -> node');
    const back = nsRun(node, ['busybox', 'ping', '-c', '1', '-W', '2', ipA]);
    assert.equal(back.status, 0, `node -> pod: ${back.stdout}${back.stderr}`);
    const tcpNode = await tcpExchange(node, a.name, nodeIp, 7303);
    assert.ok(tcpNode.ok, `TCP pod -> node: ${tcpNode.detail}`);
    assert.ok(ping(a.name, '10.96.0.2').ok, 'pod -> outside');
    udpEcho(outside, '10.96.0.2', 7304);
    // The outside answers whoever it saw: the echo comes back only through the node's masquerade.
    const seen = spawn('ip', ['netns', 'exec', outside, process.execPath, '-e',
      `require('net').createServer((c)=>{c.end(c.remoteAddress);}).listen(7305,'10.96.0.2');setTimeout(()=>process.exit(0),5000)`], { stdio: 'ignore' });
    spawnSync('sleep', ['0.3']);
    const who = nsRun(a.name, ['busybox', 'nc', '10.96.0.2', '7305']).stdout.trim();
    seen.kill();
    assert.equal(who, '10.96.0.1', `the outside saw ${who}, not the node's address`);
    assert.equal(udpAsk(a.name, '10.96.0.2', 7304), 'patu-udp', 'UDP pod -> outside');

    const chk = await run('CHECK', { ...conf(), prevResult: ra.json }, { containerId: a.id, netns: a.path });
    assert.equal(chk.code, 0, `CHECK on a good pod: ${show(chk)}`);
    // Broken: the host route gone -> CHECK names it.
    ip('-n', node, 'route', 'del', `${ipA}/32`);
    const bad = await run('CHECK', { ...conf(), prevResult: ra.json }, { containerId: a.id, netns: a.path });
    assert.notEqual(bad.code, 0);
    assert.match(String(bad.json?.msg), /host route/, show(bad));

    assert.equal((await del(a)).code, 0);
    assert.equal((await del(b)).code, 0);
    const tc = RoutedTc.openExisting(pinRoot)!;
    try {
      assert.equal(tc.pod(ipA), undefined, 'DEL left the redirect entry');
    } finally {
      tc.close();
    }
    const diff = diffSnapshots(before, snapshot(), scope(), { containerIds: [a.id, b.id] });
    assert.deepEqual(diff.filter((d) => !d.includes('nft')), [], 'DEL left something behind');
    assert.equal((await del(a)).code, 0, 'second DEL');
  });

  test('dual stack: a /128 too, fe80::1 answered by the program (ND), IPv6 between pods redirected', async (t) => {
    const v6 = `fd00:${(process.pid % 0xffff).toString(16)}::/64`;
    const c = conf({ ipam: { ranges: [[{ subnet: f.subnet }], [{ subnet: v6 }]], dataDir: f.dataDir } });
    const a = newPod();
    const b = newPod();
    // The node has IPv6 off (above) for the IPv4 checks; this case needs it on its new veths.
    ip('netns', 'exec', node, 'sysctl', '-qw', 'net.ipv6.conf.all.disable_ipv6=0', 'net.ipv6.conf.default.disable_ipv6=0');
    try {
      const ra = await add(a, c);
      assert.equal(ra.code, 0, show(ra));
      const rb = await add(b, c);
      assert.equal(rb.code, 0, show(rb));
      const six = (r: any): string => String(r.ips.find((x: any) => String(x.address).includes(':')).address);
      assert.match(six(ra.json), /\/128$/);
      assert.ok(ra.json.ips.some((x: any) => x.gateway === 'fe80::1'), JSON.stringify(ra.json.ips));
      const ipB6 = six(rb.json).split('/')[0]!;
      const s0 = stats();
      // DAD of the pods' /128s may hold the first packets: a few tries.
      let ok = false;
      let out = '';
      for (let i = 0; i < 10 && !ok; i++) {
        const r = nsRun(a.name, ['ping', '-6', '-c', '1', '-W', '1', ipB6]);
        ok = r.status === 0;
        out = r.stdout + r.stderr;
      }
      assert.ok(ok, `ping -6 a -> b: ${out}`);
      const s1 = stats();
      const neigh = ip('-n', a.name, '-6', 'neigh', 'show', 'fe80::1', 'dev', 'eth0');
      t.diagnostic(`nd answered ${s1.nd - s0.nd}, redirected ${s1.redirected - s0.redirected}; ${neigh.trim()}`);
      assert.match(neigh, new RegExp(`lladdr ${ROUTED_GATEWAY_MAC}`), `pod a's IPv6 neighbours: ${neigh}`);
      assert.ok(s1.nd > s0.nd, 'the ND counter did not move: someone else answered');
      assert.ok(s1.redirected - s0.redirected >= 2n, 'IPv6 was not redirected');
      const chk = await run('CHECK', { ...c, prevResult: ra.json }, { containerId: a.id, netns: a.path });
      assert.equal(chk.code, 0, show(chk));
      assert.equal((await del(a, c)).code, 0);
      assert.equal((await del(b, c)).code, 0);
    } finally {
      ip('netns', 'exec', node, 'sysctl', '-qw', 'net.ipv6.conf.all.disable_ipv6=1', 'net.ipv6.conf.default.disable_ipv6=1');
    }
  });

  test('NetworkPolicy programs on a routed veth (the real attach): no redirect from or into it, the stack path (and its hooks) carries the traffic', async () => {
    const a = newPod();
    const b = newPod();
    const ra = await add(a);
    const rb = await add(b);
    assert.ok(ra.code === 0 && rb.code === 0, show(ra) + show(rb));
    const idx = linkJson(node, hostVethOf(rb.json)).ifindex;
    // What the agent does when policy is turned on with pods running (attachAll picks routed veths too).
    const dp = PolicyDataplane.open({ pinRoot });
    try {
      const n = inNode(() => dp.attachAll(['-no-bridge-']));
      assert.ok(n >= 2, `attachAll attached ${n} routed veths`);
      const names = inNode(() => tcxQuery(idx, 'ingress').map((x) => x.name));
      assert.deepEqual(names, ['patu_routed', 'patu_pol_from_p'], 'the ingress chain of a routed veth with policy');
    } finally {
      dp.close();
    }
    const tc = RoutedTc.openExisting(pinRoot)!;
    try {
      assert.ok(tc.hasPolicy(idx), 'the policy attach did not mark the veth');
    } finally {
      tc.close();
    }
    const s0 = stats();
    assert.ok(ping(a.name, ipOf(rb.json), 3).ok, 'ping a -> b through the stack');
    const tcp = await tcpExchange(b.name, a.name, ipOf(rb.json), 7311);
    assert.ok(tcp.ok, `TCP a -> b with policy programs: ${tcp.detail}`);
    const s1 = stats();
    assert.equal(s1.redirected - s0.redirected, 0n, 'redirected while policy programs are on the veths');
    assert.ok(s1.policy - s0.policy >= 3n, 'the policy fallback counter did not move');
    assert.equal((await del(a)).code, 0);
    assert.equal((await del(b)).code, 0);
  });

  test('GC removes attachments not listed; kill -9 of ADDs in progress, then GC: nothing left', async (t) => {
    const keep = newPod();
    const gone = newPod();
    assert.equal((await add(keep)).code, 0);
    const rg = await add(gone);
    assert.equal(rg.code, 0);
    const gc1 = await run('GC', { ...conf(), 'cni.dev/valid-attachments': [{ containerID: keep.id, ifname: 'eth0' }] });
    assert.equal(gc1.code, 0, show(gc1));
    assert.equal(spawnSync('ip', ['-n', node, 'link', 'show', hostVethOf(rg.json)]).status, 1, 'GC left the stale veth');
    live.delete(gone.id);
    assert.equal((await del(keep)).code, 0);

    const probe = newPod();
    const pr = await add(probe);
    assert.equal(pr.code, 0, show(pr));
    assert.equal((await del(probe)).code, 0);
    const pods = Array.from({ length: 16 }, () => newPod());
    const start = snapshot();
    let killed = 0;
    for (const [i, p] of pods.entries()) {
      const proc = startPlugin(bin, 'ADD', conf(), { containerId: p.id, netns: p.path, ifname: 'eth0' });
      await new Promise((r) => setTimeout(r, (((i * 37 + process.pid) % 24) / 16) * pr.ms));
      if (proc.child.exitCode === null) {
        proc.child.kill('SIGKILL');
        killed++;
      }
      await proc.done;
    }
    assert.ok(killed > 0, 'no ADD was killed mid-flight');
    const gc = await run('GC', { ...conf(), 'cni.dev/valid-attachments': [] });
    assert.equal(gc.code, 0, show(gc));
    const diff = diffSnapshots(start, snapshot(), scope(), { containerIds: pods.map((p) => p.id) });
    t.diagnostic(`${killed} of ${pods.length} ADDs killed (ADD ~${pr.ms.toFixed(0)} ms)`);
    assert.deepEqual(diff.filter((d) => !d.includes('nft')), [], 'left behind after GC');
    const tc = RoutedTc.openExisting(pinRoot)!;
    try {
      assert.deepEqual(tc.podIps().filter((x) => x.startsWith(`${f.prefix}.`)), [], 'redirect entries left after GC');
    } finally {
      tc.close();
    }
  });

  test('bad input: 169.254.1.1 as a pod address, a subnet served in bridge mode: code 7 naming the field, nothing left', async () => {
    const p = newPod();
    const start = snapshot();
    const cases: [string, Record<string, unknown>, ExecOptions, RegExp][] = [
      ['a range holding 169.254.1.1', conf({ ipam: { ranges: [[{ subnet: '169.254.1.0/24' }]], dataDir: f.dataDir } }), {}, /ipam\.ranges\[0\]\[0\]/],
      ['169.254.1.1 asked for', conf({ runtimeConfig: { ips: ['169.254.1.1/32'] } }), {}, /runtimeConfig\.ips\[0\]/],
      ['mode misspelled', conf({ mode: 'route' }), {}, /mode/],
    ];
    for (const [what, c, o, field] of cases) {
      const r = await run('ADD', c, { containerId: p.id, netns: p.path, ifname: 'eth0', ...o });
      assert.equal(r.json?.code, 7, `${what}: ${show(r)}`);
      assert.match(String(r.json?.msg), field, `${what}: ${show(r)}`);
    }
    // A bridge-mode network serving the subnet (its gateway on a bridge in the node): routed refused.
    ip('-n', node, 'link', 'add', `${tag}br`, 'type', 'bridge');
    ip('-n', node, 'addr', 'add', `${f.prefix}.1/24`, 'dev', `${tag}br`);
    const mixed = await run('ADD', conf(), { containerId: p.id, netns: p.path, ifname: 'eth0' });
    ip('-n', node, 'link', 'del', `${tag}br`);
    assert.equal(mixed.json?.code, 7, show(mixed));
    assert.match(String(mixed.json?.msg), /mode.*bridge mode/s, show(mixed));
    // And a bridge-mode ADD on a subnet holding routed pods.
    const q = newPod();
    assert.equal((await add(q)).code, 0);
    const before2 = snapshot();
    const br = await run('ADD', f.netconf({ name: `${f.netName}b`, bridge: `${tag}b2` }), { containerId: p.id, netns: p.path, ifname: 'eth0' });
    assert.equal(br.json?.code, 7, show(br));
    assert.match(String(br.json?.msg), /mode.*routed pod/s, show(br));
    assert.deepEqual(diffSnapshots(before2, snapshot(), scope(), {}), [], 'a refused ADD left something');
    assert.equal((await del(q)).code, 0);
    assert.deepEqual(diffSnapshots(start, snapshot(), scope(), {}).filter((d) => !d.includes('nft')), []);
  });
});
