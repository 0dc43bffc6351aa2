// CNI errors as the spec defines them: a JSON object on stdout with a code, a short
// message and details, and a non-zero exit status.
//
// Codes 1-99 are reserved by the spec (SPEC.md "Well-known Error Codes"); patu's own
// codes start at 100. The answer never carries a JavaScript stack: the error that
// caused it stays on `cause` (the agent logs it, stack and all, at debug level).
import { errnoOf, messageOf } from '../errors.js';
import { IpamConfigError, IpamExhaustedError, IpamLockTimeoutError, IpamUnavailableError } from '../ipam/index.js';
import { HostPortConflictError, HostPortLockTimeoutError } from '../hostport/records.js';

export const CniCode = {
  IncompatibleVersion: 1,
  UnsupportedField: 2,
  UnknownContainer: 3,
  InvalidEnvironment: 4,
  IoFailure: 5,
  DecodeFailure: 6,
  InvalidConfig: 7,
  TryAgainLater: 11,
  /** STATUS: the plugin cannot serve ADD now. */
  NotAvailable: 50,
  /** patu: a kernel or file-system operation failed (the message names it). */
  Internal: 100,
  /** patu: CHECK found the attachment differs from what ADD set up. */
  CheckFailed: 101,
  /** patu: no free address left in the configured ranges. */
  AddressesExhausted: 102,
  /** patu: a specifically requested address (runtimeConfig.ips) is held by another attachment. */
  AddressUnavailable: 103,
  /** patu: a runtimeConfig.portMappings entry overlaps a hostPort another attachment holds. */
  HostPortConflict: 104,
} as const;
export type CniCodeValue = (typeof CniCode)[keyof typeof CniCode];

/** The spec's error: `code` is the CNI code (stable by definition), `details` names the field, variable or operation. */
export class CniError extends Error {
  readonly code: number;
  readonly details: string;
  constructor(code: number, msg: string, details = '', options?: { cause?: unknown }) {
    super(msg, options);
    this.name = 'CniError';
    this.code = code;
    this.details = details;
  }

  toJSON(cniVersion: string): Record<string, unknown> {
    return { cniVersion, code: this.code, msg: this.message, details: this.details };
  }
}

export const invalidConfig = (field: string, problem: string, options?: { cause?: unknown }): CniError =>
  new CniError(CniCode.InvalidConfig, `invalid network config: ${field}: ${problem}`, field, options);

export const invalidEnv = (variable: string, problem: string, options?: { cause?: unknown }): CniError =>
  new CniError(CniCode.InvalidEnvironment, `invalid environment: ${variable}: ${problem}`, variable, options);

/**
 * Wraps anything thrown below the CNI layer into a CNI error: IPAM's domain errors
 * get their own codes (by class, never by name), everything else (SysError,
 * NetlinkError, a bug) is code 100 naming what was being done.
 */
export function toCniError(err: unknown, doing: string): CniError {
  if (err instanceof CniError) return err;
  const cause = { cause: err };
  if (err instanceof IpamConfigError) {
    // IPAM checks the owner too: CNI_CONTAINERID and CNI_IFNAME are environment, not config.
    return err.field.startsWith('CNI_') ? invalidEnv(err.field, err.problem, cause) : invalidConfig(err.field, err.problem, cause);
  }
  if (err instanceof IpamExhaustedError) return new CniError(CniCode.AddressesExhausted, `${doing}: ${err.message}`, 'ipam.ranges', cause);
  if (err instanceof IpamUnavailableError) return new CniError(CniCode.AddressUnavailable, `${doing}: ${err.message}`, 'runtimeConfig.ips', cause);
  if (err instanceof IpamLockTimeoutError) {
    return new CniError(CniCode.TryAgainLater, `${doing}: ${err.message}`, 'another CNI operation on this network holds the IPAM lock; retry', cause);
  }
  if (err instanceof HostPortConflictError) return new CniError(CniCode.HostPortConflict, `${doing}: ${err.message}`, 'runtimeConfig.portMappings', cause);
  if (err instanceof HostPortLockTimeoutError) {
    return new CniError(CniCode.TryAgainLater, `${doing}: ${err.message}`, 'another CNI operation holds the hostPort lock; retry', cause);
  }
  let errno: string | undefined;
  for (let e: unknown = err, depth = 0; e !== undefined && !errno && depth < 8; e = (e as { cause?: unknown } | null)?.cause, depth++) errno = errnoOf(e);
  return new CniError(CniCode.Internal, `${doing}: ${messageOf(err)}`, errno ? `${doing} (${errno})` : doing, cause);
}
