// Node's own memory floor for what the scale bench makes a sidecar hold, measured in one process with
// nothing of ours in it. A proxy holds, per held session, a server stream (the client's side) and a
// client stream (the gateway's side), on a server and a client HTTP/2 session per connection pair.
// Here both ends of each connection live in this process, so every held stream is exactly that pair:
// `--supervisors N --supervisor-conns C` held streams on C connection pairs, plus `--idle M --idle-conns D`.
// Each stream is opened with headers both ways and one small message each way, then left open.
// Prints one JSON line: RSS and V8 heap before and after (after a full GC), and per held stream.
// bench/scale.ts runs it first with its own shape; alone (defaults: the scale bench's):
//   node --expose-gc --import tsx bench/h2-floor.ts [--supervisors 10000 --supervisor-conns 200 --idle 10000 --idle-conns 100]
import http2 from 'node:http2';
import type net from 'node:net';

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(name);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
}

const SUPERVISORS = arg('--supervisors', 10_000);
const SUPERVISOR_CONNS = arg('--supervisor-conns', 200);
const IDLE = arg('--idle', 10_000);
const IDLE_CONNS = arg('--idle-conns', 100);
const MESSAGE = Buffer.from([0, 0, 0, 0, 16, ...Buffer.alloc(16, 0x61)]);

const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) throw new Error('run with node --expose-gc');
const settle = async (): Promise<void> => {
  for (let i = 0; i < 3; i++) {
    gc();
    await new Promise((r) => setTimeout(r, 200));
  }
};
const memory = (): { rssMb: number; heapUsedMb: number } => {
  const m = process.memoryUsage();
  return { rssMb: m.rss / 1048576, heapUsedMb: m.heapUsed / 1048576 };
};

const server = http2.createServer({ settings: { maxConcurrentStreams: 100_000 } });
const held: http2.ServerHttp2Stream[] = [];
server.on('stream', (stream) => {
  stream.on('error', () => undefined);
  stream.respond({ ':status': 200, 'content-type': 'application/grpc' });
  stream.write(MESSAGE);
  stream.resume();
  held.push(stream);
});
server.on('sessionError', () => undefined);
await new Promise<void>((resolve) => server.listen({ port: 0, host: '127.0.0.1', backlog: 4096 }, resolve));
const port = (server.address() as net.AddressInfo).port;

async function connect(): Promise<http2.ClientHttp2Session> {
  const session = http2.connect(`http://127.0.0.1:${port}`, { settings: { maxConcurrentStreams: 100_000 } });
  session.on('error', () => undefined);
  await new Promise<void>((resolve, reject) => {
    session.once('connect', () => resolve());
    session.once('error', reject);
  });
  return session;
}

/** `n` streams on `conns` connection pairs, each answered with one message before the next batch. */
async function hold(n: number, conns: number): Promise<http2.ClientHttp2Stream[]> {
  const sessions: http2.ClientHttp2Session[] = [];
  for (let i = 0; i < conns; i++) sessions.push(await connect());
  const streams: http2.ClientHttp2Stream[] = [];
  for (let i = 0; i < n; i += 200) {
    const batch = Array.from({ length: Math.min(200, n - i) }, (_, k) => {
      const stream = sessions[(i + k) % conns]!.request({ ':method': 'POST', ':path': '/openshell.v1.OpenShell/ConnectSupervisor', 'content-type': 'application/grpc', te: 'trailers' }, { endStream: false });
      stream.on('error', () => undefined);
      stream.write(MESSAGE);
      streams.push(stream);
      return new Promise<void>((resolve) => stream.once('data', () => resolve()));
    });
    await Promise.all(batch);
  }
  return streams;
}

await settle();
const before = memory();
const supervisors = await hold(SUPERVISORS, SUPERVISOR_CONNS);
const idle = await hold(IDLE, IDLE_CONNS);
await settle();
const after = memory();
const streams = supervisors.length + idle.length;
const round1 = (x: number): number => Math.round(x * 10) / 10;
console.log(
  JSON.stringify({
    event: 'floor',
    held_streams: streams,
    connection_pairs: SUPERVISOR_CONNS + IDLE_CONNS,
    server_streams_seen: held.length,
    rss_before_mb: round1(before.rssMb),
    rss_after_mb: round1(after.rssMb),
    heap_used_after_mb: round1(after.heapUsedMb),
    rss_per_held_stream_kb: round1(((after.rssMb - before.rssMb) * 1024) / Math.max(1, streams)),
    heap_per_held_stream_kb: round1(((after.heapUsedMb - before.heapUsedMb) * 1024) / Math.max(1, streams)),
  }),
);
process.exit(0);
