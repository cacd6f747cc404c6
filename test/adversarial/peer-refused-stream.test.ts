// A forwarded stream the owner's gateway refuses unprocessed (RST_STREAM REFUSED_STREAM, what a
// gateway sends for streams past the last stream id of its shutdown GOAWAY) is sent again by the
// owner's sidecar, body and all, instead of coming back to the client as UNAVAILABLE: the ingress
// cannot tell such a refusal from a failure once the owner answered it. Two sidecars (cluster mode,
// real Postgres and Redis) in front of one in-test h2c gateway that refuses the first ForwardTcp
// stream it sees and echoes every later one.
import http2 from 'node:http2';
import net, { type AddressInfo } from 'node:net';
import { once } from 'node:events';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FORWARD_TCP, connectH2, forwardInitFrame, frameData } from '../../bench/lib/raw-clients.ts';
import { holdSupervisor, startBenchSidecar, waitForOwner, type BenchSidecar, type HeldSupervisor } from '../../bench/lib/sidecars.ts';
import { GatewayStore } from '../../emulator/gateway/store.ts';
import { createTestDatabase, TEST_REDIS_URL, testRedisPrefix, type TestDatabase } from '../helpers/services.ts';
import { metric, withTimeout } from './support.ts';

const SANDBOX = 'refused-stream-sandbox';

describe('a ForwardTcp stream refused unprocessed by the owner’s gateway', () => {
  let db: TestDatabase;
  let store: GatewayStore;
  let gateway: http2.Http2Server;
  let listener: net.Server;
  const gatewaySessions = new Set<http2.ServerHttp2Session>();
  let forwardsSeen = 0;
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

  afterAll(async () => {
    client?.destroy();
    supervisor?.close();
    await Promise.all([owner?.stop(), ingress?.stop()]);
    for (const s of gatewaySessions) s.destroy();
    await new Promise<void>((r) => (listener ? listener.close(() => r()) : r()));
    await store?.close();
    await db?.drop();
  });

  it('is sent again by the owner’s sidecar and the client gets its echo and grpc-status 0', async () => {
    const ping = frameData(Buffer.from('ping through a refusal'));
    const result = await withTimeout(
      new Promise<{ status: string | undefined; echoed: Buffer }>((resolve, reject) => {
        const req = client.request({ ':method': 'POST', ':path': FORWARD_TCP, 'content-type': 'application/grpc', te: 'trailers' }, { endStream: false });
        const chunks: Buffer[] = [];
        let status: string | undefined;
        req.on('response', (h) => {
          if (h['grpc-status'] !== undefined) status = String(h['grpc-status']);
        });
        req.on('trailers', (t) => (status = String(t['grpc-status'])));
        req.on('data', (d: Buffer) => {
          chunks.push(d);
          if (Buffer.concat(chunks).length >= ping.length) req.end();
        });
        // The answer is over at END_STREAM (trailers, or a trailers-only refusal), as for a gRPC client.
        req.on('end', () => {
          resolve({ status, echoed: Buffer.concat(chunks) });
          req.close();
        });
        req.on('close', () => resolve({ status, echoed: Buffer.concat(chunks) }));
        req.on('error', reject);
        req.write(Buffer.concat([forwardInitFrame(SANDBOX, token), ping]));
      }),
      15_000,
    );
    expect(result).toEqual({ status: '0', echoed: ping });
    // The gateway saw the refused stream and the one sent again, both from the owner's sidecar.
    expect(forwardsSeen).toBe(2);
    expect(owner.proc.output.some((l) => l.includes('sending it again on another connection') && l.includes('refused stream'))).toBe(true);
    expect((await metric(ingress.adminPort, 'ohs_requests_total', { class: 'tcp-forward', target: 'peer', outcome: 'grpc_0' })).sum).toBe(1);
  }, 30_000);
});
