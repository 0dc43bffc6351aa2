// The standalone policy source: one local file (YAML stream or JSON) of Namespaces,
// NetworkPolicies and Pods (parse.ts), for hosts without Kubernetes (podman). Read like
// the services file: a regular file only (a FIFO or a device is refused), bounded in size,
// and watched through its directory (editors replace files by rename). A bad edit is
// reported once it has stood for settleMs and the last good state stays programmed.
import { closeSync, constants as fsc, fstatSync, openSync, readSync, watch } from 'node:fs';
import { basename, dirname } from 'node:path';
import { messageOf } from '../errors.js';
import { ReloadLoop } from '../services/file-source.js';
import { MAX_POLICY_FILE_BYTES, parsePolicyText, PolicyFileError } from './parse.js';
import type { PolicyState } from './types.js';

/** Reads a policy file: a regular file of at most MAX_POLICY_FILE_BYTES, opened non-blocking. */
export function readPolicyFile(file: string): string {
  let fd: number;
  try {
    fd = openSync(file, fsc.O_RDONLY | fsc.O_NONBLOCK);
  } catch (e) {
    throw new PolicyFileError(file, [`(read): ${messageOf(e)}`]);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new PolicyFileError(file, ['(read): not a regular file; a policy file must be one']);
    if (st.size > MAX_POLICY_FILE_BYTES) throw new PolicyFileError(file, [`(read): ${st.size} bytes; a policy file may hold at most ${MAX_POLICY_FILE_BYTES}`]);
    const buf = Buffer.allocUnsafe(Math.min(st.size, MAX_POLICY_FILE_BYTES) + 1);
    let n = 0;
    for (;;) {
      const got = readSync(fd, buf, n, buf.length - n, null);
      if (got === 0) break;
      n += got;
      if (n === buf.length) {
        if (n > MAX_POLICY_FILE_BYTES) throw new PolicyFileError(file, [`(read): grew past ${MAX_POLICY_FILE_BYTES} bytes while being read`]);
        break;
      }
    }
    return buf.toString('utf8', 0, n);
  } catch (e) {
    if (e instanceof PolicyFileError) throw e;
    throw new PolicyFileError(file, [`(read): ${messageOf(e)}`]);
  } finally {
    closeSync(fd);
  }
}

export async function loadPolicyFile(file: string): Promise<PolicyState> {
  return parsePolicyText(readPolicyFile(file), file);
}

export interface PolicyWatchOptions {
  /** Each good state (also the first); may program it. A throw is reported like a bad file. */
  onChange: (state: PolicyState) => void | Promise<void>;
  /** A bad file after it has settled; the last good state stays. */
  onError: (err: Error) => void;
  settleMs?: number;
}

/** Watches a policy file: reloads on every change of it, coalescing events during a reload. */
export class PolicyFileWatcher extends ReloadLoop {
  private dirty = false;

  constructor(readonly file: string, private readonly opts: PolicyWatchOptions) {
    super((e) => opts.onError(e), opts.settleMs);
  }

  /** Loads once (throws if the file is bad: the agent does not start on a bad file), then watches. */
  async start(): Promise<PolicyState> {
    const state = await loadPolicyFile(this.file);
    await this.opts.onChange(state);
    const name = basename(this.file);
    this.watcher = watch(dirname(this.file), { persistent: true }, (_event, filename) => {
      if (filename === null || filename.toString() === name) this.kick();
    });
    this.watcher.on('error', (e) => this.opts.onError(e));
    return state;
  }

  private kick(): void {
    if (this.closed) return;
    this.dirty = true;
    this.schedule();
  }

  protected async drain(): Promise<Error | undefined> {
    let lastError: Error | undefined;
    while (this.dirty && !this.closed) {
      this.dirty = false;
      try {
        const state = await loadPolicyFile(this.file);
        lastError = undefined;
        this.clearPendingError();
        await this.opts.onChange(state);
      } catch (e) {
        lastError = e instanceof Error ? e : new Error(messageOf(e));
      }
    }
    return lastError;
  }
}
