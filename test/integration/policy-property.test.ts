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
import { PolicyDataplane } from '../../src/dataplane/policy-tc.js';
import { craftFrame, TC_ACT } from '../../src/kernel/bpf/test-run.js';
import { PolicyCompiler } from '../../src/policy/compile.js';
import { Evaluator } from '../../src/policy/evaluate.js';
import type { Flow, PolicyState } from '../../src/policy/types.js';
import { scratchForTests } from '../helpers/kernel.js';
import { e2eIp, e2eState, flowArb, np, stateArb, E2E_NAMESPACES, E2E_PODS } from '../helpers/policy-gen.js';

const isRoot = process.getuid?.() === 0;
const skip = isRoot ? false : 'needs root (BPF programs)';
const scratch = scratchForTests('patu-test-polprop');
let dp: PolicyDataplane | undefined;

before(() => {
  if (!isRoot) return;
  dp = PolicyDataplane.open({ pinRoot: scratch.pinRoot() });
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
