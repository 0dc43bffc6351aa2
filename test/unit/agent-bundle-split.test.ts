// The default single process never loads gRPC or TLS code (issue 13): in the agent's bundle
// (dist/agent, esbuild split at dynamic imports), what `patu agent` loads at start is the
// static import closure of index.js; the split mode's client, TLS policy and mirror must be
// outside it, reached only through the dynamic import behind --manager. The same walk must
// find them in some chunk, or the check proves nothing.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT } from '../helpers/cni.js';

const DIR = join(REPO_ROOT, 'dist', 'agent');
const SPLIT_ONLY = /createGrpcTransport|Http2SessionManager|connectNodeAdapter|loadTlsDir|class DataplaneMirror/;

function staticClosure(entry: string): Set<string> {
  const seen = new Set<string>();
  const todo = [entry];
  while (todo.length) {
    const f = todo.pop()!;
    if (seen.has(f)) continue;
    seen.add(f);
    const text = readFileSync(join(DIR, f), 'utf8');
    // Static imports only (`import ... from "./x.js"` / `import "./x.js"`); `import("./x.js")` is left out.
    for (const m of text.matchAll(/(?:^|[;\n}])\s*import\s*(?:[\w${}\s,*]+?\s*from\s*)?["']\.\/([^"']+)["']/g)) todo.push(m[1]!);
    for (const m of text.matchAll(/(?:^|[;\n}])\s*export\s*(?:\*|\{[^}]*\})\s*from\s*["']\.\/([^"']+)["']/g)) todo.push(m[1]!);
  }
  return seen;
}

test('agent bundle: gRPC, TLS and the mirror are not in what the default agent loads at start', { skip: existsSync(join(DIR, 'index.js')) ? false : 'dist/agent not built' }, () => {
  const loaded = staticClosure('index.js');
  const withSplit = readdirSync(DIR).filter((f) => f.endsWith('.js') && SPLIT_ONLY.test(readFileSync(join(DIR, f), 'utf8')));
  assert.ok(withSplit.length > 0, 'the split-mode code is in the bundle somewhere (else this test cannot fail)');
  const leaked = [...loaded].filter((f) => withSplit.includes(f));
  assert.deepEqual(leaked, [], `chunks loaded at start hold split-mode code: ${leaked.join(', ')}`);
});
