// scripts/k8s/images.sh: the upstream-named images the [sig-network] conformance specs pull, assembled
// without a registry. What the specs rely on is checked inside each image's own root (chroot, /proc mounted in
// a private mount namespace, a private netns for nginx), and `import` against a private containerd:
//   - exact names, entrypoints and users (agnhost /agnhost pause, pause 65535, CoreDNS 65532 + its file capability),
//   - agnhost's contract: OpenBSD nc (not busybox's, which a busybox sh would run first), dig, nslookup, curl,
//     getent, /coredns, porter's TLS files, uid 1000 in gid 50000,
//   - jessie-dnsutils runs the DNS probe loop's tools; nginx serves on :80,
//   - the same inputs give the same digests, a second build is a cache hit, a second import skips.
// Needs root, the binaries of `scripts/k8s/build.sh --with-suite` and the Debian tools setup.sh installs; skips
// saying which is missing. Builds into a temp cache (linked to the real binaries); its containerd lives in a
// temp dir with its own socket and is stopped by pid.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { REPO_ROOT } from '../helpers/cni.js';

const VERSION = 'v1.34.4';
const CACHE = process.env.PATU_K8S_CACHE ?? '/var/cache/patu/k8s';
const BIN = join(CACHE, VERSION, 'bin');
const SCRIPT = join(REPO_ROOT, 'scripts/k8s/images.sh');
const has = (cmd: string): boolean => spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;
const missingBin = ['agnhost', 'coredns', 'regression-issue-74839'].find((b) => !existsSync(join(BIN, b)));
const missingTool = ['dig', 'nslookup', 'nc.openbsd', 'curl', 'wget', 'getent', 'busybox', 'dash', 'setcap', 'getcap', 'ldconfig', 'gcc', 'dpkg-deb', 'apt-get', 'unshare', 'containerd', 'ctr']
  .find((t) => !has(t));
const skip = process.getuid?.() !== 0 ? 'needs root (chroot, setcap, containerd)'
  : missingBin ? `no ${missingBin} in ${BIN} (bash scripts/k8s/build.sh --with-suite)`
    : !existsSync(join(CACHE, 'gopath/pkg/mod/k8s.io/kubernetes@' + VERSION)) ? 'no k8s.io/kubernetes module in the cache (scripts/k8s/build.sh)'
      : missingTool ? `no ${missingTool} (scripts/setup.sh installs it)` : false;

const IMAGES: Record<string, string> = {
  'pause.tar': 'registry.k8s.io/pause:3.10.1',
  'agnhost.tar': 'registry.k8s.io/e2e-test-images/agnhost:2.56',
  'jessie-dnsutils.tar': 'registry.k8s.io/e2e-test-images/jessie-dnsutils:1.7',
  'busybox.tar': 'registry.k8s.io/e2e-test-images/busybox:1.37.0-1',
  'nginx.tar': 'registry.k8s.io/e2e-test-images/nginx:1.14-4',
  'regression-issue-74839.tar': 'registry.k8s.io/e2e-test-images/regression-issue-74839:1.2',
  'coredns.tar': 'registry.k8s.io/coredns/coredns:v1.12.1',
};

let tmp = '';
let cache = '';
let out = '';
let ctrd: ChildProcess | undefined;
const roots: Record<string, string> = {};
const configs: Record<string, any> = {};

function images(...args: string[]): { code: number; out: string } {
  const r = spawnSync('bash', [SCRIPT, ...args], { encoding: 'utf8', env: { ...process.env, PATU_K8S_CACHE: cache }, timeout: 300_000 });
  return { code: r.status ?? -1, out: `${r.stdout}${r.stderr}` };
}
function sh(cmd: string, timeout = 60_000): { code: number; out: string } {
  const r = spawnSync('bash', ['-c', cmd], { encoding: 'utf8', timeout });
  return { code: r.status ?? -1, out: `${r.stdout}${r.stderr}` };
}
// Runs a shell command inside an image root as its containers would: /proc and /dev mounted (private mount
// namespace, gone with the process), the image's PATH, /bin/sh of the image.
function inImage(image: string, cmd: string, opts: { netns?: boolean } = {}): { code: number; out: string } {
  const root = roots[image] ?? assert.fail(`${image} not unpacked (the build test failed?)`);
  const path = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
  // $0 = the image root, $1 = the command: passed as arguments, so the host's shell expands nothing in them.
  const setup = `mount -t proc proc "$0/proc" && mount --rbind /dev "$0/dev" && ${opts.netns ? 'ip link set lo up && ' : ''}exec env -i PATH=${path} chroot "$0" /bin/sh -c "$1"`;
  const r = spawnSync('unshare', ['--mount', '--fork', ...(opts.netns ? ['--net'] : []), 'bash', '-c', setup, root, cmd],
    { encoding: 'utf8', timeout: 60_000 });
  return { code: r.status ?? -1, out: `${r.stdout}${r.stderr}` };
}
function digests(): Record<string, string> {
  return Object.fromEntries(Object.keys(IMAGES).map((f) => [f, readFileSync(join(out, `${f}.digest`), 'utf8').trim()]));
}
// The one layer and the config of an OCI archive, unpacked (with xattrs) into tmp/<name>/.
function unpack(file: string): void {
  const dir = join(tmp, file.replace(/\.tar$/, ''));
  mkdirSync(join(dir, 'oci'), { recursive: true });
  mkdirSync(join(dir, 'root'), { recursive: true });
  assert.equal(sh(`tar -C ${dir}/oci -xf ${join(out, file)}`).code, 0);
  const index = JSON.parse(readFileSync(join(dir, 'oci/index.json'), 'utf8'));
  assert.equal(index.manifests[0].annotations['io.containerd.image.name'], IMAGES[file], `${file}: image name`);
  const blob = (d: string) => join(dir, 'oci/blobs/sha256', d.replace(/^sha256:/, ''));
  const manifest = JSON.parse(readFileSync(blob(index.manifests[0].digest), 'utf8'));
  assert.equal(manifest.layers.length, 1);
  configs[file] = JSON.parse(readFileSync(blob(manifest.config.digest), 'utf8')).config;
  const r = sh(`tar --xattrs --xattrs-include='*' -C ${dir}/root -xf ${blob(manifest.layers[0].digest)}`);
  assert.equal(r.code, 0, r.out);
  roots[file] = join(dir, 'root');
}

before(() => {
  if (skip) return;
  tmp = mkdtempSync(join(tmpdir(), 'patu-test-images-'));
  cache = join(tmp, 'cache');
  mkdirSync(join(cache, VERSION), { recursive: true });
  symlinkSync(BIN, join(cache, VERSION, 'bin'));
  symlinkSync(join(CACHE, 'gopath'), join(cache, 'gopath'));
  if (existsSync(join(CACHE, 'debs'))) symlinkSync(join(CACHE, 'debs'), join(cache, 'debs'));
  out = join(cache, VERSION, 'images');
});

after(async () => {
  if (ctrd?.pid) {
    ctrd.kill('SIGTERM');
    for (let i = 0; i < 50 && ctrd.exitCode === null && ctrd.signalCode === null; i++) await sleep(100);
    if (ctrd.exitCode === null && ctrd.signalCode === null) ctrd.kill('SIGKILL');
  }
  if (tmp) {
    // containerd's snapshots may still be mounted if it died hard.
    sh(`grep -o ' ${tmp}[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l`);
    rmSync(tmp, { recursive: true, force: true });
  }
});

test('build: all seven images, deterministic, then a cache hit', { skip, timeout: 600_000 }, () => {
  const first = images('build');
  assert.equal(first.code, 0, first.out);
  for (const f of Object.keys(IMAGES)) assert.ok(statSync(join(out, f)).size > 0, `${f} built`);
  const d1 = digests();
  rmSync(join(out, '.key')); // forces a full reassembly from the same inputs
  const second = images('build');
  assert.equal(second.code, 0, second.out);
  assert.deepEqual(digests(), d1, 'the same inputs must give the same manifest digests');
  const third = images('build');
  assert.equal(third.code, 0, third.out);
  assert.match(third.out, /== images: cached/);
  const list = images('list');
  assert.equal(list.code, 0);
  for (const [f, name] of Object.entries(IMAGES)) assert.ok(list.out.includes(`${name}\t${join(out, f)}`), `list has ${name}`);
  for (const f of Object.keys(IMAGES)) unpack(f);
});

test('agnhost:2.56 keeps the upstream image contract', { skip }, () => {
  const c = configs['agnhost.tar'];
  assert.deepEqual(c.Entrypoint, ['/agnhost']);
  assert.deepEqual(c.Cmd, ['pause']);
  assert.equal(c.WorkingDir, '/');
  const r = inImage('agnhost.tar', [
    'for t in nc dig nslookup curl getent bash; do command -v $t; done',
    'nc -h 2>&1 | head -1',
    'dig -v 2>&1',
    'curl --version | head -1',
    'getent hosts localhost >/dev/null && echo getent-ok',
    '/agnhost --help >/dev/null && /agnhost-2 --help >/dev/null && echo agnhost-ok',
    '/coredns -version | head -1',
    'test -s /localhost.crt && test -s /localhost.key && echo tls-ok',
    'id user-defined-in-image',
    'test -d /uploads && echo uploads-ok',
  ].join('; '));
  assert.equal(r.code, 0, r.out);
  assert.match(r.out, /^\/usr\/bin\/nc$/m, 'nc is the real one, found before any busybox applet');
  assert.match(r.out, /^\/usr\/bin\/dig$/m);
  assert.match(r.out, /^\/usr\/bin\/nslookup$/m);
  assert.match(r.out, /OpenBSD netcat/);
  assert.match(r.out, /DiG 9\./);
  assert.match(r.out, /^curl /m);
  assert.match(r.out, /getent-ok/);
  assert.match(r.out, /agnhost-ok/);
  assert.match(r.out, /CoreDNS-1\.12\.1/);
  assert.match(r.out, /tls-ok/);
  assert.match(r.out, /uid=1000\(user-defined-in-image\).*50000\(group-defined-in-image\)/);
  assert.match(r.out, /uploads-ok/);
});

test('agnhost:2.56 runs the Service specs\' up-check: wget -q -O - -T 1 answers, one try when nothing listens', { skip }, () => {
  // verifyServeHostnameServiceUp (test/e2e/network/service.go) loops this in an agnhost exec pod; busybox 1.35's
  // wget segfaulted on -T there, so every check failed with "Segmentation fault".
  const r = inImage('agnhost.tar', [
    'command -v wget',
    '/agnhost serve-hostname --port 9376 >/dev/null 2>&1 & sleep 1',
    'wget -q -O - -T 1 http://127.0.0.1:9376 2>&1; echo " rc=$?"',
    's=$(date +%s); wget -q -O - -T 1 http://127.0.0.1:9377 2>&1; echo "refused rc=$? took=$(($(date +%s) - s))"',
    'kill %1',
  ].join('; '), { netns: true });
  assert.match(r.out, /^\/usr\/bin\/wget$/m, r.out);
  assert.doesNotMatch(r.out, /Segmentation fault/, r.out);
  assert.match(r.out, /\S+ rc=0/, `serve-hostname's answer through wget: ${r.out}`);
  assert.match(r.out, /refused rc=[1-9]\d* took=[01]$/m, `a refused connect fails at once, not after retries: ${r.out}`);
});

test('jessie-dnsutils:1.7 runs the DNS probe loop tools', { skip }, () => {
  // The shape of dns_common.go's probe command (one iteration), against a name in /etc/hosts.
  const r = inImage('jessie-dnsutils.tar',
    'for i in `seq 1 1`; do test -n "$(getent hosts localhost)" && echo hosts-OK; command -v dig; command -v nslookup; dig -v 2>&1; sleep 0; done');
  assert.equal(r.code, 0, r.out);
  assert.match(r.out, /hosts-OK/);
  assert.match(r.out, /^\/usr\/bin\/dig$/m);
  assert.match(r.out, /^\/usr\/bin\/nslookup$/m);
});

test('nginx:1.14-4 serves its index on :80', { skip }, () => {
  assert.deepEqual(configs['nginx.tar'].Cmd, ['nginx', '-g', 'daemon off;']);
  // Its logs go to /dev/stdout and /dev/stderr, which cannot be opened when they are sockets (as here, not in a
  // container where they are fifos): a file stands in for them.
  const r = inImage('nginx.tar', 'nginx -g "daemon off;" >/tmp/nginx.log 2>&1 & sleep 1; wget -qO- http://127.0.0.1:80/; kill %1; wait; cat /tmp/nginx.log', { netns: true });
  assert.match(r.out, /Welcome to nginx!/, r.out);
});

test('busybox, regression-issue-74839, pause and coredns: entrypoints and users as upstream', { skip }, () => {
  assert.deepEqual(configs['busybox.tar'].Cmd, ['sh']);
  assert.match(inImage('busybox.tar', 'echo ok; sleep 0').out, /^ok$/m);
  assert.deepEqual(configs['regression-issue-74839.tar'].Entrypoint, ['/regression-issue-74839']);
  assert.deepEqual(configs['pause.tar'].Entrypoint, ['/pause']);
  assert.equal(configs['pause.tar'].User, '65535:65535');
  assert.deepEqual(configs['coredns.tar'].Entrypoint, ['/coredns']);
  assert.equal(configs['coredns.tar'].User, '65532:65532');
  // Without the file capability a non-root CoreDNS cannot bind :53.
  const cap = sh(`getcap ${roots['coredns.tar']}/coredns`);
  assert.match(cap.out, /cap_net_bind_service[=+]+ep/, cap.out);
});

test('import: into a containerd under the exact names; a second import skips', { skip, timeout: 300_000 }, async () => {
  const d = join(tmp, 'containerd');
  mkdirSync(d, { recursive: true });
  const sock = join(d, 'sock');
  const config = [
    'version = 2', `root = "${d}/root"`, `state = "${d}/state"`, 'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
    '[grpc]', `  address = "${sock}"`, '[ttrpc]', `  address = "${sock}.ttrpc"`,
  ].join('\n');
  spawnSync('bash', ['-c', `cat > ${d}/config.toml`], { input: config });
  ctrd = spawn('containerd', ['--config', join(d, 'config.toml')], { stdio: 'ignore' });
  for (let i = 0; i < 100 && sh(`ctr --address ${sock} version`).code !== 0; i++) await sleep(100);
  const first = images('import', '--address', sock, '--namespace', 'k8s.io');
  assert.equal(first.code, 0, first.out);
  const ls = sh(`ctr --address ${sock} -n k8s.io images ls -q`);
  for (const name of Object.values(IMAGES)) assert.match(ls.out, new RegExp(`^${name.replace(/[.]/g, '\\.')}$`, 'm'), `${name} imported`);
  const again = images('import', '--address', sock, '--namespace', 'k8s.io');
  assert.equal(again.code, 0, again.out);
  assert.equal((again.out.match(/already there/g) ?? []).length, Object.keys(IMAGES).length, again.out);
  const bad = images('import');
  assert.notEqual(bad.code, 0);
  assert.match(bad.out, /--address SOCK is required/);
});
