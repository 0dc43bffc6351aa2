// A local configuration file that the agent follows (the services file, the policy
// file, the nodes file): read safely, parsed (YAML or JSON), then watched. Import-free
// of patu's layers (node:fs, and the yaml package on first parse), so each source keeps
// its own validation and error type and shares only this.
//
// Read: a regular file only (a FIFO would block the agent, a device has no end),
// opened non-blocking, at most `maxBytes` (a file growing while read is refused, not
// read forever). Watch: through its directory (editors replace a file by rename),
// one reload loop at a time, and a bad result reported only after it has stood for
// settleMs (an editor caught mid-write sends a follow-up event that clears it).
import { closeSync, constants as fsc, fstatSync, openSync, readSync, watch, type FSWatcher } from 'node:fs';
import { basename, dirname, extname } from 'node:path';

/**
 * Reads `file` as UTF-8 under the rules above. A problem is handed to `fail` as one
 * line starting with `(read):`, and what `fail` returns is thrown.
 */
export function readConfigFile(file: string, opts: { what: string; maxBytes: number; fail: (problem: string) => Error }): string {
  const { what, maxBytes } = opts;
  const ours = new WeakSet<Error>();
  const fail = (problem: string): Error => {
    const e = opts.fail(problem);
    ours.add(e);
    return e;
  };
  let fd: number;
  try {
    fd = openSync(file, fsc.O_RDONLY | fsc.O_NONBLOCK); // close-on-exec: libuv sets it
  } catch (e) {
    throw fail(`(read): ${(e as Error).message}`);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) {
      const kind = st.isFIFO() ? 'a FIFO' : st.isCharacterDevice() || st.isBlockDevice() ? 'a device' : st.isSocket() ? 'a socket' : 'not a regular file';
      throw fail(`(read): is ${kind}; a ${what} must be a regular file`);
    }
    if (st.size > maxBytes) throw fail(`(read): ${st.size} bytes; a ${what} may hold at most ${maxBytes}`);
    // Read at most one byte past the limit: the file may grow after fstat.
    const buf = Buffer.allocUnsafe(Math.min(st.size, maxBytes) + 1);
    let n = 0;
    for (;;) {
      const got = readSync(fd, buf, n, buf.length - n, null);
      if (got === 0) break;
      n += got;
      if (n === buf.length) {
        if (n > maxBytes) throw fail(`(read): grew past ${maxBytes} bytes while being read`);
        break; // it grew after fstat; what was there at fstat time plus one byte is read
      }
    }
    return buf.toString('utf8', 0, n);
  } catch (e) {
    if (e instanceof Error && ours.has(e)) throw e;
    throw fail(`(read): ${(e as Error).message}`);
  } finally {
    closeSync(fd);
  }
}

/**
 * At most one reload loop at a time (events during a reload make it go round once
 * more), a bad result reported only after it has stood for settleMs, and
 * close/settled. Subclasses say what one round of reloading is.
 */
export abstract class ReloadLoop {
  protected watcher: FSWatcher | undefined;
  protected closed = false;
  private running = false;
  private errorTimer: NodeJS.Timeout | undefined;
  /** Resolves when the current reload (if any) and the ones it triggered are done. */
  private idle: Promise<void> = Promise.resolve();

  constructor(private readonly reportError: (err: Error) => void, private readonly settleMs = 100) {}

  /** Reloads until nothing is dirty; returns the error to report, if any. */
  protected abstract drain(): Promise<Error | undefined>;

  protected schedule(): void {
    if (!this.closed && !this.running) this.idle = this.run();
  }

  /** A good reload: an error waiting to be reported is no longer true. */
  protected clearPendingError(): void {
    if (this.errorTimer) clearTimeout(this.errorTimer);
    this.errorTimer = undefined;
  }

  private async run(): Promise<void> {
    this.running = true;
    let lastError: Error | undefined;
    try {
      lastError = await this.drain();
    } finally {
      this.running = false;
    }
    if (lastError && !this.closed) {
      const err = lastError;
      this.clearPendingError();
      this.errorTimer = setTimeout(() => {
        this.errorTimer = undefined;
        if (!this.running && !this.closed) this.reportError(err);
      }, this.settleMs);
    }
  }

  /** Waits for reloads in progress (tests and benchmarks). */
  async settled(): Promise<void> {
    await this.idle;
  }

  close(): void {
    this.closed = true;
    this.watcher?.close();
    this.clearPendingError();
  }
}

export interface FileWatchOptions<T> {
  /** Each good content (also the first); may apply it. A throw is reported like a bad file. */
  onChange: (value: T) => void | Promise<void>;
  /** A bad file after it has settled; the last good content stays applied. */
  onError: (err: Error) => void;
  /**
   * How long a bad read waits for another change before it is reported. An
   * editor or `cp` may be caught mid-write: the follow-up event then reloads
   * the complete file and no error is shown.
   */
  settleMs?: number;
}

/**
 * Watches one file. Reloads at the first change event (no up-front debounce: a
 * single edit is applied as soon as it is visible) and coalesces events that
 * arrive during a reload into one more reload, so the last applied content is
 * never older than the last event. The last read decides: a good one clears an
 * earlier bad one.
 */
export class FileWatcher<T> extends ReloadLoop {
  private dirty = false;

  constructor(readonly file: string, private readonly load: (file: string) => Promise<T>, private readonly opts: FileWatchOptions<T>) {
    super((e) => opts.onError(e), opts.settleMs);
  }

  /** Loads once (throws if the initial file is bad: the agent does not start on it), then watches. */
  async start(): Promise<T> {
    const value = await this.load(this.file);
    await this.opts.onChange(value);
    const name = basename(this.file);
    this.watcher = watch(dirname(this.file), { persistent: true }, (_event, filename) => {
      if (filename === null || filename.toString() === name) this.kick();
    });
    this.watcher.on('error', (e) => this.opts.onError(e));
    return value;
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
        const value = await this.load(this.file);
        lastError = undefined;
        this.clearPendingError();
        await this.opts.onChange(value);
      } catch (e) {
        lastError = e instanceof Error ? e : new Error(String(e));
      }
    }
    return lastError;
  }
}

/**
 * How deeply `text` nests, over-estimated cheaply in one pass: block indentation
 * levels plus "- " sequence markers on a line plus open flow brackets ([ {) outside
 * quotes. Checked before parsing, because parsing itself is what gets slow.
 */
export function nestingDepth(text: string): number {
  const indents: number[] = [];
  let flow = 0;
  let max = 0;
  let quote = '';
  for (const line of text.split('\n')) {
    let i = 0;
    if (!quote && flow === 0) {
      while (i < line.length && line[i] === ' ') i++;
      if (i === line.length || line[i] === '#') continue;
      while (indents.length && indents[indents.length - 1]! >= i) indents.pop();
      indents.push(i);
      let seq = 0;
      while (line.startsWith('- ', i + seq * 2)) seq++;
      max = Math.max(max, indents.length + seq);
    }
    for (; i < line.length; i++) {
      const c = line[i]!;
      if (quote) {
        if (c === quote) quote = '';
        else if (c === '\\' && quote === '"') i++;
        continue;
      }
      if (c === '#' && (i === 0 || line[i - 1] === ' ')) break;
      if (c === '"' || (c === "'" && (i === 0 || /[\s\[{,:]/.test(line[i - 1]!)))) quote = c;
      else if (c === '[' || c === '{') max = Math.max(max, indents.length + ++flow);
      else if ((c === ']' || c === '}') && flow > 0) flow--;
    }
  }
  return max;
}

/** Syntax problems of a config file's text (each `(syntax): ...`); the source wraps them in its own error. */
export class ConfigSyntaxError extends Error {
  constructor(readonly problems: string[]) {
    super(problems.join('; '));
  }
}

/** Parses file text as JSON (.json) or YAML (anything else; YAML is a superset of JSON). */
export async function parseYamlOrJson(text: string, file: string): Promise<unknown> {
  if (extname(file).toLowerCase() === '.json') {
    try {
      return JSON.parse(text);
    } catch (e) {
      throw new ConfigSyntaxError([`(syntax): ${(e as Error).message}`]);
    }
  }
  // Loaded on first use: the yaml parser is the largest module on this path.
  const mod = await import('yaml');
  // In the agent's bundle (esbuild, split at dynamic imports) a CommonJS package imported
  // this way offers only its `default`; Node's own loader offers the named exports too.
  const YAML = 'parseDocument' in mod ? mod : (mod as { default: typeof mod }).default;
  const parsed = YAML.parseDocument(text, { prettyErrors: true });
  if (parsed.errors.length) throw new ConfigSyntaxError(parsed.errors.slice(0, 5).map((e) => `(syntax): ${e.message.split('\n')[0]}`));
  return parsed.toJS();
}
