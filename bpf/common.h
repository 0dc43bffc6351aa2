/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What every patu eBPF program shares: the ctx-read barrier and the few
 * kernel constants that the UAPI headers usable with -target bpf do not
 * define (they live in libc or kernel-internal headers).
 */
#ifndef PATU_COMMON_H
#define PATU_COMMON_H

/*
 * Reads a context field once into a local and pins it in a register. Without
 * the empty asm, clang may merge loads of the same field from different
 * branches into one load through a modified ctx pointer, which the verifier
 * rejects ("dereference of modified ctx ptr"). Read every field a program
 * branches on up front with this, then use the locals.
 */
#define CTX_READ(dst, expr) do { dst = (expr); asm volatile("" : "+r"(dst)); } while (0)

#define AF_INET  2
#define AF_INET6 10

#define ECONNREFUSED 111

#define NSEC_PER_SEC 1000000000ULL

#endif
