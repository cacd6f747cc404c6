// V8's memory saver mode while the sidecar is quiet (src/memory-saver.ts): when the controller
// switches, and what it gives back on a V8 that keeps freed heap pages (Node 24).
import { execFile } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { Registry } from 'prom-client';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { registerMemorySaverMetrics, startMemorySaver, v8KeepsFreedPages, type MemorySaverMode } from '../../src/memory-saver.ts';

const FIXTURE = join(dirname(fileURLToPath(import.meta.url)), 'fixtures', 'pooled-pages.ts');

interface Pooled {
  base_mb: number;
  loaded_mb: number;
  after_mb: number;
  ms: number;
  supported: boolean;
}

async function pooledPages(mode: MemorySaverMode, watchMs: number): Promise<Pooled> {
  const { stdout } = await promisify(execFile)(process.execPath, ['--expose-gc', '--import', 'tsx', FIXTURE, mode, String(watchMs)], { timeout: 60_000 });
  return JSON.parse(stdout.trim().split('\n').at(-1)!) as Pooled;
}

/** A controller on fake timers whose utilization readings come from `readings`. */
function controller(mode: MemorySaverMode, readings: number[], supported = true) {
  const flags: boolean[] = [];
  const switches: Array<[boolean, number]> = [];
  const saver = startMemorySaver({
    mode,
    supported,
    intervalMs: 1000,
    quietUtilization: 0.1,
    quietIntervals: 3,
    setFlag: (on) => flags.push(on),
    utilization: () => readings.shift() ?? 0,
    onSwitch: (on, u) => switches.push([on, u]),
  });
  return { saver, flags, switches };
}

describe('memory saver', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('is for V8 13 and later, the V8 that keeps freed heap pages', () => {
    expect(v8KeepsFreedPages('13.6.233.17-node.53')).toBe(true);
    expect(v8KeepsFreedPages('14.1.146.11-node.10')).toBe(true);
    expect(v8KeepsFreedPages('11.3.244.8-node.33')).toBe(false);
    expect(v8KeepsFreedPages('12.4.254.21-node.33')).toBe(false);
  });

  it('auto: on after a quiet spell, off at the first busy interval, on again after the next quiet spell', () => {
    vi.useFakeTimers();
    const { saver, flags, switches } = controller('auto', [0.02, 0.05, 0.5, 0.01, 0.02, 0.03, 0.04, 0.6, 0.01, 0.01, 0.01]);
    vi.advanceTimersByTime(2000);
    expect(saver.on).toBe(false); // two quiet intervals, then a busy one resets the count
    vi.advanceTimersByTime(1000);
    expect(flags).toEqual([]);
    vi.advanceTimersByTime(3000);
    expect(saver.on).toBe(true);
    expect(switches).toEqual([[true, 0.03]]);
    vi.advanceTimersByTime(1000); // 0.04: still quiet, nothing to set
    expect(flags).toEqual([true]);
    vi.advanceTimersByTime(1000); // 0.6
    expect(saver.on).toBe(false);
    vi.advanceTimersByTime(3000);
    expect(flags).toEqual([true, false, true]);
    expect(saver.switchesOn).toBe(2);
    saver.stop();
    vi.advanceTimersByTime(10_000);
    expect(flags).toEqual([true, false, true]);
  });

  it('on sets the flag once at start; off and a V8 without the pool never touch it', () => {
    vi.useFakeTimers();
    const on = controller('on', [0.9, 0.9]);
    const off = controller('off', [0, 0, 0, 0, 0]);
    const unsupported = controller('auto', [0, 0, 0, 0, 0], false);
    vi.advanceTimersByTime(10_000);
    expect(on.flags).toEqual([true]);
    expect(on.saver.on).toBe(true);
    expect(off.flags).toEqual([]);
    expect(unsupported.flags).toEqual([]);
    expect(unsupported.saver.supported).toBe(false);
  });

  it('exports whether it is on and how often it was turned on', async () => {
    vi.useFakeTimers();
    const registry = new Registry();
    const { saver } = controller('auto', [0, 0, 0]);
    registerMemorySaverMetrics(registry, saver);
    vi.advanceTimersByTime(3000);
    const text = await registry.metrics();
    expect(text).toContain('ohs_node_memory_saver 1');
    expect(text).toContain('ohs_node_memory_saver_switches_total 1');
    saver.stop();
  });

  it('gives back the memory of a freed heap on every Node; without it Node 24 keeps it', { timeout: 90_000 }, async () => {
    const [auto, off] = await Promise.all([pooledPages('auto', 30_000), pooledPages('off', 15_000)]);
    const freedShare = (p: Pooled): number => (p.after_mb - p.base_mb) / (p.loaded_mb - p.base_mb);
    expect(auto.loaded_mb - auto.base_mb).toBeGreaterThan(150);
    expect(freedShare(auto)).toBeLessThan(0.25);
    if (v8KeepsFreedPages()) {
      // V8 13 pools the freed pages until a memory-reducing collection, which it never runs for a
      // process that does not look idle to it; memory saver mode lets its memory reducer run one.
      expect(off.supported).toBe(true);
      expect(freedShare(off)).toBeGreaterThan(0.6);
    } else {
      // Node 20's V8 unmaps freed pages after each collection: nothing for the controller to do.
      expect(auto.supported).toBe(false);
      expect(freedShare(off)).toBeLessThan(0.25);
    }
  });
});
