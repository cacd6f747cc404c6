// Owner resolution: which replica a sandbox-scoped request must reach (DESIGN §2, §4).
import type { Logger } from 'pino';
import type { SidecarMetrics } from '../metrics/registry.ts';
import type { OwnershipStore } from '../ownership/types.ts';

export type Target =
  | { kind: 'local'; epoch: number | null; reason: 'owner' | 'no-owner' }
  | { kind: 'peer'; replicaId: string; peerUrl: string; epoch: number };

/** Supervisor sessions whose control stream passes through this sidecar, by sandbox. */
export class LocalSessions {
  private readonly epochs = new Map<string, number>();

  set(sandboxId: string, epoch: number): void {
    this.epochs.set(sandboxId, epoch);
  }

  /** Forgets the session only if it is still the given epoch (a newer one may have replaced it). */
  deleteIf(sandboxId: string, epoch: number): boolean {
    if (this.epochs.get(sandboxId) !== epoch) return false;
    this.epochs.delete(sandboxId);
    return true;
  }

  epoch(sandboxId: string): number | undefined {
    return this.epochs.get(sandboxId);
  }

  get size(): number {
    return this.epochs.size;
  }

  entries(): Array<[string, number]> {
    return [...this.epochs];
  }
}

export class OwnerRouter {
  constructor(
    private readonly store: OwnershipStore,
    private readonly local: LocalSessions,
    private readonly metrics: SidecarMetrics,
    private readonly logger: Logger,
  ) {}

  /**
   * Resolves the target for a sandbox. A session held here always wins (it is the freshest
   * knowledge there is); otherwise the ownership store decides. No live owner → local gateway,
   * which answers exactly as it would without us.
   */
  async resolve(sandboxId: string, opts: { fresh?: boolean } = {}): Promise<Target> {
    const localEpoch = this.local.epoch(sandboxId);
    let result;
    try {
      result = await this.store.lookup(sandboxId, opts);
    } catch (err) {
      this.logger.warn({ err, sandbox: sandboxId }, 'owner lookup failed; routing to the local gateway');
      return { kind: 'local', epoch: localEpoch ?? null, reason: 'no-owner' };
    }
    this.metrics.ownerLookupsTotal.inc({ source: result.source });
    const owner = result.owner;
    if (!owner) {
      return { kind: 'local', epoch: localEpoch ?? null, reason: localEpoch !== undefined ? 'owner' : 'no-owner' };
    }
    if (owner.replicaId === this.store.replicaId) return { kind: 'local', epoch: owner.epoch, reason: 'owner' };
    if (localEpoch !== undefined && localEpoch >= owner.epoch) {
      // Our claim is at least as new as what the cache says: trust the live session.
      return { kind: 'local', epoch: localEpoch, reason: 'owner' };
    }
    return { kind: 'peer', replicaId: owner.replicaId, peerUrl: owner.peerUrl, epoch: owner.epoch };
  }
}
