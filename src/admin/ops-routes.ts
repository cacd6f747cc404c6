// The operator endpoints of the admin port: GET /v1/status (the cluster), GET /v1/explain?sandbox=
// (one sandbox, every layer and every replica's decision) and the live page under /ui. Every one
// goes through the access check (access.ts) first. Store connections for status are opened on first
// use and kept small: these endpoints are for people and one open page, not for automation at rate.
import type http from 'node:http';
import type tls from 'node:tls';
import type { Redis } from 'ioredis';
import { createRedisClient } from '../ownership/redis-connect.ts';
import pg from 'pg';
import type { Logger } from 'pino';
import type { AdminAccessCheck } from './access.ts';
import { collectStatus, type StatusSources } from './cluster-status.ts';
import { collectExplanation, type ExplainSources } from './explain.ts';
import { gatewayRow, replicaRuntime, sandboxLocalView, sandboxSlots, type InspectDeps } from './inspect.ts';
import { fetchPeerView } from './peer-client.ts';
import type { PeerInspectAnswer } from './peer-inspect.ts';
import { UI_CSS, UI_HTML, UI_JS } from './ui-page.ts';

export interface OpsRoutes {
  /** Answers the request when the path is one of ours; false leaves it to the caller. */
  handle(req: http.IncomingMessage, res: http.ServerResponse, path: string): Promise<boolean>;
  close(): Promise<void>;
}

export interface OpsRoutesOptions {
  access: AdminAccessCheck;
  inspect: InspectDeps;
  logger: Logger;
}

const SECURITY_HEADERS = {
  'cache-control': 'no-store',
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
  // Nothing from anywhere else: the page, its style and its script all come from this port.
  'content-security-policy': "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
};

export function createOpsRoutes(opts: OpsRoutesOptions): OpsRoutes {
  const deps = opts.inspect;
  const config = deps.config;
  const self = deps.store.replicaId;
  let pool: pg.Pool | undefined;
  let redis: Redis | undefined;

  const poolFor = (): pg.Pool | null => {
    if (!config.databaseUrl) return null;
    if (!pool) {
      pool = new pg.Pool({ connectionString: config.databaseUrl, max: 2, connectionTimeoutMillis: 2_000, idleTimeoutMillis: 30_000, allowExitOnIdle: true, statement_timeout: 5_000, application_name: 'openshell-ha-sidecar-admin' });
      pool.on('error', () => undefined);
    }
    return pool;
  };
  const redisFor = (): Redis | null => {
    if (!config.redisUrl || config.mode !== 'cluster') return null;
    if (!redis) {
      redis = createRedisClient(config.redisUrl, { lazyConnect: false, enableOfflineQueue: true, maxRetriesPerRequest: 1, connectTimeout: 1_000, commandTimeout: 2_000, connectionName: `ohs-admin-${self.replace(/[^\w.:-]/g, '_')}` });
      redis.on('error', () => undefined);
    }
    return redis;
  };
  const localAnswer = async (sandboxId?: string): Promise<PeerInspectAnswer> => ({
    runtime: await replicaRuntime(deps),
    ...(sandboxId ? { sandbox: await sandboxLocalView(deps, sandboxId) } : {}),
  });
  const peerTlsFor = (replicaId: string): { tls?: () => tls.ConnectionOptions } => {
    const peerTls = deps.peerTls;
    return peerTls ? { tls: () => peerTls(replicaId) } : {};
  };
  const peerView = (r: { replicaId: string; peerUrl: string }, sandboxId?: string): Promise<PeerInspectAnswer> =>
    r.replicaId === self
      ? localAnswer(sandboxId)
      : fetchPeerView({ peerUrl: r.peerUrl, secret: config.peerSecret ?? '', origin: self, ...(sandboxId ? { sandboxId } : {}), ...peerTlsFor(r.replicaId) });

  const statusSources = (): StatusSources => ({
    pg: poolFor(),
    leaseTtlMs: config.replicaLeaseTtlMs,
    redis: redisFor(),
    limitKeyPrefix: `${config.redisKeyPrefix}limits:`,
    reconcilerLease: () => deps.gatewayObjects.reconcilerLease(),
    ...(config.mode === 'cluster' ? { peerView } : { embedded: { replicaId: self, view: () => localAnswer() } }),
  });
  const explainSources = (): ExplainSources => ({
    liveReplicas: async () => (await deps.store.liveReplicas()).map((r) => ({ replicaId: r.replicaId, peerUrl: r.peerUrl })),
    self: { replicaId: self, view: (id, row) => sandboxLocalView(deps, id, row) },
    peerView: (r, id) => fetchPeerView({ peerUrl: r.peerUrl, secret: config.peerSecret ?? '', origin: self, sandboxId: id, ...peerTlsFor(r.replicaId) }),
    gatewayRow: (id) => gatewayRow(deps, id),
    reconcilerLease: () => deps.gatewayObjects.reconcilerLease(),
    slots: (id) => sandboxSlots(deps, id),
    idByName: (name, workspace) => deps.gatewayObjects.sandboxIdByName(name, workspace),
  });

  const json = (res: http.ServerResponse, status: number, body: unknown): void => {
    res.writeHead(status, { 'content-type': 'application/json', ...SECURITY_HEADERS }).end(JSON.stringify(body));
  };

  return {
    async handle(req, res, path) {
      const ours = path === '/v1/status' || path === '/v1/explain' || path === '/ui' || path === '/ui/' || path.startsWith('/ui/');
      if (!ours) return false;
      const verdict = opts.access(req);
      if (!verdict.ok) {
        json(res, verdict.status, { error: verdict.reason });
        return true;
      }
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.writeHead(405, { allow: 'GET', ...SECURITY_HEADERS }).end();
        return true;
      }
      if (path === '/v1/status') {
        json(res, 200, { self, ...(await collectStatus(statusSources())) });
      } else if (path === '/v1/explain') {
        const query = new URL(req.url ?? '/', 'http://admin').searchParams.get('sandbox') ?? '';
        if (!query) return (json(res, 400, { error: 'missing ?sandbox=ID (or workspace/name)' }), true);
        try {
          json(res, 200, await collectExplanation(query, explainSources()));
        } catch (err) {
          json(res, 400, { error: (err as Error).message });
        }
      } else if (path === '/ui' || path === '/ui/') {
        res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', ...SECURITY_HEADERS }).end(UI_HTML);
      } else if (path === '/ui/app.js') {
        res.writeHead(200, { 'content-type': 'text/javascript; charset=utf-8', ...SECURITY_HEADERS }).end(UI_JS);
      } else if (path === '/ui/app.css') {
        res.writeHead(200, { 'content-type': 'text/css; charset=utf-8', ...SECURITY_HEADERS }).end(UI_CSS);
      } else {
        res.writeHead(404, { 'content-type': 'text/plain', ...SECURITY_HEADERS }).end('not found\n');
      }
      return true;
    },
    async close() {
      const p = pool;
      const r = redis;
      pool = undefined;
      redis = undefined;
      r?.disconnect();
      await p?.end().catch(() => undefined);
    },
  };
}
