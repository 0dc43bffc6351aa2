// Test harness that drives CNI plugins exactly like a container runtime does:
// one exec per command, CNI_* in a clean environment, the network config on stdin,
// the result (or error) as JSON on stdout. The same harness drives patu and the
// reference bridge + host-local plugins, so a suite built on it tests CNI
// behaviour rather than patu internals.
//
// The netns and snapshot helpers shell out to `ip` and `nft` on purpose: they are
// an independent oracle for what the plugin did, not product code.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

// ---------------------------------------------------------------------------
// Locations

/** The repository root: the nearest ancestor of this file holding package.json. */
export const REPO_ROOT: string = (() => {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 8; i++) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    dir = dirname(dir);
  }
  throw new Error(`cni harness: no package.json above ${fileURLToPath(import.meta.url)}`);
})();

export const REFERENCE_DIR = process.env.CNI_REFERENCE_DIR ?? '/usr/lib/cni';
export const PATU_BIN = process.env.PATU_BIN ?? join(REPO_ROOT, 'bin', 'patu');

export const isRoot = (): boolean => process.getuid?.() === 0;

// ---------------------------------------------------------------------------
// Exec

export type CniCommandName = 'ADD' | 'DEL' | 'CHECK' | 'VERSION' | 'STATUS' | 'GC';

export interface ExecOptions {
  containerId?: string;
  netns?: string;
  ifname?: string;
  /** CNI_ARGS, "K=V;K2=V2". */
  args?: string;
  /** CNI_PATH; defaults to the plugin's own directory plus the reference plugin directory. */
  path?: string;
  /** Extra variables, or `undefined` to leave one out (e.g. to test a missing CNI_CONTAINERID). */
  env?: Record<string, string | undefined>;
  /** Kill the plugin after this long; a hung plugin must fail the test, not hang it. */
  timeoutMs?: number;
}

export interface ExecResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** stdout parsed as JSON, or undefined when it is empty or not JSON. */
  json: any;
  ms: number;
}

function pluginEnv(bin: string, command: CniCommandName, o: ExecOptions): Record<string, string> {
  // Built from scratch, never from process.env: a runtime passes only CNI_* and PATH,
  // and NODE_EXTRA_CA_CERTS alone costs a Node plugin ~50 ms per start.
  const env: Record<string, string | undefined> = {
    PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
    CNI_COMMAND: command,
    CNI_CONTAINERID: o.containerId,
    CNI_NETNS: o.netns,
    CNI_IFNAME: o.ifname ?? (o.containerId !== undefined ? 'eth0' : undefined),
    CNI_ARGS: o.args,
    CNI_PATH: o.path ?? `${dirname(bin)}:${REFERENCE_DIR}`,
  };
  if (o.env) {
    for (const [k, v] of Object.entries(o.env)) {
      if (v === undefined) delete env[k];
      else env[k] = v;
    }
  }
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(env)) if (v !== undefined) out[k] = v;
  return out;
}

export interface RunningPlugin {
  child: ChildProcess;
  done: Promise<ExecResult>;
}

/** Starts a plugin and returns at once, so a test can kill it mid-command. */
export function startPlugin(
  bin: string,
  command: CniCommandName,
  /** An object is sent as JSON; a Buffer as its raw bytes (e.g. invalid UTF-8). */
  netconf: object | string | Buffer,
  opts: ExecOptions = {},
): RunningPlugin {
  const t0 = performance.now();
  const child = spawn(bin, [], { env: pluginEnv(bin, command, opts), stdio: ['pipe', 'pipe', 'pipe'] });
  const done = new Promise<ExecResult>((resolve, reject) => {
    let stdout = '';
    let stderr = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 30_000);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`exec ${bin} (CNI_COMMAND=${command}) failed: ${err.message}`));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      let json: unknown;
      try {
        json = stdout.trim() ? JSON.parse(stdout) : undefined;
      } catch {
        json = undefined;
      }
      resolve({ code, signal, stdout, stderr, json, ms: performance.now() - t0 });
    });
  });
  // EPIPE when the plugin exits (or is killed) before reading stdin is expected.
  child.stdin!.on('error', () => {});
  child.stdin!.end(typeof netconf === 'string' || Buffer.isBuffer(netconf) ? netconf : JSON.stringify(netconf));
  return { child, done };
}

/** Runs one CNI command the way a runtime does and collects what the plugin said. */
export function execPlugin(
  bin: string,
  command: CniCommandName,
  netconf: object | string | Buffer,
  opts: ExecOptions = {},
): Promise<ExecResult> {
  return startPlugin(bin, command, netconf, opts).done;
}

/** Short description of a result for assertion messages. */
export function describe(r: ExecResult): string {
  return `exit=${r.code}${r.signal ? ` signal=${r.signal}` : ''} stdout=${r.stdout.trim().slice(0, 800)} stderr=${r.stderr.trim().slice(0, 800)}`;
}

// ---------------------------------------------------------------------------
// Chains (what libcni does for a conflist)

export interface Conflist {
  cniVersion: string;
  name: string;
  plugins: Record<string, unknown>[];
}

/** The config libcni streams to one plugin of a list: name and version from the list, prevResult threaded. */
export function pluginConfig(list: Conflist, i: number, prevResult?: unknown, runtimeConfig?: Record<string, unknown>): Record<string, unknown> {
  const plugin = list.plugins[i]!;
  const conf: Record<string, unknown> = { ...plugin, cniVersion: list.cniVersion, name: list.name };
  if (prevResult !== undefined) conf.prevResult = prevResult;
  // libcni injects only the capabilities a plugin declares.
  const caps = plugin.capabilities as Record<string, boolean> | undefined;
  if (runtimeConfig && caps) {
    const rc: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(runtimeConfig)) if (caps[k]) rc[k] = v;
    if (Object.keys(rc).length) conf.runtimeConfig = rc;
  }
  return conf;
}

export interface ChainStep {
  type: string;
  input: Record<string, unknown>;
  result: ExecResult;
}

/**
 * ADD or CHECK through a list: each plugin gets the previous plugin's result as
 * prevResult (for CHECK, every plugin gets the cached ADD result). DEL runs in
 * reverse order with the cached result. Stops at the first failure like libcni.
 */
export async function execChain(
  list: Conflist,
  command: 'ADD' | 'CHECK' | 'DEL',
  opts: ExecOptions & {
    binFor: (type: string) => string;
    cachedResult?: unknown;
    runtimeConfig?: Record<string, unknown>;
    /** A failure that is a known bug of a third-party plugin: recorded, and the chain goes on. */
    knownBug?: (type: string, result: ExecResult) => boolean;
  },
): Promise<{ steps: ChainStep[]; ok: boolean; result: unknown; knownBugs: ChainStep[] }> {
  const knownBugs: ChainStep[] = [];
  const steps: ChainStep[] = [];
  const order = list.plugins.map((_, i) => i);
  if (command === 'DEL') order.reverse();
  let prev: unknown = command === 'ADD' ? undefined : opts.cachedResult;
  for (const i of order) {
    const input = pluginConfig(list, i, prev, opts.runtimeConfig);
    const type = String(list.plugins[i]!.type);
    const result = await execPlugin(opts.binFor(type), command, input, opts);
    steps.push({ type, input, result });
    if (result.code !== 0 && opts.knownBug?.(type, result)) {
      knownBugs.push({ type, input, result });
      continue;
    }
    if (result.code !== 0) return { steps, ok: false, result: result.json, knownBugs };
    if (command === 'ADD') prev = result.json;
  }
  return { steps, ok: true, result: prev, knownBugs };
}

// ---------------------------------------------------------------------------
// Flavours: one network (bridge, subnet, IPAM dir) for one plugin implementation

export interface Flavour {
  /** 'patu-agent': bin/patu handing each request to a running `patu agent` (its fast path). */
  id: 'patu' | 'patu-agent' | 'reference';
  /** Extra environment for every exec of this flavour's plugins. */
  env: Record<string, string>;
  /** The main plugin binary (patu, or the reference bridge). */
  bin: string;
  /** Spec version the flavour's configs use; the newest the plugin supports. */
  cniVersion: string;
  versionsToTest: string[];
  netName: string;
  bridge: string;
  subnet: string;
  /** First three octets, e.g. "10.201.7". */
  prefix: string;
  gateway: string;
  dataDir: string;
  /** STATUS and GC are spec 1.1 commands; the reference plugins here speak 1.0.0. */
  features: { status: boolean; gc: boolean; errorTable: boolean };
  /** Why the flavour cannot run here, or undefined when it can. */
  skipReason(): string | undefined;
  /** The plugin's own network config (single-plugin form), with overrides. */
  netconf(overrides?: Record<string, unknown>): Record<string, any>;
  /** A conflist: this flavour's plugin first, then `more` (e.g. portmap, bandwidth). */
  conflist(more?: Record<string, unknown>[]): Conflist;
  /** Binary for a plugin type in a chain. */
  binFor(type: string): string;
  /** Removes the bridge and the IPAM dir (the plugins never delete the bridge). */
  destroy(): void;
}

let flavourCounter = 0;

function unique(tag: string): string {
  // pid in base36 keeps names short (bridge names are limited to 15 characters).
  return `${tag}${process.pid.toString(36)}${(flavourCounter++).toString(36)}`;
}

/** A 10.201.<n>.0/24 subnet no host address or route uses yet. */
function freeSubnet(): { subnet: string; prefix: string; gateway: string } {
  const used = new Set<string>();
  const routes = spawnSync('ip', ['-4', 'route', 'show', 'table', 'all'], { encoding: 'utf8' }).stdout ?? '';
  const addrs = spawnSync('ip', ['-4', '-o', 'addr', 'show'], { encoding: 'utf8' }).stdout ?? '';
  for (const m of `${routes}\n${addrs}`.matchAll(/10\.201\.(\d+)\./g)) used.add(m[1]!);
  const start = (process.pid * 31 + flavourCounter * 7) % 250;
  for (let k = 0; k < 250; k++) {
    const n = ((start + k) % 250) + 2;
    if (used.has(String(n)) || claimed.has(n)) continue;
    claimed.add(n);
    return { subnet: `10.201.${n}.0/24`, prefix: `10.201.${n}`, gateway: `10.201.${n}.1` };
  }
  throw new Error('cni harness: no free 10.201.x.0/24 subnet');
}
const claimed = new Set<number>();

function baseFlavour(id: Flavour['id'], tag: string) {
  const netName = unique(`${tag}net`);
  const bridge = unique(`${tag}br`);
  const { subnet, prefix, gateway } = freeSubnet();
  const dataDir = mkdtempSync(join(tmpdir(), `${tag}-ipam-`));
  return { netName, bridge, subnet, prefix, gateway, dataDir, id };
}

function destroyBridge(name: string, dataDir: string): void {
  spawnSync('ip', ['link', 'del', name], { stdio: 'ignore' });
  rmSync(dataDir, { recursive: true, force: true });
}

export function patuFlavour(): Flavour {
  const b = baseFlavour('patu', 'pt');
  const bin = PATU_BIN;
  const pinRoot = `/sys/fs/bpf/patu-test-${b.netName}`;
  return {
    ...b,
    bin,
    env: {},
    cniVersion: '1.1.0',
    versionsToTest: ['0.3.1', '0.4.0', '1.0.0', '1.1.0'],
    features: { status: true, gc: true, errorTable: true },
    skipReason() {
      if (!existsSync(bin)) return `patu plugin binary ${bin} not built yet (run bash scripts/build.sh, or set PATU_BIN)`;
      if (bin === join(REPO_ROOT, 'bin', 'patu') && !existsSync(join(REPO_ROOT, 'dist', 'cni.cjs'))) {
        return `patu plugin bundle ${join(REPO_ROOT, 'dist', 'cni.cjs')} not built yet (run bash scripts/build.sh)`;
      }
      return undefined;
    },
    netconf(overrides = {}) {
      return {
        cniVersion: '1.1.0',
        name: b.netName,
        type: 'patu',
        bridge: b.bridge,
        mtu: 1500,
        hairpin: true,
        masquerade: false,
        ipam: { ranges: [[{ subnet: b.subnet }]], dataDir: b.dataDir },
        // Never the production pins or agent: a test's pods must not land in the node's maps.
        pinRoot,
        agentSocket: join(b.dataDir, 'agent.sock'),
        ...overrides,
      };
    },
    conflist(more = []) {
      const { cniVersion: _v, name: _n, ...plugin } = this.netconf();
      return { cniVersion: '1.1.0', name: b.netName, plugins: [plugin, ...more] };
    },
    binFor(type) {
      return type === 'patu' ? bin : join(REFERENCE_DIR, type);
    },
    destroy() {
      destroyBridge(b.bridge, b.dataDir);
      rmSync(pinRoot, { recursive: true, force: true });
    },
  };
}

export function referenceFlavour(): Flavour {
  const b = baseFlavour('reference', 'rf');
  const bin = join(REFERENCE_DIR, 'bridge');
  return {
    ...b,
    bin,
    env: {},
    // containernetworking-plugins 1.1.x speaks spec up to 1.0.0 (CNI_COMMAND=VERSION).
    cniVersion: '1.0.0',
    versionsToTest: ['0.3.1', '0.4.0', '1.0.0'],
    features: { status: false, gc: false, errorTable: false },
    skipReason() {
      for (const p of ['bridge', 'host-local']) {
        if (!existsSync(join(REFERENCE_DIR, p))) return `reference plugin ${join(REFERENCE_DIR, p)} missing (apt-get install containernetworking-plugins)`;
      }
      return undefined;
    },
    netconf(overrides = {}) {
      return {
        cniVersion: '1.0.0',
        name: b.netName,
        type: 'bridge',
        bridge: b.bridge,
        isGateway: true,
        hairpinMode: true,
        ipMasq: false,
        mtu: 1500,
        ipam: { type: 'host-local', ranges: [[{ subnet: b.subnet }]], dataDir: b.dataDir },
        ...overrides,
      };
    },
    conflist(more = []) {
      const { cniVersion: _v, name: _n, ...plugin } = this.netconf();
      return { cniVersion: '1.0.0', name: b.netName, plugins: [plugin, ...more] };
    },
    binFor(type) {
      return join(REFERENCE_DIR, type);
    },
    destroy() {
      destroyBridge(b.bridge, b.dataDir);
    },
  };
}

// ---------------------------------------------------------------------------
// Network namespaces (ip netns: the runtime's part of the job)

export const netnsPath = (name: string): string => `/var/run/netns/${name}`;

function run(cmd: string, args: string[], what: string): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${what}: ${cmd} ${args.join(' ')} exited ${r.status}: ${(r.stderr ?? '').trim()}`);
  return r.stdout;
}

export function addNetns(name: string): string {
  run('ip', ['netns', 'add', name], `creating netns ${name}`);
  // A runtime brings lo up; ping of the pod's own address depends on it.
  run('ip', ['-n', name, 'link', 'set', 'lo', 'up'], `bringing lo up in ${name}`);
  return netnsPath(name);
}

export function delNetns(name: string): void {
  spawnSync('ip', ['netns', 'del', name], { stdio: 'ignore' });
}

/** Runs a command inside a netns; returns the exit status and output, never throws. */
export function nsRun(ns: string, argv: string[], timeoutMs = 10_000): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync('ip', ['netns', 'exec', ns, ...argv], { encoding: 'utf8', timeout: timeoutMs });
  return { status: r.status, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
}

/** One bounded ping (busybox: iputils is not installed here). */
export function ping(ns: string, addr: string, count = 1): { ok: boolean; out: string } {
  const r = nsRun(ns, ['busybox', 'ping', '-c', String(count), '-W', '2', addr], 8_000);
  return { ok: r.status === 0, out: r.stdout + r.stderr };
}

/**
 * A TCP exchange from `clientNs` to a busybox nc server in `serverNs`: the server
 * must receive exactly the token the client sent. Bounded: a few connect retries
 * while the server starts, then the server is killed.
 */
export async function tcpExchange(serverNs: string, clientNs: string, addr: string, port: number): Promise<{ ok: boolean; received: string; detail: string }> {
  const token = `patu-token-${process.pid}-${port}`;
  const server = spawn('ip', ['netns', 'exec', serverNs, 'busybox', 'nc', '-l', '-p', String(port)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let received = '';
  let serverErr = '';
  server.stdout.setEncoding('utf8').on('data', (d: string) => (received += d));
  server.stderr.setEncoding('utf8').on('data', (d: string) => (serverErr += d));
  const serverDone = new Promise<void>((res) => server.on('close', () => res()));
  const killTimer = setTimeout(() => server.kill('SIGKILL'), 8_000);
  let detail = '';
  try {
    for (let attempt = 0; attempt < 20; attempt++) {
      await new Promise((r) => setTimeout(r, 100));
      const client = spawnSync('ip', ['netns', 'exec', clientNs, 'busybox', 'nc', '-w', '2', addr, String(port)], {
        input: `${token}\n`,
        encoding: 'utf8',
        timeout: 5_000,
      });
      detail = `client exit ${client.status}: ${(client.stderr ?? '').trim()}`;
      if (client.status === 0) break;
    }
    await Promise.race([serverDone, new Promise((r) => setTimeout(r, 3_000))]);
  } finally {
    clearTimeout(killTimer);
    server.kill('SIGKILL');
  }
  const ok = received.trim() === token;
  if (!ok) {
    // Enough context to tell a plugin fault from interference (e.g. another test's
    // cgroup socket programs): sockets on both sides and BPF cgroup attachments.
    const ss = (ns: string) => nsRun(ns, ['ss', '-tanoi'], 3_000).stdout.trim();
    const cg = spawnSync('bpftool', ['cgroup', 'tree'], { encoding: 'utf8', timeout: 3_000 }).stdout ?? '';
    detail += `; server ns ss: ${ss(serverNs)}; client ns ss: ${ss(clientNs)}; bpftool cgroup tree: ${cg.trim()}`;
  }
  return { ok, received: received.trim(), detail: `${detail}; server stderr: ${serverErr.trim()}` };
}

// ---------------------------------------------------------------------------
// Host snapshots: what a plugin may have left behind

export interface SnapshotScope {
  bridge: string;
  /** First three octets of the /24, e.g. "10.201.7". */
  prefix: string;
  dataDir: string;
  /** netns names whose veth peers count as ours. */
  netns?: string[];
  /** Container ids whose firewall rules / IPAM records count as ours. */
  containerIds?: string[];
}

export interface HostSnapshot {
  /** "name type master" of our links. */
  links: string[];
  /** "addr/len dev" of host addresses inside the subnet. */
  addresses: string[];
  /** Host routes into the subnet or through the bridge (all tables). */
  routes: string[];
  /** Every nftables line naming our bridge, subnet or containers (iptables-nft rules included). */
  nft: string[];
  /** IPAM files: relative path -> content. */
  ipamFiles: Record<string, string>;
}

function ipJson(args: string[]): any[] {
  const r = spawnSync('ip', ['-j', ...args], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ip -j ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return r.stdout.trim() ? JSON.parse(r.stdout) : [];
}

function listFiles(dir: string, base = dir, out: Record<string, string> = {}): Record<string, string> {
  if (!existsSync(dir)) return out;
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    const st = statSync(p);
    if (st.isDirectory()) listFiles(p, base, out);
    else if (!st.isFile()) continue; // sockets, fifos: not records
    else out[relative(base, p)] = st.size > 65536 ? `<${st.size} bytes>` : readFileSync(p, 'utf8');
  }
  return out;
}

/**
 * Records what on the host belongs to one test network. The scope keeps other
 * engineers' concurrent tests (their own links, tables) out of the picture while
 * still catching anything a plugin leaked for this network: links on the bridge,
 * veths whose peer sits in one of our namespaces, host addresses and routes in our
 * subnet, firewall rules that name us, and IPAM files.
 */
export function snapshotHost(scope: SnapshotScope): HostSnapshot {
  const nsIds = new Set<number>();
  if (scope.netns?.length) {
    for (const ns of ipJson(['netns', 'list'])) {
      if (scope.netns.includes(ns.name) && typeof ns.id === 'number') nsIds.add(ns.id);
    }
  }
  const links: string[] = [];
  for (const l of ipJson(['-d', 'link', 'show'])) {
    const kind = l.linkinfo?.info_kind ?? l.link_type;
    const ours =
      l.ifname === scope.bridge ||
      l.master === scope.bridge ||
      (kind === 'veth' && typeof l.link_netnsid === 'number' && nsIds.has(l.link_netnsid));
    if (ours) links.push(`${l.ifname} ${kind} master=${l.master ?? '-'}`);
  }
  const addresses: string[] = [];
  for (const l of ipJson(['-4', 'addr', 'show'])) {
    for (const a of l.addr_info ?? []) {
      if (String(a.local).startsWith(`${scope.prefix}.`)) addresses.push(`${a.local}/${a.prefixlen} ${l.ifname}`);
    }
  }
  const routes: string[] = [];
  for (const r of ipJson(['-4', 'route', 'show', 'table', 'all'])) {
    if (String(r.dst).startsWith(`${scope.prefix}.`) || r.dev === scope.bridge) {
      routes.push(`${r.type ?? 'unicast'} ${r.dst} dev=${r.dev} table=${r.table ?? 'main'}`);
    }
  }
  const nft: string[] = [];
  const ruleset = spawnSync('nft', ['list', 'ruleset'], { encoding: 'utf8' }).stdout ?? '';
  const needles = [scope.bridge, `${scope.prefix}.`, ...(scope.containerIds ?? [])];
  for (const line of ruleset.split('\n')) {
    const t = line.trim();
    // Table names alone are not ours to judge: other tests may create `inet patu`
    // concurrently. Rules that name our bridge, subnet or containers are.
    if (needles.some((n) => t.includes(n))) nft.push(t);
  }
  return {
    links: links.sort(),
    addresses: addresses.sort(),
    routes: routes.sort(),
    nft: nft.sort(),
    ipamFiles: listFiles(scope.dataDir),
  };
}

const IPV4 = /^\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}$/;

/**
 * The IPAM records in a snapshot: files named after an address (host-local's
 * layout), and any file that mentions one of the given container ids (so a store
 * with another layout is still checked). Bookkeeping such as lock files or a
 * last-reserved cursor is not an allocation.
 */
export function ipamRecords(s: HostSnapshot, containerIds: string[] = []): string[] {
  const out: string[] = [];
  for (const [path, content] of Object.entries(s.ipamFiles)) {
    const base = path.split('/').pop()!;
    if (IPV4.test(base) || containerIds.some((id) => content.includes(id))) out.push(path);
  }
  return out.sort();
}

export interface DiffOptions {
  /** Leave out the bridge itself, its address and its connected route (plugins keep the bridge). */
  ignoreBridge?: boolean;
  containerIds?: string[];
}

/** Human-readable differences between two snapshots of the same scope; empty when equal. */
export function diffSnapshots(before: HostSnapshot, after: HostSnapshot, scope: SnapshotScope, o: DiffOptions = {}): string[] {
  const dropBridge = (xs: string[]) =>
    o.ignoreBridge ? xs.filter((x) => !x.startsWith(`${scope.bridge} `) && !x.endsWith(` ${scope.bridge}`) && !x.includes(`dev=${scope.bridge} `)) : xs;
  const out: string[] = [];
  const cmp = (what: string, a: string[], b: string[]) => {
    const A = new Set(a);
    const B = new Set(b);
    for (const x of b) if (!A.has(x)) out.push(`+ ${what}: ${x}`);
    for (const x of a) if (!B.has(x)) out.push(`- ${what}: ${x}`);
  };
  cmp('link', dropBridge(before.links), dropBridge(after.links));
  cmp('address', dropBridge(before.addresses), dropBridge(after.addresses));
  cmp('route', dropBridge(before.routes), dropBridge(after.routes));
  cmp('nft', before.nft, after.nft);
  cmp('ipam record', ipamRecords(before, o.containerIds), ipamRecords(after, o.containerIds));
  return out;
}

// ---------------------------------------------------------------------------
// patu through its agent

export interface AgentHandle {
  socket: string;
  pid: number;
  /** Requests the agent logged as served: proves the launcher did not fall back to Node. */
  served(): number;
  log(): string;
  /** SIGTERM, then SIGKILL after 5 s; resolves with how the agent ended. */
  stop(): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Starts `bin/patu agent` on a private socket; resolves once the socket exists (bounded). */
export async function startAgent(bin: string, socket: string, logLevel = 'info', extraArgs: string[] = []): Promise<AgentHandle> {
  const child = spawn(bin, ['agent', '--cni-socket', socket, '--log-level', logLevel, ...extraArgs], {
    env: { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (log += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (log += d));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((res) =>
    child.on('close', (code, signal) => res({ code, signal })),
  );
  for (let i = 0; i < 100 && !existsSync(socket); i++) {
    if (child.exitCode !== null) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  if (!existsSync(socket)) {
    child.kill('SIGKILL');
    throw new Error(`patu agent did not create ${socket} within 10 s (exit ${child.exitCode}): ${log.slice(0, 2000)}`);
  }
  return {
    socket,
    pid: child.pid!,
    served: () => (log.match(/"msg":"cni request"/g) ?? []).length,
    log: () => log,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 5_000);
      const how = await exited;
      clearTimeout(t);
      return how;
    },
  };
}

/**
 * patu with its agent: the same netconf and checks as patuFlavour, but every exec
 * carries PATU_AGENT_SOCKET so bin/patu forwards to the agent (start() first).
 */
export function patuAgentFlavour(logLevel = 'info'): Flavour & { start(): Promise<AgentHandle>; agent?: AgentHandle } {
  const base = patuFlavour();
  const socket = join(base.dataDir, 'agent-h4.sock');
  const f: Flavour & { start(): Promise<AgentHandle>; agent?: AgentHandle } = {
    ...base,
    id: 'patu-agent',
    env: { PATU_AGENT_SOCKET: socket },
    async start() {
      f.agent = await startAgent(base.bin, socket, logLevel);
      return f.agent;
    },
    destroy() {
      base.destroy();
    },
  };
  return f;
}
