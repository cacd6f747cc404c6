// Composition root: builds the store, pools, router and the three listeners from a config.
import type http from 'node:http';
import type http2 from 'node:http2';
import net from 'node:net';
import type { Logger } from 'pino';
import { createAdminServer } from './admin/admin-server.ts';
import { ByteBudget } from './proxy/byte-budget.ts';
import { H2Liveness } from './proxy/liveness.ts';
import { createDrainer, type DrainReport } from './drain/drain.ts';
import { startRebalancer } from './drain/rebalance.ts';
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
import { createPeerAuth, type PeerAuth } from './peers/peer-auth.ts';
import { createPeerServer } from './peers/peer-server.ts';
import { cleartextPeerWarning, createPeerTlsMaterial, createPeerTlsMetrics, type PeerTlsMaterial } from './peers/peer-tls.ts';
import type { ProxyContext } from './proxy/context.ts';
import { createGatewayTransport } from './proxy/gateway-transport.ts';
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
  /** Graceful drain (DESIGN §6); resolves when it is over. close() afterwards. */
  drain(reason: string): Promise<DrainReport>;
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
  const gateway = createGatewayTransport(config.gatewayUrl, config.gatewayTls);
  const gatewayHost = gateway.host;
  const gatewayPort = gateway.port;
  const localSessions = new LocalSessions();
  // Peer mTLS material is read before anything listens: unusable files stop the start.
  const peerTls: PeerTlsMaterial | undefined =
    config.mode === 'cluster' && config.peerTls
      ? createPeerTlsMaterial({ config: config.peerTls, logger: logger.child({ component: 'peer-tls' }), metrics: createPeerTlsMetrics(metrics.registry) })
      : undefined;
  // Upstream connections (gateway and peers) are PINGed while silent: a peer whose pod vanished
  // without closing its connections is noticed in seconds, not after the kernel's TCP timeout.
  const upstreamLog = logger.child({ component: 'upstream' });
  const upstreamLiveness = new H2Liveness({
    pingIntervalMs: config.h2PingIntervalMs,
    pingTimeoutMs: config.h2PingTimeoutMs,
    onClose: (why, session) => {
      metrics.protectionsTotal.inc({ reason: why === 'idle' ? 'idle' : 'ping_timeout' });
      // Pooled connections only (supervisors' own are not watched here), a handful: each loss is news.
      if (why === 'ping-timeout') {
        const socket = session.socket as { remoteAddress?: string; remotePort?: number } | undefined;
        upstreamLog.warn(
          { remote: `${socket?.remoteAddress ?? '?'}:${socket?.remotePort ?? '?'}`, waitedMs: config.h2PingTimeoutMs },
          'upstream connection answered no PING; destroyed, its streams end',
        );
      }
    },
  });
  const resetBudget = {
    burst: config.upstreamResetBudget,
    refillPerSecond: config.upstreamResetRefillPerSecond,
    onRetire: (origin: string, resets: number, active: number): void => {
      if (resets === 0) {
        // Only long-lived streams: each of them could still end in a reset, so the connection
        // takes no more; nothing abusive happened.
        upstreamLog.debug({ origin, active, budget: config.upstreamResetBudget }, 'upstream connection full of long-lived streams; new streams go to a fresh connection');
        return;
      }
      metrics.protectionsTotal.inc({ reason: 'upstream_reset_budget' });
      upstreamLog.warn({ origin, resets, active, budget: config.upstreamResetBudget }, 'upstream connection carried too many reset streams; new streams go to a fresh connection and it closes once idle');
    },
  };
  const upstreamCommon = { windowBytes: config.h2InitialWindowBytes, keepaliveMs: config.tcpKeepaliveMs, liveness: upstreamLiveness, resetBudget };
  const sessionOpts = { ...upstreamCommon, connectTimeoutMs: config.upstreamConnectTimeoutMs, ...(gateway.tls ? { tls: gateway.tls } : {}) };
  const gatewayPool = new SessionPool(sessionOpts);
  const peerPool = new SessionPool(
    { ...upstreamCommon, connectTimeoutMs: config.peerConnectTimeoutMs, pingIntervalMs: config.peerPingIntervalMs, ...(peerTls ? { tls: (origin: string) => peerTls.clientOptions(store.replicaAtPeerUrl?.(origin)) } : {}) },
    (n) => metrics.peerSessions.set(n),
  );
  let connSeq = 0;

  // The peer port is bound first so the advertised peer URL is known before the store starts.
  const ctxRef: { ctx?: ProxyContext } = {};
  const peerServer = config.mode === 'cluster' ? createPeerServerLazy(ctxRef) : undefined;
  let peerPort = 0;
  try {
    peerPort = peerServer ? await listen(peerServer, config.peerListen) : 0;
  } catch (err) {
    peerTls?.close();
    throw err;
  }
  const peerHost = parseHostPort(config.peerListen).host;
  // An IPv6 pod address needs brackets in a URL, which `http://$(POD_IP):8443` in a manifest cannot
  // give: with peerHost the URL is built here.
  const peerUrl =
    config.peerUrl ??
    `${peerTls ? 'https' : 'http'}://${formatHostPort({ host: config.peerHost ?? (isWildcardHost(peerHost) ? '127.0.0.1' : peerHost), port: peerPort })}`;
  const cleartext = cleartextPeerWarning(config, peerHost);
  if (cleartext !== undefined) logger.warn({ peerListen: config.peerListen, peerUrl }, cleartext);

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
          negativeCacheTtlMs: config.ownerNegativeCacheTtlMs,
          negativeCacheMaxEntries: config.ownerNegativeCacheMaxEntries,
          poolSize: config.postgresPoolSize,
          lookupPoolSize: config.postgresLookupPoolSize,
          lookupQueueMax: config.postgresLookupQueueMax,
          onLookupRefused: () => metrics.protectionsTotal.inc({ reason: 'lookup_queue' }),
          onClaimBatch: (claims) => metrics.ownerClaimBatchSize.observe(claims),
          logger: logger.child({ component: 'ownership' }),
        })
      : createMemoryOwnershipStore({ replicaId: config.replicaId, peerUrl, version: VERSION });
  try {
    await store.start();
  } catch (err) {
    if (peerServer) await closeServer(peerServer);
    peerTls?.close();
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
    reuseMs: config.limitReuseMs,
  });
  const router = new OwnerRouter(store, localSessions, gatewayObjects, metrics, logger.child({ component: 'router' }), config.ownerWaitMs, config.maxHeldRequests);
  const gatewayOrigin = gateway.origin;
  const jwt = createSandboxJwtVerifier({
    gatewayOrigin,
    ...(gateway.tls ? { tls: gateway.tls } : {}),
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
  const drainState = { draining: false };
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
    hostedShadows: new Map(),
    shadows,
    gatewayWatch,
    drainState,
    gateway,
    gatewayOrigin,
    gatewayHost,
    gatewayPort,
    gatewayPool,
    peerPool,
    peerSecret: config.peerSecret,
    bufferBudget: new ByteBudget(config.totalBufferBytes),
    ...(peerTls && config.peerTls ? { peerAuth: peerAuthFor(config.peerTls, peerTls, store, peerUrl, metrics, logger) } : {}),
    nextConnId: () => `c${++connSeq}`,
  };
  ctxRef.ctx = ctx;

  const publicListener: PublicListener = createPublicListener(ctx);
  // The pod's grace period bounds the drain; a little of it is kept for closing down.
  const drainer = createDrainer({
    state: drainState,
    localSessions,
    store,
    metrics,
    logger: logger.child({ component: 'drain' }),
    graceMs: drainBudgetMs(config, 'SIGTERM'),
    shedShare: config.drainShedShare,
    goawayClients: () => publicListener.goawayClients(),
  });
  const rebalancer =
    config.mode === 'cluster' && config.rebalanceMode === 'on'
      ? startRebalancer({
          localSessions,
          store,
          metrics,
          logger: logger.child({ component: 'rebalance' }),
          draining: () => drainState.draining,
          intervalMs: config.rebalanceIntervalMs,
          marginPct: config.rebalanceMarginPct,
          cooldownMs: config.rebalanceCooldownMs,
          minAgeMs: config.rebalanceMinSessionAgeMs,
          // Two heartbeats: every replica has reported the sessions that moved.
          stepOut: { leadMs: config.rebalanceStepOutLeadMs, maxMs: config.rebalanceStepOutMaxMs, settleMs: 2 * config.replicaHeartbeatIntervalMs },
        })
      : undefined;
  ctx.inspect = {
    config, version: VERSION, startedAtMs: Date.now(), store, localSessions, router, shadows, limiter, rules, gatewayObjects, gatewayWatch, metrics,
    draining: () => drainState.draining,
    ...(peerTls ? { peerTls: (replicaId: string) => peerTls.clientOptions(replicaId) } : {}),
  };
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
    draining: () => drainState.draining,
    steppedOut: () => rebalancer?.steppedOut() ?? false,
    drain: (reason) => drainer.start(reason, drainBudgetMs(config, reason)),
    ops: operator.ops,
    access: operator.access,
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
    drain: (reason) => drainer.start(reason, drainBudgetMs(config, reason)),
    close() {
      closing ??= (async () => {
        drainState.draining = true;
        rebalancer?.close();
        gatewayWatch.close();
        clearInterval(liveTimer);
        upstreamLiveness.close();
        peerTls?.close();
        // Listeners first (nothing new comes in), then every pool and store at once.
        admin.closeAllConnections();
        await Promise.all([
          publicListener.close(),
          peerServer ? Promise.race([closeServer(peerServer), new Promise((r) => setTimeout(r, 1000).unref())]) : undefined,
          closeServer(admin),
        ]);
        await shadows?.close();
        await Promise.all([
          shadowUpstreams.close(),
          gatewayPool.close(),
          peerPool.close(),
          operator.close(),
          limiter.close().catch(() => undefined),
          store.close().catch(() => undefined),
          gatewayObjects.close(),
        ]);
      })();
      return closing;
    },
  };
}

function peerAuthFor(config: NonNullable<SidecarConfig['peerTls']>, material: PeerTlsMaterial, store: OwnershipStore, selfPeerUrl: string, metrics: SidecarMetrics, logger: Logger): PeerAuth {
  return createPeerAuth({
    config,
    material,
    registry: {
      registeredPeerUrl: (id, opts) => store.registeredPeerUrl?.(id, opts) ?? Promise.resolve(id === store.replicaId ? selfPeerUrl : null),
    },
    metricsRegistry: metrics.registry,
    logger: logger.child({ component: 'peer-auth' }),
  });
}

/** What the gateway's stop takes after a preStop drain (deployment reference §3.5). */
const GATEWAY_STOP_MS = 10_000;
const MARGIN_MS = 5_000;

/**
 * How long a drain may take. Started by the gateway's preStop (Kubernetes), it must end by the pod's
 * grace − the gateway's stop − a margin, counted from its start; started by our own SIGTERM
 * (compose, or Kubernetes without the hook), by our shutdown grace less what closing needs.
 */
export function drainBudgetMs(config: Pick<SidecarConfig, 'terminationGraceSeconds' | 'shutdownGraceMs'>, reason: string): number {
  if (reason === 'preStop' && config.terminationGraceSeconds !== undefined) {
    return Math.max(1_000, config.terminationGraceSeconds * 1000 - GATEWAY_STOP_MS - MARGIN_MS);
  }
  return Math.max(0, config.shutdownGraceMs - 2_000);
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
