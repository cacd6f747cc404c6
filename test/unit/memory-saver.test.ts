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
  const { stdout } = await promisify(execFile)(process.execPath, ['--expose-gc', '--import', 'tsx', FIXTURE, mode, String(watchMs)], { timeout: watchMs + 40_000 });
  return JSON.parse(stdout.trim().split('\n').at(-1)!) as Pooled;
}

const MB = 1048576;

/** One controller tick: the loop's utilization, the heap's size and what of it is used, the resident set (MB). */
type Tick = [u: number, heapMb: number, usedMb: number, residentMb: number];

/** A controller on fake timers (one tick a second) fed from `ticks`; the last tick repeats. */
function controller(mode: MemorySaverMode, ticks: Tick[], supported = true) {
  const flags: boolean[] = [];
  const switches: Array<[boolean, string]> = [];
  let current: Tick = ticks[0] ?? [0, 0, 0, 0];
  const saver = startMemorySaver({
    mode,
    supported,
    intervalMs: 1000,
    quietUtilization: 0.1,
    busyUtilization: 0.3,
    quietIntervals: 3,
    releaseBytes: 32 * MB,
    pulseMs: 10_000,
    pulseTries: 2,
    setFlag: (on) => flags.push(on),
    utilization: () => {
      current = ticks.shift() ?? current;
      return current[0];
    },
    heap: () => ({ total: current[1] * MB, used: current[2] * MB }),
    residentBytes: () => current[3] * MB,
    now: () => Date.now(),
    onSwitch: (on, why) => switches.push([on, why]),
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

  it('auto: never while the heap has not shrunk from its peak, however quiet the loop is', () => {
    vi.useFakeTimers();
    const { flags } = controller('auto', [[0.5, 100, 90, 300], [0.01, 120, 110, 310], [0.01, 110, 100, 305], [0.01, 100, 90, 300]]);
    vi.advanceTimersByTime(30_000);
    expect(flags).toEqual([]); // peak 120, 90 used now: less than 32 MB to give back
  });

  it('auto: on after a quiet spell once the heap\'s peak is far above what it uses, off at the end of the pulse, counting what came back', () => {
    vi.useFakeTimers();
    const { saver, flags, switches } = controller('auto', [
      [0.9, 200, 190, 400], // a burst: the heap at its peak
      [0.01, 150, 140, 400],
      [0.5, 150, 140, 400], // busy: the quiet count starts again
      [0.01, 150, 140, 400],
      [0.01, 150, 140, 400],
      [0.01, 150, 140, 400], // third quiet second in a row: on
      [0.02, 150, 140, 399],
      [0.03, 148, 138, 340], // the memory reducer gave the pool back
      [0.01, 148, 138, 340],
    ]);
    vi.advanceTimersByTime(5000);
    expect(flags).toEqual([]);
    vi.advanceTimersByTime(1000);
    expect(saver.on).toBe(true);
    vi.advanceTimersByTime(9000); // the pool came back at the eighth second; the pulse still runs
    expect(saver.on).toBe(true);
    vi.advanceTimersByTime(1000);
    expect(saver.on).toBe(false);
    expect(switches).toEqual([
      [true, 'quiet'],
      [false, 'released'],
    ]);
    expect(saver.releasedBytes).toBe(60 * MB);
    vi.advanceTimersByTime(30_000); // quiet, but the heap has not grown again since
    expect(flags).toEqual([true, false]);
    saver.stop();
  });

  it('auto: off at the first busy second and on again at the next quiet spell; off after a pulse that gave nothing back, and not after a second such pulse', () => {
    vi.useFakeTimers();
    const { saver, flags, switches } = controller('auto', [
      [0.9, 200, 190, 400],
      [0.01, 150, 140, 400],
      [0.01, 150, 140, 400],
      [0.01, 150, 140, 400], // on
      [0.4, 160, 150, 400], // traffic: off, the peak stays
      [0.01, 150, 140, 400],
      [0.01, 150, 140, 400],
      [0.01, 150, 140, 400], // on again
      [0.01, 150, 140, 400], // ...and nothing given back for the whole pulse
    ]);
    vi.advanceTimersByTime(8000);
    expect(switches).toEqual([
      [true, 'quiet'],
      [false, 'busy'],
      [true, 'quiet'],
    ]);
    vi.advanceTimersByTime(10_000);
    expect(switches.at(-1)).toEqual([false, 'pulse over']);
    vi.advanceTimersByTime(13_000); // three quiet seconds, another pulse, nothing again
    expect(switches.slice(3)).toEqual([
      [false, 'pulse over'],
      [true, 'quiet'],
      [false, 'pulse over'],
    ]);
    vi.advanceTimersByTime(60_000); // pulseTries (2) spent: not before the heap has grown by 32 MB
    expect(flags).toEqual([true, false, true, false, true, false]);
    expect(saver.switchesOn).toBe(3);
    expect(saver.releasedBytes).toBe(0);
    saver.stop();
  });

  it('auto: a second made busy by V8\'s own collection does not end a pulse; traffic does, and the next quiet spell tries again', () => {
    vi.useFakeTimers();
    const { saver, switches } = controller('auto', [
      [0.9, 200, 190, 400],
      [0.01, 150, 140, 400],
      [0.01, 150, 140, 400],
      [0.01, 150, 140, 400], // on
      [0.2, 150, 140, 395], // a collection: 20 % busy, the pulse goes on
      [0.6, 150, 140, 395], // traffic: off, nothing came back yet, the peak stays
      [0.01, 150, 140, 395],
      [0.01, 150, 140, 395],
      [0.01, 150, 140, 395], // on again
      [0.01, 140, 130, 330], // the memory reducer gave the pool back
    ]);
    vi.advanceTimersByTime(5000);
    expect(saver.on).toBe(true);
    vi.advanceTimersByTime(1000);
    expect(switches).toEqual([
      [true, 'quiet'],
      [false, 'busy'],
    ]);
    vi.advanceTimersByTime(60_000);
    expect(switches.slice(2)).toEqual([
      [true, 'quiet'],
      [false, 'released'],
    ]);
    expect(saver.releasedBytes).toBe(65 * MB);
    expect(saver.switchesOn).toBe(2);
    saver.stop();
  });

  it('on sets the flag once at start; off and a V8 without the pool never touch it', () => {
    vi.useFakeTimers();
    const on = controller('on', [[0.9, 100, 90, 300]]);
    const off = controller('off', [[0.9, 300, 290, 500], [0, 100, 90, 500]]);
    const unsupported = controller('auto', [[0.9, 300, 290, 500], [0, 100, 90, 500]], false);
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
    const { saver } = controller('auto', [[0.9, 200, 190, 400], [0, 100, 90, 400], [0, 100, 90, 400], [0, 100, 90, 400]]);
    registerMemorySaverMetrics(registry, saver);
    vi.advanceTimersByTime(4000);
    expect(await registry.metrics()).toContain('ohs_node_memory_saver 1');
    saver.stop();
    // The same with the resident set 100 MB lower from the tick after it went on.
    const { saver: released } = controller('auto', [[0.9, 200, 190, 400], [0, 100, 90, 400], [0, 100, 90, 400], [0, 100, 90, 400], [0, 100, 90, 300]]);
    const registry2 = new Registry();
    registerMemorySaverMetrics(registry2, released);
    vi.advanceTimersByTime(15_000); // on at the fourth second, off at the end of its 10 s pulse
    const text = await registry2.metrics();
    expect(text).toContain('ohs_node_memory_saver 0');
    expect(text).toContain('ohs_node_memory_saver_switches_total 1');
    expect(text).toContain(`ohs_node_memory_saver_released_bytes_total ${100 * MB}`);
    released.stop();
  });

  it('gives back the memory of a freed heap on every Node; without it Node 24 keeps it', { timeout: 120_000 }, async () => {
    const [auto, off] = await Promise.all([pooledPages('auto', 60_000), pooledPages('off', 15_000)]);
    const freedShare = (p: Pooled): number => (p.after_mb - p.base_mb) / (p.loaded_mb - p.base_mb);
    expect(auto.loaded_mb - auto.base_mb).toBeGreaterThan(150);
    expect(freedShare(auto), JSON.stringify(auto)).toBeLessThan(0.25);
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
