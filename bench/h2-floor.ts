// What Node's HTTP/2 alone costs per proxied stream held open: the floor under bench/scale.ts's
// memory figures. One process plays client, a minimal proxy (a server stream piped to a client
// stream on one upstream session, nothing else) and gateway (echo); N streams are opened, answered
// once, and held. Prints heap and RSS growth per stream after a full GC. Needs --expose-gc:
//   node --expose-gc --import tsx bench/h2-floor.ts        (env H2_FLOOR_STREAMS, default 5000)
import http2 from 'node:http2';
import type net from 'node:net';
import { envInt } from './lib/stats.ts';

const N = envInt('H2_FLOOR_STREAMS', 5_000);
const CLIENT_CONNS = 50;
const settings: http2.Settings = { maxConcurrentStreams: 1_000_000 };
const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) throw new Error('run with node --expose-gc');

const listen = (server: http2.Http2Server): Promise<number> =>
  new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as net.AddressInfo).port)));
const connect = (port: number): Promise<http2.ClientHttp2Session> =>
  new Promise((resolve, reject) => {
    const s = http2.connect(`http://127.0.0.1:${port}`, { settings });
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });

const gateway = http2.createServer({ settings });
gateway.on('stream', (stream) => {
  stream.respond({ ':status': 200, 'content-type': 'application/grpc' });
  stream.on('data', (d: Buffer) => stream.write(d));
});
const upstream = await connect(await listen(gateway));

const proxy = http2.createServer({ settings });
proxy.on('stream', (down, headers) => {
  const up = upstream.request({ ':method': 'POST', ':path': String(headers[':path']), 'content-type': 'application/grpc' });
  up.on('response', () => {
    down.respond({ ':status': 200, 'content-type': 'application/grpc' });
    up.pipe(down);
  });
  down.pipe(up);
});
const proxyPort = await listen(proxy);
const clients = await Promise.all(Array.from({ length: CLIENT_CONNS }, () => connect(proxyPort)));

gc();
const before = process.memoryUsage();
let answered = 0;
const held: http2.ClientHttp2Stream[] = [];
for (let i = 0; i < N; i++) {
  const s = clients[i % CLIENT_CONNS]!.request({ ':method': 'POST', ':path': '/floor', 'content-type': 'application/grpc' });
  s.write(Buffer.from('hello'));
  s.once('data', () => answered++);
  held.push(s);
}
const deadline = Date.now() + 60_000;
while (answered < N && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
gc();
await new Promise((r) => setTimeout(r, 200));
gc();
const after = process.memoryUsage();
const perKb = (a: number, b: number): string => ((b - a) / N / 1024).toFixed(1);
console.log(`${answered}/${N} streams held through the proxy; per stream, all three roles together (4 Http2Streams):`);
console.log(`  JS heap +${perKb(before.heapUsed, after.heapUsed)} KB, RSS +${perKb(before.rss, after.rss)} KB`);
console.log('  the proxy holds 2 of the 4 (downstream and upstream): about half of each figure is its share');
for (const c of clients) c.destroy();
upstream.destroy();
proxy.close();
gateway.close();
process.exit(0);
