// `patu policy apply FILE` and `patu policy [--pod ns/name]`. apply programs a policy
// file once (the file is the whole truth: policies no longer in it are removed) through
// the same engine the agent runs; the listing reads the maps back (what the kernel will
// do, not what a file says), with names from the engine's names file.
import { formatTable } from './table.js';
import { DEFAULTS } from '../defaults.js';
import { messageOf } from '../errors.js';
import { PolicyFileError } from '../policy/parse.js';
import type { PolicyNames } from '../policy/names.js';
import type { PolicyMapContents, RuleEntry } from '../policy/types.js';

export interface PolicyCommandOptions {
  pinRoot?: string;
  /** Mount bpffs if it is missing (main.ts: false with PATU_BPFFS_MOUNT=never). */
  mountBpffs?: boolean;
  json?: boolean;
  /** apply: attach the programs to the veths of this bridge (default: every patu veth). */
  bridge?: string;
  /** `ns/name`: only this pod. */
  pod?: string;
  /** Where the names file is (default DEFAULTS.policyStateDir; tests). */
  stateDir?: string;
  /** Node addresses (always allowed); default: every IPv4 address of this netns. */
  nodeAddresses?: string[];
  out?: (s: string) => void;
  err?: (s: string) => void;
}

const stdout = (s: string): void => void process.stdout.write(s);
const stderr = (s: string): void => void process.stderr.write(s);

/** Every IPv4 address of this host (the node: always allowed to and from pods). */
async function hostAddresses(): Promise<string[]> {
  const { AddressWatch } = await import('../kernel/netlink/addr-watch.js');
  const w = AddressWatch.open();
  try {
    return [...new Set(w.list().map((a) => a.address))].sort();
  } finally {
    w.close();
  }
}

/**
 * Programs FILE once. Exit code: 0 done, 1 the file is invalid (every problem printed,
 * nothing changed), 2 the kernel side failed or the state did not fit (then every pod a
 * policy selects denies all but the node: see the message).
 */
export async function policyApply(file: string, opts: PolicyCommandOptions = {}): Promise<number> {
  const out = opts.out ?? stdout;
  const err = opts.err ?? stderr;
  const t0 = performance.now();
  const { loadPolicyFile } = await import('../policy/file-source.js');
  let state;
  try {
    state = await loadPolicyFile(file);
  } catch (e) {
    if (e instanceof PolicyFileError) {
      err(`patu policy apply: ${e.message}\n`);
      return 1;
    }
    throw e;
  }
  const pinRoot = opts.pinRoot ?? DEFAULTS.pinRoot;
  const { PolicyDataplane } = await import('../dataplane/policy-tc.js');
  const { PolicyEngine } = await import('../policy/engine.js');
  const { policyNamesPath } = await import('../policy/names.js');
  let dp: import('../dataplane/policy-tc.js').PolicyDataplane | undefined;
  try {
    state.nodeAddresses = opts.nodeAddresses ?? await hostAddresses();
    dp = PolicyDataplane.open({ pinRoot, ...(opts.mountBpffs !== undefined ? { mountBpffs: opts.mountBpffs } : {}) });
    const log = {
      info: () => {},
      warn: (_f: object, msg: string) => err(`patu policy apply: ${msg}\n`),
      error: (_f: object, msg: string) => err(`patu policy apply: ${msg}\n`),
    };
    const engine = new PolicyEngine(dp, log, { namesFile: policyNamesPath(pinRoot, opts.stateDir) });
    const r = engine.setState(state);
    // After the maps are programmed: a veth attached now starts with the new rules.
    const attached = dp.attachAll(opts.bridge ? [opts.bridge] : undefined);
    const names = engine.names();
    const endpoints = Object.keys(names.endpoints).length;
    const isolated = Object.values(names.endpoints).filter((e) => e.ingress.length || e.egress.length).length;
    const result = {
      file, policies: state.policies.length, pods: state.pods.length, endpoints, isolated,
      mapChanges: r.changed, flowsCutOff: r.flushed, socketsEvicted: r.evicted, vethsAttached: attached,
      problems: r.problems.map((p) => p.message), fallback: r.fallback, ...(engine.lastError ? { error: engine.lastError } : {}),
      ms: Math.round((performance.now() - t0) * 10) / 10,
    };
    if (opts.json) out(JSON.stringify(result) + '\n');
    else {
      out(`programmed ${result.policies} policies over ${result.pods} pods (${isolated} of ${endpoints} local pods isolated) from ${file}: ` +
        `${r.changed} map changes, ${r.flushed} flows cut off, ${r.evicted} sockets evicted${attached ? `, attached to ${attached} veths` : ''} in ${result.ms} ms\n`);
    }
    if (r.fallback) {
      err(`patu policy apply: ${engine.lastError}\n`);
      return 2;
    }
    return 0;
  } catch (e) {
    err(`patu policy apply: ${messageOf(e)}\n`);
    return 2;
  } finally {
    dp?.close();
  }
}

const PROTO_NAMES: Record<number, string> = { 1: 'ICMP', 6: 'TCP', 17: 'UDP', 132: 'SCTP' };

export interface PolicyView {
  pod: string;
  ip: string;
  epId: number;
  isolatedIngress: boolean;
  isolatedEgress: boolean;
  /** ns/name of the policies that isolate it, per direction (from the names file). */
  ingressPolicies: string[];
  egressPolicies: string[];
  rules: { dir: 'ingress' | 'egress'; peerClass: number; peers: string[]; protocol: string; ports: string; policy: string }[];
}

/** The maps read back, joined with the names file: one view per endpoint. */
export function policyViews(contents: PolicyMapContents, names: PolicyNames | null): PolicyView[] {
  const pol = (id: number): string => names?.policies[id] ?? `policy-${id}`;
  const rulesOf = new Map<number, RuleEntry[]>();
  for (const r of contents.rules) {
    const l = rulesOf.get(r.epId);
    if (l) l.push(r);
    else rulesOf.set(r.epId, [r]);
  }
  return contents.endpoints.map((e) => {
    const info = names?.endpoints[e.epId];
    return {
      pod: info?.pod ?? `(endpoint ${e.epId})`,
      ip: e.ip, epId: e.epId, isolatedIngress: e.isolatedIngress, isolatedEgress: e.isolatedEgress,
      ingressPolicies: (info?.ingress ?? []).map(pol), egressPolicies: (info?.egress ?? []).map(pol),
      rules: (rulesOf.get(e.epId) ?? []).map((r) => ({
        dir: r.dir, peerClass: r.peerClass,
        peers: names?.classes[r.peerClass] ?? [],
        protocol: r.proto === null ? 'any' : (PROTO_NAMES[r.proto] ?? String(r.proto)),
        ports: r.proto === null || r.portFrom === null ? 'any' : r.portFrom === r.portTo ? String(r.portFrom) : `${r.portFrom}-${r.portTo}`,
        policy: pol(r.policyId),
      })),
    };
  }).sort((a, b) => (a.pod < b.pod ? -1 : a.pod > b.pod ? 1 : a.ip < b.ip ? -1 : 1));
}

const peersText = (peers: string[], cls: number): string => (peers.length ? `${peers.slice(0, 4).join(' ')}${peers.length > 4 ? ` +${peers.length - 4}` : ''}` : `class ${cls}`);

export function formatPolicyViews(views: PolicyView[]): string {
  const side = (iso: boolean, by: string[]) => (iso ? `isolated${by.length ? ` by ${by.join(', ')}` : ''}` : 'open');
  let text = formatTable([['POD', 'IP', 'INGRESS', 'EGRESS'], ...views.map((v) => [v.pod, v.ip, side(v.isolatedIngress, v.ingressPolicies), side(v.isolatedEgress, v.egressPolicies)])]);
  for (const v of views) {
    for (const dir of ['ingress', 'egress'] as const) {
      if (!(dir === 'ingress' ? v.isolatedIngress : v.isolatedEgress)) continue;
      const rules = v.rules.filter((r) => r.dir === dir);
      text += `\n${v.pod} ${dir} (${dir === 'ingress' ? 'from' : 'to'} the node: always allowed)\n`;
      if (rules.length === 0) {
        text += '  nothing else allowed\n';
        continue;
      }
      const rows = rules.map((r) => [`  ${peersText(r.peers, r.peerClass)}`, r.protocol, r.ports, r.policy]);
      text += formatTable([[dir === 'ingress' ? '  FROM' : '  TO', 'PROTOCOL', 'PORTS', 'POLICY'], ...rows]);
    }
  }
  return text;
}

/** `patu policy`: the maps read back. Exit code 0, 2 when the maps cannot be read, 1 for an unknown --pod. */
export async function policyList(opts: PolicyCommandOptions = {}): Promise<number> {
  const out = opts.out ?? stdout;
  const err = opts.err ?? stderr;
  const pinRoot = opts.pinRoot ?? DEFAULTS.pinRoot;
  const { PolicyDataplane } = await import('../dataplane/policy-tc.js');
  const { readPolicyNames } = await import('../policy/names.js');
  let views: PolicyView[] | null = null;
  try {
    const dp = PolicyDataplane.openExisting(pinRoot);
    if (dp) {
      try {
        views = policyViews(dp.read(), readPolicyNames(pinRoot, opts.stateDir));
      } finally {
        dp.close();
      }
    }
  } catch (e) {
    err(`patu policy: ${messageOf(e)}\n`);
    return 2;
  }
  if (views && opts.pod) {
    views = views.filter((v) => v.pod === opts.pod);
    if (views.length === 0) {
      err(`patu policy: no pod ${opts.pod} among the endpoints this node enforces\n`);
      return 1;
    }
  }
  if (opts.json) out(JSON.stringify({ pinRoot, programmed: views !== null, endpoints: views ?? [] }, null, 2) + '\n');
  else if (views === null) out(`no network policy programmed (no policy pins under ${pinRoot})\n`);
  else if (views.length === 0) out('no endpoints programmed\n');
  else out(formatPolicyViews(views));
  return 0;
}
