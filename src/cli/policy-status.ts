// The NetworkPolicy part of `patu status`: what the maps hold and the per-pod counters, as a table. Pure (no
// kernel access): status-command.ts reads, this formats.
import type { PodPolicyCounters } from '../policy/view.js';
import { formatTable } from './table.js';

export interface PolicyStatus {
  endpoints: number;
  isolatedIngress: number;
  isolatedEgress: number;
  rules: number;
  /** A `patu monitor` is reading (the programs submit events). */
  monitor: boolean;
  /** Per pod (endpoint): drops (packets) and admitted new flows, by direction; the admitting policies. */
  pods: PodPolicyCounters[];
}

export function formatPolicyStatus(p: PolicyStatus | null): string {
  if (!p) return '\nNetworkPolicy: not set up (patu agent --policy-file or --kubernetes)\n';
  const out = [`\nNetworkPolicy: ${p.endpoints} pods enforced (${p.isolatedIngress} isolated for ingress, ${p.isolatedEgress} for egress), ${p.rules} rules${p.monitor ? '; a monitor is reading' : ''}\n`];
  if (p.pods.length) {
    out.push(formatTable([
      ['POD', 'DROPPED IN', 'DROPPED OUT', 'FLOWS IN', 'FLOWS OUT', 'ADMITTED BY'],
      ...p.pods.map((c) => {
        const by = new Map<string, bigint>();
        for (const b of c.byPolicy) if (b.verdict === 'allow') by.set(b.policy, (by.get(b.policy) ?? 0n) + b.packets);
        const top = [...by].sort((a, b) => (b[1] > a[1] ? 1 : b[1] < a[1] ? -1 : 0)).slice(0, 3).map(([n, k]) => `${n} (${k})`).join(', ');
        return [c.pod, String(c.dropped.ingress), String(c.dropped.egress), String(c.allowed.ingress), String(c.allowed.egress), top || '-'];
      }),
    ]));
    out.push('  (dropped: packets; flows: new flows admitted; live drops: patu monitor)\n');
  }
  return out.join('');
}

