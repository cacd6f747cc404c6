// Cluster-wide connection limits with leased slots (DESIGN §5).
//
// Every connection a rule applies to holds one slot per matching rule: a member of the sorted set
// `${prefix}slots:${rule}:${key}`, scored by its lease expiry. Counting, dropping expired leases and
// adding happen in one script for all rules of the connection, so two replicas can never both take
// the last slot. The holder renews its live slots in batches; a crashed holder stops renewing and its
// slots expire within the lease TTL, to be removed by the next acquire on the same key.
//
// A released slot may stay in Redis for a moment (`reuseMs`): a new connection with exactly the same
// keys takes it over without a Redis round trip (a forwarded port's short connections, a client
// reconnecting). Meanwhile it still counts, so the count never falls below the connections open; a
// connection elsewhere may be refused for that moment, never admitted past a max. A slot that took
// the last place of some key is released at once, and so is any parked slot under a key a
// different connection asks for.
//
// Redis unavailable: never silently unlimited. The configured fallback is enforced with in-process
// counters (default: each replica allows ceil(max / live replicas)), logged once and shown in
// `ohs_limit_policy`. Slots held meanwhile are kept in memory and written back when Redis returns, so
// the global count again includes every tunnel still open.

import { createHash, randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import { createRedisClient } from '../ownership/redis-connect.ts';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import { OhsError } from '../errors.ts';
import { createLimitMetrics } from './metrics.ts';
import type { LimitMetrics, LimitPolicy } from './metrics.ts';
import { describeRule, keyValue, limitClassOf, limitError, localShare, rulesFor, validateRules } from './rules.ts';
import type { LimitKeys, LimitRule } from './rules.ts';
import { defineSlotScripts, parseAcquireReply, parseCountReply } from './scripts.ts';
import type { SlotScripts } from './scripts.ts';

export type { LimitPolicy } from './metrics.ts';
export type FallbackPolicy = 'local-split' | 'local-full' | 'deny';

export interface SlotRequest extends LimitKeys {
  /** Traffic class of the connection (rules are selected by it). */
  cls: string;
}

export type AcquireResult =
  | { ok: true; release(): void }
  | {
      ok: false;
      rule: LimitRule;
      /** OHS_ERR_LIMIT (429 / RESOURCE_EXHAUSTED); OHS_ERR_STORE_UNAVAILABLE under the `deny` fallback. */
      error: OhsError;
    };

export interface SlotLimiter {
  /**
   * Takes a slot in every rule that applies to the request (a rule whose key is missing from the
   * request does not apply). The caller must `release()` a granted slot when the connection ends;
   * release is idempotent.
   */
  acquire(req: SlotRequest): Promise<AcquireResult>;
  /**
   * `acquire`'s answer when it needs no Redis round trip: no rule applies, a slot parked by a closed
   * connection with the same keys is taken over, or limits are counted in this process. Undefined
   * when it needs Redis or the first connection attempt has not settled: then call `acquire`.
   */
  acquireNow(req: SlotRequest): AcquireResult | undefined;
  /**
   * Live slots for one rule and key value: cluster-wide while the policy is `global`, this replica's
   * otherwise.
   */
  held(ruleName: string, key: string): Promise<number>;
  policy(): LimitPolicy;
  /** Whether a rule for this traffic class is keyed by the client address (read it only then). */
  readsClientAddress(cls: string): boolean;
  /**
   * Stops renewing and disconnects. Slots still held are not removed: like a crash, they expire
   * within the lease TTL (release them first to free them at once).
   */
  close(): Promise<void>;
}

export interface SlotLimiterOptions {
  /** Without it (embedded single replica), limits are counted in process with the full max. */
  redisUrl?: string;
  keyPrefix: string;
  /** This replica's id; part of every slot member, so that its slots can be told apart. */
  holderId: string;
  /** How long a slot survives without renewal (default 15000). */
  leaseTtlMs?: number;
  /** Default leaseTtlMs / 3, so that two renewals can fail before a live slot expires. */
  renewIntervalMs?: number;
  rules: readonly LimitRule[];
  /** Replicas currently alive (this one included); read at each local decision. */
  liveReplicas: () => number;
  logger: Logger;
  registry?: Registry;
  /** What to enforce while Redis is unavailable (default local-split). */
  fallbackPolicy?: FallbackPolicy;
  connectTimeoutMs?: number;
  commandTimeoutMs?: number;
  /** Cap of the reconnection backoff (default 1000). */
  reconnectMaxMs?: number;
  /** Key/member pairs per renewal script call (default 500). */
  renewBatchSize?: number;
  /**
   * How long a released slot stays in Redis for a new connection with the same keys to take over
   * (default 0: released at once). At most a third of the renewal interval.
   */
  reuseMs?: number;
}

export const DEFAULT_LEASE_TTL_MS = 15_000;

// Failed releases are retried when Redis returns. Beyond this many, the oldest are dropped: they
// expire on their own within one lease TTL anyway.
const MAX_PENDING_RELEASES = 10_000;
/** Key strings kept per rule (the sandboxes, tokens or client addresses with slots, typically). */
const KEY_CACHE_MAX = 10_000;
/** Released slots kept for reuse at most; past it a release goes to Redis at once. */
const MAX_PARKED = 10_000;
const SWEEP_MIN_MS = 10;
/** The grant of a request no rule applies to: nothing to give back. */
const NO_SLOT: AcquireResult = Object.freeze({ ok: true, release() {} });

/**
 * The Redis key of one rule and key value. Session tokens grant access to sandboxes, so they are
 * never written to Redis: the key carries a digest of the token instead. (A limiter keeps the keys
 * it made, so a token is hashed once, not on every connection: `redisKeyFor`.)
 */
export function slotKey(keyPrefix: string, rule: LimitRule, value: string): string {
  const part = rule.key === 'token' ? `sha256-${createHash('sha256').update(value).digest('base64url').slice(0, 32)}` : value;
  return `${keyPrefix}slots:${rule.name}:${part}`;
}

/**
 * Resolves once per event-loop turn for everyone who asked during it. The Redis calls they make
 * right then (acquires and the turn's releases, each issued synchronously by its continuation) leave
 * in one write: `onTurn` corks the client's socket before the continuations run and uncorks it after
 * them (a microtask queued behind theirs). One write per turn instead of one per connection, which
 * on a busy replica is most of what limits cost, without the client's auto-pipelining, whose
 * per-batch pipeline object was a fifth of all the allocation of a new stream (heap sampling).
 */
function createTurnBatcher(onTurn: () => (() => void) | undefined = () => undefined): () => Promise<void> {
  let next: Promise<void> | undefined;
  return () =>
    (next ??= new Promise<void>((resolve) => {
      setImmediate(() => {
        next = undefined;
        const done = onTurn();
        resolve();
        if (done) queueMicrotask(done);
      });
    }));
}

function addTo<V>(map: Map<string, Set<V>>, key: string, value: V): void {
  const set = map.get(key);
  if (set === undefined) map.set(key, new Set([value]));
  else set.add(value);
}

function removeFrom<V>(map: Map<string, Set<V>>, key: string, value: V): void {
  const set = map.get(key);
  if (set !== undefined && set.delete(value) && set.size === 0) map.delete(key);
}

/** Slots grouped under the keys they hold a member of (a key with its slots). */
type KeyGroups = Iterable<[string, Iterable<Slot>]>;

/** Where the next renewal call of a round starts: the groups left, and the rest of the current one. */
interface BatchCursor {
  groups: Iterator<[string, Iterable<Slot>]>;
  key: string;
  slots: Iterator<Slot> | undefined;
}

/** The live slots of `list` under each key they hold a member of. */
function groupByKey(list: Iterable<Slot>): Map<string, Slot[]> {
  const byKey = new Map<string, Slot[]>();
  for (const slot of list) {
    if (slot.released) continue;
    for (const claim of slot.claims) {
      const group = byKey.get(claim.redisKey);
      if (group === undefined) byKey.set(claim.redisKey, [slot]);
      else group.push(slot);
    }
  }
  return byKey;
}

interface Claim {
  rule: LimitRule;
  redisKey: string;
}

/** What a release removes from Redis: a member under its keys. */
interface Member {
  /** What follows the limiter's member prefix in the slot's member (a base-36 counter). */
  suffix: string;
  claims: Claim[];
}

interface Slot extends Member {
  /** May be in Redis: set before any write that may add it, so that a release always removes it. */
  inRedis: boolean;
  /** When its lease was last written (acquire, renewal): a slot whose lease is older is not parked. */
  writtenAt: number;
  released: boolean;
  /** Parked on release for a connection with the same keys (`reuseMs`); false once it took a key's last slot. */
  reusable: boolean;
  /** Its claims' keys joined, when known (a slot taken over from a parked one): not joined again to park it. */
  keys: string | undefined;
}

/** A released slot still in Redis, for the next connection with the same keys. */
interface Parked extends Member {
  /** The claims' keys in order: what a new connection must ask for to take it over. */
  keys: string;
  until: number;
  live: boolean;
  writtenAt: number;
}

export function createSlotLimiter(opts: SlotLimiterOptions): SlotLimiter {
  validateRules(opts.rules);
  const rules = [...opts.rules];
  const log = opts.logger;
  const leaseTtlMs = opts.leaseTtlMs ?? DEFAULT_LEASE_TTL_MS;
  const renewIntervalMs = opts.renewIntervalMs ?? Math.max(1, Math.floor(leaseTtlMs / 3));
  const fallback: FallbackPolicy = opts.fallbackPolicy ?? 'local-split';
  const reuseMs = Math.max(0, opts.reuseMs ?? 0);
  const batchSize = Math.max(1, opts.renewBatchSize ?? 500);
  const connectTimeoutMs = opts.connectTimeoutMs ?? 1000;
  const reconnectMaxMs = opts.reconnectMaxMs ?? 1000;
  if (!(leaseTtlMs > 0) || !(renewIntervalMs > 0) || renewIntervalMs >= leaseTtlMs) {
    throw new OhsError('OHS_ERR_CONFIG', `limits: renewIntervalMs (${renewIntervalMs}) must be below leaseTtlMs (${leaseTtlMs})`);
  }
  // A parked slot misses renewals; a third of the interval keeps its lease far from expiry.
  if (reuseMs * 3 > renewIntervalMs) {
    throw new OhsError('OHS_ERR_CONFIG', `limits: reuseMs (${reuseMs}) must be at most a third of renewIntervalMs (${renewIntervalMs})`);
  }

  const byClientAddress = new Set(rules.filter((r) => r.key === 'client-address').map((r) => r.trafficClass));
  const metrics: LimitMetrics = createLimitMetrics(rules, opts.registry);
  // Members must never collide with those of an earlier run of the same replica still in Redis.
  const incarnation = randomBytes(4).toString('hex');
  /** What every member of this limiter starts with; renewals send only the rest. */
  const memberPrefix = `${opts.holderId}:${incarnation}.`;
  let seq = 0;

  /** Every slot held. */
  const slots = new Set<Slot>();
  /**
   * The slots held under each key, a key's set dropped with its last slot: the local count of a key
   * and what a renewal round walks, so that a round regroups nothing.
   */
  const byKey = new Map<string, Set<Slot>>();
  const pendingReleases = new Map<string, string[]>();
  const nextTurn = createTurnBatcher(() => {
    const socket = client?.status === 'ready' ? client.stream : undefined;
    if (socket === undefined || socket.destroyed) return undefined;
    socket.cork();
    return () => socket.uncork();
  });
  /** Releases of this turn, sent together at its end (see createTurnBatcher). */
  let releaseBatch: Member[] = [];
  /** Released slots kept for reuse: by their keys (what reuse looks up), by each key, and by age. */
  const parkedByKeys = new Map<string, Set<Parked>>();
  const parkedByKey = new Map<string, Set<Parked>>();
  let parkQueue: Parked[] = [];
  let parkedCount = 0;
  let parkTimer: NodeJS.Timeout | undefined;
  const inflight = new Set<Promise<unknown>>();
  let closed = false;

  // Redis state. `mode` is what acquire enforces; with Redis configured it starts as `global` and
  // the first acquire waits for the first connection attempt to settle.
  let mode: LimitPolicy = opts.redisUrl === undefined ? 'local-full' : 'global';
  let outageLogged = false;
  let recovering: Promise<void> | undefined;
  let renewing = false;
  let markSettled: () => void = () => {};
  let isSettled = false;
  const settled = new Promise<void>((resolve) => {
    markSettled = () => {
      isSettled = true;
      resolve();
    };
  });
  metrics.setPolicy(mode);

  let client: Redis | undefined;
  let scripts: SlotScripts | undefined;
  let renewTimer: NodeJS.Timeout | undefined;
  let settleTimer: NodeJS.Timeout | undefined;

  if (opts.redisUrl === undefined) {
    markSettled();
  } else {
    const c = createRedisClient(opts.redisUrl, {
      lazyConnect: true,
      // Fail fast while disconnected: the caller is holding a client connection open.
      enableOfflineQueue: false,
      maxRetriesPerRequest: 1,
      connectTimeout: connectTimeoutMs,
      commandTimeout: opts.commandTimeoutMs ?? 1000,
      // disconnect() on a dead socket arms a ref'd timer of this length; keep close() quick.
      disconnectTimeout: 100,
      // Acquires and releases issued in one event-loop turn leave in one write: the turn batcher
      // corks the socket around them (createTurnBatcher), so no auto-pipelining.
      enableAutoPipelining: false,
      connectionName: `ohs-limits-${opts.holderId.replace(/[^\w.:-]/g, '_')}`,
      retryStrategy: (times: number) => Math.min(reconnectMaxMs, 25 * 2 ** Math.min(times, 10)) + Math.floor(Math.random() * 25),
    });
    client = c;
    scripts = defineSlotScripts(c);
    c.on('error', (err: unknown) => {
      log.debug({ err }, 'limits redis connection error');
      enterOutage(err);
    });
    c.on('close', () => enterOutage(undefined));
    c.on('ready', () => void recover());
    c.connect().catch(() => {
      /* reported through 'error'; reconnection goes on */
    });
    settleTimer = setTimeout(() => enterOutage(new Error(`no redis connection within ${connectTimeoutMs} ms`)), connectTimeoutMs + 50);
    settleTimer.unref();
    renewTimer = setInterval(() => void tick(), renewIntervalMs);
    renewTimer.unref();
  }

  function setMode(next: LimitPolicy): void {
    if (mode === next) return;
    mode = next;
    metrics.setPolicy(next);
  }

  function enterOutage(err: unknown): void {
    if (closed) return;
    clearTimeout(settleTimer);
    setMode(fallback);
    // Local counting knows only open connections: parked slots leave Redis (or wait to) now.
    releaseParked(parkQueue);
    markSettled();
    if (outageLogged) return;
    outageLogged = true;
    log.warn({ err, policy: fallback, slots: slots.size }, `redis unavailable: limits enforced locally (${fallback})`);
  }

  async function tick(): Promise<void> {
    if (closed || renewing) return;
    if (mode !== 'global') {
      // A failed command may leave the connection up, so no 'ready' announces the end of the outage.
      if (client?.status === 'ready') await recover();
      return;
    }
    renewing = true;
    try {
      const restored = await writeSlots(byKey);
      if (restored > 0) log.warn({ restored }, 'limit slots missing from redis were added back (lease expired before renewal?)');
    } catch (err) {
      enterOutage(err);
    } finally {
      renewing = false;
    }
  }

  /**
   * Renews (or adds back) the slots of `groups` in batches of at most `batchSize` key/member pairs;
   * returns how many had to be added back. Each call names a key once, with the slots it holds as one argument: what
   * follows this limiter's member prefix in each member, comma-separated. With thousands of slots on
   * a few keys, a renewal is a few bytes per slot, not the key and the whole member every time, nor an
   * argument (and its encoding) per slot in the client. Each batch is built just before it is sent:
   * a slot released meanwhile must not be written back. `groups` may be the live `byKey`: its sets
   * are walked as they change (a Set's iterator skips what was deleted and reaches what was added).
   */
  async function writeSlots(groups: KeyGroups): Promise<number> {
    const cursor: BatchCursor = { groups: groups[Symbol.iterator](), key: '', slots: undefined };
    let restored = 0;
    for (let batch = nextBatch(cursor); batch !== undefined; batch = nextBatch(cursor)) {
      const reply = await track(requireScripts().ohsSlotRenew(batch.keys.length, ...batch.keys, leaseTtlMs, memberPrefix, ...batch.lists));
      restored += typeof reply === 'number' ? reply : 0;
    }
    return restored;
  }

  /** The next renewal call: keys (each once) and, for each, its live slots' member suffixes. */
  function nextBatch(at: BatchCursor): { keys: string[]; lists: string[] } | undefined {
    const now = Date.now();
    const keys: string[] = [];
    const lists: string[] = [];
    let pairs = 0;
    while (pairs < batchSize) {
      if (at.slots === undefined) {
        const next = at.groups.next();
        if (next.done === true) break;
        at.key = next.value[0];
        at.slots = next.value[1][Symbol.iterator]();
      }
      let list = '';
      for (let next = at.slots.next(); ; next = at.slots.next()) {
        if (next.done === true) {
          at.slots = undefined;
          break;
        }
        const slot = next.value;
        if (slot.released) continue;
        slot.inRedis = true;
        slot.writtenAt = now;
        list = list === '' ? slot.suffix : `${list},${slot.suffix}`;
        if (++pairs >= batchSize) break;
      }
      if (list !== '') {
        keys.push(at.key);
        lists.push(list);
      }
    }
    return pairs > 0 ? { keys, lists } : undefined;
  }

  function recover(): Promise<void> {
    if (closed) return Promise.resolve();
    recovering ??= (async () => {
      try {
        await flushPendingReleases();
        // Slots taken locally during the outage (and those taken while this runs) join the global
        // count before global counting resumes. Bounded: the rest is picked up by the next renewal.
        let todo = [...slots];
        for (let pass = 0; pass < 3 && todo.length > 0; pass++) {
          await writeSlots(groupByKey(todo));
          todo = [...slots].filter((s) => !s.inRedis);
        }
        if (closed || client?.status !== 'ready') return;
        clearTimeout(settleTimer);
        setMode('global');
        markSettled();
        if (outageLogged) {
          outageLogged = false;
          log.info({ slots: slots.size }, 'redis recovered: global limits restored');
        }
      } catch (err) {
        enterOutage(err);
      } finally {
        recovering = undefined;
      }
    })();
    return recovering;
  }

  async function flushPendingReleases(): Promise<void> {
    for (const [member, keys] of [...pendingReleases]) {
      await track(requireScripts().ohsSlotRelease(keys.length, ...keys, member));
      pendingReleases.delete(member);
    }
  }

  function rememberRelease(member: string, claims: Claim[]): void {
    pendingReleases.set(member, claims.map((c) => c.redisKey));
    if (pendingReleases.size > MAX_PENDING_RELEASES) {
      const oldest = pendingReleases.keys().next();
      if (oldest.done !== true) pendingReleases.delete(oldest.value);
    }
  }

  function track<T>(p: Promise<T>): Promise<T> {
    inflight.add(p);
    const forget = (): void => {
      inflight.delete(p);
    };
    p.then(forget, forget);
    return p;
  }

  function requireScripts(): SlotScripts {
    if (scripts === undefined) throw new Error('limits: no redis configured');
    return scripts;
  }

  function claimsFor(req: SlotRequest): Claim[] {
    const claims: Claim[] = [];
    for (const rule of rulesFor(limitClassOf(req.cls), rules)) {
      const value = keyValue(rule, req);
      if (value !== undefined) claims.push({ rule, redisKey: redisKeyFor(rule, value) });
    }
    // A slot keeps its claims for as long as its connection lives: an array grown by push keeps room
    // for 17 (~0.15 KB); its copy has room for exactly what it holds.
    return claims.slice();
  }

  /**
   * One string per rule and key value, shared by every slot under it: thousands of slots on one
   * sandbox or token then hold one key string, not a copy each, and a token is hashed once.
   */
  const keyCache = new Map<LimitRule, Map<string, string>>();
  function redisKeyFor(rule: LimitRule, value: string): string {
    let byValue = keyCache.get(rule);
    if (byValue === undefined) keyCache.set(rule, (byValue = new Map()));
    let key = byValue.get(value);
    if (key === undefined) {
      key = slotKey(opts.keyPrefix, rule, value);
      if (byValue.size >= KEY_CACHE_MAX) byValue.delete(byValue.keys().next().value as string);
      byValue.set(value, key);
    }
    return key;
  }

  function memberOf(suffix: string): string {
    return memberPrefix + suffix;
  }

  function countOn(redisKey: string): number {
    return byKey.get(redisKey)?.size ?? 0;
  }

  function hold(suffix: string, claims: Claim[], inRedis: boolean, reusable = false, writtenAt = Date.now(), keys?: string): AcquireResult {
    const slot: Slot = { suffix, claims, inRedis, writtenAt, released: false, reusable, keys };
    slots.add(slot);
    for (const c of claims) {
      addTo(byKey, c.redisKey, slot);
      metrics.slotsHeld.cell(c.rule.name).inc();
    }
    return { ok: true, release: () => release(slot) };
  }

  function release(slot: Slot): void {
    if (slot.released) return;
    slot.released = true;
    slots.delete(slot);
    for (const c of slot.claims) {
      removeFrom(byKey, c.redisKey, slot);
      metrics.slotsHeld.cell(c.rule.name).dec();
    }
    if (!slot.inRedis || closed || scripts === undefined) return;
    // A parked slot misses the renewals of its time parked, and one taken over could be parked at
    // every round: only a slot renewed within the last interval is parked, so that no lease can run
    // out under a connection (at most two intervals and the parking between writes, a third of the TTL
    // to spare).
    if (slot.reusable && reuseMs > 0 && mode === 'global' && parkedCount < MAX_PARKED && Date.now() - slot.writtenAt <= renewIntervalMs) park(slot);
    else queueRelease(slot);
  }

  function queueRelease(member: Member): void {
    releaseBatch.push(member);
    if (releaseBatch.length === 1) void nextTurn().then(flushReleases);
  }

  function keysOf(claims: Claim[]): string {
    return claims.length === 1 ? (claims[0] as Claim).redisKey : claims.map((c) => c.redisKey).join('\n');
  }

  function park(slot: Slot): void {
    const p: Parked = { suffix: slot.suffix, claims: slot.claims, keys: slot.keys ?? keysOf(slot.claims), until: Date.now() + reuseMs, live: true, writtenAt: slot.writtenAt };
    addTo(parkedByKeys, p.keys, p);
    for (const c of p.claims) addTo(parkedByKey, c.redisKey, p);
    parkQueue.push(p);
    parkedCount++;
    metrics.slotsParked.cell().inc();
    parkTimer ??= setTimeout(sweepParked, reuseMs).unref();
  }

  function unpark(p: Parked): void {
    p.live = false;
    removeFrom(parkedByKeys, p.keys, p);
    for (const c of p.claims) removeFrom(parkedByKey, c.redisKey, p);
    parkedCount--;
    metrics.slotsParked.cell().dec();
  }

  /** Sends the parked slots of `list` to Redis as releases. */
  function releaseParked(list: Iterable<Parked>): void {
    for (const p of [...list]) {
      if (!p.live) continue;
      unpark(p);
      queueRelease(p);
    }
    if (parkedCount === 0) parkQueue = [];
  }

  /** Releases the parked slots whose time is up; the timer runs while any is parked. */
  function sweepParked(): void {
    parkTimer = undefined;
    const now = Date.now();
    let i = 0;
    while (i < parkQueue.length && (parkQueue[i] as Parked).until <= now) i++;
    releaseParked(parkQueue.slice(0, i));
    parkQueue = parkQueue.slice(i).filter((p) => p.live);
    const next = parkQueue[0];
    // At most one sweep per SWEEP_MIN_MS: a slot may stay parked that much longer than reuseMs.
    if (next !== undefined) parkTimer = setTimeout(sweepParked, Math.max(SWEEP_MIN_MS, next.until - now)).unref();
  }

  /** A parked slot with exactly these keys, taken over by a new connection: no Redis call. */
  function takeParked(claims: Claim[]): AcquireResult | undefined {
    const set = parkedByKeys.get(keysOf(claims));
    const p = set?.values().next().value;
    if (p === undefined) return undefined;
    unpark(p);
    metrics.slotsReused.cell().inc();
    return hold(p.suffix, p.claims, true, true, p.writtenAt, p.keys);
  }

  function flushReleases(): void {
    const batch = releaseBatch;
    releaseBatch = [];
    for (const slot of batch) {
      if (closed || scripts === undefined) return;
      if (client?.status !== 'ready') {
        rememberRelease(memberOf(slot.suffix), slot.claims);
        continue;
      }
      const keys = slot.claims.map((c) => c.redisKey);
      const member = memberOf(slot.suffix);
      track(scripts.ohsSlotRelease(keys.length, ...keys, member)).catch((err: unknown) => {
        rememberRelease(member, slot.claims);
        enterOutage(err);
      });
    }
  }

  function refuse(rule: LimitRule, error: OhsError): AcquireResult {
    metrics.refusals.inc({ rule: rule.name });
    return { ok: false, rule, error };
  }

  function acquireLocally(claims: Claim[], suffix: string, inRedis: boolean): AcquireResult {
    for (const c of claims) {
      if (mode === 'deny') {
        return refuse(
          c.rule,
          new OhsError('OHS_ERR_STORE_UNAVAILABLE', `limit ${c.rule.name} cannot be checked while redis is unavailable: ${describeRule(c.rule)}`, {
            details: { rule: c.rule.name, max: c.rule.max, policy: mode },
          }),
        );
      }
      const max = mode === 'local-split' ? localShare(c.rule.max, opts.liveReplicas()) : c.rule.max;
      if (countOn(c.redisKey) >= max) return refuse(c.rule, limitError(c.rule, max));
    }
    return hold(suffix, claims, inRedis);
  }

  async function acquireGlobally(claims: Claim[], suffix: string): Promise<AcquireResult> {
    if (parkedCount > 0) {
      // A slot released while this one waited for the turn may have exactly its keys.
      const reused = takeParked(claims);
      if (reused !== undefined) return reused;
      // Any other parked slot under one of these keys counts against this connection: it leaves first.
      for (const c of claims) releaseParked(parkedByKey.get(c.redisKey) ?? []);
    }
    // Commands on one connection run in order: a release made before this acquire lands first.
    flushReleases();
    const keys = claims.map((c) => c.redisKey);
    const maxes = claims.map((c) => c.rule.max);
    const reply = await track(requireScripts().ohsSlotAcquire(keys.length, ...keys, memberOf(suffix), leaseTtlMs, ...maxes));
    const { refusedIndex, reclaimed, full } = parseAcquireReply(reply, claims.length);
    reclaimed.forEach((n, i) => {
      const rule = claims[i]?.rule;
      if (n > 0 && rule !== undefined) metrics.slotsReclaimed.inc({ rule: rule.name }, n);
    });
    const refused = claims[refusedIndex];
    if (refused !== undefined) return refuse(refused.rule, limitError(refused.rule));
    return hold(suffix, claims, true, !full);
  }

  return {
    acquireNow(req) {
      if (closed || !isSettled) return undefined;
      const claims = claimsFor(req);
      if (claims.length === 0) return NO_SLOT;
      if (mode === 'global') return parkedCount > 0 ? takeParked(claims) : undefined;
      seq += 1;
      return acquireLocally(claims, seq.toString(36), false);
    },

    async acquire(req) {
      if (closed) throw new OhsError('OHS_ERR_INTERNAL', 'slot limiter is closed');
      const claims = claimsFor(req);
      if (claims.length === 0) return NO_SLOT;
      await settled;
      if (mode === 'global' && parkedCount > 0) {
        const reused = takeParked(claims);
        if (reused !== undefined) return reused;
      }
      seq += 1;
      const suffix = seq.toString(36);
      if (mode === 'global') {
        await nextTurn();
        if (closed) throw new OhsError('OHS_ERR_INTERNAL', 'slot limiter is closed');
      }
      if (mode === 'global') {
        try {
          return await acquireGlobally(claims, suffix);
        } catch (err) {
          enterOutage(err);
          if (closed) throw new OhsError('OHS_ERR_INTERNAL', 'slot limiter is closed', { cause: err });
          // The script may have run before the connection failed: the member may be in Redis.
          const local = acquireLocally(claims, suffix, true);
          if (!local.ok) rememberRelease(memberOf(suffix), claims);
          return local;
        }
      }
      return acquireLocally(claims, suffix, false);
    },

    async held(ruleName, key) {
      const rule = rules.find((r) => r.name === ruleName);
      if (rule === undefined) throw new OhsError('OHS_ERR_BAD_REQUEST', `unknown limit rule ${ruleName}`);
      const redisKey = redisKeyFor(rule, key);
      await settled;
      // Slots parked under the key are no connection's: they leave before the count.
      releaseParked(parkedByKey.get(redisKey) ?? []);
      flushReleases();
      if (mode === 'global' && !closed) {
        try {
          return parseCountReply(await track(requireScripts().ohsSlotCount(1, redisKey)));
        } catch (err) {
          enterOutage(err);
        }
      }
      return countOn(redisKey);
    },

    policy: () => mode,

    readsClientAddress: (cls) => byClientAddress.has(limitClassOf(cls)),

    async close() {
      if (closed) return;
      // Parked slots and releases still waiting for the end of this turn go out before the client does.
      releaseParked(parkQueue);
      flushReleases();
      closed = true;
      clearTimeout(parkTimer);
      clearInterval(renewTimer);
      clearTimeout(settleTimer);
      markSettled();
      await Promise.allSettled([...inflight]);
      const c = client;
      if (c === undefined) return;
      if (c.status === 'ready' || c.status === 'connecting' || c.status === 'connect') {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, 1000);
          timer.unref();
          c.once('end', () => {
            clearTimeout(timer);
            resolve();
          });
          c.disconnect();
        });
      } else {
        c.disconnect(); // no live socket: this only cancels the pending reconnection
      }
      c.removeAllListeners();
      // The socket's teardown may still be reported; keep a sink so it is never unhandled.
      c.on('error', () => {});
    },
  };
}
