// The standalone services file: parsing, validation messages that name the
// entry and field, and the watcher keeping the last good content.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, rmSync, unlinkSync, writeFileSync, renameSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseServicesText, validateServices, ServiceFileError, ServicesFileWatcher, ServicesDirWatcher, applyToModel, loadServices, type ServiceWithEndpoints, type ServicesDelta } from '../../src/services/file-source.js';
import { ServiceModel } from '../../src/services/model.js';

const dir = mkdtempSync(join(tmpdir(), 'patu-svc-file-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const good = `
services:
  - name: web
    namespace: shop
    clusterIP: 10.96.0.10
    sessionAffinity: ClientIP
    affinityTimeoutSeconds: 60
    ports:
      - { name: http, port: 80, targetPort: 8080 }
      - { name: dns, port: 53, protocol: UDP, targetPort: dns }
    endpoints:
      - { ip: 10.244.1.5, ports: { dns: 5353 } }
      - { ip: 10.244.1.6, ready: false, serving: true, terminating: true }
  - name: db
    clusterIP: 10.96.0.11
    ports: [{ port: 5432 }]
`;

function problemsOf(fn: () => unknown): string[] {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof ServiceFileError, `expected ServiceFileError, got ${e}`);
    return e.problems;
  }
  assert.fail('expected a validation error');
}

test('a good YAML file parses with defaults filled in', async () => {
  const items = await parseServicesText(good, 'x.yaml');
  assert.equal(items.length, 2);
  const web = items[0]!;
  assert.equal(web.service.sessionAffinity, 'ClientIP');
  assert.equal(web.service.affinityTimeoutSeconds, 60);
  assert.deepEqual(web.service.ports[0], { name: 'http', port: 80, protocol: 'TCP', targetPort: 8080 });
  assert.deepEqual(web.endpoints[0], { ip: '10.244.1.5', ready: true, serving: true, terminating: false, ports: { dns: 5353 } });
  assert.deepEqual(web.endpoints[1], { ip: '10.244.1.6', ready: false, serving: true, terminating: true });
  const db = items[1]!;
  assert.equal(db.service.namespace, 'default');
  assert.equal(db.service.sessionAffinity, 'None');
  assert.deepEqual(db.service.ports[0], { port: 5432, protocol: 'TCP', targetPort: 5432 });
  assert.deepEqual(db.endpoints, []);
});

test('JSON files parse too', async () => {
  const items = await parseServicesText(JSON.stringify({ services: [{ name: 'a', clusterIP: '10.96.0.1', ports: [{ port: 1 }] }] }), 'x.json');
  assert.equal(items[0]!.service.name, 'a');
  await assert.rejects(parseServicesText('{"services": [', 'x.json'), (e: unknown) => e instanceof ServiceFileError && /\(syntax\)/.test(e.message));
});

test('errors name the entry and the field', () => {
  const svc = (over: Record<string, unknown>): Record<string, unknown> => ({ name: 'a', clusterIP: '10.96.0.1', ports: [{ port: 80 }], ...over });
  const cases: [unknown, string][] = [
    [{ services: [svc({}), svc({ name: 'b', clusterIP: '10.96.0.2' }), svc({ name: 'c', clusterIP: '10.96.0.3', ports: [{ port: 80, protocol: 'SCTP' }] })] }, 'services[2].ports[0].protocol: must be TCP or UDP'],
    [{ services: [svc({ clusterIP: '10.96.0.300' })] }, 'services[0].clusterIP: must be an IPv4 address like 10.96.0.10'],
    [{ services: [svc({ ports: [{ port: 0 }] })] }, 'services[0].ports[0].port: must be an integer from 1 to 65535'],
    [{ services: [svc({ ports: [] })] }, 'services[0].ports: must be a non-empty list'],
    [{ services: [svc({ sessionAffinity: 'Sticky' })] }, 'services[0].sessionAffinity: must be None or ClientIP'],
    [{ services: [svc({ affinityTimeoutSeconds: 0 })] }, 'services[0].affinityTimeoutSeconds: must be an integer from 1 to 86400'],
    [{ services: [svc({ endpoints: [{ ip: '10.0.0.1' }, { ip: 'nope' }] })] }, 'services[0].endpoints[1].ip: must be an IPv4 address'],
    [{ services: [svc({ endpoints: [{ ip: '10.0.0.1', ready: 'yes' }] })] }, 'services[0].endpoints[0].ready: must be true or false'],
    [{ services: [svc({ ports: [{ port: 80, protocl: 'UDP' }] })] }, 'services[0].ports[0].protocl: unknown field'],
    [{ services: [svc({ Name: 'x' })] }, 'services[0].Name: unknown field'],
    [{ services: [svc({}), svc({ clusterIP: '10.96.0.2' })] }, 'services[1].name: duplicate service default/a (also services[0])'],
    [{ services: [svc({}), svc({ name: 'b' })] }, 'services[1].ports[0]: port 10.96.0.1:80/TCP is already used by services[0].ports[0]'],
    [{ services: [svc({ name: 'Bad_Name' })] }, 'services[0].name: must be a DNS label (lowercase letters, digits, -; at most 63)'],
    [{ services: [svc({ ports: [{ port: 80, targetPort: 70000 }] })] }, 'services[0].ports[0].targetPort: must be a port number (1-65535) or an endpoint port name (IANA_SVC_NAME: at most 15 lowercase letters, digits, -, with a letter)'],
  ];
  for (const [doc, want] of cases) assert.ok(problemsOf(() => validateServices(doc, 'f.yaml')).includes(want), `expected ${JSON.stringify(want)} in ${JSON.stringify(problemsOf(() => validateServices(doc, 'f.yaml')))}`);
  // TCP and UDP on one port are distinct, not a collision.
  assert.equal(validateServices({ services: [svc({ ports: [{ port: 53, protocol: 'UDP' }, { port: 53, protocol: 'TCP' }] })] }).length, 1);
  // Several problems are all reported.
  assert.equal(problemsOf(() => validateServices({ services: [svc({ clusterIP: 'x', ports: [{ port: -1, protocol: 'X', targetPort: 80 }] })] })).length, 3);
});

test('YAML syntax errors are reported as such', async () => {
  await assert.rejects(parseServicesText('services:\n  - name: [a\n', 'x.yaml'), (e: unknown) => e instanceof ServiceFileError && /\(syntax\)/.test(e.message));
});

test('the watcher applies changes, reports a bad file after it settles, and keeps the last good content', async () => {
  const file = join(dir, 'svc.yaml');
  writeFileSync(file, good);
  const applied: ServiceWithEndpoints[][] = [];
  const errors: Error[] = [];
  const w = new ServicesFileWatcher(file, { onChange: (items) => { applied.push(items); }, onError: (e) => errors.push(e), settleMs: 50 });
  try {
    await w.start();
    assert.equal(applied.length, 1);
    const waitFor = async (cond: () => boolean, what: string): Promise<void> => {
      for (let i = 0; i < 200 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
      assert.ok(cond(), `timed out waiting for ${what}`);
    };
    writeFileSync(file, good.replace('10.96.0.11', '10.96.0.12'));
    await waitFor(() => applied.at(-1)?.[1]?.service.clusterIP === '10.96.0.12', 'the edit to be applied');
    const count = applied.length;
    writeFileSync(file, good.replace('protocol: UDP', 'protocol: SCTP'));
    await waitFor(() => errors.length > 0, 'the error report');
    assert.match(errors[0]!.message, /services\[0\]\.ports\[1\]\.protocol: must be TCP or UDP/);
    assert.equal(applied.length, count, 'a bad file must not be applied');
    // Replace by rename (what editors do): still seen.
    writeFileSync(file + '.tmp', good.replace('10.96.0.11', '10.96.0.13'));
    renameSync(file + '.tmp', file);
    await waitFor(() => applied.at(-1)?.[1]?.service.clusterIP === '10.96.0.13', 'the renamed file to be applied');
  } finally {
    w.close();
  }
});

test('a directory source reloads only the changed file and reports a delta; cross-file conflicts are errors', async () => {
  const d = join(dir, 'svc.d');
  mkdirSync(d);
  const one = (name: string, ip: string, eps: string[]): string =>
    JSON.stringify({ name, clusterIP: ip, ports: [{ port: 80 }], endpoints: eps.map((e) => ({ ip: e })) });
  writeFileSync(join(d, 'a.json'), `{"services": [${one('a1', '10.96.1.1', ['10.0.0.1'])}, ${one('a2', '10.96.1.2', ['10.0.0.2'])}]}`);
  writeFileSync(join(d, 'b.yaml'), `services: [${one('b1', '10.96.2.1', ['10.0.0.3'])}]\n`);
  writeFileSync(join(d, '.hidden.yaml'), 'not: [valid');
  const model = new ServiceModel();
  const deltas: (ServicesDelta | null)[] = [];
  const errors: Error[] = [];
  const w = new ServicesDirWatcher(d, {
    onChange: (all, delta) => {
      deltas.push(delta);
      applyToModel(model, all, delta);
    },
    onError: (e) => errors.push(e),
    settleMs: 50,
  });
  const waitFor = async (cond: () => boolean, what: string): Promise<void> => {
    for (let i = 0; i < 200 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
    assert.ok(cond(), `timed out waiting for ${what}`);
  };
  try {
    await w.start();
    assert.deepEqual(model.refs().sort(), ['default/a1', 'default/a2', 'default/b1']);
    model.takeChanges();
    writeFileSync(join(d, 'a.json'), `{"services": [${one('a1', '10.96.1.1', ['10.0.0.9'])}, ${one('a2', '10.96.1.2', ['10.0.0.2'])}]}`);
    await waitFor(() => model.get('default/a1')?.endpoints[0]?.ip === '10.0.0.9', 'a.json edit');
    await w.settled();
    assert.deepEqual([...model.takeChanges()], ['default/a1'], 'only the edited service is marked changed');
    const last = deltas.at(-1)!;
    assert.deepEqual(last.upserts.map((x) => x.service.name), ['a1']);
    // b.yaml claims a1's address: an error for b.yaml, which keeps its last good content.
    writeFileSync(join(d, 'b.yaml'), `services: [${one('b1', '10.96.1.1', ['10.0.0.3'])}]\n`);
    await waitFor(() => errors.length > 0, 'the conflict error');
    assert.match(errors[0]!.message, /b\.yaml: services\[0\]: 10\.96\.1\.1:80\/TCP is already used in a\.json/);
    assert.equal(model.get('default/b1')?.service.clusterIP, '10.96.2.1');
    // Removing a file removes its services.
    unlinkSync(join(d, 'b.yaml'));
    await waitFor(() => model.get('default/b1') === undefined, 'b.yaml removal');
    // One-shot load of a directory (patu services apply DIR); dotfiles are ignored.
    assert.deepEqual((await loadServices(d)).map((x) => x.service.name), ['a1', 'a2']);
  } finally {
    w.close();
  }
});

test('an empty file is an error, not "no services" (a watcher may read between truncate and write)', async () => {
  await assert.rejects(parseServicesText('', 'x.yaml'), (e: unknown) => e instanceof ServiceFileError && /empty/.test(e.message));
  await assert.rejects(parseServicesText('  \n', 'x.json'), (e: unknown) => e instanceof ServiceFileError && /services: \[\]/.test(e.message));
  assert.deepEqual(await parseServicesText('services: []\n', 'x.yaml'), []);
});

// issue 15: each of these programmed zero services and exited 0.
test('a file that says nothing (comment, ---, ..., null, {}) is an error unless it says "services: []"', async () => {
  const blank: [string, string][] = [
    ['# only a comment\n', 'x.yaml'],
    ['---\n', 'x.yaml'],
    ['...\n', 'x.yaml'],
    ['---\n...\n', 'x.yaml'],
    ['null\n', 'x.yaml'],
    ['~\n', 'x.yaml'],
    ['null', 'x.json'],
    ['{}', 'x.json'],
    ['services:\n', 'x.yaml'],
    ['{"services": null}', 'x.json'],
  ];
  for (const [text, file] of blank) {
    await assert.rejects(parseServicesText(text, file), (e: unknown) => e instanceof ServiceFileError && /services: \[\]/.test(e.message), JSON.stringify(text));
  }
  assert.deepEqual(await parseServicesText('# none for now\nservices: []\n', 'x.yaml'), []);
  assert.deepEqual(await parseServicesText('{"services": []}', 'x.json'), []);
});

test('an empty directory (or one with no services files) is an error, like an empty file', async () => {
  const d = mkdtempSync(join(dir, 'empty-'));
  await assert.rejects(loadServices(d), (e: unknown) => e instanceof ServiceFileError && /no services file/.test(e.message));
  writeFileSync(join(d, 'README.txt'), 'not a services file');
  writeFileSync(join(d, '.hidden.yaml'), 'services: []');
  await assert.rejects(loadServices(d), (e: unknown) => e instanceof ServiceFileError && /no services file/.test(e.message));
  writeFileSync(join(d, 'none.yaml'), 'services: []\n');
  assert.deepEqual(await loadServices(d), []);
});

test('targetPort "80" (a quoted number) is an error, never a port name', () => {
  const svc = (targetPort: unknown) => ({ services: [{ name: 'a', clusterIP: '10.96.0.1', ports: [{ port: 80, targetPort }] }] });
  assert.match(problemsOf(() => validateServices(svc('80')))[0]!, /services\[0\]\.ports\[0\]\.targetPort: .*quoted number/);
  for (const n of ['0080', '1e3', '0x50', '1e-3', ' 80', '80.0']) assert.match(problemsOf(() => validateServices(svc(n)))[0]!, /quoted number/, n);
  assert.deepEqual(validateServices(svc('http'))[0]!.service.ports[0]!.targetPort, 'http');
  assert.deepEqual(validateServices(svc(8080))[0]!.service.ports[0]!.targetPort, 8080);
});

test('port names follow Kubernetes: IANA_SVC_NAME (<= 15) for target and endpoint ports, DNS label (<= 63) for service ports', () => {
  const long = 'p'.repeat(100_000);
  const svc = (port: Record<string, unknown>, endpointPorts?: Record<string, unknown>) => ({
    services: [{ name: 'a', clusterIP: '10.96.0.1', ports: [{ port: 80, ...port }], endpoints: [{ ip: '10.1.0.5', ...(endpointPorts ? { ports: endpointPorts } : {}) }] }],
  });
  const cases: [object, RegExp][] = [
    [svc({ targetPort: long }), /ports\[0\]\.targetPort/],
    [svc({ targetPort: 'a-very-long-port-name' }), /ports\[0\]\.targetPort/], // 21 > 15
    [svc({ targetPort: 'a--b' }), /ports\[0\]\.targetPort/],
    [svc({ name: long, targetPort: 80 }), /ports\[0\]\.name/],
    [svc({ name: 'x'.repeat(64), targetPort: 80 }), /ports\[0\]\.name/],
    [svc({ targetPort: 'http' }, { [long]: 8080 }), /endpoints\[0\]\.ports/],
    [svc({ targetPort: 'http' }, { HTTP: 8080 }), /endpoints\[0\]\.ports/],
    [svc({ targetPort: 'http' }, { '80': 8080 }), /endpoints\[0\]\.ports/],
    [svc({ targetPort: 'http' }, { '1e3': 8080 }), /endpoints\[0\]\.ports/],
  ];
  for (const [doc, field] of cases) {
    const problems = problemsOf(() => validateServices(doc));
    assert.ok(problems.some((p) => field.test(p)), `${field}: ${problems.join(' | ').slice(0, 300)}`);
    // The message shows a bounded part of a huge name, not all of it.
    for (const p of problems) assert.ok(p.length < 300, `problem of ${p.length} characters`);
  }
  const ok = validateServices(svc({ name: 'x'.repeat(63), targetPort: 'metrics-port15' }, { 'metrics-port15': 9100 }));
  assert.equal(ok[0]!.endpoints[0]!.ports!['metrics-port15'], 9100);
});
