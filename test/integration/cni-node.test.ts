// What patu's CNI does to the node beyond the pod itself, proven with traffic:
// egress masquerade (a pod reaching an address outside the cluster CIDR is seen
// there with the node's address, while pod-to-pod keeps pod addresses), and
// dual-stack pods. Root; everything in namespaces and links this test creates.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { removeMasquerade } from '../../src/dataplane/masquerade.js';
import { PATU_BIN, addNetns, delNetns, execPlugin, describe, isRoot, ping } from '../helpers/cni.js';

const tag = `nd${process.pid.toString(36)}`;
const bridge = `${tag}br`;
const extLink = `${tag}x`; // host end of the "outside world" link
const extNs = `${tag}-ext`;
const dataDir = mkdtempSync(join(tmpdir(), 'patu-node-test-'));
const skip = !isRoot() ? 'needs root' : false;
const made: string[] = [];

const sh = (cmd: string, args: string[]) => {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
};

function netconf(extra: Record<string, unknown> = {}) {
  return {
    cniVersion: '1.1.0',
    name: `${tag}net`,
    type: 'patu',
    bridge,
    clusterCIDR: '10.203.0.0/16',
    pinRoot: `/sys/fs/bpf/patu-test-${tag}`,
    ipam: { ranges: [[{ subnet: '10.203.7.0/24' }], [{ subnet: 'fd00:203:7::/64' }]], dataDir },
    ...extra,
  };
}

after(async () => {
  for (const ns of made) {
    await execPlugin(PATU_BIN, 'DEL', netconf(), { containerId: `${ns}-ctr`, netns: `/var/run/netns/${ns}` });
    delNetns(ns);
  }
  delNetns(extNs);
  spawnSync('ip', ['link', 'del', extLink], { stdio: 'ignore' });
  spawnSync('ip', ['link', 'del', bridge], { stdio: 'ignore' });
  // The masquerade chain is per bridge in patu's own table: remove ours only.
  try {
    removeMasquerade(bridge);
  } catch {
    /* nothing of ours to remove */
  }
  rmSync(dataDir, { recursive: true, force: true });
});

/** A 198.18.<n>.0/24 that appears in no host address or route (returns "198.18.<n>"). */
function outsideSubnet(): string {
  const used = sh('ip', ['-4', 'route', 'show', 'table', 'all']) + sh('ip', ['-4', '-o', 'addr', 'show']);
  for (let n = 200 + (process.pid % 50); n < 256; n++) {
    if (!used.includes(`198.18.${n}.`)) return `198.18.${n}`;
  }
  throw new Error('no free 198.18.x.0/24 for the outside host');
}

async function pod(name: string): Promise<{ ns: string; v4: string; v6: string }> {
  const ns = `${tag}-${name}`;
  addNetns(ns);
  made.push(ns);
  const r = await execPlugin(PATU_BIN, 'ADD', netconf(), { containerId: `${ns}-ctr`, netns: `/var/run/netns/${ns}` });
  assert.equal(r.code, 0, describe(r));
  const ips = (r.json.ips as { address: string }[]).map((i) => i.address.split('/')[0]!);
  return { ns, v4: ips.find((i) => !i.includes(':'))!, v6: ips.find((i) => i.includes(':'))! };
}

test('dual stack: each pod gets an IPv4 and an IPv6 address and reaches the other pod over both', { skip }, async () => {
  const a = await pod('a');
  const b = await pod('b');
  assert.match(a.v4, /^10\.203\.7\./);
  assert.match(a.v6, /^fd00:203:7::/);
  assert.ok(ping(a.ns, b.v4).ok, `IPv4 ${a.v4} -> ${b.v4}`);
  assert.ok(ping(a.ns, b.v6).ok, `IPv6 ${a.v6} -> ${b.v6}`);
  assert.ok(ping(a.ns, 'fd00:203:7::1').ok, 'IPv6 gateway on the bridge');
});

test('masquerade: leaving the cluster CIDR the pod is seen as the node; the rule lives in table ip patu', { skip }, async () => {
  const a = made.length ? { ns: made[0]! } : await pod('a');
  // An "outside" host: a netns behind its own veth, in a benchmarking-range /24
  // (198.18.0.0/15) that no host address or route uses, routed by the node.
  const ext = outsideSubnet();
  addNetns(extNs);
  sh('ip', ['link', 'add', extLink, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', extNs]);
  sh('ip', ['addr', 'add', `${ext}.1/24`, 'dev', extLink]);
  sh('ip', ['link', 'set', extLink, 'up']);
  sh('ip', ['-n', extNs, 'addr', 'add', `${ext}.2/24`, 'dev', 'eth0']);
  sh('ip', ['-n', extNs, 'link', 'set', 'eth0', 'up']);

  const table = sh('nft', ['list', 'table', 'ip', 'patu']);
  assert.match(table, new RegExp(`chain masq_${bridge}`), table);
  assert.match(table, /ip saddr 10\.203\.7\.0\/24 ip daddr != 10\.203\.0\.0\/16 masquerade/, table);

  // The outside host prints the source address of the first connection it gets
  // (bounded: it exits after one, or after 6 s).
  const serverJs = `const s=require('net').createServer(c=>{process.stdout.write(c.remoteAddress);c.destroy();s.close()}).listen(7777,'${ext}.2');setTimeout(()=>process.exit(2),6000)`;
  const server = spawn('ip', ['netns', 'exec', extNs, process.execPath, '-e', serverJs], { stdio: ['ignore', 'pipe', 'ignore'] });
  let seen = '';
  server.stdout.setEncoding('utf8').on('data', (d: string) => (seen += d));
  const done = new Promise<void>((r) => server.on('close', () => r()));
  await new Promise((r) => setTimeout(r, 700));
  spawnSync('ip', ['netns', 'exec', a.ns, 'busybox', 'sh', '-c', `echo hi | busybox timeout 3 busybox nc ${ext}.2 7777`], { timeout: 5000 });
  await done;
  assert.equal(seen, `${ext}.1`, `the outside host should see the node's address on that link, saw '${seen}'`);

  // Inside the cluster CIDR nothing is rewritten: pod to pod keeps pod addresses.
  const b = await pod('c');
  const podJs = "const s=require('net').createServer(c=>{process.stdout.write(c.remoteAddress);c.destroy();s.close()}).listen(7778);setTimeout(()=>process.exit(2),6000)";
  const podServer = spawn('ip', ['netns', 'exec', b.ns, process.execPath, '-e', podJs], { stdio: ['ignore', 'pipe', 'ignore'] });
  let podSeen = '';
  podServer.stdout.setEncoding('utf8').on('data', (d: string) => (podSeen += d));
  const podDone = new Promise<void>((r) => podServer.on('close', () => r()));
  await new Promise((r) => setTimeout(r, 700));
  spawnSync('ip', ['netns', 'exec', a.ns, 'busybox', 'sh', '-c', `echo hi | busybox timeout 3 busybox nc ${b.v4} 7778`], { timeout: 5000 });
  await podDone;
  assert.match(podSeen, /^(::ffff:)?10\.203\.7\.\d+$/, `pod to pod keeps the pod address, saw '${podSeen}'`);
});
