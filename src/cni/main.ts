// The CNI plugin entry point: `bin/patu` runs this when CNI_COMMAND is set.
import { readFileSync, writeSync } from 'node:fs';

/**
 * Straight to the fd: the first touch of process.stdout on a pipe builds a net.Socket
 * (node:net and the stream machinery), ~15 ms of a plugin start measured with --cpu-prof.
 */
function out(fd: 1 | 2, text: string): void {
  const buf = Buffer.from(text);
  for (let off = 0; off < buf.length; ) {
    try {
      off += writeSync(fd, buf, off);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err; // a non-blocking pipe that is full: try again
    }
  }
}
import { errnoOf, messageOf } from '../errors.js';
import { CniCode, CniError } from './errors.js';
import { LATEST_VERSION } from './spec.js';
import { runPlugin } from './plugin.js';
import { libbpfLog } from '../kernel/bpf/log.js';

export async function main(): Promise<void> {
  // The runtime's log for the plugin is its stderr.
  libbpfLog.sink = (text) => out(2, text);
  libbpfLog.debug = process.env.PATU_BPF_DEBUG === '1';
  let stdin: Uint8Array = new Uint8Array();
  if (process.env.CNI_COMMAND !== 'VERSION') {
    try {
      // Bytes, not text: runPlugin checks the size and that they are UTF-8.
      stdin = readFileSync(0);
    } catch (err) {
      const e = new CniError(CniCode.IoFailure, `reading the network config from stdin: ${messageOf(err)}`, `stdin (${errnoOf(err) ?? 'read'})`, { cause: err });
      out(1, JSON.stringify(e.toJSON(LATEST_VERSION)) + '\n');
      process.exitCode = 1;
      return;
    }
  }
  const outcome = await runPlugin(process.env, stdin);
  // stderr is the runtime's log for the plugin: warnings go there, the answer to stdout.
  for (const w of outcome.warnings ?? []) out(2, `patu: warning: ${w}\n`);
  out(1, outcome.stdout);
  process.exitCode = outcome.exitCode;
}

// Not a top-level await: the bundle is CommonJS (scripts/build.sh), which starts faster.
main().catch((err: unknown) => {
  out(2, `patu: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exitCode = 1;
});
