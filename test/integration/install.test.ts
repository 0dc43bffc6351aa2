// `bin/patu install --root <tmp>` and `patu uninstall` end to end (needs root: the
// installed plugin sets up a real pod in a netns the test makes, and uninstall
// removes pins from bpffs). Checks the files, idempotency, the refusal to take
// over foreign files, that the installed copy (not the checkout) serves CNI
// ADD/DEL, and that uninstall leaves the staging root exactly as it found it.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, realpathSync, rmSync, writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  addNetns, delNetns, describe as show, execPlugin, isRoot, netnsPath, nsRun, patuFlavour, PATU_BIN, REPO_ROOT, type Flavour,
} from '../helpers/cni.js';

const ROOT = isRoot();
const tag = `in${process.pid.toString(36)}`;

/** Every path under dir with a fingerprint (type, symlink target or content hash). */
function tree(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (d: string): void => {
    for (const name of readdirSync(d).sort()) {
      const p = join(d, name);
      const st = lstatSync(p);
      const rel = p.slice(dir.length);
      if (st.isSymbolicLink()) out.set(rel, `link:${readlinkSync(p)}`);
      else if (st.isDirectory()) {
        out.set(rel, 'dir');
        walk(p);
      } else out.set(rel, `file:${createHash('sha256').update(readFileSync(p)).digest('hex')}`);
    }
  };
  walk(dir);
  return out;
}

/** tree() without the installed prefix's thousands of node_modules files. */
function outline(dir: string): Map<string, string> {
  return new Map([...tree(dir)].filter(([p]) => !p.includes('/node_modules/')));
}

function patu(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(PATU_BIN, args, { encoding: 'utf8', timeout: 120_000, env: { ...process.env, NODE_EXTRA_CA_CERTS: '' } });
  return { status: r.status, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
}

const said = (r: { status: number | null; stdout: string; stderr: string }): string =>
  `exit=${r.status} stdout=${r.stdout.slice(0, 1500)} stderr=${r.stderr.slice(0, 1500)}`;

if (!ROOT) test('patu install/uninstall', { skip: 'needs root: runs the installed CNI plugin in a network namespace and removes bpffs pins' }, () => {});

describe('patu install / uninstall into a staging root', { skip: !ROOT ? 'needs root' : !existsSync(join(REPO_ROOT, 'dist', 'cni.cjs')) ? 'not built (bash scripts/build.sh)' : false }, () => {
  let work: string;
  let root: string;
  let before0: Map<string, string>;
  const foreign = ['/opt/cni/bin/bridge', '/etc/cni/net.d/99-other.conflist', '/etc/systemd/system/other.service', '/var/lib/patu/ipam/keep'];
  const pinRoot = `/sys/fs/bpf/patu-test-${tag}`;
  const pinSibling = `/sys/fs/bpf/patu-test-${tag}-other`;
  let flavour: Flavour | undefined;
  const netnses: string[] = [];

  before(() => {
    work = mkdtempSync(join(tmpdir(), `patu-${tag}-`));
    root = join(work, 'root');
    // Files of other software (and of patu's own IPAM) that install must not touch.
    for (const f of foreign) {
      mkdirSync(join(root, f, '..'), { recursive: true });
      writeFileSync(join(root, f), `not patu's: ${f}\n`);
    }
    before0 = tree(root);
  });

  after(() => {
    for (const ns of netnses) delNetns(ns);
    flavour?.destroy();
    rmSync(pinRoot, { recursive: true, force: true });
    rmSync(pinSibling, { recursive: true, force: true });
    rmSync(work, { recursive: true, force: true });
  });

  test('install writes the prefix, the CNI link, the conflist, the unit and a manifest of exactly those', () => {
    const r = patu(['install', '--root', root, '--json']);
    assert.equal(r.status, 0, said(r));
    const { manifest } = JSON.parse(r.stdout);
    assert.deepEqual(
      manifest.entries.map((e: { path: string; kind: string }) => `${e.kind} ${e.path}`),
      ['tree /usr/lib/patu', 'symlink /opt/cni/bin/patu', 'file /etc/cni/net.d/10-patu.conflist', 'file /etc/systemd/system/patu-agent.service'],
    );
    assert.equal(readlinkSync(join(root, 'opt/cni/bin/patu')), '../../../usr/lib/patu/bin/patu');
    assert.equal(realpathSync(join(root, 'opt/cni/bin/patu')), join(root, 'usr/lib/patu/bin/patu'));
    for (const f of ['bin/patu', 'dist/cni.cjs', 'dist/src/cli/index.js', 'dist/agent/index.js', 'build/bpf/accel.o', 'build/bpf/sock_lb.o', 'package.json', 'node_modules/koffi/package.json', 'node_modules/commander/package.json']) {
      assert.ok(existsSync(join(root, 'usr/lib/patu', f)), `prefix has ${f}`);
    }
    // Development-only packages stay out of an installed copy.
    for (const dev of ['typescript', 'fast-check', 'esbuild', '@typescript']) {
      assert.ok(!existsSync(join(root, 'usr/lib/patu/node_modules', dev)), `no dev dependency ${dev}`);
    }
    assert.ok(!existsSync(join(root, 'usr/lib/patu/dist/test')), 'no compiled tests in the prefix');
    // The eBPF objects patu loads, and not the test fixtures (build/test/bpf/).
    assert.deepEqual(readdirSync(join(root, 'usr/lib/patu/build')), ['bpf']);
    assert.deepEqual(readdirSync(join(root, 'usr/lib/patu/build/bpf')).sort(), ['accel.o', 'nodeport.o', 'policy.o', 'routed.o', 'sock_destroy.o', 'sock_lb.o', 'vlan.o']);
    const conf = JSON.parse(readFileSync(join(root, 'etc/cni/net.d/10-patu.conflist'), 'utf8'));
    assert.equal(conf.plugins[0].type, 'patu');
    const unit = readFileSync(join(root, 'etc/systemd/system/patu-agent.service'), 'utf8');
    assert.match(unit, /^ExecStart=\/usr\/lib\/patu\/bin\/patu agent/m);
    assert.ok(!existsSync(join(root, 'run/systemd')), 'nothing started');
    // Foreign files untouched.
    for (const f of foreign) assert.equal(readFileSync(join(root, f), 'utf8'), `not patu's: ${f}\n`);
    // The directories install created are recorded; those that existed are not.
    assert.ok(manifest.createdDirs.includes('/usr/lib/patu') === false && manifest.createdDirs.includes('/usr'));
    assert.ok(!manifest.createdDirs.includes('/opt/cni/bin'), 'existed before');
  });

  test('the installed binary runs from the installed prefix and works as the CLI', () => {
    const r = spawnSync(join(root, 'opt/cni/bin/patu'), ['--version'], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim(), JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')).version);
  });

  test('install again is idempotent: same manifest entries, same files, no temp leftovers', () => {
    const first = outline(root);
    const m1 = JSON.parse(readFileSync(join(root, 'var/lib/patu/install.json'), 'utf8'));
    const r = patu(['install', '--root', root, '--json']);
    assert.equal(r.status, 0, said(r));
    const m2 = JSON.parse(readFileSync(join(root, 'var/lib/patu/install.json'), 'utf8'));
    assert.deepEqual(m2.entries, m1.entries);
    assert.deepEqual(m2.createdDirs, m1.createdDirs);
    const second = outline(root);
    second.delete('/var/lib/patu/install.json');
    first.delete('/var/lib/patu/install.json');
    assert.deepEqual(second, first);
    assert.deepEqual(JSON.parse(r.stdout).written.filter((p: string) => p !== '/usr/lib/patu'), [], 'nothing but the prefix rewritten');
  });

  test('the agent\'s rewrite of the conflist survives a reinstall and is removed by uninstall', () => {
    const path = join(root, 'etc/cni/net.d/10-patu.conflist');
    const agentVersion = readFileSync(path, 'utf8').replace('10.200.0.0/24', '10.200.7.0/24');
    writeFileSync(path, agentVersion);
    const r = patu(['install', '--root', root]);
    assert.equal(r.status, 0, said(r));
    assert.equal(readFileSync(path, 'utf8'), agentVersion);
  });

  test('the installed copy, not the checkout, serves a CNI ADD and DEL in a test netns', { timeout: 60_000 }, async () => {
    const f = patuFlavour();
    flavour = f;
    const bin = join(root, 'opt/cni/bin/patu');
    // NODE_OPTIONS --import runs before the plugin: it records which script Node was
    // started with, so the test sees whether the launcher chose the installed dist/.
    const probe = join(work, 'probe.mjs');
    const seen = join(work, 'seen');
    writeFileSync(probe, `import { appendFileSync } from 'node:fs';\nappendFileSync(${JSON.stringify(seen)}, process.argv[1] + '\\n');\n`);
    const env = {
      // A missing socket: the launcher runs the plugin itself instead of a running agent.
      PATU_AGENT_SOCKET: join(work, 'no-agent.sock'),
      NODE_OPTIONS: `--import=${probe}`,
    };
    const ns = `${tag}a`;
    addNetns(ns);
    netnses.push(ns);
    const conf = f.netconf({ accel: false });
    const add = await execPlugin(bin, 'ADD', conf, { containerId: `${tag}-c1`, netns: netnsPath(ns), env });
    assert.equal(add.code, 0, show(add));
    const ip = add.json.ips[0].address.split('/')[0];
    assert.ok(ip.startsWith(f.prefix + '.'), `address ${ip} from ${f.subnet}`);
    const inside = nsRun(ns, ['ip', '-4', '-o', 'addr', 'show', 'dev', 'eth0']);
    assert.match(inside.stdout, new RegExp(`inet ${ip.replaceAll('.', '\\.')}/`));
    const del = await execPlugin(bin, 'DEL', conf, { containerId: `${tag}-c1`, netns: netnsPath(ns), env });
    assert.equal(del.code, 0, show(del));
    assert.doesNotMatch(nsRun(ns, ['ip', '-o', 'link']).stdout, /eth0/);
    const scripts = readFileSync(seen, 'utf8').trim().split('\n');
    assert.deepEqual(scripts, [join(root, 'usr/lib/patu/dist/cni.cjs'), join(root, 'usr/lib/patu/dist/cni.cjs')]);
  });

  test('install refuses a target it did not create, names it, and writes nothing', () => {
    const other = join(work, 'other-root');
    mkdirSync(join(other, 'etc/cni/net.d'), { recursive: true });
    writeFileSync(join(other, 'etc/cni/net.d/10-patu.conflist'), '{"someone":"else"}\n');
    const was = tree(other);
    const r = patu(['install', '--root', other]);
    assert.notEqual(r.status, 0, said(r));
    assert.match(r.stderr, /etc\/cni\/net\.d\/10-patu\.conflist: exists and was not installed by patu/);
    assert.deepEqual(tree(other), was);
    // Bad input is found before anything is written.
    for (const args of [['--cluster-cidr', '10.1.2.0/28'], ['--pod-cidr', '10.1.2.0']]) {
      const bad = patu(['install', '--root', other, '--force', ...args]);
      assert.notEqual(bad.status, 0, said(bad));
      assert.match(bad.stderr, new RegExp(`${args[0]}: .*${args[1]!.replace(/[./]/g, '\\$&')}`), 'names the flag and the value');
      assert.deepEqual(tree(other), was, args.join(' '));
    }
    // The pod subnet follows the cluster CIDR, like the agent's default.
    const k3s = patu(['install', '--root', other, '--force', '--cni-only', '--cluster-cidr', '10.42.0.0/16']);
    assert.equal(k3s.status, 0, said(k3s));
    const conf = JSON.parse(readFileSync(join(other, 'etc/cni/net.d/10-patu.conflist'), 'utf8'));
    assert.equal(conf.plugins[0].podCIDR, '10.42.0.0/24');
    assert.equal(conf.plugins[0].clusterCIDR, '10.42.0.0/16');
  });

  test('uninstall removes exactly what was recorded and patu\'s pins, and nothing else', () => {
    // The pin root and a sibling that merely shares its name prefix.
    mkdirSync(join(pinRoot, 'links'), { recursive: true });
    mkdirSync(pinSibling, { recursive: true });
    const r = patu(['uninstall', '--root', root, '--pin-root', pinRoot, '--json']);
    assert.equal(r.status, 0, said(r));
    const report = JSON.parse(r.stdout);
    assert.equal(report.pinsRemoved, pinRoot);
    assert.ok(!existsSync(pinRoot), 'patu test pins removed');
    assert.ok(existsSync(pinSibling), 'a neighbour in bpffs is left alone');
    assert.deepEqual(tree(root), before0, 'the staging root is back to what it was before install');
    assert.deepEqual(report.kept.filter((k: { reason: string }) => k.reason !== 'directory not empty'), []);
    // Idempotent: a second uninstall finds nothing to do.
    const again = patu(['uninstall', '--root', root, '--json']);
    assert.equal(again.status, 0, said(again));
    assert.equal(JSON.parse(again.stdout).found, false);
    assert.deepEqual(tree(root), before0);
  });

  test('uninstall keeps a recorded file that someone changed since, and says so', () => {
    const r1 = patu(['install', '--root', root, '--cni-only']);
    assert.equal(r1.status, 0, said(r1));
    assert.ok(!existsSync(join(root, 'etc/systemd/system/patu-agent.service')), '--cni-only: no unit');
    // Replace the CNI link with a file of someone else's.
    rmSync(join(root, 'opt/cni/bin/patu'));
    writeFileSync(join(root, 'opt/cni/bin/patu'), 'replaced by an admin\n');
    const r = patu(['uninstall', '--root', root, '--json']);
    assert.equal(r.status, 0, said(r));
    const report = JSON.parse(r.stdout);
    assert.deepEqual(report.kept.filter((k: { path: string }) => k.path === '/opt/cni/bin/patu').map((k: { reason: string }) => k.reason), ['no longer a symlink to ../../../usr/lib/patu/bin/patu']);
    assert.equal(readFileSync(join(root, 'opt/cni/bin/patu'), 'utf8'), 'replaced by an admin\n');
    assert.ok(!existsSync(join(root, 'usr/lib/patu')));
    rmSync(join(root, 'opt/cni/bin/patu'));
    assert.deepEqual(tree(root), before0);
  });

  test('symlink mode (development): the prefix points at the checkout; uninstall removes the link only', () => {
    const r = patu(['install', '--root', root, '--symlink', '--flavour', 'k3s']);
    assert.equal(r.status, 0, said(r));
    assert.equal(readlinkSync(join(root, 'usr/lib/patu')), REPO_ROOT);
    assert.equal(realpathSync(join(root, 'var/lib/rancher/k3s/data/cni/patu')), join(REPO_ROOT, 'bin/patu'));
    assert.ok(existsSync(join(root, 'var/lib/rancher/k3s/agent/etc/cni/net.d/10-patu.conflist')));
    const u = patu(['uninstall', '--root', root]);
    assert.equal(u.status, 0, said(u));
    assert.ok(existsSync(join(REPO_ROOT, 'bin/patu')), 'the checkout is untouched');
    assert.deepEqual(tree(root), before0);
  });

  test('an install that fails half way takes back what it placed, and a retry then succeeds', () => {
    // The conflist's place holds a directory (taken over with --force): the prefix and the CNI
    // binary are placed before writing the conflist fails.
    const confDir = 'var/lib/rancher/k3s/agent/etc/cni/net.d';
    mkdirSync(join(root, confDir, '10-patu.conflist', 'x'), { recursive: true });
    const withBlocker = tree(root);
    const r = patu(['install', '--root', root, '--flavour', 'k3s', '--cni-only', '--force']);
    assert.notEqual(r.status, 0, 'install must fail');
    assert.match(r.stderr, /k3s\/agent\/etc\/cni\/net\.d\/10-patu\.conflist/, `the error names the path: ${r.stderr}`);
    assert.deepEqual(tree(root), withBlocker, 'nothing of the failed install remains');
    rmSync(join(root, 'var/lib/rancher'), { recursive: true });
    const again = patu(['install', '--root', root, '--flavour', 'k3s', '--cni-only', '--bundle-node']);
    assert.equal(again.status, 0, said(again));
    // --bundle-node: the tree carries a working node for hosts without one (bin/patu runs it first).
    const bundled = join(root, 'usr/lib/patu/node/bin/node');
    const v = spawnSync(bundled, ['--version'], { encoding: 'utf8' });
    assert.equal(v.stdout.trim(), process.version, `${bundled} --version: ${v.stderr}`);
    writeFileSync(bundled, `#!/bin/sh\necho bundled node ran >&2\nexec ${process.execPath} "$@"\n`);
    const viaLauncher = spawnSync(join(root, 'usr/lib/patu/bin/patu'), ['--version'], { encoding: 'utf8' });
    assert.match(viaLauncher.stderr, /bundled node ran/, 'the launcher prefers the bundled node');
    assert.equal(viaLauncher.status, 0, viaLauncher.stderr);
    const u = patu(['uninstall', '--root', root]);
    assert.equal(u.status, 0, said(u));
    assert.deepEqual(tree(root), before0);
  });

  test('microshift: the CRI-O drop-in is installed and removed with the rest', () => {
    const r = patu(['install', '--root', root, '--flavour', 'microshift', '--cni-only', '--no-conflist']);
    assert.equal(r.status, 0, said(r));
    assert.match(readFileSync(join(root, 'etc/crio/crio.conf.d/50-patu.conf'), 'utf8'), /cni_default_network = "patu"/);
    assert.ok(lstatSync(join(root, 'usr/libexec/cni/patu')).isSymbolicLink());
    assert.ok(!existsSync(join(root, 'etc/cni/net.d/10-patu.conflist')), '--no-conflist');
    // The agent writes it later; it is recorded now so uninstall removes it too.
    const manifest = JSON.parse(readFileSync(join(root, 'var/lib/patu/install.json'), 'utf8')) as { entries: { path: string; managed?: boolean }[] };
    assert.deepEqual(manifest.entries.filter((e) => e.path === '/etc/cni/net.d/10-patu.conflist').map((e) => e.managed), [true]);
    writeFileSync(join(root, 'etc/cni/net.d/10-patu.conflist'), '{"written":"by the agent"}');
    const u = patu(['uninstall', '--root', root]);
    assert.equal(u.status, 0, said(u));
    assert.deepEqual(tree(root), before0);
  });
});
