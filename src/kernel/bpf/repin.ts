// Keeping map pins true to the programs that run. A loaded program keeps the
// maps it was loaded with, whatever happens to their pins: if a pin is removed,
// the next libbpf load creates a new empty map there; if it is replaced, the
// next load reuses the impostor. Either way userspace then writes maps no
// running program reads, and reports success. These helpers read which maps
// the running programs use (prog info map_ids) and put those back in place.
import { unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { mapInfoById, progMapIds } from './introspect.js';
import { pinMapById, pinnedMapId } from './map.js';

export interface UsedMap {
  id: number;
  /** Which program uses it (for messages). */
  by: string;
}

/**
 * The maps named in `names` that the given programs use, by name. Two
 * programs using two different maps of one name cannot both be right: an error.
 */
export function mapsUsedBy(programs: readonly { progId: number; label: string }[], names: ReadonlySet<string>): Map<string, UsedMap> {
  const used = new Map<string, UsedMap>();
  for (const { progId, label } of programs) {
    for (const id of progMapIds(progId)) {
      const name = mapInfoById(id).name;
      if (!names.has(name)) continue;
      const seen = used.get(name);
      if (seen && seen.id !== id) {
        throw new Error(`running programs use two different ${name} maps (${seen.by}: id ${seen.id}, ${label}: id ${id}): detach them and set up again`);
      }
      if (!seen) used.set(name, { id, by: label });
    }
  }
  return used;
}

/** Pins each used map at dir/<name> where the pin is missing or holds another map. Returns what it changed. */
export function repinMaps(dir: string, used: ReadonlyMap<string, UsedMap>): string[] {
  const repairs: string[] = [];
  for (const [name, { id, by }] of used) {
    const path = join(dir, name);
    const pinned = pinnedMapId(path);
    if (pinned === id) continue;
    if (pinned !== undefined) unlinkSync(path);
    pinMapById(id, path);
    repairs.push(pinned === undefined
      ? `${name}: pin was missing; re-pinned map id ${id}, which ${by} uses`
      : `${name}: pin held map id ${pinned}, ${by} uses ${id}; re-pinned ${id}`);
  }
  return repairs;
}
