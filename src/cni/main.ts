// The CNI plugin entry point: `bin/patu` runs this when CNI_COMMAND is set.
import { readFileSync } from 'node:fs';
import { CniCode, CniError } from './errors.js';
import { LATEST_VERSION } from './spec.js';
import { runPlugin } from './plugin.js';

function readStdin(): string {
  try {
    return readFileSync(0, 'utf8');
  } catch (err) {
    throw new CniError(CniCode.IoFailure, `reading the network config from stdin: ${(err as Error).message}`);
  }
}

export async function main(): Promise<void> {
  let stdin = '';
  if (process.env.CNI_COMMAND !== 'VERSION') {
    try {
      stdin = readStdin();
    } catch (err) {
      process.stdout.write(JSON.stringify((err as CniError).toJSON(LATEST_VERSION)) + '\n');
      process.exitCode = 1;
      return;
    }
  }
  const outcome = await runPlugin(process.env, stdin);
  process.stdout.write(outcome.stdout);
  process.exitCode = outcome.exitCode;
}

await main();
