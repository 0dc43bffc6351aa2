// `patu accel on|off|status`: node-wide switch for same-node socket acceleration.
import { Accel, type AccelStatus } from '../dataplane/accel.js';
import { resolveCgroup } from '../kernel/cgroup.js';
import { DEFAULTS } from '../defaults.js';

export interface AccelCommandOptions {
  pinRoot?: string;
  /** cgroup2 directory to attach sock_ops to; the default (the hierarchy's root, found in /proc/self/mountinfo) covers every pod. */
  cgroup?: string;
  /** BPF object to load (defaults to build/bpf/accel.o). */
  object?: string;
  /** on: load a fresh object even when pinned programs exist (upgrade in place). */
  reload?: boolean;
  json?: boolean;
  /** Mount bpffs if it is missing (main.ts: false with PATU_BPFFS_MOUNT=never). */
  mountBpffs?: boolean;
  /** Notes on what `on` did (main.ts: stderr with PATU_DEBUG set). */
  log?: (msg: string) => void;
  /** Where output goes (tests capture it). */
  out?: (line: string) => void;
}

function render(st: AccelStatus): string[] {
  const lines = [
    `acceleration: ${!st.setUp ? 'not set up (run: patu accel on)' : st.enabled ? 'on' : 'off'}`,
    `sock_ops attached: ${st.attached ? `yes (cgroup id ${st.cgroupId})` : 'no'}`,
    `accelerated sockets: ${st.sockets} (~${Math.floor(st.sockets / 2)} connections)`,
    `pods: ${st.pods.length}`,
  ];
  for (const p of [...st.pods].sort((a, b) => a.ip.localeCompare(b.ip, 'en', { numeric: true }))) {
    lines.push(`  ${p.ip.padEnd(15)} ${p.optOut ? 'opted out' : 'accelerated'}`);
  }
  return lines;
}

export async function accelCommand(action: 'on' | 'off' | 'status', opts: AccelCommandOptions = {}): Promise<AccelStatus> {
  const out = opts.out ?? ((l: string) => process.stdout.write(l + '\n'));
  // Only `on` attaches: off and status work on hosts (or in containers) without a usable cgroup2.
  const cgroupPath = action === 'on' ? resolveCgroup({ cgroup: opts.cgroup }) : opts.cgroup;
  const accel = Accel.open({
    pinRoot: opts.pinRoot ?? DEFAULTS.pinRoot,
    ...(cgroupPath !== undefined ? { cgroupPath } : {}),
    ...(opts.mountBpffs !== undefined ? { mountBpffs: opts.mountBpffs } : {}),
    ...(opts.log ? { log: opts.log } : {}),
    ...(opts.object ? { objectPath: opts.object } : {}),
  });
  if (action === 'on') accel.enable({ reload: opts.reload ?? false });
  else if (action === 'off') accel.disable();
  const st = accel.status();
  if (opts.json) out(JSON.stringify(st, (_k, v) => (typeof v === 'bigint' ? v.toString() : v)));
  else for (const l of render(st)) out(l);
  return st;
}
