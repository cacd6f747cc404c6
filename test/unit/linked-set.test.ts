// src/linked-set.ts: a set whose members die young once taken out, where a long-lived Set keeps
// them to the next full collection (see the module's header).
import { execFile } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { LinkedSet } from '../../src/linked-set.ts';

const FIXTURE = join(dirname(fileURLToPath(import.meta.url)), 'fixtures', 'young-survivors.ts');

/** MB of what the fixture let go of that survives a scavenge (see the fixture). */
async function surviving(which: 'set' | 'linked'): Promise<{ released_mb: number; survived_mb: number }> {
  // 64 MB semi-spaces hold the case's ~40 MB; with 128 MB Node 24 starts a full collection during it.
  const gcArgs = ['--expose-gc', '--min-semi-space-size=64', '--max-semi-space-size=64', '--no-allocation-site-pretenuring'];
  const { stdout } = await promisify(execFile)(process.execPath, [...gcArgs, '--import', 'tsx', FIXTURE, which], { timeout: 60_000 });
  return JSON.parse(stdout.trim().split('\n').at(-1)!) as { released_mb: number; survived_mb: number };
}

describe('LinkedSet', () => {
  it('holds what was added, in order, until it is deleted', () => {
    const set = new LinkedSet<string>();
    const a = set.add('a');
    set.add('b');
    const c = set.add('c');
    expect([...set]).toEqual(['a', 'b', 'c']);
    expect(set.size).toBe(3);
    expect(set.delete(a)).toBe(true);
    expect(set.delete(c)).toBe(true);
    expect([...set]).toEqual(['b']);
    expect(set.size).toBe(1);
    // The same value twice is two members.
    const b2 = set.add('b');
    expect([...set]).toEqual(['b', 'b']);
    expect(set.delete(b2)).toBe(true);
    expect([...set]).toEqual(['b']);
  });

  it('deletes a member once: again, or after a clear, it is a no-op', () => {
    const set = new LinkedSet<number>();
    const one = set.add(1);
    const two = set.add(2);
    expect(set.delete(one)).toBe(true);
    expect(set.delete(one)).toBe(false);
    expect(set.size).toBe(1);
    set.clear();
    expect(set.size).toBe(0);
    expect([...set]).toEqual([]);
    expect(set.delete(two)).toBe(false);
    expect(set.size).toBe(0);
    set.add(3);
    expect([...set]).toEqual([3]);
  });

  it('iterates over the members at the time of the call, whatever is added or deleted meanwhile', () => {
    const set = new LinkedSet<number>();
    const members = [1, 2, 3, 4].map((n) => set.add(n));
    const seen: number[] = [];
    for (const n of set) {
      seen.push(n);
      // What a close-all does: each member's close takes it (and here its neighbour) out.
      set.delete(members[n - 1]!);
      if (n < 4) set.delete(members[n]!);
      set.add(n * 10);
    }
    expect(seen).toEqual([1, 2, 3, 4]);
    expect([...set]).toEqual([10, 20, 30, 40]);
    expect(set.size).toBe(4);
  });

  it('lets members taken out die young, where a long-lived Set keeps them through the next scavenge', async () => {
    const [set, linked] = await Promise.all([surviving('set'), surviving('linked')]);
    // 1,000 members, each reaching a ~40 KB array, let go of.
    expect(set.released_mb).toBeGreaterThan(30);
    expect(linked.released_mb).toBeGreaterThan(30);
    expect(set.survived_mb).toBeGreaterThan(0.8 * set.released_mb);
    expect(linked.survived_mb).toBeLessThan(0.1 * linked.released_mb);
  });
});
