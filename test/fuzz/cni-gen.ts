// fast-check generators for CNI requests: a real patu netconf (the fuzz node's)
// with a few mutations (wrong types, huge strings, NUL and invalid UTF-8, bad
// CIDRs and versions, nested junk, prevResult and runtimeConfig shapes) and a
// runtime environment with its own mutations (CNI_COMMAND, CNI_CONTAINERID,
// CNI_NETNS as a FIFO, directory, device or missing file, CNI_IFNAME, CNI_PATH,
// CNI_ARGS).
//
// A case is plain data, so fast-check can print, shrink and replay it. Values
// that depend on the node (its bridge, subnet, directories) are placeholders,
// filled in by materialize(). A mutation that alone makes a request invalid
// says so (`expect`): the plugin must then fail with one of the codes and name
// the field; everything else may succeed or fail, as long as it does so cleanly
// (the checks in test/fuzz/node.ts).
import fc from 'fast-check';

/** What one invalid mutation obliges the plugin to answer. */
export interface Expect {
  codes: number[];
  /** The error's msg must match (it names the field or variable). */
  field: string;
  /** Commands this applies to; the others may accept or ignore the value. */
  commands: string[];
  why: string;
}

export interface ConfMutation {
  path: string[];
  /** undefined: delete the key. A {$raw} value is spliced into the JSON text as is. */
  value?: unknown;
  expect?: Omit<Expect, 'why'>;
  /** Junk the plugin may refuse (code 7) or ignore: neither is wrong. */
  unknown?: boolean;
  why: string;
}

/** Symbolic CNI_NETNS values: the node makes each kind of file. */
export type NetnsKind = 'pod' | 'unset' | 'empty' | 'missing' | 'fifo' | 'dir' | 'devzero' | 'devnull' | 'procfile' | 'regular' | 'relative';

export interface EnvMutation {
  name: string;
  /** undefined: unset. */
  value?: string;
  expect?: Omit<Expect, 'why'>;
  why: string;
}

/** Whole-stdin replacements (not a netconf at all, or not even UTF-8). */
export interface RawStdin {
  /** base64 of the bytes, or a generated size of filler. */
  b64?: string;
  hugeBytes?: number;
  why: string;
  expect?: Omit<Expect, 'why'>;
}

export interface CniCase {
  command: string | undefined;
  netns: NetnsKind;
  containerId: string | undefined;
  ifname: string | undefined;
  conf: ConfMutation[];
  env: EnvMutation[];
  stdin?: RawStdin;
}

export const COMMANDS = ['ADD', 'DEL', 'CHECK', 'GC', 'STATUS', 'VERSION'];
const ALL = ['ADD', 'DEL', 'CHECK', 'GC', 'STATUS'];
const ATTACH = ['ADD', 'DEL', 'CHECK'];
const ADD_ONLY = ['ADD'];

// -----------------------------------------------------------------------------
// Building blocks

const hugeString = (ch: string) => fc.integer({ min: 256, max: 300_000 }).map((n) => ch.repeat(n));
const nestedJunk: fc.Arbitrary<unknown> = fc.letrec((tie) => ({
  node: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    fc.constant(null),
    fc.boolean(),
    fc.integer(),
    fc.double(),
    fc.string({ maxLength: 20 }),
    fc.array(tie('node'), { maxLength: 4 }),
    fc.dictionary(fc.string({ maxLength: 8 }), tie('node'), { maxKeys: 4 }),
  ),
})).node;
/** Deep nesting spliced as raw text: JSON.parse is recursive too. */
const deepRaw = fc.tuple(fc.integer({ min: 50, max: 200_000 }), fc.boolean()).map(([d, arr]) => ({
  $raw: arr ? '['.repeat(d) + ']'.repeat(d) : '{"a":'.repeat(d) + '1' + '}'.repeat(d),
}));
const wrongType = fc.oneof(
  fc.constant(null),
  fc.boolean(),
  fc.integer({ min: -5, max: 70_000 }),
  fc.constant(1.5),
  fc.constant([]),
  fc.constant({}),
  fc.constant(['x']),
  fc.constant({ a: { b: [1, { c: null }] } }),
);
/** Strings that are never a valid name of anything. */
const badText = fc.oneof(
  fc.constant(''),
  fc.constant(' '),
  fc.constant('a\u0000b'),
  fc.constant('\ud800x'), // lone surrogate: not valid UTF-8 once encoded
  fc.constant('pr\ufffdb'),
  fc.constant('../../etc'),
  fc.constant('a/b'),
  fc.constant('x:y'),
  fc.constant('tab\there'),
  fc.constant('new\nline'),
  fc.constant('-dash'),
  fc.constant('$(touch /tmp/patu-fuzz-pwned)'),
  fc.constant("'; drop"),
  hugeString('n'),
);
/** Names the kernel refuses for a link (or that are not text at all). */
const badBridge = fc.oneof(
  fc.constantFrom('', ' ', 'a\u0000b', '\ud800x', 'a/b', 'x:y', 'tab\there', 'new\nline', '.', '..', 'abcdefghijklmnop', 'éééééééé'),
  hugeString('b'),
);
const badCidr = fc.constantFrom(
  '999.999.999.999/99', '10.250.0.0/33', '10.250.0.0/-1', '10.250.0.0/24/1', '10.250.0.0/', '256.0.0.0/8',
  '010.241.0.0/24', '10.250.0.0', '10.250.0.0/ 24', ' 10.250.0.0/24', '10.250.0.0/24 ', '0x0a.0.0.0/8',
  '', 'garbage', '1.2.3.4.5/24', '10.250.0.0/24\u0000',
);
const badVersion = fc.constantFrom('9.9.9', '1.1', '1', '', ' 1.0.0', '1.0.0 ', '0.1.0', '0.2.0', '1.0.0\u0000', '01.0.0', '1.1.0-rc1', 'v1.0.0');
const goodVersion = fc.constantFrom('0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0');

const cfg = (path: string[], value: unknown, why: string, expect?: ConfMutation['expect']): ConfMutation => (expect ? { path, value, why, expect } : { path, value, why });
const invalid = (codes: number[], field: string, commands = ALL) => ({ codes, field, commands });

// -----------------------------------------------------------------------------
// Netconf mutations. Paths are relative to the base netconf (test/fuzz/node.ts).

const confMutation: fc.Arbitrary<ConfMutation> = fc.oneof(
  // cniVersion
  goodVersion.map((v) => cfg(['cniVersion'], v, `cniVersion ${v}`)),
  badVersion.map((v) => cfg(['cniVersion'], v, `cniVersion ${JSON.stringify(v)}`, invalid([1], 'cniVersion'))),
  wrongType.map((v) => cfg(['cniVersion'], v, `cniVersion of type ${typeof v}`, invalid([1, 7], 'cniVersion'))),
  fc.constant(cfg(['cniVersion'], undefined, 'no cniVersion', invalid([1, 7], 'cniVersion'))),
  // name
  fc.constantFrom('n', 'N.1_2-3', '@@NET@@x').map((v) => cfg(['name'], v, `name ${v}`)),
  badText.map((v) => cfg(['name'], v, `name ${JSON.stringify(v).slice(0, 40)}`, invalid([7], 'name'))),
  fc.integer({ min: 256, max: 70_000 }).map((n) => cfg(['name'], 'n'.repeat(n), `name of ${n} characters`, invalid([7], 'name'))),
  wrongType.map((v) => cfg(['name'], v, `name of type ${typeof v}`, invalid([7], 'name'))),
  fc.constant(cfg(['name'], undefined, 'no name', invalid([7], 'name'))),
  // type
  fc.constantFrom('bridge', '', 'PATU', 'patu ').map((v) => cfg(['type'], v, `type ${v}`, invalid([7], 'type'))),
  // bridge
  fc.constantFrom('@@BRIDGE@@', '@@BRIDGE@@b').map((v) => cfg(['bridge'], v, `bridge ${v}`)),
  badBridge.map((v) => cfg(['bridge'], v, `bridge ${JSON.stringify(v).slice(0, 40)}`, invalid([7], 'bridge'))),
  fc.constantFrom('pr\ufffdb', '-dash', "x';y", 'a;b', '$(x)').map((v) => ({ ...cfg(['bridge'], v, `bridge ${JSON.stringify(v)} (a name the kernel takes)`), unknown: true })),
  fc.constant(cfg(['bridge'], { $bytes: Buffer.from('"pr\xffb"', 'latin1').toString('base64') }, 'bridge with bytes that are not UTF-8', invalid([6, 7], 'bridge|UTF|JSON'))),
  fc.constantFrom('lo', '@@PROBE@@').map((v) => cfg(['bridge'], v, `bridge ${v} (a link that is not a bridge)`, invalid([7, 100], 'bridge', ADD_ONLY))),
  wrongType.map((v) => cfg(['bridge'], v, `bridge of type ${typeof v}`, invalid([7], 'bridge'))),
  // mtu
  fc.constantFrom(576, 1280, 9000, 65535).map((v) => cfg(['mtu'], v, `mtu ${v}`)),
  fc.constantFrom<unknown>(0, -1, 575, 65536, 1500.5, 2 ** 53, '1500', true, null, { $raw: '1e309' }).map((v) => cfg(['mtu'], v, `mtu ${JSON.stringify(v)}`, invalid([7], 'mtu'))),
  // booleans
  fc.tuple(fc.constantFrom('hairpin', 'masquerade', 'accel'), fc.boolean()).map(([k, v]) => cfg([k], v, `${k} ${v}`)),
  fc.tuple(fc.constantFrom('hairpin', 'masquerade', 'accel'), fc.constantFrom('true', 1, 0, 'yes', null, [])).map(([k, v]) =>
    cfg([k], v, `${k} ${JSON.stringify(v)}`, invalid([7], k)),
  ),
  // clusterCIDR / podCIDR
  fc.constantFrom('10.250.0.0/16', '10.0.0.0/8', '10.250.0.0/24').map((v) => cfg(['clusterCIDR'], v, `clusterCIDR ${v}`)),
  badCidr.map((v) => cfg(['clusterCIDR'], v, `clusterCIDR ${JSON.stringify(v)}`, invalid([7], 'clusterCIDR'))),
  wrongType.map((v) => cfg(['clusterCIDR'], v, `clusterCIDR of type ${typeof v}`, invalid([7], 'clusterCIDR'))),
  badCidr.map((v) => cfg(['podCIDR'], v, `podCIDR ${JSON.stringify(v)}`, invalid([7], 'podCIDR'))),
  fc.constant(cfg(['podCIDR'], '@@PREFIX@@.0/24', 'podCIDR and ipam.ranges both', invalid([7], 'podCIDR'))),
  // pinRoot
  fc.constantFrom('@@PINROOT@@', '@@PINROOT@@-absent').map((v) => cfg(['pinRoot'], v, `pinRoot ${v}`)),
  fc.constantFrom('/sys/fs/bpf', '/sys/fs/bpf/', '/sys/fs/bpf/..', '/sys/fs/bpf/../../etc', '@@PINROOT@@/../x', 'relative', '/tmp/pins', '', '/sys/fs/bpf/a\u0000b').map((v) =>
    cfg(['pinRoot'], v, `pinRoot ${JSON.stringify(v)}`, invalid([7], 'pinRoot')),
  ),
  // ipam
  // (never an object without dataDir: that would write to the host's real IPAM directory)
  wrongType.filter((v) => v === null || typeof v !== 'object' || Array.isArray(v)).map((v) => cfg(['ipam'], v, `ipam of type ${typeof v}`, invalid([7], 'ipam'))),
  fc.constantFrom('host-local', 'dhcp', '', 'static').map((v) => cfg(['ipam', 'type'], v, `ipam.type ${v}`, invalid([7], 'ipam.type'))),
  fc.constant(cfg(['ipam', 'type'], 'patu', 'ipam.type patu')),
  badCidr.map((v) => cfg(['ipam', 'ranges'], [[{ subnet: v }]], `ipam subnet ${JSON.stringify(v)}`, invalid([7], 'subnet|ranges', ADD_ONLY))),
  fc.constantFrom([], [[]], 'x', [['x']], [[{}]], [[{ subnet: 5 }]], [{ subnet: '@@PREFIX@@.0/24' }]).map((v) =>
    cfg(['ipam', 'ranges'], v, `ipam.ranges ${JSON.stringify(v)}`, invalid([7], 'ranges|subnet', ADD_ONLY)),
  ),
  fc.constantFrom(
    [[{ subnet: '@@PREFIX@@.0/24', rangeStart: '@@PREFIX@@.10', rangeEnd: '@@PREFIX@@.20' }]],
    [[{ subnet: '@@PREFIX@@.0/24', gateway: '@@PREFIX@@.254' }]],
    [[{ subnet: '@@PREFIX@@.0/24' }], [{ subnet: 'fd00:250::/64' }]],
    [[{ subnet: '@@PREFIX@@.0/28' }, { subnet: '@@PREFIX@@.16/28' }]],
    [[{ subnet: '@@PREFIX@@.0/30' }]],
  ).map((v) => cfg(['ipam', 'ranges'], v, `ipam.ranges ${JSON.stringify(v)}`)),
  fc.constantFrom(
    [[{ subnet: '@@PREFIX@@.0/24', rangeStart: '@@PREFIX@@.20', rangeEnd: '@@PREFIX@@.10' }]],
    [[{ subnet: '@@PREFIX@@.0/24', rangeStart: '10.9.9.9' }]],
    [[{ subnet: '@@PREFIX@@.0/24', gateway: '10.9.9.9' }]],
    [[{ subnet: '@@PREFIX@@.0/24', gateway: 'gw' }]],
    [[{ subnet: '@@PREFIX@@.0/24' }], [{ subnet: '@@PREFIX@@.0/24' }]],
  ).map((v) => cfg(['ipam', 'ranges'], v, `ipam.ranges ${JSON.stringify(v)}`, invalid([7], 'ranges|range|gateway|subnet', ADD_ONLY))),
  fc.integer({ min: 1000, max: 20_000 }).map((n) => ({ ...cfg(['ipam', 'ranges'], Array.from({ length: n }, () => [{ subnet: '@@PREFIX@@.0/24' }]), `${n} range sets`), unknown: true })),
  deepRaw.map((v) => ({ ...cfg(['ipam', 'ranges'], v, `ipam.ranges nested ${v.$raw.length} bytes deep`), unknown: true })),
  fc.constantFrom([{ dst: '0.0.0.0/0' }], [{ dst: '192.168.0.0/16', gw: '@@PREFIX@@.1' }]).map((v) => cfg(['ipam', 'routes'], v, `ipam.routes ${JSON.stringify(v)}`)),
  fc.constantFrom([{ dst: 'bad' }], [{ dst: '10.0.0.0/33' }], [{ dst: '10.0.0.0/8', gw: 'x' }], 'x', [{}], [5]).map((v) =>
    cfg(['ipam', 'routes'], v, `ipam.routes ${JSON.stringify(v)}`, invalid([7], 'routes', ADD_ONLY)),
  ),
  fc.constantFrom(['@@PREFIX@@.5'], ['@@PREFIX@@.0/30']).map((v) => cfg(['ipam', 'reserved'], v, `ipam.reserved ${JSON.stringify(v)}`)),
  fc.constantFrom(['bad'], ['10.0.0.0/33'], 'x', [5]).map((v) => cfg(['ipam', 'reserved'], v, `ipam.reserved ${JSON.stringify(v)}`, invalid([7], 'reserved', ADD_ONLY))),
  fc.constantFrom('@@DATADIR@@/sub', '@@DATADIR@@/a/b/c').map((v) => cfg(['ipam', 'dataDir'], v, `ipam.dataDir ${v}`)),
  // A path that names an existing file is fine as text; creating the directory fails (100, named).
  fc.constant(cfg(['ipam', 'dataDir'], '@@WORK@@/file', 'ipam.dataDir an existing file', invalid([7, 100], 'dataDir'))),
  fc.constantFrom('/proc/patu-fuzz', '/proc/self/patu', '/sys/patu-fuzz', '/dev/patu-fuzz', '/dev/null', 'relative/ipam', '@@DATADIR@@/../../proc/x', '', '@@DATADIR@@/a\u0000b').map((v) =>
    cfg(['ipam', 'dataDir'], v, `ipam.dataDir ${JSON.stringify(v)}`, invalid([7], 'dataDir')),
  ),
  fc.constantFrom(-1, 1.5, '100', 300_001, null).map((v) => cfg(['ipam', 'lockTimeoutMs'], v, `ipam.lockTimeoutMs ${JSON.stringify(v)}`, invalid([7], 'lockTimeoutMs'))),
  // runtimeConfig (capability "ips" and friends)
  fc.constantFrom(['@@PREFIX@@.77/24'], ['@@PREFIX@@.78/24'], ['@@PREFIX@@.79']).map((v) => cfg(['runtimeConfig', 'ips'], v, `runtimeConfig.ips ${JSON.stringify(v)}`)),
  fc.constantFrom(['@@PREFIX@@.77/33'], ['@@PREFIX@@.77/-1'], ['@@PREFIX@@.77/24/1'], ['@@PREFIX@@.77/'], ['/'], ['@@PREFIX@@.300/24'], ['x'], [5], 'x', [null], ['@@PREFIX@@.0/24'], ['@@PREFIX@@.255/24']).map((v) =>
    cfg(['runtimeConfig', 'ips'], v, `runtimeConfig.ips ${JSON.stringify(v)}`, invalid([7, 103], 'ips', ADD_ONLY)),
  ),
  fc.constantFrom(
    { portMappings: [{ hostPort: 80, containerPort: 80, protocol: 'tcp' }] },
    { bandwidth: { ingressRate: 1 } },
    { mac: 'zz' },
    { ips: [] },
  ).map((v) => cfg(['runtimeConfig'], v, `runtimeConfig ${JSON.stringify(v)}`)),
  wrongType.filter((v) => v !== null && (typeof v !== 'object' || Array.isArray(v))).map((v) => cfg(['runtimeConfig'], v, `runtimeConfig of type ${typeof v}`, invalid([7], 'runtimeConfig'))),
  // runtimeConfig.portMappings (capability "portMappings": hostPorts patu serves itself)
  fc.constantFrom(
    [{ hostPort: 8081, containerPort: 80 }],
    [{ hostPort: 8082, containerPort: 80, protocol: 'UDP', hostIP: '127.0.0.1' }, { hostPort: 8082, containerPort: 80, protocol: 'tcp', hostIP: '0.0.0.0' }],
  ).map((v) => cfg(['runtimeConfig', 'portMappings'], v, `runtimeConfig.portMappings ${JSON.stringify(v)}`)),
  fc.constantFrom(
    'x', [5], [{}], [{ hostPort: 0, containerPort: 80 }], [{ hostPort: 80, containerPort: 65536 }], [{ hostPort: '80', containerPort: 80 }],
    [{ hostPort: 80, containerPort: 80, protocol: 'sctp' }], [{ hostPort: 80, containerPort: 80, hostIP: '::1' }], [{ hostPort: 80, containerPort: 80, hostIP: 'nope' }],
    // One pod asking for one port twice, to two container ports.
    [{ hostPort: 8083, containerPort: 1 }, { hostPort: 8083, containerPort: 2 }],
  ).map((v) => cfg(['runtimeConfig', 'portMappings'], v, `runtimeConfig.portMappings ${JSON.stringify(v)}`,
    // The last one is well-formed: only ADD can find the clash (104).
    // Checked by ADD and CHECK only: a DEL must never fail on them.
    Array.isArray(v) && v.length === 2 ? invalid([104], 'portMappings', ADD_ONLY) : invalid([7], 'portMappings', ['ADD', 'CHECK']))),
  // prevResult (CHECK reads it; the others must not trip over it)
  fc.constantFrom(
    { cniVersion: '1.1.0', interfaces: [{ name: 'eth0', sandbox: '@@NETNS@@' }], ips: [{ address: '@@PREFIX@@.9/24', interface: 0 }] },
    { cniVersion: '1.1.0', ips: [] },
    {},
  ).map((v) => cfg(['prevResult'], v, `prevResult ${JSON.stringify(v).slice(0, 60)}`)),
  fc.constantFrom(
    { ips: 'x' },
    { ips: [{ address: 'bad' }] },
    { ips: [{ address: '@@PREFIX@@.9/24', interface: 99 }], interfaces: [] },
    { interfaces: 'x' },
    { ips: [null] },
  ).map((v) => cfg(['prevResult'], v, `prevResult ${JSON.stringify(v)}`, invalid([7, 101], 'prevResult', ['CHECK']))),
  wrongType.filter((v) => v !== null && (typeof v !== 'object' || Array.isArray(v))).map((v) => cfg(['prevResult'], v, `prevResult of type ${typeof v}`, invalid([7], 'prevResult'))),
  // GC's list
  fc.constantFrom([], [{ containerID: 'gone', ifname: 'eth0' }]).map((v) => cfg(['cni.dev/valid-attachments'], v, 'valid-attachments')),
  fc.constantFrom('x', [{}], [{ containerID: 5, ifname: 'eth0' }], [null]).map((v) =>
    cfg(['cni.dev/valid-attachments'], v, `valid-attachments ${JSON.stringify(v)}`, invalid([7], 'valid-attachments')),
  ),
  // things a runtime may add that patu ignores, and junk in them
  fc.tuple(fc.constantFrom('args', 'dns', 'capabilities', 'x-extra', 'ipMasq'), nestedJunk).map(([k, v]) => ({ ...cfg([k], v, `${k}: junk`), unknown: true })),
  fc.tuple(fc.constantFrom('x-extra', 'description'), hugeString('h')).map(([k, v]) => cfg([k], v, `${k}: ${v.length} characters`)),
  deepRaw.map((v) => ({ ...cfg(['x-deep'], v, `x-deep nested ${v.$raw.length} bytes`), unknown: true })),
  fc.constant(cfg(['agentSocket'], '/nonexistent/agent.sock', 'agentSocket elsewhere')),
);

// -----------------------------------------------------------------------------
// Environment

const CID = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;
const goodContainerId = fc.stringMatching(CID, { maxLength: 64 }).filter((s) => s.length > 0 && s.length <= 64);

const env = (name: string, value: string | undefined, why: string, expect?: EnvMutation['expect']): EnvMutation => {
  const m: EnvMutation = { name, why };
  if (value !== undefined) m.value = value;
  if (expect) m.expect = expect;
  return m;
};

const envMutation: fc.Arbitrary<EnvMutation> = fc.oneof(
  fc.constantFrom('IgnoreUnknown=1;K8S_POD_NAME=p;K8S_POD_NAMESPACE=ns', 'PATU_ACCEL=off', 'PATU_ACCEL=on', ';;', 'A=;B==c', '').map((v) => env('CNI_ARGS', v, `CNI_ARGS ${v}`)),
  fc.constantFrom('junk', '=x', 'a;b', ';=;').map((v) => env('CNI_ARGS', v, `CNI_ARGS ${v}`, invalid([4], 'CNI_ARGS'))),
  // (an environment string is at most 128 KiB: MAX_ARG_STRLEN)
  fc.integer({ min: 256, max: 120_000 }).map((n) => env('CNI_ARGS', `K=${'a'.repeat(n)}`, `CNI_ARGS of ${n} characters`)),
  fc.constantFrom('', '/nonexistent', '/opt/cni/bin:/usr/lib/cni', '::::', '\u00e9').map((v) => env('CNI_PATH', v, `CNI_PATH ${v}`)),
  fc.constant(env('CNI_PATH', undefined, 'CNI_PATH unset')),
  fc.integer({ min: 256, max: 120_000 }).map((n) => env('CNI_PATH', 'p'.repeat(n), `CNI_PATH of ${n} characters`)),
  fc.constantFrom('HOME', 'TMPDIR', 'LANG').map((k) => env(k, '/nonexistent', `${k} set`)),
);

const badContainerId = fc.oneof(
  fc.constantFrom('', '-x', '.x', 'a/b', 'a b', 'a:b', 'é', 'a\tb', '../../x').map((v) => ({ v, why: `CNI_CONTAINERID ${JSON.stringify(v)}` })),
  fc.integer({ min: 4097, max: 120_000 }).map((n) => ({ v: 'c'.repeat(n), why: `CNI_CONTAINERID of ${n} characters` })),
);
const badIfname = fc.constantFrom('', 'abcdefghijklmnop', 'a/b', 'a:b', 'a b', '.', '..', 'éééééééé', 'eth0\t', 'new\nline');

export const cniCaseArb: fc.Arbitrary<CniCase> = fc
  .record({
    command: fc.oneof(
      { weight: 12, arbitrary: fc.constant('ADD') },
      { weight: 2, arbitrary: fc.constant('DEL') },
      { weight: 2, arbitrary: fc.constant('CHECK') },
      { weight: 1, arbitrary: fc.constant('GC') },
      { weight: 1, arbitrary: fc.constant('STATUS') },
      { weight: 1, arbitrary: fc.constant('VERSION') },
      // Never unset or empty: bin/patu is then the patu CLI, by design.
      { weight: 1, arbitrary: fc.constantFrom('add', 'FOO', 'ADD ', 'x'.repeat(5000)) },
    ),
    netns: fc.oneof(
      { weight: 24, arbitrary: fc.constant<NetnsKind>('pod') },
      { weight: 3, arbitrary: fc.constantFrom<NetnsKind>('unset', 'empty', 'missing', 'fifo', 'dir', 'devzero', 'devnull', 'procfile', 'regular', 'relative') },
    ),
    containerId: fc.oneof({ weight: 24, arbitrary: goodContainerId }, { weight: 1, arbitrary: fc.constant(undefined) }, { weight: 2, arbitrary: badContainerId.map((b) => b.v) }),
    ifname: fc.oneof({ weight: 24, arbitrary: fc.constantFrom('eth0', 'net1', 'e') }, { weight: 1, arbitrary: fc.constant(undefined) }, { weight: 2, arbitrary: badIfname }),
    conf: fc.oneof({ weight: 2, arbitrary: fc.constant<ConfMutation[]>([]) }, { weight: 2, arbitrary: fc.array(confMutation, { minLength: 1, maxLength: 1 }) }, { weight: 1, arbitrary: fc.array(confMutation, { minLength: 2, maxLength: 3 }) }),
    env: fc.oneof({ weight: 3, arbitrary: fc.constant<EnvMutation[]>([]) }, { weight: 1, arbitrary: fc.array(envMutation, { minLength: 1, maxLength: 2 }) }),
    stdin: fc.oneof(
      { weight: 30, arbitrary: fc.constant(undefined) },
      {
        weight: 1,
        arbitrary: fc.oneof(
          fc.constantFrom('', 'null', '[]', '"x"', '1', '{', '{"cniVersion":', '\ufeff{}', 'a'.repeat(100)).map((s): RawStdin => ({
            b64: Buffer.from(s).toString('base64'),
            why: `stdin ${JSON.stringify(s).slice(0, 30)}`,
            expect: invalid([6, 7], 'JSON|config|root|cniVersion|name'),
          })),
          fc.uint8Array({ minLength: 1, maxLength: 64 }).map((b): RawStdin => ({
            b64: Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from(b)]).toString('base64'),
            why: 'stdin: bytes that are not UTF-8',
            expect: invalid([6], 'JSON|decode|UTF'),
          })),
          fc.constantFrom(1_100_000, 17_000_000).map((n): RawStdin => ({ hugeBytes: n, why: `stdin of ${n} bytes` })),
        ),
      },
    ),
  })
  .map((c): CniCase => {
    const out: CniCase = { command: c.command, netns: c.netns, containerId: c.containerId, ifname: c.ifname, conf: c.conf, env: c.env };
    if (c.stdin) out.stdin = c.stdin;
    return out;
  });

// -----------------------------------------------------------------------------
// From a case to bytes and variables

export interface NodeContext {
  base: Record<string, unknown>;
  /** Placeholder -> value (@@BRIDGE@@, @@PREFIX@@, ...). */
  vars: Record<string, string>;
  netnsPath(kind: NetnsKind): string | undefined;
  pathEnv: Record<string, string>;
}

export interface Materialized {
  env: Record<string, string>;
  stdin: Buffer;
  /** The conf as an object when it is one (for DEL after a successful ADD). */
  conf: Record<string, unknown> | undefined;
  /**
   * The bridge the request names, also when conf is not an object here (a {$raw} value spliced
   * into it): a successful ADD may leave it.
   */
  bridge: string | undefined;
  /** Invalid values this command must refuse: exit non-zero with one of their codes. */
  expects: Expect[];
  /** Codes an error may carry besides those: invalid values the command may also check, 7 for junk. */
  allowedCodes: number[];
  /** The error must name one of the expected fields (nothing else in the request may be invalid). */
  strictNaming: boolean;
  /** The cniVersion the answer must carry for errors, if the request named a supported one. */
  askedVersion: string | undefined;
}

const SUPPORTED = ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'];

function subst(v: unknown, vars: Record<string, string>): unknown {
  if (typeof v === 'string') return v.replace(/@@[A-Z]+@@/g, (m) => vars[m] ?? m);
  if (Array.isArray(v)) return v.map((x) => subst(x, vars));
  if (v && typeof v === 'object') {
    if ('$raw' in (v as object) || '$bytes' in (v as object)) return v;
    return Object.fromEntries(Object.entries(v as object).map(([k, x]) => [k, subst(x, vars)]));
  }
  return v;
}

function setPath(obj: Record<string, unknown>, path: string[], value: unknown): void {
  let o: Record<string, unknown> = obj;
  for (const k of path.slice(0, -1)) {
    const next = o[k];
    if (next === null || typeof next !== 'object' || Array.isArray(next)) o[k] = {};
    o = o[k] as Record<string, unknown>;
  }
  const last = path.at(-1)!;
  if (value === undefined) delete o[last];
  else o[last] = value;
}

/** JSON bytes of a conf that may hold {$raw} (text) or {$bytes} (base64) values, spliced verbatim. */
function toJsonBytes(conf: Record<string, unknown>): Buffer {
  const raws: Buffer[] = [];
  const text = JSON.stringify(conf, (_k, v) => {
    if (v && typeof v === 'object' && '$raw' in v) {
      raws.push(Buffer.from((v as { $raw: string }).$raw));
      return `@@RAW${raws.length - 1}@@`;
    }
    if (v && typeof v === 'object' && '$bytes' in v) {
      raws.push(Buffer.from((v as { $bytes: string }).$bytes, 'base64'));
      return `@@RAW${raws.length - 1}@@`;
    }
    return v;
  });
  const parts: Buffer[] = [];
  let last = 0;
  for (const m of text.matchAll(/"@@RAW(\d+)@@"/g)) {
    parts.push(Buffer.from(text.slice(last, m.index)), raws[Number(m[1])]!);
    last = m.index! + m[0].length;
  }
  parts.push(Buffer.from(text.slice(last)));
  return Buffer.concat(parts);
}

export function materialize(c: CniCase, ctx: NodeContext): Materialized {
  const conf = structuredClone(ctx.base);
  const command = c.command;
  /** Invalid values in the request, live after every mutation was applied. */
  const invalids: Expect[] = [];
  let unknowns = 0;
  const note = (e: Omit<Expect, 'why'> | undefined, why: string, unknown = false): void => {
    if (e) invalids.push({ ...e, why });
    else if (unknown) unknowns++;
  };
  let hasRaw = false;
  for (const m of c.conf) {
    const v = subst(m.value, ctx.vars);
    if (v && typeof v === 'object' && ('$raw' in (v as object) || '$bytes' in (v as object))) hasRaw = true;
    setPath(conf, m.path, v);
  }
  // Mutations can cancel each other (a later one overwrites ipam): only those
  // whose value is still in place count.
  for (const m of c.conf) {
    if (JSON.stringify(getPath(conf, m.path)) === JSON.stringify(subst(m.value, ctx.vars))) note(m.expect, m.why, m.unknown);
  }

  let stdin: Buffer;
  let objConf: Record<string, unknown> | undefined = conf;
  if (c.stdin?.b64 !== undefined) {
    stdin = Buffer.from(c.stdin.b64, 'base64');
    objConf = undefined;
    invalids.length = 0;
    unknowns = 0;
    note(c.stdin.expect, c.stdin.why);
  } else if (c.stdin?.hugeBytes) {
    // A valid config padded with a huge ignored field: only its size is unusual.
    const text = toJsonBytes(conf);
    stdin = Buffer.concat([text.subarray(0, text.length - 1), Buffer.from(`,"x-pad":"${'p'.repeat(c.stdin.hugeBytes)}"}`)]);
    objConf = undefined;
    // Its size alone may be refused (code 7, naming stdin), before any field is read.
    if (stdin.length > 1 << 20) unknowns++;
  } else {
    stdin = toJsonBytes(conf);
    if (hasRaw) objConf = undefined;
  }

  const e: Record<string, string> = { ...ctx.pathEnv };
  if (command !== undefined) e.CNI_COMMAND = command;
  if (c.containerId !== undefined) e.CNI_CONTAINERID = c.containerId;
  if (c.ifname !== undefined) e.CNI_IFNAME = c.ifname;
  const ns = ctx.netnsPath(c.netns);
  if (ns !== undefined) e.CNI_NETNS = ns;
  e.CNI_PATH = '/opt/cni/bin';
  c.env.forEach((m, i) => {
    if (m.value === undefined) delete e[m.name];
    else e[m.name] = subst(m.value, ctx.vars) as string;
    // The last mutation of a variable is the one in place.
    if (!c.env.slice(i + 1).some((x) => x.name === m.name)) note(m.expect, m.why);
  });
  const cid = c.containerId;
  if (cid === undefined || cid === '' || !CID.test(cid) || cid.length > 4096) {
    note(invalid([4], 'CNI_CONTAINERID', ATTACH), `CNI_CONTAINERID ${cid === undefined ? 'unset' : JSON.stringify(cid.slice(0, 20))}`);
  }
  const ifn = c.ifname;
  if (ifn === undefined || ifn === '' || Buffer.byteLength(ifn) > 15 || /[/:\s]/.test(ifn) || ifn === '.' || ifn === '..') {
    note(invalid([4], 'CNI_IFNAME', ATTACH), `CNI_IFNAME ${JSON.stringify(ifn)}`);
  }
  if (c.netns !== 'pod') note(invalid([4], 'CNI_NETNS', ['ADD', 'CHECK']), `CNI_NETNS ${c.netns}`);

  // CHECK needs the ADD's result: without one (or with another pod's) it fails with 7 or 101.
  if (command === 'CHECK') unknowns++;
  // GC needs the runtime's list of valid attachments.
  if (getPath(conf, ['cni.dev/valid-attachments']) === undefined) note(invalid([7], 'valid-attachments', ['GC']), 'GC without cni.dev/valid-attachments');
  let expects = command === undefined ? [] : invalids.filter((x) => x.commands.includes(command));
  // STATUS answers 50 (not available) for a network it cannot serve, bad config included.
  let allowedCodes = [...new Set([...invalids.flatMap((x) => x.codes), ...(unknowns ? [7] : []), ...(command === 'CHECK' ? [101] : []), ...(command === 'STATUS' ? [50] : [])])];
  // The error may name any field when something else in the request might be invalid too.
  let strictNaming = unknowns === 0 && expects.length === invalids.length;
  if (command !== undefined && !COMMANDS.includes(command)) {
    // An unknown command is answered before anything else is read.
    // (A stdin over the size limit may be refused first: the launcher reads stdin before anything else.)
    const huge = stdin.length > 1 << 20;
    expects = [{ codes: [4], field: 'CNI_COMMAND', commands: [command], why: `CNI_COMMAND ${JSON.stringify(command.slice(0, 20))}` }];
    allowedCodes = huge ? [4, 7] : [4];
    strictNaming = !huge;
  }
  if (command === 'VERSION') expects = [];

  // An unknown command is refused before the config is read: any version may carry that error.
  const v = (conf as { cniVersion?: unknown }).cniVersion;
  const known = command !== undefined && COMMANDS.includes(command);
  const askedVersion = known && objConf !== undefined && typeof v === 'string' && SUPPORTED.includes(v) ? v : undefined;
  const bridge = c.stdin?.b64 === undefined && typeof conf.bridge === 'string' ? conf.bridge : undefined;
  return { env: e, stdin, conf: objConf, bridge, expects, allowedCodes, strictNaming, askedVersion };
}

function getPath(obj: Record<string, unknown>, path: string[]): unknown {
  let o: unknown = obj;
  for (const k of path) {
    if (o === null || typeof o !== 'object') return undefined;
    o = (o as Record<string, unknown>)[k];
  }
  return o;
}

/** One line per mutation, for failure reports. */
export function describeCase(c: CniCase): string {
  const parts = [
    `CNI_COMMAND=${JSON.stringify(c.command)}`,
    `netns=${c.netns}`,
    `CNI_CONTAINERID=${JSON.stringify(c.containerId?.slice(0, 40))}${(c.containerId?.length ?? 0) > 40 ? `(${c.containerId!.length} chars)` : ''}`,
    `CNI_IFNAME=${JSON.stringify(c.ifname)}`,
    ...c.conf.map((m) => `conf: ${m.why}`),
    ...c.env.map((m) => `env: ${m.why}`),
    ...(c.stdin ? [`stdin: ${c.stdin.why}`] : []),
  ];
  return parts.join('; ');
}
