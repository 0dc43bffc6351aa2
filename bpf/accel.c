// SPDX-License-Identifier: GPL-2.0
// Same-node socket acceleration. patu_sockops puts established TCP sockets
// whose both ends are registered local pods into a sockhash; patu_skmsg,
// attached to that sockhash, moves each sendmsg straight into the peer
// socket's receive queue (bpf_msg_redirect_hash + BPF_F_INGRESS), skipping
// the TCP/IP stack, veth, bridge and netfilter on both sides.
//
// Maps are pinned by name (libbpf pin root = <patu pin root>/accel) so the
// CNI plugin can edit the pod registry without loading anything, and a
// restarted agent reuses the sockhash holding live connections.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "common.h"
#include "accel.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PATU_MAX_PODS);
	__type(key, __u32);
	__type(value, struct patu_pod_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_pods SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, PATU_MAX_SOCKS);
	__type(key, struct patu_sock_key);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_sock_hash SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct patu_accel_cfg);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_accel_cfg SEC(".maps");

static __always_inline int accel_enabled(void)
{
	__u32 zero = 0;
	struct patu_accel_cfg *cfg = bpf_map_lookup_elem(&patu_accel_cfg, &zero);
	return cfg && cfg->enabled;
}

// The IPv4 address a socket uses: plain AF_INET, or the IPv4-mapped form
// (::ffff:a.b.c.d) that dual-stack listeners (bound to ::) accept v4 clients as.
static __always_inline int ipv4_of(__u32 family, __u32 ip4, __u32 w0, __u32 w1, __u32 w2, __u32 w3, __u32 *out)
{
	if (family == AF_INET) {
		*out = ip4;
		return 1;
	}
	if (family == AF_INET6 && w0 == 0 && w1 == 0 && w2 == bpf_htonl(0x0000ffff)) {
		*out = w3;
		return 1;
	}
	return 0;
}

static __always_inline int pod_accelerated(__u32 ip)
{
	struct patu_pod_info *pod = bpf_map_lookup_elem(&patu_pods, &ip);
	return pod && !(pod->flags & PATU_POD_F_ACCEL_OPTOUT);
}

SEC("sockops")
int patu_sockops(struct bpf_sock_ops *skops)
{
	__u32 op, family, lip4, rip4, l0, l1, l2, l3, r0, r1, r2, r3, lport, rport;

	CTX_READ(op, skops->op);
	if (op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
		return 1;
	CTX_READ(family, skops->family);
	CTX_READ(lip4, skops->local_ip4);
	CTX_READ(rip4, skops->remote_ip4);
	CTX_READ(l0, skops->local_ip6[0]);
	CTX_READ(l1, skops->local_ip6[1]);
	CTX_READ(l2, skops->local_ip6[2]);
	CTX_READ(l3, skops->local_ip6[3]);
	CTX_READ(r0, skops->remote_ip6[0]);
	CTX_READ(r1, skops->remote_ip6[1]);
	CTX_READ(r2, skops->remote_ip6[2]);
	CTX_READ(r3, skops->remote_ip6[3]);
	CTX_READ(lport, skops->local_port);
	CTX_READ(rport, skops->remote_port);

	struct patu_sock_key key = {};
	if (!ipv4_of(family, lip4, l0, l1, l2, l3, &key.local_ip4) ||
	    !ipv4_of(family, rip4, r0, r1, r2, r3, &key.remote_ip4))
		return 1;
	if (!accel_enabled() || !pod_accelerated(key.local_ip4) || !pod_accelerated(key.remote_ip4))
		return 1;
	key.local_port = lport;                 /* host order already */
	key.remote_port = bpf_ntohl(rport);     /* big-endian port in the upper 16 bits */
	bpf_sock_hash_update(skops, &patu_sock_hash, &key, BPF_ANY);
	return 1;
}

SEC("sk_msg")
int patu_skmsg(struct sk_msg_md *msg)
{
	__u32 family, lip4, rip4, l0, l1, l2, l3, r0, r1, r2, r3, lport, rport;

	// Checked per message so `patu accel off` also stops redirecting on sockets
	// already in the sockhash: they fall back to the TCP path, in order (the
	// receiver drains redirected data before its TCP receive queue).
	if (!accel_enabled())
		return SK_PASS;
	CTX_READ(family, msg->family);
	CTX_READ(lip4, msg->local_ip4);
	CTX_READ(rip4, msg->remote_ip4);
	CTX_READ(l0, msg->local_ip6[0]);
	CTX_READ(l1, msg->local_ip6[1]);
	CTX_READ(l2, msg->local_ip6[2]);
	CTX_READ(l3, msg->local_ip6[3]);
	CTX_READ(r0, msg->remote_ip6[0]);
	CTX_READ(r1, msg->remote_ip6[1]);
	CTX_READ(r2, msg->remote_ip6[2]);
	CTX_READ(r3, msg->remote_ip6[3]);
	CTX_READ(lport, msg->local_port);
	CTX_READ(rport, msg->remote_port);

	// The peer's key is our 4-tuple seen from the other end.
	struct patu_sock_key peer = {};
	if (!ipv4_of(family, rip4, r0, r1, r2, r3, &peer.local_ip4) ||
	    !ipv4_of(family, lip4, l0, l1, l2, l3, &peer.remote_ip4))
		return SK_PASS;
	peer.local_port = bpf_ntohl(rport);
	peer.remote_port = lport;
	// SK_DROP here only means "peer not in the sockhash" (closed, or outside
	// the attach cgroup): send normally instead of dropping the data.
	bpf_msg_redirect_hash(msg, &patu_sock_hash, &peer, BPF_F_INGRESS);
	return SK_PASS;
}

char LICENSE[] SEC("license") = "GPL";
