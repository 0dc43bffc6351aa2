/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Map layouts for socket-level ClusterIP load balancing (bpf/sock_lb.c).
 * The TypeScript codecs in src/dataplane/service-lb.ts mirror these structs
 * byte for byte: the libbpf layer checks key/value sizes against the kernel
 * at open time, and test/unit/bpf-layout.test.ts checks every field's offset
 * and size against the object's BTF.
 *
 * Addresses and ports are kept in network byte order, as the socket hooks see
 * them, so the programs never convert on the fast path.
 */
#ifndef PATU_SOCK_LB_H
#define PATU_SOCK_LB_H

#include <linux/types.h>

#define PATU_SVC_MAX      65536    /* service ports (vip, port, proto) */
#define PATU_BACKEND_MAX  262144   /* backends over all services */
#define PATU_REVNAT_MAX   262144   /* LRU: per-socket reverse translations */
#define PATU_AFFINITY_MAX 65536    /* LRU: (client netns, service) -> backend */
#define PATU_SVC_NAME_LEN 64
#define PATU_NODE_ADDR_MAX 4096    /* IPv4 addresses of the node (every host link, lo too) */

/*
 * The wildcard VIP: a patu_svc entry with vip 0 answers on every address in
 * patu_node_addr (NodePorts, hostPorts without a hostIP). Lookup order, for the
 * socket hooks and the tc path alike: {dst, port, proto}; on a miss, when dst
 * is a node address, {0, port, proto}.
 */
#define PATU_VIP_ANY 0

/* svc_val.flags */
#define PATU_SVC_F_AFFINITY 0x1    /* sessionAffinity: ClientIP */

/* patu_node_addr value flags */
#define PATU_NODE_ADDR_F_LOOPBACK 0x1  /* 127.0.0.0/8: a node address only for sockets of the
				      * node's own netns (a pod's 127.0.0.1 is the pod's) */

/*
 * patu_lb_cfg[0]: node-wide settings the agent writes. All zero (the map's
 * initial state) means: no service CIDR, no loopback node addresses.
 */
struct patu_lb_cfg {
	__be32 svc_net;      /* service CIDR network, network byte order */
	__be32 svc_mask;     /* its mask, network byte order; 0 = no service CIDR */
	__u64 host_netns_cookie; /* the node's netns (PATU_NODE_ADDR_F_LOOPBACK); 0 = none */
};

/*
 * Or-ed into patu_svc_key.proto of the entries only the tc path (nodeport.c)
 * reads: an externalTrafficPolicy Local NodePort/externalIP/LB IP with this
 * node's endpoints only, for packets from outside. A socket's protocol never
 * has this bit, so the socket hooks never match these entries.
 */
#define PATU_PROTO_EXT_LOCAL 0x80

/* Service key: protocol is part of it so TCP and UDP on one port are distinct. */
struct patu_svc_key {
	__be32 vip;
	__be16 port;
	__u8 proto;          /* IPPROTO_TCP / IPPROTO_UDP */
	__u8 pad;            /* must be zero: hash keys compare bytewise */
};

struct patu_svc_val {
	__u32 count;         /* selectable backends: slots 0..count-1; 0 = reject */
	__u32 svc_id;        /* unique per service port, never 0 */
	__u32 flags;         /* PATU_SVC_F_* */
	__u32 affinity_timeout; /* seconds, when PATU_SVC_F_AFFINITY */
};

struct patu_slot_key {
	__u32 svc_id;
	__u32 slot;
};

/*
 * Backend ids are allocated globally (not per service), so one id never names
 * two services' backends; svc_id lets the affinity path prove an id it
 * remembered still belongs to the same service.
 */
struct patu_backend {
	__be32 ip;
	__be16 port;
	__u16 pad;
	__u32 svc_id;
};

/*
 * Reverse translation: a socket (cookie) that was sent to a backend sees the
 * service address instead, on recvmsg (unconnected UDP) and getpeername.
 */
struct patu_revnat_key {
	__u64 cookie;
	__be32 ip;
	__be16 port;
	__u16 pad;
};

struct patu_revnat_val {
	__be32 vip;
	__be16 port;
	__u16 pad;
};

/*
 * Per-socket reverse translation for connected sockets (TCP, connected UDP),
 * in socket-local storage: freed with the socket, so no LRU churn or stale
 * entries for the common case. Unconnected UDP, which may talk to several
 * services from one socket, uses the patu_revnat LRU map instead.
 */
struct patu_sock_nat {
	__be32 backend_ip;
	__be32 vip;
	__be16 backend_port;
	__be16 vport;
};

/*
 * sessionAffinity ClientIP. At connect() the source address is usually not
 * chosen yet, so the client is identified by its network namespace cookie:
 * one pod = one netns = one pod IP, which is what ClientIP means for pods.
 * Host processes share the host netns, hence one affinity for the host.
 * Packets (the tc path) have no socket: there the client is its source
 * address, tagged with PATU_AFF_CLIENT_IP so it never equals a netns cookie
 * (cookies count up from 1).
 */
#define PATU_AFF_CLIENT_IP (1ULL << 63) /* client = this bit | IPv4 source (tc path) */

struct patu_aff_key {
	__u64 netns_cookie;  /* the client: a netns cookie (sockets) or PATU_AFF_CLIENT_IP | ip */
	__u32 svc_id;
	__u32 pad;
};

struct patu_aff_val {
	__u32 backend_id;
	__u32 pad;
	__u64 last_used_ns;  /* bpf_ktime_get_ns() */
};

/* Names for `patu services`: not read by the programs. */
struct patu_svc_meta {
	char name[PATU_SVC_NAME_LEN];
};

#endif
