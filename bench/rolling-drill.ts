// Drain and rebalance drills (`make drill`, not part of `make test`; DESIGN §6):
// 1. Rolling restart: 3 replicas of the 2026-08 emulator behind sidecars, 30 sandboxes, continuous
//    ForwardTcp SSH and ExecSandbox through a readiness-probed Service; each replica in turn is
//    stopped the way Kubernetes stops a pod (SIGTERM to the sidecar, which drains; the gateway once
//    the sidecar exited) and restarted. Reported: failed operations (target 0), per-operation
//    latency p50/p95/max before and during the roll, each drain's duration.
// 2. Scale-up from 2 to 4 replicas with 40 sandboxes: time until every replica is within ±20 % of
//    fair share, sessions moved against the minimum (what each replica held over the new fair share
//    when the new replicas started: 20 when the 40 were split evenly), failed operations (target 0).
// 3. A drain whose grace period is too short for its sessions: what the operator sees (the drain
//    report in the log, ohs_drain_duration_seconds, ohs_sessions_shed_total) and that only what the
//    deadline cut is lost.
// Supervisors run in child processes with the real backoff (1 s doubling to 30 s, never reset). The
// Service follows the sidecars' /readyz and picks a replica at random per connection, as kube-proxy does.
// Writes its keys into bench/results/drill.json. Env: ROLLING_SHUTDOWN_GRACE_MS (default 20000);
// ROLLING_PARTS (default `rolling,scaleup,short`) runs some parts only (results are then not written);
// ROLLING_STOP_ORDER stops the short-grace replica: `container` (default; sidecar first, the gateway
// once it exited, as Compose does), `native` (preStop drain, gateway, then sidecar: a native sidecar
// pod) or `container-pod` (preStop drain, then both at once: a plain-container pod);
// ROLLING_LOG_DIR keeps every gateway's and sidecar's output there, for reading what went wrong.
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { Cluster } from '../emulator/cluster.ts';
import { sshViaForwardTcp } from '../emulator/forward-tcp-client.ts';
import { Gen2Store } from '../emulator/gateway/gen2/store.ts';
import { startProcess, tsEntry, type ManagedProcess } from '../emulator/process.ts';
import { Phase } from '../emulator/proto.ts';
import { exec, gatewayClient } from '../test/helpers/grpc-client.ts';
import { TEST_REDIS_URL, createTestDatabase, testRedisPrefix } from '../test/helpers/services.ts';
import { createCleanups } from './lib/cleanup.ts';
import { RESULTS_FILE, mergeResults, type BenchResult } from './lib/results.ts';
import { envInt, percentile } from './lib/stats.ts';

const GRACE_MS = envInt('ROLLING_SHUTDOWN_GRACE_MS', 20_000);
const DRILL_FILE = join(dirname(RESULTS_FILE), 'drill.json');
const STOP_ORDER = process.env.ROLLING_STOP_ORDER === 'native' ? 'native' : process.env.ROLLING_STOP_ORDER === 'container-pod' ? 'container-pod' : 'container';
const PARTS = new Set((process.env.ROLLING_PARTS ?? 'rolling,scaleup,short').split(','));
const LOG_DIR = process.env.ROLLING_LOG_DIR;

/** With ROLLING_LOG_DIR: the output of a replica's processes, before they are replaced. */
async function keepLogs(label: string, r: { name: string; gateway: { output: string[] }; sidecar?: { output: string[] } }): Promise<void> {
  if (!LOG_DIR) return;
  await mkdir(LOG_DIR, { recursive: true });
  await writeFile(join(LOG_DIR, `${label}-${r.name}-gateway.log`), r.gateway.output.join('\n'));
  if (r.sidecar) await writeFile(join(LOG_DIR, `${label}-${r.name}-sidecar.log`), r.sidecar.output.join('\n'));
}
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const cleanups = createCleanups();
const watchdog = setTimeout(() => {
  console.error('rolling drill overran its budget: cleaning up');
  void cleanups.runAll().finally(() => process.exit(2));
}, 20 * 60_000);
watchdog.unref();

interface Env {
  cluster: Cluster;
  store: Gen2Store;
  ids: string[];
  fleet: ManagedProcess;
}

async function startEnv(label: string, replicas: number, sandboxes: number, sidecarArgs: string[]): Promise<Env> {
  const db = await createTestDatabase(label);
  cleanups.push({ what: `drop ${label}`, run: () => db.drop() });
  const store = new Gen2Store(db.url, { poolSize: 3 });
  await store.migrate();
  cleanups.push({ what: 'store', run: () => store.close() });
  const cluster = await Cluster.start({
    replicas,
    databaseUrl: db.url,
    protocol: '2026-08',
    readinessProbeMs: 250,
    balancerPick: 'random',
    logLevel: 'info',
    sidecars: { redisUrl: TEST_REDIS_URL, redisKeyPrefix: testRedisPrefix(label), extraArgs: sidecarArgs },
  });
  cleanups.push({ what: 'cluster', run: () => cluster.close() });
  const ids: string[] = [];
  for (let i = 0; i < sandboxes; i++) ids.push((await store.createSandbox({ name: `${label}-${i}` })).id);
  const fleet = await startProcess(
    'fleet',
    [...tsEntry('bench/lib/fleet-main.ts'), '--endpoint', cluster.endpoint, '--protocol', '2026-08', '--jwt-key-dir', cluster.jwtKeyDir!, ...ids.flatMap((id) => ['--sandbox-id', id])],
    { readyTimeoutMs: 60_000 },
  );
  cleanups.push({ what: 'fleet', run: () => fleet.kill('SIGTERM') });
  for (let i = 0; i < 300; i++) {
    const phases = await Promise.all(ids.map(async (id) => (await store.getSandbox(id))?.phase));
    if (phases.every((p) => p === Phase.READY)) break;
    await sleep(200);
  }
  return { cluster, store, ids, fleet };
}

interface Op {
  at: number;
  ms: number;
  ok: boolean;
  what: string;
}

/** Continuous SSH and exec through the Service over every sandbox until stopped. */
function startLoad(env: Env, workers: number): { ops: Op[]; stop: () => Promise<void> } {
  const ops: Op[] = [];
  let stop = false;
  let next = 0;
  const run = async (w: number): Promise<void> => {
    const client = gatewayClient(env.cluster.endpoint);
    try {
      while (!stop) {
        const id = env.ids[next++ % env.ids.length]!;
        const at = Date.now();
        let ok = false;
        let what = '';
        try {
          if ((next + w) % 2 === 0) {
            const token = (await env.store.createSshSession(id, 3600)).token;
            const r = await sshViaForwardTcp({ endpoint: env.cluster.endpoint, sandboxId: id, token, command: 'sandbox-id', timeoutMs: 40_000 });
            ok = r.grpcCode === null && r.stdout.trim() === id;
            what = ok ? 'ssh' : `ssh ${r.grpcCode === null ? 'wrong output' : `${grpc.status[r.grpcCode]} ${r.grpcDetails}`}`;
          } else {
            const r = await exec(client, id, ['sandbox-id']);
            ok = r.exitCode === 0 && r.stdout.trim() === id;
            what = ok ? 'exec' : `exec exit ${r.exitCode}`;
          }
        } catch (err) {
          const e = err as grpc.ServiceError;
          what = `${grpc.status[e.code] ?? ''} ${e.details ?? (err as Error).message}`;
        }
        ops.push({ at, ms: Date.now() - at, ok, what });
      }
    } finally {
      client.close();
    }
  };
  const runs = Array.from({ length: workers }, (_, w) => run(w));
  return {
    ops,
    stop: async () => {
      stop = true;
      await Promise.all(runs);
    },
  };
}

function latency(ops: Op[]): { p50: number; p95: number; max: number; n: number } {
  const ms = ops.filter((o) => o.ok).map((o) => o.ms).sort((a, b) => a - b);
  return { p50: percentile(ms, 50), p95: percentile(ms, 95), max: ms.reduce((a, b) => Math.max(a, b), 0), n: ms.length };
}

async function perReplica(store: Gen2Store): Promise<Record<string, number>> {
  const res = await store.pool.query<{ replica_id: string; n: string }>('SELECT replica_id, count(*) AS n FROM ohs_owners GROUP BY replica_id');
  return Object.fromEntries(res.rows.map((r) => [r.replica_id, Number(r.n)]));
}

async function shedTotal(cluster: Cluster, reason: string): Promise<number> {
  let n = 0;
  for (const r of cluster.replicas) {
    if (!r.sidecar?.alive()) continue;
    const text = await (await fetch(`http://127.0.0.1:${r.sidecarPorts!.admin}/metrics`)).text().catch(() => '');
    n += Number(new RegExp(`^ohs_sessions_shed_total\\{reason="${reason}"\\} (\\d+)`, 'm').exec(text)?.[1] ?? 0);
  }
  return n;
}

async function rollingRestart(): Promise<Record<string, unknown>> {
  console.log(`rolling restart: 3 replicas, 30 sandboxes, grace ${GRACE_MS} ms`);
  const env = await startEnv('roll', 3, 30, ['--shutdown-grace-ms', String(GRACE_MS)]);
  const load = startLoad(env, 4);
  await sleep(15_000);
  const rollStart = Date.now();
  const drains: Array<{ replica: string; sessions: number; exitMs: number; report: string | undefined }> = [];
  for (let i = 0; i < 3; i++) {
    const r = env.cluster.replica(i);
    const sessions = (await perReplica(env.store))[r.name] ?? 0;
    const exitMs = await env.cluster.terminate(i, GRACE_MS + 5_000);
    const report = r.sidecar?.output.find((l) => l.includes('"component":"drain"') && (l.includes('drain complete') || l.includes('drain deadline')));
    drains.push({ replica: r.name, sessions, exitMs, report });
    console.log(`  ${r.name}: ${sessions} sessions, sidecar exited ${exitMs} ms after SIGTERM; ${report?.replace(/^[^{]*/, '') ?? 'no drain report'}`);
    await keepLogs(`roll${i}`, r);
    await env.cluster.restart(i);
    // Let the Service see it ready and the cluster settle before the next pod goes.
    await sleep(10_000);
  }
  const rollEnd = Date.now();
  await sleep(5_000);
  await load.stop();
  const before = load.ops.filter((o) => o.at < rollStart);
  const during = load.ops.filter((o) => o.at >= rollStart && o.at <= rollEnd);
  const failed = load.ops.filter((o) => !o.ok);
  const result = {
    graceMs: GRACE_MS,
    operations: load.ops.length,
    failed: failed.length,
    failures: failed.slice(0, 20).map((o) => ({ atS: ((o.at - rollStart) / 1000).toFixed(1), what: o.what })),
    latencyBeforeMs: latency(before),
    latencyDuringRollMs: latency(during),
    drains: drains.map((d) => {
      const report = d.report ? (JSON.parse(d.report.replace(/^[^{]*/, '')) as { durationMs: number; endedBy: string; cut: unknown }) : undefined;
      return { replica: d.replica, sessions: d.sessions, exitMs: d.exitMs, drainDurationMs: report?.durationMs ?? null, endedBy: report?.endedBy ?? null, cut: report?.cut ?? null };
    }),
    sessionsAfter: await perReplica(env.store),
  };
  console.log(`rolling restart: ${JSON.stringify(result)}`);
  for (const r of env.cluster.replicas) await keepLogs('roll-end', r);
  await cleanups.runAll();
  return result;
}

async function scaleUp(): Promise<Record<string, unknown>> {
  console.log('scale-up: 2 → 4 replicas, 40 sandboxes');
  const env = await startEnv('scaleup', 2, 40, ['--shutdown-grace-ms', String(GRACE_MS)]);
  const load = startLoad(env, 2);
  await sleep(12_000);
  const shedBefore = await shedTotal(env.cluster, 'rebalance');
  // The fewest moves that reach the new fair share: what each replica holds above it.
  const before = await perReplica(env.store);
  const fair = Math.ceil(env.ids.length / 4);
  const minimumMoves = Object.values(before).reduce((sum, n) => sum + Math.max(0, n - fair), 0);
  const started = Date.now();
  await env.cluster.add();
  await env.cluster.add();
  let balancedMs: number | null = null;
  let counts: Record<string, number> = {};
  for (let i = 0; i < 960 && balancedMs === null; i++) {
    counts = await perReplica(env.store);
    const values = env.cluster.replicas.map((r) => counts[r.name] ?? 0);
    if (values.every((n) => n >= 10 * 0.8 && n <= 10 * 1.2)) balancedMs = Date.now() - started;
    else await sleep(250);
  }
  await sleep(3_000);
  await load.stop();
  const moved = (await shedTotal(env.cluster, 'rebalance')) - shedBefore;
  const failed = load.ops.filter((o) => !o.ok);
  const result = { balancedMs, before, perReplica: counts, sessionsMoved: moved, minimumMoves, operations: load.ops.length, failed: failed.length, failures: failed.slice(0, 20).map((o) => `${new Date(o.at).toISOString().slice(11, 23)} ${o.what}`) };
  console.log(`scale-up: ${JSON.stringify(result)}`);
  for (const r of env.cluster.replicas) await keepLogs('scaleup', r);
  await cleanups.runAll();
  return result;
}

async function shortGrace(): Promise<Record<string, unknown>> {
  const grace = 3_000;
  console.log(`short grace: a replica with its sessions and three long SSH sessions, grace ${grace} ms (1 s of it for the drain)`);
  const env = await startEnv('shortgrace', 2, 20, ['--shutdown-grace-ms', String(grace), '--rebalance', 'off']);
  const counts = await perReplica(env.store);
  const victim = env.cluster.replicas.reduce((a, b) => ((counts[b.name] ?? 0) > (counts[a.name] ?? 0) ? b : a));
  const owners = await env.store.pool.query<{ sandbox_id: string; replica_id: string }>('SELECT sandbox_id, replica_id FROM ohs_owners');
  const onVictim = owners.rows.filter((r) => r.replica_id === victim.name).map((r) => r.sandbox_id);
  // Three SSH sessions that outlast the grace, in flight through the victim.
  const long = onVictim.slice(0, 3).map(async (id) => {
    const token = (await env.store.createSshSession(id, 3600)).token;
    return sshViaForwardTcp({ endpoint: `127.0.0.1:${victim.publicPort}`, sandboxId: id, token, command: 'sleep 6', timeoutMs: 30_000 }).then(
      (r) => (r.grpcCode === null && r.code === 0 ? 'completed' : `cut (${r.grpcCode === null ? `exit ${r.code}` : grpc.status[r.grpcCode]})`),
      (err: Error) => `cut (${err.message})`,
    );
  });
  await sleep(1_000);
  // ROLLING_STOP_ORDER=native: the native-sidecar pod stop (preStop drain, gateway, then sidecar).
  const exitMs =
    STOP_ORDER === 'native'
      ? await env.cluster.stop(victim.index, 10_000)
      : STOP_ORDER === 'container-pod'
        ? await env.cluster.stopContainerPod(victim.index, 10_000)
        : await env.cluster.terminate(victim.index, 10_000);
  const reportLine = victim.sidecar?.output.find((l) => l.includes('drain deadline') || l.includes('drain complete'));
  const longOutcomes = await Promise.all(long);
  // Nothing else is lost: every sandbox answers through the Service afterwards.
  await sleep(5_000);
  let reachable = 0;
  const unreachable: string[] = [];
  const client = gatewayClient(env.cluster.endpoint);
  for (const id of env.ids) {
    const r = await exec(client, id, ['sandbox-id']).catch((err: grpc.ServiceError) => ({ exitCode: null, stdout: '', error: `${grpc.status[err.code] ?? ''} ${err.details ?? err.message}` }));
    if (r.exitCode === 0 && r.stdout.trim() === id) reachable++;
    else unreachable.push(`${id.slice(0, 8)}: ${'error' in r ? r.error : `exit ${r.exitCode}`}`);
  }
  client.close();
  const result = {
    graceMs: grace,
    replica: victim.name,
    sessions: onVictim.length,
    exitMs,
    report: reportLine ? JSON.parse(reportLine.replace(/^[^{]*/, '')) : null,
    longSshSessions: longOutcomes,
    reachableAfter: `${reachable}/${env.ids.length}`,
    unreachable,
  };
  for (const r of env.cluster.replicas) await keepLogs('short', r);
  console.log(`short grace: ${JSON.stringify(result)}`);
  await cleanups.runAll();
  return result;
}

try {
  if (PARTS.size < 3) {
    if (PARTS.has('rolling')) await rollingRestart();
    if (PARTS.has('scaleup')) await scaleUp();
    if (PARTS.has('short')) await shortGrace();
    console.log('some parts only: results not written');
    process.exit(0);
  }
  const roll = await rollingRestart();
  const scale = await scaleUp();
  const short = await shortGrace();
  const results: Record<string, BenchResult> = {
    'rolling.failed_operations': { value: Number(roll.failed), unit: 'operations', baseline: '0' },
    'scaleup.balanced_ms': { value: Number(scale.balancedMs ?? -1), unit: 'ms', baseline: 'scale-up start' },
    'scaleup.sessions_moved': { value: Number(scale.sessionsMoved), unit: 'sessions', baseline: `minimum ${scale.minimumMoves}` },
  };
  await mergeResults(results, { rollingRestart: roll, scaleUp: scale, shortGrace: short }, DRILL_FILE);
  console.log(`wrote ${DRILL_FILE}`);
} finally {
  await cleanups.runAll();
  clearTimeout(watchdog);
}
