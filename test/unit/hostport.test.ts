// hostPort pieces without a kernel: runtimeConfig.portMappings validation, record
// names, the record store's conflict rules (in a temp directory), the service map
// entries made from records and the agent's watcher against a recording sink.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseNetConf, parsePortMappings, portMappingsOf } from '../../src/cni/netconf.js';
import { CniError, toCniError, CniCode } from '../../src/cni/errors.js';
import {
  HostPortStore, HostPortConflictError, recordName, parseRecordName, overlaps, HOSTPORT_DIR, type PortMapping, type HostPortOwner,
} from '../../src/hostport/records.js';
import { hostPortDesired, hostPortEntry, isHostPortRef } from '../../src/hostport/desired.js';
import { hostPortsWatch } from '../../src/agent/hostports-watch.js';
import type { ApplyStats } from '../../src/dataplane/service-lb.js';
import type { DesiredServicePort } from '../../src/services/model.js';

const base = { cniVersion: '1.1.0', name: 'patu', type: 'patu' };

function expectField(fn: () => unknown, field: string, mentions: string): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof CniError, `expected CniError, got ${String(err)}`);
    assert.equal(err.code, 7, err.message);
    assert.equal(err.details, field, err.message);
    assert.ok(err.message.includes(mentions), `'${err.message}' should mention '${mentions}'`);
    return true;
  });
}

test('portMappings: normalised (tcp default, any case, 0.0.0.0 and "" are every address)', () => {
  const c = portMappingsOf(parseNetConf({
    ...base,
    runtimeConfig: {
      portMappings: [
        { hostPort: 8080, containerPort: 80 },
        { hostPort: 53, containerPort: 5353, protocol: 'UDP', hostIP: '0.0.0.0' },
        { hostPort: 9000, containerPort: 9000, protocol: 'tcp', hostIP: '127.0.0.1', extra: 'ignored' },
        { hostPort: 9001, containerPort: 9001, protocol: '', hostIP: '' },
      ],
    },
  }));
  assert.deepEqual(c, [
    { hostPort: 8080, containerPort: 80, protocol: 'tcp', hostIP: '' },
    { hostPort: 53, containerPort: 5353, protocol: 'udp', hostIP: '' },
    { hostPort: 9000, containerPort: 9000, protocol: 'tcp', hostIP: '127.0.0.1' },
    { hostPort: 9001, containerPort: 9001, protocol: 'tcp', hostIP: '' },
  ]);
  assert.deepEqual(portMappingsOf(parseNetConf(base)), []);
});

test('portMappings: field names as Go reads them (containerd sends HostPort, ContainerPort, Protocol, HostIP)', () => {
  // What containerd 1.6 (go-cni, no JSON tags) really sent in the k8s e2e run.
  assert.deepEqual(parsePortMappings([{ HostPort: 40123, ContainerPort: 8080, Protocol: 'tcp', HostIP: '' }]), [
    { hostPort: 40123, containerPort: 8080, protocol: 'tcp', hostIP: '' },
  ]);
  assert.deepEqual(parsePortMappings([{ hostport: 1, CONTAINERPORT: 2, protocol: 'udp', hostIp: '10.0.0.1', hostPort: 3 }]), [
    { hostPort: 3, containerPort: 2, protocol: 'udp', hostIP: '10.0.0.1' },
  ], 'the exact name first, then any case');
});

test('portMappings: checked only where used, so a DEL never fails on them (a pod could never be removed)', () => {
  const c = parseNetConf({ ...base, runtimeConfig: { portMappings: [{ hostPort: 'x' }] } });
  assert.throws(() => portMappingsOf(c), /runtimeConfig\.portMappings\[0\]\.hostPort/);
});

test('portMappings: a bad field is code 7 naming it', () => {
  const pm = (v: unknown) => () => portMappingsOf(parseNetConf({ ...base, runtimeConfig: { portMappings: v } }));
  expectField(pm({}), 'runtimeConfig.portMappings', 'must be an array');
  expectField(pm([7]), 'runtimeConfig.portMappings[0]', 'must be an object');
  expectField(pm([{ containerPort: 80 }]), 'runtimeConfig.portMappings[0].hostPort', 'integer port 1-65535');
  expectField(pm([{ hostPort: 80, containerPort: 80 }, { hostPort: 0, containerPort: 80 }]), 'runtimeConfig.portMappings[1].hostPort', 'got 0');
  expectField(pm([{ hostPort: 65536, containerPort: 80 }]), 'runtimeConfig.portMappings[0].hostPort', '65536');
  expectField(pm([{ hostPort: 80, containerPort: '80' }]), 'runtimeConfig.portMappings[0].containerPort', '"80"');
  expectField(pm([{ hostPort: 80, containerPort: 1.5 }]), 'runtimeConfig.portMappings[0].containerPort', '1.5');
  expectField(pm([{ hostPort: 80, containerPort: 80, protocol: 'sctp' }]), 'runtimeConfig.portMappings[0].protocol', '"sctp"');
  expectField(pm([{ hostPort: 80, containerPort: 80, protocol: 6 }]), 'runtimeConfig.portMappings[0].protocol', 'tcp');
  expectField(pm([{ hostPort: 80, containerPort: 80, hostIP: '::1' }]), 'runtimeConfig.portMappings[0].hostIP', 'IPv4');
  expectField(pm([{ hostPort: 80, containerPort: 80, hostIP: '10.0.0.256' }]), 'runtimeConfig.portMappings[0].hostIP', 'IPv4 address');
  expectField(pm([{ hostPort: 80, containerPort: 80, hostIP: 7 }]), 'runtimeConfig.portMappings[0].hostIP', 'IPv4 address');
  expectField(pm(new Array(1025).fill({ hostPort: 80, containerPort: 80 })), 'runtimeConfig.portMappings', '1024');
  assert.deepEqual(parsePortMappings(null), []);
});

test('record names: one per protocol, address and port, canonical only', () => {
  const m = { protocol: 'tcp' as const, hostIP: '', hostPort: 8080 };
  assert.equal(recordName(m), 'tcp-any-8080');
  assert.equal(recordName({ protocol: 'udp', hostIP: '10.0.0.5', hostPort: 53 }), 'udp-10.0.0.5-53');
  assert.deepEqual(parseRecordName('tcp-any-8080'), m);
  assert.deepEqual(parseRecordName('udp-10.0.0.5-53'), { protocol: 'udp', hostIP: '10.0.0.5', hostPort: 53 });
  for (const bad of ['tcp-any-0', 'tcp-any-65536', 'sctp-any-80', 'tcp-010.0.0.5-53', 'tcp-10.0.0.256-53', 'tcp-any-80.bak', 'lock', '.tmp.tcp-any-80.1.x']) {
    assert.equal(parseRecordName(bad), undefined, bad);
  }
});

test('overlap: the same address, or every address against any one, on one port and protocol', () => {
  const any = { protocol: 'tcp' as const, hostIP: '', hostPort: 80 };
  const a = { ...any, hostIP: '10.0.0.1' };
  const b = { ...any, hostIP: '10.0.0.2' };
  assert.ok(overlaps(any, a) && overlaps(a, any) && overlaps(a, a) && overlaps(any, any));
  assert.ok(!overlaps(a, b));
  assert.ok(!overlaps(any, { ...any, protocol: 'udp' }));
  assert.ok(!overlaps(any, { ...any, hostPort: 81 }));
});

function withDir(fn: (dir: string) => void): void {
  const dir = mkdtempSync(join(tmpdir(), `patu-hostport-unit-${process.pid}-`));
  try {
    fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const owner = (containerId: string, podIp = '10.200.0.5', network = 'patu'): HostPortOwner => ({ network, containerId, ifname: 'eth0', podIp });
const tcp = (hostPort: number, containerPort = 80, hostIP = ''): PortMapping => ({ protocol: 'tcp', hostPort, containerPort, hostIP });

test('store: the second pod asking for a taken port gets a conflict naming the holder, and keeps nothing', () => {
  withDir((dir) => {
    const s = HostPortStore.open(dir);
    assert.deepEqual(s.reserve(owner('pod-a'), [tcp(8080), { ...tcp(53), protocol: 'udp' }]), ['tcp-any-8080', 'udp-any-53']);
    // pod-b: its first mapping is free, its second is taken: it must end up with neither.
    assert.throws(() => s.reserve(owner('pod-b', '10.200.0.6'), [tcp(9090), tcp(8080, 81)]), (e: unknown) => {
      assert.ok(e instanceof HostPortConflictError);
      assert.match(e.message, /hostPort 8080\/TCP on every node address is already taken.*10\.200\.0\.5:80.*pod-a/);
      const c = toCniError(e, 'ADD');
      assert.equal(c.code, CniCode.HostPortConflict);
      assert.equal(c.details, 'runtimeConfig.portMappings');
      return true;
    });
    assert.deepEqual(s.list().map((r) => `${r.name}=${r.containerId}`), ['tcp-any-8080=pod-a', 'udp-any-53=pod-a']);
    assert.deepEqual(readdirSync(s.dir).sort(), ['lock', 'tcp-any-8080', 'udp-any-53'], 'no temp file, no record of pod-b');
  });
});

test('store: every address conflicts with one address on the same port, both ways; other ports and protocols do not', () => {
  withDir((dir) => {
    const s = HostPortStore.open(dir);
    s.reserve(owner('a'), [tcp(80, 80, '10.0.0.1')]);
    assert.throws(() => s.reserve(owner('b'), [tcp(80)]), HostPortConflictError);
    s.reserve(owner('c'), [tcp(80, 80, '10.0.0.2')]);
    s.reserve(owner('d'), [tcp(81)]);
    assert.throws(() => s.reserve(owner('e'), [tcp(81, 80, '10.0.0.1')]), HostPortConflictError);
    s.reserve(owner('f'), [{ ...tcp(81), protocol: 'udp' }]);
    // The same pod twice in one request: the same mapping is fine, a different target is not.
    s.reserve(owner('g'), [tcp(90), tcp(90)]);
    assert.throws(() => s.reserve(owner('h'), [tcp(91, 1), tcp(91, 2)]), /hostPort 91\/TCP on every node address \(to container port 2\) overlaps .* \(to container port 1\) in the same request/);
    assert.deepEqual(s.list().map((r) => r.name), ['tcp-10.0.0.1-80', 'tcp-10.0.0.2-80', 'tcp-any-81', 'tcp-any-90', 'udp-any-81']);
  });
});

test('store: a retried ADD keeps its records (new pod address), DEL and GC remove only their own', () => {
  withDir((dir) => {
    const s = HostPortStore.open(dir);
    s.reserve(owner('a'), [tcp(80)]);
    s.reserve(owner('a', '10.200.0.9'), [tcp(80)]);
    assert.equal(s.list()[0]!.podIp, '10.200.0.9');
    s.reserve(owner('b'), [tcp(81)]);
    s.reserve(owner('c', '10.200.1.2', 'other'), [tcp(82)]);
    assert.deepEqual(s.releaseOwner({ network: 'patu', containerId: 'a', ifname: 'eth0' }), ['tcp-any-80']);
    assert.deepEqual(s.releaseOwner({ network: 'patu', containerId: 'a', ifname: 'eth0' }), [], 'DEL twice is fine');
    // GC of network patu with nothing valid: b goes, c is another network's.
    assert.deepEqual(s.gc('patu', []), ['tcp-any-81']);
    assert.deepEqual(s.gc('other', [{ containerId: 'c', ifname: 'eth0' }]), []);
    assert.deepEqual(s.list().map((r) => r.name), ['tcp-any-82']);
  });
});

test('store: leftovers of a crash are swept, junk files are reported and never block', () => {
  withDir((dir) => {
    const s = HostPortStore.open(dir);
    writeFileSync(join(s.dir, '.tmp.tcp-any-80.123.abc'), '{"half');
    writeFileSync(join(s.dir, 'tcp-any-81'), 'not json');
    writeFileSync(join(s.dir, 'README'), 'hi');
    const fifo = join(s.dir, 'tcp-any-82');
    const made = spawnSync('mkfifo', [fifo]).status === 0;
    const bad: string[] = [];
    assert.deepEqual(s.list({ bad: (n) => bad.push(n) }), []);
    assert.deepEqual(bad.sort(), ['README', 'tcp-any-81', ...(made ? ['tcp-any-82'] : [])].sort());
    s.reserve(owner('a'), [tcp(80)]);
    assert.ok(!existsSync(join(s.dir, '.tmp.tcp-any-80.123.abc')), 'a locked writer sweeps temp files');
    // A record that cannot be read still names its port: a new one there is refused by link(2).
    assert.throws(() => s.reserve(owner('b'), [tcp(81)]), /appeared and vanished|already taken/);
  });
});

test('store: DEL and GC on a data directory that never had a hostPort create nothing', () => {
  withDir((dir) => {
    const s = HostPortStore.open(dir, { create: false });
    assert.equal(s.exists, false);
    assert.deepEqual(s.releaseOwner({ network: 'patu', containerId: 'a', ifname: 'eth0' }), []);
    assert.deepEqual(s.gc('patu', []), []);
    assert.deepEqual(readdirSync(dir), []);
  });
});

test('entries: a wildcard or specific VIP with one backend, refs in their own namespace', () => {
  const rec = { name: 'tcp-any-8080', protocol: 'tcp' as const, hostIP: '', hostPort: 8080, containerPort: 80, network: 'patu', containerId: 'x', ifname: 'eth0', podIp: '10.200.0.5' };
  const e = hostPortEntry(rec);
  assert.deepEqual(
    { key: e.key, vip: e.vip, port: e.port, protocol: e.protocol, backends: e.backends, affinity: e.affinity },
    { key: '0.0.0.0:8080/TCP', vip: '0.0.0.0', port: 8080, protocol: 'TCP', backends: ['10.200.0.5:80'], affinity: false },
  );
  assert.ok(isHostPortRef(e.ref) && !isHostPortRef('default/kubernetes'));
  assert.ok(e.name.length <= 63 && e.name.slice(0, e.name.lastIndexOf(':')) === e.ref, 'the ref survives a restart through the meta name');
  const spec = hostPortEntry({ ...rec, name: 'udp-255.255.255.255-65535', protocol: 'udp', hostIP: '255.255.255.255', hostPort: 65535 });
  assert.equal(spec.key, '255.255.255.255:65535/UDP');
  assert.ok(spec.name.length <= 63);
  // Overlapping records (only written around the plugin): the first by name wins.
  const { desired, overlaps: o } = hostPortDesired([rec, { ...rec, name: 'tcp-10.0.0.1-8080', hostIP: '10.0.0.1', podIp: '10.200.0.7' }]);
  assert.deepEqual([...desired.keys()], ['10.0.0.1:8080/TCP']);
  assert.deepEqual(o.map((x) => [x.record.name, x.keptName]), [['tcp-any-8080', 'tcp-10.0.0.1-8080']]);
});

test('watcher: records become one resync each, changes are picked up, conflicts reported once', async () => {
  const dir = mkdtempSync(join(tmpdir(), `patu-hostport-watch-${process.pid}-`));
  const applied: Map<string, DesiredServicePort>[] = [];
  let conflictNext = false;
  const stats = (): ApplyStats => ({ ops: 0, services: 0, syscallBatches: 0, ms: 0, attachedNow: false });
  const sink = {
    resync(d: ReadonlyMap<string, DesiredServicePort>): ApplyStats {
      applied.push(new Map(d));
      return conflictNext ? { ...stats(), conflicts: [{ key: '0.0.0.0:8080/TCP', wanted: 'patu:hostport/tcp-any-8080', heldBy: 'default/web' }] } : stats();
    },
    applyChanges(): ApplyStats {
      throw new Error('the watcher resyncs its partition');
    },
  };
  const conflicts: string[] = [];
  const w = hostPortsWatch({ dataDir: dir, sink, resyncMs: 0, debounceMs: 5, onConflict: (c) => conflicts.push(`${c.kind} ${c.record}`) });
  try {
    assert.ok(existsSync(join(dir, HOSTPORT_DIR)), 'the directory exists for fs.watch');
    assert.equal(applied.length, 1);
    assert.equal(applied[0]!.size, 0);
    HostPortStore.open(dir).reserve(owner('a'), [tcp(8080)]);
    const until = async (what: string, ok: () => boolean): Promise<void> => {
      for (let i = 0; i < 200 && !ok(); i++) await new Promise((r) => setTimeout(r, 10));
      assert.ok(ok(), what);
    };
    await until('fs.watch picks up the new record', () => applied.at(-1)?.has('0.0.0.0:8080/TCP') === true);
    assert.deepEqual(applied.at(-1)!.get('0.0.0.0:8080/TCP')!.backends, ['10.200.0.5:80']);
    conflictNext = true;
    w.sync();
    w.sync();
    assert.deepEqual(conflicts, ['service tcp-any-8080'], 'reported when it appears, not on every resync');
    assert.equal(w.conflicts.length, 1);
    conflictNext = false;
    HostPortStore.open(dir).releaseOwner({ network: 'patu', containerId: 'a', ifname: 'eth0' });
    await until('a removed record is removed', () => applied.at(-1)?.size === 0);
    assert.equal(w.conflicts.length, 0);
  } finally {
    w.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
