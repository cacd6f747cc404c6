// Per-stream HTTP/2 forwarding: one downstream server stream to one upstream client stream,
// preserving headers, trailers (grpc-status), cancellation (RST_STREAM) and flow control.
import http2 from 'node:http2';
import { silentDeath } from './liveness.ts';
import { forgetSentHeaders } from './sent-headers.ts';

const { NGHTTP2_CANCEL, NGHTTP2_FLAG_END_STREAM, NGHTTP2_INTERNAL_ERROR, NGHTTP2_NO_ERROR } = http2.constants;

/**
 * Options for Node's `request()` and `respond()` with every key Node fills in present already (its
 * defaults). Both copy their options with an object spread and then add what is missing (request:
 * weight, parent, exclusive, silent; respond: endStream), and V8 (Node 20) gives a spread's copy a
 * map of its own, so that each key added afterwards makes another: request() took 18-25 µs with
 * `{ endStream: false }` against 13-15 µs with these (medians of 30 batches of 500 on one session).
 */
export const OPEN_STREAM = Object.freeze({ endStream: false, weight: http2.constants.NGHTTP2_DEFAULT_WEIGHT, parent: 0, exclusive: false, silent: false });
export const RESPOND_WITH_TRAILERS = Object.freeze({ endStream: false, waitForTrailers: true });

/** Connection-specific headers that must not cross an HTTP/2 hop (RFC 9113 §8.2.2). */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'http2-settings']);

/** A request's headers as sent on: without hop-by-hop headers and without our own `x-ohs-*`. */
export function copyRequestHeaders(headers: http2.IncomingHttpHeaders): http2.OutgoingHttpHeaders {
  const out: http2.OutgoingHttpHeaders = {};
  // for…in rather than Object.entries: no array per header on every stream (Node's header objects
  // have no prototype, so only their own names are visited).
  for (const name in headers) {
    const value = headers[name];
    if (value === undefined || HOP_BY_HOP.has(name) || name.startsWith('x-ohs-')) continue;
    out[name] = value;
  }
  return out;
}

/** A response's headers (or trailers) as sent back: `:status` the only pseudo-header kept; `drop` removes more. */
export function copyResponseHeaders(headers: http2.IncomingHttpHeaders, drop: (name: string) => boolean): http2.OutgoingHttpHeaders {
  const out: http2.OutgoingHttpHeaders = {};
  for (const name in headers) {
    const value = headers[name];
    if (value === undefined || HOP_BY_HOP.has(name) || drop(name)) continue;
    if (name.startsWith(':') && name !== ':status') continue;
    out[name] = value;
  }
  return out;
}

/** A trailers-only gRPC error response (HEADERS with END_STREAM), as gRPC servers send. */
export function respondGrpcError(stream: http2.ServerHttp2Stream, code: number, message: string, extra: http2.OutgoingHttpHeaders = {}): void {
  if (stream.destroyed || stream.closed) return;
  if (stream.headersSent) {
    stream.close(NGHTTP2_INTERNAL_ERROR);
    return;
  }
  stream.respond(
    {
      ':status': 200,
      'content-type': 'application/grpc',
      'grpc-status': String(code),
      'grpc-message': encodeURIComponent(message),
      ...extra,
    },
    { endStream: true },
  );
  // A refusal may come before the request ended (e.g. an oversized first message): ask the client
  // to stop sending (RFC 9113 §8.1: RST_STREAM NO_ERROR after a complete response), so the stream
  // and any unread bytes do not stay held until the client gives up. Node flushes the HEADERS first.
  if (!stream.readableEnded) stream.close(NGHTTP2_NO_ERROR);
}

export interface ForwardOptions {
  /**
   * Called with the upstream response headers before anything reaches downstream. Returning
   * false means "do not relay" (e.g. a peer's not-owner answer); the caller takes over.
   */
  onResponse?: (headers: http2.IncomingHttpHeaders, endStream: boolean) => boolean;
  /** Upstream failed before any response headers arrived; the caller decides what to answer. */
  onUpstreamError?: (err: Error) => void;
  /** Response headers to drop when relaying (internal x-ohs-* headers). */
  dropResponseHeader?: (name: string) => boolean;
  onDone?: (outcome: { reset: boolean; grpcStatus: string | undefined }) => void;
  /** Sees every request chunk sent upstream, the prefix included (supervisor streams watch a few messages). */
  onRequestChunk?: (chunk: Buffer) => void;
  /** Sees every response chunk relayed downstream. */
  onResponseChunk?: (chunk: Buffer) => void;
}

/** What a forward sent upstream before it was abandoned, so another target can get it instead. */
export interface Replay {
  bytes: Buffer;
  ended: boolean;
}

export interface ForwardHandle {
  upstream: http2.ClientHttp2Stream;
  /**
   * Detaches downstream input and resets the upstream stream without touching downstream.
   * Returns what was sent so far, or null when more than the replay cap was sent.
   */
  abandon(): Replay | null;
  /**
   * Ends the exchange on the proxy's own terms: upstream is cancelled and downstream gets `code`
   * and `message` as its final status (trailers when the response has begun). Used to shed a
   * supervisor session: a non-OK status makes the supervisor reconnect (an OK end would stop it).
   */
  terminate(code: number, message: string): void;
  /**
   * Ends downstream the way `terminate` does but keeps the upstream stream open, its request side
   * not ended and its response read and dropped, until upstream closes it or the caller does
   * (`upstream.close()`); `onDone` comes then. A shed supervisor session is *parked* this way: the
   * gateway keeps its registration while the supervisor reconnects elsewhere (DESIGN §6).
   */
  detach(code: number, message: string): void;
}

/** Bytes kept for a possible retry while no response has arrived (a not-owner answer is immediate). */
const REPLAY_CAP_BYTES = 256 * 1024;

const dropInternal = (n: string): boolean => n.startsWith('x-ohs-');

/**
 * The forward a stream belongs to. Listeners are shared module functions that find their forward
 * here (an emitter calls them with `this` set to the stream), so a forwarded stream holds one object
 * instead of a dozen closures and a pipe's worth: at 10,000 held sessions that is memory, and per
 * open it is allocation. A downstream stream has one live forward at a time: `abandon` removes its
 * listeners before the stream is forwarded again.
 */
const kForward = Symbol('ohs forward');
type Forwarded = { [kForward]?: StreamForward };
const forwardOf = (s: unknown): StreamForward | undefined => (s as Forwarded)[kForward];

/**
 * Forwards `down` over `session`. Downstream input is replayed from `prefix` (bytes already read
 * from downstream: the buffered first message) then streamed with backpressure; the upstream
 * response is relayed with trailers. Either side's reset cancels the other. Throws, having touched
 * nothing, when the session cannot open a stream.
 *
 * `prefix` is an argument of its own, not one of the options: the options live as long as the
 * stream, and the first message must not (it is kept for a replay only until upstream answers).
 */
export function forwardStream(
  down: http2.ServerHttp2Stream,
  session: http2.ClientHttp2Session,
  headers: http2.OutgoingHttpHeaders,
  opts: ForwardOptions = {},
  prefix?: Buffer,
): ForwardHandle {
  const upstream = session.request(headers, OPEN_STREAM);
  forgetSentHeaders(upstream);
  return new StreamForward(down, session, upstream, opts, prefix);
}

/**
 * An upstream stream whose connection was destroyed before the stream ended. `silent`: the
 * connection was destroyed for a PING it never answered (liveness.ts), so it sent nothing at all,
 * not even an acknowledgement, since then.
 */
export class UpstreamCutError extends Error {
  constructor(readonly silent: boolean) {
    super(silent ? 'upstream connection went silent (PING unanswered) before the stream ended' : 'upstream connection closed before the stream ended');
  }
}

class StreamForward implements ForwardHandle {
  private responded = false;
  private abandoned = false;
  private detached = false;
  private finished = false;
  private trailers: http2.OutgoingHttpHeaders | undefined;
  private grpcStatus: string | undefined;
  /** Request bytes recorded until a response arrives, so another replica can be sent them instead. */
  private recorded: Buffer[] | null = [];
  /** Ended with no trailers by Node as it destroyed the connection (upEnd). */
  private cutAfterResponse = false;
  private recordedBytes = 0;

  constructor(
    readonly down: http2.ServerHttp2Stream,
    /** Kept for the cause of a cut (a closed stream no longer knows its session). */
    private readonly session: http2.ClientHttp2Session,
    readonly upstream: http2.ClientHttp2Stream,
    private readonly opts: ForwardOptions,
    prefix: Buffer | undefined,
  ) {
    // One close listener per downstream stream, however often it is forwarded (after `abandon`).
    if (forwardOf(down) === undefined) down.on('close', onDownClose);
    (down as Forwarded)[kForward] = this;
    (upstream as Forwarded)[kForward] = this;
    upstream.on('error', onUpError);
    upstream.on('response', onUpResponse);
    upstream.on('trailers', onUpTrailers);
    upstream.on('close', onUpClose);
    upstream.on('drain', onUpDrain);
    if (prefix && prefix.length > 0) {
      this.record(prefix);
      opts.onRequestChunk?.(prefix);
      upstream.write(prefix);
    }
    if (down.readableEnded) upstream.end();
    else {
      down.on('data', onDownData);
      down.on('end', onDownEnd);
      down.resume();
    }
  }

  finish(reset: boolean): void {
    if (this.finished) return;
    this.finished = true;
    this.opts.onDone?.({ reset, grpcStatus: this.grpcStatus });
  }

  record(chunk: Buffer): void {
    if (!this.recorded || this.responded) {
      this.recorded = null;
      return;
    }
    this.recordedBytes += chunk.length;
    if (this.recordedBytes > REPLAY_CAP_BYTES) this.recorded = null;
    else this.recorded.push(chunk);
  }

  /** Client went away (RST_STREAM or connection loss) before upstream finished: cancel upstream. */
  downClosed(): void {
    // Finished, or no longer this stream's live forward: its close means nothing here.
    if (this.finished || this.abandoned || this.detached) return;
    const up = this.upstream;
    if (!up.closed && !up.destroyed) up.close(NGHTTP2_CANCEL);
    this.finish(true);
  }

  downData(chunk: Buffer): void {
    this.record(chunk);
    this.opts.onRequestChunk?.(chunk);
    if (!this.upstream.write(chunk)) this.down.pause();
  }

  upError(err: Error): void {
    if (this.detached) return this.finish(true);
    if (this.abandoned) return;
    if (!this.responded) {
      this.opts.onUpstreamError?.(err);
      if (!this.opts.onUpstreamError) respondGrpcError(this.down, 14, `upstream failed: ${err.message}`);
    } else if (!this.down.destroyed) {
      this.down.close(NGHTTP2_INTERNAL_ERROR);
    }
    this.finish(true);
  }

  upResponse(resHeaders: http2.IncomingHttpHeaders, flags: number): void {
    if (this.abandoned || this.detached) return;
    const endStream = (flags & NGHTTP2_FLAG_END_STREAM) !== 0;
    if (this.opts.onResponse && !this.opts.onResponse(resHeaders, endStream)) return;
    this.responded = true;
    const { down, upstream } = this;
    if (down.destroyed || down.closed) {
      upstream.close(NGHTTP2_CANCEL);
      return;
    }
    const out = copyResponseHeaders(resHeaders, this.opts.dropResponseHeader ?? dropInternal);
    // Node never sets `endAfterHeaders` on client streams; END_STREAM is only in the frame flags.
    if (endStream) {
      // Trailers-only response: keep it trailers-only.
      this.grpcStatus = resHeaders['grpc-status'] as string | undefined;
      down.respond(out, { endStream: true });
      return;
    }
    down.respond(out, RESPOND_WITH_TRAILERS);
    forgetSentHeaders(down);
    down.on('wantTrailers', onDownWantTrailers);
    this.recorded = null;
    // The response body, with backpressure both ways (what `pipe` does, without its closures).
    down.on('drain', onDownDrain);
    upstream.on('data', onUpData);
    upstream.on('end', onUpEnd);
  }

  upData(chunk: Buffer): void {
    if (this.abandoned || this.detached) return; // detached: read and dropped
    const down = this.down;
    if (down.destroyed || down.writableEnded) return;
    if (!down.write(chunk)) this.upstream.pause();
    this.opts.onResponseChunk?.(chunk);
  }

  upEnd(): void {
    if (this.abandoned || this.detached) return;
    const down = this.down;
    if (down.destroyed || down.writableEnded) return;
    if (this.trailers === undefined && this.session.destroyed) {
      // Node ends the streams of a connection it destroys (an unanswered PING, a lost socket) as if
      // the server had: an end with no trailers on a dead connection is a cut, and passed on as an
      // end it would look like a complete answer with no status.
      this.cutAfterResponse = true;
      down.close(NGHTTP2_INTERNAL_ERROR);
      return;
    }
    down.end();
  }

  wantTrailers(): void {
    const t = this.trailers;
    if (t && Object.keys(t).length > 0) this.down.sendTrailers(t);
    // No trailers (plain HTTP over h2): an empty trailing HEADERS frame carries END_STREAM.
    else this.down.sendTrailers({});
  }

  upTrailers(t: http2.IncomingHttpHeaders): void {
    if (this.detached) return;
    this.trailers = copyResponseHeaders(t, this.opts.dropResponseHeader ?? dropInternal);
    this.grpcStatus = t['grpc-status'] as string | undefined;
  }

  upClosed(): void {
    const up = this.upstream;
    const code = up.rstCode ?? 0;
    // Closed with no error code but never ended (or ended by Node, see upEnd): its connection was
    // destroyed under it (a PING left unanswered, see liveness.ts), which Node reports with code 0
    // and no 'error'. Taken for a clean end, it left the client's stream open with nothing more to
    // come, until the client gave up.
    const cut = code === NGHTTP2_NO_ERROR && (!up.readableEnded || this.cutAfterResponse);
    const reset = code !== NGHTTP2_NO_ERROR || cut;
    if (this.detached) return this.finish(reset);
    if (this.abandoned) return;
    if (reset) {
      // Upstream reset or cut: propagate it downstream.
      const down = this.down;
      if (!this.responded && !down.headersSent) {
        const err = cut ? new UpstreamCutError(silentDeath(this.session)) : new Error(`upstream reset (code ${code})`);
        if (!this.opts.onUpstreamError) respondGrpcError(down, 14, cut ? err.message : 'upstream stream reset');
        else this.opts.onUpstreamError(err);
      } else if (!down.destroyed && !down.closed) down.close(cut ? NGHTTP2_INTERNAL_ERROR : code);
      this.finish(true);
      return;
    }
    this.finish(false);
  }

  /** Stops reading downstream for this forward (its listeners go; the stream is paused). */
  private release(): void {
    this.down.off('data', onDownData);
    this.down.off('end', onDownEnd);
  }

  abandon(): Replay | null {
    this.abandoned = true;
    this.release();
    this.down.pause();
    if (!this.upstream.destroyed) this.upstream.close(NGHTTP2_CANCEL);
    return this.recorded ? { bytes: Buffer.concat(this.recorded), ended: this.down.readableEnded } : null;
  }

  detach(code: number, message: string): void {
    if (this.finished || this.abandoned || this.detached) return;
    this.detached = true;
    const { down, upstream } = this;
    this.release();
    upstream.off('drain', onUpDrain);
    // The response is read and dropped from here on (upData), until upstream closes.
    upstream.resume();
    this.grpcStatus = String(code);
    if (down.destroyed || down.closed) return;
    if (!this.responded && !down.headersSent) respondGrpcError(down, code, message);
    else {
      this.trailers = { 'grpc-status': String(code), 'grpc-message': encodeURIComponent(message) };
      if (!down.writableEnded) down.end();
    }
  }

  terminate(code: number, message: string): void {
    if (this.finished) return;
    this.abandoned = true;
    const { down, upstream } = this;
    this.release();
    if (!upstream.destroyed) upstream.close(NGHTTP2_CANCEL);
    this.grpcStatus = String(code);
    if (down.destroyed || down.closed) {
      this.finish(true);
      return;
    }
    if (!this.responded) {
      respondGrpcError(down, code, message);
    } else {
      this.trailers = { 'grpc-status': String(code), 'grpc-message': encodeURIComponent(message) };
      if (!down.writableEnded) down.end();
    }
    this.finish(false);
  }
}

/**
 * A closed stream also lets go of its forward. Node keeps a closed Http2Stream reachable for young-
 * generation collections until a full GC (its native handle is held weakly, which a scavenge treats
 * as strong), so whatever still hangs off it (the forward, and through the forward's hooks the
 * request's routing state) would survive every scavenge and be promoted. Measured in a bare Node
 * HTTP/2 proxy: ~24 KB attached per stream raised what survives a scavenge from 1.9 to 3.9 MB and
 * the scavenge pause p50 from 4.3 to 6.4 ms; let go on 'close', 1.2 MB and 2.9 ms. In the sidecar
 * (routing probes, two runs each): 2.38 / 2.43 -> 2.16 / 2.19 MB, pause p50 6.4 / 7.2 -> 5.8 / 6.3 ms.
 */
function onDownClose(this: http2.ServerHttp2Stream & Forwarded): void {
  const forward = forwardOf(this);
  this[kForward] = undefined;
  forward?.downClosed();
}
function onDownData(this: http2.ServerHttp2Stream, chunk: Buffer): void {
  forwardOf(this)?.downData(chunk);
}
function onDownEnd(this: http2.ServerHttp2Stream): void {
  const up = forwardOf(this)?.upstream;
  if (up && !up.destroyed) up.end();
}
function onDownDrain(this: http2.ServerHttp2Stream): void {
  forwardOf(this)?.upstream.resume();
}
function onDownWantTrailers(this: http2.ServerHttp2Stream): void {
  forwardOf(this)?.wantTrailers();
}
function onUpError(this: http2.ClientHttp2Stream, err: Error): void {
  forwardOf(this)?.upError(err);
}
function onUpResponse(this: http2.ClientHttp2Stream, headers: http2.IncomingHttpHeaders, flags: number): void {
  forwardOf(this)?.upResponse(headers, flags);
}
function onUpTrailers(this: http2.ClientHttp2Stream, trailers: http2.IncomingHttpHeaders): void {
  forwardOf(this)?.upTrailers(trailers);
}
function onUpData(this: http2.ClientHttp2Stream, chunk: Buffer): void {
  forwardOf(this)?.upData(chunk);
}
function onUpEnd(this: http2.ClientHttp2Stream): void {
  forwardOf(this)?.upEnd();
}
function onUpDrain(this: http2.ClientHttp2Stream): void {
  forwardOf(this)?.down.resume();
}
function onUpClose(this: http2.ClientHttp2Stream & Forwarded): void {
  const forward = forwardOf(this);
  this[kForward] = undefined;
  forward?.upClosed();
}
