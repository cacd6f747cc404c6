// Prometheus metrics of the connection limits. Kept beside the limiter (not in metrics/registry.ts)
// so that the limiter can be built on any registry, the sidecar's or a test's own.

import { Counter, Gauge, Registry } from 'prom-client';
import { CellCounter, CellGauge } from '../metrics/cells.ts';
import type { LimitRule } from './rules.ts';

/** What is enforced right now: global counting in Redis, or one of the local fallbacks. */
export type LimitPolicy = 'global' | 'local-split' | 'local-full' | 'deny';

export const LIMIT_POLICIES: readonly LimitPolicy[] = ['global', 'local-split', 'local-full', 'deny'];

export interface LimitMetrics {
  readonly registry: Registry;
  /** Slots held by this replica, summed over the keys of each rule. */
  readonly slotsHeld: CellGauge<'rule'>;
  readonly refusals: Counter<'rule'>;
  /** Expired slots of crashed or stalled holders removed while counting. */
  readonly slotsReclaimed: Counter<'rule'>;
  /** Released slots kept in Redis for a moment, for a new connection with the same keys. */
  readonly slotsParked: CellGauge<never>;
  /** Connections admitted by taking over a parked slot (no Redis round trip). */
  readonly slotsReused: CellCounter<never>;
  /** 1 for the policy in force, 0 for the others. */
  readonly policy: Gauge<'policy'>;
  setPolicy(policy: LimitPolicy): void;
}

export function createLimitMetrics(rules: readonly LimitRule[], registry: Registry = new Registry()): LimitMetrics {
  const registers = [registry];
  const slotsHeld = new CellGauge({
    name: 'ohs_limit_slots_held',
    help: 'Connection-limit slots held by this replica, by rule.',
    labelNames: ['rule'] as const,
    registers,
  });
  const refusals = new Counter({
    name: 'ohs_limit_refusals_total',
    help: 'Connections refused by a connection limit, by rule.',
    labelNames: ['rule'] as const,
    registers,
  });
  const slotsReclaimed = new Counter({
    name: 'ohs_limit_slots_reclaimed_total',
    help: 'Expired slots (holder crashed or stopped renewing) removed while counting, by rule.',
    labelNames: ['rule'] as const,
    registers,
  });
  const slotsParked = new CellGauge({
    name: 'ohs_limit_slots_parked',
    help: 'Released slots kept in Redis for a moment (--limit-reuse-ms), for a new connection with the same keys.',
    registers,
  });
  const slotsReused = new CellCounter({
    name: 'ohs_limit_slots_reused_total',
    help: 'Connections admitted by taking over a parked slot, without a Redis round trip.',
    registers,
  });
  const policy = new Gauge({
    name: 'ohs_limit_policy',
    help: 'Connection-limit policy in force (1) and the others (0).',
    labelNames: ['policy'] as const,
    registers,
  });
  // Every series exists from the start, so that dashboards and alerts see zeros rather than gaps.
  for (const r of rules) {
    slotsHeld.cell(r.name);
    refusals.inc({ rule: r.name }, 0);
    slotsReclaimed.inc({ rule: r.name }, 0);
  }
  return {
    registry,
    slotsHeld,
    refusals,
    slotsReclaimed,
    slotsParked,
    slotsReused,
    policy,
    setPolicy(current) {
      for (const p of LIMIT_POLICIES) policy.set({ policy: p }, p === current ? 1 : 0);
    },
  };
}
