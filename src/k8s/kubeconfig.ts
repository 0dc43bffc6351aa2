// How the agent reaches the apiserver. Two modes only:
//   - in cluster (KUBERNETES_SERVICE_HOST set): the pod's ServiceAccount token
//     and CA under /var/run/secrets/kubernetes.io/serviceaccount;
//   - --kubeconfig FILE: its current context (client certificate, token or
//     tokenFile; CA file or data).
// This deliberately does not use @kubernetes/client-node's KubeConfig: importing
// it loads the whole generated API (measured here: +53 MB RSS and +300 ms at
// start) that the agent never calls. The object below offers the two methods
// the library's Watch needs (getCurrentCluster, applyToFetchOptions).
import { readFileSync } from 'node:fs';
import { Agent } from 'node:https';
import { Agent as HttpAgent } from 'node:http';
import { dirname, resolve } from 'node:path';
import { createRequire } from 'node:module';
import { PatuError, errnoOf, messageOf } from '../errors.js';

export const SA_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';

// The YAML parser only for a kubeconfig file, loaded when one is read: an agent in a pod
// (ServiceAccount) never needs it, and it costs ~6 MB of RSS once loaded.
// A JSON kubeconfig (kubectl accepts those too; JSON is YAML) skips the parser altogether.
const parseYaml = (text: string): unknown => {
  if (text.trimStart().startsWith('{')) {
    try {
      return JSON.parse(text);
    } catch { /* YAML flow mapping, not JSON: the YAML parser decides */ }
  }
  return (createRequire(import.meta.url)('yaml') as typeof import('yaml')).parse(text);
};

export interface ClientConfig {
  server: string;
  /** Where the credentials came from, for logs (never the credentials). */
  source: string;
  agent: Agent | HttpAgent;
  /** Request headers; re-reads a token file at most every minute (bound tokens rotate). */
  headers(): Record<string, string>;
  getCurrentCluster(): { server: string; name: string };
  applyToFetchOptions(opts: Record<string, unknown>): Promise<Record<string, unknown>>;
}

export class KubeConfigError extends PatuError {
  readonly code = 'KUBECONFIG';
}

function read(path: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (e) {
    throw new KubeConfigError(`${what}: cannot read ${path}: ${errnoOf(e) ?? messageOf(e)}`, { cause: e });
  }
}

function tokenSource(token: string | undefined, tokenFile: string | undefined): () => string | undefined {
  if (token) return () => token;
  if (!tokenFile) return () => undefined;
  let cached = read(tokenFile, 'token file').toString('utf8').trim();
  let at = Date.now();
  return () => {
    if (Date.now() - at > 60_000) {
      try {
        cached = readFileSync(tokenFile, 'utf8').trim();
      } catch {
        // Keep the last token: a failed re-read during a rotation must not drop auth.
      }
      at = Date.now();
    }
    return cached;
  };
}

function make(server: string, source: string, agent: Agent | HttpAgent, token: () => string | undefined): ClientConfig {
  const headers = (): Record<string, string> => {
    const t = token();
    return { Accept: 'application/json', ...(t ? { Authorization: `Bearer ${t}` } : {}) };
  };
  return {
    server, source, agent, headers,
    getCurrentCluster: () => ({ server, name: source }),
    applyToFetchOptions: async (opts) => ({ ...opts, agent, headers: { ...(opts.headers as object | undefined), ...headers() } }),
  };
}

/** In-cluster config from the ServiceAccount mount. */
export function inClusterConfig(env: NodeJS.ProcessEnv, saDir = SA_DIR): ClientConfig {
  const host = env.KUBERNETES_SERVICE_HOST;
  const port = env.KUBERNETES_SERVICE_PORT ?? '443';
  if (!host) throw new KubeConfigError('in-cluster config: KUBERNETES_SERVICE_HOST is not set');
  const server = `https://${host.includes(':') ? `[${host}]` : host}:${port}`;
  const agent = new Agent({ keepAlive: true, ca: read(`${saDir}/ca.crt`, 'ServiceAccount CA') });
  return make(server, `serviceaccount ${saDir}`, agent, tokenSource(undefined, `${saDir}/token`));
}

interface Named<T> { name: string; [k: string]: unknown; cluster?: T; user?: T; context?: T }

/** The current context of a kubeconfig file. Exec and auth-provider plugins are not supported. */
export function kubeconfigFile(path: string, context?: string): ClientConfig {
  const dir = dirname(resolve(path));
  let doc: Record<string, unknown>;
  try {
    doc = parseYaml(read(path, 'kubeconfig').toString('utf8')) as Record<string, unknown>;
  } catch (e) {
    if (e instanceof KubeConfigError) throw e;
    throw new KubeConfigError(`kubeconfig ${path}: not YAML: ${messageOf(e)}`, { cause: e });
  }
  const ctxName = context ?? (doc['current-context'] as string | undefined);
  const find = <T>(list: unknown, name: string | undefined, what: string): T => {
    const item = (Array.isArray(list) ? (list as Named<T>[]) : []).find((x) => x.name === name);
    const v = item?.[what as 'cluster'];
    if (!v) throw new KubeConfigError(`kubeconfig ${path}: no ${what} named ${JSON.stringify(name)}`);
    return v;
  };
  const ctx = find<{ cluster: string; user: string }>(doc.contexts, ctxName, 'context');
  const cluster = find<Record<string, string | boolean>>(doc.clusters, ctx.cluster, 'cluster');
  const user = find<Record<string, unknown>>(doc.users, ctx.user, 'user');
  if (user.exec || user['auth-provider']) {
    throw new KubeConfigError(`kubeconfig ${path}: user ${ctx.user} uses an exec/auth-provider plugin, which patu does not run; use a token or client certificate`);
  }
  const rel = (p: unknown): string => resolve(dir, String(p));
  const pem = (data: unknown, file: unknown, what: string): Buffer | undefined =>
    data ? Buffer.from(String(data), 'base64') : file ? read(rel(file), `kubeconfig ${what}`) : undefined;
  const server = String(cluster.server ?? '');
  if (!/^https?:\/\//.test(server)) throw new KubeConfigError(`kubeconfig ${path}: cluster ${ctx.cluster} has no http(s) server`);
  const ca = pem(cluster['certificate-authority-data'], cluster['certificate-authority'], 'certificate-authority');
  const cert = pem(user['client-certificate-data'], user['client-certificate'], 'client-certificate');
  const key = pem(user['client-key-data'], user['client-key'], 'client-key');
  const agent = server.startsWith('https:')
    ? new Agent({
      keepAlive: true,
      ...(ca ? { ca } : {}), ...(cert ? { cert } : {}), ...(key ? { key } : {}),
      rejectUnauthorized: cluster['insecure-skip-tls-verify'] !== true,
    })
    : new HttpAgent({ keepAlive: true });
  const tokenFile = user.tokenFile ? rel(user.tokenFile) : undefined;
  return make(server, `kubeconfig ${path} context ${ctxName}`, agent, tokenSource(user.token as string | undefined, tokenFile));
}

/**
 * In cluster when KUBERNETES_SERVICE_HOST is set in `env` (the agent's environment,
 * handed down by it) and no kubeconfig is given; else the kubeconfig.
 */
export function loadClientConfig(opts: { kubeconfig?: string; env: NodeJS.ProcessEnv }): ClientConfig {
  const env = opts.env;
  if (opts.kubeconfig) return kubeconfigFile(opts.kubeconfig);
  if (env.KUBERNETES_SERVICE_HOST) return inClusterConfig(env);
  throw new KubeConfigError('no apiserver: not in a cluster (KUBERNETES_SERVICE_HOST unset) and no --kubeconfig given');
}
