// deploy/podnet-crds.yaml and deploy/podnet-tenant-role.yaml: the CRDs say what
// src/podnet/validate.ts enforces (same limits, same patterns, the same reserved tables and
// names), the admission policy guards patu.yaml's agent, and the example tenant Role grants
// PodNetworkConfigs in one namespace and nothing else. That the apiserver enforces all of it
// as written: test/integration/podnet-crd.test.ts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadManifest as load, type Doc } from '../helpers/manifests.js';
import { DNS_SUBDOMAIN_PATTERN, IFNAME_PATTERN, LIMITS, MAC_PATTERN, RESERVED_IFNAMES } from '../../src/podnet/validate.js';
import { NETWORK_STATUS_ANNOTATION, PODNET_FINALIZER, PODNET_GROUP, PODNET_VERSION, RESERVED_TABLES } from '../../src/podnet/types.js';

const crds = () => new Map(load('podnet-crds.yaml').filter((d) => d.kind === 'CustomResourceDefinition').map((d) => [d.spec.names.kind as string, d]));
const schemaOf = (crd: Doc): Doc => crd.spec.versions[0].schema.openAPIV3Schema;
const rules = (s: Doc): string => (s['x-kubernetes-validations'] as Doc[] | undefined ?? []).map((r) => r.rule).join(' ');

test('podnet-crds.yaml: two CRDs of network.patu.dev/v1alpha1, NodeNetwork cluster-scoped, PodNetworkConfig namespaced, with status subresources', () => {
  const docs = load('podnet-crds.yaml');
  assert.deepEqual(docs.map((d) => `${d.kind}/${d.metadata.name}`), [
    'CustomResourceDefinition/nodenetworks.network.patu.dev', 'CustomResourceDefinition/podnetworkconfigs.network.patu.dev',
    'ValidatingAdmissionPolicy/patu-agent-writes', 'ValidatingAdmissionPolicyBinding/patu-agent-writes',
  ]);
  const byKind = crds();
  assert.equal(byKind.get('NodeNetwork')!.spec.scope, 'Cluster');
  assert.equal(byKind.get('PodNetworkConfig')!.spec.scope, 'Namespaced');
  for (const crd of byKind.values()) {
    assert.equal(crd.spec.group, PODNET_GROUP);
    assert.deepEqual(crd.spec.versions.map((v: Doc) => v.name), [PODNET_VERSION]);
    assert.deepEqual(crd.spec.versions[0].subresources, { status: {} });
    assert.ok(crd.spec.versions[0].additionalPrinterColumns.some((c: Doc) => c.name === 'Ready'));
  }
  // Not in patu.yaml: deleting the agents must not delete every tenant's configs.
  assert.ok(!load('patu.yaml').some((d) => d.kind === 'CustomResourceDefinition'));
});

test('podnet-crds.yaml: the schema\'s limits and patterns are validate.ts\'s', () => {
  const nn = schemaOf(crds().get('NodeNetwork')!).properties.spec;
  const pnc = schemaOf(crds().get('PodNetworkConfig')!).properties.spec;
  const p = nn.properties;
  assert.equal(p.bridge.pattern, IFNAME_PATTERN);
  assert.equal(p.bridge.maxLength, LIMITS.ifname);
  assert.equal(p.vlan.properties.link.pattern, IFNAME_PATTERN);
  assert.match(rules(p.vlan.properties.id), new RegExp(`self >= ${LIMITS.vlanMin} && self <= ${LIMITS.vlanMax}`));
  assert.deepEqual([p.mtu.minimum, p.mtu.maximum], [LIMITS.mtuMin, LIMITS.mtuMax]);
  assert.match(rules(p.subnet), new RegExp(`prefixLength\\(\\) <= ${LIMITS.subnetPrefixMax}`));
  assert.equal(p.subnet.maxLength, LIMITS.cidrText);
  for (const f of ['gateway', 'rangeStart', 'rangeEnd']) assert.equal(p[f].maxLength, LIMITS.ipText, f);
  for (const sel of [p.namespaceSelector, pnc.properties.podSelector]) {
    assert.equal(sel.properties.matchLabels.maxProperties, LIMITS.selectorLabels);
    assert.equal(sel.properties.matchLabels.additionalProperties.maxLength, LIMITS.labelValue);
    assert.equal(sel.properties.matchExpressions.maxItems, LIMITS.selectorExpressions);
    assert.equal(sel.properties.matchExpressions.items.properties.key.maxLength, LIMITS.labelKey);
    assert.equal(sel.properties.matchExpressions.items.properties.values.maxItems, LIMITS.selectorValues);
  }
  assert.deepEqual(p.namespaceSelector, { ...pnc.properties.podSelector, description: p.namespaceSelector.description }, 'one selector schema (descriptions aside)');

  const ifs = pnc.properties.interfaces;
  assert.equal(ifs.maxItems, LIMITS.interfaces);
  assert.match(rules(ifs), /exists_one\(j, j.name == i.name\)/, 'unique names');
  const i = ifs.items.properties;
  assert.equal(i.name.pattern, IFNAME_PATTERN);
  for (const n of RESERVED_IFNAMES) assert.ok(rules(i.name).includes(`'${n}'`), `name ${n} refused`);
  assert.equal(i.network.pattern, DNS_SUBDOMAIN_PATTERN);
  assert.equal(i.network.maxLength, LIMITS.networkName);
  assert.equal(i.mac.pattern, MAC_PATTERN);
  assert.deepEqual([i.mtu.minimum, i.mtu.maximum], [LIMITS.mtuMin, LIMITS.mtuMax]);
  assert.equal(i.routes.maxItems, LIMITS.routes);
  assert.equal(i.rules.maxItems, LIMITS.rules);
  const route = i.routes.items.properties;
  const rule = i.rules.items.properties;
  for (const table of [route.table, rule.table]) {
    assert.equal(table.maximum, LIMITS.tableMax);
    // The reserved tables of types.ts: 0 by `self >= 1`, the rest listed.
    const listed = [...RESERVED_TABLES.keys()].filter((t) => t !== 0);
    assert.ok(rules(table).includes(`self >= 1 && !(self in [${listed.join(', ')}])`), rules(table));
  }
  assert.equal(route.metric.maximum, LIMITS.metricMax);
  assert.deepEqual([rule.priority.minimum, rule.priority.maximum], [LIMITS.priorityMin, LIMITS.priorityMax]);
});

test('podnet-tenant-role.yaml: a Role on podnetworkconfigs only, in one namespace, bound to one ServiceAccount there', () => {
  const docs = load('podnet-tenant-role.yaml');
  assert.deepEqual(docs.map((d) => d.kind), ['ServiceAccount', 'Role', 'RoleBinding']);
  const ns = docs[0]!.metadata.namespace;
  for (const d of docs) assert.equal(d.metadata.namespace, ns, `${d.kind} in ${ns}`);
  const role = docs[1]!;
  assert.deepEqual(role.rules, [{
    apiGroups: [PODNET_GROUP], resources: ['podnetworkconfigs'], verbs: ['get', 'list', 'watch', 'create', 'update', 'patch', 'delete'],
  }], 'no status, no nodenetworks, no wildcard');
  assert.deepEqual(docs[2]!.roleRef, { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: role.metadata.name });
  assert.deepEqual(docs[2]!.subjects, [{ kind: 'ServiceAccount', name: docs[0]!.metadata.name, namespace: ns }]);
});

test('podnet-crds.yaml: the ValidatingAdmissionPolicy binds the agent\'s patch grants to the annotation and its finalizer, for patu.yaml\'s ServiceAccount only', () => {
  const docs = load('podnet-crds.yaml');
  const vap = docs.find((d) => d.kind === 'ValidatingAdmissionPolicy')!;
  const binding = docs.find((d) => d.kind === 'ValidatingAdmissionPolicyBinding')!;
  assert.equal(binding.spec.policyName, vap.metadata.name);
  assert.deepEqual(binding.spec.validationActions, ['Deny']);
  assert.equal(vap.spec.failurePolicy, 'Fail');
  const sa = load('patu.yaml').find((d) => d.kind === 'ServiceAccount')!;
  assert.deepEqual(vap.spec.matchConditions.map((c: Doc) => c.expression),
    [`request.userInfo.username == 'system:serviceaccount:${sa.metadata.namespace}:${sa.metadata.name}'`]);
  // Every resource the agent may patch (patu.yaml), and only UPDATE (a patch is one).
  const rules = vap.spec.matchConstraints.resourceRules as Doc[];
  assert.deepEqual(rules.flatMap((r) => r.resources as string[]).sort(), ['nodenetworks', 'podnetworkconfigs', 'pods']);
  for (const r of rules) assert.deepEqual(r.operations, ['UPDATE']);
  const text = JSON.stringify(vap.spec.variables);
  assert.ok(text.includes(NETWORK_STATUS_ANNOTATION) && text.includes(PODNET_FINALIZER), 'names the annotation and the finalizer of types.ts');
});
