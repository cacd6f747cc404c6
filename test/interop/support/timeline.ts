// What the interop suite observes over time: every phase change of every sandbox row (polled from the
// gateways' shared `objects` table) and every reconcile sweep of the reconciler-lease holder (seen by
// the compute driver as a ListSandboxes call, reference §10).
import type { RealCluster } from './real-cluster.ts';

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

export interface PhaseChange {
  sandboxId: string;
  name: string;
  from: number | undefined;
  to: number;
  atMs: number;
}

export class Timeline {
  readonly t0 = Date.now();
  readonly sweeps: number[] = [];
  readonly changes: PhaseChange[] = [];
  private readonly last = new Map<string, number>();
  private timer: NodeJS.Timeout | undefined;
  private polling = false;

  /** Milliseconds since the timeline started. */
  now(): number {
    return Date.now() - this.t0;
  }

  sweep(): void {
    this.sweeps.push(this.now());
  }

  /** The next reconcile sweep is expected RECONCILE_INTERVAL after the last one (upstream: 60 s). */
  msUntilNextSweep(intervalMs = 60_000): number | undefined {
    const last = this.sweeps.at(-1);
    return last === undefined ? undefined : last + intervalMs - this.now();
  }

  start(cluster: RealCluster, intervalMs = 250): void {
    const poll = async (): Promise<void> => {
      if (this.polling) return;
      this.polling = true;
      try {
        for (const row of await cluster.sandboxRows()) {
          const prev = this.last.get(row.id);
          if (prev === row.phase) continue;
          this.last.set(row.id, row.phase);
          this.changes.push({ sandboxId: row.id, name: row.name, from: prev, to: row.phase, atMs: this.now() });
        }
      } catch {
        // the database may be going away at teardown
      } finally {
        this.polling = false;
      }
    };
    this.timer = setInterval(() => void poll(), intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }

  phaseOf(sandboxId: string): number | undefined {
    return this.last.get(sandboxId);
  }

  /** Ready → Provisioning changes, each with the last sweep at or before it. */
  demotions(): Array<PhaseChange & { afterSweepMs: number | undefined }> {
    return this.changes
      .filter((c) => c.from === 2 && c.to === 1)
      .map((c) => {
        const sweep = [...this.sweeps].reverse().find((s) => s <= c.atMs);
        return { ...c, afterSweepMs: sweep === undefined ? undefined : c.atMs - sweep };
      });
  }

  firstReadyMs(sandboxId: string): number | undefined {
    return this.changes.find((c) => c.sandboxId === sandboxId && c.to === 2)?.atMs;
  }
}

export function stats(values: number[]): { n: number; min: number; median: number; p95: number; max: number } {
  const v = [...values].sort((a, b) => a - b);
  const at = (q: number): number => v[Math.min(v.length - 1, Math.floor(q * (v.length - 1)))] ?? NaN;
  return { n: v.length, min: v[0] ?? NaN, median: at(0.5), p95: at(0.95), max: v.at(-1) ?? NaN };
}

export function fmtStats(values: number[], unit = 'ms'): string {
  const s = stats(values);
  return `n=${s.n} min=${s.min}${unit} median=${s.median}${unit} p95=${s.p95}${unit} max=${s.max}${unit}`;
}
