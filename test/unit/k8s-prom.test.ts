import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Counter, Gauge, Histogram, Registry, processMetrics } from '../../src/k8s/prom.js';

test('prometheus text: counters with labels, gauges, cumulative histogram buckets, escaping', async () => {
  const r = new Registry();
  const c = new Counter({ name: 'x_total', help: 'a "help"\nline', labelNames: ['command', 'result'] as const, registers: [r] });
  const plain = new Counter({ name: 'plain_total', help: 'p', registers: [r] });
  const g = new Gauge({ name: 'g', help: 'g', registers: [r] });
  const h = new Histogram({ name: 'h_seconds', help: 'h', labelNames: ['kind'] as const, buckets: [0.1, 1], registers: [r] });
  c.inc({ command: 'ADD', result: 'ok' });
  c.inc({ result: 'ok', command: 'ADD' });
  c.inc({ command: 'DEL', result: 'a"b\\c\nd' });
  g.set(5);
  g.set(7);
  h.observe({ kind: 'delta' }, 0.05);
  h.observe({ kind: 'delta' }, 0.5);
  h.observe({ kind: 'delta' }, 3);
  assert.equal(await r.metrics(), [
    '# HELP x_total a "help"\\nline', '# TYPE x_total counter',
    'x_total{command="ADD",result="ok"} 2', 'x_total{command="DEL",result="a\\"b\\\\c\\nd"} 1', '',
    '# HELP plain_total p', '# TYPE plain_total counter', 'plain_total 0', '',
    '# HELP g g', '# TYPE g gauge', 'g 7', '',
    '# HELP h_seconds h', '# TYPE h_seconds histogram',
    'h_seconds_bucket{kind="delta",le="0.1"} 1', 'h_seconds_bucket{kind="delta",le="1"} 2', 'h_seconds_bucket{kind="delta",le="+Inf"} 3',
    'h_seconds_sum{kind="delta"} 3.55', 'h_seconds_count{kind="delta"} 3', '',
  ].join('\n'));
  assert.deepEqual((await c.get()).values.map((v) => v.value), [2, 1]);
  assert.throws(() => c.inc({ nope: 'x' } as never), /unknown label 'nope'/);
  assert.throws(() => plain.inc(-1), /cannot decrease/);
});

test('process metrics: the names the benches and the e2e suite read, with live values', async () => {
  const r = new Registry();
  processMetrics(r, 'patu_');
  const text = await r.metrics();
  const v = (name: string): number => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1]);
  assert.ok(v('patu_process_resident_memory_bytes') > 10e6, text);
  assert.ok(v('patu_nodejs_heap_size_used_bytes') > 1e6);
  assert.ok(v('patu_nodejs_heap_size_total_bytes') >= v('patu_nodejs_heap_size_used_bytes'));
  assert.ok(v('patu_nodejs_external_memory_bytes') > 0);
  assert.ok(v('patu_process_cpu_seconds_total') > 0);
  assert.ok(Math.abs(v('patu_process_start_time_seconds') - Date.now() / 1000) < 3600);
  assert.ok(v('patu_process_open_fds') > 2);
});
