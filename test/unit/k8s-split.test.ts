// The Kubernetes source in split mode: K8sSource feeding a DataplaneMirror (its services
// sink and pod flag sink) that pushes to a data plane in memory. What the manager ends up
// holding is what the in-process agent would have programmed; pod opt-outs become pod
// flags; a pod that leaves takes its flag out of what is re-sent.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { K8sSource } from '../../src/k8s/source.js';
import type { K8sEndpointSlice, K8sService } from '../../src/k8s/convert.js';
import { DataplaneMirror } from '../../src/agent/mirror.js';
import { FakeDataplane } from '../helpers/fake-dataplane.js';

const svc = (name: string, ip: string): K8sService => ({
  metadata: { name, namespace: 'default', resourceVersion: '1' },
  spec: { type: 'ClusterIP', clusterIP: ip, ports: [{ name: 'http', port: 80, protocol: 'TCP', targetPort: 8080 }] },
});
const slice = (name: string, service: string, ips: string[]): K8sEndpointSlice => ({
  metadata: { name, namespace: 'default', labels: { 'kubernetes.io/service-name': service } },
  addressType: 'IPv4',
  endpoints: ips.map((ip) => ({ addresses: [ip], conditions: { ready: true } })),
  ports: [{ name: 'http', port: 8080, protocol: 'TCP' }],
});
const pod = (name: string, ip: string, ann?: string) => ({
  metadata: { name, namespace: 'default', ...(ann ? { annotations: { 'patu.dev/accel': ann } } : {}) },
  spec: {}, status: { phase: 'Running', podIP: ip },
});

test('split: services and pod opt-outs from the Kubernetes source reach the manager through the mirror', async () => {
  const dp = new FakeDataplane();
  const mirror = new DataplaneMirror({ dataplane: dp, heartbeatMs: 0, backoffMs: 1, maxBackoffMs: 4 });
  const s = new K8sSource({ nodeName: 'n1', clusterCIDR: '10.200.0.0/16', sink: mirror.services, podFlags: mirror.pods, coalesceMs: 2, resyncMs: 0, retryMs: 10 });
  try {
    s.handleService(svc('a', '10.96.0.1'));
    s.handleSlice(slice('a-1', 'a', ['10.200.0.5', '10.200.0.6']));
    for (const r of ['services', 'endpointslices', 'pods', 'node'] as const) s.markSynced(r);
    await sleep(20);
    await mirror.idle();
    assert.deepEqual(dp.services.get('10.96.0.1:80/TCP')?.backends, ['10.200.0.5:8080', '10.200.0.6:8080']);
    assert.equal(dp.calls.find((c) => c.method === 'applyServices')?.full, true, 'the first push is a full one');

    s.handleService(svc('b', '10.96.0.2'));
    s.handleSlice(slice('b-1', 'b', ['10.200.0.7']));
    s.handleServiceDelete(svc('a', '10.96.0.1'));
    s.handlePod(pod('p1', '10.200.0.9', 'off'));
    s.handlePod(pod('p2', '10.200.0.10'));
    await sleep(20);
    await mirror.idle();
    assert.deepEqual([...dp.services.keys()], ['10.96.0.2:80/TCP']);
    assert.deepEqual(Object.fromEntries(dp.podFlags), { '10.200.0.9': true }, 'an opt-out pushed; a pod without one: nothing to say');

    s.handlePod(pod('p1', '10.200.0.9')); // annotation removed
    await sleep(5);
    await mirror.idle();
    assert.deepEqual(Object.fromEntries(dp.podFlags), { '10.200.0.9': false });

    s.handlePod(pod('p3', '10.200.0.11', 'off'));
    s.handlePodDelete(pod('p3', '10.200.0.11'));
    await sleep(5);
    await mirror.idle();
    assert.equal(mirror.desiredPodFlags().has('10.200.0.11'), false, 'a deleted pod\'s address is not re-sent (it may be the next pod\'s)');

    // The manager restarts and the next delta is refused: everything comes back whole.
    dp.restart();
    s.handleSlice(slice('b-1', 'b', ['10.200.0.7', '10.200.0.8']));
    await sleep(20);
    await mirror.idle();
    assert.deepEqual(dp.services.get('10.96.0.2:80/TCP')?.backends, ['10.200.0.7:8080', '10.200.0.8:8080']);
    assert.equal(dp.services.size, 1);
    assert.equal(s.notReady(), undefined);
    assert.equal(mirror.notReady(), undefined);
  } finally {
    await s.close();
    await mirror.close();
  }
});
