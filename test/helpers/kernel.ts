// Scratch kernel state for tests and benches: cgroups, pin roots, network
// namespaces and temporary directories, each named after the process (so
// concurrent runs never collide) and each removed by a cleanup registered the
// moment it is created. Cleanups run in reverse order of creation (a netns made
// after a cgroup is gone before the cgroup is removed), every one of them runs
// even when an earlier one throws, and the errors are reported together.
//
// In a node:test file, `scratchForTests(tag)` registers the cleanup as an
// `after` hook, so it runs when a test fails too. Benches call `cleanup()` in
// their own finally and `cleanupOnSignals()` for Ctrl-C.
//
// Shells out to `ip` on purpose: an independent view of the kernel, not the
// product's netlink code under test.
import { after } from 'node:test';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmdirSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { findCgroup2Root } from '../../src/kernel/cgroup.js';

/** The root of this host's cgroup2 hierarchy, found as the product finds it (pure v2 or hybrid). */
let cgroup2Root: string | undefined;
const cgroup2 = (): string => (cgroup2Root ??= findCgroup2Root());

const BPFFS = '/sys/fs/bpf';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface Cleanup {
  what: string;
  run: () => void | Promise<void>;
}

export class Scratch {
  private readonly cleanups: Cleanup[] = [];
  private cleaned = false;

  /**
   * @param prefix names start with it, e.g. `patu-test-svc`; the pid is appended so two
   *   runs at once (or a stale one) never share a name.
   */
  constructor(readonly prefix: string) {}

  /** `<prefix>-<pid>[-<suffix>]`. */
  name(suffix?: string): string {
    return `${this.prefix}-${process.pid}${suffix ? `-${suffix}` : ''}`;
  }

  /** Registers a cleanup to run (in reverse order of registration) by cleanup(). */
  defer(what: string, run: () => void | Promise<void>): void {
    this.cleanups.push({ what, run });
  }

  /**
   * A new cgroup under the cgroup2 root. Removing it first kills whatever still
   * runs in it (cgroup.kill), then retries rmdir while the kernel reports EBUSY
   * (it does for a moment after the last process exits).
   */
  cgroup(suffix?: string): string {
    const path = join(cgroup2(), this.name(suffix));
    mkdirSync(path);
    this.defer(`cgroup ${path}`, () => removeCgroup(path));
    return path;
  }

  /**
   * A pin root below /sys/fs/bpf. Not created: the code under test creates its
   * own pin directories (with the mode it chooses). Whatever is there at cleanup
   * is unpinned.
   */
  pinRoot(suffix?: string): string {
    const path = join(BPFFS, this.name(suffix));
    this.defer(`pins ${path}`, () => rmSync(path, { recursive: true, force: true }));
    return path;
  }

  /** A new network namespace with lo up; returns its name (`ip netns` resolves it to /run/netns/<name>). */
  netns(name: string = this.name()): string {
    run('ip', ['netns', 'add', name]);
    this.defer(`netns ${name}`, () => {
      const r = spawnSync('ip', ['netns', 'del', name], { encoding: 'utf8' });
      if (r.status !== 0 && existsSync(netnsPath(name))) throw new Error(`ip netns del ${name}: ${r.stderr.trim()}`);
    });
    run('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
    return name;
  }

  /** A new directory under the system temp dir, removed with everything in it. */
  tmpDir(tag: string = this.prefix): string {
    const dir = mkdtempSync(join(tmpdir(), `${tag}-`));
    this.defer(`dir ${dir}`, () => rmSync(dir, { recursive: true, force: true }));
    return dir;
  }

  /** Runs every registered cleanup, newest first; throws an AggregateError naming what failed. */
  async cleanup(): Promise<void> {
    if (this.cleaned) return;
    this.cleaned = true;
    const errors: Error[] = [];
    for (const c of this.cleanups.reverse()) {
      try {
        await c.run();
      } catch (e) {
        errors.push(new Error(`cleanup of ${c.what} failed: ${(e as Error).message}`, { cause: e }));
      }
    }
    this.cleanups.length = 0;
    if (errors.length) throw new AggregateError(errors, errors.map((e) => e.message).join('; '));
  }

  /** For benches: SIGINT/SIGTERM clean up, then exit 130. */
  cleanupOnSignals(): void {
    for (const sig of ['SIGINT', 'SIGTERM'] as const) {
      process.once(sig, () => {
        process.stderr.write(`${this.prefix}: ${sig}: cleaning up\n`);
        this.cleanup()
          .catch((e) => process.stderr.write(`${(e as Error).message}\n`))
          .finally(() => process.exit(130));
      });
    }
  }
}

/** A Scratch whose cleanup runs as the test file's `after` hook (so also when a test fails). */
export function scratchForTests(prefix: string): Scratch {
  const s = new Scratch(prefix);
  after(() => s.cleanup());
  return s;
}

export const netnsPath = (name: string): string => `/run/netns/${name}`;

/** Kills what still runs in a cgroup and removes it, retrying EBUSY for up to 5 s. */
export async function removeCgroup(path: string): Promise<void> {
  if (!existsSync(path)) return;
  // cgroup.kill (Linux 5.14+) SIGKILLs every process in it: a test that failed
  // half-way may have left a client there, and rmdir would stay EBUSY forever.
  if (existsSync(join(path, 'cgroup.kill'))) writeFileSync(join(path, 'cgroup.kill'), '1');
  const end = Date.now() + 5_000;
  for (;;) {
    try {
      rmdirSync(path);
      return;
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return;
      if (code !== 'EBUSY' || Date.now() > end) {
        const procs = existsSync(join(path, 'cgroup.procs')) ? readFileSync(join(path, 'cgroup.procs'), 'utf8').trim() : '';
        throw new Error(`rmdir ${path}: ${code}${procs ? ` (processes still in it: ${procs.split('\n').join(' ')})` : ''}`, { cause: e });
      }
      await sleep(20);
    }
  }
}

function run(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}: ${(r.stderr ?? '').trim()}`);
  return r.stdout;
}
