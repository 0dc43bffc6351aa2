// patu manager (split mode, issue 13) against the real kernel (needs root).
//   1. LocalDataplane in this process (openManagerDataplane, no gRPC): services full / delta /
//      repeat / out-of-order generations with real connects through the maps, a capacity
//      refusal that writes nothing, every threat-model limit refused with its field named and
//      nothing written, policy, node settings, acceleration.
//   2. The real `bin/patu manager` process over mutual TLS on a unix socket (certificates from
//      src/rpc/certs.ts): the same rules over the wire, CNI ADD/DEL over the API for a netns
//      this test creates under /run/netns (the policy engine learns the pod's address before
//      the answer), the launcher (bin/patu) answered by the manager's CNI socket, /metrics, an
//      agent (client) that goes away, SIGTERM leaving the pinned state in place.
// Creates only (test/helpers/kernel.ts, removed after the file even when a test fails):
//   netns patu-test-mgr-<pid>-node (the "node": its addresses, the manager process, bridge mgrbr)
//   netns patu-test-mgr-<pid>-p1/-p2 (pods added through the manager)
//   cgroups patu-test-mgr-<pid>-a / -b, pins /sys/fs/bpf/patu-test-mgr-<pid>-a / -b, their
//   policy names files under /run/patu/policy/, a temp dir (sockets, IPAM, conflists, certs).
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { basename, join } from 'node:path';
import { scratchForTests } from '../helpers/kernel.js';
import { Children, runClient, startServer } from '../helpers/svc-fixtures.js';
import { PATU_BIN, isRoot } from '../helpers/cni.js';
import { openManagerDataplane, type ManagerDataplane } from '../../src/manager/manager.js';
import { DataplaneError, type Dataplane, type ServiceChange } from '../../src/dataplane/api.js';
import { portKey, type DesiredServicePort } from '../../src/services/model.js';
import { readProgrammed } from '../../src/dataplane/service-lb.js';
import { policyNamesPath, readPolicyNames } from '../../src/policy/names.js';
import { createLog } from '../../src/agent/log.js';
import { withNetns } from '../../src/kernel/netns.js';
import { Rtnl } from '../../src/kernel/netlink/rtnl.js';
import { tcxQuery } from '../../src/kernel/bpf/tcx.js';
import type { PolicyState } from '../../src/policy/types.js';

const skip = !isRoot() ? 'needs root (netns, cgroups, BPF programs)' : !existsSync(PATU_BIN) ? `${PATU_BIN} not built (scripts/build.sh)` : false;
const scratch = scratchForTests('patu-test-mgr');
const NODE = scratch.name('node');
const PIN_A = scratch.pinRoot('a');
const PIN_B = scratch.pinRoot('b');
const SERVICE_CIDR = '10.96.0.0/12';
const CLUSTER_CIDR = '10.202.0.0/16';
const BACKENDS = ['10.202.0.1', '10.202.0.2'];
const VIP = '10.96.78.1';
const BR = 'mgrbr';
let CG_A = '';
let CG_B = '';
let DIR = '';
const children = new Children();
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const quiet = createLog({ level: 'fatal' });

const port = (ref: string, vip: string, p: number, backends: string[], o: Partial<DesiredServicePort> = {}): DesiredServicePort => ({
  key: portKey(vip, p, 'TCP'), ref, vip, port: p, protocol: 'TCP', name: `${ref}:${p}`, affinity: false, affinityTimeoutSeconds: 0, backends, ...o,
});
const web = port('it/web', VIP, 80, BACKENDS.map((b) => `${b}:8080`));
const np = port('it/np', '0.0.0.0', 30080, [`${BACKENDS[0]}:8080`]);
const extra = port('it/extra', '10.96.78.2', 80, [`${BACKENDS[1]}:8080`]);
const change = (session: string, generation: number, full: boolean, ports: DesiredServicePort[], refs: string[] = []): ServiceChange =>
  ({ session, generation: BigInt(generation), full, refs, ports });

/** The programmed entries as `key -> backends`, for "nothing was written" checks. */
const programmed = (pin: string): string => JSON.stringify((readProgrammed(pin) ?? []).map((v) => `${v.vip}:${v.port}/${v.protocol}${v.scope ? `/${v.scope}` : ''} ${v.backends.map((b) => `${b.ip}:${b.port}`).join(',')}`).sort());

async function refused(p: Promise<unknown>, code: string, msg: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof DataplaneError, `not a DataplaneError: ${String(e)}`);
    assert.equal(e.code, code, e.message);
    assert.match(e.message, msg);
    return true;
  });
}

before(() => {
  if (skip) return;
  DIR = scratch.tmpDir('patu-mgr-it');
  CG_A = scratch.cgroup('a');
  CG_B = scratch.cgroup('b');
  scratch.netns(NODE);
  for (const ip of BACKENDS) execFileSync('ip', ['-n', NODE, 'addr', 'add', `${ip}/32`, 'dev', 'lo']);
  execFileSync('ip', ['-n', NODE, 'addr', 'add', '192.168.77.1/24', 'dev', 'lo']);
  scratch.defer('backend servers and clients', () => children.killAll());
  for (const pin of [PIN_A, PIN_B]) scratch.defer(`policy names of ${basename(pin)}`, () => rmSync(policyNamesPath(pin), { force: true }));
});

// ------------------------------------------------------------------ 1. LocalDataplane in-process

let md: ManagerDataplane | undefined;
let dp: Dataplane;

test('in-process: the manager\'s data plane opens on scratch state', { skip }, async () => {
  md = await openManagerDataplane({
    log: quiet,
    pinRoot: PIN_A,
    cgroup: CG_A,
    cniSocket: join(DIR, 'a', 'cni.sock'),
    serviceCidrs: [SERVICE_CIDR],
    clusterCidrs: [CLUSTER_CIDR],
    // A bridge that does not exist here: the policy programs attach to no host veth.
    bridge: 'mgrnobr',
    dataDir: join(DIR, 'a', 'ipam'),
    cniConfDir: join(DIR, 'a', 'conf'),
    nodeNetns: `/run/netns/${NODE}`,
    version: 'test',
  });
  scratch.defer('in-process manager', async () => {
    md?.parts.lb?.detach();
    await md?.close();
  });
  dp = md.dataplane;
  const st = await dp.status();
  assert.equal(st.backend, 'ebpf');
  assert.ok(st.nodeAddresses.includes('192.168.77.1'), `node addresses from the node netns: ${st.nodeAddresses.join(', ')}`);
  await startServer(children, BACKENDS.map((ip) => ({ ip, port: 8080 })), { netns: NODE });
});

test('in-process: services full, delta, repeat, out of order; real connects through the maps', { skip }, async () => {
  const a = await dp.applyServices(change('s1', 1, true, [web, np]));
  assert.equal(a.generation, 1n);
  assert.ok(a.mapOps > 0);
  assert.equal(a.repeatedGeneration, false);
  assert.deepEqual(a.conflicts, []);
  const r = await runClient(children, { mode: 'tcp', host: VIP, port: 80, count: 40 }, { netns: NODE, cgroup: CG_A });
  assert.deepEqual(r.errors, {});
  assert.deepEqual(Object.keys(r.byBackend).sort(), BACKENDS.map((b) => `${b}:8080`));
  // The NodePort answers on a node address.
  const n = await runClient(children, { mode: 'tcp', host: '192.168.77.1', port: 30080, count: 5 }, { netns: NODE, cgroup: CG_A });
  assert.deepEqual(n.byBackend, { [`${BACKENDS[0]}:8080`]: 5 });

  // A delta continuing generation 1: it/np goes, it/extra comes.
  const d2 = await dp.applyServices(change('s1', 2, false, [extra], ['it/np', 'it/extra']));
  assert.equal(d2.generation, 2n);
  assert.ok(d2.mapOps > 0);
  const after2 = programmed(PIN_A);
  assert.doesNotMatch(after2, /30080/);
  assert.match(after2, /10\.96\.78\.2:80\/TCP/);

  // A repeat of generation 2 (even with other content) answers the last result and writes nothing.
  const rep = await dp.applyServices(change('s1', 2, false, [], ['it/web']));
  assert.deepEqual({ ...rep, repeatedGeneration: false }, d2);
  assert.equal(rep.repeatedGeneration, true);
  assert.equal(programmed(PIN_A), after2, 'a repeated generation wrote nothing');

  // Out of order, another session: resync, nothing written; the session goes on.
  await refused(dp.applyServices(change('s1', 4, false, [], ['it/web'])), 'resync', /generation 4 does not continue generation 2/);
  await refused(dp.applyServices(change('s2', 3, false, [], ['it/web'])), 'resync', /session s2 but the last applied session is s1/);
  assert.equal(programmed(PIN_A), after2);
  const d3 = await dp.applyServices(change('s1', 3, false, [np], ['it/np']));
  assert.equal(d3.generation, 3n);
  assert.match(programmed(PIN_A), /0\.0\.0\.0:30080\/TCP/);

  // A full resync from another session is always accepted, and takes the session over.
  const f = await dp.applyServices(change('s2', 1, true, [web]));
  assert.equal(f.generation, 1n);
  assert.doesNotMatch(programmed(PIN_A), /30080|10\.96\.78\.2/);
  await refused(dp.applyServices(change('s1', 4, false, [np], ['it/np'])), 'resync', /last applied session is s2/);
  const st = await dp.status();
  assert.equal(st.servicesSession, 's2');
  assert.equal(st.servicesGeneration, 1n);
  const again = await runClient(children, { mode: 'tcp', host: VIP, port: 80, count: 10 }, { netns: NODE, cgroup: CG_A });
  assert.equal(again.ok, 10);
});

test('in-process: two services wanting one entry: the holder keeps it, the other is left out whole and programmed once it is free', { skip }, async () => {
  const rival = port('it/rival', VIP, 80, [`${BACKENDS[1]}:8080`]);
  const rivalOther = port('it/rival', '10.96.78.3', 81, [`${BACKENDS[1]}:8080`]);
  const d = await dp.applyServices(change('s2', 2, false, [rival, rivalOther], ['it/rival']));
  assert.deepEqual(d.conflicts, [{ key: web.key, wanted: 'it/rival', heldBy: 'it/web' }]);
  assert.doesNotMatch(programmed(PIN_A), /10\.96\.78\.3/, 'never half-programmed');
  // it/web lets go: it/rival takes the entry in the same apply.
  await dp.applyServices(change('s2', 3, false, [], ['it/web']));
  const now = programmed(PIN_A);
  assert.match(now, new RegExp(`${VIP.replace(/\./g, '\\.')}:80/TCP ${BACKENDS[1]!.replace(/\./g, '\\.')}:8080`));
  assert.match(now, /10\.96\.78\.3:81\/TCP/);
  await dp.applyServices(change('s2', 4, true, [web]));
});

test('in-process: a change the maps cannot hold is refused as capacity and writes nothing; the session goes on', { skip }, async () => {
  const many = (vip: string): DesiredServicePort[] => Array.from({ length: 32_769 }, (_, i) => port(`it/cap-${vip}`, vip, i + 1, [`${BACKENDS[0]}:${(i % 60000) + 1}`]));
  const f = await dp.applyServices(change('s3', 1, true, many('10.96.79.1')));
  assert.equal(f.services, 32_769);
  const before = programmed(PIN_A);
  // Replacing them all needs old + new at once: 65,538 entries in a map of 65,536.
  await refused(dp.applyServices(change('s3', 2, true, many('10.96.79.2'))), 'capacity', /65,538 entries in patu_svc/);
  assert.equal(programmed(PIN_A), before, 'the refused change wrote nothing');
  const st = await dp.status();
  assert.equal(st.servicesGeneration, 1n);
  // The session still continues from generation 1.
  const d = await dp.applyServices(change('s3', 2, false, [web], ['it/web']));
  assert.equal(d.generation, 2n);
  await dp.applyServices(change('s3', 3, true, [web]));
});

test('in-process: a service whose addresses break the limits is left out whole and reported; the rest is applied', { skip }, async () => {
  const ok = port('it/ok', '10.96.78.5', 80, [`${BACKENDS[0]}:8080`]);
  const d = await dp.applyServices(change('s3', 4, false, [
    port('it/x', '8.8.8.8', 53, [`${BACKENDS[0]}:53`]),
    port('it/y', '10.96.78.6', 80, [`${BACKENDS[0]}:8080`, '1.2.3.4:80']),
    port('it/z', '0.0.0.0', 22, [`${BACKENDS[0]}:22`]),
    ok,
  ], ['it/x', 'it/y', 'it/z', 'it/ok']));
  assert.deepEqual(d.refused?.map((r) => [r.ref, r.key]), [['it/x', '8.8.8.8:53/TCP'], ['it/y', '10.96.78.6:80/TCP'], ['it/z', '0.0.0.0:22/TCP']]);
  assert.match(d.refused![0]!.reason, /^ports\[0\]\.vip 8\.8\.8\.8 is outside the service CIDRs 10\.96\.0\.0\/12/);
  assert.match(d.refused![1]!.reason, /^ports\[1\]\.backends\[1\] 1\.2\.3\.4 is outside the cluster CIDRs 10\.202\.0\.0\/16/);
  assert.match(d.refused![2]!.reason, /^ports\[2\]\.vip 0\.0\.0\.0 .*port 22: outside the NodePort range 30000-32767/);
  const now = programmed(PIN_A);
  assert.match(now, /10\.96\.78\.5:80\/TCP/, 'the rest of the change is applied');
  assert.doesNotMatch(now, /8\.8\.8\.8|10\.96\.78\.6|0\.0\.0\.0:22\//, 'nothing of a refused service');
  const r = await runClient(children, { mode: 'tcp', host: '10.96.78.5', port: 80, count: 5 }, { netns: NODE, cgroup: CG_A });
  assert.equal(r.ok, 5);
  // A programmed service updated to an address outside the limits goes whole (never half, never stale).
  const d2 = await dp.applyServices(change('s3', 5, false, [{ ...ok, key: portKey('10.96.78.5', 80, 'TCP'), backends: ['9.9.9.9:80'] }], ['it/ok']));
  assert.equal(d2.refused?.[0]?.ref, 'it/ok');
  assert.doesNotMatch(programmed(PIN_A), /10\.96\.78\.5/);
});

test('in-process: every malformed or oversized request refused whole with its field named, nothing written', { skip }, async () => {
  const before = programmed(PIN_A);
  assert.match(before, /10\.96\.78\.1:80\/TCP/, 'something is programmed to compare against');
  const st0 = await dp.status();
  const cases: [string, Promise<unknown>, RegExp][] = [
    ['a backend that is not IPv4:port', dp.applyServices(change('s3', 6, true, [web, port('it/x', '10.96.78.9', 80, ['10.202.0.1:80', '10.202.0.2'])])), /^ports\[1\]\.backends\[1\] "10\.202\.0\.2" must be IPv4:port/],
    ['a key that does not match', dp.applyServices(change('s3', 6, true, [{ ...web, key: '10.96.99.99:80/TCP' }])), /^ports\[0\]\.key "10\.96\.99\.99:80\/TCP" does not match its fields/],
    ['too many ports', dp.applyServices(change('s3', 6, true, Array.from({ length: 65_537 }, (_, i) => port('it/many', i < 65_535 ? VIP : '10.96.78.4', (i % 65_535) + 1, [])))), /^ports: 65537 entries, at most 65536/],
    ['a hostPort ref', dp.applyServices(change('s3', 6, true, [port('patu:hostport/tcp-any-30081', '0.0.0.0', 30081, ['10.202.0.1:80'])])), /^ports\[0\]\.ref .*hostPort entries are the manager's own/],
    ['netns outside the dirs', dp.cni({ command: 'ADD', containerId: 'x1', netns: '/proc/1/ns/net', ifname: 'eth0', args: '', path: '', config: Buffer.from(JSON.stringify({ cniVersion: '1.0.0', name: 'n', type: 'patu', bridge: 'mgrnobr', pinRoot: PIN_A, ipam: { dataDir: join(DIR, 'a', 'ipam') } })) }), /^netns "\/proc\/1\/ns\/net" is not directly under the netns directories/],
    ['netns with ..', dp.cni({ command: 'ADD', containerId: 'x1', netns: '/run/netns/../../proc/1/ns/net', ifname: 'eth0', args: '', path: '', config: Buffer.from('{}') }), /^netns .* without '\.\.'/],
    ['plugin pointed at other state', dp.cni({ command: 'DEL', containerId: 'x1', netns: '', ifname: 'eth0', args: '', path: '', config: Buffer.from(JSON.stringify({ cniVersion: '1.0.0', name: 'n', type: 'patu', bridge: 'mgrnobr', pinRoot: PIN_A, ipam: { dataDir: '/etc' } })) }), /^config\.ipam\.dataDir "\/etc" is not the manager's/],
    ['pod flags outside', dp.setPodFlags([{ ip: '10.1.2.3', accelOptOut: true }]), /^pods\[0\]\.ip 10\.1\.2\.3 is outside the cluster CIDRs/],
    ['SNAT address', dp.setNodeSettings({ snatAddress: '192.168.77.1' }), /^snatAddress .*cannot SNAT/],
    ['service CIDR wider', dp.setNodeSettings({ serviceCidr: '10.0.0.0/8' }), /^serviceCidr 10\.0\.0\.0\/8 is not inside the service CIDRs/],
    ['policy pod outside', dp.applyPolicy({ session: 'p', generation: 1n, state: { namespaces: [], pods: [{ namespace: 'it', name: 'x', labels: {}, ips: ['8.8.4.4'], ports: [], local: true }], policies: [], nodeAddresses: [] } }), /^state\.pods\[0\]\.ips\[0\] 8\.8\.4\.4 is outside the cluster CIDRs/],
  ];
  for (const [what, p, msg] of cases) {
    await refused(p, 'invalid', msg).catch((e: Error) => {
      throw new Error(`${what}: ${e.message}`, { cause: e });
    });
  }
  assert.equal(programmed(PIN_A), before, 'no refused request wrote anything');
  const st = await dp.status();
  assert.equal(st.servicesSession, st0.servicesSession);
  assert.equal(st.servicesGeneration, st0.servicesGeneration);
  assert.equal(st.policySession, '');
  assert.deepEqual(st.node, {});
});

const policyState = (podIps: string[]): PolicyState => ({
  namespaces: [{ name: 'it', labels: { 'kubernetes.io/metadata.name': 'it' } }],
  pods: [{ namespace: 'it', name: 'p1', labels: { app: 'p1' }, ips: podIps, ports: [], local: true }],
  policies: [{ metadata: { namespace: 'it', name: 'deny' }, spec: { podSelector: {}, policyTypes: ['Ingress'] } }],
  nodeAddresses: [],
});

test('in-process: policy, node settings, acceleration and pod flags', { skip }, async () => {
  const p = await dp.applyPolicy({ session: 'p1', generation: 1n, state: policyState(['10.202.0.9']) });
  assert.ok(p.mapChanges > 0);
  assert.equal(p.fallback, false);
  const ep = Object.values(readPolicyNames(PIN_A)!.endpoints).find((e) => e.pod === 'it/p1');
  assert.deepEqual(ep?.ips, ['10.202.0.9']);
  const rep = await dp.applyPolicy({ session: 'p1', generation: 1n, state: policyState([]) });
  assert.equal(rep.repeatedGeneration, true);
  assert.deepEqual(Object.values(readPolicyNames(PIN_A)!.endpoints).find((e) => e.pod === 'it/p1')?.ips, ['10.202.0.9'], 'a repeat wrote nothing');
  const st = await dp.status();
  assert.equal(st.policySession, 'p1');
  assert.equal(st.policyEndpoints, 1);

  const n1 = await dp.setNodeSettings({ podCidr: '10.202.5.0/24' });
  assert.equal(n1.conflistWritten, true);
  const conf = JSON.parse(readFileSync(join(DIR, 'a', 'conf', '10-patu.conflist'), 'utf8'));
  assert.equal(conf.plugins[0].podCIDR, '10.202.5.0/24');
  assert.equal(conf.plugins[0].clusterCIDR, CLUSTER_CIDR);
  assert.equal(conf.plugins[0].bridge, 'mgrnobr');
  assert.equal((await dp.setNodeSettings({ podCidr: '10.202.5.0/24' })).conflistWritten, false);
  await dp.setNodeSettings({ serviceCidrOff: true });
  assert.equal(md!.parts.lb!.config().serviceCidr, undefined, 'service CIDR check off');
  await dp.setNodeSettings({ serviceCidrOff: false });
  assert.equal(md!.parts.lb!.config().serviceCidr, SERVICE_CIDR);
  assert.deepEqual((await dp.status()).node, { podCidr: '10.202.5.0/24', serviceCidrOff: false });

  const on = await dp.setAcceleration(true);
  assert.equal(on.enabled, true);
  assert.deepEqual(await dp.setPodFlags([{ ip: '10.202.0.77', accelOptOut: true }]), { updated: 0, unknown: 1 });
  assert.equal((await dp.status()).acceleration, true);
  const off = await dp.setAcceleration(false);
  assert.equal(off.enabled, false);
  assert.deepEqual(await dp.health(), { ok: true, problems: [] });
});

test('in-process: close leaves the programmed state pinned', { skip }, async () => {
  const before = programmed(PIN_A);
  await md!.close();
  await refused(dp.status().then(() => dp.applyServices(change('s3', 9, true, [web]))), 'unavailable', /stopping/);
  assert.equal(programmed(PIN_A), before);
  md!.parts.lb!.detach();
  md = undefined;
});

// ------------------------------------------------------------------ 2. patu manager over mTLS

let manager: ChildProcess | undefined;
let managerLog = '';
let client: Dataplane | undefined;
const TLS = (): string => join(DIR, 'tls');
const MSOCK = (): string => join(DIR, 'b', 'manager.sock');
const CNISOCK = (): string => join(DIR, 'b', 'cni.sock');

async function waitFor(cond: () => boolean, ms: number, what: () => string): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms: ${what()}`);
    await sleep(50);
  }
}

async function connect(): Promise<Dataplane> {
  const { connectDataplane } = await import('../../src/rpc/client.js');
  const { clientTlsOptions, loadTlsDir } = await import('../../src/rpc/tls.js');
  return connectDataplane({ address: `unix://${MSOCK()}`, tls: clientTlsOptions(loadTlsDir(TLS(), 'client'), 'patu-manager'), log: quiet, defaultTimeoutMs: 20_000 });
}

async function startManager(): Promise<ChildProcess> {
  managerLog = '';
  // nsenter, not `ip netns exec` (which mounts a fresh /sys, hiding bpffs and cgroup2).
  manager = spawn('nsenter', [`--net=/run/netns/${NODE}`, PATU_BIN, 'manager',
    '--listen', `unix://${MSOCK()}`, '--tls-dir', TLS(), '--pin-root', PIN_B, '--cgroup', CG_B, '--bridge', BR,
    '--data-dir', join(DIR, 'b', 'ipam'), '--cni-conf-dir', join(DIR, 'b', 'conf'), '--cni-socket', CNISOCK(),
    '--service-cidr', SERVICE_CIDR, '--cluster-cidr', CLUSTER_CIDR, '--metrics-addr', '127.0.0.1:19465', '--log-level', 'debug'],
  { stdio: ['ignore', 'pipe', 'pipe'] });
  const m = manager;
  m.stdout!.setEncoding('utf8').on('data', (d: string) => (managerLog += d));
  m.stderr!.setEncoding('utf8').on('data', (d: string) => (managerLog += d));
  scratch.defer('manager process', () => void m.kill('SIGKILL'));
  await waitFor(() => managerLog.includes('serving the data-plane API') || m.exitCode !== null, 30_000, () => `manager start:\n${managerLog}`);
  assert.equal(m.exitCode, null, managerLog);
  return m;
}

test('patu manager: starts with mutual TLS on a unix socket and answers Status', { skip }, async () => {
  const { generateCerts, writeCertDir } = await import('../../src/rpc/certs.js');
  writeCertDir(TLS(), await generateCerts());
  await startManager();
  client = await connect();
  const st = await client.status();
  assert.equal(st.backend, 'ebpf');
  assert.equal(st.servicesSession, '');
  assert.ok(st.nodeAddresses.includes('192.168.77.1'), 'the manager runs in the node netns');
});

test('patu manager over the wire: generations, resync and limits keep their codes and messages', { skip }, async () => {
  const c = client!;
  const a = await c.applyServices(change('w1', 1, true, [web, np]));
  assert.equal(a.generation, 1n);
  const r = await runClient(children, { mode: 'tcp', host: VIP, port: 80, count: 20 }, { netns: NODE, cgroup: CG_B });
  assert.equal(r.ok, 20, JSON.stringify(r));
  const d = await c.applyServices(change('w1', 2, false, [], ['it/np']));
  const rep = await c.applyServices(change('w1', 2, false, [], ['it/np']));
  assert.equal(rep.repeatedGeneration, true);
  assert.equal(rep.mapOps, d.mapOps);
  await refused(c.applyServices(change('w1', 5, false, [], ['it/web'])), 'resync', /does not continue generation 2/);
  const before = programmed(PIN_B);
  await refused(c.applyServices(change('w1', 3, false, [port('patu:hostport/tcp-any-30090', '0.0.0.0', 30090, [])], ['patu:hostport/tcp-any-30090'])), 'invalid', /refs\[0\] .*hostPort entries are the manager's own/);
  assert.equal(programmed(PIN_B), before);
  // A service outside the limits is left out alone; the change goes on.
  const alone = await c.applyServices(change('w1', 3, false, [port('it/x', '8.8.8.8', 53, [`${BACKENDS[0]}:53`]), extra], ['it/x', 'it/extra']));
  assert.equal(alone.generation, 3n);
  // The answer names it through the real server (ApplyServicesResponse.refused), as in-process.
  assert.deepEqual(alone.refused?.map((x) => [x.ref, x.key]), [['it/x', '8.8.8.8:53/TCP']]);
  assert.match(alone.refused![0]!.reason, /^ports\[0\]\.vip 8\.8\.8\.8 is outside the service CIDRs/);
  const after = programmed(PIN_B);
  assert.match(after, /10\.96\.78\.2:80\/TCP/);
  assert.doesNotMatch(after, /8\.8\.8\.8/);
});

function launcher(command: string, conf: object, o: { containerId: string; netns?: string; args?: string }): Promise<{ code: number | null; stdout: string; stderr: string }> {
  // In the node netns, so that even a fallback (manager unreachable) would stay inside it.
  const env: Record<string, string> = {
    PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
    CNI_COMMAND: command, CNI_CONTAINERID: o.containerId, CNI_IFNAME: 'eth0', CNI_PATH: '/opt/cni/bin',
    ...(o.netns ? { CNI_NETNS: o.netns } : {}), ...(o.args ? { CNI_ARGS: o.args } : {}),
    PATU_AGENT_SOCKET: CNISOCK(),
  };
  const p = spawn('nsenter', [`--net=/run/netns/${NODE}`, PATU_BIN], { env, stdio: ['pipe', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  p.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  p.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  p.stdin!.end(JSON.stringify(conf));
  const t = setTimeout(() => p.kill('SIGKILL'), 30_000);
  return new Promise((resolve) => p.on('close', (code) => {
    clearTimeout(t);
    resolve({ code, stdout, stderr });
  }));
}

test('patu manager: CNI ADD/DEL over the API and through the launcher; a new pod is under its policies before the ADD is answered', { skip }, async () => {
  const c = client!;
  const conf = {
    cniVersion: '1.1.0', name: 'mgrnet', type: 'patu', bridge: BR, clusterCIDR: CLUSTER_CIDR, masquerade: false, pinRoot: PIN_B,
    ipam: { ranges: [[{ subnet: '10.202.7.0/24' }]], dataDir: join(DIR, 'b', 'ipam') },
  };
  // The policy isolates it/p1, which has no address yet (as a policy file may name it).
  const pol = await c.applyPolicy({ session: 'w1', generation: 1n, state: policyState([]) });
  assert.equal(pol.fallback, false);
  const p1 = scratch.netns(scratch.name('p1'));
  const add = await c.cni({ command: 'ADD', containerId: 'mgr-p1', netns: `/run/netns/${p1}`, ifname: 'eth0', args: 'IgnoreUnknown=1;K8S_POD_NAMESPACE=it;K8S_POD_NAME=p1', path: '/opt/cni/bin', config: Buffer.from(JSON.stringify(conf)) });
  assert.equal(add.exitCode, 0, add.stdout);
  const ip1 = String(JSON.parse(add.stdout).ips[0].address).split('/')[0]!;
  assert.match(ip1, /^10\.202\.7\./);
  assert.match(execFileSync('ip', ['-n', p1, '-4', 'addr', 'show', 'eth0'], { encoding: 'utf8' }), new RegExp(`inet ${ip1.replace(/\./g, '\\.')}/24`));
  const ep = Object.values(readPolicyNames(PIN_B)!.endpoints).find((e) => e.pod === 'it/p1');
  assert.deepEqual(ep?.ips, [ip1], 'the endpoint was programmed from the ADD, before its answer');
  assert.equal(ep?.fromCni, true);

  // A CNI error keeps its code over the API.
  const bad = await c.cni({ command: 'ADD', containerId: 'mgr-bad', netns: `/run/netns/${p1}`, ifname: 'eth0', args: '', path: '', config: Buffer.from(JSON.stringify({ ...conf, mtu: 5 })) });
  assert.equal(bad.exitCode, 7, bad.stdout);

  // The runtime's way: bin/patu forwards to the manager's CNI socket.
  const served = (managerLog.match(/"msg":"cni request"/g) ?? []).length;
  const p2 = scratch.netns(scratch.name('p2'));
  const l = await launcher('ADD', conf, { containerId: 'mgr-p2', netns: `/run/netns/${p2}` });
  assert.equal(l.code, 0, `${l.stdout} ${l.stderr}`);
  assert.match(JSON.parse(l.stdout).ips[0].address, /^10\.202\.7\./);
  await waitFor(() => (managerLog.match(/"msg":"cni request"/g) ?? []).length > served, 5_000, () => 'the manager logged the launcher\'s request');
  assert.match(managerLog, /"command":"ADD","containerId":"mgr-p2"/);

  const del1 = await c.cni({ command: 'DEL', containerId: 'mgr-p1', netns: `/run/netns/${p1}`, ifname: 'eth0', args: 'IgnoreUnknown=1;K8S_POD_NAMESPACE=it;K8S_POD_NAME=p1', path: '', config: Buffer.from(JSON.stringify(conf)) });
  assert.equal(del1.exitCode, 0, del1.stdout);
  assert.doesNotMatch(execFileSync('ip', ['-n', p1, 'link'], { encoding: 'utf8' }), /eth0/);
  const del2 = await launcher('DEL', conf, { containerId: 'mgr-p2', netns: `/run/netns/${p2}` });
  assert.equal(del2.code, 0, del2.stdout);
});

test('patu manager: policy off (the agent\'s --network-policy=off) detaches and unpins the policy programs; a later state brings them back', { skip }, async () => {
  const c = client!;
  const conf = {
    cniVersion: '1.1.0', name: 'mgrnet', type: 'patu', bridge: BR, clusterCIDR: CLUSTER_CIDR, masquerade: false, pinRoot: PIN_B,
    ipam: { ranges: [[{ subnet: '10.202.7.0/24' }]], dataDir: join(DIR, 'b', 'ipam') },
  };
  await c.applyPolicy({ session: 'w1', generation: 2n, state: policyState([]) });
  const p3 = scratch.netns(scratch.name('p3'));
  const cni = (command: 'ADD' | 'DEL') => c.cni({ command, containerId: 'mgr-p3', netns: `/run/netns/${p3}`, ifname: 'eth0', args: 'IgnoreUnknown=1;K8S_POD_NAMESPACE=it;K8S_POD_NAME=p1', path: '/opt/cni/bin', config: Buffer.from(JSON.stringify(conf)) });
  scratch.defer('pod p3', async () => void (await cni('DEL').catch(() => undefined)));
  const add = await cni('ADD');
  assert.equal(add.exitCode, 0, add.stdout);
  // Every link of the node netns, both tcx directions (this bpftool predates tcx listings).
  const polProgs = (): string[] => withNetns(`/run/netns/${NODE}`, () => {
    const rtnl = Rtnl.open();
    try {
      return rtnl.listLinks().flatMap((l) => (['ingress', 'egress'] as const).flatMap((dir) => tcxQuery(l.index, dir).filter((p) => p.name.startsWith('patu_pol_')).map((p) => `${l.name} ${dir} ${p.name}`)));
    } finally {
      rtnl.close();
    }
  });
  assert.ok(polProgs().length >= 2, 'the pod\'s veth carries the policy programs');
  assert.ok(existsSync(join(PIN_B, 'policy')), 'policy pinned');

  const off = await c.applyPolicy({ session: 'w1', generation: 3n, state: policyState([]), enforcementOff: true });
  assert.equal(off.generation, 3n);
  assert.deepEqual(polProgs(), [], 'no policy program attached to any link of the node');
  assert.equal(existsSync(join(PIN_B, 'policy')), false, 'the policy pins are gone');
  assert.match(managerLog, /"detached":[1-9].*policy programs detached and unpinned/);
  const st = await c.status();
  assert.equal(st.policyGeneration, 3n);
  assert.equal(st.policyEndpoints, 0);
  const rep = await c.applyPolicy({ session: 'w1', generation: 3n, state: policyState([]), enforcementOff: true });
  assert.equal(rep.repeatedGeneration, true);

  // Turned back on: opened afresh, attached to the existing veths, enforcing again.
  const on = await c.applyPolicy({ session: 'w1', generation: 4n, state: policyState([]) });
  assert.equal(on.fallback, false);
  assert.ok(polProgs().length >= 2, 'attached again');
  assert.equal((await cni('DEL')).exitCode, 0);
});

test('patu manager: /metrics counts the API calls per method', { skip }, async () => {
  const text = execFileSync('nsenter', [`--net=/run/netns/${NODE}`, 'curl', '-sf', 'http://127.0.0.1:19465/metrics'], { encoding: 'utf8' });
  assert.match(text, /patu_dataplane_rpc_calls_total\{side="server",method="ApplyServices",code="ok"\} [1-9]/);
  assert.match(text, /patu_dataplane_rpc_calls_total\{side="server",method="ApplyServices",code="resync"\} [1-9]/);
  assert.match(text, /patu_dataplane_rpc_calls_total\{side="server",method="ApplyServices",code="invalid"\} [1-9]/);
  assert.match(text, /patu_cni_requests_total\{command="ADD",result="ok"\} [1-9]/);
  assert.match(text, /patu_service_ports_programmed [1-9]/);
  assert.match(text, /patu_service_apply_duration_seconds_count\{kind="delta"\} [1-9]/);
  assert.equal(execFileSync('nsenter', [`--net=/run/netns/${NODE}`, 'curl', '-sf', 'http://127.0.0.1:19465/readyz'], { encoding: 'utf8' }), 'ok\n');
});

test('patu manager: the agent goes away, the manager keeps the last state; SIGTERM leaves it pinned', { skip }, async () => {
  const before = programmed(PIN_B);
  assert.match(before, /10\.96\.78\.1:80\/TCP/);
  const st0 = await client!.status();
  await client!.close();
  client = undefined;
  await sleep(300);
  const again = await connect();
  try {
    const st = await again.status();
    assert.equal(st.servicesSession, 'w1');
    assert.equal(st.servicesGeneration, st0.servicesGeneration);
    assert.equal(st.policySession, 'w1');
  } finally {
    await again.close();
  }
  assert.equal(programmed(PIN_B), before);
  const m = manager!;
  const exited = new Promise<number | null>((r) => m.once('exit', (code) => r(code)));
  m.kill('SIGTERM');
  assert.equal(await exited, 0, managerLog.slice(-2000));
  assert.match(managerLog, /pinned eBPF state stays in place/);
  assert.equal(programmed(PIN_B), before, 'the maps hold the last state after the manager stopped');
  // Still translating with nobody running.
  const r = await runClient(children, { mode: 'tcp', host: VIP, port: 80, count: 10 }, { netns: NODE, cgroup: CG_B });
  assert.equal(r.ok, 10);
});

test('patu manager restarted on the same pins: the agent\'s full resync of the same state writes nothing', { skip }, async () => {
  const before = programmed(PIN_B);
  await startManager();
  const c = await connect();
  try {
    const st = await c.status();
    assert.equal(st.servicesSession, '', 'a restarted manager holds no session: the agent re-sends everything');
    const f = await c.applyServices(change('w2', 1, true, [web, extra]));
    assert.equal(f.mapOps, 0, 'the maps already held it');
    assert.equal(programmed(PIN_B), before);
  } finally {
    await c.close();
  }
  const m = manager!;
  const exited = new Promise((r) => m.once('exit', r));
  m.kill('SIGTERM');
  await exited;
});
