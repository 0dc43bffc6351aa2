// The informer path over HTTP (our paginated list, streaming watch, relist on
// 410, restart backoff) against a small stand-in apiserver on loopback:
// list with pagination, watch streams, an outage and a 410 Gone. The same
// code against a real kube-apiserver: test/integration/k8s-apiserver.test.ts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server, type ServerResponse } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { Agent } from 'node:http';
import { startInformer } from '../../src/k8s/informers.js';
import { slimService, type K8sService } from '../../src/k8s/convert.js';
import type { ClientConfig } from '../../src/k8s/kubeconfig.js';

class FakeApiserver {
  rv = 100;
  objects = new Map<string, K8sService>();
  watches = new Set<ServerResponse>();
  lists = 0;
  watchQueries: URLSearchParams[] = [];
  /** Answer watches from a resourceVersion below this with 410 Gone (as after etcd compaction). */
  compactedBelow = 0;
  server: Server | undefined;
  port = 0;

  add(name: string, ip: string): void {
    const o: K8sService = { metadata: { name, namespace: 'default', resourceVersion: String(++this.rv), managedFields: [{ x: 1 }] } as never, spec: { clusterIP: ip, ports: [{ port: 80 }] } };
    const type = this.objects.has(name) ? 'MODIFIED' : 'ADDED';
    this.objects.set(name, o);
    this.send({ type, object: o });
  }
  del(name: string): void {
    const o = this.objects.get(name)!;
    this.objects.delete(name);
    this.send({ type: 'DELETED', object: { ...o, metadata: { ...o.metadata, resourceVersion: String(++this.rv) } } });
  }
  send(ev: unknown): void {
    for (const w of this.watches) w.write(JSON.stringify(ev) + '\n');
  }

  async start(port = 0): Promise<void> {
    this.server = createServer((req, res) => {
      const url = new URL(req.url!, 'http://x');
      assert.equal(url.pathname, '/api/v1/services');
      if (url.searchParams.get('watch') === 'true') {
        this.watchQueries.push(url.searchParams);
        if (Number(url.searchParams.get('resourceVersion')) < this.compactedBelow) {
          res.writeHead(410, { 'Content-Type': 'application/json' }).end(JSON.stringify({ kind: 'Status', code: 410, message: 'too old resource version' }));
          return;
        }
        res.writeHead(200, { 'Content-Type': 'application/json' });
        res.flushHeaders();
        this.watches.add(res);
        res.on('close', () => this.watches.delete(res));
        return;
      }
      this.lists++;
      // Pages of 2 when the client asks for a limit: the client must follow `continue`.
      const all = [...this.objects.values()].sort((a, b) => a.metadata.name!.localeCompare(b.metadata.name!));
      const start = Number(url.searchParams.get('continue') ?? 0);
      const items = all.slice(start, start + 2);
      const next = start + 2 < all.length ? String(start + 2) : undefined;
      res.writeHead(200, { 'Content-Type': 'application/json' }).end(JSON.stringify({ kind: 'ServiceList', metadata: { resourceVersion: String(this.rv), ...(next ? { continue: next } : {}) }, items }));
    });
    await new Promise<void>((r) => this.server!.listen(port, '127.0.0.1', () => r()));
    this.port = (this.server.address() as { port: number }).port;
  }

  async stop(): Promise<void> {
    for (const w of this.watches) w.destroy();
    this.watches.clear();
    this.server?.closeAllConnections();
    await new Promise<void>((r) => this.server!.close(() => r()));
  }
}

function cfgFor(port: number): ClientConfig {
  const server = `http://127.0.0.1:${port}`;
  const agent = new Agent({ keepAlive: true });
  const headers = () => ({ Accept: 'application/json' });
  return { server, source: 'test', agent, headers, getCurrentCluster: () => ({ server, name: 'test' }), applyToFetchOptions: async (o) => ({ ...o, agent, headers: headers() }) };
}

async function until(what: string, cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for: ${what}`);
    await sleep(10);
  }
}

test('list (paginated) then watch; an outage keeps the cache and the informer catches up after it', async () => {
  const api = new FakeApiserver();
  for (let i = 0; i < 5; i++) api.add(`s${i}`, `10.96.0.${i}`);
  await api.start();
  const cache = new Map<string, K8sService>();
  const deleted: string[] = [];
  let synced = 0, errors = 0, restarts = 0;
  const inf = startInformer<K8sService>(cfgFor(api.port), { resource: 'services', path: '/api/v1/services', slim: slimService }, {
    onUpsert: (o) => cache.set(o.metadata.name!, o),
    onDelete: (o) => { cache.delete(o.metadata.name!); deleted.push(o.metadata.name!); },
    onSynced: () => synced++,
    onError: () => errors++,
    onRestart: () => restarts++,
  }, { initialMs: 50, maxMs: 200 });
  try {
    await until('initial sync', () => synced === 1);
    assert.equal(cache.size, 5, 'all pages of the list must be delivered before synced');
    assert.equal(api.lists, 3, '5 objects in pages of 2');
    assert.ok(!('managedFields' in cache.get('s0')!.metadata), 'objects must be slimmed before caching');
    await until('watch open', () => api.watches.size === 1);
    api.add('s5', '10.96.0.5');
    api.del('s1');
    await until('watch events', () => cache.has('s5') && !cache.has('s1'));

    // Outage: the apiserver goes away. Nothing is deleted downstream; the informer keeps retrying.
    const port = api.port;
    const lastRv = String(api.rv);
    await api.stop();
    await until('error seen', () => errors >= 2, 5000);
    assert.equal(cache.size, 5);
    assert.deepEqual(deleted, ['s1']);
    // Changes made while we were away (the apiserver comes back with them).
    api.add('s6', '10.96.0.6');
    api.objects.delete('s2');
    api.compactedBelow = api.rv; // our resourceVersion (before s6) is too old now: the library must relist
    await api.start(port);
    await until('caught up after the outage', () => cache.has('s6') && !cache.has('s2'), 5000);
    assert.ok(restarts >= 1, 'a restart must be counted');
    assert.equal(api.lists, 6, 'the 410 must lead to exactly one relist');
    assert.ok(api.watchQueries.some((q) => q.get('resourceVersion') === lastRv), 'the first watch after the outage resumes from the last resourceVersion');
    assert.equal(synced, 1, 'synced is reported once');
    assert.deepEqual(deleted.sort(), ['s1', 's2'], 'only what really disappeared is deleted');
    assert.equal(inf.list().length, 5);
  } finally {
    await inf.stop();
    await api.stop().catch(() => {});
  }
});

test('a watch the apiserver ends is reopened from the last bookmark, without a relist; an in-stream 410 relists once', async () => {
  const api = new FakeApiserver();
  for (let i = 0; i < 3; i++) api.add(`s${i}`, `10.96.1.${i}`);
  await api.start();
  const cache = new Map<string, K8sService>();
  let upserts = 0, errors = 0;
  const inf = startInformer<K8sService>(cfgFor(api.port), { resource: 'services', path: '/api/v1/services', slim: slimService }, {
    onUpsert: (o) => { upserts++; cache.set(o.metadata.name!, o); },
    onDelete: (o) => cache.delete(o.metadata.name!),
    onSynced: () => {},
    onError: () => errors++,
  }, { initialMs: 50, maxMs: 200 });
  try {
    await until('watch open', () => api.watches.size === 1);
    const lists = api.lists;
    assert.equal(api.watchQueries[0]!.get('allowWatchBookmarks'), 'true');
    // A bookmark moves the resourceVersion on without an object; then the apiserver ends the stream (timeoutSeconds).
    api.send({ type: 'BOOKMARK', object: { kind: 'Service', metadata: { resourceVersion: '5000' } } });
    await sleep(50);
    for (const w of api.watches) w.end();
    await until('watch reopened', () => api.watchQueries.length === 2 && api.watches.size === 1);
    assert.equal(api.watchQueries[1]!.get('resourceVersion'), '5000', 'reopened from the bookmark');
    assert.equal(api.lists, lists, 'no relist after a normal end');
    assert.equal(errors, 0, 'a normal end is not an error');

    // An ERROR event carrying 410 in the stream: one relist, only differences delivered.
    const before = upserts;
    api.objects.delete('s0');
    api.send({ type: 'ERROR', object: { kind: 'Status', code: 410, message: 'too old resource version' } });
    await until('relisted', () => api.lists > lists && !cache.has('s0'));
    assert.equal(api.lists, lists + 1, 'one relist (2 objects left: one page)');
    assert.equal(upserts, before, 'unchanged objects are not delivered again');
    await until('watch reopened after the relist', () => api.watches.size === 1);
  } finally {
    await inf.stop();
    await api.stop().catch(() => {});
  }
});

test('watch lines are framed on bytes: an event split mid-character across chunks, several in one chunk, blank lines', async () => {
  const api = new FakeApiserver();
  await api.start();
  const got = new Map<string, K8sService>();
  let synced = 0;
  const inf = startInformer<K8sService>(cfgFor(api.port), { resource: 'services', path: '/api/v1/services', slim: slimService }, {
    onUpsert: (o) => got.set(o.metadata.name!, o),
    onDelete: (o) => got.delete(o.metadata.name!),
    onSynced: () => synced++,
  }, { initialMs: 50, maxMs: 200 });
  try {
    await until('watch open', () => synced === 1 && api.watches.size === 1);
    const w = [...api.watches][0]!;
    const ev = (name: string, rv: number) => Buffer.from(JSON.stringify({ type: 'ADDED', object: { metadata: { name, namespace: 'default', resourceVersion: String(rv), annotations: { note: 'é€😀' } }, spec: { clusterIP: '10.96.0.9', ports: [{ port: 80 }] } } }) + '\n');
    // One event in three writes, cut inside the 4-byte emoji and the 3-byte euro sign.
    const a = ev('ünï', 201);
    const emoji = a.indexOf(Buffer.from('😀'));
    const euro = a.indexOf(Buffer.from('€'));
    for (const part of [a.subarray(0, euro + 1), a.subarray(euro + 1, emoji + 2), a.subarray(emoji + 2)]) {
      w.write(part);
      await sleep(30);
    }
    // Two events and blank lines in one write, the second one's end in the next.
    const b = Buffer.concat([Buffer.from('\n\r\n'), ev('b', 202), Buffer.from('\n'), ev('c', 203)]);
    w.write(b.subarray(0, b.length - 5));
    await sleep(30);
    w.write(b.subarray(b.length - 5));
    await until('three events', () => got.size === 3);
    assert.equal(got.get('ünï')?.metadata.resourceVersion, '201');
    assert.ok(got.has('b') && got.has('c'));
    assert.equal(inf.stats.errors, 0, 'no event may be undecodable');
  } finally {
    await inf.stop();
    await api.stop().catch(() => {});
  }
});
