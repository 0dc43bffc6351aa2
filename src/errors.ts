// What every patu error has in common, below all layers (no imports): a stable
// `code` that callers and tests can branch on while messages keep changing, and
// the `cause` of a wrapped error (ES2022 error options), so nothing is lost when
// a lower layer's error is explained by a higher one.

export abstract class PatuError extends Error {
  /** Stable and machine-readable, e.g. 'IPAM_EXHAUSTED'. */
  abstract readonly code: string;
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** The message of anything thrown (a thrown string or object included). */
export function messageOf(err: unknown): string {
  if (err instanceof Error) return err.message;
  if (typeof err === 'string') return err;
  try {
    return JSON.stringify(err) ?? String(err);
  } catch {
    return String(err);
  }
}

/** The errno name ('ENOENT') of a Node fs error or a SysError; undefined for anything else. */
export function errnoOf(err: unknown): string | undefined {
  if (err === null || typeof err !== 'object' || !('code' in err)) return undefined;
  const code = (err as { code: unknown }).code;
  return typeof code === 'string' && /^E[A-Z0-9]+$/.test(code) ? code : undefined;
}
