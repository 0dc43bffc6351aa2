/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Map layouts of VLAN networks in eBPF (bpf/vlan.c). This kernel (and many at
 * the edge) has no 802.1Q device and no bridge VLAN filtering, so a VLAN
 * NodeNetwork is a veth "trunk" pair: one end in the network's bridge, the
 * other ("outer" end) carries the network's frames untagged; tc programs
 * move them between that end and the tagged host link.
 * TypeScript mirrors: src/podnet/vlan-maps.ts, checked field by field by
 * test/unit/bpf-layout.test.ts.
 */
#ifndef PATU_VLAN_H
#define PATU_VLAN_H

#include <linux/types.h>

#define PATU_VLAN_MAX 4096       /* trunks per node (every id on one link, or fewer on several) */

/* patu_vlan_down key: a tagged frame arriving on host link `ifindex` with VLAN id `vid`. */
struct patu_vlan_key {
	__u32 ifindex;           /* the host link (in the netns the programs run in) */
	__u16 vid;               /* 1-4094 */
	__u16 pad;               /* must be zero: hash keys compare bytewise */
};
/* patu_vlan_down value: __u32, the ifindex of the trunk's outer end (the frame, untagged, is sent out of it). */

/* patu_vlan_up key: __u32, the ifindex of a trunk's outer end (its tc ingress sees what the bridge sends). */
struct patu_vlan_up {
	__u32 link;              /* host link the frame leaves by, tagged */
	__u16 vid;
	__u16 pad;
};

/* patu_vlan_stats (per-CPU array of __u64 counters, summed by readers) indexes. */
#define PATU_VLAN_POPPED      0  /* link ingress: tag of a known (link, vid) popped, frame sent to its trunk */
#define PATU_VLAN_PASSED      1  /* link ingress: untagged, another tag, or 802.1ad: handed on as before */
#define PATU_VLAN_PUSHED      2  /* trunk ingress: tag pushed, frame sent out of the link */
#define PATU_VLAN_DROP_TAGGED 3  /* trunk ingress: frame already tagged (a pod may not choose a VLAN): dropped */
#define PATU_VLAN_DROP_NOMAP  4  /* trunk ingress: trunk unknown to patu_vlan_up (being removed): dropped */
#define PATU_VLAN_DROP_ERR    5  /* a helper failed (pop/push/redirect): dropped */
#define PATU_VLAN_IN_PAYLOAD  6  /* link ingress: a known tag found in the payload, not in the skb metadata */
#define PATU_VLAN_STATS       7

#endif
