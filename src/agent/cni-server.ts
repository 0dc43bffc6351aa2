// The agent's CNI endpoint: bin/patu forwards each CNI invocation here over a unix
// socket so a pod event does not pay for a Node start. The request is handled by the
// very same runPlugin() the standalone plugin process uses; IPAM's file lock keeps
// agent-served and process-served requests safe from each other. Wire format and
// limits: cni-wire.ts.
//
// One request must never block the others (issue 15):
//   - The plugin work is synchronous (netlink, setns, file locks, fs), so it runs in a
//     worker thread, never on this thread: VERSION is answered here and the server
//     keeps accepting while any request is stuck in a system call.
//   - One lane per network, each with its own worker: a network's requests run in
//     order, and never wait behind another network's.
//   - Every request has a deadline. A request still running at its deadline is
//     answered with code 11 and abandoned: its worker is terminated (it never runs
//     JavaScript again) and the IPAM lock files it opened are closed, so the network's
//     lock is free; the lane starts a fresh worker for the next request.
//   - No replays. Each invocation carries the launcher's request id. Before starting
//     it, the agent writes one byte (a launcher that gave up and closed its socket
//     makes that write fail: dropped) and claims the id by creating
//     <socket dir>/requests/<id> with O_EXCL. A launcher that gives up on the agent
//     (its receive timeout) claims the same name before it runs the request itself:
//     whoever creates the file runs the request, the other does not.
import { createServer, type Server, type Socket } from 'node:net';
import { Worker } from 'node:worker_threads';
import { chmodSync, closeSync, mkdirSync, openSync, readdirSync, rmSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { DEFAULTS } from '../defaults.js';
import { LATEST_VERSION, SUPPORTED_VERSIONS } from '../cni/spec.js';
import {
  RequestReader,
  STARTED,
  clip,
  encodeResponse,
  errorOutcome,
  networkOf,
  MAX_STDIN_BYTES,
  type CniRequest,
  type WireOutcome,
} from './cni-wire.js';
import type { LoggedError, WorkerReply, WorkerRequest } from './cni-worker.js';
import { errnoOf } from '../errors.js';

export { decodeRequest, encodeResponse, type CniRequest } from './cni-wire.js';

/** The agent waits this long for an IPAM lock before handing the request back. */
export const AGENT_LOCK_WAIT_MS = 100;
/** run()'s requests have no launcher to hand back to: they wait this long for the lock (then code 11). */
export const API_LOCK_WAIT_MS = 5_000;

/** What the agent did with a request, for logs and metrics. */
export interface RequestOutcome extends WireOutcome {
  /** What went wrong without failing the command: the caller reports it. */
  warnings?: string[];
  /** The failure with its cause chain and stacks, for the debug log (never in the answer). */
  error?: LoggedError;
  /** Handed back unanswered (IPAM lock busy): the launcher runs it itself. */
  deferred?: boolean;
  /** Abandoned at its deadline. */
  timedOut?: boolean;
  /** Not started: its launcher had gone or had claimed it. */
  dropped?: string;
}

export interface CniServerOptions {
  socketPath: string;
  /** Deadline of one request (default DEFAULTS.agentRequestTimeoutMs). */
  requestTimeoutMs?: number;
  /** A network's worker exits after this long without requests (default 60 s). */
  idleWorkerMs?: number;
  /** Called after each request, for logs and metrics. */
  onRequest?: (req: CniRequest, outcome: RequestOutcome, millis: number) => void;
  /** Problems of the server itself (a worker that failed, a claim that could not be written). */
  onProblem?: (what: string, err?: unknown) => void;
  /**
   * Called on this (the main) thread with a request that succeeded, just before its answer
   * is written: the runtime hears of the pod's address only after this returns (the agent
   * puts a new pod under its network policies here). Must not throw (a throw is reported
   * through onProblem and the answer still goes out). May return a promise (the agent makes
   * a pod's extra interfaces here: src/k8s/podnet-source.ts): the answer waits for it, at
   * most beforeAnswerTimeoutMs, then goes out anyway (the hook's work goes on behind it).
   * The lane is not held meanwhile: the network's next request runs.
   */
  beforeAnswer?: (req: CniRequest, outcome: RequestOutcome) => void | Promise<void>;
  /** Bound of an asynchronous beforeAnswer (default DEFAULTS.beforeAnswerTimeoutMs). */
  beforeAnswerTimeoutMs?: number;
}

export interface CniServer {
  server: Server;
  /**
   * Runs one request as if it had come over the socket (same lanes, workers, deadline and
   * beforeAnswer hook), for callers that reach the plugin another way: the manager's
   * data-plane API (src/dataplane/local.ts). There is no launcher to hand a request back
   * to, so a busy IPAM lock is waited for (up to API_LOCK_WAIT_MS) instead of deferred,
   * and a worker that dies under the request answers code 100 instead of going silent.
   * Rejects only once the server is closing.
   */
  run(req: CniRequest): Promise<RequestOutcome>;
  /** Stops accepting, answers nothing more, ends the workers. */
  close(): Promise<void>;
  /** Abandoned workers whose thread has not ended yet (blocked in a system call). */
  stuckThreads(): number;
}

/** Where a request's answer goes: the launcher's socket, or run()'s promise. */
interface JobOutput {
  /** Writes the start marker; err when the client has gone (the request is then dropped unstarted). */
  start(cb: (err?: Error | null) => void): void;
  answer(outcome: RequestOutcome): void;
  /** Unanswered: the launcher runs it itself (deferred, worker died); run() answers `outcome` anyway. */
  drop(outcome: RequestOutcome): void;
  /** The server is closing with the request unanswered. */
  abort(): void;
}

interface Job {
  req: CniRequest;
  out: JobOutput;
  /** From run(): wait for a busy lock rather than hand the request back. */
  api?: boolean;
  received: number;
  /** The request's deadline, counted from its arrival (queued time included). */
  timer?: NodeJS.Timeout;
}

interface Lane {
  name: string;
  queue: Job[];
  worker?: Worker;
  running?: { job: Job; seq: number; posted: boolean };
  /** IPAM lock fds the worker opened (fds are process-wide): closed when it is abandoned. */
  lockFds: Set<number>;
  idle?: NodeJS.Timeout;
}

const MAX_LANES = 16;
const OVERFLOW_LANE = '\0overflow';
/** A client must send its whole request (and EOF) within this long. */
const RECEIVE_TIMEOUT_MS = 10_000;

const WORKER_URL = new URL('./cni-worker.js', import.meta.url);

/** The launcher's socket as a job's output (wire format: cni-wire.ts). */
function socketOutput(sock: Socket): JobOutput {
  return {
    // The start marker doubles as the check that the launcher is still there.
    start: (cb) => sock.write(STARTED, (err) => cb(err ?? (sock.destroyed ? new Error('socket destroyed') : undefined))),
    answer: (outcome) => sock.end(encodeResponse(outcome)),
    drop: () => sock.end(),
    abort: () => sock.destroy(),
  };
}

export function startCniServer(opts: CniServerOptions): Promise<CniServer> {
  const timeoutMs = opts.requestTimeoutMs ?? DEFAULTS.agentRequestTimeoutMs;
  const idleMs = opts.idleWorkerMs ?? 60_000;
  mkdirSync(dirname(opts.socketPath), { recursive: true, mode: 0o700 });
  rmSync(opts.socketPath, { force: true }); // a socket file left by a previous agent
  const claims = join(dirname(opts.socketPath), 'requests');
  mkdirSync(claims, { recursive: true, mode: 0o700 });
  const lanes = new Map<string, Lane>();
  let seq = 0;
  let closing = false;
  const live = new Set<Worker>();

  const problem = (what: string, err?: unknown) => opts.onProblem?.(what, err);

  /** True when this process may run the request (see the header). */
  function claim(id: string | undefined): boolean {
    if (!id) return true; // a client without ids (older launcher, a test's raw socket)
    try {
      closeSync(openSync(join(claims, id), 'wx', 0o600));
      return true;
    } catch (err) {
      if (errnoOf(err) === 'EEXIST') return false;
      problem(`claiming request ${id}`, err);
      return true;
    }
  }
  const unclaim = (id: string | undefined) => id && rmSync(join(claims, id), { force: true });
  // Claims are kept well past the launcher's 60 s timeout (a claim removed at once
  // could let a late launcher claim a request the agent just answered), then swept.
  const sweep = setInterval(() => {
    const old = Date.now() - 10 * 60_000;
    try {
      for (const n of readdirSync(claims)) {
        try {
          if (statSync(join(claims, n)).mtimeMs < old) rmSync(join(claims, n), { force: true });
        } catch {
          /* gone meanwhile */
        }
      }
    } catch (err) {
      problem('sweeping old request claims', err);
    }
  }, 60_000);
  sweep.unref();

  function finish(job: Job, outcome: RequestOutcome, answer: boolean): void {
    clearTimeout(job.timer);
    const deliver = (): void => {
      if (answer) job.out.answer(outcome);
      else job.out.drop(outcome);
      opts.onRequest?.(job.req, outcome, performance.now() - job.received);
    };
    if (answer && outcome.exitCode === 0 && opts.beforeAnswer) {
      const what = `before answering ${clip(job.req.env.CNI_COMMAND, 16)}`;
      let pending: void | Promise<void> = undefined;
      try {
        pending = opts.beforeAnswer(job.req, outcome);
      } catch (err) {
        problem(what, err);
      }
      if (pending && typeof pending.then === 'function') {
        const bound = opts.beforeAnswerTimeoutMs ?? DEFAULTS.beforeAnswerTimeoutMs;
        let timer: NodeJS.Timeout | undefined;
        const late = new Promise<void>((resolve) => {
          timer = setTimeout(() => {
            problem(`${what}: the agent's hook was still busy after ${bound} ms; answered anyway (it finishes behind the answer)`);
            resolve();
          }, bound);
        });
        void Promise.race([pending.catch((err: unknown) => problem(what, err)), late]).then(() => {
          clearTimeout(timer);
          deliver();
        });
        return;
      }
    }
    deliver();
  }

  function workerFor(lane: Lane): Worker {
    if (lane.worker) return lane.worker;
    const w = new Worker(WORKER_URL, {
      // A worker serves one network's small requests: bound what it may grow to.
      resourceLimits: { maxOldGenerationSizeMb: 128, maxYoungGenerationSizeMb: 4 },
      stdout: false,
      stderr: false,
    });
    lane.worker = w;
    w.on('message', (m: WorkerReply) => {
      if (m.type === 'lock-fd') {
        lane.lockFds.add(m.fd);
        return;
      }
      const run = lane.running;
      if (lane.worker !== w || !run || run.seq !== m.seq) return; // an abandoned worker's late answer
      lane.running = undefined;
      if (m.outcome.deferred) {
        // Handed back unanswered: the launcher runs it, so the claim must not stop it.
        unclaim(run.job.req.id);
        finish(run.job, { ...m.outcome, deferred: true }, false);
      } else {
        finish(run.job, m.outcome, true);
      }
      pump(lane);
    });
    w.on('error', (err) => problem(`the worker of network '${clip(lane.name, 64)}' failed`, err));
    w.on('exit', () => {
      if (lane.worker !== w) return;
      lane.worker = undefined;
      closeLockFds(lane);
      const run = lane.running;
      if (run) {
        // The worker died under the request (out of memory, a crash): unanswered,
        // the launcher runs it in its own process.
        lane.running = undefined;
        unclaim(run.job.req.id);
        finish(run.job, errorOutcome(100, 'the agent worker exited during the request'), false);
        pump(lane);
      }
    });
    return w;
  }

  /** Ends a worker; counted as stuck until its thread has really ended. */
  function retire(w: Worker): Promise<unknown> {
    live.add(w);
    w.once('exit', () => live.delete(w));
    return w.terminate();
  }

  function closeLockFds(lane: Lane): void {
    for (const fd of lane.lockFds) {
      try {
        closeSync(fd);
      } catch {
        /* already closed by its worker */
      }
    }
    lane.lockFds.clear();
  }

  function abandon(lane: Lane): void {
    const run = lane.running!;
    lane.running = undefined;
    const w = lane.worker;
    lane.worker = undefined;
    // terminate() stops JavaScript at once; a thread blocked in a system call stops
    // when that call returns, and never runs the rest of the request.
    if (w) void retire(w);
    closeLockFds(lane);
    finish(
      run.job,
      {
        ...errorOutcome(
          11,
          `the agent abandoned this ${clip(run.job.req.env.CNI_COMMAND, 16)} after ${timeoutMs} ms: it was stuck in a system call or file-system operation`,
          'anything it did half-way is removed by DEL or GC; retry',
        ),
        timedOut: true,
      },
      true,
    );
    pump(lane);
  }

  function pump(lane: Lane): void {
    if (lane.running || closing) return;
    const job = lane.queue.shift();
    if (!job) {
      if (lane.worker && !lane.idle) {
        lane.idle = setTimeout(() => {
          lane.idle = undefined;
          if (!lane.running && lane.queue.length === 0) {
            const w = lane.worker;
            if (w) {
              lane.worker = undefined;
              void retire(w).then(() => closeLockFds(lane));
            }
            lanes.delete(lane.name);
          }
        }, idleMs);
        lane.idle.unref();
      }
      return;
    }
    if (lane.idle) {
      clearTimeout(lane.idle);
      lane.idle = undefined;
    }
    // The start marker doubles as the check that the launcher is still there.
    const s = ++seq;
    lane.running = { job, seq: s, posted: false };
    job.out.start((err) => {
      if (lane.running?.seq !== s) return;
      if (err) {
        lane.running = undefined;
        finish(job, { exitCode: -1, stdout: '', dropped: 'its launcher had gone' }, false);
        pump(lane);
        return;
      }
      if (!claim(job.req.id)) {
        lane.running = undefined;
        finish(job, { exitCode: -1, stdout: '', dropped: 'its launcher gave up and ran it itself' }, false);
        pump(lane);
        return;
      }
      lane.running.posted = true;
      const msg: WorkerRequest = job.api
        ? { seq: s, env: job.req.env, stdin: job.req.stdin, lockTimeoutMs: API_LOCK_WAIT_MS, defer: false }
        : { seq: s, env: job.req.env, stdin: job.req.stdin, lockTimeoutMs: AGENT_LOCK_WAIT_MS, defer: true };
      workerFor(lane).postMessage(msg);
    });
  }

  /** The deadline of a request: abandoned if it runs, answered unstarted if it still waits. */
  function expire(lane: Lane, job: Job): void {
    if (lane.running?.job === job) {
      if (lane.running.posted) abandon(lane);
      else job.timer = setTimeout(() => expire(lane, job), 100); // its start marker is in flight
      return;
    }
    const at = lane.queue.indexOf(job);
    if (at < 0) return;
    lane.queue.splice(at, 1);
    finish(
      job,
      {
        ...errorOutcome(
          11,
          `the agent did not start this ${clip(job.req.env.CNI_COMMAND, 16)} within ${timeoutMs} ms: earlier requests on network '${clip(lane.name, 64)}' took that long`,
          'nothing was done; retry',
        ),
        timedOut: true,
      },
      true,
    );
  }

  function submit(job: Job): void {
    if (job.req.env.CNI_COMMAND === 'VERSION') {
      // Needs no plugin code and no worker: answered even while every lane is stuck.
      finish(job, { exitCode: 0, stdout: JSON.stringify({ cniVersion: LATEST_VERSION, supportedVersions: [...SUPPORTED_VERSIONS] }) + '\n' }, true);
      return;
    }
    // One lane (and worker) per network, up to MAX_LANES: names come from clients,
    // and a worker costs memory. Past that, the rest share one lane.
    const named = networkOf(job.req.stdin);
    const name = lanes.has(named) || lanes.size < MAX_LANES ? named : OVERFLOW_LANE;
    let lane = lanes.get(name);
    if (!lane) {
      lane = { name, queue: [], lockFds: new Set() };
      lanes.set(name, lane);
    }
    const l = lane;
    job.timer = setTimeout(() => expire(l, job), timeoutMs);
    lane.queue.push(job);
    pump(lane);
  }

  // allowHalfOpen: the launcher shuts down its write side to mark the end of the
  // request; without it Node would close our side too, before the answer is written.
  const server = createServer({ allowHalfOpen: true }, (sock: Socket) => {
    const reader = new RequestReader();
    let refused = false;
    sock.on('error', () => sock.destroy());
    // A client that connects and never finishes its request must not hold a socket forever.
    sock.setTimeout(RECEIVE_TIMEOUT_MS, () => sock.destroy());
    sock.on('data', (c: Buffer) => {
      if (refused) return;
      if (reader.push(c) === 'too-large') {
        // Refused before it is kept: the agent never grows with what a client sends.
        refused = true;
        const out = errorOutcome(7, `the request is larger than the agent accepts (${MAX_STDIN_BYTES} bytes of network config): a CNI config is never that large`, 'stdin');
        // The rest is read and dropped until the client stops (destroying the socket now
        // could reset it before the client has read the answer); bounded in time.
        sock.end(encodeResponse(out));
        setTimeout(() => sock.destroy(), 5_000).unref();
        opts.onRequest?.({ env: {}, stdin: Buffer.alloc(0) }, out, 0);
      }
    });
    sock.on('end', () => {
      if (refused) return;
      sock.setTimeout(0); // from here on, the request's own deadline applies
      submit({ req: reader.finish(), out: socketOutput(sock), received: performance.now() });
    });
  });

  function run(req: CniRequest): Promise<RequestOutcome> {
    if (closing) return Promise.reject(new Error('the CNI server is closing'));
    return new Promise((resolve, reject) => {
      const out: JobOutput = {
        start: (cb) => queueMicrotask(() => cb()),
        answer: resolve,
        drop: resolve,
        abort: () => reject(new Error('the CNI server closed before the request was answered')),
      };
      // No launcher id: nothing to claim against.
      const { id: _id, ...rest } = req;
      submit({ req: rest, out, api: true, received: performance.now() });
    });
  }

  async function close(): Promise<void> {
    closing = true;
    clearInterval(sweep);
    const closed = new Promise<void>((r) => server.close(() => r()));
    for (const lane of lanes.values()) {
      if (lane.idle) clearTimeout(lane.idle);
      for (const job of [...(lane.running ? [lane.running.job] : []), ...lane.queue]) clearTimeout(job.timer);
      // Unanswered: the launchers run these themselves (agent down), unclaimed.
      for (const job of [...(lane.running ? [lane.running.job] : []), ...lane.queue]) {
        unclaim(job.req.id);
        job.out.abort();
      }
      lane.queue = [];
      const w = lane.worker;
      lane.worker = undefined;
      if (w) await Promise.race([retire(w), new Promise((r) => setTimeout(r, 1_000).unref())]);
      closeLockFds(lane);
    }
    lanes.clear();
    await closed;
  }

  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.socketPath, () => {
      // Root only: whoever can talk to this socket can create and delete pod networking.
      chmodSync(opts.socketPath, 0o600);
      resolve({ server, close, run, stuckThreads: () => live.size });
    });
  });
}
