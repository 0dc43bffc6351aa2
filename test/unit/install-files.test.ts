// install()/uninstall() on a small fabricated patu tree into a temporary staging
// root: no root privileges and no kernel needed, so these run everywhere. The
// root-only integration test (test/integration/install.test.ts) does the same
// with the real build and runs the installed plugin.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { checkSource, install, InstallError, productionModules, readManifest, uninstall } from '../../src/install/install.js';
import { resolvePaths } from '../../src/install/paths.js';
import { parseNetConf } from '../../src/cni/netconf.js';

const work = mkdtempSync(join(tmpdir(), 'patu-install-unit-'));
after(() => rmSync(work, { recursive: true, force: true }));

function put(base: string, files: Record<string, string>): void {
  for (const [rel, content] of Object.entries(files)) {
    mkdirSync(dirname(join(base, rel)), { recursive: true });
    writeFileSync(join(base, rel), content);
  }
}

const pkg = (name: string, deps: Record<string, string> = {}, extra: object = {}) => JSON.stringify({ name, version: '1.0.0', dependencies: deps, ...extra });

function fakeSource(name: string): string {
  const src = join(work, name);
  put(src, {
    'package.json': pkg('patu', { a: '1' }, { devDependencies: { devonly: '1' }, optionalDependencies: { 'other-platform': '1' } }),
    'bin/patu': '#!/bin/sh\necho fake\n',
    'dist/cni.cjs': '// bundle\n',
    'dist/src/cli/index.js': '// cli\n',
    'dist/test/unit/x.test.js': '// not installed\n',
    'build/bpf/accel.o': 'o',
    'build/bpf/sock_lb.o': 'o',
    'build/test/bpf/test_maps.o': 'test fixture',
    'deploy/patu-agent.service': '[Service]\nExecStart=/usr/lib/patu/bin/patu agent\n',
    // a -> b (top level), a -> c (nested in a) -> d (top level); devonly is not reachable.
    'node_modules/a/package.json': pkg('a', { b: '1', c: '1' }),
    'node_modules/b/package.json': pkg('b'),
    'node_modules/a/node_modules/c/package.json': pkg('c', { d: '1' }),
    'node_modules/d/package.json': pkg('d'),
    'node_modules/devonly/package.json': pkg('devonly'),
    'node_modules/.bin/tsc': 'x',
  });
  return src;
}

test('the production closure follows node resolution and leaves dev dependencies out', () => {
  const src = fakeSource('closure');
  assert.deepEqual(productionModules(src), ['node_modules/a', 'node_modules/b', 'node_modules/d']);
  rmSync(join(src, 'node_modules/b'), { recursive: true });
  assert.throws(() => productionModules(src), /node_modules\/b: dependency of node_modules\/a not installed/);
});

test('an unbuilt source is refused with the missing files named', () => {
  const src = fakeSource('unbuilt');
  rmSync(join(src, 'dist/cni.cjs'));
  rmSync(join(src, 'build/bpf/sock_lb.o'));
  assert.throws(() => checkSource(src), (e: unknown) => e instanceof InstallError && /missing dist\/cni\.cjs, build\/bpf\/sock_lb\.o .*scripts\/build\.sh/.test(e.message));
});

test('install, reinstall and uninstall a fabricated tree in a staging root', async () => {
  const src = fakeSource('full');
  const root = join(work, 'root');
  mkdirSync(join(root, 'etc/cni/net.d'), { recursive: true });
  writeFileSync(join(root, 'etc/cni/net.d/05-other.conflist'), 'other');

  const res = install({ source: src, root, flavour: 'podman', prefix: '/opt/patu', clusterCIDR: '10.42.0.0/16' });
  const p = resolvePaths({ root, flavour: 'podman', prefix: '/opt/patu' });
  assert.equal(readlinkSync(p.staged('/usr/lib/cni/patu')), '../../../opt/patu/bin/patu');
  for (const f of ['bin/patu', 'dist/cni.cjs', 'dist/src/cli/index.js', 'node_modules/a/node_modules/c/package.json', 'node_modules/d/package.json', '.patu-install']) {
    assert.ok(existsSync(p.staged(`/opt/patu/${f}`)), f);
  }
  for (const f of ['node_modules/devonly', 'node_modules/.bin', 'dist/test', 'build/test']) assert.ok(!existsSync(p.staged(`/opt/patu/${f}`)), `${f} not installed`);
  assert.equal(readFileSync(p.staged(p.unit), 'utf8'), '[Service]\nExecStart=/opt/patu/bin/patu agent\n', 'unit points at the prefix');

  // The conflist is one the plugin accepts, with the pod subnet from the cluster CIDR.
  const list = JSON.parse(readFileSync(p.staged(p.conflist), 'utf8'));
  const nc = parseNetConf({ cniVersion: list.cniVersion, name: list.name, ...list.plugins[0] });
  assert.equal(nc.clusterCIDR, '10.42.0.0/16');
  assert.deepEqual(JSON.parse(JSON.stringify(nc.ipam.ranges)), [[{ subnet: '10.42.0.0/24' }]]);

  const again = install({ source: src, root, flavour: 'podman', prefix: '/opt/patu', clusterCIDR: '10.42.0.0/16' });
  assert.deepEqual(again.manifest.entries, res.manifest.entries);
  assert.deepEqual(again.written, ['/opt/patu'], 'only the prefix is copied again');
  assert.deepEqual(readManifest(p)?.createdDirs, res.manifest.createdDirs);

  const report = await uninstall({ root });
  assert.equal(report.pinsRemoved, null, 'a staging root never touches bpffs unless asked');
  assert.deepEqual(report.kept, []);
  assert.equal(readFileSync(join(root, 'etc/cni/net.d/05-other.conflist'), 'utf8'), 'other');
  for (const gone of ['/opt', '/usr', '/var', '/etc/systemd', '/etc/cni/net.d/10-patu.conflist']) assert.ok(!existsSync(p.staged(gone)), `${gone} removed`);
  assert.ok(lstatSync(join(root, 'etc/cni/net.d')).isDirectory(), 'a directory that existed before stays');
});

test('uninstall refuses a pin root that is bpffs itself', async () => {
  await assert.rejects(uninstall({ root: join(work, 'empty'), pinRoot: '/sys/fs/bpf' }), /must be a directory below \/sys\/fs\/bpf/);
  await assert.rejects(uninstall({ root: join(work, 'empty'), pinRoot: '/sys/fs/bpf/patu/..' }), /must be a directory below/);
});

test('--cluster-cidr and --pod-cidr are checked as IPv4 CIDRs before anything is written', () => {
  const src = fakeSource('cidrs');
  const root = join(work, 'root-cidrs');
  mkdirSync(root, { recursive: true });
  const bad: [Partial<{ clusterCIDR: string; podCIDR: string }>, RegExp][] = [
    [{ clusterCIDR: '256.0.0.0/8' }, /'256\.0\.0\.0' has an IPv4 octet above 255/],
    [{ clusterCIDR: '010.241.0.0/16' }, /010\.241/],
    [{ clusterCIDR: '10.0.0.0/33' }, /\/33/],
    [{ clusterCIDR: 'fd00::/64' }, /not an IPv4 CIDR/],
    [{ podCIDR: '999.999.999.999/99' }, /999/], // was only matched by a regex
    [{ clusterCIDR: '10.0.0.0/28' }, /smaller than a \/24/],
  ];
  for (const [opts, why] of bad) {
    assert.throws(() => install({ source: src, root, flavour: 'podman', prefix: '/opt/patu', ...opts }),
      (e: unknown) => e instanceof InstallError && /--(cluster|pod)-cidr: /.test(e.message) && why.test(e.message), JSON.stringify(opts));
    assert.deepEqual(readdirSync(root), [], `${JSON.stringify(opts)}: nothing written`);
  }
});
