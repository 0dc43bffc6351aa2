// `patu monitor [--pod ns/name] [--allows] [--json]`: NetworkPolicy drops, live, from the patu_pol_events ring buffer.
// The tc programs submit events only while patu_pol_cfg.monitor is set (no reader: no submit, no cost), so this
// sets it while it reads and clears it on the way out (end of input, SIGINT, SIGTERM, an error). Killed with
// SIGKILL it cannot: the flag then stays on until the next `patu monitor` ends (the programs keep reserving
// ring-buffer space that nobody reads, which fails cheaply once it is full).
import { PolicyEvents, policyPinned } from '../dataplane/policy-tc.js';
import { PatuError } from '../errors.js';
import { eventMatchesPod, eventRow, formatEventRow, readPolicyNames } from '../policy/view.js';

/** No policy maps on this node: nothing enforces policy, so there is nothing to monitor. */
export class PolicyNotSetUpError extends PatuError {
  readonly code = 'POLICY_NOT_SET_UP';
}

export interface MonitorOptions {
  pinRoot: string;
  /** ns/name: only events whose endpoint, source or destination is this pod. */
  pod?: string;
  /** Also new flows admitted (patu_pol_cfg.monitor_allow). */
  allows?: boolean;
  json?: boolean;
  /** Stop after this many events (tests, scripts); default: until interrupted. */
  count?: number;
  /** Where lines go (tests capture them). */
  out?: (line: string) => void;
  /** Resolves to stop (tests); default: SIGINT/SIGTERM. */
  until?: Promise<void>;
}

const POLL_MS = 100;

/** Kernel monotonic ns (bpf_ktime_get_ns) -> wall-clock ms, from one reading of both clocks. */
export function wallClock(): (tsNs: bigint) => number {
  const mono = process.hrtime.bigint();
  const wall = Date.now();
  return (ts) => wall - Number(mono - ts) / 1e6;
}

export async function monitorCommand(opts: MonitorOptions): Promise<number> {
  const out = opts.out ?? ((l: string) => process.stdout.write(l + '\n'));
  if (!policyPinned(opts.pinRoot)) throw new PolicyNotSetUpError(`no NetworkPolicy maps under ${opts.pinRoot}/policy: policy enforcement is not set up on this node (patu agent with --policy-file or --kubernetes)`);
  let names = readPolicyNames(opts.pinRoot);
  if (opts.pod && ![...names.endpoints.values()].some((e) => e.pod === opts.pod)) {
    process.stderr.write(`patu monitor: ${opts.pod} is not an endpoint of this node's policies (yet): showing its events once it is\n`);
  }
  let stop!: () => void;
  const stopped = new Promise<void>((r) => (stop = r));
  const onSignal = (): void => stop();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  void opts.until?.then(() => stop());
  let shown = 0;
  const wallOf = wallClock();
  let namesAt = Date.now();
  // Sets patu_pol_cfg.monitor (and monitor_allow with --allows); close() clears it.
  const events = PolicyEvents.open(opts.pinRoot, { allows: Boolean(opts.allows) });
  try {
    if (!opts.json) out(`${'TIME'.padEnd(12)}  ${'VERDICT'.padEnd(5)}  ${'DIR'.padEnd(7)}  ${'SOURCE'.padEnd(36)}    ${'DESTINATION'.padEnd(36)}  PROTO  POLICY`);
    let done = false;
    void stopped.then(() => (done = true));
    while (!done) {
      // The names change with pods and policies: re-read them now and then (one small file).
      if (Date.now() - namesAt > 2000) {
        names = readPolicyNames(opts.pinRoot);
        namesAt = Date.now();
      }
      for (const e of events.poll()) {
        if (!opts.allows && e.reason === 'allow') continue;
        if (opts.pod && !eventMatchesPod(e, names, opts.pod)) continue;
        const row = eventRow(e, names, wallOf);
        out(opts.json ? JSON.stringify({ ...row, epId: e.epId, policyId: e.policy, tsNs: String(e.tsNs) }) : formatEventRow(row));
        if (opts.count !== undefined && ++shown >= opts.count) done = true;
        if (done) break;
      }
      if (!done) await Promise.race([new Promise((r) => setTimeout(r, POLL_MS)), stopped]);
    }
  } finally {
    events.close();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
  return 0;
}
