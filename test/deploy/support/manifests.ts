// Test support for the post-renderer: the upstream chart fixtures, a Helm 4 shaped variant of them,
// and the invariants of deployment reference §3.10 as one reusable check (used on the fixtures and
// on real `helm template` output alike).
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Document, parseAllDocuments, visit } from 'yaml';
import { Deployment, StatefulSet } from 'kubernetes-models/apps/v1';
import { ConfigMap, Secret, Service, ServiceAccount } from 'kubernetes-models/v1';
import { Job } from 'kubernetes-models/batch/v1';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1';
import { NetworkPolicy } from 'kubernetes-models/networking.k8s.io/v1';
import { injectManifests } from '../../../src/deploy/inject.ts';
import { INJECT_DEFAULTS, type InjectOptions } from '../../../src/deploy/inject-options.ts';
import { HELM4_FILENAME_ANNOTATION, parseManifestStream } from '../../../src/deploy/manifest-stream.ts';
import { SIDECAR_CONTAINER } from '../../../src/deploy/sidecar-spec.ts';

const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, '../../..');

/** The fixtures live in the shared folder beside the repository (CI lays a copy there too). */
export function fixturesDir(): string {
  const fromEnv = process.env.OHS_UPSTREAM_CHART_FIXTURES;
  if (fromEnv) return fromEnv;
  for (const candidate of [path.resolve(repoRoot, '../shared/fixtures/upstream-chart'), '/work/shared/fixtures/upstream-chart']) {
    try {
      readFileSync(path.join(candidate, 'README.md'));
      return candidate;
    } catch {
      // try the next one
    }
  }
  throw new Error('upstream chart fixtures not found: set OHS_UPSTREAM_CHART_FIXTURES to shared/fixtures/upstream-chart');
}

export function fixture(name: string): string {
  return readFileSync(path.join(fixturesDir(), name), 'utf8');
}

export const HELM3_FIXTURES = ['seed-default.helm3-input.yaml', 'seed-ha.helm3-input.yaml', 'head-default.helm3-input.yaml', 'head-ha.helm3-input.yaml'] as const;

export function options(over: Partial<InjectOptions> = {}): InjectOptions {
  return { ...INJECT_DEFAULTS, ...over };
}

type Json = Record<string, unknown>;

/**
 * What Helm 4's `annotateAndMerge` makes of a render (reference §1.2): files sorted by name, hooks
 * included, every document annotated with its file, no `# Source:` comments, comment-only documents
 * dropped. The layout is `yaml`'s, not kyaml's: tests compare parsed content, and the real-helm test
 * feeds real Helm 4 output.
 */
export function toHelm4Shape(...helm3Streams: string[]): string {
  const files = new Map<string, string[]>();
  for (const src of helm3Streams) {
    for (const sd of parseManifestStream(src).docs) {
      const file = /^# Source: (.+)$/m.exec(sd.text)?.[1];
      if (!file || sd.commentOnly) continue;
      const obj = sd.doc.toJS() as Json;
      const meta = (obj['metadata'] ??= {}) as Json;
      meta['annotations'] = { ...(meta['annotations'] as Json | undefined), [HELM4_FILENAME_ANNOTATION]: file };
      const text = new Document(obj, { version: '1.1' }).toString({ lineWidth: 0 });
      files.set(file, [...(files.get(file) ?? []), text]);
    }
  }
  return [...files.keys()]
    .sort()
    .flatMap((f) => files.get(f) ?? [])
    .map((t, i) => (i === 0 ? t : `---\n${t}`))
    .join('');
}

export function docsOf(src: string): Json[] {
  return parseAllDocuments(src, { version: '1.1' })
    .map((d) => d.toJS() as Json | null)
    .filter((d): d is Json => d !== null && typeof d === 'object');
}

export function podSpecOf(workload: Json): Json {
  return ((workload['spec'] as Json)['template'] as Json)['spec'] as Json;
}

export function containersOf(podSpec: Json, which: 'containers' | 'initContainers'): Json[] {
  return (podSpec[which] as Json[] | undefined) ?? [];
}

export function findContainer(podSpec: Json, name: string): Json | undefined {
  return [...containersOf(podSpec, 'containers'), ...containersOf(podSpec, 'initContainers')].find((c) => c['name'] === name);
}

export function envValue(container: Json, name: string): Json | undefined {
  return ((container['env'] as Json[] | undefined) ?? []).find((e) => e['name'] === name);
}

export function injectedWorkload(src: string): Json {
  const found = docsOf(src).filter((d) => (d['kind'] === 'Deployment' || d['kind'] === 'StatefulSet') && findContainer(podSpecOf(d), SIDECAR_CONTAINER));
  if (found.length !== 1) throw new Error(`expected one injected workload, found ${found.length}`);
  return found[0] as Json;
}

const MODELS: Record<string, new (o: Json) => { validate(): void }> = {
  Deployment: Deployment as never,
  StatefulSet: StatefulSet as never,
  Service: Service as never,
  ServiceAccount: ServiceAccount as never,
  Secret: Secret as never,
  ConfigMap: ConfigMap as never,
  Job: Job as never,
  PodDisruptionBudget: PodDisruptionBudget as never,
  NetworkPolicy: NetworkPolicy as never,
};

const IANA_SVC_NAME = /^(?=.{1,15}$)(?=.*[a-z])[a-z0-9]+(-[a-z0-9]+)*$/;

/**
 * The invariants of reference §3.10 for one post-renderer run (input → output). Returns the
 * violations, empty when all hold; `checked` lists what was looked at, for the test log.
 */
export function checkInvariants(input: string, output: string, opts: InjectOptions): { violations: string[]; checked: string[] } {
  const v: string[] = [];
  const checked: string[] = [];
  const inS = parseManifestStream(input);
  const outS = parseManifestStream(output);

  // 9 / 7: LF only, YAML only, every output document parses.
  if (output.includes('\r')) v.push('output contains CR');
  for (const d of outS.docs) if (d.errors.length > 0) v.push(`output document ${d.index} does not parse: ${d.errors[0]}`);
  checked.push('output is LF-only YAML that parses (YAML 1.1)');

  // 3: exactly one injected workload, never a hook.
  const injected = outS.docs.filter((d) => {
    const o = d.doc.toJS() as Json | null;
    return o && (o['kind'] === 'Deployment' || o['kind'] === 'StatefulSet') && findContainer(podSpecOf(o), SIDECAR_CONTAINER);
  });
  if (injected.length !== 1) v.push(`expected exactly one injected workload, found ${injected.length}`);
  const target = injected[0];
  if (target?.isHook) v.push('the target is a hook');
  checked.push('exactly one target, not a hook');

  // 1 / 2: every other input document byte-identical, same relative order; hooks untouched.
  if (outS.docs.length < inS.docs.length) v.push('output has fewer documents than input');
  for (const d of inS.docs) {
    const o = outS.docs[d.index];
    if (!o) continue;
    if (target && d.index === target.index) continue;
    if (o.text !== d.text) v.push(`document ${d.index} (${d.kind ?? 'comment-only'}/${d.name ?? ''}) changed`);
  }
  if (target && inS.docs[target.index]?.isHook) v.push('a hook document was modified');
  checked.push(`${inS.docs.length - (target ? 1 : 0)} untouched documents byte-identical and in order (${inS.docs.filter((d) => d.isHook).length} hooks)`);

  // 7: untouched docs parse to the same values; no aliases; no null documents; env values are strings.
  for (const d of outS.docs) {
    if (d.commentOnly && !inS.docs[d.index]?.commentOnly) v.push(`output document ${d.index} is empty/null`);
    visit(d.doc, {
      Alias() {
        v.push(`document ${d.index} uses an alias`);
      },
    });
  }
  if (target) {
    const w = target.doc.toJS() as Json;
    const pod = podSpecOf(w);
    const all = [...containersOf(pod, 'containers'), ...containersOf(pod, 'initContainers')];
    for (const c of all) {
      for (const e of (c['env'] as Json[] | undefined) ?? []) {
        if ('value' in e && typeof e['value'] !== 'string') v.push(`env ${String(c['name'])}.${String(e['name'])} is not a string (${JSON.stringify(e['value'])})`);
      }
    }
    checked.push('no aliases, no null documents, every env value a string');

    // 5 / 6: no port clash, names valid and unique, grace only raised.
    const ports = all.flatMap((c) => ((c['ports'] as Json[] | undefined) ?? []).map((p) => ({ c: String(c['name']), name: p['name'] as string | undefined, port: p['containerPort'] as number })));
    const byPort = new Map<number, string>();
    const byName = new Map<string, string>();
    for (const p of ports) {
      if (byPort.has(p.port)) v.push(`port ${p.port} declared by ${byPort.get(p.port)} and ${p.c}`);
      byPort.set(p.port, p.c);
      if (p.name !== undefined) {
        if (!IANA_SVC_NAME.test(p.name)) v.push(`port name ${p.name} is not an IANA_SVC_NAME`);
        if (byName.has(p.name)) v.push(`port name ${p.name} used twice`);
        byName.set(p.name, p.c);
      }
    }
    const inW = inS.docs[target.index]?.doc.toJS() as Json | undefined;
    const graceIn = inW ? (podSpecOf(inW)['terminationGracePeriodSeconds'] as number | undefined) ?? 30 : 30;
    const graceOut = pod['terminationGracePeriodSeconds'] as number;
    if (graceOut < graceIn || graceOut < opts.terminationGraceSeconds) v.push(`grace ${graceIn} → ${graceOut}`);
    checked.push(`ports unique across ${all.length} containers (${ports.map((p) => `${p.name ?? '?'}:${p.port}`).join(' ')}), grace ${graceIn}s → ${graceOut}s`);

    // 10: immutable fields unchanged.
    if (inW) {
      for (const key of ['selector', 'serviceName', 'volumeClaimTemplates', 'podManagementPolicy']) {
        const a = JSON.stringify((inW['spec'] as Json)[key]);
        const b = JSON.stringify((w['spec'] as Json)[key]);
        if (a !== b) v.push(`immutable spec.${key} changed`);
      }
      checked.push('spec.selector, serviceName, volumeClaimTemplates, podManagementPolicy unchanged');
    }
  }

  // 8: Helm 4 shape keeps the filename annotation, added documents carry their own.
  if (inS.shape === 'helm4') {
    for (const d of outS.docs) {
      if (d.commentOnly) continue;
      if (d.annotations[HELM4_FILENAME_ANNOTATION] === undefined) v.push(`Helm 4 output document ${d.index} (${d.kind}/${d.name}) lacks ${HELM4_FILENAME_ANNOTATION}`);
    }
    checked.push(`every Helm 4 document carries ${HELM4_FILENAME_ANNOTATION}`);
  } else if (inS.shape === 'helm3') {
    for (const d of outS.docs.slice(inS.docs.length)) if (!d.text.includes('# Source: openshell-ha/injected.yaml')) v.push(`added document ${d.index} lacks its # Source comment`);
    checked.push('added documents carry # Source: openshell-ha/injected.yaml');
  }

  // Kubernetes schemas (types, required fields, enums) of every object of a known kind.
  let validated = 0;
  for (const d of outS.docs) {
    const o = d.doc.toJS() as Json | null;
    const Model = o ? MODELS[String(o['kind'])] : undefined;
    if (!o || !Model) continue;
    try {
      new Model(o).validate();
      validated++;
    } catch (err) {
      v.push(`${String(o['kind'])}/${String((o['metadata'] as Json)['name'])} fails the Kubernetes schema: ${(err as Error).message.slice(0, 300)}`);
    }
  }
  checked.push(`${validated} objects pass kubernetes-models validation`);

  // 4: idempotence.
  const again = injectManifests(output, opts).output;
  if (again !== output) v.push('injecting twice changes the output');
  checked.push('inject(inject(x)) == inject(x)');
  return { violations: v, checked };
}
