// The sidecars' Postgres restarted under traffic (issue 10 item 8b): a clean restart (pg_ctl -m fast)
// and a crash restart (-m immediate) of the Postgres holding ohs_owners/ohs_replicas, while SSH and
// exec run through two replicas. Nothing may be lost: every attempt succeeds, no replica is declared
// dead, ownership is intact afterwards, and a supervisor that reconnects right after the restart is
// claimed (a new epoch) at once. Figures: Postgres downtime, what clients saw during it, and how long
// until both sidecars report Postgres ready again. The gateways keep the shared test Postgres.
import pg from 'pg';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { Cluster } from '../../emulator/cluster.ts';
import { GatewayStore } from '../../emulator/gateway/store.ts';
import { sshViaGateway } from '../../emulator/ssh-client.ts';
import { startSupervisorFleet, type SupervisorFleet } from '../../emulator/supervisor/fleet.ts';
import { exec, gatewayClient, type OpenShellClient } from '../helpers/grpc-client.ts';
import { startOwnPostgres, type OwnPostgres } from '../helpers/own-postgres.ts';
import { createTestDatabase, TEST_REDIS_URL, testRedisPrefix, type TestDatabase } from '../helpers/services.ts';
import { waitUntil } from '../helpers/wait.ts';
import { sleep, withTimeout } from '../adversarial/support.ts';

let db: TestDatabase;
let ownPg: OwnPostgres;
let owners: pg.Pool;
let store: GatewayStore;
let cluster: Cluster;
const fleets: SupervisorFleet[] = [];
const clients: OpenShellClient[] = [];
const s: string[] = [];

interface Attempt {
  kind: 'ssh' | 'exec';
  phase: string;
  ms: number;
  ok: boolean;
  detail: string;
}
const attempts: Attempt[] = [];
let phase = 'before';
let trafficOn = false;
let traffic: Promise<void> | undefined;

beforeAll(async () => {
  db = await createTestDatabase('pg_restart');
  store = new GatewayStore(db.url);
  await store.migrate();
  ownPg = await startOwnPostgres();
  owners = new pg.Pool({ connectionString: ownPg.url, max: 2, connectionTimeoutMillis: 2000 });
  owners.on('error', () => undefined);
  cluster = await Cluster.start({
    replicas: 2,
    databaseUrl: db.url,
    sidecars: { redisUrl: TEST_REDIS_URL, redisKeyPrefix: testRedisPrefix('pg-restart'), extraArgs: ['--database-url', ownPg.url] },
  });
  for (let i = 0; i < 3; i++) s.push((await store.createSandbox()).id);
  for (const [i, sandboxId] of s.entries()) {
    const fleet = await startSupervisorFleet({ endpoint: `127.0.0.1:${cluster.replica(i % 2).publicPort}`, sandboxIds: [sandboxId] });
    fleets.push(fleet);
    await fleet.waitAllConnected(15_000);
  }
  await waitUntil('owners r0, r1, r0', async () => Promise.all(s.map(ownerOf)), (v) => v.map((o) => o?.replica).join(',') === 'r0,r1,r0', { timeoutMs: 10_000 });
  for (const r of cluster.replicas) clients.push(gatewayClient(`127.0.0.1:${r.publicPort}`));
}, 90_000);

afterAll(async () => {
  trafficOn = false;
  await traffic;
  for (const c of clients) c.close();
  await Promise.all(fleets.map((f) => f.stop()));
  await cluster?.close();
  await owners?.end().catch(() => undefined);
  await ownPg?.destroy();
  await store?.close();
  await db?.drop();
});

async function ownerOf(sandboxId: string): Promise<{ replica: string; epoch: number } | null> {
  const res = await owners.query<{ replica_id: string; epoch: string }>('SELECT replica_id, epoch FROM ohs_owners WHERE sandbox_id = $1', [sandboxId]);
  const row = res.rows[0];
  return row ? { replica: row.replica_id, epoch: Number(row.epoch) } : null;
}

async function readyPostgres(i: number): Promise<boolean> {
  try {
    const res = await fetch(`http://127.0.0.1:${cluster.replica(i).sidecarPorts?.admin}/readyz`, { signal: AbortSignal.timeout(2000) });
    return ((await res.json()) as { checks: { postgres: boolean } }).checks.postgres;
  } catch {
    return false;
  }
}

function startTraffic(): void {
  trafficOn = true;
  const loops: Array<Promise<void>> = [];
  for (const [ri, r] of cluster.replicas.entries()) {
    for (const sandboxId of s.slice(0, 2)) {
      loops.push(
        (async () => {
          const tokens = [(await store.createSshSession(sandboxId, 3600)).token, (await store.createSshSession(sandboxId, 3600)).token];
          for (let n = 0; trafficOn; n++) {
            const at = phase;
            const started = Date.now();
            let ok = false;
            let detail = '';
            try {
              const res = await withTimeout(sshViaGateway({ host: '127.0.0.1', port: r.publicPort, sandboxId, token: tokens[n % 2] as string, command: 'sandbox-id', timeoutMs: 20_000 }), 25_000);
              ok = res.status === 200 && res.stdout.trim() === sandboxId;
              detail = ok ? 'ok' : `status ${res.status} ${res.body.trim()}`;
            } catch (err) {
              detail = (err as Error).message;
            }
            attempts.push({ kind: 'ssh', phase: at, ms: Date.now() - started, ok, detail: `via ${r.name}: ${detail}` });
            if (trafficOn) await sleep(100);
          }
        })(),
        (async () => {
          while (trafficOn) {
            const at = phase;
            const started = Date.now();
            let ok = false;
            let detail = '';
            try {
              const out = await withTimeout(exec(clients[ri] as OpenShellClient, sandboxId, ['sandbox-id']), 20_000);
              ok = out.stdout.trim() === sandboxId;
              detail = ok ? 'ok' : `stdout '${out.stdout.trim()}'`;
            } catch (err) {
              detail = (err as Error).message;
            }
            attempts.push({ kind: 'exec', phase: at, ms: Date.now() - started, ok, detail: `via ${r.name}: ${detail}` });
            if (trafficOn) await sleep(100);
          }
        })(),
      );
    }
  }
  traffic = Promise.all(loops).then(() => undefined);
}

/** Restarts Postgres in `mode`; returns downtime and the time until both sidecars are ready on it again. */
async function restart(mode: 'fast' | 'immediate'): Promise<{ downMs: number; readyMs: number }> {
  phase = `restart-${mode}`;
  const started = Date.now();
  await ownPg.stop(mode);
  await ownPg.start();
  const downMs = Date.now() - started;
  await waitUntil('both sidecars ready on Postgres', async () => (await readyPostgres(0)) && (await readyPostgres(1)), (v) => v, { timeoutMs: 30_000, intervalMs: 100 });
  const readyMs = Date.now() - started;
  phase = `after-${mode}`;
  await sleep(3000);
  return { downMs, readyMs };
}

it('Postgres restarted (clean, then crash) under traffic: nothing lost, ownership intact, claims resume at once', async () => {
  const ownersBefore = await Promise.all(s.map(ownerOf));
  startTraffic();
  await sleep(3000);
  const fast = await restart('fast');
  const immediate = await restart('immediate');

  // A supervisor reconnecting right after a restart (here: to the other replica) is claimed at once.
  phase = 'reconnect';
  const movedFrom = ownersBefore[2];
  const fleet = fleets[2] as SupervisorFleet;
  await fleet.stop();
  const restartedAt = Date.now();
  const moved = await startSupervisorFleet({ endpoint: `127.0.0.1:${cluster.replica(1).publicPort}`, sandboxIds: [s[2] as string] });
  fleets[2] = moved;
  await moved.waitAllConnected(15_000);
  // The old owner released S2 when its supervisor left; the new connection claims it afresh.
  const claimed = await waitUntil('S2 claimed by r1', () => ownerOf(s[2] as string), (o) => o?.replica === 'r1', { timeoutMs: 10_000 });
  const claimMs = Date.now() - restartedAt;
  await sleep(1000);
  trafficOn = false;
  await traffic;

  const replicas = await owners.query<{ replica_id: string; alive: boolean }>(
    `SELECT replica_id, heartbeat_at > now() - interval '10 seconds' AS alive FROM ohs_replicas ORDER BY replica_id`,
  );
  const ownersAfter = await Promise.all(s.slice(0, 2).map(ownerOf));
  const byPhase = new Map<string, { ok: number; failed: number; maxMs: number }>();
  for (const a of attempts) {
    const key = `${a.phase}/${a.kind}`;
    const p = byPhase.get(key) ?? { ok: 0, failed: 0, maxMs: 0 };
    if (a.ok) p.ok++;
    else p.failed++;
    p.maxMs = Math.max(p.maxMs, a.ms);
    byPhase.set(key, p);
  }
  console.log(
    `postgres restart under traffic: clean restart down ${fast.downMs} ms, both sidecars ready ${fast.readyMs} ms after the stop; ` +
      `crash restart down ${immediate.downMs} ms, ready after ${immediate.readyMs} ms; supervisor moved r0 -> r1 after the restarts, claimed in ${claimMs} ms (${movedFrom?.replica}@${movedFrom?.epoch} -> ${claimed?.replica}@${claimed?.epoch}); ` +
      [...byPhase].map(([k, v]) => `${k} ${v.ok} ok/${v.failed} failed (max ${v.maxMs} ms)`).join(', '),
  );
  expect(attempts.filter((a) => !a.ok).map((a) => `${a.phase} ${a.kind} ${a.detail}`)).toEqual([]);
  for (const p of ['restart-fast', 'restart-immediate']) expect((byPhase.get(`${p}/ssh`)?.ok ?? 0) + (byPhase.get(`${p}/exec`)?.ok ?? 0)).toBeGreaterThan(0);
  expect(ownersAfter).toEqual(ownersBefore.slice(0, 2));
  expect(replicas.rows.map((r) => `${r.replica_id}:${r.alive}`)).toEqual(['r0:true', 'r1:true']);
}, 180_000);
