// patu as its users run it: `kubectl apply -f deploy/patu.yaml` on a real single-node cluster
// (scripts/k8s/cluster.sh up --no-cni: etcd, kube-apiserver, controller-manager, scheduler, a private
// containerd, kubelet; no kube-proxy, no other CNI). The manifest is applied as shipped, with only its host
// paths and settings rendered for this cluster (cluster.sh render: own CNI dirs, state, pin root, cgroup).
// Then a Deployment behind a ClusterIP Service, with a client pod that connects to the Service every 50 ms
// for the whole run and logs each outcome; the tests read that log:
//   - pods get addresses in the Node's spec.podCIDR; pod-to-pod and pod-to-service traffic works,
//   - scaling up and down while the client connects: no failed connect, new backends get traffic,
//   - the agent restarted mid-traffic (twice: once quiet, once with a scale-up while it is down): no failed
//     connect, and the new agent reconciles without rewriting what is already right,
//   - a hostPort pod is reached from a hostNetwork pod (127.0.0.1) and from a pod (node address), and goes with the pod,
//   - deleting the workload leaves no IPAM record, veth or service entry,
//   - deleting the DaemonSet keeps the data plane; deploy/patu-uninstall.yaml then removes patu's files,
//     conflist and pins.
//
// Needs root and the Kubernetes binaries (scripts/k8s/build.sh; skips saying so without them), plus podman
// for scripts/image.sh. Everything it makes is named by this process's pid and removed by cluster.sh down.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, lstatSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { REPO_ROOT } from '../helpers/cni.js';
import { ServiceClientLog, serviceClientPod } from '../helpers/svc-client.js';
import { TEST_IMAGE, TestCluster, clusterSkipReason, freePort, inCidr, reapStaleClusters, until } from '../helpers/k8s-cluster.js';

const skip = clusterSkipReason() ?? (spawnSync('sh', ['-c', 'command -v podman'], { encoding: 'utf8' }).status !== 0 ? 'podman not installed (scripts/image.sh needs it)' : undefined);
const cluster = new TestCluster();
const { state: STATE, bridge: BRIDGE, cgroup: CGROUP, podCIDR: POD_CIDR } = cluster.names;
const PIN_ROOT = `/sys/fs/bpf/patu-test-${CGROUP}`;
const IPAM_DIR = join(STATE, 'patu', 'ipam', 'patu');
const CONFLIST = join(STATE, 'cni', 'net.d', '10-patu.conflist');
const NS = 'default';

// The workload. httpd answers with its pod's name; the preStop sleep is what every real Deployment needs
// under any service proxy: the pod keeps serving while the removal of its endpoint propagates.
const WEB = {
  apiVersion: 'apps/v1',
  kind: 'Deployment',
  metadata: { name: 'web', namespace: NS },
  spec: {
    replicas: 2,
    selector: { matchLabels: { app: 'web' } },
    template: {
      metadata: { labels: { app: 'web' } },
      spec: {
        terminationGracePeriodSeconds: 10,
        containers: [{
          name: 'httpd',
          image: TEST_IMAGE,
          imagePullPolicy: 'Never',
          command: ['sh', '-c', 'mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www'],
          readinessProbe: { tcpSocket: { port: 8080 }, periodSeconds: 1 },
          lifecycle: { preStop: { exec: { command: ['sleep', '3'] } } },
        }],
      },
    },
  },
};
const SERVICE = {
  apiVersion: 'v1',
  kind: 'Service',
  metadata: { name: 'web', namespace: NS },
  spec: { selector: { app: 'web' }, ports: [{ port: 80, targetPort: 8080 }] },
};
// The client (test/helpers/svc-client.ts) logs one line per connect; the Service exists before it.
// Opted out of socket acceleration: the agent flags its address in the pod map.
const CLIENT = serviceClientPod(NS, { 'patu.dev/accel': 'off' });
const client = new ServiceClientLog(cluster, NS);
const attempts = () => client.attempts();
const failures = (since: number) => client.failures(since);
const lastAttempt = () => client.lastAttempt();
const byBackend = (since: number) => client.byBackend(since);

interface PodInfo { name: string; ip: string; ready: boolean; deleting: boolean }
function webPods(): PodInfo[] {
  const out = cluster.must(['get', 'pods', '-n', NS, '-l', 'app=web', '-o', 'json']);
  return (JSON.parse(out).items as any[]).map((p) => ({
    name: p.metadata.name as string,
    ip: (p.status.podIP ?? '') as string,
    ready: (p.status.conditions ?? []).some((c: any) => c.type === 'Ready' && c.status === 'True'),
    deleting: Boolean(p.metadata.deletionTimestamp),
  }));
}

interface Programmed { name: string; vip: string; port: number; backends: { ip: string; port: number }[] }
/** What the kernel maps hold, read by `patu services list` from the cluster's pin root. */
function programmed(): Programmed[] {
  const r = spawnSync(join(REPO_ROOT, 'bin', 'patu'), ['services', 'list', '--json', '--pin-root', PIN_ROOT], { encoding: 'utf8', timeout: 20_000 });
  if (r.status !== 0) throw new Error(`patu services list: ${r.stderr}`);
  return (JSON.parse(r.stdout) as { services: Programmed[] }).services;
}
const webBackends = () => (programmed().find((s) => s.name === `${NS}/web:80`)?.backends ?? []).map((b) => `${b.ip}:${b.port}`).sort();

/** The acceleration pod map (`patu accel status`): address and opt-out flag per pod. */
function accelPods(): { ip: string; optOut: boolean }[] {
  const r = spawnSync(join(REPO_ROOT, 'bin', 'patu'), ['accel', 'status', '--json', '--pin-root', PIN_ROOT], { encoding: 'utf8', timeout: 20_000 });
  if (r.status !== 0) throw new Error(`patu accel status: ${r.stderr}`);
  return (JSON.parse(r.stdout) as { pods: { ip: string; optOut: boolean }[] }).pods;
}

const records = (): string[] => (existsSync(IPAM_DIR) ? readdirSync(IPAM_DIR).filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f)).sort() : []);
const veths = (): string[] => {
  const r = spawnSync('ip', ['-o', 'link', 'show', 'master', BRIDGE], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.split('\n').filter(Boolean).map((l) => l.split(':')[1]!.trim().split('@')[0]!) : [];
};

const agentPod = (): { name: string; ready: boolean; uid: string } | undefined => {
  const items = JSON.parse(cluster.must(['get', 'pods', '-n', 'kube-system', '-l', 'app.kubernetes.io/name=patu', '-o', 'json'])).items as any[];
  const live = items.filter((p) => !p.metadata.deletionTimestamp);
  if (live.length !== 1) return undefined;
  const p = live[0];
  return { name: p.metadata.name, uid: p.metadata.uid, ready: (p.status.conditions ?? []).some((c: any) => c.type === 'Ready' && c.status === 'True') };
};
const agentLog = (pod: string): string => cluster.must(['logs', '-n', 'kube-system', pod, '-c', 'agent']);

async function scaleTo(n: number): Promise<PodInfo[]> {
  cluster.must(['scale', '-n', NS, 'deployment/web', `--replicas=${n}`]);
  return until(`${n} ready web pods, programmed as the Service's only backends`, 120_000, () => {
    const pods = webPods();
    const live = pods.filter((p) => !p.deleting);
    if (pods.length !== n || live.length !== n || !live.every((p) => p.ready)) return undefined;
    const want = live.map((p) => `${p.ip}:8080`).sort();
    return JSON.stringify(webBackends()) === JSON.stringify(want) ? live : undefined;
  });
}

/** Waits until every one of `pods` has answered the client after attempt `since`. */
const untilServed = (pods: PodInfo[], since: number) =>
  until(`client traffic reaching ${pods.map((p) => p.name).join(', ')}`, 60_000, () => {
    const c = byBackend(since);
    return pods.every((p) => (c[p.name] ?? 0) > 0) ? c : undefined;
  });

/** Set while the hostPort test's pods may still exist (it failed half way). */
let cleanupPods: (() => unknown) | undefined;

describe('patu from deploy/patu.yaml on a real cluster: services, scaling, agent restarts, cleanup', { skip: skip ?? false }, () => {
  before(async () => {
    reapStaleClusters();
    cluster.env.PATU_K8S_METRICS_PORT = String(await freePort());
    await cluster.up(['--no-cni']);
  });

  after(() => {
    const d = cluster.down();
    if (!d.ok) console.error(`cluster.sh down failed: ${d.detail}`);
    // The agent masquerades pod traffic in the shared "ip patu" table: down takes its chain and jump away.
    const left = spawnSync('nft', ['-a', 'list', 'table', 'ip', 'patu'], { encoding: 'utf8' }).stdout ?? '';
    assert.doesNotMatch(left, new RegExp(`masq_${BRIDGE}\\b`), `masquerade chain of ${BRIDGE} left after down:\n${left}`);
  });

  test('the manifest installs patu: DaemonSet ready, conflist from the Node podCIDR, CNI binary linked, node Ready', () => {
    const d = cluster.script(['deploy'], 300_000);
    assert.ok(d.ok, `cluster.sh deploy: ${d.detail}${cluster.logTail('kubelet')}`);
    const node = JSON.parse(cluster.must(['get', 'node', 'localhost', '-o', 'json']));
    assert.equal(node.spec.podCIDR, POD_CIDR);
    assert.equal(node.status.conditions.find((c: any) => c.type === 'Ready').status, 'True');

    // Written by the agent (not the init step) with the Node's podCIDR and the ConfigMap's settings.
    const plugin = JSON.parse(readFileSync(CONFLIST, 'utf8')).plugins[0];
    assert.deepEqual(
      { podCIDR: plugin.podCIDR, bridge: plugin.bridge, pinRoot: plugin.pinRoot, dataDir: plugin.ipam?.dataDir, accel: plugin.accel },
      { podCIDR: POD_CIDR, bridge: BRIDGE, pinRoot: PIN_ROOT, dataDir: join(STATE, 'patu', 'ipam'), accel: true },
    );
    // The init step installed the plugin as a link into the copied tree, and recorded it all.
    const bin = join(STATE, 'cni', 'bin', 'patu');
    assert.ok(lstatSync(bin).isSymbolicLink());
    assert.equal(resolve(join(STATE, 'cni', 'bin'), readlinkSync(bin)), join(STATE, 'patu', 'app', 'bin', 'patu'));
    const manifest = JSON.parse(readFileSync(join(STATE, 'patu', 'install.json'), 'utf8')) as { entries: { path: string }[] };
    assert.deepEqual(manifest.entries.map((e) => e.path).sort(), [CONFLIST, bin, join(STATE, 'patu', 'app')].sort());

    // Through CRI (crictl): the agent's container runs in a host-network sandbox.
    const running = cluster.crictl(['ps', '--name', 'agent', '--state', 'running', '-o', 'json']);
    assert.ok(running.ok, running.detail);
    assert.equal((JSON.parse(running.stdout) as { containers: unknown[] }).containers.length, 1, 'one running agent container');

    // The agent uses its ServiceAccount, programmed the services and attached in the cluster's cgroup.
    const pod = agentPod()!;
    const log = agentLog(pod.name);
    assert.match(log, /"credentials":"serviceaccount /);
    assert.match(log, /"msg":"service programs attached"/);
    for (const p of ['links/patu_connect4', 'accel/link_patu_sockops', 'patu_svc']) assert.ok(existsSync(join(PIN_ROOT, p)), `pin ${p}`);
  });

  test('/readyz, /healthz and /metrics answer on the agent\'s metrics port', async () => {
    const base = `http://127.0.0.1:${cluster.env.PATU_K8S_METRICS_PORT}`;
    for (const path of ['/readyz', '/healthz']) {
      const r = await fetch(base + path);
      assert.equal(r.status, 200, `${path}: ${await r.text()}`);
    }
    const metrics = await (await fetch(`${base}/metrics`)).text();
    assert.match(metrics, /^patu_/m, 'patu metrics exported');
    assert.match(metrics, /^patu_process_resident_memory_bytes \d+/m);
  });

  test('a Deployment behind a ClusterIP Service: addresses from the podCIDR, pod-to-pod and pod-to-service traffic', async () => {
    cluster.must(['apply', '-f', '-'], JSON.stringify({ apiVersion: 'v1', kind: 'List', items: [WEB, SERVICE] }));
    const pods = await scaleTo(2);
    cluster.must(['apply', '-f', '-'], JSON.stringify(CLIENT));
    const clientIp = await until('client pod running', 120_000, () => {
      const [phase, ip] = cluster.must(['get', 'pod', '-n', NS, 'client', '-o', 'jsonpath={.status.phase} {.status.podIP}']).trim().split(' ');
      return phase === 'Running' && ip ? ip : undefined;
    });
    for (const ip of [clientIp, ...pods.map((p) => p.ip)]) assert.ok(inCidr(ip, POD_CIDR), `${ip} not in the Node's podCIDR ${POD_CIDR}`);
    assert.deepEqual(records(), [clientIp, ...pods.map((p) => p.ip)].sort(), 'one IPAM record per pod');
    assert.equal(veths().length, 3, `one veth per pod on ${BRIDGE}: ${veths().join(' ')}`);

    // pod to pod, straight to each web pod's address.
    for (const p of pods) {
      const r = cluster.kubectl(['exec', '-n', NS, 'client', '--', 'timeout', '5', 'wget', '-q', '-O', '-', `http://${p.ip}:8080/`]);
      assert.ok(r.ok, r.detail);
      assert.equal(r.stdout.trim(), p.name);
    }
    // pod to Service: the client's loop reaches both backends, and nothing failed.
    const served = await untilServed(pods, 0);
    assert.deepEqual(failures(0), [], `failed connects to the Service (served: ${JSON.stringify(served)})`);
    // The ClusterIP is translated at connect(): the client's socket names the backend, never the VIP.
    const vip = cluster.must(['get', 'svc', '-n', NS, 'web', '-o', 'jsonpath={.spec.clusterIP}']).trim();
    assert.deepEqual(programmed().find((s) => s.name === `${NS}/web:80`)?.vip, vip);
    // Every pod is in the acceleration map; the annotated client opted out, the web pods did not.
    const flags = await until('the client\'s opt-out in the pod map', 30_000, () => {
      const f = Object.fromEntries(accelPods().map((p) => [p.ip, p.optOut]));
      return f[clientIp] === true ? f : undefined;
    });
    assert.deepEqual(flags, Object.fromEntries([[clientIp, true], ...pods.map((p) => [p.ip, false])]));
  });

  test('scale up to 4 and down to 1 while the client keeps connecting: no failed connect, new backends get traffic', async () => {
    const mark = lastAttempt();
    const four = await scaleTo(4);
    await untilServed(four, mark);
    const downMark = lastAttempt();
    const [one] = await scaleTo(1);
    // Terminating pods serve through their preStop; give the client time to hit any stale backend.
    await until('scaled-down pods gone', 60_000, () => (webPods().length === 1 ? true : undefined));
    await until('some attempts after the scale-down', 30_000, () => (lastAttempt() > downMark + 20 ? true : undefined));
    assert.deepEqual(failures(mark), [], 'failed connects while scaling');
    const after = lastAttempt();
    await until('more attempts', 30_000, () => (lastAttempt() > after + 10 ? true : undefined));
    assert.deepEqual(Object.keys(byBackend(after)), [one!.name], 'after the scale-down only the remaining pod answers');
    assert.equal(records().length, 2, 'IPAM records of the removed pods released (1 web + client)');
    assert.equal(veths().length, 2, 'veths of the removed pods gone');
  });

  test('agent restart mid-traffic, nothing changed meanwhile: no failed connect, the new agent rewrites nothing', async () => {
    const mark = lastAttempt();
    const old = agentPod()!;
    cluster.must(['delete', 'pod', '-n', 'kube-system', old.name, '--wait=true']);
    const fresh = await until('a new, ready agent pod', 120_000, () => {
      const p = agentPod();
      return p && p.uid !== old.uid && p.ready ? p : undefined;
    });
    const log = await until('the new agent\'s first resync', 30_000, () => {
      const l = agentLog(fresh.name);
      return /initial resync/.test(l) ? l : undefined;
    });
    // Its model starts empty (every service is new to it), but the maps already hold all of it.
    const resync = JSON.parse(log.split('\n').find((l) => l.includes('initial resync'))!) as { services: number; mapOps: number };
    assert.ok(resync.services >= 2, `the resync saw the services: ${JSON.stringify(resync)}`);
    assert.equal(resync.mapOps, 0, 'a restart with nothing changed must not write to the maps');
    assert.doesNotMatch(log, /service programs attached/, 'programs stay attached through pinned links: not attached again');
    await until('more attempts', 30_000, () => (lastAttempt() > mark + 40 ? true : undefined));
    assert.deepEqual(failures(mark), [], 'failed connects across the agent restart');
  });

  test('agent away while the Deployment scales up: the new pod gets its network from bin/patu alone, the returning agent programs it', async () => {
    const mark = lastAttempt();
    const [kept] = webPods();
    // A nodeSelector no node has: the DaemonSet takes its pod away and does not bring it back.
    cluster.must(['patch', 'daemonset', '-n', 'kube-system', 'patu', '--type', 'merge', '-p', '{"spec":{"template":{"spec":{"nodeSelector":{"patu.e2e/away":"true"}}}}}']);
    await until('agent pod gone', 60_000, () => (agentPod() === undefined && cluster.must(['get', 'pods', '-n', 'kube-system', '-l', 'app.kubernetes.io/name=patu', '-o', 'name']).trim() === '' ? true : undefined));
    cluster.must(['scale', '-n', NS, 'deployment/web', '--replicas=2']);
    const started = await until('2 ready web pods without an agent', 120_000, () => {
      const pods = webPods();
      return pods.length === 2 && pods.every((p) => p.ready) ? pods : undefined;
    });
    const added = started.find((p) => p.name !== kept!.name)!;
    assert.ok(inCidr(added.ip, POD_CIDR) && records().includes(added.ip), `the new pod's address ${added.ip} came from patu's IPAM`);
    assert.deepEqual(webBackends(), [`${kept!.ip}:8080`], 'with no agent nothing reprograms the Service: the old backends stay');

    cluster.must(['patch', 'daemonset', '-n', 'kube-system', 'patu', '--type', 'json', '-p', '[{"op":"remove","path":"/spec/template/spec/nodeSelector"}]']);
    const two = await scaleTo(2);
    await untilServed(two, mark);
    assert.deepEqual(failures(mark), [], 'failed connects while the agent was away');
    const back = await until('the returning agent pod ready', 120_000, () => {
      const p = agentPod();
      return p?.ready ? p : undefined;
    });
    const log = agentLog(back.name);
    assert.doesNotMatch(log, /"command":"ADD"/, 'the new pod was set up by bin/patu itself, not by the returning agent');
  });

  test('hostPort through kubelet and containerd: 127.0.0.1 from a hostNetwork pod and the node address from a pod reach it; deleting the pod removes it', async () => {
    const hostPort = 40000 + (process.pid % 5000);
    const hostPortDir = join(STATE, 'patu', 'ipam', '_hostports');
    const pod = (name: string, spec: object) => ({ apiVersion: 'v1', kind: 'Pod', metadata: { name, namespace: NS }, spec: { terminationGracePeriodSeconds: 1, ...spec } });
    cluster.must(['apply', '-f', '-'], JSON.stringify({
      apiVersion: 'v1', kind: 'List', items: [
        pod('hostport', { containers: [{ name: 'httpd', image: TEST_IMAGE, imagePullPolicy: 'Never', command: ['sh', '-c', 'mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www'], ports: [{ containerPort: 8080, hostPort }] }] }),
        pod('hostnet', { hostNetwork: true, containers: [{ name: 'sh', image: TEST_IMAGE, imagePullPolicy: 'Never', command: ['sleep', '3600'] }] }),
      ],
    }));
    try {
      await until('hostport and hostnet pods running', 60_000, () => {
        const phases = ['hostport', 'hostnet'].map((n) => cluster.must(['get', 'pod', '-n', NS, n, '-o', 'jsonpath={.status.phase}']).trim());
        return phases.every((p) => p === 'Running') ? true : undefined;
      });
    } catch (e) {
      const events = cluster.kubectl(['get', 'events', '-n', NS, '-o', 'custom-columns=OBJ:.involvedObject.name,REASON:.reason,MSG:.message']).stdout;
      const lines = agentLog(agentPod()?.name ?? '').split('\n').filter((l) => /hostport|hostPort|"exitCode":[1-9]/.test(l)).slice(-10);
      throw new Error(`${(e as Error).message}\nevents:\n${events.split('\n').filter((l) => /hostport|hostnet/.test(l)).join('\n')}\nagent:\n${lines.join('\n')}`);
    } finally {
      // Whatever happened, the next test expects only its own workload in the namespace.
      cleanupPods = () => cluster.kubectl(['delete', '-n', NS, 'pod/hostport', 'pod/hostnet', '--wait=true', '--ignore-not-found']);
    }
    // containerd passed portMappings (the conflist declares the capability); patu recorded it, the agent programmed it.
    assert.deepEqual(existsSync(hostPortDir) ? readdirSync(hostPortDir).filter((n) => n !== 'lock') : [], [`tcp-any-${hostPort}`]);
    await until('hostPort entry programmed', 30_000, () => (programmed().some((s) => s.name.startsWith('patu:hostport/') && s.port === hostPort) ? true : undefined));
    const nodeIP = cluster.names.nodeIP;
    for (const [from, url] of [['hostnet', `http://127.0.0.1:${hostPort}/`], ['client', `http://${nodeIP}:${hostPort}/`]] as const) {
      const r = cluster.kubectl(['exec', '-n', NS, from, '--', 'timeout', '5', 'wget', '-q', '-O', '-', url]);
      assert.ok(r.ok, `${from} -> ${url}: ${r.detail}`);
      assert.equal(r.stdout.trim(), 'hostport', `${from} -> ${url}`);
    }
    cluster.must(['delete', '-n', NS, 'pod/hostport', 'pod/hostnet', '--wait=true']);
    cleanupPods = undefined;
    await until('hostPort record and entry removed', 60_000, () =>
      (!existsSync(join(hostPortDir, `tcp-any-${hostPort}`)) && !programmed().some((s) => s.name.startsWith('patu:hostport/')) ? true : undefined));
  });

  test('deleting the workload leaves no IPAM record, veth or service entry', async () => {
    cleanupPods?.();
    cluster.must(['delete', '-n', NS, 'pod/client', 'deployment/web', 'service/web', '--wait=true']);
    await until('web pods gone', 90_000, () => (webPods().length === 0 ? true : undefined));
    await until('IPAM records and veths released', 60_000, () => (records().length === 0 && veths().length === 0 ? true : undefined)).catch((e: Error) => {
      throw new Error(`${e.message}: records ${records().join(',')}, veths ${veths().join(',')}`);
    });
    await until('service entry removed', 30_000, () => (programmed().some((s) => s.name.startsWith(`${NS}/web`)) ? undefined : true));
    // What kubelet sees through CRI: no sandbox of the namespace is still up.
    const sandboxes = cluster.crictl(['pods', '--namespace', NS, '--state', 'ready', '-q']);
    assert.ok(sandboxes.ok, sandboxes.detail);
    assert.equal(sandboxes.stdout.trim(), '', 'ready pod sandboxes left in CRI');
    // The pods' acceleration entries went with their CNI DEL.
    assert.deepEqual(accelPods(), []);
  });

  test('deleting the DaemonSet keeps the data plane; the uninstall manifest then removes files, conflist and pins', async () => {
    const rendered = (name: string) => {
      const r = cluster.script(['render', name], 10_000);
      assert.ok(r.ok, r.detail);
      return r.stdout;
    };
    assert.ok(cluster.kubectl(['delete', '-f', '-', '--wait=true'], rendered('patu'), 120_000).ok);
    await until('agent pod gone', 60_000, () => (cluster.must(['get', 'pods', '-n', 'kube-system', '-l', 'app.kubernetes.io/name=patu', '-o', 'name']).trim() === '' ? true : undefined));
    assert.ok(existsSync(join(PIN_ROOT, 'links', 'patu_connect4')), 'programs stay attached without the agent');
    assert.ok(existsSync(CONFLIST), 'the conflist stays: pods keep getting networking from bin/patu');

    cluster.must(['apply', '-f', '-'], rendered('patu-uninstall'));
    const rs = cluster.kubectl(['rollout', 'status', '-n', 'kube-system', 'ds/patu-uninstall', '--timeout=120s'], undefined, 130_000);
    assert.ok(rs.ok, rs.detail);
    assert.equal(existsSync(PIN_ROOT), false, `${PIN_ROOT} removed`);
    assert.equal(existsSync(CONFLIST), false, 'conflist removed');
    assert.deepEqual(readdirSync(join(STATE, 'cni', 'bin')), ['loopback'], 'only the runtime\'s own plugin is left');
    assert.equal(existsSync(join(STATE, 'patu', 'app')), false, 'the copied tree removed');
    assert.equal(existsSync(join(STATE, 'patu', 'install.json')), false);
    assert.ok(cluster.kubectl(['delete', '-f', '-', '--wait=true'], rendered('patu-uninstall'), 120_000).ok);
  });
});
