// Paced rebalancing (DESIGN §6): a replica holding more supervisor sessions than its fair share
// (cluster sessions / live active replicas) by more than a margin sheds one session at a time,
// jittered so that replicas never shed in lockstep, until it is within the margin. A shed supervisor
// reconnects through the Service, landing on a random replica; each shed costs it one step of its
// reconnect backoff, which never resets (reference §2.1), so a session is shed at most once per
// cooldown, and a session with relays in flight is left alone while others remain.
//
// Landing at random, a shed supervisor comes back to a replica over its share (itself included)
// about as often as there are such replicas: with two of four over, every second shed would have
// to move again. So a replica about to shed first steps out of the Service (its readiness turns
// false) and waits `stepOut.leadMs` for the Service to notice; its sheds then land only on replicas
// that are not over their share, which never step out, and so the Service always keeps them. While
// out it sheds at most the excess it saw when it left: the other replicas' counts come with their
// heartbeats, so during the moves they lag, and recounting each time would overshoot. It steps back
// in once that is shed and its shed supervisors have landed, then lets the counts settle
// (`stepOut.settleMs`) before it looks again; or after `stepOut.maxMs` at the latest (then it stays
// in for a cooldown and sheds from inside the Service, as with no step-out).
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
  /** True while this replica is out of the Service to shed (its readiness says not ready). */
  steppedOut(): boolean;
  /** One round now, outside the paced schedule (tests). */
  tickNow(): Promise<void>;
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
  /** Step out of the Service while shedding (see the top of this file); absent or leadMs 0: stay in. */
  stepOut?: { leadMs: number; maxMs: number; settleMs: number };
  random?: () => number;
  now?: () => number;
}): Rebalancer {
  const random = deps.random ?? Math.random;
  const clock = deps.now ?? Date.now;
  const stepOut = deps.stepOut && deps.stepOut.leadMs > 0 ? deps.stepOut : undefined;
  const shedAt = new Map<string, number>();
  let timer: NodeJS.Timeout | undefined;
  let closed = false;
  let outSinceMs: number | undefined;
  let shedWhileOut = 0;
  /** Sheds left in this step-out: the excess seen when it began. */
  let quota = 0;
  /** After the step-out time limit: shed from inside the Service until then. */
  let stayInUntilMs = 0;
  /** After a step-out: no shed at all until then, while the moved sessions' counts arrive. */
  let settleUntilMs = 0;

  const stepIn = (why: string): void => {
    if (outSinceMs === undefined) return;
    deps.logger.info({ why, outMs: clock() - outSinceMs, shed: shedWhileOut }, 'rebalancing: back in the Service');
    outSinceMs = undefined;
    deps.metrics.rebalanceSteppedOut.set(0);
  };

  const tick = async (): Promise<void> => {
    if (deps.draining()) {
      // The drain owns readiness now, and moves every session anyway.
      outSinceMs = undefined;
      deps.metrics.rebalanceSteppedOut.set(0);
      return;
    }
    const replicas = await deps.store.liveReplicas().catch(() => undefined);
    if (!replicas) return stepIn('replica list unavailable');
    // While any replica drains, sessions are in motion: shedding more now only adds moves, and the
    // drained sessions need every replica that can take them.
    if (replicas.some((r) => r.state === 'draining')) return stepIn('another replica drains');
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
    const now = clock();
    if (outSinceMs !== undefined && now - outSinceMs >= stepOut!.maxMs) {
      stepIn('step-out time limit');
      stayInUntilMs = now + deps.cooldownMs;
    }
    if (outSinceMs !== undefined && (excess === 0 || quota === 0)) {
      // Back in once the supervisors shed meanwhile have reconnected elsewhere (their parked
      // sessions were handed over): back in earlier, some of them would land here again.
      if (!deps.localSessions.list().some((s) => s.shedding)) {
        stepIn(excess === 0 ? 'within fair share' : 'shed what it set out to');
        settleUntilMs = now + stepOut!.settleMs;
      }
      return;
    }
    if (excess === 0 || now < settleUntilMs) return;
    for (const [id, at] of shedAt) if (now - at > deps.cooldownMs) shedAt.delete(id);
    const candidates = deps.localSessions
      .list()
      .filter((s) => !s.shedding && !shedAt.has(s.sandboxId) && now - s.sinceMs >= (deps.minAgeMs ?? 10_000))
      .sort((a, b) => a.relays - b.relays || a.sinceMs - b.sinceMs);
    const pick = candidates[0];
    if (!pick) {
      // Nothing old enough to shed yet: no reason to stay out of the Service meanwhile.
      if (outSinceMs !== undefined && !deps.localSessions.list().some((s) => s.shedding)) stepIn('nothing to shed yet');
      return;
    }
    if (stepOut && outSinceMs === undefined && now >= stayInUntilMs) {
      // Only replicas over their share step out; some other replica is under it and stays in.
      const under = active.filter((r) => r.replicaId !== self && r.sessions < fair).map((r) => r.replicaId);
      if (under.length > 0) {
        outSinceMs = now;
        shedWhileOut = 0;
        quota = excess;
        deps.metrics.rebalanceSteppedOut.set(1);
        deps.logger.info(
          { mine, fair: Number(fair.toFixed(2)), excess, under, leadMs: stepOut.leadMs },
          'rebalancing: out of the Service while shedding, so that shed supervisors land on replicas under their share',
        );
        return;
      }
    }
    // Give the Service time to drop this replica before the first shed.
    if (outSinceMs !== undefined && now - outSinceMs < stepOut!.leadMs) return;
    shedAt.set(pick.sandboxId, now);
    deps.logger.info({ sandbox: pick.sandboxId, mine, fair: Number(fair.toFixed(2)), excess, replicas: active.length }, 'rebalancing: shedding one session towards the fair share');
    if (deps.localSessions.shed(pick.sandboxId, 'rebalance') && outSinceMs !== undefined) {
      shedWhileOut++;
      quota--;
    }
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
    steppedOut: () => outSinceMs !== undefined,
    tickNow: () => tick(),
    close() {
      closed = true;
      clearTimeout(timer);
      outSinceMs = undefined;
    },
  };
}
