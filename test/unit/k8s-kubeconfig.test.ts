// kubeconfig files: YAML, and JSON (kubectl accepts both), which must not load the YAML parser
// (the agent's RSS: bench/k8s-rss.ts writes JSON so it measures what a pod loads).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { kubeconfigFile } from '../../src/k8s/kubeconfig.js';

const doc = {
  apiVersion: 'v1', kind: 'Config', 'current-context': 'c',
  clusters: [{ name: 'k', cluster: { server: 'https://10.0.0.1:6443', 'insecure-skip-tls-verify': true } }],
  users: [{ name: 'u', user: { token: 'tok-123' } }],
  contexts: [{ name: 'c', context: { cluster: 'k', user: 'u' } }],
};

test('a JSON kubeconfig is read without the YAML parser; a YAML one gives the same config', () => {
  const dir = mkdtempSync(join(tmpdir(), 'patu-kcfg-'));
  try {
    const yamlPath = createRequire(import.meta.url).resolve('yaml');
    const cache = createRequire(import.meta.url).cache;
    delete cache[yamlPath];
    writeFileSync(join(dir, 'j'), JSON.stringify(doc, null, 2));
    const j = kubeconfigFile(join(dir, 'j'));
    assert.equal(j.server, 'https://10.0.0.1:6443');
    assert.equal(j.headers().Authorization, 'Bearer tok-123');
    assert.equal(cache[yamlPath], undefined, 'yaml must not be loaded for a JSON kubeconfig');

    writeFileSync(join(dir, 'y'), [
      'apiVersion: v1', 'kind: Config', 'current-context: c',
      'clusters: [{name: k, cluster: {server: "https://10.0.0.1:6443", insecure-skip-tls-verify: true}}]',
      'users: [{name: u, user: {token: tok-123}}]', 'contexts: [{name: c, context: {cluster: k, user: u}}]', '',
    ].join('\n'));
    const y = kubeconfigFile(join(dir, 'y'));
    assert.equal(y.server, j.server);
    assert.deepEqual(y.headers(), j.headers());
    // A YAML flow mapping starts with "{" too but is not JSON: the YAML parser takes it.
    writeFileSync(join(dir, 'f'), `{apiVersion: v1, current-context: c, clusters: ${JSON.stringify(doc.clusters)}, users: ${JSON.stringify(doc.users)}, contexts: ${JSON.stringify(doc.contexts)}}`);
    assert.equal(kubeconfigFile(join(dir, 'f')).server, j.server);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
