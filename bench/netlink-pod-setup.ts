// Micro benchmark: one full pod setup over raw rtnetlink (veth with the peer born in
// the pod netns, host end on the bridge and up, pod address, eth0+lo up, default
// route) against `ip -batch` doing the same steps, in the same run.
//
//   node dist/bench/netlink-pod-setup.js [pods=100]
//
// Everything lives in namespaces made here (a "node" netns holds the bridge), so the
// host's own interfaces are never touched. Needs root.
import { spawnSync } from 'node:child_process';
import { writeFileSync, rmSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Rtnl } from '../src/kernel/netlink/rtnl.js';
import { createNamedNetns, deleteNamedNetns } from '../src/kernel/netns.js';

const PODS = Number(process.argv[2] ?? 100);
const tag = `nlb${process.pid}`;
const NODE = `${tag}n`;
const BR = 'br0';
const made: string[] = [];

const ms = (t0: bigint): number => Number(process.hrtime.bigint() - t0) / 1e6;
const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
const pct = (xs: number[], p: number): number => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * p))]!;
const podIp = (arm: number, i: number): string => `10.88.${1 + arm * 100 + (i >> 8)}.${i & 0xff}`; // 10.88.0.1 is the gateway

function newNs(name: string): string {
  const p = createNamedNetns(name);
  made.push(name);
  return p;
}

function ipRun(args: string[]): void {
  const r = spawnSync('ip', args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ip ${args.join(' ')} failed: ${r.stderr}`);
}

function main(): void {
  if (process.getuid?.() !== 0) {
    console.error('netlink-pod-setup: needs root (creates namespaces and links)');
    process.exit(1);
  }
  const nodePath = newNs(NODE);
  const node = Rtnl.openInNetns(nodePath);
  node.createBridge(BR, { mtu: 1500 });
  const br = node.linkByName(BR)!;
  node.addAddress(br.index, '10.88.0.1/16');
  node.setUp(br.index);
  const dir = mkdtempSync(join(tmpdir(), 'nlb-'));

  const atomicSetup: number[] = [];
  const rtnlSetup: number[] = [];
  const rtnlWithNs: number[] = [];
  const ipSetup: number[] = [];
  const ipWithNs: number[] = [];
  try {
    for (let i = 1; i <= PODS; i++) {
      // --- patu: raw rtnetlink, one host socket kept open (as the agent does), one per pod
      const name = `${tag}r${i}`;
      const t0 = process.hrtime.bigint();
      const podPath = newNs(name);
      const t1 = process.hrtime.bigint();
      node.createVeth(`vr${i}`, 'eth0', { mtu: 1500, peerNetnsPath: podPath });
      const h = node.linkByName(`vr${i}`)!;
      node.setMaster(h.index, br.index);
      node.setUp(h.index);
      const pod = Rtnl.openInNetns(podPath);
      try {
        const eth0 = pod.linkByName('eth0')!;
        pod.addAddress(eth0.index, `${podIp(0, i)}/16`);
        pod.setUp(eth0.index);
        pod.setUp(pod.linkByName('lo')!.index);
        pod.addRoute({ dst: 'default', gateway: '10.88.0.1', oif: eth0.index });
      } finally {
        pod.close();
      }
      rtnlSetup.push(ms(t1));
      rtnlWithNs.push(ms(t0));

      // --- patu, host end enslaved and up in the creating request (what the CNI plugin can use)
      const aname = `${tag}q${i}`;
      const aPath = newNs(aname);
      const a0 = process.hrtime.bigint();
      node.createVeth(`vq${i}`, 'eth0', { mtu: 1500, peerNetnsPath: aPath, masterIndex: br.index, up: true });
      const apod = Rtnl.openInNetns(aPath);
      try {
        const eth0 = apod.linkByName('eth0')!;
        apod.addAddress(eth0.index, `${podIp(2, i)}/16`);
        apod.setUp(eth0.index);
        apod.setUp(apod.linkByName('lo')!.index);
        apod.addRoute({ dst: 'default', gateway: '10.88.0.1', oif: eth0.index });
      } finally {
        apod.close();
      }
      atomicSetup.push(ms(a0));

      // --- ip -batch: host part in the node netns, pod part in the pod netns
      const iname = `${tag}i${i}`;
      const hostFile = join(dir, 'host');
      const podFile = join(dir, 'pod');
      writeFileSync(hostFile, `link add vi${i} mtu 1500 type veth peer name eth0 netns ${iname}\nlink set vi${i} master ${BR}\nlink set vi${i} up\n`);
      writeFileSync(podFile, `addr add ${podIp(1, i)}/16 dev eth0\nlink set eth0 up\nlink set lo up\nroute add default via 10.88.0.1 dev eth0\n`);
      const u0 = process.hrtime.bigint();
      ipRun(['netns', 'add', iname]);
      made.push(`ip:${iname}`);
      const u1 = process.hrtime.bigint();
      ipRun(['-n', NODE, '-batch', hostFile]);
      ipRun(['-n', iname, '-batch', podFile]);
      ipSetup.push(ms(u1));
      ipWithNs.push(ms(u0));
    }
  } finally {
    node.close();
    rmSync(dir, { recursive: true, force: true });
    for (const n of made.reverse()) {
      if (n.startsWith('ip:')) spawnSync('ip', ['netns', 'del', n.slice(3)], { stdio: 'ignore' });
      else deleteNamedNetns(n);
    }
  }

  const row = (label: string, xs: number[]): string =>
    `${label.padEnd(34)} median ${median(xs).toFixed(3)} ms  p90 ${pct(xs, 0.9).toFixed(3)} ms  (n=${xs.length})`;
  console.log(row('rtnetlink pod setup', rtnlSetup));
  console.log(row('rtnetlink, master+up in create', atomicSetup));
  console.log(row('ip -batch pod setup', ipSetup));
  console.log(row('rtnetlink incl. netns creation', rtnlWithNs));
  console.log(row('ip -batch incl. ip netns add', ipWithNs));
  console.log(`ratio ip/rtnetlink: setup ${(median(ipSetup) / median(rtnlSetup)).toFixed(1)}x, incl. netns ${(median(ipWithNs) / median(rtnlWithNs)).toFixed(1)}x`);
}

main();
