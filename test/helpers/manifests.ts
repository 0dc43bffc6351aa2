// What the manifest tests share: deploy/*.yaml read as objects, and the CLI's options, so a
// flag a manifest passes is checked against `patu` itself.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import type { Command } from 'commander';
import { REPO_ROOT } from './cni.js';

export type Doc = Record<string, any>;

/** Every document of deploy/<name>, parsed; a YAML error fails the test naming the file. */
export function loadManifest(name: string): Doc[] {
  const text = readFileSync(join(REPO_ROOT, 'deploy', name), 'utf8');
  const docs = parseAllDocuments(text);
  for (const d of docs) assert.deepEqual(d.errors.map(String), [], `${name}: YAML errors`);
  return docs.map((d) => d.toJS() as Doc).filter((d) => d !== null);
}

/** A command's option names, long and short. */
export function cliOptions(cmd: Command): Set<string> {
  return new Set(cmd.options.flatMap((o) => [o.long, o.short].filter((x): x is string => Boolean(x))));
}

/** The flags of a container's args, without their values. */
export function flagsOf(args: string[]): string[] {
  return args.filter((a) => a.startsWith('--')).map((a) => a.split('=')[0]!);
}
