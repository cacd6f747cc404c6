// Issue 13 item 4: routing a request whose owner is known and unchanged costs no Postgres query
// and no Redis command; an ownership change is what makes the next lookup read again.
import { Redis } from 'ioredis';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { createMetrics } from '../../src/metrics/registry.ts';
import { createGatewayObjects } from '../../src/ownership/gateway-objects.ts';
import { createPostgresOwnershipStore } from '../../src/ownership/postgres-store.ts';
import type { OwnershipStore } from '../../src/ownership/types.ts';
import { LocalSessions, OwnerRouter } from '../../src/routing/router.ts';
import { createTestDatabase, TEST_REDIS_URL, testRedisPrefix } from '../helpers/services.ts';
import type { TestDatabase } from '../helpers/services.ts';
import { captureLogger, waitFor } from './support.ts';

let db: TestDatabase;
const prefix = testRedisPrefix('hot-path-lookups');
const opened = new Set<OwnershipStore>();

beforeAll(async () => {
  db = await createTestDatabase('hot_path_lookups');
});

afterEach(async () => {
  vi.restoreAllMocks();
  await Promise.all([...opened].map((s) => s.close()));
  opened.clear();
});

afterAll(async () => {
  await db?.drop();
});

async function openStore(replicaId: string): Promise<OwnershipStore> {
  const store = createPostgresOwnershipStore({
    databaseUrl: db.url,
    redisUrl: TEST_REDIS_URL,
    redisKeyPrefix: prefix,
    replicaId,
    peerUrl: `http://${replicaId}.peers:8443`,
    version: 'test',
    // No heartbeat lands while the requests below are routed, so every query counted is theirs.
    heartbeatIntervalMs: 60_000,
    leaseTtlMs: 120_000,
    cacheTtlMs: 60_000,
    logger: captureLogger().logger,
  });
  opened.add(store);
  await store.start();
  return store;
}

/** Counts Postgres queries (every pool) and Redis commands (every client) issued in this process. */
function countRoundTrips(): { postgres: () => number; redis: () => number } {
  let postgres = 0;
  let redis = 0;
  const query = pg.Pool.prototype.query;
  vi.spyOn(pg.Pool.prototype, 'query').mockImplementation(function (this: pg.Pool, ...args: unknown[]) {
    postgres++;
    return (query as (...a: unknown[]) => unknown).apply(this, args) as never;
  });
  const clientQuery = pg.Client.prototype.query;
  vi.spyOn(pg.Client.prototype, 'query').mockImplementation(function (this: pg.Client, ...args: unknown[]) {
    postgres++;
    return (clientQuery as (...a: unknown[]) => unknown).apply(this, args) as never;
  });
  const send = Redis.prototype.sendCommand;
  vi.spyOn(Redis.prototype, 'sendCommand').mockImplementation(function (this: Redis, ...args: unknown[]) {
    redis++;
    return (send as (...a: unknown[]) => unknown).apply(this, args) as never;
  });
  return { postgres: () => postgres, redis: () => redis };
}

describe('owner lookups on the request path', () => {
  it('requests for a sandbox whose owner is known and unchanged cost no Postgres query and no Redis command', async () => {
    const owner = await openStore('hot-owner');
    const ingress = await openStore('hot-ingress');
    const sandbox = 'hot-path-sandbox';
    // The claim's invalidation reaches the ingress replica asynchronously (pub/sub and NOTIFY): let it
    // arrive, and settle, before the cache is filled, or it would empty the cache mid-loop.
    let lastEvent = 0;
    const off = ingress.onChange((id) => {
      if (id === sandbox) lastEvent = Date.now();
    });
    await owner.claim(sandbox);
    await waitFor('the claim to be announced to the ingress replica', async () => lastEvent > 0, 5_000);
    await waitFor('no further announcement for 500 ms', async () => Date.now() - lastEvent >= 500, 5_000);
    off();
    const logger = captureLogger().logger;
    const router = new OwnerRouter(ingress, new LocalSessions(), createGatewayObjects(undefined, logger), createMetrics({ defaultMetrics: false }), logger, 5_000);
    // The first request reads Redis or Postgres and fills the cache.
    expect(await router.resolveHeld(sandbox)).toMatchObject({ kind: 'peer', replicaId: 'hot-owner', epoch: 1 });

    const count = countRoundTrips();
    for (let i = 0; i < 1_000; i++) {
      expect(router.resolveCached(sandbox)).toMatchObject({ kind: 'peer', replicaId: 'hot-owner', epoch: 1 });
      expect(await router.resolveHeld(sandbox)).toMatchObject({ kind: 'peer', replicaId: 'hot-owner', epoch: 1 });
      expect(await ingress.lookup(sandbox)).toMatchObject({ source: 'memory' });
    }
    expect({ postgres: count.postgres(), redis: count.redis() }).toEqual({ postgres: 0, redis: 0 });

    // Control: a new owner epoch is announced and the next request reads the store again.
    await owner.claim(sandbox);
    await waitFor('the invalidation to reach the ingress replica', async () => router.resolveCached(sandbox) === undefined, 5_000);
    expect(await router.resolveHeld(sandbox)).toMatchObject({ kind: 'peer', replicaId: 'hot-owner', epoch: 2 });
    expect(count.postgres() + count.redis()).toBeGreaterThan(0);
  });

  it('an unknown owner is never answered from the synchronous path', async () => {
    const ingress = await openStore('hot-ingress-2');
    const logger = captureLogger().logger;
    const router = new OwnerRouter(ingress, new LocalSessions(), createGatewayObjects(undefined, logger), createMetrics({ defaultMetrics: false }), logger, 5_000);
    expect(router.resolveCached('nobody-owns-this')).toBeUndefined();
    expect(await router.resolveHeld('nobody-owns-this')).toMatchObject({ kind: 'local', reason: 'no-owner' });
    // Still not from the cache: whether to hold a request is resolveHeld's call.
    expect(router.resolveCached('nobody-owns-this')).toBeUndefined();
  });
});
