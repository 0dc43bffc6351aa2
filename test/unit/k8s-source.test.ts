import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { K8sSource, type ServiceSink } from '../../src/k8s/source.js';
import type { K8sEndpointSlice, K8sService } from '../../src/k8s/convert.js';
import { commit, diffServices, emptyState, IdAllocator, type ProgrammedState } from '../../src/services/diff.js';
import type { DesiredServicePort } from '../../src/services/model.js';
import type { PodRegistry } from '../../src/dataplane/accel-registry.js';

/** A sink that runs the real diff against a state that outlives the source (like pinned maps outlive the agent). */
class DiffSink implements ServiceSink {
  calls: { full: boolean; changed: string[]; ops: number }[] = [];
  fail = 0;
  private ids: IdAllocator;
  constructor(readonly state: ProgrammedState = emptyState()) {
    let max = 0;
    for (const s of state.services.values()) max = Math.max(max, s.id, ...s.slots);
    this.ids = new IdAllocator((id) => state.backends.has(id), max + 1);
  }
  resync(desired: ReadonlyMap<string, DesiredServicePort>) {
    return this.run(desired);
  }
  applyChanges(changed: ReadonlySet<string>, desired: ReadonlyMap<string, DesiredServicePort>) {
    return this.run(desired, changed);
  }
  private run(desired: ReadonlyMap<string, DesiredServicePort>, changed?: ReadonlySet<string>) {
    if (this.fail > 0) {
      this.fail--;
      throw new Error('bpf_map_update_batch(patu_svc): ENOSPC');
    }
    const d = diffServices(this.state, desired, this.ids, changed);
    commit(this.state, d);
    this.calls.push({ full: !changed, changed: [...(changed ?? [])].sort(), ops: d.ops.length });
    return { ops: d.ops.length, services: d.services.size, syscallBatches: 0, ms: 0, attachedNow: false };
  }
  backends(key: string): string[] {
    const s = this.state.services.get(key);
    return (s?.slots ?? []).map((id) => { const b = this.state.backends.get(id)!; return `${b.ip}:${b.port}`; }).sort();
  }
}

const svc = (name: string, ip: string, extra: Partial<NonNullable<K8sService['spec']>> = {}): K8sService => ({
  metadata: { name, namespace: 'default', resourceVersion: '1' },
  spec: { type: 'ClusterIP', clusterIP: ip, ports: [{ name: 'http', port: 80, protocol: 'TCP', targetPort: 8080 }], ...extra },
});
const slice = (name: string, service: string, ips: string[], ready = true): K8sEndpointSlice => ({
  metadata: { name, namespace: 'default', labels: { 'kubernetes.io/service-name': service } },
  addressType: 'IPv4',
  endpoints: ips.map((ip) => ({ addresses: [ip], conditions: { ready } })),
  ports: [{ name: 'http', port: 8080, protocol: 'TCP' }],
});

function source(sink: ServiceSink, extra: Partial<ConstructorParameters<typeof K8sSource>[0]> = {}) {
  return new K8sSource({ nodeName: 'n1', clusterCIDR: '10.200.0.0/16', sink, coalesceMs: 5, resyncMs: 0, retryMs: 10, ...extra });
}

function syncAll(s: K8sSource): void {
  for (const r of ['services', 'endpointslices', 'pods', 'node'] as const) s.markSynced(r);
}

test('nothing is applied before services and slices are listed; then one full resync', async () => {
  const sink = new DiffSink();
  const s = source(sink);
  try {
    s.handleService(svc('a', '10.96.0.1'));
    s.handleSlice(slice('a-1', 'a', ['10.200.0.5']));
    s.markSynced('services');
    await sleep(20);
    assert.equal(sink.calls.length, 0, 'applied before endpointslices were listed');
    assert.match(s.notReady() ?? '', /endpointslices/);
    s.markSynced('endpointslices');
    await sleep(20);
    assert.equal(sink.calls.length, 1);
    assert.equal(sink.calls[0]!.full, true);
    assert.deepEqual(sink.backends('10.96.0.1:80/TCP'), ['10.200.0.5:8080']);
    assert.match(s.notReady() ?? '', /pods, node/, 'ready needs every informer');
    s.markSynced('pods');
    s.markSynced('node');
    assert.equal(s.notReady(), undefined);
  } finally {
    await s.close();
  }
});

test('a restart with the same objects writes no map operation (no delete-all then add-all)', async () => {
  const first = new DiffSink();
  const objs = Array.from({ length: 50 }, (_, i) => [svc(`s${i}`, `10.96.1.${i}`), slice(`s${i}-x`, `s${i}`, [`10.200.1.${i}`, `10.200.2.${i}`])] as const);
  const a = source(first);
  for (const [sv, sl] of objs) { a.handleService(sv); a.handleSlice(sl); }
  syncAll(a);
  await sleep(20);
  await a.close();
  assert.ok(first.calls[0]!.ops > 100);
  // The restarted agent: new source, same programmed state, one service changed and one gone meanwhile.
  const again = new DiffSink(first.state);
  const b = source(again);
  try {
    for (const [sv, sl] of objs.slice(1)) { b.handleService(sv); b.handleSlice(sl.metadata.name === 's7-x' ? slice('s7-x', 's7', ['10.200.9.9']) : sl); }
    syncAll(b);
    await sleep(20);
    assert.equal(again.calls.length, 1);
    assert.equal(again.calls[0]!.full, true);
    assert.equal(again.state.services.has('10.96.1.0:80/TCP'), false, 'a service deleted while the agent was down must go');
    assert.deepEqual(again.backends('10.96.1.7:80/TCP'), ['10.200.9.9:8080']);
    assert.deepEqual(again.backends('10.96.1.8:80/TCP'), ['10.200.1.8:8080', '10.200.2.8:8080']);
    // Delete s0 (svc + meta + 2 slots + 2 backends = 6 ops) and swap s7's two backends for one (backend add,
    // slot rewrite, count shrink, slot delete, two backend deletes) = 12 at most; untouched services cost nothing.
    assert.ok(again.calls[0]!.ops <= 12, `restart wrote ${again.calls[0]!.ops} ops`);
  } finally {
    await b.close();
  }
});

test('a burst of events becomes one apply touching only the changed services', async () => {
  const sink = new DiffSink();
  const s = source(sink, { coalesceMs: 30 });
  try {
    for (let i = 0; i < 20; i++) { s.handleService(svc(`s${i}`, `10.96.2.${i}`)); s.handleSlice(slice(`s${i}-x`, `s${i}`, [`10.200.3.${i}`])); }
    syncAll(s);
    await sleep(60);
    assert.equal(sink.calls.length, 1);
    for (let k = 0; k < 10; k++) s.handleSlice(slice('s3-x', 's3', ['10.200.3.3', `10.200.4.${k}`]));
    s.handleServiceDelete(svc('s5', '10.96.2.5'));
    await sleep(80);
    assert.equal(sink.calls.length, 2, 'the burst must be coalesced into one apply');
    assert.deepEqual(sink.calls[1]!.changed, ['default/s3', 'default/s5']);
    assert.deepEqual(sink.backends('10.96.2.3:80/TCP'), ['10.200.3.3:8080', '10.200.4.9:8080']);
    assert.equal(sink.state.services.has('10.96.2.5:80/TCP'), false);
  } finally {
    await s.close();
  }
});

test('slices: merged per service, moved when their label changes, removed on delete; skipped services leave the model', async () => {
  const sink = new DiffSink();
  const s = source(sink);
  try {
    s.handleService(svc('a', '10.96.3.1'));
    s.handleService(svc('b', '10.96.3.2'));
    s.handleService(svc('h', 'None'));
    s.handleSlice(slice('a-1', 'a', ['10.200.5.1']));
    s.handleSlice(slice('a-2', 'a', ['10.200.5.2']));
    s.handleSlice(slice('h-1', 'h', ['10.200.5.3']));
    syncAll(s);
    await sleep(20);
    assert.deepEqual(sink.backends('10.96.3.1:80/TCP'), ['10.200.5.1:8080', '10.200.5.2:8080']);
    assert.equal(s.model.get('default/h'), undefined, 'headless must not be programmed');
    s.handleSlice(slice('a-2', 'b', ['10.200.5.2'])); // relabelled
    await sleep(20);
    assert.deepEqual(sink.backends('10.96.3.1:80/TCP'), ['10.200.5.1:8080']);
    assert.deepEqual(sink.backends('10.96.3.2:80/TCP'), ['10.200.5.2:8080']);
    s.handleSliceDelete(slice('a-1', 'a', []));
    s.handleSlice(slice('a-3', 'a', ['10.200.5.9'], false)); // not ready
    await sleep(20);
    assert.deepEqual(sink.backends('10.96.3.1:80/TCP'), []);
    assert.ok(sink.state.services.has('10.96.3.1:80/TCP'), 'a service without ready endpoints stays (connections refused), not deleted');
    s.handleService(svc('b', '', { type: 'ExternalName' }));
    await sleep(20);
    assert.equal(sink.state.services.has('10.96.3.2:80/TCP'), false, 'a service turned ExternalName must be removed');
  } finally {
    await s.close();
  }
});

test('a failed apply is retried as a full resync and readiness says why meanwhile', async () => {
  const sink = new DiffSink();
  sink.fail = 1;
  const s = source(sink);
  try {
    s.handleService(svc('a', '10.96.4.1'));
    s.handleSlice(slice('a-1', 'a', ['10.200.6.1']));
    syncAll(s);
    await sleep(8);
    assert.match(s.notReady() ?? '', /ENOSPC/);
    await sleep(40);
    assert.equal(s.notReady(), undefined);
    assert.equal(sink.calls.length, 1);
    assert.equal(sink.calls[0]!.full, true);
    assert.deepEqual(sink.backends('10.96.4.1:80/TCP'), ['10.200.6.1:8080']);
  } finally {
    await s.close();
  }
});

class MemRegistry implements PodRegistry {
  m = new Map<string, { optOut: boolean; ifindex: number; netnsCookie: bigint }>();
  writes = 0;
  register(ip: string, optOut: boolean, extra: { ifindex?: number; netnsCookie?: bigint } = {}) {
    this.writes++;
    this.m.set(ip, { optOut, ifindex: extra.ifindex ?? 0, netnsCookie: extra.netnsCookie ?? 0n });
  }
  unregister(ip: string) { return this.m.delete(ip); }
  lookup(ip: string) { return this.m.get(ip); }
  list() { return [...this.m].map(([ip, v]) => ({ ip, optOut: v.optOut })); }
  close() {}
}

test('pod annotation patu.dev/accel=off opts the pod out, keeps what CNI ADD recorded, and comes back when removed', async () => {
  const reg = new MemRegistry();
  reg.register('10.200.7.1', false, { ifindex: 42, netnsCookie: 7n });
  reg.register('10.200.7.2', true, { ifindex: 43, netnsCookie: 8n }); // opted out by CNI_ARGS
  reg.writes = 0;
  const s = source(new DiffSink(), { podRegistry: () => reg });
  const pod = (name: string, ip: string, ann?: string) => ({
    metadata: { name, namespace: 'default', ...(ann ? { annotations: { 'patu.dev/accel': ann } } : {}) },
    spec: {}, status: { phase: 'Running', podIP: ip },
  });
  try {
    s.handlePod(pod('p1', '10.200.7.1', 'off'));
    assert.deepEqual(reg.lookup('10.200.7.1'), { optOut: true, ifindex: 42, netnsCookie: 7n });
    s.handlePod(pod('p1', '10.200.7.1', 'off'));
    assert.equal(reg.writes, 1, 'an unchanged pod must not rewrite the entry');
    s.handlePod(pod('p1', '10.200.7.1'));
    assert.deepEqual(reg.lookup('10.200.7.1'), { optOut: false, ifindex: 42, netnsCookie: 7n });
    s.handlePod(pod('p2', '10.200.7.2'));
    assert.equal(reg.lookup('10.200.7.2')!.optOut, true, 'an opt-out this agent did not set is not undone');
    s.handlePod({ ...pod('p3', '10.200.7.3', 'off'), spec: { hostNetwork: true } });
    assert.equal(reg.lookup('10.200.7.3'), undefined);
  } finally {
    await s.close();
  }
});

test('pod subnet: published once the Node is listed (fallback, then the Node value), and only on change', async () => {
  const seen: string[] = [];
  const s = source(new DiffSink(), { onPodCidr: (c) => seen.push(c), clusterCIDR: '10.201.0.0/16' });
  try {
    assert.equal(s.podCIDR(), '10.201.0.0/24');
    s.handleNode({ metadata: { name: 'other' }, spec: { podCIDR: '10.201.9.0/24' } });
    s.markSynced('node');
    assert.deepEqual(seen, ['10.201.0.0/24']);
    s.handleNode({ metadata: { name: 'n1' }, spec: { podCIDR: '10.201.3.0/24' } });
    s.handleNode({ metadata: { name: 'n1', resourceVersion: '2' }, spec: { podCIDR: '10.201.3.0/24' } });
    assert.deepEqual(seen, ['10.201.0.0/24', '10.201.3.0/24']);
    assert.equal(s.podCIDR(), '10.201.3.0/24');
  } finally {
    await s.close();
  }
});

test('a change after a quiet spell is applied at once; changes that follow within coalesceMs share one later apply', async () => {
  const sink = new DiffSink();
  const s = source(sink, { coalesceMs: 300 });
  try {
    s.handleService(svc('a', '10.96.5.1'));
    s.handleSlice(slice('a-1', 'a', ['10.200.8.1']));
    syncAll(s);
    await sleep(30);
    assert.equal(sink.calls.length, 1, 'the first resync waits for nothing');
    await sleep(320); // quiet for longer than coalesceMs
    const t0 = performance.now();
    s.handleSlice(slice('a-1', 'a', ['10.200.8.1', '10.200.8.2']));
    while (sink.calls.length < 2 && performance.now() - t0 < 250) await sleep(2);
    assert.equal(sink.calls.length, 2);
    assert.ok(performance.now() - t0 < 150, `an isolated change took ${Math.round(performance.now() - t0)} ms (it used to wait coalesceMs)`);
    // Inside the window now: held back, then applied together.
    s.handleSlice(slice('a-1', 'a', ['10.200.8.3']));
    await sleep(5);
    s.handleService(svc('b', '10.96.5.2'));
    s.handleSlice(slice('b-1', 'b', ['10.200.8.4']));
    await sleep(60);
    assert.equal(sink.calls.length, 2, 'a change right after an apply must wait for the window');
    while (sink.calls.length < 3 && performance.now() - t0 < 2000) await sleep(5);
    assert.equal(sink.calls.length, 3);
    assert.deepEqual(sink.calls[2]!.changed, ['default/a', 'default/b']);
    assert.deepEqual(sink.backends('10.96.5.1:80/TCP'), ['10.200.8.3:8080']);
  } finally {
    await s.close();
  }
});

test('while events keep coming the window grows, so a sustained stream costs few applies; a quiet spell resets it', async () => {
  const sink = new DiffSink();
  const s = source(sink, { coalesceMs: 20, maxCoalesceMs: 160 });
  try {
    syncAll(s);
    await sleep(30);
    assert.equal(sink.calls.length, 1, 'the first resync');
    // One new service every ~4 ms for 800 ms, as the apiserver streams a bulk create: a fixed 20 ms window
    // applied ~40 times (each apply has a fixed cost); a doubling one 20+40+80+160+... about 8 times.
    const t0 = performance.now();
    let i = 0;
    while (performance.now() - t0 < 800) {
      s.handleService(svc(`b${i}`, `10.96.6.${i % 250}`));
      s.handleSlice(slice(`b${i}-x`, `b${i}`, [`10.200.6.${i % 250}`]));
      i++;
      await sleep(4);
    }
    const last = performance.now();
    while (!sink.state.services.has(`10.96.6.${(i - 1) % 250}:80/TCP`) && performance.now() - last < 2000) await sleep(2);
    const lag = performance.now() - last;
    const applies = sink.calls.length - 1;
    assert.ok(applies >= 3 && applies <= 15, `${i} services in 800 ms took ${applies} applies`);
    assert.ok(lag < 400, `the last change of the stream waited ${Math.round(lag)} ms (the window is capped at 160 ms)`);
    // Quiet for longer than the largest window: an isolated change goes at once again.
    await sleep(200);
    const n = sink.calls.length;
    const t1 = performance.now();
    s.handleSlice(slice('b0-x', 'b0', ['10.200.7.1']));
    while (sink.calls.length === n && performance.now() - t1 < 500) await sleep(1);
    assert.ok(performance.now() - t1 < 150, `an isolated change after the stream took ${Math.round(performance.now() - t1)} ms`);
    assert.deepEqual(sink.backends('10.96.6.0:80/TCP'), ['10.200.7.1:8080']);
    // The window is back to 20 ms: a change right after that apply waits ~20 ms, not the 160 of the stream.
    const t2 = performance.now();
    s.handleSlice(slice('b0-x', 'b0', ['10.200.7.2']));
    while (sink.calls.length === n + 1 && performance.now() - t2 < 500) await sleep(1);
    assert.ok(performance.now() - t2 < 110, `a change after the quiet spell's first apply waited ${Math.round(performance.now() - t2)} ms (the window did not reset)`);
    assert.deepEqual(sink.backends('10.96.6.0:80/TCP'), ['10.200.7.2:8080']);
  } finally {
    await s.close();
  }
});

test('metrics gauges follow each change without recomputing every service on every apply', async () => {
  const { AgentMetrics } = await import('../../src/k8s/metrics.js');
  const metrics = new AgentMetrics({ defaultMetrics: false });
  const value = async (g: { get(): Promise<{ values: { value: number }[] }> }) => (await g.get()).values[0]?.value;
  const sink = new DiffSink();
  const s = source(sink, { metrics });
  // Counts model.desired() calls over all services: the sink's own calls pass the changed refs.
  let fullScans = 0;
  const desired = s.model.desired.bind(s.model);
  s.model.desired = (refs?: Iterable<string>) => {
    if (!refs) fullScans++;
    return desired(refs);
  };
  try {
    for (let i = 0; i < 30; i++) {
      s.handleService(svc(`s${i}`, `10.96.6.${i}`, i === 0 ? { ports: [{ name: 'http', port: 80, protocol: 'TCP', targetPort: 8080 }, { name: 'dns', port: 53, protocol: 'UDP', targetPort: 53 }] } : {}));
      s.handleSlice(slice(`s${i}-x`, `s${i}`, [`10.200.9.${i}`, `10.200.10.${i}`]));
    }
    syncAll(s);
    await sleep(20);
    assert.equal(await value(metrics.servicesProgrammed), 30);
    assert.equal(await value(metrics.servicePortsProgrammed), 31);
    // s0's dns port has no endpoints: the slice only names http (endpoints are per port name).
    assert.equal(await value(metrics.endpointsProgrammed), 60);
    const scansAfterResync = fullScans;
    s.handleSlice(slice('s3-x', 's3', ['10.200.9.3', '10.200.10.3', '10.200.11.3']));
    await sleep(20);
    s.handleServiceDelete(svc('s0', '10.96.6.0'));
    await sleep(20);
    s.handleService(svc('n', '10.96.6.200'));
    await sleep(20);
    assert.equal(sink.calls.length, 4);
    assert.equal(fullScans, scansAfterResync, 'a delta apply scanned every service');
    assert.equal(await value(metrics.servicesProgrammed), 30);
    assert.equal(await value(metrics.servicePortsProgrammed), 30);
    assert.equal(await value(metrics.endpointsProgrammed), 60 + 1 - 2);
    // And they agree with a full count of what the model wants programmed.
    const all = desired();
    assert.equal(await value(metrics.servicePortsProgrammed), all.size);
    assert.equal(await value(metrics.endpointsProgrammed), [...all.values()].reduce((n, d) => n + d.backends.length, 0));
  } finally {
    await s.close();
  }
});

test('NodePort conflict: the second service is left out, logged and counted once, and programmed when the first goes; health checks follow local endpoints', async () => {
  const sink = new DiffSink();
  const logs: string[] = [];
  const health: { ref: string; port: number; localEndpoints: number }[][] = [];
  const { AgentMetrics } = await import('../../src/k8s/metrics.js');
  const metrics = new AgentMetrics({ defaultMetrics: false });
  const log = { debug() {}, info() {}, warn() {}, error: (_o: object, m: string) => logs.push(m) };
  const warns: string[] = [];
  const outside: string[] = [];
  const s = source(sink, { log: { ...log, warn: (_o: object, m: string) => warns.push(m) }, metrics, serviceCIDR: '10.96.0.0/16', onHealthChecks: (e) => health.push(e), onOutsideServiceCidr: (ref, ip) => outside.push(`${ref} ${ip}`) });
  const np = (name: string, ip: string, extra: Partial<NonNullable<K8sService['spec']>> = {}) =>
    svc(name, ip, { type: 'NodePort', ports: [{ name: 'http', port: 80, protocol: 'TCP', targetPort: 8080, nodePort: 30080 }], ...extra });
  s.handleService(np('a', '10.96.0.1'));
  s.handleService(np('b', '10.96.0.2', { externalTrafficPolicy: 'Local', healthCheckNodePort: 32000 }));
  const local = slice('b-1', 'b', ['10.200.0.7']);
  local.endpoints![0]!.nodeName = 'n1';
  s.handleSlice(local);
  syncAll(s);
  await sleep(30);
  assert.deepEqual(sink.backends('0.0.0.0:30080/TCP'), [], 'a holds the nodePort (no endpoints yet)');
  assert.equal(sink.state.services.get('0.0.0.0:30080/TCP')?.ref, 'default/a');
  assert.equal(sink.state.services.has('10.96.0.2:80/TCP'), false, 'b is not half-programmed');
  assert.equal(logs.filter((m) => m.includes('0.0.0.0:30080/TCP is already used by default/a')).length, 1);
  assert.match(await metrics.registry.metrics(), /patu_service_conflicts_total 1\b/);
  assert.match(await metrics.registry.metrics(), /patu_services_rejected 1\b/);
  assert.deepEqual(health.at(-1), [{ ref: 'default/b', port: 32000, localEndpoints: 1 }]);
  s.handleService(svc('odd', '10.97.0.1'));
  await sleep(30);
  assert.ok(sink.state.services.has('10.97.0.1:80/TCP'), 'programmed anyway');
  assert.equal(warns.filter((m) => m.includes('ClusterIP outside the service CIDR')).length, 1);
  assert.deepEqual(outside, ['default/odd 10.97.0.1']);
  assert.match(await metrics.registry.metrics(), /patu_service_input_errors_total\{reason="clusterIPOutsideServiceCIDR"\} 1\b/);
  s.handleServiceDelete(np('a', '10.96.0.1'));
  await sleep(60);
  assert.equal(sink.state.services.get('0.0.0.0:30080/TCP')?.ref, 'default/b');
  assert.deepEqual(sink.backends('10.96.0.2:80/TCP'), ['10.200.0.7:8080']);
  assert.match(await metrics.registry.metrics(), /patu_services_rejected 0\b/);
  s.handleSliceDelete(local);
  await sleep(30);
  assert.deepEqual(health.at(-1), [{ ref: 'default/b', port: 32000, localEndpoints: 0 }]);
  await s.close();
});

test('nodes for routing: every Node with a podCIDR and an IPv4 InternalIP, this one with its pod subnet; published after the list and on change only', async () => {
  const seen: string[] = [];
  const s = source(new DiffSink(), { onNodes: (n) => seen.push(n.map((x) => `${x.name} ${x.podCIDR} ${x.address}`).join(', ')), clusterCIDR: '10.201.0.0/16' });
  const node = (name: string, podCIDR: string | undefined, ip: string | undefined, rv = '1') => ({
    metadata: { name, resourceVersion: rv },
    spec: podCIDR ? { podCIDR } : {},
    status: { addresses: [{ type: 'Hostname', address: name }, ...(ip ? [{ type: 'InternalIP', address: ip }] : [])] },
  });
  try {
    s.handleNode(node('n1', undefined, '192.168.1.1'));
    s.handleNode(node('n2', '10.201.2.0/24', '192.168.1.2'));
    s.handleNode(node('n3', '10.201.3.0/24', undefined));
    assert.deepEqual(seen, [], 'nothing before the list');
    s.markSynced('node');
    assert.deepEqual(seen, ['n1 10.201.0.0/24 192.168.1.1, n2 10.201.2.0/24 192.168.1.2']);
    s.handleNode(node('n2', '10.201.2.0/24', '192.168.1.2', '2'));
    assert.equal(seen.length, 1, 'a status change that routing does not see is not published');
    s.handleNode(node('n1', '10.201.1.0/24', '192.168.1.1', '2'));
    assert.equal(seen.at(-1), 'n1 10.201.1.0/24 192.168.1.1, n2 10.201.2.0/24 192.168.1.2');
    s.handleNodeDelete(node('n2', '10.201.2.0/24', '192.168.1.2'));
    assert.equal(seen.at(-1), 'n1 10.201.1.0/24 192.168.1.1');
  } finally {
    await s.close();
  }
});
