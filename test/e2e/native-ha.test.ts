// A gateway that routes supervisor sessions itself (upstream's unmerged HA branch, reference §10) is
// recognised by its owner records in `objects`; the sidecar then steps aside: no ownership claims, no
// shadow registrations, no re-routing, and PeerRelay passes through untouched.
import { afterAll, beforeAll, expect, it } from 'vitest';
import { Cluster } from '../../emulator/cluster.ts';
import { sshViaForwardTcp } from '../../emulator/forward-tcp-client.ts';
import { Gen2Store } from '../../emulator/gateway/gen2/store.ts';
import { Phase } from '../../emulator/proto.ts';
import { startSupervisorFleet, type SupervisorFleet } from '../../emulator/supervisor/fleet.ts';
import { gatewayClient } from '../helpers/grpc-client.ts';
import { createTestDatabase, type TestDatabase } from '../helpers/services.ts';
import { waitUntil } from '../helpers/wait.ts';

let db: TestDatabase;
let store: Gen2Store;
let cluster: Cluster;
let fleet: SupervisorFleet | undefined;

beforeAll(async () => {
  db = await createTestDatabase('native_ha');
  store = new Gen2Store(db.url, { poolSize: 2 });
  await store.migrate();
  // What the HA branch's gateway keeps per live session (reference §10: supervisor_session_owner rows).
  await store.pool.query(
    `INSERT INTO objects (id, object_type, name, workspace, payload, created_at_ms, updated_at_ms)
     VALUES ('supervisor-owner:seed', 'supervisor_session_owner', 'supervisor-owner:seed', '', $1, 0, 0)`,
    [Buffer.from(JSON.stringify({ sandbox_id: 'seed', owner_replica_id: 'elsewhere' }))],
  );
  cluster = await Cluster.start({ replicas: 1, databaseUrl: db.url, protocol: '2026-08', logLevel: 'info', sidecars: {} });
}, 60_000);

afterAll(async () => {
  await fleet?.stop();
  await cluster?.close();
  await store?.close();
  await db?.drop();
});

it('a native-HA gateway makes the sidecar step aside: no claims, no shadows, traffic passes through', async () => {
  const r = cluster.replica(0);
  await waitUntil('step-aside logged', async () => r.sidecar!.output.some((l) => l.includes('native HA')), (x) => x, { timeoutMs: 15_000 });
  const row = await store.createSandbox({ name: 'native-box' });
  fleet = await startSupervisorFleet({ endpoint: `127.0.0.1:${r.publicPort}`, sandboxIds: [row.id], protocol: '2026-08', jwtKeyDir: cluster.jwtKeyDir });
  await fleet.waitAllConnected(20_000);
  await waitUntil('Ready', async () => (await store.getSandbox(row.id))?.phase, (p) => p === Phase.READY, { timeoutMs: 10_000 });
  // The gateway took the session; the sidecar wrote no ownership.
  const owners = await store.pool.query('SELECT 1 FROM ohs_owners WHERE sandbox_id = $1', [row.id]);
  expect(owners.rowCount).toBe(0);
  const token = await store.createSshSession(row.id, 3600);
  const ssh = await sshViaForwardTcp({ endpoint: `127.0.0.1:${r.publicPort}`, sandboxId: row.id, token: token.token, command: 'sandbox-id' });
  expect(ssh.stdout.trim()).toBe(row.id);
  // PeerRelay reaches the gateway as sent (this emulator, not an HA build, answers UNIMPLEMENTED).
  const client = gatewayClient(`127.0.0.1:${r.publicPort}`);
  try {
    const status = await new Promise<number>((resolve) => {
      const call = client.makeUnaryRequest('/openshell.v1.OpenShell/PeerRelay', (x: Buffer) => x, (x: Buffer) => x, Buffer.alloc(0), (err) => resolve(err?.code ?? 0));
      void call;
    });
    expect(status).toBe(12);
  } finally {
    client.close();
  }
  const metrics = await (await fetch(`http://127.0.0.1:${r.sidecarPorts!.admin}/metrics`)).text();
  expect(metrics).toMatch(/^ohs_owner_claims_total 0$/m);
  expect(metrics).toMatch(/^ohs_shadow_sessions 0$/m);
}, 60_000);
