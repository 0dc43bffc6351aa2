// Reads and checks the CNI_* environment. Errors name the variable (spec code 4).
import { existsSync } from 'node:fs';
import { invalidEnv } from './errors.js';
import { checkNetns, NotANetnsError } from '../kernel/netns.js';
import type { CniCommand } from './spec.js';

export interface CniEnv {
  command: CniCommand;
  containerId: string;
  netns: string;
  ifname: string;
  args: Record<string, string>;
  path: string[];
}

const COMMANDS: readonly CniCommand[] = ['ADD', 'DEL', 'CHECK', 'VERSION', 'STATUS', 'GC'];
// SPEC: "Must start with an alphanumeric character, optionally followed by any
// combination of one or more alphanumeric characters, underscore, dot or hyphen."
const CONTAINER_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;
/** Runtimes use 64 hex digits; IPAM records hold the id, and ids this long are not real. */
export const MAX_CONTAINER_ID = 1024;

export function readCommand(env: NodeJS.ProcessEnv): CniCommand {
  const command = env.CNI_COMMAND;
  if (!command) throw invalidEnv('CNI_COMMAND', 'not set');
  if (!(COMMANDS as readonly string[]).includes(command)) {
    throw invalidEnv('CNI_COMMAND', `unknown command '${command}' (want one of ${COMMANDS.join(', ')})`);
  }
  return command as CniCommand;
}

/**
 * An interface name the kernel keeps as written: 1-15 bytes (IFNAMSIZ less the NUL),
 * not '.' or '..', no '/', ':' or whitespace (dev_valid_name), and printable ASCII
 * only: a NUL would cut the name short in the kernel ('prb\0x' creates 'prb') and
 * other bytes are not names anyone types. Returns the problem, or undefined.
 */
export function validIfname(name: string): string | undefined {
  if (name.length === 0) return 'must not be empty';
  const shown = JSON.stringify(name.length > 32 ? `${name.slice(0, 32)}...` : name);
  if (!/^[\x21-\x7e]+$/.test(name)) return `${shown} must hold only printable ASCII (no NUL, control characters, spaces or non-ASCII)`;
  if (name.length > 15) return `${shown} is longer than 15 characters`;
  if (name === '.' || name === '..') return `${shown} is not a valid interface name`;
  if (/[/:]/.test(name)) return `${shown} must not contain '/' or ':'`;
  return undefined;
}

/** Parses CNI_ARGS ("K=V;K2=V2"). */
export function parseCniArgs(raw: string | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  if (!raw) return out;
  for (const pair of raw.split(';')) {
    if (pair === '') continue;
    const eq = pair.indexOf('=');
    if (eq <= 0) throw invalidEnv('CNI_ARGS', `'${pair}' is not KEY=VALUE`);
    out[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  return out;
}

/**
 * What each command needs: ADD and CHECK need the full set and an existing netns;
 * DEL must succeed with as little as a container id (the netns may be gone).
 */
export function readEnv(env: NodeJS.ProcessEnv, command: CniCommand): CniEnv {
  const needsAttachment = command === 'ADD' || command === 'DEL' || command === 'CHECK';
  const containerId = env.CNI_CONTAINERID ?? '';
  const netns = env.CNI_NETNS ?? '';
  const ifname = env.CNI_IFNAME ?? '';
  if (needsAttachment) {
    if (!containerId) throw invalidEnv('CNI_CONTAINERID', 'not set');
    if (containerId.length > MAX_CONTAINER_ID) {
      throw invalidEnv('CNI_CONTAINERID', `is ${containerId.length} characters long, more than ${MAX_CONTAINER_ID}`);
    }
    if (!CONTAINER_ID.test(containerId)) {
      throw invalidEnv('CNI_CONTAINERID', `${JSON.stringify(containerId.slice(0, 80))} must start with a letter or digit and hold only letters, digits, '_', '.', '-'`);
    }
    const bad = validIfname(ifname);
    if (bad) throw invalidEnv('CNI_IFNAME', bad);
    if (command !== 'DEL') {
      if (!netns) throw invalidEnv('CNI_NETNS', 'not set');
      if (!existsSync(netns)) throw invalidEnv('CNI_NETNS', `'${netns}' does not exist`);
      // A FIFO, device, directory or /proc file must fail here, fast: opening one
      // the ordinary way can block forever (see openNetns).
      try {
        checkNetns(netns);
      } catch (err) {
        if (err instanceof NotANetnsError) throw invalidEnv('CNI_NETNS', err.message);
        throw err;
      }
    }
  }
  return {
    command,
    containerId,
    netns,
    ifname,
    args: parseCniArgs(env.CNI_ARGS),
    path: (env.CNI_PATH ?? '').split(':').filter(Boolean),
  };
}
