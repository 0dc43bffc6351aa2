// Desired-vs-programmed diff for the service maps. The result is an ordered
// list of single-entry map operations, grouped into phases so that a BPF
// program reading the maps between any two operations always finds a
// consistent service:
//   1. new backends (and service names) are written;
//   2. slots are written: existing slots overwritten in place, new slots
//      appended beyond the current count (not yet selectable);
//   3. services are written (count grows to expose new slots, or shrinks to
//      hide slots about to go) or deleted;
//   4. slots at or beyond the new count are deleted (no stale slots);
//   5. backends no longer in any slot (and names of deleted services) go.
// So a backend exists before any slot names it, and a slot below count
// always resolves to a backend of that service. Established connections never
// depend on these maps (they were translated at connect()), so removing a
// backend cannot break them. Only services in scope are looked at, so a
// change to one service produces operations on its own entries only.
import type { DesiredServicePort, EntryScope, Protocol } from './model.js';

export interface BackendAddr {
  ip: string;
  port: number;
}

export interface ProgrammedBackend extends BackendAddr {
  svcId: number;
}

export interface ProgrammedService {
  key: string;
  ref: string;
  vip: string;
  port: number;
  protocol: Protocol;
  /** Set for entries only the tc path reads (DesiredServicePort.scope). */
  scope?: EntryScope;
  id: number;
  name: string;
  affinity: boolean;
  affinityTimeoutSeconds: number;
  /** Backend ids by slot; its length is the programmed count. */
  slots: number[];
}

export interface ProgrammedState {
  services: Map<string, ProgrammedService>;
  backends: Map<number, ProgrammedBackend>;
  /** Service ref -> its port keys, so a change to one service does not scan them all. */
  byRef: Map<string, Set<string>>;
}

export const emptyState = (): ProgrammedState => ({ services: new Map(), backends: new Map(), byRef: new Map() });

/** Records (or replaces) one programmed service, keeping the ref index in step. */
export function setService(state: ProgrammedState, s: ProgrammedService): void {
  const old = state.services.get(s.key);
  if (old && old.ref !== s.ref) unindex(state, old);
  state.services.set(s.key, s);
  let keys = state.byRef.get(s.ref);
  if (!keys) state.byRef.set(s.ref, (keys = new Set()));
  keys.add(s.key);
}

function unindex(state: ProgrammedState, s: ProgrammedService): void {
  const keys = state.byRef.get(s.ref);
  keys?.delete(s.key);
  if (keys && keys.size === 0) state.byRef.delete(s.ref);
}

export function deleteService(state: ProgrammedState, key: string): void {
  const old = state.services.get(key);
  if (!old) return;
  unindex(state, old);
  state.services.delete(key);
}

export interface SvcKey {
  vip: string;
  port: number;
  protocol: Protocol;
  scope?: EntryScope;
}

export interface SvcValue {
  count: number;
  svcId: number;
  affinity: boolean;
  affinityTimeoutSeconds: number;
}

export type MapOp =
  | { phase: 1; map: 'backend'; op: 'update'; id: number; value: ProgrammedBackend }
  | { phase: 1; map: 'meta'; op: 'update'; svcId: number; name: string }
  | { phase: 2; map: 'slot'; op: 'update'; svcId: number; slot: number; backendId: number }
  | { phase: 3; map: 'svc'; op: 'update'; key: SvcKey; value: SvcValue }
  | { phase: 3; map: 'svc'; op: 'delete'; key: SvcKey }
  | { phase: 4; map: 'slot'; op: 'delete'; svcId: number; slot: number }
  | { phase: 5; map: 'backend'; op: 'delete'; id: number }
  | { phase: 5; map: 'meta'; op: 'delete'; svcId: number };

/**
 * Hands out service and backend ids from one counter, so an id never names
 * two things at once, and skips ids still in use after wrapping at 2^32.
 * Freed ids are not reused until the counter wraps: an affinity entry that
 * remembers an old backend id can never land on someone else's backend.
 */
export class IdAllocator {
  private next: number;
  constructor(private readonly inUse: (id: number) => boolean, start = 1) {
    this.next = Math.max(1, start);
  }
  alloc(): number {
    for (let i = 0; i < 0x1_0000_0000; i++) {
      const id = this.next;
      this.next = this.next >= 0xffff_ffff ? 1 : this.next + 1;
      if (!this.inUse(id)) return id;
    }
    throw new Error('IdAllocator: every 32-bit id is in use');
  }
  get peek(): number {
    return this.next;
  }
}

export interface DiffResult {
  ops: MapOp[];
  /** New programmed entries by key (null: deleted). Apply with commit() once the ops succeeded. */
  services: Map<string, ProgrammedService | null>;
  addedBackends: Map<number, ProgrammedBackend>;
  removedBackends: number[];
}

const addrOf = (b: BackendAddr): string => `${b.ip}:${b.port}`;

function parseAddr(s: string): BackendAddr {
  const i = s.lastIndexOf(':');
  return { ip: s.slice(0, i), port: Number(s.slice(i + 1)) };
}

const svcKeyOf = (s: { vip: string; port: number; protocol: Protocol; scope?: EntryScope }): SvcKey =>
  s.scope ? { vip: s.vip, port: s.port, protocol: s.protocol, scope: s.scope } : { vip: s.vip, port: s.port, protocol: s.protocol };

/**
 * Computes the operations that turn `state` into `desired` for the keys in
 * scope: every key of `desired`, plus every programmed key whose owning
 * service is in `refs` (or every programmed key when refs is omitted: a full
 * resync). `state` is not modified.
 */
export function diffServices(
  state: ProgrammedState,
  desired: ReadonlyMap<string, DesiredServicePort>,
  ids: IdAllocator,
  refs?: ReadonlySet<string>,
): DiffResult {
  const p1: MapOp[] = [], p2: MapOp[] = [], p3: MapOp[] = [], p4: MapOp[] = [], p5: MapOp[] = [];
  const services = new Map<string, ProgrammedService | null>();
  const addedBackends = new Map<number, ProgrammedBackend>();
  const removedBackends: number[] = [];

  const scope = new Set<string>(desired.keys());
  if (!refs) for (const key of state.services.keys()) scope.add(key);
  else for (const ref of refs) for (const key of state.byRef.get(ref) ?? []) scope.add(key);

  for (const key of scope) {
    const old = state.services.get(key);
    const want = desired.get(key);
    if (!want) {
      if (!old) continue;
      p3.push({ phase: 3, map: 'svc', op: 'delete', key: svcKeyOf(old) });
      for (let i = 0; i < old.slots.length; i++) p4.push({ phase: 4, map: 'slot', op: 'delete', svcId: old.id, slot: i });
      for (const bid of old.slots) {
        p5.push({ phase: 5, map: 'backend', op: 'delete', id: bid });
        removedBackends.push(bid);
      }
      p5.push({ phase: 5, map: 'meta', op: 'delete', svcId: old.id });
      services.set(key, null);
      continue;
    }

    if (old && unchanged(state, old, want)) continue;
    const svcId = old?.id ?? ids.alloc();
    if (!old || old.name !== want.name) p1.push({ phase: 1, map: 'meta', op: 'update', svcId, name: want.name });

    const oldSlots = old?.slots ?? [];
    const oldByAddr = new Map<string, number>();
    for (const bid of oldSlots) {
      const b = state.backends.get(bid);
      if (b) oldByAddr.set(addrOf(b), bid);
    }
    const wanted = new Set(want.backends);
    const n = want.backends.length;
    const slots: (number | undefined)[] = new Array(n).fill(undefined);
    const placed = new Set<number>();
    // Surviving backends stay in their slot when it is still below the new count.
    for (let i = 0; i < Math.min(n, oldSlots.length); i++) {
      const bid = oldSlots[i]!;
      const b = state.backends.get(bid);
      if (b && wanted.has(addrOf(b))) {
        slots[i] = bid;
        placed.add(bid);
      }
    }
    // Survivors from beyond the new count move down; new backends fill what is left.
    const toPlace: number[] = [];
    for (const bid of oldSlots) {
      const b = state.backends.get(bid);
      if (b && wanted.has(addrOf(b)) && !placed.has(bid)) {
        toPlace.push(bid);
        placed.add(bid);
      }
    }
    for (const addr of want.backends) {
      if (oldByAddr.has(addr)) continue;
      const bid = ids.alloc();
      const value: ProgrammedBackend = { ...parseAddr(addr), svcId };
      p1.push({ phase: 1, map: 'backend', op: 'update', id: bid, value });
      addedBackends.set(bid, value);
      toPlace.push(bid);
    }
    let t = 0;
    for (let i = 0; i < n; i++) {
      if (slots[i] === undefined) slots[i] = toPlace[t++];
    }
    const newSlots = slots as number[];
    for (let i = 0; i < n; i++) {
      if (oldSlots[i] !== newSlots[i]) p2.push({ phase: 2, map: 'slot', op: 'update', svcId, slot: i, backendId: newSlots[i]! });
    }
    if (!old || old.slots.length !== n || old.affinity !== want.affinity || old.affinityTimeoutSeconds !== want.affinityTimeoutSeconds) {
      p3.push({
        phase: 3, map: 'svc', op: 'update', key: svcKeyOf(want),
        value: { count: n, svcId, affinity: want.affinity, affinityTimeoutSeconds: want.affinityTimeoutSeconds },
      });
    }
    for (let i = n; i < oldSlots.length; i++) p4.push({ phase: 4, map: 'slot', op: 'delete', svcId, slot: i });
    for (const bid of oldSlots) {
      if (!placed.has(bid)) {
        p5.push({ phase: 5, map: 'backend', op: 'delete', id: bid });
        removedBackends.push(bid);
      }
    }
    const next: ProgrammedService = {
      key, ref: want.ref, vip: want.vip, port: want.port, protocol: want.protocol, id: svcId, name: want.name,
      affinity: want.affinity, affinityTimeoutSeconds: want.affinityTimeoutSeconds, slots: newSlots,
      ...(want.scope ? { scope: want.scope } : {}),
    };
    if (!old || !sameService(old, next)) services.set(key, next);
  }
  return { ops: p1.concat(p2, p3, p4, p5), services, addedBackends, removedBackends };
}

/**
 * What left a service of `protocol` in this diff, before it is committed:
 * each backend removed from a service (or with its whole service), with the
 * service address it was reached through. Only the services the diff touches
 * are looked at. For the UDP socket destroyer: connected sockets translated
 * to one of these must move.
 */
export function departedBackends(state: ProgrammedState, diff: DiffResult, protocol: Protocol): { vip: string; vport: number; ip: string; port: number }[] {
  if (diff.removedBackends.length === 0) return [];
  const removed = new Set(diff.removedBackends);
  const out: { vip: string; vport: number; ip: string; port: number }[] = [];
  for (const key of diff.services.keys()) {
    const old = state.services.get(key);
    // Entries only tc reads have no sockets connected through them.
    if (!old || old.protocol !== protocol || old.scope) continue;
    for (const bid of old.slots) {
      const b = removed.has(bid) ? state.backends.get(bid) : undefined;
      if (b) out.push({ vip: old.vip, vport: old.port, ip: b.ip, port: b.port });
    }
  }
  return out;
}

/** Fast path for a full resync: same settings and the same backend set means no ops. */
function unchanged(state: ProgrammedState, old: ProgrammedService, want: DesiredServicePort): boolean {
  if (old.slots.length !== want.backends.length || old.name !== want.name || old.ref !== want.ref ||
    old.affinity !== want.affinity || old.affinityTimeoutSeconds !== want.affinityTimeoutSeconds) return false;
  const addrs: string[] = new Array(old.slots.length);
  for (let i = 0; i < old.slots.length; i++) {
    const b = state.backends.get(old.slots[i]!);
    if (!b || b.svcId !== old.id) return false;
    addrs[i] = `${b.ip}:${b.port}`;
  }
  addrs.sort();
  for (let i = 0; i < addrs.length; i++) if (addrs[i] !== want.backends[i]) return false;
  return true;
}

function sameService(a: ProgrammedService, b: ProgrammedService): boolean {
  return a.id === b.id && a.name === b.name && a.ref === b.ref && a.affinity === b.affinity &&
    a.affinityTimeoutSeconds === b.affinityTimeoutSeconds && a.slots.length === b.slots.length &&
    a.slots.every((x, i) => x === b.slots[i]);
}

/** Records a successfully applied diff in the programmed state. */
export function commit(state: ProgrammedState, r: DiffResult): void {
  for (const [id, b] of r.addedBackends) state.backends.set(id, b);
  for (const id of r.removedBackends) state.backends.delete(id);
  for (const [key, s] of r.services) {
    if (s) setService(state, s);
    else deleteService(state, key);
  }
}
