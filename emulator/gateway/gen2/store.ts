// Persistence of the 2026-08 gateway emulator: the seed `objects` table plus upstream's HEAD
// migrations 005 (resource_version, the CAS counter) and 006 (workspace, name unique per
// workspace) (reference §3.1). The phase lives in `status(3).phase(6)` (reference §3.2, §8).
// Tables named `emulator_*` are emulator instrumentation, not part of the gateway.
import { randomUUID } from 'node:crypto';
import { status as Status } from '@grpc/grpc-js';
import pg from 'pg';
import { Phase, messageType, type PhaseValue } from '../../proto.ts';
import { GatewayError } from '../registry.ts';
import { SEED_SCHEMA, type GatewayPersistence, type PhaseWrite, type SandboxRow, type SshSessionRow } from '../store.ts';

export const DEFAULT_WORKSPACE = 'default';

const HEAD_MIGRATIONS = `
ALTER TABLE objects ADD COLUMN IF NOT EXISTS resource_version BIGINT NOT NULL DEFAULT 1;
ALTER TABLE objects ADD COLUMN IF NOT EXISTS workspace TEXT NOT NULL DEFAULT '';
DROP INDEX IF EXISTS objects_name_uq;
CREATE UNIQUE INDEX IF NOT EXISTS objects_name_ws_uq ON objects (object_type, workspace, name) WHERE name IS NOT NULL;
-- Emulator instrumentation standing in for the compute driver: CreateSandbox hands the minted
-- sandbox JWT to the "driver" (upstream: spec.sandbox_token); a supervisor fleet can watch this.
CREATE TABLE IF NOT EXISTS emulator_sandbox_tokens (
  seq BIGSERIAL PRIMARY KEY,
  sandbox_id TEXT NOT NULL,
  token TEXT NOT NULL,
  created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
`;

/** A decoded Sandbox payload (proto-loader field names), without defaults filled in. */
export interface SandboxMessage {
  metadata?: {
    id?: string;
    name?: string;
    created_at_ms?: number;
    labels?: Record<string, string>;
    resource_version?: number;
    annotations?: Record<string, string>;
    workspace?: string;
    deletion_timestamp_ms?: number;
  };
  spec?: Record<string, unknown>;
  status?: {
    sandbox_name?: string;
    conditions?: Array<{ type?: string; status?: string; reason?: string; message?: string; last_transition_time?: string }>;
    phase?: number;
    current_policy_version?: number;
    main_process_instance_id?: string;
    [key: string]: unknown;
  };
}

export interface Gen2Sandbox {
  id: string;
  name: string;
  workspace: string;
  phase: PhaseValue;
  resourceVersion: number;
  /** The row's `updated_at_ms` (the reconcile sweep skips rows written after it started). */
  updatedAtMs: number;
  message: SandboxMessage;
}

export interface ServiceEndpointRow {
  id: string;
  workspace: string;
  name: string;
  sandboxId: string;
  sandboxName: string;
  serviceName: string;
  targetPort: number;
  domain: boolean;
  message: Record<string, unknown>;
}

export function normalizeWorkspace(ws: string | undefined): string {
  return ws && ws.length > 0 ? ws : DEFAULT_WORKSPACE;
}

/** `<sandbox>` or `<sandbox>--<service>` (service_routing.rs@v0.0.111:41-47). */
export function endpointKey(sandbox: string, service: string): string {
  return service ? `${sandbox}--${service}` : sandbox;
}

function encode(name: string, value: object): Buffer {
  const type = messageType(name);
  return Buffer.from(type.encode(type.fromObject(value as Record<string, unknown>)).finish());
}

/** Decodes keeping only what is on the wire, so a rewrite does not add seed-only fields (Sandbox.phase=4). */
function decode<T>(name: string, bytes: Uint8Array): T {
  const type = messageType(name);
  return type.toObject(type.decode(bytes), { longs: Number, enums: Number, bytes: Buffer, arrays: true, objects: true }) as T;
}

export function sandboxPhase(msg: SandboxMessage): PhaseValue {
  return (msg.status?.phase ?? Phase.UNSPECIFIED) as PhaseValue;
}

type SandboxDbRow = { id: string; name: string; workspace: string; payload: Buffer; resource_version: string; updated_at_ms: string };
const SANDBOX_COLUMNS = 'id, name, workspace, payload, resource_version, updated_at_ms';

function toSandbox(row: SandboxDbRow): Gen2Sandbox {
  const message = decode<SandboxMessage>('Sandbox', row.payload);
  const resourceVersion = Number(row.resource_version);
  // The stored row's counter is authoritative; callers see it in metadata like upstream's reads.
  message.metadata = { ...message.metadata, resource_version: resourceVersion, workspace: row.workspace };
  return { id: row.id, name: row.name, workspace: row.workspace, phase: sandboxPhase(message), resourceVersion, updatedAtMs: Number(row.updated_at_ms), message };
}

function isUniqueViolation(err: unknown): boolean {
  return typeof err === 'object' && err !== null && (err as { code?: string }).code === '23505';
}

export class Gen2Store implements GatewayPersistence {
  readonly pool: pg.Pool;

  /** `poolSize`: most connections this store opens (default 5; tests and watchers need fewer). */
  constructor(databaseUrl: string, opts: { poolSize?: number } = {}) {
    this.pool = new pg.Pool({ connectionString: databaseUrl, max: opts.poolSize ?? 5, connectionTimeoutMillis: 5000 });
    this.pool.on('error', () => undefined);
  }

  async migrate(): Promise<void> {
    const client = await this.pool.connect();
    try {
      await client.query('SELECT pg_advisory_lock(727001)');
      await client.query(SEED_SCHEMA);
      await client.query(HEAD_MIGRATIONS);
    } finally {
      await client.query('SELECT pg_advisory_unlock(727001)').catch(() => undefined);
      client.release();
    }
  }

  async close(): Promise<void> {
    await this.pool.end();
  }

  // --- sandboxes ------------------------------------------------------------------------

  /** Inserts a sandbox row like handle_create_sandbox (MustCreate); ALREADY_EXISTS on a name clash. */
  async insertSandbox(opts: {
    id?: string;
    name?: string;
    workspace?: string;
    phase?: PhaseValue;
    spec?: Record<string, unknown>;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
  }): Promise<Gen2Sandbox> {
    const id = opts.id ?? randomUUID();
    const name = opts.name || `sandbox-${id.slice(0, 8)}`;
    const workspace = normalizeWorkspace(opts.workspace);
    const now = Date.now();
    const message: SandboxMessage = {
      metadata: { id, name, created_at_ms: now, labels: opts.labels ?? {}, resource_version: 1, annotations: opts.annotations ?? {}, workspace },
      spec: opts.spec ?? { log_level: 'info', command: ['/bin/bash', '-l'], tty: true },
      status: { sandbox_name: name, phase: opts.phase ?? Phase.PROVISIONING },
    };
    const labels = opts.labels && Object.keys(opts.labels).length > 0 ? JSON.stringify(opts.labels) : null;
    try {
      await this.pool.query(
        `INSERT INTO objects (id, object_type, name, workspace, payload, created_at_ms, updated_at_ms, labels, resource_version)
         VALUES ($1, 'sandbox', $2, $3, $4, $5, $5, $6, 1)`,
        [id, name, workspace, encode('Sandbox', message), now, labels],
      );
    } catch (err) {
      if (isUniqueViolation(err)) throw new GatewayError(Status.ALREADY_EXISTS, `sandbox '${name}' already exists`);
      throw err;
    }
    return { id, name, workspace, phase: sandboxPhase(message), resourceVersion: 1, updatedAtMs: now, message };
  }

  async sandboxById(id: string): Promise<Gen2Sandbox | null> {
    const res = await this.pool.query<SandboxDbRow>(
      `SELECT ${SANDBOX_COLUMNS} FROM objects WHERE object_type = 'sandbox' AND id = $1`,
      [id],
    );
    const row = res.rows[0];
    return row ? toSandbox(row) : null;
  }

  async sandboxByName(workspace: string, name: string): Promise<Gen2Sandbox | null> {
    const res = await this.pool.query<SandboxDbRow>(
      `SELECT ${SANDBOX_COLUMNS} FROM objects WHERE object_type = 'sandbox' AND workspace = $1 AND name = $2`,
      [normalizeWorkspace(workspace), name],
    );
    const row = res.rows[0];
    return row ? toSandbox(row) : null;
  }

  /** `workspace` null lists every workspace. */
  async listSandboxes(workspace: string | null, limit: number, offset: number): Promise<Gen2Sandbox[]> {
    const res = await this.pool.query<SandboxDbRow>(
      `SELECT ${SANDBOX_COLUMNS} FROM objects
       WHERE object_type = 'sandbox' AND ($1::text IS NULL OR workspace = $1)
       ORDER BY created_at_ms, id LIMIT $2 OFFSET $3`,
      [workspace, limit, offset],
    );
    return res.rows.map(toSandbox);
  }

  /**
   * update_message_cas: one attempt, conditional on `resource_version` (postgres.rs@v0.0.111:145-181).
   * Returns the new row, 'conflict' when another write got there first, or null when the row is gone.
   * `record` (emulator instrumentation) is inserted into `emulator_phase_writes` by the same statement,
   * so a reader never sees the new phase without its record.
   */
  async updateSandboxCas(
    id: string,
    expectedVersion: number,
    mutate: (msg: SandboxMessage) => void,
    record?: { phase: PhaseValue; replica: string; reason: string },
  ): Promise<Gen2Sandbox | 'conflict' | null> {
    const current = await this.sandboxById(id);
    if (!current) return null;
    if (current.resourceVersion !== expectedVersion) return 'conflict';
    const message = structuredClone(current.message);
    mutate(message);
    message.metadata = { ...message.metadata, resource_version: expectedVersion + 1 };
    const now = Date.now();
    const update = `UPDATE objects SET payload = $3, updated_at_ms = $4, resource_version = resource_version + 1
       WHERE object_type = 'sandbox' AND id = $1 AND resource_version = $2 RETURNING resource_version`;
    const params: unknown[] = [id, expectedVersion, encode('Sandbox', message), now];
    const res = await this.pool.query<{ resource_version: string }>(
      record
        ? `WITH updated AS (${update}),
             recorded AS (INSERT INTO emulator_phase_writes (sandbox_id, phase, replica, reason) SELECT $1::text, $5::int, $6::text, $7::text FROM updated)
           SELECT resource_version FROM updated`
        : update,
      record ? [...params, record.phase, record.replica, record.reason] : params,
    );
    const row = res.rows[0];
    if (!row) return (await this.sandboxById(id)) ? 'conflict' : null;
    return { ...current, message, phase: sandboxPhase(message), resourceVersion: Number(row.resource_version), updatedAtMs: now };
  }

  async deleteSandboxRow(id: string): Promise<boolean> {
    const res = await this.pool.query(`DELETE FROM objects WHERE object_type = 'sandbox' AND id = $1`, [id]);
    return (res.rowCount ?? 0) > 0;
  }

  // --- GatewayPersistence (what tests and tools share with the seed store) ----------------

  async createSandbox(opts: { id?: string; name?: string; phase?: PhaseValue; workspace?: string } = {}): Promise<SandboxRow> {
    const s = await this.insertSandbox(opts);
    return { id: s.id, name: s.name, phase: s.phase };
  }

  async getSandbox(id: string): Promise<SandboxRow | null> {
    const s = await this.sandboxById(id);
    return s ? { id: s.id, name: s.name, phase: s.phase } : null;
  }

  async getSandboxMessage(id: string): Promise<Record<string, unknown> | null> {
    const s = await this.sandboxById(id);
    return s ? (s.message as Record<string, unknown>) : null;
  }

  /** Test helper: a CAS phase write (one attempt) recorded like the gateway's own writes. */
  async writePhase(sandboxId: string, phase: PhaseValue, replica: string, reason: string): Promise<boolean> {
    const s = await this.sandboxById(sandboxId);
    if (!s) return false;
    const res = await this.updateSandboxCas(
      sandboxId,
      s.resourceVersion,
      (m) => {
        m.status = { ...m.status, phase };
      },
      { phase, replica, reason },
    );
    return res !== null && res !== 'conflict';
  }

  async phaseHistory(sandboxId: string): Promise<PhaseWrite[]> {
    const res = await this.pool.query<{ seq: string; sandbox_id: string; phase: number; replica: string; reason: string }>(
      `SELECT seq, sandbox_id, phase, replica, reason FROM emulator_phase_writes WHERE sandbox_id = $1 ORDER BY seq`,
      [sandboxId],
    );
    return res.rows.map((r) => ({ seq: Number(r.seq), sandboxId: r.sandbox_id, phase: r.phase as PhaseValue, replica: r.replica, reason: r.reason }));
  }

  // --- ssh sessions (object_type 'ssh_session', id = token; reference §2.3, §3.2) -----------

  async createSshSession(sandboxId: string, ttlSecs: number, workspace = DEFAULT_WORKSPACE): Promise<SshSessionRow> {
    const token = randomUUID();
    const now = Date.now();
    const expiresAtMs = ttlSecs > 0 ? now + ttlSecs * 1000 : 0;
    const name = `ssh-${token.slice(0, 8)}`;
    const payload = encode('SshSession', {
      metadata: { id: token, name, created_at_ms: now, workspace },
      sandbox_id: sandboxId,
      token,
      expires_at_ms: expiresAtMs,
      revoked: false,
    });
    await this.pool.query(
      `INSERT INTO objects (id, object_type, name, workspace, payload, created_at_ms, updated_at_ms)
       VALUES ($1, 'ssh_session', $2, $3, $4, $5, $5)`,
      [token, name, normalizeWorkspace(workspace), payload, now],
    );
    return { token, sandboxId, expiresAtMs, revoked: false };
  }

  async getSshSession(token: string): Promise<SshSessionRow | null> {
    const res = await this.pool.query<{ payload: Buffer }>(`SELECT payload FROM objects WHERE object_type = 'ssh_session' AND id = $1`, [token]);
    const row = res.rows[0];
    if (!row) return null;
    const s = decode<{ sandbox_id?: string; expires_at_ms?: number; revoked?: boolean }>('SshSession', row.payload);
    return { token, sandboxId: s.sandbox_id ?? '', expiresAtMs: Number(s.expires_at_ms ?? 0), revoked: s.revoked ?? false };
  }

  async updateSshSession(token: string, patch: { revoked?: boolean; expiresAtMs?: number }): Promise<void> {
    const cur = await this.getSshSession(token);
    if (!cur) throw new Error(`no ssh_session ${token}`);
    const payload = encode('SshSession', {
      metadata: { id: token, name: `ssh-${token.slice(0, 8)}` },
      sandbox_id: cur.sandboxId,
      token,
      expires_at_ms: patch.expiresAtMs ?? cur.expiresAtMs,
      revoked: patch.revoked ?? cur.revoked,
    });
    await this.pool.query(
      `UPDATE objects SET payload = $2, resource_version = resource_version + 1 WHERE object_type = 'ssh_session' AND id = $1`,
      [token, payload],
    );
  }

  /** Stop and delete drop the sandbox's SSH tokens (compute/mod.rs@v0.0.111:3052-3060). */
  async deleteSshSessionsForSandbox(sandboxId: string): Promise<void> {
    const res = await this.pool.query<{ id: string; payload: Buffer }>(`SELECT id, payload FROM objects WHERE object_type = 'ssh_session'`);
    const ids = res.rows
      .filter((r) => decode<{ sandbox_id?: string }>('SshSession', r.payload).sandbox_id === sandboxId)
      .map((r) => r.id);
    if (ids.length > 0) await this.pool.query(`DELETE FROM objects WHERE object_type = 'ssh_session' AND id = ANY($1)`, [ids]);
  }

  // --- service endpoints (object_type 'service_endpoint'; reference §2.7, §3.2) -------------

  async upsertServiceEndpoint(opts: {
    workspace: string;
    sandboxId: string;
    sandboxName: string;
    service: string;
    targetPort: number;
    domain: boolean;
  }): Promise<ServiceEndpointRow> {
    const workspace = normalizeWorkspace(opts.workspace);
    const name = endpointKey(opts.sandboxName, opts.service);
    const existing = await this.serviceEndpoint(workspace, name);
    const id = existing?.id ?? randomUUID();
    const now = Date.now();
    const message = {
      metadata: { id, name, created_at_ms: now, workspace },
      sandbox_id: opts.sandboxId,
      sandbox_name: opts.sandboxName,
      service_name: opts.service,
      target_port: opts.targetPort,
      domain: opts.domain,
    };
    await this.pool.query(
      `INSERT INTO objects (id, object_type, name, workspace, payload, created_at_ms, updated_at_ms)
       VALUES ($1, 'service_endpoint', $2, $3, $4, $5, $5)
       ON CONFLICT (id) DO UPDATE SET payload = EXCLUDED.payload, updated_at_ms = EXCLUDED.updated_at_ms,
         resource_version = objects.resource_version + 1`,
      [id, name, workspace, encode('ServiceEndpoint', message), now],
    );
    return (await this.serviceEndpoint(workspace, name)) as ServiceEndpointRow;
  }

  async serviceEndpoint(workspace: string, name: string): Promise<ServiceEndpointRow | null> {
    const res = await this.pool.query<{ id: string; workspace: string; name: string; payload: Buffer }>(
      `SELECT id, workspace, name, payload FROM objects WHERE object_type = 'service_endpoint' AND workspace = $1 AND name = $2`,
      [normalizeWorkspace(workspace), name],
    );
    const row = res.rows[0];
    return row ? toEndpoint(row) : null;
  }

  async listServiceEndpoints(workspace: string | null, sandboxName?: string): Promise<ServiceEndpointRow[]> {
    const res = await this.pool.query<{ id: string; workspace: string; name: string; payload: Buffer }>(
      `SELECT id, workspace, name, payload FROM objects WHERE object_type = 'service_endpoint' AND ($1::text IS NULL OR workspace = $1) ORDER BY name`,
      [workspace],
    );
    return res.rows.map(toEndpoint).filter((e) => !sandboxName || e.sandboxName === sandboxName);
  }

  async deleteServiceEndpoint(workspace: string, name: string): Promise<boolean> {
    const res = await this.pool.query(`DELETE FROM objects WHERE object_type = 'service_endpoint' AND workspace = $1 AND name = $2`, [
      normalizeWorkspace(workspace),
      name,
    ]);
    return (res.rowCount ?? 0) > 0;
  }

  async deleteServiceEndpointsForSandbox(sandboxId: string): Promise<void> {
    for (const e of await this.listServiceEndpoints(null)) {
      if (e.sandboxId === sandboxId) await this.deleteServiceEndpoint(e.workspace, e.name);
    }
  }

  // --- emulator instrumentation: the compute-driver stand-in's token hand-off --------------

  async recordSandboxToken(sandboxId: string, token: string): Promise<void> {
    await this.pool.query(`INSERT INTO emulator_sandbox_tokens (sandbox_id, token) VALUES ($1, $2)`, [sandboxId, token]);
  }

  async sandboxTokensAfter(seq: number): Promise<Array<{ seq: number; sandboxId: string; token: string }>> {
    const res = await this.pool.query<{ seq: string; sandbox_id: string; token: string }>(
      `SELECT seq, sandbox_id, token FROM emulator_sandbox_tokens WHERE seq > $1 ORDER BY seq`,
      [seq],
    );
    return res.rows.map((r) => ({ seq: Number(r.seq), sandboxId: r.sandbox_id, token: r.token }));
  }
}

function toEndpoint(row: { id: string; workspace: string; name: string; payload: Buffer }): ServiceEndpointRow {
  const m = decode<{ sandbox_id?: string; sandbox_name?: string; service_name?: string; target_port?: number; domain?: boolean; metadata?: object }>(
    'ServiceEndpoint',
    row.payload,
  );
  return {
    id: row.id,
    workspace: row.workspace,
    name: row.name,
    sandboxId: m.sandbox_id ?? '',
    sandboxName: m.sandbox_name ?? '',
    serviceName: m.service_name ?? '',
    targetPort: m.target_port ?? 0,
    domain: m.domain ?? false,
    message: { ...m, metadata: { ...m.metadata, workspace: row.workspace } },
  };
}
