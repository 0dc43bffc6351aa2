// The agent's hostPort source: the records the CNI plugin writes (src/hostport/
// records.ts) turned into service map entries through ServiceLb's hostPort
// partition. Watched with fs.watch (a change is applied within ~20 ms), and resynced
// periodically anyway: fs.watch can miss events (an overflowed inotify queue, the
// directory replaced), and a port a service held may have become free. Every apply
// is a full resync of the partition: a node has tens of hostPorts, not thousands.
import { watch, type FSWatcher } from 'node:fs';
import type { ApplyStats, PartitionConflict, ServiceSinkLike } from '../dataplane/service-lb.js';
import { hostPortDesired, type RecordOverlap } from '../hostport/desired.js';
import { HostPortStore } from '../hostport/records.js';
import { messageOf } from '../errors.js';

export interface HostPortsWatchOptions {
  /** The IPAM data directory the plugin is configured with: records are in <dataDir>/_hostports. */
  dataDir: string;
  sink: ServiceSinkLike;
  /** Full resync interval (default 10 s; 0: only on changes). */
  resyncMs?: number;
  /** Wait this long after a change for more (default 20 ms). */
  debounceMs?: number;
  onApplied?: (stats: ApplyStats, records: number) => void;
  /** A mapping that cannot be served: reported once when it appears (again after it went away). */
  onConflict?: (c: HostPortConflictReport) => void;
  /** A file in the directory that is not a record. Reported once per name. */
  onBadRecord?: (name: string, problem: string) => void;
  onError?: (e: Error) => void;
}

export type HostPortConflictReport =
  | { kind: 'service'; record: string; key: string; heldBy: string }
  | { kind: 'record'; record: string; keptName: string };

export interface HostPortsWatch {
  /** Reads the records and applies them now. */
  sync(): ApplyStats;
  /** Syncs soon (debounced): something else changed the maps. */
  poke(): void;
  /** Conflicts as of the last sync (what /metrics and `patu status` can show). */
  readonly conflicts: readonly HostPortConflictReport[];
  close(): void;
}

const conflictId = (c: HostPortConflictReport): string => (c.kind === 'service' ? `s ${c.record} ${c.heldBy}` : `r ${c.record} ${c.keptName}`);

/** Starts watching; the first sync runs before it returns (and throws if the kernel refuses it). */
export function hostPortsWatch(opts: HostPortsWatchOptions): HostPortsWatch {
  // Created here so fs.watch has something to watch before the first pod maps a port.
  const store = HostPortStore.open(opts.dataDir, { create: true });
  let seen = new Set<string>();
  const badSeen = new Set<string>();
  let current: HostPortConflictReport[] = [];
  let closed = false;

  const sync = (): ApplyStats => {
    const records = store.list({
      bad: (name, problem) => {
        if (badSeen.has(name)) return;
        badSeen.add(name);
        opts.onBadRecord?.(name, problem);
      },
    });
    const { desired, overlaps } = hostPortDesired(records);
    const stats = opts.sink.resync(desired);
    const refName = (ref: string): string => ref.slice(ref.indexOf('/') + 1);
    current = [
      ...overlaps.map((o: RecordOverlap): HostPortConflictReport => ({ kind: 'record', record: o.record.name, keptName: o.keptName })),
      ...(stats.conflicts ?? []).map((c: PartitionConflict): HostPortConflictReport => ({ kind: 'service', record: refName(c.wanted), key: c.key, heldBy: c.heldBy })),
    ];
    const now = new Set<string>();
    for (const c of current) {
      const id = conflictId(c);
      now.add(id);
      if (!seen.has(id)) opts.onConflict?.(c);
    }
    seen = now;
    opts.onApplied?.(stats, records.length);
    return stats;
  };

  sync();

  let timer: NodeJS.Timeout | undefined;
  const later = (): void => {
    if (closed || timer) return;
    timer = setTimeout(() => {
      timer = undefined;
      try {
        sync();
      } catch (e) {
        opts.onError?.(new Error(`hostPorts: ${messageOf(e)}`, { cause: e }));
      }
    }, opts.debounceMs ?? 20);
  };
  let watcher: FSWatcher | undefined;
  try {
    watcher = watch(store.dir, { persistent: false }, later);
    watcher.on('error', (e) => opts.onError?.(new Error(`hostPorts: watching ${store.dir}: ${messageOf(e)} (the periodic resync goes on)`, { cause: e })));
  } catch (e) {
    opts.onError?.(new Error(`hostPorts: cannot watch ${store.dir}: ${messageOf(e)} (the periodic resync goes on)`, { cause: e }));
  }
  const every = opts.resyncMs ?? 10_000;
  const interval = every > 0 ? setInterval(later, every) : undefined;
  interval?.unref();

  return {
    sync,
    poke: later,
    get conflicts() {
      return current;
    },
    close() {
      closed = true;
      watcher?.close();
      if (interval) clearInterval(interval);
      if (timer) clearTimeout(timer);
    },
  };
}
