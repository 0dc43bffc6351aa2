// `patu demo`: builds a small edge node out of network namespaces with the real
// patu CNI plugin, sends traffic between its pods, prints what it did and
// measured, and removes everything again (also when a step fails).
import { Lab } from '../demo/lab.js';
import { haveTool, iperf, pingPong } from '../demo/measure.js';

export interface DemoOptions {
  keep?: boolean;
  cleanup?: boolean;
  json?: boolean;
}

const LAB = { name: 'patu-demo', subnet: '10.250.0.0/24', pods: ['web1', 'web2', 'client'] };

const say = (line = '') => process.stdout.write(line + '\n');
const fmt = (n: number, digits = 1) => (Number.isFinite(n) ? n.toFixed(digits) : 'n/a');

export async function demoCommand(opts: DemoOptions): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('patu demo needs root: it creates network namespaces, a bridge and eBPF programs');
  const lab = new Lab(LAB);
  if (opts.cleanup) {
    const problems = lab.down();
    say(problems.length ? `cleaned up, with problems:\n  ${problems.join('\n  ')}` : 'demo state removed');
    return;
  }
  const results: Record<string, unknown> = {};
  let failed = false;
  try {
    say('patu demo: an edge node made of network namespaces, wired by the patu CNI plugin');
    say(`  bridge ${lab.bridge}, pod subnet ${LAB.subnet}, pods in cgroup ${lab.cgroup}`);
    say();
    say('1. CNI ADD for each pod (bin/patu, exec\'d like a container runtime does)');
    lab.up();
    for (const p of lab.pods.values()) say(`   ${p.name.padEnd(7)} ${p.ip.padEnd(12)} netns ${p.netns}  ADD ${fmt(p.addMs)} ms`);
    results.pods = [...lab.pods.values()].map((p) => ({ name: p.name, ip: p.ip, addMs: p.addMs }));

    say();
    say('2. CNI CHECK for each pod');
    for (const p of lab.pods.values()) {
      const r = lab.cni('CHECK', p, { prevResult: p.result });
      say(`   ${p.name.padEnd(7)} ${r.code === 0 ? 'ok' : `FAILED ${r.stdout.trim()}`}`);
      if (r.code !== 0) failed = true;
    }

    say();
    say('3. Pod-to-pod traffic over the bridge');
    if (haveTool('iperf3')) {
      const t = await iperf(lab, 'client', 'web1', { seconds: 2 });
      say(`   iperf3 client -> web1, 1 stream, 128 KiB writes, 2 s: ${fmt(t.gbitPerSec, 2)} Gbit/s`);
      results.throughputGbit = t.gbitPerSec;
    } else say('   iperf3 not installed: skipped (apt-get install iperf3)');
    if (haveTool('sockperf')) {
      const l = await pingPong(lab, 'client', 'web2', { seconds: 2 });
      say(`   sockperf TCP ping-pong client -> web2, 64 B: p50 ${fmt(l.p50us)} us, p99 ${fmt(l.p99us)} us`);
      results.latencyUs = l;
    } else say('   sockperf not installed: skipped (apt-get install sockperf)');
  } catch (err) {
    failed = true;
    say(`\ndemo step failed: ${(err as Error).message}`);
  } finally {
    if (opts.keep && !failed) {
      say('\n--keep: the demo node stays up; remove it with `patu demo --cleanup`');
    } else {
      say();
      say('4. CNI DEL for each pod, then remove the bridge, namespaces, cgroup and pins');
      const t0 = performance.now();
      const problems = lab.down();
      say(problems.length ? `   left problems: ${problems.join('; ')}` : `   clean (${fmt(performance.now() - t0, 0)} ms)`);
      if (problems.length) failed = true;
    }
  }
  if (opts.json) say(JSON.stringify(results, null, 2));
  if (failed) process.exitCode = 1;
}
