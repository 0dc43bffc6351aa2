// `patu status`: what patu manages on this node, read from the kernel and from
// patu's own state (not from intent): eBPF programs and maps named patu_*, pins
// under the pin root, and every pod address with its host veth.
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { listMaps, patuPrograms } from '../kernel/bpf/introspect.js';
import { listPins } from '../kernel/bpf/pins.js';
import { IpamStore } from '../ipam/store.js';
import { HOSTPORT_DIR, HostPortStore, type HostPortRecord } from '../hostport/records.js';
import { Rtnl } from '../kernel/netlink/rtnl.js';
import { hostVethName } from '../dataplane/names.js';
import { Accel, type AccelStatus } from '../dataplane/accel.js';
import { readLbSettings, readProgrammed, type ProgrammedServiceView } from '../dataplane/service-lb.js';
import { readNodePortTc, type NodePortTcStatus } from '../dataplane/nodeport-tc.js';
import { PolicyDataplane } from '../dataplane/policy-tc.js';
import { podCounters, readPolicyNames } from '../policy/view.js';
import { formatPolicyStatus, type PolicyStatus } from './policy-status.js';
import { formatServicesTable } from './services.js';
import { formatTable } from './table.js';
import { openPodNetApplier } from '../podnet/apply.js';
import { listSandboxes } from '../podnet/sandboxes.js';
import { PODNET_POOL_DIR } from '../podnet/names.js';

export interface StatusOptions {
  json?: boolean;
  pinRoot: string;
  dataDir: string;
  bridge: string;
}

export interface PodStatus {
  network: string;
  ip: string;
  containerId: string;
  ifname: string;
  hostVeth: string;
  /** Whether the host veth exists and is up: false means the pod's link is gone (GC will tidy). */
  linkUp: boolean;
}

/** One extra interface of a pod (PodNetworkConfig), read from the pod's netns. */
export interface PodNetInterfaceStatus {
  /** namespace/name. */
  pod: string;
  containerId: string;
  ifname: string;
  network: string;
  address: string;
  mtu: number;
  /** namespace/name of the PodNetworkConfig that asked for it. */
  config: string;
  /** Its host-side veth exists and is up (the pod end is there: it was just read). */
  ready: boolean;
}

export interface NodeStatus {
  accel: AccelStatus;
  services: ProgrammedServiceView[] | null;
  bridge: { name: string; present: boolean; up: boolean; addresses: string[] };
  programs: { id: number; name: string; type: string }[];
  maps: { id: number; name: string; type: string; maxEntries: number }[];
  pins: string[];
  pods: PodStatus[];
  /** The service CIDR the programs refuse unanswered addresses in, and the addresses NodePorts answer on (null: not set up). */
  serviceSettings: { serviceCidr: string | null; nodeAddresses: string[] } | null;
  /** hostPort records (what the CNI plugin granted; the agent programs them as services named patu:hostport/...). */
  hostPorts: HostPortRecord[];
  /** The tc path for packets from outside (--nodeport-devices): its pinned links and counters (null: never set up). */
  nodePortTc: NodePortTcStatus | null;
  /** NetworkPolicy enforcement: what the maps hold and the per-pod counters of patu_pol_stats (null: not set up). */
  policy: PolicyStatus | null;
  /** Pods' extra interfaces (second networks), from each pod's netns. */
  podNetworks: PodNetInterfaceStatus[];
}

/**
 * Every extra interface of this node's pods: the sandboxes the primary networks' IPAM
 * records name, each netns read (links marked as patu's). Empty when the feature was
 * never used here (no pool directory): no netns is entered then.
 */
export function collectPodNetworks(dataDir: string, links: ReadonlyMap<string, { up: boolean }>): PodNetInterfaceStatus[] {
  if (!existsSync(join(dataDir, PODNET_POOL_DIR))) return [];
  const out: PodNetInterfaceStatus[] = [];
  const applier = openPodNetApplier({ dataDir });
  try {
    for (const network of readdirSync(dataDir).sort()) {
      if (network === HOSTPORT_DIR || network === PODNET_POOL_DIR || !statSync(join(dataDir, network)).isDirectory()) continue;
      for (const sb of listSandboxes(dataDir, network)) {
        for (const a of applier.list(sb)) {
          out.push({
            pod: `${sb.pod.namespace}/${sb.pod.name}`, containerId: sb.containerId, ifname: a.ifname, network: a.network,
            address: a.address, mtu: a.mtu, config: `${a.config.namespace}/${a.config.name}`, ready: links.get(a.hostIfname)?.up ?? false,
          });
        }
      }
    }
  } finally {
    applier.close();
  }
  return out.sort((x, y) => x.pod.localeCompare(y.pod) || x.ifname.localeCompare(y.ifname));
}

/** The policy maps under pinRoot, read back (never loads anything), or null when policy was never set up here. */
export function collectPolicyStatus(pinRoot: string): PolicyStatus | null {
  const dp = PolicyDataplane.openExisting(pinRoot);
  if (!dp) return null;
  try {
    const c = dp.read();
    return {
      endpoints: c.endpoints.length,
      isolatedIngress: c.endpoints.filter((e) => e.isolatedIngress).length,
      isolatedEgress: c.endpoints.filter((e) => e.isolatedEgress).length,
      rules: c.rules.length,
      monitor: dp.monitor().on,
      pods: podCounters(dp.stats(), readPolicyNames(pinRoot)),
    };
  } finally {
    dp.close();
  }
}

export function collectStatus(opts: StatusOptions): NodeStatus {
  const rtnl = Rtnl.open();
  try {
    const all = rtnl.listLinks();
    const links = new Map(all.map((l) => [l.name, l]));
    const byIndex = new Map(all.map((l) => [l.index, l.name]));
    const br = links.get(opts.bridge);
    const pods: PodStatus[] = [];
    if (existsSync(opts.dataDir)) {
      for (const network of readdirSync(opts.dataDir).sort()) {
        if (network === HOSTPORT_DIR || !statSync(join(opts.dataDir, network)).isDirectory()) continue;
        for (const r of IpamStore.open(opts.dataDir, network).list()) {
          const hostVeth = hostVethName(r.containerId, r.ifname);
          pods.push({ network, ...r, hostVeth, linkUp: links.get(hostVeth)?.up ?? false });
        }
      }
    }
    return {
      accel: Accel.open({ pinRoot: opts.pinRoot }).status(),
      services: readProgrammed(opts.pinRoot),
      serviceSettings: readLbSettings(opts.pinRoot),
      bridge: {
        name: opts.bridge,
        present: br !== undefined,
        up: br?.up ?? false,
        addresses: br ? rtnl.listAddresses(br.index).map((a) => `${a.address}/${a.prefixLen}`) : [],
      },
      programs: patuPrograms().map((p) => ({ id: p.id, name: p.name, type: p.type })),
      maps: listMaps()
        .filter((m) => m.name.startsWith('patu_'))
        .map((m) => ({ id: m.id, name: m.name, type: m.type, maxEntries: m.maxEntries })),
      pins: listPins(opts.pinRoot),
      pods,
      hostPorts: HostPortStore.open(opts.dataDir, { create: false }).list(),
      nodePortTc: readNodePortTc(opts.pinRoot, (i) => byIndex.get(i)),
      policy: collectPolicyStatus(opts.pinRoot),
      podNetworks: collectPodNetworks(opts.dataDir, links),
    };
  } finally {
    rtnl.close();
  }
}


export function formatStatus(s: NodeStatus): string {
  const out: string[] = [];
  const br = s.bridge;
  out.push(
    `Bridge ${br.name}: ${br.present ? `${br.up ? 'up' : 'DOWN'} ${br.addresses.join(' ')}` : 'not created yet (the first pod ADD creates it)'}\n`,
  );
  out.push(`\neBPF programs (${s.programs.length}):\n`);
  out.push(s.programs.length ? formatTable([['ID', 'NAME', 'TYPE'], ...s.programs.map((p) => [String(p.id), p.name, p.type])]) : '  none loaded\n');
  out.push(`\neBPF maps (${s.maps.length}):\n`);
  out.push(s.maps.length ? formatTable([['ID', 'NAME', 'TYPE', 'MAX'], ...s.maps.map((m) => [String(m.id), m.name, m.type, String(m.maxEntries)])]) : '  none\n');
  out.push(`\nPins (${s.pins.length}):\n`);
  out.push(s.pins.length ? s.pins.map((p) => `  ${p}\n`).join('') : '  none\n');
  const a = s.accel;
  out.push(`\nSocket acceleration: ${!a.setUp ? 'not set up (patu accel on)' : a.enabled ? 'on' : 'off'}` +
    (a.setUp ? `, ${a.attached ? 'attached' : 'detached'}, ${a.sockets} sockets redirected, ${a.pods.filter((p) => !p.optOut).length} pods accelerated, ${a.pods.filter((p) => p.optOut).length} opted out` : '') + '\n');
  out.push(`\nServices: ${s.services === null ? 'none programmed' : `${s.services.length}`}\n`);
  if (s.services?.length) out.push(formatServicesTable(s.services));
  const ss = s.serviceSettings;
  if (ss) {
    out.push(`Service CIDR: ${ss.serviceCidr ?? 'none'}${ss.serviceCidr ? ' (addresses in it that no service answers are refused)' : ''}\n`);
    out.push(`NodePorts answer on: ${ss.nodeAddresses.length ? ss.nodeAddresses.join(' ') : 'no address yet'}\n`);
  }
  const np = s.nodePortTc;
  if (np) {
    const byDev = new Map<string, string[]>();
    for (const l of np.links) {
      const dev = l.device ?? `ifindex ${l.ifindex} (gone)`;
      byDev.set(dev, [...(byDev.get(dev) ?? []), l.direction]);
    }
    out.push(`From outside (tc): ${byDev.size ? [...byDev].map(([d, dirs]) => `${d} (${dirs.sort().join('+')})`).join(' ') : 'attached nowhere'}` +
      (np.stats ? `; ${np.stats.newFlows} flows, ${np.stats.replies} replies translated, ${np.stats.noBackend} no-backend drops, ` +
        `${np.stats.serviceCidrDroppedIn + np.stats.serviceCidrDroppedOut} service-CIDR drops` : '') + '\n');
  }
  out.push(formatPolicyStatus(s.policy));
  out.push(`\nPods (${s.pods.length}):\n`);
  out.push(
    s.pods.length
      ? formatTable([
          ['NETWORK', 'IP', 'CONTAINER', 'IFNAME', 'HOST VETH', 'LINK', 'ACCEL'],
          ...s.pods.map((p) => {
            const reg = a.pods.find((r) => r.ip === p.ip);
            return [p.network, p.ip, p.containerId.slice(0, 16), p.ifname, p.hostVeth, p.linkUp ? 'up' : 'missing', !reg ? '-' : reg.optOut ? 'opted out' : 'yes'];
          }),
        ])
      : '  none\n',
  );
  out.push(`\nPod extra interfaces (${s.podNetworks.length}):\n`);
  out.push(
    s.podNetworks.length
      ? formatTable([
          ['POD', 'IFNAME', 'NETWORK', 'ADDRESS', 'MTU', 'CONFIG', 'READY'],
          ...s.podNetworks.map((p) => [p.pod, p.ifname, p.network, p.address, String(p.mtu), p.config, p.ready ? 'yes' : 'no (host side down)']),
        ])
      : '  none\n',
  );
  out.push(`\nhostPorts (${s.hostPorts.length}):\n`);
  out.push(
    s.hostPorts.length
      ? formatTable([
          ['PROTO', 'HOST IP', 'HOST PORT', 'POD', 'CONTAINER', 'NETWORK'],
          ...s.hostPorts.map((h) => [h.protocol.toUpperCase(), h.hostIP || '*', String(h.hostPort), `${h.podIp}:${h.containerPort}`, h.containerId.slice(0, 16), h.network]),
        ])
      : '  none\n',
  );
  return out.join('');
}

export async function statusCommand(opts: StatusOptions): Promise<void> {
  const status = collectStatus(opts);
  process.stdout.write(opts.json ? JSON.stringify(status, (_k, v) => (typeof v === 'bigint' ? String(v) : v), 2) + '\n' : formatStatus(status));
}
