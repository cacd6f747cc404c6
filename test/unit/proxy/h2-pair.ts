// A loopback gateway and a proxy in front of it, both plain HTTP/2 servers in this process, for tests
// of the forwarding code: the proxy's stream handler gets a client session to the gateway.
import http2 from 'node:http2';
import type { AddressInfo } from 'node:net';

export interface H2Pair {
  /** Where a test's client connects: the proxy. */
  proxyOrigin: string;
  gatewayOrigin: string;
  close(): Promise<void>;
}

export async function startH2Pair(
  onGatewayStream: (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders) => void,
  onProxyStream: (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, upstream: http2.ClientHttp2Session) => void,
): Promise<H2Pair> {
  const gateway = http2.createServer();
  gateway.on('stream', (stream, headers) => {
    stream.on('error', () => undefined);
    onGatewayStream(stream, headers);
  });
  await new Promise<void>((resolve) => gateway.listen(0, '127.0.0.1', resolve));
  const gatewayOrigin = `http://127.0.0.1:${(gateway.address() as AddressInfo).port}`;
  const upstream = http2.connect(gatewayOrigin);
  upstream.on('error', () => undefined);

  const proxy = http2.createServer();
  proxy.on('stream', (stream, headers) => {
    stream.on('error', () => undefined);
    onProxyStream(stream, headers, upstream);
  });
  await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
  return {
    proxyOrigin: `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`,
    gatewayOrigin,
    async close() {
      upstream.close();
      await new Promise((resolve) => proxy.close(resolve));
      await new Promise((resolve) => gateway.close(resolve));
    },
  };
}
