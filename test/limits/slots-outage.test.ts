import type { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { httpStatusFor } from '../../src/errors.ts';
import type { LimitRule } from '../../src/limits/rules.ts';
import { slotKey } from '../../src/limits/slots.ts';
import type { AcquireResult } from '../../src/limits/slots.ts';
import { freePort, startOwnRedis } from '../helpers/own-redis.ts';
import type { OwnRedis } from '../helpers/own-redis.ts';
import { testRedisPrefix } from '../helpers/services.ts';
import { sleep, startCuttableProxy, waitFor } from '../ownership/support.ts';
import type { CuttableProxy } from '../ownership/support.ts';
import { expectNoConnections, inspector, limiterFactory, metricValue } from './support.ts';

const prefix = testRedisPrefix('limits_outage');
const PER_TOKEN: LimitRule = { name: 'ssh-per-token', trafficClass: 'ssh-tunnel', key: 'token', max: 3 };
const ssh = (token: string, sandboxId = 'sbx-out'): { cls: string; token: string; sandboxId: string } => ({ cls: 'ssh-tunnel', token, sandboxId });

let own: OwnRedis;
let redis: Redis;
let proxy: CuttableProxy | undefined;
let limiters: ReturnType<typeof limiterFactory>;

beforeAll(async () => {
  own = await startOwnRedis();
  redis = inspector(own.url);
  limiters = limiterFactory({ keyPrefix: prefix, redisUrl: own.url });
});

afterEach(async () => {
  await limiters.closeAll();
  await proxy?.close();
  proxy = undefined;
  await own.start().catch(() => {}); // a test that failed mid-outage leaves it stopped
  await expectNoConnections(await connected(redis), limiters.connectionNames());
});

afterAll(async () => {
  redis?.disconnect();
  await own?.stop();
});

async function connected(r: Redis): Promise<Redis> {
  if (r.status !== 'ready') {
    await waitFor('the inspection client to connect', async () => {
      if (r.status === 'wait' || r.status === 'end') await r.connect().catch(() => {});
      return r.status === 'ready';
    });
  }
  return r;
}

function ok(r: AcquireResult): Extract<AcquireResult, { ok: true }> {
  if (!r.ok) throw new Error(`expected a slot, got ${r.error.message}`);
  return r;
}

describe('limits while redis is unavailable', () => {
  it('falls back to ceil(max / live replicas) per replica, logs it once, and restores global counting with the open tunnels', async () => {
    const a = limiters.open({ holderId: 'out-a', liveReplicas: () => 2 });
    const b = limiters.open({ holderId: 'out-b', liveReplicas: () => 2 });
    const beforeOutage = ok(await a.acquire(ssh('out-tok')));
    const releasedDuringOutage = ok(await a.acquire(ssh('out-tok2')));
    expect(a.policy()).toBe('global');

    await own.stop();
    await waitFor('both replicas to notice', () => a.policy() === 'local-split' && b.policy() === 'local-split');

    // ceil(3 / 2) = 2 per replica; A's tunnel from before the outage is still open and counts.
    const a2 = ok(await a.acquire(ssh('out-tok')));
    const a3 = await a.acquire(ssh('out-tok'));
    expect(a3.ok).toBe(false);
    if (a3.ok) return;
    expect(a3.error.code).toBe('OHS_ERR_LIMIT');
    expect(httpStatusFor(a3.error)).toBe(429);
    expect(a3.error.message).toBe(
      'limit ssh-per-token reached: at most 3 concurrent ssh tunnels per session token (2 on this replica while redis is unavailable)',
    );
    const b1 = ok(await b.acquire(ssh('out-tok')));
    const b2 = ok(await b.acquire(ssh('out-tok')));
    expect((await b.acquire(ssh('out-tok'))).ok).toBe(false);
    // ceil(20 / 2) = 10 per replica for the sandbox rule (requests without a token: only that rule applies).
    const bySandbox = await Promise.all(Array.from({ length: 12 }, () => b.acquire({ cls: 'ssh-tunnel', sandboxId: 'sbx-split' })));
    expect(bySandbox.filter((r) => r.ok)).toHaveLength(10);
    expect(await b.held('ssh-per-token', 'out-tok')).toBe(2); // this replica's count while local
    releasedDuringOutage.release();

    for (const l of [a, b]) {
      expect(l.logs.messages('warn').filter((m) => m.startsWith('redis unavailable'))).toEqual(['redis unavailable: limits enforced locally (local-split)']);
      expect(await metricValue(l.registry, 'ohs_limit_policy', { policy: 'local-split' })).toBe(1);
      expect(await metricValue(l.registry, 'ohs_limit_policy', { policy: 'global' })).toBe(0);
    }

    await own.start(); // empty: every slot must be written back by its holder
    await waitFor('global limits to be restored', () => a.policy() === 'global' && b.policy() === 'global', 5000);
    for (const l of [a, b]) {
      expect(l.logs.messages('info').filter((m) => m.startsWith('redis recovered'))).toEqual(['redis recovered: global limits restored']);
      expect(await metricValue(l.registry, 'ohs_limit_policy', { policy: 'global' })).toBe(1);
    }

    // Cluster-wide again: A's 2 and B's 2 open tunnels are all counted (4 > 3: nobody gets another).
    await connected(redis);
    expect(await a.held('ssh-per-token', 'out-tok')).toBe(4);
    expect(await b.held('ssh-per-sandbox', 'sbx-split')).toBe(10);
    expect(await a.held('ssh-per-token', 'out-tok2')).toBe(0);
    const members = await redis.zrange(slotKey(prefix, PER_TOKEN, 'out-tok'), '0', '-1');
    expect(members.filter((m) => m.startsWith('out-a:'))).toHaveLength(2);
    expect(members.filter((m) => m.startsWith('out-b:'))).toHaveLength(2);
    expect((await a.acquire(ssh('out-tok'))).ok).toBe(false);

    // Slots taken locally during the outage are released from redis like any other.
    for (const r of [beforeOutage, a2, b1]) r.release();
    for (const r of bySandbox) if (r.ok) r.release();
    await Promise.all([a.held('ssh-per-token', 'out-tok'), b.held('ssh-per-token', 'out-tok')]); // flush both connections
    expect(await redis.zrange(slotKey(prefix, PER_TOKEN, 'out-tok'), '0', '-1')).toEqual([expect.stringMatching(/^out-b:/)]);
    expect(await redis.zcard(slotKey(prefix, { ...PER_TOKEN, name: 'ssh-per-sandbox', key: 'sandbox' }, 'sbx-split'))).toBe(0);
    ok(await a.acquire(ssh('out-tok')));
    ok(await a.acquire(ssh('out-tok')));
    expect((await b.acquire(ssh('out-tok'))).ok).toBe(false);
    b2.release();
  });

  it('removes slots released during a network cut as soon as redis is reachable again', async () => {
    proxy = await startCuttableProxy(own.port);
    const a = limiters.open({ holderId: 'cut-a', redisUrl: `redis://127.0.0.1:${proxy.port}`, leaseTtlMs: 5000 });
    const held = [ok(await a.acquire(ssh('cut-tok'))), ok(await a.acquire(ssh('cut-tok')))];
    await connected(redis);
    const key = slotKey(prefix, PER_TOKEN, 'cut-tok');
    expect(await redis.zcard(key)).toBe(2);

    await proxy.cut(); // redis keeps running, with its data
    await waitFor('the cut to be noticed', () => a.policy() === 'local-split');
    for (const r of held) r.release();
    expect(await redis.zcard(key)).toBe(2); // unreachable: removal has to wait

    await proxy.restore();
    await waitFor('global limits to be restored', () => a.policy() === 'global', 5000);
    // Gone at once, not after the 5 s lease.
    expect(await redis.zcard(key)).toBe(0);
    expect(a.logs.messages('warn').filter((m) => m.startsWith('redis unavailable'))).toHaveLength(1);
  });

  it('finds the new primary when the one it is connected to is demoted to a replica and its address moves on', async () => {
    // Redis keeps a demoted primary's client connections open (only Sentinel's own demotion closes
    // them) and answers their writes READONLY; an address such as a Kubernetes Service meanwhile
    // sends new connections to the new primary. The proxy is that address.
    const next = await startOwnRedis();
    const demoted = inspector(own.url);
    try {
      await connected(demoted);
      proxy = await startCuttableProxy(own.port);
      const a = limiters.open({ holderId: 'ro-a', redisUrl: `redis://127.0.0.1:${proxy.port}`, leaseTtlMs: 3000, renewIntervalMs: 200 });
      const held = [ok(await a.acquire(ssh('ro-tok'))), ok(await a.acquire(ssh('ro-tok')))];
      expect(a.policy()).toBe('global');

      proxy.retarget(next.port);
      await demoted.replicaof('127.0.0.1', String(next.port));
      // The next renewal is refused READONLY on the open connection: local counting, then a new
      // connection through the address, to the new primary, and the open tunnels written there.
      await waitFor('the demotion to be noticed', () => a.logs.messages('warn').includes('redis unavailable: limits enforced locally (local-split)'), 5000);
      await waitFor('global limits on the new primary', () => a.policy() === 'global', 5000);
      const onNext = await connected(inspector(next.url));
      try {
        expect(await onNext.zcard(slotKey(prefix, PER_TOKEN, 'ro-tok'))).toBe(2);
        ok(await a.acquire(ssh('ro-tok')));
        expect((await a.acquire(ssh('ro-tok'))).ok).toBe(false);
        expect(await onNext.zcard(slotKey(prefix, PER_TOKEN, 'ro-tok'))).toBe(3);
      } finally {
        onNext.disconnect();
      }
      expect(a.logs.messages('info')).toContain('redis recovered: global limits restored');
      for (const r of held) r.release();
    } finally {
      await demoted.replicaof('NO', 'ONE');
      demoted.disconnect();
      await next.stop();
    }
  });

  it('renews all slots with one script call per batch', async () => {
    const rules: LimitRule[] = [{ name: 'exec-per-sandbox', trafficClass: 'exec', key: 'sandbox', max: 100 }];
    const a = limiters.open({ holderId: 'batch-a', rules, leaseTtlMs: 3000, renewIntervalMs: 1000, renewBatchSize: 7 });
    const results = await Promise.all(Array.from({ length: 40 }, (_, i) => a.acquire({ cls: 'exec', sandboxId: `sbx-batch-${i % 4}` })));
    expect(results.every((r) => r.ok)).toBe(true);
    await connected(redis);
    await redis.config('RESETSTAT');
    await sleep(1150); // exactly one renewal
    const stats = await redis.info('commandstats');
    const calls = (cmd: string): number => Number(new RegExp(`cmdstat_${cmd}:calls=(\\d+)`).exec(stats)?.[1] ?? 0);
    expect(calls('evalsha') + calls('eval')).toBe(Math.ceil(40 / 7));
    // One ZADD per key of each call: 10 slots on each of 4 keys, in calls of 7 pairs, key by key
    // (7 | 3 + 4 | 6 + 1 | 7 | 2 + 5 | 5).
    expect(calls('zadd')).toBe(9);
    for (const r of results) if (r.ok) r.release();
  });

  it('can be configured to enforce the full limit on every replica instead', async () => {
    const dead = `redis://127.0.0.1:${await freePort()}`;
    const a = limiters.open({ holderId: 'full-a', redisUrl: dead, fallbackPolicy: 'local-full', liveReplicas: () => 3 });
    for (let i = 0; i < 3; i++) ok(await a.acquire(ssh('full-tok')));
    const refused = await a.acquire(ssh('full-tok'));
    expect(refused.ok === false && refused.error.message).toBe('limit ssh-per-token reached: at most 3 concurrent ssh tunnels per session token');
    expect(a.policy()).toBe('local-full');
    expect(a.logs.messages('warn')).toEqual(['redis unavailable: limits enforced locally (local-full)']);
  });

  it('can be configured to refuse limited connections while redis is down', async () => {
    const dead = `redis://127.0.0.1:${await freePort()}`;
    const a = limiters.open({ holderId: 'deny-a', redisUrl: dead, fallbackPolicy: 'deny' });
    const refused = await a.acquire(ssh('deny-tok'));
    expect(refused.ok).toBe(false);
    if (refused.ok) return;
    expect(refused.error.code).toBe('OHS_ERR_STORE_UNAVAILABLE');
    expect(httpStatusFor(refused.error)).toBe(503);
    expect(refused.rule.name).toBe('ssh-per-token');
    // Traffic that no rule applies to is not affected.
    expect((await a.acquire({ cls: 'unary' })).ok).toBe(true);
    expect(await metricValue(a.registry, 'ohs_limit_policy', { policy: 'deny' })).toBe(1);
    expect(await metricValue(a.registry, 'ohs_limit_refusals_total', { rule: 'ssh-per-token' })).toBe(1);
  });
});
