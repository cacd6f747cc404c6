// V8's memory saver mode for a moment after a burst, so that V8 gives back the heap pages it freed.
//
// From V8 13 (Node 24) the heap pages a collection frees go to a pool and stay resident until a
// collection that reduces memory, and V8 runs one only while it thinks the process is idle or in
// memory saver mode. A server never looks idle to V8 (its memory reducer reads "high allocation"
// even in a process that does nothing), so every page the heap ever used stays resident: a sidecar
// holding 10,000 + 10,000 sessions on Node 24 settled at 351-390 MB against Node's floor of ~290
// (bench/scale.ts), 163 MB of resident heap pages for a 142 MB heap. Node 20's V8 gives them back.
//
// Memory saver mode on all the time gets them back too (settled 298 MB), but V8 then also collects
// more often: 5-20 % fewer opens per second, and a transfer that starts while it is on runs a
// memory-reducing full collection for each few MB of buffers (~17 % of bulk throughput). So `auto`
// turns it on only when it is worth it and nothing is happening: after a quiet spell of the event
// loop, and only when the heap's peak size since the last time is `releaseBytes` or more above what
// it uses now (freed pages in the pool, and free space a compacting collection gives back). The
// memory reducer, which runs while the mode is on, then collects once (within ~8 s) and gives the
// pool back; the mode goes off again when traffic comes (the loop `busyUtilization` busy) or after
// `pulseMs`, and once something came back (or a few pulses gave nothing) it comes back only after
// the heap has grown `releaseBytes` again. V8 reads the flag each time it decides;
// `v8.setFlagsFromString` changes it at run time.
import { performance, type EventLoopUtilization } from 'node:perf_hooks';
import v8 from 'node:v8';
import { Gauge, type Registry } from 'prom-client';
import { totalCounter } from './metrics/registry.ts';

export const MEMORY_SAVER_MODES = ['auto', 'on', 'off'] as const;
export type MemorySaverMode = (typeof MEMORY_SAVER_MODES)[number];

/** Whether this V8 keeps freed heap pages until a memory-reducing collection and has the flag (V8 13 and later). */
export function v8KeepsFreedPages(v8Version: string = process.versions.v8): boolean {
  return Number.parseInt(v8Version, 10) >= 13;
}

export interface MemorySaverOptions {
  mode: MemorySaverMode;
  /** How often the event loop's utilization is read (auto). */
  intervalMs?: number;
  /** Utilization below which an interval counts as quiet. */
  quietUtilization?: number;
  /** Utilization from which an interval ends a pulse: above the quiet one, so that V8's own collection in a pulse does not end it. */
  busyUtilization?: number;
  /** Quiet intervals in a row before memory saver is turned on. */
  quietIntervals?: number;
  /** How far the heap's peak since the last time must be above what it uses now (auto). */
  releaseBytes?: number;
  /** Longest time memory saver stays on in one go (auto): two and a half of the memory reducer's 8 s rounds. */
  pulseMs?: number;
  /** Pulses that gave nothing back before the controller waits for the heap to grow again (auto). */
  pulseTries?: number;
  /** Defaults to this process's V8; false makes the controller do nothing. */
  supported?: boolean;
  /** Sets V8's flag (default `v8.setFlagsFromString`). */
  setFlag?: (on: boolean) => void;
  /** The event loop's utilization since the previous call (default from `performance.eventLoopUtilization`). */
  utilization?: () => number;
  /** V8's heap size and what of it is used, and the resident set, in bytes (defaults from this process). */
  heap?: () => { total: number; used: number };
  residentBytes?: () => number;
  now?: () => number;
  onSwitch?: (on: boolean, why: SwitchReason, detail: { utilization: number; heapMb: number; residentMb: number }) => void;
}

/** Why it went on or off: `released` and `pulse over` end a pulse after `pulseMs`, with and without the resident set dropping. */
export type SwitchReason = 'quiet' | 'released' | 'busy' | 'pulse over' | 'mode on';

export interface MemorySaver {
  readonly mode: MemorySaverMode;
  readonly supported: boolean;
  /** Whether V8's memory saver mode is on now. */
  readonly on: boolean;
  /** Times it was turned on. */
  readonly switchesOn: number;
  /** Bytes the resident set dropped while it was on. */
  readonly releasedBytes: number;
  stop(): void;
}

function setV8Flag(on: boolean): void {
  v8.setFlagsFromString(on ? '--memory-saver-mode' : '--no-memory-saver-mode');
}

function loopUtilization(): () => number {
  let last: EventLoopUtilization = performance.eventLoopUtilization();
  return () => {
    const now = performance.eventLoopUtilization();
    const delta = performance.eventLoopUtilization(now, last);
    last = now;
    return delta.utilization;
  };
}

export function startMemorySaver(opts: MemorySaverOptions): MemorySaver {
  const supported = opts.supported ?? v8KeepsFreedPages();
  const setFlag = opts.setFlag ?? setV8Flag;
  const quietUtilization = opts.quietUtilization ?? 0.1;
  const quietIntervals = opts.quietIntervals ?? 5;
  const busyUtilization = opts.busyUtilization ?? 0.3;
  const releaseBytes = opts.releaseBytes ?? 32 * 1048576;
  const pulseMs = opts.pulseMs ?? 20_000;
  const pulseTries = opts.pulseTries ?? 3;
  const heap =
    opts.heap ??
    (() => {
      const h = v8.getHeapStatistics();
      return { total: h.total_heap_size, used: h.used_heap_size };
    });
  const residentBytes = opts.residentBytes ?? (() => process.memoryUsage.rss());
  const now = opts.now ?? Date.now;
  let on = false;
  let switchesOn = 0;
  let releasedBytes = 0;
  let timer: NodeJS.Timeout | undefined;

  const turn = (next: boolean, why: SwitchReason, utilization: number, heapBytes: number, resident: number): void => {
    on = next;
    if (next) switchesOn += 1;
    setFlag(next);
    opts.onSwitch?.(next, why, { utilization, heapMb: Math.round(heapBytes / 1048576), residentMb: Math.round(resident / 1048576) });
  };

  if (supported && opts.mode === 'on') turn(true, 'mode on', Number.NaN, heap().total, residentBytes());
  if (supported && opts.mode === 'auto') {
    const utilization = opts.utilization ?? loopUtilization();
    let quiet = 0;
    let peak = 0;
    // After a pulse, the heap must grow past this before the next one.
    let rearmAt = 0;
    let onSince = 0;
    let residentAtOn = 0;
    let misses = 0;
    timer = setInterval(() => {
      const u = utilization();
      const { total, used } = heap();
      if (total > peak) peak = total;
      if (on) {
        const busy = u >= busyUtilization;
        if (!busy && now() - onSince < pulseMs) return;
        // A pulse ends when traffic comes or its time is over, not when the resident set drops: that
        // says nothing of whether the memory reducer has run yet (the pool is often the smaller part).
        const resident = residentBytes();
        const released = residentAtOn - resident >= releaseBytes / 2;
        if (released) releasedBytes += residentAtOn - resident;
        if (busy) {
          // Traffic came: the next quiet spell tries again.
          quiet = 0;
        } else if (released || ++misses >= pulseTries) {
          // Something came back, or a few pulses in which V8 collected nothing: wait for the heap
          // to grow again.
          misses = 0;
          peak = total;
          rearmAt = total + releaseBytes;
        }
        turn(false, busy ? 'busy' : released ? 'released' : 'pulse over', u, total, resident);
        return;
      }
      if (u >= quietUtilization) {
        quiet = 0;
      } else if (++quiet >= quietIntervals && peak >= rearmAt && peak - used >= releaseBytes) {
        onSince = now();
        residentAtOn = residentBytes();
        turn(true, 'quiet', u, total, residentAtOn);
      }
    }, opts.intervalMs ?? 1000);
    timer.unref();
  }

  return {
    mode: opts.mode,
    supported,
    get on() {
      return on;
    },
    get switchesOn() {
      return switchesOn;
    },
    get releasedBytes() {
      return releasedBytes;
    },
    stop() {
      if (timer) clearInterval(timer);
      timer = undefined;
    },
  };
}

/** `ohs_node_memory_saver` (1 while on), `ohs_node_memory_saver_switches_total` and `ohs_node_memory_saver_released_bytes_total`, read at a scrape. */
export function registerMemorySaverMetrics(registry: Registry, saver: MemorySaver): void {
  new Gauge({
    name: 'ohs_node_memory_saver',
    help: `V8's memory saver mode: 1 while on (--memory-saver ${saver.mode}${saver.supported ? '' : ', not supported by this V8'}).`,
    registers: [registry],
    collect() {
      this.set(saver.on ? 1 : 0);
    },
  });
  totalCounter('ohs_node_memory_saver_switches_total', 'Times memory saver mode was turned on (auto: a quiet spell after a burst).', [registry], () => saver.switchesOn);
  totalCounter(
    'ohs_node_memory_saver_released_bytes_total',
    'Bytes the resident set dropped while memory saver mode was on (auto): freed heap pages V8 gave back.',
    [registry],
    () => saver.releasedBytes,
  );
}
