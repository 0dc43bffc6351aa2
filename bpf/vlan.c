// SPDX-License-Identifier: GPL-2.0
/*
 * VLAN networks without an 802.1Q device (bpf/vlan.h, src/podnet/vlan.ts).
 * Two tc (tcx) programs, one of each per node, driven by maps, so one program
 * on a link serves every VLAN id on it:
 *
 *   patu_vlan_link   tcx ingress of a host link: an 802.1Q frame whose
 *                    (link, vid) is in patu_vlan_down loses its tag and is
 *                    sent out of that trunk's outer end (its veth peer, in
 *                    the network's bridge, receives it). Anything else
 *                    (untagged, another id, 802.1ad) goes on as before
 *                    (TCX_NEXT: the rest of the chain, then the stack).
 *   patu_vlan_trunk  tcx ingress of a trunk's outer end (what the bridge sent
 *                    into the trunk): tagged with the trunk's id and sent out
 *                    of its host link. A frame already tagged is dropped: the
 *                    network decides the VLAN, never a pod.
 *
 * Where the tag is: on receive, __netif_receive_skb_core moves an outer
 * 802.1Q/802.1ad tag from the payload into the skb's metadata (skb_vlan_untag)
 * before tc ingress, so it is normally in skb->vlan_tci; a tag still in the
 * payload (a path that did not untag) is read there too. bpf_skb_vlan_pop
 * handles both (and moves an inner tag, if any, into the metadata);
 * bpf_skb_vlan_push puts the tag in the metadata, which the device (or the
 * software fallback, for devices without TX VLAN offload) writes out.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "common.h"
#include "vlan.h"

#define VLAN_PASS TC_ACT_UNSPEC  /* tcx: TCX_NEXT */
#define VLAN_VID_MASK 0x0fff
#ifndef ETH_P_8021Q
#define ETH_P_8021Q 0x8100
#endif
#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PATU_VLAN_MAX);
	__type(key, struct patu_vlan_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_vlan_down SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PATU_VLAN_MAX);
	__type(key, __u32);
	__type(value, struct patu_vlan_up);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_vlan_up SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PATU_VLAN_STATS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_vlan_stats SEC(".maps");

static __always_inline void count(__u32 k)
{
	__u64 *v = bpf_map_lookup_elem(&patu_vlan_stats, &k);
	if (v)
		*v += 1;
}

/* The 802.1Q header in the payload, when the tag was not moved to the metadata. */
struct vlan_eth {
	__u8 dst[ETH_ALEN];
	__u8 src[ETH_ALEN];
	__be16 tpid;
	__be16 tci;
	__be16 proto;
};

SEC("tc")
int patu_vlan_link(struct __sk_buff *skb)
{
	__u32 present, tci, vproto, ifindex;
	CTX_READ(present, skb->vlan_present);
	CTX_READ(tci, skb->vlan_tci);
	CTX_READ(vproto, skb->vlan_proto);
	CTX_READ(ifindex, skb->ifindex);

	if (!present) {
		struct vlan_eth h;
		if (bpf_skb_load_bytes(skb, 0, &h, sizeof(h)) < 0)
			goto pass;
		vproto = h.tpid;
		tci = bpf_ntohs(h.tci);
		if (vproto != bpf_htons(ETH_P_8021Q))
			goto pass;
	}
	if (vproto != bpf_htons(ETH_P_8021Q))
		goto pass;        /* 802.1ad (QinQ service tag): not ours */

	struct patu_vlan_key k = { .ifindex = ifindex, .vid = tci & VLAN_VID_MASK, .pad = 0 };
	__u32 *trunk = bpf_map_lookup_elem(&patu_vlan_down, &k);
	if (!trunk)
		goto pass;
	__u32 out = *trunk;
	if (!present)
		count(PATU_VLAN_IN_PAYLOAD);
	if (bpf_skb_vlan_pop(skb) < 0) {
		count(PATU_VLAN_DROP_ERR);
		return TC_ACT_SHOT;
	}
	count(PATU_VLAN_POPPED);
	/* Out of the trunk's outer end: its peer (a port of the network's bridge) receives the frame. */
	return bpf_redirect(out, 0);
pass:
	count(PATU_VLAN_PASSED);
	return VLAN_PASS;
}

SEC("tc")
int patu_vlan_trunk(struct __sk_buff *skb)
{
	__u32 present, ifindex, proto;
	CTX_READ(present, skb->vlan_present);
	CTX_READ(ifindex, skb->ifindex);
	CTX_READ(proto, skb->protocol);

	/* Tagged by the sender (a pod with a raw socket): refused, so no pod picks its own VLAN or nests one. */
	if (present || proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		count(PATU_VLAN_DROP_TAGGED);
		return TC_ACT_SHOT;
	}
	struct patu_vlan_up *up = bpf_map_lookup_elem(&patu_vlan_up, &ifindex);
	if (!up) {
		count(PATU_VLAN_DROP_NOMAP);
		return TC_ACT_SHOT;
	}
	__u32 link = up->link;
	__u16 vid = up->vid;
	if (bpf_skb_vlan_push(skb, bpf_htons(ETH_P_8021Q), vid) < 0) {
		count(PATU_VLAN_DROP_ERR);
		return TC_ACT_SHOT;
	}
	count(PATU_VLAN_PUSHED);
	return bpf_redirect(link, 0);
}

char LICENSE[] SEC("license") = "GPL";
