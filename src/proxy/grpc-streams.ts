// Public HTTP/2 streams: classify, read the routing key from the first gRPC message, and forward
// per stream to the local gateway or the owning peer (DESIGN §3).
import type http2 from 'node:http2';
import type { Logger } from 'pino';
import { classifyGrpcPath, isGrpcContentType, type KeyedGrpcClass, type TrafficClass } from '../classify/classify.ts';
import { OhsError, grpcStatusFor, toOhsError } from '../errors.ts';
import { peerHeaders, PEER_NOT_OWNER, PEER_OWNER_HINT } from '../peers/protocol.ts';
import type { PeerTarget, Target } from '../routing/router.ts';
import { FirstMessageBuffer } from '../wire/grpc-frame.ts';
import { extractRoutingKey } from '../wire/routing-key.ts';
import type { ProxyContext } from './context.ts';
import { copyRequestHeaders, forwardStream, respondGrpcError, type Replay } from './h2-forward.ts';
import { track } from './stream-tracking.ts';
import { forwardOnSupervisorConnection, supervisorControl, type DownstreamConnection } from './supervisor-streams.ts';

export function handlePublicStream(ctx: ProxyContext, conn: DownstreamConnection, stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): void {
  stream.on('error', (err) => conn.log.debug({ err: err.message }, 'downstream stream error'));
  const path = String(headers[':path'] ?? '');
  const cls: TrafficClass = isGrpcContentType(headers['content-type'] as string | undefined) ? classifyGrpcPath(path) : 'passthrough';
  const log = conn.log.child({ class: cls, path });
  const upHeaders = copyRequestHeaders(headers);

  if (cls === 'passthrough') {
    void forwardLocal(ctx, stream, upHeaders, cls, log);
    return;
  }
  if (cls === 'supervisor-relay' && conn.supervisorUpstream) {
    // Relays ride the same upstream connection as their control stream, so they reach the
    // gateway replica that issued the RelayOpen (reference §2.2, binding rule).
    void forwardOnSupervisorConnection(ctx, conn, stream, upHeaders, cls, log);
    return;
  }
  if (cls === 'supervisor-relay') {
    // A relay on a connection with no control stream: the gateway will answer NOT_FOUND itself.
    void forwardLocal(ctx, stream, upHeaders, cls, log);
    return;
  }
  readFirstMessage(ctx, stream, cls, log, (message, frameBytes) => {
    let key;
    try {
      key = extractRoutingKey(cls as KeyedGrpcClass, message);
    } catch (err) {
      // The gateway skips log batches with an empty sandbox id (reference §2.0): such a stream
      // has nowhere better to go than the local gateway, which answers as it always does.
      if (cls === 'logs-push' && toOhsError(err).code === 'OHS_ERR_MISSING_ROUTING_KEY') {
        void forwardLocal(ctx, stream, upHeaders, cls, log, frameBytes);
        return;
      }
      return rejectStream(ctx, stream, cls, log, err);
    }
    if (!('sandboxId' in key)) return rejectStream(ctx, stream, cls, log, new OhsError('OHS_ERR_MISSING_ROUTING_KEY', 'no sandbox id'));
    const sandboxId = key.sandboxId;
    const slog = log.child({ sandbox: sandboxId });
    if (cls === 'supervisor-control') {
      void supervisorControl(ctx, conn, stream, upHeaders, sandboxId, frameBytes, slog);
      return;
    }
    void routeKeyed(ctx, stream, upHeaders, cls, sandboxId, frameBytes, slog);
  });
}

function rejectStream(ctx: ProxyContext, stream: http2.ServerHttp2Stream, cls: TrafficClass, log: Logger, err: unknown): void {
  const e = toOhsError(err);
  ctx.metrics.classifyErrorsTotal.inc({ reason: e.code });
  ctx.metrics.requestsTotal.inc({ class: cls, target: 'none', outcome: e.code });
  log.warn({ code: e.code, err: e.message }, 'rejected stream');
  respondGrpcError(stream, grpcStatusFor(e), e.message);
}

/** Buffers DATA until the first length-prefixed message is complete (bounded in size and time). */
function readFirstMessage(
  ctx: ProxyContext,
  stream: http2.ServerHttp2Stream,
  cls: TrafficClass,
  log: Logger,
  onComplete: (message: Buffer, frameBytes: Buffer) => void,
): void {
  const buf = new FirstMessageBuffer(ctx.config.maxFirstMessageBytes);
  let done = false;
  const finish = (): void => {
    done = true;
    clearTimeout(timer);
    stream.off('data', onData);
    stream.off('end', onEnd);
    stream.off('close', onClose);
  };
  const timer = setTimeout(() => {
    if (done) return;
    finish();
    rejectStream(ctx, stream, cls, log, new OhsError('OHS_ERR_TIMEOUT', `first gRPC message not received within ${ctx.config.firstMessageTimeoutMs} ms`));
  }, ctx.config.firstMessageTimeoutMs);
  timer.unref();
  const onData = (chunk: Buffer): void => {
    if (done) return;
    const r = buf.push(chunk);
    if (r.state === 'need-more') return;
    finish();
    stream.pause();
    if (r.state === 'error') {
      rejectStream(ctx, stream, cls, log, r.error);
      return;
    }
    onComplete(r.message, r.frameBytes);
  };
  const onEnd = (): void => {
    if (done) return;
    finish();
    rejectStream(ctx, stream, cls, log, new OhsError('OHS_ERR_MALFORMED_MESSAGE', 'request ended before a complete first message'));
  };
  const onClose = (): void => {
    // Client went away while we were buffering: drop what we held.
    if (!done) finish();
  };
  stream.on('data', onData);
  stream.on('end', onEnd);
  stream.on('close', onClose);
}

async function forwardLocal(
  ctx: ProxyContext,
  stream: http2.ServerHttp2Stream,
  headers: http2.OutgoingHttpHeaders,
  cls: TrafficClass,
  log: Logger,
  prefix?: Buffer,
): Promise<void> {
  let session: http2.ClientHttp2Session;
  try {
    session = await ctx.gatewayPool.get(ctx.gatewayOrigin);
  } catch (err) {
    log.warn({ err: (err as Error).message }, 'local gateway unreachable');
    ctx.metrics.requestsTotal.inc({ class: cls, target: 'local', outcome: 'OHS_ERR_UPSTREAM' });
    respondGrpcError(stream, 14, 'gateway unavailable');
    return;
  }
  if (stream.destroyed) return;
  const done = track(ctx, cls, 'local');
  forwardStream(stream, session, headers, {
    ...(prefix ? { prefix } : {}),
    onDone: ({ reset, grpcStatus }) => done(reset ? 'reset' : `grpc_${grpcStatus ?? 'none'}`),
  });
}

const NO_OWNER: Target = { kind: 'local', epoch: null, reason: 'no-owner' };

/** Exec, logs and watch: owner-routed; held while no owner is reachable; one retry on "not owner". */
async function routeKeyed(
  ctx: ProxyContext,
  stream: http2.ServerHttp2Stream,
  headers: http2.OutgoingHttpHeaders,
  cls: TrafficClass,
  sandboxId: string,
  frameBytes: Buffer,
  log: Logger,
): Promise<void> {
  // Configured limits for gRPC classes (e.g. exec streams per sandbox) are checked here, at the
  // ingress, before any peer hop; with no rule for the class this costs nothing.
  const remote = stream.session?.socket?.remoteAddress;
  let admission;
  try {
    admission = await ctx.limiter.acquire({ cls, sandboxId, ...(remote ? { clientAddress: remote } : {}) });
  } catch (err) {
    log.warn({ err: (err as Error).message }, 'limit check failed');
    respondGrpcError(stream, 14, 'connection limits unavailable');
    return;
  }
  if (!admission.ok) {
    ctx.metrics.requestsTotal.inc({ class: cls, target: 'none', outcome: admission.error.code });
    log.info({ rule: admission.rule.name }, 'stream refused by limit');
    respondGrpcError(stream, grpcStatusFor(admission.error), admission.error.message);
    return;
  }
  if (stream.closed || stream.destroyed) {
    admission.release();
    return;
  }
  stream.once('close', admission.release);
  // Past the hold bound the local gateway answers exactly as it would without us.
  let target = (await ctx.router.resolveHeld(sandboxId)) ?? NO_OWNER;
  let prefix = frameBytes;
  let exclude: PeerTarget | undefined;
  let notOwnerRetried = false;
  // At most: one hop to an owner that proves unreachable, a held re-resolve, and one retry after
  // a "not owner" answer (DESIGN §4: re-resolve and retry once).
  for (let attempt = 0; attempt < 3; attempt++) {
    if (stream.destroyed) return;
    if (target.kind === 'local') {
      log.debug({ target: 'local', reason: target.reason }, 'routing');
      await forwardLocal(ctx, stream, headers, cls, log, prefix);
      return;
    }
    const outcome = await forwardToPeer(ctx, stream, headers, cls, sandboxId, target, prefix, log);
    if (outcome.kind === 'done') return;
    if (outcome.why === 'not-owner') {
      if (notOwnerRetried) break;
      notOwnerRetried = true;
    }
    // Nothing reached a gateway, so re-resolve (holding if needed) and send it again.
    prefix = outcome.replay.bytes;
    if (outcome.why === 'unreachable') exclude = target;
    const next: Target = (await ctx.router.resolveHeld(sandboxId, { fresh: true, ...(exclude ? { exclude } : {}) })) ?? NO_OWNER;
    log.info({ from: target.replicaId, to: next.kind === 'peer' ? next.replicaId : 'local', why: outcome.why }, 're-resolved owner');
    target = next;
  }
  ctx.metrics.requestsTotal.inc({ class: cls, target: 'peer', outcome: 'OHS_ERR_NOT_OWNER' });
  respondGrpcError(stream, 14, 'sandbox owner moved while routing; retry');
}

type PeerOutcome = { kind: 'done' } | { kind: 'retry'; replay: Replay; why: string };

function forwardToPeer(
  ctx: ProxyContext,
  stream: http2.ServerHttp2Stream,
  headers: http2.OutgoingHttpHeaders,
  cls: TrafficClass,
  sandboxId: string,
  target: PeerTarget,
  prefix: Buffer,
  log: Logger,
): Promise<PeerOutcome> {
  return new Promise((resolve) => {
    const plog = log.child({ target: target.replicaId });
    ctx.peerPool.get(target.peerUrl).then(
      (session) => {
        if (stream.destroyed) return resolve({ kind: 'done' });
        const done = track(ctx, cls, 'peer');
        let settled = false;
        const handle = forwardStream(
          stream,
          session,
          {
            ...headers,
            ...peerHeaders({
              secret: ctx.peerSecret ?? '',
              origin: ctx.store.replicaId,
              sandboxId,
              epoch: target.epoch,
              cls,
              hop: 1,
            }),
          },
          {
            prefix,
            onResponse: (res) => {
              if (res[PEER_NOT_OWNER] === undefined) {
                settled = true;
                ctx.metrics.forwardsTotal.inc({ class: cls, peer: target.replicaId, outcome: 'ok' });
                resolve({ kind: 'done' });
                return true;
              }
              const replay = handle.abandon();
              done('not_owner');
              ctx.metrics.forwardsTotal.inc({ class: cls, peer: target.replicaId, outcome: 'not_owner' });
              plog.info({ hint: res[PEER_OWNER_HINT] }, 'peer is not the owner');
              settled = true;
              if (replay) resolve({ kind: 'retry', replay, why: 'not-owner' });
              else {
                respondGrpcError(stream, 14, 'sandbox owner moved while routing; retry');
                resolve({ kind: 'done' });
              }
              return false;
            },
            onUpstreamError: (err) => {
              if (settled) return;
              settled = true;
              ctx.metrics.forwardsTotal.inc({ class: cls, peer: target.replicaId, outcome: 'error' });
              plog.warn({ err: err.message }, 'peer stream failed before a response');
              respondGrpcError(stream, 14, `owner replica ${target.replicaId} unavailable`);
              resolve({ kind: 'done' });
            },
            onDone: ({ reset, grpcStatus }) => done(reset ? 'reset' : `grpc_${grpcStatus ?? 'none'}`),
          },
        );
      },
      (err: unknown) => {
        // Could not even connect: nothing was sent anywhere, so the request can go elsewhere.
        ctx.metrics.forwardsTotal.inc({ class: cls, peer: target.replicaId, outcome: 'unreachable' });
        plog.warn({ err: (err as Error).message }, 'owner replica unreachable');
        resolve({ kind: 'retry', replay: { bytes: prefix, ended: stream.readableEnded }, why: 'unreachable' });
      },
    );
  });
}
