// The public listener: h2c and HTTP/1.1 on one port, told apart by the connection preface
// (as the gateway itself does, reference §1.1), with optional TLS in front.
import { lazyChild } from '../log/logger.ts';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import http2 from 'node:http2';
import https from 'node:https';
import net from 'node:net';
import tls from 'node:tls';
import type { Logger } from 'pino';
import { detectPreface } from '../classify/classify.ts';
import { LinkedSet } from '../linked-set.ts';
import { keepSessionStreamsYoung } from '../node-patches.ts';
import { ByteBudget } from './byte-budget.ts';
import type { ProxyContext } from './context.ts';
import { handlePublicStream } from './grpc-streams.ts';
import { guardHttp1 } from './http1-deadlines.ts';
import { H2Liveness } from './liveness.ts';
import { createServiceHttp } from './service-http.ts';
import type { DownstreamConnection } from './supervisor-streams.ts';
import { handleConnect, requestHead, spliceAfterResponseHead, writeHttpError, type HeadFailure } from './tunnel.ts';

const PREFACE_TIMEOUT_MS = 10_000;
/** How long an accepted connection goes before its TCP keepalive is turned on (at most). */
const KEEPALIVE_AFTER_MS = 1_000;

export interface PublicListener {
  server: net.Server;
  close(): Promise<void>;
  connections(): number;
  /**
   * Graceful GOAWAY to every client HTTP/2 connection (streams in flight finish, new ones go
   * elsewhere). Supervisor connections are left alone: their relays must still open on them.
   */
  goawayClients(): void;
}

export function createPublicListener(ctx: ProxyContext): PublicListener {
  const log = ctx.logger.child({ listener: 'public' });
  // Linked sets, not Sets: members that come and go by the thousand a second (src/linked-set.ts).
  const sockets = new LinkedSet<net.Socket>();
  const cfg = ctx.config;
  // A client that vanished without FIN or RST is found by the kernel's probes (tunnels and their
  // limit slots are released instead of renewed forever); HTTP/2 connections are PINGed as well.
  // Keepalive is turned on once a second for the connections accepted since that are still open,
  // not at accept: its four setsockopt calls were ~3 % of a short tunnel's CPU, and a connection
  // that lasts under a second needs no probe. A dead peer is found at most a second later.
  const young = new LinkedSet<net.Socket>();
  const keepalive = setInterval(() => {
    for (const socket of young) socket.setKeepAlive(true, cfg.tcpKeepaliveMs);
    young.clear();
  }, KEEPALIVE_AFTER_MS);
  keepalive.unref();

  const protect = (reason: string): void => ctx.metrics.protectionsTotal.inc({ reason });
  // One timer for every client connection: PING the silent ones, close the idle ones.
  const liveness = new H2Liveness({
    pingIntervalMs: cfg.h2PingIntervalMs,
    pingTimeoutMs: cfg.h2PingTimeoutMs,
    onClose: (why) => protect(why === 'idle' ? 'idle' : 'ping_timeout'),
  });
  const h2 = http2.createServer({
    settings: { initialWindowSize: cfg.h2InitialWindowBytes, maxHeaderListSize: cfg.maxHeaderBytes, maxConcurrentStreams: cfg.h2MaxConcurrentStreams },
    maxSessionMemory: 64,
  });
  const h2Conns = new LinkedSet<DownstreamConnection>();
  h2.on('session', (session) => {
    // Supervisor and client connections live for hours too (src/node-patches.ts).
    keepSessionStreamsYoung(session);
    const conn: DownstreamConnection = { id: ctx.nextConnId(), log: log, session, buffer: new ByteBudget(cfg.connectionBufferBytes) };
    const member = h2Conns.add(conn);
    liveness.watch(session, cfg.connectionIdleTimeoutMs);
    session.on('close', () => h2Conns.delete(member)); // `on`: see liveness.watch
    conn.log = lazyChild(log, { conn: conn.id, proto: 'h2' });
    session.on('error', (err) => conn.log.debug({ err: err.message }, 'downstream session error'));
    try {
      session.setLocalWindowSize(ctx.config.h2InitialWindowBytes);
    } catch {
      // already large enough
    }
    session.on('stream', (stream, headers) => {
      handlePublicStream(ctx, conn, stream, headers);
      // A connection that arrives while draining (the Service had not seen readiness turn false
      // yet) is served its first stream and told to go elsewhere for the next (GOAWAY): at exit it
      // would otherwise be cut with calls on it. A supervisor's is refused and closed anyway.
      if (ctx.drainState.draining && !conn.supervisorUpstream && !session.closed) session.close();
    });
  });
  h2.on('sessionError', (err) => log.debug({ err: err.message }, 'h2 session error'));

  const services = createServiceHttp(ctx, log);
  const h1 = http.createServer({ maxHeaderSize: cfg.maxHeaderBytes }, (req, res) => {
    const host = services.hostOf(req);
    if (host) services.web(req, res, host);
    else passthroughRequest(ctx, req, res);
  });
  const h1Deadlines = guardHttp1(h1, {
    headersTimeoutMs: cfg.headersTimeoutMs,
    requestTimeoutMs: cfg.requestTimeoutMs,
    onTimeout: (kind) => {
      protect(`${kind}_timeout`);
      log.info({ kind }, kind === 'headers' ? 'HTTP/1.1 request head not complete in time; connection closed' : 'HTTP/1.1 request body not complete in time; connection closed');
    },
  });
  h1.on('connect', (req, socket, head) => {
    const conn = ctx.nextConnId();
    handleConnect(ctx, lazyChild(log, { conn, proto: 'http1' }), req, socket as net.Socket, head);
  });
  h1.on('upgrade', (req, socket, head) => {
    const host = services.hostOf(req);
    if (host) services.upgrade(req, socket as net.Socket, head, host);
    else passthroughUpgrade(ctx, log, req, socket as net.Socket, head);
  });
  h1.on('clientError', (err: NodeJS.ErrnoException, socket) => {
    log.info({ err: err.code ?? err.message }, 'malformed HTTP/1.1 request refused');
    if (err.code === 'HPE_HEADER_OVERFLOW') writeHttpError(socket, 431, 'Request Header Fields Too Large', 'request headers too large');
    else writeHttpError(socket, 400, 'Bad Request', 'malformed request');
  });

  const dispatch = (socket: net.Socket): void => {
    const member = sockets.add(socket);
    const unprobed = young.add(socket);
    // `on`, not `once` (see liveness.watch); and made here, not beside the preface reader below,
    // whose scope (the connection's first bytes) would then stay with the connection for its life.
    socket.on('close', () => {
      sockets.delete(member);
      young.delete(unprobed);
    });
    socket.on('error', (err) => log.debug({ err: err.message }, 'client connection error'));
    readPreface(socket);
  };

  /** Reads the first bytes of a connection and hands it to the HTTP/2 or HTTP/1.1 server. */
  const readPreface = (socket: net.Socket): void => {
    let buffered: Buffer = Buffer.alloc(0);
    const timer = setTimeout(() => socket.destroy(), PREFACE_TIMEOUT_MS);
    timer.unref();
    const onData = (chunk: Buffer): void => {
      buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
      const kind = detectPreface(buffered);
      if (kind === 'need-more' && buffered.length < 64) return;
      clearTimeout(timer);
      socket.off('data', onData);
      socket.pause();
      if (kind === 'h2') {
        // http2 picks up the unshifted bytes itself with socket.read() on the next tick, so the
        // socket stays paused; resuming would emit them to nobody.
        socket.unshift(buffered);
        h2.emit('connection', socket);
        return;
      } else if (kind === 'http1') {
        socket.unshift(buffered);
        h1Deadlines.accept(socket);
        h1.emit('connection', socket);
      } else {
        log.info({ kind, remote: socket.remoteAddress }, 'connection with an unknown protocol refused');
        if (kind === 'tls') socket.destroy();
        else writeHttpError(socket, 400, 'Bad Request', 'unrecognised protocol');
        return;
      }
      socket.resume();
    };
    socket.on('data', onData);
  };

  // TCP_NODELAY on every accepted connection: connections are handed to the HTTP servers by hand,
  // so http.Server's own default never applies, and a `/_ws_tunnel` passthrough (and any HTTP/1.1
  // answer written in parts, and the client leg of a CONNECT tunnel forwarded to a peer) stalled on
  // the peer's delayed ACK, ~40 ms a message. This is the one place the client's side is set.
  let server: net.Server;
  const t = ctx.config.tls;
  if (t) {
    const ca = t.clientCaFile ? readFileSync(t.clientCaFile) : undefined;
    server = tls.createServer(
      {
        noDelay: true,
        cert: readFileSync(t.certFile),
        key: readFileSync(t.keyFile),
        ALPNProtocols: ['h2', 'http/1.1'],
        ...(ca ? { ca, requestCert: true, rejectUnauthorized: t.clientCertMode !== 'optional' } : {}),
      },
      dispatch,
    );
    server.on('tlsClientError', (err) => log.info({ err: err.message }, 'TLS handshake failed'));
  } else {
    server = net.createServer({ noDelay: true }, dispatch);
  }
  server.on('error', (err) => log.error({ err }, 'public listener error'));
  // Past maxConnections Node closes new connections at accept ('drop'); said once a second at most.
  server.maxConnections = cfg.maxConnections;
  let lastDropLog = 0;
  server.on('drop', (info) => {
    protect('max_connections');
    if (Date.now() - lastDropLog < 1000) return;
    lastDropLog = Date.now();
    log.warn({ remote: info?.remoteAddress, maxConnections: cfg.maxConnections }, 'connection refused: max connections reached');
  });

  return {
    server,
    connections: () => sockets.size,
    goawayClients: () => {
      for (const c of h2Conns) if (!c.supervisorUpstream && !c.session.closed) c.session.close();
    },
    close: () =>
      new Promise<void>((resolve) => {
        liveness.close();
        clearInterval(keepalive);
        server.close(() => resolve());
        for (const s of sockets) s.destroy();
      }),
  };
}

/** Plain HTTP/1.1 requests other than sandbox services are not sandbox-scoped: straight to the local gateway. */
function passthroughRequest(ctx: ProxyContext, req: http.IncomingMessage, res: http.ServerResponse): void {
  const headers: http.OutgoingHttpHeaders = {};
  for (const [k, v] of Object.entries(req.headers)) if (v !== undefined && !k.startsWith('x-ohs-')) headers[k] = v;
  const request = ctx.gateway.tls ? https.request : http.request;
  const up = request(
    { ...(ctx.gateway.tls ?? {}), host: ctx.gatewayHost, port: ctx.gatewayPort, method: req.method, path: req.url, headers },
    (upRes) => {
      res.writeHead(upRes.statusCode ?? 502, upRes.headers);
      upRes.pipe(res);
    },
  );
  // The connect timeout bounds the connect only: a slow answer (a long poll) is the gateway's business.
  up.once('socket', (s: net.Socket) => {
    if (!s.connecting) return;
    const timer = setTimeout(() => up.destroy(new Error('gateway connect timeout')), ctx.config.upstreamConnectTimeoutMs);
    timer.unref();
    s.once(ctx.gateway.tls ? 'secureConnect' : 'connect', () => clearTimeout(timer));
    s.once('close', () => clearTimeout(timer));
  });
  up.on('error', (err) => {
    if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain' }).end('gateway unavailable\n');
    else res.destroy(err);
  });
  req.on('error', () => up.destroy());
  res.on('close', () => {
    if (!up.writableFinished) up.destroy();
  });
  req.pipe(up);
}

/** Upgrades (e.g. /_ws_tunnel) are passed through byte for byte to the local gateway. */
function passthroughUpgrade(ctx: ProxyContext, log: Logger, req: http.IncomingMessage, socket: net.Socket, head: Buffer): void {
  socket.on('error', () => undefined);
  socket.pause();
  let connected = false;
  const upstream = ctx.gateway.connect(() => {
    connected = true;
    clearTimeout(connectTimer);
    upstream.write(requestHead(req));
    const ended = (_bytes: unknown, failure?: HeadFailure): void => {
      if (failure !== 'timeout') return;
      ctx.metrics.protectionsTotal.inc({ reason: 'response_timeout' });
      log.warn({ waitedMs: ctx.config.upstreamResponseTimeoutMs }, 'gateway did not answer the upgrade');
    };
    spliceAfterResponseHead(socket, upstream, (status) => status === 101, ended, { early: head, headTimeoutMs: ctx.config.upstreamResponseTimeoutMs });
  });
  const connectTimer = setTimeout(() => upstream.destroy(new Error('gateway connect timeout')), ctx.config.upstreamConnectTimeoutMs);
  connectTimer.unref();
  upstream.setNoDelay(true);
  // Past the connect, the response head reader or the splice answers for the upstream's errors
  // (a 502 written into an upgraded stream would reach the client as bytes of it).
  upstream.once('error', () => {
    clearTimeout(connectTimer);
    if (!connected) writeHttpError(socket, 502, 'Bad Gateway', 'gateway unavailable');
  });
  // The client gone before the gateway took the connection: nobody is waiting for it.
  socket.once('close', () => {
    if (upstream.connecting) upstream.destroy();
  });
}
