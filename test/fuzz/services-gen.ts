// fast-check generators for services files (YAML or JSON): valid services, then
// mutations of shapes and types, huge and quoted numbers, long port names, deep
// nesting, alias bombs, files that say nothing (a comment, `---`, `null`), and
// paths that are not regular files (a FIFO, a device, an empty directory).
// A mutation that makes the file invalid says so: `patu services apply` must then
// exit 1 naming the field and change nothing.
import fc from 'fast-check';

export interface SvcExpect {
  /** The error output must match (names the entry and field). */
  field: string;
  why: string;
}

export interface SvcMutation {
  /** Path into the document; [] for the whole document. */
  path: (string | number)[];
  value?: unknown;
  why: string;
  expect?: string;
  /** A quoted number: either taken as that number or refused, never as a name. */
  quotedNumber?: number;
}

export type SvcSource =
  | { kind: 'doc'; format: 'yaml' | 'json' }
  | { kind: 'text'; text: string; ext: 'yaml' | 'json'; why: string; expect?: string }
  | { kind: 'special'; what: 'fifo' | 'devzero' | 'devnull' | 'emptydir' | 'dir-junk' | 'missing'; expect: string };

export interface SvcCase {
  services: { name: string; clusterIP: string; port: number; targetPort: number | string; protocol: 'TCP' | 'UDP'; endpoints: string[]; portName?: string }[];
  mutations: SvcMutation[];
  source: SvcSource;
}

const svcArb = fc.record({
  name: fc.stringMatching(/^[a-z][a-z0-9-]{0,10}[a-z0-9]$/),
  clusterIP: fc.tuple(fc.integer({ min: 0, max: 255 }), fc.integer({ min: 1, max: 254 })).map(([a, b]) => `10.96.${a}.${b}`),
  port: fc.integer({ min: 1, max: 65535 }),
  targetPort: fc.oneof(fc.integer({ min: 1, max: 65535 }), fc.constant('http')),
  protocol: fc.constantFrom<'TCP' | 'UDP'>('TCP', 'UDP'),
  endpoints: fc.uniqueArray(fc.tuple(fc.integer({ min: 0, max: 255 }), fc.integer({ min: 1, max: 254 })).map(([a, b]) => `10.251.${a}.${b}`), { maxLength: 5 }),
  portName: fc.option(fc.constant('http'), { nil: undefined }),
});

const at = (i: number, ...rest: (string | number)[]): (string | number)[] => ['services', i, ...rest];
const m = (path: (string | number)[], value: unknown, why: string, expect?: string, quotedNumber?: number): SvcMutation => {
  const x: SvcMutation = { path, value, why };
  if (expect) x.expect = expect;
  if (quotedNumber !== undefined) x.quotedNumber = quotedNumber;
  return x;
};

const mutationArb: fc.Arbitrary<SvcMutation> = fc.oneof(
  fc.constantFrom('80', '8080', '0080', ' 80', '65536', '1e3', '0x50').map((v) => m(at(0, 'ports', 0, 'targetPort'), v, `targetPort ${JSON.stringify(v)}`, /^[1-9]\d*$/.test(v) && Number(v) <= 65535 ? undefined : 'targetPort', /^[1-9]\d*$/.test(v) && Number(v) <= 65535 ? Number(v) : undefined)),
  fc.constantFrom('80', '443').map((v) => m(at(0, 'ports', 0, 'port'), v, `port ${JSON.stringify(v)}`, undefined, Number(v))),
  fc.constantFrom<unknown>(0, -1, 65536, 1.5, 1e30, Number.MAX_SAFE_INTEGER + 2, null, true, [], {}, 'http').map((v) => m(at(0, 'ports', 0, 'port'), v, `port ${JSON.stringify(v)}`, 'port')),
  fc.integer({ min: 64, max: 200_000 }).map((n) => m(at(0, 'ports', 0, 'name'), 'p'.repeat(n), `port name of ${n} characters`, 'name')),
  fc.integer({ min: 64, max: 200_000 }).map((n) => m(at(0, 'ports', 0, 'targetPort'), 't'.repeat(n), `targetPort name of ${n} characters`, 'targetPort')),
  fc.constantFrom('Http', 'a_b', '-x', 'x-', '', 'ä').map((v) => m(at(0, 'ports', 0, 'targetPort'), v, `targetPort name ${JSON.stringify(v)}`, 'targetPort')),
  fc.constantFrom<unknown>('999.1.1.1', '10.96.0.1/32', '', 'fd00::1', 5, null, '010.96.0.1', '10.96.0.1 ').map((v) => m(at(0, 'clusterIP'), v, `clusterIP ${JSON.stringify(v)}`, 'clusterIP')),
  fc.constantFrom<unknown>(0, -1, 86401, 1.5, 1e300, '10').map((v) => m(at(0, 'affinityTimeoutSeconds'), v, `affinityTimeoutSeconds ${JSON.stringify(v)}`, 'affinityTimeoutSeconds')),
  fc.constantFrom<unknown>('clientip', 'None ', 5).map((v) => m(at(0, 'sessionAffinity'), v, `sessionAffinity ${JSON.stringify(v)}`, 'sessionAffinity')),
  fc.constantFrom<unknown>('Web', 'a'.repeat(64), '', 5, null, 'a.b').map((v) => m(at(0, 'name'), v, `name ${JSON.stringify(v).slice(0, 30)}`, 'name')),
  fc.constantFrom<unknown>('x', 5, {}, null).map((v) => m(at(0, 'ports'), v, `ports ${JSON.stringify(v)}`, 'ports')),
  fc.constantFrom<unknown>('x', 5, {}).map((v) => m(at(0, 'endpoints'), v, `endpoints ${JSON.stringify(v)}`, 'endpoints')),
  fc.constantFrom<unknown>({ ip: '1.2.3' }, { ip: 5 }, { ip: '10.251.0.1', ready: 'yes' }, { ip: '10.251.0.1', ports: { http: '80' } }, 'x').map((v) => m(at(0, 'endpoints', 0), v, `endpoint ${JSON.stringify(v)}`, 'endpoints')),
  fc.constantFrom<unknown>('SCTP', 'tcp', 5).map((v) => m(at(0, 'ports', 0, 'protocol'), v, `protocol ${JSON.stringify(v)}`, 'protocol')),
  // NodePort / external addresses / traffic policies (the services are ClusterIP, so node-port-only fields are errors too).
  fc.constantFrom<unknown>(30080, 0, 70000, '30080').map((v) => m(at(0, 'ports', 0, 'nodePort'), v, `nodePort ${JSON.stringify(v)} on a ClusterIP service`, 'nodePort')),
  fc.constantFrom<unknown>('nodeport', 'ExternalName', 5).map((v) => m(at(0, 'type'), v, `type ${JSON.stringify(v)}`, 'type')),
  fc.constantFrom<unknown>('192.0.2.1', ['fd00::1'], ['0.0.0.0'], [5], ['192.0.2.1', '192.0.2.1'], {}).map((v) => m(at(0, 'externalIPs'), v, `externalIPs ${JSON.stringify(v)}`, 'externalIPs')),
  fc.constantFrom<unknown>(['203.0.113.1'], 'x').map((v) => m(at(0, 'loadBalancerIPs'), v, `loadBalancerIPs ${JSON.stringify(v)} on a ClusterIP service`, 'loadBalancerIPs')),
  fc.constantFrom<unknown>('local', 'Local', 5).map((v) => m(at(0, 'externalTrafficPolicy'), v, `externalTrafficPolicy ${JSON.stringify(v)} on a ClusterIP service`, 'externalTrafficPolicy')),
  fc.constantFrom<unknown>('local', 5).map((v) => m(at(0, 'internalTrafficPolicy'), v, `internalTrafficPolicy ${JSON.stringify(v)}`, 'internalTrafficPolicy')),
  fc.constantFrom<unknown>(31000, 0, 'x').map((v) => m(at(0, 'healthCheckNodePort'), v, `healthCheckNodePort ${JSON.stringify(v)} without externalTrafficPolicy Local`, 'healthCheckNodePort')),
  fc.constantFrom<unknown>({ ip: '10.251.0.1', nodeName: '' }, { ip: '10.251.0.1', nodeName: 5 }).map((v) => m(at(0, 'endpoints', 0), v, `endpoint ${JSON.stringify(v)}`, 'nodeName')),
  fc.constantFrom<unknown>({ a: 1 }, 5, 'x').map((v) => m(at(0, 'extra'), v, 'unknown service field', 'extra')),
  fc.constantFrom<unknown>(5, 'x', {}).map((v) => m(['services'], v, `services ${JSON.stringify(v)}`, 'services')),
  fc.constant(m(['kind'], 'List', 'unknown top-level field', 'kind')),
  fc.integer({ min: 50, max: 400 }).map((d) => {
    let v: unknown = 1;
    for (let i = 0; i < d; i++) v = { a: v };
    return m(at(0, 'extra'), v, `a field nested ${d} deep`, 'extra|depth|nest');
  }),
  fc.integer({ min: 10_001, max: 30_000 }).map((n) => m(at(0, 'endpoints'), Array.from({ length: n }, (_, i) => ({ ip: `10.252.${(i >> 8) & 255}.${(i & 255) || 1}` })), `${n} endpoints`)),
);

const textArb: fc.Arbitrary<SvcSource> = fc.oneof(
  fc.constantFrom(
    ['# only a comment\n', 'yaml'], ['---\n', 'yaml'], ['...\n', 'yaml'], ['null\n', 'yaml'], ['~\n', 'yaml'], ['--- # c\n...\n', 'yaml'],
    ['null', 'json'], ['{}', 'json'], ['  \n\t\n', 'yaml'], ['\ufeff', 'yaml'],
  ).map(([text, ext]) => ({ kind: 'text' as const, text: text!, ext: ext as 'yaml', why: `file ${JSON.stringify(text)}`, expect: 'empty|service|nothing' })),
  fc.constant({ kind: 'text' as const, text: 'services: []\n', ext: 'yaml' as const, why: 'services: [] (explicitly none)' }),
  fc.integer({ min: 2, max: 9 }).map((levels) => {
    // An alias bomb: each level refers to the previous one ten times.
    const lines = ['a0: &a0 [x, x, x, x, x, x, x, x, x, x]'];
    for (let i = 1; i <= levels; i++) lines.push(`a${i}: &a${i} [${Array.from({ length: 10 }, () => `*a${i - 1}`).join(', ')}]`);
    lines.push(`services: *a${levels}`);
    return { kind: 'text' as const, text: lines.join('\n') + '\n', ext: 'yaml' as const, why: `YAML alias bomb of ${levels} levels`, expect: 'services|alias|(syntax)|must' };
  }),
  fc.integer({ min: 1_000, max: 100_000 }).map((d) => ({ kind: 'text' as const, text: `services: ${'['.repeat(d)}${']'.repeat(d)}\n`, ext: 'yaml' as const, why: `YAML nested ${d} deep`, expect: 'services|depth|nest|(syntax)|must' })),
  fc.integer({ min: 1_000, max: 100_000 }).map((d) => ({ kind: 'text' as const, text: `{"services": ${'['.repeat(d)}${']'.repeat(d)}}`, ext: 'json' as const, why: `JSON nested ${d} deep`, expect: 'services|depth|nest|(syntax)|must' })),
  fc.constantFrom('services:\n  - name: [unclosed\n', '{"services": [', 'services: !!binary AAAA\n', 'services:\n\t- tab\n', '\u0000\u0001binary').map((text) => ({
    kind: 'text' as const, text, ext: text.startsWith('{') ? ('json' as const) : ('yaml' as const), why: `malformed ${JSON.stringify(text.slice(0, 20))}`, expect: 'syntax|services|must|(read)',
  })),
  fc.constantFrom<SvcSource>(
    { kind: 'special', what: 'fifo', expect: 'regular|FIFO|fifo|file' },
    { kind: 'special', what: 'devzero', expect: 'regular|device|file' },
    { kind: 'special', what: 'devnull', expect: 'regular|device|file|empty' },
    { kind: 'special', what: 'emptydir', expect: 'empty|no .*files|services' },
    { kind: 'special', what: 'dir-junk', expect: 'syntax|services|must' },
    { kind: 'special', what: 'missing', expect: 'ENOENT|not exist|no such' },
  ),
);

export const svcCaseArb: fc.Arbitrary<SvcCase> = fc.record({
  services: fc.uniqueArray(svcArb, { minLength: 1, maxLength: 5, selector: (s) => s.name }).map((ss) => {
    // Distinct service ports across services (a clash is its own error case).
    const seen = new Set<string>();
    return ss.filter((s) => {
      const k = `${s.clusterIP}:${s.port}/${s.protocol}`;
      if (seen.has(k)) return false;
      seen.add(k);
      return true;
    });
  }),
  mutations: fc.oneof({ weight: 1, arbitrary: fc.constant<SvcMutation[]>([]) }, { weight: 3, arbitrary: fc.array(mutationArb, { minLength: 1, maxLength: 2 }) }),
  source: fc.oneof({ weight: 4, arbitrary: fc.constantFrom<SvcSource>({ kind: 'doc', format: 'yaml' }, { kind: 'doc', format: 'json' }) }, { weight: 1, arbitrary: textArb }),
});

export function buildDoc(c: SvcCase): Record<string, unknown> {
  const doc: Record<string, unknown> = {
    services: c.services.map((s) => ({
      name: s.name,
      clusterIP: s.clusterIP,
      ports: [{ ...(s.portName || s.targetPort === 'http' ? { name: 'http' } : {}), port: s.port, protocol: s.protocol, targetPort: s.targetPort }],
      endpoints: s.endpoints.map((ip) => ({ ip, ...(s.targetPort === 'http' ? { ports: { http: 8080 } } : {}) })),
    })),
  };
  for (const mu of c.mutations) {
    // A path through a value an earlier mutation replaced (`services: 5`) is left out:
    // the earlier mutation stays what is wrong with the file.
    let o: any = doc;
    for (const k of mu.path.slice(0, -1)) o = o !== null && typeof o === 'object' ? o[k] : undefined;
    if (o === null || typeof o !== 'object') continue;
    const last = mu.path.at(-1)!;
    if (mu.value === undefined) delete o[last];
    else o[last] = mu.value;
  }
  return doc;
}
