// One sidecar at scale (issue 13 item 3): it holds SCALE_SUPERVISORS supervisor sessions
// (ConnectSupervisor streams, SCALE_SUPERVISOR_CONNS HTTP/2 connections) and SCALE_IDLE idle
// ForwardTcp streams (SCALE_IDLE_CONNS connections), all owned locally, in front of the minimal fake
// gateway (bench/lib/fake-gateway.ts). First, alone, Node's own floor for that shape: a bare process
// holding as many server + client stream pairs on as many connection pairs (bench/h2-floor.ts),
// the baseline the sidecar's memory is read against. Then, with all of that held:
//   1. steady state: RSS, CPU and event-loop lag of the loaded sidecar over SCALE_STEADY_S seconds right
//      after the sessions opened, then once more SCALE_SETTLE_S seconds later ("settled"): the burst that
//      opened 20,000 sessions in seconds leaves garbage that V8 collects only when the process has been
//      quiet for a while (its memory reducer), so the first window is the peak, the second the level;
//   2. routing probe: SCALE_PROBES new ForwardTcp streams (init + one ping, answer awaited), straight
//      to the fake gateway (the baseline: this machine's own tail), on the loaded sidecar (owner local)
//      and through a second sidecar (forwarded): p50/p99/max, how many over 5 ms and where the slowest
//      fell; from a process of its own (a new client, bench/lib/probe-main.ts), then from this one;
//   3. sustained: SCALE_RATE new forwarded streams per second for SCALE_SECONDS seconds through the
//      second sidecar to the loaded one, each opened, pinged and closed; errors, achieved rate,
//      latency, and the loaded sidecar's RSS/CPU/lag meanwhile.
// Postgres and Redis are real (cluster mode, limits on: a slot per stream in Redis). Every loop is
// bounded in count and time. Prints figures, writes bench/results/scale.json; asserts nothing.
//
// Env: SCALE_SUPERVISORS (10000), SCALE_SUPERVISOR_CONNS (200), SCALE_IDLE (10000),
// SCALE_IDLE_CONNS (100), SCALE_PROBES (2000), SCALE_RATE (1000), SCALE_SECONDS (30),
// SCALE_STEADY_S (10), SCALE_SETTLE_S (60: the held sessions are then kept SCALE_SETTLE_S seconds more, for
// the settled reading below), SCALE_SANDBOXES_WITH_TOKENS (50), SCALE_HEAP_SNAPSHOT=1 (heap snapshot of the
// loaded sidecar after the steady window, written to its working directory), SCALE_SIDECAR_NODE_ARGS
// (flags for the sidecars' node, e.g. '--max-old-space-size=256'), SCALE_OUTPUT_DIR (each sidecar's
// whole output, e.g. with SCALE_SIDECAR_NODE_ARGS='--trace-gc', written there as <name>.log),
// SCALE_SIDECAR_ARGS (more sidecar flags, e.g. '--limit-reuse-ms 0'), SCALE_RESULTS_NAME (file name under bench/results/, default scale.json).
import { execFile } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { repoRoot, startProcess, tsEntry, type ManagedProcess } from '../emulator/process.ts';
import { GatewayStore } from '../emulator/gateway/store.ts';
import { TEST_REDIS_URL, createTestDatabase, testRedisPrefix } from '../test/helpers/services.ts';
import { adminMetrics } from './lib/admin-metrics.ts';
import { createCleanups } from './lib/cleanup.ts';
import { CONNECT_SUPERVISOR, helloFrame, type Channel, type Endpoint } from './lib/raw-clients.ts';
import { ClientConns, openAndPing, probe, tailPlace, type ProbeResult } from './lib/stream-probe.ts';
import { machineMeta } from './lib/results.ts';
import { NODE_FLAGS } from '../src/node-flags.ts';
import { sidecarEntry, startBenchSidecar, type BenchSidecar } from './lib/sidecars.ts';
import { envInt, percentile, round1, round2 } from './lib/stats.ts';

const SUPERVISORS = envInt('SCALE_SUPERVISORS', 10_000);
const SUPERVISOR_CONNS = envInt('SCALE_SUPERVISOR_CONNS', 200);
const IDLE = envInt('SCALE_IDLE', 10_000);
const IDLE_CONNS = envInt('SCALE_IDLE_CONNS', 100);
const PROBES = envInt('SCALE_PROBES', 2_000);
const PROBE_CONCURRENCY = envInt('SCALE_PROBE_CONCURRENCY', 1);
// The harness's own processes (this client, holding 20,000 streams, and the fake gateway) run with
// the sidecar's pretenuring flag (src/node-flags.ts): with V8's default, each of them promotes every
// probe's streams and pauses for it, and those pauses land in every path's tail, the direct one too.
// `make bench-scale` starts this process with it; the gateway is started with it here.
const HARNESS_NODE_ARGS = ['--no-allocation-site-pretenuring'];
/** More sidecar flags for an experiment (e.g. `--limit-reuse-ms 0`), recorded in the results. */
const SIDECAR_ARGS = process.env.SCALE_SIDECAR_ARGS?.split(' ').filter(Boolean) ?? [];
const RATE = envInt('SCALE_RATE', 1_000);
const SECONDS = envInt('SCALE_SECONDS', 30);
const STEADY_S = envInt('SCALE_STEADY_S', 10);
const SETTLE_S = envInt('SCALE_SETTLE_S', 60);
const TOKEN_SANDBOXES = envInt('SCALE_SANDBOXES_WITH_TOKENS', 50);
/** Most sustained-phase streams in flight; past it a tick's opens count as errors (never an unbounded queue). */
const MAX_IN_FLIGHT = 4_000;
const STEP_TIMEOUT_MS = 10_000;
const PEER_SECRET = 'bench-peer-secret-0123456789';
const RESULTS = join(dirname(fileURLToPath(import.meta.url)), 'results', process.env.SCALE_RESULTS_NAME ?? 'scale.json');
const VERSION = (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;

const cleanups = createCleanups();
const started = Date.now();
const elapsed = (): string => `${((Date.now() - started) / 1000).toFixed(1)}s`;
const log = (msg: string): void => console.log(`[${elapsed()}] ${msg}`);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** RSS (bytes) and CPU time (seconds, user + system) of a process, from /proc. */
function procStat(pid: number): { rssBytes: number; cpuSeconds: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const rssKb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? NaN);
  // Fields after the command name (which may hold spaces): utime and stime are the 12th and 13th.
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(fields[11]) + Number(fields[12]);
  return { rssBytes: rssKb * 1024, cpuSeconds: ticks / 100 };
}

/** prom-client samples the loop with a 10 ms timer; its gauges include that interval, which is taken off. */
const LAG_RESOLUTION_MS = 10;

/** prom-client's event-loop lag gauges from the admin port, less the sampling interval; reading them resets the histogram. */
async function eventLoopLag(adminPort: number): Promise<{ p50Ms: number; p99Ms: number; maxMs: number; heapUsedMb: number; heapTotalMb: number; externalMb: number }> {
  const body = await adminMetrics(adminPort);
  const value = (name: string): number => Number(new RegExp(`^${name} ([0-9.eE+-]+)`, 'm').exec(body)?.[1] ?? NaN);
  const gauge = (name: string): number => Math.max(0, value(name) * 1000 - LAG_RESOLUTION_MS);
  const mb = (name: string): number => round1(value(name) / 1048576);
  return {
    p50Ms: gauge('nodejs_eventloop_lag_p50_seconds'),
    p99Ms: gauge('nodejs_eventloop_lag_p99_seconds'),
    maxMs: gauge('nodejs_eventloop_lag_max_seconds'),
    heapUsedMb: mb('nodejs_heap_size_used_bytes'),
    heapTotalMb: mb('nodejs_heap_size_total_bytes'),
    externalMb: mb('nodejs_external_memory_bytes'),
  };
}

interface Window {
  rssMb: number;
  /** V8 heap in use and reserved, and memory held by Buffers and other external objects (at the end). */
  heapUsedMb: number;
  heapTotalMb: number;
  externalMb: number;
  cpuPercent: number;
  lagP50Ms: number;
  lagP99Ms: number;
  lagMaxMs: number;
}

/** The sidecar's own request and forward counters (`ohs_requests_total`, `ohs_forwards_total`), by label set. */
async function requestCounters(adminPort: number): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const m of (await adminMetrics(adminPort)).matchAll(/^(ohs_(?:requests|forwards)_total\{[^}]*\}) ([0-9.eE+-]+)$/gm)) out.set(m[1]!, Number(m[2]));
  return out;
}

/** What the counters grew by between two readings (non-zero only). */
function counterGrowth(before: Map<string, number>, after: Map<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of after) if (v - (before.get(k) ?? 0) > 0) out[k] = v - (before.get(k) ?? 0);
  return out;
}

/** Samples a process over `ms`: RSS at the end (and the peak), CPU share of one core, event-loop lag over the window. */
async function observe(sc: BenchSidecar, ms: number, during?: Promise<unknown>): Promise<Window & { rssPeakMb: number }> {
  const pid = sc.proc.child.pid as number;
  await eventLoopLag(sc.adminPort); // resets the lag histogram: what follows covers this window only
  const a = procStat(pid);
  const t0 = Date.now();
  let peak = a.rssBytes;
  const until = Date.now() + ms;
  while (Date.now() < until) {
    await sleep(Math.min(500, Math.max(1, until - Date.now())));
    peak = Math.max(peak, procStat(pid).rssBytes);
  }
  if (during) await during;
  const b = procStat(pid);
  const lag = await eventLoopLag(sc.adminPort);
  const wall = (Date.now() - t0) / 1000;
  return {
    rssMb: round1(b.rssBytes / 1048576),
    rssPeakMb: round1(Math.max(peak, b.rssBytes) / 1048576),
    heapUsedMb: lag.heapUsedMb,
    heapTotalMb: lag.heapTotalMb,
    externalMb: lag.externalMb,
    cpuPercent: round1((100 * (b.cpuSeconds - a.cpuSeconds)) / wall),
    lagP50Ms: round2(lag.p50Ms),
    lagP99Ms: round2(lag.p99Ms),
    lagMaxMs: round2(lag.maxMs),
  };
}

interface GcTotals {
  minor: number;
  minorSeconds: number;
  major: number;
  majorSeconds: number;
}

/** Collections the sidecar has run and their time, from its `nodejs_gc_duration_seconds` histogram. */
async function gcTotals(adminPort: number): Promise<GcTotals> {
  const body = await adminMetrics(adminPort);
  // prom-client writes a kind's series only once there has been one.
  const read = (what: 'count' | 'sum', kind: string): number =>
    Number(new RegExp(`^nodejs_gc_duration_seconds_${what}\\{kind="${kind}"\\} ([0-9.eE+-]+)$`, 'm').exec(body)?.[1] ?? 0);
  return { minor: read('count', 'minor'), minorSeconds: read('sum', 'minor'), major: read('count', 'major'), majorSeconds: read('sum', 'major') };
}

/** Connections the sidecar admitted by taking over a parked limit slot (no Redis round trip). */
async function slotReuses(adminPort: number): Promise<number> {
  return Number(/^ohs_limit_slots_reused_total ([0-9.eE+-]+)$/m.exec(await adminMetrics(adminPort))?.[1] ?? 0);
}

/** Full (mark-compact) collections the sidecar has run. */
async function majorGcCount(adminPort: number): Promise<number> {
  return (await gcTotals(adminPort)).major;
}

/** The collections between two readings: how many scavenges and full collections, and their mean pause. */
function gcBetween(a: GcTotals, b: GcTotals): { scavenges: number; scavengeMeanMs: number; fullCollections: number; fullMeanMs: number } {
  const mean = (s: number, n: number): number => (n > 0 ? round2((1000 * s) / n) : 0);
  return {
    scavenges: b.minor - a.minor,
    scavengeMeanMs: mean(b.minorSeconds - a.minorSeconds, b.minor - a.minor),
    fullCollections: b.major - a.major,
    fullMeanMs: mean(b.majorSeconds - a.majorSeconds, b.major - a.major),
  };
}

async function countOwned(db: pg.Client, replicaId: string): Promise<number> {
  const res = await db.query<{ n: number }>('SELECT count(*)::int AS n FROM ohs_owners WHERE replica_id = $1', [replicaId]);
  return res.rows[0]?.n ?? 0;
}

/** RATE new streams per second for SECONDS seconds, paced in 10 ms ticks; each opened, pinged, closed. */
async function sustained(conns: ClientConns, endpoints: Endpoint[]): Promise<ProbeResult & { attempted: number; achievedPerSec: number; firstError?: string }> {
  const ms: number[] = [];
  let attempted = 0;
  let errors = 0;
  let inFlight = 0;
  let firstError: string | undefined;
  const pending = new Set<Promise<void>>();
  const total = RATE * SECONDS;
  const t0 = Date.now();
  const one = async (ep: Endpoint): Promise<void> => {
    inFlight++;
    try {
      const r = await openAndPing(conns, ep);
      ms.push(r.ms);
      await r.ch.close();
    } catch (err) {
      errors++;
      firstError ??= (err as Error).message;
    } finally {
      inFlight--;
    }
  };
  while (attempted < total && Date.now() - t0 < SECONDS * 1000 + 5_000) {
    // Streams due by now, at RATE per second since t0.
    const due = Math.min(total, Math.floor(((Date.now() - t0) * RATE) / 1000));
    while (attempted < due) {
      const ep = endpoints[attempted % endpoints.length]!;
      attempted++;
      if (inFlight >= MAX_IN_FLIGHT) {
        errors++;
        firstError ??= `more than ${MAX_IN_FLIGHT} streams in flight`;
        continue;
      }
      const p = one(ep);
      pending.add(p);
      void p.finally(() => pending.delete(p));
    }
    await sleep(10);
  }
  const sendSecs = (Date.now() - t0) / 1000;
  await Promise.race([Promise.all(pending), sleep(STEP_TIMEOUT_MS + 1_000)]);
  ms.sort((a, b) => a - b);
  return {
    attempted,
    n: ms.length,
    errors,
    achievedPerSec: round1(ms.length / sendSecs),
    p50Ms: round2(percentile(ms, 50)),
    p99Ms: round2(percentile(ms, 99)),
    maxMs: round2(ms[ms.length - 1] ?? NaN),
    ...(firstError ? { firstError } : {}),
  };
}

interface Floor {
  held_streams: number;
  connection_pairs: number;
  rss_before_mb: number;
  rss_after_mb: number;
  heap_used_after_mb: number;
  rss_per_held_stream_kb: number;
  heap_per_held_stream_kb: number;
}

/**
 * Node's own floor for the same shape (bench/h2-floor.ts): a bare process holding the same
 * number of server + client stream pairs on the same number of connection pairs, nothing of ours in it.
 */
function nodeFloor(): Promise<Floor> {
  // With the sidecar's own node flags: the young generation's size is part of what is measured.
  const args = ['--expose-gc', ...NODE_FLAGS, '--import', 'tsx', join(repoRoot, 'bench/h2-floor.ts')];
  args.push('--supervisors', String(SUPERVISORS), '--supervisor-conns', String(SUPERVISOR_CONNS), '--idle', String(IDLE), '--idle-conns', String(IDLE_CONNS));
  return new Promise((resolve, reject) => {
    execFile(process.execPath, args, { timeout: 180_000 }, (err, stdout) => {
      const line = stdout.split('\n').find((l) => l.includes('"event":"floor"'));
      if (err || line === undefined) reject(err ?? new Error(`no floor reading in: ${stdout.slice(-500)}`));
      else resolve(JSON.parse(line) as Floor);
    });
  });
}

async function main(): Promise<void> {
  const clientLacks = HARNESS_NODE_ARGS.filter((a) => !process.execArgv.includes(a));
  if (clientLacks.length > 0) log(`note: this bench client runs without ${clientLacks.join(' ')}; its own pauses will add to every probe (make bench-scale gives it)`);
  // 0. Node's floor first, alone on the machine.
  const floor = await nodeFloor();
  log(
    `node's floor for this shape (bare HTTP/2, ${floor.held_streams} stream pairs on ${floor.connection_pairs} connection pairs): ` +
      `RSS ${floor.rss_before_mb} -> ${floor.rss_after_mb} MB, ${floor.rss_per_held_stream_kb} KB RSS and ${floor.heap_per_held_stream_kb} KB heap per held session`,
  );

  const [gwNode, ...gwEntry] = tsEntry('bench/lib/fake-gateway-main.ts');
  const gw: ManagedProcess = await startProcess('fake-gateway', [gwNode!, ...HARNESS_NODE_ARGS, ...gwEntry, '--extra-ports', '1', '--counts']);
  cleanups.push({ what: 'fake gateway', run: () => gw.kill('SIGTERM') });
  const [ownerGatewayPort, ingressGatewayPort] = gw.ready.ports as [number, number];

  const db = await createTestDatabase('bench_scale');
  cleanups.push({ what: 'database', run: () => db.drop() });
  const store = new GatewayStore(db.url);
  cleanups.push({ what: 'gateway store', run: () => store.close() });
  await store.migrate();
  const sandboxes = Array.from({ length: SUPERVISORS }, (_, i) => `scale-sandbox-${String(i).padStart(5, '0')}`);
  // Valid tokens (the limits take Redis slots for them) for the first few sandboxes.
  const endpoints: Endpoint[] = [];
  for (const id of sandboxes.slice(0, TOKEN_SANDBOXES)) {
    await store.createSandbox({ id, name: id });
    endpoints.push({ proto: 'grpc', port: 0, sandboxId: id, token: (await store.createSshSession(id, 3600)).token });
  }
  const common = {
    databaseUrl: db.url,
    redisUrl: TEST_REDIS_URL,
    redisKeyPrefix: testRedisPrefix('bench-scale'),
    peerSecret: PEER_SECRET,
    noFile: 20_000,
    nodeArgs: [...(process.env.SCALE_HEAP_SNAPSHOT === '1' ? ['--heapsnapshot-signal=SIGUSR2'] : []), ...(process.env.SCALE_SIDECAR_NODE_ARGS?.split(' ').filter(Boolean) ?? [])],
    extraArgs: ['--ssh-tunnels-per-token', '100000', '--ssh-tunnels-per-sandbox', '100000', '--h2-max-concurrent-streams', '10000', ...SIDECAR_ARGS],
  };
  const [owner, ingress] = await Promise.all([
    startBenchSidecar('owner', { ...common, gatewayPort: ownerGatewayPort }),
    startBenchSidecar('ingress', { ...common, gatewayPort: ingressGatewayPort }),
  ]);
  cleanups.push({ what: 'sidecars', run: () => Promise.all([owner.stop(), ingress.stop()]) });
  const ownerPid = owner.proc.child.pid as number;
  const baseline = procStat(ownerPid);
  log(`up: sidecars ${sidecarEntry().what} (owner :${owner.publicPort} pid ${ownerPid}, ingress :${ingress.publicPort}); owner RSS ${round1(baseline.rssBytes / 1048576)} MB`);

  const probeDb = new pg.Client({ connectionString: db.url });
  await probeDb.connect();
  cleanups.push({ what: 'probe client', run: () => probeDb.end() });

  // 1. Supervisor sessions: SUPERVISORS ConnectSupervisor streams over SUPERVISOR_CONNS connections.
  const supConns = new ClientConns(owner.publicPort, SUPERVISOR_CONNS);
  cleanups.push({ what: 'supervisor connections', run: async () => supConns.close() });
  const supT0 = Date.now();
  for (let i = 0; i < sandboxes.length; i++) {
    const session = await supConns.get();
    const stream = session.request({ ':method': 'POST', ':path': CONNECT_SUPERVISOR, 'content-type': 'application/grpc', te: 'trailers' }, { endStream: false });
    stream.on('error', () => undefined);
    stream.write(helloFrame(sandboxes[i]!, `scale-${i}`));
    stream.resume();
    // Paced in batches so that the claims (a Postgres transaction each) queue in the sidecar, not here.
    if (i % 500 === 499) {
      const deadline = Date.now() + 60_000;
      while ((await countOwned(probeDb, 'owner')) < i + 1 - 500 && Date.now() < deadline) await sleep(100);
    }
  }
  const supDeadline = Date.now() + 180_000;
  let owned = 0;
  while ((owned = await countOwned(probeDb, 'owner')) < SUPERVISORS && Date.now() < supDeadline) await sleep(250);
  const supSecs = (Date.now() - supT0) / 1000;
  log(`supervisors: ${owned}/${SUPERVISORS} sandboxes owned by the sidecar after ${supSecs.toFixed(1)} s (${SUPERVISOR_CONNS} connections)`);
  const afterSup = procStat(ownerPid);

  // 2. Idle ForwardTcp streams: opened, one ping through, then left open and silent.
  const idleConns = new ClientConns(owner.publicPort, IDLE_CONNS);
  cleanups.push({ what: 'idle stream connections', run: async () => idleConns.close() });
  const idle: Channel[] = [];
  let idleErrors = 0;
  const idleT0 = Date.now();
  const ownerEps = endpoints.map((e) => ({ ...e, port: owner.publicPort }));
  for (let i = 0; i < IDLE && Date.now() - idleT0 < 180_000; i += 100) {
    const batch = await Promise.allSettled(Array.from({ length: Math.min(100, IDLE - i) }, (_, k) => openAndPing(idleConns, ownerEps[(i + k) % ownerEps.length]!)));
    for (const r of batch) {
      if (r.status === 'fulfilled') idle.push(r.value.ch);
      else idleErrors++;
    }
  }
  cleanups.push({ what: 'idle streams', run: () => Promise.all(idle.map((c) => c.close())).then(() => undefined) });
  log(`idle forward streams: ${idle.length} open (${idleErrors} failed) after ${((Date.now() - idleT0) / 1000).toFixed(1)} s`);
  const gwCounts = gw.output.filter((l) => l.includes('"counts"')).at(-1);

  // 3. Steady state with everything held.
  const steady = await observe(owner, STEADY_S * 1000);
  log(`steady: RSS ${steady.rssMb} MB (peak ${steady.rssPeakMb}; V8 heap ${steady.heapUsedMb} used / ${steady.heapTotalMb} reserved, external ${steady.externalMb}), CPU ${steady.cpuPercent}% of a core, event-loop lag p50 ${steady.lagP50Ms} ms p99 ${steady.lagP99Ms} ms max ${steady.lagMaxMs} ms`);
  const heldSessions = owned + idle.length;
  const perSession = {
    rss_kb: round1(((steady.rssMb - baseline.rssBytes / 1048576) * 1024) / Math.max(1, heldSessions)),
    node_floor_rss_kb: floor.rss_per_held_stream_kb,
    steady_rss_over_floor: round2(steady.rssMb / floor.rss_after_mb),
  };
  log(`  per held session: ${perSession.rss_kb} KB RSS above the idle sidecar (node's floor ${perSession.node_floor_rss_kb} KB); steady RSS ${perSession.steady_rss_over_floor}x the floor's`);

  // The same sessions, held SETTLE_S seconds more: where RSS settles once V8 has collected the burst's garbage.
  const majorBefore = await majorGcCount(owner.adminPort);
  await sleep(Math.max(0, SETTLE_S - 10) * 1000);
  const settled = { ...(await observe(owner, Math.min(SETTLE_S, 10) * 1000)), majorGcs: (await majorGcCount(owner.adminPort)) - majorBefore, afterSeconds: SETTLE_S };
  log(
    `settled, ${SETTLE_S} s later: RSS ${settled.rssMb} MB (${round2(settled.rssMb / floor.rss_after_mb)}x the floor's; V8 heap ${settled.heapUsedMb} used / ${settled.heapTotalMb} reserved), ` +
      `${settled.majorGcs} full collections meanwhile, CPU ${settled.cpuPercent}%, event-loop lag p99 ${settled.lagP99Ms} ms max ${settled.lagMaxMs} ms`,
  );

  if (process.env.SCALE_HEAP_SNAPSHOT === '1') {
    // Written by the sidecar into its working directory (Heap.*.heapsnapshot), for a look at what each session costs.
    process.kill(ownerPid, 'SIGUSR2');
    await sleep(15_000);
    log('heap snapshot of the loaded sidecar requested (SIGUSR2)');
  }

  // 4. Routing probe: new streams on the loaded sidecar, local and forwarded, after the same probe
  // straight to the fake gateway (the floor they are read against). First from a process of its own
  // (bench/lib/probe-main.ts), a new client as a real one is: the figures held against the target.
  // Then the same from this process, which holds the 20,000 client ends of the held sessions, as the
  // earlier runs did (the count over 5 ms came out the same from either: nineteenth session).
  const ingressEps = endpoints.map((e) => ({ ...e, port: ingress.publicPort }));
  const sets = { direct: { ...ownerEps[0]!, port: ownerGatewayPort }, local: ownerEps[0]!, forwarded: ingressEps[0]! };
  const describe = (name: string, r: ProbeResult): string =>
    `${name} ${r.n} streams (${r.errors} errors) p50 ${r.p50Ms} ms p99 ${r.p99Ms} ms max ${r.maxMs} ms; ${r.over5Ms} over 5 ms; 1 % slowest at ${tailPlace(r)}`;
  const gcBeforeProbes = await Promise.all([gcTotals(owner.adminPort), gcTotals(ingress.adminPort)]);
  const reusesBefore = await Promise.all([slotReuses(owner.adminPort), slotReuses(ingress.adminPort)]);
  const [probeNode, ...probeArgs] = tsEntry('bench/lib/probe-main.ts');
  const spec = { n: PROBES, concurrency: PROBE_CONCURRENCY, sets: Object.entries(sets).map(([name, endpoint]) => ({ name, endpoint })) };
  const prober = await startProcess('prober', [probeNode!, ...HARNESS_NODE_ARGS, ...probeArgs, JSON.stringify(spec)], { readyTimeoutMs: 300_000 });
  const own = (prober.ready as unknown as { results: Record<keyof typeof sets, ProbeResult> }).results;
  const [probeDirect, probeLocal, probeFwd] = [own.direct, own.local, own.forwarded];
  for (const [name, r] of Object.entries(own)) log(`routing probe from a process of its own, ${describe(`${name}:`.padEnd(12), r)}`);
  // A probe that meets a collection waits for it.
  const gcAfterProbes = await Promise.all([gcTotals(owner.adminPort), gcTotals(ingress.adminPort)]);
  const gcDuringProbes = { owner: gcBetween(gcBeforeProbes[0], gcAfterProbes[0]), ingress: gcBetween(gcBeforeProbes[1], gcAfterProbes[1]) };
  for (const [who, g] of Object.entries(gcDuringProbes)) {
    log(`  ${who} during the three sets: ${g.scavenges} scavenges (mean pause ${g.scavengeMeanMs} ms), ${g.fullCollections} full collections (mean pause ${g.fullMeanMs} ms)`);
  }
  // Each probe takes a limit slot where it enters (the owner for local probes, the ingress for
  // forwarded ones); a reused one is a slot taken with no Redis round trip.
  const reusesAfter = await Promise.all([slotReuses(owner.adminPort), slotReuses(ingress.adminPort)]);
  const slotReusesDuringProbes = { owner: reusesAfter[0] - reusesBefore[0], ingress: reusesAfter[1] - reusesBefore[1] };
  log(`  limit slots reused (no Redis round trip): owner ${slotReusesDuringProbes.owner} of ${probeLocal.n}, ingress ${slotReusesDuringProbes.ingress} of ${probeFwd.n}`);
  const fromBench: Record<string, ProbeResult> = {};
  for (const [name, ep] of Object.entries(sets)) {
    const conns = new ClientConns(ep.port, 4);
    cleanups.push({ what: `${name} probe connections`, run: async () => conns.close() });
    fromBench[name] = await probe(conns, ep, PROBES, PROBE_CONCURRENCY);
    log(`routing probe from the bench process, ${describe(`${name}:`.padEnd(12), fromBench[name])}`);
  }

  // 5. Sustained forwarded opens, the loaded sidecar observed meanwhile.
  const sustainedConns = new ClientConns(ingress.publicPort, 8);
  cleanups.push({ what: 'sustained connections', run: async () => sustainedConns.close() });
  const ingressPid = ingress.proc.child.pid as number;
  const ingressCpu0 = procStat(ingressPid).cpuSeconds;
  const clientCpu0 = process.cpuUsage();
  const countersBefore = await Promise.all([requestCounters(owner.adminPort), requestCounters(ingress.adminPort)]);
  const susT0 = Date.now();
  const run = sustained(sustainedConns, ingressEps);
  const during = await observe(owner, SECONDS * 1000, run);
  const sus = await run;
  const susWall = (Date.now() - susT0) / 1000;
  const clientCpu = process.cpuUsage(clientCpu0);
  const ingressCpuPercent = round1((100 * (procStat(ingressPid).cpuSeconds - ingressCpu0)) / susWall);
  const clientCpuPercent = round1((clientCpu.user + clientCpu.system) / 1e4 / susWall);
  log(
    `sustained: ${sus.attempted} forwarded streams asked at ${RATE}/s for ${SECONDS} s: ${sus.n} done (${sus.achievedPerSec}/s), ${sus.errors} errors` +
      `${sus.firstError ? ` (first: ${sus.firstError})` : ''}; p50 ${sus.p50Ms} ms p99 ${sus.p99Ms} ms max ${sus.maxMs} ms`,
  );
  log(`  loaded sidecar meanwhile: RSS ${during.rssMb} MB (peak ${during.rssPeakMb}), CPU ${during.cpuPercent}%, event-loop lag p99 ${during.lagP99Ms} ms max ${during.lagMaxMs} ms`);
  const countersAfter = await Promise.all([requestCounters(owner.adminPort), requestCounters(ingress.adminPort)]);
  const sustainedCounters = { owner: counterGrowth(countersBefore[0], countersAfter[0]), ingress: counterGrowth(countersBefore[1], countersAfter[1]) };
  await sleep(1_200); // the fake gateway prints its counts every second
  const gwCountsAfter = gw.output.filter((l) => l.includes('"counts"')).at(-1);
  log(`  fake gateway afterwards: ${gwCountsAfter ?? 'no counts'}`);
  for (const [who, c] of Object.entries(sustainedCounters)) log(`  ${who} counters during it: ${Object.entries(c).map(([k, v]) => `${k} +${v}`).join(', ')}`);
  log(`  ingress sidecar CPU ${ingressCpuPercent}%, bench client CPU ${clientCpuPercent}%, machine load average ${os.loadavg().map((l) => l.toFixed(1)).join(' ')}`);

  const targets = {
    rss_under_300mb: {
      value: Math.max(steady.rssPeakMb, during.rssPeakMb),
      target: '< 300 MB',
      met: Math.max(steady.rssPeakMb, during.rssPeakMb) < 300,
      node_floor_mb: floor.rss_after_mb,
      settled_mb: settled.rssMb,
    },
    // Held, once V8 collected the burst's garbage: against the target and against Node's own floor
    // (a bare process holding the same streams), which is within a few MB of the target itself.
    rss_settled_under_300mb: {
      value: settled.rssMb,
      target: '< 300 MB',
      met: settled.rssMb < 300,
      node_floor_mb: floor.rss_after_mb,
      over_node_floor: round2(settled.rssMb / floor.rss_after_mb),
    },
    routing_p99_under_5ms_local: { value: probeLocal.p99Ms, target: '< 5 ms', met: probeLocal.p99Ms < 5, direct_p99_ms: probeDirect.p99Ms },
    routing_p99_under_5ms_forwarded: { value: probeFwd.p99Ms, target: '< 5 ms', met: probeFwd.p99Ms < 5, direct_p99_ms: probeDirect.p99Ms },
    sustained_rate_without_errors: {
      value: sus.achievedPerSec,
      target: `${RATE}/s for ${SECONDS} s, 0 errors`,
      met: sus.errors === 0 && sus.n === RATE * SECONDS && sus.achievedPerSec >= RATE * 0.95,
    },
  };
  for (const [k, t] of Object.entries(targets)) console.log(`  ${t.met ? 'met ' : 'MISS'}  ${k}: ${t.value} (target ${t.target})`);
  // What the sidecars complained about, if anything (their last warnings and errors).
  const complaints: Record<string, string[]> = {};
  for (const sc of [owner, ingress]) {
    const lines = sc.proc.output.filter((l) => /"level":"(warn|error|fatal)"/.test(l));
    complaints[sc.name] = lines.slice(-10);
    for (const l of lines.slice(-5)) console.log(`  [${sc.name}] ${l.slice(0, 300)}`);
  }
  if (process.env.SCALE_OUTPUT_DIR) {
    for (const sc of [owner, ingress]) writeFileSync(join(process.env.SCALE_OUTPUT_DIR, `${sc.name}.log`), `${sc.proc.output.join('\n')}\n`);
    log(`sidecar output written to ${process.env.SCALE_OUTPUT_DIR}`);
  }
  const out = {
    _meta: {
      ...machineMeta(),
      sidecar: { version: VERSION, entry: sidecarEntry().what, mode: 'cluster (Postgres + Redis), limits on, log level info', node_args: process.env.SCALE_SIDECAR_NODE_ARGS ?? '', extra_args: SIDECAR_ARGS.join(' ') },
      gateway: 'bench/lib/fake-gateway.ts (separate process)',
      harness_node_args: { client: process.execArgv.filter((a) => HARNESS_NODE_ARGS.includes(a)), gateway: HARNESS_NODE_ARGS },
      supervisors: SUPERVISORS,
      supervisor_connections: SUPERVISOR_CONNS,
      idle_forward_streams: IDLE,
      idle_connections: IDLE_CONNS,
      steady_seconds: STEADY_S,
      settle_seconds: SETTLE_S,
      probes: PROBES,
      probe_concurrency: PROBE_CONCURRENCY,
      rate_per_second: RATE,
      seconds: SECONDS,
      note: 'the bench client, the fake gateway, both sidecars, Postgres and Redis share the machine',
    },
    baseline_rss_mb: round1(baseline.rssBytes / 1048576),
    after_supervisors_rss_mb: round1(afterSup.rssBytes / 1048576),
    supervisors_owned: owned,
    supervisors_setup_seconds: round1(supSecs),
    idle_streams_open: idle.length,
    idle_stream_errors: idleErrors,
    fake_gateway_counts: gwCounts ? (JSON.parse(gwCounts) as unknown) : null,
    fake_gateway_counts_after_sustained: gwCountsAfter ? (JSON.parse(gwCountsAfter) as unknown) : null,
    steady,
    settled,
    node_floor: floor,
    per_session: perSession,
    routing_probe_direct: probeDirect,
    routing_probe_local: probeLocal,
    routing_probe_forwarded: probeFwd,
    routing_probe_from: 'a process of its own (bench/lib/probe-main.ts), before the same probes from the bench process below',
    routing_probe_from_bench_process: fromBench,
    gc_during_probes: gcDuringProbes,
    limit_slot_reuses_during_probes: slotReusesDuringProbes,
    sustained: sus,
    sustained_loaded_sidecar: during,
    sustained_sidecar_counters: sustainedCounters,
    sustained_ingress_cpu_percent: ingressCpuPercent,
    sustained_client_cpu_percent: clientCpuPercent,
    load_average_at_end: os.loadavg().map(round2),
    targets,
    sidecar_warnings: complaints,
  };
  writeFileSync(RESULTS, `${JSON.stringify(out, null, 2)}\n`);
  log(`wrote ${RESULTS}`);
}

try {
  await main();
} catch (err) {
  console.error(err);
  process.exitCode = 1;
} finally {
  await cleanups.runAll();
}
