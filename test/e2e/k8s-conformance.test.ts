// Upstream Kubernetes network conformance, a focused subset for CI: scripts/k8s/conformance.sh (cluster.sh up
// --no-cni, test images, patu from deploy/patu.yaml, kube-dns, e2e.test --provider=skeleton, uplink check,
// teardown) with a focus on what a kube-proxy replacement most often gets wrong: NodePort, hostPort, DNS and
// ClientIP affinity. The full 45 run through the same script by hand; docs/conformance.md has their results.
//
// Needs root, the Kubernetes binaries and the suite (scripts/k8s/build.sh --with-suite: e2e.test, ginkgo,
// agnhost, CoreDNS) and podman (scripts/image.sh builds patu:dev). Skips, saying which, without them.
// The cluster gets this process's pid-derived names and free ports (test/helpers/k8s-cluster.ts), like the
// other cluster tests, and conformance.sh tears it down; a run killed half way is reaped by the next one.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO_ROOT } from '../helpers/cni.js';
import { K8S_BIN, TestCluster, clusterSkipReason, freePort, reapStaleClusters } from '../helpers/k8s-cluster.js';

// One spec each for NodePort, hostPort, DNS and ClientIP affinity (also through a NodePort). Each name must
// match exactly one spec: the test checks that every one of them ran and passed.
const CI_SPECS = [
  'Services should be able to create a functioning NodePort service [Conformance]',
  'HostPort validates that there is no conflict between pods with same hostPort but different hostIP and protocol',
  'DNS should provide DNS for services [Conformance]',
  'Services should have session affinity work for NodePort service [LinuxOnly] [Conformance]',
];
const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
const FOCUS = CI_SPECS.map(escape).join('|');

const suiteMissing = ['e2e.test', 'ginkgo'].filter((b) => !existsSync(join(K8S_BIN, b)));
const skip = clusterSkipReason()
  ?? (suiteMissing.length > 0 ? `no conformance suite (${suiteMissing.join(', ')}) in ${K8S_BIN}: run scripts/k8s/build.sh --with-suite` : undefined)
  ?? (!existsSync(join(REPO_ROOT, 'scripts', 'k8s', 'images.sh')) ? 'scripts/k8s/images.sh missing' : undefined)
  ?? (spawnSync('sh', ['-c', 'command -v podman'], { encoding: 'utf8' }).status !== 0 ? 'podman not installed (scripts/image.sh needs it)' : undefined);

describe('k8s conformance subset (NodePort, hostPort, DNS, affinity) through scripts/k8s/conformance.sh', { skip: skip ?? false }, () => {
  const cluster = new TestCluster();
  const report = mkdtempSync(join(tmpdir(), 'patu-conformance-'));
  after(() => {
    cluster.down(); // no-op when conformance.sh tore it down, as it should
    rmSync(report, { recursive: true, force: true });
  });

  test('every spec of the subset runs and passes; no packet to the service CIDR leaves the node', async () => {
    reapStaleClusters();
    const env = {
      ...cluster.env,
      PATU_K8S_API_PORT: String(await freePort()),
      PATU_K8S_ETCD_PORT: String(await freePort()),
      PATU_K8S_KUBELET_PORT: String(await freePort()),
      PATU_K8S_KUBELET_HEALTHZ_PORT: String(await freePort()),
      PATU_K8S_METRICS_PORT: String(await freePort()),
    };
    const t0 = Date.now();
    const r = spawnSync('bash', [join(REPO_ROOT, 'scripts', 'k8s', 'conformance.sh'), '--focus', FOCUS, '--report', report], {
      encoding: 'utf8', env, timeout: 45 * 60_000, maxBuffer: 64 << 20,
    });
    const secs = Math.round((Date.now() - t0) / 1000);
    const results = existsSync(join(report, 'results.tsv')) ? readFileSync(join(report, 'results.tsv'), 'utf8') : '';
    const detail = `exit ${r.status ?? r.signal} after ${secs} s\n${(r.stderr ?? '').slice(-4000)}\n${results}`;
    const last = (r.stdout ?? '').trim().split('\n').pop() ?? '';
    assert.equal(last, `${CI_SPECS.length} passed, 0 failed, 0 skipped`, detail);
    assert.equal(r.status, 0, detail);
    const ran = results.trim().split('\n').map((l) => l.split('\t'));
    for (const spec of CI_SPECS) {
      const hits = ran.filter(([, name]) => name!.includes(spec));
      assert.equal(hits.length, 1, `'${spec}' ran ${hits.length} times: ${detail}`);
      assert.equal(hits[0]![0], 'passed', detail);
    }
    console.log(`conformance subset: ${last} in ${secs} s`);
  });
});
