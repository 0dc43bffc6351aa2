// Routed pods (issue 14): bridge mode against bpf_redirect_peer delivery, same run,
// same kernel. Two pods on one "node" (a netns the bench makes), in each column:
//
//   bridge:  pod a 10.x.0.2/24 --veth--> br0 (10.x.0.1) --veth--> pod b 10.x.0.3/24
//   routed:  patu's routed mode, pods made by the real plugin (bin/patu ADD with "mode": "routed",
//            run inside the node netns): ARP answered by bpf/routed.c, redirect_peer between pods,
//            counters, the policy check. No socket acceleration ("accel": false) in any column.
//   proto:   the anchor (bench/bpf/routed_min.c): pods 10.x.0.2/32 and .3/32, default via
//            169.254.1.1 (a static neighbour entry, the host veth's MAC); on each host veth's
//            tc ingress a lookup of the destination and bpf_redirect_peer into the other pod.
//            No ARP answering, no counters, no policy check: what redirect_peer itself gains.
//
// Per run and column: sockperf TCP ping-pong 64 B with client and server on different
// CPUs and on one CPU, sockperf UDP ping-pong 64 B (different CPUs), iperf3 1 stream with
// 128 KiB and with 4 KiB writes (and both ends' CPU seconds per GB). Prints each figure's
// median over the runs with the spread (min-max), and each column against the bridge.
//
//   sudo node dist/bench/routed.js [--seconds 3] [--runs 3] [--json out.json]
// Needs root, iperf3, sockperf, taskset, nsenter, build/bench/bpf/routed_min.o, bin/patu. Makes its own netns
// (named after its pid) and removes them at the end; nothing leaves them.
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { BpfObject, type BpfLink } from '../src/kernel/bpf/object.js';
import { TypedMap, bytes, ipv4, structCodec, u32 } from '../src/kernel/bpf/map.js';
import { withNetns } from '../src/kernel/netns.js';
import { Scratch, netnsPath } from '../test/helpers/kernel.js';
import { PATU_BIN, execPlugin } from '../test/helpers/cni.js';
import { readRoutedStats } from '../src/dataplane/routed-tc.js';
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { iperf3, sockperfPingPong, median, type Exec } from './lib/netperf.js';

const args = process.argv.slice(2);
const opt = (name: string, dflt: string): string => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] ? args[i + 1]! : dflt;
};
const SECONDS = Number(opt('seconds', '3'));
const RUNS = Number(opt('runs', '3'));
const JSON_OUT = opt('json', '');
const MIN_OBJ = fileURLToPath(new URL('../../build/bench/bpf/routed_min.o', import.meta.url));

const scratch = new Scratch('patu-bench-routed');
const ip = (...a: string[]): string => execFileSync('ip', a, { encoding: 'utf8' });
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const children: ChildProcess[] = [];
const IPERF_PORT = 5201;
const TCP_PORT = 11111;
const UDP_PORT = 11112;
/** Server on CPU 1; the client on CPU 0 ("across CPUs") or on CPU 1 ("one CPU"). */
const SERVER_CPU = '1';
const GATEWAY = '169.254.1.1';

export interface Column { label: string; client: string; server: string; serverIp: string }

const macOf = (ns: string, dev: string): string =>
  (JSON.parse(ip('-n', ns, '-j', 'link', 'show', dev)) as { address: string }[])[0]!.address;
const ifindexOf = (ns: string, dev: string): number =>
  (JSON.parse(ip('-n', ns, '-j', 'link', 'show', dev)) as { ifindex: number }[])[0]!.ifindex;

/** Node netns + two pod netns, IPv6 off everywhere (no router solicitations in the figures). */
function namespaces(label: string): [string, string, string] {
  const nss = ['node', 'a', 'b'].map((x) => scratch.netns(scratch.name(`${label}-${x}`))) as [string, string, string];
  for (const ns of nss) ip('netns', 'exec', ns, 'sysctl', '-qw', 'net.ipv6.conf.all.disable_ipv6=1', 'net.ipv6.conf.default.disable_ipv6=1');
  ip('netns', 'exec', nss[0], 'sysctl', '-qw', 'net.ipv4.ip_forward=1');
  return nss;
}

function startServers(ns: string, addr: string): void {
  const daemon = (argv: string[]): void => {
    children.push(spawn('ip', ['netns', 'exec', ns, 'taskset', '-c', SERVER_CPU, ...argv], { stdio: 'ignore' }));
  };
  daemon(['iperf3', '-s', '-B', addr, '-p', String(IPERF_PORT)]);
  daemon(['sockperf', 'sr', '-i', addr, '-p', String(TCP_PORT), '--tcp']);
  daemon(['sockperf', 'sr', '-i', addr, '-p', String(UDP_PORT)]);
}

function bridgeColumn(): Column {
  const [node, a, b] = namespaces('br');
  ip('-n', node, 'link', 'add', 'br0', 'type', 'bridge');
  ip('-n', node, 'addr', 'add', '10.213.0.1/24', 'dev', 'br0');
  ip('-n', node, 'link', 'set', 'br0', 'up');
  for (const [ns, host, addr] of [[a, 'ha', '10.213.0.2'], [b, 'hb', '10.213.0.3']] as const) {
    ip('-n', node, 'link', 'add', host, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns);
    ip('-n', node, 'link', 'set', host, 'master', 'br0', 'up');
    ip('-n', ns, 'addr', 'add', `${addr}/24`, 'dev', 'eth0');
    ip('-n', ns, 'link', 'set', 'eth0', 'up');
    ip('-n', ns, 'route', 'add', 'default', 'via', '10.213.0.1');
  }
  startServers(b, '10.213.0.3');
  return { label: 'bridge', client: a, server: b, serverIp: '10.213.0.3' };
}

/** /32 pods behind 169.254.1.1 on veths without a bridge: the host routes; tc may redirect. */
export function routedPods(label: string, prefix: string): { node: string; pods: { ns: string; host: string; addr: string }[] } {
  const [node, a, b] = namespaces(label);
  const pods = [{ ns: a, host: 'ha', addr: `${prefix}.2` }, { ns: b, host: 'hb', addr: `${prefix}.3` }];
  for (const p of pods) {
    ip('-n', node, 'link', 'add', p.host, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', p.ns);
    ip('-n', node, 'link', 'set', p.host, 'up');
    ip('-n', node, 'route', 'add', `${p.addr}/32`, 'dev', p.host);
    ip('-n', p.ns, 'addr', 'add', `${p.addr}/32`, 'dev', 'eth0');
    ip('-n', p.ns, 'link', 'set', 'eth0', 'up');
    ip('-n', p.ns, 'route', 'add', GATEWAY, 'dev', 'eth0', 'scope', 'link');
    ip('-n', p.ns, 'route', 'add', 'default', 'via', GATEWAY, 'dev', 'eth0', 'onlink');
  }
  return { node, pods };
}

interface MinPod { ifindex: number; mac: Buffer; gw: Buffer }
const minPodC = structCodec<MinPod>({ ifindex: u32, mac: bytes(6), gw: bytes(6) });
const macBytes = (m: string): Buffer => Buffer.from(m.split(':').map((x) => parseInt(x, 16)));
let proto: { obj: BpfObject; links: BpfLink[] } | undefined;

function protoColumn(): Column {
  const { node, pods } = routedPods('pr', '10.214.0');
  const obj = BpfObject.open(MIN_OBJ);
  obj.load();
  const links: BpfLink[] = [];
  proto = { obj, links };
  const map = TypedMap.fromFd(obj.map('min_pods').fd, ipv4, minPodC);
  for (const p of pods) {
    const hostMac = macOf(node, p.host);
    // The prototype answers no ARP: the pod's gateway entry is static.
    ip('-n', p.ns, 'neigh', 'replace', GATEWAY, 'lladdr', hostMac, 'dev', 'eth0', 'nud', 'permanent');
    map.update(p.addr, { ifindex: ifindexOf(node, p.host), mac: macBytes(macOf(p.ns, 'eth0')), gw: macBytes(hostMac) });
    withNetns(netnsPath(node), () => links.push(obj.program('min_redirect_peer').attachTcx(ifindexOf(node, p.host), 'ingress')));
  }
  startServers(pods[1]!.ns, pods[1]!.addr);
  return { label: 'redirect_peer prototype', client: pods[0]!.ns, server: pods[1]!.ns, serverIp: pods[1]!.addr };
}

let routedPins = '';

/** Two pods by the real plugin in routed mode, in a node netns of their own (nsenter --net: bpffs stays ours). */
async function routedColumn(): Promise<Column> {
  const nss = namespaces('rt');
  const [node, a, b] = nss;
  const dir = mkdtempSync(join(tmpdir(), 'patu-bench-routed-'));
  scratch.defer(`dir ${dir}`, () => rmSync(dir, { recursive: true, force: true }));
  const bin = join(dir, 'patu-in-node');
  writeFileSync(bin, `#!/bin/sh\nexec nsenter --net=${netnsPath(node)} ${PATU_BIN} "$@"\n`);
  chmodSync(bin, 0o755);
  routedPins = scratch.pinRoot('rt');
  const conf = {
    cniVersion: '1.1.0', name: `bench-routed-${process.pid}`, type: 'patu', mode: 'routed', masquerade: false, accel: false,
    pinRoot: routedPins, agentSocket: join(dir, 'no-agent.sock'),
    ipam: { ranges: [[{ subnet: '10.215.0.0/24' }]], dataDir: join(dir, 'ipam') },
  };
  const ips: string[] = [];
  for (const ns of [a, b]) {
    const r = await execPlugin(bin, 'ADD', conf, { containerId: `${ns}-ctr`, netns: netnsPath(ns), ifname: 'eth0' });
    if (r.code !== 0) throw new Error(`routed ADD in ${ns}: ${r.stdout}${r.stderr}`);
    ips.push(String(r.json.ips[0].address).split('/')[0]!);
    scratch.defer(`DEL ${ns}`, async () => void (await execPlugin(bin, 'DEL', conf, { containerId: `${ns}-ctr`, netns: netnsPath(ns), ifname: 'eth0' })));
  }
  startServers(b, ips[1]!);
  return { label: 'routed (patu)', client: a, server: b, serverIp: ips[1]! };
}

const execIn = (ns: string): Exec => (argv, timeoutMs) =>
  execFileSync('ip', ['netns', 'exec', ns, ...argv], { encoding: 'utf8', timeout: timeoutMs, maxBuffer: 64 << 20 });

type Figures = Record<string, number>;
function measure(c: Column, run: number): Figures {
  const ex = execIn(c.client);
  const f: Figures = {};
  const note = (s: string): void => void process.stderr.write(`  run ${run} ${c.label}: ${s}\n`);
  for (const [tag, cpu] of [['across CPUs', '0'], ['one CPU', SERVER_CPU]] as const) {
    const p = sockperfPingPong(ex, c.serverIp, TCP_PORT, { seconds: SECONDS, size: 64, prefix: ['taskset', '-c', cpu] });
    f[`TCP RR 64 B ${tag} /s`] = p.rrPerSec;
    f[`TCP RR 64 B ${tag} p50 us`] = p.p50us;
    note(`TCP RR ${tag} ${p.rrPerSec.toFixed(0)}/s p50 ${p.p50us} us`);
  }
  const u = sockperfPingPong(ex, c.serverIp, UDP_PORT, { seconds: SECONDS, size: 64, prefix: ['taskset', '-c', '0'], udp: true });
  f['UDP RR 64 B across CPUs /s'] = u.rrPerSec;
  f['UDP RR 64 B across CPUs p50 us'] = u.p50us;
  note(`UDP RR ${u.rrPerSec.toFixed(0)}/s`);
  for (const len of ['128K', '4K']) {
    const s = iperf3(ex, c.serverIp, IPERF_PORT, { seconds: SECONDS, streams: 1, len });
    f[`TCP 1 stream ${len} writes Gbit/s`] = s.gbps;
    f[`TCP 1 stream ${len} writes CPU s/GB`] = s.cpuSecPerGB;
    note(`iperf3 ${len} ${s.gbps.toFixed(2)} Gbit/s, ${s.cpuSecPerGB.toFixed(3)} CPU s/GB`);
  }
  return f;
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('bench/routed needs root');
  scratch.cleanupOnSignals();
  scratch.defer('servers', async () => {
    for (const p of children) p.kill('SIGKILL');
    await sleep(200);
  });
  scratch.defer('prototype', () => {
    for (const l of proto?.links ?? []) l.destroy();
    proto?.obj.close();
  });
  const columns = [bridgeColumn(), protoColumn(), await routedColumn()];
  await sleep(700);
  for (const c of columns) {
    const r = spawnSync('ip', ['netns', 'exec', c.client, 'ping', '-c', '1', '-W', '2', c.serverIp], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`${c.label}: no answer from ${c.serverIp}: ${r.stdout}${r.stderr}`);
  }
  const kernel = execFileSync('uname', ['-r'], { encoding: 'utf8' }).trim();
  const load = () => execFileSync('cat', ['/proc/loadavg'], { encoding: 'utf8' }).split(' ').slice(0, 3).join(' ');
  const loadBefore = load();
  process.stderr.write(`bench/routed: kernel ${kernel}, ${SECONDS} s per figure, ${RUNS} runs, load ${loadBefore}\n`);
  const runs: Figures[][] = [];
  for (let run = 1; run <= RUNS; run++) {
    // Rotating which column goes first, so none always gets the machine's quieter moment.
    const order = columns.map((_, i) => (i + run) % columns.length);
    const got: Figures[] = [];
    for (const i of order) got[i] = measure(columns[i]!, run);
    runs.push(got);
  }
  const keys = Object.keys(runs[0]![0]!);
  const fmt = (x: number): string => (x >= 1000 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(3));
  const cell = (xs: number[]): string => `${fmt(median(xs))} (${fmt(Math.min(...xs))}-${fmt(Math.max(...xs))})`;
  const head = ['figure', ...columns.map((c) => `${c.label}: median (min-max)`), ...columns.slice(1).map((c) => `${c.label}/bridge`)];
  const rows = keys.map((k) => {
    const per = columns.map((_, i) => runs.map((r) => r[i]![k]!));
    return [k, ...per.map(cell), ...per.slice(1).map((xs) => (median(xs) / median(per[0]!)).toFixed(2))];
  });
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (r: string[]): string => r.map((c, i) => c.padEnd(widths[i]!)).join('  ');
  console.log(`\nrouted pods vs bridge, kernel ${kernel}, ${RUNS} runs x ${SECONDS} s, medians (min-max); load before ${loadBefore}, after ${load()}`);
  console.log(line(head));
  for (const r of rows) console.log(line(r));
  const st = readRoutedStats(routedPins);
  if (st) console.log(`routed (patu) program counters after the runs: redirected ${st.redirected}, to the stack ${st.stack}, policy fallback ${st.policy}, ARP answered ${st.arp}, ND answered ${st.nd}`);
  const rr = (label: string, k: string): number => median(runs.map((r) => r[columns.findIndex((c) => c.label === label)]![k]!));
  for (const k of keys.filter((x) => x.endsWith('/s'))) {
    const br = rr('bridge', k);
    const gainProto = rr('redirect_peer prototype', k) - br;
    const gainRouted = rr('routed (patu)', k) - br;
    console.log(`${k}: routed/bridge ${(rr('routed (patu)', k) / br).toFixed(2)}x; routed's gain / prototype's gain ${gainProto > 0 ? `${((gainRouted / gainProto) * 100).toFixed(0)}%` : 'n/a (the prototype gained nothing here)'}`);
  }
  // Round-trip latency is what the path changes; at a high machine load the rates above also
  // carry time the benchmark's processes waited for a CPU, the one-CPU p50 much less so.
  for (const k of keys.filter((x) => x.endsWith('p50 us'))) {
    const br = rr('bridge', k);
    const gainProto = br - rr('redirect_peer prototype', k);
    const gainRouted = br - rr('routed (patu)', k);
    console.log(`${k}: bridge/routed ${(br / rr('routed (patu)', k)).toFixed(2)}x (bridge/prototype ${(br / rr('redirect_peer prototype', k)).toFixed(2)}x); routed's latency gain / prototype's ${gainProto > 0 ? `${((gainRouted / gainProto) * 100).toFixed(0)}%` : 'n/a'}`);
  }
  if (JSON_OUT) writeFileSync(JSON_OUT, JSON.stringify({ kernel, seconds: SECONDS, columns: columns.map((c) => c.label), runs }, null, 2));
}

main()
  .catch((e) => {
    process.stderr.write(`bench/routed: ${(e as Error).stack ?? String(e)}\n`);
    process.exitCode = 1;
  })
  .finally(() => scratch.cleanup().catch((e) => process.stderr.write(`cleanup: ${(e as Error).message}\n`)));
