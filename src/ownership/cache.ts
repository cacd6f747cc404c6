// A small in-process TTL cache. Pure: the clock is passed in, nothing is scheduled.
//
// Reads of the backing store are slow and race with invalidations: a lookup may read the old owner
// from Postgres, an invalidation for that sandbox arrives, and then the lookup stores what it read.
// `beginRead()` hands out a token before such a read; `set(..., token)` refuses to store a value
// when the key (or the whole cache) was invalidated after the token was taken.

export interface ReadToken {
  readonly seq: number;
  readonly atMs: number;
}

export interface TtlCacheOptions {
  now: () => number;
  /** Oldest entries are evicted beyond this size. */
  maxEntries?: number;
  /**
   * How long invalidations are remembered for in-flight reads. A read that takes longer than this
   * is not stored at all, which keeps the bookkeeping bounded.
   */
  maxReadMs?: number;
}

interface Entry<V> {
  value: V;
  expiresAtMs: number;
  storedAtMs: number;
}

interface Invalidation {
  seq: number;
  atMs: number;
}

export class TtlCache<V> {
  readonly #now: () => number;
  readonly #maxEntries: number;
  readonly #maxReadMs: number;
  readonly #entries = new Map<string, Entry<V>>();
  readonly #invalidations = new Map<string, Invalidation>();
  #seq = 0;
  #clearedAtSeq = 0;

  constructor(opts: TtlCacheOptions) {
    this.#now = opts.now;
    this.#maxEntries = Math.max(1, opts.maxEntries ?? 10_000);
    this.#maxReadMs = Math.max(1, opts.maxReadMs ?? 10_000);
  }

  get size(): number {
    return this.#entries.size;
  }

  /** A hit is wrapped so that cached `null`/`undefined` values are distinguishable from a miss. */
  get(key: string): { value: V } | undefined {
    const entry = this.#entries.get(key);
    if (entry === undefined) return undefined;
    if (entry.expiresAtMs <= this.#now()) {
      this.#entries.delete(key);
      return undefined;
    }
    return { value: entry.value };
  }

  /** What `get` would answer, with the entry's age and remaining TTL; never evicts (for explain). */
  peek(key: string): { value: V; ageMs: number; ttlLeftMs: number } | undefined {
    const entry = this.#entries.get(key);
    const now = this.#now();
    if (entry === undefined || entry.expiresAtMs <= now) return undefined;
    return { value: entry.value, ageMs: now - entry.storedAtMs, ttlLeftMs: entry.expiresAtMs - now };
  }

  beginRead(): ReadToken {
    return { seq: this.#seq, atMs: this.#now() };
  }

  /**
   * Stores `value` for `ttlMs`. With a token, the value is stored only if neither the key nor the
   * whole cache was invalidated since the token was taken. Returns whether it was stored.
   */
  set(key: string, value: V, ttlMs: number, token?: ReadToken): boolean {
    const now = this.#now();
    if (!(ttlMs > 0)) return false;
    if (token !== undefined && !this.#unchangedSince(key, token, now)) return false;
    this.#entries.delete(key); // re-insert at the end: Map order is our eviction order
    this.#entries.set(key, { value, expiresAtMs: now + ttlMs, storedAtMs: now });
    while (this.#entries.size > this.#maxEntries) {
      const oldest = this.#entries.keys().next();
      if (oldest.done === true) break;
      this.#entries.delete(oldest.value);
    }
    return true;
  }

  invalidate(key: string): void {
    const now = this.#now();
    this.#entries.delete(key);
    this.#seq += 1;
    this.#invalidations.delete(key);
    this.#invalidations.set(key, { seq: this.#seq, atMs: now });
    this.#pruneInvalidations(now);
  }

  clear(): void {
    this.#entries.clear();
    this.#invalidations.clear();
    this.#seq += 1;
    this.#clearedAtSeq = this.#seq;
  }

  #unchangedSince(key: string, token: ReadToken, now: number): boolean {
    if (now - token.atMs > this.#maxReadMs) return false;
    if (this.#clearedAtSeq > token.seq) return false;
    const inv = this.#invalidations.get(key);
    return inv === undefined || inv.seq <= token.seq;
  }

  #pruneInvalidations(now: number): void {
    // Insertion order is invalidation order, so the stale ones are at the front.
    for (const [key, inv] of this.#invalidations) {
      if (now - inv.atMs <= this.#maxReadMs) break;
      this.#invalidations.delete(key);
    }
  }
}
