// Loads the configuration once at start: defaults < JSON config file < OHS_* env < flags,
// validated against the strict schema and deep-frozen.

import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { z } from 'zod';
import { OhsError } from '../errors.ts';
import { configFileSchema, sidecarConfigSchema } from './schema.ts';
import type { SidecarConfig } from './schema.ts';

export interface LoadConfigOptions {
  /** Command-line flags only (no node binary, script or subcommand). */
  argv: readonly string[];
  env: Readonly<Record<string, string | undefined>>;
  /** Reads the config file and secret files; defaults to fs.readFileSync(path, 'utf8'). */
  readFile?: (path: string) => string;
  /** Source of the random part of a default replica id; defaults to 4 random bytes as hex. */
  randomHex?: () => string;
}

type ValueKind = 'string' | 'int' | 'list' | 'number';

interface OptionSpec {
  /** Key in the config object; two elements for the nested tls / gatewayTls / peerTls settings. */
  readonly path: readonly [string] | readonly [string, string];
  readonly flag: `--${string}`;
  readonly env: `OHS_${string}`;
  readonly kind: ValueKind;
}

const opt = (
  path: OptionSpec['path'],
  flag: OptionSpec['flag'],
  env: OptionSpec['env'],
  kind: ValueKind = 'string',
): OptionSpec => ({ path, flag, env, kind });

/** Every setting that env or flags can carry. */
export const CONFIG_OPTIONS: readonly OptionSpec[] = [
  opt(['replicaId'], '--replica-id', 'OHS_REPLICA_ID'),
  opt(['listen'], '--listen', 'OHS_LISTEN'),
  opt(['peerListen'], '--peer-listen', 'OHS_PEER_LISTEN'),
  opt(['adminListen'], '--admin-listen', 'OHS_ADMIN_LISTEN'),
  opt(['peerUrl'], '--peer-url', 'OHS_PEER_URL'),
  opt(['gatewayUrl'], '--gateway', 'OHS_GATEWAY_URL'),
  opt(['gatewayTls', 'caFile'], '--gateway-ca', 'OHS_GATEWAY_CA_FILE'),
  opt(['gatewayTls', 'certFile'], '--gateway-cert', 'OHS_GATEWAY_CERT_FILE'),
  opt(['gatewayTls', 'keyFile'], '--gateway-key', 'OHS_GATEWAY_KEY_FILE'),
  opt(['gatewayTls', 'serverName'], '--gateway-server-name', 'OHS_GATEWAY_SERVER_NAME'),
  opt(['tls', 'certFile'], '--tls-cert', 'OHS_TLS_CERT_FILE'),
  opt(['tls', 'keyFile'], '--tls-key', 'OHS_TLS_KEY_FILE'),
  opt(['tls', 'clientCaFile'], '--tls-client-ca', 'OHS_TLS_CLIENT_CA_FILE'),
  opt(['databaseUrl'], '--database-url', 'OHS_DATABASE_URL'),
  opt(['gatewayDatabaseUrl'], '--gateway-database-url', 'OHS_GATEWAY_DATABASE_URL'),
  opt(['redisUrl'], '--redis-url', 'OHS_REDIS_URL'),
  opt(['redisKeyPrefix'], '--redis-key-prefix', 'OHS_REDIS_KEY_PREFIX'),
  opt(['peerSecret'], '--peer-secret', 'OHS_PEER_SECRET'),
  opt(['peerSecretFile'], '--peer-secret-file', 'OHS_PEER_SECRET_FILE'),
  opt(['maxFirstMessageBytes'], '--max-first-message-bytes', 'OHS_MAX_FIRST_MESSAGE_BYTES', 'int'),
  opt(['firstMessageTimeoutMs'], '--first-message-timeout-ms', 'OHS_FIRST_MESSAGE_TIMEOUT_MS', 'int'),
  opt(['maxHeaderBytes'], '--max-header-bytes', 'OHS_MAX_HEADER_BYTES', 'int'),
  opt(['maxConnections'], '--max-connections', 'OHS_MAX_CONNECTIONS', 'int'),
  opt(['h2MaxConcurrentStreams'], '--h2-max-concurrent-streams', 'OHS_H2_MAX_CONCURRENT_STREAMS', 'int'),
  opt(['headersTimeoutMs'], '--headers-timeout-ms', 'OHS_HEADERS_TIMEOUT_MS', 'int'),
  opt(['requestTimeoutMs'], '--request-timeout-ms', 'OHS_REQUEST_TIMEOUT_MS', 'int'),
  opt(['connectionIdleTimeoutMs'], '--connection-idle-timeout-ms', 'OHS_CONNECTION_IDLE_TIMEOUT_MS', 'int'),
  opt(['tcpKeepaliveMs'], '--tcp-keepalive-ms', 'OHS_TCP_KEEPALIVE_MS', 'int'),
  opt(['h2PingIntervalMs'], '--h2-ping-interval-ms', 'OHS_H2_PING_INTERVAL_MS', 'int'),
  opt(['h2PingTimeoutMs'], '--h2-ping-timeout-ms', 'OHS_H2_PING_TIMEOUT_MS', 'int'),
  opt(['peerPingIntervalMs'], '--peer-ping-interval-ms', 'OHS_PEER_PING_INTERVAL_MS', 'int'),
  opt(['maxHeldRequests'], '--max-held-requests', 'OHS_MAX_HELD_REQUESTS', 'int'),
  opt(['upstreamResetBudget'], '--upstream-reset-budget', 'OHS_UPSTREAM_RESET_BUDGET', 'int'),
  opt(['upstreamResetRefillPerSecond'], '--upstream-reset-refill-per-second', 'OHS_UPSTREAM_RESET_REFILL_PER_SECOND', 'int'),
  opt(['connectionBufferBytes'], '--connection-buffer-bytes', 'OHS_CONNECTION_BUFFER_BYTES', 'int'),
  opt(['totalBufferBytes'], '--total-buffer-bytes', 'OHS_TOTAL_BUFFER_BYTES', 'int'),
  opt(['hopLimit'], '--hop-limit', 'OHS_HOP_LIMIT', 'int'),
  opt(['ownerCacheTtlMs'], '--owner-cache-ttl-ms', 'OHS_OWNER_CACHE_TTL_MS', 'int'),
  opt(['replicaHeartbeatIntervalMs'], '--replica-heartbeat-interval-ms', 'OHS_REPLICA_HEARTBEAT_INTERVAL_MS', 'int'),
  opt(['replicaLeaseTtlMs'], '--replica-lease-ttl-ms', 'OHS_REPLICA_LEASE_TTL_MS', 'int'),
  opt(['ownerWaitMs'], '--owner-wait-ms', 'OHS_OWNER_WAIT_MS', 'int'),
  opt(['handoffMode'], '--handoff-mode', 'OHS_HANDOFF_MODE'),
  opt(['handoffTimeoutMs'], '--handoff-timeout-ms', 'OHS_HANDOFF_TIMEOUT_MS', 'int'),
  opt(['handoffRefusedGraceMs'], '--handoff-refused-grace-ms', 'OHS_HANDOFF_REFUSED_GRACE_MS', 'int'),
  opt(['handoffDisconnectWaitMs'], '--handoff-disconnect-wait-ms', 'OHS_HANDOFF_DISCONNECT_WAIT_MS', 'int'),
  opt(['sshTunnelsPerToken'], '--ssh-tunnels-per-token', 'OHS_SSH_TUNNELS_PER_TOKEN', 'int'),
  opt(['sshTunnelsPerSandbox'], '--ssh-tunnels-per-sandbox', 'OHS_SSH_TUNNELS_PER_SANDBOX', 'int'),
  opt(['limitLeaseTtlMs'], '--limit-lease-ttl-ms', 'OHS_LIMIT_LEASE_TTL_MS', 'int'),
  opt(['limitFallbackPolicy'], '--limit-fallback-policy', 'OHS_LIMIT_FALLBACK_POLICY'),
  opt(['limitReuseMs'], '--limit-reuse-ms', 'OHS_LIMIT_REUSE_MS', 'int'),
  opt(['peerConnectTimeoutMs'], '--peer-connect-timeout-ms', 'OHS_PEER_CONNECT_TIMEOUT_MS', 'int'),
  opt(['upstreamConnectTimeoutMs'], '--upstream-connect-timeout-ms', 'OHS_UPSTREAM_CONNECT_TIMEOUT_MS', 'int'),
  opt(['upstreamResponseTimeoutMs'], '--upstream-response-timeout-ms', 'OHS_UPSTREAM_RESPONSE_TIMEOUT_MS', 'int'),
  opt(['shutdownGraceMs'], '--shutdown-grace-ms', 'OHS_SHUTDOWN_GRACE_MS', 'int'),
  opt(['logLevel'], '--log-level', 'OHS_LOG_LEVEL'),
  opt(['h2InitialWindowBytes'], '--h2-initial-window-bytes', 'OHS_H2_INITIAL_WINDOW_BYTES', 'int'),
  opt(['serviceBaseDomains'], '--service-base-domains', 'OHS_SERVICE_BASE_DOMAINS', 'list'),
  opt(['gatewayJwtIssuer'], '--gateway-jwt-issuer', 'OHS_GATEWAY_JWT_ISSUER'),
  opt(['readinessMode'], '--readiness-mode', 'OHS_READINESS_MODE'),
  opt(['memorySaverMode'], '--memory-saver', 'OHS_MEMORY_SAVER'),
  opt(['drainShedShare'], '--drain-shed-share', 'OHS_DRAIN_SHED_SHARE', 'number'),
  opt(['rebalanceMode'], '--rebalance', 'OHS_REBALANCE'),
  opt(['rebalanceMarginPct'], '--rebalance-margin-pct', 'OHS_REBALANCE_MARGIN_PCT', 'int'),
  opt(['rebalanceIntervalMs'], '--rebalance-interval-ms', 'OHS_REBALANCE_INTERVAL_MS', 'int'),
  opt(['rebalanceCooldownMs'], '--rebalance-cooldown-ms', 'OHS_REBALANCE_COOLDOWN_MS', 'int'),
  opt(['rebalanceMinSessionAgeMs'], '--rebalance-min-session-age-ms', 'OHS_REBALANCE_MIN_SESSION_AGE_MS', 'int'),
  opt(['rebalanceStepOutLeadMs'], '--rebalance-step-out-lead-ms', 'OHS_REBALANCE_STEP_OUT_LEAD_MS', 'int'),
  opt(['rebalanceStepOutMaxMs'], '--rebalance-step-out-max-ms', 'OHS_REBALANCE_STEP_OUT_MAX_MS', 'int'),
  opt(['shedParkMs'], '--shed-park-ms', 'OHS_SHED_PARK_MS', 'int'),
  opt(['terminationGraceSeconds'], '--termination-grace-seconds', 'OHS_TERMINATION_GRACE_SECONDS', 'int'),
  opt(['peerHost'], '--peer-host', 'OHS_PEER_HOST'),
  opt(['tls', 'clientCertMode'], '--tls-client-cert', 'OHS_TLS_CLIENT_CERT'),
  opt(['adminAllowCidrs'], '--admin-allow-cidrs', 'OHS_ADMIN_ALLOW_CIDRS', 'list'),
  opt(['adminToken'], '--admin-token', 'OHS_ADMIN_TOKEN'),
  opt(['adminTokenFile'], '--admin-token-file', 'OHS_ADMIN_TOKEN_FILE'),
  opt(['tracing'], '--tracing', 'OHS_TRACING'),
  opt(['otlpTracesUrl'], '--otlp-traces-url', 'OHS_OTLP_TRACES_URL'),
  opt(['peerTls', 'certFile'], '--peer-tls-cert', 'OHS_PEER_TLS_CERT_FILE'),
  opt(['peerTls', 'keyFile'], '--peer-tls-key', 'OHS_PEER_TLS_KEY_FILE'),
  opt(['peerTls', 'caFile'], '--peer-tls-ca', 'OHS_PEER_TLS_CA_FILE'),
  opt(['peerTls', 'identity'], '--peer-identity', 'OHS_PEER_IDENTITY'),
  opt(['peerTls', 'spiffeIdTemplate'], '--peer-spiffe-id', 'OHS_PEER_SPIFFE_ID'),
  opt(['peerTls', 'reloadIntervalMs'], '--peer-tls-reload-interval-ms', 'OHS_PEER_TLS_RELOAD_INTERVAL_MS', 'int'),
  opt(['ownerNegativeCacheTtlMs'], '--owner-negative-cache-ttl-ms', 'OHS_OWNER_NEGATIVE_CACHE_TTL_MS', 'int'),
  opt(['ownerNegativeCacheMaxEntries'], '--owner-negative-cache-max-entries', 'OHS_OWNER_NEGATIVE_CACHE_MAX_ENTRIES', 'int'),
  opt(['postgresPoolSize'], '--postgres-pool-size', 'OHS_POSTGRES_POOL_SIZE', 'int'),
  opt(['postgresLookupPoolSize'], '--postgres-lookup-pool-size', 'OHS_POSTGRES_LOOKUP_POOL_SIZE', 'int'),
  opt(['postgresLookupQueueMax'], '--postgres-lookup-queue-max', 'OHS_POSTGRES_LOOKUP_QUEUE_MAX', 'int'),
];

const CONFIG_FILE_FLAG = '--config';
const CONFIG_FILE_ENV = 'OHS_CONFIG';

export const CONFIG_DEFAULTS = {
  listen: '0.0.0.0:8080',
  peerListen: '0.0.0.0:8443',
  // Loopback unless told otherwise: deployments set the pod address (probes, scrapes, preStop).
  adminListen: '127.0.0.1:9091',
  gatewayUrl: 'http://127.0.0.1:18080',
  redisKeyPrefix: 'ohs:',
  maxFirstMessageBytes: 65_536,
  firstMessageTimeoutMs: 10_000,
  maxHeaderBytes: 16_384,
  // Enough for 10,000 supervisors plus their clients; the fd limit usually bites first.
  maxConnections: 50_000,
  // hyper's server default is 200 per connection; a supervisor connection carries its relays.
  h2MaxConcurrentStreams: 1_000,
  headersTimeoutMs: 30_000,
  requestTimeoutMs: 300_000,
  connectionIdleTimeoutMs: 900_000,
  tcpKeepaliveMs: 30_000,
  h2PingIntervalMs: 30_000,
  h2PingTimeoutMs: 10_000,
  // Peer connections are a handful per replica and carry relays that sit idle while a user reads:
  // a peer whose node vanished under such a relay is found within this plus the PING timeout.
  peerPingIntervalMs: 5_000,
  maxHeldRequests: 10_000,
  // Half of nghttp2's rapid-reset allowance (1,000, refilled at 33/s) that a Node or hyper gateway
  // (and a peer sidecar) applies per connection before it answers GOAWAY to every stream on it.
  upstreamResetBudget: 500,
  upstreamResetRefillPerSecond: 10,
  // 128 maximum-size first messages per connection; 4,096 across the replica.
  connectionBufferBytes: 8 * 1_048_576,
  totalBufferBytes: 256 * 1_048_576,
  hopLimit: 2,
  ownerCacheTtlMs: 5_000,
  replicaHeartbeatIntervalMs: 2_000,
  replicaLeaseTtlMs: 10_000,
  // Fits inside the gateway's own session waits (exec 15 s, SSH 30 s; reference §6) and the
  // CLI's 60 s retry of 412s (reference §2.3).
  ownerWaitMs: 15_000,
  handoffMode: 'fenced',
  sshTunnelsPerToken: 3,
  sshTunnelsPerSandbox: 20,
  limitRules: [],
  limitLeaseTtlMs: 15_000,
  limitFallbackPolicy: 'local-split',
  limitReuseMs: 100,
  // A little over the default replica lease (10 s): an unresponsive owner is provably gone then.
  handoffTimeoutMs: 12_000,
  // Refused peer port: the sidecar is gone and so are its upstream connections; its gateway (same
  // pod, loopback) sees them close at once and writes Provisioning within milliseconds.
  handoffRefusedGraceMs: 150,
  // Ends as soon as the gateway's write is seen; the bound only matters when the write is slow or never comes.
  handoffDisconnectWaitMs: 5_000,
  peerConnectTimeoutMs: 2_000,
  upstreamConnectTimeoutMs: 5_000,
  upstreamResponseTimeoutMs: 60_000,
  shutdownGraceMs: 25_000,
  logLevel: 'info',
  h2InitialWindowBytes: 1_048_576,
  // The gateway's default `base_domains` (reference §2.7); set it to the gateway's wildcard SANs.
  serviceBaseDomains: ['openshell.localhost'],
  readinessMode: 'shadow',
  memorySaverMode: 'auto',
  // Sessions move within the first half of the grace period; the rest is for relays to finish.
  drainShedShare: 0.5,
  rebalanceMode: 'on',
  rebalanceMarginPct: 20,
  rebalanceIntervalMs: 500,
  // Each shed costs the supervisor one step of its reconnect backoff, which never resets (reference §2.1):
  // a replica sheds one session at most once a minute.
  rebalanceCooldownMs: 60_000,
  // A session that just moved (a drain, a failover, another shed) has paid a backoff step already:
  // it is left where it landed for a minute, so a rolling restart moves each session as few times
  // as it can.
  rebalanceMinSessionAgeMs: 60_000,
  // Out of the Service before shedding: the injected readiness probe (every 2 s, 2 failures) and the
  // compose front (every 2 s, fall 2) notice within 4 s, endpoints propagate within about a second.
  rebalanceStepOutLeadMs: 5_000,
  rebalanceStepOutMaxMs: 60_000,
  // The supervisor's reconnect backoff is capped at 30 s (reference §2.1): a shed supervisor has
  // reconnected somewhere by then, unless it is gone.
  shedParkMs: 40_000,
  adminAllowCidrs: [],
  tracing: 'off',
  // Unknown ids are forgotten after 5 s at the latest; claims invalidate them at once.
  ownerNegativeCacheTtlMs: 5_000,
  ownerNegativeCacheMaxEntries: 10_000,
  postgresPoolSize: 4,
  postgresLookupPoolSize: 4,
  postgresLookupQueueMax: 1_000,
} as const;

type Layer = Record<string, unknown>;

const FLAG_INDEX: ReadonlyMap<string, OptionSpec> = new Map(CONFIG_OPTIONS.map((o) => [o.flag, o]));

export function loadConfig(options: LoadConfigOptions): SidecarConfig {
  const readFile = options.readFile ?? ((p: string) => readFileSync(p, 'utf8'));
  const randomHex = options.randomHex ?? (() => randomBytes(4).toString('hex'));

  const flags = parseFlags(options.argv);
  const configPath = flags.configPath ?? nonEmpty(options.env[CONFIG_FILE_ENV]);

  const defaults: Layer = { ...CONFIG_DEFAULTS, replicaId: defaultReplicaId(options.env, randomHex) };
  const layers: Array<[string, Layer]> = [];
  if (configPath !== undefined) layers.push([`config file ${configPath}`, fileLayer(configPath, readFile)]);
  layers.push(['environment', envLayer(options.env)]);
  layers.push(['flags', flags.layer]);

  let merged = defaults;
  for (const [source, layer] of layers) {
    merged = mergeLayer(merged, resolveSecretFile(resolvePeerSecretFile(layer, source, readFile), source, readFile, 'adminTokenFile', 'adminToken'));
  }

  const parsed = sidecarConfigSchema.safeParse(merged, { reportInput: true });
  if (!parsed.success) throw configError('invalid configuration', parsed.error.issues);
  return deepFreeze(parsed.data);
}

/** A loggable copy of the config: secrets replaced, passwords removed from URLs. */
export function describeConfig(cfg: SidecarConfig): Record<string, unknown> {
  const out: Record<string, unknown> = structuredClone({ ...cfg });
  if (cfg.peerSecret !== undefined) out['peerSecret'] = '[redacted]';
  if (cfg.adminToken !== undefined) out['adminToken'] = '[redacted]';
  if (cfg.databaseUrl !== undefined) out['databaseUrl'] = redactUrl(cfg.databaseUrl);
  if (cfg.redisUrl !== undefined) out['redisUrl'] = redactUrl(cfg.redisUrl);
  if (cfg.gatewayDatabaseUrl !== undefined) out['gatewayDatabaseUrl'] = redactUrl(cfg.gatewayDatabaseUrl);
  return out;
}

function redactUrl(value: string): string {
  // redis+sentinel://user:pass@h1:p1,h2:p2/… (a host list WHATWG URL cannot parse).
  if (/^rediss?\+sentinel:/i.test(value)) return value.replace(/^([^:]+:\/\/[^:@/]*:)[^@/]*@/, '$1***@');
  try {
    const url = new URL(value);
    if (url.password !== '') url.password = '***';
    for (const key of [...url.searchParams.keys()]) {
      if (/pass|secret|token/i.test(key)) url.searchParams.set(key, '***');
    }
    return url.toString();
  } catch {
    return '[unparseable url]';
  }
}

interface ParsedFlags {
  configPath: string | undefined;
  layer: Layer;
}

function parseFlags(argv: readonly string[]): ParsedFlags {
  const layer: Layer = {};
  let configPath: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string;
    if (!arg.startsWith('--') || arg === '--') {
      throw new OhsError('OHS_ERR_CONFIG', `unexpected argument '${arg}': settings are given as --flag value`);
    }
    const eq = arg.indexOf('=');
    const name = eq < 0 ? arg : arg.slice(0, eq);
    let value: string | undefined;
    if (eq >= 0) {
      value = arg.slice(eq + 1);
    } else {
      value = argv[i + 1];
      if (value === undefined || value.startsWith('--')) {
        throw new OhsError('OHS_ERR_CONFIG', `flag ${name} needs a value (write ${name}=VALUE if it starts with --)`);
      }
      i++;
    }
    if (name === CONFIG_FILE_FLAG) {
      configPath = value;
      continue;
    }
    const spec = FLAG_INDEX.get(name);
    if (spec === undefined) {
      throw new OhsError('OHS_ERR_CONFIG', `unknown flag ${name}`, { details: { flag: name } });
    }
    setPath(layer, spec.path, convert(spec, value, `flag ${spec.flag}`));
  }
  return { configPath, layer };
}

function envLayer(env: Readonly<Record<string, string | undefined>>): Layer {
  const layer: Layer = {};
  for (const spec of CONFIG_OPTIONS) {
    // Empty means unset: Helm and compose render absent values as empty strings.
    const value = nonEmpty(env[spec.env]);
    if (value !== undefined) setPath(layer, spec.path, convert(spec, value, `env ${spec.env}`));
  }
  return layer;
}

function fileLayer(path: string, readFile: (p: string) => string): Layer {
  const source = `config file ${path}`;
  let text: string;
  try {
    text = readFile(path);
  } catch (err) {
    throw new OhsError('OHS_ERR_CONFIG', `cannot read ${source}`, { cause: err });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new OhsError('OHS_ERR_CONFIG', `${source} is not valid JSON`, { cause: err });
  }
  const parsed = configFileSchema.safeParse(json, { reportInput: true });
  if (!parsed.success) throw configError(`invalid ${source}`, parsed.error.issues);
  return parsed.data as Layer;
}

function resolvePeerSecretFile(layer: Layer, source: string, readFile: (p: string) => string): Layer {
  const secretFile = layer['peerSecretFile'];
  if (typeof secretFile !== 'string') return layer;
  if (layer['peerSecret'] !== undefined) {
    throw new OhsError('OHS_ERR_CONFIG', `${source}: set either peerSecret or peerSecretFile, not both`);
  }
  let secret: string;
  try {
    // Secret files usually end with a newline that is not part of the secret.
    secret = readFile(secretFile).replace(/[\r\n]+$/, '');
  } catch (err) {
    throw new OhsError('OHS_ERR_CONFIG', `${source}: cannot read peer secret file ${secretFile}`, { cause: err });
  }
  const { peerSecretFile: _dropped, ...rest } = layer;
  return { ...rest, peerSecret: secret };
}

function resolveSecretFile(layer: Layer, source: string, readFile: (p: string) => string, fileKey: string, valueKey: string): Layer {
  const file = layer[fileKey];
  if (typeof file !== 'string') return layer;
  if (layer[valueKey] !== undefined) throw new OhsError('OHS_ERR_CONFIG', `${source}: set either ${valueKey} or ${fileKey}, not both`);
  let value: string;
  try {
    value = readFile(file).replace(/[\r\n]+$/, '');
  } catch (err) {
    throw new OhsError('OHS_ERR_CONFIG', `${source}: cannot read ${fileKey} ${file}`, { cause: err });
  }
  const { [fileKey]: _dropped, ...rest } = layer;
  return { ...rest, [valueKey]: value };
}

function defaultReplicaId(env: Readonly<Record<string, string | undefined>>, randomHex: () => string): string {
  // In Kubernetes HOSTNAME is the pod name: unique, stable for the pod's life, readable in logs.
  const host = nonEmpty(env['HOSTNAME']);
  if (host !== undefined && /^[A-Za-z0-9._-]{1,128}$/.test(host)) return host;
  return `replica-${randomHex()}`;
}

function convert(spec: OptionSpec, value: string, source: string): string | number | string[] {
  if (spec.kind === 'string') return value;
  if (spec.kind === 'list') return value.split(',').map((v) => v.trim()).filter((v) => v !== '');
  if (spec.kind === 'number') {
    if (!/^\d+(\.\d+)?$/.test(value)) throw new OhsError('OHS_ERR_CONFIG', `${source}: expected a non-negative number, got '${value}'`);
    return Number(value);
  }
  if (!/^\d+$/.test(value)) {
    throw new OhsError('OHS_ERR_CONFIG', `${source}: expected a non-negative integer, got '${value}'`);
  }
  return Number(value);
}

function setPath(layer: Layer, path: OptionSpec['path'], value: unknown): void {
  if (path.length === 1) {
    layer[path[0]] = value;
    return;
  }
  const [outer, inner] = path;
  const existing = layer[outer];
  const nested: Layer = isPlainObject(existing) ? existing : {};
  nested[inner] = value;
  layer[outer] = nested;
}

/** Later layer wins key by key; nested objects (tls, gatewayTls, peerTls) merge instead of replacing. */
function mergeLayer(base: Layer, over: Layer): Layer {
  const out: Layer = { ...base };
  for (const [key, value] of Object.entries(over)) {
    if (value === undefined) continue;
    const prev = out[key];
    out[key] = isPlainObject(prev) && isPlainObject(value) ? mergeLayer(prev, value) : value;
  }
  return out;
}

function isPlainObject(value: unknown): value is Layer {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function nonEmpty(value: string | undefined): string | undefined {
  return value === undefined || value === '' ? undefined : value;
}

const SPEC_BY_PATH: ReadonlyMap<string, OptionSpec> = new Map(CONFIG_OPTIONS.map((o) => [o.path.join('.'), o]));

// Issues carry their input (reportInput) only so a missing value reads "is required"; inputs are
// never copied into the message or details, because they may be secrets.
function configError(headline: string, issues: readonly z.core.$ZodIssue[]): OhsError {
  const lines = issues.map((issue) => {
    const path = issue.path.map(String).join('.');
    const spec = SPEC_BY_PATH.get(path);
    const where = spec === undefined ? path : `${path} (${spec.flag} / ${spec.env})`;
    const message = issue.code === 'invalid_type' && issue.input === undefined ? 'is required' : issue.message;
    return where === '' ? message : `${where}: ${message}`;
  });
  return new OhsError('OHS_ERR_CONFIG', `${headline}: ${lines.join('; ')}`, {
    details: { issues: issues.map((i) => ({ path: i.path.map(String).join('.'), message: i.message })) },
  });
}

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const child of Object.values(value)) deepFreeze(child);
  }
  return value;
}
