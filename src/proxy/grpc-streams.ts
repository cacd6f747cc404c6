// Public HTTP/2 streams: classify, read the routing key (first gRPC message, bearer JWT, sandbox
// name or service host), and forward per stream to the local gateway or the owning peer (DESIGN §3).
import type http2 from 'node:http2';
import type { Logger } from 'pino';
import { grpcMethod, isGrpcContentType, ROUTE_POLICY, type GrpcMethod, type TrafficClass } from '../classify/classify.ts';
import { parseServiceHost } from '../classify/service-host.ts';
import { OhsError, grpcStatusFor, toOhsError } from '../errors.ts';
import type { LimitRule } from '../limits/rules.ts';
import { peerHeaders, PEER_NOT_OWNER, PEER_OWNER_HINT } from '../peers/protocol.ts';
import type { PeerTarget, Target } from '../routing/router.ts';
import { FirstMessageBuffer } from '../wire/grpc-frame.ts';
import { extractRoutingKey, type RequestKey } from '../wire/routing-key.ts';
import type { ProxyContext } from './context.ts';
import { followOwner } from './follow-owner.ts';
import { forwardLocal } from './local-forward.ts';
import { copyRequestHeaders, forwardStream, respondGrpcError, type Replay } from './h2-forward.ts';
import { track } from './stream-tracking.ts';
import { forwardOnSupervisorConnection, supervisorControl, type DownstreamConnection } from './supervisor-streams.ts';

export function handlePublicStream(ctx: ProxyContext, conn: DownstreamConnection, stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): void {
  stream.on('error', (err) => conn.log.debug({ err: err.message }, 'downstream stream error'));
  const path = String(headers[':path'] ?? '');
  const upHeaders = copyRequestHeaders(headers);
  if (!isGrpcContentType(headers['content-type'] as string | undefined)) {
    // Plain HTTP over h2: a sandbox service request when the authority names one (reference §2.7).
    const host = parseServiceHost(String(headers[':authority'] ?? ''), ctx.config.serviceBaseDomains);
    if (host) {
      const log = conn.log.child({ class: 'service-http', host: headers[':authority'] });
      void ctx.sandboxKeys.byServiceHost(host).then((sandboxId) => {
        if (sandboxId === undefined) return void forwardLocal(ctx, stream, upHeaders, 'service-http', log);
        return routeKeyed(ctx, stream, upHeaders, 'service-http', sandboxId, Buffer.alloc(0), log.child({ sandbox: sandboxId }));
      });
      return;
    }
    void forwardLocal(ctx, stream, upHeaders, 'passthrough', conn.log.child({ class: 'passthrough', path }));
    return;
  }
  const method = grpcMethod(path);
  if (method && ctx.gatewayWatch.nativeHa()) {
    // A native-HA gateway routes sessions itself: step aside. Supervisor streams still keep their
    // 1:1 upstream connection, so the gateway's keepalive sees the supervisor's.
    const log = conn.log.child({ class: method.cls, path, native: true });
    if (method.cls === 'supervisor-control' || (method.cls === 'supervisor-relay' && conn.supervisorUpstream)) void forwardOnSupervisorConnection(ctx, conn, stream, upHeaders, method.cls, log);
    else void forwardLocal(ctx, stream, upHeaders, method.cls, log);
    return;
  }
  if (!method) {
    void forwardLocal(ctx, stream, upHeaders, 'passthrough', conn.log.child({ class: 'passthrough', path }));
    return;
  }
  const cls = method.cls;
  const log = conn.log.child({ class: cls, path });
  if (cls === 'supervisor-relay') {
    // Relays ride the same upstream connection as their control stream, so they reach the
    // gateway replica that issued the RelayOpen (reference §2.2, binding rule). A relay on a
    // connection with no control stream goes local: the gateway answers NOT_FOUND itself.
    if (conn.supervisorUpstream) void forwardOnSupervisorConnection(ctx, conn, stream, upHeaders, cls, log);
    else void forwardLocal(ctx, stream, upHeaders, cls, log);
    return;
  }
  if (cls === 'logs-push' && headers.authorization !== undefined) {
    // The supervisor's lifetime log push opens before ConnectSupervisor and may stay idle for a
    // long time (reference §8): its verified sandbox JWT names the sandbox, so it is routed at once
    // instead of waiting for a first batch.
    void ctx.jwt.verify(headers.authorization).then((v) => {
      if (v.kind === 'verified') {
        followOwner(ctx, stream, upHeaders, cls, v.sandboxId, Buffer.alloc(0), log.child({ sandbox: v.sandboxId }));
      } else {
        readAndRoute(ctx, conn, stream, upHeaders, method, log);
      }
    });
    return;
  }
  readAndRoute(ctx, conn, stream, upHeaders, method, log);
}

function readAndRoute(ctx: ProxyContext, conn: DownstreamConnection, stream: http2.ServerHttp2Stream, upHeaders: http2.OutgoingHttpHeaders, method: GrpcMethod, log: Logger): void {
  const cls = method.cls;
  const policy = ROUTE_POLICY[cls];
  readFirstMessage(ctx, stream, cls, log, (message, frameBytes) => {
    let key: RequestKey;
    try {
      key = extractRoutingKey(method.key, message, method.name);
    } catch (err) {
      // Calls any replica can serve go to the local gateway, which answers as it always does; so
      // do log batches with an empty sandbox id, which the gateway skips (reference §2.0).
      if (policy === 'affine' || (cls === 'logs-push' && toOhsError(err).code === 'OHS_ERR_MISSING_ROUTING_KEY')) {
        void forwardLocal(ctx, stream, upHeaders, cls, log, frameBytes);
        return;
      }
      return rejectStream(ctx, stream, cls, log, err);
    }
    void routeByKey(ctx, conn, stream, upHeaders, method, key, frameBytes, log);
  });
}

async function routeByKey(
  ctx: ProxyContext,
  conn: DownstreamConnection,
  stream: http2.ServerHttp2Stream,
  headers: http2.OutgoingHttpHeaders,
  method: GrpcMethod,
  key: RequestKey,
  frameBytes: Buffer,
  log: Logger,
): Promise<void> {
  const cls = method.cls;
  if ('unscoped' in key) return forwardLocal(ctx, stream, headers, cls, log, frameBytes);
  if ('channelId' in key) return rejectStream(ctx, stream, cls, log, new OhsError('OHS_ERR_MISSING_ROUTING_KEY', 'no sandbox id'));
  let sandboxId: string;
  if ('sandboxName' in key) {
    // Name-keyed calls (reference §2.9): the gateway's own table says which sandbox; an unknown
    // name goes to the local gateway, which answers NOT_FOUND as usual.
    const id = await ctx.sandboxKeys.byName(key.sandboxName, key.workspace);
    if (id === undefined) return forwardLocal(ctx, stream, headers, cls, log, frameBytes);
    sandboxId = id;
  } else {
    sandboxId = key.sandboxId;
  }
  const slog = log.child({ sandbox: sandboxId });
  switch (ROUTE_POLICY[cls]) {
    case 'supervisor':
      return supervisorControl(ctx, conn, stream, headers, sandboxId, frameBytes, slog);
    case 'owner-rehome':
      return followOwner(ctx, stream, headers, cls, sandboxId, frameBytes, slog);
    case 'affine':
      return routeAffine(ctx, stream, headers, cls, sandboxId, frameBytes, slog);
    default:
      return routeKeyed(ctx, stream, headers, cls, sandboxId, frameBytes, slog, 'token' in key ? key.token : undefined);
  }
}

export function rejectStream(ctx: ProxyContext, stream: http2.ServerHttp2Stream, cls: TrafficClass, log: Logger, err: unknown): void {
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

const NO_OWNER: Target = { kind: 'local', epoch: null, reason: 'no-owner' };

/** The message a client sees for a refused slot: the gateway's own for gRPC SSH forwards. */
function limitMessage(cls: TrafficClass, rule: LimitRule, fallback: string): string {
  return cls === 'tcp-forward' && rule.gatewayMessage ? rule.gatewayMessage : fallback;
}

/**
 * Owner-bound calls (exec, forwards, logs, stop, service requests): limits first, at the ingress,
 * then the owner; held while no owner is reachable; one retry on "not owner".
 */
export async function routeKeyed(
  ctx: ProxyContext,
  stream: http2.ServerHttp2Stream,
  headers: http2.OutgoingHttpHeaders,
  cls: TrafficClass,
  sandboxId: string,
  frameBytes: Buffer,
  log: Logger,
  token?: string,
): Promise<void> {
  const release = await admit(ctx, stream, cls, sandboxId, log, token);
  if (release === undefined) return;
  stream.once('close', release);
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

/**
 * Takes the connection slots the class's limit rules ask for. ForwardTcp takes slots only for a
 * token the gateway's own table says is valid for the sandbox: a junk token consumes nothing and
 * the owner's gateway refuses it as usual. Returns the release, or undefined after refusing.
 */
async function admit(ctx: ProxyContext, stream: http2.ServerHttp2Stream, cls: TrafficClass, sandboxId: string, log: Logger, token?: string): Promise<(() => void) | undefined> {
  const remote = stream.session?.socket?.remoteAddress;
  let slotToken: string | undefined;
  if (cls === 'tcp-forward') {
    const verdict = await ctx.sshTokens.check(token, sandboxId);
    if (verdict === 'invalid') {
      ctx.metrics.limitSkipsTotal.inc({ class: cls, reason: 'invalid_token' });
      return () => undefined;
    }
    slotToken = token?.trim();
  }
  let admission;
  try {
    admission = await ctx.limiter.acquire({ cls, sandboxId, ...(slotToken ? { token: slotToken } : {}), ...(remote ? { clientAddress: remote } : {}) });
  } catch (err) {
    log.warn({ err: (err as Error).message }, 'limit check failed');
    respondGrpcError(stream, 14, 'connection limits unavailable');
    return undefined;
  }
  if (!admission.ok) {
    ctx.metrics.requestsTotal.inc({ class: cls, target: 'none', outcome: admission.error.code });
    log.info({ rule: admission.rule.name }, 'stream refused by limit');
    respondGrpcError(stream, grpcStatusFor(admission.error), limitMessage(cls, admission.rule, admission.error.message));
    return undefined;
  }
  if (stream.closed || stream.destroyed) {
    admission.release();
    return undefined;
  }
  return admission.release;
}

/**
 * Calls any replica can serve whose in-memory side effects (watch notifications) stay where they
 * were served (reference §8): the owner when one is reachable, otherwise the local gateway. Never
 * held: these are not worth a wait.
 */
async function routeAffine(
  ctx: ProxyContext,
  stream: http2.ServerHttp2Stream,
  headers: http2.OutgoingHttpHeaders,
  cls: TrafficClass,
  sandboxId: string,
  frameBytes: Buffer,
  log: Logger,
): Promise<void> {
  const target = await ctx.router.resolve(sandboxId);
  if (target.kind === 'peer') {
    const outcome = await forwardToPeer(ctx, stream, headers, cls, sandboxId, target, frameBytes, log);
    if (outcome.kind === 'done') return;
    return forwardLocal(ctx, stream, headers, cls, log, outcome.replay.bytes);
  }
  return forwardLocal(ctx, stream, headers, cls, log, frameBytes);
}

type PeerOutcome = { kind: 'done' } | { kind: 'retry'; replay: Replay; why: string };

export function forwardToPeer(
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
