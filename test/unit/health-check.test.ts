// healthCheckNodePort serving (kube-proxy's contract) on loopback, no root:
// 200 + JSON while a local endpoint exists, 503 without, conflicts and taken
// ports reported without stopping the rest, ports closed when the service goes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import { HealthCheckServer } from '../../src/services/health-check.js';
import { ServiceModel, type Service } from '../../src/services/model.js';

const HOST = '127.0.0.1';
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A port free right now on loopback (the kernel's pick). */
async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, HOST, r));
  const port = (s.address() as { port: number }).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

async function get(port: number): Promise<{ status: number; body: unknown; weight: string | null } | { error: string }> {
  try {
    const r = await fetch(`http://${HOST}:${port}/healthz`);
    return { status: r.status, body: await r.json(), weight: r.headers.get('x-load-balancing-endpoint-weight') };
  } catch (e) {
    return { error: ((e as Error).cause as NodeJS.ErrnoException | undefined)?.code ?? (e as Error).message };
  }
}

async function until<T>(what: string, f: () => Promise<T>, ok: (v: T) => boolean): Promise<T> {
  for (let i = 0; i < 100; i++) {
    const v = await f();
    if (ok(v)) return v;
    await sleep(20);
  }
  throw new Error(`timed out waiting for ${what}`);
}

test('200 with the local endpoint count while there is one, 503 without; gone when the service goes', async () => {
  const errors: string[] = [];
  const h = new HealthCheckServer({ host: HOST, onError: (e) => errors.push(e.message) });
  try {
    const port = await freePort();
    h.update([{ ref: 'ns/web', port, localEndpoints: 2 }]);
    const ok = await until('200', () => get(port), (r) => 'status' in r);
    assert.deepEqual(ok, { status: 200, body: { service: { namespace: 'ns', name: 'web' }, localEndpoints: 2, serviceProxyHealthy: true }, weight: '2' });
    h.update([{ ref: 'ns/web', port, localEndpoints: 0 }]);
    const none = await get(port);
    assert.ok('status' in none && none.status === 503, JSON.stringify(none));
    assert.deepEqual((none as { body: unknown }).body, { service: { namespace: 'ns', name: 'web' }, localEndpoints: 0, serviceProxyHealthy: true });
    h.update([]);
    await until('closed', () => get(port), (r) => 'error' in r);
    assert.deepEqual(errors, []);
  } finally {
    await h.close();
  }
});

test('a port two services ask for stays with its holder (the other is reported); a port taken on the node is reported and retried', async () => {
  const errors: { ref: string; reason: string }[] = [];
  const h = new HealthCheckServer({ host: HOST, onError: (e) => errors.push({ ref: e.ref, reason: e.reason }) });
  const squatter = createServer();
  try {
    const port = await freePort();
    h.update([{ ref: 'ns/b', port, localEndpoints: 1 }]);
    await until('b served', () => get(port), (r) => 'status' in r);
    h.update([{ ref: 'ns/a', port, localEndpoints: 3 }, { ref: 'ns/b', port, localEndpoints: 1 }]);
    assert.deepEqual(errors, [{ ref: 'ns/a', reason: 'conflict' }]);
    const r = await get(port);
    assert.equal((r as { weight: string }).weight, '1', 'the holder (b) keeps the port');

    const taken = await freePort();
    await new Promise<void>((res) => squatter.listen(taken, HOST, res));
    h.update([{ ref: 'ns/b', port, localEndpoints: 1 }, { ref: 'ns/c', port: taken, localEndpoints: 1 }]);
    await until('listen error', async () => errors.length, (n) => n === 2);
    assert.deepEqual(errors[1], { ref: 'ns/c', reason: 'listen' });
    assert.equal(((await get(port)) as { status: number }).status, 200, 'the rest keeps working');
    await new Promise<void>((res) => squatter.close(() => res()));
    h.update([{ ref: 'ns/b', port, localEndpoints: 1 }, { ref: 'ns/c', port: taken, localEndpoints: 1 }]);
    const c = await until('c served after the port was freed', () => get(taken), (x) => 'status' in x);
    assert.equal((c as { status: number }).status, 200);
  } finally {
    squatter.close();
    await h.close();
  }
});

test('the model asks for a health check only for externalTrafficPolicy Local NodePort/LoadBalancer services, counting this node\'s ready endpoints', () => {
  const m = new ServiceModel({ nodeName: 'n1' });
  const s: Service = { namespace: 'd', name: 'lb', clusterIP: '10.96.0.5', sessionAffinity: 'None', affinityTimeoutSeconds: 10800, type: 'LoadBalancer',
    externalTrafficPolicy: 'Local', healthCheckNodePort: 32000, ports: [{ port: 80, protocol: 'TCP', targetPort: 80, nodePort: 30000 }] };
  m.upsertService(s);
  m.setEndpoints('d/lb', [
    { ip: '10.1.0.1', ready: true, serving: true, terminating: false, nodeName: 'n1' },
    { ip: '10.1.0.2', ready: false, serving: false, terminating: false, nodeName: 'n1' },
    { ip: '10.1.0.3', ready: true, serving: true, terminating: false, nodeName: 'n2' },
  ]);
  assert.deepEqual(m.healthCheck('d/lb'), { ref: 'd/lb', port: 32000, localEndpoints: 1 });
  m.upsertService({ ...s, externalTrafficPolicy: 'Cluster' });
  assert.equal(m.healthCheck('d/lb'), undefined);
});
