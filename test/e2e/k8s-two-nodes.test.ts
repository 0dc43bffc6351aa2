// Two real Kubernetes nodes on this machine (scripts/k8s/cluster.sh up --nodes 2): the second runs its own kubelet
// and containerd in a network namespace of its own (InternalIP on the same LAN as the first node's uplink) and a
// mount namespace in which the first node's host paths are its own, so deploy/patu.yaml, rendered once, runs as a
// DaemonSet on both. Checked:
//   - both nodes Ready with their InternalIPs and pod CIDRs; the DaemonSet has a ready agent on each node, each with
//     its own pins (node 2's in its pin root, not node 1's) and its own bridge (node 2's in its netns);
//   - a pod pinned to each node gets an address from its node's pod CIDR;
//   - pod to pod across the nodes, both ways (TCP and ICMP);
//   - a Service whose backends are on both nodes answers from both backends, to a client pod on each node;
//   - no packet to the service CIDR left either node by its uplink (cluster.sh uplink-check);
//   - down leaves nothing of either node.
// Cross-node routes: patu's agents program them from the Node objects (node-routing auto: direct, the nodes share
// the LAN), checked below; PATU_K8S_TWO_NODES_ROUTES=static runs with cluster.sh --static-routes instead (the agent
// then leaves those routes alone: they are not its own).
//
// Needs root, the Kubernetes binaries (scripts/k8s/build.sh) and podman (scripts/image.sh); skips saying so
// without them. ~2-3 min: two kubelets, one image build, six pods.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { NODE, NODE2, TEST_IMAGE, TestCluster, clusterSkipReason, freePort, inCidr, reapStaleClusters, until } from '../helpers/k8s-cluster.js';

const skip = clusterSkipReason() ?? (spawnSync('sh', ['-c', 'command -v podman'], { encoding: 'utf8' }).status !== 0 ? 'podman not installed (scripts/image.sh needs it)' : undefined);
const cluster = new TestCluster();
const { state: STATE, bridge: BRIDGE, cgroup: CGROUP, podCIDR: POD_CIDR, podCIDR2: POD_CIDR2, nodeIP: NODE_IP, node2IP: NODE2_IP, node2Netns: NETNS2, cgroup2: CGROUP2 } = cluster.names;
const PIN_ROOT = `/sys/fs/bpf/patu-test-${CGROUP}`;
const PIN_ROOT2 = `${PIN_ROOT}-node2`;
const NS = 'default';
const STATIC_ROUTES = process.env.PATU_K8S_TWO_NODES_ROUTES === 'static';

const server = (name: string, node: string) => ({
  apiVersion: 'v1',
  kind: 'Pod',
  metadata: { name, namespace: NS, labels: { app: 'web' } },
  spec: {
    nodeName: node,
    terminationGracePeriodSeconds: 1,
    containers: [{
      name: 'httpd',
      image: TEST_IMAGE,
      imagePullPolicy: 'Never',
      // Answers with its pod's name; the Service's client tells the backends apart by it.
      command: ['sh', '-c', 'mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www'],
      readinessProbe: { tcpSocket: { port: 8080 }, periodSeconds: 1 },
    }],
  },
});
const SERVICE = {
  apiVersion: 'v1',
  kind: 'Service',
  metadata: { name: 'web', namespace: NS },
  spec: { selector: { app: 'web' }, ports: [{ port: 80, targetPort: 8080 }] },
};

interface Pod { name: string; node: string; ip: string }
const pods: Record<string, Pod> = {};

/** Runs a shell command in a pod; its stdout. */
function sh(pod: string, script: string, timeoutMs = 60_000): string {
  const r = cluster.kubectl(['exec', '-n', NS, pod, '--', 'sh', '-c', script], undefined, timeoutMs);
  if (!r.ok) throw new Error(`${pod}: ${script}: ${r.detail}\n${r.stdout}`);
  return r.stdout;
}

describe('two nodes: a second kubelet in its own netns, patu on both, pods and services across them', { skip: skip ?? false }, () => {
  let upOk = false;
  before(async () => {
    reapStaleClusters();
    cluster.env.PATU_K8S_METRICS_PORT = String(await freePort());
    await cluster.up(['--no-cni', '--nodes', '2', ...(STATIC_ROUTES ? ['--static-routes'] : [])]);
    const d = cluster.script(['deploy'], 300_000);
    if (!d.ok) throw new Error(`cluster.sh deploy: ${d.detail}${cluster.logTail('kubelet-node2')}`);
    upOk = true;
  });

  after(() => {
    const d = cluster.down();
    if (!d.ok) console.error(`cluster.sh down failed: ${d.detail}`);
  });

  test('both nodes Ready with their InternalIPs and pod CIDRs; status and env name both', () => {
    assert.ok(upOk);
    const nodes = JSON.parse(cluster.must(['get', 'nodes', '-o', 'json'])).items as any[];
    const seen = Object.fromEntries(nodes.map((n) => [n.metadata.name, {
      ready: n.status.conditions.find((c: any) => c.type === 'Ready')?.status,
      ip: n.status.addresses.find((a: any) => a.type === 'InternalIP')?.address,
      podCIDR: n.spec.podCIDR,
    }]));
    assert.deepEqual(seen, {
      [NODE]: { ready: 'True', ip: NODE_IP, podCIDR: POD_CIDR },
      [NODE2]: { ready: 'True', ip: NODE2_IP, podCIDR: POD_CIDR2 },
    });
    const st = cluster.script(['status'], 30_000);
    assert.ok(st.ok, st.detail);
    for (const c of ['kubelet', 'containerd', 'kubelet-node2', 'containerd-node2', 'uplink-watch-node2']) assert.match(st.stdout, new RegExp(`^${c}: running`, 'm'), st.stdout);
    assert.match(st.stdout, new RegExp(`^node ${NODE2}: Ready=True$`, 'm'));
    const env = cluster.script(['env'], 10_000).stdout;
    assert.match(env, /^export PATU_K8S_NODES=2$/m);
    assert.match(env, new RegExp(`^export PATU_K8S_NODE2_IP=${NODE2_IP.replace(/\./g, '\\.')}$`, 'm'));
    // Node 2's kubelet runs in node 2's netns, not the host's.
    const k2 = cluster.pidOf('kubelet-node2');
    assert.ok(k2);
    const nsOf = (p: string) => spawnSync('readlink', [p], { encoding: 'utf8' }).stdout.trim();
    assert.notEqual(nsOf(`/proc/${k2}/ns/net`), nsOf('/proc/self/ns/net'), 'kubelet-node2 runs in the host netns');
    const ns2 = spawnSync('ip', ['netns', 'identify', String(k2)], { encoding: 'utf8' }).stdout.trim();
    assert.equal(ns2, NETNS2);
  });

  test('the patu DaemonSet has a ready agent on each node, each with its own pins and bridge', async () => {
    assert.ok(upOk);
    const ds = JSON.parse(cluster.must(['get', 'ds', '-n', 'kube-system', 'patu', '-o', 'json']));
    assert.equal(ds.status.desiredNumberScheduled, 2);
    assert.equal(ds.status.numberReady, 2);
    const agents = (JSON.parse(cluster.must(['get', 'pods', '-n', 'kube-system', '-l', 'app.kubernetes.io/name=patu', '-o', 'json'])).items as any[])
      .map((p) => p.spec.nodeName).sort();
    assert.deepEqual(agents, [NODE, NODE2].sort());
    // Pins: each agent under its own root (node 2's mount namespace shows PIN_ROOT2 at PIN_ROOT).
    const pins = (d: string) => (existsSync(d) ? readdirSync(d, { recursive: true }).map(String) : []);
    assert.ok(pins(PIN_ROOT).length > 0, `no pins in ${PIN_ROOT}`);
    assert.ok(pins(PIN_ROOT2).length > 0, `node 2's agent pinned nothing in ${PIN_ROOT2}`);
    // Each agent wrote its node's conflist with its node's pod CIDR.
    const conf = (d: string) => JSON.parse(readFileSync(join(d, 'cni', 'net.d', '10-patu.conflist'), 'utf8')).plugins[0].podCIDR;
    assert.equal(conf(STATE), POD_CIDR);
    assert.equal(conf(join(STATE, 'node2')), POD_CIDR2);
  });

  test('a pod pinned to each node (server and client) gets an address from that node\'s pod CIDR', async () => {
    assert.ok(upOk);
    const client = (name: string, node: string) => ({
      apiVersion: 'v1', kind: 'Pod', metadata: { name, namespace: NS },
      spec: { nodeName: node, terminationGracePeriodSeconds: 1, containers: [{ name: 'c', image: TEST_IMAGE, imagePullPolicy: 'Never', command: ['sleep', '3600'] }] },
    });
    const all = [server('web1', NODE), server('web2', NODE2), client('client1', NODE), client('client2', NODE2)];
    cluster.must(['apply', '-f', '-'], JSON.stringify({ apiVersion: 'v1', kind: 'List', items: [...all, SERVICE] }));
    for (const p of all) {
      const name = p.metadata.name;
      const ip = await until(`${name} Ready`, 120_000, () => {
        const g = cluster.kubectl(['get', 'pod', '-n', NS, name, '-o', 'jsonpath={.status.podIP} {.status.conditions[?(@.type=="Ready")].status}']);
        const [ip, ready] = g.stdout.trim().split(' ');
        return ip && ready === 'True' ? ip : undefined;
      }).catch((e: Error) => {
        throw new Error(`${e.message}\n${cluster.kubectl(['describe', 'pod', '-n', NS, name]).stdout.slice(-2500)}${cluster.logTail('kubelet-node2')}`);
      });
      pods[name] = { name, node: p.spec.nodeName, ip };
      assert.ok(inCidr(ip, p.spec.nodeName === NODE ? POD_CIDR : POD_CIDR2), `${name} on ${p.spec.nodeName}: ${ip}`);
    }
    // Bridges (made by the first pod's ADD): node 1's on the host, node 2's in its netns (same name: two nodes).
    assert.ok(spawnSync('ip', ['link', 'show', 'dev', BRIDGE]).status === 0, `no ${BRIDGE} on the host`);
    assert.ok(spawnSync('ip', ['-n', NETNS2, 'link', 'show', 'dev', BRIDGE]).status === 0, `no ${BRIDGE} in ${NETNS2}`);
  });

  // wget under timeout(1): the image's busybox (Debian 12's 1.35) crashes on `wget -T`.
  test('pod to pod across the nodes, both ways: TCP and ICMP', async () => {
    assert.ok(pods.web2 && pods.web1, 'pods did not start');
    // Each node routes the other's pod CIDR via its InternalIP: the agent's route (proto 156), or cluster.sh's.
    const route = (netns: string[], cidr: string) => spawnSync('ip', [...netns, 'route', 'show', 'exact', cidr], { encoding: 'utf8' }).stdout.trim();
    const want = (cidr: string, via: string) => new RegExp(`^${cidr.replace(/\./g, '\\.')} via ${via.replace(/\./g, '\\.')} dev \\S+ ${STATIC_ROUTES ? '' : 'proto 156'}`);
    await until('routes between the nodes', 30_000, () => (want(POD_CIDR2, NODE2_IP).test(route([], POD_CIDR2)) && want(POD_CIDR, NODE_IP).test(route(['-n', NETNS2], POD_CIDR)) ? true : undefined))
      .catch((e: Error) => { throw new Error(`${e.message}: host: '${route([], POD_CIDR2)}', ${NETNS2}: '${route(['-n', NETNS2], POD_CIDR)}'`); });
    assert.equal(sh('client1', `timeout 5 wget -q -O - http://${pods.web2!.ip}:8080/`).trim(), 'web2');
    assert.equal(sh('client2', `timeout 5 wget -q -O - http://${pods.web1!.ip}:8080/`).trim(), 'web1');
    sh('client1', `ping -c 2 -W 2 ${pods.client2!.ip}`);
    sh('client2', `ping -c 2 -W 2 ${pods.client1!.ip}`);
    // And from the other node itself (node -> remote pod), as kubelet probes and hostNetwork pods do.
    const r = spawnSync('ip', ['netns', 'exec', NETNS2, 'timeout', '5', 'wget', '-q', '-O', '-', `http://${pods.web1!.ip}:8080/`], { encoding: 'utf8' });
    assert.equal(r.stdout.trim(), 'web1', `node 2 -> web1: ${r.stderr}`);
  });

  test('a Service with a backend on each node answers from both, to a client on each node', async () => {
    assert.ok(pods.web2 && pods.web1, 'pods did not start');
    const ip = cluster.must(['get', 'svc', '-n', NS, 'web', '-o', 'jsonpath={.spec.clusterIP}']).trim();
    // Both endpoints known (EndpointSlice) before counting.
    await until('2 ready endpoints', 60_000, () => {
      const e = cluster.kubectl(['get', 'endpointslices', '-n', NS, '-l', 'kubernetes.io/service-name=web', '-o', 'jsonpath={.items[*].endpoints[?(@.conditions.ready==true)].addresses[0]}']);
      return e.stdout.trim().split(/\s+/).filter(Boolean).length === 2 ? true : undefined;
    });
    for (const c of ['client1', 'client2']) {
      // 30 connections: each goes to one backend at random; both must answer (a miss has odds 2^-29).
      const out = sh(c, `i=0; while [ $i -lt 30 ]; do timeout 3 wget -q -O - http://${ip}/ || echo FAIL; i=$((i+1)); done`, 120_000);
      const counts: Record<string, number> = {};
      for (const l of out.split('\n').filter(Boolean)) counts[l.trim()] = (counts[l.trim()] ?? 0) + 1;
      assert.equal(counts.FAIL, undefined, `${c}: failed connections: ${JSON.stringify(counts)}`);
      assert.ok((counts.web1 ?? 0) > 0 && (counts.web2 ?? 0) > 0, `${c} -> ${ip}: ${JSON.stringify(counts)}`);
    }
  });

  test('no packet to the service CIDR left either node by its uplink', () => {
    assert.ok(upOk);
    const c = cluster.script(['uplink-check'], 30_000);
    assert.ok(c.ok, `uplink-check: ${c.detail}`);
    assert.match(c.stderr, new RegExp(`node ${NODE2}: no packet`));
  });

  test('down leaves nothing of either node', () => {
    const pids = ['kubelet', 'containerd', 'kubelet-node2', 'containerd-node2', 'uplink-watch-node2'].map((c) => cluster.pidOf(c));
    for (let i = 0; i < 2; i++) {
      const d = cluster.down();
      assert.ok(d.ok, `down #${i + 1}: ${d.detail}`);
    }
    assert.equal(existsSync(STATE), false, `${STATE} still exists`);
    assert.equal(existsSync(`/run/netns/${NETNS2}`), false, `netns ${NETNS2} still exists`);
    for (const h of readdirSync('/sys/fs/cgroup')) {
      for (const cg of [CGROUP, CGROUP2]) assert.equal(existsSync(join('/sys/fs/cgroup', h, cg)), false, `cgroup ${h}/${cg} still exists`);
    }
    assert.equal(existsSync(PIN_ROOT2), false, `${PIN_ROOT2} still exists`);
    assert.equal(existsSync(PIN_ROOT), false, `${PIN_ROOT} still exists`);
    for (const p of pids) if (p) assert.equal(existsSync(`/proc/${p}`), false, `process ${p} still runs`);
    const shims = spawnSync('pgrep', ['-f', `containerd-shim.*${STATE}`], { encoding: 'utf8' });
    assert.equal(shims.stdout.trim(), '', 'containerd shims of this cluster still run');
    const mounts = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.includes(STATE));
    assert.deepEqual(mounts, [], 'mounts under the state dir remain');
    // Node 1's agent SNAT table for node 2's pods (on the host) and its route to them.
    const snat = spawnSync('nft', ['list', 'table', 'ip', 'patu_nodes'], { encoding: 'utf8' }).stdout ?? '';
    assert.ok(!snat.includes(POD_CIDR2), `table ip patu_nodes still names ${POD_CIDR2}:\n${snat}`);
    assert.equal(spawnSync('ip', ['route', 'show', 'exact', POD_CIDR2], { encoding: 'utf8' }).stdout.trim(), '', `a route to ${POD_CIDR2} remains`);
  });
});
