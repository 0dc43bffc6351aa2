// The JSON path of a field as every validator here names it in messages:
// ['spec', 'interfaces', 1, 'address'] -> 'spec.interfaces[1].address'. Shared by the
// CNI netconf, the policy file and the podnet objects (zod issue paths). Import-free.

/** `root` names the whole document (an empty path). */
export function fieldPath(path: readonly PropertyKey[], root = '(root)'): string {
  if (path.length === 0) return root;
  return path.map((k, i) => (typeof k === 'number' ? `[${k}]` : `${i ? '.' : ''}${String(k)}`)).join('');
}
