// What the two readiness drills share: bench/readiness-drill.ts (gateway emulators) and
// bench/real-readiness-drill.ts (upstream's real gateway). The schedule (lease holder SIGTERM'd at
// 30 %, another holder killed -9 at 60 %, one supervisor killed -9 at 85 %), the load loop
// (ForwardTcp SSH and ExecSandbox in turn, round robin over the live sandboxes), the non-Ready
// window bookkeeping fed by a phase sample every second, and the report.
import * as grpc from '@grpc/grpc-js';

export interface Op {
  /** ms since the drill's clock started. */
  at: number;
  kind: 'ssh' | 'exec';
  sandbox: string;
  ok: boolean;
  code: string;
  detail: string;
  ms: number;
  /** Exit status the command reported, where the drill keeps it apart from `ok`. */
  exit?: number | null;
}

export interface DrillEvent {
  at: number;
  what: string;
  replica?: string;
  /** Sandboxes whose supervisor session was on what the event took down. */
  affected?: string[];
  [extra: string]: unknown;
}

export interface NonReadyWindow {
  sandbox: string;
  from: number;
  to: number;
}

export type OpOutcome = Pick<Op, 'ok' | 'code' | 'detail'> & { exit?: number | null };

/** Sessions per replica: how many of `replicaIds` name each replica. */
export function spread(replicaIds: Iterable<string>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const r of replicaIds) out[r] = (out[r] ?? 0) + 1;
  return out;
}

/** The grpc status name of a failed call (its message when it has no code) and its details. */
export function failureOf(err: unknown): Pick<Op, 'code' | 'detail'> {
  const e = err as grpc.ServiceError;
  return {
    code: typeof e.code === 'number' ? (grpc.status[e.code] ?? String(e.code)) : (err as Error).message,
    detail: e.details ?? (err as Error).message,
  };
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** One drill's record: operations, events, non-Ready windows, all on one clock. */
export class ReadinessLog {
  readonly ops: Op[] = [];
  readonly events: DrillEvent[] = [];
  readonly windows: NonReadyWindow[] = [];
  private readonly open = new Map<string, number>();
  private started = Date.now();

  /** Restarts the clock (when the load begins). */
  start(): void {
    this.started = Date.now();
  }

  /** ms since the clock started. */
  readonly t = (): number => Date.now() - this.started;

  event(e: { at?: number; what: string; replica?: string; affected?: string[]; [extra: string]: unknown }): DrillEvent {
    const { at, ...rest } = e;
    const full: DrillEvent = { at: at ?? this.t(), ...rest };
    this.events.push(full);
    return full;
  }

  /** One phase sample taken at `at`: whether each live sandbox was Ready. */
  sample(at: number, live: Iterable<string>, ready: (id: string) => boolean): void {
    for (const id of live) {
      const ok = ready(id);
      if (!ok && !this.open.has(id)) this.open.set(id, at);
      if (ok && this.open.has(id)) {
        this.windows.push({ sandbox: id, from: this.open.get(id)!, to: at });
        this.open.delete(id);
      }
    }
  }

  /** Closes the windows still open at the end of the run. */
  finish(at = this.t()): void {
    for (const [id, from] of this.open) this.windows.push({ sandbox: id, from, to: at });
    this.open.clear();
  }

  /**
   * A window is an event's own when its sandbox's session was on the pod (or supervisor) that the
   * event took down and it opened within 30 s of the event: that sandbox really was disconnected.
   */
  ownWindow(w: NonReadyWindow): boolean {
    return this.events.some((e) => (e.affected ?? []).includes(w.sandbox) && w.from >= e.at - 1000 && w.from <= e.at + 30_000);
  }

  /** The report's common part, `events` last. */
  summary(): Record<string, unknown> & { operations: number; failed: number; refusedForPhase: number; failuresByCode: Record<string, number>; longestNonReadyMs: number; longestNonReadyMsOutsideKilledPods: number } {
    const failed = this.ops.filter((o) => !o.ok);
    const byCode: Record<string, number> = {};
    for (const o of failed) byCode[o.code] = (byCode[o.code] ?? 0) + 1;
    const longest = (ws: NonReadyWindow[]): number => ws.reduce((m, w) => Math.max(m, w.to - w.from), 0);
    const outside = this.windows.filter((w) => !this.ownWindow(w));
    return {
      operations: this.ops.length,
      failed: failed.length,
      refusedForPhase: failed.filter((o) => o.code === 'FAILED_PRECONDITION').length,
      failuresByCode: byCode,
      failures: failed.map((o) => ({ at: o.at, ms: o.ms, kind: o.kind, code: o.code, detail: o.detail, sandbox: o.sandbox.slice(0, 8) })).slice(0, 100),
      longestNonReadyMs: longest(this.windows),
      longestNonReadyMsOutsideKilledPods: longest(outside),
      nonReadyWindowsOutsideKilledPods: outside.length,
      nonReadyWindows: this.windows.map((w) => ({ sandbox: w.sandbox.slice(0, 8), fromS: +(w.from / 1000).toFixed(1), ms: w.to - w.from })),
      events: this.events,
    };
  }

  /** The one-line result. */
  headline(label: string): string {
    const s = this.summary();
    return (
      `${label}: ${s.operations} operations, ${s.failed} failed (${JSON.stringify(s.failuresByCode)}), refused for phase ${s.refusedForPhase}; ` +
      `longest non-Ready window ${s.longestNonReadyMs} ms (${s.longestNonReadyMsOutsideKilledPods} ms for sandboxes not on a killed pod)`
    );
  }
}

export interface LoadOptions {
  workers: number;
  /** The sandboxes, visited round robin. */
  ids: string[];
  /** A sandbox left out for now (its supervisor was killed). */
  skip: (id: string) => boolean;
  stopped: () => boolean;
  /** No worker starts an operation once this many were recorded. */
  maxOps?: number;
  /** Per worker: its operation and what to close when it ends. */
  worker: (w: number) => { op: (kind: Op['kind'], id: string) => Promise<OpOutcome>; close: () => void };
}

/**
 * The drill's load: `workers` loops, each alternating ForwardTcp SSH and ExecSandbox over the
 * sandboxes in turn, every operation recorded with its outcome until `stopped()` (or `maxOps`).
 */
export async function runLoad(log: ReadinessLog, opts: LoadOptions): Promise<void> {
  let next = 0;
  const loop = async (w: number): Promise<void> => {
    const { op, close } = opts.worker(w);
    try {
      while (!opts.stopped() && (opts.maxOps === undefined || log.ops.length < opts.maxOps)) {
        const id = opts.ids[next++ % opts.ids.length]!;
        if (opts.skip(id)) {
          // Every sandbox skipped at once would spin: let the event loop breathe.
          if (opts.ids.every(opts.skip)) await sleep(100);
          continue;
        }
        const kind = (next + w) % 2 === 0 ? 'ssh' : 'exec';
        const at = log.t();
        let outcome: OpOutcome;
        try {
          outcome = await op(kind, id);
        } catch (err) {
          outcome = { ok: false, ...failureOf(err) };
        }
        log.ops.push({ at, kind, sandbox: id, ...outcome, ms: log.t() - at });
      }
    } finally {
      close();
    }
  };
  await Promise.all(Array.from({ length: opts.workers }, (_, w) => loop(w)));
}

export interface Schedule<K> {
  durationMs: number;
  /** At 30 %: the lease holder's pod is stopped gracefully (SIGTERM), restarted later. */
  graceful: () => Promise<void>;
  /** At 60 %: the then lease holder's pod is killed -9, restarted later. */
  hard: () => Promise<void>;
  /** At 85 %: one supervisor is killed -9; resolves with what the drill measured about it. */
  supervisor: () => Promise<K>;
}

/** Runs the drill's three events at 30, 60 and 85 % of `durationMs`, then waits out the rest. */
export async function runSchedule<K>(log: ReadinessLog, s: Schedule<K>): Promise<K> {
  await sleep(s.durationMs * 0.3);
  await s.graceful();
  await sleep(Math.max(0, s.durationMs * 0.6 - log.t()));
  await s.hard();
  await sleep(Math.max(0, s.durationMs * 0.85 - log.t()));
  const killed = await s.supervisor();
  await sleep(Math.max(0, s.durationMs - log.t()));
  return killed;
}
