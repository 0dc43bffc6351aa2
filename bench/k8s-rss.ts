// RSS of the agent's Kubernetes side at 0, 1,000 and 10,000 services, measured
// in-process (no apiserver here yet): Service and EndpointSlice objects shaped
// like the apiserver's (with managedFields, labels, annotations) go through the
// same slimming, cache, conversion, model and a real ServiceLb (maps under a
// private pin root, programs never attached). Each service has 3 ready endpoints.
//   node --expose-gc dist/bench/k8s-rss.js [--json]   (root: it creates BPF maps)
import { existsSync, rmSync } from 'node:fs';
import { K8sSource } from '../src/k8s/source.js';
import { slimEndpointSlice, slimService, type K8sEndpointSlice, type K8sService } from '../src/k8s/convert.js';
import { ServiceLb } from '../src/dataplane/service-lb.js';
import { AgentMetrics } from '../src/k8s/metrics.js';
// Loaded as the agent loads them (the informer machinery), so their cost is in the idle number.
import '../src/k8s/informers.js';

const gc = (globalThis as { gc?: () => void }).gc;
const mb = (n: number): number => Math.round((n / 1048576) * 10) / 10;
function rss(): { rssMB: number; heapMB: number } {
  gc?.();
  gc?.();
  const m = process.memoryUsage();
  return { rssMB: mb(m.rss), heapMB: mb(m.heapUsed) };
}

function fatService(i: number): K8sService {
  return {
    metadata: {
      name: `svc-${i}`, namespace: `ns-${i % 50}`, resourceVersion: String(1000 + i), uid: `00000000-0000-0000-0000-${String(i).padStart(12, '0')}`,
      labels: { app: `app-${i}` }, annotations: { 'kubectl.kubernetes.io/last-applied-configuration': '{"apiVersion":"v1","kind":"Service","metadata":{"name":"x"},"spec":{"ports":[{"port":80,"targetPort":8080}]}}' },
      managedFields: [{ manager: 'kubectl', operation: 'Update', apiVersion: 'v1', fieldsType: 'FieldsV1', fieldsV1: { 'f:spec': { 'f:ports': {}, 'f:selector': {} } } }],
    } as never,
    spec: {
      type: 'ClusterIP', clusterIP: `10.${96 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`,
      ports: [{ name: 'http', port: 80, protocol: 'TCP', targetPort: 8080 }], sessionAffinity: 'None',
      selector: { app: `app-${i}` }, ipFamilies: ['IPv4'], ipFamilyPolicy: 'SingleStack', internalTrafficPolicy: 'Cluster',
    } as never,
  };
}

function fatSlice(i: number): K8sEndpointSlice {
  return {
    metadata: {
      name: `svc-${i}-abcde`, namespace: `ns-${i % 50}`, resourceVersion: String(50000 + i),
      labels: { 'kubernetes.io/service-name': `svc-${i}`, 'endpointslice.kubernetes.io/managed-by': 'endpointslice-controller.k8s.io' },
      managedFields: [{ manager: 'kube-controller-manager', operation: 'Update', fieldsType: 'FieldsV1', fieldsV1: { 'f:endpoints': {}, 'f:ports': {} } }],
    } as never,
    addressType: 'IPv4',
    endpoints: [0, 1, 2].map((k) => ({
      addresses: [`10.${200 + k}.${(i >> 8) & 255}.${i & 255}`], conditions: { ready: true, serving: true, terminating: false },
      nodeName: 'node-1', targetRef: { kind: 'Pod', namespace: `ns-${i % 50}`, name: `app-${i}-${k}`, uid: 'x' },
    })) as never,
    ports: [{ name: 'http', port: 8080, protocol: 'TCP' }],
  };
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('k8s-rss: needs root (creates BPF maps)');
  if (!gc) throw new Error('k8s-rss: run with node --expose-gc');
  const pinRoot = `/sys/fs/bpf/patu-test-k8srss-${process.pid}`;
  const lb = ServiceLb.open({ pinRoot });
  const metrics = new AgentMetrics();
  const source = new K8sSource({ nodeName: 'node-1', clusterCidr: '10.200.0.0/16', sink: lb, metrics, coalesceMs: 0, resyncMs: 0 });
  const results: Record<string, unknown>[] = [];
  try {
    for (const r of ['services', 'endpointslices', 'pods', 'node'] as const) source.markSynced(r);
    await new Promise((r) => setTimeout(r, 20));
    results.push({ services: 0, ...rss() });
    let have = 0;
    for (const target of [1000, 10000]) {
      const t0 = performance.now();
      for (let i = have; i < target; i++) {
        // What the informer does with each arriving object: slim, cache, hand over.
        source.handleService(slimService(fatService(i)));
        source.handleSlice(slimEndpointSlice(fatSlice(i)));
      }
      have = target;
      await new Promise((r) => setTimeout(r, 50));
      const ms = Math.round(performance.now() - t0);
      const programmed = lb.programmed().length;
      if (programmed !== target) throw new Error(`k8s-rss: ${programmed} service ports programmed, expected ${target}`);
      results.push({ services: target, programmedPorts: programmed, backends: target * 3, feedAndProgramMs: ms, ...rss() });
    }
  } finally {
    await source.close();
    lb.close();
    if (existsSync(pinRoot)) rmSync(pinRoot, { recursive: true, force: true });
  }
  if (process.argv.includes('--json')) console.log(JSON.stringify(results));
  else for (const r of results) console.log(JSON.stringify(r));
}

main().catch((e) => {
  console.error((e as Error).message);
  process.exitCode = 1;
});
