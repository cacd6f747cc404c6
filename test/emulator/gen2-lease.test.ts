// The 2026-08 gateway emulator's reconciler lease (compute/lease.rs@v0.0.111; reference §3.3, §10):
// the row operations one by one against Postgres, then three gateway processes with scaled timings:
// one holder at a time, renewal, release on SIGTERM, steal after the TTL when the holder is killed.
import pg from 'pg';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { Cluster } from '../../emulator/cluster.ts';
import {
  LEASE_ACQUIRE_INTERVAL_MS,
  LEASE_RENEWAL_INTERVAL_MS,
  LEASE_TTL_MS,
  LeaseError,
  RECONCILE_INTERVAL_MS,
  ReconcilerLease,
  leaseIsExpired,
  replicaIdFromEnv,
} from '../../emulator/gateway/gen2/lease.ts';
import { Gen2Store } from '../../emulator/gateway/gen2/store.ts';
import { readLeaseRow, selfReportedHolders } from '../helpers/lease.ts';
import { createTestDatabase, type TestDatabase } from '../helpers/services.ts';
import { waitUntil } from '../helpers/wait.ts';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function leaseError(p: Promise<unknown>): Promise<string | null> {
  try {
    await p;
    return null;
  } catch (err) {
    if (err instanceof LeaseError) return err.kind;
    throw err;
  }
}

let db: TestDatabase;
let store: Gen2Store;
let pool: pg.Pool;

beforeAll(async () => {
  db = await createTestDatabase('gen2_lease');
  store = new Gen2Store(db.url);
  await store.migrate();
  pool = store.pool;
});

afterAll(async () => {
  await store?.close();
  await db?.drop();
});

describe('reconciler lease row operations', () => {
  beforeEach(async () => {
    await pool.query(`DELETE FROM objects WHERE object_type = 'reconciler_lease'`);
  });

  it("upstream's timings and holder id", () => {
    expect([LEASE_TTL_MS, LEASE_RENEWAL_INTERVAL_MS, LEASE_ACQUIRE_INTERVAL_MS, RECONCILE_INTERVAL_MS]).toEqual([30_000, 10_000, 5_000, 60_000]);
    expect(replicaIdFromEnv({ OPENSHELL_REPLICA_ID: 'r1', HOSTNAME: 'pod-0' })).toBe('r1');
    expect(replicaIdFromEnv({ HOSTNAME: 'pod-0' })).toBe('pod-0');
    expect(replicaIdFromEnv({})).toMatch(/^[0-9a-f-]{36}$/);
    // Age is clamped at zero: a timestamp from the future is fresh (lease.rs:261-264).
    expect(leaseIsExpired(1_000_000, 1_000_000 + 86_400_000, 1_000)).toBe(false);
    expect(leaseIsExpired(1_000_000, 1_000_000, 0)).toBe(true);
    expect(leaseIsExpired(1_000_000, 999_000, 1_000)).toBe(true);
  });

  it('acquire inserts the singleton row with a JSON payload; a second acquire finds it held', async () => {
    const a = new ReconcilerLease(pool, 'replica-a');
    const guard = await a.tryAcquire();
    expect(guard.resourceVersion).toBe(1);
    const row = await readLeaseRow(pool);
    expect(row).toMatchObject({ holder: 'replica-a', acquiredAtMs: guard.acquiredAtMs, resourceVersion: 1, name: 'reconciler-lease', workspace: '' });
    expect(JSON.parse(row!.payload)).toEqual({ holder: 'replica-a', acquired_at_ms: guard.acquiredAtMs });
    expect(await leaseError(new ReconcilerLease(pool, 'replica-b').tryAcquire())).toBe('already_held');
    expect(await leaseError(new ReconcilerLease(pool, 'replica-b').acquireOrSteal())).toBe('already_held');
  });

  it('exactly one of five concurrent acquisitions wins', async () => {
    const results = await Promise.allSettled(Array.from({ length: 5 }, (_, i) => new ReconcilerLease(pool, `replica-${i}`).tryAcquire()));
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
  });

  it('renew rewrites the same payload by CAS, bumping resource_version and updated_at_ms', async () => {
    const a = new ReconcilerLease(pool, 'replica-a');
    const guard = await a.tryAcquire();
    const before = await readLeaseRow(pool);
    await sleep(20);
    for (let i = 0; i < 3; i++) await a.renew(guard);
    const after = await readLeaseRow(pool);
    expect(guard.resourceVersion).toBe(4);
    expect(after).toMatchObject({ holder: 'replica-a', acquiredAtMs: before!.acquiredAtMs, resourceVersion: 4 });
    expect(after!.updatedAtMs).toBeGreaterThan(before!.updatedAtMs);
  });

  it('a fresh lease cannot be stolen; an expired one can, by exactly one replica, and the old holder then loses', async () => {
    const ttlMs = 300;
    const a = new ReconcilerLease(pool, 'replica-a', ttlMs);
    const guardA = await a.tryAcquire();
    expect(await leaseError(new ReconcilerLease(pool, 'replica-b', ttlMs).trySteal())).toBe('already_held');
    await sleep(ttlMs + 50);
    const stealers = await Promise.allSettled(Array.from({ length: 5 }, (_, i) => new ReconcilerLease(pool, `standby-${i}`, ttlMs).acquireOrSteal()));
    expect(stealers.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
    const row = await readLeaseRow(pool);
    expect(row?.holder).toMatch(/^standby-/);
    expect(row?.resourceVersion).toBe(2);
    // The old holder finds out on its next renewal; its release leaves the new holder's row alone.
    expect(await leaseError(a.renew(guardA))).toBe('conflict');
    expect(await leaseError(a.release(guardA))).toBe('conflict');
    expect((await readLeaseRow(pool))?.holder).toBe(row?.holder);
  });

  it('release deletes the row (conditional on resource_version), so another replica acquires at once', async () => {
    const a = new ReconcilerLease(pool, 'replica-a');
    const guard = await a.tryAcquire();
    await a.renew(guard);
    expect(await a.release(guard)).toBe(true);
    expect(await readLeaseRow(pool)).toBeNull();
    expect(await a.release(guard)).toBe(false);
    const b = new ReconcilerLease(pool, 'replica-b');
    await b.tryAcquire();
    expect((await readLeaseRow(pool))?.holder).toBe('replica-b');
    // A renewal after the row was released and re-created is a conflict too.
    expect(await leaseError(a.renew(guard))).toBe('conflict');
  });
});

describe('three gateway processes with scaled lease timings', () => {
  const TTL_S = 4;
  const RENEW_S = 0.5;
  const ACQUIRE_S = 0.25;
  let cluster: Cluster | undefined;
  let clusterDb: TestDatabase | undefined;
  let clusterPool: pg.Pool | undefined;

  afterAll(async () => {
    await cluster?.close();
    await clusterPool?.end();
    await clusterDb?.drop();
  });

  /** Samples for `ms`: at most one self-reported holder each time, and it is the row's holder. */
  async function watchSingleHolder(ms: number): Promise<{ samples: number; rvFirst: number; rvLast: number; holder: string }> {
    const until = Date.now() + ms;
    let samples = 0;
    let rvFirst = -1;
    let rvLast = -1;
    let holder = '';
    while (Date.now() < until) {
      const [holders, row] = await Promise.all([selfReportedHolders(cluster!), readLeaseRow(clusterPool!)]);
      expect(holders.length, `holders at one time: ${holders.join(', ')}`).toBeLessThanOrEqual(1);
      if (holders.length === 1 && row) {
        expect(row.holder).toBe(holders[0]);
        holder = row.holder;
        if (rvFirst < 0) rvFirst = row.resourceVersion;
        rvLast = row.resourceVersion;
      }
      samples++;
      await sleep(100);
    }
    return { samples, rvFirst, rvLast, holder };
  }

  it('one holder at a time, renewed; SIGTERM releases at once; kill -9 is stolen only after the TTL', async () => {
    clusterDb = await createTestDatabase('gen2_lease_cluster');
    clusterPool = new pg.Pool({ connectionString: clusterDb.url, max: 2 });
    // An idle client ended by the database drop at teardown reports it here, not as an uncaught error.
    clusterPool.on('error', (err) => console.log(`lease test pool: ${err.message}`));
    cluster = await Cluster.start({
      replicas: 3,
      databaseUrl: clusterDb.url,
      protocol: '2026-08',
      logLevel: 'info',
      gatewayExtraArgs: ['--lease-ttl-secs', String(TTL_S), '--lease-renew-secs', String(RENEW_S), '--lease-acquire-secs', String(ACQUIRE_S)],
    });
    const first = await waitUntil('a lease holder', () => readLeaseRow(clusterPool!), (r) => r !== null, { timeoutMs: 10_000 });
    expect(cluster.replicas.map((r) => r.name)).toContain(first!.holder);

    const steady = await watchSingleHolder(3_000);
    expect(steady.holder).toBe(first!.holder);
    // Renewed every 0.5 s: several CAS rewrites in 3 s.
    expect(steady.rvLast - steady.rvFirst).toBeGreaterThanOrEqual(3);

    // Graceful shutdown deletes the row: another replica takes over within the acquire interval, far
    // sooner than a steal could (that needs the TTL).
    const holderIndex = cluster.replicas.findIndex((r) => r.name === first!.holder);
    const termAt = Date.now();
    await cluster.kill(holderIndex, 'SIGTERM');
    const second = await waitUntil('a new holder after SIGTERM', () => readLeaseRow(clusterPool!), (r) => r !== null && r.holder !== first!.holder, {
      timeoutMs: 10_000,
      intervalMs: 25,
    });
    const gracefulTakeoverMs = second!.acquiredAtMs - termAt;
    expect(gracefulTakeoverMs).toBeLessThan(TTL_S * 1000 - 1000);
    expect(cluster.replica(holderIndex).gateway.output.join('\n')).toContain('shutdown — releasing reconciler lease');
    await watchSingleHolder(1_000);

    // kill -9: the row stays with the dead holder until it is TTL old, then one survivor steals it.
    const secondIndex = cluster.replicas.findIndex((r) => r.name === second!.holder);
    const before = await readLeaseRow(clusterPool!);
    await cluster.kill(secondIndex, 'SIGKILL');
    await sleep(1_000);
    expect((await readLeaseRow(clusterPool!))?.holder).toBe(second!.holder);
    const third = await waitUntil('a steal after kill -9', () => readLeaseRow(clusterPool!), (r) => r !== null && r.holder !== second!.holder, {
      timeoutMs: TTL_S * 1000 + 10_000,
      intervalMs: 25,
    });
    const stealAfterLastRenewMs = third!.acquiredAtMs - before!.updatedAtMs;
    expect(stealAfterLastRenewMs).toBeGreaterThanOrEqual(TTL_S * 1000 - RENEW_S * 1000);
    expect(stealAfterLastRenewMs).toBeLessThan(TTL_S * 1000 + RENEW_S * 1000 + ACQUIRE_S * 1000 + 2_000);
    // The only replica still running: the first holder was SIGTERM'd and the second killed.
    expect(third!.holder).not.toBe(first!.holder);
    const survivors = await watchSingleHolder(1_000);
    expect(survivors.holder).toBe(third!.holder);
    console.log(
      `lease: first holder ${first!.holder}; after SIGTERM ${second!.holder} took over in ${gracefulTakeoverMs} ms; ` +
        `after kill -9 ${third!.holder} stole it ${stealAfterLastRenewMs} ms after the dead holder's last renewal (TTL ${TTL_S * 1000} ms)`,
    );
  }, 60_000);
});
