// Where the data-plane API is served: `unix:///run/patu/manager.sock` or `tcp://host:port`
// (`tcp://[::1]:7443` for IPv6). Both carry mutual TLS; the unix socket is additionally
// mode 0660 (src/rpc/server.ts). One parser for the server's --listen and the agent's
// --manager, so both sides read an address the same way.
import { isAbsolute } from 'node:path';
import { PatuError } from '../errors.js';

export type DataplaneAddress = { kind: 'unix'; path: string } | { kind: 'tcp'; host: string; port: number };

export class DataplaneAddressError extends PatuError {
  readonly code = 'DATAPLANE_ADDRESS';
}

/** Parses an address; `port 0` is allowed (a server picks a free port). */
export function parseDataplaneAddress(text: string): DataplaneAddress {
  const bad = (why: string): DataplaneAddressError =>
    new DataplaneAddressError(`${JSON.stringify(text)}: ${why} (want unix:///absolute/path or tcp://host:port)`);
  if (text.startsWith('unix://')) {
    const path = text.slice('unix://'.length);
    if (!isAbsolute(path)) throw bad('the socket path must be absolute');
    if (path.includes('\0')) throw bad('NUL in the path');
    // sun_path holds 108 bytes with its NUL.
    if (Buffer.byteLength(path) > 107) throw bad('the socket path is longer than 107 bytes');
    return { kind: 'unix', path };
  }
  if (text.startsWith('tcp://')) {
    const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:/[\]]+)):(\d{1,5})$/.exec(text.slice('tcp://'.length));
    if (!m) throw bad('expected host:port');
    const port = Number(m[3]);
    if (port > 65535) throw bad(`port ${port} is out of range`);
    return { kind: 'tcp', host: m[1] ?? m[2]!, port };
  }
  throw bad('unknown scheme');
}

export function formatDataplaneAddress(a: DataplaneAddress): string {
  return a.kind === 'unix' ? `unix://${a.path}` : `tcp://${a.host.includes(':') ? `[${a.host}]` : a.host}:${a.port}`;
}
