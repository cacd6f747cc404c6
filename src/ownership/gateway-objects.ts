// Read-only view of the gateway's own `objects` table (reference §3.2): whether a sandbox row
// exists and what its phase is (either payload layout), a sandbox's id by name and workspace,
// service endpoints, and SSH session tokens. Never writes. When the table is not reachable (a
// separate database, an outage), every answer is "unknown" (undefined) and callers fall back to
// timed waits or to letting the gateway decide.
import { createHash } from 'node:crypto';
import pg from 'pg';
import type { Logger } from 'pino';
import {
  sandboxPayloadConditions,
  sandboxPayloadPhase,
  serviceEndpointSandboxId,
  sshSessionPayload,
  type PayloadLayout,
  type SandboxCondition,
  type SshSessionPayload,
} from '../wire/gateway-payloads.ts';

export { PHASE_READY, sandboxPhase } from '../wire/gateway-payloads.ts';

export interface SandboxState {
  /** Changes with every write to the row (payload + updated_at_ms). */
  fingerprint: string;
  /** -1 when the payload could not be decoded. */
  phase: number;
  layout: PayloadLayout;
}

/** The gateway's sandbox row as `explain` shows it. */
export interface SandboxRecord {
  /** -1 when the payload could not be decoded. */
  phase: number;
  layout: PayloadLayout;
  conditions: SandboxCondition[];
  /** The row's `updated_at_ms` (the writing gateway's clock). */
  updatedAtMs: number;
}

export interface GatewayObjects {
  /** true/false when known, undefined when the table cannot be read. */
  sandboxExists(sandboxId: string): Promise<boolean | undefined>;
  sandboxState(sandboxId: string): Promise<SandboxState | undefined>;
  /** Phase, layout, conditions and last write time of the row; null when the row is gone. */
  sandboxRecord?(sandboxId: string): Promise<SandboxRecord | null | undefined>;
  /** The sandbox id for a name (workspace ignored on a seed schema); null when no such sandbox. */
  sandboxIdByName(name: string, workspace: string): Promise<string | null | undefined>;
  /** The sandbox behind a `service_endpoint` row (workspace + endpoint key); null when none. */
  serviceSandboxId(workspace: string, endpointKey: string): Promise<string | null | undefined>;
  /** The `ssh_session` row for a token; null when none. */
  sshSession(token: string): Promise<SshSessionPayload | null | undefined>;
  /** The stored `Sandbox` payload as the gateway would send it in a watch; null when the row is gone. */
  sandboxPayload(sandboxId: string): Promise<Buffer | null | undefined>;
  /** Phases of several sandboxes in one query (rows that do not exist are absent from the map). */
  sandboxPhases(sandboxIds: readonly string[]): Promise<Map<string, number> | undefined>;
  /** The reconciler-lease row (HEAD on Postgres, reference §10): who holds it and how fresh it is; null when none. */
  reconcilerLease(): Promise<{ holder: string; updatedAtMs: number } | null | undefined>;
  /** Whether the table holds upstream's own owner records (the unmerged native-HA gateway, reference §10). */
  hasNativeOwnerRecords(): Promise<boolean | undefined>;
  close(): Promise<void>;
}

const QUERY_TIMEOUT_MS = 2_000;

const UNKNOWN: GatewayObjects = {
  sandboxExists: async () => undefined,
  sandboxState: async () => undefined,
  sandboxRecord: async () => undefined,
  sandboxIdByName: async () => undefined,
  serviceSandboxId: async () => undefined,
  sshSession: async () => undefined,
  sandboxPayload: async () => undefined,
  sandboxPhases: async () => undefined,
  reconcilerLease: async () => undefined,
  hasNativeOwnerRecords: async () => undefined,
  close: async () => undefined,
};

export function createGatewayObjects(databaseUrl: string | undefined, logger: Logger): GatewayObjects {
  if (!databaseUrl) return UNKNOWN;
  const pool = new pg.Pool({
    connectionString: databaseUrl,
    max: 4,
    connectionTimeoutMillis: QUERY_TIMEOUT_MS,
    statement_timeout: QUERY_TIMEOUT_MS,
  });
  pool.on('error', () => undefined);
  let warned = false;
  const query = async <R extends pg.QueryResultRow>(text: string, values: unknown[]): Promise<R[] | undefined> => {
    try {
      const res = await pool.query<R>(text, values);
      warned = false;
      return res.rows;
    } catch (err) {
      if (!warned) {
        warned = true;
        logger.info({ err: (err as Error).message }, 'gateway objects table not readable; using timed waits instead');
      }
      return undefined;
    }
  };
  // The HEAD schema has a `workspace` column (migration 006) and names are unique per workspace;
  // the seed schema has neither (reference §3.1). Learnt once the table is readable.
  let hasWorkspace: Promise<boolean | undefined> | undefined;
  const workspaceColumn = (): Promise<boolean | undefined> => {
    hasWorkspace ??= query<{ n: string }>(
      `SELECT count(*) AS n FROM information_schema.columns WHERE table_name = 'objects' AND column_name = 'workspace' AND table_schema = ANY (current_schemas(false))`,
      [],
    ).then((rows) => {
      if (rows === undefined) hasWorkspace = undefined; // ask again next time
      return rows === undefined ? undefined : Number(rows[0]?.n ?? 0) > 0;
    });
    return hasWorkspace;
  };
  const payloadOf = async (objectType: string, id: string): Promise<{ payload: Buffer; updated_at_ms: string } | null | undefined> => {
    const rows = await query<{ payload: Buffer; updated_at_ms: string }>(
      `SELECT payload, updated_at_ms FROM objects WHERE object_type = $1 AND id = $2`,
      [objectType, id],
    );
    return rows === undefined ? undefined : (rows[0] ?? null);
  };
  const byName = async (objectType: string, workspace: string, name: string): Promise<{ id: string; payload: Buffer } | null | undefined> => {
    const ws = await workspaceColumn();
    if (ws === undefined) return undefined;
    const rows = ws
      ? await query<{ id: string; payload: Buffer }>(`SELECT id, payload FROM objects WHERE object_type = $1 AND workspace = $2 AND name = $3`, [objectType, workspace, name])
      : await query<{ id: string; payload: Buffer }>(`SELECT id, payload FROM objects WHERE object_type = $1 AND name = $2`, [objectType, name]);
    return rows === undefined ? undefined : (rows[0] ?? null);
  };
  return {
    async sandboxExists(sandboxId) {
      const row = await payloadOf('sandbox', sandboxId);
      return row === undefined ? undefined : row !== null;
    },
    async sandboxState(sandboxId) {
      const row = await payloadOf('sandbox', sandboxId);
      if (!row) return undefined;
      let decoded: { phase: number; layout: PayloadLayout } = { phase: -1, layout: 'unknown' };
      try {
        decoded = sandboxPayloadPhase(row.payload);
      } catch {
        // an undecodable payload still has a fingerprint
      }
      const fingerprint = createHash('sha256').update(row.payload).update(String(row.updated_at_ms)).digest('hex');
      return { fingerprint, ...decoded };
    },
    async sandboxRecord(sandboxId) {
      const row = await payloadOf('sandbox', sandboxId);
      if (row === undefined || row === null) return row;
      let decoded: { phase: number; layout: PayloadLayout } = { phase: -1, layout: 'unknown' };
      let conditions: SandboxCondition[] = [];
      try {
        decoded = sandboxPayloadPhase(row.payload);
        conditions = sandboxPayloadConditions(row.payload);
      } catch {
        // shown as undecodable (-1)
      }
      return { ...decoded, conditions, updatedAtMs: Number(row.updated_at_ms) };
    },
    async sandboxIdByName(name, workspace) {
      const row = await byName('sandbox', workspace, name);
      return row === undefined ? undefined : (row?.id ?? null);
    },
    async serviceSandboxId(workspace, endpointKey) {
      const row = await byName('service_endpoint', workspace, endpointKey);
      if (row === undefined) return undefined;
      if (row === null) return null;
      try {
        return serviceEndpointSandboxId(row.payload) || null;
      } catch {
        return null;
      }
    },
    async sshSession(token) {
      const row = await payloadOf('ssh_session', token);
      if (row === undefined) return undefined;
      if (row === null) return null;
      try {
        return sshSessionPayload(row.payload);
      } catch {
        return null;
      }
    },
    async sandboxPayload(sandboxId) {
      const row = await payloadOf('sandbox', sandboxId);
      return row === undefined ? undefined : (row?.payload ?? null);
    },
    async sandboxPhases(sandboxIds) {
      if (sandboxIds.length === 0) return new Map();
      const rows = await query<{ id: string; payload: Buffer }>(`SELECT id, payload FROM objects WHERE object_type = 'sandbox' AND id = ANY($1::text[])`, [sandboxIds]);
      if (rows === undefined) return undefined;
      const out = new Map<string, number>();
      for (const r of rows) {
        try {
          out.set(r.id, sandboxPayloadPhase(r.payload).phase);
        } catch {
          out.set(r.id, -1);
        }
      }
      return out;
    },
    async reconcilerLease() {
      // JSON payload {holder, acquired_at_ms} (compute/lease.rs at HEAD).
      const rows = await query<{ payload: Buffer; updated_at_ms: string }>(`SELECT payload, updated_at_ms FROM objects WHERE object_type = 'reconciler_lease' AND id = 'singleton'`, []);
      if (rows === undefined) return undefined;
      const row = rows[0];
      if (!row) return null;
      try {
        const holder = (JSON.parse(row.payload.toString('utf8')) as { holder?: unknown }).holder;
        return typeof holder === 'string' ? { holder, updatedAtMs: Number(row.updated_at_ms) } : null;
      } catch {
        return null;
      }
    },
    async hasNativeOwnerRecords() {
      const rows = await query<{ one: number }>(`SELECT 1 AS one FROM objects WHERE object_type = 'supervisor_session_owner' LIMIT 1`, []);
      return rows === undefined ? undefined : rows.length > 0;
    },
    close: () => pool.end().catch(() => undefined),
  };
}
