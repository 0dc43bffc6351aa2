// SPDX-License-Identifier: GPL-2.0
/*
 * Routed mode (bpf/routed.h, src/dataplane/routed-tc.ts, docs/routed.md): one
 * tc program on the tcx ingress of every routed pod's host veth, driven by maps.
 *
 *   ARP request for 169.254.1.1        -> answered in place with PATU_ROUTED_GW_MAC
 *                                         (every routed host veth's MAC) and sent
 *                                         back out of the same veth: no proxy_arp,
 *                                         no address on the host side
 *   neighbour solicitation for fe80::1 -> neighbour advertisement (router, solicited,
 *                                         override), the same MAC
 *   IPv4/IPv6 to a pod of this node    -> TTL/hop limit decremented, MACs rewritten,
 *   (patu_routed_pods, _pods6)            bpf_redirect_peer into the pod's netns: no
 *                                         host stack, no netfilter, no second veth hop
 *   anything else                      -> TCX_NEXT: the host stack routes it (to the
 *                                         host, out of the node, masquerade, NodePort)
 *
 * NetworkPolicy: bpf_redirect_peer skips the destination's host veth, where its
 * ingress program (patu_pol_to_pod, tcx egress) runs. A veth with policy programs
 * is in patu_routed_nopeer (policy-tc's attach marks it); a packet from or to such
 * a veth takes the stack path through both veths' hooks. On a node that enforces
 * policy that is every routed pod: correct first, fast where there is no policy.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "common.h"
#include "routed.h"

#ifndef offsetof
#define offsetof(t, f) __builtin_offsetof(t, f)
#endif
#define ROUTED_NEXT TC_ACT_UNSPEC  /* tcx: next program, then the stack */
#define IPPROTO_ICMPV6_ 58
#define ND_NEIGHBOR_SOLICIT 135
#define ND_NEIGHBOR_ADVERT 136
#define GW4 0xa9fe0101             /* 169.254.1.1 */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PATU_ROUTED_MAX);
	__type(key, __be32);
	__type(value, struct patu_routed_pod);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_routed_pods SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PATU_ROUTED_MAX);
	__type(key, struct patu_routed_ip6);
	__type(value, struct patu_routed_pod);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_routed_pods6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PATU_ROUTED_MAX);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_routed_nopeer SEC(".maps");

/* [0]: non-zero once any veth of this pin root was marked in patu_routed_nopeer (an array: its lookup is inlined). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_routed_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PATU_ROUTED_STATS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_routed_stats SEC(".maps");

static const __u8 gw_mac[ETH_ALEN] = PATU_ROUTED_GW_MAC;
/* fe80::1 */
static const __u8 gw6[16] = { 0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1 };

static __always_inline void count(__u32 k)
{
	__u64 *v = bpf_map_lookup_elem(&patu_routed_stats, &k);
	if (v)
		*v += 1;
}

/* linux/if_arp.h pulls in libc headers -target bpf cannot use. */
#define ARPHRD_ETHER 1
#define ARPOP_REQUEST 1
#define ARPOP_REPLY 2
struct arphdr_ {
	__be16 ar_hrd;
	__be16 ar_pro;
	__u8 ar_hln;
	__u8 ar_pln;
	__be16 ar_op;
};

struct arp_eth {
	struct ethhdr eth;
	struct arphdr_ arp;
	__u8 sha[ETH_ALEN];
	__be32 spa;
	__u8 tha[ETH_ALEN];
	__be32 tpa;
} __attribute__((packed));

static __always_inline int answer_arp(struct __sk_buff *skb, __u32 ifindex)
{
	struct arp_eth a;
	if (bpf_skb_load_bytes(skb, 0, &a, sizeof(a)) < 0)
		return ROUTED_NEXT;
	if (a.arp.ar_hrd != bpf_htons(ARPHRD_ETHER) || a.arp.ar_pro != bpf_htons(ETH_P_IP) ||
	    a.arp.ar_hln != ETH_ALEN || a.arp.ar_pln != 4 || a.arp.ar_op != bpf_htons(ARPOP_REQUEST) ||
	    a.tpa != bpf_htonl(GW4))
		return ROUTED_NEXT;
	__builtin_memcpy(a.eth.h_dest, a.sha, ETH_ALEN);
	__builtin_memcpy(a.eth.h_source, gw_mac, ETH_ALEN);
	a.arp.ar_op = bpf_htons(ARPOP_REPLY);
	__builtin_memcpy(a.tha, a.sha, ETH_ALEN);
	a.tpa = a.spa;
	__builtin_memcpy(a.sha, gw_mac, ETH_ALEN);
	a.spa = bpf_htonl(GW4);
	if (bpf_skb_store_bytes(skb, 0, &a, sizeof(a), 0) < 0)
		return TC_ACT_SHOT;
	count(PATU_ROUTED_ARP);
	/* Back out of the same veth: its peer, the pod's eth0, receives the answer. */
	return bpf_redirect(ifindex, 0);
}

struct na_reply {
	struct ethhdr eth;
	struct ipv6hdr ip6;
	__u8 type;
	__u8 code;
	__sum16 csum;
	__be32 flags;
	__u8 target[16];
	__u8 opt_type;             /* 2: target link-layer address */
	__u8 opt_len;              /* 1 (8 bytes) */
	__u8 opt_mac[ETH_ALEN];
} __attribute__((packed));

struct pseudo6 {
	__u8 src[16];
	__u8 dst[16];
	__be32 len;
	__be32 nexthdr;
};

struct ns_head {
	struct ethhdr eth;
	struct ipv6hdr ip6;
	__u8 type;
	__u8 code;
	__sum16 csum;
	__be32 reserved;
	__u8 target[16];
} __attribute__((packed));

static __always_inline int is_gw6(const __u8 *a)
{
	__u64 hi, lo, ghi, glo;
	__builtin_memcpy(&hi, a, 8);
	__builtin_memcpy(&lo, a + 8, 8);
	__builtin_memcpy(&ghi, gw6, 8);
	__builtin_memcpy(&glo, gw6 + 8, 8);
	return hi == ghi && lo == glo;
}

static __always_inline int answer_ns(struct __sk_buff *skb, __u32 ifindex, struct ns_head *h)
{
	__u64 s0, s1;
	__builtin_memcpy(&s0, &h->ip6.saddr, 8);
	__builtin_memcpy(&s1, (__u8 *)&h->ip6.saddr + 8, 8);
	if (s0 == 0 && s1 == 0)
		return ROUTED_NEXT;   /* duplicate address detection: nobody answers for fe80::1 */

	struct na_reply r = {};
	__builtin_memcpy(r.eth.h_dest, h->eth.h_source, ETH_ALEN);
	__builtin_memcpy(r.eth.h_source, gw_mac, ETH_ALEN);
	r.eth.h_proto = bpf_htons(ETH_P_IPV6);
	r.ip6.version = 6;
	r.ip6.payload_len = bpf_htons(32);
	r.ip6.nexthdr = IPPROTO_ICMPV6_;
	r.ip6.hop_limit = 255;
	__builtin_memcpy(&r.ip6.saddr, gw6, 16);
	__builtin_memcpy(&r.ip6.daddr, &h->ip6.saddr, 16);
	r.type = ND_NEIGHBOR_ADVERT;
	r.flags = bpf_htonl(0xe0000000);  /* router, solicited, override */
	__builtin_memcpy(r.target, gw6, 16);
	r.opt_type = 2;
	r.opt_len = 1;
	__builtin_memcpy(r.opt_mac, gw_mac, ETH_ALEN);

	struct pseudo6 ph = {};
	__builtin_memcpy(ph.src, gw6, 16);
	__builtin_memcpy(ph.dst, &h->ip6.saddr, 16);
	ph.len = bpf_htonl(32);
	ph.nexthdr = bpf_htonl(IPPROTO_ICMPV6_);
	__s64 sum = bpf_csum_diff(0, 0, (__be32 *)&ph, sizeof(ph), 0);
	if (sum < 0)
		return TC_ACT_SHOT;
	sum = bpf_csum_diff(0, 0, (__be32 *)&r.type, 32, (__wsum)sum);
	if (sum < 0)
		return TC_ACT_SHOT;
	__u32 c = (__u32)sum;
	c = (c & 0xffff) + (c >> 16);
	c = (c & 0xffff) + (c >> 16);
	r.csum = (__sum16)~c;

	if (skb->len != sizeof(r) && bpf_skb_change_tail(skb, sizeof(r), 0) < 0)
		return TC_ACT_SHOT;
	if (bpf_skb_store_bytes(skb, 0, &r, sizeof(r), 0) < 0)
		return TC_ACT_SHOT;
	count(PATU_ROUTED_ND);
	return bpf_redirect(ifindex, 0);
}

/* A local pod that may be reached past the stack: no policy on either veth. */
static __always_inline struct patu_routed_pod *peer_target(struct patu_routed_pod *p, __u32 ifindex)
{
	if (!p) {
		count(PATU_ROUTED_STACK);
		return 0;
	}
	__u32 dst = p->ifindex, zero = 0;
	__u32 *any = bpf_map_lookup_elem(&patu_routed_cfg, &zero);
	/* No veth with policy under this pin root (the common case without NetworkPolicy): no hash lookups. */
	if (any && *any && (bpf_map_lookup_elem(&patu_routed_nopeer, &ifindex) || bpf_map_lookup_elem(&patu_routed_nopeer, &dst))) {
		count(PATU_ROUTED_POLICY);
		return 0;
	}
	return p;
}

/* MACs by direct packet access (no helper call): the frame's head was checked by the caller. */
static __always_inline int deliver(struct ethhdr *eth, struct patu_routed_pod *p)
{
	__builtin_memcpy(eth->h_dest, p->mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, gw_mac, ETH_ALEN);
	count(PATU_ROUTED_REDIRECT);
	return bpf_redirect_peer(p->ifindex, 0);
}

SEC("tc")
int patu_routed(struct __sk_buff *skb)
{
	__u32 ifindex, proto;
	CTX_READ(ifindex, skb->ifindex);
	CTX_READ(proto, skb->protocol);

	if (proto == bpf_htons(ETH_P_ARP))
		return answer_arp(skb, ifindex);

	if (proto == bpf_htons(ETH_P_IP)) {
		/* The hot path: direct packet access, no copies, no checksum helper. */
		void *data = (void *)(long)skb->data;
		void *end = (void *)(long)skb->data_end;
		struct ethhdr *eth = data;
		struct iphdr *ip = data + sizeof(*eth);
		if ((void *)(ip + 1) > end)
			return ROUTED_NEXT;   /* headers not in the linear part: the stack copes */
		__be32 daddr = ip->daddr;
		struct patu_routed_pod *p = peer_target(bpf_map_lookup_elem(&patu_routed_pods, &daddr), ifindex);
		if (!p)
			return ROUTED_NEXT;
		if (ip->ttl <= 1) {
			count(PATU_ROUTED_TTL);
			return ROUTED_NEXT;
		}
		/* A router's hop: TTL - 1 and the header checksum updated incrementally (the kernel's ip_decrease_ttl). */
		__u32 check = ip->check;
		check += bpf_htons(0x0100);
		ip->check = (__sum16)(check + (check >= 0xffff));
		ip->ttl--;
		return deliver(eth, p);
	}

	if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ns_head h;
		if (bpf_skb_load_bytes(skb, 0, &h, sizeof(struct ethhdr) + sizeof(struct ipv6hdr)) < 0)
			return ROUTED_NEXT;
		if (h.ip6.nexthdr == IPPROTO_ICMPV6_ && bpf_skb_load_bytes(skb, 0, &h, sizeof(h)) == 0 &&
		    h.type == ND_NEIGHBOR_SOLICIT && h.code == 0 && h.ip6.hop_limit == 255 && is_gw6(h.target))
			return answer_ns(skb, ifindex, &h);
		struct patu_routed_ip6 k;
		__builtin_memcpy(k.addr, &h.ip6.daddr, 16);
		struct patu_routed_pod *p = peer_target(bpf_map_lookup_elem(&patu_routed_pods6, &k), ifindex);
		if (!p)
			return ROUTED_NEXT;
		if (h.ip6.hop_limit <= 1) {
			count(PATU_ROUTED_TTL);
			return ROUTED_NEXT;
		}
		void *data = (void *)(long)skb->data;
		void *end = (void *)(long)skb->data_end;
		struct ethhdr *eth = data;
		struct ipv6hdr *ip6 = data + sizeof(*eth);
		if ((void *)(ip6 + 1) > end)
			return ROUTED_NEXT;
		ip6->hop_limit--;
		return deliver(eth, p);
	}
	return ROUTED_NEXT;
}

char LICENSE[] SEC("license") = "GPL";
