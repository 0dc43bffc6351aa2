// deploy/patu-split.yaml (issue 13): the agent container has no privileges (no capability,
// not privileged, no privilege escalation, not uid 0, no hostPath), the manager has no API
// token, the certificates live in emptyDirs split per side, and RBAC is patu.yaml's. The
// privilege check is run against mutated copies too, so it is known to fail when it should.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT } from '../helpers/cni.js';
import { cliOptions as options, flagsOf, loadManifest as load, type Doc } from '../helpers/manifests.js';
import { buildProgram } from '../../src/cli/main.js';


const podSpec = (docs: Doc[]): Doc => docs.find((d) => d.kind === 'DaemonSet')!.spec.template.spec;
const container = (spec: Doc, name: string): Doc => (spec.containers as Doc[]).find((c) => c.name === name)!;

/**
 * Everything that gives the agent container a privilege, as one line each: empty when it
 * has none. Effective values: the container's securityContext over the pod's.
 */
function agentPrivileges(docs: Doc[]): string[] {
  const spec = podSpec(docs);
  const agent = container(spec, 'agent');
  if (!agent) return ['no container named agent'];
  const p: string[] = [];
  const sc = agent.securityContext ?? {};
  const pod = spec.securityContext ?? {};
  if (sc.privileged !== false && sc.privileged !== undefined) p.push(`privileged: ${sc.privileged}`);
  if (sc.allowPrivilegeEscalation !== false) p.push(`allowPrivilegeEscalation is ${sc.allowPrivilegeEscalation} (must be false)`);
  const add = (sc.capabilities?.add ?? []) as string[];
  if (add.length) p.push(`capabilities added: ${add.join(', ')}`);
  if (!((sc.capabilities?.drop ?? []) as string[]).includes('ALL')) p.push('capabilities: ALL not dropped');
  const uid = sc.runAsUser ?? pod.runAsUser;
  if (uid === undefined || uid === 0) p.push(`runAsUser ${uid ?? 'unset (the image\'s user: root)'}`);
  const gid = sc.runAsGroup ?? pod.runAsGroup;
  if (gid === 0) p.push('runAsGroup 0');
  if ((sc.runAsNonRoot ?? pod.runAsNonRoot) !== true) p.push('runAsNonRoot is not true');
  if (sc.readOnlyRootFilesystem !== true) p.push('readOnlyRootFilesystem is not true');
  if (sc.procMount !== undefined && sc.procMount !== 'Default') p.push(`procMount ${sc.procMount}`);
  if (sc.seccompProfile?.type === 'Unconfined' || pod.seccompProfile?.type === 'Unconfined') p.push('seccomp Unconfined');
  if (sc.windowsOptions?.hostProcess) p.push('hostProcess');
  const vols = new Map(((spec.volumes ?? []) as Doc[]).map((v) => [v.name, v]));
  for (const m of (agent.volumeMounts ?? []) as Doc[]) {
    const v = vols.get(m.name);
    if (!v) p.push(`mount ${m.name}: no such volume`);
    else if (v.hostPath) p.push(`hostPath ${v.hostPath.path} mounted at ${m.mountPath}`);
    else if (m.readOnly !== true && !v.emptyDir) p.push(`volume ${m.name} mounted read-write`);
  }
  for (const d of (agent.volumeDevices ?? []) as Doc[]) p.push(`volumeDevice ${d.name}`);
  if (spec.hostPID) p.push('hostPID (pod)');
  if (spec.hostIPC) p.push('hostIPC (pod)');
  return p;
}

test('patu-split.yaml: the same objects and RBAC as patu.yaml, all valid YAML', () => {
  const split = load('patu-split.yaml');
  const single = load('patu.yaml');
  const names = (docs: Doc[]) => docs.map((d) => `${d.kind}/${d.metadata?.name}`).sort();
  assert.deepEqual(names(split), names(single), 'applying one replaces the other');
  const role = (docs: Doc[]) => docs.find((d) => d.kind === 'ClusterRole')!.rules;
  // Pod network configuration (issue 12, docs/podnet.md) runs in the single-process agent only
  // (it enters pod netns): the split agent gets none of its grants, and the rest exactly.
  const withoutPodnet = (rules: Doc[]) => rules.filter((r) => !(r.apiGroups as string[]).includes('network.patu.dev')
    && (r.verbs as string[]).every((v) => ['get', 'list', 'watch'].includes(v)));
  assert.deepEqual(role(split), withoutPodnet(role(single)), 'the agent needs exactly what it has today (deploy-manifest.test.ts pins that list)');
  const binding = (docs: Doc[]) => docs.find((d) => d.kind === 'ClusterRoleBinding');
  assert.deepEqual(binding(split), binding(single));
  // Routing between nodes (docs/multinode.md) and the pod MTU it picks are single process only too.
  const { 'pod-networks': _podNetworks, 'node-routing': _nodeRouting, 'pod-mtu': _podMtu, ...singleData } = single.find((d) => d.kind === 'ConfigMap')!.data as Record<string, string>;
  assert.deepEqual(split.find((d) => d.kind === 'ConfigMap')!.data, singleData, 'the same settings (pod-networks, node-routing, pod-mtu: single process only)');
});

test('patu-split.yaml: the agent container has no privilege and no hostPath', () => {
  assert.deepEqual(agentPrivileges(load('patu-split.yaml')), []);
});

test('patu-split.yaml: the privilege check fails on every kind of privilege added to a copy', () => {
  const mutations: [string, (spec: Doc, agent: Doc) => void, RegExp][] = [
    ['a capability', (_s, a) => (a.securityContext.capabilities.add = ['NET_ADMIN']), /capabilities added: NET_ADMIN/],
    ['CAP_BPF', (_s, a) => (a.securityContext.capabilities.add = ['BPF']), /capabilities added: BPF/],
    ['not dropping ALL', (_s, a) => delete a.securityContext.capabilities, /ALL not dropped/],
    ['privileged', (_s, a) => (a.securityContext.privileged = true), /privileged: true/],
    ['allowPrivilegeEscalation', (_s, a) => (a.securityContext.allowPrivilegeEscalation = true), /allowPrivilegeEscalation/],
    ['allowPrivilegeEscalation unset', (_s, a) => delete a.securityContext.allowPrivilegeEscalation, /allowPrivilegeEscalation/],
    ['runAsUser 0', (_s, a) => (a.securityContext.runAsUser = 0), /runAsUser 0/],
    ['uid 0 from the pod', (s, a) => {
      delete a.securityContext.runAsUser;
      s.securityContext = { runAsUser: 0 };
    }, /runAsUser 0/],
    ['no user at all', (_s, a) => delete a.securityContext.runAsUser, /runAsUser unset/],
    ['runAsNonRoot off', (_s, a) => (a.securityContext.runAsNonRoot = false), /runAsNonRoot/],
    ['a writable root file system', (_s, a) => (a.securityContext.readOnlyRootFilesystem = false), /readOnlyRootFilesystem/],
    ['a hostPath the manager has', (_s, a) => a.volumeMounts.push({ name: 'bpffs', mountPath: '/sys/fs/bpf' }), /hostPath \/sys\/fs\/bpf/],
    ['a new hostPath', (s, a) => {
      s.volumes.push({ name: 'root', hostPath: { path: '/' } });
      a.volumeMounts.push({ name: 'root', mountPath: '/host', readOnly: true });
    }, /hostPath \/ mounted at \/host/],
    ['the CNI socket dir', (_s, a) => a.volumeMounts.push({ name: 'patu-run', mountPath: '/run/patu' }), /hostPath \/run\/patu/],
    ['seccomp Unconfined', (_s, a) => (a.securityContext.seccompProfile = { type: 'Unconfined' }), /Unconfined/],
    ['hostPID', (s) => (s.hostPID = true), /hostPID/],
  ];
  for (const [what, mutate, expect] of mutations) {
    const docs = structuredClone(load('patu-split.yaml'));
    const spec = podSpec(docs);
    mutate(spec, container(spec, 'agent'));
    const p = agentPrivileges(docs);
    assert.ok(p.some((l) => expect.test(l)), `${what}: the check must fail (got ${JSON.stringify(p)})`);
  }
});

test('patu-split.yaml: two containers on the host network; the manager alone is privileged and has the host paths, the agent alone the API token', () => {
  const spec = podSpec(load('patu-split.yaml'));
  assert.equal(spec.hostNetwork, true, 'the manager serves the node; both reach each other on 127.0.0.1');
  assert.deepEqual((spec.containers as Doc[]).map((c) => c.name).sort(), ['agent', 'manager']);
  const manager = container(spec, 'manager');
  const agent = container(spec, 'agent');
  assert.equal(manager.args[0], 'manager');
  assert.equal(manager.securityContext.privileged, true);
  assert.equal(agent.args[0], 'agent');
  const managerAddr = (manager.args as string[]).find((a) => a.startsWith('--listen='))!.slice('--listen='.length);
  assert.match(managerAddr, /^tcp:\/\/127\.0\.0\.1:\d+$/, 'mTLS on loopback');
  assert.ok((agent.args as string[]).includes(`--manager=${managerAddr}`), 'the agent dials what the manager listens on');
  assert.ok(!(agent.args as string[]).some((a) => /^--(nodeport-devices|cgroup|cgroup-fs|pin-root|cni-socket|cni-conf-dir|data-dir|bridge)(=|$)/.test(a)), 'kernel flags belong to the manager');

  const vols = new Map((spec.volumes as Doc[]).map((v) => [v.name, v]));
  const hostMounts = (c: Doc) => (c.volumeMounts as Doc[]).filter((m) => vols.get(m.name)?.hostPath).map((m) => vols.get(m.name)!.hostPath.path).sort();
  assert.deepEqual(hostMounts(manager), ['/etc/cni/net.d', '/run/netns', '/run/patu', '/sys/fs/bpf', '/sys/fs/cgroup', '/var/lib/patu']);
  assert.deepEqual(hostMounts(agent), []);
  assert.ok((manager.args as string[]).includes('--cni-socket=/run/patu/agent.sock'), 'the manager answers the launcher');

  // The token: off for the pod (no per-container switch exists), mounted into the agent alone.
  assert.equal(spec.automountServiceAccountToken, false);
  const tokenVols = (spec.volumes as Doc[]).filter((v) => (v.projected?.sources as Doc[] | undefined)?.some((s) => s.serviceAccountToken)).map((v) => v.name);
  assert.equal(tokenVols.length, 1);
  const mountsOf = (name: string) => [...(spec.initContainers as Doc[]), ...(spec.containers as Doc[])].filter((c) => (c.volumeMounts as Doc[]).some((m) => m.name === name)).map((c) => c.name);
  assert.deepEqual(mountsOf(tokenVols[0]!), ['agent']);
  const tokenMount = (agent.volumeMounts as Doc[]).find((m) => m.name === tokenVols[0])!;
  assert.equal(tokenMount.mountPath, '/var/run/secrets/kubernetes.io/serviceaccount', 'where the in-cluster client reads it');

  // Certificates: emptyDirs, one per side; the generator's own dir is seen by the init step only.
  const tlsDir = (c: Doc) => (c.args as string[]).find((a) => a.startsWith('--tls-dir='))!.slice('--tls-dir='.length);
  const volAt = (c: Doc, path: string) => (c.volumeMounts as Doc[]).find((m) => m.mountPath === path)!.name;
  const mTls = volAt(manager, tlsDir(manager));
  const aTls = volAt(agent, tlsDir(agent));
  assert.notEqual(mTls, aTls, 'neither side sees the other\'s key');
  for (const v of [mTls, aTls]) assert.ok(vols.get(v)!.emptyDir, `${v}: an emptyDir, never a hostPath`);
  const certs = (spec.initContainers as Doc[]).find((c) => c.name === 'certs')!;
  assert.match(certs.args.join(' '), /patu certs generate --dir/);
  assert.match(certs.args.join(' '), /server\.key \/tls-manager\//);
  assert.match(certs.args.join(' '), /client\.key \/tls-agent\//);
  assert.doesNotMatch(certs.args.join(' '), /ca\.key \/tls-/, 'the CA key stays in the init step');
  assert.equal(certs.securityContext.runAsUser, agent.securityContext.runAsUser, 'the agent can read the key files the init step wrote (0600)');
  assert.deepEqual(certs.securityContext.capabilities, { drop: ['ALL'] });
  for (const m of certs.volumeMounts as Doc[]) assert.ok(vols.get(m.name)!.emptyDir, `certs mounts ${m.name}: an emptyDir`);

  // Every $(VAR) in args is defined in the container's env.
  for (const c of [...(spec.initContainers as Doc[]), ...(spec.containers as Doc[])]) {
    const env = new Set(((c.env as Doc[] | undefined) ?? []).map((e) => e.name));
    for (const a of (c.args as string[]) ?? []) for (const m of a.matchAll(/\$\((\w+)\)/g)) assert.ok(env.has(m[1]!), `${c.name}: $(${m[1]}) not in env`);
  }
  // The manifest explains the token workaround next to it.
  const text = readFileSync(join(REPO_ROOT, 'deploy', 'patu-split.yaml'), 'utf8');
  assert.match(text, /no per-container one/);
  assert.match(text, /cert-manager/);
});


test('patu-split.yaml: every flag the containers pass exists in the CLI', () => {
  const spec = podSpec(load('patu-split.yaml'));
  const program = buildProgram();
  const sub = (name: string) => program.commands.find((c) => c.name() === name);
  // Containers that run patu itself (the certs step is a shell script, checked above).
  const runsPatu = (c: Doc) => JSON.stringify(c.command ?? []).includes('bin/patu');
  const checked = [...((spec.initContainers as Doc[] | undefined) ?? []), ...(spec.containers as Doc[])].filter(runsPatu);
  assert.ok(checked.length >= 3, `install-cni, manager and agent run patu: ${checked.map((c) => c.name).join(', ')}`);
  for (const c of checked) {
    const cmd = sub(c.args[0]);
    assert.ok(cmd, `${c.name}: patu has no command ${c.args[0]}`);
    // `patu certs generate`: the options are the subcommand's.
    const leaf = cmd.commands.find((s) => s.name() === c.args[1]) ?? cmd;
    for (const f of flagsOf(c.args as string[])) assert.ok(options(leaf).has(f), `${c.name}: patu ${c.args[0]} has no option ${f}`);
  }
});
