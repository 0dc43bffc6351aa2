// One node list in, the kernel's routes to the other nodes out: planPeers (refusals),
// then NodeRoutes.apply (a full reconcile), with what happened handed to callbacks
// (the agent logs them; this layer never prints). Shared by both sources: the nodes file
// and the Kubernetes Node objects. A refusal or skip is reported when it starts and when
// it ends, not on every apply. A failed apply (our address not up yet at boot, a netlink
// error) is reported and retried with the same list until it works or a new list comes,
// so neither source has to: the agent starts, and routes follow when the kernel allows.
import { Rtnl } from '../kernel/netlink/rtnl.js';
import { NodeRoutes, type NodeRoutesOptions, type NodeRoutesResult } from '../dataplane/node-routes.js';
import { syncNodeSnat } from '../dataplane/node-snat.js';
import { planPeers, type NodeInfo } from './model.js';
import { DEFAULTS } from '../defaults.js';

export interface NodeRoutesSyncOptions extends NodeRoutesOptions {
  /** This node's name: its entry gives our pod CIDR and address. */
  nodeName: string;
  /** Program this netns (a path like /run/netns/x) instead of the calling thread's (tests). */
  netns?: string;
  onApplied?: (r: NodeRoutesResult) => void;
  /** A peer refused (overlap, ...) or skipped (a foreign route): once per distinct reason. */
  onRefused?: (node: NodeInfo | { name: string }, reason: string) => void;
  /** This node is missing from the list: nothing is routed (everything of ours is removed). */
  onNoSelf?: (nodeName: string) => void;
  /**
   * SNAT traffic from outside the cluster forwarded to other nodes' pods (NodePorts with a
   * remote backend: src/dataplane/node-snat.ts). Default true; false leaves nftables alone.
   */
  snat?: boolean;
  /** An apply failed; it is retried after retryMs with the same list (unless a new list comes first). */
  onError?: (err: Error) => void;
  /** Default DEFAULTS.nodeRoutesRetryMs. */
  retryMs?: number;
}

export class NodeRoutesSync {
  private readonly rtnl: Rtnl;
  private readonly routes: NodeRoutes;
  private reported = new Map<string, string>();
  private selfMissing = false;
  private lastSnat: string | undefined;
  private retry: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(private readonly opts: NodeRoutesSyncOptions) {
    this.rtnl = opts.netns ? Rtnl.openInNetns(opts.netns) : Rtnl.open();
    this.routes = new NodeRoutes(this.rtnl, opts);
  }

  /**
   * Programs routes for this node list; returns what apply() did (undefined when this node
   * is not in the list, or when it failed: reported through onError, retried).
   */
  update(nodes: readonly NodeInfo[]): NodeRoutesResult | undefined {
    clearTimeout(this.retry);
    this.retry = undefined;
    if (this.closed) return undefined;
    try {
      return this.apply(nodes);
    } catch (e) {
      this.lastSnat = undefined;
      this.opts.onError?.(e instanceof Error ? e : new Error(String(e)));
      this.retry = setTimeout(() => void this.update(nodes), this.opts.retryMs ?? DEFAULTS.nodeRoutesRetryMs);
      this.retry.unref();
      return undefined;
    }
  }

  private apply(nodes: readonly NodeInfo[]): NodeRoutesResult | undefined {
    const plan = planPeers(this.opts.nodeName, nodes);
    const now = new Map<string, string>();
    for (const r of plan.refused) now.set(r.node.name, r.reason);
    if (!plan.self) {
      if (!this.selfMissing) this.opts.onNoSelf?.(this.opts.nodeName);
      this.selfMissing = true;
      this.routes.clear();
      this.snat([], []);
      this.report(now, nodes);
      return undefined;
    }
    this.selfMissing = false;
    const result = this.routes.apply(plan.self, plan.peers);
    for (const s of result.skipped) now.set(s.node, s.reason);
    this.snat(result.routes.map((r) => r.podCIDR), [plan.self.podCIDR, ...plan.peers.map((p) => p.podCIDR)]);
    this.report(now, nodes);
    this.opts.onApplied?.(result);
    return result;
  }

  private snat(peers: string[], all: string[]): void {
    if (this.opts.snat === false) return;
    const key = `${peers.join(',')}|${all.join(',')}`;
    if (key === this.lastSnat) return;
    syncNodeSnat(peers, all, this.opts.netns);
    this.lastSnat = key;
  }

  private report(now: Map<string, string>, nodes: readonly NodeInfo[]): void {
    for (const [name, reason] of now) {
      if (this.reported.get(name) === reason) continue;
      this.opts.onRefused?.(nodes.find((n) => n.name === name) ?? { name }, reason);
    }
    this.reported = now;
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.retry);
    this.rtnl.close();
  }
}

/** The log lines of node routing, the same for both sources (a structural logger: the agent's, or the k8s source's). */
export function nodeRoutesLogging(log: { info(o: object, m: string): void; warn(o: object, m: string): void; error(o: object, m: string): void }, base: Record<string, unknown>): Pick<NodeRoutesSyncOptions, 'onApplied' | 'onRefused' | 'onNoSelf' | 'onError'> {
  return {
    onError: (err) => log.error({ ...base, err: err.message }, 'routes to other nodes not programmed; retrying'),
    onApplied: (r) => {
      if (r.added || r.removed) log.info({ ...base, routes: r.routes.map((x) => `${x.podCIDR} ${x.via} via ${x.gateway} (${x.node})`), added: r.added, removed: r.removed, ...(r.vxlanMtu !== undefined ? { vxlanMtu: r.vxlanMtu } : {}), ms: r.ms }, 'routes to other nodes programmed');
    },
    onRefused: (node, reason) => log.error({ ...base, node: node.name, reason }, 'node not routed'),
    onNoSelf: (name) => log.warn({ ...base, nodeName: name }, 'this node is not in the node list: no routes to other nodes'),
  };
}
