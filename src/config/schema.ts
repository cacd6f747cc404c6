// The sidecar's configuration schema. Every object is strict, so a misspelt key in the config
// file is an error at start instead of a silently ignored setting. Units live in the names.

import { isIPv4, isIPv6 } from 'node:net';
import { z } from 'zod';
import { MEMORY_SAVER_MODES, type MemorySaverMode } from '../memory-saver.ts';
import { sentinelOptions } from '../ownership/redis-connect.ts';
import { formatHostPort, isWildcardHost, parseHostPort } from './host-port.ts';

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export type SidecarMode = 'embedded' | 'cluster';

export const PEER_SECRET_MIN_LENGTH = 16;

function isCidr(value: string): boolean {
  const slash = value.lastIndexOf('/');
  const address = slash < 0 ? value : value.slice(0, slash);
  const max = isIPv4(address) ? 32 : isIPv6(address) ? 128 : -1;
  if (max < 0) return false;
  if (slash < 0) return true;
  const bits = value.slice(slash + 1);
  return /^\d{1,3}$/.test(bits) && Number(bits) <= max;
}

const hostPort = z.string().refine((value) => {
  try {
    parseHostPort(value);
    return true;
  } catch {
    return false;
  }
}, 'expected host:port or [ipv6]:port with a port 0..65535');

function urlWithScheme(schemes: readonly string[]) {
  const expected = schemes.map((s) => `${s}//`).join(' or ');
  return z.string().refine((value) => {
    try {
      const url = new URL(value);
      return schemes.includes(url.protocol) && url.hostname !== '';
    } catch {
      return false;
    }
  }, `expected a ${expected} URL`);
}

const httpUrl = urlWithScheme(['http:', 'https:']);
const postgresUrl = urlWithScheme(['postgres:', 'postgresql:']);
const plainRedisUrl = urlWithScheme(['redis:', 'rediss:']);
/** redis:// or rediss:// (one server), or redis+sentinel:// (a Sentinel-managed primary). */
const redisUrl = z.string().refine((value) => {
  if (plainRedisUrl.safeParse(value).success) return true;
  try {
    return sentinelOptions(value) !== undefined;
  } catch {
    return false;
  }
}, 'expected a redis://, rediss:// or redis+sentinel://host:port[,host:port…]/<master-name>[/<db>] URL');
const filePath = z.string().min(1);
const int = (min: number, max: number) => z.number().int().min(min).max(max);

/** Replica ids end up in Postgres rows, Redis keys and metric labels. */
export const replicaIdSchema = z
  .string()
  .min(1)
  .max(128)
  .regex(/^[A-Za-z0-9._-]+$/, 'replicaId may contain only letters, digits, dot, underscore and hyphen');

const gatewayTlsShape = {
  /** CA bundle that signs the gateway's server certificate. */
  caFile: filePath.optional(),
  /** Client certificate for the gateway hop when the gateway requires mTLS. */
  certFile: filePath.optional(),
  keyFile: filePath.optional(),
  /** SNI / certificate name to expect when it differs from the URL host (e.g. 127.0.0.1). */
  serverName: z.string().min(1).optional(),
};

const tlsShape = {
  certFile: filePath,
  keyFile: filePath,
  /** When set, the public listener asks for client certificates signed by this CA (mTLS). */
  clientCaFile: filePath.optional(),
  /**
   * `required` (default): no certificate, no connection. `optional`: verified when presented, as
   * the 2026-08 gateway does with a client CA and OIDC (reference §1.2); user identity is then the
   * gateway's business, and only a verified certificate counts for the seed Hello rule.
   */
  clientCertMode: z.enum(['required', 'optional']).optional(),
};

/** `{replica}` stands for the replica id: `spiffe://<trust domain>/<path>/{replica}`. */
export const SPIFFE_REPLICA_PLACEHOLDER = '{replica}';

const spiffeIdTemplate = z
  .string()
  .max(2048)
  .refine(
    (v) => /^spiffe:\/\/[a-z0-9._-]+\/\S*$/.test(v) && v.split(SPIFFE_REPLICA_PLACEHOLDER).length === 2,
    `expected spiffe://<trust-domain>/<path> with ${SPIFFE_REPLICA_PLACEHOLDER} once, e.g. spiffe://cluster.local/ns/openshell/replica/${SPIFFE_REPLICA_PLACEHOLDER}`,
  );

const peerTlsShape = {
  /** This sidecar's certificate: served on the peer port and presented on outgoing peer sessions. */
  certFile: filePath,
  keyFile: filePath,
  /** CA bundle that signs every replica's peer certificate (both directions). */
  caFile: filePath,
  /**
   * How a peer's certificate names its replica: `san` (a DNS or IP SAN equal to the host of the peer
   * URL the replica registered) or `spiffe` (a URI SAN equal to spiffeIdTemplate for that replica).
   */
  identity: z.enum(['san', 'spiffe']).optional(),
  spiffeIdTemplate: spiffeIdTemplate.optional(),
  /** How often the files are read again; changed files apply to new connections only. */
  reloadIntervalMs: int(100, 3_600_000).optional(),
};

const scalarShape = {
  replicaId: replicaIdSchema,
  listen: hostPort,
  peerListen: hostPort,
  adminListen: hostPort,
  peerUrl: httpUrl.optional(),
  gatewayUrl: httpUrl,
  databaseUrl: postgresUrl.optional(),
  /** The gateway's own database (read-only), when it is not the sidecar's database. */
  gatewayDatabaseUrl: postgresUrl.optional(),
  redisUrl: redisUrl.optional(),
  redisKeyPrefix: z.string().min(1).max(64),
  peerSecret: z.string().min(PEER_SECRET_MIN_LENGTH).optional(),
  maxFirstMessageBytes: int(1024, 16 * 1024 * 1024),
  firstMessageTimeoutMs: int(100, 600_000),
  maxHeaderBytes: int(1024, 1024 * 1024),
  /** Client connections open at once on the public port; beyond it new ones are closed at accept. */
  maxConnections: int(1, 1_000_000),
  /** HTTP/2 streams open at once on one client connection (SETTINGS_MAX_CONCURRENT_STREAMS). */
  h2MaxConcurrentStreams: int(1, 1_000_000),
  /** An HTTP/1.1 request's head must be complete within this long (slow-header clients are cut). */
  headersTimeoutMs: int(100, 600_000),
  /** An HTTP/1.1 request's body must be complete within this long (0 = no bound). */
  requestTimeoutMs: int(0, 86_400_000),
  /** A client HTTP/2 connection with no open stream is closed after this long (0 = never). */
  connectionIdleTimeoutMs: int(0, 86_400_000),
  /** TCP keepalive on every accepted and dialled socket: first probe after this much idle time. */
  tcpKeepaliveMs: int(1000, 7_200_000),
  /** HTTP/2 PING on idle client and gateway connections every this long; no answer within pingTimeoutMs closes it (0 = off). */
  h2PingIntervalMs: int(0, 3_600_000),
  h2PingTimeoutMs: int(100, 600_000),
  /** The same for connections to peer sidecars (0 = off). */
  peerPingIntervalMs: int(0, 3_600_000),
  /** Requests held at once while their sandbox has no reachable owner; beyond it the local gateway answers. */
  maxHeldRequests: int(0, 1_000_000),
  /** Streams one upstream connection may see reset (a token bucket) before new streams move to a fresh connection (0 = no budget). */
  upstreamResetBudget: int(0, 1_000_000),
  /** How fast that budget refills, per second. */
  upstreamResetRefillPerSecond: int(0, 100_000),
  /** First-message bytes one client connection may have buffered at once (streams beyond it are refused). */
  connectionBufferBytes: int(65_536, 2 ** 31 - 1),
  /** First-message bytes all client connections together may have buffered at once. */
  totalBufferBytes: int(65_536, 2 ** 40),
  hopLimit: int(1, 8),
  ownerCacheTtlMs: int(0, 600_000),
  replicaHeartbeatIntervalMs: int(100, 60_000),
  replicaLeaseTtlMs: int(500, 600_000),
  ownerWaitMs: int(0, 600_000),
  /** `off` skips the fence of DESIGN §4: unsafe, a late Provisioning can then beat the new Ready. */
  handoffMode: z.enum(['fenced', 'off']),
  handoffTimeoutMs: int(100, 600_000),
  handoffRefusedGraceMs: int(0, 60_000),
  handoffDisconnectWaitMs: int(0, 60_000),
  /** Cluster-wide SSH tunnel caps (the gateway's own per-process caps, reference §2.3). */
  sshTunnelsPerToken: int(1, 100_000),
  sshTunnelsPerSandbox: int(1, 100_000),
  /** Extra limit rules (config file only), e.g. exec streams per sandbox. */
  limitRules: z.array(
    z.strictObject({
      name: z.string().regex(/^[a-z0-9-]{1,64}$/),
      trafficClass: z.string().min(1),
      key: z.enum(['token', 'sandbox', 'client-address']),
      max: int(1, 1_000_000),
    }),
  ),
  /** Slot lease in Redis: a crashed holder's slots are reclaimed within this time. */
  limitLeaseTtlMs: int(1_000, 600_000),
  /** What limits do while Redis is unavailable (DESIGN §5). Never silently unlimited. */
  limitFallbackPolicy: z.enum(['local-split', 'local-full', 'deny']),
  /**
   * How long a closed connection's slot stays in Redis for a new connection with the same keys
   * (0: released at once). At most a ninth of the lease TTL (a third of the renewal interval).
   */
  limitReuseMs: int(0, 60_000),
  peerConnectTimeoutMs: int(50, 60_000),
  upstreamConnectTimeoutMs: int(50, 60_000),
  /**
   * A tunnel (CONNECT, upgrade) whose gateway sends no response head within this long gets 504 and
   * its upstream is cut. Above the gateway's own longest wait for a session (30 s, reference §6).
   */
  upstreamResponseTimeoutMs: int(1_000, 600_000),
  shutdownGraceMs: int(0, 3_600_000),
  logLevel: z.enum(LOG_LEVELS),
  // HTTP/2 caps the initial window at 2^31-1 (RFC 9113 §6.9.2); 65535 is the protocol default.
  h2InitialWindowBytes: int(65_535, 2 ** 31 - 1),
  /** Base domains of sandbox service hosts `<ws>--<sandbox>[--<svc>].<base>` (reference §2.7). */
  serviceBaseDomains: z.array(z.string().regex(/^[A-Za-z0-9.-]{1,253}$/)).max(32),
  /**
   * The `iss` (= `aud`) of the gateway's sandbox JWTs, `openshell-gateway:<gateway_id>`; unset, any
   * issuer of that form is accepted (the signature with the gateway's own key is what counts).
   */
  gatewayJwtIssuer: z.string().regex(/^openshell-gateway:.+$/).optional(),
  /**
   * `shadow` keeps 2026-08 sandboxes Ready on every replica's gateway (reference §10: the reconciler
   * lease holder demotes sessions it does not hold); `off` leaves the gateway's behaviour as is.
   */
  readinessMode: z.enum(['shadow', 'off']),
  /**
   * V8's memory saver mode (src/memory-saver.ts): `auto` for a few quiet seconds after a burst, `on`
   * always, `off` never. Only on a V8 that keeps freed heap pages until a memory-reducing collection (Node 24).
   */
  memorySaverMode: z.enum(MEMORY_SAVER_MODES),
  /** Share of the drain's grace period within which every owned supervisor session is shed (DESIGN §6). */
  drainShedShare: z.number().gt(0).lte(1),
  /** Paced rebalancing of supervisor sessions towards each replica's fair share. */
  rebalanceMode: z.enum(['on', 'off']),
  /** A replica sheds while it holds more than fair share × (1 + margin / 100). */
  rebalanceMarginPct: int(0, 1000),
  /** Least time between two sheds of one replica (jittered ±50 %). */
  rebalanceIntervalMs: int(50, 600_000),
  /** A session a replica shed is not shed again by it within this time. */
  rebalanceCooldownMs: int(0, 86_400_000),
  /** Sessions younger than this on a replica (they just moved) are not shed to rebalance. */
  rebalanceMinSessionAgeMs: int(0, 86_400_000),
  /**
   * A replica about to shed turns its readiness false this long before its first shed, so that the
   * Service sends its shed supervisors elsewhere; 0 = it stays in the Service.
   */
  rebalanceStepOutLeadMs: int(0, 600_000),
  /** Longest a replica stays out of the Service to shed. */
  rebalanceStepOutMaxMs: int(1_000, 3_600_000),
  /**
   * A shed session's gateway registration is kept (parked) until the supervisor's next owner fences
   * it, at most this long; 0 ends it with the shed (the gateway then writes Provisioning at once).
   */
  shedParkMs: int(0, 600_000),
  /**
   * The pod's terminationGracePeriodSeconds: the drain the gateway's preStop starts (GET /drain/wait)
   * ends by grace − gateway stop − margin (deployment reference §3.5).
   */
  terminationGraceSeconds: int(1, 86_400).optional(),
  /** This pod's own address (e.g. $(POD_IP)); with it the peer URL is built here, IPv6 included. */
  peerHost: z.string().min(1).max(253).optional(),
  /** Besides loopback, who may use the admin port's operator endpoints (/v1/*, /ui): CIDRs. */
  adminAllowCidrs: z.array(z.string().refine(isCidr, 'expected an IPv4 or IPv6 CIDR, e.g. 10.0.0.0/8')).max(64),
  /** A bearer token that opens the operator endpoints from any address. */
  adminToken: z.string().min(16).optional(),
  /** `otlp` exports traces (W3C traceparent across the peer hop) to otlpTracesUrl; off creates no spans at all. */
  tracing: z.enum(['off', 'otlp']),
  /** OTLP/HTTP traces endpoint, e.g. http://otel-collector:4318/v1/traces. */
  otlpTracesUrl: httpUrl.optional(),
  /** "No owner row" remembered per sandbox id (a claim invalidates it at once); 0 = off. */
  ownerNegativeCacheTtlMs: int(0, 600_000),
  ownerNegativeCacheMaxEntries: int(1, 10_000_000),
  /** Postgres connections for claims, releases and replica listings; the heartbeat has one of its own. */
  postgresPoolSize: int(1, 100),
  /** Postgres connections for owner lookups (client-driven, so kept apart from claims and heartbeats). */
  postgresLookupPoolSize: int(1, 100),
  /** Owner lookups that may wait for a lookup connection; more are refused at once (UNAVAILABLE). */
  postgresLookupQueueMax: int(0, 1_000_000),
};

/**
 * What a JSON config file may contain: any subset of the settings, plus `peerSecretFile`.
 * Nested objects may be partial here because env and flags can complete them.
 */
export const configFileSchema = z
  .strictObject(scalarShape)
  .partial()
  .extend({
    gatewayTls: z.strictObject(gatewayTlsShape).partial().optional(),
    tls: z.strictObject(tlsShape).partial().optional(),
    peerTls: z.strictObject(peerTlsShape).partial().optional(),
    peerSecretFile: filePath.optional(),
    adminTokenFile: filePath.optional(),
  });

export type ConfigFileInput = z.input<typeof configFileSchema>;

export interface GatewayTlsConfig {
  readonly caFile?: string;
  readonly certFile?: string;
  readonly keyFile?: string;
  readonly serverName?: string;
}

export interface PublicTlsConfig {
  readonly certFile: string;
  readonly keyFile: string;
  readonly clientCaFile?: string;
  readonly clientCertMode?: 'required' | 'optional';
}

export interface PeerTlsConfig {
  readonly certFile: string;
  readonly keyFile: string;
  readonly caFile: string;
  readonly identity?: 'san' | 'spiffe';
  readonly spiffeIdTemplate?: string;
  readonly reloadIntervalMs?: number;
}

export interface SidecarConfig {
  readonly mode: SidecarMode;
  readonly replicaId: string;
  /** Public listener (clients and supervisors), `host:port`. */
  readonly listen: string;
  /** Peer listener (other replicas' sidecars only), `host:port`. */
  readonly peerListen: string;
  /** Health, readiness, metrics and admin API, `host:port`. */
  readonly adminListen: string;
  /**
   * How other replicas reach this replica's peer listener. Always set in cluster mode unless
   * peerListen uses port 0, in which case the runtime derives it from the bound address.
   */
  readonly peerUrl?: string;
  readonly gatewayUrl: string;
  readonly gatewayTls?: GatewayTlsConfig;
  readonly tls?: PublicTlsConfig;
  readonly databaseUrl?: string;
  /** Read-only access to the gateway's `objects` table; defaults to databaseUrl. */
  readonly gatewayDatabaseUrl?: string;
  readonly redisUrl?: string;
  readonly redisKeyPrefix: string;
  readonly peerSecret?: string;
  readonly maxFirstMessageBytes: number;
  readonly firstMessageTimeoutMs: number;
  readonly maxHeaderBytes: number;
  readonly maxConnections: number;
  readonly h2MaxConcurrentStreams: number;
  readonly headersTimeoutMs: number;
  readonly requestTimeoutMs: number;
  readonly connectionIdleTimeoutMs: number;
  readonly tcpKeepaliveMs: number;
  readonly h2PingIntervalMs: number;
  readonly h2PingTimeoutMs: number;
  /** Silence on a connection to a peer sidecar before it is PINGed (0: never). */
  readonly peerPingIntervalMs: number;
  readonly maxHeldRequests: number;
  readonly upstreamResetBudget: number;
  readonly upstreamResetRefillPerSecond: number;
  readonly connectionBufferBytes: number;
  readonly totalBufferBytes: number;
  readonly hopLimit: number;
  readonly ownerCacheTtlMs: number;
  readonly replicaHeartbeatIntervalMs: number;
  readonly replicaLeaseTtlMs: number;
  readonly ownerWaitMs: number;
  readonly handoffMode: 'fenced' | 'off';
  /** Upper bound for the whole fence before a new owner's Hello reaches its gateway. */
  readonly handoffTimeoutMs: number;
  /** Wait after the previous owner's peer port refuses: its gateway's disconnect write lands. */
  readonly handoffRefusedGraceMs: number;
  /** How long a releasing owner waits for its gateway's disconnect write before acknowledging. */
  readonly handoffDisconnectWaitMs: number;
  readonly sshTunnelsPerToken: number;
  readonly sshTunnelsPerSandbox: number;
  readonly limitRules: ReadonlyArray<{ readonly name: string; readonly trafficClass: string; readonly key: 'token' | 'sandbox' | 'client-address'; readonly max: number }>;
  readonly limitLeaseTtlMs: number;
  readonly limitFallbackPolicy: 'local-split' | 'local-full' | 'deny';
  readonly limitReuseMs: number;
  readonly peerConnectTimeoutMs: number;
  readonly upstreamConnectTimeoutMs: number;
  readonly upstreamResponseTimeoutMs: number;
  readonly shutdownGraceMs: number;
  readonly logLevel: LogLevel;
  readonly h2InitialWindowBytes: number;
  readonly serviceBaseDomains: readonly string[];
  readonly gatewayJwtIssuer?: string;
  readonly readinessMode: 'shadow' | 'off';
  readonly memorySaverMode: MemorySaverMode;
  readonly drainShedShare: number;
  readonly rebalanceMode: 'on' | 'off';
  readonly rebalanceMarginPct: number;
  readonly rebalanceIntervalMs: number;
  readonly rebalanceCooldownMs: number;
  readonly rebalanceMinSessionAgeMs: number;
  readonly rebalanceStepOutLeadMs: number;
  readonly rebalanceStepOutMaxMs: number;
  readonly shedParkMs: number;
  readonly terminationGraceSeconds?: number;
  readonly peerHost?: string;
  readonly adminAllowCidrs: readonly string[];
  readonly adminToken?: string;
  readonly tracing: 'off' | 'otlp';
  readonly otlpTracesUrl?: string;
  /** mTLS between sidecars on the peer port (peer URLs are https://). */
  readonly peerTls?: PeerTlsConfig;
  readonly ownerNegativeCacheTtlMs: number;
  readonly ownerNegativeCacheMaxEntries: number;
  readonly postgresPoolSize: number;
  readonly postgresLookupPoolSize: number;
  readonly postgresLookupQueueMax: number;
}

/** The merged settings (defaults < file < env < flags) before derived fields are added. */
export const configInputSchema = z
  .strictObject({
    ...scalarShape,
    gatewayTls: z.strictObject(gatewayTlsShape).optional(),
    tls: z.strictObject(tlsShape).optional(),
    peerTls: z.strictObject(peerTlsShape).optional(),
  })
  .superRefine((cfg, ctx) => {
    if (cfg.limitReuseMs * 9 > cfg.limitLeaseTtlMs) {
      ctx.addIssue({
        code: 'custom',
        path: ['limitReuseMs'],
        message: `limitReuseMs (${cfg.limitReuseMs}) must be at most a ninth of limitLeaseTtlMs (${cfg.limitLeaseTtlMs}): a parked slot is not renewed`,
      });
    }
    if (cfg.redisUrl !== undefined && cfg.databaseUrl === undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['redisUrl'],
        message:
          'redisUrl is set but databaseUrl is not: Redis is only a cache and limit store in front of ' +
          'Postgres ownership. Set databaseUrl for cluster mode, or remove redisUrl for embedded mode',
      });
    }
    if (cfg.databaseUrl !== undefined && cfg.peerSecret === undefined && cfg.peerTls === undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['peerSecret'],
        message:
          'peerSecret or peerTls is required in cluster mode (databaseUrl is set): replicas authenticate ' +
          'each other with it. Set --peer-secret-file / OHS_PEER_SECRET_FILE (or OHS_PEER_SECRET), ' +
          'or peer mTLS with --peer-tls-cert, --peer-tls-key and --peer-tls-ca',
      });
    }
    if (cfg.peerTls?.identity === 'spiffe' && cfg.peerTls.spiffeIdTemplate === undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['peerTls', 'spiffeIdTemplate'],
        message: `peerTls.identity is spiffe but no SPIFFE id template is set, e.g. spiffe://cluster.local/ns/openshell/replica/${SPIFFE_REPLICA_PLACEHOLDER}`,
      });
    }
    if (cfg.peerUrl !== undefined && cfg.peerUrl.startsWith('https:') !== (cfg.peerTls !== undefined)) {
      ctx.addIssue({
        code: 'custom',
        path: ['peerUrl'],
        message: cfg.peerTls === undefined ? 'peerUrl is https:// but peer TLS is not configured (--peer-tls-cert, --peer-tls-key, --peer-tls-ca)' : 'peer TLS is on, so peerUrl must be https://',
      });
    }
    if (cfg.databaseUrl !== undefined && cfg.peerUrl === undefined && cfg.peerHost === undefined && peerListenIsWildcard(cfg.peerListen)) {
      ctx.addIssue({
        code: 'custom',
        path: ['peerUrl'],
        message:
          `peerUrl is required in cluster mode when peerListen (${cfg.peerListen}) binds a wildcard ` +
          'address: other replicas need an address they can dial: set peerHost to the pod IP (OHS_PEER_HOST=$(POD_IP)) or peerUrl, e.g. http://<pod-ip>:8443',
      });
    }
    if (cfg.replicaHeartbeatIntervalMs >= cfg.replicaLeaseTtlMs) {
      ctx.addIssue({
        code: 'custom',
        path: ['replicaHeartbeatIntervalMs'],
        message: 'replicaHeartbeatIntervalMs must be less than replicaLeaseTtlMs, or every lease expires between beats',
      });
    }
    if (cfg.tracing === 'otlp' && cfg.otlpTracesUrl === undefined) {
      ctx.addIssue({ code: 'custom', path: ['otlpTracesUrl'], message: 'tracing is otlp but otlpTracesUrl is not set' });
    }
    if (cfg.gatewayTls !== undefined && !cfg.gatewayUrl.startsWith('https:')) {
      ctx.addIssue({
        code: 'custom',
        path: ['gatewayTls'],
        message: 'gatewayTls is set but gatewayUrl is not https://',
      });
    }
    if ((cfg.gatewayTls?.certFile === undefined) !== (cfg.gatewayTls?.keyFile === undefined)) {
      ctx.addIssue({
        code: 'custom',
        path: ['gatewayTls'],
        message: 'gatewayTls.certFile and gatewayTls.keyFile must be set together',
      });
    }
  });

/** Full validation: merged input → config with derived `mode` and default `peerUrl`. */
export const sidecarConfigSchema = configInputSchema.transform((cfg): SidecarConfig => {
  const peerUrl = cfg.peerUrl ?? derivePeerUrl(cfg.peerListen, cfg.peerTls === undefined ? 'http' : 'https');
  return {
    ...cfg,
    mode: cfg.databaseUrl === undefined ? 'embedded' : 'cluster',
    ...(peerUrl === undefined ? {} : { peerUrl }),
  };
});

function peerListenIsWildcard(peerListen: string): boolean {
  try {
    return isWildcardHost(parseHostPort(peerListen).host);
  } catch {
    return false; // reported by the field's own check
  }
}

/**
 * `http://<host>:<port>` (`https://` with peer TLS) of the peer listener when that is dialable from
 * elsewhere: not a wildcard address, and not port 0 (only known once bound).
 */
export function derivePeerUrl(peerListen: string, scheme: 'http' | 'https' = 'http'): string | undefined {
  const hp = parseHostPort(peerListen);
  if (isWildcardHost(hp.host) || hp.port === 0) return undefined;
  return `${scheme}://${formatHostPort(hp)}`;
}
