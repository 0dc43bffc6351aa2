// The patu command line. Each subcommand loads its module only when it runs, so
// `patu --help` and quick commands stay quick.
import { Command, Option } from 'commander';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { patuHome } from '../home.js';
import { DEFAULTS } from '../defaults.js';
import { libbpfLog } from '../kernel/bpf/log.js';
import { messageOf } from '../errors.js';

function packageVersion(): string {
  const pkg = JSON.parse(readFileSync(join(patuHome(), 'package.json'), 'utf8'));
  return String(pkg.version);
}

/**
 * The process environment is read here, at the top, and handed down as values.
 * PATU_BPFFS_MOUNT=never (the DaemonSet): never mount bpffs, which in a container
 * would be the container's own. PATU_DEBUG: `accel on` says what it did on stderr.
 */
function fromEnv(env: NodeJS.ProcessEnv = process.env): { mountBpffs: boolean; debug?: (msg: string) => void } {
  return {
    mountBpffs: env.PATU_BPFFS_MOUNT !== 'never',
    ...(env.PATU_DEBUG ? { debug: (msg: string) => { process.stderr.write(`patu: ${msg}\n`); } } : {}),
  };
}

/**
 * The node-routing options (docs/multinode.md), the same on `patu agent` and `patu manager`:
 * whichever process owns the kernel side programs the routes to the other nodes' pods.
 */
function nodeRoutingOptions(): Option[] {
  const int = (name: string, lo: number, hi: number) => (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < lo || n > hi) throw new Error(`${name}: want ${lo} to ${hi}, got '${v}'`);
    return n;
  };
  return [
    new Option('--nodes-file <path>', 'route to the other nodes\' pods from this nodes file (YAML/JSON: nodes: [{name, podCIDR, address}], this node included; watched, a bad edit keeps the last good routes; docs/multinode.md)'),
    new Option('--node-routing <mode>', 'with --nodes-file or --kubernetes (the Node objects): routes to the other nodes\' pods: auto (direct when the node is on a shared link, else VXLAN), direct, vxlan, or off (--kubernetes: something else routes between nodes)').choices(['auto', 'direct', 'vxlan', 'off']).default('auto'),
    new Option('--vxlan-vni <n>', `VXLAN network identifier of patu's vxlan device (default ${DEFAULTS.vxlanVni})`).argParser(int('--vxlan-vni', 1, 0xffffff)),
    new Option('--vxlan-port <port>', `UDP port of patu's VXLAN (default ${DEFAULTS.vxlanPort})`).argParser(int('--vxlan-port', 1, 65535)),
  ];
}

export function buildProgram(): Command {
  const program = new Command('patu')
    .description(
      'Lightweight eBPF networking for Kubernetes at the edge.\n\n' +
        'As a CNI plugin (CNI_COMMAND set) patu gives each pod a veth on a host bridge, an address from its own IPAM, ' +
        'routes and masquerade. As a CLI it shows and steers what it manages.',
    )
    .version(packageVersion(), '-V, --version')
    .showHelpAfterError('(run with --help for usage)')
    .addHelpText(
      'after',
      '\nExamples:\n' +
        '  patu demo                 build a small edge node from namespaces, send traffic, measure, clean up\n' +
        '  patu status               programs, maps, pins and pods that patu manages\n' +
        '  patu status --json        the same, for scripts\n' +
        '  patu accel status         socket acceleration state and accelerated sockets\n' +
        '  patu monitor --pod ns/web NetworkPolicy drops to and from one pod, live\n' +
        '  patu services apply f.yaml  program ClusterIP services from a file once\n' +
        '  patu policy apply p.yaml    enforce the NetworkPolicies of a file (Namespace, NetworkPolicy, Pod objects)\n' +
        '  patu policy --pod ns/name   the rules programmed for one pod\n',
    );

  const pinRoot = new Option('--pin-root <dir>', 'bpffs directory holding patu pins').default(DEFAULTS.pinRoot);
  const dataDir = new Option('--data-dir <dir>', 'IPAM state directory').default(DEFAULTS.dataDir);
  const bridge = new Option('--bridge <name>', 'host bridge of the patu network').default(DEFAULTS.bridge);

  program
    .command('status')
    .description('show the eBPF programs, maps, pins and pods that patu manages')
    .option('--json', 'print JSON instead of tables')
    .addOption(pinRoot)
    .addOption(dataDir)
    .addOption(bridge)
    .action(async (opts) => {
      const { statusCommand } = await import('./status-command.js');
      await statusCommand(opts);
    });

  program
    .command('monitor')
    .description('stream NetworkPolicy drops live (from the patu_pol_events ring buffer): time, source, destination, port, protocol, direction, deciding policy')
    .option('--pod <ns/name>', 'only events of this pod (as source, destination or the enforcing endpoint)')
    .option('--allows', 'also show new flows admitted, with the policy that admitted them')
    .option('--json', 'one JSON object per event')
    .addOption(pinRoot)
    .addHelpText('after', '\nThe tc programs submit events only while a monitor reads (patu_pol_cfg.monitor); it is cleared on exit (Ctrl-C).')
    .action(async (opts) => {
      if (opts.pod !== undefined && !/^[^/\s]+\/[^/\s]+$/.test(opts.pod)) throw new Error(`--pod ${JSON.stringify(opts.pod)}: expected namespace/name`);
      const { monitorCommand } = await import('./monitor-command.js');
      process.exitCode = await monitorCommand({ pinRoot: opts.pinRoot, ...(opts.pod ? { pod: opts.pod } : {}), allows: Boolean(opts.allows), json: Boolean(opts.json) });
    });

  program
    .command('demo')
    .description('build a small edge node out of network namespaces with the patu CNI, send traffic, print what it measured, clean up')
    .option('--keep', 'leave the demo namespaces running for a look around (clean up later with `patu demo --cleanup`)')
    .option('--cleanup', 'remove what an earlier `patu demo --keep` left')
    .option('--json', 'print the measurements as JSON at the end')
    .action(async (opts) => {
      const { demoCommand } = await import('./demo.js');
      await demoCommand(opts);
    });

  const accel = program
    .command('accel')
    .description('same-node socket acceleration: TCP between two local pods goes socket to socket (sockops + sk_msg)')
    .addHelpText(
      'after',
      '\nAcceleration is node-wide; a pod opts out with CNI_ARGS=PATU_ACCEL=off or `"accel": false` in the netconf.\n' +
        'Redirected bytes skip tc, XDP and netfilter on the veths: see README "Socket acceleration".',
    );
  for (const action of ['on', 'off', 'status'] as const) {
    const cmd = accel.command(action);
    if (action === 'on') cmd.option('--reload', 'load the programs from the current build even if pinned ones exist (upgrade in place; connections survive)');
    cmd
      .description(
        action === 'on'
          ? 'load and attach the programs (idempotent; pinned, so restarts keep established connections)'
          : action === 'off'
            ? 'stop accelerating: detach sock_ops and sk_msg; the pod registry is kept'
            : 'show the switch, the attachment, accelerated sockets and per-pod flags',
      )
      .addOption(pinRoot)
      .option('--cgroup <dir>', 'cgroup2 directory to attach to (default: the root of the cgroup2 hierarchy, found in /proc/self/mountinfo: every pod)')
      .option('--json', 'print JSON')
      .action(async (opts) => {
        const { accelCommand } = await import('./accel-command.js');
        const env = fromEnv();
        await accelCommand(action, {
          pinRoot: opts.pinRoot, cgroup: opts.cgroup, json: opts.json, reload: Boolean(opts.reload), mountBpffs: env.mountBpffs, ...(env.debug ? { log: env.debug } : {}),
        });
      });
  }

  // `patu services` alone lists, like `patu services list`.
  const listServices = async (opts: { pinRoot: string; json?: boolean }) => {
    const { servicesList } = await import('./services.js');
    process.exitCode = await servicesList({ pinRoot: opts.pinRoot, json: Boolean(opts.json) });
  };
  const services = program
    .command('services')
    .description('ClusterIP services balanced at connect() time in eBPF (no per-packet NAT)')
    .addOption(pinRoot)
    .option('--json', 'print JSON')
    .action(listServices);
  // --pin-root and --json belong to `services` alone: commander lets a parent's options
  // appear after the subcommand too, so a copy on the subcommand would only ever see
  // its default (and `apply --pin-root X` would program the production pins).
  services
    .command('list')
    .description('services and backends as programmed in the kernel maps (--pin-root, --json: see above)')
    .action(() => listServices(services.opts()));
  services
    .command('apply <file>')
    .description('program the services of FILE (YAML or JSON, or a directory of them) once and exit; the file is the whole truth')
    .option('--cgroup <dir>', 'cgroup2 directory to attach to if not attached yet (default: the root of the cgroup2 hierarchy, found in /proc/self/mountinfo)')
    .action(async (file, opts) => {
      const { servicesApply } = await import('./services.js');
      const { pinRoot: root, json } = services.opts<{ pinRoot: string; json?: boolean }>();
      process.exitCode = await servicesApply(file, { pinRoot: root, cgroupPath: opts.cgroup, json: Boolean(json), mountBpffs: fromEnv().mountBpffs });
    });

  // `patu policy` alone lists, like `patu services`; --pin-root/--json belong to `policy` alone (see services).
  const policy = program
    .command('policy')
    .description('NetworkPolicy as enforced in eBPF on the pod veths: the rules as programmed, read back from the maps')
    .addOption(pinRoot)
    .option('--json', 'print JSON')
    .option('--pod <ns/name>', 'only this pod')
    .addOption(bridge)
    .action(async (opts) => {
      const { policyList } = await import('./policy-command.js');
      process.exitCode = await policyList({ pinRoot: opts.pinRoot, json: Boolean(opts.json), ...(opts.pod ? { pod: opts.pod } : {}) });
    });
  policy
    .command('apply <file>')
    .description('program the NetworkPolicies of FILE once and exit: a YAML stream of Namespace, NetworkPolicy and Pod objects (metadata.labels, spec.containers[].ports, status.podIP); the file is the whole truth')
    .action(async (file) => {
      const { policyApply } = await import('./policy-command.js');
      const { pinRoot: root, json } = policy.opts<{ pinRoot: string; json?: boolean }>();
      const { bridge: br } = policy.opts<{ bridge: string }>();
      process.exitCode = await policyApply(file, { pinRoot: root, json: Boolean(json), bridge: br, mountBpffs: fromEnv().mountBpffs });
    });

  const agentCmd = program
    .command('agent')
    .description('run the node agent: serves CNI requests for bin/patu over a unix socket (pod events then skip a Node start)')
    .option('--cni-socket <path>', 'unix socket for CNI requests', DEFAULTS.agentSocket)
    .option('--accel', 'switch on same-node socket acceleration at start')
    .option('--policy-file <path>', 'watch this policy file (a YAML stream of Namespace, NetworkPolicy, Pod) and enforce its NetworkPolicies on the pod veths; a bad edit keeps the last good state')
    .option('--services-file <path>', 'watch this services file or directory (YAML/JSON) and program ClusterIP services from it (an empty file is an error: write "services: []")')
    .option('--pod-mtu <mtu>', 'with --kubernetes: the MTU the conflist gives pods (\'\' or absent: the uplink\'s minus 50 when node routing may use VXLAN, so pods fit the tunnel; else 1500)', (v: string) => {
      if (v.trim() === '') return undefined;
      const n = Number(v);
      if (!Number.isInteger(n) || n < 576 || n > 65535) throw new Error(`--pod-mtu: want 576 to 65535, got '${v}'`);
      return n;
    })
    .option('--cgroup <dir>', 'cgroup2 directory for the cgroup eBPF programs (default: the root of the cgroup2 hierarchy, found in /proc/self/mountinfo)')
    .option('--cgroup-fs <dir>', 'look for the cgroup2 root only at or below DIR; in a container: where the host\'s /sys/fs/cgroup is mounted (it is checked to be the host\'s root, not the container\'s own)')
    .option('--kubernetes', 'take services, endpoints, pod acceleration opt-outs and the pod subnet from the Kubernetes API')
    .option('--kubeconfig <file>', 'with --kubernetes outside a pod: the kubeconfig to use (in a pod the ServiceAccount is used)')
    .option('--node-name <name>', 'with --kubernetes or --nodes-file: this node\'s name (default: $NODE_NAME, else the hostname)')
    .option('--cluster-cidr <cidr>', 'with --kubernetes: pod addresses of the cluster; its first /24 is the pod subnet when the Node has no spec.podCIDR', DEFAULTS.clusterCIDR)
    .option('--service-cidr <cidr>', `the cluster's service CIDR (IPv4, /8 or longer): a connect or send to an address in it that no service port answers is refused with ECONNREFUSED instead of leaving the node ('' = none; default with --kubernetes: ${DEFAULTS.serviceCIDR}, with --services-file: none)`)
    .option('--cni-conf-dir <dir>', `with --kubernetes: where to write ${DEFAULTS.conflistName} (empty: do not write)`, DEFAULTS.cniConfDir)
    .option('--bridge <name>', 'with --kubernetes: the host bridge named in the conflist; with --policy-file: the bridge whose pod veths get the policy programs at start', DEFAULTS.bridge)
    .option('--data-dir <dir>', 'the IPAM state directory: hostPort records are read from <dir>/_hostports; with --kubernetes also the one named in the conflist', DEFAULTS.dataDir)
    .option('--hostports', 'serve pod hostPorts even without --services-file or --kubernetes (which switch it on)')
    .option('--no-hostports', 'do not serve pod hostPorts (the CNI plugin still records them and refuses conflicts)')
    .option('--no-masquerade', 'with --kubernetes: the conflist does not masquerade traffic leaving the cluster CIDR')
    .option('--network-policy [on|off]', 'with --kubernetes: enforce NetworkPolicies (watches NetworkPolicies, Namespaces and every Pod of the cluster). Default: on', (v: string) => {
      if (v === 'on' || v === 'true') return true;
      if (v === 'off' || v === 'false') return false;
      throw new Error(`--network-policy: want on or off, got '${v}'`);
    })
    .option('--pod-networks [on|off]', 'with --kubernetes: give pods extra interfaces from NodeNetworks and PodNetworkConfigs (network.patu.dev; docs/podnet.md): watches both kinds, Namespaces and this node\'s Pods, and makes a new pod\'s interfaces during its CNI ADD. Not in split mode yet. Default: on', (v: string) => {
      if (v === 'on' || v === 'true') return true;
      if (v === 'off' || v === 'false') return false;
      throw new Error(`--pod-networks: want on or off, got '${v}'`);
    })
    .option('--request-timeout <ms>', 'deadline of one CNI request: a request still running then is answered with code 11 and abandoned', (v: string) => {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 100 || n > 55_000) throw new Error(`--request-timeout: want whole milliseconds from 100 to 55000 (below bin/patu's 60 s), got '${v}'`);
      return n;
    }, DEFAULTS.agentRequestTimeoutMs)
    .option('--metrics-addr <host:port>', `/metrics, /healthz, /readyz (default with --kubernetes: ${DEFAULTS.metricsAddr}; otherwise off)`)
    .option('--nodeport-devices <list>', 'comma-separated uplinks (names, or prefixes ending in \'*\') where packets from outside the node are translated to services by tc: NodePorts, externalIPs, LoadBalancer IPs (links that appear later and match are attached too). Default: none (off)', (v: string) => v.split(','))
    .option('--manager <address>', 'split mode: the data plane is `patu manager`\'s at unix:///path or tcp://host:port; this agent serves no CNI socket and touches no kernel state (no root needed), it sends what its sources want over gRPC with mutual TLS')
    .option('--tls-dir <dir>', 'with --manager: ca.crt + client.crt/client.key (patu certs generate) or a cert-manager Secret\'s ca.crt/tls.crt/tls.key; watched for rotation')
    .option('--server-name <name>', `with --manager: the name the manager's certificate must carry (default ${DEFAULTS.managerServerName})`)
    .addOption(pinRoot)
    .option('--log-level <level>', 'trace, debug, info, warn or error', DEFAULTS.logLevel)
    .addHelpText('after', '\nLogs are JSON lines on stdout. Stop with SIGTERM: pinned eBPF state stays, so traffic keeps flowing.')
    .action(async (opts, cmd: Command) => {
      if (opts.manager) {
        if (!opts.tlsDir) throw new Error('agent: --manager needs --tls-dir (the client certificate, key and CA: patu certs generate)');
        // What acts on the kernel or the host's files belongs to the manager: named, not silently ignored.
        const kernelFlags: [string, string][] = [['nodeportDevices', '--nodeport-devices'], ['cgroup', '--cgroup'], ['cgroupFs', '--cgroup-fs'], ['cniSocket', '--cni-socket'],
          ['pinRoot', '--pin-root'], ['cniConfDir', '--cni-conf-dir'], ['bridge', '--bridge'], ['dataDir', '--data-dir'], ['hostports', '--hostports/--no-hostports'],
          ['masquerade', '--no-masquerade'], ['requestTimeout', '--request-timeout']];
        const given = kernelFlags.filter(([k]) => cmd.getOptionValueSource(k) === 'cli').map(([, f]) => f);
        if (given.length) throw new Error(`agent --manager: ${given.join(', ')} ${given.length > 1 ? 'belong' : 'belongs'} to the manager (the privileged side owns the kernel, the CNI socket and the host's files): pass ${given.length > 1 ? 'them' : 'it'} to \`patu manager\``);
      } else if (opts.tlsDir || opts.serverName) {
        throw new Error('agent: --tls-dir and --server-name are for split mode: add --manager ADDRESS');
      }
      const { runAgent } = await import('../agent/agent.js');
      await runAgent({
        cniSocket: opts.cniSocket,
        logLevel: opts.logLevel,
        mountBpffs: fromEnv().mountBpffs,
        pinRoot: opts.pinRoot,
        ...(opts.cgroup ? { cgroup: opts.cgroup } : {}),
        ...(opts.cgroupFs ? { cgroupFs: opts.cgroupFs } : {}),
        accel: Boolean(opts.accel),
        ...(opts.servicesFile ? { servicesFile: opts.servicesFile } : {}),
        ...(opts.nodesFile ? { nodesFile: opts.nodesFile, ...(opts.nodeName ? { nodeName: opts.nodeName } : {}) } : {}),
        ...(opts.podMtu !== undefined ? { podMtu: opts.podMtu } : {}),
        nodeRouting: { mode: opts.nodeRouting, ...(opts.vxlanVni ? { vni: opts.vxlanVni } : {}), ...(opts.vxlanPort ? { port: opts.vxlanPort } : {}) },
        ...(opts.policyFile ? { policyFile: opts.policyFile, policyBridge: opts.bridge } : {}),
        ...(opts.kubernetes
          ? {
            kubernetes: {
              ...(opts.kubeconfig ? { kubeconfig: opts.kubeconfig } : {}),
              ...(opts.nodeName ? { nodeName: opts.nodeName } : {}),
              clusterCIDR: opts.clusterCidr,
              cniConfDir: opts.cniConfDir,
              bridge: opts.bridge,
              dataDir: opts.dataDir,
              masquerade: opts.masquerade !== false,
            },
          }
          : {}),
        ...(opts.metricsAddr ? { metricsAddr: opts.metricsAddr } : {}),
        ...(opts.serviceCidr !== undefined ? { serviceCidr: opts.serviceCidr } : {}),
        ...(opts.nodeportDevices ? { nodeportDevices: opts.nodeportDevices as string[] } : {}),
        // commander: --hostports true, --no-hostports false, neither undefined (the agent decides).
        ...(opts.hostports !== undefined ? { hostPorts: Boolean(opts.hostports) } : {}),
        dataDir: opts.dataDir,
        requestTimeoutMs: opts.requestTimeout,
        // commander: bare --network-policy is true, =on/=off parsed above, absent undefined (on with --kubernetes).
        ...(opts.networkPolicy !== undefined ? { networkPolicy: Boolean(opts.networkPolicy) } : {}),
        ...(opts.podNetworks !== undefined ? { podNetworks: Boolean(opts.podNetworks) } : {}),
        ...(opts.manager ? { manager: { address: opts.manager, tlsDir: opts.tlsDir, ...(opts.serverName ? { serverName: opts.serverName } : {}) } } : {}),
      });
    });
  for (const o of nodeRoutingOptions()) agentCmd.addOption(o);

  const cidrList = (flag: string) => (v: string, prev: string[] | undefined): string[] => {
    const add = v.split(',').map((x) => x.trim()).filter((x) => x !== '');
    if (add.length === 0) throw new Error(`${flag}: want one or more CIDRs (comma-separated or repeated), got '${v}'`);
    return [...(prev ?? []), ...add];
  };
  const managerCmd = program
    .command('manager')
    .description('split mode, the privileged half: own the node\'s data plane (eBPF programs and maps, pod links, the CNI socket) and serve the data-plane API over gRPC with mutual TLS to an unprivileged `patu agent --manager`')
    .requiredOption('--listen <address>', 'where the API is served: unix:///run/patu/manager.sock or tcp://ADDR:PORT (mutual TLS on both)')
    .requiredOption('--tls-dir <dir>', 'the manager\'s TLS files: ca.crt, server.crt, server.key (patu certs generate), or a cert-manager Secret\'s ca.crt, tls.crt, tls.key; re-read when they change')
    .option('--service-cidr <cidr>', `service CIDR(s): every ClusterIP the agent programs must lie in one (the first is also refused when unanswered). Repeat or comma-separate. Default ${DEFAULTS.serviceCIDR}`, cidrList('--service-cidr'))
    .option('--cluster-cidr <cidr>', `pod addresses of the cluster: backends, pod flags and pod subnets must lie in one. Repeat or comma-separate. Default ${DEFAULTS.clusterCIDR}`, cidrList('--cluster-cidr'))
    .option('--external-cidr <cidr>', 'ranges externalIPs and LoadBalancer IPs may use as service addresses (default none: such services are refused, since an entry for any address captures every connection to it)', cidrList('--external-cidr'))
    .option('--backend-cidr <cidr>', 'backends allowed outside the cluster CIDRs besides the node\'s own addresses: the node network, for host-network endpoints of other nodes (the apiserver behind `kubernetes`)', cidrList('--backend-cidr'))
    .addOption(new Option('--netns-dirs <dirs>', 'comma-separated directories a CNI netns over the API must lie in (resolved, symlinks followed; /proc/<pid>/ns/net never)')
      .argParser((v: string) => v.split(',').map((x) => x.trim()).filter((x) => x !== ''))
      .default(['/run/netns', '/var/run/netns'], '/run/netns,/var/run/netns'))
    .addOption(new Option('--node-port-range <from-to>', 'ports a NodePort (every node address) entry may use')
      .argParser((v: string) => {
        const m = /^(\d+)-(\d+)$/.exec(v.trim());
        if (!m) throw new Error(`--node-port-range: want FROM-TO, got '${v}'`);
        return [Number(m[1]), Number(m[2])] as [number, number];
      })
      .default([30000, 32767], '30000-32767'))
    .option('--cni-socket <path>', 'unix socket bin/patu forwards CNI requests to (the manager answers the runtime in split mode)', DEFAULTS.agentSocket)
    .option('--cni-conf-dir <dir>', `where a pod subnet from the agent writes ${DEFAULTS.conflistName} (empty: never)`, DEFAULTS.cniConfDir)
    .option('--bridge <name>', 'the host bridge: in the conflist, and the only one a CNI call over the API may name', DEFAULTS.bridge)
    .option('--data-dir <dir>', 'the IPAM state directory (hostPort records in <dir>/_hostports); the only one a CNI call over the API may name', DEFAULTS.dataDir)
    .option('--no-masquerade', 'the conflist does not masquerade traffic leaving the cluster CIDR')
    .option('--cgroup <dir>', 'cgroup2 directory for the cgroup eBPF programs (default: the root of the cgroup2 hierarchy)')
    .option('--cgroup-fs <dir>', 'look for the cgroup2 root only at or below DIR (in a container: the host\'s /sys/fs/cgroup)')
    .option('--nodeport-devices <list>', 'comma-separated uplinks where packets from outside the node are translated to services by tc (default: none)', (v: string) => v.split(','))
    .option('--request-timeout <ms>', 'deadline of one CNI request', (v: string) => {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 100 || n > 55_000) throw new Error(`--request-timeout: want whole milliseconds from 100 to 55000, got '${v}'`);
      return n;
    }, DEFAULTS.agentRequestTimeoutMs)
    .option('--metrics-addr <host:port>', '/metrics, /healthz, /readyz (\'\' = off)', DEFAULTS.managerMetricsAddr)
    .addOption(pinRoot)
    .option('--log-level <level>', 'trace, debug, info, warn or error', DEFAULTS.logLevel)
    .addHelpText(
      'after',
      '\nSplit mode runs patu as two processes instead of one (the default `patu agent`):\n' +
        '  patu manager (root, privileged)   programs the kernel, answers the runtime\'s CNI requests,\n' +
        '                                    and checks every request against the limits above;\n' +
        '  patu agent --manager ADDR         watches Kubernetes (or local files) as a non-root user\n' +
        '    --tls-dir DIR                   with no capabilities and pushes the desired state here.\n' +
        'A compromised agent can then only ask for what the limits allow (README: threat model).\n' +
        'Certificates: patu certs generate --dir DIR. Stop with SIGTERM: pinned eBPF state stays,\n' +
        'and the last state the agent sent stays programmed if the agent goes away.\n\n' +
        'Example:\n' +
        '  patu certs generate --dir /etc/patu/tls\n' +
        '  patu manager --listen unix:///run/patu/manager.sock --tls-dir /etc/patu/tls\n' +
        '  patu agent --manager unix:///run/patu/manager.sock --tls-dir /etc/patu/tls --kubernetes\n',
    )
    .action(async (opts) => {
      const { runManager } = await import('../manager/manager.js');
      await runManager({
        listen: opts.listen,
        tlsDir: opts.tlsDir,
        logLevel: opts.logLevel,
        mountBpffs: fromEnv().mountBpffs,
        pinRoot: opts.pinRoot,
        cniSocket: opts.cniSocket,
        cniConfDir: opts.cniConfDir,
        serviceCidrs: opts.serviceCidr ?? [DEFAULTS.serviceCIDR],
        clusterCidrs: opts.clusterCidr ?? [DEFAULTS.clusterCIDR],
        externalCidrs: opts.externalCidr ?? [],
        backendCidrs: opts.backendCidr ?? [],
        netnsDirs: opts.netnsDirs,
        nodePortRange: opts.nodePortRange,
        bridge: opts.bridge,
        dataDir: opts.dataDir,
        masquerade: opts.masquerade !== false,
        ...(opts.cgroup ? { cgroup: opts.cgroup } : {}),
        ...(opts.cgroupFs ? { cgroupFs: opts.cgroupFs } : {}),
        ...(opts.nodeportDevices ? { nodeportDevices: opts.nodeportDevices as string[] } : {}),
        requestTimeoutMs: opts.requestTimeout,
        metricsAddr: opts.metricsAddr,
        version: packageVersion(),
      });
    });
  for (const o of nodeRoutingOptions()) managerCmd.addOption(o);

  const certs = program
    .command('certs')
    .description('certificates for split mode (patu manager + patu agent --manager): mutual TLS 1.3');
  const days = (name: string) => (v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1 || n > 36_500) throw new Error(`${name}: want whole days from 1 to 36500, got '${v}'`);
    return n;
  };
  certs
    .command('generate')
    .description('make a CA (ca.crt, ca.key), a server certificate for the manager (server.crt, server.key: serverAuth only) and a client certificate for the agent (client.crt, client.key: clientAuth only), ECDSA P-256; keys written 0600')
    .requiredOption('--dir <dir>', 'where to write them (created 0700 if missing)')
    .option('--days <n>', 'validity of the server and client certificates', days('--days'), 365)
    .option('--ca-days <n>', 'validity of a new CA', days('--ca-days'), 3650)
    .option('--server-name <name>', 'the name in the server certificate that the agent checks, whatever address it dials', DEFAULTS.managerServerName)
    .option('--san <name>', 'another server name: IP:<address> or DNS:<name> (a bare address is an IP); repeat for more', (v: string, prev: string[] | undefined) => [...(prev ?? []), ...v.split(',').filter((x) => x.trim() !== '')])
    .option('--force', 'replace files that are already there (without it nothing is written if any is)')
    .option('--keep-ca', 'sign with the ca.crt + ca.key already in --dir instead of making a new CA (rotation: with --force)')
    .option('--json', 'print what was written as JSON')
    .addHelpText(
      'after',
      '\nThe server certificate names --server-name, localhost, 127.0.0.1 and ::1, plus every --san.\n' +
        'The manager reads ca.crt + server.crt + server.key, the agent ca.crt + client.crt + client.key\n' +
        '(or, from a cert-manager Secret, ca.crt + tls.crt + tls.key). Both pick up new files without a restart.\n\n' +
        'Examples:\n' +
        '  patu certs generate --dir /etc/patu/tls\n' +
        '  patu certs generate --dir /etc/patu/tls --san IP:10.0.0.5 --san DNS:manager.example --days 90\n' +
        '  patu certs generate --dir /etc/patu/tls --keep-ca --force     # new leaves, same CA (rotation)\n',
    )
    .action(async (opts) => {
      const { certsGenerate } = await import('./certs-command.js');
      process.exitCode = await certsGenerate({ ...opts, san: opts.san ?? [] });
    });

  program
    .command('install')
    .description('install patu on this host: files under --prefix, the CNI binary and conflist, the systemd unit (recorded for uninstall)')
    .option('--flavour <name>', 'default CNI paths of: kubeadm (containerd/CRI-O), k3s, microshift, podman', 'kubeadm')
    .option('--cni-bin-dir <dir>', 'where the runtime looks for CNI plugins (default: the flavour\'s)')
    .option('--cni-conf-dir <dir>', 'where the runtime reads network configs (default: the flavour\'s)')
    .option('--prefix <dir>', 'where patu\'s own files go', DEFAULTS.prefix)
    .option('--root <dir>', 'install into a staging root instead of / (paths inside stay host paths)')
    .option('--state-dir <dir>', 'where the install manifest is kept', DEFAULTS.stateDir)
    .option('--symlink', 'development: make the prefix a symlink to this checkout instead of a copy')
    .option('--cni-only', 'no systemd unit (the Kubernetes DaemonSet\'s init container: the agent runs in the pod)')
    .option('--no-conflist', 'do not write 10-patu.conflist (the agent writes it with --kubernetes)')
    .option('--bundle-node', 'copy this node binary into <prefix>/node/bin, for hosts without Node.js 20 (the DaemonSet does this)')
    .option('--cluster-cidr <cidr>', 'pod addresses of the whole cluster (never masqueraded)', DEFAULTS.clusterCIDR)
    .option('--pod-cidr <cidr>', 'this node\'s pod subnet in the conflist (default: the first /24 of --cluster-cidr)')
    .option('--force', 'take over target files that exist but were not installed by patu')
    .option('--json', 'print the install manifest as JSON')
    .addHelpText('after', '\nIdempotent: running it again updates the files and keeps the manifest (<state-dir>/install.json) exact.\nThe agent is not started: systemctl enable --now patu-agent.service')
    .action(async (opts) => {
      const { installCommand } = await import('./install-command.js');
      process.exitCode = await installCommand(opts);
    });

  program
    .command('uninstall')
    .description('remove exactly what `patu install` recorded, then patu\'s own pins (never the rest of bpffs)')
    .option('--root <dir>', 'the staging root given to install (pins are then left alone unless --pin-root is given)')
    .option('--state-dir <dir>', 'where the install manifest is kept', DEFAULTS.stateDir)
    .option('--pin-root <dir>', `patu's pin directory to remove (default on a live host: ${DEFAULTS.pinRoot})`)
    .option('--no-pins', 'leave pinned eBPF state alone')
    .option('--json', 'print what was removed and kept as JSON')
    .action(async (opts) => {
      const { uninstallCommand } = await import('./install-command.js');
      process.exitCode = await uninstallCommand(opts);
    });

  return program;
}

export async function main(argv: string[]): Promise<void> {
  // libbpf's own warnings (PATU_BPF_DEBUG=1: all it says) go to stderr; the agent sends them to its log.
  libbpfLog.sink = (text) => { process.stderr.write(text); };
  libbpfLog.debug = process.env.PATU_BPF_DEBUG === '1';
  try {
    await buildProgram().parseAsync(argv);
  } catch (err) {
    process.stderr.write(`patu: ${messageOf(err)}\n`);
    process.exitCode = 1;
  }
}
