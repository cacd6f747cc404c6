// The smallest gateway a proxy bench can stand in front of: one port speaking HTTP/1.1 CONNECT
// (`CONNECT /connect/ssh`, 2026-04) and h2c gRPC (`ForwardTcp`, 2026-08; `ConnectSupervisor` held
// open so a sidecar can become a sandbox's owner), told apart by the first bytes as the gateway does.
// It does as little as it can, so that what a bench measures is the proxy in front of it.
//
// What a tunnel or stream does is chosen by the request header `x-bench-mode`:
//   echo          every byte comes back (after the ForwardTcp init message, which is skipped)
//   sink:<N>      N bytes are read, then a one-byte (CONNECT) or one-message (gRPC) acknowledgement
//   source:<N>    N bytes are written (gRPC: whole 16 KiB data messages), then the end
// Anything else it does not know: HTTP 404, gRPC UNIMPLEMENTED.
import http2 from 'node:http2';
import net from 'node:net';
import { CONNECT_SUPERVISOR, FORWARD_TCP, frameData, GRPC_BULK_CHUNK, RAW_BULK_CHUNK } from './raw-clients.ts';

export const BENCH_MODE_HEADER = 'x-bench-mode';



export type BenchMode = { kind: 'echo' } | { kind: 'sink'; bytes: number } | { kind: 'source'; bytes: number };

export function parseMode(value: string | undefined): BenchMode {
  const [kind, n] = (value ?? 'echo').split(':');
  const bytes = Number(n ?? 0);
  if (kind === 'sink' && bytes > 0) return { kind: 'sink', bytes };
  if (kind === 'source' && bytes > 0) return { kind: 'source', bytes };
  return { kind: 'echo' };
}

export interface FakeGateway {
  port: number;
  /** Every port it listens on (`extraPorts` more than the first), all served alike. */
  ports: number[];
  /** Open connections and streams, for the scale bench. */
  counts(): { sockets: number; streams: number; supervisors: number } & ForwardTally;
  close(): Promise<void>;
}

const ACK = Buffer.from('K');
const GRPC_ACK = frameData(ACK);
const MAX_HEAD_BYTES = 16 * 1024;
const NOT_FOUND = 'HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n';

/**
 * `extraPorts` more listeners serve the same gateway: each client of a bench (direct, HAProxy, each
 * sidecar) gets a port of its own, so that connection churn on one path never exhausts the ephemeral
 * ports (TIME_WAIT, per 4-tuple) another path needs.
 */
export async function startFakeGateway(opts: { host?: string; port?: number; extraPorts?: number; windowBytes?: number } = {}): Promise<FakeGateway> {
  const windowBytes = opts.windowBytes ?? 1024 * 1024;
  const sockets = new Set<net.Socket>();
  let streams = 0;
  let supervisors = 0;

  const h2 = http2.createServer({ settings: { initialWindowSize: windowBytes, maxConcurrentStreams: 1_000_000 }, maxSessionMemory: 1000 });
  h2.on('session', (session) => {
    session.on('error', () => undefined);
    try {
      session.setLocalWindowSize(windowBytes);
    } catch {
      // already large enough
    }
  });
  h2.on('stream', (stream, headers) => {
    stream.on('error', () => undefined);
    const path = headers[':path'];
    if (path === CONNECT_SUPERVISOR) {
      supervisors++;
      stream.once('close', () => supervisors--);
      stream.respond({ ':status': 200, 'content-type': 'application/grpc' });
      stream.resume();
      return;
    }
    if (path !== FORWARD_TCP) {
      stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '12', 'grpc-message': 'unimplemented' }, { endStream: true });
      if (!stream.readableEnded) stream.close(http2.constants.NGHTTP2_NO_ERROR);
      return;
    }
    streams++;
    stream.once('close', () => streams--);
    serveForward(stream, parseMode(headers[BENCH_MODE_HEADER] as string | undefined));
  });

  const onConnection = (socket: net.Socket): void => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    socket.setNoDelay(true);
    let head: Buffer = Buffer.alloc(0);
    const onData = (chunk: Buffer): void => {
      head = head.length === 0 ? chunk : Buffer.concat([head, chunk]);
      if (head.length < 4) return;
      if (head.subarray(0, 4).toString('latin1') === 'PRI ') {
        socket.off('data', onData);
        socket.pause();
        socket.unshift(head);
        h2.emit('connection', socket);
        return;
      }
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) {
        if (head.length > MAX_HEAD_BYTES) socket.destroy();
        return;
      }
      socket.off('data', onData);
      const text = head.subarray(0, end).toString('latin1');
      if (!text.startsWith('CONNECT ')) {
        socket.end(NOT_FOUND);
        return;
      }
      const mode = /\r\nx-bench-mode: *([^\r]*)/i.exec(text)?.[1];
      socket.write('HTTP/1.1 200 OK\r\n\r\n');
      serveTunnel(socket, parseMode(mode), head.subarray(end + 4));
    };
    socket.on('data', onData);
  };
  const servers: net.Server[] = [];
  const ports: number[] = [];
  for (let i = 0; i <= (opts.extraPorts ?? 0); i++) {
    const server = net.createServer(onConnection);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(i === 0 ? (opts.port ?? 0) : 0, opts.host ?? '127.0.0.1', () => resolve());
    });
    servers.push(server);
    ports.push((server.address() as net.AddressInfo).port);
  }
  return {
    port: ports[0] as number,
    ports,
    counts: () => ({ sockets: sockets.size, streams, supervisors, ...tally }),
    close: async () => {
      const closed = servers.map((server) => new Promise<void>((resolve) => server.close(() => resolve())));
      for (const s of sockets) s.destroy();
      await Promise.all(closed);
    },
  };
}

function serveTunnel(socket: net.Socket, mode: BenchMode, rest: Buffer): void {
  if (mode.kind === 'echo') {
    if (rest.length > 0) socket.write(rest);
    socket.pipe(socket);
    return;
  }
  if (mode.kind === 'sink') {
    let seen = rest.length;
    let acked = false;
    const check = (): void => {
      if (!acked && seen >= mode.bytes) {
        acked = true;
        socket.write(ACK);
      }
    };
    check();
    socket.on('data', (d: Buffer) => {
      seen += d.length;
      check();
    });
    socket.on('end', () => socket.end());
    return;
  }
  writeBounded(socket, RAW_BULK_CHUNK, mode.bytes, () => socket.end());
  socket.resume();
}

/** How closed `ForwardTcp` streams ended, by what reached the gateway: a lost byte on the way shows here. */
interface ForwardTally {
  forwardsClosedBeforeInit: number;
  forwardsClosedWithoutPayload: number;
  forwardsClosedWithPayload: number;
}
const tally: ForwardTally = { forwardsClosedBeforeInit: 0, forwardsClosedWithoutPayload: 0, forwardsClosedWithPayload: 0 };

function serveForward(stream: http2.ServerHttp2Stream, mode: BenchMode): void {
  stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
  stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
  // The first message is the init frame (sandbox id, token): skipped, as the gateway consumes it.
  let skip = -1;
  let header: Buffer = Buffer.alloc(0);
  let seen = 0;
  let acked = false;
  let sourcing = false;
  const payload = (chunk: Buffer): void => {
    if (mode.kind === 'echo') {
      if (!stream.write(chunk)) {
        stream.pause();
        stream.once('drain', () => stream.resume());
      }
    } else if (mode.kind === 'sink') {
      seen += chunk.length;
      if (!acked && seen >= mode.bytes) {
        acked = true;
        stream.write(GRPC_ACK);
      }
    }
  };
  const startSource = (): void => {
    if (sourcing || mode.kind !== 'source') return;
    sourcing = true;
    writeBounded(stream, GRPC_BULK_CHUNK, mode.bytes, () => stream.end());
  };
  let payloadBytes = 0;
  stream.once('close', () => {
    if (skip !== 0) tally.forwardsClosedBeforeInit++;
    else if (payloadBytes === 0) tally.forwardsClosedWithoutPayload++;
    else tally.forwardsClosedWithPayload++;
  });
  stream.on('data', (chunk: Buffer) => {
    if (skip < 0) {
      header = header.length === 0 ? chunk : Buffer.concat([header, chunk]);
      if (header.length < 5) return;
      skip = 5 + header.readUInt32BE(1);
      chunk = header;
    }
    if (skip > 0) {
      const n = Math.min(skip, chunk.length);
      skip -= n;
      chunk = chunk.subarray(n);
      if (skip === 0) startSource();
    }
    if (chunk.length > 0) {
      payloadBytes += chunk.length;
      payload(chunk);
    }
  });
  stream.on('end', () => {
    if (mode.kind !== 'source' && !stream.writableEnded) stream.end();
  });
}

/** Writes `total` bytes of `chunk` repeated (the last one cut), with backpressure, then `done`. */
function writeBounded(out: NodeJS.WritableStream & { destroyed?: boolean }, chunk: Buffer, total: number, done: () => void): void {
  let left = total;
  const pump = (): void => {
    while (left > 0) {
      if (out.destroyed) return;
      const piece = left >= chunk.length ? chunk : chunk.subarray(0, left);
      left -= piece.length;
      if (!out.write(piece)) {
        out.once('drain', pump);
        return;
      }
    }
    done();
  };
  pump();
}
