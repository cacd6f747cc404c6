import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createPostgresOwnershipStore } from '../../src/ownership/postgres-store.ts';
import type { OwnershipStore } from '../../src/ownership/types.ts';
import { startOwnRedis } from '../helpers/own-redis.ts';
import type { OwnRedis } from '../helpers/own-redis.ts';
import { createTestDatabase, testRedisPrefix } from '../helpers/services.ts';
import type { TestDatabase } from '../helpers/services.ts';
import { captureLogger, nextChange, sleep, startCuttableProxy, waitFor } from './support.ts';
import type { CapturedLogger } from './support.ts';

let db: TestDatabase;
let redis: OwnRedis;
const prefix = testRedisPrefix('ownership_redis_outage');
const opened = new Set<OwnershipStore>();

beforeAll(async () => {
  [db, redis] = await Promise.all([createTestDatabase('ownership_redis_outage'), startOwnRedis()]);
});

afterEach(async () => {
  await Promise.all([...opened].map((s) => s.close()));
  opened.clear();
  await redis.start().catch(() => {}); // a test that failed mid-outage leaves it stopped
});

afterAll(async () => {
  await redis?.stop();
  await db?.drop();
});

const CACHE_TTL_MS = 100;

async function openStore(replicaId: string, log: CapturedLogger, redisUrl = redis.url): Promise<OwnershipStore> {
  const store = createPostgresOwnershipStore({
    databaseUrl: db.url,
    redisUrl,
    redisKeyPrefix: prefix,
    replicaId,
    peerUrl: `https://${replicaId}:8443`,
    version: 'test',
    heartbeatIntervalMs: 100,
    leaseTtlMs: 30_000,
    // Short, so that lookups fall through to Redis and the test sees which layer answered.
    cacheTtlMs: CACHE_TTL_MS,
    redisReconnectMaxMs: 200,
    logger: log.logger,
  });
  opened.add(store);
  await store.start();
  return store;
}

/** Looks up until Redis answers (the first lookup after a claim may overlap its invalidations). */
async function untilRedisAnswers(store: OwnershipStore, sandboxId: string, timeoutMs = 5000): Promise<void> {
  await waitFor(`a lookup of ${sandboxId} answered by redis`, async () => (await store.lookup(sandboxId)).source === 'redis', timeoutMs, CACHE_TTL_MS + 10);
}

describe('ownership store with redis failing', () => {
  it('keeps answering from postgres while redis is down and caches again once it is back', async () => {
    const log = captureLogger();
    const a = await openStore('outage-a', log);
    const s = 'sbx-outage';
    await a.claim(s);
    await untilRedisAnswers(a, s);
    expect(await a.health()).toEqual({ postgres: true, redis: true });

    await redis.stop();
    await waitFor('health to report redis down', async () => (await a.health()).redis === false);
    await sleep(CACHE_TTL_MS + 10);
    expect(await a.lookup(s)).toMatchObject({ source: 'postgres', owner: { replicaId: 'outage-a', epoch: 1 } });
    // Claims and releases still work, and lookups see them.
    const { owner } = await a.claim(s);
    expect(owner.epoch).toBe(2);
    expect(await a.lookup(s)).toMatchObject({ source: 'postgres', owner: { epoch: 2 } });
    for (let i = 0; i < 5; i++) {
      await sleep(CACHE_TTL_MS / 2);
      expect((await a.lookup(s)).owner).toMatchObject({ epoch: 2 });
    }
    expect(log.messages('warn').filter((m) => m.startsWith('redis unavailable'))).toHaveLength(1);

    await redis.start();
    await waitFor('redis recovered to be logged', () => log.messages('info').includes('redis recovered'), 5000);
    await untilRedisAnswers(a, s);
    expect((await a.lookup(s)).owner).toMatchObject({ epoch: 2 });
    expect(await a.health()).toEqual({ postgres: true, redis: true });
  });

  it('invalidations keep flowing between replicas over postgres while redis is down', async () => {
    const a = await openStore('notify-a', captureLogger());
    const b = await openStore('notify-b', captureLogger());
    const s = 'sbx-notify';
    await a.claim(s);
    await redis.stop();
    await waitFor('both stores to see redis down', async () => (await a.health()).redis === false && (await b.health()).redis === false);

    const heard = nextChange(b, s, 1000);
    await a.claim(s);
    await heard;
    expect((await b.lookup(s)).owner).toMatchObject({ replicaId: 'notify-a', epoch: 2 });
  });

  it('a change made while redis was unreachable does not leave a stale entry in redis', async () => {
    // Redis itself stays up (keeping the entry); only the replicas lose their way to it.
    const proxy = await startCuttableProxy(redis.port);
    const raw = new Redis(redis.url, { lazyConnect: true });
    await raw.connect();
    try {
      const viaProxy = `redis://127.0.0.1:${proxy.port}`;
      const a = await openStore('stale-a', captureLogger(), viaProxy);
      const b = await openStore('stale-b', captureLogger(), viaProxy);
      const s = 'sbx-stale';
      const key = `${prefix}owner:${s}`;
      await a.claim(s);
      await untilRedisAnswers(a, s);
      expect(JSON.parse((await raw.get(key)) ?? 'null')).toMatchObject({ replicaId: 'stale-a', epoch: 1 });

      await proxy.cut();
      await waitFor('A and B to see redis down', async () => (await a.health()).redis === false && (await b.health()).redis === false);
      await b.claim(s);
      // Neither the claimer nor the notified replica could drop the entry: it is stale now.
      expect(JSON.parse((await raw.get(key)) ?? 'null')).toMatchObject({ replicaId: 'stale-a', epoch: 1 });

      await proxy.restore();
      await waitFor('the stale entry to be dropped on recovery', async () => {
        const v = await raw.get(key);
        return v === null || (JSON.parse(v) as { epoch: number }).epoch === 2;
      }, 3000);
      const c = await openStore('stale-c', captureLogger());
      expect((await c.lookup(s)).owner).toMatchObject({ replicaId: 'stale-b', epoch: 2 });
    } finally {
      await Promise.all([...opened].map((st) => st.close()));
      opened.clear();
      raw.disconnect();
      await proxy.close();
    }
  });

  it('starts while redis is down and picks redis up when it appears', async () => {
    await redis.stop();
    const log = captureLogger();
    const a = await openStore('late-a', log);
    expect(await a.health()).toEqual({ postgres: true, redis: false });
    const s = 'sbx-late';
    await a.claim(s);
    expect(await a.lookup(s)).toMatchObject({ source: 'postgres', owner: { epoch: 1 } });

    await redis.start();
    await untilRedisAnswers(a, s);
    expect(log.messages('warn').filter((m) => m.startsWith('redis unavailable'))).toHaveLength(1);
    expect(log.messages('info')).toContain('redis recovered');
  });
});
