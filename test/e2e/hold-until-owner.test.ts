// Hold until owner (DESIGN §4): when a sandbox's owner dies (kill -9 of sidecar and gateway), a
// request that arrives at a surviving replica before the supervisor has reconnected is held for
// an ownership event and then served by the new owner, instead of failing.
import { afterAll, beforeAll, expect, it } from 'vitest';
import { Cluster } from '../../emulator/cluster.ts';
import { GatewayStore } from '../../emulator/gateway/store.ts';
import { startSwitchableRelay, type SwitchableRelay } from '../../emulator/pausable-relay.ts';
import { startSandboxSshServer, type SandboxSshServer } from '../../emulator/supervisor/ssh-server.ts';
import { SupervisorEmulator } from '../../emulator/supervisor/supervisor.ts';
import { TEST_REDIS_URL, createTestDatabase, testRedisPrefix, type TestDatabase } from '../helpers/services.ts';
import { sshViaGateway } from '../../emulator/ssh-client.ts';
import { waitUntil } from '../helpers/wait.ts';

let db: TestDatabase;
let cluster: Cluster;
let store: GatewayStore;
let relay: SwitchableRelay;
let ssh: SandboxSshServer;
let supervisor: SupervisorEmulator;
let sandbox: string;

async function metric(adminPort: number, name: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
  const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(text);
  return m ? Number(m[1]) : 0;
}

beforeAll(async () => {
  db = await createTestDatabase('hold_until_owner');
  store = new GatewayStore(db.url);
  await store.migrate();
  cluster = await Cluster.start({ replicas: 2, databaseUrl: db.url, sidecars: { redisUrl: TEST_REDIS_URL, redisKeyPrefix: testRedisPrefix('hold') } });
  sandbox = (await store.createSandbox()).id;
  ssh = await startSandboxSshServer({ sandboxId: sandbox });
  // The supervisor reaches r0 through a relay we can re-point, like a Service losing an endpoint.
  relay = await startSwitchableRelay({ host: '127.0.0.1', port: cluster.replica(0).publicPort });
  supervisor = new SupervisorEmulator({ endpoint: `127.0.0.1:${relay.port}`, sandboxId: sandbox, sshPort: ssh.port, backoff: { initialMs: 1000, maxMs: 1000 } });
  supervisor.start();
  await supervisor.waitConnected(15_000);
}, 60_000);

afterAll(async () => {
  await supervisor?.stop();
  await ssh?.close();
  await relay?.close();
  await cluster?.close();
  await store?.close();
  await db?.drop();
});

it('a request during failover is held, then served by the new owner', async () => {
  const { token } = await store.createSshSession(sandbox, 3600);
  const r1 = cluster.replica(1);
  // r1 has routed this sandbox to r0 before, as any replica serving traffic would have.
  const before = await sshViaGateway({ host: '127.0.0.1', port: r1.publicPort, sandboxId: sandbox, token, command: 'sandbox-id' });
  expect(before.stdout.trim()).toBe(sandbox);
  const heldBefore = await metric(r1.sidecarPorts!.admin, 'ohs_held_duration_seconds_count');

  relay.setTarget({ host: '127.0.0.1', port: r1.publicPort });
  await cluster.kill(0, 'SIGKILL', 'both');
  // Sent at once: the owner is dead and the supervisor reconnects only after its 1 s backoff.
  const during = await sshViaGateway({ host: '127.0.0.1', port: r1.publicPort, sandboxId: sandbox, token, command: 'sandbox-id' });
  expect(during.status).toBe(200);
  expect(during.stdout.trim()).toBe(sandbox);
  expect(await metric(r1.sidecarPorts!.admin, 'ohs_held_duration_seconds_count')).toBeGreaterThan(heldBefore);
  await waitUntil(
    'r1 to own the sandbox',
    async () => (await store.pool.query<{ replica_id: string }>('SELECT replica_id FROM ohs_owners WHERE sandbox_id = $1', [sandbox])).rows[0]?.replica_id,
    (owner) => owner === 'r1',
    { timeoutMs: 5000 },
  );
}, 60_000);
