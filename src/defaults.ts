// Every default patu uses, in one place. Import-free on purpose: the plugin, the
// agent, the CLI, install and the tests all read it, and none of them should pull
// in anything else for a constant.
//
// Not here: the cgroup2 attach point. It differs between hosts (pure cgroup v2:
// /sys/fs/cgroup; hybrid: /sys/fs/cgroup/unified; in a container: the host's mount),
// so it is found at run time from /proc/self/mountinfo (src/kernel/cgroup.ts).
export const DEFAULTS = {
  /** Host bridge of the patu network; its address is each range's gateway. */
  bridge: 'patu0',
  mtu: 1500,
  /**
   * The cluster's service CIDR (kube-apiserver's --service-cluster-ip-range default):
   * with --kubernetes, a connect()/sendmsg() to an address in it that no service port
   * answers is refused (ECONNREFUSED) instead of leaving the node. The services-file
   * mode has no service CIDR unless --service-cidr names one.
   */
  serviceCIDR: '10.96.0.0/12',
  /** How often the agent reads address notifications (RTM_NEWADDR/DELADDR) for NodePorts. */
  nodeAddrPollMs: 200,
  /**
   * Routes to other nodes' pods (src/dataplane/node-routes.ts): the kernel vxlan device used
   * for peers not on a shared link, its VNI and UDP port (IANA's 4789; Linux's own default,
   * 8472, is what flannel uses: pick another VNI/port to run beside it).
   */
  vxlanDevice: 'patu.vxlan',
  vxlanVni: 1,
  vxlanPort: 4789,
  /** After a failed apply of the routes to other nodes (e.g. our address not up yet), retry this often. */
  nodeRoutesRetryMs: 5_000,
  /** Pod addresses of all nodes: never masqueraded. */
  clusterCIDR: '10.200.0.0/16',
  /** The node's pod subnet when neither ipam.ranges nor podCIDR is given: the first /24 of clusterCIDR. */
  podCIDR: '10.200.0.0/24',
  /** Where bpffs is mounted; every patu pin root is a directory below it. */
  bpffs: '/sys/fs/bpf',
  /** patu's own pins (maps, programs, links) below bpffs. */
  pinRoot: '/sys/fs/bpf/patu',
  /** patu's node state: the install manifest, the installed tree of the DaemonSet. */
  stateDir: '/var/lib/patu',
  /** IPAM records (one directory per network). */
  dataDir: '/var/lib/patu/ipam',
  /** The agent's CNI socket, which bin/patu tries first. */
  agentSocket: '/run/patu/agent.sock',
  /**
   * Deadline of one CNI request inside the agent: a request still running then is
   * answered with code 11 and abandoned. Below bin/patu's own 60 s receive timeout, so
   * the agent always answers before the launcher gives up on it.
   */
  agentRequestTimeoutMs: 20_000,
  /**
   * How long a successful ADD's answer waits for the agent's own work on the pod (its
   * extra interfaces: src/k8s/podnet-source.ts); then it is answered anyway and the
   * reconciler finishes (the pod starts without them for a moment rather than not at all).
   */
  beforeAnswerTimeoutMs: 5_000,
  /** Where container runtimes look for plugins and read network configs (containerd, CRI-O). */
  cniBinDir: '/opt/cni/bin',
  cniConfDir: '/etc/cni/net.d',
  /** The network config file the agent (or install) writes. */
  conflistName: '10-patu.conflist',
  /** Where `patu install` puts patu's own files. */
  prefix: '/usr/lib/patu',
  /** /metrics, /healthz, /readyz of the agent in Kubernetes mode. */
  metricsAddr: '127.0.0.1:9464',
  /** /metrics, /healthz, /readyz of `patu manager` (split mode; beside the agent's on the same host). */
  managerMetricsAddr: '127.0.0.1:9465',
  /** How often the agent reads link notifications (RTM_NEWLINK/DELLINK) to attach the tc path to new uplinks. */
  nodeportLinkPollMs: 200,
  /** And how often it re-checks every uplink's tc links anyway (a pin removed by hand, a failed attach). */
  nodeportResyncMs: 30_000,
  logLevel: 'info',
  /**
   * Where pod network namespaces are bind-mounted (containerd, CRI-O, podman, `ip netns`):
   * the UDP socket destroyer walks each one after a UDP backend leaves a service.
   */
  podNetnsDir: '/run/netns',
  /** After this long, the UDP socket destroyer enters no further namespace (the apply waits for it). */
  udpDestroyBudgetMs: 2000,
  /**
   * The policy engine's names file (policy/endpoint/class ids -> names) for `patu policy`,
   * `patu monitor` and /metrics: <dir>/<basename of the pin root>.names.json. Not beside the
   * pins: bpffs holds no regular files. tmpfs, like bpffs: both are gone after a reboot.
   */
  policyStateDir: '/run/patu/policy',
  /**
   * Split mode (`patu manager` + `patu agent --manager`): the name the manager's certificate
   * carries and the agent checks, whatever address it dials (`patu certs generate --server-name`).
   */
  managerServerName: 'patu-manager',
  /** How often the TLS directory is re-read for rotated files when no fs event came (src/rpc/tls.ts). */
  tlsPollMs: 5000,
  /** A change of the TLS files is acted on once they have stayed the same this long (cert and key written apart). */
  tlsSettleMs: 250,
  /** First retry after a failed call to the manager; doubled per failure (jittered) up to the max. */
  mirrorBackoffMs: 100,
  mirrorMaxBackoffMs: 5_000,
  /** How often an idle agent asks the manager whether it still holds the agent's state (a restart while nothing changed). */
  mirrorHeartbeatMs: 2_000,
  /**
   * Split mode: the deadline of one data-plane API call to the manager (src/rpc/client.ts) when the caller sets
   * none: the agent's mirror, `patu status` and tools all rely on this one (a 1,000-pod policy state compiles in well under it). Below agentRequestTimeoutMs, so a CNI request the agent forwards is answered before
   * its own deadline. A deadline that passes mid-apply does not stop the apply (the manager finishes it).
   */
  managerCallTimeoutMs: 15_000,
  /**
   * Split mode: the agent's connection to the manager is checked with an HTTP/2 PING after this long without
   * an answer (a call waiting, or the first call after an idle spell); no reply within managerPingTimeoutMs
   * drops it and the next call connects anew. Finds a manager that vanished without closing the connection
   * (host down, a network partition) in seconds instead of one call deadline after another.
   */
  managerPingIntervalMs: 10_000,
  managerPingTimeoutMs: 5_000,
  /** Split mode: the largest data-plane API message either side reads (a full resync of 10,000 services is ~2 MB). */
  managerMaxMessageBytes: 16 * 1024 * 1024,
} as const;

/** The manager's TLS server name (see DEFAULTS.managerServerName). */
export const DEFAULT_SERVER_NAME = DEFAULTS.managerServerName;
