// SSH through the sidecar against SSH straight to the gateway, in one run on one cluster:
//   direct         client -> owner's gateway
//   local_sidecar  client -> owner's sidecar -> its gateway
//   forwarded      client -> non-owner's sidecar -> owner's sidecar (peer hop) -> gateway
// For each: echo round trips of a small message through `cat` (p50/p99), and bulk download from
// `yes-bytes` (MiB/s). Paths are interleaved over several rounds, in rotating order, and the median
// round is reported, so machine noise lands on all of them alike. Prints numbers; asserts nothing.
// Env: BENCH_ROUNDS, BENCH_ECHO_N, BENCH_BULK_MIB (smaller values for a quick look),
// BENCH_FLEET=inproc (supervisor + sandbox SSH server in this process instead of a child).
// Then, as a separate section, the limit-check latency of bench/limits.ts (BENCH_LIMITS=0 skips it).
import { Cluster } from '../emulator/cluster.ts';
import { GatewayStore } from '../emulator/gateway/store.ts';
import { startProcess, tsEntry } from '../emulator/process.ts';
import { startSupervisorFleet } from '../emulator/supervisor/fleet.ts';
import { TEST_REDIS_URL, createTestDatabase, testRedisPrefix } from '../test/helpers/services.ts';
import { RESULTS_FILE, mergeResults, type BenchResult } from './lib/results.ts';
import { createCleanups } from './lib/cleanup.ts';
import { envInt, median, percentile, round1, round2 } from './lib/stats.ts';
import { runLimitBench } from './limits.ts';
import { openSshProbe, type SshProbe } from './lib/ssh-probe.ts';

const PATHS = ['direct', 'local_sidecar', 'forwarded'] as const;
type PathName = (typeof PATHS)[number];


const ROUNDS = envInt('BENCH_ROUNDS', 3);
const ECHO_N = envInt('BENCH_ECHO_N', 2000);
const ECHO_WARMUP = 200;
const ECHO_MESSAGE = Buffer.from('0123456789abcdef0123456789abcdef');
const BULK_BYTES = envInt('BENCH_BULK_MIB', 64) * 1024 * 1024;
const WARMUP_BULK_BYTES = 8 * 1024 * 1024;
const FLEET_IN_PROCESS = process.env.BENCH_FLEET === 'inproc';
const ECHO_TIMEOUT_MS = 60_000;
const BULK_TIMEOUT_MS = 120_000;
const OWNER_WAIT_MS = 10_000;

interface RoundSample {
  p50: number;
  p99: number;
  mibPerSec: number;
}

// Cleanup runs last-registered first, and also on Ctrl-C.
const cleanups = createCleanups();

async function measure(probe: SshProbe): Promise<RoundSample> {
  await probe.echo(ECHO_WARMUP, ECHO_MESSAGE, ECHO_TIMEOUT_MS);
  const rtts = (await probe.echo(ECHO_N, ECHO_MESSAGE, ECHO_TIMEOUT_MS)).sort();
  const secs = await probe.bulk(BULK_BYTES, BULK_TIMEOUT_MS);
  return { p50: percentile(rtts, 50), p99: percentile(rtts, 99), mibPerSec: BULK_BYTES / (1024 * 1024) / secs };
}


async function startFleet(endpoint: string, sandboxId: string): Promise<void> {
  if (FLEET_IN_PROCESS) {
    const fleet = await startSupervisorFleet({ endpoint, sandboxIds: [sandboxId] });
    cleanups.push({ what: 'fleet', run: () => fleet.stop() });
    await fleet.waitAllConnected(30_000);
    return;
  }
  const fleet = await startProcess('fleet', [...tsEntry('bench/lib/fleet-main.ts'), '--endpoint', endpoint, '--sandbox-id', sandboxId], {
    readyTimeoutMs: 40_000,
  });
  cleanups.push({ what: 'fleet', run: () => fleet.kill('SIGTERM') });
}

async function waitForOwner(store: GatewayStore, sandboxId: string): Promise<string> {
  const deadline = Date.now() + OWNER_WAIT_MS;
  for (;;) {
    const res = await store.pool.query<{ replica_id: string; epoch: string }>('SELECT replica_id, epoch FROM ohs_owners WHERE sandbox_id = $1', [sandboxId]);
    const row = res.rows[0];
    if (row) return row.replica_id;
    if (Date.now() > deadline) throw new Error(`no ohs_owners row for ${sandboxId} after ${OWNER_WAIT_MS} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function ratio(value: number, base: number | undefined): string {
  return base === undefined || !Number.isFinite(base) || base === 0 ? '' : ` (${(value / base).toFixed(2)}x)`;
}

function printTable(summary: Map<PathName, RoundSample>): void {
  const direct = summary.get('direct');
  const rows = [['path', 'echo p50 us', 'echo p99 us', 'bulk MiB/s']];
  for (const path of PATHS) {
    const s = summary.get(path);
    if (!s) {
      rows.push([path, 'failed', 'failed', 'failed']);
      continue;
    }
    const rel = path !== 'direct';
    rows.push([
      path,
      `${s.p50.toFixed(0)}${rel ? ratio(s.p50, direct?.p50) : ''}`,
      `${s.p99.toFixed(0)}${rel ? ratio(s.p99, direct?.p99) : ''}`,
      `${s.mibPerSec.toFixed(1)}${rel ? ratio(s.mibPerSec, direct?.mibPerSec) : ''}`,
    ]);
  }
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  console.log('');
  for (const [i, r] of rows.entries()) {
    console.log(r.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!))).join('   '));
    if (i === 0) console.log(widths.map((w) => '-'.repeat(w)).join('   '));
  }
  if (direct) {
    console.log('');
    for (const path of PATHS.filter((p) => p !== 'direct')) {
      const s = summary.get(path);
      if (!s) continue;
      console.log(
        `${path}: echo p50 ${(s.p50 / direct.p50).toFixed(2)}x direct, p99 ${(s.p99 / direct.p99).toFixed(2)}x direct, ` +
          `bulk ${(s.mibPerSec / direct.mibPerSec).toFixed(2)}x direct throughput`,
      );
    }
  }
}

function toResults(summary: Map<PathName, RoundSample>): Record<string, BenchResult> {
  const out: Record<string, BenchResult> = {};
  const metrics = [
    { key: 'ssh_echo_rtt_p50', unit: 'us', pick: (s: RoundSample) => s.p50, fmt: round1 },
    { key: 'ssh_echo_rtt_p99', unit: 'us', pick: (s: RoundSample) => s.p99, fmt: round1 },
    { key: 'ssh_bulk_throughput', unit: 'MiB/s', pick: (s: RoundSample) => s.mibPerSec, fmt: round1 },
  ];
  const direct = summary.get('direct');
  for (const m of metrics) {
    const baseKey = `${m.key}_direct`;
    for (const path of PATHS) {
      const s = summary.get(path);
      if (!s) continue;
      const v = m.pick(s);
      out[`${m.key}_${path}`] = { value: m.fmt(v), unit: m.unit, baseline: path === 'direct' ? 'direct' : baseKey };
      if (path !== 'direct' && direct) {
        out[`${m.key}_${path}_ratio`] = { value: round2(v / m.pick(direct)), unit: 'x', baseline: baseKey };
      }
    }
  }
  return out;
}

async function main(): Promise<number> {
  const started = Date.now();
  const elapsed = (): string => `${((Date.now() - started) / 1000).toFixed(1)}s`;

  const db = await createTestDatabase('bench_ssh');
  cleanups.push({ what: 'database', run: () => db.drop() });
  const store = new GatewayStore(db.url);
  cleanups.push({ what: 'store', run: () => store.close() });
  await store.migrate();

  const cluster = await Cluster.start({
    replicas: 2,
    databaseUrl: db.url,
    sidecars: { redisUrl: TEST_REDIS_URL, redisKeyPrefix: testRedisPrefix('bench-ssh') },
  });
  cleanups.push({ what: 'cluster', run: () => cluster.close() });
  const owner = cluster.replica(0);
  const other = cluster.replica(1);

  const sandbox = await store.createSandbox();
  await startFleet(`127.0.0.1:${owner.publicPort}`, sandbox.id);
  const ownerName = await waitForOwner(store, sandbox.id);
  if (ownerName !== owner.name) throw new Error(`sandbox ${sandbox.id} is owned by ${ownerName}, expected ${owner.name}`);
  console.log(`[${elapsed()}] cluster up: 2 replicas; sandbox ${sandbox.id} owned by ${ownerName} (checked in ohs_owners)`);

  const ports: Record<PathName, number> = { direct: owner.gatewayPort, local_sidecar: owner.publicPort, forwarded: other.publicPort };
  const probes = new Map<PathName, SshProbe>();
  cleanups.push({ what: 'ssh sessions', run: () => Promise.all([...probes.values()].map((p) => p.close())) });
  const failures = new Map<PathName, string>();
  const fail = (path: PathName, stage: string, err: unknown): void => {
    const msg = `${stage}: ${err instanceof Error ? err.message : String(err)}`;
    failures.set(path, msg);
    console.error(`[${elapsed()}] ${path} FAILED at ${msg}`);
    const probe = probes.get(path);
    probes.delete(path);
    void probe?.close().catch(() => undefined);
  };

  for (const path of PATHS) {
    try {
      // One token per path: the gateway caps concurrent SSH connections per token.
      const { token } = await store.createSshSession(sandbox.id, 3600);
      probes.set(path, await openSshProbe({ host: '127.0.0.1', port: ports[path], sandboxId: sandbox.id, token }));
    } catch (err) {
      fail(path, 'connect', err);
    }
  }

  for (const [path, probe] of probes) {
    try {
      await probe.echo(ECHO_WARMUP, ECHO_MESSAGE, ECHO_TIMEOUT_MS);
      await probe.bulk(WARMUP_BULK_BYTES, BULK_TIMEOUT_MS);
    } catch (err) {
      fail(path, 'warm-up', err);
    }
  }
  console.log(
    `[${elapsed()}] warmed up; ${ROUNDS} rounds of ${ECHO_N} echo round trips (${ECHO_MESSAGE.length} B, after ${ECHO_WARMUP} warm-up) ` +
      `+ ${BULK_BYTES / (1024 * 1024)} MiB bulk per path; sandbox SSH in ${FLEET_IN_PROCESS ? 'this process' : 'a child process'}`,
  );

  const samples = new Map<PathName, RoundSample[]>(PATHS.map((p) => [p, []]));
  for (let round = 0; round < ROUNDS; round++) {
    const order = PATHS.map((_, i) => PATHS[(i + round) % PATHS.length]!);
    for (const path of order) {
      const probe = probes.get(path);
      if (!probe) continue;
      try {
        const s = await measure(probe);
        samples.get(path)!.push(s);
        console.log(
          `[${elapsed()}] round ${round + 1} ${path.padEnd(13)} p50 ${s.p50.toFixed(0).padStart(6)} us  p99 ${s.p99.toFixed(0).padStart(6)} us  bulk ${s.mibPerSec.toFixed(1).padStart(7)} MiB/s`,
        );
      } catch (err) {
        fail(path, `round ${round + 1}`, err);
      }
    }
  }

  const summary = new Map<PathName, RoundSample>();
  for (const path of PATHS) {
    const s = samples.get(path)!;
    if (failures.has(path) || s.length === 0) continue;
    summary.set(path, { p50: median(s.map((x) => x.p50)), p99: median(s.map((x) => x.p99)), mibPerSec: median(s.map((x) => x.mibPerSec)) });
  }
  console.log(`\nSSH end to end (ssh2's JavaScript crypto dominates: not a measure of the proxy hop; see bench/proxy.ts for that)`);
  console.log(`median of ${ROUNDS} rounds (ratios against direct):`);
  printTable(summary);

  await mergeResults(toResults(summary), {
    ssh_bench: {
      what: 'SSH end to end (ssh2 JavaScript crypto on both ends); the proxy hop itself is proxy_bench',
      replicas: 2,
      rounds: ROUNDS,
      echo_round_trips: ECHO_N,
      echo_warmup: ECHO_WARMUP,
      echo_message_bytes: ECHO_MESSAGE.length,
      bulk_bytes: BULK_BYTES,
      sandbox_ssh: FLEET_IN_PROCESS ? 'bench process' : 'child process',
      ...(failures.size > 0 ? { failures: Object.fromEntries(failures) } : {}),
    },
  });
  console.log(`\nwrote ${RESULTS_FILE} [${elapsed()}]`);
  if (failures.size > 0) {
    console.error(`paths that failed: ${[...failures.keys()].join(', ')}`);
    return 1;
  }
  return 0;
}

let code = 1;
try {
  code = await main();
} catch (err) {
  console.error(`bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
} finally {
  await cleanups.runAll();
}

// ---- Limit-check latency (bench/limits.ts) -------------------------------------------------------
// A separate section with its own two clusters, started once the SSH bench's are gone; it merges its
// own keys (limit_check_*) into the same results file. BENCH_LIMITS=0 skips it.
if (process.env.BENCH_LIMITS !== '0') {
  console.log('\n---- limit-check latency ----');
  try {
    code = Math.max(code, await runLimitBench({ defer: (what, run) => cleanups.push({ what, run }) }));
  } catch (err) {
    console.error(`limits bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    code = 1;
  } finally {
    await cleanups.runAll();
  }
}
process.exit(code);
