// A sentinel that accepts connections and never answers (a hung process, a half-dead node), listed
// first in --redis-url: the limiter gives it up after its command timeout, asks the next sentinel,
// reaches the primary and counts globally. Without a bound on a sentinel's answer the client stays
// connecting for good and the limits stay local.
import net from 'node:net';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startOwnSentinel, type OwnSentinel } from '../helpers/own-sentinel.ts';
import { testRedisPrefix } from '../helpers/services.ts';
import { DEFAULT_LIMIT_RULES, type LimitRule } from '../../src/limits/rules.ts';
import { slotKey } from '../../src/limits/slots.ts';
import { inspector, limiterFactory } from '../limits/support.ts';
import { waitFor } from '../ownership/support.ts';

let sentinel: OwnSentinel;
let silent: net.Server;
const accepted = new Set<net.Socket>();
const prefix = testRedisPrefix('sentinel_silent');
const limiters = limiterFactory({ keyPrefix: prefix });
const PER_TOKEN = DEFAULT_LIMIT_RULES.find((r) => r.name === 'ssh-per-token') as LimitRule;

beforeAll(async () => {
  sentinel = await startOwnSentinel();
  silent = net.createServer((s) => {
    accepted.add(s);
    s.on('error', () => undefined);
    s.on('close', () => accepted.delete(s));
  });
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
}, 60_000);

afterAll(async () => {
  await limiters.closeAll();
  for (const s of accepted) s.destroy();
  await new Promise<void>((resolve) => silent.close(() => resolve()));
  await sentinel?.stop();
});

it('a sentinel that never answers is given up and the next one names the primary', async () => {
  const { port } = silent.address() as net.AddressInfo;
  const url = sentinel.url.replace('redis+sentinel://', `redis+sentinel://127.0.0.1:${port},`);
  const a = limiters.open({ holderId: 'silent-a', redisUrl: url, commandTimeoutMs: 500 });
  // Taken at once (locally while no primary is known), then written to the primary once one is.
  const slot = await a.acquire({ cls: 'ssh-tunnel', token: 'silent-tok', sandboxId: 'sbx-silent' });
  expect(slot.ok).toBe(true);
  const primary = inspector(`redis://127.0.0.1:${sentinel.primaryPort}`);
  try {
    await primary.connect();
    // The limiter writes the slots it took locally before it counts globally again: wait for both.
    await waitFor(
      'the slot in the primary, named by the second sentinel, and global counting',
      async () => (await primary.zcard(slotKey(prefix, PER_TOKEN, 'silent-tok'))) === 1 && a.policy() === 'global',
      10_000,
    );
    expect(accepted.size).toBeGreaterThan(0); // the silent sentinel was asked first
  } finally {
    primary.disconnect();
  }
  if (slot.ok) slot.release();
});
