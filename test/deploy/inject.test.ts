// The post-renderer on the upstream chart fixtures (seed and HEAD, Helm 3 and Helm 4 shapes): the
// invariants of deployment reference §3.10, what the injected pod looks like, and what it refuses.
import { describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { loadConfig } from '../../src/config/load.ts';
import { injectManifests } from '../../src/deploy/inject.ts';
import { INJECT_MODES, parseInjectArgs, type InjectMode } from '../../src/deploy/inject-options.ts';
import { parseManifestStream } from '../../src/deploy/manifest-stream.ts';
import {
  checkInvariants,
  containersOf,
  docsOf,
  envValue,
  findContainer,
  fixture,
  HELM3_FIXTURES,
  injectedWorkload,
  options,
  podSpecOf,
  toHelm4Shape,
} from './support/manifests.ts';

type Json = Record<string, unknown>;

const inputs: Array<{ name: string; src: () => string }> = [
  ...HELM3_FIXTURES.map((f) => ({ name: f, src: () => fixture(f) })),
  { name: 'head-ha, Helm 4 shape (hooks included)', src: () => toHelm4Shape(fixture('head-ha.helm3-input.yaml'), fixture('head-hooks.yaml')) },
  { name: 'head-default, Helm 4 shape (hooks included)', src: () => toHelm4Shape(fixture('head-default.helm3-input.yaml'), fixture('head-hooks.yaml')) },
  { name: 'seed-ha, Helm 4 shape', src: () => toHelm4Shape(fixture('seed-ha.helm3-input.yaml')) },
];

describe('inject on every fixture keeps the invariants of reference §3.10', () => {
  for (const input of inputs) {
    for (const mode of INJECT_MODES) {
      it(`${input.name}, --mode ${mode}`, () => {
        const src = input.src();
        const opts = options({ mode });
        const result = injectManifests(src, opts);
        const { violations, checked } = checkInvariants(src, result.output, opts);
        if (mode === 'native') console.log(`${input.name}: ${result.target} injected; checked: ${checked.join('; ')}`);
        expect(violations).toEqual([]);
        expect(result.alreadyInjected).toBe(false);
      });
    }
  }
});

function injected(name: string, mode: InjectMode = 'native', src = fixture(name)): { out: string; w: Json; pod: Json; gw: Json; sc: Json; docs: Json[] } {
  const out = injectManifests(src, options({ mode })).output;
  const w = injectedWorkload(out);
  const pod = podSpecOf(w);
  const gw = containersOf(pod, 'containers').find((c) => c['name'] !== 'ohs-sidecar') as Json;
  const sc = findContainer(pod, 'ohs-sidecar') as Json;
  return { out, w, pod, gw, sc, docs: docsOf(out) };
}

/** Which container port a Service's named targetPort reaches (endpoint controller FindPort, 1.32+). */
function resolveTargetPort(pod: Json, name: string): { container: string; port: number } | undefined {
  for (const c of [...containersOf(pod, 'containers'), ...containersOf(pod, 'initContainers')]) {
    for (const p of (c['ports'] as Json[] | undefined) ?? []) if (p['name'] === name) return { container: String(c['name']), port: p['containerPort'] as number };
  }
  return undefined;
}

describe('the injected pod', () => {
  it('HEAD: the gateway moves to 127.0.0.1:18080 by env, the Service still reaches port 8080, now the sidecar', () => {
    const { gw, pod, docs, sc } = injected('head-ha.helm3-input.yaml');
    expect(envValue(gw, 'OPENSHELL_BIND_ADDRESS')).toEqual({ name: 'OPENSHELL_BIND_ADDRESS', value: '127.0.0.1' });
    expect(envValue(gw, 'OPENSHELL_SERVER_PORT')).toEqual({ name: 'OPENSHELL_SERVER_PORT', value: '18080' });
    expect(gw['args']).toEqual(['--config', '/etc/openshell/gateway.toml']);
    const svc = docs.find((d) => d['kind'] === 'Service' && (d['metadata'] as Json)['name'] === 'openshell') as Json;
    const grpc = ((svc['spec'] as Json)['ports'] as Json[]).find((p) => p['name'] === 'grpc') as Json;
    expect(grpc['targetPort']).toBe('grpc');
    expect(resolveTargetPort(pod, 'grpc')).toEqual({ container: 'ohs-sidecar', port: 8080 });
    expect(envValue(sc, 'OHS_GATEWAY_URL')?.['value']).toBe('https://127.0.0.1:18080');
    // The gateway's own health and metrics listeners keep their TOML addresses (probes unchanged).
    expect((gw['readinessProbe'] as Json)['httpGet']).toEqual({ path: '/readyz', port: 'health' });
    expect(envValue(gw, 'OPENSHELL_HEALTH_PORT')).toBeUndefined();
  });

  it('seed: the value after --port becomes "18080" and no OPENSHELL_SERVER_PORT is set (the argument wins)', () => {
    const { gw, pod } = injected('seed-ha.helm3-input.yaml');
    const args = gw['args'] as string[];
    expect(args[args.indexOf('--port') + 1]).toBe('18080');
    expect(args[args.indexOf('--health-port') + 1]).toBe('8081');
    expect(envValue(gw, 'OPENSHELL_SERVER_PORT')).toBeUndefined();
    expect(envValue(gw, 'OPENSHELL_BIND_ADDRESS')).toBeUndefined();
    expect(resolveTargetPort(pod, 'grpc')).toEqual({ container: 'ohs-sidecar', port: 8080 });
    expect(resolveTargetPort(pod, 'gw-grpc')).toEqual({ container: 'openshell', port: 18080 });
  });

  it('seed: --port=8080 written inline is rewritten inline', () => {
    const src = fixture('seed-default.helm3-input.yaml').replace('            - --port\n            - "8080"\n', '            - --port=8080\n');
    const { gw } = injected('seed-default.helm3-input.yaml', 'native', src);
    expect(gw['args']).toContain('--port=18080');
  });

  it('native: the sidecar is an init container with restartPolicy Always, the drain preStop is on the gateway only', () => {
    const { gw, sc, pod } = injected('head-ha.helm3-input.yaml', 'native');
    expect(containersOf(pod, 'initContainers').map((c) => c['name'])).toEqual(['ohs-sidecar']);
    expect(sc['restartPolicy']).toBe('Always');
    expect(gw['lifecycle']).toEqual({ preStop: { httpGet: { path: '/drain/wait', port: 9091 } } });
    expect(sc['lifecycle']).toBeUndefined();
    expect(pod['terminationGracePeriodSeconds']).toBe(60);
    expect(envValue(sc, 'OHS_TERMINATION_GRACE_SECONDS')?.['value']).toBe('60');
    // Startup and liveness never wait for the gateway (it only starts once the sidecar's startup probe passed).
    expect((sc['startupProbe'] as Json)['httpGet']).toEqual({ path: '/healthz', port: 9091 });
    expect((sc['readinessProbe'] as Json)['httpGet']).toEqual({ path: '/readyz', port: 9091 });
    expect(envValue(sc, 'OHS_ADMIN_LISTEN')?.['value']).toBe('0.0.0.0:9091');
  });

  it('container mode: a regular container, and both containers wait for the drain in preStop', () => {
    const { gw, sc, pod } = injected('seed-ha.helm3-input.yaml', 'container');
    expect(containersOf(pod, 'containers').map((c) => c['name'])).toEqual(['openshell', 'ohs-sidecar']);
    expect(pod['initContainers']).toBeUndefined();
    expect(sc['restartPolicy']).toBeUndefined();
    expect(gw['lifecycle']).toEqual(sc['lifecycle']);
  });

  it('native-alias: the gateway keeps its informational grpc:8080 entry, the sidecar declares no 8080', () => {
    const { gw, sc } = injected('head-default.helm3-input.yaml', 'native-alias');
    const gwPorts = (gw['ports'] as Json[]).map((p) => `${String(p['name'])}:${String(p['containerPort'])}`);
    expect(gwPorts).toEqual(['grpc:8080', 'health:8081', 'metrics:9090', 'gw-grpc:18080']);
    expect((sc['ports'] as Json[]).map((p) => p['containerPort'])).toEqual([8443, 9091]);
  });

  it('HEAD HA: the sidecar reuses the gateway database Secret; Redis and the peer secret come from the own chart', () => {
    const { sc, pod } = injected('head-ha.helm3-input.yaml');
    expect(envValue(sc, 'OHS_DATABASE_URL')).toEqual({ name: 'OHS_DATABASE_URL', valueFrom: { secretKeyRef: { name: 'openshell-ha-pg', key: 'uri' } } });
    expect(envValue(sc, 'OHS_REDIS_URL')).toEqual({ name: 'OHS_REDIS_URL', valueFrom: { secretKeyRef: { name: 'openshell-ha', key: 'redis-url', optional: true } } });
    expect(envValue(sc, 'OHS_PEER_SECRET_FILE')?.['value']).toBe('/etc/ohs/peer/peer-secret');
    const vol = (pod['volumes'] as Json[]).find((v) => v['name'] === 'ohs-peer-secret') as Json;
    expect(vol['secret']).toEqual({ secretName: 'openshell-ha', items: [{ key: 'peer-secret', path: 'peer-secret' }], defaultMode: 0o440 });
  });

  it('pod identity: replica id from the pod name, peer URL from the pod IP, defined before they are referenced', () => {
    const { sc } = injected('head-ha.helm3-input.yaml');
    const names = (sc['env'] as Json[]).map((e) => e['name']);
    expect(names.indexOf('POD_IP')).toBeLessThan(names.indexOf('OHS_PEER_HOST'));
    expect(names.indexOf('POD_NAME')).toBeLessThan(names.indexOf('OHS_REPLICA_ID'));
    expect(envValue(sc, 'POD_IP')).toEqual({ name: 'POD_IP', valueFrom: { fieldRef: { fieldPath: 'status.podIP' } } });
    expect(envValue(sc, 'OHS_PEER_HOST')?.['value']).toBe('$(POD_IP)');
    expect(envValue(sc, 'OHS_REPLICA_ID')?.['value']).toBe('$(POD_NAME)');
  });

  it('TLS: the sidecar mounts the gateway server certificate and client CA at the same paths, and the client certificate for the gateway hop', () => {
    for (const name of ['head-ha.helm3-input.yaml', 'seed-ha.helm3-input.yaml']) {
      const { sc, pod } = injected(name);
      const mounts = (sc['volumeMounts'] as Json[]).map((m) => `${String(m['name'])}:${String(m['mountPath'])}`);
      expect(mounts).toEqual(['ohs-peer-secret:/etc/ohs/peer', 'tls-cert:/etc/openshell-tls/server', 'tls-client-ca:/etc/openshell-tls/client-ca', 'ohs-client-tls:/etc/ohs/client-tls']);
      expect(envValue(sc, 'OHS_TLS_CERT_FILE')?.['value']).toBe('/etc/openshell-tls/server/tls.crt');
      expect(envValue(sc, 'OHS_TLS_CLIENT_CA_FILE')?.['value']).toBe('/etc/openshell-tls/client-ca/ca.crt');
      expect(envValue(sc, 'OHS_GATEWAY_SERVER_NAME')?.['value']).toBe('localhost');
      const clientTls = (pod['volumes'] as Json[]).find((v) => v['name'] === 'ohs-client-tls') as Json;
      expect((clientTls['secret'] as Json)['secretName']).toBe('openshell-client-tls');
    }
  });

  it('--tls off: a plaintext sidecar and gateway hop, no TLS volumes', () => {
    const out = injectManifests(fixture('head-ha.helm3-input.yaml'), options({ tls: 'off' })).output;
    const sc = findContainer(podSpecOf(injectedWorkload(out)), 'ohs-sidecar') as Json;
    expect(envValue(sc, 'OHS_GATEWAY_URL')?.['value']).toBe('http://127.0.0.1:18080');
    expect(envValue(sc, 'OHS_TLS_CERT_FILE')).toBeUndefined();
    expect((sc['volumeMounts'] as Json[]).map((m) => m['name'])).toEqual(['ohs-peer-secret']);
  });

  it('the peer Service, PDB and NetworkPolicy select injected gateway pods only, never the certgen hook pods', () => {
    const src = toHelm4Shape(fixture('head-ha.helm3-input.yaml'), fixture('head-hooks.yaml'));
    const { docs } = injected('x', 'native', src);
    const job = docs.find((d) => d['kind'] === 'Job') as Json;
    const jobLabels = ((job['spec'] as Json)['template'] as Json)['metadata'] as Json;
    const matches = (sel: Record<string, string>): boolean => Object.entries(sel).every(([k, val]) => (jobLabels['labels'] as Record<string, string>)[k] === val);
    const svc = docs.find((d) => (d['metadata'] as Json)['name'] === 'openshell-ha-peers') as Json;
    const pdb = docs.find((d) => d['kind'] === 'PodDisruptionBudget') as Json;
    const np = docs.find((d) => d['kind'] === 'NetworkPolicy' && (d['metadata'] as Json)['name'] === 'openshell-ha') as Json;
    const selectors = [
      (svc['spec'] as Json)['selector'] as Record<string, string>,
      ((pdb['spec'] as Json)['selector'] as Json)['matchLabels'] as Record<string, string>,
      ((np['spec'] as Json)['podSelector'] as Json)['matchLabels'] as Record<string, string>,
    ];
    for (const sel of selectors) {
      expect(sel['openshell-ha.io/sidecar']).toBe('injected');
      expect(matches(sel)).toBe(false);
    }
    expect(svc['spec']).toMatchObject({ clusterIP: 'None', publishNotReadyAddresses: true });
    expect(pdb['spec']).toMatchObject({ maxUnavailable: 1, unhealthyPodEvictionPolicy: 'AlwaysAllow' });
  });

  it('the NetworkPolicy opens the public, health and metrics ports to all, peer and admin to the release pods, and not the gateway loopback port', () => {
    for (const name of ['seed-ha.helm3-input.yaml', 'head-ha.helm3-input.yaml']) {
      const { docs } = injected(name);
      const np = docs.find((d) => d['kind'] === 'NetworkPolicy' && (d['metadata'] as Json)['name'] === 'openshell-ha') as Json;
      const rules = (np['spec'] as Json)['ingress'] as Json[];
      const open = rules.filter((r) => r['from'] === undefined).flatMap((r) => (r['ports'] as Json[]).map((p) => p['port']));
      expect(open).toEqual([8080, 8081, 9090]);
      const restricted = rules.filter((r) => r['from'] !== undefined).flatMap((r) => (r['ports'] as Json[]).map((p) => p['port']));
      expect(restricted).toEqual([8443, 9091]);
      expect(JSON.stringify(rules)).not.toContain('18080');
    }
    const withNs = injectManifests(fixture('head-ha.helm3-input.yaml'), options({ adminFromNamespaces: ['monitoring'] })).output;
    const np = docsOf(withNs).find((d) => d['kind'] === 'NetworkPolicy' && (d['metadata'] as Json)['name'] === 'openshell-ha') as Json;
    const admin = ((np['spec'] as Json)['ingress'] as Json[])[2] as Json;
    expect(admin['from']).toContainEqual({ namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'monitoring' } } });
  });

  it('Helm 4 shape: added documents carry the filename annotation and no # Source comment; Helm 3 shape the reverse', () => {
    const h4 = injectManifests(toHelm4Shape(fixture('head-ha.helm3-input.yaml')), options()).output;
    const added4 = parseManifestStream(h4).docs.filter((d) => d.annotations['postrenderer.helm.sh/postrender-filename'] === 'openshell-ha/injected.yaml');
    expect(added4.map((d) => d.kind)).toEqual(['Service', 'PodDisruptionBudget', 'NetworkPolicy']);
    expect(h4).not.toContain('# Source:');
    const h3 = injectManifests(fixture('head-ha.helm3-input.yaml'), options()).output;
    expect(h3).not.toContain('openshell-ha/injected.yaml\n    ');
    expect(h3.match(/^# Source: openshell-ha\/injected\.yaml$/gm)).toHaveLength(3);
    expect(h3).not.toMatch(/postrenderer\.helm\.sh/);
  });

  it('the grace period is only raised, never lowered', () => {
    const src = fixture('head-ha.helm3-input.yaml').replace('terminationGracePeriodSeconds: 5', 'terminationGracePeriodSeconds: 300');
    const { pod, sc } = injected('x', 'native', src);
    expect(pod['terminationGracePeriodSeconds']).toBe(300);
    expect(envValue(sc, 'OHS_TERMINATION_GRACE_SECONDS')?.['value']).toBe('300');
  });

  it('new strings that YAML 1.1 would read as booleans or numbers are quoted', () => {
    const out = injectManifests(fixture('head-ha.helm3-input.yaml'), options({ haSecret: 'yes', image: 'on' })).output;
    expect(out).toMatch(/secretName: "yes"/);
    expect(out).toMatch(/image: "on"/);
    expect(out).toMatch(/value: "18080"/);
    const sc = findContainer(podSpecOf(injectedWorkload(out)), 'ohs-sidecar') as Json;
    expect(sc['image']).toBe('on');
  });

  it('comments inside the gateway pod template survive the rewrite', () => {
    const out = injectManifests(fixture('head-ha.helm3-input.yaml'), options()).output;
    expect(out).toContain('# Roll the gateway workload when the rendered gateway TOML changes');
    expect(out).toContain('# Most gateway settings live in the ConfigMap-backed TOML file');
    expect(out).toContain('# Source: helm-chart/templates/deployment.yaml');
  });
});

describe('input the injector leaves alone', () => {
  it('empty input (Helm 3 --output-dir) gives empty output', () => {
    expect(injectManifests('', options()).output).toBe('');
    expect(injectManifests('\n', options()).output).toBe('\n');
  });

  it('hook documents alone (Helm 4 separate strategy) pass through untouched', () => {
    const hooks = fixture('head-hooks.yaml');
    const r = injectManifests(hooks, options());
    expect(r.output).toBe(hooks);
    expect(r.notes.join(' ')).toMatch(/only hook documents/);
  });

  it('comment-only documents pass through verbatim and no null document is emitted', () => {
    const out = injectManifests(fixture('head-ha.helm3-input.yaml'), options()).output;
    expect(out).toContain('---\n# Source: helm-chart/templates/route.yaml\n# SPDX-FileCopyrightText');
    expect(out).not.toMatch(/^null$/m);
  });

  it('a document that does not parse is passed through with a warning when it is not the target', () => {
    const broken = '---\n# Source: helm-chart/templates/broken.yaml\nkind: ConfigMap\ndata: [unclosed\n';
    const src = fixture('head-ha.helm3-input.yaml') + broken;
    const r = injectManifests(src, options());
    expect(r.output).toContain(broken.slice(0, -1));
    expect(r.notes.join('\n')).toMatch(/does not parse/);
  });

  it('CRLF input comes out LF only', () => {
    const r = injectManifests(fixture('head-ha.helm3-input.yaml').replace(/\n/g, '\r\n'), options());
    expect(r.output).not.toContain('\r');
    expect(r.output).toBe(injectManifests(fixture('head-ha.helm3-input.yaml'), options()).output);
  });

  it('injecting an injected stream changes nothing, and only missing added objects are restored', () => {
    const once = injectManifests(fixture('head-default.helm3-input.yaml'), options()).output;
    const twice = injectManifests(once, options());
    expect(twice.output).toBe(once);
    expect(twice.alreadyInjected).toBe(true);
    const withoutPdb = parseManifestStream(once)
      .docs.filter((d) => d.kind !== 'PodDisruptionBudget')
      .map((d) => d.text)
      .join('');
    const restored = injectManifests(withoutPdb, options()).output;
    expect(docsOf(restored).filter((d) => d['kind'] === 'PodDisruptionBudget')).toHaveLength(1);
    expect(injectManifests(restored, options()).output).toBe(restored);
  });
});

describe('input the injector refuses, with a clear message', () => {
  const refusal = (src: string, over = {}): string => {
    try {
      injectManifests(src, options(over));
    } catch (err) {
      return (err as Error).message;
    }
    throw new Error('expected a refusal');
  };

  it('the approximate Helm 4 fixture (its gateway has no ports): no target, unless named with --workload/--container', () => {
    const src = fixture('head-ha.helm4-input.approx.yaml');
    expect(refusal(src)).toMatch(/no Deployment\/StatefulSet with container ports named grpc and health.*Deployment\/openshell \(containers: openshell-gateway\[\]\).*--workload/);
    const opts = options({ workload: { kind: 'Deployment', name: 'openshell' }, container: 'openshell-gateway' });
    const r = injectManifests(src, opts);
    expect(r.target).toBe('Deployment/openshell');
    // The fixture's own placeholder (`labels: {…same 5 labels…}`) is not a valid label map; nothing else may fail.
    expect(checkInvariants(src, r.output, opts).violations.filter((x) => !x.includes('…same 5 labels…'))).toEqual([]);
  });

  it('two gateway-looking workloads: ambiguous, --workload picks one', () => {
    const second = fixture('head-ha.helm3-input.yaml').replace('kind: Deployment\nmetadata:\n  name: openshell\n', 'kind: Deployment\nmetadata:\n  name: openshell-b\n');
    const src = fixture('head-default.helm3-input.yaml') + second;
    expect(refusal(src)).toMatch(/2 candidate gateway containers with container ports named grpc and health: StatefulSet\/openshell container openshell-gateway, Deployment\/openshell-b/);
    expect(injectManifests(src, options({ workload: { name: 'openshell-b' } })).target).toBe('Deployment/openshell-b');
  });

  it('a gateway without args (the image default command line would win over env)', () => {
    const src = fixture('head-ha.helm3-input.yaml').replace('          args:\n            - --config\n            - /etc/openshell/gateway.toml\n', '');
    expect(refusal(src)).toMatch(/has no args/);
  });

  it('hostNetwork pods, a taken preStop, a port clash, a name clash, --tls on without certificates', () => {
    const head = fixture('head-ha.helm3-input.yaml');
    expect(refusal(head.replace('      serviceAccountName: openshell\n', '      serviceAccountName: openshell\n      hostNetwork: true\n'))).toMatch(/hostNetwork/);
    expect(refusal(head.replace('          resources:\n            {}\n', '          resources:\n            {}\n          lifecycle:\n            preStop:\n              exec: {command: [sleep, "5"]}\n'))).toMatch(/already has a preStop/);
    expect(refusal(head, { adminPort: 9090 })).toMatch(/port 9090 \(ohs-admin\) is already declared by container openshell-gateway as metrics/);
    expect(refusal(head, { peerPort: 8081 })).toMatch(/port 8081 \(ohs-peer\)/);
    expect(refusal(`${head}---\n# Source: x/templates/svc.yaml\napiVersion: v1\nkind: Service\nmetadata:\n  name: openshell-ha-peers\nspec: {}\n`)).toMatch(/already has a Service named openshell-ha-peers/);
    const plain = head.replace(/tls-cert\n\s+mountPath: \/etc\/openshell-tls\/server/, 'other\n              mountPath: /other');
    expect(refusal(plain, { tls: 'on' })).toMatch(/--tls on/);
  });

  it('no workload at all', () => {
    expect(refusal('---\n# Source: x/templates/cm.yaml\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n')).toMatch(/No Deployment or StatefulSet/);
  });
});

describe('inject flags', () => {
  it('parses --flag value and --flag=value, rejects unknown flags and bad values', () => {
    const p = parseInjectArgs(['--mode=container', '--image', 'reg/x:1', '--workload', 'StatefulSet/openshell', '--database-secret', 'pg/uri', '--admin-from-namespace', 'monitoring']);
    expect(p.help).toBe(false);
    if (p.help) return;
    expect(p.options).toMatchObject({ mode: 'container', image: 'reg/x:1', workload: { kind: 'StatefulSet', name: 'openshell' }, databaseSecret: { name: 'pg', key: 'uri' }, adminFromNamespaces: ['monitoring'] });
    expect(() => parseInjectArgs(['--mode', 'sidecar'])).toThrow(/--mode/);
    expect(() => parseInjectArgs(['--nope', 'x'])).toThrow(/unknown flag --nope/);
    expect(() => parseInjectArgs(['--peer-port', '99999'])).toThrow(/port/);
    expect(() => parseInjectArgs(['--peer-port', '9091'])).toThrow(/must differ/);
    expect(() => parseInjectArgs(['--workload', 'Job/x'])).toThrow(/Deployment or StatefulSet/);
    expect(parseInjectArgs(['--help'])).toEqual({ help: true });
  });

  it('--database-secret replaces the reused gateway database Secret', () => {
    const out = injectManifests(fixture('seed-ha.helm3-input.yaml'), options({ databaseSecret: { name: 'pg', key: 'url' } })).output;
    const sc = findContainer(podSpecOf(injectedWorkload(out)), 'ohs-sidecar') as Json;
    expect(envValue(sc, 'OHS_DATABASE_URL')).toEqual({ name: 'OHS_DATABASE_URL', valueFrom: { secretKeyRef: { name: 'pg', key: 'url' } } });
  });

  it('output of every fixture parses as one YAML 1.1 stream without errors', () => {
    for (const f of HELM3_FIXTURES) {
      const out = injectManifests(fixture(f), options()).output;
      expect(parseAllDocuments(out, { version: '1.1' }).every((d) => d.errors.length === 0)).toBe(true);
    }
  });
});

/** The sidecar's environment as the kubelet would hand it over: fieldRefs and Secrets filled in, $(VAR) expanded in order. */
function kubeletEnv(sc: Json, pod: { name: string; namespace: string; ip: string }): Record<string, string> {
  const env: Record<string, string> = {};
  const fields: Record<string, string> = { 'metadata.name': pod.name, 'metadata.namespace': pod.namespace, 'status.podIP': pod.ip };
  for (const e of (sc['env'] as Json[] | undefined) ?? []) {
    const name = String(e['name']);
    if (typeof e['value'] === 'string') env[name] = e['value'].replace(/\$\(([A-Z_][A-Z0-9_]*)\)/g, (m, v: string) => env[v] ?? m);
    const from = e['valueFrom'] as Json | undefined;
    const field = (from?.['fieldRef'] as Json | undefined)?.['fieldPath'];
    if (typeof field === 'string') env[name] = fields[field] ?? '';
    const secret = from?.['secretKeyRef'] as Json | undefined;
    // Required Secret keys (the database URL) are there; optional ones (redis-url) are left out.
    if (secret && secret['optional'] !== true) env[name] = 'postgres://openshell@pg:5432/openshell';
  }
  return env;
}

/** The sidecar's loader on that environment, the mounted peer secret file stood in for by its value. */
function loadPodConfig(env: Record<string, string>): ReturnType<typeof loadConfig> {
  const rest = Object.fromEntries(Object.entries(env).filter(([k]) => k !== 'OHS_PEER_SECRET_FILE'));
  return loadConfig({ argv: [], env: { ...rest, OHS_PEER_SECRET: 'a-peer-secret-of-24-chars' } });
}

describe('peer mTLS injection (--peer-tls)', () => {
  const SPIFFE = 'spiffe://cluster.local/ns/{namespace}/openshell-ha/{replica}';

  it('cert-manager: a csi.cert-manager.io volume per pod naming its SPIFFE id, mounted into the sidecar, whose config turns peer mTLS on', () => {
    const opts = options({ peerTls: { source: 'cert-manager', issuer: { kind: 'ClusterIssuer', name: 'ohs-peer-ca' }, spiffeIdTemplate: SPIFFE } });
    const result = injectManifests(fixture('head-ha.helm3-input.yaml'), opts);
    const { violations } = checkInvariants(fixture('head-ha.helm3-input.yaml'), result.output, opts);
    expect(violations).toEqual([]);
    const pod = podSpecOf(injectedWorkload(result.output));
    const sc = findContainer(pod, 'ohs-sidecar') as Json;
    const vol = ((pod['volumes'] as Json[]) ?? []).find((v) => v['name'] === 'ohs-peer-tls');
    expect(vol).toEqual({
      name: 'ohs-peer-tls',
      csi: {
        driver: 'csi.cert-manager.io',
        readOnly: true,
        volumeAttributes: {
          'csi.cert-manager.io/issuer-name': 'ohs-peer-ca',
          'csi.cert-manager.io/issuer-kind': 'ClusterIssuer',
          'csi.cert-manager.io/issuer-group': 'cert-manager.io',
          'csi.cert-manager.io/uri-sans': 'spiffe://cluster.local/ns/${POD_NAMESPACE}/openshell-ha/${POD_NAME}',
          'csi.cert-manager.io/common-name': '${POD_NAME}',
          'csi.cert-manager.io/key-usages': 'digital signature,key encipherment,server auth,client auth',
          'csi.cert-manager.io/fs-group': '1000',
        },
      },
    });
    expect(sc['volumeMounts']).toContainEqual({ name: 'ohs-peer-tls', mountPath: '/etc/ohs/peer-tls', readOnly: true });
    // The gateway container does not see the peer key.
    const gw = containersOf(pod, 'containers').find((c) => c['name'] !== 'ohs-sidecar') as Json;
    expect(JSON.stringify(gw['volumeMounts'] ?? [])).not.toContain('ohs-peer-tls');
    const env = kubeletEnv(sc, { name: 'openshell-7d9f-abcde', namespace: 'openshell', ip: '10.1.2.3' });
    expect(env).toMatchObject({
      OHS_PEER_TLS_CERT_FILE: '/etc/ohs/peer-tls/tls.crt',
      OHS_PEER_TLS_KEY_FILE: '/etc/ohs/peer-tls/tls.key',
      OHS_PEER_TLS_CA_FILE: '/etc/ohs/peer-tls/ca.crt',
      OHS_PEER_IDENTITY: 'spiffe',
      OHS_PEER_SPIFFE_ID: 'spiffe://cluster.local/ns/openshell/openshell-ha/{replica}',
      OHS_REPLICA_ID: 'openshell-7d9f-abcde',
      OHS_PEER_HOST: '10.1.2.3',
    });
    // The sidecar's own loader: peer TLS with the SPIFFE identity the CSI driver writes for this pod
    // ({replica} = OHS_REPLICA_ID = the pod name), and a peer URL it builds as https:// (no http one given).
    const cfg = loadPodConfig(env);
    expect(cfg.peerTls).toMatchObject({ certFile: '/etc/ohs/peer-tls/tls.crt', identity: 'spiffe', spiffeIdTemplate: 'spiffe://cluster.local/ns/openshell/openshell-ha/{replica}' });
    expect(cfg.peerUrl).toBeUndefined();
    expect(cfg.peerHost).toBe('10.1.2.3');
    expect(result.notes.some((n) => n.includes('peer mTLS cert-manager'))).toBe(true);
    // The shared secret stays mounted: with both, both must hold.
    expect(env['OHS_PEER_SECRET_FILE']).toBe('/etc/ohs/peer/peer-secret');
  });

  it('secret: a StatefulSet mounts the Secret and each pod reads the pair named after itself', () => {
    for (const f of ['seed-ha.helm3-input.yaml', 'head-default.helm3-input.yaml']) {
      const out = injectManifests(fixture(f), options({ peerTls: { source: 'secret', secret: 'ohs-peer-certs', spiffeIdTemplate: SPIFFE } })).output;
      const pod = podSpecOf(injectedWorkload(out));
      const sc = findContainer(pod, 'ohs-sidecar') as Json;
      expect(((pod['volumes'] as Json[]) ?? []).find((v) => v['name'] === 'ohs-peer-tls')).toEqual({ name: 'ohs-peer-tls', secret: { secretName: 'ohs-peer-certs', defaultMode: 0o440 } });
      const env = kubeletEnv(sc, { name: 'openshell-1', namespace: 'ns1', ip: '10.0.0.7' });
      expect(env).toMatchObject({ OHS_PEER_TLS_CERT_FILE: '/etc/ohs/peer-tls/openshell-1.crt', OHS_PEER_TLS_KEY_FILE: '/etc/ohs/peer-tls/openshell-1.key', OHS_PEER_TLS_CA_FILE: '/etc/ohs/peer-tls/ca.crt' });
      expect(loadPodConfig(env).peerTls?.spiffeIdTemplate).toBe('spiffe://cluster.local/ns/ns1/openshell-ha/{replica}');
    }
  });

  it('off by default: no peer TLS volume, mount or variables', () => {
    const { pod, sc } = injected('head-ha.helm3-input.yaml');
    expect(JSON.stringify(pod)).not.toContain('ohs-peer-tls');
    expect(Object.keys(kubeletEnv(sc, { name: 'p', namespace: 'n', ip: '10.0.0.1' })).filter((k) => k.startsWith('OHS_PEER_TLS') || k === 'OHS_PEER_IDENTITY')).toEqual([]);
  });

  it('refuses what cannot work, saying why', () => {
    expect(() => parseInjectArgs(['--peer-tls', 'cert-manager'])).toThrow(/--peer-tls cert-manager needs --peer-tls-issuer/);
    expect(() => parseInjectArgs(['--peer-tls', 'secret'])).toThrow(/--peer-tls secret needs --peer-tls-secret NAME/);
    expect(() => parseInjectArgs(['--peer-tls', 'spire'])).toThrow(/--peer-tls: expected one of off, cert-manager, secret/);
    expect(() => parseInjectArgs(['--peer-tls', 'cert-manager', '--peer-tls-issuer', 'Vault/x'])).toThrow(/Issuer or ClusterIssuer/);
    expect(() => parseInjectArgs(['--peer-tls', 'cert-manager', '--peer-tls-issuer', 'ca', '--peer-identity', 'san'])).toThrow(/no issuer|neither the cert-manager CSI driver nor a Secret can issue a certificate naming a pod IP/);
    expect(() => parseInjectArgs(['--peer-tls', 'cert-manager', '--peer-tls-issuer', 'ca', '--peer-spiffe-id', 'spiffe://td/no-placeholder'])).toThrow(/\{replica\} once/);
    expect(() => parseInjectArgs(['--peer-tls-issuer', 'ca'])).toThrow(/need --peer-tls cert-manager\|secret/);
    const p = parseInjectArgs(['--peer-tls=cert-manager', '--peer-tls-issuer=ClusterIssuer/ca', '--peer-identity=spiffe', '--peer-spiffe-id', 'spiffe://example.org/{namespace}/{replica}']);
    expect(!p.help && p.options.peerTls).toEqual({ source: 'cert-manager', issuer: { kind: 'ClusterIssuer', name: 'ca' }, spiffeIdTemplate: 'spiffe://example.org/{namespace}/{replica}' });
    // A Deployment's pods have random names: no per-pod key can be put in a Secret beforehand.
    expect(() => injectManifests(fixture('head-ha.helm3-input.yaml'), options({ peerTls: { source: 'secret', secret: 's', spiffeIdTemplate: SPIFFE } }))).toThrow(
      /--peer-tls secret needs pod names known in advance \(a StatefulSet\), but the gateway is a Deployment/,
    );
  });
});
