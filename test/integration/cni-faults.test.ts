// Faults that must never wedge, fool or bloat patu (issue 15): a CNI_NETNS that is
// not a network namespace, requests that get stuck, requests the launcher gave up on,
// oversized requests. Each case runs the real bin/patu, in-process (PATU_NO_AGENT)
// and through a real `patu agent`, and every case is bounded: a hang fails the test
// instead of hanging it. Needs root (network namespaces, bridges, veths).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { closeSync, constants as fsc, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  addNetns,
  delNetns,
  describe as show,
  execPlugin,
  isRoot,
  patuFlavour,
  startAgent,
  startPlugin,
  type AgentHandle,
  type ExecOptions,
  type Flavour,
} from '../helpers/cni.js';
import { scratchForTests } from '../helpers/kernel.js';
import { Accel } from '../../src/dataplane/accel.js';
import { hostVethName } from '../../src/dataplane/names.js';

const skip = !isRoot()
  ? 'needs root: creates network namespaces, bridges and veths'
  : (patuFlavour().skipReason() ?? false);

const tag = `cf${process.pid.toString(36)}`;
const made: string[] = [];
const cleanups: (() => unknown)[] = [];
let f: Flavour;
let agent: AgentHandle | undefined;
let scratch: string;

function newNetns(): { name: string; path: string; id: string } {
  const name = `${tag}n${made.length}`;
  made.push(name);
  return { name, path: addNetns(name), id: `${name}-ctr` };
}

const inProcess = (o: ExecOptions = {}): ExecOptions => ({ timeoutMs: 20_000, ...o, env: { PATU_NO_AGENT: '1', ...o.env } });
const viaAgent = (o: ExecOptions = {}): ExecOptions => ({ timeoutMs: 20_000, ...o, env: { PATU_AGENT_SOCKET: agent!.socket, ...o.env } });

const ipamFiles = (dataDir: string, net: string): string[] => {
  const dir = join(dataDir, net);
  return existsSync(dir) ? readdirSync(dir).filter((n) => /^\d+\.\d+\.\d+\.\d+$/.test(n)) : [];
};

before(async () => {
  if (skip) return;
  f = patuFlavour();
  cleanups.push(() => f.destroy());
  scratch = mkdtempSync(join(tmpdir(), 'patu-faults-'));
  cleanups.push(() => rmSync(scratch, { recursive: true, force: true }));
  agent = await startAgent(f.bin, join(scratch, 'agent.sock'));
  cleanups.push(() => agent?.stop());
});

after(async () => {
  for (const c of cleanups.reverse()) {
    try {
      await c();
    } catch {
      /* keep cleaning */
    }
  }
  for (const n of made) delNetns(n);
});

describe('CNI_NETNS that is not a network namespace', { skip }, () => {
  // Each of these once blocked open() (FIFO) or was entered as if it were a netns.
  const cases: [string, () => string][] = [
    ['a FIFO', () => {
      const p = join(scratch, 'fifo');
      if (!existsSync(p)) spawnSync('mkfifo', [p]);
      return p;
    }],
    ['/dev/zero', () => '/dev/zero'],
    ['a directory', () => scratch],
    ['a /proc file', () => '/proc/self/status'],
    ['a regular file', () => {
      const p = join(scratch, 'plain');
      writeFileSync(p, 'not a netns\n');
      return p;
    }],
    ['a mount namespace', () => '/proc/self/ns/mnt'],
  ];
  for (const [mode, opts] of [['in-process', inProcess], ['through the agent', viaAgent]] as const) {
    for (const [what, path] of cases) {
      test(`${what} as CNI_NETNS fails fast with code 4 naming CNI_NETNS (${mode})`, async () => {
        const id = `${tag}-bad-${what.replace(/\W/g, '')}`;
        const r = await execPlugin(f.bin, 'ADD', f.netconf(), opts({ containerId: id, netns: path() }));
        assert.equal(r.signal, null, `the plugin hung and was killed: ${show(r)}`);
        assert.equal(r.code, 1, show(r));
        assert.equal(r.json?.code, 4, show(r));
        assert.match(r.json.msg, /CNI_NETNS/, show(r));
        assert.ok(r.ms < 10_000, `took ${r.ms} ms`);
        assert.deepEqual(ipamFiles(f.dataDir, f.netName), [], 'no address left reserved');
      });
    }
  }

  test('the agent still answers after them, and a real netns still works', async () => {
    const v = await execPlugin(f.bin, 'VERSION', '', viaAgent({ timeoutMs: 5_000 }));
    assert.equal(v.code, 0, show(v));
    const pod = newNetns();
    const add = await execPlugin(f.bin, 'ADD', f.netconf(), viaAgent({ containerId: pod.id, netns: pod.path }));
    assert.equal(add.code, 0, show(add));
    const del = await execPlugin(f.bin, 'DEL', f.netconf(), viaAgent({ containerId: pod.id, netns: pod.path }));
    assert.equal(del.code, 0, show(del));
  });
});


describe('ipam.dataDir in a kernel tree', { skip }, () => {
  // mkdir -p under /proc once spun at 94% CPU forever and the agent ignored SIGTERM.
  for (const [mode, opts] of [['in-process', inProcess], ['through the agent', viaAgent]] as const) {
    for (const dataDir of ['/proc/patu-ipam', '/proc/self/fdinfo/ipam', '/sys/fs/patu-ipam']) {
      test(`ipam.dataDir ${dataDir} is code 7 naming ipam.dataDir, fast (${mode})`, async () => {
        const pod = newNetns();
        const conf = f.netconf();
        const r = await execPlugin(f.bin, 'ADD', { ...conf, ipam: { ...conf.ipam, dataDir } }, opts({ containerId: pod.id, netns: pod.path }));
        assert.equal(r.signal, null, `the plugin hung and was killed: ${show(r)}`);
        assert.equal(r.json?.code, 7, show(r));
        assert.match(r.json.msg, /ipam\.dataDir/, show(r));
      });
    }
  }
  test('the agent still answers', async () => {
    const v = await execPlugin(f.bin, 'VERSION', '', viaAgent({ timeoutMs: 5_000 }));
    assert.equal(v.code, 0, show(v));
  });
});

// ---------------------------------------------------------------------------
// A request stuck in a system call: the agent's worker reads the IPAM round-robin
// cursor, and a FIFO in its place blocks that open() for as long as nobody writes.

/** Makes ADDs on `net` block in the agent: its cursor file becomes a FIFO. */
function wedge(net: Flavour): { fifo: string; release(): void } {
  const dir = join(net.dataDir, net.netName);
  mkdirSync(dir, { recursive: true });
  const fifo = join(dir, 'last_reserved_ip.0');
  rmSync(fifo, { force: true });
  assert.equal(spawnSync('mkfifo', [fifo]).status, 0);
  return {
    fifo,
    release() {
      // A blocked open() returns once a writer opens the FIFO; a reader then sees EOF
      // once that writer closes. Move the FIFO aside first, so no new open() can block
      // on it, then hold a writer on it for a second: a launcher that resolved the path
      // just before the rename (it falls back to running the request itself the moment
      // the agent goes) is caught too. A one-shot non-blocking writer raced with it.
      const gone = `${fifo}.released`;
      try {
        renameSync(fifo, gone);
      } catch {
        return; // released already
      }
      const fd = openSync(gone, fsc.O_RDWR | fsc.O_NONBLOCK);
      setTimeout(() => {
        closeSync(fd);
        rmSync(gone, { force: true });
      }, 1_000);
    },
  };
}

describe('a stuck request in the agent', { skip }, () => {
  let slowAgent: AgentHandle;
  let netA: Flavour;
  let netB: Flavour;
  const TIMEOUT = 3_000;
  const viaSlow = (o: ExecOptions = {}): ExecOptions => ({ timeoutMs: 40_000, ...o, env: { PATU_AGENT_SOCKET: slowAgent.socket, ...o.env } });

  before(async () => {
    netA = patuFlavour();
    netB = patuFlavour();
    cleanups.push(() => netA.destroy(), () => netB.destroy());
    slowAgent = await startAgent(f.bin, join(scratch, 'slow.sock'), 'info', ['--request-timeout', String(TIMEOUT)]);
    cleanups.push(() => slowAgent.stop());
  });

  test('VERSION and other networks are served while one request is stuck; the stuck one is abandoned with code 11; its network works afterwards', async () => {
    const w = wedge(netA);
    cleanups.push(() => w.release());
    const podA = newNetns();
    const stuck = startPlugin(f.bin, 'ADD', netA.netconf(), viaSlow({ containerId: podA.id, netns: podA.path }));
    await new Promise((r) => setTimeout(r, 500));

    const v = await execPlugin(f.bin, 'VERSION', '', viaSlow({ timeoutMs: 10_000 }));
    assert.equal(v.code, 0, `VERSION while a request is stuck: ${show(v)}`);
    assert.ok(v.ms < 1_500, `VERSION took ${v.ms} ms`);
    const st = await execPlugin(f.bin, 'STATUS', netB.netconf(), viaSlow({ timeoutMs: 10_000 }));
    assert.equal(st.code, 0, `STATUS of another network: ${show(st)}`);
    const podB = newNetns();
    const addB = await execPlugin(f.bin, 'ADD', netB.netconf(), viaSlow({ containerId: podB.id, netns: podB.path }));
    assert.equal(addB.code, 0, `ADD on another network: ${show(addB)}`);
    assert.ok(addB.ms < TIMEOUT, `ADD on another network waited ${addB.ms} ms behind the stuck one`);
    assert.equal((await execPlugin(f.bin, 'DEL', netB.netconf(), viaSlow({ containerId: podB.id, netns: podB.path }))).code, 0);

    const r = await stuck.done;
    assert.equal(r.signal, null, `the stuck ADD was never answered: ${show(r)}`);
    assert.equal(r.json?.code, 11, show(r));
    assert.match(r.json.msg, /abandoned/, show(r));
    assert.ok(r.ms >= TIMEOUT - 500 && r.ms < TIMEOUT + 8_000, `answered after ${r.ms} ms (deadline ${TIMEOUT})`);
    assert.match(slowAgent.log(), /"timedOut":true/, 'the agent logged the abandoned request');

    // The stuck thread still sits in open() of the FIFO. Its network must work again:
    // the IPAM lock it held was closed with it.
    rmSync(w.fifo, { force: true });
    const podA2 = newNetns();
    const conf = { ...netA.netconf(), ipam: { ...netA.netconf().ipam, lockTimeoutMs: 2_000 } };
    const again = await execPlugin(f.bin, 'ADD', conf, viaSlow({ containerId: podA2.id, netns: podA2.path }));
    assert.equal(again.code, 0, `ADD on the network after its stuck request was abandoned: ${show(again)}`);
    assert.equal((await execPlugin(f.bin, 'DEL', conf, viaSlow({ containerId: podA2.id, netns: podA2.path }))).code, 0);
    // The abandoned ADD's own pod: DEL cleans up whatever it did half-way.
    assert.equal((await execPlugin(f.bin, 'DEL', netA.netconf(), viaSlow({ containerId: podA.id, netns: podA.path }))).code, 0);
    assert.deepEqual(ipamFiles(netA.dataDir, netA.netName), []);
  });

  test('no replay: a request the launcher gave up on and ran itself is never run by the agent later', async () => {
    const w = wedge(netA);
    cleanups.push(() => w.release());
    const podStuck = newNetns();
    const stuck = startPlugin(f.bin, 'ADD', netA.netconf(), viaSlow({ containerId: podStuck.id, netns: podStuck.path }));
    await new Promise((r) => setTimeout(r, 500));
    // Queued behind the stuck request on the same network. Its launcher gives up
    // after 1 s and runs it in its own process, which waits for the IPAM lock the stuck
    // request holds until the agent abandons it (a requested address reads no cursor).
    const pod = newNetns();
    const ip = `${netA.prefix}.77`;
    const conf = { ...netA.netconf(), ipam: { ...netA.netconf().ipam, lockTimeoutMs: 15_000 }, runtimeConfig: { ips: [`${ip}/24`] } };
    const r = await execPlugin(f.bin, 'ADD', conf, viaSlow({ containerId: pod.id, netns: pod.path, env: { PATU_AGENT_TIMEOUT_MS: '1000' } }));
    // The launcher's own run ends either way (it may trip over the FIFO cursor too):
    // what matters is what the node looks like once the runtime has its answer.
    assert.equal(r.signal, null, `the launcher's own run hung: ${show(r)}`);
    assert.ok(r.code === 0 || r.json?.code !== undefined, show(r));
    const veth = hostVethName(pod.id, 'eth0');
    const linkState = (): string => (existsSync(`/sys/class/net/${veth}`) ? `ifindex ${readFileSync(`/sys/class/net/${veth}/ifindex`, 'utf8').trim()}` : 'absent');
    const answered = linkState();
    const recordsAnswered = ipamFiles(netA.dataDir, netA.netName).filter((n) => n === ip);
    if (r.code === 0) assert.notEqual(answered, 'absent', 'a successful ADD has its veth');
    const s = await stuck.done;
    assert.equal(s.json?.code, 11, show(s));
    // Let the stuck open() return too: an agent that kept the request queued would run it now.
    w.release();
    await new Promise((res) => setTimeout(res, 2_500));
    assert.equal(linkState(), answered, `${veth} changed after the runtime had its answer (${answered}): the agent replayed the ADD`);
    assert.deepEqual(ipamFiles(netA.dataDir, netA.netName).filter((n) => n === ip), recordsAnswered, 'IPAM records changed after the answer');
    // The agent's own account of it: dropped unstarted (or, had its deadline come first
    // while it waited in the queue, answered unstarted); never run.
    const mine = slowAgent.log().split('\n').filter((l) => l.includes(`"containerId":"${pod.id}"`));
    assert.ok(mine.length > 0 && mine.every((l) => /"dropped":"its launcher (had gone|gave up and ran it itself)"|"timedOut":true/.test(l)), `the agent's log for ${pod.id}:\n${mine.join('\n')}`);
    for (const p of [pod, podStuck]) {
      assert.equal((await execPlugin(f.bin, 'DEL', conf, viaSlow({ containerId: p.id, netns: p.path }))).code, 0);
    }
    assert.deepEqual(ipamFiles(netA.dataDir, netA.netName), []);
  });

  test('SIGTERM ends the agent even while a worker thread is blocked in a system call', async () => {
    const w = wedge(netA);
    cleanups.push(() => w.release());
    const pod = newNetns();
    const stuck = startPlugin(f.bin, 'ADD', netA.netconf(), viaSlow({ containerId: pod.id, netns: pod.path }));
    await new Promise((r) => setTimeout(r, 500));
    const how = await slowAgent.stop();
    assert.deepEqual(how, { code: 0, signal: null }, `the agent did not exit on SIGTERM: ${slowAgent.log().slice(-1500)}`);
    // Unanswered by the agent, the launcher runs it itself, and blocks on the same
    // FIFO until it is released.
    w.release();
    const r = await stuck.done;
    assert.equal(r.signal, null, show(r));
    await execPlugin(f.bin, 'DEL', netA.netconf(), inProcess({ containerId: pod.id, netns: pod.path }));
  });
});

// ---------------------------------------------------------------------------
// Limits on the agent's socket

function agentRss(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m?.[1] ?? 0) * 1024;
}

describe('request size on the agent socket', { skip }, () => {
  test('a 200 MB request is refused with an error and does not grow the agent', async () => {
    const pid = agent!.pid;
    const before = agentRss(pid);
    const answer = await new Promise<string>((resolve, reject) => {
      const sock = connect(agent!.socket);
      let got = '';
      sock.setEncoding('utf8');
      sock.on('data', (d: string) => (got += d));
      sock.on('close', () => resolve(got));
      sock.on('error', (e: NodeJS.ErrnoException) => (e.code === 'EPIPE' || e.code === 'ECONNRESET' ? undefined : reject(e)));
      sock.write('CNI_COMMAND=ADD\nCNI_CONTAINERID=big\n\n{"cniVersion":"1.1.0","name":"x","pad":"');
      const chunk = Buffer.alloc(1 << 20, 'a');
      let sent = 0;
      const pump = (): void => {
        while (sent < 200 && !sock.destroyed) {
          sent++;
          if (!sock.write(chunk)) {
            sock.once('drain', pump);
            return;
          }
        }
        if (!sock.destroyed) sock.end('"}');
      };
      pump();
      setTimeout(() => reject(new Error('no answer within 30 s')), 30_000).unref();
    });
    const [code, body] = [answer.slice(0, answer.indexOf('\n')).trim(), answer.slice(answer.indexOf('\n') + 1)];
    assert.equal(code, '1', answer.slice(0, 300));
    assert.equal(JSON.parse(body).code, 7, body);
    assert.match(JSON.parse(body).msg, /larger than/, body);
    const grown = agentRss(pid) - before;
    assert.ok(grown < 32 << 20, `agent RSS grew by ${(grown / 1048576).toFixed(1)} MB`);
    const v = await execPlugin(f.bin, 'VERSION', '', viaAgent({ timeoutMs: 5_000 }));
    assert.equal(v.code, 0, show(v));
  });
});

// ---------------------------------------------------------------------------
// Node state that heals itself

/** The masquerade rules nft shows for a bridge's chain (the product's own layout). */
function masqRules(bridge: string): string[] {
  const chain = `masq_${bridge.replace(/[^A-Za-z0-9_]/g, '_')}`;
  const r = spawnSync('nft', ['list', 'chain', 'ip', 'patu', chain], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.split('\n').filter((l) => l.includes('masquerade')).map((l) => l.trim()) : [];
}

function jumpsTo(bridge: string): number {
  const chain = `masq_${bridge.replace(/[^A-Za-z0-9_]/g, '_')}`;
  const r = spawnSync('nft', ['list', 'chain', 'ip', 'patu', 'postrouting'], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.split('\n').filter((l) => l.includes(`jump ${chain}`)).length : 0;
}

/** Removes one bridge's masquerade chain and jump, as a killed ADD or a flushed ruleset leaves it. */
function dropMasq(bridge: string): void {
  const chain = `masq_${bridge.replace(/[^A-Za-z0-9_]/g, '_')}`;
  const listing = spawnSync('nft', ['-a', 'list', 'chain', 'ip', 'patu', 'postrouting'], { encoding: 'utf8' }).stdout ?? '';
  for (const line of listing.split('\n')) {
    const h = line.includes(`jump ${chain}`) ? /# handle (\d+)/.exec(line)?.[1] : undefined;
    if (h) spawnSync('nft', ['delete', 'rule', 'ip', 'patu', 'postrouting', 'handle', h]);
  }
  spawnSync('nft', ['delete', 'chain', 'ip', 'patu', chain]);
}

/** Test cleanup: as removeMasquerade does, the table goes when no bridge's chain is left in it. */
function dropMasqAndEmptyTable(bridge: string): void {
  dropMasq(bridge);
  const rest = spawnSync('nft', ['list', 'table', 'ip', 'patu'], { encoding: 'utf8' });
  if (rest.status === 0 && !/chain masq_/.test(rest.stdout)) spawnSync('nft', ['delete', 'table', 'ip', 'patu']);
}

describe('masquerade heals itself', { skip }, () => {
  for (const [mode, opts] of [['in-process', inProcess], ['through the agent', viaAgent]] as const) {
    test(`a later ADD restores masquerade the bridge-creating ADD never installed, or that was removed (${mode})`, async () => {
      const net = patuFlavour();
      cleanups.push(() => {
        dropMasqAndEmptyTable(net.bridge);
        net.destroy();
      });
      const pods = [newNetns(), newNetns(), newNetns()];
      try {
        // The ADD that creates the bridge ends before masquerade (what a kill -9 right
        // after the bridge exists leaves): the bridge is there, the rule is not.
        const first = await execPlugin(f.bin, 'ADD', net.netconf({ masquerade: false }), opts({ containerId: pods[0]!.id, netns: pods[0]!.path }));
        assert.equal(first.code, 0, show(first));
        assert.deepEqual(masqRules(net.bridge), []);

        const second = await execPlugin(f.bin, 'ADD', net.netconf({ masquerade: true }), opts({ containerId: pods[1]!.id, netns: pods[1]!.path }));
        assert.equal(second.code, 0, show(second));
        assert.equal(masqRules(net.bridge).length, 1, `masquerade after the second ADD: ${masqRules(net.bridge).join(' | ')}`);
        assert.match(masqRules(net.bridge)[0]!, new RegExp(`ip saddr ${net.subnet.replace(/\./g, '\\.')} ip daddr != 10\\.200\\.0\\.0/16 masquerade`));
        assert.equal(jumpsTo(net.bridge), 1);

        dropMasq(net.bridge);
        // The agent repeats the check once per bridge-cache period (10 s), not per ADD.
        if (mode === 'through the agent') await new Promise((r) => setTimeout(r, 10_500));
        const third = await execPlugin(f.bin, 'ADD', net.netconf({ masquerade: true }), opts({ containerId: pods[2]!.id, netns: pods[2]!.path }));
        assert.equal(third.code, 0, show(third));
        assert.equal(masqRules(net.bridge).length, 1, 'the rule is back after it was removed');
        assert.equal(jumpsTo(net.bridge), 1, 'one jump, not one per ADD');
      } finally {
        for (const p of pods) await execPlugin(f.bin, 'DEL', net.netconf(), opts({ containerId: p.id, netns: p.path }));
      }
    });
  }
});

describe('GC and the socket-acceleration registry', { skip }, () => {
  const ks = scratchForTests('patu-test-faults');
  test('GC removes registry entries of its network whose address no IPAM record holds, and keeps the rest', async () => {
    const net = patuFlavour();
    cleanups.push(() => net.destroy());
    const pinRoot = net.netconf().pinRoot as string;
    const accel = Accel.open({ pinRoot, cgroupPath: ks.cgroup() });
    accel.enable();
    ks.defer('accel teardown', () => accel.teardown());
    const pods = [newNetns(), newNetns()];
    const conf = net.netconf({ accel: true });
    const registered = (): string[] => accel.status().pods.map((p) => p.ip).sort();
    try {
      const ips: string[] = [];
      for (const p of pods) {
        const r = await execPlugin(f.bin, 'ADD', conf, inProcess({ containerId: p.id, netns: p.path }));
        assert.equal(r.code, 0, show(r));
        ips.push(String(r.json.ips[0].address).split("/")[0]!);
      }
      assert.deepEqual(registered(), [...ips].sort(), 'ADD registered both pods');
      // What a DEL killed between releasing the address and unregistering it leaves:
      // no IPAM record, a registry entry. Plus an entry of another network (kept).
      const dir = join(net.dataDir, net.netName);
      for (const n of readdirSync(dir)) if (n === ips[0] || n.endsWith(`.${ips[0]}`)) rmSync(join(dir, n));
      const foreign = '172.31.213.9';
      assert.ok(accel.registerPod(foreign).ok);

      const gc = await execPlugin(f.bin, 'GC', { ...conf, 'cni.dev/valid-attachments': pods.map((p) => ({ containerID: p.id, ifname: 'eth0' })) }, inProcess());
      assert.equal(gc.code, 0, show(gc));
      assert.equal(gc.stderr, "", show(gc));
      assert.deepEqual(registered(), [ips[1]!, foreign].sort(), 'the stale entry is gone; the live pod and the other network stay');
    } finally {
      for (const p of pods) await execPlugin(f.bin, 'DEL', conf, inProcess({ containerId: p.id, netns: p.path }));
    }
  });
});
