// Redis is only a cache (DESIGN §4): with the cluster's Redis stopped, routing is served from
// Postgres; when Redis returns, caching resumes without restarting any sidecar.
import { afterAll, beforeAll, expect, it } from 'vitest';
import { Cluster } from '../../emulator/cluster.ts';
import { GatewayStore } from '../../emulator/gateway/store.ts';
import { startSupervisorFleet } from '../../emulator/supervisor/fleet.ts';
import { startOwnRedis, type OwnRedis } from '../helpers/own-redis.ts';
import { createTestDatabase, testRedisPrefix, type TestDatabase } from '../helpers/services.ts';
import { sshViaGateway } from '../../emulator/ssh-client.ts';

let db: TestDatabase;
let redis: OwnRedis;
let cluster: Cluster;
let store: GatewayStore;
let fleet: Awaited<ReturnType<typeof startSupervisorFleet>>;
let sandbox: string;

async function lookups(adminPort: number): Promise<Record<string, number>> {
  const text = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
  const out: Record<string, number> = {};
  for (const m of text.matchAll(/^ohs_owner_lookups_total\{source="(\w+)"\} (\d+)/gm)) out[m[1]!] = Number(m[2]);
  return out;
}

async function readyz(adminPort: number): Promise<{ ready: boolean; checks: { redis: boolean | null } }> {
  return (await fetch(`http://127.0.0.1:${adminPort}/readyz`)).json() as Promise<{ ready: boolean; checks: { redis: boolean | null } }>;
}

beforeAll(async () => {
  db = await createTestDatabase('redis_outage_routing');
  redis = await startOwnRedis();
  store = new GatewayStore(db.url);
  await store.migrate();
  cluster = await Cluster.start({
    replicas: 2,
    databaseUrl: db.url,
    // A short in-process cache so lookups keep reaching Redis (or Postgres) during the test.
    sidecars: { redisUrl: redis.url, redisKeyPrefix: testRedisPrefix('redis-outage'), extraArgs: ['--owner-cache-ttl-ms', '50'] },
  });
  sandbox = (await store.createSandbox()).id;
  // The supervisor connects straight to r0, so r0 owns the sandbox and r1 must forward.
  fleet = await startSupervisorFleet({ endpoint: `127.0.0.1:${cluster.replica(0).publicPort}`, sandboxIds: [sandbox] });
  await fleet.waitAllConnected(15_000);
}, 60_000);

afterAll(async () => {
  await fleet?.stop();
  await cluster?.close();
  await redis?.stop();
  await store?.close();
  await db?.drop();
});

async function sshThroughNonOwner(n: number): Promise<number> {
  const { token } = await store.createSshSession(sandbox, 3600);
  let ok = 0;
  for (let i = 0; i < n; i++) {
    const res = await sshViaGateway({ host: '127.0.0.1', port: cluster.replica(1).publicPort, sandboxId: sandbox, token, command: 'sandbox-id' });
    if (res.status === 200 && res.stdout.trim() === sandbox) ok++;
    await new Promise((r) => setTimeout(r, 60));
  }
  return ok;
}

it('routes from Postgres while Redis is down and resumes caching when it returns', async () => {
  const admin = cluster.replica(1).sidecarPorts!.admin;
  expect(await sshThroughNonOwner(3)).toBe(3);
  expect((await lookups(admin)).redis ?? 0).toBeGreaterThan(0);

  await redis.stop();
  await expect.poll(async () => (await readyz(admin)).checks.redis, { timeout: 10_000 }).toBe(false);
  expect((await readyz(admin)).ready).toBe(true);
  const pgBefore = (await lookups(admin)).postgres ?? 0;
  expect(await sshThroughNonOwner(5)).toBe(5);
  expect((await lookups(admin)).postgres ?? 0).toBeGreaterThan(pgBefore);

  await redis.start();
  await expect.poll(async () => (await readyz(admin)).checks.redis, { timeout: 15_000 }).toBe(true);
  // One round fills the Redis entry again; the next lookups are served from it.
  await sshThroughNonOwner(2);
  const redisBefore = (await lookups(admin)).redis ?? 0;
  expect(await sshThroughNonOwner(4)).toBe(4);
  expect((await lookups(admin)).redis ?? 0).toBeGreaterThan(redisBefore);
}, 90_000);
