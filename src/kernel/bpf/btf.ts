// The C side of a map's layout, read from the BTF that clang puts in every
// object built with -g: for each map, its key and value type with the offset
// and size of every struct field. Comparing that with a codec's layout
// (layoutMismatches) catches what a size check cannot: two same-size fields
// swapped, or a field moved into what used to be padding.
import koffi from 'koffi';
import { raw, captureLibbpf, errno, type Ptr } from './libbpf.js';
import { BpfError } from './errors.js';
import type { Codec } from './map.js';

export interface CField {
  name: string;
  /** Byte offset in the struct. */
  offset: number;
  size: number;
}

export interface CType {
  /** The C name ('patu_svc_key', 'unsigned int'); '' for an anonymous type. */
  name: string;
  size: number;
  /** Struct or union members; null for any other kind (integers, arrays, ...). */
  fields: CField[] | null;
}

export interface MapLayout {
  map: string;
  key: CType;
  value: CType;
}

// struct btf_type { __u32 name_off; __u32 info; __u32 size_or_type; } then, for
// structs and unions, vlen x struct btf_member { __u32 name_off, type, offset; }.
const BTF_KIND_STRUCT = 4;
const BTF_KIND_UNION = 5;
const BTF_TYPE_SIZE = 12;

function describe(btf: Ptr, id: number, what: string): CType {
  const resolved = raw.btf__resolve_type(btf, id) as number;
  if (resolved < 0) throw new BpfError('btf__resolve_type', -resolved, { map: what });
  const t = raw.btf__type_by_id(btf, resolved) as Ptr | null;
  if (t == null) throw new BpfError('btf__type_by_id', errno(), { map: what });
  const [nameOff = 0, info = 0] = koffi.decode(t, 'uint32', 2) as number[];
  const kind = (info >>> 24) & 0x1f;
  const vlen = info & 0xffff;
  const kflag = info >>> 31 === 1;
  const size = Number(raw.btf__resolve_size(btf, resolved) as bigint);
  if (size < 0) throw new BpfError('btf__resolve_size', -size, { map: what });
  const name = (raw.btf__name_by_offset(btf, nameOff) as string | null) ?? '';
  if (kind !== BTF_KIND_STRUCT && kind !== BTF_KIND_UNION) return { name, size, fields: null };
  const members = vlen ? (koffi.decode(t, BTF_TYPE_SIZE, 'uint32', vlen * 3) as number[]) : [];
  const fields: CField[] = [];
  for (let i = 0; i < vlen; i++) {
    const mName = members[i * 3]!, mType = members[i * 3 + 1]!, mOff = members[i * 3 + 2]!;
    // With kflag the low 24 bits are the bit offset and the high 8 a bitfield size.
    const bitOff = kflag ? mOff & 0xffffff : mOff;
    if (kflag && mOff >>> 24 !== 0) throw new Error(`${what}: bitfield ${raw.btf__name_by_offset(btf, mName)} has no byte layout a codec can mirror`);
    fields.push({
      name: (raw.btf__name_by_offset(btf, mName) as string | null) ?? '',
      offset: bitOff / 8,
      size: Number(raw.btf__resolve_size(btf, mType) as bigint),
    });
  }
  return { name, size, fields };
}

/**
 * Every map of a compiled object with its key and value layout, from the
 * object's own BTF. Opens the file with libbpf without loading anything, so
 * it needs no privilege.
 */
export function mapLayouts(objectPath: string): MapLayout[] {
  const log: string[] = [];
  const obj = captureLibbpf(log, () => raw.bpf_object__open_file(objectPath, null) as Ptr | null);
  if (obj == null) throw new BpfError('bpf_object__open_file', errno(), { object: objectPath, log: log.join('') });
  try {
    const btf = raw.bpf_object__btf(obj) as Ptr | null;
    if (btf == null) throw new Error(`${objectPath} has no BTF (compile with clang -g)`);
    const out: MapLayout[] = [];
    for (let m = raw.bpf_object__next_map(obj, null) as Ptr | null; m != null; m = raw.bpf_object__next_map(obj, m) as Ptr | null) {
      const map = raw.bpf_map__name(m) as string;
      const keyId = raw.bpf_map__btf_key_type_id(m) as number;
      const valueId = raw.bpf_map__btf_value_type_id(m) as number;
      // Sections such as .bss/.rodata are maps too, with no key type: not a layout anyone mirrors.
      if (keyId === 0 || valueId === 0) continue;
      out.push({ map, key: describe(btf, keyId, `${map} key`), value: describe(btf, valueId, `${map} value`) });
    }
    return out;
  } finally {
    raw.bpf_object__close(obj);
  }
}

const snake = (camel: string): string => camel.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);

/**
 * Where a codec disagrees with the C type: total size, and for structs each
 * field's offset and size (TS field `svcId` is C `svc_id`). Empty when they
 * match. A non-struct codec may stand for a struct of a single member that
 * spans it (`struct { char name[64]; }` as a 64-byte string codec).
 */
export function layoutMismatches(c: CType, codec: Codec<unknown>): string[] {
  const what = c.fields ? `struct ${c.name || '(anonymous)'}` : `C type ${c.name || '(anonymous)'}`;
  const out: string[] = [];
  if (codec.size !== c.size) out.push(`${what} is ${c.size} bytes, the codec ${codec.size}`);
  const tsFields = codec.fields;
  if (!c.fields) {
    if (tsFields) out.push(`${what} is not a struct, the codec has fields ${tsFields.map((f) => f.name).join(', ')}`);
    return out;
  }
  if (!tsFields) {
    const only = c.fields.length === 1 && c.fields[0]!.offset === 0 && c.fields[0]!.size === c.size;
    if (!only) out.push(`${what} has fields ${c.fields.map((f) => f.name).join(', ')}, the codec is not a struct codec`);
    return out;
  }
  const ts = new Map(tsFields.map((f) => [snake(f.name), f]));
  for (const f of c.fields) {
    const t = ts.get(f.name);
    if (!t) {
      out.push(`${what}.${f.name} (offset ${f.offset}, ${f.size} bytes) has no codec field`);
      continue;
    }
    ts.delete(f.name);
    if (t.offset !== f.offset) out.push(`${what}.${f.name} is at offset ${f.offset} in C, ${t.offset} in the codec (${t.name})`);
    if (t.size !== f.size) out.push(`${what}.${f.name} is ${f.size} bytes in C, ${t.size} in the codec (${t.name})`);
  }
  for (const [name, t] of ts) out.push(`codec field ${t.name} (${name}) is not in ${what}`);
  return out;
}
