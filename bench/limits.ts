// What the cluster-wide limit check (DESIGN §5) adds to opening an SSH tunnel.
//
// Method: time-to-200 of `CONNECT /connect/ssh` through a sidecar, on two single-replica clusters
// that differ only in where the limit slots live:
//   redis  the sidecar has --redis-url: each tunnel takes its slots with one atomic script call to
//          Redis (and releases them with another, off the critical path), as in production;
//   local  the same cluster mode (Postgres ownership, same flags) without Redis: the limiter counts
//          in process, so the check costs a map lookup. This is "the same tunnel path with limits
//          effectively off" while still running the rest of the admission code.
// Everything else on the path is the same (client -> sidecar -> local gateway -> 200; the supervisor
// is connected to that replica, and a long owner-cache TTL keeps routing lookups in memory on both).
// The attempts are sequential and alternate between the two clusters one by one (ABBA order); each
// round gives a p50 per path and their difference, and the median round is reported, so machine
// noise lands on both alike. Measuring acquire() alone against a no-rule limiter was rejected: its
// baseline is ~0 µs, so a ratio would mean nothing, and it leaves out what a client actually waits for.
// Results: p50/p99 time-to-200 of each, their ratio, and the added p50 (redis - local, median of the
// rounds' differences) in µs.
// Prints numbers; asserts nothing.
// Env: BENCH_LIMIT_ROUNDS (default 5), BENCH_LIMIT_N (attempts per path per round, default 200).
import { pathToFileURL } from 'node:url';
import { Cluster } from '../emulator/cluster.ts';
import { GatewayStore } from '../emulator/gateway/store.ts';
import { startProcess, tsEntry } from '../emulator/process.ts';
import { TEST_REDIS_URL, createTestDatabase, testRedisPrefix } from '../test/helpers/services.ts';
import { openConnectTunnel } from '../emulator/ssh-client.ts';
import { RESULTS_FILE, mergeResults, type BenchResult } from './lib/results.ts';
import { createCleanups } from './lib/cleanup.ts';
import { envInt, median, percentile, round1, round2 } from './lib/stats.ts';

const PATHS = ['local', 'redis'] as const;
type PathName = (typeof PATHS)[number];


/** Tokens per path, used in turn: a token comes back only after the others, so that the gateway's own
 * per-token cap (it releases a closed tunnel a little after the sidecar does) never decides. */
const TOKENS = 8;
const WARMUP = 50;
const ATTEMPT_TIMEOUT_MS = 10_000;

export interface LimitBenchOptions {
  /** Registers a cleanup; the caller runs them (last registered first), also on Ctrl-C. */
  defer(what: string, run: () => Promise<unknown>): void;
}

interface PathSetup {
  port: number;
  sandboxId: string;
  tokens: string[];
}


async function startPath(name: PathName, opts: LimitBenchOptions): Promise<PathSetup> {
  const db = await createTestDatabase(`bench_limits_${name}`);
  opts.defer(`${name} database`, () => db.drop());
  const store = new GatewayStore(db.url);
  opts.defer(`${name} store`, () => store.close());
  await store.migrate();
  const cluster = await Cluster.start({
    replicas: 1,
    databaseUrl: db.url,
    sidecars: {
      ...(name === 'redis' ? { redisUrl: TEST_REDIS_URL, redisKeyPrefix: testRedisPrefix('bench-limits') } : {}),
      extraArgs: ['--owner-cache-ttl-ms', '600000'],
    },
  });
  opts.defer(`${name} cluster`, () => cluster.close());
  const replica = cluster.replica(0);
  const sandbox = await store.createSandbox();
  const fleet = await startProcess(`fleet-${name}`, [...tsEntry('bench/lib/fleet-main.ts'), '--endpoint', `127.0.0.1:${replica.publicPort}`, '--sandbox-id', sandbox.id], {
    readyTimeoutMs: 40_000,
  });
  opts.defer(`${name} fleet`, () => fleet.kill('SIGTERM'));
  const tokens = await Promise.all(Array.from({ length: TOKENS }, async () => (await store.createSshSession(sandbox.id, 3600)).token));
  return { port: replica.publicPort, sandboxId: sandbox.id, tokens };
}

/** One tunnel: microseconds from the CONNECT to its 200; closed (and seen closed) before returning. */
async function timeToOk(path: PathSetup, seq: number): Promise<number> {
  const token = path.tokens[seq % path.tokens.length]!;
  const t0 = process.hrtime.bigint();
  const res = await openConnectTunnel({ host: '127.0.0.1', port: path.port, sandboxId: path.sandboxId, token, timeoutMs: ATTEMPT_TIMEOUT_MS });
  const us = Number(process.hrtime.bigint() - t0) / 1000;
  if (res.status !== 200 || !res.socket) throw new Error(`tunnel ${seq}: ${res.status} ${res.body.trim()}`);
  const socket = res.socket;
  await new Promise<void>((resolve) => {
    socket.once('close', () => resolve());
    socket.destroy();
  });
  return us;
}

/** Runs the limit-check bench and merges its results into bench/results/latest.json; returns an exit code. */
export async function runLimitBench(opts: LimitBenchOptions): Promise<number> {
  const rounds = envInt('BENCH_LIMIT_ROUNDS', 5);
  const n = envInt('BENCH_LIMIT_N', 200);
  const started = Date.now();
  const elapsed = (): string => `${((Date.now() - started) / 1000).toFixed(1)}s`;

  const setups = new Map<PathName, PathSetup>();
  for (const name of PATHS) setups.set(name, await startPath(name, opts));
  console.log(`[${elapsed()}] limits bench: two single-replica clusters up (limits in redis / in process); ${rounds} rounds of ${n} tunnels per path`);

  for (let i = 0; i < WARMUP; i++) for (const name of PATHS) await timeToOk(setups.get(name)!, i);
  const p50s = new Map<PathName, number[]>(PATHS.map((p) => [p, []]));
  const p99s = new Map<PathName, number[]>(PATHS.map((p) => [p, []]));
  const added: number[] = [];
  for (let round = 0; round < rounds; round++) {
    const samples = new Map<PathName, Float64Array>(PATHS.map((p) => [p, new Float64Array(n)]));
    for (let i = 0; i < n; i++) {
      // Attempt by attempt, in ABBA order: load drift on this shared machine hits both alike.
      const order = i % 2 === 0 ? PATHS : [...PATHS].reverse();
      for (const name of order) samples.get(name)![i] = await timeToOk(setups.get(name)!, round * n + i);
    }
    const line: string[] = [];
    for (const name of PATHS) {
      const sorted = samples.get(name)!.sort();
      const p50 = percentile(sorted, 50);
      const p99 = percentile(sorted, 99);
      p50s.get(name)!.push(p50);
      p99s.get(name)!.push(p99);
      line.push(`${name} p50 ${p50.toFixed(0).padStart(6)} us p99 ${p99.toFixed(0).padStart(6)} us`);
    }
    added.push(p50s.get('redis')![round]! - p50s.get('local')![round]!);
    console.log(`[${elapsed()}] round ${round + 1} time-to-200: ${line.join('   ')}   added p50 ${added[round]!.toFixed(0)} us`);
  }

  const local50 = median(p50s.get('local')!);
  const redis50 = median(p50s.get('redis')!);
  const local99 = median(p99s.get('local')!);
  const redis99 = median(p99s.get('redis')!);
  const results: Record<string, BenchResult> = {
    limit_check_tunnel_open_p50_local: { value: round1(local50), unit: 'us', baseline: 'limits counted in process (no redis)' },
    limit_check_tunnel_open_p50_redis: { value: round1(redis50), unit: 'us', baseline: 'limit_check_tunnel_open_p50_local' },
    limit_check_tunnel_open_p50_ratio: { value: round2(redis50 / local50), unit: 'x', baseline: 'limit_check_tunnel_open_p50_local' },
    limit_check_added_latency_p50_us: { value: round1(median(added)), unit: 'us', baseline: 'limit_check_tunnel_open_p50_local' },
    limit_check_tunnel_open_p99_local: { value: round1(local99), unit: 'us', baseline: 'limits counted in process (no redis)' },
    limit_check_tunnel_open_p99_redis: { value: round1(redis99), unit: 'us', baseline: 'limit_check_tunnel_open_p99_local' },
    limit_check_tunnel_open_p99_ratio: { value: round2(redis99 / local99), unit: 'x', baseline: 'limit_check_tunnel_open_p99_local' },
  };
  console.log(
    `\nmedian of ${rounds} rounds: time-to-200 p50 ${local50.toFixed(0)} us local, ${redis50.toFixed(0)} us redis ` +
      `(${(redis50 / local50).toFixed(2)}x; added p50, median of the rounds: ${median(added).toFixed(0)} us); p99 ${local99.toFixed(0)} us local, ${redis99.toFixed(0)} us redis (${(redis99 / local99).toFixed(2)}x)`,
  );
  await mergeResults(results, {
    limits_bench: { replicas_per_path: 1, rounds, tunnels_per_path_per_round: n, warmup_per_path: WARMUP, tokens_per_path: TOKENS, measured: 'CONNECT -> 200 through the sidecar, sequential' },
  });
  console.log(`wrote ${RESULTS_FILE} [${elapsed()}]`);
  return 0;
}

// Standalone: npx tsx bench/limits.ts (bench/run.ts also runs it after the SSH bench).
if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const cleanups = createCleanups();
  let code = 1;
  try {
    code = await runLimitBench({ defer: (what, run) => cleanups.push({ what, run }) });
  } catch (err) {
    console.error(`limits bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
  } finally {
    await cleanups.runAll();
  }
  process.exit(code);
}
