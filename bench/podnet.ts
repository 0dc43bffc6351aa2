// Pod network configuration end to end (issue 12's benchmark), the real agent against a
// bare kube-apiserver (test/helpers/apiserver.ts) with deploy/'s CRDs, pods = netns ADDed
// through the agent's socket by bin/patu with K8S_POD_* (as podnet-agent.test.ts does):
//   1. from PodNetworkConfig creation (the POST sent) to net1 present in each of N matching
//      running pods (target: p99 < 2 s); rounds: delete the config, wait until every net1 is
//      gone, create it again. net1 is watched from here over netlink sockets opened in each
//      pod's netns (polled every 5 ms), not through the agent.
//   2. the CNI ADD (bin/patu -> agent, answered) of a pod a config matches (net1 made during
//      the ADD) against one no config matches, interleaved (target: p50 delta < 20 ms);
//   3. the agent's RSS: --pod-networks=off after one ADD (reference), on with N pods and no
//      config (idle), on with N pods with net1 (in use); each after one ADD at least, so the
//      CNI lane's worker thread is in all three.
//
//   node dist/bench/podnet.js                 50 pods, 3 rounds, 30 ADDs each way
//   BENCH_PODS=100 BENCH_ROUNDS=5 node dist/bench/podnet.js
//
// Needs root and the k8s binaries (scripts/k8s/build.sh). Takes the cluster lock (a bare
// apiserver on free ports: no fixed port, but it loads the machine). Everything it made
// (netns, bridges, pins, cgroup, temp dir, apiserver) is removed at the end or on SIGINT.
import { readFileSync, readdirSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { createServer } from 'node:net';
import { loadavg } from 'node:os';
import YAML from 'yaml';
import { BareApiserver, apiserverSkipReason, until } from '../test/helpers/apiserver.js';
import { startAgentProc, type AgentProc } from '../test/helpers/agent-proc.js';
import { PATU_BIN, REPO_ROOT, execPlugin, isRoot } from '../test/helpers/cni.js';
import { Scratch } from '../test/helpers/kernel.js';
import { Rtnl } from '../src/kernel/netlink/rtnl.js';

const PODS = Number(process.env.BENCH_PODS ?? 50);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const ADDS = Number(process.env.BENCH_ADDS ?? 30);
const skip = !isRoot() ? 'needs root' : apiserverSkipReason();
if (skip) {
  console.log(`podnet bench: skipped: ${skip}`);
  process.exit(0);
}
if (PODS + 2 * ADDS > 250) throw new Error('BENCH_PODS + 2*BENCH_ADDS: at most 250 (one /24)');

const G = '/apis/network.patu.dev/v1alpha1';
const scratch = new Scratch('patu-bench-pnet');
scratch.cleanupOnSignals();
const TAG = (process.pid % 100000).toString();
const PRIMARY_BRIDGE = `ptb${TAG}`;
const FIELD_BRIDGE = `pnb${TAG}`;
const NODE = `pnet-bench-${process.pid}`;
const pct = (xs: number[], p: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(s.length * p))]!;
};
const ms = (x: number): string => x.toFixed(1);
const sleep = (t: number): Promise<void> => new Promise((r) => setTimeout(r, t));
const freePort = (): Promise<number> => new Promise((resolve) => {
  const s = createServer().listen(0, '127.0.0.1', () => {
    const p = (s.address() as { port: number }).port;
    s.close(() => resolve(p));
  });
});
const rssMiB = (pid: number): number => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) / 1024;
/** The agent's V8 heap (main thread) from its /metrics, MiB: what of the RSS is JavaScript objects. */
const heapMiB = async (port: number): Promise<{ used: string; total: string }> => {
  const text = await fetch(`http://127.0.0.1:${port}/metrics`).then((r) => r.text());
  const v = (n: string) => (Number(new RegExp(`^patu_nodejs_heap_size_${n}_bytes (\\S+)`, 'm').exec(text)?.[1] ?? NaN) / 2 ** 20).toFixed(1);
  return { used: v('used'), total: v('total') };
};

interface Pod { name: string; uid: string; netns: string; containerId: string; rtnl?: Rtnl }

async function main(): Promise<void> {
  const dir = scratch.tmpDir('patu-bench-pnet');
  const api = await BareApiserver.start();
  scratch.defer('apiserver', () => api.stop());
  scratch.defer('bridges', () => {
    for (const b of [PRIMARY_BRIDGE, FIELD_BRIDGE]) spawnSync('ip', ['link', 'del', b], { stdio: 'ignore' });
  });
  const crds: unknown[] = [];
  for (const f of readdirSync(join(REPO_ROOT, 'deploy')).filter((n) => n.endsWith('.yaml'))) {
    for (const d of YAML.parseAllDocuments(readFileSync(join(REPO_ROOT, 'deploy', f), 'utf8'))) {
      const o = d.toJSON() as { kind?: string; spec?: { group?: string } } | null;
      if (o?.kind === 'CustomResourceDefinition' && o.spec?.group === 'network.patu.dev') crds.push(o);
    }
  }
  if (crds.length !== 2) throw new Error(`deploy/ has ${crds.length} network.patu.dev CRDs, not 2`);
  for (const c of crds) await api.must('POST', '/apis/apiextensions.k8s.io/v1/customresourcedefinitions', c);
  await until('CRDs served', async () => (await api.api('GET', `${G}/podnetworkconfigs`)).status === 200);
  await api.must('POST', '/api/v1/namespaces', { metadata: { name: 'bench', labels: { tenant: 'bench' } } });
  await api.must('POST', '/api/v1/namespaces/bench/serviceaccounts', { metadata: { name: 'default' } });
  await api.must('POST', '/api/v1/nodes', { metadata: { name: NODE } });

  const pins = scratch.pinRoot('cni');
  const netconf = {
    cniVersion: '1.1.0', name: 'patu', type: 'patu', bridge: PRIMARY_BRIDGE, mtu: 1500, masquerade: false,
    ipam: { ranges: [[{ subnet: '10.252.9.0/24' }]], dataDir: join(dir, 'ipam') }, pinRoot: pins,
  };
  const metricsPort = await freePort();
  const agentArgs = (podNetworks: boolean) => ['--kubernetes', '--kubeconfig', api.kubeconfig(), '--node-name', NODE, '--cluster-cidr', '10.252.0.0/16',
    '--cni-conf-dir', '', '--pin-root', scratch.pinRoot(podNetworks ? 'on' : 'off'), '--cgroup', scratch.cgroup(podNetworks ? 'on' : 'off'), '--bridge', PRIMARY_BRIDGE,
    '--data-dir', join(dir, 'ipam'), '--metrics-addr', `127.0.0.1:${metricsPort}`, '--cni-socket', join(dir, 'agent.sock'),
    '--network-policy=off', '--no-hostports', `--pod-networks=${podNetworks ? 'on' : 'off'}`];
  const start = async (podNetworks: boolean): Promise<AgentProc> => {
    const a = startAgentProc(agentArgs(podNetworks), { dir, split: false });
    scratch.defer('agent', () => a.stop());
    await a.ready(30_000);
    await sleep(3000); // informers listed, first reconcile done, heap settled
    return a;
  };

  await api.must('POST', `${G}/nodenetworks`, {
    apiVersion: 'network.patu.dev/v1alpha1', kind: 'NodeNetwork', metadata: { name: 'field' },
    spec: { bridge: FIELD_BRIDGE, subnet: '10.213.0.0/24', gateway: '10.213.0.1', namespaceSelector: { matchLabels: { tenant: 'bench' } } },
  });
  let n = 0;
  const makePod = async (labels: Record<string, string>): Promise<Pod> => {
    const name = `p${n++}`;
    const o = await api.must('POST', '/api/v1/namespaces/bench/pods', {
      metadata: { name, namespace: 'bench', labels },
      spec: { nodeName: NODE, automountServiceAccountToken: false, containers: [{ name: 'c', image: 'busybox' }] },
    });
    return { name, uid: o.metadata.uid, netns: scratch.netns(scratch.name(name)), containerId: `b${process.pid}${name}` };
  };
  const add = async (p: Pod): Promise<number> => {
    const r = await execPlugin(PATU_BIN, 'ADD', netconf, {
      containerId: p.containerId, netns: `/run/netns/${p.netns}`, ifname: 'eth0',
      args: `IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=${p.name};K8S_POD_UID=${p.uid}`,
      env: { PATU_AGENT_SOCKET: join(dir, 'agent.sock') },
    });
    if (r.code !== 0) throw new Error(`ADD ${p.name}: ${r.stdout} ${r.stderr}`);
    return r.ms;
  };
  const hasNet1 = (p: Pod): boolean => (p.rtnl ??= Rtnl.openInNetns(`/run/netns/${p.netns}`)).listLinks().some((l) => l.name === 'net1');

  // RSS with the feature off, for reference: after one ADD (the CNI lane's worker thread
  // is part of the agent's RSS once a request came; every figure below has it too).
  let agent = await start(false);
  await add(await makePod({}));
  await sleep(3000);
  const rssOff = rssMiB(agent.main.pid!);
  const heapOff = await heapMiB(metricsPort);
  await agent.stop();
  agent = await start(true);

  // 1. N running pods, then the config: time to net1 in each.
  const pods: Pod[] = [];
  for (let i = 0; i < PODS; i++) {
    const p = await makePod({ app: 'cnf' });
    await add(p);
    pods.push(p);
  }
  await sleep(3000);
  const rssIdle = rssMiB(agent.main.pid!); // on, N pods, no config: idle
  const heapIdle = await heapMiB(metricsPort);
  const cfgBody = { apiVersion: 'network.patu.dev/v1alpha1', kind: 'PodNetworkConfig', metadata: { name: 'cnf', namespace: 'bench' },
    spec: { podSelector: { matchLabels: { app: 'cnf' } }, interfaces: [{ name: 'net1', network: 'field', routes: [{ to: '10.211.0.0/16', via: '10.213.0.1', table: 100 }], rules: [{ from: '10.213.0.0/24', table: 100 }] }] } };
  const toNet1: number[] = [];
  const lastPerRound: number[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    const t0 = performance.now();
    await api.must('POST', `${G}/namespaces/bench/podnetworkconfigs`, cfgBody);
    const seen = new Map<string, number>();
    while (seen.size < pods.length) {
      for (const p of pods) if (!seen.has(p.name) && hasNet1(p)) seen.set(p.name, performance.now() - t0);
      if (performance.now() - t0 > 60_000) throw new Error(`round ${round}: ${seen.size}/${pods.length} pods with net1 after 60 s`);
      await sleep(5);
    }
    toNet1.push(...seen.values());
    lastPerRound.push(Math.max(...seen.values()));
    if (round === ROUNDS - 1) break;
    await api.must('DELETE', `${G}/namespaces/bench/podnetworkconfigs/cnf`);
    await until('every net1 gone, config deleted', async () => pods.every((p) => !hasNet1(p)) && (await api.api('GET', `${G}/namespaces/bench/podnetworkconfigs/cnf`)).status === 404, 60_000);
  }
  await sleep(3000);
  const rssInUse = rssMiB(agent.main.pid!);
  const heapInUse = await heapMiB(metricsPort);

  // 2. ADD with and without an extra interface, interleaved.
  const withNet1: number[] = [];
  const plain: number[] = [];
  for (let i = 0; i < ADDS; i++) {
    const a = await makePod({ app: 'cnf' });
    const b = await makePod({ app: 'plain' });
    // The agent learns the pods from its watch (as a kubelet's pods are bound before ADD).
    await sleep(50);
    withNet1.push(await add(a));
    if (!hasNet1(a)) throw new Error(`${a.name}: no net1 when its ADD answered`);
    plain.push(await add(b));
    pods.push(a, b);
  }
  const metrics = await fetch(`http://127.0.0.1:${metricsPort}/metrics`).then((r) => r.text());
  for (const p of pods) p.rtnl?.close();

  const out = {
    pods: PODS, rounds: ROUNDS, adds: ADDS, load: loadavg().map((x) => x.toFixed(2)).join(' '),
    configToNet1: { samples: toNet1.length, p50Ms: ms(pct(toNet1, 0.5)), p99Ms: ms(pct(toNet1, 0.99)), maxMs: ms(Math.max(...toNet1)), lastPodPerRoundMs: lastPerRound.map(ms) },
    cniAdd: { withNet1P50Ms: ms(pct(withNet1, 0.5)), plainP50Ms: ms(pct(plain, 0.5)), deltaP50Ms: ms(pct(withNet1, 0.5) - pct(plain, 0.5)), withNet1P99Ms: ms(pct(withNet1, 0.99)), plainP99Ms: ms(pct(plain, 0.99)) },
    agentRssMiB: { podNetworksOff: rssOff.toFixed(1), idle: rssIdle.toFixed(1), idlePods: PODS, inUse: rssInUse.toFixed(1), inUseInterfaces: PODS },
    agentHeapMiB: { podNetworksOff: heapOff, idle: heapIdle, inUse: heapInUse },
    agentMetrics: metrics.split('\n').filter((l) => /^patu_podnet_(reconciles_total|interfaces|failures_total|cni_add_duration_seconds_(sum|count))/.test(l)),
  };
  console.log(JSON.stringify(out, null, 2));
  console.log(`\nconfig -> net1 in ${PODS} pods x ${ROUNDS}: p50 ${out.configToNet1.p50Ms} ms, p99 ${out.configToNet1.p99Ms} ms (target p99 < 2000 ms)`);
  console.log(`CNI ADD p50: with net1 ${out.cniAdd.withNet1P50Ms} ms, without ${out.cniAdd.plainP50Ms} ms, delta ${out.cniAdd.deltaP50Ms} ms (target < 20 ms)`);
  console.log(`agent RSS: off ${out.agentRssMiB.podNetworksOff} MiB, idle ${out.agentRssMiB.idle} MiB, in use ${out.agentRssMiB.inUse} MiB`);
}

main()
  .catch((e) => {
    console.error(e);
    process.exitCode = 1;
  })
  .finally(() => scratch.cleanup().catch((e) => console.error(e)).finally(() => process.exit()));
