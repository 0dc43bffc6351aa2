// SPDX-License-Identifier: GPL-2.0
/*
 * Socket-level ClusterIP load balancing. The service address is translated
 * once per socket (connect) or per datagram (unconnected UDP sendmsg) instead
 * of per packet, so the cost is one hash lookup whatever the number of
 * services. Replies and getpeername() are translated back per socket cookie.
 *
 * No bpf_printk anywhere: these run on every connect of every process below
 * the attach point.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "common.h"
#include "lb_select.h"

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, PATU_REVNAT_MAX);
	__type(key, struct patu_revnat_key);
	__type(value, struct patu_revnat_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_revnat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct patu_sock_nat);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_sock_nat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PATU_SVC_MAX);
	__type(key, __u32);
	__type(value, struct patu_svc_meta);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_svc_meta SEC(".maps");

/*
 * Shared by connect4 (TCP, connected UDP) and sendmsg4 (unconnected UDP).
 * A service with no selectable backend fails the call with ECONNREFUSED, as
 * kube-proxy's REJECT does: returning 0 alone would surface as EPERM, so the
 * program sets the syscall's return value first (bpf_set_retval, 5.18+).
 */
static __always_inline int translate(struct bpf_sock_addr *ctx, struct bpf_sock *sk, __u32 ip,
				     __u32 port, __u32 proto, int connected)
{
	struct patu_svc_key key = { .vip = ip, .port = (__u16)port, .proto = (__u8)proto };
	/* A loopback node address is one only in the node's own netns (a pod's 127.0.0.1 is its own). */
	int host_ns = (bpf_ntohl(ip) >> 24) != 127 || bpf_get_netns_cookie(ctx) == lb_host_netns_cookie();
	if (!lb_lookup(&key, host_ns)) {
		/* A socket re-connected elsewhere must not keep its old reverse translation. */
		if (connected && sk) {
			struct patu_sock_nat *old = bpf_sk_storage_get(&patu_sock_nat, sk, 0, 0);
			if (old)
				old->vip = 0;
		}
		/*
		 * The service CIDR stays on the node: an address or port there that no
		 * service uses is refused here, as kube-proxy's nftables mode does,
		 * instead of leaving by the default route.
		 */
		if (lb_in_service_cidr(ip)) {
			bpf_set_retval(-ECONNREFUSED);
			return 0;
		}
		return 1;
	}

	struct patu_backend be;
	if (pick_backend(&key, bpf_get_netns_cookie(ctx), &be) < 0) {
		bpf_set_retval(-ECONNREFUSED);
		return 0;
	}
	ctx->user_ip4 = be.ip;
	ctx->user_port = (__u32)be.port;

	if (connected && sk) {
		struct patu_sock_nat *sn = bpf_sk_storage_get(&patu_sock_nat, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (sn) {
			sn->backend_ip = be.ip;
			sn->backend_port = be.port;
			sn->vip = ip;
			sn->vport = (__u16)port;
			return 1;
		}
		/* No memory for socket storage: fall back to the LRU map. */
	}
	struct patu_revnat_key rk = {
		.cookie = bpf_get_socket_cookie(ctx),
		.ip = be.ip,
		.port = be.port,
	};
	struct patu_revnat_val rv = { .vip = ip, .port = (__u16)port };
	bpf_map_update_elem(&patu_revnat, &rk, &rv, BPF_ANY);
	return 1;
}

/* Context fields are read once, up front, with CTX_READ (see common.h). */
SEC("cgroup/connect4")
int patu_connect4(struct bpf_sock_addr *ctx)
{
	__u32 ip, port, proto;
	struct bpf_sock *sk = ctx->sk;
	CTX_READ(ip, ctx->user_ip4);
	CTX_READ(port, ctx->user_port);
	CTX_READ(proto, ctx->protocol);
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 1;
	return translate(ctx, sk, ip, port, proto, 1);
}

SEC("cgroup/sendmsg4")
int patu_sendmsg4(struct bpf_sock_addr *ctx)
{
	__u32 ip, port, proto;
	CTX_READ(ip, ctx->user_ip4);
	CTX_READ(port, ctx->user_port);
	CTX_READ(proto, ctx->protocol);
	if (proto != IPPROTO_UDP)
		return 1;
	return translate(ctx, 0, ip, port, proto, 0);
}

/* Reply source (recvmsg) and peer (getpeername) seen as the service address. */
static __always_inline void reverse(struct bpf_sock_addr *ctx)
{
	__u32 ip, port;
	struct bpf_sock *sk = ctx->sk;
	CTX_READ(ip, ctx->user_ip4);
	CTX_READ(port, ctx->user_port);
	if (sk) {
		struct patu_sock_nat *sn = bpf_sk_storage_get(&patu_sock_nat, sk, 0, 0);
		if (sn && sn->vip && sn->backend_ip == ip && sn->backend_port == (__u16)port) {
			ctx->user_ip4 = sn->vip;
			ctx->user_port = (__u32)sn->vport;
			return;
		}
	}
	struct patu_revnat_key rk = {
		.cookie = bpf_get_socket_cookie(ctx),
		.ip = ip,
		.port = (__u16)port,
	};
	struct patu_revnat_val *rv = bpf_map_lookup_elem(&patu_revnat, &rk);
	if (!rv)
		return;
	ctx->user_ip4 = rv->vip;
	ctx->user_port = (__u32)rv->port;
}

SEC("cgroup/recvmsg4")
int patu_recvmsg4(struct bpf_sock_addr *ctx)
{
	reverse(ctx);
	return 1;
}

SEC("cgroup/getpeername4")
int patu_getpeername4(struct bpf_sock_addr *ctx)
{
	reverse(ctx);
	return 1;
}

char LICENSE[] SEC("license") = "GPL";
