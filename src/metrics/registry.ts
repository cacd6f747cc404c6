// Prometheus metrics, all named `ohs_*` with the unit in the name. Each call makes its own
// Registry (never prom-client's global one), so several sidecars can share a test process.

import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { CellCounter, CellGauge, CellHistogram } from './cells.ts';
import { LOG_BUFFER_MAX_BYTES, droppedLogLines } from '../log/logger.ts';

/** `local` for the gateway beside us, `peer` for another replica's sidecar. */
export type ForwardTarget = 'local' | 'peer';
export type OwnerLookupSource = 'memory' | 'redis' | 'postgres' | 'miss';
/** `to_sandbox`: client → sandbox bytes; `from_sandbox`: sandbox → client bytes. */
export type TunnelDirection = 'to_sandbox' | 'from_sandbox';
export type StoreName = 'postgres' | 'redis';

export interface SidecarMetrics {
  readonly registry: Registry;
  /** Requests and streams accepted on the public listener, by outcome (ok, error code…). */
  readonly requestsTotal: CellCounter<'class' | 'target' | 'outcome'>;
  /** Streams and tunnels sent to (or received from) a peer replica. */
  readonly forwardsTotal: CellCounter<'class' | 'peer' | 'outcome'>;
  readonly activeStreams: CellGauge<'class' | 'target'>;
  readonly activeTunnels: CellGauge<'target'>;
  readonly ownerLookupsTotal: CellCounter<'source'>;
  readonly ownerClaimsTotal: Counter;
  /** Claims written per Postgres transaction (claims that arrive while one is written wait for the next). */
  readonly ownerClaimBatchSize: Histogram;
  readonly ownershipChangesTotal: Counter;
  /** First-message or header classification failures, by reason (an OHS error code). */
  readonly classifyErrorsTotal: Counter<'reason'>;
  /** Connections and streams cut by a protective bound (max connections, timeouts, buffer budgets, PING). */
  readonly protectionsTotal: Counter<'reason'>;
  /** Bugs caught by the last-resort handlers (unhandled rejections, uncaught exceptions). */
  readonly internalErrorsTotal: Counter<'kind'>;
  /** Log lines dropped because stdout was not read fast enough (src/log/logger.ts). */
  readonly logLinesDroppedTotal: Counter;
  readonly tunnelBytesTotal: CellCounter<'direction'>;
  readonly requestDurationSeconds: CellHistogram<'class' | 'target'>;
  /** 1 when the store answers, 0 when it does not. */
  readonly storeUp: Gauge<'store'>;
  /** Supervisor sessions whose ConnectSupervisor stream passes through this replica. */
  readonly supervisorSessions: Gauge;
  /** Pooled HTTP/2 sessions to other replicas' peer ports. */
  readonly peerSessions: Gauge;
  /** Requests waiting for a sandbox owner to appear (DESIGN §4 "no owner yet"). */
  readonly heldRequests: Gauge;
  readonly heldSeconds: Histogram;
  /** Fenced ownership handoffs by how the previous owner was fenced. */
  readonly handoffsTotal: Counter<'reason'>;
  readonly handoffDurationSeconds: Histogram<'reason'>;
  /** Claims or releases waiting for Postgres to come back. */
  readonly pendingStoreWrites: Gauge;
  /** Supervisor Hellos passed to the gateway untouched (no claim, no fence), by why they were not verified. */
  readonly unverifiedHellosTotal: Counter<'reason'>;
  /** Connections that took no limit slot, by why (e.g. a token the gateway's table does not know). */
  readonly limitSkipsTotal: Counter<'class' | 'reason'>;
  /** Watch and log-push streams moved to a sandbox's new owner mid-stream. */
  readonly streamMovesTotal: Counter<'class'>;
  /** Shadow registrations of this replica's supervisor sessions held on other replicas' gateways. */
  readonly shadowSessions: Gauge;
  /** Shadow registrations other replicas hold on this replica's gateway. */
  readonly shadowsHosted: Gauge;
  /** Owned, live sandboxes seen demoted to Provisioning (reference §10). */
  readonly readinessDemotionsTotal: Counter;
  /** Shadow re-registrations made to restore Ready after a demotion. */
  readonly readinessRepairsTotal: Counter;
  /** Supervisor sessions shed (drain, rebalance) or refused while draining, by reason. */
  readonly sessionsShedTotal: Counter<'reason'>;
  /**
   * How shed sessions parked on the gateway ended: handed_over (the next owner's fence; no
   * demotion), closed (fenced where no hand-over is possible; the gateway's disconnect write
   * follows), expired (nobody fenced within --shed-park-ms), superseded (the supervisor came back
   * here), ended (the gateway or the connection ended it).
   */
  readonly parkedSessionsTotal: Counter<'outcome'>;
  /** 1 while this replica drains. */
  readonly draining: Gauge;
  /** How long the last drain took, from its start to exit readiness. */
  readonly drainDurationSeconds: Gauge;
  /** This replica's sessions over its fair share (sessions / live replicas); 1 is balanced. */
  readonly sessionImbalance: Gauge;
  readonly rebalanceSteppedOut: Gauge;
  /** Status watches sent a sandbox's stored state that another replica wrote (their gateway stayed silent). */
  readonly watchRefreshesTotal: Counter;
  /** Requests refused "not ready" for a sandbox with a live session, held for Ready and sent again. */
  readonly notReadyHoldsTotal: Counter;
  /** Stop/Start calls the gateway refused ABORTED on a concurrent rewrite of the sandbox row, sent again (label method). */
  readonly conflictRetriesTotal: Counter<'method'>;
  /** 1 for the gateway replica holding the reconciler lease (label holder). */
  readonly reconcilerLeaseHolder: Gauge<'holder'>;
}

export interface CreateMetricsOptions {
  /** Also collect prom-client's process and Node.js metrics (default true). */
  defaultMetrics?: boolean;
}

// Streams range from a unary RPC (milliseconds) to an SSH session (hours).
const DURATION_BUCKETS_SECONDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 14_400];

/** A counter that follows a running total kept elsewhere, read at each scrape. */
export function totalCounter(name: string, help: string, registers: Registry[], total: () => number): Counter {
  let seen = 0;
  return new Counter({
    name,
    help,
    registers,
    collect() {
      const now = total();
      if (now > seen) this.inc(now - seen);
      seen = now;
    },
  });
}

/** The process's count of dropped log lines, read at each scrape. */
function logLinesDroppedCounter(registers: Registry[]): Counter {
  return totalCounter(
    'ohs_log_lines_dropped_total',
    `Log lines dropped because stdout was not read fast enough (up to ${LOG_BUFFER_MAX_BYTES / 1048576} MiB of lines wait in memory first; a warning follows each streak).`,
    registers,
    droppedLogLines,
  );
}

export function createMetrics(options: CreateMetricsOptions = {}): SidecarMetrics {
  const registry = new Registry();
  const registers = [registry];
  if (options.defaultMetrics ?? true) collectDefaultMetrics({ register: registry });

  return {
    registry,
    requestsTotal: new CellCounter({
      name: 'ohs_requests_total',
      help: 'Requests, streams and tunnels accepted on the public listener.',
      labelNames: ['class', 'target', 'outcome'] as const,
      registers,
    }),
    forwardsTotal: new CellCounter({
      name: 'ohs_forwards_total',
      help: 'Streams and tunnels forwarded to another replica.',
      labelNames: ['class', 'peer', 'outcome'] as const,
      registers,
    }),
    activeStreams: new CellGauge({
      name: 'ohs_active_streams',
      help: 'HTTP/2 streams currently proxied.',
      labelNames: ['class', 'target'] as const,
      registers,
    }),
    activeTunnels: new CellGauge({
      name: 'ohs_active_tunnels',
      help: 'SSH tunnels currently open.',
      labelNames: ['target'] as const,
      registers,
    }),
    ownerLookupsTotal: new CellCounter({
      name: 'ohs_owner_lookups_total',
      help: 'Sandbox owner lookups, by the layer that answered (miss: no owner known).',
      labelNames: ['source'] as const,
      registers,
    }),
    ownerClaimsTotal: new Counter({
      name: 'ohs_owner_claims_total',
      help: 'Sandbox ownership claims made by this replica.',
      registers,
    }),
    ownerClaimBatchSize: new Histogram({
      name: 'ohs_owner_claim_batch_size',
      help: 'Ownership claims written per Postgres transaction (a burst of reconnecting supervisors is written in few).',
      buckets: [1, 2, 5, 10, 50, 100, 500],
      registers,
    }),
    ownershipChangesTotal: new Counter({
      name: 'ohs_ownership_changes_total',
      help: 'Ownership change events observed (claims, releases, takeovers).',
      registers,
    }),
    internalErrorsTotal: new Counter({
      name: 'ohs_internal_errors_total',
      help: 'Bugs caught by the last-resort handlers: unhandled_rejection (logged, process carries on), uncaught_exception (the replica drains and exits).',
      labelNames: ['kind'] as const,
      registers,
    }),
    logLinesDroppedTotal: logLinesDroppedCounter(registers),
    protectionsTotal: new Counter({
      name: 'ohs_protections_total',
      help: 'Connections or streams cut by a protective bound: max_connections, headers_timeout, request_timeout, ping_timeout, idle, connection_buffer, total_buffer, held_requests, upstream_reset_budget, lookup_queue (an owner lookup refused because the lookup queue was full), response_timeout (a tunnel or upgrade whose gateway or owner sent no response head within --upstream-response-timeout-ms: 504).',
      labelNames: ['reason'] as const,
      registers,
    }),
    classifyErrorsTotal: new Counter({
      name: 'ohs_classify_errors_total',
      help: 'Requests refused because they could not be classified or keyed.',
      labelNames: ['reason'] as const,
      registers,
    }),
    tunnelBytesTotal: new CellCounter({
      name: 'ohs_tunnel_bytes_total',
      help: 'Bytes carried by SSH tunnels.',
      labelNames: ['direction'] as const,
      registers,
    }),
    requestDurationSeconds: new CellHistogram({
      name: 'ohs_request_duration_seconds',
      help: 'Lifetime of proxied requests, streams and tunnels.',
      labelNames: ['class', 'target'] as const,
      buckets: DURATION_BUCKETS_SECONDS,
      registers,
    }),
    storeUp: new Gauge({
      name: 'ohs_store_up',
      help: 'Whether the coordination store answers (1) or not (0).',
      labelNames: ['store'] as const,
      registers,
    }),
    supervisorSessions: new Gauge({
      name: 'ohs_supervisor_sessions',
      help: 'Supervisor sessions held by this replica.',
      registers,
    }),
    peerSessions: new Gauge({
      name: 'ohs_peer_sessions',
      help: 'Open HTTP/2 sessions to peer replicas.',
      registers,
    }),
    heldRequests: new Gauge({
      name: 'ohs_held_requests',
      help: 'Requests currently held while their sandbox has no reachable owner.',
      registers,
    }),
    heldSeconds: new Histogram({
      name: 'ohs_held_duration_seconds',
      help: 'How long requests were held waiting for a sandbox owner.',
      buckets: [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 15, 30],
      registers,
    }),
    handoffsTotal: new Counter({
      name: 'ohs_handoffs_total',
      help: 'Ownership handoffs by how the previous owner was fenced (acknowledged, peer-refused, lease-expired, timeout, same-replica, none, skipped).',
      labelNames: ['reason'] as const,
      registers,
    }),
    handoffDurationSeconds: new Histogram({
      name: 'ohs_handoff_duration_seconds',
      help: 'Time from a supervisor Hello to its release to the local gateway, by fence reason.',
      labelNames: ['reason'] as const,
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 15],
      registers,
    }),
    pendingStoreWrites: new Gauge({
      name: 'ohs_pending_store_writes',
      help: 'Ownership claims or releases waiting for Postgres to come back.',
      registers,
    }),
    unverifiedHellosTotal: new Counter({
      name: 'ohs_unverified_hellos_total',
      help: 'Supervisor Hellos whose sender the sidecar could not verify, passed to the gateway with no ownership change, by reason.',
      labelNames: ['reason'] as const,
      registers,
    }),
    limitSkipsTotal: new Counter({
      name: 'ohs_limit_skips_total',
      help: 'Connections that took no limit slot, by class and reason (invalid_token: not a valid session token for the sandbox).',
      labelNames: ['class', 'reason'] as const,
      registers,
    }),
    streamMovesTotal: new Counter({
      name: 'ohs_stream_moves_total',
      help: 'Watch and log-push streams moved to a new sandbox owner mid-stream.',
      labelNames: ['class'] as const,
      registers,
    }),
    shadowSessions: new Gauge({
      name: 'ohs_shadow_sessions',
      help: "Shadow registrations of this replica's supervisor sessions held on other replicas' gateways.",
      registers,
    }),
    shadowsHosted: new Gauge({
      name: 'ohs_shadows_hosted',
      help: "Shadow registrations other replicas hold on this replica's gateway.",
      registers,
    }),
    readinessDemotionsTotal: new Counter({
      name: 'ohs_readiness_demotions_total',
      help: 'Owned, live sandboxes seen demoted to Provisioning by a gateway (reconciler-lease holder or a stale disconnect).',
      registers,
    }),
    readinessRepairsTotal: new Counter({
      name: 'ohs_readiness_repairs_total',
      help: 'Shadow re-registrations made to restore Ready after a demotion.',
      registers,
    }),
    sessionsShedTotal: new Counter({
      name: 'ohs_sessions_shed_total',
      help: 'Supervisor sessions shed by this replica, by reason (draining, rebalance), and supervisors refused while draining (refused-draining).',
      labelNames: ['reason'] as const,
      registers,
    }),
    parkedSessionsTotal: new Counter({
      name: 'ohs_parked_sessions_total',
      help: 'Shed supervisor sessions kept registered on the gateway until the next owner, by how they ended (handed_over, closed, expired, superseded, ended).',
      labelNames: ['outcome'] as const,
      registers,
    }),
    draining: new Gauge({ name: 'ohs_draining', help: '1 while this replica drains.', registers }),
    drainDurationSeconds: new Gauge({ name: 'ohs_drain_duration_seconds', help: 'Duration of the last drain, from its start until it was empty or its deadline.', registers }),
    sessionImbalance: new Gauge({
      name: 'ohs_session_imbalance',
      help: "This replica's supervisor sessions over its fair share (cluster sessions / live active replicas); 1 is balanced.",
      registers,
    }),
    rebalanceSteppedOut: new Gauge({
      name: 'ohs_rebalance_stepped_out',
      help: '1 while this replica is out of the Service (readiness false) to shed sessions towards its fair share.',
      registers,
    }),
    watchRefreshesTotal: new Counter({
      name: 'ohs_watch_refreshes_total',
      help: "Status watches sent a sandbox's stored state written by another replica, which their gateway never notifies.",
      registers,
    }),
    notReadyHoldsTotal: new Counter({
      name: 'ohs_not_ready_holds_total',
      help: 'Requests the gateway refused "not ready" for a sandbox with a live session, held until Ready and sent again.',
      registers,
    }),
    conflictRetriesTotal: new Counter({
      name: 'ohs_conflict_retries_total',
      help: 'StopSandbox/StartSandbox calls the gateway refused ABORTED because another write changed the sandbox row first, sent again.',
      labelNames: ['method'],
      registers,
    }),
    reconcilerLeaseHolder: new Gauge({
      name: 'ohs_reconciler_lease_holder',
      help: 'The gateway replica holding the reconciler lease (value 1, label holder), as read from the gateway table.',
      labelNames: ['holder'] as const,
      registers,
    }),
  };
}

