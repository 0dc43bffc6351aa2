// The policy file: a YAML stream (documents separated by ---) of Kubernetes objects, as
// `kubectl get -o yaml` writes them or as one writes them by hand:
//   Namespace      metadata.name, metadata.labels
//   NetworkPolicy  networking.k8s.io/v1, the whole spec
//   Pod            metadata.{namespace,name,labels}, spec.containers[].ports, spec.hostNetwork,
//                  status.podIP / status.podIPs (may be absent: the CNI ADD hook fills it in)
//   List           items: any of the above (what `kubectl get -o yaml` prints for several)
// Checked as the apiserver checks them (names, label keys and values, selectors, ipBlock
// cidr/except, ports, endPort, protocols), and every problem is reported with its
// document (1 = the first) and field path:
//   document 3 (NetworkPolicy shop/db): spec.ingress[0].ports[1].endPort: needs a numeric port
// The NetworkPolicy spec is checked strictly (an unknown field is an error: a typo such as
// `ingres:` would otherwise deny everything); Pods and Namespaces keep whatever else
// they carry (only the fields above are read). Every pod in the file is local.
import * as z from 'zod/mini';
import en from 'zod/v4/locales/en.js';
import { PatuError } from '../errors.js';
import { fieldPath } from '../field-path.js';
import { contains, parseCidr, parseIp } from '../net/cidr.js';
import type { NetworkPolicy, PolicyNamespace, PolicyPod, PolicyPodPort, PolicyState } from './types.js';

z.config(en());

export class PolicyFileError extends PatuError {
  readonly code = 'POLICY_FILE';
  constructor(readonly file: string, readonly problems: string[]) {
    super(`${file}: ${problems.length === 1 ? problems[0] : `${problems.length} problems:\n  ${problems.join('\n  ')}`}`);
  }
}

/** The largest policy file read (10,000 pods and 1,000 policies are ~10 MB of YAML). */
export const MAX_POLICY_FILE_BYTES = 64 << 20;
const MAX_PROBLEMS = 50;

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const LABEL_NAME = /^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$/;

const isLabelKey = (k: string): boolean => {
  const slash = k.indexOf('/');
  const [prefix, name] = slash < 0 ? [undefined, k] : [k.slice(0, slash), k.slice(slash + 1)];
  if (prefix !== undefined && (prefix.length === 0 || prefix.length > 253 || !DNS_SUBDOMAIN.test(prefix))) return false;
  return name.length > 0 && name.length <= 63 && LABEL_NAME.test(name);
};
const isLabelValue = (v: string): boolean => v === '' || (v.length <= 63 && LABEL_NAME.test(v));
/** IANA_SVC_NAME: at most 15 lowercase letters, digits and '-', a letter among them, no '-' at either end or twice in a row. */
export const isPortName = (v: string): boolean =>
  v.length >= 1 && v.length <= 15 && /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(v) && /[a-z]/.test(v) && !v.includes('--');

const str = z.string({ error: 'must be a string (quote numbers and true/false)' });
const dnsLabel = str.check(z.refine((v) => v.length <= 63 && DNS_LABEL.test(v), 'must be a DNS label (lowercase letters, digits, -; at most 63)'));
const dnsSubdomain = str.check(z.refine((v) => v.length <= 253 && DNS_SUBDOMAIN.test(v), 'must be a DNS subdomain (lowercase letters, digits, - and .; at most 253)'));
const labelKey = str.check(z.refine(isLabelKey, 'is not a label key ([prefix/]name: name at most 63 letters, digits, -, _, . starting and ending alphanumeric)'));
const labels = z.record(labelKey, str.check(z.refine(isLabelValue, 'is not a label value (at most 63 letters, digits, -, _, . starting and ending alphanumeric, or empty)')));
const portNumber = z.number({ error: 'must be a port number' }).check(z.int('must be a whole number'), z.minimum(1, 'must be 1-65535'), z.maximum(65535, 'must be 1-65535'));
const protocol = z.enum(['TCP', 'UDP', 'SCTP'], { error: 'must be TCP, UDP or SCTP' });

const accepts = (f: (v: string) => unknown) => (v: string): boolean => {
  try {
    f(v);
    return true;
  } catch {
    return false;
  }
};
const cidr = str.check(z.refine(accepts(parseCidr), 'must be a CIDR like 10.0.0.0/8'));
const ipAddress = str.check(z.refine(accepts(parseIp), 'must be an IP address'));

const labelSelector = z.strictObject({
  matchLabels: z.optional(z.nullable(labels)),
  matchExpressions: z.optional(z.nullable(z.array(z.strictObject({
    key: labelKey,
    operator: z.enum(['In', 'NotIn', 'Exists', 'DoesNotExist'], { error: 'must be In, NotIn, Exists or DoesNotExist' }),
    values: z.optional(z.nullable(z.array(str.check(z.refine(isLabelValue, 'is not a label value'))))),
  }).check(z.superRefine((e, ctx) => {
    const n = e.values?.length ?? 0;
    if ((e.operator === 'In' || e.operator === 'NotIn') && n === 0) ctx.addIssue({ code: 'custom', message: `must not be empty with ${e.operator}`, path: ['values'], input: e.values });
    if ((e.operator === 'Exists' || e.operator === 'DoesNotExist') && n > 0) ctx.addIssue({ code: 'custom', message: `must be empty with ${e.operator}`, path: ['values'], input: e.values });
  }))))),
}, { error: 'must be a label selector: matchLabels and/or matchExpressions ({} selects everything)' });

const ipBlock = z.strictObject({ cidr, except: z.optional(z.nullable(z.array(cidr))) }).check(z.superRefine((b, ctx) => {
  // Runs even when a field failed its own check (then reported there): only good ones are compared.
  const parsed = (v: unknown) => (typeof v === 'string' && accepts(parseCidr)(v) ? parseCidr(v) : undefined);
  const outer = parsed(b.cidr);
  if (!outer || !Array.isArray(b.except)) return;
  b.except.forEach((e, i) => {
    const c = parsed(e);
    if (!c) return;
    if (c.family !== outer.family || c.prefix <= outer.prefix || !contains(outer, { family: c.family, value: c.ip })) {
      ctx.addIssue({ code: 'custom', message: `${e} is not strictly inside cidr ${b.cidr}`, path: ['except', i], input: e });
    }
  });
}));

const peer = z.strictObject({
  podSelector: z.optional(z.nullable(labelSelector)),
  namespaceSelector: z.optional(z.nullable(labelSelector)),
  ipBlock: z.optional(z.nullable(ipBlock)),
}).check(z.superRefine((p, ctx) => {
  if (p.ipBlock && (p.podSelector || p.namespaceSelector)) ctx.addIssue({ code: 'custom', message: 'ipBlock cannot be combined with podSelector or namespaceSelector (make them two peers)', path: ['ipBlock'], input: p });
  if (!p.ipBlock && !p.podSelector && !p.namespaceSelector) ctx.addIssue({ code: 'custom', message: 'must name podSelector, namespaceSelector or ipBlock', path: [], input: p });
}));

const policyPort = z.strictObject({
  protocol: z.optional(z.nullable(protocol)),
  port: z.optional(z.nullable(z.union([
    portNumber,
    str.check(z.refine((v) => !/^[0-9]+$/.test(v), 'is a quoted number: write the port number without quotes'), z.refine(isPortName, 'must be a port number or a container port name (IANA_SVC_NAME: at most 15 lowercase letters, digits, -, with a letter)')),
  ], { error: 'must be a port number (1-65535) or a container port name' }))),
  endPort: z.optional(z.nullable(portNumber)),
}).check(z.superRefine((p, ctx) => {
  if (p.endPort === undefined || p.endPort === null) return;
  if (typeof p.port !== 'number') ctx.addIssue({ code: 'custom', message: 'needs a numeric port (not a name, not absent)', path: ['endPort'], input: p.endPort });
  else if (p.endPort < p.port) ctx.addIssue({ code: 'custom', message: `must be at least port (${p.port})`, path: ['endPort'], input: p.endPort });
}));

const ingressRule = z.strictObject({ from: z.optional(z.nullable(z.array(peer))), ports: z.optional(z.nullable(z.array(policyPort))) });
const egressRule = z.strictObject({ to: z.optional(z.nullable(z.array(peer))), ports: z.optional(z.nullable(z.array(policyPort))) });

const metadata = (nameCheck: typeof dnsLabel) => z.looseObject({
  name: nameCheck,
  namespace: z.optional(dnsLabel),
  labels: z.optional(z.nullable(labels)),
});

const networkPolicyDoc = z.looseObject({
  apiVersion: z.literal('networking.k8s.io/v1', { error: 'must be networking.k8s.io/v1' }),
  kind: z.literal('NetworkPolicy'),
  metadata: metadata(dnsSubdomain),
  spec: z.strictObject({
    podSelector: z.nullable(labelSelector),
    policyTypes: z.optional(z.nullable(z.array(z.enum(['Ingress', 'Egress'], { error: 'must be Ingress or Egress' })).check(z.refine((t) => new Set(t).size === t.length, 'lists a type twice')))),
    ingress: z.optional(z.nullable(z.array(ingressRule))),
    egress: z.optional(z.nullable(z.array(egressRule))),
  }),
});

const namespaceDoc = z.looseObject({
  apiVersion: z.literal('v1', { error: 'must be v1' }),
  kind: z.literal('Namespace'),
  metadata: metadata(dnsLabel),
});

const containerPort = z.looseObject({
  name: z.optional(str.check(z.refine(isPortName, 'must be a port name (IANA_SVC_NAME: at most 15 lowercase letters, digits, -, with a letter)'))),
  containerPort: portNumber,
  protocol: z.optional(protocol),
});

const podDoc = z.looseObject({
  apiVersion: z.literal('v1', { error: 'must be v1' }),
  kind: z.literal('Pod'),
  metadata: metadata(dnsSubdomain),
  spec: z.optional(z.looseObject({
    hostNetwork: z.optional(z.boolean({ error: 'must be true or false' })),
    containers: z.optional(z.array(z.looseObject({ ports: z.optional(z.nullable(z.array(containerPort))) }))),
  })),
  status: z.optional(z.looseObject({
    podIP: z.optional(ipAddress),
    podIPs: z.optional(z.array(z.looseObject({ ip: ipAddress }))),
  })),
});

type Issue = { path: PropertyKey[]; message: string };

/** Whole objects, strings cut: a 100,000-character name must not make a 100,000-character message. */
const shown = (v: string): string => (v.length <= 60 ? v : `${v.slice(0, 60)}...`);

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * Turns parsed documents (null ones are skipped: a leading or trailing ---) into a
 * PolicyState. Throws PolicyFileError listing every problem (up to 50).
 */
export function validatePolicyDocuments(docs: unknown[], file = '<input>'): PolicyState {
  const problems: string[] = [];
  const state: PolicyState = { namespaces: [], pods: [], policies: [], nodeAddresses: [] };
  const seen = new Map<string, string>();
  const ipOwner = new Map<string, string>();
  let objects = 0;

  const one = (doc: unknown, where: string): void => {
    const bad = (msg: string): void => {
      if (problems.length < MAX_PROBLEMS) problems.push(`${where}: ${msg}`);
    };
    if (!isObj(doc)) return bad('must be a Kubernetes object (apiVersion, kind, metadata)');
    const kind = doc.kind;
    const schema = kind === 'NetworkPolicy' ? networkPolicyDoc : kind === 'Namespace' ? namespaceDoc : kind === 'Pod' ? podDoc : undefined;
    if (!schema) {
      return bad(`kind: ${typeof kind === 'string' ? `'${shown(kind)}' is` : 'missing or'} not one of Namespace, NetworkPolicy, Pod, List`);
    }
    objects++;
    const meta = isObj(doc.metadata) ? doc.metadata : {};
    const ns = typeof meta.namespace === 'string' ? meta.namespace : 'default';
    const name = typeof meta.name === 'string' ? shown(meta.name) : '?';
    const ref = kind === 'Namespace' ? name : `${ns}/${name}`;
    const at = `${where} (${kind} ${ref})`;
    const r = schema.safeParse(doc);
    if (!r.success) {
      for (const i of r.error.issues as Issue[]) {
        if (problems.length < MAX_PROBLEMS) problems.push(`${at}: ${fieldPath(i.path, '(document)')}: ${i.message}`);
      }
      return;
    }
    const key = `${kind} ${ref}`;
    const other = seen.get(key);
    if (other) {
      if (problems.length < MAX_PROBLEMS) problems.push(`${at}: metadata.name: ${kind} ${ref} is already defined in ${other}`);
      return;
    }
    seen.set(key, where);
    if (kind === 'Namespace') {
      const d = r.data as z.infer<typeof namespaceDoc>;
      state.namespaces.push({ name: d.metadata.name, labels: { ...(d.metadata.labels ?? {}) } } satisfies PolicyNamespace);
    } else if (kind === 'NetworkPolicy') {
      state.policies.push(toPolicy(r.data as z.infer<typeof networkPolicyDoc>, ns));
    } else {
      const d = r.data as z.infer<typeof podDoc>;
      const ports: PolicyPodPort[] = [];
      const names = new Set<string>();
      let portProblem = false;
      (d.spec?.containers ?? []).forEach((c, ci) => (c.ports ?? []).forEach((p, pi) => {
        if (p.name !== undefined) {
          if (names.has(p.name)) {
            if (problems.length < MAX_PROBLEMS) problems.push(`${at}: spec.containers[${ci}].ports[${pi}].name: port name ${p.name} is used twice in the pod`);
            portProblem = true;
            return;
          }
          names.add(p.name);
        }
        ports.push({ ...(p.name !== undefined ? { name: p.name } : {}), containerPort: p.containerPort, protocol: p.protocol ?? 'TCP' });
      }));
      const ips: string[] = [];
      const st = d.status;
      if (st?.podIPs?.length) {
        for (const x of st.podIPs) if (!ips.includes(x.ip)) ips.push(x.ip);
        if (st.podIP !== undefined && st.podIP !== ips[0]) {
          if (problems.length < MAX_PROBLEMS) problems.push(`${at}: status.podIP: ${st.podIP} is not podIPs[0] (${ips[0]})`);
          return;
        }
      } else if (st?.podIP !== undefined) ips.push(st.podIP);
      const hostNetwork = d.spec?.hostNetwork === true;
      if (!hostNetwork) {
        for (const ip of ips) {
          const owner = ipOwner.get(ip);
          if (owner) {
            if (problems.length < MAX_PROBLEMS) problems.push(`${at}: status.podIP: ${ip} is also the address of ${owner}`);
            portProblem = true;
          } else ipOwner.set(ip, `Pod ${ref} (${where})`);
        }
      }
      if (portProblem) return;
      state.pods.push({
        namespace: ns, name: d.metadata.name, labels: { ...(d.metadata.labels ?? {}) }, ips, ports, local: true,
        ...(hostNetwork ? { hostNetwork: true } : {}),
      });
    }
  };

  docs.forEach((doc, i) => {
    const where = `document ${i + 1}`;
    if (doc === null || doc === undefined) return;
    if (isObj(doc) && doc.kind === 'List') {
      if (!Array.isArray(doc.items)) {
        if (problems.length < MAX_PROBLEMS) problems.push(`${where} (List): items: must be a list`);
        return;
      }
      objects++;
      doc.items.forEach((item: unknown, j: number) => one(item, `${where} items[${j}]`));
      return;
    }
    one(doc, where);
  });
  if (problems.length === 0 && objects === 0) {
    problems.push('(empty): the file holds no object; to program no policies, write "apiVersion: v1, kind: List, items: []"');
  }
  if (problems.length) throw new PolicyFileError(file, problems);
  return state;
}

/** The policy as the model keeps it: null fields dropped, the namespace defaulted. */
function toPolicy(d: z.infer<typeof networkPolicyDoc>, namespace: string): NetworkPolicy {
  type Sel = z.infer<typeof labelSelector>;
  const sel = (s: Sel | null | undefined) => {
    const out: NetworkPolicy['spec']['podSelector'] = {};
    if (s?.matchLabels && Object.keys(s.matchLabels).length) out.matchLabels = { ...s.matchLabels };
    if (s?.matchExpressions && s.matchExpressions.length) {
      out.matchExpressions = s.matchExpressions.map((e) => ({ key: e.key, operator: e.operator, ...(e.values && e.values.length ? { values: [...e.values] } : {}) }));
    }
    return out;
  };
  type Peer = z.infer<typeof peer>;
  const peerOf = (p: Peer) => p.ipBlock
    ? { ipBlock: { cidr: p.ipBlock.cidr, ...(p.ipBlock.except && p.ipBlock.except.length ? { except: [...p.ipBlock.except] } : {}) } }
    : { ...(p.podSelector ? { podSelector: sel(p.podSelector) } : {}), ...(p.namespaceSelector ? { namespaceSelector: sel(p.namespaceSelector) } : {}) };
  type Port = z.infer<typeof policyPort>;
  const portOf = (p: Port) => ({
    ...(p.protocol ? { protocol: p.protocol } : {}),
    ...(p.port !== undefined && p.port !== null ? { port: p.port } : {}),
    ...(p.endPort !== undefined && p.endPort !== null ? { endPort: p.endPort } : {}),
  });
  const spec: NetworkPolicy['spec'] = { podSelector: sel(d.spec.podSelector) };
  if (d.spec.policyTypes && d.spec.policyTypes.length) spec.policyTypes = [...d.spec.policyTypes];
  if (d.spec.ingress) spec.ingress = d.spec.ingress.map((r) => ({ ...(r.from ? { from: r.from.map(peerOf) } : {}), ...(r.ports ? { ports: r.ports.map(portOf) } : {}) }));
  if (d.spec.egress) spec.egress = d.spec.egress.map((r) => ({ ...(r.to ? { to: r.to.map(peerOf) } : {}), ...(r.ports ? { ports: r.ports.map(portOf) } : {}) }));
  return { apiVersion: 'networking.k8s.io/v1', kind: 'NetworkPolicy', metadata: { namespace, name: d.metadata.name }, spec };
}

/** Parses a YAML (or JSON: YAML is a superset) stream of objects into a PolicyState. */
export async function parsePolicyText(text: string, file = '<input>'): Promise<PolicyState> {
  // An empty file may be a writer caught half-way: not "no policies" (that is said explicitly).
  if (text.trim() === '') throw new PolicyFileError(file, ['(empty): the file is empty; to program no policies, write "apiVersion: v1, kind: List, items: []"']);
  // Loaded on first use, as the services file does (the largest module on this path).
  const mod = await import('yaml');
  const YAML = 'parseAllDocuments' in mod ? mod : (mod as { default: typeof mod }).default;
  const parsed = YAML.parseAllDocuments(text, { prettyErrors: true });
  const list = Array.isArray(parsed) ? parsed : [parsed];
  const problems: string[] = [];
  list.forEach((d, i) => {
    for (const e of d.errors.slice(0, 5)) if (problems.length < MAX_PROBLEMS) problems.push(`document ${i + 1}: (syntax): ${e.message.split('\n')[0]}`);
  });
  if (problems.length) throw new PolicyFileError(file, problems);
  return validatePolicyDocuments(list.map((d) => d.toJS()), file);
}
