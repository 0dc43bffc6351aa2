// Runs generated services files through the real `patu services apply` (bin/patu,
// a Node start each) against a scratch pin root and cgroup, and checks:
//   - no hang (killed after the timeout), an exit status of 0 or 1, no stack trace;
//   - exit 1 (invalid file): the message names the field of an invalid mutation,
//     and the maps are exactly as before (bpftool reads them, not patu);
//   - exit 0: no invalid mutation was in the file, the service map holds one
//     entry per service port of the file, and a quoted number was taken as that
//     number (never as a port name).
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, statSync, writeFileSync } from 'node:fs';
import { extname, join } from 'node:path';
import fc from 'fast-check';
import YAML from 'yaml';
import { PATU_BIN } from '../helpers/cni.js';
import type { Scratch } from '../helpers/kernel.js';
import { buildDoc, svcCaseArb, type SvcCase } from './services-gen.js';
import type { FuzzRunResult } from './cni-run.js';

const STACK = /\n\s+at\s|\.js:\d+:\d+|node:internal/;

interface Applied {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

function apply(file: string, pinRoot: string, cgroup: string, timeoutMs: number): Promise<Applied> {
  return new Promise((resolve) => {
    const child = spawn(PATU_BIN, ['services', '--pin-root', pinRoot, 'apply', file, '--cgroup', cgroup], {
      env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const t = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('close', (code, signal) => {
      clearTimeout(t);
      resolve({ code, signal, stdout, stderr, timedOut });
    });
  });
}

/** Keys of a pinned map, via bpftool (hex strings), or [] when it is not pinned. */
function mapKeys(pin: string): string[] {
  if (!existsSync(pin)) return [];
  const r = spawnSync('bpftool', ['-j', 'map', 'dump', 'pinned', pin], { encoding: 'utf8', maxBuffer: 1 << 30 });
  if (r.status !== 0) throw new Error(`bpftool map dump ${pin}: ${r.stderr}`);
  return (JSON.parse(r.stdout || '[]') as { key: string[] }[]).map((e) => e.key.join(''));
}

function backendPorts(pinRoot: string): number[] {
  const r = spawnSync(PATU_BIN, ['services', '--json', '--pin-root', pinRoot], { encoding: 'utf8' });
  const list = JSON.parse(r.stdout || '[]') as { services?: { backends: { port: number }[] }[] } | { backends: { port: number }[] }[];
  const services = Array.isArray(list) ? list : (list.services ?? []);
  return services.flatMap((s) => s.backends.map((b) => b.port));
}

/** Writes a case to disk; returns the path to give `apply`. */
function materialize(c: SvcCase, dir: string, n: number): string {
  const src = c.source;
  if (src.kind === 'special') {
    switch (src.what) {
      case 'fifo': {
        const p = join(dir, `fifo-${n}.yaml`);
        spawnSync('mkfifo', [p]);
        return p;
      }
      case 'devzero': return '/dev/zero';
      case 'devnull': return '/dev/null';
      case 'emptydir': {
        const p = join(dir, `empty-${n}`);
        mkdirSync(p);
        return p;
      }
      case 'dir-junk': {
        const p = join(dir, `junk-${n}`);
        mkdirSync(p);
        writeFileSync(join(p, 'a.yaml'), 'services: [ {');
        return p;
      }
      case 'missing': return join(dir, `missing-${n}.yaml`);
    }
  }
  if (src.kind === 'text') {
    const p = join(dir, `case-${n}.${src.ext}`);
    writeFileSync(p, src.text);
    return p;
  }
  const doc = buildDoc(c);
  const p = join(dir, `case-${n}.${src.format}`);
  writeFileSync(p, src.format === 'json' ? JSON.stringify(doc) : YAML.stringify(doc, { aliasDuplicateObjects: false }));
  return p;
}

/** What the file must be refused for: only invalid values still in place after every mutation. */
function expected(c: SvcCase): string[] {
  if (c.source.kind === 'special') return [c.source.expect];
  if (c.source.kind === 'text') return c.source.expect ? [c.source.expect] : [];
  const doc = buildDoc(c);
  const at = (path: (string | number)[]): unknown => path.reduce<unknown>((o, k) => (o !== null && typeof o === 'object' ? (o as Record<string, unknown>)[k] : undefined), doc);
  return c.mutations.flatMap((m) => (m.expect && JSON.stringify(at(m.path)) === JSON.stringify(m.value) ? [m.expect] : []));
}

function servicePorts(c: SvcCase): number {
  if (c.source.kind === 'text') return 0;
  const doc = buildDoc(c) as { services: { clusterIP: string; ports: { port: number; protocol?: string }[] }[] };
  return new Set(doc.services.flatMap((s) => s.ports.map((p) => `${s.clusterIP}:${p.port}/${p.protocol ?? 'TCP'}`))).size;
}

export async function runServicesCase(c: SvcCase, o: { dir: string; pinRoot: string; cgroup: string; timeoutMs: number }, n: number): Promise<{ problems: string[]; file: string; exit: string }> {
  const file = materialize(c, o.dir, n);
  const svcPin = join(o.pinRoot, 'patu_svc');
  const before = mapKeys(svcPin);
  const r = await apply(file, o.pinRoot, o.cgroup, o.timeoutMs);
  const p: string[] = [];
  const want = expected(c);
  const why = c.source.kind === 'doc' ? c.mutations.map((m) => m.why).join('; ') || 'valid services' : c.source.kind === 'text' ? c.source.why : c.source.what;
  if (r.timedOut) p.push(`no exit within ${o.timeoutMs} ms (hang)`);
  else if (r.signal) p.push(`died of ${r.signal}: ${r.stderr.slice(0, 300)}`);
  else if (r.code !== 0 && r.code !== 1) p.push(`exit ${r.code} (want 0, or 1 for an invalid file): ${r.stderr.slice(0, 500)}`);
  if (STACK.test(r.stderr)) p.push(`stack trace on stderr: ${r.stderr.slice(0, 600)}`);
  if (r.stderr.length > 64 * 1024) p.push(`${r.stderr.length} bytes of error output (echoes the input?)`);
  if (r.code === 1) {
    if (want.length && !want.some((w) => new RegExp(w, 'i').test(r.stderr))) p.push(`the error does not name ${want.join(' or ')}: ${r.stderr.slice(0, 400)}`);
    const after = mapKeys(svcPin);
    if (after.join() !== before.join()) p.push(`an invalid file changed the service map: ${before.length} -> ${after.length} entries`);
  }
  if (r.code === 0) {
    if (want.length) p.push(`exit 0, but the file must be refused: ${why}`);
    const after = mapKeys(svcPin);
    const ports = servicePorts(c);
    if (!want.length && after.length !== ports) p.push(`the service map holds ${after.length} entries for ${ports} service ports in the file`);
    const quoted = c.mutations.find((m) => m.quotedNumber !== undefined && m.path.at(-1) === 'targetPort');
    if (quoted && c.source.kind === 'doc' && !c.mutations.some((m) => m !== quoted && m.path.join() === quoted.path.join())) {
      const ports = backendPorts(o.pinRoot);
      const eps = c.services[0]!.endpoints.length;
      if (eps && !ports.includes(quoted.quotedNumber!)) p.push(`targetPort ${JSON.stringify(quoted.value)} was not taken as port ${quoted.quotedNumber} (backend ports: ${ports.slice(0, 10).join(',')})`);
    }
  }
  if (p.length) p.unshift(`services case ${n}: ${why} (file ${file})`);
  return { problems: p, file, exit: r.timedOut ? 'hang' : String(r.code ?? r.signal) };
}

export async function fuzzServices(
  scratch: Scratch,
  o: { runs: number; seed: number; path?: string; timeoutMs: number; keepGoing?: boolean; reproDir: string; log?: (s: string) => void; timeLimitMs?: number },
): Promise<FuzzRunResult> {
  const t0 = performance.now();
  const dir = scratch.tmpDir('patu-fuzz-svc');
  const pinRoot = scratch.pinRoot('svc');
  const cgroup = scratch.cgroup('svc');
  // Programs attached and maps pinned before the first case: a refused file must leave them as they were.
  writeFileSync(join(dir, 'seed.yaml'), 'services:\n  - name: seed\n    clusterIP: 10.96.250.1\n    ports: [{ port: 80 }]\n    endpoints: [{ ip: 10.251.250.2 }]\n');
  const first = await apply(join(dir, 'seed.yaml'), pinRoot, cgroup, 60_000);
  if (first.code !== 0) throw new Error(`services fuzz: a valid file was refused: ${first.stderr}`);
  let n = 0;
  const failures: FuzzRunResult['failures'] = [];
  const outcomes: Record<string, number> = {};
  let last: { problems: string[]; file: string } | undefined;
  const details = await fc.check(
    fc.asyncProperty(svcCaseArb, async (c) => {
      const r = await runServicesCase(c, { dir, pinRoot, cgroup, timeoutMs: o.timeoutMs }, n++);
      outcomes[`exit ${r.exit}`] = (outcomes[`exit ${r.exit}`] ?? 0) + 1;
      if (!r.problems.length) return true;
      const base = join(o.reproDir, `svc-case-${process.pid}-${n - 1}`);
      writeFileSync(`${base}.case`, JSON.stringify(c, null, 1).slice(0, 1 << 20));
      // The scratch directory goes at the end of the run: keep a copy of the file.
      let file = r.file;
      try {
        if (statSync(r.file).isFile() && r.file.startsWith(dir)) {
          file = `${base}${extname(r.file)}`;
          copyFileSync(r.file, file);
        }
      } catch {
        /* a FIFO or a missing file: the case file says what it was */
      }
      const reproducer = `bin/patu services --pin-root /sys/fs/bpf/<yours> apply ${file} --cgroup <a cgroup of yours>   (case: ${base}.case)`;
      if (o.keepGoing) {
        failures.push({ caseNo: n - 1, problems: r.problems, reproducer });
        o.log?.(`services ${r.problems.join('\n  ')}\n`);
        return true;
      }
      last = { problems: r.problems, file: reproducer };
      return false;
    }),
    { numRuns: o.runs, seed: o.seed, ...(o.path ? { path: o.path } : {}), endOnFailure: true, ...(o.timeLimitMs ? { interruptAfterTimeLimit: o.timeLimitMs } : {}) },
  );
  const res: FuzzRunResult = { runs: n, ms: performance.now() - t0, failures, outcomes };
  if (details.failed) {
    res.failed = { seed: details.seed, path: details.counterexamplePath ?? '', problems: last?.problems ?? [String(details.errorInstance)], reproducer: last?.file ?? '' };
  }
  return res;
}
