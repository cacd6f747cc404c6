// What keeping limit slots alive costs (DESIGN §5: each held slot's lease is renewed in Redis every
// renewIntervalMs). One limiter holds BENCH_RENEW_CONNS connections with two rules each (a slot per
// sandbox and per token: 50 sandboxes and 50 tokens, so 2 × connections key/member pairs on 100
// keys, the scale bench's shape) and renews every second for BENCH_RENEW_S seconds. Per renewal:
// this process's CPU (less what it spends in as long a window with no slot held, measured first),
// Redis's CPU for the script calls (INFO commandstats) and the bytes Redis read.
//
// Its argument is the source tree whose limiter is measured (default: this one), so an earlier
// commit is measured from a worktree of it by the same script, one after the other:
//   git worktree add /tmp/wt <commit> && ln -s "$PWD/node_modules" /tmp/wt/node_modules
//   node --import tsx bench/slot-renewal.ts /tmp/wt; node --import tsx bench/slot-renewal.ts
// Real Redis (TEST_REDIS_URL). Prints one JSON line; asserts nothing.
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Redis } from 'ioredis';
import pino from 'pino';
import type { AcquireResult, SlotLimiter, SlotLimiterOptions } from '../src/limits/slots.ts';
import { TEST_REDIS_URL, testRedisPrefix } from '../test/helpers/services.ts';
import { envInt, round1 } from './lib/stats.ts';

const CONNS = envInt('BENCH_RENEW_CONNS', 10_000);
const SECONDS = envInt('BENCH_RENEW_S', 20);
const root = resolve(process.argv[2] ?? join(dirname(fileURLToPath(import.meta.url)), '..'));

const { createSlotLimiter } = (await import(pathToFileURL(join(root, 'src/limits/slots.ts')).href)) as {
  createSlotLimiter: (o: SlotLimiterOptions) => SlotLimiter;
};
const keyPrefix = testRedisPrefix('bench_renew');
const limiter = createSlotLimiter({
  redisUrl: TEST_REDIS_URL,
  keyPrefix,
  holderId: 'openshell-gateway-0',
  leaseTtlMs: 3_000,
  renewIntervalMs: 1_000,
  rules: [
    { name: 'per-sandbox', trafficClass: 'ssh-tunnel', key: 'sandbox', max: 1_000_000 },
    { name: 'per-token', trafficClass: 'ssh-tunnel', key: 'token', max: 1_000_000 },
  ],
  liveReplicas: () => 3,
  logger: pino({ level: 'warn' }),
});
const inspector = new Redis(TEST_REDIS_URL);

try {
  // The same process over the same length of time with no slot held: what it spends on anything but
  // renewing (timers, the loader, the client's upkeep), subtracted below.
  await new Promise((r) => setTimeout(r, 1_000));
  const idle0 = process.cpuUsage();
  await new Promise((r) => setTimeout(r, SECONDS * 1_000 + 100));
  const idle = process.cpuUsage(idle0);
  const held: AcquireResult[] = [];
  for (let i = 0; i < CONNS; i += 500) {
    const batch = Array.from({ length: Math.min(500, CONNS - i) }, (_, k) =>
      limiter.acquire({ cls: 'ssh-tunnel', sandboxId: `sandbox-${(i + k) % 50}-0123456789abcdef`, token: `token-${(i + k) % 50}` }),
    );
    held.push(...(await Promise.all(batch)));
  }
  if (!held.every((r) => r.ok)) throw new Error('a slot was refused');
  await new Promise((r) => setTimeout(r, 1_500));
  await inspector.config('RESETSTAT');
  const cpu0 = process.cpuUsage();
  await new Promise((r) => setTimeout(r, SECONDS * 1_000 + 100));
  const cpu = process.cpuUsage(cpu0);
  const commands = await inspector.info('commandstats');
  const stats = await inspector.info('stats');
  const script = /cmdstat_evalsha:calls=(\d+),usec=(\d+)/.exec(commands);
  const bytesIn = Number(/total_net_input_bytes:(\d+)/.exec(stats)?.[1] ?? NaN);
  console.log(
    JSON.stringify({
      source: root,
      pairs: 2 * CONNS,
      renewals: SECONDS,
      scriptCalls: Number(script?.[1] ?? 0),
      clientCpuMsPerRenewal: round1((cpu.user + cpu.system - idle.user - idle.system) / 1_000 / SECONDS),
      clientCpuMsPerSecondIdle: round1((idle.user + idle.system) / 1_000 / SECONDS),
      redisCpuMsPerRenewal: round1(Number(script?.[2] ?? 0) / 1_000 / SECONDS),
      redisBytesInPerRenewal: Math.round(bytesIn / SECONDS),
      bytesPerPair: round1(bytesIn / SECONDS / (2 * CONNS)),
    }),
  );
  for (const r of held) if (r.ok) r.release();
  await new Promise((r) => setTimeout(r, 300));
} finally {
  await limiter.close();
  const keys = await inspector.keys(`${keyPrefix}*`);
  if (keys.length > 0) await inspector.del(...keys);
  inspector.disconnect();
}
