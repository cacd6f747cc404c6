// The whole cluster as `status` and the live page show it: the replica table from Postgres (judged
// on the database clock), owner counts, the gateway's reconciler lease, the largest limit users
// from Redis (counts only, never tokens), and each live replica's own runtime numbers over the peer
// port. Used by the sidecar's admin endpoint and by the CLI talking to the stores directly.
import type pg from 'pg';
import type { Redis } from 'ioredis';
import type { ReplicaRuntime } from './inspect.ts';
import type { PeerInspectAnswer } from './peer-inspect.ts';

export interface StatusSources {
  /** The sidecar's own tables (ohs_replicas, ohs_owners). */
  pg: Pick<pg.Pool, 'query'> | null;
  leaseTtlMs: number;
  /** Redis with the limit slots; null when not configured. */
  redis: Pick<Redis, 'scan' | 'zcount' | 'time' | 'ping'> | null;
  /** Prefix of the limit slot keys: `${redisKeyPrefix}limits:`. */
  limitKeyPrefix: string;
  /** Who holds the gateway's reconciler lease (2026-08 on Postgres); undefined: unknown. */
  reconcilerLease: () => Promise<{ holder: string; updatedAtMs: number } | null | undefined>;
  /** A replica's own view; rejects when it cannot be asked. Absent: runtime columns stay empty. */
  peerView?: (replica: { replicaId: string; peerUrl: string }, sandboxId?: string) => Promise<PeerInspectAnswer>;
  /** Embedded mode: the only replica, without a database. */
  embedded?: { replicaId: string; view: () => Promise<PeerInspectAnswer> };
}

export interface ReplicaStatus {
  replicaId: string;
  state: string;
  live: boolean;
  heartbeatAgeMs: number | null;
  /** Negative: expired that long ago. */
  leaseLeftMs: number | null;
  version: string;
  peerUrl: string;
  /** Owner rows naming this replica. */
  owned: number;
  /** Sessions the replica reported with its last heartbeat. */
  sessionsReported: number;
  startedAgeMs: number | null;
  runtime: ReplicaRuntime | null;
  runtimeError: string | null;
}

export interface LimitUser {
  rule: string;
  /** A sandbox id, or `token sha256-…` (the digest Redis holds, shortened; never the token). */
  key: string;
  held: number;
}

export interface ClusterStatus {
  generatedAtMs: number;
  healthy: boolean;
  /** Why the cluster is unhealthy (non-zero exit of `status`). */
  problems: string[];
  /** Worth a look, not unhealthy. */
  warnings: string[];
  /** postgres null: none (embedded mode, an in-memory store); redis null: not configured. */
  store: { postgres: boolean | null; redis: boolean | null };
  leaseHolder: { holder: string; renewedAgoMs: number } | null;
  replicas: ReplicaStatus[];
  totals: {
    replicas: number;
    live: number;
    ownedSandboxes: number;
    /** Owner rows whose replica's lease expired. */
    orphanedOwners: number;
    tunnels: number | null;
    streams: number | null;
    heldRequests: number | null;
    pendingStoreWrites: number | null;
  };
  /** Policy in force on each replica that answered (global, local-split, …). */
  limitPolicies: Record<string, string>;
  topLimitUsers: LimitUser[];
}

interface ReplicaRow {
  replica_id: string;
  peer_url: string;
  state: string;
  sessions: number;
  version: string;
  heartbeat_age_ms: number;
  started_age_ms: number;
  owned: number;
}

const REPLICAS_SQL = `
  SELECT r.replica_id, r.peer_url, r.state, r.sessions, r.version,
         (extract(epoch FROM now() - r.heartbeat_at) * 1000)::float8 AS heartbeat_age_ms,
         (extract(epoch FROM now() - r.started_at) * 1000)::float8 AS started_age_ms,
         (SELECT count(*) FROM ohs_owners o WHERE o.replica_id = r.replica_id)::int AS owned
  FROM ohs_replicas r ORDER BY r.replica_id`;

const MAX_SCANNED_KEYS = 10_000;
const TOP_LIMIT_USERS = 10;

/** The largest holders of limit slots, by live slot count. Digests stay digests. */
export async function topLimitUsers(redis: NonNullable<StatusSources['redis']>, limitKeyPrefix: string, n = TOP_LIMIT_USERS): Promise<LimitUser[]> {
  const [sec, usec] = await redis.time();
  const nowMs = Number(sec) * 1000 + Math.floor(Number(usec) / 1000);
  const prefix = `${limitKeyPrefix}slots:`;
  const out: LimitUser[] = [];
  let cursor = '0';
  let scanned = 0;
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 500);
    cursor = next;
    const batch = keys.slice(0, Math.max(0, MAX_SCANNED_KEYS - scanned));
    scanned += batch.length;
    // One round trip per scan batch: the counts are sent together on the one connection.
    const counts = await Promise.all(batch.map((key) => redis.zcount(key, `(${nowMs}`, '+inf')));
    batch.forEach((key, i) => {
      const rest = key.slice(prefix.length);
      const colon = rest.indexOf(':');
      const held = counts[i] ?? 0;
      if (colon < 0 || held <= 0) return;
      const part = rest.slice(colon + 1);
      out.push({ rule: rest.slice(0, colon), key: part.startsWith('sha256-') ? `token ${part.slice(0, 15)}…` : part, held });
    });
  } while (cursor !== '0' && scanned < MAX_SCANNED_KEYS);
  return out.sort((a, b) => b.held - a.held || a.key.localeCompare(b.key)).slice(0, n);
}

function sum(values: Array<number | undefined>): number | null {
  const known = values.filter((v): v is number => v !== undefined);
  return known.length === 0 ? null : known.reduce((a, b) => a + b, 0);
}

export async function collectStatus(src: StatusSources): Promise<ClusterStatus> {
  const problems: string[] = [];
  const warnings: string[] = [];
  let replicas: ReplicaStatus[] = [];
  let postgres: boolean | null = false;
  let orphanedOwners = 0;
  let ownersWithoutReplica = 0;
  if (src.embedded) {
    postgres = null;
    const view = await src.embedded.view().catch(() => undefined);
    replicas = [
      {
        replicaId: src.embedded.replicaId,
        state: view?.runtime.draining ? 'draining' : 'active',
        live: true,
        heartbeatAgeMs: null,
        leaseLeftMs: null,
        version: view?.runtime.version ?? '',
        peerUrl: '',
        owned: view?.runtime.sessions ?? 0,
        sessionsReported: view?.runtime.sessions ?? 0,
        startedAgeMs: view ? view.runtime.uptimeMs : null,
        runtime: view?.runtime ?? null,
        runtimeError: view ? null : 'no answer',
      },
    ];
  } else if (src.pg) {
    try {
      const rows = (await src.pg.query<ReplicaRow>(REPLICAS_SQL)).rows;
      postgres = true;
      replicas = rows.map((r) => ({
        replicaId: r.replica_id,
        state: r.state,
        live: r.heartbeat_age_ms <= src.leaseTtlMs,
        heartbeatAgeMs: r.heartbeat_age_ms,
        leaseLeftMs: src.leaseTtlMs - r.heartbeat_age_ms,
        version: r.version,
        peerUrl: r.peer_url,
        owned: r.owned,
        sessionsReported: r.sessions,
        startedAgeMs: r.started_age_ms,
        runtime: null,
        runtimeError: null,
      }));
      const orphans = await src.pg.query<{ n: number; unregistered: number }>(
        `SELECT count(*)::int AS n, count(*) FILTER (WHERE r.replica_id IS NULL)::int AS unregistered
         FROM ohs_owners o LEFT JOIN ohs_replicas r ON r.replica_id = o.replica_id
         WHERE r.replica_id IS NULL OR now() - r.heartbeat_at > $1::float8 * interval '1 millisecond'`,
        [src.leaseTtlMs],
      );
      orphanedOwners = orphans.rows[0]?.n ?? 0;
      ownersWithoutReplica = orphans.rows[0]?.unregistered ?? 0;
    } catch (err) {
      problems.push(`Postgres unreachable: ${(err as Error).message}`);
    }
  } else {
    problems.push('no database configured');
  }

  let redis: boolean | null = null;
  let limitUsers: LimitUser[] = [];
  if (src.redis) {
    try {
      redis = (await src.redis.ping()) === 'PONG';
      limitUsers = await topLimitUsers(src.redis, src.limitKeyPrefix);
    } catch (err) {
      redis = false;
      problems.push(`Redis unreachable: ${(err as Error).message}`);
    }
  }

  if (src.peerView && !src.embedded) {
    const ask = src.peerView;
    await Promise.all(
      replicas
        .filter((r) => r.live)
        .map(async (r) => {
          try {
            r.runtime = (await ask({ replicaId: r.replicaId, peerUrl: r.peerUrl })).runtime;
          } catch (err) {
            r.runtimeError = (err as Error).message;
            warnings.push(`${r.replicaId}: its peer port did not answer (${(err as Error).message})`);
          }
        }),
    );
  }

  const lease = await src.reconcilerLease().catch(() => undefined);
  const live = replicas.filter((r) => r.live);
  if (postgres === true && live.length === 0) problems.push('no live replica');
  // A replica row deleted by hand (or never written) while owner rows still name it: no live
  // replica answers for those sandboxes until they are claimed again.
  if (ownersWithoutReplica > 0) problems.push(`${ownersWithoutReplica} sandbox(es) owned by a replica that has no row in ohs_replicas`);
  for (const r of replicas) {
    if (!r.live && r.owned > 0) problems.push(`${r.replicaId}: lease expired ${Math.round(-(r.leaseLeftMs ?? 0) / 1000)} s ago but still owns ${r.owned} sandbox(es)`);
    if (r.runtime && !r.runtime.store.postgres && !src.embedded) problems.push(`${r.replicaId}: cannot reach Postgres`);
    if (r.runtime && r.runtime.store.redis === false) warnings.push(`${r.replicaId}: cannot reach Redis (owner lookups fall back to Postgres)`);
    if (r.runtime && r.runtime.limitPolicy !== 'global' && r.runtime.limitPolicy !== 'local-full') warnings.push(`${r.replicaId}: limits degraded to ${r.runtime.limitPolicy}`);
    if (r.runtime && r.runtime.pendingStoreWrites > 0) warnings.push(`${r.replicaId}: ${r.runtime.pendingStoreWrites} ownership write(s) waiting for Postgres`);
    if (r.live && r.state === 'draining') warnings.push(`${r.replicaId}: draining`);
    if (r.runtime?.rebalancing) warnings.push(`${r.replicaId}: out of the Service while it sheds sessions towards its fair share`);
  }
  if (lease && !replicas.some((r) => r.replicaId === lease.holder && r.live)) {
    warnings.push(`the reconciler lease holder ${lease.holder} is not a live replica of this cluster`);
  }
  const runtimes = live.map((r) => r.runtime ?? undefined);
  const known = runtimes.filter((r): r is ReplicaRuntime => r !== undefined);
  const limitPolicies: Record<string, string> = {};
  for (const r of known) limitPolicies[r.replicaId] = r.limitPolicy;
  return {
    generatedAtMs: Date.now(),
    healthy: problems.length === 0,
    problems,
    warnings,
    store: { postgres, redis },
    leaseHolder: lease ? { holder: lease.holder, renewedAgoMs: Date.now() - lease.updatedAtMs } : null,
    replicas,
    totals: {
      replicas: replicas.length,
      live: live.length,
      ownedSandboxes: replicas.reduce((a, r) => a + r.owned, 0),
      orphanedOwners,
      tunnels: sum(known.map((r) => r.tunnels)),
      streams: sum(known.map((r) => r.streams)),
      heldRequests: sum(known.map((r) => r.heldRequests)),
      pendingStoreWrites: sum(known.map((r) => r.pendingStoreWrites)),
    },
    limitPolicies,
    topLimitUsers: limitUsers,
  };
}
