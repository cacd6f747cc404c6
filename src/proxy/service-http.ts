// Browser traffic to sandbox services over HTTP/1.1, plain requests and WebSocket upgrades
// (2026-08, reference §2.7). The Host names the sandbox (`<ws>--<sandbox>[--<svc>].<base>`), the
// gateway's `service_endpoint` row maps it to a sandbox id, and the request goes to the gateway
// holding that sandbox's supervisor session. Proxying is http-proxy-3's; what is ours is where
// each request goes. A request for another replica rides one peer tunnel (an HTTP/2 CONNECT
// stream to that replica's sidecar, which splices it to its gateway), with the client's own Host.
import http from 'node:http';
import http2 from 'node:http2';
import https from 'node:https';
import type net from 'node:net';
import type { Duplex } from 'node:stream';
import { createProxyServer, type ProxyTarget } from 'http-proxy-3';
import type { Logger } from 'pino';
import { parseServiceHost, type ServiceHost } from '../classify/service-host.ts';
import { NOT_OWNER_STATUS, PEER_NOT_OWNER, withPeerHeaders } from '../peers/protocol.ts';
import type { PeerTarget, Target } from '../routing/router.ts';
import type { ProxyContext } from './context.ts';
import { writeHttpError } from './tunnel.ts';

const NO_OWNER: Target = { kind: 'local', epoch: null, reason: 'no-owner' };

/** A request to our gateway for a session held here: ended once the gateway answered (it has then sent its RelayOpen). */
const ANSWERED = Symbol('ohs.service.answered');
/** Where an upgrade went: the local gateway, or the owner's through a peer tunnel. */
const TARGET = Symbol('ohs.service.target');
/** Set once the gateway answered an upgrade: from then on the client's socket carries its bytes only. */
const UPGRADE_ANSWERED = Symbol('ohs.service.upgradeAnswered');
type Tracked = http.IncomingMessage & { [ANSWERED]?: () => void; [TARGET]?: 'local' | 'peer'; [UPGRADE_ANSWERED]?: boolean };
const answered = (req: http.IncomingMessage): void => (req as Tracked)[ANSWERED]?.();

/**
 * The HTTP client and http-proxy-3 tune the socket they are given (Nagle, keepalive): on a tunnel
 * stream those TCP options belong to the peer connection underneath, so they are no-ops here.
 */
function asSocket(stream: http2.ClientHttp2Stream): Duplex {
  const tunnel = stream as http2.ClientHttp2Stream & { setNoDelay?: () => unknown; setKeepAlive?: () => unknown };
  tunnel.setNoDelay = () => tunnel;
  tunnel.setKeepAlive = () => tunnel;
  return tunnel;
}

/** One HTTP/1.1 connection's worth of bytes to the owner's gateway, through its sidecar. */
class PeerTunnelAgent extends http.Agent {
  constructor(
    private readonly ctx: ProxyContext,
    private readonly target: PeerTarget,
    private readonly sandboxId: string,
  ) {
    super({ keepAlive: false });
  }

  override createConnection(_options: unknown, callback?: (err: Error | null, stream: Duplex) => void): undefined {
    const done = callback ?? (() => undefined);
    this.ctx.peerPool.get(this.target.peerUrl).then(
      (session) => {
        let stream: http2.ClientHttp2Stream;
        try {
          stream = session.request(
            withPeerHeaders(
              { ':method': 'CONNECT', ':authority': 'openshell-service' },
              { secret: this.ctx.peerSecret ?? '', origin: this.ctx.store.replicaId, sandboxId: this.sandboxId, epoch: this.target.epoch, cls: 'service-http', hop: 1 },
            ),
          );
        } catch (err) {
          done(err as Error, undefined as unknown as Duplex);
          return;
        }
        stream.once('error', (err) => done(err, stream));
        stream.once('response', (h) => {
          const status = Number(h[':status']);
          if (status === 200) {
            done(null, asSocket(stream));
            return;
          }
          stream.close(http2.constants.NGHTTP2_CANCEL);
          const why = status === NOT_OWNER_STATUS && h[PEER_NOT_OWNER] !== undefined ? 'not the owner any more' : `refused (${status})`;
          done(new Error(`owner replica ${this.target.replicaId} ${why}`), stream);
        });
      },
      (err: unknown) => done(err as Error, undefined as unknown as Duplex),
    );
    return undefined;
  }
}

/** The gateway (ours or, through its sidecar, the owner's) sent no answer to an upgrade in time. */
class NoAnswer extends Error {
  constructor(readonly waitedMs: number) {
    super(`gateway sent no response within ${waitedMs} ms`);
  }
}

/** No session here and only a shadow on our gateway: answered 502 without asking the gateway. */
class NoSessionHere extends Error {
  constructor() {
    super('no supervisor session for the sandbox on this replica');
  }
}

export interface ServiceHttp {
  /** The service host a request names, or undefined when it is not a service request. */
  hostOf(req: http.IncomingMessage): ServiceHost | undefined;
  web(req: http.IncomingMessage, res: http.ServerResponse, host: ServiceHost): void;
  upgrade(req: http.IncomingMessage, socket: net.Socket, head: Buffer, host: ServiceHost): void;
}

export function createServiceHttp(ctx: ProxyContext, baseLog: Logger): ServiceHttp {
  const log = baseLog.child({ class: 'service-http' });
  // The client's Host is kept: the owner's gateway routes on it too (reference §2.7).
  const proxy = createProxyServer({ changeOrigin: false, xfwd: false, ws: true, proxyTimeout: 0 });
  // What a shed waits for (as for gRPC relay requests): the gateway's answer, or the end.
  proxy.on('proxyRes', (_proxyRes, req) => answered(req));
  proxy.on('proxyReqWs', (proxyReq, req) => {
    // A gateway that never answers the upgrade is bounded like a tunnel's (tunnel.ts).
    const silent = setTimeout(() => proxyReq.destroy(new NoAnswer(ctx.config.upstreamResponseTimeoutMs)), ctx.config.upstreamResponseTimeoutMs);
    silent.unref();
    const end = (): void => {
      clearTimeout(silent);
      answered(req);
    };
    const gatewayAnswered = (): void => {
      (req as Tracked)[UPGRADE_ANSWERED] = true;
      end();
    };
    proxyReq.once('upgrade', gatewayAnswered);
    proxyReq.once('response', gatewayAnswered);
    proxyReq.once('close', end);
  });
  proxy.on('error', (err, req, resOrSocket) => {
    answered(req);
    if (err instanceof NoAnswer) {
      ctx.metrics.requestsTotal.inc({ class: 'service-http', target: (req as Tracked)[TARGET] ?? 'local', outcome: 'OHS_ERR_TIMEOUT' });
      ctx.metrics.protectionsTotal.inc({ reason: 'response_timeout' });
      log.warn({ waitedMs: err.waitedMs }, 'gateway did not answer the service upgrade');
      writeHttpError(resOrSocket as net.Socket, 504, 'Gateway Timeout', err.message);
      return;
    }
    log.info({ err: err.message }, 'service request failed');
    if (resOrSocket instanceof http.ServerResponse) {
      if (!resOrSocket.headersSent) resOrSocket.writeHead(502, { 'content-type': 'text/plain; charset=utf-8' }).end('sandbox service unavailable\n');
      else resOrSocket.destroy();
    } else if ((req as Tracked)[UPGRADE_ANSWERED]) {
      // The gateway's answer went out: an error of ours would reach the client as bytes of its stream.
      (resOrSocket as net.Socket).destroy();
    } else {
      writeHttpError(resOrSocket as net.Socket, 502, 'Bad Gateway', 'sandbox service unavailable');
    }
  });

  /** Where the request goes, and how: the local gateway, or the owner through a peer tunnel. */
  // In front of a TLS gateway the local hop is https with the gateway's CA (peer tunnels are spliced
  // to the owner's gateway by its own sidecar, which speaks TLS there).
  // The agent carries the gateway's TLS settings, its server name included: left to Node, the TLS
  // server name would come from the client's Host (the service subdomain), not the gateway's name.
  const localAgent = ctx.gateway.tls ? new https.Agent({ ...ctx.gateway.tls, keepAlive: true }) : undefined;
  const local = { target: ctx.gateway.origin, ...(localAgent ? { agent: localAgent } : {}), where: 'local' };
  const route = async (req: http.IncomingMessage, host: ServiceHost): Promise<{ target: ProxyTarget; agent?: http.Agent; where: string }> => {
    for (const name of Object.keys(req.headers)) if (name.startsWith('x-ohs-')) delete req.headers[name];
    const sandboxId = await ctx.sandboxKeys.byServiceHost(host);
    // Unknown service: the local gateway answers 404 as it would without us.
    if (sandboxId === undefined) return local;
    for (let attempt = 0; attempt < 2; attempt++) {
      const target = ctx.router.resolveCached(sandboxId) ?? (await ctx.router.resolveHeld(sandboxId)) ?? NO_OWNER;
      if (target.kind === 'peer') {
        // Through a peer tunnel the bytes are plain HTTP/1.1 to the owner's sidecar.
        return { target: `http://${ctx.gatewayHost}:${ctx.gatewayPort}`, agent: new PeerTunnelAgent(ctx, target, sandboxId), where: target.replicaId };
      }
      if (target.reason !== 'owner') {
        // Our gateway holds only another replica's shadow of the session: it would send its
        // RelayOpen down the shadow, where nobody answers. The gateway's own answer for a sandbox
        // with no session is a 502.
        if (ctx.hostedShadows.has(sandboxId)) throw new NoSessionHere();
        return local;
      }
      // The session is held here: as for gRPC relay requests, a shed waits for this one's answer, a
      // session claimed a moment ago is first taken by the gateway, and a session that began leaving
      // meanwhile sends the request to its next owner instead.
      const epoch = ctx.localSessions.epoch(sandboxId);
      const end = ctx.localSessions.beginRequest(sandboxId);
      const gate = ctx.localSessions.acceptedSettled(sandboxId);
      if (gate) await gate;
      if (ctx.localSessions.isShedding(sandboxId) || ctx.localSessions.epoch(sandboxId) !== epoch) {
        end();
        continue;
      }
      (req as Tracked)[ANSWERED] = end;
      return local;
    }
    return local;
  };

  return {
    hostOf: (req) => parseServiceHost(req.headers.host ?? '', ctx.config.serviceBaseDomains),
    web(req, res, host) {
      route(req, host).then(
        ({ target, agent, where }) => {
          ctx.metrics.requestsTotal.inc({ class: 'service-http', target: where === 'local' ? 'local' : 'peer', outcome: 'forwarded' });
          res.once('close', () => answered(req));
          void proxy.web(req, res, { target, ...(agent ? { agent } : {}) });
        },
        (err: unknown) => {
          if (err instanceof NoSessionHere) {
            ctx.metrics.requestsTotal.inc({ class: 'service-http', target: 'none', outcome: 'OHS_ERR_NO_OWNER' });
            log.info('no owner, and the local gateway holds only a shadow of the session: answered here');
            if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain; charset=utf-8' }).end('sandbox service unavailable\n');
            return;
          }
          log.warn({ err: (err as Error).message }, 'service request could not be routed');
          if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain; charset=utf-8' }).end('sandbox service unavailable\n');
        },
      );
    },
    upgrade(req, socket, head, host) {
      socket.on('error', () => undefined);
      route(req, host).then(
        ({ target, agent, where }) => {
          const to = where === 'local' ? 'local' : 'peer';
          (req as Tracked)[TARGET] = to;
          ctx.metrics.requestsTotal.inc({ class: 'service-http', target: to, outcome: 'upgrade' });
          socket.once('close', () => answered(req));
          void proxy.ws(req, socket, head, { target, ...(agent ? { agent } : {}) });
        },
        () => writeHttpError(socket, 502, 'Bad Gateway', 'sandbox service unavailable'),
      );
    },
  };
}
