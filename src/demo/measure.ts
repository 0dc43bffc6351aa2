// Traffic measurements between lab pods with standard tools (iperf3, sockperf),
// each run bounded in time and aimed only at pod addresses inside the lab.
import { existsSync } from 'node:fs';
import type { Lab } from './lab.js';

export const haveTool = (name: string): boolean =>
  ['/usr/bin', '/usr/sbin', '/bin', '/usr/local/bin'].some((d) => existsSync(`${d}/${name}`));

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export interface Throughput {
  gbitPerSec: number;
  bytes: number;
}

/** iperf3 from one pod to another: TCP, `seconds` long, `streams` parallel, writes of `len`. */
export async function iperf(lab: Lab, from: string, to: string, opts: { seconds?: number; streams?: number; len?: string; port?: number } = {}): Promise<Throughput> {
  const port = String(opts.port ?? 5201);
  const server = lab.start(to, ['iperf3', '-s', '-1', '-p', port]);
  try {
    await sleep(300);
    const r = lab.exec(from, [
      'iperf3', '-c', lab.pod(to).ip, '-p', port, '-t', String(opts.seconds ?? 2), '-P', String(opts.streams ?? 1),
      '-l', opts.len ?? '128K', '-J',
    ], 30_000);
    if (r.code !== 0) throw new Error(`iperf3 ${from} -> ${to} failed: ${r.stdout.slice(0, 300)} ${r.stderr.slice(0, 300)}`);
    const j = JSON.parse(r.stdout) as { end: { sum_received: { bits_per_second: number; bytes: number } } };
    return { gbitPerSec: j.end.sum_received.bits_per_second / 1e9, bytes: j.end.sum_received.bytes };
  } finally {
    lab.stop(server);
  }
}

export interface Latency {
  p50us: number;
  p99us: number;
}

/** sockperf TCP ping-pong from one pod to another. */
export async function pingPong(lab: Lab, from: string, to: string, opts: { seconds?: number; size?: number; port?: number } = {}): Promise<Latency> {
  const port = String(opts.port ?? 11111);
  const server = lab.start(to, ['sockperf', 'sr', '--tcp', '-i', lab.pod(to).ip, '-p', port]);
  try {
    await sleep(300);
    const r = lab.exec(from, [
      'sockperf', 'pp', '--tcp', '-i', lab.pod(to).ip, '-p', port, '-t', String(opts.seconds ?? 2), '-m', String(opts.size ?? 64),
    ], 30_000);
    const pct = (p: string) => Number(r.stdout.match(new RegExp(`percentile ${p} =\\s+([0-9.]+)`))?.[1]);
    const out = { p50us: pct('50.000'), p99us: pct('99.000') };
    if (r.code !== 0 || Number.isNaN(out.p50us)) throw new Error(`sockperf ${from} -> ${to} failed: ${r.stdout.slice(-300)} ${r.stderr.slice(-300)}`);
    return out;
  } finally {
    lab.stop(server);
  }
}

export const percentile = (xs: number[], p: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? NaN;
};
