// The CNI data types patu reads and writes, and the version rules between them.
export const SUPPORTED_VERSIONS = ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'] as const;
export const LATEST_VERSION = '1.1.0';

export type CniCommand = 'ADD' | 'DEL' | 'CHECK' | 'VERSION' | 'STATUS' | 'GC';

export interface CniInterface {
  name: string;
  mac?: string;
  mtu?: number;
  sandbox?: string;
}
export interface CniIpConfig {
  address: string;
  gateway?: string;
  interface?: number;
  /** Only in 0.3.x/0.4.0 results. */
  version?: '4' | '6';
}
export interface CniRoute {
  dst: string;
  gw?: string;
}
export interface CniDns {
  nameservers?: string[];
  domain?: string;
  search?: string[];
  options?: string[];
}
export interface CniResult {
  cniVersion: string;
  interfaces?: CniInterface[];
  ips?: CniIpConfig[];
  routes?: CniRoute[];
  dns?: CniDns;
}

/** Compares dotted versions numerically: -1, 0 or 1. */
export function compareVersions(a: string, b: string): number {
  const pa = a.split('.').map(Number);
  const pb = b.split('.').map(Number);
  for (let i = 0; i < 3; i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d < 0 ? -1 : 1;
  }
  return 0;
}

export const isSupportedVersion = (v: string): boolean =>
  (SUPPORTED_VERSIONS as readonly string[]).includes(v);

/**
 * Shapes a result for the version the runtime asked for. 0.3.x/0.4.0 results carry
 * `version` on every IP; 1.0.0 and later dropped it.
 */
export function resultForVersion(result: CniResult, cniVersion: string): CniResult {
  const legacy = compareVersions(cniVersion, '1.0.0') < 0;
  const ips = result.ips?.map((ip) => {
    const { version: _drop, ...rest } = ip;
    if (!legacy) return rest;
    return { ...rest, version: ip.address.includes(':') ? ('6' as const) : ('4' as const) };
  });
  return { ...result, cniVersion, ...(ips ? { ips } : {}) };
}
