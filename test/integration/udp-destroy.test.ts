// Connected UDP sockets pinned to a backend that left its service are
// destroyed (bpf/sock_destroy.c through ServiceLb), against the real kernel
// (needs root, kernel 6.5+ for bpf_sock_destroy).
// Creates only (test/helpers/kernel.ts, removed after the file even when a test
// fails): netns patu-test-udpd-<pid> (backends on its loopback, 10.78.0.1 and
// 10.78.0.2, and the node address 192.168.78.1), the cgroup patu-test-udpd-<pid> (the programs attach there; the
// client runs in it), and pins under /sys/fs/bpf/patu-test-udpd-<pid>/.
// The service address 10.96.78.1 has no route in the netns: only translation reaches a backend.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { openScratchLb } from '../helpers/svc-fixtures.js';
import { ServiceLb, type ApplyStats } from '../../src/dataplane/service-lb.js';
import { ServiceModel, portKey, type DesiredServicePort, type Endpoint, type Protocol, type Service } from '../../src/services/model.js';
import { scratchForTests } from '../helpers/kernel.js';
import { PATU_BIN } from '../helpers/cni.js';
import { describeUdpDestroy } from '../../src/dataplane/udp-destroy-report.js';

const isRoot = process.getuid?.() === 0;
const skip = isRoot ? false : 'needs root (netns, cgroup, BPF programs)';
const scratch = scratchForTests('patu-test-udpd');
const NS = scratch.name();
const PIN = scratch.pinRoot();
let CG = '';
const FIX = fileURLToPath(new URL('./fixtures/', import.meta.url));
const A = '10.78.0.1';
const B = '10.78.0.2';
const VIP = '10.96.78.1';
const PORT = 5353;
/** A node address (on the netns' lo) for the NodePort case. */
const NODE_IP = '192.168.78.1';
const NODE_PORT = 30053;

let lb: ServiceLb | undefined;
const model = new ServiceModel();
const children: ChildProcess[] = [];

function sh(cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr}`);
}

/** A child in the netns (and, with inCgroup, in that cgroup, the test's by default, before it runs anything); resolves on its "ready" line. */
async function start(script: string, arg: object, inCgroup: boolean | string): Promise<{ p: ChildProcess; next: () => Promise<string> }> {
  const argv = [join(FIX, script), JSON.stringify(arg)];
  const cg = typeof inCgroup === 'string' ? inCgroup : CG;
  const p = inCgroup
    ? spawn('sh', ['-c', `echo $$ > ${cg}/cgroup.procs && exec ip netns exec ${NS} "$0" "$1" "$2"`, process.execPath, ...argv], { stdio: ['pipe', 'pipe', 'inherit'] })
    : spawn('ip', ['netns', 'exec', NS, process.execPath, ...argv], { stdio: ['pipe', 'pipe', 'inherit'] });
  children.push(p);
  const lines: string[] = [];
  const waiting: ((l: string) => void)[] = [];
  createInterface({ input: p.stdout! }).on('line', (l) => {
    const w = waiting.shift();
    if (w) w(l);
    else lines.push(l);
  });
  const next = (): Promise<string> => {
    const l = lines.shift();
    if (l !== undefined) return Promise.resolve(l);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`${script}: no output in 20 s`)), 20_000);
      waiting.push((x) => {
        clearTimeout(t);
        resolve(x);
      });
    });
  };
  assert.equal(await next(), 'ready');
  return { p, next };
}

const ep = (ip: string): Endpoint => ({ ip, ready: true, serving: true, terminating: false });
function dns(): Service {
  return {
    namespace: 'it', name: 'dns', clusterIP: VIP, sessionAffinity: 'None', affinityTimeoutSeconds: 10800,
    ports: [{ name: 'udp', port: PORT, protocol: 'UDP', targetPort: PORT }, { name: 'tcp', port: PORT, protocol: 'TCP', targetPort: PORT }],
  };
}
function program(endpoints: string[]): ApplyStats {
  model.setEndpoints('it/dns', endpoints.map(ep));
  const changed = model.takeChanges();
  return lb!.applyChanges(changed, model.desired(changed));
}

interface Probe { svc: string; direct: string; tcp: string; svcErrors: string[]; manyErrors: number }

before(async () => {
  if (!isRoot) return;
  CG = scratch.cgroup();
  scratch.netns(NS);
  for (const ip of [A, B, NODE_IP]) sh('ip', ['-n', NS, 'addr', 'add', `${ip}/32`, 'dev', 'lo']);
  lb = openScratchLb(scratch, { pinRoot: PIN, cgroupPath: CG });
  scratch.defer('children', () => children.forEach((c) => c.kill('SIGKILL')));
  lb.attach();
  model.upsertService(dns());
  await start('svc-server.js', [A, B].map((ip) => ({ ip, port: PORT })), false);
});

test('a connected UDP socket to a backend that left the service is destroyed; it reconnects to a live one; direct and TCP sockets are untouched', { skip }, async () => {
  program([A]);
  const many = 200;
  const c = await start('udp-hold-client.js', { vip: VIP, vport: PORT, direct: { ip: A, port: PORT }, many }, true);
  c.p.stdin!.write('probe\n');
  const before = JSON.parse(await c.next()) as Probe;
  assert.deepEqual(before, { svc: `ok ${A}:${PORT}`, direct: `ok ${A}:${PORT}`, tcp: `ok ${A}:${PORT}`, svcErrors: [], manyErrors: 0 });

  // A leaves (B arrives) for UDP and TCP alike; A's server keeps running, so only destruction can break the svc socket.
  const stats = program([B]);
  const ud = stats.udpDestroy;
  assert.ok(ud, 'an apply that removes a UDP backend runs the destroyer');
  assert.deepEqual(ud.errors, []);
  assert.equal(ud.backends, 1, 'only the UDP port of the service lost a backend to destroy sockets for');
  assert.equal(ud.sockets, many + 1, 'exactly the sockets translated to A: the held one and the many, not the direct one');
  assert.ok(ud.netns >= 2, `the test's netns was walked besides the agent's own: ${JSON.stringify(ud)}`);
  console.log(`# destroyed ${ud.sockets} sockets in ${ud.netns} netns in ${ud.ms.toFixed(1)} ms`);

  c.p.stdin!.write('probe\n');
  const after = JSON.parse(await c.next()) as Probe;
  assert.ok(after.svcErrors.includes('ECONNABORTED') || /^error /.test(after.svc), `the svc socket must fail after A left: ${JSON.stringify(after)}`);
  assert.doesNotMatch(after.svc, /^ok /, 'a destroyed socket does not reach A any more');
  assert.equal(after.direct, `ok ${A}:${PORT}`, 'a socket connected to A directly (no service) is not destroyed');
  assert.equal(after.tcp, `ok ${A}:${PORT}`, 'TCP connections are not touched');
  assert.equal(after.manyErrors, many, 'every other socket connected through the service got its error');

  c.p.stdin!.write('reconnect\n');
  const again = JSON.parse(await c.next()) as Probe;
  assert.equal(again.svc, `ok ${B}:${PORT}`, 'reconnected, the socket reaches the live backend');
  assert.equal(again.direct, `ok ${A}:${PORT}`);

  // Nothing left to destroy: the same removal again (B stays) finds no socket.
  const noop = program([B]);
  assert.equal(noop.udpDestroy, undefined, 'an apply that removes no UDP backend does not walk namespaces');
  c.p.stdin!.end();
});

function nodePorts(backend: string): Map<string, DesiredServicePort> {
  const e = (protocol: Protocol): DesiredServicePort => ({
    key: portKey('0.0.0.0', NODE_PORT, protocol), ref: 'it/np', vip: '0.0.0.0', port: NODE_PORT, protocol, name: `it/np:${NODE_PORT}`,
    affinity: false, affinityTimeoutSeconds: 0, backends: [`${backend}:${PORT}`],
  });
  return new Map([e('UDP'), e('TCP')].map((d) => [d.key, d]));
}

test('NodePort: a connected UDP socket to a node address whose backend left is destroyed too (the wildcard entry has vip 0, the socket the node address)', { skip }, async () => {
  lb!.setNodeAddresses(new Map([[NODE_IP, 0]]));
  lb!.applyChanges(new Set(['it/np']), nodePorts(A));
  const c = await start('udp-hold-client.js', { vip: NODE_IP, vport: NODE_PORT, direct: { ip: A, port: PORT } }, true);
  c.p.stdin!.write('probe\n');
  const before = JSON.parse(await c.next()) as Probe;
  assert.deepEqual(before, { svc: `ok ${A}:${PORT}`, direct: `ok ${A}:${PORT}`, tcp: `ok ${A}:${PORT}`, svcErrors: [], manyErrors: 0 });

  const ud = lb!.applyChanges(new Set(['it/np']), nodePorts(B)).udpDestroy;
  assert.deepEqual({ backends: ud?.backends, sockets: ud?.sockets, errors: ud?.errors }, { backends: 1, sockets: 1, errors: [] });
  c.p.stdin!.write('probe\n');
  const after = JSON.parse(await c.next()) as Probe;
  assert.doesNotMatch(after.svc, /^ok /, `the NodePort socket must fail after A left: ${JSON.stringify(after)}`);
  assert.equal(after.direct, `ok ${A}:${PORT}`);
  assert.equal(after.tcp, `ok ${A}:${PORT}`);
  c.p.stdin!.write('reconnect\n');
  assert.equal((JSON.parse(await c.next()) as Probe).svc, `ok ${B}:${PORT}`);
  c.p.stdin!.end();
  lb!.applyChanges(new Set(['it/np']), new Map());
});

test('past its time budget no further namespace is entered: the socket there stays, and the agent is told to warn', { skip }, async () => {
  const late = ServiceLb.open({ pinRoot: PIN, udpDestroy: { budgetMs: 0 } });
  const m = new ServiceModel();
  try {
    m.upsertService({ ...dns(), name: 'dns3', clusterIP: '10.96.78.3' });
    const apply = (ip: string): ApplyStats => {
      m.setEndpoints('it/dns3', [ep(ip)]);
      const ch = m.takeChanges();
      return late.applyChanges(ch, m.desired(ch));
    };
    apply(A);
    const c = await start('udp-hold-client.js', { vip: '10.96.78.3', vport: PORT, direct: { ip: A, port: PORT } }, true);
    const ud = apply(B).udpDestroy!;
    assert.equal(ud.netns, 1, 'only its own namespace');
    assert.ok(ud.skippedNetns >= 1, JSON.stringify(ud));
    assert.equal(ud.sockets, 0);
    assert.equal(describeUdpDestroy(ud)?.level, 'warn');
    c.p.stdin!.write('probe\n');
    assert.equal((JSON.parse(await c.next()) as Probe).svc, `ok ${A}:${PORT}`, 'the skipped namespace kept its socket');
    c.p.stdin!.end();
  } finally {
    m.deleteService('it/dns3');
    const ch = m.takeChanges();
    late.applyChanges(ch, m.desired(ch));
    late.close();
  }
});

test('a destroyer that cannot load (no bpf_sock_destroy before 6.5; here a missing object) is reported once and services are programmed all the same', { skip }, () => {
  const old = ServiceLb.open({ pinRoot: PIN, udpDestroy: { objectPath: join(scratch.tmpDir('patu-udpd'), 'missing.o') } });
  const m = new ServiceModel();
  try {
    m.upsertService({ ...dns(), name: 'dns4', clusterIP: '10.96.78.4' });
    const apply = (ip: string): ApplyStats => {
      m.setEndpoints('it/dns4', [ep(ip)]);
      const ch = m.takeChanges();
      return old.applyChanges(ch, m.desired(ch));
    };
    apply(A);
    const first = apply(B).udpDestroy;
    assert.match(first?.errors.join() ?? '', /UDP socket destroyer unavailable .*kernel 6\.5\+.*missing\.o/);
    assert.equal(describeUdpDestroy(first!)?.level, 'warn');
    apply(A);
    const second = apply(B).udpDestroy;
    assert.deepEqual(second?.errors, [], 'not repeated on every apply');
    assert.equal(describeUdpDestroy(second!), undefined);
    assert.deepEqual(old.programmed().find((v) => v.vip === '10.96.78.4' && v.protocol === 'UDP')?.backends.map((b) => b.ip), [B]);
  } finally {
    m.deleteService('it/dns4');
    const ch = m.takeChanges();
    old.applyChanges(ch, m.desired(ch));
    old.close();
  }
});

test('the agent (--services-file) destroys the socket when an edit removes its backend, and logs it', { skip }, async () => {
  // Its own cgroup and pins: two sets of programs on one cgroup would translate twice.
  const cg = scratch.cgroup('agent');
  const pins = scratch.pinRoot('agent');
  const dir = scratch.tmpDir('patu-udpd-agent');
  const file = join(dir, 'services.yaml');
  const vip = '10.96.78.5';
  const write = (ip: string): void => writeFileSync(file, `services:\n  - name: dns5\n    clusterIP: ${vip}\n` +
    `    ports: [{ name: udp, port: ${PORT}, protocol: UDP, targetPort: ${PORT} }, { name: tcp, port: ${PORT}, protocol: TCP, targetPort: ${PORT} }]\n` +
    `    endpoints: [{ ip: ${ip} }]\n`);
  write(A);
  let log = '';
  const agent = spawn(PATU_BIN, ['agent', '--cni-socket', join(dir, 'agent.sock'), '--services-file', file, '--cgroup', cg, '--pin-root', pins], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(agent);
  agent.stdout!.setEncoding('utf8').on('data', (d: string) => (log += d));
  agent.stderr!.setEncoding('utf8').on('data', (d: string) => (log += d));
  const waitLog = async (re: RegExp, what: string): Promise<void> => {
    for (const end = Date.now() + 15_000; !re.test(log);) {
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}; agent log:\n${log}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  try {
    await waitLog(/service programs attached|serving CNI requests/, 'agent start');
    await waitLog(/services programmed/, 'first apply');
    const c = await start('udp-hold-client.js', { vip, vport: PORT, direct: { ip: A, port: PORT } }, cg);
    c.p.stdin!.write('probe\n');
    assert.equal((JSON.parse(await c.next()) as Probe).svc, `ok ${A}:${PORT}`);
    write(B);
    await waitLog(/"sockets":1,[^\n]*"msg":"UDP sockets of departed backends destroyed"/, 'the destroy log line');
    c.p.stdin!.write('reconnect\n');
    assert.equal((JSON.parse(await c.next()) as Probe).svc, `ok ${B}:${PORT}`);
    c.p.stdin!.end();
  } finally {
    if (agent.exitCode === null && agent.signalCode === null) {
      const exited = new Promise((r) => agent.once('exit', r));
      agent.kill('SIGTERM');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 5_000))]);
    }
    // The agent leaves its programs attached (pinned links) on purpose: detach them before the pins and cgroup go.
    const lbAgent = ServiceLb.open({ pinRoot: pins, udpDestroy: false });
    try {
      lbAgent.detach();
    } finally {
      lbAgent.close();
    }
  }
});

test('the destroyer can be turned off', { skip }, async () => {
  const off = ServiceLb.open({ pinRoot: PIN, udpDestroy: false });
  try {
    const m = new ServiceModel();
    m.upsertService({ ...dns(), name: 'dns2', clusterIP: '10.96.78.2' });
    m.setEndpoints('it/dns2', [ep(A)]);
    let ch = m.takeChanges();
    off.applyChanges(ch, m.desired(ch));
    m.setEndpoints('it/dns2', [ep(B)]);
    ch = m.takeChanges();
    assert.equal(off.applyChanges(ch, m.desired(ch)).udpDestroy, undefined);
    m.deleteService('it/dns2');
    ch = m.takeChanges();
    off.applyChanges(ch, m.desired(ch));
  } finally {
    off.close();
  }
});
