// SQL for the sidecar's own tables (DESIGN §4). The gateway's tables are never touched here.
//
// Every liveness judgement uses the database clock (`now()`), so replicas never compare their own
// clocks. Timestamps leave the database as epoch milliseconds (float8, exact for ms precision) and
// bigint epochs as float8 too, so that pg hands us JS numbers instead of strings.

export const NOTIFY_CHANNEL = 'ohs_owners';

/** pg_advisory_xact_lock(int4, int4) keys: a namespace of our own, then the lock within it. */
export const ADVISORY_NAMESPACE = 0x6f6873; // "ohs"
export const ADVISORY_SCHEMA_LOCK = 1;

export const LOCK_SCHEMA = `SELECT pg_advisory_xact_lock(${ADVISORY_NAMESPACE}, ${ADVISORY_SCHEMA_LOCK})`;

// CREATE TABLE IF NOT EXISTS is not safe against a concurrent identical statement (both may try to
// insert the same pg_type row), hence the advisory lock around it.
export const CREATE_SCHEMA = [
  `CREATE TABLE IF NOT EXISTS ohs_replicas (
     replica_id   text PRIMARY KEY,
     peer_url     text NOT NULL,
     state        text NOT NULL,
     heartbeat_at timestamptz NOT NULL,
     sessions     int NOT NULL DEFAULT 0,
     started_at   timestamptz NOT NULL,
     version      text NOT NULL
   )`,
  `CREATE TABLE IF NOT EXISTS ohs_owners (
     sandbox_id text PRIMARY KEY,
     replica_id text NOT NULL,
     epoch      bigint NOT NULL,
     claimed_at timestamptz NOT NULL DEFAULT now()
   )`,
  `CREATE INDEX IF NOT EXISTS ohs_owners_replica_id_idx ON ohs_owners (replica_id)`,
];

const ms = (col: string): string => `(extract(epoch FROM ${col}) * 1000)::float8`;

/** $1 replica_id, $2 peer_url, $3 state, $4 sessions, $5 version. Restarts reset started_at. */
export const REGISTER_REPLICA = `
  INSERT INTO ohs_replicas AS r (replica_id, peer_url, state, heartbeat_at, sessions, started_at, version)
  VALUES ($1, $2, $3, now(), $4, now(), $5)
  ON CONFLICT (replica_id) DO UPDATE SET
    peer_url = EXCLUDED.peer_url, state = EXCLUDED.state, heartbeat_at = now(),
    sessions = EXCLUDED.sessions, started_at = now(), version = EXCLUDED.version`;

/**
 * Same parameters as REGISTER_REPLICA. An upsert rather than an UPDATE so that a row deleted by an
 * operator comes back on the next beat; started_at is kept.
 */
export const HEARTBEAT = `
  INSERT INTO ohs_replicas AS r (replica_id, peer_url, state, heartbeat_at, sessions, started_at, version)
  VALUES ($1, $2, $3, now(), $4, now(), $5)
  ON CONFLICT (replica_id) DO UPDATE SET
    peer_url = EXCLUDED.peer_url, state = EXCLUDED.state, heartbeat_at = now(),
    sessions = EXCLUDED.sessions, version = EXCLUDED.version`;

/** $1 replica_id, $2 state. */
export const SET_STATE = `UPDATE ohs_replicas SET state = $2 WHERE replica_id = $1`;

/** $1 replica_id. A restarted replica's gateway lost every session it had, so its old claims go. */
export const DROP_OWN_OWNERS = `
  DELETE FROM ohs_owners WHERE replica_id = $1
  RETURNING sandbox_id, pg_notify('${NOTIFY_CHANNEL}', sandbox_id)`;

/**
 * $1 sandbox_ids (distinct). Locks their current rows (those that exist) for the claims that follow
 * in the same transaction, in key order, so that two replicas' batches never wait on each other in
 * a cycle.
 */
export const LOCK_OWNERS = `
  SELECT o.sandbox_id, o.replica_id, o.epoch::float8 AS epoch, ${ms('o.claimed_at')} AS claimed_at_ms, r.peer_url
  FROM ohs_owners o LEFT JOIN ohs_replicas r ON r.replica_id = o.replica_id
  WHERE o.sandbox_id = ANY($1::text[])
  ORDER BY o.sandbox_id
  FOR UPDATE OF o`;

/**
 * $1 sandbox_ids (distinct), $2 replica_id. Last connect wins; the notifications are sent at commit.
 * Rows are written in key order, as LOCK_OWNERS locks them.
 */
export const UPSERT_OWNERS = `
  INSERT INTO ohs_owners AS o (sandbox_id, replica_id, epoch, claimed_at)
  SELECT id, $2, 1, now() FROM unnest($1::text[]) AS u(id) ORDER BY id
  ON CONFLICT (sandbox_id) DO UPDATE SET
    replica_id = EXCLUDED.replica_id, epoch = o.epoch + 1, claimed_at = now()
  RETURNING o.sandbox_id, o.epoch::float8 AS epoch, ${ms('o.claimed_at')} AS claimed_at_ms,
            pg_notify('${NOTIFY_CHANNEL}', o.sandbox_id)`;

/**
 * $1 sandbox_ids, $2 their epochs, $3 replica_id. Conditional, so a late cleanup never deletes a
 * newer owner. The rows are locked in key order first, as claims lock them (LOCK_OWNERS), so that a
 * batch of releases and a batch of claims never wait on each other in a cycle.
 */
export const RELEASE_OWNERS = `
  WITH doomed AS (
    SELECT o.sandbox_id FROM ohs_owners o
    JOIN unnest($1::text[], $2::bigint[]) AS r(sandbox_id, epoch) ON o.sandbox_id = r.sandbox_id AND o.epoch = r.epoch
    WHERE o.replica_id = $3
    ORDER BY o.sandbox_id
    FOR UPDATE OF o
  )
  DELETE FROM ohs_owners o USING doomed d
  WHERE o.sandbox_id = d.sandbox_id
  RETURNING o.sandbox_id, o.epoch::float8 AS epoch, pg_notify('${NOTIFY_CHANNEL}', o.sandbox_id)`;

export interface ReleasedOwnerRow {
  sandbox_id: string;
  epoch: number;
}

/**
 * $1 sandbox_id, $2 lease TTL in ms. lease_left_ms is how much longer the owner's replica counts
 * as live (negative: expired); a missing replica row leaves it NULL, which also means absent.
 */
export const LOOKUP_OWNER = `
  SELECT o.replica_id, o.epoch::float8 AS epoch, ${ms('o.claimed_at')} AS claimed_at_ms, r.peer_url,
         (extract(epoch FROM r.heartbeat_at - now()) * 1000)::float8 + $2::float8 AS lease_left_ms
  FROM ohs_owners o LEFT JOIN ohs_replicas r ON r.replica_id = o.replica_id
  WHERE o.sandbox_id = $1`;

/**
 * $1 replica_id, $2 lease TTL in ms. The peer address a replica registered and how much longer its
 * lease runs (negative: expired): a cached owner record is believed only for a live replica at that address.
 */
export const REPLICA_LEASE = `
  SELECT peer_url, (extract(epoch FROM heartbeat_at - now()) * 1000)::float8 + $2::float8 AS lease_left_ms
  FROM ohs_replicas WHERE replica_id = $1`;

export interface ReplicaLeaseRow {
  peer_url: string;
  lease_left_ms: number;
}

/** $1 sandbox_id. */

export const OWNER_EPOCH = `SELECT epoch::float8 AS epoch FROM ohs_owners WHERE sandbox_id = $1`;

/** $1 lease TTL in ms. */
export const LIVE_REPLICAS = `
  SELECT replica_id, peer_url, state, sessions, ${ms('started_at')} AS started_at_ms, version
  FROM ohs_replicas
  WHERE now() - heartbeat_at <= $1::float8 * interval '1 millisecond'
  ORDER BY replica_id`;

export interface LockedOwnerRow {
  sandbox_id: string;
  replica_id: string;
  epoch: number;
  claimed_at_ms: number;
  peer_url: string | null;
}

export interface UpsertOwnerRow {
  sandbox_id: string;
  epoch: number;
  claimed_at_ms: number;
}

export interface LookupOwnerRow {
  replica_id: string;
  epoch: number;
  claimed_at_ms: number;
  peer_url: string | null;
  lease_left_ms: number | null;
}

export interface ReplicaRow {
  replica_id: string;
  peer_url: string;
  state: string;
  sessions: number;
  started_at_ms: number;
  version: string;
}

/** $1 sandbox_id, $2 lease TTL in ms. LOOKUP_OWNER plus the claim's age, both on the database clock (explain). */
export const INSPECT_OWNER = `
  SELECT o.replica_id, o.epoch::float8 AS epoch, (extract(epoch FROM now() - o.claimed_at) * 1000)::float8 AS claimed_age_ms, r.peer_url,
         (extract(epoch FROM r.heartbeat_at - now()) * 1000)::float8 + $2::float8 AS lease_left_ms
  FROM ohs_owners o LEFT JOIN ohs_replicas r ON r.replica_id = o.replica_id
  WHERE o.sandbox_id = $1`;

export interface InspectOwnerRow {
  replica_id: string;
  epoch: number;
  claimed_age_ms: number;
  peer_url: string | null;
  lease_left_ms: number | null;
}
