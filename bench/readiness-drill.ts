// Readiness drill (`make drill-readiness`, not part of `make test`): the 2026-08 gateway's
// reconciler-lease holder demotes sandboxes whose supervisor session lives on another replica
// (reference §10). This drill measures that failure with owner routing alone, then the sidecar's fix
// (shadow registrations) under continuous load and while the lease holder is stopped and killed.
//
// Both parts: 3 gateway emulator replicas of the 2026-08 generation on one Postgres, each behind a
// sidecar, a round-robin Service, 30 sandboxes whose supervisors (in a child process, the real
// backoff) dial the Service, and upstream's lease timings (TTL 30 s, renew 10 s, acquire 5 s, sweep
// every 60 s) unless READINESS_SWEEP_SECS says otherwise.
// 1. Baseline, `--readiness-mode off`: after 90 s (1.5 sweeps), the share of sandboxes Provisioning,
//    and ForwardTcp SSH to them (refused FAILED_PRECONDITION).
// 2. With the fix (the default): READINESS_DRILL_MINUTES (default 10) of continuous ForwardTcp SSH and
//    ExecSandbox through the Service over every sandbox; every phase sampled every second. At 30 %
//    the lease holder's pod is stopped as Kubernetes stops it with the sidecar injected natively (the
//    gateway's preStop drains the sidecar, SIGTERM to the gateway, then to the sidecar), at 60 %
//    another holder is killed -9 (both at once);
//    each leaves the Service at once (as its endpoint does) and is restarted 15 s later. At 85 % one
//    supervisor is killed for real (its process, kill -9): its sandbox must become Provisioning
//    within the gateway's own timing. Reported: operations and failures (refused for phase apart),
//    the longest non-Ready window of a live sandbox (overall and outside the pod kills' own
//    sandboxes), time to Provisioning of the killed supervisor's sandbox, sessions per replica.
// Writes bench/results/readiness-drill.json.
import { writeFile } from 'node:fs/promises';
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
import { ReadinessLog, runLoad, runSchedule, sleep, spread } from './lib/readiness.ts';
import { RESULTS_FILE, machineMeta } from './lib/results.ts';
import { envInt } from './lib/stats.ts';

const SANDBOXES = 30;
const MINUTES = Number(process.env.READINESS_DRILL_MINUTES ?? '10');
const SWEEP_SECS = envInt('READINESS_SWEEP_SECS', 60);
const BASELINE = (process.env.READINESS_BASELINE ?? '1') !== '0';
const WORKERS = envInt('READINESS_WORKERS', 4);
const RESTART_AFTER_MS = 15_000;
const OUT_FILE = join(dirname(RESULTS_FILE), 'readiness-drill.json');
const LEASE_ARGS = ['--reconcile-interval-secs', String(SWEEP_SECS), '--log-level', 'warn'];

const cleanups = createCleanups();
const watchdog = setTimeout(() => {
  console.error('readiness drill overran its budget: cleaning up');
  void cleanups.runAll().finally(() => process.exit(2));
}, (MINUTES + 12) * 60_000);
watchdog.unref();

interface Env {
  cluster: Cluster;
  store: Gen2Store;
  ids: string[];
  fleet: ManagedProcess;
  victimFleet: ManagedProcess;
  victim: string;
}

async function startEnv(label: string, mode: 'off' | 'shadow'): Promise<Env> {
  const db = await createTestDatabase(label);
  cleanups.push({ what: `drop ${label}`, run: () => db.drop() });
  const store = new Gen2Store(db.url, { poolSize: 3 });
  await store.migrate();
  cleanups.push({ what: 'store', run: () => store.close() });
  const cluster = await Cluster.start({
    replicas: 3,
    databaseUrl: db.url,
    protocol: '2026-08',
    logLevel: 'warn',
    sidecars: { redisUrl: TEST_REDIS_URL, redisKeyPrefix: testRedisPrefix(label), extraArgs: ['--readiness-mode', mode] },
    gatewayExtraArgs: LEASE_ARGS,
  });
  cleanups.push({ what: 'cluster', run: () => cluster.close() });
  const ids: string[] = [];
  for (let i = 0; i < SANDBOXES; i++) ids.push((await store.createSandbox({ name: `drill-${i}` })).id);
  const victim = ids[SANDBOXES - 1]!;
  const fleetArgs = (sandboxIds: string[]): string[] => [
    ...tsEntry('bench/lib/fleet-main.ts'),
    '--endpoint',
    cluster.endpoint,
    '--protocol',
    '2026-08',
    '--jwt-key-dir',
    cluster.jwtKeyDir!,
    ...sandboxIds.flatMap((id) => ['--sandbox-id', id]),
  ];
  const fleet = await startProcess('fleet', fleetArgs(ids.slice(0, -1)), { readyTimeoutMs: 60_000 });
  cleanups.push({ what: 'fleet', run: () => fleet.kill('SIGTERM') });
  const victimFleet = await startProcess('victim-fleet', fleetArgs([victim]), { readyTimeoutMs: 60_000 });
  cleanups.push({ what: 'victim fleet', run: () => victimFleet.kill('SIGKILL') });
  return { cluster, store, ids, fleet, victimFleet, victim };
}

async function phases(store: Gen2Store, ids: string[]): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const id of ids) out.set(id, (await store.getSandbox(id))?.phase ?? -1);
  return out;
}

async function owners(store: Gen2Store): Promise<Map<string, string>> {
  const res = await store.pool.query<{ sandbox_id: string; replica_id: string }>('SELECT sandbox_id, replica_id FROM ohs_owners');
  return new Map(res.rows.map((r) => [r.sandbox_id, r.replica_id]));
}

async function leaseHolder(store: Gen2Store): Promise<string | undefined> {
  const res = await store.pool.query<{ payload: Buffer }>(`SELECT payload FROM objects WHERE object_type = 'reconciler_lease' AND id = 'singleton'`);
  const row = res.rows[0];
  return row ? (JSON.parse(row.payload.toString('utf8')) as { holder: string }).holder : undefined;
}

async function baseline(): Promise<Record<string, unknown>> {
  console.log(`baseline (--readiness-mode off): 3 replicas, ${SANDBOXES} sandboxes, sweep every ${SWEEP_SECS} s; waiting ${1.5 * SWEEP_SECS} s`);
  const env = await startEnv('readiness_base', 'off');
  await sleep(1.5 * SWEEP_SECS * 1000);
  const ph = await phases(env.store, env.ids);
  const own = await owners(env.store);
  const holder = await leaseHolder(env.store);
  const provisioning = env.ids.filter((id) => ph.get(id) === Phase.PROVISIONING);
  const notOnHolder = env.ids.filter((id) => own.get(id) !== holder);
  const demotedNotOnHolder = notOnHolder.filter((id) => ph.get(id) === Phase.PROVISIONING).length;
  const sample = provisioning.slice(0, 5);
  const ssh = await Promise.all(
    sample.map(async (id) => {
      const t = await env.store.createSshSession(id, 3600);
      return sshViaForwardTcp({ endpoint: env.cluster.endpoint, sandboxId: id, token: t.token, command: 'sandbox-id', timeoutMs: 30_000 });
    }),
  );
  const refused = ssh.filter((r) => r.grpcCode === grpc.status.FAILED_PRECONDITION).length;
  const result = {
    sweepSecs: SWEEP_SECS,
    waitedSecs: 1.5 * SWEEP_SECS,
    leaseHolder: holder,
    sessionsPerReplica: spread(own.values()),
    provisioning: provisioning.length,
    share: provisioning.length / SANDBOXES,
    demotedOfThoseNotOnHolder: `${demotedNotOnHolder}/${notOnHolder.length}`,
    sshToDemotedRefusedForPhase: `${refused}/${sample.length}`,
  };
  console.log(`baseline: ${JSON.stringify(result)}`);
  await cleanups.runAll();
  return result;
}

async function withFix(): Promise<Record<string, unknown>> {
  const durationMs = MINUTES * 60_000;
  console.log(`with shadows: ${MINUTES} min of SSH and exec over ${SANDBOXES} sandboxes, phases sampled every second`);
  const env = await startEnv('readiness_fix', 'shadow');
  const { cluster, store, ids, victim } = env;
  // Every sandbox Ready before the clock starts.
  for (let i = 0; i < 300; i++) {
    const ph = await phases(store, ids);
    if ([...ph.values()].every((p) => p === Phase.READY)) break;
    await sleep(200);
  }
  const tokens = new Map<string, string>();
  for (const id of ids) tokens.set(id, (await store.createSshSession(id, 86_400)).token);
  const log = new ReadinessLog();
  log.start();
  const t = log.t;
  let victimDead = false;
  let stop = false;
  const live = (): string[] => ids.filter((id) => !(id === victim && victimDead));

  // Load: ForwardTcp SSH and ExecSandbox through the Service, round robin over live sandboxes.
  const load = runLoad(log, {
    workers: WORKERS,
    ids,
    skip: (id) => id === victim && victimDead,
    stopped: () => stop,
    worker: () => {
      const client = gatewayClient(cluster.endpoint);
      return {
        close: () => client.close(),
        op: async (kind, id) => {
          if (kind === 'ssh') {
            const r = await sshViaForwardTcp({ endpoint: cluster.endpoint, sandboxId: id, token: tokens.get(id)!, command: 'sandbox-id', timeoutMs: 40_000 });
            const ok = r.grpcCode === null && r.stdout.trim() === id;
            return { ok, code: r.grpcCode === null ? (ok ? 'OK' : 'WRONG_OUTPUT') : (grpc.status[r.grpcCode] ?? String(r.grpcCode)), detail: r.grpcDetails };
          }
          const r = await exec(client, id, ['sandbox-id']);
          const ok = r.exitCode === 0 && r.stdout.trim() === id;
          return { ok, code: ok ? 'OK' : `exit ${r.exitCode}`, detail: '' };
        },
      };
    },
  });

  // Phase sampler: non-Ready windows of live sandboxes.
  const sampler = async (): Promise<void> => {
    while (!stop) {
      const at = t();
      const ph = await phases(store, ids);
      log.sample(at, live(), (id) => ph.get(id) === Phase.READY);
      await sleep(Math.max(0, 1000 - (t() - at)));
    }
    log.finish();
  };
  const spreads: Array<{ at: number; perReplica: Record<string, number>; leaseHolder: string | undefined }> = [];
  const spreadSampler = async (): Promise<void> => {
    while (!stop) {
      spreads.push({ at: t(), perReplica: spread((await owners(store)).values()), leaseHolder: await leaseHolder(store) });
      await sleep(30_000);
    }
  };

  const podEvent = async (signal: NodeJS.Signals, what: string): Promise<void> => {
    const holder = await leaseHolder(store);
    const i = cluster.replicas.findIndex((r) => r.name === holder);
    if (i < 0) {
      log.event({ what: `${what}: no lease holder found` });
      return;
    }
    const own = await owners(store);
    const affected = ids.filter((id) => own.get(id) === holder);
    // Its endpoint leaves the Service at once, as Kubernetes takes a terminating pod's endpoint out.
    cluster.balancer.setBackends(cluster.replicas.filter((_, j) => j !== i).map((r) => ({ host: '127.0.0.1', port: r.publicPort })));
    log.event({ what, replica: holder, affected });
    console.log(`t=${(t() / 1000).toFixed(0)} s: ${what} of lease holder ${holder} (${affected.length} sessions there)`);
    // SIGTERM as the injected pod stops (native sidecar): the gateway's preStop drains the sidecar
    // (its sessions move), the gateway gets SIGTERM, the sidecar goes last; kill -9 takes both at once.
    if (signal === 'SIGTERM') await cluster.stop(i);
    else await cluster.kill(i, signal);
    await sleep(RESTART_AFTER_MS);
    await cluster.restart(i);
    log.event({ what: `${what}: restarted`, replica: holder });
  };

  const samplers = [sampler(), spreadSampler()];
  const killed = await runSchedule(log, {
    durationMs,
    graceful: () => podEvent('SIGTERM', 'SIGTERM'),
    hard: () => podEvent('SIGKILL', 'kill -9'),
    supervisor: async () => {
      const killedAt = t();
      victimDead = true;
      log.event({ at: killedAt, what: 'supervisor killed (kill -9 of its process)', affected: [victim] });
      await env.victimFleet.kill('SIGKILL');
      let provisioningAfterMs: number | null = null;
      for (let i = 0; i < 600 && provisioningAfterMs === null; i++) {
        if ((await store.getSandbox(victim))?.phase === Phase.PROVISIONING) provisioningAfterMs = t() - killedAt;
        else await sleep(100);
      }
      console.log(`supervisor of ${victim.slice(0, 8)} killed: Provisioning after ${provisioningAfterMs} ms`);
      return { victim, provisioningAfterMs };
    },
  });
  stop = true;
  await Promise.all([load, ...samplers]);

  const result = {
    minutes: MINUTES,
    sweepSecs: SWEEP_SECS,
    ...log.summary(),
    killedSupervisor: killed,
    sessionsPerReplica: spreads,
  };
  console.log(log.headline('with shadows'));
  await cleanups.runAll();
  return result;
}

try {
  const out: Record<string, unknown> = { machine: machineMeta() };
  if (BASELINE) out.baseline = await baseline();
  out.withShadows = await withFix();
  await writeFile(OUT_FILE, `${JSON.stringify(out, null, 2)}\n`);
  console.log(`wrote ${OUT_FILE}`);
} finally {
  await cleanups.runAll();
  clearTimeout(watchdog);
}
