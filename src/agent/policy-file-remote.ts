// The policy file (--policy-file) in split mode (`patu agent --manager`): the same file and
// watcher as policy-watch.ts, the state handed to the agent's DataplaneMirror instead of a
// PolicyEngine. Nothing of the kernel is loaded here: no policy programs, no address watch.
// The state carries no node addresses: the manager fills in its own view of the node's
// (proto: empty node_addresses = the data plane's own). A bad edit is logged and the last
// good state stays, as in-process.
//
// Pods the file names without an address get it from their CNI ADD, which the manager
// serves in split mode: that is the manager's engine's to remember, not this side's. The
// state asks it to (rememberCniAddresses), so a restarted manager applies the addresses it
// learned before, as the single process does (policy-watch.ts); Kubernetes states never ask.
import { PolicyFileWatcher, loadPolicyFile } from '../policy/file-source.js';
import type { PolicyState } from '../policy/types.js';
import type { MirrorLog } from './mirror.js';

export interface PolicyFileRemoteOptions {
  /** Where the state goes (DataplaneMirror.policy). */
  sink: { setState(state: PolicyState, opts?: { rememberCniAddresses?: boolean }): void };
  log: MirrorLog;
  /** How long a bad read waits for a follow-up write before it is reported. */
  settleMs?: number;
}

export interface PolicyFileRemoteHandle {
  settled(): Promise<void>;
  close(): void;
}

/** Throws when the file is bad at start (nothing is handed on then). */
export async function policyFileToSink(file: string, o: PolicyFileRemoteOptions): Promise<PolicyFileRemoteHandle> {
  await loadPolicyFile(file);
  let policies = 0;
  const watcher = new PolicyFileWatcher(file, {
    onChange: (s) => {
      policies = s.policies.length;
      o.sink.setState({ ...s, nodeAddresses: [] }, { rememberCniAddresses: true });
    },
    onError: (e) => o.log.error({ file, err: e.message }, 'policy file rejected; the last good state stays enforced'),
    ...(o.settleMs !== undefined ? { settleMs: o.settleMs } : {}),
  });
  await watcher.start();
  o.log.info({ file, policies }, 'network policy from the policy file (enforced by the data plane manager)');
  return { settled: () => watcher.settled(), close: () => watcher.close() };
}
