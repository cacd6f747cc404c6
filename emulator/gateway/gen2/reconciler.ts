// The reconciler of the 2026-08 gateway on Postgres (compute/mod.rs@v0.0.111; reference §10):
// every replica runs the lease coordinator (lease_coordinator, :2424-2459); only the lease holder
// runs the driver watch and the reconcile sweep (run_as_holder, :2461-2518). Both end in one
// snapshot apply per sandbox (update_sandbox_record, :2764-2797) that composes the phase from the
// driver's view of the backend and *this process's* session registry (ComposedPhase, :3867-3897):
// a sandbox whose supervisor session lives on another replica becomes Provisioning. One CAS
// attempt, no retry.
//
// The compute driver is an emulator stand-in:
// - Listing: every `sandbox` row of the gateway's table (the driver knows what CreateSandbox handed
//   it; rows a test inserts directly count as created too). Backend state mirrors the lifecycle the
//   gateway asked for: Stopping/Stopped rows are suspended, every other row is running and Ready.
//   Rows the driver would not list are never pruned (upstream deletes them after 300 s).
// - Watch: a driver event is a Postgres NOTIFY on `emulator_driver_events`, sent by whichever replica
//   made the lifecycle call (create: backend pending, start: pending, stop: suspended), so it reaches
//   the holder wherever the call landed, as a shared driver's watch does. Only the holder LISTENs;
//   opening the listen connection (lease gained, or a restart after it failed) applies an initial
//   snapshot of every listed sandbox, like a driver watch's first events.
// - Writes that leave the phase as it was still happen (they bump resource_version, as upstream's
//   do) but only writes that change the phase are recorded in `emulator_phase_writes`.
import pg from 'pg';
import type { Logger } from 'pino';
import { Phase, type PhaseValue } from '../../proto.ts';
import type { Gen2Context } from './context.ts';
import { DEFAULT_LEASE_TIMINGS, ReconcilerLease, type LeaseGuard, type LeaseTimings } from './lease.ts';
import { PHASE_NAMES, upsertReadyCondition } from './phase.ts';
import { wakeableSleep } from '../../wakeable-sleep.ts';

export const DRIVER_EVENT_CHANNEL = 'emulator_driver_events';
/** list_by_type(sandbox, 500, 0) in reconcile_store_with_backend. */
const SWEEP_LIMIT = 500;
/** watch_loop waits 2 s before reopening a failed or ended driver watch. */
const WATCH_RESTART_MS = 2_000;

/** What the compute-driver stand-in reports for a sandbox's backend. */
export type BackendState = 'pending' | 'ready' | 'suspended';
export type DriverEventKind = 'created' | 'started' | 'stopped';

export function backendFromStoredPhase(phase: PhaseValue): BackendState {
  return phase === Phase.STOPPING || phase === Phase.STOPPED ? 'suspended' : 'ready';
}

export interface SnapshotComposition {
  phase: PhaseValue;
  /** The Ready condition to upsert, or null to keep the stored conditions. */
  condition: { status: 'True' | 'False'; reason: string; message: string } | null;
}

/**
 * apply_driver_snapshot + ComposedPhase (compute/mod.rs@v0.0.111:3710-3800, 3867-3897) for a snapshot
 * with a status: Error stays Error; backend Stopped wins; otherwise a local session means Ready and
 * none means Provisioning (with Ready=False SupervisorNotConnected when the backend says Ready);
 * then Stopping stays Stopping unless the backend confirms Stopped, Stopped stays Stopped, and
 * Starting stays Starting unless the composition is Ready.
 */
export function composeDriverSnapshot(stored: PhaseValue, backend: BackendState, sessionConnected: boolean): SnapshotComposition {
  if (stored === Phase.ERROR) return { phase: Phase.ERROR, condition: null };
  const backendPhase = backend === 'ready' ? Phase.READY : backend === 'suspended' ? Phase.STOPPED : Phase.PROVISIONING;
  const composed: PhaseValue = backendPhase === Phase.STOPPED ? Phase.STOPPED : sessionConnected ? Phase.READY : Phase.PROVISIONING;
  let condition: SnapshotComposition['condition'] = null;
  if (backendPhase === Phase.READY && !sessionConnected) {
    condition = { status: 'False', reason: 'SupervisorNotConnected', message: 'Backend ready; waiting for supervisor session' };
  } else if (sessionConnected && composed === Phase.READY) {
    condition = { status: 'True', reason: 'DependenciesReady', message: 'Supervisor session connected' };
  }
  let phase: PhaseValue = composed;
  if (stored === Phase.STOPPING) phase = composed === Phase.STOPPED ? Phase.STOPPED : Phase.STOPPING;
  else if (stored === Phase.STOPPED) phase = Phase.STOPPED;
  else if (stored === Phase.STARTING && composed !== Phase.READY) phase = Phase.STARTING;
  return { phase, condition };
}

/** Sends a driver event for the holder (any replica may send; only the holder listens). */
export function emitDriverEvent(ctx: Gen2Context, sandboxId: string, event: DriverEventKind): void {
  const backend: BackendState = event === 'stopped' ? 'suspended' : 'pending';
  const p = ctx.store.pool
    .query('SELECT pg_notify($1, $2)', [DRIVER_EVENT_CHANNEL, JSON.stringify({ sandboxId, event, backend })])
    .then(
      () => undefined,
      (err: unknown) => ctx.logger.debug({ err, sandboxId, event }, 'driver event not sent'),
    );
  ctx.inflight.add(p);
  void p.finally(() => ctx.inflight.delete(p));
}

/** Interruptible sleeps: once stopped, every sleep (pending or later) returns at once. */
class Sleeper {
  private readonly wakers = new Set<() => void>();
  private stopped = false;

  sleep(ms: number): Promise<void> {
    if (this.stopped) return Promise.resolve();
    return wakeableSleep(ms, this.wakers);
  }

  stop(): void {
    this.stopped = true;
    for (const w of [...this.wakers]) w();
  }
}

/** One tenure as lease holder: its loops stop when it is cancelled. */
interface HolderRun {
  cancelled: boolean;
  sleeper: Sleeper;
  cancel: () => void;
  whenCancelled: Promise<void>;
  /** Driver events and initial snapshots, applied one after another like one watch stream. */
  events: Promise<void>;
}

export interface ReconcilerStats {
  replicaId: string;
  holder: boolean;
  heldSinceMs: number | null;
  acquisitions: number;
  sweeps: number;
  driverEvents: number;
  /** Successful snapshot writes (phase changed or not). */
  snapshotWrites: number;
  /** Snapshot writes that turned Ready into Provisioning. */
  demotions: number;
  conflicts: number;
}

export interface ReconcilerOptions {
  /** The lease holder id (OPENSHELL_REPLICA_ID, else HOSTNAME, else a random UUID). */
  replicaId: string;
  /** Database URL for the driver-event LISTEN connection. */
  databaseUrl: string;
  timings?: Partial<LeaseTimings>;
}

export class ReconcilerCoordinator {
  readonly lease: ReconcilerLease;
  readonly replicaId: string;
  readonly timings: LeaseTimings;
  private readonly log: Logger;
  private readonly sleeper = new Sleeper();
  private closed = false;
  private loop: Promise<void> | undefined;
  private run: HolderRun | undefined;
  private readonly counters = { acquisitions: 0, sweeps: 0, driverEvents: 0, snapshotWrites: 0, demotions: 0, conflicts: 0 };
  private heldSinceMs: number | null = null;

  constructor(
    private readonly ctx: Gen2Context,
    private readonly opts: ReconcilerOptions,
  ) {
    this.replicaId = opts.replicaId;
    this.timings = { ...DEFAULT_LEASE_TIMINGS, ...opts.timings };
    this.lease = new ReconcilerLease(ctx.store.pool, opts.replicaId, this.timings.ttlMs);
    this.log = ctx.logger.child({ component: 'reconciler', leaseReplica: opts.replicaId });
  }

  start(): void {
    this.loop ??= this.coordinate();
  }

  /** True while this replica holds the lease and runs the reconciler. */
  holds(): boolean {
    return this.run !== undefined && !this.run.cancelled;
  }

  stats(): ReconcilerStats {
    return { replicaId: this.replicaId, holder: this.holds(), heldSinceMs: this.holds() ? this.heldSinceMs : null, ...this.counters };
  }

  /**
   * Emulator-only (tests): one sweep now, as the reconcile loop would run it, if this replica holds the
   * lease. Resolves false when it does not; rejects when the sweep stopped on an error (a CAS conflict).
   */
  async sweepNow(): Promise<boolean> {
    const run = this.run;
    if (!run || run.cancelled) return false;
    await this.sweep(run);
    return true;
  }

  /** Graceful shutdown: a holder deletes the lease row (delete_if resource_version) and stops its loops. */
  async close(): Promise<void> {
    this.closed = true;
    this.sleeper.stop();
    await this.loop;
  }

  /** lease_coordinator: acquire or steal, hold until renewal fails, else retry every acquire interval. */
  private async coordinate(): Promise<void> {
    this.log.info('reconciler lease coordinator started');
    while (!this.closed) {
      let guard: LeaseGuard;
      try {
        guard = await this.lease.acquireOrSteal();
      } catch (err) {
        this.log.debug({ err: (err as Error).message }, 'reconciler lease acquisition attempt failed');
        await this.sleeper.sleep(this.timings.acquireMs);
        continue;
      }
      if (this.closed) {
        await this.lease.release(guard).catch(() => undefined);
        break;
      }
      this.log.info('acquired reconciler lease');
      await this.holdLease(guard);
    }
    this.log.info('reconciler lease coordinator stopped');
  }

  /** run_as_holder: watch + reconcile loops, renewal every renew interval, release on shutdown. */
  private async holdLease(guard: LeaseGuard): Promise<void> {
    let cancel!: () => void;
    const whenCancelled = new Promise<void>((resolve) => (cancel = resolve));
    const run: HolderRun = { cancelled: false, sleeper: new Sleeper(), cancel: () => undefined, whenCancelled, events: Promise.resolve() };
    run.cancel = () => {
      run.cancelled = true;
      run.sleeper.stop();
      cancel();
    };
    this.run = run;
    this.heldSinceMs = Date.now();
    this.counters.acquisitions++;
    const loops = [this.watchLoop(run), this.reconcileLoop(run)];
    let lost = false;
    for (;;) {
      await this.sleeper.sleep(this.timings.renewMs);
      if (this.closed) {
        // Upstream releases, then cancels its loops; the emulator stops calling itself holder first so
        // that its /debug/sessions never shows two holders across a graceful handover.
        run.cancel();
        this.log.info('shutdown — releasing reconciler lease');
        await this.lease.release(guard).catch((err: unknown) => this.log.warn({ err: (err as Error).message }, 'failed to release reconciler lease on shutdown'));
        break;
      }
      try {
        await this.lease.renew(guard);
        this.log.debug('renewed reconciler lease');
      } catch (err) {
        this.log.warn({ err: (err as Error).message }, 'reconciler lease renewal failed — releasing holder role');
        lost = true;
        break;
      }
    }
    run.cancel();
    await Promise.allSettled(loops);
    await run.events;
    if (this.run === run) this.run = undefined;
    if (lost) this.log.info('reconciler lease lost — returning to standby');
  }

  /** reconcile_loop: a sweep at once, then one every reconcile interval. */
  private async reconcileLoop(run: HolderRun): Promise<void> {
    while (!run.cancelled) {
      try {
        await this.sweep(run);
      } catch (err) {
        this.log.warn({ err: (err as Error).message }, 'Store reconciliation sweep failed');
      }
      if (run.cancelled) return;
      await run.sleeper.sleep(this.timings.reconcileIntervalMs);
    }
  }

  /**
   * reconcile_store_with_backend: every listed sandbox in turn; rows written since the sweep began are
   * skipped; an error (a CAS conflict included) ends the sweep, as `?` does upstream.
   */
  private async sweep(run: HolderRun): Promise<void> {
    const startedAtMs = Date.now();
    this.counters.sweeps++;
    const rows = await this.ctx.store.listSandboxes(null, SWEEP_LIMIT, 0);
    for (const row of rows) {
      if (run.cancelled) return;
      await this.apply(row.id, 'from-store', 'sweep', startedAtMs);
    }
  }

  /** watch_loop: the LISTEN connection; each notification is one driver event. */
  private async watchLoop(run: HolderRun): Promise<void> {
    while (!run.cancelled) {
      const client = new pg.Client({ connectionString: this.opts.databaseUrl });
      let ended!: () => void;
      const whenEnded = new Promise<void>((resolve) => (ended = resolve));
      client.on('error', (err) => {
        this.log.warn({ err: err.message }, 'Compute driver watch stream errored');
        ended();
      });
      client.on('end', () => ended());
      client.on('notification', (n) => {
        if (run.cancelled || n.channel !== DRIVER_EVENT_CHANNEL || !n.payload) return;
        let ev: { sandboxId?: string; event?: string; backend?: BackendState };
        try {
          ev = JSON.parse(n.payload) as typeof ev;
        } catch {
          return;
        }
        const { sandboxId, backend } = ev;
        if (!sandboxId || !backend) return;
        this.counters.driverEvents++;
        this.enqueue(run, () => this.apply(sandboxId, backend, `driver event (${ev.event ?? 'update'})`));
      });
      try {
        await client.connect();
        await client.query(`LISTEN ${DRIVER_EVENT_CHANNEL}`);
      } catch (err) {
        this.log.warn({ err: (err as Error).message }, 'Compute driver watch stream failed to start');
        await client.end().catch(() => undefined);
        await run.sleeper.sleep(WATCH_RESTART_MS);
        continue;
      }
      // A fresh watch starts with every sandbox the driver knows (initial snapshot).
      this.enqueue(run, () => this.initialSnapshot(run));
      await Promise.race([whenEnded, run.whenCancelled]);
      await client.end().catch(() => undefined);
      if (run.cancelled) return;
      this.log.warn('Compute driver watch stream ended unexpectedly');
      await run.sleeper.sleep(WATCH_RESTART_MS);
    }
  }

  private async initialSnapshot(run: HolderRun): Promise<void> {
    const rows = await this.ctx.store.listSandboxes(null, SWEEP_LIMIT, 0);
    for (const row of rows) {
      if (run.cancelled) return;
      await this.apply(row.id, 'from-store', 'watch initial snapshot').catch((err: unknown) =>
        this.log.warn({ err: (err as Error).message, sandboxId: row.id }, 'Failed to apply compute driver event'),
      );
    }
  }

  private enqueue(run: HolderRun, job: () => Promise<void>): void {
    run.events = run.events.then(async () => {
      if (run.cancelled) return;
      try {
        await job();
      } catch (err) {
        this.log.warn({ err: (err as Error).message }, 'Failed to apply compute driver event');
      }
    });
  }

  /**
   * apply_sandbox_update_locked + update_sandbox_record under this replica's sync_lock: a row the
   * gateway does not have is ignored, Deleting is never touched, otherwise one CAS write of the
   * composed phase. Throws on a CAS conflict (the caller logs it; a sweep stops there).
   */
  private apply(sandboxId: string, backendGiven: BackendState | 'from-store', trigger: string, sweepStartedAtMs?: number): Promise<void> {
    const { ctx } = this;
    return ctx.syncLock.run(async () => {
      const row = await ctx.store.sandboxById(sandboxId);
      if (!row) return;
      if (sweepStartedAtMs !== undefined && row.updatedAtMs > sweepStartedAtMs) return;
      if (row.phase === Phase.DELETING) return;
      const backend = backendGiven === 'from-store' ? backendFromStoredPhase(row.phase) : backendGiven;
      const session = ctx.registry.has(sandboxId);
      const c = composeDriverSnapshot(row.phase, backend, session);
      const why = `${session ? 'local session' : 'no local session'}${c.condition ? ` (${c.condition.reason})` : ''}`;
      const reason = `reconciler on ${ctx.replica} (lease holder ${this.replicaId}), ${trigger}: backend ${backend}, ${why}`;
      // Only writes that change the phase are recorded.
      const record = c.phase !== row.phase ? { phase: c.phase, replica: ctx.replica, reason } : undefined;
      const res = await ctx.store.updateSandboxCas(
        sandboxId,
        row.resourceVersion,
        (m) => {
          if (c.condition) upsertReadyCondition(m, c.condition.status, c.condition.reason, c.condition.message);
          (m.status ??= {}).phase = c.phase;
        },
        record,
      );
      if (res === null) return;
      if (res === 'conflict') {
        this.counters.conflicts++;
        throw new Error(`concurrent modification detected during sandbox reconciliation (sandbox ${sandboxId}, ${trigger})`);
      }
      this.counters.snapshotWrites++;
      ctx.watch.notify(sandboxId);
      if (c.phase !== row.phase) {
        if (row.phase === Phase.READY && c.phase === Phase.PROVISIONING) this.counters.demotions++;
        this.log.info(
          { sandboxId, oldPhase: PHASE_NAMES[row.phase], newPhase: PHASE_NAMES[c.phase], trigger, localSession: session },
          'Sandbox phase changed',
        );
      }
      // cleanup_stopped_sandbox_sessions (compute/mod.rs@v0.0.111:3052-3060).
      if (row.phase !== Phase.STOPPED && c.phase === Phase.STOPPED) {
        ctx.registry.disconnect(sandboxId);
        await ctx.store.deleteSshSessionsForSandbox(sandboxId);
      }
    });
  }
}
