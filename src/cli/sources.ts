// Where `status` and `explain` get their answers: one sidecar's admin endpoint (the default), or the
// stores directly (--database-url), asking each replica's peer port when the peer secret is given.
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { createRedisClient } from '../ownership/redis-connect.ts';
import pg from 'pg';
import pino from 'pino';
import { fetchPeerView } from '../admin/peer-client.ts';
import type { StatusSources } from '../admin/cluster-status.ts';
import type { ExplainSources } from '../admin/explain.ts';
import { phaseName } from '../admin/inspect.ts';
import { DEFAULT_LIMIT_RULES } from '../limits/rules.ts';
import { slotKey } from '../limits/slots.ts';
import { createGatewayObjects, type GatewayObjects } from '../ownership/gateway-objects.ts';
import * as sql from '../ownership/sql.ts';

export const CLI_OPTIONS = {
  admin: { type: 'string' },
  'admin-token': { type: 'string' },
  json: { type: 'boolean', default: false },
  'database-url': { type: 'string' },
  'gateway-database-url': { type: 'string' },
  'redis-url': { type: 'string' },
  'redis-key-prefix': { type: 'string' },
  'peer-secret': { type: 'string' },
  'peer-secret-file': { type: 'string' },
  'replica-lease-ttl-ms': { type: 'string' },
  'timeout-ms': { type: 'string' },
  help: { type: 'boolean', short: 'h', default: false },
} as const;

export type CliValues = ReturnType<typeof parseCli>['values'];

export function parseCli(argv: string[]) {
  return parseArgs({ args: argv, options: CLI_OPTIONS, allowPositionals: true, strict: true });
}

/** The admin URL: --admin, else the local sidecar's OHS_ADMIN_LISTEN (inside its pod), else 127.0.0.1:9091. */
export function adminUrl(values: CliValues, env: NodeJS.ProcessEnv): string {
  if (values.admin) return values.admin.includes('://') ? values.admin : `http://${values.admin}`;
  const listen = env.OHS_ADMIN_LISTEN;
  const m = listen ? /^(.*):(\d+)$/.exec(listen) : null;
  if (m) {
    const host = m[1] === '0.0.0.0' || m[1] === '[::]' || m[1] === '' ? '127.0.0.1' : (m[1] as string);
    return `http://${host}:${m[2]}`;
  }
  return 'http://127.0.0.1:9091';
}

export async function getAdminJson<T>(base: string, path: string, token: string | undefined, timeoutMs: number): Promise<{ status: number; body: T }> {
  const res = await fetch(new URL(path, base), {
    headers: token ? { authorization: `Bearer ${token}` } : {},
    signal: AbortSignal.timeout(timeoutMs),
  });
  return { status: res.status, body: (await res.json()) as T };
}

export interface DirectSources {
  status: StatusSources;
  explain: ExplainSources;
  close(): Promise<void>;
}

export function directSources(values: CliValues, env: NodeJS.ProcessEnv): DirectSources {
  const databaseUrl = values['database-url'] as string;
  const prefix = values['redis-key-prefix'] ?? env.OHS_REDIS_KEY_PREFIX ?? 'ohs:';
  const leaseTtlMs = Number(values['replica-lease-ttl-ms'] ?? env.OHS_REPLICA_LEASE_TTL_MS ?? 10_000);
  const secretFile = values['peer-secret-file'] ?? env.OHS_PEER_SECRET_FILE;
  const secret = values['peer-secret'] ?? (secretFile ? readFileSync(secretFile, 'utf8').replace(/[\r\n]+$/, '') : env.OHS_PEER_SECRET);
  const pool = new pg.Pool({ connectionString: databaseUrl, max: 2, connectionTimeoutMillis: 3_000, statement_timeout: 5_000, application_name: 'openshell-ha-sidecar-cli' });
  pool.on('error', () => undefined);
  const redisUrl = values['redis-url'];
  const redis = redisUrl ? createRedisClient(redisUrl, { maxRetriesPerRequest: 1, connectTimeout: 2_000, commandTimeout: 3_000, retryStrategy: () => null }) : null;
  redis?.on('error', () => undefined);
  const objects: GatewayObjects = createGatewayObjects(values['gateway-database-url'] ?? databaseUrl, pino({ level: 'silent' }));
  const peerView = secret
    ? (r: { peerUrl: string }, sandboxId?: string) => fetchPeerView({ peerUrl: r.peerUrl, secret, origin: 'cli', ...(sandboxId ? { sandboxId } : {}) })
    : undefined;
  const status: StatusSources = {
    pg: pool,
    leaseTtlMs,
    redis,
    limitKeyPrefix: `${prefix}limits:`,
    reconcilerLease: () => objects.reconcilerLease(),
    ...(peerView ? { peerView } : {}),
  };
  const explain: ExplainSources = {
    liveReplicas: async () => (await pool.query<sql.ReplicaRow>(sql.LIVE_REPLICAS, [leaseTtlMs])).rows.map((r) => ({ replicaId: r.replica_id, peerUrl: r.peer_url })),
    ...(peerView ? { peerView: (r, id) => peerView(r, id) } : {}),
    gatewayRow: async (id) => {
      const rec = await objects.sandboxRecord?.(id);
      if (rec === undefined || rec === null) return rec;
      return { phase: phaseName(rec.phase), layout: rec.layout, conditions: rec.conditions, ageMs: Date.now() - rec.updatedAtMs };
    },
    reconcilerLease: () => objects.reconcilerLease(),
    // The default sandbox-keyed rule, counted in Redis as the sidecars count it.
    slots: async (id) => {
      if (!redis) return [];
      const [sec, usec] = await redis.time();
      const nowMs = Number(sec) * 1000 + Math.floor(Number(usec) / 1000);
      return Promise.all(
        DEFAULT_LIMIT_RULES.filter((r) => r.key === 'sandbox').map(async (rule) => ({
          rule: rule.name,
          max: rule.max,
          held: await redis.zcount(slotKey(`${prefix}limits:`, rule, id), `(${nowMs}`, '+inf'),
          scope: 'cluster' as const,
        })),
      );
    },
    idByName: (name, workspace) => objects.sandboxIdByName(name, workspace),
  };
  return {
    status,
    explain,
    async close() {
      redis?.disconnect();
      await Promise.all([pool.end().catch(() => undefined), objects.close()]);
    },
  };
}
