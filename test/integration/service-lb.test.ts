// Socket-level ClusterIP load balancing against the real kernel (needs root).
// Creates only (test/helpers/kernel.ts, removed after the file even when a test
// fails): netns patu-test-svc-<pid> (backends on its loopback, 10.77.0.x), the
// cgroup patu-test-svc-<pid> under the cgroup2 root (the programs attach there,
// and every client process is moved into it before it connects), and pins under
// /sys/fs/bpf/patu-test-svc-<pid>/.
// Service addresses (10.96.77.x) have no route in the netns: a connect that is
// not translated fails with ENETUNREACH, so broken translation cannot pass.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync, type ChildProcess } from 'node:child_process';
import { Children, openScratchLb, resultOf, spawnClient as spawnSvcClient, startServer as startSvcServer, type ClientResult } from '../helpers/svc-fixtures.js';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ServiceLb } from '../../src/dataplane/service-lb.js';
import { ServiceModel, type Endpoint, type Service } from '../../src/services/model.js';
import { ServicesFileWatcher } from '../../src/services/file-source.js';
import { scratchForTests } from '../helpers/kernel.js';

const isRoot = process.getuid?.() === 0;
const skip = isRoot ? false : 'needs root (netns, cgroup, BPF programs)';
const scratch = scratchForTests('patu-test-svc');
const NS = scratch.name();
let CG = '';
const PIN = scratch.pinRoot();
const OLD = ['10.77.0.1', '10.77.0.2', '10.77.0.3', '10.77.0.4'];
const NEW = ['10.77.0.5', '10.77.0.6', '10.77.0.7', '10.77.0.8'];

let lb: ServiceLb | undefined;
const model = new ServiceModel();
const servers = new Children();
const tmp = scratch.tmpDir('patu-svc-it');

function sh(cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr}`);
}

const startServer = (addrs: { ip: string; port: number }[]): Promise<ChildProcess> => startSvcServer(servers, addrs, { netns: NS });
/** A client in the netns, placed in the test cgroup before it runs anything. */
const spawnClient = (job: object): ChildProcess => spawnSvcClient(servers, job, { netns: NS, cgroup: CG });
const runClient = (job: object): Promise<ClientResult> => resultOf(spawnClient(job));

const ep = (ip: string, over: Partial<Endpoint> = {}): Endpoint => ({ ip, ready: true, serving: true, terminating: false, ...over });
function svc(name: string, clusterIP: string, ports: Service['ports'], over: Partial<Service> = {}): Service {
  return { namespace: 'it', name, clusterIP, ports, sessionAffinity: 'None', affinityTimeoutSeconds: 10800, ...over };
}
function program(): void {
  const changed = model.takeChanges();
  lb!.applyChanges(changed, model.desired(changed));
}

before(async () => {
  if (!isRoot) return;
  CG = scratch.cgroup();
  scratch.netns(NS);
  for (const ip of [...OLD, ...NEW]) sh('ip', ['-n', NS, 'addr', 'add', `${ip}/32`, 'dev', 'lo']);
  lb = openScratchLb(scratch, { pinRoot: PIN, cgroupPath: CG });
  scratch.defer('backend servers and clients', () => servers.killAll());
  lb.attach();
  await startServer(OLD.flatMap((ip) => [8080, 8081, 8082].map((port) => ({ ip, port }))));
});

test('TCP connects to a service address spread fairly over its backends, and getpeername returns the service address', { skip }, async () => {
  model.upsertService(svc('fair', '10.96.77.1', [{ port: 80, protocol: 'TCP', targetPort: 8080 }]));
  model.setEndpoints('it/fair', OLD.map((ip) => ep(ip)));
  program();
  const n = 400;
  const r = await runClient({ mode: 'tcp', host: '10.96.77.1', port: 80, count: n });
  assert.deepEqual(r.errors, {});
  assert.equal(r.ok, n);
  assert.deepEqual(Object.keys(r.byBackend).sort(), OLD.map((ip) => `${ip}:8080`));
  // Chi-square against uniform, 3 degrees of freedom: 16.27 is the p = 0.001 critical value.
  const expected = n / OLD.length;
  const chi2 = Object.values(r.byBackend).reduce((s, c) => s + (c - expected) ** 2 / expected, 0);
  assert.ok(chi2 < 16.27, `distribution ${JSON.stringify(r.byBackend)} is not uniform (chi2 ${chi2.toFixed(1)})`);
  assert.deepEqual(r.peers, { '10.96.77.1:80': n }, 'getpeername must return the service address, not the backend');
  // Connected sockets keep their reverse translation in socket storage (freed with the socket), not the LRU map.
  assert.equal([...lb!.maps.revnat.keys()].length, 0);
});

test('sessionAffinity ClientIP keeps a client on one backend, and a new choice is made after the timeout', { skip }, async () => {
  model.upsertService(svc('sticky', '10.96.77.2', [{ port: 80, protocol: 'TCP', targetPort: 8080 }], { sessionAffinity: 'ClientIP', affinityTimeoutSeconds: 3600 }));
  model.setEndpoints('it/sticky', OLD.map((ip) => ep(ip)));
  program();
  const view = lb!.programmed().find((s) => s.name === 'it/sticky:80');
  assert.ok(view && view.sessionAffinity === 'ClientIP' && view.affinityTimeoutSeconds === 3600 && view.backends.length === 4);
  const r = await runClient({ mode: 'tcp', host: '10.96.77.2', port: 80, count: 40 });
  assert.deepEqual(r.errors, {});
  assert.equal(Object.keys(r.byBackend).length, 1, `affinity broken: ${JSON.stringify(r.byBackend)}`);
  // The same client without affinity spreads (control: 40 connects over 4 backends).
  const free = await runClient({ mode: 'tcp', host: '10.96.77.1', port: 80, count: 40 });
  assert.ok(Object.keys(free.byBackend).length > 1, 'control without affinity must spread');

  // Timeout of 1 s: connects 1.1 s apart each choose anew. 8 such connects all landing on
  // one of 4 backends by chance has probability (1/4)^7 = 0.006%.
  model.upsertService(svc('sticky', '10.96.77.2', [{ port: 80, protocol: 'TCP', targetPort: 8080 }], { sessionAffinity: 'ClientIP', affinityTimeoutSeconds: 1 }));
  program();
  const spaced = await runClient({ mode: 'tcp', host: '10.96.77.2', port: 80, count: 8, intervalMs: 1100 });
  assert.deepEqual(spaced.errors, {});
  assert.ok(Object.keys(spaced.byBackend).length > 1, `affinity outlived its 1 s timeout: ${JSON.stringify(spaced.byBackend)}`);
});

test('UDP: unconnected (DNS-style) replies come from the service address; TCP and UDP on one port are distinct services', { skip }, async () => {
  model.upsertService(svc('dns', '10.96.77.3', [
    { name: 'dns', port: 53, protocol: 'UDP', targetPort: 8081 },
    { name: 'dns-tcp', port: 53, protocol: 'TCP', targetPort: 8080 },
  ]));
  model.setEndpoints('it/dns', OLD.map((ip) => ep(ip)));
  program();
  const u = await runClient({ mode: 'udp', host: '10.96.77.3', port: 53, count: 40 });
  assert.deepEqual(u.errors, {});
  assert.equal(u.ok, 40);
  assert.deepEqual(u.peers, { '10.96.77.3:53': 40 }, 'recvmsg must show the service address as the reply source');
  for (const b of Object.keys(u.byBackend)) assert.match(b, /:8081$/, 'UDP goes to the UDP target port');
  assert.ok(Object.keys(u.byBackend).length > 1, `UDP is not balanced: ${JSON.stringify(u.byBackend)}`);
  assert.ok([...lb!.maps.revnat.keys()].length >= 40, 'unconnected UDP reverse entries live in the LRU map');

  const c = await runClient({ mode: 'udp-connected', host: '10.96.77.3', port: 53, count: 10 });
  assert.deepEqual(c.errors, {});
  assert.deepEqual(c.peers, { 'getpeername 10.96.77.3:53': 10, '10.96.77.3:53': 10 });

  const t = await runClient({ mode: 'tcp', host: '10.96.77.3', port: 53, count: 20 });
  assert.deepEqual(t.errors, {});
  for (const b of Object.keys(t.byBackend)) assert.match(b, /:8080$/, 'TCP goes to the TCP target port');
});

test('a service without ready backends refuses connections with ECONNREFUSED', { skip }, async () => {
  model.upsertService(svc('empty', '10.96.77.4', [{ port: 80, protocol: 'TCP', targetPort: 8080 }, { port: 53, protocol: 'UDP', targetPort: 8081 }]));
  model.setEndpoints('it/empty', [ep('10.77.0.1', { ready: false, serving: false, terminating: true })]);
  program();
  const r = await runClient({ mode: 'tcp', host: '10.96.77.4', port: 80, count: 5 });
  assert.deepEqual(r.errors, { ECONNREFUSED: 5 });
  const u = await runClient({ mode: 'udp', host: '10.96.77.4', port: 53, count: 3 });
  assert.deepEqual(u.errors, { ECONNREFUSED: 3 });
  // Serving-but-terminating endpoints are used when nothing is ready (no refusal during a rollout).
  model.setEndpoints('it/empty', [ep('10.77.0.2', { ready: false, serving: true, terminating: true })]);
  program();
  const r2 = await runClient({ mode: 'tcp', host: '10.96.77.4', port: 80, count: 3 });
  assert.deepEqual(r2.byBackend, { '10.77.0.2:8080': 3 });
});

test('a rolling replacement of every backend during continuous connects loses no connection, and established ones keep working', { skip }, async () => {
  const newServer = await startServer(NEW.map((ip) => ({ ip, port: 8082 })));
  model.upsertService(svc('roll', '10.96.77.5', [{ port: 80, protocol: 'TCP', targetPort: 8082 }]));
  let eps = OLD.map((ip) => ep(ip));
  model.setEndpoints('it/roll', eps);
  program();

  const hold = spawnClient({ mode: 'tcp-hold', host: '10.96.77.5', port: 80 });
  const holdResult = resultOf(hold);
  await new Promise<void>((resolve) => hold.stdout!.once('data', () => resolve()));
  const loop = spawnClient({ mode: 'tcp-loop', host: '10.96.77.5', port: 80, durationMs: 30_000 });
  const loopResult = resultOf(loop);
  await new Promise<void>((resolve) => loop.stdout!.once('data', () => resolve()));

  const pause = (): Promise<void> => new Promise((r) => setTimeout(r, 150));
  for (let i = 0; i < OLD.length; i++) {
    eps = [...eps, ep(NEW[i]!)]; // surge: the new pod becomes ready
    model.setEndpoints('it/roll', eps);
    program();
    await pause();
    eps = eps.map((e) => (e.ip === OLD[i] ? { ...e, ready: false, terminating: true } : e)); // old pod terminating
    model.setEndpoints('it/roll', eps);
    program();
    await pause();
    eps = eps.filter((e) => e.ip !== OLD[i]); // old pod gone from the endpoints
    model.setEndpoints('it/roll', eps);
    program();
    await pause();
  }
  loop.stdin!.end('stop\n');
  const lr = await loopResult;
  assert.deepEqual(lr.errors, {}, `connections lost during the rollout (${lr.ok} succeeded)`);
  assert.ok(lr.ok > 50, `too few connects to mean anything: ${lr.ok}`);
  assert.ok(NEW.some((ip) => lr.byBackend[`${ip}:8082`]), 'the loop never reached a new backend');

  // The held connection was made to an old backend that has since left the service.
  hold.stdin!.end('go\n');
  const hr = await holdResult;
  assert.deepEqual(hr.errors, {});
  assert.match(hr.held ?? '', /^10\.77\.0\.[1-4]:8082 echo ok$/);

  const after = await runClient({ mode: 'tcp', host: '10.96.77.5', port: 80, count: 30 });
  assert.deepEqual(after.errors, {});
  for (const b of Object.keys(after.byBackend)) assert.ok(NEW.includes(b.split(':')[0]!), `removed backend ${b} still selected`);
  const prog = lb!.programmed().find((s) => s.name === 'it/roll:80')!;
  assert.deepEqual(prog.backends.map((b) => b.ip).sort(), NEW);
  newServer.kill('SIGKILL');
});

test('the maps hold what was programmed, and a second open from the pins sees the same state', { skip }, () => {
  const again = ServiceLb.open({ pinRoot: PIN, cgroupPath: CG });
  try {
    assert.deepEqual(again.programmed(), lb!.programmed());
    // Its diff base was rebuilt from the maps: nothing to do for the same model.
    assert.equal(again.resync(model.desired()).ops, 0);
  } finally {
    again.close();
  }
});

test('file source: a bad file is reported and the last good state stays programmed', { skip }, async () => {
  const file = join(tmp, 'services.yaml');
  const doc = (protocol: string): string => `services:
  - name: filesvc
    namespace: it
    clusterIP: 10.96.77.6
    ports: [{ port: 80, protocol: ${protocol}, targetPort: 8080 }]
    endpoints: [{ ip: 10.77.0.1 }, { ip: 10.77.0.2 }]
`;
  writeFileSync(file, doc('TCP'));
  const fileModel = new ServiceModel();
  const fileLb = ServiceLb.open({ pinRoot: join(PIN, 'file'), cgroupPath: CG });
  const errors: Error[] = [];
  const w = new ServicesFileWatcher(file, {
    onChange: (items) => {
      fileModel.replaceAll(items);
      const changed = fileModel.takeChanges();
      fileLb.applyChanges(changed, fileModel.desired(changed));
    },
    onError: (e) => errors.push(e),
    settleMs: 30,
  });
  try {
    fileLb.attach();
    await w.start();
    const good = fileLb.programmed();
    assert.equal(good[0]?.backends.length, 2);
    writeFileSync(file, doc('SCTP'));
    for (let i = 0; i < 200 && errors.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
    assert.match(errors[0]?.message ?? '', /services\[0\]\.ports\[0\]\.protocol: must be TCP or UDP/);
    assert.deepEqual(fileLb.programmed(), good);
    const r = await runClient({ mode: 'tcp', host: '10.96.77.6', port: 80, count: 5 });
    assert.equal(r.ok, 5, 'the last good state must still serve');
  } finally {
    w.close();
    fileLb.detach();
    fileLb.close();
  }
});

test('after detach the service address is no longer translated (negative control)', { skip }, async () => {
  lb!.detach();
  const r = await runClient({ mode: 'tcp', host: '10.96.77.1', port: 80, count: 2 });
  assert.equal(r.ok, 0);
  assert.deepEqual(r.errors, { ENETUNREACH: 2 });
});

test('CLI: services apply programs a file once (a bad one changes nothing) and services lists the maps', { skip }, async () => {
  const { servicesApply, servicesList } = await import('../../src/cli/services.js');
  const pinRoot = join(PIN, 'cli');
  const file = join(tmp, 'cli.json');
  writeFileSync(file, JSON.stringify({ services: [{ name: 'api', namespace: 'it', clusterIP: '10.96.77.7', ports: [{ port: 80, targetPort: 8080 }], endpoints: [{ ip: '10.77.0.3' }] }] }));
  let out = '';
  let err = '';
  const io = { out: (s: string) => (out += s), err: (s: string) => (err += s) };
  try {
    assert.equal(await servicesApply(file, { pinRoot, cgroupPath: CG, ...io }), 0, err);
    assert.match(out, /programmed 1 services \(1 ports, 1 backends\)/);
    const r = await runClient({ mode: 'tcp', host: '10.96.77.7', port: 80, count: 3 });
    assert.deepEqual(r.byBackend, { '10.77.0.3:8080': 3 });

    writeFileSync(file, '{"services": [{"name": "api", "clusterIP": "10.96.77.7", "ports": [{"port": 80, "protocol": "SCTP"}]}]}');
    assert.equal(await servicesApply(file, { pinRoot, cgroupPath: CG, ...io }), 1);
    assert.match(err, /services\[0\]\.ports\[0\]\.protocol: must be TCP or UDP/);

    // A file that says nothing, or an empty directory, is an error: it used to program
    // zero services (unprogramming api) with exit 0.
    const yamlFile = join(tmp, 'cli-blank.yaml');
    const emptyDir = join(tmp, 'cli-empty-dir');
    mkdirSync(emptyDir, { recursive: true });
    for (const text of ['# only a comment\n', '---\n', '...\n', 'null\n']) {
      writeFileSync(yamlFile, text);
      err = '';
      assert.equal(await servicesApply(yamlFile, { pinRoot, cgroupPath: CG, ...io }), 1, JSON.stringify(text));
      assert.match(err, /services: \[\]/, JSON.stringify(text));
    }
    err = '';
    assert.equal(await servicesApply(emptyDir, { pinRoot, cgroupPath: CG, ...io }), 1);
    assert.match(err, /no services file/);
    const still = await runClient({ mode: 'tcp', host: '10.96.77.7', port: 80, count: 1 });
    assert.deepEqual(still.byBackend, { '10.77.0.3:8080': 1 }, 'the bad inputs changed nothing');

    out = '';
    assert.equal(await servicesList({ pinRoot, json: true, ...io }), 0);
    const listed = JSON.parse(out) as { services: { name: string; backends: { id: number; ip: string; port: number }[] }[] };
    assert.deepEqual(listed.services.map((s) => [s.name, s.backends]), [['it/api:80', [{ id: listed.services[0]!.backends[0]!.id, ip: '10.77.0.3', port: 8080 }]]]);
    out = '';
    await servicesList({ pinRoot, ...io });
    assert.match(out, /^SERVICE\s+ADDRESS\s+AFFINITY\s+BACKENDS\nit\/api:80\s+10\.96\.77\.7:80\/TCP\s+None\s+10\.77\.0\.3:8080\n$/);
  } finally {
    const l = ServiceLb.open({ pinRoot, cgroupPath: CG });
    l.detach();
    l.close();
  }
});

test('servicesWatch: the first load is a full resync, later edits apply, programs attach once', { skip }, async () => {
  const { servicesWatch } = await import('../../src/agent/services-watch.js');
  const pinRoot = join(PIN, 'watch');
  const file = join(tmp, 'watch.yaml');
  // Something an earlier run programmed that the file does not have: the first load removes it.
  // Maps only (no cgroup): the programs are attached by servicesWatch's first apply.
  const pre = ServiceLb.open({ pinRoot });
  const stale = new ServiceModel();
  stale.upsertService(svc('stale', '10.96.77.9', [{ port: 80, protocol: 'TCP', targetPort: 8080 }]));
  assert.equal(pre.resync(stale.desired()).attachedNow, false);
  assert.equal(pre.linksPinned(), false);
  pre.close();
  writeFileSync(file, 'services:\n  - { name: w, namespace: it, clusterIP: 10.96.77.8, ports: [{ port: 80, targetPort: 8080 }], endpoints: [{ ip: 10.77.0.4 }] }\n');
  const h = await servicesWatch(file, { pinRoot, cgroupPath: CG });
  try {
    assert.deepEqual(h.lb!.programmed().map((s) => s.name), ['it/w:80']);
    assert.ok(h.lb!.linksPinned());
    const r = await runClient({ mode: 'tcp', host: '10.96.77.8', port: 80, count: 3 });
    assert.deepEqual(r.byBackend, { '10.77.0.4:8080': 3 });
    writeFileSync(file, 'services:\n  - { name: w, namespace: it, clusterIP: 10.96.77.8, ports: [{ port: 80, targetPort: 8080 }], endpoints: [{ ip: 10.77.0.3 }] }\n');
    for (let i = 0; i < 200 && h.lb!.programmed()[0]?.backends[0]?.ip !== '10.77.0.3'; i++) await new Promise((res) => setTimeout(res, 10));
    assert.equal(h.lb!.programmed()[0]?.backends[0]?.ip, '10.77.0.3');
  } finally {
    h.lb!.detach();
    h.close();
  }
});
