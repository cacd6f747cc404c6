// Labelled metrics whose hot-path updates are plain numbers, handed to prom-client when it collects
// (a scrape). prom-client builds a string from the label values and looks it up on every inc, dec
// and observe (0.15–0.4 µs and a few hundred bytes each, five to ten of them per stream); here a
// stream finds its cell through one Map per label value and then adds to a number
// (`make bench-cells`). The classes stay prom-client metrics: registered, exported and read
// (`get()`) the same way, and their own `inc`/`observe` still work for paths that are not hot.

import { Counter, Gauge, Histogram, type CounterConfiguration, type GaugeConfiguration, type HistogramConfiguration, type LabelValues } from 'prom-client';

/** At most three labels: every metric of ours has three or fewer. */
type Key3 = [a?: string, b?: string, c?: string];

/** Cells found by their label values, one Map level per label; nothing is built to find one. */
class CellIndex<C> {
  private readonly root = new Map<string, unknown>();
  /** The one cell of a metric without labels. */
  private readonly only: C | undefined;
  readonly all: C[] = [];

  constructor(
    private readonly labelNames: readonly string[],
    private readonly make: (labels: LabelValues<string>) => C,
  ) {
    if (labelNames.length > 3) throw new Error(`metric cells take up to 3 labels, not ${labelNames.length}`);
    if (labelNames.length === 0) {
      this.only = make({});
      this.all.push(this.only);
    }
  }

  at(a?: string, b?: string, c?: string): C {
    if (this.only !== undefined) return this.only;
    const depth = this.labelNames.length;
    let level = this.root;
    for (let i = 0; i < depth; i++) {
      const value = i === 0 ? a : i === 1 ? b : c;
      if (value === undefined) throw new Error(`metric cell needs ${depth} label values (${this.labelNames.join(', ')})`);
      const next = level.get(value);
      if (next !== undefined) {
        level = next as Map<string, unknown>;
        continue;
      }
      if (i === depth - 1) return this.add(level, value, [a, b, c]);
      const created = new Map<string, unknown>();
      level.set(value, created);
      level = created;
    }
    return level as C;
  }

  private add(level: Map<string, unknown>, value: string, values: Key3): C {
    const labels: LabelValues<string> = {};
    this.labelNames.forEach((name, i) => (labels[name] = values[i] as string));
    const cell = this.make(labels);
    level.set(value, cell);
    this.all.push(cell);
    return cell;
  }
}

/** What a counter's cell offers: counting up only. */
export interface CounterCell {
  inc(by?: number): void;
}

/** A count of one label set: a counter's total or a gauge's level. */
export class CountCell implements CounterCell {
  n = 0;
  /** What the counter has been handed so far. */
  reported = 0;
  constructor(readonly labels: LabelValues<string>) {}
  inc(by = 1): void {
    this.n += by;
  }
  dec(by = 1): void {
    this.n -= by;
  }
}

/** A Counter whose cells are added to it at each collection. */
export class CellCounter<T extends string> extends Counter<T> {
  private readonly cells: CellIndex<CountCell>;

  constructor(config: Omit<CounterConfiguration<T>, 'collect'> & { labelNames?: readonly T[] }) {
    super({
      ...config,
      collect() {
        (this as CellCounter<T>).publish();
      },
    });
    this.cells = new CellIndex(config.labelNames ?? [], (labels) => new CountCell(labels));
  }

  /** The cell of these label values, in the order of `labelNames`. */
  cell(a?: string, b?: string, c?: string): CounterCell {
    return this.cells.at(a, b, c);
  }

  private publish(): void {
    for (const cell of this.cells.all) {
      const delta = cell.n - cell.reported;
      if (delta <= 0) continue;
      cell.reported = cell.n;
      this.inc(cell.labels as LabelValues<T>, delta);
    }
  }
}

/** A Gauge set from its cells at each collection; its cells own their label sets. */
export class CellGauge<T extends string> extends Gauge<T> {
  private readonly cells: CellIndex<CountCell>;

  constructor(config: Omit<GaugeConfiguration<T>, 'collect'> & { labelNames?: readonly T[] }) {
    super({
      ...config,
      collect() {
        for (const cell of (this as CellGauge<T>).cells.all) this.set(cell.labels as LabelValues<T>, cell.n);
      },
    });
    this.cells = new CellIndex(config.labelNames ?? [], (labels) => new CountCell(labels));
  }

  cell(a?: string, b?: string, c?: string): CountCell {
    return this.cells.at(a, b, c);
  }
}

/** Observations of one label set: a count per bucket (the last is +Inf), their sum and count. */
export class HistogramCell {
  private readonly counts: Float64Array;
  sum = 0;
  count = 0;

  constructor(
    readonly labels: LabelValues<string>,
    private readonly bounds: readonly number[],
  ) {
    this.counts = new Float64Array(bounds.length + 1);
  }

  observe(value: number): void {
    if (!Number.isFinite(value)) return;
    const bounds = this.bounds;
    let i = 0;
    while (i < bounds.length && value > (bounds[i] as number)) i++;
    this.counts[i] = (this.counts[i] as number) + 1;
    this.sum += value;
    this.count++;
  }

  /** Cumulative count of observations ≤ bounds[i]. */
  cumulative(): number[] {
    const out: number[] = [];
    let acc = 0;
    for (let i = 0; i < this.bounds.length; i++) out.push((acc += this.counts[i] as number));
    return out;
  }
}

interface ExportedValue {
  value: number;
  labels: LabelValues<string>;
  metricName?: string;
  sharedLabels?: LabelValues<string>;
}
interface ExportedMetric {
  values: ExportedValue[];
}

const histogramPrototype = Histogram.prototype as unknown as { getForPromString(): Promise<ExportedMetric> };

/**
 * A Histogram whose cells are exported beside its own observations. prom-client keeps no way to add
 * counts to a histogram's buckets, so the cells' series are appended to what it exports: to
 * `getForPromString` (what its Registry formats as text) and to `get()` (JSON, built on it).
 */
export class CellHistogram<T extends string> extends Histogram<T> {
  private readonly cells: CellIndex<HistogramCell>;
  private readonly bounds: readonly number[];
  private readonly metricName: string;

  constructor(config: Omit<HistogramConfiguration<T>, 'collect'> & { labelNames?: readonly T[]; buckets: readonly number[] }) {
    super({ ...config, buckets: [...config.buckets] });
    this.metricName = config.name;
    const bounds = [...config.buckets].sort((x, y) => x - y);
    this.bounds = bounds;
    this.cells = new CellIndex(config.labelNames ?? [], (labels) => new HistogramCell(labels, bounds));
  }

  cell(a?: string, b?: string, c?: string): HistogramCell {
    return this.cells.at(a, b, c);
  }

  /** What prom-client's Registry formats as text; `get()` splays its labels for JSON. */
  async getForPromString(): Promise<ExportedMetric> {
    const data = await histogramPrototype.getForPromString.call(this);
    for (const cell of this.cells.all) data.values.push(...this.series(cell));
    return data;
  }

  private series(cell: HistogramCell): ExportedValue[] {
    const bucket = `${this.metricName}_bucket`;
    const cumulative = cell.cumulative();
    const out: ExportedValue[] = this.bounds.map((le, i) => ({ labels: { le }, sharedLabels: cell.labels, value: cumulative[i] as number, metricName: bucket }));
    out.push(
      { labels: { le: '+Inf' }, sharedLabels: cell.labels, value: cell.count, metricName: bucket },
      { labels: {}, sharedLabels: cell.labels, value: cell.sum, metricName: `${this.metricName}_sum` },
      { labels: {}, sharedLabels: cell.labels, value: cell.count, metricName: `${this.metricName}_count` },
    );
    return out;
  }
}
