// The agent's policy-file source (--policy-file): the agent's policy engine (policy-engine.ts:
// programs loaded or reused, attached to the pod veths), kept in step with the file
// and with the node's addresses (always allowed: kubelet-style probes from the node)
// through one PolicyEngine. A bad edit is logged and the last good state stays; the
// engine is handed back so the CNI ADD hook can tell it a new pod's address at once.
import { DEFAULTS } from '../defaults.js';
import { messageOf } from '../errors.js';
import type { PolicyDataplane } from '../dataplane/policy-tc.js';
import type { BpffsOptions } from '../kernel/bpf/pins.js';
import { AddressWatch } from '../kernel/netlink/addr-watch.js';
import type { PolicyApplyResult, PolicyEngine, PolicyLog } from '../policy/engine.js';
import { openPolicyEngine } from './policy-engine.js';
import { PolicyFileWatcher } from '../policy/file-source.js';
import type { PolicyState } from '../policy/types.js';

export interface PolicyWatchOptions extends BpffsOptions {
  pinRoot: string;
  log: PolicyLog;
  /** The netns whose addresses are the node's (default: the agent's). */
  netns?: string;
  /** How often address notifications are read (ms). */
  pollMs?: number;
  /** Attach to the veths of these bridges only (default: every veth named like a patu host end). */
  bridges?: string[];
  /** After every apply (logs, metrics). */
  onApplied?: (r: PolicyApplyResult) => void;
  /** How long a bad read waits for a follow-up write before it is reported. */
  settleMs?: number;
}

export interface PolicyWatchHandle {
  readonly engine: PolicyEngine;
  readonly dp: PolicyDataplane;
  /** Waits for reloads in progress (tests). */
  settled(): Promise<void>;
  /** Stops watching; the programs and maps stay pinned and attached (enforcement goes on). */
  close(): void;
}

/** Starts enforcing the file's policies; throws when the file is bad at start (nothing is changed then). */
export async function policyWatch(file: string, opts: PolicyWatchOptions): Promise<PolicyWatchHandle> {
  const { log } = opts;
  // Checked before anything is loaded: a bad file at start changes nothing.
  const { loadPolicyFile } = await import('../policy/file-source.js');
  await loadPolicyFile(file);
  // The same kernel side and engine as with --kubernetes (programs attached to the pod veths there).
  const pe = openPolicyEngine({
    pinRoot: opts.pinRoot, log,
    ...(opts.mountBpffs === undefined ? {} : { mountBpffs: opts.mountBpffs }),
    ...(opts.bridges ? { bridges: opts.bridges } : {}),
    // The file may name pods without an address (CNI ADD gives it): kept across restarts.
    rememberCniAddresses: true,
  });
  const { engine, dp } = pe;
  let addrs: AddressWatch | undefined;
  let timer: NodeJS.Timeout | undefined;
  let watcher: PolicyFileWatcher | undefined;
  try {
    addrs = AddressWatch.open(opts.netns);
    const nodeAddresses = (): string[] => [...new Set(addrs!.list().map((a) => a.address))].sort();
    let node = nodeAddresses();
    let fileState: PolicyState | undefined;
    const apply = (): void => {
      if (!fileState) return;
      const r = engine.setState({ ...fileState, nodeAddresses: node });
      opts.onApplied?.(r);
    };
    watcher = new PolicyFileWatcher(file, {
      onChange: (s) => {
        fileState = s;
        apply();
      },
      onError: (e) => log.error({ file, err: e.message }, 'policy file rejected; the last good state stays enforced'),
      ...(opts.settleMs !== undefined ? { settleMs: opts.settleMs } : {}),
    });
    await watcher.start();
    log.info({ file, policies: fileState?.policies.length ?? 0 }, 'network policy enforced from the policy file');
    let failing = false;
    timer = setInterval(() => {
      try {
        if (addrs!.poll() || failing) {
          const now = nodeAddresses();
          if (now.join() !== node.join()) {
            node = now;
            log.info({ addresses: now }, 'node addresses changed (always allowed to and from pods)');
            apply();
          }
        }
        failing = false;
      } catch (e) {
        if (!failing) log.error({ err: messageOf(e) }, 'reading node addresses failed; retrying');
        failing = true;
      }
    }, opts.pollMs ?? DEFAULTS.nodeAddrPollMs);
    timer.unref();
    const w = watcher;
    const a = addrs;
    return {
      engine,
      dp,
      settled: () => w.settled(),
      close: () => {
        clearInterval(timer);
        w.close();
        a.close();
        pe.close();
      },
    };
  } catch (e) {
    clearInterval(timer);
    watcher?.close();
    addrs?.close();
    pe.close();
    throw e;
  }
}
