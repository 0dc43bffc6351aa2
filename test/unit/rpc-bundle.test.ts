// The default single-process agent never loads the gRPC/TLS code of the split mode: in the
// agent's bundle (dist/agent/, esbuild split at dynamic imports, scripts/build.sh) the
// generated API code, ConnectRPC and node:http2 sit only in chunks that are reached
// through a dynamic import() (the ones `patu agent --manager` and `patu manager` take),
// never in what `patu` (index.js), `patu agent` (its agent-*.js chunk) or the CNI worker
// load statically; nor the TLS file handling or the agent's mirror. Reads the built bundle:
// run after scripts/build.sh.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { patuHome } from '../../src/home.js';

const root = patuHome();
const dir = join(root, 'dist', 'agent');

interface Chunk {
  text: string;
  statics: string[];
  dynamics: string[];
}

function readBundle(): Map<string, Chunk> {
  const out = new Map<string, Chunk>();
  for (const f of readdirSync(dir).filter((n) => n.endsWith('.js'))) {
    const text = readFileSync(join(dir, f), 'utf8');
    const rel = (re: RegExp) => [...text.matchAll(re)].map((m) => m[1]!.replace(/^\.\//, ''));
    out.set(f, {
      text,
      // import{a}from"./x.js"  export{a}from"./x.js"  import"./x.js"
      statics: [...rel(/from\s*"(\.\/[^"]+)"/g), ...rel(/(?:^|[;\n}])\s*import\s*"(\.\/[^"]+)"/g)],
      dynamics: rel(/import\(\s*"(\.\/[^"]+)"\s*\)/g),
    });
  }
  return out;
}

/** Every chunk loaded when `entry` is: itself and its static imports, transitively. */
function staticClosure(bundle: Map<string, Chunk>, entry: string): Set<string> {
  const seen = new Set<string>();
  const todo = [entry];
  while (todo.length) {
    const f = todo.pop()!;
    if (seen.has(f)) continue;
    seen.add(f);
    todo.push(...(bundle.get(f)?.statics ?? []));
  }
  return seen;
}

/** The generated descriptor's first characters: unique to src/rpc/gen's code. */
function generatedMarker(): string {
  const gen = readFileSync(join(root, 'src/rpc/gen/patu/dataplane/v1/dataplane_pb.ts'), 'utf8');
  const m = /fileDesc\("([A-Za-z0-9+/]{40})/.exec(gen);
  assert.ok(m, 'the generated file has its descriptor');
  return m[1]!;
}

/** What marks the split mode's code in a chunk. */
function splitCodeIn(text: string, marker: string): string[] {
  const found: string[] = [];
  if (text.includes(marker)) found.push('generated API code');
  if (/["']Grpc-Status["']/i.test(text)) found.push('ConnectRPC (Grpc-Status)');
  if (/["'](node:)?http2["']/.test(text)) found.push('node:http2');
  if (/\bloadTlsDir\b/.test(text)) found.push('the TLS files (src/rpc/tls.ts)');
  if (/\bDataplaneMirror\s*=\s*class\b|class DataplaneMirror\b/.test(text)) found.push('the agent\'s mirror (src/agent/mirror.ts)');
  return found;
}

test('the split mode\'s gRPC/TLS code is only in chunks behind a dynamic import', (t) => {
  if (!existsSync(join(dir, 'index.js'))) {
    t.skip('dist/agent/ is not built (scripts/build.sh)');
    return;
  }
  const bundle = readBundle();
  const marker = generatedMarker();
  const index = staticClosure(bundle, 'index.js');
  // `patu agent` without --manager: index.js plus the chunk it imports for the agent command, and the CNI worker threads.
  const agentChunks = [...bundle.get('index.js')!.dynamics].filter((f) => /^agent-[A-Z0-9]+\.js$/.test(f));
  assert.equal(agentChunks.length, 1, `index.js imports one agent chunk: ${agentChunks.join(', ')}`);
  const defaultMode = new Set([...index, ...staticClosure(bundle, agentChunks[0]!), ...staticClosure(bundle, 'cni-worker.js')]);

  const holders = new Map<string, string[]>();
  for (const [f, c] of bundle) {
    const found = splitCodeIn(c.text, marker);
    if (found.length) holders.set(f, found);
  }
  for (const [f, found] of holders) {
    assert.ok(!defaultMode.has(f), `${f} (${found.join(', ')}) is loaded by the default single-process agent`);
  }
  // The code is in the bundle (else the check above looked at nothing), and every chunk holding it is reached.
  const kinds = new Set([...holders.values()].flat());
  for (const k of ['generated API code', 'ConnectRPC (Grpc-Status)', 'node:http2', 'the TLS files (src/rpc/tls.ts)', 'the agent\'s mirror (src/agent/mirror.ts)']) {
    assert.ok(kinds.has(k), `${k} is in some chunk of dist/agent`);
  }
  const dynamicTargets = new Set([...bundle.values()].flatMap((c) => c.dynamics));
  for (const f of holders.keys()) {
    const reachedDynamically = [...dynamicTargets].some((d) => staticClosure(bundle, d).has(f));
    assert.ok(reachedDynamically, `${f} is reached through some dynamic import()`);
  }
});
