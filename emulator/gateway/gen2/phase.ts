// Phase writes of the 2026-08 gateway. Every write is a single compare-and-swap on the row's
// resource_version (no retry, a conflict is only logged), records itself in the
// `emulator_phase_writes` instrumentation table and notifies only this process's watch bus
// (reference §2.8, §8). The reconciler-lease holder's snapshot writes (reference §10) are in
// reconciler.ts; both run under this replica's sync_lock.
import { status as Status } from '@grpc/grpc-js';
import { Phase, type PhaseValue } from '../../proto.ts';
import { GatewayError } from '../registry.ts';
import type { Gen2Context } from './context.ts';
import type { Gen2Sandbox, SandboxMessage } from './store.ts';

export const PHASE_NAMES: Record<number, string> = {
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

/** Phases a supervisor connect/disconnect never overwrites (compute/mod.rs@v0.0.111:2831-2839). */
const SESSION_WRITE_SKIP: readonly PhaseValue[] = [Phase.DELETING, Phase.ERROR, Phase.STOPPING, Phase.STOPPED];

export type SessionPhaseDecision = { write: false; why: string } | { write: true; phase: PhaseValue };

/**
 * Pure decision of set_supervisor_session_state: skip Deleting/Error/Stopping/Stopped; a
 * disconnect only demotes a Ready sandbox.
 */
export function decideSessionPhase(current: PhaseValue, connected: boolean): SessionPhaseDecision {
  if (SESSION_WRITE_SKIP.includes(current)) return { write: false, why: `phase ${current} is never overwritten by a session change` };
  if (!connected && current !== Phase.READY) return { write: false, why: 'disconnect only demotes Ready' };
  return { write: true, phase: connected ? Phase.READY : Phase.PROVISIONING };
}

export function upsertReadyCondition(msg: SandboxMessage, status: 'True' | 'False', reason: string, message: string): void {
  const st = (msg.status ??= {});
  st.sandbox_name ??= msg.metadata?.name ?? '';
  const conditions = (st.conditions ??= []);
  const cond = { type: 'Ready', status, reason, message, last_transition_time: '' };
  const i = conditions.findIndex((c) => c.type === 'Ready');
  if (i >= 0) conditions[i] = cond;
  else conditions.push(cond);
}

/** One CAS write of `phase`; 'conflict' when the row moved on, null when it is gone. */
export async function casPhase(
  ctx: Gen2Context,
  sandbox: Gen2Sandbox,
  phase: PhaseValue,
  reason: string,
  mutate: (msg: SandboxMessage) => void,
): Promise<Gen2Sandbox | 'conflict' | null> {
  const res = await ctx.store.updateSandboxCas(
    sandbox.id,
    sandbox.resourceVersion,
    (m) => {
      mutate(m);
      (m.status ??= {}).phase = phase;
    },
    { phase, replica: ctx.replica, reason },
  );
  if (res && res !== 'conflict') ctx.watch.notify(sandbox.id);
  return res;
}

/** supervisor_session_connected / _disconnected (compute/mod.rs@v0.0.111:2800-2890). */
export function supervisorSessionChanged(ctx: Gen2Context, sandboxId: string, connected: boolean, instanceId?: string): Promise<void> {
  const p = ctx.syncLock.run(() => sessionWrite(ctx, sandboxId, connected, instanceId));
  ctx.inflight.add(p);
  void p.finally(() => ctx.inflight.delete(p));
  return p;
}

async function sessionWrite(ctx: Gen2Context, sandboxId: string, connected: boolean, instanceId?: string): Promise<void> {
  const log = ctx.logger.child({ sandboxId, connected });
  try {
    const existing = await ctx.store.sandboxById(sandboxId);
    if (!existing) return;
    const decision = decideSessionPhase(existing.phase, connected);
    if (!decision.write) {
      log.debug({ why: decision.why }, 'session phase write skipped');
      return;
    }
    if (ctx.debugSessionWriteDelayMs) await new Promise((r) => setTimeout(r, ctx.debugSessionWriteDelayMs));
    const res = await casPhase(ctx, existing, decision.phase, connected ? 'supervisor connected' : 'supervisor disconnected', (m) => {
      if (connected) {
        upsertReadyCondition(m, 'True', 'DependenciesReady', 'Supervisor session connected');
        (m.status ??= {}).main_process_instance_id = instanceId ?? '';
      } else {
        upsertReadyCondition(m, 'False', 'DependenciesNotReady', 'Supervisor session disconnected');
      }
    });
    if (res === 'conflict') {
      if (connected) ctx.lostSessionWrites.ready++;
      else ctx.lostSessionWrites.disconnected++;
      // Only logged, never retried (supervisor_session.rs@v0.0.111:757-768): the sandbox keeps its old
      // phase with a live session until the next sweep on a replica that has it, or a reconnect.
      const now = await ctx.store.sandboxById(sandboxId).catch(() => null);
      log.warn(
        { error: `concurrent modification detected (current resource_version: ${now?.resourceVersion ?? 'unknown'})` },
        connected ? 'supervisor session: failed to mark sandbox ready' : 'supervisor session: failed to mark sandbox disconnected',
      );
    }
  } catch (err) {
    log.warn({ err }, 'session phase write failed');
  }
}

/** write_lifecycle_phase (compute/mod.rs@v0.0.111:1377-1416): Stop/Start transitions. */
export async function writeLifecyclePhase(
  ctx: Gen2Context,
  sandbox: Gen2Sandbox,
  phase: PhaseValue,
  reason: string,
  message: string,
): Promise<Gen2Sandbox> {
  if (ctx.debug.lifecycleConflicts > 0) {
    // Test instrumentation: another writer's rewrite of the row (a sweep, a shadow's connect) lands
    // between this handler's read and its compare-and-swap.
    ctx.debug.lifecycleConflicts--;
    await ctx.store.updateSandboxCas(sandbox.id, sandbox.resourceVersion, () => undefined);
  }
  const res = await casPhase(ctx, sandbox, phase, reason, (m) => upsertReadyCondition(m, 'False', reason, message));
  if (res === null) throw new GatewayError(Status.NOT_FOUND, 'sandbox not found');
  if (res === 'conflict') {
    // persistence_error_to_status(e, "update sandbox lifecycle") (grpc/mod.rs@v0.0.111:88-104); no retry.
    const now = await ctx.store.sandboxById(sandbox.id).catch(() => null);
    throw new GatewayError(
      Status.ABORTED,
      `update sandbox lifecycle failed due to concurrent modification (current resource_version: ${now?.resourceVersion ?? 'unknown'})`,
    );
  }
  return res;
}
