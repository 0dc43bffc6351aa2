// The default single-process agent never loads the split mode's code (issue 13: "In the
// default single-process mode, gRPC and TLS code is never loaded"), checked on the running
// process rather than on the bundle's import graph (test/unit/rpc-bundle.test.ts does that):
// `bin/patu agent --services-file ... --accel` started as deployed, with a preload
// (NODE_OPTIONS=--import) that records
//   - every module the ESM loader loads (a module.register load hook: the bundle's chunks
//     under dist/agent/ and node: builtins imported from them), and
//   - process.moduleLoadList, Node's own list of every builtin module and binding loaded in
//     the thread, by ESM or require() alike (node:http2, node:tls, the http2 binding...).
// The chunks it loaded are then searched for the split mode's code: the generated API
// descriptor, protobuf-es's and ConnectRPC's runtime, @peculiar/x509 and tsyringe.
// With --kubernetes the apiserver client loads node:tls (HTTPS), and still none of the rest.
// Controls (the same detector must see what is there): `patu certs generate` from the same
// bundle loads x509; `patu agent --manager` loads http2, TLS and the API code.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { PATU_BIN, REPO_ROOT, isRoot } from '../helpers/cni.js';
import { scratchForTests } from '../helpers/kernel.js';

const scratch = scratchForTests('patu-test-norpc');
const bundle = join(REPO_ROOT, 'dist', 'agent');
const skip = !isRoot() ? 'needs root (eBPF, cgroups)' : !existsSync(PATU_BIN) || !existsSync(join(bundle, 'index.js')) ? 'bin/patu or dist/agent not built (scripts/build.sh)' : false;

let dir = '';
let cgroup = '';
let pinRoot = '';

const TRACE = `
import { register } from 'node:module';
import { writeFileSync } from 'node:fs';
import { threadId } from 'node:worker_threads';
register('./trace-hooks.mjs', import.meta.url);
const out = \`\${process.env.PATU_TRACE_DIR}/builtins.\${process.pid}.\${threadId}.json\`;
const snap = () => writeFileSync(out, JSON.stringify(process.moduleLoadList));
setInterval(snap, 200).unref();
process.on('exit', snap);
`;
const TRACE_HOOKS = `
import { appendFileSync } from 'node:fs';
export async function load(url, context, next) {
  appendFileSync(\`\${process.env.PATU_TRACE_DIR}/urls\`, \`\${url}\\n\`);
  return next(url, context);
}
`;

interface Trace {
  /** Files of the bundle loaded (names under dist/agent/). */
  chunks: string[];
  /** file: URLs outside the bundle. */
  otherFiles: string[];
  /** Every entry of every thread's process.moduleLoadList. */
  builtins: Set<string>;
  log: string;
}

/** Runs `argv` (bin/patu ..., or node <bundle> ...) with the tracer until `ready` matches its output, then SIGTERM. */
async function traced(tag: string, argv: string[], ready: RegExp, settleMs = 1000): Promise<Trace> {
  const traceDir = join(dir, `trace-${tag}`);
  spawnSync('mkdir', ['-p', traceDir]);
  const p = spawn(argv[0]!, argv.slice(1), {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, NODE_OPTIONS: `--import ${pathToFileURL(join(dir, 'trace.mjs')).href}`, PATU_TRACE_DIR: traceDir },
  });
  let log = '';
  p.stdout!.setEncoding('utf8').on('data', (d: string) => { log += d; });
  p.stderr!.setEncoding('utf8').on('data', (d: string) => { log += d; });
  const exited = new Promise<void>((r) => p.once('exit', () => r()));
  let done = false;
  void exited.then(() => { done = true; });
  for (let waited = 0; !ready.test(log); waited += 50) {
    if (done) break;
    if (waited > 30_000) {
      p.kill('SIGKILL');
      assert.fail(`${tag}: not ready after 30 s; output:\n${log}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  await new Promise((r) => setTimeout(r, settleMs));
  p.kill('SIGTERM');
  await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
  p.kill('SIGKILL');
  assert.match(log, ready, `${tag}: output:\n${log}`);

  const urls = existsSync(join(traceDir, 'urls')) ? readFileSync(join(traceDir, 'urls'), 'utf8').split('\n').filter(Boolean) : [];
  const files = urls.filter((u) => u.startsWith('file:')).map((u) => fileURLToPath(u));
  const builtins = new Set<string>();
  for (const f of readdirSync(traceDir).filter((n) => n.startsWith('builtins.'))) {
    for (const m of JSON.parse(readFileSync(join(traceDir, f), 'utf8')) as string[]) builtins.add(m);
  }
  return {
    chunks: files.filter((f) => f.startsWith(`${bundle}/`)).map((f) => f.slice(bundle.length + 1)),
    otherFiles: files.filter((f) => !f.startsWith(`${bundle}/`) && !f.startsWith(dir)),
    builtins,
    log,
  };
}

/** What of the split mode's code a trace shows, by name. */
function splitCode(t: Trace): string[] {
  const gen = join(REPO_ROOT, 'src/rpc/gen/patu/dataplane/v1/dataplane_pb.ts');
  const descriptor = existsSync(gen) ? /fileDesc\("([A-Za-z0-9+/]{40})/.exec(readFileSync(gen, 'utf8'))?.[1] : undefined;
  const found = new Set<string>();
  for (const c of t.chunks) {
    const text = readFileSync(join(bundle, c), 'utf8');
    if (descriptor && text.includes(descriptor)) found.add('the generated API code');
    if (text.includes('from binary: maximum recursion depth')) found.add('@bufbuild/protobuf');
    if (/["']grpc-status["']/i.test(text)) found.add('@connectrpc (grpc-status)');
    if (text.includes('X509CertificateGenerator')) found.add('@peculiar/x509');
    if (text.includes('tsyringe requires a reflect polyfill')) found.add('tsyringe');
    if (text.includes('lets group or others read the private key')) found.add('src/rpc/tls.ts');
  }
  for (const m of ['NativeModule http2', 'Internal Binding http2', 'NativeModule tls', 'NativeModule _tls_wrap', 'Internal Binding tls_wrap']) {
    if (t.builtins.has(m)) found.add(m);
  }
  for (const f of t.otherFiles) {
    if (/node_modules\/(@connectrpc|@bufbuild|@peculiar|tsyringe)\//.test(f)) found.add(f);
  }
  return [...found].sort();
}

before(() => {
  if (skip) return;
  dir = scratch.tmpDir('patu-norpc');
  cgroup = scratch.cgroup();
  pinRoot = scratch.pinRoot();
  writeFileSync(join(dir, 'trace.mjs'), TRACE);
  writeFileSync(join(dir, 'trace-hooks.mjs'), TRACE_HOOKS);
  writeFileSync(join(dir, 'services.yaml'), 'services:\n  - name: web\n    clusterIP: 10.96.7.1\n    ports: [{ port: 80, targetPort: 8080 }]\n    endpoints:\n      - ip: 10.251.7.2\n');
});

test('default single process: `patu agent --services-file --accel` serves and programs without loading gRPC, TLS, protobuf or x509 code', { skip }, async () => {
  const sock = join(dir, 'agent.sock');
  const t = await traced('agent', [PATU_BIN, 'agent', '--cni-socket', sock, '--accel', '--services-file', join(dir, 'services.yaml'), '--cgroup', cgroup, '--pin-root', pinRoot, '--data-dir', join(dir, 'ipam'), '--log-level', 'debug'], /serving CNI requests/, 1500);
  // it did its job: the service is programmed (an agent that failed early would load little)
  const st = spawnSync(PATU_BIN, ['services', '--json', '--pin-root', pinRoot], { encoding: 'utf8' });
  assert.match(st.stdout, /10\.96\.7\.1/, st.stdout + st.stderr);
  assert.ok(t.chunks.includes('index.js') && t.chunks.some((c) => c.startsWith('agent-')), `the bundle's agent ran: ${t.chunks.join(' ')}`);
  assert.ok(t.builtins.has('NativeModule worker_threads') || t.builtins.size > 50, 'moduleLoadList was read');
  assert.deepEqual(t.otherFiles.filter((f) => !/node_modules\/koffi\//.test(f)), [], 'only the bundle (and koffi, external) is loaded');
  assert.deepEqual(splitCode(t), [], `chunks loaded: ${t.chunks.join(' ')}`);
});

test('default single process with --kubernetes (apiserver unreachable: the informers retry): node:tls for the apiserver, but no http2, gRPC, protobuf, x509 or split-mode TLS code', { skip }, async () => {
  const kubeconfig = join(dir, 'kubeconfig');
  writeFileSync(kubeconfig, [
    'apiVersion: v1', 'kind: Config',
    'clusters: [{ name: c, cluster: { server: "https://127.0.0.1:9", insecure-skip-tls-verify: true } }]',
    'users: [{ name: u, user: { token: "t" } }]',
    'contexts: [{ name: x, context: { cluster: c, user: u } }]', 'current-context: x', '',
  ].join('\n'));
  const t = await traced('k8s', [PATU_BIN, 'agent', '--kubernetes', '--kubeconfig', kubeconfig, '--node-name', `norpc-${process.pid}`, '--cni-conf-dir', '',
    '--cni-socket', join(dir, 'k8s.sock'), '--cgroup', cgroup, '--pin-root', pinRoot, '--data-dir', join(dir, 'ipam-k8s'), '--metrics-addr', '127.0.0.1:0'], /informer failed/, 1500);
  assert.ok(t.chunks.some((c) => c.startsWith('agent-k8s')), `the Kubernetes source ran: ${t.chunks.join(' ')}`);
  // The apiserver client is HTTPS: node:tls is expected here, and nothing else of the list.
  const apiserverTls = new Set(['NativeModule tls', 'NativeModule _tls_wrap', 'Internal Binding tls_wrap']);
  assert.ok(t.builtins.has('NativeModule tls'), 'the HTTPS client to the apiserver loaded node:tls (else this check proves nothing about the rest)');
  assert.deepEqual(splitCode(t).filter((x) => !apiserverTls.has(x)), [], `chunks loaded: ${t.chunks.join(' ')}`);
});

test('control: the same detector sees x509 in `patu certs generate` run from the same bundle', { skip }, async () => {
  const t = await traced('certs', [process.execPath, join(bundle, 'index.js'), 'certs', 'generate', '--dir', join(dir, 'certs')], /wrote 6 files/, 0);
  const found = splitCode(t);
  assert.ok(found.includes('@peculiar/x509') && found.includes('tsyringe'), found.join(', '));
});

test('control: `patu agent --manager` loads http2, TLS and the API code', { skip }, async (t) => {
  const help = spawnSync(PATU_BIN, ['agent', '--help'], { encoding: 'utf8' }).stdout;
  if (!/--manager\b/.test(help)) {
    t.skip('patu agent --manager is not wired yet');
    return;
  }
  spawnSync(process.execPath, [join(bundle, 'index.js'), 'certs', 'generate', '--dir', join(dir, 'split-certs')]);
  // Nobody listens there: the agent keeps trying; what it loaded to try is the point.
  writeFileSync(join(dir, 'split-services.yaml'), 'services: []\n');
  const tr = await traced('split', [PATU_BIN, 'agent', '--manager', 'tcp://127.0.0.1:9', '--tls-dir', join(dir, 'split-certs'), '--services-file', join(dir, 'split-services.yaml'), '--log-level', 'debug'], /data-plane API call failed/, 500);
  const found = splitCode(tr);
  for (const want of ['NativeModule http2', 'NativeModule tls', '@connectrpc (grpc-status)', '@bufbuild/protobuf', 'the generated API code', 'src/rpc/tls.ts']) assert.ok(found.includes(want), `${want} not seen; found: ${found.join(', ')}\n${tr.log}`);
});
