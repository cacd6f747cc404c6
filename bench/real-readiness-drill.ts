// Readiness drill against upstream's real programs (`make drill-readiness-real`, issue 14; not part of
// `make test` or `make drill`): the same drill as bench/readiness-drill.ts, with the gateway emulator
// replaced by upstream's gateway, supervisor and CLI. Runs only when a person points it at the
// binaries (OPENSHELL_GATEWAY_BIN, OPENSHELL_SANDBOX_BIN, OPENSHELL_CLI_BIN); otherwise it prints one
// line and exits 0.
//
// The interop suite's RealCluster (test/interop/support/real-cluster.ts): 3 real gateways on one fresh
// Postgres database, each behind a sidecar (cluster mode, Postgres + Redis), our compute driver
// starting a real supervisor per sandbox, a round-robin balancer as the Service (supervisors and
// clients both dial it). 30 sandboxes created with the real CLI through the Service (`sandbox create`,
// which watches until Ready). Then READINESS_DRILL_MINUTES (default 10) of continuous ForwardTcp SSH
// (our SSH client over ForwardTcp, a token from CreateSshSession) and ExecSandbox through the Service
// over every sandbox, every phase sampled every second from the gateways' `objects` table. At 30 %
// the reconciler-lease holder's pod is stopped gracefully as a native-sidecar pod stops (the gateway's
// preStop drains the sidecar, SIGTERM to the gateway, then to the sidecar), at 60 % the then holder's
// gateway and sidecar are killed -9; each leaves the
// Service at once and is started again (new processes, new ports, same replica id) 15 s after it is
// gone. At 85 % one supervisor is killed -9 (the driver restarts nothing by itself): its sandbox must
// become Provisioning. On the real gateway it races the driver's report of the exit (`Ready=False
// ProcessExited`, a terminal reason: Error), so the drill records the first non-Ready phase and when
// the gateways logged the session's end too. The lease timings are the gateway's own (sweep every 60 s).
//
// Reported as for the emulator: operations, failures by code (refused for phase = FAILED_PRECONDITION
// apart), the longest non-Ready window (overall and outside the killed pods' own sandboxes), time to
// Provisioning of the killed supervisor's sandbox, sessions per replica every 30 s; and here also the
// lease holder over time, the sidecars' drain reports, the supervisor's exit status reported ≠ 0 for a
// command that ran (upstream's U2, docs/interop.md) counted apart. Writes
// bench/results/readiness-drill-real.json. READINESS_KEEP_RUN_DIR=1 keeps the run directory (every
// gateway, sidecar and supervisor log).
import { execFileSync } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { sshViaForwardTcp } from '../emulator/forward-tcp-client.ts';
import { repoRoot } from '../emulator/process.ts';
import { exec, gatewayClient } from '../test/helpers/grpc-client.ts';
import { SKIP_LINE, upstreamBins } from '../test/interop/support/bins.ts';
import { Cli, pool, run } from '../test/interop/support/cli.ts';
import { createSshSession } from '../test/interop/support/openshell-rpc.ts';
import { RealCluster, tmpMode, type ReplicaStop } from '../test/interop/support/real-cluster.ts';
import { createCleanups } from './lib/cleanup.ts';
import { ReadinessLog, runLoad, runSchedule, sleep, spread, type OpOutcome } from './lib/readiness.ts';
import { RESULTS_FILE, machineMeta } from './lib/results.ts';
import { envInt } from './lib/stats.ts';

const bins = upstreamBins();
if (!bins) {
  console.log(SKIP_LINE);
  process.exit(0);
}

const SANDBOXES = envInt('READINESS_SANDBOXES', 30);
const MINUTES = Number(process.env.READINESS_DRILL_MINUTES ?? '10');
const WORKERS = envInt('READINESS_WORKERS', 4);
/** Every operation recorded counts; none starts past this many (the time bound is the schedule's). */
const MAX_OPS = envInt('READINESS_MAX_OPS', 200_000);
const RESTART_AFTER_MS = 15_000;
const OP_TIMEOUT_MS = 40_000;
const CREATE_CONCURRENCY = 6;
/** A CLI create returns in 2-9 s on this machine when it is quiet (docs/interop.md); load makes it longer. */
const CREATE_TIMEOUT_MS = 60_000;
const READY_WAIT_MS = 120_000;
const KEEP_RUN_DIR = process.env.READINESS_KEEP_RUN_DIR === '1';
/** Upstream's lease TTL (compute/lease.rs); a pod event waits up to a little more for a live holder. */
const LEASE_TTL_MS = 30_000;
const HOLDER_WAIT_MS = 45_000;
const OUT_FILE = join(dirname(RESULTS_FILE), 'readiness-drill-real.json');
const PHASE = { PROVISIONING: 1, READY: 2, ERROR: 3 } as const;
const PHASE_NAMES: Record<number, string> = { 0: 'Unknown', 1: 'Provisioning', 2: 'Ready', 3: 'Error', 4: 'Deleting', 6: 'Stopping', 7: 'Stopped' };
const phaseName = (p: number | undefined): string => (p === undefined ? 'missing' : (PHASE_NAMES[p] ?? String(p)));

const cleanups = createCleanups();
// Setup (cluster, 30 CLI creates) and the end's cleanup get 15 minutes beyond the load.
const watchdog = setTimeout(() => {
  console.error('real readiness drill overran its budget: cleaning up');
  void cleanups.runAll().finally(() => process.exit(2));
}, (MINUTES + 15) * 60_000);
watchdog.unref();

const log = new ReadinessLog();
/** Drill-clock times of the lease holder's sweeps (the driver sees each as a ListSandboxes call). */
const sweeps: number[] = [];
const supervisorStarts: Array<{ at: number; sandboxId: string; pid: number; instance: number }> = [];
let clockStarted = false;

/** The lease holder, when its row was written within the TTL by the replica's current gateway. */
async function liveHolder(cluster: RealCluster): Promise<string | undefined> {
  const lease = await cluster.lease();
  if (!lease || Date.now() - lease.updatedAtMs > LEASE_TTL_MS) return undefined;
  return cluster.replicas.find((r) => r.id === lease.holder && !r.killed && r.startedAtMs <= lease.updatedAtMs)?.id;
}

/**
 * Which sidecar code ran: each sidecar (and each restarted one) runs src/ of this working tree as it
 * is when it starts, so the report says what src/ was at the start and at the end of the run.
 */
function sidecarSource(): { head: string; srcTree: string; srcUncommitted: string[] } {
  const git = (...args: string[]): string => execFileSync('git', args, { cwd: repoRoot, encoding: 'utf8', timeout: 10_000 }).trim();
  try {
    return { head: git('rev-parse', '--short', 'HEAD'), srcTree: git('rev-parse', '--short', 'HEAD:src'), srcUncommitted: git('status', '--porcelain', '--', 'src').split('\n').filter(Boolean) };
  } catch {
    return { head: 'unknown', srcTree: 'unknown', srcUncommitted: [] };
  }
}

/** Wall-clock ms of an upstream log line (`r0: 2026-11-29T10:21:46.665785Z  INFO ...`). */
function gatewayLineTime(line: string): number {
  const m = /(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})\d*Z/.exec(line);
  return m ? Date.parse(`${m[1]}Z`) : Number.NaN;
}

async function setUp(): Promise<{ cluster: RealCluster; cli: Cli; setup: Record<string, unknown> }> {
  const started = Date.now();
  const cluster = await RealCluster.start({
    bins: bins!,
    replicas: 3,
    sidecars: true,
    keepRunDir: KEEP_RUN_DIR,
    // The sidecars' drain reports are info lines.
    sidecarLogLevel: 'info',
    onDriverEvent: (e) => {
      if (!clockStarted) return;
      if (e.kind === 'rpc' && e.method === 'ListSandboxes') sweeps.push(log.t());
      if (e.kind === 'started') supervisorStarts.push({ at: log.t(), sandboxId: e.sandboxId, pid: e.pid, instance: e.instance });
    },
  });
  cleanups.push({ what: 'real cluster', run: () => cluster.close() });
  const clusterUpMs = Date.now() - started;
  const cli = new Cli(bins!.cli, cluster.scratchEnv('cli'));
  const versions = await Promise.all(
    [bins!.gateway, bins!.sandbox, bins!.cli].map(async (b) => (await run(b, ['--version'], { env: cluster.scratchEnv('version'), timeoutMs: 10_000 })).stdout.trim()),
  );
  console.log(`cluster up in ${clusterUpMs} ms (${versions.join(', ')}), Service ${cluster.serviceUrl}, lease holder ${await cluster.leaseHolder()}, run dir ${cluster.runDir}`);

  // The CLI creates every sandbox through the Service and, without --detach, watches it until Ready.
  const names = Array.from({ length: SANDBOXES }, (_, i) => `drill-${i}`);
  const t0 = Date.now();
  const creates = await pool(
    CREATE_CONCURRENCY,
    names.map((name) => () => cli.run(cluster.serviceUrl, ['sandbox', 'create', '--name', name, '--no-auto-providers', '--', '/bin/sh', '-c', 'exec sleep 1000000'], CREATE_TIMEOUT_MS)),
  );
  const createMs = Date.now() - t0;
  const failedCreates = creates.map((r, i) => ({ name: names[i]!, r })).filter(({ r }) => r.code !== 0);
  // Ready (and owned by a sidecar) before the clock starts; a sandbox that never gets there is left out and reported.
  const deadline = Date.now() + READY_WAIT_MS;
  let rows = await cluster.sandboxRows();
  for (;;) {
    const owners = await cluster.owners();
    rows = await cluster.sandboxRows();
    const mine = rows.filter((r) => names.includes(r.name));
    if (mine.length === names.length && mine.every((r) => r.phase === PHASE.READY && owners.has(r.id))) break;
    if (Date.now() > deadline) break;
    await sleep(250);
  }
  const owners = await cluster.owners();
  const ready = rows.filter((r) => names.includes(r.name) && r.phase === PHASE.READY && owners.has(r.id));
  const notReady = names.filter((n) => !ready.some((r) => r.name === n)).map((n) => `${n}(${phaseName(rows.find((r) => r.name === n)?.phase)})`);
  const lostReadyWrites = cluster.gatewayLogLines(/failed to mark sandbox ready/).length;
  const setup = {
    versions,
    clusterUpMs,
    sandboxes: SANDBOXES,
    createConcurrency: CREATE_CONCURRENCY,
    createMs,
    createsReturned0: creates.length - failedCreates.length,
    createFailures: failedCreates.map(({ name, r }) => `${name}: ${r.timedOut ? `timeout after ${r.ms} ms` : `code ${String(r.code ?? r.signal)} ${r.stderr.trim().split('\n').at(-1)?.slice(0, 160) ?? ''}`}`),
    cliCreateMs: creates.filter((r) => r.code === 0).map((r) => r.ms),
    readyAndOwned: ready.length,
    neverReady: notReady,
    lostReadyWritesDuringSetup: lostReadyWrites,
  };
  console.log(
    `setup: ${setup.createsReturned0}/${SANDBOXES} CLI creates returned 0 in ${(createMs / 1000).toFixed(1)} s (${CREATE_CONCURRENCY} at a time); ` +
      `Ready and owned ${ready.length}/${SANDBOXES}${notReady.length ? `, not: ${notReady.join(' ')}` : ''}; lost Ready writes (U1) ${lostReadyWrites}`,
  );
  if (ready.length < 2) throw new Error(`only ${ready.length} sandboxes Ready; nothing to drill:\n${cluster.diagnostics()}`);
  return { cluster, cli, setup: { ...setup, ids: ready.map((r) => r.id) } };
}

async function drill(cluster: RealCluster, ids: string[]): Promise<Record<string, unknown>> {
  const durationMs = MINUTES * 60_000;
  const tokens = new Map<string, string>();
  for (const id of ids) tokens.set(id, (await createSshSession(cluster.serviceEndpoint, id, 15_000)).token);
  const victim = ids[ids.length - 1]!;
  console.log(`drill: ${MINUTES} min of SSH and exec over ${ids.length} sandboxes (${WORKERS} workers), phases sampled every second`);
  log.start();
  const startedWall = Date.now();
  clockStarted = true;
  const t = log.t;
  let victimDead = false;
  let stop = false;
  const live = (): string[] => ids.filter((id) => !(id === victim && victimDead));
  const endpoint = cluster.serviceEndpoint;

  // Load: ForwardTcp SSH and ExecSandbox through the Service, round robin over live sandboxes. The
  // session's and the exec's cwd is the sandbox's workdir, whose path holds the sandbox id.
  const load = runLoad(log, {
    workers: WORKERS,
    ids,
    skip: (id) => id === victim && victimDead,
    stopped: () => stop,
    maxOps: MAX_OPS,
    worker: () => {
      const client = gatewayClient(endpoint);
      return {
        close: () => client.close(),
        op: async (kind, id): Promise<OpOutcome> => {
          if (kind === 'ssh') {
            const r = await sshViaForwardTcp({ endpoint, sandboxId: id, token: tokens.get(id)!, command: 'pwd', timeoutMs: OP_TIMEOUT_MS });
            const ok = r.grpcCode === null && r.stdout.includes(id);
            return { ok, code: r.grpcCode === null ? (ok ? 'OK' : 'WRONG_OUTPUT') : (grpc.status[r.grpcCode] ?? String(r.grpcCode)), detail: r.grpcDetails || (ok ? '' : r.stderr.slice(0, 200)), exit: r.code };
          }
          const r = await exec(client, id, ['pwd'], undefined, OP_TIMEOUT_MS);
          const ok = r.stdout.includes(id);
          return { ok, code: ok ? 'OK' : `exit ${r.exitCode}`, detail: ok ? '' : r.stderr.slice(0, 200), exit: r.exitCode };
        },
      };
    },
  });

  // Phase sampler: non-Ready windows of live sandboxes, every phase change, the lease holder.
  const phaseNow = new Map<string, number>();
  const phaseChanges: Array<{ at: number; sandbox: string; from: string; to: string }> = [];
  const holders: Array<{ at: number; holder: string | undefined; gateway: string | undefined }> = [];
  let samplerErrors = 0;
  const sampler = async (): Promise<void> => {
    while (!stop) {
      const at = t();
      try {
        const [rows, lease] = [await cluster.sandboxRows(), await cluster.lease()];
        // `(expired)`: not renewed within the TTL; `(gone)`: its replica is down, or restarted since
        // the row was written (a restarted replica keeps its id and may take the row back at once).
        const up = lease ? cluster.replicas.find((r) => r.id === lease.holder && !r.killed && r.startedAtMs <= lease.updatedAtMs) : undefined;
        const holder = lease ? `${lease.holder}${Date.now() - lease.updatedAtMs > LEASE_TTL_MS ? ' (expired)' : up ? '' : ' (gone)'}` : undefined;
        const holderGateway = up ? `${up.id}@${up.startedAtMs}` : undefined;
        const ph = new Map(rows.map((r) => [r.id, r.phase]));
        log.sample(at, live(), (id) => ph.get(id) === PHASE.READY);
        for (const id of ids) {
          const p = ph.get(id) ?? -1;
          const before = phaseNow.get(id);
          if (before !== undefined && before !== p) phaseChanges.push({ at, sandbox: id.slice(0, 8), from: phaseName(before), to: phaseName(p) });
          phaseNow.set(id, p);
        }
        const last = holders.at(-1);
        if (!last || last.holder !== holder || last.gateway !== holderGateway) holders.push({ at, holder, gateway: holderGateway });
      } catch {
        samplerErrors++;
      }
      await sleep(Math.max(0, 1000 - (t() - at)));
    }
    log.finish();
  };
  const spreads: Array<{ at: number; perReplica: Record<string, number>; leaseHolder: string | undefined; inService: string[] }> = [];
  const spreadSampler = async (): Promise<void> => {
    while (!stop) {
      try {
        const own = await cluster.owners();
        spreads.push({
          at: t(),
          perReplica: spread(ids.map((id) => own.get(id)?.replicaId ?? 'none')),
          leaseHolder: await cluster.leaseHolder(),
          inService: cluster.replicas.filter((r) => !r.killed).map((r) => r.id),
        });
      } catch {
        samplerErrors++;
      }
      await sleep(30_000);
    }
  };

  const podEvent = async (kind: 'SIGTERM' | 'kill -9'): Promise<void> => {
    // The lease row names a replica id, which a restarted pod keeps: only a row its current gateway
    // wrote within the TTL names the holder. After a stop the row can take up to the TTL to move.
    const asked = Date.now();
    let holder: string | undefined;
    while (holder === undefined && Date.now() - asked < HOLDER_WAIT_MS) {
      holder = await liveHolder(cluster);
      if (holder === undefined) await sleep(500);
    }
    if (holder === undefined) {
      log.event({ what: `${kind}: no live lease holder within ${HOLDER_WAIT_MS} ms`, lease: await cluster.lease() });
      console.log(`t=${(t() / 1000).toFixed(0)} s: ${kind}: no live lease holder within ${HOLDER_WAIT_MS} ms`);
      return;
    }
    const own = await cluster.owners();
    const affected = ids.filter((id) => own.get(id)?.replicaId === holder);
    log.event({ what: kind, replica: holder, affected, waitedForHolderMs: Date.now() - asked });
    console.log(`t=${(t() / 1000).toFixed(0)} s: ${kind} of lease holder ${holder}'s pod (${affected.length} sessions there)`);
    let stopped: ReplicaStop | undefined;
    // As the injected pod stops on Kubernetes 1.29+ (native sidecar): preStop drain, gateway, sidecar.
    if (kind === 'SIGTERM') stopped = await cluster.stopReplica(holder, { order: 'native' });
    else await cluster.killReplica(holder);
    log.event({ what: `${kind}: gone`, replica: holder, ...(stopped ? { stop: stopped } : {}) });
    if (stopped) console.log(`t=${(t() / 1000).toFixed(0)} s: ${holder} stopped (${stopped.order} order): drain ${stopped.sidecarMs} ms, gateway ${stopped.gatewayMs} ms (${JSON.stringify(stopped.gatewayExit)}), sidecar exit ${JSON.stringify(stopped.sidecarExit)}`);
    await sleep(RESTART_AFTER_MS);
    const restartStarted = Date.now();
    try {
      await cluster.restartReplica(holder);
      log.event({ what: `${kind}: restarted`, replica: holder, restartMs: Date.now() - restartStarted });
      console.log(`t=${(t() / 1000).toFixed(0)} s: ${holder} restarted in ${Date.now() - restartStarted} ms`);
    } catch (err) {
      log.event({ what: `${kind}: restart failed`, replica: holder, error: (err as Error).message.slice(0, 2000) });
      console.error(`t=${(t() / 1000).toFixed(0)} s: restart of ${holder} failed: ${(err as Error).message}`);
    }
  };

  const samplers = [sampler(), spreadSampler()];
  let killedAt = 0;
  let killedAtWall = 0;
  const killed = await runSchedule(log, {
    durationMs,
    graceful: () => podEvent('SIGTERM'),
    hard: () => podEvent('kill -9'),
    supervisor: async () => {
      killedAt = t();
      killedAtWall = Date.now();
      victimDead = true;
      const pid = cluster.killSupervisor(victim);
      log.event({ at: killedAt, what: 'supervisor killed (kill -9 of its process)', affected: [victim], pid });
      let provisioningAfterMs: number | null = null;
      let firstNotReady: { phase: string; afterMs: number } | null = null;
      const deadline = Date.now() + 60_000;
      while (provisioningAfterMs === null && Date.now() < deadline) {
        const phase = (await cluster.sandboxRows()).find((r) => r.id === victim)?.phase;
        const after = t() - killedAt;
        if (phase !== PHASE.READY && firstNotReady === null) firstNotReady = { phase: phaseName(phase), afterMs: after };
        if (phase === PHASE.PROVISIONING) provisioningAfterMs = after;
        else await sleep(100);
      }
      console.log(`supervisor of ${victim.slice(0, 8)} (pid ${pid}) killed: Provisioning after ${provisioningAfterMs} ms; first non-Ready phase ${JSON.stringify(firstNotReady)}`);
      return { victim, pid, provisioningAfterMs, firstNotReady };
    },
  });
  stop = true;
  await Promise.all([load, ...samplers]);

  const summary = log.summary();
  // By kind and by the exit status reported (null: none reported).
  const reachedExitNonZero: Record<string, Record<string, number>> = { ssh: {}, exec: {} };
  for (const o of log.ops) {
    if (!o.ok || o.exit === 0) continue;
    const byExit = reachedExitNonZero[o.kind]!;
    byExit[String(o.exit)] = (byExit[String(o.exit)] ?? 0) + 1;
  }
  const exitNonZero = (kind: string): number => Object.values(reachedExitNonZero[kind] ?? {}).reduce((a, b) => a + b, 0);
  const acquisitions = cluster
    .gatewayLogLines(/acquired reconciler lease/)
    .map((l) => ({ at: gatewayLineTime(l) - startedWall, replica: /replica=(\S+)/.exec(l)?.[1] ?? '?' }))
    .filter((a) => a.at >= 0)
    .sort((a, b) => a.at - b.at);
  // What the gateways logged about the killed supervisor's session: its end is what writes Provisioning.
  const victimLines = cluster
    .gatewayLogLines(/supervisor session: (ended|stream closed)|failed to mark sandbox/)
    .filter((l) => l.includes(victim) && gatewayLineTime(l) >= killedAtWall - 1000)
    .map((l) => ({ afterKillMs: gatewayLineTime(l) - killedAtWall, line: l.replace(/\s+/g, ' ').slice(0, 400) }));
  const sessionEnd = victimLines.find((l) => /supervisor session: ended/.test(l.line));
  const victimPhases = phaseChanges.filter((c) => c.sandbox === victim.slice(0, 8) && c.at >= killedAt - 1000);
  const restartsOfVictim = supervisorStarts.filter((s) => s.sandboxId === victim && s.at >= killedAt);
  // The sidecars' own account of the drain (started: sessions to shed; complete or deadline reached).
  const drains = cluster.sidecarLogEntries((e) => typeof e.msg === 'string' && /^drain (started|complete|deadline)/.test(e.msg));
  const result = {
    minutes: MINUTES,
    sweepSecs: 60,
    workers: WORKERS,
    sandboxes: ids.length,
    ...summary,
    reachedExitNonZero,
    killedSupervisor: {
      ...killed,
      phasesAfterKill: victimPhases,
      supervisorStartsAfterKill: restartsOfVictim.length,
      gatewaySessionEndAfterMs: sessionEnd?.afterKillMs ?? null,
      gatewayLines: victimLines.slice(0, 10),
    },
    sessionsPerReplica: spreads,
    leaseHolders: holders.map(({ at, holder }) => ({ at, holder })),
    // Every acquisition is a change of holder (a holder renews, it does not acquire again), also
    // a restarted replica taking its own id's row back; from the gateways' own log lines.
    leaseHolderChanges: acquisitions.length,
    leaseAcquisitions: acquisitions,
    sweeps: sweeps.map((s) => +(s / 1000).toFixed(1)),
    drainReports: drains.map((e) => ({ time: e.time, replica: e.replica, msg: e.msg, ...Object.fromEntries(Object.entries(e).filter(([k]) => !['time', 'msg', 'level', 'pid', 'hostname', 'replica'].includes(k))) })),
    phaseChanges: phaseChanges.slice(0, 2000),
    phaseChangesTotal: phaseChanges.length,
    samplerErrors,
    lostReadyWrites: cluster.gatewayLogLines(/failed to mark sandbox ready/).length,
    sidecarErrors: cluster.sidecarLogEntries((e) => typeof e.level === 'number' && e.level >= 50).map((e) => ({ time: e.time, replica: e.replica, msg: e.msg })).slice(0, 50),
  };
  console.log(log.headline('real gateway'));
  console.log(
    `reached with exit status ≠ 0 (U2): ssh ${exitNonZero('ssh')}, exec ${exitNonZero('exec')} ${JSON.stringify(reachedExitNonZero)}; ` +
      `killed supervisor → Provisioning ${killed.provisioningAfterMs} ms, first non-Ready ${JSON.stringify(killed.firstNotReady)}, gateway session end +${sessionEnd?.afterKillMs ?? '?'} ms ` +
      `(supervisor restarts after the kill: ${restartsOfVictim.length}); lease holders ${holders.map((h) => `${h.holder}@${(h.at / 1000).toFixed(0)}s`).join(' → ')}; ` +
      `lease taken by ${acquisitions.map((a) => `${a.replica}@${(a.at / 1000).toFixed(1)}s`).join(', ') || 'nobody'}`,
  );
  for (const s of spreads) console.log(`  t=${(s.at / 1000).toFixed(0)} s: sessions ${JSON.stringify(s.perReplica)}, lease holder ${s.leaseHolder}, in Service ${s.inService.join(',')}`);
  return result;
}

try {
  const sourceAtStart = sidecarSource();
  const { cluster, setup } = await setUp();
  const ids = setup.ids as string[];
  const realGateway = await drill(cluster, ids);
  const sourceAtEnd = sidecarSource();
  // Commits elsewhere in the tree move HEAD; only src/ (committed tree and uncommitted files) counts.
  const srcOf = (x: ReturnType<typeof sidecarSource>): string => JSON.stringify([x.srcTree, x.srcUncommitted]);
  const sidecarCode = { atStart: sourceAtStart, atEnd: sourceAtEnd, changedDuringRun: srcOf(sourceAtStart) !== srcOf(sourceAtEnd) };
  if (sidecarCode.changedDuringRun) console.error(`src/ changed during the run (restarted sidecars ran other code): ${JSON.stringify(sidecarCode)}`);
  const out = { machine: machineMeta(), sidecarCode, setup: { ...setup, ids: undefined, runDir: KEEP_RUN_DIR ? cluster.runDir : undefined }, realGateway };
  await cleanups.runAll();
  const mode = tmpMode();
  if (mode !== '1777') console.error(`/tmp mode is ${mode} after the run (expected 1777)`);
  await writeFile(OUT_FILE, `${JSON.stringify({ ...out, tmpModeAfter: mode }, null, 2)}\n`);
  console.log(`wrote ${OUT_FILE}`);
} finally {
  await cleanups.runAll();
  clearTimeout(watchdog);
}
