// Same-node socket acceleration against the real kernel (needs root).
// Creates, all named after this pid and removed after the file even when a test
// fails (test/helpers/kernel.ts): three netns (a "node" netns holding a bridge,
// plus two pods on veths), the cgroup patu-test-accel-<pid> under the cgroup2
// root that the peers run in, and pins under /sys/fs/bpf/patu-test-accel-<pid>/.
// Traffic stays inside those netns.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Accel } from '../../src/dataplane/accel.js';
import { accelCommand } from '../../src/cli/accel-command.js';
import { listPins } from '../../src/kernel/bpf/pins.js';
import { patuPrograms } from '../../src/kernel/bpf/introspect.js';
import { scratchForTests } from '../helpers/kernel.js';

const isRoot = process.getuid?.() === 0;
const skip = isRoot ? false : 'needs root (netns, cgroups, BPF programs)';
const scratch = scratchForTests('patu-test-accel');
const NS_NODE = scratch.name('n');
const NS1 = scratch.name('a');
const NS2 = scratch.name('b');
let CG = '';
const PIN_ROOT = scratch.pinRoot();
const OBJ = fileURLToPath(new URL('../../../build/bpf/accel.o', import.meta.url));
const PEER = fileURLToPath(new URL('./accel-peer.js', import.meta.url));
// Any private subnet works inside our own netns; nothing in the programs knows it.
const NODE_IP = '172.31.77.1';
const IP1 = '172.31.77.11';
const IP2 = '172.31.77.12';
const MiB = 1 << 20;
/** Handshake, FIN and a few ACKs per connection: what may still cross the veth when redirected. */
const ACCEL_SLACK_PER_CONN = 16 * 1024;

let accel: Accel;
const procs = new Set<ChildProcess>();

const ip = (...args: string[]): string => execFileSync('ip', args, { encoding: 'utf8' });
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
/** A race guard that does not keep the test process alive once the race is won. */
const deadline = <T>(ms: number, v: T): Promise<T> => new Promise((r) => setTimeout(() => r(v), ms).unref());

/** Bytes that crossed pod 1's veth (rx + tx), the path redirected traffic must skip. */
function vethBytes(ns = NS1): number {
  const [link] = JSON.parse(ip('-n', ns, '-j', '-s', 'link', 'show', 'dev', 'eth0')) as { stats64: { rx: { bytes: number }; tx: { bytes: number } } }[];
  assert.ok(link);
  return link.stats64.rx.bytes + link.stats64.tx.bytes;
}

/** Starts the peer in netns `ns`, inside the test cgroup (where sock_ops is attached). */
function peer(ns: string, args: (string | number)[]): { proc: ChildProcess; lines: Record<string, unknown>[]; exit: Promise<number | null> } {
  // Join the cgroup before `ip netns exec`: it remounts /sys for the netns, hiding the cgroup2 mount.
  const cmd = `echo $$ > ${CG}/cgroup.procs && exec ip netns exec ${ns} "${process.execPath}" "${PEER}" ${args.join(' ')}`;
  const proc = spawn('sh', ['-c', cmd], { stdio: ['ignore', 'pipe', 'pipe'] });
  procs.add(proc);
  const lines: Record<string, unknown>[] = [];
  let buf = '';
  proc.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      lines.push(JSON.parse(buf.slice(0, i)) as Record<string, unknown>);
      buf = buf.slice(i + 1);
    }
  });
  let stderr = '';
  proc.stderr!.on('data', (d: Buffer) => { stderr += d.toString(); });
  const exit = new Promise<number | null>((resolve) => proc.on('exit', (code) => {
    procs.delete(proc);
    if (stderr.trim()) process.stderr.write(`[peer ${args[0]} in ${ns}] ${stderr}`);
    resolve(code);
  }));
  return { proc, lines, exit };
}

async function waitFor(what: string, cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(10);
  }
}

async function server(ns: string, port: number, host = '::') {
  const s = peer(ns, ['server', port, host]);
  await waitFor(`server ${ns}:${port} listening`, () => s.lines.some((l) => l.ev === 'listening'));
  return s;
}

/** Runs a checksummed transfer; returns the veth bytes it cost. */
async function transfer(ns: string, host: string, port: number, send: number, resp: number, conns = 1): Promise<number> {
  const before = vethBytes();
  const c = peer(ns, ['client', host, port, send, resp, conns]);
  const code = await Promise.race([c.exit, deadline(60_000, 'timeout')]);
  assert.equal(code, 0, `client failed: ${JSON.stringify(c.lines)}`);
  assert.deepEqual(c.lines.at(-1), { ok: true, conns, failures: [], nfail: 0 });
  return vethBytes() - before;
}

function assertAccelerated(vethDelta: number, moved: number, conns = 1): void {
  assert.ok(vethDelta < ACCEL_SLACK_PER_CONN * conns,
    `not accelerated: ${vethDelta} bytes crossed the veth for ${moved} bytes moved over ${conns} connection(s)`);
}

function assertNotAccelerated(vethDelta: number, moved: number): void {
  assert.ok(vethDelta >= moved, `expected the stack path: only ${vethDelta} veth bytes for ${moved} bytes moved`);
}

before(() => {
  if (!isRoot) return;
  assert.ok(existsSync(OBJ), `${OBJ} missing: run scripts/build.sh`);
  CG = scratch.cgroup();
  for (const ns of [NS_NODE, NS1, NS2]) scratch.netns(ns);
  ip('-n', NS_NODE, 'link', 'add', 'br0', 'type', 'bridge');
  ip('-n', NS_NODE, 'addr', 'add', `${NODE_IP}/24`, 'dev', 'br0');
  ip('-n', NS_NODE, 'link', 'set', 'br0', 'up');
  for (const [ns, addr, veth] of [[NS1, IP1, 'v1'], [NS2, IP2, 'v2']] as const) {
    ip('-n', NS_NODE, 'link', 'add', veth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns);
    ip('-n', NS_NODE, 'link', 'set', veth, 'master', 'br0', 'up');
    ip('-n', ns, 'addr', 'add', `${addr}/24`, 'dev', 'eth0');
    ip('-n', ns, 'link', 'set', 'eth0', 'up');
  }
  accel = Accel.open({ pinRoot: PIN_ROOT, cgroupPath: CG, objectPath: OBJ });
  scratch.defer('accel', () => accel.teardown());
  scratch.defer('peers', async () => {
    for (const p of procs) p.kill('SIGKILL');
    await sleep(100);
  });
  assert.deepEqual(accel.registerPod(IP1).ok, false, 'registry is a no-op before enable');
  accel.enable();
  assert.deepEqual(accel.registerPod(IP1), { ok: true });
  assert.deepEqual(accel.registerPod(IP2), { ok: true });
});

test('enable is idempotent; status (and `patu accel on`) shows the switch, the attachment and the pods', { skip }, async () => {
  accel.enable();
  const st = accel.status();
  assert.equal(st.setUp, true);
  assert.equal(st.enabled, true);
  assert.equal(st.attached, true);
  assert.deepEqual(st.pods.sort((a, b) => a.ip.localeCompare(b.ip)), [{ ip: IP1, optOut: false }, { ip: IP2, optOut: false }]);
  const lines: string[] = [];
  await accelCommand('on', { pinRoot: PIN_ROOT, cgroup: CG, object: OBJ, out: (l) => lines.push(l) });
  assert.equal(lines[0], 'acceleration: on');
  assert.ok(lines.some((l) => l.includes(IP2) && l.includes('accelerated')), lines.join('\n'));
  const names = patuPrograms().map((p) => p.name);
  assert.ok(names.includes('patu_sockops') && names.includes('patu_skmsg'), names.join(','));
});

test('large transfer both ways (dual-stack listener) keeps checksums and skips the veth', { skip }, async () => {
  const s = await server(NS2, 5001);
  const delta = await transfer(NS1, IP2, 5001, 48 * MiB, 48 * MiB);
  assertAccelerated(delta, 96 * MiB);
  s.proc.kill();
});

test('the sockhash holds both ends of a live connection, keyed by its 4-tuple', { skip }, async () => {
  const s = await server(NS2, 5002);
  const c = peer(NS1, ['hold', IP2, 5002, 800]);
  await waitFor('client connected', () => c.lines.some((l) => l.ev === 'connected'));
  const local = String(c.lines.find((l) => l.ev === 'connected')!.local);
  const port = Number(local.split(':').at(-1));
  const keys = accel.sockets();
  assert.ok(keys.some((k) => k.localIp4 === IP1 && k.localPort === port && k.remoteIp4 === IP2 && k.remotePort === 5002), JSON.stringify(keys));
  assert.ok(keys.some((k) => k.localIp4 === IP2 && k.localPort === 5002 && k.remoteIp4 === IP1 && k.remotePort === port), 'server side (IPv4-mapped) inserted');
  assert.ok(accel.status().sockets >= 2);
  assert.equal(await c.exit, 0, JSON.stringify(c.lines));
  assert.ok(Number(c.lines.at(-1)!.rounds) > 5);
  await waitFor('closed sockets leave the sockhash', () => !accel.sockets().some((k) => k.localPort === port));
  s.proc.kill();
});

test('many concurrent connections (AF_INET listener), each checksummed both ways', { skip }, async () => {
  const s = await server(NS2, 5003, '0.0.0.0');
  const conns = 32;
  const delta = await transfer(NS1, IP2, 5003, 512 * 1024, 512 * 1024, conns);
  assertAccelerated(delta, conns * MiB, conns);
  s.proc.kill();
});

test('a reset connection aborts on the server, and the server keeps serving', { skip }, async () => {
  const s = await server(NS2, 5004);
  const r = peer(NS1, ['reset', IP2, 5004]);
  assert.equal(await r.exit, 0);
  // The reset must reach the server as ECONNRESET. Kernel nuance with sockmap:
  // when all redirected data was already delivered, the read side may report
  // EOF first and the RST surfaces on the server's next write; plain TCP
  // reports it on the read. Either way the peer learns of the reset.
  await waitFor('server sees the reset', () => s.lines.some((l) => l.ev === 'error' && l.code === 'ECONNRESET'))
    .catch((e: Error) => { throw new Error(`${e.message}; server said: ${JSON.stringify(s.lines)}`); });
  assertAccelerated(await transfer(NS1, IP2, 5004, 4 * MiB, 4 * MiB), 8 * MiB);
  s.proc.kill();
});

test('peer death ends the connection promptly instead of hanging', { skip }, async () => {
  const s = await server(NS2, 5005);
  const c = peer(NS1, ['hold', IP2, 5005, 20_000]);
  await waitFor('client connected', () => c.lines.some((l) => l.ev === 'connected'));
  await sleep(100);
  s.proc.kill('SIGKILL');
  const code = await Promise.race([c.exit, deadline(5000, 'hung')]);
  assert.equal(code, 1, 'client must notice the dead peer');
  assert.equal(c.lines.at(-1)!.ok, false);
  assert.ok(Number(c.lines.at(-1)!.rounds) > 0);
});

test('a pod unregistered while connected keeps its connection; new ones take the stack path', { skip }, async () => {
  const s = await server(NS2, 5006);
  const c = peer(NS1, ['hold', IP2, 5006, 600]);
  await waitFor('client connected', () => c.lines.some((l) => l.ev === 'connected'));
  assert.deepEqual(accel.unregisterPod(IP2), { ok: true });
  try {
    assert.equal(await c.exit, 0, JSON.stringify(c.lines));
    assertNotAccelerated(await transfer(NS1, IP2, 5006, 8 * MiB, 8 * MiB), 16 * MiB);
  } finally {
    accel.registerPod(IP2);
  }
  assertAccelerated(await transfer(NS1, IP2, 5006, 8 * MiB, 8 * MiB), 16 * MiB);
  s.proc.kill();
});

test('an opted-out pod is never accelerated', { skip }, async () => {
  const s = await server(NS2, 5007);
  accel.registerPod(IP2, { optOut: true });
  try {
    assert.deepEqual(accel.status().pods.find((p) => p.ip === IP2), { ip: IP2, optOut: true });
    const c = peer(NS1, ['hold', IP2, 5007, 300]);
    await waitFor('client connected', () => c.lines.some((l) => l.ev === 'connected'));
    assert.ok(!accel.sockets().some((k) => k.localIp4 === IP2 || k.remoteIp4 === IP2), 'opted-out pod in the sockhash');
    assert.equal(await c.exit, 0);
    assertNotAccelerated(await transfer(NS1, IP2, 5007, 8 * MiB, 8 * MiB), 16 * MiB);
  } finally {
    accel.registerPod(IP2);
  }
  s.proc.kill();
});

test('a non-pod peer (the node itself) is untouched', { skip }, async () => {
  const s = await server(NS_NODE, 5008);
  const delta = await transfer(NS1, NODE_IP, 5008, 8 * MiB, 8 * MiB);
  assertNotAccelerated(delta, 16 * MiB);
  assert.ok(!accel.sockets().some((k) => k.localIp4 === NODE_IP || k.remoteIp4 === NODE_IP));
  s.proc.kill();
});

test('with redirection off the acceleration proof fails; live connections fall back intact', { skip }, async () => {
  const s = await server(NS2, 5009);
  const c = peer(NS1, ['hold', IP2, 5009, 1200]);
  await waitFor('client connected', () => c.lines.some((l) => l.ev === 'connected'));
  await sleep(300);
  accel.disable(); // mid-connection: the redirected stream must continue over TCP, in order
  try {
    const st = accel.status();
    assert.equal(st.enabled, false);
    assert.equal(st.attached, false);
    assert.equal(st.pods.length, 2, 'disable keeps the registry');
    const delta = await transfer(NS1, IP2, 5009, 16 * MiB, 16 * MiB);
    assert.throws(() => assertAccelerated(delta, 32 * MiB), /not accelerated/);
    assert.equal(await c.exit, 0, `connection broken by disable: ${JSON.stringify(c.lines)}`);
  } finally {
    accel.enable();
  }
  assertAccelerated(await transfer(NS1, IP2, 5009, 16 * MiB, 16 * MiB), 32 * MiB);
  s.proc.kill();
});

test('restart and upgrade (reload) reuse pinned state without breaking live connections', { skip }, async () => {
  const s = await server(NS2, 5010);
  const c = peer(NS1, ['hold', IP2, 5010, 1200]);
  await waitFor('client connected', () => c.lines.some((l) => l.ev === 'connected'));
  const before = accel.sockets().length;
  assert.ok(before >= 2);
  Accel.open({ pinRoot: PIN_ROOT, cgroupPath: CG, objectPath: OBJ }).enable(); // a restarted agent
  Accel.open({ pinRoot: PIN_ROOT, cgroupPath: CG, objectPath: OBJ }).enable({ reload: true }); // an upgrade
  assert.equal(accel.sockets().length, before, 'sockhash reused, not recreated');
  assert.equal(await c.exit, 0, JSON.stringify(c.lines));
  assertAccelerated(await transfer(NS1, IP2, 5010, 16 * MiB, 16 * MiB), 32 * MiB);
  s.proc.kill();
});

test('teardown removes only the acceleration pins', { skip }, () => {
  const other = `${PIN_ROOT}/other`;
  mkdirSync(other, { recursive: true });
  const t = Accel.open({ pinRoot: PIN_ROOT, cgroupPath: CG, objectPath: OBJ });
  t.teardown();
  assert.equal(existsSync(`${PIN_ROOT}/accel`), false);
  assert.ok(existsSync(other), 'a sibling under the same pin root survives');
  assert.deepEqual(listPins(PIN_ROOT), []);
  assert.deepEqual(t.status(), { setUp: false, enabled: false, attached: false, sockets: 0, pods: [] });
  assert.deepEqual(t.registerPod(IP1).ok, false);
});
