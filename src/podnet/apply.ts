// The kernel side of pod network configuration (issue 12): makes one pod's extra
// interfaces exactly what desired.ts decided, and removes them again on DEL, GC,
// pruning and restart. See types.ts PodNetApplier for the contract.
//
// Per interface (pod ifname `net1` of container C on network N):
//   address   from N's own pool, <ipam dataDir>/patu-podnet/N/ (src/ipam: the same
//             allocator and crash-safe store as the primary network; a static address is
//             reserved there too, so the pool is what says "already in use")
//   host end  pn<hash(C, net1)> (names.ts), born on N's bridge and up, MTU = the bridge's
//             (a port never changes a bridge's MTU), alias `patu-podnet C net1 N`
//   pod end   born inside the pod's netns as net1 (no move step), alias
//             `patu-podnet N ns/config`, MTU, MAC (static or derived from the address),
//             the address, up; routes in their named tables and policy rules, both
//             marked proto PODNET_RTPROT
// Order: pool first, links second, so a link never exists without its record (DEL and GC
// are record-driven); a failure anywhere removes the links and releases the address of
// that interface (all or nothing). Nothing without patu's alias or proto mark is touched:
// not eth0, not the main table's routes, not a bridge patu did not create.
//
// The kernel still adds its own connected route for net1's subnet in the pod's main
// table when the address goes on (proto kernel, gone with the address): that is what
// lets two pods of one network reach each other without rules.
import { readdirSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { Rtnl, type LinkInfo, type Route, type Rule } from '../kernel/netlink/rtnl.js';
import { NetlinkError } from '../kernel/netlink/message.js';
import { netnsExists } from '../kernel/netns.js';
import { allocate, IpamExhaustedError, IpamUnavailableError } from '../ipam/allocator.js';
import { IpamConfigError, parseIpamConfig, type IpamConfig } from '../ipam/config.js';
import { IpamStore } from '../ipam/store.js';
import { canonicalIp, formatNetwork, parseCidr } from '../net/cidr.js';
import { bridgeMac } from '../dataplane/bridge.js';
import { errnoOf, messageOf, PatuError } from '../errors.js';
import {
  DEFAULT_RULE_PRIORITY, REASONS,
  type AppliedInterface, type CleanupReport, type DesiredInterface, type InterfaceResult, type PodNetApplier,
  type PodSandbox, type Reason, type ResolvedNetwork, type RuleSpec, type RouteSpec,
} from './types.js';
import { ensureVlanTrunk, listVlanTrunks, removeVlanTrunk, type VlanEnv } from './vlan.js';
import { bridgeAlias, derivedMac, hostAlias, parseAlias, podAlias, podnetVethName, PODNET_POOL_DIR, PODNET_RTPROT } from './names.js';

/** Something the applier could not do; `reason` is what a status condition says. */
export class PodNetApplyError extends PatuError {
  readonly code = 'PODNET_APPLY';
  constructor(readonly reason: Reason, message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

/** The VLAN trunk of a VLAN network: src/podnet/vlan.ts by default, injectable for tests. */
export interface VlanTrunkOps {
  ensure(host: Rtnl, o: { network: string; link: string; id: number; bridge: string; mtu: number }): void;
  remove(host: Rtnl, o: { network: string; link: string; id: number }): void;
  /** The trunks the kernel has (pruneNetworks after a restart); optional. */
  list?(host: Rtnl): { network: string; link: string | null; id: number }[];
}

/** vlan.ts's functions with the node's pin root (VlanEnv). */
export function vlanTrunkOps(env: VlanEnv = {}): VlanTrunkOps {
  return {
    ensure: (host, o) => ensureVlanTrunk(host, o, env),
    remove: (host, o) => removeVlanTrunk(host, o, env),
    list: (host) => listVlanTrunks(host, env),
  };
}

export interface PodNetApplierOptions {
  /** The primary network's ipam.dataDir: the pools live in `<dataDir>/patu-podnet/<network>/`. */
  dataDir: string;
  /** How long a pool's lock is waited for (default: the store's). */
  lockTimeoutMs?: number;
  /** VLAN trunks (default: vlanTrunkOps(), i.e. src/podnet/vlan.ts with the default pin root). */
  vlan?: VlanTrunkOps;
}

export interface OpenedPodNetApplier extends PodNetApplier {
  /** Closes the host netlink socket. */
  close(): void;
}

/** The file in a pool directory that remembers its network (pruneNetworks after a restart needs the VLAN's link and id). */
const NETWORK_FILE = 'network.json';
const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;

const emptyReport = (): CleanupReport => ({ links: [], addresses: [], bridges: [] });
const isNl = (err: unknown, code: string): boolean => err instanceof NetlinkError && err.code === code;

/** A route's identity for comparison: destination (masked), gateway, table, metric. */
function routeKey(r: { dst: string; gateway?: string | undefined; table?: number | undefined; metric?: number | undefined }): string {
  const dst = r.dst === 'default' || r.dst === '0.0.0.0/0' ? 'default' : formatNetwork(parseCidr(r.dst));
  return `${dst}|${r.gateway ? canonicalIp(r.gateway) : ''}|${r.table ?? 254}|${r.metric || ''}`;
}
const specRoute = (r: RouteSpec, oif: number): Route => ({
  dst: r.to === 'default' ? 'default' : formatNetwork(parseCidr(r.to)),
  oif, table: r.table, protocol: PODNET_RTPROT,
  ...(r.via ? { gateway: r.via } : {}),
  ...(r.metric ? { metric: r.metric } : {}),
});

/** Rules as the kernel keeps them: CIDRs masked, the default priority filled in. */
function specRules(rules: RuleSpec[]): Rule[] {
  return rules.map((r, i) => ({
    table: r.table,
    priority: r.priority ?? DEFAULT_RULE_PRIORITY + i,
    protocol: PODNET_RTPROT,
    ...(r.from ? { from: formatNetwork(parseCidr(r.from)) } : {}),
    ...(r.to ? { to: formatNetwork(parseCidr(r.to)) } : {}),
  }));
}
const ruleKey = (r: Rule): string => `${r.from ?? ''}|${r.to ?? ''}|${r.table}|${r.priority ?? ''}`;

/** What a failure means for a status condition. */
function reasonOf(err: unknown): Reason {
  if (err instanceof PodNetApplyError) return err.reason;
  if (err instanceof IpamUnavailableError) return REASONS.addressInUse;
  if (err instanceof IpamExhaustedError) return REASONS.poolExhausted;
  if (err instanceof IpamConfigError) return /not inside any configured range/.test(err.message) ? REASONS.addressOutsideSubnet : /gateway|reserved/.test(err.message) ? REASONS.addressInUse : REASONS.invalidSpec;
  return REASONS.applyFailed;
}

export function openPodNetApplier(opts: PodNetApplierOptions): OpenedPodNetApplier {
  return new Applier(opts);
}

/**
 * One network's pool: `cfg` hands out addresses within rangeStart-rangeEnd; `whole` spans
 * the subnet, for static addresses (the range bounds what pods get automatically, not what
 * a tenant may name). Both write to the one store, so either sees the other's records.
 */
interface Pool {
  key: string;
  cfg: IpamConfig;
  whole: IpamConfig;
  store: IpamStore;
}

class Applier implements OpenedPodNetApplier {
  private readonly root: string;
  /** Opened on first use: a CNI DEL on a node without extra networks never opens it. */
  private hostRtnl: Rtnl | undefined;
  private get host(): Rtnl {
    return (this.hostRtnl ??= Rtnl.open());
  }
  /** Per network: the key of what ensureNetwork last established, and the bridge it found. */
  private readonly ensured = new Map<string, { key: string; index: number; mtu: number }>();
  /** Networks seen by ensureNetwork in this process (pruneNetworks' VLAN details; network.json after a restart). */
  private readonly networks = new Map<string, ResolvedNetwork>();
  private readonly pools = new Map<string, Pool>();

  private readonly vlan: VlanTrunkOps;

  constructor(private readonly opts: PodNetApplierOptions) {
    this.root = join(opts.dataDir, PODNET_POOL_DIR);
    this.vlan = opts.vlan ?? vlanTrunkOps();
  }

  close(): void {
    this.hostRtnl?.close();
    this.hostRtnl = undefined;
    for (const p of this.pools.values()) p.store.close();
  }

  // ---------------------------------------------------------------- pools

  private pool(net: ResolvedNetwork): Pool {
    const key = JSON.stringify([net.subnet, net.gateway, net.rangeStart, net.rangeEnd]);
    const hit = this.pools.get(net.name);
    if (hit && hit.key === key) return hit;
    const range: Record<string, string> = { subnet: formatNetwork(parseCidr(net.subnet)) };
    if (net.gateway) range.gateway = net.gateway;
    if (net.rangeStart) range.rangeStart = net.rangeStart;
    if (net.rangeEnd) range.rangeEnd = net.rangeEnd;
    let cfg: IpamConfig;
    let whole: IpamConfig;
    try {
      cfg = parseIpamConfig({ dataDir: this.root, ranges: [[range]] }, `network '${net.name}'`);
      whole = parseIpamConfig({ dataDir: this.root, ranges: [[{ subnet: range.subnet, ...(net.gateway ? { gateway: net.gateway } : {}) }]] }, `network '${net.name}'`);
    } catch (err) {
      throw new PodNetApplyError(REASONS.invalidSpec, `network '${net.name}': ${messageOf(err)}`, { cause: err });
    }
    const store = this.openStore(net.name);
    const entry = { key, cfg, whole, store };
    this.pools.set(net.name, entry);
    return entry;
  }

  private openStore(network: string): IpamStore {
    return IpamStore.open(this.root, network, this.opts.lockTimeoutMs !== undefined ? { lockTimeoutMs: this.opts.lockTimeoutMs } : {});
  }

  /** Pool directories that exist (the feature unused: none, and no directory is created). */
  private poolNames(): string[] {
    let names: string[];
    try {
      names = readdirSync(this.root, { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => d.name);
    } catch (err) {
      if (errnoOf(err) === 'ENOENT') return [];
      throw err;
    }
    return names.filter((n) => NAME.test(n));
  }

  private rememberNetwork(net: ResolvedNetwork): void {
    const text = JSON.stringify(net);
    if (this.networks.has(net.name) && JSON.stringify(this.networks.get(net.name)) === text) return;
    this.openStore(net.name); // creates the directory with the store's modes
    writeFileSync(join(this.root, net.name, NETWORK_FILE), text, { mode: 0o600 });
    this.networks.set(net.name, net);
  }

  private networkOf(name: string): ResolvedNetwork | undefined {
    const known = this.networks.get(name);
    if (known) return known;
    try {
      return JSON.parse(readFileSync(join(this.root, name, NETWORK_FILE), 'utf8')) as ResolvedNetwork;
    } catch {
      return undefined;
    }
  }

  // ---------------------------------------------------------------- networks

  /** Checks everything every time (the reconciler calls it per network per reconcile): bridge, gateway, trunk. */
  ensureNetwork(net: ResolvedNetwork): void {
    this.ensureBridge(net, true);
  }

  /**
   * The network's bridge, created and marked when missing; a foreign one as it is.
   * Unless `full`, a bridge this process already ensured for the same spec is only looked
   * up (one round trip): sync() runs in the CNI ADD's time.
   */
  private ensureBridge(net: ResolvedNetwork, full = false): { index: number; mtu: number } {
    const key = JSON.stringify(net);
    let link = this.host.linkByName(net.bridge);
    const hit = this.ensured.get(net.name);
    if (!full && link && hit && hit.key === key && hit.index === link.index) return { index: link.index, mtu: link.mtu };
    if (!link) link = this.createBridge(net);
    if (link.kind !== 'bridge') {
      throw new PodNetApplyError(REASONS.applyFailed, `network '${net.name}': link '${net.bridge}' exists and is ${link.kind ? `a '${link.kind}'` : 'a device without a link kind'}, not a bridge; patu never changes a link it did not create`);
    }
    const mark = parseAlias(link.alias);
    if (mark?.kind === 'bridge') {
      // patu's own: keep its gateway address and up state (settings of a foreign bridge are never touched).
      if (net.gateway) {
        const cidr = `${canonicalIp(net.gateway)}/${parseCidr(net.subnet).prefix}`;
        if (!this.host.listAddresses(link.index).some((a) => `${a.address}/${a.prefixLen}` === cidr)) {
          try {
            this.host.addAddress(link.index, cidr);
          } catch (err) {
            if (!isNl(err, 'EEXIST')) throw err;
          }
        }
      }
      if (!link.up) this.host.setUp(link.index);
    }
    if (net.vlan) {
      this.vlan.ensure(this.host, { network: net.name, link: net.vlan.link, id: net.vlan.id, bridge: net.bridge, mtu: net.mtu });
    }
    this.rememberNetwork(net);
    this.ensured.set(net.name, { key, index: link.index, mtu: link.mtu });
    return { index: link.index, mtu: link.mtu };
  }

  private createBridge(net: ResolvedNetwork): LinkInfo {
    try {
      this.host.createBridge(net.bridge, { mtu: net.mtu, mac: bridgeMac(net.bridge) });
    } catch (err) {
      if (!isNl(err, 'EEXIST')) throw err;
      const raced = this.host.linkByName(net.bridge); // another agent call made it meanwhile
      if (raced) return raced;
      throw err;
    }
    const link = this.host.linkByName(net.bridge);
    if (!link) throw new PodNetApplyError(REASONS.applyFailed, `bridge '${net.bridge}' not found right after it was created`);
    try {
      this.host.setAlias(link.index, bridgeAlias(net.name));
      if (net.gateway) this.host.addAddress(link.index, `${canonicalIp(net.gateway)}/${parseCidr(net.subnet).prefix}`);
      this.host.setUp(link.index);
    } catch (err) {
      try {
        this.host.deleteLink(link.index);
      } catch {
        /* best effort: an unmarked bridge is left, which patu then treats as foreign */
      }
      throw err;
    }
    return { ...link, alias: bridgeAlias(net.name) };
  }

  pruneNetworks(inUse: ReadonlySet<string>): CleanupReport {
    const report = emptyReport();
    // Trunks first (their bridge end is a port, which keeps a bridge), found in the kernel
    // and in what ensureNetwork remembered, so a restart does not forget one.
    const trunks = new Map<string, { link: string; id: number }>();
    for (const t of this.vlan.list?.(this.host) ?? []) {
      const link = t.link ?? this.networkOf(t.network)?.vlan?.link;
      if (!inUse.has(t.network) && link) trunks.set(`${t.network}\n${t.id}`, { link, id: t.id });
    }
    for (const name of this.poolNames()) {
      const v = this.networkOf(name)?.vlan;
      if (!inUse.has(name) && v) trunks.set(`${name}\n${v.id}`, v);
    }
    for (const [key, t] of trunks) {
      const network = key.split('\n')[0]!;
      this.vlan.remove(this.host, { network, link: t.link, id: t.id });
      report.links.push(`trunk:${network}/${t.link}.${t.id}`);
    }
    for (const name of this.poolNames()) {
      if (inUse.has(name)) continue;
      const store = this.openStore(name);
      const empty = store.withLock(() => store.heldIps().length === 0);
      store.close();
      if (empty) {
        rmSync(join(this.root, name), { recursive: true, force: true });
        this.pools.delete(name);
        this.networks.delete(name);
        this.ensured.delete(name);
      }
    }
    const links = this.host.listLinks();
    for (const l of links) {
      const mark = parseAlias(l.alias);
      if (mark?.kind !== 'bridge' || inUse.has(mark.network) || l.kind !== 'bridge') continue;
      // A port left (a pod of a network that went away without DEL) keeps it: GC first.
      if (links.some((p) => p.masterIndex === l.index)) continue;
      try {
        this.host.deleteLink(l.index);
        report.bridges.push(l.name);
        this.ensured.delete(mark.network);
      } catch (err) {
        if (!isNl(err, 'ENODEV')) throw err;
      }
    }
    return report;
  }

  // ---------------------------------------------------------------- pods

  sync(sandbox: PodSandbox, want: DesiredInterface[]): InterfaceResult[] {
    let pod: Rtnl;
    try {
      pod = Rtnl.openInNetns(sandbox.netns);
    } catch (err) {
      return want.map((w) => ({ ifname: w.ifname, ok: false, reason: REASONS.applyFailed, message: `netns ${sandbox.netns}: ${messageOf(err)}` }));
    }
    try {
      const links = pod.listLinks();
      const wantNames = new Set(want.map((w) => w.ifname));
      for (const l of links) {
        const mark = parseAlias(l.alias);
        if (mark?.kind === 'pod' && !wantNames.has(l.name)) this.removeInterface(pod, sandbox.containerId, l.name, mark.network, l.index);
      }
      const results: InterfaceResult[] = [];
      const okRules: Rule[] = [];
      for (const w of want) {
        try {
          const applied = this.syncOne(pod, links, sandbox, w);
          okRules.push(...specRules(w.rules));
          results.push({ ifname: w.ifname, ok: true, applied });
        } catch (err) {
          results.push({ ifname: w.ifname, ok: false, reason: reasonOf(err), message: messageOf(err) });
        }
      }
      // Rules belong to the netns, not to a link: the ones no working interface asks for go.
      const keep = new Set(okRules.map(ruleKey));
      for (const r of pod.listRules()) {
        if (r.protocol === PODNET_RTPROT && !keep.has(ruleKey(r))) deleteRuleQuietly(pod, r);
      }
      return results;
    } finally {
      pod.close();
    }
  }

  /** One interface: kept when it matches (routes and rules brought in step), else (re)created. */
  private syncOne(pod: Rtnl, links: LinkInfo[], sandbox: PodSandbox, w: DesiredInterface): AppliedInterface {
    const cid = sandbox.containerId;
    const existing = links.find((l) => l.name === w.ifname);
    const mark = parseAlias(existing?.alias);
    if (existing && mark?.kind !== 'pod') {
      throw new PodNetApplyError(REASONS.applyFailed, `interface '${w.ifname}' exists in ${sandbox.netns} and is not patu's (no '${podAlias(w.network.name, w.config)}' alias): left alone`);
    }
    if (existing && mark?.kind === 'pod') {
      const cur = this.readInterface(pod, cid, existing, mark.network, mark.config);
      if (cur && this.matches(cur, existing, w, cid)) {
        this.syncRoutes(pod, existing.index, w);
        this.addRules(pod, w);
        return cur;
      }
      // A changed static address must be free before the old interface goes.
      if (w.address) this.checkAddressFree(w, cid);
      this.removeInterface(pod, cid, w.ifname, mark.network, existing.index);
    }
    return this.createInterface(pod, sandbox, w);
  }

  private checkAddressFree(w: DesiredInterface, cid: string): void {
    const { store } = this.pool(w.network);
    const ip = canonicalIp(w.address!.split('/')[0]!);
    const owner = store.ownerOf(ip);
    if (owner && !(owner.containerId === cid && owner.ifname === w.ifname)) {
      throw new PodNetApplyError(REASONS.addressInUse, `address ${ip} on network '${w.network.name}' is already held by ${owner.containerId}/${owner.ifname}`);
    }
  }

  private matches(cur: AppliedInterface, link: LinkInfo, w: DesiredInterface, cid: string): boolean {
    if (cur.network !== w.network.name || cur.config.namespace !== w.config.namespace || cur.config.name !== w.config.name) return false;
    if (cur.mtu !== w.mtu || !link.up) return false;
    const ip = cur.address.split('/')[0]!;
    // The prefix is always the subnet's (the pool's), whatever a static address says.
    if (w.address && canonicalIp(w.address.split('/')[0]!) !== ip) return false;
    if (cur.mac !== (w.mac ? w.mac.toLowerCase() : derivedMac(ip))) return false;
    // The pool still says it is this interface's, and the host end is on the right bridge.
    const { store } = this.pool(w.network);
    if (!store.findByOwnerIndexed(cid, w.ifname).includes(ip)) return false;
    const host = this.host.linkByName(cur.hostIfname);
    const bridge = this.host.linkByName(w.network.bridge);
    return !!host && !!bridge && host.masterIndex === bridge.index && host.up && parseAlias(host.alias)?.kind === 'host';
  }

  private readInterface(pod: Rtnl, cid: string, link: LinkInfo, network: string, config: { namespace: string; name: string }): AppliedInterface | undefined {
    const addr = pod.listAddresses(link.index).find((a) => a.family === 4);
    if (!addr) return undefined;
    return {
      ifname: link.name, network, address: `${addr.address}/${addr.prefixLen}`, mac: link.mac, mtu: link.mtu,
      hostIfname: podnetVethName(cid, link.name), config: { namespace: config.namespace, name: config.name },
    };
  }

  private createInterface(pod: Rtnl, sandbox: PodSandbox, w: DesiredInterface): AppliedInterface {
    const cid = sandbox.containerId;
    const net = w.network;
    const bridge = this.ensureBridge(net);
    const { cfg, whole, store } = this.pool(net);
    const [alloc] = allocate(w.address ? whole : cfg, store, cid, w.ifname, {
      ips: w.address ? [w.address.split('/')[0]!] : [],
      meta: { netns: sandbox.netns, pod: { ...sandbox.pod } },
    });
    const address = alloc!.address;
    const mac = (w.mac ?? derivedMac(alloc!.ip)).toLowerCase();
    const hostName = podnetVethName(cid, w.ifname);
    let hostIndex: number | undefined;
    try {
      const create = (): LinkInfo | undefined => this.host.createVeth(hostName, w.ifname, {
        mtu: bridge.mtu, peerNetnsPath: sandbox.netns, peerMac: mac, masterIndex: bridge.index, up: true,
      });
      let echoed: LinkInfo | undefined;
      try {
        echoed = create();
      } catch (err) {
        if (!isNl(err, 'EEXIST')) throw err;
        // Our own leftover (same container and ifname: a sync killed half-way) is replaced;
        // anything else of that name is not ours to remove.
        const stale = this.host.linkByName(hostName);
        const m = parseAlias(stale?.alias);
        if (!stale || m?.kind !== 'host' || m.containerId !== cid || m.ifname !== w.ifname) {
          throw new PodNetApplyError(REASONS.applyFailed, `host link '${hostName}' or pod interface '${w.ifname}' exists and is not patu's: left alone`, { cause: err });
        }
        this.host.deleteLink(stale.index);
        echoed = create();
      }
      const hostLink = echoed ?? this.host.linkByName(hostName);
      if (!hostLink) throw new PodNetApplyError(REASONS.applyFailed, `veth '${hostName}' not found right after it was created`);
      hostIndex = hostLink.index;
      this.host.setAlias(hostIndex, hostAlias(cid, w.ifname, net.name));
      const podIndex = hostLink.linkIndex ?? pod.linkByName(w.ifname)?.index;
      if (podIndex === undefined) throw new PodNetApplyError(REASONS.applyFailed, `interface '${w.ifname}' not found in ${sandbox.netns} after veth creation`);
      pod.setAlias(podIndex, podAlias(net.name, w.config));
      if (w.mtu !== bridge.mtu) pod.setMtu(podIndex, w.mtu);
      pod.addAddress(podIndex, address);
      pod.setUp(podIndex);
      for (const r of w.routes) pod.addRoute(specRoute(r, podIndex));
      this.addRules(pod, w);
      return { ifname: w.ifname, network: net.name, address, mac, mtu: w.mtu, hostIfname: hostName, config: { ...w.config } };
    } catch (err) {
      if (hostIndex !== undefined) {
        try {
          this.host.deleteLink(hostIndex);
        } catch {
          /* gone with its netns meanwhile; GC removes anything left */
        }
      }
      try {
        store.withLock(() => store.releaseByOwner(cid, w.ifname));
      } catch {
        /* GC releases what is left */
      }
      throw err; // the rules this interface added go in sync()'s sweep
    }
  }

  /** The interface's rules, added when missing (a rule two interfaces share is added once). */
  private addRules(pod: Rtnl, w: DesiredInterface): void {
    const have = new Set(pod.listRules().filter((r) => r.protocol === PODNET_RTPROT).map(ruleKey));
    for (const r of specRules(w.rules)) {
      if (have.has(ruleKey(r))) continue;
      try {
        pod.addRule(r);
      } catch (err) {
        if (!isNl(err, 'EEXIST')) throw err;
      }
    }
  }

  /** patu's routes on the interface made equal to the spec's (others, e.g. the kernel's, untouched). */
  private syncRoutes(pod: Rtnl, oif: number, w: DesiredInterface): void {
    const want = new Map(w.routes.map((r) => {
      const route = specRoute(r, oif);
      return [routeKey(route), route] as const;
    }));
    for (const r of pod.listRoutes({ family: 4, table: 0 })) {
      if (r.oif !== oif || r.protocol !== PODNET_RTPROT) continue;
      const key = routeKey(r);
      if (want.has(key)) {
        want.delete(key);
        continue;
      }
      try {
        pod.deleteRoute({ ...r, protocol: PODNET_RTPROT });
      } catch (err) {
        if (!isNl(err, 'ESRCH')) throw err;
      }
    }
    for (const r of want.values()) pod.addRoute(r);
  }

  /** Deletes the interface's veth (its pod end goes with it) and releases its address. */
  private removeInterface(pod: Rtnl | undefined, cid: string, ifname: string, network: string, podIndex?: number): string[] {
    const removed: string[] = [];
    const hostName = podnetVethName(cid, ifname);
    const hostLink = this.host.linkByName(hostName);
    const m = parseAlias(hostLink?.alias);
    if (hostLink && m?.kind === 'host' && m.containerId === cid && m.ifname === ifname) {
      if (deleteLinkQuietly(this.host, hostLink.index)) removed.push(hostName);
    } else if (pod && podIndex !== undefined) {
      // Host end missing (or not ours): the pod end was checked as patu's by the caller.
      if (deleteLinkQuietly(pod, podIndex)) removed.push(ifname);
    }
    if (existsSync(join(this.root, network))) {
      const store = this.openStore(network);
      store.withLock(() => store.releaseByOwner(cid, ifname));
    }
    return removed;
  }

  list(sandbox: PodSandbox): AppliedInterface[] {
    if (!netnsExists(sandbox.netns)) return [];
    let pod: Rtnl;
    try {
      pod = Rtnl.openInNetns(sandbox.netns);
    } catch {
      return [];
    }
    try {
      const out: AppliedInterface[] = [];
      for (const l of pod.listLinks()) {
        const mark = parseAlias(l.alias);
        if (mark?.kind !== 'pod') continue;
        const cur = this.readInterface(pod, sandbox.containerId, l, mark.network, mark.config);
        if (cur) out.push(cur);
      }
      return out;
    } finally {
      pod.close();
    }
  }

  release(containerId: string, netns?: string): CleanupReport {
    const report = emptyReport();
    const pools = this.poolNames();
    if (pools.length === 0) return report; // the feature is not in use on this node: DEL pays one readdir
    for (const name of pools) {
      const store = this.openStore(name);
      const recs = store.list().filter((r) => r.containerId === containerId);
      if (recs.length === 0) continue;
      // Links first, records second: a link never outlives its record (see the header).
      for (const ifname of new Set(recs.map((r) => r.ifname))) {
        report.links.push(...this.removeInterface(undefined, containerId, ifname, name));
      }
      report.addresses.push(...recs.map((r) => r.ip));
    }
    if (netns && netnsExists(netns)) this.cleanPodNetns(netns, report);
    return report;
  }

  /** patu's rules and pod-side links left in a netns that outlives its container. */
  private cleanPodNetns(netns: string, report: CleanupReport): void {
    let pod: Rtnl;
    try {
      pod = Rtnl.openInNetns(netns);
    } catch {
      return; // torn down meanwhile
    }
    try {
      for (const l of pod.listLinks()) {
        if (parseAlias(l.alias)?.kind === 'pod' && deleteLinkQuietly(pod, l.index)) report.links.push(l.name);
      }
      for (const r of pod.listRules()) if (r.protocol === PODNET_RTPROT) deleteRuleQuietly(pod, r);
    } finally {
      pod.close();
    }
  }

  gc(liveContainerIds: ReadonlySet<string>): CleanupReport {
    const report = emptyReport();
    const netnsOf = new Map<string, string>();
    for (const name of this.poolNames()) {
      const store = this.openStore(name);
      store.withLock(() => {
        for (const r of store.list()) {
          if (liveContainerIds.has(r.containerId)) continue;
          if (r.netns) netnsOf.set(r.containerId, r.netns);
          // The link before the record (see the header).
          report.links.push(...this.removeLinkOf(r.containerId, r.ifname));
          if (store.release(r.ip)) report.addresses.push(r.ip);
        }
      });
    }
    // Host ends whose record is gone (a crash between the two removals, or a foreign pool wipe).
    for (const l of this.host.listLinks()) {
      const m = parseAlias(l.alias);
      if (m?.kind === 'host' && !liveContainerIds.has(m.containerId) && deleteLinkQuietly(this.host, l.index)) report.links.push(l.name);
    }
    for (const netns of netnsOf.values()) if (netnsExists(netns)) this.cleanPodNetns(netns, report);
    return report;
  }

  private removeLinkOf(cid: string, ifname: string): string[] {
    const hostName = podnetVethName(cid, ifname);
    const l = this.host.linkByName(hostName);
    const m = parseAlias(l?.alias);
    if (l && m?.kind === 'host' && m.containerId === cid && m.ifname === ifname && deleteLinkQuietly(this.host, l.index)) return [hostName];
    return [];
  }
}

function deleteLinkQuietly(rtnl: Rtnl, index: number): boolean {
  try {
    rtnl.deleteLink(index);
    return true;
  } catch (err) {
    if (isNl(err, 'ENODEV')) return false; // gone with its netns meanwhile
    throw err;
  }
}

function deleteRuleQuietly(rtnl: Rtnl, r: Rule): void {
  try {
    rtnl.deleteRule({ ...r, protocol: PODNET_RTPROT });
  } catch (err) {
    if (!isNl(err, 'ENOENT')) throw err;
  }
}
