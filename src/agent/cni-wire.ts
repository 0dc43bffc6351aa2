// The wire format between bin/patu (src/launcher/patu.c) and the agent, and its limits.
//
// request:  "KEY=VALUE\n" for every CNI_* variable, plus PATU_REQUEST_ID=<32 hex> (the
//           launcher's id for this invocation, see "claims" in cni-server.ts), then an
//           empty line, then the raw stdin bytes; EOF (the launcher shuts down its
//           write side).
// response: " " as soon as the agent starts the request (a write to a client that has
//           gone fails, so a request whose launcher gave up is dropped unstarted), then
//           "<exit code>\n" and the plugin's stdout; EOF. The launcher skips leading
//           spaces before the exit code.
//
// Limits: a CNI config beyond 1 MB is not real, and the agent must not grow with what
// a client sends (a 200 MB request once grew it to 673 MB against a 256Mi limit), so a
// request is refused as soon as its bytes pass the limit, before anything is kept.

/** Largest stdin (network config) the agent accepts. */
export const MAX_STDIN_BYTES = 1 << 20;
/** Largest header (CNI_* variables): CNI_ARGS and paths are short in practice. */
export const MAX_HEADER_BYTES = 64 << 10;
const REQUEST_ID = /^[0-9a-f]{32}$/;

export interface CniRequest {
  env: Record<string, string>;
  /** The raw config bytes: runPlugin checks their size and that they are UTF-8. */
  stdin: Buffer;
  /** The launcher's id for this invocation (absent from older or hand-made clients). */
  id?: string;
}

export type ReadState = 'more' | 'too-large';

/** Accumulates one request's bytes and refuses it as soon as it passes the limits. */
export class RequestReader {
  private chunks: Buffer[] = [];
  private size = 0;
  private headerEnd = -1;

  push(chunk: Buffer): ReadState {
    this.size += chunk.length;
    if (this.headerEnd < 0) {
      // Only the new bytes (and the one before them) can complete the "\n\n".
      const prevLast = this.chunks.length ? this.chunks[this.chunks.length - 1]!.at(-1) : undefined;
      const at = chunk.indexOf('\n\n');
      if (at >= 0) this.headerEnd = this.size - chunk.length + at;
      else if (prevLast === 0x0a && chunk[0] === 0x0a) this.headerEnd = this.size - chunk.length - 1;
      else if (this.size > MAX_HEADER_BYTES) return 'too-large';
    }
    if (this.headerEnd >= 0 && this.size - (this.headerEnd + 2) > MAX_STDIN_BYTES) return 'too-large';
    if (this.headerEnd > MAX_HEADER_BYTES) return 'too-large';
    this.chunks.push(chunk);
    return 'more';
  }

  /** The request, once the client has sent EOF. */
  finish(): CniRequest {
    return decodeRequest(Buffer.concat(this.chunks, this.size));
  }
}

export function decodeRequest(bytes: Buffer): CniRequest {
  const end = bytes.indexOf('\n\n');
  const header = (end < 0 ? bytes : bytes.subarray(0, end)).toString('utf8');
  const env: Record<string, string> = {};
  let id: string | undefined;
  for (const line of header.split('\n')) {
    const eq = line.indexOf('=');
    if (eq <= 0) continue;
    const key = line.slice(0, eq);
    // Only CNI_* variables cross the socket: nothing else of the caller's environment
    // may steer the agent.
    if (key.startsWith('CNI_')) env[key] = line.slice(eq + 1);
    else if (key === 'PATU_REQUEST_ID' && REQUEST_ID.test(line.slice(eq + 1))) id = line.slice(eq + 1);
  }
  return { env, stdin: end < 0 ? Buffer.alloc(0) : bytes.subarray(end + 2), ...(id ? { id } : {}) };
}

export interface WireOutcome {
  exitCode: number;
  stdout: string;
}

export const encodeResponse = (o: WireOutcome): string => `${o.exitCode}\n${o.stdout}`;

/** Marks the start of work on a request (see the header): a no-op for the launcher's parser. */
export const STARTED = ' ';

/** A CNI error answer built in the agent itself (no plugin code loaded on this thread). */
export function errorOutcome(code: number, msg: string, details = '', cniVersion = '1.1.0'): WireOutcome {
  return { exitCode: 1, stdout: JSON.stringify({ cniVersion, code, msg, details }) + '\n' };
}

/** At most `max` characters of an untrusted string, for logs. */
export function clip(s: string | undefined, max = 256): string | undefined {
  if (s === undefined || s.length <= max) return s;
  return `${s.slice(0, max)}... (${s.length} chars)`;
}

/** The network a request is for (its lane), read cheaply and never trusted beyond that. */
export function networkOf(stdin: Buffer): string {
  try {
    const name = (JSON.parse(stdin.toString('utf8')) as { name?: unknown })?.name;
    return typeof name === 'string' && name.length <= 256 ? name : '';
  } catch {
    return '';
  }
}
