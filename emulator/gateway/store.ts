// The gateway's persistence, in its real Postgres schema (reference §3.1): one `objects` table
// holding prost-encoded payloads. Several emulator processes share one database, exactly like
// gateway replicas do. `emulator_phase_writes` is test instrumentation, not part of the gateway.
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { Phase, decodeMessage, encodeMessage, type PhaseValue } from '../proto.ts';

export const SEED_SCHEMA = `
CREATE TABLE IF NOT EXISTS objects (
  id TEXT PRIMARY KEY,
  object_type TEXT NOT NULL,
  name TEXT,
  scope TEXT,
  version BIGINT,
  status TEXT,
  dedup_key TEXT,
  hit_count BIGINT NOT NULL DEFAULT 0,
  payload BYTEA NOT NULL,
  created_at_ms BIGINT NOT NULL,
  updated_at_ms BIGINT NOT NULL,
  labels JSONB
);
CREATE UNIQUE INDEX IF NOT EXISTS objects_name_uq ON objects (object_type, name) WHERE name IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS objects_scope_version_uq ON objects (object_type, scope, version);
CREATE INDEX IF NOT EXISTS objects_scope_status_idx ON objects (object_type, scope, status, version);
CREATE UNIQUE INDEX IF NOT EXISTS objects_dedup_uq ON objects (object_type, scope, dedup_key);
CREATE TABLE IF NOT EXISTS emulator_phase_writes (
  seq BIGSERIAL PRIMARY KEY,
  sandbox_id TEXT NOT NULL,
  phase INT NOT NULL,
  replica TEXT NOT NULL,
  reason TEXT NOT NULL,
  written_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
`;

export interface SandboxRow {
  id: string;
  name: string;
  phase: PhaseValue;
}

export interface SshSessionRow {
  token: string;
  sandboxId: string;
  expiresAtMs: number;
  revoked: boolean;
}

export interface PhaseWrite {
  seq: number;
  sandboxId: string;
  phase: PhaseValue;
  replica: string;
  reason: string;
}

interface SandboxPayload {
  metadata: { id: string; name: string; created_at_ms: number };
  phase: number;
  [key: string]: unknown;
}

/** What the gateway emulator persists; Postgres (the real schema) or memory (dev-cluster without a database). */
export interface GatewayPersistence {
  migrate(): Promise<void>;
  close(): Promise<void>;
  createSandbox(opts?: { id?: string; name?: string; phase?: PhaseValue }): Promise<SandboxRow>;
  getSandbox(id: string): Promise<SandboxRow | null>;
  getSandboxMessage(id: string): Promise<Record<string, unknown> | null>;
  writePhase(sandboxId: string, phase: PhaseValue, replica: string, reason: string): Promise<boolean>;
  phaseHistory(sandboxId: string): Promise<PhaseWrite[]>;
  createSshSession(sandboxId: string, ttlSecs: number): Promise<SshSessionRow>;
  getSshSession(token: string): Promise<SshSessionRow | null>;
  updateSshSession(token: string, patch: { revoked?: boolean; expiresAtMs?: number }): Promise<void>;
}

export class GatewayStore implements GatewayPersistence {
  readonly pool: pg.Pool;

  constructor(databaseUrl: string) {
    this.pool = new pg.Pool({ connectionString: databaseUrl, max: 8, connectionTimeoutMillis: 5000 });
    // An idle client losing its server must not crash the emulator.
    this.pool.on('error', () => undefined);
  }

  async migrate(): Promise<void> {
    const client = await this.pool.connect();
    try {
      // Several replicas start at once; serialise the DDL.
      await client.query('SELECT pg_advisory_lock(727001)');
      await client.query(SEED_SCHEMA);
    } finally {
      await client.query('SELECT pg_advisory_unlock(727001)').catch(() => undefined);
      client.release();
    }
  }

  async close(): Promise<void> {
    await this.pool.end();
  }

  /** Test helper: creates a sandbox row (phase Provisioning unless given). */
  async createSandbox(opts: { id?: string; name?: string; phase?: PhaseValue } = {}): Promise<SandboxRow> {
    const id = opts.id ?? randomUUID();
    const name = opts.name ?? `sandbox-${id.slice(0, 8)}`;
    const phase = opts.phase ?? Phase.PROVISIONING;
    const now = Date.now();
    const payload = encodeMessage('Sandbox', {
      metadata: { id, name, created_at_ms: now },
      spec: { log_level: 'info' },
      status: { sandbox_name: name },
      phase,
    });
    await this.pool.query(
      `INSERT INTO objects (id, object_type, name, payload, created_at_ms, updated_at_ms)
       VALUES ($1, 'sandbox', $2, $3, $4, $4)`,
      [id, name, payload, now],
    );
    return { id, name, phase };
  }

  async getSandbox(id: string): Promise<SandboxRow | null> {
    const res = await this.pool.query<{ payload: Buffer }>(
      `SELECT payload FROM objects WHERE object_type = 'sandbox' AND id = $1`,
      [id],
    );
    const row = res.rows[0];
    if (!row) return null;
    const sandbox = decodeMessage<SandboxPayload>('Sandbox', row.payload);
    return { id, name: sandbox.metadata.name, phase: sandbox.phase as PhaseValue };
  }

  /** Full decoded Sandbox payload (for WatchSandbox snapshots). */
  async getSandboxMessage(id: string): Promise<Record<string, unknown> | null> {
    const res = await this.pool.query<{ payload: Buffer }>(
      `SELECT payload FROM objects WHERE object_type = 'sandbox' AND id = $1`,
      [id],
    );
    const row = res.rows[0];
    return row ? decodeMessage('Sandbox', row.payload) : null;
  }

  /**
   * Read-modify-write of `Sandbox.phase` (field 4), as the seed gateway's
   * supervisor_session_connected / _disconnected do (reference §6, item 4). Not a CAS: that is
   * what makes a late `Provisioning` from another replica able to win.
   */
  async writePhase(sandboxId: string, phase: PhaseValue, replica: string, reason: string): Promise<boolean> {
    const client = await this.pool.connect();
    try {
      const res = await client.query<{ payload: Buffer }>(
        `SELECT payload FROM objects WHERE object_type = 'sandbox' AND id = $1`,
        [sandboxId],
      );
      const row = res.rows[0];
      if (!row) return false;
      const sandbox = decodeMessage<SandboxPayload>('Sandbox', row.payload);
      sandbox.phase = phase;
      const payload = encodeMessage('Sandbox', sandbox);
      // The row and its instrumentation record in one statement: no reader sees one without the other.
      await client.query(
        `WITH updated AS (UPDATE objects SET payload = $2, updated_at_ms = $3 WHERE object_type = 'sandbox' AND id = $1 RETURNING id)
         INSERT INTO emulator_phase_writes (sandbox_id, phase, replica, reason) SELECT id, $4::int, $5::text, $6::text FROM updated`,
        [sandboxId, payload, Date.now(), phase, replica, reason],
      );
      return true;
    } finally {
      client.release();
    }
  }

  async phaseHistory(sandboxId: string): Promise<PhaseWrite[]> {
    const res = await this.pool.query<{ seq: string; sandbox_id: string; phase: number; replica: string; reason: string }>(
      `SELECT seq, sandbox_id, phase, replica, reason FROM emulator_phase_writes WHERE sandbox_id = $1 ORDER BY seq`,
      [sandboxId],
    );
    return res.rows.map((r) => ({
      seq: Number(r.seq),
      sandboxId: r.sandbox_id,
      phase: r.phase as PhaseValue,
      replica: r.replica,
      reason: r.reason,
    }));
  }

  /** CreateSshSession's row: object_type `ssh_session`, `id = token` (reference §2.3, §3.2). */
  async createSshSession(sandboxId: string, ttlSecs: number): Promise<SshSessionRow> {
    const token = randomUUID();
    const now = Date.now();
    const expiresAtMs = ttlSecs > 0 ? now + ttlSecs * 1000 : 0;
    const name = `ssh-${token.slice(0, 8)}`;
    const payload = encodeMessage('SshSession', {
      metadata: { id: token, name, created_at_ms: now },
      sandbox_id: sandboxId,
      token,
      expires_at_ms: expiresAtMs,
      revoked: false,
    });
    await this.pool.query(
      `INSERT INTO objects (id, object_type, name, payload, created_at_ms, updated_at_ms)
       VALUES ($1, 'ssh_session', $2, $3, $4, $4)`,
      [token, name, payload, now],
    );
    return { token, sandboxId, expiresAtMs, revoked: false };
  }

  async getSshSession(token: string): Promise<SshSessionRow | null> {
    const res = await this.pool.query<{ payload: Buffer }>(
      `SELECT payload FROM objects WHERE object_type = 'ssh_session' AND id = $1`,
      [token],
    );
    const row = res.rows[0];
    if (!row) return null;
    const s = decodeMessage<{ sandbox_id: string; token: string; expires_at_ms: number; revoked: boolean }>(
      'SshSession',
      row.payload,
    );
    return { token, sandboxId: s.sandbox_id, expiresAtMs: Number(s.expires_at_ms), revoked: s.revoked };
  }

  /** Test helper: revoke or expire a token in place. */
  async updateSshSession(token: string, patch: { revoked?: boolean; expiresAtMs?: number }): Promise<void> {
    const current = await this.getSshSession(token);
    if (!current) throw new Error(`no ssh_session ${token}`);
    const payload = encodeMessage('SshSession', {
      metadata: { id: token, name: `ssh-${token.slice(0, 8)}` },
      sandbox_id: current.sandboxId,
      token,
      expires_at_ms: patch.expiresAtMs ?? current.expiresAtMs,
      revoked: patch.revoked ?? current.revoked,
    });
    await this.pool.query(`UPDATE objects SET payload = $2 WHERE object_type = 'ssh_session' AND id = $1`, [
      token,
      payload,
    ]);
  }
}

/**
 * In-memory persistence for a single emulator replica (like the real gateway's SQLite mode):
 * the same payload encoding, nothing shared between processes.
 */
export class MemoryGatewayStore implements GatewayPersistence {
  private readonly sandboxes = new Map<string, Buffer>();
  private readonly sessions = new Map<string, Buffer>();
  private readonly history: PhaseWrite[] = [];

  async migrate(): Promise<void> {}

  async close(): Promise<void> {}

  async createSandbox(opts: { id?: string; name?: string; phase?: PhaseValue } = {}): Promise<SandboxRow> {
    const id = opts.id ?? randomUUID();
    const name = opts.name ?? `sandbox-${id.slice(0, 8)}`;
    const phase = opts.phase ?? Phase.PROVISIONING;
    this.sandboxes.set(id, encodeMessage('Sandbox', { metadata: { id, name, created_at_ms: Date.now() }, status: { sandbox_name: name }, phase }));
    return { id, name, phase };
  }

  async getSandbox(id: string): Promise<SandboxRow | null> {
    const payload = this.sandboxes.get(id);
    if (!payload) return null;
    const s = decodeMessage<SandboxPayload>('Sandbox', payload);
    return { id, name: s.metadata.name, phase: s.phase as PhaseValue };
  }

  async getSandboxMessage(id: string): Promise<Record<string, unknown> | null> {
    const payload = this.sandboxes.get(id);
    return payload ? decodeMessage('Sandbox', payload) : null;
  }

  async writePhase(sandboxId: string, phase: PhaseValue, replica: string, reason: string): Promise<boolean> {
    const payload = this.sandboxes.get(sandboxId);
    if (!payload) return false;
    const s = decodeMessage<SandboxPayload>('Sandbox', payload);
    s.phase = phase;
    this.sandboxes.set(sandboxId, encodeMessage('Sandbox', s));
    this.history.push({ seq: this.history.length + 1, sandboxId, phase, replica, reason });
    return true;
  }

  async phaseHistory(sandboxId: string): Promise<PhaseWrite[]> {
    return this.history.filter((h) => h.sandboxId === sandboxId);
  }

  async createSshSession(sandboxId: string, ttlSecs: number): Promise<SshSessionRow> {
    const token = randomUUID();
    const expiresAtMs = ttlSecs > 0 ? Date.now() + ttlSecs * 1000 : 0;
    this.sessions.set(token, encodeMessage('SshSession', { metadata: { id: token, name: `ssh-${token.slice(0, 8)}` }, sandbox_id: sandboxId, token, expires_at_ms: expiresAtMs, revoked: false }));
    return { token, sandboxId, expiresAtMs, revoked: false };
  }

  async getSshSession(token: string): Promise<SshSessionRow | null> {
    const payload = this.sessions.get(token);
    if (!payload) return null;
    const s = decodeMessage<{ sandbox_id: string; expires_at_ms: number; revoked: boolean }>('SshSession', payload);
    return { token, sandboxId: s.sandbox_id, expiresAtMs: Number(s.expires_at_ms), revoked: s.revoked };
  }

  async updateSshSession(token: string, patch: { revoked?: boolean; expiresAtMs?: number }): Promise<void> {
    const cur = await this.getSshSession(token);
    if (!cur) throw new Error(`no ssh_session ${token}`);
    this.sessions.set(token, encodeMessage('SshSession', { metadata: { id: token }, sandbox_id: cur.sandboxId, token, expires_at_ms: patch.expiresAtMs ?? cur.expiresAtMs, revoked: patch.revoked ?? cur.revoked }));
  }
}
