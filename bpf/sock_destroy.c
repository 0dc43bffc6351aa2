// SPDX-License-Identifier: GPL-2.0
/*
 * Destroys connected UDP sockets that the socket LB (bpf/sock_lb.c) pinned to
 * a service backend that has since left the service. A connected UDP socket
 * (a resolver's, typically) was translated once, at connect(): without this
 * it keeps sending to the old backend forever. bpf_sock_destroy (kernel 6.5+)
 * aborts it with ECONNABORTED, the application reconnects and connect4 picks
 * a live backend. Unconnected sockets are left alone: sendmsg4 translates
 * every datagram anew, so they move by themselves.
 *
 * Run by userspace, never attached to anything: the agent fills
 * patu_udp_gone, then reads one iterator per network namespace (a UDP
 * iterator walks the namespace it was created in). Each destroyed socket's
 * cookie is written to the iterator's output, so userspace can count them.
 *
 * patu_sock_nat and patu_revnat are sock_lb.c's own maps: userspace hands
 * their fds to libbpf (bpf_map__reuse_fd) before load.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "common.h"
#include "sock_lb.h"
#include "sock_destroy.h"

/* Just what the program reads of the kernel's types; CO-RE relocates the offsets. */
struct seq_file;
struct bpf_iter_meta {
	struct seq_file *seq;
} __attribute__((preserve_access_index));

struct bpf_iter__udp {
	struct bpf_iter_meta *meta;
	void *udp_sk;            /* struct udp_sock *, NULL at the end */
} __attribute__((preserve_access_index));

struct sock_common {
	__be32 skc_daddr;
	__be16 skc_dport;
	unsigned short skc_family;
} __attribute__((preserve_access_index));

extern int bpf_sock_destroy(struct sock_common *sk) __ksym;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PATU_UDP_GONE_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct patu_udp_gone_key);
	__type(value, __u32);
} patu_udp_gone SEC(".maps");

/* Same definitions as in sock_lb.c (reused by fd, so never created here). */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct patu_sock_nat);
} patu_sock_nat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, PATU_REVNAT_MAX);
	__type(key, struct patu_revnat_key);
	__type(value, struct patu_revnat_val);
} patu_revnat SEC(".maps");

static __always_inline int gone(__be32 vip, __be16 vport, __be32 ip, __be16 port)
{
	struct patu_udp_gone_key k = { .vip = vip, .backend_ip = ip, .vport = vport, .backend_port = port };
	if (bpf_map_lookup_elem(&patu_udp_gone, &k))
		return 1;
	k.vip = 0; /* NodePort: the socket's vip is the node address it used */
	return bpf_map_lookup_elem(&patu_udp_gone, &k) != 0;
}

SEC("iter/udp")
int patu_udp_destroy(struct bpf_iter__udp *ctx)
{
	struct sock_common *sk = ctx->udp_sk;
	if (!sk)
		return 0;
	if (sk->skc_family != AF_INET)
		return 0;
	__be32 daddr = sk->skc_daddr;
	__be16 dport = sk->skc_dport;
	if (!daddr) /* not connected */
		return 0;

	struct patu_sock_nat *sn = bpf_sk_storage_get(&patu_sock_nat, sk, 0, 0);
	if (sn) {
		/*
		 * Still connected where the LB sent it (not re-connected elsewhere:
		 * connect4 then clears vip, or the addresses differ).
		 */
		if (!sn->vip || sn->backend_ip != daddr || sn->backend_port != dport)
			return 0;
		if (!gone(sn->vip, sn->vport, daddr, dport))
			return 0;
	} else {
		/*
		 * connect4 falls back to the LRU map when socket storage cannot be
		 * allocated; its entry is keyed by cookie and backend.
		 */
		struct patu_revnat_key rk = { .cookie = bpf_get_socket_cookie(sk), .ip = daddr, .port = dport };
		struct patu_revnat_val *rv = bpf_map_lookup_elem(&patu_revnat, &rk);
		if (!rv || !gone(rv->vip, rv->port, daddr, dport))
			return 0;
	}

	if (bpf_sock_destroy(sk) == 0) {
		__u64 cookie = bpf_get_socket_cookie(sk);
		bpf_seq_write(ctx->meta->seq, &cookie, sizeof(cookie));
	}
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
