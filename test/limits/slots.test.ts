import net from 'node:net';
import type { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { httpStatusFor } from '../../src/errors.ts';
import type { LimitRule } from '../../src/limits/rules.ts';
import { slotKey } from '../../src/limits/slots.ts';
import type { AcquireResult } from '../../src/limits/slots.ts';
import { TEST_REDIS_URL, testRedisPrefix } from '../helpers/services.ts';
import { sleep, waitFor } from '../ownership/support.ts';
import { deleteKeys, expectNoConnections, inspector, limiterFactory, metricValue } from './support.ts';

const prefix = testRedisPrefix('limits_slots');
const limiters = limiterFactory({ keyPrefix: prefix, redisUrl: TEST_REDIS_URL });
let redis: Redis;

const PER_TOKEN: LimitRule = { name: 'ssh-per-token', trafficClass: 'ssh-tunnel', key: 'token', max: 3 };
const PER_SANDBOX: LimitRule = { name: 'ssh-per-sandbox', trafficClass: 'ssh-tunnel', key: 'sandbox', max: 20 };
const ssh = (token: string, sandboxId = 'sbx-1'): { cls: string; token: string; sandboxId: string } => ({ cls: 'ssh-tunnel', token, sandboxId });

beforeAll(async () => {
  redis = inspector(TEST_REDIS_URL);
  await redis.connect();
});

afterEach(async () => {
  await limiters.closeAll();
  await expectNoConnections(redis, limiters.connectionNames());
});

afterAll(async () => {
  await deleteKeys(redis, prefix);
  redis.disconnect();
});

function granted(results: AcquireResult[]): Array<Extract<AcquireResult, { ok: true }>> {
  return results.filter((r): r is Extract<AcquireResult, { ok: true }> => r.ok);
}

/**
 * Socket writes (write and writev calls) to the Redis port while `fn` runs, and their bytes, the
 * inspector's own left out. Counted in this process, so other test files sharing the Redis server
 * do not count.
 */
async function redisTraffic(fn: () => Promise<void>): Promise<{ writes: number; bytes: number }> {
  const port = Number(new URL(TEST_REDIS_URL).port || 6379);
  const proto = net.Socket.prototype as unknown as Record<'_write' | '_writev', (this: net.Socket, ...a: unknown[]) => unknown>;
  const originals = { _write: proto._write, _writev: proto._writev };
  const size = (chunk: unknown): number => (typeof chunk === 'string' ? Buffer.byteLength(chunk) : (chunk as Buffer).length);
  let writes = 0;
  let bytes = 0;
  proto._write = function (this: net.Socket, ...a: unknown[]) {
    if (this.remotePort === port && this !== (redis.stream as unknown)) {
      writes++;
      bytes += size(a[0]);
    }
    return originals._write.apply(this, a);
  };
  proto._writev = function (this: net.Socket, ...a: unknown[]) {
    if (this.remotePort === port && this !== (redis.stream as unknown)) {
      writes++;
      for (const c of a[0] as Array<{ chunk: unknown }>) bytes += size(c.chunk);
    }
    return originals._writev.apply(this, a);
  };
  try {
    await fn();
  } finally {
    proto._write = originals._write;
    proto._writev = originals._writev;
  }
  return { writes, bytes };
}

async function redisWrites(fn: () => Promise<void>): Promise<number> {
  return (await redisTraffic(fn)).writes;
}

describe('leased connection slots in redis', () => {
  it('acquires made in one event-loop turn reach Redis in one write, and so do releases', async () => {
    const a = limiters.open({ holderId: 'one-write', rules: [{ ...PER_SANDBOX, max: 100 }], leaseTtlMs: 60_000 });
    // Connected and enforcing globally before counting.
    const first = await a.acquire(ssh('one-write-t', 'one-write-sbx'));
    expect(first.ok && a.policy()).toBe('global');
    if (first.ok) first.release();
    await sleep(50);
    let held: AcquireResult[] = [];
    const acquireWrites = await redisWrites(async () => {
      held = await Promise.all(Array.from({ length: 40 }, (_, i) => a.acquire(ssh(`one-write-${i}`, 'one-write-sbx'))));
    });
    expect(granted(held)).toHaveLength(40);
    expect(await redis.zcard(slotKey(prefix, PER_SANDBOX, 'one-write-sbx'))).toBe(40);
    const releaseWrites = await redisWrites(async () => {
      for (const r of granted(held)) r.release();
      await sleep(100);
    });
    expect(await redis.zcard(slotKey(prefix, PER_SANDBOX, 'one-write-sbx'))).toBe(0);
    expect({ acquireWrites, releaseWrites }).toEqual({ acquireWrites: 1, releaseWrites: 1 });
  });


  it('never lets two replicas exceed a limit, even with 50 concurrent acquires', async () => {
    const rules: LimitRule[] = [PER_TOKEN, { ...PER_SANDBOX, max: 5 }];
    const a = limiters.open({ holderId: 'conc-a', rules });
    const b = limiters.open({ holderId: 'conc-b', rules });
    const tokens = ['t0', 't1', 't2', 't3', 't4'].map((t) => `conc-${t}`);
    const sandboxes = ['conc-s0', 'conc-s1'];
    const results = await Promise.all(
      Array.from({ length: 50 }, (_, i) => (i % 2 === 0 ? a : b).acquire({ cls: 'ssh-tunnel', token: tokens[i % 5], sandboxId: sandboxes[i % 2] })),
    );
    expect(a.policy()).toBe('global');

    // Each sandbox fills up (at most 3 of its 5 tokens can be full), and nothing goes beyond.
    const tokenCounts = await Promise.all(tokens.map((t) => redis.zcard(slotKey(prefix, PER_TOKEN, t))));
    const sandboxCounts = await Promise.all(sandboxes.map((s) => redis.zcard(slotKey(prefix, rules[1] as LimitRule, s))));
    expect(sandboxCounts).toEqual([5, 5]);
    for (const n of tokenCounts) expect(n).toBeLessThanOrEqual(3);
    expect(tokenCounts.reduce((x, y) => x + y, 0)).toBe(10);
    expect(granted(results)).toHaveLength(10);
    for (const r of results) if (!r.ok) expect(r.error.code).toBe('OHS_ERR_LIMIT');

    // Both holders got some, and their members say whose they are.
    const members = (await Promise.all(sandboxes.map((s) => redis.zrange(slotKey(prefix, rules[1] as LimitRule, s), '0', '-1')))).flat();
    expect(members.some((m) => m.startsWith('conc-a:'))).toBe(true);
    expect(members.some((m) => m.startsWith('conc-b:'))).toBe(true);
    expect(await a.held('ssh-per-sandbox', 'conc-s0')).toBe(5);

    const refusedByToken = await metricValue(a.registry, 'ohs_limit_refusals_total', { rule: 'ssh-per-token' });
    const refusedBySandbox = await metricValue(a.registry, 'ohs_limit_refusals_total', { rule: 'ssh-per-sandbox' });
    const refusedByB =
      (await metricValue(b.registry, 'ohs_limit_refusals_total', { rule: 'ssh-per-token' })) +
      (await metricValue(b.registry, 'ohs_limit_refusals_total', { rule: 'ssh-per-sandbox' }));
    expect(refusedByToken + refusedBySandbox + refusedByB).toBe(40);
    const heldByA = await metricValue(a.registry, 'ohs_limit_slots_held', { rule: 'ssh-per-sandbox' });
    const heldByB = await metricValue(b.registry, 'ohs_limit_slots_held', { rule: 'ssh-per-sandbox' });
    expect(heldByA + heldByB).toBe(10);

    for (const r of granted(results)) r.release();
    await Promise.all([a.held('ssh-per-sandbox', 'conc-s0'), b.held('ssh-per-sandbox', 'conc-s0')]);
    for (const key of [...tokens.map((t) => slotKey(prefix, PER_TOKEN, t)), ...sandboxes.map((s) => slotKey(prefix, rules[1] as LimitRule, s))]) {
      expect(await redis.zcard(key)).toBe(0);
    }
    expect(await metricValue(a.registry, 'ohs_limit_slots_held', { rule: 'ssh-per-sandbox' })).toBe(0);
  });

  it('refuses the fourth ssh tunnel of a token across replicas with the limit error, and a release frees a slot at once', async () => {
    const a = limiters.open({ holderId: 'rel-a' });
    const b = limiters.open({ holderId: 'rel-b' });
    const held = [await a.acquire(ssh('rel-tok')), await b.acquire(ssh('rel-tok')), await a.acquire(ssh('rel-tok'))];
    expect(held.map((r) => r.ok)).toEqual([true, true, true]);

    const fourth = await b.acquire(ssh('rel-tok'));
    expect(fourth.ok).toBe(false);
    if (fourth.ok) return;
    expect(fourth.rule.name).toBe('ssh-per-token');
    expect(fourth.error.message).toBe('limit ssh-per-token reached: at most 3 concurrent ssh tunnels per session token');
    expect(httpStatusFor(fourth.error)).toBe(429);
    // Another token of the same sandbox is not affected.
    const other = await b.acquire(ssh('rel-other'));
    expect(other.ok).toBe(true);

    const first = held[0];
    if (first?.ok !== true) throw new Error('unreachable');
    first.release();
    first.release(); // idempotent: must not free a second slot
    expect(await a.held('ssh-per-token', 'rel-tok')).toBe(2);
    const again = await b.acquire(ssh('rel-tok'));
    expect(again.ok).toBe(true);
    expect((await b.acquire(ssh('rel-tok'))).ok).toBe(false);
    expect(await b.held('ssh-per-sandbox', 'sbx-1')).toBe(4);
  });

  it('keeps session tokens out of redis: the key carries a digest', async () => {
    const a = limiters.open({ holderId: 'digest-a' });
    const r = await a.acquire(ssh('very-secret-session-token', 'sbx-digest'));
    expect(r.ok).toBe(true);
    const keys = await redis.keys(`${prefix}slots:*`);
    expect(keys).toContain(`${prefix}slots:ssh-per-sandbox:sbx-digest`);
    expect(keys.some((k) => k.includes('very-secret'))).toBe(false);
    expect(await redis.zcard(slotKey(prefix, PER_TOKEN, 'very-secret-session-token'))).toBe(1);
  });

  it("reclaims a crashed replica's slots once its lease runs out", async () => {
    const crashed = limiters.open({ holderId: 'crash-a', leaseTtlMs: 300, renewIntervalMs: 100 });
    const survivor = limiters.open({ holderId: 'crash-b', leaseTtlMs: 300, renewIntervalMs: 100 });
    for (let i = 0; i < 3; i++) expect((await crashed.acquire(ssh('crash-tok', 'sbx-crash'))).ok).toBe(true);
    await crashed.close(); // stops renewing without releasing: what a crash looks like from outside
    expect((await survivor.acquire(ssh('crash-tok', 'sbx-crash'))).ok).toBe(false);

    const t0 = Date.now();
    await waitFor('the crashed slots to expire', async () => (await survivor.held('ssh-per-token', 'crash-tok')) === 0, 2000);
    expect(Date.now() - t0).toBeLessThan(600);
    const r = await survivor.acquire(ssh('crash-tok', 'sbx-crash'));
    expect(r.ok).toBe(true);
    // The acquire removed the 3 expired members of each rule.
    expect(await metricValue(survivor.registry, 'ohs_limit_slots_reclaimed_total', { rule: 'ssh-per-token' })).toBe(3);
    expect(await metricValue(survivor.registry, 'ohs_limit_slots_reclaimed_total', { rule: 'ssh-per-sandbox' })).toBe(3);
    expect(await redis.zrange(slotKey(prefix, PER_TOKEN, 'crash-tok'), '0', '-1')).toEqual([expect.stringMatching(/^crash-b:/)]);
  });

  it('renewal keeps slots alive well beyond the lease TTL', async () => {
    const a = limiters.open({ holderId: 'renew-a', leaseTtlMs: 300, renewIntervalMs: 100 });
    const b = limiters.open({ holderId: 'renew-b', leaseTtlMs: 300, renewIntervalMs: 100 });
    for (let i = 0; i < 3; i++) expect((await a.acquire(ssh('renew-tok', 'sbx-renew'))).ok).toBe(true);
    const key = slotKey(prefix, PER_TOKEN, 'renew-tok');
    const firstExpiry = Number((await redis.zrange(key, '0', '0', 'WITHSCORES'))[1]);

    await sleep(1000);
    expect((await b.acquire(ssh('renew-tok', 'sbx-renew'))).ok).toBe(false);
    expect(await b.held('ssh-per-token', 'renew-tok')).toBe(3);
    const [, laterScore] = await redis.zrange(key, '0', '0', 'WITHSCORES');
    expect(Number(laterScore)).toBeGreaterThan(firstExpiry + 500);
    // The key itself outlives every lease in it.
    expect(await redis.pttl(key)).toBeGreaterThan(0);
    expect(await metricValue(b.registry, 'ohs_limit_slots_reclaimed_total', { rule: 'ssh-per-token' })).toBe(0);
  });

  it('renewal keeps many slots alive when they span several batches', async () => {
    const rules: LimitRule[] = [{ name: 'exec-per-sandbox', trafficClass: 'exec', key: 'sandbox', max: 100 }];
    const a = limiters.open({ holderId: 'batch-a', rules, leaseTtlMs: 300, renewIntervalMs: 100, renewBatchSize: 7 });
    const results = await Promise.all(Array.from({ length: 40 }, (_, i) => a.acquire({ cls: 'exec', sandboxId: `sbx-batch-${i % 4}` })));
    expect(granted(results)).toHaveLength(40);
    await sleep(700);
    for (let i = 0; i < 4; i++) expect(await a.held('exec-per-sandbox', `sbx-batch-${i}`)).toBe(10);
    for (const r of granted(results)) r.release();
    expect(await a.held('exec-per-sandbox', 'sbx-batch-0')).toBe(0);
  });

  it('renewal adds back the members Redis lost, and never a slot released meanwhile', async () => {
    const rules: LimitRule[] = [{ ...PER_SANDBOX, max: 50 }];
    // Renewals every 200 ms; a lease long enough that a stalled event loop (a loaded CI machine)
    // cannot let the members expire between two of them, which would make held() count fewer.
    const a = limiters.open({ holderId: 'restore-a', rules, leaseTtlMs: 2000, renewIntervalMs: 200 });
    const held = granted(await Promise.all(Array.from({ length: 6 }, (_, i) => a.acquire(ssh(`restore-${i}`, 'sbx-restore')))));
    expect(held).toHaveLength(6);
    const key = slotKey(prefix, PER_SANDBOX, 'sbx-restore');
    const before = await redis.zrange(key, '0', '-1');
    expect(before).toHaveLength(6);
    // Redis loses the key (a restart without persistence); one connection closes meanwhile.
    await redis.del(key);
    held[0]?.release();
    await waitFor('the renewal to add the open ones back', async () => (await redis.zcard(key)) > 0, 2000);
    await sleep(300); // one more renewal: still the same five
    const after = await redis.zrange(key, '0', '-1');
    expect(after).toHaveLength(5);
    expect(after.every((m) => before.includes(m))).toBe(true);
    expect(await a.held('exec-per-sandbox', 'sbx-restore').catch(() => 'no such rule')).toBe('no such rule');
    expect(await a.held('ssh-per-sandbox', 'sbx-restore')).toBe(5);
    expect(a.logs.messages('warn')).toContain('limit slots missing from redis were added back (lease expired before renewal?)');
  });

  it('a round walks the slots as they are: released during it, not written back; taken during it, kept', async () => {
    const rules: LimitRule[] = [{ name: 'exec-per-sandbox', trafficClass: 'exec', key: 'sandbox', max: 1000 }];
    // One pair per call and a short interval: rounds of 200 calls run nearly back to back.
    const a = limiters.open({ holderId: 'live-round', rules, leaseTtlMs: 2000, renewIntervalMs: 50, renewBatchSize: 1 });
    const take = async (sandboxId: string, n: number): Promise<Array<Extract<AcquireResult, { ok: true }>>> =>
      granted(await Promise.all(Array.from({ length: n }, () => a.acquire({ cls: 'exec', sandboxId }))));
    const onA = await take('sbx-live-a', 100);
    const onB = await take('sbx-live-b', 100);
    expect(onA.length + onB.length).toBe(200);
    for (let i = 0; i < 5; i++) {
      await sleep(15);
      for (const r of onA.splice(0, 20)) r.release();
      onB.push(...(await take('sbx-live-b', 10)));
    }
    await sleep(300); // several more rounds
    expect(await redis.zcard(slotKey(prefix, rules[0] as LimitRule, 'sbx-live-a'))).toBe(0);
    expect(await redis.zcard(slotKey(prefix, rules[0] as LimitRule, 'sbx-live-b'))).toBe(150);
    expect(await a.held('exec-per-sandbox', 'sbx-live-a')).toBe(0);
    expect(await a.held('exec-per-sandbox', 'sbx-live-b')).toBe(150);
    expect(a.logs.messages('warn')).not.toContain('limit slots missing from redis were added back (lease expired before renewal?)');
    for (const r of onB) r.release();
  });

  it('a renewal sends each key once and only the end of each member: a few bytes per slot', async () => {
    const rules: LimitRule[] = [{ name: 'exec-per-sandbox', trafficClass: 'exec', key: 'sandbox', max: 1000 }];
    const a = limiters.open({ holderId: 'renew-bytes-with-a-long-replica-name', rules, leaseTtlMs: 3000, renewIntervalMs: 1000 });
    const held = granted(await Promise.all(Array.from({ length: 500 }, () => a.acquire({ cls: 'exec', sandboxId: 'sbx-renew-bytes-0123456789abcdef' }))));
    expect(held).toHaveLength(500);
    const key = slotKey(prefix, rules[0] as LimitRule, 'sbx-renew-bytes-0123456789abcdef');
    const expiry = async (): Promise<number> => Number((await redis.zrange(key, '0', '0', 'WITHSCORES'))[1]);
    const before = await expiry();
    const { bytes } = await redisTraffic(() => sleep(1150)); // exactly one renewal
    expect(await expiry()).toBeGreaterThan(before);
    expect(await redis.zcard(key)).toBe(500);
    // The key (~60 bytes) and each whole member (~50) for every slot was 149 bytes per slot.
    expect(bytes / 500).toBeLessThan(8);
    for (const r of held) r.release();
  });

  it('lets connections through that no rule applies to, without touching redis', async () => {
    const a = limiters.open({ holderId: 'none-a' });
    const before = (await redis.keys(`${prefix}slots:*`)).length;
    expect((await a.acquire({ cls: 'unary', token: 'x', sandboxId: 'y' })).ok).toBe(true);
    // A rule whose key is missing from the request does not apply: only the sandbox rule counts.
    expect((await a.acquire({ cls: 'ssh-tunnel', sandboxId: 'sbx-nokey' })).ok).toBe(true);
    expect((await redis.keys(`${prefix}slots:*`)).length).toBe(before + 1);
    expect(await a.held('ssh-per-sandbox', 'sbx-nokey')).toBe(1);
    await expect(a.held('no-such-rule', 'x')).rejects.toThrow(/unknown limit rule/);
  });

  it('exports its metrics with every rule and the policy in force from the start', async () => {
    const a = limiters.open({ holderId: 'metrics-a' });
    expect((await a.acquire(ssh('metrics-tok'))).ok).toBe(true);
    const text = await a.registry.metrics();
    expect(text).toContain('ohs_limit_slots_held{rule="ssh-per-token"} 1');
    expect(text).toContain('ohs_limit_refusals_total{rule="ssh-per-sandbox"} 0');
    expect(text).toContain('ohs_limit_slots_reclaimed_total{rule="ssh-per-token"} 0');
    expect(text).toContain('ohs_limit_policy{policy="global"} 1');
    expect(text).toContain('ohs_limit_policy{policy="local-split"} 0');
    expect(a.logs.messages('warn')).toEqual([]);
    // What the leak check after each test looks for.
    expect(String(await redis.client('LIST'))).toContain(' name=ohs-limits-metrics-a ');
  });
});

describe('released slots kept for the next connection with the same keys (reuseMs)', () => {
  const REUSE_MS = 100;
  const tokenKey = (t: string): string => slotKey(prefix, PER_TOKEN, t);
  const sandboxKey = (s: string): string => slotKey(prefix, PER_SANDBOX, s);
  function must(r: AcquireResult): () => void {
    if (!r.ok) throw new Error(`refused: ${r.error.message}`);
    return r.release;
  }

  it('a new connection with the same keys takes over a released slot with no Redis write; unclaimed, it leaves Redis after reuseMs', async () => {
    const a = limiters.open({ holderId: 'reuse-a', reuseMs: REUSE_MS });
    const first = must(await a.acquire(ssh('reuse-tok', 'reuse-sbx')));
    const [member] = await redis.zrange(tokenKey('reuse-tok'), '0', '-1');
    first();
    let second: AcquireResult | undefined;
    const writes = await redisWrites(async () => {
      second = await a.acquire(ssh('reuse-tok', 'reuse-sbx'));
    });
    expect(writes).toBe(0);
    expect(second?.ok).toBe(true);
    expect(await redis.zrange(tokenKey('reuse-tok'), '0', '-1')).toEqual([member]);
    expect(await redis.zrange(sandboxKey('reuse-sbx'), '0', '-1')).toEqual([member]);
    expect(await metricValue(a.registry, 'ohs_limit_slots_reused_total', {})).toBe(1);
    expect(await metricValue(a.registry, 'ohs_limit_slots_held', { rule: 'ssh-per-token' })).toBe(1);

    // The first holder's release is spent: calling it again does not free the new holder's slot.
    first();
    must(second as AcquireResult)();
    expect(await metricValue(a.registry, 'ohs_limit_slots_parked', {})).toBe(1);
    expect(await redis.zcard(tokenKey('reuse-tok'))).toBe(1);
    await waitFor('the parked slot to leave Redis', async () => (await redis.zcard(tokenKey('reuse-tok'))) === 0, 3 * REUSE_MS + 500);
    expect(await redis.zcard(sandboxKey('reuse-sbx'))).toBe(0);
    expect(await metricValue(a.registry, 'ohs_limit_slots_parked', {})).toBe(0);
    expect(await metricValue(a.registry, 'ohs_limit_slots_held', { rule: 'ssh-per-token' })).toBe(0);
  });

  it('acquireNow takes over a parked slot with the same keys at once, and leaves to acquire whatever needs Redis', async () => {
    const a = limiters.open({ holderId: 'reuse-now', reuseMs: REUSE_MS });
    // Before the first connection attempt settled, nothing is answered at once.
    expect(a.acquireNow(ssh('now-tok', 'now-sbx'))).toBeUndefined();
    const first = must(await a.acquire(ssh('now-tok', 'now-sbx')));
    // Nothing parked: a new slot is a Redis write.
    expect(a.acquireNow(ssh('now-tok-2', 'now-sbx'))).toBeUndefined();
    first();
    // A slot is parked, but under other keys than these.
    expect(a.acquireNow(ssh('now-other', 'now-sbx'))).toBeUndefined();
    expect(await metricValue(a.registry, 'ohs_limit_slots_parked', {})).toBe(1);
    let now: AcquireResult | undefined;
    const writes = await redisWrites(async () => {
      now = a.acquireNow(ssh('now-tok', 'now-sbx'));
    });
    expect(writes).toBe(0);
    expect(now?.ok).toBe(true);
    expect(await metricValue(a.registry, 'ohs_limit_slots_reused_total', {})).toBe(1);
    expect(await metricValue(a.registry, 'ohs_limit_slots_parked', {})).toBe(0);
    expect(await redis.zcard(tokenKey('now-tok'))).toBe(1);
    // No rule applies: granted at once, with nothing to give back.
    expect(a.acquireNow({ cls: 'unary', sandboxId: 'now-sbx' })?.ok).toBe(true);
    must(now as AcquireResult)();
    await waitFor('the parked slot to leave Redis', async () => (await redis.zcard(tokenKey('now-tok'))) === 0, 3 * REUSE_MS + 500);
  });

  it('acquires waiting for the turn take over the slots released meanwhile: no Redis write for either', async () => {
    const a = limiters.open({ holderId: 'reuse-turn', rules: [{ ...PER_SANDBOX, max: 100 }], reuseMs: REUSE_MS });
    const held = await Promise.all(Array.from({ length: 40 }, () => a.acquire(ssh('turn-tok', 'turn-sbx'))));
    expect(await redis.zcard(sandboxKey('turn-sbx'))).toBe(40);
    let next: AcquireResult[] = [];
    const writes = await redisWrites(async () => {
      const pending = Promise.all(Array.from({ length: 40 }, () => a.acquire(ssh('turn-tok', 'turn-sbx'))));
      // The new acquires are waiting for the end of the turn when the old connections close.
      for (let i = 0; i < 5; i++) await new Promise<void>((r) => process.nextTick(r));
      for (const r of held) must(r)();
      next = await pending;
    });
    expect(granted(next)).toHaveLength(40);
    expect(writes).toBe(0);
    expect(await metricValue(a.registry, 'ohs_limit_slots_reused_total', {})).toBe(40);
    expect(await redis.zcard(sandboxKey('turn-sbx'))).toBe(40);
  });

  it('a connection under one of a parked slot\'s keys, with other keys, finds the parked slot gone first', async () => {
    const a = limiters.open({ holderId: 'reuse-mix', rules: [PER_TOKEN, { ...PER_SANDBOX, max: 1 }], reuseMs: REUSE_MS });
    must(await a.acquire(ssh('mix-tok-1', 'mix-sbx')))();
    // The sandbox's only place is held by the parked slot until the new connection asks for it.
    const other = await a.acquire(ssh('mix-tok-2', 'mix-sbx'));
    expect(other.ok).toBe(true);
    expect(await redis.zcard(tokenKey('mix-tok-1'))).toBe(0);
    expect(await redis.zcard(tokenKey('mix-tok-2'))).toBe(1);
    expect(await metricValue(a.registry, 'ohs_limit_slots_reused_total', {})).toBe(0);
  });

  it('never admits past a max: a slot that took the last place is released at once; a parked one refuses others for reuseMs at most', async () => {
    const a = limiters.open({ holderId: 'reuse-max-a', reuseMs: REUSE_MS });
    const b = limiters.open({ holderId: 'reuse-max-b', reuseMs: REUSE_MS });
    const one = must(await a.acquire(ssh('max-tok')));
    must(await a.acquire(ssh('max-tok')));
    const last = must(await a.acquire(ssh('max-tok')));
    expect((await b.acquire(ssh('max-tok'))).ok).toBe(false);
    // The third took the token's last place: it is not parked, so B gets it in the next turn.
    last();
    await sleep(5);
    expect(await metricValue(a.registry, 'ohs_limit_slots_parked', {})).toBe(0);
    expect((await b.acquire(ssh('max-tok'))).ok).toBe(true);
    // The first had room when taken: parked, it still counts (3 in Redis, 2 connections open).
    one();
    expect(await metricValue(a.registry, 'ohs_limit_slots_parked', {})).toBe(1);
    expect(await redis.zcard(tokenKey('max-tok'))).toBe(3);
    expect((await b.acquire(ssh('max-tok'))).ok).toBe(false);
    // Within reuseMs (and one sweep) it is gone, and B is admitted.
    await waitFor('the parked slot to leave Redis', async () => (await redis.zcard(tokenKey('max-tok'))) === 2, 3 * REUSE_MS + 500);
    expect((await b.acquire(ssh('max-tok'))).ok).toBe(true);
    expect(await redis.zcard(tokenKey('max-tok'))).toBe(3);
  });

  it('held() counts open connections, and close() takes parked slots out of Redis', async () => {
    const a = limiters.open({ holderId: 'reuse-close', reuseMs: REUSE_MS });
    must(await a.acquire(ssh('close-tok', 'close-sbx')))();
    const keep = must(await a.acquire(ssh('close-tok-2', 'close-sbx-2')));
    keep();
    expect(await redis.zcard(tokenKey('close-tok'))).toBe(1);
    expect(await a.held('ssh-per-token', 'close-tok')).toBe(0);
    expect(await redis.zcard(tokenKey('close-tok-2'))).toBe(1);
    await a.close();
    expect(await redis.zcard(tokenKey('close-tok-2'))).toBe(0);
    expect(await redis.zcard(sandboxKey('close-sbx-2'))).toBe(0);
  });

  it('a slot taken over again and again keeps a live lease: one parked at a renewal is given back before its lease can run out', async () => {
    // Lease 900 ms, renewed every 300 ms. Each connection lasts a moment and the next comes 60 ms
    // later, so the slot is parked (not renewed) at nearly every round. Without the limit on parking
    // a slot whose lease is old, the same member went on for good and its lease ran out under open
    // connections (the scale bench's 1,000 opens/s showed it: slots "added back" by renewal).
    const a = limiters.open({ holderId: 'reuse-chain', leaseTtlMs: 900, renewIntervalMs: 300, reuseMs: REUSE_MS });
    const key = tokenKey('chain-tok');
    const members = new Set<string>();
    let checks = 0;
    const expired: string[] = [];
    const deadline = Date.now() + 3_000;
    while (Date.now() < deadline) {
      const release = must(await a.acquire(ssh('chain-tok', 'chain-sbx')));
      const [[, time], [, entries]] = (await redis.multi().time().zrange(key, '0', '-1', 'WITHSCORES').exec()) as [[null, [string, string]], [null, string[]]];
      const nowMs = Number(time[0]) * 1000 + Math.floor(Number(time[1]) / 1000);
      // One connection open: Redis must count one slot whose lease has not run out.
      const live = entries.filter((score, i) => i % 2 === 1 && Number(score) > nowMs).length;
      if (live < 1) expired.push(`check ${checks}: ${JSON.stringify(entries)} at ${nowMs}`);
      for (let i = 0; i < entries.length; i += 2) members.add(entries[i] as string);
      checks++;
      release();
      await sleep(60);
    }
    expect(checks).toBeGreaterThan(20);
    expect(expired).toEqual([]);
    // Reuse goes on between renewals; the chain is cut at least once per lease.
    expect(await metricValue(a.registry, 'ohs_limit_slots_reused_total', {})).toBeGreaterThan(checks / 2);
    expect(members.size).toBeGreaterThan(3);
  });

  it('refuses a reuse window a parked slot\'s lease could not outlive', () => {
    expect(() => limiters.open({ holderId: 'reuse-bad', leaseTtlMs: 600, reuseMs: 100 })).toThrow(/reuseMs \(100\) must be at most a third of renewIntervalMs \(200\)/);
  });
});

describe('limits without redis (embedded single replica)', () => {
  const embedded = limiterFactory({ keyPrefix: prefix });
  afterEach(() => embedded.closeAll());

  it('enforces the full limits with in-process counters', async () => {
    const a = embedded.open({ holderId: 'emb-a', liveReplicas: () => 5 });
    expect(a.policy()).toBe('local-full');
    const held = [];
    for (let i = 0; i < 3; i++) held.push(await a.acquire(ssh('emb-tok')));
    expect(held.every((r) => r.ok)).toBe(true);
    const refused = await a.acquire(ssh('emb-tok'));
    expect(refused.ok === false && refused.error.message).toBe('limit ssh-per-token reached: at most 3 concurrent ssh tunnels per session token');
    const first = held[0];
    if (first?.ok === true) first.release();
    expect(await a.held('ssh-per-token', 'emb-tok')).toBe(2);
    expect((await a.acquire(ssh('emb-tok'))).ok).toBe(true);
    expect(await metricValue(a.registry, 'ohs_limit_policy', { policy: 'local-full' })).toBe(1);
    expect(a.logs.messages('warn')).toEqual([]);
  });

  it('acquireNow gives the same answers as acquire, at once', async () => {
    const a = embedded.open({ holderId: 'emb-now' });
    const held = [0, 1, 2].map(() => a.acquireNow(ssh('emb-now-tok')));
    expect(held.map((r) => r?.ok)).toEqual([true, true, true]);
    const refused = a.acquireNow(ssh('emb-now-tok'));
    expect(refused?.ok === false && refused.error.message).toBe('limit ssh-per-token reached: at most 3 concurrent ssh tunnels per session token');
    expect(await metricValue(a.registry, 'ohs_limit_refusals_total', { rule: 'ssh-per-token' })).toBe(1);
    const first = held[0];
    if (first?.ok === true) first.release();
    expect(await a.held('ssh-per-token', 'emb-now-tok')).toBe(2);
    expect(a.acquireNow(ssh('emb-now-tok'))?.ok).toBe(true);
    expect(await a.held('ssh-per-token', 'emb-now-tok')).toBe(3);
  });
});
