// The agent's log: one JSON object per line on stdout, in pino's line format
// ({"level":30,"time":<ms>,"pid":..,"hostname":..,<base>,<fields>,"msg":..}), so whatever
// reads pino lines reads these. Written here rather than taken from pino: pino loads
// thread-stream, sonic-boom, a redactor and serializers, several MB of a process that
// sits on every node for months, for the five calls the agent makes.
import { hostname } from 'node:os';

export const LEVELS = { trace: 10, debug: 20, info: 30, warn: 40, error: 50, fatal: 60 } as const;
export type LevelName = keyof typeof LEVELS;

export interface Log {
  trace(fields: object, msg: string): void;
  debug(fields: object, msg: string): void;
  info(fields: object, msg: string): void;
  warn(fields: object, msg: string): void;
  error(fields: object, msg: string): void;
  fatal(fields: object, msg: string): void;
  /** Nothing is buffered (stdout to a file, pipe or terminal is written synchronously on Linux); kept for callers about to exit. */
  flush(): void;
}

export function isLevel(s: string): s is LevelName {
  return Object.hasOwn(LEVELS, s);
}

/** An Error field becomes {type, message, stack} (JSON.stringify would print {}); bigints become strings. */
function replacer(_key: string, v: unknown): unknown {
  if (v instanceof Error) return { type: v.name, message: v.message, stack: v.stack };
  return typeof v === 'bigint' ? v.toString() : v;
}

export function createLog(opts: { level: string; base?: Record<string, unknown>; write?: (line: string) => void }): Log {
  if (!isLevel(opts.level)) throw new Error(`log level "${opts.level}": use one of ${Object.keys(LEVELS).join(', ')}`);
  const min = LEVELS[opts.level];
  const write = opts.write ?? ((line: string) => void process.stdout.write(line));
  // The fixed part of every line, serialized once.
  const head = JSON.stringify({ pid: process.pid, hostname: hostname(), ...opts.base }).slice(1, -1);
  const at = (level: LevelName) => {
    const n = LEVELS[level];
    if (n < min) return () => {};
    return (fields: object, msg: string) => {
      const body = JSON.stringify(fields, replacer);
      const rest = body.length > 2 ? `,${body.slice(1, -1)}` : '';
      write(`{"level":${n},"time":${Date.now()},${head}${rest},"msg":${JSON.stringify(msg)}}\n`);
    };
  };
  return { trace: at('trace'), debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error'), fatal: at('fatal'), flush: () => {} };
}
