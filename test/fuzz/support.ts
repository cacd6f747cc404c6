// Shared knobs for the property-based fuzz targets (issue 10 item 6). `make test` runs each
// property OHS_FUZZ_RUNS times (default 1,000); `make fuzz` sets 100,000. OHS_FUZZ_SEED replays a
// failing run (fast-check prints the seed and the shrunk counterexample on failure).
import { appendFileSync } from 'node:fs';
import fc from 'fast-check';
import { afterAll } from 'vitest';

export const FUZZ_RUNS = positiveInt(process.env.OHS_FUZZ_RUNS, 1000);
const fcAssert = fc.assert as <Ts>(p: fc.IProperty<Ts> | fc.IAsyncProperty<Ts>, params: fc.Parameters<Ts>) => Promise<void> | void;
const SEED = process.env.OHS_FUZZ_SEED === undefined ? undefined : Number(process.env.OHS_FUZZ_SEED);

/** Generous per-test timeout: 5 ms per case (a loaded 2-core machine), at least a minute. */
export const FUZZ_TIMEOUT_MS = Math.max(60_000, FUZZ_RUNS * 5);

function positiveInt(raw: string | undefined, fallback: number): number {
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1) throw new Error(`OHS_FUZZ_RUNS must be a positive integer, got ${raw}`);
  return n;
}

/** Cases actually executed, per target (a target is one function or class under test), by outcome. */
const counts = new Map<string, Map<string, number>>();

/**
 * Counts one executed case for `target`; call it from inside every property. `outcome` (e.g. `key`,
 * `MALFORMED`) shows in the report, so a generator that only ever produces one outcome is visible.
 */
export function counted(target: string, outcome = ''): void {
  const byOutcome = counts.get(target) ?? new Map<string, number>();
  byOutcome.set(outcome, (byOutcome.get(outcome) ?? 0) + 1);
  counts.set(target, byOutcome);
}

export function fuzzParams<T>(extra: fc.Parameters<T> = {}): fc.Parameters<T> {
  return { numRuns: FUZZ_RUNS, ...(SEED === undefined ? {} : { seed: SEED }), ...extra };
}

/** Runs per fc.assert call; between calls the worker yields, so long runs never starve vitest's RPC. */
const CHUNK_RUNS = 5_000;

/**
 * Checks `property` for FUZZ_RUNS cases, in chunks of CHUNK_RUNS with a fresh random seed each (the
 * failing chunk's seed is printed; replay it with OHS_FUZZ_SEED=<seed> OHS_FUZZ_RUNS=<runs>).
 */
export async function fuzzAssert<Ts>(property: fc.IProperty<Ts> | fc.IAsyncProperty<Ts>): Promise<void> {
  if (SEED !== undefined) {
    await fcAssert(property, fuzzParams());
    return;
  }
  for (let done = 0; done < FUZZ_RUNS; done += CHUNK_RUNS) {
    await fcAssert(property, { numRuns: Math.min(CHUNK_RUNS, FUZZ_RUNS - done) });
    await new Promise((resolve) => setImmediate(resolve));
  }
}

/** Prints the case counts of one test file when it ends, and appends them to OHS_FUZZ_REPORT if set. */
export function reportCounts(file: string): void {
  afterAll(() => {
    const rows = [...counts].map(([target, by]) => [target, [...by.values()].reduce((a, b) => a + b, 0), by] as const).sort(([a], [b]) => a.localeCompare(b));
    const lines = rows.map(([target, n, by]) => {
      const outcomes = [...by].filter(([o]) => o !== '').sort(([, a], [, b]) => b - a);
      const split = outcomes.length === 0 ? '' : `  (${outcomes.map(([o, k]) => `${o} ${k}`).join(', ')})`;
      return `  ${target.padEnd(64)} ${n.toLocaleString('en-US').padStart(11)} cases${split}`;
    });
    console.log(`fuzz ${file} (OHS_FUZZ_RUNS=${FUZZ_RUNS} per property):\n${lines.join('\n')}`);
    const report = process.env.OHS_FUZZ_REPORT;
    if (report) for (const [target, n, by] of rows) appendFileSync(report, `${JSON.stringify({ file, target, cases: n, outcomes: Object.fromEntries(by) })}\n`);
  });
}
