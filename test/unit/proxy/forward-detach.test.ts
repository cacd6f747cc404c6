// ForwardHandle.detach over real loopback HTTP/2 connections: the client's stream ends with the
// given gRPC status while the upstream stream stays open (its request side not ended, its messages
// read and dropped), and the forward is done only when upstream ends it. A shed supervisor session
// is parked on its gateway this way.
import http2 from 'node:http2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { forwardStream, type ForwardHandle } from '../../../src/proxy/h2-forward.ts';
import { startH2Pair, type H2Pair } from './h2-pair.ts';

interface Upstream {
  stream: http2.ServerHttp2Stream;
  requestEnded: boolean;
  received: number;
}

describe('forwardStream detach', () => {
  let pair: H2Pair;
  let proxyOrigin: string;
  const upstreams: Upstream[] = [];
  const handles: ForwardHandle[] = [];
  const done: Array<{ reset: boolean; grpcStatus: string | undefined }> = [];

  beforeAll(async () => {
    pair = await startH2Pair(
      (stream) => {
        const up: Upstream = { stream, requestEnded: false, received: 0 };
        upstreams.push(up);
        stream.on('data', (chunk: Buffer) => (up.received += chunk.length));
        stream.on('end', () => (up.requestEnded = true));
        stream.respond({ ':status': 200, 'content-type': 'application/grpc' });
        stream.write(Buffer.from('accepted'));
      },
      (stream, headers, upstreamSession) => {
        handles.push(forwardStream(stream, upstreamSession, { ':method': 'POST', ':path': headers[':path'] ?? '/' }, { onDone: (o) => done.push(o) }));
      },
    );
    proxyOrigin = pair.proxyOrigin;
  });

  afterAll(() => pair.close());

  const until = async (what: string, cond: () => boolean): Promise<void> => {
    for (let i = 0; i < 200 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
    if (!cond()) throw new Error(`timed out waiting for ${what}`);
  };

  it('ends the client stream with the status, keeps the upstream stream open, and is done only when upstream ends', async () => {
    const client = http2.connect(proxyOrigin);
    client.on('error', () => undefined);
    try {
      const call = client.request({ ':method': 'POST', ':path': '/control' }, { endStream: false });
      call.on('error', () => undefined);
      let body = '';
      call.on('data', (d: Buffer) => (body += d.toString()));
      const trailers = new Promise<http2.IncomingHttpHeaders>((resolve) => call.once('trailers', resolve));
      call.write(Buffer.from('hello'));
      await until('the upstream stream and its first message', () => upstreams.length === 1 && upstreams[0]!.received === 5 && body === 'accepted');

      handles[0]!.detach(14, 'gateway replica rebalance; reconnect');
      const t = await trailers;
      expect(t['grpc-status']).toBe('14');
      expect(decodeURIComponent(String(t['grpc-message']))).toBe('gateway replica rebalance; reconnect');
      // The supervisor's own end of the call (it reconnects) must not reach upstream either.
      call.end();
      await until('the client stream to close', () => call.closed);

      // Upstream: still open, its request side not ended; what it sends now is read and dropped.
      const up = upstreams[0]!;
      expect(up.stream.closed).toBe(false);
      expect(up.requestEnded).toBe(false);
      expect(up.stream.write(Buffer.from('heartbeat'))).toBe(true);
      await new Promise((r) => setTimeout(r, 50));
      expect(body).toBe('accepted');
      expect(up.requestEnded).toBe(false);
      expect(done).toEqual([]);

      // The gateway ends it (a supersede): now the forward is done.
      up.stream.close(http2.constants.NGHTTP2_NO_ERROR);
      await until('the forward to be done', () => done.length === 1);
      expect(done[0]).toEqual({ reset: false, grpcStatus: '14' });
    } finally {
      client.close();
    }
  });
});
