// SPDX-License-Identifier: GPL-2.0
// Test fixture for the libbpf layer (test/integration/bpf.test.ts) and the
// BTF layout check (test/unit/bpf-layout.test.ts): maps of several kinds and
// small programs that are cheap to attach to a test cgroup or a test veth.
// Built to build/test/bpf/, so `patu install` (which ships build/bpf/) never
// copies it.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct test_val {
	__u64 bytes;
	__u32 packets;
	__u8 flags;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct test_val);
} patu_test_hash SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} patu_test_counters SEC(".maps");

// Two fields of the same size: a codec that swaps them has the right size and
// the wrong layout, which only an offset check can see.
struct test_pair {
	__u32 first;
	__u32 second;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, struct test_pair);
} patu_test_pairs SEC(".maps");

// Pinned by name under the object's pin root, so a second open reuses it.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_test_pinned SEC(".maps");

// Counts egress packets of sockets in the attached cgroup into counters[0].
SEC("cgroup_skb/egress")
int patu_test_egress(struct __sk_buff *skb)
{
	__u32 k = 0;
	__u64 *v = bpf_map_lookup_elem(&patu_test_counters, &k);
	if (v)
		__sync_fetch_and_add(v, 1);
	return 1;
}

// Attach targets for tcx and XDP links: they count packets into counters[1]
// (tc ingress), counters[2] (tc egress) and counters[3] (XDP), and pass them.
// "tc" is the sched_cls section libbpf 1.1 knows (it predates "tcx/*"): the
// kernel accepts any sched_cls program for a tcx link, in either direction.
static __always_inline void count(__u32 k)
{
	__u64 *v = bpf_map_lookup_elem(&patu_test_counters, &k);
	if (v)
		__sync_fetch_and_add(v, 1);
}

SEC("tc")
int patu_test_tcx_in(struct __sk_buff *skb)
{
	count(1);
	return -1; /* TCX_NEXT: let the rest of the chain (and the stack) decide */
}

SEC("tc")
int patu_test_tcx_eg(struct __sk_buff *skb)
{
	count(2);
	return -1;
}

SEC("xdp")
int patu_test_xdp(struct xdp_md *ctx)
{
	count(3);
	return XDP_PASS;
}

// Deliberately rejected by the verifier (map value dereferenced without the
// NULL check). '?' disables autoload: tests enable it to exercise the error path.
SEC("?cgroup_skb/ingress")
int patu_test_bad(struct __sk_buff *skb)
{
	__u32 k = 1;
	__u64 *v = bpf_map_lookup_elem(&patu_test_counters, &k);
	*v += 1;
	return 1;
}

char LICENSE[] SEC("license") = "GPL";
