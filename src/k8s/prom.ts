// The few Prometheus metric kinds the agent exports, in the text exposition format 0.0.4.
// Written here rather than taken from prom-client: prom-client and what it pulls in
// (@opentelemetry/api for exemplars, tdigest, the default collectors) measured ~4.8 MB of
// the agent's RSS for eleven metrics. Same names, types, labels and text as before.
import { readFileSync } from 'node:fs';

type Labels = Record<string, string>;
const escLabel = (v: string): string => v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
const escHelp = (v: string): string => v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
const num = (n: number): string => (Number.isNaN(n) ? 'NaN' : n === Infinity ? '+Inf' : n === -Infinity ? '-Inf' : String(n));
const labelText = (l: Labels): string => {
  const parts = Object.entries(l).map(([k, v]) => `${k}="${escLabel(v)}"`);
  return parts.length ? `{${parts.join(',')}}` : '';
};

interface MetricOpts<L extends string> {
  name: string;
  help: string;
  labelNames?: readonly L[];
  registers?: Registry[];
}

abstract class Metric<L extends string> {
  readonly name: string;
  readonly help: string;
  abstract readonly type: string;
  protected readonly labelNames: readonly L[];
  protected readonly series = new Map<string, { labels: Labels; value: number }>();

  constructor(opts: MetricOpts<L>) {
    this.name = opts.name;
    this.help = opts.help;
    this.labelNames = opts.labelNames ?? [];
    for (const r of opts.registers ?? []) r.register(this);
  }

  protected entry(labels: Partial<Record<L, string>> = {}): { labels: Labels; value: number } {
    // Called per watch event: the key is the label values in labelNames order, each length-prefixed
    // (unambiguous for any value), '-' for an absent one: no object, no JSON.
    let key = '';
    let n = 0;
    for (const k of this.labelNames) {
      const v = labels[k];
      if (v === undefined) key += '-';
      else {
        const t = String(v);
        key += `${t.length}:${t}`;
        n++;
      }
    }
    let e = this.series.get(key);
    if (e && Object.keys(labels).length === n) return e;
    for (const k of Object.keys(labels)) {
      if (!this.labelNames.includes(k as L)) throw new Error(`metric ${this.name}: unknown label '${k}'`);
    }
    const ordered: Labels = {};
    for (const k of this.labelNames) if (labels[k] !== undefined) ordered[k] = String(labels[k]);
    if (!e) this.series.set(key, (e = { labels: ordered, value: 0 }));
    return e;
  }

  /** prom-client's shape: every series with its labels and value. */
  async get(): Promise<{ values: { labels: Labels; value: number }[] }> {
    return { values: [...this.series.values()].map((e) => ({ labels: { ...e.labels }, value: e.value })) };
  }

  text(): string {
    const lines = [`# HELP ${this.name} ${escHelp(this.help)}`, `# TYPE ${this.name} ${this.type}`];
    // A metric without labels shows 0 before its first update, as prom-client does.
    if (this.series.size === 0 && this.labelNames.length === 0) lines.push(`${this.name} 0`);
    for (const e of this.series.values()) lines.push(`${this.name}${labelText(e.labels)} ${num(e.value)}`);
    return lines.join('\n');
  }
}

export class Counter<L extends string = never> extends Metric<L> {
  readonly type = 'counter';
  inc(labels?: Partial<Record<L, string>> | number, by = 1): void {
    const [l, n] = typeof labels === 'number' ? [{}, labels] : [labels ?? {}, by];
    if (n < 0) throw new Error(`counter ${this.name}: cannot decrease (${n})`);
    this.entry(l).value += n;
  }
}

export class Gauge<L extends string = never> extends Metric<L> {
  readonly type = 'gauge';
  set(labels: Partial<Record<L, string>> | number, value?: number): void {
    if (typeof labels === 'number') this.entry({}).value = labels;
    else this.entry(labels).value = value ?? 0;
  }
}

/**
 * A counter whose values are owned elsewhere (kernel map counters): every scrape replaces all its series with
 * what the source reads then (a series that disappeared, e.g. a deleted pod's, is gone from the output).
 */
export class MirrorCounter<L extends string = never> extends Metric<L> {
  readonly type = 'counter';
  replace(series: { labels: Partial<Record<L, string>>; value: number }[]): void {
    this.series.clear();
    for (const s of series) this.entry(s.labels).value += s.value;
  }
}

export class Histogram<L extends string = never> extends Metric<L> {
  readonly type = 'histogram';
  private readonly buckets: number[];
  /** Per series (the entry of its labels). */
  private readonly hist = new Map<object, { labels: Labels; counts: number[]; sum: number; count: number }>();

  constructor(opts: MetricOpts<L> & { buckets: number[] }) {
    super(opts);
    this.buckets = [...opts.buckets].sort((a, b) => a - b);
  }

  observe(labels: Partial<Record<L, string>> | number, value?: number): void {
    const [l, v] = typeof labels === 'number' ? [{}, labels] : [labels, value ?? 0];
    const e = this.entry(l);
    let h = this.hist.get(e);
    if (!h) this.hist.set(e, (h = { labels: e.labels, counts: this.buckets.map(() => 0), sum: 0, count: 0 }));
    for (let i = 0; i < this.buckets.length; i++) if (v <= this.buckets[i]!) h.counts[i]!++;
    h.sum += v;
    h.count++;
  }

  override text(): string {
    const lines = [`# HELP ${this.name} ${escHelp(this.help)}`, `# TYPE ${this.name} histogram`];
    for (const h of this.hist.values()) {
      this.buckets.forEach((b, i) => lines.push(`${this.name}_bucket${labelText({ ...h.labels, le: num(b) })} ${h.counts[i]}`));
      lines.push(`${this.name}_bucket${labelText({ ...h.labels, le: '+Inf' })} ${h.count}`);
      lines.push(`${this.name}_sum${labelText(h.labels)} ${num(h.sum)}`);
      lines.push(`${this.name}_count${labelText(h.labels)} ${h.count}`);
    }
    return lines.join('\n');
  }
}

export class Registry {
  readonly contentType = 'text/plain; version=0.0.4; charset=utf-8';
  private readonly metricsList: { text(): string }[] = [];
  private readonly collectors: (() => void)[] = [];

  register(m: { text(): string }): void {
    this.metricsList.push(m);
  }

  /** Runs before every scrape (the process collectors). */
  beforeScrape(fn: () => void): void {
    this.collectors.push(fn);
  }

  async metrics(): Promise<string> {
    for (const c of this.collectors) c();
    return this.metricsList.map((m) => m.text()).join('\n\n') + '\n';
  }
}

/**
 * The process figures prom-client's default collectors gave under `prefix` that the agent's
 * users read: CPU seconds, start time, resident and virtual memory, open fds, V8 heap and
 * external memory.
 */
export function processMetrics(registry: Registry, prefix: string): void {
  const g = (name: string, help: string) => new Gauge({ name: prefix + name, help, registers: [registry] });
  const c = (name: string, help: string) => new Counter({ name: prefix + name, help, registers: [registry] });
  const user = c('process_cpu_user_seconds_total', 'Total user CPU time spent in seconds.');
  const system = c('process_cpu_system_seconds_total', 'Total system CPU time spent in seconds.');
  const total = c('process_cpu_seconds_total', 'Total user and system CPU time spent in seconds.');
  const start = g('process_start_time_seconds', 'Start time of the process since unix epoch in seconds.');
  const rss = g('process_resident_memory_bytes', 'Resident memory size in bytes.');
  const vsz = g('process_virtual_memory_bytes', 'Virtual memory size in bytes.');
  const fds = g('process_open_fds', 'Number of open file descriptors.');
  const heapTotal = g('nodejs_heap_size_total_bytes', 'Process heap size from Node.js in bytes.');
  const heapUsed = g('nodejs_heap_size_used_bytes', 'Process heap size used from Node.js in bytes.');
  const external = g('nodejs_external_memory_bytes', 'Node.js external memory size in bytes.');
  const startedAt = Math.round(Date.now() / 1000 - process.uptime());
  let last = process.cpuUsage();
  registry.beforeScrape(() => {
    const now = process.cpuUsage();
    user.inc((now.user - last.user) / 1e6);
    system.inc((now.system - last.system) / 1e6);
    total.inc((now.user - last.user + now.system - last.system) / 1e6);
    last = now;
    start.set(startedAt);
    const status = readFileSync('/proc/self/status', 'utf8');
    const kb = (k: string): number => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(status)?.[1] ?? NaN) * 1024;
    rss.set(kb('VmRSS'));
    vsz.set(kb('VmSize'));
    try {
      fds.set(process.getBuiltinModule('node:fs').readdirSync('/proc/self/fd').length - 1);
    } catch {
      /* not Linux: left at 0 */
    }
    const m = process.memoryUsage();
    heapTotal.set(m.heapTotal);
    heapUsed.set(m.heapUsed);
    external.set(m.external);
  });
}
