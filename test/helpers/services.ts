// Real Postgres and Redis for tests: each test file gets its own database and key prefix.
import { randomBytes } from 'node:crypto';
import pg from 'pg';

export const TEST_DATABASE_URL = process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
export const TEST_REDIS_URL = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';

function withDatabase(url: string, db: string): string {
  const u = new URL(url);
  u.pathname = `/${db}`;
  return u.toString();
}

export interface TestDatabase {
  url: string;
  name: string;
  drop(): Promise<void>;
}

/** How long `drop()` lets a test's own clients finish closing before it terminates what is left. */
const DROP_GRACE_MS = 1000;

/** Creates a fresh database for one test file; `drop()` removes it (terminating stray connections). */
export async function createTestDatabase(label: string): Promise<TestDatabase> {
  const name = `ohs_${label.replace(/[^a-z0-9_]/gi, '_').toLowerCase()}_${randomBytes(4).toString('hex')}`;
  const admin = new pg.Client({ connectionString: TEST_DATABASE_URL });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${name}`);
  } finally {
    await admin.end();
  }
  return {
    url: withDatabase(TEST_DATABASE_URL, name),
    name,
    async drop() {
      const c = new pg.Client({ connectionString: TEST_DATABASE_URL });
      await c.connect();
      try {
        // A client still closing (a pool just ended) gets "terminating connection due to
        // administrator command" from a forced drop, an error nobody listens for any more: give the
        // file's own connections a moment to go, then terminate the strays.
        const until = Date.now() + DROP_GRACE_MS;
        const others = async (): Promise<number> =>
          (await c.query<{ n: number }>('SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()', [name])).rows[0]?.n ?? 0;
        while ((await others()) > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 25));
        await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      } finally {
        await c.end();
      }
    },
  };
}

/** A Redis key prefix unique to one test file. */
export function testRedisPrefix(label: string): string {
  return `ohs-test:${label}:${randomBytes(4).toString('hex')}:`;
}
