// The batcher behind ownership claims and releases: what queues while a batch is written goes out
// together, at most `concurrent` batches at once, and one key's items are written in order.
import { describe, expect, it } from 'vitest';
import { WriteBatches } from '../../../src/ownership/write-batches.ts';

interface Item {
  key: string;
  n: number;
}

/** A writer whose batches finish only when the test says so. */
function heldWriter() {
  const batches: Item[][] = [];
  const finishers: (() => void)[] = [];
  return {
    batches,
    write: (batch: Item[]) => {
      batches.push(batch);
      return new Promise<void>((resolve) => finishers.push(resolve));
    },
    /** Finishes the oldest unfinished batch and lets the batcher start the next ones. */
    async finishOne(): Promise<void> {
      const f = finishers.shift();
      if (f === undefined) throw new Error('no batch in flight');
      f();
      await new Promise((r) => setImmediate(r));
    },
    get inFlight() {
      return finishers.length;
    },
  };
}

const noFailure = (): void => {
  throw new Error('no writer fails in this test');
};

describe('WriteBatches', () => {
  it('writes the first item at once and what queues meanwhile in the next batches, at most `concurrent` in flight', async () => {
    const w = heldWriter();
    const b = new WriteBatches<Item>({ maxBatch: 3, concurrent: 2, write: w.write, failed: noFailure });
    b.push({ key: 'a', n: 0 });
    b.push({ key: 'b', n: 1 });
    expect(w.batches.map((x) => x.map((i) => i.n))).toEqual([[0], [1]]);
    for (let n = 2; n < 9; n++) b.push({ key: `k${n}`, n });
    expect(w.inFlight).toBe(2);
    expect(b.queued).toBe(7);
    await w.finishOne();
    expect(w.batches.at(-1)?.map((i) => i.n)).toEqual([2, 3, 4]); // at most maxBatch
    await w.finishOne();
    expect(w.batches.at(-1)?.map((i) => i.n)).toEqual([5, 6, 7]);
    await w.finishOne();
    expect(w.batches.at(-1)?.map((i) => i.n)).toEqual([8]);
    await w.finishOne();
    await w.finishOne();
    expect(w.inFlight).toBe(0);
    expect(b.queued).toBe(0);
    expect(w.batches.flat().map((i) => i.n)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8]);
  });

  it('never has two items of one key in flight, and writes them in the order they were pushed', async () => {
    const w = heldWriter();
    const b = new WriteBatches<Item>({ maxBatch: 10, concurrent: 2, write: w.write, failed: noFailure, key: (i) => i.key });
    b.push({ key: 'x', n: 0 });
    // Queued while x#0 is written: x#1 and x#2 must wait for it, y and z need not.
    b.push({ key: 'x', n: 1 });
    b.push({ key: 'y', n: 2 });
    b.push({ key: 'x', n: 3 });
    b.push({ key: 'z', n: 4 });
    expect(w.batches.map((x) => x.map((i) => i.n))).toEqual([[0], [2]]);
    expect(b.queued).toBe(3);
    await w.finishOne(); // x#0 done: x#1 goes (one x per batch), z with it; x#3 still waits
    expect(w.batches.at(-1)?.map((i) => i.n)).toEqual([1, 4]);
    expect(b.queued).toBe(1);
    await w.finishOne(); // y done; x#1 still in flight, so x#3 cannot start
    expect(w.inFlight).toBe(1);
    expect(b.queued).toBe(1);
    await w.finishOne();
    expect(w.batches.at(-1)?.map((i) => i.n)).toEqual([3]);
    await w.finishOne();
    const xs = w.batches.flat().filter((i) => i.key === 'x').map((i) => i.n);
    expect(xs).toEqual([0, 1, 3]);
    for (const batch of w.batches) expect(new Set(batch.map((i) => i.key)).size).toBe(batch.length);
  });

  it('hands a failed batch to `failed` and goes on with the next', async () => {
    const seen: number[][] = [];
    const failedBatches: [number[], string][] = [];
    let fail = true;
    const b = new WriteBatches<Item>({
      maxBatch: 5,
      concurrent: 1,
      write: async (batch) => {
        seen.push(batch.map((i) => i.n));
        await new Promise((r) => setImmediate(r));
        if (fail) {
          fail = false;
          throw new Error('write failed');
        }
      },
      failed: (batch, err) => void failedBatches.push([batch.map((i) => i.n), (err as Error).message]),
    });
    const unhandled: unknown[] = [];
    const onUnhandled = (err: unknown): void => void unhandled.push(err);
    process.on('unhandledRejection', onUnhandled);
    try {
      b.push({ key: 'a', n: 0 });
      b.push({ key: 'b', n: 1 });
      for (let i = 0; i < 20 && seen.length < 2; i++) await new Promise((r) => setImmediate(r));
      expect(seen).toEqual([[0], [1]]);
    } finally {
      await new Promise((r) => setImmediate(r));
      process.off('unhandledRejection', onUnhandled);
    }
    expect(unhandled).toEqual([]);
    expect(failedBatches).toEqual([[[0], 'write failed']]);
  });

  it('refuses sizes below one', () => {
    expect(() => new WriteBatches<Item>({ maxBatch: 0, concurrent: 1, write: async () => {}, failed: noFailure })).toThrow(RangeError);
    expect(() => new WriteBatches<Item>({ maxBatch: 1, concurrent: 0, write: async () => {}, failed: noFailure })).toThrow(RangeError);
  });
});
