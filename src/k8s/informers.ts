// List+watch informers: a paginated LIST, then a WATCH from its resourceVersion
// (bookmarks on, line-delimited JSON read as it streams), a cache that relists and
// reports only the differences when the watch's resourceVersion is gone (410), and
// restarts after an error with capped exponential backoff. Objects are trimmed
// before they are cached (see slim* in convert.ts).
//
// Written here instead of using @kubernetes/client-node's ListWatch/Watch: importing
// those loads the library's generated models and node-fetch (measured: +36 MB RSS on
// a 39 MB Node, more than the whole cache at 10,000 services), and its watch decode
// (PassThrough + readline per event) was the largest CPU cost while services were
// created in bench/k8s-proxy.ts.
import { request } from 'node:https';
import { request as httpRequest, type ClientRequest } from 'node:http';
import type { ClientConfig } from './kubeconfig.js';
import { messageOf } from '../errors.js';

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

/** The message of an apiserver Status body, else the start of the body. */
export function statusMessage(body: string): string {
  try {
    const m = (JSON.parse(body) as { message?: string }).message;
    if (m) return m;
  } catch { /* not a Status object */ }
  return body.slice(0, 300);
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
          reject(new ApiError(res.statusCode ?? 0, `GET ${path}: HTTP ${res.statusCode}: ${statusMessage(body)}`));
          return;
        }
        try {
          resolve(JSON.parse(body) as T);
        } catch (e) {
          reject(new Error(`GET ${path}: invalid JSON: ${messageOf(e)}`, { cause: e }));
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

export interface InformerSpec<T> {
  /** Short name for logs and metrics ("services", "endpointslices", "pods", "node"). */
  resource: string;
  path: string;
  fieldSelector?: string;
  labelSelector?: string;
  slim: (o: T) => T;
  /** The apiserver ends each watch after this long (default: 300-600 s, spread as client-go does). */
  watchTimeoutSeconds?: number;
}

export interface InformerHandlers<T> {
  onUpsert(o: T): void;
  onDelete(o: T): void;
  /** After the first complete list has been delivered (once). */
  onSynced(): void;
  onError?(err: Error, restartInMs: number): void;
  onRestart?(): void;
}

/** What an informer did so far (tests and debugging). */
export interface InformerStats {
  /** Complete LISTs (all pages): the first one, then one per expired resourceVersion. */
  lists: number;
  /** WATCH requests answered 200 (a watch the apiserver ended normally is reopened). */
  watches: number;
  bookmarks: number;
  /** 410 Gone: the resourceVersion was compacted away (answered to a WATCH or as an ERROR event in one). */
  expired: number;
  /** Other failures, each followed by a backoff. */
  errors: number;
}

export interface RunningInformer<T> {
  readonly resource: string;
  readonly synced: boolean;
  readonly stats: Readonly<InformerStats>;
  list(): readonly T[];
  stop(): Promise<void>;
}

export interface BackoffOptions {
  initialMs?: number;
  maxMs?: number;
}

/** A watch event as the apiserver streams it (one JSON object per line). */
interface WatchEvent {
  type: 'ADDED' | 'MODIFIED' | 'DELETED' | 'BOOKMARK' | 'ERROR';
  object: KObject & { code?: number; message?: string };
}

/**
 * One WATCH request: calls onEvent for each event as it arrives. Resolves when
 * the apiserver ends the stream (its timeoutSeconds), rejects with ApiError on a
 * non-200 answer or an ERROR event (410 Gone: the resourceVersion is compacted),
 * or with the socket's error. `onRequest` receives the request so it can be aborted.
 */
function watchOnce(cfg: ClientConfig, path: string, query: Record<string, string>, timeoutSeconds: number, onEvent: (e: WatchEvent) => void, onRequest: (r: ClientRequest) => void, onOpen: () => void): Promise<void> {
  const q = new URLSearchParams({ ...query, watch: 'true', allowWatchBookmarks: 'true', timeoutSeconds: String(timeoutSeconds) });
  const url = new URL(`${cfg.server}${path}?${q}`);
  const req = url.protocol === 'https:' ? request : httpRequest;
  return new Promise<void>((resolve, reject) => {
    let settled = false;
    const fail = (e: Error): void => {
      if (settled) return;
      settled = true;
      r.destroy();
      reject(e);
    };
    const r = req(url, { method: 'GET', agent: cfg.agent as never, headers: cfg.headers() }, (res) => {
      if (res.statusCode !== 200) {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const body = Buffer.concat(chunks).toString('utf8');
          fail(new ApiError(res.statusCode ?? 0, `WATCH ${path}: HTTP ${res.statusCode}: ${statusMessage(body)}`));
        });
        return;
      }
      onOpen();
      // Lines are split on the bytes and each decoded once (a newline byte never occurs inside a UTF-8
      // sequence): the apiserver sends about one event per chunk, and a string decoder plus string
      // concatenation and slicing per chunk was a visible part of the agent's CPU in a bulk create.
      let rest: Buffer | undefined;
      res.on('data', (chunk: Buffer) => {
        const buf = rest ? Buffer.concat([rest, chunk]) : chunk;
        rest = undefined;
        let start = 0;
        let nl: number;
        while (!settled && (nl = buf.indexOf(10, start)) >= 0) {
          const from = start;
          start = nl + 1;
          if (nl - from === 0) continue;
          const line = buf.toString('utf8', from, nl);
          if (!line.trim()) continue;
          let ev: WatchEvent;
          try {
            ev = JSON.parse(line) as WatchEvent;
          } catch (e) {
            fail(new Error(`WATCH ${path}: undecodable event: ${messageOf(e)}`, { cause: e }));
            return;
          }
          if (ev.type === 'ERROR') {
            fail(new ApiError(ev.object.code ?? 0, `WATCH ${path}: ${ev.object.message ?? 'error event'}`));
            return;
          }
          onEvent(ev);
        }
        if (start < buf.length) rest = start === 0 ? buf : buf.subarray(start);
      });
      res.on('end', () => {
        if (settled) return;
        settled = true;
        resolve();
      });
      res.on('error', fail);
    });
    onRequest(r);
    // A connection that dies without a FIN/RST would hang forever: the apiserver sends
    // bookmarks and ends the stream by timeoutSeconds, so silence beyond that is death.
    r.setTimeout((timeoutSeconds + 30) * 1000, () => fail(new Error(`WATCH ${path}: no data for ${timeoutSeconds + 30} s`)));
    r.on('error', (e: NodeJS.ErrnoException) => fail(new Error(`WATCH ${cfg.server}${path}: ${e.code ?? e.message}`)));
    r.end();
  });
}

const keyOf = (o: KObject): string => `${o.metadata.namespace ?? ''}/${o.metadata.name ?? ''}`;

/**
 * Starts an informer: list, then watch from the list's resourceVersion, for as
 * long as it runs. A watch that ends normally is reopened from the last
 * resourceVersion seen (bookmarks keep it fresh); one whose resourceVersion is
 * gone (410) leads to a relist at once, delivering only the differences. Any
 * other error (apiserver down, 5xx) is reported and retried after 0.5 s,
 * doubling up to 30 s, reset once events flow again. The cache stays meanwhile,
 * so nothing is deleted downstream during an outage.
 */
export function startInformer<T extends KObject>(cfg: ClientConfig, spec: InformerSpec<T>, h: InformerHandlers<T>, backoff: BackoffOptions = {}): RunningInformer<T> {
  const initial = backoff.initialMs ?? 500;
  const max = backoff.maxMs ?? 30_000;
  const cache = new Map<string, T>();
  const query: Record<string, string> = {
    ...(spec.fieldSelector ? { fieldSelector: spec.fieldSelector } : {}),
    ...(spec.labelSelector ? { labelSelector: spec.labelSelector } : {}),
  };
  let synced = false;
  let stopped = false;
  const stats: InformerStats = { lists: 0, watches: 0, bookmarks: 0, expired: 0, errors: 0 };
  let delay = initial;
  /** Where the next watch starts; undefined: list first. */
  let resourceVersion: string | undefined;
  let current: ClientRequest | undefined;
  let wake: (() => void) | undefined;
  let timer: NodeJS.Timeout | undefined;

  const relist = async (): Promise<void> => {
    const list = await listAll<T>(cfg, spec.path, query, spec.slim);
    if (stopped) return;
    stats.lists++;
    delay = initial;
    const seen = new Set<string>();
    for (const o of list.items) {
      const k = keyOf(o);
      seen.add(k);
      const prev = cache.get(k);
      cache.set(k, o);
      if (!prev || prev.metadata.resourceVersion !== o.metadata.resourceVersion) h.onUpsert(o);
    }
    for (const [k, o] of cache) {
      if (seen.has(k)) continue;
      cache.delete(k);
      h.onDelete(o);
    }
    resourceVersion = list.metadata?.resourceVersion || undefined;
    if (!synced) {
      synced = true;
      h.onSynced();
    }
  };

  const onEvent = (ev: WatchEvent): void => {
    if (stopped) return;
    const rv = ev.object.metadata?.resourceVersion;
    if (ev.type === 'BOOKMARK') {
      stats.bookmarks++;
      if (rv) resourceVersion = rv;
      return;
    }
    delay = initial;
    const o = spec.slim(ev.object as T);
    const k = keyOf(o);
    if (ev.type === 'DELETED') {
      const prev = cache.get(k);
      cache.delete(k);
      h.onDelete(prev ?? o);
    } else {
      cache.set(k, o);
      h.onUpsert(o);
    }
    if (rv) resourceVersion = rv;
  };

  const pause = (ms: number): Promise<void> =>
    new Promise<void>((resolve) => {
      wake = resolve;
      timer = setTimeout(resolve, ms);
    });

  const run = async (): Promise<void> => {
    while (!stopped) {
      try {
        if (resourceVersion === undefined) await relist();
        if (stopped) return;
        // Spread the apiserver-side timeouts (as client-go does) so informers do not all rewatch at once.
        const timeout = spec.watchTimeoutSeconds ?? 300 + Math.floor(Math.random() * 300);
        await watchOnce(cfg, spec.path, { ...query, resourceVersion: resourceVersion ?? '' }, timeout, onEvent, (r) => (current = r), () => stats.watches++);
      } catch (err) {
        if (stopped) return;
        if (err instanceof ApiError && err.statusCode === 410) {
          // Compacted away: relist now (no backoff); the next list reports only differences.
          stats.expired++;
          resourceVersion = undefined;
          continue;
        }
        const e = err instanceof Error ? err : new Error(String(err));
        const wait = delay;
        delay = Math.min(delay * 2, max);
        stats.errors++;
        h.onError?.(e, wait);
        await pause(wait);
        if (stopped) return;
        h.onRestart?.();
      }
    }
  };
  const done = run();

  return {
    resource: spec.resource,
    get synced() {
      return synced;
    },
    stats,
    list: () => [...cache.values()],
    stop: async () => {
      stopped = true;
      clearTimeout(timer);
      wake?.();
      current?.destroy();
      await done;
    },
  };
}
