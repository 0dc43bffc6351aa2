// patu's NetworkPolicy data plane as bench/policy.ts drives it: the bench's pods and N policies compiled by the
// policy model (src/policy/compile.ts, what the engine runs on every change) into the maps (PolicyDataplane.sync),
// the tc programs attached on the pods' node-side veths (in the bench's node netns), BPF_PROG_TEST_RUN of the
// pinned programs, and the tcp packets it feeds them.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PolicyDataplane } from '../../src/dataplane/policy-tc.js';
import { PolicyEngine } from '../../src/policy/engine.js';
import type { PolicyState } from '../../src/policy/types.js';
import { withNetns } from '../../src/kernel/netns.js';
import { BENCH_NS, benchPods, benchPolicies } from './policy-objects.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));

export function benchState(n: number, clientIp: string, serverIp: string, nodeAddress: string): PolicyState {
  return {
    namespaces: [{ name: BENCH_NS, labels: { 'kubernetes.io/metadata.name': BENCH_NS, bench: 'policy' } }],
    pods: benchPods(clientIp, serverIp).map((p) => ({ namespace: BENCH_NS, name: p.name, labels: p.labels, ips: [p.ip], ports: p.ports, local: true })),
    policies: benchPolicies(n),
    nodeAddresses: [nodeAddress],
  };
}

const QUIET = { info: () => {}, warn: () => {}, error: (f: object, msg: string) => console.error(`policy engine: ${msg} ${JSON.stringify(f)}`) };

export class PatuPolicy {
  private readonly extra = new Map<string, { dp: PolicyDataplane; pin: string; engine: PolicyEngine }>();
  private readonly engine: PolicyEngine;
  private constructor(
    private readonly dp: PolicyDataplane,
    private readonly pinRoot: string,
    private readonly nodeNs: string,
    private readonly ifindexByIp: Map<string, number>,
    private readonly clientIp: string,
    private readonly serverIp: string,
    private readonly gateway: string,
  ) {
    this.engine = new PolicyEngine(dp, QUIET, { namesFile: '' });
  }

  static open(pinRoot: string, nodeNs: string, topo: { clientIfindex: number; serverIfindex: number }, clientIp: string, serverIp: string, gateway: string): PatuPolicy {
    const pp = new PatuPolicy(PolicyDataplane.open({ pinRoot }), pinRoot, nodeNs, new Map([[clientIp, topo.clientIfindex], [serverIp, topo.serverIfindex]]), clientIp, serverIp, gateway);
    pp.bind(pp.dp);
    return pp;
  }

  /** What CNI ADD does: each pod's address on its veth (sync fills the endpoints' ifindex from it: anti-spoof). */
  private bind(dp: PolicyDataplane): void {
    for (const [ip, ifindex] of this.ifindexByIp) dp.bindDevice(ip, ifindex);
  }

  /**
   * Programs N policies through the policy engine (what the agent runs on every change: compile, the diff into the
   * maps, conntrack of denied flows flushed), then forgets all conntrack so every verdict after is taken anew.
   */
  apply(n: number, engine: PolicyEngine = this.engine, dp: PolicyDataplane = this.dp): void {
    const r = engine.setState(benchState(n, this.clientIp, this.serverIp, this.gateway));
    if (r.fallback || r.problems.length) throw new Error(`policy engine at ${n} policies: ${r.fallback ? 'deny-only fallback; ' : ''}${r.problems.map((p) => p.message).join('; ')}`);
    dp.flushConntrack(() => true);
  }

  attach(topo: { clientIfindex: number; serverIfindex: number }): void {
    withNetns(`/run/netns/${this.nodeNs}`, () => {
      this.dp.attach(topo.clientIfindex);
      this.dp.attach(topo.serverIfindex);
    });
  }

  detach(topo: { clientIfindex: number; serverIfindex: number }): void {
    withNetns(`/run/netns/${this.nodeNs}`, () => {
      this.dp.detach(topo.clientIfindex);
      this.dp.detach(topo.serverIfindex);
    });
  }

  setMonitor(on: boolean): void {
    this.dp.setMonitor(on);
  }

  /**
   * ns per run of the program on `packet` (the kernel's mean over `repeat`), on the pod's veth as the node netns
   * sees it (the anti-spoof check compares it), with `dp` (default: the bench's own programs).
   */
  testRun(prog: 'from_pod' | 'to_pod', packet: Buffer, repeat: number, dp: PolicyDataplane = this.dp): { ns: number; retval: number } {
    const ifindex = this.ifindexByIp.get(prog === 'from_pod' ? this.clientIp : this.serverIp)!;
    const r = withNetns(`/run/netns/${this.nodeNs}`, () => dp.testRun(prog === 'from_pod' ? 'fromPod' : 'toPod', { data: packet, repeat, skb: { ifindex } }));
    return { ns: r.durationNs, retval: r.retval };
  }

  /** The same with another build of the programs (objectDir/policy.o), loaded under its own pin root with N policies. */
  testRunWith(objectDir: string, prog: 'from_pod' | 'to_pod', packet: Buffer, repeat: number, n: number): { ns: number; retval: number } {
    let e = this.extra.get(objectDir);
    if (!e) {
      const pin = `${this.pinRoot}-v${this.extra.size + 1}`;
      const dp = PolicyDataplane.open({ pinRoot: pin, objectDir });
      this.extra.set(objectDir, (e = { dp, pin, engine: new PolicyEngine(dp, QUIET, { namesFile: '' }) }));
      this.bind(dp);
      this.apply(n, e.engine, dp);
    }
    return this.testRun(prog, packet, repeat, e.dp);
  }

  close(): void {
    for (const { dp, pin } of this.extra.values()) {
      dp.close();
      rmSync(pin, { recursive: true, force: true });
    }
    this.dp.close();
  }
}

/**
 * bpf/policy.c with its ring-buffer code compiled out, into `tmp`/noevents/policy.o: built with -DPATU_POL_NO_EVENTS
 * when the source has that guard, else from a copy whose event() returns at once (the compiler then drops the cfg
 * lookup and the reserve/submit). Undefined when neither applies (the figure is then left out, said so).
 */
export function buildNoEventsObject(tmp: string): { dir: string; how: string } | undefined {
  const src = join(ROOT, 'bpf', 'policy.c');
  if (!existsSync(src)) return undefined;
  const text = readFileSync(src, 'utf8');
  const dir = join(tmp, 'noevents');
  mkdirSync(dir, { recursive: true });
  let file = src;
  let how = '-DPATU_POL_NO_EVENTS';
  if (!/PATU_POL_NO_EVENTS/.test(text)) {
    const sig = /(static __always_inline void event\([^)]*\)\s*\{)/;
    if (!sig.test(text)) return undefined;
    file = join(dir, 'policy.c');
    writeFileSync(file, text.replace(sig, '$1\n\treturn;'));
    how = 'event() emptied';
  }
  const clang = spawnSync('sh', ['-c', 'command -v clang-16 || command -v clang'], { encoding: 'utf8' }).stdout.trim();
  const r = spawnSync(clang, ['-target', 'bpf', '-O2', '-g', '-DPATU_POL_NO_EVENTS', '-I', join(ROOT, 'bpf'), '-I/usr/include/x86_64-linux-gnu', '-c', file, '-o', join(dir, 'policy.o')], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`clang (no events) bpf/policy.c: ${r.stderr}`);
  return { dir, how };
}

// ---------------------------------------------------------------- packets

const csum = (b: Buffer, start: number, len: number, init = 0): number => {
  let s = init;
  for (let i = 0; i < len; i += 2) s += (b[start + i]! << 8) + (i + 1 < len ? b[start + i + 1]! : 0);
  while (s >> 16) s = (s & 0xffff) + (s >> 16);
  return ~s & 0xffff;
};
const ipBytes = (a: string): number[] => a.split('.').map(Number);

/** Ethernet + IPv4 + TCP (20 B header, no payload), checksums filled in. */
export function tcpPacket(p: { src: string; dst: string; sport: number; dport: number; flags: 'syn' | 'ack' }): Buffer {
  const b = Buffer.alloc(14 + 20 + 20);
  b.set([0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01], 0);
  b.writeUInt16BE(0x0800, 12);
  const ipo = 14;
  b[ipo] = 0x45;
  b.writeUInt16BE(40, ipo + 2);
  b.writeUInt16BE(0x4000, ipo + 6); // DF
  b[ipo + 8] = 64;
  b[ipo + 9] = 6;
  b.set(ipBytes(p.src), ipo + 12);
  b.set(ipBytes(p.dst), ipo + 16);
  b.writeUInt16BE(csum(b, ipo, 20), ipo + 10);
  const t = ipo + 20;
  b.writeUInt16BE(p.sport, t);
  b.writeUInt16BE(p.dport, t + 2);
  b.writeUInt32BE(1000, t + 4);
  b.writeUInt32BE(p.flags === 'ack' ? 2000 : 0, t + 8);
  b[t + 12] = 5 << 4;
  b[t + 13] = p.flags === 'syn' ? 0x02 : 0x10;
  b.writeUInt16BE(65535, t + 14);
  // Pseudo-header sum, then the segment.
  const pseudo = Buffer.alloc(12);
  pseudo.set(ipBytes(p.src), 0);
  pseudo.set(ipBytes(p.dst), 4);
  pseudo[9] = 6;
  pseudo.writeUInt16BE(20, 10);
  const ps = (~csum(pseudo, 0, 12)) & 0xffff;
  b.writeUInt16BE(csum(b, t, 20, ps), t + 16);
  return b;
}
