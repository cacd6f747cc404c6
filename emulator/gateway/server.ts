// One gateway replica: a single port serving h2c gRPC and HTTP/1.1, told apart by the
// connection preface like hyper-util's auto::Builder (reference §1.1), optional TLS, and a
// separate health listener (reference §1.3). `protocol` picks the generation it speaks: the seed
// (2026-04, default) or 2026-08 (upstream v0.0.111), whose handlers live in gen2/.
import { readFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import tls from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import pino, { type Logger } from 'pino';
import { openShellService, type Protocol } from '../proto.ts';
import { LogBus, WatchBus } from './buses.ts';
import { SessionRegistry } from './registry.ts';
import { gatewayServiceImplementation, type GatewayContext } from './service.ts';
import { SshSlots, handleSshConnect, writeStatus } from './ssh-tunnel.ts';
import { GatewayStore, MemoryGatewayStore, type GatewayPersistence } from './store.ts';
import { DEFAULT_SERVICE_BASE_DOMAIN, SyncLock, type Gen2Context } from './gen2/context.ts';
import { gen2HttpHandler, gen2UpgradeHandler } from './gen2/http.ts';
import { DEFAULT_GATEWAY_ID, SandboxJwt, createJwtKeyDir } from './gen2/jwt.ts';
import { replicaIdFromEnv, type LeaseTimings } from './gen2/lease.ts';
import { ReconcilerCoordinator } from './gen2/reconciler.ts';
import { gen2ServiceImplementation } from './gen2/service.ts';
import { Gen2Store } from './gen2/store.ts';

const H2_PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');
/** tonic's MAX_GRPC_DECODE_SIZE (reference §1.1). */
export const MAX_GRPC_MESSAGE_BYTES = 1024 * 1024;

export interface GatewayOptions {
  /** Postgres with the gateway's real schema; without it the replica keeps its state in memory. */
  databaseUrl?: string;
  replica: string;
  host?: string;
  port?: number;
  healthPort?: number;
  /** Address of the health listener; default `host` (upstream's TOML sets it apart: 0.0.0.0:8081 at HEAD). */
  healthHost?: string;
  tls?: { certFile: string; keyFile: string; clientCaFile?: string };
  heartbeatIntervalSecs?: number;
  /** How long a call waits for the sandbox's supervisor session; default upstream's (30 s). */
  sessionWaitMs?: number;
  logger?: Logger;
  version?: string;
  /** Protocol generation; default '2026-04' (seed). */
  protocol?: Protocol;
  /** 2026-08: directory with signing.pem, public.pem, kid (shared by a cluster's replicas); a fresh one if absent. */
  jwtKeyDir?: string;
  /** 2026-08: `openshell-gateway:<id>` is the JWT issuer and audience. */
  gatewayId?: string;
  /** 2026-08: sandbox JWT lifetime, 0 = no expiry (Helm default 3600 s). */
  sandboxJwtTtlSecs?: number;
  /** 2026-08: `allow_unauthenticated_users` (default true, so SDK/CLI calls work without OIDC). */
  allowUnauthenticatedUsers?: boolean;
  /** 2026-08: base domains of sandbox service hosts (default openshell.localhost). */
  serviceBaseDomains?: string[];
  /**
   * 2026-08: the reconciler-lease holder id; default OPENSHELL_REPLICA_ID, else HOSTNAME, else a random
   * UUID (lease.rs@v0.0.111:249-253). `replica` stays the emulator's display name (logs, phase writes).
   */
  replicaId?: string;
  /** 2026-08: lease and reconcile timings (default upstream's: TTL 30 s, renew 10 s, acquire 5 s, sweep 60 s). */
  lease?: Partial<LeaseTimings>;
  /**
   * 2026-08 test instrumentation: a pause between the read and the compare-and-swap of a supervisor
   * session's phase write, to widen the window another replica's row rewrite can fall into
   * (docs/interop.md U1). 0 (default) is upstream's timing.
   */
  debugSessionWriteDelayMs?: number;
}

export interface Gateway {
  port: number;
  healthPort: number;
  replica: string;
  protocol: Protocol;
  store: GatewayPersistence;
  /** 2026-08 only: the typed store, the JWT key directory in use and the reconciler-lease coordinator. */
  gen2?: { store: Gen2Store; jwtKeyDir: string; jwt: SandboxJwt; reconciler: ReconcilerCoordinator };
  registry: SessionRegistry;
  logs: LogBus;
  slots: SshSlots;
  close(): Promise<void>;
}

function listen(server: net.Server, host: string, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve((server.address() as net.AddressInfo).port);
    });
  });
}

export async function startGateway(opts: GatewayOptions): Promise<Gateway> {
  const logger = (opts.logger ?? pino({ level: 'silent' })).child({ replica: opts.replica });
  const host = opts.host ?? '127.0.0.1';
  const protocol: Protocol = opts.protocol ?? '2026-04';
  if (protocol === '2026-08' && !opts.databaseUrl) throw new Error('the 2026-08 gateway emulator needs a database URL');
  const gen2Store = protocol === '2026-08' && opts.databaseUrl ? new Gen2Store(opts.databaseUrl) : undefined;
  const store: GatewayPersistence = gen2Store ?? (opts.databaseUrl ? new GatewayStore(opts.databaseUrl) : new MemoryGatewayStore());
  await store.migrate();
  const registry = new SessionRegistry(opts.sessionWaitMs);
  const logs = new LogBus();
  const watch = new WatchBus();
  const slots = new SshSlots();
  let boundPort = 0;
  const ctx: GatewayContext = {
    replica: opts.replica,
    version: opts.version ?? '0.0.0-emulator',
    store,
    registry,
    logs,
    watch,
    logger,
    heartbeatIntervalSecs: opts.heartbeatIntervalSecs ?? 15,
    advertised: () => ({ host, port: boundPort, scheme: opts.tls ? 'https' : 'http' }),
  };

  let gen2: Gateway['gen2'];
  let gen2Ctx: Gen2Context | undefined;
  if (gen2Store) {
    const jwtKeyDir = opts.jwtKeyDir ?? createJwtKeyDir();
    const jwt = await SandboxJwt.load(jwtKeyDir, {
      gatewayId: opts.gatewayId ?? DEFAULT_GATEWAY_ID,
      ...(opts.sandboxJwtTtlSecs === undefined ? {} : { ttlSecs: opts.sandboxJwtTtlSecs }),
    });
    gen2Ctx = {
      ...ctx,
      store: gen2Store,
      slots,
      jwt,
      auth: { jwt, allowUnauthenticatedUsers: opts.allowUnauthenticatedUsers ?? true },
      serviceBaseDomains: opts.serviceBaseDomains ?? [DEFAULT_SERVICE_BASE_DOMAIN],
      syncLock: new SyncLock(),
      inflight: new Set(),
      lostSessionWrites: { ready: 0, disconnected: 0 },
      debug: { lifecycleConflicts: 0 },
      ...(opts.debugSessionWriteDelayMs ? { debugSessionWriteDelayMs: opts.debugSessionWriteDelayMs } : {}),
    };
    // Postgres: the reconciler-lease coordinator (the emulator's 2026-08 generation has no SQLite mode).
    const reconciler = new ReconcilerCoordinator(gen2Ctx, {
      replicaId: opts.replicaId ?? replicaIdFromEnv(),
      databaseUrl: opts.databaseUrl as string,
      ...(opts.lease ? { timings: opts.lease } : {}),
    });
    gen2 = { store: gen2Store, jwtKeyDir, jwt, reconciler };
  }

  const grpcServer = new grpc.Server({
    'grpc.max_receive_message_length': MAX_GRPC_MESSAGE_BYTES,
    'grpc.keepalive_permit_without_calls': 1,
    'grpc.http2.min_ping_interval_without_data_ms': 5_000,
    // 2026-08: server HTTP/2 keepalive PING every 20 s, 10 s timeout (reference §1.1, multiplex.rs@v0.0.111:310-315).
    ...(gen2Ctx ? { 'grpc.keepalive_time_ms': 20_000, 'grpc.keepalive_timeout_ms': 10_000 } : {}),
  });
  grpcServer.addService(openShellService(), gen2Ctx ? gen2ServiceImplementation(gen2Ctx) : gatewayServiceImplementation(ctx));
  const injector = grpcServer.createConnectionInjector(grpc.ServerCredentials.createInsecure());

  const httpServer = http.createServer(gen2Ctx ? gen2HttpHandler(gen2Ctx) : (req, res) => {
    // Plain HTTP routes of the seed gateway: /connect/ssh answers 405 to non-CONNECT methods.
    const path = (req.url ?? '').split('?')[0];
    if (path === '/connect/ssh') {
      res.writeHead(405, { 'content-type': 'text/plain', allow: 'CONNECT' }).end('method not allowed\n');
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
    }
  });
  if (gen2Ctx) {
    httpServer.on('upgrade', gen2UpgradeHandler(gen2Ctx));
    // No HTTP SSH route at 2026-08 (reference §8: CONNECT /connect/ssh removed in upstream #1029).
    httpServer.on('connect', (_req, socket) => {
      socket.on('error', () => undefined);
      writeStatus(socket, 404, 'not found');
    });
  } else {
    httpServer.on('connect', (req, socket, head) => handleSshConnect(ctx, slots, req, socket as net.Socket, head));
  }
  httpServer.on('clientError', (err, socket) => {
    logger.debug({ err: err.message }, 'malformed HTTP/1.1 request');
    if (socket.writable) writeStatus(socket, 400, 'bad request');
    else socket.destroy();
  });

  const sockets = new Set<net.Socket>();
  const dispatch = (socket: net.Socket): void => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    socket.on('error', (err) => logger.debug({ err: err.message }, 'connection error'));
    let buffered = Buffer.alloc(0);
    const onData = (chunk: Buffer): void => {
      buffered = Buffer.concat([buffered, chunk]);
      const n = Math.min(buffered.length, H2_PREFACE.length);
      const isPrefix = buffered.subarray(0, n).equals(H2_PREFACE.subarray(0, n));
      if (isPrefix && buffered.length < H2_PREFACE.length) return; // need more bytes
      socket.off('data', onData);
      socket.pause();
      socket.unshift(buffered);
      // http2 reads the unshifted bytes itself (socket.read() on the next tick), so the socket
      // must stay paused for it; the HTTP/1.1 parser gets them as 'data' once resumed.
      if (isPrefix) injector.injectConnection(socket);
      else {
        httpServer.emit('connection', socket);
        socket.resume();
      }
    };
    socket.on('data', onData);
  };

  // TCP_NODELAY at accept: connections reach the HTTP servers by hand (emit), so http.Server's own
  // default never applies; without it a tunnel's small writes wait on delayed ACKs (the sidecar's
  // public listener had the same fault, src/proxy/public-listener.ts).
  let server: net.Server;
  if (opts.tls) {
    const ca = opts.tls.clientCaFile ? readFileSync(opts.tls.clientCaFile) : undefined;
    server = tls.createServer(
      {
        noDelay: true,
        cert: readFileSync(opts.tls.certFile),
        key: readFileSync(opts.tls.keyFile),
        ALPNProtocols: ['h2', 'http/1.1'],
        ...(ca ? { ca, requestCert: true, rejectUnauthorized: true } : {}),
      },
      (s) => dispatch(s),
    );
    server.on('tlsClientError', (err) => logger.debug({ err: err.message }, 'tls handshake failed'));
  } else {
    server = net.createServer({ noDelay: true }, dispatch);
  }
  boundPort = await listen(server, host, opts.port ?? 0);

  const health = http.createServer((req, res) => {
    const path = (req.url ?? '').split('?')[0];
    if (path === '/healthz' || path === '/health') {
      res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
    } else if (path === '/readyz') {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ status: 'healthy', version: ctx.version }));
    } else if (path === '/debug/reconcile' && req.method === 'POST' && gen2) {
      // Emulator-only: a reconcile sweep now, on the lease holder (tests that need one at a known time).
      const reconciler = gen2.reconciler;
      reconciler.sweepNow().then(
        (swept) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ replicaId: reconciler.replicaId, swept })),
        (err: unknown) => res.writeHead(409, { 'content-type': 'application/json' }).end(JSON.stringify({ replicaId: reconciler.replicaId, swept: false, error: String(err) })),
      );
    } else if (path === '/debug/lifecycle-conflicts' && gen2Ctx) {
      // Emulator-only: POST ?count=N makes this replica's next N Stop/Start phase writes lose their
      // compare-and-swap to a concurrent rewrite of the row; GET says how many are left.
      const debug = gen2Ctx.debug;
      const count = Number(new URL(req.url ?? '', 'http://x').searchParams.get('count'));
      if (req.method === 'POST') {
        if (!Number.isInteger(count) || count < 0) {
          res.writeHead(400, { 'content-type': 'text/plain' }).end('count must be a whole number\n');
          return;
        }
        debug.lifecycleConflicts = count;
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ left: debug.lifecycleConflicts }));
    } else if (path === '/debug/sessions') {
      // Emulator-only introspection for tests and the demo.
      // 2026-08: `lease` says whether this replica holds the reconciler lease (and what it did with it).
      const lease = gen2?.reconciler.stats();
      res.writeHead(200, { 'content-type': 'application/json' }).end(
        JSON.stringify({
          replica: opts.replica,
          sandboxes: registry.sandboxIds(),
          slots: slots.held(),
          ...(gen2Ctx ? { lostSessionWrites: gen2Ctx.lostSessionWrites } : {}),
          ...(lease ? { replicaId: lease.replicaId, leaseHolder: lease.holder, lease } : {}),
        }),
      );
    } else {
      res.writeHead(404).end();
    }
  });
  const healthPort = await listen(health, opts.healthHost ?? host, opts.healthPort ?? 0);
  logger.info({ port: boundPort, healthPort }, 'gateway emulator listening');
  gen2?.reconciler.start();

  let closed = false;
  return {
    port: boundPort,
    healthPort,
    replica: opts.replica,
    protocol,
    store,
    gen2,
    registry,
    logs,
    slots,
    async close() {
      if (closed) return;
      closed = true;
      // A lease holder deletes the lease row before anything else goes (run_as_holder on shutdown).
      await gen2?.reconciler.close();
      registry.close();
      server.close();
      health.close();
      for (const s of sockets) s.destroy();
      grpcServer.forceShutdown();
      health.closeAllConnections();
      if (gen2Ctx) await Promise.allSettled([...gen2Ctx.inflight]);
      await store.close().catch(() => undefined);
    },
  };
}
