// HTTP/1.1 CONNECT tunnels (seed SSH, reference §2.3). The CONNECT head is re-serialised
// (minus x-ohs-* headers) and replayed to the target with the head bytes, so the gateway sees
// the client's request and the client sees the gateway's own answer (401/404/412/429/502/200).
import { lazyChild } from '../log/logger.ts';
import type { IncomingMessage } from 'node:http';
import http2 from 'node:http2';
import type net from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { classifyHttp1 } from '../classify/classify.ts';
import { httpStatusFor } from '../errors.ts';
import type { AcquireResult, SlotRequest } from '../limits/slots.ts';
import { NOT_OWNER_STATUS, PEER_NOT_OWNER, withPeerHeaders } from '../peers/protocol.ts';
import type { PeerTarget, Target } from '../routing/router.ts';
import { sandboxIdProblem } from '../wire/routing-key.ts';
import type { ProxyContext } from './context.ts';
import { OPEN_STREAM } from './h2-forward.ts';
import { silentDeath } from './liveness.ts';
import { splice } from './splice.ts';
import { forgetSentHeaders } from './sent-headers.ts';

export { splice } from './splice.ts';

/** Bytes through a tunnel once it was open, from the client socket's own counters. */
export interface TunnelBytes {
  toSandbox: number;
  fromSandbox: number;
}

type CountedDuplex = Duplex & { bytesRead?: number; bytesWritten?: number };

/** An HTTP header name (RFC 9110 token). */
const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/** The request line and headers as received, minus x-ohs-* headers, to replay upstream. */
export function requestHead(req: IncomingMessage): Buffer {
  let head = `${req.method ?? 'GET'} ${req.url ?? '/'} HTTP/1.1\r\n`;
  const raw = req.rawHeaders;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i] as string;
    if (!HEADER_NAME.test(name) || name.toLowerCase().startsWith('x-ohs-')) continue;
    // Node's parser refuses CR, LF and NUL in values; never trusting that, no value can start a
    // header line of its own (an x-ohs-* one above all).
    head += `${name}: ${(raw[i + 1] as string).replace(/[\r\n\0]/g, ' ')}\r\n`;
  }
  return Buffer.from(`${head}\r\n`, 'latin1');
}

/** The routing headers of a CONNECT, read from its raw header list (any case). */
export interface TunnelHeaders {
  sandboxId?: string;
  token?: string;
  /** The first of them that occurs more than once. */
  duplicate?: string;
}

/**
 * One pass over the raw headers instead of `req.headers`, which Node builds (every header
 * lower-cased and merged) the first time it is read: a few µs of each tunnel open.
 */
export function tunnelHeaders(rawHeaders: readonly string[]): TunnelHeaders {
  const found: TunnelHeaders = {};
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    const name = rawHeaders[i] as string;
    // Both names are 12 and 15 characters long: most headers are passed over without a lower-case copy.
    if (name.length !== 12 && name.length !== 15) continue;
    const lower = name.toLowerCase();
    const key = lower === 'x-sandbox-id' ? 'sandboxId' : lower === 'x-sandbox-token' ? 'token' : undefined;
    if (key === undefined) continue;
    if (found[key] !== undefined) {
      found.duplicate ??= lower;
      continue;
    }
    found[key] = rawHeaders[i + 1] as string;
  }
  return found;
}

export function writeHttpError(socket: Duplex, status: number, reason: string, body: string): void {
  if (socket.destroyed) return;
  const text = `${body}\n`;
  socket.end(`HTTP/1.1 ${status} ${reason}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(text)}\r\nconnection: close\r\n\r\n${text}`);
}

/** Longest response head read from an upstream before a tunnel is opened. */
const MAX_RESPONSE_HEAD_BYTES = 16 * 1024;

/**
 * Why a tunnel ended before its upstream answered: the client left first, or it got our 502 (the
 * upstream closed, or sent a head too long to read) or 504 (no head in time) instead.
 */
export type HeadFailure = 'client-closed' | 'closed' | 'head-too-long' | 'timeout';

export interface ResponseHeadOptions {
  /** Bytes the client sent after its request head: they go upstream only once it accepted. */
  early?: Buffer | undefined;
  /** No complete response head within this long: 504, and the upstream is cut (absent: no bound). */
  headTimeoutMs?: number;
}

/**
 * Opens a tunnel only once the upstream agreed: reads its response head, relays it to the client,
 * and splices the two only when `accept(status)` (200 for CONNECT, 101 for an upgrade). A refusal
 * is relayed and the connection closed: bytes the client pipelined after a refused request never
 * reach the gateway raw, past classification, limits and header stripping.
 */
export function spliceAfterResponseHead(
  client: CountedDuplex,
  upstream: Duplex,
  accept: (status: number) => boolean,
  /** Once, at the end; with `failure` when the client was answered by us, not by the upstream. */
  onClose: (bytes?: TunnelBytes, failure?: HeadFailure) => void,
  opts: ResponseHeadOptions = {},
): void {
  const chunks: Buffer[] = [];
  let size = 0;
  let closed = false;
  // Nothing has reached the client yet: it is owed an answer, not a bare close (an owner's gateway
  // that was down, or one that closed, stayed silent or sent a head too long to read).
  const giveUp = (failure: HeadFailure): void => {
    if (closed) return;
    closed = true;
    clearTimeout(timer);
    upstream.off('data', onData);
    if (failure === 'client-closed') client.destroy();
    else if (failure === 'timeout') writeHttpError(client, 504, 'Gateway Timeout', `gateway sent no response within ${opts.headTimeoutMs} ms`);
    else writeHttpError(client, 502, 'Bad Gateway', failure === 'head-too-long' ? 'gateway response head too long' : 'gateway closed the connection before answering');
    upstream.destroy();
    onClose(undefined, failure);
  };
  const upstreamClosed = (): void => giveUp('closed');
  const timer = opts.headTimeoutMs ? setTimeout(giveUp, opts.headTimeoutMs, 'timeout') : undefined;
  timer?.unref();
  const onData = (chunk: Buffer): void => {
    chunks.push(chunk);
    size += chunk.length;
    const all = chunks.length === 1 ? chunk : Buffer.concat(chunks, size);
    const end = all.indexOf('\r\n\r\n');
    if (end < 0) {
      if (size > MAX_RESPONSE_HEAD_BYTES) giveUp('head-too-long');
      return;
    }
    clearTimeout(timer);
    upstream.off('data', onData);
    upstream.off('end', upstreamClosed);
    upstream.off('close', upstreamClosed);
    upstream.pause();
    const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(all.subarray(0, Math.min(end, 64)).toString('latin1'))?.[1] ?? 0);
    if (accept(status)) {
      // From here splice owns both sides and calls onClose once; bytes are counted by the client
      // socket itself (nothing per chunk), from here on.
      closed = true;
      client.write(all);
      const read0 = client.bytesRead ?? 0;
      const written0 = client.bytesWritten ?? 0;
      const early = opts.early;
      const earlyBytes = early?.length ?? 0;
      if (early && earlyBytes > 0) upstream.write(early);
      splice(client, upstream, () =>
        onClose({ toSandbox: earlyBytes + (client.bytesRead ?? read0) - read0, fromSandbox: (client.bytesWritten ?? written0) - written0 }),
      );
      upstream.resume();
      return;
    }
    // Refused: the client gets the gateway's whole answer, and nothing of its own goes upstream.
    closed = true;
    client.removeAllListeners('data');
    client.write(all);
    upstream.on('data', (c: Buffer) => client.write(c));
    const finish = (): void => {
      client.end();
      upstream.destroy();
      onClose();
    };
    upstream.once('end', finish);
    upstream.once('close', () => {
      if (!client.writableEnded) finish();
    });
    upstream.on('error', () => undefined);
    upstream.resume();
  };
  upstream.on('data', onData);
  upstream.once('end', upstreamClosed);
  upstream.once('close', upstreamClosed);
  upstream.on('error', () => undefined);
  client.on('error', () => undefined);
  client.once('close', () => {
    if (!closed) giveUp('client-closed');
  });
}

const isSuccess = (status: number): boolean => status >= 200 && status < 300;

/**
 * A tunnel's end in the metrics: closed (after the gateway's answer, or the client leaving before
 * it), or the error the client got from us because the gateway never answered.
 */
function tunnelEnded(ctx: ProxyContext, log: Logger, cls: string, target: 'local' | 'peer', start: bigint, bytes: TunnelBytes | undefined, failure: HeadFailure | undefined): void {
  if (failure === undefined || failure === 'client-closed') {
    ctx.metrics.requestsTotal.cell(cls, target, 'closed').inc();
    ctx.metrics.requestDurationSeconds.cell(cls, target).observe(Number(process.hrtime.bigint() - start) / 1e9);
    countTunnelBytes(ctx, bytes);
    return;
  }
  ctx.metrics.requestsTotal.inc({ class: cls, target, outcome: failure === 'timeout' ? 'OHS_ERR_TIMEOUT' : 'OHS_ERR_UPSTREAM' });
  if (failure === 'timeout') ctx.metrics.protectionsTotal.inc({ reason: 'response_timeout' });
  log.warn({ failure, waitedMs: Math.round(Number(process.hrtime.bigint() - start) / 1e6) }, 'gateway did not answer the tunnel');
}

function countTunnelBytes(ctx: ProxyContext, bytes: TunnelBytes | undefined): void {
  if (!bytes) return;
  ctx.metrics.tunnelBytesTotal.cell('to_sandbox').inc(bytes.toSandbox);
  ctx.metrics.tunnelBytesTotal.cell('from_sandbox').inc(bytes.fromSandbox);
}

/** A CONNECT to replay upstream: its head, and what the client pipelined after it. */
interface TunnelOpening {
  head: Buffer;
  early: Buffer;
}

export function handleConnect(ctx: ProxyContext, connLog: Logger, req: IncomingMessage, socket: net.Socket, head: Buffer): void {
  socket.on('error', (err) => connLog.debug({ err: err.message }, 'tunnel client socket error'));
  const cls = classifyHttp1(req.method ?? '', req.url ?? '');
  // One value each: duplicates would make the key we route and count by differ from the one the
  // gateway reads (it takes the first), so they are refused outright.
  const { sandboxId, token, duplicate } = tunnelHeaders(req.rawHeaders);
  const dup = cls === 'ssh-tunnel' ? duplicate : undefined;
  if (dup) {
    connLog.info({ header: dup }, 'CONNECT with a duplicated header refused');
    ctx.metrics.classifyErrorsTotal.inc({ reason: 'OHS_ERR_BAD_REQUEST' });
    writeHttpError(socket, 400, 'Bad Request', `duplicate ${dup} header`);
    return;
  }
  // The bytes after the CONNECT head (`head`) wait for the gateway's 200: after a refusal they would
  // be read as the next request on a keep-alive connection.
  const rawHead: TunnelOpening = { head: requestHead(req), early: head };
  const log = lazyChild(connLog, { class: cls, sandbox: sandboxId });
  // No usable routing key: the local gateway gives the client its own answer (401/400/404).
  if (cls !== 'ssh-tunnel' || !sandboxId || sandboxIdProblem(sandboxId) !== undefined || ctx.gatewayWatch.nativeHa()) {
    tunnelLocal(ctx, log, socket, rawHead, cls);
    return;
  }
  socket.pause();
  // Limits are checked here, at the ingress, before any peer hop or gateway contact: a refused
  // attempt sends nothing anywhere (DESIGN §5). A slot only for a token the gateway's own table says
  // is valid for this sandbox: junk tokens consume nothing, and the gateway answers them 401 itself
  // (reference §2.3). When the token's verdict and a slot are at hand (a busy sandbox's tunnels),
  // admitted at once; otherwise once the store answered.
  const verdict = ctx.sshTokens.cachedVerdict(token, sandboxId);
  let admission: AcquireResult | undefined;
  try {
    if (verdict !== undefined && verdict !== 'invalid') admission = ctx.limiter.acquireNow(tunnelSlotRequest(ctx, socket, cls, sandboxId, token));
  } catch (err) {
    limitCheckFailed(socket, log, err);
    return;
  }
  if (verdict === 'invalid') {
    void routeWithoutSlot(ctx, log, socket, rawHead, sandboxId, cls);
  } else if (admission !== undefined) {
    admitTunnel(ctx, log, socket, rawHead, sandboxId, cls, admission);
  } else {
    void (async () => {
      if ((await ctx.sshTokens.check(token, sandboxId)) === 'invalid') {
        await routeWithoutSlot(ctx, log, socket, rawHead, sandboxId, cls);
        return;
      }
      let fromStore;
      try {
        fromStore = await ctx.limiter.acquire(tunnelSlotRequest(ctx, socket, cls, sandboxId, token));
      } catch (err) {
        limitCheckFailed(socket, log, err);
        return;
      }
      admitTunnel(ctx, log, socket, rawHead, sandboxId, cls, fromStore);
    })();
  }
}

/** A token the gateway's table says is not valid here takes no slot; the gateway refuses it itself. */
function routeWithoutSlot(ctx: ProxyContext, log: Logger, socket: net.Socket, rawHead: TunnelOpening, sandboxId: string, cls: string): Promise<void> {
  ctx.metrics.limitSkipsTotal.inc({ class: cls, reason: 'invalid_token' });
  return routeTunnel(ctx, log, socket, rawHead, sandboxId, cls);
}

function limitCheckFailed(socket: net.Socket, log: Logger, err: unknown): void {
  log.warn({ err: (err as Error).message }, 'limit check failed');
  writeHttpError(socket, 503, 'Service Unavailable', 'connection limits unavailable');
}

/**
 * The client address is read (getpeername) only if a rule is keyed by it. Not with a getter: an
 * object literal with an accessor gets a map of its own, in the old generation, that holds the
 * getter's closure, so every tunnel's socket, buffers and closures outlived two scavenges (5.2 KB
 * promoted per open; docs/performance.md, twelfth session).
 */
function tunnelSlotRequest(ctx: ProxyContext, socket: net.Socket, cls: string, sandboxId: string, token: string | undefined): SlotRequest {
  return { cls, sandboxId, token, clientAddress: ctx.limiter.readsClientAddress(cls) ? socket.remoteAddress : undefined };
}

/** Refuses the tunnel, or routes it holding its slot until the client's socket closes. */
function admitTunnel(ctx: ProxyContext, log: Logger, socket: net.Socket, rawHead: TunnelOpening, sandboxId: string, cls: string, admission: AcquireResult): void {
  if (!admission.ok) {
    const status = httpStatusFor(admission.error);
    ctx.metrics.requestsTotal.inc({ class: cls, target: 'none', outcome: admission.error.code });
    log.info({ rule: admission.rule.name }, 'tunnel refused by limit');
    writeHttpError(socket, status, status === 429 ? 'Too Many Requests' : 'Service Unavailable', admission.error.message);
    return;
  }
  socket.on('close', admission.release); // `on`: see splice
  if (socket.destroyed) {
    admission.release();
    return;
  }
  void routeTunnel(ctx, log, socket, rawHead, sandboxId, cls);
}

/** Held while no owner is reachable; past the bound the local gateway answers as it would. */
async function routeTunnel(ctx: ProxyContext, log: Logger, socket: net.Socket, rawHead: TunnelOpening, sandboxId: string, cls: string): Promise<void> {
  let target: Target = ctx.router.resolveCached(sandboxId) ?? (await ctx.router.resolveHeld(sandboxId)) ?? NO_OWNER;
  let exclude: PeerTarget | undefined;
  let notOwnerRetried = false;
  for (let attempt = 0; attempt < 3; attempt++) {
    if (socket.destroyed) return;
    if (target.kind === 'local') {
      // A session claimed here a moment ago (a held tunnel released by that very claim): the gateway
      // takes the supervisor's Hello first, else it answers 412 "sandbox is not ready". Undefined,
      // so not waited for, once the gateway accepted it.
      const gate = target.reason === 'owner' ? ctx.localSessions.acceptedSettled(sandboxId) : undefined;
      if (gate) {
        await gate;
        if (socket.destroyed) return;
      }
      tunnelLocal(ctx, log, socket, rawHead, cls);
      return;
    }
    const result = await tunnelToPeer(ctx, log, socket, rawHead, sandboxId, target);
    if (result === 'done') return;
    if (result === 'not-owner') {
      if (notOwnerRetried) break;
      notOwnerRetried = true;
    }
    // Unreachable or gone silent, or holding no session (a stale record): hold for another owner.
    exclude = target;
    const next: Target = (await ctx.router.resolveHeld(sandboxId, { fresh: true, ...(exclude ? { exclude } : {}) })) ?? NO_OWNER;
    log.info({ from: target.replicaId, to: next.kind === 'peer' ? next.replicaId : 'local', why: result }, 're-resolved owner');
    target = next;
  }
  ctx.metrics.requestsTotal.inc({ class: cls, target: 'peer', outcome: 'OHS_ERR_NOT_OWNER' });
  writeHttpError(socket, 502, 'Bad Gateway', 'sandbox owner moved while routing; retry');
}

const NO_OWNER: Target = { kind: 'local', epoch: null, reason: 'no-owner' };

function tunnelLocal(ctx: ProxyContext, log: Logger, socket: net.Socket, rawHead: TunnelOpening, cls: string): void {
  let connected = false;
  const upstream = ctx.gateway.connect(() => {
    connected = true;
    clearTimeout(connectTimer);
    upstream.write(rawHead.head);
    spliceAfterResponseHead(socket, upstream, isSuccess, (bytes, failure) => {
      active.dec();
      tunnelEnded(ctx, log, cls, 'local', start, bytes, failure);
    }, { early: rawHead.early, headTimeoutMs: ctx.config.upstreamResponseTimeoutMs });
  });
  // The client's socket has TCP_NODELAY from the public listener, set at accept.
  upstream.setNoDelay(true);
  const start = process.hrtime.bigint();
  const active = ctx.metrics.activeTunnels.cell('local');
  active.inc();
  const connectTimer = setTimeout(() => upstream.destroy(new Error('gateway connect timeout')), ctx.config.upstreamConnectTimeoutMs);
  connectTimer.unref();
  upstream.once('error', (err) => {
    if (connected) return;
    clearTimeout(connectTimer);
    active.dec();
    ctx.metrics.requestsTotal.inc({ class: cls, target: 'local', outcome: 'OHS_ERR_UPSTREAM' });
    log.warn({ err: err.message }, 'local gateway unreachable for tunnel');
    writeHttpError(socket, 502, 'Bad Gateway', 'gateway unavailable');
  });
}

type PeerTunnelResult = 'done' | 'not-owner' | 'unreachable' | 'silent';

function tunnelToPeer(
  ctx: ProxyContext,
  log: Logger,
  socket: net.Socket,
  rawHead: TunnelOpening,
  sandboxId: string,
  target: PeerTarget,
): Promise<PeerTunnelResult> {
  const plog = lazyChild(log, { target: target.replicaId });
  return ctx.peerPool.get(target.peerUrl).then(
    (session) =>
      new Promise<PeerTunnelResult>((resolve) => {
        let stream: http2.ClientHttp2Stream;
        try {
          stream = session.request(
            withPeerHeaders(
              { ':method': 'CONNECT', ':authority': 'openshell-ssh-tunnel' },
              { secret: ctx.peerSecret ?? '', origin: ctx.store.replicaId, sandboxId, epoch: target.epoch, cls: 'ssh-tunnel', hop: 1 },
            ),
            OPEN_STREAM,
          );
          forgetSentHeaders(stream);
          // The CONNECT head goes with the request, not after the peer's answer: one round trip to
          // the peer fewer per tunnel. A peer that is not the owner answers before reading it (and
          // reaches no gateway), so the head is still ours to replay to the next owner.
          stream.write(rawHead.head);
        } catch (err) {
          // The peer connection began closing (GOAWAY) after get(): nothing was sent.
          plog.info({ err: (err as Error).message }, 'peer connection closing');
          resolve('unreachable');
          return;
        }
        let responded = false;
        // The owner answers at once (before its gateway does); a stuck one still gets a bound.
        const noAnswer = setTimeout(() => {
          if (responded) return;
          responded = true;
          stream.close(http2.constants.NGHTTP2_CANCEL);
          ctx.metrics.forwardsTotal.inc({ class: 'ssh-tunnel', peer: target.replicaId, outcome: 'timeout' });
          ctx.metrics.protectionsTotal.inc({ reason: 'response_timeout' });
          plog.warn({ waitedMs: ctx.config.upstreamResponseTimeoutMs }, 'peer sent no response to the tunnel');
          writeHttpError(socket, 504, 'Gateway Timeout', `owner replica ${target.replicaId} sent no response within ${ctx.config.upstreamResponseTimeoutMs} ms`);
          resolve('done');
        }, ctx.config.upstreamResponseTimeoutMs);
        noAnswer.unref();
        stream.on('error', (err) => {
          clearTimeout(noAnswer);
          if (responded) return;
          responded = true;
          ctx.metrics.forwardsTotal.inc({ class: 'ssh-tunnel', peer: target.replicaId, outcome: 'error' });
          plog.warn({ err: err.message }, 'peer tunnel failed before a response');
          writeHttpError(socket, 502, 'Bad Gateway', `owner replica ${target.replicaId} unavailable`);
          resolve('done');
        });
        // Closed with no answer and no error: the connection was destroyed under the stream. For a
        // PING left unanswered (the owner's node or link is gone) the tunnel waits for the
        // sandbox's next owner, as for a refused connect; otherwise the client hears why.
        const onClose = (): void => {
          clearTimeout(noAnswer);
          if (responded) return;
          responded = true;
          const silent = silentDeath(session);
          ctx.metrics.forwardsTotal.inc({ class: 'ssh-tunnel', peer: target.replicaId, outcome: silent ? 'silent' : 'error' });
          if (silent) {
            plog.warn('owner replica went silent before answering the tunnel; holding it for the next owner');
            resolve('silent');
            return;
          }
          plog.warn({ rstCode: stream.rstCode }, 'peer tunnel closed before a response');
          writeHttpError(socket, 502, 'Bad Gateway', `owner replica ${target.replicaId} unavailable`);
          resolve('done');
        };
        stream.on('close', onClose);
        stream.on('response', (headers) => {
          clearTimeout(noAnswer);
          if (responded) return;
          responded = true;
          // Answered: the splice below sees the stream's end from here on.
          stream.off('close', onClose);
          const status = Number(headers[':status']);
          if (status === NOT_OWNER_STATUS && headers[PEER_NOT_OWNER] !== undefined) {
            ctx.metrics.forwardsTotal.inc({ class: 'ssh-tunnel', peer: target.replicaId, outcome: 'not_owner' });
            stream.close(http2.constants.NGHTTP2_CANCEL);
            resolve('not-owner');
            return;
          }
          if (status !== 200) {
            ctx.metrics.forwardsTotal.inc({ class: 'ssh-tunnel', peer: target.replicaId, outcome: `http_${status}` });
            plog.warn({ status, error: headers['x-ohs-error'] }, 'peer refused tunnel');
            stream.close(http2.constants.NGHTTP2_CANCEL);
            writeHttpError(socket, 502, 'Bad Gateway', `owner replica ${target.replicaId} refused the tunnel`);
            resolve('done');
            return;
          }
          ctx.metrics.forwardsTotal.cell('ssh-tunnel', target.replicaId, 'ok').inc();
          const active = ctx.metrics.activeTunnels.cell('peer');
          active.inc();
          const start = process.hrtime.bigint();
          spliceAfterResponseHead(socket, stream, isSuccess, (bytes, failure) => {
            active.dec();
            tunnelEnded(ctx, plog, 'ssh-tunnel', 'peer', start, bytes, failure);
          }, { early: rawHead.early, headTimeoutMs: ctx.config.upstreamResponseTimeoutMs });
          resolve('done');
        });
      }),
    (err: unknown) => {
      ctx.metrics.forwardsTotal.inc({ class: 'ssh-tunnel', peer: target.replicaId, outcome: 'unreachable' });
      plog.warn({ err: (err as Error).message }, 'owner replica unreachable');
      return 'unreachable' as const;
    },
  );
}
