// CNI behaviour suite (needs root): runs the plugin binaries exactly like a runtime
// and checks what a runtime and its pods can observe. The same cases run against
// patu and against the reference bridge + host-local plugins; a case that passes
// for the reference but fails for patu points at patu, and a case that the
// reference fails points at the suite itself.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import {
  addNetns,
  delNetns,
  describe as show,
  diffSnapshots,
  execChain,
  execPlugin,
  ipamRecords,
  isRoot,
  netnsPath,
  patuFlavour,
  ping,
  referenceFlavour,
  snapshotHost,
  startPlugin,
  tcpExchange,
  patuAgentFlavour,
  type CniCommandName,
  type ExecOptions,
  type Flavour,
  type SnapshotScope,
} from '../helpers/cni.js';

const ROOT = isRoot();
// CNI_SUITE_FLAVOURS=reference or =patu runs one flavour only.
// patu-agent: the same cases through bin/patu's fast path (a running `patu agent`).
const wanted = (process.env.CNI_SUITE_FLAVOURS ?? 'reference,patu,patu-agent').split(',');
const flavours: Flavour[] = ROOT
  ? [referenceFlavour, patuFlavour, patuAgentFlavour].map((make) => make()).filter((f) => wanted.includes(f.id) || (f.destroy(), false))
  : [];
if (!ROOT) test('CNI behaviour suite', { skip: 'needs root: creates network namespaces, bridges and veths' }, () => {});

const tag = `cs${process.pid.toString(36)}`;

for (const f of flavours) {
  const skip = f.skipReason();
  describe(`CNI behaviour: ${f.id} (${f.bin})`, { skip: skip ?? false }, () => {
    const made = new Set<string>();
    /** Attachments still set up: DEL'd in `after` if a test failed half-way. */
    const live = new Map<string, { ns: string; conf: Record<string, unknown> }>();
    let nsCounter = 0;
    let initial: ReturnType<typeof snapshotHost>;

    const scope = (extra: Partial<SnapshotScope> = {}): SnapshotScope => ({
      bridge: f.bridge,
      prefix: f.prefix,
      dataDir: f.dataDir,
      netns: [...made],
      ...extra,
    });

    /** Every exec of this flavour carries its environment (PATU_AGENT_SOCKET for patu-agent). */
    const withEnv = (o: ExecOptions = {}): ExecOptions => ({ ...o, env: { ...f.env, ...o.env } });
    const run = (cmd: CniCommandName, conf: object | string, o: ExecOptions = {}) => execPlugin(f.bin, cmd, conf, withEnv(o));
    const launch = (cmd: CniCommandName, conf: object | string, o: ExecOptions = {}) => startPlugin(f.bin, cmd, conf, withEnv(o));

    function newNetns(): { name: string; path: string; id: string } {
      const name = `${tag}${f.id[0]}${nsCounter++}`;
      made.add(name);
      return { name, path: addNetns(name), id: `${name}-ctr` };
    }

    async function add(pod: { path: string; id: string; name: string }, conf = f.netconf(), ifname = 'eth0') {
      const r = await run('ADD', conf, { containerId: pod.id, netns: pod.path, ifname });
      if (r.code === 0) live.set(`${pod.id}/${ifname}`, { ns: pod.path, conf });
      return r;
    }

    async function del(pod: { path: string; id: string }, conf = f.netconf(), ifname = 'eth0') {
      const r = await run('DEL', conf, { containerId: pod.id, netns: pod.path, ifname });
      if (r.code === 0) live.delete(`${pod.id}/${ifname}`);
      return r;
    }

    /** IPAM files that record one attachment: named after its address or naming its container. */
    const recordsFor = (s: ReturnType<typeof snapshotHost>, id: string, ip: string): string[] =>
      Object.entries(s.ipamFiles)
        .filter(([p, content]) => p.split('/').pop() === ip || content.includes(id))
        .map(([p]) => p);

    /** The pod's IPv4 address (without prefix) as a runtime reads it from the result. */
    const ipOf = (result: any): string => String(result.ips[0].address).split('/')[0]!;

    const agentFlavour = f.id === 'patu-agent' ? (f as ReturnType<typeof patuAgentFlavour>) : undefined;

    before(async () => {
      if (agentFlavour) await agentFlavour.start();
      initial = snapshotHost(scope());
    });

    after(async () => {
      for (const [key, { ns, conf }] of live) {
        const [containerId, ifname] = key.split('/') as [string, string];
        await run('DEL', conf, { containerId, netns: ns, ifname }).catch(() => undefined);
      }
      for (const name of made) delNetns(name);
      await agentFlavour?.agent?.stop();
      f.destroy();
    });

    test('VERSION lists the supported spec versions', async () => {
      const r = await run('VERSION', { cniVersion: f.cniVersion });
      assert.equal(r.code, 0, show(r));
      assert.ok(Array.isArray(r.json?.supportedVersions), `no supportedVersions array: ${show(r)}`);
      for (const v of f.versionsToTest) assert.ok(r.json.supportedVersions.includes(v), `VERSION does not list ${v}: ${show(r)}`);
      assert.equal(typeof r.json.cniVersion, 'string', show(r));
    });

    for (const version of f.versionsToTest) {
      test(`ADD result conforms to spec ${version} and matches the pod`, async () => {
        const pod = newNetns();
        const conf = f.netconf({ cniVersion: version });
        const r = await add(pod, conf);
        assert.equal(r.code, 0, show(r));
        const res = r.json;
        assert.equal(res.cniVersion, version, `result cniVersion: ${r.stdout}`);
        assert.ok(Array.isArray(res.interfaces) && res.interfaces.length > 0, `interfaces: ${r.stdout}`);
        const sandboxIdx = res.interfaces.findIndex((i: any) => i.sandbox === pod.path && i.name === 'eth0');
        assert.ok(sandboxIdx >= 0, `no interface eth0 with sandbox ${pod.path}: ${r.stdout}`);
        for (const i of res.interfaces) {
          assert.equal(typeof i.name, 'string', `interface without name: ${r.stdout}`);
          if (i.mac !== undefined) assert.match(i.mac, /^([0-9a-f]{2}:){5}[0-9a-f]{2}$/i, `interface mac: ${r.stdout}`);
        }
        assert.ok(Array.isArray(res.ips) && res.ips.length === 1, `ips: ${r.stdout}`);
        const ip = res.ips[0];
        assert.match(ip.address, new RegExp(`^${f.prefix.replaceAll('.', '\\.')}\\.\\d+/24$`), `ips[0].address: ${r.stdout}`);
        assert.equal(ip.gateway, f.gateway, `ips[0].gateway: ${r.stdout}`);
        assert.equal(ip.interface, sandboxIdx, `ips[0].interface must index the sandbox interface: ${r.stdout}`);
        if (version.startsWith('0.')) assert.equal(ip.version, '4', `${version} results carry ips[].version: ${r.stdout}`);
        else assert.equal(ip.version, undefined, `${version} results have no ips[].version: ${r.stdout}`);
        if (res.routes !== undefined) {
          assert.ok(Array.isArray(res.routes), `routes: ${r.stdout}`);
          for (const rt of res.routes) assert.match(rt.dst, /^[0-9.:a-f]+\/\d+$/, `route dst: ${r.stdout}`);
        }
        if (res.dns !== undefined) assert.equal(typeof res.dns, 'object', `dns: ${r.stdout}`);

        // The result must describe what is really in the pod.
        const links = JSON.parse(spawnSync('ip', ['-n', pod.name, '-j', 'addr', 'show', 'dev', 'eth0'], { encoding: 'utf8' }).stdout);
        assert.equal(links.length, 1, 'eth0 exists in the pod');
        const inPod = links[0].addr_info.filter((a: any) => a.family === 'inet').map((a: any) => `${a.local}/${a.prefixlen}`);
        assert.deepEqual(inPod, [ip.address], 'the pod carries exactly the address from the result');
        const mac = res.interfaces[sandboxIdx].mac;
        if (mac) assert.equal(links[0].address, mac.toLowerCase(), 'sandbox mac in the result is the pod mac');
        assert.equal(links[0].mtu, 1500, 'pod MTU is the configured one');
        const routes = spawnSync('ip', ['-n', pod.name, '-4', 'route', 'show', 'default'], { encoding: 'utf8' }).stdout;
        if (f.id !== 'reference') assert.match(routes, new RegExp(`default via ${f.gateway.replaceAll('.', '\\.')}`), 'pod default route via the gateway');

        const d = await del(pod, conf);
        assert.equal(d.code, 0, show(d));
        assert.equal(d.stdout.trim(), '', 'DEL prints nothing on success');
      });
    }

    test('two pods reach each other and the gateway (ICMP and TCP); CHECK; DEL leaves nothing', async (t) => {
      const a = newNetns();
      const b = newNetns();
      const before = snapshotHost(scope());
      const ra = await add(a);
      assert.equal(ra.code, 0, show(ra));
      const rb = await add(b);
      assert.equal(rb.code, 0, show(rb));
      const ipA = ipOf(ra.json);
      const ipB = ipOf(rb.json);
      assert.notEqual(ipA, ipB, 'two pods got the same address');

      for (const [from, to] of [[a.name, ipB], [b.name, ipA], [a.name, f.gateway], [b.name, f.gateway]] as const) {
        const p = ping(from, to);
        assert.ok(p.ok, `ping ${from} -> ${to} failed: ${p.out}`);
      }
      // One retry on a fresh port: while other engineers' socket-acceleration runs were
      // active, a lone exchange lost its payload for the reference plugins too (the
      // diagnostic keeps the first failure). A broken data path fails both tries.
      const exchange = async (srv: string, cli: string, ip: string, port: number) => {
        const first = await tcpExchange(srv, cli, ip, port);
        if (first.ok) return first;
        t.diagnostic(`TCP ${cli} -> ${ip}:${port} failed once, retrying: got '${first.received}' (${first.detail})`);
        return tcpExchange(srv, cli, ip, port + 100);
      };
      const t1 = await exchange(a.name, b.name, ipA, 7001);
      assert.ok(t1.ok, `TCP ${b.name} -> ${ipA}:7001/7101: got '${t1.received}' (${t1.detail})`);
      const t2 = await exchange(b.name, a.name, ipB, 7002);
      assert.ok(t2.ok, `TCP ${a.name} -> ${ipB}:7002/7102: got '${t2.received}' (${t2.detail})`);

      // Host-side state while up: one veth per pod on the bridge, one IPAM record each.
      const up = snapshotHost(scope({ containerIds: [a.id, b.id] }));
      assert.equal(up.links.filter((l) => l.includes(`master=${f.bridge}`)).length, 2, `veths on the bridge: ${up.links.join(', ')}`);
      assert.equal(recordsFor(up, a.id, ipA).length + recordsFor(up, b.id, ipB).length, 2, `IPAM records: ${JSON.stringify(up.ipamFiles)}`);

      // CHECK with the ADD result as prevResult (spec: CHECK needs it).
      const chk = await run('CHECK', { ...f.netconf(), prevResult: ra.json }, { containerId: a.id, netns: a.path });
      assert.equal(chk.code, 0, `CHECK on a good pod: ${show(chk)}`);

      const delA = await del(a);
      assert.equal(delA.code, 0, show(delA));
      const delB = await del(b);
      assert.equal(delB.code, 0, show(delB));
      const gone = diffSnapshots(before, snapshotHost(scope()), scope(), { ignoreBridge: true, containerIds: [a.id, b.id] });
      assert.deepEqual(gone, [], 'DEL left something behind');

      const again = await del(a);
      assert.equal(again.code, 0, `second DEL must succeed: ${show(again)}`);
      const unknown = await run('DEL', f.netconf(), {
        containerId: `${tag}-never-added`,
        netns: netnsPath(`${tag}-no-such-netns`),
      });
      assert.equal(unknown.code, 0, `DEL of an unknown container with a missing netns must succeed: ${show(unknown)}`);
    });

    test('DEL after the runtime already deleted the netns releases the address', async () => {
      const pod = newNetns();
      const before = snapshotHost(scope({ containerIds: [pod.id] }));
      const r = await add(pod);
      assert.equal(r.code, 0, show(r));
      delNetns(pod.name);
      made.delete(pod.name);
      assert.ok(!existsSync(pod.path), `${pod.path} still exists after ip netns del`);
      const d = await del(pod);
      assert.equal(d.code, 0, `DEL with a vanished netns must succeed: ${show(d)}`);
      // The kernel tears the veth down asynchronously once the netns is gone: wait a bounded while.
      let diff: string[] = [];
      for (let i = 0; i < 20; i++) {
        diff = diffSnapshots(before, snapshotHost(scope({ containerIds: [pod.id] })), scope(), { ignoreBridge: true, containerIds: [pod.id] });
        if (diff.length === 0) break;
        await new Promise((res) => setTimeout(res, 100));
      }
      assert.deepEqual(diff, [], 'DEL after netns deletion left something behind');
    });

    test('CHECK fails with an error JSON once the pod is broken', async () => {
      const a = newNetns();
      const b = newNetns();
      const ra = await add(a);
      assert.equal(ra.code, 0, show(ra));
      const rb = await add(b);
      assert.equal(rb.code, 0, show(rb));
      const checkOf = (pod: typeof a, result: any) =>
        run('CHECK', { ...f.netconf(), prevResult: result }, { containerId: pod.id, netns: pod.path });

      assert.equal((await checkOf(a, ra.json)).code, 0, 'CHECK passes before the pod is broken');
      const delAddr = spawnSync('ip', ['-n', a.name, 'addr', 'del', ra.json.ips[0].address, 'dev', 'eth0'], { encoding: 'utf8' });
      assert.equal(delAddr.status, 0, `breaking pod a: ${delAddr.stderr}`);
      const c1 = await checkOf(a, ra.json);
      assert.notEqual(c1.code, 0, `CHECK must fail when the pod lost its address: ${show(c1)}`);
      assert.equal(typeof c1.json?.code, 'number', `CHECK error JSON has a numeric code: ${show(c1)}`);
      assert.equal(typeof c1.json?.msg, 'string', `CHECK error JSON has msg: ${show(c1)}`);

      assert.equal((await checkOf(b, rb.json)).code, 0, 'CHECK passes before the veth is deleted');
      const delLink = spawnSync('ip', ['-n', b.name, 'link', 'del', 'eth0'], { encoding: 'utf8' });
      assert.equal(delLink.status, 0, `breaking pod b: ${delLink.stderr}`);
      const c2 = await checkOf(b, rb.json);
      assert.notEqual(c2.code, 0, `CHECK must fail when the pod lost its veth: ${show(c2)}`);
      assert.equal(typeof c2.json?.code, 'number', `CHECK error JSON has a numeric code: ${show(c2)}`);
      assert.equal(typeof c2.json?.msg, 'string', `CHECK error JSON has msg: ${show(c2)}`);

      for (const p of [a, b]) {
        const d = await del(p);
        assert.equal(d.code, 0, `DEL of a broken pod must succeed: ${show(d)}`);
      }
      const s = snapshotHost(scope({ containerIds: [a.id, b.id] }));
      assert.deepEqual([...recordsFor(s, a.id, ipOf(ra.json)), ...recordsFor(s, b.id, ipOf(rb.json))], [], 'broken pods released their addresses');
    });

    test('32 concurrent ADDs get 32 distinct addresses; concurrent DELs clean up', async () => {
      const pods = Array.from({ length: 32 }, () => newNetns());
      const before = snapshotHost(scope());
      const results = await Promise.all(pods.map((p) => add(p)));
      const failed = results.filter((r) => r.code !== 0);
      assert.deepEqual(failed.map(show), [], 'every concurrent ADD succeeds');
      const ips = results.map((r) => ipOf(r.json));
      assert.equal(new Set(ips).size, 32, `addresses are not distinct: ${ips.join(' ')}`);
      const up = snapshotHost(scope({ containerIds: pods.map((p) => p.id) }));
      const perPod = pods.map((p, i) => recordsFor(up, p.id, ips[i]!).length);
      assert.deepEqual(perPod, pods.map(() => 1), 'one IPAM record per pod');
      // A sample of pods can reach the first one: the addresses are live, not just booked.
      for (const p of [pods[1]!, pods[31]!]) {
        const r = ping(p.name, ips[0]!, 1);
        assert.ok(r.ok, `ping ${p.name} -> ${ips[0]}: ${r.out}`);
      }
      const dels = await Promise.all(pods.map((p) => del(p)));
      assert.deepEqual(dels.filter((r) => r.code !== 0).map(show), [], 'every concurrent DEL succeeds');
      const diff = diffSnapshots(before, snapshotHost(scope()), scope(), { ignoreBridge: true, containerIds: pods.map((p) => p.id) });
      assert.deepEqual(diff, [], 'concurrent DELs left something behind');
      for (const p of pods) {
        delNetns(p.name);
        made.delete(p.name);
      }
    });

    test('chain with reference portmap and bandwidth: prevResult flows through ADD, CHECK and DEL', async () => {
      const pod = newNetns();
      const hostPort = 20000 + (process.pid % 20000);
      const list = f.conflist([
        { type: 'portmap', capabilities: { portMappings: true }, snat: true },
        { type: 'bandwidth', capabilities: { bandwidth: true } },
      ]);
      // libcni streams the list's version to every plugin, and the reference
      // portmap/bandwidth (1.1.x) speak at most 1.0.0: a mixed chain runs at 1.0.0.
      list.cniVersion = '1.0.0';
      const runtimeConfig = {
        portMappings: [{ hostPort, containerPort: 8080, protocol: 'tcp' }],
        bandwidth: { ingressRate: 100_000_000, ingressBurst: 1_000_000, egressRate: 100_000_000, egressBurst: 1_000_000 },
      };
      const before = snapshotHost(scope({ containerIds: [pod.id] }));
      const opts = { containerId: pod.id, netns: pod.path, ifname: 'eth0', binFor: (t: string) => f.binFor(t), runtimeConfig, env: f.env };
      const addRes = await execChain(list, 'ADD', opts);
      live.set(`${pod.id}/eth0`, { ns: pod.path, conf: f.netconf() });
      try {
        assert.ok(addRes.ok, `chain ADD failed at ${addRes.steps.at(-1)?.type}: ${show(addRes.steps.at(-1)!.result)}`);
        const [first, portmap, bandwidth] = addRes.steps as [any, any, any];
        assert.equal(first.input.prevResult, undefined, 'the first plugin gets no prevResult');
        assert.deepEqual(portmap.input.prevResult, first.result.json, 'portmap gets the main plugin result');
        assert.deepEqual(portmap.input.runtimeConfig, { portMappings: runtimeConfig.portMappings });
        // Both reference plugins pass the result through; bandwidth must have found the
        // host veth from the interfaces in prevResult, or it would have failed.
        assert.deepEqual(portmap.result.json, first.result.json, 'portmap passes prevResult through unchanged');
        // bandwidth appends the ifb device it made for egress shaping; the rest is unchanged.
        const { interfaces: bwIfs, ...bwRest } = bandwidth.result.json;
        const { interfaces: mainIfs, ...mainRest } = first.result.json;
        assert.deepEqual(bwRest, mainRest, 'bandwidth passes ips, routes and dns through unchanged');
        assert.deepEqual(bwIfs.slice(0, mainIfs.length), mainIfs, 'bandwidth keeps the interfaces (and their indexes)');
        assert.equal(bwIfs.length, mainIfs.length + 1, `bandwidth adds its ifb: ${bandwidth.result.stdout}`);
        const hostIf = first.result.json.interfaces.find((i: any) => !i.sandbox && i.name !== f.bridge);
        assert.ok(hostIf, `main result names the host veth: ${first.result.stdout}`);
        const qdisc = spawnSync('tc', ['qdisc', 'show', 'dev', hostIf.name], { encoding: 'utf8' }).stdout;
        assert.match(qdisc, /tbf/, `bandwidth put a tbf qdisc on ${hostIf.name}: ${qdisc}`);
        const podIp = ipOf(first.result.json);
        const rules = spawnSync('iptables-save', ['-t', 'nat'], { encoding: 'utf8' }).stdout;
        assert.ok(rules.includes(`${podIp}:8080`), `portmap DNATs to the pod address from prevResult`);

        // portmap 1.1.x CHECK always looks for ip6tables rules it never made for an
        // IPv4-only pod (containernetworking/plugins#819); everything else must pass.
        const portmapV6Bug = (type: string, r: { stdout: string }) => type === 'portmap' && r.stdout.includes('could not check ipv6 dnat');
        const chk = await execChain(list, 'CHECK', { ...opts, cachedResult: addRes.result, knownBug: portmapV6Bug });
        assert.equal(chk.steps.length, 3, 'CHECK ran every plugin of the list');
        assert.ok(chk.ok, `chain CHECK failed at ${chk.steps.at(-1)?.type}: ${show(chk.steps.at(-1)!.result)}`);

        const delRes = await execChain(list, 'DEL', { ...opts, cachedResult: addRes.result });
        assert.ok(delRes.ok, `chain DEL failed at ${delRes.steps.at(-1)?.type}: ${show(delRes.steps.at(-1)!.result)}`);
        live.delete(`${pod.id}/eth0`);
        const after = snapshotHost(scope({ containerIds: [pod.id] }));
        assert.deepEqual(diffSnapshots(before, after, scope({ containerIds: [pod.id] }), { ignoreBridge: true, containerIds: [pod.id] }), []);
        const rulesAfter = spawnSync('iptables-save', ['-t', 'nat'], { encoding: 'utf8' }).stdout;
        assert.ok(!rulesAfter.includes(`${podIp}:8080`), 'portmap rules are gone after DEL');
      } finally {
        if (live.has(`${pod.id}/eth0`)) {
          // The test failed half-way: the chain DEL may stop at a failing plugin, so
          // the main plugin gets its own DEL too (it must tolerate a second one).
          await execChain(list, 'DEL', { ...opts, cachedResult: addRes.result }).catch(() => undefined);
          const d = await del(pod, f.netconf({ cniVersion: '1.0.0' }));
          if (d.code !== 0) console.error(`cleanup DEL of ${pod.id} failed: ${show(d)}`);
        }
      }
    });

    test('a full range: ADD fails cleanly (and STATUS says not available, for spec 1.1 plugins)', async (t) => {
      // Two addresses only, in a network (IPAM store) of its own on the same bridge.
      const small = (conf: Record<string, any>) => ({
        ...conf,
        name: `${f.netName}x`,
        ipam: { ...conf.ipam, ranges: [[{ subnet: f.subnet, rangeStart: `${f.prefix}.250`, rangeEnd: `${f.prefix}.251` }]] },
      });
      const conf = small(f.netconf());
      const pods = [newNetns(), newNetns(), newNetns()];
      const [p1, p2, p3] = pods as [ReturnType<typeof newNetns>, ReturnType<typeof newNetns>, ReturnType<typeof newNetns>];
      if (f.features.status) {
        const st = await run('STATUS', conf);
        assert.equal(st.code, 0, `STATUS with free addresses: ${show(st)}`);
      }
      for (const p of [p1, p2]) {
        const r = await add(p, conf);
        assert.equal(r.code, 0, show(r));
      }
      const before = snapshotHost(scope({ containerIds: [p3.id] }));
      const full = await add(p3, conf);
      assert.notEqual(full.code, 0, `ADD into a full range must fail: ${show(full)}`);
      assert.equal(typeof full.json?.code, 'number', `error JSON with a code: ${show(full)}`);
      assert.equal(typeof full.json?.msg, 'string', `error JSON with a msg: ${show(full)}`);
      const leftByAdd = diffSnapshots(before, snapshotHost(scope({ containerIds: [p3.id] })), scope(), { containerIds: [p3.id] });
      const podLinks = () => spawnSync('ip', ['-n', p3.name, '-o', 'link', 'show'], { encoding: 'utf8' }).stdout.trim().split('\n');
      if (f.id !== 'reference') {
        // patu promises more than the spec: a failed ADD rolls itself back.
        assert.deepEqual(leftByAdd, [], 'the failed ADD left nothing');
        assert.equal(podLinks().length, 1, `the failed ADD left links in the pod: ${podLinks().join(' | ')}`);
      } else {
        t.diagnostic(`reference: failed ADD leaves ${leftByAdd.join('; ') || 'nothing'} until the runtime's DEL`);
      }
      // The spec has the runtime DEL after a failed ADD; afterwards nothing may remain.
      const cleanup = await del(p3, conf);
      assert.equal(cleanup.code, 0, `DEL after a failed ADD: ${show(cleanup)}`);
      assert.deepEqual(diffSnapshots(before, snapshotHost(scope({ containerIds: [p3.id] })), scope(), { containerIds: [p3.id] }), [], 'failed ADD + DEL left something');
      assert.equal(podLinks().length, 1, `failed ADD + DEL left links in the pod: ${podLinks().join(' | ')}`);
      if (f.features.status) {
        const st = await run('STATUS', conf);
        assert.notEqual(st.code, 0, `STATUS with no free address must fail: ${show(st)}`);
        assert.equal(st.json?.code, 50, `STATUS answers 50 (plugin not available): ${show(st)}`);
      }
      const d = await del(p1, conf);
      assert.equal(d.code, 0, show(d));
      if (f.features.status) {
        const st = await run('STATUS', conf);
        assert.equal(st.code, 0, `STATUS after a DEL freed an address: ${show(st)}`);
      }
      const again = await add(p3, conf);
      assert.equal(again.code, 0, `ADD after a DEL freed an address: ${show(again)}`);
      assert.equal(ipOf(again.json), `${f.prefix}.250`, 'the freed address is handed out again');
      for (const p of [p2, p3]) assert.equal((await del(p, conf)).code, 0);
    });

    test('STATUS reports ready; GC releases attachments not in cni.dev/valid-attachments', { skip: f.features.gc ? false : `${f.id} speaks spec ${f.cniVersion}: no STATUS or GC` }, async () => {
      const st = await run('STATUS', f.netconf());
      assert.equal(st.code, 0, `STATUS: ${show(st)}`);

      const keep = newNetns();
      const drop = newNetns();
      const before = snapshotHost(scope());
      const rk = await add(keep);
      assert.equal(rk.code, 0, show(rk));
      const rd = await add(drop);
      assert.equal(rd.code, 0, show(rd));
      const gc = await run('GC', {
        ...f.netconf(),
        'cni.dev/valid-attachments': [{ containerID: keep.id, ifname: 'eth0' }],
      });
      assert.equal(gc.code, 0, `GC: ${show(gc)}`);
      live.delete(`${drop.id}/eth0`);
      const s = snapshotHost(scope({ containerIds: [keep.id, drop.id] }));
      assert.deepEqual(recordsFor(s, drop.id, ipOf(rd.json)), [], 'GC released the stale address');
      assert.equal(recordsFor(s, keep.id, ipOf(rk.json)).length, 1, 'GC kept the valid address');
      assert.equal(s.links.filter((l) => l.includes(`master=${f.bridge}`)).length, 1, `GC removed the stale veth only: ${s.links.join(', ')}`);
      const p = ping(keep.name, f.gateway, 1);
      assert.ok(p.ok, `the valid pod still works after GC: ${p.out}`);

      const d = await del(keep);
      assert.equal(d.code, 0, show(d));
      // GC is network-wide: it may also have removed what an earlier failed test left
      // ('-' lines). Only what this test added must be gone.
      const added = diffSnapshots(before, snapshotHost(scope()), scope(), { ignoreBridge: true, containerIds: [keep.id, drop.id] });
      assert.deepEqual(added.filter((l) => l.startsWith('+')), []);
    });

    test('kill -9 of ADDs in progress, then GC: nothing left but the bridge', { skip: f.features.gc ? false : `${f.id} has no GC` }, async (t) => {
      // One timed ADD/DEL first: the kill delays are spread over 0-150 % of it, so they
      // land in start-up, IPAM and kernel work alike whether an ADD takes 8 ms (agent)
      // or 70 ms (Node start).
      const probe = newNetns();
      const pr = await add(probe);
      assert.equal(pr.code, 0, show(pr));
      assert.equal((await del(probe)).code, 0);
      const addMs = pr.ms;
      const pods = Array.from({ length: 24 }, () => newNetns());
      const ids = pods.map((p) => p.id);
      const start = snapshotHost(scope());
      let killed = 0;
      let finished = 0;
      for (const [i, p] of pods.entries()) {
        const proc = launch('ADD', f.netconf(), { containerId: p.id, netns: p.path, ifname: 'eth0' });
        // Delays spread over plugin start-up and the kernel work (a plugin ADD takes tens of ms).
        const delay = (((i * 37 + process.pid) % 24) / 16) * addMs;
        await new Promise((r) => setTimeout(r, delay));
        if (proc.child.exitCode === null) {
          proc.child.kill('SIGKILL');
          killed++;
        }
        const r = await proc.done;
        if (r.code === 0) finished++;
      }
      assert.ok(killed > 0, 'at least one ADD was killed mid-flight (delays too long for this machine?)');
      // What the killed ADDs left (finished ones count too: GC with an empty valid list
      // must remove them). Shows the GC below had work to do.
      const leftovers = diffSnapshots(start, snapshotHost(scope()), scope(), { ignoreBridge: true, containerIds: ids });
      t.diagnostic(`ADD ~${addMs.toFixed(0)} ms; ${killed} ADDs killed, ${finished} finished; before GC: ${leftovers.length} leftovers: ${leftovers.join('; ')}`);
      const gc = await run('GC', { ...f.netconf(), 'cni.dev/valid-attachments': [] });
      assert.equal(gc.code, 0, `GC: ${show(gc)}`);
      const end = snapshotHost(scope());
      const diff = diffSnapshots(start, end, scope(), { ignoreBridge: true, containerIds: ids });
      assert.deepEqual(diff, [], `after ${killed} killed and ${finished} finished ADDs and GC, left behind`);
      for (const p of pods) live.delete(`${p.id}/eth0`);
    });

    test('bad configs and environments fail with the spec error codes and leave nothing', { skip: f.features.errorTable ? false : `${f.id}: the exact codes are patu's contract` }, async () => {
      const pod = newNetns();
      const good = f.netconf();
      const { name: _drop, ...noName } = good;
      type Case = { what: string; conf: object | string; env?: Record<string, string | undefined>; ifname?: string; netns?: string; code: number; field: RegExp };
      // Spec "Well-known Error Codes": 1 incompatible version, 4 invalid environment
      // variables, 6 failed to decode content, 7 invalid network config.
      const cases: Case[] = [
        { what: 'cniVersion 9.9.9', conf: { ...good, cniVersion: '9.9.9' }, code: 1, field: /cniVersion|9\.9\.9/ },
        { what: 'missing name', conf: noName, code: 7, field: /name/ },
        { what: 'subnet not a CIDR', conf: { ...good, ipam: { ...good.ipam, ranges: [[{ subnet: '10.201.300.0/24' }]] } }, code: 7, field: /subnet/ },
        { what: 'subnet prefix /33', conf: { ...good, ipam: { ...good.ipam, ranges: [[{ subnet: '10.201.1.0/33' }]] } }, code: 7, field: /subnet/ },
        { what: 'unknown ipam type', conf: { ...good, ipam: { ...good.ipam, type: 'no-such-ipam' } }, code: 7, field: /ipam\.type|type/ },
        { what: 'mtu too large', conf: { ...good, mtu: 70000 }, code: 7, field: /mtu/ },
        { what: 'mtu too small', conf: { ...good, mtu: 100 }, code: 7, field: /mtu/ },
        { what: 'config not JSON', conf: '{"cniVersion":', code: 6, field: /JSON/ },
        { what: 'missing CNI_CONTAINERID', conf: good, env: { CNI_CONTAINERID: undefined }, code: 4, field: /CNI_CONTAINERID/ },
        { what: 'CNI_NETNS does not exist', conf: good, netns: netnsPath(`${tag}-missing`), code: 4, field: /CNI_NETNS/ },
        { what: 'CNI_IFNAME too long', conf: good, ifname: 'eth0-way-too-long-name', code: 4, field: /CNI_IFNAME/ },
        { what: 'CNI_IFNAME with a slash', conf: good, ifname: 'eth/0', code: 4, field: /CNI_IFNAME/ },
      ];
      const before = snapshotHost(scope({ containerIds: [pod.id] }));
      const problems: string[] = [];
      for (const c of cases) {
        const r = await run('ADD', c.conf, {
          containerId: pod.id,
          netns: c.netns ?? pod.path,
          ifname: c.ifname ?? 'eth0',
          ...(c.env ? { env: c.env } : {}),
        });
        if (r.code === 0) {
          problems.push(`${c.what}: ADD succeeded: ${show(r)}`);
          await del(pod, f.netconf(), c.ifname ?? 'eth0');
          continue;
        }
        const j = r.json;
        if (j?.code !== c.code) problems.push(`${c.what}: want code ${c.code}, got ${show(r)}`);
        if (typeof j?.msg !== 'string' || !c.field.test(j.msg)) problems.push(`${c.what}: msg must name ${c.field}: ${show(r)}`);
        if (!j || !('details' in j)) problems.push(`${c.what}: error JSON has no details: ${show(r)}`);
        const diff = diffSnapshots(before, snapshotHost(scope({ containerIds: [pod.id] })), scope(), { containerIds: [pod.id] });
        if (diff.length) problems.push(`${c.what}: failed ADD left ${diff.join('; ')}`);
        const podLinks = spawnSync('ip', ['-n', pod.name, '-o', 'link', 'show'], { encoding: 'utf8' }).stdout.trim().split('\n');
        if (podLinks.length !== 1) problems.push(`${c.what}: failed ADD left links in the pod: ${podLinks.join(' | ')}`);
      }
      assert.deepEqual(problems, []);
    });

    // ipam.lockTimeoutMs keeps these short: the 30 s default would only slow the suite.
    const lockSkip = !f.features.errorTable ? 'patu only' : false;
    const shortLock = (): Record<string, any> => {
      const conf = f.netconf();
      conf.ipam = { ...conf.ipam, lockTimeoutMs: 1500 };
      return conf;
    };
    test('ADD answers 11 (try again later) when the IPAM lock cannot be taken', { skip: lockSkip }, async (t) => {
      const warm = newNetns();
      const r = await add(warm);
      assert.equal(r.code, 0, show(r));
      const d = await del(warm);
      assert.equal(d.code, 0, show(d));
      const locks: string[] = [];
      const walk = (dir: string) => {
        for (const e of readdirSync(dir, { withFileTypes: true })) {
          const p = join(dir, e.name);
          if (e.isDirectory()) walk(p);
          else if (/lock/i.test(e.name)) locks.push(p);
        }
      };
      if (existsSync(f.dataDir)) walk(f.dataDir);
      if (locks.length === 0) {
        t.skip(`no lock file under ${f.dataDir} to hold: ${JSON.stringify(snapshotHost(scope()).ipamFiles)}`);
        return;
      }
      // flock(1) holds every lock file for a bounded time, like a stuck concurrent ADD.
      // Held well past the 1.5 s lock timeout set below; killed in finally either way.
      const holders = locks.map((l) => spawn('flock', ['-x', '-o', l, 'sleep', '90'], { stdio: 'ignore' }));
      try {
        await new Promise((res) => setTimeout(res, 300));
        const pod = newNetns();
        const before = snapshotHost(scope({ containerIds: [pod.id] }));
        const t0 = performance.now();
        const busy = await run('ADD', shortLock(), { containerId: pod.id, netns: pod.path, timeoutMs: 75_000 });
        if (busy.code === 0) live.set(`${pod.id}/eth0`, { ns: pod.path, conf: f.netconf() });
        t.diagnostic(`ADD with the lock held answered after ${((performance.now() - t0) / 1000).toFixed(1)} s`);
        if (busy.code === 0) await del(pod);
        assert.equal(busy.json?.code, 11, `ADD with the IPAM lock held (${locks.join(', ')}): ${show(busy)}`);
        assert.match(busy.json.msg, /lock/, `msg names the lock: ${show(busy)}`);
        assert.deepEqual(diffSnapshots(before, snapshotHost(scope({ containerIds: [pod.id] })), scope(), { containerIds: [pod.id] }), []);
      } finally {
        for (const h of holders) h.kill('SIGKILL');
      }
    });

    test('a stuck IPAM lock on one network does not stall ADDs on another (agent)', { skip: !agentFlavour ? 'agent only' : lockSkip }, async () => {
      const warm = newNetns();
      assert.equal((await add(warm)).code, 0);
      assert.equal((await del(warm)).code, 0);
      const lock = join(f.dataDir, f.netName, 'lock');
      assert.ok(existsSync(lock), `no IPAM lock file at ${lock}`);
      const other = patuFlavour();
      const holder = spawn('flock', ['-x', '-o', lock, 'sleep', '90'], { stdio: 'ignore' });
      const podA = newNetns();
      const podB = newNetns();
      try {
        await new Promise((res) => setTimeout(res, 300));
        const stuck = run('ADD', shortLock(), { containerId: podA.id, netns: podA.path, timeoutMs: 75_000 });
        await new Promise((res) => setTimeout(res, 300));
        const rb = await run('ADD', other.netconf(), { containerId: podB.id, netns: podB.path, timeoutMs: 75_000 });
        assert.equal(rb.code, 0, show(rb));
        await run('DEL', other.netconf(), { containerId: podB.id, netns: podB.path });
        holder.kill('SIGKILL');
        const ra = await stuck;
        if (ra.code === 0) await del(podA);
        assert.ok(rb.ms < 5_000, `ADD on an unrelated network waited ${(rb.ms / 1000).toFixed(1)} s behind another network's IPAM lock`);
      } finally {
        holder.kill('SIGKILL');
        other.destroy();
      }
    });

    if (agentFlavour) {
      test('the agent served the requests (bin/patu did not fall back to a local Node run)', () => {
        const served = agentFlavour.agent?.served() ?? 0;
        assert.ok(served >= 50, `agent served only ${served} requests: ${agentFlavour.agent?.log().slice(-2000)}`);
      });
    }

    test('after everything: host state for this network equals the start, apart from the bridge', () => {
      const ids = [...made].map((n) => `${n}-ctr`);
      const diff = diffSnapshots(initial, snapshotHost(scope()), scope(), { ignoreBridge: true, containerIds: ids });
      assert.deepEqual(diff, []);
    });
  });
}
