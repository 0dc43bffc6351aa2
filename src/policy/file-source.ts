// The standalone policy source: one local file (YAML stream or JSON) of Namespaces,
// NetworkPolicies and Pods (parse.ts), for hosts without Kubernetes (podman). Read like
// the services file: a regular file only (a FIFO or a device is refused), bounded in size,
// and watched through its directory (editors replace files by rename). A bad edit is
// reported once it has stood for settleMs and the last good state stays programmed.
import { FileWatcher, readConfigFile, type FileWatchOptions } from '../config-file.js';
import { MAX_POLICY_FILE_BYTES, parsePolicyText, PolicyFileError } from './parse.js';
import type { PolicyState } from './types.js';

/** Reads a policy file: a regular file of at most MAX_POLICY_FILE_BYTES, opened non-blocking. */
export function readPolicyFile(file: string): string {
  return readConfigFile(file, { what: 'policy file', maxBytes: MAX_POLICY_FILE_BYTES, fail: (problem) => new PolicyFileError(file, [problem]) });
}

export async function loadPolicyFile(file: string): Promise<PolicyState> {
  return parsePolicyText(readPolicyFile(file), file);
}

export type PolicyWatchOptions = FileWatchOptions<PolicyState>;

/** Watches a policy file (config-file.ts: reload at the first event, coalesced, bad edits settle before they are reported). */
export class PolicyFileWatcher extends FileWatcher<PolicyState> {
  constructor(file: string, opts: PolicyWatchOptions) {
    super(file, loadPolicyFile, opts);
  }
}
