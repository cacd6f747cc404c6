// bench/results/latest.json is shared by every bench: each one merges its own keys into the file
// and leaves the others' alone.
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import os from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export interface BenchResult {
  value: number;
  unit: string;
  /** What the value is compared against: a path name or another result key. */
  baseline: string;
}

const RESULTS_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', 'results');
/** A results file of its own in bench/results (a bench whose runs are not `make bench`'s). */
export const resultsFile = (name: string): string => join(RESULTS_DIR, name);
export const RESULTS_FILE = resultsFile('latest.json');

export function machineMeta(): Record<string, unknown> {
  const cpus = os.cpus();
  return {
    cores: cpus.length,
    cpu: cpus[0]?.model.trim() ?? 'unknown',
    node: process.version,
    platform: `${process.platform}-${process.arch}`,
    date: new Date().toISOString(),
  };
}

async function readExisting(file: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return {};
    throw err;
  }
  // A corrupt file is another bench's problem to report, not a reason to drop these numbers.
  try {
    const parsed: unknown = JSON.parse(text);
    return parsed !== null && typeof parsed === 'object' && !Array.isArray(parsed) ? (parsed as Record<string, unknown>) : {};
  } catch {
    return {};
  }
}

/** Merges `results` and the machine description (`_meta`, plus `extraMeta`) into the results file. */
export async function mergeResults(
  results: Record<string, BenchResult>,
  extraMeta: Record<string, unknown> = {},
  file: string = RESULTS_FILE,
): Promise<void> {
  const existing = await readExisting(file);
  const oldMeta = existing._meta !== null && typeof existing._meta === 'object' ? (existing._meta as Record<string, unknown>) : {};
  const merged = { ...existing, ...results, _meta: { ...oldMeta, ...machineMeta(), ...extraMeta } };
  await mkdir(dirname(file), { recursive: true });
  // Write then rename, so a reader (or a crash mid-write) never sees half a file.
  const tmp = `${file}.${process.pid}.tmp`;
  await writeFile(tmp, `${JSON.stringify(merged, null, 2)}\n`);
  await rename(tmp, file);
}
