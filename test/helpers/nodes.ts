// Netns "nodes" for the multi-node test and bench: each node a netns with forwarding on,
// joined by veth links, with pods made by the real CNI plugin running inside the node's
// netns (its own patu0 bridge), and the agent's node routing driven for it
// (startNodesFile: what `patu agent --nodes-file` runs). Everything is registered with a
// Scratch, so it is removed even when a test fails.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { startNodesFile } from '../../src/agent/nodes-watch.js';
import { createLog } from '../../src/agent/log.js';
import type { NodeRoutesSyncOptions } from '../../src/nodes/routes-sync.js';
import { PATU_BIN } from './cni.js';
import { netnsPath, type Scratch } from './kernel.js';

export interface Logged { msg: string; [k: string]: unknown }
export interface Pod { ns: string; ip: string }

export class NodeLab {
  private readonly dir: string;
  private links = 0;

  constructor(private readonly scratch: Scratch) {
    this.dir = scratch.tmpDir(`${scratch.prefix}-lab`);
  }

  /** Runs a shell command in a netns; throws with its stderr on failure. */
  sh(ns: string, cmd: string): string {
    const r = spawnSync('ip', ['netns', 'exec', ns, 'sh', '-ec', cmd], { encoding: 'utf8', timeout: 10_000 });
    if (r.status !== 0) throw new Error(`[${ns}] ${cmd}: exit ${r.status}: ${r.stderr}`);
    return r.stdout;
  }

  netns(name: string): string {
    return this.scratch.netns(this.scratch.name(name));
  }

  /** A node: a netns with IPv4 forwarding on. */
  node(name: string): string {
    const ns = this.netns(name);
    this.sh(ns, 'sysctl -qw net.ipv4.ip_forward=1');
    return ns;
  }

  /** Joins two netns with a veth pair (named `link` in a, `peer` in b), with an address on each end. */
  wire(a: string, aAddr: string, b: string, bAddr: string, link = 'up0', peer = link): void {
    const n = this.links++;
    const tmpA = `pmn${process.pid % 100000}a${n}`;
    const tmpB = `pmn${process.pid % 100000}b${n}`;
    const r = spawnSync('ip', ['link', 'add', tmpA, 'netns', a, 'type', 'veth', 'peer', 'name', tmpB, 'netns', b], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`veth ${a} <-> ${b}: ${r.stderr}`);
    this.sh(a, `ip link set ${tmpA} name ${link} && ip addr add ${aAddr} dev ${link} && ip link set ${link} up`);
    this.sh(b, `ip link set ${tmpB} name ${peer} && ip addr add ${bAddr} dev ${peer} && ip link set ${peer} up`);
  }

  /** A pod on `nodeNs`, made by the real plugin running inside the node's netns; returns its netns and address. */
  pod(nodeNs: string, name: string, subnet: string, o: { mtu?: number; clusterCIDR?: string } = {}): Pod {
    const ns = this.netns(name);
    const netconf = {
      cniVersion: '1.1.0', name: `${this.scratch.prefix}-net`, type: 'patu', bridge: 'patu0', mtu: o.mtu ?? 1450,
      // With a cluster CIDR, the pods' masquerade is on (for what leaves it), as in a real node.
      ...(o.clusterCIDR ? { masquerade: true, clusterCIDR: o.clusterCIDR } : { masquerade: false }),
      ipam: { ranges: [[{ subnet }]], dataDir: join(this.dir, `ipam-${nodeNs}`) },
      pinRoot: this.scratch.pinRoot('cni'), agentSocket: join(this.dir, 'no-agent.sock'),
    };
    const env = {
      PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
      CNI_COMMAND: 'ADD', CNI_CONTAINERID: `${ns}-c`, CNI_NETNS: netnsPath(ns), CNI_IFNAME: 'eth0', CNI_PATH: '/usr/lib/cni',
    };
    const r = spawnSync('ip', ['netns', 'exec', nodeNs, PATU_BIN], { env, input: JSON.stringify(netconf), encoding: 'utf8', timeout: 30_000 });
    if (r.status !== 0) throw new Error(`ADD on ${nodeNs}: ${r.stdout} ${r.stderr}`);
    return { ns, ip: (JSON.parse(r.stdout) as { ips: { address: string }[] }).ips[0]!.address.split('/')[0]! };
  }

  /** The agent's node routing for one node, from a nodes file; returns its log lines as they come. */
  async routing(nodeNs: string, nodeName: string, file: string, opts: Partial<Pick<NodeRoutesSyncOptions, 'mode' | 'vni' | 'port' | 'retryMs' | 'snat'>> = {}): Promise<Logged[]> {
    const lines: Logged[] = [];
    const log = createLog({ level: 'info', write: (l) => void lines.push(JSON.parse(l) as Logged) });
    const stop = await startNodesFile(file, log, { nodeName, netns: netnsPath(nodeNs), ...opts });
    this.scratch.defer(`node routing of ${nodeNs}`, stop);
    return lines;
  }

  /** A file in the lab's directory. */
  path(name: string): string {
    return join(this.dir, name);
  }
}
