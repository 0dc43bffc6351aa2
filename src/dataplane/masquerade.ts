// Egress masquerade for pods: traffic from a pod subnet to anywhere outside the
// cluster CIDR leaves with the node's address. Lives in patu's own nftables table
// (`table ip patu`), one chain per bridge, so removing patu never touches anyone
// else's rules.
//
// Installing shells out to `nft` on purpose: nft's own transaction keeps the update
// atomic, and it runs only when the rules are missing. Every ADD checks that they are
// in place (masqueradeInPlace: two filtered netlink dumps, no exec), so a node whose
// first ADD was killed after creating the bridge, or whose table someone deleted, heals
// on the next ADD instead of running pods without masquerade (issue 15).
// Each rule carries a comment naming what it is for; the check finds the comments.
import { NetlinkSocket } from '../kernel/netlink/socket.js';
import { attrStr, NLM_F_DUMP } from '../kernel/netlink/message.js';

export const NFT_TABLE = 'patu';

const chainName = (bridge: string): string => `masq_${bridge.replace(/[^A-Za-z0-9_]/g, '_')}`;

function nft(args: string[], input?: string): string {
  // Loaded here, not at import: the plugin's ADD needs it only when rules are missing, and
  // node:child_process is a few ms of every Node start.
  const { execFileSync } = process.getBuiltinModule('node:child_process');
  try {
    return execFileSync('nft', args, { input, encoding: 'utf8', stdio: ['pipe', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`nft ${args.join(' ')}: ${(e.stderr ?? e.message).trim()}`);
  }
}

const ruleComment = (subnet: string, clusterCIDR: string): string => `patu masq ${subnet} ${clusterCIDR}`;
const jumpComment = (chain: string): string => `patu jump ${chain}`;

const NETLINK_NETFILTER = 12;
const NFNL_SUBSYS_NFTABLES = 10;
const NFT_MSG_GETRULE = 7;
const NFTA_RULE_TABLE = 1;
const NFTA_RULE_CHAIN = 2;
const NFPROTO_IPV4 = 2;

/** The raw rule messages of one chain of patu's table (empty when the table or chain is missing). */
function dumpRules(sock: NetlinkSocket, chain: string): Buffer[] {
  const nfgen = Buffer.from([NFPROTO_IPV4, 0, 0, 0]); // family, NFNETLINK_V0, res_id
  try {
    return sock
      .request((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETRULE, NLM_F_DUMP, [nfgen, attrStr(NFTA_RULE_TABLE, NFT_TABLE), attrStr(NFTA_RULE_CHAIN, chain)], {
        op: 'NFT_MSG_GETRULE',
        object: `chain ip ${NFT_TABLE} ${chain}`,
      })
      .map((m) => m.payload);
  } catch (err) {
    if ((err as { errno?: number }).errno === 2 /* ENOENT */) return [];
    throw err;
  }
}

/**
 * Whether the masquerade rules for this bridge are in place as ensureMasquerade
 * writes them: one rule per IPv4 subnet with its comment, and the jump to the chain.
 */
export function masqueradeInPlace(bridge: string, podSubnets: string[], clusterCIDR: string): boolean {
  const v4 = podSubnets.filter((s) => !s.includes(':'));
  if (v4.length === 0) return true;
  const chain = chainName(bridge);
  const sock = NetlinkSocket.open({ protocol: NETLINK_NETFILTER, rcvbuf: 1 << 16 });
  try {
    const rules = dumpRules(sock, chain);
    if (rules.length !== v4.length) return false;
    if (!v4.every((s) => rules.some((r) => r.includes(ruleComment(s, clusterCIDR))))) return false;
    return dumpRules(sock, 'postrouting').some((r) => r.includes(jumpComment(chain)));
  } finally {
    sock.close();
  }
}

/** Makes sure the masquerade rules are in place: checks (cheap), installs only when they are not. */
export function ensureMasqueradeInPlace(bridge: string, podSubnets: string[], clusterCIDR: string): void {
  if (!masqueradeInPlace(bridge, podSubnets, clusterCIDR)) ensureMasquerade(bridge, podSubnets, clusterCIDR);
}

/** Installs (or refreshes) the masquerade rule for one bridge's pod subnets. Idempotent. */
export function ensureMasquerade(bridge: string, podSubnets: string[], clusterCIDR: string): void {
  const v4 = podSubnets.filter((s) => !s.includes(':'));
  if (v4.length === 0) return;
  const chain = chainName(bridge);
  const rules = v4.map((s) => `add rule ip ${NFT_TABLE} ${chain} ip saddr ${s} ip daddr != ${clusterCIDR} masquerade comment "${ruleComment(s, clusterCIDR)}"`);
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
  if (!listed.includes(`jump ${chain}`)) nft(['add', 'rule', 'ip', NFT_TABLE, 'postrouting', 'jump', chain, 'comment', `"${jumpComment(chain)}"`]);
  else if (!listed.includes(jumpComment(chain))) {
    // A jump from an older patu, without the comment the check looks for: replace it.
    removeJump(chain);
    nft(['add', 'rule', 'ip', NFT_TABLE, 'postrouting', 'jump', chain, 'comment', `"${jumpComment(chain)}"`]);
  }
}

function removeJump(chain: string): void {
  const listing = nft(['-a', 'list', 'chain', 'ip', NFT_TABLE, 'postrouting']);
  for (const line of listing.split('\n')) {
    const handle = line.includes(`jump ${chain}`) ? line.match(/# handle (\d+)/)?.[1] : undefined;
    if (handle) nft(['delete', 'rule', 'ip', NFT_TABLE, 'postrouting', 'handle', handle]);
  }
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
