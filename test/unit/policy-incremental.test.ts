// One PolicyCompiler fed a sequence of single changes (as the engine is, for its whole life) must
// compile each state to the same verdicts as a compiler that sees only that state: whatever it keeps
// between compiles (ids, caches) never changes what a flow gets. Verdicts via lookupCompiled over
// every pair of the state's addresses and a few outside ones, on the ports and protocols the
// generators use.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { PolicyCompiler, compile, lookupCompiled } from '../../src/policy/compile.js';
import type { PolicyState } from '../../src/policy/types.js';
import { changesArb } from '../helpers/policy-gen.js';

const OUTSIDE = ['10.9.0.1', '10.9.1.200', '192.168.3.4', '8.8.8.8', '10.9.2.7'];

function sameVerdicts(state: PolicyState, got: ReturnType<typeof compile>, want: ReturnType<typeof compile>, step: number): void {
  const ips = [...state.pods.flatMap((p) => p.ips), ...OUTSIDE];
  for (const src of ips) for (const dst of ips) {
    for (const proto of [6, 17, 132, 1]) for (const dport of proto === 1 ? [0] : [53, 80, 81, 443, 8080, 300]) {
      const f = { src, dst, proto, dport };
      const a = lookupCompiled(got.contents, f);
      const b = lookupCompiled(want.contents, f);
      if (a !== b) {
        assert.fail(`step ${step}: flow ${JSON.stringify(f)}: incremental ${a ? 'allows' : 'denies'}, from scratch ${b ? 'allows' : 'denies'}\n` +
          `state: ${JSON.stringify(state)}\nincremental: ${JSON.stringify(got.contents)}\nfrom scratch: ${JSON.stringify(want.contents)}`);
      }
    }
  }
}

test('a sequence of single changes compiled by one compiler = each state compiled from scratch', () => {
  let steps = 0;
  fc.assert(
    fc.property(changesArb({ maxPods: 8, maxPolicies: 4, length: 10 }), (states) => {
      const c = new PolicyCompiler();
      states.forEach((s, i) => {
        steps++;
        sameVerdicts(s, c.compile(s), compile(s), i);
      });
    }),
    { numRuns: 300 },
  );
  process.stdout.write(`# ${steps} states compiled both ways\n`);
});
