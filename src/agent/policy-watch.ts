// The agent's policy-file source (--policy-file): loads the policy programs (or reuses
// their pins), attaches them to every pod veth, and keeps the maps in step with the file
// and with the node's addresses (always allowed: kubelet-style probes from the node)
// through one PolicyEngine. A bad edit is logged and the last good state stays; the
// engine is handed back so the CNI ADD hook can tell it a new pod's address at once.
import { DEFAULTS } from '../defaults.js';
import { messageOf } from '../errors.js';
import { PolicyDataplane } from '../dataplane/policy-tc.js';
import type { BpffsOptions } from '../kernel/bpf/pins.js';
import { AddressWatch } from '../kernel/netlink/addr-watch.js';
import { PolicyEngine, type PolicyApplyResult, type PolicyLog } from '../policy/engine.js';
import { PolicyFileWatcher } from '../policy/file-source.js';
import type { PolicyState } from '../policy/types.js';

export interface PolicyWatchOptions extends BpffsOptions {
  pinRoot: string;
  log: PolicyLog;
  /** Directory holding policy.o (default: build/bpf of this tree). */
  objectDir?: string;
  /** Where the names file goes (default DEFAULTS.policyStateDir). */
  stateDir?: string;
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
  const dp = PolicyDataplane.open({
    pinRoot: opts.pinRoot,
    ...(opts.objectDir ? { objectDir: opts.objectDir } : {}),
    ...(opts.mountBpffs === undefined ? {} : { mountBpffs: opts.mountBpffs }),
  });
  let addrs: AddressWatch | undefined;
  let timer: NodeJS.Timeout | undefined;
  let watcher: PolicyFileWatcher | undefined;
  try {
    const { policyNamesPath } = await import('../policy/names.js');
    const engine = new PolicyEngine(dp, log, { namesFile: policyNamesPath(opts.pinRoot, opts.stateDir) });
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
    // The programs on every pod veth, after the maps hold the state (a veth attached
    // before would briefly see none of it).
    const attached = dp.attachAll(opts.bridges);
    log.info({ file, veths: attached, policies: fileState?.policies.length ?? 0 }, 'network policy enforced from the policy file');
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
        dp.close();
      },
    };
  } catch (e) {
    clearInterval(timer);
    watcher?.close();
    addrs?.close();
    dp.close();
    throw e;
  }
}
