// A bound on owner lookups waiting for Postgres. Lookups are client-driven (any id, as often as a
// client likes); pg.Pool queues callers without limit, so a flood of ids nobody owns would grow that
// queue, and every lookup's wait with it, for as long as the flood lasts. The gate lets as many
// lookups run as the lookup pool has connections, lets `maxWaiting` more wait, and refuses the rest
// at once: the caller learns in microseconds that the replica is overloaded instead of minutes later.
import { OhsError } from '../errors.ts';

export const DEFAULT_LOOKUP_QUEUE_MAX = 1_000;

export class LookupGate {
  private running = 0;
  private readonly waiting: Array<() => void> = [];

  constructor(
    private readonly concurrency: number,
    private readonly maxWaiting: number,
    /** Called for each refused lookup (metrics, rate-limited logs). */
    private readonly onRefused?: (waiting: number) => void,
  ) {}

  /** Lookups waiting for a turn. */
  get queued(): number {
    return this.waiting.length;
  }

  /** Runs `fn` when a connection's worth of room is free; throws OHS_ERR_OVERLOADED when the queue is full. */
  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.running < this.concurrency) {
      this.running++;
    } else {
      if (this.waiting.length >= this.maxWaiting) {
        this.onRefused?.(this.waiting.length);
        throw new OhsError('OHS_ERR_OVERLOADED', `owner lookups over capacity (${this.concurrency} running, ${this.waiting.length} waiting); retry shortly`, {
          details: { reason: 'lookup_queue_full', waiting: this.waiting.length },
        });
      }
      // The finishing lookup hands its turn over directly, so `running` stays as it is.
      await new Promise<void>((resolve) => this.waiting.push(resolve));
    }
    try {
      return await fn();
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else this.running--;
    }
  }
}
