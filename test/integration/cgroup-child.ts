// Runs inside the private namespaces test/integration/cgroup.test.ts makes, and prints
// one JSON line of what it saw. Modes:
//   attach <pinRoot> <subName>   cgroup2 is mounted only at an unusual path: discover it,
//                                attach accel + service LB to a sub-cgroup made there,
//                                report the attached programs, clean everything up
//   container <hostDir> <pinRoot>  a private cgroup namespace with its own /sys/fs/cgroup and
//                                the host's at hostDir: what discovery and the agent do
import { mkdirSync, rmdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CgroupError, findCgroup2Root, isHierarchyRoot, parseMountinfo, resolveCgroup } from '../../src/kernel/cgroup.js';
import { readFileSync } from 'node:fs';
import type { ServiceLb as ServiceLbT } from '../../src/dataplane/service-lb.js';

const [mode, a, b] = process.argv.slice(2);
const out = (v: unknown): void => { process.stdout.write(JSON.stringify(v) + '\n'); };
const codeOf = (f: () => unknown): string => {
  try { f(); return 'no error'; } catch (e) { return e instanceof CgroupError ? `${e.code}: ${e.message}` : String(e); }
};

function rmdirRetry(dir: string): void {
  for (let i = 0; ; i++) {
    try { rmdirSync(dir); return; } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
      if ((e as NodeJS.ErrnoException).code !== 'EBUSY' || i >= 50) throw e;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20);
    }
  }
}

if (mode === 'attach') {
  const pinRoot = a!;
  const { Accel } = await import('../../src/dataplane/accel.js');
  const { ServiceLb } = await import('../../src/dataplane/service-lb.js');
  const { listLinks, listPrograms } = await import('../../src/kernel/bpf/introspect.js');
  const { removePins } = await import('../../src/kernel/bpf/pins.js');
  const root = findCgroup2Root();
  const sub = join(root, b!);
  mkdirSync(sub);
  const id = statSync(sub, { bigint: true }).ino;
  const onSub = (): string[] => {
    const names = new Map(listPrograms().map((p) => [p.id, p.name]));
    return listLinks().filter((l) => l.cgroupId === id).map((l) => names.get(l.progId) ?? `prog ${l.progId}`).sort();
  };
  const accel = Accel.open({ pinRoot, cgroupPath: resolveCgroup({ cgroup: sub }), objectPath: fileURLToPath(new URL('../../../build/bpf/accel.o', import.meta.url)) });
  let lb: ServiceLbT | undefined;
  let attached: string[] = [];
  try {
    accel.enable();
    lb = ServiceLb.open({ pinRoot, cgroupPath: sub });
    lb.attach();
    attached = onSub();
  } finally {
    try { accel.teardown(); } finally {
      try { lb?.detach(); lb?.close(); } finally {
        removePins(pinRoot);
        rmdirRetry(sub);
      }
    }
  }
  out({ root, rootIsHierarchyRoot: isHierarchyRoot(root), attached, afterCleanup: onSub().length });
} else if (mode === 'container') {
  const hostDir = a!;
  const own = parseMountinfo(readFileSync('/proc/self/mountinfo', 'utf8')).filter((m) => m.fsType === 'cgroup2' && m.mountPoint === '/sys/fs/cgroup');
  const { runAgent } = await import('../../src/agent/agent.js');
  // Refused before anything is loaded or attached (and were it not, it would attach to
  // this namespace's own cgroup: the test's sub-cgroup, never a root).
  let agent = 'no error';
  try {
    await runAgent({ cniSocket: join(b!, 'never.sock'), logLevel: 'error', pinRoot: b!, accel: true, cgroupFs: '/sys/fs/cgroup' });
  } catch (e) { agent = (e as Error).message; }
  out({
    ownRootField: own.map((m) => m.root),
    ownIsHierarchyRoot: isHierarchyRoot('/sys/fs/cgroup'),
    found: codeOf(() => findCgroup2Root()) === 'no error' ? findCgroup2Root() : codeOf(() => findCgroup2Root()),
    underHost: resolveCgroup({ under: hostDir }),
    underOwn: codeOf(() => findCgroup2Root({ under: '/sys/fs/cgroup' })),
    agent,
  });
} else {
  throw new Error(`cgroup-child: unknown mode ${mode}`);
}
