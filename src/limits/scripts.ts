// The Lua side of leased slots. Each sorted set holds one rule's slots for one key; a member is
// `${holderId}:${slotId}` scored by its lease expiry in Redis server milliseconds. Every script reads
// the clock with TIME on the server, so replicas never compare their own clocks.
//
// The keys of one call are the rules of one connection; on a Redis Cluster they would have to share a
// hash slot (not needed: the sidecar uses a single Redis).

import type { Redis } from 'ioredis';

// Shared prologue: server time in ms, and the key TTL. A key outlives its newest lease by one more
// lease TTL, so that a crashed holder's slots are normally removed (and counted as reclaimed) by the
// next acquire rather than vanishing silently; it is only ever lengthened, so holders configured
// with different lease TTLs can share a key.
const PROLOGUE = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function keep(key, ttl)
  if redis.call('PTTL', key) < 2 * ttl then redis.call('PEXPIRE', key, 2 * ttl) end
end
`;

// KEYS: one set per rule. ARGV: member, leaseTtlMs, then the max of each key in KEYS order.
// Returns { refused, reclaimed_1 .. reclaimed_n, full }: refused is the 1-based index of the first
// key at its max (0: granted, member added everywhere); reclaimed_i counts expired members removed;
// full is 1 when the grant took the last slot of some key (0 otherwise).
const ACQUIRE = `${PROLOGUE}
local member = ARGV[1]
local ttl = tonumber(ARGV[2])
local out = { 0 }
local full = 0
for i, key in ipairs(KEYS) do
  out[i + 1] = redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local n = redis.call('ZCARD', key)
  if out[1] == 0 and n >= tonumber(ARGV[i + 2]) then out[1] = i end
  if n + 1 >= tonumber(ARGV[i + 2]) then full = 1 end
end
if out[1] == 0 then
  for _, key in ipairs(KEYS) do
    redis.call('ZADD', key, now + ttl, member)
    keep(key, ttl)
  end
end
out[#KEYS + 2] = full
return out`;

// KEYS: distinct sets. ARGV[1]: leaseTtlMs; ARGV[2]: the prefix of every member of this call; then,
// for each key in KEYS order, the suffixes of its members, comma-separated (a member is the prefix
// and one suffix; suffixes are base-36 counters). Extends each lease; a member that is gone (key
// expired, Redis restarted empty, or reclaimed after a missed renewal) belongs to a connection that
// is still open, so it is added back. Returns how many were added back (ZADD without flags updates
// existing members and counts only the ones it added).
const RENEW = `${PROLOGUE}
local ttl = tonumber(ARGV[1])
local prefix = ARGV[2]
local score = now + ttl
local restored = 0
local function flush(key, zargs)
  if #zargs > 0 then restored = restored + redis.call('ZADD', key, unpack(zargs)) end
end
for i, key in ipairs(KEYS) do
  local zargs = {}
  for suffix in string.gmatch(ARGV[i + 2], '[^,]+') do
    zargs[#zargs + 1] = score
    zargs[#zargs + 1] = prefix .. suffix
    if #zargs >= 2000 then
      flush(key, zargs)
      zargs = {}
    end
  end
  flush(key, zargs)
  keep(key, ttl)
end
return restored`;

// KEYS: the sets of one slot; ARGV[1]: its member. Returns how many were removed.
const RELEASE = `
local removed = 0
for _, key in ipairs(KEYS) do removed = removed + redis.call('ZREM', key, ARGV[1]) end
return removed`;

// KEYS[1]: one set. Returns its live members (expired ones are not counted, whether or not removed yet).
const COUNT = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')`;

type Arg = string | number;

/** The scripts as methods of the client; the first argument is the number of keys. */
export interface SlotScripts {
  ohsSlotAcquire(numKeys: number, ...args: Arg[]): Promise<unknown>;
  ohsSlotRenew(numKeys: number, ...args: Arg[]): Promise<unknown>;
  ohsSlotRelease(numKeys: number, ...args: Arg[]): Promise<unknown>;
  ohsSlotCount(numKeys: number, ...args: Arg[]): Promise<unknown>;
}

/** Installs the scripts on `client` (EVALSHA, falling back to EVAL after a Redis restart). */
export function defineSlotScripts(client: Redis): SlotScripts {
  client.defineCommand('ohsSlotAcquire', { lua: ACQUIRE });
  client.defineCommand('ohsSlotRenew', { lua: RENEW });
  client.defineCommand('ohsSlotRelease', { lua: RELEASE });
  client.defineCommand('ohsSlotCount', { lua: COUNT, readOnly: true });
  return client as unknown as SlotScripts;
}

/** Parses the reply of ohsSlotAcquire for `n` keys (`full`: the grant took some key's last slot). */
export function parseAcquireReply(reply: unknown, n: number): { refusedIndex: number; reclaimed: number[]; full: boolean } {
  if (!Array.isArray(reply) || reply.length !== n + 2 || !reply.every((v) => typeof v === 'number')) {
    throw new Error(`unexpected acquire reply: ${JSON.stringify(reply)}`);
  }
  const values = reply as number[];
  return { refusedIndex: (values[0] ?? 0) - 1, reclaimed: values.slice(1, n + 1), full: values[n + 1] === 1 };
}

export function parseCountReply(reply: unknown): number {
  if (typeof reply !== 'number') throw new Error(`unexpected count reply: ${JSON.stringify(reply)}`);
  return reply;
}
