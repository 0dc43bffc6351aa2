// Runs one CNI invocation from its environment and stdin, and shapes the answer as
// the spec says: a result (ADD), a version list (VERSION), nothing (DEL, CHECK,
// STATUS, GC) or an error object with a non-zero exit status. Free of process state,
// so both the plugin process and the resident agent can serve a request with it.
import { CniError, toCniError } from './errors.js';
import { readCommand, readEnv } from './env.js';
import { parseJson, parseNetConf, peekVersion } from './netconf.js';
import { LATEST_VERSION, SUPPORTED_VERSIONS, resultForVersion, type CniCommand } from './spec.js';
import { cmdAdd } from './commands/add.js';
import { cmdDel } from './commands/del.js';
import { cmdCheck } from './commands/check.js';
import { cmdGc } from './commands/gc.js';
import { cmdStatus } from './commands/status.js';

export interface PluginOutcome {
  exitCode: number;
  stdout: string;
}

export async function runPlugin(env: NodeJS.ProcessEnv, stdin: string): Promise<PluginOutcome> {
  let version = LATEST_VERSION;
  try {
    const command: CniCommand = readCommand(env);
    if (command === 'VERSION') {
      return ok({ cniVersion: LATEST_VERSION, supportedVersions: [...SUPPORTED_VERSIONS] });
    }
    const raw = parseJson(stdin);
    version = peekVersion(raw) ?? LATEST_VERSION;
    const conf = parseNetConf(raw);
    const cniEnv = readEnv(env, command);
    switch (command) {
      case 'ADD':
        return ok(resultForVersion(await cmdAdd(cniEnv, conf), conf.cniVersion));
      case 'DEL':
        await cmdDel(cniEnv, conf);
        return { exitCode: 0, stdout: '' };
      case 'CHECK':
        cmdCheck(cniEnv, conf);
        return { exitCode: 0, stdout: '' };
      case 'GC':
        await cmdGc(conf);
        return { exitCode: 0, stdout: '' };
      case 'STATUS':
        cmdStatus(conf);
        return { exitCode: 0, stdout: '' };
    }
  } catch (err) {
    const e = err instanceof CniError ? err : toCniError(err, 'unexpected failure');
    return { exitCode: 1, stdout: JSON.stringify(e.toJSON(version)) + '\n' };
  }
}

const ok = (value: unknown): PluginOutcome => ({ exitCode: 0, stdout: JSON.stringify(value) + '\n' });

