import { describe, expect, it } from 'vitest';
import { TtlCache } from '../../src/ownership/cache.ts';

function clock(start = 1000): { now: () => number; advance(ms: number): void } {
  let t = start;
  return { now: () => t, advance: (ms) => (t += ms) };
}

describe('owner ttl cache', () => {
  it('returns entries until their ttl runs out, including cached nulls', () => {
    const c = clock();
    const cache = new TtlCache<string | null>({ now: c.now });
    cache.set('a', 'A', 100);
    cache.set('none', null, 50);
    expect(cache.get('a')).toEqual({ value: 'A' });
    expect(cache.get('none')).toEqual({ value: null });
    expect(cache.get('missing')).toBeUndefined();
    c.advance(50);
    expect(cache.get('none')).toBeUndefined();
    expect(cache.get('a')).toEqual({ value: 'A' });
    c.advance(50);
    expect(cache.get('a')).toBeUndefined();
    expect(cache.size).toBe(0);
  });

  it('never stores an entry with no time left', () => {
    const cache = new TtlCache<string>({ now: clock().now });
    expect(cache.set('a', 'A', 0)).toBe(false);
    expect(cache.set('a', 'A', -5)).toBe(false);
    expect(cache.set('a', 'A', Number.NaN)).toBe(false);
    expect(cache.get('a')).toBeUndefined();
  });

  it('refuses a value read before an invalidation of the same key', () => {
    const c = clock();
    const cache = new TtlCache<string>({ now: c.now });
    const token = cache.beginRead();
    cache.invalidate('a');
    expect(cache.set('a', 'stale', 100, token)).toBe(false);
    expect(cache.get('a')).toBeUndefined();
    // Other keys are unaffected, and a read started after the invalidation is stored.
    expect(cache.set('b', 'B', 100, token)).toBe(true);
    expect(cache.set('a', 'fresh', 100, cache.beginRead())).toBe(true);
    expect(cache.get('a')).toEqual({ value: 'fresh' });
  });

  it('refuses every value read before a clear', () => {
    const cache = new TtlCache<string>({ now: clock().now });
    const token = cache.beginRead();
    cache.clear();
    expect(cache.set('x', 'X', 100, token)).toBe(false);
    expect(cache.set('x', 'X', 100, cache.beginRead())).toBe(true);
  });

  it('refuses reads slower than maxReadMs and forgets old invalidations', () => {
    const c = clock();
    const cache = new TtlCache<string>({ now: c.now, maxReadMs: 100 });
    const slow = cache.beginRead();
    c.advance(101);
    expect(cache.set('a', 'A', 100, slow)).toBe(false);
    for (let i = 0; i < 50; i++) cache.invalidate(`k${i}`);
    c.advance(200);
    const token = cache.beginRead();
    cache.invalidate('late');
    expect(cache.set('k1', 'K', 100, token)).toBe(true);
    expect(cache.set('late', 'L', 100, token)).toBe(false);
  });

  it('evicts the oldest entries beyond maxEntries', () => {
    const cache = new TtlCache<number>({ now: clock().now, maxEntries: 3 });
    for (let i = 1; i <= 4; i++) cache.set(`k${i}`, i, 1000);
    expect(cache.size).toBe(3);
    expect(cache.get('k1')).toBeUndefined();
    expect(cache.get('k4')).toEqual({ value: 4 });
  });
});
