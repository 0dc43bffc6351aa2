// TS mirror of bpf/accel.h and the accel pin layout. Kept apart
// from accel.ts so the CNI plugin's registry path (accel-registry.ts) does not
// pull in object loading. TypedMap checks these sizes against the kernel's.
import { join } from 'node:path';
import { structCodec, u32, u64, ipv4, type Codec } from '../kernel/bpf/map.js';

export const POD_F_ACCEL_OPTOUT = 1;

export interface PodInfo { flags: number; ifindex: number; netnsCookie: bigint }
export const podInfoCodec: Codec<PodInfo> = structCodec<PodInfo>({ flags: u32, ifindex: u32, netnsCookie: u64 });

export interface SockKey { localIp4: string; remoteIp4: string; localPort: number; remotePort: number }
export const sockKeyCodec: Codec<SockKey> = structCodec<SockKey>({ localIp4: ipv4, remoteIp4: ipv4, localPort: u32, remotePort: u32 });

export interface AccelCfg { enabled: number; reserved: number }
export const accelCfgCodec: Codec<AccelCfg> = structCodec<AccelCfg>({ enabled: u32, reserved: u32 });

/**
 * The codecs of every map of bpf/accel.c that userspace opens, by C map name;
 * test/unit/bpf-layout.test.ts compares each with the object's BTF.
 */
export const ACCEL_MAP_CODECS = {
  patu_pods: { key: ipv4, value: podInfoCodec },
  patu_sock_hash: { key: sockKeyCodec, value: u64 },
  patu_accel_cfg: { key: u32, value: accelCfgCodec },
} as const;

/** Everything acceleration pins lives in one directory: teardown removes exactly it. */
export const accelPinDir = (pinRoot: string): string => join(pinRoot, 'accel');

export const accelPins = (pinRoot: string) => {
  const dir = accelPinDir(pinRoot);
  return {
    dir,
    // Pinned by libbpf (LIBBPF_PIN_BY_NAME, pin root = dir): names are the C map names.
    pods: join(dir, 'patu_pods'),
    sockHash: join(dir, 'patu_sock_hash'),
    cfg: join(dir, 'patu_accel_cfg'),
    progSockops: join(dir, 'prog_patu_sockops'),
    progSkmsg: join(dir, 'prog_patu_skmsg'),
    linkSockops: join(dir, 'link_patu_sockops'),
  };
};
