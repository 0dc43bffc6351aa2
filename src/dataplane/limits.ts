// What the manager accepts from a client of the data-plane API (the threat model,
// docs/manager.md): the agent parses the apiserver's input, so a compromised agent is
// assumed, and every request is checked here before anything is written. A refusal is
// DataplaneError('invalid') with a message naming the field, as `ports[3].vip 8.8.8.8 is
// outside the service CIDRs 10.96.0.0/12`; nothing of a refused request is applied.
//
// One exception, for availability: a service whose addresses break the range rules below
// (VIP, NodePort range, backends, backends per port) is refused alone: checkServiceChange
// returns it, the data plane leaves that service out whole (never half) and reports it,
// and programs the rest. Those values come from cluster users (a Service's externalIPs, a
// hand-written EndpointSlice), so refusing the whole push would let any user who may create
// a Service stop every service update on the node. Malformed requests (what the agent's own
// model never produces) and the request-wide bounds still refuse the whole request.
//
// The rules, and why:
//   - Service VIPs: inside the service CIDR(s) the manager was started with; or 0.0.0.0, the
//     NodePort wildcard (every node address), and then only on a port inside the NodePort
//     range (default 30000-32767, kube-apiserver's): a wildcard entry on port 22 or 10250
//     would capture every pod's and the node's own connections to the node's sshd or
//     kubelet. externalIPs and LoadBalancer IPs (the model's other VIPs: src/services/model.ts)
//     are refused unless inside --external-cidr: an entry for any address captures every
//     connection to it from this node (CVE-2020-8554's hijack), so the operator names the
//     ranges that may be claimed. Node addresses are not VIPs (the wildcard covers them).
//   - Backends: inside the cluster CIDR(s), or one of the node's own addresses (host-network
//     endpoints; loopback never), or --backend-cidr (the node network, for host-network
//     endpoints on other nodes and the apiserver behind `kubernetes`).
//   - refs: never a hostPort's (patu:hostport/...: the manager's own partition).
//   - Pod flags, podCidr, local policy pods: inside the cluster CIDR(s). serviceCidr and
//     clusterCidr settings: inside the manager's own (a client narrows them, never widens).
//   - CNI over the API: netns under --netns-dirs (default /run/netns and /var/run/netns;
//     resolved, so a symlink cannot lead out; /proc/<pid>/ns/net is not accepted: it would
//     let a client make links in any process's namespace, the host's own at /proc/1/ns/net);
//     the config may not point the plugin at other state (bridge, pinRoot, ipam.dataDir must
//     be the manager's), its subnets inside the cluster CIDR(s), and no portMappings (hostPorts
//     come from the runtime, through the CNI socket, not from the agent).
//   - Sizes and counts: bounded (ServiceLimits below; the service maps' own capacity is
//     checked by ServiceLb, which refuses before writing).
// The CNI socket itself (the runtime through bin/patu) is not checked here: the runtime is
// root on the node and trusted, as in the default mode.
import { realpathSync } from 'node:fs';
import { posix } from 'node:path';
import { DEFAULTS } from '../defaults.js';
import { contains, isIPv4, parseCidr, type Cidr } from '../net/cidr.js';
import { messageOf } from '../errors.js';
import { isHostPortRef } from '../hostport/desired.js';
import { portKey, type DesiredServicePort } from '../services/model.js';
import type { PolicyState } from '../policy/types.js';
import { DataplaneError, type CniCall, type NodeSettings, type PodFlagsUpdate, type RefusedService, type ServiceChange } from './api.js';

export interface ManagerLimits {
  /** --service-cidr: every ClusterIP VIP lies in one of these. */
  serviceCidrs: string[];
  /** --cluster-cidr: pod addresses (backends, pod flags, pod subnets). */
  clusterCidrs: string[];
  /** --external-cidr: externalIPs / LoadBalancer IPs that may be VIPs (default none). */
  externalCidrs: string[];
  /** --backend-cidr: backends outside the cluster CIDRs that are allowed (host-network endpoints of other nodes). */
  backendCidrs: string[];
  /** The node's addresses now (the manager's NodeAddressTracker): host-network backends. */
  nodeAddresses(): string[];
  /** Where CNI netns paths may lie (resolved: symlinks followed). */
  netnsDirs: string[];
  /** Ports a wildcard (0.0.0.0, NodePort) entry may use, inclusive. */
  nodePortRange: [number, number];
  /** The plugin config the manager runs with: CNI calls over the API may not point elsewhere. */
  bridge: string;
  pinRoot: string;
  dataDir: string;
  maxServicePorts: number;
  maxBackendsPerPort: number;
  maxBackends: number;
  maxPolicyObjects: number;
  maxPolicyPods: number;
  maxPodFlags: number;
  /** Any one string (refs, names, labels, session ids). */
  maxString: number;
}

export const DEFAULT_NETNS_DIRS = ['/run/netns', '/var/run/netns'] as const;


/** Limits with patu's defaults; the manager's flags override them. */
export function defaultLimits(o: Partial<ManagerLimits> = {}): ManagerLimits {
  return {
    serviceCidrs: [DEFAULTS.serviceCIDR],
    clusterCidrs: [DEFAULTS.clusterCIDR],
    externalCidrs: [],
    backendCidrs: [],
    nodeAddresses: () => [],
    netnsDirs: [...DEFAULT_NETNS_DIRS],
    nodePortRange: [30000, 32767],
    bridge: DEFAULTS.bridge,
    pinRoot: DEFAULTS.pinRoot,
    dataDir: DEFAULTS.dataDir,
    // The service maps hold 65,536 ports and 262,144 backends (bpf/sock_lb.h).
    maxServicePorts: 65536,
    maxBackendsPerPort: 16384,
    maxBackends: 262144,
    // A large cluster's whole policy state (every pod of the cluster is a possible peer); the
    // 16 MiB message limit of the API binds before these do.
    maxPolicyObjects: 50000,
    maxPolicyPods: 200000,
    maxPodFlags: 65536,
    maxString: 1024,
    ...o,
  };
}

/** `ip:port` of a backend, or undefined when it is not IPv4:port with a port of 1-65535. */
function backendOf(b: unknown): { ip: string; port: number } | undefined {
  const m = typeof b === 'string' ? /^(\d{1,3}(?:\.\d{1,3}){3}):(\d{1,5})$/.exec(b) : null;
  const ip = m?.[1];
  const port = Number(m?.[2]);
  return m && isIPv4(ip) && port >= 1 && port <= 65535 ? { ip, port } : undefined;
}

const invalid = (msg: string, cause?: unknown): DataplaneError =>
  new DataplaneError('invalid', msg, cause === undefined ? undefined : { cause });

/** Parsed CIDR lists, checked once when the limits are built (a bad flag fails the manager's start). */
export class Limits {
  readonly service: Cidr[];
  readonly cluster: Cidr[];
  readonly external: Cidr[];
  readonly backend: Cidr[];

  constructor(readonly l: ManagerLimits) {
    const parse = (flag: string, list: string[]): Cidr[] => list.map((c) => {
      try {
        const p = parseCidr(c);
        if (p.family !== 4) throw new Error('must be IPv4 (patu is IPv4-only)');
        return p;
      } catch (e) {
        throw new Error(`${flag} ${c}: ${messageOf(e)}`, { cause: e });
      }
    });
    this.service = parse('--service-cidr', l.serviceCidrs);
    this.cluster = parse('--cluster-cidr', l.clusterCidrs);
    this.external = parse('--external-cidr', l.externalCidrs);
    this.backend = parse('--backend-cidr', l.backendCidrs);
    for (const d of l.netnsDirs) {
      if (!d.startsWith('/') || d.split('/').includes('..')) throw new Error(`--netns-dirs ${d}: must be an absolute path without '..'`);
    }
    const [lo, hi] = l.nodePortRange;
    if (!(Number.isInteger(lo) && Number.isInteger(hi) && lo >= 1 && hi <= 65535 && lo <= hi)) throw new Error(`--node-port-range ${lo}-${hi}: expected FROM-TO within 1-65535`);
  }

  // ---------------------------------------------------------------- services

  /**
   * Throws DataplaneError('invalid') naming the first field of a malformed or oversized
   * request; returns the services refused alone (see the header), one entry per ref.
   */
  checkServiceChange(c: ServiceChange): RefusedService[] {
    this.str('session', c.session, 128, true);
    if (typeof c.generation !== 'bigint' || c.generation < 0n) throw invalid(`generation ${String(c.generation)} must be a non-negative integer`);
    if (!Array.isArray(c.ports)) throw invalid('ports must be a list');
    if (!Array.isArray(c.refs)) throw invalid('refs must be a list');
    if (c.ports.length > this.l.maxServicePorts) throw invalid(`ports: ${c.ports.length} entries, at most ${this.l.maxServicePorts}`);
    if (c.refs.length > this.l.maxServicePorts) throw invalid(`refs: ${c.refs.length} entries, at most ${this.l.maxServicePorts}`);
    const refs = new Set<string>();
    c.refs.forEach((r, i) => {
      this.ref(`refs[${i}]`, r);
      refs.add(r);
    });
    // Two services wanting one entry is a conflict the data plane settles (one is left out);
    // one service naming an entry twice is malformed.
    const keys = new Map<string, string>();
    let backends = 0;
    const refused = new Map<string, RefusedService>();
    c.ports.forEach((p, i) => {
      this.checkServicePort(p, `ports[${i}]`);
      if (keys.get(p.key) === p.ref) throw invalid(`ports[${i}].key ${p.key} appears twice in ${p.ref}`);
      keys.set(p.key, p.ref);
      if (!c.full && !refs.has(p.ref)) throw invalid(`ports[${i}].ref ${p.ref} is not among the delta's refs`);
      backends += p.backends.length;
      if (refused.has(p.ref)) return;
      const reason = this.servicePortProblem(p, `ports[${i}]`);
      if (reason) refused.set(p.ref, { ref: p.ref, key: p.key, reason });
    });
    if (backends > this.l.maxBackends) throw invalid(`ports: ${backends} backends in all, at most ${this.l.maxBackends}`);
    return [...refused.values()];
  }

  /** The shape of one entry (what the agent's model always gets right): throws when malformed. */
  checkServicePort(p: DesiredServicePort, at: string): void {
    this.ref(`${at}.ref`, p.ref);
    this.str(`${at}.name`, p.name, this.l.maxString, false);
    if (!isIPv4(p.vip)) throw invalid(`${at}.vip ${JSON.stringify(String(p.vip).slice(0, 64))} is not an IPv4 address`);
    if (!Number.isInteger(p.port) || p.port < 1 || p.port > 65535) throw invalid(`${at}.port ${p.port} must be 1-65535`);
    if (p.protocol !== 'TCP' && p.protocol !== 'UDP') throw invalid(`${at}.protocol ${JSON.stringify(p.protocol)} must be TCP or UDP`);
    if (p.scope !== undefined && p.scope !== 'external-local') throw invalid(`${at}.scope ${JSON.stringify(p.scope)} is not a scope`);
    if (!Number.isInteger(p.affinityTimeoutSeconds) || p.affinityTimeoutSeconds < 0 || p.affinityTimeoutSeconds > 86400) {
      throw invalid(`${at}.affinityTimeoutSeconds ${p.affinityTimeoutSeconds} must be 0-86400`);
    }
    const key = portKey(p.vip, p.port, p.protocol, p.scope);
    if (p.key !== key) throw invalid(`${at}.key ${JSON.stringify(String(p.key).slice(0, 128))} does not match its fields (${key})`);
    if (!Array.isArray(p.backends)) throw invalid(`${at}.backends must be a list`);
    p.backends.forEach((b, j) => {
      if (!backendOf(b)) throw invalid(`${at}.backends[${j}] ${JSON.stringify(String(b).slice(0, 64))} must be IPv4:port`);
    });
  }

  /** Why a well-formed entry's addresses break the limits (the service is then refused alone), or undefined. */
  servicePortProblem(p: DesiredServicePort, at: string): string | undefined {
    const vip = this.vipProblem(p.vip, p.port, `${at}.vip`);
    if (vip) return vip;
    if (p.backends.length > this.l.maxBackendsPerPort) return `${at}.backends: ${p.backends.length} entries, at most ${this.l.maxBackendsPerPort}`;
    let node: Set<string> | undefined;
    for (const [j, b] of p.backends.entries()) {
      const ip = backendOf(b)!.ip;
      if (this.cluster.some((c) => contains(c, ip)) || this.backend.some((c) => contains(c, ip))) continue;
      node ??= new Set(this.l.nodeAddresses().filter((a) => !a.startsWith('127.')));
      if (node.has(ip)) continue;
      return `${at}.backends[${j}] ${ip} is outside the cluster CIDRs ${this.l.clusterCidrs.join(', ')}${this.l.backendCidrs.length ? ` and the backend CIDRs ${this.l.backendCidrs.join(', ')}` : ''} and is not a node address`;
    }
    return undefined;
  }

  /** The VIP rule (header). */
  vipProblem(vip: string, port: number, at: string): string | undefined {
    if (vip === '0.0.0.0') {
      const [lo, hi] = this.l.nodePortRange;
      if (port < lo || port > hi) return `${at} 0.0.0.0 (NodePort, every node address) on port ${port}: outside the NodePort range ${lo}-${hi}`;
      return undefined;
    }
    if (this.service.some((c) => contains(c, vip)) || this.external.some((c) => contains(c, vip))) return undefined;
    return `${at} ${vip} is outside the service CIDRs ${this.l.serviceCidrs.join(', ') || '(none)'}${this.l.externalCidrs.length ? ` and the external CIDRs ${this.l.externalCidrs.join(', ')}` : ' (externalIPs and LoadBalancer IPs need --external-cidr)'}`;
  }

  // ---------------------------------------------------------------- pods, node

  checkPodFlags(pods: PodFlagsUpdate[]): void {
    if (!Array.isArray(pods)) throw invalid('pods must be a list');
    if (pods.length > this.l.maxPodFlags) throw invalid(`pods: ${pods.length} entries, at most ${this.l.maxPodFlags}`);
    pods.forEach((p, i) => {
      if (typeof p.accelOptOut !== 'boolean') throw invalid(`pods[${i}].accelOptOut must be a boolean`);
      this.podIp(`pods[${i}].ip`, p.ip);
    });
  }

  checkNodeSettings(s: NodeSettings): void {
    const within = (field: string, v: string | undefined, list: Cidr[], flag: string, names: string[]): void => {
      if (v === undefined || v === '') return;
      const c = this.cidr(field, v);
      if (!list.some((o) => o.prefix <= c.prefix && contains(o, v.split('/')[0]!))) {
        throw invalid(`${field} ${v} is not inside the ${flag} ${names.join(', ') || '(none)'} the manager was started with`);
      }
    };
    within('podCidr', s.podCidr, this.cluster, 'cluster CIDRs', this.l.clusterCidrs);
    within('clusterCidr', s.clusterCidr, this.cluster, 'cluster CIDRs', this.l.clusterCidrs);
    within('serviceCidr', s.serviceCidr, this.service, 'service CIDRs', this.l.serviceCidrs);
    if (s.serviceCidrOff !== undefined && typeof s.serviceCidrOff !== 'boolean') throw invalid('serviceCidrOff must be a boolean');
    if (s.snatAddress !== undefined && s.snatAddress !== '') {
      // Masquerade is nft `masquerade` (the uplink's address, src/dataplane/masquerade.ts): there is no SNAT-to-address.
      throw invalid(`snatAddress ${JSON.stringify(s.snatAddress.slice(0, 64))}: this data plane masquerades to the uplink's own address and cannot SNAT to a chosen one; leave it empty`);
    }
  }

  // ---------------------------------------------------------------- policy

  checkPolicyState(st: PolicyState, session: string): void {
    this.str('session', session, 128, true);
    for (const [field, list] of [['state.namespaces', st.namespaces], ['state.pods', st.pods], ['state.policies', st.policies], ['state.nodeAddresses', st.nodeAddresses]] as const) {
      if (!Array.isArray(list)) throw invalid(`${field} must be a list`);
    }
    if (st.policies.length > this.l.maxPolicyObjects) throw invalid(`state.policies: ${st.policies.length} entries, at most ${this.l.maxPolicyObjects}`);
    if (st.namespaces.length > this.l.maxPolicyObjects) throw invalid(`state.namespaces: ${st.namespaces.length} entries, at most ${this.l.maxPolicyObjects}`);
    if (st.pods.length > this.l.maxPolicyPods) throw invalid(`state.pods: ${st.pods.length} entries, at most ${this.l.maxPolicyPods}`);
    if (st.nodeAddresses.length > 4096) throw invalid(`state.nodeAddresses: ${st.nodeAddresses.length} entries, at most 4096`);
    st.nodeAddresses.forEach((a, i) => {
      if (!isIPv4(a)) throw invalid(`state.nodeAddresses[${i}] ${JSON.stringify(String(a).slice(0, 64))} is not an IPv4 address`);
    });
    st.namespaces.forEach((n, i) => {
      this.str(`state.namespaces[${i}].name`, n.name, 253, true);
      this.labels(`state.namespaces[${i}].labels`, n.labels);
    });
    st.pods.forEach((p, i) => {
      const at = `state.pods[${i}]`;
      this.str(`${at}.namespace`, p.namespace, 253, true);
      this.str(`${at}.name`, p.name, 253, true);
      this.labels(`${at}.labels`, p.labels);
      if (!Array.isArray(p.ips) || p.ips.length > 16) throw invalid(`${at}.ips: at most 16 addresses`);
      if (!Array.isArray(p.ports) || p.ports.length > 1024) throw invalid(`${at}.ports: at most 1024 entries`);
      p.ips.forEach((ip, j) => {
        if (typeof ip !== 'string' || ip.length > 64) throw invalid(`${at}.ips[${j}] is not an address`);
        // Pods' IPv4 addresses are the cluster's; a host-network pod's are the node's.
        if (!p.hostNetwork && isIPv4(ip) && !this.cluster.some((c) => contains(c, ip))) {
          throw invalid(`${at}.ips[${j}] ${ip} is outside the cluster CIDRs ${this.l.clusterCidrs.join(', ')}`);
        }
      });
      p.ports.forEach((pp, j) => {
        if (pp.name !== undefined) this.str(`${at}.ports[${j}].name`, pp.name, 63, false);
        if (!Number.isInteger(pp.containerPort) || pp.containerPort < 0 || pp.containerPort > 65535) throw invalid(`${at}.ports[${j}].containerPort ${pp.containerPort} must be 0-65535`);
      });
    });
    st.policies.forEach((pol, i) => {
      const at = `state.policies[${i}]`;
      this.str(`${at}.namespace`, pol.metadata?.namespace, 253, true);
      this.str(`${at}.name`, pol.metadata?.name, 253, true);
      const rules = [...(pol.spec?.ingress ?? []).map((r) => ({ peers: r.from, ports: r.ports, dir: 'ingress' })), ...(pol.spec?.egress ?? []).map((r) => ({ peers: r.to, ports: r.ports, dir: 'egress' }))];
      if (rules.length > 1024) throw invalid(`${at}: ${rules.length} rules, at most 1024`);
      for (const [k, r] of rules.entries()) {
        if ((r.peers?.length ?? 0) > 1024 || (r.ports?.length ?? 0) > 1024) throw invalid(`${at}.${r.dir}[${k}]: at most 1024 peers and 1024 ports`);
        for (const [m, peer] of (r.peers ?? []).entries()) {
          if (!peer.ipBlock) continue;
          this.cidr(`${at}.${r.dir}[${k}].peers[${m}].ipBlock.cidr`, peer.ipBlock.cidr);
          if ((peer.ipBlock.except?.length ?? 0) > 1024) throw invalid(`${at}.${r.dir}[${k}].peers[${m}].ipBlock.except: at most 1024 entries`);
          peer.ipBlock.except?.forEach((e, n) => this.cidr(`${at}.${r.dir}[${k}].peers[${m}].ipBlock.except[${n}]`, e));
        }
      }
    });
  }

  // ---------------------------------------------------------------- CNI

  /**
   * Checks a CNI call over the API; returns the netns path resolved (what the plugin is given,
   * so a symlink swapped after the check cannot lead elsewhere).
   */
  checkCniCall(call: CniCall, realpath: (p: string) => string = realpathSync.native): string {
    const cmds = ['ADD', 'DEL', 'CHECK', 'STATUS'];
    if (!cmds.includes(call.command)) throw invalid(`command ${JSON.stringify(String(call.command).slice(0, 16))} must be one of ${cmds.join(', ')}`);
    // CNI: container ids are alphanumeric plus ._- ; interface names at most 15 bytes (IFNAMSIZ).
    if (call.command !== 'STATUS') {
      this.str('containerId', call.containerId, 256, true);
      if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(call.containerId)) throw invalid('containerId must hold only letters, digits, _ . -');
      this.str('ifname', call.ifname, 15, true);
      if (/[/\s:]/.test(call.ifname) || call.ifname === '.' || call.ifname === '..') throw invalid(`ifname ${JSON.stringify(call.ifname)} is not an interface name`);
    }
    this.str('args', call.args, 4096, false);
    this.str('path', call.path, 4096, false);
    if (!((call.config as unknown) instanceof Uint8Array)) throw invalid('config must be bytes');
    if (call.config.length > 1 << 20) throw invalid(`config: ${call.config.length} bytes, at most 1 MiB`);
    const needsNetns = call.command === 'ADD' || call.command === 'CHECK';
    const netns = call.netns === '' && !needsNetns ? '' : this.netns(call.netns, realpath);
    this.checkCniConfig(call.config);
    return netns;
  }

  /** The netns rule (header): absolute, no '..', and resolved (symlinks followed) under one of netnsDirs. */
  netns(p: string, realpath: (p: string) => string = realpathSync.native): string {
    this.str('netns', p, 4096, true);
    if (!p.startsWith('/') || p.split('/').includes('..') || p.includes('\0')) throw invalid(`netns ${JSON.stringify(p.slice(0, 256))} must be an absolute path without '..'`);
    const under = (dir: string, q: string): boolean => {
      const d = posix.normalize(dir).replace(/\/+$/, '');
      const n = posix.normalize(q);
      return n.startsWith(`${d}/`) && n.length > d.length + 1 && !n.slice(d.length + 1).includes('/');
    };
    const dirs = this.l.netnsDirs;
    const say = `--netns-dirs ${dirs.join(', ') || '(none)'}`;
    if (!dirs.some((d) => under(d, p))) throw invalid(`netns ${JSON.stringify(p.slice(0, 256))} is not directly under the netns directories (${say})`);
    let real: string;
    try {
      real = realpath(p);
    } catch (e) {
      throw invalid(`netns ${p}: ${messageOf(e)}`, e);
    }
    // The directories resolved too (/var/run is a symlink to /run on most hosts).
    const realDirs = dirs.map((d) => {
      try {
        return realpath(d);
      } catch {
        return d;
      }
    });
    if (!realDirs.some((d) => under(d, real))) throw invalid(`netns ${p} resolves to ${real}, outside the netns directories (${say})`);
    return real;
  }

  private checkCniConfig(bytes: Uint8Array): void {
    let conf: Record<string, unknown>;
    try {
      conf = JSON.parse(Buffer.from(bytes).toString('utf8')) as Record<string, unknown>;
    } catch (e) {
      throw invalid(`config is not JSON: ${messageOf(e)}`, e);
    }
    if (!conf || typeof conf !== 'object' || Array.isArray(conf)) throw invalid('config must be a JSON object');
    if (conf.type !== 'patu') throw invalid(`config.type ${JSON.stringify(conf.type)}: only patu's own plugin config is run over the API`);
    const same = (field: string, v: unknown, mine: string, dflt: string): void => {
      if ((v ?? dflt) !== mine) throw invalid(`config.${field} ${JSON.stringify(v ?? dflt)} is not the manager's (${mine}): a client may not point the plugin at other state`);
    };
    same('bridge', conf.bridge, this.l.bridge, DEFAULTS.bridge);
    same('pinRoot', conf.pinRoot, this.l.pinRoot, DEFAULTS.pinRoot);
    const ipam = (conf.ipam ?? {}) as Record<string, unknown>;
    if (typeof ipam !== 'object' || Array.isArray(ipam)) throw invalid('config.ipam must be an object');
    same('ipam.dataDir', ipam.dataDir, this.l.dataDir, DEFAULTS.dataDir);
    const rc = conf.runtimeConfig as Record<string, unknown> | undefined;
    if (rc && typeof rc === 'object' && rc.portMappings !== undefined && !(Array.isArray(rc.portMappings) && rc.portMappings.length === 0)) {
      throw invalid('config.runtimeConfig.portMappings: hostPorts are taken from the runtime (the CNI socket), not over the API');
    }
    const inCluster = (field: string, v: unknown): void => {
      if (v === undefined) return;
      if (typeof v !== 'string') throw invalid(`config.${field} must be a CIDR`);
      const c = this.cidr(`config.${field}`, v);
      if (c.family === 4 && !this.cluster.some((o) => o.prefix <= c.prefix && contains(o, v.split('/')[0]!))) {
        throw invalid(`config.${field} ${v} is not inside the cluster CIDRs ${this.l.clusterCidrs.join(', ')}`);
      }
    };
    inCluster('podCIDR', conf.podCIDR);
    inCluster('clusterCIDR', conf.clusterCIDR);
    if (ipam.ranges !== undefined) {
      if (!Array.isArray(ipam.ranges)) throw invalid('config.ipam.ranges must be a list');
      ipam.ranges.forEach((set: unknown, i) => {
        if (!Array.isArray(set)) throw invalid(`config.ipam.ranges[${i}] must be a list`);
        set.forEach((r: unknown, j) => inCluster(`ipam.ranges[${i}][${j}].subnet`, (r as { subnet?: unknown } | null)?.subnet));
      });
    }
  }

  // ---------------------------------------------------------------- pieces

  private podIp(field: string, ip: unknown): void {
    if (!isIPv4(ip)) throw invalid(`${field} ${JSON.stringify(String(ip).slice(0, 64))} is not an IPv4 address`);
    if (!this.cluster.some((c) => contains(c, ip))) throw invalid(`${field} ${ip} is outside the cluster CIDRs ${this.l.clusterCidrs.join(', ')}`);
  }

  private ref(field: string, r: unknown): void {
    this.str(field, r, this.l.maxString, true);
    if (isHostPortRef(r as string)) throw invalid(`${field} ${JSON.stringify(r)}: hostPort entries are the manager's own`);
  }

  private cidr(field: string, v: unknown): Cidr {
    if (typeof v !== 'string' || v.length > 64) throw invalid(`${field} is not a CIDR`);
    try {
      return parseCidr(v);
    } catch (e) {
      throw invalid(`${field} ${JSON.stringify(v)}: ${messageOf(e)}`, e);
    }
  }

  private labels(field: string, labels: unknown): void {
    if (labels === undefined) return;
    if (!labels || typeof labels !== 'object') throw invalid(`${field} must be a map`);
    const entries = Object.entries(labels as Record<string, unknown>);
    if (entries.length > 256) throw invalid(`${field}: ${entries.length} labels, at most 256`);
    for (const [k, v] of entries) {
      // Kubernetes: a key is an optional DNS prefix (253) plus a name (63); a value at most 63.
      if (k.length > 317) throw invalid(`${field}: a key of ${k.length} characters (at most 317)`);
      this.str(`${field}[${JSON.stringify(k.slice(0, 64))}]`, v, 63, false);
    }
  }

  private str(field: string, v: unknown, max: number, required: boolean): void {
    if (typeof v !== 'string') throw invalid(`${field} must be a string`);
    if (required && v.length === 0) throw invalid(`${field} must not be empty`);
    if (v.length > max) throw invalid(`${field}: ${v.length} characters, at most ${max}`);
  }
}
