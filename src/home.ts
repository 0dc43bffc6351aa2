// Where this copy of patu lives: the checkout or installed tree that holds package.json,
// build/bpf/*.o and bin/patu. Found by walking up from this module's file, so the answer
// is the same for the module tree (dist/src/...), the CNI bundle (dist/cni.cjs) and the
// agent bundle (dist/agent/*.mjs): a path written relative to one module's depth would
// point outside the tree once esbuild moves that module into a bundle.
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

let home: string | undefined;

export function patuHome(): string {
  if (home !== undefined) return home;
  const start = dirname(fileURLToPath(import.meta.url));
  for (let dir = start; ; dir = dirname(dir)) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'dist'))) return (home = dir);
    if (dirname(dir) === dir) throw new Error(`patu's tree not found above ${start} (no package.json next to dist/)`);
  }
}

/** A compiled eBPF object of this tree: build/bpf/<name>.o. */
export const bpfObjectPath = (name: string): string => join(patuHome(), 'build', 'bpf', `${name}.o`);
