// A gateway that takes a tunnel and never answers it (a stuck handler, a black hole between the pods):
// the client gets 504 once --upstream-response-timeout-ms has passed, the gateway's side is cut, the
// failure is counted, and other tunnels on the same sidecar are served meanwhile. The same on the
// forwarded path, with the owner's gateway or the owner's sidecar stopped (SIGSTOP: it takes
// connections and answers nothing). And an upgraded stream whose gateway resets: closed, with no
// error of ours written into it.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cluster } from '../../emulator/cluster.ts';
import { GatewayStore } from '../../emulator/gateway/store.ts';
import type { ManagedProcess } from '../../emulator/process.ts';
import { openConnectTunnel } from '../../emulator/ssh-client.ts';
import { startSupervisorFleet, type SupervisorFleet } from '../../emulator/supervisor/fleet.ts';
import { createTestDatabase, TEST_REDIS_URL, testRedisPrefix, type TestDatabase } from '../helpers/services.ts';
import { waitUntil } from '../helpers/wait.ts';
import { embeddedSidecar, metric, rawSession, startFakeGateway, type FakeGateway } from './support.ts';

const RESPONSE_TIMEOUT_MS = 1500;

function connectHead(sandboxId: string, token: string): Buffer {
  return Buffer.from(`CONNECT /connect/ssh HTTP/1.1\r\nHost: gw\r\nx-sandbox-id: ${sandboxId}\r\nx-sandbox-token: ${token}\r\n\r\n`, 'latin1');
}

describe('a gateway that never answers a tunnel (embedded sidecar, fake gateway)', () => {
  let gw: FakeGateway;
  let sc: Awaited<ReturnType<typeof embeddedSidecar>>;

  beforeAll(async () => {
    gw = await startFakeGateway();
    sc = await embeddedSidecar(gw.port, ['--upstream-response-timeout-ms', String(RESPONSE_TIMEOUT_MS)]);
  });
  afterAll(async () => {
    await sc?.proc.kill('SIGKILL');
    await gw?.close();
  });

  it('a CONNECT gets 504 past the bound, its gateway connection is cut, and a tunnel opened meanwhile is served', async () => {
    const timeoutsBefore = (await metric(sc.admin, 'ohs_requests_total', { class: 'ssh-tunnel', target: 'local', outcome: 'OHS_ERR_TIMEOUT' })).sum;
    const cutsBefore = (await metric(sc.admin, 'ohs_protections_total', { reason: 'response_timeout' })).sum;
    const silent = await rawSession(sc.port, connectHead('silent-1', 'T1'));
    const sentAt = Date.now();
    await waitUntil('the silent tunnel at the gateway', async () => gw.openTunnels.get('silent-1') ?? 0, (n) => n === 1, { timeoutMs: 5000 });

    // Served while the other waits.
    const served = await rawSession(sc.port, connectHead('sb-served', 'T2'));
    await waitUntil('the answer to the served tunnel', async () => served.received(), (r) => r.startsWith('HTTP/1.1 200'), { timeoutMs: 5000 });
    served.socket.write('ping');
    await waitUntil('the echo', async () => served.received(), (r) => r.endsWith('ping'), { timeoutMs: 5000 });

    await waitUntil('the silent tunnel answered by the sidecar', async () => silent.closed(), (c) => c, { timeoutMs: RESPONSE_TIMEOUT_MS + 10_000 });
    // Not answered before the bound (a little slack for timer granularity).
    expect(Date.now() - sentAt).toBeGreaterThanOrEqual(RESPONSE_TIMEOUT_MS - 100);
    expect(silent.received()).toMatch(/^HTTP\/1\.1 504 Gateway Timeout\r\n/);
    expect(silent.received()).toContain(`gateway sent no response within ${RESPONSE_TIMEOUT_MS} ms`);
    await waitUntil('the gateway side of the silent tunnel closed', async () => gw.openTunnels.get('silent-1') ?? 0, (n) => n === 0, { timeoutMs: 5000 });
    expect((await metric(sc.admin, 'ohs_requests_total', { class: 'ssh-tunnel', target: 'local', outcome: 'OHS_ERR_TIMEOUT' })).sum).toBe(timeoutsBefore + 1);
    expect((await metric(sc.admin, 'ohs_protections_total', { reason: 'response_timeout' })).sum).toBe(cutsBefore + 1);

    // The answered tunnel is untouched by it, and still carries bytes.
    expect(served.closed()).toBe(false);
    served.socket.write('pong');
    await waitUntil('the second echo', async () => served.received(), (r) => r.endsWith('pingpong'), { timeoutMs: 5000 });
    expect(gw.openTunnels.get('sb-served')).toBe(1);
    served.socket.destroy();
  }, 30_000);

  it('an upgrade the gateway never answers gets 504 the same way, and its gateway connection is cut', async () => {
    const cutsBefore = (await metric(sc.admin, 'ohs_protections_total', { reason: 'response_timeout' })).sum;
    const silent = await rawSession(sc.port, Buffer.from('GET /silent HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n', 'latin1'));
    await waitUntil('the silent upgrade at the gateway', async () => gw.silentUpgrades.size, (n) => n === 1, { timeoutMs: 5000 });
    await waitUntil('the upgrade answered by the sidecar', async () => silent.closed(), (c) => c, { timeoutMs: RESPONSE_TIMEOUT_MS + 10_000 });
    expect(silent.received()).toMatch(/^HTTP\/1\.1 504 Gateway Timeout\r\n/);
    await waitUntil('the gateway side of the upgrade closed', async () => gw.silentUpgrades.size, (n) => n === 0, { timeoutMs: 5000 });
    expect((await metric(sc.admin, 'ohs_protections_total', { reason: 'response_timeout' })).sum).toBe(cutsBefore + 1);
  }, 30_000);

  it('a WebSocket to a sandbox service the gateway never answers gets 504 the same way', async () => {
    const labels = { class: 'service-http', target: 'local', outcome: 'OHS_ERR_TIMEOUT' };
    const before = (await metric(sc.admin, 'ohs_requests_total', labels)).sum;
    // A service host (reference §2.7); unknown to this embedded sidecar, so its own gateway answers.
    const silent = await rawSession(
      sc.port,
      Buffer.from('GET /silent-ws HTTP/1.1\r\nHost: ws--sb-svc--web.openshell.localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n', 'latin1'),
    );
    await waitUntil('the silent upgrade at the gateway', async () => gw.silentUpgrades.size, (n) => n === 1, { timeoutMs: 5000 });
    await waitUntil('the upgrade answered by the sidecar', async () => silent.closed(), (c) => c, { timeoutMs: RESPONSE_TIMEOUT_MS + 10_000 });
    expect(silent.received()).toMatch(/^HTTP\/1\.1 504 Gateway Timeout\r\n/);
    expect(silent.received()).toContain(`gateway sent no response within ${RESPONSE_TIMEOUT_MS} ms`);
    await waitUntil('the gateway side of the upgrade closed', async () => gw.silentUpgrades.size, (n) => n === 0, { timeoutMs: 5000 });
    expect((await metric(sc.admin, 'ohs_requests_total', labels)).sum).toBe(before + 1);
  }, 30_000);

  it('an upgraded stream whose gateway connection resets is closed, with nothing of ours written into it', async () => {
    const c = await rawSession(sc.port, Buffer.from('GET /reset-after-upgrade HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n', 'latin1'));
    await waitUntil('the stream closed', async () => c.closed(), (closed) => closed, { timeoutMs: 10_000 });
    // The gateway's 101 and nothing after it (a 502 here would reach the client as stream bytes).
    expect(c.received()).toBe('HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n');
  }, 30_000);

  it('the same through the sandbox service path (http-proxy-3)', async () => {
    const c = await rawSession(
      sc.port,
      Buffer.from('GET /reset-after-upgrade HTTP/1.1\r\nHost: ws--sb-svc--web.openshell.localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n', 'latin1'),
    );
    await waitUntil('the stream closed', async () => c.closed(), (closed) => closed, { timeoutMs: 10_000 });
    expect(c.received()).toMatch(/^HTTP\/1\.1 101 Switching Protocols\r\n/);
    expect(c.received()).not.toContain('502');
    expect(c.received().endsWith('\r\n\r\n')).toBe(true);
  }, 30_000);

  it('a client that leaves before the gateway answers is not counted as a gateway failure', async () => {
    const count = async (outcome: string): Promise<number> => (await metric(sc.admin, 'ohs_requests_total', { class: 'ssh-tunnel', target: 'local', outcome })).sum;
    const [timeouts, upstream, closed] = [await count('OHS_ERR_TIMEOUT'), await count('OHS_ERR_UPSTREAM'), await count('closed')];
    const gone = await rawSession(sc.port, connectHead('silent-2', 'T3'));
    await waitUntil('the tunnel at the gateway', async () => gw.openTunnels.get('silent-2') ?? 0, (n) => n === 1, { timeoutMs: 5000 });
    gone.socket.destroy();
    await waitUntil('the gateway side closed after the client left', async () => gw.openTunnels.get('silent-2') ?? 0, (n) => n === 0, { timeoutMs: 5000 });
    await waitUntil('the tunnel counted closed', () => count('closed'), (n) => n === closed + 1, { timeoutMs: 5000 });
    expect(await count('OHS_ERR_TIMEOUT')).toBe(timeouts);
    expect(await count('OHS_ERR_UPSTREAM')).toBe(upstream);
  }, 30_000);
});

describe('a forwarded tunnel whose owner never answers (two-replica cluster, seed gateway emulators)', () => {
  let db: TestDatabase;
  let store: GatewayStore;
  let cluster: Cluster;
  let fleet: SupervisorFleet | undefined;
  let sandboxId: string;
  let token: string;

  beforeAll(async () => {
    db = await createTestDatabase('silent_owner');
    store = new GatewayStore(db.url);
    await store.migrate();
    cluster = await Cluster.start({
      replicas: 2,
      databaseUrl: db.url,
      sidecars: { redisUrl: TEST_REDIS_URL, redisKeyPrefix: testRedisPrefix('silent-owner'), extraArgs: ['--upstream-response-timeout-ms', String(RESPONSE_TIMEOUT_MS)] },
    });
    sandboxId = (await store.createSandbox()).id;
    // The session on r1: a tunnel through r0 is forwarded to it.
    fleet = await startSupervisorFleet({ endpoint: `127.0.0.1:${cluster.replica(1).publicPort}`, sandboxIds: [sandboxId] });
    await fleet.waitAllConnected(15_000);
    token = (await store.createSshSession(sandboxId, 3600)).token;
    await waitUntil('a tunnel through r0 answered', () => tunnelVia(0), (r) => r.status === 200, { timeoutMs: 10_000 });
  }, 90_000);

  afterAll(async () => {
    for (const r of cluster?.replicas ?? []) for (const p of [r.gateway, r.sidecar]) if (p?.child.pid) process.kill(p.child.pid, 'SIGCONT');
    await fleet?.stop();
    await cluster?.close();
    await store?.close();
    await db?.drop();
  });

  /** A CONNECT through replica `i`: its status and body (the tunnel, if any, closed at once). */
  async function tunnelVia(i: number): Promise<{ status: number; body: string }> {
    const t = await openConnectTunnel({ host: '127.0.0.1', port: cluster.replica(i).publicPort, sandboxId, token, timeoutMs: RESPONSE_TIMEOUT_MS + 10_000 });
    t.socket?.destroy();
    return { status: t.status, body: t.body };
  }

  /** `proc` stopped (SIGSTOP) while `during` runs: it takes connections and answers nothing. */
  async function whileStopped<T>(proc: ManagedProcess, during: () => Promise<T>): Promise<T> {
    const pid = proc.child.pid as number;
    process.kill(pid, 'SIGSTOP');
    try {
      return await during();
    } finally {
      process.kill(pid, 'SIGCONT');
    }
  }

  it("the owner's gateway stopped: 504 from the ingress past the bound, counted; served again once it runs", async () => {
    const ingress = cluster.replica(0).sidecarPorts?.admin as number;
    const labels = { class: 'ssh-tunnel', target: 'peer', outcome: 'OHS_ERR_TIMEOUT' };
    const before = (await metric(ingress, 'ohs_requests_total', labels)).sum;
    const r = await whileStopped(cluster.replica(1).gateway, () => tunnelVia(0));
    expect(r.status).toBe(504);
    expect(r.body).toContain(`gateway sent no response within ${RESPONSE_TIMEOUT_MS} ms`);
    expect((await metric(ingress, 'ohs_requests_total', labels)).sum).toBe(before + 1);
    await waitUntil('a tunnel through r0 answered again', () => tunnelVia(0), (a) => a.status === 200, { timeoutMs: 10_000 });
  }, 30_000);

  it("the owner's sidecar stopped: 504 naming the owner past the bound, counted; served again once it runs", async () => {
    const ingress = cluster.replica(0).sidecarPorts?.admin as number;
    const labels = { class: 'ssh-tunnel', peer: 'r1', outcome: 'timeout' };
    const before = (await metric(ingress, 'ohs_forwards_total', labels)).sum;
    const r = await whileStopped(cluster.replica(1).sidecar as ManagedProcess, () => tunnelVia(0));
    expect(r.status).toBe(504);
    expect(r.body).toContain(`owner replica r1 sent no response within ${RESPONSE_TIMEOUT_MS} ms`);
    expect((await metric(ingress, 'ohs_forwards_total', labels)).sum).toBe(before + 1);
    await waitUntil('a tunnel through r0 answered again', () => tunnelVia(0), (a) => a.status === 200, { timeoutMs: 15_000 });
  }, 40_000);
});
