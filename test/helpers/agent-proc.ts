// Starts "the agent" for an integration test in either mode, so one test file covers both:
//   - default: `patu agent ARGS` (one privileged process, as today);
//   - PATU_TEST_SPLIT=1: `patu manager` with the arguments that act on the kernel and the
//     host (CNI socket, cgroup, pins, bridge, data dir, nodeport devices, ...) plus
//     `patu agent --manager` with the sources (services file, policy file, Kubernetes),
//     talking mutual TLS over a unix socket in the test's directory, certificates from
//     `patu certs generate`. scripts/test.sh runs the files that use this a second time
//     with PATU_TEST_SPLIT=1.
// The test sees one handle either way: the log of both processes (in arrival order), stop
// (SIGTERM, then SIGKILL) and kill; in split mode also each process alone (split-faults).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { PATU_BIN } from './cni.js';

export const SPLIT = process.env.PATU_TEST_SPLIT === '1';
export const MODE = SPLIT ? 'split (patu manager + patu agent --manager)' : 'single process';

/** Flags (with a value unless listed in BARE) that belong to the manager in split mode. */
const MANAGER_FLAGS = new Set(['--cni-socket', '--cgroup', '--cgroup-fs', '--pin-root', '--bridge', '--data-dir', '--cni-conf-dir', '--nodeport-devices',
  '--request-timeout', '--hostports', '--no-hostports', '--no-masquerade']);
/** Flags both processes take. */
const BOTH_FLAGS = new Set(['--log-level', '--cluster-cidr', '--service-cidr']);
/** Flags without a value. */
const BARE = new Set(['--hostports', '--no-hostports', '--no-masquerade', '--accel', '--kubernetes']);
/** Agent flags the manager has no equivalent of (hostPorts are always served by the manager). */
const MANAGER_DROPS = new Set(['--hostports', '--no-hostports']);

/** Splits `patu agent` arguments into the manager's and the split agent's. */
export function splitAgentArgs(args: readonly string[]): { manager: string[]; agent: string[] } {
  const manager: string[] = [];
  const agent: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const [flag, inline] = a.startsWith('--') ? [a.split('=')[0]!, a.includes('=')] : [a, false];
    const group = [a];
    if (a.startsWith('--') && !inline && !BARE.has(flag) && i + 1 < args.length) group.push(args[++i]!);
    if (MANAGER_FLAGS.has(flag)) {
      if (!MANAGER_DROPS.has(flag)) manager.push(...group);
    } else if (BOTH_FLAGS.has(flag)) {
      manager.push(...group);
      agent.push(...group);
    } else {
      agent.push(...group);
    }
  }
  return { manager, agent };
}

export interface AgentProcOptions {
  /** The test's private directory: the manager's socket and the certificates go here (split mode). */
  dir: string;
  /** Run inside this prefix (e.g. ['nsenter', '--net=/run/netns/X']), both processes. */
  wrap?: string[];
  /** Extra manager flags (split mode only): e.g. its limits, when the test's addresses are outside the defaults. */
  managerArgs?: string[];
  env?: NodeJS.ProcessEnv;
  /** Force a mode (default: PATU_TEST_SPLIT). */
  split?: boolean;
}

export interface AgentProc {
  readonly split: boolean;
  /** Both processes' output, in arrival order. */
  readonly log: string;
  /** Called after every chunk of output (the log has it by then). */
  onOutput(f: () => void): void;
  /** The single agent, or the manager in split mode (the CNI socket's side). */
  readonly main: ChildProcess;
  /** Split mode: the unprivileged agent. */
  readonly agent?: ChildProcess;
  /**
   * Resolves once the node is served: CNI socket up (the manager's, in split mode) and, in
   * split mode, the agent's first state pushed (what the single process has done by then).
   */
  ready(timeoutMs?: number): Promise<void>;
  /** SIGTERM to every process, SIGKILL after 5 s. */
  stop(): Promise<void>;
  /** Split mode: restart only the manager (same arguments), as after a kill. */
  restartManager(): ChildProcess;
  /** Split mode: restart only the agent (same arguments), as after a kill. */
  restartAgent(): ChildProcess;
}

/** Where the manager listens in split mode (a unix socket in the test's directory: no port to pick). */
export const managerSocket = (dir: string): string => join(dir, 'manager.sock');

/** `patu certs generate` into <dir>/tls once. */
export function testCerts(dir: string): string {
  const tls = join(dir, 'tls');
  if (existsSync(join(tls, 'ca.crt'))) return tls;
  mkdirSync(tls, { recursive: true });
  const r = spawnSync(PATU_BIN, ['certs', 'generate', '--dir', tls], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`patu certs generate: ${r.stderr}`);
  return tls;
}

const CNI_UP = 'serving CNI requests';
const IN_STEP = 'data plane manager in step';

async function waitLog(get: () => string, want: string[], timeoutMs: number, exited: () => string | undefined): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const log = get();
    if (want.every((w) => log.includes(w))) return;
    const gone = exited();
    if (gone) throw new Error(`${gone} exited before it was ready; log:\n${log.slice(-4000)}`);
    if (Date.now() > end) throw new Error(`not ready after ${timeoutMs} ms (waiting for: ${want.filter((w) => !log.includes(w)).join(', ')}); log:\n${log.slice(-4000)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const exitedName = (p: ChildProcess, name: string): string | undefined => (p.exitCode !== null || p.signalCode !== null ? `${name} (${p.exitCode ?? p.signalCode})` : undefined);

export function startAgentProc(args: readonly string[], o: AgentProcOptions): AgentProc {
  let log = '';
  const listeners: (() => void)[] = [];
  const append = (d: string): void => {
    log += d;
    for (const f of listeners) f();
  };
  const procs: ChildProcess[] = [];
  const run = (argv: string[]): ChildProcess => {
    const [cmd, ...rest] = [...(o.wrap ?? []), PATU_BIN, ...argv];
    const p = spawn(cmd!, rest, { stdio: ['ignore', 'pipe', 'pipe'], ...(o.env ? { env: o.env } : {}) });
    p.stdout!.setEncoding('utf8').on('data', append);
    p.stderr!.setEncoding('utf8').on('data', append);
    procs.push(p);
    return p;
  };
  const stopOne = async (p: ChildProcess): Promise<void> => {
    if (p.exitCode !== null || p.signalCode !== null) return;
    const exited = new Promise((r) => p.once('exit', r));
    p.kill('SIGTERM');
    await Promise.race([exited, new Promise((r) => setTimeout(r, 5_000))]);
    p.kill('SIGKILL');
  };
  if (!(o.split ?? SPLIT)) {
    const main = run(['agent', ...args]);
    return {
      split: false,
      get log() { return log; },
      main,
      onOutput: (f) => void listeners.push(f),
      ready: (ms = 20_000) => waitLog(() => log, [CNI_UP], ms, () => exitedName(main, 'patu agent')),
      stop: () => stopOne(main),
      restartManager: () => { throw new Error('restartManager: not in split mode'); },
      restartAgent: () => { throw new Error('restartAgent: not in split mode'); },
    };
  }
  const tls = testCerts(o.dir);
  const sock = managerSocket(o.dir);
  const parts = splitAgentArgs(args);
  // The manager always serves hostPorts: from the test's own data dir unless the test names one (never the host's).
  const dataDir = parts.manager.some((a) => a.startsWith('--data-dir')) ? [] : ['--data-dir', join(o.dir, 'ipam')];
  const managerArgv = ['manager', '--listen', `unix://${sock}`, '--tls-dir', tls, '--metrics-addr', '', ...dataDir, ...parts.manager, ...(o.managerArgs ?? [])];
  let main = run(managerArgv);
  const agentArgv = ['agent', '--manager', `unix://${sock}`, '--tls-dir', tls, ...parts.agent];
  let agent = run(agentArgv);
  return {
    split: true,
    get log() { return log; },
    get main() { return main; },
    get agent() { return agent; },
    onOutput: (f) => void listeners.push(f),
    ready: (ms = 30_000) => waitLog(() => log, [CNI_UP, IN_STEP], ms, () => exitedName(main, 'patu manager') ?? exitedName(agent, 'patu agent --manager')),
    // The agent first: the manager keeps serving CNI until the end, as a DaemonSet pod's containers stop together.
    stop: async () => {
      await stopOne(agent);
      await stopOne(main);
    },
    restartManager: () => (main = run(managerArgv)),
    restartAgent: () => (agent = run(agentArgv)),
  };
}
