// Supervisor connections (DESIGN §3, §4): the control stream claims ownership, fences the previous
// owner and then reaches the local gateway over a 1:1 upstream connection that also carries the
// supervisor's RelayStreams; claims and releases outlive a Postgres outage.
import http2 from 'node:http2';
import type { Logger } from 'pino';
import type { TrafficClass } from '../classify/classify.ts';
import { authorizeHello } from '../auth/hello-auth.ts';
import { fencePreviousOwner } from '../peers/handoff.ts';
import type { OwnerRecord } from '../ownership/types.ts';
import type { ByteBudget } from './byte-budget.ts';
import type { ProxyContext } from './context.ts';
import { forwardStream, OPEN_STREAM, respondGrpcError, type ForwardHandle, type ForwardOptions } from './h2-forward.ts';
import { connectSession, sessionUsable } from './h2-sessions.ts';
import { forwardLocal } from './local-forward.ts';
import { GRPC_FRAME_HEADER_BYTES } from '../wire/grpc-frame.ts';
import { gatewayRelayOpenChannel, PHASE_READY, supervisorRelayOpenFailure } from '../wire/gateway-payloads.ts';
import { messageWatcher, PendingRelays, RELAY_PENDING_MS, relayInitChannel } from './pending-relays.ts';
import { track } from './stream-tracking.ts';

/** State of one downstream HTTP/2 connection. */
export interface DownstreamConnection {
  id: string;
  log: Logger;
  session: http2.ServerHttp2Session;
  /**
   * The 'error' listener of every stream on this connection (made once per connection: a closure
   * per stream would keep that stream's routing state alive as long as the stream).
   */
  onStreamError?: (err: Error) => void;
  /** First-message bytes this connection may have buffered at once (config connectionBufferBytes). */
  buffer?: ByteBudget;
  /**
   * Set once a ConnectSupervisor stream arrives: the 1:1 upstream connection to the local
   * gateway that carries this supervisor's control stream and all its RelayStreams (DESIGN §3).
   */
  supervisorUpstream?: Promise<http2.ClientHttp2Session>;
  /** RelayStreams open on this connection (a shed session keeps them until they finish). */
  activeRelays?: number;
  /** RelayStreams ever opened on this connection. */
  relaysOpened?: number;
  /** RelayOpens the gateway sent down the control stream whose RelayStream has not arrived yet. */
  pendingRelays?: PendingRelays;
  /**
   * A shed control stream is parked on the upstream connection (the gateway keeps the session
   * registered): the upstream connection outlives the supervisor's until it ends.
   */
  parked?: boolean;
}

function connectSupervisorUpstream(ctx: ProxyContext, conn: DownstreamConnection): Promise<http2.ClientHttp2Session> {
  if (!conn.supervisorUpstream) {
    const p = connectSession(ctx.gatewayOrigin, {
      connectTimeoutMs: ctx.config.upstreamConnectTimeoutMs,
      windowBytes: ctx.config.h2InitialWindowBytes,
      keepaliveMs: ctx.config.tcpKeepaliveMs,
      ...(ctx.gateway.tls ? { tls: ctx.gateway.tls } : {}),
    });
    conn.supervisorUpstream = p;
    p.then(
      (up) => {
        // 1:1 pairing: whichever side closes first closes the other, so the gateway's keepalive
        // and disconnect handling see exactly what the supervisor's connection does.
        const closeDown = (): void => {
          if (!conn.session.destroyed) conn.session.destroy();
        };
        // `on`, not `once`, for listeners a connection keeps for hours (see liveness.watch).
        up.on('close', closeDown);
        conn.session.on('close', () => {
          up.off('close', closeDown);
          if (!conn.parked && !up.destroyed) up.destroy();
        });
        if (conn.session.destroyed) up.destroy();
      },
      () => undefined,
    );
  }
  return conn.supervisorUpstream;
}

export async function forwardOnSupervisorConnection(
  ctx: ProxyContext,
  conn: DownstreamConnection,
  stream: http2.ServerHttp2Stream,
  headers: http2.OutgoingHttpHeaders,
  cls: TrafficClass,
  log: Logger,
  prefix?: Buffer,
  onDone?: () => void,
  onAnswered?: () => void,
): Promise<ForwardHandle | undefined> {
  let up: http2.ClientHttp2Session;
  try {
    up = await connectSupervisorUpstream(ctx, conn);
  } catch (err) {
    log.warn({ err: (err as Error).message }, 'local gateway unreachable for supervisor connection');
    ctx.metrics.requestsTotal.inc({ class: cls, target: 'local', outcome: 'OHS_ERR_UPSTREAM' });
    respondGrpcError(stream, 14, 'gateway unavailable');
    onDone?.();
    conn.session.destroy();
    return undefined;
  }
  if (!sessionUsable(up)) {
    // The gateway closed this supervisor's connection (GOAWAY, restart): the pairing closes the
    // supervisor's side too, and it reconnects. Nothing was sent.
    log.info('supervisor upstream connection is closing; stream refused');
    respondGrpcError(stream, 14, 'gateway connection closing; reconnect');
    onDone?.();
    return undefined;
  }
  const done = track(ctx, cls, 'local');
  const relay = cls === 'supervisor-relay';
  if (relay) {
    conn.activeRelays = (conn.activeRelays ?? 0) + 1;
    conn.relaysOpened = (conn.relaysOpened ?? 0) + 1;
  }
  const watchers = relayWatchers(conn, cls);
  // One literal with every key, absent ones undefined: the options of every supervisor stream share
  // one shape (spread in, each one had a hidden class of its own, ~0.4 KB held per session).
  return forwardStream(
    stream,
    up,
    headers,
    {
      onRequestChunk: watchers.onRequestChunk,
      onResponseChunk: watchers.onResponseChunk,
      onResponse: onAnswered
        ? (h: http2.IncomingHttpHeaders) => {
            // A trailers-only answer is a refusal (NOT_FOUND, PERMISSION_DENIED…): no session.
            if (h['grpc-status'] === undefined) onAnswered();
            return true;
          }
        : undefined,
      onDone: ({ reset, grpcStatus }) => {
        if (relay) conn.activeRelays = (conn.activeRelays ?? 1) - 1;
        done(reset ? 'reset' : `grpc_${grpcStatus ?? 'none'}`);
        onDone?.();
      },
    },
    prefix,
  );
}

/**
 * Watches the few messages that tell which relays the gateway is waiting for: RelayOpen going down
 * the control stream, a failed RelayOpenResult coming up it, and each RelayStream's init frame.
 */
function relayWatchers(conn: DownstreamConnection, cls: TrafficClass): Pick<ForwardOptions, 'onRequestChunk' | 'onResponseChunk'> {
  if (cls === 'supervisor-control') {
    const pending = (conn.pendingRelays ??= new PendingRelays());
    return {
      onResponseChunk: messageWatcher((m) => {
        const channel = gatewayRelayOpenChannel(m);
        if (channel !== undefined) pending.opened(channel);
        return true;
      }),
      onRequestChunk: messageWatcher((m) => {
        const failed = supervisorRelayOpenFailure(m);
        if (failed !== undefined) pending.settled(failed);
        return true;
      }),
    };
  }
  if (cls === 'supervisor-relay') {
    return {
      // Only the init frame: then the watcher stops.
      onRequestChunk: messageWatcher((m) => {
        const channel = relayInitChannel(m);
        if (channel !== undefined) conn.pendingRelays?.settled(channel);
        return false;
      }),
    };
  }
  return {};
}

/** ConnectSupervisor: this replica becomes the owner (last connect wins), then the stream goes to the local gateway. */
export async function supervisorControl(
  ctx: ProxyContext,
  conn: DownstreamConnection,
  stream: http2.ServerHttp2Stream,
  headers: http2.OutgoingHttpHeaders,
  sandboxId: string,
  frameBytes: Buffer,
  log: Logger,
): Promise<void> {
  const helloAt = Date.now();
  const auth = await authorizeHello(ctx, conn.session.socket as { encrypted?: boolean; authorized?: boolean } | undefined, headers.authorization as string | string[] | undefined, sandboxId);
  if (!auth.ok) {
    // No claim, no fence, no session of ours: the gateway sees the Hello as sent and refuses it.
    ctx.metrics.unverifiedHellosTotal.inc({ reason: auth.reason });
    log.info({ reason: auth.reason }, 'supervisor hello not verified; passed to the gateway without any ownership change');
    await forwardLocal(ctx, stream, headers, 'supervisor-control', log, frameBytes);
    return;
  }
  if (auth.via === 'seed-unauthenticated') warnSeedUnauthenticated(log);
  if (ctx.drainState.draining) {
    // A draining replica takes no new sessions: UNAVAILABLE (never an OK end, which would stop the
    // supervisor's reconnect loop) sends it back through the Service, which no longer lists us.
    ctx.metrics.sessionsShedTotal.inc({ reason: 'refused-draining' });
    log.info('supervisor refused: this replica is draining');
    respondGrpcError(stream, 14, 'gateway replica is draining; reconnect');
    return;
  }
  let epoch = 0;
  let previous: OwnerRecord | null = null;
  const claimDone = ctx.localSessions.beginClaim(sandboxId);
  try {
    const claim = await ctx.store.claim(sandboxId);
    epoch = claim.owner.epoch;
    previous = claim.previous;
    ctx.metrics.ownerClaimsTotal.inc();
    if (previous && previous.replicaId !== ctx.store.replicaId) ctx.metrics.ownershipChangesTotal.inc();
    log.info({ epoch, previous: previous ? `${previous.replicaId}@${previous.epoch}` : null }, 'supervisor connected; ownership claimed');
  } catch (err) {
    // The store being down must not keep a supervisor from its gateway: accept it locally and
    // write the ownership once Postgres is back (DESIGN §4, outages).
    log.warn({ err: (err as Error).message }, 'ownership claim failed; accepting supervisor locally, claim retried until the store is back');
    retryClaimLater(ctx, sandboxId, log);
  }
  // Handing a parked session over, and mirroring it as shadows on the other replicas' gateways
  // (reference §10), replay the supervisor's registration (its headers and Hello): only for sessions
  // proven by a sandbox JWT on a gateway with the lease. Kept only then: the closures below hold
  // this, never the headers or the first-message bytes themselves, which other sessions let go.
  const registration =
    auth.via === 'jwt' && ctx.shadows !== undefined && epoch > 0 && !ctx.gatewayWatch.nativeHa() ? { headers, hello: helloFrame(frameBytes) } : undefined;
  // Closing the downstream connection and its 1:1 upstream is what a fence asks of us: the
  // gateway sees the disconnect and makes its Provisioning write (reference §6).
  /** The control stream's forward, set once the Hello went to the gateway. */
  const control: { handle?: ForwardHandle } = {};
  let parkTimer: NodeJS.Timeout | undefined;
  let parkCounted = false;
  const parkEnded = (outcome: 'handed_over' | 'closed' | 'expired' | 'superseded' | 'ended'): void => {
    if (parkCounted) return;
    parkCounted = true;
    ctx.metrics.parkedSessionsTotal.inc({ outcome });
  };
  /** A parked session nobody fenced in time: its registration ends, with the gateway's write. */
  const endPark = (): void => {
    const handle = control.handle;
    if (!conn.parked || !handle || ctx.localSessions.current(sandboxId) !== sessionId) return;
    log.info({ parkedMs: ctx.config.shedParkMs }, 'shed supervisor did not reconnect anywhere within the park bound; ending its gateway registration');
    parkEnded('expired');
    ctx.localSessions.markShedding(sandboxId, waitForDisconnectWrite(ctx, sandboxId, log, () => handle.upstream.close(http2.constants.NGHTTP2_CANCEL)));
  };
  const shed = (reason: string): void => {
    // First no new requests (they wait for the next owner), and a moment for relays the gateway just
    // asked for to arrive; then the control stream ends with UNAVAILABLE and the supervisor
    // reconnects through the Service. The connection and its open relays stay until they finish.
    // The gateway's side of the stream stays open (parked): the gateway keeps the session
    // registered, so the sandbox stays Ready while its supervisor is in backoff, and the next
    // owner's fence hands the registration over (or closes it, and waits for the disconnect write,
    // which lands before the new owner's Ready). Without parking, the write comes now and the
    // ownership row stays until it did.
    ctx.metrics.sessionsShedTotal.inc({ reason });
    // No longer part of this replica's share (rebalancing, heartbeats), though it stays parked.
    ctx.metrics.supervisorSessions.set(ctx.localSessions.held);
    ctx.store.setSessionCount(ctx.localSessions.held);
    log.info({ reason, relays: conn.activeRelays ?? 0 }, 'shedding supervisor session');
    const message = `gateway replica ${reason}; reconnect`;
    const waited = (async () => {
      await settleBeforeShed(ctx, conn, sandboxId);
      const handle = control.handle;
      // Only with the store reachable: a fence then comes with the next owner's claim. Without it the
      // next owner accepts the supervisor unclaimed, nobody fences, and a parked registration
      // ending later would write Provisioning over its Ready.
      if (handle && ctx.config.shedParkMs > 0 && ctx.localSessions.current(sandboxId) === sessionId && storeReachable(ctx)) {
        conn.parked = true;
        handle.detach(14, message);
        parkTimer = setTimeout(endPark, ctx.config.shedParkMs);
        parkTimer.unref();
        log.debug('control stream parked on the gateway until the next owner fences it');
        return;
      }
      await waitForDisconnectWrite(ctx, sandboxId, log, () => handle?.terminate(14, message));
    })();
    ctx.localSessions.markShedding(sandboxId, waited);
  };
  /**
   * Fence of the parked session by the supervisor's next owner: the same registration (the
   * supervisor's own headers and Hello) is made again on our gateway, which supersedes the parked
   * one without a demoting cleanup, and stays as a shadow of the new owner's session until the
   * new owner's own shadow supersedes it. The shadows on the other gateways stay the same way.
   */
  let handingOver = false;
  const handOver = async (): Promise<boolean> => {
    if (!conn.parked || registration === undefined) return false;
    clearTimeout(parkTimer);
    // From here the parked stream's end (the gateway superseding it) is part of the hand-over.
    handingOver = true;
    const registered = await registerOnLocalGateway(ctx, sandboxId, registration.headers, registration.hello, log);
    if (!registered) {
      handingOver = false;
      return false;
    }
    parkEnded('handed_over');
    // Usually done already: the superseded stream ended (release). If not, it ends without a write.
    release();
    log.info('parked session handed over to the next owner: its gateway registration was superseded, no demotion');
    return true;
  };
  const sessionId = ctx.localSessions.set(
    sandboxId,
    epoch,
    () => {
      clearTimeout(parkTimer);
      if (conn.parked) parkEnded('closed');
      conn.parked = false;
      conn.session.destroy();
      void conn.supervisorUpstream?.then((up) => up.destroy(), () => undefined);
      // Shadows go with the real session, before the fence is acknowledged (reference §10).
      void ctx.shadows?.drop(sandboxId);
    },
    { shed, relays: () => conn.activeRelays ?? 0, handOver },
  );
  claimDone();
  ctx.metrics.supervisorSessions.set(ctx.localSessions.held);
  ctx.store.setSessionCount(ctx.localSessions.held);
  const release = (): void => {
    clearTimeout(parkTimer);
    if (conn.parked) {
      // The parked stream ended: its upstream connection goes once the supervisor's has.
      if (!handingOver) parkEnded(ctx.localSessions.current(sandboxId) === sessionId ? 'ended' : 'superseded');
      conn.parked = false;
      if (conn.session.destroyed) void conn.supervisorUpstream?.then((up) => up.destroy(), () => undefined);
    }
    // Only this stream's entry: a newer stream for the same sandbox may have replaced it.
    const held = ctx.localSessions.removeSession(sandboxId, sessionId);
    if (held === undefined) return;
    ctx.metrics.supervisorSessions.set(ctx.localSessions.held);
    ctx.store.setSessionCount(ctx.localSessions.held);
    if (handingOver) {
      // The new owner holds the row; the shadows stay until its registrations supersede them.
      ctx.shadows?.handOver(sandboxId, HANDED_OVER_LINGER_MS);
      return;
    }
    log.info({ epoch: held }, 'supervisor disconnected; releasing ownership');
    void ctx.shadows?.drop(sandboxId);
    if (held <= 0) return;
    const shedding = ctx.localSessions.shedSettled(sandboxId);
    if (shedding) void shedding.then(() => releaseOwnership(ctx, sandboxId, held, log));
    else releaseOwnership(ctx, sandboxId, held, log);
  };
  // Once the local gateway took the session, mirror it on the other replicas' gateways so that the
  // reconciler-lease holder, wherever it is, sees it (reference §10). Seed gateways have no lease
  // and no such demotion.
  const mirror = registration
    ? () => {
        if (ctx.localSessions.epoch(sandboxId) === epoch) ctx.shadows?.add(sandboxId, epoch, registration.headers, registration.hello);
      }
    : undefined;
  if (epoch > 0) await fencePreviousOwner(ctx, sandboxId, previous, log);
  if (stream.destroyed) {
    release();
    return;
  }
  log.debug({ holdMs: Date.now() - helloAt }, 'hello released to the local gateway');
  const accepted = (): void => {
    ctx.localSessions.markAccepted(sandboxId, sessionId);
    mirror?.();
  };
  control.handle = await forwardOnSupervisorConnection(ctx, conn, stream, headers, 'supervisor-control', log, frameBytes, release, accepted);
}

const DISCONNECT_WRITE_WAIT_MS = 5_000;
/** Before a shed ends its control stream: relays the gateway asked for arrive within this. */
const SHED_RELAY_SETTLE_MS = 300;
/** A relay the gateway asked for may take this long to arrive before the shed goes on without it. */
const SHED_RELAY_SETTLE_MAX_MS = RELAY_PENDING_MS;

/**
 * Waits (bounded) until no request is on its way to the gateway for this sandbox nor was answered a
 * moment ago (its RelayOpen may still be on the way up the control stream), every RelayOpen the
 * gateway sent down the control stream has its RelayStream (or a failed RelayOpenResult), and no relay
 * stream has opened on the connection for a short while: a RelayOpen the gateway sent just before
 * the shed then reaches the supervisor, and its relay arrives, instead of being lost with the
 * control stream.
 */
async function settleBeforeShed(ctx: ProxyContext, conn: DownstreamConnection, sandboxId: string): Promise<void> {
  const deadline = Date.now() + SHED_RELAY_SETTLE_MAX_MS;
  let last = conn.relaysOpened ?? 0;
  for (;;) {
    await new Promise((r) => setTimeout(r, SHED_RELAY_SETTLE_MS).unref());
    const now = conn.relaysOpened ?? 0;
    const quiet =
      now === last &&
      ctx.localSessions.inflightRequests(sandboxId) === 0 &&
      !ctx.localSessions.answeredWithin(sandboxId, SHED_RELAY_SETTLE_MS) &&
      (conn.pendingRelays?.count() ?? 0) === 0;
    if (quiet || Date.now() >= deadline) return;
    last = now;
  }
}

/** Whether this replica's last heartbeat reached Postgres within two intervals (and a second of slack). */
function storeReachable(ctx: ProxyContext): boolean {
  const at = ctx.store.lastHeartbeatAtMs?.();
  return at !== undefined && Date.now() - at < 2 * ctx.config.replicaHeartbeatIntervalMs + 1_000;
}

/** How long handed-over registrations wait for the new owner's to supersede them. */
const HANDED_OVER_LINGER_MS = 10_000;
/** Longest wait for our gateway to take a handed-over registration. */
const HAND_OVER_ACCEPT_MS = 2_000;

/**
 * Registers the supervisor's session again on our own gateway (its headers and Hello, as a shadow
 * does on other gateways) and resolves true once the gateway took it (its first message, sent after
 * it registered), false otherwise. The registration is read and dropped, and closed after
 * HANDED_OVER_LINGER_MS unless the gateway ends it first (the new owner's shadow superseding it).
 */
function registerOnLocalGateway(ctx: ProxyContext, sandboxId: string, headers: http2.OutgoingHttpHeaders, hello: Buffer, log: Logger): Promise<boolean> {
  return ctx.shadowUpstreams.acquire().then(
    (lease) =>
      new Promise<boolean>((resolve) => {
        let stream: http2.ClientHttp2Stream;
        try {
          stream = lease.session.request(headers, OPEN_STREAM);
        } catch (err) {
          lease.release();
          log.info({ err: (err as Error).message }, 'hand-over: gateway connection closing');
          resolve(false);
          return;
        }
        let settled = false;
        const settle = (ok: boolean): void => {
          if (settled) return;
          settled = true;
          clearTimeout(timer);
          if (!ok && !stream.closed) stream.close(http2.constants.NGHTTP2_CANCEL);
          resolve(ok);
        };
        const timer = setTimeout(() => {
          log.info({ sandbox: sandboxId }, 'hand-over: the gateway did not take the registration in time');
          settle(false);
        }, HAND_OVER_ACCEPT_MS);
        timer.unref();
        const linger = setTimeout(() => {
          if (!stream.closed) stream.close(http2.constants.NGHTTP2_CANCEL);
        }, HANDED_OVER_LINGER_MS);
        linger.unref();
        stream.on('error', () => undefined);
        stream.on('response', (h, flags) => {
          if (h[':status'] !== 200 || h['grpc-status'] !== undefined || (flags & http2.constants.NGHTTP2_FLAG_END_STREAM) !== 0) {
            log.info({ sandbox: sandboxId, status: h[':status'], grpcStatus: h['grpc-status'] }, 'hand-over: the gateway refused the registration');
            settle(false);
          }
        });
        stream.on('data', () => settle(true));
        stream.on('close', () => {
          clearTimeout(linger);
          lease.release();
          settle(false);
        });
        stream.write(hello);
      }),
    (err: unknown) => {
      log.info({ err: (err as Error).message }, 'hand-over: local gateway unreachable');
      return false;
    },
  );
}

/**
 * Resolves once the gateway's row for the sandbox changed (its disconnect write), bounded. `act`
 * (ending the stream) runs once the row's state before it was read.
 */
async function waitForDisconnectWrite(ctx: ProxyContext, sandboxId: string, log: Logger, act?: () => void): Promise<void> {
  const before = await ctx.gatewayObjects.sandboxState(sandboxId).catch(() => undefined);
  act?.();
  // At HEAD the disconnect write happens only over Ready (reference §8); unknown state: a short grace.
  if (!before) return new Promise((r) => setTimeout(r, 200).unref());
  if (before.layout === 'head' && before.phase !== PHASE_READY) return;
  const deadline = Date.now() + DISCONNECT_WRITE_WAIT_MS;
  while (Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 25).unref());
    const now = await ctx.gatewayObjects.sandboxState(sandboxId);
    if (now && now.fingerprint !== before.fingerprint) return;
  }
  log.warn({ waitedMs: DISCONNECT_WRITE_WAIT_MS }, "shed session: gateway's disconnect write not seen within the bound");
}

/** The Hello alone, as framed (the buffered bytes may already hold what followed it). */
function helloFrame(frameBytes: Buffer): Buffer {
  return frameBytes.subarray(0, GRPC_FRAME_HEADER_BYTES + frameBytes.readUInt32BE(1));
}

let warnedSeedUnauthenticated = false;
/** Once per process: a plaintext seed deployment lets anyone who reaches the port claim a sandbox. */
function warnSeedUnauthenticated(log: Logger): void {
  if (warnedSeedUnauthenticated) return;
  warnedSeedUnauthenticated = true;
  log.warn('the local gateway issues no sandbox tokens (seed generation) and the public listener has no client CA: supervisor Hellos cannot be authenticated; configure --tls-client-ca to require client certificates');
}

const STORE_RETRY_MS = 1_000;

/** A supervisor accepted while Postgres was down: write its ownership as soon as Postgres is back. */
function retryClaimLater(ctx: ProxyContext, sandboxId: string, log: Logger): void {
  ctx.metrics.pendingStoreWrites.inc();
  const attempt = async (): Promise<void> => {
    if (ctx.localSessions.epoch(sandboxId) !== 0) {
      ctx.metrics.pendingStoreWrites.dec();
      return;
    }
    try {
      const claim = await ctx.store.claim(sandboxId);
      ctx.metrics.pendingStoreWrites.dec();
      ctx.metrics.ownerClaimsTotal.inc();
      if (ctx.localSessions.setEpoch(sandboxId, 0, claim.owner.epoch)) {
        log.info({ epoch: claim.owner.epoch }, 'ownership written after the store came back');
      } else {
        // The session ended meanwhile: undo the claim so no wrong record stays behind.
        releaseOwnership(ctx, sandboxId, claim.owner.epoch, log);
      }
    } catch {
      setTimeout(() => void attempt(), STORE_RETRY_MS).unref();
    }
  };
  setTimeout(() => void attempt(), STORE_RETRY_MS).unref();
}

/** Conditional release, retried while the store is down so no stale record is left behind. */
function releaseOwnership(ctx: ProxyContext, sandboxId: string, epoch: number, log: Logger): void {
  let pending = false;
  const attempt = (): void => {
    ctx.store.release(sandboxId, epoch).then(
      () => {
        if (pending) ctx.metrics.pendingStoreWrites.dec();
      },
      (err: unknown) => {
        if (!pending) {
          pending = true;
          ctx.metrics.pendingStoreWrites.inc();
          log.warn({ err: (err as Error).message, epoch }, 'ownership release failed; retrying until the store is back');
        }
        setTimeout(attempt, STORE_RETRY_MS).unref();
      },
    );
  };
  attempt();
}
