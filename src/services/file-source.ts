// The standalone service source: one local YAML or JSON file with services and
// their endpoints. The embedded default for hosts without Kubernetes (and what
// `patu demo` uses). Validation reports every problem with the path of the
// entry and field (`services[2].ports[0].protocol: must be TCP or UDP`); a
// watcher reloads on change and keeps the last good content when a new one is
// bad, so a typo never unprograms anything.
import { watch } from 'node:fs';
import { ConfigSyntaxError, FileWatcher, ReloadLoop, nestingDepth, parseYamlOrJson, readConfigFile, type FileWatchOptions } from '../config-file.js';

export { nestingDepth };
import { messageOf, PatuError } from '../errors.js';
import { isIPv4 } from '../net/cidr.js';
import {
  DEFAULT_AFFINITY_TIMEOUT, isPortName, isQuotedNumber, isServicePortName, portKey,
  serviceKeys, type Endpoint, type Protocol, type Service, type ServicePort, type ServiceType, type SessionAffinity,
} from './model.js';

export interface ServiceWithEndpoints {
  service: Service;
  endpoints: Endpoint[];
}

export class ServiceFileError extends PatuError {
  readonly code = 'SERVICES_FILE';
  constructor(readonly file: string, readonly problems: string[]) {
    super(`${file}: ${problems.length === 1 ? problems[0] : `${problems.length} problems:\n  ${problems.join('\n  ')}`}`);
  }
}

/** A name as shown in a problem: a 100,000-character key must not make a 100,000-character message. */
const shown = (v: string): string =>
  v.length <= 40 && /^[\w.-]+$/.test(v) ? v : JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}...` : v);

const SAY_NONE = 'write "services: []" to program no services';

/**
 * The largest services file read (10,000 services with endpoints are ~5 MB of YAML).
 * Bounded so that a huge or endless file cannot grow the agent without limit.
 */
export const MAX_SERVICES_FILE_BYTES = 32 << 20;
/** Deeper nesting than any services file has: YAML parse time grows with depth. */
export const MAX_NESTING = 64;

const MAX_PROBLEMS = 50;
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const SERVICE_FIELDS = new Set([
  'name', 'namespace', 'clusterIP', 'ports', 'sessionAffinity', 'affinityTimeoutSeconds', 'endpoints',
  'type', 'externalIPs', 'loadBalancerIPs', 'externalTrafficPolicy', 'internalTrafficPolicy', 'healthCheckNodePort',
]);
const PORT_FIELDS = new Set(['name', 'port', 'protocol', 'targetPort', 'nodePort']);
const ENDPOINT_FIELDS = new Set(['ip', 'ready', 'serving', 'terminating', 'ports', 'nodeName']);
const TYPES = new Set(['ClusterIP', 'NodePort', 'LoadBalancer']);

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const isPort = (v: unknown): v is number => Number.isInteger(v) && (v as number) >= 1 && (v as number) <= 65535;

/**
 * Validates parsed file content. Throws ServiceFileError listing every
 * problem found (up to 50), each prefixed with the path of the field.
 */
export function validateServices(doc: unknown, file = '<input>'): ServiceWithEndpoints[] {
  const problems: string[] = [];
  const bad = (path: string, msg: string): void => {
    if (problems.length < MAX_PROBLEMS) problems.push(`${path}: ${msg}`);
  };
  // A document that says nothing (a comment, ---, null, {}) is not "no services": like an
  // empty file it may be a writer caught half-way, and taking it as such would unprogram
  // everything. No services is said explicitly.
  if (doc === null || doc === undefined) throw new ServiceFileError(file, [`(top level): the file holds no document; ${SAY_NONE}`]);
  if (!isObj(doc)) throw new ServiceFileError(file, ['(top level): must be an object with a `services` list']);
  for (const k of Object.keys(doc)) if (k !== 'services') bad(shown(k), 'unknown field (expected only `services`)');
  if (!('services' in doc)) throw new ServiceFileError(file, [...problems, `services: missing; ${SAY_NONE}`]);
  const list = doc.services;
  if (!Array.isArray(list)) throw new ServiceFileError(file, [`services: must be a list (${SAY_NONE})`]);

  const out: ServiceWithEndpoints[] = [];
  const refs = new Map<string, string>();
  const keys = new Map<string, string>();
  list.forEach((s: unknown, i: number) => {
    const at = `services[${i}]`;
    if (!isObj(s)) return bad(at, 'must be an object');
    for (const k of Object.keys(s)) if (!SERVICE_FIELDS.has(k)) bad(`${at}.${k}`, 'unknown field');
    const before = problems.length;

    const name = s.name;
    if (typeof name !== 'string' || !DNS_LABEL.test(name) || name.length > 63) {
      bad(`${at}.name`, 'must be a DNS label (lowercase letters, digits, -; at most 63)');
    }
    const namespace = s.namespace ?? 'default';
    if (typeof namespace !== 'string' || !DNS_LABEL.test(namespace) || namespace.length > 63) {
      bad(`${at}.namespace`, 'must be a DNS label (lowercase letters, digits, -; at most 63)');
    }
    const clusterIP = s.clusterIP;
    if (typeof clusterIP !== 'string' || !isIPv4(clusterIP)) bad(`${at}.clusterIP`, 'must be an IPv4 address like 10.96.0.10');
    const affinity = s.sessionAffinity ?? 'None';
    if (affinity !== 'None' && affinity !== 'ClientIP') bad(`${at}.sessionAffinity`, 'must be None or ClientIP');
    const timeout = s.affinityTimeoutSeconds ?? DEFAULT_AFFINITY_TIMEOUT;
    if (!Number.isInteger(timeout) || (timeout as number) < 1 || (timeout as number) > 86400) {
      bad(`${at}.affinityTimeoutSeconds`, 'must be an integer from 1 to 86400');
    }
    const type = s.type ?? 'ClusterIP';
    if (typeof type !== 'string' || !TYPES.has(type)) bad(`${at}.type`, 'must be ClusterIP, NodePort or LoadBalancer');
    const withNodePorts = type === 'NodePort' || type === 'LoadBalancer';
    const addrList = (field: string, v: unknown): string[] => {
      if (v === undefined) return [];
      if (!Array.isArray(v)) {
        bad(`${at}.${field}`, 'must be a list of IPv4 addresses');
        return [];
      }
      const out: string[] = [];
      v.forEach((a: unknown, k: number) => {
        if (typeof a !== 'string' || !isIPv4(a)) bad(`${at}.${field}[${k}]`, 'must be an IPv4 address');
        else if (a === '0.0.0.0') bad(`${at}.${field}[${k}]`, '0.0.0.0 means every node address: use type NodePort with a nodePort');
        else if (out.includes(a)) bad(`${at}.${field}[${k}]`, `duplicate address ${a}`);
        else out.push(a);
      });
      return out;
    };
    const externalIPs = addrList('externalIPs', s.externalIPs);
    const loadBalancerIPs = addrList('loadBalancerIPs', s.loadBalancerIPs);
    if (loadBalancerIPs.length && type !== 'LoadBalancer') bad(`${at}.loadBalancerIPs`, 'only with type LoadBalancer');
    const etp = s.externalTrafficPolicy ?? 'Cluster';
    if (etp !== 'Cluster' && etp !== 'Local') bad(`${at}.externalTrafficPolicy`, 'must be Cluster or Local');
    else if (etp === 'Local' && !withNodePorts) bad(`${at}.externalTrafficPolicy`, 'Local only with type NodePort or LoadBalancer');
    const itp = s.internalTrafficPolicy ?? 'Cluster';
    if (itp !== 'Cluster' && itp !== 'Local') bad(`${at}.internalTrafficPolicy`, 'must be Cluster or Local');
    const hc = s.healthCheckNodePort;
    if (hc !== undefined) {
      if (!isPort(hc)) bad(`${at}.healthCheckNodePort`, 'must be an integer from 1 to 65535');
      else if (etp !== 'Local') bad(`${at}.healthCheckNodePort`, 'only with externalTrafficPolicy Local');
    }
    /** Claims one entry key for this file; a second claim is an error naming the first. */
    const claim = (path: string, vip: string, port: number, protocol: Protocol, what: string): void => {
      const key = portKey(vip, port, protocol);
      const other = keys.get(key);
      if (other) bad(path, `${what} ${key} is already used by ${other}`);
      else keys.set(key, path);
    };

    const ports: ServicePort[] = [];
    if (!Array.isArray(s.ports) || s.ports.length === 0) bad(`${at}.ports`, 'must be a non-empty list');
    else {
      const portNames = new Set<string>();
      s.ports.forEach((p: unknown, j: number) => {
        const pat = `${at}.ports[${j}]`;
        if (!isObj(p)) return bad(pat, 'must be an object');
        for (const k of Object.keys(p)) if (!PORT_FIELDS.has(k)) bad(`${pat}.${shown(k)}`, 'unknown field');
        if (p.name !== undefined) {
          if (!isServicePortName(p.name)) bad(`${pat}.name`, 'must be a DNS label (lowercase letters, digits, -; at most 63)');
          else if (portNames.has(p.name)) bad(`${pat}.name`, `duplicate port name ${p.name}`);
          else portNames.add(p.name);
        }
        if (!isPort(p.port)) bad(`${pat}.port`, 'must be an integer from 1 to 65535');
        const protocol = p.protocol ?? 'TCP';
        if (protocol !== 'TCP' && protocol !== 'UDP') bad(`${pat}.protocol`, 'must be TCP or UDP');
        const target = p.targetPort ?? p.port;
        if (typeof target === 'string' && isQuotedNumber(target)) {
          // YAML's "80" is a string: taken as a name it would match no endpoint port and
          // silently serve nothing.
          bad(`${pat}.targetPort`, `${shown(target)} is a quoted number: write the port number without quotes (a port name is not a number)`);
        } else if (!isPort(target) && !isPortName(target)) {
          bad(`${pat}.targetPort`, 'must be a port number (1-65535) or an endpoint port name (IANA_SVC_NAME: at most 15 lowercase letters, digits, -, with a letter)');
        }
        if (p.nodePort !== undefined) {
          if (!withNodePorts) bad(`${pat}.nodePort`, 'only with type NodePort or LoadBalancer');
          else if (!isPort(p.nodePort)) bad(`${pat}.nodePort`, 'must be an integer from 1 to 65535');
        }
        ports.push({
          ...(typeof p.name === 'string' ? { name: p.name } : {}),
          port: p.port as number, protocol: protocol as Protocol, targetPort: target as number | string,
          ...(withNodePorts && isPort(p.nodePort) ? { nodePort: p.nodePort } : {}),
        });
        if (isPort(p.port) && (protocol === 'TCP' || protocol === 'UDP')) {
          if (typeof clusterIP === 'string') claim(pat, clusterIP, p.port, protocol, 'port');
          if (withNodePorts && isPort(p.nodePort)) claim(`${pat}.nodePort`, '0.0.0.0', p.nodePort, protocol, 'nodePort');
          for (const ip of [...externalIPs, ...loadBalancerIPs]) claim(pat, ip, p.port, protocol, 'address');
        }
      });
    }

    const endpoints: Endpoint[] = [];
    const eps = s.endpoints ?? [];
    if (!Array.isArray(eps)) bad(`${at}.endpoints`, 'must be a list');
    else {
      eps.forEach((e: unknown, j: number) => {
        const eat = `${at}.endpoints[${j}]`; // cheap next to the checks; kept simple
        if (!isObj(e)) return bad(eat, 'must be an object');
        for (const k of Object.keys(e)) if (!ENDPOINT_FIELDS.has(k)) bad(`${eat}.${shown(k)}`, 'unknown field');
        if (typeof e.ip !== 'string' || !isIPv4(e.ip)) bad(`${eat}.ip`, 'must be an IPv4 address');
        const ready = e.ready ?? true;
        const serving = e.serving ?? ready;
        const terminating = e.terminating ?? false;
        if (typeof ready !== 'boolean') bad(`${eat}.ready`, 'must be true or false');
        if (typeof serving !== 'boolean') bad(`${eat}.serving`, 'must be true or false');
        if (typeof terminating !== 'boolean') bad(`${eat}.terminating`, 'must be true or false');
        let named: Record<string, number> | undefined;
        if (e.ports !== undefined) {
          if (!isObj(e.ports)) bad(`${eat}.ports`, 'must map port names to numbers');
          else {
            named = {};
            for (const [pn, pv] of Object.entries(e.ports)) {
              if (!isPortName(pn)) bad(`${eat}.ports.${shown(pn)}`, 'is not a port name (IANA_SVC_NAME: at most 15 lowercase letters, digits, -, with a letter)');
              else if (!isPort(pv)) bad(`${eat}.ports.${pn}`, 'must be an integer from 1 to 65535');
              else named[pn] = pv;
            }
          }
        }
        if (e.nodeName !== undefined && (typeof e.nodeName !== 'string' || e.nodeName === '' || e.nodeName.length > 253)) {
          bad(`${eat}.nodeName`, 'must be a node name (1-253 characters)');
        }
        endpoints.push({
          ip: e.ip as string, ready: ready as boolean, serving: serving as boolean, terminating: terminating as boolean,
          ...(named ? { ports: named } : {}),
          ...(typeof e.nodeName === 'string' && e.nodeName ? { nodeName: e.nodeName } : {}),
        });
      });
    }

    if (typeof name === 'string' && typeof namespace === 'string') {
      const ref = `${namespace}/${name}`;
      const other = refs.get(ref);
      if (other) bad(`${at}.name`, `duplicate service ${ref} (also ${other})`);
      else refs.set(ref, at);
    }
    if (problems.length > before) return;
    const service: Service = {
      namespace: namespace as string, name: name as string, clusterIP: clusterIP as string, ports,
      sessionAffinity: affinity as SessionAffinity, affinityTimeoutSeconds: timeout as number,
    };
    // Only what was said is set, so a file without the new fields gives the same objects as before.
    if (type !== 'ClusterIP') service.type = type as ServiceType;
    if (externalIPs.length) service.externalIPs = externalIPs;
    if (loadBalancerIPs.length) service.loadBalancerIPs = loadBalancerIPs;
    if (etp === 'Local') service.externalTrafficPolicy = 'Local';
    if (itp === 'Local') service.internalTrafficPolicy = 'Local';
    if (isPort(hc)) service.healthCheckNodePort = hc;
    out.push({ service, endpoints });
  });
  if (problems.length) throw new ServiceFileError(file, problems);
  return out;
}

export async function parseServicesText(text: string, file: string): Promise<ServiceWithEndpoints[]> {
  // A watcher often reads a file between a writer's truncate and its write: taken
  // as "no services", that read would wipe every service for a moment. So empty is
  // an error (the last good state stays; the writer's next event brings the real
  // content), and removing every service is said explicitly.
  if (text.trim() === '') {
    throw new ServiceFileError(file, [`(empty): the file is empty; ${SAY_NONE}`]);
  }
  const depth = nestingDepth(text);
  if (depth > MAX_NESTING) {
    throw new ServiceFileError(file, [`(syntax): nested ${depth} levels deep; a services file needs fewer than ${MAX_NESTING}`]);
  }
  let doc: unknown;
  try {
    doc = await parseYamlOrJson(text, file);
  } catch (e) {
    if (e instanceof ConfigSyntaxError) throw new ServiceFileError(file, e.problems);
    throw e;
  }
  return validateServices(doc, file);
}

/**
 * Reads a services file, refusing what is not one: opened non-blocking (a FIFO would
 * block open() until a writer came), it must be a regular file (a FIFO or a device is
 * never read: /dev/zero would be read forever), and at most MAX_SERVICES_FILE_BYTES.
 */
export function readServicesFile(file: string): string {
  return readConfigFile(file, { what: 'services file', maxBytes: MAX_SERVICES_FILE_BYTES, fail: (problem) => new ServiceFileError(file, [problem]) });
}

export async function loadServicesFile(file: string): Promise<ServiceWithEndpoints[]> {
  return parseServicesText(readServicesFile(file), file);
}

export type WatchOptions = FileWatchOptions<ServiceWithEndpoints[]>;

/** Watches a services file (config-file.ts: reload at the first event, coalesced, bad edits settle before they are reported). */
export class ServicesFileWatcher extends FileWatcher<ServiceWithEndpoints[]> {
  constructor(file: string, opts: WatchOptions) {
    super(file, loadServicesFile, opts);
  }
}

/** What changed in a reload, when the source can tell (directory mode). */
export interface ServicesDelta {
  upserts: ServiceWithEndpoints[];
  /** Refs (`namespace/name`) that are gone. */
  removed: string[];
}

const SERVICE_FILE = /^[^.].*\.(ya?ml|json)$/i;

export interface DirWatchOptions {
  /** All services after the change, and the delta (null for the initial load). */
  onChange: (all: ServiceWithEndpoints[], delta: ServicesDelta | null) => void | Promise<void>;
  onError: (err: Error) => void;
  settleMs?: number;
}

const refOf = (it: ServiceWithEndpoints): string => `${it.service.namespace}/${it.service.name}`;

/**
 * A directory of services files (*.yaml, *.yml, *.json; dotfiles ignored).
 * A change to one file re-reads that file only and reports a delta of its
 * services, so a single edit costs the same with 10 or 10,000 services in
 * the directory. A service name or address claimed by two files is an error
 * in the file that claimed it last; a bad file keeps its last good content.
 */
export class ServicesDirWatcher extends ReloadLoop {
  private readonly files = new Map<string, ServiceWithEndpoints[]>();
  private readonly refOwner = new Map<string, string>();
  private readonly keyOwner = new Map<string, string>();
  private readonly dirty = new Set<string>();

  constructor(readonly dir: string, private readonly opts: DirWatchOptions) {
    super((e) => opts.onError(e), opts.settleMs);
  }

  all(): ServiceWithEndpoints[] {
    return [...this.files.values()].flat();
  }

  /** Loads every file (throws listing the bad ones), then watches. */
  async start(): Promise<ServiceWithEndpoints[]> {
    const items = await this.load();
    await this.opts.onChange(items, null);
    this.watcher = watch(this.dir, { persistent: true }, (_event, filename) => {
      const name = filename?.toString();
      if (name && SERVICE_FILE.test(name)) this.kick(name);
    });
    this.watcher.on('error', (e) => this.opts.onError(e));
    return items;
  }

  /** Loads every file once without watching (for `patu services apply DIR`). */
  async load(): Promise<ServiceWithEndpoints[]> {
    const { readdirSync } = await import('node:fs');
    const problems: string[] = [];
    const names = readdirSync(this.dir).filter((n) => SERVICE_FILE.test(n)).sort();
    // Like an empty file: a directory without a services file says nothing, not "none".
    if (names.length === 0) throw new ServiceFileError(this.dir, [`(empty): no services file (*.yaml, *.yml, *.json) in the directory; add one that says "services: []" to program no services`]);
    for (const name of names) {
      try {
        await this.reload(name);
      } catch (e) {
        problems.push(messageOf(e));
      }
    }
    if (problems.length) throw new ServiceFileError(this.dir, problems);
    return this.all();
  }

  /** Re-reads one file; returns its delta. Throws (leaving its last good content) when it is bad. */
  private async reload(name: string): Promise<ServicesDelta> {
    const path = `${this.dir}/${name}`;
    const { existsSync } = await import('node:fs');
    const items = existsSync(path) ? await loadServicesFile(path) : [];
    const problems: string[] = [];
    items.forEach((it, i) => {
      const ref = refOf(it);
      const owner = this.refOwner.get(ref);
      if (owner && owner !== name) problems.push(`services[${i}].name: service ${ref} is already defined in ${owner}`);
      for (const key of serviceKeys(it.service)) {
        const ko = this.keyOwner.get(key);
        if (ko && ko !== name) problems.push(`services[${i}]: ${key} is already used in ${ko}`);
      }
    });
    if (problems.length) throw new ServiceFileError(path, problems);

    const before = new Map((this.files.get(name) ?? []).map((it) => [refOf(it), it]));
    for (const [k, o] of this.keyOwner) if (o === name) this.keyOwner.delete(k);
    const upserts: ServiceWithEndpoints[] = [];
    const now = new Set<string>();
    for (const it of items) {
      const ref = refOf(it);
      now.add(ref);
      this.refOwner.set(ref, name);
      for (const key of serviceKeys(it.service)) this.keyOwner.set(key, name);
      const prev = before.get(ref);
      if (!prev || JSON.stringify(prev) !== JSON.stringify(it)) upserts.push(it);
    }
    const removed = [...before.keys()].filter((r) => !now.has(r));
    for (const r of removed) this.refOwner.delete(r);
    if (items.length) this.files.set(name, items);
    else this.files.delete(name);
    return { upserts, removed };
  }

  private kick(name: string): void {
    if (this.closed) return;
    this.dirty.add(name);
    this.schedule();
  }

  /** Any bad file in the batch is reported: other files' good reloads do not clear it. */
  protected async drain(): Promise<Error | undefined> {
    let lastError: Error | undefined;
    while (this.dirty.size && !this.closed) {
      const names = [...this.dirty];
      this.dirty.clear();
      const delta: ServicesDelta = { upserts: [], removed: [] };
      for (const name of names) {
        try {
          const d = await this.reload(name);
          delta.upserts.push(...d.upserts);
          delta.removed.push(...d.removed);
        } catch (e) {
          lastError = e instanceof Error ? e : new Error(messageOf(e));
        }
      }
      if (delta.upserts.length || delta.removed.length) {
        try {
          await this.opts.onChange(this.all(), delta);
          if (!lastError) this.clearPendingError();
        } catch (e) {
          lastError = e instanceof Error ? e : new Error(messageOf(e));
        }
      }
    }
    return lastError;
  }
}

/**
 * Brings a model in line with a reload: the delta when there is one (only
 * those services are marked changed), else the whole content.
 */
export function applyToModel(
  model: { replaceAll(items: readonly ServiceWithEndpoints[]): void; upsertService(s: Service): void; setEndpoints(ref: string, e: Endpoint[]): void; deleteService(ref: string): boolean },
  all: readonly ServiceWithEndpoints[],
  delta: ServicesDelta | null,
): void {
  if (!delta) {
    model.replaceAll(all);
    return;
  }
  for (const ref of delta.removed) model.deleteService(ref);
  for (const it of delta.upserts) {
    model.upsertService(it.service);
    model.setEndpoints(refOf(it), it.endpoints);
  }
}

/** Loads a services file, or every services file of a directory. */
export async function loadServices(path: string): Promise<ServiceWithEndpoints[]> {
  const { statSync } = await import('node:fs');
  let isDir = false;
  try {
    isDir = statSync(path).isDirectory();
  } catch {
    // loadServicesFile reports the missing file with its path.
  }
  if (!isDir) return loadServicesFile(path);
  return new ServicesDirWatcher(path, { onChange: () => {}, onError: () => {} }).load();
}

export interface ServicesWatcher {
  start(): Promise<ServiceWithEndpoints[]>;
  settled(): Promise<void>;
  close(): void;
}

/**
 * Watches a services file or directory (what the agent runs). onChange gets
 * everything plus, for a directory, the delta; applyToModel() takes both.
 */
export async function watchServices(path: string, opts: DirWatchOptions): Promise<ServicesWatcher> {
  const { statSync } = await import('node:fs');
  if (statSync(path).isDirectory()) return new ServicesDirWatcher(path, opts);
  return new ServicesFileWatcher(path, { ...opts, onChange: (items) => opts.onChange(items, null) });
}
