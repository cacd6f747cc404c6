// Writes that arrive while earlier ones are being written wait here and go out together: one
// statement or transaction (one commit, so one WAL flush) for everything that queued meanwhile.
// Ownership claims and releases use it: when a replica dies, thousands of its supervisors reconnect
// to the survivors at once, and written one at a time the burst outwaits the connection pool.
//
// At most `concurrent` batches are in flight, each of at most `maxBatch` items. Items that share a
// `key` are never in flight together: a later one waits for the batch holding the earlier one, so
// writes of one key commit in the order they were made.

export interface WriteBatchesOptions<T> {
  maxBatch: number;
  concurrent: number;
  /** Writes one batch. Settling each item (its promise) is up to the writer. */
  write: (batch: T[]) => Promise<void>;
  /** The writer threw: fail every item of its batch (settling an item twice is harmless). */
  failed: (batch: T[], err: unknown) => void;
  /** Items with the same key are written in order, never two in flight at once. */
  key?: (item: T) => string;
}

export class WriteBatches<T> {
  readonly #opts: WriteBatchesOptions<T>;
  readonly #queue: T[] = [];
  readonly #keysInFlight = new Set<string>();
  #inFlight = 0;

  constructor(opts: WriteBatchesOptions<T>) {
    if (!(opts.maxBatch >= 1) || !(opts.concurrent >= 1)) throw new RangeError('maxBatch and concurrent must be at least 1');
    this.#opts = opts;
  }

  /** Items waiting for a batch (not counting those being written). */
  get queued(): number {
    return this.#queue.length;
  }

  push(item: T): void {
    this.#queue.push(item);
    this.#start();
  }

  #start(): void {
    const { maxBatch, concurrent, key } = this.#opts;
    while (this.#inFlight < concurrent && this.#queue.length > 0) {
      const batch = key === undefined ? this.#queue.splice(0, maxBatch) : this.#takeByKey(key, maxBatch);
      if (batch.length === 0) return; // everything queued waits for a key in flight
      this.#inFlight++;
      void this.#run(batch);
    }
  }

  #takeByKey(key: (item: T) => string, maxBatch: number): T[] {
    const batch: T[] = [];
    const taken = new Set<string>();
    let kept = 0;
    // One pass: items whose key is in flight (or already in this batch) stay, in their order.
    for (let i = 0; i < this.#queue.length; i++) {
      const item = this.#queue[i] as T;
      const k = key(item);
      if (batch.length < maxBatch && !this.#keysInFlight.has(k) && !taken.has(k)) {
        taken.add(k);
        batch.push(item);
      } else {
        this.#queue[kept++] = item;
      }
    }
    this.#queue.length = kept;
    for (const k of taken) this.#keysInFlight.add(k);
    return batch;
  }

  async #run(batch: T[]): Promise<void> {
    try {
      await this.#opts.write(batch);
    } catch (err) {
      this.#opts.failed(batch, err);
    } finally {
      this.#inFlight--;
      const key = this.#opts.key;
      if (key !== undefined) for (const item of batch) this.#keysInFlight.delete(key(item));
      this.#start();
    }
  }
}
