// Protective bounds of the sidecar, each shown by what a client sees (README "Protective bounds"):
// - --max-held-requests: past the cap, a request for a sandbox with no reachable owner is not held;
//   the local gateway answers it at once, while the capped ones stay held and are served once the
//   supervisor is back (1-replica seed cluster, real gateway emulator and supervisor). The same cap
//   bounds requests held for a live sandbox to be Ready again (its gateway said "not ready"): past
//   it the gateway's refusal is the answer (a cluster-mode sidecar, in-test h2c gateway).
// - --max-connections: public connections past the cap are closed at accept; the open ones keep
//   working and new ones are accepted again once some closed (embedded sidecar).
// - the upstream gateway pool opens another HTTP/2 connection when the gateway's
//   SETTINGS_MAX_CONCURRENT_STREAMS is reached: more long-lived streams than that limit are all
//   served at once (an in-test h2c gateway advertising 2 streams; the emulator has no such option).
// Every cut is counted in ohs_protections_total{reason}. afterAll closes every process, socket and
// database opened here.
import http2 from 'node:http2';
import type { AddressInfo } from 'node:net';
import { once } from 'node:events';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cluster } from '../../emulator/cluster.ts';
import { GatewayStore } from '../../emulator/gateway/store.ts';
import { Phase } from '../../emulator/proto.ts';
import { startProcess, sidecarCommand, type ManagedProcess } from '../../emulator/process.ts';
import { startSandboxSshServer, type SandboxSshServer } from '../../emulator/supervisor/ssh-server.ts';
import { SupervisorEmulator } from '../../emulator/supervisor/supervisor.ts';
import { exec, gatewayClient, type OpenShellClient } from '../helpers/grpc-client.ts';
import { createTestDatabase, TEST_REDIS_URL, testRedisPrefix, type TestDatabase } from '../helpers/services.ts';
import { waitUntil } from '../helpers/wait.ts';
import { FORWARD_TCP, connectH2, forwardInitFrame, frameData } from '../../bench/lib/raw-clients.ts';
import { holdSupervisor, startBenchSidecar, waitForOwner, type BenchSidecar, type HeldSupervisor } from '../../bench/lib/sidecars.ts';
import { echoAfterInit, grpcCall, startScriptedGateway, type ScriptedGateway } from './scripted-gateway.ts';
import { metric, sleep, withTimeout } from './support.ts';

const MAX_HELD = 3;
const MAX_CONNECTIONS = 20;
const GATEWAY_STREAM_LIMIT = 2;

/** Opens an h2c connection and waits for the server's SETTINGS; rejects if the server closes it first. */
function h2(port: number): Promise<http2.ClientHttp2Session> {
  const s = http2.connect(`http://127.0.0.1:${port}`);
  s.on('error', () => undefined);
  return new Promise((resolve, reject) => {
    s.once('remoteSettings', () => resolve(s));
    s.once('close', () => reject(new Error('closed before SETTINGS')));
  });
}

/**
 * A plain (non-gRPC) h2 request through the sidecar: passed through to the gateway over the pool.
 * The status is the gateway's, or "200 grpc-<n>" when the sidecar answered with a gRPC error itself.
 * A POST stays open until the caller ends it (a GET is ended at once).
 */
function request(s: http2.ClientHttp2Session, path: string, method = 'GET'): Promise<{ status: string; req: http2.ClientHttp2Stream }> {
  return new Promise((resolve, reject) => {
    const req = s.request({ ':method': method, ':path': path });
    req.on('response', (h) => resolve({ status: `${h[':status']}${h['grpc-status'] !== undefined && h['content-type'] === 'application/grpc' ? ` grpc-${h['grpc-status']}` : ''}`, req }));
    req.on('error', reject);
    req.on('close', () => reject(new Error(`${path}: closed without a response`)));
  });
}

describe('--max-held-requests (1-replica cluster, seed gateway emulator)', () => {
  let db: TestDatabase;
  let store: GatewayStore;
  let cluster: Cluster;
  let ssh: SandboxSshServer;
  let supervisor: SupervisorEmulator;
  let client: OpenShellClient;
  let sandbox: string;
  let admin: number;

  const supervise = (): SupervisorEmulator => {
    const s = new SupervisorEmulator({ endpoint: `127.0.0.1:${cluster.replica(0).publicPort}`, sandboxId: sandbox, sshPort: ssh.port, backoff: { initialMs: 500, maxMs: 500 } });
    s.start();
    return s;
  };

  beforeAll(async () => {
    db = await createTestDatabase('adversarial_caps');
    store = new GatewayStore(db.url);
    await store.migrate();
    cluster = await Cluster.start({
      replicas: 1,
      databaseUrl: db.url,
      sidecars: { redisUrl: TEST_REDIS_URL, redisKeyPrefix: testRedisPrefix('adversarial-caps'), extraArgs: ['--max-held-requests', String(MAX_HELD), '--owner-wait-ms', '30000'] },
    });
    admin = cluster.replica(0).sidecarPorts?.admin as number;
    sandbox = (await store.createSandbox()).id;
    ssh = await startSandboxSshServer({ sandboxId: sandbox });
    supervisor = supervise();
    await supervisor.waitConnected(15_000);
    client = gatewayClient(`127.0.0.1:${cluster.replica(0).publicPort}`);
  }, 60_000);

  afterAll(async () => {
    client?.close();
    await supervisor?.stop();
    await ssh?.close();
    await cluster?.close();
    await store?.close();
    await db?.drop();
  });

  it('past the cap a request waiting for an owner is not held: the gateway answers it at once', async () => {
    // The sidecar routes the sandbox once (it now remembers an owner: evidence one is coming back).
    expect((await exec(client, sandbox, ['sandbox-id'])).stdout.trim()).toBe(sandbox);
    await supervisor.stop();
    await waitUntil('owner row released and sandbox not Ready', async () => {
      const owner = await store.pool.query('SELECT 1 FROM ohs_owners WHERE sandbox_id = $1', [sandbox]);
      return owner.rowCount === 0 && (await store.getSandbox(sandbox))?.phase !== Phase.READY;
    }, (v) => v, { timeoutMs: 15_000 });
    const refusedBefore = (await metric(admin, 'ohs_protections_total', { reason: 'held_requests' })).sum;

    const N = 8;
    const settled: Array<{ ok: boolean; code?: number; stdout?: string } | undefined> = Array(N).fill(undefined);
    const calls = Array.from({ length: N }, (_, i) =>
      exec(client, sandbox, ['sandbox-id']).then(
        (r) => void (settled[i] = { ok: true, stdout: r.stdout.trim() }),
        (err: grpc.ServiceError) => void (settled[i] = { ok: false, code: err.code }),
      ),
    );
    // Exactly the cap is held; the others get the gateway's own answer (not Ready) without waiting.
    await expect.poll(() => settled.filter((s) => s !== undefined).length, { timeout: 10_000, interval: 100 }).toBe(N - MAX_HELD);
    expect(settled.filter((s) => s !== undefined)).toEqual(Array(N - MAX_HELD).fill({ ok: false, code: grpc.status.FAILED_PRECONDITION }));
    expect((await metric(admin, 'ohs_held_requests')).sum).toBe(MAX_HELD);
    expect((await metric(admin, 'ohs_protections_total', { reason: 'held_requests' })).sum - refusedBefore).toBe(N - MAX_HELD);
    expect(cluster.replica(0).sidecar?.output.some((l) => l.includes('too many requests held for an owner'))).toBe(true);
    // Still held a moment later (nothing else leaks out), then served once the supervisor is back.
    await sleep(1000);
    expect(settled.filter((s) => s === undefined)).toHaveLength(MAX_HELD);
    supervisor = supervise();
    await Promise.all(calls);
    expect(settled.filter((s) => s?.ok)).toEqual(Array(MAX_HELD).fill({ ok: true, stdout: sandbox }));
    await expect.poll(async () => (await metric(admin, 'ohs_held_requests')).sum, { timeout: 10_000 }).toBe(0);
  }, 60_000);
});

describe('--max-held-requests also bounds requests held for a sandbox to be Ready again (cluster-mode sidecar, in-test h2c gateway)', () => {
  const SANDBOX = 'not-ready-cap-sandbox';
  let db: TestDatabase;
  let store: GatewayStore;
  let gateway: ScriptedGateway;
  let sidecar: BenchSidecar;
  let supervisor: HeldSupervisor;
  let client: http2.ClientHttp2Session;
  let token: string;
  /** While set, the gateway refuses ForwardTcp as it does for a sandbox whose phase is not Ready. */
  let notReady = false;
  let forwardsSeen = 0;

  beforeAll(async () => {
    db = await createTestDatabase('adversarial_caps_not_ready');
    store = new GatewayStore(db.url);
    await store.migrate();
    await store.createSandbox({ id: SANDBOX, name: SANDBOX, phase: Phase.READY });
    token = (await store.createSshSession(SANDBOX, 3600)).token;
    gateway = await startScriptedGateway((stream, path) => {
      if (path !== FORWARD_TCP) return false;
      forwardsSeen++;
      if (notReady) stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '9', 'grpc-message': 'sandbox%20is%20not%20ready' }, { endStream: true });
      else echoAfterInit(stream);
      return true;
    });
    sidecar = await startBenchSidecar('owner', {
      gatewayPort: gateway.port,
      databaseUrl: db.url,
      redisUrl: TEST_REDIS_URL,
      redisKeyPrefix: testRedisPrefix('adversarial-caps-not-ready'),
      peerSecret: 'not-ready-cap-secret-0123456789',
      extraArgs: ['--max-held-requests', String(MAX_HELD), '--ssh-tunnels-per-token', '100', '--ssh-tunnels-per-sandbox', '100'],
    });
    supervisor = await holdSupervisor(sidecar.publicPort, SANDBOX);
    await waitForOwner(db.url, SANDBOX, 'owner');
    client = await connectH2(sidecar.publicPort);
  }, 60_000);

  afterAll(async () => {
    client?.destroy();
    supervisor?.close();
    await sidecar?.stop();
    await gateway?.close();
    await store?.close();
    await db?.drop();
  });

  it('past the cap the gateway’s "not ready" is the answer at once; the held ones are served once the sandbox is Ready', async () => {
    const ping = frameData(Buffer.from('ping once Ready'));
    const body = Buffer.concat([forwardInitFrame(SANDBOX, token), ping]);
    // Served while Ready: the session is live and owned here.
    expect(await grpcCall(client, FORWARD_TCP, body, false, (got) => got.length >= ping.length)).toEqual({ status: '0', body: ping });

    notReady = true;
    await store.writePhase(SANDBOX, Phase.PROVISIONING, 'test', 'demoted by the test');
    const refusedBefore = (await metric(sidecar.adminPort, 'ohs_protections_total', { reason: 'held_requests' })).sum;
    const N = 6;
    const settled: Array<{ status: string | undefined; body: Buffer } | undefined> = Array(N).fill(undefined);
    const calls = Array.from({ length: N }, (_, i) =>
      grpcCall(client, FORWARD_TCP, body, false, (got) => got.length >= ping.length, 30_000).then((r) => void (settled[i] = r)),
    );
    // Exactly the cap waits; the others get the gateway's refusal without waiting for Ready.
    await expect.poll(() => settled.filter((s) => s !== undefined).length, { timeout: 8_000, interval: 50 }).toBe(N - MAX_HELD);
    expect(settled.filter((s) => s !== undefined)).toEqual(Array(N - MAX_HELD).fill({ status: '9', body: Buffer.alloc(0) }));
    expect((await metric(sidecar.adminPort, 'ohs_held_requests')).sum).toBe(MAX_HELD);
    expect((await metric(sidecar.adminPort, 'ohs_protections_total', { reason: 'held_requests' })).sum - refusedBefore).toBe(N - MAX_HELD);
    await expect.poll(() => sidecar.proc.output.some((l) => l.includes('too many requests held for the sandbox to be Ready')), { timeout: 5_000 }).toBe(true);
    // Still waiting a moment later, then sent once more and served once the sandbox is Ready again.
    await sleep(500);
    expect(settled.filter((s) => s === undefined)).toHaveLength(MAX_HELD);
    const seenBeforeReady = forwardsSeen;
    notReady = false;
    await store.writePhase(SANDBOX, Phase.READY, 'test', 'Ready again');
    await Promise.all(calls);
    expect(settled.filter((s) => s?.status === '0')).toEqual(Array(MAX_HELD).fill({ status: '0', body: ping }));
    expect(forwardsSeen - seenBeforeReady).toBe(MAX_HELD);
    await expect.poll(async () => (await metric(sidecar.adminPort, 'ohs_held_requests')).sum, { timeout: 5_000 }).toBe(0);
  }, 60_000);
});

describe('--max-connections and the upstream pool (embedded sidecar, in-test h2c gateway)', () => {
  let gateway: http2.Http2Server;
  let gatewayPort: number;
  const gatewaySessions = new Set<http2.ServerHttp2Session>();
  /** Concurrent open /hold streams per gateway connection, and the most seen on any one. */
  const openOn = new Map<http2.ServerHttp2Session, number>();
  let maxOpenOnOne = 0;
  let holdConnections = new Set<http2.ServerHttp2Session>();
  /** `/refuse-once/*` paths seen: the first stream of each is refused unprocessed (REFUSED_STREAM). */
  const refusedOnce = new Set<string>();
  let proc: ManagedProcess;
  let port: number;
  let admin: number;
  const clients: http2.ClientHttp2Session[] = [];

  beforeAll(async () => {
    // Like hyper with max_concurrent_streams(2): `/hold/*` answers 200 and stays open until the
    // client ends it; everything else (the sidecar's PeerRelay probe, plain GETs) is answered at once.
    gateway = http2.createServer({ settings: { maxConcurrentStreams: GATEWAY_STREAM_LIMIT } });
    gateway.on('session', (s) => {
      gatewaySessions.add(s);
      s.once('close', () => gatewaySessions.delete(s));
    });
    gateway.on('stream', (stream, headers) => {
      stream.on('error', () => undefined);
      const path = String(headers[':path']);
      if (path.startsWith('/refuse-once/')) {
        if (!refusedOnce.has(path)) {
          refusedOnce.add(path);
          stream.close(http2.constants.NGHTTP2_REFUSED_STREAM);
          return;
        }
        // The retry: answer with the request body it carried.
        const body: Buffer[] = [];
        stream.on('data', (d: Buffer) => body.push(d));
        stream.on('end', () => {
          stream.respond({ ':status': 200 });
          stream.end(Buffer.concat(body));
        });
        return;
      }
      if (!path.startsWith('/hold/')) {
        stream.respond({ ':status': path.startsWith('/openshell.') ? 200 : 204, 'grpc-status': '12' }, { endStream: true });
        return;
      }
      const s = stream.session as http2.ServerHttp2Session;
      holdConnections.add(s);
      openOn.set(s, (openOn.get(s) ?? 0) + 1);
      maxOpenOnOne = Math.max(maxOpenOnOne, openOn.get(s) ?? 0);
      stream.once('close', () => openOn.set(s, (openOn.get(s) ?? 1) - 1));
      stream.respond({ ':status': 200 });
      stream.on('data', (d: Buffer) => stream.write(d));
      stream.on('end', () => stream.end());
    });
    gateway.on('sessionError', () => undefined);
    gateway.listen(0, '127.0.0.1');
    await once(gateway, 'listening');
    gatewayPort = (gateway.address() as AddressInfo).port;
    proc = await startProcess('sidecar-caps', [
      ...sidecarCommand(),
      '--listen', '127.0.0.1:0', '--peer-listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0',
      '--gateway', `http://127.0.0.1:${gatewayPort}`, '--replica-id', 'caps', '--log-level', 'warn',
      '--max-connections', String(MAX_CONNECTIONS),
    ]);
    port = proc.ready.listenPort as number;
    admin = proc.ready.adminPort as number;
  });

  afterAll(async () => {
    for (const c of clients) c.destroy();
    await proc?.kill('SIGKILL');
    for (const s of gatewaySessions) s.destroy();
    await new Promise<void>((r) => (gateway ? gateway.close(() => r()) : r()));
  });

  it('connections past --max-connections are closed at accept; open ones keep working; room frees up again', async () => {
    for (let i = 0; i < MAX_CONNECTIONS; i++) clients.push(await h2(port));
    const dropsBefore = (await metric(admin, 'ohs_protections_total', { reason: 'max_connections' })).sum;
    // Five more: each is closed by the sidecar without a byte (no SETTINGS).
    const extra = await Promise.allSettled(Array.from({ length: 5 }, () => h2(port)));
    expect(extra.map((r) => r.status)).toEqual(Array(5).fill('rejected'));
    await expect.poll(async () => (await metric(admin, 'ohs_protections_total', { reason: 'max_connections' })).sum - dropsBefore, { timeout: 5000 }).toBe(5);
    // The log line leaves through the logger's buffer, after the count: a bounded wait for it (on the
    // Node 24 pass it had not reached the output yet when read at once).
    await expect.poll(() => proc.output.some((l) => l.includes('connection refused: max connections reached')), { timeout: 5000 }).toBe(true);
    // Every connection already open still carries requests to the gateway (one at a time: a burst
    // would open a fresh gateway connection, which is the third test's subject).
    for (const c of clients) expect((await request(c, '/ping')).status).toBe('204');
    // Close five; new connections are accepted again (bounded wait for the server to see the closes).
    for (const c of clients.splice(0, 5)) c.destroy();
    const fresh = await waitUntil('a new connection accepted', () => h2(port).then((s) => s, () => undefined), (s) => s !== undefined, { timeoutMs: 5000 });
    clients.push(fresh as http2.ClientHttp2Session);
    expect((await request(fresh as http2.ClientHttp2Session, '/ping')).status).toBe('204');
    for (let i = 0; i < 4; i++) clients.push(await h2(port));
    expect(clients).toHaveLength(MAX_CONNECTIONS);
    for (const c of clients.splice(0)) c.destroy();
  }, 30_000);

  it('a stream the gateway refused unprocessed (REFUSED_STREAM) is sent again, body and all, and answered', async () => {
    const c = (await waitUntil('a connection accepted', () => h2(port).then((s) => s, () => undefined), (s) => s !== undefined, { timeoutMs: 5000 })) as http2.ClientHttp2Session;
    clients.push(c);
    const answer = await withTimeout(
      new Promise<{ status: string; body: string }>((resolve, reject) => {
        const req = c.request({ ':method': 'POST', ':path': '/refuse-once/a' });
        let status = '';
        let body = '';
        req.setEncoding('utf8');
        req.on('response', (h) => (status = String(h[':status'])));
        req.on('data', (d: string) => (body += d));
        req.on('end', () => resolve({ status, body }));
        req.on('error', reject);
        req.end('the request body');
      }),
      10_000,
    );
    expect(refusedOnce.has('/refuse-once/a')).toBe(true);
    expect(answer).toEqual({ status: '200', body: 'the request body' });
  }, 30_000);

  it('more long-lived streams than the gateway allows per connection: all served, spread over several connections', async () => {
    holdConnections = new Set();
    maxOpenOnOne = 0;
    // The previous test's connections may still be closing on the sidecar's side.
    const c = (await waitUntil('a connection accepted', () => h2(port).then((s) => s, () => undefined), (s) => s !== undefined, { timeoutMs: 5000 })) as http2.ClientHttp2Session;
    clients.push(c);
    // Seven long-lived streams on one client connection, all at once: the pool waits for each new
    // gateway connection's SETTINGS and promises its room to one caller at a time, so none is
    // refused (before that, 3 of 7 came back REFUSED_STREAM as gRPC 14).
    const N = 7;
    const streams = await withTimeout(Promise.all(Array.from({ length: N }, (_, i) => request(c, `/hold/${i}`, 'POST'))), 10_000);
    expect(streams.map((s) => s.status)).toEqual(Array(N).fill('200'));
    // All open at once on the gateway, never more than its limit on one connection.
    expect([...openOn.values()].reduce((a, b) => a + b, 0)).toBe(N);
    expect(maxOpenOnOne).toBe(GATEWAY_STREAM_LIMIT);
    expect(holdConnections.size).toBe(Math.ceil(N / GATEWAY_STREAM_LIMIT));
    // Every stream carries data both ways (echoed by the gateway), then ends cleanly.
    const echoed = await Promise.all(
      streams.map(({ req }, i) => withTimeout(new Promise<string>((resolve) => {
        req.setEncoding('utf8');
        req.once('data', (d: string) => resolve(d));
        req.write(`stream ${i}`);
      }), 10_000)),
    );
    expect(echoed).toEqual(streams.map((_, i) => `stream ${i}`));
    for (const s of streams) s.req.end();
    await expect.poll(() => [...openOn.values()].reduce((a, b) => a + b, 0), { timeout: 5000 }).toBe(0);
    expect(proc.alive()).toBe(true);
  }, 30_000);
});
