// Composition root: builds the store, pools, router and the three listeners from a config.
import type http from 'node:http';
import type http2 from 'node:http2';
import net from 'node:net';
import type { Logger } from 'pino';
import { createAdminServer } from './admin/admin-server.ts';
import { createOperatorSurface } from './admin/operator.ts';
import { createSandboxJwtVerifier } from './auth/sandbox-jwt.ts';
import { createSshTokenCheck } from './auth/ssh-tokens.ts';
import { formatHostPort, isWildcardHost, parseHostPort } from './config/host-port.ts';
import type { SidecarConfig } from './config/schema.ts';
import { createMetrics, type SidecarMetrics } from './metrics/registry.ts';
import { DEFAULT_LIMIT_RULES, type LimitRule } from './limits/rules.ts';
import { createSlotLimiter } from './limits/slots.ts';
import { createGatewayObjects } from './ownership/gateway-objects.ts';
import { createMemoryOwnershipStore } from './ownership/memory-store.ts';
import { createPostgresOwnershipStore } from './ownership/postgres-store.ts';
import type { OwnershipStore } from './ownership/types.ts';
import { createPeerServer } from './peers/peer-server.ts';
import type { ProxyContext } from './proxy/context.ts';
import { SessionPool, SpreadPool } from './proxy/h2-sessions.ts';
import { watchGateway } from './readiness/gateway-watch.ts';
import { createShadowRegistry } from './readiness/shadows.ts';
import { createPublicListener, type PublicListener } from './proxy/public-listener.ts';
import { LocalSessions, OwnerRouter } from './routing/router.ts';
import { createSandboxKeys } from './routing/sandbox-keys.ts';

export const VERSION = '0.1.0';

export interface Sidecar {
  config: SidecarConfig;
  replicaId: string;
  ports: { public: number; peer: number; admin: number };
  peerUrl: string;
  metrics: SidecarMetrics;
  store: OwnershipStore;
  close(): Promise<void>;
}

function listen(server: net.Server | http.Server | http2.Http2Server, address: string): Promise<number> {
  const { host, port } = parseHostPort(address);
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve((server.address() as net.AddressInfo).port);
    });
  });
}

function closeServer(server: net.Server | http.Server | http2.Http2Server): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()));
}

export async function startSidecar(config: SidecarConfig, logger: Logger): Promise<Sidecar> {
  const metrics = createMetrics();
  const gatewayUrl = new URL(config.gatewayUrl);
  const gatewayHost = gatewayUrl.hostname.replace(/^\[|\]$/g, '');
  const gatewayPort = Number(gatewayUrl.port || (gatewayUrl.protocol === 'https:' ? 443 : 80));
  const localSessions = new LocalSessions();
  const sessionOpts = { connectTimeoutMs: config.upstreamConnectTimeoutMs, windowBytes: config.h2InitialWindowBytes };
  const gatewayPool = new SessionPool(sessionOpts);
  const peerPool = new SessionPool(
    { connectTimeoutMs: config.peerConnectTimeoutMs, windowBytes: config.h2InitialWindowBytes },
    (n) => metrics.peerSessions.set(n),
  );
  let connSeq = 0;

  // The peer port is bound first so the advertised peer URL is known before the store starts.
  const ctxRef: { ctx?: ProxyContext } = {};
  const peerServer = config.mode === 'cluster' ? createPeerServerLazy(ctxRef) : undefined;
  const peerPort = peerServer ? await listen(peerServer, config.peerListen) : 0;
  const peerHost = parseHostPort(config.peerListen).host;
  const peerUrl =
    config.peerUrl ??
    `http://${formatHostPort({ host: isWildcardHost(peerHost) ? '127.0.0.1' : peerHost, port: peerPort })}`;

  const store: OwnershipStore =
    config.mode === 'cluster' && config.databaseUrl
      ? createPostgresOwnershipStore({
          databaseUrl: config.databaseUrl,
          ...(config.redisUrl ? { redisUrl: config.redisUrl } : {}),
          redisKeyPrefix: config.redisKeyPrefix,
          replicaId: config.replicaId,
          peerUrl,
          version: VERSION,
          heartbeatIntervalMs: config.replicaHeartbeatIntervalMs,
          leaseTtlMs: config.replicaLeaseTtlMs,
          cacheTtlMs: config.ownerCacheTtlMs,
          logger: logger.child({ component: 'ownership' }),
        })
      : createMemoryOwnershipStore({ replicaId: config.replicaId, peerUrl, version: VERSION });
  try {
    await store.start();
  } catch (err) {
    if (peerServer) await closeServer(peerServer);
    throw err;
  }

  const gatewayObjects = createGatewayObjects(config.gatewayDatabaseUrl ?? config.databaseUrl, logger.child({ component: 'gateway-objects' }));
  // Live replicas for the limits' local-split policy, refreshed on the heartbeat cadence.
  let liveReplicaCount = 1;
  const refreshLive = (): void => {
    store.liveReplicas().then(
      (r) => {
        liveReplicaCount = Math.max(1, r.length);
      },
      () => undefined,
    );
  };
  refreshLive();
  const liveTimer = setInterval(refreshLive, config.replicaHeartbeatIntervalMs);
  liveTimer.unref();
  const rules: LimitRule[] = [
    ...DEFAULT_LIMIT_RULES.map((r) =>
      r.name === 'ssh-per-token' ? { ...r, max: config.sshTunnelsPerToken } : r.name === 'ssh-per-sandbox' ? { ...r, max: config.sshTunnelsPerSandbox } : { ...r },
    ),
    ...config.limitRules.map((r) => ({ ...r })),
  ];
  const limiter = createSlotLimiter({
    ...(config.mode === 'cluster' && config.redisUrl ? { redisUrl: config.redisUrl } : {}),
    keyPrefix: `${config.redisKeyPrefix}limits:`,
    holderId: config.replicaId,
    leaseTtlMs: config.limitLeaseTtlMs,
    rules,
    liveReplicas: () => liveReplicaCount,
    logger: logger.child({ component: 'limits' }),
    registry: metrics.registry,
    fallbackPolicy: config.limitFallbackPolicy,
  });
  const router = new OwnerRouter(store, localSessions, gatewayObjects, metrics, logger.child({ component: 'router' }), config.ownerWaitMs);
  const gatewayOrigin = `http://${formatHostPort({ host: gatewayHost, port: gatewayPort })}`;
  const jwt = createSandboxJwtVerifier({
    gatewayOrigin,
    ...(config.gatewayJwtIssuer ? { issuer: config.gatewayJwtIssuer } : {}),
    logger: logger.child({ component: 'sandbox-jwt' }),
  });
  // Logs which generation of supervisor authentication the local gateway speaks (seed: none).
  void jwt.gatewayIssuesJwts();
  const shadowUpstreams = new SpreadPool(gatewayOrigin, sessionOpts);
  const shadows =
    config.mode === 'cluster' && config.readinessMode === 'shadow'
      ? createShadowRegistry({
          store,
          peerPool,
          peerSecret: config.peerSecret ?? '',
          gatewayObjects,
          metrics,
          logger: logger.child({ component: 'readiness' }),
          reconcileIntervalMs: config.replicaHeartbeatIntervalMs,
        })
      : undefined;
  const gatewayWatch = watchGateway({ objects: gatewayObjects, gatewayPool, gatewayOrigin, metrics, logger: logger.child({ component: 'gateway-watch' }) });
  const ctx: ProxyContext = {
    config,
    logger,
    metrics,
    store,
    router,
    localSessions,
    limiter,
    gatewayObjects,
    sandboxKeys: createSandboxKeys(gatewayObjects),
    jwt,
    sshTokens: createSshTokenCheck(gatewayObjects),
    shadowUpstreams,
    shadows,
    gatewayWatch,
    gatewayOrigin,
    gatewayHost,
    gatewayPort,
    gatewayPool,
    peerPool,
    peerSecret: config.peerSecret,
    nextConnId: () => `c${++connSeq}`,
  };
  ctxRef.ctx = ctx;

  let draining = false;
  const publicListener: PublicListener = createPublicListener(ctx);
  ctx.inspect = { config, version: VERSION, startedAtMs: Date.now(), store, localSessions, router, shadows, limiter, rules, gatewayObjects, gatewayWatch, metrics, draining: () => draining };
  const operator = createOperatorSurface(ctx.inspect, logger.child({ component: 'admin' }));
  const admin = createAdminServer({
    logger,
    metrics,
    store,
    localSessions,
    gatewayHost,
    gatewayPort,
    replicaId: config.replicaId,
    mode: config.mode,
    draining: () => draining,
    ops: operator.ops,
  });
  const publicPort = await listen(publicListener.server, config.listen);
  const adminPort = await listen(admin, config.adminListen);

  let closing: Promise<void> | undefined;
  return {
    config,
    replicaId: config.replicaId,
    ports: { public: publicPort, peer: peerPort, admin: adminPort },
    peerUrl,
    metrics,
    store,
    close() {
      closing ??= (async () => {
        draining = true;
        await publicListener.close();
        if (peerServer) {
          const p = closeServer(peerServer);
          await Promise.race([p, new Promise((r) => setTimeout(r, 1000).unref())]);
        }
        gatewayWatch.close();
        await shadows?.close();
        await shadowUpstreams.close();
        await gatewayPool.close();
        await peerPool.close();
        await closeServer(admin);
        await operator.close();
        clearInterval(liveTimer);
        await limiter.close().catch(() => undefined);
        await store.close().catch(() => undefined);
        await gatewayObjects.close();
      })();
      return closing;
    },
  };
}

/**
 * The peer server needs the proxy context, which needs the store, which needs the peer URL, which
 * needs the bound peer port. So the port listens first and hands connections to the real h2
 * server once the context exists; earlier connections are refused (the replica is not
 * registered yet, so no peer can be sending to it).
 */
function createPeerServerLazy(ref: { ctx?: ProxyContext }): net.Server {
  let inner: http2.Http2Server | undefined;
  const srv = net.createServer((socket) => {
    socket.on('error', () => undefined);
    if (!ref.ctx) {
      socket.destroy();
      return;
    }
    inner ??= createPeerServer(ref.ctx);
    inner.emit('connection', socket);
  });
  return srv;
}
