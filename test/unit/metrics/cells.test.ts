import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { CellCounter, CellGauge, CellHistogram } from '../../../src/metrics/cells.ts';

const BUCKETS = [0.005, 0.01, 0.1, 1, 10];
const DURATIONS = [0, 0.001, 0.005, 0.0051, 0.05, 0.1, 0.7, 1, 3.5, 10, 11, 600];

describe('metric cells', () => {
  it('a histogram fed through cells exports exactly what prom-client exports for the same observations', async () => {
    const plainRegistry = new Registry();
    const cellRegistry = new Registry();
    const config = { name: 'ohs_test_duration_seconds', help: 'h', labelNames: ['class', 'target'] as const, buckets: BUCKETS };
    const plain = new Histogram({ ...config, registers: [plainRegistry] });
    const cells = new CellHistogram({ ...config, registers: [cellRegistry] });
    for (const [i, d] of DURATIONS.entries()) {
      const target = i % 3 === 0 ? 'peer' : 'local';
      plain.observe({ class: 'exec', target }, d);
      cells.cell('exec', target).observe(d);
    }
    plain.observe({ class: 'ssh-tunnel', target: 'local' }, 0.02);
    cells.cell('ssh-tunnel', 'local').observe(0.02);

    const text = await cellRegistry.metrics();
    expect(text).toBe(await plainRegistry.metrics());
    expect(text).toContain('ohs_test_duration_seconds_bucket{le="0.005",class="exec",target="local"} 2');
    expect(text).toContain('ohs_test_duration_seconds_count{class="exec",target="peer"} 4');
    // JSON too (`get()`), but for prom-client's `exemplar: null` on buckets: exemplars are off.
    const withoutExemplars = async (h: Histogram<string>) => {
      const data = await h.get();
      return { ...data, values: data.values.map((v) => ({ labels: v.labels, value: v.value, metricName: v.metricName })) };
    };
    expect(await withoutExemplars(cells)).toEqual(await withoutExemplars(plain));
  });

  it("a histogram's own observe still counts beside its cells", async () => {
    const registry = new Registry();
    const h = new CellHistogram({ name: 'ohs_test_seconds', help: 'h', labelNames: ['class'] as const, buckets: BUCKETS, registers: [registry] });
    h.observe({ class: 'watch' }, 2);
    h.cell('exec').observe(0.05);
    const text = await registry.metrics();
    expect(text).toContain('ohs_test_seconds_count{class="watch"} 1');
    expect(text).toContain('ohs_test_seconds_count{class="exec"} 1');
    expect(text).toContain('ohs_test_seconds_sum{class="exec"} 0.05');
  });

  it('counter cells are added to the counter at each scrape, with its own increments', async () => {
    const registry = new Registry();
    const c = new CellCounter({ name: 'ohs_test_total', help: 'h', labelNames: ['class', 'target', 'outcome'] as const, registers: [registry] });
    const ok = c.cell('exec', 'local', 'ok');
    ok.inc();
    ok.inc(2);
    c.inc({ class: 'exec', target: 'local', outcome: 'ok' });
    c.cell('exec', 'peer', 'error').inc();
    expect(await registry.metrics()).toContain('ohs_test_total{class="exec",target="local",outcome="ok"} 4');
    ok.inc();
    // A second scrape adds only what was counted since the first.
    const text = await registry.metrics();
    expect(text).toContain('ohs_test_total{class="exec",target="local",outcome="ok"} 5');
    expect(text).toContain('ohs_test_total{class="exec",target="peer",outcome="error"} 1');
    // The same cell object comes back for the same values.
    expect(c.cell('exec', 'local', 'ok')).toBe(ok);
  });

  it('a counter cell that never counted exports no series, as prom-client would not', async () => {
    const registry = new Registry();
    const c = new CellCounter({ name: 'ohs_test_bytes_total', help: 'h', labelNames: ['direction'] as const, registers: [registry] });
    c.cell('to_sandbox').inc(0);
    expect(await registry.metrics()).not.toContain('direction="to_sandbox"');
  });

  it('gauge cells go up and down and are read at each scrape; an untouched cell reads 0', async () => {
    const registry = new Registry();
    const g = new CellGauge({ name: 'ohs_test_active', help: 'h', labelNames: ['rule'] as const, registers: [registry] });
    const a = g.cell('per-sandbox');
    g.cell('per-client');
    a.inc();
    a.inc();
    a.dec();
    let text = await registry.metrics();
    expect(text).toContain('ohs_test_active{rule="per-sandbox"} 1');
    expect(text).toContain('ohs_test_active{rule="per-client"} 0');
    a.dec();
    text = await registry.metrics();
    expect(text).toContain('ohs_test_active{rule="per-sandbox"} 0');
    const json = await g.get();
    expect(json.values.map((v) => [v.labels.rule, v.value])).toEqual([
      ['per-sandbox', 0],
      ['per-client', 0],
    ]);
  });

  it('metrics without labels have one cell', async () => {
    const registry = new Registry();
    const g = new CellGauge({ name: 'ohs_test_parked', help: 'h', registers: [registry] });
    const c = new CellCounter({ name: 'ohs_test_reused_total', help: 'h', registers: [registry] });
    expect(g.cell()).toBe(g.cell());
    g.cell().inc(3);
    c.cell().inc();
    const text = await registry.metrics();
    expect(text).toContain('ohs_test_parked 3');
    expect(text).toContain('ohs_test_reused_total 1');
  });

  it('a cell asked for with too few label values is refused, not filed under undefined', () => {
    const c = new CellCounter({ name: 'ohs_test_x_total', help: 'h', labelNames: ['a', 'b'] as const, registers: [] });
    expect(() => c.cell('only-one')).toThrow(/needs 2 label values/);
    expect(() => new CellGauge({ name: 'ohs_test_y', help: 'h', labelNames: ['a', 'b', 'c', 'd'] as const, registers: [] })).toThrow(/up to 3 labels/);
  });

  it('cells are plain prom-client metrics to a registry', () => {
    const c = new CellCounter({ name: 'ohs_test_z_total', help: 'h', labelNames: ['a'] as const, registers: [] });
    expect(c).toBeInstanceOf(Counter);
    expect(new CellGauge({ name: 'ohs_test_g', help: 'h', registers: [] })).toBeInstanceOf(Gauge);
  });
});
