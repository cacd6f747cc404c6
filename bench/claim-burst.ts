// A burst of supervisors reaching one sidecar at once, as when a replica dies and its sandboxes'
// supervisors all reconnect through the Service to the survivors. BURST_SUPERVISORS ConnectSupervisor
// streams over BURST_CONNS HTTP/2 connections are opened together, without pacing, in front of the
// minimal fake gateway (which answers a Hello with response headers at once). Each Hello waits for
// its ownership claim (a Postgres transaction) before it goes to the gateway, up to a bound.
//
// Reports: how long until each supervisor's answer came (p50/p99/max, as this client saw it), how
// long until every ownership row was written, how many claims did not complete within the Hello's
// wait (`ohs_pending_store_writes` at its highest: those are retried in the background) and in how
// many transactions the claims were written. Then every supervisor connection is cut at once: how
// long until every ownership row is released, and how many releases had to be retried.
// Real Postgres (TEST_DATABASE_URL) and Redis (TEST_REDIS_URL). Prints one JSON line and writes
// bench/results/claim-burst.json (BURST_RESULTS_NAME); BURST_CPU_PROF=DIR writes the sidecar's CPU profile
// there when it exits; asserts nothing. Bounded: every wait has a deadline.
import { writeFileSync } from 'node:fs';
import net from 'node:net';
import type http2 from 'node:http2';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { startProcess, tsEntry, type ManagedProcess } from '../emulator/process.ts';
import { TEST_REDIS_URL, createTestDatabase, testRedisPrefix } from '../test/helpers/services.ts';
import { adminMetrics } from './lib/admin-metrics.ts';
import { createCleanups } from './lib/cleanup.ts';
import { CONNECT_SUPERVISOR, connectH2, helloFrame } from './lib/raw-clients.ts';
import { machineMeta } from './lib/results.ts';
import { sidecarEntry, startBenchSidecar } from './lib/sidecars.ts';
import { envInt, percentile, round1 } from './lib/stats.ts';

const SUPERVISORS = envInt('BURST_SUPERVISORS', 5_000);
/**
 * BURST_PREVIOUS=silent: every sandbox is first owned by a replica that died without a word (its
 * peer port accepts connections and never answers, as a pod whose address still routes somewhere),
 * whose lease runs out BURST_LEASE_LEFT_MS after the burst starts. Each claim then fences it: the
 * release request goes unanswered, and the new owner waits for the lease to expire.
 */
const PREVIOUS = process.env.BURST_PREVIOUS === 'silent' ? 'silent' : 'none';
const LEASE_LEFT_MS = envInt('BURST_LEASE_LEFT_MS', 3_000);
/** The sidecar's default replica lease (src/config/load.ts). */
const LEASE_TTL_MS = 10_000;
const CONNS = envInt('BURST_CONNS', 100);
const here = dirname(fileURLToPath(import.meta.url));
const t0 = Date.now();
const log = (msg: string): void => console.log(`[${((Date.now() - t0) / 1000).toFixed(1)}s] ${msg}`);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function metricValue(adminPort: number, name: string): Promise<number> {
  return Number(new RegExp(`^${name}(?:\\{[^}]*\\})? ([0-9.eE+-]+)$`, 'm').exec(await adminMetrics(adminPort))?.[1] ?? NaN);
}

async function main(): Promise<void> {
  const cleanups = createCleanups({ onSignalExitCode: 130 });
  try {
    const gw: ManagedProcess = await startProcess('fake-gateway', [...tsEntry('bench/lib/fake-gateway-main.ts')]);
    cleanups.push({ what: 'fake gateway', run: () => gw.kill('SIGTERM') });
    const db = await createTestDatabase('bench_burst');
    cleanups.push({ what: 'database', run: () => db.drop() });
    const owner = await startBenchSidecar('owner', {
      gatewayPort: (gw.ready.ports as number[])[0] as number,
      databaseUrl: db.url,
      redisUrl: TEST_REDIS_URL,
      redisKeyPrefix: testRedisPrefix('bench-burst'),
      peerSecret: 'bench-burst-peer-secret-0123456789',
      noFile: 20_000,
      extraArgs: ['--h2-max-concurrent-streams', '10000'],
      ...(process.env.BURST_CPU_PROF ? { cpuProfDir: process.env.BURST_CPU_PROF } : {}),
    });
    cleanups.push({ what: 'sidecar', run: () => owner.stop() });
    const probeDb = new pg.Client({ connectionString: db.url });
    await probeDb.connect();
    cleanups.push({ what: 'probe client', run: () => probeDb.end() });
    const owned = async (): Promise<number> => (await probeDb.query<{ n: number }>("SELECT count(*)::int AS n FROM ohs_owners WHERE replica_id = 'owner'")).rows[0]?.n ?? 0;
    if (PREVIOUS === 'silent') {
      const held = new Set<net.Socket>();
      const silent = net.createServer((sock) => {
        sock.on('error', () => undefined);
        held.add(sock);
      });
      await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
      cleanups.push({ what: 'silent peer', run: async () => (held.forEach((s) => s.destroy()), silent.close()) });
      const peerUrl = `http://127.0.0.1:${(silent.address() as net.AddressInfo).port}`;
      await probeDb.query(
        `INSERT INTO ohs_replicas (replica_id, peer_url, state, heartbeat_at, sessions, started_at, version)
         VALUES ('gone', $1, 'active', now() - $2::float8 * interval '1 millisecond', 0, now(), 'bench')`,
        [peerUrl, LEASE_TTL_MS - LEASE_LEFT_MS],
      );
      await probeDb.query(
        `INSERT INTO ohs_owners (sandbox_id, replica_id, epoch) SELECT 'burst-sandbox-' || lpad(i::text, 5, '0'), 'gone', 1 FROM generate_series(0, $1::int - 1) AS i`,
        [SUPERVISORS],
      );
    }
    log(`up: sidecar ${sidecarEntry().what} (:${owner.publicPort}); ${SUPERVISORS} supervisors over ${CONNS} connections, all at once; previous owner: ${PREVIOUS}`);

    const sessions: http2.ClientHttp2Session[] = await Promise.all(Array.from({ length: CONNS }, () => connectH2(owner.publicPort)));
    cleanups.push({ what: 'supervisor connections', run: async () => sessions.forEach((s) => s.destroy()) });
    const answerMs: number[] = [];
    let refused = 0;
    const burstT0 = performance.now();
    const answered = Array.from({ length: SUPERVISORS }, (_, i) => {
      const stream = (sessions[i % CONNS] as http2.ClientHttp2Session).request(
        { ':method': 'POST', ':path': CONNECT_SUPERVISOR, 'content-type': 'application/grpc', te: 'trailers' },
        { endStream: false },
      );
      stream.on('error', () => undefined);
      stream.write(helloFrame(`burst-sandbox-${String(i).padStart(5, '0')}`, `burst-${i}`));
      stream.resume();
      return new Promise<void>((resolve) => {
        stream.once('response', (h) => {
          if (h['grpc-status'] !== undefined && h['grpc-status'] !== '0') refused++;
          else answerMs.push(performance.now() - burstT0);
          resolve();
        });
        stream.once('close', () => resolve());
      });
    });
    // While answers come in: the most claims the sidecar had left to write at once.
    let pendingPeak = 0;
    let allAnswered = false;
    const watching = (async () => {
      while (!allAnswered) {
        pendingPeak = Math.max(pendingPeak, (await metricValue(owner.adminPort, 'ohs_pending_store_writes').catch(() => 0)) || 0);
        await sleep(100);
      }
    })();
    let answerTimer: NodeJS.Timeout | undefined;
    await Promise.race([Promise.all(answered), new Promise((r) => (answerTimer = setTimeout(r, 120_000)))]);
    clearTimeout(answerTimer);
    const answeredSecs = (performance.now() - burstT0) / 1000;
    let rows = 0;
    const deadline = Date.now() + 120_000;
    while ((rows = await owned()) < SUPERVISORS && Date.now() < deadline) {
      pendingPeak = Math.max(pendingPeak, (await metricValue(owner.adminPort, 'ohs_pending_store_writes').catch(() => 0)) || 0);
      await sleep(100);
    }
    allAnswered = true;
    await watching;
    const ownedSecs = (performance.now() - burstT0) / 1000;
    const handoffs = Object.fromEntries([...(await adminMetrics(owner.adminPort)).matchAll(/^ohs_handoffs_total\{reason="([^"]+)"\} ([0-9.eE+-]+)$/gm)].map((m) => [m[1], Number(m[2])]));
    // Claims per transaction (a histogram since the claims were batched; absent before).
    const transactions = await metricValue(owner.adminPort, 'ohs_owner_claim_batch_size_count');
    // Then every supervisor goes at once (their connections cut, as when a node drops): each
    // session's ownership row is released (a conditional delete).
    let releasePendingPeak = 0;
    const releaseT0 = performance.now();
    for (const sess of sessions) sess.destroy();
    let left = rows;
    const releaseDeadline = Date.now() + 120_000;
    while ((left = await owned()) > 0 && Date.now() < releaseDeadline) {
      releasePendingPeak = Math.max(releasePendingPeak, (await metricValue(owner.adminPort, 'ohs_pending_store_writes').catch(() => 0)) || 0);
      await sleep(100);
    }
    const releasedSecs = (performance.now() - releaseT0) / 1000;
    answerMs.sort((a, b) => a - b);
    const result = {
      _meta: { ...machineMeta(), sidecar: sidecarEntry().what, supervisors: SUPERVISORS, connections: CONNS },
      answered: answerMs.length,
      refused,
      answer_ms: { p50: round1(percentile(answerMs, 0.5)), p99: round1(percentile(answerMs, 0.99)), max: round1(answerMs.at(-1) ?? NaN) },
      all_answered_s: round1(answeredSecs),
      owned_rows: rows,
      all_owned_s: round1(ownedSecs),
      claims_per_s: round1(rows / ownedSecs),
      claim_transactions: Number.isNaN(transactions) ? null : transactions,
      previous_owner: PREVIOUS,
      handoffs,
      // Claims that did not complete while their Hello waited: the supervisor was accepted
      // locally and the claim retried in the background (its ownership row meanwhile missing).
      pending_store_writes_peak: pendingPeak,
      rows_left_after_release: left,
      all_released_s: round1(releasedSecs),
      releases_per_s: round1((rows - left) / releasedSecs),
      release_pending_store_writes_peak: releasePendingPeak,
    };
    log(JSON.stringify(result));
    writeFileSync(join(here, 'results', process.env.BURST_RESULTS_NAME ?? 'claim-burst.json'), `${JSON.stringify(result, null, 2)}\n`);
  } finally {
    await cleanups.runAll();
  }
}

await main();
