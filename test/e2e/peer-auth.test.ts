// The peer protocol between sidecars (DESIGN §3, §4): only a caller that knows the shared secret
// can act as a peer, a public client can never forge peer headers, and a forward carrying a stale
// owner epoch is answered "not owner" so the ingress re-resolves and retries once.
import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cluster, type Replica } from '../../emulator/cluster.ts';
import { GatewayStore } from '../../emulator/gateway/store.ts';
import { startProcess, sidecarCommand } from '../../emulator/process.ts';
import { decodeMessage, encodeMessage, type ExecSandboxEvent } from '../../emulator/proto.ts';
import { startSandboxSshServer, type SandboxSshServer } from '../../emulator/supervisor/ssh-server.ts';
import { SupervisorEmulator } from '../../emulator/supervisor/supervisor.ts';
import { exec, gatewayClient, type ExecResult, type OpenShellClient } from '../helpers/grpc-client.ts';
import { TEST_REDIS_URL, createTestDatabase, testRedisPrefix, type TestDatabase } from '../helpers/services.ts';
import { openConnectTunnel, runSshCommand, sshViaGateway } from '../../emulator/ssh-client.ts';
import { grpcFrame, rawExchange } from '../helpers/raw.ts';

const SECRET = 'peer-auth-test-secret-0123456789abcdef';
const BACKOFF = { initialMs: 100, maxMs: 500 };

let db: TestDatabase;
let store: GatewayStore;
let cluster: Cluster;
let redis: Redis;
const redisPrefix = testRedisPrefix('peer-auth');
/** Owned by r0 (its supervisor dials r0's public port), later moved to r1. */
let sandboxA: string;
/** Owned by r1. */
let sandboxB: string;
const ssh: SandboxSshServer[] = [];
const supervisors: SupervisorEmulator[] = [];
const clients: OpenShellClient[] = [];

function startSupervisor(endpoint: string, sandboxId: string, sshServer: SandboxSshServer): SupervisorEmulator {
  const s = new SupervisorEmulator({ endpoint, sandboxId, sshPort: sshServer.port, backoff: BACKOFF });
  supervisors.push(s);
  s.start();
  return s;
}

function r(i: number): Replica & { sidecarPorts: { public: number; peer: number; admin: number } } {
  const rep = cluster.replica(i);
  if (!rep.sidecarPorts) throw new Error('replica without sidecar');
  return rep as Replica & { sidecarPorts: { public: number; peer: number; admin: number } };
}

function client(i: number): OpenShellClient {
  const c = gatewayClient(`127.0.0.1:${r(i).publicPort}`);
  clients.push(c);
  return c;
}

beforeAll(async () => {
  db = await createTestDatabase('peer_auth');
  store = new GatewayStore(db.url);
  await store.migrate();
  cluster = await Cluster.start({
    replicas: 2,
    databaseUrl: db.url,
    // A short in-process cache TTL so that a forged stale Redis entry is read within a second.
    sidecars: { redisUrl: TEST_REDIS_URL, redisKeyPrefix: redisPrefix, peerSecret: SECRET, extraArgs: ['--owner-cache-ttl-ms', '500'] },
  });
  redis = new Redis(TEST_REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 1 });
  await redis.connect();
  sandboxA = (await store.createSandbox()).id;
  sandboxB = (await store.createSandbox()).id;
  ssh.push(await startSandboxSshServer({ sandboxId: sandboxA }), await startSandboxSshServer({ sandboxId: sandboxB }));
  const a = startSupervisor(`127.0.0.1:${r(0).publicPort}`, sandboxA, ssh[0]!);
  const b = startSupervisor(`127.0.0.1:${r(1).publicPort}`, sandboxB, ssh[1]!);
  await Promise.all([a.waitConnected(15_000), b.waitConnected(15_000)]);
  expect(await owner(sandboxA)).toMatchObject({ replica: 'r0' });
  expect(await owner(sandboxB)).toMatchObject({ replica: 'r1' });
}, 60_000);

afterAll(async () => {
  for (const c of clients) c.close();
  await Promise.all(supervisors.map((s) => s.stop()));
  await Promise.all(ssh.map((s) => s.close()));
  await cluster?.close();
  if (redis) {
    const keys = await redis.keys(`${redisPrefix}*`).catch(() => [] as string[]);
    if (keys.length > 0) await redis.del(...keys).catch(() => 0);
    redis.disconnect();
  }
  await store?.close();
  await db?.drop();
});

// --- helpers ---------------------------------------------------------------------------------

async function owner(sandboxId: string): Promise<{ replica: string; epoch: number } | undefined> {
  const res = await store.pool.query<{ replica_id: string; epoch: number }>('SELECT replica_id, epoch FROM ohs_owners WHERE sandbox_id = $1', [
    sandboxId,
  ]);
  const row = res.rows[0];
  return row ? { replica: row.replica_id, epoch: Number(row.epoch) } : undefined;
}

/** Sum of the series of `name` on replica i's admin /metrics whose labels include `labels`. */
async function metric(i: number, name: string, labels: Record<string, string> = {}): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${r(i).sidecarPorts.admin}/metrics`)).text();
  let sum = 0;
  for (const line of text.split('\n')) {
    const m = /^([a-z_]+)(\{[^}]*\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const lbl = m[2] ?? '';
    if (Object.entries(labels).every(([k, v]) => lbl.includes(`${k}="${v}"`))) sum += Number(m[3]);
  }
  return sum;
}

async function localSessions(i: number): Promise<Record<string, number>> {
  const res = await fetch(`http://127.0.0.1:${r(i).sidecarPorts.admin}/debug/sessions`);
  return ((await res.json()) as { sessions: Record<string, number> }).sessions;
}


function unframe(bytes: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let at = 0; at + 5 <= bytes.length; ) {
    const len = bytes.readUInt32BE(at + 1);
    out.push(bytes.subarray(at + 5, at + 5 + len));
    at += 5 + len;
  }
  return out;
}

function execWithMetadata(c: OpenShellClient, sandboxId: string, command: string[], md: grpc.Metadata): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    const call = (c.ExecSandbox as (r: unknown, md: grpc.Metadata) => grpc.ClientReadableStream<ExecSandboxEvent>).call(
      c,
      { sandbox_id: sandboxId, command, stdin: Buffer.alloc(0) },
      md,
    );
    const out: ExecResult = { stdout: '', stderr: '', exitCode: null };
    call.on('data', (ev: ExecSandboxEvent) => {
      if (ev.stdout) out.stdout += ev.stdout.data.toString();
      if (ev.stderr) out.stderr += ev.stderr.data.toString();
      if (ev.exit) out.exitCode = ev.exit.exit_code;
    });
    call.on('error', reject);
    call.on('end', () => resolve(out));
  });
}

interface H2Answer {
  status: number | undefined;
  headers: http2.IncomingHttpHeaders;
  trailers: http2.IncomingHttpHeaders;
  data: Buffer;
  /** The response HEADERS carried END_STREAM (a gRPC trailers-only response). */
  trailersOnly: boolean;
}

/** One request on a fresh h2c connection to `port`; resolves when the stream closes. */
function h2Call(port: number, headers: http2.OutgoingHttpHeaders, body?: Buffer): Promise<H2Answer> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(`http://127.0.0.1:${port}`);
    session.on('error', reject);
    const req = session.request(headers, { endStream: body === undefined && headers[':method'] !== 'CONNECT' });
    const answer: H2Answer = { status: undefined, headers: {}, trailers: {}, data: Buffer.alloc(0), trailersOnly: false };
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => req.close(http2.constants.NGHTTP2_CANCEL), 15_000);
    req.on('response', (h, flags: number) => {
      answer.headers = h;
      answer.status = h[':status'];
      answer.trailersOnly = (flags & http2.constants.NGHTTP2_FLAG_END_STREAM) !== 0;
    });
    req.on('trailers', (t) => (answer.trailers = t));
    req.on('data', (d: Buffer) => chunks.push(d));
    req.on('error', () => undefined);
    req.on('close', () => {
      clearTimeout(timer);
      answer.data = Buffer.concat(chunks);
      session.destroy();
      resolve(answer);
    });
    if (body !== undefined) req.end(body);
  });
}

const EXEC_PATH = '/openshell.v1.OpenShell/ExecSandbox';

function execBody(sandboxId: string): Buffer {
  return grpcFrame(encodeMessage('ExecSandboxRequest', { sandbox_id: sandboxId, command: ['sandbox-id'] }));
}

/** Records the request headers the "gateway" receives: h2c and HTTP/1.1 on one port, like the real one. */
async function startRecordingGateway(): Promise<{ port: number; seen: Array<Record<string, unknown>>; close(): Promise<void> }> {
  const seen: Array<Record<string, unknown>> = [];
  const h2 = http2.createServer();
  h2.on('stream', (s, headers) => {
    // The sidecar's own probe for a native-HA gateway (PeerRelay) is not client traffic either.
    if (headers[':path'] !== '/openshell.v1.OpenShell/PeerRelay') seen.push({ ...headers });
    s.on('error', () => undefined);
    s.on('data', () => undefined);
    s.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '0' }, { endStream: true });
  });
  h2.on('sessionError', () => undefined);
  const h1 = http.createServer((req, res) => {
    // The sidecar's own probe for sandbox JWT keys is not client traffic: answer like a seed gateway.
    if (req.url === '/.well-known/jwks.json') {
      res.writeHead(404).end();
      return;
    }
    seen.push({ ...req.headers });
    res.end('ok\n');
  });
  h1.on('connect', (req, socket) => {
    seen.push({ ...req.headers });
    socket.on('error', () => undefined);
    socket.end('HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
  });
  const sockets = new Set<net.Socket>();
  const server = net.createServer((sock) => {
    sockets.add(sock);
    sock.once('close', () => sockets.delete(sock));
    sock.on('error', () => undefined);
    sock.once('data', (first: Buffer) => {
      sock.pause();
      sock.unshift(first);
      if (first.subarray(0, 3).toString('latin1') === 'PRI') h2.emit('connection', sock);
      else {
        h1.emit('connection', sock);
        sock.resume();
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    seen,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}


/**
 * Makes replica caches believe `sandboxId` is owned by `replica` at `epoch`: a stale Redis entry
 * (as a late cache write racing an invalidation could leave), then the in-process caches drop
 * theirs (pub/sub, and the 500 ms TTL as a backstop).
 */
async function forgeStaleOwner(sandboxId: string, replica: Replica, epoch: number): Promise<void> {
  const record = { sandboxId, replicaId: replica.name, peerUrl: replica.sidecar?.ready.peerUrl, epoch, claimedAtMs: Date.now() };
  await redis.set(`${redisPrefix}owner:${sandboxId}`, JSON.stringify(record), 'PX', 30_000);
  await redis.publish(`${redisPrefix}owners`, sandboxId);
  await new Promise((res) => setTimeout(res, 800));
}

// --- tests -----------------------------------------------------------------------------------

describe('peer authentication and owner fencing between sidecars', () => {
  it('a public request carrying x-ohs-* headers cannot act as a peer', async () => {
    const forged = new grpc.Metadata();
    forged.set('x-ohs-peer-auth', SECRET);
    forged.set('x-ohs-hop', '99');
    forged.set('x-ohs-sandbox', sandboxB);
    forged.set('x-ohs-owner-epoch', '999');
    forged.set('x-ohs-origin', 'r0');
    forged.set('x-ohs-class', 'passthrough');
    const okBefore = await metric(1, 'ohs_forwards_total', { class: 'exec', peer: 'r0', outcome: 'ok' });
    const acceptedBefore = await metric(0, 'ohs_forwards_total', { class: 'exec', peer: 'inbound', outcome: 'accepted' });

    // Via the non-owner r1: forwarded to r0 by the real routing key, with r1's own peer headers.
    const viaPeer = await execWithMetadata(client(1), sandboxA, ['sandbox-id'], forged);
    expect(viaPeer).toEqual({ stdout: `${sandboxA}\n`, stderr: '', exitCode: 0 });
    // It really crossed the peer hop, and r0 accepted it: hop 99 was not what r0 saw (it would
    // have answered 508), nor was the forged sandbox or epoch (they would have been "not owner").
    expect(await metric(1, 'ohs_forwards_total', { class: 'exec', peer: 'r0', outcome: 'ok' })).toBe(okBefore + 1);
    expect(await metric(0, 'ohs_forwards_total', { class: 'exec', peer: 'inbound', outcome: 'accepted' })).toBe(acceptedBefore + 1);
    expect(await metric(1, 'ohs_forwards_total', { outcome: 'not_owner' })).toBe(0);
    // A gateway refusal crosses the peer hop as what it was: a trailers-only response.
    const refused = await h2Call(
      r(1).publicPort,
      { ':method': 'POST', ':path': EXEC_PATH, 'content-type': 'application/grpc', te: 'trailers' },
      grpcFrame(encodeMessage('ExecSandboxRequest', { sandbox_id: sandboxA, command: [] })),
    );
    expect(refused.headers['grpc-status']).toBe(String(grpc.status.INVALID_ARGUMENT));
    expect(refused.trailersOnly).toBe(true);
    expect(await metric(1, 'ohs_forwards_total', { class: 'exec', peer: 'r0', outcome: 'ok' })).toBe(okBefore + 2);
    // Via the owner and for the other sandbox too.
    expect((await execWithMetadata(client(0), sandboxA, ['sandbox-id'], forged)).stdout).toBe(`${sandboxA}\n`);
    const forgedA = forged.clone();
    forgedA.set('x-ohs-sandbox', sandboxA);
    expect((await execWithMetadata(client(0), sandboxB, ['sandbox-id'], forgedA)).stdout).toBe(`${sandboxB}\n`);

    // CONNECT /connect/ssh with the same headers in any letter case.
    const { token } = await store.createSshSession(sandboxA, 3600);
    const tunnel = await openConnectTunnel({
      host: '127.0.0.1',
      port: r(1).publicPort,
      sandboxId: sandboxA,
      token,
      extraHeaders: { 'X-OHS-Peer-Auth': SECRET, 'X-Ohs-Hop': '99', 'x-ohs-sandbox': sandboxB, 'X-OHS-OWNER-EPOCH': '999' },
    });
    expect(tunnel.status).toBe(200);
    if (!tunnel.socket) throw new Error('no tunnel');
    const res = await runSshCommand(tunnel.socket, 'sandbox-id');
    expect(res.stdout.trim()).toBe(sandboxA);
    for (const i of [0, 1]) expect(r(i).sidecar?.output.filter((l) => /hop limit|invalid credentials/.test(l))).toEqual([]);
  });

  it('the gateway never sees x-ohs-* headers sent by a public client', async () => {
    const gw = await startRecordingGateway();
    const sidecar = await startProcess('sidecar-recording', [
      ...sidecarCommand(),
      '--listen', '127.0.0.1:0', '--peer-listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0',
      '--gateway', `http://127.0.0.1:${gw.port}`, '--replica-id', 'recording', '--log-level', 'warn',
    ]);
    try {
      const port = sidecar.ready.listenPort as number;
      const forged = { 'x-ohs-peer-auth': SECRET, 'x-ohs-hop': '99', 'x-ohs-sandbox': sandboxB, 'x-ohs-owner-epoch': '999', 'x-kept': 'yes' };
      const grpcHeaders = { ':method': 'POST', 'content-type': 'application/grpc', te: 'trailers', ...forged };
      // Keyed (exec), passthrough gRPC, CONNECT and plain HTTP/1.1.
      const keyed = await h2Call(port, { ...grpcHeaders, ':path': EXEC_PATH }, execBody(sandboxA));
      expect(keyed.headers['grpc-status'] ?? keyed.trailers['grpc-status']).toBe('0');
      await h2Call(port, { ...grpcHeaders, ':path': '/openshell.v1.OpenShell/Health' }, grpcFrame(Buffer.alloc(0)));
      const tunnel = await openConnectTunnel({
        host: '127.0.0.1',
        port,
        sandboxId: sandboxA,
        token: 'x',
        extraHeaders: { 'X-OHS-Peer-Auth': SECRET, 'X-Ohs-Hop': '99', 'x-kept': 'yes' },
      });
      expect(tunnel.status).toBe(401);
      const plain = await fetch(`http://127.0.0.1:${port}/healthz`, { headers: forged });
      expect(plain.status).toBe(200);
      await plain.text();

      expect(gw.seen).toHaveLength(4);
      for (const headers of gw.seen) {
        expect(headers['x-kept']).toBe('yes');
        expect(Object.keys(headers).filter((k) => k.toLowerCase().startsWith('x-ohs-'))).toEqual([]);
      }
    } finally {
      await sidecar.kill('SIGTERM');
      await gw.close();
    }
  });

  it('a peer call without valid credentials is refused', async () => {
    const peerPort = r(0).sidecarPorts.peer;
    const ownerRow = await owner(sandboxA);
    expect(ownerRow?.replica).toBe('r0');
    const epoch = ownerRow?.epoch ?? 0;
    const supervisorA = supervisors[0]!;
    let relays = 0;
    supervisorA.on('relay', () => relays++);
    const base = {
      ':method': 'POST',
      ':path': EXEC_PATH,
      'content-type': 'application/grpc',
      te: 'trailers',
      'x-ohs-sandbox': sandboxA,
      'x-ohs-owner-epoch': String(epoch),
      'x-ohs-hop': '1',
      'x-ohs-origin': 'r1',
      'x-ohs-class': 'exec',
    };

    const noAuth = await h2Call(peerPort, base, execBody(sandboxA));
    expect(noAuth.status).toBe(401);
    expect(noAuth.headers['x-ohs-error']).toBe('peer-auth');

    const wrong = await h2Call(peerPort, { ...base, 'x-ohs-peer-auth': `${SECRET}-wrong` }, execBody(sandboxA));
    expect(wrong.status).toBe(401);
    expect(wrong.headers['x-ohs-error']).toBe('peer-auth');

    const tunnelNoAuth = await h2Call(peerPort, { ':method': 'CONNECT', ':authority': 'openshell-ssh-tunnel', 'x-ohs-sandbox': sandboxA });
    expect(tunnelNoAuth.status).toBe(401);

    const overHops = await h2Call(peerPort, { ...base, 'x-ohs-peer-auth': SECRET, 'x-ohs-hop': '3' }, execBody(sandboxA));
    expect(overHops.status).toBe(508);
    expect(overHops.headers['x-ohs-error']).toBe('hop-limit');

    const stale = await h2Call(peerPort, { ...base, 'x-ohs-peer-auth': SECRET, 'x-ohs-owner-epoch': String(epoch - 1) }, execBody(sandboxA));
    expect(stale.status).toBe(421);
    expect(stale.headers['x-ohs-not-owner']).toBe('1');
    expect(stale.headers['x-ohs-owner']).toBe(`r0@${epoch}`);

    // None of the refused calls reached the gateway: no relay was opened to the sandbox.
    await new Promise((res) => setTimeout(res, 300));
    expect(relays).toBe(0);

    // The same call with valid credentials does run (so the refusals above were about credentials).
    const good = await h2Call(peerPort, { ...base, 'x-ohs-peer-auth': SECRET }, execBody(sandboxA));
    expect(good.status).toBe(200);
    expect(good.trailers['grpc-status']).toBe('0');
    const events = unframe(good.data).map((m) => decodeMessage<ExecSandboxEvent>('ExecSandboxEvent', m));
    expect(events.map((e) => e.stdout?.data.toString() ?? '').join('')).toBe(`${sandboxA}\n`);
    expect(relays).toBe(1);

    // Plain HTTP/1.1 on the peer port gets no service.
    const h1 = await rawExchange(peerPort, Buffer.from('GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n', 'latin1'));
    expect(h1.closedByPeer).toBe(true);
    expect(h1.reply.toString('latin1')).not.toMatch(/^HTTP\/1\.1/);
    expect(r(0).sidecar?.alive()).toBe(true);
  });

  it('a forward with a stale epoch is answered not-owner and the retry reaches the right replica', async () => {
    expect((await owner(sandboxA))?.replica).toBe('r0');
    // The supervisor's connection drops and it comes back through r1, which claims the sandbox.
    const old = supervisors[0]!;
    await old.stop();
    await expect.poll(async () => (await localSessions(0))[sandboxA], { timeout: 5000, interval: 50 }).toBeUndefined();
    // A long backoff: a superseded emulator must not reconnect before it is stopped below.
    const slow = { initialMs: 5000, maxMs: 5000 };
    const moved = new SupervisorEmulator({ endpoint: `127.0.0.1:${r(1).publicPort}`, sandboxId: sandboxA, sshPort: ssh[0]!.port, backoff: slow });
    supervisors.push(moved);
    moved.start();
    await moved.waitConnected(15_000);
    expect((await owner(sandboxA))?.replica).toBe('r1');

    // Straight away, through both replicas.
    expect(await exec(client(0), sandboxA, ['sandbox-id'])).toEqual({ stdout: `${sandboxA}\n`, stderr: '', exitCode: 0 });
    expect((await exec(client(1), sandboxA, ['sandbox-id'])).stdout).toBe(`${sandboxA}\n`);

    // A newer session on r1 (last connect wins): the epoch r1 held a moment ago is now stale.
    const staleEpoch = (await owner(sandboxA))?.epoch ?? 0;
    const newer = new SupervisorEmulator({ endpoint: `127.0.0.1:${r(1).publicPort}`, sandboxId: sandboxA, sshPort: ssh[0]!.port, backoff: slow });
    supervisors.push(newer);
    newer.start();
    await newer.waitConnected(15_000);
    await moved.stop();
    const current = await owner(sandboxA);
    expect(current).toEqual({ replica: 'r1', epoch: staleEpoch + 1 });
    await expect.poll(async () => (await localSessions(1))[sandboxA], { timeout: 5000, interval: 50 }).toBe(staleEpoch + 1);
    const epoch = staleEpoch + 1;

    // r0's cache says r1 at the previous epoch: r1 answers "not owner", r0 re-resolves and retries.
    const notOwnerOut = (cls: string): Promise<number> => metric(0, 'ohs_forwards_total', { class: cls, peer: 'r1', outcome: 'not_owner' });
    const notOwnerIn = (cls: string): Promise<number> => metric(1, 'ohs_forwards_total', { class: cls, peer: 'inbound', outcome: 'not_owner' });
    const execOut = await notOwnerOut('exec');
    const execIn = await notOwnerIn('exec');
    await forgeStaleOwner(sandboxA, r(1), staleEpoch);
    expect(await exec(client(0), sandboxA, ['sandbox-id'])).toEqual({ stdout: `${sandboxA}\n`, stderr: '', exitCode: 0 });
    expect(await notOwnerOut('exec')).toBe(execOut + 1);
    expect(await notOwnerIn('exec')).toBe(execIn + 1);
    // The fresh lookup corrected the shared cache for everyone.
    const cached = await redis.get(`${redisPrefix}owner:${sandboxA}`);
    if (cached !== null) expect((JSON.parse(cached) as { epoch: number }).epoch).toBe(epoch);

    // The same for an SSH tunnel.
    const sshOut = await notOwnerOut('ssh-tunnel');
    await forgeStaleOwner(sandboxA, r(1), staleEpoch);
    const { token } = await store.createSshSession(sandboxA, 3600);
    const res = await sshViaGateway({ host: '127.0.0.1', port: r(0).publicPort, sandboxId: sandboxA, token, command: 'sandbox-id' });
    expect(res.status).toBe(200);
    expect(res.stdout.trim()).toBe(sandboxA);
    expect(await notOwnerOut('ssh-tunnel')).toBe(sshOut + 1);
  });
  it("peer calls with invented classes do not grow the metrics' label set", async () => {
    const peerPort = r(0).sidecarPorts!.peer;
    const session = http2.connect(`http://127.0.0.1:${peerPort}`);
    session.on('error', () => undefined);
    try {
      for (let i = 0; i < 20; i++) {
        await new Promise<void>((resolve) => {
          const req = session.request({ ':method': 'POST', ':path': '/x', 'x-ohs-class': `invented-${i}`, 'x-ohs-peer-auth': 'wrong' });
          req.on('response', () => req.close());
          req.on('close', () => resolve());
          req.on('error', () => resolve());
          req.end();
        });
      }
    } finally {
      session.close();
    }
    const text = await (await fetch(`http://127.0.0.1:${r(0).sidecarPorts!.admin}/metrics`)).text();
    expect(text).not.toMatch(/invented-/);
    expect(Number(/ohs_forwards_total\{class="unauthenticated",peer="inbound",outcome="auth_failed"\} (\d+)/.exec(text)?.[1] ?? 0)).toBeGreaterThanOrEqual(20);
  });

});
