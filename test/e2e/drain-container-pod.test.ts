// A pod with the sidecar injected as a plain container (`inject --mode container`) stops like this:
// both containers' preStop waits for the drain, then both get SIGTERM together. The registrations
// the sidecar still holds on its gateway (parked sessions handed over, shadows) end while the
// gateway shuts down, which writes nothing then (as upstream's does, docs/interop.md): unlike a
// sidecar-first stop (Compose), no sandbox leaves Ready.
import { afterAll, beforeAll, expect, it } from 'vitest';
import { Cluster } from '../../emulator/cluster.ts';
import { Gen2Store } from '../../emulator/gateway/gen2/store.ts';
import { Phase } from '../../emulator/proto.ts';
import { startSupervisorFleet, type SupervisorFleet } from '../../emulator/supervisor/fleet.ts';
import { busiest, owners, samplePhases } from '../helpers/drain-checks.ts';
import { createTestDatabase, TEST_REDIS_URL, testRedisPrefix, type TestDatabase } from '../helpers/services.ts';
import { waitUntil } from '../helpers/wait.ts';

let db: TestDatabase;
let store: Gen2Store;
let cluster: Cluster;
let fleet: SupervisorFleet;
const ids: string[] = [];

beforeAll(async () => {
  db = await createTestDatabase('drain_pod');
  store = new Gen2Store(db.url, { poolSize: 3 });
  await store.migrate();
  cluster = await Cluster.start({
    replicas: 3,
    databaseUrl: db.url,
    protocol: '2026-08',
    readinessProbeMs: 200,
    logLevel: 'info',
    sidecars: {
      redisUrl: TEST_REDIS_URL,
      redisKeyPrefix: testRedisPrefix('drain_pod'),
      extraArgs: ['--shutdown-grace-ms', '12000', '--rebalance', 'off'],
    },
  });
  for (let i = 0; i < 9; i++) ids.push((await store.createSandbox({ name: `pod-${i}` })).id);
  fleet = await startSupervisorFleet({ endpoint: cluster.endpoint, sandboxIds: ids, protocol: '2026-08', jwtKeyDir: cluster.jwtKeyDir });
  await fleet.waitAllConnected(30_000);
  for (const id of ids) await waitUntil(`${id} Ready`, async () => (await store.getSandbox(id))?.phase, (p) => p === Phase.READY, { timeoutMs: 15_000 });
}, 90_000);

afterAll(async () => {
  await fleet?.stop();
  await cluster?.close();
  await store?.close();
  await db?.drop();
});

it('stopped as a plain-container pod (preStop drain, then SIGTERM to both): its sessions move and no sandbox leaves Ready', async () => {
  const { victim, moving } = await busiest(store, cluster, ids);
  expect(moving.length).toBeGreaterThan(0);
  const phases = samplePhases(store, ids, moving);
  const started = Date.now();
  const drainMs = await cluster.stopContainerPod(victim.index);
  const stoppedMs = Date.now() - started;
  // A little past the end: a late cleanup write would show now.
  await new Promise((r) => setTimeout(r, 2000));
  const { samples, notReady } = await phases.stop();
  const after = await owners(store);
  const handedOver = victim.sidecar!.output.filter((l) => l.includes('handed a parked supervisor session over')).length;
  console.log(
    `container pod stop: ${victim.name} held ${moving.length} sessions; drain ${drainMs} ms, both gone ${stoppedMs} ms after the preStop; ` +
      `${handedOver} handed over; ${samples} phase samples, ${notReady.length} not Ready${notReady.length ? `: ${notReady.slice(0, 5).join('; ')}` : ''}`,
  );
  expect(moving.every((id) => after.get(id) !== undefined && after.get(id) !== victim.name)).toBe(true);
  expect(handedOver).toBeGreaterThanOrEqual(1);
  expect(notReady).toEqual([]);
}, 120_000);
