import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createRedisOwnerCache } from '../../src/ownership/redis-owner-cache.ts';
import type { RedisOwnerCache, RedisOwnerCacheOptions } from '../../src/ownership/redis-owner-cache.ts';
import type { OwnerRecord } from '../../src/ownership/types.ts';
import { startOwnRedis } from '../helpers/own-redis.ts';
import type { OwnRedis } from '../helpers/own-redis.ts';
import { captureLogger, startCuttableProxy, waitFor } from './support.ts';

let redis: OwnRedis;
let raw: Redis;
const opened = new Set<RedisOwnerCache>();

beforeAll(async () => {
  redis = await startOwnRedis();
  raw = new Redis(redis.url, { lazyConnect: true });
  await raw.connect();
});

afterEach(async () => {
  await Promise.all([...opened].map((c) => c.close()));
  opened.clear();
});

afterAll(async () => {
  raw?.disconnect();
  await redis?.stop();
});

let n = 0;
async function openCache(over: Partial<RedisOwnerCacheOptions> = {}): Promise<RedisOwnerCache> {
  const cache = createRedisOwnerCache({
    url: redis.url,
    keyPrefix: `roc${++n}:`,
    logger: captureLogger().logger,
    onInvalidation: () => {},
    onResync: () => {},
    reconnectMaxMs: 100,
    ...over,
  });
  opened.add(cache);
  await cache.start();
  return cache;
}

const owner = (sandboxId: string, epoch: number): OwnerRecord => ({
  sandboxId,
  replicaId: 'r1',
  peerUrl: 'https://r1:8443',
  epoch,
  claimedAtMs: 1_700_000_000_000,
});

describe('redis owner cache', () => {
  it('stores an entry read from postgres and serves it with its remaining ttl', async () => {
    const cache = await openCache();
    const before = await cache.read('s1');
    expect(before).toEqual({ kind: 'miss', version: '' });
    if (before.kind !== 'miss') return;
    await cache.write(owner('s1', 1), 5000, before.version);
    const hit = await cache.read('s1');
    expect(hit).toMatchObject({ kind: 'hit', owner: owner('s1', 1) });
    expect(hit.kind === 'hit' && hit.ttlMs > 4000 && hit.ttlMs <= 5000).toBe(true);
  });

  it('refuses to store what was read before an invalidation of the same sandbox', async () => {
    const writer = await openCache();
    const claimer = createRedisOwnerCache({
      url: redis.url,
      keyPrefix: `roc${n}:`, // same deployment as the writer
      logger: captureLogger().logger,
      onInvalidation: () => {},
      onResync: () => {},
    });
    opened.add(claimer);
    await claimer.start();

    const read = await writer.read('s1');
    if (read.kind !== 'miss') throw new Error('expected a miss');
    // The claim commits and invalidates while the writer is still reading the old owner from postgres.
    await claimer.invalidate('s1', true);
    await writer.write(owner('s1', 1), 5000, read.version);
    expect((await writer.read('s1')).kind).toBe('miss');
  });

  it('publishes invalidations to every subscriber, itself included', async () => {
    const heardA: string[] = [];
    const heardB: string[] = [];
    const prefix = `roc-pub${++n}:`;
    const a = await openCache({ keyPrefix: prefix, onInvalidation: (id) => heardA.push(id) });
    await openCache({ keyPrefix: prefix, onInvalidation: (id) => heardB.push(id) });
    await a.invalidate('s9', true);
    await a.invalidate('s10', false); // not published
    await waitFor('both to hear s9', () => heardA.includes('s9') && heardB.includes('s9'), 1000);
    expect([...heardA, ...heardB].includes('s10')).toBe(false);
  });

  it('sends the invalidations of one turn in one script call, each with its own effect', async () => {
    const heard: string[] = [];
    const prefix = `roc-batch${++n}:`;
    const cache = await openCache({ keyPrefix: prefix, onInvalidation: (id) => heard.push(id) });
    const ids = Array.from({ length: 600 }, (_, i) => `b${i}`);
    for (const id of ids) await cache.write(owner(id, 1), 60_000, '');
    await cache.invalidate('warm-up', false); // loads the script, so that what follows is EVALSHA alone
    const calls = async (): Promise<Record<string, number>> => {
      const out: Record<string, number> = {};
      for (const m of (await raw.info('commandstats')).matchAll(/^cmdstat_(\w+):calls=(\d+)/gm)) out[m[1]!] = Number(m[2]);
      return out;
    };
    const before = await calls();
    // Even ids are published to every replica, odd ones only dropped here; 600 is more than one call takes.
    await Promise.all(ids.map((id, i) => cache.invalidate(id, i % 2 === 0)));
    const after = await calls();
    expect((after.evalsha ?? 0) - (before.evalsha ?? 0)).toBe(2);
    expect((after.exec ?? 0) - (before.exec ?? 0)).toBe(0);
    expect(await raw.keys(`${prefix}owner:*`)).toEqual([]);
    expect(await raw.mget(ids.map((id) => `${prefix}owner-ver:${id}`))).toEqual(ids.map(() => '1'));
    expect(await raw.pttl(`${prefix}owner-ver:b599`)).toBeGreaterThan(60_000);
    await waitFor('the published ones to be heard', () => heard.length >= 300, 2000);
    expect(heard.sort()).toEqual(ids.filter((_, i) => i % 2 === 0).sort());
    // A write of what was read before those invalidations is refused (the version moved).
    await cache.write(owner('b1', 1), 60_000, '');
    expect(await cache.read('b1')).toEqual({ kind: 'miss', version: '1' });
  });

  it('after missing more invalidations than it can remember, recovery drops every owner entry', async () => {
    const proxy = await startCuttableProxy(redis.port);
    try {
      const prefix = `roc-overflow${++n}:`;
      const cache = await openCache({ url: `redis://127.0.0.1:${proxy.port}`, keyPrefix: prefix, maxPendingInvalidations: 2 });
      for (const id of ['a', 'b', 'c', 'untouched']) await cache.write(owner(id, 1), 60_000, '');
      expect(await raw.keys(`${prefix}owner:*`)).toHaveLength(4);

      await proxy.cut();
      await waitFor('the cache to see redis down', () => !cache.isReady(), 2000);
      for (const id of ['a', 'b', 'c']) await cache.invalidate(id, true);
      await proxy.restore();
      await waitFor('every owner entry to be dropped', async () => (await raw.keys(`${prefix}owner:*`)).length === 0, 3000);
    } finally {
      await Promise.all([...opened].map((c) => c.close()));
      opened.clear();
      await proxy.close();
    }
  });

  it('answers "unavailable" at once while redis is down', async () => {
    const cache = await openCache();
    await redis.stop();
    try {
      await waitFor('the cache to see redis down', () => !cache.isReady(), 2000);
      const t0 = Date.now();
      expect(await cache.read('s1')).toEqual({ kind: 'unavailable' });
      expect(await cache.ping()).toBe(false);
      await cache.invalidate('s1', true);
      await cache.write(owner('s1', 1), 1000, '');
      expect(Date.now() - t0).toBeLessThan(100);
    } finally {
      await redis.start();
    }
  });
});
