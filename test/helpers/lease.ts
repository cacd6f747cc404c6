// Reading the 2026-08 gateway emulator's reconciler lease: the row in `objects` and each replica's
// own view on its health port (/debug/sessions).
import type pg from 'pg';
import type { Cluster } from '../../emulator/cluster.ts';
import { LEASE_OBJECT_TYPE, LEASE_SINGLETON_ID } from '../../emulator/gateway/gen2/lease.ts';
import type { ReconcilerStats } from '../../emulator/gateway/gen2/reconciler.ts';

export interface LeaseRow {
  holder: string;
  acquiredAtMs: number;
  resourceVersion: number;
  updatedAtMs: number;
  name: string;
  workspace: string;
  /** The payload as stored (JSON text). */
  payload: string;
}

export async function readLeaseRow(pool: pg.Pool): Promise<LeaseRow | null> {
  const res = await pool.query<{ payload: Buffer; resource_version: string; updated_at_ms: string; name: string; workspace: string }>(
    `SELECT payload, resource_version, updated_at_ms, name, workspace FROM objects WHERE object_type = $1 AND id = $2`,
    [LEASE_OBJECT_TYPE, LEASE_SINGLETON_ID],
  );
  const row = res.rows[0];
  if (!row) return null;
  const payload = row.payload.toString('utf8');
  const p = JSON.parse(payload) as { holder: string; acquired_at_ms: number };
  return {
    holder: p.holder,
    acquiredAtMs: p.acquired_at_ms,
    resourceVersion: Number(row.resource_version),
    updatedAtMs: Number(row.updated_at_ms),
    name: row.name,
    workspace: row.workspace,
    payload,
  };
}

export interface DebugSessions {
  replica: string;
  sandboxes: string[];
  replicaId?: string;
  leaseHolder?: boolean;
  lease?: ReconcilerStats;
}

export async function debugSessions(healthPort: number, timeoutMs = 2_000): Promise<DebugSessions> {
  const res = await fetch(`http://127.0.0.1:${healthPort}/debug/sessions`, { signal: AbortSignal.timeout(timeoutMs) });
  return (await res.json()) as DebugSessions;
}

/** Each live replica's /debug/sessions, keyed by replica name (r0, r1, …); dead replicas are left out. */
export async function clusterSessions(cluster: Cluster): Promise<Map<string, DebugSessions>> {
  const out = new Map<string, DebugSessions>();
  await Promise.all(
    cluster.replicas.map(async (r) => {
      if (!r.gateway.alive()) return;
      try {
        out.set(r.name, await debugSessions(r.gatewayHealthPort));
      } catch {
        // not answering: left out
      }
    }),
  );
  return out;
}

/** Names of the replicas that say they hold the lease right now. */
export async function selfReportedHolders(cluster: Cluster): Promise<string[]> {
  const all = await clusterSessions(cluster);
  return [...all.entries()].filter(([, d]) => d.leaseHolder === true).map(([name]) => name);
}
