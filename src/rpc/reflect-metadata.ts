// The few Reflect metadata functions tsyringe needs, which @peculiar/x509 uses for its
// algorithm registry: tsyringe throws at import without them ("requires a reflect
// polyfill"). x509 only stores and reads its own metadata (no emitted design:paramtypes),
// so a per-object map is enough; the reflect-metadata package would do the same with more.
// Imported by certs.ts before @peculiar/x509 (ES modules evaluate in import order), so only
// `patu certs` and its tests ever install it; an existing implementation is left alone.
type Key = string | symbol | undefined;
const store = new WeakMap<object, Map<Key, Map<unknown, unknown>>>();

function own(target: object, prop: Key, create: boolean): Map<unknown, unknown> | undefined {
  let byProp = store.get(target);
  if (!byProp) {
    if (!create) return undefined;
    byProp = new Map();
    store.set(target, byProp);
  }
  let m = byProp.get(prop);
  if (!m && create) {
    m = new Map();
    byProp.set(prop, m);
  }
  return m;
}

interface ReflectMetadata {
  defineMetadata(key: unknown, value: unknown, target: object, prop?: Key): void;
  getOwnMetadata(key: unknown, target: object, prop?: Key): unknown;
  getMetadata(key: unknown, target: object, prop?: Key): unknown;
}

const R = Reflect as unknown as Partial<ReflectMetadata>;
if (typeof R.getMetadata !== 'function') {
  R.defineMetadata = (key, value, target, prop) => { own(target, prop, true)!.set(key, value); };
  R.getOwnMetadata = (key, target, prop) => own(target, prop, false)?.get(key);
  R.getMetadata = (key, target, prop) => {
    for (let t: object | null = target; t !== null; t = Object.getPrototypeOf(t)) {
      const m = own(t, prop, false);
      if (m?.has(key)) return m.get(key);
    }
    return undefined;
  };
}
export {};
