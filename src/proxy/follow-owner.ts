// Streams that follow their sandbox's owner (reference §8): `WatchSandbox` and the supervisor's
// lifetime `PushSandboxLogs` often open before the supervisor's session exists, and outlive moves of
// that session between replicas. The gateway's watch and log buses are per process (reference §2.8),
// so a watch left on the wrong replica never sees Ready, and logs pushed there are unreadable from
// the owner. Such a stream is forwarded to the owner when there is one, else to the local gateway,
// and moves to the new owner whenever ownership changes, always between two whole gRPC messages:
// - watch (server streaming): the request is replayed to the new owner, and its response stream
//   replaces the old one once it has answered (its first message is a fresh snapshot, so the client
//   loses nothing and at worst sees the current state twice);
// - log push (client streaming): the old leg's request side is ended cleanly (its gateway keeps the
//   batches it got) and later batches go to the new owner; the client gets the final leg's answer.
import http2 from 'node:http2';
import type { Logger } from 'pino';
import type { TrafficClass } from '../classify/classify.ts';
import type { OhsError } from '../errors.ts';
import { PEER_NOT_OWNER, withPeerHeaders } from '../peers/protocol.ts';
import { describe, type Target } from '../routing/router.ts';
import { GrpcMessageSplitter } from '../wire/grpc-frame.ts';
import { PHASE_READY, sandboxPayloadPhase, sandboxSignature, statusEventFrame, streamEventSandbox, watchRequestFlags } from '../wire/gateway-payloads.ts';
import type { ProxyContext } from './context.ts';
import { copyResponseHeaders, OPEN_STREAM, RESPOND_WITH_TRAILERS, respondGrpcError } from './h2-forward.ts';
import { forgetSentHeaders } from './sent-headers.ts';

const { NGHTTP2_CANCEL, NGHTTP2_FLAG_END_STREAM, NGHTTP2_NO_ERROR, NGHTTP2_REFUSED_STREAM } = http2.constants;
/** A watch or log push refused unprocessed is sent again at most this many times. */
const MAX_REFUSED_REPLAYS = 2;

/** The gateway's own decode limit (reference §1.1) bounds every message we hold. */
const MAX_MESSAGE_BYTES = 4 * 1024 * 1024;
/** How often a status watch compares what it delivered with the gateway's table. */
const STATUS_REFRESH_INTERVAL_MS = 1_000;
/** How long the table may be ahead of what the watch delivered before the sidecar sends it. */
const STATUS_REFRESH_GRACE_MS = 1_000;
/** After a "not owner" answer, how long before the owner is looked up again. */
const NOT_OWNER_RECHECK_MS = 150;
/** How long an abandoned log-push leg may take to acknowledge its last batches. */
const OLD_LEG_GRACE_MS = 10_000;

interface Leg {
  target: Target;
  up: http2.ClientHttp2Stream;
  splitter: GrpcMessageSplitter;
  /** This leg's response headers arrived (it answered). */
  answered: boolean;
  /**
   * Log push: batches written while the leg could still be refused unprocessed (a peer answers "not
   * owner" at once, before its gateway sees anything; a gateway refuses with REFUSED_STREAM past its
   * GOAWAY), replayed to the next leg if it is.
   */
  unconfirmed: Buffer[] | undefined;
}

/** A leg is refused within a round trip; after this, batches sent to it are its gateway's. */
const REFUSAL_WINDOW_MS = 2_000;

const replicaOf = (t: Target, self: string): string => (t.kind === 'peer' ? t.replicaId : self);

export function followOwner(
  ctx: ProxyContext,
  down: http2.ServerHttp2Stream,
  headers: http2.OutgoingHttpHeaders,
  cls: TrafficClass,
  sandboxId: string,
  firstBytes: Buffer,
  log: Logger,
): void {
  const replay = cls === 'watch';
  const self = ctx.store.replicaId;
  const requestSplitter = new GrpcMessageSplitter(MAX_MESSAGE_BYTES);
  /** Watch: the whole request, re-sent to every leg. */
  const requestMessages: Buffer[] = [];
  /** Log push: batches read before the first leg opened. */
  const queued: Buffer[] = [];
  let requestEnded = false;
  let current: Leg | undefined;
  let pending: Leg | undefined;
  let responded = false;
  let finished = false;
  let trailers: http2.OutgoingHttpHeaders | undefined;
  let moves = 0;
  let refusedReplays = 0;
  const started = process.hrtime.bigint();
  const active = ctx.metrics.activeStreams.cell(cls, 'follow');
  active.inc();

  const finish = (outcome: string): void => {
    if (finished) return;
    finished = true;
    if (refresh) clearInterval(refresh.timer);
    unsubscribe();
    for (const leg of [current, pending]) if (leg && !leg.up.closed) leg.up.close(NGHTTP2_CANCEL);
    active.dec();
    ctx.metrics.requestsTotal.cell(cls, 'follow', outcome).inc();
    ctx.metrics.requestDurationSeconds.cell(cls, 'follow').observe(Number(process.hrtime.bigint() - started) / 1e9);
    log.debug({ outcome, moves }, 'owner-following stream ended');
  };

  const fail = (code: number, message: string): void => {
    respondGrpcError(down, code, message);
    finish(`grpc_${code}`);
  };

  down.on('close', () => finish('closed'));

  // ---- downstream request side --------------------------------------------------------------
  const onRequestMessage = (msg: Buffer): void => {
    if (replay) {
      requestMessages.push(msg);
      return;
    }
    const leg = current;
    if (!leg) {
      // Before the first leg exists the client is paused; only the already-read first bytes land here.
      queued.push(msg);
      return;
    }
    if (leg.up.destroyed) return;
    leg.unconfirmed?.push(msg);
    if (!leg.up.write(msg)) {
      down.pause();
      leg.up.once('drain', () => down.resume());
    }
  };
  const pushRequest = (chunk: Buffer): void => {
    try {
      for (const m of requestSplitter.push(chunk)) onRequestMessage(m);
    } catch (err) {
      fail(8, (err as OhsError).message);
    }
  };
  if (firstBytes.length > 0) pushRequest(firstBytes);
  down.on('data', (chunk: Buffer) => {
    if (replay && requestSplitter.bufferedBytes + chunk.length > MAX_MESSAGE_BYTES) return fail(8, 'watch request too large');
    pushRequest(chunk);
  });
  down.on('end', () => {
    requestEnded = true;
    if (replay) {
      void start();
    } else if (current && !current.up.destroyed) {
      current.up.end();
    }
  });

  // ---- legs ------------------------------------------------------------------------------------
  const openLeg = async (target: Target): Promise<Leg | undefined> => {
    let session: http2.ClientHttp2Session;
    try {
      session = target.kind === 'peer' ? await ctx.peerPool.get(target.peerUrl) : await ctx.gatewayPool.get(ctx.gatewayOrigin);
    } catch (err) {
      log.info({ target: describe(target), err: (err as Error).message }, 'owner-following stream: target unreachable');
      return undefined;
    }
    if (finished) return undefined;
    const legHeaders =
      target.kind === 'peer'
        ? withPeerHeaders(headers, { secret: ctx.peerSecret ?? '', origin: self, sandboxId, epoch: target.epoch, cls, hop: 1 })
        : headers;
    let up: http2.ClientHttp2Stream;
    try {
      up = session.request(legHeaders, OPEN_STREAM);
      forgetSentHeaders(up);
    } catch (err) {
      // The session began closing (GOAWAY) between get() and request().
      log.info({ target: describe(target), err: (err as Error).message }, 'owner-following stream: session closing');
      return undefined;
    }
    const leg: Leg = { target, up, splitter: new GrpcMessageSplitter(MAX_MESSAGE_BYTES), answered: false, unconfirmed: replay ? undefined : [] };
    if (leg.unconfirmed) {
      setTimeout(() => {
        leg.unconfirmed = undefined;
      }, REFUSAL_WINDOW_MS).unref();
    }
    up.on('error', (err) => log.debug({ target: describe(target), err: err.message }, 'owner-following leg error'));
    up.on('response', (h, flags) => onLegResponse(leg, h, (flags & NGHTTP2_FLAG_END_STREAM) !== 0));
    up.on('data', (chunk: Buffer) => onLegData(leg, chunk));
    up.on('trailers', (t) => {
      if (leg === current) trailers = copyResponseHeaders(t, dropInternal);
    });
    up.on('close', () => onLegClose(leg));
    if (replay) {
      for (const m of requestMessages) up.write(m);
      up.end();
    }
    return leg;
  };

  const onLegResponse = (leg: Leg, h: http2.IncomingHttpHeaders, endStream: boolean): void => {
    log.debug({ leg: describe(leg.target), status: h[':status'], grpcStatus: h['grpc-status'], endStream, isCurrent: leg === current, isPending: leg === pending, responded }, 'owner-following leg answered');
    if (finished) return;
    if (h[PEER_NOT_OWNER] !== undefined) {
      // The peer does not hold the session (yet: its claim may be a moment ahead of its session
      // table, or it lost it). Nothing reached its gateway: void the leg, keep what was sent to it,
      // and look again shortly.
      leg.up.close(NGHTTP2_CANCEL);
      if (leg === pending) {
        pending = undefined;
        setTimeout(onOwnershipChange, NOT_OWNER_RECHECK_MS).unref();
      } else if (leg === current && !(replay && responded)) {
        if (!replay) queued.unshift(...(leg.unconfirmed ?? []));
        current = undefined;
        down.pause();
        setTimeout(() => {
          ctx.router.resolve(sandboxId, { fresh: true }).then(
            (t) => retarget(t),
            () => retarget({ kind: 'local', epoch: null, reason: 'no-owner' }),
          );
        }, NOT_OWNER_RECHECK_MS).unref();
      }
      return;
    }
    leg.answered = true;
    if (leg === pending) {
      if (endStream) {
        // The new owner refused at once (e.g. the row is gone): keep the stream we have.
        log.info({ to: describe(leg.target), status: h['grpc-status'] }, 'owner-following stream: new owner refused; staying');
        pending = undefined;
        return;
      }
      const old = current;
      current = leg;
      pending = undefined;
      moves++;
      ctx.metrics.streamMovesTotal.inc({ class: cls });
      log.info({ from: old ? describe(old.target) : null, to: describe(leg.target) }, 'owner-following stream moved to the new owner');
      if (old && !old.up.closed) old.up.close(NGHTTP2_CANCEL);
      return;
    }
    if (leg !== current) return; // an abandoned log-push leg acknowledging
    if (responded) {
      // Later legs' headers are not repeated downstream; a trailers-only answer ends the stream.
      if (endStream) trailers = copyResponseHeaders(h, dropInternal);
      return;
    }
    responded = true;
    const out = copyResponseHeaders(h, dropInternal);
    if (endStream) {
      down.respond(out, { endStream: true });
      finish(`grpc_${String(h['grpc-status'] ?? 'none')}`);
      return;
    }
    down.respond(out, RESPOND_WITH_TRAILERS);
    forgetSentHeaders(down);
    down.on('wantTrailers', () => {
      if (trailers && Object.keys(trailers).length > 0) down.sendTrailers(trailers);
      else down.close();
    });
  };

  const onLegData = (leg: Leg, chunk: Buffer): void => {
    if (finished || leg !== current || !responded) return;
    let messages: Buffer[];
    try {
      messages = leg.splitter.push(chunk);
    } catch (err) {
      fail(13, (err as OhsError).message);
      return;
    }
    for (const m of messages) {
      if (refresh) noteStatus(m);
      if (!down.write(m)) {
        leg.up.pause();
        down.once('drain', () => leg.up.resume());
      }
    }
  };

  // ---- status the owner's gateway cannot tell this watcher -------------------------------------
  // A gateway notifies its watchers only of its own writes (reference §2.8). With shadows, or after
  // a Ready write lost to a compare-and-swap conflict, the write that made the sandbox Ready may come
  // from another replica, and a watcher on the owner would never hear of it (the CLI's `sandbox
  // create` then hangs). So a status watch compares what it delivered with the gateway's table and,
  // when the table moved on and the gateway stayed silent, sends the stored sandbox itself: exactly
  // the event the gateway sends for its own writes (the stored message).
  let refresh: { stopOnTerminal: boolean; delivered: string | undefined; pendingSince: number | undefined; timer: NodeJS.Timeout } | undefined;
  const noteStatus = (m: Buffer): void => {
    if (!refresh) return;
    try {
      const sb = streamEventSandbox(m.subarray(5));
      if (sb) {
        refresh.delivered = sandboxSignature(sb);
        refresh.pendingSince = undefined;
      }
    } catch {
      // not a message we can read: leave it to the gateway
    }
  };
  const endOk = (outcome: string): void => {
    trailers = { 'grpc-status': '0' };
    if (!down.writableEnded) down.end();
    finish(outcome);
  };
  const checkStatus = async (): Promise<void> => {
    if (!refresh || finished || !responded) return;
    const payload = await ctx.gatewayObjects.sandboxPayload(sandboxId);
    if (!refresh || finished || payload === undefined) return;
    if (payload === null) {
      // The row is gone: a watch ends then (reference §8), wherever the delete was made.
      log.info('sandbox row deleted; ending the watch');
      endOk('row_gone');
      return;
    }
    let signature: string;
    try {
      signature = sandboxSignature(payload);
    } catch {
      return;
    }
    if (signature === refresh.delivered) {
      refresh.pendingSince = undefined;
      return;
    }
    const now = Date.now();
    if (refresh.pendingSince === undefined) {
      // Give the gateway's own notification a moment to arrive first.
      refresh.pendingSince = now;
      return;
    }
    if (now - refresh.pendingSince < STATUS_REFRESH_GRACE_MS) return;
    refresh.delivered = signature;
    refresh.pendingSince = undefined;
    ctx.metrics.watchRefreshesTotal.inc();
    log.info({ signature }, 'watch: the sandbox changed by another replica\'s write; sending its stored state');
    down.write(statusEventFrame(payload));
    if (refresh.stopOnTerminal && sandboxPayloadPhase(payload).phase === PHASE_READY) endOk('stop_on_terminal');
  };

  const onLegClose = (leg: Leg): void => {
    if (finished) return;
    if (leg === pending) {
      pending = undefined;
      return;
    }
    if (leg !== current) return;
    const code = leg.up.rstCode ?? 0;
    if (!responded && code === NGHTTP2_REFUSED_STREAM && refusedReplays < MAX_REFUSED_REPLAYS && (replay || leg.unconfirmed !== undefined)) {
      // Refused unprocessed (past the last stream id of the gateway's GOAWAY, or over its stream
      // limit): nothing reached the gateway. A watch keeps its whole request; a log push keeps the
      // batches it wrote to the leg (within the refusal window), which go first on the next leg.
      refusedReplays++;
      current = undefined;
      if (!replay) {
        queued.unshift(...(leg.unconfirmed ?? []));
        down.pause();
      }
      log.info({ target: describe(leg.target) }, replay ? 'watch refused before it was processed; sending it again' : 'log push refused before it was processed; sending its batches again');
      void retarget(leg.target);
      return;
    }
    if (!responded) {
      fail(14, code !== 0 && code !== NGHTTP2_NO_ERROR ? 'upstream stream reset' : 'upstream closed without an answer');
      return;
    }
    if (code !== 0 && code !== NGHTTP2_NO_ERROR) {
      if (!down.closed) down.close(code);
      finish('reset');
      return;
    }
    if (!down.writableEnded) down.end();
    finish(`grpc_${String(trailers?.['grpc-status'] ?? 'none')}`);
  };

  /** Moves the stream to `target` when that is another replica than the current leg's. */
  const retarget = async (target: Target): Promise<void> => {
    if (finished) return;
    const now = current ? replicaOf(current.target, self) : undefined;
    if (current && replicaOf(target, self) === now) return;
    const leg = await openLeg(target);
    if (!leg) {
      if (!current) fail(14, 'gateway unavailable');
      return;
    }
    if (finished) {
      leg.up.close(NGHTTP2_CANCEL);
      return;
    }
    if (!current) {
      current = leg;
      if (!replay) {
        for (const m of queued.splice(0)) {
          leg.unconfirmed?.push(m);
          leg.up.write(m);
        }
        if (requestEnded) leg.up.end();
        else down.resume();
      }
      return;
    }
    if (replay) {
      if (pending && !pending.up.closed) pending.up.close(NGHTTP2_CANCEL);
      pending = leg;
      return;
    }
    // Log push: later batches go to the new owner at once; the old leg's gateway keeps what it got.
    const old = current;
    current = leg;
    moves++;
    ctx.metrics.streamMovesTotal.inc({ class: cls });
    log.info({ from: describe(old.target), to: describe(leg.target) }, 'owner-following stream moved to the new owner');
    if (requestEnded) leg.up.end();
    if (!old.up.destroyed) {
      old.up.end();
      setTimeout(() => {
        if (!old.up.closed) old.up.close(NGHTTP2_CANCEL);
      }, OLD_LEG_GRACE_MS).unref();
    }
  };

  // ---- ownership ---------------------------------------------------------------------------
  let checking = false;
  let recheck = false;
  const onOwnershipChange = (): void => {
    if (finished) return;
    if (checking) {
      recheck = true;
      return;
    }
    checking = true;
    ctx.router.resolve(sandboxId, { fresh: true }).then(
      async (t) => {
        // Only a real owner is worth moving to: "no owner" leaves the stream where it is.
        if (t.kind === 'peer' || t.reason === 'owner') await retarget(t);
      },
      () => undefined,
    ).finally(() => {
      checking = false;
      if (recheck) {
        recheck = false;
        onOwnershipChange();
      }
    });
  };
  const unsubscribe = ctx.store.onChange((id) => {
    if (id === sandboxId) onOwnershipChange();
  });

  let startedLeg = false;
  const start = async (): Promise<void> => {
    if (startedLeg || finished) return;
    startedLeg = true;
    if (replay && requestMessages[0]) {
      let flags = { followStatus: false, stopOnTerminal: false };
      try {
        flags = watchRequestFlags(requestMessages[0].subarray(5));
      } catch {
        // the gateway will refuse it
      }
      if (flags.followStatus) {
        let checking = false;
        const timer = setInterval(() => {
          if (checking) return;
          checking = true;
          checkStatus().finally(() => {
            checking = false;
          });
        }, STATUS_REFRESH_INTERVAL_MS);
        timer.unref();
        refresh = { stopOnTerminal: flags.stopOnTerminal, delivered: undefined, pendingSince: undefined, timer };
      }
    }
    let target = await ctx.router.resolve(sandboxId).catch((): Target => ({ kind: 'local', epoch: null, reason: 'no-owner' }));
    if (!replay && target.kind === 'local' && target.reason === 'no-owner') {
      // The supervisor opens its log push just before its ConnectSupervisor (reference §8): wait
      // (bounded) for the owner it is about to have, so its first batches land on the owner's bus.
      // The client stays paused meanwhile, so HTTP/2 flow control bounds what it can send.
      target = await waitForOwner();
    }
    log.debug({ target: describe(target) }, 'owner-following stream opened');
    // An ownership event may have opened the first leg meanwhile; it knows better than this lookup.
    if (!current) await retarget(target);
  };
  const waitForOwner = (): Promise<Target> =>
    new Promise((resolve) => {
      const noOwner: Target = { kind: 'local', epoch: null, reason: 'no-owner' };
      let done = false;
      const finishWait = (t: Target): void => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        stop();
        resolve(t);
      };
      const timer = setTimeout(() => finishWait(noOwner), ctx.config.ownerWaitMs);
      timer.unref();
      const check = (): void => {
        ctx.router.resolve(sandboxId, { fresh: true }).then(
          (t) => {
            if (t.kind === 'peer' || t.reason === 'owner') finishWait(t);
          },
          () => undefined,
        );
      };
      const stop = ctx.store.onChange((id) => {
        if (id === sandboxId) check();
      });
      down.once('close', () => finishWait(noOwner));
      check();
    });
  // A watch request is replayed whole, so it is read first and its leg opens once it ended; a log
  // push streams, so its leg opens at once and the client is read once the leg exists.
  if (replay) {
    if (down.readableEnded) void start();
    else down.resume();
  } else {
    void start();
  }
}

const dropInternal = (name: string): boolean => name.startsWith('x-ohs-');
