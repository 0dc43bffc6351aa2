// SPDX-License-Identifier: GPL-2.0
/*
 * NetworkPolicy enforcement on each pod's host-side veth (tcx):
 *
 *   patu_pol_from_pod  TCX_INGRESS: packets leaving the pod. The endpoint is the
 *                      SOURCE address; its EGRESS policy decides.
 *   patu_pol_to_pod    TCX_EGRESS: packets to the pod. The endpoint is the
 *                      DESTINATION address; its INGRESS policy decides.
 *
 * Map layouts and the model: policy.h. Per packet:
 *   1. not IPv4: ARP and the rest pass; IPv6 is dropped for an endpoint isolated
 *      in this direction (found by the veth: patu_pol_dev), else passes.
 *   2. endpoint = patu_pol_ep[src or dst]; unknown -> pass. An endpoint bound
 *      to another veth (ifindex) -> drop (from the pod: a spoofed source; to the
 *      pod: not its frame). Not isolated at all -> pass.
 *   3. conntrack: {tuple, dir} (this endpoint admitted it) or {reversed tuple,
 *      other dir} (a reply) -> pass, state/deadline refreshed (written only when
 *      the state changes or the deadline moved by more than 1 s). A TCP SYN
 *      (without ACK) skips this: every new connection is judged.
 *   4. new flow (or mid-stream after a flush): not isolated in this direction,
 *      peer class HOST, or a patu_pol_rule match -> pass and conntrack entry
 *      (TCP: SYN_SEEN for a SYN, else ESTABLISHED); else drop.
 * ICMP errors are judged by their embedded header (as a reply of that flow:
 * CT only, never a new flow). Non-first fragments pass when their first
 * fragment passed (a CT entry with pad = 1 keyed by the IP id), else are
 * dropped for an isolated endpoint.
 * Verdicts: TC_ACT_UNSPEC (-1, tcx "next": the stack goes on) or TC_ACT_SHOT (2).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "common.h"
#include "policy.h"

#define POL_PASS TC_ACT_UNSPEC
#define POL_DROP TC_ACT_SHOT

#ifndef IPPROTO_SCTP
#define IPPROTO_SCTP 132
#endif
#define ETH_P_IPV6_ 0x86DD

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PATU_POL_EP_MAX);
	__type(key, __be32);
	__type(value, struct patu_pol_ep);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_pol_ep SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PATU_POL_EP_MAX);
	__type(key, __u32);          /* host-side veth ifindex */
	__type(value, __be32);       /* the pod's IPv4 address (its patu_pol_ep key) */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_pol_dev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, PATU_POL_PEER_MAX);
	__type(key, struct patu_pol_peer_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_pol_peer SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, PATU_POL_RULE_MAX);
	__type(key, struct patu_pol_rule_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_pol_rule SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, PATU_POL_CT_MAX);
	__type(key, struct patu_pol_ct_key);
	__type(value, struct patu_pol_ct_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_pol_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct patu_pol_cfg);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_pol_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, PATU_POL_STATS_MAX);
	__type(key, struct patu_pol_stats_key);
	__type(value, struct patu_pol_stats_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_pol_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, PATU_POL_EVENTS_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_pol_events SEC(".maps");

enum { PK_L4 = 0, PK_ICMP_ERR = 1, PK_FRAG = 2, PK_BAD = 3 };

struct pkt {
	__be32 saddr, daddr;   /* the outer header */
	__be32 src, dst;       /* the flow (ICMP error: its embedded flow, reversed) */
	__be16 sport, dport;
	__be16 ipid;
	__u8 proto;            /* the flow's */
	__u8 tcp;              /* TCP flags, 0 otherwise */
	__u8 kind;             /* PK_* */
	__u8 first_frag;       /* offset 0 with more fragments to come */
};

/*
 * Reads ports of an L4 header at off into p (ICMP echo: id as the port, see
 * policy.h). Returns <0 when the header is not there.
 */
static __always_inline int l4_ports(struct __sk_buff *skb, __u32 off, __u8 proto, __be16 *sport, __be16 *dport)
{
	if (proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP) {
		__be16 ports[2];
		if (bpf_skb_load_bytes(skb, off, ports, sizeof(ports)) < 0)
			return -1;
		*sport = ports[0];
		*dport = ports[1];
		return 0;
	}
	if (proto == IPPROTO_ICMP) {
		__u8 h[8];
		if (bpf_skb_load_bytes(skb, off, h, sizeof(h)) < 0)
			return -1;
		__be16 id = *(__be16 *)&h[4];
		if (h[0] == 8) {        /* echo request */
			*sport = id;
			*dport = 0;
		} else if (h[0] == 0) { /* echo reply */
			*sport = 0;
			*dport = id;
		} else {
			*sport = 0;
			*dport = 0;
		}
		return 0;
	}
	*sport = 0;
	*dport = 0;
	return 0;
}

static __always_inline int icmp_is_error(__u8 type)
{
	return type == 3 || type == 4 || type == 5 || type == 11 || type == 12;
}

/* IPv4 header at ETH_HLEN into p. <0: not a readable IPv4 header. */
static __always_inline int parse_ip(struct __sk_buff *skb, struct pkt *p)
{
	struct iphdr ip;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0 || ip.ihl < 5)
		return -1;
	p->saddr = p->src = ip.saddr;
	p->daddr = p->dst = ip.daddr;
	p->proto = ip.protocol;
	p->ipid = ip.id;
	__u16 frag = bpf_ntohs(ip.frag_off);
	if (frag & 0x1fff) {
		p->kind = PK_FRAG;
		return 0;
	}
	p->first_frag = (frag & 0x2000) ? 1 : 0;
	__u32 l4 = ETH_HLEN + ip.ihl * 4;
	if (p->proto == IPPROTO_TCP) {
		__u8 h[14];
		if (bpf_skb_load_bytes(skb, l4, h, sizeof(h)) < 0) {
			p->kind = PK_BAD;
			return 0;
		}
		p->sport = *(__be16 *)&h[0];
		p->dport = *(__be16 *)&h[2];
		p->tcp = h[13];
		return 0;
	}
	if (p->proto == IPPROTO_ICMP) {
		__u8 type;
		if (bpf_skb_load_bytes(skb, l4, &type, 1) < 0) {
			p->kind = PK_BAD;
			return 0;
		}
		if (icmp_is_error(type)) {
			/* The embedded header: the packet this error is about, sent the other way. */
			struct iphdr in;
			__u32 in_off = l4 + 8;
			if (bpf_skb_load_bytes(skb, in_off, &in, sizeof(in)) < 0 || in.ihl < 5) {
				p->kind = PK_BAD;
				return 0;
			}
			__be16 isport = 0, idport = 0;
			if (l4_ports(skb, in_off + in.ihl * 4, in.protocol, &isport, &idport) < 0) {
				p->kind = PK_BAD;
				return 0;
			}
			p->kind = PK_ICMP_ERR;
			p->proto = in.protocol;
			p->src = in.daddr;
			p->dst = in.saddr;
			p->sport = idport;
			p->dport = isport;
			return 0;
		}
	}
	if (l4_ports(skb, l4, p->proto, &p->sport, &p->dport) < 0)
		p->kind = PK_BAD;
	return 0;
}

/*
 * The common case read in place: an IPv4 header without options and the first
 * 20 bytes after it in the linear part of the skb, not a fragment, not an ICMP
 * error. 0: *p filled; <0: anything else (parse_ip reads it the careful way).
 */
static __always_inline int parse_direct(struct __sk_buff *skb, struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + ETH_HLEN;
	__u8 *l4 = data + ETH_HLEN + sizeof(struct iphdr);
	if ((void *)(l4 + 20) > end)
		return -1;
	if (eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5 || (ip->frag_off & bpf_htons(0x3fff)))
		return -1;
	__u8 proto = ip->protocol;
	p->saddr = p->src = ip->saddr;
	p->daddr = p->dst = ip->daddr;
	p->proto = proto;
	p->ipid = ip->id;
	if (proto == IPPROTO_TCP) {
		p->sport = *(__be16 *)&l4[0];
		p->dport = *(__be16 *)&l4[2];
		p->tcp = l4[13];
	} else if (proto == IPPROTO_UDP || proto == IPPROTO_SCTP) {
		p->sport = *(__be16 *)&l4[0];
		p->dport = *(__be16 *)&l4[2];
	} else if (proto == IPPROTO_ICMP) {
		__u8 type = l4[0];
		if (icmp_is_error(type))
			return -1;
		__be16 id = *(__be16 *)&l4[4];
		p->sport = type == 8 ? id : 0;
		p->dport = type == 0 ? id : 0;
	}
	return 0;
}

static __always_inline void count(__u32 ep_id, __u32 policy, __u8 dir, __u8 verdict, __u32 len)
{
	struct patu_pol_stats_key k = { .ep_id = ep_id, .policy = policy, .dir = dir, .verdict = verdict };
	struct patu_pol_stats_val *v = bpf_map_lookup_elem(&patu_pol_stats, &k);
	if (v) {
		/* this CPU's copy: no atomics */
		v->packets += 1;
		v->bytes += len;
		return;
	}
	struct patu_pol_stats_val nv = { .packets = 1, .bytes = len };
	bpf_map_update_elem(&patu_pol_stats, &k, &nv, BPF_NOEXIST);
}

/*
 * -DPATU_POL_NO_EVENTS compiles the event path out (bench/policy.ts: the
 * idle-monitor cost is the difference against this build).
 */
static __always_inline void event(const struct pkt *p, __u8 dir, __u8 reason, __u32 ep_id, __u32 policy)
{
#ifndef PATU_POL_NO_EVENTS
	__u32 zero = 0;
	struct patu_pol_cfg *cfg = bpf_map_lookup_elem(&patu_pol_cfg, &zero);
	if (!cfg || !cfg->monitor)
		return;
	if (reason == PATU_POL_REASON_ALLOW && !cfg->monitor_allow)
		return;
	struct patu_pol_event *e = bpf_ringbuf_reserve(&patu_pol_events, sizeof(*e), 0);
	if (!e)
		return;
	e->ts_ns = bpf_ktime_get_ns();
	e->src = p->src;
	e->dst = p->dst;
	e->sport = p->sport;
	e->dport = p->dport;
	e->proto = p->proto;
	e->dir = dir;
	e->reason = reason;
	e->pad = 0;
	e->ep_id = ep_id;
	e->policy = policy;
	bpf_ringbuf_submit(e, 0);
#endif
}

static __always_inline int drop(const struct pkt *p, __u8 dir, __u8 reason, __u32 ep_id, __u32 len)
{
	count(ep_id, 0, dir, PATU_POL_VERDICT_DROP, len);
	event(p, dir, reason, ep_id, 0);
	return POL_DROP;
}

/* 1 when a new flow to/from peer is allowed by a rule of ep_id (or the peer is the node). */
static __always_inline int judge(__u32 ep_id, __u8 dir, __be32 peer, __u8 proto, __be16 port, __u32 *policy)
{
	struct patu_pol_peer_key pk = { .prefixlen = 32, .ip = peer };
	__u32 *cls = bpf_map_lookup_elem(&patu_pol_peer, &pk);
	if (!cls)
		return 0;
	__u32 c = *cls;
	if (c == PATU_POL_CLASS_HOST) {
		*policy = 0;
		return 1;
	}
	if (c == PATU_POL_CLASS_WORLD)
		return 0;
	struct patu_pol_rule_key rk = {
		.prefixlen = PATU_POL_RULE_PREFIX_FULL,
		.ep_id = bpf_htonl(ep_id),
		.peer_class = bpf_htonl(c),
		.dir = dir,
		.proto = proto,
		.port = port,
	};
	__u32 *pol = bpf_map_lookup_elem(&patu_pol_rule, &rk);
	if (!pol)
		return 0;
	*policy = *pol;
	return 1;
}

static __always_inline __u64 lifetime_ns(__u8 proto, __u32 flags)
{
	__u64 s;
	if (proto == IPPROTO_TCP)
		s = (flags & PATU_POL_CT_CLOSING) ? PATU_POL_CT_TCP_CLOSE :
		    (flags & PATU_POL_CT_ESTABLISHED) ? PATU_POL_CT_TCP_EST : PATU_POL_CT_TCP_SYN;
	else if (proto == IPPROTO_ICMP)
		s = PATU_POL_CT_ICMP;
	else
		s = PATU_POL_CT_OTHER;
	return s * NSEC_PER_SEC;
}

/* A known flow's packet: TCP state and deadline, written only when they change enough. */
static __always_inline void ct_touch(struct patu_pol_ct_val *ct, const struct pkt *p, __u64 now, int reply)
{
	__u32 f = ct->flags;
	if (p->proto == IPPROTO_TCP) {
		__u32 nf = f;
		if (p->tcp & (TCP_FIN | TCP_RST))
			nf |= PATU_POL_CT_CLOSING;
		else if (reply && (p->tcp & TCP_ACK) && !(f & PATU_POL_CT_ESTABLISHED))
			nf |= PATU_POL_CT_ESTABLISHED;
		if (nf != f) {
			ct->flags = nf;
			ct->expires_ns = now + lifetime_ns(p->proto, nf);
			return;
		}
	}
	__u64 want = now + lifetime_ns(p->proto, f);
	if (want > ct->expires_ns + PATU_POL_CT_REFRESH_NS)
		ct->expires_ns = want;
}

static __always_inline void frag_track(const struct pkt *p, __u8 dir, __u32 ep_id, __u32 policy, __u64 now)
{
	struct patu_pol_ct_key fk = {
		.src = p->saddr, .dst = p->daddr, .sport = p->ipid, .dport = 0,
		.proto = p->proto, .dir = dir, .pad = 1,
	};
	struct patu_pol_ct_val fv = { .expires_ns = now + PATU_POL_CT_ICMP * NSEC_PER_SEC, .policy = policy, .ep_id = ep_id };
	bpf_map_update_elem(&patu_pol_ct, &fk, &fv, BPF_ANY);
}

static __always_inline int ipv6(__u32 ifindex, __u8 dir, __u32 len)
{
	__be32 *ip = bpf_map_lookup_elem(&patu_pol_dev, &ifindex);
	if (!ip)
		return POL_PASS;
	__be32 a = *ip;
	struct patu_pol_ep *ep = bpf_map_lookup_elem(&patu_pol_ep, &a);
	if (!ep)
		return POL_PASS;
	__u32 iso = dir == PATU_POL_EGRESS ? PATU_POL_EP_ISOLATED_EGRESS : PATU_POL_EP_ISOLATED_INGRESS;
	if (!(ep->flags & iso))
		return POL_PASS;
	struct pkt p = {};
	return drop(&p, dir, PATU_POL_REASON_IPV6, ep->ep_id, len);
}

static __always_inline int enforce(struct __sk_buff *skb, const __u8 dir)
{
	__u32 ifindex, len;
	CTX_READ(ifindex, skb->ifindex);
	CTX_READ(len, skb->len);

	struct pkt p = {};
	if (parse_direct(skb, &p) < 0) {
		/* Not the common case: read with bpf_skb_load_bytes, which any skb allows. */
		__be16 h_proto;
		if (bpf_skb_load_bytes(skb, __builtin_offsetof(struct ethhdr, h_proto), &h_proto, sizeof(h_proto)) < 0)
			return POL_PASS;
		if (h_proto != bpf_htons(ETH_P_IP)) {
			if (h_proto == bpf_htons(ETH_P_IPV6_))
				return ipv6(ifindex, dir, len);
			return POL_PASS; /* ARP and the rest */
		}
		if (parse_ip(skb, &p) < 0)
			return POL_PASS; /* no IPv4 header to speak of: the stack drops it */
	}

	__be32 epip = dir == PATU_POL_EGRESS ? p.saddr : p.daddr;
	struct patu_pol_ep *ep = bpf_map_lookup_elem(&patu_pol_ep, &epip);
	if (!ep)
		return POL_PASS; /* not (yet) an endpoint */
	__u32 ep_id = ep->ep_id, flags = ep->flags, epif = ep->ifindex;
	/*
	 * Bound to another veth: from the pod, a spoofed source; to the pod, not its
	 * frame (flooded by the bridge, or someone claims the address). Either way, drop.
	 */
	if (epif && epif != ifindex)
		return drop(&p, dir, PATU_POL_REASON_SPOOF, ep_id, len);
	if (!flags)
		return POL_PASS;
	__u32 isolated = flags & (dir == PATU_POL_EGRESS ? PATU_POL_EP_ISOLATED_EGRESS : PATU_POL_EP_ISOLATED_INGRESS);
	__u64 now = bpf_ktime_get_coarse_ns(); /* CLOCK_MONOTONIC_COARSE: no clocksource read (kvm-clock: ~40 ns a call) */

	if (p.kind == PK_FRAG) {
		if (!isolated)
			return POL_PASS;
		struct patu_pol_ct_key fk = {
			.src = p.saddr, .dst = p.daddr, .sport = p.ipid, .dport = 0,
			.proto = p.proto, .dir = dir, .pad = 1,
		};
		struct patu_pol_ct_val *fv = bpf_map_lookup_elem(&patu_pol_ct, &fk);
		if (fv && fv->expires_ns > now)
			return POL_PASS;
		return drop(&p, dir, PATU_POL_REASON_NO_RULE, ep_id, len);
	}
	if (p.kind == PK_BAD)
		return isolated ? drop(&p, dir, PATU_POL_REASON_NO_RULE, ep_id, len) : POL_PASS;

	struct patu_pol_ct_key k = {
		.src = p.src, .dst = p.dst, .sport = p.sport, .dport = p.dport,
		.proto = p.proto, .dir = dir,
	};
	int syn = p.proto == IPPROTO_TCP && (p.tcp & (TCP_SYN | TCP_ACK)) == TCP_SYN;
	__u32 policy = 0;
	if (!syn) {
		struct patu_pol_ct_val *ct = bpf_map_lookup_elem(&patu_pol_ct, &k);
		if (ct && ct->expires_ns > now) {
			if (ct->flags & PATU_POL_CT_DENIED)
				return drop(&p, dir, PATU_POL_REASON_NO_RULE, ep_id, len);
			if (p.kind == PK_L4)
				ct_touch(ct, &p, now, 0);
			policy = ct->policy;
			goto pass;
		}
		struct patu_pol_ct_key rk = {
			.src = p.dst, .dst = p.src, .sport = p.dport, .dport = p.sport,
			.proto = p.proto, .dir = dir ^ 1,
		};
		ct = bpf_map_lookup_elem(&patu_pol_ct, &rk);
		if (ct && ct->expires_ns > now) {
			if (ct->flags & PATU_POL_CT_DENIED)
				return drop(&p, dir, PATU_POL_REASON_NO_RULE, ep_id, len);
			if (p.kind == PK_L4)
				ct_touch(ct, &p, now, 1);
			policy = ct->policy;
			goto pass;
		}
	}
	if (p.kind == PK_ICMP_ERR)
		/* About no flow we know: only an endpoint open in this direction gets it. */
		return isolated ? drop(&p, dir, PATU_POL_REASON_NO_RULE, ep_id, len) : POL_PASS;

	/* A new flow (or one whose entry went: judged again). */
	if (isolated && !judge(ep_id, dir, dir == PATU_POL_EGRESS ? p.dst : p.src, p.proto, p.dport, &policy))
		return drop(&p, dir, PATU_POL_REASON_NO_RULE, ep_id, len);
	struct patu_pol_ct_val nv = {
		.policy = policy,
		.ep_id = ep_id,
		.flags = p.proto != IPPROTO_TCP ? 0 : syn ? PATU_POL_CT_SYN_SEEN : PATU_POL_CT_ESTABLISHED,
	};
	if (p.proto == IPPROTO_TCP && (p.tcp & (TCP_FIN | TCP_RST)))
		nv.flags |= PATU_POL_CT_CLOSING;
	nv.expires_ns = now + lifetime_ns(p.proto, nv.flags);
	bpf_map_update_elem(&patu_pol_ct, &k, &nv, BPF_ANY);
	count(ep_id, policy, dir, PATU_POL_VERDICT_ALLOW, len);
	event(&p, dir, PATU_POL_REASON_ALLOW, ep_id, policy);
pass:
	if (p.first_frag && isolated)
		frag_track(&p, dir, ep_id, policy, now);
	return POL_PASS;
}

SEC("tc")
int patu_pol_from_pod(struct __sk_buff *skb)
{
	return enforce(skb, PATU_POL_EGRESS);
}

SEC("tc")
int patu_pol_to_pod(struct __sk_buff *skb)
{
	return enforce(skb, PATU_POL_INGRESS);
}

char LICENSE[] SEC("license") = "GPL";
