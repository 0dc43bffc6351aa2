// Pod network configuration (issue 12) as a tenant uses it, on a real single-node cluster with patu from
// deploy/patu.yaml (scripts/k8s/cluster.sh up --no-cni + deploy, as test/e2e/k8s-patu.test.ts):
//   - the cluster admin creates NodeNetworks (a bridge network; a VLAN network tagged on a link the test makes)
//     and binds deploy/podnet-tenant-role.yaml to a tenant ServiceAccount in its namespace;
//   - the TENANT (kubectl --as its ServiceAccount, not an admin) creates PodNetworkConfigs;
//   - pods run as non-root without NET_ADMIN; their container checks for net1 as its first act and exits 1
//     without it, so a pod that runs proves the interface was made during the CNI ADD;
//   - existing pods get net1 when they start matching; two pods talk over net1; on the VLAN network, frames leave
//     the link tagged (tcpdump -e), answered by a far end (a netns the test makes, untagging with the same eBPF);
//   - label removal, config deletion (finalizer) and pod deletion leave nothing on the host or in the pools;
//     an agent restart midway changes nothing; the RBAC denials hold; every bad input gets its condition or its
//     apiserver refusal; a NodeNetwork in use stays Terminating until nothing uses it.
//
// Needs root, the Kubernetes binaries (scripts/k8s/build.sh) and podman (scripts/image.sh); skips saying which.
// Everything it makes is named by this process's pid; cluster.sh down and the after hook remove it.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { REPO_ROOT } from '../helpers/cni.js';
import { TEST_IMAGE, TestCluster, clusterSkipReason, freePort, reapStaleClusters, until } from '../helpers/k8s-cluster.js';
import { ensureVlanTrunk, removeVlanTrunk } from '../../src/podnet/vlan.js';
import { Rtnl } from '../../src/kernel/netlink/rtnl.js';

const skip = clusterSkipReason() ?? (spawnSync('sh', ['-c', 'command -v podman && command -v tcpdump'], { encoding: 'utf8' }).status !== 0 ? 'podman or tcpdump not installed' : undefined);
const cluster = new TestCluster();
const { state: STATE } = cluster.names;
const PID = process.pid % 100000;
const PODNET_IPAM = join(STATE, 'patu', 'ipam', 'patu-podnet');
const TENANT_NS = 'team-a';
const OTHER_NS = 'team-b';
const TENANT = `system:serviceaccount:${TENANT_NS}:netops`;
const FIELD_BRIDGE = `pnf${PID}`;
const VLAN_LINK = `pvl${PID}`;
const VLAN_PEER = `pvf${PID}`;
const FAR_NS = `patu-e2e-far-${PID}`;
const FAR_PINS = `/sys/fs/bpf/patu-e2e-far-${PID}`;
const FAR_ADDR = '10.220.0.254';

const sh = (cmd: string, args: string[], timeout = 20_000) => spawnSync(cmd, args, { encoding: 'utf8', timeout });
function must(cmd: string, args: string[]): string {
  const r = sh(cmd, args);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: exit ${r.status}: ${r.stderr}`);
  return r.stdout;
}
const asTenant = (args: string[], input?: string) => cluster.kubectl(['--as', TENANT, ...args], input);
const apply = (o: unknown) => cluster.must(['apply', '-f', '-'], JSON.stringify(o));

const fieldNetwork = (extra: Record<string, unknown> = {}) => ({
  apiVersion: 'network.patu.dev/v1alpha1',
  kind: 'NodeNetwork',
  metadata: { name: 'field' },
  spec: { bridge: FIELD_BRIDGE, subnet: '10.210.0.0/24', gateway: '10.210.0.1', mtu: 1500, namespaceSelector: { matchLabels: { tenant: 'a' } }, ...extra },
});
const vlanNetwork = {
  apiVersion: 'network.patu.dev/v1alpha1',
  kind: 'NodeNetwork',
  metadata: { name: 'fieldvlan' },
  spec: { vlan: { link: VLAN_LINK, id: 100 }, subnet: '10.220.0.0/24', rangeStart: '10.220.0.10', rangeEnd: '10.220.0.100', namespaceSelector: { matchLabels: { tenant: 'a' } } },
};
const config = (name: string, app: string, interfaces: unknown[], ns = TENANT_NS) => ({
  apiVersion: 'network.patu.dev/v1alpha1',
  kind: 'PodNetworkConfig',
  metadata: { name, namespace: ns },
  spec: { podSelector: { matchLabels: { app } }, interfaces },
});
const NET1 = {
  name: 'net1',
  network: 'field',
  mtu: 1400,
  routes: [{ to: '10.211.0.0/16', via: '10.210.0.1', table: 100 }],
  rules: [{ from: '10.210.0.0/24', table: 100 }],
};

/** A pod as a tenant runs it: non-root, no capabilities; with `need`, its first act is to check for that interface. */
function pod(name: string, labels: Record<string, string>, need?: string, ns = TENANT_NS) {
  const check = need ? `test -d /sys/class/net/${need} || { echo "no ${need} at start"; exit 1; }; ` : '';
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace: ns, labels },
    spec: {
      restartPolicy: 'Never',
      terminationGracePeriodSeconds: 1,
      securityContext: { runAsNonRoot: true, runAsUser: 65534, runAsGroup: 65534 },
      containers: [{
        name: 'c',
        image: TEST_IMAGE,
        imagePullPolicy: 'Never',
        command: ['sh', '-c', `${check}hostname > /www/index.html && exec httpd -f -p 8080 -h /www`],
        securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } },
        volumeMounts: [{ name: 'www', mountPath: '/www' }],
      }],
      volumes: [{ name: 'www', emptyDir: {} }],
    },
  };
}

const podJson = (name: string, ns = TENANT_NS) => JSON.parse(cluster.must(['get', 'pod', '-n', ns, name, '-o', 'json']));
async function running(name: string, ns = TENANT_NS): Promise<any> {
  const p = await until(`pod ${ns}/${name} running`, 120_000, () => {
    const o = podJson(name, ns);
    return o.status.phase === 'Running' || o.status.phase === 'Failed' ? o : undefined;
  });
  if (p.status.phase === 'Failed') throw new Error(`pod ${ns}/${name} failed: ${cluster.kubectl(['logs', '-n', ns, name]).stdout}`);
  return p;
}
const exec = (name: string, cmd: string, ns = TENANT_NS) => cluster.kubectl(['exec', '-n', ns, name, '--', 'sh', '-c', cmd]);
/** net1-like interface in a pod: address with prefix, MTU, ifindex; undefined when absent. */
function ifaceIn(name: string, ifname: string, ns = TENANT_NS): { address: string; mtu: number; index: number } | undefined {
  const r = exec(name, `ip -o -4 addr show dev ${ifname}; cat /sys/class/net/${ifname}/mtu /sys/class/net/${ifname}/ifindex`, ns);
  if (!r.ok) return undefined;
  const m = /inet (\d+\.\d+\.\d+\.\d+\/\d+)/.exec(r.stdout);
  const [mtu, index] = r.stdout.trim().split('\n').slice(-2).map(Number);
  return m ? { address: m[1]!, mtu: mtu!, index: index! } : undefined;
}
/** Host links patu made for extra interfaces (marked by their alias). */
function podnetHostLinks(): string[] {
  const out = must('ip', ['-o', '-d', 'link', 'show']);
  return out.split('\n').filter((l) => /alias patu-podnet /.test(l)).map((l) => l.split(':')[1]!.trim().split('@')[0]!).sort();
}
/** Address records of the extra networks' pools. */
function poolRecords(network: string): string[] {
  const dir = join(PODNET_IPAM, network);
  return existsSync(dir) ? readdirSync(dir).filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f)).sort() : [];
}
const configStatus = (name: string, ns = TENANT_NS) => JSON.parse(cluster.must(['get', 'podnetworkconfig', '-n', ns, name, '-o', 'json'])).status ?? {};
const condition = (status: any, type: string) => (status.conditions ?? []).find((c: any) => c.type === type);
const agentPod = (): { name: string; ready: boolean } | undefined => {
  const items = (JSON.parse(cluster.must(['get', 'pods', '-n', 'kube-system', '-l', 'app.kubernetes.io/name=patu', '-o', 'json'])).items as any[]).filter((p) => !p.metadata.deletionTimestamp);
  if (items.length !== 1) return undefined;
  return { name: items[0].metadata.name, ready: (items[0].status.conditions ?? []).some((c: any) => c.type === 'Ready' && c.status === 'True') };
};

describe('pod networks from CRDs on a real cluster: tenant configs, net1 at start, VLAN in eBPF, cleanup, RBAC', { skip: skip ?? false }, () => {
  before(async () => {
    reapStaleClusters();
    cluster.env.PATU_K8S_METRICS_PORT = String(await freePort());
    await cluster.up(['--no-cni']);
    const d = cluster.script(['deploy'], 300_000);
    assert.ok(d.ok, `cluster.sh deploy: ${d.detail}${cluster.logTail('kubelet')}`);
    // The VLAN network's host link: a veth to a far end the test owns (never a host interface).
    must('ip', ['netns', 'add', FAR_NS]);
    must('ip', ['link', 'add', VLAN_LINK, 'type', 'veth', 'peer', 'name', VLAN_PEER, 'netns', FAR_NS]);
    must('ip', ['link', 'set', VLAN_LINK, 'up']);
    must('ip', ['-n', FAR_NS, 'link', 'set', VLAN_PEER, 'up']);
    must('ip', ['-n', FAR_NS, 'link', 'set', 'lo', 'up']);
    // The far end: VLAN 100 untagged by the same eBPF into a bridge holding the far address.
    must('ip', ['-n', FAR_NS, 'link', 'add', 'fbr100', 'type', 'bridge']);
    must('ip', ['-n', FAR_NS, 'addr', 'add', `${FAR_ADDR}/24`, 'dev', 'fbr100']);
    must('ip', ['-n', FAR_NS, 'link', 'set', 'fbr100', 'up']);
    const r = Rtnl.openInNetns(`/run/netns/${FAR_NS}`);
    try {
      ensureVlanTrunk(r, { network: 'far100', link: VLAN_PEER, id: 100, bridge: 'fbr100', mtu: 1500 }, { pinRoot: FAR_PINS, netnsPath: `/run/netns/${FAR_NS}` });
    } finally {
      r.close();
    }
    // Tenants: team-a may attach (tenant=a), team-b may not.
    apply({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: TENANT_NS, labels: { tenant: 'a' } } });
    apply({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: OTHER_NS, labels: { tenant: 'b' } } });
    // The example tenant ServiceAccount + Role as shipped, in team-a (and the same in team-b for the denial test).
    for (const ns of [TENANT_NS, OTHER_NS]) {
      const role = readFileSync(join(REPO_ROOT, 'deploy', 'podnet-tenant-role.yaml'), 'utf8').replaceAll('namespace: team-a', `namespace: ${ns}`);
      cluster.must(['apply', '-f', '-'], role);
    }
  });

  after(() => {
    try {
      const r = Rtnl.openInNetns(`/run/netns/${FAR_NS}`);
      try {
        removeVlanTrunk(r, { network: 'far100', link: VLAN_PEER, id: 100 }, { pinRoot: FAR_PINS, netnsPath: `/run/netns/${FAR_NS}` });
      } finally {
        r.close();
      }
    } catch {
      /* the netns may not exist */
    }
    const d = cluster.down();
    if (!d.ok) console.error(`cluster.sh down failed: ${d.detail}`);
    sh('ip', ['link', 'del', VLAN_LINK]);
    sh('ip', ['netns', 'del', FAR_NS]);
    sh('rm', ['-rf', FAR_PINS]);
    // patu's bridges for this test's networks go with the agent's cleanup or here; a leftover is a failure.
    const left = sh('ip', ['-o', 'link', 'show']).stdout.split('\n').filter((l) => l.includes(FIELD_BRIDGE) || /alias patu-podnet/.test(l));
    for (const l of left) sh('ip', ['link', 'del', l.split(':')[1]!.trim().split('@')[0]!]);
    assert.deepEqual(left, [], 'pod network links left after the cluster went down');
  });

  test('the admin creates the networks; the tenant Role allows configs in its namespace only, and nothing else', () => {
    apply(fieldNetwork());
    apply(vlanNetwork);
    // RBAC: the tenant may manage its configs ...
    let r = asTenant(['auth', 'can-i', 'create', 'podnetworkconfigs.network.patu.dev', '-n', TENANT_NS]);
    assert.equal(r.stdout.trim(), 'yes', r.detail);
    // ... but not NodeNetworks, not status, not another namespace, and gets no NET_ADMIN from any of it.
    for (const [verb, what, ns, sub] of [
      ['create', 'nodenetworks.network.patu.dev', undefined, undefined],
      ['patch', 'nodenetworks.network.patu.dev', undefined, undefined],
      ['patch', 'podnetworkconfigs.network.patu.dev', TENANT_NS, 'status'],
      ['create', 'podnetworkconfigs.network.patu.dev', 'default', undefined],
      ['patch', 'pods', TENANT_NS, undefined],
    ] as const) {
      r = asTenant(['auth', 'can-i', verb, what, ...(ns ? ['-n', ns] : []), ...(sub ? [`--subresource=${sub}`] : [])]);
      assert.equal(r.stdout.trim(), 'no', `tenant may ${verb} ${what}${sub ? `/${sub}` : ''}${ns ? ` in ${ns}` : ''}`);
    }
    r = asTenant(['apply', '-f', '-'], JSON.stringify({ ...fieldNetwork(), metadata: { name: 'tenant-made' } }));
    assert.ok(!r.ok && /forbidden/i.test(r.stderr), `the tenant created a NodeNetwork: ${r.stdout}${r.stderr}`);
    r = asTenant(['apply', '-f', '-'], JSON.stringify(config('sneaky', 'cnf', [NET1], 'default')));
    assert.ok(!r.ok && /forbidden/i.test(r.stderr), `the tenant created a config in another namespace: ${r.stdout}${r.stderr}`);
  });

  test('a new matching pod has net1 before its container starts: address, MTU, routes in table 100, rules; eth0 untouched', async () => {
    const r = asTenant(['apply', '-f', '-'], JSON.stringify(config('cnf', 'cnf', [NET1])));
    assert.ok(r.ok, r.detail);
    apply(pod('cnf-a', { app: 'cnf' }, 'net1'));
    await running('cnf-a');
    const net1 = ifaceIn('cnf-a', 'net1')!;
    assert.ok(net1, 'net1 in cnf-a');
    assert.match(net1.address, /^10\.210\.0\.\d+\/24$/);
    assert.equal(net1.mtu, 1400);
    const routes = exec('cnf-a', 'ip route show table 100').stdout;
    assert.match(routes, /10\.211\.0\.0\/16 via 10\.210\.0\.1 dev net1/);
    const rules = exec('cnf-a', 'ip rule show').stdout;
    assert.match(rules, /from 10\.210\.0\.0\/24 lookup 100/);
    const main = exec('cnf-a', 'ip route show').stdout;
    assert.match(main, /^default via .* dev eth0/m, 'eth0 keeps the default route');
    assert.doesNotMatch(main, /10\.211\.0\.0/, 'nothing of net1 written to the main table but its connected route');
    // The agent reports it: status, the network-status annotation.
    await until('status lists cnf-a ready', 30_000, () => {
      const s = configStatus('cnf');
      const e = (s.pods ?? []).find((p: any) => p.name === 'cnf-a' && p.interface === 'net1');
      return e?.ready && e.address === net1.address && condition(s, 'Ready')?.status === 'True' ? true : undefined;
    });
    const ann = JSON.parse(podJson('cnf-a').metadata.annotations?.['k8s.v1.cni.cncf.io/network-status'] ?? '[]') as any[];
    const entry = ann.find((e) => e.interface === 'net1');
    assert.ok(entry, `network-status annotation lists net1: ${JSON.stringify(ann)}`);
    assert.deepEqual(entry.ips, [net1.address.split('/')[0]]);
    assert.equal(poolRecords('field').length, 1);
  });

  test('an existing pod gets net1 when its labels start matching; a pod without the label gets nothing', async () => {
    apply(pod('late', { app: 'other' }));
    apply(pod('plain', { app: 'other' }));
    await running('late');
    await running('plain');
    assert.equal(ifaceIn('late', 'net1'), undefined);
    cluster.must(['label', 'pod', '-n', TENANT_NS, 'late', 'app=cnf', '--overwrite']);
    const got = await until('net1 in the relabelled pod', 30_000, () => ifaceIn('late', 'net1'));
    assert.match(got.address, /^10\.210\.0\.\d+\/24$/);
    assert.equal(ifaceIn('plain', 'net1'), undefined, 'a pod without the label has no net1');
  });

  test('two pods talk over net1 on the bridge network', async () => {
    const a = ifaceIn('cnf-a', 'net1')!;
    const b = ifaceIn('late', 'net1')!;
    const bIp = b.address.split('/')[0]!;
    assert.match(exec('cnf-a', `ip route get ${bIp}`).stdout, /dev net1/, 'the peer is reached on net1');
    // busybox's nc (its wget crashes as uid 65534 in this image): one HTTP request, the peer's hostname back.
    const r = exec('cnf-a', `printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 ${bIp} 8080`);
    assert.ok(r.ok, r.detail);
    assert.match(r.stdout, /\r?\n\r?\nlate\s*$/, `answer of late over net1: ${r.stdout}`);
    assert.notEqual(a.address, b.address);
  });

  test('a VLAN network: frames leave the link tagged 100, the far end answers, the pod sees no tag', async () => {
    const r = asTenant(['apply', '-f', '-'], JSON.stringify(config('vlan', 'vlan', [{ name: 'net2', network: 'fieldvlan' }])));
    assert.ok(r.ok, r.detail);
    apply(pod('vlan-a', { app: 'vlan' }, 'net2'));
    await running('vlan-a');
    const net2 = ifaceIn('vlan-a', 'net2')!;
    assert.ok(net2, 'net2 in vlan-a');
    const ip = net2.address.split('/')[0]!;
    const tcpdump = spawn('tcpdump', ['-e', '-nn', '-l', '-c', '4', '-i', VLAN_LINK, 'vlan 100 and icmp'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let seen = '';
    tcpdump.stdout.on('data', (d: Buffer) => (seen += d.toString()));
    try {
      await sleep(1000);
      const ping = sh('ip', ['netns', 'exec', FAR_NS, 'ping', '-c', '3', '-W', '2', ip]);
      assert.equal(ping.status, 0, `far end -> pod over VLAN 100: ${ping.stdout}${ping.stderr}`);
      await until('tcpdump saw tagged frames', 10_000, () => (/vlan 100/.test(seen) ? true : undefined), 200);
    } finally {
      tcpdump.kill();
    }
    assert.match(seen, /ethertype 802\.1Q .*vlan 100/);
    const web = sh('ip', ['netns', 'exec', FAR_NS, 'wget', '-q', '-T', '5', '-O', '-', `http://${ip}:8080/`]);
    assert.equal(web.stdout.trim(), 'vlan-a', `TCP far end -> pod over the VLAN: ${web.stderr}`);
  });

  test('an agent restart midway changes nothing: same interfaces, same addresses, nothing duplicated', async () => {
    const before = { a: ifaceIn('cnf-a', 'net1'), late: ifaceIn('late', 'net1'), vlan: ifaceIn('vlan-a', 'net2') };
    const links = podnetHostLinks();
    const old = agentPod()!;
    cluster.must(['delete', 'pod', '-n', 'kube-system', old.name, '--wait=false']);
    await until('a new ready agent', 120_000, () => {
      const p = agentPod();
      return p && p.name !== old.name && p.ready ? p : undefined;
    });
    await sleep(3000); // a full reconcile after the start
    assert.deepEqual({ a: ifaceIn('cnf-a', 'net1'), late: ifaceIn('late', 'net1'), vlan: ifaceIn('vlan-a', 'net2') }, before);
    assert.deepEqual(podnetHostLinks(), links);
    assert.equal(poolRecords('field').length, 2);
  });

  test('every bad input: refused by the apiserver naming the field, or a condition with nothing configured', async () => {
    // In-object rules (CEL): refused at the door.
    const refused: [string, unknown, RegExp][] = [
      ['VLAN id 4095', { ...vlanNetwork, metadata: { name: 'badvlan' }, spec: { ...vlanNetwork.spec, vlan: { link: VLAN_LINK, id: 4095 } } }, /vlan/i],
      ['reserved table', config('badtable', 'cnf', [{ ...NET1, name: 'net9', routes: [{ to: '10.1.0.0/16', table: 254 }] }]), /table/i],
      ['duplicate interface name', config('dupname', 'cnf', [{ name: 'net7', network: 'field' }, { name: 'net7', network: 'field' }]), /unique|duplicate/i],
    ];
    for (const [what, obj, field] of refused) {
      const k = (obj as any).kind === 'NodeNetwork' ? cluster.kubectl(['apply', '-f', '-'], JSON.stringify(obj)) : asTenant(['apply', '-f', '-'], JSON.stringify(obj));
      assert.ok(!k.ok, `${what} accepted`);
      assert.match(k.stderr, field, `${what}: ${k.stderr}`);
    }
    // Cross-object rules: the agent's condition, nothing configured.
    apply(pod('bad', { app: 'bad' }));
    await running('bad');
    const taken = ifaceIn('cnf-a', 'net1')!.address;
    const conditions: [string, unknown[], string, string?][] = [
      ['outside', [{ name: 'net3', network: 'field', address: '10.99.0.5/24' }], 'AddressOutsideSubnet'],
      ['inuse', [{ name: 'net3', network: 'field', address: taken }], 'AddressInUse'],
      ['unknown', [{ name: 'net3', network: 'nosuch' }], 'UnknownNetwork'],
    ];
    for (const [name, ifaces, reason] of conditions) {
      assert.ok(asTenant(['apply', '-f', '-'], JSON.stringify(config(`bad-${name}`, 'bad', ifaces))).ok);
      const s = await until(`condition ${reason} on bad-${name}`, 30_000, () => {
        const st = configStatus(`bad-${name}`);
        return condition(st, 'Ready')?.status === 'False' && JSON.stringify(st.conditions).includes(reason) ? st : undefined;
      });
      assert.ok(JSON.stringify(s.conditions).length > 0);
      assert.equal(ifaceIn('bad', 'net3'), undefined, `bad-${name}: nothing configured`);
      cluster.must(['delete', 'podnetworkconfig', '-n', TENANT_NS, `bad-${name}`, '--wait=true', '--timeout=30s']);
    }
    // A namespace the network does not admit.
    assert.ok(cluster.kubectl(['--as', `system:serviceaccount:${OTHER_NS}:netops`, 'apply', '-f', '-'], JSON.stringify(config('denied', 'cnf', [NET1], OTHER_NS))).ok);
    apply(pod('b-pod', { app: 'cnf' }, undefined, OTHER_NS));
    await running('b-pod', OTHER_NS);
    await until('NamespaceNotAllowed on team-b', 30_000, () => (JSON.stringify(configStatus('denied', OTHER_NS).conditions ?? []).includes('NamespaceNotAllowed') ? true : undefined));
    assert.equal(ifaceIn('b-pod', 'net1', OTHER_NS), undefined, 'team-b got nothing');
  });

  test('label removal, config deletion and pod deletion each leave nothing on the host or in the pools', async () => {
    const hostLinksBefore = podnetHostLinks().length;
    // Label removed: late's net1 goes, with its pool record.
    cluster.must(['label', 'pod', '-n', TENANT_NS, 'late', 'app=other', '--overwrite']);
    await until('net1 gone from late', 30_000, () => (ifaceIn('late', 'net1') === undefined ? true : undefined));
    await until('late\'s pool record released', 30_000, () => (poolRecords('field').length === 1 ? true : undefined));
    assert.equal(podnetHostLinks().length, hostLinksBefore - 1);
    // Pod deleted: cnf-a's interface and record go.
    cluster.must(['delete', 'pod', '-n', TENANT_NS, 'cnf-a', '--wait=true', '--timeout=60s']);
    await until('cnf-a\'s pool record released', 30_000, () => (poolRecords('field').length === 0 ? true : undefined));
    // Config deleted (finalizer: interfaces first): vlan-a's net2 goes, then the object.
    assert.ok(asTenant(['delete', 'podnetworkconfig', 'vlan', '-n', TENANT_NS, '--wait=true', '--timeout=60s']).ok);
    assert.equal(ifaceIn('vlan-a', 'net2'), undefined, 'net2 removed before the config was gone');
    assert.deepEqual(poolRecords('fieldvlan'), []);
    assert.deepEqual(podnetHostLinks().filter((l) => !l.startsWith('pvb') && !l.startsWith('pvo')), [], 'no pod links of patu left on the host');
  });

  test('a NodeNetwork in use stays Terminating, naming its users, until nothing uses it', async () => {
    apply(pod('cnf-c', { app: 'cnf' }, 'net1'));
    await running('cnf-c');
    cluster.must(['delete', 'nodenetwork', 'field', '--wait=false']);
    const s = await until('field Terminating with its users in status', 30_000, () => {
      const o = JSON.parse(cluster.must(['get', 'nodenetwork', 'field', '-o', 'json']));
      return o.metadata.deletionTimestamp && JSON.stringify(o.status ?? {}).includes('cnf') ? o : undefined;
    });
    assert.match(JSON.stringify(s.status), new RegExp(`${TENANT_NS}/`));
    assert.ok(ifaceIn('cnf-c', 'net1'), 'an existing user keeps its interface while the network terminates');
    assert.ok(asTenant(['delete', 'podnetworkconfig', 'cnf', '-n', TENANT_NS, '--wait=true', '--timeout=60s']).ok);
    await until('field gone', 60_000, () => (cluster.kubectl(['get', 'nodenetwork', 'field']).ok ? undefined : true));
    await until(`bridge ${FIELD_BRIDGE} removed (patu made it)`, 30_000, () => (sh('ip', ['link', 'show', FIELD_BRIDGE]).status !== 0 ? true : undefined));
    assert.deepEqual(poolRecords('field'), []);
  });

  test('nothing left the node on the uplink', () => {
    const r = cluster.script(['uplink-check'], 30_000);
    assert.ok(r.ok, `${r.detail}${r.stdout}`);
  });
});
