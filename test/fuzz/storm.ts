// kill -9 storm: ADDs and DELs through the agent and in-process, with random
// kill -9 of plugin processes and of the agent itself mid-request, then the
// runtime's GC with the attachments it still believes in. After each cycle the
// surviving pods must be intact and, once they are deleted, the node must hold
// no IPAM record, no veth, no accel registry entry and no pin beyond what the
// node had before (the bridge and its gateway address stay by design).
//
// Decisions come from a PRNG seeded with the run's seed, so a failing cycle's
// choices can be replayed; timing on a loaded machine still varies.
import type { Scratch } from '../helpers/kernel.js';
import { FuzzNode, type ExecOutcome, type Flavour } from './node.js';
import { seededRandom } from '../helpers/random.js';

export interface StormResult {
  cycles: number;
  pluginKills: number;
  agentKills: number;
  adds: number;
  dels: number;
  /** Veths and IPAM records the kills left that GC had to remove: proves the storm did damage. */
  gcRemoved: number;
  problems: string[];
  ms: number;
}


const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * @param o.minLeftovers keep cycling (up to 20 more) until GC has removed at least this many
 *   leftovers: a short storm whose kills all missed would prove nothing.
 */
export async function killStorm(scratch: Scratch, o: { cycles: number; seed: number; pods?: number; log?: (s: string) => void; deadline?: number; minLeftovers?: number }): Promise<StormResult> {
  const t0 = performance.now();
  const rnd = seededRandom(o.seed);
  const node = await FuzzNode.create(scratch, { tag: 'storm', agent: true, pods: o.pods ?? 6 });
  const res: StormResult = { cycles: 0, pluginKills: 0, agentKills: 0, adds: 0, dels: 0, gcRemoved: 0, problems: [], ms: 0 };
  const conf = Buffer.from(JSON.stringify(node.base));
  const env = (cmd: string, id: string, ns: string): Record<string, string> => ({
    PATH: node.pathEnv.PATH, CNI_COMMAND: cmd, CNI_CONTAINERID: id, CNI_NETNS: `/run/netns/${ns}`, CNI_IFNAME: 'eth0', CNI_PATH: '/opt/cni/bin',
  });
  const baseline = node.snapshot();

  // Typical ADD time per path: kill delays are spread over 0-150 % of it.
  const typical: Record<Flavour, number> = { inproc: 100, agent: 20 };
  for (const f of ['inproc', 'agent'] as Flavour[]) {
    const a = await node.exec(f, env('ADD', 'stprobe', node.podNs[0]!), conf, 30_000);
    if (a.code !== 0) throw new Error(`kill storm: a plain ADD (${f}) failed: ${a.stdout} ${a.stderr}`);
    typical[f] = a.ms;
    const d = await node.exec(f, env('DEL', 'stprobe', node.podNs[0]!), conf, 30_000);
    if (d.code !== 0) throw new Error(`kill storm: a plain DEL (${f}) failed: ${d.stdout}`);
  }
  // The bridge (and its gateway address) exist from here on, by design.
  const settled = node.snapshot();
  const allowed = (l: string): boolean => l === `+ host link ${node.bridge} bridge mtu=1500 master=- up` || l.startsWith(`+ host address ${node.bridge} `) || l.startsWith(`~ host link ${node.bridge}`);

  const phase = async (cmd: 'ADD' | 'DEL', ids: string[], podOf: (i: number) => string, killAgentAt: number | undefined): Promise<Map<string, ExecOutcome>> => {
    const outcomes = new Map<string, ExecOutcome>();
    const running: Promise<void>[] = [];
    const started = performance.now();
    let agentKilled = false;
    for (const [i, id] of ids.entries()) {
      const flavour: Flavour = rnd() < 0.7 ? 'agent' : 'inproc';
      const p = node.launch(flavour, env(cmd, id, podOf(i)), conf);
      if (cmd === 'ADD') res.adds++;
      else res.dels++;
      const kill = rnd() < 0.5 ? rnd() * 1.5 * typical[flavour] : undefined;
      running.push((async () => {
        if (kill !== undefined) {
          await sleep(kill);
          if (p.child.exitCode === null && p.child.signalCode === null) {
            p.child.kill('SIGKILL');
            res.pluginKills++;
          }
        }
        outcomes.set(id, await p.done);
      })());
      if (killAgentAt !== undefined && !agentKilled && performance.now() - started >= killAgentAt) {
        agentKilled = true;
        await node.agent?.kill('SIGKILL');
        res.agentKills++;
      }
      await sleep(rnd() * 10);
    }
    await Promise.all(running);
    if (killAgentAt !== undefined && !agentKilled) {
      await node.agent?.kill('SIGKILL');
      res.agentKills++;
    }
    return outcomes;
  };

  for (let cycle = 0; cycle < o.cycles || (res.gcRemoved < (o.minLeftovers ?? 0) && cycle < o.cycles + 20); cycle++) {
    if (o.deadline && Date.now() > o.deadline) break;
    const ids = node.podNs.map((_, i) => `st${cycle}x${i}`);
    const pod = (i: number): string => node.podNs[i]!;
    const killAgent = rnd() < 0.3 ? rnd() * ids.length * 8 : undefined;
    const adds = await phase('ADD', ids, pod, killAgent);
    if (!node.agent?.alive()) await node.startAgent();
    // DEL about half of them (the runtime's view: a DEL that was killed still counts as gone).
    const delIdx = ids.map((_, i) => i).filter(() => rnd() < 0.5);
    const dels = await phase('DEL', delIdx.map((i) => ids[i]!), (k) => pod(delIdx[k]!), rnd() < 0.15 ? rnd() * delIdx.length * 8 : undefined);
    if (!node.agent?.alive()) await node.startAgent();
    // Let the agent finish whatever it still holds (its queue is served in order).
    const answers = await node.agentAnswers(30_000);
    if (answers) res.problems.push(`cycle ${cycle}: ${answers}`);
    const valid = ids.filter((id, i) => adds.get(id)?.code === 0 && !delIdx.includes(i));
    const pre = node.snapshot();
    const preCount = [...pre.links.values()].filter((v) => v.startsWith('veth ') && v.includes(`master=${node.bridge} `)).length + [...pre.ipam].filter((p) => /\/\d+\.\d+\.\d+\.\d+$/.test(p)).length;
    const gcConf = Buffer.from(JSON.stringify({ ...node.base, 'cni.dev/valid-attachments': valid.map((id) => ({ containerID: id, ifname: 'eth0' })) }));
    const gc = await node.exec(rnd() < 0.5 ? 'agent' : 'inproc', { ...env('GC', 'x', pod(0)), CNI_COMMAND: 'GC' }, gcConf, 30_000);
    if (gc.code !== 0) res.problems.push(`cycle ${cycle}: GC failed: exit ${gc.code} ${gc.stdout.slice(0, 300)}`);

    // The survivors are intact: one veth each, one record each, in the registry, eth0 in the pod.
    const s = node.snapshot();
    const veths = [...s.links].filter(([, v]) => v.startsWith('veth ') && v.includes(`master=${node.bridge} `)).map(([k]) => k);
    const records = [...s.ipam].filter((p) => /\/\d+\.\d+\.\d+\.\d+$/.test(p));
    if (veths.length !== valid.length) res.problems.push(`cycle ${cycle}: after GC ${veths.length} veths for ${valid.length} valid attachments: ${veths.join(' ')}`);
    if (records.length !== valid.length) res.problems.push(`cycle ${cycle}: after GC ${records.length} IPAM records for ${valid.length} valid attachments: ${[...s.ipam].join(' ')}`);
    if (s.registry.size !== valid.length) res.problems.push(`cycle ${cycle}: after GC ${s.registry.size} accel registry entries for ${valid.length} valid attachments: ${[...s.registry].join(' ')}`);
    res.gcRemoved += Math.max(0, preCount - veths.length - records.length);
    for (const id of valid) {
      const i = ids.indexOf(id);
      const ips = (JSON.parse(adds.get(id)!.stdout) as { ips: { address: string }[] }).ips.map((x) => x.address);
      if (!s.pods.get(pod(i))?.includes(ips[0]!)) res.problems.push(`cycle ${cycle}: valid pod ${id} lost its address ${ips[0]}: ${s.pods.get(pod(i))}`);
    }
    // Then the runtime deletes the survivors: the node is back where it started.
    for (const id of valid) {
      const i = ids.indexOf(id);
      const d = await node.exec(rnd() < 0.5 ? 'agent' : 'inproc', env('DEL', id, pod(i)), conf, 30_000);
      res.dels++;
      if (d.code !== 0) res.problems.push(`cycle ${cycle}: DEL of ${id} failed: ${d.stdout.slice(0, 300)}`);
    }
    const end = node.snapshot();
    const left = FuzzNode.diff(settled, end).filter((l) => !allowed(l));
    if (left.length) res.problems.push(`cycle ${cycle}: left behind after GC and DEL: ${left.join('; ')}`);
    res.cycles++;
    if (res.problems.length) {
      res.problems.unshift(`kill storm seed ${o.seed}, cycle ${cycle}: ${adds.size} ADDs (${[...adds.values()].filter((a) => a.code === 0).length} ok), ${dels.size} DELs, agent killed: ${killAgent !== undefined}`);
      break;
    }
    if (o.log && (cycle + 1) % 25 === 0) o.log(`kill storm: ${cycle + 1} cycles, ${res.pluginKills} plugin kills, ${res.agentKills} agent kills, ${((performance.now() - t0) / 1000).toFixed(0)} s\n`);
  }
  // Nothing of the storm's own beyond the bridge: compared with before the first ADD.
  const final = FuzzNode.diff(baseline, node.snapshot()).filter((l) => !allowed(l));
  if (!res.problems.length && final.length) res.problems.push(`after the storm: ${final.join('; ')}`);
  res.ms = performance.now() - t0;
  return res;
}
