// The objects bench/policy.ts enforces, as Kubernetes would hold them: one namespace, a client and a server pod,
// and N NetworkPolicies selecting them. The same objects go to patu (as a PolicyState, through its policy
// engine) and to kube-router (written to the apiserver), so both enforce exactly the same thing.
//
// With N > 0: the two last policies (by name, so they sort last in any by-name rule order) allow the client to
// reach the server on the bench's ports (egress on the client, ingress on the server); the N - 2 others are
// fillers that select the same pods and allow other peers on other ports: each one a podSelector peer with a
// label no pod carries and an ipBlock of its own (/30 with an except), on its own port, alternately as the
// server's ingress and the client's egress. None of them allows the bench's traffic, so every one is state the
// enforcer holds and (for a rule-list enforcer) walks, and the allowing rule is the last one.
export const BENCH_NS = 'patu-bench-pol';
export const SERVER_PORTS = { rr: 11111, iperf: 5201, sink: 8080 } as const;
/** A port the server listens on that no policy allows: the enforcement check connects there and must fail. */
export const DENIED_PORT = 8081;

export interface BenchPod {
  name: string;
  ip: string;
  labels: Record<string, string>;
  ports: { name: string; containerPort: number; protocol: 'TCP' }[];
}

export function benchPods(clientIp: string, serverIp: string): BenchPod[] {
  return [
    { name: 'client', ip: clientIp, labels: { app: 'bench-client', bench: 'policy' }, ports: [] },
    {
      name: 'server', ip: serverIp, labels: { app: 'bench-server', bench: 'policy' },
      ports: [
        { name: 'rr', containerPort: SERVER_PORTS.rr, protocol: 'TCP' },
        { name: 'iperf', containerPort: SERVER_PORTS.iperf, protocol: 'TCP' },
        { name: 'sink', containerPort: SERVER_PORTS.sink, protocol: 'TCP' },
        { name: 'closed', containerPort: DENIED_PORT, protocol: 'TCP' },
      ],
    },
  ];
}

const allowedPorts = Object.values(SERVER_PORTS).map((port) => ({ protocol: 'TCP' as const, port }));

/** N NetworkPolicies (networking.k8s.io/v1 objects, no status). */
export function benchPolicies(n: number): any[] {
  const out: any[] = [];
  const meta = (name: string) => ({ namespace: BENCH_NS, name });
  const server = { matchLabels: { app: 'bench-server' } };
  const client = { matchLabels: { app: 'bench-client' } };
  for (let i = 0; i < Math.max(0, n - 2); i++) {
    // 10.210.0.0/16 in /30s: 16,384 fillers at most; nothing routes there.
    const base = `10.210.${(i >> 6) & 255}.${(i & 63) * 4}`;
    const peers = [
      { podSelector: { matchLabels: { peer: `p${i}` } } },
      { ipBlock: { cidr: `${base}/30`, except: [`${base.replace(/\d+$/, (d) => String(Number(d) + 3))}/32`] } },
    ];
    const ports = [{ protocol: 'TCP' as const, port: 20000 + i }];
    out.push(i % 2 === 0
      ? { apiVersion: 'networking.k8s.io/v1', kind: 'NetworkPolicy', metadata: meta(`filler-${String(i).padStart(5, '0')}`), spec: { podSelector: server, policyTypes: ['Ingress'], ingress: [{ from: peers, ports }] } }
      : { apiVersion: 'networking.k8s.io/v1', kind: 'NetworkPolicy', metadata: meta(`filler-${String(i).padStart(5, '0')}`), spec: { podSelector: client, policyTypes: ['Egress'], egress: [{ to: peers, ports }] } });
  }
  if (n >= 1) out.push({ apiVersion: 'networking.k8s.io/v1', kind: 'NetworkPolicy', metadata: meta('zz-allow-server-ingress'), spec: { podSelector: server, policyTypes: ['Ingress'], ingress: [{ from: [{ podSelector: client }], ports: allowedPorts }] } });
  if (n >= 2) out.push({ apiVersion: 'networking.k8s.io/v1', kind: 'NetworkPolicy', metadata: meta('zz-allow-client-egress'), spec: { podSelector: client, policyTypes: ['Egress'], egress: [{ to: [{ podSelector: server }], ports: allowedPorts }] } });
  return out;
}

export const benchNamespace = () => ({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: BENCH_NS, labels: { 'kubernetes.io/metadata.name': BENCH_NS, bench: 'policy' } } });
