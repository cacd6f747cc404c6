// Gateways that keep TLS on (no disable_tls): each sidecar reaches its gateway over `https://`,
// trusting the gateway's CA. Clients still speak plaintext to the sidecars. Every hop kind must work
// over TLS: gRPC on HTTP/2 (exec, ForwardTcp, supervisor sessions, relays), raw tunnels (seed
// CONNECT SSH, WebSocket upgrades), HTTP/1.1 service traffic, and the JWKS fetch for sandbox JWTs.
// A plaintext HTTP/2 preface at a TLS gateway would only ever reach its service router, so a
// sidecar that fell back to plaintext anywhere fails these.
import { status as Status, type ClientDuplexStream } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cluster } from '../../emulator/cluster.ts';
import { sshViaForwardTcp } from '../../emulator/forward-tcp-client.ts';
import { Gen2Store } from '../../emulator/gateway/gen2/store.ts';
import { GatewayStore } from '../../emulator/gateway/store.ts';
import { Phase, type ExecSandboxEvent } from '../../emulator/proto.ts';
import { sshViaGateway } from '../../emulator/ssh-client.ts';
import { startSupervisorFleet, type SupervisorFleet } from '../../emulator/supervisor/fleet.ts';
import { makeTestPki, type TestPki } from '../helpers/certs.ts';
import { httpGet, wsEcho } from '../helpers/gen2.ts';
import { exec, gatewayClient } from '../helpers/grpc-client.ts';
import { createTestDatabase, TEST_REDIS_URL, testRedisPrefix, type TestDatabase } from '../helpers/services.ts';
import { waitUntil } from '../helpers/wait.ts';

let pki: TestPki;
const debugOutput = { echo: process.env.OHS_TEST_ECHO === '1', ...(process.env.OHS_TEST_LOG_LEVEL ? { logLevel: process.env.OHS_TEST_LOG_LEVEL } : {}) };

beforeAll(() => {
  pki = makeTestPki();
});

afterAll(() => {
  pki?.cleanup();
});

describe('2026-08 gateways serving TLS behind sidecars', () => {
  let db: TestDatabase;
  let store: Gen2Store;
  let cluster: Cluster;
  const fleets: SupervisorFleet[] = [];
  const sandboxes: Array<{ id: string; name: string }> = [];

  async function ownerOf(id: string): Promise<string | undefined> {
    const res = await store.pool.query<{ replica_id: string }>('SELECT replica_id FROM ohs_owners WHERE sandbox_id = $1', [id]);
    return res.rows[0]?.replica_id;
  }

  beforeAll(async () => {
    db = await createTestDatabase('gw_tls_gen2');
    store = new Gen2Store(db.url);
    await store.migrate();
    cluster = await Cluster.start({
      replicas: 2,
      databaseUrl: db.url,
      protocol: '2026-08',
      gatewayTls: { cert: pki.serverCert, key: pki.serverKey, ca: pki.ca },
      ...debugOutput,
      sidecars: { redisUrl: TEST_REDIS_URL, redisKeyPrefix: testRedisPrefix('gw_tls_gen2') },
    });
    for (let i = 0; i < 4; i++) {
      const row = await store.createSandbox({ name: `tls-box-${i}` });
      sandboxes.push({ id: row.id, name: row.name });
    }
    // Half the supervisors connect through each replica, so both gateways hold sessions.
    for (const r of cluster.replicas) {
      const mine = sandboxes.filter((_, i) => i % cluster.replicas.length === r.index).map((s) => s.id);
      fleets.push(await startSupervisorFleet({ endpoint: `127.0.0.1:${r.publicPort}`, sandboxIds: mine, protocol: '2026-08', jwtKeyDir: cluster.jwtKeyDir, echoService: true }));
    }
    for (const f of fleets) await f.waitAllConnected(30_000);
    for (const s of sandboxes) {
      await waitUntil(`sandbox ${s.name} Ready and owned`, async () => ((await store.getSandbox(s.id))?.phase === Phase.READY ? await ownerOf(s.id) : undefined), (o) => o !== undefined, {
        timeoutMs: 15_000,
      });
    }
  }, 90_000);

  afterAll(async () => {
    for (const f of fleets) await f.stop();
    await cluster?.close();
    await store?.close();
    await db?.drop();
  });

  it('supervisor sessions (JWT checked against the gateway JWKS over TLS) are owned where they connected', async () => {
    const owners = await Promise.all(sandboxes.map((s) => ownerOf(s.id)));
    expect(owners).toEqual(sandboxes.map((_, i) => `r${i % 2}`));
  });

  it('ForwardTcp SSH through the Service reaches every sandbox, whichever replica the client lands on', async () => {
    const tokens = await Promise.all(sandboxes.map((s) => store.createSshSession(s.id, 3600)));
    const results = [];
    for (let round = 0; round < 3; round++) {
      for (const t of tokens) {
        const r = await sshViaForwardTcp({ endpoint: cluster.endpoint, sandboxId: t.sandboxId, token: t.token, command: 'sandbox-id', timeoutMs: 20_000 });
        results.push({ want: t.sandboxId, code: r.grpcCode, details: r.grpcDetails, out: r.stdout.trim() });
      }
    }
    expect(results.filter((r) => r.code !== null || r.out !== r.want)).toEqual([]);
    // Both replicas took client connections, so both forwarded to a peer and served locally.
    expect(cluster.balancer.counts.every((c) => c > 0)).toBe(true);
  }, 90_000);

  it('interactive exec through the non-owner streams stdin and stdout over the TLS hop', async () => {
    const s = sandboxes[0]!;
    const owner = await ownerOf(s.id);
    const via = cluster.replicas.find((r) => r.name !== owner)!;
    const client = gatewayClient(`127.0.0.1:${via.publicPort}`);
    try {
      const call = (client.ExecSandboxInteractive as () => ClientDuplexStream<unknown, ExecSandboxEvent>).call(client);
      let out = '';
      let exit: number | null = null;
      const done = new Promise<number>((resolve) => {
        call.on('data', (ev: ExecSandboxEvent) => {
          if (ev.stdout) out += ev.stdout.data.toString();
          // Input ends on the exit status: upstream closes the SSH channel when the input ends, so
          // ending it before the command reported its exit races that close (the gateway then
          // answers UNAVAILABLE, as upstream does; lost even after the echo on Node 24).
          if (ev.exit) {
            exit = ev.exit.exit_code;
            call.end();
          }
        });
        call.on('error', () => undefined);
        call.on('status', (st) => resolve(st.code));
      });
      call.write({ start: { sandbox_id: s.id, command: ['head', '-n', '1'] } });
      call.write({ stdin: Buffer.from('over tls\n') });
      expect(await done).toBe(Status.OK);
      expect(out).toBe('over tls\n');
      expect(exit).toBe(0);
    } finally {
      client.close();
    }
  }, 60_000);

  it('service HTTP and WebSocket upgrades by subdomain reach the sandbox through TLS gateways', async () => {
    const s = sandboxes[1]!;
    await store.upsertServiceEndpoint({ workspace: 'default', sandboxId: s.id, sandboxName: s.name, service: 'web', targetPort: 8080, domain: true });
    const host = `default--${s.name}--web.openshell.localhost`;
    const port = cluster.balancer.port;
    for (let i = 0; i < 4; i++) {
      const res = await httpGet(port, host, `/tls/${i}`);
      expect(res.status).toBe(200);
      expect(JSON.parse(res.body)).toMatchObject({ sandboxId: s.id, path: `/tls/${i}` });
    }
    for (let i = 0; i < 2; i++) expect(await wsEcho(port, host, ['a', `b-${i}`])).toEqual({ status: 101, replies: ['a', `b-${i}`] });
    // Plain gateway traffic (no sandbox) goes to the local gateway over TLS too: its own 404.
    expect((await httpGet(port, 'default--nope--web.openshell.localhost')).status).toBe(404);
  }, 60_000);
});

describe('2026-04 gateways serving TLS behind sidecars', () => {
  let db: TestDatabase;
  let store: GatewayStore;
  let cluster: Cluster;
  let fleet: SupervisorFleet;
  const sandboxes: string[] = [];

  beforeAll(async () => {
    db = await createTestDatabase('gw_tls_seed');
    store = new GatewayStore(db.url);
    await store.migrate();
    cluster = await Cluster.start({
      replicas: 2,
      databaseUrl: db.url,
      gatewayTls: { cert: pki.serverCert, key: pki.serverKey, ca: pki.ca },
      ...debugOutput,
      sidecars: { redisUrl: TEST_REDIS_URL, redisKeyPrefix: testRedisPrefix('gw_tls_seed') },
    });
    for (let i = 0; i < 4; i++) sandboxes.push((await store.createSandbox()).id);
    fleet = await startSupervisorFleet({ endpoint: cluster.endpoint, sandboxIds: sandboxes });
    await fleet.waitAllConnected(20_000);
  }, 90_000);

  afterAll(async () => {
    await fleet?.stop();
    await cluster?.close();
    await store?.close();
    await db?.drop();
  });

  it('CONNECT SSH tunnels and ExecSandbox reach every sandbox through either replica', async () => {
    const tokens = await Promise.all(sandboxes.map((id) => store.createSshSession(id, 3600)));
    const failures: string[] = [];
    for (let round = 0; round < 2; round++) {
      for (const t of tokens) {
        const r = await sshViaGateway({ host: '127.0.0.1', port: cluster.balancer.port, sandboxId: t.sandboxId, token: t.token, command: 'sandbox-id' });
        if (r.status !== 200 || r.stdout.trim() !== t.sandboxId) failures.push(`${t.sandboxId}: ${r.status} ${r.stdout}`);
      }
    }
    expect(failures).toEqual([]);
    for (const r of cluster.replicas) {
      const client = gatewayClient(`127.0.0.1:${r.publicPort}`);
      try {
        for (const id of sandboxes) {
          const res = await exec(client, id, ['sandbox-id']);
          expect(res.stdout.trim()).toBe(id);
        }
      } finally {
        client.close();
      }
    }
  }, 90_000);
});
