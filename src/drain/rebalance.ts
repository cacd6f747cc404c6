// Paced rebalancing (DESIGN §6): a replica holding more supervisor sessions than its fair share
// (cluster sessions / live active replicas) by more than a margin sheds one session at a time,
// jittered so that replicas never shed in lockstep, until it is within the margin. A shed supervisor
// reconnects through the Service, landing on a random replica; each shed costs it one step of its
// reconnect backoff, which never resets (reference §2.1), so a session is shed at most once per
// cooldown, and a session with relays in flight is left alone while others remain.
import type { Logger } from 'pino';
import type { SidecarMetrics } from '../metrics/registry.ts';
import type { OwnershipStore } from '../ownership/types.ts';
import type { LocalSessions } from '../routing/router.ts';

/**
 * How much one replica sheds: how many over its fair share, when it is over the margin, or when
 * another replica is under it (`fewest`: the smallest count among the active replicas) and this one
 * holds at least one session more than its fair share. Pure.
 */
export function excessSessions(mine: number, clusterTotal: number, liveActive: number, marginPct: number, fewest = mine): number {
  if (liveActive < 2 || clusterTotal === 0) return 0;
  const fair = clusterTotal / liveActive;
  const over = mine > fair * (1 + marginPct / 100);
  const someoneUnder = fewest < fair * (1 - marginPct / 100) && mine >= fair + 1;
  if (!over && !someoneUnder) return 0;
  return Math.max(0, Math.floor(mine - fair));
}

export interface Rebalancer {
  close(): void;
}

export function startRebalancer(deps: {
  localSessions: LocalSessions;
  store: OwnershipStore;
  metrics: SidecarMetrics;
  logger: Logger;
  draining: () => boolean;
  intervalMs: number;
  marginPct: number;
  cooldownMs: number;
  /** A new session is not shed before it is this old (its supervisor just moved). */
  minAgeMs?: number;
  random?: () => number;
}): Rebalancer {
  const random = deps.random ?? Math.random;
  const shedAt = new Map<string, number>();
  let timer: NodeJS.Timeout | undefined;
  let closed = false;

  const tick = async (): Promise<void> => {
    if (deps.draining()) return;
    const replicas = await deps.store.liveReplicas().catch(() => undefined);
    if (!replicas) return;
    // While any replica drains, sessions are in motion: shedding more now only adds moves.
    if (replicas.some((r) => r.state === 'draining')) return;
    const active = replicas.filter((r) => r.state === 'active');
    const self = deps.store.replicaId;
    // Parked sessions (shed, their supervisor on its way elsewhere) are not ours any more.
    const mine = deps.localSessions.held;
    // Counts come with heartbeats; this replica's own is the freshest it has.
    const total = active.reduce((sum, r) => sum + (r.replicaId === self ? mine : r.sessions), 0);
    const fair = active.length > 0 ? total / active.length : 0;
    deps.metrics.sessionImbalance.set(fair > 0 ? mine / fair : 1);
    const fewest = Math.min(...active.map((r) => (r.replicaId === self ? mine : r.sessions)));
    const excess = excessSessions(mine, total, active.length, deps.marginPct, fewest);
    if (excess === 0) return;
    const now = Date.now();
    for (const [id, at] of shedAt) if (now - at > deps.cooldownMs) shedAt.delete(id);
    const candidates = deps.localSessions
      .list()
      .filter((s) => !s.shedding && !shedAt.has(s.sandboxId) && now - s.sinceMs >= (deps.minAgeMs ?? 10_000))
      .sort((a, b) => a.relays - b.relays || a.sinceMs - b.sinceMs);
    const pick = candidates[0];
    if (!pick) return;
    shedAt.set(pick.sandboxId, now);
    deps.logger.info({ sandbox: pick.sandboxId, mine, fair: Number(fair.toFixed(2)), excess, replicas: active.length }, 'rebalancing: shedding one session towards the fair share');
    deps.localSessions.shed(pick.sandboxId, 'rebalance');
  };

  const schedule = (): void => {
    if (closed) return;
    // ±50 % jitter: replicas over their share do not shed in lockstep.
    const delay = deps.intervalMs * (0.5 + random());
    timer = setTimeout(() => {
      tick().finally(schedule);
    }, delay);
    timer.unref();
  };
  schedule();
  return {
    close() {
      closed = true;
      clearTimeout(timer);
    },
  };
}
