// Which Kubernetes pod a CNI request is for, and the addresses a successful ADD gave it:
// the kubelet (through containerd or CRI-O) passes K8S_POD_NAMESPACE and K8S_POD_NAME in
// CNI_ARGS, and the ADD result lists the addresses. Used by the agent to put a new pod
// under its network policies before the ADD is answered (src/k8s/policy-source.ts).
import { isIPv4 } from '../net/cidr.js';

export interface CniPod {
  command: 'ADD' | 'DEL';
  namespace: string;
  name: string;
  /** ADD: the IPv4 addresses of the result (without prefix length); DEL: empty. */
  ips: string[];
  /** K8S_POD_UID when the runtime passed it (containerd and CRI-O do). */
  uid?: string;
  /** CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME: the sandbox (pod network configuration needs it). */
  containerId: string;
  netns: string;
  ifname: string;
}

/** CNI_ARGS "K=V;K2=V2" read leniently (the plugin validates it; this only looks for two keys). */
function cniArgs(raw: string | undefined): Map<string, string> {
  const out = new Map<string, string>();
  for (const pair of (raw ?? '').split(';')) {
    const eq = pair.indexOf('=');
    if (eq > 0) out.set(pair.slice(0, eq), pair.slice(eq + 1));
  }
  return out;
}

/** The pod of a successful ADD or DEL, or undefined (another command, not a Kubernetes pod, no address). */
export function cniPodOf(env: Record<string, string | undefined>, stdout: string): CniPod | undefined {
  const command = env.CNI_COMMAND;
  if (command !== 'ADD' && command !== 'DEL') return undefined;
  const args = cniArgs(env.CNI_ARGS);
  const namespace = args.get('K8S_POD_NAMESPACE');
  const name = args.get('K8S_POD_NAME');
  if (!namespace || !name) return undefined;
  const uid = args.get('K8S_POD_UID');
  const sandbox = { ...(uid ? { uid } : {}), containerId: env.CNI_CONTAINERID ?? '', netns: env.CNI_NETNS ?? '', ifname: env.CNI_IFNAME ?? '' };
  if (command === 'DEL') return { command, namespace, name, ips: [], ...sandbox };
  let result: { ips?: { address?: unknown }[] };
  try {
    result = JSON.parse(stdout) as typeof result;
  } catch {
    return undefined;
  }
  const ips: string[] = [];
  for (const ip of Array.isArray(result?.ips) ? result.ips : []) {
    const addr = typeof ip?.address === 'string' ? ip.address.split('/')[0] : undefined;
    if (isIPv4(addr) && !ips.includes(addr)) ips.push(addr);
  }
  return ips.length ? { command, namespace, name, ips, ...sandbox } : undefined;
}
