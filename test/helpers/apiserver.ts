// A bare kube-apiserver + etcd for integration tests: no kubelet, no controllers, no
// cluster. Both listen on free loopback ports (no lock needed: nothing fixed is bound) and
// keep their state in a temp dir removed by stop(). Authentication is a static token file
// (an admin in system:masters, plus whatever users a test asks for) and RBAC is on, so a
// test can check exactly what a set of permissions allows; ServiceAccount tokens work too
// (the service-account key is generated here), and so does impersonation.
//
// Binaries: kube-apiserver from K8S_BIN (test/helpers/k8s-cluster.ts: scripts/k8s builds
// it there), etcd from there or PATH, openssl from PATH. apiserverSkipReason() says which
// is missing; tests pass it as their `skip`.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'node:https';
import { setTimeout as sleep } from 'node:timers/promises';
import { K8S_BIN, freePort } from './k8s-cluster.js';

const which = (name: string): string | undefined => {
  if (existsSync(join(K8S_BIN, name))) return join(K8S_BIN, name);
  const r = spawnSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' });
  return r.status === 0 && r.stdout.trim() !== '' ? r.stdout.trim() : undefined;
};

/** Why a bare apiserver cannot start here, or undefined. */
export function apiserverSkipReason(): string | undefined {
  if (!existsSync(join(K8S_BIN, 'kube-apiserver'))) return `no kube-apiserver in ${K8S_BIN} (set PATU_K8S_BIN_DIR, or build it with scripts/k8s/build.sh)`;
  if (!which('etcd')) return `no etcd in ${K8S_BIN} or PATH (scripts/k8s/build.sh, or apt-get install etcd-server)`;
  if (!which('openssl')) return 'no openssl (for the service-account key)';
  return undefined;
}

export interface StaticUser {
  /** User name (as RBAC subjects name it). */
  name: string;
  groups?: string[];
}

export interface ApiResponse {
  status: number;
  // The apiserver's JSON (or its text, for /readyz and the like): tests index into it freely.
  json: any;
}

export interface CallOptions {
  /** Bearer token (default: the admin's). */
  token?: string;
  /** Impersonate this user (with the admin's token, which may impersonate anyone). */
  as?: { user: string; groups?: string[] };
  /** Content-Type of the body (default application/json; merge/strategic patches need theirs). */
  contentType?: string;
  /** Accept header (e.g. kubectl's table form); default none. */
  accept?: string;
}

/** Polls `cond` every 50 ms until it is true; errors it throws count as "not yet". */
export async function until(what: string, cond: () => boolean | Promise<boolean>, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  let last: unknown;
  for (;;) {
    try {
      if (await cond()) return;
    } catch (e) {
      if ((e as { fatal?: boolean }).fatal) throw e;
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for: ${what}${last ? ` (last error: ${String(last)})` : ''}`);
    await sleep(50);
  }
}

export class BareApiserver {
  readonly adminToken = `admin-${process.pid}-${Math.random().toString(36).slice(2)}`;
  /** Token of each static user, by name. */
  readonly tokens = new Map<string, string>();
  apiPort = 0;
  etcdPort = 0;
  private etcd: ChildProcess | undefined;
  private proc: ChildProcess | undefined;

  private constructor(readonly dir: string) {}

  /**
   * etcd + kube-apiserver, ready (/readyz 200). Call apiserverSkipReason() first. A free
   * port can be taken by another process between freePort() and the bind: such a start is
   * retried on new ports (three tries).
   */
  static async start(users: StaticUser[] = []): Promise<BareApiserver> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await BareApiserver.startOnce(users);
      } catch (e) {
        if (attempt >= 3 || !/address already in use/.test(String((e as Error).message))) throw e;
      }
    }
  }

  private static async startOnce(users: StaticUser[]): Promise<BareApiserver> {
    const s = new BareApiserver(mkdtempSync(join(tmpdir(), 'patu-apiserver-')));
    try {
      s.etcdPort = await freePort();
      s.apiPort = await freePort();
      const peer = await freePort();
      const lines = [`${s.adminToken},patu-it-admin,1,"system:masters"`];
      users.forEach((u, i) => {
        const token = `${u.name}-${process.pid}-${Math.random().toString(36).slice(2)}`;
        s.tokens.set(u.name, token);
        lines.push(`${token},${u.name},${i + 2},${u.groups?.length ? `"${u.groups.join(',')}"` : ''}`);
      });
      writeFileSync(join(s.dir, 'tokens.csv'), `${lines.join('\n')}\n`);
      const k = spawnSync('openssl', ['genrsa', '-out', join(s.dir, 'sa.key'), '2048'], { encoding: 'utf8' });
      if (k.status !== 0) throw new Error(`openssl genrsa: ${k.stderr}`);
      s.etcd = spawn(which('etcd')!, [`--data-dir=${join(s.dir, 'etcd')}`, `--listen-client-urls=http://127.0.0.1:${s.etcdPort}`,
        `--advertise-client-urls=http://127.0.0.1:${s.etcdPort}`, `--listen-peer-urls=http://127.0.0.1:${peer}`,
        `--initial-advertise-peer-urls=http://127.0.0.1:${peer}`, `--initial-cluster=default=http://127.0.0.1:${peer}`], { stdio: ['ignore', 'ignore', 'pipe'] });
      let etcdErr = '';
      s.etcd.stderr!.on('data', (b: Buffer) => { etcdErr = (etcdErr + b.toString()).slice(-4000); });
      await s.startApiserver().catch((e: Error) => { throw new Error(`${e.message}${s.etcd?.exitCode !== null ? `\netcd exited: ${etcdErr}` : ''}`); });
      return s;
    } catch (e) {
      await s.stop();
      throw e;
    }
  }

  /** (Re)starts kube-apiserver on the same port, etcd and keys (after stopApiserver: an outage). */
  async startApiserver(): Promise<void> {
    const d = this.dir;
    this.proc = spawn(join(K8S_BIN, 'kube-apiserver'), [
      `--etcd-servers=http://127.0.0.1:${this.etcdPort}`, `--secure-port=${this.apiPort}`, '--bind-address=127.0.0.1',
      `--cert-dir=${join(d, 'certs')}`, `--token-auth-file=${join(d, 'tokens.csv')}`, '--authorization-mode=RBAC',
      '--service-account-issuer=https://kubernetes.default.svc', `--service-account-key-file=${join(d, 'sa.key')}`,
      `--service-account-signing-key-file=${join(d, 'sa.key')}`, '--service-cluster-ip-range=10.96.0.0/16',
      '--enable-priority-and-fairness=false', '--v=0',
    ], { stdio: ['ignore', 'ignore', 'pipe'] });
    const p = this.proc;
    let err = '';
    p.stderr!.on('data', (b: Buffer) => { err = (err + b.toString()).slice(-4000); });
    await until('kube-apiserver /readyz', async () => {
      if (p.exitCode !== null) throw Object.assign(new Error(`kube-apiserver exited (${p.exitCode})`), { fatal: true });
      return (await this.api('GET', '/readyz')).status === 200;
    }, 60_000).catch((e: Error) => { throw new Error(`${e.message}\n${err}`); });
  }

  async stopApiserver(): Promise<void> {
    const p = this.proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    await new Promise<void>((r) => { p.once('exit', () => r()); p.kill('SIGTERM'); });
  }

  /** Stops both and removes the temp dir. Safe to call twice, and after a failed start. */
  async stop(): Promise<void> {
    await this.stopApiserver();
    const e = this.etcd;
    if (e && e.exitCode === null && e.signalCode === null) await new Promise<void>((r) => { e.once('exit', () => r()); e.kill('SIGTERM'); });
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** One HTTPS call; never throws for an HTTP status (see must). */
  api(method: string, path: string, body?: unknown, opt: CallOptions | string = {}): Promise<ApiResponse> {
    const o: CallOptions = typeof opt === 'string' ? { token: opt } : opt;
    return new Promise((resolve, reject) => {
      const data = body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body);
      const headers: Record<string, string | number | string[]> = {
        Authorization: `Bearer ${o.token ?? this.adminToken}`,
        'Content-Type': o.contentType ?? 'application/json',
      };
      if (data) headers['Content-Length'] = Buffer.byteLength(data);
      if (o.accept) headers.Accept = o.accept;
      if (o.as) {
        headers['Impersonate-User'] = o.as.user;
        if (o.as.groups?.length) headers['Impersonate-Group'] = o.as.groups;
      }
      const r = request({ host: '127.0.0.1', port: this.apiPort, path, method, rejectUnauthorized: false, timeout: 10_000, headers }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString();
          let json: unknown = text;
          try { json = JSON.parse(text); } catch { /* plain text (readyz) */ }
          resolve({ status: res.statusCode ?? 0, json });
        });
      });
      r.on('error', reject);
      r.on('timeout', () => r.destroy(new Error(`${method} ${path}: timeout`)));
      if (data) r.write(data);
      r.end();
    });
  }

  /** api() that throws on a status >= 300, naming the call and the apiserver's answer. */
  async must(method: string, path: string, body?: unknown, opt: CallOptions | string = {}): Promise<any> {
    const r = await this.api(method, path, body, opt);
    if (r.status >= 300) throw new Error(`${method} ${path}: HTTP ${r.status}: ${JSON.stringify(r.json).slice(0, 400)}`);
    return r.json;
  }

  /** A kubeconfig file for `token` (default: the admin's), in the temp dir; returns its path. */
  kubeconfig(token = this.adminToken, file = `kubeconfig-${Math.random().toString(36).slice(2)}`): string {
    const path = join(this.dir, file);
    writeFileSync(path, [
      'apiVersion: v1', 'kind: Config', 'current-context: it',
      `clusters: [{name: it, cluster: {server: "https://127.0.0.1:${this.apiPort}", insecure-skip-tls-verify: true}}]`,
      `users: [{name: u, user: {token: "${token}"}}]`,
      'contexts: [{name: it, context: {cluster: it, user: u}}]', '',
    ].join('\n'));
    return path;
  }

  /**
   * Creates manifest objects (deploy/*.yaml as loadManifest reads them) as the admin, each at
   * its kind's path; `namespace` fills in a namespaced object without one. Kinds beyond the
   * few the deploy files hold throw, naming the kind.
   */
  async create(docs: Record<string, any>[], namespace = 'default'): Promise<any[]> {
    const out: any[] = [];
    for (const d of docs) {
      const ns = d.metadata?.namespace ?? namespace;
      const path = {
        CustomResourceDefinition: '/apis/apiextensions.k8s.io/v1/customresourcedefinitions',
        ValidatingAdmissionPolicy: '/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies',
        ValidatingAdmissionPolicyBinding: '/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings',
        ClusterRole: '/apis/rbac.authorization.k8s.io/v1/clusterroles',
        ClusterRoleBinding: '/apis/rbac.authorization.k8s.io/v1/clusterrolebindings',
        Namespace: '/api/v1/namespaces',
        ServiceAccount: `/api/v1/namespaces/${ns}/serviceaccounts`,
        Role: `/apis/rbac.authorization.k8s.io/v1/namespaces/${ns}/roles`,
        RoleBinding: `/apis/rbac.authorization.k8s.io/v1/namespaces/${ns}/rolebindings`,
        ConfigMap: `/api/v1/namespaces/${ns}/configmaps`,
      }[String(d.kind)];
      if (!path) throw new Error(`BareApiserver.create: no path known for kind ${String(d.kind)}`);
      out.push(await this.must('POST', path, d));
    }
    return out;
  }

  /** Waits until the CRDs are Established and their resources served (discovery can lag the condition). */
  async crdsReady(crds: Record<string, any>[]): Promise<void> {
    for (const crd of crds) {
      await until(`CRD ${crd.metadata.name} Established`, async () => {
        const c = await this.must('GET', `/apis/apiextensions.k8s.io/v1/customresourcedefinitions/${crd.metadata.name}`);
        return ((c.status?.conditions ?? []) as { type: string; status: string }[]).some((x) => x.type === 'Established' && x.status === 'True');
      });
      const v = crd.spec.versions.find((x: { storage: boolean }) => x.storage).name;
      await until(`${crd.metadata.name} served`, async () => (await this.api('GET', `/apis/${crd.spec.group}/${v}/${crd.spec.names.plural}`)).status === 200);
    }
  }

  /** A real ServiceAccount token (TokenRequest API), creating the ServiceAccount if missing. */
  async serviceAccountToken(namespace: string, name: string): Promise<string> {
    const sa = await this.api('POST', `/api/v1/namespaces/${namespace}/serviceaccounts`, { metadata: { name } });
    if (sa.status >= 300 && sa.status !== 409) throw new Error(`create serviceaccount ${namespace}/${name}: HTTP ${sa.status}: ${JSON.stringify(sa.json).slice(0, 400)}`);
    const tr = await this.must('POST', `/api/v1/namespaces/${namespace}/serviceaccounts/${name}/token`, {
      apiVersion: 'authentication.k8s.io/v1', kind: 'TokenRequest', spec: { expirationSeconds: 3600 },
    });
    return tr.status.token as string;
  }
}
