// Several nodes as network namespaces, each with its own patu bridge and pods made by the
// real CNI plugin (run inside the node's netns), and the agent's node routing
// (startNodesFile: the same code as `patu agent --nodes-file`) driven for each node:
//   - nodes A and B share a link (a veth between them): direct routes;
//   - nodes C and D sit on two subnets joined by a router netns: VXLAN;
//   - a node leaving the file takes its routes, FDB and neighbour entries with it, rejoining
//     restores them; an overlapping pod CIDR is refused and logged;
//   - a restart (a fresh sync on the same kernel state) changes nothing.
// Needs root. Nothing leaves the namespaces the test makes.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { isRoot, nsRun, ping, tcpExchange } from '../helpers/cni.js';
import { NODE_ROUTES_RTPROT } from '../../src/dataplane/node-routes.js';
import { ServiceModel } from '../../src/services/model.js';
import { ServiceLb } from '../../src/dataplane/service-lb.js';
import { NodePortTc } from '../../src/dataplane/nodeport-tc.js';
import { netnsPath } from '../helpers/kernel.js';
import { scratchForTests } from '../helpers/kernel.js';
import { NodeLab } from '../helpers/nodes.js';
import { Children, openScratchLb, runClient, startServer } from '../helpers/svc-fixtures.js';

const skip = !isRoot() ? 'needs root (netns, links)' : false;
const scratch = scratchForTests('patu-test-mn');
const lab = new NodeLab(scratch);
const children = new Children();
/** The direct test's pods, for the service test after it. */
let direct: { a: string; x: string; pa: { ns: string; ip: string }; pb: { ns: string; ip: string } } | undefined;

after(() => children.killAll());

const sh = (ns: string, cmd: string): string => lab.sh(ns, cmd);
const node = (name: string): string => lab.node(name);
const netns = (name: string): string => lab.netns(name);
const wire = (...a: Parameters<NodeLab['wire']>): void => lab.wire(...a);
const pod = (nodeNs: string, name: string, subnet: string, clusterCIDR?: string) => lab.pod(nodeNs, name, subnet, clusterCIDR ? { clusterCIDR } : {});
const routing = (nodeNs: string, nodeName: string, file: string) => lab.routing(nodeNs, nodeName, file);

const ourRoutes = (ns: string): string => sh(ns, `ip route show proto ${NODE_ROUTES_RTPROT}`).trim();
const until = async (what: string, fn: () => boolean, ms = 5_000): Promise<void> => {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
};

test('nodes on one link: direct routes, pod to pod both ways (ICMP and TCP)', { skip }, async () => {
  const a = node('A');
  const b = node('B');
  wire(a, '192.168.77.1/24', b, '192.168.77.2/24');
  // The pods' masquerade on, for what leaves 10.244.0.0/16: pod to pod across nodes must not be masqueraded.
  const pa = pod(a, 'pa', '10.244.0.0/24', '10.244.0.0/16');
  const pb = pod(b, 'pb', '10.244.1.0/24', '10.244.0.0/16');
  const file = lab.path('direct.yaml');
  writeFileSync(file, `nodes:
  - { name: a, podCIDR: 10.244.0.0/24, address: 192.168.77.1 }
  - { name: b, podCIDR: 10.244.1.0/24, address: 192.168.77.2 }
`);
  await routing(a, 'a', file);
  await routing(b, 'b', file);
  assert.match(ourRoutes(a), /^10\.244\.1\.0\/24 via 192\.168\.77\.2 dev up0/);
  assert.match(ourRoutes(b), /^10\.244\.0\.0\/24 via 192\.168\.77\.1 dev up0/);
  assert.equal(sh(a, 'ip -o link show type vxlan').trim(), '', 'no vxlan device for direct peers');
  for (const [from, to] of [[pa, pb], [pb, pa]] as const) {
    const p = ping(from.ns, to.ip);
    assert.ok(p.ok, `${from.ns} -> ${to.ip}: ${p.out}`);
  }
  const t = await tcpExchange(pb.ns, pa.ns, pb.ip, 7070);
  assert.ok(t.ok, t.detail);
  assert.match(sh(a, 'nft list table ip patu'), /masquerade/, 'the pods\' masquerade is in place on A');
  // B's pod sees A's pod's own address (no masquerade across nodes).
  const cap = spawn('ip', ['netns', 'exec', pb.ns, 'timeout', '5', 'tcpdump', '-lni', 'eth0', '-c', '1', 'icmp[icmptype] == icmp-echo'], { stdio: ['ignore', 'pipe', 'ignore'] });
  let seen = '';
  cap.stdout.setEncoding('utf8').on('data', (d: string) => (seen += d));
  const capDone = new Promise((res) => cap.on('close', res));
  await new Promise((res) => setTimeout(res, 700));
  ping(pa.ns, pb.ip);
  await capDone;
  assert.match(seen, new RegExp(`IP ${pa.ip.replace(/\./g, '\\.')} > ${pb.ip.replace(/\./g, '\\.')}: ICMP echo request`), seen);

  // From outside the cluster through A to B's pod (what a NodePort with a backend on B
  // becomes after A's tc translation): B has no route to the client, so only A's SNAT
  // lets the reply come back. Pod-to-pod traffic is not SNATed (source in a pod CIDR).
  const x = netns('X');
  wire(a, '192.168.80.1/24', x, '192.168.80.2/24', 'out0', 'up0');
  sh(x, 'ip route add default via 192.168.80.1');
  assert.match(sh(a, 'nft list table ip patu_nodes'), /ip daddr 10\.244\.1\.0\/24 ip saddr != \{ 10\.244\.0\.0\/23 \} fib saddr type != local masquerade/);
  const px = ping(x, pb.ip);
  assert.ok(px.ok, `outside -> pod on B through A: ${px.out}`);
  const tx = await tcpExchange(pb.ns, x, pb.ip, 7072);
  assert.ok(tx.ok, tx.detail);
  assert.equal(sh(b, 'nft list tables').includes('patu_nodes'), true, 'B has the rule for A too');
  direct = { a, x, pa, pb };
});

test('nodes on two subnets behind a router: VXLAN, pod to pod; leave and rejoin; overlap refused; restart idempotent', { skip }, async () => {
  const c = node('C');
  const d = node('D');
  const r = node('R');
  wire(c, '192.168.78.1/24', r, '192.168.78.254/24', 'up0', 'toc');
  wire(d, '192.168.79.1/24', r, '192.168.79.254/24', 'up0', 'tod');
  sh(c, 'ip route add default via 192.168.78.254');
  sh(d, 'ip route add default via 192.168.79.254');
  const pc = pod(c, 'pc', '10.245.0.0/24');
  const pd = pod(d, 'pd', '10.245.1.0/24');
  const file = lab.path('vxlan.yaml');
  const both = `nodes:
  - { name: c, podCIDR: 10.245.0.0/24, address: 192.168.78.1 }
  - { name: d, podCIDR: 10.245.1.0/24, address: 192.168.79.1 }
`;
  writeFileSync(file, both);
  const logC = await routing(c, 'c', file);
  await routing(d, 'd', file);
  assert.match(ourRoutes(c), /^10\.245\.1\.0\/24 via 10\.245\.1\.0 dev patu\.vxlan onlink/);
  const vx = JSON.parse(sh(c, 'ip -j -d link show patu.vxlan'))[0];
  assert.equal(vx.linkinfo.info_data.id, 1);
  assert.equal(vx.linkinfo.info_data.port, 4789);
  assert.equal(vx.linkinfo.info_data.local, '192.168.78.1');
  assert.equal(vx.linkinfo.info_data.learning, false);
  assert.equal(vx.mtu, 1450, 'uplink 1500 - 50');
  assert.match(sh(c, 'bridge fdb show dev patu.vxlan'), /0e:70:c0:a8:4f:01 dst 192\.168\.79\.1 self permanent/);
  assert.match(sh(c, 'ip neigh show dev patu.vxlan'), /10\.245\.1\.0 lladdr 0e:70:c0:a8:4f:01 PERMANENT/);
  for (const [from, to] of [[pc, pd], [pd, pc]] as const) {
    const p = ping(from.ns, to.ip);
    assert.ok(p.ok, `${from.ns} -> ${to.ip}: ${p.out}`);
  }
  // Large packets fit: the pods' MTU (1450) is the vxlan device's.
  const big = nsRun(pc.ns, ['busybox', 'ping', '-c', '1', '-W', '2', '-s', '1400', pd.ip]);
  assert.equal(big.status, 0, big.stdout + big.stderr);
  const t = await tcpExchange(pd.ns, pc.ns, pd.ip, 7071);
  assert.ok(t.ok, t.detail);
  // The router saw only VXLAN between the nodes, never a pod address.
  assert.equal(sh(r, 'ip route').includes('10.245'), false);

  // d leaves: its route, FDB and neighbour entries go (and the vxlan device, with no VXLAN peer left; and the SNAT table).
  writeFileSync(file, `nodes:
  - { name: c, podCIDR: 10.245.0.0/24, address: 192.168.78.1 }
`);
  await until('d removed on c', () => ourRoutes(c) === '');
  assert.equal(sh(c, 'ip -o link show type vxlan').trim(), '');
  assert.equal(sh(c, 'nft list tables').includes('patu_nodes'), false);
  assert.equal(ping(pc.ns, pd.ip).ok, false, 'no route to a node that left');
  // Rejoining restores everything.
  writeFileSync(file, both);
  await until('d back on c', () => ourRoutes(c) !== '');
  assert.match(sh(c, 'bridge fdb show dev patu.vxlan'), /0e:70:c0:a8:4f:01 dst 192\.168\.79\.1/);
  await until('ping after rejoin', () => ping(pc.ns, pd.ip).ok, 8_000);

  // An overlapping node is refused and logged; the good peer stays routed; a bad edit keeps the last good state.
  writeFileSync(file, `${both}  - { name: e, podCIDR: 10.245.0.128/25, address: 192.168.78.9 }\n`);
  await until('overlap logged', () => logC.some((l) => l.msg === 'node not routed' && l.node === 'e'));
  assert.match(String(logC.find((l) => l.node === 'e')!.reason), /overlaps this node's/);
  assert.equal(ourRoutes(c).includes('10.245.0.128'), false);
  writeFileSync(file, 'nodes:\n  - { name: c, podCIDR: nonsense, address: 192.168.78.1 }\n');
  await until('bad file logged', () => logC.some((l) => l.msg.startsWith('nodes file rejected')));
  assert.match(String(logC.find((l) => l.msg.startsWith('nodes file rejected'))!.err), /nodes\[0\]\.podCIDR/);
  assert.match(ourRoutes(c), /10\.245\.1\.0\/24/, 'last good routes kept');

  // A restart: a fresh sync over the same kernel state adds and removes nothing.
  writeFileSync(file, both);
  await new Promise((res) => setTimeout(res, 300));
  const before = ourRoutes(c) + sh(c, 'bridge fdb show dev patu.vxlan') + sh(c, 'ip neigh show dev patu.vxlan');
  const again = await routing(c, 'c', file);
  assert.equal(again.filter((l) => l.msg === 'routes to other nodes programmed').length, 0, JSON.stringify(again));
  assert.equal(ourRoutes(c) + sh(c, 'bridge fdb show dev patu.vxlan') + sh(c, 'ip neigh show dev patu.vxlan'), before);
});

test('a service with backends on both nodes: a pod on A reaches both (socket LB, remote endpoint kept)', { skip }, async () => {
  assert.ok(direct, 'needs the direct test\'s nodes');
  const { pa, pb } = direct;
  const cg = scratch.cgroup();
  const lb = openScratchLb(scratch, { pinRoot: scratch.pinRoot(), cgroupPath: cg });
  const model = new ServiceModel({ nodeName: 'a' });
  model.upsertService({ namespace: 'mn', name: 'both', clusterIP: '10.96.88.1', ports: [{ port: 80, protocol: 'TCP', targetPort: 8080 }], sessionAffinity: 'None', affinityTimeoutSeconds: 10800 });
  model.setEndpoints('mn/both', [
    { ip: pa.ip, ready: true, serving: true, terminating: false, nodeName: 'a' },
    { ip: pb.ip, ready: true, serving: true, terminating: false, nodeName: 'b' },
  ]);
  lb.resync(model.desired());
  lb.attach();
  await startServer(children, [{ ip: pa.ip, port: 8080 }], { netns: pa.ns });
  await startServer(children, [{ ip: pb.ip, port: 8080 }], { netns: pb.ns });
  const r = await runClient(children, { mode: 'tcp', host: '10.96.88.1', port: 80, count: 60 }, { netns: pa.ns, cgroup: cg });
  assert.equal(r.ok, 60, JSON.stringify(r));
  const local = r.byBackend[`${pa.ip}:8080`] ?? 0;
  const remote = r.byBackend[`${pb.ip}:8080`] ?? 0;
  assert.ok(local >= 10 && remote >= 10, `both nodes' backends answer: ${JSON.stringify(r.byBackend)}`);
});

test('a NodePort from outside, translated by A\'s tc path, reaches the backend on B too (SNAT) and answers as the NodePort', { skip }, async () => {
  assert.ok(direct, 'needs the direct test\'s nodes');
  const { a, x, pa, pb } = direct;
  const pin = scratch.pinRoot('np');
  const model = new ServiceModel({ nodeName: 'a' });
  model.upsertService({
    namespace: 'mn', name: 'np', clusterIP: '10.96.88.2', type: 'NodePort', externalTrafficPolicy: 'Cluster',
    sessionAffinity: 'None', affinityTimeoutSeconds: 10800, ports: [{ port: 80, protocol: 'TCP', targetPort: 8081, nodePort: 30088 }],
  });
  model.setEndpoints('mn/np', [
    { ip: pa.ip, ready: true, serving: true, terminating: false, nodeName: 'a' },
    { ip: pb.ip, ready: true, serving: true, terminating: false, nodeName: 'b' },
  ]);
  const lb = ServiceLb.open({ pinRoot: pin });
  try {
    lb.setNodeAddresses(new Map([['192.168.80.1', 0]]));
    lb.resync(model.desired());
  } finally {
    lb.close();
  }
  const np = NodePortTc.open({ pinRoot: pin, devices: ['out0'], netnsPath: netnsPath(a) });
  scratch.defer('nodeport tc', () => {
    try {
      np.detach();
    } finally {
      np.close();
    }
  });
  assert.deepEqual(np.sync(), ['out0']);
  await startServer(children, [{ ip: pa.ip, port: 8081 }], { netns: pa.ns });
  await startServer(children, [{ ip: pb.ip, port: 8081 }], { netns: pb.ns });
  const r = await runClient(children, { mode: 'tcp', host: '192.168.80.1', port: 30088, count: 40 }, { netns: x });
  assert.deepEqual(r.errors, {}, JSON.stringify(r));
  assert.equal(r.ok, 40);
  assert.ok((r.byBackend[`${pb.ip}:8081`] ?? 0) >= 5 && (r.byBackend[`${pa.ip}:8081`] ?? 0) >= 5, `both nodes' backends: ${JSON.stringify(r.byBackend)}`);
  assert.deepEqual(r.peers, { '192.168.80.1:30088': 40 }, 'every answer comes from the NodePort');
});

test('an apply that fails (this node\'s address not up yet, as at boot) is logged and retried until it works', { skip }, async () => {
  const n = node('late');
  const file = lab.path('late.yaml');
  writeFileSync(file, `nodes:
  - { name: late, podCIDR: 10.249.0.0/24, address: 192.168.96.1 }
  - { name: far, podCIDR: 10.249.1.0/24, address: 172.31.96.1 }
`);
  const logged = await lab.routing(n, 'late', file, { retryMs: 200 });
  assert.match(String(logged.find((l) => l.msg.startsWith('routes to other nodes not programmed'))?.err), /192\.168\.96\.1 .* is on none of its links/);
  assert.equal(ourRoutes(n), '');
  sh(n, 'ip link add up0 type veth peer name up1 && ip addr add 192.168.96.1/24 dev up0 && ip link set up0 up && ip link set up1 up');
  await until('routes after the address came up', () => ourRoutes(n).includes('10.249.1.0/24 via 10.249.1.0 dev patu.vxlan'));
});
