/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Map layouts of the packet-level service path for traffic from outside the
 * node (bpf/nodeport.c: tc ingress/egress on the uplinks). The service maps
 * themselves (patu_svc, patu_svc_slot, patu_backend, patu_affinity,
 * patu_node_addr, patu_lb_cfg) are the socket LB's (bpf/lb_select.h), reused by pin.
 * TypeScript mirrors: src/dataplane/nodeport-tc.ts, checked field by field by
 * test/unit/bpf-layout.test.ts.
 *
 * Addresses and ports in network byte order, as they are in the packet.
 */
#ifndef PATU_NODEPORT_H
#define PATU_NODEPORT_H

#include <linux/types.h>

#define PATU_NP_CT_MAX 262144    /* LRU: two entries per translated flow */

/* patu_np_ct key.dir */
#define PATU_CT_FWD 0            /* client -> service address, as it arrived */
#define PATU_CT_REV 1            /* backend -> client, as the reply leaves */

/*
 * One translated flow has two entries: the forward one (the 5-tuple the
 * client sent) keeps every packet of the flow on the backend its first packet
 * picked; the reverse one (the reply's 5-tuple) gives the egress program the
 * service address to put back as the reply's source. A reply alone cannot say
 * which service it belongs to (one backend can serve several), hence the state.
 */
struct patu_ct_key {
	__be32 src;
	__be32 dst;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 dir;            /* PATU_CT_FWD / PATU_CT_REV */
	__u16 pad;           /* must be zero: hash keys compare bytewise */
};

struct patu_ct_val {
	__be32 ip;           /* FWD: backend address; REV: service address */
	__be16 port;         /* FWD: backend port; REV: service port */
	__u16 pad;
	__u32 backend_id;    /* FWD: patu_backend id, to notice the backend left */
	__u32 svc_id;        /* FWD: the service it was picked for */
};

/* patu_np_stats (per-CPU array of __u64 counters, summed by readers) indexes: what tests and `patu status` read. */
#define PATU_NP_NEW_FLOW    0    /* ingress: a backend picked for a new flow */
#define PATU_NP_FWD_HIT     1    /* ingress: packet of a known flow translated */
#define PATU_NP_REV         2    /* egress: reply translated back */
#define PATU_NP_NO_BACKEND  3    /* ingress: service without a ready backend: dropped */
#define PATU_NP_SVC_DROP_IN 4    /* ingress: untranslated packet to the service CIDR: dropped */
#define PATU_NP_SVC_DROP_EG 5    /* egress: untranslated packet to the service CIDR: dropped */
#define PATU_NP_STATS       6

#endif
