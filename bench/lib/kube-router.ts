// The real kube-router (scripts/bench/kube-router.sh builds it from the Go module proxy) running its NetworkPolicy
// firewall only (iptables + ipset), inside a bench's "node" netns, against a test cluster's apiserver.
//
// kube-router enforces for the pods whose status.hostIP is its node's InternalIP (pkg/controllers/netpol/pod.go,
// getLocalPods). The bench's pods are netns, not kubelet pods, so they live in the apiserver as Pod objects bound
// to a Node object of their own that no kubelet runs (a kubelet would start them), with the status kube-router
// reads (podIP, hostIP, Running) written through the status subresource, and a toleration of every taint (the
// node never reports Ready: without it the taint manager would evict them after 300 s).
// Bridged pod-to-pod traffic reaches its FORWARD rules (-m physdev --physdev-is-bridged) through br_netfilter,
// which this kernel has built in (net.bridge.bridge-nf-call-iptables=1 in every netns).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Api } from './k8s.js';
import { sleep } from './k8s.js';
import { BENCH_NS, type BenchPod } from './policy-objects.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));

/** The kube-router binary: built (cached under /var/cache/patu/kube-router) by scripts/bench/kube-router.sh. */
export function kubeRouterBinary(): string {
  const r = spawnSync('bash', [join(ROOT, 'scripts', 'bench', 'kube-router.sh')], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], timeout: 3600_000 });
  const path = r.stdout.trim().split('\n').pop() ?? '';
  if (r.status !== 0 || !existsSync(path)) throw new Error(`scripts/bench/kube-router.sh failed (exit ${r.status ?? r.signal}): kube-router could not be built`);
  return path;
}

/** "kube-router v2.1.0 (go1.26.8)" from its --version line (printed on stderr). */
export function kubeRouterVersion(bin: string): string {
  const r = spawnSync(bin, ['--version'], { encoding: 'utf8' });
  const m = /version (\S+?),.*?(go[\d.]+)/.exec(`${r.stdout}${r.stderr}`);
  return m ? `kube-router ${m[1]} (${m[2]})` : 'kube-router (version unknown)';
}

/** A Node object for kube-router to be (no kubelet): name and InternalIP. */
export async function createFakeNode(api: Api, name: string, ip: string): Promise<void> {
  await api.call('POST', '/api/v1/nodes', {
    apiVersion: 'v1', kind: 'Node',
    metadata: { name, labels: { 'kubernetes.io/hostname': name, bench: 'policy' } },
    // Unschedulable: nothing of the cluster's lands there by accident.
    spec: { unschedulable: true },
  });
  await api.call('PATCH', `/api/v1/nodes/${name}/status`, { status: { addresses: [{ type: 'InternalIP', address: ip }, { type: 'Hostname', address: name }] } }, 'application/merge-patch+json');
}

/** The bench pods as Pod objects bound to `node`, with the status kube-router reads. */
export async function createPods(api: Api, node: string, nodeIp: string, pods: BenchPod[]): Promise<void> {
  for (const p of pods) {
    await api.call('POST', `/api/v1/namespaces/${BENCH_NS}/pods`, {
      apiVersion: 'v1', kind: 'Pod',
      metadata: { name: p.name, namespace: BENCH_NS, labels: p.labels },
      spec: {
        nodeName: node,
        tolerations: [{ operator: 'Exists' }],
        containers: [{ name: 'c', image: 'patu.invalid/bench:none', ports: p.ports }],
      },
    });
    await api.call('PATCH', `/api/v1/namespaces/${BENCH_NS}/pods/${p.name}/status`, {
      status: { phase: 'Running', hostIP: nodeIp, hostIPs: [{ ip: nodeIp }], podIP: p.ip, podIPs: [{ ip: p.ip }], startTime: new Date().toISOString() },
    }, 'application/merge-patch+json');
  }
}

export interface KubeRouterRun {
  child: ChildProcess;
  logFile: string;
}

/**
 * `kube-router --run-firewall --run-router=false --run-service-proxy=false` in netns `ns`, as node `node`.
 * Resolves once it started its controllers (the caller waits for its rules: kubeRouterPolicyChains).
 */
export async function startKubeRouter(o: { bin: string; ns: string; node: string; kubeconfig: string; dir: string; healthPort: number }): Promise<KubeRouterRun> {
  const logFile = join(o.dir, 'kube-router.log');
  const fd = openSync(logFile, 'a');
  const child = spawn('ip', ['netns', 'exec', o.ns, o.bin,
    '--kubeconfig', o.kubeconfig, '--hostname-override', o.node,
    '--run-firewall=true', '--run-router=false', '--run-service-proxy=false',
    '--health-port', String(o.healthPort), '--metrics-port', '0',
    '--service-cluster-ip-range', '10.96.0.0/16', '-v', '1',
  ], { stdio: ['ignore', fd, fd] });
  closeSync(fd);
  const end = Date.now() + 120_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`kube-router exited ${child.exitCode} at start: ${readFileSync(logFile, 'utf8').slice(-3000)}`);
    if (kubeRouterChains(o.ns).top) return { child, logFile };
    if (Date.now() > end) throw new Error(`kube-router: no KUBE-ROUTER-FORWARD chain after 120 s: ${readFileSync(logFile, 'utf8').slice(-3000)}`);
    await sleep(250);
  }
}

/** What kube-router has programmed in `ns`: its top-level chain, policy chains, pod chains, rules, ipsets. */
export function kubeRouterChains(ns: string): { top: boolean; policyChains: number; podChains: number; rules: number; ipsets: number } {
  const save = spawnSync('ip', ['netns', 'exec', ns, 'iptables-save', '-t', 'filter'], { encoding: 'utf8', maxBuffer: 1 << 28 }).stdout ?? '';
  const lines = save.split('\n');
  const sets = spawnSync('ip', ['netns', 'exec', ns, 'ipset', 'list', '-n'], { encoding: 'utf8', maxBuffer: 1 << 26 }).stdout ?? '';
  return {
    top: lines.some((l) => l.startsWith(':KUBE-ROUTER-FORWARD')),
    // One chain per policy, plus its default chain.
    policyChains: lines.filter((l) => l.startsWith(':KUBE-NWPLCY-') && !l.startsWith(':KUBE-NWPLCY-DEFAULT ')).length,
    podChains: lines.filter((l) => l.startsWith(':KUBE-POD-FW-')).length,
    rules: lines.filter((l) => l.startsWith('-A ')).length,
    ipsets: sets.split('\n').filter(Boolean).length,
  };
}

/** Stops kube-router and removes what it programmed (`--cleanup-config`, then anything left in the bench netns). */
export async function stopKubeRouter(run: KubeRouterRun | undefined, bin: string, ns: string): Promise<void> {
  if (run && run.child.exitCode === null && run.child.signalCode === null) {
    run.child.kill('SIGTERM');
    const end = Date.now() + 15_000;
    while (run.child.exitCode === null && run.child.signalCode === null && Date.now() < end) await sleep(100);
    if (run.child.exitCode === null && run.child.signalCode === null) run.child.kill('SIGKILL');
  }
  spawnSync('ip', ['netns', 'exec', ns, bin, '--cleanup-config'], { stdio: 'ignore', timeout: 60_000 });
  // The netns is the bench's own: whatever is left goes (iptables first: a set in use cannot be destroyed).
  spawnSync('ip', ['netns', 'exec', ns, 'iptables', '-F'], { stdio: 'ignore' });
  spawnSync('ip', ['netns', 'exec', ns, 'iptables', '-X'], { stdio: 'ignore' });
  spawnSync('ip', ['netns', 'exec', ns, 'ipset', 'destroy'], { stdio: 'ignore' });
}
