// Issue 10 item 5: lookups for sandbox ids nobody owns are client-driven and unbounded; they must
// neither starve this replica's heartbeat (its lease is its life) nor each cost a Postgres query.
import { randomBytes } from 'node:crypto';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { createPostgresOwnershipStore } from '../../src/ownership/postgres-store.ts';
import type { PostgresOwnershipStoreOptions } from '../../src/ownership/postgres-store.ts';
import type { OwnershipStore } from '../../src/ownership/types.ts';
import { createTestDatabase, TEST_REDIS_URL, testRedisPrefix } from '../helpers/services.ts';
import type { TestDatabase } from '../helpers/services.ts';
import { captureLogger, sleep, waitFor } from './support.ts';

let db: TestDatabase;
let probe: pg.Client;
const prefix = testRedisPrefix('lookup-flood');
const opened = new Set<OwnershipStore>();

beforeAll(async () => {
  db = await createTestDatabase('lookup_flood');
  probe = new pg.Client({ connectionString: db.url });
  await probe.connect();
});

afterEach(async () => {
  vi.restoreAllMocks();
  await Promise.all([...opened].map((s) => s.close()));
  opened.clear();
});

afterAll(async () => {
  await probe?.end();
  await db?.drop();
});

async function openStore(replicaId: string, over: Partial<PostgresOwnershipStoreOptions> = {}): Promise<OwnershipStore> {
  const store = createPostgresOwnershipStore({
    databaseUrl: db.url,
    replicaId,
    peerUrl: `https://${replicaId}.peers:8443`,
    version: 'test',
    heartbeatIntervalMs: 500,
    leaseTtlMs: 5_000,
    cacheTtlMs: 5_000,
    logger: captureLogger().logger,
    ...over,
  });
  opened.add(store);
  await store.start();
  return store;
}

/** How long ago the replica's heartbeat landed, on the database clock. */
async function heartbeatAgeMs(replicaId: string): Promise<number> {
  const res = await probe.query<{ age: number }>(
    `SELECT (extract(epoch FROM now() - heartbeat_at) * 1000)::float8 AS age FROM ohs_replicas WHERE replica_id = $1`,
    [replicaId],
  );
  return res.rows[0]?.age ?? Number.POSITIVE_INFINITY;
}

/** Statements of the lookup path (LOOKUP_OWNER) sent to Postgres through any pg.Pool. */
function countLookupQueries(): { count: () => number } {
  let n = 0;
  const original = pg.Pool.prototype.query;
  vi.spyOn(pg.Pool.prototype, 'query').mockImplementation(function (this: pg.Pool, ...args: unknown[]) {
    const text = typeof args[0] === 'string' ? args[0] : '';
    if (text.includes('FROM ohs_owners o LEFT JOIN ohs_replicas r')) n++;
    return (original as (...a: unknown[]) => unknown).apply(this, args);
  } as typeof original);
  return { count: () => n };
}

const randomId = (): string => `unknown-${randomBytes(8).toString('hex')}`;

describe('owner lookups under a flood of unknown sandbox ids', () => {
  it('heartbeats keep landing within their interval while thousands of lookups for random ids queue up', async () => {
    const log = captureLogger();
    const store = await openStore('flood-hb', { logger: log.logger });
    const intervalMs = 500;
    // Clients keep this many lookups for ids that exist nowhere outstanding at all times.
    const outstanding = 10_000;
    const floodMs = 6_000;
    let stop = false;
    let done = 0;
    let failed = 0;
    const worker = async (): Promise<void> => {
      while (!stop) {
        try {
          await store.lookup(randomId());
          done++;
        } catch {
          // Refused at once (the lookup queue is bounded): try again soon, without turning 10,000
          // clients in this very process into a busy loop that delays every timer here, the
          // heartbeat's included.
          failed++;
          await sleep(100);
        }
      }
    };
    // The store runs in this process: a machine busy elsewhere delays its heartbeat timer as much as
    // any other timer here. That lag is measured and set apart from what the lookups cost.
    const lag = monitorEventLoopDelay({ resolution: 10 });
    lag.enable();
    const workers = Array.from({ length: outstanding }, () => worker());
    let maxAgeMs = 0;
    // A Postgres slowed by everything else on the machine slows the heartbeat's UPDATE as much as
    // this probe's own query on its own connection (whose round trip also carries this process's
    // event-loop lag): the larger of the two is set apart. Lookups queued in the store's pool, which
    // is what starved heartbeats, never delay the probe.
    let maxProbeMs = 0;
    const started = Date.now();
    while (Date.now() - started < floodMs) {
      const asked = performance.now();
      maxAgeMs = Math.max(maxAgeMs, await heartbeatAgeMs('flood-hb'));
      maxProbeMs = Math.max(maxProbeMs, performance.now() - asked);
      await sleep(100);
    }
    stop = true;
    lag.disable();
    const maxLagMs = lag.max / 1e6;
    await Promise.all(workers);
    const beatFailures = log.messages('warn').filter((m) => m.startsWith('heartbeat failed')).length;
    console.log(
      `lookup flood: ${done} lookups (${failed} failed) in ${floodMs} ms, heartbeat age at most ${Math.round(maxAgeMs)} ms (interval ${intervalMs} ms; event-loop lag at most ${Math.round(maxLagMs)} ms, probe query at most ${Math.round(maxProbeMs)} ms), heartbeat failures logged: ${beatFailures}`,
    );
    expect(done).toBeGreaterThan(1_000);
    // One interval plus scheduling slack in this busy process (before the split: 1.7-2.6 s), far from
    // the 5 s lease; a machine busy elsewhere adds its event-loop lag and a slower Postgres on top.
    expect(maxAgeMs - Math.max(maxLagMs, maxProbeMs)).toBeLessThan(intervalMs * 3);
    expect(beatFailures).toBe(0);
    expect(store.lastHeartbeatAtMs?.()).toBeGreaterThan(Date.now() - 2 * intervalMs);
  }, 30_000);

  it('repeated lookups of one unknown id reach Postgres once until a claim for it arrives', async () => {
    const queries = countLookupQueries();
    const a = await openStore('neg-a', { negativeCacheTtlMs: 60_000 });
    const b = await openStore('neg-b');
    const id = randomId();
    const before = queries.count();
    // A client retrying a sandbox that does not exist: 200 lookups over about 2 s.
    for (let i = 0; i < 200; i++) {
      expect((await a.lookup(id)).owner).toBeNull();
      if (i % 20 === 0) await sleep(200);
    }
    // And a burst of concurrent ones for another unknown id.
    const other = randomId();
    await Promise.all(Array.from({ length: 100 }, () => a.lookup(other)));
    const spent = queries.count() - before;
    console.log(`negative cache: 300 lookups of 2 unknown ids cost ${spent} postgres lookups`);
    expect(spent).toBeLessThanOrEqual(2);

    // Another replica claims the id: the entry is invalidated (NOTIFY), not merely expired.
    await b.claim(id);
    const seen = await waitFor('the claim to be seen through the negative cache', async () => (await a.lookup(id)).owner ?? undefined, 2_000);
    expect(seen).toMatchObject({ replicaId: 'neg-b', epoch: 1 });
  });

  it('a flood of unknown ids does not push known owners out of the in-process cache', async () => {
    const a = await openStore('evict-a', { cacheTtlMs: 60_000, leaseTtlMs: 60_000 });
    const known = randomId();
    await a.claim(known);
    // The claim's own NOTIFY comes back a moment later; a read racing it is (rightly) not cached.
    await sleep(200);
    expect((await a.lookup(known)).source).toBe('postgres');
    expect((await a.lookup(known)).source).toBe('memory');
    // More unknown ids than the in-process owner cache holds (10,000).
    for (let i = 0; i < 11; i++) await Promise.all(Array.from({ length: 1_000 }, () => a.lookup(randomId())));
    expect((await a.lookup(known)).source).toBe('memory');
  }, 30_000);
});

describe('the bounded lookup queue', () => {
  it('a flood beyond the queue bound is refused at once with OHS_ERR_OVERLOADED, counted, and lookups work again after it', async () => {
    let refusedCount = 0;
    const log = captureLogger();
    const store = await openStore('queue-a', { lookupPoolSize: 2, lookupQueueMax: 50, logger: log.logger, onLookupRefused: () => refusedCount++ });
    const known = randomId();
    await store.claim(known);
    // 2,000 lookups for ids nobody owns, all at once: 2 run, 50 wait, the rest are refused.
    const started = performance.now();
    const outcomes = await Promise.all(
      Array.from({ length: 2_000 }, () =>
        store.lookup(randomId()).then(
          () => ({ ok: true as const, atMs: performance.now() - started }),
          (err: unknown) => ({ ok: false as const, code: (err as { code?: string }).code, atMs: performance.now() - started }),
        ),
      ),
    );
    const refused = outcomes.filter((o) => !o.ok);
    const served = outcomes.filter((o) => o.ok);
    console.log(`lookup queue: ${served.length} served, ${refused.length} refused; last refusal after ${Math.round(Math.max(...refused.map((o) => o.atMs)))} ms, last served after ${Math.round(Math.max(...served.map((o) => o.atMs)))} ms`);
    expect(served.length).toBe(52);
    expect(refused.length).toBe(2_000 - 52);
    expect(new Set(refused.map((o) => o.code))).toEqual(new Set(['OHS_ERR_OVERLOADED']));
    // Refused synchronously with the call, not after waiting for anything.
    expect(Math.max(...refused.map((o) => o.atMs))).toBeLessThan(Math.min(...served.map((o) => o.atMs)) + 5);
    expect(refusedCount).toBe(refused.length);
    // One warning per thousand refusals, not one per refusal.
    expect(log.messages('warn').filter((m) => m.startsWith('owner lookup queue full')).length).toBe(2);
    // The queue drained: lookups are served again, the claimed sandbox included.
    expect((await store.lookup(known, { fresh: true })).owner).toMatchObject({ replicaId: 'queue-a' });
    expect((await store.lookup(randomId())).owner).toBeNull();
    expect(refusedCount).toBe(refused.length);
  });

  it('with a queue of 0, lookups beyond the running ones are refused, and the heartbeat is unaffected', async () => {
    let refusedCount = 0;
    const store = await openStore('queue-b', { lookupPoolSize: 1, lookupQueueMax: 0, onLookupRefused: () => refusedCount++ });
    const results = await Promise.allSettled(Array.from({ length: 10 }, () => store.lookup(randomId())));
    expect(results.filter((r) => r.status === 'fulfilled').length).toBe(1);
    expect(refusedCount).toBe(9);
    await sleep(700);
    expect(await heartbeatAgeMs('queue-b')).toBeLessThan(1_500);
  });
});

describe('owner records read from Redis', () => {
  it('are ignored when their replica is registered but its lease has expired', async () => {
    const redisPrefix = `${prefix}live:`;
    const a = await openStore('live-a', { redisUrl: TEST_REDIS_URL, redisKeyPrefix: redisPrefix, leaseTtlMs: 2_000, heartbeatIntervalMs: 200 });
    const b = await openStore('live-b', { redisUrl: TEST_REDIS_URL, redisKeyPrefix: redisPrefix, leaseTtlMs: 2_000, heartbeatIntervalMs: 200 });
    const id = randomId();
    await a.claim(id);
    expect((await b.lookup(id)).owner).toMatchObject({ replicaId: 'live-a' });
    // live-a dies (its row stays, its lease runs out); someone who can write Redis re-publishes
    // its old owner record with its real, registered peer address and a long TTL.
    await a.close();
    opened.delete(a);
    await probe.query(`UPDATE ohs_replicas SET heartbeat_at = now() - interval '1 hour' WHERE replica_id = 'live-a'`);
    const { Redis } = await import('ioredis');
    const r = new Redis(TEST_REDIS_URL);
    try {
      const record = { sandboxId: id, replicaId: 'live-a', peerUrl: 'https://live-a.peers:8443', epoch: 1, claimedAtMs: Date.now() };
      await r.set(`${redisPrefix}owner:${id}`, JSON.stringify(record), 'PX', 60_000);
      await r.publish(`${redisPrefix}owners`, id);
      await sleep(200);
      const seen = await b.lookup(id);
      expect(seen.owner).toBeNull();
      expect(await r.get(`${redisPrefix}owner:${id}`)).toBeNull();
    } finally {
      r.disconnect();
    }
  });
});
