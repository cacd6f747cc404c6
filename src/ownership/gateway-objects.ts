// Read-only view of the gateway's own `objects` table (reference §3.2): whether a sandbox row
// exists, and a fingerprint of its row so a releasing owner can see its gateway's disconnect
// write land. Never writes. When the table is not reachable (a separate database, an outage),
// every answer is "unknown" and callers fall back to timed waits.
import { createHash } from 'node:crypto';
import { BinaryReader, WireType } from '@bufbuild/protobuf/wire';
import pg from 'pg';
import type { Logger } from 'pino';

export interface GatewayObjects {
  /** true/false when known, undefined when the table cannot be read. */
  sandboxExists(sandboxId: string): Promise<boolean | undefined>;
  /**
   * Fingerprint of the sandbox row (payload + updated_at_ms) and its phase (seed layout:
   * `Sandbox.phase`, field 4), undefined when unknown.
   */
  sandboxState(sandboxId: string): Promise<{ fingerprint: string; phase: number } | undefined>;
  close(): Promise<void>;
}

const QUERY_TIMEOUT_MS = 2_000;
export const PHASE_READY = 2;

/** `Sandbox.phase` (field 4, reference §3.2) read with a real wire reader; 0 when absent. */
export function sandboxPhase(payload: Uint8Array): number {
  const reader = new BinaryReader(payload);
  let phase = 0;
  while (reader.pos < reader.len) {
    const [field, wireType] = reader.tag();
    if (field === 4 && wireType === WireType.Varint) phase = reader.int32();
    else reader.skip(wireType);
  }
  return phase;
}

export function createGatewayObjects(databaseUrl: string | undefined, logger: Logger): GatewayObjects {
  if (!databaseUrl) {
    return {
      sandboxExists: async () => undefined,
      sandboxState: async () => undefined,
      close: async () => undefined,
    };
  }
  const pool = new pg.Pool({
    connectionString: databaseUrl,
    max: 4,
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
    async sandboxState(sandboxId) {
      const row = await read(sandboxId);
      if (!row) return undefined;
      let phase = -1;
      try {
        phase = sandboxPhase(row.payload);
      } catch {
        // an undecodable payload still has a fingerprint
      }
      return { fingerprint: createHash('sha256').update(row.payload).update(String(row.updated_at_ms)).digest('hex'), phase };
    },
    close: () => pool.end().catch(() => undefined),
  };
}
