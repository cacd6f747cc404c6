// Real Helm: the own chart under `helm lint` / `helm template` (Helm 3 and 4), and the post-renderer
// as Helm itself runs it — Helm 3 `--post-renderer <executable>` and the Helm 4 `postrenderer/v1`
// plugin — on charts made from the fixtures (always) and on upstream's real chart (when
// OHS_UPSTREAM_CHART_DIR points at a checkout's deploy/helm/openshell; it is read, never copied).
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { INJECT_DEFAULTS, type InjectMode } from '../../src/deploy/inject-options.ts';
import { parseManifestStream } from '../../src/deploy/manifest-stream.ts';
import { checkInvariants, containersOf, docsOf, findContainer, fixture, injectedWorkload, podSpecOf, repoRoot } from './support/manifests.ts';
import { helm3, helm4, skipUnless } from './support/tools.ts';
import { sidecarCommand } from '../../emulator/process.ts';

type Json = Record<string, unknown>;
const H3 = helm3();
const H4 = helm4();
const OWN_CHART = path.join(repoRoot, 'helm/openshell-ha');
const WRAPPER = path.join(repoRoot, 'helm/plugin/bin/openshell-ha-inject');
const PLUGIN_DIR = path.join(repoRoot, 'helm/plugin');
const UPSTREAM = process.env.OHS_UPSTREAM_CHART_DIR;

const scratch = mkdtempSync(path.join(os.tmpdir(), 'ohs-helm-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

// Helm keeps plugins and caches under these: a scratch home per major version keeps the machine's
// own untouched, and Helm 3 from tripping over the Helm 4 plugin (it cannot load postrenderer/v1).
function helmHome(bin: string): Record<string, string> {
  const home = path.join(scratch, bin === H4.bin ? 'home-v4' : 'home-v3');
  return { HELM_CONFIG_HOME: path.join(home, 'config'), HELM_DATA_HOME: path.join(home, 'data'), HELM_CACHE_HOME: path.join(home, 'cache') };
}

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function run(bin: string, args: string[], env: Record<string, string> = {}): Run {
  const r = spawnSync(bin, args, { cwd: repoRoot, env: { ...process.env, ...helmHome(bin), ...env }, encoding: 'utf8', timeout: 120_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/**
 * Helm runs the real post-renderer command (helm/plugin/bin/openshell-ha-inject: as the Helm 3
 * executable, or through the Helm 4 plugin); that script honours OHS_INJECT_COMMAND, pointed here
 * at a small script that copies stdin and stdout to files and runs `inject` from the sources (tsx),
 * so the test sees exactly what Helm handed over and got back, and no build is needed.
 */
function capture(tag: string): { dir: string; env: Record<string, string>; input(): string; output(): string } {
  const dir = path.join(scratch, tag);
  mkdirSync(dir, { recursive: true });
  const inner = path.join(dir, 'inject.sh');
  const cli = sidecarCommand().map((arg) => `"${arg}"`).join(' ');
  // $1 is the word `inject` the wrapper adds; the rest are Helm's --post-renderer-args.
  writeFileSync(inner, `#!/usr/bin/env bash\nset -eo pipefail\nshift\ntee "${dir}/in.yaml" | ${cli} inject "$@" | tee "${dir}/out.yaml"\n`);
  chmodSync(inner, 0o755);
  return {
    dir,
    env: { OHS_INJECT_COMMAND: inner },
    input: () => readFileSync(path.join(dir, 'in.yaml'), 'utf8'),
    output: () => readFileSync(path.join(dir, 'out.yaml'), 'utf8'),
  };
}

/** A chart whose templates are the fixture's documents, file by file (`# Source:` lines), hooks included. */
function chartFromFixtures(tag: string, ...sources: string[]): string {
  const dir = path.join(scratch, `chart-${tag}`);
  const files = new Map<string, string[]>();
  let chartName = 'openshell';
  for (const src of sources) {
    for (const d of parseManifestStream(src).docs) {
      const m = /^# Source: ([^/]+)\/templates\/(.+)$/m.exec(d.text);
      if (!m) continue;
      chartName = m[1] as string;
      const body = d.text.replace(/^---\n/, '').replace(/^# Source: .*\n/m, '');
      files.set(m[2] as string, [...(files.get(m[2] as string) ?? []), body]);
    }
  }
  mkdirSync(path.join(dir, 'templates'), { recursive: true });
  writeFileSync(path.join(dir, 'Chart.yaml'), `apiVersion: v2\nname: ${chartName}\nversion: 0.0.0\nappVersion: "0.0.0"\n`);
  for (const [file, docs] of files) writeFileSync(path.join(dir, 'templates', file), docs.join('---\n'));
  return dir;
}

function installPlugin(): void {
  const list = run(H4.bin as string, ['plugin', 'list']);
  if (list.stdout.includes('openshell-ha')) return;
  const r = run(H4.bin as string, ['plugin', 'install', PLUGIN_DIR]);
  if (r.code !== 0) throw new Error(`helm plugin install failed: ${r.stderr}`);
}

function assertInjected(out: string, mode: InjectMode): void {
  const w = injectedWorkload(out);
  const pod = podSpecOf(w);
  const sc = findContainer(pod, 'ohs-sidecar') as Json;
  expect(sc).toBeDefined();
  expect(containersOf(pod, mode === 'container' ? 'containers' : 'initContainers').some((c) => c['name'] === 'ohs-sidecar')).toBe(true);
  const kinds = docsOf(out).map((d) => `${String(d['kind'])}/${String((d['metadata'] as Json)['name'])}`);
  expect(kinds).toEqual(expect.arrayContaining(['Service/openshell-ha-peers', 'PodDisruptionBudget/openshell-ha', 'NetworkPolicy/openshell-ha']));
}

describe.skipIf(skipUnless(H3))('the own chart under real Helm 3', () => {
  it('helm lint --strict passes, for every injection mode on a cluster that supports it', () => {
    for (const [mode, kube] of [['native', '1.32.0'], ['native-alias', '1.29.0'], ['container', '1.27.0']] as const) {
      const r = run(H3.bin as string, ['lint', OWN_CHART, '--strict', '--kube-version', kube, '--set', `injection.mode=${mode}`]);
      console.log(`helm v3 lint (mode ${mode}, Kubernetes ${kube}): ${r.stdout.trim().split('\n').join(' | ')}`);
      expect(r.code).toBe(0);
    }
  });

  it('helm template renders the Secret (peer secret generated, URLs only when given) and the optional ServiceMonitor', () => {
    const plain = run(H3.bin as string, ['template', 'ha', OWN_CHART, '-n', 'openshell']);
    expect(plain.code).toBe(0);
    const docs = docsOf(plain.stdout);
    expect(docs.map((d) => d['kind'])).toEqual(['Secret']);
    const data = (docs[0] as Json)['data'] as Record<string, string>;
    expect(Object.keys(data)).toEqual(['peer-secret']);
    expect(Buffer.from(data['peer-secret'] as string, 'base64').toString()).toMatch(/^[A-Za-z0-9]{48}$/);
    expect(((docs[0] as Json)['metadata'] as Json)['annotations']).toEqual({ 'helm.sh/resource-policy': 'keep' });

    const full = run(H3.bin as string, [
      'template', 'ha', OWN_CHART, '-n', 'openshell', '--api-versions', 'monitoring.coreos.com/v1/ServiceMonitor',
      '--api-versions', 'monitoring.coreos.com/v1/PrometheusRule',
      '--set', 'secret.peerSecret=0123456789abcdef0123', '--set', 'secret.redisUrl=redis://redis:6379',
      '--set', 'secret.databaseUrl=postgres://u@pg:5432/openshell', '--set', 'serviceMonitor.enabled=true',
      '--set', 'prometheusRule.enabled=true', '--set', 'grafanaDashboard.enabled=true', '--set', 'grafanaDashboard.folder=OpenShell',
    ]);
    expect(full.code).toBe(0);
    const fdocs = docsOf(full.stdout);
    const secret = fdocs.find((d) => d['kind'] === 'Secret') as Json;
    const decoded = Object.fromEntries(Object.entries(secret['data'] as Record<string, string>).map(([k, v]) => [k, Buffer.from(v, 'base64').toString()]));
    expect(decoded).toEqual({ 'peer-secret': '0123456789abcdef0123', 'redis-url': 'redis://redis:6379', 'database-url': 'postgres://u@pg:5432/openshell' });
    const sm = fdocs.find((d) => d['kind'] === 'ServiceMonitor') as Json;
    expect((sm['spec'] as Json)['selector']).toEqual({ matchLabels: { 'app.kubernetes.io/component': 'openshell-ha', 'openshell-ha.io/peers': 'true' } });
    expect((sm['spec'] as Json)['endpoints']).toEqual([{ port: 'ohs-admin', path: '/metrics', interval: '30s', scrapeTimeout: '10s' }]);
    // The shipped alert rules and dashboard, as the files promtool and the dashboard test check.
    const rule = fdocs.find((d) => d['kind'] === 'PrometheusRule') as Json;
    const rulesFile = parseYaml(readFileSync(path.join(OWN_CHART, 'files/alerts/openshell-ha-rules.yaml'), 'utf8')) as Json;
    expect(rule['spec']).toEqual(rulesFile);
    const dash = fdocs.find((d) => d['kind'] === 'ConfigMap' && (d['metadata'] as Json)['name'] === 'ha-openshell-ha-dashboard') as Json;
    expect(((dash['metadata'] as Json)['labels'] as Json)['grafana_dashboard']).toBe('1');
    expect(((dash['metadata'] as Json)['annotations'] as Json)['grafana_folder']).toBe('OpenShell');
    expect(JSON.parse((dash['data'] as Record<string, string>)['openshell-ha.json']!)).toEqual(JSON.parse(readFileSync(path.join(OWN_CHART, 'files/dashboards/openshell-ha.json'), 'utf8')));
    console.log(`helm v3 template openshell-ha: default → ${docs.length} object (Secret); all values → ${fdocs.map((d) => d['kind']).join(', ')}`);
  });

  it('refuses with Helm’s own errors: values against values.schema.json, a cluster too old for the mode, a ServiceMonitor without its CRD', () => {
    const bad = (args: string[]): string => {
      const r = run(H3.bin as string, ['template', 'ha', OWN_CHART, ...args]);
      expect(r.code).not.toBe(0);
      return r.stderr;
    };
    expect(bad(['--set', 'secret.peerSecret=short'])).toMatch(/peerSecret/);
    expect(bad(['--set', 'injection.mode=sidecar'])).toMatch(/injection\/mode|mode/);
    expect(bad(['--set', 'secret.redisUrl=http://x'])).toMatch(/redisUrl/);
    expect(bad(['--set', 'typo=1'])).toMatch(/additional properties|typo/i);
    expect(bad(['--kube-version', '1.31.0'])).toMatch(/injection.mode=native needs Kubernetes >= 1.32/);
    expect(bad(['--kube-version', '1.28.0', '--set', 'injection.mode=native-alias'])).toMatch(/needs native sidecars/);
    expect(bad(['--set', 'serviceMonitor.enabled=true'])).toMatch(/no monitoring.coreos.com\/v1 ServiceMonitor/);
    expect(bad(['--set', 'prometheusRule.enabled=true'])).toMatch(/no monitoring.coreos.com\/v1 PrometheusRule/);
  });
});

describe.skipIf(skipUnless(H3))('peer mTLS values of the own chart under real Helm 3', () => {
  it('certManager with createIssuer renders the self-signed root, the CA certificate and the CA Issuer the CSI driver asks', () => {
    const r = run(H3.bin as string, [
      'template', 'ha', OWN_CHART, '-n', 'openshell', '--api-versions', 'cert-manager.io/v1/Issuer',
      '--set', 'peerTls.enabled=true', '--set', 'peerTls.source=certManager', '--set', 'peerTls.certManager.createIssuer=true',
    ]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const docs = docsOf(r.stdout);
    const byName = (kind: string, name: string): Json => docs.find((d) => d['kind'] === kind && (d['metadata'] as Json)['name'] === name) as Json;
    expect(byName('Issuer', 'openshell-ha-peer-ca-selfsigned')['spec']).toEqual({ selfSigned: {} });
    expect(byName('Certificate', 'openshell-ha-peer-ca')['spec']).toMatchObject({
      isCA: true,
      secretName: 'openshell-ha-peer-ca',
      issuerRef: { group: 'cert-manager.io', kind: 'Issuer', name: 'openshell-ha-peer-ca-selfsigned' },
    });
    expect(byName('Issuer', 'openshell-ha-peer-ca')['spec']).toEqual({ ca: { secretName: 'openshell-ha-peer-ca' } });
    expect((byName('Issuer', 'openshell-ha-peer-ca')['metadata'] as Json)['namespace']).toBe('openshell');
    // Off by default, and with an issuer of one's own: nothing of this.
    for (const args of [[], ['--set', 'peerTls.enabled=true', '--set', 'peerTls.source=certManager', '--set', 'peerTls.certManager.issuerKind=ClusterIssuer']]) {
      const plain = run(H3.bin as string, ['template', 'ha', OWN_CHART, '-n', 'openshell', ...args]);
      expect(plain.code).toBe(0);
      expect(docsOf(plain.stdout).map((d) => d['kind'])).toEqual(['Secret']);
    }
    const lint = run(H3.bin as string, ['lint', OWN_CHART, '--strict', '--set', 'peerTls.enabled=true', '--set', 'peerTls.source=secret', '--set', 'peerTls.secretName=peer-certs']);
    expect(lint.code).toBe(0);
  });

  it('refuses peer mTLS values that cannot work, with the reason', () => {
    const bad = (args: string[]): string => {
      const r = run(H3.bin as string, ['template', 'ha', OWN_CHART, '--set', 'peerTls.enabled=true', ...args]);
      expect(r.code).not.toBe(0);
      return r.stderr;
    };
    // Enabled without a source of certificates: the schema names the field and the choices.
    expect(bad([])).toMatch(/peerTls\/source.*must be one of 'certManager', 'secret'/);
    expect(bad(['--set', 'peerTls.source=spire'])).toMatch(/peerTls\/source/);
    expect(bad(['--set', 'peerTls.source=certManager', '--set', 'peerTls.identity=san'])).toMatch(/peerTls.identity=san cannot work in Kubernetes: peers dial pod IPs/);
    expect(bad(['--set', 'peerTls.source=secret'])).toMatch(/peerTls.source=secret needs peerTls.secretName/);
    expect(bad(['--set', 'peerTls.source=certManager', '--set', 'peerTls.certManager.issuerName='])).toMatch(/peerTls\/certManager\/issuerName/);
    expect(bad(['--set', 'peerTls.source=certManager', '--set', 'peerTls.certManager.createIssuer=true'])).toMatch(/no cert-manager.io\/v1 Issuer/);
    expect(bad(['--set', 'peerTls.source=certManager', '--set', 'peerTls.spiffeIdTemplate=spiffe://td/no-placeholder'])).toMatch(/spiffeIdTemplate/);
    expect(bad(['--set', 'peerTls.source=certManager', '--set', 'peerTls.certManager.issuerKind=Vault'])).toMatch(/issuerKind/);
    expect(bad(['--set', 'peerTls.source=certManager', '--set', 'peerTls.tipo=1'])).toMatch(/additional properties|tipo/i);
  });
});

describe.skipIf(skipUnless(H4))('the own chart under real Helm 4', () => {
  it('helm lint --strict and helm template pass', () => {
    const lint = run(H4.bin as string, ['lint', OWN_CHART, '--strict']);
    console.log(`helm v4 lint: ${lint.stdout.trim().split('\n').join(' | ')}`);
    expect(lint.code).toBe(0);
    const tpl = run(H4.bin as string, ['template', 'ha', OWN_CHART, '-n', 'openshell', '--set', 'secret.redisUrl=redis://r:6379']);
    expect(tpl.code).toBe(0);
    expect(docsOf(tpl.stdout).map((d) => d['kind'])).toEqual(['Secret']);
  });
});

const FIXTURE_CHARTS = [
  { tag: 'seed-ha', sources: ['seed-ha.helm3-input.yaml'] },
  { tag: 'head-default', sources: ['head-default.helm3-input.yaml', 'head-hooks.yaml'] },
  { tag: 'head-ha', sources: ['head-ha.helm3-input.yaml', 'head-hooks.yaml'] },
];

describe.skipIf(skipUnless(H3))('the post-renderer under real Helm 3 (--post-renderer executable)', () => {
  for (const c of FIXTURE_CHARTS) {
    it(`helm template ${c.tag} --post-renderer: invariants hold on what Helm handed over, hooks stay out and untouched`, () => {
      const chart = chartFromFixtures(`h3-${c.tag}`, ...c.sources.map((s) => fixture(s)));
      const cap = capture(`h3-${c.tag}`);
      const r = run(H3.bin as string, ['template', 'openshell', chart, '-n', 'openshell', '--post-renderer', WRAPPER, '--post-renderer-args', '--mode=native'], cap.env);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      const input = cap.input();
      const output = cap.output();
      // Helm 3 never post-renders hooks: the certgen Job is not in the input, and comes out after.
      expect(input).not.toContain('helm.sh/hook');
      const { violations, checked } = checkInvariants(input, output, { ...INJECT_DEFAULTS, mode: 'native' });
      expect(violations).toEqual([]);
      assertInjected(r.stdout, 'native');
      if (c.sources.includes('head-hooks.yaml')) {
        const hooks = r.stdout.slice(r.stdout.indexOf('# Source: helm-chart/templates/certgen.yaml'));
        expect(hooks).toContain('kind: Job');
        expect(hooks).not.toContain('ohs-sidecar');
      }
      // --show-only finds the added objects by their # Source comment.
      const shown = run(H3.bin as string, ['template', 'openshell', chart, '-n', 'openshell', '--post-renderer', WRAPPER, '--show-only', 'injected.yaml'], cap.env);
      expect(shown.code).toBe(0);
      expect(docsOf(shown.stdout).map((d) => d['kind'])).toEqual(['Service', 'PodDisruptionBudget', 'NetworkPolicy']);
      console.log(`helm v3 template ${c.tag} + post-renderer: ${parseManifestStream(input).docs.length} docs in, ${parseManifestStream(output).docs.length} out; ${checked.length} invariant checks passed`);
    });
  }

  it('--post-renderer-args for peer mTLS (what NOTES prints): the sidecar gets the CSI volume, its mount and the peer TLS variables', () => {
    const chart = chartFromFixtures('h3-peer-tls', fixture('head-ha.helm3-input.yaml'));
    const cap = capture('h3-peer-tls');
    const r = run(H3.bin as string, [
      'template', 'openshell', chart, '-n', 'openshell', '--post-renderer', WRAPPER, '--post-renderer-args', '--mode=native',
      '--post-renderer-args=--peer-tls=cert-manager', '--post-renderer-args=--peer-tls-issuer=Issuer/openshell-ha-peer-ca',
      '--post-renderer-args=--peer-spiffe-id=spiffe://cluster.local/ns/{namespace}/openshell-ha/{replica}',
    ], cap.env);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const opts = { ...INJECT_DEFAULTS, mode: 'native' as const, peerTls: { source: 'cert-manager' as const, issuer: { kind: 'Issuer' as const, name: 'openshell-ha-peer-ca' }, spiffeIdTemplate: 'spiffe://cluster.local/ns/{namespace}/openshell-ha/{replica}' } };
    expect(checkInvariants(cap.input(), cap.output(), opts).violations).toEqual([]);
    const pod = podSpecOf(injectedWorkload(r.stdout));
    const vol = ((pod['volumes'] as Json[]) ?? []).find((v) => v['name'] === 'ohs-peer-tls') as Json;
    expect((vol['csi'] as Json)['driver']).toBe('csi.cert-manager.io');
    expect(((vol['csi'] as Json)['volumeAttributes'] as Json)['csi.cert-manager.io/uri-sans']).toBe('spiffe://cluster.local/ns/${POD_NAMESPACE}/openshell-ha/${POD_NAME}');
    const sc = findContainer(pod, 'ohs-sidecar') as Json;
    expect(sc['volumeMounts']).toContainEqual({ name: 'ohs-peer-tls', mountPath: '/etc/ohs/peer-tls', readOnly: true });
    const env = Object.fromEntries(((sc['env'] as Json[]) ?? []).map((e) => [e['name'], e['value']]));
    expect(env).toMatchObject({
      OHS_PEER_TLS_CERT_FILE: '/etc/ohs/peer-tls/tls.crt',
      OHS_PEER_TLS_KEY_FILE: '/etc/ohs/peer-tls/tls.key',
      OHS_PEER_TLS_CA_FILE: '/etc/ohs/peer-tls/ca.crt',
      OHS_PEER_IDENTITY: 'spiffe',
      OHS_PEER_SPIFFE_ID: 'spiffe://cluster.local/ns/$(POD_NAMESPACE)/openshell-ha/{replica}',
      OHS_PEER_HOST: '$(POD_IP)',
    });
  });

  it('helm template --output-dir hands the post-renderer empty input, which is answered with empty output', () => {
    const chart = chartFromFixtures('h3-outdir', fixture('head-ha.helm3-input.yaml'));
    const cap = capture('h3-outdir');
    const r = run(H3.bin as string, ['template', 'openshell', chart, '--post-renderer', WRAPPER, '--output-dir', path.join(scratch, 'outdir')], cap.env);
    expect(r.code).toBe(0);
    expect(cap.input()).toBe('');
    expect(cap.output()).toBe('');
  });

  it('a stream the post-renderer refuses makes helm fail with the reason', () => {
    const chart = chartFromFixtures('h3-bad', fixture('seed-ha.helm3-input.yaml').replace(/name: grpc/g, 'name: api'));
    const cap = capture('h3-bad');
    const r = run(H3.bin as string, ['template', 'openshell', chart, '--post-renderer', WRAPPER], cap.env);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/error while running post render on files/);
    expect(r.stderr).toMatch(/no Deployment\/StatefulSet with container ports named grpc and health/);
  });
});

describe.skipIf(skipUnless(H4))('the post-renderer under real Helm 4 (postrenderer/v1 plugin from helm/plugin)', () => {
  for (const c of FIXTURE_CHARTS) {
    it(`helm template ${c.tag} --post-renderer openshell-ha: hooks come in and go out untouched, added objects are grouped by their filename`, () => {
      installPlugin();
      const chart = chartFromFixtures(`h4-${c.tag}`, ...c.sources.map((s) => fixture(s)));
      const cap = capture(`h4-${c.tag}`);
      const r2 = run(H4.bin as string, ['template', 'openshell', chart, '-n', 'openshell', '--post-renderer', 'openshell-ha', '--post-renderer-args', '--mode=container'], cap.env);
      expect(r2.stderr).toBe('');
      expect(r2.code).toBe(0);
      const input = cap.input();
      const output = cap.output();
      expect(parseManifestStream(input).shape).toBe('helm4');
      if (c.sources.includes('head-hooks.yaml')) expect(input).toContain('helm.sh/hook');
      const { violations } = checkInvariants(input, output, { ...INJECT_DEFAULTS, mode: 'container' });
      expect(violations).toEqual([]);
      assertInjected(r2.stdout, 'container');
      // Helm 4 removed its filename annotation again, from ours too.
      expect(r2.stdout).not.toContain('postrenderer.helm.sh');
      const job = docsOf(r2.stdout).find((d) => d['kind'] === 'Job');
      if (c.sources.includes('head-hooks.yaml')) expect(findContainer(podSpecOf(job as Json), 'ohs-sidecar')).toBeUndefined();
      console.log(`helm v4 template ${c.tag} + plugin: ${parseManifestStream(input).docs.length} docs in (${parseManifestStream(input).docs.filter((d) => d.isHook).length} hooks), ${parseManifestStream(output).docs.length} out`);
    });
  }
});

function skipWithoutUpstream(): boolean {
  if (!UPSTREAM) console.log('SKIPPED: upstream chart tests: set OHS_UPSTREAM_CHART_DIR to a checkout of NVIDIA/OpenShell deploy/helm/openshell (read, not copied)');
  return !UPSTREAM;
}

describe.skipIf(skipWithoutUpstream() || skipUnless(H3))('upstream’s real chart (OHS_UPSTREAM_CHART_DIR)', () => {
  const cases = [
    { name: 'default values (StatefulSet)', values: [] as string[] },
    { name: 'ci/values-high-availability.yaml (Deployment, external DB)', values: ['-f', path.join(UPSTREAM ?? '', 'ci/values-high-availability.yaml')] },
  ];
  for (const k of cases) {
    for (const [label, tool] of [['helm v3', H3], ['helm v4', H4]] as const) {
      it(`${label}: ${k.name}`, () => {
        if (!tool.bin) return;
        const cap = capture(`up-${label.replace(' ', '')}-${k.values.length}`);
        const common = ['template', 'openshell', UPSTREAM as string, '-n', 'openshell', '--api-versions', 'agents.x-k8s.io/v1beta1', '--kube-version', '1.32.0', ...k.values];
        if (label === 'helm v4') installPlugin();
        const r = run(tool.bin, [...common, '--post-renderer', label === 'helm v3' ? WRAPPER : 'openshell-ha'], cap.env);
        expect(r.stderr).toBe('');
        expect(r.code).toBe(0);
        const input = cap.input();
        const output = cap.output();
        const { violations, checked } = checkInvariants(input, output, INJECT_DEFAULTS);
        expect(violations).toEqual([]);
        assertInjected(r.stdout, 'native');
        console.log(`${label} upstream chart, ${k.name}: ${injectedWorkload(r.stdout)['kind'] as string} injected; ${checked.join('; ')}`);
      });
    }
  }
});
