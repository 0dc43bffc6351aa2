// The agent's policy engine: the kernel side (PolicyDataplane: programs and maps pinned
// under <pinRoot>/policy) and the engine that compiles a PolicyState into it. One per
// agent, whichever source feeds it (Kubernetes with --network-policy, or --policy-file).
import { PolicyDataplane } from '../dataplane/policy-tc.js';
import { PolicyEngine, type PolicyLog } from '../policy/engine.js';
import type { PolicyState } from '../policy/types.js';
import { messageOf } from '../errors.js';

export interface AgentPolicyEngine {
  engine: PolicyEngine;
  dp: PolicyDataplane;
  /** What a policy source feeds. */
  sink: { setState(state: PolicyState): void };
  close(): void;
}

/**
 * Loads (or reuses the pins of) the policy programs and maps, takes over what they hold
 * (the engine seeds its ids from them: a restart with nothing changed writes nothing), and
 * attaches the programs to every patu veth already there (pods from before policy was on;
 * new ones are attached by CNI ADD).
 */
export function openPolicyEngine(o: { pinRoot: string; log: PolicyLog; mountBpffs?: boolean; bridges?: string[]; rememberCniAddresses?: boolean }): AgentPolicyEngine {
  const dp = PolicyDataplane.open({ pinRoot: o.pinRoot, ...(o.mountBpffs === undefined ? {} : { mountBpffs: o.mountBpffs }) });
  let engine: PolicyEngine;
  try {
    engine = new PolicyEngine(dp, o.log, { pinRoot: o.pinRoot, ...(o.rememberCniAddresses ? { rememberCniAddresses: true } : {}) });
  } catch (e) {
    dp.close();
    throw e;
  }
  try {
    const n = dp.attachAll(o.bridges);
    if (n) o.log.info({ veths: n }, 'policy programs attached to existing pod veths');
  } catch (e) {
    o.log.error({ err: messageOf(e) }, 'attaching the policy programs to existing pod veths failed (they are attached on their next CNI ADD)');
  }
  return {
    engine,
    dp,
    sink: {
      setState: (state) => {
        const r = engine.setState(state);
        if (r.changed || r.flushed || r.evicted) o.log.info({ mapChanges: r.changed, flowsCutOff: r.flushed, socketsEvicted: r.evicted, ms: r.ms, phases: r.phases }, 'network policy programmed');
      },
    },
    close: () => dp.close(),
  };
}
