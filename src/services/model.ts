// The in-memory model of services and their endpoints. Every source (the local
// file, the Kubernetes API) feeds this one model, and the dataplane only ever
// sees what desired() derives from it, so the rules about which endpoints are
// selectable, and for which address, live in exactly one place.
//
// One service gives one map entry per (address, port, protocol) it answers on:
// its ClusterIP, its NodePorts (the wildcard address 0.0.0.0: every node
// address, see bpf/lb_select.h), its externalIPs and LoadBalancer ingress IPs.
// Two services may not claim one entry: the service that claimed it first
// keeps it, the other is not programmed at all (never half) and reported by
// conflicts() until the entry is free again.
//
// hostPorts are not in this model: the agent programs them through their own
// ServiceLb partition (src/dataplane/service-lb.ts), where services win a
// contested port.

export type Protocol = 'TCP' | 'UDP';
export type SessionAffinity = 'None' | 'ClientIP';
export type ServiceType = 'ClusterIP' | 'NodePort' | 'LoadBalancer';
export type TrafficPolicy = 'Cluster' | 'Local';

/** The wildcard VIP: a NodePort answers on every node address (patu_node_addr). */
export const ANY_NODE_ADDRESS = '0.0.0.0';

export interface ServicePort {
  name?: string;
  port: number;
  protocol: Protocol;
  /** Backend port: a number, or the name of a port the endpoints declare. */
  targetPort: number | string;
  /** type NodePort/LoadBalancer: the port every node address answers on. */
  nodePort?: number;
}

export interface Service {
  namespace: string;
  name: string;
  clusterIP: string;
  ports: ServicePort[];
  sessionAffinity: SessionAffinity;
  /** Only meaningful with ClientIP; Kubernetes' default is 10800. */
  affinityTimeoutSeconds: number;
  /** Default ClusterIP (no node ports). */
  type?: ServiceType;
  /** Extra addresses answering the service's ports, as its ClusterIP does. */
  externalIPs?: string[];
  /** status.loadBalancer.ingress IPs (type LoadBalancer): served like externalIPs. */
  loadBalancerIPs?: string[];
  /**
   * Local: traffic from outside the node to a NodePort/externalIP/LB IP goes only
   * to this node's endpoints. The socket-level entries serve this node's own pods
   * and processes, which kube-proxy sends to every endpoint even then (its
   * "short-circuit" for in-cluster traffic), so it changes no entry here; it sets
   * which endpoints healthCheckNodePort counts.
   */
  externalTrafficPolicy?: TrafficPolicy;
  /** Local: the ClusterIP answers with this node's endpoints only (none: refused). */
  internalTrafficPolicy?: TrafficPolicy;
  /** ETP Local NodePort/LoadBalancer: the port the agent answers health checks on. */
  healthCheckNodePort?: number;
}

/** One endpoint address with EndpointSlice-style conditions. */
export interface Endpoint {
  ip: string;
  ready: boolean;
  serving: boolean;
  terminating: boolean;
  /** Named ports (for a string targetPort): name -> port number. */
  ports?: Record<string, number>;
  /** The node the endpoint runs on (EndpointSlice endpoints[].nodeName): Local policies keep this node's. */
  nodeName?: string;
}

export const DEFAULT_AFFINITY_TIMEOUT = 10800;

/**
 * A container (target) port name, Kubernetes' IANA_SVC_NAME: 1-15 lowercase letters,
 * digits and '-', at least one letter (so "80" is never a name), no '-' at either end
 * and no '--'.
 */
export const isPortName = (v: unknown): v is string =>
  typeof v === 'string' && v.length <= 15 && /^[a-z0-9]+(-[a-z0-9]+)*$/.test(v) && /[a-z]/.test(v) && !isQuotedNumber(v);

/**
 * Text that reads as a number ("80", "1e3", "0x50", "1e-3"): in a port field it is a
 * number someone quoted, never a name, even where IANA_SVC_NAME would allow it.
 */
export const isQuotedNumber = (v: string): boolean => v.trim() !== '' && Number.isFinite(Number(v));

/** A service port name, Kubernetes' DNS label: 1-63 lowercase letters, digits and '-', alphanumeric at both ends. */
export const isServicePortName = (v: unknown): v is string =>
  typeof v === 'string' && v.length <= 63 && /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(v);

export const serviceRef = (s: { namespace: string; name: string }): string => `${s.namespace}/${s.name}`;

/** A service's ports as programmed: the map key and the backends selectable for it. */
export interface DesiredServicePort {
  /** `vip:port/proto`, the identity of a map entry. */
  key: string;
  /** The owning service, `namespace/name`. */
  ref: string;
  vip: string;
  port: number;
  protocol: Protocol;
  /** `namespace/name:portName` (or `:port`), for listings. */
  name: string;
  affinity: boolean;
  affinityTimeoutSeconds: number;
  /** Selectable backends as `ip:port`, sorted (the order is irrelevant to selection). */
  backends: string[];
  /**
   * 'external-local': the entry packets from outside the node use (the tc path) for an
   * externalTrafficPolicy Local service: this node's endpoints only. The socket hooks
   * never see it (its map key carries PATU_PROTO_EXT_LOCAL in the protocol byte).
   */
  scope?: EntryScope;
}

export type EntryScope = 'external-local';

export const portKey = (vip: string, port: number, protocol: Protocol, scope?: EntryScope): string =>
  `${vip}:${port}/${protocol}${scope ? `/${scope}` : ''}`;

/**
 * Which endpoints take new connections: the ready ones; when none is ready,
 * the serving-but-terminating ones (what kube-proxy does, so a rollout of a
 * single-replica service does not refuse connections while the old pod still
 * serves). Not-serving endpoints are never selected.
 */
export function selectable(endpoints: readonly Endpoint[]): Endpoint[] {
  const ready = endpoints.filter((e) => e.ready);
  if (ready.length > 0) return ready;
  return endpoints.filter((e) => e.serving && e.terminating);
}

function resolveTarget(p: ServicePort, e: Endpoint): number | undefined {
  if (typeof p.targetPort === 'number') return p.targetPort;
  return e.ports?.[p.targetPort];
}

/** This node's selectable endpoints (Local policies), by the same ready/terminating rule. */
export function localSelectable(endpoints: readonly Endpoint[], nodeName: string | undefined): Endpoint[] {
  if (nodeName === undefined) return [];
  return selectable(endpoints.filter((e) => e.nodeName === nodeName));
}

/** The node ports a service answers on (NodePort and LoadBalancer types only). */
export const nodePortsOf = (svc: Service): ServicePort[] =>
  svc.type === 'NodePort' || svc.type === 'LoadBalancer' ? svc.ports.filter((p) => p.nodePort !== undefined) : [];

/** The entry keys a service claims (what desiredPorts() derives, without the endpoints). */
export function serviceKeys(svc: Service): string[] {
  const out: string[] = [];
  const external = [...(svc.externalIPs ?? []), ...(svc.type === 'LoadBalancer' ? svc.loadBalancerIPs ?? [] : [])];
  for (const p of svc.ports) {
    out.push(portKey(svc.clusterIP, p.port, p.protocol));
    if (nodePortsOf(svc).includes(p)) out.push(portKey(ANY_NODE_ADDRESS, p.nodePort!, p.protocol));
    for (const ip of new Set(external)) if (ip !== svc.clusterIP) out.push(portKey(ip, p.port, p.protocol));
  }
  return out;
}

/**
 * Derives the map-level view of one service: per port, its ClusterIP entry,
 * its NodePort entry (wildcard address), and one per externalIP and
 * LoadBalancer IP. nodeName is this node's (for internalTrafficPolicy Local).
 */
export function desiredPorts(svc: Service, endpoints: readonly Endpoint[], nodeName?: string): DesiredServicePort[] {
  const all = selectable(endpoints);
  const clusterEps = svc.internalTrafficPolicy === 'Local' ? localSelectable(endpoints, nodeName) : all;
  const affinity = svc.sessionAffinity === 'ClientIP';
  const ref = serviceRef(svc);
  const out: DesiredServicePort[] = [];
  const external = [...(svc.externalIPs ?? []), ...(svc.type === 'LoadBalancer' ? svc.loadBalancerIPs ?? [] : [])];
  const hasNodePorts = svc.type === 'NodePort' || svc.type === 'LoadBalancer';
  for (const p of svc.ports) {
    const backendsOf = (eps: readonly Endpoint[]): string[] => {
      const backends = new Set<string>();
      for (const e of eps) {
        const port = resolveTarget(p, e);
        // An endpoint that does not declare a named target port cannot serve it (as in Kubernetes).
        if (port !== undefined) backends.add(`${e.ip}:${port}`);
      }
      return [...backends].sort();
    };
    const name = `${ref}:${p.name ?? String(p.port)}`;
    const entry = (vip: string, port: number, backends: string[], scope?: EntryScope): DesiredServicePort => ({
      key: portKey(vip, port, p.protocol, scope), ref, vip, port, protocol: p.protocol, name,
      affinity, affinityTimeoutSeconds: affinity ? svc.affinityTimeoutSeconds : 0, backends,
      ...(scope ? { scope } : {}),
    });
    out.push(entry(svc.clusterIP, p.port, backendsOf(clusterEps)));
    // Socket-level clients are this node's pods and processes: every endpoint, whatever
    // externalTrafficPolicy says (kube-proxy's short-circuit for in-cluster traffic).
    const ext = hasNodePorts || external.length ? backendsOf(all) : [];
    if (hasNodePorts && p.nodePort !== undefined) out.push(entry(ANY_NODE_ADDRESS, p.nodePort, ext));
    for (const ip of new Set(external)) if (ip !== svc.clusterIP) out.push(entry(ip, p.port, ext));
    // Packets from outside to an externalTrafficPolicy Local service reach this node's
    // endpoints only (none: dropped), with the client's address kept: an entry of their own.
    if (svc.externalTrafficPolicy === 'Local' && (hasNodePorts || external.length)) {
      const local = backendsOf(localSelectable(endpoints, nodeName));
      if (hasNodePorts && p.nodePort !== undefined) out.push(entry(ANY_NODE_ADDRESS, p.nodePort, local, 'external-local'));
      for (const ip of new Set(external)) if (ip !== svc.clusterIP) out.push(entry(ip, p.port, local, 'external-local'));
    }
  }
  return out;
}

interface Entry {
  service: Service;
  endpoints: Endpoint[];
}

/** A service left out because another one holds an entry it needs. */
export interface Conflict {
  ref: string;
  /** The entry both want, `vip:port/proto` (vip 0.0.0.0: a NodePort). */
  key: string;
  /** The service that holds it. */
  holder: string;
}

/**
 * Services and endpoints keyed by namespace/name. Tracks which services
 * changed since the last takeChanges(), so a consumer can diff only those:
 * a change to one service then costs the same with 10 or 10,000 services.
 */
export class ServiceModel {
  private readonly entries = new Map<string, Entry>();
  private readonly changed = new Set<string>();
  private generation = 0;
  /** Entry key -> the ref holding it. */
  private readonly owner = new Map<string, string>();
  /** Ref -> the keys it holds. */
  private readonly held = new Map<string, Set<string>>();
  /** Refs left out, and why. */
  private readonly blocked = new Map<string, Conflict>();

  /** nodeName: this node's name, for the Local traffic policies (endpoints' nodeName). */
  constructor(readonly opts: { nodeName?: string } = {}) {}

  get size(): number {
    return this.entries.size;
  }

  get version(): number {
    return this.generation;
  }

  upsertService(service: Service): void {
    const ref = serviceRef(service);
    const prev = this.entries.get(ref);
    this.entries.set(ref, { service, endpoints: prev?.endpoints ?? [] });
    this.touch(ref);
  }

  /**
   * Who holds which entry before the first desired() (entry key -> ref), from
   * what the maps already hold: after an agent restart the service that had a
   * contested entry keeps it, whatever the order the new run sees them in. Refs
   * that no longer exist let go in the first full pass.
   */
  seedOwners(owners: Iterable<readonly [string, string]>): void {
    for (const [key, ref] of owners) {
      if (this.owner.has(key)) continue;
      this.owner.set(key, ref);
      let h = this.held.get(ref);
      if (!h) this.held.set(ref, (h = new Set()));
      h.add(key);
    }
  }

  /** Services left out because another one holds an entry they need (see the header). */
  conflicts(): Conflict[] {
    return [...this.blocked.values()];
  }

  setEndpoints(ref: string, endpoints: Endpoint[]): void {
    const e = this.entries.get(ref);
    if (!e) throw new Error(`setEndpoints: no service ${ref} in the model`);
    e.endpoints = endpoints;
    this.touch(ref);
  }

  deleteService(ref: string): boolean {
    const had = this.entries.delete(ref);
    if (had) this.touch(ref);
    return had;
  }

  get(ref: string): { service: Service; endpoints: readonly Endpoint[] } | undefined {
    const e = this.entries.get(ref);
    return e ? { service: e.service, endpoints: e.endpoints } : undefined;
  }

  refs(): string[] {
    return [...this.entries.keys()];
  }

  /**
   * Replaces the whole content (a file reload), marking as changed only the
   * services whose definition or endpoints differ, plus the removed ones.
   */
  replaceAll(items: readonly { service: Service; endpoints: Endpoint[] }[]): void {
    const seen = new Set<string>();
    for (const it of items) {
      const ref = serviceRef(it.service);
      seen.add(ref);
      const prev = this.entries.get(ref);
      if (prev && sameJson(prev.service, it.service) && sameJson(prev.endpoints, it.endpoints)) continue;
      this.entries.set(ref, { service: it.service, endpoints: it.endpoints });
      this.touch(ref);
    }
    for (const ref of [...this.entries.keys()]) {
      if (!seen.has(ref)) {
        this.entries.delete(ref);
        this.touch(ref);
      }
    }
  }

  /** Whether something changed since the last takeChanges() (desired() can add: a freed entry). */
  get hasChanges(): boolean {
    return this.changed.size > 0;
  }

  /** Service refs changed since the last call (and clears the set). */
  takeChanges(): Set<string> {
    const out = new Set(this.changed);
    this.changed.clear();
    return out;
  }

  /**
   * Desired map entries for the given services (all when refs is omitted), keyed
   * by port key. Also settles the claims: a ref whose entries another ref holds
   * contributes none (see conflicts()); a ref that frees entries marks the refs
   * waiting for them as changed, so the next takeChanges()/desired() programs them.
   */
  desired(refs?: Iterable<string>): Map<string, DesiredServicePort> {
    const out = new Map<string, DesiredServicePort>();
    // A full pass also settles refs that are gone but still hold or wait for entries.
    const list = refs ? [...refs] : [...new Set([...this.entries.keys(), ...this.held.keys(), ...this.blocked.keys()])];
    // Claims are settled in a stable order: whoever already holds an entry keeps it,
    // then by ref, so the outcome does not depend on event order within one apply.
    list.sort();
    const wants = new Map<string, DesiredServicePort[]>();
    for (const ref of list) {
      const e = this.entries.get(ref);
      wants.set(ref, e ? this.portsOf(e) : []);
    }
    // Release what each ref in scope no longer wants (or all of it, for a gone ref).
    const freed: string[] = [];
    for (const [ref, ports] of wants) {
      const keys = new Set(ports.map((d) => d.key));
      for (const k of this.held.get(ref) ?? []) {
        if (!keys.has(k)) {
          this.release(ref, k);
          freed.push(k);
        }
      }
    }
    for (const [ref, ports] of wants) {
      this.blocked.delete(ref);
      let conflict: Conflict | undefined;
      for (const d of ports) {
        const holder = this.owner.get(d.key);
        if (holder !== undefined && holder !== ref) {
          conflict = { ref, key: d.key, holder };
          break;
        }
      }
      if (conflict) {
        // Never half-programmed: what it held goes too.
        for (const k of [...(this.held.get(ref) ?? [])]) {
          this.release(ref, k);
          freed.push(k);
        }
        this.blocked.set(ref, conflict);
        continue;
      }
      for (const d of ports) {
        this.owner.set(d.key, ref);
        let h = this.held.get(ref);
        if (!h) this.held.set(ref, (h = new Set()));
        h.add(d.key);
        out.set(d.key, d);
      }
    }
    // A ref left out for an entry freed now gets its turn at the next apply.
    if (freed.length) {
      const free = new Set(freed);
      for (const [ref, c] of this.blocked) if (free.has(c.key)) this.touch(ref);
    }
    return out;
  }

  private portsOf(e: Entry): DesiredServicePort[] {
    return desiredPorts(e.service, e.endpoints, this.opts.nodeName);
  }

  private release(ref: string, key: string): void {
    if (this.owner.get(key) === ref) this.owner.delete(key);
    const h = this.held.get(ref);
    h?.delete(key);
    if (h && h.size === 0) this.held.delete(ref);
  }

  /**
   * The healthCheckNodePort a service wants served, with its count of local
   * endpoints (externalTrafficPolicy Local NodePort/LoadBalancer services only).
   */
  healthCheck(ref: string): { ref: string; port: number; localEndpoints: number } | undefined {
    const s = this.entries.get(ref)?.service;
    if (!s || s.healthCheckNodePort === undefined || s.externalTrafficPolicy !== 'Local') return undefined;
    if (s.type !== 'NodePort' && s.type !== 'LoadBalancer') return undefined;
    return { ref, port: s.healthCheckNodePort, localEndpoints: this.localEndpoints(ref).length };
  }

  /** This node's selectable endpoints of a service (healthCheckNodePort counts them). */
  localEndpoints(ref: string): Endpoint[] {
    const e = this.entries.get(ref);
    return e ? localSelectable(e.endpoints, this.opts.nodeName) : [];
  }

  private touch(ref: string): void {
    this.changed.add(ref);
    this.generation++;
  }
}

function sameJson(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
  if (Array.isArray(a)) {
    if (!Array.isArray(b) || a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (!sameJson(a[i], b[i])) return false;
    return true;
  }
  if (Array.isArray(b)) return false;
  const ka = Object.keys(a);
  if (ka.length !== Object.keys(b).length) return false;
  for (const k of ka) if (!sameJson((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k])) return false;
  return true;
}
