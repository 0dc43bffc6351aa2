// CNI errors as the spec defines them: a JSON object on stdout with a code, a short
// message and details, and a non-zero exit status.
//
// Codes 1-99 are reserved by the spec (SPEC.md "Well-known Error Codes"); patu's own
// codes start at 100.
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
} as const;
export type CniCodeValue = (typeof CniCode)[keyof typeof CniCode];

export class CniError extends Error {
  readonly code: number;
  readonly details: string;
  constructor(code: number, msg: string, details = '') {
    super(msg);
    this.name = 'CniError';
    this.code = code;
    this.details = details;
  }

  toJSON(cniVersion: string): Record<string, unknown> {
    return { cniVersion, code: this.code, msg: this.message, details: this.details };
  }
}

export const invalidConfig = (field: string, problem: string): CniError =>
  new CniError(CniCode.InvalidConfig, `invalid network config: ${field}: ${problem}`, field);

export const invalidEnv = (variable: string, problem: string): CniError =>
  new CniError(CniCode.InvalidEnvironment, `invalid environment: ${variable}: ${problem}`, variable);

/** Wraps anything thrown below the CNI layer (SysError, NetlinkError, ...) into a CNI error. */
export function toCniError(err: unknown, doing: string): CniError {
  if (err instanceof CniError) return err;
  const e = err as { message?: string; code?: string; field?: string; name?: string };
  if (e?.name === 'IpamConfigError' && e.field) {
    const msg = e.message ?? String(err);
    return invalidConfig(e.field, msg.startsWith(`${e.field}: `) ? msg.slice(e.field.length + 2) : msg);
  }
  if (e?.name === 'IpamExhaustedError') return new CniError(CniCode.AddressesExhausted, `${doing}: ${e.message}`);
  if (e?.name === 'IpamUnavailableError') return new CniError(CniCode.AddressUnavailable, `${doing}: ${e.message}`);
  if (e?.name === 'IpamLockTimeoutError') {
    return new CniError(CniCode.TryAgainLater, `${doing}: ${e.message}`, 'another CNI operation on this network holds the IPAM lock; retry');
  }
  return new CniError(CniCode.Internal, `${doing}: ${e?.message ?? String(err)}`, (err as Error)?.stack ?? '');
}
