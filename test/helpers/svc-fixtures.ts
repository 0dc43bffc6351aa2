// The service tests' backend servers and clients (test/integration/fixtures/svc-server.ts and
// svc-client.ts) started where a test wants them: in a netns, and for a client optionally inside the
// cgroup the socket programs are attached to. One copy, so every service test reads its results alike.
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ServiceLb, type ServiceLbOptions } from '../../src/dataplane/service-lb.js';
import type { Scratch } from './kernel.js';

const FIX = fileURLToPath(new URL('../integration/fixtures/', import.meta.url));

/** What svc-client prints as its last line. */
export interface ClientResult {
  ok: number;
  /** Answers per backend (each server answers with its own ip:port). */
  byBackend: Record<string, number>;
  /** Failures per errno code (ECONNREFUSED, ...) or 'timeout'. */
  errors: Record<string, number>;
  /** getpeername()/recvfrom() addresses seen, per address. */
  peers: Record<string, number>;
  /** tcp-hold: the backend the held connection reached. */
  held?: string;
}

/** Where a fixture runs: a netns (none: the caller's), and for a client the cgroup it joins before it runs anything. */
export interface Place {
  netns?: string;
  cgroup?: string;
}

/** Kills every child a test started: pass it to Scratch.defer. */
export class Children {
  private readonly procs: ChildProcess[] = [];
  add(p: ChildProcess): ChildProcess {
    this.procs.push(p);
    return p;
  }
  killAll(): void {
    for (const p of this.procs) p.kill('SIGKILL');
  }
}

function spawnFixture(script: string, arg: object, at: Place): ChildProcess {
  const argv = [join(FIX, script), JSON.stringify(arg)];
  const enter = at.netns ? `ip netns exec ${at.netns} ` : '';
  if (at.cgroup) {
    return spawn('sh', ['-c', `echo $$ > ${at.cgroup}/cgroup.procs && exec ${enter}"$0" "$1" "$2"`, process.execPath, ...argv], { stdio: ['pipe', 'pipe', 'inherit'] });
  }
  return at.netns
    ? spawn('ip', ['netns', 'exec', at.netns, process.execPath, ...argv], { stdio: ['pipe', 'pipe', 'inherit'] })
    : spawn(process.execPath, argv, { stdio: ['pipe', 'pipe', 'inherit'] });
}

/** Starts servers answering on each ip:port (TCP and UDP); resolves once they listen. */
export async function startServer(children: Children, addrs: { ip: string; port: number }[], at: Place = {}): Promise<ChildProcess> {
  const p = children.add(spawnFixture('svc-server.js', addrs, at));
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`backend server on ${JSON.stringify(addrs)} did not start in 10 s`)), 10_000);
    p.stdout!.on('data', (d: Buffer) => {
      if (d.toString().includes('ready')) {
        clearTimeout(t);
        resolve();
      }
    });
    p.on('exit', (code) => reject(new Error(`backend server exited with ${code}`)));
  });
  return p;
}

/** Starts a client job (see svc-client.ts for the modes); read its answer with resultOf. */
export const spawnClient = (children: Children, job: object, at: Place = {}): ChildProcess => children.add(spawnFixture('svc-client.js', job, at));

export function resultOf(p: ChildProcess): Promise<ClientResult> {
  let out = '';
  p.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  return new Promise((resolve, reject) => {
    p.on('exit', (code) => {
      const line = out.trim().split('\n').at(-1) ?? '';
      try {
        resolve(JSON.parse(line) as ClientResult);
      } catch {
        reject(new Error(`client exited with ${code}, output: ${out}`));
      }
    });
  });
}

export const runClient = (children: Children, job: object, at: Place = {}): Promise<ClientResult> => resultOf(spawnClient(children, job, at));

/**
 * A ServiceLb on a test's own pin root (and cgroup), detached and closed by the scratch's
 * cleanup, also when a test fails.
 */
export function openScratchLb(scratch: Scratch, opts: ServiceLbOptions): ServiceLb {
  const lb = ServiceLb.open(opts);
  scratch.defer('service LB', () => {
    try {
      lb.detach();
    } finally {
      lb.close();
    }
  });
  return lb;
}
