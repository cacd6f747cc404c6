// The failure the sidecar exists to fix (DESIGN §1): three gateway replicas behind a round-robin
// balancer, supervisors and SSH clients landing on random replicas. Only SSH attempts that land
// on the replica holding the sandbox's session succeed; the rest get 502 after the gateway's
// session wait (upstream's 30 s, 3 s here: the failure is what is measured, not the wait). This is
// the baseline the sidecar tests compare against.
import { afterAll, beforeAll, expect, it } from 'vitest';
import { Cluster } from '../../emulator/cluster.ts';
import { GatewayStore } from '../../emulator/gateway/store.ts';
import { startSupervisorFleet } from '../../emulator/supervisor/fleet.ts';
import { createTestDatabase, type TestDatabase } from '../helpers/services.ts';
import { sshViaGateway } from '../../emulator/ssh-client.ts';

let db: TestDatabase;
let cluster: Cluster;
let store: GatewayStore;
let fleet: Awaited<ReturnType<typeof startSupervisorFleet>>;
const sandboxes: string[] = [];

beforeAll(async () => {
  db = await createTestDatabase('baseline');
  store = new GatewayStore(db.url);
  await store.migrate();
  cluster = await Cluster.start({ replicas: 3, databaseUrl: db.url, gatewayExtraArgs: ['--session-wait-secs', '3'] });
  for (let i = 0; i < 10; i++) sandboxes.push((await store.createSandbox()).id);
  fleet = await startSupervisorFleet({ endpoint: cluster.endpoint, sandboxIds: sandboxes });
  await fleet.waitAllConnected(20_000);
}, 60_000);

afterAll(async () => {
  await fleet?.stop();
  await cluster?.close();
  await store?.close();
  await db?.drop();
});

it('without sidecars most SSH attempts through the Service fail (baseline)', async () => {
  const attempts = 60;
  // One token per attempt so the per-process caps (3 per token) never decide the outcome.
  const tokens = await Promise.all(
    Array.from({ length: attempts }, (_, i) => store.createSshSession(sandboxes[i % sandboxes.length]!, 3600)),
  );
  const results = await Promise.all(
    tokens.map((t) =>
      sshViaGateway({ host: '127.0.0.1', port: cluster.balancer.port, sandboxId: t.sandboxId, token: t.token, command: 'sandbox-id' }),
    ),
  );
  const ok = results.filter((r, i) => r.status === 200 && r.stdout.trim() === tokens[i]!.sandboxId).length;
  const failed = attempts - ok;
  const statuses = [...new Set(results.filter((r) => r.status !== 200).map((r) => r.status))];
  console.log(`baseline: ${failed}/${attempts} SSH attempts failed (${((100 * failed) / attempts).toFixed(0)}%), statuses ${statuses.join(',')}; expected about 2/3 with 3 replicas`);
  expect(failed).toBeGreaterThan(0);
  expect(ok).toBeGreaterThan(0);
  // Misrouted attempts fail the way the real gateway fails them: 502 after its session wait.
  expect(statuses).toEqual([502]);
}, 90_000);
