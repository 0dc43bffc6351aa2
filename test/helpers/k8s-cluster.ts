// A single-node Kubernetes cluster for one test or benchmark run, driven through
// scripts/k8s/cluster.sh. Every name the host sees (state dir, bridge, cgroup, pod /24,
// node address and its outside netns, ports) derives from the pid of the process that owns the cluster, so runs
// never collide with each other or with a cluster brought up by hand, and a run that was
// killed before its cleanup is taken down by the next one (reapStaleClusters).
//
// Needs root and the Kubernetes binaries from scripts/k8s/build.sh (see clusterSkipReason).
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { REPO_ROOT, isRoot } from './cni.js';

export const K8S_VERSION = process.env.PATU_K8S_VERSION ?? 'v1.34.4';
export const K8S_CACHE = process.env.PATU_K8S_CACHE ?? '/var/cache/patu/k8s';
export const K8S_BIN = process.env.PATU_K8S_BIN_DIR ?? join(K8S_CACHE, K8S_VERSION, 'bin');
const SCRIPTS = join(REPO_ROOT, 'scripts', 'k8s');
/** The node name cluster.sh registers (see there: how the apiserver reaches kubelet on loopback). */
export const NODE = 'localhost';
/** The second node's name (cluster.sh up --nodes 2). */
export const NODE2 = 'node2';
export const TEST_IMAGE = 'localhost/patu/busybox:test';

/** Why a cluster cannot run here, or undefined. `extra` names binaries beyond the always-needed ones. */
export function clusterSkipReason(extra: string[] = []): string | undefined {
  const needed = ['etcd', 'etcdctl', 'kube-apiserver', 'kube-controller-manager', 'kube-scheduler', 'kubelet', 'kubectl', 'crictl', ...extra];
  const missing = needed.filter((b) => !existsSync(join(K8S_BIN, b)));
  if (!isRoot()) return 'needs root: containerd, kubelet, pod netns, cgroups';
  if (missing.length > 0 && process.env.PATU_K8S_BUILD !== '1') {
    return `no Kubernetes binaries (${missing.join(', ')}) in ${K8S_BIN}: run scripts/k8s/build.sh (or set PATU_K8S_BUILD=1)`;
  }
  if (!existsSync(join(REPO_ROOT, 'bin', 'patu')) || !existsSync(join(REPO_ROOT, 'dist', 'cni.cjs'))) return 'bin/patu or dist/cni.cjs missing: run scripts/build.sh';
  if (!existsSync('/usr/bin/containerd')) return 'containerd is not installed (apt-get install containerd runc)';
  return undefined;
}

export interface ClusterNames {
  state: string;
  bridge: string;
  cgroup: string;
  podCIDR: string;
  /** The node's InternalIP, on the veth `uplink` to the netns `outsideNs` (which holds outsideIP). */
  nodeIP: string;
  outsideIP: string;
  uplink: string;
  outsideNs: string;
  /** The second node (up --nodes 2): InternalIP (nodeIP + 2, on the same LAN), pod CIDR, network namespace. */
  node2IP: string;
  podCIDR2: string;
  node2Netns: string;
  cgroup2: string;
}

/** Names derive from a pid only, so a killed run's cluster can be found again. */
export const namesFor = (pid: number): ClusterNames => ({
  state: `/var/lib/patu-k8s-s${pid}`,
  bridge: `pk8${pid % 100000}`,
  cgroup: `patu-k8s-s${pid}`,
  podCIDR: `10.202.${(pid % 200) + 20}.0/24`,
  nodeIP: `10.203.${(pid % 200) + 20}.1`,
  outsideIP: `10.203.${(pid % 200) + 20}.2`,
  uplink: `pk8${pid % 100000}u`,
  outsideNs: `patu-k8s-s${pid}-outside`,
  node2IP: `10.203.${(pid % 200) + 20}.3`,
  podCIDR2: `10.202.${((pid % 200) + 20 + 128) % 256}.0/24`,
  node2Netns: `patu-k8s-s${pid}-node2`,
  cgroup2: `patu-k8s-s${pid}-node2`,
});

export const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => (typeof a === 'object' && a ? resolve(a.port) : reject(new Error('listen: no address'))));
    });
  });

export interface RunResult {
  ok: boolean;
  status: number | null;
  stdout: string;
  stderr: string;
  /** The command, its exit and the tail of its stderr: for assertion messages. */
  detail: string;
}

/** Polls `f` every `everyMs` until it returns a value (not undefined); errors thrown by f are retried. */
export async function until<T>(what: string, ms: number, f: () => T | undefined | Promise<T | undefined>, everyMs = 500): Promise<T> {
  const end = Date.now() + ms;
  let last: unknown;
  for (;;) {
    try {
      const v = await f();
      if (v !== undefined) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

export class TestCluster {
  readonly names: ClusterNames;
  readonly env: Record<string, string>;
  /** Set by up(): the apiserver's loopback port. */
  apiPort = 0;

  constructor(readonly pid = process.pid, extraEnv: Record<string, string> = {}) {
    this.names = namesFor(pid);
    this.env = {
      PATH: `${K8S_BIN}:${process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin'}`,
      PATU_K8S_VERSION: K8S_VERSION,
      PATU_K8S_CACHE: K8S_CACHE,
      PATU_K8S_BIN_DIR: K8S_BIN,
      PATU_K8S_STATE: this.names.state,
      PATU_K8S_NODE: NODE,
      PATU_K8S_BRIDGE: this.names.bridge,
      PATU_K8S_CGROUP: this.names.cgroup,
      PATU_K8S_POD_CIDR: this.names.podCIDR,
      PATU_K8S_POD_CIDR2: this.names.podCIDR2,
      PATU_K8S_NODE2: NODE2,
      PATU_K8S_NODE_IP: this.names.nodeIP,
      PATU_K8S_UPLINK: this.names.uplink,
      PATU_K8S_OUTSIDE_NS: this.names.outsideNs,
      ...extraEnv,
    };
  }

  get state(): string {
    return this.names.state;
  }
  /** The apiserver's URL: it listens on the node address only (set by up()). */
  get apiServer(): string {
    return `https://${this.names.nodeIP}:${this.apiPort}`;
  }
  get kubeconfig(): string {
    return join(this.state, 'admin.kubeconfig');
  }
  get containerdSocket(): string {
    return join(this.state, 'containerd', 'containerd.sock');
  }
  /** The second node's containerd, as the host reaches it (its own mount namespace shows it at containerdSocket). */
  get containerdSocket2(): string {
    return join(this.state, 'node2', 'containerd', 'containerd.sock');
  }

  run(cmd: string, args: string[], timeoutMs: number, input?: string): RunResult {
    const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: timeoutMs, env: this.env, maxBuffer: 64 << 20, ...(input !== undefined ? { input } : {}) });
    const what = `${cmd} ${args.join(' ')}`.slice(0, 300);
    return {
      ok: r.status === 0,
      status: r.status,
      stdout: r.stdout ?? '',
      stderr: r.stderr ?? '',
      detail: `${what}: exit ${r.status ?? r.signal}: ${(r.stderr ?? '').trim().slice(-3000)}`,
    };
  }

  script(args: string[], timeoutMs: number): RunResult {
    return this.run('bash', [join(SCRIPTS, 'cluster.sh'), ...args], timeoutMs);
  }

  kubectl(args: string[], input?: string, timeoutMs = 30_000): RunResult {
    // --cache-dir: tests run with no HOME, and kubectl would otherwise write ./.kube in the working tree.
    return this.run(join(K8S_BIN, 'kubectl'), ['--kubeconfig', this.kubeconfig, '--cache-dir', join(this.state, 'kube-cache'), '--request-timeout=20s', ...args], timeoutMs, input);
  }

  /** kubectl that must succeed; returns stdout. */
  must(args: string[], input?: string): string {
    const r = this.kubectl(args, input);
    if (!r.ok) throw new Error(r.detail);
    return r.stdout;
  }

  /** crictl against the cluster's containerd (node: 2 for the second node's): what kubelet sees through CRI. */
  crictl(args: string[], timeoutMs = 15_000, node: 1 | 2 = 1): RunResult {
    const sock = node === 1 ? this.containerdSocket : this.containerdSocket2;
    return this.run(join(K8S_BIN, 'crictl'), ['--runtime-endpoint', `unix://${sock}`, '--image-endpoint', `unix://${sock}`, ...args], timeoutMs);
  }

  ctr(args: string[], timeoutMs = 15_000, node: 1 | 2 = 1): RunResult {
    return this.run('ctr', ['--address', node === 1 ? this.containerdSocket : this.containerdSocket2, '-n', 'k8s.io', ...args], timeoutMs);
  }

  /** Builds the binaries if asked to (PATU_K8S_BUILD=1), picks free ports and brings the cluster up. */
  async up(flags: string[] = [], timeoutMs = 300_000): Promise<void> {
    if (clusterSkipReason() === undefined && !existsSync(join(K8S_BIN, 'kubelet'))) {
      const b = this.run('bash', [join(SCRIPTS, 'build.sh')], 3 * 3600_000);
      if (!b.ok) throw new Error(`scripts/k8s/build.sh failed: ${b.detail}`);
    }
    this.apiPort = await freePort();
    this.env.PATU_K8S_API_PORT = String(this.apiPort);
    this.env.PATU_K8S_ETCD_PORT = String(await freePort());
    this.env.PATU_K8S_KUBELET_PORT = String(await freePort());
    this.env.PATU_K8S_KUBELET_HEALTHZ_PORT = String(await freePort());
    const up = this.script(['up', ...flags], timeoutMs);
    if (!up.ok) throw new Error(`cluster.sh up failed: ${up.detail}${up.stdout}`);
  }

  /** Safe to call twice and when up() failed half way. */
  down(): RunResult {
    return this.script(['down'], 180_000);
  }

  pidOf(component: string): number | undefined {
    try {
      return Number(readFileSync(join(this.state, 'pids', component), 'utf8').trim());
    } catch {
      return undefined;
    }
  }

  logTail(component: string, lines = 25): string {
    const p = join(this.state, 'logs', `${component}.log`);
    return existsSync(p) ? `\n--- ${component}.log ---\n${readFileSync(p, 'utf8').split('\n').slice(-lines).join('\n')}` : '';
  }
}

/** Tears down clusters of earlier runs whose owning process is gone (SIGKILL, reboot). */
export function reapStaleClusters(): void {
  for (const d of readdirSync('/var/lib')) {
    const m = /^patu-k8s-s(\d+)$/.exec(d);
    if (!m || existsSync(`/proc/${m[1]}`)) continue;
    const c = new TestCluster(Number(m[1]));
    const r = c.down();
    if (!r.ok) console.error(`stale cluster ${c.state}: down failed: ${r.stderr}`);
  }
}

/** Whether an IPv4 address lies inside a CIDR. */
export function inCidr(ip: string, cidr: string): boolean {
  const toInt = (a: string) => a.split('.').reduce((n, o) => n * 256 + Number(o), 0);
  const [net, len] = cidr.split('/');
  const mask = Number(len) === 0 ? 0 : 2 ** 32 - 2 ** (32 - Number(len));
  return (toInt(ip) & mask) >>> 0 === (toInt(net!) & mask) >>> 0;
}
