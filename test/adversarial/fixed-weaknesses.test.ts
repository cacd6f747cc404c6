// Weaknesses issue 10 found, each pinned by a test that failed against the code before its fix (they
// ran as "known failures" until then): slow headers, unbounded streams and buffers, pipelining past a
// refused CONNECT or upgrade, the connect timeout cutting slow answers, no TCP keepalive, header
// injection in a replayed head, an admin port open to all, no Sentinel, a poisoned Redis owner
// record, unbounded metric labels. Every test sets up what it needs (its own sidecar process in
// front of a hyper-like fake gateway, or a two-replica cluster) and closes it.
import { execFileSync } from 'node:child_process';
import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import { Redis } from 'ioredis';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cluster } from '../../emulator/cluster.ts';
import { GatewayStore } from '../../emulator/gateway/store.ts';
import { startSupervisorFleet, type SupervisorFleet } from '../../emulator/supervisor/fleet.ts';
import { CONFIG_DEFAULTS, loadConfig } from '../../src/config/load.ts';
import { parseHostPort } from '../../src/config/host-port.ts';
import { requestHead } from '../../src/proxy/tunnel.ts';
import { encodeMessage } from '../../emulator/proto.ts';
import { exec, gatewayClient } from '../helpers/grpc-client.ts';
import { grpcFrame } from '../helpers/raw.ts';
import { createTestDatabase, TEST_REDIS_URL, testRedisPrefix, type TestDatabase } from '../helpers/services.ts';
import { tcpNoDelay } from '../helpers/tcp-nodelay.ts';
import { waitUntil } from '../helpers/wait.ts';
import { embeddedSidecar, metric, rawSession, RssSampler, sleep, startAttacker, startFakeGateway, withTimeout, type FakeGateway } from './support.ts';

function connectHead(lines: string[]): Buffer {
  return Buffer.from(`CONNECT /connect/ssh HTTP/1.1\r\nHost: gw\r\n${lines.join('\r\n')}${lines.length > 0 ? '\r\n' : ''}\r\n`, 'latin1');
}

async function firstLine(c: Awaited<ReturnType<typeof rawSession>>, timeoutMs = 10_000): Promise<string> {
  await waitUntil('an answer', async () => c.received(), (r) => r.includes('\r\n') || c.closed(), { timeoutMs });
  return c.received().split('\r\n')[0] ?? '';
}

const internal = (gw: FakeGateway): string[] => gw.seen.flatMap((r) => r.headers.filter(([n]) => n.toLowerCase().startsWith('x-ohs-')).map(([n, v]) => `${r.method} ${r.path} ${n}: ${v}`));

/** Shorter than the 30 s default so the slow-header case is quick; the rule is the same. */
const HEADERS_TIMEOUT_MS = 3000;

describe('fixed weaknesses: HTTP/1.1 and HTTP/2 on the public port (embedded sidecar, fake gateway)', () => {
  let gw: FakeGateway;
  let sc: Awaited<ReturnType<typeof embeddedSidecar>>;

  beforeAll(async () => {
    gw = await startFakeGateway({ upgradeStatus: 400 });
    sc = await embeddedSidecar(gw.port, ['--ssh-tunnels-per-token', '1', '--ssh-tunnels-per-sandbox', '1', '--headers-timeout-ms', String(HEADERS_TIMEOUT_MS)]);
  });
  afterAll(async () => {
    await sc?.proc.kill('SIGKILL');
    await gw?.close();
  });

  // public-listener.ts:95 hands HTTP/1.1 sockets to the server with h1.emit('connection'); Node arms
  // headersTimeout/requestTimeout only for servers that listen, so a client trickling header bytes
  // keeps its connection forever (reproduced: still open after 75 s). Pass: closed (or 408) within
  // 60 s, Node's own default headersTimeout.
  it('a client trickling HTTP/1.1 header bytes is cut off at the headers timeout, with 408', async () => {
    const s = net.connect(sc.port, '127.0.0.1');
    s.on('error', () => undefined);
    let closedAt = 0;
    let answer = '';
    s.on('data', (d: Buffer) => (answer += d.toString('latin1')));
    s.on('close', () => (closedAt = Date.now()));
    await new Promise((r) => s.once('connect', r));
    const started = Date.now();
    s.write('GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ');
    const trickle = setInterval(() => !s.destroyed && s.write('a'), 500);
    try {
      await waitUntil('the sidecar to close the trickling connection', async () => closedAt, (v) => v > 0, { timeoutMs: HEADERS_TIMEOUT_MS * 5, intervalMs: 100 });
    } finally {
      clearInterval(trickle);
      s.destroy();
    }
    // Not before the bound (a slow but honest client gets its full time), and not long after it.
    expect(closedAt - started).toBeGreaterThanOrEqual(HEADERS_TIMEOUT_MS - 100);
    expect(closedAt - started).toBeLessThan(HEADERS_TIMEOUT_MS * 5);
    expect(answer).toMatch(/^HTTP\/1\.1 408 /);
    expect(await metric(sc.admin, 'ohs_protections_total', { reason: 'headers_timeout' })).toMatchObject({ sum: 1 });
  }, 30_000);

  // public-listener.ts:32: http2.createServer(settings: {initialWindowSize, maxHeaderListSize}) sets
  // no maxConcurrentStreams, so the public port advertises 4294967295 and one connection may hold any
  // number of streams (10,000 measured in public-port.test.ts). Pass: at most 1,024 advertised.
  it('the public HTTP/2 listener caps concurrent streams per connection', async () => {
    const s = http2.connect(`http://127.0.0.1:${sc.port}`);
    s.on('error', () => undefined);
    await new Promise((r) => s.once('remoteSettings', r));
    const advertised = s.remoteSettings.maxConcurrentStreams ?? Infinity;
    s.destroy();
    expect(advertised).toBeLessThanOrEqual(1024);
  });

  // grpc-streams.ts readFirstMessage: one FirstMessageBuffer (up to maxFirstMessageBytes) per stream
  // and no per-connection or global budget; the connection window is replenished as bytes are buffered,
  // so one connection pins streams x 64 KiB. Pass: 2,000 first messages stalled at 63 KB on one
  // connection (~120 MiB offered) are refused past the connection's budget, and the sidecar's Buffer
  // memory (external to V8's heap) is back under 32 MiB above where it was while the held streams
  // still wait (a 60 s first-message timeout here, so none is let go meanwhile). Without the budget
  // only Node's own session memory cap (64 MB) stops the flood, and 60-67 MiB stay held (measured on
  // Node 20 and 24). With it, Node 20 is under the bound at once; Node 24 collects the flood's garbage
  // Buffers later (65 MiB of it after 5 s, 2 MiB after 15 s), so RSS only gets a sanity bound here.
  it('one connection cannot pin more than a bounded budget of buffered first-message bytes', async () => {
    const own = await embeddedSidecar(gw.port, ['--first-message-timeout-ms', '60000']);
    let s: http2.ClientHttp2Session | undefined;
    try {
      const externalMiB = async (): Promise<number> => (await metric(own.admin, 'nodejs_external_memory_bytes')).sum / 1048576;
      const externalBefore = await externalMiB();
      const rss = new RssSampler(own.proc.child.pid as number);
      s = http2.connect(`http://127.0.0.1:${own.port}`, { peerMaxConcurrentStreams: 100_000 });
      s.on('error', () => undefined);
      await new Promise((r) => s!.once('remoteSettings', r));
      const prefix = Buffer.alloc(5);
      prefix.writeUInt32BE(64_000, 1);
      const payload = Buffer.concat([prefix, Buffer.alloc(63_000, 0x0a)]);
      for (let i = 0; i < 2000; i++) {
        try {
          const req = s.request({ ':method': 'POST', ':path': '/openshell.v1.OpenShell/ExecSandbox', 'content-type': 'application/grpc' });
          req.on('error', () => undefined);
          req.resume();
          req.write(payload);
        } catch {
          break; // refused: fine
        }
        if (i % 100 === 99) await sleep(10);
      }
      await waitUntil('buffer memory back near where it was', async () => (await externalMiB()) - externalBefore, (growth) => growth < 32, { timeoutMs: 30_000, intervalMs: 500 });
      const r = rss.stop();
      expect((await metric(own.admin, 'ohs_protections_total', { reason: 'connection_buffer' })).sum).toBeGreaterThan(0);
      expect(r.growthMiB).toBeLessThan(110);
    } finally {
      s?.destroy();
      await own.proc.kill('SIGKILL');
    }
  }, 60_000);

  // tunnel.ts:72 keys the limit by `req.headers['x-sandbox-token']`, which Node joins for duplicates
  // ("T, T"): a different slot key from T. The gateway (hyper HeaderMap::get) takes the first value,
  // T. So a second tunnel for a token limited to one slot is admitted. Pass: refused (400 or 429).
  it('a duplicated x-sandbox-token header does not get a second slot for the same token', async () => {
    const first = await rawSession(sc.port, connectHead(['x-sandbox-id: sb-dup-token', 'x-sandbox-token: T1']));
    expect(await firstLine(first)).toMatch(/^HTTP\/1\.1 200/);
    const second = await rawSession(sc.port, connectHead(['x-sandbox-id: sb-dup-token-2', 'x-sandbox-token: T1', 'x-sandbox-token: T1']));
    const answer = await firstLine(second);
    first.socket.destroy();
    second.socket.destroy();
    expect(answer).toMatch(/^HTTP\/1\.1 (400|429)/);
  });

  // tunnel.ts:61-64: a duplicated x-sandbox-id is joined to "S, S", fails sandboxIdProblem and the
  // CONNECT goes to the local gateway with no limit check at all (and no routing to the owner); the
  // gateway takes the first value, S. Pass: refused (400 or 429) while S's only slot is held.
  it('a duplicated x-sandbox-id header is not a way around the limits and routing', async () => {
    const first = await rawSession(sc.port, connectHead(['x-sandbox-id: sb-dup-id', 'x-sandbox-token: T2']));
    expect(await firstLine(first)).toMatch(/^HTTP\/1\.1 200/);
    const second = await rawSession(sc.port, connectHead(['x-sandbox-id: sb-dup-id', 'x-sandbox-id: sb-dup-id', 'x-sandbox-token: T3']));
    const answer = await firstLine(second);
    first.socket.destroy();
    second.socket.destroy();
    expect(answer).toMatch(/^HTTP\/1\.1 (400|429)/);
  });

  // tunnel.ts:145-146 (tunnelLocal) replays the CONNECT with the bytes after its head and splices the
  // sockets whatever the gateway answers. After a non-2xx answer on a keep-alive connection (hyper),
  // a request pipelined behind the CONNECT reaches the gateway unclassified: no limits, no routing,
  // x-ohs-* not stripped. Pass: the gateway sees only the first request.
  it('requests pipelined after a CONNECT the gateway refused never reach it unclassified', async () => {
    const before = gw.seen.length;
    const bytes = Buffer.concat([
      connectHead([]),
      connectHead(['x-sandbox-id: sb-pipelined', 'x-sandbox-token: T4', 'X-Ohs-Hop: 1', 'X-Ohs-Peer-Auth: forged']),
    ]);
    const c = await rawSession(sc.port, bytes);
    await sleep(1500);
    c.socket.destroy();
    // Only the tunnels count (the sidecar's own start-up probes of the gateway may land here too).
    const arrived = gw.seen.slice(before).filter((r) => r.method === 'CONNECT').map((r) => `${r.method} ${r.path} [${r.headers.map(([n]) => n).join(',')}]`);
    expect(arrived).toHaveLength(1);
  });

  // public-listener.ts:164-168 (passthroughUpgrade) splices client and gateway as soon as the gateway
  // is connected, whatever it answers: after a refused upgrade (400, keep-alive) every later request on
  // that connection reaches the gateway raw, x-ohs-* included. Pass: the gateway never sees an x-ohs-*
  // header (the sidecar stops splicing, or parses and strips, after a non-101 answer).
  it('after a refused upgrade, later requests on the connection are not spliced through unstripped', async () => {
    const before = gw.seen.length;
    const c = await rawSession(sc.port, Buffer.from('GET /_ws_tunnel HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n', 'latin1'));
    await waitUntil('the refusal', async () => c.received(), (r) => r.includes('400'), { timeoutMs: 5000 });
    c.socket.write('GET /after-refused-upgrade HTTP/1.1\r\nHost: gw\r\nX-Ohs-Hop: 1\r\nX-Ohs-Peer-Auth: forged\r\n\r\n');
    await sleep(1000);
    c.socket.destroy();
    const leaked = internal({ ...gw, seen: gw.seen.slice(before) });
    expect(leaked).toEqual([]);
  });

  // public-listener.ts:145: http.request({ timeout: upstreamConnectTimeoutMs }) makes the connect
  // timeout (5 s) an idle timeout for the whole exchange, so a healthy answer slower than 5 s (a long
  // poll) is cut and the client gets 502. Pass: a 7 s answer arrives.
  it('HTTP/1.1 passthrough does not cut a healthy answer that takes longer than the connect timeout', async () => {
    const status = await new Promise<number>((resolve) => {
      const req = http.get({ host: '127.0.0.1', port: sc.port, path: '/slow/7000', headers: { host: 'gw' } }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('error', () => resolve(0));
    });
    expect(status).toBe(200);
  }, 20_000);

  // public-listener.ts:73 (dispatch) never calls socket.setKeepAlive: a client that vanishes without a
  // FIN or RST (power loss, a dropped NAT entry) keeps its tunnel and its limit slot, renewed forever.
  // Pass: accepted public sockets carry a TCP keepalive timer (ss shows timer:(keepalive,…)), within
  // about a second of accept (it is turned on in batches, once a second).
  it('accepted public connections use TCP keepalive', async () => {
    const c = await rawSession(sc.port, connectHead(['x-sandbox-id: sb-keepalive', 'x-sandbox-token: T5']));
    expect(await firstLine(c)).toMatch(/^HTTP\/1\.1 200/);
    const timers = (): string => execFileSync('ss', ['-tnoH', 'state', 'established', `( sport = :${sc.port} )`]).toString();
    try {
      const out = await waitUntil('a keepalive timer on the accepted socket', async () => timers(), (o) => /timer:\(keepalive/.test(o), { timeoutMs: 3_000 });
      expect(out).toMatch(/timer:\(keepalive/);
    } finally {
      c.socket.destroy();
    }
  });

  // public-listener.ts hands accepted connections to its HTTP servers by hand, so http.Server's own
  // TCP_NODELAY default never applied, and passthroughUpgrade's gateway socket had none either: a
  // `/_ws_tunnel` passthrough (the CLI behind Cloudflare Access) waited on the peer's delayed ACK for
  // each message written in parts, ~45 ms against ~1.5 ms (docs/performance.md, eighteenth session).
  // Pass: the sidecar's sockets of a spliced `/_ws_tunnel`, the client's and the gateway's, both have
  // Nagle's algorithm off.
  it('both legs of a /_ws_tunnel passthrough have TCP_NODELAY', async () => {
    const wsGw = await startFakeGateway();
    const own = await embeddedSidecar(wsGw.port);
    try {
      const c = await rawSession(own.port, Buffer.from('GET /_ws_tunnel HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n', 'latin1'));
      expect(await firstLine(c)).toMatch(/^HTTP\/1\.1 101/);
      c.socket.write('ping');
      await waitUntil('the echo through the splice', async () => c.received(), (r) => r.endsWith('ping'), { timeoutMs: 5_000 });
      const clientPort = (c.socket.address() as net.AddressInfo).port;
      const sockets = tcpNoDelay(own.proc.child.pid as number);
      const toGateway = sockets.filter((s) => s.remote === wsGw.port);
      expect(sockets.find((s) => s.local === own.port && s.remote === clientPort)).toMatchObject({ nodelay: 1 });
      expect(toGateway.length).toBeGreaterThan(0);
      expect(toGateway.filter((s) => s.nodelay === 0)).toEqual([]);
      c.socket.destroy();
    } finally {
      await own.proc.kill('SIGTERM');
      await wsGw.close();
    }
  });

  // tunnel.ts:17-24: requestHead copies raw header values verbatim. Node's parser refuses CR/LF in
  // values today (test/fuzz/request-head.fuzz.test.ts), so this is not reachable through the public
  // listener; it is the defence in depth the issue asks for. Pass: no x-ohs-* line can be produced.
  it('requestHead never emits an x-ohs-* header line, whatever the raw header values hold', () => {
    const fake = { method: 'CONNECT', url: '/connect/ssh', rawHeaders: ['x-sandbox-id', 'sb\r\nX-Ohs-Hop: 0', 'X-A', 'b\nx-ohs-peer-auth: forged'] };
    const head = requestHead(fake as unknown as http.IncomingMessage).toString('latin1');
    const lines = head.split(/\r\n|\n|\r/).filter((l) => /^x-ohs-/i.test(l));
    expect(lines).toEqual([]);
  });
});

describe('fixed weaknesses: configuration defaults', () => {
  // config/load.ts:96 defaults adminListen to 0.0.0.0:9091 and admin-server.ts:67 serves
  // /debug/sessions (sandbox ids) to anyone. Pass: the default binds loopback, or /debug/* needs a token.
  it('the admin port binds loopback by default (or /debug/* requires a token)', () => {
    const cfg = loadConfig({ argv: [], env: {} });
    const host = parseHostPort(cfg.adminListen).host;
    expect(['127.0.0.1', '::1', 'localhost']).toContain(host);
    expect(CONFIG_DEFAULTS.adminListen.startsWith('0.0.0.0')).toBe(false);
  });

  // config/schema.ts:37 accepts only redis: and rediss: URLs, and limits/slots.ts and
  // ownership/redis-owner-cache.ts pass the URL straight to `new Redis(url, …)`: a Sentinel-managed
  // Redis cannot be configured. Proposed form (ioredis `sentinels` + `name`):
  // redis+sentinel://[user:pass@]host1:port1,host2:port2,…/<master-name>[/db]. Pass: it loads.
  it('a Redis Sentinel URL is accepted', () => {
    const cfg = loadConfig({
      argv: ['--database-url', 'postgres://x@127.0.0.1/db', '--peer-secret', 'a-peer-secret-0123456789', '--peer-url', 'http://127.0.0.1:8443', '--redis-url', 'redis+sentinel://127.0.0.1:26379,127.0.0.1:26380,127.0.0.1:26381/mymaster'],
      env: {},
    });
    expect(cfg.redisUrl).toContain('redis+sentinel://');
  });
});

describe('fixed weaknesses: peers and owner records (two-replica cluster)', () => {
  const secret = 'known-failures-peer-secret-0123';
  let db: TestDatabase;
  let store: GatewayStore;
  let cluster: Cluster;
  let redis: Redis;
  let prefix: string;
  let fleet: SupervisorFleet;
  let sandbox: string;

  beforeAll(async () => {
    db = await createTestDatabase('known_failures');
    store = new GatewayStore(db.url);
    await store.migrate();
    prefix = testRedisPrefix('known-failures');
    cluster = await Cluster.start({ replicas: 2, databaseUrl: db.url, sidecars: { redisUrl: TEST_REDIS_URL, redisKeyPrefix: prefix, peerSecret: secret } });
    redis = new Redis(TEST_REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 1 });
    await redis.connect();
    sandbox = (await store.createSandbox()).id;
    fleet = await startSupervisorFleet({ endpoint: `127.0.0.1:${cluster.replica(1).publicPort}`, sandboxIds: [sandbox] });
    await fleet.waitAllConnected(15_000);
    const pool = new pg.Pool({ connectionString: db.url, max: 1 });
    try {
      await waitUntil('r1 owns the sandbox', async () => (await pool.query<{ replica_id: string }>('SELECT replica_id FROM ohs_owners WHERE sandbox_id = $1', [sandbox])).rows[0]?.replica_id, (v) => v === 'r1', { timeoutMs: 10_000 });
    } finally {
      await pool.end();
    }
  }, 90_000);

  afterAll(async () => {
    await fleet?.stop();
    await cluster?.close();
    if (redis) {
      const keys = await redis.keys(`${prefix}*`);
      if (keys.length > 0) await redis.del(...keys);
      redis.disconnect();
    }
    await store?.close();
    await db?.drop();
  });

  // ownership/postgres-store.ts:313-316 returns a Redis hit as the owner without checking it against
  // ohs_replicas, and redis-owner-cache.ts:311 (parseOwner) accepts any peerUrl: whoever can write
  // Redis receives forwarded streams together with the peer secret (x-ohs-peer-auth). Pass: a record
  // naming a live replica with a peer URL that is not that replica's gets no traffic.
  it('a poisoned Redis owner record pointing at an attacker gets no traffic and no peer secret', async () => {
    const attacker = await startAttacker();
    const record = { sandboxId: sandbox, replicaId: 'r1', peerUrl: attacker.url, epoch: 1_000_000, claimedAtMs: Date.now() };
    await redis.set(`${prefix}owner:${sandbox}`, JSON.stringify(record), 'PX', 60_000);
    const client = gatewayClient(`127.0.0.1:${cluster.replica(0).publicPort}`);
    try {
      await withTimeout(exec(client, sandbox, ['sandbox-id']), 20_000).catch(() => undefined);
    } finally {
      client.close();
      await redis.del(`${prefix}owner:${sandbox}`);
      await attacker.close();
    }
    expect({ connections: attacker.connections, streams: attacker.streams.length }).toEqual({ connections: 0, streams: 0 });
  }, 40_000);

  // peer-server.ts:71 labels ohs_forwards_total{class} with the x-ohs-class header of a request that
  // failed authentication: an unauthenticated caller adds one series per value it sends. Pass: 500
  // forged calls with distinct values add at most 20 series.
  it('forged peer calls cannot grow metric label sets', async () => {
    const admin = cluster.replica(1).sidecarPorts?.admin as number;
    const before = (await metric(admin, 'ohs_forwards_total')).series;
    const s = http2.connect(`http://127.0.0.1:${cluster.replica(1).sidecarPorts?.peer}`);
    s.on('error', () => undefined);
    await Promise.all(
      Array.from(
        { length: 500 },
        (_, i) =>
          new Promise<void>((resolve) => {
            const req = s.request({ ':method': 'POST', ':path': '/x', 'x-ohs-peer-auth': 'wrong', 'x-ohs-class': `label-${i}` });
            req.on('error', () => resolve());
            req.on('close', () => resolve());
            req.resume();
            req.end();
          }),
      ),
    );
    s.destroy();
    const after = (await metric(admin, 'ohs_forwards_total')).series;
    expect(after - before).toBeLessThanOrEqual(20);
  }, 30_000);
});

// Fixed: each cancelled client stream is an RST_STREAM on a pooled upstream connection, and a
// server (nghttp2 in Node and in the peer sidecar) ends a connection that carries resets too fast,
// failing every stream on it. One client opening and cancelling streams in a loop (reconnecting
// whenever the sidecar's own nghttp2 limit drops it) used to take the shared gateway connection, and
// every other client's stream on the replica, down with it ("UNAVAILABLE: upstream failed: Session
// closed with error code 2"). Now each pooled connection has a reset budget (h2-sessions.ts
// ResetBudget): out of budget, it takes no new streams and closes once idle. `--upstream-reset-budget
// 0` brings the failure back (5/5 execs failed). Pass: execs of other clients that span the flood all
// complete, on the owner's replica (gateway pool) and on a replica that forwards to it (peer pool,
// then the owner's gateway pool).
describe('an RST flood from one client and the shared upstream connections', () => {
  let db: TestDatabase;
  let store: GatewayStore;
  let cluster: Cluster;
  let fleet: SupervisorFleet;
  let sandbox: string;

  beforeAll(async () => {
    db = await createTestDatabase('fixed_weaknesses_rst');
    store = new GatewayStore(db.url);
    await store.migrate();
    cluster = await Cluster.start({
      replicas: 2,
      databaseUrl: db.url,
      echo: process.env.OHS_TEST_ECHO === '1',
      logLevel: process.env.OHS_TEST_LOG_LEVEL ?? 'warn',
      // A budget of 100 (default 500): on a loaded machine many of the flood's streams are cancelled
      // before they were forwarded, and fewer than 500 may reach an upstream connection at all.
      sidecars: { redisUrl: TEST_REDIS_URL, redisKeyPrefix: testRedisPrefix('rst-flood'), extraArgs: ['--upstream-reset-budget', process.env.OHS_UPSTREAM_RESET_BUDGET ?? '100'] },
    });
    sandbox = (await store.createSandbox()).id;
    fleet = await startSupervisorFleet({ endpoint: `127.0.0.1:${cluster.replica(0).publicPort}`, sandboxIds: [sandbox] });
    await fleet.waitAllConnected(15_000);
    const pool = new pg.Pool({ connectionString: db.url, max: 1 });
    try {
      await waitUntil('r0 owns the sandbox', async () => (await pool.query<{ replica_id: string }>('SELECT replica_id FROM ohs_owners WHERE sandbox_id = $1', [sandbox])).rows[0]?.replica_id, (v) => v === 'r0', { timeoutMs: 10_000 });
    } finally {
      await pool.end();
    }
  }, 90_000);

  afterAll(async () => {
    await fleet?.stop();
    await cluster?.close();
    await store?.close();
    await db?.drop();
  });

  /** Opens ExecSandbox streams with their request and cancels each at once, `count` times. */
  async function flood(port: number, count: number): Promise<number> {
    const body = grpcFrame(encodeMessage('ExecSandboxRequest', { sandbox_id: sandbox, command: ['sleep', '5'] }));
    let s: http2.ClientHttp2Session | undefined;
    let sessions = 0;
    for (let i = 0; i < count; i++) {
      if (!s || s.destroyed || s.closed) {
        s = http2.connect(`http://127.0.0.1:${port}`);
        sessions++;
        s.on('error', () => undefined);
        await new Promise((r) => s?.once('remoteSettings', r));
      }
      try {
        const req = s.request({ ':method': 'POST', ':path': '/openshell.v1.OpenShell/ExecSandbox', 'content-type': 'application/grpc', te: 'trailers' });
        req.on('error', () => undefined);
        req.write(body);
        req.close(http2.constants.NGHTTP2_CANCEL);
      } catch {
        s.destroy();
      }
      if (i % 100 === 99) await sleep(5);
    }
    s?.destroy();
    return sessions;
  }

  for (const [label, via] of [['on the owner\'s replica (gateway connection)', 0], ['through a replica that forwards to the owner (peer connection)', 1]] as const) {
    it(`other clients' streams survive a 5,000-reset flood ${label}`, async () => {
      const replica = cluster.replica(via);
      const client = gatewayClient(`127.0.0.1:${replica.publicPort}`);
      const before = (await metric(replica.sidecarPorts?.admin as number, 'ohs_protections_total', { reason: 'upstream_reset_budget' })).sum;
      const legit = Array.from({ length: 5 }, () =>
        withTimeout(exec(client, sandbox, ['sleep', '6']), 30_000).then(
          (r) => `exit ${r.exitCode}`,
          (err: Error) => err.message.split('\n')[0] ?? 'error',
        ),
      );
      await sleep(500);
      const sessions = await flood(replica.publicPort, 5000);
      const outcomes = await Promise.all(legit);
      client.close();
      const retired = (await metric(replica.sidecarPorts?.admin as number, 'ohs_protections_total', { reason: 'upstream_reset_budget' })).sum - before;
      console.log(`RST flood ${label}: 5,000 cancelled streams over ${sessions} client connections; upstream connections retired for resets: ${retired}; other clients: ${outcomes.join(', ')}`);
      expect(outcomes).toEqual(Array(5).fill('exit 0'));
      expect(retired).toBeGreaterThan(0);
      // And the replica still serves a fresh call afterwards. The flood's execs that reached the
      // gateway each opened a relay, pending until the supervisor claims it (at most 10 s); while 32
      // are pending the gateway itself refuses the sandbox's next one ("per-sandbox relay limit
      // reached", as upstream's does), so that refusal alone is waited out, nothing else.
      const after = gatewayClient(`127.0.0.1:${replica.publicPort}`);
      try {
        const gatewayBusy = /per-sandbox relay limit reached/;
        const deadline = Date.now() + 12_000;
        let fresh: Awaited<ReturnType<typeof exec>> | undefined;
        while (fresh === undefined) {
          try {
            fresh = await withTimeout(exec(after, sandbox, ['sleep', '0']), 15_000);
          } catch (err) {
            if (!gatewayBusy.test((err as Error).message) || Date.now() > deadline) throw err;
            await sleep(500);
          }
        }
        expect(fresh.exitCode).toBe(0);
      } finally {
        after.close();
      }
    }, 90_000);
  }
});
