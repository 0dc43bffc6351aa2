// The patu network configuration: what a runtime streams to the plugin on stdin.
//
//   {
//     "cniVersion": "1.1.0", "name": "patu", "type": "patu",
//     "mode": "bridge",               "bridge" (default) or "routed": /32 pods behind 169.254.1.1, no bridge (docs/routed.md)
//     "bridge": "patu0",              host bridge; its address is each range's gateway (bridge mode)
//     "mtu": 1500,                    MTU of the bridge and both veth ends
//     "hairpin": true,                let a pod reach itself through a service address
//     "masquerade": true,             SNAT traffic that leaves clusterCIDR (nftables, table ip patu)
//     "clusterCIDR": "10.200.0.0/16", pod addresses of all nodes: never masqueraded
//     "accel": true,                  register pods for socket acceleration (if enabled on the node)
//     "ipam": { "ranges": [[{"subnet": "10.200.0.0/24"}]], "dataDir": "/var/lib/patu/ipam" }
//   }
//
// Every problem is reported as spec code 7 with the JSON path of the field.
import * as z from 'zod/mini';
import en from 'zod/v4/locales/en.js';
import { CniCode, CniError, invalidConfig } from './errors.js';
import { isSupportedVersion, SUPPORTED_VERSIONS, type CniResult } from './spec.js';
import { validIfname } from './env.js';
import { DEFAULTS } from '../defaults.js';
import { canonicalIp, parseCidr, parseIp } from '../net/cidr.js';
import { messageOf } from '../errors.js';
import { fieldPath } from '../field-path.js';
import { MAX_NETWORK_NAME } from '../ipam/index.js';
import type { PortMapping } from '../hostport/records.js';

z.config(en());


const NETWORK_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;
/** A directory directly under bpffs: '.' and '..' are not names (they would pin elsewhere). */
const PIN_ROOT = /^\/sys\/fs\/bpf\/(?!\.{1,2}$)[A-Za-z0-9_.-]+$/;

/** An IPv4 CIDR, checked by the one parser (src/net/cidr): octets, prefix and all. */
const ipv4Cidr = (example: string) =>
  z.string().check(
    z.refine((v) => {
      try {
        return parseCidr(v).family === 4;
      } catch {
        return false;
      }
    }, `must be an IPv4 CIDR like ${example}`),
  );

/** Whether parse accepts v (the strict parsers of src/net/cidr.ts, as zod refinements). */
const accepts = (parse: (v: string) => unknown) => (v: string): boolean => {
  try {
    parse(v);
    return true;
  } catch {
    return false;
  }
};
const isAddress = accepts(parseIp);
const isCidr = accepts(parseCidr);

/** What CHECK reads of the ADD result: shaped as the spec says, or the config is invalid. */
const prevResultShape = z.looseObject({
  cniVersion: z.optional(z.string()),
  interfaces: z.optional(z.array(z.looseObject({ name: z.string() }))),
  ips: z.optional(z.array(z.looseObject({
    address: z.string().check(z.refine(isCidr, 'must be an address with a prefix, like 10.200.0.5/24')),
    gateway: z.optional(z.string().check(z.refine(isAddress, 'must be an IP address'))),
    interface: z.optional(z.number().check(z.int(), z.gte(0))),
  }))),
  routes: z.optional(z.array(z.looseObject({ dst: z.string(), gw: z.optional(z.string()) }))),
});

const ipamShape = z.looseObject({
  type: z.optional(z.literal('patu')),
  ranges: z.optional(z.array(z.array(z.looseObject({})))),
  routes: z.optional(z.array(z.looseObject({ dst: z.string(), gw: z.optional(z.string()) }))),
  dataDir: z.optional(z.string().check(z.minLength(1))),
  reserved: z.optional(z.array(z.string())),
  lockTimeoutMs: z.optional(z.number().check(z.int(), z.gte(0), z.lte(300_000))),
});

const netconfShape = z.looseObject({
  cniVersion: z.string(),
  name: z.string().check(
    z.regex(NETWORK_NAME, 'must start with a letter or digit and hold only letters, digits, _ . -'),
    // It names the network's IPAM directory.
    z.maxLength(MAX_NETWORK_NAME, `must be at most ${MAX_NETWORK_NAME} characters`),
  ),
  type: z.string(),
  mode: z.optional(z.enum(['bridge', 'routed'], 'must be "bridge" or "routed"')),
  bridge: z.optional(z.string()),
  mtu: z.optional(z.number().check(z.int(), z.gte(576), z.lte(65535))),
  hairpin: z.optional(z.boolean()),
  masquerade: z.optional(z.boolean()),
  clusterCIDR: z.optional(ipv4Cidr('10.200.0.0/16')),
  podCIDR: z.optional(ipv4Cidr('10.200.0.0/24')),
  accel: z.optional(z.boolean()),
  pinRoot: z.optional(z.string().check(z.regex(PIN_ROOT, "must be a directory directly under /sys/fs/bpf (not '.' or '..')"))),
  ipam: z.optional(ipamShape),
  runtimeConfig: z.optional(z.looseObject({ ips: z.optional(z.array(z.string())), portMappings: z.optional(z.unknown()) })),
  args: z.optional(z.looseObject({})),
  prevResult: z.optional(prevResultShape),
  'cni.dev/valid-attachments': z.optional(
    z.array(z.looseObject({ containerID: z.string(), ifname: z.string() })),
  ),
});

/** The raw IPAM section as written; src/ipam validates and fills it in. */
export interface RawIpam {
  ranges?: unknown;
  routes?: unknown;
  dataDir?: string;
  reserved?: string[];
  /** How long an ADD waits for the IPAM lock before answering code 11 (default 30 s). */
  lockTimeoutMs?: number;
}

export type NetMode = 'bridge' | 'routed';

export interface NetConf {
  cniVersion: string;
  name: string;
  /** bridge (default): pods on a bridge whose address is their gateway; routed: /32 pods behind 169.254.1.1. */
  mode: NetMode;
  bridge: string;
  mtu: number;
  hairpin: boolean;
  masquerade: boolean;
  clusterCIDR: string;
  accel: boolean;
  pinRoot: string;
  ipam: RawIpam & { ranges: unknown; dataDir: string };
  /** Addresses a runtime asked for (runtimeConfig.ips, capability "ips"). */
  requestedIps: string[];
  /**
   * runtimeConfig.portMappings (capability "portMappings") as sent, checked only by the
   * commands that use it (ADD, CHECK: portMappingsOf): a DEL must never fail on it, or
   * the pod could never be removed.
   */
  rawPortMappings?: unknown;
  prevResult?: CniResult;
  validAttachments?: { containerID: string; ifname: string }[];
}


/** Largest network config read from stdin; the launcher (src/launcher/patu.c MAX_STDIN) has the same limit. */
export const MAX_CONFIG_BYTES = 16 << 20;

/**
 * stdin as text: at most MAX_CONFIG_BYTES (code 7), and well-formed UTF-8 (code 6), so
 * bytes that are not text never reach a name (a bridge called 'prb\ufffd').
 */
export function decodeStdin(bytes: Uint8Array): string {
  if (bytes.length > MAX_CONFIG_BYTES) {
    throw invalidConfig('(stdin)', `the config is ${bytes.length} bytes, more than the 16 MiB limit`);
  }
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch (err) {
    throw new CniError(CniCode.DecodeFailure, 'network config on stdin is not valid UTF-8', '(stdin)', { cause: err });
  }
}

export function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new CniError(CniCode.DecodeFailure, `network config on stdin is not JSON: ${messageOf(err)}`, '(stdin)', { cause: err });
  }
}

/** Reads just enough to answer with the right version, even for configs that fail validation. */
export function peekVersion(raw: unknown): string | undefined {
  const v = (raw as { cniVersion?: unknown } | null)?.cniVersion;
  return typeof v === 'string' ? v : undefined;
}

export function parseNetConf(raw: unknown): NetConf {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    throw invalidConfig('(root)', 'must be a JSON object');
  }
  const version = peekVersion(raw);
  if (version !== undefined && !isSupportedVersion(version)) {
    throw new CniError(
      CniCode.IncompatibleVersion,
      `incompatible CNI version: cniVersion '${version}' is not supported (supported: ${SUPPORTED_VERSIONS.join(', ')})`,
      'cniVersion',
    );
  }
  const ipamType = (raw as { ipam?: { type?: unknown } }).ipam?.type;
  if (ipamType !== undefined && ipamType !== 'patu') {
    throw invalidConfig('ipam.type', `patu allocates addresses itself: leave ipam.type out or set it to "patu" (got ${JSON.stringify(ipamType)}; delegating to another IPAM plugin is not supported)`);
  }
  const parsed = netconfShape.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw invalidConfig(fieldPath(issue.path), issue.message);
  }
  const c = parsed.data;
  if (c.type !== 'patu') throw invalidConfig('type', `must be "patu", got "${c.type}"`);
  const bridge = c.bridge ?? DEFAULTS.bridge;
  const badBridge = validIfname(bridge);
  if (badBridge) throw invalidConfig('bridge', badBridge);
  if (c.podCIDR && c.ipam?.ranges) throw invalidConfig('podCIDR', 'give either podCIDR or ipam.ranges, not both');

  const ranges = c.ipam?.ranges ?? [[{ subnet: c.podCIDR ?? DEFAULTS.podCIDR }]];
  return {
    cniVersion: c.cniVersion,
    name: c.name,
    mode: c.mode ?? 'bridge',
    bridge,
    mtu: c.mtu ?? DEFAULTS.mtu,
    hairpin: c.hairpin ?? true,
    masquerade: c.masquerade ?? true,
    clusterCIDR: c.clusterCIDR ?? DEFAULTS.clusterCIDR,
    accel: c.accel ?? true,
    pinRoot: c.pinRoot ?? DEFAULTS.pinRoot,
    ipam: {
      ranges,
      dataDir: c.ipam?.dataDir ?? DEFAULTS.dataDir,
      ...(c.ipam?.routes ? { routes: c.ipam.routes } : {}),
      ...(c.ipam?.reserved ? { reserved: c.ipam.reserved } : {}),
      ...(c.ipam?.lockTimeoutMs !== undefined ? { lockTimeoutMs: c.ipam.lockTimeoutMs } : {}),
    },
    requestedIps: c.runtimeConfig?.ips ?? [],
    ...(c.runtimeConfig?.portMappings !== undefined ? { rawPortMappings: c.runtimeConfig.portMappings } : {}),
    ...(c.prevResult ? { prevResult: c.prevResult as unknown as CniResult } : {}),
    ...(c['cni.dev/valid-attachments'] ? { validAttachments: c['cni.dev/valid-attachments'] } : {}),
  };
}

/** The checked node port mappings of a config (ADD, CHECK); code 7 naming the field when one is bad. */
export const portMappingsOf = (conf: Pick<NetConf, 'rawPortMappings'>): PortMapping[] => parsePortMappings(conf.rawPortMappings);

/** More mappings than any pod has ports (a pod spec's containers declare a few). */
export const MAX_PORT_MAPPINGS = 1024;

/**
 * runtimeConfig.portMappings as the CNI conventions define it (the portmap plugin's
 * input): [{hostPort, containerPort, protocol: "tcp"|"udp", hostIP}], protocol
 * defaulting to tcp and case-insensitive (containerd sends lowercase, others "TCP"),
 * hostIP "" or absent (or 0.0.0.0) for every node address. patu serves IPv4, TCP and
 * UDP: anything else is refused naming the field rather than silently not served.
 * Field names match case-insensitively, as Go's encoding/json does for the portmap
 * plugin: containerd (go-cni) sends {"HostPort", "ContainerPort", "Protocol", "HostIP"}.
 * Fields beyond these four are ignored, as the portmap plugin does.
 */
export function parsePortMappings(raw: unknown): PortMapping[] {
  if (raw === undefined || raw === null) return [];
  const at = 'runtimeConfig.portMappings';
  if (!Array.isArray(raw)) throw invalidConfig(at, 'must be an array of {hostPort, containerPort, protocol, hostIP}');
  if (raw.length > MAX_PORT_MAPPINGS) throw invalidConfig(at, `holds ${raw.length} mappings, more than the ${MAX_PORT_MAPPINGS} patu accepts`);
  return raw.map((e: unknown, i) => {
    const here = `${at}[${i}]`;
    if (e === null || typeof e !== 'object' || Array.isArray(e)) throw invalidConfig(here, 'must be an object {hostPort, containerPort, protocol, hostIP}');
    const m = goFields(e as Record<string, unknown>, ['hostPort', 'containerPort', 'protocol', 'hostIP']);
    const port = (field: 'hostPort' | 'containerPort'): number => {
      const v = m[field];
      if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > 65535) {
        throw invalidConfig(`${here}.${field}`, `must be an integer port 1-65535, got ${JSON.stringify(v) ?? 'nothing'}`);
      }
      return v;
    };
    const hostPort = port('hostPort');
    const containerPort = port('containerPort');
    let protocol: PortMapping['protocol'] = 'tcp';
    if (m.protocol !== undefined && m.protocol !== '') {
      const p = typeof m.protocol === 'string' ? m.protocol.toLowerCase() : undefined;
      if (p !== 'tcp' && p !== 'udp') {
        throw invalidConfig(`${here}.protocol`, `must be "tcp" or "udp" (patu serves no other hostPort protocol), got ${JSON.stringify(m.protocol)}`);
      }
      protocol = p;
    }
    let hostIP = '';
    if (m.hostIP !== undefined && m.hostIP !== '') {
      if (typeof m.hostIP !== 'string') throw invalidConfig(`${here}.hostIP`, `must be an IPv4 address or "", got ${JSON.stringify(m.hostIP)}`);
      let ip;
      try {
        ip = parseIp(m.hostIP);
      } catch {
        throw invalidConfig(`${here}.hostIP`, `must be an IPv4 address or "", got ${JSON.stringify(m.hostIP.slice(0, 64))}`);
      }
      if (ip.family !== 4) throw invalidConfig(`${here}.hostIP`, `patu serves IPv4 hostPorts only, got ${m.hostIP}`);
      hostIP = ip.value === 0n ? '' : canonicalIp(m.hostIP);
    }
    return { hostPort, containerPort, protocol, hostIP };
  });
}

/**
 * The named fields of a JSON object as Go's encoding/json reads them into a struct:
 * the exact key first, else the first key equal to it ignoring case.
 */
function goFields(obj: Record<string, unknown>, names: readonly string[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const keys = Object.keys(obj);
  for (const n of names) {
    if (Object.hasOwn(obj, n)) out[n] = obj[n];
    else {
      const k = keys.find((x) => x.toLowerCase() === n.toLowerCase());
      if (k !== undefined) out[n] = obj[k];
    }
  }
  return out;
}
