// V8's memory saver mode while the sidecar is quiet.
//
// From V8 13 (Node 24) the heap pages a collection frees go to a pool and stay resident until a
// collection that reduces memory, and V8 runs one only while it thinks the process is idle or in
// memory saver mode. A server never looks idle to V8 (its memory reducer reads "high allocation"
// even in a process that does nothing), so every page the heap ever used stays resident: a sidecar
// holding 10,000 + 10,000 sessions on Node 24 settled at 351-390 MB against Node's floor of ~290
// (bench/scale.ts), 163 MB of resident heap pages for a 142 MB heap. Node 20's V8 gives them back.
//
// Memory saver mode on all the time gets them back too (settled 298 MB), but it also makes V8
// collect more often, which cost 5-20 % of the opens per second of a busy sidecar. So `auto` turns
// it on only after the event loop has been quiet for a few seconds and off as soon as it is busy:
// the memory reducer, which runs while memory saver is on, then collects once and gives the pool
// back. V8 reads the flag each time it decides; `v8.setFlagsFromString` changes it at run time.
import { performance, type EventLoopUtilization } from 'node:perf_hooks';
import v8 from 'node:v8';
import { Counter, Gauge, type Registry } from 'prom-client';

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
  /** Quiet intervals in a row before memory saver is turned on. */
  quietIntervals?: number;
  /** Defaults to this process's V8; false makes the controller do nothing. */
  supported?: boolean;
  /** Sets V8's flag (default `v8.setFlagsFromString`). */
  setFlag?: (on: boolean) => void;
  /** The event loop's utilization since the previous call (default from `performance.eventLoopUtilization`). */
  utilization?: () => number;
  onSwitch?: (on: boolean, utilization: number) => void;
}

export interface MemorySaver {
  readonly mode: MemorySaverMode;
  readonly supported: boolean;
  /** Whether V8's memory saver mode is on now. */
  readonly on: boolean;
  /** Times it was turned on. */
  readonly switchesOn: number;
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
  let on = false;
  let switchesOn = 0;
  let timer: NodeJS.Timeout | undefined;

  const turn = (next: boolean, utilization: number): void => {
    if (next === on) return;
    on = next;
    if (next) switchesOn += 1;
    setFlag(next);
    opts.onSwitch?.(next, utilization);
  };

  if (supported && opts.mode === 'on') turn(true, Number.NaN);
  if (supported && opts.mode === 'auto') {
    const utilization = opts.utilization ?? loopUtilization();
    let quiet = 0;
    timer = setInterval(() => {
      const u = utilization();
      if (u >= quietUtilization) {
        quiet = 0;
        turn(false, u);
      } else if (++quiet >= quietIntervals) {
        turn(true, u);
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
    stop() {
      if (timer) clearInterval(timer);
      timer = undefined;
    },
  };
}

/** `ohs_node_memory_saver` (1 while on) and `ohs_node_memory_saver_switches_total`, read at a scrape. */
export function registerMemorySaverMetrics(registry: Registry, saver: MemorySaver): void {
  new Gauge({
    name: 'ohs_node_memory_saver',
    help: `V8's memory saver mode: 1 while on (--memory-saver ${saver.mode}${saver.supported ? '' : ', not supported by this V8'}).`,
    registers: [registry],
    collect() {
      this.set(saver.on ? 1 : 0);
    },
  });
  let counted = 0;
  new Counter({
    name: 'ohs_node_memory_saver_switches_total',
    help: 'Times memory saver mode was turned on (auto: each quiet spell after a busy one).',
    registers: [registry],
    collect() {
      if (saver.switchesOn > counted) this.inc(saver.switchesOn - counted);
      counted = saver.switchesOn;
    },
  });
}
