// What the injection adds, as plain objects: the sidecar container, its volumes, and the peer
// Service, PodDisruptionBudget and NetworkPolicy (deployment reference §3.2–§3.7). Pure.
import type { InjectOptions, PeerTlsOptions, SecretRef } from './inject-options.ts';

export const SIDECAR_CONTAINER = 'ohs-sidecar';
/** Pod-template label that marks injected pods; every added selector includes it (reference §1.4 item 9). */
export const INJECTED_LABEL = 'openshell-ha.io/sidecar';
export const INJECTED_LABEL_VALUE = 'injected';
export const COMPONENT_LABEL_VALUE = 'openshell-ha';
/** Label on the peer Service so the own chart's ServiceMonitor can find it without knowing the upstream release. */
export const PEERS_SERVICE_LABEL = 'openshell-ha.io/peers';
export const ADDED_SOURCE_FILE = 'openshell-ha/injected.yaml';

export const PEER_SECRET_VOLUME = 'ohs-peer-secret';
export const PEER_SECRET_DIR = '/etc/ohs/peer';
export const PEER_SECRET_KEY = 'peer-secret';
export const CLIENT_TLS_VOLUME = 'ohs-client-tls';
export const CLIENT_TLS_DIR = '/etc/ohs/client-tls';
export const PEER_TLS_VOLUME = 'ohs-peer-tls';
export const PEER_TLS_DIR = '/etc/ohs/peer-tls';
export const CERT_MANAGER_CSI_DRIVER = 'csi.cert-manager.io';
export const GATEWAY_PORT_NAME = 'gw-grpc';
export const PEER_PORT_NAME = 'ohs-peer';
export const ADMIN_PORT_NAME = 'ohs-admin';
/** The drain contract the gateway's preStop calls (reference §3.5); GET because kubelet hooks only GET. */
export const DRAIN_PATH = '/drain/wait';
/** How long the sidecar itself may take to exit once SIGTERM reaches it (after the gateway is gone). */
export const SIDECAR_SHUTDOWN_GRACE_MS = 10_000;

/** A value for the sidecar's database URL: copied from the gateway's own env, a Secret, or a literal. */
export type EnvSource = { value: string } | { valueFrom: Record<string, unknown> };

export interface TlsWiring {
  /** Volumes of the gateway pod mounted into the sidecar at the same paths (server cert, client CA). */
  readonly mounts: ReadonlyArray<{ readonly name: string; readonly mountPath: string }>;
  readonly certFile: string;
  readonly keyFile: string;
  readonly clientCaFile?: string;
  readonly clientTlsSecret: string;
}

export interface SidecarPlan {
  readonly options: InjectOptions;
  /** The port clients and supervisors use: the gateway's own `grpc` port, now the sidecar's. */
  readonly publicPort: number;
  readonly tls: TlsWiring | undefined;
  readonly database: EnvSource;
  readonly graceSeconds: number;
}

const fieldRef = (fieldPath: string): Record<string, unknown> => ({ valueFrom: { fieldRef: { fieldPath } } });
const secretRef = (ref: SecretRef, optional = false): Record<string, unknown> => ({
  valueFrom: { secretKeyRef: { name: ref.name, key: ref.key, ...(optional ? { optional: true } : {}) } },
});

/** The env list, in order: `$(VAR)` references only see variables defined earlier (kubelet semantics). */
export function sidecarEnv(plan: SidecarPlan): Array<Record<string, unknown>> {
  const o = plan.options;
  const scheme = plan.tls ? 'https' : 'http';
  const env: Array<Record<string, unknown>> = [
    { name: 'POD_NAME', ...fieldRef('metadata.name') },
    { name: 'POD_NAMESPACE', ...fieldRef('metadata.namespace') },
    { name: 'POD_IP', ...fieldRef('status.podIP') },
    { name: 'OHS_REPLICA_ID', value: '$(POD_NAME)' },
    { name: 'OHS_LISTEN', value: `0.0.0.0:${plan.publicPort}` },
    { name: 'OHS_PEER_LISTEN', value: `0.0.0.0:${o.peerPort}` },
    // Peers dial the pod IP: at seed the StatefulSet's serviceName is the non-headless Service, so
    // per-pod DNS names do not exist (reference §3.7). IPv4 only as written (IPv6 needs brackets).
    // The sidecar builds its peer URL from the pod IP itself, so an IPv6 address gets its brackets.
    { name: 'OHS_PEER_HOST', value: '$(POD_IP)' },
    // The kubelet sends the gateway's preStop and the probes to the pod IP: wildcard, not loopback.
    { name: 'OHS_ADMIN_LISTEN', value: `0.0.0.0:${o.adminPort}` },
    { name: 'OHS_GATEWAY_URL', value: `${scheme}://127.0.0.1:${o.gatewayPort}` },
  ];
  if (plan.tls) {
    const t = plan.tls;
    env.push(
      { name: 'OHS_GATEWAY_CA_FILE', value: `${CLIENT_TLS_DIR}/ca.crt` },
      { name: 'OHS_GATEWAY_CERT_FILE', value: `${CLIENT_TLS_DIR}/tls.crt` },
      { name: 'OHS_GATEWAY_KEY_FILE', value: `${CLIENT_TLS_DIR}/tls.key` },
      // The gateway's certificate names localhost and 127.0.0.1, not the pod IP (reference §3.2).
      { name: 'OHS_GATEWAY_SERVER_NAME', value: 'localhost' },
      { name: 'OHS_TLS_CERT_FILE', value: t.certFile },
      { name: 'OHS_TLS_KEY_FILE', value: t.keyFile },
    );
    if (t.clientCaFile !== undefined) env.push({ name: 'OHS_TLS_CLIENT_CA_FILE', value: t.clientCaFile });
  }
  if (o.peerTls.source !== 'off') env.push(...peerTlsEnv(o.peerTls));
  env.push(
    { name: 'OHS_DATABASE_URL', ...plan.database },
    { name: 'OHS_REDIS_URL', ...secretRef({ name: o.haSecret, key: 'redis-url' }, true) },
    { name: 'OHS_PEER_SECRET_FILE', value: `${PEER_SECRET_DIR}/${PEER_SECRET_KEY}` },
    { name: 'OHS_SHUTDOWN_GRACE_MS', value: String(SIDECAR_SHUTDOWN_GRACE_MS) },
    // The drain budget of the preStop contract (reference §3.5): `/drain/wait` should answer by
    // grace − gateway stop − margin, counted from its first call.
    { name: 'OHS_TERMINATION_GRACE_SECONDS', value: String(plan.graceSeconds) },
  );
  return env;
}

/**
 * Peer mTLS: the files of the peer TLS volume, and the SPIFFE id template with the namespace filled
 * in by the kubelet (`$(POD_NAMESPACE)`, defined earlier in the list). The sidecar then builds an
 * https:// peer URL from OHS_PEER_HOST itself.
 */
function peerTlsEnv(p: PeerTlsOptions): Array<Record<string, unknown>> {
  // A Secret holds every replica's pair, named after the pods (kubelet expands $(POD_NAME)).
  const base = p.source === 'secret' ? `${PEER_TLS_DIR}/$(POD_NAME)` : `${PEER_TLS_DIR}/tls`;
  return [
    { name: 'OHS_PEER_TLS_CERT_FILE', value: `${base}.crt` },
    { name: 'OHS_PEER_TLS_KEY_FILE', value: `${base}.key` },
    { name: 'OHS_PEER_TLS_CA_FILE', value: `${PEER_TLS_DIR}/ca.crt` },
    { name: 'OHS_PEER_IDENTITY', value: 'spiffe' },
    { name: 'OHS_PEER_SPIFFE_ID', value: p.spiffeIdTemplate.replaceAll('{namespace}', '$(POD_NAMESPACE)') },
  ];
}

/** The per-pod certificate: the cert-manager CSI driver's inline volume, or the Secret. */
function peerTlsVolume(p: PeerTlsOptions): Record<string, unknown> | undefined {
  if (p.source === 'secret' && p.secret !== undefined) return { name: PEER_TLS_VOLUME, secret: { secretName: p.secret, defaultMode: 0o440 } };
  if (p.source !== 'cert-manager' || p.issuer === undefined) return undefined;
  return {
    name: PEER_TLS_VOLUME,
    csi: {
      driver: CERT_MANAGER_CSI_DRIVER,
      readOnly: true,
      volumeAttributes: {
        'csi.cert-manager.io/issuer-name': p.issuer.name,
        'csi.cert-manager.io/issuer-kind': p.issuer.kind,
        'csi.cert-manager.io/issuer-group': 'cert-manager.io',
        // The driver fills ${POD_NAME} and ${POD_NAMESPACE} from the pod it mounts into; the pod IP
        // is not known to it (hence SPIFFE ids, not IP SANs).
        'csi.cert-manager.io/uri-sans': p.spiffeIdTemplate.replaceAll('{replica}', '${POD_NAME}').replaceAll('{namespace}', '${POD_NAMESPACE}'),
        'csi.cert-manager.io/common-name': '${POD_NAME}',
        // Both ends of a peer connection present it.
        'csi.cert-manager.io/key-usages': 'digital signature,key encipherment,server auth,client auth',
        // Readable by the sidecar's group only (the key is written 0640 by the driver).
        'csi.cert-manager.io/fs-group': '1000',
      },
    },
  };
}

export function drainPreStop(adminPort: number): Record<string, unknown> {
  // Numeric port: the kubelet resolves a named hook port only within the hook's own container.
  return { preStop: { httpGet: { path: DRAIN_PATH, port: adminPort } } };
}

export function sidecarContainer(plan: SidecarPlan): Record<string, unknown> {
  const o = plan.options;
  const ports: Array<Record<string, unknown>> = [];
  // In native-alias mode the gateway keeps the `grpc` entry (named targetPort lookup into init
  // containers needs Kubernetes 1.32); the sidecar process owns the port all the same.
  if (o.mode !== 'native-alias') ports.push({ name: 'grpc', containerPort: plan.publicPort, protocol: 'TCP' });
  ports.push({ name: PEER_PORT_NAME, containerPort: o.peerPort, protocol: 'TCP' });
  ports.push({ name: ADMIN_PORT_NAME, containerPort: o.adminPort, protocol: 'TCP' });
  const probe = (path: string, periodSeconds: number, timeoutSeconds: number, failureThreshold: number): Record<string, unknown> => ({
    httpGet: { path, port: o.adminPort },
    periodSeconds,
    timeoutSeconds,
    failureThreshold,
  });
  const mounts: Array<Record<string, unknown>> = [{ name: PEER_SECRET_VOLUME, mountPath: PEER_SECRET_DIR, readOnly: true }];
  if (plan.tls) {
    for (const m of plan.tls.mounts) mounts.push({ name: m.name, mountPath: m.mountPath, readOnly: true });
    mounts.push({ name: CLIENT_TLS_VOLUME, mountPath: CLIENT_TLS_DIR, readOnly: true });
  }
  if (o.peerTls.source !== 'off') mounts.push({ name: PEER_TLS_VOLUME, mountPath: PEER_TLS_DIR, readOnly: true });
  return {
    name: SIDECAR_CONTAINER,
    image: o.image,
    imagePullPolicy: o.imagePullPolicy,
    ...(o.mode === 'container' ? {} : { restartPolicy: 'Always' }),
    env: sidecarEnv(plan),
    ports,
    // Startup and liveness never depend on the gateway: a native sidecar's startup probe gates the
    // gateway's own start (reference §3.4).
    startupProbe: probe('/healthz', 1, 1, 30),
    livenessProbe: probe('/healthz', 10, 2, 3),
    readinessProbe: probe('/readyz', 2, 2, 2),
    // Native mode: no drain in the sidecar's own preStop, it would only run after the gateway has
    // exited (reference §3.5 caveat c). Regular containers stop in any order, so both wait.
    ...(o.mode === 'container' ? { lifecycle: drainPreStop(o.adminPort) } : {}),
    resources: { requests: { cpu: '50m', memory: '128Mi' }, limits: { memory: '512Mi' } },
    securityContext: {
      allowPrivilegeEscalation: false,
      capabilities: { drop: ['ALL'] },
      readOnlyRootFilesystem: true,
      runAsNonRoot: true,
      // The gateway's uid: key files of the shared TLS volumes are readable either way (reference §3.2).
      runAsUser: 1000,
      runAsGroup: 1000,
    },
    volumeMounts: mounts,
  };
}

export function sidecarVolumes(plan: SidecarPlan): Array<Record<string, unknown>> {
  const vols: Array<Record<string, unknown>> = [
    {
      name: PEER_SECRET_VOLUME,
      // 0440: readable by the sidecar's uid/fsGroup 1000 only.
      secret: { secretName: plan.options.haSecret, items: [{ key: PEER_SECRET_KEY, path: PEER_SECRET_KEY }], defaultMode: 0o440 },
    },
  ];
  if (plan.tls) vols.push({ name: CLIENT_TLS_VOLUME, secret: { secretName: plan.tls.clientTlsSecret, defaultMode: 0o440 } });
  const peer = peerTlsVolume(plan.options.peerTls);
  if (peer) vols.push(peer);
  return vols;
}

export interface AddedObjectsInput {
  readonly workloadName: string;
  readonly namespace: string | undefined;
  /** The workload's own labels (helm.sh/chart, name, instance, …), copied onto the added objects. */
  readonly workloadLabels: Readonly<Record<string, string>>;
  readonly selector: Readonly<Record<string, string>>;
  /** Every port declared in the pod except the gateway's loopback port and the sidecar's peer/admin ports. */
  readonly openPorts: readonly number[];
  readonly options: InjectOptions;
  readonly helm4: boolean;
}

export interface AddedObject {
  readonly kind: string;
  readonly name: string;
  readonly object: Record<string, unknown>;
}

export function addedObjectNames(workloadName: string): { service: string; pdb: string; networkPolicy: string } {
  return { service: `${workloadName}-ha-peers`, pdb: `${workloadName}-ha`, networkPolicy: `${workloadName}-ha` };
}

export function addedObjects(input: AddedObjectsInput): AddedObject[] {
  const o = input.options;
  const names = addedObjectNames(input.workloadName);
  const podSelector = { ...input.selector, [INJECTED_LABEL]: INJECTED_LABEL_VALUE };
  const metadata = (name: string, extraLabels: Record<string, string> = {}): Record<string, unknown> => ({
    name,
    ...(input.namespace !== undefined ? { namespace: input.namespace } : {}),
    labels: { ...input.workloadLabels, 'app.kubernetes.io/component': COMPONENT_LABEL_VALUE, ...extraLabels },
    ...(input.helm4 ? { annotations: { 'postrenderer.helm.sh/postrender-filename': ADDED_SOURCE_FILE } } : {}),
  });
  const service = {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: metadata(names.service, { [PEERS_SERVICE_LABEL]: 'true' }),
    spec: {
      clusterIP: 'None',
      // Draining pods stay listed: peers and scrapers still reach them while they hand over.
      publishNotReadyAddresses: true,
      selector: { ...podSelector },
      ports: [
        { name: PEER_PORT_NAME, port: o.peerPort, targetPort: o.peerPort, protocol: 'TCP' },
        { name: ADMIN_PORT_NAME, port: o.adminPort, targetPort: o.adminPort, protocol: 'TCP' },
      ],
    },
  };
  const pdb = {
    apiVersion: 'policy/v1',
    kind: 'PodDisruptionBudget',
    metadata: metadata(names.pdb),
    spec: {
      // maxUnavailable, not minAvailable: with one replica minAvailable 1 would block node drains.
      maxUnavailable: 1,
      unhealthyPodEvictionPolicy: 'AlwaysAllow',
      selector: { matchLabels: { ...podSelector } },
    },
  };
  const ownPods = { podSelector: { matchLabels: { ...podSelector } } };
  const adminFrom: Array<Record<string, unknown>> = [{ ...ownPods }];
  for (const ns of o.adminFromNamespaces) adminFrom.push({ namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': ns } } });
  const networkPolicy = {
    apiVersion: 'networking.k8s.io/v1',
    kind: 'NetworkPolicy',
    metadata: metadata(names.networkPolicy),
    spec: {
      podSelector: { matchLabels: { ...podSelector } },
      policyTypes: ['Ingress'],
      ingress: [
        // Clients, supervisors, probes' targets and scrapers: every port the pod declared before, from anywhere.
        { ports: [...input.openPorts].sort((a, b) => a - b).map((port) => ({ protocol: 'TCP', port })) },
        // Peer traffic only from the gateway's own (injected) pods. Node traffic (kubelet probes, the
        // preStop hook) is always allowed by NetworkPolicy semantics.
        { from: [{ ...ownPods }], ports: [{ protocol: 'TCP', port: o.peerPort }] },
        { from: adminFrom, ports: [{ protocol: 'TCP', port: o.adminPort }] },
      ],
    },
  };
  return [
    { kind: 'Service', name: names.service, object: service },
    { kind: 'PodDisruptionBudget', name: names.pdb, object: pdb },
    { kind: 'NetworkPolicy', name: names.networkPolicy, object: networkPolicy },
  ];
}
