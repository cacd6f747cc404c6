// The post-renderer: finds the OpenShell gateway workload in a rendered manifest stream and injects
// the sidecar (deployment reference §3). Pure: a string and options in, a string and notes out; it
// throws an OhsError for input it does not understand. Only the target document is re-serialised;
// every other document keeps its bytes.
import { Document, isMap, isScalar, isSeq, type Node, type YAMLMap, type YAMLSeq } from 'yaml';
import { OhsError } from '../errors.ts';
import type { InjectOptions } from './inject-options.ts';
import { joinDocuments, parseManifestStream, type StreamDoc, type StreamShape } from './manifest-stream.ts';
import {
  ADDED_SOURCE_FILE,
  ADMIN_PORT_NAME,
  addedObjects,
  CLIENT_TLS_VOLUME,
  drainPreStop,
  PEER_TLS_VOLUME,
  GATEWAY_PORT_NAME,
  INJECTED_LABEL,
  INJECTED_LABEL_VALUE,
  PEER_PORT_NAME,
  PEER_SECRET_VOLUME,
  SIDECAR_CONTAINER,
  sidecarContainer,
  sidecarVolumes,
  type AddedObject,
  type EnvSource,
  type SidecarPlan,
  type TlsWiring,
} from './sidecar-spec.ts';

export interface InjectResult {
  readonly output: string;
  /** Human-readable remarks for stderr (what was chosen, what to check). */
  readonly notes: readonly string[];
  readonly shape: StreamShape;
  /** `Kind/name` of the gateway workload, when there was one. */
  readonly target?: string;
  readonly alreadyInjected: boolean;
}

const WORKLOAD_KINDS = new Set(['Deployment', 'StatefulSet']);
const POD_SPEC = ['spec', 'template', 'spec'] as const;
/** Kubernetes IANA_SVC_NAME: ≤ 15 characters, lowercase alphanumerics and single hyphens, a letter somewhere. */
const PORT_NAME = /^(?=.*[a-z])[a-z0-9]([a-z0-9]|-(?!-))*[a-z0-9]$|^[a-z]$/;

function refuse(message: string, details?: Record<string, unknown>): OhsError {
  return new OhsError('OHS_ERR_BAD_REQUEST', message, details === undefined ? {} : { details });
}

// ---------------------------------------------------------------------------------------------
// Reading the rendered workload (plain JS views of YAML nodes)

type Json = Record<string, unknown>;

function asRecord(v: unknown): Json | undefined {
  return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Json) : undefined;
}

function asArray(v: unknown): unknown[] {
  return Array.isArray(v) ? v : [];
}

function str(v: unknown): string | undefined {
  return typeof v === 'string' ? v : undefined;
}

function stringMap(v: unknown): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, val] of Object.entries(asRecord(v) ?? {})) if (typeof val === 'string') out[k] = val;
  return out;
}

interface Workload {
  readonly sd: StreamDoc;
  readonly kind: string;
  readonly name: string;
  readonly js: Json;
  readonly podSpec: Json;
}

function podContainers(podSpec: Json): Json[] {
  return [...asArray(podSpec['containers']), ...asArray(podSpec['initContainers'])].map((c) => asRecord(c) ?? {});
}

function portNames(container: Json): Set<string> {
  return new Set(asArray(container['ports']).map((p) => str(asRecord(p)?.['name'])).filter((n): n is string => n !== undefined));
}

function isInjected(w: Workload): boolean {
  return podContainers(w.podSpec).some((c) => c['name'] === SIDECAR_CONTAINER);
}

function workloads(docs: readonly StreamDoc[]): Workload[] {
  const out: Workload[] = [];
  for (const sd of docs) {
    if (sd.errors.length > 0 || sd.commentOnly || sd.kind === undefined || !WORKLOAD_KINDS.has(sd.kind) || sd.isHook) continue;
    const js = asRecord(sd.doc.toJS({ maxAliasCount: -1 }));
    const podSpec = asRecord(asRecord(asRecord(js?.['spec'])?.['template'])?.['spec']);
    if (!js || !podSpec || sd.name === undefined) continue;
    out.push({ sd, kind: sd.kind, name: sd.name, js, podSpec });
  }
  return out;
}

function matchesWorkloadFilter(w: Workload, o: InjectOptions): boolean {
  if (!o.workload) return true;
  return w.name === o.workload.name && (o.workload.kind === undefined || o.workload.kind === w.kind);
}

interface Target {
  readonly workload: Workload;
  readonly containerIndex: number;
  readonly container: Json;
}

/**
 * Exactly one gateway: a Deployment or StatefulSet that is not a hook, with a container that has
 * both port names `grpc` and `health` (reference §0 item 3). Never by labels alone: HEAD's certgen
 * hook Job carries the gateway's selector labels.
 */
function findTarget(all: readonly Workload[], o: InjectOptions, unparsable: readonly StreamDoc[]): Target {
  const filtered = all.filter((w) => matchesWorkloadFilter(w, o));
  const found: Target[] = [];
  for (const w of filtered) {
    asArray(w.podSpec['containers']).forEach((c, i) => {
      const container = asRecord(c) ?? {};
      const byName = o.container !== undefined && container['name'] === o.container;
      const names = portNames(container);
      const byPorts = o.container === undefined && names.has('grpc') && names.has('health');
      if (byName || byPorts) found.push({ workload: w, containerIndex: i, container });
    });
  }
  if (found.length === 1) return found[0] as Target;
  const describe = (w: Workload): string =>
    `${w.kind}/${w.name} (containers: ${asArray(w.podSpec['containers'])
      .map((c) => `${String(asRecord(c)?.['name'])}[${[...portNames(asRecord(c) ?? {})].join(',')}]`)
      .join(' ')})`;
  const how = o.container !== undefined ? `a container named ${o.container}` : 'container ports named grpc and health';
  const scope = o.workload ? ` matching --workload ${o.workload.kind ? `${o.workload.kind}/` : ''}${o.workload.name}` : '';
  if (found.length === 0) {
    const seen = filtered.length > 0 ? ` Workloads seen: ${filtered.map(describe).join('; ')}.` : ' No Deployment or StatefulSet (hooks excluded) was found.';
    const broken = unparsable.length > 0 ? ` ${unparsable.length} document(s) did not parse and were not considered.` : '';
    throw refuse(
      `no Deployment/StatefulSet${scope} with ${how}: cannot tell which workload is the OpenShell gateway.${seen}${broken} ` +
        'Use --workload [Kind/]NAME and --container NAME to name it.',
      { reason: 'no-target' },
    );
  }
  throw refuse(
    `${found.length} candidate gateway containers${scope} with ${how}: ${found.map((t) => `${t.workload.kind}/${t.workload.name} container ${String(t.container['name'])}`).join(', ')}. ` +
      'Use --workload [Kind/]NAME and --container NAME to pick one.',
    { reason: 'ambiguous-target' },
  );
}

// ---------------------------------------------------------------------------------------------
// Facts about the gateway container

interface ArgValue {
  /** Index in `args` of the value (the element after the flag, or the `--flag=value` element itself). */
  readonly index: number;
  readonly value: string;
  readonly inline: boolean;
}

function findArg(args: readonly string[], flag: string): ArgValue | undefined {
  for (let i = 0; i < args.length; i++) {
    const a = args[i] as string;
    if (a === flag && i + 1 < args.length) return { index: i + 1, value: args[i + 1] as string, inline: false };
    if (a.startsWith(`${flag}=`)) return { index: i, value: a.slice(flag.length + 1), inline: true };
  }
  return undefined;
}

function envEntry(container: Json, name: string): Json | undefined {
  return asArray(container['env'])
    .map(asRecord)
    .find((e) => e?.['name'] === name);
}

function mountCovering(container: Json, path: string): { name: string; mountPath: string } | undefined {
  let best: { name: string; mountPath: string } | undefined;
  for (const m of asArray(container['volumeMounts']).map(asRecord)) {
    const mountPath = str(m?.['mountPath']);
    const name = str(m?.['name']);
    if (!mountPath || !name) continue;
    const dir = mountPath.endsWith('/') ? mountPath : `${mountPath}/`;
    if ((path === mountPath || path.startsWith(dir)) && (!best || mountPath.length > best.mountPath.length)) best = { name, mountPath };
  }
  return best;
}

/** The gateway's TOML (HEAD): the ConfigMap behind the volume that holds the `--config` file. */
function gatewayToml(docs: readonly StreamDoc[], w: Workload, container: Json, args: readonly string[]): string | undefined {
  const configPath = findArg(args, '--config')?.value;
  if (!configPath) return undefined;
  const mount = mountCovering(container, configPath);
  if (!mount) return undefined;
  const volume = asArray(w.podSpec['volumes'])
    .map(asRecord)
    .find((v) => v?.['name'] === mount.name);
  const cmName = str(asRecord(volume?.['configMap'])?.['name']);
  if (!cmName) return undefined;
  const key = configPath.slice(mount.mountPath.replace(/\/$/, '').length + 1);
  for (const sd of docs) {
    if (sd.kind !== 'ConfigMap' || sd.name !== cmName || sd.errors.length > 0) continue;
    const data = asRecord(asRecord(sd.doc.toJS())?.['data']);
    const text = str(data?.[key]);
    if (text !== undefined) return text;
  }
  return undefined;
}

function tomlString(toml: string | undefined, key: string): string | undefined {
  if (toml === undefined) return undefined;
  const m = new RegExp(`^\\s*${key}\\s*=\\s*"([^"]*)"`, 'm').exec(toml);
  return m?.[1];
}

function tomlBool(toml: string | undefined, key: string): boolean | undefined {
  if (toml === undefined) return undefined;
  const m = new RegExp(`^\\s*${key}\\s*=\\s*(true|false)`, 'm').exec(toml);
  return m ? m[1] === 'true' : undefined;
}

function literalEnv(container: Json, name: string): string | undefined {
  return str(envEntry(container, name)?.['value']);
}

/** Where the gateway's TLS files are and which pod volumes hold them (seed: env; HEAD: TOML). */
function detectTls(container: Json, toml: string | undefined, o: InjectOptions, notes: string[]): TlsWiring | undefined {
  if (o.tls === 'off') return undefined;
  const certFile = literalEnv(container, 'OPENSHELL_TLS_CERT') ?? tomlString(toml, 'cert_path');
  const keyFile = literalEnv(container, 'OPENSHELL_TLS_KEY') ?? tomlString(toml, 'key_path');
  const caFile = literalEnv(container, 'OPENSHELL_TLS_CLIENT_CA') ?? tomlString(toml, 'client_ca_path');
  const disabled = tomlBool(toml, 'disable_tls') === true;
  const certMount = certFile ? mountCovering(container, certFile) : undefined;
  const keyMount = keyFile ? mountCovering(container, keyFile) : undefined;
  const found = !disabled && certFile !== undefined && keyFile !== undefined && certMount !== undefined && keyMount !== undefined;
  if (!found) {
    if (o.tls === 'on') {
      throw refuse('--tls on: the gateway container has no TLS certificate and key on a mounted volume (OPENSHELL_TLS_CERT/KEY or the TOML cert_path/key_path)', { reason: 'no-tls-material' });
    }
    notes.push('the gateway serves plaintext (no TLS certificate mounted): the sidecar does too');
    return undefined;
  }
  const mounts = new Map<string, { name: string; mountPath: string }>();
  for (const m of [certMount, keyMount]) mounts.set(m.name, m);
  const caMount = caFile ? mountCovering(container, caFile) : undefined;
  if (caMount) mounts.set(caMount.name, caMount);
  const clientTlsSecret =
    o.clientTlsSecret ?? literalEnv(container, 'OPENSHELL_CLIENT_TLS_SECRET_NAME') ?? tomlString(toml, 'client_tls_secret_name') ?? 'openshell-client-tls';
  return {
    mounts: [...mounts.values()],
    certFile,
    keyFile,
    ...(caMount && caFile ? { clientCaFile: caFile } : {}),
    clientTlsSecret,
  };
}

function isPostgresUrl(v: string | undefined): boolean {
  return v !== undefined && /^postgres(ql)?:\/\//.test(v);
}

/** The sidecar's Postgres: an explicit Secret, else the gateway's own (reference §3.1: reuse it). */
function databaseSource(container: Json, args: readonly string[], o: InjectOptions, replicas: number, notes: string[]): EnvSource {
  if (o.databaseSecret) return { valueFrom: { secretKeyRef: { name: o.databaseSecret.name, key: o.databaseSecret.key } } };
  const gwEnv = envEntry(container, 'OPENSHELL_DB_URL');
  const from = asRecord(gwEnv?.['valueFrom']);
  if (from) return { valueFrom: structuredClone(from) };
  const literal = str(gwEnv?.['value']) ?? findArg(args, '--db-url')?.value;
  if (literal !== undefined && isPostgresUrl(literal)) {
    notes.push('the gateway has its Postgres URL in plain text; the sidecar gets the same literal (prefer a Secret: --database-secret)');
    return { value: literal };
  }
  const what = literal !== undefined ? `the gateway's database is ${literal.split(':')[0]}` : 'no gateway database URL was found';
  notes.push(
    `${what}: the sidecar takes its Postgres URL from key database-url of Secret ${o.haSecret} if present, ` +
      `else runs in embedded single-replica mode${replicas > 1 ? ` — not highly available with ${replicas} replicas` : ''}`,
  );
  return { valueFrom: { secretKeyRef: { name: o.haSecret, key: 'database-url', optional: true } } };
}

function declaredPorts(podSpec: Json): Array<{ container: string; name: string | undefined; port: number }> {
  const out: Array<{ container: string; name: string | undefined; port: number }> = [];
  for (const c of podContainers(podSpec)) {
    for (const p of asArray(c['ports']).map(asRecord)) {
      const port = p?.['containerPort'];
      if (typeof port === 'number') out.push({ container: String(c['name']), name: str(p?.['name']), port });
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Editing YAML nodes (keeps comments and layout of what is not touched)

function mapAt(doc: Document, path: readonly (string | number)[], create: boolean): YAMLMap {
  const node = doc.getIn(path, true);
  if (isMap(node)) return node;
  if (node !== undefined && node !== null && !(isScalar(node) && node.value === null)) {
    throw refuse(`${path.join('.')} is not a mapping`);
  }
  if (!create) throw refuse(`${path.join('.')} is missing`);
  const fresh = doc.createNode({}) as YAMLMap;
  fresh.flow = false;
  doc.setIn(path, fresh);
  return fresh;
}

function seqAt(doc: Document, path: readonly (string | number)[]): YAMLSeq {
  const node = doc.getIn(path, true);
  if (isSeq(node)) {
    // An empty flow list (`env: []`) would keep flow style for what we add.
    if (node.items.length === 0) node.flow = false;
    return node;
  }
  if (node !== undefined && node !== null && !(isScalar(node) && node.value === null)) throw refuse(`${path.join('.')} is not a list`);
  const fresh = doc.createNode([]) as YAMLSeq;
  fresh.flow = false;
  doc.setIn(path, fresh);
  return fresh;
}

function newNode(doc: Document, value: unknown): Node {
  return doc.createNode(value, { aliasDuplicateObjects: false }) as Node;
}

function setEnv(doc: Document, containerPath: readonly (string | number)[], name: string, value: string): void {
  const env = seqAt(doc, [...containerPath, 'env']);
  const existing = env.items.find((item) => isMap(item) && item.get('name') === name);
  const node = newNode(doc, { name, value });
  if (existing) env.items[env.items.indexOf(existing)] = node;
  else env.items.push(node);
}

// ---------------------------------------------------------------------------------------------
// The injection

function stringifyAdded(objects: readonly AddedObject[], shape: StreamShape): string[] {
  return objects.map((a) => {
    const doc = new Document(a.object, { version: '1.1', aliasDuplicateObjects: false });
    const body = doc.toString({ lineWidth: 0 });
    // Helm 3 keeps `# Source:` comments (helm template --show-only injected.yaml); Helm 4 groups by
    // the filename annotation instead, set on the object itself (reference §1.4 item 3).
    return shape === 'helm4' ? `---\n${body}` : `---\n# Source: ${ADDED_SOURCE_FILE}\n${body}`;
  });
}

function addedFor(w: Workload, podSpecAfter: Json, o: InjectOptions, shape: StreamShape): AddedObject[] {
  const selector = stringMap(asRecord(asRecord(asRecord(w.js['spec'])?.['selector']))?.['matchLabels']);
  if (Object.keys(selector).length === 0) {
    throw refuse(`${w.kind}/${w.name} has no spec.selector.matchLabels: the added Service, PDB and NetworkPolicy need plain label selectors`);
  }
  const workloadLabels = stringMap(asRecord(w.js['metadata'])?.['labels']);
  const hidden = new Set([o.gatewayPort, o.peerPort, o.adminPort]);
  const openPorts = [...new Set(declaredPorts(podSpecAfter).map((p) => p.port))].filter((p) => !hidden.has(p));
  // Service names are DNS-1035 labels (≤ 63, starting with a letter).
  if (!/^[a-z]([-a-z0-9]{0,52}[a-z0-9])?$/.test(w.name)) {
    throw refuse(`workload name '${w.name}' is too long or not a DNS label: '${w.name}-ha-peers' cannot name a Service`);
  }
  return addedObjects({
    workloadName: w.name,
    namespace: str(asRecord(w.js['metadata'])?.['namespace']),
    workloadLabels,
    selector,
    openPorts,
    options: o,
    helm4: shape === 'helm4',
  });
}

function checkPorts(podSpecBefore: Json, gatewayName: string, publicPort: number, o: InjectOptions): void {
  const mine: Array<{ name: string; port: number }> = [
    { name: GATEWAY_PORT_NAME, port: o.gatewayPort },
    { name: PEER_PORT_NAME, port: o.peerPort },
    { name: ADMIN_PORT_NAME, port: o.adminPort },
  ];
  if (o.mode !== 'native-alias') mine.push({ name: 'grpc', port: publicPort });
  // The gateway's own `grpc` entry is the one that moves; every other declared port must stay clear.
  const others = declaredPorts(podSpecBefore).filter((p) => !(p.container === gatewayName && p.name === 'grpc'));
  for (const m of mine) {
    if (!PORT_NAME.test(m.name) || m.name.length > 15) throw refuse(`port name ${m.name} is not a valid IANA_SVC_NAME`);
    const byPort = others.find((p) => p.port === m.port);
    if (byPort) {
      throw refuse(`port ${m.port} (${m.name}) is already declared by container ${byPort.container}${byPort.name ? ` as ${byPort.name}` : ''}; choose another with --gateway-port/--peer-port/--admin-port`, {
        reason: 'port-clash',
      });
    }
    const byName = others.find((p) => p.name === m.name);
    if (byName) throw refuse(`port name ${m.name} is already used by container ${byName.container}`, { reason: 'port-clash' });
  }
  if (o.gatewayPort === publicPort) throw refuse(`--gateway-port ${o.gatewayPort} is the public port itself`);
}

export function injectManifests(raw: string, o: InjectOptions): InjectResult {
  const stream = parseManifestStream(raw);
  const notes: string[] = [];
  if (stream.docs.length === 0) {
    // Helm 3 `--output-dir` runs the post-renderer on empty input (reference §1.1): nothing to do.
    return { output: stream.source, notes, shape: stream.shape, alreadyInjected: false };
  }
  const unparsable = stream.docs.filter((d) => d.errors.length > 0);
  for (const d of unparsable) notes.push(`warning: document ${d.index + 1} does not parse (${d.errors[0] ?? ''}); passed through untouched`);

  const all = workloads(stream.docs);
  const injected = all.filter((w) => isInjected(w) && matchesWorkloadFilter(w, o));
  if (injected.length > 1) throw refuse(`${injected.length} workloads already carry ${SIDECAR_CONTAINER}; use --workload to pick one`);
  const done = injected[0];
  if (done) {
    // Idempotence (reference §3.10 invariant 4): leave everything as it is, add only what is missing.
    const missing = addedFor(done, done.podSpec, o, stream.shape).filter((a) => !stream.docs.some((d) => d.kind === a.kind && d.name === a.name));
    const output = missing.length === 0 ? stream.source : joinDocuments([...stream.docs.map((d) => d.text), ...stringifyAdded(missing, stream.shape)]);
    notes.push(`${done.kind}/${done.name} already has ${SIDECAR_CONTAINER}: left unchanged${missing.length ? `; added ${missing.map((m) => `${m.kind}/${m.name}`).join(', ')}` : ''}`);
    return { output, notes, shape: stream.shape, target: `${done.kind}/${done.name}`, alreadyInjected: true };
  }

  const nonHooks = stream.docs.filter((d) => !d.commentOnly && !d.isHook);
  if (nonHooks.length === 0) {
    // Helm 4's `separate` strategy (SDK, v4.2+) post-renders the hooks in an invocation of their own.
    notes.push('only hook documents: nothing to inject, passed through untouched');
    return { output: stream.source, notes, shape: stream.shape, alreadyInjected: false };
  }
  const target = findTarget(all, o, unparsable);
  const w = target.workload;
  const podSpec = w.podSpec;
  const gw = target.container;
  const gwName = String(gw['name']);
  if (podSpec['hostNetwork'] === true) {
    throw refuse(`${w.kind}/${w.name} uses hostNetwork: a loopback-only gateway would be shared by the whole node`, { reason: 'host-network' });
  }
  const args = asArray(gw['args']).map((a) => (typeof a === 'string' ? a : String(a)));
  if (args.length === 0) {
    throw refuse(
      `container ${gwName} of ${w.kind}/${w.name} has no args: the image's default command line (--bind-address 0.0.0.0 --port 8080 ` +
        'for current images) would decide where the gateway listens and beat any environment override',
      { reason: 'no-args' },
    );
  }
  if (asRecord(gw['lifecycle'])?.['preStop'] !== undefined) {
    throw refuse(`container ${gwName} already has a preStop hook; the sidecar's drain needs it (${SIDECAR_CONTAINER} calls cannot be chained)`, { reason: 'prestop-taken' });
  }
  const grpcPort = asArray(gw['ports'])
    .map(asRecord)
    .find((p) => p?.['name'] === 'grpc');
  const publicPort = typeof grpcPort?.['containerPort'] === 'number' ? grpcPort['containerPort'] : 8080;
  checkPorts(podSpec, gwName, publicPort, o);
  const volumeNames = new Set(asArray(podSpec['volumes']).map((v) => str(asRecord(v)?.['name'])));
  for (const v of [PEER_SECRET_VOLUME, CLIENT_TLS_VOLUME, PEER_TLS_VOLUME]) if (volumeNames.has(v)) throw refuse(`the pod already has a volume named ${v}`);
  if (o.peerTls.source === 'secret' && w.kind !== 'StatefulSet') {
    throw refuse(
      `--peer-tls secret needs pod names known in advance (a StatefulSet), but the gateway is a ${w.kind} whose pods get random names: ` +
        'use --peer-tls cert-manager (a certificate per pod from the cert-manager CSI driver)',
      { reason: 'peer-tls-secret-needs-statefulset' },
    );
  }

  // Seed's gateway takes `--port` (and always binds 0.0.0.0); HEAD's reads TOML, which the env
  // overrides (reference §3.1). A CLI flag beats both, so flags present are rewritten in place.
  const portArg = findArg(args, '--port');
  const bindArg = findArg(args, '--bind-address');
  const style: 'args' | 'env' = portArg !== undefined && findArg(args, '--config') === undefined ? 'args' : 'env';
  const toml = gatewayToml(stream.docs, w, gw, args);
  const tls = detectTls(gw, toml, o, notes);
  const replicas = typeof asRecord(w.js['spec'])?.['replicas'] === 'number' ? (asRecord(w.js['spec'])?.['replicas'] as number) : 1;
  const database = databaseSource(gw, args, o, replicas, notes);
  const existingGrace = podSpec['terminationGracePeriodSeconds'];
  const graceSeconds = Math.max(typeof existingGrace === 'number' ? existingGrace : 30, o.terminationGraceSeconds);
  const plan: SidecarPlan = { options: o, publicPort, tls, database, graceSeconds };

  // --- edit the document
  const doc = w.sd.doc;
  const podPath = [...POD_SPEC];
  const gwPath = [...podPath, 'containers', target.containerIndex];
  const labels = mapAt(doc, ['spec', 'template', 'metadata', 'labels'], true);
  labels.set(INJECTED_LABEL, INJECTED_LABEL_VALUE);
  mapAt(doc, podPath, false).set('terminationGracePeriodSeconds', graceSeconds);

  const ports = seqAt(doc, [...gwPath, 'ports']);
  const grpcNode = ports.items.find((p) => isMap(p) && p.get('name') === 'grpc') as YAMLMap | undefined;
  if (o.mode === 'native-alias' || !grpcNode) {
    ports.items.push(newNode(doc, { name: GATEWAY_PORT_NAME, containerPort: o.gatewayPort, protocol: 'TCP' }));
  } else {
    grpcNode.set('name', GATEWAY_PORT_NAME);
    grpcNode.set('containerPort', o.gatewayPort);
  }
  const argsSeq = seqAt(doc, [...gwPath, 'args']);
  const setArg = (a: ArgValue, flag: string, value: string): void => {
    const item = argsSeq.items[a.index];
    const text = a.inline ? `${flag}=${value}` : value;
    if (isScalar(item)) item.value = text;
    else argsSeq.items[a.index] = newNode(doc, text);
  };
  if (portArg) setArg(portArg, '--port', String(o.gatewayPort));
  if (bindArg) setArg(bindArg, '--bind-address', '127.0.0.1');
  if (style === 'env') {
    // Both are needed: with the address alone the TOML port 8080 stays and clashes with the sidecar.
    setEnv(doc, gwPath, 'OPENSHELL_BIND_ADDRESS', '127.0.0.1');
    setEnv(doc, gwPath, 'OPENSHELL_SERVER_PORT', String(o.gatewayPort));
  } else {
    notes.push(`seed-style gateway (--port in args): it keeps binding 0.0.0.0, now on port ${o.gatewayPort}; the NetworkPolicy closes that port to other pods`);
  }
  mapAt(doc, gwPath, false).set('lifecycle', newNode(doc, drainPreStop(o.adminPort)));

  const sidecar = newNode(doc, sidecarContainer(plan));
  seqAt(doc, [...podPath, o.mode === 'container' ? 'containers' : 'initContainers']).items.push(sidecar);
  const volumes = seqAt(doc, [...podPath, 'volumes']);
  for (const v of sidecarVolumes(plan)) volumes.items.push(newNode(doc, v));

  const after = asRecord(asRecord(asRecord(asRecord(doc.toJS())?.['spec'])?.['template'])?.['spec']) ?? {};
  const added = addedFor(w, after, o, stream.shape).filter((a) => {
    const clash = stream.docs.find((d) => d.kind === a.kind && d.name === a.name);
    if (clash) throw refuse(`the input already has a ${a.kind} named ${a.name} (not made by this injector)`, { reason: 'name-clash' });
    return true;
  });

  const rewritten = doc.toString({ lineWidth: 0 });
  const texts = stream.docs.map((d) => (d === w.sd ? rewritten : d.text));
  notes.push(
    `injected ${SIDECAR_CONTAINER} (${o.mode}) into ${w.kind}/${w.name}: gateway container ${gwName} moved to ` +
      `${style === 'args' ? `port ${o.gatewayPort} (--port)` : `127.0.0.1:${o.gatewayPort} (OPENSHELL_BIND_ADDRESS/OPENSHELL_SERVER_PORT)`}, sidecar on ${publicPort}, grace ${graceSeconds}s, ` +
      `TLS ${tls ? 'on' : 'off'}, peer mTLS ${o.peerTls.source}; added ${added.map((a) => `${a.kind}/${a.name}`).join(', ')}`,
  );
  return {
    output: joinDocuments([...texts, ...stringifyAdded(added, stream.shape)]),
    notes,
    shape: stream.shape,
    target: `${w.kind}/${w.name}`,
    alreadyInjected: false,
  };
}
