// What one run of the UDP socket destroyer (udp-destroy.ts) did, and how the
// agent reports it. Import-free on purpose: the agent's entry imports this
// without loading the BPF layer its flags may never need.

export interface UdpDestroyStats {
  /** Backend entries looked for. */
  backends: number;
  /** Namespaces walked (the caller's included). */
  netns: number;
  /** Namespaces not walked: the budget ran out. */
  skippedNetns: number;
  /** Sockets destroyed. */
  sockets: number;
  ms: number;
  /** One line per namespace that failed (entering it, or the iterator); the others were still walked. */
  errors: string[];
}

/**
 * How the agent reports one run (it logs; this layer does not): a warning
 * when a namespace failed or was skipped, else info when sockets were destroyed,
 * else nothing.
 */
export function describeUdpDestroy(s: UdpDestroyStats): { level: 'info' | 'warn'; fields: object; msg: string } | undefined {
  const fields = { backends: s.backends, netns: s.netns, sockets: s.sockets, ms: Math.round(s.ms * 100) / 100 };
  if (s.errors.length || s.skippedNetns) {
    return {
      level: 'warn',
      fields: { ...fields, skippedNetns: s.skippedNetns, errors: s.errors.slice(0, 10) },
      msg: 'UDP sockets of departed backends: not every namespace was walked; clients there keep their socket until they reconnect',
    };
  }
  if (s.sockets) return { level: 'info', fields, msg: 'UDP sockets of departed backends destroyed' };
  return undefined;
}
