// The product's core job (issue: owner-routed forwarding): three replicas, each behind its
// sidecar, behind a round-robin Service. Supervisors and clients land anywhere; every
// sandbox-scoped request still reaches the replica that holds the sandbox's session.
import type * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cluster } from '../../emulator/cluster.ts';
import { GatewayStore } from '../../emulator/gateway/store.ts';
import { startSupervisorFleet } from '../../emulator/supervisor/fleet.ts';
import { exec, gatewayClient, pushLogs, unary } from '../helpers/grpc-client.ts';
import { TEST_REDIS_URL, createTestDatabase, testRedisPrefix, type TestDatabase } from '../helpers/services.ts';
import { sshViaGateway } from '../../emulator/ssh-client.ts';

let db: TestDatabase;
let cluster: Cluster;
let store: GatewayStore;
let fleet: Awaited<ReturnType<typeof startSupervisorFleet>>;
const sandboxes: string[] = [];

async function owners(): Promise<Map<string, string>> {
  const res = await store.pool.query<{ sandbox_id: string; replica_id: string }>('SELECT sandbox_id, replica_id FROM ohs_owners');
  return new Map(res.rows.map((r) => [r.sandbox_id, r.replica_id]));
}

beforeAll(async () => {
  db = await createTestDatabase('owner_routing');
  store = new GatewayStore(db.url);
  await store.migrate();
  cluster = await Cluster.start({
    replicas: 3,
    databaseUrl: db.url,
    sidecars: { redisUrl: TEST_REDIS_URL, redisKeyPrefix: testRedisPrefix('owner-routing') },
  });
  for (let i = 0; i < 10; i++) sandboxes.push((await store.createSandbox()).id);
  fleet = await startSupervisorFleet({ endpoint: cluster.endpoint, sandboxIds: sandboxes });
  await fleet.waitAllConnected(20_000);
}, 90_000);

afterAll(async () => {
  await fleet?.stop();
  await cluster?.close();
  await store?.close();
  await db?.drop();
});

describe('owner-routed forwarding across three replicas', () => {
  it('supervisors spread over the replicas and each sandbox has one owner', async () => {
    const o = await owners();
    expect(o.size).toBe(10);
    expect(new Set(o.values()).size).toBeGreaterThan(1);
  });

  it('300 SSH sessions through the Service all reach the sandbox they asked for', async () => {
    const attempts = 300;
    const tokens = await Promise.all(sandboxes.map((id) => store.createSshSession(id, 3600)));
    const results: Array<{ ok: boolean; status: number }> = [];
    // 10 at a time: one per sandbox, so the gateway's per-token cap (3) is never what decides.
    for (let i = 0; i < attempts; i += 10) {
      const batch = await Promise.all(
        tokens.map(async (t) => {
          const r = await sshViaGateway({ host: '127.0.0.1', port: cluster.balancer.port, sandboxId: t.sandboxId, token: t.token, command: 'sandbox-id' });
          return { ok: r.status === 200 && r.stdout.trim() === t.sandboxId, status: r.status };
        }),
      );
      results.push(...batch);
    }
    const failed = results.filter((r) => !r.ok);
    console.log(`owner routing: ${attempts - failed.length}/${attempts} SSH sessions succeeded; balancer spread ${cluster.balancer.counts.join('/')}`);
    expect(failed).toEqual([]);
  }, 180_000);

  it('ExecSandbox and GetSandboxLogs through a non-owner replica return the owner\'s data', async () => {
    const o = await owners();
    const sandbox = sandboxes[0]!;
    const owner = o.get(sandbox)!;
    const nonOwner = cluster.replicas.find((r) => r.name !== owner)!;
    const ownerReplica = cluster.replicas.find((r) => r.name === owner)!;
    const viaNonOwner = gatewayClient(`127.0.0.1:${nonOwner.publicPort}`);
    const viaOwner = gatewayClient(`127.0.0.1:${ownerReplica.publicPort}`);
    try {
      const r = await exec(viaNonOwner, sandbox, ['sandbox-id']);
      expect(r).toEqual({ stdout: `${sandbox}\n`, stderr: '', exitCode: 0 });
      // Logs pushed through the owner are read through a non-owner.
      await pushLogs(viaOwner, [{ sandbox_id: sandbox, logs: [{ message: 'owner-side line' }] }]);
      const logs = await unary<{ logs: Array<{ message: string }> }>(viaNonOwner, 'GetSandboxLogs', { sandbox_id: sandbox });
      expect(logs.logs.map((l) => l.message)).toContain('owner-side line');
      // And logs pushed through a non-owner land on the owner too.
      await pushLogs(viaNonOwner, [{ sandbox_id: sandbox, logs: [{ message: 'pushed via non-owner' }] }]);
      const again = await unary<{ logs: Array<{ message: string }> }>(viaOwner, 'GetSandboxLogs', { sandbox_id: sandbox });
      expect(again.logs.map((l) => l.message)).toContain('pushed via non-owner');
    } finally {
      viaNonOwner.close();
      viaOwner.close();
    }
  });

  it('WatchSandbox through a non-owner is routed and streams the sandbox snapshot', async () => {
    const o = await owners();
    const sandbox = sandboxes[2]!;
    const nonOwner = cluster.replicas.find((r) => r.name !== o.get(sandbox))!;
    const client = gatewayClient(`127.0.0.1:${nonOwner.publicPort}`);
    try {
      const call = (client.WatchSandbox as (r: unknown) => grpc.ClientReadableStream<{ sandbox?: { phase: number; metadata: { id: string } } }>).call(
        client,
        { id: sandbox, follow_status: true },
      );
      const first = await new Promise<{ phase: number; id: string }>((resolve, reject) => {
        call.once('data', (ev: { sandbox?: { phase: number; metadata: { id: string } } }) =>
          resolve({ phase: ev.sandbox?.phase ?? -1, id: ev.sandbox?.metadata.id ?? '' }),
        );
        call.once('error', reject);
      });
      expect(first).toEqual({ phase: 2, id: sandbox });
      call.on('error', () => undefined);
      call.cancel();
    } finally {
      client.close();
    }
  });

  it('a supervisor reconnecting through another replica moves ownership there and relays follow', async () => {
    const sandbox = sandboxes[1]!;
    const before = (await owners()).get(sandbox)!;
    const entry = fleet.supervisors.get(sandbox)!;
    // Reconnect until the balancer puts the supervisor on a different replica.
    let after = before;
    for (let i = 0; i < 6 && after === before; i++) {
      const sessions = entry.supervisor.sessionsStarted;
      entry.supervisor.dropConnection();
      await expect.poll(() => entry.supervisor.sessionsStarted, { timeout: 40_000, interval: 100 }).toBeGreaterThan(sessions);
      await expect.poll(async () => (await owners()).get(sandbox), { timeout: 5000 }).toBeDefined();
      after = (await owners()).get(sandbox)!;
    }
    expect(after).not.toBe(before);
    const { token } = await store.createSshSession(sandbox, 3600);
    for (const r of cluster.replicas) {
      const res = await sshViaGateway({ host: '127.0.0.1', port: r.publicPort, sandboxId: sandbox, token, command: 'sandbox-id' });
      expect(res.status).toBe(200);
      expect(res.stdout.trim()).toBe(sandbox);
    }
  }, 120_000);
});
