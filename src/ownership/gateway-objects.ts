// Read-only view of the gateway's own `objects` table (reference §3.2): whether a sandbox row
// exists, and a fingerprint of its row so a releasing owner can see its gateway's disconnect
// write land. Never writes. When the table is not reachable (a separate database, an outage),
// every answer is "unknown" and callers fall back to timed waits.
import { createHash } from 'node:crypto';
import pg from 'pg';
import type { Logger } from 'pino';

export interface GatewayObjects {
  /** true/false when known, undefined when the table cannot be read. */
  sandboxExists(sandboxId: string): Promise<boolean | undefined>;
  /** Fingerprint of the sandbox row (payload + updated_at_ms), undefined when unknown. */
  sandboxFingerprint(sandboxId: string): Promise<string | undefined>;
  close(): Promise<void>;
}

const QUERY_TIMEOUT_MS = 1_000;

export function createGatewayObjects(databaseUrl: string | undefined, logger: Logger): GatewayObjects {
  if (!databaseUrl) {
    return {
      sandboxExists: async () => undefined,
      sandboxFingerprint: async () => undefined,
      close: async () => undefined,
    };
  }
  const pool = new pg.Pool({
    connectionString: databaseUrl,
    max: 2,
    connectionTimeoutMillis: QUERY_TIMEOUT_MS,
    statement_timeout: QUERY_TIMEOUT_MS,
  });
  pool.on('error', () => undefined);
  let warned = false;
  const read = async (sandboxId: string): Promise<{ payload: Buffer; updated_at_ms: string } | null | undefined> => {
    try {
      const res = await pool.query<{ payload: Buffer; updated_at_ms: string }>(
        `SELECT payload, updated_at_ms FROM objects WHERE object_type = 'sandbox' AND id = $1`,
        [sandboxId],
      );
      warned = false;
      return res.rows[0] ?? null;
    } catch (err) {
      if (!warned) {
        warned = true;
        logger.info({ err: (err as Error).message }, "gateway objects table not readable; using timed waits instead");
      }
      return undefined;
    }
  };
  return {
    async sandboxExists(sandboxId) {
      const row = await read(sandboxId);
      return row === undefined ? undefined : row !== null;
    },
    async sandboxFingerprint(sandboxId) {
      const row = await read(sandboxId);
      if (!row) return undefined;
      return createHash('sha256').update(row.payload).update(String(row.updated_at_ms)).digest('hex');
    },
    close: () => pool.end().catch(() => undefined),
  };
}
