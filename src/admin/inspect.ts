// This replica's own view, for `status`, `explain` and the live page: its runtime numbers, and for
// one sandbox every layer's answer plus the decision it would take right now. Reads only: nothing
// here claims, caches, counts or logs per call, so explaining a sandbox never changes its routing.
import type tls from 'node:tls';
import type { SidecarConfig } from '../config/schema.ts';
import type { LimitRule } from '../limits/rules.ts';
import type { SlotLimiter } from '../limits/slots.ts';
import type { SidecarMetrics } from '../metrics/registry.ts';
import type { GatewayObjects } from '../ownership/gateway-objects.ts';
import type { OwnerLayers, OwnershipStore } from '../ownership/types.ts';
import type { GatewayWatch } from '../readiness/gateway-watch.ts';
import type { ShadowRegistry } from '../readiness/shadows.ts';
import { decideRoute, type DecisionFacts, type RouteDecision } from '../routing/decision.ts';
import { OWNER_MEMORY_FACTOR, type LocalSessions, type OwnerRouter } from '../routing/router.ts';

export interface InspectDeps {
  config: SidecarConfig;
  version: string;
  startedAtMs: number;
  store: OwnershipStore;
  localSessions: LocalSessions;
  router: OwnerRouter;
  shadows: ShadowRegistry | undefined;
  limiter: SlotLimiter;
  rules: readonly LimitRule[];
  gatewayObjects: GatewayObjects;
  gatewayWatch: GatewayWatch;
  metrics: SidecarMetrics;
  draining: () => boolean;
  /** Peer mTLS client options for asking another replica (status, explain); its certificate must name that replica. */
  peerTls?: (replicaId: string) => tls.ConnectionOptions;
}

export interface CounterSample {
  labels: Record<string, string>;
  value: number;
}

/** One replica's runtime numbers (gauges now, counters since start). */
export interface ReplicaRuntime {
  replicaId: string;
  version: string;
  mode: string;
  uptimeMs: number;
  draining: boolean;
  /** Out of the Service (readiness false) while it sheds towards its fair share. */
  rebalancing: boolean;
  limitPolicy: string;
  readinessMode: string;
  nativeHa: boolean;
  leaseHolder: string | null;
  /** Supervisor sessions held here. */
  sessions: number;
  shadowSessions: number;
  shadowsHosted: number;
  tunnels: number;
  streams: number;
  heldRequests: number;
  pendingStoreWrites: number;
  store: { postgres: boolean; redis: boolean | null };
  /** Since this replica's last heartbeat that reached Postgres (null: none yet or embedded). */
  heartbeatAgeMs: number | null;
  counters: {
    /** Outbound forwards to peers by class, peer and outcome. */
    forwards: CounterSample[];
    handoffs: CounterSample[];
    limitRefusals: CounterSample[];
    readinessDemotions: number;
    readinessRepairs: number;
    heldTotal: number;
  };
}

async function samples(deps: InspectDeps, name: string): Promise<CounterSample[]> {
  const metric = deps.metrics.registry.getSingleMetric(name);
  if (!metric) return [];
  const got = await metric.get();
  return got.values.map((v) => ({ labels: Object.fromEntries(Object.entries(v.labels).map(([k, l]) => [k, String(l)])), value: v.value }));
}

async function total(deps: InspectDeps, name: string, pick?: string): Promise<number> {
  const metric = deps.metrics.registry.getSingleMetric(name);
  if (!metric) return 0;
  const got = await metric.get();
  let sum = 0;
  for (const v of got.values) {
    const metricName = 'metricName' in v && typeof v.metricName === 'string' ? v.metricName : name;
    if (pick !== undefined ? metricName === pick : metricName === name) sum += v.value;
  }
  return sum;
}

export async function replicaRuntime(deps: InspectDeps): Promise<ReplicaRuntime> {
  const health = await deps.store.health().catch(() => ({ postgres: false, redis: null }));
  const lastBeat = deps.store.lastHeartbeatAtMs?.();
  const forwards = (await samples(deps, 'ohs_forwards_total')).filter((s) => s.labels.peer !== 'inbound');
  return {
    replicaId: deps.store.replicaId,
    version: deps.version,
    mode: deps.config.mode,
    uptimeMs: Date.now() - deps.startedAtMs,
    draining: deps.draining(),
    rebalancing: (await total(deps, 'ohs_rebalance_stepped_out')) === 1,
    limitPolicy: deps.limiter.policy(),
    readinessMode: deps.config.readinessMode,
    nativeHa: deps.gatewayWatch.nativeHa(),
    leaseHolder: deps.gatewayWatch.leaseHolder() ?? null,
    sessions: deps.localSessions.size,
    shadowSessions: await total(deps, 'ohs_shadow_sessions'),
    shadowsHosted: await total(deps, 'ohs_shadows_hosted'),
    tunnels: await total(deps, 'ohs_active_tunnels'),
    streams: await total(deps, 'ohs_active_streams'),
    heldRequests: await total(deps, 'ohs_held_requests'),
    pendingStoreWrites: await total(deps, 'ohs_pending_store_writes'),
    store: health,
    heartbeatAgeMs: deps.config.mode === 'cluster' && lastBeat !== undefined ? Date.now() - lastBeat : null,
    counters: {
      forwards,
      handoffs: await samples(deps, 'ohs_handoffs_total'),
      limitRefusals: await samples(deps, 'ohs_limit_refusals_total'),
      readinessDemotions: await total(deps, 'ohs_readiness_demotions_total'),
      readinessRepairs: await total(deps, 'ohs_readiness_repairs_total'),
      heldTotal: await total(deps, 'ohs_held_duration_seconds', 'ohs_held_duration_seconds_count'),
    },
  };
}

export const PHASE_NAMES: Readonly<Record<number, string>> = {
  [-1]: 'Undecodable',
  0: 'Unspecified',
  1: 'Provisioning',
  2: 'Ready',
  3: 'Error',
  4: 'Deleting',
  5: 'Unknown',
  6: 'Stopping',
  7: 'Stopped',
  8: 'Starting',
};

export interface GatewayRowView {
  phase: string;
  layout: string;
  conditions: Array<{ type: string; status: string; reason: string; message: string }>;
  /** Since the row's last write (the writing gateway's clock against ours). */
  ageMs: number;
}

export interface SlotView {
  rule: string;
  max: number;
  /** Cluster-wide while the policy is global; this replica's count otherwise. */
  held: number;
  scope: 'cluster' | 'replica';
}

/** One replica's answer for one sandbox. */
export interface SandboxLocalView {
  replicaId: string;
  /** The supervisor session held here, if any. */
  session: { epoch: number } | null;
  claimInFlight: boolean;
  /** The owner this replica last resolved (routing falls back to it while the store is down). */
  lastKnown: { target: string; ageMs: number } | null;
  layers: OwnerLayers | null;
  /** This replica's shadow registrations of the session on other gateways (owner only). */
  shadows: { epoch: number; ageMs: number; on: Array<{ replicaId: string; accepted: boolean; failures: number }> } | null;
  decision: RouteDecision;
}

function ownerFromLayers(layers: OwnerLayers | null): DecisionFacts['owner'] {
  if (!layers) return 'unknown';
  // The order of a real lookup: in-process cache, Redis, Postgres.
  if (layers.memory.state === 'hit') {
    const o = layers.memory.owner;
    return o ? { replicaId: o.replicaId, epoch: o.epoch, live: true, source: 'in-process cache' } : null;
  }
  if (layers.redis.state === 'hit') return { replicaId: layers.redis.owner.replicaId, epoch: layers.redis.owner.epoch, live: true, source: 'Redis' };
  if (layers.postgres.state === 'row') return { replicaId: layers.postgres.replicaId, epoch: layers.postgres.epoch, live: layers.postgres.live, source: 'Postgres' };
  if (layers.postgres.state === 'none') return null;
  return 'unknown';
}

export function phaseName(phase: number): string {
  return PHASE_NAMES[phase] ?? `Phase(${phase})`;
}

export async function gatewayRow(deps: Pick<InspectDeps, 'gatewayObjects'>, sandboxId: string): Promise<GatewayRowView | null | undefined> {
  const rec = await deps.gatewayObjects.sandboxRecord?.(sandboxId);
  if (rec === undefined || rec === null) return rec;
  return { phase: phaseName(rec.phase), layout: rec.layout, conditions: rec.conditions, ageMs: Date.now() - rec.updatedAtMs };
}

export async function sandboxLocalView(deps: InspectDeps, sandboxId: string, row?: GatewayRowView | null): Promise<SandboxLocalView> {
  const epoch = deps.localSessions.epoch(sandboxId);
  const layers = deps.store.inspect ? await deps.store.inspect(sandboxId) : null;
  const known = deps.router.peekLastKnown(sandboxId);
  const gatewayRowView = row === undefined ? await gatewayRow(deps, sandboxId) : row;
  const shadow = deps.shadows?.forSandbox(sandboxId);
  const claimInFlight = deps.localSessions.claimSettled(sandboxId) !== undefined;
  const decision = decideRoute({
    self: deps.store.replicaId,
    nativeHa: deps.gatewayWatch.nativeHa(),
    localEpoch: epoch,
    claimInFlight,
    owner: ownerFromLayers(layers),
    lastKnown: known
      ? {
          replicaId: known.target.kind === 'peer' ? known.target.replicaId : null,
          epoch: known.target.kind === 'peer' ? known.target.epoch : known.target.epoch,
          ageMs: known.ageMs,
        }
      : undefined,
    ownerWaitMs: deps.config.ownerWaitMs,
    ownerMemoryFactor: OWNER_MEMORY_FACTOR,
    sandboxExists: gatewayRowView === undefined ? undefined : gatewayRowView !== null,
    phase: gatewayRowView?.phase,
  });
  return {
    replicaId: deps.store.replicaId,
    session: epoch === undefined ? null : { epoch },
    claimInFlight,
    lastKnown: known ? { target: known.target.kind === 'peer' ? `${known.target.replicaId}@${known.target.epoch}` : `local(${known.target.reason}${known.target.epoch === null ? '' : `@${known.target.epoch}`})`, ageMs: known.ageMs } : null,
    layers,
    shadows: shadow ? { epoch: shadow.epoch, ageMs: Date.now() - shadow.sinceMs, on: shadow.shadows } : null,
    decision,
  };
}

/** Slots held for a sandbox by every sandbox-keyed rule (token-keyed rules are never shown by token). */
export async function sandboxSlots(deps: Pick<InspectDeps, 'limiter' | 'rules'>, sandboxId: string): Promise<SlotView[]> {
  const policy = deps.limiter.policy();
  const out: SlotView[] = [];
  for (const rule of deps.rules) {
    if (rule.key !== 'sandbox') continue;
    const held = await deps.limiter.held(rule.name, sandboxId).catch(() => -1);
    out.push({ rule: rule.name, max: rule.max, held, scope: policy === 'global' ? 'cluster' : 'replica' });
  }
  return out;
}
