// Runs generated CNI requests against the real plugin on a FuzzNode, the way a
// runtime does, once in-process (bin/patu running Node itself) and once through
// the agent (bin/patu forwarding to `patu agent`), and checks each answer:
//   - an exit code and a spec-shaped answer: 0 with a result (ADD) or nothing,
//     or an error object {cniVersion, code, msg} with a code from the README's
//     table, in the version asked for;
//   - a request that one of its mutations makes invalid fails with the code
//     and names the field (test/fuzz/cni-gen.ts says which);
//   - no stack trace in the answer, no answer larger than MAX_ANSWER;
//   - no hang: every exec is killed after the case timeout;
//   - nothing left behind: host links and addresses, the pod's interfaces,
//     IPAM files, pins, accel registry entries (a successful ADD is followed by
//     its DEL, as a runtime would);
//   - both paths give the same answer, and the agent (not the launcher's
//     fallback) served the forwarded one.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { PATU_BIN } from '../helpers/cni.js';
import { cniCaseArb, describeCase, materialize, type CniCase, type Materialized } from './cni-gen.js';
import { FuzzNode, SUBNET_PREFIX, type ExecOutcome, type Flavour, type NodeSnapshot } from './node.js';
import { MAX_HEADER_BYTES, MAX_STDIN_BYTES } from '../../src/agent/cni-wire.js';

/** Whether bin/patu hands this request to the agent (src/launcher/patu.c): else it runs it locally. */
function forAgent(env: Record<string, string | undefined>, stdin: string | Buffer): boolean {
  let header = 'PATU_REQUEST_ID=\n\n'.length + 32;
  for (const [k, v] of Object.entries(env)) {
    if (k.startsWith('CNI_') && v !== undefined && !v.includes('\n')) header += Buffer.byteLength(`${k}=${v}`) + 1;
  }
  return Buffer.byteLength(stdin) <= MAX_STDIN_BYTES && header <= MAX_HEADER_BYTES;
}

/** README "Errors follow the spec's codes": 1, 4, 6, 7, 11, 50, and patu's 100-103. */
export const ERROR_TABLE = [1, 4, 6, 7, 11, 50, 100, 101, 102, 103, 104];
/** An error answer is a short message: echoing a 300 KB field back is a log flood. */
export const MAX_ANSWER = 16 * 1024;
const STACK = /\n\s+at\s|\bat\s+\S+\s+\(?(file|node):|\.js:\d+:\d+|node:internal/;

export interface CniRunOptions {
  timeoutMs: number;
  flavours: Flavour[];
}

function checkAnswer(r: ExecOutcome, c: CniCase, m: Materialized, flavour: Flavour, maxMs: number): string[] {
  const p: string[] = [];
  const tag = `[${flavour}]`;
  if (r.timedOut) return [`${tag} no answer within ${maxMs} ms (hang)`];
  if (r.signal) return [`${tag} plugin died of ${r.signal}: stderr ${r.stderr.slice(0, 400)}`];
  const out = r.stdout.trim();
  if (r.code === 0) {
    if (m.expects.length) p.push(`${tag} exit 0, but must fail: ${m.expects.map((e) => `${e.why} (code ${e.codes.join('/')})`).join('; ')}`);
    if (c.command === 'ADD') {
      let res: any;
      try {
        res = JSON.parse(out);
      } catch {
        return [...p, `${tag} ADD exit 0 with a result that is not JSON: ${out.slice(0, 300)}`];
      }
      if (m.askedVersion && res.cniVersion !== m.askedVersion) p.push(`${tag} result cniVersion ${res.cniVersion}, asked ${m.askedVersion}`);
      if (!Array.isArray(res.ips) || res.ips.length === 0) p.push(`${tag} ADD result without ips: ${out.slice(0, 300)}`);
      if (!Array.isArray(res.interfaces)) p.push(`${tag} ADD result without interfaces: ${out.slice(0, 300)}`);
    } else if (c.command === 'VERSION') {
      try {
        if (!Array.isArray(JSON.parse(out).supportedVersions)) p.push(`${tag} VERSION without supportedVersions: ${out}`);
      } catch {
        p.push(`${tag} VERSION answer is not JSON: ${out.slice(0, 300)}`);
      }
    } else if (out !== '') p.push(`${tag} ${c.command} exit 0 must print nothing, printed ${out.slice(0, 300)}`);
    return p;
  }
  if (r.stdout.length > MAX_ANSWER) p.push(`${tag} error answer of ${r.stdout.length} bytes (limit ${MAX_ANSWER})`);
  let e: any;
  try {
    e = JSON.parse(out);
  } catch {
    return [...p, `${tag} exit ${r.code} with an answer that is not JSON: ${JSON.stringify(out.slice(0, 300))} stderr ${r.stderr.slice(0, 300)}`];
  }
  if (e === null || typeof e !== 'object') return [...p, `${tag} exit ${r.code} answer is not an object: ${out.slice(0, 300)}`];
  if (typeof e.cniVersion !== 'string') p.push(`${tag} error without cniVersion: ${out.slice(0, 300)}`);
  else if (m.askedVersion && e.cniVersion !== m.askedVersion) p.push(`${tag} error in cniVersion ${e.cniVersion}, asked ${m.askedVersion}`);
  if (!ERROR_TABLE.includes(e.code)) p.push(`${tag} error code ${JSON.stringify(e.code)} is not in the README's table: ${out.slice(0, 300)}`);
  if (typeof e.msg !== 'string' || e.msg === '') p.push(`${tag} error without msg: ${out.slice(0, 300)}`);
  if (e.details !== undefined && typeof e.details !== 'string') p.push(`${tag} details is not a string: ${out.slice(0, 300)}`);
  if (STACK.test(String(e.msg)) || STACK.test(String(e.details ?? ''))) p.push(`${tag} stack trace in the answer: ${out.slice(0, 500)}`);
  const codes = [...new Set([...m.expects.flatMap((x) => x.codes), ...m.allowedCodes])];
  if (m.expects.length && !codes.includes(e.code)) {
    p.push(`${tag} code ${e.code}, want ${codes.join('/')} for ${m.expects.map((x) => x.why).join('; ')}: ${out.slice(0, 300)}`);
  } else if (m.expects.length && m.strictNaming && !m.expects.some((x) => new RegExp(x.field, 'i').test(`${e.msg ?? ''} ${e.details ?? ''}`))) {
    p.push(`${tag} the error does not name ${m.expects.map((x) => x.field).join(' or ')}: ${out.slice(0, 300)}`);
  }
  return p;
}

/** What a successful ADD may leave by design: a bridge named in the config, and gateway addresses on a bridge. */
function allowedAfterAdd(line: string, bridge: string | undefined, before: NodeSnapshot): boolean {
  if (bridge && line.startsWith(`+ host link ${bridge} bridge `)) return true;
  const a = /^\+ host address (\S+) /.exec(line);
  if (a && (a[1] === bridge || before.links.get(a[1]!)?.startsWith('bridge'))) return true;
  return false;
}

/** Runs one case on every flavour; returns the problems found (empty: the case passed). */
export async function runCniCase(node: FuzzNode, c: CniCase, o: CniRunOptions, caseNo: number, outcomes?: Record<string, number>): Promise<string[]> {
  node.currentPod = caseNo % node.podNs.length;
  const pod = node.podNs[node.currentPod]!;
  const m = materialize(c, node);
  const problems: string[] = [];
  const answers: Partial<Record<Flavour, ExecOutcome>> = {};
  let before = node.snapshot([pod]);
  for (const flavour of o.flavours) {
    const served0 = node.agent?.served() ?? 0;
    const r = await node.exec(flavour, m.env, m.stdin, o.timeoutMs);
    answers[flavour] = r;
    if (outcomes && flavour === o.flavours[0]) {
      const k = r.timedOut ? 'hang' : r.code === 0 ? `${c.command} ok` : `code ${(() => { try { return JSON.parse(r.stdout).code; } catch { return '?'; } })()}`;
      outcomes[k] = (outcomes[k] ?? 0) + 1;
    }
    problems.push(...checkAnswer(r, c, m, flavour, o.timeoutMs));
    let execs = 1;
    let addOk = false;
    if (c.command === 'ADD' && r.code === 0) {
      addOk = true;
      const d = await node.exec(flavour, { ...m.env, CNI_COMMAND: 'DEL' }, m.stdin, o.timeoutMs);
      execs++;
      if (d.timedOut || d.code !== 0) problems.push(`[${flavour}] DEL after a successful ADD failed: exit ${d.code}${d.timedOut ? ' (timeout)' : ''} ${d.stdout.slice(0, 300)}`);
    }
    if (flavour === 'agent' && node.agent && forAgent(m.env, m.stdin) && !r.timedOut) {
      const end = Date.now() + 2_000;
      while (node.agent.served() < served0 + execs && Date.now() < end) await new Promise((res) => setTimeout(res, 20));
      if (node.agent.served() < served0 + execs) problems.push(`[agent] the agent logged ${node.agent.served() - served0} of ${execs} requests: the launcher's fallback answered instead`);
    }
    const after = node.snapshot([pod]);
    const changed = FuzzNode.diff(before, after);
    const left = changed.filter((l) => !(addOk && allowedAfterAdd(l, m.bridge, before)));
    if (left.length) problems.push(`[${flavour}] left behind: ${left.join('; ')}`);
    if (changed.length) {
      node.restore(before, after);
      before = node.snapshot([pod]);
    }
  }
  const [a, b] = [answers.inproc, answers.agent];
  if (a && b && !a.timedOut && !b.timedOut) {
    const code = (x: ExecOutcome) => `exit ${x.code} code ${(() => { try { return JSON.parse(x.stdout).code; } catch { return '-'; } })()}`;
    if (code(a) !== code(b)) problems.push(`in-process and agent answers differ: ${code(a)} vs ${code(b)}: ${a.stdout.slice(0, 200)} | ${b.stdout.slice(0, 200)}`);
  }
  if (problems.length) problems.unshift(`case: ${describeCase(c)}`);
  return problems;
}

/** Checks between batches: the agent answers VERSION and stays within the DaemonSet's memory limit. */
export async function batchCheck(node: FuzzNode): Promise<string[]> {
  if (!node.agent) return [];
  if (!node.agent.alive()) return [`the agent exited (${node.agent.child.exitCode ?? node.agent.child.signalCode}): ${node.agent.log.slice(-1500)}`];
  const p: string[] = [];
  const v = await node.agentAnswers();
  if (v) p.push(v);
  const rss = node.agent.rssKiB();
  if (rss > 256 * 1024) p.push(`agent RSS ${Math.round(rss / 1024)} MiB, over the DaemonSet's 256Mi limit`);
  return p;
}

/** Writes a failing case as files plus the shell lines that replay it by hand. */
export function writeReproducer(node: FuzzNode, c: CniCase, dir: string, caseNo: number): string {
  node.currentPod = caseNo % node.podNs.length;
  const m = materialize(c, node);
  const base = join(dir, `fuzz-case-${process.pid}-${caseNo}`);
  writeFileSync(`${base}.json`, m.stdin);
  writeFileSync(`${base}.case`, JSON.stringify(c, null, 1));
  const q = (v: string): string => `'${v.replace(/'/g, `'\\''`)}'`;
  const exports = Object.entries(m.env).filter(([k]) => k.startsWith('CNI_')).map(([k, v]) => `export ${k}=${q(v)}`);
  writeFileSync(`${base}.sh`, [
    '#!/bin/sh',
    `# ${describeCase(c).slice(0, 2000)}`,
    '# Runs the request in-process in the fuzz node\'s host netns (replace nsenter ... with a netns of your own).',
    ...exports,
    `PATU_NO_AGENT=1 nsenter --net=${node.hostNsPath} ${PATU_BIN} < ${base}.json`,
    '',
  ].join('\n'), { mode: 0o755 });
  return `sh ${base}.sh   (stdin ${base}.json, case ${base}.case)`;
}

export interface FuzzRunResult {
  runs: number;
  failed?: { seed: number; path: string; problems: string[]; reproducer: string };
  ms: number;
  /** How the in-process answers came out: "exit 0" or "code N", with counts. */
  outcomes: Record<string, number>;
  /** keep-going mode: every failing case. */
  failures: { caseNo: number; problems: string[]; reproducer: string }[];
}

/**
 * The property run: `runs` cases from `seed`, a batch check every `batch` cases.
 * Strict mode stops at the first failing case and reports FC_SEED/FC_PATH to
 * replay it; keep-going mode records every failing case and carries on
 * (restarting the agent if it stopped answering), to survey a build.
 */
export async function fuzzCni(
  node: FuzzNode,
  opts: { runs: number; seed: number; path?: string; batch: number; timeoutMs: number; keepGoing?: boolean; reproDir: string; log?: (s: string) => void; timeLimitMs?: number },
): Promise<FuzzRunResult> {
  const t0 = performance.now();
  let caseNo = 0;
  const failures: FuzzRunResult['failures'] = [];
  const outcomes: Record<string, number> = {};
  const flavours: Flavour[] = node.agent ? ['inproc', 'agent'] : ['inproc'];
  const prop = fc.asyncProperty(cniCaseArb, async (c) => {
    const n = caseNo++;
    let problems = await runCniCase(node, c, { timeoutMs: opts.timeoutMs, flavours }, n, outcomes);
    if ((n + 1) % opts.batch === 0) {
      const b = await batchCheck(node);
      if (b.length) problems = [...problems, `after case ${n} (batch check): ${b.join('; ')}`];
    }
    if (problems.length && opts.keepGoing) {
      const reproducer = writeReproducer(node, c, opts.reproDir, n);
      failures.push({ caseNo: n, problems, reproducer });
      opts.log?.(`case ${n} FAILED:\n  ${problems.join('\n  ')}\n  replay: ${reproducer}\n`);
      if (node.agent && (await batchCheck(node)).length) {
        opts.log?.('  agent not answering: restarting it\n');
        await node.agent.kill('SIGKILL');
        await node.startAgent();
      }
      return true;
    }
    if (problems.length) {
      lastFailure = { c, n, problems };
      return false;
    }
    if (opts.log && (n + 1) % 500 === 0) opts.log(`${node.opts.tag}: ${n + 1} cases, ${((performance.now() - t0) / 1000).toFixed(0)} s\n`);
    return true;
  });
  let lastFailure: { c: CniCase; n: number; problems: string[] } | undefined;
  const details = await fc.check(prop, {
    numRuns: opts.runs,
    seed: opts.seed,
    ...(opts.path ? { path: opts.path } : {}),
    // Shrinking re-runs real kernel work per step; the first failure, replayable, is enough.
    endOnFailure: true,
    ...(opts.timeLimitMs ? { interruptAfterTimeLimit: opts.timeLimitMs } : {}),
  });
  const res: FuzzRunResult = { runs: caseNo, ms: performance.now() - t0, failures, outcomes };
  if (details.failed && lastFailure) {
    res.failed = {
      seed: details.seed,
      path: details.counterexamplePath ?? '',
      problems: lastFailure.problems,
      reproducer: writeReproducer(node, lastFailure.c, opts.reproDir, lastFailure.n),
    };
  } else if (details.failed) {
    res.failed = { seed: details.seed, path: details.counterexamplePath ?? '', problems: [`property error: ${String(details.errorInstance)}`], reproducer: '' };
  }
  return res;
}

export { SUBNET_PREFIX };
