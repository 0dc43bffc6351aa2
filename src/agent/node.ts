// The node-local data-plane parts: what the privileged process of a node opens, whoever
// tells it what to program. The agent (the default single process) opens them and feeds
// them from its own sources (services file, policy file, Kubernetes); the manager (`patu
// manager`, split mode) opens the same parts and feeds them from the data-plane API
// (src/dataplane/local.ts). Each piece is opened here once, in the order the agent has
// always used: the cgroup2 attach point, socket acceleration, the one ServiceLb with its
// hostPorts partition, then (once the caller's service source has opened the maps) the
// nodeport tc path and the hostPorts watch; the CNI socket last.
//
// Everything is loaded on demand (dynamic imports): a flag that is off costs no code.
// Closing releases fds only: pinned programs, maps and links stay and keep working.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { DEFAULTS } from '../defaults.js';
import { messageOf } from '../errors.js';
import { describeUdpDestroy } from '../dataplane/udp-destroy-report.js';
import { clip, type CniRequest } from './cni-wire.js';
import type { Log } from './log.js';
import type { CniServer, RequestOutcome } from './cni-server.js';
import type { Accel } from '../dataplane/accel.js';
import type { ServiceLb, ServiceSinkLike } from '../dataplane/service-lb.js';
import type { AgentMetrics } from '../k8s/metrics.js';

export type Closer = () => void | Promise<void>;

export interface NodePartsOptions {
  log: Log;
  /** 'agent' or 'manager': names the process in errors. */
  who: string;
  pinRoot: string;
  /** --cgroup: the cgroup2 directory the cgroup programs attach to (default: the hierarchy's root, discovered). */
  cgroup?: string;
  /** --cgroup-fs: look for the hierarchy's root only at or below this directory. */
  cgroupFs?: string;
  /** Mount bpffs when missing (undefined: the layers' default). */
  mountBpffs?: boolean;
  /** Switch socket acceleration on at start (Accel.enable). */
  accel: boolean;
  /** Open the one ServiceLb of the node (the only writer of the service maps). */
  services: boolean;
  /** Register the hostPorts partition on it (before the main source's first resync, which would otherwise remove their entries). */
  hostPorts: boolean;
}

/** What openNodeParts opened; the start* functions below add to it. */
export interface NodeParts {
  readonly pinRoot: string;
  /** The cgroup2 attach point ('' when nothing needed one). */
  readonly cgroup: string;
  /** Spread into the layers' options: { mountBpffs } when the caller set it. */
  readonly bpffs: { mountBpffs?: boolean };
  /** Opened when `accel` was asked for (enabled then); Accel.open is cheap, the manager opens its own on demand. */
  readonly accel?: Accel;
  readonly lb?: ServiceLb;
  /** The hostPorts partition of lb. */
  readonly hostPortSink?: ServiceSinkLike;
  /** What the parts need closed, in order; lb last, so every source stops writing first. */
  closers(): Closer[];
}

interface MutableParts extends NodeParts {
  pokeHostPorts: () => void;
  readonly list: Closer[];
}

/**
 * Resolves the cgroup2 attach point (when acceleration, services or hostPorts need it),
 * switches acceleration on, opens the ServiceLb and its hostPorts partition. Serving CNI
 * alone needs no cgroup, so a host without cgroup2 can still do that.
 */
export async function openNodeParts(o: NodePartsOptions): Promise<NodeParts> {
  const { log } = o;
  const bpffs = o.mountBpffs === undefined ? {} : { mountBpffs: o.mountBpffs };
  // Found once, here at the top: the layers below take the directory as a parameter.
  let cgroup = '';
  if (o.accel || o.services || o.hostPorts) {
    const { resolveCgroup } = await import('../kernel/cgroup.js');
    try {
      cgroup = resolveCgroup({ cgroup: o.cgroup, under: o.cgroupFs });
    } catch (e) {
      throw new Error(`${o.who}: ${messageOf(e)} (--cgroup names the directory explicitly; --cgroup-fs where to look)`, { cause: e });
    }
    log.info({ cgroup, ...(o.cgroup ? {} : { discovered: true }) }, 'cgroup2 attach point');
  }

  let accel: Accel | undefined;
  if (o.accel) {
    const { Accel } = await import('../dataplane/accel.js');
    accel = Accel.open({ pinRoot: o.pinRoot, cgroupPath: cgroup, ...bpffs, log: (msg) => log.info({ cgroup }, msg) });
    accel.enable();
    const st = accel.status();
    log.info({ cgroup, pods: st.pods.length, sockets: st.sockets }, 'socket acceleration on');
  }

  const list: Closer[] = [];
  const parts: MutableParts = {
    pinRoot: o.pinRoot,
    cgroup,
    bpffs,
    ...(accel ? { accel } : {}),
    pokeHostPorts: () => {},
    list,
    // lb closes after everything the start* functions added.
    closers: () => [...list, ...(parts.lb ? [() => parts.lb!.close()] : [])],
  };

  // One ServiceLb for every source of service map entries (this process is their only
  // writer): the services file, Kubernetes or the API, and hostPorts in their own
  // partition, registered before the main source's first resync so that resync leaves them alone.
  if (o.services || o.hostPorts) {
    const { ServiceLb } = await import('../dataplane/service-lb.js');
    const { isHostPortRef } = await import('../hostport/desired.js');
    const lb = ServiceLb.open({ pinRoot: o.pinRoot, cgroupPath: cgroup, ...bpffs });
    for (const repair of lb.repairs) log.warn({ pinRoot: o.pinRoot, repair }, 'service map pins repaired');
    Object.assign(parts, { lb });
    // After a service apply the hostPorts resync: a port a service let go is served at once.
    if (o.hostPorts) Object.assign(parts, { hostPortSink: lb.partition(isHostPortRef, () => parts.pokeHostPorts()) });
  }
  return parts;
}

const mutable = (p: NodeParts): MutableParts => p as MutableParts;

/**
 * The nodeport tc path on these uplinks; none: off, and links an earlier run pinned are
 * detached (they would go on translating without anyone to follow the uplinks). Call it
 * after the service source opened the maps (ServiceLb.open repairs their pins first); the
 * tc programs only read them. A bad device list throws before anything is loaded.
 */
export async function startNodePortTc(parts: NodeParts, o: { log: Log; devices: string[] | undefined; hasServiceSource: boolean }): Promise<void> {
  const { log } = o;
  const devices0 = (o.devices ?? []).map((d) => d.trim()).filter((d) => d !== '');
  if (devices0.length === 0) {
    if (existsSync(join(parts.pinRoot, 'links', 'nodeport'))) {
      const { detachNodePortLinks } = await import('../dataplane/nodeport-tc.js');
      const removed = detachNodePortLinks(parts.pinRoot);
      if (removed.length) log.info({ links: removed }, 'nodeport tc path off: links of an earlier run detached');
    }
    return;
  }
  const { NodePortTc, parseDevices } = await import('../dataplane/nodeport-tc.js');
  const devices = parseDevices(devices0, '--nodeport-devices');
  if (!o.hasServiceSource && !parts.hostPortSink) log.warn({ devices }, 'nodeport tc path without a service source (--services-file or --kubernetes) or hostPorts: nothing will be translated');
  const np = NodePortTc.open({
    pinRoot: parts.pinRoot, devices, ...parts.bpffs,
    log: (msg, fields) => log.info(fields, msg),
  });
  np.watch({
    pollMs: DEFAULTS.nodeportLinkPollMs,
    resyncMs: DEFAULTS.nodeportResyncMs,
    onError: (err) => log.error({ err: messageOf(err) }, 'nodeport tc: attaching to the uplinks failed; retried on the next link change or resync'),
  });
  log.info({ devices, attached: np.attachedDevices() }, 'nodeport tc path on');
  // Closing releases fds only: the pinned links keep translating while the process is away.
  mutable(parts).list.push(() => np.close());
}

export interface NodeAddressesHandle {
  /** The node's addresses as last written to patu_node_addr (sorted; lo included). */
  addresses(): string[];
}

/**
 * Keeps patu_node_addr (where NodePorts and hostPorts without a hostIP answer) equal to the
 * node's addresses. `onChange` sees every change (the manager also hands them to policy).
 */
export async function startNodeAddresses(parts: NodeParts, o: { log: Log; what: string; netns?: string; onChange?: (addresses: string[]) => void }): Promise<NodeAddressesHandle> {
  if (!parts.lb) throw new Error('startNodeAddresses: no ServiceLb opened (services or hostPorts)');
  const lb = parts.lb;
  const { NodeAddressTracker } = await import('../dataplane/node-addrs.js');
  let current: string[] = [];
  const tracker = new NodeAddressTracker({
    sink: {
      configure: (c) => lb.configure(c),
      setNodeAddresses: (addrs) => {
        const r = lb.setNodeAddresses(addrs);
        const now = [...addrs.keys()].sort();
        const changed = now.join() !== current.join();
        current = now;
        if (changed) o.onChange?.(now);
        return r;
      },
    },
    ...(o.netns ? { netns: o.netns } : {}),
    pollMs: DEFAULTS.nodeAddrPollMs,
    onChange: (c) => o.log.info(c, `node addresses changed (${o.what} answer on these)`),
    onError: (e) => o.log.error({ err: messageOf(e) }, 'reading node addresses failed; retrying'),
  });
  mutable(parts).list.push(() => tracker.close());
  return { addresses: () => current };
}

/** Serves pod hostPorts from the records under <dataDir>/_hostports (the hostPorts partition must be open). */
export async function startHostPorts(parts: NodeParts, o: { log: Log; dataDir?: string; resyncMs?: number; metrics?: AgentMetrics }): Promise<void> {
  const sink = parts.hostPortSink;
  if (!sink) throw new Error('startHostPorts: the hostPorts partition is not open');
  const { log, metrics } = o;
  const { hostPortsWatch } = await import('./hostports-watch.js');
  const dataDir = o.dataDir ?? DEFAULTS.dataDir;
  let last = -1;
  const hp = hostPortsWatch({
    dataDir,
    sink,
    ...(o.resyncMs !== undefined ? { resyncMs: o.resyncMs } : {}),
    onApplied: (stats, records) => {
      metrics?.hostPortsProgrammed.set(records);
      if (stats.ops > 0 || records !== last) log.info({ records, mapOps: stats.ops, ms: Math.round(stats.ms * 100) / 100 }, 'hostPorts programmed');
      if (stats.attachedNow) log.info({ cgroup: parts.cgroup }, 'service programs attached');
      const d = stats.udpDestroy && describeUdpDestroy(stats.udpDestroy);
      if (d) log[d.level](d.fields, d.msg);
      if (stats.udpDestroy) metrics?.udpSocketsDestroyed.inc(stats.udpDestroy.sockets);
      last = records;
    },
    onConflict: (c) => {
      metrics?.hostPortConflicts.inc({ kind: c.kind });
      if (c.kind === 'service') log.error({ record: c.record, entry: c.key, heldBy: c.heldBy }, 'hostPort not served: a service holds the same address, port and protocol');
      else log.error({ record: c.record, kept: c.keptName }, 'hostPort not served: another record claims the same port (written around the CNI plugin?)');
    },
    onBadRecord: (name, problem) => log.warn({ dir: `${dataDir}/_hostports`, file: name, problem }, 'ignoring a file that is not a hostPort record'),
    onError: (e) => log.error({ err: e.message }, 'hostPorts: programming failed; retried at the next change or resync'),
  });
  const m = mutable(parts);
  m.pokeHostPorts = () => hp.poke();
  log.info({ dir: `${dataDir}/_hostports` }, 'serving hostPorts');
  m.list.push(() => {
    m.pokeHostPorts = () => {};
    hp.close();
  });
}

export interface CniServingOptions {
  log: Log;
  socketPath: string;
  requestTimeoutMs?: number;
  metrics?: AgentMetrics;
  /**
   * On the main thread, for a request that succeeded, before its answer goes out (the
   * policy engine learns a new pod's address here). Must not throw.
   */
  beforeAnswer?: (req: CniRequest, stdout: string) => void | Promise<void>;
}

/** The CNI socket bin/patu forwards to (src/agent/cni-server.ts), with the request log and metrics. */
export async function startCniServing(o: CniServingOptions): Promise<CniServer> {
  const { log, metrics } = o;
  const { startCniServer } = await import('./cni-server.js');
  const before = o.beforeAnswer;
  const cni = await startCniServer({
    socketPath: o.socketPath,
    ...(o.requestTimeoutMs !== undefined ? { requestTimeoutMs: o.requestTimeoutMs } : {}),
    onProblem: (what, err) => log.error({ err: clip(messageOf(err), 1024) }, what),
    ...(before ? { beforeAnswer: (req: CniRequest, outcome: { stdout: string }) => before(req, outcome.stdout) } : {}),
    onRequest: (req: CniRequest, outcome: RequestOutcome, millis: number) => {
      const result = outcome.dropped ? 'dropped' : outcome.timedOut ? 'timeout' : outcome.deferred ? 'deferred' : outcome.exitCode === 0 ? 'ok' : 'error';
      metrics?.cniRequests.inc({ command: clip(req.env.CNI_COMMAND, 16) ?? 'unknown', result });
      // Every string here comes from the client: clipped, so a log line stays a line.
      log.info(
        {
          command: clip(req.env.CNI_COMMAND, 16),
          containerId: clip(req.env.CNI_CONTAINERID, 128),
          ifname: clip(req.env.CNI_IFNAME, 32),
          exitCode: outcome.exitCode,
          ...(outcome.deferred ? { deferred: 'IPAM lock busy: handed back to bin/patu' } : {}),
          ...(outcome.dropped ? { dropped: outcome.dropped } : {}),
          ...(outcome.timedOut ? { timedOut: true } : {}),
          ms: Math.round(millis * 100) / 100,
          ...(outcome.exitCode > 0 ? { error: clip(outcome.stdout.trim(), 2048) } : {}),
          ...(outcome.warnings ? { warnings: outcome.warnings.map((w) => clip(w, 1024)) } : {}),
        },
        'cni request',
      );
      // The CNI answer carries no stack; this is where to find it (cause chain included).
      if (outcome.error) log.debug({ command: req.env.CNI_COMMAND, containerId: req.env.CNI_CONTAINERID, err: outcome.error }, 'cni request failed');
    },
  });
  log.info({ socket: o.socketPath }, 'serving CNI requests');
  return cni;
}

/**
 * Waits for SIGTERM or SIGINT, then closes the CNI socket (bin/patu falls back to running
 * the plugin itself) and everything else; pinned eBPF state stays in place. Exits at once
 * when CNI worker threads are stuck in system calls (Node's exit would wait for them).
 */
export async function serveUntilSignal(o: { log: Log; cni: CniServer; closers: Closer[] }): Promise<void> {
  const { log, cni } = o;
  await new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      log.info({ signal }, 'shutting down (pinned eBPF state stays in place)');
      // Closing the socket makes bin/patu fall back to running the plugin itself.
      const closed = cni.close();
      Promise.allSettled([...o.closers.map(async (close) => close()), closed]).then(() => resolve());
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
  const stuck = cni.stuckThreads();
  if (stuck > 0) {
    // Node's exit would wait for these threads forever (blocked in system calls).
    log.warn({ threads: stuck }, 'exiting with CNI worker threads stuck in system calls');
    log.flush?.();
    const { exitNow } = await import('../kernel/ffi/libc.js');
    exitNow(0);
  }
}

/** What the CNI hook tells a policy engine (src/policy/engine.ts PolicyEngine has both). */
export interface PodAddressTarget {
  podAddressKnown(namespace: string, name: string, ips: string[]): { changed: number; ms: number } | false;
  podAddressGone(namespace: string, name: string): { changed: number; ms: number } | false;
}

/**
 * The beforeAnswer hook that tells a policy engine a pod's address from its CNI ADD (and
 * forgets it on DEL): a pod the state names without an address (the policy file; or a
 * source lagging behind the ADD) is enforced before the runtime hears of the address.
 * K8S_POD_NAMESPACE/NAME come from CNI_ARGS (src/agent/cni-pod.ts).
 */
export async function policyCniHook(target: () => PodAddressTarget | undefined, log: Log): Promise<(req: CniRequest, stdout: string) => void> {
  const { cniPodOf } = await import('./cni-pod.js');
  return (req, stdout) => {
    const engine = target();
    if (!engine) return;
    const pod = cniPodOf(req.env, stdout);
    if (!pod) return;
    const r = pod.command === 'DEL' ? engine.podAddressGone(pod.namespace, pod.name) : engine.podAddressKnown(pod.namespace, pod.name, pod.ips);
    if (r) log.info({ pod: `${pod.namespace}/${pod.name}`, command: pod.command, ips: pod.ips, mapChanges: r.changed, ms: r.ms }, 'network policy: pod address from CNI');
  };
}
