// An upstream connection that goes silent under forwarded streams (the peer's node or link gone: a
// partition, modelled by a relay that freezes its open connections). The pool PINGs a connection a
// stream was just started on when it stays silent, destroys it when the PING goes unanswered, and
// the streams forwarded over it end at once with the reason instead of staying open with nothing
// more to come: before the answer, the client hears UNAVAILABLE; after it, its stream is reset.
// Connections given an interval of their own (the peer pool's) are PINGed after that much silence
// even when no request comes to probe them.
import http2 from 'node:http2';
import type { AddressInfo } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startSwitchableRelay, type SwitchableRelay } from '../../../emulator/pausable-relay.ts';
import { SessionPool } from '../../../src/proxy/h2-sessions.ts';
import { forwardStream, UpstreamCutError } from '../../../src/proxy/h2-forward.ts';
import { H2Liveness, silentDeath } from '../../../src/proxy/liveness.ts';

const PING_TIMEOUT_MS = 300;
const QUICK_PING_INTERVAL_MS = 1_000;

describe('forwarded streams over an upstream connection that goes silent', () => {
  let gateway: http2.Http2Server;
  let proxy: http2.Http2Server;
  let relay: SwitchableRelay;
  let liveness: H2Liveness;
  let pool: SessionPool;
  /** Connections of their own with a 1 s PING interval (as the peer pool's --peer-ping-interval-ms). */
  let quickPool: SessionPool;
  let proxyOrigin: string;
  const pingsAtGateway: number[] = [];
  const upstreamSessions: http2.ClientHttp2Session[] = [];
  const upstreamErrors: Error[] = [];

  beforeAll(async () => {
    gateway = http2.createServer();
    gateway.on('session', (s) => s.on('ping', () => pingsAtGateway.push(Date.now())));
    gateway.on('stream', (stream, headers) => {
      stream.on('error', () => undefined);
      const path = headers[':path'];
      if (path === '/ok') {
        stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
        stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
        stream.end(Buffer.from('fine'));
      } else if (path === '/half') {
        // Answers and keeps the stream open (a relay carrying bytes).
        stream.respond({ ':status': 200, 'content-type': 'application/grpc' });
        stream.write(Buffer.from('started'));
      }
      // '/silent': never answered.
    });
    await new Promise<void>((r) => gateway.listen(0, '127.0.0.1', r));
    relay = await startSwitchableRelay({ host: '127.0.0.1', port: (gateway.address() as AddressInfo).port });
    liveness = new H2Liveness({ pingIntervalMs: 60_000, pingTimeoutMs: PING_TIMEOUT_MS });
    pool = new SessionPool({ connectTimeoutMs: 2_000, windowBytes: 65_535, liveness });
    quickPool = new SessionPool({ connectTimeoutMs: 2_000, windowBytes: 65_535, liveness, pingIntervalMs: QUICK_PING_INTERVAL_MS });
    const upstreamOrigin = `http://127.0.0.1:${relay.port}`;
    proxy = http2.createServer();
    proxy.on('stream', (stream, headers) => {
      stream.on('error', () => undefined);
      void (headers['x-pool'] === 'quick' ? quickPool : pool).get(upstreamOrigin).then((session) => {
        if (!upstreamSessions.includes(session)) upstreamSessions.push(session);
        // With onUpstreamError (as the sidecar's routing passes), the cause is seen; without, answered here.
        const withHandler = headers['x-handler'] === '1';
        forwardStream(stream, session, { ':method': 'POST', ':path': headers[':path'] ?? '/' }, withHandler ? { onUpstreamError: (err) => {
          upstreamErrors.push(err);
          stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '14', 'grpc-message': 'seen by the handler' }, { endStream: true });
        } } : {});
      });
    });
    await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
    proxyOrigin = `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`;
  });

  afterEach(() => {
    // Each case starts on a fresh upstream connection: the frozen ones are let go.
    relay.destroyFrozen();
  });

  afterAll(async () => {
    await pool.close();
    await quickPool.close();
    liveness.close();
    await relay.close();
    await new Promise((r) => proxy.close(r));
    await new Promise((r) => gateway.close(r));
  });

  interface CallResult {
    status?: string;
    message?: string;
    body: string;
    rstCode?: number;
    closedAfterMs: number;
  }

  /** A call through the proxy; resolves when its stream closes (or after `waitMs`, unresolved). */
  function call(client: http2.ClientHttp2Session, path: string, opts: { handler?: boolean; quick?: boolean; onStarted?: () => void } = {}): Promise<CallResult> {
    const started = Date.now();
    return new Promise((resolve) => {
      const out: CallResult = { body: '', closedAfterMs: 0 };
      const req = client.request(
        { ':method': 'POST', ':path': path, ...(opts.handler ? { 'x-handler': '1' } : {}), ...(opts.quick ? { 'x-pool': 'quick' } : {}) },
        { endStream: false },
      );
      req.on('error', () => undefined);
      req.on('response', (h) => {
        if (h['grpc-status'] !== undefined) {
          out.status = String(h['grpc-status']);
          out.message = decodeURIComponent(String(h['grpc-message'] ?? ''));
        }
      });
      req.on('trailers', (t) => {
        out.status = String(t['grpc-status']);
        out.message = decodeURIComponent(String(t['grpc-message'] ?? ''));
      });
      req.on('data', (d: Buffer) => {
        out.body += d.toString();
        if (out.body === 'started') opts.onStarted?.();
      });
      req.on('close', () => {
        out.rstCode = req.rstCode;
        out.closedAfterMs = Date.now() - started;
        resolve(out);
      });
      req.end(Buffer.from('first message'));
    });
  }

  async function warmClient(): Promise<http2.ClientHttp2Session> {
    const client = http2.connect(proxyOrigin);
    client.on('error', () => undefined);
    const ok = await call(client, '/ok');
    expect(ok).toMatchObject({ status: '0', body: 'fine' });
    return client;
  }

  it('a request sent to a connection silent for a while PINGs it at once; unanswered, the client hears UNAVAILABLE with the reason', async () => {
    const client = await warmClient();
    try {
      await new Promise((r) => setTimeout(r, 1_300)); // the connection has been silent past the probe threshold
      relay.freeze();
      const r = await call(client, '/silent');
      expect(r.status).toBe('14');
      expect(r.message).toBe('upstream connection went silent (PING unanswered) before the stream ended');
      // PINGed when the request went (within a tick), destroyed one PING timeout later: well before
      // the 60 s PING interval this pool has.
      expect(r.closedAfterMs).toBeLessThan(PING_TIMEOUT_MS + 1_500);
      expect(silentDeath(upstreamSessions.at(-1)!)).toBe(true);
    } finally {
      client.destroy();
    }
  });

  it('a request sent right after traffic is PINGed once the connection stays silent; the handler learns it went silent', async () => {
    const client = await warmClient();
    try {
      relay.freeze(); // right after the answer to /ok: the connection was heard from a moment ago
      const r = await call(client, '/silent', { handler: true });
      expect(r).toMatchObject({ status: '14', message: 'seen by the handler' });
      const err = upstreamErrors.at(-1);
      expect(err).toBeInstanceOf(UpstreamCutError);
      expect((err as UpstreamCutError).silent).toBe(true);
      expect(r.closedAfterMs).toBeLessThan(1_000 + PING_TIMEOUT_MS + 1_500);
    } finally {
      client.destroy();
    }
  });

  it('a stream already answered and carrying bytes is reset when its connection goes silent, not left open', async () => {
    const client = await warmClient();
    try {
      let frozeAt = 0;
      const done = call(client, '/half', {
        onStarted: () => {
          relay.freeze();
          frozeAt = Date.now();
          // Another request on the same connection probes it (a stream that only waits sends nothing).
          void call(client, '/silent');
        },
      });
      const r = await done;
      expect(r.body).toBe('started');
      expect(r.rstCode).toBe(http2.constants.NGHTTP2_INTERNAL_ERROR);
      expect(Date.now() - frozeAt).toBeLessThan(1_000 + PING_TIMEOUT_MS + 1_500);
    } finally {
      client.destroy();
    }
  });

  it('an answered stream left idle is reset after its connection\'s own PING interval, with no request to probe it; the pool\'s other connections keep theirs', async () => {
    const client = await warmClient();
    try {
      let quickStarted = false;
      let slowStarted = false;
      let freeze: () => void = () => undefined;
      const bothStarted = new Promise<void>((r) => (freeze = r));
      const started = (): void => {
        if (quickStarted && slowStarted) freeze();
      };
      const quick = call(client, '/half', { quick: true, onStarted: () => ((quickStarted = true), started()) });
      let slowClosed = false;
      void call(client, '/half', { onStarted: () => ((slowStarted = true), started()) }).then(() => (slowClosed = true));
      await bothStarted;
      relay.freeze(); // both connections at once; nothing else is sent on either
      const frozeAt = Date.now();
      const r = await quick;
      const cutMs = Date.now() - frozeAt;
      expect(r.body).toBe('started');
      expect(r.rstCode).toBe(http2.constants.NGHTTP2_INTERNAL_ERROR);
      // Silent for the interval (seen up to a 1 s tick late), then the PING's wait, ending at a tick.
      expect(cutMs).toBeLessThan(QUICK_PING_INTERVAL_MS + 1_000 + PING_TIMEOUT_MS + 1_500);
      // The other pool's connection, with the liveness's own 60 s interval, was not PINGed: its stream is still open.
      expect(slowClosed).toBe(false);
    } finally {
      client.destroy();
    }
  });

  it('a connection that answers is not PINGed for each request', async () => {
    const client = await warmClient();
    try {
      const before = pingsAtGateway.length;
      for (let i = 0; i < 20; i++) expect(await call(client, '/ok')).toMatchObject({ status: '0' });
      expect(pingsAtGateway.length - before).toBeLessThanOrEqual(1);
    } finally {
      client.destroy();
    }
  });
});
