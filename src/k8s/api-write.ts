// Writes to the apiserver (PATCH, POST) for the few objects the agent changes itself:
// status subresources, finalizers, events, a pod annotation (src/k8s/podnet-api.ts).
// Same transport as the informers' GET (the ClientConfig's agent and headers), no
// client library (see informers.ts for why).
import { request } from 'node:https';
import { request as httpRequest } from 'node:http';
import type { ClientConfig } from './kubeconfig.js';
import { ApiError, statusMessage } from './informers.js';
import { messageOf } from '../errors.js';

export type WriteMethod = 'PATCH' | 'POST' | 'PUT' | 'DELETE';

/** A JSON merge patch (RFC 7386): lists are replaced whole, `null` removes a key. */
export const MERGE_PATCH = 'application/merge-patch+json';

/**
 * Sends `body` as JSON and resolves with the answer's JSON; a non-2xx answer rejects
 * with ApiError carrying the status code (409: a resourceVersion precondition failed).
 */
export function sendJson<T>(cfg: ClientConfig, method: WriteMethod, path: string, body: unknown, contentType = 'application/json', timeoutMs = 15_000): Promise<T> {
  const url = new URL(cfg.server + path);
  const req = url.protocol === 'https:' ? request : httpRequest;
  const data = Buffer.from(JSON.stringify(body));
  return new Promise<T>((resolve, reject) => {
    const r = req(url, {
      method,
      agent: cfg.agent as never,
      headers: { ...cfg.headers(), Accept: 'application/json', 'Content-Type': contentType, 'Content-Length': String(data.length) },
      timeout: timeoutMs,
    }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('error', reject);
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        const code = res.statusCode ?? 0;
        if (code < 200 || code >= 300) {
          reject(new ApiError(code, `${method} ${path}: HTTP ${code}: ${statusMessage(text)}`));
          return;
        }
        try {
          resolve((text ? JSON.parse(text) : undefined) as T);
        } catch (e) {
          reject(new Error(`${method} ${path}: invalid JSON: ${messageOf(e)}`, { cause: e }));
        }
      });
    });
    r.on('timeout', () => r.destroy(new Error(`${method} ${path}: no answer in ${timeoutMs} ms`)));
    r.on('error', (e: NodeJS.ErrnoException) => reject(new Error(`${method} ${cfg.server}${path}: ${e.code ?? e.message}`)));
    r.end(data);
  });
}
