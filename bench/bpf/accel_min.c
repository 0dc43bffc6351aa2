// SPDX-License-Identifier: GPL-2.0
// bench/accel.ts's anchor, not shipped: the least a sockops + sk_msg redirect can do.
// Every established IPv4 TCP socket of the cgroup goes into a sockhash keyed by its
// 4-tuple; every sendmsg is redirected to the peer's socket. No pod registry, no switch,
// no checks: what sk_msg redirection itself costs on this kernel. An AF_INET6 socket
// (iperf3's dual-stack listener accepts IPv4 clients as ::ffff:a.b.c.d) is keyed by the
// last word of its addresses, unchecked.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "common.h" /* CTX_READ: one load per field, or clang selects a ctx offset the verifier refuses */

struct key { __u32 lip, rip, lport, rport; };

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, struct key);
	__type(value, __u64);
} min_sock_hash SEC(".maps");

SEC("sockops")
int min_sockops(struct bpf_sock_ops *skops)
{
	if (skops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && skops->op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
		return 1;
	__u32 fam, l4, r4, l6, r6;
	CTX_READ(fam, skops->family);
	CTX_READ(l4, skops->local_ip4);
	CTX_READ(r4, skops->remote_ip4);
	CTX_READ(l6, skops->local_ip6[3]);
	CTX_READ(r6, skops->remote_ip6[3]);
	struct key k = { fam == AF_INET ? l4 : l6, fam == AF_INET ? r4 : r6, skops->local_port, bpf_ntohl(skops->remote_port) };
	bpf_sock_hash_update(skops, &min_sock_hash, &k, BPF_ANY);
	return 1;
}

SEC("sk_msg")
int min_skmsg(struct sk_msg_md *msg)
{
	__u32 fam, l4, r4, l6, r6;
	CTX_READ(fam, msg->family);
	CTX_READ(l4, msg->local_ip4);
	CTX_READ(r4, msg->remote_ip4);
	CTX_READ(l6, msg->local_ip6[3]);
	CTX_READ(r6, msg->remote_ip6[3]);
	struct key peer = { fam == AF_INET ? r4 : r6, fam == AF_INET ? l4 : l6, bpf_ntohl(msg->remote_port), msg->local_port };
	bpf_msg_redirect_hash(msg, &min_sock_hash, &peer, BPF_F_INGRESS);
	return SK_PASS;
}

char LICENSE[] SEC("license") = "GPL";
