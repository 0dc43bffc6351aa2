// Egress masquerade for pods: traffic from a pod subnet to anywhere outside the
// cluster CIDR leaves with the node's address. Lives in patu's own nftables table
// (`table ip patu`), one chain per bridge, so removing patu never touches anyone
// else's rules.
//
// This shells out to `nft` on purpose: it runs only when a bridge is first created
// (once per node and network), never per pod, and nft's own transaction keeps the
// update atomic.
import { execFileSync } from 'node:child_process';

export const NFT_TABLE = 'patu';

const chainName = (bridge: string): string => `masq_${bridge.replace(/[^A-Za-z0-9_]/g, '_')}`;

function nft(args: string[], input?: string): string {
  try {
    return execFileSync('nft', args, { input, encoding: 'utf8', stdio: ['pipe', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`nft ${args.join(' ')}: ${(e.stderr ?? e.message).trim()}`);
  }
}

/** Installs (or refreshes) the masquerade rule for one bridge's pod subnets. Idempotent. */
export function ensureMasquerade(bridge: string, podSubnets: string[], clusterCIDR: string): void {
  const v4 = podSubnets.filter((s) => !s.includes(':'));
  if (v4.length === 0) return;
  const chain = chainName(bridge);
  const rules = v4.map((s) => `add rule ip ${NFT_TABLE} ${chain} ip saddr ${s} ip daddr != ${clusterCIDR} masquerade`);
  nft(['-f', '-'], [
    `table ip ${NFT_TABLE} {`,
    `  chain postrouting { type nat hook postrouting priority srcnat; policy accept; }`,
    `}`,
    `add chain ip ${NFT_TABLE} ${chain}`,
    `flush chain ip ${NFT_TABLE} ${chain}`,
    ...rules,
    '',
  ].join('\n'));
  const listed = nft(['list', 'chain', 'ip', NFT_TABLE, 'postrouting']);
  if (!listed.includes(`jump ${chain}`)) nft(['add', 'rule', 'ip', NFT_TABLE, 'postrouting', 'jump', chain]);
}

/** Removes one bridge's chain; drops the table when nothing of patu's is left in it. */
export function removeMasquerade(bridge: string): void {
  const chain = chainName(bridge);
  let listing: string;
  try {
    listing = nft(['-a', 'list', 'table', 'ip', NFT_TABLE]);
  } catch {
    return; // no table: nothing to remove
  }
  const jump = listing.split('\n').find((l) => l.includes(`jump ${chain}`));
  const handle = jump?.match(/# handle (\d+)/)?.[1];
  if (handle) nft(['delete', 'rule', 'ip', NFT_TABLE, 'postrouting', 'handle', handle]);
  if (listing.includes(`chain ${chain} `)) nft(['delete', 'chain', 'ip', NFT_TABLE, chain]);
  const rest = nft(['list', 'table', 'ip', NFT_TABLE]);
  if (!/chain masq_/.test(rest)) nft(['delete', 'table', 'ip', NFT_TABLE]);
}
