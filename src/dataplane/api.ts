// The data-plane API in TypeScript: what the agent (sources: Kubernetes, services file,
// policy file) asks of the data plane. proto/patu/dataplane/v1/dataplane.proto is the
// same API on the wire; src/rpc/ converts between the two.
//
// Two implementations:
//   - LocalDataplane (src/dataplane/local.ts): patu's eBPF + netlink code, in the manager
//     (`patu manager`), validating every request against the manager's limits (limits.ts);
//   - RemoteDataplane (src/rpc/client.ts): the gRPC client `patu agent --manager` uses.
// The agent never calls either directly: a DataplaneMirror (src/agent/mirror.ts) keeps the
// desired state, gives the sources the synchronous sinks they already use, and pushes
// changes through this interface (retries, generations, full resync after a reconnect).
// In the default single-process mode none of this is loaded: the agent programs the maps
// in-process, as before.
//
// This file holds types only (no imports with side effects): the agent imports it in
// every mode.
import type { DesiredServicePort } from '../services/model.js';
import type { PolicyState } from '../policy/types.js';

export type CniCommand = 'ADD' | 'DEL' | 'CHECK' | 'STATUS';

export interface CniCall {
  command: CniCommand;
  containerId: string;
  netns: string;
  ifname: string;
  /** CNI_ARGS (K=V;K=V). */
  args: string;
  /** CNI_PATH. */
  path: string;
  /** The network configuration (the plugin's stdin). */
  config: Buffer;
}

export interface CniReply {
  /** 0, or the CNI error code of the error JSON in stdout. */
  exitCode: number;
  stdout: string;
}

/** A change to the service maps: a full resync, or a delta naming the services it changes. */
export interface ServiceChange {
  /** The client's session (random per agent start); the data plane remembers the last. */
  session: string;
  /** Strictly increasing within a session. */
  generation: bigint;
  full: boolean;
  /** Delta: the changed services; a ref without ports in `ports` is removed. Full: ignored. */
  refs: string[];
  ports: DesiredServicePort[];
}

export interface ServiceConflict {
  key: string;
  wanted: string;
  heldBy: string;
}

/** A service left out whole because its addresses break the data plane's limits (the rest was applied). */
export interface RefusedService {
  ref: string;
  /** The entry (vip:port/proto) that broke them. */
  key: string;
  /** Names the field, as `ports[3].vip 8.8.8.8 is outside the service CIDRs 10.96.0.0/12`. */
  reason: string;
}

export interface ServicesApplied {
  generation: bigint;
  mapOps: number;
  /** Programmed map entries in all. */
  services: number;
  applyMs: number;
  /** A retry of the last applied generation: nothing was written. */
  repeatedGeneration: boolean;
  conflicts: ServiceConflict[];
  /**
   * Services refused alone (absent: none). LocalDataplane fills it; on the wire it is
   * ApplyServicesResponse.refused (7), decoded back as absent when empty.
   */
  refused?: RefusedService[];
}

export interface PodFlagsUpdate {
  ip: string;
  accelOptOut: boolean;
}

export interface PodFlagsApplied {
  updated: number;
  unknown: number;
}

/** Node settings; an absent field is left as it is. */
export interface NodeSettings {
  podCidr?: string;
  clusterCidr?: string;
  serviceCidr?: string;
  /** Switch the service CIDR check off (a ClusterIP outside it was seen). */
  serviceCidrOff?: boolean;
  snatAddress?: string;
}

export interface PolicyChange {
  session: string;
  generation: bigint;
  state: PolicyState;
  /**
   * Pods the state names without an address take the one CNI ADD gave them, also in an earlier
   * run of the data plane (the policy file, whose pods have no status.podIP). Never for
   * Kubernetes: an address learned before a restart may be another pod's by now. Absent: false.
   */
  rememberCniAddresses?: boolean;
  /** Policy is off: stop enforcing (detach and unpin the policy programs); `state` is ignored. Absent: false. */
  enforcementOff?: boolean;
}

export interface PolicyApplied {
  generation: bigint;
  mapChanges: number;
  flowsCutOff: number;
  socketsEvicted: number;
  applyMs: number;
  fallback: boolean;
  problems: string[];
  repeatedGeneration: boolean;
}

export interface AccelerationState {
  enabled: boolean;
  pods: number;
  sockets: number;
}

export interface DataplaneHealth {
  ok: boolean;
  problems: string[];
}

export interface DataplaneStatus {
  version: string;
  /** 'ebpf' for patu's own data plane. */
  backend: string;
  servicesSession: string;
  servicesGeneration: bigint;
  services: number;
  policySession: string;
  policyGeneration: bigint;
  policyEndpoints: number;
  acceleration: boolean;
  acceleratedPods: number;
  node: NodeSettings;
  nodeAddresses: string[];
  uptimeSeconds: number;
}

/** Per-call options: a deadline (the client sets one on every call). */
export interface CallOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
}

/**
 * What a data plane does for the agent. Every method is idempotent under retry
 * (services and policy through session + generation, the rest set whole values), and a
 * call whose deadline passes mid-apply still completes or rolls back as a whole on the
 * data plane's side.
 *
 * Errors: DataplaneError with a code (below); a transport failure is 'unavailable'.
 */
export interface Dataplane {
  cni(call: CniCall, opts?: CallOptions): Promise<CniReply>;
  applyServices(change: ServiceChange, opts?: CallOptions): Promise<ServicesApplied>;
  setAcceleration(enabled: boolean, opts?: CallOptions): Promise<AccelerationState>;
  setPodFlags(pods: PodFlagsUpdate[], opts?: CallOptions): Promise<PodFlagsApplied>;
  setNodeSettings(settings: NodeSettings, opts?: CallOptions): Promise<{ conflistWritten: boolean }>;
  applyPolicy(change: PolicyChange, opts?: CallOptions): Promise<PolicyApplied>;
  health(opts?: CallOptions): Promise<DataplaneHealth>;
  status(opts?: CallOptions): Promise<DataplaneStatus>;
  /** Releases the implementation's resources (pinned kernel state stays). */
  close(): Promise<void>;
}

/**
 * Error codes, one per gRPC status the API uses:
 *   invalid       INVALID_ARGUMENT     a request outside the manager's limits, or malformed (message names the field)
 *   resync        FAILED_PRECONDITION  a delta that does not continue the session's generation: send a full resync
 *   capacity      RESOURCE_EXHAUSTED   the maps cannot hold it (nothing was written)
 *   unavailable   UNAVAILABLE          transport down, TLS refused, manager stopping
 *   deadline      DEADLINE_EXCEEDED    the client's deadline passed (the apply may still have completed)
 *   internal      INTERNAL             a kernel operation failed (message names it)
 */
export type DataplaneErrorCode = 'invalid' | 'resync' | 'capacity' | 'unavailable' | 'deadline' | 'internal';

export class DataplaneError extends Error {
  constructor(
    readonly code: DataplaneErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'DataplaneError';
  }
}
