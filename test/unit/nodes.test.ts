// The node list (src/nodes): the nodes file's validation (every problem with its field),
// the peer plan's refusals (overlapping pod CIDRs), the vtep address and MAC, and the
// netlink encoding of the vxlan link and its FDB entries.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseNodesText, NodesFileError } from '../../src/nodes/file-source.js';
import { planPeers, vtepAddress, vtepMac } from '../../src/nodes/model.js';
import { vxlanLinkBody, fdbBody } from '../../src/kernel/netlink/rtnl.js';
import {
  AttrMap, decodeNdMsg, AF_BRIDGE, NUD_PERMANENT, NUD_NOARP, NTF_SELF, NDA_LLADDR, NDA_DST, IFLA_IFNAME, IFLA_MTU, IFLA_ADDRESS,
  IFLA_LINKINFO, IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_VXLAN_ID, IFLA_VXLAN_LOCAL, IFLA_VXLAN_PORT, IFLA_VXLAN_LEARNING, bytesToMac, bytesToIp,
} from '../../src/kernel/netlink/message.js';

const GOOD = `nodes:
  - { name: a, podCIDR: 10.200.0.0/24, address: 192.168.50.1 }
  - { name: b, podCIDR: 10.200.1.7/24, address: 192.168.50.2 }
`;

test('nodes file: a good file parses, host bits of a podCIDR are cleared', async () => {
  const nodes = await parseNodesText(GOOD, 'n.yaml');
  assert.deepEqual(nodes, [
    { name: 'a', podCIDR: '10.200.0.0/24', address: '192.168.50.1' },
    { name: 'b', podCIDR: '10.200.1.0/24', address: '192.168.50.2' },
  ]);
  assert.deepEqual(await parseNodesText('{"nodes": []}', 'n.json'), []);
});

test('nodes file: every problem is named with its field', async () => {
  const text = `nodes:
  - { name: A_b, podCIDR: 10.200.0.0/24, address: 192.168.50.1 }
  - { name: b, podCIDR: fd00::/64, address: 192.168.50.2, zone: x }
  - { name: c, podCIDR: 10.200.2.0, address: 300.1.1.1 }
  - { name: d, podCIDR: 10.200.3.0/24, address: 192.168.50.5 }
  - { name: d, podCIDR: 10.200.4.0/24, address: 192.168.50.5 }
  - 7
extra: 1
`;
  await assert.rejects(parseNodesText(text, 'n.yaml'), (e: unknown) => {
    assert.ok(e instanceof NodesFileError);
    const want = ['nodes[0].name', 'nodes[1].zone', 'nodes[1].podCIDR', 'nodes[2].podCIDR', 'nodes[2].address', 'nodes[4].name', 'nodes[4].address', 'nodes[5]', 'extra'];
    for (const w of want) assert.ok(e.problems.some((p) => p.startsWith(`${w}:`)), `${w} in ${e.problems.join(' | ')}`);
    assert.equal(e.problems.length, want.length, e.problems.join(' | '));
    return true;
  });
  for (const [t, w] of [['', /\(empty\)/], ['# nothing\n', /no document/], ['nodes: 3', /must be a list/], ['x: [', /\(syntax\)/], ['foo: []', /nodes: missing/]] as const) {
    await assert.rejects(parseNodesText(t, 'n.yaml'), w);
  }
});

test('peer plan: an overlap with our CIDR or another peer\'s is refused with a reason, the rest is routed', () => {
  const nodes = [
    { name: 'self', podCIDR: '10.200.0.0/24', address: '192.168.50.1' },
    { name: 'b', podCIDR: '10.200.1.0/24', address: '192.168.50.2' },
    { name: 'big', podCIDR: '10.200.0.0/16', address: '192.168.50.3' },
    { name: 'c1', podCIDR: '10.201.0.0/24', address: '192.168.50.4' },
    { name: 'c2', podCIDR: '10.201.0.0/25', address: '192.168.50.5' },
    { name: 'inpod', podCIDR: '10.202.0.0/24', address: '10.200.1.9' },
  ];
  const plan = planPeers('self', nodes);
  assert.equal(plan.self?.name, 'self');
  assert.deepEqual(plan.peers.map((p) => p.name), ['b']);
  const why = new Map(plan.refused.map((r) => [r.node.name, r.reason]));
  assert.match(why.get('big')!, /overlaps this node's/);
  assert.match(why.get('c1')!, /overlaps node c2's/);
  assert.match(why.get('c2')!, /overlaps node c1's/);
  assert.match(why.get('inpod')!, /inside node b's podCIDR/);
  assert.equal(planPeers('nobody', nodes).self, undefined);
});

test('vtep address and MAC: the pod CIDR\'s network address, a locally administered MAC from the node address', () => {
  assert.equal(vtepAddress('10.200.3.0/24'), '10.200.3.0');
  assert.equal(vtepMac('192.168.50.2'), '0e:70:c0:a8:32:02');
  const first = parseInt(vtepMac('10.0.0.1').slice(0, 2), 16);
  assert.equal(first & 0x01, 0, 'unicast');
  assert.equal(first & 0x02, 2, 'locally administered');
});

test('netlink: the vxlan link body carries kind, VNI, local, port (big endian) and learning off', () => {
  const body = vxlanLinkBody('patu.vxlan', { vni: 42, port: 4789, local: '192.168.50.1', mtu: 1450, mac: '0e:70:c0:a8:32:01' });
  const attrs = AttrMap.parse(Buffer.concat(body.slice(1)));
  assert.equal(attrs.str(IFLA_IFNAME), 'patu.vxlan');
  assert.equal(attrs.u32(IFLA_MTU), 1450);
  assert.equal(bytesToMac(attrs.get(IFLA_ADDRESS)!), '0e:70:c0:a8:32:01');
  const li = attrs.nested(IFLA_LINKINFO)!;
  assert.equal(li.str(IFLA_INFO_KIND), 'vxlan');
  const d = li.nested(IFLA_INFO_DATA)!;
  assert.equal(d.u32(IFLA_VXLAN_ID), 42);
  assert.equal(bytesToIp(d.get(IFLA_VXLAN_LOCAL)!), '192.168.50.1');
  assert.deepEqual([...d.get(IFLA_VXLAN_PORT)!], [0x12, 0xb5]);
  assert.equal(d.u8(IFLA_VXLAN_LEARNING), 0);
  assert.throws(() => vxlanLinkBody('x', { vni: 0, port: 4789, local: '10.0.0.1' }), /vni 0/);
  assert.throws(() => vxlanLinkBody('x', { vni: 1, port: 4789, local: 'fd00::1' }), /IPv4 only/);
});

test('netlink: a vxlan FDB entry is AF_BRIDGE, permanent, NTF_SELF, with the MAC and the remote address', () => {
  const [hdr, ...rest] = fdbBody({ index: 7, mac: '0e:70:c0:a8:32:02', dst: '192.168.50.2' });
  const h = decodeNdMsg(hdr!);
  assert.equal(h.family, AF_BRIDGE);
  assert.equal(h.index, 7);
  assert.equal(h.state, NUD_PERMANENT | NUD_NOARP);
  assert.equal(h.flags, NTF_SELF);
  const a = AttrMap.parse(Buffer.concat(rest));
  assert.equal(bytesToMac(a.get(NDA_LLADDR)!), '0e:70:c0:a8:32:02');
  assert.equal(bytesToIp(a.get(NDA_DST)!), '192.168.50.2');
});

test('node SNAT: one rule for the peers\' CIDRs, excluding every pod CIDR and the node\'s own traffic; no peer, no table', async () => {
  const { nodeSnatScript } = await import('../../src/dataplane/node-snat.js');
  const s = nodeSnatScript(['10.200.1.0/24', '10.200.2.0/24'], ['10.200.0.0/24', '10.200.1.0/24', '10.200.2.0/24']);
  assert.match(s, /chain postrouting \{ type nat hook postrouting priority srcnat; policy accept; \}/);
  assert.match(s, /flush chain ip patu_nodes postrouting/);
  assert.match(s, /ip daddr \{ 10\.200\.1\.0\/24, 10\.200\.2\.0\/24 \} ip saddr != \{ 10\.200\.0\.0\/24, 10\.200\.1\.0\/24, 10\.200\.2\.0\/24 \} fib saddr type != local masquerade/);
  assert.equal(nodeSnatScript([], []), 'table ip patu_nodes {}\ndelete table ip patu_nodes\n');
});
