// A VLAN NodeNetwork's trunk (issue 12, "VLANs in eBPF"): this kernel has no
// 802.1Q device and no bridge VLAN filtering, so the network's bridge gets one
// veth pair, the trunk. Its bridge end (`pvb<id>-<hash>`) is a port of the
// network's bridge; its outer end (`pvo<id>-<hash>`) carries the network's
// frames untagged, and bpf/vlan.c moves them to and from the host link:
//
//   link ingress, tag <id>  --patu_vlan_link: pop, redirect-->  out of pvo -> pvb -> bridge -> pods
//   pods -> bridge -> pvb -> pvo ingress  --patu_vlan_trunk: push <id>, redirect-->  out of the link
//
// Untagged frames and other ids on the link go on to the node's stack as before.
// Both ends carry the alias `patu-podnet-trunk <network>`, so nothing else is
// ever taken for a trunk. State lives in the kernel only (the links, the pinned
// maps), so an agent restart reads it back with listVlanTrunks.
//
// `host` is a handle on the netns the link lives in; the tc attachments and
// sysctls act on the calling thread's netns, so a caller whose handle is on
// another netns (tests) passes its path as env.netnsPath.
import { existsSync } from 'node:fs';
import { messageOf, PatuError } from '../errors.js';
import { DEFAULTS } from '../defaults.js';
import { sha256Hex } from '../sha256.js';
import type { LinkInfo, Rtnl } from '../kernel/netlink/rtnl.js';
import { withNetns } from '../kernel/netns.js';
import { writeSysctl } from '../kernel/sysctl.js';
import { VlanTc, removeVlanPins, vlanPinDir } from '../dataplane/vlan-tc.js';
import { PODNET_ALIAS_PREFIX } from './types.js';

/** The alias both ends of a trunk carry: `patu-podnet-trunk <network>`. */
export const TRUNK_ALIAS_PREFIX = `${PODNET_ALIAS_PREFIX}-trunk `;
export const trunkAlias = (network: string): string => `${TRUNK_ALIAS_PREFIX}${network}`;

/** Deterministic trunk names: `pvb`/`pvo` + id + '-' + 6 hex digits of sha256(network); at most 14 bytes. */
export function trunkNames(network: string, id: number): { bridgeEnd: string; outer: string } {
  const h = sha256Hex(network).slice(0, 6);
  return { bridgeEnd: `pvb${id}-${h}`, outer: `pvo${id}-${h}` };
}
const OUTER_RE = /^pvo([0-9]{1,4})-[0-9a-f]{6}$/;

/** A request the trunk cannot be made for; `field` names the NodeNetwork field at fault. */
export class VlanTrunkError extends PatuError {
  readonly code = 'PODNET_VLAN';
  constructor(readonly field: string, message: string, options?: { cause?: unknown }) {
    super(`${field}: ${message}`, options);
  }
}

export interface VlanEnv {
  /** Where the programs and maps are pinned (default DEFAULTS.pinRoot); one pin root per netns. */
  pinRoot?: string;
  /** The netns `host` talks to, when it is not the calling thread's. */
  netnsPath?: string;
  /** Compiled bpf/vlan.c (default: build/bpf/vlan.o). */
  objectPath?: string;
  /** Mount bpffs when missing (default true; the DaemonSet says false, see BpffsOptions). */
  mountBpffs?: boolean;
}

export interface VlanTrunk {
  network: string;
  /** The host link the trunk's entries name; null when the maps hold none (a make or removal cut short). */
  link: string | null;
  id: number;
  /** The bridge its bridge end is a port of (null when detached). */
  bridge: string | null;
  /** The outer end's name. */
  trunk: string;
}

function checkId(id: number): void {
  if (!Number.isInteger(id) || id < 1 || id > 4094) throw new VlanTrunkError('spec.vlan.id', `VLAN id ${id} is outside 1-4094`);
}

function checkNetwork(network: string): void {
  // The alias holds it (IFALIASZ 256, less the prefix); NodeNetwork names are DNS subdomains, at most 253.
  if (network.length === 0 || Buffer.byteLength(trunkAlias(network)) > 255 || /\s/.test(network)) {
    throw new VlanTrunkError('metadata.name', `network name '${network}' cannot name a trunk`);
  }
}

const inNetns = <T>(env: VlanEnv, fn: () => T): T => (env.netnsPath ? withNetns(env.netnsPath, fn) : fn());

const bpffs = (env: VlanEnv): { mountBpffs?: boolean } => (env.mountBpffs === undefined ? {} : { mountBpffs: env.mountBpffs });

function openTc(env: VlanEnv): VlanTc {
  return VlanTc.open({ pinRoot: env.pinRoot ?? DEFAULTS.pinRoot, ...(env.objectPath ? { objectPath: env.objectPath } : {}), ...bpffs(env) });
}

/**
 * Makes the trunk of VLAN network `o.network` exist and carry its frames:
 * the veth pair (MTU o.mtu, bridge end in o.bridge), the programs on the
 * link's and the trunk's ingress, and both map entries. Idempotent; repairs a
 * trunk left half-made and moves one whose link changed. Refuses, naming the
 * field, a link that does not exist, an id outside 1-4094, a (link, id) another
 * network's trunk holds, and names taken by links that are not this trunk.
 */
export function ensureVlanTrunk(host: Rtnl, o: { network: string; link: string; id: number; bridge: string; mtu: number }, env: VlanEnv = {}): void {
  checkNetwork(o.network);
  checkId(o.id);
  if (!Number.isInteger(o.mtu) || o.mtu < 68 || o.mtu > 65535) throw new VlanTrunkError('spec.mtu', `MTU ${o.mtu} is outside 68-65535`);
  const link = host.linkByName(o.link);
  if (!link) throw new VlanTrunkError('spec.vlan.link', `link '${o.link}' does not exist on this node`);
  const bridge = host.linkByName(o.bridge);
  if (!bridge || bridge.kind !== 'bridge') throw new VlanTrunkError('spec.bridge', `bridge '${o.bridge}' ${bridge ? 'is not a bridge' : 'does not exist'}`);
  if (link.index === bridge.index || link.masterIndex === bridge.index) {
    throw new VlanTrunkError('spec.vlan.link', `link '${o.link}' is the network's bridge or one of its ports`);
  }
  const alias = trunkAlias(o.network);
  const names = trunkNames(o.network, o.id);
  const pinRoot = env.pinRoot ?? DEFAULTS.pinRoot;

  VlanTc.lock(pinRoot, () => {
    const tc = openTc(env);
    try {
      // Who holds (link, id) now: a live trunk of another network is a conflict; an entry naming a link that is gone is stale.
      const holder = tc.trunkOf(link.index, o.id);
      if (holder !== undefined) {
        const h = host.linkByIndex(holder);
        if (h && h.alias?.startsWith(TRUNK_ALIAS_PREFIX) && h.alias !== alias) {
          throw new VlanTrunkError('spec.vlan', `VLAN ${o.id} on '${o.link}' belongs to network '${h.alias.slice(TRUNK_ALIAS_PREFIX.length)}' (trunk ${h.name})`);
        }
      }
      const outer = ensurePair(host, names, alias, bridge, o.mtu, env);
      inNetns(env, () => {
        // Order: the trunk can tag before the link untags, so the first frame in can be answered.
        tc.ensureOnTrunk(outer.index);
        tc.ensureOnLink(link.index);
      });
      const entries = tc.entries();
      // Entries of trunks deleted behind our back (by hand, with a crash): their ifindex may come back as anything.
      for (const e of entries) if (e.trunk !== outer.index && !host.linkByIndex(e.trunk)) tc.delete(e.trunk);
      const before = entries.find((e) => e.trunk === outer.index);
      const moved = before !== undefined && (before.link !== link.index || before.vid !== o.id);
      if (moved) tc.delete(outer.index);
      tc.set({ trunk: outer.index, link: link.index, vid: o.id });
      // The trunk moved off a link (spec edit): that link keeps its program only while it has another VLAN.
      if (moved && before.link !== link.index && !tc.linksInUse().has(before.link)) detachLink(before.link, env);
    } finally {
      tc.close();
    }
  }, bpffs(env));
}

/** The pair, made or checked: both ends ours, bridge end in the bridge, MTU, up. Returns the outer end. */
function ensurePair(host: Rtnl, names: { bridgeEnd: string; outer: string }, alias: string, bridge: LinkInfo, mtu: number, env: VlanEnv): LinkInfo {
  let outer = host.linkByName(names.outer);
  let inner = host.linkByName(names.bridgeEnd);
  for (const [l, field] of [[outer, names.outer], [inner, names.bridgeEnd]] as const) {
    // A link of that name patu did not mark as this network's trunk: never touched.
    if (l && l.alias !== alias) throw new VlanTrunkError('metadata.name', `link '${field}' exists and is not this network's trunk (alias '${l.alias ?? ''}')`);
  }
  const paired = outer && inner && outer.kind === 'veth' && outer.linkIndex === inner.index;
  if (!paired) {
    // Half made (a crash between creating and marking): ours by alias, so removed and made again.
    for (const l of [outer, inner]) if (l) deleteIfPresent(host, l.index);
    try {
      host.createVeth(names.bridgeEnd, names.outer, { mtu, masterIndex: bridge.index });
    } catch (e) {
      throw new VlanTrunkError('spec.vlan', `creating trunk ${names.bridgeEnd}/${names.outer}: ${messageOf(e)}`, { cause: e });
    }
    inner = host.linkByName(names.bridgeEnd);
    outer = host.linkByName(names.outer);
    if (!inner || !outer) throw new VlanTrunkError('spec.vlan', `trunk ${names.bridgeEnd}/${names.outer} vanished after creation`);
    try {
      host.setAlias(inner.index, alias);
      host.setAlias(outer.index, alias);
    } catch (e) {
      deleteIfPresent(host, outer.index);
      throw e;
    }
    // Neither end has an address: no IPv6 link-local, router solicitations or MLD of their own on the network.
    inNetns(env, () => {
      for (const n of [names.bridgeEnd, names.outer]) {
        try {
          writeSysctl(`net/ipv6/conf/${n}/disable_ipv6`, '1');
        } catch {
          // IPv6 off on this node: nothing to silence.
        }
      }
    });
  }
  if (inner!.masterIndex !== bridge.index) host.setMaster(inner!.index, bridge.index);
  for (const l of [inner!, outer!]) {
    if (l.mtu !== mtu) host.setMtu(l.index, mtu);
    if (!l.up) host.setUp(l.index);
  }
  return host.linkByIndex(outer!.index)!;
}

function deleteIfPresent(host: Rtnl, index: number): void {
  try {
    host.deleteLink(index);
  } catch (e) {
    if (host.linkByIndex(index)) throw e;
  }
}

function detachLink(ifindex: number, env: VlanEnv): void {
  inNetns(env, () => VlanTc.detachFrom(ifindex));
}

/**
 * Removes the trunk of `o.network` for VLAN `o.id`: its map entries, the pair,
 * and, when no VLAN is left on a link, the program there; when none is left on
 * the node, the pinned programs and maps. Idempotent; works when the link is
 * gone. A link of the trunk's name that is not marked as this network's is left alone.
 */
export function removeVlanTrunk(host: Rtnl, o: { network: string; link: string; id: number }, env: VlanEnv = {}): void {
  checkNetwork(o.network);
  checkId(o.id);
  const alias = trunkAlias(o.network);
  const names = trunkNames(o.network, o.id);
  const pinRoot = env.pinRoot ?? DEFAULTS.pinRoot;
  VlanTc.lock(pinRoot, () => {
    if (!existsSync(vlanPinDir(pinRoot))) {
      // Nothing pinned (never set up, or removed by hand): only what the kernel still has.
      for (const n of [names.outer, names.bridgeEnd]) {
        const l = host.linkByName(n);
        if (l && l.alias === alias) deleteIfPresent(host, l.index);
      }
      const link = host.linkByName(o.link);
      if (link) detachLink(link.index, env);
      return;
    }
    const tc = openTc(env);
    let empty = false;
    try {
      const touched = new Set<number>();
      const outer = host.linkByName(names.outer);
      if (outer && outer.alias === alias) {
        const e = tc.delete(outer.index);
        if (e) touched.add(e.link);
      }
      // The (link, id) entry, when it names a trunk that is gone or this one (a removal cut short).
      const link = host.linkByName(o.link);
      if (link) {
        touched.add(link.index);
        const t = tc.trunkOf(link.index, o.id);
        if (t !== undefined && (t === outer?.index || !host.linkByIndex(t))) tc.deleteDown(link.index, o.id);
      }
      // Entries of trunks deleted behind our back (by hand, or with their netns): swept here too.
      for (const e of tc.entries()) {
        if (!host.linkByIndex(e.trunk)) {
          tc.delete(e.trunk);
          touched.add(e.link);
        }
      }
      for (const n of [names.outer, names.bridgeEnd]) {
        const l = host.linkByName(n);
        if (l && l.alias === alias) deleteIfPresent(host, l.index);
      }
      const inUse = tc.linksInUse();
      for (const l of touched) if (!inUse.has(l) && host.linkByIndex(l)) detachLink(l, env);
      empty = inUse.size === 0 && tc.entries().length === 0;
    } finally {
      tc.close();
    }
    if (empty) removeVlanPins(pinRoot);
  }, bpffs(env));
}

/**
 * The trunks on this node, from the kernel: links marked `patu-podnet-trunk`
 * with a trunk's outer-end name, and their map entries. What an agent restart
 * reconciles against (a trunk with `link: null` was cut short: ensure or remove it).
 */
export function listVlanTrunks(host: Rtnl, env: VlanEnv = {}): VlanTrunk[] {
  const links = host.listLinks();
  const byIndex = new Map(links.map((l) => [l.index, l]));
  const trunks = links.filter((l) => l.alias?.startsWith(TRUNK_ALIAS_PREFIX) && OUTER_RE.test(l.name));
  if (trunks.length === 0) return [];
  const pinRoot = env.pinRoot ?? DEFAULTS.pinRoot;
  const entries = new Map<number, { link: number; vid: number }>();
  try {
    const tc = openTc(env);
    try {
      for (const e of tc.entries()) entries.set(e.trunk, e);
    } finally {
      tc.close();
    }
  } catch (e) {
    throw new VlanTrunkError('spec.vlan', `reading the VLAN maps under ${pinRoot}: ${messageOf(e)}`, { cause: e });
  }
  return trunks.map((l) => {
    const network = l.alias!.slice(TRUNK_ALIAS_PREFIX.length);
    const e = entries.get(l.index);
    const inner = l.linkIndex !== undefined ? byIndex.get(l.linkIndex) : undefined;
    const master = inner?.masterIndex !== undefined ? byIndex.get(inner.masterIndex) : undefined;
    return {
      network,
      link: e ? byIndex.get(e.link)?.name ?? null : null,
      id: e?.vid ?? Number(OUTER_RE.exec(l.name)![1]),
      bridge: master?.name ?? null,
      trunk: l.name,
    };
  }).sort((a, b) => a.network.localeCompare(b.network) || a.id - b.id);
}
