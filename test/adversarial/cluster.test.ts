// Adversarial traffic against a two-replica cluster (issue 10 item 7): forged peer calls, peer
// headers replayed on the public port, a poisoned Redis owner record, duplicate x-sandbox-id /
// x-sandbox-token headers on CONNECT, and requests pipelined after a refused CONNECT. Each case: the
// sidecars stay up, the attacked replica's RSS stays under baseline + the stated bound, legitimate
// traffic through it keeps working (measured), and nothing is admitted or forwarded that should not
// be. Where today's sidecar does forward what it should not (the poisoned record), the figure is
// printed here and the strict assertion lives in known-failures.test.ts.
import http2 from 'node:http2';
import { Redis } from 'ioredis';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cluster } from '../../emulator/cluster.ts';
import { GatewayStore } from '../../emulator/gateway/store.ts';
import { encodeMessage } from '../../emulator/proto.ts';
import { openConnectTunnel } from '../../emulator/ssh-client.ts';
import { startSupervisorFleet, type SupervisorFleet } from '../../emulator/supervisor/fleet.ts';
import { exec, gatewayClient, type OpenShellClient } from '../helpers/grpc-client.ts';
import { createTestDatabase, TEST_REDIS_URL, testRedisPrefix, type TestDatabase } from '../helpers/services.ts';
import { waitUntil } from '../helpers/wait.ts';
import { LegitProbe, metric, printReports, rawSession, RssSampler, sleep, startAttacker, withTimeout, type CaseReport } from './support.ts';

const PEER_SECRET = 'adversarial-peer-secret-0123456789';
const LEGIT_P99_MS = 10_000;

let db: TestDatabase;
let store: GatewayStore;
let cluster: Cluster;
let redis: Redis;
let prefix: string;
const fleets: SupervisorFleet[] = [];
const clients: OpenShellClient[] = [];
/** s[0] owned by r0, s[1] and s[2] by r1 (s[2] is never routed before the poisoning). */
const s: string[] = [];
const reports: CaseReport[] = [];

beforeAll(async () => {
  db = await createTestDatabase('adversarial_cluster');
  store = new GatewayStore(db.url);
  await store.migrate();
  prefix = testRedisPrefix('adversarial-cluster');
  cluster = await Cluster.start({
    replicas: 2,
    databaseUrl: db.url,
    sidecars: { redisUrl: TEST_REDIS_URL, redisKeyPrefix: prefix, peerSecret: PEER_SECRET, extraArgs: ['--ssh-tunnels-per-token', '1'] },
  });
  redis = new Redis(TEST_REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 1 });
  await redis.connect();
  for (let i = 0; i < 3; i++) s.push((await store.createSandbox()).id);
  for (const [i, replica] of [0, 1, 1].entries()) {
    const fleet = await startSupervisorFleet({ endpoint: `127.0.0.1:${cluster.replica(replica).publicPort}`, sandboxIds: [s[i] as string] });
    fleets.push(fleet);
    await fleet.waitAllConnected(15_000);
  }
  for (const r of cluster.replicas) clients.push(gatewayClient(`127.0.0.1:${r.publicPort}`));
  const pool = new pg.Pool({ connectionString: db.url, max: 1 });
  try {
    await waitUntil(
      'owners r0, r1, r1',
      async () => Promise.all(s.map(async (id) => (await pool.query<{ replica_id: string }>('SELECT replica_id FROM ohs_owners WHERE sandbox_id = $1', [id])).rows[0]?.replica_id)),
      (v) => v.join(',') === 'r0,r1,r1',
      { timeoutMs: 10_000 },
    );
  } finally {
    await pool.end();
  }
}, 90_000);

afterAll(async () => {
  printReports('adversarial: two-replica cluster (seed gateway emulators)', reports);
  for (const c of clients) c.close();
  await Promise.all(fleets.map((f) => f.stop()));
  await cluster?.close();
  if (redis) {
    const keys = await redis.keys(`${prefix}*`);
    if (keys.length > 0) await redis.del(...keys);
    redis.disconnect();
  }
  await store?.close();
  await db?.drop();
});

function pidOf(i: number): number {
  return cluster.replica(i).sidecar?.child.pid as number;
}

function adminOf(i: number): number {
  return cluster.replica(i).sidecarPorts?.admin as number;
}

/** Legit traffic through replica `via`: exec of a sandbox owned elsewhere, and a fresh-token tunnel. */
function legit(via: number): LegitProbe {
  const client = clients[via] as OpenShellClient;
  const port = cluster.replica(via).publicPort;
  return new LegitProbe(async (n) => {
    if (n % 3 === 0) {
      const { token } = await store.createSshSession(s[1] as string, 3600);
      const t = await openConnectTunnel({ host: '127.0.0.1', port, sandboxId: s[1], token, timeoutMs: 10_000 });
      t.socket?.destroy();
      if (t.status !== 200) throw new Error(`tunnel ${t.status} ${t.body.trim()}`);
      return;
    }
    const sb = s[n % 2] as string;
    const out = await exec(client, sb, ['sandbox-id']);
    if (out.stdout.trim() !== sb) throw new Error(`exec answered '${out.stdout.trim()}'`);
  });
}

async function finish(via: number, name: string, today: string, rss: RssSampler, probe: LegitProbe, boundMiB: number): Promise<void> {
  const legitStats = await probe.stop();
  const r = rss.stop();
  reports.push({ case: name, today, rss: r, rssBoundMiB: boundMiB, legit: legitStats });
  for (const rep of cluster.replicas) expect(rep.sidecar?.alive()).toBe(true);
  // At least 95 % of legitimate attempts succeed (on a loaded 2-core machine a flood that reaches
  // the gateway's single shared upstream connection can stall one for seconds; the report shows it).
  expect(legitStats.ok).toBeGreaterThan(0);
  expect(legitStats.failed, legitStats.errors.join(' | ')).toBeLessThanOrEqual(Math.floor((legitStats.ok + legitStats.failed) * 0.05));
  expect(legitStats.p99Ms).toBeLessThan(LEGIT_P99_MS);
  expect(r.growthMiB).toBeLessThan(boundMiB);
  expect(cluster.replica(via).sidecar?.output.filter((l) => /unhandled|uncaught/i.test(l))).toEqual([]);
}

/** One h2 request to `url`; resolves with the response status (0 when the stream failed). */
function h2Status(session: http2.ClientHttp2Session, headers: http2.OutgoingHttpHeaders, body?: Buffer): Promise<number> {
  return new Promise((resolve) => {
    let req: http2.ClientHttp2Stream;
    try {
      req = session.request(headers);
    } catch {
      resolve(0);
      return;
    }
    let status = 0;
    req.on('response', (h) => (status = Number(h[':status'])));
    req.on('error', () => undefined);
    req.on('close', () => resolve(status));
    req.resume();
    req.end(body);
  });
}

describe('adversarial peers and records', () => {
  it('forged peer calls (no secret, wrong secret) are all refused 401 and reach no gateway', async () => {
    const rss = new RssSampler(pidOf(1));
    const probe = legit(1);
    const acceptedBefore = (await metric(adminOf(1), 'ohs_forwards_total', { outcome: 'accepted' })).sum;
    const seriesBefore = (await metric(adminOf(1), 'ohs_forwards_total')).series;
    const peer = http2.connect(`http://127.0.0.1:${cluster.replica(1).sidecarPorts?.peer}`);
    peer.on('error', () => undefined);
    const statuses = new Map<number, number>();
    const n = 2000;
    for (let i = 0; i < n; i += 100) {
      const batch = await Promise.all(
        Array.from({ length: 100 }, (_, j) =>
          h2Status(peer, {
            ':method': 'POST',
            ':path': '/openshell.v1.OpenShell/ExecSandbox',
            'content-type': 'application/grpc',
            ...((i + j) % 2 === 0 ? {} : { 'x-ohs-peer-auth': `wrong-${i + j}` }),
            'x-ohs-sandbox': s[1] as string,
            'x-ohs-owner-epoch': '1',
            'x-ohs-hop': '1',
            'x-ohs-origin': 'r0',
            // An attacker-chosen label value (ohs_forwards_total{class} today).
            'x-ohs-class': `forged-${i + j}`,
          }),
        ),
      );
      for (const st of batch) statuses.set(st, (statuses.get(st) ?? 0) + 1);
    }
    peer.destroy();
    const acceptedAfter = (await metric(adminOf(1), 'ohs_forwards_total', { outcome: 'accepted' })).sum;
    const seriesAfter = (await metric(adminOf(1), 'ohs_forwards_total')).series;
    expect(Object.fromEntries(statuses)).toEqual({ 401: n });
    expect(acceptedAfter).toBe(acceptedBefore);
    await finish(
      1,
      `forged peer calls (${n}, no or wrong secret)`,
      `all ${n} refused 401, none forwarded; ohs_forwards_total grew by ${seriesAfter - seriesBefore} series (labels only from authenticated peers, from a fixed set)`,
      rss,
      probe,
      100,
    );
  }, 60_000);

  it('peer headers replayed on the public port are stripped: the request is routed as any public one', async () => {
    const rss = new RssSampler(pidOf(0));
    const probe = legit(0);
    // Through r0 to S1 (owned by r1), with the real peer secret and a hop count at the limit: a
    // sidecar that trusted them would treat the call as already forwarded (or refuse it, 508).
    const session = http2.connect(`http://127.0.0.1:${cluster.replica(0).publicPort}`);
    session.on('error', () => undefined);
    const results: string[] = [];
    for (let i = 0; i < 20; i++) {
      results.push(
        await new Promise<string>((resolve) => {
          const req = session.request({
            ':method': 'POST',
            ':path': '/openshell.v1.OpenShell/ExecSandbox',
            'content-type': 'application/grpc',
            te: 'trailers',
            'x-ohs-peer-auth': PEER_SECRET,
            'x-ohs-hop': '2',
            'x-ohs-sandbox': s[0] as string,
            'x-ohs-owner-epoch': '999',
            'x-ohs-class': 'supervisor-control',
          });
          let out = '';
          let status = '';
          req.on('data', (d: Buffer) => (out += d.toString('latin1')));
          req.on('trailers', (t) => (status = String(t['grpc-status'])));
          req.on('error', () => undefined);
          req.on('close', () => resolve(`${status}:${out.includes(s[1] as string) ? 'S1' : out.includes(s[0] as string) ? 'S0' : 'none'}`));
          const msg = encodeMessage('ExecSandboxRequest', { sandbox_id: s[1] as string, command: ['sandbox-id'] });
          const frame = Buffer.alloc(5);
          frame.writeUInt32BE(msg.length, 1);
          req.end(Buffer.concat([frame, msg]));
        }),
      );
    }
    session.destroy();
    // Every call reached S1's supervisor (the key in the body), answered OK.
    expect(new Set(results)).toEqual(new Set(['0:S1']));
    // CONNECT with forged peer headers: still a normal, limited, routed tunnel.
    const { token } = await store.createSshSession(s[1] as string, 3600);
    const t = await openConnectTunnel({
      host: '127.0.0.1',
      port: cluster.replica(0).publicPort,
      sandboxId: s[1],
      token,
      extraHeaders: { 'X-Ohs-Hop': '9', 'X-OHS-Peer-Auth': PEER_SECRET, 'x-ohs-sandbox': s[0] as string },
    });
    t.socket?.destroy();
    expect(t.status).toBe(200);
    await finish(0, 'peer headers replayed on the public port (20 exec, 1 CONNECT)', 'stripped: every call routed by its own key to the owner, hop limit not triggered', rss, probe, 100);
  }, 60_000);

  it('a poisoned Redis owner record: the sidecars stay up and legitimate traffic keeps working', async () => {
    const attacker = await startAttacker();
    const rss = new RssSampler(pidOf(0));
    const probe = legit(0);
    // An attacker who can write Redis points S2 (really owned by r1) at its own URL.
    const record = { sandboxId: s[2], replicaId: 'r1', peerUrl: attacker.url, epoch: 1_000_000, claimedAtMs: Date.now() };
    await redis.set(`${prefix}owner:${s[2]}`, JSON.stringify(record), 'PX', 60_000);
    const started = Date.now();
    const outcome = await withTimeout(exec(clients[0] as OpenShellClient, s[2] as string, ['sandbox-id']), 20_000).then(
      (r) => `exec answered '${r.stdout.trim()}'`,
      (err: Error) => `exec failed after ${Date.now() - started} ms: ${err.message.split('\n')[0]}`,
    );
    if (process.env.OHS_ADV_DEBUG) console.log(cluster.replica(0).sidecar?.output.slice(-40).join('\n'));
    await sleep(500);
    const leakedSecret = attacker.streams.some((h) => h['x-ohs-peer-auth'] === PEER_SECRET);
    await redis.del(`${prefix}owner:${s[2]}`);
    await attacker.close();
    await finish(
      0,
      'poisoned Redis owner record (S2 -> attacker URL)',
      `${outcome}; attacker got ${attacker.connections} connection(s), ${attacker.streams.length} stream(s)${leakedSecret ? ', WITH the peer secret' : ''}`,
      rss,
      probe,
      100,
    );
  }, 60_000);

  it('duplicate x-sandbox-id / x-sandbox-token headers on CONNECT are never admitted past the limits', async () => {
    const rss = new RssSampler(pidOf(1));
    const probe = legit(0);
    const port = cluster.replica(1).publicPort; // r1 owns S1: a local tunnel
    const { token } = await store.createSshSession(s[1] as string, 3600);
    const first = await openConnectTunnel({ host: '127.0.0.1', port, sandboxId: s[1], token });
    expect(first.status).toBe(200); // holds the token's only slot (--ssh-tunnels-per-token 1)
    const head = (lines: string[]): Buffer => Buffer.from(`CONNECT /connect/ssh HTTP/1.1\r\nHost: gw\r\n${lines.join('\r\n')}\r\n\r\n`, 'latin1');
    const variants = {
      'token twice': head([`x-sandbox-id: ${s[1]}`, `x-sandbox-token: ${token}`, `x-sandbox-token: ${token}`]),
      'id twice': head([`x-sandbox-id: ${s[1]}`, `x-sandbox-id: ${s[1]}`, `x-sandbox-token: ${token}`]),
      'id twice, other first': head([`x-sandbox-id: ${s[0]}`, `x-sandbox-id: ${s[1]}`, `x-sandbox-token: ${token}`]),
    };
    const answers: Record<string, string> = {};
    for (const [name, bytes] of Object.entries(variants)) {
      const c = await rawSession(port, bytes);
      await waitUntil(`an answer to '${name}'`, async () => c.received(), (r) => r.includes('\r\n\r\n') || c.closed(), { timeoutMs: 40_000 });
      answers[name] = c.received().split('\r\n')[0] ?? '';
      c.socket.destroy();
    }
    first.socket?.destroy();
    for (const a of Object.values(answers)) expect(a).not.toMatch(/^HTTP\/1\.1 200/);
    await finish(1, 'duplicate x-sandbox-id / x-sandbox-token on CONNECT', `not admitted by the emulator (it joins duplicates like Node): ${JSON.stringify(answers)}`, rss, probe, 100);
  }, 120_000);

  it('requests pipelined after a CONNECT the sidecar refused never reach a gateway', async () => {
    const rss = new RssSampler(pidOf(1));
    const probe = legit(0);
    const port = cluster.replica(1).publicPort;
    const { token } = await store.createSshSession(s[1] as string, 3600);
    const held = await openConnectTunnel({ host: '127.0.0.1', port, sandboxId: s[1], token });
    expect(held.status).toBe(200);
    // Refused by the per-token limit (429), with a second CONNECT for another sandbox and a GET pipelined.
    const { token: other } = await store.createSshSession(s[2] as string, 3600);
    const bytes = Buffer.from(
      `CONNECT /connect/ssh HTTP/1.1\r\nHost: gw\r\nx-sandbox-id: ${s[1]}\r\nx-sandbox-token: ${token}\r\n\r\n` +
        `CONNECT /connect/ssh HTTP/1.1\r\nHost: gw\r\nx-sandbox-id: ${s[2]}\r\nx-sandbox-token: ${other}\r\n\r\n` +
        `GET /healthz HTTP/1.1\r\nHost: gw\r\nx-ohs-hop: 1\r\n\r\n`,
      'latin1',
    );
    const c = await rawSession(port, bytes);
    await waitUntil('the connection to close', async () => c.closed(), (v) => v, { timeoutMs: 10_000 });
    const reply = c.received();
    held.socket?.destroy();
    expect(reply).toMatch(/^HTTP\/1\.1 429/);
    expect(reply.match(/HTTP\/1\.1 \d{3}/g)).toHaveLength(1);
    expect(await gatewaySlots(1, s[2] as string)).toBe(0);
    await finish(1, 'requests pipelined after a CONNECT refused by the sidecar (429)', 'one answer (429), connection closed, nothing pipelined reached a gateway', rss, probe, 100);
  }, 60_000);
});

/** Tunnels the replica's gateway emulator holds for a sandbox (its own per-process counters). */
async function gatewaySlots(i: number, sandboxId: string): Promise<number> {
  const res = await fetch(`http://127.0.0.1:${cluster.replica(i).gatewayHealthPort}/debug/sessions`);
  const body = (await res.json()) as { slots: { sandboxes: Record<string, number> } };
  return body.slots.sandboxes[sandboxId] ?? 0;
}
