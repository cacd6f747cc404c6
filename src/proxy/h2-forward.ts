// Per-stream HTTP/2 forwarding: one downstream server stream to one upstream client stream,
// preserving headers, trailers (grpc-status), cancellation (RST_STREAM) and flow control.
import http2 from 'node:http2';

const { NGHTTP2_CANCEL, NGHTTP2_FLAG_END_STREAM, NGHTTP2_INTERNAL_ERROR, NGHTTP2_NO_ERROR } = http2.constants;

/** Connection-specific headers that must not cross an HTTP/2 hop (RFC 9113 §8.2.2). */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'http2-settings']);

export function copyRequestHeaders(
  headers: http2.IncomingHttpHeaders,
  extra: Record<string, string> = {},
): http2.OutgoingHttpHeaders {
  const out: http2.OutgoingHttpHeaders = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined || HOP_BY_HOP.has(name) || name.startsWith('x-ohs-')) continue;
    out[name] = value;
  }
  return { ...out, ...extra };
}

export function copyResponseHeaders(headers: http2.IncomingHttpHeaders, drop: (name: string) => boolean): http2.OutgoingHttpHeaders {
  const out: http2.OutgoingHttpHeaders = {};
  for (const [name, value] of Object.entries(headers)) {
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
  /** Bytes already read from downstream (the buffered first message), sent first. */
  prefix?: Buffer;
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

/**
 * Forwards `down` over `session`. Downstream input is replayed from `prefix` then piped; the
 * upstream response is relayed with trailers. Either side's reset cancels the other.
 */
export function forwardStream(
  down: http2.ServerHttp2Stream,
  session: http2.ClientHttp2Session,
  headers: http2.OutgoingHttpHeaders,
  opts: ForwardOptions = {},
): ForwardHandle {
  const drop = opts.dropResponseHeader ?? ((n: string) => n.startsWith('x-ohs-'));
  const up = session.request(headers, { endStream: false });
  let responded = false;
  let abandoned = false;
  let detached = false;
  let finished = false;
  let trailers: http2.OutgoingHttpHeaders | undefined;
  let grpcStatus: string | undefined;

  const finish = (reset: boolean): void => {
    if (finished) return;
    finished = true;
    down.off('close', onDownClose);
    opts.onDone?.({ reset, grpcStatus });
  };
  const onDownClose = (): void => {
    // Client went away (RST_STREAM or connection loss) before upstream finished: cancel upstream.
    if (!up.closed && !up.destroyed) up.close(NGHTTP2_CANCEL);
    finish(true);
  };
  down.on('close', onDownClose);

  up.on('error', (err) => {
    if (detached) return finish(true);
    if (abandoned) return;
    if (!responded) {
      opts.onUpstreamError?.(err);
      if (!opts.onUpstreamError) respondGrpcError(down, 14, `upstream failed: ${err.message}`);
    } else if (!down.destroyed) {
      down.close(NGHTTP2_INTERNAL_ERROR);
    }
    finish(true);
  });

  up.on('response', (resHeaders, flags) => {
    if (abandoned || detached) return;
    if (opts.onResponse && !opts.onResponse(resHeaders, (flags & NGHTTP2_FLAG_END_STREAM) !== 0)) return;
    responded = true;
    if (down.destroyed || down.closed) {
      up.close(NGHTTP2_CANCEL);
      return;
    }
    const out = copyResponseHeaders(resHeaders, drop);
    // Node never sets `endAfterHeaders` on client streams; END_STREAM is only in the frame flags.
    if ((flags & NGHTTP2_FLAG_END_STREAM) !== 0) {
      // Trailers-only response: keep it trailers-only.
      grpcStatus = resHeaders['grpc-status'] as string | undefined;
      down.respond(out, { endStream: true });
      return;
    }
    down.respond(out, { waitForTrailers: true });
    down.on('wantTrailers', () => {
      if (trailers && Object.keys(trailers).length > 0) down.sendTrailers(trailers);
      // No trailers (plain HTTP over h2): an empty trailing HEADERS frame carries END_STREAM.
      else down.sendTrailers({});
    });
    recorded = null;
    up.pipe(down);
    if (opts.onResponseChunk) up.on('data', opts.onResponseChunk);
  });

  up.on('trailers', (t) => {
    if (detached) return;
    trailers = copyResponseHeaders(t, drop);
    grpcStatus = t['grpc-status'] as string | undefined;
  });

  up.on('close', () => {
    const code = up.rstCode ?? 0;
    if (detached) return finish(code !== 0 && code !== http2.constants.NGHTTP2_NO_ERROR);
    if (abandoned) return;
    if (code !== 0 && code !== http2.constants.NGHTTP2_NO_ERROR) {
      // Upstream reset: propagate the reset downstream.
      if (!responded && !down.headersSent) {
        if (!opts.onUpstreamError) respondGrpcError(down, 14, 'upstream stream reset');
        else opts.onUpstreamError(new Error(`upstream reset (code ${code})`));
      } else if (!down.destroyed && !down.closed) down.close(code);
      finish(true);
      return;
    }
    finish(false);
  });

  // Downstream → upstream with backpressure; bytes are recorded until a response arrives so the
  // whole request can be replayed to another replica if this one answers "not owner".
  let recorded: Buffer[] | null = [];
  let recordedBytes = 0;
  const record = (chunk: Buffer): void => {
    if (!recorded || responded) {
      recorded = null;
      return;
    }
    recordedBytes += chunk.length;
    if (recordedBytes > REPLAY_CAP_BYTES) recorded = null;
    else recorded.push(chunk);
  };
  const onData = (chunk: Buffer): void => {
    record(chunk);
    opts.onRequestChunk?.(chunk);
    if (!up.write(chunk)) down.pause();
  };
  const onDrain = (): void => {
    down.resume();
  };
  const onEnd = (): void => {
    if (!up.destroyed) up.end();
  };
  up.on('drain', onDrain);
  if (opts.prefix && opts.prefix.length > 0) {
    record(opts.prefix);
    opts.onRequestChunk?.(opts.prefix);
    up.write(opts.prefix);
  }
  if (down.readableEnded) up.end();
  else {
    down.on('data', onData);
    down.once('end', onEnd);
    down.resume();
  }

  return {
    upstream: up,
    abandon() {
      abandoned = true;
      down.off('data', onData);
      down.off('end', onEnd);
      down.off('close', onDownClose);
      down.pause();
      if (!up.destroyed) up.close(NGHTTP2_CANCEL);
      return recorded ? { bytes: Buffer.concat(recorded), ended: down.readableEnded } : null;
    },
    detach(code, message) {
      if (finished || abandoned || detached) return;
      detached = true;
      down.off('data', onData);
      down.off('end', onEnd);
      down.off('close', onDownClose);
      up.off('drain', onDrain);
      up.unpipe(down);
      up.on('data', () => undefined);
      up.resume();
      grpcStatus = String(code);
      if (down.destroyed || down.closed) return;
      if (!responded && !down.headersSent) respondGrpcError(down, code, message);
      else {
        trailers = { 'grpc-status': String(code), 'grpc-message': encodeURIComponent(message) };
        if (!down.writableEnded) down.end();
      }
    },
    terminate(code, message) {
      if (finished) return;
      abandoned = true;
      down.off('data', onData);
      down.off('end', onEnd);
      up.unpipe(down);
      if (!up.destroyed) up.close(NGHTTP2_CANCEL);
      grpcStatus = String(code);
      if (down.destroyed || down.closed) {
        finish(true);
        return;
      }
      if (!responded) {
        respondGrpcError(down, code, message);
      } else {
        trailers = { 'grpc-status': String(code), 'grpc-message': encodeURIComponent(message) };
        if (!down.writableEnded) down.end();
      }
      finish(false);
    },
  };
}
