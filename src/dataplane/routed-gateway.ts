// Routed mode's gateway (docs/routed.md): an address that exists nowhere, answered
// for by bpf/routed.c on each pod's host veth. Import-free, so the CNI's checks and
// results use it without loading libbpf.

/** Every routed pod's IPv4 gateway (Calico's choice: link-local, never a pod's). */
export const ROUTED_GATEWAY4 = '169.254.1.1';
/** Its IPv6 twin: a link-local gateway, valid on any link. */
export const ROUTED_GATEWAY6 = 'fe80::1';
/** bpf/routed.h PATU_ROUTED_GW_MAC: every routed host veth's MAC, the one the program answers with. */
export const ROUTED_GATEWAY_MAC = '02:50:a9:fe:01:01';
