// The least a Node proxy must do on each data path, and nothing else: the `node` path of
// bench/proxy.ts, so that one run shows what Node itself costs next to what the sidecar adds.
//   CONNECT: Node's HTTP/1.1 parser reads the request, its head is replayed to the gateway and
//            the two sockets are piped (no routing, no limits, no look at the answer).
//   gRPC:    every HTTP/2 stream is terminated and relayed on a stream of one client session to the
//            gateway, headers, data both ways and trailers (no first-message read, no routing).
//   TCP:     a third port relays each connection's bytes to the gateway untouched (no parsing at all):
//            what HAProxy's tcp mode does, and the least any Node proxy can spend on a connection
//            (the `nodetcp` path). With --tcp-via-port M it relays to M (another of these proxies'
//            TCP port) instead: two relays chained, the `nodetcp2` path.
// The windows are the sidecar's (1 MiB per stream and per session). Prints
// {"event":"ready","ports":[connectPort, h2Port, tcpPort]}; SIGTERM stops it.
//   node --import tsx bench/lib/node-proxy-main.ts --gateway-port N [--via-port M]
// --via-port M makes it the first of two hops, shaped as the sidecars' forwarded path: gRPC streams
// are relayed to M (another of these proxies) instead of the gateway, and CONNECT tunnels are carried
// to M as HTTP/2 CONNECT streams, where that proxy joins each to a TCP connection to its gateway.
//   --tuned: the same proxy, minus the V8 cliffs in Node's own library that the sidecar steps around
//            (AsyncResource.bind patched as src/node-patches.ts does; request(), respond() and
//            net.connect given options that already hold every key Node would add to its copy): what
//            a Node proxy can reach at best (BENCH_NODE_TUNED=1 in bench/proxy.ts).
import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import { applyNodePatches } from '../../src/node-patches.ts';
import { SOCKET_DEFAULTS } from '../../src/proxy/gateway-transport.ts';
import { OPEN_STREAM, RESPOND_WITH_TRAILERS } from '../../src/proxy/h2-forward.ts';

const WINDOW_BYTES = 1024 * 1024;
const argPort = (flag: string): number | undefined => {
  const i = process.argv.indexOf(flag);
  return i < 0 ? undefined : Number(process.argv[i + 1]);
};
const gatewayPort = argPort('--gateway-port') ?? NaN;
if (!(gatewayPort > 0)) throw new Error('--gateway-port is required');
const viaPort = argPort('--via-port');
const tuned = process.argv.includes('--tuned');
if (tuned) applyNodePatches();
const openOptions = tuned ? OPEN_STREAM : {};
const respondWithTrailers = tuned ? RESPOND_WITH_TRAILERS : { waitForTrailers: true };
const socketOptions = tuned ? SOCKET_DEFAULTS : {};
const h2UpstreamPort = viaPort ?? gatewayPort;
const tcpUpstreamPort = argPort('--tcp-via-port') ?? gatewayPort;

function listen(server: net.Server): Promise<number> {
  return new Promise((resolve) => server.listen({ port: 0, host: '127.0.0.1', backlog: 1024 }, () => resolve((server.address() as net.AddressInfo).port)));
}

// CONNECT: parse, replay, pipe.
const connectServer = http.createServer((_req, res) => res.writeHead(404).end());
connectServer.on('connect', (req: http.IncomingMessage, client: net.Socket, head: Buffer) => {
  let replay = `${req.method} ${req.url} HTTP/1.1\r\n`;
  for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) replay += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
  client.setNoDelay(true);
  let upstream: net.Socket | http2.ClientHttp2Stream;
  if (viaPort === undefined) {
    const socket = net.connect({ port: gatewayPort, host: '127.0.0.1', ...socketOptions });
    socket.setNoDelay(true);
    upstream = socket;
  } else {
    try {
      upstream = upstreamSession().request({ ':method': 'CONNECT', ':authority': 'tunnel' }, openOptions);
    } catch {
      client.destroy();
      return;
    }
  }
  upstream.write(Buffer.from(`${replay}\r\n`, 'latin1'));
  if (head.length > 0) upstream.write(head);
  join(client, upstream);
});

/** Two byte streams piped both ways; either one's error takes both down. */
function join(a: net.Socket | http2.Http2Stream, b: net.Socket | http2.Http2Stream): void {
  const destroyBoth = (): void => {
    a.destroy();
    b.destroy();
  };
  a.on('error', destroyBoth);
  b.on('error', destroyBoth);
  a.pipe(b);
  b.pipe(a);
}

// gRPC: one client session to the gateway (or the next hop), every stream relayed on it.
let gateway: http2.ClientHttp2Session | undefined;
function upstreamSession(): http2.ClientHttp2Session {
  if (gateway && !gateway.closed && !gateway.destroyed) return gateway;
  const session = http2.connect(`http://127.0.0.1:${h2UpstreamPort}`, { settings: { initialWindowSize: WINDOW_BYTES } });
  session.on('connect', () => session.setLocalWindowSize(WINDOW_BYTES));
  session.on('error', () => undefined);
  gateway = session;
  return session;
}

const h2Server = http2.createServer({ settings: { initialWindowSize: WINDOW_BYTES } });
h2Server.on('session', (session) => {
  session.on('error', () => undefined);
  try {
    session.setLocalWindowSize(WINDOW_BYTES);
  } catch {
    // already large enough
  }
});
h2Server.on('stream', (down, headers) => {
  if (headers[':method'] === 'CONNECT') {
    // A tunnel from the first hop: its bytes (the client's CONNECT head first) go to the gateway.
    down.respond({ ':status': 200 });
    const socket = net.connect({ port: gatewayPort, host: '127.0.0.1', ...socketOptions });
    socket.setNoDelay(true);
    join(down, socket);
    return;
  }
  const out: http2.OutgoingHttpHeaders = {};
  for (const name in headers) if (!name.startsWith(':') || name === ':method' || name === ':path') out[name] = headers[name];
  let up: http2.ClientHttp2Stream;
  try {
    up = upstreamSession().request(out, openOptions);
  } catch {
    down.close(http2.constants.NGHTTP2_REFUSED_STREAM);
    return;
  }
  down.on('error', () => up.close(http2.constants.NGHTTP2_CANCEL));
  up.on('error', () => down.close(http2.constants.NGHTTP2_INTERNAL_ERROR));
  up.on('response', (h) => {
    const resp: http2.OutgoingHttpHeaders = {};
    for (const name in h) if (name === ':status' || !name.startsWith(':')) resp[name] = h[name];
    if (!down.destroyed) down.respond(resp, respondWithTrailers);
  });
  const trailers: http2.OutgoingHttpHeaders = {};
  up.on('trailers', (t) => {
    for (const name in t) if (!name.startsWith(':')) trailers[name] = t[name];
  });
  down.on('wantTrailers', () => down.sendTrailers(trailers));
  down.pipe(up);
  up.pipe(down);
  // Reset by the gateway (or its session gone) before its end: the client's stream goes too.
  up.on('close', () => {
    if (!up.readableEnded && !down.destroyed) down.close(http2.constants.NGHTTP2_CANCEL);
  });
});

// TCP: connect, pipe both ways, nothing read.
const tcpServer = net.createServer({ noDelay: true }, (client) => {
  join(client, net.connect({ port: tcpUpstreamPort, host: '127.0.0.1', noDelay: true, ...socketOptions }));
});

const ports = [await listen(connectServer), await listen(h2Server as unknown as net.Server), await listen(tcpServer)];
const parentPid = process.ppid;
const stop = (): void => {
  gateway?.destroy();
  connectServer.close();
  h2Server.close();
  tcpServer.close();
  process.exit(0);
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
// The bench may die without signalling us; do not outlive it.
setInterval(() => {
  if (process.ppid !== parentPid) stop();
}, 1000).unref();
console.log(JSON.stringify({ event: 'ready', ports, pid: process.pid }));
