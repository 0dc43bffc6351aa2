// List+watch informers on @kubernetes/client-node's ListWatch (its cache,
// watch reconnects with backoff, relist on 410 Gone), plus what it leaves to
// the caller: a list function (raw JSON, paginated), restarting after an error
// with capped exponential backoff, and knowing when the first list is in.
// Objects are trimmed before the informer caches them (see slim* in convert.ts).
import { request } from 'node:https';
import { request as httpRequest } from 'node:http';
import { ListWatch } from '@kubernetes/client-node/dist/cache.js';
import { Watch } from '@kubernetes/client-node/dist/watch.js';
import type { ClientConfig } from './config.js';

export interface KObject {
  metadata: { name?: string; namespace?: string; resourceVersion?: string };
}

export interface ListResult<T> {
  metadata?: { resourceVersion?: string; continue?: string };
  items: T[];
}

export class ApiError extends Error {
  constructor(readonly statusCode: number, message: string) {
    super(message);
    this.name = 'ApiError';
  }
  get code(): number {
    return this.statusCode;
  }
}

/** GET of a JSON document from the apiserver. */
export function getJson<T>(cfg: ClientConfig, path: string, timeoutMs = 60_000): Promise<T> {
  const url = new URL(cfg.server + path);
  const req = url.protocol === 'https:' ? request : httpRequest;
  return new Promise<T>((resolve, reject) => {
    const r = req(url, { method: 'GET', agent: cfg.agent as never, headers: cfg.headers(), timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('error', reject);
      res.on('end', () => {
        const body = Buffer.concat(chunks).toString('utf8');
        if (res.statusCode !== 200) {
          let msg = body.slice(0, 300);
          try {
            msg = (JSON.parse(body) as { message?: string }).message ?? msg;
          } catch { /* not a Status object */ }
          reject(new ApiError(res.statusCode ?? 0, `GET ${path}: HTTP ${res.statusCode}: ${msg}`));
          return;
        }
        try {
          resolve(JSON.parse(body) as T);
        } catch (e) {
          reject(new Error(`GET ${path}: invalid JSON: ${(e as Error).message}`));
        }
      });
    });
    r.on('timeout', () => r.destroy(new Error(`GET ${path}: no answer in ${timeoutMs} ms`)));
    r.on('error', (e: NodeJS.ErrnoException) => reject(new Error(`GET ${cfg.server}${path}: ${e.code ?? e.message}`)));
    r.end();
  });
}

/** Lists in pages of `limit` (one snapshot: the apiserver keeps the first page's resourceVersion). */
export async function listAll<T>(cfg: ClientConfig, path: string, query: Record<string, string>, slim: (o: T) => T, limit = 500): Promise<ListResult<T>> {
  const items: T[] = [];
  let cont: string | undefined;
  let rv: string | undefined;
  do {
    const q = new URLSearchParams({ ...query, limit: String(limit), ...(cont ? { continue: cont } : {}) });
    const page = await getJson<ListResult<T>>(cfg, `${path}?${q}`);
    for (const it of page.items ?? []) items.push(slim(it));
    rv ??= page.metadata?.resourceVersion;
    cont = page.metadata?.continue || undefined;
  } while (cont);
  return { metadata: { resourceVersion: rv ?? '' }, items };
}

/** The library's Watch, with objects trimmed before anyone keeps them. */
class SlimWatch extends Watch {
  constructor(cfg: ClientConfig, private readonly slim: (o: never) => unknown) {
    super(cfg as never);
  }
  override watch(path: string, params: Record<string, string | number | boolean | undefined>, cb: (phase: string, obj: any, raw: any) => void, done: (err: any) => void): Promise<any> {
    return super.watch(path, params, (phase, obj, raw) => {
      // ERROR events carry a Status, not an object of the kind.
      cb(phase, phase === 'ERROR' || phase === 'BOOKMARK' ? obj : this.slim(obj as never), raw);
    }, done);
  }
}

export interface InformerSpec<T> {
  /** Short name for logs and metrics ("services", "endpointslices", "pods", "node"). */
  resource: string;
  path: string;
  fieldSelector?: string;
  labelSelector?: string;
  slim: (o: T) => T;
}

export interface InformerHandlers<T> {
  onUpsert(o: T): void;
  onDelete(o: T): void;
  /** After the first complete list has been delivered (once). */
  onSynced(): void;
  onError?(err: Error, restartInMs: number): void;
  onRestart?(): void;
}

export interface RunningInformer<T> {
  readonly resource: string;
  readonly synced: boolean;
  list(): readonly T[];
  stop(): Promise<void>;
}

export interface BackoffOptions {
  initialMs?: number;
  maxMs?: number;
}

/**
 * Starts an informer. An error (apiserver down, 5xx, expired watch) stops the
 * library's ListWatch; it is restarted here after 0.5 s, doubling up to 30 s,
 * reset once it delivers events again. The cache stays meanwhile, so nothing
 * is deleted downstream during an outage. The restart watches from the last
 * resourceVersion; if that is gone (410), the library relists and reports
 * only the differences.
 */
export function startInformer<T extends KObject>(cfg: ClientConfig, spec: InformerSpec<T>, h: InformerHandlers<T>, backoff: BackoffOptions = {}): RunningInformer<T> {
  const initial = backoff.initialMs ?? 500;
  const max = backoff.maxMs ?? 30_000;
  let synced = false;
  let stopped = false;
  let delay = initial;
  let timer: NodeJS.Timeout | undefined;
  const query: Record<string, string> = {
    ...(spec.fieldSelector ? { fieldSelector: spec.fieldSelector } : {}),
    ...(spec.labelSelector ? { labelSelector: spec.labelSelector } : {}),
  };
  const listFn = async (): Promise<ListResult<T>> => {
    const list = await listAll<T>(cfg, spec.path, query, spec.slim);
    if (!synced) {
      // The library delivers the list's items synchronously after this
      // promise settles; setImmediate runs after that.
      setImmediate(() => {
        if (!synced && !stopped) {
          synced = true;
          h.onSynced();
        }
      });
    }
    return list;
  };
  const lw = new ListWatch<T>(spec.path, new SlimWatch(cfg, spec.slim as never), listFn as never, false, spec.labelSelector, spec.fieldSelector);
  const reset = (): void => {
    delay = initial;
  };
  lw.on('add', (o) => { reset(); h.onUpsert(o); });
  lw.on('update', (o) => { reset(); h.onUpsert(o); });
  lw.on('delete', (o) => { reset(); h.onDelete(o); });
  lw.on('error', (err: unknown) => {
    if (stopped) return;
    const e = err instanceof Error ? err : new Error(String((err as { message?: string })?.message ?? err));
    const wait = delay;
    delay = Math.min(delay * 2, max);
    h.onError?.(e, wait);
    clearTimeout(timer);
    timer = setTimeout(() => {
      if (stopped) return;
      h.onRestart?.();
      lw.start().catch(() => { /* reported through the 'error' callback */ });
    }, wait);
  });
  lw.start().catch(() => { /* reported through the 'error' callback */ });
  return {
    resource: spec.resource,
    get synced() {
      return synced;
    },
    list: () => lw.list(),
    stop: async () => {
      stopped = true;
      clearTimeout(timer);
      await lw.stop();
    },
  };
}
