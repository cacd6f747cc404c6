import { Redis } from 'ioredis';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createPostgresOwnershipStore } from '../../src/ownership/postgres-store.ts';
import type { PostgresOwnershipStoreOptions } from '../../src/ownership/postgres-store.ts';
import type { OwnershipStore } from '../../src/ownership/types.ts';
import { createTestDatabase, TEST_REDIS_URL, testRedisPrefix } from '../helpers/services.ts';
import type { TestDatabase } from '../helpers/services.ts';
import { captureLogger, nextChange, sleep, waitFor } from './support.ts';

let db: TestDatabase;
const prefix = testRedisPrefix('ownership');
const opened = new Set<OwnershipStore>();

beforeAll(async () => {
  db = await createTestDatabase('ownership');
});

afterEach(async () => {
  await Promise.all([...opened].map((s) => s.close()));
  opened.clear();
});

afterAll(async () => {
  await db?.drop();
  const r = new Redis(TEST_REDIS_URL, { lazyConnect: true });
  await r.connect();
  try {
    let cursor = '0';
    do {
      const [next, keys] = await r.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
      cursor = next;
      if (keys.length > 0) await r.del(...keys);
    } while (cursor !== '0');
  } finally {
    r.disconnect();
  }
});

let seq = 0;
const sandbox = (): string => `sbx-${++seq}-${Math.random().toString(36).slice(2, 8)}`;

async function openStore(replicaId: string, over: Partial<PostgresOwnershipStoreOptions> = {}): Promise<OwnershipStore> {
  const store = createPostgresOwnershipStore({
    databaseUrl: db.url,
    redisUrl: TEST_REDIS_URL,
    redisKeyPrefix: prefix,
    replicaId,
    peerUrl: `https://${replicaId}.peers:8443`,
    version: 'test',
    heartbeatIntervalMs: 100,
    leaseTtlMs: 30_000,
    cacheTtlMs: 60_000,
    logger: captureLogger().logger,
    ...over,
  });
  opened.add(store);
  await store.start();
  return store;
}

/** Live replica ids of one test (the database is shared by the whole file). */
async function liveIds(store: OwnershipStore, idPrefix: string): Promise<string[]> {
  return (await store.liveReplicas()).map((r) => r.replicaId).filter((id) => id.startsWith(idPrefix));
}

async function closeStore(store: OwnershipStore): Promise<void> {
  opened.delete(store);
  await store.close();
}

describe('postgres ownership store', () => {
  it('an owner record poisoned in Redis (a peer address the replica never registered) is ignored for Postgres', async () => {
    const a = await openStore('poison-a');
    const b = await openStore('poison-b');
    const s = sandbox();
    await a.claim(s);
    // Whoever can write Redis rewrites the cached owner to point at an address of their own.
    const r = new Redis(TEST_REDIS_URL);
    try {
      await r.set(`${prefix}owner:${s}`, JSON.stringify({ sandboxId: s, replicaId: 'poison-a', peerUrl: 'http://attacker.example:8443', epoch: 1, claimedAtMs: Date.now() }), 'PX', 60_000);
      const seen = await b.lookup(s);
      expect(seen.owner).toMatchObject({ replicaId: 'poison-a', peerUrl: 'https://poison-a.peers:8443' });
      expect(seen.source).toBe('postgres');
      // The poisoned entry is gone, so the next lookup is served from a trustworthy cache.
      expect((await r.get(`${prefix}owner:${s}`)) ?? '').not.toContain('attacker');
    } finally {
      r.disconnect();
    }
  });

  it('a claim takes the sandbox at the next epoch and reports who had it', async () => {
    const a = await openStore('claim-a');
    const b = await openStore('claim-b');
    const s = sandbox();

    const first = await a.claim(s);
    expect(first.previous).toBeNull();
    expect(first.owner).toMatchObject({ sandboxId: s, replicaId: 'claim-a', peerUrl: 'https://claim-a.peers:8443', epoch: 1 });

    const again = await a.claim(s);
    expect(again.owner.epoch).toBe(2);
    expect(again.previous).toMatchObject({ replicaId: 'claim-a', epoch: 1 });

    const taken = await b.claim(s);
    expect(taken.owner).toMatchObject({ replicaId: 'claim-b', epoch: 3 });
    expect(taken.previous).toMatchObject({ replicaId: 'claim-a', peerUrl: 'https://claim-a.peers:8443', epoch: 2 });
    expect(await a.ownerEpoch(s)).toBe(3);
    expect(await a.ownerEpoch(sandbox())).toBeNull();
  });

  it('concurrent claims from two replicas leave one owner and a gapless chain of epochs', async () => {
    const a = await openStore('race-a');
    const b = await openStore('race-b');
    const s = sandbox();
    const rounds = 12;
    const claims = await Promise.all(Array.from({ length: rounds * 2 }, (_, i) => (i % 2 === 0 ? a : b).claim(s)));

    const byEpoch = new Map(claims.map((c) => [c.owner.epoch, c]));
    expect([...byEpoch.keys()].sort((x, y) => x - y)).toEqual(Array.from({ length: rounds * 2 }, (_, i) => i + 1));
    // Every claim saw exactly the claim before it as "previous": no lost or duplicated handoffs.
    for (const c of claims) {
      if (c.owner.epoch === 1) {
        expect(c.previous).toBeNull();
      } else {
        const before = byEpoch.get(c.owner.epoch - 1);
        expect(c.previous).toMatchObject({ replicaId: before?.owner.replicaId, epoch: c.owner.epoch - 1 });
      }
    }
    const last = byEpoch.get(rounds * 2);
    for (const store of [a, b]) {
      const { owner } = await store.lookup(s, { fresh: true });
      expect(owner).toMatchObject({ replicaId: last?.owner.replicaId, epoch: rounds * 2 });
    }
  });

  it('a burst of claims is written in a few transactions; claims of one sandbox keep their order', async () => {
    const batches: number[] = [];
    const a = await openStore('burst-a', { onClaimBatch: (n) => batches.push(n) });
    const ids = Array.from({ length: 300 }, () => sandbox());
    const first = await Promise.all(ids.map((s) => a.claim(s)));
    expect(first.map((c) => c.owner.sandboxId)).toEqual(ids);
    expect(first.every((c) => c.owner.replicaId === 'burst-a' && c.owner.epoch === 1 && c.previous === null)).toBe(true);
    expect(batches.reduce((x, y) => x + y, 0)).toBe(300);
    // One claim starts at once, the next joins a second transaction, the rest wait for one of them.
    expect(batches.length).toBeLessThanOrEqual(4);
    // The same sandbox claimed three times in a row, in one burst with others: epochs in call order.
    const s = ids[0] as string;
    const again = await Promise.all([a.claim(s), a.claim(ids[1] as string), a.claim(s), a.claim(s)]);
    expect([again[0], again[2], again[3]].map((c) => c?.owner.epoch)).toEqual([2, 3, 4]);
    expect(again[2]?.previous).toMatchObject({ replicaId: 'burst-a', epoch: 2 });
    expect((await a.lookup(s, { fresh: true })).owner).toMatchObject({ replicaId: 'burst-a', epoch: 4 });
  });

  it('two replicas claiming the same many sandboxes at once: no deadlock, one chain of epochs per sandbox', async () => {
    const a = await openStore('overlap-a');
    const b = await openStore('overlap-b');
    const ids = Array.from({ length: 200 }, () => sandbox());
    // Opposite orders, so that row locks taken in call order would cross.
    const [fromA, fromB] = await Promise.all([Promise.all(ids.map((s) => a.claim(s))), Promise.all([...ids].reverse().map((s) => b.claim(s)))]);
    const byId = new Map(fromB.map((c) => [c.owner.sandboxId, c]));
    for (const ca of fromA) {
      const cb = byId.get(ca.owner.sandboxId);
      const [earlier, later] = ca.owner.epoch === 1 ? [ca, cb] : [cb, ca];
      expect(earlier?.owner.epoch).toBe(1);
      expect(earlier?.previous).toBeNull();
      expect(later?.owner.epoch).toBe(2);
      expect(later?.previous).toMatchObject({ replicaId: earlier?.owner.replicaId, epoch: 1 });
    }
  });

  it('a burst of releases, each conditional on its epoch, while another replica claims the same sandboxes', async () => {
    const a = await openStore('rel-burst-a');
    const b = await openStore('rel-burst-b');
    const ids = Array.from({ length: 200 }, () => sandbox());
    const held = await Promise.all(ids.map((s) => a.claim(s)));
    // 50 released with an epoch that is not theirs: those rows stay.
    const stale = await Promise.all(ids.slice(0, 50).map((s, i) => a.release(s, (held[i]?.owner.epoch ?? 0) + 7)));
    expect(stale.every((deleted) => !deleted)).toBe(true);
    // All 200 released by A while B claims the last 100 (in reverse order): no deadlock, and a
    // release never deletes B's newer row.
    const [released, taken] = await Promise.all([
      Promise.all(held.map((c) => a.release(c.owner.sandboxId, c.owner.epoch))),
      Promise.all(ids.slice(100).reverse().map((s) => b.claim(s))),
    ]);
    expect(released.slice(0, 100).every((deleted) => deleted)).toBe(true);
    for (const c of taken) {
      const i = ids.indexOf(c.owner.sandboxId);
      // B's claim came after A's release (no previous owner, epoch 1 again) or before it (A's
      // release then found B's row and left it).
      if (c.previous === null) expect(released[i]).toBe(true);
      else expect([released[i], c.previous.replicaId, c.owner.epoch]).toEqual([false, 'rel-burst-a', 2]);
    }
    for (const s of ids.slice(0, 100)) expect((await a.lookup(s, { fresh: true })).owner).toBeNull();
    for (const s of ids.slice(100)) expect((await a.lookup(s, { fresh: true })).owner).toMatchObject({ replicaId: 'rel-burst-b' });
  });

  it("a claim renews the replica's lease once it has run half its TTL, and leaves it alone before", async () => {
    const client = new pg.Client({ connectionString: db.url });
    await client.connect();
    try {
      const beatAge = async (): Promise<number> =>
        Number((await client.query<{ ms: number }>("SELECT (extract(epoch FROM now() - heartbeat_at) * 1000)::float8 AS ms FROM ohs_replicas WHERE replica_id = 'lease-a'")).rows[0]?.ms);
      // No heartbeat of its own after the start: only claims can renew the lease.
      const a = await openStore('lease-a', { heartbeatIntervalMs: 3_600_000, leaseTtlMs: 1_000 });
      await sleep(200);
      await a.claim(sandbox());
      expect(await beatAge()).toBeGreaterThanOrEqual(150); // a quarter of the TTL in: not renewed
      await sleep(450);
      await a.claim(sandbox());
      expect(await beatAge()).toBeLessThan(150); // past half the TTL: renewed with the claim
      const s = sandbox();
      await a.claim(s);
      expect((await a.lookup(s, { fresh: true })).owner).toMatchObject({ replicaId: 'lease-a' });
    } finally {
      await client.end();
    }
  });

  it('a release with a stale epoch or from another replica leaves the current owner in place', async () => {
    const a = await openStore('release-a');
    const b = await openStore('release-b');
    const s = sandbox();
    await a.claim(s);
    const current = await a.claim(s);

    expect(await a.release(s, 1)).toBe(false);
    expect(await b.release(s, current.owner.epoch)).toBe(false);
    expect((await b.lookup(s, { fresh: true })).owner).toMatchObject({ replicaId: 'release-a', epoch: 2 });

    expect(await a.release(s, current.owner.epoch)).toBe(true);
    expect(await a.release(s, current.owner.epoch)).toBe(false);
    expect(await b.lookup(s, { fresh: true })).toEqual({ owner: null, source: 'miss' });
    expect(await b.ownerEpoch(s)).toBeNull();
  });

  it('lookup answers from postgres, then from the caches', async () => {
    const a = await openStore('layers-a');
    const b = await openStore('layers-b');
    const s = sandbox();
    // Every change reaches every replica twice (Redis pub/sub and NOTIFY); a lookup overlapping
    // one of those invalidations caches nothing, so let them all land first.
    const heard = new Map<string, number>();
    for (const st of [a, b]) st.onChange((id) => id === s && heard.set(st.replicaId, (heard.get(st.replicaId) ?? 0) + 1));
    await a.claim(s);

    expect(await b.lookup(s)).toMatchObject({ source: 'postgres', owner: { replicaId: 'layers-a', epoch: 1 } });
    await waitFor('both invalidations to reach both replicas', () => heard.get('layers-a') === 2 && heard.get('layers-b') === 2);
    const raw = new Redis(TEST_REDIS_URL, { lazyConnect: true });
    await raw.connect();
    try {
      await waitFor('B to cache the owner in redis', async () => {
        await b.lookup(s, { fresh: true });
        return (await raw.get(`${prefix}owner:${s}`)) !== null;
      });
    } finally {
      raw.disconnect();
    }
    expect(await b.lookup(s)).toMatchObject({ source: 'memory', owner: { replicaId: 'layers-a', epoch: 1 } });
    // A third replica finds the entry B wrote to Redis.
    const c = await openStore('layers-c');
    expect(await c.lookup(s)).toMatchObject({ source: 'redis', owner: { replicaId: 'layers-a', epoch: 1 } });
    expect((await c.lookup(s, { fresh: true })).source).toBe('postgres');
    expect(await c.lookup(sandbox())).toEqual({ owner: null, source: 'miss' });
  });

  it.each([
    ['redis and postgres', true],
    ['postgres notify only', false],
  ])('a re-claim on one replica reaches the other replica’s cache within a second (%s)', async (_label, withRedis) => {
    const over = withRedis ? {} : { redisUrl: undefined };
    const a = await openStore(`inval-a-${String(withRedis)}`, over);
    const b = await openStore(`inval-b-${String(withRedis)}`, over);
    const s = sandbox();
    // Let the first claim's own invalidations land (one per channel), so that B's cache is settled.
    const perChannel = withRedis ? 2 : 1;
    let heardFirst = 0;
    const off = b.onChange((id) => id === s && heardFirst++);
    await a.claim(s);
    await waitFor('B to hear the first claim', () => heardFirst >= perChannel);
    off();
    await waitFor('B to cache the owner', async () => (await b.lookup(s)).source === 'memory');
    expect((await b.lookup(s)).owner).toMatchObject({ epoch: 1 });

    // cacheTtlMs is a minute: only an invalidation can make B see the new epoch.
    const heardByB = nextChange(b, s, 1000);
    const heardBySelf = nextChange(a, s, 1000);
    await a.claim(s);
    await Promise.all([heardByB, heardBySelf]);
    expect((await b.lookup(s)).owner).toMatchObject({ replicaId: a.replicaId, epoch: 2 });

    await waitFor('A to cache the owner', async () => (await a.lookup(s)).source === 'memory');
    const heardByA = nextChange(a, s, 1000);
    await b.claim(s);
    await heardByA;
    expect((await a.lookup(s)).owner).toMatchObject({ replicaId: b.replicaId, epoch: 3 });

    const releasedHeard = nextChange(a, s, 1000);
    expect(await b.release(s, 3)).toBe(true);
    await releasedHeard;
    expect(await a.lookup(s)).toEqual({ owner: null, source: 'miss' });
  });

  it('an owner whose replica stopped heartbeating is reported absent once its lease expires', async () => {
    const leaseTtlMs = 400;
    const a = await openStore('lease-a', { heartbeatIntervalMs: 50, leaseTtlMs });
    const b = await openStore('lease-b', { heartbeatIntervalMs: 50, leaseTtlMs });
    const s = sandbox();
    await a.claim(s);
    expect((await b.lookup(s)).owner).toMatchObject({ replicaId: 'lease-a' });
    expect(await liveIds(b, 'lease-')).toEqual(['lease-a', 'lease-b']);

    const stoppedAt = Date.now();
    await closeStore(a); // heartbeat stops; the owner row stays
    await waitFor('owner to be reported absent', async () => (await b.lookup(s)).owner === null, leaseTtlMs + 2000);
    expect(Date.now() - stoppedAt).toBeGreaterThanOrEqual(leaseTtlMs - 150);
    expect(await b.lookup(s, { fresh: true })).toEqual({ owner: null, source: 'miss' });
    expect(await b.ownerEpoch(s)).toBe(1);
    expect(await liveIds(b, 'lease-')).toEqual(['lease-b']);

    // B takes over; the handoff still reports the dead replica's claim as previous.
    const takeover = await b.claim(s);
    expect(takeover.previous).toMatchObject({ replicaId: 'lease-a', epoch: 1 });
    expect(takeover.owner.epoch).toBe(2);
  });

  it('a replica restarting with the same id drops the ownerships of its previous run', async () => {
    const a = await openStore('restart-a');
    const b = await openStore('restart-b');
    const s1 = sandbox();
    const s2 = sandbox();
    await a.claim(s1);
    await a.claim(s2);
    expect((await b.lookup(s1)).owner).toMatchObject({ replicaId: 'restart-a' });

    await closeStore(a);
    const heard = nextChange(b, s1, 1000);
    const a2 = await openStore('restart-a');
    await heard;
    expect(await b.lookup(s1)).toEqual({ owner: null, source: 'miss' });
    expect(await a2.lookup(s2, { fresh: true })).toEqual({ owner: null, source: 'miss' });
    expect(await a2.ownerEpoch(s1)).toBeNull();
    expect((await a2.claim(s1)).owner.epoch).toBe(1);
  });

  it('replicas report state and session counts through the heartbeat', async () => {
    const a = await openStore('state-a');
    const b = await openStore('state-b');
    a.setSessionCount(7);
    await b.setState('draining');
    await waitFor('session count to be reported', async () => {
      const replicas = await b.liveReplicas();
      return replicas.find((r) => r.replicaId === 'state-a')?.sessions === 7;
    });
    const replicas = (await a.liveReplicas()).filter((r) => r.replicaId.startsWith('state-'));
    expect(replicas.map((r) => [r.replicaId, r.state, r.live, r.version])).toEqual([
      ['state-a', 'active', true, 'test'],
      ['state-b', 'draining', true, 'test'],
    ]);
    expect(replicas[0]?.peerUrl).toBe('https://state-a.peers:8443');
    expect(Math.abs((replicas[0]?.startedAtMs ?? 0) - Date.now())).toBeLessThan(60_000);
    // A heartbeat must not undo the draining state.
    await sleep(250);
    expect((await a.liveReplicas()).find((r) => r.replicaId === 'state-b')?.state).toBe('draining');
  });

  it('health reports both backends; a store without redis reports redis as not configured', async () => {
    const a = await openStore('health-a');
    const b = await openStore('health-b', { redisUrl: undefined });
    expect(await a.health()).toEqual({ postgres: true, redis: true });
    expect(await b.health()).toEqual({ postgres: true, redis: null });
  });

  it('concurrent first starts create the tables once without failing', async () => {
    const fresh = await createTestDatabase('ownership_boot');
    try {
      const stores = ['boot-a', 'boot-b', 'boot-c'].map((id) =>
        createPostgresOwnershipStore({
          databaseUrl: fresh.url,
          replicaId: id,
          peerUrl: `https://${id}:8443`,
          version: 'test',
          heartbeatIntervalMs: 100,
          leaseTtlMs: 30_000,
          cacheTtlMs: 1000,
          logger: captureLogger().logger,
        }),
      );
      stores.forEach((s) => opened.add(s));
      await Promise.all(stores.map((s) => s.start()));
      expect((await stores[0]?.liveReplicas())?.length).toBe(3);
    } finally {
      await Promise.all([...opened].map((s) => s.close()));
      opened.clear();
      await fresh.drop();
    }
  });

  it('close ends every postgres and redis connection the store opened', async () => {
    const a = await openStore('close-a');
    await a.claim(sandbox());
    await a.lookup(sandbox());
    await closeStore(a);

    const admin = new pg.Client({ connectionString: db.url });
    await admin.connect();
    try {
      await waitFor('postgres connections to close', async () => {
        const res = await admin.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE 'openshell-ha-sidecar%'`,
        );
        return res.rows[0]?.n === 0;
      }, 3000);
    } finally {
      await admin.end();
    }
    const r = new Redis(TEST_REDIS_URL, { lazyConnect: true });
    await r.connect();
    try {
      await waitFor('redis connections to close', async () => {
        const list = String(await r.call('CLIENT', 'LIST'));
        return !list.includes('name=ohs-owners-close-a');
      }, 3000);
    } finally {
      r.disconnect();
    }
    await expect(a.lookup('x')).rejects.toMatchObject({ code: 'OHS_ERR_STORE_UNAVAILABLE', message: expect.stringMatching(/not running/) });
  });
});
