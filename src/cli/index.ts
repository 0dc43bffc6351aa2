// Entry for `bin/patu` without CNI_COMMAND: the CLI.
import { main } from './main.js';

await main(process.argv);
