// Failover when only the sidecar dies (issue: fenced ownership handoff and failover). The gateway
// behind it stays up, so it sees every supervisor stream through that sidecar drop; the supervisors
// reconnect through the Service to the other replicas, which take ownership; the dead sidecar's
// claims are all replaced, and every sandbox is reachable again through the Service.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cluster } from '../../emulator/cluster.ts';
import { GatewayStore } from '../../emulator/gateway/store.ts';
import { startSupervisorFleet } from '../../emulator/supervisor/fleet.ts';
import { TEST_REDIS_URL, createTestDatabase, testRedisPrefix, type TestDatabase } from '../helpers/services.ts';
import { sshViaGateway } from '../../emulator/ssh-client.ts';
import { waitUntil } from '../helpers/wait.ts';

const LEASE_TTL_MS = 3000;
const SANDBOXES = 6;

let db: TestDatabase;
let cluster: Cluster;
let store: GatewayStore;
let fleet: Awaited<ReturnType<typeof startSupervisorFleet>>;
const sandboxes: string[] = [];

async function owners(): Promise<Map<string, string>> {
  const res = await store.pool.query<{ sandbox_id: string; replica_id: string }>('SELECT sandbox_id, replica_id FROM ohs_owners');
  return new Map(res.rows.map((r) => [r.sandbox_id, r.replica_id]));
}

async function gatewaySessions(healthPort: number): Promise<string[]> {
  const res = await fetch(`http://127.0.0.1:${healthPort}/debug/sessions`, { signal: AbortSignal.timeout(2000) });
  return ((await res.json()) as { sandboxes: string[] }).sandboxes;
}

beforeAll(async () => {
  db = await createTestDatabase('failover');
  store = new GatewayStore(db.url);
  await store.migrate();
  cluster = await Cluster.start({
    replicas: 3,
    databaseUrl: db.url,
    sidecars: {
      redisUrl: TEST_REDIS_URL,
      redisKeyPrefix: testRedisPrefix('failover'),
      // Info: a failed session below is reported with what the surviving sidecars logged of it.
      extraArgs: ['--replica-lease-ttl-ms', String(LEASE_TTL_MS), '--replica-heartbeat-interval-ms', '500', '--log-level', 'info'],
    },
  });
  for (let i = 0; i < SANDBOXES; i++) sandboxes.push((await store.createSandbox()).id);
  fleet = await startSupervisorFleet({ endpoint: cluster.endpoint, sandboxIds: sandboxes, backoff: { initialMs: 200, maxMs: 1000 } });
  await fleet.waitAllConnected(20_000);
  await waitUntil('an owner row per sandbox', async () => (await owners()).size, (n) => n === SANDBOXES, { timeoutMs: 10_000 });
}, 90_000);

afterAll(async () => {
  await fleet?.stop();
  await cluster?.close();
  await store?.close();
  await db?.drop();
});

describe('failover', () => {
  it('sidecar alone killed (gateway alive): sessions move, the dead claims go, SSH works', async () => {
    // The victim: the replica holding the most sandboxes (at least one).
    const before = await owners();
    const counts = new Map<string, number>();
    for (const r of before.values()) counts.set(r, (counts.get(r) ?? 0) + 1);
    const victim = cluster.replicas.reduce((best, r) => ((counts.get(r.name) ?? 0) > (counts.get(best.name) ?? 0) ? r : best));
    const moved = sandboxes.filter((s) => before.get(s) === victim.name);
    expect(moved.length).toBeGreaterThanOrEqual(1);
    const survivors = cluster.replicas.filter((r) => r !== victim).map((r) => r.name);
    // Sanity: the victim's gateway holds those sessions before the kill.
    const held = await gatewaySessions(victim.gatewayHealthPort);
    for (const s of moved) expect(held).toContain(s);

    // The Service stops sending new connections to the victim as it dies (readiness would do that).
    cluster.balancer.setBackends(cluster.replicas.filter((r) => r !== victim).map((r) => ({ host: '127.0.0.1', port: r.publicPort })));
    const killedAt = Date.now();
    await cluster.kill(victim.index, 'SIGKILL', 'sidecar');
    expect(victim.gateway.alive()).toBe(true);

    // The gateway saw the streams through its dead sidecar end.
    await expect
      .poll(async () => (await gatewaySessions(victim.gatewayHealthPort)).filter((s) => moved.includes(s)), { timeout: 5000, interval: 100 })
      .toEqual([]);

    // The supervisors reconnected through the Service and the survivors own their sandboxes.
    await fleet.waitAllConnected(15_000);
    await expect
      .poll(
        async () => {
          const o = await owners();
          return moved.filter((s) => !survivors.includes(o.get(s) ?? ''));
        },
        { timeout: 15_000, interval: 100 },
      )
      .toEqual([]);
    const reconnectedMs = Date.now() - killedAt;

    // Past the victim's lease (plus margin): not one row still names it.
    const leaseOver = killedAt + LEASE_TTL_MS + 1500;
    if (Date.now() < leaseOver) await new Promise((r) => setTimeout(r, leaseOver - Date.now()));
    const res = await store.pool.query<{ sandbox_id: string }>('SELECT sandbox_id FROM ohs_owners WHERE replica_id = $1', [victim.name]);
    expect(res.rows.map((r) => r.sandbox_id)).toEqual([]);
    const after = await owners();
    expect(after.size).toBe(SANDBOXES);
    for (const r of after.values()) expect(survivors).toContain(r);

    // Every sandbox answers through the Service, on both surviving backends (round robin).
    const failures: string[] = [];
    for (const sandboxId of sandboxes) {
      const { token } = await store.createSshSession(sandboxId, 3600);
      for (let round = 0; round < 2; round++) {
        const r = await sshViaGateway({ host: '127.0.0.1', port: cluster.balancer.port, sandboxId, token, command: 'sandbox-id', timeoutMs: 20_000 }).catch(
          (err: unknown) => ({ status: -1, body: String(err), stdout: '' }),
        );
        if (r.status !== 200 || r.stdout.trim() !== sandboxId) failures.push(`${sandboxId}: ${r.status} ${r.body}`);
      }
    }
    console.log(
      `failover: sidecar ${victim.name} killed with ${moved.length} sandbox(es); owners moved to ${[...new Set(moved.map((s) => after.get(s)))].join(',')} ` +
        `within ${reconnectedMs} ms; ${SANDBOXES * 2 - failures.length}/${SANDBOXES * 2} SSH sessions through the Service succeeded`,
    );
    // A failure carries the survivors' lines about its sandbox (a CI run once saw a CONNECT through
    // the Service go unanswered for 20 s here, with nothing else to go on).
    const said = failures.map((f) => {
      const sandboxId = f.slice(0, f.indexOf(':'));
      const lines = cluster.replicas.filter((r) => r !== victim).flatMap((r) => (r.sidecar?.output ?? []).filter((l) => l.includes(sandboxId)).slice(-15).map((l) => `${r.name}: ${l}`));
      return `${f}\n  ${lines.join('\n  ')}`;
    });
    expect(said).toEqual([]);
  }, 60_000);
});
