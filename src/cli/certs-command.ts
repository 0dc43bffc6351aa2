// `patu certs generate`: the split mode's certificates (src/rpc/certs.ts), written into one
// directory that both `patu manager --tls-dir` and `patu agent --tls-dir` can read (each
// takes its own pair), or copied apart (see the README: "Split mode").
import { generateCerts, readCa, writeCertDir } from '../rpc/certs.js';

export interface CertsGenerateOptions {
  dir: string;
  days: number;
  caDays: number;
  serverName: string;
  san: string[];
  force?: boolean;
  keepCa?: boolean;
  json?: boolean;
}

export async function certsGenerate(o: CertsGenerateOptions): Promise<number> {
  const set = await generateCerts({
    days: o.days,
    caDays: o.caDays,
    serverName: o.serverName,
    sans: o.san,
    ...(o.keepCa ? { ca: readCa(o.dir) } : {}),
  });
  const written = writeCertDir(o.dir, set, { force: Boolean(o.force), keepCa: Boolean(o.keepCa) });
  if (o.json) {
    process.stdout.write(`${JSON.stringify({ dir: o.dir, written, serverName: o.serverName, days: o.days, keptCa: Boolean(o.keepCa) })}\n`);
    return 0;
  }
  const lines = [
    `wrote ${written.length} files to ${o.dir}${o.keepCa ? ' (CA kept)' : ''}:`,
    ...written.map((p) => `  ${p}`),
    '',
    `server certificate: ${o.serverName} (the agent checks this name${o.san.length ? `; also ${o.san.join(', ')}` : ''}), valid ${o.days} days`,
    'manager needs: ca.crt server.crt server.key    agent needs: ca.crt client.crt client.key',
    `ca.key signs new certificates only (--keep-ca): keep it off the nodes.`,
    '',
    `  patu manager --listen tcp://0.0.0.0:7443 --tls-dir ${o.dir}`,
    `  patu agent --manager tcp://<manager address>:7443 --tls-dir ${o.dir}`,
    '',
    `rotate the leaves without a restart: patu certs generate --dir ${o.dir} --keep-ca --force`,
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
  return 0;
}
