/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Map layout of bpf/sock_destroy.c, mirrored in src/dataplane/udp-destroy.ts
 * (checked field by field by test/unit/bpf-layout.test.ts).
 */
#ifndef PATU_SOCK_DESTROY_H
#define PATU_SOCK_DESTROY_H

#include <linux/types.h>

/* Entries per iterator run; userspace runs the iterator again for more. */
#define PATU_UDP_GONE_MAX 4096

/*
 * "backend left service": a connected UDP socket that the socket LB translated
 * from vip:vport to backend_ip:backend_port (struct patu_sock_nat) and is still
 * connected there is destroyed. Keyed by the service too, so a socket that
 * reached the same address through another service, which still has it, stays.
 * A NodePort entry has vip 0 (the wildcard of the data-plane contract): the
 * socket's own vip is then a node address, so the program looks it up both ways.
 * Network byte order throughout, as patu_sock_nat holds it.
 */
struct patu_udp_gone_key {
	__be32 vip;
	__be32 backend_ip;
	__be16 vport;
	__be16 backend_port;
};

#endif
