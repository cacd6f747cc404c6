// The reconciler lease of the 2026-08 gateway on Postgres (compute/lease.rs@v0.0.111; reference
// §3.3, §10): one `objects` row, object_type 'reconciler_lease', id 'singleton', name
// 'reconciler-lease', workspace '', JSON payload {"holder", "acquired_at_ms"}. Taken by insert
// (MustCreate) or, once `updated_at_ms` is at least the TTL old, by a CAS on resource_version;
// renewed by a CAS rewrite of the same payload; released by a delete conditional on
// resource_version. The lease decides who runs the reconcile sweep and the driver watch, nothing else.
import { randomUUID } from 'node:crypto';
import type pg from 'pg';

export const LEASE_OBJECT_TYPE = 'reconciler_lease';
export const LEASE_SINGLETON_ID = 'singleton';
export const LEASE_SINGLETON_NAME = 'reconciler-lease';

/** Upstream's timings (lease.rs@v0.0.111:25-27, compute/mod.rs@v0.0.111:286). */
export const LEASE_TTL_MS = 30_000;
export const LEASE_RENEWAL_INTERVAL_MS = 10_000;
export const LEASE_ACQUIRE_INTERVAL_MS = 5_000;
export const RECONCILE_INTERVAL_MS = 60_000;

export interface LeaseTimings {
  ttlMs: number;
  renewMs: number;
  acquireMs: number;
  reconcileIntervalMs: number;
}

export const DEFAULT_LEASE_TIMINGS: LeaseTimings = {
  ttlMs: LEASE_TTL_MS,
  renewMs: LEASE_RENEWAL_INTERVAL_MS,
  acquireMs: LEASE_ACQUIRE_INTERVAL_MS,
  reconcileIntervalMs: RECONCILE_INTERVAL_MS,
};

/** lease.rs@v0.0.111:249-253: OPENSHELL_REPLICA_ID, else HOSTNAME, else a random UUID. */
export function replicaIdFromEnv(env: NodeJS.ProcessEnv = process.env): string {
  const explicit = env.OPENSHELL_REPLICA_ID;
  if (explicit !== undefined) return explicit;
  const host = env.HOSTNAME;
  if (host !== undefined) return host;
  return randomUUID();
}

export type LeaseErrorKind = 'already_held' | 'not_found' | 'conflict';

export class LeaseError extends Error {
  constructor(readonly kind: LeaseErrorKind) {
    super(
      kind === 'already_held'
        ? 'lease is already held by another replica'
        : kind === 'not_found'
          ? 'lease not found'
          : 'lease CAS conflict — another replica wrote first',
    );
  }
}

export interface LeaseGuard {
  resourceVersion: number;
  acquiredAtMs: number;
}

export interface LeaseRecord {
  holder: string;
  acquiredAtMs: number;
  resourceVersion: number;
  updatedAtMs: number;
}

/** Clamped at zero: an `updated_at_ms` in the future (clock skew) counts as age zero (lease.rs:261-264). */
export function leaseIsExpired(nowMs: number, updatedAtMs: number, ttlMs: number): boolean {
  return Math.max(0, nowMs - updatedAtMs) >= ttlMs;
}

function isUniqueViolation(err: unknown): boolean {
  return typeof err === 'object' && err !== null && (err as { code?: string }).code === '23505';
}

/** ReconcilerLease: the row operations, one attempt each; the loop around them is in reconciler.ts. */
export class ReconcilerLease {
  constructor(
    private readonly pool: pg.Pool,
    readonly replicaId: string,
    readonly ttlMs: number = LEASE_TTL_MS,
  ) {}

  private payload(acquiredAtMs: number): Buffer {
    return Buffer.from(JSON.stringify({ holder: this.replicaId, acquired_at_ms: acquiredAtMs }));
  }

  /** MustCreate insert; 'already_held' when the row exists. */
  async tryAcquire(): Promise<LeaseGuard> {
    const acquiredAtMs = Date.now();
    try {
      const res = await this.pool.query<{ resource_version: string }>(
        `INSERT INTO objects (object_type, id, name, workspace, payload, created_at_ms, updated_at_ms, labels, resource_version)
         VALUES ($1, $2, $3, '', $4, $5, $5, '{}'::jsonb, 1) RETURNING resource_version`,
        [LEASE_OBJECT_TYPE, LEASE_SINGLETON_ID, LEASE_SINGLETON_NAME, this.payload(acquiredAtMs), acquiredAtMs],
      );
      return { resourceVersion: Number(res.rows[0]?.resource_version ?? 1), acquiredAtMs };
    } catch (err) {
      if (isUniqueViolation(err)) throw new LeaseError('already_held');
      throw err;
    }
  }

  /** CAS over an expired row; 'already_held' while it is fresh, 'conflict' when another replica won. */
  async trySteal(): Promise<LeaseGuard> {
    const record = await this.read();
    if (!record) throw new LeaseError('not_found');
    if (!leaseIsExpired(Date.now(), record.updatedAtMs, this.ttlMs)) throw new LeaseError('already_held');
    const acquiredAtMs = Date.now();
    const rv = await this.cas(record.resourceVersion, this.payload(acquiredAtMs));
    return { resourceVersion: rv, acquiredAtMs };
  }

  async acquireOrSteal(): Promise<LeaseGuard> {
    try {
      return await this.tryAcquire();
    } catch (err) {
      if (err instanceof LeaseError && err.kind === 'already_held') return this.trySteal();
      throw err;
    }
  }

  /** Rewrites the same payload by CAS, bumping updated_at_ms and resource_version. */
  async renew(guard: LeaseGuard): Promise<void> {
    guard.resourceVersion = await this.cas(guard.resourceVersion, this.payload(guard.acquiredAtMs));
  }

  /** delete_if(resource_version): true when deleted, false when already gone, 'conflict' when someone else holds it. */
  async release(guard: LeaseGuard): Promise<boolean> {
    const res = await this.pool.query(`DELETE FROM objects WHERE object_type = $1 AND id = $2 AND resource_version = $3`, [
      LEASE_OBJECT_TYPE,
      LEASE_SINGLETON_ID,
      guard.resourceVersion,
    ]);
    if ((res.rowCount ?? 0) > 0) return true;
    if (await this.read()) throw new LeaseError('conflict');
    return false;
  }

  async read(): Promise<LeaseRecord | null> {
    const res = await this.pool.query<{ payload: Buffer; resource_version: string; updated_at_ms: string }>(
      `SELECT payload, resource_version, updated_at_ms FROM objects WHERE object_type = $1 AND id = $2`,
      [LEASE_OBJECT_TYPE, LEASE_SINGLETON_ID],
    );
    const row = res.rows[0];
    if (!row) return null;
    const p = JSON.parse(row.payload.toString('utf8')) as { holder: string; acquired_at_ms: number };
    return { holder: p.holder, acquiredAtMs: p.acquired_at_ms, resourceVersion: Number(row.resource_version), updatedAtMs: Number(row.updated_at_ms) };
  }

  private async cas(expected: number, payload: Buffer): Promise<number> {
    const res = await this.pool.query<{ resource_version: string }>(
      `UPDATE objects SET payload = $4, labels = '{}'::jsonb, updated_at_ms = $5, resource_version = resource_version + 1
       WHERE object_type = $1 AND id = $2 AND resource_version = $3 RETURNING resource_version`,
      [LEASE_OBJECT_TYPE, LEASE_SINGLETON_ID, expected, payload, Date.now()],
    );
    const row = res.rows[0];
    if (!row) throw new LeaseError('conflict');
    return Number(row.resource_version);
  }
}
