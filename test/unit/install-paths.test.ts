// Path selection of `patu install`: flavour defaults, explicit overrides, the
// staging root, and the refusals that keep uninstall from removing shared directories.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { dirname, resolve } from 'node:path';
import {
  cniLinkTarget, crioDropIn, FLAVOUR_DEFAULTS, FLAVOURS, InstallPathError, resolvePaths, within,
} from '../../src/install/paths.js';


test('each flavour picks the paths its runtime reads', () => {
  const expected: Record<string, [string, string]> = {
    kubeadm: ['/opt/cni/bin', '/etc/cni/net.d'],
    k3s: ['/var/lib/rancher/k3s/data/cni', '/var/lib/rancher/k3s/agent/etc/cni/net.d'],
    microshift: ['/usr/libexec/cni', '/etc/cni/net.d'],
    podman: ['/usr/lib/cni', '/etc/cni/net.d'],
  };
  assert.deepEqual([...FLAVOURS].sort(), Object.keys(expected).sort());
  for (const f of FLAVOURS) {
    const p = resolvePaths({ flavour: f });
    assert.equal(p.cniBinDir, expected[f]![0], f);
    assert.equal(p.cniConfDir, expected[f]![1], f);
    assert.equal(p.cniBinary, `${expected[f]![0]}/patu`, f);
    assert.equal(p.conflist, `${expected[f]![1]}/10-patu.conflist`, f);
    assert.equal(p.unit, '/etc/systemd/system/patu-agent.service');
    assert.equal(p.manifest, '/var/lib/patu/install.json');
    assert.equal(p.prefix, '/usr/lib/patu');
    // Only MicroShift's CRI-O needs to be told which network to wait for.
    assert.equal(p.crioDropIn, f === 'microshift' ? '/etc/crio/crio.conf.d/50-patu.conf' : undefined, f);
  }
  assert.equal(resolvePaths().flavour, 'kubeadm');
});

test('explicit directories win over the flavour, and are normalised', () => {
  const p = resolvePaths({ flavour: 'k3s', cniBinDir: '/srv/cni/bin/', cniConfDir: '/srv//cni/conf' });
  assert.equal(p.cniBinDir, '/srv/cni/bin');
  assert.equal(p.cniConfDir, '/srv/cni/conf');
  assert.equal(p.cniBinary, '/srv/cni/bin/patu');
  assert.equal(p.flavour, 'k3s');
  const q = resolvePaths({ flavour: 'k3s', cniBinDir: '/a' });
  assert.equal(q.cniConfDir, FLAVOUR_DEFAULTS.k3s.cniConfDir, 'the other directory keeps the flavour default');
});

test('a staging root moves where files are written, not the paths the host will see', () => {
  const p = resolvePaths({ root: '/tmp/stage/' });
  assert.equal(p.root, '/tmp/stage/');
  assert.equal(p.staged(p.cniBinary), '/tmp/stage/opt/cni/bin/patu');
  assert.equal(p.cniBinary, '/opt/cni/bin/patu');
  assert.equal(resolvePaths({ root: '/' }).staged('/etc/x'), '/etc/x');
  assert.equal(resolvePaths({}).staged('/etc/x'), '/etc/x');
});

test('the CNI link: absolute on a live host, relative (and resolving to the prefix) in a staging root', () => {
  const live = resolvePaths({ flavour: 'k3s', prefix: '/opt/patu' });
  assert.equal(cniLinkTarget(live), '/opt/patu/bin/patu');
  for (const f of FLAVOURS) {
    const p = resolvePaths({ flavour: f, root: '/tmp/r' });
    const t = cniLinkTarget(p);
    assert.ok(!t.startsWith('/'), `${f}: ${t} is relative`);
    assert.equal(resolve(dirname(p.staged(p.cniBinary)), t), '/tmp/r/usr/lib/patu/bin/patu', f);
  }
});

test('bad input is refused with the flag and the reason', () => {
  const cases: Array<[object, string, RegExp]> = [
    [{ flavour: 'k8s' }, '--flavour', /unknown flavour "k8s".*kubeadm, k3s, microshift, podman/],
    [{ cniBinDir: 'opt/cni/bin' }, '--cni-bin-dir', /absolute/],
    [{ cniConfDir: '' }, '--cni-conf-dir', /empty/],
    [{ prefix: '/' }, '--prefix', /not be \//],
    [{ root: 'stage' }, '--root', /absolute/],
    // Uninstall removes the prefix tree: it must not hold anything shared.
    [{ prefix: '/etc' }, '--prefix', /contains --cni-conf-dir \/etc\/cni\/net.d/],
    [{ prefix: '/var/lib' }, '--prefix', /contains --state-dir/],
    [{ prefix: '/opt/cni' }, '--prefix', /contains --cni-bin-dir/],
    [{ prefix: '/etc/systemd' }, '--prefix', /systemd unit dir/],
  ];
  for (const [opts, field, msg] of cases) {
    assert.throws(() => resolvePaths(opts), (e: unknown) => {
      assert.ok(e instanceof InstallPathError, String(e));
      assert.equal(e.field, field);
      assert.match(e.message, msg);
      return true;
    }, JSON.stringify(opts));
  }
});

test('within() is a path check, not a string prefix check', () => {
  assert.equal(within('/usr/lib/patu/bin', '/usr/lib/patu'), true);
  assert.equal(within('/usr/lib/patu', '/usr/lib/patu'), true);
  assert.equal(within('/usr/lib/patu-old', '/usr/lib/patu'), false);
  assert.equal(within('/usr/lib', '/usr/lib/patu'), false);
});

test('the CRI-O drop-in names patu\'s network and its binary directory', () => {
  const p = resolvePaths({ flavour: 'microshift' });
  const text = crioDropIn(p);
  assert.match(text, /^\[crio\.network\]$/m);
  assert.match(text, /^cni_default_network = "patu"$/m);
  assert.match(text, /"\/usr\/libexec\/cni"/);
  assert.match(text, /^network_dir = "\/etc\/cni\/net.d\/"$/m);
});
