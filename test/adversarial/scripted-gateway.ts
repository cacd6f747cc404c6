// An in-test h2c gateway whose answers a test scripts, for sidecars started with bench/lib/sidecars.ts:
// `ConnectSupervisor` streams are held open (the sidecar in front becomes the sandbox's owner), the
// sidecar's generation probe and anything unscripted get UNIMPLEMENTED (a seed gateway's answer), and
// HTTP/1.1 on the same port gets 404 (a seed gateway publishes no sandbox key set). Plus a raw gRPC
// call helper that reports the final grpc-status and every response byte.
import http2 from 'node:http2';
import net, { type AddressInfo } from 'node:net';
import { once } from 'node:events';
import { grpcFrame } from '../../bench/lib/raw-clients.ts';
import { withTimeout } from './support.ts';

export interface ScriptedGateway {
  port: number;
  close(): Promise<void>;
}

/** `script` answers a stream and returns true, or returns false to leave it to the defaults above. */
export async function startScriptedGateway(script: (stream: http2.ServerHttp2Stream, path: string) => boolean): Promise<ScriptedGateway> {
  const sessions = new Set<http2.ServerHttp2Session>();
  const gateway = http2.createServer();
  gateway.on('session', (s) => {
    sessions.add(s);
    s.once('close', () => sessions.delete(s));
  });
  gateway.on('sessionError', () => undefined);
  gateway.on('stream', (stream, headers) => {
    stream.on('error', () => undefined);
    const path = String(headers[':path']);
    if (script(stream, path)) return;
    if (path.endsWith('/ConnectSupervisor')) {
      stream.respond({ ':status': 200, 'content-type': 'application/grpc' });
      stream.resume();
      return;
    }
    stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '12' }, { endStream: true });
  });
  const listener = net.createServer((socket) => {
    socket.on('error', () => undefined);
    socket.once('data', (head: Buffer) => {
      if (head.subarray(0, 4).toString('latin1') === 'PRI ') {
        socket.pause();
        socket.unshift(head);
        gateway.emit('connection', socket);
        return;
      }
      socket.end('HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
    });
  });
  listener.listen(0, '127.0.0.1');
  await once(listener, 'listening');
  return {
    port: (listener.address() as AddressInfo).port,
    close: async () => {
      for (const s of sessions) s.destroy();
      await new Promise<void>((r) => listener.close(() => r()));
    },
  };
}

/** ForwardTcp as a gateway serves it to a sandbox that echoes: everything after the init message comes back. */
export function echoAfterInit(stream: http2.ServerHttp2Stream): void {
  stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
  stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
  let pending = Buffer.alloc(0);
  let initSkipped = false;
  stream.on('data', (d: Buffer) => {
    if (initSkipped) return void stream.write(d);
    pending = Buffer.concat([pending, d]);
    if (pending.length < 5 || pending.length < 5 + pending.readUInt32BE(1)) return;
    initSkipped = true;
    const rest = pending.subarray(5 + pending.readUInt32BE(1));
    if (rest.length > 0) stream.write(rest);
  });
  stream.on('end', () => stream.end());
}

/** A gateway answer given once the request ended: one message built from the whole request, then grpc-status 0. */
export function answerWhenEnded(stream: http2.ServerHttp2Stream, answer: (request: Buffer) => Buffer): void {
  const request: Buffer[] = [];
  stream.on('data', (d: Buffer) => request.push(d));
  stream.on('end', () => {
    stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
    stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
    stream.end(grpcFrame(answer(Buffer.concat(request))));
  });
}

/**
 * A gRPC call on `session`: sends `body` (and ends the request when `endRequest`), then resolves with
 * the response bytes and the final grpc-status once the answer is over (END_STREAM) or the stream
 * closed. `until` ends the request once the bytes received satisfy it (a bidirectional call).
 */
export function grpcCall(
  session: http2.ClientHttp2Session,
  path: string,
  body: Buffer,
  endRequest: boolean,
  until?: (received: Buffer) => boolean,
  timeoutMs = 15_000,
): Promise<{ status: string | undefined; body: Buffer }> {
  return withTimeout(
    new Promise((resolve, reject) => {
      const req = session.request({ ':method': 'POST', ':path': path, 'content-type': 'application/grpc', te: 'trailers' }, { endStream: false });
      const chunks: Buffer[] = [];
      let status: string | undefined;
      const done = (): void => resolve({ status, body: Buffer.concat(chunks) });
      req.on('response', (h) => {
        if (h['grpc-status'] !== undefined) status = String(h['grpc-status']);
      });
      req.on('trailers', (t) => (status = String(t['grpc-status'])));
      req.on('data', (d: Buffer) => {
        chunks.push(d);
        if (until?.(Buffer.concat(chunks))) req.end();
      });
      req.on('end', () => {
        done();
        req.close();
      });
      req.on('close', done);
      req.on('error', reject);
      if (endRequest) req.end(body);
      else req.write(body);
    }),
    timeoutMs,
  );
}
