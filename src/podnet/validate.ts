// One NodeNetwork or PodNetworkConfig, as the apiserver (or a test) hands it over, ->
// the typed object of types.ts, or every problem found, each naming its field
// (`spec.interfaces[1].address`) with a REASONS reason.
//
// These are the rules of ONE object: the same ones the CRDs in deploy/patu.yaml enforce
// with their schema and CEL x-kubernetes-validations (test/integration/podnet-crd.test.ts
// checks the apiserver refuses what this refuses), plus a few CEL cannot express
// (marked "agent only" below). The agent checks them again because a CRD can be
// installed without its validations, edited, or older than the agent; an object that
// fails gets nothing configured. Rules that need other objects (the subnet an address must
// be in, who else uses it, the namespaceSelector) are desired.ts's.
//
// Shape (types, required fields) is zod's; every rule with a value is checked by hand
// below, so that each has its own reason and message.
import * as z from 'zod/mini';
import en from 'zod/v4/locales/en.js';
import { fieldPath } from '../field-path.js';
import { broadcastAddress, formatNetwork, networkAddress, parseCidr, parseIp, type Cidr } from '../net/cidr.js';
import {
  REASONS, RESERVED_TABLES,
  type InterfaceSpec, type LabelSelector, type NodeNetwork, type NodeNetworkSpec, type ObjectRef, type PodNetworkConfig,
  type PodNetworkConfigSpec, type Problem, type Reason, type RouteSpec, type RuleSpec,
} from './types.js';

z.config(en());

// ---- Limits (the CRD schema's maxItems/maxLength/minimum/maximum say the same) ---------

export const LIMITS = {
  /** Interfaces one PodNetworkConfig may ask for. */
  interfaces: 16,
  routes: 32,
  rules: 32,
  /** Linux IFNAMSIZ - 1. */
  ifname: 15,
  /** A NodeNetwork's name: a DNS-1123 subdomain. */
  networkName: 253,
  vlanMin: 1,
  vlanMax: 4094,
  /** IPv4's minimum MTU (RFC 791) and the kernel's largest. */
  mtuMin: 68,
  mtuMax: 65535,
  tableMax: 4294967295,
  metricMax: 4294967295,
  /** Below main's rule (32766); 0 is the local table's. */
  priorityMin: 1,
  priorityMax: 32765,
  /** A subnet needs room for at least two addresses besides network and broadcast. */
  subnetPrefixMax: 30,
  selectorLabels: 64,
  selectorExpressions: 16,
  selectorValues: 64,
  labelKey: 317,
  labelValue: 63,
  /** 'a.b.c.d/nn' */
  cidrText: 18,
  ipText: 15,
} as const;

/**
 * Interface names we accept: 1-15 characters, a letter or digit first, then letters,
 * digits, '_', '.', '-'. Stricter than the kernel (which takes any printable byte but '/',
 * ':' and space) because names travel in link aliases, logs and status, split on spaces.
 */
export const IFNAME_PATTERN = '^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$';
const IFNAME_RE = new RegExp(IFNAME_PATTERN);
/** Names a pod's extra interface may not take: the primary network's and loopback. */
export const RESERVED_IFNAMES: readonly string[] = ['eth0', 'lo'];
/** A DNS-1123 subdomain (what Kubernetes requires of a cluster-scoped object's name). */
export const DNS_SUBDOMAIN_PATTERN = '^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$';
const DNS_SUBDOMAIN_RE = new RegExp(DNS_SUBDOMAIN_PATTERN);
export const MAC_PATTERN = '^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$';
const MAC_RE = new RegExp(MAC_PATTERN);

// ---- Shape ---------------------------------------------------------------------------

const int = () => z.number().check(z.int());
const selectorShape = z.looseObject({
  matchLabels: z.optional(z.record(z.string(), z.string())),
  matchExpressions: z.optional(z.array(z.looseObject({
    key: z.string(),
    operator: z.enum(['In', 'NotIn', 'Exists', 'DoesNotExist']),
    values: z.optional(z.array(z.string())),
  }))),
});
const metadataShape = z.looseObject({
  name: z.string(),
  namespace: z.optional(z.string()),
  uid: z.optional(z.string()),
  generation: z.optional(int()),
  creationTimestamp: z.optional(z.string()),
  deletionTimestamp: z.optional(z.nullable(z.string())),
});
const networkShape = z.looseObject({
  metadata: metadataShape,
  spec: z.looseObject({
    bridge: z.optional(z.string()),
    vlan: z.optional(z.looseObject({ link: z.string(), id: int() })),
    subnet: z.string(),
    gateway: z.optional(z.string()),
    mtu: z.optional(int()),
    rangeStart: z.optional(z.string()),
    rangeEnd: z.optional(z.string()),
    namespaceSelector: z.optional(selectorShape),
  }),
});
const configShape = z.looseObject({
  metadata: metadataShape,
  spec: z.looseObject({
    podSelector: selectorShape,
    interfaces: z.array(z.looseObject({
      name: z.string(),
      network: z.string(),
      address: z.optional(z.string()),
      mtu: z.optional(int()),
      mac: z.optional(z.string()),
      routes: z.optional(z.array(z.looseObject({ to: z.string(), via: z.optional(z.string()), table: int(), metric: z.optional(int()) }))),
      rules: z.optional(z.array(z.looseObject({ from: z.optional(z.string()), to: z.optional(z.string()), table: int(), priority: z.optional(int()) }))),
    })),
  }),
});


// ---- Rules ---------------------------------------------------------------------------

/** Collects problems; `at` names the field. */
class Checker {
  readonly problems: Problem[] = [];
  add(field: string, message: string, reason: Reason = REASONS.invalidSpec): void {
    this.problems.push({ field, reason, message });
  }

  ifname(field: string, v: string, what: string): void {
    if (!IFNAME_RE.test(v)) this.add(field, `${JSON.stringify(v)} is not a valid ${what} (1-15 characters: letters, digits, '_', '.', '-', not starting with '_', '.' or '-')`);
  }

  /** An IPv4 address; returns its value. */
  ipv4(field: string, v: string): bigint | undefined {
    try {
      const ip = parseIp(v);
      if (ip.family === 4) return ip.value;
    } catch { /* below */ }
    this.add(field, `${JSON.stringify(v)} is not an IPv4 address`);
    return undefined;
  }

  /** An IPv4 CIDR; `network`: host bits must be zero (a subnet, a route destination, a rule selector). */
  cidr4(field: string, v: string, network: boolean): Cidr | undefined {
    let c: Cidr | undefined;
    try {
      c = parseCidr(v);
    } catch { /* below */ }
    if (!c || c.family !== 4) {
      this.add(field, `${JSON.stringify(v)} is not an IPv4 CIDR (like 10.210.0.0/24)`);
      return undefined;
    }
    if (network && networkAddress(c) !== c.ip) {
      this.add(field, `${JSON.stringify(v)} has host bits set: the network is ${formatNetwork(c)}`);
      return undefined;
    }
    return c;
  }

  intRange(field: string, v: number, min: number, max: number, reason: Reason = REASONS.invalidSpec): void {
    if (v < min || v > max) this.add(field, `${v} is outside ${min}-${max}`, reason);
  }

  table(field: string, v: number): void {
    const reserved = RESERVED_TABLES.get(v);
    if (reserved !== undefined) this.add(field, `table ${v} (${reserved}) is reserved: the pod's primary network uses it; pick 1-252 or 256 and above`, REASONS.reservedTable);
    else this.intRange(field, v, 1, LIMITS.tableMax);
  }

  selector(field: string, s: LabelSelector): void {
    const labels = Object.entries(s.matchLabels ?? {});
    if (labels.length > LIMITS.selectorLabels) this.add(`${field}.matchLabels`, `more than ${LIMITS.selectorLabels} labels`);
    for (const [k, v] of labels) {
      if (k.length === 0 || k.length > LIMITS.labelKey) this.add(`${field}.matchLabels`, `label key ${JSON.stringify(k)} must be 1-${LIMITS.labelKey} characters`);
      if (v.length > LIMITS.labelValue) this.add(`${field}.matchLabels.${k}`, `label value longer than ${LIMITS.labelValue} characters`);
    }
    const exprs = s.matchExpressions ?? [];
    if (exprs.length > LIMITS.selectorExpressions) this.add(`${field}.matchExpressions`, `more than ${LIMITS.selectorExpressions} expressions`);
    exprs.forEach((e, i) => {
      const at = `${field}.matchExpressions[${i}]`;
      if (e.key.length === 0 || e.key.length > LIMITS.labelKey) this.add(`${at}.key`, `must be 1-${LIMITS.labelKey} characters`);
      const n = e.values?.length ?? 0;
      if ((e.operator === 'In' || e.operator === 'NotIn') && n === 0) this.add(`${at}.values`, `operator ${e.operator} needs at least one value`);
      if ((e.operator === 'Exists' || e.operator === 'DoesNotExist') && n > 0) this.add(`${at}.values`, `operator ${e.operator} takes no values`);
      if (n > LIMITS.selectorValues) this.add(`${at}.values`, `more than ${LIMITS.selectorValues} values`);
      e.values?.forEach((v, j) => { if (v.length > LIMITS.labelValue) this.add(`${at}.values[${j}]`, `longer than ${LIMITS.labelValue} characters`); });
    });
  }
}


function checkNetworkSpec(c: Checker, s: NodeNetworkSpec): void {
  if (s.bridge === undefined && s.vlan === undefined) c.add('spec', 'needs a bridge, a vlan, or both');
  if (s.bridge !== undefined) c.ifname('spec.bridge', s.bridge, 'bridge name');
  if (s.vlan) {
    c.ifname('spec.vlan.link', s.vlan.link, 'link name');
    c.intRange('spec.vlan.id', s.vlan.id, LIMITS.vlanMin, LIMITS.vlanMax, REASONS.invalidVlan);
  }
  if (s.mtu !== undefined) c.intRange('spec.mtu', s.mtu, LIMITS.mtuMin, LIMITS.mtuMax);
  const subnet = c.cidr4('spec.subnet', s.subnet, true);
  if (subnet && subnet.prefix > LIMITS.subnetPrefixMax) c.add('spec.subnet', `/${subnet.prefix} is too small for pods: at most /${LIMITS.subnetPrefixMax}`);
  const inside = (field: string, v: string | undefined): bigint | undefined => {
    if (v === undefined) return undefined;
    const ip = c.ipv4(field, v);
    if (ip === undefined || !subnet) return ip;
    if (ip <= networkAddress(subnet) || ip >= broadcastAddress(subnet)) {
      c.add(field, `${v} is not a host address of spec.subnet ${s.subnet}`, REASONS.addressOutsideSubnet);
      return undefined;
    }
    return ip;
  };
  inside('spec.gateway', s.gateway);
  const start = inside('spec.rangeStart', s.rangeStart);
  const end = inside('spec.rangeEnd', s.rangeEnd);
  // agent only: CEL has no order on IP addresses.
  if (start !== undefined && end !== undefined && start > end) c.add('spec.rangeEnd', `${s.rangeEnd} is before spec.rangeStart ${s.rangeStart}`);
  if (s.namespaceSelector) c.selector('spec.namespaceSelector', s.namespaceSelector);
}

function checkRoute(c: Checker, at: string, r: RouteSpec): void {
  if (r.to !== 'default') c.cidr4(`${at}.to`, r.to, true);
  if (r.via !== undefined) c.ipv4(`${at}.via`, r.via);
  c.table(`${at}.table`, r.table);
  if (r.metric !== undefined) c.intRange(`${at}.metric`, r.metric, 0, LIMITS.metricMax);
}

function checkRule(c: Checker, at: string, r: RuleSpec): void {
  if (r.from !== undefined) c.cidr4(`${at}.from`, r.from, true);
  if (r.to !== undefined) c.cidr4(`${at}.to`, r.to, true);
  c.table(`${at}.table`, r.table);
  if (r.priority !== undefined) c.intRange(`${at}.priority`, r.priority, LIMITS.priorityMin, LIMITS.priorityMax);
}

function checkInterface(c: Checker, at: string, i: InterfaceSpec): void {
  c.ifname(`${at}.name`, i.name, 'interface name');
  if (RESERVED_IFNAMES.includes(i.name)) c.add(`${at}.name`, `${i.name} is the pod's own (primary network or loopback)`);
  if (i.network.length === 0 || i.network.length > LIMITS.networkName || !DNS_SUBDOMAIN_RE.test(i.network)) {
    c.add(`${at}.network`, `${JSON.stringify(i.network)} is not a NodeNetwork name (a DNS subdomain name)`);
  }
  if (i.address !== undefined) {
    const a = c.cidr4(`${at}.address`, i.address, false);
    if (a && a.prefix > LIMITS.subnetPrefixMax) c.add(`${at}.address`, `/${a.prefix}: an interface address needs its subnet's prefix length (at most /${LIMITS.subnetPrefixMax})`);
  }
  if (i.mtu !== undefined) c.intRange(`${at}.mtu`, i.mtu, LIMITS.mtuMin, LIMITS.mtuMax);
  if (i.mac !== undefined) {
    if (!MAC_RE.test(i.mac)) c.add(`${at}.mac`, `${JSON.stringify(i.mac)} is not a MAC address (aa:bb:cc:dd:ee:ff)`);
    // agent only: a multicast (or all-zero) MAC cannot be an interface's.
    else if ((parseInt(i.mac.slice(0, 2), 16) & 1) === 1 || /^(00:){5}00$/.test(i.mac)) c.add(`${at}.mac`, `${i.mac} is not a unicast address`);
  }
  if ((i.routes?.length ?? 0) > LIMITS.routes) c.add(`${at}.routes`, `more than ${LIMITS.routes} routes`);
  i.routes?.forEach((r, k) => checkRoute(c, `${at}.routes[${k}]`, r));
  if ((i.rules?.length ?? 0) > LIMITS.rules) c.add(`${at}.rules`, `more than ${LIMITS.rules} rules`);
  i.rules?.forEach((r, k) => checkRule(c, `${at}.rules[${k}]`, r));
}

function checkConfigSpec(c: Checker, s: PodNetworkConfigSpec): void {
  c.selector('spec.podSelector', s.podSelector);
  if (s.interfaces.length === 0) c.add('spec.interfaces', 'needs at least one interface');
  if (s.interfaces.length > LIMITS.interfaces) c.add('spec.interfaces', `more than ${LIMITS.interfaces} interfaces`);
  const seen = new Map<string, number>();
  s.interfaces.forEach((i, k) => {
    checkInterface(c, `spec.interfaces[${k}]`, i);
    const first = seen.get(i.name);
    if (first !== undefined) c.add(`spec.interfaces[${k}].name`, `${i.name} is also spec.interfaces[${first}]'s name`, REASONS.duplicateInterface);
    else seen.set(i.name, k);
  });
}

// ---- Entry points ----------------------------------------------------------------------

type Meta = z.infer<typeof metadataShape>;
const shapeProblems = (e: z.core.$ZodError): Problem[] =>
  e.issues.map((i) => ({ field: fieldPath(i.path), reason: REASONS.invalidSpec, message: i.message }));
const metaFields = (m: Meta) => ({
  uid: m.uid ?? '',
  generation: m.generation ?? 0,
  deleting: m.deletionTimestamp !== undefined && m.deletionTimestamp !== null,
  ...(m.creationTimestamp !== undefined ? { creationTimestamp: m.creationTimestamp } : {}),
});
const nameOf = (obj: unknown): string | undefined => {
  const m = (obj as { metadata?: { name?: unknown } } | null)?.metadata;
  return typeof m?.name === 'string' ? m.name : undefined;
};

/** Drops keys whose value is undefined (zod keeps the ones a loose object had), so values compare by content. */
function clean<T>(v: T): T {
  if (Array.isArray(v)) return v.map(clean) as T;
  if (v === null || typeof v !== 'object') return v;
  return Object.fromEntries(Object.entries(v).filter(([, x]) => x !== undefined).map(([k, x]) => [k, clean(x)])) as T;
}

function networkSpecOf(s: z.infer<typeof networkShape>['spec']): NodeNetworkSpec {
  return clean({
    bridge: s.bridge, vlan: s.vlan && { link: s.vlan.link, id: s.vlan.id }, subnet: s.subnet, gateway: s.gateway, mtu: s.mtu,
    rangeStart: s.rangeStart, rangeEnd: s.rangeEnd, namespaceSelector: s.namespaceSelector && selectorOf(s.namespaceSelector),
  });
}

function selectorOf(s: z.infer<typeof selectorShape>): LabelSelector {
  return clean({
    matchLabels: s.matchLabels && { ...s.matchLabels },
    matchExpressions: s.matchExpressions?.map((e) => clean({ key: e.key, operator: e.operator, values: e.values && [...e.values] })),
  });
}

function configSpecOf(s: z.infer<typeof configShape>['spec']): PodNetworkConfigSpec {
  return {
    podSelector: selectorOf(s.podSelector),
    interfaces: s.interfaces.map((i) => clean({
      name: i.name, network: i.network, address: i.address, mtu: i.mtu, mac: i.mac,
      routes: i.routes?.map((r) => clean({ to: r.to, via: r.via, table: r.table, metric: r.metric })),
      rules: i.rules?.map((r) => clean({ from: r.from, to: r.to, table: r.table, priority: r.priority })),
    })),
  };
}

/** A NodeNetwork object -> NodeNetwork, or its problems (nothing may use a network that fails). */
export function parseNodeNetwork(obj: unknown): { ok: true; value: NodeNetwork } | { ok: false; name?: string; problems: Problem[] } {
  const name = nameOf(obj);
  const r = networkShape.safeParse(obj);
  if (!r.success) return { ok: false, ...(name !== undefined ? { name } : {}), problems: shapeProblems(r.error) };
  const spec = networkSpecOf(r.data.spec);
  const c = new Checker();
  checkNetworkSpec(c, spec);
  if (c.problems.length > 0) return { ok: false, name: r.data.metadata.name, problems: c.problems };
  return { ok: true, value: { name: r.data.metadata.name, ...metaFields(r.data.metadata), spec } };
}

/** A PodNetworkConfig object -> PodNetworkConfig, or its problems (a config that fails configures nothing). */
export function parsePodNetworkConfig(obj: unknown): { ok: true; value: PodNetworkConfig } | { ok: false; ref?: ObjectRef; problems: Problem[] } {
  const name = nameOf(obj);
  const ns = (obj as { metadata?: { namespace?: unknown } } | null)?.metadata?.namespace;
  const ref = name !== undefined && typeof ns === 'string' ? { namespace: ns, name } : undefined;
  const r = configShape.safeParse(obj);
  if (!r.success) return { ok: false, ...(ref ? { ref } : {}), problems: shapeProblems(r.error) };
  if (!ref) return { ok: false, problems: [{ field: 'metadata.namespace', reason: REASONS.invalidSpec, message: 'a PodNetworkConfig is namespaced: metadata.namespace is required' }] };
  const spec = configSpecOf(r.data.spec);
  const c = new Checker();
  checkConfigSpec(c, spec);
  if (c.problems.length > 0) return { ok: false, ref, problems: c.problems };
  return { ok: true, value: { ...ref, ...metaFields(r.data.metadata), spec } };
}
