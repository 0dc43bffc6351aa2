// SPDX-License-Identifier: GPL-2.0
/*
 * Services for packets from outside the node: tc (tcx) programs on the node's
 * uplinks. The socket LB (sock_lb.c) translates what processes on the node
 * connect to; a packet from another machine never passes a connect(), so it is
 * translated here, per packet:
 *
 *   patu_np_ingress  IPv4 TCP/UDP to {dst, port, proto} in patu_svc (ClusterIP,
 *                    externalIP, LoadBalancer IP), or to {0, port, proto} when dst
 *                    is a node address (NodePort, hostPort on any address):
 *                    destination rewritten to a backend, picked once per flow
 *                    (patu_np_ct); the kernel then routes it to the pod.
 *   patu_np_egress   the backend's reply leaving by an uplink: source rewritten
 *                    back to the address and port the client sent to.
 *
 * Both drop packets to the service CIDR that were not translated, so a
 * service address never reaches (or answers) anything off the node.
 *
 * No SNAT: the backend sees the client's address (externalTrafficPolicy
 * semantics hold on one node) and its reply must come back through this node,
 * which is so for backends on this node. Fragments pass untranslated.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "common.h"
#include "lb_select.h"
#include "nodeport.h"

/* tcx verdicts: TC_ACT_UNSPEC is TCX_NEXT (the rest of the chain, then the stack decides). */
#define NP_PASS TC_ACT_UNSPEC
#define NP_DROP TC_ACT_SHOT

/*
 * The service maps (patu_svc, patu_svc_slot, patu_backend, patu_affinity,
 * patu_node_addr, patu_lb_cfg) come from lb_select.h, pinned by name: loaded
 * with the socket LB's pin root, this object reads the very maps the agent's
 * ServiceLb writes.
 */

/* Our own, pinned too: a program reload or agent restart keeps every flow's backend. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, PATU_NP_CT_MAX);
	__type(key, struct patu_ct_key);
	__type(value, struct patu_ct_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_np_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PATU_NP_STATS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_np_stats SEC(".maps");

static __always_inline void count(__u32 k)
{
	__u64 *v = bpf_map_lookup_elem(&patu_np_stats, &k);
	if (v)
		*v += 1; /* this CPU's slot: no atomic, no shared cache line per packet */
}

struct pkt {
	__be32 saddr, daddr;
	__be16 sport, dport;
	__u8 proto;
	__u8 syn;            /* TCP SYN without ACK: a new connection */
	__u32 l4_off;        /* from the start of the frame */
	__u32 csum_off;      /* L4 checksum, from the start of the frame */
	__u64 csum_flags;    /* BPF_F_MARK_MANGLED_0 for UDP (checksum 0 = none) */
};

/*
 * 0: an IPv4 TCP/UDP packet that is not a fragment, parsed into *p; 1: not
 * IPv4; 2: IPv4, but nothing to translate. Read with bpf_skb_load_bytes, not
 * direct access: the headers of a non-linear skb need not be in its linear
 * part, and such a packet must not slip through untranslated.
 */
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	__be16 h_proto;
	if (bpf_skb_load_bytes(skb, __builtin_offsetof(struct ethhdr, h_proto), &h_proto, sizeof(h_proto)) < 0 ||
	    h_proto != bpf_htons(ETH_P_IP))
		return 1;
	struct iphdr ip;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0 || ip.ihl < 5)
		return 1;
	p->saddr = ip.saddr;
	p->daddr = ip.daddr;
	p->proto = ip.protocol;
	/* A fragment carries no (or not only its own) ports: left alone. */
	if (ip.frag_off & bpf_htons(0x3fff))
		return 2;
	__u32 l4 = ETH_HLEN + ip.ihl * 4;
	p->l4_off = l4;
	if (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP)
		return 2;
	/* Source and destination ports lead both headers; TCP's flags are at byte 13. */
	__be16 ports[2];
	if (bpf_skb_load_bytes(skb, l4, ports, sizeof(ports)) < 0)
		return 2;
	p->sport = ports[0];
	p->dport = ports[1];
	if (p->proto == IPPROTO_TCP) {
		__u8 flags;
		if (bpf_skb_load_bytes(skb, l4 + 13, &flags, 1) < 0)
			return 2;
		p->syn = (flags & 0x12) == 0x02; /* SYN without ACK */
		p->csum_off = l4 + __builtin_offsetof(struct tcphdr, check);
		p->csum_flags = 0;
	} else {
		p->csum_off = l4 + __builtin_offsetof(struct udphdr, check);
		p->csum_flags = BPF_F_MARK_MANGLED_0;
	}
	return 0;
}

#define IP_CSUM_OFF (ETH_HLEN + __builtin_offsetof(struct iphdr, check))
#define IP_SRC_OFF  (ETH_HLEN + __builtin_offsetof(struct iphdr, saddr))
#define IP_DST_OFF  (ETH_HLEN + __builtin_offsetof(struct iphdr, daddr))

/*
 * Rewrites one address and one port (the destination on ingress, the source
 * on egress), fixing the IPv4 and L4 checksums incrementally; the address is
 * part of the L4 pseudo-header. Returns 0, or <0 when the kernel refused.
 */
static __always_inline int rewrite(struct __sk_buff *skb, const struct pkt *p, int dst,
				   __be32 old_ip, __be32 new_ip, __be16 old_port, __be16 new_port)
{
	__u32 port_off = p->l4_off + (dst ? 2 : 0); /* tcphdr/udphdr: source at 0, dest at 2 */
	if (bpf_l4_csum_replace(skb, p->csum_off, old_ip, new_ip, p->csum_flags | BPF_F_PSEUDO_HDR | sizeof(new_ip)) < 0)
		return -1;
	if (bpf_l4_csum_replace(skb, p->csum_off, old_port, new_port, p->csum_flags | sizeof(new_port)) < 0)
		return -1;
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_ip, new_ip, sizeof(new_ip)) < 0)
		return -1;
	if (bpf_skb_store_bytes(skb, dst ? IP_DST_OFF : IP_SRC_OFF, &new_ip, sizeof(new_ip), 0) < 0)
		return -1;
	if (bpf_skb_store_bytes(skb, port_off, &new_port, sizeof(new_port), 0) < 0)
		return -1;
	return 0;
}

SEC("tc")
int patu_np_ingress(struct __sk_buff *skb)
{
	struct pkt p = {};
	int r = parse(skb, &p);
	if (r == 1)
		return NP_PASS;
	if (r == 2)
		return lb_in_service_cidr(p.daddr) ? (count(PATU_NP_SVC_DROP_IN), NP_DROP) : NP_PASS;

	struct patu_ct_key fk = {
		.src = p.saddr, .dst = p.daddr, .sport = p.sport, .dport = p.dport,
		.proto = p.proto, .dir = PATU_CT_FWD,
	};
	struct patu_backend be;
	__u32 bid = 0;
	/*
	 * A SYN starts a new connection even on a tuple an earlier one used (the
	 * client reuses ports quickly): it gets a fresh pick and fresh entries.
	 */
	struct patu_ct_val *ct = p.syn ? 0 : bpf_map_lookup_elem(&patu_np_ct, &fk);
	if (ct) {
		/* Known flow: its backend, while that backend is still the service's. */
		__u32 cbid = ct->backend_id;
		struct patu_backend *cur = bpf_map_lookup_elem(&patu_backend, &cbid);
		if (cur && cur->svc_id == ct->svc_id && cur->ip == ct->ip && cur->port == ct->port) {
			if (rewrite(skb, &p, 1, p.daddr, ct->ip, p.dport, ct->port) < 0)
				return NP_DROP;
			count(PATU_NP_FWD_HIT);
			return NP_PASS;
		}
	}

	/*
	 * {dst, port, proto}, then {0, port, proto} for a node address (host_ns 1:
	 * a packet never carries a loopback one); the externalTrafficPolicy Local
	 * entry of the same address (this node's endpoints only) comes first.
	 */
	struct patu_svc_key key = { .vip = p.daddr, .port = p.dport, .proto = p.proto | PATU_PROTO_EXT_LOCAL };
	struct patu_svc_val *svc = lb_lookup(&key, 1);
	if (!svc) {
		key.vip = p.daddr;
		key.proto = p.proto;
		svc = lb_lookup(&key, 1);
	}
	if (!svc) {
		/*
		 * Not a service. If this tuple, seen from the backend, still has a reverse
		 * entry, that entry is stale: the client now talks to the backend's own
		 * address from the port an earlier service flow used (a new TCP
		 * connection, or UDP), and its replies must not be rewritten.
		 */
		struct patu_ct_key sk = {
			.src = p.daddr, .dst = p.saddr, .sport = p.dport, .dport = p.sport,
			.proto = p.proto, .dir = PATU_CT_REV,
		};
		struct patu_ct_val *stale = bpf_map_lookup_elem(&patu_np_ct, &sk);
		if (stale) {
			/* Its forward entry goes too: the service flow cannot go on without its replies. */
			struct patu_ct_key sf = {
				.src = p.saddr, .dst = stale->ip, .sport = p.sport, .dport = stale->port,
				.proto = p.proto, .dir = PATU_CT_FWD,
			};
			bpf_map_delete_elem(&patu_np_ct, &sf);
			bpf_map_delete_elem(&patu_np_ct, &sk);
		}
		/* The node's own traffic, or to drop if it names the service CIDR. */
		if (lb_in_service_cidr(p.daddr)) {
			count(PATU_NP_SVC_DROP_IN);
			return NP_DROP;
		}
		return NP_PASS;
	}
	/* ClientIP affinity from outside: the client is its address (no netns cookie for a packet). */
	if (pick_backend_id(&key, PATU_AFF_CLIENT_IP | (__u64)p.saddr, &be, &bid) < 0) {
		count(PATU_NP_NO_BACKEND);
		return NP_DROP;
	}

	struct patu_ct_val fv = { .ip = be.ip, .port = be.port, .backend_id = bid, .svc_id = be.svc_id };
	struct patu_ct_key rk = {
		.src = be.ip, .dst = p.saddr, .sport = be.port, .dport = p.sport,
		.proto = p.proto, .dir = PATU_CT_REV,
	};
	struct patu_ct_val rv = { .ip = p.daddr, .port = p.dport };
	/* The reverse entry first: the reply can only come after the packet is on its way. */
	bpf_map_update_elem(&patu_np_ct, &rk, &rv, BPF_ANY);
	bpf_map_update_elem(&patu_np_ct, &fk, &fv, BPF_ANY);
	if (rewrite(skb, &p, 1, p.daddr, be.ip, p.dport, be.port) < 0)
		return NP_DROP;
	count(PATU_NP_NEW_FLOW);
	return NP_PASS;
}

/*
 * An ICMP error (destination unreachable, time exceeded) about a translated
 * flow, leaving towards the client: it quotes the packet the backend got
 * (client -> backend:port), which the client never sent. The quote's
 * destination goes back to the service address and port (inner IP checksum
 * fixed; the quoted L4 checksum is not checked by receivers), the ICMP
 * checksum follows each change, and the outer source too when the backend
 * itself sent the error. So a UDP client of a NodePort whose backend port is
 * closed gets ECONNREFUSED instead of a timeout. Returns 1 when translated.
 */
static __always_inline int icmp_error_rev(struct __sk_buff *skb, const struct pkt *p)
{
	__u32 icmp = p->l4_off;
	__u8 type;
	if (bpf_skb_load_bytes(skb, icmp, &type, 1) < 0 || (type != 3 && type != 11))
		return 0;
	__u32 in_ip = icmp + 8;
	struct iphdr inner;
	if (bpf_skb_load_bytes(skb, in_ip, &inner, sizeof(inner)) < 0 || inner.ihl < 5 ||
	    (inner.protocol != IPPROTO_TCP && inner.protocol != IPPROTO_UDP))
		return 0;
	__u32 in_l4 = in_ip + inner.ihl * 4;
	__be16 ports[2];
	if (bpf_skb_load_bytes(skb, in_l4, ports, sizeof(ports)) < 0)
		return 0;
	/* The quoted packet went client -> backend: its reply tuple is the reverse entry. */
	struct patu_ct_key rk = {
		.src = inner.daddr, .dst = inner.saddr, .sport = ports[1], .dport = ports[0],
		.proto = inner.protocol, .dir = PATU_CT_REV,
	};
	struct patu_ct_val *ct = bpf_map_lookup_elem(&patu_np_ct, &rk);
	if (!ct)
		return 0;
	__be32 svc_ip = ct->ip;
	__be16 svc_port = ct->port;
	__u32 icmp_csum = icmp + 2;
	__u32 in_csum = in_ip + __builtin_offsetof(struct iphdr, check);
	__be16 old_in_csum = inner.check;
	if (bpf_l3_csum_replace(skb, in_csum, inner.daddr, svc_ip, sizeof(svc_ip)) < 0)
		return -1;
	__be16 new_in_csum;
	if (bpf_skb_load_bytes(skb, in_csum, &new_in_csum, sizeof(new_in_csum)) < 0)
		return -1;
	if (bpf_l4_csum_replace(skb, icmp_csum, old_in_csum, new_in_csum, sizeof(new_in_csum)) < 0 ||
	    bpf_l4_csum_replace(skb, icmp_csum, inner.daddr, svc_ip, sizeof(svc_ip)) < 0 ||
	    bpf_l4_csum_replace(skb, icmp_csum, ports[1], svc_port, sizeof(svc_port)) < 0)
		return -1;
	if (bpf_skb_store_bytes(skb, in_ip + __builtin_offsetof(struct iphdr, daddr), &svc_ip, sizeof(svc_ip), 0) < 0 ||
	    bpf_skb_store_bytes(skb, in_l4 + 2, &svc_port, sizeof(svc_port), 0) < 0)
		return -1;
	if (p->saddr == inner.daddr) {
		if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, p->saddr, svc_ip, sizeof(svc_ip)) < 0 ||
		    bpf_skb_store_bytes(skb, IP_SRC_OFF, &svc_ip, sizeof(svc_ip), 0) < 0)
			return -1;
	}
	return 1;
}

SEC("tc")
int patu_np_egress(struct __sk_buff *skb)
{
	struct pkt p = {};
	int r = parse(skb, &p);
	if (r == 1)
		return NP_PASS;
	if (r == 0) {
		struct patu_ct_key rk = {
			.src = p.saddr, .dst = p.daddr, .sport = p.sport, .dport = p.dport,
			.proto = p.proto, .dir = PATU_CT_REV,
		};
		struct patu_ct_val *ct = bpf_map_lookup_elem(&patu_np_ct, &rk);
		if (ct) {
			if (rewrite(skb, &p, 0, p.saddr, ct->ip, p.sport, ct->port) < 0)
				return NP_DROP;
			count(PATU_NP_REV);
			return NP_PASS;
		}
	} else if (p.proto == IPPROTO_ICMP && p.l4_off) { /* l4_off 0: a fragment */
		int t = icmp_error_rev(skb, &p);
		if (t < 0)
			return NP_DROP;
		if (t > 0) {
			count(PATU_NP_REV);
			return NP_PASS;
		}
	}
	/* Nothing addressed to a service leaves the node untranslated. */
	if (lb_in_service_cidr(p.daddr)) {
		count(PATU_NP_SVC_DROP_EG);
		return NP_DROP;
	}
	return NP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
