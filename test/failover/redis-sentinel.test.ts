// Redis replaced by a Sentinel-managed primary/replica pair (issue 10 item 8), the primary killed
// (kill -9) under SSH and exec traffic through a two-replica cluster with connection limits in use.
// Nothing may be lost: every SSH session and exec succeeds (the sidecar falls back and retries on its
// own), the tunnels held across the failover stay open, and after the promotion the slot counts in
// the new primary are exactly the tunnels open, so the per-token limit still refuses the 4th.
//
// The sidecars are configured with --redis-url redis+sentinel://h1:p1,h2:p2,h3:p3/<master>.
import type net from 'node:net';
import { Redis } from 'ioredis';
import pg from 'pg';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { Cluster } from '../../emulator/cluster.ts';
import { GatewayStore } from '../../emulator/gateway/store.ts';
import { openConnectTunnel, sshViaGateway } from '../../emulator/ssh-client.ts';
import { startSupervisorFleet, type SupervisorFleet } from '../../emulator/supervisor/fleet.ts';
import { DEFAULT_LIMIT_RULES, type LimitRule } from '../../src/limits/rules.ts';
import { slotKey } from '../../src/limits/slots.ts';
import { exec, gatewayClient, type OpenShellClient } from '../helpers/grpc-client.ts';
import { parseSentinelUrl, startOwnSentinel, type OwnSentinel } from '../helpers/own-sentinel.ts';
import { createTestDatabase, testRedisPrefix, type TestDatabase } from '../helpers/services.ts';
import { waitUntil } from '../helpers/wait.ts';
import { metric, sleep, withTimeout } from '../adversarial/support.ts';

const LEASE_TTL_MS = 3000;
const TOKEN_RULE = DEFAULT_LIMIT_RULES.find((r) => r.name === 'ssh-per-token') as LimitRule;

let sentinel: OwnSentinel;
let db: TestDatabase;
let store: GatewayStore;
let cluster: Cluster;
let prefix: string;
const fleets: SupervisorFleet[] = [];
const clients: OpenShellClient[] = [];
const s: string[] = [];
const held: net.Socket[] = [];
let heldToken: string;

interface Attempt {
  kind: 'ssh' | 'exec';
  via: string;
  phase: string;
  ms: number;
  ok: boolean;
  detail: string;
}
const attempts: Attempt[] = [];
let phase = 'before';
let trafficOn = false;
let traffic: Promise<void> | undefined;

beforeAll(async () => {
  sentinel = await startOwnSentinel();
  db = await createTestDatabase('redis_sentinel');
  store = new GatewayStore(db.url);
  await store.migrate();
  prefix = testRedisPrefix('redis-sentinel');
  cluster = await Cluster.start({
    replicas: 2,
    databaseUrl: db.url,
    sidecars: {
      redisUrl: sentinel.url,
      redisKeyPrefix: prefix,
      // Debug: the limiter's connection errors and recoveries are what a failure here has to show.
      extraArgs: ['--limit-lease-ttl-ms', String(LEASE_TTL_MS), '--log-level', 'debug'],
    },
  });
  for (let i = 0; i < 2; i++) s.push((await store.createSandbox()).id);
  for (const [i, sandboxId] of s.entries()) {
    const fleet = await startSupervisorFleet({ endpoint: `127.0.0.1:${cluster.replica(i).publicPort}`, sandboxIds: [sandboxId] });
    fleets.push(fleet);
    await fleet.waitAllConnected(15_000);
  }
  const pool = new pg.Pool({ connectionString: db.url, max: 1 });
  try {
    await waitUntil('owners r0, r1', async () => Promise.all(s.map(async (id) => (await pool.query<{ replica_id: string }>('SELECT replica_id FROM ohs_owners WHERE sandbox_id = $1', [id])).rows[0]?.replica_id)), (v) => v.join(',') === 'r0,r1', { timeoutMs: 10_000 });
  } finally {
    await pool.end();
  }
  for (const r of cluster.replicas) clients.push(gatewayClient(`127.0.0.1:${r.publicPort}`));
}, 120_000);

afterAll(async () => {
  trafficOn = false;
  await traffic;
  for (const h of held) h.destroy();
  for (const c of clients) c.close();
  await Promise.all(fleets.map((f) => f.stop()));
  await cluster?.close();
  await store?.close();
  await db?.drop();
  await sentinel?.stop();
});

/** A client of whichever Redis the sentinels call primary now. */
async function primaryClient(): Promise<Redis> {
  const c = new Redis({ ...parseSentinelUrl(sentinel.url), lazyConnect: true, maxRetriesPerRequest: 1 });
  c.on('error', () => undefined);
  await c.connect();
  return c;
}

const COUNT_LIVE = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')`;

async function liveTokenSlots(token: string): Promise<number> {
  const c = await primaryClient();
  try {
    return Number(await c.eval(COUNT_LIVE, 1, slotKey(`${prefix}limits:`, TOKEN_RULE, token)));
  } finally {
    c.disconnect();
  }
}

async function policyGlobal(i: number): Promise<boolean> {
  return (await metric(cluster.replica(i).sidecarPorts?.admin as number, 'ohs_limit_policy', { policy: 'global' })).sum === 1;
}

function startTraffic(): void {
  trafficOn = true;
  const loops: Array<Promise<void>> = [];
  for (const [ri, r] of cluster.replicas.entries()) {
    for (const [si, sandboxId] of s.entries()) {
      loops.push(
        (async () => {
          const tokens = [(await store.createSshSession(sandboxId, 3600)).token, (await store.createSshSession(sandboxId, 3600)).token];
          for (let n = 0; trafficOn; n++) {
            const at = phase;
            const started = Date.now();
            let ok = false;
            let detail = '';
            try {
              const res = await withTimeout(sshViaGateway({ host: '127.0.0.1', port: r.publicPort, sandboxId, token: tokens[n % 2] as string, command: 'sandbox-id', timeoutMs: 20_000 }), 25_000);
              ok = res.status === 200 && res.stdout.trim() === sandboxId;
              detail = ok ? 'ok' : `status ${res.status} ${res.body.trim()}`;
            } catch (err) {
              detail = (err as Error).message;
            }
            attempts.push({ kind: 'ssh', via: r.name, phase: at, ms: Date.now() - started, ok, detail: `S${si}: ${detail}` });
            if (trafficOn) await sleep(100);
          }
        })(),
      );
      loops.push(
        (async () => {
          while (trafficOn) {
            const at = phase;
            const started = Date.now();
            let ok = false;
            let detail = '';
            try {
              const out = await withTimeout(exec(clients[ri] as OpenShellClient, sandboxId, ['sandbox-id']), 20_000);
              ok = out.stdout.trim() === sandboxId;
              detail = ok ? 'ok' : `stdout '${out.stdout.trim()}'`;
            } catch (err) {
              detail = (err as Error).message;
            }
            attempts.push({ kind: 'exec', via: r.name, phase: at, ms: Date.now() - started, ok, detail: `S${si}: ${detail}` });
            if (trafficOn) await sleep(100);
          }
        })(),
      );
    }
  }
  traffic = Promise.all(loops).then(() => undefined);
}

it('the Redis primary killed under SSH and exec traffic: nothing lost, limits exact after the promotion', async () => {
  // Three tunnels held across the failover by one token, the per-token maximum (3), via both replicas.
  heldToken = (await store.createSshSession(s[0] as string, 3600)).token;
  for (const i of [0, 1, 0]) {
    const t = await openConnectTunnel({ host: '127.0.0.1', port: cluster.replica(i).publicPort, sandboxId: s[0], token: heldToken });
    expect(t.status).toBe(200);
    held.push(t.socket as net.Socket);
  }
  expect(await liveTokenSlots(heldToken)).toBe(3);
  startTraffic();
  await sleep(3000);

  phase = 'failover';
  const oldPrimary = await sentinel.killPrimary();
  const killedAt = Date.now();
  const newPrimary = await waitUntil('a promotion', () => sentinel.currentPrimary(), (p) => p !== oldPrimary, { timeoutMs: 30_000, intervalMs: 50 });
  const promotedMs = Date.now() - killedAt;
  await waitUntil('both sidecars back on global limits', async () => (await policyGlobal(0)) && (await policyGlobal(1)), (v) => v, { timeoutMs: 30_000, intervalMs: 100 }).catch(
    async (err: unknown) => {
      // Say what each limiter was doing, in the error itself (a cut log or a JSON report keeps it):
      // its policy and its last redis lines.
      const said: string[] = [];
      for (const [i, r] of cluster.replicas.entries()) {
        const lines = (r.sidecar?.output ?? []).filter((l) => /redis|limit/i.test(l)).slice(-12);
        said.push(`${r.name}: policy global ${await policyGlobal(i).catch(() => 'unknown')}; last redis/limit lines:\n  ${lines.join('\n  ')}`);
      }
      throw new Error(`${(err as Error).message}; primary ${oldPrimary} killed, ${newPrimary} promoted after ${promotedMs} ms\n${said.join('\n')}`);
    },
  );
  const globalAgainMs = Date.now() - killedAt;
  phase = 'after';
  // Renewals put back any slot the promoted replica had not received (asynchronous replication).
  await sleep(2 * LEASE_TTL_MS);
  const slotsAfter = await liveTokenSlots(heldToken);
  const fourth = await openConnectTunnel({ host: '127.0.0.1', port: cluster.replica(1).publicPort, sandboxId: s[0], token: heldToken, timeoutMs: 10_000 });
  fourth.socket?.destroy();
  await sleep(2000);
  trafficOn = false;
  await traffic;
  const heldOpen = held.filter((h) => !h.destroyed).length;
  for (const h of held) h.destroy();
  const released = await waitUntil('the held slots released', () => liveTokenSlots(heldToken), (n) => n === 0, { timeoutMs: 10_000 }).then(
    () => true,
    () => false,
  );

  const byPhase = new Map<string, { ok: number; failed: number; maxMs: number }>();
  for (const a of attempts) {
    const key = `${a.phase}/${a.kind}`;
    const p = byPhase.get(key) ?? { ok: 0, failed: 0, maxMs: 0 };
    if (a.ok) p.ok++;
    else p.failed++;
    p.maxMs = Math.max(p.maxMs, a.ms);
    byPhase.set(key, p);
  }
  console.log(
    `redis sentinel failover (sidecars configured with ${sentinel.url}): primary ${oldPrimary} killed, ` +
      `sentinels promoted ${newPrimary} after ${promotedMs} ms, both sidecars back on global limits after ${globalAgainMs} ms; ` +
      [...byPhase].map(([k, v]) => `${k} ${v.ok} ok/${v.failed} failed (max ${v.maxMs} ms)`).join(', ') +
      `; held tunnels open ${heldOpen}/3, token slots in the new primary ${slotsAfter}/3, 4th tunnel for the token: ${fourth.status}, slots released after close: ${released}`,
  );
  const failed = attempts.filter((a) => !a.ok).map((a) => `${a.phase} ${a.kind} via ${a.via} ${a.detail}`);
  expect(failed).toEqual([]);
  expect(byPhase.get('failover/ssh')?.ok ?? 0).toBeGreaterThan(0);
  expect(heldOpen).toBe(3);
  expect(slotsAfter).toBe(3);
  expect(fourth.status).toBe(429);
  expect(released).toBe(true);
}, 180_000);
