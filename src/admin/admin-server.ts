// Admin listener: liveness, readiness (local gateway and store reachable) and Prometheus metrics.
import http from 'node:http';
import net from 'node:net';
import type { Logger } from 'pino';
import type { SidecarMetrics } from '../metrics/registry.ts';
import type { OwnershipStore } from '../ownership/types.ts';
import type { LocalSessions } from '../routing/router.ts';
import type { AdminAccessCheck } from './access.ts';
import type { OpsRoutes } from './ops-routes.ts';

export interface AdminDeps {
  logger: Logger;
  metrics: SidecarMetrics;
  store: OwnershipStore;
  localSessions: LocalSessions;
  gatewayHost: string;
  gatewayPort: number;
  replicaId: string;
  mode: string;
  draining: () => boolean;
  /** True while the rebalancer keeps this replica out of the Service to shed (readiness false). */
  steppedOut?: () => boolean;
  /** Starts (or joins) the drain; resolves with its report when it is over. */
  drain: (reason: string) => Promise<unknown>;
  /** Operator endpoints (/v1/status, /v1/explain, /ui), behind the admin access check. */
  ops?: OpsRoutes;
  /** Who may read /debug/* (sandbox ids): the same check as the operator endpoints. */
  access?: AdminAccessCheck;
}

function probeTcp(host: string, port: number, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host, port });
    const done = (ok: boolean): void => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(timeoutMs, () => done(false));
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
  });
}

function isLoopback(address: string | undefined): boolean {
  return address !== undefined && (address === '::1' || /^(::ffff:)?127\./.test(address));
}

export function createAdminServer(deps: AdminDeps): http.Server {
  const server = http.createServer((req, res) => {
    const path = (req.url ?? '').split('?')[0];
    void (async () => {
      if (path === '/healthz') {
        res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
      } else if (path === '/readyz') {
        const [gateway, store] = await Promise.all([
          probeTcp(deps.gatewayHost, deps.gatewayPort, 1000),
          deps.store.health().catch(() => ({ postgres: false, redis: null })),
        ]);
        deps.metrics.storeUp.set({ store: 'postgres' }, store.postgres ? 1 : 0);
        if (store.redis !== null) deps.metrics.storeUp.set({ store: 'redis' }, store.redis ? 1 : 0);
        // The stores are reported, never gating: routing keeps working from caches through an outage,
        // and a Postgres outage must not take every replica out of the Service at once.
        // A rebalancing replica leaves the Service too, so that its shed supervisors land elsewhere.
        const rebalancing = deps.steppedOut?.() ?? false;
        const ready = gateway && !deps.draining() && !rebalancing;
        res.writeHead(ready ? 200 : 503, { 'content-type': 'application/json' }).end(
          JSON.stringify({ ready, draining: deps.draining(), rebalancing, checks: { gateway, postgres: store.postgres, redis: store.redis } }),
        );
      } else if ((path === '/drain' && req.method === 'POST') || (path === '/drain/wait' && req.method === 'GET')) {
        // The preStop hook's call (kubelet hooks can only GET: /drain/wait): leave the Service and move
        // every session away. Idempotent (hooks are delivered at least once); /drain/wait and
        // `POST /drain?wait=1` answer when the drain is over, so the hook holds the pod until then.
        const wait = path === '/drain/wait' || new URL(req.url ?? '/', 'http://admin').searchParams.get('wait') === '1';
        const done = deps.drain('preStop');
        if (wait) {
          const report = await done;
          res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ draining: true, report }));
        } else {
          res.writeHead(202, { 'content-type': 'application/json' }).end(JSON.stringify({ draining: true }));
        }
      } else if (path === '/metrics') {
        res.writeHead(200, { 'content-type': deps.metrics.registry.contentType }).end(await deps.metrics.registry.metrics());
      } else if (path === '/debug/sessions') {
        // Lists sandbox ids: loopback, allowed addresses or the admin token only (no access check
        // configured = loopback only).
        const verdict = deps.access?.(req) ?? (isLoopback(req.socket.remoteAddress) ? { ok: true as const } : { ok: false as const, status: 403, reason: 'loopback only' });
        if (!verdict.ok) {
          res.writeHead(verdict.status, { 'content-type': 'application/json' }).end(JSON.stringify({ error: verdict.reason }));
          return;
        }
        res.writeHead(200, { 'content-type': 'application/json' }).end(
          JSON.stringify({ replicaId: deps.replicaId, mode: deps.mode, sessions: Object.fromEntries(deps.localSessions.entries()) }),
        );
      } else if (!(await deps.ops?.handle(req, res, path ?? ''))) {
        res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
      }
    })().catch((err: unknown) => {
      deps.logger.warn({ err }, 'admin request failed');
      if (!res.headersSent) res.writeHead(500).end();
    });
  });
  server.on('clientError', (_err, socket) => socket.destroy());
  return server;
}
