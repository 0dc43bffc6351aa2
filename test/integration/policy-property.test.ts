// The property test of issue 11: random pods, labels, namespaces, policies and ports
// are compiled (src/policy/compile.ts), programmed into the real maps (PolicyDataplane
// in a scratch pin root), and packets crafted for random flows are run through the
// COMPILED tc programs with BPF_PROG_TEST_RUN: patu_pol_from_pod (the source's egress)
// then patu_pol_to_pod (the destination's ingress). A flow passes when both return
// TC_ACT_UNSPEC. The verdict must equal the reference evaluator's (src/policy/evaluate.ts,
// written from the API docs). Needs root (BPF programs).
// Creates only pins under /sys/fs/bpf/patu-test-polprop-<pid>/ (removed after the file).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { POL, PolicyDataplane, ctKeyC, ctValC, peerKeyC, policyPins, ruleKeyC, ruleKeyString, ruleKeyStrings } from '../../src/dataplane/policy-tc.js';
import { PolicyEngine } from '../../src/policy/engine.js';
import { TypedMap, u32 } from '../../src/kernel/bpf/map.js';
import { craftFrame, TC_ACT } from '../../src/kernel/bpf/test-run.js';
import { PolicyCompiler } from '../../src/policy/compile.js';
import { Evaluator } from '../../src/policy/evaluate.js';
import type { Flow, PolicyState } from '../../src/policy/types.js';
import { scratchForTests } from '../helpers/kernel.js';
import { changesArb, e2eIp, e2eState, flowArb, np, stateArb, E2E_NAMESPACES, E2E_PODS } from '../helpers/policy-gen.js';

const isRoot = process.getuid?.() === 0;
const skip = isRoot ? false : 'needs root (BPF programs)';
const scratch = scratchForTests('patu-test-polprop');
let dp: PolicyDataplane | undefined;
const PIN = scratch.pinRoot();

before(() => {
  if (!isRoot) return;
  dp = PolicyDataplane.open({ pinRoot: PIN });
});
after(() => dp?.close());

let sport = 20000;
/** The programs' verdict on a new flow: a SYN (TCP), a datagram (UDP, SCTP) or an echo request (ICMP, id = sport). */
function kernelVerdict(d: PolicyDataplane, f: Flow): { allowed: boolean; from: number; to: number } {
  sport = sport >= 60000 ? 20000 : sport + 1; // a fresh source port: never an earlier flow's conntrack entry or its reply
  const data = craftFrame({ src: f.src, dst: f.dst, proto: f.proto, sport, dport: f.dport, ...(f.proto === 6 ? { tcpFlags: 0x02 } : {}) });
  const from = d.testRun('fromPod', { data }).retval;
  const to = d.testRun('toPod', { data }).retval;
  return { allowed: from === TC_ACT.UNSPEC && to === TC_ACT.UNSPEC, from, to };
}

/** How the flows were decided (so a run shows it exercised rules, not only open pods). */
const mix = { host: 0, open: 0, byRule: 0, denied: 0 };

function check(d: PolicyDataplane, compiler: PolicyCompiler, state: PolicyState, flows: Flow[]): void {
  const compiled = compiler.compile(state);
  d.sync(compiled.contents);
  d.flushConntrack(() => true);
  // The tries hold exactly the contents' keys (the sync diffs against what it wrote last: nothing stale stays).
  const want = new Map<string, number>();
  const strs: string[] = [];
  for (const r of compiled.contents.rules) {
    strs.length = 0;
    ruleKeyStrings(r, strs);
    for (const k of strs) want.set(k, Math.min(want.get(k) ?? Infinity, r.policyId));
  }
  const rules = TypedMap.fromPin(policyPins(PIN).rule, ruleKeyC, u32);
  const peers = TypedMap.fromPin(policyPins(PIN).peer, peerKeyC, u32);
  try {
    assert.deepEqual(new Map([...rules.entries()].map(([k, v]) => [ruleKeyString(k), v])), want, 'patu_pol_rule holds the compiled rules\' keys');
    assert.deepEqual(new Map([...peers.entries()].map(([k, v]) => [`${k.ip}/${k.prefixlen}`, v])), new Map(compiled.contents.peers.map((p) => [p.cidr, p.peerClass])), 'patu_pol_peer holds the compiled peers');
  } finally {
    rules.close();
    peers.close();
  }
  const ev = new Evaluator(state);
  for (const f of flows) {
    const want = ev.verdict(f);
    if (want.host) mix.host++;
    else if (!want.allowed) mix.denied++;
    else if (want.ingress.isolated || want.egress.isolated) mix.byRule++;
    else mix.open++;
    const got = kernelVerdict(d, f);
    if (got.allowed !== want.allowed) {
      assert.fail(
        `flow ${JSON.stringify(f)}: evaluate() says ${want.allowed ? 'allow' : 'deny'} (egress ${JSON.stringify(want.egress)}, ingress ${JSON.stringify(want.ingress)}), ` +
          `the programs ${got.allowed ? 'allow' : 'deny'} (from_pod ${got.from}, to_pod ${got.to})\n` +
          `state: ${JSON.stringify(state)}\ncompiled: ${JSON.stringify(compiled.contents)}\nread back: ${JSON.stringify(d.read())}`,
      );
    }
  }
}

test('the e2e model: every pod pair, ports 80/81, TCP/UDP/SCTP, through the kernel programs = evaluate()', { skip }, () => {
  const d = dp!;
  const policies = [
    np('x', 'deny', { podSelector: {}, policyTypes: ['Ingress', 'Egress'] }),
    np('x', 'named', { podSelector: { matchLabels: { pod: 'a' } }, ingress: [{ from: [{ namespaceSelector: { matchLabels: { ns: 'y' } } }], ports: [{ port: 'serve-81-udp', protocol: 'UDP' }] }] }),
    np('x', 'eg', { podSelector: { matchLabels: { pod: 'b' } }, egress: [{ to: [{ ipBlock: { cidr: '10.200.0.0/16', except: ['10.200.3.0/24'] } }], ports: [{ port: 'serve-80-tcp' }, { port: 81, endPort: 81, protocol: 'SCTP' }] }] }),
    np('y', 'sctp', { podSelector: {}, ingress: [{ ports: [{ port: 80, protocol: 'SCTP' }] }] }),
    np('z', 'from-x-a', { podSelector: { matchLabels: { pod: 'c' } }, ingress: [{ from: [{ namespaceSelector: { matchLabels: { ns: 'x' } }, podSelector: { matchLabels: { pod: 'a' } } }] }] }),
  ];
  const flows: Flow[] = [];
  for (const a of E2E_NAMESPACES) for (const p of E2E_PODS) for (const b of E2E_NAMESPACES) for (const q of E2E_PODS) {
    for (const proto of [6, 17, 132]) for (const dport of [80, 81]) flows.push({ src: e2eIp(a, p), dst: e2eIp(b, q), proto, dport });
  }
  flows.push({ src: '192.168.1.10', dst: e2eIp('x', 'a'), proto: 6, dport: 10250 }); // the node (kubelet probes)
  flows.push({ src: e2eIp('x', 'a'), dst: '8.8.8.8', proto: 17, dport: 53 });
  flows.push({ src: e2eIp('y', 'a'), dst: e2eIp('x', 'a'), proto: 1, dport: 0 });
  check(d, new PolicyCompiler(), e2eState(policies), flows);
});

test('random states and flows: the compiled tc programs agree with evaluate()', { skip, timeout: 600_000 }, () => {
  const d = dp!;
  // One compiler across runs, as in the agent: ids move on, maps are diffed, never reset.
  const compiler = new PolicyCompiler();
  let runs = 0;
  let flowsRun = 0;
  fc.assert(
    fc.property(stateArb({ allLocal: true, maxPods: 10, maxPolicies: 5 }).chain((s) => fc.tuple(fc.constant(s), fc.array(flowArb(s), { minLength: 5, maxLength: 40 }))), ([state, flows]) => {
      runs++;
      flowsRun += flows.length;
      check(d, compiler, state, flows);
    }),
    { numRuns: 500 },
  );
  process.stdout.write(`# ${runs} random states, ${flowsRun} flows, each through patu_pol_from_pod and patu_pol_to_pod; all flows of the file: ${JSON.stringify(mix)}\n`);
  assert.ok(mix.byRule > 100 && mix.denied > 100, `the flows exercise rules both ways: ${JSON.stringify(mix)}`);
});

test('a sequence of changes through the engine: conntrack judged only where the maps changed = every flow judged', { skip, timeout: 600_000 }, () => {
  // The engine judges only the flows a sync can have changed (its ends' endpoints, rules or peer
  // prefixes); here every conntrack entry is checked after each change: a tombstone exactly when
  // evaluate() denies the flow. Flows the state allows get a live entry again, as traffic would make.
  const pin = scratch.pinRoot('eng');
  const d = PolicyDataplane.open({ pinRoot: pin });
  const ct = TypedMap.fromPin(policyPins(pin).ct, ctKeyC, ctValC);
  const quiet = { info() {}, warn() {}, error() {} };
  let steps = 0;
  let cut = 0;
  try {
    fc.assert(
      fc.property(changesArb({ allLocal: true, maxPods: 8, maxPolicies: 4, length: 8 }), (states) => {
        ct.batchDelete([...ct.keys()]);
        const engine = new PolicyEngine(d, quiet, { namesFile: '' });
        const ips = [...new Set(states.flatMap((s) => s.pods.flatMap((p) => p.ips)))];
        const flows: Flow[] = [];
        for (const src of ips) for (const dst of ips) if (src !== dst) for (const proto of [6, 17]) for (const dport of [80, 443]) flows.push({ src, dst, proto, dport });
        const keyOf = (f: Flow, i: number, dir: number) => ({ src: f.src, dst: f.dst, sport: 30000 + i, dport: f.dport, proto: f.proto, dir, pad: 0 });
        const live = (): [ReturnType<typeof keyOf>, { expiresNs: bigint; policy: number; epId: number; flags: number; pad: number }][] =>
          flows.flatMap((f, i) => [POL.EGRESS, POL.INGRESS].map((dir) => [keyOf(f, i, dir), { expiresNs: 1n << 62n, policy: 0, epId: 0, flags: POL.CT_ESTABLISHED, pad: 0 }] as [ReturnType<typeof keyOf>, { expiresNs: bigint; policy: number; epId: number; flags: number; pad: number }]));
        ct.batchUpdate(live()); // before the first state: it judges every flow
        for (const s of states) {
          steps++;
          const r = engine.setState(s);
          cut += r.flushed;
          const ev = new Evaluator(s);
          const have = new Map<string, boolean>();
          for (const [k, v] of ct.entriesBatch()) {
            const allowed = ev.verdict({ src: k.src, dst: k.dst, proto: k.proto, dport: k.dport }).allowed;
            const tomb = (v.flags & POL.CT_DENIED) !== 0;
            assert.equal(tomb, !allowed, `step ${steps}: ${JSON.stringify({ ...k, flags: v.flags })}: evaluate() ${allowed ? 'allows' : 'denies'}, the entry is ${tomb ? 'a tombstone' : 'live'}\nstates: ${JSON.stringify(states)}`);
            have.set(`${k.src} ${k.sport} ${k.dir}`, true);
          }
          // Allowed flows without an entry (their tombstone was removed): traffic makes one again.
          ct.batchUpdate(live().filter(([k]) => !have.has(`${k.src} ${k.sport} ${k.dir}`) && ev.verdict({ src: k.src, dst: k.dst, proto: k.proto, dport: k.dport }).allowed));
        }
      }),
      { numRuns: 150 },
    );
  } finally {
    ct.close();
    d.close();
  }
  process.stdout.write(`# ${steps} states through the engine, ${cut} flows cut off or let back\n`);
  assert.ok(cut > 50, 'the changes cut flows off and let them back');
});
