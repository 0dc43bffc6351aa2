// The nodes file (`patu agent --nodes-file PATH`): the cluster's nodes when there is no
// Kubernetes, one YAML or JSON list of {name, podCIDR, address}. Validated like the
// services file: every problem named with its field (`nodes[1].podCIDR: ...`), and a
// bad edit keeps the last good state (config-file.ts's reader and watcher).
import { ConfigSyntaxError, FileWatcher, nestingDepth, parseYamlOrJson, readConfigFile, type FileWatchOptions } from '../config-file.js';
import { PatuError } from '../errors.js';
import { isIPv4, parseCidr, formatNetwork } from '../net/cidr.js';
import type { NodeInfo } from './model.js';

export class NodesFileError extends PatuError {
  readonly code = 'NODES_FILE';
  constructor(readonly file: string, readonly problems: string[]) {
    super(`${file}: ${problems.length === 1 ? problems[0] : `${problems.length} problems:\n  ${problems.join('\n  ')}`}`);
  }
}

/** Far more than a small cluster's nodes file; bounds what a runaway file costs. */
export const MAX_NODES_FILE_BYTES = 4 << 20;
const MAX_NESTING = 16;
const MAX_PROBLEMS = 50;
const SAY_NONE = 'write "nodes: []" to route to no node';
const FIELDS = new Set(['name', 'podCIDR', 'address']);
// A Kubernetes node name: a DNS subdomain.
const NODE_NAME = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const shown = (v: string): string => (v.length <= 40 && /^[\w.-]+$/.test(v) ? v : JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}...` : v));

/** Validates parsed content; throws NodesFileError listing every problem (up to 50), each with its field's path. */
export function validateNodes(doc: unknown, file = '<input>'): NodeInfo[] {
  const problems: string[] = [];
  const bad = (path: string, msg: string): void => {
    if (problems.length < MAX_PROBLEMS) problems.push(`${path}: ${msg}`);
  };
  // As with services: a document that says nothing may be a writer caught half-way.
  if (doc === null || doc === undefined) throw new NodesFileError(file, [`(top level): the file holds no document; ${SAY_NONE}`]);
  if (!isObj(doc)) throw new NodesFileError(file, ['(top level): must be an object with a `nodes` list']);
  for (const k of Object.keys(doc)) if (k !== 'nodes') bad(shown(k), 'unknown field (expected only `nodes`)');
  if (!('nodes' in doc)) throw new NodesFileError(file, [...problems, `nodes: missing; ${SAY_NONE}`]);
  const list = doc.nodes;
  if (!Array.isArray(list)) throw new NodesFileError(file, [`nodes: must be a list (${SAY_NONE})`]);
  const out: NodeInfo[] = [];
  const names = new Map<string, number>();
  const addresses = new Map<string, number>();
  list.forEach((n: unknown, i: number) => {
    const at = `nodes[${i}]`;
    if (!isObj(n)) return bad(at, 'must be an object with name, podCIDR and address');
    for (const k of Object.keys(n)) if (!FIELDS.has(k)) bad(`${at}.${shown(k)}`, 'unknown field (name, podCIDR, address)');
    const before = problems.length;
    const { name, podCIDR, address } = n;
    if (typeof name !== 'string' || name.length > 253 || !NODE_NAME.test(name)) bad(`${at}.name`, 'must be a node name (lowercase letters, digits, - and .; at most 253)');
    else if (names.has(name)) bad(`${at}.name`, `duplicate of nodes[${names.get(name)}].name`);
    let cidr = '';
    if (typeof podCIDR !== 'string') {
      bad(`${at}.podCIDR`, 'must be an IPv4 CIDR like 10.200.1.0/24');
    } else {
      try {
        const c = parseCidr(podCIDR);
        if (c.family !== 4) bad(`${at}.podCIDR`, 'must be IPv4 (IPv6 pod CIDRs are not routed between nodes yet)');
        else if (c.prefix < 8 || c.prefix > 30) bad(`${at}.podCIDR`, 'prefix must be /8 to /30');
        else cidr = formatNetwork(c);
      } catch (e) {
        bad(`${at}.podCIDR`, (e as Error).message);
      }
    }
    if (typeof address !== 'string' || !isIPv4(address)) bad(`${at}.address`, 'must be an IPv4 address (the node\'s InternalIP)');
    else if (address === '0.0.0.0' || address.startsWith('127.')) bad(`${at}.address`, `${address} cannot reach another node`);
    else if (addresses.has(address)) bad(`${at}.address`, `duplicate of nodes[${addresses.get(address)}].address`);
    if (problems.length > before) return;
    names.set(name as string, i);
    addresses.set(address as string, i);
    out.push({ name: name as string, podCIDR: cidr, address: address as string });
  });
  if (problems.length) throw new NodesFileError(file, problems);
  return out;
}

export async function parseNodesText(text: string, file: string): Promise<NodeInfo[]> {
  // Empty is an error, not "no nodes": a watcher often reads between a writer's truncate and its write.
  if (text.trim() === '') throw new NodesFileError(file, [`(empty): the file is empty; ${SAY_NONE}`]);
  const depth = nestingDepth(text);
  if (depth > MAX_NESTING) throw new NodesFileError(file, [`(syntax): nested ${depth} levels deep; a nodes file needs fewer than ${MAX_NESTING}`]);
  let doc: unknown;
  try {
    doc = await parseYamlOrJson(text, file);
  } catch (e) {
    if (e instanceof ConfigSyntaxError) throw new NodesFileError(file, e.problems);
    throw e;
  }
  return validateNodes(doc, file);
}

export async function loadNodesFile(file: string): Promise<NodeInfo[]> {
  const text = readConfigFile(file, { what: 'nodes file', maxBytes: MAX_NODES_FILE_BYTES, fail: (problem) => new NodesFileError(file, [problem]) });
  return parseNodesText(text, file);
}

/** Watches a nodes file: onChange gets every good content (the first included); a bad edit is reported after it settles. */
export class NodesFileWatcher extends FileWatcher<NodeInfo[]> {
  constructor(file: string, opts: FileWatchOptions<NodeInfo[]>) {
    super(file, loadNodesFile, opts);
  }
}
