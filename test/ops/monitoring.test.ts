// The dashboard and alert rules shipped with the chart: the rules pass `promtool check rules` and
// their unit tests (`promtool test rules`), and both only use metrics a sidecar really exports.
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { createOperatorSurface } from '../../src/admin/operator.ts';
import type { InspectDeps } from '../../src/admin/inspect.ts';
import { DEFAULT_LIMIT_RULES } from '../../src/limits/rules.ts';
import { createLimitMetrics } from '../../src/limits/metrics.ts';
import { createMetrics } from '../../src/metrics/registry.ts';

const RULES = resolve('helm/openshell-ha/files/alerts/openshell-ha-rules.yaml');
const RULE_TESTS = resolve('test/ops/openshell-ha-rules.test.yaml');
const DASHBOARD = resolve('helm/openshell-ha/files/dashboards/openshell-ha.json');

function promtool(): string | undefined {
  const found = spawnSync('sh', ['-c', 'command -v promtool'], { encoding: 'utf8' });
  return found.status === 0 ? found.stdout.trim() : undefined;
}

/** Every ohs_* metric name a cluster-mode sidecar exposes (histograms with their series suffixes). */
async function exportedNames(): Promise<Set<string>> {
  const metrics = createMetrics({ defaultMetrics: false });
  createLimitMetrics(DEFAULT_LIMIT_RULES, metrics.registry);
  const config = { mode: 'cluster', replicaLeaseTtlMs: 10_000, adminAllowCidrs: [] } as unknown as InspectDeps['config'];
  const surface = createOperatorSurface({ config, metrics, store: { replicaId: 'r0', lastHeartbeatAtMs: () => Date.now() } } as unknown as InspectDeps, pino({ level: 'silent' }));
  await surface.close();
  const names = new Set<string>();
  for (const m of (await metrics.registry.getMetricsAsJSON()) as unknown as Array<{ name: string; type: string }>) {
    names.add(m.name);
    if (m.type === 'histogram') for (const s of ['_bucket', '_sum', '_count']) names.add(m.name + s);
  }
  return names;
}

function referenced(text: string): string[] {
  return [...new Set(text.match(/\bohs_[a-z0-9_]+/g) ?? [])];
}

describe('shipped alert rules', () => {
  const bin = promtool();
  it.skipIf(!bin)('pass promtool check rules', () => {
    const out = execFileSync(bin as string, ['check', 'rules', RULES], { encoding: 'utf8' });
    expect(out).toMatch(/SUCCESS: 7 rules found/);
  });

  it.skipIf(!bin)('fire on the failures they describe (promtool test rules)', () => {
    const res = spawnSync(bin as string, ['test', 'rules', RULE_TESTS], { encoding: 'utf8' });
    expect(`${res.stdout}${res.stderr}`).toMatch(/SUCCESS/);
    expect(res.status).toBe(0);
  });

  it('use only metrics the sidecar exports', async () => {
    if (!bin) console.warn('promtool not found (apt-get install prometheus; .ci/run installs it): promtool checks skipped');
    const names = await exportedNames();
    const rules = referenced(readFileSync(RULES, 'utf8').replace(/^\s*#.*$/gm, ''));
    expect(rules.length).toBeGreaterThan(5);
    expect(rules.filter((n) => !names.has(n))).toEqual([]);
  });
});

describe('shipped Grafana dashboard', () => {
  it('is a dashboard whose every query uses metrics the sidecar exports', async () => {
    const dash = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as { uid: string; panels: Array<{ type: string; title: string; targets?: Array<{ expr: string }> }> };
    expect(dash.uid).toBe('openshell-ha-sidecar');
    const queries = dash.panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr));
    expect(queries.length).toBeGreaterThan(20);
    const names = await exportedNames();
    expect(queries.flatMap(referenced).filter((n) => !names.has(n))).toEqual([]);
    // The panels the issue asks for are there.
    const titles = dash.panels.map((p) => p.title).join('\n');
    for (const t of ['Supervisor sessions per replica', 'Forwards to peers per second by class and result', 'Handoff duration p95', 'Held requests', 'Limit refusals per minute by rule']) expect(titles).toContain(t);
  });
});
