// podman as a CNI client, sandboxed for one test file: its own storage root, runroot,
// containers.conf (CNI backend, the test's plugin dir and network config dir) and a busybox
// image built from the host's static busybox (no registry needed). Nothing is shared with
// the host's podman state.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { isRoot, REFERENCE_DIR } from './cni.js';

export const podmanPath = spawnSync('sh', ['-c', 'command -v podman'], { encoding: 'utf8' }).stdout.trim();
export const busyboxPath = ['/bin/busybox', '/usr/bin/busybox'].find((p) => existsSync(p));

/** Why podman tests cannot run here (`needs` says what root is for), or undefined. */
export function podmanSkipReason(needs: string): string | undefined {
  if (!isRoot()) return `needs root: ${needs}`;
  if (!podmanPath) return 'podman is not installed (apt-get install podman runc)';
  if (!busyboxPath) return 'busybox-static is not installed (needed to build the image without a registry)';
  return undefined;
}

/** Resource limits for every container (podman's defaults exceed what this VM allows). */
export const ULIMITS = ['--ulimit', 'nofile=1024:1024', '--ulimit', 'nproc=1024:1024'];

export interface PodmanResult { status: number | null; stdout: string; stderr: string; what: string }

export class PodmanSandbox {
  /**
   * `dir`: the sandbox (empty, the test's own); `env`: extra environment for podman, which
   * it hands on to the plugins (libcni): PATU_AGENT_SOCKET routes bin/patu to a test's agent.
   */
  constructor(readonly dir: string, private readonly env: Record<string, string> = {}) {}

  run(args: string[], timeoutMs = 60_000): PodmanResult {
    const r = spawnSync(podmanPath, ['--root', join(this.dir, 'root'), '--runroot', join(this.dir, 'runroot'), '--storage-driver', 'vfs', ...args], {
      encoding: 'utf8',
      timeout: timeoutMs,
      env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', CONTAINERS_CONF: join(this.dir, 'containers.conf'), HOME: this.dir, ...this.env },
    });
    return { status: r.status, stdout: r.stdout ?? '', stderr: r.stderr ?? '', what: `podman ${args.join(' ')}` };
  }

  /** A failed run, for assertion messages. */
  static show(r: PodmanResult): string {
    return `${r.what} exited ${r.status}: ${r.stderr.trim()} ${r.stdout.trim()}`.slice(0, 2000);
  }

  /** containers.conf with the CNI backend, `pluginBin` as the plugin `patu` (beside the reference plugins), and one network. */
  configure(pluginBin: string, netName: string, conflist: object): void {
    mkdirSync(join(this.dir, 'net.d'));
    mkdirSync(join(this.dir, 'plugins'));
    symlinkSync(pluginBin, join(this.dir, 'plugins', 'patu'));
    writeFileSync(join(this.dir, 'containers.conf'), [
      '[network]', 'network_backend = "cni"', `cni_plugin_dirs = ["${join(this.dir, 'plugins')}", "${REFERENCE_DIR}"]`,
      `network_config_dir = "${join(this.dir, 'net.d')}"`, '[engine]', 'runtime = "runc"', '',
    ].join('\n'));
    // podman 4.3's libcni speaks up to CNI 1.0.0.
    writeFileSync(join(this.dir, 'net.d', `${netName}.conflist`), JSON.stringify({ ...conflist, cniVersion: '1.0.0' }));
  }

  /** Imports a busybox image with `applets` linked in /bin and `www` files under /www. */
  importBusybox(image: string, applets: string[], www: Record<string, string>): void {
    const rootfs = join(this.dir, 'rootfs');
    for (const d of ['bin', 'etc', 'tmp', 'www']) mkdirSync(join(rootfs, d), { recursive: true });
    copyFileSync(busyboxPath!, join(rootfs, 'bin', 'busybox'));
    spawnSync('chmod', ['755', join(rootfs, 'bin', 'busybox')]);
    for (const a of applets) symlinkSync('busybox', join(rootfs, 'bin', a));
    for (const [name, text] of Object.entries(www)) writeFileSync(join(rootfs, 'www', name), text);
    assert.equal(spawnSync('tar', ['-C', rootfs, '-cf', join(this.dir, 'rootfs.tar'), '.']).status, 0, 'tar of the busybox rootfs');
    const imp = this.run(['import', join(this.dir, 'rootfs.tar'), image]);
    assert.equal(imp.status, 0, PodmanSandbox.show(imp));
  }
}
