// What one stream's metric updates cost: the sidecar's per-stream accounting (owner lookup count,
// active gauge up and down, outcome count, duration) and a limit slot's (held gauge up and down, a
// take-over count), done the prom-client way (label objects, hashed on every call) and through
// cells (src/metrics/cells.ts), alternating, in this process. Prints ns per stream, bytes allocated
// per stream and the ratio, and merges them into bench/results/latest.json; asserts nothing.
//   make bench-cells   (node --expose-gc --import tsx bench/metric-cells.ts; env BENCH_CELLS_N, default 500000)
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { CellCounter, CellGauge, CellHistogram } from '../src/metrics/cells.ts';
import { mergeResults } from './lib/results.ts';
import { envInt, round2 } from './lib/stats.ts';

const N = envInt('BENCH_CELLS_N', 500_000);
const ROUNDS = 5;
const BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 14_400];
const CLASSES = ['forward-tcp', 'exec', 'ssh-tunnel'] as const;

function promClientWay(): (i: number) => void {
  const registers = [new Registry()];
  const lookups = new Counter({ name: 'a_total', help: 'h', labelNames: ['source'] as const, registers });
  const active = new Gauge({ name: 'b', help: 'h', labelNames: ['class', 'target'] as const, registers });
  const requests = new Counter({ name: 'c_total', help: 'h', labelNames: ['class', 'target', 'outcome'] as const, registers });
  const duration = new Histogram({ name: 'd_seconds', help: 'h', labelNames: ['class', 'target'] as const, buckets: BUCKETS, registers });
  const held = new Gauge({ name: 'e', help: 'h', labelNames: ['rule'] as const, registers });
  const reused = new Counter({ name: 'f_total', help: 'h', registers });
  return (i) => {
    const cls = CLASSES[i % 3] as string;
    lookups.inc({ source: 'memory' });
    active.inc({ class: cls, target: 'local' });
    held.inc({ rule: 'per-sandbox' });
    reused.inc();
    held.dec({ rule: 'per-sandbox' });
    active.dec({ class: cls, target: 'local' });
    requests.inc({ class: cls, target: 'local', outcome: 'ok' });
    duration.observe({ class: cls, target: 'local' }, (i % 1000) / 1e5);
  };
}

function cellsWay(): (i: number) => void {
  const registers = [new Registry()];
  const lookups = new CellCounter({ name: 'a_total', help: 'h', labelNames: ['source'] as const, registers });
  const active = new CellGauge({ name: 'b', help: 'h', labelNames: ['class', 'target'] as const, registers });
  const requests = new CellCounter({ name: 'c_total', help: 'h', labelNames: ['class', 'target', 'outcome'] as const, registers });
  const duration = new CellHistogram({ name: 'd_seconds', help: 'h', labelNames: ['class', 'target'] as const, buckets: BUCKETS, registers });
  const held = new CellGauge({ name: 'e', help: 'h', labelNames: ['rule'] as const, registers });
  const reused = new CellCounter({ name: 'f_total', help: 'h', registers });
  return (i) => {
    const cls = CLASSES[i % 3] as string;
    lookups.cell('memory').inc();
    const a = active.cell(cls, 'local');
    a.inc();
    held.cell('per-sandbox').inc();
    reused.cell().inc();
    held.cell('per-sandbox').dec();
    a.dec();
    requests.cell(cls, 'local', 'ok').inc();
    duration.cell(cls, 'local').observe((i % 1000) / 1e5);
  };
}

const gc = (globalThis as { gc?: () => void }).gc;

/** Streams per allocation sample: few enough that their garbage fits before the next scavenge. */
const ALLOC_STREAMS = 400;

function measure(stream: (i: number) => void): { ns: number; bytes: number } {
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < N; i++) stream(i);
  const ns = Number(process.hrtime.bigint() - t0) / N;
  // Heap growth over a few hundred streams right after a full collection is what they allocated
  // (the median of 15 samples, so that a sample a scavenge fell into does not count).
  const samples: number[] = [];
  for (let s = 0; s < 15 && gc !== undefined; s++) {
    gc();
    const heap0 = process.memoryUsage().heapUsed;
    for (let i = 0; i < ALLOC_STREAMS; i++) stream(i);
    samples.push((process.memoryUsage().heapUsed - heap0) / ALLOC_STREAMS);
  }
  samples.sort((x, y) => x - y);
  return { ns, bytes: samples[Math.floor(samples.length / 2)] ?? NaN };
}

async function main(): Promise<void> {
  const ways = { 'prom-client': promClientWay(), cells: cellsWay() };
  for (const f of Object.values(ways)) for (let i = 0; i < 50_000; i++) f(i);
  const runs: Record<string, { ns: number[]; bytes: number[] }> = { 'prom-client': { ns: [], bytes: [] }, cells: { ns: [], bytes: [] } };
  for (let r = 0; r < ROUNDS; r++) {
    for (const [name, f] of r % 2 === 0 ? Object.entries(ways) : Object.entries(ways).reverse()) {
      const m = measure(f);
      runs[name]?.ns.push(m.ns);
      runs[name]?.bytes.push(m.bytes);
    }
  }
  const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;
  for (const [name, r] of Object.entries(runs)) {
    console.log(`${name.padEnd(12)} ${median(r.ns).toFixed(0).padStart(6)} ns per stream   ${median(r.bytes).toFixed(0).padStart(5)} B allocated per stream${gc ? '' : ' (needs --expose-gc)'}   rounds ${r.ns.map((x) => x.toFixed(0)).join(' / ')} ns`);
  }
  const pc = runs['prom-client'] as { ns: number[] };
  const cells = runs.cells as { ns: number[] };
  const ratio = median(cells.ns) / median(pc.ns);
  console.log(`cells ÷ prom-client: ${ratio.toFixed(3)} of the time (${N} streams a round, ${ROUNDS} rounds alternating)`);
  const bytes = (r: { bytes: number[] } | undefined): number => (r === undefined ? NaN : round2(median(r.bytes)));
  await mergeResults({
    metric_cells_ns_per_stream: { value: round2(median(cells.ns)), unit: 'ns', baseline: 'metric_promclient_ns_per_stream' },
    metric_promclient_ns_per_stream: { value: round2(median(pc.ns)), unit: 'ns', baseline: 'prom-client labelled inc/dec/observe, this process' },
    metric_cells_vs_promclient_time: { value: Math.round(ratio * 1000) / 1000, unit: 'x', baseline: 'metric_promclient_ns_per_stream' },
    metric_cells_bytes_per_stream: { value: bytes(runs.cells), unit: 'B', baseline: 'metric_promclient_bytes_per_stream' },
    metric_promclient_bytes_per_stream: { value: bytes(runs['prom-client']), unit: 'B', baseline: 'prom-client labelled inc/dec/observe, this process' },
  });
}

await main();
