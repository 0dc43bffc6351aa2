// The in-memory model of ClusterIP services and their endpoints. Every source
// (the local file today, the Kubernetes API later) feeds this one model, and
// the dataplane only ever sees what desired() derives from it, so the
// rules about which endpoints are selectable live in exactly one place.

export type Protocol = 'TCP' | 'UDP';
export type SessionAffinity = 'None' | 'ClientIP';

export interface ServicePort {
  name?: string;
  port: number;
  protocol: Protocol;
  /** Backend port: a number, or the name of a port the endpoints declare. */
  targetPort: number | string;
}

export interface Service {
  namespace: string;
  name: string;
  clusterIP: string;
  ports: ServicePort[];
  sessionAffinity: SessionAffinity;
  /** Only meaningful with ClientIP; Kubernetes' default is 10800. */
  affinityTimeoutSeconds: number;
}

/** One endpoint address with EndpointSlice-style conditions. */
export interface Endpoint {
  ip: string;
  ready: boolean;
  serving: boolean;
  terminating: boolean;
  /** Named ports (for a string targetPort): name -> port number. */
  ports?: Record<string, number>;
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
}

export const portKey = (vip: string, port: number, protocol: Protocol): string => `${vip}:${port}/${protocol}`;

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

/** Derives the map-level view of one service (one entry per port). */
export function desiredPorts(svc: Service, endpoints: readonly Endpoint[]): DesiredServicePort[] {
  const eps = selectable(endpoints);
  const affinity = svc.sessionAffinity === 'ClientIP';
  return svc.ports.map((p) => {
    const backends = new Set<string>();
    for (const e of eps) {
      const port = resolveTarget(p, e);
      // An endpoint that does not declare a named target port cannot serve it (as in Kubernetes).
      if (port !== undefined) backends.add(`${e.ip}:${port}`);
    }
    return {
      key: portKey(svc.clusterIP, p.port, p.protocol),
      ref: serviceRef(svc),
      vip: svc.clusterIP,
      port: p.port,
      protocol: p.protocol,
      name: `${serviceRef(svc)}:${p.name ?? String(p.port)}`,
      affinity,
      affinityTimeoutSeconds: affinity ? svc.affinityTimeoutSeconds : 0,
      backends: [...backends].sort(),
    };
  });
}

interface Entry {
  service: Service;
  endpoints: Endpoint[];
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
    return this.entries.get(ref);
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

  /** Service refs changed since the last call (and clears the set). */
  takeChanges(): Set<string> {
    const out = new Set(this.changed);
    this.changed.clear();
    return out;
  }

  /** Desired map entries for the given services (all when refs is omitted), keyed by port key. */
  desired(refs?: Iterable<string>): Map<string, DesiredServicePort> {
    const out = new Map<string, DesiredServicePort>();
    const list = refs ? [...refs] : [...this.entries.keys()];
    for (const ref of list) {
      const e = this.entries.get(ref);
      if (!e) continue;
      for (const d of desiredPorts(e.service, e.endpoints)) out.set(d.key, d);
    }
    return out;
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
