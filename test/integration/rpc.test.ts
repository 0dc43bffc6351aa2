// The data-plane API's transport (src/rpc/server.ts + client.ts) over real mutual TLS, on a
// unix socket and on tcp://127.0.0.1:0. The Dataplane behind the server is a recording fake
// written here: what is under test is the wire (LocalDataplane has its own tests).
// Certificates: src/rpc/certs.ts (`patu certs generate`: ECDSA P-256, serverAuth-only server, clientAuth-only client).
// No root needed; everything is on loopback or in a temporary directory removed at the end.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { connect as tlsConnect } from 'node:tls';
import { scratchForTests } from '../helpers/kernel.js';
import {
  DataplaneError, type CniCall, type Dataplane, type DataplaneErrorCode, type DataplaneStatus,
  type NodeSettings, type PodFlagsUpdate, type PolicyChange, type ServiceChange,
} from '../../src/dataplane/api.js';
import { startDataplaneServer, DataplaneServerError, type DataplaneServer } from '../../src/rpc/server.js';
import { connectDataplane, type RemoteDataplane } from '../../src/rpc/client.js';
import { DataplaneRpcMetrics } from '../../src/rpc/metrics.js';
import { clientTlsOptions, loadTlsDir, serverTlsOptions } from '../../src/rpc/tls.js';
import { generateCerts, writeCertDir, type CertSet } from '../../src/rpc/certs.js';
import { Registry } from '../../src/k8s/prom.js';
import { e2eState, np } from '../helpers/policy-gen.js';

const scratch = scratchForTests('patu-rpc');
const tmp = scratch.tmpDir('patu-rpc');
const SERVER_NAME = 'patu-manager';

// ---------------------------------------------------------------- certificates (patu certs generate's code)

/** A set written in patu's layout (ca.*, server.*, client.*; keys 0600). */
function writeSet(name: string, set: CertSet): string {
  const dir = join(tmp, name);
  writeCertDir(dir, set);
  return dir;
}

const serverTls = (dir: string) => serverTlsOptions(loadTlsDir(dir, 'server'));
const clientTls = (dir: string) => clientTlsOptions(loadTlsDir(dir, 'client'), SERVER_NAME);

// ---------------------------------------------------------------- a recording data plane

type Call = { method: string; args: unknown[] };

class RecordingDataplane implements Dataplane {
  readonly calls: Call[] = [];
  /** Thrown by the next call (then cleared). */
  failNext: unknown;
  /** Each call waits this long before answering (the deadline test). */
  delayMs = 0;
  /** Calls whose work finished (after the delay), in order. */
  readonly completed: string[] = [];

  private async run<T>(method: string, args: unknown[], answer: T): Promise<T> {
    this.calls.push({ method, args });
    if (this.failNext !== undefined) {
      const e = this.failNext;
      this.failNext = undefined;
      throw e;
    }
    if (this.delayMs) await sleep(this.delayMs);
    this.completed.push(method);
    return answer;
  }

  cni(call: CniCall) {
    return this.run(`cni:${call.command}`, [call], { exitCode: call.command === 'CHECK' ? 7 : 0, stdout: JSON.stringify({ cmd: call.command, id: call.containerId, bytes: call.config.length }) });
  }
  applyServices(change: ServiceChange) {
    return this.run('applyServices', [change], {
      generation: change.generation, mapOps: change.ports.length * 3, services: change.ports.length, applyMs: 0.5, repeatedGeneration: false,
      conflicts: [{ key: '0.0.0.0:30000/TCP', wanted: 'a/b', heldBy: 'c/d' }],
    });
  }
  setAcceleration(enabled: boolean) {
    return this.run('setAcceleration', [enabled], { enabled, pods: 4, sockets: 9 });
  }
  setPodFlags(pods: PodFlagsUpdate[]) {
    return this.run('setPodFlags', [pods], { updated: pods.length, unknown: 1 });
  }
  setNodeSettings(settings: NodeSettings) {
    return this.run('setNodeSettings', [settings], { conflistWritten: true });
  }
  applyPolicy(change: PolicyChange) {
    return this.run('applyPolicy', [change], {
      generation: change.generation, mapChanges: 10, flowsCutOff: 1, socketsEvicted: 0, applyMs: 2.5, fallback: false, problems: ['p'], repeatedGeneration: false,
    });
  }
  health() {
    return this.run('health', [], { ok: true, problems: [] });
  }
  status(): Promise<DataplaneStatus> {
    return this.run('status', [], {
      version: '0.1.0', backend: 'fake', servicesSession: 's1', servicesGeneration: 3n, services: 2, policySession: 'p1', policyGeneration: 1n,
      policyEndpoints: 5, acceleration: true, acceleratedPods: 4, node: { podCidr: '10.200.0.0/24', snatAddress: '192.168.1.5' }, nodeAddresses: ['192.168.1.5'], uptimeSeconds: 42,
    });
  }
  async close() {}
}

/** Log lines, to assert on what was logged (and what never is). */
function recordingLog() {
  const lines: { level: string; fields: object; msg: string }[] = [];
  const at = (level: string) => (fields: object, msg: string) => void lines.push({ level, fields, msg });
  return { lines, log: { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') } };
}

async function codeOf(p: Promise<unknown>): Promise<{ code: DataplaneErrorCode; message: string }> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof DataplaneError, `not a DataplaneError: ${String(e)}`);
    return { code: e.code, message: e.message };
  }
  assert.fail('the call succeeded');
}

const base = await generateCerts({ serverName: SERVER_NAME });
const rotated = await generateCerts({ serverName: SERVER_NAME });
const foreign = await generateCerts({ serverName: SERVER_NAME });
const CERTS = writeSet('certs', base);
/** A new CA and new leaves: what a rotation to a new CA brings. */
const ROTATED = writeSet('certs-rotated', rotated);
/** The rotated client pair but the old CA: trusts only the old server certificate. */
const MIXED = writeSet('certs-mixed', { ca: base.ca, server: rotated.server, client: rotated.client });
/** Trusts our CA, presents a certificate of another CA. */
const FOREIGN_CLIENT = writeSet('certs-foreign-client', { ca: base.ca, server: foreign.server, client: foreign.client });
/** Our CA's server certificate (serverAuth only) presented as the client's. */
const SERVER_AS_CLIENT = writeSet('certs-server-as-client', await generateCerts({ serverName: SERVER_NAME, ca: base.ca, serverCertAsClient: true }));
/** Our CA's client certificate, expired yesterday. */
const EXPIRED_CLIENT = writeSet('certs-expired-client', await generateCerts({ serverName: SERVER_NAME, ca: base.ca, expiredClient: true }));

const service = (i: number) => ({
  key: `10.96.0.${i}:80/TCP`, ref: `default/s${i}`, vip: `10.96.0.${i}`, port: 80, protocol: 'TCP' as const, name: `default/s${i}:http`,
  affinity: i % 2 === 0, affinityTimeoutSeconds: i % 2 === 0 ? 10800 : 0, backends: [`10.200.0.${i}:8080`, `10.200.1.${i}:8080`],
});

for (const kind of ['unix', 'tcp'] as const) {
  describe(`data-plane API over ${kind}`, () => {
    const impl = new RecordingDataplane();
    const registry = new Registry();
    const metrics = new DataplaneRpcMetrics(registry);
    const { lines, log } = recordingLog();
    let server: DataplaneServer;
    let client: RemoteDataplane;
    let listen = kind === 'unix' ? `unix://${join(tmp, 'manager.sock')}` : 'tcp://127.0.0.1:0';

    before(async () => {
      server = await startDataplaneServer({ listen, tls: serverTls(CERTS), impl, log, metrics });
      listen = server.address; // tcp: the port it got (the restart test reuses it)
      client = connectDataplane({ address: server.address, tls: clientTls(CERTS), log, metrics });
    });
    after(async () => {
      await client?.close();
      await server?.close();
    });

    test('every method round-trips, arguments and answers whole', async () => {
      impl.calls.length = 0;
      const config = Buffer.from(JSON.stringify({ cniVersion: '1.0.0', name: 'patu', type: 'patu' }));
      for (const command of ['ADD', 'DEL', 'CHECK', 'STATUS'] as const) {
        const call: CniCall = { command, containerId: `c-${command}`, netns: '/run/netns/x', ifname: 'eth0', args: 'K8S_POD_NAME=a', path: '/opt/cni/bin', config };
        const reply = await client.cni(call);
        assert.deepEqual(reply, { exitCode: command === 'CHECK' ? 7 : 0, stdout: JSON.stringify({ cmd: command, id: call.containerId, bytes: config.length }) });
        const got = impl.calls.at(-1)!;
        assert.equal(got.method, `cni:${command}`);
        const seen = got.args[0] as CniCall;
        assert.deepEqual({ ...seen, config: seen.config.toString() }, { ...call, config: config.toString() });
      }

      const change: ServiceChange = { session: 'sess-1', generation: 2n ** 63n + 5n, full: true, refs: ['default/gone'], ports: [service(1), service(2), { ...service(3), key: '10.96.0.3:80/TCP/external-local', scope: 'external-local' }] };
      const applied = await client.applyServices(change);
      assert.equal(applied.generation, change.generation);
      assert.equal(applied.services, 3);
      assert.deepEqual(applied.conflicts, [{ key: '0.0.0.0:30000/TCP', wanted: 'a/b', heldBy: 'c/d' }]);
      assert.deepEqual(impl.calls.at(-1), { method: 'applyServices', args: [change] });

      assert.deepEqual(await client.setAcceleration(true), { enabled: true, pods: 4, sockets: 9 });
      assert.deepEqual(impl.calls.at(-1), { method: 'setAcceleration', args: [true] });
      const flags = [{ ip: '10.200.0.5', accelOptOut: true }, { ip: '10.200.0.6', accelOptOut: false }];
      assert.deepEqual(await client.setPodFlags(flags), { updated: 2, unknown: 1 });
      assert.deepEqual(impl.calls.at(-1), { method: 'setPodFlags', args: [flags] });
      assert.deepEqual(await client.setNodeSettings({ podCidr: '10.200.3.0/24', serviceCidrOff: true }), { conflistWritten: true });
      assert.deepEqual(impl.calls.at(-1), { method: 'setNodeSettings', args: [{ podCidr: '10.200.3.0/24', serviceCidrOff: true }] });
      // false and "" are values (check back on, the uplink's address), not "unchanged".
      await client.setNodeSettings({ serviceCidr: '10.96.0.0/12', serviceCidrOff: false, snatAddress: '' });
      assert.deepEqual(impl.calls.at(-1), { method: 'setNodeSettings', args: [{ serviceCidr: '10.96.0.0/12', serviceCidrOff: false, snatAddress: '' }] });

      const state = e2eState([np('x', 'allow-80', { podSelector: { matchLabels: { pod: 'a' } }, ingress: [{ from: [{ namespaceSelector: {} }], ports: [{ port: 'serve-80-tcp' }, { protocol: 'UDP', port: 80, endPort: 81 }] }] })]);
      const pol = await client.applyPolicy({ session: 'p1', generation: 9n, state });
      assert.equal(pol.generation, 9n);
      assert.deepEqual(pol.problems, ['p']);
      const sentState = (impl.calls.at(-1)!.args[0] as PolicyChange).state;
      assert.deepEqual(sentState, state);

      assert.deepEqual(await client.health(), { ok: true, problems: [] });
      const st = await client.status();
      assert.equal(st.servicesGeneration, 3n);
      assert.deepEqual(st.node, { podCidr: '10.200.0.0/24', snatAddress: '192.168.1.5' });
      assert.equal(st.backend, 'fake');

      // Both sides counted every call under its method.
      const text = await registry.metrics();
      for (const side of ['server', 'client']) {
        for (const m of ['CniAdd', 'CniDel', 'CniCheck', 'CniStatus', 'ApplyServices', 'SetAcceleration', 'SetPodFlags', 'SetNodeSettings', 'ApplyPolicy', 'Health', 'Status']) {
          const n = m === 'SetNodeSettings' ? 2 : 1;
          assert.match(text, new RegExp(`patu_dataplane_rpc_calls_total\\{side="${side}",method="${m}",code="ok"\\} ${n}\\n`), `${side} ${m}`);
        }
      }
      assert.match(text, /patu_dataplane_rpc_duration_seconds_count\{side="client",method="ApplyServices"\} 1\n/);
    });

    test('DataplaneError codes and messages survive the wire; any other error is internal with no stack', async () => {
      for (const code of ['invalid', 'resync', 'capacity', 'unavailable', 'deadline', 'internal'] as const) {
        impl.failNext = new DataplaneError(code, `ports[3].vip: outside the service CIDR (${code})`, { cause: new Error('secret cause') });
        const got = await codeOf(client.applyServices({ session: 's', generation: 1n, full: false, refs: [], ports: [] }));
        assert.deepEqual(got, { code, message: `ports[3].vip: outside the service CIDR (${code})` });
      }
      impl.failNext = new TypeError('cannot read properties of undefined');
      const internal = await codeOf(client.health());
      assert.equal(internal.code, 'internal');
      assert.match(internal.message, /cannot read properties of undefined/);
      assert.doesNotMatch(internal.message, /\n\s+at |secret cause|\.js:\d+/);
      // The manager's log has it, with its stack.
      assert.ok(lines.some((l) => l.level === 'error' && (l.fields as { err?: unknown }).err instanceof TypeError));
      // A request the client cannot encode never leaves it.
      const bad = await codeOf(client.applyServices({ session: 's', generation: 1n, full: false, refs: [], ports: [{ ...service(1), backends: ['nonsense'] }] }));
      assert.equal(bad.code, 'invalid');
      const text = await registry.metrics();
      assert.match(text, /patu_dataplane_rpc_calls_total\{side="server",method="ApplyServices",code="resync"\} 1\n/);
      assert.match(text, /patu_dataplane_rpc_calls_total\{side="client",method="Health",code="internal"\} 1\n/);
    });

    test('a deadline that passes mid-apply answers deadline, and the apply still completes', async () => {
      impl.delayMs = 1500;
      impl.completed.length = 0;
      try {
        const t0 = performance.now();
        const got = await codeOf(client.applyServices({ session: 's', generation: 2n, full: true, refs: [], ports: [service(4)] }, { timeoutMs: 200 }));
        assert.equal(got.code, 'deadline');
        assert.ok(performance.now() - t0 < 1400, 'the client stopped waiting at its deadline, not at the answer');
        for (let i = 0; i < 100 && !impl.completed.includes('applyServices'); i++) await sleep(50);
        assert.deepEqual(impl.completed, ['applyServices'], 'the server finished the apply after the deadline');
      } finally {
        impl.delayMs = 0;
      }
      // The connection is still good.
      assert.deepEqual(await client.health(), { ok: true, problems: [] });
    });

    test('manager restart: the same client gets unavailable, then works again', async () => {
      assert.equal((await client.health()).ok, true);
      await server.close();
      const down = await codeOf(client.health({ timeoutMs: 3000 }));
      assert.equal(down.code, 'unavailable', down.message);
      server = await startDataplaneServer({ listen, tls: serverTls(CERTS), impl, log, metrics });
      assert.equal(server.address, listen);
      assert.deepEqual(await client.health(), { ok: true, problems: [] });
    });

    test('certificate rotation: the server and the client each take new files without a restart, and connections re-establish', async () => {
      assert.equal((await client.health()).ok, true);
      // A call in flight when the server rotates completes on its connection.
      impl.delayMs = 300;
      const inFlight = client.health();
      await sleep(100);
      server.setTls(serverTls(ROTATED));
      assert.deepEqual(await inFlight, { ok: true, problems: [] });
      impl.delayMs = 0;
      // The server closed the connections made with the old files: the client's next call reconnects, and with the
      // old files it cannot (it does not trust the new server certificate; the new CA does not sign its own).
      assert.equal((await codeOf(client.health({ timeoutMs: 3000 }))).code, 'unavailable');
      // setTls makes the next call open a new connection with the given files: with files that do not fit the
      // server, it fails...
      client.setTls(clientTls(MIXED));
      assert.equal((await codeOf(client.health({ timeoutMs: 3000 }))).code, 'unavailable');
      // ...and with the rotated files it works.
      client.setTls(clientTls(ROTATED));
      assert.deepEqual(await client.health(), { ok: true, problems: [] });
      // Back to the first set for whatever runs next.
      server.setTls(serverTls(CERTS));
      client.setTls(clientTls(CERTS));
      assert.deepEqual(await client.health(), { ok: true, problems: [] });
    });

    test('refused clients: a foreign CA, a server certificate as client certificate, an expired one, none; each logged with its reason, never key material', async () => {
      const before = lines.length;
      for (const dir of [FOREIGN_CLIENT, SERVER_AS_CLIENT, EXPIRED_CLIENT]) {
        const c = connectDataplane({ address: server.address, tls: clientTls(dir), log: recordingLog().log });
        try {
          { const r = await codeOf(c.health({ timeoutMs: 3000 })); assert.equal(r.code, 'unavailable', dir + r.message); }
        } finally {
          await c.close();
        }
      }
      const { cert: _c, key: _k, ...noCert } = clientTls(CERTS);
      const c = connectDataplane({ address: server.address, tls: noCert, log: recordingLog().log });
      try {
        assert.equal((await codeOf(c.health({ timeoutMs: 3000 }))).code, 'unavailable');
      } finally {
        await c.close();
      }
      for (let i = 0; i < 50 && lines.slice(before).filter((l) => l.msg.includes('connection refused')).length < 4; i++) await sleep(20);
      const refused = lines.slice(before).filter((l) => l.msg.includes('connection refused')).map((l) => (l.fields as { reason: string }).reason);
      assert.equal(refused.length, 4, JSON.stringify(refused));
      assert.ok(refused.some((r) => /expired/.test(r)), JSON.stringify(refused));
      assert.ok(refused.some((r) => /foreign CA|not signed by our CA/.test(r)), JSON.stringify(refused));
      assert.ok(refused.some((r) => /clientAuth|INVALID_PURPOSE/.test(r)), JSON.stringify(refused));
      assert.ok(refused.some((r) => /no client certificate/.test(r)), JSON.stringify(refused));
      assert.doesNotMatch(JSON.stringify(lines), /PRIVATE KEY|BEGIN CERTIFICATE/);
      const text = await registry.metrics();
      assert.match(text, /patu_dataplane_tls_rejections_total\{reason="[A-Z_]+"\} \d+/);
      // Plaintext HTTP/2 (h2c) gets no answer: the connection is refused before any request is read.
      const raw = await plaintextAnswer(server.address);
      assert.doesNotMatch(raw, /grpc-status|HTTP\/2/);
    });
  });
}

/** Sends an h2c preface in the clear; returns whatever came back before the server closed. */
async function plaintextAnswer(address: string): Promise<string> {
  const net = await import('node:net');
  const s = address.startsWith('unix://') ? net.connect(address.slice(7)) : net.connect(Number(address.split(':').at(-1)), '127.0.0.1');
  const chunks: Buffer[] = [];
  s.on('data', (d) => chunks.push(d));
  s.on('connect', () => s.write('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'));
  await new Promise<void>((resolve) => {
    s.on('close', () => resolve());
    s.on('error', () => resolve());
    s.setTimeout(5000, () => s.destroy());
  });
  return Buffer.concat(chunks).toString('latin1');
}

describe('unix socket', () => {
  test('mode 0660; a stale socket (its server killed) is replaced; a live server is not', async () => {
    const path = join(tmp, 'stale.sock');
    // A server killed -9 leaves its socket behind.
    const child = spawn(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(path)}, () => console.log('up'))`], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((resolve) => child.stdout.once('data', () => resolve()));
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    assert.ok(statSync(path).isSocket(), 'the killed server left its socket');

    const { log } = recordingLog();
    const server = await startDataplaneServer({ listen: `unix://${path}`, tls: serverTls(CERTS), impl: new RecordingDataplane(), log });
    try {
      assert.equal(statSync(path).mode & 0o777, 0o660);
      const client = connectDataplane({ address: server.address, tls: clientTls(CERTS), log });
      try {
        assert.equal((await client.health()).ok, true);
      } finally {
        await client.close();
      }
      await assert.rejects(startDataplaneServer({ listen: `unix://${path}`, tls: serverTls(CERTS), impl: new RecordingDataplane(), log }),
        (e: unknown) => e instanceof DataplaneServerError && /another server answers/.test(e.message));
      assert.ok(existsSync(path), 'the refused start left the live server\'s socket alone');
    } finally {
      await server.close();
    }
    // Not a socket: never removed.
    const file = join(tmp, 'not-a-socket');
    writeFileSync(file, 'x');
    await assert.rejects(startDataplaneServer({ listen: `unix://${file}`, tls: serverTls(CERTS), impl: new RecordingDataplane(), log }), /not a socket/);
    assert.ok(existsSync(file));
  });

  test('TLS on the unix socket too: a plain TLS client without a certificate is refused', async () => {
    const path = join(tmp, 'tls-check.sock');
    const { log } = recordingLog();
    const server = await startDataplaneServer({ listen: `unix://${path}`, tls: serverTls(CERTS), impl: new RecordingDataplane(), log });
    try {
      const { cert: _c, key: _k, ...noCert } = clientTls(CERTS);
      const err = await new Promise<Error | undefined>((resolve) => {
        const s = tlsConnect({ ...noCert, path, ALPNProtocols: ['h2'] });
        s.on('error', (e) => resolve(e));
        s.on('secureConnect', () => s.write('x'));
        s.on('close', () => resolve(undefined));
      });
      assert.ok(err, 'the connection failed with an error');
      assert.match(String((err as { code?: string }).code ?? err.message), /CERTIFICATE_REQUIRED|ECONNRESET/);
    } finally {
      await server.close();
    }
  });
});

test('a connection that stops answering (no FIN: host gone, partition) is dropped by PING; the next call connects anew', async () => {
  const net = await import('node:net');
  const { log } = recordingLog();
  const server = await startDataplaneServer({ listen: 'tcp://127.0.0.1:0', tls: serverTls(CERTS), impl: new RecordingDataplane(), log });
  // A TCP proxy that can black-hole the connections it has: bytes are dropped, sockets stay open.
  const conns: { c: import('node:net').Socket; u: import('node:net').Socket; dead: boolean }[] = [];
  const proxy = net.createServer((c) => {
    const u = net.connect(server.port!, '127.0.0.1');
    const conn = { c, u, dead: false };
    conns.push(conn);
    c.on('data', (d) => void (conn.dead || u.write(d)));
    u.on('data', (d) => void (conn.dead || c.write(d)));
    const end = () => {
      c.destroy();
      u.destroy();
    };
    for (const s of [c, u]) {
      s.on('error', end);
      s.on('close', end);
    }
  });
  await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
  const port = (proxy.address() as import('node:net').AddressInfo).port;
  const client = connectDataplane({ address: `tcp://127.0.0.1:${port}`, tls: clientTls(CERTS), log, pingIntervalMs: 300, pingTimeoutMs: 300 });
  try {
    assert.equal((await client.health()).ok, true);
    assert.equal(conns.length, 1);
    for (const c of conns) c.dead = true;
    const t0 = performance.now();
    const stuck = await codeOf(client.health({ timeoutMs: 20_000 }));
    assert.equal(stuck.code, 'unavailable', stuck.message);
    assert.ok(performance.now() - t0 < 10_000, `dropped after ${Math.round(performance.now() - t0)} ms, long before the 20 s deadline`);
    assert.deepEqual(await client.health(), { ok: true, problems: [] });
    assert.equal(conns.length, 2, 'the call went through a new connection');
  } finally {
    await client.close();
    for (const c of conns) c.c.destroy();
    await new Promise((r) => proxy.close(r));
    await server.close();
  }
});

test('address errors name the address', async () => {
  const { log } = recordingLog();
  await assert.rejects(startDataplaneServer({ listen: 'unix://relative.sock', tls: serverTls(CERTS), impl: new RecordingDataplane(), log }), /must be absolute/);
  assert.throws(() => connectDataplane({ address: 'http://x:1', tls: clientTls(CERTS), log }), /unknown scheme/);
});
