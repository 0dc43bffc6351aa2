// podman as a real CNI client (needs root and podman): a private containers.conf
// selects the CNI backend, a private config dir holds this test's network, and a
// private storage root keeps images and containers away from the machine's own.
// Two busybox containers on the network talk HTTP; `podman rm -f` must leave no veth
// and no IPAM record. Runs for patu and, to validate the test, the reference bridge.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync, copyFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  diffSnapshots,
  ipamRecords,
  patuAgentFlavour,
  patuFlavour,
  referenceFlavour,
  REFERENCE_DIR,
  snapshotHost,
  type Flavour,
} from '../helpers/cni.js';
import { busyboxPath, podmanPath, podmanSkipReason, ULIMITS } from '../helpers/podman.js';

const skipAll = podmanSkipReason('podman with the CNI backend creates netns, veths and bridges');

const wanted = (process.env.CNI_SUITE_FLAVOURS ?? 'reference,patu,patu-agent').split(',');
// patu-agent: podman passes its environment on to plugins (libcni), so
// PATU_AGENT_SOCKET in podman's environment routes bin/patu to the agent.
const makers = skipAll ? [] : [referenceFlavour, patuFlavour, patuAgentFlavour];
if (skipAll) test('podman e2e', { skip: skipAll }, () => {});


for (const make of makers) {
  const f: Flavour = make();
  if (!wanted.includes(f.id)) {
    f.destroy();
    continue;
  }
  const skip = f.skipReason();
  describe(`podman e2e: ${f.id}`, { skip: skip ?? false }, () => {
    const dir = mkdtempSync(join(tmpdir(), `h4pod-${f.id}-`));
    const image = `localhost/h4bb-${process.pid}-${f.id}:latest`;
    const names = { server: `h4srv-${process.pid}-${f.id}`, client: `h4cli-${process.pid}-${f.id}` };
    let imported = false;

    function podman(args: string[], timeoutMs = 60_000) {
      const r = spawnSync(
        podmanPath,
        ['--root', join(dir, 'root'), '--runroot', join(dir, 'runroot'), '--storage-driver', 'vfs', ...args],
        {
          encoding: 'utf8',
          timeout: timeoutMs,
          env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', CONTAINERS_CONF: join(dir, 'containers.conf'), HOME: dir, ...f.env },
        },
      );
      return { status: r.status, stdout: r.stdout ?? '', stderr: r.stderr ?? '', what: `podman ${args.join(' ')}` };
    }
    const ok = (r: ReturnType<typeof podman>) => `${r.what} exited ${r.status}: ${r.stderr.trim()} ${r.stdout.trim()}`.slice(0, 2000);

    const agentFlavour = f.id === 'patu-agent' ? (f as ReturnType<typeof patuAgentFlavour>) : undefined;

    before(async () => {
      if (agentFlavour) await agentFlavour.start();
      mkdirSync(join(dir, 'net.d'));
      mkdirSync(join(dir, 'plugins'));
      symlinkSync(f.bin, join(dir, 'plugins', 'patu'));
      writeFileSync(
        join(dir, 'containers.conf'),
        [
          '[network]',
          'network_backend = "cni"',
          `cni_plugin_dirs = ["${join(dir, 'plugins')}", "${REFERENCE_DIR}"]`,
          `network_config_dir = "${join(dir, 'net.d')}"`,
          '[engine]',
          // crun refuses this hybrid-cgroup host.
          'runtime = "runc"',
          '',
        ].join('\n'),
      );
      // podman 4.3 vendors libcni 1.1, which speaks spec up to 1.0.0.
      writeFileSync(join(dir, 'net.d', `${f.netName}.conflist`), JSON.stringify({ ...f.conflist(), cniVersion: '1.0.0' }));

      // A busybox image without a registry: static busybox plus applet links.
      const rootfs = join(dir, 'rootfs');
      for (const d of ['bin', 'etc', 'tmp', 'www']) mkdirSync(join(rootfs, d), { recursive: true });
      copyFileSync(busyboxPath!, join(rootfs, 'bin', 'busybox'));
      spawnSync('chmod', ['755', join(rootfs, 'bin', 'busybox')]);
      for (const a of ['sh', 'nc', 'httpd', 'printf', 'sleep', 'ip', 'cat']) symlinkSync('busybox', join(rootfs, 'bin', a));
      writeFileSync(join(rootfs, 'www', 'index.html'), `hello from ${names.server}\n`);
      const tar = spawnSync('tar', ['-C', rootfs, '-cf', join(dir, 'rootfs.tar'), '.'], { encoding: 'utf8' });
      assert.equal(tar.status, 0, `tar of the busybox rootfs: ${tar.stderr}`);
      const imp = podman(['import', join(dir, 'rootfs.tar'), image]);
      assert.equal(imp.status, 0, ok(imp));
      imported = true;
    });

    after(async () => {
      for (const n of Object.values(names)) podman(['rm', '-f', '-t', '0', n]);
      podman(['network', 'rm', '-f', f.netName]);
      if (imported) podman(['rmi', '-f', image]);
      await agentFlavour?.agent?.stop();
      f.destroy();
      // vfs storage has no mounts; the runroot may hold a tmpfs for /dev/shm per container, gone after rm.
      rmSync(dir, { recursive: true, force: true });
    });

    test('two containers on the network talk HTTP; podman rm -f leaves no veth and no IPAM record', async () => {
      const scope = { bridge: f.bridge, prefix: f.prefix, dataDir: f.dataDir };
      const start = snapshotHost(scope);
      const nets = podman(['network', 'ls', '--format', '{{.Name}}']);
      assert.ok(nets.stdout.split('\n').includes(f.netName), `podman sees network ${f.netName}: ${ok(nets)}`);

      const srv = podman(['run', '-d', '--name', names.server, '--network', f.netName, ...ULIMITS, image, '/bin/httpd', '-f', '-p', '8080', '-h', '/www']);
      assert.equal(srv.status, 0, ok(srv));
      const insp = podman(['inspect', names.server, '--format', `{{(index .NetworkSettings.Networks "${f.netName}").IPAddress}}`]);
      assert.equal(insp.status, 0, ok(insp));
      const ip = insp.stdout.trim();
      assert.ok(ip.startsWith(`${f.prefix}.`), `server address ${ip} is in ${f.subnet}`);

      // busybox wget crashes in this static build; nc speaks HTTP/1.0 just as well.
      const cli = podman([
        'run', '--rm', '--name', names.client, '--network', f.netName, ...ULIMITS, image,
        '/bin/sh', '-c', `printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 ${ip} 8080`,
      ]);
      assert.equal(cli.status, 0, ok(cli));
      assert.match(cli.stdout, /200 OK/, `HTTP status from ${ip}: ${cli.stdout}`);
      assert.ok(cli.stdout.includes(`hello from ${names.server}`), `HTTP body from ${ip}: ${cli.stdout}`);

      const up = snapshotHost(scope);
      assert.equal(up.links.filter((l) => l.includes(`master=${f.bridge}`)).length, 1, `only the server's veth is on the bridge after the client's --rm: ${up.links.join(', ')}`);
      const id = podman(['inspect', names.server, '--format', '{{.Id}}']).stdout.trim();
      assert.match(id, /^[0-9a-f]{64}$/, 'server container id');
      assert.equal(ipamRecords(up, [id]).length, 1, `the server has one IPAM record: ${JSON.stringify(up.ipamFiles)}`);

      const rm = podman(['rm', '-f', '-t', '0', names.server]);
      assert.equal(rm.status, 0, ok(rm));
      const end = snapshotHost(scope);
      assert.deepEqual(diffSnapshots(start, end, scope, { ignoreBridge: true, containerIds: [id] }), [], 'podman rm -f left something behind');
      assert.deepEqual(ipamRecords(end, [id]), [], 'no IPAM record names the server any more');
      if (agentFlavour) {
        // ADD server, ADD client, DEL client, DEL server at least. spawnSync kept this
        // event loop from reading the agent's log pipe: give it a bounded moment.
        for (let i = 0; i < 20 && (agentFlavour.agent?.served() ?? 0) < 4; i++) await new Promise((r) => setTimeout(r, 100));
        const served = agentFlavour.agent?.served() ?? 0;
        assert.ok(served >= 4, `the agent served ${served} of podman's CNI calls: ${agentFlavour.agent?.log().slice(-1500)}`);
      }
    });
  });
}
