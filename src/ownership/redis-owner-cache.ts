// The Redis layer of owner lookups: a shared cache of owner records plus the pub/sub channel that
// carries invalidations between replicas (DESIGN §4).
//
// Redis is an optimisation, never the truth. Every call fails fast while Redis is down (no offline
// queue), the caller falls back to Postgres, and the outage is logged once. Reconnection goes on
// forever with capped backoff.
//
// Stale entries: a replica may read the old owner from Postgres just before a claim commits and
// write it to Redis just after the claimer deleted the key. To rule that out, each sandbox has a
// version key that every invalidation increments; a reader notes the version before its Postgres
// read and the write only happens if the version is unchanged (checked atomically in a script).
import type { Redis } from 'ioredis';
import { createRedisClient } from './redis-connect.ts';
import type { Logger } from 'pino';
import type { OwnerRecord } from './types.ts';

export type RedisRead =
  | { kind: 'hit'; owner: OwnerRecord; ttlMs: number }
  | { kind: 'miss'; version: string }
  | { kind: 'unavailable' };

export interface RedisOwnerCache {
  start(): Promise<void>;
  close(): Promise<void>;
  /** Both connections are up (commands would be attempted). */
  isReady(): boolean;
  read(sandboxId: string): Promise<RedisRead>;
  /** Stores `owner` unless the sandbox was invalidated since `version` was read. */
  write(owner: OwnerRecord, ttlMs: number, version: string): Promise<void>;
  /** Drops the cached entry; with `publish`, also tells every replica. Failures are remembered and retried on recovery. */
  invalidate(sandboxId: string, publish: boolean): Promise<void>;
  ping(): Promise<boolean>;
}

export interface RedisOwnerCacheOptions {
  url: string;
  keyPrefix: string;
  logger: Logger;
  /** An invalidation published by any replica (this one included). */
  onInvalidation: (sandboxId: string) => void;
  /** Redis came back after an outage (or the subscription was re-established): invalidations may have been missed. */
  onResync: () => void;
  /** Shown in Redis CLIENT LIST (sanitised); typically the replica id. */
  clientName?: string;
  connectTimeoutMs?: number;
  commandTimeoutMs?: number;
  reconnectMaxMs?: number;
  /** How many failed invalidations are remembered before recovery flushes every owner key instead. */
  maxPendingInvalidations?: number;
}

// The version key outlives every owner entry (whose TTL is capped well below this).
const VERSION_TTL_MS = 10 * 60_000;

const WRITE_IF_UNCHANGED = `
local v = redis.call('GET', KEYS[2])
if (v == false and ARGV[3] == '') or v == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0`;

// KEYS: each sandbox's version key and owner key, in pairs. ARGV[1]: the version keys' TTL (ms);
// ARGV[2]: the channel; then, for each pair, the sandbox id behind '+' (published) or '-' (not).
// Every invalidation of one event-loop turn goes in one call: a claim or release batch writes up to
// 500 at once, and each replica re-invalidates what a NOTIFY told it of.
const INVALIDATE = `
for i = 1, #KEYS, 2 do
  redis.call('INCR', KEYS[i])
  redis.call('PEXPIRE', KEYS[i], ARGV[1])
  redis.call('DEL', KEYS[i + 1])
  local tagged = ARGV[(i + 1) / 2 + 2]
  if string.sub(tagged, 1, 1) == '+' then redis.call('PUBLISH', ARGV[2], string.sub(tagged, 2)) end
end
return #KEYS / 2`;

/** Sandboxes per invalidation script call (a turn with more makes several calls). */
const INVALIDATE_BATCH_MAX = 500;

interface QueuedInvalidation {
  sandboxId: string;
  publish: boolean;
  done: () => void;
}

export function createRedisOwnerCache(opts: RedisOwnerCacheOptions): RedisOwnerCache {
  const log = opts.logger;
  const ownerKey = (id: string): string => `${opts.keyPrefix}owner:${id}`;
  const versionKey = (id: string): string => `${opts.keyPrefix}owner-ver:${id}`;
  const channel = `${opts.keyPrefix}owners`;
  const reconnectMaxMs = opts.reconnectMaxMs ?? 1000;
  const maxPending = opts.maxPendingInvalidations ?? 10_000;

  const common = {
    lazyConnect: true,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    connectTimeout: opts.connectTimeoutMs ?? 1000,
    commandTimeout: opts.commandTimeoutMs ?? 1000,
    // disconnect() during an outage arms this (ref'd) timer on the already-dead socket and never
    // clears it; keep it short so that close() does not hold the process for the 2 s default.
    disconnectTimeout: 100,
    retryStrategy: (times: number): number =>
      Math.min(reconnectMaxMs, 50 * 2 ** Math.min(times, 10)) + Math.floor(Math.random() * 50),
  };
  // CLIENT SETNAME rejects spaces; an invalid name would make every connection attempt fail.
  const name = `ohs-owners${opts.clientName === undefined ? '' : `-${opts.clientName.replace(/[^\w.:-]/g, '_')}`}`;
  const cmd = createRedisClient(opts.url, { ...common, connectionName: name });
  // Subscriptions are re-issued by us on every 'ready' (see below), so that we know when they are back.
  const sub = createRedisClient(opts.url, { ...common, connectionName: `${name}-sub`, autoResubscribe: false });
  cmd.defineCommand('ohsInvalidateOwners', { lua: INVALIDATE });
  const invalidateOwners = (cmd as unknown as { ohsInvalidateOwners(numKeys: number, ...args: Array<string | number>): Promise<unknown> }).ohsInvalidateOwners.bind(cmd);

  let closing = false;
  let inOutage = false;
  let subscribedOnce = false;
  let markSubscribed: () => void = () => {};
  const firstSubscription = new Promise<void>((resolve) => {
    markSubscribed = resolve;
  });
  const pending = new Set<string>();
  let pendingOverflow = false;

  function outage(err?: unknown): void {
    if (closing || inOutage) return;
    inOutage = true;
    log.warn({ err }, 'redis unavailable; owner lookups fall back to postgres');
  }

  function isReady(): boolean {
    return cmd.status === 'ready' && sub.status === 'ready';
  }

  function recoverIfBothReady(): void {
    if (closing || !isReady() || !inOutage) return;
    inOutage = false;
    log.info('redis recovered');
    void flushPending();
    opts.onResync();
  }

  for (const client of [cmd, sub]) {
    client.on('error', (err: unknown) => outage(err));
    client.on('close', () => outage());
  }
  cmd.on('ready', () => recoverIfBothReady());
  sub.on('ready', () => {
    if (closing) return;
    sub.subscribe(channel).then(
      () => {
        // A re-established subscription may have missed messages even if cmd never went down.
        if (subscribedOnce) opts.onResync();
        subscribedOnce = true;
        markSubscribed();
        recoverIfBothReady();
      },
      (err: unknown) => outage(err),
    );
  });
  sub.on('message', (ch: string, message: string) => {
    if (ch === channel && message.length > 0) opts.onInvalidation(message);
  });

  // A failed command (e.g. a timeout) may leave the connection up, so no 'ready' will announce the
  // end of that outage: the next command that works does.
  function succeeded(): void {
    if (inOutage) recoverIfBothReady();
  }

  function remember(sandboxId: string): void {
    if (pendingOverflow) return;
    pending.add(sandboxId);
    if (pending.size > maxPending) {
      pending.clear();
      pendingOverflow = true;
    }
  }

  async function flushPending(): Promise<void> {
    try {
      if (pendingOverflow) {
        // Too many missed invalidations to track: drop every owner entry of this deployment.
        let cursor = '0';
        do {
          const [next, keys] = await cmd.scan(cursor, 'MATCH', `${opts.keyPrefix}owner:*`, 'COUNT', 500);
          cursor = next;
          if (keys.length > 0) await cmd.del(...keys);
        } while (cursor !== '0');
        pendingOverflow = false; // only now: a scan cut short by another outage is redone next time
      }
      const ids = [...pending];
      pending.clear();
      await Promise.all(ids.map((id) => invalidate(id, false)));
    } catch (err) {
      outage(err);
    }
  }

  // Invalidations asked for in this turn, sent together once it ends (see INVALIDATE).
  let queued: QueuedInvalidation[] = [];

  function invalidate(sandboxId: string, publish: boolean): Promise<void> {
    if (cmd.status !== 'ready') {
      remember(sandboxId);
      return Promise.resolve();
    }
    return new Promise<void>((done) => {
      queued.push({ sandboxId, publish, done });
      if (queued.length === 1) queueMicrotask(sendQueued);
    });
  }

  function sendQueued(): void {
    const all = queued;
    queued = [];
    for (let i = 0; i < all.length; i += INVALIDATE_BATCH_MAX) void sendInvalidations(all.slice(i, i + INVALIDATE_BATCH_MAX));
  }

  async function sendInvalidations(batch: QueuedInvalidation[]): Promise<void> {
    const keys: string[] = [];
    const tagged: string[] = [];
    for (const q of batch) {
      keys.push(versionKey(q.sandboxId), ownerKey(q.sandboxId));
      tagged.push(`${q.publish ? '+' : '-'}${q.sandboxId}`);
    }
    try {
      await invalidateOwners(keys.length, ...keys, VERSION_TTL_MS, channel, ...tagged);
      succeeded();
    } catch (err) {
      for (const q of batch) remember(q.sandboxId);
      outage(err);
    } finally {
      for (const q of batch) q.done();
    }
  }

  async function settle(client: Redis): Promise<void> {
    // Resolves once the first connection attempt has either succeeded or failed.
    await new Promise<void>((resolve) => {
      const done = (): void => {
        client.off('ready', done);
        client.off('error', done);
        client.off('end', done);
        resolve();
      };
      client.on('ready', done);
      client.on('error', done);
      client.on('end', done);
      client.connect().catch(() => {
        /* reported through 'error'; reconnection continues */
      });
    });
  }

  async function shutdown(client: Redis): Promise<void> {
    if (client.status === 'end') return;
    if (client.status === 'reconnecting' || client.status === 'wait' || client.status === 'close') {
      client.disconnect(); // no live socket: this only cancels the reconnect timer
      return;
    }
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, 1000);
      timer.unref();
      client.once('end', () => {
        clearTimeout(timer);
        resolve();
      });
      client.disconnect();
    });
  }

  return {
    async start() {
      await Promise.all([settle(cmd), settle(sub)]);
      if (sub.status === 'ready') {
        // Invalidations published right after start() must not be missed.
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([
          firstSubscription,
          new Promise<void>((resolve) => {
            timer = setTimeout(resolve, common.commandTimeout);
            timer.unref();
          }),
        ]);
        clearTimeout(timer);
      }
      if (!isReady() || !subscribedOnce) outage();
    },

    async close() {
      closing = true;
      await Promise.all([shutdown(cmd), shutdown(sub)]);
      cmd.removeAllListeners();
      sub.removeAllListeners();
      // ioredis may still report the teardown of a socket; keep a sink so it is never unhandled.
      cmd.on('error', () => {});
      sub.on('error', () => {});
    },

    isReady,

    async read(sandboxId) {
      if (cmd.status !== 'ready') return { kind: 'unavailable' };
      try {
        const results = await cmd.pipeline().get(ownerKey(sandboxId)).pttl(ownerKey(sandboxId)).get(versionKey(sandboxId)).exec();
        if (results === null) return { kind: 'unavailable' };
        for (const [err] of results) if (err) throw err;
        succeeded();
        const raw = results[0]?.[1];
        const pttl = results[1]?.[1];
        const version = results[2]?.[1];
        const versionText = typeof version === 'string' ? version : '';
        if (typeof raw === 'string' && typeof pttl === 'number' && pttl > 0) {
          const owner = parseOwner(raw, sandboxId);
          if (owner !== null) return { kind: 'hit', owner, ttlMs: pttl };
        }
        return { kind: 'miss', version: versionText };
      } catch (err) {
        outage(err);
        return { kind: 'unavailable' };
      }
    },

    async write(owner, ttlMs, version) {
      if (cmd.status !== 'ready' || !(ttlMs >= 1)) return;
      try {
        await cmd.eval(
          WRITE_IF_UNCHANGED,
          2,
          ownerKey(owner.sandboxId),
          versionKey(owner.sandboxId),
          JSON.stringify(owner),
          String(Math.floor(ttlMs)),
          version,
        );
        succeeded();
      } catch (err) {
        outage(err);
      }
    },

    invalidate,

    async ping() {
      if (!isReady()) return false;
      try {
        const ok = (await cmd.ping()) === 'PONG';
        if (ok) succeeded();
        return ok;
      } catch (err) {
        outage(err);
        return false;
      }
    },
  };
}

function parseOwner(raw: string, sandboxId: string): OwnerRecord | null {
  try {
    const v: unknown = JSON.parse(raw);
    if (typeof v !== 'object' || v === null) return null;
    const o = v as Record<string, unknown>;
    if (
      o.sandboxId !== sandboxId ||
      typeof o.replicaId !== 'string' ||
      typeof o.peerUrl !== 'string' ||
      typeof o.epoch !== 'number' ||
      typeof o.claimedAtMs !== 'number'
    ) {
      return null;
    }
    return { sandboxId, replicaId: o.replicaId, peerUrl: o.peerUrl, epoch: o.epoch, claimedAtMs: o.claimedAtMs };
  } catch {
    return null;
  }
}
