// One network's CNI worker thread (see cni-server.ts): runs runPlugin() for the
// requests the server posts, one at a time, off the agent's main thread. setns() is
// per thread, so entering a pod's netns here moves only this thread.
import { parentPort } from 'node:worker_threads';
import { runPlugin } from '../cni/plugin.js';
import { BridgeCache } from '../dataplane/bridge.js';
import { observeLockFds } from '../ipam/store.js';
import { warmThreadpool } from '../kernel/netns.js';
import { libbpfLog } from '../kernel/bpf/log.js';

export interface WorkerRequest {
  seq: number;
  env: Record<string, string>;
  stdin: Uint8Array;
  lockTimeoutMs: number;
  /** Hand the request back on a busy lock (the launcher runs it); false: wait lockTimeoutMs, then code 11. */
  defer: boolean;
}

/** An error as plain data (it crosses postMessage): the message, stack and cause chain. */
export interface LoggedError {
  type: string;
  message: string;
  stack?: string;
  cause?: LoggedError;
}

export interface WorkerOutcome {
  exitCode: number;
  stdout: string;
  deferred?: boolean;
  warnings?: string[];
  error?: LoggedError;
}

export type WorkerReply =
  | { type: 'done'; seq: number; outcome: WorkerOutcome }
  /** An IPAM lock file this thread opened: the server closes it if it abandons the thread. */
  | { type: 'lock-fd'; fd: number };

const port = parentPort;
if (!port) throw new Error('cni-worker: not started as a worker thread');
warmThreadpool();
// Posted the moment the lock file is opened, so the server knows the fd even if this
// thread then blocks for good.
observeLockFds((fd) => port.postMessage({ type: 'lock-fd', fd } satisfies WorkerReply));
function plain(err: unknown, depth = 0): LoggedError | undefined {
  if (err === undefined || err === null || depth > 8) return undefined;
  const e = err as { name?: unknown; message?: unknown; stack?: unknown; cause?: unknown };
  const cause = plain(e.cause, depth + 1);
  return {
    type: typeof e.name === 'string' ? e.name : typeof err,
    message: typeof e.message === 'string' ? e.message : String(err),
    ...(typeof e.stack === 'string' ? { stack: e.stack } : {}),
    ...(cause ? { cause } : {}),
  };
}

// libbpf's unsolicited messages (module state is per thread, so the agent's sink is not
// set here): they join the warnings of the request that caused them.
let libbpfSaid: string[] = [];
libbpfLog.sink = (text) => { libbpfSaid.push(`libbpf: ${text.trimEnd()}`); };

// This network's bridge, checked once per BridgeCache TTL instead of on every ADD.
const bridges = new BridgeCache();

port.on('message', async (m: WorkerRequest) => {
  libbpfSaid = [];
  const { error, warnings, ...rest } = await runPlugin(m.env, m.stdin, { lockTimeoutMs: m.lockTimeoutMs, deferOnBusyLock: m.defer, bridges });
  const loggable = plain(error);
  const all = [...(warnings ?? []), ...libbpfSaid];
  port.postMessage({ type: 'done', seq: m.seq, outcome: { ...rest, ...(all.length ? { warnings: all } : {}), ...(loggable ? { error: loggable } : {}) } } satisfies WorkerReply);
});
