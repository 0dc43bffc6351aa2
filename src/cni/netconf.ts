// The patu network configuration: what a runtime streams to the plugin on stdin.
//
//   {
//     "cniVersion": "1.1.0", "name": "patu", "type": "patu",
//     "bridge": "patu0",              host bridge; its address is each range's gateway
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

z.config(en());


const NETWORK_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;
const CIDR4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\/(\d{1,2})$/;

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
  name: z.string().check(z.regex(NETWORK_NAME, 'must start with a letter or digit and hold only letters, digits, _ . -')),
  type: z.string(),
  bridge: z.optional(z.string()),
  mtu: z.optional(z.number().check(z.int(), z.gte(576), z.lte(65535))),
  hairpin: z.optional(z.boolean()),
  masquerade: z.optional(z.boolean()),
  clusterCIDR: z.optional(z.string().check(z.regex(CIDR4, 'must be an IPv4 CIDR like 10.200.0.0/16'))),
  podCIDR: z.optional(z.string().check(z.regex(CIDR4, 'must be an IPv4 CIDR like 10.200.0.0/24'))),
  accel: z.optional(z.boolean()),
  pinRoot: z.optional(z.string().check(z.regex(/^\/sys\/fs\/bpf\/[A-Za-z0-9_.-]+$/, 'must be a directory directly under /sys/fs/bpf'))),
  ipam: z.optional(ipamShape),
  runtimeConfig: z.optional(z.looseObject({ ips: z.optional(z.array(z.string())) })),
  args: z.optional(z.looseObject({})),
  prevResult: z.optional(z.looseObject({})),
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

export interface NetConf {
  cniVersion: string;
  name: string;
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
  prevResult?: CniResult;
  validAttachments?: { containerID: string; ifname: string }[];
}

export function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new CniError(CniCode.DecodeFailure, `network config on stdin is not JSON: ${(err as Error).message}`);
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
    const field = issue.path.length ? issue.path.map(String).join('.') : '(root)';
    throw invalidConfig(field, issue.message);
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
    ...(c.prevResult ? { prevResult: c.prevResult as unknown as CniResult } : {}),
    ...(c['cni.dev/valid-attachments'] ? { validAttachments: c['cni.dev/valid-attachments'] } : {}),
  };
}
