// The headers a forward sends on, copied from the header objects Node's HTTP/2 itself hands over
// (no prototype, a sensitive-headers symbol, repeated names as arrays).
import http2 from 'node:http2';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyRequestHeaders, copyResponseHeaders } from '../../../src/proxy/h2-forward.ts';

let server: http2.Http2Server;
let client: http2.ClientHttp2Session;
let received: http2.IncomingHttpHeaders | undefined;

beforeAll(async () => {
  server = http2.createServer();
  server.on('stream', (stream, headers) => {
    received = headers;
    stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'x-ohs-owner-hint': 'r2', 'x-kept': 'yes' });
    stream.end();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  client = http2.connect(`http://127.0.0.1:${(server.address() as AddressInfo).port}`);
});

afterAll(async () => {
  client.close();
  await new Promise((resolve) => server.close(resolve));
});

function roundTrip(): Promise<http2.IncomingHttpHeaders> {
  const req = client.request({
    ':method': 'POST',
    ':path': '/openshell.v1.OpenShell/ForwardTcp',
    'content-type': 'application/grpc',
    te: 'trailers',
    'x-ohs-peer': 'secret',
    'x-custom': ['a', 'b'],
    authorization: 'Bearer t',
  });
  req.end();
  return new Promise((resolve, reject) => {
    req.on('response', (h) => {
      req.resume();
      resolve(h);
    });
    req.on('error', reject);
  });
}

describe('header copies', () => {
  it('a request keeps its pseudo-headers and its own headers, without x-ohs-*', async () => {
    await roundTrip();
    const copy = copyRequestHeaders(received as http2.IncomingHttpHeaders);
    expect(copy).toEqual({
      ':method': 'POST',
      ':path': '/openshell.v1.OpenShell/ForwardTcp',
      ':scheme': 'http',
      ':authority': expect.stringMatching(/^127\.0\.0\.1:\d+$/) as unknown,
      'content-type': 'application/grpc',
      te: 'trailers',
      'x-custom': 'a, b',
      authorization: 'Bearer t',
    });
    // A plain object: no symbol of Node's came along, and changing the copy leaves the original.
    expect(Object.getOwnPropertySymbols(copy)).toEqual([]);
    copy.te = 'changed';
    expect(received?.te).toBe('trailers');
  });

  it('a response keeps :status and drops other pseudo-headers, hop-by-hop ones and what `drop` names', async () => {
    const res = await roundTrip();
    expect(res['x-ohs-owner-hint']).toBe('r2');
    const copy = copyResponseHeaders({ ...res, connection: 'close', ':path': '/x' } as http2.IncomingHttpHeaders, (name) => name.startsWith('x-ohs-'));
    expect(copy[':status']).toBe(200);
    expect(copy['content-type']).toBe('application/grpc');
    expect(copy['x-kept']).toBe('yes');
    expect(copy).not.toHaveProperty('x-ohs-owner-hint');
    expect(copy).not.toHaveProperty('connection');
    expect(copy).not.toHaveProperty(':path');
  });
});
