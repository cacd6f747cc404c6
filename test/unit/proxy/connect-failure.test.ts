import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { SessionPool } from '../../../src/proxy/h2-sessions.ts';

// A peer that died without a word: its port accepts connections and never speaks HTTP/2.
const opened: Array<{ server: net.Server; sockets: Set<net.Socket> }> = [];

async function silentPeer(): Promise<{ origin: string; accepted: () => number }> {
  const sockets = new Set<net.Socket>();
  let accepted = 0;
  const server = net.createServer((sock) => {
    accepted++;
    sockets.add(sock);
    sock.on('error', () => undefined);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  opened.push({ server, sockets });
  return { origin: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`, accepted: () => accepted };
}

afterEach(async () => {
  for (const { server, sockets } of opened.splice(0)) {
    for (const s of sockets) s.destroy();
    await new Promise((resolve) => server.close(resolve));
  }
});

describe('session pool: an origin that cannot be reached', () => {
  it('callers that joined a failing connect fail with it, after one connect timeout and one connection', async () => {
    const peer = await silentPeer();
    const pool = new SessionPool({ connectTimeoutMs: 300, windowBytes: 65_535 });
    try {
      const results = await Promise.allSettled(Array.from({ length: 20 }, () => pool.get(peer.origin)));
      expect(results.map((r) => r.status)).toEqual(Array.from({ length: 20 }, () => 'rejected'));
      for (const r of results) expect(String((r as PromiseRejectedResult).reason)).toContain('timed out after 300 ms');
      // One connection for all of them (each retrying in turn made 5 rounds of connects and then
      // one connection per caller).
      expect(peer.accepted()).toBe(1);
      // The next caller tries afresh: the failure is not remembered.
      await expect(pool.get(peer.origin)).rejects.toThrow('timed out after 300 ms');
      expect(peer.accepted()).toBe(2);
    } finally {
      pool.close();
    }
  });
});
