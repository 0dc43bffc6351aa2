/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Map layouts of bpf/accel.c, shared with the TypeScript control plane:
 * src/dataplane/accel-maps.ts mirrors these structs with structCodec.
 * TypedMap checks key/value sizes against the kernel's at open time, and
 * test/unit/bpf-layout.test.ts checks every field's offset and size against
 * the object's BTF, so a change here that is not made there fails a test.
 */
#ifndef PATU_ACCEL_H
#define PATU_ACCEL_H

#include <linux/types.h>

/* --- pod registry: IPv4 address (network order) -> pod info ------------- */
#define PATU_POD_F_ACCEL_OPTOUT (1u << 0) /* never accelerate this pod's sockets */

struct patu_pod_info {
	__u32 flags;        /* PATU_POD_F_* */
	__u32 ifindex;      /* host-side veth ifindex, 0 if unknown (informational) */
	__u64 netns_cookie; /* pod netns cookie, 0 if unknown (informational) */
};

#define PATU_MAX_PODS 4096

/* --- accelerated sockets: 4-tuple from the socket's own point of view --- */
struct patu_sock_key {
	__u32 local_ip4;   /* network order */
	__u32 remote_ip4;  /* network order */
	__u32 local_port;  /* host order */
	__u32 remote_port; /* host order */
};

#define PATU_MAX_SOCKS 65536

/* --- global switch: array[1] --------------------------------------------- */
struct patu_accel_cfg {
	__u32 enabled; /* 0: sock_ops inserts nothing and sk_msg passes every message */
	__u32 reserved;
};

#endif
