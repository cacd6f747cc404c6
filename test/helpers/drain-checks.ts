// What the drain tests run on and look at: the cluster they share the shape of, who owns what, the
// busiest replica, and every sandbox's phase while a replica stops.
import { Cluster, type Replica } from '../../emulator/cluster.ts';
import { Gen2Store } from '../../emulator/gateway/gen2/store.ts';
import { Phase } from '../../emulator/proto.ts';
import { startSupervisorFleet, type SupervisorFleet } from '../../emulator/supervisor/fleet.ts';
import { createTestDatabase, TEST_REDIS_URL, testRedisPrefix, type TestDatabase } from './services.ts';
import { waitUntil } from './wait.ts';

export async function owners(store: Gen2Store): Promise<Map<string, string>> {
  const res = await store.pool.query<{ sandbox_id: string; replica_id: string }>('SELECT sandbox_id, replica_id FROM ohs_owners');
  return new Map(res.rows.map((r) => [r.sandbox_id, r.replica_id]));
}

/** The replica holding the most sessions, and the sandboxes whose sessions are there. */
export async function busiest(store: Gen2Store, cluster: Cluster, ids: string[]): Promise<{ victim: Replica; moving: string[] }> {
  const before = await owners(store);
  const counts = new Map<string, number>();
  for (const r of before.values()) counts.set(r, (counts.get(r) ?? 0) + 1);
  const victim = cluster.replicas.reduce((a, b) => ((counts.get(b.name) ?? 0) > (counts.get(a.name) ?? 0) ? b : a));
  return { victim, moving: ids.filter((id) => before.get(id) === victim.name) };
}

/** Every sandbox's phase, 10 times a second, until `stop()` or `until()`; what was not Ready, with when. */
export function samplePhases(
  store: Gen2Store,
  ids: string[],
  moving: string[],
  until: () => boolean = () => false,
): { stop(): Promise<{ samples: number; notReady: string[] }> } {
  const notReady: string[] = [];
  const started = Date.now();
  let sampling = true;
  let samples = 0;
  const loop = (async () => {
    while (sampling && !until()) {
      const phases = await Promise.all(ids.map(async (id) => [id, (await store.getSandbox(id))?.phase] as const));
      samples++;
      for (const [id, phase] of phases) if (phase !== Phase.READY) notReady.push(`${id.slice(0, 8)}${moving.includes(id) ? ' (moving)' : ''}: phase ${phase} at ${Date.now() - started} ms`);
      await new Promise((r) => setTimeout(r, 100));
    }
  })();
  return {
    async stop() {
      sampling = false;
      await loop;
      return { samples, notReady };
    },
  };
}

/** What the drain tests run on: 3 replicas behind a readiness-probed Service, Ready sandboxes. */
export interface DrainEnv {
  db: TestDatabase;
  store: Gen2Store;
  cluster: Cluster;
  fleet: SupervisorFleet;
  ids: string[];
  close(): Promise<void>;
}

/**
 * 3 replicas of the 2026-08 emulator behind sidecars with `sidecarArgs`, a Service that follows
 * their /readyz, and `sandboxes` sandboxes whose supervisors all hold Ready sessions.
 */
export async function startDrainEnv(label: string, sandboxes: number, sidecarArgs: string[]): Promise<DrainEnv> {
  const db = await createTestDatabase(label);
  const store = new Gen2Store(db.url, { poolSize: 3 });
  await store.migrate();
  const cluster = await Cluster.start({
    replicas: 3,
    databaseUrl: db.url,
    protocol: '2026-08',
    readinessProbeMs: 200,
    logLevel: 'info',
    sidecars: { redisUrl: TEST_REDIS_URL, redisKeyPrefix: testRedisPrefix(label), extraArgs: sidecarArgs },
  });
  const ids: string[] = [];
  for (let i = 0; i < sandboxes; i++) ids.push((await store.createSandbox({ name: `${label}-${i}` })).id);
  const fleet = await startSupervisorFleet({ endpoint: cluster.endpoint, sandboxIds: ids, protocol: '2026-08', jwtKeyDir: cluster.jwtKeyDir });
  await fleet.waitAllConnected(30_000);
  for (const id of ids) await waitUntil(`${id} Ready`, async () => (await store.getSandbox(id))?.phase, (p) => p === Phase.READY, { timeoutMs: 15_000 });
  return {
    db,
    store,
    cluster,
    fleet,
    ids,
    async close() {
      await fleet.stop();
      await cluster.close();
      await store.close();
      await db.drop();
    },
  };
}
