// The peer listener: other replicas' sidecars forward streams and tunnels here. Every stream is
// authenticated, hop-limited and checked against the sessions this replica really holds; a
// "not owner" answer goes out before anything reaches the gateway, so the sender may retry.
import { lazyChild } from '../log/logger.ts';
import http2 from 'node:http2';
import type { Logger } from 'pino';
import { handlePeerInspect, isPeerInspect } from '../admin/peer-inspect.ts';
import { copyRequestHeaders, forwardStream, respondGrpcError, type ForwardHandle } from '../proxy/h2-forward.ts';
import { RELAY_CLASSES, ROUTE_POLICY, type TrafficClass } from '../classify/classify.ts';
import { track } from '../proxy/stream-tracking.ts';
import { SHADOW_CLASS } from '../readiness/shadows.ts';
import { RELEASE_PATH, handleRelease } from './handoff.ts';
import { activeTraceHeaders, ATTR_CLASS, ATTR_REPLICA, ATTR_SANDBOX, streamSpan, tracingEnabled, withSpan } from '../tracing/tracing.ts';
import type { ProxyContext } from '../proxy/context.ts';
import { splice } from '../proxy/tunnel.ts';
import { watchPeerTls } from './peer-auth.ts';
import { keepSessionStreamsYoung } from '../node-patches.ts';
import { forgetSentHeaders } from '../proxy/sent-headers.ts';
import {
  NOT_OWNER_STATUS,
  PEER_AUTH,
  PEER_CLASS,
  PEER_EPOCH,
  PEER_ERROR,
  PEER_HOP,
  PEER_NOT_OWNER,
  PEER_ORIGIN,
  PEER_OWNER_HINT,
  PEER_SANDBOX,
  peerSecretMatches,
} from './protocol.ts';

/** Classes a peer may name; anything else is labelled `other` (bounded metric labels). */
const PEER_CLASSES = new Set<string>([...Object.keys(ROUTE_POLICY), SHADOW_CLASS, 'handoff']);

function peerClassLabel(value: string | string[] | undefined): string {
  return typeof value === 'string' && PEER_CLASSES.has(value) ? value : 'other';
}

function refuse(stream: http2.ServerHttp2Stream, status: number, error: string, extra: http2.OutgoingHttpHeaders = {}): void {
  if (stream.destroyed || stream.headersSent) return;
  stream.respond({ ':status': status, [PEER_ERROR]: error, ...extra }, { endStream: true });
  // The answer is complete; do not keep buffering a request body nobody will read (RFC 9113 §8.1).
  if (!stream.readableEnded) stream.close(http2.constants.NGHTTP2_NO_ERROR);
}

export function createPeerServer(ctx: ProxyContext): http2.Http2Server | http2.Http2SecureServer {
  const peerTls = ctx.peerAuth?.material;
  const h2Options = {
    settings: { initialWindowSize: ctx.config.h2InitialWindowBytes, enableConnectProtocol: false },
    maxSessionMemory: 64,
  };
  const log = ctx.logger.child({ listener: 'peer' });
  let server: http2.Http2Server | http2.Http2SecureServer;
  if (peerTls && ctx.peerAuth) {
    const secure = http2.createSecureServer({ ...h2Options, ...peerTls.serverOptions() });
    watchPeerTls(secure, ctx.peerAuth, log);
    server = secure;
  } else {
    server = http2.createServer(h2Options);
  }
  let authFailures = 0;
  server.on('session', (session) => {
    keepSessionStreamsYoung(session);
    session.on('error', (err) => log.debug({ err: err.message }, 'peer session error'));
    try {
      session.setLocalWindowSize(ctx.config.h2InitialWindowBytes);
    } catch {
      // already large enough
    }
  });
  server.on('sessionError', (err) => log.debug({ err: err.message }, 'peer session error'));
  server.on('stream', (stream, headers) => {
    stream.on('error', (err) => log.debug({ err: err.message }, 'peer stream error'));
    handlePeerStream(ctx, log, stream, headers, () => {
      authFailures++;
      // One line per failure burst, not per request: a scanner must not flood the log.
      if (authFailures === 1 || authFailures % 100 === 0) {
        log.warn({ failures: authFailures, origin: headers[PEER_ORIGIN] }, 'peer request with invalid credentials refused');
      }
    });
  });
  return server;
}

function handlePeerStream(
  ctx: ProxyContext,
  baseLog: Logger,
  stream: http2.ServerHttp2Stream,
  headers: http2.IncomingHttpHeaders,
  onAuthFailure: () => void,
): void {
  // The shared secret when one is set, the certificate's identity with peer mTLS: both when both.
  if ((!ctx.peerSecret && !ctx.peerAuth) || (ctx.peerSecret && !peerSecretMatches(headers[PEER_AUTH], ctx.peerSecret))) {
    onAuthFailure();
    // Unauthenticated input never becomes a label value: the label set stays bounded.
    ctx.metrics.forwardsTotal.inc({ class: 'unauthenticated', peer: 'inbound', outcome: 'auth_failed' });
    refuse(stream, 401, 'peer-auth');
    return;
  }
  const peerAuth = ctx.peerAuth;
  if (peerAuth) {
    const verdict = peerAuth.verifier.verify(stream.session, headers[PEER_ORIGIN]);
    if (verdict !== true) {
      verdict.then(
        (v) => {
          if (v.ok) handleVerifiedPeerStream(ctx, baseLog, stream, headers);
          else peerAuth.refuse(stream, headers[PEER_ORIGIN], v.reason);
        },
        () => peerAuth.refuse(stream, headers[PEER_ORIGIN], 'registry-unavailable'),
      );
      return;
    }
  }
  handleVerifiedPeerStream(ctx, baseLog, stream, headers);
}

function handleVerifiedPeerStream(ctx: ProxyContext, baseLog: Logger, stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): void {
  if (stream.destroyed) return;
  const sandboxId = String(headers[PEER_SANDBOX] ?? '');
  const cls = peerClassLabel(headers[PEER_CLASS]);
  // The ingress sidecar's forward span is the parent (traceparent on the peer hop).
  if (!tracingEnabled()) return handleAuthenticatedPeerStream(ctx, baseLog, stream, headers, sandboxId, cls);
  const span = streamSpan('ohs.peer', stream, headers, { [ATTR_SANDBOX]: sandboxId, [ATTR_CLASS]: cls, [ATTR_REPLICA]: ctx.store.replicaId, 'ohs.origin': String(headers[PEER_ORIGIN] ?? '') });
  withSpan(span, () => handleAuthenticatedPeerStream(ctx, baseLog, stream, headers, sandboxId, cls));
}

function handleAuthenticatedPeerStream(ctx: ProxyContext, baseLog: Logger, stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, sandboxId: string, cls: string): void {
  const hop = Number(headers[PEER_HOP] ?? '0');
  const epoch = Number(headers[PEER_EPOCH] ?? '-1');
  const log = lazyChild(baseLog, { origin: headers[PEER_ORIGIN], sandbox: sandboxId, class: cls });
  if (!Number.isInteger(hop) || hop < 1 || hop > ctx.config.hopLimit) {
    refuse(stream, 508, 'hop-limit');
    log.warn({ hop }, 'peer request over the hop limit refused');
    return;
  }
  if (isPeerInspect(headers)) {
    // status / explain / live page: read-only, answered from this replica's own state.
    handlePeerInspect(ctx.inspect, stream, headers).catch((err: unknown) => {
      log.warn({ err: (err as Error).message }, 'inspect failed');
      refuse(stream, 500, 'inspect-failed');
    });
    return;
  }
  if (!sandboxId) {
    refuse(stream, 400, 'missing-sandbox');
    return;
  }
  if (headers[':path'] === RELEASE_PATH && headers[':method'] === 'POST') {
    handleRelease(ctx, stream, headers, log).catch((err: unknown) => {
      log.warn({ err: (err as Error).message }, 'release failed');
      refuse(stream, 500, 'release-failed');
    });
    return;
  }
  if (cls === SHADOW_CLASS) {
    void hostShadow(ctx, log, stream, headers, sandboxId, epoch);
    return;
  }
  const inflight = ctx.localSessions.claimSettled(sandboxId);
  if (inflight) {
    // A claim here is being written: its announcement reached the sender first. Wait for it.
    void waitBounded(inflight, CLAIM_WAIT_MS).then(() => {
      if (!stream.destroyed) handleOwnedStream(ctx, log, stream, headers, sandboxId, epoch, cls);
    });
    return;
  }
  handleOwnedStream(ctx, log, stream, headers, sandboxId, epoch, cls);
}

const CLAIM_WAIT_MS = 2_000;
const { NGHTTP2_REFUSED_STREAM: REFUSED_STREAM } = http2.constants;

function waitBounded(p: Promise<void>, ms: number): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    t.unref();
    void p.then(() => {
      clearTimeout(t);
      resolve();
    });
  });
}

/** A stream for a sandbox this replica should own at `epoch`: answered "not owner" unless it does. */
function handleOwnedStream(ctx: ProxyContext, log: Logger, stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, sandboxId: string, epoch: number, cls: string): void {
  const held = ctx.localSessions.isShedding(sandboxId) ? undefined : ctx.localSessions.epoch(sandboxId);
  if (held === undefined || held !== epoch) {
    // Not (or no longer) the owner at that epoch: answer at once, nothing reached the gateway.
    ctx.metrics.forwardsTotal.inc({ class: cls, peer: 'inbound', outcome: 'not_owner' });
    log.info({ askedEpoch: epoch, heldEpoch: held ?? null }, 'answered not owner');
    refuse(stream, NOT_OWNER_STATUS, 'not-owner', {
      [PEER_NOT_OWNER]: '1',
      [PEER_OWNER_HINT]: held === undefined ? 'none' : `${ctx.store.replicaId}@${held}`,
    });
    return;
  }
  ctx.metrics.forwardsTotal.cell(cls, 'inbound', 'accepted').inc();
  if (headers[':method'] === 'CONNECT') {
    peerTunnel(ctx, log, stream);
    return;
  }
  const answered = RELAY_CLASSES.has(cls as TrafficClass) ? ctx.localSessions.beginRequest(sandboxId) : () => undefined;
  // A session claimed here a moment ago: first the gateway must have taken it (acceptedSettled).
  const gate = ctx.localSessions.acceptedSettled(sandboxId);
  const upHeaders = tracingEnabled() ? Object.assign(copyRequestHeaders(headers), activeTraceHeaders()) : copyRequestHeaders(headers);
  // Sent again on another connection, once, when the gateway took nothing of it: a pooled connection
  // that began closing between get() and request(), or a stream refused unprocessed (REFUSED_STREAM:
  // past the last stream id of a GOAWAY the gateway sent on shutdown). The sender cannot tell such a
  // refusal from a failure, so it is replayed here rather than answered UNAVAILABLE.
  const send = (prefix: Buffer | undefined, retries: number): void => {
    (gate ? gate.then(() => ctx.gatewayPool.get(ctx.gatewayOrigin)) : ctx.gatewayPool.get(ctx.gatewayOrigin)).then(
      (session) => {
        if (stream.destroyed) return answered();
        if (ctx.localSessions.isShedding(sandboxId) || ctx.localSessions.epoch(sandboxId) !== epoch) {
          // The session began leaving (a shed) or was replaced while we waited: nothing reached the
          // gateway, so the sender holds the request for the next owner.
          answered();
          ctx.metrics.forwardsTotal.inc({ class: cls, peer: 'inbound', outcome: 'not_owner' });
          log.info('session being shed while the stream waited; answered not owner');
          refuse(stream, NOT_OWNER_STATUS, 'not-owner', { [PEER_NOT_OWNER]: '1', [PEER_OWNER_HINT]: 'none' });
          return;
        }
        // Counted like the ingress' own streams: a drain lets them finish.
        const done = track(ctx, cls as TrafficClass, 'local');
        const again = (bytes: Buffer | undefined, why: string): void => {
          log.info({ why }, 'the gateway took nothing of the peer stream; sending it again on another connection');
          send(bytes, retries - 1);
        };
        let handle: ForwardHandle;
        try {
          handle = forwardStream(
            stream,
            session,
            upHeaders,
            {
              onResponse: () => {
                answered();
                return true;
              },
              onUpstreamError: (err) => {
                const replay = retries > 0 && handle.upstream.rstCode === REFUSED_STREAM ? handle.abandon() : null;
                if (replay) {
                  done('refused');
                  again(replay.bytes, 'refused stream');
                  return;
                }
                answered();
                respondGrpcError(stream, 14, `upstream failed: ${err.message}`);
              },
              onDone: ({ reset, grpcStatus }) => {
                answered();
                done(reset ? 'reset' : `grpc_${grpcStatus ?? 'none'}`);
              },
            },
            prefix,
          );
        } catch (err) {
          done('OHS_ERR_UPSTREAM');
          if (retries > 0) return again(prefix, `connection closing: ${(err as Error).message}`);
          answered();
          log.info({ err: (err as Error).message }, 'local gateway session closing');
          respondGrpcError(stream, 14, 'owner gateway unavailable');
        }
      },
      (err: unknown) => {
        answered();
        log.warn({ err: (err as Error).message }, 'local gateway unreachable for peer stream');
        respondGrpcError(stream, 14, 'owner gateway unavailable');
      },
    );
  };
  send(undefined, 1);
}

/** A forwarded tunnel: 200 first (we are the owner), then raw bytes to the local gateway. */
function peerTunnel(ctx: ProxyContext, log: Logger, stream: http2.ServerHttp2Stream): void {
  stream.respond({ ':status': 200 });
  forgetSentHeaders(stream);
  const upstream = ctx.gateway.connect();
  upstream.setNoDelay(true);
  upstream.once('error', (err) => log.warn({ err: err.message }, 'local gateway unreachable for peer tunnel'));
  const active = ctx.metrics.activeTunnels.cell('local');
  active.inc();
  splice(stream, upstream, () => active.dec());
}

/**
 * Another replica's sidecar registers its supervisor session on our gateway (a shadow, so that our
 * gateway's registry has the session when it composes phases, reference §10). Accepted only from the
 * sandbox's current owner at its current epoch, and never over a real session held here: a stale or
 * misdirected shadow must not supersede a live supervisor.
 */
async function hostShadow(ctx: ProxyContext, log: Logger, stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, sandboxId: string, epoch: number): Promise<void> {
  if (ctx.localSessions.epoch(sandboxId) !== undefined) {
    refuse(stream, 409, 'session-held-here');
    log.info('shadow refused: the real session is held here');
    return;
  }
  const origin = String(headers[PEER_ORIGIN] ?? '');
  let owner;
  try {
    owner = (await ctx.store.lookup(sandboxId, { fresh: true })).owner;
  } catch {
    refuse(stream, 503, 'store-unavailable');
    return;
  }
  if (!owner || owner.replicaId !== origin || owner.epoch !== epoch) {
    refuse(stream, 409, 'stale-shadow');
    log.info({ owner: owner ? `${owner.replicaId}@${owner.epoch}` : null }, 'shadow refused: the sender is not the current owner');
    return;
  }
  if (stream.destroyed) return;
  let lease;
  try {
    lease = await ctx.shadowUpstreams.acquire();
  } catch (err) {
    log.warn({ err: (err as Error).message }, 'local gateway unreachable for a shadow registration');
    respondGrpcError(stream, 14, 'gateway unavailable');
    return;
  }
  const unhost = (): void => {
    const n = (ctx.hostedShadows.get(sandboxId) ?? 1) - 1;
    if (n <= 0) ctx.hostedShadows.delete(sandboxId);
    else ctx.hostedShadows.set(sandboxId, n);
  };
  ctx.hostedShadows.set(sandboxId, (ctx.hostedShadows.get(sandboxId) ?? 0) + 1);
  try {
    forwardStream(stream, lease.session, copyRequestHeaders(headers), {
      onDone: () => {
        lease.release();
        ctx.metrics.shadowsHosted.dec();
        unhost();
      },
    });
    ctx.metrics.shadowsHosted.inc();
  } catch (err) {
    unhost();
    lease.release();
    log.info({ err: (err as Error).message }, 'gateway connection closing; shadow refused');
    respondGrpcError(stream, 14, 'gateway unavailable');
  }
}
