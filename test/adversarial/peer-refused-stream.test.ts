// A forwarded stream the owner's gateway refuses unprocessed (RST_STREAM REFUSED_STREAM, what a
// gateway sends for streams past the last stream id of its shutdown GOAWAY) is sent again by the
// owner's sidecar, body and all, instead of coming back to the client as UNAVAILABLE: the ingress
// cannot tell such a refusal from a failure once the owner answered it. Two sidecars (cluster mode,
// real Postgres and Redis) in front of one in-test h2c gateway that refuses the first ForwardTcp
// stream it sees and echoes every later one. A watch the gateway refuses the same way is sent again by
// the sidecar that follows the owner for it (the whole request is kept for such a replay).
import http2 from 'node:http2';
import net, { type AddressInfo } from 'node:net';
import { once } from 'node:events';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FORWARD_TCP, connectH2, forwardInitFrame, frameData, grpcFrame } from '../../bench/lib/raw-clients.ts';
import { holdSupervisor, startBenchSidecar, waitForOwner, type BenchSidecar, type HeldSupervisor } from '../../bench/lib/sidecars.ts';
import { GatewayStore } from '../../emulator/gateway/store.ts';
import { createTestDatabase, TEST_REDIS_URL, testRedisPrefix, type TestDatabase } from '../helpers/services.ts';
import { metric, withTimeout } from './support.ts';

const SANDBOX = 'refused-stream-sandbox';

describe('streams a gateway refuses unprocessed (REFUSED_STREAM)', () => {
  let db: TestDatabase;
  let store: GatewayStore;
  let gateway: http2.Http2Server;
  let listener: net.Server;
  const gatewaySessions = new Set<http2.ServerHttp2Session>();
  let forwardsSeen = 0;
  let watchesSeen = 0;
  let owner: BenchSidecar;
  let ingress: BenchSidecar;
  let supervisor: HeldSupervisor;
  let client: http2.ClientHttp2Session;
  let token: string;

  beforeAll(async () => {
    db = await createTestDatabase('peer_refused_stream');
    store = new GatewayStore(db.url);
    await store.migrate();
    await store.createSandbox({ id: SANDBOX, name: SANDBOX });
    token = (await store.createSshSession(SANDBOX, 3600)).token;

    gateway = http2.createServer();
    gateway.on('session', (s) => {
      gatewaySessions.add(s);
      s.once('close', () => gatewaySessions.delete(s));
    });
    gateway.on('sessionError', () => undefined);
    gateway.on('stream', (stream, headers) => {
      stream.on('error', () => undefined);
      const path = String(headers[':path']);
      if (path === FORWARD_TCP) {
        if (++forwardsSeen === 1) {
          stream.close(http2.constants.NGHTTP2_REFUSED_STREAM);
          return;
        }
        // Echo everything after the init message (the gateway consumes it).
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
        return;
      }
      if (path.endsWith('/WatchSandbox')) {
        if (++watchesSeen === 1) {
          stream.close(http2.constants.NGHTTP2_REFUSED_STREAM);
          return;
        }
        // One event carrying the request it answers, then the end (a stop-on-terminal watch).
        const request: Buffer[] = [];
        stream.on('data', (d: Buffer) => request.push(d));
        stream.on('end', () => {
          stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
          stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
          stream.end(grpcFrame(Buffer.concat([Buffer.from('event for '), Buffer.concat(request)])));
        });
        return;
      }
      if (path.endsWith('/ConnectSupervisor')) {
        // Held open: the sidecar in front becomes the sandbox's owner.
        stream.respond({ ':status': 200, 'content-type': 'application/grpc' });
        stream.resume();
        return;
      }
      // Anything else (the sidecar's generation probe): UNIMPLEMENTED, the seed gateway's answer.
      stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '12' }, { endStream: true });
    });
    // HTTP/1.1 on the same port (the sidecar reads the gateway's JWT key set over it): 404, as a
    // seed gateway that publishes no sandbox keys answers.
    listener = net.createServer((socket) => {
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
    const gatewayPort = (listener.address() as AddressInfo).port;

    const common = { gatewayPort, databaseUrl: db.url, redisUrl: TEST_REDIS_URL, redisKeyPrefix: testRedisPrefix('peer-refused'), peerSecret: 'peer-refused-secret-0123456789' };
    [owner, ingress] = await Promise.all([startBenchSidecar('owner', common), startBenchSidecar('ingress', common)]);
    supervisor = await holdSupervisor(owner.publicPort, SANDBOX);
    await waitForOwner(db.url, SANDBOX, 'owner');
    client = await connectH2(ingress.publicPort);
  }, 60_000);

  /** A gRPC call on `session`: the request messages, then the response bytes and the final grpc-status. */
  const call = (session: http2.ClientHttp2Session, path: string, body: Buffer, endRequest: boolean, until?: (received: Buffer) => boolean): Promise<{ status: string | undefined; body: Buffer }> =>
    withTimeout(
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
        // The answer is over at END_STREAM (trailers, or a trailers-only refusal), as for a gRPC client.
        req.on('end', () => {
          done();
          req.close();
        });
        req.on('close', done);
        req.on('error', reject);
        if (endRequest) req.end(body);
        else req.write(body);
      }),
      15_000,
    );

  afterAll(async () => {
    client?.destroy();
    supervisor?.close();
    await Promise.all([owner?.stop(), ingress?.stop()]);
    for (const s of gatewaySessions) s.destroy();
    await new Promise<void>((r) => (listener ? listener.close(() => r()) : r()));
    await store?.close();
    await db?.drop();
  });

  it('a forwarded ForwardTcp is sent again by the owner’s sidecar: the client gets its echo and grpc-status 0', async () => {
    const ping = frameData(Buffer.from('ping through a refusal'));
    const result = await call(client, FORWARD_TCP, Buffer.concat([forwardInitFrame(SANDBOX, token), ping]), false, (got) => got.length >= ping.length);
    expect(result).toEqual({ status: '0', body: ping });
    // The gateway saw the refused stream and the one sent again, both from the owner's sidecar.
    expect(forwardsSeen).toBe(2);
    expect(owner.proc.output.some((l) => l.includes('sending it again on another connection') && l.includes('refused stream'))).toBe(true);
    expect((await metric(ingress.adminPort, 'ohs_requests_total', { class: 'tcp-forward', target: 'peer', outcome: 'grpc_0' })).sum).toBe(1);
  }, 30_000);

  it('a watch on the owner’s sidecar that its gateway refused unprocessed is sent again and answered', async () => {
    const local = await connectH2(owner.publicPort);
    try {
      // WatchSandboxRequest{ id = SANDBOX }, the whole request (a watch is server-streaming).
      const request = grpcFrame(Buffer.concat([Buffer.from([0x0a, SANDBOX.length]), Buffer.from(SANDBOX)]));
      const result = await call(local, '/openshell.v1.OpenShell/WatchSandbox', request, true);
      expect(result).toEqual({ status: '0', body: grpcFrame(Buffer.concat([Buffer.from('event for '), request])) });
      expect(watchesSeen).toBe(2);
      expect(owner.proc.output.some((l) => l.includes('watch refused before it was processed; sending it again'))).toBe(true);
    } finally {
      local.destroy();
    }
  }, 30_000);
});
