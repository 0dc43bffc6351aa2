// deploy/patu.yaml and deploy/patu-uninstall.yaml: they parse, the agent's RBAC
// is exactly read-only on the six resources it watches plus the few writes pod network
// configuration needs (this test fails if anyone widens it), no credential other than the
// ServiceAccount is used, and every flag the manifests pass exists in the CLI. (The
// podnet CRDs and the tenant Role: test/unit/podnet-manifests.test.ts.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT } from '../helpers/cni.js';
import { cliOptions as options, flagsOf, loadManifest as load, type Doc } from '../helpers/manifests.js';
import { buildProgram } from '../../src/cli/main.js';


const ALLOWED: Record<string, string[]> = {
  '/services': ['get', 'list', 'watch'],
  // patch: pod network configuration's k8s.v1.cni.cncf.io/network-status annotation (issue 12).
  '/pods': ['get', 'list', 'patch', 'watch'],
  '/nodes': ['get', 'list', 'watch'],
  // NetworkPolicy (issue 11) and NodeNetwork namespaceSelectors (issue 12): namespaces by their labels.
  '/namespaces': ['get', 'list', 'watch'],
  'discovery.k8s.io/endpointslices': ['get', 'list', 'watch'],
  'networking.k8s.io/networkpolicies': ['get', 'list', 'watch'],
  // Pod network configuration (issue 12): watch the two kinds; patch for metadata.finalizers
  // (merge patch); status through the subresource only; events to explain, create only.
  'network.patu.dev/nodenetworks': ['get', 'list', 'patch', 'watch'],
  'network.patu.dev/podnetworkconfigs': ['get', 'list', 'patch', 'watch'],
  'network.patu.dev/nodenetworks/status': ['patch'],
  'network.patu.dev/podnetworkconfigs/status': ['patch'],
  '/events': ['create'],
};
/** The only subresources the agent may touch. */
const SUBRESOURCES = new Set(['nodenetworks/status', 'podnetworkconfigs/status']);

test('patu.yaml: the expected objects, all valid YAML', () => {
  const docs = load('patu.yaml');
  const kinds = docs.map((d) => `${d.kind}/${d.metadata?.name}`).sort();
  assert.deepEqual(kinds, ['ClusterRole/patu', 'ClusterRoleBinding/patu', 'ConfigMap/patu-config', 'DaemonSet/patu', 'ServiceAccount/patu']);
  for (const d of docs) {
    assert.ok(typeof d.apiVersion === 'string' && d.apiVersion.length > 0, `${d.kind}: apiVersion`);
    if (d.kind !== 'ClusterRole' && d.kind !== 'ClusterRoleBinding') assert.equal(d.metadata.namespace, 'kube-system', d.kind);
  }
});

test('patu.yaml: RBAC grants get/list/watch on services, endpointslices, pods, nodes, namespaces, networkpolicies, what pod network configuration writes, and nothing else', () => {
  const docs = load('patu.yaml');
  // No Role/RoleBinding sneaking in extra rights, no aggregation.
  const rbac = docs.filter((d) => String(d.apiVersion).startsWith('rbac.authorization.k8s.io/'));
  assert.deepEqual(rbac.map((d) => d.kind).sort(), ['ClusterRole', 'ClusterRoleBinding']);
  const role = rbac.find((d) => d.kind === 'ClusterRole')!;
  assert.equal(role.aggregationRule, undefined, 'no aggregationRule');
  const granted: Record<string, string[]> = {};
  for (const r of role.rules as Doc[]) {
    assert.deepEqual(Object.keys(r).sort(), ['apiGroups', 'resources', 'verbs'], 'no resourceNames/nonResourceURLs, no extra keys');
    for (const g of r.apiGroups as string[]) {
      assert.notEqual(g, '*', 'no wildcard apiGroup');
      for (const res of r.resources as string[]) {
        assert.ok(!res.includes('*') && (!res.includes('/') || SUBRESOURCES.has(res)), `resource ${res}: no wildcards or other subresources`);
        const key = `${g}/${res}`;
        for (const v of r.verbs as string[]) {
          assert.ok(ALLOWED[key]?.includes(v), `verb "${v}" on ${key} is more than the agent needs`);
          (granted[key] ??= []).push(v);
        }
      }
    }
  }
  for (const k of Object.keys(granted)) granted[k]!.sort();
  assert.deepEqual(granted, ALLOWED, 'every needed grant present exactly once');
  const binding = rbac.find((d) => d.kind === 'ClusterRoleBinding')!;
  assert.deepEqual(binding.roleRef, { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'patu' });
  assert.deepEqual(binding.subjects, [{ kind: 'ServiceAccount', name: 'patu', namespace: 'kube-system' }]);
});



test('patu.yaml: the DaemonSet runs install --cni-only then agent --kubernetes --accel with host networking and the host mounts', () => {
  const ds = load('patu.yaml').find((d) => d.kind === 'DaemonSet')!;
  const spec = ds.spec.template.spec;
  assert.equal(spec.serviceAccountName, 'patu');
  assert.equal(spec.hostNetwork, true);
  assert.notEqual(spec.hostPID, true, 'hostPID is not needed');
  assert.ok((spec.tolerations as Doc[]).some((t) => t.operator === 'Exists'), 'runs on NotReady nodes (no CNI yet)');

  const program = buildProgram();
  const sub = (name: string) => program.commands.find((c) => c.name() === name)!;

  const [init] = spec.initContainers as Doc[];
  assert.equal(spec.initContainers.length, 1);
  assert.equal(init!.args[0], 'install');
  assert.ok(init!.args.includes('--cni-only'));
  // Only the agent knows the Node's podCIDR: a conflist from the init step would let pods start in a wrong subnet.
  assert.ok(init!.args.includes('--no-conflist'), 'the init step leaves the conflist to the agent');
  assert.notEqual(init!.securityContext?.privileged, true, 'copying files needs no privileges');
  for (const f of flagsOf(init!.args)) assert.ok(options(sub('install')).has(f), `patu install has no option ${f}`);

  const [agent] = spec.containers as Doc[];
  assert.equal(spec.containers.length, 1);
  assert.equal(agent!.args[0], 'agent');
  assert.ok(agent!.args.includes('--kubernetes') && agent!.args.includes('--accel'));
  for (const f of flagsOf(agent!.args)) assert.ok(options(sub('agent')).has(f), `patu agent has no option ${f}`);
  assert.equal(agent!.securityContext.privileged, true);

  // The agent's own ServiceAccount only: no kubeconfig flag, file or secret anywhere.
  const all = JSON.stringify(ds);
  assert.doesNotMatch(all, /kubeconfig|admin\.conf|secretName/i);
  assert.notEqual(spec.automountServiceAccountToken, false);

  // Every $(VAR) in args is defined in the container's env (Kubernetes leaves unknown ones verbatim).
  for (const c of [init!, agent!]) {
    const env = new Set((c.env as Doc[] | undefined ?? []).map((e) => e.name));
    for (const a of c.args as string[]) for (const m of a.matchAll(/\$\((\w+)\)/g)) assert.ok(env.has(m[1]), `${c.name}: $(${m[1]}) not in env`);
  }

  const vols = new Map((spec.volumes as Doc[]).map((v) => [v.name, v.hostPath?.path]));
  const mounts = new Map((agent!.volumeMounts as Doc[]).map((m) => [vols.get(m.name), m]));
  for (const host of ['/sys/fs/bpf', '/sys/fs/cgroup', '/etc/cni/net.d', '/var/lib/patu', '/run/patu', '/run/netns']) {
    assert.ok(mounts.has(host), `agent mounts host ${host}`);
  }
  // Least privilege (issue 15): the long-running agent does not get the host's CNI bin dir
  // (writing it is root on the node; only the init step installs there) nor the iptables
  // lock (patu uses nft only), and mounts nothing beyond what it uses.
  assert.deepEqual([...mounts.keys()].sort(), ['/etc/cni/net.d', '/run/netns', '/run/patu', '/sys/fs/bpf', '/sys/fs/cgroup', '/var/lib/patu']);
  assert.ok(!vols.has('xtables-lock') && ![...vols.values()].includes('/run/xtables.lock'), 'no volume for /run/xtables.lock');
  const cniBinVolume = [...vols].find(([, path]) => path === '/opt/cni/bin')![0];
  const withCniBin = [...(spec.initContainers as Doc[]), ...(spec.containers as Doc[])]
    .filter((c) => (c.volumeMounts as Doc[]).some((m) => m.name === cniBinVolume)).map((c) => c.name);
  assert.deepEqual(withCniBin, ['install-cni'], 'only the install step mounts the CNI bin dir');
  // The init step: root's file access in the mounted host directories and nothing more.
  const sc = init!.securityContext;
  assert.equal(sc.allowPrivilegeEscalation, false);
  assert.equal(sc.readOnlyRootFilesystem, true);
  assert.deepEqual(sc.capabilities, { drop: ['ALL'], add: ['DAC_OVERRIDE', 'FOWNER'] });
  // ... and the manifest says why, next to it.
  const text = readFileSync(join(REPO_ROOT, 'deploy', 'patu.yaml'), 'utf8');
  for (const word of ['DAC_OVERRIDE', 'FOWNER', 'root on the', 'xtables.lock']) assert.ok(text.includes(word), `patu.yaml explains ${word}`);
  // The host's bpffs, without propagation (works where the host's mounts are private); the agent must not mount its own.
  assert.equal(mounts.get('/sys/fs/bpf')!.mountPropagation, undefined);
  assert.ok((agent!.env as Doc[]).some((e) => e.name === 'PATU_BPFFS_MOUNT' && e.value === 'never'));
  assert.equal(mounts.get('/run/netns')!.mountPropagation, 'HostToContainer');
  // The init container sees the CNI directories at the host's own paths, so the paths it records are the host's.
  for (const m of init!.volumeMounts as Doc[]) assert.equal(m.mountPath, vols.get(m.name), `init mount ${m.name}`);

  // The ConfigMap keys the pods read exist (optional ones excepted).
  const cm = load('patu.yaml').find((d) => d.kind === 'ConfigMap')!;
  for (const c of [init!, agent!]) {
    for (const e of (c.env as Doc[]) ?? []) {
      const ref = e.valueFrom?.configMapKeyRef;
      if (ref && !ref.optional) assert.ok(ref.key in cm.data, `ConfigMap key ${ref.key}`);
    }
  }
  assert.match(cm.data['cluster-cidr'], /^\d+\.\d+\.\d+\.\d+\/\d+$/);

  // The cgroup2 attach point: the container's own /sys/fs/cgroup is its private cgroup
  // namespace, so the agent looks where the host's /sys/fs/cgroup is mounted (and checks it
  // found the host's root); by default it finds it there rather than being told a path that
  // fits one host layout only (cgroup v2: the directory itself; hybrid: its unified/).
  const cgMount = mounts.get('/sys/fs/cgroup')!;
  assert.notEqual(cgMount.mountPath, '/sys/fs/cgroup', 'not over the container\'s own cgroup2 mount');
  assert.ok(agent!.args.includes(`--cgroup-fs=${cgMount.mountPath}`), `the agent looks below ${cgMount.mountPath}`);
  assert.equal(cm.data['cgroup-path'], '', 'the attach point is discovered unless configured');
});

test('patu-uninstall.yaml: runs `patu uninstall` with the install container\'s mounts and no API rights', () => {
  const docs = load('patu-uninstall.yaml');
  assert.deepEqual(docs.map((d) => d.kind), ['DaemonSet']);
  const spec = docs[0]!.spec.template.spec;
  assert.equal(spec.serviceAccountName, undefined, 'the default ServiceAccount: it needs no API access');
  const [u] = spec.initContainers as Doc[];
  assert.deepEqual(u!.command, ['/usr/lib/patu/bin/patu', 'uninstall']);
  assert.notEqual(u!.securityContext?.privileged, true);
  const vols = new Map((spec.volumes as Doc[]).map((v) => [v.name, v.hostPath?.path]));
  const install = load('patu.yaml').find((d) => d.kind === 'DaemonSet')!.spec.template.spec.initContainers[0];
  const installMounts = (install.volumeMounts as Doc[]).map((m) => m.mountPath).sort();
  const uninstallMounts = (u!.volumeMounts as Doc[]).map((m) => m.mountPath);
  for (const p of installMounts) assert.ok(uninstallMounts.includes(p), `uninstall sees ${p} like install did`);
  assert.ok((u!.volumeMounts as Doc[]).some((m) => vols.get(m.name) === '/sys/fs/bpf'), 'uninstall reaches the pins');
});
