// What the allocator needs from wherever reservations are kept: the seam host-local
// calls backend.Store (plugins/ipam/host-local/backend/store.go). The allocator
// decides which address; a Store only records, finds and forgets reservations and
// serialises changes. patu's one implementation is the on-disk IpamStore (store.ts),
// laid out as host-local's disk backend is.

export interface Reservation {
  ip: string;
  containerId: string;
  ifname: string;
  /** The CNI ADD's CNI_NETNS, when the record holds it (records written before issue 12 do not). */
  netns?: string;
  /** The Kubernetes pod (K8S_POD_* of CNI_ARGS), when the runtime said and the record holds it. */
  pod?: RecordPod;
}

/** The pod behind an attachment, as the runtime's CNI_ARGS name it. */
export interface RecordPod {
  namespace: string;
  name: string;
  /** K8S_POD_UID; '' when the runtime does not pass it. */
  uid: string;
}

/** What a record says beyond its owner (containerId, ifname): where the attachment lives and whose it is. */
export interface RecordMeta {
  netns?: string;
  pod?: RecordPod;
}

export interface Store {
  /** Where the reservations live, for messages ("/var/lib/patu/ipam/net1"). */
  readonly location: string;
  /** Runs fn holding the store's exclusive lock; every state change happens inside. */
  withLock<T>(fn: () => T): T;
  /** Every held address (canonical text), cheaply: owners are not read. */
  heldIps(): string[];
  /** Every reservation with its owner. */
  list(): Reservation[];
  /** The owner of one address, or undefined when it is free. */
  ownerOf(ip: string): { containerId: string; ifname: string } | undefined;
  /** Everything the owner holds (complete: DEL and CHECK rely on it). */
  findByOwner(containerId: string, ifname: string): string[];
  /**
   * What the owner holds, through an index when the store has one (ADD's fast path).
   * May miss an address whose index entry was lost in a crash: that costs a retried
   * ADD a second address, which DEL or GC release.
   */
  findByOwnerIndexed(containerId: string, ifname: string): string[];
  /** Records ip for the owner (with `meta` when given); false when it is already held (by anyone). Under the lock. */
  reserve(ip: string, containerId: string, ifname: string, meta?: RecordMeta): boolean;
  /** Forgets ip; whether it was held. Under the lock. */
  release(ip: string): boolean;
  /** Releases everything the owner holds and returns it. Under the lock. */
  releaseByOwner(containerId: string, ifname: string): string[];
  /** The round-robin cursor of range set `setIndex` (a hint), if recorded. */
  lastReserved(setIndex: number): string | undefined;
  setLastReserved(setIndex: number, ip: string): void;
}
