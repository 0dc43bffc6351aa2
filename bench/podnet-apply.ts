// What an extra pod interface adds to a pod's start (issue 12's target: < 20 ms p50 on
// top of the ADD). Per pod, in the same process and the same run, interleaved:
//   ADD    the primary network's CNI ADD, in-process as the agent serves it (runPlugin
//          with a BridgeCache; no process start): bridge, veth, eth0, address, routes
//   +net1  PodNetApplier.sync() adding one interface on a bridge network: pool address,
//          veth born in the pod netns, aliases, MTU, address, a route in table 100, a rule
// then a re-sync of the same pod (the reconciler's no-op path). Then the CNI DELs, which
// now also remove the extra interface: every other pod's net1 is released by the
// applier first, so DEL is timed with and without an extra interface in the same run.
//
//   node dist/bench/podnet-apply.js            50 pods
//   BENCH_PODS=100 node dist/bench/podnet-apply.js
//
// Needs root. Pods are netns made here; bridges, pools and netns are removed at the end.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { runPlugin } from '../src/cni/plugin.js';
import { BridgeCache } from '../src/dataplane/bridge.js';
import { createNamedNetns, deleteNamedNetns } from '../src/kernel/netns.js';
import { openPodNetApplier } from '../src/podnet/apply.js';
import type { DesiredInterface, ResolvedNetwork } from '../src/podnet/types.js';
import { isRoot, patuFlavour } from '../test/helpers/cni.js';

const PODS = Number(process.env.BENCH_PODS ?? 50);
if (!isRoot()) {
  console.log('podnet-apply bench: needs root');
  process.exit(0);
}
if (PODS > 200) throw new Error(`BENCH_PODS=${PODS}: at most 200 (one /24 per network)`);

const pct = (xs: number[], p: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(s.length * p))]!;
};
const row = (name: string, xs: number[]): string => `${name.padEnd(22)} ${pct(xs, 0.5).toFixed(2).padStart(8)} ${pct(xs, 0.99).toFixed(2).padStart(8)}`;

const tag = `pnb${(process.pid % 46656).toString(36)}`;
const flavour = patuFlavour();
const dataDir = mkdtempSync(join(tmpdir(), `${tag}-podnet-`));
const net: ResolvedNetwork = { name: `${tag}-net`, bridge: `${tag}br`, subnet: `10.205.${process.pid % 200}.0/24`, gateway: `10.205.${process.pid % 200}.1`, mtu: 1500 };
const conf = JSON.stringify(flavour.netconf());
const bridges = new BridgeCache();
const applier = openPodNetApplier({ dataDir: flavour.dataDir });
const want: DesiredInterface[] = [{
  config: { namespace: 'bench', name: 'cnf' }, ifname: 'net1', network: net, mtu: 1400,
  routes: [{ to: '10.211.0.0/16', via: net.gateway!, table: 100 }],
  rules: [{ from: net.subnet, table: 100 }],
}];
const made: string[] = [];
const samples = { add: [] as number[], sync: [] as number[], resync: [] as number[], del: [] as number[], delPlain: [] as number[] };

function cniEnv(command: string, i: number, netns: string): NodeJS.ProcessEnv {
  return {
    CNI_COMMAND: command, CNI_CONTAINERID: `${tag}-ctr${i}`, CNI_NETNS: netns, CNI_IFNAME: 'eth0', CNI_PATH: '/usr/lib/cni',
    CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=pod-${i};K8S_POD_UID=uid-${i}`,
  };
}

try {
  applier.ensureNetwork(net);
  for (let i = 0; i < PODS; i++) {
    const ns = `${tag}p${i}`;
    deleteNamedNetns(ns);
    const path = createNamedNetns(ns);
    made.push(ns);
    let t0 = performance.now();
    const add = await runPlugin(cniEnv('ADD', i, path), conf, { bridges });
    samples.add.push(performance.now() - t0);
    if (add.exitCode !== 0) throw new Error(`ADD of pod ${i}: ${add.stdout}`);
    const sandbox = { pod: { namespace: 'bench', name: `pod-${i}`, uid: `uid-${i}` }, containerId: `${tag}-ctr${i}`, netns: path };
    t0 = performance.now();
    const [r] = applier.sync(sandbox, want);
    samples.sync.push(performance.now() - t0);
    if (!r?.ok) throw new Error(`sync of pod ${i}: ${JSON.stringify(r)}`);
    t0 = performance.now();
    applier.sync(sandbox, want);
    samples.resync.push(performance.now() - t0);
  }
  for (let i = 1; i < PODS; i += 2) applier.release(`${tag}-ctr${i}`, `/run/netns/${made[i]}`);
  for (let i = 0; i < PODS; i++) {
    const t0 = performance.now();
    const del = await runPlugin(cniEnv('DEL', i, `/run/netns/${made[i]}`), conf, { bridges });
    (i % 2 ? samples.delPlain : samples.del).push(performance.now() - t0);
    if (del.exitCode !== 0) throw new Error(`DEL of pod ${i}: ${del.stdout}`);
  }
  console.log(`podnet apply, ${PODS} pods, in-process (no exec), ms`);
  console.log(`${'op'.padEnd(22)} ${'p50'.padStart(8)} ${'p99'.padStart(8)}`);
  console.log(row('ADD (primary)', samples.add));
  console.log(row('sync +net1', samples.sync));
  console.log(row('sync again (no-op)', samples.resync));
  console.log(row('DEL (primary + net1)', samples.del));
  console.log(row('DEL (primary only)', samples.delPlain));
  console.log(`\nnet1 adds p50 ${pct(samples.sync, 0.5).toFixed(2)} ms to an ADD of p50 ${pct(samples.add, 0.5).toFixed(2)} ms (target < 20 ms): ratio sync/ADD p50 ${(pct(samples.sync, 0.5) / pct(samples.add, 0.5)).toFixed(2)}, p99 ${(pct(samples.sync, 0.99) / pct(samples.add, 0.99)).toFixed(2)}`);
} finally {
  applier.pruneNetworks(new Set());
  applier.close();
  for (const ns of made) deleteNamedNetns(ns);
  spawnSync('ip', ['link', 'del', net.bridge], { stdio: 'ignore' });
  flavour.destroy();
  rmSync(dataDir, { recursive: true, force: true });
}
