/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Map layouts of routed mode (bpf/routed.c, docs/routed.md). Pods have a /32
 * (/128) behind the gateway 169.254.1.1 (fe80::1); every routed host veth has
 * the same MAC, PATU_ROUTED_GW_MAC, which is what the program answers for the
 * gateway. TypeScript mirrors: src/dataplane/routed-tc.ts, checked field by
 * field by test/unit/bpf-layout.test.ts.
 */
#ifndef PATU_ROUTED_H
#define PATU_ROUTED_H

#include <linux/types.h>

#define PATU_ROUTED_MAX 16384    /* pod addresses per node */

/* 02:50:a9:fe:01:01 (locally administered, unicast): "169.254.1.1". */
#define PATU_ROUTED_GW_MAC { 0x02, 0x50, 0xa9, 0xfe, 0x01, 0x01 }

/* patu_routed_pods (key __be32, the pod's IPv4) and patu_routed_pods6 (key struct patu_routed_ip6). */
struct patu_routed_pod {
	__u32 ifindex;           /* the pod's host veth (the redirect goes to its peer, the pod's eth0) */
	__u8 mac[6];             /* the pod's eth0 MAC: the frame's new destination */
	__u16 pad;               /* zero */
};

struct patu_routed_ip6 {
	__u8 addr[16];
};

/*
 * patu_routed_nopeer: key __u32 host veth ifindex, value __u32 (1). A veth
 * with NetworkPolicy programs on it (src/dataplane/policy-tc.ts attach marks
 * it): nothing is redirected from or into it, so the source's egress program
 * (tcx ingress) and the destination's ingress program (tcx egress of its host
 * veth, which bpf_redirect_peer would skip) both see every packet.
 */

/* patu_routed_cfg: array of one __u32, non-zero once any veth was marked in patu_routed_nopeer. */

/* patu_routed_stats (per-CPU array of __u64 counters, summed by readers) indexes. */
#define PATU_ROUTED_ARP        0  /* ARP request for 169.254.1.1 answered */
#define PATU_ROUTED_ND         1  /* neighbour solicitation for fe80::1 answered */
#define PATU_ROUTED_REDIRECT   2  /* delivered into a local pod by bpf_redirect_peer */
#define PATU_ROUTED_STACK      3  /* not a local pod (host, other nodes, outside): the host stack */
#define PATU_ROUTED_POLICY     4  /* a local pod, but source or destination has NetworkPolicy: the host stack */
#define PATU_ROUTED_TTL        5  /* TTL/hop limit would expire: the host stack (it answers ICMP) */
#define PATU_ROUTED_STATS      6

#endif
