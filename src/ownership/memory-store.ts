// Embedded mode (DESIGN §7): no database, one replica, ownership lives in this process only.
import { OhsError } from '../errors.ts';
import { createListenerSet } from './listeners.ts';
import type {
  ClaimResult,
  LookupResult,
  OwnerRecord,
  OwnershipStore,
  ReplicaRecord,
  ReplicaState,
  StoreHealth,
} from './types.ts';

export interface MemoryOwnershipStoreOptions {
  replicaId: string;
  peerUrl: string;
  version: string;
  /** Injected for tests; defaults to Date.now. */
  now?: () => number;
}

export function createMemoryOwnershipStore(opts: MemoryOwnershipStoreOptions): OwnershipStore {
  const now = opts.now ?? Date.now;
  const owners = new Map<string, OwnerRecord>();
  const listeners = createListenerSet();
  let state: ReplicaState = 'active';
  let sessions = 0;
  let startedAtMs = now();
  let running = false;

  function assertRunning(): void {
    if (!running) throw new OhsError('OHS_ERR_STORE_UNAVAILABLE', 'ownership store is not running');
  }

  return {
    replicaId: opts.replicaId,

    async start() {
      // Same contract as the shared store: a restarted replica holds no sessions yet.
      owners.clear();
      state = 'active';
      startedAtMs = now();
      running = true;
    },

    async close() {
      running = false;
      listeners.clear();
    },

    async claim(sandboxId): Promise<ClaimResult> {
      assertRunning();
      const previous = owners.get(sandboxId) ?? null;
      const owner: OwnerRecord = {
        sandboxId,
        replicaId: opts.replicaId,
        peerUrl: opts.peerUrl,
        epoch: (previous?.epoch ?? 0) + 1,
        claimedAtMs: now(),
      };
      owners.set(sandboxId, owner);
      listeners.emit(sandboxId);
      return { owner: { ...owner }, previous: previous === null ? null : { ...previous } };
    },

    async release(sandboxId, epoch) {
      assertRunning();
      const current = owners.get(sandboxId);
      if (current === undefined || current.replicaId !== opts.replicaId || current.epoch !== epoch) return false;
      owners.delete(sandboxId);
      listeners.emit(sandboxId);
      return true;
    },

    async lookup(sandboxId): Promise<LookupResult> {
      assertRunning();
      const owner = owners.get(sandboxId);
      return owner === undefined ? { owner: null, source: 'miss' } : { owner: { ...owner }, source: 'memory' };
    },

    cachedLookup(sandboxId): LookupResult | undefined {
      try {
        assertRunning();
      } catch {
        return undefined;
      }
      const owner = owners.get(sandboxId);
      return owner === undefined ? undefined : { owner: { ...owner }, source: 'memory' };
    },

    async ownerEpoch(sandboxId) {
      assertRunning();
      return owners.get(sandboxId)?.epoch ?? null;
    },

    onChange(listener) {
      return listeners.add(listener);
    },

    async liveReplicas(): Promise<ReplicaRecord[]> {
      assertRunning();
      return [
        { replicaId: opts.replicaId, peerUrl: opts.peerUrl, state, sessions, startedAtMs, version: opts.version, live: true },
      ];
    },

    async setState(next) {
      assertRunning();
      state = next;
    },

    setSessionCount(n) {
      sessions = n;
    },

    async inspect(sandboxId) {
      const owner = owners.get(sandboxId);
      return {
        memory: owner === undefined ? { state: 'miss' } : { state: 'hit', owner: { ...owner }, ageMs: now() - owner.claimedAtMs, ttlLeftMs: Number.POSITIVE_INFINITY },
        redis: { state: 'not-configured' },
        postgres: { state: 'none' },
      };
    },

    lastHeartbeatAtMs: () => (running ? now() : undefined),

    async health(): Promise<StoreHealth> {
      // No database to be unhealthy: the in-process store is the whole truth.
      return { postgres: running, redis: null };
    },
  };
}
