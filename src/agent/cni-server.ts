// The agent's CNI endpoint: bin/patu forwards each CNI invocation here over a unix
// socket so a pod event does not pay for a Node start. The request is handled by the
// very same runPlugin() the standalone plugin process uses; IPAM's file lock keeps
// agent-served and process-served requests safe from each other.
//
// Wire protocol (see src/launcher/patu.c): request = "KEY=VALUE\n" lines for the CNI_*
// environment, an empty line, then the raw stdin bytes, then EOF; response =
// "<exit code>\n" then the plugin's stdout, then EOF.
import { createServer, type Server, type Socket } from 'node:net';
import { chmodSync, mkdirSync, rmSync } from 'node:fs';
import { dirname } from 'node:path';
import { runPlugin, type PluginOutcome } from '../cni/plugin.js';

/** The agent waits this long for an IPAM lock before handing the request back. */
export const AGENT_LOCK_WAIT_MS = 100;

export interface CniRequest {
  env: Record<string, string>;
  /** The raw config bytes: runPlugin checks their size and that they are UTF-8. */
  stdin: Buffer;
}

export function decodeRequest(bytes: Buffer): CniRequest {
  const end = bytes.indexOf('\n\n');
  const header = (end < 0 ? bytes : bytes.subarray(0, end)).toString('utf8');
  const env: Record<string, string> = {};
  for (const line of header.split('\n')) {
    const eq = line.indexOf('=');
    // Only CNI_* variables cross the socket: nothing else of the caller's environment
    // may steer the agent.
    if (eq > 0 && line.startsWith('CNI_')) env[line.slice(0, eq)] = line.slice(eq + 1);
  }
  return { env, stdin: end < 0 ? Buffer.alloc(0) : bytes.subarray(end + 2) };
}

export const encodeResponse = (o: PluginOutcome): string => `${o.exitCode}\n${o.stdout}`;

export interface CniServerOptions {
  socketPath: string;
  /** Called after each request, for logs and metrics. */
  onRequest?: (req: CniRequest, outcome: PluginOutcome, millis: number) => void;
}

export function startCniServer(opts: CniServerOptions): Promise<Server> {
  mkdirSync(dirname(opts.socketPath), { recursive: true, mode: 0o700 });
  rmSync(opts.socketPath, { force: true }); // a socket file left by a previous agent
  let queue: Promise<void> = Promise.resolve();
  // allowHalfOpen: the launcher shuts down its write side to mark the end of the
  // request; without it Node would close our side too, before the answer is written.
  const server = createServer({ allowHalfOpen: true }, (sock: Socket) => {
    const chunks: Buffer[] = [];
    sock.on('data', (c: Buffer) => chunks.push(c));
    sock.on('error', () => sock.destroy());
    sock.on('end', () => {
      const req = decodeRequest(Buffer.concat(chunks));
      // One request at a time: the kernel work is short, netns switching is per
      // thread, and concurrent runtimes simply queue here.
      queue = queue.then(async () => {
        const started = performance.now();
        const outcome = await runPlugin(req.env, req.stdin, { lockTimeoutMs: AGENT_LOCK_WAIT_MS, deferOnBusyLock: true });
        // A deferred request is closed unanswered: bin/patu then runs it in its own
        // process, which may wait for the lock as long as the netconf allows.
        if (outcome.deferred) sock.end();
        else sock.end(encodeResponse(outcome));
        opts.onRequest?.(req, outcome, performance.now() - started);
      }).catch(() => {
        // Unanswered, the launcher runs the plugin itself: nothing is lost.
        sock.destroy();
      });
    });
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.socketPath, () => {
      // Root only: whoever can talk to this socket can create and delete pod networking.
      chmodSync(opts.socketPath, 0o600);
      resolve(server);
    });
  });
}
