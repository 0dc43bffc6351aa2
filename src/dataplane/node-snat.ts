// SNAT of traffic from outside the cluster that this node forwards to another node's pods:
// a NodePort (or externalIP, LoadBalancer IP) packet that the tc path (bpf/nodeport.c)
// translated to a backend on another node leaves with the client's address, and the
// backend's reply would go straight to the client from the other node, untranslated. With
// the source masqueraded to this node, the reply comes back here: conntrack restores the
// client as destination and the tc egress program restores the NodePort as source.
// Pod-to-pod traffic across nodes (source in a pod CIDR) and traffic the node itself sends
// (source local) are never touched, and neither is anything towards this node's own pods
// (externalTrafficPolicy Local keeps the client address).
//
// Lives in its own nftables table (`table ip patu_nodes`: masquerade.ts drops `table ip
// patu` with its last bridge), written whole with `nft -f` (atomic) when the node list
// changes. Exec'ed like masquerade.ts: only on change, never per packet or per pod.
import { PatuError } from '../errors.js';

export const NODE_SNAT_TABLE = 'patu_nodes';

export class NodeSnatError extends PatuError {
  readonly code = 'NODE_SNAT';
}

function nft(script: string, netns?: string): string {
  const { execFileSync } = process.getBuiltinModule('node:child_process');
  const [cmd, args] = netns ? ['nsenter', [`--net=${netns}`, 'nft', '-f', '-']] : ['nft', ['-f', '-']];
  try {
    return execFileSync(cmd, args as string[], { input: script, encoding: 'utf8', stdio: ['pipe', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new NodeSnatError(`nft (node SNAT): ${(e.stderr ?? e.message).trim()}`, { cause: err });
  }
}

/** The nft script that makes the table hold exactly the rule for these CIDRs. */
export function nodeSnatScript(peerCidrs: readonly string[], allPodCidrs: readonly string[]): string {
  // No peer: no table (made and dropped in one transaction, so it works whether or not it exists).
  if (!peerCidrs.length) return `table ip ${NODE_SNAT_TABLE} {}\ndelete table ip ${NODE_SNAT_TABLE}\n`;
  const lines = [
    `table ip ${NODE_SNAT_TABLE} {`,
    '  chain postrouting { type nat hook postrouting priority srcnat; policy accept; }',
    '}',
    `flush chain ip ${NODE_SNAT_TABLE} postrouting`,
    `add rule ip ${NODE_SNAT_TABLE} postrouting ip daddr { ${peerCidrs.join(', ')} } ip saddr != { ${allPodCidrs.join(', ')} } fib saddr type != local masquerade comment "patu: from outside to another node's pods"`,
  ];
  return `${lines.join('\n')}\n`;
}

/** Programs the SNAT rule in the calling thread's netns, or in `netns` (a path). */
export function syncNodeSnat(peerCidrs: readonly string[], allPodCidrs: readonly string[], netns?: string): void {
  nft(nodeSnatScript(peerCidrs, allPodCidrs), netns);
}
