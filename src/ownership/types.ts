// The ownership registry: which gateway replica holds each sandbox's supervisor session (DESIGN §4).

export interface OwnerRecord {
  sandboxId: string;
  replicaId: string;
  peerUrl: string;
  /** Fencing token: grows by one on every claim of the same sandbox (1 when no row existed). */
  epoch: number;
  claimedAtMs: number;
}

export interface ReplicaRecord {
  replicaId: string;
  peerUrl: string;
  state: 'active' | 'draining';
  sessions: number;
  startedAtMs: number;
  version: string;
  /** Heartbeat within the lease TTL, judged with the database clock. */
  live: boolean;
}

export interface ClaimResult {
  owner: OwnerRecord;
  /** The record replaced, even if it was on this replica; null when the sandbox had no owner row. */
  previous: OwnerRecord | null;
}

/**
 * Which layer answered a lookup. `miss` means "no live owner" whichever layer said so, so that a
 * lookup metric labelled by source counts absent owners on their own.
 */
export type LookupSource = 'memory' | 'redis' | 'postgres' | 'miss';

export interface LookupResult {
  owner: OwnerRecord | null;
  source: LookupSource;
}

export interface StoreHealth {
  postgres: boolean;
  /** null = Redis not configured. */
  redis: boolean | null;
}

export type ReplicaState = 'active' | 'draining';

/**
 * Every layer's answer for one sandbox, read without touching any cache (for `explain`). Ages and
 * lease times of the Postgres row are judged with the database clock.
 */
export interface OwnerLayers {
  memory: { state: 'hit'; owner: OwnerRecord | null; ageMs: number; ttlLeftMs: number } | { state: 'miss' };
  redis:
    | { state: 'hit'; owner: OwnerRecord; ttlLeftMs: number }
    | { state: 'miss' }
    | { state: 'unavailable' }
    | { state: 'not-configured' };
  postgres:
    | {
        state: 'row';
        replicaId: string;
        epoch: number;
        claimedAgeMs: number;
        peerUrl: string | null;
        /** How much longer the owner's replica counts as live; negative: expired; null: no replica row. */
        leaseLeftMs: number | null;
        live: boolean;
      }
    | { state: 'none' }
    | { state: 'unavailable'; error: string };
}

export interface OwnershipStore {
  readonly replicaId: string;
  /** Creates tables idempotently, registers this replica (active), starts the heartbeat, subscribes to invalidations. */
  start(): Promise<void>;
  /** Stops timers, unsubscribes, ends connections. Owner rows stay (their lease simply runs out). */
  close(): Promise<void>;
  /** Last connect wins: this replica becomes owner at `previous epoch + 1`; publishes an invalidation. */
  claim(sandboxId: string): Promise<ClaimResult>;
  /** Deletes the owner row only if it is still (this replica, epoch); returns whether it did. */
  release(sandboxId: string, epoch: number): Promise<boolean>;
  /**
   * Memory cache → Redis → Postgres; `fresh` skips both caches. Owners whose replica's heartbeat
   * lease has expired are reported as absent (null).
   */
  lookup(sandboxId: string, opts?: { fresh?: boolean }): Promise<LookupResult>;
  /**
   * What a non-fresh `lookup` would answer from the in-process caches alone, synchronously;
   * undefined when it would have to ask Redis or Postgres. The hot path's way of routing a known
   * owner without a promise or a round trip.
   */
  cachedLookup?(sandboxId: string): LookupResult | undefined;
  /** Current epoch of the owner row in Postgres (whatever replica holds it), null when there is none. */
  ownerEpoch(sandboxId: string): Promise<number | null>;
  /**
   * Called when an invalidation for a sandbox arrives, from any replica including this one. The same
   * change may be reported more than once (it travels over Redis and Postgres), so listeners must be
   * idempotent. Returns an unsubscribe function.
   */
  onChange(listener: (sandboxId: string) => void): () => void;
  /** Replicas whose heartbeat lease has not expired (active and draining). */
  liveReplicas(): Promise<ReplicaRecord[]>;
  setState(state: ReplicaState): Promise<void>;
  /** Reported with the next heartbeat. */
  setSessionCount(n: number): void;
  health(): Promise<StoreHealth>;
  /** Each lookup layer's answer for a sandbox, side-effect free (explain). */
  inspect?(sandboxId: string): Promise<OwnerLayers>;
  /** Wall-clock ms of this replica's last heartbeat that reached the store (undefined: none yet). */
  lastHeartbeatAtMs?(): number | undefined;
  /**
   * The peer URL a replica registered (whatever its lease), null when it is not registered; briefly
   * cached, `recheck` reads again unless it was just read. Peer mTLS checks identities against it.
   */
  registeredPeerUrl?(replicaId: string, opts?: { recheck?: boolean }): Promise<string | null>;
  /**
   * Which replica this process last read as registered at a peer URL (owner rows, replica rows),
   * without asking anyone: a dial to a peer checks the certificate of the replica it means to reach.
   */
  replicaAtPeerUrl?(peerUrl: string): string | undefined;
}
