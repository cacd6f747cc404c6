// Cluster-wide ForwardTcp limits at the 2026-08 generation: the gateway caps SSH forwards at 3 per
// session token and 20 per sandbox *per process* (reference §2.3 HEAD); with three replicas the
// sidecars must hold those caps for the whole cluster, refuse with the gateway's own
// RESOURCE_EXHAUSTED message, and take no slot for a token the gateway would reject.
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { Cluster } from '../../emulator/cluster.ts';
import { forwardClient, openForwardTcp, type ForwardTcpStream } from '../../emulator/forward-tcp-client.ts';
import { Gen2Store } from '../../emulator/gateway/gen2/store.ts';
import { Phase } from '../../emulator/proto.ts';
import { startSupervisorFleet, type SupervisorFleet } from '../../emulator/supervisor/fleet.ts';
import { createTestDatabase, TEST_REDIS_URL, testRedisPrefix, type TestDatabase } from '../helpers/services.ts';
import { waitUntil } from '../helpers/wait.ts';

let db: TestDatabase;
let store: Gen2Store;
let cluster: Cluster;
let fleet: SupervisorFleet;
const sandboxes: string[] = [];
const open = new Set<ForwardTcpStream>();
const clients: grpc.Client[] = [];

type Outcome = { kind: 'admitted'; fwd: ForwardTcpStream } | { kind: 'refused'; code: number; details: string };

/** Opens a ForwardTcp; admitted once the sandbox's SSH server greets through it, refused on a non-OK status. */
function attempt(client: grpc.Client, sandboxId: string, token: string): Promise<Outcome> {
  const fwd = openForwardTcp(client, { sandboxId, token });
  open.add(fwd);
  fwd.socket.on('error', () => undefined);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve({ kind: 'refused', code: -1, details: 'no answer in 30 s' }), 30_000);
    fwd.socket.once('data', () => {
      clearTimeout(timer);
      resolve({ kind: 'admitted', fwd });
    });
    void fwd.status.then((st) => {
      clearTimeout(timer);
      open.delete(fwd);
      resolve({ kind: 'refused', code: st.code, details: st.details });
    });
  });
}

function closeAll(): void {
  for (const f of open) f.socket.destroy();
  open.clear();
}

async function metricSum(name: string, labelFilter: (labels: string) => boolean): Promise<number> {
  let sum = 0;
  for (const r of cluster.replicas) {
    const text = await (await fetch(`http://127.0.0.1:${r.sidecarPorts!.admin}/metrics`)).text();
    for (const m of text.matchAll(new RegExp(`^${name}\\{([^}]*)\\} (\\S+)`, 'gm'))) if (labelFilter(m[1]!)) sum += Number(m[2]);
  }
  return sum;
}

beforeAll(async () => {
  db = await createTestDatabase('gen2_limits');
  store = new Gen2Store(db.url);
  await store.migrate();
  cluster = await Cluster.start({
    replicas: 3,
    databaseUrl: db.url,
    protocol: '2026-08',
    sidecars: { redisUrl: TEST_REDIS_URL, redisKeyPrefix: testRedisPrefix('gen2_limits') },
  });
  for (let i = 0; i < 5; i++) sandboxes.push((await store.createSandbox({ name: `lim-${i}` })).id);
  fleet = await startSupervisorFleet({ endpoint: cluster.endpoint, sandboxIds: sandboxes, protocol: '2026-08', jwtKeyDir: cluster.jwtKeyDir });
  await fleet.waitAllConnected(30_000);
  for (const id of sandboxes) await waitUntil(`sandbox ${id} Ready`, async () => (await store.getSandbox(id))?.phase, (p) => p === Phase.READY, { timeoutMs: 15_000 });
  // Thirty client connections through the Service: the round-robin spreads them over the replicas.
  for (let i = 0; i < 30; i++) clients.push(forwardClient(cluster.endpoint));
}, 90_000);

afterAll(async () => {
  closeAll();
  for (const c of clients) c.close();
  await fleet?.stop();
  await cluster?.close();
  await store?.close();
  await db?.drop();
});

it('1,000 ForwardTcp attempts with 50 tokens on 5 sandboxes over 3 replicas: never more than 3 per token or 20 per sandbox', async () => {
  const tokens = await Promise.all(Array.from({ length: 50 }, (_, i) => store.createSshSession(sandboxes[i % 5]!, 3600)));
  const outcomes = await Promise.all(
    Array.from({ length: 1000 }, (_, i) => {
      const t = tokens[i % tokens.length]!;
      return attempt(clients[i % clients.length]!, t.sandboxId, t.token).then((o) => ({ o, t }));
    }),
  );
  const perToken = new Map<string, number>();
  const perSandbox = new Map<string, number>();
  const refusals = new Map<string, number>();
  for (const { o, t } of outcomes) {
    if (o.kind === 'admitted') {
      perToken.set(t.token, (perToken.get(t.token) ?? 0) + 1);
      perSandbox.set(t.sandboxId, (perSandbox.get(t.sandboxId) ?? 0) + 1);
    } else {
      const k = `${grpc.status[o.code] ?? o.code} ${o.details}`;
      refusals.set(k, (refusals.get(k) ?? 0) + 1);
    }
  }
  const admitted = [...perSandbox.values()].reduce((a, b) => a + b, 0);
  const maxToken = Math.max(...perToken.values());
  const maxSandbox = Math.max(...perSandbox.values());
  const refusedBySidecars = await metricSum('ohs_limit_refusals_total', () => true);
  console.log(
    `gen2 limits: ${admitted} admitted (max ${maxToken} per token, ${maxSandbox} per sandbox), refusals ${JSON.stringify(Object.fromEntries(refusals))}; ` +
      `sidecars refused ${refusedBySidecars}`,
  );
  expect(maxToken).toBeLessThanOrEqual(3);
  expect(maxSandbox).toBeLessThanOrEqual(20);
  // Ten tokens of three per sandbox could hold 30: the sandbox cap binds, and is reached.
  expect([...perSandbox.values()]).toEqual([20, 20, 20, 20, 20]);
  expect([...refusals.keys()].every((k) => k === 'RESOURCE_EXHAUSTED sandbox SSH connection limit reached' || k === 'RESOURCE_EXHAUSTED SSH session connection limit reached')).toBe(true);
  expect(refusedBySidecars).toBe(1000 - admitted);
  closeAll();
  await waitUntil('slots released', () => metricSum('ohs_limit_slots_held', () => true), (n) => n === 0, { timeoutMs: 10_000 });
}, 120_000);

it('200 attempts with junk tokens for one sandbox take no slot, and the valid token still gets in', async () => {
  const sandboxId = sandboxes[0]!;
  const valid = await store.createSshSession(sandboxId, 3600);
  const other = await store.createSshSession(sandboxes[1]!, 3600);
  const skipsBefore = await metricSum('ohs_limit_skips_total', (l) => l.includes('reason="invalid_token"'));
  // Junk: unknown tokens, another sandbox's token, empty.
  const junk = Array.from({ length: 200 }, (_, i) => (i % 3 === 0 ? `junk-${i}` : i % 3 === 1 ? other.token : ''));
  const junkAttempts = junk.map((tok, i) => attempt(clients[i % clients.length]!, sandboxId, tok));
  const validAttempts = [0, 1, 2].map((i) => attempt(clients[i]!, sandboxId, valid.token));
  const [junkOutcomes, validOutcomes] = await Promise.all([Promise.all(junkAttempts), Promise.all(validAttempts)]);
  const junkCodes = new Set(junkOutcomes.map((o) => (o.kind === 'admitted' ? 'ADMITTED' : grpc.status[o.code])));
  const skips = (await metricSum('ohs_limit_skips_total', (l) => l.includes('reason="invalid_token"'))) - skipsBefore;
  console.log(`junk tokens: gateway answers ${[...junkCodes].join(',')}; ${skips} took no slot; valid token: ${validOutcomes.map((o) => o.kind).join(',')}`);
  expect(junkCodes).toEqual(new Set(['UNAUTHENTICATED']));
  expect(validOutcomes.every((o) => o.kind === 'admitted')).toBe(true);
  expect(skips).toBe(200);
  // Exactly the three valid forwards hold slots: one per rule each.
  expect(await metricSum('ohs_limit_slots_held', (l) => l.includes('rule="ssh-per-token"'))).toBe(3);
  const fourth = await attempt(clients[3]!, sandboxId, valid.token);
  expect(fourth.kind === 'refused' && fourth.details).toBe('SSH session connection limit reached');
  closeAll();
}, 120_000);
