// NetworkPolicy with podman as the CNI client and no Kubernetes (needs root and podman):
// three busybox containers on a patu network (a web server and two clients), then the
// agent started with `--policy-file` naming them (labels, the server's named port,
// status.podIP). The agent puts its programs on the veths podman's CNI ADDs made
// (attachAll at start), the policy lets only the frontend client reach the server's
// named port, a bad edit of the file keeps that, and removing the policy opens the
// server again. Same private podman setup as podman.test.ts (own containers.conf,
// config dir, storage root); own pin root (the flavour's), agent socket and data dir.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { patuFlavour, type Flavour } from '../helpers/cni.js';
import { PodmanSandbox, podmanSkipReason, ULIMITS } from '../helpers/podman.js';
import { scratchForTests } from '../helpers/kernel.js';

const skip = podmanSkipReason('podman with the CNI backend, eBPF') ?? patuFlavour().skipReason() ?? false;

const scratch = scratchForTests('patu-test-policy-podman');
const names = { web: `polweb-${process.pid}`, front: `polfront-${process.pid}`, other: `polother-${process.pid}` };
const image = `localhost/polbb-${process.pid}:latest`;
let f: Flavour;
let dir = '';
let policyFile = '';
let agent: ChildProcess | undefined;
let log = '';
const ip: Record<keyof typeof names, string> = { web: '', front: '', other: '' };

let sandbox: PodmanSandbox;
const podman = (args: string[], timeoutMs?: number) => sandbox.run(args, timeoutMs);
const show = PodmanSandbox.show;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** One HTTP/1.0 GET from a client container to the web server (busybox wget crashes in this static build; nc speaks HTTP). */
function get(from: 'front' | 'other'): boolean {
  const r = podman(['exec', names[from], '/bin/sh', '-c', `printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 2 ${ip.web} 8080`], 20_000);
  return r.status === 0 && r.stdout.includes(`hello from ${names.web}`);
}
async function expectReach(from: 'front' | 'other', want: boolean, what: string): Promise<void> {
  // The agent applies a file change within its watch window: poll a few times before judging.
  let got = !want;
  for (let i = 0; i < 20 && got !== want; i++) {
    got = get(from);
    if (got !== want) await sleep(250);
  }
  assert.equal(got, want, `${what}: ${from} -> web ${want ? 'should' : 'should not'} connect; agent log:\n${log.slice(-3000)}`);
}

function writePolicy(withPolicy: boolean): void {
  const pod = (name: string, labels: string, addr: string, ports = '') =>
    `apiVersion: v1\nkind: Pod\nmetadata: { name: ${name}, namespace: shop, labels: { ${labels} } }\n${ports}status: { podIP: ${addr} }\n`;
  const docs = [
    'apiVersion: v1\nkind: Namespace\nmetadata: { name: shop }\n',
    pod('web', 'app: web', ip.web, 'spec: { containers: [{ name: httpd, ports: [{ name: http, containerPort: 8080 }] }] }\n'),
    pod('front', 'role: frontend', ip.front),
    pod('other', 'role: other', ip.other),
  ];
  if (withPolicy) {
    docs.push([
      'apiVersion: networking.k8s.io/v1', 'kind: NetworkPolicy', 'metadata: { name: web-from-frontend, namespace: shop }',
      'spec:', '  podSelector: { matchLabels: { app: web } }', '  ingress:',
      '    - from: [{ podSelector: { matchLabels: { role: frontend } } }]', '      ports: [{ port: http }]', '',
    ].join('\n'));
  }
  // Written whole and renamed in, as an editor or config manager would.
  writeFileSync(`${policyFile}.tmp`, docs.join('---\n'));
  renameSync(`${policyFile}.tmp`, policyFile);
}

before(async () => {
  if (skip) return;
  f = patuFlavour();
  scratch.defer('test network', () => f.destroy());
  dir = scratch.tmpDir('patu-pol-podman');
  policyFile = join(dir, 'policy.yaml');
  sandbox = new PodmanSandbox(dir);
  sandbox.configure(f.bin, f.netName, f.conflist());
  sandbox.importBusybox(image, ['sh', 'nc', 'httpd', 'printf', 'sleep'], { 'index.html': `hello from ${names.web}\n` });
  scratch.defer('podman state', () => {
    for (const n of Object.values(names)) podman(['rm', '-f', '-t', '0', n]);
    podman(['rmi', '-f', image]);
  });
  scratch.defer('agent', async () => {
    if (!agent || agent.exitCode !== null) return;
    const exited = new Promise((r) => agent!.once('exit', r));
    agent.kill('SIGTERM');
    await Promise.race([exited, sleep(5_000)]);
    agent.kill('SIGKILL');
  });
});
after(() => agent?.kill('SIGKILL'));

test('podman containers under a policy file: only the frontend reaches the named port; a bad edit keeps it; removing the policy opens it', { skip, timeout: 240_000 }, async () => {
  const web = podman(['run', '-d', '--name', names.web, '--network', f.netName, ...ULIMITS, image, '/bin/httpd', '-f', '-p', '8080', '-h', '/www']);
  assert.equal(web.status, 0, show(web));
  for (const c of ['front', 'other'] as const) {
    const r = podman(['run', '-d', '--name', names[c], '--network', f.netName, ...ULIMITS, image, '/bin/sleep', '600']);
    assert.equal(r.status, 0, show(r));
  }
  for (const c of Object.keys(names) as (keyof typeof names)[]) {
    const r = podman(['inspect', names[c], '--format', `{{(index .NetworkSettings.Networks "${f.netName}").IPAddress}}`]);
    assert.equal(r.status, 0, show(r));
    ip[c] = r.stdout.trim();
    assert.ok(ip[c].startsWith(`${f.prefix}.`), `${c} address ${ip[c]} is in ${f.subnet}`);
  }
  // No agent yet: nothing enforces, both clients reach the server.
  await expectReach('front', true, 'before any policy');
  await expectReach('other', true, 'before any policy');

  writePolicy(true);
  const pinRoot = String(f.netconf().pinRoot);
  agent = spawn(f.bin, ['agent', '--cni-socket', join(f.dataDir, 'agent.sock'), '--policy-file', policyFile, '--pin-root', pinRoot,
    '--bridge', f.bridge, '--data-dir', f.dataDir, '--no-hostports'], { stdio: ['ignore', 'pipe', 'pipe'], env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin' } });
  agent.stdout!.setEncoding('utf8').on('data', (d: string) => (log += d));
  agent.stderr!.setEncoding('utf8').on('data', (d: string) => (log += d));
  for (let i = 0; i < 300 && !log.includes('serving CNI requests'); i++) await sleep(50);
  assert.ok(log.includes('serving CNI requests'), `agent start:\n${log}`);

  await expectReach('front', true, 'policy: frontend allowed on the named port');
  await expectReach('other', false, 'policy: other denied');

  // The programs read back: `patu policy` lists the rule with the policy's name.
  const view = spawnSync(f.bin, ['policy', '--pin-root', pinRoot], { encoding: 'utf8' });
  assert.equal(view.status, 0, `patu policy: ${view.stderr}`);
  assert.match(view.stdout, /web-from-frontend/, `patu policy shows the deciding policy:\n${view.stdout}`);

  writeFileSync(policyFile, 'kind: NetworkPolicy\nspec: [not, a, spec\n');
  await sleep(1_500);
  await expectReach('other', false, 'after a bad edit (last good state kept)');
  await expectReach('front', true, 'after a bad edit (last good state kept)');

  writePolicy(false);
  await expectReach('other', true, 'policy removed');

  for (const n of Object.values(names)) {
    const rm = podman(['rm', '-f', '-t', '0', n]);
    assert.equal(rm.status, 0, show(rm));
  }
  const left = spawnSync('ip', ['-o', 'link', 'show', 'master', f.bridge], { encoding: 'utf8' }).stdout.trim();
  assert.equal(left, '', `podman rm -f left veths on ${f.bridge}: ${left}`);
});
