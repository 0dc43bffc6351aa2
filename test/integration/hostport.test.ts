// hostPorts (the CNI portMappings capability) end to end on the real kernel: the
// plugin records mappings, refuses a second pod on a taken port leaving nothing
// behind, and DEL/GC remove records; the agent programs them into the service maps
// and a client in the test's cgroup reaches the pod through 127.0.0.1 and through a
// node address, TCP and UDP, across an agent restart. Needs root.
//
// Creates only (removed after the file, also when a test fails): a test bridge and
// netns (test/helpers/cni.ts flavour), the cgroup patu-test-hostport-<pid> (the
// agent's programs attach there; clients are moved into it before they run), pins
// under /sys/fs/bpf/patu-test-hostport-<pid>, a temp dir. Client traffic goes from
// the host netns to the test bridge's own address and to 127.0.0.1 only, and is
// translated to the test pod.
import { Children, runClient as runSvcClient, startServer as startSvcServer, type ClientResult } from '../helpers/svc-fixtures.js';
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  addNetns, delNetns, describe as show, diffSnapshots, execPlugin, isRoot, patuFlavour, snapshotHost,
  type ExecOptions, type Flavour, type SnapshotScope,
} from '../helpers/cni.js';
import { scratchForTests } from '../helpers/kernel.js';
import { readProgrammed } from '../../src/dataplane/service-lb.js';
import { HOSTPORT_DIR } from '../../src/hostport/records.js';

const skip = !isRoot() ? 'needs root: netns, bridge, cgroup, eBPF' : (patuFlavour().skipReason() ?? false);
const scratch = scratchForTests('patu-test-hostport');
const P = 41000 + (process.pid % 2000) * 2;
const PC = P + 1;
const PS = P + 4000;
const tag = `hp${process.pid.toString(36)}`;
const made: string[] = [];
let f: Flavour;
let CG = '';
let PIN = '';
let tmp = '';
const children = new Children();

before(() => {
  if (skip) return;
  f = patuFlavour();
  scratch.defer('test network', () => f.destroy());
  scratch.defer('netns', () => made.forEach(delNetns));
  scratch.defer('children', () => children.killAll());
  CG = scratch.cgroup();
  PIN = scratch.pinRoot();
  tmp = scratch.tmpDir('patu-hostport-it');
});
after(() => children.killAll());

function newPod(): { name: string; path: string; id: string } {
  const name = `${tag}n${made.length}`;
  made.push(name);
  return { name, path: addNetns(name), id: `${name}-ctr` };
}

const local = (o: ExecOptions = {}): ExecOptions => ({ timeoutMs: 20_000, ...o, env: { PATU_NO_AGENT: '1', ...o.env } });
const conf = (portMappings: object[] | undefined, extra: object = {}) => ({ ...f.netconf(), ...(portMappings ? { runtimeConfig: { portMappings } } : {}), ...extra });
const ipOf = (result: any): string => String(result.ips[0].address).split('/')[0]!;
const records = (): string[] => {
  const dir = join(f.dataDir, HOSTPORT_DIR);
  return existsSync(dir) ? readdirSync(dir).filter((n) => n !== 'lock').sort() : [];
};
const scope = (containerIds: string[]): SnapshotScope => ({ bridge: f.bridge, prefix: f.prefix, dataDir: f.dataDir, netns: [...made], containerIds });

test('plugin: the second pod on a taken hostPort fails with code 104 naming the holder, and leaves nothing', { skip }, async () => {
  const a = newPod();
  const b = newPod();
  const mapA = [{ hostPort: P, containerPort: 8080, protocol: 'tcp' }, { hostPort: P, containerPort: 8080, protocol: 'udp' }];
  const addA = await execPlugin(f.bin, 'ADD', conf(mapA), local({ containerId: a.id, netns: a.path }));
  assert.equal(addA.code, 0, show(addA));
  assert.deepEqual(records(), [`tcp-any-${P}`, `udp-any-${P}`]);
  // patu status lists them (and does not take the records directory for a network).
  const st = spawnSync(f.bin, ['status', '--json', '--data-dir', f.dataDir, '--pin-root', PIN, '--bridge', f.bridge], { encoding: 'utf8' });
  assert.equal(st.status, 0, st.stderr);
  const status = JSON.parse(st.stdout);
  assert.deepEqual(status.hostPorts.map((h: any) => `${h.name} ${h.containerId} ${h.podIp}:${h.containerPort}`), [
    `tcp-any-${P} ${a.id} ${ipOf(addA.json)}:8080`, `udp-any-${P} ${a.id} ${ipOf(addA.json)}:8080`,
  ]);
  assert.deepEqual(status.pods.map((p: any) => p.containerId), [a.id]);

  const before = snapshotHost(scope([b.id]));
  for (const m of [
    [{ hostPort: PC, containerPort: 80 }, { hostPort: P, containerPort: 80, protocol: 'TCP' }],
    // Every address against one address on the same port: a conflict too.
    [{ hostPort: P, containerPort: 80, protocol: 'udp', hostIP: '127.0.0.1' }],
  ]) {
    const addB = await execPlugin(f.bin, 'ADD', conf(m), local({ containerId: b.id, netns: b.path }));
    assert.equal(addB.code, 1, show(addB));
    assert.equal(addB.json?.code, 104, show(addB));
    assert.equal(addB.json?.details, 'runtimeConfig.portMappings');
    assert.match(addB.json.msg, new RegExp(`hostPort ${P}/(TCP|UDP) .*already taken.*${a.id}`), show(addB));
    assert.deepEqual(diffSnapshots(before, snapshotHost(scope([b.id])), scope([b.id]), { ignoreBridge: true, containerIds: [b.id] }), [], 'the failed ADD left something behind');
    assert.deepEqual(records(), [`tcp-any-${P}`, `udp-any-${P}`], 'only the first pod\'s records');
  }

  // A bad field is refused before anything happens.
  const bad = await execPlugin(f.bin, 'ADD', conf([{ hostPort: PC, containerPort: 80, protocol: 'sctp' }]), local({ containerId: b.id, netns: b.path }));
  assert.equal(bad.json?.code, 7, show(bad));
  assert.equal(bad.json?.details, 'runtimeConfig.portMappings[0].protocol');
  // ...but DEL does not need them and never fails on them (kubelet would retry it forever).
  const badDel = await execPlugin(f.bin, 'DEL', conf([{ hostPort: 'x' }]), local({ containerId: b.id, netns: b.path }));
  assert.equal(badDel.code, 0, show(badDel));
  // containerd (go-cni) sends Go field names: HostPort, ContainerPort, Protocol, HostIP.
  const goNames = await execPlugin(f.bin, 'ADD', conf([{ HostPort: PC, ContainerPort: 80, Protocol: 'tcp', HostIP: '' }]), local({ containerId: b.id, netns: b.path }));
  assert.equal(goNames.code, 0, show(goNames));
  assert.deepEqual(records(), [`tcp-any-${P}`, `tcp-any-${PC}`, `udp-any-${P}`]);
  const goDel = await execPlugin(f.bin, 'DEL', conf(undefined), local({ containerId: b.id, netns: b.path }));
  assert.equal(goDel.code, 0, show(goDel));

  // CHECK finds the records; one it never granted fails CHECK.
  const prev = { prevResult: addA.json };
  const chk = await execPlugin(f.bin, 'CHECK', conf(mapA, prev), local({ containerId: a.id, netns: a.path }));
  assert.equal(chk.code, 0, show(chk));
  const chk2 = await execPlugin(f.bin, 'CHECK', conf([...mapA, { hostPort: PC, containerPort: 1 }], prev), local({ containerId: a.id, netns: a.path }));
  assert.equal(chk2.json?.code, 101, show(chk2));
  assert.match(chk2.json.msg, new RegExp(`tcp-any-${PC}: missing`));

  // DEL frees the port (twice is fine); the other pod gets it; GC removes a pod the runtime no longer lists.
  for (let i = 0; i < 2; i++) {
    const del = await execPlugin(f.bin, 'DEL', conf(undefined), local({ containerId: a.id, netns: a.path }));
    assert.equal(del.code, 0, show(del));
  }
  assert.deepEqual(records(), []);
  const addB = await execPlugin(f.bin, 'ADD', conf([{ hostPort: P, containerPort: 80 }]), local({ containerId: b.id, netns: b.path }));
  assert.equal(addB.code, 0, show(addB));
  assert.deepEqual(records(), [`tcp-any-${P}`]);
  const gc = await execPlugin(f.bin, 'GC', conf(undefined, { 'cni.dev/valid-attachments': [] }), local({}));
  assert.equal(gc.code, 0, show(gc));
  assert.deepEqual(records(), []);
});

// ---------------------------------------------------------------------------
// Through the agent

let agent: ChildProcess | undefined;
let log = '';
const socket = (): string => join(tmp, 'agent.sock');
const servicesFile = (): string => join(tmp, 'services.yaml');

async function waitFor(cond: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}; agent log:\n${log.slice(-4000)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function startAgent(source: string[] = ['--services-file', servicesFile()]): Promise<void> {
  log = '';
  agent = spawn(f.bin, [
    'agent', '--cni-socket', socket(), ...source, '--cgroup', CG, '--pin-root', PIN,
    '--data-dir', f.dataDir, '--metrics-addr', '127.0.0.1:0', '--log-level', 'debug',
  ], { stdio: ['ignore', 'pipe', 'pipe'], env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin' } });
  children.add(agent);
  agent.stdout!.setEncoding('utf8').on('data', (d: string) => (log += d));
  agent.stderr!.setEncoding('utf8').on('data', (d: string) => (log += d));
  await waitFor(() => log.includes('serving CNI requests'), 15_000, 'agent start');
}

async function stopAgent(): Promise<void> {
  if (!agent) return;
  const a = agent;
  agent = undefined;
  if (a.exitCode !== null) return;
  const exited = new Promise((r) => a.once('exit', r));
  a.kill('SIGTERM');
  await Promise.race([exited, new Promise((r) => setTimeout(r, 5_000))]);
  a.kill('SIGKILL');
}

const viaAgent = (o: ExecOptions = {}): ExecOptions => ({ timeoutMs: 20_000, ...o, env: { PATU_AGENT_SOCKET: socket(), ...o.env } });

/** Runs the fixture client in the host netns (or `ns`), inside the test cgroup (where the programs are attached). */
const client = (job: object, ns?: string): Promise<ClientResult> =>
  runSvcClient(children, { durationMs: 15_000, ...job }, { cgroup: CG, ...(ns ? { netns: ns } : {}) });

const podServer = (ns: string, ip: string, port: number): Promise<ChildProcess> => startSvcServer(children, [{ ip, port }], { netns: ns });

const hostPortEntries = (): string[] =>
  (readProgrammed(PIN) ?? []).filter((s) => s.name.startsWith('patu:hostport/'))
    .map((s) => `${s.vip}:${s.port}/${s.protocol} -> ${s.backends.map((b) => `${b.ip}:${b.port}`).join(',')}`).sort();

async function metrics(): Promise<string> {
  const m = /"addr":"127\.0\.0\.1:0","port":(\d+)/.exec(log);
  assert.ok(m, `the agent logged its metrics port: ${log.slice(0, 2000)}`);
  const res = await fetch(`http://127.0.0.1:${m[1]}/metrics`);
  return res.text();
}

test('agent: hostPorts reach the pod through 127.0.0.1 and a node address (TCP, UDP), survive a restart, go with DEL', { skip, timeout: 120_000 }, async () => {
  // A service on the node address and port PC: the hostPort asking for it must lose, counted.
  writeFileSync(servicesFile(), `services:\n  - name: holder\n    clusterIP: ${f.gateway}\n    ports: [{ port: ${PC}, targetPort: 8080 }]\n    endpoints: [{ ip: 10.251.9.9 }]\n`);
  await startAgent();
  const pod = newPod();
  try {
    const maps = [
      // Every node address (the wildcard entry): 127.0.0.1 and the test bridge's address.
      { hostPort: P, containerPort: 8080, protocol: 'tcp' },
      { hostPort: P, containerPort: 8080, protocol: 'udp', hostIP: '' },
      // One address only.
      { hostPort: PS, containerPort: 8080, protocol: 'tcp', hostIP: '127.0.0.1' },
      { hostPort: PC, containerPort: 8080, protocol: 'tcp', hostIP: f.gateway },
    ];
    const add = await execPlugin(f.bin, 'ADD', conf(maps), viaAgent({ containerId: pod.id, netns: pod.path }));
    assert.equal(add.code, 0, show(add));
    const ip = ipOf(add.json);
    await podServer(pod.name, ip, 8080);
    const want = [`0.0.0.0:${P}/TCP -> ${ip}:8080`, `0.0.0.0:${P}/UDP -> ${ip}:8080`, `127.0.0.1:${PS}/TCP -> ${ip}:8080`].sort();
    await waitFor(() => JSON.stringify(hostPortEntries()) === JSON.stringify(want), 5_000, `hostPort entries ${want.join(' | ')} (have ${hostPortEntries().join(' | ')})`);

    const reach = async (what: string): Promise<void> => {
      for (const [mode, host, port] of [['tcp', '127.0.0.1', P], ['udp', '127.0.0.1', P], ['tcp', f.gateway, P], ['udp', f.gateway, P], ['tcp', '127.0.0.1', PS]] as const) {
        const r = await client({ mode, host, port, count: 3 });
        assert.deepEqual(r.byBackend, { [`${ip}:8080`]: 3 }, `${what}: ${mode} ${host}:${port} -> pod: ${JSON.stringify(r)}`);
      }
      // hostIP 127.0.0.1 is that address only, and only the node's: a pod's 127.0.0.1 is
      // its own (the pod here has no listener on its loopback, so nothing may answer).
      const other = await client({ mode: 'tcp', host: f.gateway, port: PS, count: 1 });
      assert.equal(other.ok, 0, `${what}: ${f.gateway}:${PS} is not mapped: ${JSON.stringify(other)}`);
      for (const port of [PS, P]) {
        const own = await client({ mode: 'tcp', host: '127.0.0.1', port, count: 1 }, pod.name);
        assert.deepEqual(own.byBackend, {}, `${what}: the pod's own 127.0.0.1:${port} is not the node's: ${JSON.stringify(own)}`);
      }
    };
    await reach('first');

    // The service kept its port; the hostPort for it is logged and counted once.
    assert.ok((readProgrammed(PIN) ?? []).some((s) => s.name.startsWith('default/holder') && s.port === PC), 'the service keeps its entry');
    assert.match(log, /hostPort not served: a service holds the same address, port and protocol/);
    assert.match(await metrics(), /patu_hostport_conflicts_total\{kind="service"\} 1\b/);
    assert.match(await metrics(), /patu_hostports_programmed 4\b/);

    // The service lets the port go (the file now has another service): the hostPort is served
    // right after that apply, well before its own 10 s resync.
    writeFileSync(servicesFile(), `services:\n  - name: other\n    clusterIP: 10.96.250.1\n    ports: [{ port: 80, targetPort: 8080 }]\n    endpoints: [{ ip: 10.251.9.9 }]\n`);
    const t0 = Date.now();
    await waitFor(() => hostPortEntries().includes(`${f.gateway}:${PC}/TCP -> ${ip}:8080`), 3_000, `the hostPort on ${f.gateway}:${PC} once the service let it go`);
    const freedMs = Date.now() - t0;
    const freed = await client({ mode: 'tcp', host: f.gateway, port: PC, count: 2 });
    assert.deepEqual(freed.byBackend, { [`${ip}:8080`]: 2 }, `${f.gateway}:${PC} -> pod after the service went (${freedMs} ms): ${JSON.stringify(freed)}`);

    // Restart: the services file's first (full) resync must leave the hostPorts alone,
    // and the hostPort partition finds them programmed (no map write).
    await stopAgent();
    await reach('agent stopped (pinned state)');
    await startAgent();
    await waitFor(() => /"records":4,"mapOps":0/.test(log), 5_000, 'the first hostPort sync after the restart, writing nothing');
    await reach('after restart');

    const del = await execPlugin(f.bin, 'DEL', conf(maps), viaAgent({ containerId: pod.id, netns: pod.path }));
    assert.equal(del.code, 0, show(del));
    await waitFor(() => hostPortEntries().length === 0, 5_000, 'hostPort entries removed after DEL');
    const gone = await client({ mode: 'tcp', host: '127.0.0.1', port: P, count: 1 });
    assert.equal(gone.ok, 0, `nothing answers 127.0.0.1:${P} after DEL: ${JSON.stringify(gone)}`);
    assert.ok((readProgrammed(PIN) ?? []).some((s) => s.name.startsWith('default/other')), 'the service stays');
  } finally {
    await stopAgent();
  }
});

test('agent --hostports alone (no service source) serves hostPorts on every node address', { skip, timeout: 60_000 }, async () => {
  await startAgent(['--hostports']);
  const pod = newPod();
  try {
    const maps = [{ hostPort: P, containerPort: 8080, protocol: 'tcp' }, { hostPort: P, containerPort: 8080, protocol: 'udp' }];
    const add = await execPlugin(f.bin, 'ADD', conf(maps), viaAgent({ containerId: pod.id, netns: pod.path }));
    assert.equal(add.code, 0, show(add));
    const ip = ipOf(add.json);
    await podServer(pod.name, ip, 8080);
    await waitFor(() => hostPortEntries().length === 2, 5_000, 'two hostPort entries');
    for (const [mode, host] of [['tcp', '127.0.0.1'], ['udp', '127.0.0.1'], ['tcp', f.gateway], ['udp', f.gateway]] as const) {
      const r = await client({ mode, host, port: P, count: 2 });
      assert.deepEqual(r.byBackend, { [`${ip}:8080`]: 2 }, `${mode} ${host}:${P} -> pod: ${JSON.stringify(r)}`);
    }
    // GC through the agent: the runtime no longer lists the pod.
    const gc = await execPlugin(f.bin, 'GC', conf(undefined, { 'cni.dev/valid-attachments': [] }), viaAgent({}));
    assert.equal(gc.code, 0, show(gc));
    await waitFor(() => hostPortEntries().length === 0, 5_000, 'hostPort entries removed after GC');
    assert.deepEqual(records(), []);
  } finally {
    await stopAgent();
  }
});
