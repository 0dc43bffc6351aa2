// The e2e suites' Service client: a pod that fetches a Service's page every 50 ms and logs
// one line per attempt ("ok N <answer>" / "fail N <error>"), so a test counts failed
// connects across scaling and agent restarts from `kubectl logs` (the pod never restarts).
// busybox wget's own -T crashes (busybox 1.35), so timeout(1) bounds each attempt.
// WEB_SERVICE_HOST/PORT come from kubelet: create the Service before the client.
import { TEST_IMAGE, type TestCluster } from './k8s-cluster.js';

/** The client pod for the Service `web` (its WEB_SERVICE_HOST/PORT environment). */
export function serviceClientPod(namespace: string, annotations?: Record<string, string>): object {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name: 'client', namespace, ...(annotations ? { annotations } : {}) },
    spec: {
      terminationGracePeriodSeconds: 1,
      containers: [{
        name: 'client',
        image: TEST_IMAGE,
        imagePullPolicy: 'Never',
        command: ['sh', '-c', 'i=0; while true; do i=$((i+1)); r=$(timeout 3 wget -q -O - "http://$WEB_SERVICE_HOST:$WEB_SERVICE_PORT/" 2>&1) && echo "ok $i $r" || echo "fail $i $r"; sleep 0.05; done'],
      }],
    },
  };
}

export interface Attempt { ok: boolean; n: number; what: string }

/** The client pod's attempts, read back from its log. */
export class ServiceClientLog {
  constructor(private readonly cluster: TestCluster, private readonly namespace: string) {}

  attempts(): Attempt[] {
    const r = this.cluster.kubectl(['logs', '-n', this.namespace, 'client']);
    if (!r.ok) throw new Error(r.detail);
    return r.stdout.split('\n').flatMap((l) => {
      const m = /^(ok|fail) (\d+) ?(.*)$/.exec(l);
      return m ? [{ ok: m[1] === 'ok', n: Number(m[2]), what: m[3]!.trim() }] : [];
    });
  }

  /** Failed attempts after attempt `since`. */
  failures(since: number): Attempt[] {
    return this.attempts().filter((a) => a.n > since && !a.ok);
  }

  lastAttempt(): number {
    return this.attempts().at(-1)?.n ?? 0;
  }

  /** Successful attempts after `since`, per answer (the answering pod's name). */
  byBackend(since: number): Record<string, number> {
    const c: Record<string, number> = {};
    for (const a of this.attempts()) if (a.n > since && a.ok) c[a.what] = (c[a.what] ?? 0) + 1;
    return c;
  }
}
