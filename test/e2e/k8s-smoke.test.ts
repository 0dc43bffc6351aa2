// A real single-node Kubernetes (scripts/k8s/cluster.sh: etcd, kube-apiserver, a private containerd, kubelet)
// with patu as its only CNI: a busybox pod created through the apiserver must be started by kubelet and get
// its address from patu (inside the node's pod CIDR, on eth0 in the pod, with a patu IPAM record naming the
// pod's sandbox); deleting the pod must release the record (CNI DEL ran); `down` must leave nothing.
// The node as conformance expects it: its InternalIP on a veth to an outside netns the script made, the apiserver
// there with default/kubernetes pointing at it, the service CIDR unreachable on the node, and an uplink watcher
// that reports a packet to the service CIDR leaving through that veth.
//
// Needs root and the Kubernetes binaries from scripts/k8s/build.sh in the cache. Without them it skips,
// saying so, unless PATU_K8S_BUILD=1 (then it builds them first: tens of minutes on 2 cores).
// Its cluster uses its own state dir, ports, bridge, pod /24 and cgroup name (all with this pid),
// so it never collides with a cluster someone brought up by hand.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { NODE, TEST_IMAGE, TestCluster, clusterSkipReason, inCidr, reapStaleClusters, until } from '../helpers/k8s-cluster.js';

const skip = clusterSkipReason();
const cluster = new TestCluster();
const { state: STATE, bridge: BRIDGE, cgroup: CGROUP, podCIDR: POD_CIDR, nodeIP: NODE_IP, outsideIP: OUTSIDE_IP, uplink: UPLINK, outsideNs: OUTSIDE_NS } = cluster.names;
const SERVICE_CIDR = '10.96.0.0/16';
const esc = (s: string) => s.replace(/\./g, '\\.');
const NETWORK = 'patu-k8s';
const POD = 'smoke';
const run = cluster.run.bind(cluster);
const kubectl = cluster.kubectl.bind(cluster);
const ctr = cluster.ctr.bind(cluster);
const logTail = cluster.logTail.bind(cluster);

const ipamDir = join(STATE, 'ipam', NETWORK);
const records = (): string[] => (existsSync(ipamDir) ? readdirSync(ipamDir).filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f)) : []);

// kubelet and kube-proxy rewrite these at start; down must put them back (the machine is shared).
const SYSCTLS = ['/proc/sys/vm/overcommit_memory', '/proc/sys/kernel/panic', '/proc/sys/kernel/panic_on_oops', '/proc/sys/vm/panic_on_oom'];
const readSysctls = () => Object.fromEntries(SYSCTLS.map((p) => [p, readFileSync(p, 'utf8').trim()]));

describe('k8s smoke: a pod through kubelet gets its address from patu', { skip: skip ?? false }, () => {
  let upOk = false;
  let sysctlsBefore: Record<string, string> = {};
  let sandboxId = '';

  before(async () => {
    reapStaleClusters();
    sysctlsBefore = readSysctls();
    await cluster.up();
    upOk = true;
  });

  after(() => {
    // Safe twice: the last test already ran down when everything went well.
    const d = cluster.down();
    if (!d.ok) console.error(`cluster.sh down failed: ${d.detail}`);
  });

  test('env names the admin kubeconfig, the apiserver and the pod CIDR', () => {
    const e = cluster.script(['env'], 10_000);
    assert.ok(e.ok, e.detail);
    assert.match(e.stdout, new RegExp(`^export KUBECONFIG=${STATE}/admin.kubeconfig$`, 'm'));
    assert.match(e.stdout, new RegExp(`^export PATU_K8S_API_SERVER=https://${esc(NODE_IP)}:${cluster.env.PATU_K8S_API_PORT}$`, 'm'));
    assert.equal(cluster.apiServer, `https://${NODE_IP}:${cluster.env.PATU_K8S_API_PORT}`);
    assert.match(e.stdout, new RegExp(`^export PATU_K8S_POD_CIDR=${POD_CIDR.replace(/\./g, '\\.')}$`, 'm'));
    const nodes = kubectl(['get', 'nodes', '-o', 'jsonpath={.items[*].metadata.name}']);
    assert.ok(nodes.ok, nodes.detail);
    assert.equal(nodes.stdout.trim(), NODE);
  });

  test('the node: InternalIP on the uplink to the outside netns, apiserver advertised there, schedulable', async () => {
    assert.ok(upOk);
    const addr = run('ip', ['-4', '-o', 'addr', 'show', 'dev', UPLINK], 5_000);
    assert.match(addr.stdout, new RegExp(`inet ${esc(NODE_IP)}/24`), addr.detail);
    const out = run('ip', ['netns', 'exec', OUTSIDE_NS, 'ping', '-c1', '-W2', NODE_IP], 10_000);
    assert.ok(out.ok, `outside netns ${OUTSIDE_NS} (${OUTSIDE_IP}) cannot reach the node: ${out.detail}${out.stdout}`);
    const node = JSON.parse(kubectl(['get', 'node', NODE, '-o', 'json']).stdout) as {
      spec: { unschedulable?: boolean; taints?: unknown[] };
      status: { addresses: { type: string; address: string }[] };
    };
    assert.deepEqual(node.status.addresses.filter((a) => a.type === 'InternalIP').map((a) => a.address), [NODE_IP]);
    assert.notEqual(node.spec.unschedulable, true);
    // The lease reconciler: default/kubernetes leads to the apiserver at the node address.
    const ep = await until('default/kubernetes endpoints', 30_000, () => {
      const g = kubectl(['get', 'endpointslice', '-n', 'default', 'kubernetes', '-o', 'jsonpath={.endpoints[*].addresses[*]}:{.ports[*].port}']);
      return g.ok && g.stdout.trim() !== ':' ? g.stdout.trim() : undefined;
    });
    assert.equal(ep, `${NODE_IP}:${cluster.apiPort}`);
    // The serving certificate names the address (pods reach it through 10.96.0.1 -> the node address).
    const cert = run('sh', ['-c', `openssl x509 -in ${STATE}/pki/apiserver.crt -noout -ext subjectAltName`], 5_000);
    assert.match(cert.stdout, new RegExp(`IP Address:${esc(NODE_IP)}\\b`), cert.detail);
  });

  test('the service CIDR stays on the node: unreachable route; the uplink watcher catches a packet forced out', () => {
    assert.ok(upOk);
    const routes = run('ip', ['route', 'show', 'exact', SERVICE_CIDR], 5_000).stdout;
    const metric = readFileSync(join(STATE, 'service-route-metric'), 'utf8').trim();
    assert.match(routes, new RegExp(`^unreachable ${esc(SERVICE_CIDR)} metric ${metric}\\b`, 'm'), routes);
    assert.match(routes, new RegExp(`^${esc(SERVICE_CIDR)} via ${esc(OUTSIDE_IP)} dev ${UPLINK} metric ${Number(metric) + 10000}\\b`, 'm'), routes);
    // Nothing translates here (no agent): a packet to a ClusterIP is refused on the node, nothing leaves.
    const refused = run('ping', ['-c1', '-W1', '10.96.255.254'], 10_000);
    assert.equal(refused.ok, false);
    const clean = cluster.script(['uplink-check'], 20_000);
    assert.ok(clean.ok, `uplink-check: ${clean.detail}`);
    // Bound to the uplink, the same address is sent out there (an ARP request for it, at least): the watcher
    // must see it, or it could never fail.
    run('ping', ['-c1', '-W1', '-I', UPLINK, '10.96.255.254'], 10_000);
    const leak = cluster.script(['uplink-check'], 20_000);
    assert.equal(leak.ok, false, 'uplink-check passed although a packet to the service CIDR left through the uplink');
    assert.match(leak.stderr, /LEAK: \d+ packet\(s\)[\s\S]*10\.96\.255\.254/);
  });

  test('pod runs, its eth0 holds an address from patu in the pod CIDR, with an IPAM record of its sandbox', async () => {
    assert.ok(upOk);
    const manifest = JSON.stringify({
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: POD, namespace: 'default' },
      spec: {
        nodeName: NODE, // no scheduler needed: kubelet picks it up directly
        terminationGracePeriodSeconds: 1,
        containers: [
          {
            name: 'bb',
            image: TEST_IMAGE, // built and imported by cluster.sh up
            imagePullPolicy: 'Never',
            command: ['sh', '-c', 'ip -4 -o addr show dev eth0; exec sleep 3600'],
          },
        ],
      },
    });
    const c = kubectl(['apply', '-f', '-'], manifest);
    assert.ok(c.ok, c.detail);

    const podIP = await until('pod Running with an IP', 120_000, () => {
      const g = kubectl(['get', 'pod', POD, '-o', 'jsonpath={.status.phase} {.status.podIP}']);
      const [phase, ip] = g.stdout.trim().split(' ');
      return phase === 'Running' && ip ? ip : undefined;
    }).catch((e: Error) => {
      const d = kubectl(['describe', 'pod', POD]);
      throw new Error(`${e.message}\n${d.stdout.slice(-3000)}${logTail('kubelet')}${logTail('containerd')}`);
    });
    assert.ok(inCidr(podIP, POD_CIDR), `pod IP ${podIP} is not in the node's pod CIDR ${POD_CIDR}`);

    // What the pod itself sees: the address is on its eth0 (patu configured the pod's netns).
    let lastLogs = '';
    const logs = await until('container output', 30_000, () => {
      const l = kubectl(['logs', POD]);
      lastLogs = l.ok ? l.stdout : l.detail;
      return l.ok && l.stdout.includes('eth0') ? l.stdout : undefined;
    }).catch((e: Error) => {
      throw new Error(`${e.message}; last kubectl logs: ${lastLogs}`);
    });
    assert.match(logs, new RegExp(`inet ${podIP.replace(/\./g, '\\.')}/24`), `eth0 in the pod: ${logs}`);

    // patu's IPAM holds exactly this address, owned by the pod's sandbox container in our containerd.
    assert.deepEqual(records(), [podIP], `IPAM records in ${ipamDir}`);
    const [owner, ifname] = readFileSync(join(ipamDir, podIP), 'utf8').split('\n');
    sandboxId = owner!;
    assert.equal(ifname, 'eth0');
    const info = ctr(['containers', 'info', owner!]);
    assert.ok(info.ok, `IPAM record owner ${owner} is not a container in the cluster's containerd: ${info.detail}`);
    const labels = (JSON.parse(info.stdout) as { Labels?: Record<string, string> }).Labels ?? {};
    assert.equal(labels['io.cri-containerd.kind'], 'sandbox');
    assert.equal(labels['io.kubernetes.pod.name'], POD);

    // The node side of patu: the pod's veth is on the cluster's bridge, which holds the gateway.
    const br = run('ip', ['-4', '-o', 'addr', 'show', 'dev', BRIDGE], 5_000);
    assert.ok(br.ok, br.detail);
    assert.match(br.stdout, new RegExp(`inet ${POD_CIDR.replace(/\.0\/24$/, '.1').replace(/\./g, '\\.')}/24`));
  });

  test('deleting the pod runs CNI DEL: the IPAM record is released', async () => {
    const d = kubectl(['delete', 'pod', POD, '--wait=true', '--timeout=60s']);
    assert.ok(d.ok, d.detail);
    await until('IPAM record released', 60_000, () => (records().length === 0 ? true : undefined)).catch((e: Error) => {
      throw new Error(`${e.message}: still ${records().join(',')}${logTail('containerd')}`);
    });
  });

  test('down leaves no state dir, bridge, cgroup, netns, route or process behind, and is safe twice', () => {
    const pids = ['etcd', 'kube-apiserver', 'containerd', 'kubelet', 'uplink-watch']
      .map((c) => Number(readFileSync(join(STATE, 'pids', c), 'utf8').trim()));
    const metric = readFileSync(join(STATE, 'service-route-metric'), 'utf8').trim();
    for (let i = 0; i < 2; i++) {
      const d = cluster.down();
      assert.ok(d.ok, `down #${i + 1}: ${d.detail}`);
    }
    assert.equal(existsSync(STATE), false, `${STATE} still exists`);
    assert.equal(run('ip', ['link', 'show', 'dev', BRIDGE], 5_000).ok, false, `bridge ${BRIDGE} still exists`);
    assert.equal(run('ip', ['link', 'show', 'dev', UPLINK], 5_000).ok, false, `uplink ${UPLINK} still exists`);
    assert.equal(existsSync(`/run/netns/${OUTSIDE_NS}`), false, `netns ${OUTSIDE_NS} still exists`);
    const routes = run('ip', ['route', 'show', 'exact', SERVICE_CIDR], 5_000).stdout;
    assert.doesNotMatch(routes, new RegExp(`metric (${metric}|${Number(metric) + 10000})\\b`), `this cluster's service CIDR routes remain: ${routes}`);
    for (const h of readdirSync('/sys/fs/cgroup')) {
      assert.equal(existsSync(join('/sys/fs/cgroup', h, CGROUP)), false, `cgroup ${h}/${CGROUP} still exists`);
    }
    for (const p of pids) assert.equal(existsSync(`/proc/${p}`), false, `process ${p} still runs`);
    const shims = run('pgrep', ['-f', `containerd-shim.*${STATE}`], 5_000);
    assert.equal(shims.stdout.trim(), '', 'containerd shims of this cluster still run');
    const mounts = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.includes(STATE));
    assert.deepEqual(mounts, [], 'mounts under the state dir remain');
    // kubelet and containerd also write to fixed host paths; down must take back what is this cluster's.
    const links = existsSync('/var/log/containers')
      ? readdirSync('/var/log/containers').filter((f) => run('readlink', [join('/var/log/containers', f)], 5_000).stdout.startsWith(STATE))
      : [];
    assert.deepEqual(links, [], '/var/log/containers links into the state dir remain');
    if (sandboxId && existsSync('/var/lib/cni/results')) {
      assert.deepEqual(readdirSync('/var/lib/cni/results').filter((f) => f.includes(sandboxId)), [], 'libcni cache of the pod remains');
    }
    // kubelet's own iptables chains and its kernel tunables are machine-wide: down restores them when no other
    // kubelet runs.
    if (!run('pgrep', ['-x', 'kubelet'], 5_000).ok) {
      assert.deepEqual(readSysctls(), sysctlsBefore, 'kernel tunables kubelet changed were not restored');
      const chains = run('iptables-save', [], 10_000).stdout.split('\n').filter((l) => /^:KUBE-(KUBELET-CANARY|FIREWALL|IPTABLES-HINT) /.test(l));
      assert.deepEqual(chains, [], 'kubelet iptables chains remain');
    }
  });
});

