// Routing between nodes from the Node objects: a bare kube-apiserver (free loopback
// ports, no cluster) holds Nodes; the agent's K8sSource (cluster-wide Node watch, onNodes)
// feeds NodeRoutesSync for node "c", whose kernel is a netns the test makes. A Node
// added on another subnet gets a VXLAN route, one on our link a direct route; an address
// moving onto our link switches VXLAN to direct; a deleted Node's route goes; an overlapping podCIDR
// is refused and logged. Needs root and the apiserver binaries (scripts/k8s/build.sh).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { isRoot } from '../helpers/cni.js';
import { BareApiserver, apiserverSkipReason, until } from '../helpers/apiserver.js';
import { scratchForTests, netnsPath } from '../helpers/kernel.js';
import { NodeLab } from '../helpers/nodes.js';
import { K8sSource } from '../../src/k8s/source.js';
import { kubeconfigFile } from '../../src/k8s/kubeconfig.js';
import { NodeRoutesSync, nodeRoutesLogging } from '../../src/nodes/routes-sync.js';

const skip = !isRoot() ? 'needs root (netns, links)' : apiserverSkipReason() ?? false;
const scratch = scratchForTests('patu-test-mnk');
const lab = new NodeLab(scratch);
let server: BareApiserver | undefined;
after(async () => {
  await server?.stop();
});

const node = (name: string, podCIDR: string, ip: string) => ({
  metadata: { name },
  spec: { podCIDR, podCIDRs: [podCIDR] },
  status: { addresses: [{ type: 'InternalIP', address: ip }, { type: 'Hostname', address: name }] },
});

test('Node objects drive the routes: VXLAN and direct peers, an address change, a deleted Node, an overlap refused', { skip }, async () => {
  server = await BareApiserver.start();
  const c = lab.node('c');
  const other = lab.node('x');
  lab.wire(c, '192.168.81.1/24', other, '192.168.81.254/24');
  lab.sh(c, 'ip route add default via 192.168.81.254');
  const routes = (): string => lab.sh(c, 'ip route show proto 156').trim();
  await server.must('POST', '/api/v1/nodes', node('c', '10.248.0.0/24', '192.168.81.1'));
  await server.must('POST', '/api/v1/nodes', node('d', '10.248.1.0/24', '192.168.82.1'));
  const logged: { msg: string; [k: string]: unknown }[] = [];
  const log = { debug() {}, info: (o: object, msg: string) => void logged.push({ ...o, msg }), warn: (o: object, msg: string) => void logged.push({ ...o, msg }), error: (o: object, msg: string) => void logged.push({ ...o, msg }) };
  const sync = new NodeRoutesSync({ nodeName: 'c', netns: netnsPath(c), ...nodeRoutesLogging(log, { source: 'Nodes' }) });
  const source = new K8sSource({ nodeName: 'c', clusterCIDR: '10.248.0.0/16', resyncMs: 0, onNodes: (n) => void sync.update(n), backoff: { initialMs: 200, maxMs: 1000 } });
  try {
    source.start(kubeconfigFile(server.kubeconfig()));
    await until('d routed over VXLAN', () => /^10\.248\.1\.0\/24 via 10\.248\.1\.0 dev patu\.vxlan onlink/.test(routes()));
    assert.match(lab.sh(c, 'bridge fdb show dev patu.vxlan'), /0e:70:c0:a8:52:01 dst 192\.168\.82\.1 self permanent/);
    // A node on our link: direct.
    await server.must('POST', '/api/v1/nodes', node('e', '10.248.2.0/24', '192.168.81.7'));
    await until('e routed directly', () => routes().includes('10.248.2.0/24 via 192.168.81.7 dev up0'));
    // d's InternalIP moves onto our link (podCIDR cannot change): VXLAN -> direct, and the vxlan device goes with its last peer.
    await server.must('PATCH', '/api/v1/nodes/d/status', { status: { addresses: [{ type: 'InternalIP', address: '192.168.81.8' }] } }, { contentType: 'application/merge-patch+json' });
    await until('d direct', () => routes().includes('10.248.1.0/24 via 192.168.81.8 dev up0'));
    assert.equal(lab.sh(c, 'ip -o link show type vxlan').trim(), '', 'no VXLAN peer left: no device');
    // An overlapping node is refused and logged; nothing of it is programmed.
    await server.must('POST', '/api/v1/nodes', node('f', '10.248.0.128/25', '192.168.83.1'));
    await until('overlap logged', () => logged.some((l) => l.msg === 'node not routed' && l.node === 'f'));
    assert.match(String(logged.find((l) => l.node === 'f')!.reason), /overlaps this node's/);
    assert.equal(routes().includes('10.248.0.128'), false);
    // d deleted: its route goes.
    await server.must('DELETE', '/api/v1/nodes/d');
    await until('d gone', () => !routes().includes('10.248.1.0/24'));
    assert.match(routes(), /10\.248\.2\.0\/24 via 192\.168\.81\.7/, 'the direct peer stays');
  } finally {
    await source.close();
    sync.close();
  }
});
