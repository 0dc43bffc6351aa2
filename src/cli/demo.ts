// `patu demo`: builds a small edge node out of network namespaces with the real
// patu CNI plugin, sends traffic between its pods, prints what it did and
// measured, and removes everything again (also when a step fails).
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Lab } from '../demo/lab.js';
import { findCgroup2Root } from '../kernel/cgroup.js';
import { haveTool, iperf, pingPong, type Latency, type Throughput } from '../demo/measure.js';
import { connectLoopScript, countClientScript, nameServerScript, type ConnectLoopResult, type CountResult } from '../demo/probe.js';
import { messageOf } from '../errors.js';

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
  // The lab's cgroup is made below the hierarchy's root wherever this host mounts it.
  const lab = new Lab({
    ...LAB,
    cgroupParent: findCgroup2Root(),
    ...(process.env.PATU_BIN ? { patuBin: process.env.PATU_BIN } : {}),
    ...(process.env.PATH ? { path: process.env.PATH } : {}),
  });
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
    // Acceleration is set up (programs loaded, attached to the lab's cgroup) before
    // the pods exist, so each CNI ADD registers its pod; it is switched off for the
    // "before" figures and on again for the "after" ones.
    const { Accel } = await import('../dataplane/accel.js');
    const accel = Accel.open({ pinRoot: lab.pinRoot, cgroupPath: lab.cgroup });
    say('1. CNI ADD for each pod: bin/patu exec\'d like a container runtime does, first alone (Node start per call), then with `patu agent` serving');
    lab.prepare();
    accel.enable();
    accel.disable();
    lab.up(['web1']);
    await lab.startAgent();
    lab.up(['web2', 'client']);
    for (const p of lab.pods.values()) {
      say(`   ${p.name.padEnd(7)} ${p.ip.padEnd(11)} netns ${p.netns.padEnd(27)} ADD ${fmt(p.addMs).padStart(5)} ms ${p.name === 'web1' ? '(plugin process)' : '(via agent)'}`);
    }
    results.pods = [...lab.pods.values()].map((p) => ({ name: p.name, ip: p.ip, addMs: p.addMs }));

    say();
    say('2. CNI CHECK for each pod');
    for (const p of lab.pods.values()) {
      const r = lab.cni('CHECK', p, { prevResult: p.result });
      say(`   ${p.name.padEnd(7)} ${r.code === 0 ? 'ok' : `FAILED ${r.stdout.trim()}`}`);
      if (r.code !== 0) failed = true;
    }

    say();
    say('3. Pod-to-pod TCP: the bridge path, then socket acceleration (sockops + sk_msg redirect)');
    const figures: Record<string, { throughput?: Throughput; latency?: Latency; vethBytes?: number }> = {};
    for (const mode of ['bridge', 'accelerated'] as const) {
      if (mode === 'accelerated') accel.enable();
      const f: { throughput?: Throughput; latency?: Latency; vethBytes?: number } = {};
      const before = lab.vethTxBytes('web1');
      if (haveTool('iperf3')) f.throughput = await iperf(lab, 'client', 'web1', { seconds: 2 });
      f.vethBytes = lab.vethTxBytes('web1') - before;
      if (haveTool('sockperf')) f.latency = await pingPong(lab, 'client', 'web2', { seconds: 2 });
      figures[mode] = f;
      say(
        `   ${mode.padEnd(11)} iperf3 1 stream 128 KiB: ${fmt(f.throughput?.gbitPerSec ?? NaN, 2).padStart(6)} Gbit/s   ` +
          `sockperf 64 B p50 ${fmt(f.latency?.p50us ?? NaN).padStart(6)} us, p99 ${fmt(f.latency?.p99us ?? NaN).padStart(6)} us` +
          `   bytes on web1's veth: ${f.vethBytes}`,
      );
    }
    const b = figures.bridge!;
    const a = figures.accelerated!;
    if (b.throughput && a.throughput) say(`   throughput accelerated/bridge: ${fmt(a.throughput.gbitPerSec / b.throughput.gbitPerSec, 2)}x`);
    if (b.latency && a.latency) say(`   latency p50 accelerated/bridge: ${fmt(a.latency.p50us / b.latency.p50us, 2)}x`);
    if (!haveTool('iperf3') || !haveTool('sockperf')) say('   (iperf3/sockperf missing: run scripts/setup.sh)');
    results.traffic = figures;

    say();
    say('4. A ClusterIP service from a local file: 10.96.0.10:80 -> web1, web2 (chosen at connect(), no NAT)');
    const servicesFile = join(lab.stateDir, 'services.yaml');
    writeFileSync(
      servicesFile,
      [
        'services:',
        '  - name: web',
        '    clusterIP: 10.96.0.10',
        '    ports: [{ port: 80, targetPort: 8080 }]',
        '    endpoints:',
        `      - ip: ${lab.pod('web1').ip}`,
        `      - ip: ${lab.pod('web2').ip}`,
        '',
      ].join('\n'),
    );
    const { servicesApply } = await import('./services.js');
    const applied = await servicesApply(servicesFile, { pinRoot: lab.pinRoot, cgroupPath: lab.cgroup, out: () => {} });
    if (applied !== 0) throw new Error(`patu services apply ${servicesFile} failed (exit ${applied})`);
    const servers = ['web1', 'web2'].map((n) => lab.start(n, [process.execPath, '-e', nameServerScript(n, 8080)]));
    await new Promise((r) => setTimeout(r, 500));
    const r = lab.exec('client', [process.execPath, '-e', countClientScript('10.96.0.10', 80, 200)], 60_000);
    // Then connects alone, in a tight loop: the exchange above is paced by three Node
    // event loops (client and both servers), not by the data path.
    const loop = lab.exec('client', [process.execPath, '-e', connectLoopScript('10.96.0.10', 80, 1000)], 30_000);
    servers.forEach((s) => lab.stop(s));
    const counts = JSON.parse(r.stdout || '{}') as CountResult;
    if (r.code !== 0 || !counts.seen) throw new Error(`service client failed: ${r.stdout} ${r.stderr}`);
    const connects = JSON.parse(loop.stdout || '{}') as ConnectLoopResult;
    if (loop.code !== 0 || connects.done === undefined) throw new Error(`connect loop failed: ${loop.stdout} ${loop.stderr}`);
    say(
      `   200 requests from client to 10.96.0.10:80 (connect, read the pod's name, close; one at a time): ` +
        `${Object.entries(counts.seen).map(([k, v]) => `${k} ${v}`).join(', ')}; failed ${counts.failed}; ` +
        `${fmt((counts.done / counts.ms) * 1000, 0)} requests/s, paced by the Node client and servers`,
    );
    say(
      `   connects alone for 1 s from a Node loop (connect, then reset): ${fmt((connects.done / connects.ms) * 1000, 0)} connects/s, ` +
        `failed ${connects.failed}; Node's cost per socket dominates (bench/service-lb.ts: a C loop, the kernel's alone)`,
    );
    if (connects.failed > 0) failed = true;
    if (counts.failed > 0 || Object.keys(counts.seen).length !== 2) failed = true;
    results.service = { ...counts, connectLoop: connects };
  } catch (err) {
    failed = true;
    say(`\ndemo step failed: ${messageOf(err)}`);
  } finally {
    if (opts.keep && !failed) {
      lab.stopAgent(); // the pods stay; later CNI calls run the plugin in its own process
      say('\n--keep: the demo node stays up; remove it with `patu demo --cleanup`');
    } else {
      say();
      say('5. CNI DEL for each pod, then remove the bridge, namespaces, cgroup and pins');
      const t0 = performance.now();
      const problems = lab.down();
      say(problems.length ? `   left problems: ${problems.join('; ')}` : `   clean (${fmt(performance.now() - t0, 0)} ms)`);
      if (problems.length) failed = true;
    }
  }
  if (opts.json) say(JSON.stringify(results, null, 2));
  if (failed) process.exitCode = 1;
}
