// The 2026-08 gateway emulator's reconciler (reference §10; compute/mod.rs@v0.0.111): only the lease
// holder sweeps and handles driver events, and it composes each sandbox's phase from its *own*
// session registry. Two in-process replicas sharing one database and JWT key directory.
import { rmSync } from 'node:fs';
import { status as Status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sshViaForwardTcp } from '../../emulator/forward-tcp-client.ts';
import { createJwtKeyDir } from '../../emulator/gateway/gen2/jwt.ts';
import { DRIVER_EVENT_CHANNEL, composeDriverSnapshot, type BackendState } from '../../emulator/gateway/gen2/reconciler.ts';
import type { Gen2Store } from '../../emulator/gateway/gen2/store.ts';
import { startGateway, type Gateway } from '../../emulator/gateway/server.ts';
import { Phase, type PhaseValue } from '../../emulator/proto.ts';
import { startSupervisorFleet, type SupervisorFleet } from '../../emulator/supervisor/fleet.ts';
import { gatewayClient, unary } from '../helpers/grpc-client.ts';
import { createTestDatabase, type TestDatabase } from '../helpers/services.ts';
import { waitUntil } from '../helpers/wait.ts';

describe('snapshot composition (apply_driver_snapshot + ComposedPhase)', () => {
  const P = Phase;
  it('demotes only what upstream demotes', () => {
    const cases: Array<[PhaseValue, BackendState, boolean, PhaseValue, string | null]> = [
      // stored, backend, local session → phase, Ready condition reason written
      [P.READY, 'ready', false, P.PROVISIONING, 'SupervisorNotConnected'],
      [P.READY, 'ready', true, P.READY, 'DependenciesReady'],
      [P.READY, 'pending', false, P.PROVISIONING, null],
      [P.PROVISIONING, 'ready', true, P.READY, 'DependenciesReady'],
      [P.PROVISIONING, 'ready', false, P.PROVISIONING, 'SupervisorNotConnected'],
      [P.UNKNOWN, 'ready', false, P.PROVISIONING, 'SupervisorNotConnected'],
      // Error is terminal; Stopped stays; Stopping stays unless the backend is suspended (then Stopped).
      [P.ERROR, 'ready', false, P.ERROR, null],
      [P.ERROR, 'ready', true, P.ERROR, null],
      [P.STOPPED, 'suspended', false, P.STOPPED, null],
      [P.STOPPED, 'ready', true, P.STOPPED, 'DependenciesReady'],
      [P.STOPPING, 'ready', false, P.STOPPING, 'SupervisorNotConnected'],
      [P.STOPPING, 'suspended', true, P.STOPPED, null],
      // Starting stays Starting unless the holder has the session (then Ready).
      [P.STARTING, 'pending', false, P.STARTING, null],
      [P.STARTING, 'ready', false, P.STARTING, 'SupervisorNotConnected'],
      [P.STARTING, 'ready', true, P.READY, 'DependenciesReady'],
    ];
    for (const [stored, backend, session, phase, reason] of cases) {
      const c = composeDriverSnapshot(stored, backend, session);
      expect({ stored, backend, session, phase: c.phase, reason: c.condition?.reason ?? null }).toEqual({ stored, backend, session, phase, reason });
    }
  });
});

interface Pair {
  db: TestDatabase;
  jwtKeyDir: string;
  gws: Gateway[];
  holder: Gateway;
  other: Gateway;
  store: Gen2Store;
  fleets: SupervisorFleet[];
}

async function startPair(label: string, reconcileIntervalMs: number): Promise<Pair> {
  const db = await createTestDatabase(label);
  const jwtKeyDir = createJwtKeyDir();
  const pair: Pair = { db, jwtKeyDir, gws: [], fleets: [] } as unknown as Pair;
  for (const id of ['ra', 'rb']) {
    pair.gws.push(
      await startGateway({
        databaseUrl: db.url,
        replica: `gateway-${id}`,
        replicaId: id,
        protocol: '2026-08',
        jwtKeyDir,
        lease: { ttlMs: 3_000, renewMs: 500, acquireMs: 200, reconcileIntervalMs },
      }),
    );
  }
  await waitUntil('one lease holder', async () => pair.gws.filter((g) => g.gen2!.reconciler.holds()).length, (n) => n === 1, { timeoutMs: 10_000 });
  pair.holder = pair.gws.find((g) => g.gen2!.reconciler.holds())!;
  pair.other = pair.gws.find((g) => g !== pair.holder)!;
  pair.store = pair.holder.gen2!.store;
  return pair;
}

async function stopPair(pair: Pair | undefined): Promise<void> {
  if (!pair) return;
  for (const f of pair.fleets) await f.stop();
  for (const g of pair.gws) await g.close();
  await pair.db.drop();
  rmSync(pair.jwtKeyDir, { recursive: true, force: true });
}

async function supervise(pair: Pair, gw: Gateway, sandboxIds: string[]): Promise<SupervisorFleet> {
  const fleet = await startSupervisorFleet({
    endpoint: `127.0.0.1:${gw.port}`,
    sandboxIds,
    protocol: '2026-08',
    jwtKeyDir: pair.jwtKeyDir,
    backoff: { initialMs: 100, maxMs: 300 },
  });
  pair.fleets.push(fleet);
  await fleet.waitAllConnected(10_000);
  // The supervisor's policy report (ReportPolicyStatus) rewrites the row right after it connects:
  // a sweep that starts before it lands skips the row or loses its CAS to it (upstream's do too).
  for (const id of sandboxIds) {
    await waitUntil('policy report landed', async () => (await pair.store.sandboxById(id))?.message.status?.current_policy_version, (v) => v === 1, { timeoutMs: 10_000 });
  }
  return fleet;
}

const phaseOf = async (store: Gen2Store, id: string): Promise<PhaseValue | undefined> => (await store.sandboxById(id))?.phase;
const readyReason = async (store: Gen2Store, id: string): Promise<string | undefined> =>
  (await store.sandboxById(id))?.message.status?.conditions?.find((c) => c.type === 'Ready')?.reason;

describe('the holder sweeps with its own session registry', () => {
  let pair: Pair | undefined;
  const ids: Record<string, string> = {};

  beforeAll(async () => {
    // The periodic sweep is far off: each test sweeps when it wants to (sweepNow), so that a sweep
    // never races a supervisor's connect write here (upstream's does; one CAS attempt each).
    pair = await startPair('gen2_reconcile_sweep', 600_000);
    const s = pair.store;
    ids.onHolder = (await s.insertSandbox({ name: 'on-holder' })).id;
    ids.elsewhere = (await s.insertSandbox({ name: 'elsewhere' })).id;
    ids.idle = (await s.insertSandbox({ name: 'idle' })).id;
    for (const [key, phase] of [
      ['stopped', Phase.STOPPED],
      ['errored', Phase.ERROR],
      ['starting', Phase.STARTING],
      ['deleting', Phase.DELETING],
    ] as const) {
      ids[key] = (await s.insertSandbox({ name: key, phase })).id;
    }
    await supervise(pair, pair.holder, [ids.onHolder!]);
    await supervise(pair, pair.other, [ids.elsewhere!]);
    for (const id of [ids.onHolder!, ids.elsewhere!]) {
      await waitUntil('Ready from the connect', () => pair!.store.phaseHistory(id), (w) => w.length === 1 && w[0]?.phase === Phase.READY, { timeoutMs: 5_000 });
    }
  }, 30_000);

  afterAll(() => stopPair(pair));

  it('a sandbox whose session is on another replica is demoted by the holder, and its SSH refused', async () => {
    const p = pair!;
    expect(await p.holder.gen2!.reconciler.sweepNow()).toBe(true);
    expect(await phaseOf(p.store, ids.elsewhere!)).toBe(Phase.PROVISIONING);
    expect(await readyReason(p.store, ids.elsewhere!)).toBe('SupervisorNotConnected');
    const writes = await p.store.phaseHistory(ids.elsewhere!);
    expect(writes.map((w) => [w.replica, w.phase])).toEqual([
      [p.other.replica, Phase.READY],
      [p.holder.replica, Phase.PROVISIONING],
    ]);
    expect(writes[1]!.reason).toBe(
      `reconciler on ${p.holder.replica} (lease holder ${p.holder.gen2!.reconciler.replicaId}), sweep: backend ready, no local session (SupervisorNotConnected)`,
    );
    // Every sandbox-scoped call is refused now, wherever it is sent.
    const tok = await p.store.createSshSession(ids.elsewhere!, 3600);
    const res = await sshViaForwardTcp({ endpoint: `127.0.0.1:${p.other.port}`, sandboxId: ids.elsewhere!, token: tok.token, command: 'sandbox-id', timeoutMs: 20_000 });
    expect({ code: res.grpcCode, details: res.grpcDetails }).toEqual({ code: Status.FAILED_PRECONDITION, details: 'sandbox is not ready' });
  });

  it('the session on the holder stays Ready; Stopped, Error, Starting and Deleting are not demoted', async () => {
    const p = pair!;
    expect(await p.holder.gen2!.reconciler.sweepNow()).toBe(true);
    expect(await p.holder.gen2!.reconciler.sweepNow()).toBe(true);
    // The lease-gain sweep and three more.
    expect(p.holder.gen2!.reconciler.stats()).toMatchObject({ holder: true, sweeps: 4, demotions: 1, conflicts: 0 });
    expect(await phaseOf(p.store, ids.onHolder!)).toBe(Phase.READY);
    expect((await p.store.phaseHistory(ids.onHolder!)).map((w) => w.phase)).toEqual([Phase.READY]);
    for (const [key, phase] of [
      ['stopped', Phase.STOPPED],
      ['errored', Phase.ERROR],
      ['starting', Phase.STARTING],
      ['deleting', Phase.DELETING],
      ['idle', Phase.PROVISIONING],
    ] as const) {
      expect(await phaseOf(p.store, ids[key]!), key).toBe(phase);
      expect(await p.store.phaseHistory(ids[key]!), key).toEqual([]);
    }
    // Deleting is never written; the others are (resource_version moves) without a phase change.
    expect((await p.store.sandboxById(ids.deleting!))?.resourceVersion).toBe(1);
    expect((await p.store.sandboxById(ids.errored!))?.resourceVersion).toBeGreaterThan(1);
    expect(await readyReason(p.store, ids.idle!)).toBe('SupervisorNotConnected');
    expect(p.other.gen2!.reconciler.stats()).toMatchObject({ holder: false, sweeps: 0, snapshotWrites: 0 });
    expect(await p.other.gen2!.reconciler.sweepNow()).toBe(false);
  });

  it('when the lease moves, the new holder sweeps at once and restores Ready for its own sessions', async () => {
    const p = pair!;
    const newHolder = p.other;
    const oldHolder = p.holder;
    await oldHolder.close();
    await waitUntil('the other replica holds the lease', async () => newHolder.gen2!.reconciler.holds(), (h) => h, { timeoutMs: 3_000 });
    const store = newHolder.gen2!.store;
    // The row changes before its instrumentation record is inserted: wait for the record.
    await expect.poll(async () => (await store.phaseHistory(ids.elsewhere!)).at(-1)?.phase, { timeout: 3_000 }).toBe(Phase.READY);
    expect(await phaseOf(store, ids.elsewhere!)).toBe(Phase.READY);
    const last = (await store.phaseHistory(ids.elsewhere!)).at(-1)!;
    expect(last.replica).toBe(newHolder.replica);
    expect(last.reason).toMatch(/^reconciler on gateway-r[ab] \(lease holder r[ab]\), (sweep|watch initial snapshot): backend ready, local session \(DependenciesReady\)$/);
  });
});

describe('driver events reach the holder wherever the lifecycle call landed', () => {
  let pair: Pair | undefined;

  beforeAll(async () => {
    // A sweep only when the lease is gained: whatever happens later comes from driver events.
    pair = await startPair('gen2_reconcile_events', 600_000);
  }, 30_000);

  afterAll(() => stopPair(pair));

  const notify = (id: string, backend: BackendState): Promise<unknown> =>
    pair!.store.pool.query('SELECT pg_notify($1, $2)', [DRIVER_EVENT_CHANNEL, JSON.stringify({ sandboxId: id, event: 'updated', backend })]);

  it('CreateSandbox on the other replica is an event for the holder', async () => {
    const p = pair!;
    const client = gatewayClient(`127.0.0.1:${p.other.port}`);
    try {
      const before = p.holder.gen2!.reconciler.stats().driverEvents;
      await unary(client, 'CreateSandbox', { spec: {}, name: 'via-other' });
      await expect.poll(() => p.holder.gen2!.reconciler.stats().driverEvents, { timeout: 3_000 }).toBe(before + 1);
      expect(p.other.gen2!.reconciler.stats().driverEvents).toBe(0);
    } finally {
      client.close();
    }
  });

  it('a backend-ready event demotes a sandbox whose session is elsewhere, not one whose session is on the holder', async () => {
    const p = pair!;
    const away = (await p.store.insertSandbox({ name: 'away' })).id;
    const home = (await p.store.insertSandbox({ name: 'home' })).id;
    await supervise(p, p.other, [away]);
    await supervise(p, p.holder, [home]);
    for (const id of [away, home]) await expect.poll(() => phaseOf(p.store, id), { timeout: 5_000 }).toBe(Phase.READY);
    await notify(away, 'ready');
    await notify(home, 'ready');
    await expect.poll(async () => (await p.store.phaseHistory(away)).at(-1)?.phase, { timeout: 3_000 }).toBe(Phase.PROVISIONING);
    expect(await phaseOf(p.store, away)).toBe(Phase.PROVISIONING);
    const last = (await p.store.phaseHistory(away)).at(-1)!;
    expect(last.reason).toBe(
      `reconciler on ${p.holder.replica} (lease holder ${p.holder.gen2!.reconciler.replicaId}), driver event (updated): backend ready, no local session (SupervisorNotConnected)`,
    );
    expect(await phaseOf(p.store, home)).toBe(Phase.READY);
    expect((await p.store.phaseHistory(home)).map((w) => w.phase)).toEqual([Phase.READY]);
  });
});
