// VLAN networks in eBPF (issue 12): what the trunk path costs against the same
// topology without a VLAN, both measured in the same run.
//
//   vlan:      pod --veth-- [node bridge]--trunk--(patu_vlan_*)--link==veth==link--(patu_vlan_*)--trunk--[far bridge] --veth-- server
//   untagged:  pod --veth-- [node bridge]------------------------link==veth==link--------------------[far bridge] --veth-- server
//
// The far end untags with the same eBPF (ensureVlanTrunk there too), so a frame
// crosses two tc programs and two extra veth pairs (the trunks) each way. The
// kernel's own VLAN device cannot be the third column here: this kernel has no
// 802.1Q module (`modprobe 8021q`: not found; `ip link add ... type vlan`:
// Unknown device type), and bridge vlan_filtering is EOPNOTSUPP.
//
//   sudo node dist/bench/podnet-vlan.js [--seconds 3] [--runs 3] [--json out.json]
// Per run: iperf3 1 stream (128 KiB writes) and 4 streams, sockperf TCP ping-pong
// 64 B (p50, p99, round trips/s; free and with both ends on one CPU), VLAN and untagged (alternating which goes first). Prints each figure's median
// over the runs with the spread (min-max), and the ratio vlan/untagged.
// Needs root, iperf3, sockperf, build/bpf/vlan.o. Creates its own netns and pin
// roots (named after its pid) and removes them at the end; nothing leaves them.
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { Rtnl } from '../src/kernel/netlink/rtnl.js';
import { ensureVlanTrunk, removeVlanTrunk } from '../src/podnet/vlan.js';
import { readVlanStats, vlanPinDir } from '../src/dataplane/vlan-tc.js';
import { BpfProgram } from '../src/kernel/bpf/object.js';
import { testRun } from '../src/kernel/bpf/test-run.js';
import { withNetns } from '../src/kernel/netns.js';
import { join } from 'node:path';
import { trunkNames } from '../src/podnet/vlan.js';
import { Scratch, netnsPath } from '../test/helpers/kernel.js';
import { iperf3, sockperfPingPong, median, type Exec } from './lib/netperf.js';

const args = process.argv.slice(2);
const opt = (name: string, dflt: string): string => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] ? args[i + 1]! : dflt;
};
const SECONDS = Number(opt('seconds', '3'));
const RUNS = Number(opt('runs', '3'));
const JSON_OUT = opt('json', '');

const scratch = new Scratch('patu-bench-vlan');
const ip = (...a: string[]): string => execFileSync('ip', a, { encoding: 'utf8' });
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const children: ChildProcess[] = [];
const POD_IP = '10.210.0.10';
const SRV_IP = '10.210.0.254';
const IPERF_PORT = 5201;
const SOCKPERF_PORT = 11111;
/**
 * A second sockperf server, pinned with its client to one CPU: in one run the free
 * ping-pong's p50 jumped from ~4 to ~35 us, most likely a cross-CPU wake-up (where the
 * scheduler put the two ends, nothing to do with the path); on one CPU that cannot happen.
 */
const SOCKPERF_PINNED_PORT = 11112;
const PIN_CPU = '1';

interface Topo { label: string; pod: string; srv: string }

/** pod -- node bridge ... link ... far bridge -- server, either through VLAN 100 trunks or with the links in the bridges. */
function build(label: string, vlan: boolean): Topo {
  const [node, far, pod, srv] = ['node', 'far', 'pod', 'srv'].map((x) => scratch.netns(scratch.name(`${label}-${x}`))) as [string, string, string, string];
  for (const ns of [node, far, pod, srv]) ip('netns', 'exec', ns, 'sysctl', '-qw', 'net.ipv6.conf.all.disable_ipv6=1', 'net.ipv6.conf.default.disable_ipv6=1');
  ip('-n', node, 'link', 'add', 'vlink', 'type', 'veth', 'peer', 'name', 'vfar', 'netns', far);
  for (const [ns, br, l] of [[node, 'br0', 'vlink'], [far, 'br0', 'vfar']] as const) {
    ip('-n', ns, 'link', 'add', br, 'type', 'bridge');
    ip('-n', ns, 'link', 'set', br, 'up');
    if (!vlan) ip('-n', ns, 'link', 'set', l, 'master', br);
    ip('-n', ns, 'link', 'set', l, 'up');
  }
  for (const [ns, bridgeNs, host, addr] of [[pod, node, 'p0', POD_IP], [srv, far, 's0', SRV_IP]] as const) {
    ip('-n', bridgeNs, 'link', 'add', host, 'type', 'veth', 'peer', 'name', 'eth1', 'netns', ns);
    ip('-n', bridgeNs, 'link', 'set', host, 'master', 'br0', 'up');
    ip('-n', ns, 'addr', 'add', `${addr}/24`, 'dev', 'eth1');
    ip('-n', ns, 'link', 'set', 'eth1', 'up');
  }
  if (vlan) {
    for (const [ns, l] of [[node, 'vlink'], [far, 'vfar']] as const) {
      const env = { pinRoot: scratch.pinRoot(`${label}-${ns === node ? 'node' : 'far'}`), netnsPath: netnsPath(ns) };
      const o = { network: `bench-${label}`, link: l, id: 100, bridge: 'br0', mtu: 1500 };
      const r = Rtnl.openInNetns(netnsPath(ns));
      try {
        ensureVlanTrunk(r, o, env);
      } finally {
        r.close();
      }
      scratch.defer(`trunk in ${ns}`, () => {
        const h = Rtnl.openInNetns(netnsPath(ns));
        try {
          removeVlanTrunk(h, o, env);
        } finally {
          h.close();
        }
      });
      if (ns === node) [nodePins, nodeNs] = [env.pinRoot, node];
    }
  }
  const daemon = (argv: string[]): void => {
    const p = spawn('ip', ['netns', 'exec', srv, ...argv], { stdio: 'ignore' });
    children.push(p);
  };
  daemon(['iperf3', '-s', '-B', SRV_IP, '-p', String(IPERF_PORT)]);
  daemon(['sockperf', 'sr', '-i', SRV_IP, '-p', String(SOCKPERF_PORT), '--tcp']);
  daemon(['taskset', '-c', PIN_CPU, 'sockperf', 'sr', '-i', SRV_IP, '-p', String(SOCKPERF_PINNED_PORT), '--tcp']);
  return { label, pod, srv };
}
let nodePins = '';
let nodeNs = '';

/**
 * Each program alone, per frame (BPF_PROG_TEST_RUN, median of 20,000 single runs; the redirect is decided, not done): the
 * tc cost without the machine's noise. The link program pops a tag from the payload here
 * (real frames have it in the skb's metadata, a cheaper pop), so this is its upper bound.
 */
function perFrameNs(): { link: number; trunk: number } {
  const dir = vlanPinDir(nodePins);
  const frame = (tagged: boolean): Buffer => Buffer.concat([Buffer.alloc(12, 2), Buffer.from(tagged ? [0x81, 0, 0, 100, 8, 0] : [8, 0]), Buffer.alloc(46)]);
  const out = { link: 0, trunk: 0 };
  for (const [k, dev, data] of [['link', 'vlink', frame(true)], ['trunk', trunkNames('bench-v', 100).outer, frame(false)]] as const) {
    const prog = BpfProgram.fromPin(join(dir, `prog_${k}`));
    try {
      out[k] = withNetns(netnsPath(nodeNs), () => {
        const r = Rtnl.open();
        const ifindex = r.linkByName(dev)!.index;
        r.close();
        // repeat: 1, many calls: repeats reuse one skb, which the first run already popped or tagged.
        const ns: number[] = [];
        for (let i = 0; i < 20_000; i++) {
          const res = testRun(prog.fd, { data, repeat: 1, skb: { ifindex } });
          if (res.retval !== 7 /* TC_ACT_REDIRECT */) throw new Error(`${k} program answered ${res.retval}, not a redirect`);
          ns.push(res.durationNs);
        }
        return median(ns);
      });
    } finally {
      prog.close();
    }
  }
  return out;
}

const execIn = (ns: string): Exec => (argv, timeoutMs) =>
  execFileSync('ip', ['netns', 'exec', ns, ...argv], { encoding: 'utf8', timeout: timeoutMs, maxBuffer: 64 << 20 });

type Figures = Record<string, number>;
function measure(t: Topo, run: number): Figures {
  const ex = execIn(t.pod);
  const f: Figures = {};
  for (const streams of [1, 4]) {
    const s = iperf3(ex, SRV_IP, IPERF_PORT, { seconds: SECONDS, streams, len: '128K' });
    f[`iperf3 ${streams}x128K Gbit/s`] = s.gbps;
    f[`iperf3 ${streams}x128K CPU s/GB`] = s.cpuSecPerGB;
    process.stderr.write(`  run ${run} ${t.label}: iperf3 ${streams} stream(s) ${s.gbps.toFixed(2)} Gbit/s\n`);
  }
  for (const [tag, port, prefix] of [['', SOCKPERF_PORT, []], [' one CPU', SOCKPERF_PINNED_PORT, ['taskset', '-c', PIN_CPU]]] as const) {
    const p = sockperfPingPong(ex, SRV_IP, port, { seconds: SECONDS, size: 64, prefix: [...prefix] });
    f[`sockperf 64 B${tag} p50 us`] = p.p50us;
    f[`sockperf 64 B${tag} p99 us`] = p.p99us;
    f[`sockperf 64 B${tag} round trips/s`] = p.rrPerSec;
    process.stderr.write(`  run ${run} ${t.label}: sockperf 64 B${tag} p50 ${p.p50us} us, ${p.rrPerSec.toFixed(0)}/s\n`);
  }
  return f;
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('bench/podnet-vlan needs root');
  scratch.cleanupOnSignals();
  scratch.defer('servers', async () => {
    for (const p of children) p.kill('SIGKILL');
    await sleep(200);
  });
  const vlan = build('v', true);
  const plain = build('u', false);
  await sleep(700);
  // Both paths answer before anything is timed.
  for (const t of [vlan, plain]) {
    const r = spawnSync('ip', ['netns', 'exec', t.pod, 'ping', '-c', '1', '-W', '2', SRV_IP], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`${t.label}: no answer from ${SRV_IP}: ${r.stdout}${r.stderr}`);
  }
  const kernel = execFileSync('uname', ['-r'], { encoding: 'utf8' }).trim();
  process.stderr.write(`bench/podnet-vlan: kernel ${kernel}, ${SECONDS} s per figure, ${RUNS} runs\n`);
  const runs: { vlan: Figures; plain: Figures }[] = [];
  for (let run = 1; run <= RUNS; run++) {
    // Alternating which goes first, so neither always gets the machine's quieter moment.
    if (run % 2) {
      const v = measure(vlan, run);
      runs.push({ vlan: v, plain: measure(plain, run) });
    } else {
      const u = measure(plain, run);
      runs.push({ vlan: measure(vlan, run), plain: u });
    }
  }
  const stats = readVlanStats(nodePins)!;
  const prog = perFrameNs();

  const keys = Object.keys(runs[0]!.vlan);
  const fmt = (x: number): string => (x >= 1000 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2));
  const cell = (xs: number[]): string => `${fmt(median(xs))} (${fmt(Math.min(...xs))}-${fmt(Math.max(...xs))})`;
  const rows = keys.map((k) => {
    const v = runs.map((r) => r.vlan[k]!);
    const u = runs.map((r) => r.plain[k]!);
    return [k, cell(v), cell(u), (median(v) / median(u)).toFixed(2)];
  });
  const head = ['figure', 'VLAN 100 via eBPF: median (min-max)', 'untagged, same topology', 'vlan/untagged'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (r: string[]): string => r.map((c, i) => c.padEnd(widths[i]!)).join('  ');
  console.log(`\npodnet VLAN path vs untagged, kernel ${kernel}, ${RUNS} runs x ${SECONDS} s, medians (min-max)`);
  console.log(line(head));
  for (const r of rows) console.log(line(r));
  console.log(`node's patu_vlan_stats after the runs: popped ${stats.popped}, pushed ${stats.pushed}, passed ${stats.passed}, ` +
    `dropped ${stats.droppedTagged + stats.droppedNoMap + stats.droppedError}, tag in payload ${stats.tagInPayload}`);
  console.log(`per frame, each program alone (BPF_PROG_TEST_RUN, median of 20,000 single runs, 64 B frame): patu_vlan_link pop ${prog.link} ns, patu_vlan_trunk push ${prog.trunk} ns`);
  console.log('kernel VLAN device: not comparable here (no 8021q module: modprobe 8021q -> "Module 8021q not found"; ' +
    'ip link add link X name X.100 type vlan id 100 -> "Unknown device type"; bridge vlan_filtering 1 -> EOPNOTSUPP)');
  if (JSON_OUT) writeFileSync(JSON_OUT, JSON.stringify({ kernel, seconds: SECONDS, runs, perFrameNs: prog, stats: Object.fromEntries(Object.entries(stats).map(([k, v]) => [k, Number(v)])) }, null, 2));
}

main()
  .catch((e) => {
    process.stderr.write(`bench/podnet-vlan: ${(e as Error).stack ?? String(e)}\n`);
    process.exitCode = 1;
  })
  .finally(() => scratch.cleanup().catch((e) => process.stderr.write(`cleanup: ${(e as Error).message}\n`)));
