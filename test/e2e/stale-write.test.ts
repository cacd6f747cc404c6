// The cross-replica stale `Provisioning` write (reference §6, "Cross-replica consequences") and the
// fenced handoff that prevents it (DESIGN §4). A supervisor's connection to the owner X is partitioned
// (X never learns it is gone), the supervisor reconnects through Y, and only afterwards does X see
// the old connection die. Fenced, X's gateway has already written its disconnect before Y's gateway
// wrote Ready; unfenced (`--handoff-mode off`), X's late write demotes the sandbox Y serves.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cluster } from '../../emulator/cluster.ts';
import { GatewayStore, type PhaseWrite } from '../../emulator/gateway/store.ts';
import { startSwitchableRelay, type SwitchableRelay } from '../../emulator/pausable-relay.ts';
import { Phase } from '../../emulator/proto.ts';
import { startSandboxSshServer, type SandboxSshServer } from '../../emulator/supervisor/ssh-server.ts';
import { SupervisorEmulator } from '../../emulator/supervisor/supervisor.ts';
import { sleep, waitFor } from '../ownership/support.ts';
import { TEST_REDIS_URL, createTestDatabase, testRedisPrefix, type TestDatabase } from '../helpers/services.ts';
import { sshViaGateway } from '../../emulator/ssh-client.ts';

/** After the partition heals, how long a late disconnect write gets to land. */
const LATE_WRITE_WAIT_MS = 300;
const FENCED_REPS = 50;
const UNFENCED_MAX_REPS = 20;

interface Env {
  db: TestDatabase;
  store: GatewayStore;
  cluster: Cluster;
  ssh: SandboxSshServer;
  relay: SwitchableRelay;
  supervisor: SupervisorEmulator;
  sandbox: string;
}

interface MoveResult {
  from: string;
  to: string;
  /** Phase writes for the sandbox since the move started. */
  writes: PhaseWrite[];
  /** A PROVISIONING written after the new owner's READY. */
  hazard: boolean;
  /** PROVISIONING writes that landed before the new owner's READY (fenced, harmless). */
  fencedProvisioning: number;
  phase: number | undefined;
  sshStatus: number;
  sshStdout: string;
}

async function ownerOf(env: Env): Promise<string | undefined> {
  const res = await env.store.pool.query<{ replica_id: string }>('SELECT replica_id FROM ohs_owners WHERE sandbox_id = $1', [env.sandbox]);
  return res.rows[0]?.replica_id;
}

async function lastSeq(env: Env): Promise<number> {
  const history = await env.store.phaseHistory(env.sandbox);
  return history.at(-1)?.seq ?? 0;
}

async function setUp(label: string, extraArgs: string[]): Promise<Env> {
  const parts: Partial<Env> = {};
  try {
    parts.db = await createTestDatabase(label);
    parts.store = new GatewayStore(parts.db.url);
    await parts.store.migrate();
    parts.cluster = await Cluster.start({
      replicas: 2,
      databaseUrl: parts.db.url,
      sidecars: { redisUrl: TEST_REDIS_URL, redisKeyPrefix: testRedisPrefix(label), extraArgs },
    });
    parts.sandbox = (await parts.store.createSandbox()).id;
    parts.ssh = await startSandboxSshServer({ sandboxId: parts.sandbox });
    parts.relay = await startSwitchableRelay({ host: '127.0.0.1', port: parts.cluster.replica(0).publicPort });
    parts.supervisor = new SupervisorEmulator({
      endpoint: `127.0.0.1:${parts.relay.port}`,
      sandboxId: parts.sandbox,
      sshPort: parts.ssh.port,
      backoff: { initialMs: 50, maxMs: 50 },
    });
    parts.supervisor.start();
    await parts.supervisor.waitConnected(15_000);
    const env = parts as Env;
    await waitFor('r0 to own the sandbox', async () => (await ownerOf(env)) === 'r0', 10_000);
    await waitFor('the first Ready', async () => (await env.store.getSandbox(env.sandbox))?.phase === Phase.READY, 10_000);
    return env;
  } catch (err) {
    await tearDown(parts);
    throw err;
  }
}

async function tearDown(env: Partial<Env> | undefined): Promise<void> {
  if (!env) return;
  await env.supervisor?.stop().catch(() => undefined);
  await env.relay?.close().catch(() => undefined);
  await env.ssh?.close().catch(() => undefined);
  await env.cluster?.close().catch(() => undefined);
  await env.store?.close().catch(() => undefined);
  await env.db?.drop().catch(() => undefined);
}

/**
 * One ownership move X → Y under a partition: the supervisor's connection to X freezes, the supervisor
 * reconnects (the relay now leads to Y), and only once Y owns the sandbox and Y's gateway has written
 * Ready does X's side see the old connection reset.
 */
async function moveOnce(env: Env, fromIndex: number, toIndex: number): Promise<MoveResult> {
  const x = env.cluster.replica(fromIndex);
  const y = env.cluster.replica(toIndex);
  const yGateway = `gateway-${y.name}`;

  // Precondition: the supervisor is connected through the relay to X, and X owns the sandbox.
  await waitFor(`the supervisor connected to ${x.name}`, () => env.supervisor.connected && env.relay.activeConnections() === 1, 5000);
  await waitFor(`${x.name} to own the sandbox`, async () => (await ownerOf(env)) === x.name, 5000);
  const since = await lastSeq(env);
  const sessions = env.supervisor.sessionsStarted;

  env.relay.freeze();
  env.relay.setTarget({ host: '127.0.0.1', port: y.publicPort });
  env.supervisor.dropConnection();

  await waitFor(`a new supervisor session (via ${y.name})`, () => env.supervisor.sessionsStarted > sessions, 15_000);
  await waitFor(`${y.name} to own the sandbox`, async () => (await ownerOf(env)) === y.name, 10_000);
  // Y's gateway writes Ready just after accepting the session; let it land before X can write.
  await waitFor(
    `${yGateway} to write Ready`,
    async () => (await env.store.phaseHistory(env.sandbox)).some((w) => w.seq > since && w.replica === yGateway && w.phase === Phase.READY),
    5000,
  );

  env.relay.destroyFrozen();
  await sleep(LATE_WRITE_WAIT_MS);

  const writes = (await env.store.phaseHistory(env.sandbox)).filter((w) => w.seq > since);
  let lastReady = -1;
  writes.forEach((w, i) => {
    if (w.replica === yGateway && w.phase === Phase.READY) lastReady = i;
  });
  const hazard = writes.slice(lastReady + 1).some((w) => w.phase === Phase.PROVISIONING);
  const fencedProvisioning = writes.slice(0, Math.max(lastReady, 0)).filter((w) => w.phase === Phase.PROVISIONING).length;
  const phase = (await env.store.getSandbox(env.sandbox))?.phase;

  const { token } = await env.store.createSshSession(env.sandbox, 3600);
  const ssh = await sshViaGateway({ host: '127.0.0.1', port: y.publicPort, sandboxId: env.sandbox, token, command: 'sandbox-id', timeoutMs: 10_000 });
  return { from: x.name, to: y.name, writes, hazard, fencedProvisioning, phase, sshStatus: ssh.status, sshStdout: ssh.stdout.trim() };
}

/** `ohs_handoffs_total` by reason, summed over the cluster's sidecars (for the report only). */
async function handoffReasons(env: Env): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const r of env.cluster.replicas) {
    if (!r.sidecarPorts) continue;
    const text = await fetch(`http://127.0.0.1:${r.sidecarPorts.admin}/metrics`)
      .then((res) => res.text())
      .catch(() => '');
    for (const m of text.matchAll(/^ohs_handoffs_total\{reason="([\w-]+)"\} (\d+)/gm)) out[m[1]!] = (out[m[1]!] ?? 0) + Number(m[2]);
  }
  return out;
}

function describeWrites(writes: PhaseWrite[]): string {
  return writes.map((w) => `${w.replica}:${w.phase === Phase.READY ? 'READY' : w.phase === Phase.PROVISIONING ? 'PROVISIONING' : w.phase}`).join(' → ');
}

describe('fenced handoff (default): a partitioned old owner never overwrites the new owner\'s Ready', () => {
  let env: Env | undefined;

  beforeAll(async () => {
    env = await setUp('stale_write_fenced', []);
  }, 60_000);

  afterAll(async () => {
    await tearDown(env);
  }, 30_000);

  it(`${FENCED_REPS} partitioned moves between two replicas: no stale Provisioning, SSH works after each`, async () => {
    const e = env!;
    const started = Date.now();
    const hazards: string[] = [];
    const sshFailures: string[] = [];
    let fenced = 0;
    for (let i = 0; i < FENCED_REPS; i++) {
      const r = await moveOnce(e, i % 2, (i + 1) % 2);
      fenced += r.fencedProvisioning;
      if (r.hazard || r.phase !== Phase.READY) {
        hazards.push(`rep ${i + 1} ${r.from}→${r.to}: phase ${r.phase}; ${describeWrites(r.writes)}`);
        // Diagnosis: what the sidecars said about the handoff (warnings only at this log level).
        for (const rep of e.cluster.replicas) {
          for (const line of rep.sidecar?.output.slice(-20) ?? []) if (/handoff|release|disconnect write/.test(line)) console.log(`[${rep.name}] ${line}`);
        }
      }
      if (r.sshStatus !== 200 || r.sshStdout !== e.sandbox) sshFailures.push(`rep ${i + 1} ${r.from}→${r.to}: status ${r.sshStatus} stdout ${JSON.stringify(r.sshStdout)}`);
    }
    console.log(
      `stale-write (fenced): ${FENCED_REPS} reps in ${((Date.now() - started) / 1000).toFixed(1)} s, ${hazards.length} hazards, ` +
        `${fenced} Provisioning writes landed before the new owner's Ready (fenced), ${FENCED_REPS - sshFailures.length}/${FENCED_REPS} SSH ok; ` +
        `handoffs ${JSON.stringify(await handoffReasons(e))}`,
    );
    expect(hazards).toEqual([]);
    expect(sshFailures).toEqual([]);
  }, 85_000);
});

describe('--handoff-mode off: the same partition produces the stale Provisioning write', () => {
  let env: Env | undefined;

  beforeAll(async () => {
    env = await setUp('stale_write_unfenced', ['--handoff-mode', 'off']);
  }, 60_000);

  afterAll(async () => {
    await tearDown(env);
  }, 30_000);

  it('a late disconnect from the partitioned old owner demotes the sandbox and SSH gets 412', async () => {
    const e = env!;
    let hit: { rep: number; result: MoveResult } | undefined;
    for (let i = 0; i < UNFENCED_MAX_REPS && !hit; i++) {
      const r = await moveOnce(e, i % 2, (i + 1) % 2);
      if (r.hazard) hit = { rep: i + 1, result: r };
    }
    expect(hit, `no stale Provisioning in ${UNFENCED_MAX_REPS} unfenced moves`).toBeDefined();
    const { rep, result } = hit!;
    console.log(
      `stale-write (handoff off): hazard after ${rep} rep(s) (${result.from}→${result.to}): ${describeWrites(result.writes)}; ` +
        `phase ${result.phase}; SSH via ${result.to} status ${result.sshStatus}`,
    );
    expect(result.phase).toBe(Phase.PROVISIONING);
    expect(result.sshStatus).toBe(412);
  }, 60_000);
});
