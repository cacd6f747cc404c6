// Paced rebalancing (DESIGN §6): after a scale-up, a replica holding far more than its fair share
// sheds sessions one at a time until the cluster is within the margin, without a reconnect storm,
// while requests to the sandboxes in motion keep working, and (the shed session parked on its
// gateway until the new owner's fence hands it over) no sandbox in motion ever leaves Ready. It
// steps out of the Service while it sheds, so its shed supervisors land only on the new replica:
// the number moved is the minimum.
import { afterAll, beforeAll, expect, it } from 'vitest';
import { Cluster } from '../../emulator/cluster.ts';
import { Gen2Store } from '../../emulator/gateway/gen2/store.ts';
import { Phase } from '../../emulator/proto.ts';
import { startSupervisorFleet, type SupervisorFleet } from '../../emulator/supervisor/fleet.ts';
import { exec, gatewayClient } from '../helpers/grpc-client.ts';
import { createTestDatabase, TEST_REDIS_URL, testRedisPrefix, type TestDatabase } from '../helpers/services.ts';
import { waitUntil } from '../helpers/wait.ts';

const SANDBOXES = 12;
let db: TestDatabase;
let store: Gen2Store;
let cluster: Cluster;
let fleet: SupervisorFleet;
const ids: string[] = [];

async function perReplica(): Promise<Record<string, number>> {
  const res = await store.pool.query<{ replica_id: string; n: string }>('SELECT replica_id, count(*) AS n FROM ohs_owners GROUP BY replica_id');
  return Object.fromEntries(res.rows.map((r) => [r.replica_id, Number(r.n)]));
}

beforeAll(async () => {
  db = await createTestDatabase('rebalance');
  store = new Gen2Store(db.url, { poolSize: 3 });
  await store.migrate();
  // r0 alone at first: every supervisor lands there. The Service follows each sidecar's /readyz, as
  // a Kubernetes Service follows its pods' readiness.
  cluster = await Cluster.start({
    replicas: 1,
    databaseUrl: db.url,
    protocol: '2026-08',
    logLevel: 'info',
    readinessProbeMs: 250,
    sidecars: {
      redisUrl: TEST_REDIS_URL,
      redisKeyPrefix: testRedisPrefix('rebalance'),
      extraArgs: ['--rebalance-interval-ms', '300', '--rebalance-min-session-age-ms', '5000', '--rebalance-step-out-lead-ms', '1000'],
    },
  });
  for (let i = 0; i < SANDBOXES; i++) ids.push((await store.createSandbox({ name: `rb-${i}` })).id);
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

it('a scale-up is rebalanced in paced steps to within ±20 % of fair share; exec keeps working and every sandbox stays Ready', async () => {
  expect(await perReplica()).toEqual({ r0: SANDBOXES });
  // Scale-up: r1 starts and joins the Service.
  await cluster.add();
  const started = Date.now();
  // r0's readiness, sampled with the phases below: it leaves the Service while it sheds.
  const r0Ready: boolean[] = [];
  let outWarnings: string[] | undefined;
  let stop = false;
  let ops = 0;
  const failures: string[] = [];
  // Every sandbox's phase, 10 times a second, for the whole run (with --shed-park-ms 0, so without
  // parking, each move shows as about a second of Provisioning: 115 samples in one run).
  const notReady: string[] = [];
  let samples = 0;
  const sampler = (async () => {
    while (!stop) {
      const phases = await Promise.all(ids.map(async (id) => [id, (await store.getSandbox(id))?.phase] as const));
      samples++;
      for (const [id, phase] of phases) if (phase !== Phase.READY) notReady.push(`${id.slice(0, 8)}: phase ${phase}`);
      const admin = `http://127.0.0.1:${cluster.replica(0).sidecarPorts!.admin}`;
      const ready = (await fetch(`${admin}/readyz`)).ok;
      r0Ready.push(ready);
      // What an operator's `status` says meanwhile.
      if (!ready && !outWarnings) outWarnings = ((await (await fetch(`${admin}/v1/status`)).json()) as { warnings: string[] }).warnings;
      await new Promise((r) => setTimeout(r, 100));
    }
  })();
  const load = (async () => {
    const client = gatewayClient(cluster.endpoint);
    try {
      for (let n = 0; !stop; n++) {
        const id = ids[n % ids.length]!;
        ops++;
        const r = await exec(client, id, ['sandbox-id']).catch((err: { details?: string }) => ({ exitCode: null, stdout: String(err.details) }));
        if (r.exitCode !== 0 || r.stdout.trim() !== id) failures.push(`${id.slice(0, 8)}: ${r.stdout}`);
      }
    } finally {
      client.close();
    }
  })();
  // Sessions younger than 10 s are not shed (they just moved), then one goes every ~300 ms.
  const balanced = await waitUntil(
    'within ±20 % of fair share',
    perReplica,
    (c) => Object.values(c).length === 2 && Object.values(c).every((n) => n >= 6 * 0.8 && n <= 6 * 1.2) && Object.values(c).reduce((a, b) => a + b, 0) === SANDBOXES,
    { timeoutMs: 60_000, intervalMs: 250 },
  );
  const tookMs = Date.now() - started;
  await new Promise((r) => setTimeout(r, 1000));
  stop = true;
  await load;
  await sampler;
  const text = await (await fetch(`http://127.0.0.1:${cluster.replica(0).sidecarPorts!.admin}/metrics`)).text();
  const shed = Number(/^ohs_sessions_shed_total\{reason="rebalance"\} (\d+)/m.exec(text)?.[1] ?? 0);
  const handedOver = Number(/^ohs_parked_sessions_total\{outcome="handed_over"\} (\d+)/m.exec(text)?.[1] ?? 0);
  const outSamples = r0Ready.filter((ready) => !ready).length;
  console.log(
    `rebalance: 12 sessions on r0 → ${JSON.stringify(balanced)} in ${tookMs} ms; ${shed} sessions shed (minimum 6), ${handedOver} handed over; ` +
      `r0 out of the Service in ${outSamples}/${r0Ready.length} samples; ${ops} execs, ${failures.length} failed${failures.length ? `: ${failures.slice(0, 3).join('; ')}` : ''}; ` +
      `${samples} phase samples, ${notReady.length} not Ready${notReady.length ? `: ${notReady.slice(0, 3).join('; ')}` : ''}`,
  );
  expect(failures).toEqual([]);
  expect(notReady).toEqual([]);
  expect(handedOver).toBeGreaterThanOrEqual(1);
  // Every shed landed on r1 (r0 was out of the Service): the minimum, 6.
  expect(shed).toBe(6);
  expect(await perReplica()).toEqual({ r0: 6, r1: 6 });
  expect(outSamples).toBeGreaterThan(0);
  expect(outWarnings).toContain('r0: out of the Service while it sheds sessions towards its fair share');
  // Back in once balanced and its shed supervisors had landed.
  await expect.poll(async () => (await fetch(`http://127.0.0.1:${cluster.replica(0).sidecarPorts!.admin}/readyz`)).ok, { timeout: 10_000 }).toBe(true);
}, 120_000);
