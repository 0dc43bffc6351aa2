// A scratch "node" for fuzzing the real plugin: its own host network namespace
// (so a request that talks patu into touching `lo` or another link touches
// ours, never the machine's), pod namespaces, an IPAM directory, a pin root
// with socket acceleration set up (so the pod registry is live) in a scratch
// cgroup, and `bin/patu agent` running inside the host namespace.
//
// bin/patu runs under `nsenter --net=<host ns>`: exactly the binary a runtime
// execs, in a namespace of ours. `ip netns exec` is not used for it because it
// remounts /sys, hiding bpffs and therefore the pins.
//
// Snapshots read the kernel with `ip` and `bpftool` and the disk directly: an
// oracle independent of patu's own netlink and map code.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join, relative } from 'node:path';
import { PATU_BIN } from '../helpers/cni.js';
import { netnsPath, type Scratch } from '../helpers/kernel.js';
import type { NetnsKind, NodeContext } from './cni-gen.js';

export type Flavour = 'inproc' | 'agent';

export interface ExecOutcome {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
  ms: number;
}

export interface NodeSnapshot {
  links: Map<string, string>;
  addrs: Set<string>;
  pods: Map<string, string>;
  ipam: Set<string>;
  pins: Set<string>;
  registry: Set<string>;
  work: Set<string>;
}

export interface FuzzNodeOptions {
  /** Tells two nodes of one Scratch apart (names of netns, pins, cgroup). */
  tag: string;
  pods?: number;
  /** Start the agent (and with it acceleration, so the pod registry exists). */
  agent?: boolean;
}

const PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
export const SUBNET_PREFIX = '10.250.0';
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function sh(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 20_000 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}: ${(r.stderr ?? '').trim()}`);
  return r.stdout;
}
const ipJson = (args: string[]): any[] => {
  const out = sh('ip', ['-j', ...args]).trim();
  return out ? JSON.parse(out) : [];
};

export class AgentProc {
  log = '';
  private exited: Promise<void>;
  constructor(readonly child: ReturnType<typeof spawn>) {
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (this.log += d));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (this.log += d));
    this.exited = new Promise((r) => child.on('close', () => r()));
  }
  get pid(): number {
    return this.child.pid!;
  }
  alive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }
  served(): number {
    return (this.log.match(/"msg":"cni request"/g) ?? []).length;
  }
  rssKiB(): number {
    try {
      const m = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${this.pid}/status`, 'utf8'));
      return m ? Number(m[1]) : 0;
    } catch {
      return 0;
    }
  }
  async kill(signal: NodeJS.Signals = 'SIGKILL', waitMs = 5_000): Promise<void> {
    if (!this.alive()) return;
    this.child.kill(signal);
    const t = setTimeout(() => this.child.kill('SIGKILL'), waitMs);
    await this.exited;
    clearTimeout(t);
  }
}

export class FuzzNode implements NodeContext {
  readonly work: string;
  readonly dataDir: string;
  readonly hostNs: string;
  readonly hostNsPath: string;
  readonly pinRoot: string;
  readonly cgroup: string;
  readonly socket: string;
  readonly bridge = 'fzbr0';
  readonly probe = 'fzprobe0';
  readonly net: string;
  readonly podNs: string[] = [];
  agent: AgentProc | undefined;
  base: Record<string, unknown>;
  vars: Record<string, string>;
  pathEnv = { PATH };
  /** The pod netns the next case uses. */
  currentPod = 0;

  private constructor(readonly scratch: Scratch, readonly opts: FuzzNodeOptions) {
    this.work = scratch.tmpDir('patu-fuzz');
    this.dataDir = join(this.work, 'ipam');
    this.hostNs = scratch.netns(scratch.name(`${opts.tag}h`));
    this.hostNsPath = netnsPath(this.hostNs);
    this.pinRoot = scratch.pinRoot(opts.tag);
    this.cgroup = opts.agent ? scratch.cgroup(opts.tag) : '';
    this.socket = join(this.work, 'agent.sock');
    this.net = `fz${process.pid.toString(36)}`;
    for (let i = 0; i < (opts.pods ?? 2); i++) this.podNs.push(scratch.netns(scratch.name(`${opts.tag}p${i}`)));
    // A link that is not a bridge, for `"bridge": "<it>"`: patu must leave it alone.
    sh('ip', ['-n', this.hostNs, 'link', 'add', this.probe, 'type', 'veth', 'peer', 'name', 'fzprobe1']);
    sh('ip', ['-n', this.hostNs, 'link', 'set', this.probe, 'up']);
    sh('mkfifo', [join(this.work, 'fifo')]);
    mkdirSync(join(this.work, 'dir'));
    writeFileSync(join(this.work, 'file'), 'not a namespace\n');
    this.base = {
      cniVersion: '1.1.0',
      name: this.net,
      type: 'patu',
      bridge: this.bridge,
      mtu: 1500,
      hairpin: true,
      masquerade: true,
      clusterCIDR: '10.250.0.0/16',
      ipam: { ranges: [[{ subnet: `${SUBNET_PREFIX}.0/24` }]], dataDir: this.dataDir },
      pinRoot: this.pinRoot,
    };
    this.vars = {
      '@@BRIDGE@@': this.bridge,
      '@@PREFIX@@': SUBNET_PREFIX,
      '@@PINROOT@@': this.pinRoot,
      '@@DATADIR@@': this.dataDir,
      '@@WORK@@': this.work,
      '@@NET@@': this.net,
      '@@PROBE@@': this.probe,
      '@@NETNS@@': netnsPath(this.podNs[0]!),
    };
  }

  static async create(scratch: Scratch, opts: FuzzNodeOptions): Promise<FuzzNode> {
    const n = new FuzzNode(scratch, opts);
    if (opts.agent) await n.startAgent();
    // One plain ADD and DEL: the bridge, its gateway address and the network's IPAM
    // directory exist from then on by design, and are part of every baseline.
    const env = { PATH, CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'warmup', CNI_NETNS: netnsPath(n.podNs[0]!), CNI_IFNAME: 'eth0', CNI_PATH: '/opt/cni/bin' };
    const conf = Buffer.from(JSON.stringify(n.base));
    const add = await n.exec('inproc', env, conf, 60_000);
    if (add.code !== 0) throw new Error(`fuzz node: a plain ADD failed: ${add.stdout} ${add.stderr}`);
    const del = await n.exec('inproc', { ...env, CNI_COMMAND: 'DEL' }, conf, 60_000);
    if (del.code !== 0) throw new Error(`fuzz node: a plain DEL failed: ${del.stdout} ${del.stderr}`);
    return n;
  }

  netnsPath(kind: NetnsKind): string | undefined {
    switch (kind) {
      case 'pod': return netnsPath(this.podNs[this.currentPod]!);
      case 'unset': return undefined;
      case 'empty': return '';
      case 'missing': return join(this.work, 'missing');
      case 'fifo': return join(this.work, 'fifo');
      case 'dir': return join(this.work, 'dir');
      case 'devzero': return '/dev/zero';
      case 'devnull': return '/dev/null';
      case 'procfile': return '/proc/self/status';
      case 'regular': return join(this.work, 'file');
      case 'relative': return 'netns/pod';
    }
  }

  async startAgent(): Promise<AgentProc> {
    const args = ['--net=' + this.hostNsPath, '--', PATU_BIN, 'agent', '--cni-socket', this.socket, '--log-level', 'info', '--accel', '--pin-root', this.pinRoot, '--cgroup', this.cgroup];
    const child = spawn('nsenter', args, { env: { PATH }, cwd: this.work, stdio: ['ignore', 'pipe', 'pipe'] });
    const a = new AgentProc(child);
    if (!this.agent) this.scratch.defer('fuzz agent', () => this.agent?.kill('SIGTERM'));
    this.agent = a;
    const end = Date.now() + 20_000;
    while (!a.log.includes('serving CNI requests')) {
      if (!a.alive() || Date.now() > end) throw new Error(`patu agent did not start (exit ${a.child.exitCode}): ${a.log.slice(-2000)}`);
      await sleep(50);
    }
    return a;
  }

  /** Runs bin/patu once, as a runtime does, in the node's host namespace. */
  exec(flavour: Flavour, env: Record<string, string>, stdin: Buffer, timeoutMs: number): Promise<ExecOutcome> {
    const full = { ...env, ...(flavour === 'agent' ? { PATU_AGENT_SOCKET: this.socket } : { PATU_NO_AGENT: '1' }) };
    const t0 = performance.now();
    return new Promise((resolve, reject) => {
      const child = spawn('nsenter', ['--net=' + this.hostNsPath, '--', PATU_BIN], { env: full, cwd: this.work, stdio: ['pipe', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      let timedOut = false;
      child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
      child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
      const timer = setTimeout(() => {
        timedOut = true;
        child.kill('SIGKILL');
      }, timeoutMs);
      child.on('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
      child.on('close', (code, signal) => {
        clearTimeout(timer);
        resolve({ code, signal, stdout, stderr, timedOut, ms: performance.now() - t0 });
      });
      child.stdin!.on('error', () => {}); // EPIPE: the plugin need not read everything
      child.stdin!.end(stdin);
    });
  }

  /** Starts bin/patu and returns at once (the kill storm kills it mid-command). */
  launch(flavour: Flavour, env: Record<string, string>, stdin: Buffer): { child: ReturnType<typeof spawn>; done: Promise<ExecOutcome> } {
    const full = { ...env, ...(flavour === 'agent' ? { PATU_AGENT_SOCKET: this.socket } : { PATU_NO_AGENT: '1' }) };
    const t0 = performance.now();
    const child = spawn('nsenter', ['--net=' + this.hostNsPath, '--', PATU_BIN], { env: full, cwd: this.work, stdio: ['pipe', 'pipe', 'pipe'] });
    const done = new Promise<ExecOutcome>((resolve) => {
      let stdout = '';
      let stderr = '';
      child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
      child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
      const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
      child.on('close', (code, signal) => {
        clearTimeout(timer);
        resolve({ code, signal, stdout, stderr, timedOut: false, ms: performance.now() - t0 });
      });
    });
    child.stdin!.on('error', () => {});
    child.stdin!.end(stdin);
    return { child, done };
  }

  /**
   * Asks the agent for VERSION over its socket directly (no launcher, so no
   * fallback can answer instead). Returns a problem, or undefined when it answered.
   */
  agentAnswers(timeoutMs = 5_000): Promise<string | undefined> {
    return new Promise((resolve) => {
      let out = '';
      const s = connect(this.socket);
      const t = setTimeout(() => {
        s.destroy();
        resolve(`agent did not answer VERSION within ${timeoutMs} ms`);
      }, timeoutMs);
      s.on('error', (e) => {
        clearTimeout(t);
        resolve(`agent socket: ${e.message}`);
      });
      s.on('data', (d) => (out += d.toString()));
      s.on('end', () => {
        clearTimeout(t);
        const nl = out.indexOf('\n');
        const code = out.slice(0, nl);
        try {
          const v = JSON.parse(out.slice(nl + 1)) as { supportedVersions?: string[] };
          resolve(code === '0' && Array.isArray(v.supportedVersions) ? undefined : `agent answered VERSION with ${JSON.stringify(out.slice(0, 200))}`);
        } catch {
          resolve(`agent answered VERSION with ${JSON.stringify(out.slice(0, 200))}`);
        }
      });
      s.end('CNI_COMMAND=VERSION\n\n');
    });
  }

  // ---------------------------------------------------------------------------
  // What the node holds

  snapshot(pods: string[] = this.podNs): NodeSnapshot {
    // `ip -d addr` lists links (with their kind) and addresses in one call.
    const links = new Map<string, string>();
    const addrs = new Set<string>();
    for (const l of ipJson(['-n', this.hostNs, '-d', 'addr', 'show'])) {
      const kind = l.linkinfo?.info_kind ?? l.link_type;
      const up = (l.flags as string[]).includes('UP');
      links.set(l.ifname, `${kind} mtu=${l.mtu} master=${l.master ?? '-'} ${up ? 'up' : 'down'}`);
      for (const a of l.addr_info ?? []) if (a.scope !== 'link') addrs.add(`${l.ifname} ${a.local}/${a.prefixlen}`);
    }
    const podState = new Map<string, string>();
    for (const ns of pods) {
      const parts: string[] = [];
      for (const l of ipJson(['-n', ns, 'addr', 'show'])) {
        parts.push(`${l.ifname}[${(l.addr_info ?? []).filter((a: any) => a.scope !== 'link').map((a: any) => `${a.local}/${a.prefixlen}`).join(',')}]`);
      }
      podState.set(ns, parts.sort().join(' '));
    }
    return {
      links,
      addrs,
      pods: podState,
      ipam: new Set(walk(this.dataDir).filter((p) => !/(^|\/)(lock|last_reserved_ip\.\d+)$/.test(p))),
      pins: new Set([...walk(this.pinRoot).map((p) => `pin ${p}`), ...(existsSync(`${this.pinRoot}-absent`) ? ['created ' + this.pinRoot + '-absent'] : [])]),
      registry: new Set(this.registry()),
      work: new Set(readdirSync(this.work)),
    };
  }

  /** Keys of the accel pod registry (bpftool: not patu's map code). */
  registry(): string[] {
    const pin = join(this.pinRoot, 'accel', 'patu_pods');
    if (!existsSync(pin)) return [];
    const out = sh('bpftool', ['-j', 'map', 'dump', 'pinned', pin]).trim();
    const entries = out ? (JSON.parse(out) as { key: string[] | number[] }[]) : [];
    return entries.map((e) => e.key.map((b) => Number(b)).join('.'));
  }

  /** Differences, one line each; empty when nothing changed. */
  static diff(a: NodeSnapshot, b: NodeSnapshot): string[] {
    const out: string[] = [];
    for (const [k, v] of b.links) {
      const was = a.links.get(k);
      if (was === undefined) out.push(`+ host link ${k} ${v}`);
      else if (was !== v) out.push(`~ host link ${k}: ${was} -> ${v}`);
    }
    for (const k of a.links.keys()) if (!b.links.has(k)) out.push(`- host link ${k}`);
    const sets: [string, Set<string>, Set<string>][] = [
      ['host address', a.addrs, b.addrs],
      ['IPAM file', a.ipam, b.ipam],
      ['pins', a.pins, b.pins],
      ['accel registry entry', a.registry, b.registry],
      ['entry in the node work dir', a.work, b.work],
    ];
    for (const [what, x, y] of sets) {
      for (const v of y) if (!x.has(v)) out.push(`+ ${what} ${v}`);
      for (const v of x) if (!y.has(v)) out.push(`- ${what} ${v}`);
    }
    for (const [ns, v] of b.pods) if (a.pods.get(ns) !== v) out.push(`~ pod netns ${ns}: ${a.pods.get(ns)} -> ${v}`);
    return out;
  }

  /**
   * Puts the node back to `to`: links and addresses that appeared go, pods are
   * emptied, IPAM files removed. Used after a successful ADD+DEL (the bridge a
   * new name created stays by design) and in keep-going runs after a leak.
   */
  restore(to: NodeSnapshot, now: NodeSnapshot = this.snapshot()): void {
    for (const k of now.links.keys()) if (!to.links.has(k)) spawnSync('ip', ['-n', this.hostNs, 'link', 'del', k], { stdio: 'ignore' });
    for (const a of now.addrs) {
      if (to.addrs.has(a)) continue;
      const [dev, addr] = a.split(' ');
      if (now.links.has(dev!) && to.links.has(dev!)) spawnSync('ip', ['-n', this.hostNs, 'addr', 'del', addr!, 'dev', dev!], { stdio: 'ignore' });
    }
    for (const [ns, v] of now.pods) {
      if (to.pods.get(ns) === v) continue;
      for (const l of ipJson(['-n', ns, 'link', 'show'])) if (l.ifname !== 'lo') spawnSync('ip', ['-n', ns, 'link', 'del', l.ifname], { stdio: 'ignore' });
    }
    for (const p of now.ipam) if (!to.ipam.has(p)) spawnSync('rm', ['-f', join(this.dataDir, p)]);
    for (const k of now.registry) {
      if (to.registry.has(k)) continue;
      const bytes = k.split('.').map((b) => Number(b).toString(16).padStart(2, '0'));
      spawnSync('bpftool', ['map', 'delete', 'pinned', join(this.pinRoot, 'accel', 'patu_pods'), 'key', 'hex', ...bytes], { stdio: 'ignore' });
    }
    for (const w of now.work) if (!to.work.has(w)) spawnSync('rm', ['-rf', join(this.work, w)]);
    spawnSync('rm', ['-rf', `${this.pinRoot}-absent`]);
  }
}

function walk(dir: string, base = dir, out: string[] = []): string[] {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return out;
  }
  for (const n of names) {
    const p = join(dir, n);
    let st;
    try {
      st = statSync(p);
    } catch {
      continue;
    }
    if (st.isDirectory()) walk(p, base, out);
    else out.push(relative(base, p));
  }
  return out;
}
