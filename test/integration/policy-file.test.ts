// NetworkPolicy from the policy file, end to end (needs root): the real agent
// (`patu agent --policy-file --services-file --accel`) in a "node" netns, three pods on
// its bridge, real traffic. Each rule kind, bridged and accelerated (sockmap) TCP, UDP,
// through a service address, a policy added and removed under traffic (an established
// accelerated connection cut off), a bad edit, and an agent restart with no gap.
// Creates only (test/helpers/kernel.ts, removed after the file even when a test fails):
//   netns patu-test-polfile-<pid>-node   bridge pfbr 10.89.0.1/24, host ends pfa/pfb/pfc
//   netns patu-test-polfile-<pid>-a/-b/-c  pods 10.89.0.2 / .3 / .4 (fixtures/policy-pod.ts)
//   netns patu-test-polfile-<pid>-d    a pod added by CNI ADD through the agent (bridge pfcni 10.89.1.0/24 in the node netns)
//   cgroup patu-test-polfile-<pid> (sock_ops and the service programs; the pods run in it)
//   pins under /sys/fs/bpf/patu-test-polfile-<pid>/, its names file under /run/patu/policy/
// Runs in both modes (test/helpers/agent-proc.ts): with PATU_TEST_SPLIT=1 the node runs
// `patu manager` (CNI socket, programs) + `patu agent --manager` (the two files).
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { existsSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { openPodRegistry } from '../../src/dataplane/accel-registry.js';
import { policyNamesPath, readPolicyNames } from '../../src/policy/names.js';
import { scratchForTests } from '../helpers/kernel.js';
import { PATU_BIN, isRoot } from '../helpers/cni.js';
import { MODE, SPLIT, startAgentProc, type AgentProc } from '../helpers/agent-proc.js';

const skip = !isRoot() ? 'needs root (netns, cgroups, BPF programs)' : !existsSync(PATU_BIN) ? `${PATU_BIN} not built (scripts/build.sh)` : false;
const POD_JS = fileURLToPath(new URL('./fixtures/policy-pod.js', import.meta.url));
const scratch = scratchForTests('patu-test-polfile');
const NODE = scratch.name('node');
const PIN = scratch.pinRoot();
const BR = 'pfbr';
const NODE_IP = '10.89.0.1';
const IP = { a: '10.89.0.2', b: '10.89.0.3', c: '10.89.0.4' } as const;
type PodName = keyof typeof IP;
const VIP = '10.96.89.1';
let CG = '';
let DIR = '';
let POLICY = '';
let SERVICES = '';

const ip = (...args: string[]): string => execFileSync('ip', args, { encoding: 'utf8' });
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

class Pod {
  private next = 1;
  private readonly waiting = new Map<number, (r: { ok: boolean; err?: string }) => void>();
  readonly ready: Promise<void>;
  constructor(readonly proc: ChildProcess) {
    let ready!: () => void;
    this.ready = new Promise((r) => (ready = r));
    createInterface({ input: proc.stdout! }).on('line', (line) => {
      const m = JSON.parse(line) as { ready?: boolean; id?: number; ok: boolean; err?: string };
      if (m.ready) return ready();
      this.waiting.get(m.id!)?.(m);
      this.waiting.delete(m.id!);
    });
  }
  ask(cmd: Record<string, unknown>): Promise<{ ok: boolean; err?: string; id: number }> {
    const id = this.next++;
    return new Promise((resolve) => {
      this.waiting.set(id, (r) => resolve({ ...r, id }));
      this.proc.stdin!.write(JSON.stringify({ ...cmd, id }) + '\n');
    });
  }
}
const pods = {} as Record<PodName | 'node', Pod>;
const host = (to: string): string => IP[to as PodName] ?? to;
const tcp = (from: PodName | 'node', to: string, port: number, timeoutMs = 600) => pods[from].ask({ op: 'tcp', host: host(to), port, timeoutMs });
const udp = (from: PodName | 'node', to: string, port: number, timeoutMs = 600) => pods[from].ask({ op: 'udp', host: host(to), port, timeoutMs });

let agent: AgentProc | undefined;
let agentLog = '';
async function startAgent(): Promise<void> {
  // nsenter, not `ip netns exec` (which mounts a fresh /sys, hiding bpffs and cgroup2).
  const a = startAgentProc(['--cni-socket', join(DIR, 'agent.sock'), '--policy-file', POLICY, '--services-file', SERVICES, '--accel', '--cgroup', CG, '--pin-root', PIN,
    '--bridge', BR, '--no-hostports'], { dir: DIR, wrap: ['nsenter', `--net=/run/netns/${NODE}`], managerArgs: ['--cluster-cidr', '10.89.0.0/16'] });
  agent = a;
  agentLog = '';
  a.onOutput(() => (agentLog = a.log));
  await a.ready(30_000);
}
async function stopAgent(): Promise<void> {
  const a = agent;
  if (!a) return;
  await a.stop();
  agentLog = a.log;
  agent = undefined;
}

async function waitFor(cond: () => boolean, ms: number, what: () => string): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms: ${what()}`);
    await sleep(50);
  }
}

const NAMESPACES = `
apiVersion: v1
kind: Namespace
metadata: { name: front, labels: { team: web } }
---
apiVersion: v1
kind: Namespace
metadata: { name: back }
---
apiVersion: v1
kind: Pod
metadata: { name: a, namespace: front, labels: { app: a } }
status: { podIP: ${IP.a} }
---
apiVersion: v1
kind: Pod
metadata: { name: b, namespace: back, labels: { app: b } }
spec: { containers: [{ name: srv, ports: [{ name: web, containerPort: 80 }, { name: http, containerPort: 8080 }, { name: dns, containerPort: 53, protocol: UDP }] }] }
status: { podIP: ${IP.b} }
---
apiVersion: v1
kind: Pod
metadata: { name: c, namespace: other, labels: { app: c } }
status: { podIP: ${IP.c} }
---
# d has no address in the file: its CNI ADD gives it (K8S_POD_NAMESPACE/NAME in CNI_ARGS)
apiVersion: v1
kind: Pod
metadata: { name: d, namespace: back, labels: { app: d } }
`;
const policy = (ns: string, name: string, spec: string): string =>
  `---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: { name: ${name}, namespace: ${ns} }\nspec:\n${spec.replace(/^\n/, '').split('\n').map((l) => `  ${l}`).join('\n')}\n`;

/** Writes the policy file as editors do (a new file renamed over), then waits until the agent has applied it. */
async function applyPolicies(...policies: string[]): Promise<void> {
  const want = policies.map((p) => /name: ([\w-]+), namespace: ([\w-]+)/.exec(p)!).map((m) => `${m[2]}/${m[1]}`).sort();
  writeFileSync(`${POLICY}.tmp`, NAMESPACES + policies.join(''));
  renameSync(`${POLICY}.tmp`, POLICY);
  await waitFor(() => {
    const n = readPolicyNames(PIN);
    return n !== null && JSON.stringify(Object.values(n.policies).sort()) === JSON.stringify(want);
  }, 10_000, () => `policies ${want.join(', ')} applied; agent log:\n${agentLog.slice(-3000)}`);
}

/** Probes until each gives its expected verdict (an apply takes effect at once; the retry only absorbs probe timing). */
async function expectAll(cases: [string, () => Promise<{ ok: boolean; err?: string }>, boolean][]): Promise<void> {
  const results = await Promise.all(cases.map(async ([what, probe, want]) => {
    let last: { ok: boolean; err?: string } = { ok: !want };
    for (let i = 0; i < 3; i++) {
      last = await probe();
      if (last.ok === want) return null;
    }
    return `${what}: want ${want ? 'allowed' : 'denied'}, got ${last.ok ? 'allowed' : `denied (${last.err})`}`;
  }));
  const wrong = results.filter((r) => r !== null);
  assert.deepEqual(wrong, [], `agent log tail:\n${agentLog.slice(-2000)}`);
}

before(async () => {
  if (skip) return;
  DIR = scratch.tmpDir();
  POLICY = join(DIR, 'policy.yaml');
  SERVICES = join(DIR, 'services.yaml');
  CG = scratch.cgroup();
  scratch.defer('names file', () => rmSync(policyNamesPath(PIN), { force: true }));
  scratch.netns(NODE);
  ip('-n', NODE, 'link', 'add', BR, 'type', 'bridge');
  ip('-n', NODE, 'addr', 'add', `${NODE_IP}/24`, 'dev', BR);
  ip('-n', NODE, 'link', 'set', BR, 'up');
  const children: ChildProcess[] = [];
  scratch.defer('pod fixtures', () => children.forEach((c) => c.kill('SIGKILL')));
  const start = (name: PodName | 'node', ns: string, cfg: object): void => {
    // In the test cgroup (the socket programs' attach point), then into the pod's netns.
    const p = spawn('sh', ['-c', `echo $$ > ${CG}/cgroup.procs && exec nsenter --net=/run/netns/${ns} "$0" "$1" "$2"`, process.execPath, POD_JS, JSON.stringify(cfg)], { stdio: ['pipe', 'pipe', 'inherit'] });
    children.push(p);
    pods[name] = new Pod(p);
  };
  for (const name of ['a', 'b', 'c'] as const) {
    const ns = scratch.netns(scratch.name(name));
    const hostEnd = `pf${name}`;
    ip('-n', NODE, 'link', 'add', hostEnd, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns);
    ip('-n', NODE, 'link', 'set', hostEnd, 'master', BR, 'up');
    ip('-n', ns, 'addr', 'add', `${IP[name]}/24`, 'dev', 'eth0');
    ip('-n', ns, 'link', 'set', 'eth0', 'up');
    ip('-n', ns, 'route', 'add', 'default', 'via', NODE_IP);
    start(name, ns, { ip: IP[name], tcp: [80, 8080, 9000], udp: [53, 5353] });
  }
  start('node', NODE, { ip: NODE_IP, tcp: [], udp: [] });
  await Promise.all(Object.values(pods).map((p) => p.ready));
  writeFileSync(SERVICES, `services:\n  - { name: web, namespace: back, clusterIP: ${VIP}, ports: [{ port: 80, targetPort: 80 }], endpoints: [{ ip: ${IP.b} }] }\n`);
  writeFileSync(POLICY, `${NAMESPACES}`);
  scratch.defer('agent', () => stopAgent());
  await startAgent();
  // What CNI ADD does on a node with acceleration: a and b are accelerated, c is not.
  const reg = openPodRegistry(PIN);
  assert.ok(reg, 'the accel registry is pinned');
  reg.register(IP.a, false);
  reg.register(IP.b, false);
  reg.close();
});

test(`no policy (${MODE}): everything reaches everything (TCP, UDP, through the service address)`, { skip }, async () => {
  await applyPolicies();
  await expectAll([
    ['a->b:80', () => tcp('a', 'b', 80), true],
    ['c->b:80', () => tcp('c', 'b', 80), true],
    ['a->b udp 53', () => udp('a', 'b', 53), true],
    ['a->vip:80', () => tcp('a', VIP, 80), true],
  ]);
});

test('deny all ingress in a namespace: nothing reaches b, b still sends, the node still reaches b', { skip }, async () => {
  await applyPolicies(policy('back', 'deny', `podSelector: {}\npolicyTypes: [Ingress]`));
  await expectAll([
    ['a->b:80', () => tcp('a', 'b', 80), false],
    ['c->b:80 (bridged)', () => tcp('c', 'b', 80), false],
    ['a->b udp 53', () => udp('a', 'b', 53), false],
    ['a->vip:80 (service: judged on the backend)', () => tcp('a', VIP, 80), false],
    ['b->a:80', () => tcp('b', 'a', 80), true],
    ['b->c udp 53', () => udp('b', 'c', 53), true],
    ['node->b:80', () => tcp('node', 'b', 80), true],
  ]);
});

test('podSelector AND namespaceSelector on one port; the same through the service address', { skip }, async () => {
  await applyPolicies(policy('back', 'from-front-a', `
podSelector: { matchLabels: { app: b } }
ingress:
  - from: [{ namespaceSelector: { matchLabels: { team: web } }, podSelector: { matchLabels: { app: a } } }]
    ports: [{ port: 80 }]`));
  await expectAll([
    ['a->b:80', () => tcp('a', 'b', 80), true],
    ['a->vip:80', () => tcp('a', VIP, 80), true],
    ['a->b:9000', () => tcp('a', 'b', 9000), false],
    ['c->b:80', () => tcp('c', 'b', 80), false],
    ['c->vip:80', () => tcp('c', VIP, 80), false],
    ['a->b udp 53 (ports say TCP)', () => udp('a', 'b', 53), false],
  ]);
});

test('named ports (TCP and UDP) and an endPort range', { skip }, async () => {
  await applyPolicies(
    policy('back', 'named', `
podSelector: {}
ingress: [{ ports: [{ port: http }, { port: dns, protocol: UDP }] }]`),
  );
  await expectAll([
    ['a->b:8080 (http)', () => tcp('a', 'b', 8080), true],
    ['c->b udp 53 (dns)', () => udp('c', 'b', 53), true],
    ['a->b:80', () => tcp('a', 'b', 80), false],
    ['a->b udp 5353', () => udp('a', 'b', 5353), false],
  ]);
  await applyPolicies(policy('back', 'range', `
podSelector: {}
ingress: [{ ports: [{ port: 8000, endPort: 9000 }] }]`));
  await expectAll([
    ['a->b:8080', () => tcp('a', 'b', 8080), true],
    ['c->b:9000', () => tcp('c', 'b', 9000), true],
    ['a->b:80', () => tcp('a', 'b', 80), false],
  ]);
});

test('egress: ipBlock with except, UDP and TCP ports; the other direction stays open', { skip }, async () => {
  await applyPolicies(policy('front', 'egress', `
podSelector: { matchLabels: { app: a } }
policyTypes: [Egress]
egress:
  - to: [{ ipBlock: { cidr: 10.89.0.0/24, except: [${IP.c}/32] } }]
    ports: [{ port: 53, protocol: UDP }, { port: 80 }]`));
  await expectAll([
    ['a->b udp 53', () => udp('a', 'b', 53), true],
    ['a->b:80', () => tcp('a', 'b', 80), true],
    ['a->c udp 53 (except)', () => udp('a', 'c', 53), false],
    ['a->c:80 (except)', () => tcp('a', 'c', 80), false],
    ['a->b:8080 (port)', () => tcp('a', 'b', 8080), false],
    ['c->a:80 (ingress of a not isolated)', () => tcp('c', 'a', 80), true],
  ]);
});

test('a policy added under traffic cuts off established flows, bridged (c->b) and accelerated (a->b); removed, they connect again', { skip }, async () => {
  await applyPolicies();
  const ha = await pods.a.ask({ op: 'hold', host: IP.b, port: 80, timeoutMs: 1000 });
  const hc = await pods.c.ask({ op: 'hold', host: IP.b, port: 80, timeoutMs: 1000 });
  assert.ok(ha.ok && hc.ok, 'held connections open');
  // Both carry traffic now; a->b is in the sockhash (a and b are registered for acceleration).
  assert.ok((await pods.a.ask({ op: 'holdping', hold: ha.id, timeoutMs: 1000 })).ok);
  assert.ok((await pods.c.ask({ op: 'holdping', hold: hc.id, timeoutMs: 1000 })).ok);
  const status = JSON.parse(execFileSync(PATU_BIN, ['accel', 'status', '--json', '--pin-root', PIN, '--cgroup', CG], { encoding: 'utf8' })) as { sockets: number };
  assert.ok(status.sockets >= 2, `a->b accelerated (${status.sockets} sockets in the sockhash)`);
  await applyPolicies(policy('back', 'deny', `podSelector: {}\npolicyTypes: [Ingress]`));
  const [pa, pc] = await Promise.all([
    pods.a.ask({ op: 'holdping', hold: ha.id, timeoutMs: 1500 }),
    pods.c.ask({ op: 'holdping', hold: hc.id, timeoutMs: 1500 }),
  ]);
  assert.equal(pa.ok, false, 'the accelerated connection is cut off');
  assert.equal(pc.ok, false, 'the bridged connection is cut off');
  assert.match(agentLog, /"socketsEvicted":[1-9]/);
  await applyPolicies();
  await expectAll([['a->b:80', () => tcp('a', 'b', 80), true], ['c->b:80', () => tcp('c', 'b', 80), true]]);
});

test('a bad edit is logged and the last good state stays enforced', { skip }, async () => {
  await applyPolicies(policy('back', 'deny', `podSelector: {}\npolicyTypes: [Ingress]`));
  writeFileSync(`${POLICY}.tmp`, NAMESPACES + policy('back', 'deny', `podSelecter: {}`));
  renameSync(`${POLICY}.tmp`, POLICY);
  await waitFor(() => agentLog.includes('policy file rejected'), 5_000, () => `rejection logged:\n${agentLog.slice(-2000)}`);
  assert.match(agentLog, /podSelecter/);
  await expectAll([['a->b:80', () => tcp('a', 'b', 80), false], ['b->a:80', () => tcp('b', 'a', 80), true]]);
});

let dIp = '';
test('CNI ADD of a pod the file names without an address: enforced before the ADD is answered', { skip }, async () => {
  await applyPolicies(policy('back', 'deny', `podSelector: {}\npolicyTypes: [Ingress]`));
  const { execPlugin, describe } = await import('../helpers/cni.js');
  const podNs = scratch.netns(scratch.name('d'));
  // Through the agent's socket (the agent runs the plugin in its worker, in the node netns).
  const conf = {
    cniVersion: '1.1.0', name: 'pfcni', type: 'patu', bridge: 'pfcni', clusterCIDR: '10.89.0.0/16', masquerade: false, pinRoot: PIN,
    ipam: { ranges: [[{ subnet: '10.89.1.0/24' }]], dataDir: join(DIR, 'ipam') },
  };
  const r = await execPlugin(PATU_BIN, 'ADD', conf, {
    containerId: 'pf-d', netns: `/run/netns/${podNs}`, args: 'IgnoreUnknown=1;K8S_POD_NAMESPACE=back;K8S_POD_NAME=d',
    env: { PATU_AGENT_SOCKET: join(DIR, 'agent.sock') },
  });
  assert.equal(r.code, 0, describe(r));
  dIp = String(r.json.ips[0].address).split('/')[0]!;
  // At the answer, the endpoint is already programmed (and named, from the CNI).
  const ep = Object.values(readPolicyNames(PIN)!.endpoints).find((e) => e.pod === 'back/d');
  assert.deepEqual(ep?.ips, [dIp]);
  assert.equal(ep?.fromCni, true);
  assert.ok(ep!.ingress.length > 0, 'isolated by back/deny');
  assert.match(agentLog, /network policy: pod address from CNI/);
  // Real traffic: d serves; a cannot reach it (routed by the node between the two bridges), the node can.
  const p = spawn('sh', ['-c', `echo $$ > ${CG}/cgroup.procs && exec nsenter --net=/run/netns/${podNs} "$0" "$1" "$2"`, process.execPath, POD_JS, JSON.stringify({ ip: dIp, tcp: [80], udp: [] })], { stdio: ['pipe', 'pipe', 'inherit'] });
  scratch.defer('pod d fixture', () => void p.kill('SIGKILL'));
  const d = new Pod(p);
  await d.ready;
  await expectAll([
    ['a->d:80', () => tcp('a', dIp, 80), false],
    ['node->d:80', () => tcp('node', dIp, 80), true],
    ['d->a:80', () => d.ask({ op: 'tcp', host: IP.a, port: 80, timeoutMs: 600 }), true],
  ]);
});

// Split mode: the restarted manager's engine takes back the addresses CNI ADD gave pods the file
// names without one because the file's state asks for it (ApplyPolicyRequest.remember_cni_addresses);
// without that, c->d is allowed after the restart until d's next ADD.
test('an agent restart keeps enforcement with no gap and rewrites nothing', { skip }, async () => {
  await applyPolicies(policy('back', 'only-a', `
podSelector: {}
ingress: [{ from: [{ namespaceSelector: { matchLabels: { team: web } } }] }]`));
  const names = JSON.stringify(readPolicyNames(PIN));
  // Probe all through the restart: a->b allowed and c->b denied at every moment.
  let stop = false;
  const wrong: string[] = [];
  let rounds = 0;
  const loop = (async () => {
    while (!stop) {
      const [ab, cb, ad] = await Promise.all([tcp('a', 'b', 80, 800), tcp('c', 'b', 80, 300), dIp ? tcp('c', dIp, 80, 300) : Promise.resolve({ ok: false })]);
      if (!ab.ok) wrong.push(`a->b denied (${ab.err})`);
      if (cb.ok) wrong.push('c->b allowed');
      if (ad.ok) wrong.push('c->d allowed (d\'s address came from CNI ADD)');
      rounds++;
    }
  })();
  await sleep(300);
  await stopAgent();
  await sleep(500); // no agent at all
  await startAgent();
  await sleep(500);
  stop = true;
  await loop;
  assert.deepEqual(wrong, [], `${rounds} probe rounds`);
  assert.ok(rounds >= 3, `${rounds} probe rounds`);
  assert.doesNotMatch(agentLog, /network policy programmed/, 'the restarted agent found the maps as they should be');
  assert.equal(JSON.stringify(readPolicyNames(PIN)), names, 'same ids and names after the restart');
  assert.equal(basename(policyNamesPath(PIN)), `${basename(PIN)}.names.json`);
});
