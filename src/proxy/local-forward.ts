// The local hop: a stream to the gateway beside us over the shared pooled session.
import http2 from 'node:http2';
import type { Logger } from 'pino';
import type { TrafficClass } from '../classify/classify.ts';
import type { ProxyContext } from './context.ts';
import { forwardStream, respondGrpcError, type ForwardHandle } from './h2-forward.ts';
import { track } from './stream-tracking.ts';

const { NGHTTP2_REFUSED_STREAM: REFUSED_STREAM } = http2.constants;

export async function forwardLocal(
  ctx: ProxyContext,
  stream: http2.ServerHttp2Stream,
  headers: http2.OutgoingHttpHeaders,
  cls: TrafficClass,
  log: Logger,
  prefix?: Buffer,
  retries = 1,
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
  // Sent again on another connection, once: a pooled connection that began closing (the gateway's
  // GOAWAY) between get() and request() refuses synchronously, and a stream the gateway refused
  // unprocessed (REFUSED_STREAM: past a GOAWAY's last stream id, or its concurrent-stream limit)
  // is replayed from what was recorded of the request. Nothing reached the gateway either way.
  const again = (bytes: Buffer | undefined, why: string): void => {
    if (retries <= 0) {
      respondGrpcError(stream, 14, 'gateway unavailable');
      return;
    }
    log.info({ why }, 'the gateway took nothing of the request; sending it again on another connection');
    void forwardLocal(ctx, stream, headers, cls, log, bytes, retries - 1);
  };
  let handle: ForwardHandle;
  try {
    handle = forwardStream(
      stream,
      session,
      headers,
      {
        onDone: ({ reset, grpcStatus }) => done(reset ? 'reset' : `grpc_${grpcStatus ?? 'none'}`),
        onUpstreamError: (err) => {
          const replay = retries > 0 && handle.upstream.rstCode === REFUSED_STREAM ? handle.abandon() : null;
          if (replay) {
            done('refused');
            again(replay.bytes, 'refused stream');
          } else respondGrpcError(stream, 14, `upstream failed: ${err.message}`);
        },
      },
      prefix,
    );
  } catch (err) {
    done('OHS_ERR_UPSTREAM');
    again(prefix, `connection closing: ${(err as Error).message}`);
  }
}
