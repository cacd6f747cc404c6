// A forwarded stream lets go of the headers Node would keep for its whole life (`sentHeaders`),
// on both its streams, and nothing that crosses the hop changes: the gateway gets the request
// headers, the client the response headers, body and trailers.
import http2 from 'node:http2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { forwardStream } from '../../../src/proxy/h2-forward.ts';
import { startH2Pair, type H2Pair } from './h2-pair.ts';

describe('headers Node keeps for a stream once sent', () => {
  let pair: H2Pair;
  const seenByGateway: http2.IncomingHttpHeaders[] = [];
  const proxied: Array<{ down: http2.ServerHttp2Stream; up: http2.ClientHttp2Stream }> = [];

  beforeAll(async () => {
    pair = await startH2Pair(
      (stream, headers) => {
        seenByGateway.push(headers);
        stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'x-gateway': 'g1' }, { waitForTrailers: true });
        stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
        stream.on('data', (d: Buffer) => stream.end(Buffer.concat([Buffer.from('echo:'), d])));
      },
      (down, headers, upstreamSession) => {
        const handle = forwardStream(down, upstreamSession, { ':method': 'POST', ':path': headers[':path'] ?? '/', 'content-type': 'application/grpc', te: 'trailers' });
        proxied.push({ down, up: handle.upstream });
      },
    );
  });

  afterAll(() => pair.close());

  it('a plain Node stream keeps them (what the sidecar drops)', async () => {
    const client = http2.connect(pair.gatewayOrigin);
    try {
      const req = client.request({ ':method': 'POST', ':path': '/plain' });
      expect(req.sentHeaders).toMatchObject({ ':path': '/plain' });
      req.on('error', () => undefined);
      req.resume();
      req.end('x');
      await new Promise((resolve) => req.on('close', resolve));
    } finally {
      client.close();
    }
  });

  it('a forwarded stream keeps none on either side, and the hop carries every header, the body and the trailers', async () => {
    const client = http2.connect(pair.proxyOrigin);
    client.on('error', () => undefined);
    try {
      const call = client.request({ ':method': 'POST', ':path': '/openshell.v1.OpenShell/ForwardTcp', 'content-type': 'application/grpc', te: 'trailers' });
      const response = new Promise<http2.IncomingHttpHeaders>((resolve) => call.once('response', resolve));
      const trailers = new Promise<http2.IncomingHttpHeaders>((resolve) => call.once('trailers', resolve));
      let body = '';
      call.on('data', (d: Buffer) => (body += d.toString()));
      call.end('ping');
      expect(await response).toMatchObject({ ':status': 200, 'content-type': 'application/grpc', 'x-gateway': 'g1' });
      expect(await trailers).toMatchObject({ 'grpc-status': '0' });
      await new Promise((resolve) => call.on('close', resolve));
      expect(body).toBe('echo:ping');
      expect(seenByGateway.at(-1)).toMatchObject({ ':path': '/openshell.v1.OpenShell/ForwardTcp', 'content-type': 'application/grpc', te: 'trailers' });

      const { down, up } = proxied.at(-1)!;
      expect(up.sentHeaders).toBeUndefined();
      expect(down.sentHeaders).toBeUndefined();
      expect(down.headersSent).toBe(true);
    } finally {
      client.close();
    }
  });
});
