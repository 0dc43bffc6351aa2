// Errors from the BPF layer. A BpfError is a SysError (errno + code) that also
// names the BPF object/program/map involved and carries libbpf's log (which, for
// a load failure, contains the kernel verifier log).
import { SysError } from '../ffi/libc.js';
import { PatuError } from '../../errors.js';

/** How much of the log goes into the error message; the full text stays on `.log`. */
const TAIL_LINES = 30;
const TAIL_CHARS = 4000;

export interface BpfErrorContext {
  object?: string;
  program?: string;
  map?: string;
  path?: string;
  log?: string;
}

function tailOf(log: string): string {
  const lines = log.trimEnd().split('\n');
  let tail = lines.slice(-TAIL_LINES).join('\n');
  if (tail.length > TAIL_CHARS) tail = tail.slice(-TAIL_CHARS);
  return tail;
}

export class BpfError extends SysError {
  readonly object: string | undefined;
  readonly program: string | undefined;
  readonly map: string | undefined;
  readonly path: string | undefined;
  /** Everything libbpf printed (warnings + verifier log) during the failed operation. */
  readonly log: string;
  constructor(op: string, errno: number, ctx: BpfErrorContext = {}) {
    const what = [
      ctx.object && `object ${ctx.object}`,
      ctx.program && `program ${ctx.program}`,
      ctx.map && `map ${ctx.map}`,
      ctx.path && `path ${ctx.path}`,
    ].filter(Boolean).join(', ');
    super(op, errno, what || undefined);
    this.name = 'BpfError';
    this.object = ctx.object;
    this.program = ctx.program;
    this.map = ctx.map;
    this.path = ctx.path;
    this.log = ctx.log ?? '';
    if (this.log.trim()) this.message += `\n--- libbpf/verifier log (tail) ---\n${tailOf(this.log)}`;
  }
}

/** A codec whose size does not match the kernel map's key or value size. */
export class BpfMapSizeError extends PatuError {
  readonly code = 'BPF_MAP_SIZE';
  constructor(
    readonly map: string,
    readonly field: 'key' | 'value',
    readonly codecSize: number,
    readonly mapSize: number,
  ) {
    super(`map ${map}: ${field} codec is ${codecSize} bytes but the map's ${field}_size is ${mapSize}`);
  }
}
