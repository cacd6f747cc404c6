// Shared bits for the limit tests: limiters that are closed after each test, and reading metrics.
import { Redis } from 'ioredis';
import { Registry } from 'prom-client';
import type { Logger } from 'pino';
import { DEFAULT_LIMIT_RULES } from '../../src/limits/rules.ts';
import type { LimitRule } from '../../src/limits/rules.ts';
import { createSlotLimiter } from '../../src/limits/slots.ts';
import type { SlotLimiter, SlotLimiterOptions } from '../../src/limits/slots.ts';
import { captureLogger } from '../ownership/support.ts';

export interface TestLimiter extends SlotLimiter {
  registry: Registry;
  logs: ReturnType<typeof captureLogger>;
}

/** Opens limiters with quick timings and closes every one of them in `closeAll()`. */
export function limiterFactory(defaults: { keyPrefix: string; redisUrl?: string }) {
  const opened = new Set<SlotLimiter>();
  const holders = new Set<string>();
  return {
    /** Connection names (CLIENT LIST) of every limiter this factory opened. */
    connectionNames(): string[] {
      return [...holders].map((h) => `ohs-limits-${h}`);
    },
    open(overrides: Partial<SlotLimiterOptions> & { holderId: string; rules?: readonly LimitRule[] }): TestLimiter {
      const logs = captureLogger();
      const registry = new Registry();
      const limiter = createSlotLimiter({
        keyPrefix: defaults.keyPrefix,
        ...(defaults.redisUrl === undefined ? {} : { redisUrl: defaults.redisUrl }),
        leaseTtlMs: 2000,
        rules: DEFAULT_LIMIT_RULES,
        liveReplicas: () => 2,
        logger: logs.logger as Logger,
        registry,
        connectTimeoutMs: 300,
        commandTimeoutMs: 500,
        reconnectMaxMs: 100,
        ...overrides,
      });
      opened.add(limiter);
      holders.add(overrides.holderId);
      return Object.assign(limiter, { registry, logs });
    },
    async closeAll(): Promise<void> {
      await Promise.all([...opened].map((l) => l.close()));
      opened.clear();
    },
  };
}

/** The value of one series of a counter or gauge (0 when absent). */
export async function metricValue(registry: Registry, name: string, labels: Record<string, string>): Promise<number> {
  const metric = registry.getSingleMetric(name);
  if (metric === undefined) throw new Error(`no metric ${name}`);
  const { values } = await metric.get();
  const hit = values.find((v) => Object.entries(labels).every(([k, want]) => String(v.labels[k]) === want));
  return hit?.value ?? 0;
}

/** Deletes every key under `prefix` (keys also expire on their own; this keeps the shared Redis tidy). */
export async function deleteKeys(redis: Redis, prefix: string): Promise<void> {
  let cursor = '0';
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 500);
    cursor = next;
    if (keys.length > 0) await redis.del(...keys);
  } while (cursor !== '0');
}

/** An inspection client that never queues while disconnected. */
export function inspector(url: string): Redis {
  const r = new Redis(url, { enableOfflineQueue: false, maxRetriesPerRequest: 1, lazyConnect: true, retryStrategy: () => 50 });
  r.on('error', () => {});
  return r;
}

/**
 * Leak check: after close(), none of `names` may still be connected. A closed socket takes a moment
 * to disappear from the server's list, hence the polling.
 */
export async function expectNoConnections(redis: Redis, names: string[], timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let left: string[] = [];
  do {
    const list = String(await redis.client('LIST'));
    left = names.filter((n) => list.includes(` name=${n} `));
    if (left.length === 0) return;
    await new Promise((r) => setTimeout(r, 20));
  } while (Date.now() < deadline);
  throw new Error(`connections left open after close(): ${left.join(', ')}`);
}
