// The local hop: a stream to the gateway beside us over the shared pooled session.
import type http2 from 'node:http2';
import type { Logger } from 'pino';
import type { TrafficClass } from '../classify/classify.ts';
import type { ProxyContext } from './context.ts';
import { forwardStream, respondGrpcError } from './h2-forward.ts';
import { track } from './stream-tracking.ts';

export async function forwardLocal(
  ctx: ProxyContext,
  stream: http2.ServerHttp2Stream,
  headers: http2.OutgoingHttpHeaders,
  cls: TrafficClass,
  log: Logger,
  prefix?: Buffer,
): Promise<void> {
  // Twice at most: a pooled connection that began closing (the gateway's GOAWAY) between get()
  // and request() refuses synchronously, before anything was sent, and a fresh one is tried.
  for (let attempt = 0; attempt < 2; attempt++) {
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
    try {
      forwardStream(stream, session, headers, {
        ...(prefix ? { prefix } : {}),
        onDone: ({ reset, grpcStatus }) => done(reset ? 'reset' : `grpc_${grpcStatus ?? 'none'}`),
      });
      return;
    } catch (err) {
      done('OHS_ERR_UPSTREAM');
      log.info({ err: (err as Error).message, attempt }, 'gateway connection closing; trying a fresh one');
    }
  }
  respondGrpcError(stream, 14, 'gateway unavailable');
}

