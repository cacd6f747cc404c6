// The shared ownership store: Postgres is the truth, Redis and an in-process cache sit in front of
// it, and invalidations travel over Redis pub/sub and Postgres NOTIFY (DESIGN §4).
import pg from 'pg';
import type { Logger } from 'pino';
import { OhsError } from '../errors.ts';
import { TtlCache } from './cache.ts';
import type { ReadToken } from './cache.ts';
import { createListenerSet } from './listeners.ts';
import { DEFAULT_LOOKUP_QUEUE_MAX, LookupGate } from './lookup-gate.ts';
import { createPgNotifyListener } from './pg-notify-listener.ts';
import type { PgNotifyListener } from './pg-notify-listener.ts';
import { createRedisOwnerCache } from './redis-owner-cache.ts';
import type { RedisOwnerCache } from './redis-owner-cache.ts';
import * as sql from './sql.ts';
import { WriteBatches } from './write-batches.ts';
import type {
  ClaimResult,
  LookupResult,
  OwnerLayers,
  OwnerRecord,
  OwnershipStore,
  ReplicaRecord,
  ReplicaState,
  StoreHealth,
} from './types.ts';

export interface PostgresOwnershipStoreOptions {
  databaseUrl: string;
  /** Without it, lookups go memory → Postgres and invalidations ride on NOTIFY alone. */
  redisUrl?: string;
  redisKeyPrefix?: string;
  replicaId: string;
  peerUrl: string;
  version: string;
  heartbeatIntervalMs: number;
  leaseTtlMs: number;
  /** Upper bound for in-process cache entries (also capped by the owner's remaining lease). */
  cacheTtlMs: number;
  logger: Logger;
  /** Upper bound for Redis owner entries (also capped by the owner's remaining lease). Default 30 s. */
  redisCacheTtlMs?: number;
  /** Cap of the Redis reconnect backoff. Default 1 s. */
  redisReconnectMaxMs?: number;
  /** Connections for claims, releases, state and replica listings. Default 4. */
  poolSize?: number;
  /**
   * Connections for owner lookups, which clients drive (any id, as often as they like). A pool of
   * their own, so that a flood of them queues there and never in front of a claim; the heartbeat
   * has a connection of its own besides. Default 4.
   */
  lookupPoolSize?: number;
  /**
   * Lookups that may wait for a lookup connection beyond those running; more are refused at once
   * (OHS_ERR_OVERLOADED, `onLookupRefused`). Default 1,000.
   */
  lookupQueueMax?: number;
  /** A lookup refused because the lookup queue was full. */
  onLookupRefused?: () => void;
  /** A transaction of this many claims was committed. */
  onClaimBatch?: (claims: number) => void;
  /**
   * How long "no such sandbox" (no owner row at all) is remembered for non-fresh lookups; a claim
   * anywhere invalidates it at once (pub/sub, NOTIFY). 0 turns the negative cache off. Default 5 s.
   */
  negativeCacheTtlMs?: number;
  /** Bound of the negative cache (oldest entries go first). Default 10,000. */
  negativeCacheMaxEntries?: number;
  /** Connect timeout for Postgres connections. Default 2 s. */
  pgConnectTimeoutMs?: number;
}

// An owner row whose replica's lease lapsed is cached as "no owner" only long enough to absorb a
// burst: that replica may heartbeat again, and nothing would announce it.
const LAPSED_OWNER_CACHE_MAX_MS = 250;
const DEFAULT_NEGATIVE_CACHE_TTL_MS = 5_000;
const DEFAULT_NEGATIVE_CACHE_MAX_ENTRIES = 10_000;
/** How often a replica whose Redis owner record did not check out is read again at most. */
const REPLICA_RECHECK_MS = 1_000;
// A claim retries when a concurrent first claim slipped in between its lock and its upsert.
const CLAIM_ATTEMPTS = 5;
/** Claims (or releases) written in one transaction at most, and such transactions at once. */
const CLAIM_BATCH_MAX = 500;
const CLAIM_BATCHES = 2;

interface PendingRelease {
  sandboxId: string;
  epoch: number;
  resolve: (deleted: boolean) => void;
  reject: (err: unknown) => void;
}

interface PendingClaim {
  sandboxId: string;
  resolve: (result: ClaimResult) => void;
  reject: (err: unknown) => void;
}
const HEALTH_TIMEOUT_MS = 1000;
const DEFAULT_REDIS_CACHE_TTL_MS = 30_000;
const STATEMENT_TIMEOUT_MS = 10_000;

export function createPostgresOwnershipStore(opts: PostgresOwnershipStoreOptions): OwnershipStore {
  const log = opts.logger;
  /** How long a replica's registered peer address is trusted before it is read again. */
  const PEER_URL_CACHE_MS = 10_000;
  const redisCacheTtlMs = opts.redisCacheTtlMs ?? DEFAULT_REDIS_CACHE_TTL_MS;
  const connectTimeoutMs = opts.pgConnectTimeoutMs ?? 2000;
  const memory = new TtlCache<OwnerRecord | null>({ now: () => performance.now() });
  // Unknown ids live apart from owners, so that a flood of them cannot evict the owners in use.
  const negativeTtlMs = opts.negativeCacheTtlMs ?? DEFAULT_NEGATIVE_CACHE_TTL_MS;
  const negatives = new TtlCache<true>({ now: () => performance.now(), maxEntries: opts.negativeCacheMaxEntries ?? DEFAULT_NEGATIVE_CACHE_MAX_ENTRIES });
  /** Non-fresh lookups of one id in flight share one read of Redis and Postgres. */
  const lookupsInFlight = new Map<string, Promise<LookupResult>>();
  const listeners = createListenerSet((err, sandboxId) => log.error({ err, sandbox: sandboxId }, 'ownership change listener threw'));

  let pool: pg.Pool | null = null;
  let lookupPool: pg.Pool | null = null;
  const lookupPoolSize = opts.lookupPoolSize ?? 4;
  let refusedLookups = 0;
  const lookupGate = new LookupGate(lookupPoolSize, opts.lookupQueueMax ?? DEFAULT_LOOKUP_QUEUE_MAX, (waiting) => {
    opts.onLookupRefused?.();
    if (refusedLookups++ % 1000 === 0) {
      log.warn({ waiting, refused: refusedLookups, max: opts.lookupQueueMax ?? DEFAULT_LOOKUP_QUEUE_MAX }, 'owner lookup queue full; refusing lookups until it drains (a flood of lookups?)');
    }
  });
  /** Which replica was last read as registered at a peer URL (few entries: one per replica address seen). */
  const replicaByPeerUrl = new Map<string, string>();
  function noteReplicaUrl(replicaId: string, peerUrl: string | null | undefined): void {
    if (!peerUrl) return;
    if (replicaByPeerUrl.get(peerUrl) === replicaId) return;
    replicaByPeerUrl.delete(peerUrl);
    replicaByPeerUrl.set(peerUrl, replicaId);
    if (replicaByPeerUrl.size > 10_000) replicaByPeerUrl.delete(replicaByPeerUrl.keys().next().value as string);
  }
  let heartbeatPool: pg.Pool | null = null;
  let listener: PgNotifyListener | null = null;
  let redis: RedisOwnerCache | null = null;
  let heartbeatTimer: NodeJS.Timeout | null = null;
  let heartbeatInFlight: Promise<void> | null = null;
  let heartbeatFailing = false;
  let lastHeartbeatAtMs: number | undefined;
  let state: ReplicaState = 'active';
  let sessions = 0;
  let running = false;

  function requirePool(): pg.Pool {
    if (pool === null || !running) throw new OhsError('OHS_ERR_STORE_UNAVAILABLE', 'ownership store is not running');
    return pool;
  }

  /** A statement on the lookup pool, through the bounded lookup queue. */
  function lookupQuery<R extends pg.QueryResultRow>(text: string, params: unknown[]): Promise<pg.QueryResult<R>> {
    if (lookupPool === null || !running) throw new OhsError('OHS_ERR_STORE_UNAVAILABLE', 'ownership store is not running');
    return lookupGate.run(() => {
      if (lookupPool === null || !running) throw new OhsError('OHS_ERR_STORE_UNAVAILABLE', 'ownership store is not running');
      return lookupPool.query<R>(text, params);
    });
  }

  function replicaParams(): unknown[] {
    return [opts.replicaId, opts.peerUrl, state, sessions, opts.version];
  }

  function invalidated(sandboxId: string, via: 'redis' | 'postgres'): void {
    if (!running) return;
    forget(sandboxId);
    // A NOTIFY may be the only news of a change made while Redis was unreachable from its writer.
    if (via === 'postgres' && redis !== null) void redis.invalidate(sandboxId, false);
    listeners.emit(sandboxId);
  }

  /** Drops what this process knows of a sandbox's owner; a read already under way is not joined any more. */
  function forget(sandboxId: string): void {
    memory.invalidate(sandboxId);
    negatives.invalidate(sandboxId);
    lookupsInFlight.delete(sandboxId);
  }

  function resync(): void {
    memory.clear();
    negatives.clear();
    lookupsInFlight.clear();
  }

  /** Runs `fn` inside a transaction on one pooled client; a broken client is discarded, not reused. */
  async function transaction<T>(fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
    const client = await requirePool().connect();
    let broken: Error | undefined;
    // A checked-out client has no pool error listener; an error between two queries would otherwise be unhandled.
    const onError = (err: Error): void => {
      broken = err;
    };
    client.on('error', onError);
    try {
      await client.query('BEGIN');
      const result = await fn(client);
      await client.query('COMMIT');
      return result;
    } catch (err) {
      broken ??= await client.query('ROLLBACK').then(
        () => undefined,
        (e: unknown) => (e instanceof Error ? e : new Error(String(e))),
      );
      throw err;
    } finally {
      client.off('error', onError);
      client.release(broken);
    }
  }

  async function heartbeat(): Promise<void> {
    const p = heartbeatPool;
    if (heartbeatInFlight !== null || p === null) return;
    heartbeatInFlight = (async () => {
      try {
        await p.query(sql.HEARTBEAT, replicaParams());
        lastHeartbeatAtMs = Date.now();
        if (heartbeatFailing) {
          heartbeatFailing = false;
          log.info('heartbeat recovered');
        }
      } catch (err) {
        if (!heartbeatFailing && running) {
          heartbeatFailing = true;
          log.warn({ err }, 'heartbeat failed; this replica will look dead once its lease expires');
        }
      } finally {
        heartbeatInFlight = null;
      }
    })();
    await heartbeatInFlight;
  }

  async function readPostgres(sandboxId: string, token: ReadToken, negToken: ReadToken, redisVersion: string | null): Promise<OwnerRecord | null> {
    const res = await lookupQuery<sql.LookupOwnerRow>(sql.LOOKUP_OWNER, [sandboxId, opts.leaseTtlMs]);
    const row = res.rows[0];
    if (row === undefined) {
      // Nobody ever claimed it (or it was released): only a claim changes that, and claims are announced.
      negatives.set(sandboxId, true, negativeTtlMs, negToken);
      return null;
    }
    noteReplicaUrl(row.replica_id, row.peer_url);
    const leaseLeftMs = row.lease_left_ms;
    if (row.peer_url === null || leaseLeftMs === null || leaseLeftMs < 0) {
      memory.set(sandboxId, null, Math.min(opts.cacheTtlMs, LAPSED_OWNER_CACHE_MAX_MS), token);
      return null;
    }
    const owner: OwnerRecord = {
      sandboxId,
      replicaId: row.replica_id,
      peerUrl: row.peer_url,
      epoch: row.epoch,
      claimedAtMs: row.claimed_at_ms,
    };
    // Cached entries never outlive the lease as the database saw it, so a replica that stops
    // heartbeating drops out of every cache within the lease TTL.
    const stored = memory.set(sandboxId, owner, Math.min(opts.cacheTtlMs, leaseLeftMs), token);
    if (stored && redis !== null && redisVersion !== null) {
      await redis.write(owner, Math.min(redisCacheTtlMs, leaseLeftMs), redisVersion);
    }
    return owner;
  }

  async function start(): Promise<void> {
    if (running) throw new OhsError('OHS_ERR_INTERNAL', 'ownership store already started');
    const newPool = (max: number, applicationName: string): pg.Pool => {
      const p = new pg.Pool({
        connectionString: opts.databaseUrl,
        max,
        connectionTimeoutMillis: connectTimeoutMs,
        idleTimeoutMillis: 30_000,
        allowExitOnIdle: true,
        keepAlive: true,
        // Server-side bounds, so that a stuck statement or an abandoned transaction cannot hold row locks.
        statement_timeout: STATEMENT_TIMEOUT_MS,
        idle_in_transaction_session_timeout: STATEMENT_TIMEOUT_MS,
        application_name: applicationName,
      });
      p.on('error', (err) => log.warn({ err, pool: applicationName }, 'idle postgres connection failed'));
      return p;
    };
    pool = newPool(opts.poolSize ?? 4, 'openshell-ha-sidecar');
    lookupPool = newPool(lookupPoolSize, 'openshell-ha-sidecar-lookup');
    // The lease is this replica's life: its renewal never waits for a connection behind anything else.
    heartbeatPool = newPool(1, 'openshell-ha-sidecar-heartbeat');
    running = true;
    try {
      await transaction(async (c) => {
        await c.query(sql.LOCK_SCHEMA);
        for (const stmt of sql.CREATE_SCHEMA) await c.query(stmt);
      });
      const dropped = await transaction(async (c) => {
        const res = await c.query<{ sandbox_id: string }>(sql.DROP_OWN_OWNERS, [opts.replicaId]);
        await c.query(sql.REGISTER_REPLICA, replicaParams());
        lastHeartbeatAtMs = Date.now();
        return res.rows.map((r) => r.sandbox_id);
      });
      if (dropped.length > 0) log.info({ count: dropped.length }, 'dropped ownerships left by a previous run of this replica');

      listener = createPgNotifyListener({
        databaseUrl: opts.databaseUrl,
        channel: sql.NOTIFY_CHANNEL,
        logger: log,
        connectTimeoutMs,
        onNotification: (sandboxId) => invalidated(sandboxId, 'postgres'),
        onResync: resync,
      });
      await listener.start();

      if (opts.redisUrl !== undefined) {
        redis = createRedisOwnerCache({
          url: opts.redisUrl,
          keyPrefix: opts.redisKeyPrefix ?? 'ohs:',
          logger: log,
          clientName: opts.replicaId,
          reconnectMaxMs: opts.redisReconnectMaxMs,
          onInvalidation: (sandboxId) => invalidated(sandboxId, 'redis'),
          onResync: resync,
        });
        await redis.start();
        for (const id of dropped) await redis.invalidate(id, true);
      }

      heartbeatTimer = setInterval(() => void heartbeat(), opts.heartbeatIntervalMs);
      heartbeatTimer.unref();
      log.info({ redis: redis !== null, leaseTtlMs: opts.leaseTtlMs }, 'ownership store started');
    } catch (err) {
      await close();
      throw wrap('start', undefined, err);
    }
  }

  async function close(): Promise<void> {
    running = false;
    if (heartbeatTimer !== null) {
      clearInterval(heartbeatTimer);
      heartbeatTimer = null;
    }
    await heartbeatInFlight;
    const l = listener;
    const r = redis;
    const pools = [pool, lookupPool, heartbeatPool];
    listener = null;
    redis = null;
    pool = null;
    lookupPool = null;
    heartbeatPool = null;
    listeners.clear();
    memory.clear();
    negatives.clear();
    lookupsInFlight.clear();
    await Promise.all([l?.close(), r?.close()]);
    await Promise.all(pools.map((p) => p?.end()));
  }

  function rejectAll(batch: { reject: (err: unknown) => void }[], err: unknown): void {
    for (const item of batch) item.reject(err);
  }

  /**
   * Claims wait here and are written in batches: one transaction (one commit, so one WAL flush)
   * for every claim that arrived while the previous batch ran. One at a time, a burst of
   * supervisors reconnecting at once (a replica died) was written at a few hundred claims per
   * second, and most of the burst outwaited the pool (bench/claim-burst.ts). A sandbox is in at most
   * one batch at a time, so two claims of one sandbox commit in the order they were made.
   */
  const claims = new WriteBatches<PendingClaim>({
    maxBatch: CLAIM_BATCH_MAX,
    concurrent: CLAIM_BATCHES,
    key: (c) => c.sandboxId,
    write: (batch) => writeClaims(batch),
    failed: rejectAll,
  });

  function claim(sandboxId: string): Promise<ClaimResult> {
    requirePool();
    return new Promise<ClaimResult>((resolve, reject) => claims.push({ sandboxId, resolve, reject }));
  }

  async function writeClaims(batch: PendingClaim[]): Promise<void> {
    const ids = batch.map((c) => c.sandboxId);
    let written: Map<string, ClaimResult>;
    let beatAt: number | undefined;
    for (let attempt = 1; ; attempt++) {
      const now = Date.now();
      // A replica that can write a claim is alive: when its lease as last written has run half its
      // TTL (a heartbeat failed, or Postgres was away), the claim renews it in the same transaction,
      // so the claim is not hidden behind a lapsed heartbeat. Not on every claim: a renewal updates
      // this replica's one row and holds its lock until commit.
      beatAt = lastHeartbeatAtMs === undefined || now - lastHeartbeatAtMs > opts.leaseTtlMs / 2 ? now : undefined;
      try {
        if (!running) throw new OhsError('OHS_ERR_STORE_UNAVAILABLE', 'ownership store is not running');
        written = await transaction(async (c) => {
          if (beatAt !== undefined) await c.query(sql.HEARTBEAT, replicaParams());
          const prev = new Map((await c.query<sql.LockedOwnerRow>(sql.LOCK_OWNERS, [ids])).rows.map((r) => [r.sandbox_id, r]));
          const ups = (await c.query<sql.UpsertOwnerRow>(sql.UPSERT_OWNERS, [ids, opts.replicaId])).rows;
          if (ups.length !== ids.length) throw new OhsError('OHS_ERR_INTERNAL', `claim upsert returned ${ups.length} rows for ${ids.length} claims`);
          const out = new Map<string, ClaimResult>();
          for (const up of ups) {
            const p = prev.get(up.sandbox_id);
            // No row to lock, yet the upsert updated one: a concurrent first claim won the insert.
            // Our view of "previous" is wrong, so undo and try again (the row now exists and will be locked).
            if (p === undefined && up.epoch !== 1) throw new ClaimRace();
            if (p !== undefined) noteReplicaUrl(p.replica_id, p.peer_url);
            out.set(up.sandbox_id, {
              owner: { sandboxId: up.sandbox_id, replicaId: opts.replicaId, peerUrl: opts.peerUrl, epoch: up.epoch, claimedAtMs: up.claimed_at_ms },
              // The previous replica's row may be gone (never for a live replica); '' = unknown.
              previous: p === undefined ? null : { sandboxId: up.sandbox_id, replicaId: p.replica_id, peerUrl: p.peer_url ?? '', epoch: p.epoch, claimedAtMs: p.claimed_at_ms },
            });
          }
          return out;
        });
        break;
      } catch (err) {
        if (err instanceof ClaimRace && attempt < CLAIM_ATTEMPTS) {
          log.debug({ claims: ids.length, attempt }, 'claim raced with a concurrent first claim; retrying');
          continue;
        }
        throw err; // every claim of the batch fails with it (the batcher's `failed`)
      }
    }
    if (beatAt !== undefined && (lastHeartbeatAtMs === undefined || lastHeartbeatAtMs < beatAt)) lastHeartbeatAtMs = beatAt;
    opts.onClaimBatch?.(batch.length);
    await Promise.all(
      batch.map(async (c) => {
        try {
          forget(c.sandboxId);
          if (redis !== null) await redis.invalidate(c.sandboxId, true);
          c.resolve(written.get(c.sandboxId) as ClaimResult);
        } catch (err) {
          c.reject(err);
        }
      }),
    );
  }

  /**
   * Releases are written in batches too, one statement for every release that arrived while the
   * previous one ran: when a node drops, all of its supervisors' sessions end at once. Each release
   * is conditional on its epoch, so their order against claims does not matter.
   */
  const releases = new WriteBatches<PendingRelease>({
    maxBatch: CLAIM_BATCH_MAX,
    concurrent: CLAIM_BATCHES,
    write: (batch) => writeReleases(batch),
    failed: rejectAll,
  });

  function release(sandboxId: string, epoch: number): Promise<boolean> {
    requirePool();
    return new Promise<boolean>((resolve, reject) => releases.push({ sandboxId, epoch, resolve, reject }));
  }

  async function writeReleases(batch: PendingRelease[]): Promise<void> {
    // A failure here fails every release of the batch (the batcher's `failed`).
    if (!running) throw new OhsError('OHS_ERR_STORE_UNAVAILABLE', 'ownership store is not running');
    const params = [batch.map((r) => r.sandboxId), batch.map((r) => r.epoch), opts.replicaId];
    const released = new Set<string>();
    for (const row of (await requirePool().query<sql.ReleasedOwnerRow>(sql.RELEASE_OWNERS, params)).rows) released.add(`${row.epoch} ${row.sandbox_id}`);
    await Promise.all(
      batch.map(async (r) => {
        try {
          const deleted = released.has(`${r.epoch} ${r.sandboxId}`);
          if (deleted) {
            forget(r.sandboxId);
            if (redis !== null) await redis.invalidate(r.sandboxId, true);
          }
          r.resolve(deleted);
        } catch (err) {
          r.reject(err);
        }
      }),
    );
  }

  const MISS: LookupResult = Object.freeze({ owner: null, source: 'miss' });

  function cachedLookup(sandboxId: string): LookupResult | undefined {
    if (!running) return undefined;
    const hit = memory.get(sandboxId);
    if (hit !== undefined) return hit.value === null ? MISS : { owner: hit.value, source: 'memory' };
    if (negatives.get(sandboxId) !== undefined) return MISS;
    return undefined;
  }

  function lookup(sandboxId: string, fresh: boolean): Promise<LookupResult> {
    requirePool();
    if (fresh) return lookupThrough(sandboxId, true);
    const cached = cachedLookup(sandboxId);
    if (cached !== undefined) return Promise.resolve(cached);
    const inFlight = lookupsInFlight.get(sandboxId);
    if (inFlight !== undefined) return inFlight;
    const p = lookupThrough(sandboxId, false).finally(() => {
      if (lookupsInFlight.get(sandboxId) === p) lookupsInFlight.delete(sandboxId);
    });
    lookupsInFlight.set(sandboxId, p);
    return p;
  }

  /** Redis → Postgres, past the in-process caches. */
  async function lookupThrough(sandboxId: string, fresh: boolean): Promise<LookupResult> {
    const token = memory.beginRead();
    const negToken = negatives.beginRead();
    let redisVersion: string | null = null;
    let redisOwner: OwnerRecord | null = null;
    if (redis !== null) {
      const read = await redis.read(sandboxId);
      if (read.kind === 'hit' && !(await liveRegisteredPeer(read.owner))) {
        // Whoever can write Redis must not be able to receive forwarded traffic (or the peer
        // secret): an owner is believed only if its replica is live in Postgres at that peer address.
        poisoned++;
        if (poisoned === 1 || poisoned % 100 === 0) {
          log.warn({ sandbox: sandboxId, replica: read.owner.replicaId, count: poisoned }, 'owner record in Redis names a replica that is not live at that peer address in Postgres; ignoring it and reading Postgres');
        }
        await redis.invalidate(sandboxId, false).catch(() => undefined);
      } else if (read.kind === 'hit') {
        if (!fresh) {
          memory.set(sandboxId, read.owner, Math.min(opts.cacheTtlMs, read.ttlMs), token);
          return { owner: read.owner, source: 'redis' };
        }
        redisOwner = read.owner;
      }
      if (read.kind === 'miss') redisVersion = read.version;
    }
    const owner = await readPostgres(sandboxId, token, negToken, redisVersion);
    // Fresh lookups follow a "not owner" answer, i.e. a cache that was wrong: correct it for everyone.
    if (redisOwner !== null && redis !== null && !sameOwner(redisOwner, owner)) await redis.invalidate(sandboxId, true);
    return owner === null ? { owner: null, source: 'miss' } : { owner, source: 'postgres' };
  }

  /** Registered peer addresses and lease ends by replica, read from Postgres and kept briefly. */
  const replicas = new Map<string, { url: string | null; liveUntilMs: number; atMs: number }>();
  let poisoned = 0;
  /** A replica's registration, from the cache unless it is old, or doubted (`recheck`) and not just read. */
  async function replicaEntry(replicaId: string, recheck: boolean): Promise<{ url: string | null; liveUntilMs: number; atMs: number }> {
    const now = performance.now();
    let entry = replicas.get(replicaId);
    if (!entry || now - entry.atMs > PEER_URL_CACHE_MS || (recheck && now - entry.atMs > REPLICA_RECHECK_MS)) {
      const row = (await lookupQuery<sql.ReplicaLeaseRow>(sql.REPLICA_LEASE, [replicaId, opts.leaseTtlMs])).rows[0];
      noteReplicaUrl(replicaId, row?.peer_url);
      // The lease end, as the database clock saw it, carried over to ours as time left.
      entry = { url: row?.peer_url ?? null, liveUntilMs: row === undefined ? 0 : now + row.lease_left_ms, atMs: now };
      replicas.delete(replicaId);
      replicas.set(replicaId, entry);
      if (replicas.size > 10_000) replicas.delete(replicas.keys().next().value as string);
    }
    return entry;
  }

  async function liveRegisteredPeer(owner: OwnerRecord): Promise<boolean> {
    const believable = (e: { url: string | null; liveUntilMs: number }): boolean => e.url === owner.peerUrl && performance.now() < e.liveUntilMs;
    const entry = await replicaEntry(owner.replicaId, false);
    return believable(entry) || believable(await replicaEntry(owner.replicaId, true));
  }

  async function ownerEpoch(sandboxId: string): Promise<number | null> {
    const res = await requirePool().query<{ epoch: number }>(sql.OWNER_EPOCH, [sandboxId]);
    return res.rows[0]?.epoch ?? null;
  }

  async function liveReplicas(): Promise<ReplicaRecord[]> {
    const res = await requirePool().query<sql.ReplicaRow>(sql.LIVE_REPLICAS, [opts.leaseTtlMs]);
    for (const r of res.rows) noteReplicaUrl(r.replica_id, r.peer_url);
    return res.rows.map((r) => ({
      replicaId: r.replica_id,
      peerUrl: r.peer_url,
      state: r.state === 'draining' ? 'draining' : 'active',
      sessions: r.sessions,
      startedAtMs: r.started_at_ms,
      version: r.version,
      live: true,
    }));
  }

  async function inspect(sandboxId: string): Promise<OwnerLayers> {
    const cached = memory.peek(sandboxId);
    const memoryLayer: OwnerLayers['memory'] = cached === undefined ? { state: 'miss' } : { state: 'hit', owner: cached.value, ageMs: cached.ageMs, ttlLeftMs: cached.ttlLeftMs };
    let redisLayer: OwnerLayers['redis'] = { state: 'not-configured' };
    if (redis !== null) {
      const read = await redis.read(sandboxId);
      redisLayer = read.kind === 'hit' ? { state: 'hit', owner: read.owner, ttlLeftMs: read.ttlMs } : read.kind === 'miss' ? { state: 'miss' } : { state: 'unavailable' };
    }
    let postgresLayer: OwnerLayers['postgres'];
    try {
      const row = (await lookupQuery<sql.InspectOwnerRow>(sql.INSPECT_OWNER, [sandboxId, opts.leaseTtlMs])).rows[0];
      postgresLayer =
        row === undefined
          ? { state: 'none' }
          : {
              state: 'row',
              replicaId: row.replica_id,
              epoch: row.epoch,
              claimedAgeMs: row.claimed_age_ms,
              peerUrl: row.peer_url,
              leaseLeftMs: row.lease_left_ms,
              live: row.peer_url !== null && row.lease_left_ms !== null && row.lease_left_ms >= 0,
            };
    } catch (err) {
      postgresLayer = { state: 'unavailable', error: err instanceof Error ? err.message : String(err) };
    }
    return { memory: memoryLayer, redis: redisLayer, postgres: postgresLayer };
  }

  async function health(): Promise<StoreHealth> {
    const p = pool;
    const r = redis;
    const [postgres, redisOk] = await Promise.all([
      p === null || !running ? Promise.resolve(false) : withTimeout(p.query('SELECT 1').then(() => true), HEALTH_TIMEOUT_MS),
      r === null ? Promise.resolve(null) : withTimeout(r.ping(), HEALTH_TIMEOUT_MS),
    ]);
    return { postgres, redis: opts.redisUrl === undefined ? null : redisOk === true };
  }

  return {
    replicaId: opts.replicaId,
    start,
    close,
    claim: (sandboxId) => guard('claim', sandboxId, () => claim(sandboxId)),
    release: (sandboxId, epoch) => guard('release', sandboxId, () => release(sandboxId, epoch)),
    lookup: (sandboxId, lookupOpts) => guard('lookup', sandboxId, () => lookup(sandboxId, lookupOpts?.fresh === true)),
    cachedLookup,
    ownerEpoch: (sandboxId) => guard('ownerEpoch', sandboxId, () => ownerEpoch(sandboxId)),
    onChange: (listener) => listeners.add(listener),
    liveReplicas: () => guard('liveReplicas', undefined, liveReplicas),
    async setState(next) {
      state = next; // also carried by every heartbeat, so a failed update here is repaired later
      await guard('setState', undefined, () => requirePool().query(sql.SET_STATE, [opts.replicaId, next]));
    },
    setSessionCount(n) {
      sessions = Math.max(0, Math.floor(n));
    },
    health,
    inspect,
    lastHeartbeatAtMs: () => lastHeartbeatAtMs,
    registeredPeerUrl: (replicaId, o) => guard('registeredPeerUrl', undefined, async () => (await replicaEntry(replicaId, o?.recheck === true)).url),
    replicaAtPeerUrl: (peerUrl) => replicaByPeerUrl.get(peerUrl),
  };
}

/** Store failures surface as OHS_ERR_STORE_UNAVAILABLE (503 / UNAVAILABLE) with the driver error as cause. */
function wrap(op: string, sandboxId: string | undefined, err: unknown): OhsError {
  if (err instanceof OhsError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new OhsError('OHS_ERR_STORE_UNAVAILABLE', `ownership ${op} failed: ${message}`, {
    cause: err,
    details: sandboxId === undefined ? { op } : { op, sandbox: sandboxId },
  });
}

async function guard<T>(op: string, sandboxId: string | undefined, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw wrap(op, sandboxId, err);
  }
}

function sameOwner(a: OwnerRecord, b: OwnerRecord | null): boolean {
  return b !== null && a.replicaId === b.replicaId && a.epoch === b.epoch;
}

/** Rolls a claim back so that it can be retried with a consistent view of the previous owner. */
class ClaimRace extends Error {
  constructor() {
    super('claim raced with a concurrent first claim');
  }
}

async function withTimeout(p: Promise<boolean>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p.catch(() => false),
      new Promise<boolean>((resolve) => {
        timer = setTimeout(() => resolve(false), ms);
        timer.unref();
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
