// Bad input the probe of issue 15 found accepted, or answered with a stack trace (needs
// root): each case runs the real bin/patu, in-process and through a running agent, and
// checks the answer (spec code, a message naming the field, no JavaScript stack) and
// that nothing was changed or left behind: no address on a link patu did not create,
// no leaked link, no IPAM record.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  addNetns,
  delNetns,
  describe as show,
  diffSnapshots,
  execPlugin,
  isRoot,
  patuAgentFlavour,
  patuFlavour,
  snapshotHost,
  type CniCommandName,
  type ExecOptions,
  type ExecResult,
  type Flavour,
  type SnapshotScope,
} from '../helpers/cni.js';

const ROOT = isRoot();
if (!ROOT) test('CNI validation', { skip: 'needs root: creates network namespaces and links' }, () => {});

/** A JavaScript stack frame ("    at fn (file.js:1:2)") anywhere in the text. */
const STACK = /\n\s*at\s|\bat\s\S+\s\(?\S+:\d+:\d+\)?/;

const tag = `cv${process.pid.toString(36)}`;

function ip(args: string[]): string {
  const r = spawnSync('ip', args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

/** "addr/len" of every IPv4 and IPv6 address on a link, sorted. */
function addressesOf(link: string): string[] {
  const j = JSON.parse(ip(['-j', 'addr', 'show', 'dev', link]) || '[]') as { addr_info?: { local: string; prefixlen: number }[] }[];
  return j.flatMap((l) => (l.addr_info ?? []).map((a) => `${a.local}/${a.prefixlen}`)).sort();
}

/** Names of host links that start with `prefix` (a leaked, truncated bridge name shows up here). */
function linksStartingWith(prefix: string): string[] {
  const j = JSON.parse(ip(['-j', 'link', 'show']) || '[]') as { ifname: string }[];
  return j.map((l) => l.ifname).filter((n) => n.startsWith(prefix)).sort();
}

interface Case {
  what: string;
  command?: CniCommandName;
  conf: object | string | Buffer;
  containerId?: string;
  code: number;
  /** The message must name the field or variable. */
  field: RegExp;
}

for (const make of [patuFlavour, () => patuAgentFlavour('debug')]) {
  const f: Flavour & { start?: () => Promise<unknown>; agent?: { log(): string; stop(): Promise<void> } } = ROOT ? make() : patuFlavour();
  const skip = !ROOT ? 'needs root' : f.skipReason();
  describe(`CNI validation: ${f.id}`, { skip: skip ?? false }, () => {
    const nsName = `${tag}${f.id === 'patu' ? 'p' : 'a'}`;
    const dummy = `${nsName}d`;
    const foreign = `${nsName}f`;
    const leak = `${nsName}n`;
    let podPath = '';
    const podId = `${nsName}-ctr`;
    const scope = (): SnapshotScope => ({ bridge: f.bridge, prefix: f.prefix, dataDir: f.dataDir, netns: [nsName], containerIds: [podId] });
    const run = (cmd: CniCommandName, conf: object | string | Buffer, o: ExecOptions = {}): Promise<ExecResult> =>
      execPlugin(f.bin, cmd, conf, { containerId: podId, netns: podPath, ifname: 'eth0', ...o, env: { ...f.env, ...o.env } });

    before(async () => {
      if (f.start) await f.start();
      podPath = addNetns(nsName);
      // Links patu did not create, named in a config: it must refuse them and change nothing.
      ip(['link', 'add', dummy, 'type', 'veth', 'peer', 'name', `${nsName}e`]);
      ip(['link', 'add', foreign, 'type', 'bridge']);
    });

    after(async () => {
      // A failed case may have put this network's gateway on lo: take it off again.
      for (const a of addressesOf('lo')) if (a.startsWith(`${f.prefix}.`)) spawnSync('ip', ['addr', 'del', a, 'dev', 'lo'], { stdio: 'ignore' });
      spawnSync('ip', ['link', 'del', dummy], { stdio: 'ignore' });
      spawnSync('ip', ['link', 'del', foreign], { stdio: 'ignore' });
      spawnSync('ip', ['link', 'del', leak], { stdio: 'ignore' });
      delNetns(nsName);
      await f.agent?.stop();
      f.destroy();
    });

    /** Runs every case and collects what went wrong, so one run shows all failures. */
    async function check(cases: Case[]): Promise<string[]> {
      const problems: string[] = [];
      const watched = ['lo', dummy, foreign];
      for (const c of cases) {
        const before = snapshotHost(scope());
        const addrsBefore = watched.map(addressesOf);
        const r = await run(c.command ?? 'ADD', c.conf, c.containerId !== undefined ? { containerId: c.containerId } : {});
        if (r.code === 0) {
          problems.push(`${c.what}: ${c.command ?? 'ADD'} succeeded: ${show(r)}`);
          await run('DEL', f.netconf(), c.containerId !== undefined ? { containerId: c.containerId } : {});
        } else {
          const j = r.json;
          if (j?.code !== c.code) problems.push(`${c.what}: want code ${c.code}, got ${show(r)}`);
          if (typeof j?.msg !== 'string' || !c.field.test(j.msg)) problems.push(`${c.what}: msg must name ${c.field}: ${show(r)}`);
          if (STACK.test(r.stdout)) problems.push(`${c.what}: the answer carries a stack trace: ${show(r)}`);
        }
        watched.forEach((l, i) => {
          const now = addressesOf(l);
          if (JSON.stringify(now) !== JSON.stringify(addrsBefore[i])) {
            problems.push(`${c.what}: addresses of ${l} changed: ${addrsBefore[i]!.join(',')} -> ${now.join(',')}`);
          }
        });
        const leaked = linksStartingWith(leak);
        if (leaked.length) {
          problems.push(`${c.what}: left links ${leaked.join(', ')}`);
          for (const l of leaked) spawnSync('ip', ['link', 'del', l], { stdio: 'ignore' });
        }
        const diff = diffSnapshots(before, snapshotHost(scope()), scope(), { containerIds: [podId] });
        if (diff.length) problems.push(`${c.what}: left ${diff.join('; ')}`);
      }
      return problems;
    }

    test('names, links and paths that are not what they claim: refused, nothing changed', async () => {
      const good = f.netconf();
      const bytes = (bridgeBytes: number[]): Buffer => {
        const [head, tail] = JSON.stringify({ ...good, bridge: '@@' }).split('@@') as [string, string];
        return Buffer.concat([Buffer.from(head), Buffer.from(bridgeBytes), Buffer.from(tail)]);
      };
      const problems = await check([
        { what: 'bridge "lo"', conf: { ...good, bridge: 'lo' }, code: 7, field: /bridge/ },
        { what: 'bridge: an existing veth', conf: { ...good, bridge: dummy }, code: 7, field: /bridge/ },
        { what: 'bridge: an existing bridge patu did not create', conf: { ...good, bridge: foreign }, code: 7, field: /bridge/ },
        { what: 'bridge with a NUL byte', conf: { ...good, bridge: `${leak}\u0000x` }, code: 7, field: /bridge/ },
        { what: 'bridge with invalid UTF-8', conf: bytes([...Buffer.from(leak), 0xff, 0xfe]), code: 6, field: /UTF-8/ },
        { what: 'bridge longer than 15 bytes in UTF-8', conf: { ...good, bridge: 'ééééééééé' }, code: 7, field: /bridge/ },
        { what: 'pinRoot with ..', conf: { ...good, pinRoot: '/sys/fs/bpf/..' }, code: 7, field: /pinRoot/ },
        { what: 'pinRoot climbing out', conf: { ...good, pinRoot: '/sys/fs/bpf/../../tmp' }, code: 7, field: /pinRoot/ },
        { what: 'network name of 300 characters', conf: { ...good, name: 'n'.repeat(300) }, code: 7, field: /name/ },
        { what: 'container id of 5,000 characters', conf: good, containerId: 'c'.repeat(5000), code: 4, field: /CNI_CONTAINERID/ },
        // Past the agent's 64 KiB header limit: the same answer as in-process, not "request too large".
        { what: 'container id of 70,000 characters', conf: good, containerId: 'c'.repeat(70_000), code: 4, field: /CNI_CONTAINERID/ },
      ]);
      assert.deepEqual(problems, []);
    });

    test('CIDRs are checked as CIDRs: clusterCIDR, podCIDR and runtimeConfig.ips', async () => {
      const good = f.netconf();
      const { ipam: _ipam, ...noRanges } = good;
      const problems = await check([
        ...['999.999.999.999/99', '10.241.0.0/33', '256.0.0.0/8', '010.241.0.0/24', '10.241.0.0', '10.241.0.0/'].map((v) => ({
          what: `clusterCIDR ${v}`, conf: { ...good, clusterCIDR: v }, code: 7, field: /clusterCIDR/,
        })),
        { what: 'podCIDR /33', conf: { ...noRanges, ipam: { dataDir: f.dataDir }, podCIDR: `${f.prefix}.0/33` }, code: 7, field: /podCIDR/ },
        ...['/33', '/-1', '/24/1', '/'].map((p) => ({
          what: `runtimeConfig.ips prefix ${p}`, conf: { ...good, runtimeConfig: { ips: [`${f.prefix}.5${p}`] } }, code: 7, field: /runtimeConfig\.ips\[0\]/,
        })),
      ]);
      assert.deepEqual(problems, []);
    });

    test('a CHECK with a malformed prevResult is a config error (7), not an internal one', async () => {
      const good = f.netconf();
      const prev = { cniVersion: good.cniVersion, interfaces: [], ips: [] as unknown };
      const problems = await check([
        { what: 'prevResult.ips not a list', command: 'CHECK', conf: { ...good, prevResult: { ...prev, ips: 'x' } }, code: 7, field: /prevResult\.ips/ },
        { what: 'prevResult.ips[0].address not a CIDR', command: 'CHECK', conf: { ...good, prevResult: { ...prev, ips: [{ address: 'nope' }] } }, code: 7, field: /prevResult\.ips\[0\]\.address/ },
      ]);
      assert.deepEqual(problems, []);
    });

    test('stdin over the 16 MiB limit: code 7 naming the limit (code 5 stays for read failures)', async () => {
      const huge = JSON.stringify({ ...f.netconf(), pad: 'x'.repeat(17 << 20) });
      const r = await run('ADD', huge);
      assert.equal(r.json?.code, 7, show(r));
      assert.match(r.json.msg, /16 MiB/);
    });

    test('an internal failure answers 100 without a stack; the agent logs the stack at debug level', async (t) => {
      // ipam.dataDir on a read-only tmpfs: mkdir -p fails deep in the IPAM store (Node's
      // recursive mkdir reports EROFS as ENOENT), a node problem rather than a config one.
      // Unmounted in finally.
      const ro = join(f.dataDir, 'read-only');
      mkdirSync(ro, { recursive: true });
      const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'ro,size=64k', 'patu-test-ro', ro], { encoding: 'utf8' });
      if (m.status !== 0) {
        t.skip(`cannot mount a read-only tmpfs: ${m.stderr}`);
        return;
      }
      try {
        const conf = f.netconf({ ipam: { ranges: [[{ subnet: f.subnet }]], dataDir: ro } });
        const r = await run('ADD', conf);
        assert.equal(r.json?.code, 100, show(r));
        assert.match(r.json.msg, /ipam\.dataDir '[^']*read-only'/, show(r));
        assert.doesNotMatch(r.stdout, STACK, show(r));
        if (f.agent) {
          // The debug line follows the answer by a moment: wait for it (bounded).
          const debugLine = () => f.agent!.log().split('\n').find((l) => l.includes(`${ro}/`) && /"level":20/.test(l));
          for (let i = 0; i < 40 && !debugLine(); i++) await new Promise((res) => setTimeout(res, 50));
          const line = debugLine();
          assert.ok(line, `no debug line with the error in the agent log: ${f.agent.log().slice(-2000)}`);
          assert.match(line, /\\n\s*at /, 'the debug line carries the stack');
        }
      } finally {
        spawnSync('umount', [ro]);
      }
    });

    test('ipam.dataDir that cannot be a directory (below a file) is a config error: 7 naming it', async () => {
      const file = join(f.dataDir, 'not-a-dir');
      mkdirSync(f.dataDir, { recursive: true });
      writeFileSync(file, '');
      const r = await run('ADD', f.netconf({ ipam: { ranges: [[{ subnet: f.subnet }]], dataDir: join(file, 'ipam') } }));
      assert.equal(r.json?.code, 7, show(r));
      assert.match(r.json.msg, /ipam\.dataDir.*ENOTDIR/, show(r));
      assert.doesNotMatch(r.stdout, STACK, show(r));
    });

    test('IPAM records are 0600 and their directory 0700, also one an older patu made 0755', async () => {
      // A network this process (or agent) has not opened yet: the mode is checked once per directory.
      const conf = f.netconf({ name: `${f.netName}-modes` });
      const netDir = join(f.dataDir, conf.name);
      mkdirSync(netDir, { recursive: true });
      chmodSync(netDir, 0o755);
      const r = await run('ADD', conf);
      try {
        assert.equal(r.code, 0, show(r));
        assert.equal(statSync(netDir).mode & 0o777, 0o700, `${netDir}`);
        const files = readdirSync(netDir);
        assert.ok(files.some((n) => /^\d+\.\d+\.\d+\.\d+$/.test(n)), `no record in ${files.join(', ')}`);
        for (const n of files) assert.equal(statSync(join(netDir, n)).mode & 0o777, 0o600, `${n} in ${netDir}`);
      } finally {
        const d = await run('DEL', conf);
        assert.equal(d.code, 0, show(d));
      }
    });
  });
}
