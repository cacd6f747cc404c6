// Today's gateway (2026-08 generation) behind sidecars: three replicas, each gateway emulator behind
// its sidecar, a round-robin Service in front, supervisors and clients landing anywhere. Every
// owner-bound call of reference §2.9 (HEAD) reaches the owner from any replica.
import { status as Status, type ClientDuplexStream } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cluster, type Replica } from '../../emulator/cluster.ts';
import { sshViaForwardTcp } from '../../emulator/forward-tcp-client.ts';
import { Gen2Store } from '../../emulator/gateway/gen2/store.ts';
import { Phase, type ExecSandboxEvent } from '../../emulator/proto.ts';
import { startSupervisorFleet, type SupervisorFleet } from '../../emulator/supervisor/fleet.ts';
import { SupervisorEmulator } from '../../emulator/supervisor/supervisor.ts';
import { SandboxJwt } from '../../emulator/gateway/gen2/jwt.ts';
import { startSandboxSshServer } from '../../emulator/supervisor/ssh-server.ts';
import { gatewayClient, unary, type OpenShellClient } from '../helpers/grpc-client.ts';
import { collectStream, httpGet, wsEcho } from '../helpers/gen2.ts';
import { createTestDatabase, TEST_REDIS_URL, testRedisPrefix, type TestDatabase } from '../helpers/services.ts';
import { waitUntil } from '../helpers/wait.ts';

const SANDBOXES = 9;

let db: TestDatabase;
let store: Gen2Store;
let cluster: Cluster;
let fleet: SupervisorFleet;
const sandboxes: Array<{ id: string; name: string }> = [];

async function ownerOf(sandboxId: string): Promise<string | undefined> {
  const res = await store.pool.query<{ replica_id: string }>('SELECT replica_id FROM ohs_owners WHERE sandbox_id = $1', [sandboxId]);
  return res.rows[0]?.replica_id;
}

/** A replica that does not own the sandbox (its public port, past the Service). */
async function nonOwner(sandboxId: string, not: string[] = []): Promise<Replica> {
  const owner = await ownerOf(sandboxId);
  const r = cluster.replicas.find((x) => x.name !== owner && !not.includes(x.name));
  if (!r) throw new Error('no non-owner replica');
  return r;
}

function clientFor(r: Replica): OpenShellClient {
  return gatewayClient(`127.0.0.1:${r.publicPort}`);
}

beforeAll(async () => {
  db = await createTestDatabase('gen2_routing');
  store = new Gen2Store(db.url);
  await store.migrate();
  cluster = await Cluster.start({
    replicas: 3,
    databaseUrl: db.url,
    protocol: '2026-08',
    echo: process.env.OHS_TEST_ECHO === '1',
    ...(process.env.OHS_TEST_LOG_LEVEL ? { logLevel: process.env.OHS_TEST_LOG_LEVEL } : {}),
    // Ownership must stay where the supervisors connected for the owner-before/after checks; moving
    // sessions for balance has its own test (rebalance.test.ts).
    sidecars: { redisUrl: TEST_REDIS_URL, redisKeyPrefix: testRedisPrefix('gen2_routing'), extraArgs: ['--rebalance', 'off'] },
  });
  for (let i = 0; i < SANDBOXES; i++) {
    const row = await store.createSandbox({ name: `box-${i}` });
    sandboxes.push({ id: row.id, name: row.name });
  }
  fleet = await startSupervisorFleet({ endpoint: cluster.endpoint, sandboxIds: sandboxes.map((s) => s.id), protocol: '2026-08', jwtKeyDir: cluster.jwtKeyDir, echoService: true });
  await fleet.waitAllConnected(30_000);
  for (const s of sandboxes) {
    await waitUntil(`sandbox ${s.name} Ready and owned`, async () => ((await store.getSandbox(s.id))?.phase === Phase.READY ? await ownerOf(s.id) : undefined), (o) => o !== undefined, { timeoutMs: 15_000 });
  }
}, 90_000);

afterAll(async () => {
  await fleet?.stop();
  await cluster?.close();
  await store?.close();
  await db?.drop();
});

describe('2026-08 routing through sidecars', () => {
  it('300/300 ForwardTcp SSH sessions through the Service each reach their own sandbox', async () => {
    const total = 300;
    // Three tokens per sandbox and at most one session per token at a time, so no cap decides.
    const tokens = await Promise.all(sandboxes.flatMap((s) => [0, 1, 2].map(() => store.createSshSession(s.id, 3600))));
    let next = 0;
    let ok = 0;
    const failures: string[] = [];
    const started = Date.now();
    const worker = async (): Promise<void> => {
      for (;;) {
        const i = next++;
        if (i >= total) return;
        const t = tokens[i % tokens.length]!;
        const r = await sshViaForwardTcp({ endpoint: cluster.endpoint, sandboxId: t.sandboxId, token: t.token, command: 'sandbox-id', timeoutMs: 30_000 });
        if (r.grpcCode === null && r.stdout.trim() === t.sandboxId) ok++;
        else failures.push(`${i}: ${r.grpcCode === null ? `stdout ${JSON.stringify(r.stdout)}` : `${Status[r.grpcCode]} ${r.grpcDetails}`}`);
      }
    };
    await Promise.all(Array.from({ length: 9 }, worker));
    console.log(`gen2 through sidecars: ${ok}/${total} ForwardTcp SSH sessions reached their own sandbox in ${Date.now() - started} ms${failures.length ? `; failures: ${failures.slice(0, 5).join('; ')}` : ''}`);
    expect(failures).toEqual([]);
    expect(ok).toBe(total);
  }, 180_000);

  it('interactive exec through a non-owner: stdin in, stdout and exit code back', async () => {
    const s = sandboxes[1]!;
    const via = await nonOwner(s.id);
    const client = clientFor(via);
    try {
      const call = (client.ExecSandboxInteractive as () => ClientDuplexStream<unknown, ExecSandboxEvent>).call(client);
      let out = '';
      let exit: number | null = null;
      const done = new Promise<number>((resolve) => {
        call.on('data', (ev: ExecSandboxEvent) => {
          if (ev.stdout) out += ev.stdout.data.toString();
          if (ev.exit) exit = ev.exit.exit_code;
        });
        call.on('error', () => undefined);
        call.on('status', (st) => resolve(st.code));
      });
      call.write({ start: { sandbox_id: s.id, command: ['cat'] } });
      call.write({ stdin: Buffer.from(`hello ${s.name}\n`) });
      call.end();
      expect(await done).toBe(Status.OK);
      expect(out).toBe(`hello ${s.name}\n`);
      expect(exit).toBe(0);

      const failing = (client.ExecSandboxInteractive as () => ClientDuplexStream<unknown, ExecSandboxEvent>).call(client);
      let code: number | null = null;
      const failed = new Promise<void>((resolve) => {
        failing.on('data', (ev: ExecSandboxEvent) => {
          if (ev.exit) code = ev.exit.exit_code;
        });
        failing.on('error', () => undefined);
        failing.on('status', () => resolve());
      });
      failing.write({ start: { sandbox_id: s.id, command: ['exit', '7'] } });
      failing.end();
      await failed;
      expect(code).toBe(7);
    } finally {
      client.close();
    }
  }, 60_000);

  it('service HTTP GET and WebSocket echo by subdomain through the Service reach the right sandbox', async () => {
    const s = sandboxes[2]!;
    await store.upsertServiceEndpoint({ workspace: 'default', sandboxId: s.id, sandboxName: s.name, service: 'web', targetPort: 8080, domain: true });
    const host = `default--${s.name}--web.openshell.localhost`;
    const [hostName, port] = cluster.endpoint.split(':');
    expect(hostName).toBe('127.0.0.1');
    // Six requests through the round-robin Service: every replica serves some.
    for (let i = 0; i < 6; i++) {
      const res = await httpGet(Number(port), host, `/hello/${i}`);
      expect(res.status).toBe(200);
      const body = JSON.parse(res.body) as { sandboxId: string; path: string };
      expect(body.sandboxId).toBe(s.id);
      expect(body.path).toBe(`/hello/${i}`);
    }
    for (let i = 0; i < 3; i++) {
      const ws = await wsEcho(Number(port), host, ['one', `two-${i}`]);
      expect(ws).toEqual({ status: 101, replies: ['one', `two-${i}`] });
    }
    // An unknown service gets the gateway's own 404, from whichever replica.
    expect((await httpGet(Number(port), `default--nope--web.openshell.localhost`)).status).toBe(404);
  }, 60_000);

  it('StopSandbox by name through a non-owner stops the sandbox, and a watcher on another replica sees it', async () => {
    const s = sandboxes[3]!;
    const owner = await ownerOf(s.id);
    const watchVia = await nonOwner(s.id);
    const stopVia = await nonOwner(s.id, [watchVia.name]);
    const watchClient = clientFor(watchVia);
    const stopClient = clientFor(stopVia);
    try {
      const watching = collectStream<{ sandbox?: { status?: { phase?: number } } }>(watchClient, 'WatchSandbox', { id: s.id, follow_status: true }, {
        untilMs: 20_000,
        stopWhen: (seen) => seen.some((m) => m.sandbox?.status?.phase === Phase.STOPPED || m.sandbox?.status?.phase === Phase.STOPPING),
      });
      // The watch's snapshot arrives first; give it a moment to be in place on the owner.
      await new Promise((r) => setTimeout(r, 300));
      const started = Date.now();
      await unary(stopClient, 'StopSandbox', { name: s.name, workspace: '' });
      const seen = await watching;
      const phases = seen.messages.map((m) => m.sandbox?.status?.phase);
      console.log(`stop by name via ${stopVia.name} (owner ${owner}), watcher via ${watchVia.name} saw phases ${phases.join(',')} in ${Date.now() - started} ms`);
      expect(phases[0]).toBe(Phase.READY);
      expect(phases.some((p) => p === Phase.STOPPED || p === Phase.STOPPING)).toBe(true);
      expect([Phase.STOPPED, Phase.STOPPING]).toContain((await store.getSandbox(s.id))?.phase);
    } finally {
      watchClient.close();
      stopClient.close();
    }
  }, 60_000);

  it('a watch opened through a non-owner before the supervisor connects sees Ready within 2 s of the connect', async () => {
    const row = await store.createSandbox({ name: 'late-box' });
    const watchVia = cluster.replica(0);
    const connectVia = cluster.replica(1);
    const client = clientFor(watchVia);
    const ssh = await startSandboxSshServer({ sandboxId: row.id });
    const jwt = await SandboxJwt.load(cluster.jwtKeyDir!);
    const supervisor = new SupervisorEmulator({
      endpoint: `127.0.0.1:${connectVia.publicPort}`,
      sandboxId: row.id,
      sshPort: ssh.port,
      protocol: '2026-08',
      token: await jwt.mint(row.id),
      logPush: false,
    });
    try {
      let readyAt = 0;
      const watching = collectStream<{ sandbox?: { status?: { phase?: number } } }>(client, 'WatchSandbox', { id: row.id, follow_status: true }, {
        untilMs: 20_000,
        stopWhen: (seen) => {
          const ready = seen.some((m) => m.sandbox?.status?.phase === Phase.READY);
          if (ready && readyAt === 0) readyAt = Date.now();
          return ready;
        },
      });
      await new Promise((r) => setTimeout(r, 500));
      let connectedAt = 0;
      supervisor.once('session', () => {
        connectedAt = Date.now();
      });
      supervisor.start();
      const seen = await watching;
      expect(seen.messages[0]?.sandbox?.status?.phase).toBe(Phase.PROVISIONING);
      expect(readyAt).toBeGreaterThan(0);
      expect(await ownerOf(row.id)).toBe(connectVia.name);
      console.log(`watch via ${watchVia.name} (no owner at open) saw Ready ${readyAt - connectedAt} ms after the supervisor connected via ${connectVia.name}`);
      expect(readyAt - connectedAt).toBeLessThan(2_000);
    } finally {
      client.close();
      await supervisor.stop();
      await ssh.close();
    }
  }, 60_000);

  it("the supervisor's early log push lands on the owner's bus: logs are readable through every replica", async () => {
    for (const s of sandboxes.slice(4, 7)) {
      for (const r of cluster.replicas) {
        const client = clientFor(r);
        try {
          const res = await unary<{ logs: Array<{ message: string }> }>(client, 'GetSandboxLogs', { sandbox_id: s.id, lines: 50 });
          expect(res.logs.map((l) => l.message)).toContain('supervisor starting');
        } finally {
          client.close();
        }
      }
    }
  }, 60_000);

  it('an ownership change moves an open watch to the new owner', async () => {
    const s = sandboxes[7]!;
    const owner = await ownerOf(s.id);
    const watchVia = await nonOwner(s.id);
    const client = clientFor(watchVia);
    try {
      const watching = collectStream<{ sandbox?: { status?: { phase?: number } } }>(client, 'WatchSandbox', { id: s.id, follow_status: true }, {
        untilMs: 30_000,
        stopWhen: (seen) => seen.filter((m) => m.sandbox?.status?.phase === Phase.READY).length >= 2,
      });
      await new Promise((r) => setTimeout(r, 300));
      // The supervisor reconnects through the Service: usually to another replica.
      fleet.supervisors.get(s.id)!.supervisor.dropConnection();
      const seen = await watching;
      const phases = seen.messages.map((m) => m.sandbox?.status?.phase);
      console.log(`watch via ${watchVia.name}: owner ${owner} → ${await ownerOf(s.id)}, phases ${phases.join(',')}`);
      expect(phases.filter((p) => p === Phase.READY).length).toBeGreaterThanOrEqual(2);
    } finally {
      client.close();
    }
  }, 60_000);
});

describe('status the owner cannot tell its watchers', () => {
  it("a phase written by another replica reaches a watch on the owner, and a delete elsewhere ends it", async () => {
    const row = await store.createSandbox({ name: 'foreign-writes' });
    const client = clientFor(cluster.replica(0));
    try {
      const watching = collectStream<{ sandbox?: { status?: { phase?: number } } }>(client, 'WatchSandbox', { id: row.id, follow_status: true }, { untilMs: 20_000 });
      await new Promise((r) => setTimeout(r, 500));
      // Another replica's write (a shadow's connect, a lost compare-and-swap elsewhere): only the
      // writer's own watchers are notified by the gateway (reference §2.8).
      await store.writePhase(row.id, Phase.READY, 'elsewhere', 'test: a foreign write');
      await new Promise((r) => setTimeout(r, 3_500));
      await store.deleteSandboxRow(row.id);
      const seen = await watching;
      const phases = seen.messages.map((m) => m.sandbox?.status?.phase);
      console.log(`watch on a replica that made none of the writes: phases ${phases.join(',')}, ended by the delete: ${!seen.cancelled}`);
      expect(phases).toEqual([Phase.PROVISIONING, Phase.READY]);
      expect(seen.cancelled).toBe(false);
      expect(seen.status?.code).toBe(Status.OK);
    } finally {
      client.close();
    }
  }, 60_000);
});

describe('authentication before any side effect', () => {
  it('1,000 forged Hellos (no token, garbage, another sandbox\'s token) change no ownership and evict nobody', async () => {
    const victim = sandboxes[8]!;
    const other = sandboxes[0]!;
    const ownerBefore = await store.pool.query<{ replica_id: string; epoch: string }>('SELECT replica_id, epoch FROM ohs_owners WHERE sandbox_id = $1', [victim.id]);
    const member = fleet.supervisors.get(victim.id)!;
    const sessionsBefore = member.supervisor.sessionsStarted;
    const sessionBefore = member.supervisor.sessionId;
    const jwt = await SandboxJwt.load(cluster.jwtKeyDir!);
    const otherToken = await jwt.mint(other.id);
    const kinds = [undefined, 'Bearer not-a-jwt', `Bearer ${otherToken}`];
    const codes = new Map<string, number>();
    const clients = cluster.replicas.map((r) => clientFor(r));
    try {
      let next = 0;
      const worker = async (): Promise<void> => {
        for (;;) {
          const i = next++;
          if (i >= 1000) return;
          const auth = kinds[i % kinds.length];
          const md = new (await import('@grpc/grpc-js')).Metadata();
          if (auth) md.set('authorization', auth);
          const client = clients[i % clients.length]!;
          const code = await new Promise<number>((resolve) => {
            const call = (client.ConnectSupervisor as (m: unknown, o: unknown) => ClientDuplexStream<unknown, unknown>).call(client, md, { deadline: Date.now() + 10_000 });
            call.on('data', () => call.cancel());
            call.on('error', () => undefined);
            call.on('status', (st: { code: number }) => resolve(st.code));
            call.write({ hello: { sandbox_id: victim.id, instance_id: `forged-${i}` } });
          });
          const k = Status[code] ?? String(code);
          codes.set(k, (codes.get(k) ?? 0) + 1);
        }
      };
      await Promise.all(Array.from({ length: 25 }, worker));
    } finally {
      for (const c of clients) c.close();
    }
    const ownerAfter = await store.pool.query<{ replica_id: string; epoch: string }>('SELECT replica_id, epoch FROM ohs_owners WHERE sandbox_id = $1', [victim.id]);
    let unverified = 0;
    for (const r of cluster.replicas) {
      const text = await (await fetch(`http://127.0.0.1:${r.sidecarPorts!.admin}/metrics`)).text();
      for (const m of text.matchAll(/^ohs_unverified_hellos_total\{reason="[^"]+"\} (\d+)/gm)) unverified += Number(m[1]);
    }
    console.log(`forged hellos: gateway answers ${JSON.stringify(Object.fromEntries(codes))}; owner ${JSON.stringify(ownerBefore.rows[0])} → ${JSON.stringify(ownerAfter.rows[0])}; supervisor sessions ${sessionsBefore} → ${member.supervisor.sessionsStarted}; ohs_unverified_hellos_total ${unverified}`);
    expect(ownerAfter.rows).toEqual(ownerBefore.rows);
    expect(member.supervisor.sessionsStarted).toBe(sessionsBefore);
    expect(member.supervisor.sessionId).toBe(sessionBefore);
    expect(unverified).toBeGreaterThanOrEqual(1000);
    expect(codes.get('OK')).toBeUndefined();
    const token = await store.createSshSession(victim.id, 3600);
    const r = await sshViaForwardTcp({ endpoint: cluster.endpoint, sandboxId: victim.id, token: token.token, command: 'sandbox-id' });
    expect(r.stdout.trim()).toBe(victim.id);
  }, 120_000);
});

