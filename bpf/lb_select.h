/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Service lookup and backend selection, shared by the socket hooks
 * (bpf/sock_lb.c) and any packet-level program that serves the same services
 * (tc). The maps are defined here, pinned by name: every object that includes
 * this header and is loaded with the same pin root shares them, and the agent
 * (ServiceLb) stays their only writer.
 *
 * Include after <linux/bpf.h>, <bpf/bpf_helpers.h> and "common.h".
 */
#ifndef PATU_LB_SELECT_H
#define PATU_LB_SELECT_H

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
	__uint(max_entries, PATU_AFFINITY_MAX);
	__type(key, struct patu_aff_key);
	__type(value, struct patu_aff_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_affinity SEC(".maps");

/* Node addresses (key: __be32) -> PATU_NODE_ADDR_F_*: the agent keeps it in step with rtnetlink. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PATU_NODE_ADDR_MAX);
	__type(key, __be32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_node_addr SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct patu_lb_cfg);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_lb_cfg SEC(".maps");

/*
 * Finds the service for key: {dst, port, proto} first; on a miss, when dst
 * is a node address, the wildcard entry {0, port, proto} (key->vip is then 0,
 * so the caller's pick_backend uses the same entry). host_ns says whether the
 * caller is in the node's own netns (loopback node addresses count only
 * there); tc passes 1 (a packet from outside never carries a loopback address).
 */
static __always_inline struct patu_svc_val *lb_lookup(struct patu_svc_key *key, int host_ns)
{
	struct patu_svc_val *svc = bpf_map_lookup_elem(&patu_svc, key);
	/*
	 * An exact loopback entry (a hostPort with hostIP 127.0.0.1) is the node's too:
	 * a pod's 127.0.0.1 is its own (host_ns is 1 for every non-loopback address).
	 */
	if (svc)
		return host_ns ? svc : 0;
	__be32 dst = key->vip;
	__u32 *flags = bpf_map_lookup_elem(&patu_node_addr, &dst);
	if (!flags)
		return 0;
	if ((*flags & PATU_NODE_ADDR_F_LOOPBACK) && !host_ns)
		return 0;
	key->vip = PATU_VIP_ANY;
	svc = bpf_map_lookup_elem(&patu_svc, key);
	if (!svc)
		key->vip = dst;
	return svc;
}

/* Whether ip (network byte order) is in the configured service CIDR. */
static __always_inline int lb_in_service_cidr(__be32 ip)
{
	__u32 zero = 0;
	struct patu_lb_cfg *cfg = bpf_map_lookup_elem(&patu_lb_cfg, &zero);
	if (!cfg || cfg->svc_mask == 0)
		return 0;
	return (ip & cfg->svc_mask) == cfg->svc_net;
}

/* The node's netns cookie as the agent recorded it (0: unknown). */
static __always_inline __u64 lb_host_netns_cookie(void)
{
	__u32 zero = 0;
	struct patu_lb_cfg *cfg = bpf_map_lookup_elem(&patu_lb_cfg, &zero);
	return cfg ? cfg->host_netns_cookie : 0;
}

/*
 * Picks a backend for the service at key. Userspace orders its updates so a
 * reader never sees a slot below count without a backend behind it, but a
 * reader that loaded the old count (or an old slot) just before a shrink can
 * still miss: re-reading the service and trying again closes that window.
 * client identifies the client for sessionAffinity (a netns cookie, or
 * PATU_AFF_CLIENT_IP | source address); it is only read for affinity services.
 * Returns 0 and fills *out (and *out_id with the backend's id in patu_backend:
 * the tc path keeps it per flow to notice the backend left), or -1 when the
 * service has no selectable backend.
 */
static __always_inline int pick_backend_id(const struct patu_svc_key *key, __u64 client,
					   struct patu_backend *out, __u32 *out_id)
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
			ak.netns_cookie = client;
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
					*out_id = bid;
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
		*out_id = bid;
		if (flags & PATU_SVC_F_AFFINITY) {
			struct patu_aff_val av = { .backend_id = bid, .last_used_ns = now };
			bpf_map_update_elem(&patu_affinity, &ak, &av, BPF_ANY);
		}
		return 0;
	}
	return -1;
}

/* pick_backend_id for callers that do not need the id (the socket hooks). */
static __always_inline int pick_backend(const struct patu_svc_key *key, __u64 client,
					struct patu_backend *out)
{
	__u32 id;
	return pick_backend_id(key, client, out, &id);
}

#endif
