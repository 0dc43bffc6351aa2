// iperf3 and sockperf clients as the benches run them: the caller says how a
// command is executed (which netns, which cgroup, which CPU), this parses what
// comes back. Servers are the caller's.

/** Runs argv to completion and returns its stdout (throws on failure or timeout). */
export type Exec = (argv: string[], timeoutMs: number) => string;

export interface Stream { gbps: number; cpuSecPerGB: number; bytes: number }

/** One iperf3 client run (-J): received throughput, bytes, and both ends' CPU seconds per GB. */
export function iperf3(exec: Exec, host: string, port: number, o: { seconds: number; streams?: number; len?: string }): Stream {
  const argv = ['iperf3', '-c', host, '-p', String(port), '-t', String(o.seconds), '-P', String(o.streams ?? 1), '-J'];
  if (o.len) argv.push('-l', o.len);
  const out = exec(argv, (o.seconds + 15) * 1000);
  const j = JSON.parse(out) as { end: { sum_received: { bits_per_second: number; bytes: number; seconds: number }; cpu_utilization_percent: { host_total: number; remote_total: number } } };
  const r = j.end.sum_received;
  const cpu = j.end.cpu_utilization_percent;
  // iperf3 reports each side's user+sys time as % of wall time; softirq work done in
  // the sender's context is charged to it, so both paths are measured the same way.
  const cpuSec = ((cpu.host_total + cpu.remote_total) / 100) * r.seconds;
  return { gbps: r.bits_per_second / 1e9, bytes: r.bytes, cpuSecPerGB: cpuSec / (r.bytes / 1e9) };
}

export interface PingPong { p50us: number; p99us: number; rrPerSec: number }

/** One sockperf ping-pong run over TCP (UDP with `udp`); `prefix` (e.g. taskset -c 1) goes before sockperf. */
export function sockperfPingPong(exec: Exec, host: string, port: number, o: { seconds: number; size: number; prefix?: string[]; udp?: boolean }): PingPong {
  const argv = [...(o.prefix ?? []), 'sockperf', 'pp', '-i', host, '-p', String(port), ...(o.udp ? [] : ['--tcp']), '-m', String(o.size), '-t', String(o.seconds)];
  const out = exec(argv, (o.seconds + 15) * 1000);
  const num = (re: RegExp): number => {
    const m = re.exec(out);
    if (!m) throw new Error(`sockperf output lacks ${re}: ${out.slice(-500)}`);
    return Number(m[1]);
  };
  // sockperf reports half the round trip as latency; rate = completed round trips per second.
  const runtime = num(/\[Valid Duration\] RunTime=([\d.]+) sec/);
  const received = num(/\[Valid Duration\].*ReceivedMessages=(\d+)/);
  return { p50us: num(/percentile 50\.000 =\s*([\d.]+)/), p99us: num(/percentile 99\.000 =\s*([\d.]+)/), rrPerSec: received / runtime };
}

export const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
