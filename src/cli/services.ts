// `patu services apply FILE` and `patu services` (list). apply programs a
// services file once and exits, for scripts: the file is the whole truth, so
// services no longer in it are removed. list reads the pinned maps, so it
// shows what the kernel will do, not what a file says.
import { formatTable } from './table.js';
import { DEFAULTS } from '../defaults.js';
import { ServiceLb, readProgrammed, type ProgrammedServiceView } from '../dataplane/service-lb.js';
import { resolveCgroup } from '../kernel/cgroup.js';
import { loadServices, ServiceFileError } from '../services/file-source.js';
import { ServiceModel } from '../services/model.js';
import { messageOf } from '../errors.js';

export interface ServicesOptions {
  /** bpffs directory of the service maps and links (default /sys/fs/bpf/patu). */
  pinRoot?: string;
  /** cgroup2 directory to attach to if not attached yet (default: the hierarchy's root, found in /proc/self/mountinfo). */
  cgroupPath?: string;
  /** Compiled sock_lb.o (default: build/bpf/sock_lb.o next to this install). */
  objectPath?: string;
  /** Mount bpffs if it is missing (main.ts: false with PATU_BPFFS_MOUNT=never). */
  mountBpffs?: boolean;
  json?: boolean;
  /** Where output goes (default: stdout). Errors go to `err` (default: stderr). */
  out?: (s: string) => void;
  err?: (s: string) => void;
}

export interface ServicesApplyResult {
  file: string;
  services: number;
  servicePorts: number;
  backends: number;
  mapOps: number;
  attachedNow: boolean;
  ms: number;
}

const stdout = (s: string): void => {
  process.stdout.write(s);
};
const stderr = (s: string): void => {
  process.stderr.write(s);
};

/**
 * Programs FILE (or every *.yaml/*.yml/*.json of a directory) once. Returns the process exit code: 0 on success, 1 when the
 * file is invalid (each problem printed with its entry and field; nothing is
 * changed), 2 when the kernel side fails.
 */
export async function servicesApply(file: string, opts: ServicesOptions = {}): Promise<number> {
  const out = opts.out ?? stdout;
  const err = opts.err ?? stderr;
  const t0 = performance.now();
  let items;
  try {
    items = await loadServices(file);
  } catch (e) {
    if (e instanceof ServiceFileError) {
      err(`patu services apply: ${e.message}\n`);
      return 1;
    }
    throw e;
  }
  const model = new ServiceModel();
  model.replaceAll(items);
  let lb: ServiceLb | undefined;
  try {
    lb = ServiceLb.open({ pinRoot: opts.pinRoot ?? DEFAULTS.pinRoot, cgroupPath: resolveCgroup({ cgroup: opts.cgroupPath }), ...(opts.mountBpffs !== undefined ? { mountBpffs: opts.mountBpffs } : {}), ...(opts.objectPath ? { objectPath: opts.objectPath } : {}) });
    // Full resync: what the maps hold and the file does not is removed. The
    // programs are attached by the first apply that succeeds.
    for (const r of lb.repairs) err(`patu services apply: repaired: ${r}\n`);
    const desired = model.desired();
    const stats = lb.resync(desired);
    const attachedNow = stats.attachedNow;
    const result: ServicesApplyResult = {
      file,
      services: model.size,
      servicePorts: desired.size,
      backends: [...desired.values()].reduce((n, d) => n + d.backends.length, 0),
      mapOps: stats.ops,
      attachedNow,
      ms: Math.round((performance.now() - t0) * 10) / 10,
    };
    if (opts.json) out(JSON.stringify(result) + '\n');
    else {
      out(`programmed ${result.services} services (${result.servicePorts} ports, ${result.backends} backends) from ${file}: ` +
        `${result.mapOps} map operations in ${result.ms} ms${attachedNow ? '; programs attached' : ''}\n`);
    }
    return 0;
  } catch (e) {
    err(`patu services apply: ${messageOf(e)}\n`);
    return 2;
  } finally {
    lb?.close();
  }
}

export function formatServicesTable(list: readonly ProgrammedServiceView[]): string {
  const rows = list.map((s) => [
    s.name || `svc-${s.svcId}`,
    // The wildcard entry answers on every node address: a NodePort (or a hostPort without hostIP).
    (s.vip === '0.0.0.0' ? `*:${s.port}/${s.protocol} (node)` : `${s.vip}:${s.port}/${s.protocol}`) +
      (s.scope ? ' (from outside: local endpoints)' : ''),
    s.sessionAffinity === 'ClientIP' ? `ClientIP(${s.affinityTimeoutSeconds}s)` : 'None',
    s.backends.length ? s.backends.map((b) => `${b.ip}:${b.port}`).join(' ') : '(none: connections refused)',
  ]);
  return formatTable([['SERVICE', 'ADDRESS', 'AFFINITY', 'BACKENDS'], ...rows]);
}

/** Lists services and backends as programmed in the maps. Returns the exit code. */
export async function servicesList(opts: ServicesOptions = {}): Promise<number> {
  const out = opts.out ?? stdout;
  const pinRoot = opts.pinRoot ?? DEFAULTS.pinRoot;
  let list: ProgrammedServiceView[] | null;
  try {
    list = readProgrammed(pinRoot);
  } catch (e) {
    (opts.err ?? stderr)(`patu services: ${messageOf(e)}\n`);
    return 2;
  }
  if (opts.json) out(JSON.stringify({ pinRoot, programmed: list !== null, services: list ?? [] }, null, 2) + '\n');
  else if (list === null) out(`no services programmed (no maps under ${pinRoot})\n`);
  else if (list.length === 0) out('no services programmed\n');
  else out(formatServicesTable(list));
  return 0;
}
