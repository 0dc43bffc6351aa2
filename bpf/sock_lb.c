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
#include "common.h"
#include "sock_lb.h"

/* Retries when userspace changes a service between our lookups (see pick_backend). */
#define PICK_ATTEMPTS 3

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PATU_SVC_MAX);
	__type(key, struct patu_svc_key);
	__type(value, struct patu_svc_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_svc SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PATU_BACKEND_MAX);
	__type(key, struct patu_slot_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_svc_slot SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PATU_BACKEND_MAX);
	__type(key, __u32);
	__type(value, struct patu_backend);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_backend SEC(".maps");

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
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, PATU_AFFINITY_MAX);
	__type(key, struct patu_aff_key);
	__type(value, struct patu_aff_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PATU_SVC_MAX);
	__type(key, __u32);
	__type(value, struct patu_svc_meta);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_svc_meta SEC(".maps");

/*
 * Picks a backend for the service at key. Userspace orders its updates so a
 * reader never sees a slot below count without a backend behind it, but a
 * reader that loaded the old count (or an old slot) just before a shrink can
 * still miss: re-reading the service and trying again closes that window.
 * Returns 0 and fills *out, or -1 when the service has no selectable backend.
 */
static __always_inline int pick_backend(void *ctx, const struct patu_svc_key *key,
					struct patu_backend *out)
{
	for (int attempt = 0; attempt < PICK_ATTEMPTS; attempt++) {
		struct patu_svc_val *svc = bpf_map_lookup_elem(&patu_svc, key);
		if (!svc)
			return -1;
		__u32 count = svc->count;
		__u32 svc_id = svc->svc_id;
		__u32 flags = svc->flags;
		__u64 timeout_ns = (__u64)svc->affinity_timeout * NSEC_PER_SEC;
		if (count == 0)
			return -1;

		struct patu_aff_key ak = {};
		__u64 now = 0;
		if (flags & PATU_SVC_F_AFFINITY) {
			ak.netns_cookie = bpf_get_netns_cookie(ctx);
			ak.svc_id = svc_id;
			now = bpf_ktime_get_ns();
			struct patu_aff_val *av = bpf_map_lookup_elem(&patu_affinity, &ak);
			if (av && now - av->last_used_ns <= timeout_ns) {
				__u32 bid = av->backend_id;
				struct patu_backend *be = bpf_map_lookup_elem(&patu_backend, &bid);
				/* The backend may have left the service (its id is then gone). */
				if (be && be->svc_id == svc_id) {
					av->last_used_ns = now;
					*out = *be;
					return 0;
				}
			}
		}

		struct patu_slot_key sk = { .svc_id = svc_id, .slot = bpf_get_prandom_u32() % count };
		__u32 *bidp = bpf_map_lookup_elem(&patu_svc_slot, &sk);
		if (!bidp)
			continue;
		__u32 bid = *bidp;
		struct patu_backend *be = bpf_map_lookup_elem(&patu_backend, &bid);
		if (!be || be->svc_id != svc_id)
			continue;
		*out = *be;
		if (flags & PATU_SVC_F_AFFINITY) {
			struct patu_aff_val av = { .backend_id = bid, .last_used_ns = now };
			bpf_map_update_elem(&patu_affinity, &ak, &av, BPF_ANY);
		}
		return 0;
	}
	return -1;
}

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
	if (!bpf_map_lookup_elem(&patu_svc, &key)) {
		/* A socket re-connected elsewhere must not keep its old reverse translation. */
		if (connected && sk) {
			struct patu_sock_nat *old = bpf_sk_storage_get(&patu_sock_nat, sk, 0, 0);
			if (old)
				old->vip = 0;
		}
		return 1;
	}

	struct patu_backend be;
	if (pick_backend(ctx, &key, &be) < 0) {
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
