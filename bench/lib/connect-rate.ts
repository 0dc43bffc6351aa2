// The benches' C tools (bench/connect-rate.c, bench/accept-sink.c): built on first use into build/bench/,
// run inside a network namespace (optionally from a cgroup, where patu's socket programs sit).
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const TOOLS = ['connect-rate', 'accept-sink'] as const;

/** What connect-rate prints. */
export interface Rate {
  count: number;
  errors: number;
  ns: number;
  p50_ns: number;
  p99_ns: number;
}

export const toolPath = (name: (typeof TOOLS)[number]): string => join(ROOT, 'build/bench', name);

/** Compiles the C tools that are missing (cc -O2). */
export function buildTools(): void {
  for (const b of TOOLS) {
    if (existsSync(toolPath(b))) continue;
    mkdirSync(join(ROOT, 'build/bench'), { recursive: true });
    const r = spawnSync('cc', ['-O2', '-Wall', '-o', toolPath(b), join(ROOT, 'bench', `${b}.c`)], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`cc bench/${b}.c failed (${r.status}): ${r.stderr}`);
  }
}

export interface ConnectRateOpts {
  /** Port, or "FIRST-LAST": each connect to the next port of the range. */
  port: number | string;
  ms: number;
  max: number;
  /** Run the client from this cgroup (v2 dir), so patu's socket programs see it. */
  cgroup?: string;
  /** Resolve with the errors counted instead of rejecting on any failed connect. */
  allowErrors?: boolean;
}

/** connect()+close() loop from `ns` to `ip`; rejects on any failed connect unless allowErrors. */
export function connectRate(ns: string, ip: string, o: ConnectRateOpts): Promise<Rate> {
  const args = [ip, String(o.port), String(Math.round(o.ms)), String(o.max)];
  const cmd = o.cgroup
    ? spawn('sh', ['-c', `echo $$ > ${o.cgroup}/cgroup.procs && exec ip netns exec ${ns} "$@"`, 'sh', toolPath('connect-rate'), ...args])
    : spawn('ip', ['netns', 'exec', ns, toolPath('connect-rate'), ...args]);
  let out = '';
  let err = '';
  cmd.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  cmd.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  return new Promise((resolve, reject) => {
    cmd.on('exit', (code) => {
      let r: Rate;
      try {
        r = JSON.parse(out) as Rate;
      } catch {
        reject(new Error(`connect-rate exited ${code}: ${out}${err}`));
        return;
      }
      if (r.errors > 0 && !o.allowErrors) reject(new Error(`connect-rate to ${ip}:${o.port} in ${ns}: ${r.errors} failed connects`));
      else resolve(r);
    });
  });
}

/** Starts accept-sink on `port` in `ns`; resolves once it listens. Kill the returned child to stop it. */
export async function acceptSink(ns: string, port: number): Promise<ReturnType<typeof spawn>> {
  const sink = spawn('ip', ['netns', 'exec', ns, toolPath('accept-sink'), String(port)], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    sink.stdout!.once('data', () => resolve());
    sink.once('exit', (c) => reject(new Error(`accept-sink exited ${c}`)));
  });
  return sink;
}

export const perSec = (r: Rate): number => r.count / (r.ns / 1e9);
export const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
