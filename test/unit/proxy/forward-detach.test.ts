// ForwardHandle.detach over real loopback HTTP/2 connections: the client's stream ends with the
// given gRPC status while the upstream stream stays open (its request side not ended, its messages
// read and dropped), and the forward is done only when upstream ends it. A shed supervisor session
// is parked on its gateway this way.
import http2 from 'node:http2';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { forwardStream, type ForwardHandle } from '../../../src/proxy/h2-forward.ts';

interface Upstream {
  stream: http2.ServerHttp2Stream;
  requestEnded: boolean;
  received: number;
}

describe('forwardStream detach', () => {
  let gateway: http2.Http2Server;
  let proxy: http2.Http2Server;
  let upstreamSession: http2.ClientHttp2Session;
  let proxyOrigin: string;
  const upstreams: Upstream[] = [];
  const handles: ForwardHandle[] = [];
  const done: Array<{ reset: boolean; grpcStatus: string | undefined }> = [];

  beforeAll(async () => {
    gateway = http2.createServer();
    gateway.on('stream', (stream) => {
      stream.on('error', () => undefined);
      const up: Upstream = { stream, requestEnded: false, received: 0 };
      upstreams.push(up);
      stream.on('data', (chunk: Buffer) => (up.received += chunk.length));
      stream.on('end', () => (up.requestEnded = true));
      stream.respond({ ':status': 200, 'content-type': 'application/grpc' });
      stream.write(Buffer.from('accepted'));
    });
    await new Promise<void>((resolve) => gateway.listen(0, '127.0.0.1', resolve));
    upstreamSession = http2.connect(`http://127.0.0.1:${(gateway.address() as AddressInfo).port}`);
    upstreamSession.on('error', () => undefined);

    proxy = http2.createServer();
    proxy.on('stream', (stream, headers) => {
      stream.on('error', () => undefined);
      handles.push(forwardStream(stream, upstreamSession, { ':method': 'POST', ':path': headers[':path'] ?? '/' }, { onDone: (o) => done.push(o) }));
    });
    await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
    proxyOrigin = `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`;
  });

  afterAll(async () => {
    upstreamSession.close();
    await new Promise((resolve) => proxy.close(resolve));
    await new Promise((resolve) => gateway.close(resolve));
  });

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
