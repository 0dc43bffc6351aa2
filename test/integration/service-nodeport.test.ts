// NodePort-style wildcard entries, node-address tracking and the service CIDR,
// against the real kernel (needs root). Creates only (removed after the file
// even when a test fails): netns patu-test-svcsock-np-<pid> (the "node": its lo
// holds the backends 10.78.0.x and the node addresses 192.168.78.x),
// netns ...-pod (a pod with its own loopback), the cgroup patu-test-svcsock-np-<pid>
// (programs attach there; every client is moved into it first) and pins under
// /sys/fs/bpf/patu-test-svcsock-np-<pid>/.
// Neither netns has a route to 10.96.0.0/12 or 192.168.79.0/24: a connect the
// programs leave alone fails with ENETUNREACH, so the checks below cannot pass
// by accident.
import { Children, openScratchLb, runClient as runSvcClient, startServer as startSvcServer, type ClientResult } from '../helpers/svc-fixtures.js';
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { ServiceLb, NODE_ADDR_F_LOOPBACK } from '../../src/dataplane/service-lb.js';
import { NodeAddressTracker } from '../../src/dataplane/node-addrs.js';
import { portKey, ServiceModel, type DesiredServicePort, type Protocol } from '../../src/services/model.js';
import { validateServices } from '../../src/services/file-source.js';
import { netnsPath, scratchForTests } from '../helpers/kernel.js';

const isRoot = process.getuid?.() === 0;
const skip = isRoot ? false : 'needs root (netns, cgroup, BPF programs)';
const scratch = scratchForTests('patu-test-svcsock-np');
const NS = scratch.name();
const POD = scratch.name('pod');
let CG = '';
const PIN = scratch.pinRoot();
const BACKENDS = ['10.78.0.1', '10.78.0.2'];
const NODE_IP = '192.168.78.1';
const LATER_IP = '192.168.78.2';

let lb: ServiceLb | undefined;
let tracker: NodeAddressTracker | undefined;
const servers = new Children();

function sh(cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr}`);
}

const startServer = (ns: string, addrs: { ip: string; port: number }[]): Promise<ChildProcess> => startSvcServer(servers, addrs, { netns: ns });
/** Runs the fixture client in netns `ns`, inside the test cgroup (where the programs are attached). */
const runClient = (job: object, ns = NS): Promise<ClientResult> => runSvcClient(servers, job, { netns: ns, cgroup: CG });

function entry(vip: string, port: number, protocol: Protocol, backends: string[]): DesiredServicePort {
  return {
    key: portKey(vip, port, protocol), ref: 'it/np', vip, port, protocol, name: `it/np:${port}`,
    affinity: false, affinityTimeoutSeconds: 0, backends: [...backends].sort(),
  };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function waitFor(what: string, cond: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(20);
  }
}

before(async () => {
  if (!isRoot) return;
  CG = scratch.cgroup();
  scratch.netns(NS);
  scratch.netns(POD);
  for (const ip of BACKENDS) sh('ip', ['-n', NS, 'addr', 'add', `${ip}/32`, 'dev', 'lo']);
  sh('ip', ['-n', NS, 'addr', 'add', `${NODE_IP}/32`, 'dev', 'lo']);
  lb = openScratchLb(scratch, { pinRoot: PIN, cgroupPath: CG });
  scratch.defer('servers and clients', () => servers.killAll());
  tracker = new NodeAddressTracker({ sink: lb, netns: netnsPath(NS), pollMs: 20 });
  scratch.defer('address tracker', () => tracker?.close());
  lb.configure({ serviceCidr: '10.96.0.0/12' });
  lb.resync(new Map([
    entry('0.0.0.0', 30080, 'TCP', BACKENDS.map((ip) => `${ip}:8080`)),
    entry('0.0.0.0', 30080, 'UDP', BACKENDS.map((ip) => `${ip}:8080`)),
    entry('10.96.78.1', 80, 'TCP', BACKENDS.map((ip) => `${ip}:8080`)),
  ].map((d) => [d.key, d])));
  lb.attach();
  await startServer(NS, BACKENDS.map((ip) => ({ ip, port: 8080 })));
  // The pod's own loopback listener on the NodePort number: a pod's 127.0.0.1 is its own.
  await startServer(POD, [{ ip: '127.0.0.1', port: 30080 }]);
});

test('the tracker writes the netns addresses (lo too, flagged loopback) and its cookie', { skip }, () => {
  const addrs = lb!.nodeAddresses();
  assert.equal(addrs.get(NODE_IP), 0);
  assert.equal(addrs.get('127.0.0.1'), NODE_ADDR_F_LOOPBACK);
  for (const ip of BACKENDS) assert.equal(addrs.get(ip), 0);
  assert.equal(addrs.size, 2 + BACKENDS.length, `only the test netns' addresses: ${[...addrs.keys()]}`);
  const cfg = lb!.config();
  assert.equal(cfg.serviceCidr, '10.96.0.0/12');
  assert.ok(cfg.hostNetnsCookie && cfg.hostNetnsCookie > 0n);
});

test('a wildcard entry answers TCP and UDP on a node address, with the node address as the peer', { skip }, async () => {
  const tcp = await runClient({ mode: 'tcp', host: NODE_IP, port: 30080, count: 20 });
  assert.deepEqual(tcp.errors, {});
  assert.equal(tcp.ok, 20);
  assert.deepEqual(Object.keys(tcp.byBackend).sort(), BACKENDS.map((ip) => `${ip}:8080`));
  assert.deepEqual(tcp.peers, { [`${NODE_IP}:30080`]: 20 });
  const udp = await runClient({ mode: 'udp', host: NODE_IP, port: 30080, count: 10 });
  assert.deepEqual(udp.errors, {});
  assert.equal(udp.ok, 10);
  assert.deepEqual(udp.peers, { [`${NODE_IP}:30080`]: 10 }, 'the reply comes from the address the client sent to');
});

test('the node answers its NodePorts on 127.0.0.1; a pod\'s 127.0.0.1 stays the pod\'s own', { skip }, async () => {
  const node = await runClient({ mode: 'tcp', host: '127.0.0.1', port: 30080, count: 10 });
  assert.deepEqual(node.errors, {});
  assert.equal(node.ok, 10);
  for (const b of Object.keys(node.byBackend)) assert.ok(BACKENDS.some((ip) => b === `${ip}:8080`), b);
  const udp = await runClient({ mode: 'udp', host: '127.0.0.1', port: 30080, count: 5 });
  assert.equal(udp.ok, 5, JSON.stringify(udp.errors));
  const pod = await runClient({ mode: 'tcp', host: '127.0.0.1', port: 30080, count: 5 }, POD);
  assert.deepEqual(pod.errors, {});
  assert.deepEqual(pod.byBackend, { '127.0.0.1:30080': 5 }, 'the pod reached its own listener, not the service');
});

test('an address added later answers at once (RTM_NEWADDR); a removed one no longer does', { skip }, async () => {
  sh('ip', ['-n', NS, 'addr', 'add', `${LATER_IP}/32`, 'dev', 'lo']);
  await waitFor(`${LATER_IP} in patu_node_addr`, () => lb!.nodeAddresses().has(LATER_IP));
  const r = await runClient({ mode: 'tcp', host: LATER_IP, port: 30080, count: 5 });
  assert.deepEqual(r.errors, {});
  assert.equal(r.ok, 5);
  sh('ip', ['-n', NS, 'addr', 'del', `${LATER_IP}/32`, 'dev', 'lo']);
  await waitFor(`${LATER_IP} gone from patu_node_addr`, () => !lb!.nodeAddresses().has(LATER_IP));
  assert.ok(lb!.nodeAddresses().has(NODE_IP), 'the other addresses stay');
});

test('a port with no wildcard entry on a node address is left alone', { skip }, async () => {
  // Nothing listens on NODE_IP:30081 and no entry exists: the kernel's own answer (RST).
  const r = await runClient({ mode: 'tcp', host: NODE_IP, port: 30081, count: 2 });
  assert.deepEqual(r.errors, { ECONNREFUSED: 2 });
  // A non-node address on the same port is not a NodePort: no route there.
  const far = await runClient({ mode: 'tcp', host: '192.168.79.1', port: 30080, count: 1 });
  assert.deepEqual(far.errors, { ENETUNREACH: 1 });
});

test('the service CIDR stays on the node: an unanswered address or port there is refused (TCP and UDP)', { skip }, async () => {
  const ok = await runClient({ mode: 'tcp', host: '10.96.78.1', port: 80, count: 3 });
  assert.equal(ok.ok, 3, JSON.stringify(ok.errors));
  const port = await runClient({ mode: 'tcp', host: '10.96.78.1', port: 81, count: 2 });
  assert.deepEqual(port.errors, { ECONNREFUSED: 2 });
  const addr = await runClient({ mode: 'tcp', host: '10.100.0.7', port: 80, count: 2 });
  assert.deepEqual(addr.errors, { ECONNREFUSED: 2 });
  const udp = await runClient({ mode: 'udp', host: '10.96.78.1', port: 53, count: 2 });
  assert.deepEqual(udp.errors, { ECONNREFUSED: 2 });
  const udpc = await runClient({ mode: 'udp-connected', host: '10.96.78.1', port: 53, count: 1 });
  assert.deepEqual(udpc.errors, { ECONNREFUSED: 1 });
  // Just outside 10.96.0.0/12: not refused by patu, so the kernel says no route.
  const outside = await runClient({ mode: 'tcp', host: '10.112.0.1', port: 80, count: 1 });
  assert.deepEqual(outside.errors, { ENETUNREACH: 1 });
  // Switched off: the same address is no longer refused by the programs.
  lb!.configure({ serviceCidr: '' });
  try {
    const off = await runClient({ mode: 'tcp', host: '10.96.78.1', port: 81, count: 1 });
    assert.deepEqual(off.errors, { ENETUNREACH: 1 });
  } finally {
    lb!.configure({ serviceCidr: '10.96.0.0/12' });
  }
});

test('a bad service CIDR is refused with the reason, and the old one stays', { skip }, () => {
  assert.throws(() => lb!.configure({ serviceCidr: '10.96.0.0/4' }), /wider than \/8/);
  assert.throws(() => lb!.configure({ serviceCidr: 'fd00::/108' }), /must be IPv4/);
  assert.throws(() => lb!.configure({ serviceCidr: '10.96.0.0' }), /service CIDR/);
  assert.equal(lb!.config().serviceCidr, '10.96.0.0/12');
});

test('a services-file LoadBalancer service: ClusterIP, NodePort, externalIP and LB IP answer TCP and UDP with its backends', { skip }, async () => {
  const items = validateServices({ services: [{
    name: 'lb', namespace: 'it', clusterIP: '10.96.78.2', type: 'LoadBalancer',
    externalIPs: ['192.0.2.78'], loadBalancerIPs: ['203.0.113.78'],
    ports: [{ name: 't', port: 90, targetPort: 8080, nodePort: 30090 }, { name: 'u', port: 90, protocol: 'UDP', targetPort: 8080, nodePort: 30090 }],
    endpoints: BACKENDS.map((ip) => ({ ip })),
  }] });
  const m = new ServiceModel();
  m.replaceAll(items);
  const changed = m.takeChanges();
  lb!.applyChanges(changed, m.desired(changed));
  try {
    for (const [host, port] of [['10.96.78.2', 90], [NODE_IP, 30090], ['127.0.0.1', 30090], ['192.0.2.78', 90], ['203.0.113.78', 90]] as const) {
      const t = await runClient({ mode: 'tcp', host, port, count: 4 });
      assert.deepEqual(t.errors, {}, `TCP ${host}:${port}`);
      assert.equal(t.ok, 4);
      const u = await runClient({ mode: 'udp', host, port, count: 2 });
      assert.deepEqual(u.errors, {}, `UDP ${host}:${port}`);
      assert.deepEqual(u.peers, { [`${host}:${port}`]: 2 });
    }
    // The node port answers only on node addresses: the externalIP on the node port is no entry.
    const far = await runClient({ mode: 'tcp', host: '192.0.2.78', port: 30090, count: 1 });
    assert.deepEqual(far.errors, { ENETUNREACH: 1 });
  } finally {
    m.replaceAll([]);
    const gone = m.takeChanges();
    lb!.applyChanges(gone, m.desired(gone));
  }
  // Gone with the service: the NodePort is no longer translated (nothing listens there).
  const after = await runClient({ mode: 'tcp', host: NODE_IP, port: 30090, count: 1 });
  assert.deepEqual(after.errors, { ECONNREFUSED: 1 });
});
