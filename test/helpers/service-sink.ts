// The service sink an in-process integration test hands to K8sSource, in either mode:
//   - default: the ServiceLb itself (the single process);
//   - PATU_TEST_SPLIT=1: the agent's side of the split, whole: a DataplaneMirror whose
//     Dataplane is the real gRPC client over mutual TLS (unix socket, `patu certs generate`)
//     to the real server, with LocalDataplane (the manager's implementation, its limits
//     checked) over that same ServiceLb behind it.
// Either way the test reads the maps through `lb` and calls settle() before it looks: in
// split mode the sink returns before the manager has applied.
import { join } from 'node:path';
import { ServiceLb } from '../../src/dataplane/service-lb.js';
import type { ServiceSink } from '../../src/k8s/source.js';
import { SPLIT, testCerts } from './agent-proc.js';

export interface TestServiceSink {
  readonly split: boolean;
  readonly sink: ServiceSink;
  readonly lb: ServiceLb;
  /** Split: the manager's answers (map operations per push), in order. */
  readonly answers: { mapOps: number; full: boolean }[];
  /** Resolves once everything given to the sink is in the maps. */
  settle(): Promise<void>;
  close(): Promise<void>;
}

let sinks = 0;

export async function openServiceSink(o: { pinRoot: string; dir: string; clusterCidrs?: string[]; serviceCidrs?: string[]; split?: boolean }): Promise<TestServiceSink> {
  const lb = ServiceLb.open({ pinRoot: o.pinRoot });
  const answers: { mapOps: number; full: boolean }[] = [];
  if (!(o.split ?? SPLIT)) {
    let closed = false;
    return { split: false, sink: lb, lb, answers, settle: async () => {}, close: async () => { if (!closed) lb.close(); closed = true; } };
  }
  const quiet = { debug() {}, info() {}, warn() {}, error() {} };
  const { LocalDataplane } = await import('../../src/dataplane/local.js');
  const { Limits, defaultLimits } = await import('../../src/dataplane/limits.js');
  const { startDataplaneServer } = await import('../../src/rpc/server.js');
  const { connectDataplane } = await import('../../src/rpc/client.js');
  const { loadTlsDir, serverTlsOptions, clientTlsOptions } = await import('../../src/rpc/tls.js');
  const { DataplaneMirror } = await import('../../src/agent/mirror.js');
  const { DEFAULTS } = await import('../../src/defaults.js');
  const limits = new Limits(defaultLimits({
    pinRoot: o.pinRoot,
    // Host-network endpoints (default/kubernetes: the apiserver's own address) are the manager's
    // node addresses in production; this data plane tracks none, so any backend address is let in.
    backendCidrs: ['0.0.0.0/0'],
    ...(o.clusterCidrs ? { clusterCidrs: o.clusterCidrs } : {}),
    ...(o.serviceCidrs ? { serviceCidrs: o.serviceCidrs } : {}),
  }));
  const unavailable = (what: string) => () => { throw new Error(`${what}: not part of this test's data plane`); };
  const local = new LocalDataplane({
    log: quiet, limits, pinRoot: o.pinRoot, lb, serviceCidr: '',
    cni: () => undefined,
    accel: unavailable('acceleration'),
    policy: unavailable('policy'),
    policyOpen: () => false,
    policyOff: () => 0,
    nodeAddresses: () => [],
    conflist: { dir: '', clusterCidr: (o.clusterCidrs ?? [DEFAULTS.clusterCIDR])[0]! },
    version: 'test',
  });
  const tls = testCerts(o.dir);
  const server = await startDataplaneServer({ listen: `unix://${join(o.dir, `sink-${process.pid}-${++sinks}.sock`)}`, tls: serverTlsOptions(loadTlsDir(tls, 'server')), impl: local, log: quiet });
  const client = connectDataplane({ address: server.address, tls: clientTlsOptions(loadTlsDir(tls, 'client'), DEFAULTS.managerServerName), log: quiet });
  const mirror = new DataplaneMirror({ dataplane: client, heartbeatMs: 0, onServicesApplied: (r, full) => void answers.push({ mapOps: r.mapOps, full }) });
  let closed = false;
  return {
    split: true,
    sink: mirror.services,
    lb,
    answers,
    settle: async () => {
      await new Promise((r) => setImmediate(r));
      await mirror.idle();
    },
    close: async () => {
      if (closed) return;
      closed = true;
      await mirror.close();
      await client.close();
      await server.close();
      lb.close();
    },
  };
}
