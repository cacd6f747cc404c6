// The exit status of `openshell-ha-sidecar status` straight from the stores (--database-url): 0 on a
// healthy cluster, 1 when no replica is live, a store is down, or a replica whose lease expired still
// owns sandboxes. The replica and owner rows are real rows in a real Postgres, aged on its own clock.
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import pg from 'pg';
import type { ClusterStatus } from '../../../src/admin/cluster-status.ts';
import { runStatus } from '../../../src/cli/status.ts';
import * as sql from '../../../src/ownership/sql.ts';
import { freePort } from '../../helpers/own-redis.ts';
import { createTestDatabase, TEST_REDIS_URL, testRedisPrefix, type TestDatabase } from '../../helpers/services.ts';

const LEASE_TTL_MS = 10_000;

let db: TestDatabase;
let pool: pg.Pool;

/** Runs `status` with a fixed lease and an empty environment (no OHS_* from the host leaks in). */
async function status(extra: string[], databaseUrl = db.url): Promise<{ code: number; out: string }> {
  let out = '';
  const code = await runStatus(['--database-url', databaseUrl, '--replica-lease-ttl-ms', String(LEASE_TTL_MS), ...extra], {}, (s) => {
    out += s;
    return true;
  });
  return { code, out };
}

async function statusJson(extra: string[] = [], databaseUrl?: string): Promise<{ code: number; st: ClusterStatus }> {
  const { code, out } = await status(['--json', ...extra], databaseUrl);
  return { code, st: JSON.parse(out) as ClusterStatus };
}

/** A replica row as the sidecar registers it, its heartbeat `ageSeconds` old on the database clock. */
async function replica(id: string, ageSeconds: number, sessions = 0): Promise<void> {
  await pool.query(sql.REGISTER_REPLICA, [id, `http://127.0.0.1:1/${id}`, 'active', sessions, '0.1.0']);
  await pool.query(`UPDATE ohs_replicas SET heartbeat_at = now() - $2::float8 * interval '1 second' WHERE replica_id = $1`, [id, ageSeconds]);
}

async function own(sandboxId: string, replicaId: string): Promise<void> {
  await pool.query(sql.UPSERT_OWNERS, [[sandboxId], replicaId]);
}

beforeAll(async () => {
  db = await createTestDatabase('status_exit');
  pool = new pg.Pool({ connectionString: db.url, max: 2 });
  for (const stmt of sql.CREATE_SCHEMA) await pool.query(stmt);
});

afterAll(async () => {
  await pool?.end();
  await db?.drop();
});

beforeEach(async () => {
  await pool.query('TRUNCATE ohs_replicas, ohs_owners');
});

describe('status exit code', () => {
  it('exits 0 when every owning replica is live (an expired replica that owns nothing is no problem)', async () => {
    await replica('r0', 0, 1);
    await replica('r1', 0, 1);
    await replica('r2', 60); // gone, but left nothing behind
    await own('sb-a', 'r0');
    await own('sb-b', 'r1');

    const text = await status([]);
    expect(text.code).toBe(0);
    expect(text.out).toMatch(/^cluster: HEALTHY \(2\/3 replicas live, 2 sandboxes owned\)/);
    expect(text.out).toMatch(/^r2\s+DEAD\s/m);
    expect(text.out).not.toContain('PROBLEM');

    const { code, st } = await statusJson();
    expect(code).toBe(0);
    expect(st.healthy).toBe(true);
    expect(st.problems).toEqual([]);
    expect(st.store).toEqual({ postgres: true, redis: null });
    expect(st.totals).toMatchObject({ replicas: 3, live: 2, ownedSandboxes: 2, orphanedOwners: 0 });
  });

  it('exits 1 when owner rows name a replica that has no row at all', async () => {
    await replica('r0', 0, 1);
    await own('sb-a', 'r0');
    await own('sb-b', 'r9');
    const { code, st } = await statusJson();
    expect(code).toBe(1);
    expect(st.healthy).toBe(false);
    expect(st.problems).toEqual(['1 sandbox(es) owned by a replica that has no row in ohs_replicas']);
    expect(st.totals).toMatchObject({ live: 1, orphanedOwners: 1 });
  });

  it('exits 1 when a replica whose lease expired still owns a sandbox', async () => {
    await replica('r0', 0, 1);
    await replica('r1', 60, 1);
    await own('sb-a', 'r0');
    await own('sb-b', 'r1');

    const text = await status([]);
    expect(text.code).toBe(1);
    expect(text.out).toMatch(/^cluster: UNHEALTHY \(1\/2 replicas live, 2 sandboxes owned\)/);
    expect(text.out).toMatch(/^r1\s+DEAD\s/m);
    expect(text.out).toMatch(/^PROBLEM: r1: lease expired \d+ s ago but still owns 1 sandbox\(es\)$/m);

    const { code, st } = await statusJson();
    expect(code).toBe(1);
    expect(st.healthy).toBe(false);
    expect(st.problems).toHaveLength(1);
    expect(st.totals).toMatchObject({ replicas: 2, live: 1, orphanedOwners: 1 });
    expect(st.replicas.find((r) => r.replicaId === 'r1')).toMatchObject({ live: false, owned: 1 });
    // The lease judged on the database clock: about 60 s old against a 10 s lease.
    expect(st.replicas.find((r) => r.replicaId === 'r1')!.leaseLeftMs).toBeLessThan(-45_000);

    // The same replica heartbeating again: healthy once more.
    await replica('r1', 0, 1);
    expect((await status([])).code).toBe(0);
  });

  it('exits 1 when no replica is live', async () => {
    // An empty table: nothing registered at all.
    const empty = await statusJson();
    expect(empty.code).toBe(1);
    expect(empty.st.problems).toEqual(['no live replica']);

    // Only expired replicas, owning nothing.
    await replica('r0', 30);
    await replica('r1', 45);
    const text = await status([]);
    expect(text.code).toBe(1);
    expect(text.out).toMatch(/^cluster: UNHEALTHY \(0\/2 replicas live, 0 sandboxes owned\)/);
    expect(text.out).toContain('PROBLEM: no live replica');
  });

  it('exits 1 when Postgres is down', async () => {
    const port = await freePort(); // nothing listens there
    const { code, st } = await statusJson([], `postgres://postgres@127.0.0.1:${port}/test`);
    expect(code).toBe(1);
    expect(st.healthy).toBe(false);
    expect(st.store.postgres).toBe(false);
    expect(st.problems).toEqual([expect.stringMatching(/^Postgres unreachable: /)]);
  });

  it('exits 1 when Redis is down, 0 with the same rows and Redis up', async () => {
    await replica('r0', 0, 1);
    await own('sb-a', 'r0');

    const up = await statusJson(['--redis-url', TEST_REDIS_URL, '--redis-key-prefix', testRedisPrefix('status_exit')]);
    expect(up.code).toBe(0);
    expect(up.st.store).toEqual({ postgres: true, redis: true });

    const port = await freePort(); // nothing listens there
    const down = await statusJson(['--redis-url', `redis://127.0.0.1:${port}`]);
    expect(down.code).toBe(1);
    expect(down.st.store).toEqual({ postgres: true, redis: false });
    expect(down.st.problems).toEqual([expect.stringMatching(/^Redis unreachable: /)]);
  });
});
