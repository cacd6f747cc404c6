// Options of `openshell-ha-sidecar inject`, their defaults, and the flag parser (pure).
import { OhsError } from '../errors.ts';

/**
 * How the sidecar joins the pod (deployment reference §3.3, §3.5):
 * - `native`: an init container with `restartPolicy: Always` (Kubernetes ≥ 1.29; the Service's named
 *   `targetPort: grpc` resolves into it from 1.32). Starts before and stops after the gateway.
 * - `native-alias`: native, but the gateway keeps its informational `grpc` port entry so named
 *   `targetPort` lookup works on 1.29–1.31 (the sidecar process owns the port all the same).
 * - `container`: a regular container, for any Kubernetes; both containers get the drain preStop.
 */
export type InjectMode = 'native' | 'native-alias' | 'container';
export const INJECT_MODES: readonly InjectMode[] = ['native', 'native-alias', 'container'];

export type TlsMode = 'auto' | 'on' | 'off';

/**
 * Where each pod's peer mTLS certificate comes from (peers dial pod IPs, and no issuer can name a
 * pod IP before the pod has one, so the identity is a SPIFFE id naming the pod, i.e. the replica):
 * - `cert-manager`: a csi.cert-manager.io volume; the CSI driver requests a certificate per pod from
 *   an Issuer/ClusterIssuer, with the URI SAN filled in from the pod's name and namespace.
 * - `secret`: an existing Secret with `ca.crt` and one `<pod name>.crt` / `<pod name>.key` pair per
 *   replica (StatefulSets only: their pod names are known in advance).
 */
export type PeerTlsSource = 'off' | 'cert-manager' | 'secret';
export const PEER_TLS_SOURCES: readonly PeerTlsSource[] = ['off', 'cert-manager', 'secret'];
/** `{replica}`: the replica id (= the pod name); `{namespace}`: the pod's namespace. */
export const DEFAULT_PEER_SPIFFE_ID = 'spiffe://cluster.local/ns/{namespace}/openshell-ha/{replica}';

export interface PeerTlsOptions {
  readonly source: PeerTlsSource;
  /** cert-manager: the issuer of the per-pod certificates. */
  readonly issuer?: { readonly kind: 'Issuer' | 'ClusterIssuer'; readonly name: string };
  /** secret: the Secret holding `ca.crt` and the per-pod pairs. */
  readonly secret?: string;
  readonly spiffeIdTemplate: string;
}

export interface SecretRef {
  readonly name: string;
  readonly key: string;
}

export interface InjectOptions {
  readonly mode: InjectMode;
  readonly image: string;
  readonly imagePullPolicy: 'Always' | 'IfNotPresent' | 'Never';
  /** Pick the workload explicitly: `Kind/name` or `name`. */
  readonly workload?: { readonly kind?: string; readonly name: string };
  /** Pick the gateway container by name instead of by its `grpc` + `health` ports. */
  readonly container?: string;
  /** The loopback port the gateway moves to. */
  readonly gatewayPort: number;
  readonly peerPort: number;
  readonly adminPort: number;
  /** The pod's grace period is raised to at least this (never lowered). */
  readonly terminationGraceSeconds: number;
  /** The Secret of the own chart (`helm/openshell-ha`): keys `peer-secret`, `redis-url`, optional `database-url`. */
  readonly haSecret: string;
  /** Where the sidecar's Postgres URL comes from when the gateway's own cannot be reused. */
  readonly databaseSecret?: SecretRef;
  /** `auto`: TLS towards clients and the gateway exactly when the gateway itself serves TLS. */
  readonly tls: TlsMode;
  /** The Secret with the client certificate the sidecar presents to an mTLS gateway. */
  readonly clientTlsSecret?: string;
  /** Namespaces (by name) whose pods may reach the admin port too, e.g. the one Prometheus runs in. */
  readonly adminFromNamespaces: readonly string[];
  /** mTLS between the sidecars on the peer port (off: the shared secret alone). */
  readonly peerTls: PeerTlsOptions;
}

export const DEFAULT_IMAGE = 'openshell-ha-sidecar:0.1.0';

export const INJECT_DEFAULTS: InjectOptions = {
  mode: 'native',
  image: DEFAULT_IMAGE,
  imagePullPolicy: 'IfNotPresent',
  gatewayPort: 18080,
  peerPort: 8443,
  adminPort: 9091,
  // Drain budget (supervisor sessions shed in paced batches) + the gateway's own stop (~5 s) + margin
  // (reference §3.5); the chart's own 5 s is far too short.
  terminationGraceSeconds: 60,
  haSecret: 'openshell-ha',
  tls: 'auto',
  adminFromNamespaces: [],
  peerTls: { source: 'off', spiffeIdTemplate: DEFAULT_PEER_SPIFFE_ID },
};

export const INJECT_USAGE = `usage: openshell-ha-sidecar inject [options] < rendered.yaml > injected.yaml

Reads a rendered multi-document manifest stream (the upstream OpenShell chart, as a Helm post-renderer
sees it) on stdin and writes it back with the sidecar injected into the gateway workload, plus a peer
headless Service, a PodDisruptionBudget and a NetworkPolicy. Every other document is passed through
byte for byte; injecting twice changes nothing. Logs go to stderr; a non-zero exit means nothing usable
was written.

  --mode native|native-alias|container   how the sidecar joins the pod (default native: Kubernetes >= 1.32;
                                         native-alias: 1.29-1.31; container: any)
  --image IMAGE                          sidecar image (default ${DEFAULT_IMAGE})
  --image-pull-policy POLICY             Always|IfNotPresent|Never (default IfNotPresent)
  --workload [Kind/]NAME                 the gateway workload, when it cannot be found by its ports
  --container NAME                       the gateway container, likewise
  --gateway-port N                       loopback port the gateway moves to (default 18080)
  --peer-port N                          sidecar peer port (default 8443)
  --admin-port N                         sidecar admin port: health, readiness, metrics, drain (default 9091)
  --grace-seconds N                      minimum terminationGracePeriodSeconds (default 60)
  --secret NAME                          the own chart's Secret (default openshell-ha)
  --database-secret NAME/KEY             Secret key with the sidecar's Postgres URL (default: the gateway's
                                         OPENSHELL_DB_URL, else key database-url of --secret, optional)
  --tls auto|on|off                      TLS towards clients and the gateway (default auto: as the gateway)
  --client-tls-secret NAME               client certificate for an mTLS gateway (default: the gateway's own
                                         client TLS secret name, else openshell-client-tls)
  --admin-from-namespace NS              also let pods of namespace NS reach the admin port (repeatable)
  --peer-tls off|cert-manager|secret     mTLS between sidecars (default off: the shared secret alone):
                                         cert-manager: a per-pod certificate from the cert-manager CSI
                                         driver (csi.cert-manager.io); secret: an existing Secret with
                                         ca.crt and <pod name>.crt/.key per replica (StatefulSets only)
  --peer-tls-issuer [Kind/]NAME          cert-manager: Issuer (default) or ClusterIssuer/NAME
  --peer-tls-secret NAME                 secret: the Secret's name
  --peer-identity spiffe                 how certificates name replicas; only spiffe can be injected
                                         (san needs certificates naming pod IPs, which no issuer knows)
  --peer-spiffe-id TEMPLATE              SPIFFE id per replica, {replica} = pod name, {namespace}
                                         (default ${DEFAULT_PEER_SPIFFE_ID})
  -h, --help                             this text

Helm 3:  helm upgrade --install openshell <chart> --post-renderer <path>/openshell-ha-inject
Helm 4:  helm plugin install <path>/helm/plugin && ... --post-renderer openshell-ha
Pass the post-renderer on every upgrade: without it Helm removes the sidecar again.`;

export type ParsedInjectArgs = { help: true } | { help: false; options: InjectOptions };

function configError(message: string): OhsError {
  return new OhsError('OHS_ERR_CONFIG', message);
}

function port(flag: string, value: string): number {
  if (!/^\d{1,5}$/.test(value) || Number(value) < 1 || Number(value) > 65535) throw configError(`${flag}: expected a port 1..65535, got '${value}'`);
  return Number(value);
}

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/;

function objectName(flag: string, value: string): string {
  if (value.length > 253 || !DNS_SUBDOMAIN.test(value)) throw configError(`${flag}: '${value}' is not a valid Kubernetes object name`);
  return value;
}

/** Parses the flags after `inject`. Accepts `--flag value` and `--flag=value`. */
export function parseInjectArgs(argv: readonly string[]): ParsedInjectArgs {
  const o: { -readonly [K in keyof InjectOptions]: InjectOptions[K] } = { ...INJECT_DEFAULTS, adminFromNamespaces: [] };
  const adminNs: string[] = [];
  const peerTls: { -readonly [K in keyof PeerTlsOptions]: PeerTlsOptions[K] } = { ...INJECT_DEFAULTS.peerTls };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string;
    if (arg === '-h' || arg === '--help') return { help: true };
    if (!arg.startsWith('--')) throw configError(`unexpected argument '${arg}' (see --help)`);
    const eq = arg.indexOf('=');
    const flag = eq < 0 ? arg : arg.slice(0, eq);
    let value: string;
    if (eq >= 0) value = arg.slice(eq + 1);
    else {
      const next = argv[i + 1];
      if (next === undefined || next.startsWith('--')) throw configError(`${flag} needs a value`);
      value = next;
      i++;
    }
    switch (flag) {
      case '--mode':
        if (!(INJECT_MODES as readonly string[]).includes(value)) throw configError(`--mode: expected one of ${INJECT_MODES.join(', ')}, got '${value}'`);
        o.mode = value as InjectMode;
        break;
      case '--image':
        if (!/^[^\s]+$/.test(value)) throw configError(`--image: '${value}' is not an image reference`);
        o.image = value;
        break;
      case '--image-pull-policy':
        if (value !== 'Always' && value !== 'IfNotPresent' && value !== 'Never') throw configError(`--image-pull-policy: expected Always, IfNotPresent or Never`);
        o.imagePullPolicy = value;
        break;
      case '--workload': {
        const slash = value.indexOf('/');
        const kind = slash < 0 ? undefined : value.slice(0, slash);
        const name = objectName(flag, slash < 0 ? value : value.slice(slash + 1));
        if (kind !== undefined && kind !== 'Deployment' && kind !== 'StatefulSet') throw configError(`--workload: kind must be Deployment or StatefulSet, got '${kind}'`);
        o.workload = kind === undefined ? { name } : { kind, name };
        break;
      }
      case '--container':
        if (!DNS_LABEL.test(value)) throw configError(`--container: '${value}' is not a container name`);
        o.container = value;
        break;
      case '--gateway-port':
        o.gatewayPort = port(flag, value);
        break;
      case '--peer-port':
        o.peerPort = port(flag, value);
        break;
      case '--admin-port':
        o.adminPort = port(flag, value);
        break;
      case '--grace-seconds':
        if (!/^\d{1,5}$/.test(value)) throw configError(`--grace-seconds: expected whole seconds, got '${value}'`);
        o.terminationGraceSeconds = Number(value);
        break;
      case '--secret':
        o.haSecret = objectName(flag, value);
        break;
      case '--database-secret': {
        const m = /^([^/]+)\/([-._a-zA-Z0-9]+)$/.exec(value);
        if (!m) throw configError(`--database-secret: expected NAME/KEY, got '${value}'`);
        o.databaseSecret = { name: objectName(flag, m[1] as string), key: m[2] as string };
        break;
      }
      case '--tls':
        if (value !== 'auto' && value !== 'on' && value !== 'off') throw configError(`--tls: expected auto, on or off`);
        o.tls = value;
        break;
      case '--client-tls-secret':
        o.clientTlsSecret = objectName(flag, value);
        break;
      case '--admin-from-namespace':
        if (!DNS_LABEL.test(value)) throw configError(`--admin-from-namespace: '${value}' is not a namespace name`);
        adminNs.push(value);
        break;
      case '--peer-tls':
        if (!(PEER_TLS_SOURCES as readonly string[]).includes(value)) throw configError(`--peer-tls: expected one of ${PEER_TLS_SOURCES.join(', ')}, got '${value}'`);
        peerTls.source = value as PeerTlsSource;
        break;
      case '--peer-tls-issuer': {
        const slash = value.indexOf('/');
        const kind = slash < 0 ? 'Issuer' : value.slice(0, slash);
        if (kind !== 'Issuer' && kind !== 'ClusterIssuer') throw configError(`--peer-tls-issuer: kind must be Issuer or ClusterIssuer, got '${kind}'`);
        peerTls.issuer = { kind, name: objectName(flag, slash < 0 ? value : value.slice(slash + 1)) };
        break;
      }
      case '--peer-tls-secret':
        peerTls.secret = objectName(flag, value);
        break;
      case '--peer-identity':
        if (value === 'san') {
          throw configError(
            '--peer-identity san cannot be injected: peers dial pod IPs, and neither the cert-manager CSI driver nor a Secret can issue a ' +
              'certificate naming a pod IP before the pod has one. Use --peer-identity spiffe (the default with --peer-tls): the SPIFFE id names the pod',
          );
        }
        if (value !== 'spiffe') throw configError(`--peer-identity: expected spiffe, got '${value}'`);
        break;
      case '--peer-spiffe-id':
        if (!/^spiffe:\/\/[a-z0-9._-]+\/[^\s$]*$/.test(value) || value.split('{replica}').length !== 2) {
          throw configError(`--peer-spiffe-id: expected spiffe://<trust-domain>/<path> with {replica} once (and optionally {namespace}), got '${value}'`);
        }
        peerTls.spiffeIdTemplate = value;
        break;
      default:
        throw configError(`unknown flag ${flag} (see --help)`);
    }
  }
  o.adminFromNamespaces = adminNs;
  if (peerTls.source === 'cert-manager' && peerTls.issuer === undefined) throw configError('--peer-tls cert-manager needs --peer-tls-issuer [Issuer/|ClusterIssuer/]NAME: the issuer of the per-pod certificates');
  if (peerTls.source === 'secret' && peerTls.secret === undefined) throw configError('--peer-tls secret needs --peer-tls-secret NAME: a Secret with ca.crt and <pod name>.crt/.key per replica');
  if (peerTls.source !== 'cert-manager') delete peerTls.issuer;
  if (peerTls.source !== 'secret') delete peerTls.secret;
  if (peerTls.source === 'off' && argv.some((a) => /^--peer-(tls-issuer|tls-secret|spiffe-id|identity)(=|$)/.test(a))) {
    throw configError('--peer-tls-issuer, --peer-tls-secret, --peer-identity and --peer-spiffe-id need --peer-tls cert-manager|secret');
  }
  o.peerTls = peerTls;
  const ports = [o.gatewayPort, o.peerPort, o.adminPort];
  if (new Set(ports).size !== ports.length) throw configError('--gateway-port, --peer-port and --admin-port must differ');
  return { help: false, options: o };
}
