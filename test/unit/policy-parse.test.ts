// The policy file: a YAML stream of Namespace, NetworkPolicy, Pod (and List) objects into
// a PolicyState; every problem named by its document and field path.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parsePolicyText, PolicyFileError } from '../../src/policy/parse.js';
import { evaluate } from '../../src/policy/evaluate.js';

const good = `
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: { team: web }
---
apiVersion: v1
kind: Pod
metadata: { name: db, namespace: shop, labels: { role: db } }
spec:
  containers:
    - name: pg
      image: postgres
      ports: [{ name: pg, containerPort: 5432 }, { containerPort: 9187, protocol: TCP }]
status: { podIP: 10.200.0.10 }
---
apiVersion: v1
kind: Pod
metadata: { name: web, namespace: shop, labels: { role: web } }
spec: { containers: [{ name: nginx }] }
status: { podIPs: [{ ip: 10.200.0.11 }] }
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: { name: db, namespace: shop }
spec:
  podSelector: { matchLabels: { role: db } }
  policyTypes: [Ingress, Egress]
  ingress:
    - from:
        - podSelector: { matchExpressions: [{ key: role, operator: In, values: [web] }] }
        - ipBlock: { cidr: 172.17.0.0/16, except: [172.17.1.0/24] }
      ports: [{ port: pg }, { port: 9000, endPort: 9100, protocol: SCTP }]
  egress: []
---
# a trailing separator and an empty document are fine
---
`;

async function problemsOf(text: string): Promise<string[]> {
  try {
    await parsePolicyText(text, 'f.yaml');
  } catch (e) {
    assert.ok(e instanceof PolicyFileError, `expected PolicyFileError, got ${e}`);
    return e.problems;
  }
  assert.fail('expected a validation error');
}

test('a good stream becomes a PolicyState (namespace defaulted, podIPs, named ports, protocol default TCP, every pod local)', async () => {
  const s = await parsePolicyText(good, 'f.yaml');
  assert.deepEqual(s.namespaces, [{ name: 'shop', labels: { team: 'web' } }]);
  assert.equal(s.pods.length, 2);
  assert.deepEqual(s.pods[0], {
    namespace: 'shop', name: 'db', labels: { role: 'db' }, ips: ['10.200.0.10'], local: true,
    ports: [{ name: 'pg', containerPort: 5432, protocol: 'TCP' }, { containerPort: 9187, protocol: 'TCP' }],
  });
  assert.deepEqual(s.pods[1]!.ips, ['10.200.0.11']);
  assert.equal(s.policies.length, 1);
  const p = s.policies[0]!;
  assert.deepEqual(p.metadata, { namespace: 'shop', name: 'db' });
  assert.deepEqual(p.spec.policyTypes, ['Ingress', 'Egress']);
  assert.deepEqual(p.spec.ingress![0]!.ports, [{ port: 'pg' }, { port: 9000, endPort: 9100, protocol: 'SCTP' }]);
  assert.deepEqual(p.spec.egress, []);
  assert.equal(evaluate(s, { src: '10.200.0.11', dst: '10.200.0.10', proto: 6, dport: 5432 }).allowed, true);
  assert.equal(evaluate(s, { src: '10.200.0.11', dst: '10.200.0.10', proto: 6, dport: 5433 }).allowed, false);
});

test('a List (kubectl get -o yaml) and JSON', async () => {
  const s = await parsePolicyText(JSON.stringify({
    apiVersion: 'v1', kind: 'List',
    items: [{ apiVersion: 'networking.k8s.io/v1', kind: 'NetworkPolicy', metadata: { name: 'deny', namespace: 'x' }, spec: { podSelector: {} } }],
  }), 'f.json');
  assert.equal(s.policies.length, 1);
  assert.equal(s.policies[0]!.metadata.namespace, 'x');
  // Empty List: no policies, said explicitly.
  const none = await parsePolicyText('apiVersion: v1\nkind: List\nitems: []\n');
  assert.deepEqual(none.policies, []);
});

test('every problem names its document (1 = first) and field', async () => {
  const bad = `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: { name: p1, namespace: x }
spec:
  podSelector: { matchLabels: { app: 1 } }
  ingres: []
  ingress:
    - from:
        - ipBlock: { cidr: 10.0.0.0/8, except: [192.168.0.0/16, 10.0.0.0/8] }
        - {}
        - ipBlock: { cidr: 10.0.0.0/33 }
          podSelector: {}
      ports:
        - { port: http, endPort: 90 }
        - { port: 80, endPort: 79 }
        - { port: "8080" }
        - { port: 70000 }
        - { protocol: ICMP }
        - { port: Not_A_Name }
    - from: [{ podSelector: { matchExpressions: [{ key: a, operator: In }, { key: b, operator: Exists, values: [x] }, { key: c, operator: Has }] } }]
  policyTypes: [Ingress, Ingress]
---
apiVersion: v1
kind: Pod
metadata: { name: p, namespace: x }
spec:
  containers: [{ ports: [{ name: web, containerPort: 80 }, { name: web, containerPort: 81 }] }]
status: { podIP: 10.0.0.300 }
---
apiVersion: v1
kind: Service
metadata: { name: s }
---
- a list
---
apiVersion: networking.k8s.io/v1beta1
kind: NetworkPolicy
metadata: { name: Bad_Name }
spec: { podSelector: {} }
`;
  const problems = await problemsOf(bad);
  const has = (re: RegExp) => assert.ok(problems.some((p) => re.test(p)), `no problem matching ${re} in:\n${problems.join('\n')}`);
  has(/^document 1 \(NetworkPolicy x\/p1\): spec\.podSelector\.matchLabels\.app: must be a string/);
  has(/^document 1 \(NetworkPolicy x\/p1\): spec: .*ingres/);
  has(/^document 1 .*: spec\.ingress\[0\]\.from\[0\]\.ipBlock\.except\[0\]: 192\.168\.0\.0\/16 is not strictly inside cidr 10\.0\.0\.0\/8/);
  has(/spec\.ingress\[0\]\.from\[0\]\.ipBlock\.except\[1\]: 10\.0\.0\.0\/8 is not strictly inside/);
  has(/spec\.ingress\[0\]\.from\[1\]: must name podSelector, namespaceSelector or ipBlock/);
  has(/spec\.ingress\[0\]\.from\[2\]\.ipBlock\.cidr: must be a CIDR/);
  has(/spec\.ingress\[0\]\.ports\[0\]\.endPort: needs a numeric port/);
  has(/spec\.ingress\[0\]\.ports\[1\]\.endPort: must be at least port \(80\)/);
  has(/spec\.ingress\[0\]\.ports\[2\]\.port: /);
  has(/spec\.ingress\[0\]\.ports\[3\]\.port: /);
  has(/spec\.ingress\[0\]\.ports\[4\]\.protocol: must be TCP, UDP or SCTP/);
  has(/spec\.ingress\[0\]\.ports\[5\]\.port: /);
  has(/spec\.ingress\[1\]\.from\[0\]\.podSelector\.matchExpressions\[0\]\.values: must not be empty with In/);
  has(/matchExpressions\[1\]\.values: must be empty with Exists/);
  has(/matchExpressions\[2\]\.operator: must be In, NotIn, Exists or DoesNotExist/);
  has(/spec\.policyTypes: lists a type twice/);
  has(/^document 2 \(Pod x\/p\): status\.podIP: must be an IP address/);
  has(/^document 3: kind: 'Service' is not one of Namespace, NetworkPolicy, Pod, List/);
  has(/^document 4: must be a Kubernetes object/);
  has(/^document 5 \(NetworkPolicy default\/Bad_Name\): apiVersion: must be networking\.k8s\.io\/v1/);
  has(/^document 5 .*metadata\.name: must be a DNS subdomain/);
});

test('duplicates: an object twice, a port name twice in a pod, one address for two pods', async () => {
  const p = (name: string, ip: string, extra = '') => `apiVersion: v1\nkind: Pod\nmetadata: { name: ${name} }\n${extra}status: { podIP: ${ip} }\n`;
  const problems = await problemsOf([
    p('a', '10.0.0.1'), p('a', '10.0.0.2'), p('b', '10.0.0.1'),
    p('c', '10.0.0.3', 'spec: { containers: [{ ports: [{ name: web, containerPort: 80 }] }, { ports: [{ name: web, containerPort: 81 }] }] }\n'),
    p('h', '10.0.0.1', 'spec: { hostNetwork: true }\n'),
  ].join('---\n'));
  assert.deepEqual(problems, [
    'document 2 (Pod default/a): metadata.name: Pod default/a is already defined in document 1',
    'document 3 (Pod default/b): status.podIP: 10.0.0.1 is also the address of Pod default/a (document 1)',
    'document 4 (Pod default/c): spec.containers[1].ports[0].name: port name web is used twice in the pod',
  ]);
});

test('an empty file, or one with only comments, is an error (a writer caught half-way), syntax errors name the document', async () => {
  assert.match((await problemsOf(''))[0]!, /the file is empty/);
  assert.match((await problemsOf('# nothing\n---\n'))[0]!, /holds no object/);
  assert.match((await problemsOf('kind: Pod\n---\nkind: [\n'))[0]!, /^document 2: \(syntax\)/);
});
