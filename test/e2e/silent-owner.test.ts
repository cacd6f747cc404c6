// An owner replica that goes silent (its node or link gone: its sidecar stopped with SIGSTOP takes
// bytes and answers nothing, not even a PING) while a request for its sandbox is forwarded to it,
// on today's gateway generation (ForwardTcp). The ingress PINGs the peer connection the request was
// sent on, finds it silent one PING timeout later, and holds the request for the sandbox's next
// owner; when the supervisor has reconnected elsewhere (here: through the Service, to the ingress's
// own replica) the request is sent there and the SSH session runs. Before, the request stayed open
// on the dead connection until the client gave up (test/deploy/pods-netns.test.ts: "ran into the
// client timeout").
import { afterAll, beforeAll, expect, it } from 'vitest';
import { Cluster } from '../../emulator/cluster.ts';
import { sshViaForwardTcp } from '../../emulator/forward-tcp-client.ts';
import { Gen2Store } from '../../emulator/gateway/gen2/store.ts';
import type { ManagedProcess } from '../../emulator/process.ts';
import { startSupervisorFleet, type SupervisorFleet } from '../../emulator/supervisor/fleet.ts';
import { metric } from '../adversarial/support.ts';
import { gatewayClient, unary } from '../helpers/grpc-client.ts';
import { TEST_REDIS_URL, createTestDatabase, testRedisPrefix, type TestDatabase } from '../helpers/services.ts';
import { waitUntil } from '../helpers/wait.ts';

const PING_TIMEOUT_MS = 1_000;
const CLIENT_TIMEOUT_MS = 40_000;

let db: TestDatabase;
let store: Gen2Store;
let cluster: Cluster;
let fleet: SupervisorFleet | undefined;
let sandboxId: string;

const backend = (i: number): { host: string; port: number } => ({ host: '127.0.0.1', port: cluster.replica(i).publicPort });
const ownerOf = async (id: string): Promise<string | undefined> =>
  (await store.pool.query<{ replica_id: string }>('SELECT replica_id FROM ohs_owners WHERE sandbox_id = $1', [id])).rows[0]?.replica_id;

async function sshVia(i: number, timeoutMs = 20_000): Promise<{ ok: boolean; detail: string; ms: number }> {
  const { token } = await store.createSshSession(sandboxId, 3600);
  const started = Date.now();
  const r = await sshViaForwardTcp({ endpoint: `127.0.0.1:${cluster.replica(i).publicPort}`, sandboxId, token, command: 'sandbox-id', timeoutMs });
  const ok = r.grpcCode === null && r.stdout.trim() === sandboxId;
  return { ok, detail: ok ? 'ok' : `${r.grpcCode ?? 'no status'} ${r.grpcDetails} ${r.stderr.slice(0, 200)}`, ms: Date.now() - started };
}

beforeAll(async () => {
  db = await createTestDatabase('silent_owner_gen2');
  store = new Gen2Store(db.url, { poolSize: 2 });
  await store.migrate();
  cluster = await Cluster.start({
    replicas: 2,
    databaseUrl: db.url,
    protocol: '2026-08',
    logLevel: 'info',
    sidecars: { redisUrl: TEST_REDIS_URL, redisKeyPrefix: testRedisPrefix('silent-owner-gen2'), extraArgs: ['--h2-ping-timeout-ms', String(PING_TIMEOUT_MS)] },
  });
  // The Service sends everything to r1 for now: the supervisor's session lands there.
  cluster.balancer.setBackends([backend(1)]);
  fleet = await startSupervisorFleet({ endpoint: cluster.endpoint, sandboxIds: [], protocol: '2026-08', watchDatabaseUrl: db.url, backoff: { initialMs: 100, maxMs: 300 } });
  const client = gatewayClient(cluster.endpoint);
  try {
    sandboxId = (await unary<{ sandbox: { metadata: { id: string } } }>(client, 'CreateSandbox', { spec: {}, name: 'silent-owner' })).sandbox.metadata.id;
  } finally {
    client.close();
  }
  await waitUntil('the supervisor connected', async () => fleet!.supervisors.size, (n) => n === 1, { timeoutMs: 15_000 });
  await fleet.waitAllConnected(20_000);
  await waitUntil('r1 owns the sandbox', () => ownerOf(sandboxId), (o) => o === 'r1', { timeoutMs: 10_000 });
  // Forwarded from r0 once, so the ingress holds a live peer connection to r1.
  await waitUntil('SSH through r0 (forwarded to r1)', () => sshVia(0), (r) => r.ok, { timeoutMs: 20_000 });
}, 120_000);

afterAll(async () => {
  const sidecar = cluster?.replica(1).sidecar;
  if (sidecar?.alive() && sidecar.child.pid) process.kill(sidecar.child.pid, 'SIGCONT');
  await fleet?.stop();
  await cluster?.close();
  await store?.close();
  await db?.drop();
});

it('a ForwardTcp sent to a silent owner is held for the next owner and served there, not left open until the client gives up', async () => {
  const ingressAdmin = cluster.replica(0).sidecarPorts!.admin;
  const silentLabels = { class: 'tcp-forward', peer: 'r1', outcome: 'silent' };
  const silentBefore = (await metric(ingressAdmin, 'ohs_forwards_total', silentLabels)).sum;
  const owner = cluster.replica(1).sidecar as ManagedProcess;

  // r1's node goes silent; the Service stops sending to it (readiness would).
  process.kill(owner.child.pid as number, 'SIGSTOP');
  cluster.balancer.setBackends([backend(0)]);
  const stoppedAt = Date.now();
  const ssh = sshVia(0, CLIENT_TIMEOUT_MS);

  // The ingress finds the peer connection silent a PING timeout (and a tick or two) later.
  await waitUntil('the ingress counted the silent owner', () => metric(ingressAdmin, 'ohs_forwards_total', silentLabels), (m) => m.sum === silentBefore + 1, {
    timeoutMs: 15_000,
  });
  const foundSilentMs = Date.now() - stoppedAt;
  const r0 = cluster.replica(0).sidecar as ManagedProcess;
  expect(r0.output.some((l) => l.includes('owner replica went silent before a response; holding the request for the next owner'))).toBe(true);

  // The supervisor's connection dies with r1's process and it reconnects through the Service, to r0.
  await cluster.kill(1, 'SIGKILL', 'sidecar');
  const r = await ssh;
  const servedMs = Date.now() - stoppedAt;
  console.log(`silent owner: found silent after ${foundSilentMs} ms (PING timeout ${PING_TIMEOUT_MS} ms); the held SSH session ran on the next owner ${servedMs} ms after the stop: ${r.detail}`);
  expect(r.detail).toBe('ok');
  expect(await ownerOf(sandboxId)).toBe('r0');
  expect(r.ms).toBeLessThan(CLIENT_TIMEOUT_MS);
  expect(r0.output.some((l) => l.includes('owner appeared; releasing held request') && l.includes(sandboxId))).toBe(true);
}, 90_000);
