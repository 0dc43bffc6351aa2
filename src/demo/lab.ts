// A small "edge node" made of network namespaces, for `patu demo` and the
// benchmarks: pods are netns created here, wired by the real patu CNI plugin
// (bin/patu, exec'd exactly like a runtime does), with their processes placed in a
// cgroup of the lab's own, so patu's cgroup eBPF programs can be attached there and
// never to the host's root cgroup.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync, rmdirSync } from 'node:fs';
import { hostVethName } from '../dataplane/names.js';
import { DEFAULTS } from '../defaults.js';
import { join, dirname } from 'node:path';
import { patuHome } from '../home.js';

const REPO = patuHome();
const REPO_BIN = join(REPO, 'bin', 'patu');

export interface LabOptions {
  /** Prefix of every name the lab creates (netns, bridge, cgroup, pins, state dir). */
  name: string;
  subnet: string;
  pods: string[];
  /** The cgroup2 directory the lab's own cgroup is made in (the caller finds it: src/kernel/cgroup.ts). */
  cgroupParent: string;
  /** The plugin binary, exec'd like a runtime does (default: bin/patu of this checkout). */
  patuBin?: string;
  /** PATH handed to the plugin, as a runtime would (default: the system directories). */
  path?: string;
}

export interface Pod {
  name: string;
  netns: string;
  containerId: string;
  ip: string;
  addMs: number;
  /** The ADD result, which a runtime caches and hands back as prevResult. */
  result: unknown;
}

export interface CniRun {
  code: number;
  stdout: string;
  stderr: string;
  ms: number;
}

export class Lab {
  readonly opts: LabOptions;
  readonly bridge: string;
  readonly stateDir: string;
  readonly pinRoot: string;
  readonly cgroup: string;
  readonly patuBin: string;
  readonly pods = new Map<string, Pod>();
  /** Set while startAgent()'s agent runs: CNI calls then go through it. */
  agentSocket: string | undefined;
  private agent: ChildProcess | undefined;
  private readonly children = new Set<ChildProcess>();

  constructor(opts: LabOptions) {
    this.opts = opts;
    this.bridge = `${opts.name}0`.slice(0, 15);
    this.stateDir = `/run/${opts.name}`;
    this.pinRoot = `${DEFAULTS.bpffs}/${opts.name}`;
    this.cgroup = join(opts.cgroupParent, opts.name);
    this.patuBin = opts.patuBin ?? REPO_BIN;
  }

  netconf(): Record<string, unknown> {
    return {
      cniVersion: '1.1.0',
      name: this.opts.name,
      type: 'patu',
      bridge: this.bridge,
      masquerade: false, // lab traffic never leaves the node
      pinRoot: this.pinRoot,
      ipam: { ranges: [[{ subnet: this.opts.subnet }]], dataDir: join(this.stateDir, 'ipam') },
    };
  }

  /** Runs bin/patu as a runtime would: CNI_* environment, config on stdin. */
  cni(command: string, pod: { containerId: string; netns: string }, extra: Record<string, unknown> = {}): CniRun {
    const t0 = performance.now();
    const r = spawnSync(this.patuBin, [], {
      input: JSON.stringify({ ...this.netconf(), ...extra }),
      encoding: 'utf8',
      env: {
        PATH: this.opts.path ?? '/usr/sbin:/usr/bin:/sbin:/bin',
        CNI_COMMAND: command,
        CNI_CONTAINERID: pod.containerId,
        CNI_NETNS: pod.netns,
        CNI_IFNAME: 'eth0',
        CNI_PATH: dirname(this.patuBin),
        // With an agent running, bin/patu hands it the request; otherwise (or when
        // the socket does not answer) it runs the plugin in its own process.
        ...(this.agentSocket ? { PATU_AGENT_SOCKET: this.agentSocket } : { PATU_NO_AGENT: '1' }),
      },
    });
    return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr, ms: performance.now() - t0 };
  }

  /** Removes what a killed earlier run left, then makes the state dir and the cgroup. */
  prepare(): void {
    this.down();
    mkdirSync(this.stateDir, { recursive: true });
    mkdirSync(this.cgroup, { recursive: true });
  }

  /** Creates pods (default: all): a netns each, then CNI ADD through bin/patu. */
  up(names: string[] = this.opts.pods): void {
    if (!existsSync(this.cgroup)) this.prepare();
    for (const name of names) {
      const ns = `${this.opts.name}-${name}`;
      run('ip', ['netns', 'add', ns]);
      const pod = { name, netns: `/run/netns/${ns}`, containerId: `${this.opts.name}-${name}` };
      const r = this.cni('ADD', pod);
      if (r.code !== 0) throw new Error(`CNI ADD for pod ${name} failed: ${r.stdout.trim()} ${r.stderr.trim()}`);
      const result = JSON.parse(r.stdout) as { ips: { address: string }[] };
      this.pods.set(name, { ...pod, ip: result.ips[0]!.address.split('/')[0]!, addMs: r.ms, result });
    }
  }

  pod(name: string): Pod {
    const p = this.pods.get(name);
    if (!p) throw new Error(`no pod '${name}' in the lab`);
    return p;
  }

  /** argv for running a command inside a pod, placed in the lab cgroup first. */
  podArgv(pod: string, argv: string[]): string[] {
    const ns = this.pod(pod).netns;
    const quoted = argv.map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
    return ['sh', '-c', `echo $$ > ${this.cgroup}/cgroup.procs && exec nsenter --net=${ns} -- ${quoted}`];
  }

  /** Runs a command in a pod to completion (bounded by timeoutMs). */
  exec(pod: string, argv: string[], timeoutMs = 60_000): { code: number; stdout: string; stderr: string } {
    const [cmd, ...args] = this.podArgv(pod, argv);
    const r = spawnSync(cmd!, args, { encoding: 'utf8', timeout: timeoutMs });
    return { code: r.status ?? -1, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
  }

  /** Starts a long-running command in a pod (a server); stopped by down(). */
  start(pod: string, argv: string[]): ChildProcess {
    const [cmd, ...args] = this.podArgv(pod, argv);
    const child = spawn(cmd!, args, { stdio: 'ignore' });
    this.children.add(child);
    child.on('exit', () => this.children.delete(child));
    return child;
  }

  stop(child: ChildProcess): void {
    child.kill('SIGKILL');
    this.children.delete(child);
  }

  /** Starts `bin/patu agent` on a socket of the lab's own, and waits until it answers. */
  async startAgent(): Promise<void> {
    const socket = join(this.stateDir, 'agent.sock');
    this.agent = spawn(this.patuBin, ['agent', '--cni-socket', socket, '--log-level', 'warn'], { stdio: 'ignore' });
    for (let i = 0; i < 100 && !existsSync(socket); i++) await new Promise((r) => setTimeout(r, 50));
    if (!existsSync(socket)) throw new Error(`patu agent did not open ${socket} within 5 s`);
    this.agentSocket = socket;
  }

  stopAgent(): void {
    this.agent?.kill('SIGTERM');
    this.agent = undefined;
    this.agentSocket = undefined;
  }

  /** Bytes the host end of a pod's veth has sent (into the pod). */
  vethTxBytes(pod: string): number {
    const veth = hostVethName(this.pod(pod).containerId, 'eth0');
    return Number(readFileSync(`/sys/class/net/${veth}/statistics/tx_bytes`, 'utf8'));
  }

  /** Removes everything the lab made. Safe to call twice and after a failed up(). */
  down(): string[] {
    const problems: string[] = [];
    for (const c of this.children) c.kill('SIGKILL');
    this.children.clear();
    for (const name of this.opts.pods) {
      const ns = `${this.opts.name}-${name}`;
      const r = this.cni('DEL', { containerId: `${this.opts.name}-${name}`, netns: `/run/netns/${ns}` });
      if (r.code !== 0) problems.push(`CNI DEL ${name}: ${r.stdout.trim()}`);
      if (existsSync(`/run/netns/${ns}`)) spawnSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
    }
    this.pods.clear();
    this.stopAgent();
    spawnSync('ip', ['link', 'del', this.bridge], { stdio: 'ignore' });
    if (existsSync(this.cgroup)) {
      // Processes may still be exiting: cgroup rmdir returns EBUSY for a moment.
      for (let i = 0; i < 50; i++) {
        try {
          rmdirSync(this.cgroup);
          break;
        } catch {
          spawnSync('sleep', ['0.1']);
        }
      }
      if (existsSync(this.cgroup)) problems.push(`cgroup ${this.cgroup} still busy`);
    }
    rmSync(this.pinRoot, { recursive: true, force: true });
    rmSync(this.stateDir, { recursive: true, force: true });
    return problems;
  }
}

function run(cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr.trim()}`);
}

export function writeFile(path: string, text: string): void {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, text);
}
