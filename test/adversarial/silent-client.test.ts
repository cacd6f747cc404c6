// Clients that vanish without a FIN or RST (a laptop that sleeps, a NAT that forgets) must not hold
// their limit slots forever (issue 10). A client HTTP/2 connection that received nothing for
// --h2-ping-interval-ms is PINGed; an unanswered PING destroys it after --h2-ping-timeout-ms, which
// ends its streams and gives their slots back. A connection with no stream for
// --connection-idle-timeout-ms is closed gracefully. The vanished client is a frozen relay: its
// connection stays open and silent, as in a network partition.
import type * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { Cluster } from '../../emulator/cluster.ts';
import { forwardClient, openForwardTcp, type ForwardTcpStream } from '../../emulator/forward-tcp-client.ts';
import { Gen2Store } from '../../emulator/gateway/gen2/store.ts';
import { startSwitchableRelay, type SwitchableRelay } from '../../emulator/pausable-relay.ts';
import { startSupervisorFleet, type SupervisorFleet } from '../../emulator/supervisor/fleet.ts';
import { createTestDatabase, TEST_REDIS_URL, testRedisPrefix, type TestDatabase } from '../helpers/services.ts';

let db: TestDatabase;
let store: Gen2Store;
let cluster: Cluster;
let fleet: SupervisorFleet;
let relay: SwitchableRelay;
let sandboxId: string;
const clients: grpc.Client[] = [];
const streams: ForwardTcpStream[] = [];

async function metric(name: string, match: (labels: string) => boolean = () => true): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${cluster.replica(0).sidecarPorts!.admin}/metrics`)).text();
  let sum = 0;
  for (const line of text.split('\n')) {
    const m = /^([a-z_]+)(\{[^}]*\})? ([0-9.e+-]+)$/.exec(line);
    if (m && m[1] === name && match(m[2] ?? '')) sum += Number(m[3]);
  }
  return sum;
}

const slotsHeld = (): Promise<number> => metric('ohs_limit_slots_held');

/** A ForwardTcp SSH stream with its own token, through `endpoint`, open until the test ends. */
async function holdStream(endpoint: string): Promise<ForwardTcpStream> {
  const client = forwardClient(endpoint);
  clients.push(client);
  const token = (await store.createSshSession(sandboxId, 3600)).token;
  const s = openForwardTcp(client, { sandboxId, token });
  s.socket.on('error', () => undefined);
  s.status.catch(() => undefined);
  streams.push(s);
  return s;
}

beforeAll(async () => {
  db = await createTestDatabase('silent_client');
  store = new Gen2Store(db.url, { poolSize: 2 });
  await store.migrate();
  cluster = await Cluster.start({
    replicas: 1,
    databaseUrl: db.url,
    protocol: '2026-08',
    sidecars: {
      redisUrl: TEST_REDIS_URL,
      redisKeyPrefix: testRedisPrefix('silent_client'),
      extraArgs: ['--h2-ping-interval-ms', '500', '--h2-ping-timeout-ms', '500', '--connection-idle-timeout-ms', '1500', '--rebalance', 'off'],
    },
  });
  sandboxId = (await store.createSandbox({ name: 'silent' })).id;
  fleet = await startSupervisorFleet({ endpoint: cluster.endpoint, sandboxIds: [sandboxId], protocol: '2026-08', jwtKeyDir: cluster.jwtKeyDir });
  await fleet.waitAllConnected(30_000);
  relay = await startSwitchableRelay({ host: '127.0.0.1', port: cluster.replica(0).publicPort });
}, 60_000);

afterAll(async () => {
  for (const s of streams) s.call.cancel();
  for (const c of clients) c.close();
  await relay?.close();
  await fleet?.stop();
  await cluster?.close();
  await store?.close();
  await db?.drop();
});

it('a client that vanishes without a FIN loses its connection to an unanswered PING, and its slots come back; a live one keeps its own', async () => {
  const pingTimeoutsBefore = await metric('ohs_protections_total', (l) => l.includes('reason="ping_timeout"'));
  // A live client straight to the sidecar, and one behind the relay that will go silent. Each
  // stream takes a slot for its token and one for the sandbox.
  const live = await holdStream(`127.0.0.1:${cluster.replica(0).publicPort}`);
  await holdStream(`127.0.0.1:${relay.port}`);
  await expect.poll(slotsHeld, { timeout: 10_000, interval: 100 }).toBe(4);
  // Both stay open across several PING rounds while they answer (an idle SSH session is not dead).
  await new Promise((r) => setTimeout(r, 2_000));
  expect(await slotsHeld()).toBe(4);

  const frozenAt = Date.now();
  relay.freeze();
  expect(relay.frozenConnections()).toBe(1);
  // PING after 0.5 s of silence, destroyed 0.5 s later: its two slots are back within a few seconds.
  await expect.poll(slotsHeld, { timeout: 10_000, interval: 100 }).toBe(2);
  const reapedMs = Date.now() - frozenAt;
  expect(await metric('ohs_protections_total', (l) => l.includes('reason="ping_timeout"'))).toBe(pingTimeoutsBefore + 1);
  // The sidecar's side of the frozen connection is gone; the live client's stream is untouched.
  await expect.poll(() => relay.frozenConnections(), { timeout: 5_000 }).toBe(0);
  expect(live.socket.destroyed).toBe(false);
  await new Promise((r) => setTimeout(r, 1_500));
  expect(await slotsHeld()).toBe(2);
  console.log(`silent client: its connection destroyed and its 2 slots back ${reapedMs} ms after it went silent (PING every 0.5 s, 0.5 s to answer); the live client kept its 2`);
}, 60_000);

it('a client connection with no stream is closed after the idle timeout; one with an open stream is not', async () => {
  const idleBefore = await metric('ohs_protections_total', (l) => l.includes('reason="idle"'));
  const client = forwardClient(`127.0.0.1:${cluster.replica(0).publicPort}`);
  clients.push(client);
  // A stream makes the connection; once it ends the connection has none.
  const token = (await store.createSshSession(sandboxId, 3600)).token;
  const s = openForwardTcp(client, { sandboxId, token });
  s.socket.on('error', () => undefined);
  await expect.poll(slotsHeld, { timeout: 10_000, interval: 100 }).toBeGreaterThanOrEqual(4);
  s.call.cancel();
  await s.status.catch(() => undefined);
  await expect.poll(() => metric('ohs_protections_total', (l) => l.includes('reason="idle"')), { timeout: 10_000, interval: 200 }).toBe(idleBefore + 1);
  // The connections with an open stream (the live client of the previous test) are still there.
  expect(await slotsHeld()).toBe(2);
}, 60_000);
