// A real single-node Kubernetes (scripts/k8s/cluster.sh: etcd, kube-apiserver, a private containerd, kubelet)
// with patu as its only CNI: a busybox pod created through the apiserver must be started by kubelet and get
// its address from patu (inside the node's pod CIDR, on eth0 in the pod, with a patu IPAM record naming the
// pod's sandbox); deleting the pod must release the record (CNI DEL ran); `down` must leave nothing.
//
// Needs root and the Kubernetes binaries from scripts/k8s/build.sh in the cache. Without them it skips,
// saying so, unless PATU_K8S_BUILD=1 (then it builds them first: tens of minutes on 2 cores).
// Its cluster uses its own state dir, ports, bridge, pod /24 and cgroup name (all with this pid),
// so it never collides with a cluster someone brought up by hand.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { REPO_ROOT, isRoot } from '../helpers/cni.js';

const VERSION = process.env.PATU_K8S_VERSION ?? 'v1.34.4';
const CACHE = process.env.PATU_K8S_CACHE ?? '/var/cache/patu/k8s';
const BIN = process.env.PATU_K8S_BIN_DIR ?? join(CACHE, VERSION, 'bin');
const NEEDED = ['etcd', 'etcdctl', 'kube-apiserver', 'kubelet', 'kubectl'];
const missing = NEEDED.filter((b) => !existsSync(join(BIN, b)));
const SCRIPTS = join(REPO_ROOT, 'scripts', 'k8s');
const build = process.env.PATU_K8S_BUILD === '1';

const skip = !isRoot()
  ? 'needs root: containerd, kubelet, pod netns, cgroups'
  : missing.length > 0 && !build
    ? `no Kubernetes binaries (${missing.join(', ')}) in ${BIN}: run scripts/k8s/build.sh or set PATU_K8S_BUILD=1`
    : !existsSync(join(REPO_ROOT, 'bin', 'patu')) || !existsSync(join(REPO_ROOT, 'dist', 'cni.mjs'))
      ? 'bin/patu or dist/cni.mjs missing: run scripts/build.sh'
      : !existsSync('/usr/bin/containerd')
        ? 'containerd is not installed (apt-get install containerd runc)'
        : undefined;

const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => (typeof a === 'object' && a ? resolve(a.port) : reject(new Error('listen: no address'))));
    });
  });

// Names derive from a pid only, so a run killed before its after() can be taken down by the next run.
const namesFor = (pid: number) => ({
  state: `/var/lib/patu-k8s-s${pid}`,
  bridge: `pk8${pid % 100000}`,
  cgroup: `patu-k8s-s${pid}`,
  podCidr: `10.202.${(pid % 200) + 20}.0/24`,
});
const STATE = namesFor(process.pid).state;
const NODE = 'localhost'; // see cluster.sh: how the apiserver reaches kubelet on loopback
const BRIDGE = namesFor(process.pid).bridge;
const CGROUP = namesFor(process.pid).cgroup;
const POD_CIDR = namesFor(process.pid).podCidr;
const NETWORK = 'patu-k8s';
const POD = 'smoke';
const env: Record<string, string> = {
  PATH: `${BIN}:${process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin'}`,
  PATU_K8S_VERSION: VERSION,
  PATU_K8S_CACHE: CACHE,
  PATU_K8S_BIN_DIR: BIN,
  PATU_K8S_STATE: STATE,
  PATU_K8S_NODE: NODE,
  PATU_K8S_BRIDGE: BRIDGE,
  PATU_K8S_CGROUP: CGROUP,
  PATU_K8S_POD_CIDR: POD_CIDR,
};

function run(cmd: string, args: string[], timeoutMs: number, input?: string) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: timeoutMs, env, ...(input !== undefined ? { input } : {}) });
  const what = `${cmd} ${args.join(' ')}`;
  return { ok: r.status === 0, stdout: r.stdout ?? '', stderr: r.stderr ?? '', detail: `${what}: exit ${r.status ?? r.signal}: ${(r.stderr ?? '').trim().slice(-3000)}` };
}
const kubectl = (args: string[], input?: string) =>
  // --cache-dir: the test's env has no HOME, and kubectl would otherwise write ./.kube in the working tree.
  run(join(BIN, 'kubectl'), ['--kubeconfig', join(STATE, 'admin.kubeconfig'), '--cache-dir', join(STATE, 'kube-cache'), '--request-timeout=20s', ...args], 30_000, input);
const ctr = (args: string[]) => run('ctr', ['--address', join(STATE, 'containerd', 'containerd.sock'), '-n', 'k8s.io', ...args], 15_000);

async function until<T>(what: string, ms: number, f: () => T | undefined): Promise<T> {
  const end = Date.now() + ms;
  let last: unknown;
  for (;;) {
    try {
      const v = f();
      if (v !== undefined) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await new Promise((r) => setTimeout(r, 500));
  }
}

function inCidr(ip: string, cidr: string): boolean {
  const toInt = (a: string) => a.split('.').reduce((n, o) => n * 256 + Number(o), 0);
  const [net, len] = cidr.split('/');
  const mask = Number(len) === 0 ? 0 : 2 ** 32 - 2 ** (32 - Number(len));
  return (toInt(ip) & mask) >>> 0 === (toInt(net!) & mask) >>> 0;
}

const ipamDir = join(STATE, 'ipam', NETWORK);
const records = (): string[] => (existsSync(ipamDir) ? readdirSync(ipamDir).filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f)) : []);
const logTail = (c: string) => {
  const p = join(STATE, 'logs', `${c}.log`);
  return existsSync(p) ? `\n--- ${c}.log ---\n${readFileSync(p, 'utf8').split('\n').slice(-25).join('\n')}` : '';
};

// kubelet and kube-proxy rewrite these at start; down must put them back (the machine is shared).
const SYSCTLS = ['/proc/sys/vm/overcommit_memory', '/proc/sys/kernel/panic', '/proc/sys/kernel/panic_on_oops', '/proc/sys/vm/panic_on_oom'];
const readSysctls = () => Object.fromEntries(SYSCTLS.map((p) => [p, readFileSync(p, 'utf8').trim()]));

describe('k8s smoke: a pod through kubelet gets its address from patu', { skip: skip ?? false }, () => {
  let upOk = false;
  let sysctlsBefore: Record<string, string> = {};
  let sandboxId = '';

  before(async () => {
    // Clusters of earlier runs that were killed (SIGKILL, machine reboot leaves only the dirs): tear them down.
    for (const d of readdirSync('/var/lib')) {
      const m = /^patu-k8s-s(\d+)$/.exec(d);
      if (!m || existsSync(`/proc/${m[1]}`)) continue;
      const n = namesFor(Number(m[1]));
      const r = spawnSync('bash', [join(SCRIPTS, 'cluster.sh'), 'down'], {
        encoding: 'utf8', timeout: 120_000,
        env: { ...env, PATU_K8S_STATE: n.state, PATU_K8S_BRIDGE: n.bridge, PATU_K8S_CGROUP: n.cgroup, PATU_K8S_POD_CIDR: n.podCidr },
      });
      if (r.status !== 0) console.error(`stale cluster ${n.state}: down failed: ${r.stderr}`);
    }
    if (missing.length > 0) {
      const b = run('bash', [join(SCRIPTS, 'build.sh')], 3 * 3600_000);
      assert.ok(b.ok, `scripts/k8s/build.sh failed: ${b.detail}`);
    }
    env.PATU_K8S_API_PORT = String(await freePort());
    env.PATU_K8S_ETCD_PORT = String(await freePort());
    env.PATU_K8S_KUBELET_PORT = String(await freePort());
    env.PATU_K8S_KUBELET_HEALTHZ_PORT = String(await freePort());
    sysctlsBefore = readSysctls();
    const up = run('bash', [join(SCRIPTS, 'cluster.sh'), 'up'], 300_000);
    assert.ok(up.ok, `cluster.sh up failed: ${up.detail}${up.stdout}`);
    upOk = true;
  });

  after(() => {
    // Safe twice: the last test already ran down when everything went well.
    const d = run('bash', [join(SCRIPTS, 'cluster.sh'), 'down'], 120_000);
    if (!d.ok) console.error(`cluster.sh down failed: ${d.detail}`);
  });

  test('env names the admin kubeconfig, the apiserver and the pod CIDR', () => {
    const e = run('bash', [join(SCRIPTS, 'cluster.sh'), 'env'], 10_000);
    assert.ok(e.ok, e.detail);
    assert.match(e.stdout, new RegExp(`^export KUBECONFIG=${STATE}/admin.kubeconfig$`, 'm'));
    assert.match(e.stdout, new RegExp(`^export PATU_K8S_API_SERVER=https://127.0.0.1:${env.PATU_K8S_API_PORT}$`, 'm'));
    assert.match(e.stdout, new RegExp(`^export PATU_K8S_POD_CIDR=${POD_CIDR.replace(/\./g, '\\.')}$`, 'm'));
    const nodes = kubectl(['get', 'nodes', '-o', 'jsonpath={.items[*].metadata.name}']);
    assert.ok(nodes.ok, nodes.detail);
    assert.equal(nodes.stdout.trim(), NODE);
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
            image: 'localhost/patu/busybox:test', // built and imported by cluster.sh up
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

  test('down leaves no state dir, bridge, cgroup or process behind, and is safe twice', () => {
    const pids = ['etcd', 'kube-apiserver', 'containerd', 'kubelet']
      .map((c) => Number(readFileSync(join(STATE, 'pids', c), 'utf8').trim()));
    for (let i = 0; i < 2; i++) {
      const d = run('bash', [join(SCRIPTS, 'cluster.sh'), 'down'], 120_000);
      assert.ok(d.ok, `down #${i + 1}: ${d.detail}`);
    }
    assert.equal(existsSync(STATE), false, `${STATE} still exists`);
    assert.equal(run('ip', ['link', 'show', 'dev', BRIDGE], 5_000).ok, false, `bridge ${BRIDGE} still exists`);
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

