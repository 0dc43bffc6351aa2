/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Map layouts of NetworkPolicy enforcement (bpf/policy.c: tcx on each pod's
 * host-side veth; ingress hook = packets leaving the pod = its egress policy,
 * egress hook = packets to the pod = its ingress policy).
 * TypeScript mirrors: src/dataplane/policy-maps.ts, checked field by field by
 * test/unit/bpf-layout.test.ts.
 *
 * The model (compiled by src/policy/compile.ts):
 *   - an endpoint is a pod whose policies this node enforces, keyed by its IP;
 *   - a peer class is a set of addresses that every selector of every policy
 *     treats alike (same podSelector/namespaceSelector/ipBlock memberships and,
 *     where an egress rule names a port, the same named-port numbers). Pod
 *     addresses are /32 entries, ipBlock ranges and their excepts are prefixes;
 *   - a rule entry allows (endpoint, peer class, direction, protocol, port).
 *     Port ranges are split into prefix blocks; a rule without ports matches
 *     every protocol (prefixlen 72), a protocol without a port every port of it
 *     (prefixlen 80).
 * Verdict of a new flow: endpoint unknown -> allow (not yet known: see docs);
 * endpoint not isolated in this direction -> allow; peer class HOST -> allow
 * (the node and host-network pods: kubelet probes); else allow iff
 * patu_pol_rule has a match. Replies and later packets of an allowed flow pass
 * through patu_pol_ct.
 *
 * Addresses and ports in network byte order, as they are in the packet;
 * ids in the LPM keys are big-endian too (the trie compares bytes in order).
 */
#ifndef PATU_POLICY_H
#define PATU_POLICY_H

#include <linux/types.h>

#define PATU_POL_EP_MAX      16384
#define PATU_POL_PEER_MAX    65536
#define PATU_POL_RULE_MAX    262144
#define PATU_POL_CT_MAX      262144
#define PATU_POL_STATS_MAX   65536
#define PATU_POL_EVENTS_SIZE (256 * 1024)

/* Directions, as the policy API names them (from the endpoint's point of view). */
#define PATU_POL_INGRESS 0
#define PATU_POL_EGRESS  1

/* patu_pol_ep value flags */
#define PATU_POL_EP_ISOLATED_INGRESS 1   /* some policy selects it for ingress */
#define PATU_POL_EP_ISOLATED_EGRESS  2   /* some policy selects it for egress */

/* Reserved peer classes. Class 0 (no patu_pol_peer entry) matches no rule. */
#define PATU_POL_CLASS_WORLD 0
#define PATU_POL_CLASS_HOST  1           /* node addresses: always allowed */
#define PATU_POL_CLASS_FIRST 16          /* first class the compiler hands out */

/* patu_pol_ep: pod IPv4 -> endpoint */
struct patu_pol_ep {
	__u32 ep_id;         /* nonzero, stable while the pod lives */
	__u32 ifindex;       /* host-side veth, 0 = unknown (then no anti-spoof check) */
	__u32 flags;         /* PATU_POL_EP_* */
	__u32 pad;
};

/* patu_pol_dev: host-side veth ifindex (__u32) -> the pod's IPv4 address (__be32,
 * its patu_pol_ep key). Written by the CNI ADD (and sync() from endpoints with an
 * ifindex); read for IPv6 (which carries no IPv4 address to find the endpoint by). */

/* patu_pol_peer: LPM trie, address prefix -> peer class (__u32 value) */
struct patu_pol_peer_key {
	__u32 prefixlen;     /* 0..32 */
	__be32 ip;
};

/* patu_pol_rule: LPM trie; any match allows. Value: __u32 policy id (the deciding
 * policy for counters and events; names in the agent's state file). */
struct patu_pol_rule_key {
	__u32 prefixlen;     /* 72: any protocol; 80: any port of proto; 80+k: port block */
	__be32 ep_id;
	__be32 peer_class;
	__u8 dir;            /* PATU_POL_INGRESS / PATU_POL_EGRESS */
	__u8 proto;          /* IPPROTO_TCP/UDP/SCTP(132)/ICMP... */
	__be16 port;         /* the endpoint-side port for ingress, the peer's for egress */
};
#define PATU_POL_RULE_PREFIX_ANY_PROTO 72
#define PATU_POL_RULE_PREFIX_ANY_PORT  80
#define PATU_POL_RULE_PREFIX_FULL      96

/*
 * patu_pol_ct: LRU hash. Key = the packet's own 5-tuple as it travels, plus the
 * direction in which the flow was admitted at its endpoint:
 *   {tuple, EGRESS}  the endpoint (source) opened it; created at the ingress hook
 *   {tuple, INGRESS} a peer opened it to the endpoint (destination); egress hook
 * A packet passes when its tuple is known in its own direction, or its reversed
 * tuple in the other one (a reply). ICMP echo: sport = id, dport = 0 for
 * requests, sport = 0, dport = id for replies (so a reply reverses onto its
 * request). ICMP errors are judged by the embedded header's tuple.
 */
struct patu_pol_ct_key {
	__be32 src;
	__be32 dst;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 dir;            /* PATU_POL_INGRESS / PATU_POL_EGRESS */
	__u16 pad;           /* zero: hash keys compare bytewise. 1: a fragment entry
	                      * {outer src, dst, sport = IP id, dport 0, proto, hook dir}
	                      * letting the later fragments of a passed first one through */
};

#define PATU_POL_CT_SYN_SEEN    1
#define PATU_POL_CT_ESTABLISHED 2
#define PATU_POL_CT_CLOSING     4   /* FIN or RST seen */
#define PATU_POL_CT_DENIED      8   /* tombstone (userspace: flushConntrack with tombstone): a flow a policy change
                                     * denied; its packets, either way, drop until the entry expires or a SYN on the
                                     * tuple is judged again. Without it a mid-stream packet of the side whose own
                                     * policy is open would re-create an entry that admits the other side as replies. */

struct patu_pol_ct_val {
	__u64 expires_ns;    /* bpf_ktime_get_coarse_ns() deadline (CLOCK_MONOTONIC_COARSE); expired = unknown */
	__u32 policy;        /* the deciding policy id, 0 = not isolated */
	__u32 ep_id;         /* the endpoint it was admitted for */
	__u32 flags;         /* PATU_POL_CT_* */
	__u32 pad;
};

/* Lifetimes (seconds): TCP until established, established, after FIN/RST; UDP/SCTP; ICMP. */
#define PATU_POL_CT_TCP_SYN   60
#define PATU_POL_CT_TCP_EST   21600
#define PATU_POL_CT_TCP_CLOSE 10
#define PATU_POL_CT_OTHER     120
#define PATU_POL_CT_ICMP      30
/* Refresh an entry's deadline only when it moved by more than this (writes cost). */
#define PATU_POL_CT_REFRESH_NS (1ULL * 1000000000ULL)

/* patu_pol_cfg: array of one */
struct patu_pol_cfg {
	__u32 monitor;       /* nonzero: submit drop events to patu_pol_events (a reader is attached) */
	__u32 monitor_allow; /* nonzero: also submit new-flow allows */
	__u32 generation;    /* userspace only: bumped by every sync(), so a writer's cached view of
	                      * patu_pol_peer/patu_pol_rule knows when another process wrote them */
	__u32 pad;
};

/* patu_pol_stats: per-CPU hash, {endpoint, policy, direction, verdict} -> counters.
 * Drops count every dropped packet; allows count new flows admitted (not every
 * packet of them: the fast path stays write-free). */
#define PATU_POL_VERDICT_ALLOW 0
#define PATU_POL_VERDICT_DROP  1
struct patu_pol_stats_key {
	__u32 ep_id;
	__u32 policy;        /* 0 for drops (no rule allowed) and for non-isolated allows */
	__u8 dir;
	__u8 verdict;
	__u16 pad;
};
struct patu_pol_stats_val {
	__u64 packets;
	__u64 bytes;
};

/* patu_pol_events: ring buffer of these, only while patu_pol_cfg.monitor is set. */
#define PATU_POL_REASON_NO_RULE   1  /* isolated, no rule allows */
#define PATU_POL_REASON_SPOOF     2  /* source address not the pod's on this veth */
#define PATU_POL_REASON_IPV6      3  /* IPv6 to/from an isolated pod (patu is IPv4-only) */
#define PATU_POL_REASON_ALLOW     16 /* monitor_allow: a new flow admitted */
struct patu_pol_event {
	__u64 ts_ns;
	__be32 src;
	__be32 dst;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 dir;
	__u8 reason;
	__u8 pad;
	__u32 ep_id;
	__u32 policy;
};

#endif
