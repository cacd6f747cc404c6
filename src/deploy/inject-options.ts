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
      default:
        throw configError(`unknown flag ${flag} (see --help)`);
    }
  }
  o.adminFromNamespaces = adminNs;
  const ports = [o.gatewayPort, o.peerPort, o.adminPort];
  if (new Set(ports).size !== ports.length) throw configError('--gateway-port, --peer-port and --admin-port must differ');
  return { help: false, options: o };
}
