// The names file: what the numbers in the policy maps mean (policy ids, endpoint ids,
// peer classes), written by the engine after every change and read by `patu policy`,
// `patu monitor` and the metrics. The maps hold numbers only; this is the only place
// their names are kept. Written atomically (temporary file + rename), so a reader sees
// the old or the new file, never half of one.
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { DEFAULTS } from '../defaults.js';
import { errnoOf } from '../errors.js';

export interface PolicyNamesEndpoint {
  /** ns/name */
  pod: string;
  ips: string[];
  /** Ids of the policies that isolate it, per direction. */
  ingress: number[];
  egress: number[];
  /** The address came from CNI ADD, not from the source (the policy file names the pod without one). */
  fromCni?: boolean;
}

export interface PolicyNames {
  version: 1;
  /** policy id -> ns/name */
  policies: Record<string, string>;
  /** endpoint id -> the pod */
  endpoints: Record<string, PolicyNamesEndpoint>;
  /** peer class -> up to 8 members (ns/pod, or an address prefix) */
  classes: Record<string, string[]>;
}

/** <dir>/<basename(pinRoot)>.names.json */
export const policyNamesPath = (pinRoot: string, dir: string = DEFAULTS.policyStateDir): string =>
  join(dir, `${basename(pinRoot) || 'patu'}.names.json`);

export function writePolicyNames(file: string, names: PolicyNames): void {
  mkdirSync(dirname(file), { recursive: true, mode: 0o755 });
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify(names), { mode: 0o644 });
  renameSync(tmp, file);
}

/** The names file of this pin root; null when there is none (no engine has run). A damaged file throws. */
export function readPolicyNamesFile(file: string): PolicyNames | null {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    if (errnoOf(e) === 'ENOENT') return null;
    throw e;
  }
  const v = JSON.parse(text) as PolicyNames;
  if (!v || typeof v !== 'object' || v.version !== 1) throw new Error(`${file}: not a patu policy names file (version 1)`);
  v.policies ??= {};
  v.endpoints ??= {};
  v.classes ??= {};
  return v;
}

export const readPolicyNames = (pinRoot: string, dir?: string): PolicyNames | null => readPolicyNamesFile(policyNamesPath(pinRoot, dir));
