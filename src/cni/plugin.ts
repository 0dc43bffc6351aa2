// Runs one CNI invocation from its environment and stdin, and shapes the answer as
// the spec says: a result (ADD), a version list (VERSION), nothing (DEL, CHECK,
// STATUS, GC) or an error object with a non-zero exit status. Free of process state,
// so both the plugin process and the resident agent can serve a request with it.
import { CniCode, CniError, toCniError } from './errors.js';
import { readCommand, readEnv } from './env.js';
import { decodeStdin, parseJson, parseNetConf, peekVersion } from './netconf.js';
import { LATEST_VERSION, SUPPORTED_VERSIONS, isSupportedVersion, resultForVersion, type CniCommand } from './spec.js';
import { cmdAdd } from './commands/add.js';
import type { BridgeCache } from '../dataplane/bridge.js';
import { cmdDel } from './commands/del.js';
import { cmdCheck } from './commands/check.js';
import { cmdGc } from './commands/gc.js';
import { cmdStatus } from './commands/status.js';

export interface PluginOutcome {
  exitCode: number;
  stdout: string;
  /** The agent gave the request back (IPAM lock busy): the launcher runs it itself. */
  deferred?: boolean;
  /**
   * What failed, with its cause chain and stacks, for the agent's debug log: the
   * answer on stdout carries the message only.
   */
  error?: CniError;
  /** What went wrong without failing the command (e.g. acceleration registration): the caller reports it. */
  warnings?: string[];
}

export interface RunOptions {
  /** How long to wait for a network's IPAM lock (default: the netconf's, else 30 s). */
  lockTimeoutMs?: number;
  /**
   * Give the request back instead of answering code 11 when the lock stays busy. The
   * agent serves every network on one thread: waiting there for one network's lock
   * would stall all the others, while the launcher's own process can wait.
   */
  deferOnBusyLock?: boolean;
  /** Bridges already ensured, remembered across requests (the agent's; see BridgeCache). */
  bridges?: BridgeCache;
}

/** `stdin` as bytes is checked for size and UTF-8 here; as a string it was decoded by the caller. */
export async function runPlugin(env: NodeJS.ProcessEnv, stdin: string | Uint8Array, opts: RunOptions = {}): Promise<PluginOutcome> {
  const warnings: string[] = [];
  const outcome = await run(env, stdin, opts, (line) => warnings.push(line));
  return warnings.length ? { ...outcome, warnings } : outcome;
}

async function run(env: NodeJS.ProcessEnv, stdin: string | Uint8Array, opts: RunOptions, warn: (line: string) => void): Promise<PluginOutcome> {
  const ipamOpts = { ...(opts.lockTimeoutMs !== undefined ? { lockTimeoutMs: opts.lockTimeoutMs } : {}), warn };
  let version = LATEST_VERSION;
  try {
    const command: CniCommand = readCommand(env);
    if (command === 'VERSION') {
      return ok({ cniVersion: LATEST_VERSION, supportedVersions: [...SUPPORTED_VERSIONS] });
    }
    const raw = parseJson(typeof stdin === 'string' ? stdin : decodeStdin(stdin));
    const asked = peekVersion(raw);
    // Answer errors in the version asked for, unless we cannot speak it.
    if (asked && isSupportedVersion(asked)) version = asked;
    const conf = parseNetConf(raw);
    const cniEnv = readEnv(env, command);
    switch (command) {
      case 'ADD':
        return ok(resultForVersion(await cmdAdd(cniEnv, conf, { ...ipamOpts, ...(opts.bridges ? { bridges: opts.bridges } : {}) }), conf.cniVersion));
      case 'DEL':
        await cmdDel(cniEnv, conf, ipamOpts);
        return { exitCode: 0, stdout: '' };
      case 'CHECK':
        await cmdCheck(cniEnv, conf);
        return { exitCode: 0, stdout: '' };
      case 'GC':
        await cmdGc(conf, ipamOpts);
        return { exitCode: 0, stdout: '' };
      case 'STATUS':
        cmdStatus(conf);
        return { exitCode: 0, stdout: '' };
    }
  } catch (err) {
    const e = toCniError(err, `CNI ${env.CNI_COMMAND ?? 'request'}`);
    if (opts.deferOnBusyLock && e.code === CniCode.TryAgainLater) return { exitCode: -1, stdout: '', deferred: true };
    return { exitCode: 1, stdout: JSON.stringify(e.toJSON(version)) + '\n', error: e };
  }
}

const ok = (value: unknown): PluginOutcome => ({ exitCode: 0, stdout: JSON.stringify(value) + '\n' });

