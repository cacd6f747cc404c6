// An owner replica that goes silent (its node or link gone: its sidecar stopped with SIGSTOP takes
// bytes and answers nothing, not even a PING) while a request for its sandbox is forwarded to it:
// a ForwardTcp on today's gateway generation, a CONNECT tunnel on the 2026-04 one. The ingress PINGs the peer connection the request was
// sent on, finds it silent one PING timeout later, and holds the request for the sandbox's next
// owner; when the supervisor has reconnected elsewhere (here: through the Service, to the ingress's
// own replica) the request is sent there and the SSH session runs. Before, the request stayed open
// on the dead connection until the client gave up (test/deploy/pods-netns.test.ts: "ran into the
// client timeout").
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cluster } from '../../emulator/cluster.ts';
import { forwardClient, openForwardTcp, sshViaForwardTcp } from '../../emulator/forward-tcp-client.ts';
import { Gen2Store } from '../../emulator/gateway/gen2/store.ts';
import { GatewayStore } from '../../emulator/gateway/store.ts';
import type { ManagedProcess } from '../../emulator/process.ts';
import { sshViaGateway } from '../../emulator/ssh-client.ts';
import { startSupervisorFleet, type SupervisorFleet } from '../../emulator/supervisor/fleet.ts';
import { metric } from '../adversarial/support.ts';
import { gatewayClient, unary } from '../helpers/grpc-client.ts';
import { TEST_REDIS_URL, createTestDatabase, testRedisPrefix, type TestDatabase } from '../helpers/services.ts';
import { waitUntil } from '../helpers/wait.ts';

const PING_TIMEOUT_MS = 1_000;
const CLIENT_TIMEOUT_MS = 40_000;
/** The sidecar's default --peer-ping-interval-ms; --h2-ping-interval-ms (client connections) stays at 30 s. */
const PEER_PING_INTERVAL_MS = 5_000;

interface Rig {
  db: TestDatabase;
  cluster: Cluster;
  fleet: SupervisorFleet;
  sandboxId: string;
  /** A fresh SSH session token for the sandbox. */
  token(): Promise<string>;
  /** SSH through replica `i`: ok when the command ran on the sandbox. */
  ssh(i: number, timeoutMs?: number): Promise<{ ok: boolean; detail: string; ms: number }>;
  close(): Promise<void>;
}

/**
 * Two replicas; the Service sends everything to r1 while the supervisor connects, so r1 owns the
 * sandbox; then one SSH through r0, so the ingress holds a live peer connection to r1.
 */
async function startRig(label: string, protocol: '2026-04' | '2026-08'): Promise<Rig> {
  const db = await createTestDatabase(label);
  const gen2 = protocol === '2026-08' ? new Gen2Store(db.url, { poolSize: 2 }) : undefined;
  const seed = gen2 ? undefined : new GatewayStore(db.url);
  await (gen2 ?? seed)!.migrate();
  const cluster = await Cluster.start({
    replicas: 2,
    databaseUrl: db.url,
    protocol,
    logLevel: 'info',
    sidecars: { redisUrl: TEST_REDIS_URL, redisKeyPrefix: testRedisPrefix(label), extraArgs: ['--h2-ping-timeout-ms', String(PING_TIMEOUT_MS)] },
  });
  cluster.balancer.setBackends([{ host: '127.0.0.1', port: cluster.replica(1).publicPort }]);
  let sandboxId: string;
  let fleet: SupervisorFleet;
  if (gen2) {
    // The compute-driver stand-in starts the supervisor, dialling the Service, when the sandbox is made.
    fleet = await startSupervisorFleet({ endpoint: cluster.endpoint, sandboxIds: [], protocol, watchDatabaseUrl: db.url, backoff: { initialMs: 100, maxMs: 300 } });
    const client = gatewayClient(cluster.endpoint);
    try {
      sandboxId = (await unary<{ sandbox: { metadata: { id: string } } }>(client, 'CreateSandbox', { spec: {}, name: label })).sandbox.metadata.id;
    } finally {
      client.close();
    }
    await waitUntil('the supervisor started', async () => fleet.supervisors.size, (n) => n === 1, { timeoutMs: 15_000 });
  } else {
    sandboxId = (await seed!.createSandbox()).id;
    fleet = await startSupervisorFleet({ endpoint: cluster.endpoint, sandboxIds: [sandboxId], backoff: { initialMs: 100, maxMs: 300 } });
  }
  await fleet.waitAllConnected(20_000);
  const pool = (gen2 ?? seed)!.pool;
  const owner = async (): Promise<string | undefined> =>
    (await pool.query<{ replica_id: string }>('SELECT replica_id FROM ohs_owners WHERE sandbox_id = $1', [sandboxId])).rows[0]?.replica_id;
  await waitUntil('r1 owns the sandbox', owner, (o) => o === 'r1', { timeoutMs: 10_000 });
  const token = async (): Promise<string> => (await (gen2 ?? seed)!.createSshSession(sandboxId, 3600)).token;
  const ssh = async (i: number, timeoutMs = 20_000): Promise<{ ok: boolean; detail: string; ms: number }> => {
    const tk = await token();
    const started = Date.now();
    const port = cluster.replica(i).publicPort;
    if (gen2) {
      const r = await sshViaForwardTcp({ endpoint: `127.0.0.1:${port}`, sandboxId, token: tk, command: 'sandbox-id', timeoutMs });
      const ok = r.grpcCode === null && r.stdout.trim() === sandboxId;
      return { ok, detail: ok ? 'ok' : `${r.grpcCode ?? 'no status'} ${r.grpcDetails} ${r.stderr.slice(0, 200)}`, ms: Date.now() - started };
    }
    const r = await sshViaGateway({ host: '127.0.0.1', port, sandboxId, token: tk, command: 'sandbox-id', timeoutMs }).catch((err: unknown) => ({ status: -1, body: String(err), stdout: '' }));
    const ok = r.status === 200 && r.stdout.trim() === sandboxId;
    return { ok, detail: ok ? 'ok' : `${r.status} ${r.body.slice(0, 200)}`, ms: Date.now() - started };
  };
  await waitUntil('SSH through r0 (forwarded to r1)', () => ssh(0), (r) => r.ok, { timeoutMs: 20_000 });
  return {
    db,
    cluster,
    fleet,
    sandboxId,
    token,
    ssh,
    async close() {
      const sidecar = cluster.replica(1).sidecar;
      if (sidecar?.alive() && sidecar.child.pid) process.kill(sidecar.child.pid, 'SIGCONT');
      await fleet.stop();
      await cluster.close();
      await (gen2 ?? seed)!.close();
      await db.drop();
    },
  };
}

/**
 * r1's sidecar stopped (SIGSTOP) with the Service pointed at r0, an SSH session started through r0,
 * the ingress seen to count the silent owner; then r1's sidecar killed, so the supervisor reconnects
 * through the Service to r0. The session must run on r0.
 */
async function silentOwnerThenMove(rig: Rig, cls: string, logLine: string): Promise<void> {
  const { cluster } = rig;
  const ingressAdmin = cluster.replica(0).sidecarPorts!.admin;
  const silentLabels = { class: cls, peer: 'r1', outcome: 'silent' };
  const silentBefore = (await metric(ingressAdmin, 'ohs_forwards_total', silentLabels)).sum;
  const owner = cluster.replica(1).sidecar as ManagedProcess;

  // r1's node goes silent; the Service stops sending to it (readiness would).
  process.kill(owner.child.pid as number, 'SIGSTOP');
  cluster.balancer.setBackends([{ host: '127.0.0.1', port: cluster.replica(0).publicPort }]);
  const stoppedAt = Date.now();
  const ssh = rig.ssh(0, CLIENT_TIMEOUT_MS);

  // The ingress finds the peer connection silent a PING timeout (and a tick or two) later.
  await waitUntil('the ingress counted the silent owner', () => metric(ingressAdmin, 'ohs_forwards_total', silentLabels), (m) => m.sum === silentBefore + 1, {
    timeoutMs: 15_000,
  });
  const foundSilentMs = Date.now() - stoppedAt;
  const r0 = cluster.replica(0).sidecar as ManagedProcess;
  expect(r0.output.some((l) => l.includes(logLine))).toBe(true);

  // The supervisor's connection dies with r1's process and it reconnects through the Service, to r0.
  await cluster.kill(1, 'SIGKILL', 'sidecar');
  const r = await ssh;
  console.log(`silent owner (${cls}): found silent after ${foundSilentMs} ms (PING timeout ${PING_TIMEOUT_MS} ms); the held SSH session ran on the next owner ${Date.now() - stoppedAt} ms after the stop: ${r.detail}`);
  expect(r.detail).toBe('ok');
  expect(r.ms).toBeLessThan(CLIENT_TIMEOUT_MS);
  expect(r0.output.some((l) => l.includes('owner appeared; releasing held request') && l.includes(rig.sandboxId))).toBe(true);
}

/**
 * An SSH relay forwarded through r0 to r1 and answered (the sandbox's banner came back), then left
 * idle, as while a user reads; r1's sidecar stopped. No new request PINGs the peer connection, so
 * only its silence does: the ingress must cut the client's stream within the peer PING interval plus
 * the PING timeout, not the 30 s of client connections. r1 then resumes, and is served again.
 */
async function idleRelayOnSilentPeer(rig: Rig): Promise<void> {
  const { cluster } = rig;
  const ingressAdmin = cluster.replica(0).sidecarPorts!.admin;
  const pingTimeouts = (): Promise<{ sum: number }> => metric(ingressAdmin, 'ohs_protections_total', { reason: 'ping_timeout' });
  const before = (await pingTimeouts()).sum;
  const client = forwardClient(`127.0.0.1:${cluster.replica(0).publicPort}`);
  const owner = cluster.replica(1).sidecar as ManagedProcess;
  try {
    const fwd = openForwardTcp(client, { sandboxId: rig.sandboxId, token: await rig.token() });
    const banner = await new Promise<string>((resolve, reject) => {
      fwd.socket.once('data', (b: Buffer) => resolve(b.toString('latin1')));
      fwd.socket.once('error', reject);
    });
    expect(banner.startsWith('SSH-2.0-')).toBe(true);
    fwd.socket.on('error', () => undefined); // the cut is read from the call's status below

    process.kill(owner.child.pid as number, 'SIGSTOP');
    const stoppedAt = Date.now();
    const status = await Promise.race([fwd.status, new Promise<undefined>((r) => setTimeout(() => r(undefined), 20_000))]);
    const cutMs = Date.now() - stoppedAt;
    process.kill(owner.child.pid as number, 'SIGCONT');
    console.log(`silent peer under an idle relay: the client's stream ended ${cutMs} ms after the stop (peer PING interval ${PEER_PING_INTERVAL_MS} ms, timeout ${PING_TIMEOUT_MS} ms): ${status ? `code ${status.code} ${status.details}` : 'still open after 20 s'}`);
    expect(status).toBeDefined();
    expect(status!.code).not.toBe(0);
    // Ticks are a second apart: the last bytes are seen up to a tick late, the silence and the PING's
    // wait each end at a tick (8.1 s measured). The 30 s of --h2-ping-interval-ms is far beyond this.
    expect(cutMs).toBeLessThan(PEER_PING_INTERVAL_MS + PING_TIMEOUT_MS + 6_000);
    expect((await pingTimeouts()).sum).toBeGreaterThan(before);
    const ingress = cluster.replica(0).sidecar as ManagedProcess;
    expect(ingress.output.some((l) => l.includes('upstream connection answered no PING; destroyed, its streams end') && l.includes(`:${cluster.replica(1).sidecarPorts!.peer}`))).toBe(true);
  } finally {
    client.close();
    process.kill(owner.child.pid as number, 'SIGCONT');
  }
  // r1 resumed: a fresh connection from r0 reaches it again.
  await waitUntil('SSH through r0 after r1 resumed', () => rig.ssh(0), (r) => r.ok, { timeoutMs: 30_000 });
}

const CASES = [
  {
    title: "today's gateway (2026-08): ForwardTcp",
    protocol: '2026-08',
    cls: 'tcp-forward',
    it: 'a ForwardTcp sent to a silent owner is held for the next owner and served there, not left open until the client gives up',
    line: 'owner replica went silent before a response; holding the request for the next owner',
  },
  {
    title: 'the 2026-04 gateway: CONNECT tunnel',
    protocol: '2026-04',
    cls: 'ssh-tunnel',
    it: 'a tunnel sent to a silent owner is held for the next owner and served there',
    line: 'owner replica went silent before answering the tunnel; holding it for the next owner',
  },
] as const;

for (const c of CASES) {
  describe(c.title, () => {
    let rig: Rig | undefined;
    beforeAll(async () => {
      rig = await startRig(`silent_owner_${c.protocol.replace('-', '_')}`, c.protocol);
    }, 120_000);
    afterAll(() => rig?.close());

    if (c.protocol === '2026-08') {
      it('an answered relay left idle on a peer that goes silent is cut within the peer PING interval plus its timeout', async () => {
        await idleRelayOnSilentPeer(rig!);
      }, 90_000);
    }

    it(c.it, async () => {
      await silentOwnerThenMove(rig!, c.cls, c.line);
    }, 90_000);
  });
}
