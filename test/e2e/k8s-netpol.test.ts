// Upstream NetworkPolicy e2e (test/e2e/network/netpol), a representative subset for CI through
// scripts/k8s/conformance.sh (cluster.sh up --no-cni, test images, patu from deploy/patu.yaml with network-policy
// on, kube-dns, e2e.test --provider=skeleton, uplink check, teardown): a default deny-all, traffic allowed from
// another namespace, a named port, egress to an ipBlock with an except, and a policy allowing SCTP that must not
// allow TCP. The whole Netpol suite (47 specs) runs through the same script by hand; docs/conformance.md has it.
//
// Needs root, the Kubernetes binaries and the suite (scripts/k8s/build.sh --with-suite) and podman
// (scripts/image.sh builds patu:dev). Skips, saying which, without them. The cluster gets this process's
// pid-derived names and free ports (test/helpers/k8s-cluster.ts); conformance.sh tears it down.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO_ROOT } from '../helpers/cni.js';
import { K8S_BIN, TestCluster, clusterSkipReason, freePort, reapStaleClusters } from '../helpers/k8s-cluster.js';

// Each name must match exactly one spec: the test checks that every one of them ran and passed.
const CI_SPECS = [
  "NetworkPolicy between server and client should support a 'default-deny-all' policy",
  'NetworkPolicy between server and client should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector',
  'NetworkPolicy between server and client should allow ingress access on one named port',
  'NetworkPolicy between server and client should enforce except clause while egress access to server in CIDR block',
  "NetworkPolicy between server and client should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if the plugin doesn't support SCTP",
];
const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
const FOCUS = CI_SPECS.map(escape).join('|');
// One process per spec: each spends most of its time waiting (pods starting, 81-pair probe matrices).
const PROCS = CI_SPECS.length;

const suiteMissing = ['e2e.test', 'ginkgo'].filter((b) => !existsSync(join(K8S_BIN, b)));
const skip = clusterSkipReason()
  ?? (suiteMissing.length > 0 ? `no conformance suite (${suiteMissing.join(', ')}) in ${K8S_BIN}: run scripts/k8s/build.sh --with-suite` : undefined)
  ?? (!existsSync(join(REPO_ROOT, 'scripts', 'k8s', 'images.sh')) ? 'scripts/k8s/images.sh missing' : undefined)
  ?? (spawnSync('sh', ['-c', 'command -v podman'], { encoding: 'utf8' }).status !== 0 ? 'podman not installed (scripts/image.sh needs it)' : undefined);

describe('k8s NetworkPolicy subset (deny-all, namespace, named port, ipBlock except, SCTP-not-TCP) through scripts/k8s/conformance.sh', { skip: skip ?? false }, () => {
  const cluster = new TestCluster();
  const report = mkdtempSync(join(tmpdir(), 'patu-netpol-'));
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
    const r = spawnSync('bash', [join(REPO_ROOT, 'scripts', 'k8s', 'conformance.sh'), '--focus', FOCUS, '--report', report, '--procs', String(PROCS)], {
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
    console.log(`netpol subset: ${last} in ${secs} s`);
  });
});
