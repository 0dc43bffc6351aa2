// One node list in, the kernel's routes to the other nodes out: planPeers (refusals),
// then NodeRoutes.apply (a full reconcile), with what happened handed to callbacks
// (the agent logs them; this layer never prints). Shared by both sources: the nodes file
// and the Kubernetes Node objects. A refusal or skip is reported when it starts and when
// it ends, not on every apply.
import { Rtnl } from '../kernel/netlink/rtnl.js';
import { NodeRoutes, type NodeRoutesOptions, type NodeRoutesResult } from '../dataplane/node-routes.js';
import { planPeers, type NodeInfo } from './model.js';

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
}

export class NodeRoutesSync {
  private readonly rtnl: Rtnl;
  private readonly routes: NodeRoutes;
  private reported = new Map<string, string>();
  private selfMissing = false;

  constructor(private readonly opts: NodeRoutesSyncOptions) {
    this.rtnl = opts.netns ? Rtnl.openInNetns(opts.netns) : Rtnl.open();
    this.routes = new NodeRoutes(this.rtnl, opts);
  }

  /** Programs routes for this node list; returns what apply() did (undefined when this node is not in the list). */
  update(nodes: readonly NodeInfo[]): NodeRoutesResult | undefined {
    const plan = planPeers(this.opts.nodeName, nodes);
    const now = new Map<string, string>();
    for (const r of plan.refused) now.set(r.node.name, r.reason);
    if (!plan.self) {
      if (!this.selfMissing) this.opts.onNoSelf?.(this.opts.nodeName);
      this.selfMissing = true;
      this.routes.clear();
      this.report(now, nodes);
      return undefined;
    }
    this.selfMissing = false;
    const result = this.routes.apply(plan.self, plan.peers);
    for (const s of result.skipped) now.set(s.node, s.reason);
    this.report(now, nodes);
    this.opts.onApplied?.(result);
    return result;
  }

  private report(now: Map<string, string>, nodes: readonly NodeInfo[]): void {
    for (const [name, reason] of now) {
      if (this.reported.get(name) === reason) continue;
      this.opts.onRefused?.(nodes.find((n) => n.name === name) ?? { name }, reason);
    }
    this.reported = now;
  }

  close(): void {
    this.rtnl.close();
  }
}
