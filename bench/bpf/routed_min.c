// SPDX-License-Identifier: GPL-2.0
// bench/routed.ts's anchor, not shipped: the least a redirect_peer delivery can do.
// tc ingress of a host-side veth: an IPv4 frame whose destination is in min_pods
// gets the destination's MACs and goes straight into that pod's netns
// (bpf_redirect_peer of the destination's host veth). No ARP answering (the bench
// gives the pods a static neighbour for the gateway), no policy, no checks.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct min_pod {
	__u32 ifindex;      /* the destination's host veth */
	__u8 mac[ETH_ALEN]; /* the destination pod's eth0 */
	__u8 gw[ETH_ALEN];  /* its host veth (the gateway's MAC as the pod sees it) */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, struct min_pod);
} min_pods SEC(".maps");

SEC("tc")
int min_redirect_peer(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	__u32 daddr = ip->daddr;
	struct min_pod *p = bpf_map_lookup_elem(&min_pods, &daddr);
	if (!p)
		return TC_ACT_OK;
	__builtin_memcpy(eth->h_dest, p->mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, p->gw, ETH_ALEN);
	return bpf_redirect_peer(p->ifindex, 0);
}

char LICENSE[] SEC("license") = "GPL";
