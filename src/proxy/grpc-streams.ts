// Public HTTP/2 streams: classify, read the routing key (first gRPC message, bearer JWT, sandbox
// name or service host), and forward per stream to the local gateway or the owning peer (DESIGN §3).
import { lazyChild } from '../log/logger.ts';
import http2 from 'node:http2';
import type { Logger } from 'pino';
import { grpcMethod, isGrpcContentType, RELAY_CLASSES, ROUTE_POLICY, type GrpcMethod, type TrafficClass } from '../classify/classify.ts';
import { parseServiceHost } from '../classify/service-host.ts';
import { OhsError, grpcStatusFor, toOhsError } from '../errors.ts';
import type { LimitRule } from '../limits/rules.ts';
import type { AcquireResult, SlotRequest } from '../limits/slots.ts';
import { PEER_NOT_OWNER, PEER_OWNER_HINT, withPeerHeaders } from '../peers/protocol.ts';
import { describe, type PeerTarget, type Target } from '../routing/router.ts';
import { PHASE_READY } from '../wire/gateway-payloads.ts';
import { FirstMessageBuffer } from '../wire/grpc-frame.ts';
import { extractRoutingKey, type RequestKey } from '../wire/routing-key.ts';
import type { ProxyContext } from './context.ts';
import { followOwner } from './follow-owner.ts';
import { forwardLocal } from './local-forward.ts';
import { copyRequestHeaders, forwardStream, respondGrpcError, UpstreamCutError, type ForwardHandle, type ForwardOptions, type Replay } from './h2-forward.ts';
import { track } from './stream-tracking.ts';
import { forwardOnSupervisorConnection, supervisorControl, type DownstreamConnection } from './supervisor-streams.ts';
import { annotateActive, ATTR_CLASS, ATTR_REPLICA, ATTR_SANDBOX, bindContext, endSpan, startSpan, streamSpan, traceHeaders, tracingEnabled, withSpan } from '../tracing/tracing.ts';
import type { Span } from '@opentelemetry/api';

export function handlePublicStream(ctx: ProxyContext, conn: DownstreamConnection, stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): void {
  stream.on('error', (conn.onStreamError ??= streamErrorListener(conn)));
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
    void forwardLocal(ctx, stream, upHeaders, 'passthrough', lazyChild(conn.log, { class: 'passthrough', path }));
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
    void forwardLocal(ctx, stream, upHeaders, 'passthrough', lazyChild(conn.log, { class: 'passthrough', path }));
    return;
  }
  const cls = method.cls;
  // The method's own path string: the request's copy is not kept by a stream held for hours.
  upHeaders[':path'] = method.path;
  const log = lazyChild(conn.log, { class: cls, path: method.path });
  // One trace per sandbox-scoped stream (the client's traceparent honoured); nothing while tracing is off.
  if (!tracingEnabled()) return dispatchGrpc(ctx, conn, stream, headers, upHeaders, method, log);
  const span = streamSpan('ohs.request', stream, headers, { [ATTR_CLASS]: cls, [ATTR_REPLICA]: ctx.store.replicaId, 'rpc.method': path });
  withSpan(span, () => dispatchGrpc(ctx, conn, stream, headers, upHeaders, method, log));
}

/**
 * The connection's one stream 'error' listener, made outside `handlePublicStream`: a closure made
 * there would share that call's scope, and keep its first stream, headers and logger as long as the
 * connection lives.
 */
function streamErrorListener(conn: DownstreamConnection): (err: Error) => void {
  return (err) => conn.log.debug({ err: err.message }, 'downstream stream error');
}

function dispatchGrpc(ctx: ProxyContext, conn: DownstreamConnection, stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, upHeaders: http2.OutgoingHttpHeaders, method: GrpcMethod, log: Logger): void {
  const cls = method.cls;
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
        followOwner(ctx, stream, upHeaders, cls, v.sandboxId, Buffer.alloc(0), lazyChild(log, { sandbox: v.sandboxId }));
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
  const classify = tracingEnabled() ? startSpan('ohs.classify', { [ATTR_CLASS]: cls, [ATTR_REPLICA]: ctx.store.replicaId }) : undefined;
  readFirstMessage(ctx, conn, stream, cls, log, bindContext((message: Buffer, frameBytes: Buffer) => {
    let key: RequestKey;
    try {
      key = extractRoutingKey(method.key, message, method.name);
      if (classify && 'sandboxId' in key) classify.setAttribute(ATTR_SANDBOX, key.sandboxId);
      endSpan(classify);
    } catch (err) {
      endSpan(classify, toOhsError(err).code);
      // Calls any replica can serve go to the local gateway, which answers as it always does; so
      // do log batches with an empty sandbox id, which the gateway skips (reference §2.0).
      if (policy === 'affine' || (cls === 'logs-push' && toOhsError(err).code === 'OHS_ERR_MISSING_ROUTING_KEY')) {
        void forwardLocal(ctx, stream, upHeaders, cls, log, frameBytes);
        return;
      }
      return rejectStream(ctx, stream, cls, log, err);
    }
    void routeByKey(ctx, conn, stream, upHeaders, method, key, frameBytes, log);
  }));
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
  const slog = lazyChild(log, { sandbox: sandboxId });
  if (tracingEnabled()) annotateActive({ [ATTR_SANDBOX]: sandboxId });
  switch (ROUTE_POLICY[cls]) {
    case 'supervisor':
      return supervisorControl(ctx, conn, stream, headers, sandboxId, frameBytes, slog);
    case 'owner-rehome':
      return followOwner(ctx, stream, headers, cls, sandboxId, frameBytes, slog);
    case 'affine':
      return routeAffine(ctx, stream, headers, cls, sandboxId, frameBytes, slog, conflictRetriesFor(method));
    default:
      return routeKeyed(ctx, stream, headers, cls, sandboxId, frameBytes, slog, 'token' in key ? key.token : undefined, conflictRetriesFor(method));
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
  conn: DownstreamConnection,
  stream: http2.ServerHttp2Stream,
  cls: TrafficClass,
  log: Logger,
  onComplete: (message: Buffer, frameBytes: Buffer) => void,
): void {
  const buf = new FirstMessageBuffer(ctx.config.maxFirstMessageBytes);
  const held = holdUntilClose(ctx, conn, stream);
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
    const over = !conn.buffer || conn.buffer.tryTake(chunk.length) ? (ctx.bufferBudget.tryTake(chunk.length) ? undefined : 'total_buffer') : 'connection_buffer';
    if (over) {
      if (over === 'total_buffer') conn.buffer?.give(chunk.length);
      finish();
      ctx.metrics.protectionsTotal.inc({ reason: over });
      const scope = over === 'total_buffer' ? 'this replica' : 'this connection';
      ctx.metrics.requestsTotal.inc({ class: cls, target: 'none', outcome: 'OHS_ERR_LIMIT' });
      log.info({ budget: over }, 'stream refused: buffered first-message bytes over budget');
      respondGrpcError(stream, 8, `too many bytes buffered for unrouted requests on ${scope}; retry later`);
      return;
    }
    held.bytes += chunk.length;
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

/**
 * Buffered first-message bytes count against the connection's and the replica's budgets until the
 * stream ends (the first message stays held for a replay until the upstream answers). Its own
 * scope: the close listener lives as long as the stream and must not keep the reader's state.
 */
function holdUntilClose(ctx: ProxyContext, conn: DownstreamConnection, stream: http2.ServerHttp2Stream): HeldBytes {
  const held: HeldBytes = { bytes: 0, ctx, conn };
  (stream as HeldStream)[kHeld] = held;
  stream.on('close', giveHeldBytes);
  return held;
}

interface HeldBytes {
  bytes: number;
  readonly ctx: ProxyContext;
  readonly conn: DownstreamConnection;
}
const kHeld = Symbol('ohs held first-message bytes');
type HeldStream = http2.ServerHttp2Stream & { [kHeld]?: HeldBytes };

/** The close listener of every stream with held bytes (one function, the state on the stream). */
function giveHeldBytes(this: HeldStream): void {
  const held = this[kHeld];
  if (held === undefined) return;
  held.conn.buffer?.give(held.bytes);
  held.ctx.bufferBudget.give(held.bytes);
  held.bytes = 0;
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
  conflicts?: ConflictRetries,
): Promise<void> {
  // Admitted without a wait when the token's verdict and a slot are at hand (no async frame, no
  // turn of the event loop: most opens of a busy sandbox); otherwise after the store answers.
  const now = admitNow(ctx, stream, cls, sandboxId, log, token);
  const release = now !== WAIT_FOR_STORE ? now : await admitFromStore(ctx, stream, cls, sandboxId, log, token);
  if (release === undefined) return;
  stream.on('close', release);
  // Past the hold bound the local gateway answers exactly as it would without us. A lookup the
  // store refused (its queue full) is answered UNAVAILABLE here, at once, rather than sent to a
  // gateway that may hold only a shadow of the sandbox's session.
  let target: Target;
  try {
    target = ctx.router.resolveCached(sandboxId) ?? (await ctx.router.resolveHeld(sandboxId, { refuseWhenOverloaded: true })) ?? NO_OWNER;
  } catch (err) {
    const e = toOhsError(err);
    ctx.metrics.requestsTotal.inc({ class: cls, target: 'none', outcome: e.code });
    respondGrpcError(stream, grpcStatusFor(e), e.message);
    return;
  }
  let prefix = frameBytes;
  let exclude: PeerTarget | undefined;
  let notOwnerRetried = false;
  let notReadyUntil = Date.now() + NOT_READY_WAIT_MS;
  // At most: one hop to an owner that proves unreachable, a held re-resolve, one retry after a
  // "not owner" answer (DESIGN §4: re-resolve and retry once), waits for Ready within one bound,
  // and a Stop's few sends again after a lost compare-and-swap.
  for (let attempt = 0; attempt < 6 + CONFLICT_RETRY_DELAYS_MS.length; attempt++) {
    if (stream.destroyed) return;
    const isOwner = target.kind === 'peer' || target.reason === 'owner';
    // Its argument is built only when the line is written: this runs for every stream.
    if (ctx.logger.isLevelEnabled('debug')) log.debug({ target: describe(target) }, 'routing');
    const outcome = await forwardAttempt(ctx, stream, headers, cls, sandboxId, target, prefix, log, {
      retryNotReady: isOwner && Date.now() < notReadyUntil,
      retryConflict: conflicts?.left() ?? false,
    });
    if (outcome.kind === 'done') return;
    prefix = outcome.replay.bytes;
    if (outcome.why === 'conflict') {
      // The owner answered and nothing moved: the same target, after a pause.
      await (conflicts as ConflictRetries).pause(ctx, log);
      continue;
    }
    if (outcome.why === 'not-ready') {
      // The owner holds a live session, yet its gateway says "not ready": a handoff's Ready write or
      // a readiness repair is moments away (reference §6, §10). The gateway refused before opening
      // anything, so the request is sent again once the phase is Ready (one bound for all waits).
      // Past the cap on held requests the next attempt takes the gateway's refusal as the answer.
      if (!(await waitForReady(ctx, sandboxId, log, notReadyUntil))) notReadyUntil = 0;
    } else {
      // Unreachable, or it says it holds no session (its record is stale: it is shutting down, or
      // lost the supervisor a moment ago): hold for an owner other than this one.
      if (outcome.why === 'not-owner') {
        if (notOwnerRetried) break;
        notOwnerRetried = true;
      }
      exclude = target as PeerTarget;
    }
    // Nothing reached a sandbox, so re-resolve (holding if needed) and send it again.
    const next: Target = (await ctx.router.resolveHeld(sandboxId, { fresh: true, ...(exclude ? { exclude } : {}) })) ?? NO_OWNER;
    log.info({ from: describe(target), to: describe(next), why: outcome.why }, 're-resolved owner');
    target = next;
  }
  ctx.metrics.requestsTotal.inc({ class: cls, target: 'peer', outcome: 'OHS_ERR_NOT_OWNER' });
  respondGrpcError(stream, 14, 'sandbox owner moved while routing; retry');
}

/**
 * StopSandbox and StartSandbox read the sandbox row, then write the next phase with one
 * compare-and-swap, and answer ABORTED "concurrent modification" when another write came first
 * (`write_lifecycle_phase`, compute/mod.rs@v0.0.111:1377-1416, no retry; docs/interop.md U3).
 * With several replicas other writes are frequent: the lease holder's sweeps and driver events,
 * and the Ready write of every shadow registration. The handlers resume where they stopped
 * (Stopping goes on to Stopped; Starting is answered as is), so a refused call is sent again,
 * after these pauses; past them the gateway's ABORTED is the answer.
 */
const CONFLICT_RETRY_METHODS: ReadonlySet<string> = new Set(['StopSandbox', 'StartSandbox']);
const CONFLICT_RETRY_DELAYS_MS = [20, 60, 180];

/** One call's sends again after lost compare-and-swaps. */
class ConflictRetries {
  private used = 0;

  constructor(private readonly method: string) {}

  /** Whether one more conflict may be retried. */
  left(): boolean {
    return this.used < CONFLICT_RETRY_DELAYS_MS.length;
  }

  async pause(ctx: ProxyContext, log: Logger): Promise<void> {
    const ms = CONFLICT_RETRY_DELAYS_MS[this.used++] as number;
    ctx.metrics.conflictRetriesTotal.inc({ method: this.method });
    log.info({ method: this.method, retry: this.used, inMs: ms }, 'gateway lost a compare-and-swap to another write of the sandbox; sending the call again');
    await new Promise((r) => setTimeout(r, ms));
  }
}

function conflictRetriesFor(method: GrpcMethod): ConflictRetries | undefined {
  return CONFLICT_RETRY_METHODS.has(method.name) ? new ConflictRetries(method.name) : undefined;
}

/** The gateway's refusal of a phase write that lost its compare-and-swap (persistence_error_to_status). */
function isConcurrentModification(headers: http2.IncomingHttpHeaders): boolean {
  if (headers['grpc-status'] !== '10') return false;
  const raw = headers['grpc-message'];
  return typeof raw === 'string' && safeDecode(raw).includes('concurrent modification');
}

/** How long a request waits for a live sandbox to be Ready again before its refusal goes out. */
const NOT_READY_WAIT_MS = 10_000;
const NOT_READY_POLL_MS = 100;

/**
 * Holds a request until the sandbox is Ready again or `until`. It takes one of the places the
 * owner holds use (`--max-held-requests`); false when none was free: then nothing waited and the
 * gateway's refusal is the answer.
 */
async function waitForReady(ctx: ProxyContext, sandboxId: string, log: Logger, until = Date.now() + NOT_READY_WAIT_MS): Promise<boolean> {
  const release = ctx.router.holdSlot(sandboxId, 'the sandbox to be Ready');
  if (release === undefined) return false;
  const started = Date.now();
  ctx.metrics.notReadyHoldsTotal.inc();
  ctx.metrics.heldRequests.inc();
  try {
    while (Date.now() < until) {
      const state = await ctx.gatewayObjects.sandboxState(sandboxId);
      if (state?.phase === PHASE_READY) {
        log.info({ waitedMs: Date.now() - started }, 'sandbox Ready again; sending the request once more');
        return true;
      }
      await new Promise((r) => setTimeout(r, state === undefined ? 5 * NOT_READY_POLL_MS : NOT_READY_POLL_MS).unref());
    }
    log.warn({ waitedMs: Date.now() - started }, 'sandbox not Ready within the wait bound; the gateway answers');
    return true;
  } finally {
    release();
    ctx.metrics.heldRequests.dec();
  }
}

/** The gateway's refusal of a sandbox-scoped call for a sandbox whose phase is not Ready (reference §2.3). */
function isNotReady(headers: http2.IncomingHttpHeaders): boolean {
  if (headers['grpc-status'] !== '9') return false;
  const raw = headers['grpc-message'];
  const message = typeof raw === 'string' ? safeDecode(raw) : '';
  return message.includes('not ready');
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

/** What `admitNow` answers when admission needs Postgres (the token's row) or Redis (a new slot). */
const WAIT_FOR_STORE = Symbol('wait for the store');

/**
 * Takes the connection slots the class's limit rules ask for. ForwardTcp takes slots only for a
 * token the gateway's own table says is valid for the sandbox: a junk token consumes nothing and
 * the owner's gateway refuses it as usual. Both return the release, or undefined after refusing;
 * `admitNow` answers at once or WAIT_FOR_STORE, then `admitFromStore` asks the stores.
 */
function admitNow(ctx: ProxyContext, stream: http2.ServerHttp2Stream, cls: TrafficClass, sandboxId: string, log: Logger, token?: string): (() => void) | undefined | typeof WAIT_FOR_STORE {
  let slotToken: string | undefined;
  if (cls === 'tcp-forward') {
    const verdict = ctx.sshTokens.cachedVerdict(token, sandboxId);
    if (verdict === undefined) return WAIT_FOR_STORE;
    if (verdict === 'invalid') return skipInvalidToken(ctx, cls);
    slotToken = token?.trim();
  }
  let admission;
  try {
    admission = ctx.limiter.acquireNow(slotRequest(ctx, stream, cls, sandboxId, slotToken));
  } catch (err) {
    return limitCheckFailed(stream, log, err);
  }
  return admission === undefined ? WAIT_FOR_STORE : admitted(ctx, stream, cls, log, admission);
}

async function admitFromStore(ctx: ProxyContext, stream: http2.ServerHttp2Stream, cls: TrafficClass, sandboxId: string, log: Logger, token?: string): Promise<(() => void) | undefined> {
  let slotToken: string | undefined;
  if (cls === 'tcp-forward') {
    if ((await ctx.sshTokens.check(token, sandboxId)) === 'invalid') return skipInvalidToken(ctx, cls);
    slotToken = token?.trim();
  }
  let admission;
  try {
    admission = await ctx.limiter.acquire(slotRequest(ctx, stream, cls, sandboxId, slotToken));
  } catch (err) {
    return limitCheckFailed(stream, log, err);
  }
  return admitted(ctx, stream, cls, log, admission);
}

function limitCheckFailed(stream: http2.ServerHttp2Stream, log: Logger, err: unknown): undefined {
  log.warn({ err: (err as Error).message }, 'limit check failed');
  respondGrpcError(stream, 14, 'connection limits unavailable');
  return undefined;
}

/** No slot for a token the gateway's table says is not valid here; the gateway refuses it itself. */
function skipInvalidToken(ctx: ProxyContext, cls: TrafficClass): () => void {
  ctx.metrics.limitSkipsTotal.inc({ class: cls, reason: 'invalid_token' });
  return NOTHING_TO_RELEASE;
}

const NOTHING_TO_RELEASE = (): void => undefined;

/** The client address is read only if a rule is keyed by it. */
function slotRequest(ctx: ProxyContext, stream: http2.ServerHttp2Stream, cls: TrafficClass, sandboxId: string, token: string | undefined): SlotRequest {
  return { cls, sandboxId, token: token || undefined, clientAddress: ctx.limiter.readsClientAddress(cls) ? stream.session?.socket?.remoteAddress : undefined };
}

function admitted(ctx: ProxyContext, stream: http2.ServerHttp2Stream, cls: TrafficClass, log: Logger, admission: AcquireResult): (() => void) | undefined {
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
  conflicts?: ConflictRetries,
): Promise<void> {
  let target = await ctx.router.resolve(sandboxId);
  let prefix = frameBytes;
  for (let attempt = 0; attempt < 2; attempt++) {
    const outcome = await forwardAttempt(ctx, stream, headers, cls, sandboxId, target, prefix, log, {
      retryNotReady: attempt === 0 && (target.kind === 'peer' || target.reason === 'owner'),
      retryConflict: conflicts?.left() ?? false,
    });
    if (outcome.kind === 'done') return;
    prefix = outcome.replay.bytes;
    if (outcome.why === 'conflict') {
      // Answered by the gateway it reached, which took nothing: again there, not counted as a try.
      await (conflicts as ConflictRetries).pause(ctx, log);
      attempt--;
      continue;
    }
    if (outcome.why === 'not-ready') await waitForReady(ctx, sandboxId, log);
    // Another attempt: the owner again once Ready, else (not owner, unreachable) the local gateway.
    target = outcome.why === 'not-ready' ? await ctx.router.resolve(sandboxId, { fresh: true }) : NO_OWNER;
  }
  return forwardLocal(ctx, stream, headers, cls, log, prefix);
}

type RetryWhy = 'not-owner' | 'unreachable' | 'silent' | 'not-ready' | 'conflict';
type Attempt = { kind: 'done' } | { kind: 'retry'; replay: Replay; why: RetryWhy };

const NOTHING = (): void => undefined;

/** A retried attempt's outcome label, and what the client hears when the request cannot be sent again. */
const RETRY_OUTCOME: Record<RetryWhy, string> = { 'not-owner': 'not_owner', 'not-ready': 'not_ready', unreachable: 'refused', silent: 'silent', conflict: 'conflict' };
const RETRY_FAILED_MESSAGE: Record<RetryWhy, string> = {
  'not-owner': 'sandbox owner moved while routing; retry',
  'not-ready': 'sandbox is not ready',
  unreachable: 'upstream refused the stream; retry',
  silent: 'owner replica went silent; retry',
  conflict: 'concurrent modification of the sandbox; retry',
};

/**
 * One attempt's answer handling, as the options `forwardStream` calls back: the state is in fields
 * and the callbacks are methods, so a stream held for hours keeps one object for it, not a set of
 * closures with the routing code's scopes behind them.
 */
class ForwardTry implements ForwardOptions {
  /** The attempt's outcome is known (a response relayed, a failure answered, or a retry taken). */
  private settled = false;
  handle: ForwardHandle | undefined;

  constructor(
    private readonly ctx: ProxyContext,
    private readonly stream: http2.ServerHttp2Stream,
    private readonly cls: TrafficClass,
    private readonly peer: PeerTarget | undefined,
    private readonly log: Logger,
    private readonly span: Span | undefined,
    private readonly retryNotReady: boolean,
    private readonly retryConflict: boolean,
    /** Ends the request a shed waits for (see LocalSessions.beginRequest); idempotent. */
    private readonly answered: () => void,
    private readonly done: (outcome: string) => void,
    private readonly resolve: (attempt: Attempt) => void,
  ) {}

  private retry(why: RetryWhy): boolean {
    const replay = (this.handle as ForwardHandle).abandon();
    this.done(RETRY_OUTCOME[why]);
    this.settled = true;
    if (replay) this.resolve({ kind: 'retry', replay, why });
    else {
      respondGrpcError(this.stream, why === 'conflict' ? 10 : 14, RETRY_FAILED_MESSAGE[why]);
      this.resolve({ kind: 'done' });
    }
    return false;
  }

  onResponse(res: http2.IncomingHttpHeaders, endStream: boolean): boolean {
    this.answered();
    const peer = this.peer;
    if (peer && res[PEER_NOT_OWNER] !== undefined) {
      this.ctx.metrics.forwardsTotal.inc({ class: this.cls, peer: peer.replicaId, outcome: 'not_owner' });
      this.log.info({ hint: res[PEER_OWNER_HINT] }, 'peer is not the owner');
      return this.retry('not-owner');
    }
    if (this.retryNotReady && endStream && isNotReady(res)) {
      this.log.info('gateway says the sandbox is not ready while its session is live; waiting for Ready');
      return this.retry('not-ready');
    }
    if (this.retryConflict && endStream && isConcurrentModification(res)) return this.retry('conflict');
    this.settled = true;
    if (peer) this.ctx.metrics.forwardsTotal.cell(this.cls, peer.replicaId, 'ok').inc();
    this.resolve({ kind: 'done' });
    return true;
  }

  onUpstreamError(err: Error): void {
    this.answered();
    if (this.settled) return;
    const peer = this.peer;
    if ((this.handle as ForwardHandle).upstream.rstCode === http2.constants.NGHTTP2_REFUSED_STREAM) {
      // Refused unprocessed (a GOAWAY's last-stream-id, or the peer's stream limit): nothing
      // reached the gateway, so the request goes again on a fresh connection.
      this.log.info('stream refused before processing; sending it again');
      this.retry('unreachable');
      return;
    }
    if (peer && err instanceof UpstreamCutError && err.silent) {
      // The owner's sidecar sent nothing, not even a PING's answer, for --h2-ping-timeout-ms: its
      // node or its link is gone. The request is held for the sandbox's next owner (an ownership
      // event: the supervisor reconnected elsewhere, so the silent replica's gateway can no longer
      // reach the sandbox with it) and sent there; with no new owner within --owner-wait-ms the
      // client is answered UNAVAILABLE.
      this.ctx.metrics.forwardsTotal.inc({ class: this.cls, peer: peer.replicaId, outcome: 'silent' });
      this.log.warn({ err: err.message }, 'owner replica went silent before a response; holding the request for the next owner');
      this.retry('silent');
      return;
    }
    this.settled = true;
    if (peer) this.ctx.metrics.forwardsTotal.inc({ class: this.cls, peer: peer.replicaId, outcome: 'error' });
    this.log.warn({ err: err.message }, peer ? 'peer stream failed before a response' : 'gateway stream failed before a response');
    respondGrpcError(this.stream, 14, peer ? `owner replica ${peer.replicaId} unavailable` : `upstream failed: ${err.message}`);
    this.resolve({ kind: 'done' });
  }

  onDone({ reset, grpcStatus }: { reset: boolean; grpcStatus: string | undefined }): void {
    this.answered();
    const outcome = reset ? 'reset' : `grpc_${grpcStatus ?? 'none'}`;
    this.done(outcome);
    if (this.span && this.settled) {
      this.span.setAttribute('ohs.outcome', outcome);
      endSpan(this.span);
    }
  }
}

/**
 * One attempt at a target: the local gateway, or the owner's sidecar over the peer protocol. Comes
 * back with what was sent when nothing reached a sandbox and another attempt makes sense: a peer that
 * is not the owner, an unreachable peer, or (with `retryNotReady`) a gateway that refused at once
 * because the sandbox is not Ready.
 */
export function forwardAttempt(
  ctx: ProxyContext,
  stream: http2.ServerHttp2Stream,
  headers: http2.OutgoingHttpHeaders,
  cls: TrafficClass,
  sandboxId: string,
  target: Target,
  prefix: Buffer,
  log: Logger,
  opts: { retryNotReady: boolean; retryConflict?: boolean },
): Promise<Attempt> {
  const peer = target.kind === 'peer' ? target : undefined;
  const where = peer ? 'peer' : 'local';
  const span = tracingEnabled()
    ? startSpan('ohs.forward', { [ATTR_CLASS]: cls, [ATTR_SANDBOX]: sandboxId, [ATTR_REPLICA]: ctx.store.replicaId, 'ohs.target': peer ? peer.replicaId : 'local' })
    : undefined;
  const attempt = new Promise<Attempt>((resolve) => {
    const plog = peer ? lazyChild(log, { target: peer.replicaId }) : log;
    if (target.kind === 'local' && target.reason !== 'owner' && RELAY_CLASSES.has(cls) && ctx.hostedShadows.has(sandboxId)) {
      // Our gateway holds only another replica's shadow of this session: it would accept the request
      // and send its RelayOpen down the shadow, where nobody answers it (DEADLINE_EXCEEDED after 10 s).
      // Answer as the gateway does for a sandbox with no session here.
      endSpan(span, 'no owner');
      ctx.metrics.requestsTotal.inc({ class: cls, target: 'none', outcome: 'OHS_ERR_NO_OWNER' });
      plog.info('no owner, and the local gateway holds only a shadow of the session: answered here');
      respondGrpcError(stream, 14, 'supervisor session not connected');
      resolve({ kind: 'done' });
      return;
    }
    // A session claimed here a moment ago: first the gateway must have taken it (acceptedSettled).
    const gate = target.kind === 'local' && target.reason === 'owner' ? ctx.localSessions.acceptedSettled(sandboxId) : undefined;
    // To our own gateway for a session held here: a shed waits until the gateway answered. Counted
    // from the routing decision on, not from the send: a shed must not end the control stream while
    // this request waits for a gateway connection and then gets its RelayOpen lost.
    const heldEpoch = target.kind === 'local' && target.reason === 'owner' && RELAY_CLASSES.has(cls) ? ctx.localSessions.epoch(sandboxId) : undefined;
    const answered = heldEpoch !== undefined ? ctx.localSessions.beginRequest(sandboxId) : NOTHING;
    const session = peer ? ctx.peerPool.get(peer.peerUrl) : gate ? gate.then(() => ctx.gatewayPool.get(ctx.gatewayOrigin)) : ctx.gatewayPool.get(ctx.gatewayOrigin);
    session.then(
      (session) => {
        if (stream.destroyed) {
          answered();
          endSpan(span, 'client gone');
          return resolve({ kind: 'done' });
        }
        if (heldEpoch !== undefined && (ctx.localSessions.isShedding(sandboxId) || ctx.localSessions.epoch(sandboxId) !== heldEpoch)) {
          // The session began leaving (a shed) or was replaced while we waited: nothing was sent,
          // so the request waits for the supervisor's next owner instead.
          answered();
          plog.info('local session is being shed; holding the request for the next owner');
          return resolve({ kind: 'retry', replay: { bytes: prefix, ended: stream.readableEnded }, why: 'not-owner' });
        }
        const done = track(ctx, cls, where);
        const upHeaders = peer
          ? withPeerHeaders(headers, { secret: ctx.peerSecret ?? '', origin: ctx.store.replicaId, sandboxId, epoch: peer.epoch, cls, hop: 1 }, traceHeaders(span))
          : span
            ? Object.assign({}, headers, traceHeaders(span))
            : headers;
        const forward = new ForwardTry(ctx, stream, cls, peer, plog, span, opts.retryNotReady, opts.retryConflict ?? false, answered, done, resolve);
        try {
          forward.handle = forwardStream(stream, session, upHeaders, forward, prefix);
        } catch (err) {
          // The session began closing (GOAWAY) between get() and request(): nothing was sent.
          answered();
          done('OHS_ERR_UPSTREAM');
          plog.info({ err: (err as Error).message }, 'session closing; trying again');
          resolve({ kind: 'retry', replay: { bytes: prefix, ended: stream.readableEnded }, why: 'unreachable' });
        }
      },
      (err: unknown) => {
        answered();
        if (!peer) {
          endSpan(span, 'gateway unreachable');
          log.warn({ err: (err as Error).message }, 'local gateway unreachable');
          ctx.metrics.requestsTotal.inc({ class: cls, target: 'local', outcome: 'OHS_ERR_UPSTREAM' });
          respondGrpcError(stream, 14, 'gateway unavailable');
          resolve({ kind: 'done' });
          return;
        }
        // Could not even connect: nothing was sent anywhere, so the request can go elsewhere.
        ctx.metrics.forwardsTotal.inc({ class: cls, peer: peer.replicaId, outcome: 'unreachable' });
        plog.warn({ err: (err as Error).message }, 'owner replica unreachable');
        resolve({ kind: 'retry', replay: { bytes: prefix, ended: stream.readableEnded }, why: 'unreachable' });
      },
    );
  });
  if (!span) return attempt;
  return attempt.then((a) => {
    if (a.kind === 'retry') endSpan(span, a.why);
    return a;
  });
}
