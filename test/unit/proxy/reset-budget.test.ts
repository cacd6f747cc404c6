// SessionPool's reset budget against a real loopback HTTP/2 server: a connection that carried its
// budget of reset streams takes no new streams, finishes the ones it has, then closes.
import http2 from 'node:http2';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SessionPool } from '../../../src/proxy/h2-sessions.ts';

describe('SessionPool reset budget', () => {
  let server: http2.Http2Server;
  let origin: string;

  beforeAll(async () => {
    server = http2.createServer();
    // Answers headers at once and ends the stream when the client ends its side.
    server.on('stream', (stream) => {
      stream.on('error', () => undefined);
      stream.respond({ ':status': 200 });
      stream.resume();
      stream.on('end', () => stream.end());
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });

  afterAll(async () => {
    await new Promise((resolve) => server.close(resolve));
  });

  const closed = (stream: http2.ClientHttp2Stream): Promise<void> => new Promise((resolve) => stream.once('close', resolve));

  it('moves new streams to a fresh connection once resets plus open streams reach the budget, and lets the old one finish', async () => {
    const retired: number[] = [];
    const pool = new SessionPool({ connectTimeoutMs: 2000, windowBytes: 65_535, resetBudget: { burst: 10, refillPerSecond: 0, onRetire: (_o, n) => retired.push(n) } });
    try {
      const first = await pool.get(origin);
      // A long-lived stream that must survive the retirement.
      const keeper = first.request({ ':method': 'POST', ':path': '/keep' });
      keeper.on('error', () => undefined);
      let answered = false;
      keeper.on('response', () => (answered = true));
      keeper.resume();
      for (let i = 0; i < 8; i++) {
        const s = await pool.get(origin);
        expect(s).toBe(first);
        const req = s.request({ ':method': 'POST', ':path': '/cancel' });
        req.on('error', () => undefined);
        req.close(http2.constants.NGHTTP2_CANCEL);
        await closed(req);
      }
      // 8 resets + 1 open stream + the next one = 10: still within budget.
      expect(await pool.get(origin)).toBe(first);
      const ninth = first.request({ ':method': 'POST', ':path': '/cancel' });
      ninth.on('error', () => undefined);
      ninth.close(http2.constants.NGHTTP2_CANCEL);
      await closed(ninth);
      // 9 resets + 1 open + 1 more would exceed 10.
      const second = await pool.get(origin);
      expect(second).not.toBe(first);
      expect(retired).toEqual([9]);
      // The kept stream still works end to end on the retired connection, which then closes.
      const firstClosed = new Promise((resolve) => first.once('close', resolve));
      keeper.end('bye');
      await closed(keeper);
      expect(answered).toBe(true);
      expect(keeper.rstCode).toBe(http2.constants.NGHTTP2_NO_ERROR);
      await firstClosed;
      expect(first.closed).toBe(true);
      expect(pool.size).toBe(1);
    } finally {
      await pool.close();
    }
  });

  it('streams that end normally do not spend the budget', async () => {
    const pool = new SessionPool({ connectTimeoutMs: 2000, windowBytes: 65_535, resetBudget: { burst: 3, refillPerSecond: 0 } });
    try {
      const first = await pool.get(origin);
      for (let i = 0; i < 20; i++) {
        const s = await pool.get(origin);
        expect(s).toBe(first);
        const req = s.request({ ':method': 'POST', ':path': '/ok' });
        req.on('error', () => undefined);
        req.resume();
        req.end();
        await closed(req);
      }
    } finally {
      await pool.close();
    }
  });
});
