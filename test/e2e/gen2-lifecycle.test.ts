// 2026-08 gateway emulator: sandboxes by name + workspace through the compute-driver stand-in,
// Stop/Start/Delete and their phase writes, watch and log semantics, CAS phase writes and the skip
// rules (reference §2.8, §2.9, §8).
import { randomUUID } from 'node:crypto';
import { status as Status, type ClientWritableStream } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mintSandboxToken } from '../../emulator/gateway/gen2/jwt.ts';
import { decideSessionPhase } from '../../emulator/gateway/gen2/phase.ts';
import type { Gen2Store } from '../../emulator/gateway/gen2/store.ts';
import { startGateway, type Gateway } from '../../emulator/gateway/server.ts';
import { Phase } from '../../emulator/proto.ts';
import { startSupervisorFleet, type SupervisorFleet } from '../../emulator/supervisor/fleet.ts';
import { bearer, collectStream, failure, unaryMd } from '../helpers/gen2.ts';
import { gatewayClient, unary, type OpenShellClient } from '../helpers/grpc-client.ts';
import { createTestDatabase, type TestDatabase } from '../helpers/services.ts';

interface SandboxMsg {
  metadata: { id: string; name: string; workspace: string; resource_version: number };
  status: { phase: number } | null;
}
type StreamEvent = { sandbox?: SandboxMsg | null; log?: { message: string; source: string } | null };

let db: TestDatabase;
let gw: Gateway;
let store: Gen2Store;
let fleet: SupervisorFleet;
let client: OpenShellClient;

const phaseOf = async (name: string, workspace = ''): Promise<number | undefined> =>
  (await unary<{ sandbox: SandboxMsg }>(client, 'GetSandbox', { name, workspace })).sandbox.status?.phase;

async function createReady(name: string, workspace = ''): Promise<SandboxMsg> {
  const { sandbox } = await unary<{ sandbox: SandboxMsg }>(client, 'CreateSandbox', { spec: {}, name, workspace });
  await expect.poll(() => phaseOf(name, workspace), { timeout: 15_000 }).toBe(Phase.READY);
  return sandbox;
}

function push(md: ReturnType<typeof bearer>, batches: Array<{ sandbox_id: string; logs: Array<Record<string, unknown>> }>): Promise<void> {
  return new Promise((resolve, reject) => {
    const call = (client.PushSandboxLogs as (md: unknown, cb: (e: Error | null) => void) => ClientWritableStream<unknown>).call(client, md, (err) =>
      err ? reject(err) : resolve(),
    );
    for (const b of batches) call.write(b);
    call.end();
  });
}

beforeAll(async () => {
  db = await createTestDatabase('gen2_lifecycle');
  gw = await startGateway({ databaseUrl: db.url, replica: 'gw-life', protocol: '2026-08' });
  store = gw.gen2!.store;
  // The compute-driver stand-in: a supervisor starts for every sandbox CreateSandbox makes.
  fleet = await startSupervisorFleet({
    endpoint: `127.0.0.1:${gw.port}`,
    sandboxIds: [],
    protocol: '2026-08',
    watchDatabaseUrl: db.url,
    backoff: { initialMs: 100, maxMs: 300 },
  });
  client = gatewayClient(`127.0.0.1:${gw.port}`);
});

afterAll(async () => {
  client?.close();
  await fleet?.stop();
  await gw?.close();
  await db?.drop();
});

describe('2026-08 sandboxes by name and workspace', () => {
  it('CreateSandbox hands the token to the driver stand-in and the sandbox becomes Ready', async () => {
    const s = await createReady('one');
    expect(s.metadata.workspace).toBe('default');
    expect(s.status?.phase).toBe(Phase.PROVISIONING);
    expect(fleet.supervisors.has(s.metadata.id)).toBe(true);
    // Names are unique per workspace.
    expect(await failure(unary(client, 'CreateSandbox', { spec: {}, name: 'one' }))).toEqual({ code: Status.ALREADY_EXISTS, details: "sandbox 'one' already exists" });
    const other = await createReady('one', 'team-b');
    expect(other.metadata.workspace).toBe('team-b');
    expect(await failure(unary(client, 'GetSandbox', { name: 'one', workspace: 'team-c' }))).toMatchObject({ code: Status.NOT_FOUND });
    const listed = await unary<{ sandboxes: SandboxMsg[] }>(client, 'ListSandboxes', { workspace: 'team-b' });
    expect(listed.sandboxes.map((x) => x.metadata.name)).toEqual(['one']);
    const all = await unary<{ sandboxes: SandboxMsg[] }>(client, 'ListSandboxes', { all_workspaces: true });
    expect(all.sandboxes.length).toBeGreaterThanOrEqual(2);
  });

  it('Stop disconnects the local session and stays Stopped; Start is Ready once the supervisor reconnects', async () => {
    const s = await createReady('stoppable');
    const id = s.metadata.id;
    const tok = await unary<{ token: string }>(client, 'CreateSshSession', { sandbox_id: id });
    const stopped = await unary<{ sandbox: SandboxMsg }>(client, 'StopSandbox', { name: 'stoppable', workspace: '' });
    expect(stopped.sandbox.status?.phase).toBe(Phase.STOPPED);
    expect(await store.getSshSession(tok.token)).toBeNull();
    // The supervisor reconnects (it never learns of the stop), but the connect write is skipped.
    const sup = fleet.supervisors.get(id)!.supervisor;
    await expect.poll(() => sup.sessionsStarted, { timeout: 5000 }).toBeGreaterThanOrEqual(2);
    await new Promise((r) => setTimeout(r, 300));
    expect(await phaseOf('stoppable')).toBe(Phase.STOPPED);
    expect(await failure(unary(client, 'StopSandbox', { name: 'nope' }))).toMatchObject({ code: Status.NOT_FOUND });
    expect(await failure(unary(client, 'StartSandbox', { name: 'one' }))).toBeNull(); // Ready: a no-op

    const started = await unary<{ sandbox: SandboxMsg }>(client, 'StartSandbox', { name: 'stoppable', workspace: 'default' });
    expect(started.sandbox.status?.phase).toBe(Phase.STARTING);
    await expect.poll(() => phaseOf('stoppable'), { timeout: 10_000 }).toBe(Phase.READY);
    const phases = (await store.phaseHistory(id)).map((w) => w.phase);
    expect(phases).toEqual([Phase.READY, Phase.STOPPING, Phase.STOPPED, Phase.STARTING, Phase.READY]);
    expect(await failure(unary(client, 'StartSandbox', { name: 'one', workspace: 'team-b' }))).toBeNull();
  });

  it('Delete removes the row and ends a status watch; unknown names are NOT_FOUND', async () => {
    const s = await createReady('doomed');
    const watch = collectStream<StreamEvent>(client, 'WatchSandbox', { id: s.metadata.id, follow_status: true }, { untilMs: 10_000 });
    await new Promise((r) => setTimeout(r, 300));
    expect(await unary(client, 'DeleteSandbox', { name: 'doomed' })).toEqual({ deleted: true });
    const res = await watch;
    expect(res.cancelled).toBe(false);
    expect(res.status?.code).toBe(Status.OK);
    expect(res.messages.at(-1)?.sandbox?.status?.phase).toBe(Phase.DELETING);
    expect(await store.sandboxById(s.metadata.id)).toBeNull();
    expect(await failure(unary(client, 'DeleteSandbox', { name: 'doomed' }))).toMatchObject({ code: Status.NOT_FOUND });
  });
});

describe('2026-08 watch and logs', () => {
  it('WatchSandbox: snapshot first always, never ends without follow flags, NOT_FOUND for unknown ids', async () => {
    const s = await createReady('watched');
    const idle = await collectStream<StreamEvent>(client, 'WatchSandbox', { id: s.metadata.id }, { untilMs: 1500 });
    expect(idle.cancelled).toBe(true);
    expect(idle.messages).toHaveLength(1);
    expect(idle.messages[0]?.sandbox?.metadata.id).toBe(s.metadata.id);
    const unknown = await collectStream<StreamEvent>(client, 'WatchSandbox', { id: randomUUID(), follow_status: true });
    expect(unknown.status?.code).toBe(Status.NOT_FOUND);
  });

  it('stop_on_terminal stops only on Ready', async () => {
    const ready = await createReady('terminal');
    const r = await collectStream<StreamEvent>(client, 'WatchSandbox', { id: ready.metadata.id, follow_status: true, stop_on_terminal: true }, { untilMs: 5000 });
    expect(r.cancelled).toBe(false);
    expect(r.messages).toHaveLength(1);
    // An Error sandbox is terminal for the CLI but not for stop_on_terminal.
    const err = await store.createSandbox({ name: 'broken', phase: Phase.ERROR });
    const e = await collectStream<StreamEvent>(client, 'WatchSandbox', { id: err.id, follow_status: true, stop_on_terminal: true }, { untilMs: 1500 });
    expect(e.cancelled).toBe(true);
    // Watch opened before the supervisor connects (as `openshell sandbox create` does) ends at Ready.
    const fresh = await unary<{ sandbox: SandboxMsg }>(client, 'CreateSandbox', { spec: {}, name: 'fresh' });
    const f = await collectStream<StreamEvent>(client, 'WatchSandbox', { id: fresh.sandbox.metadata.id, follow_status: true, stop_on_terminal: true }, { untilMs: 15_000 });
    expect(f.cancelled).toBe(false);
    expect(f.messages.at(-1)?.sandbox?.status?.phase).toBe(Phase.READY);
  });

  it('log push: NOT_FOUND for unknown, PERMISSION_DENIED on an id change, 100 lines per batch, source "sandbox"', async () => {
    const s = await createReady('logger');
    const id = s.metadata.id;
    const md = bearer(await mintSandboxToken(gw.gen2!.jwtKeyDir, id));
    const ghost = randomUUID();
    expect(await failure(push(bearer(await mintSandboxToken(gw.gen2!.jwtKeyDir, ghost)), [{ sandbox_id: ghost, logs: [{ message: 'x' }] }]))).toMatchObject({
      code: Status.NOT_FOUND,
    });
    expect(await failure(push(md, [{ sandbox_id: randomUUID(), logs: [] }]))).toMatchObject({ code: Status.PERMISSION_DENIED });
    const lines = Array.from({ length: 150 }, (_, i) => ({ message: `line ${i}`, level: i % 2 ? 'DEBUG' : 'WARN', source: 'gateway', timestamp_ms: 1000 + i }));
    await push(md, [{ sandbox_id: '', logs: [{ message: 'skipped' }] }, { sandbox_id: id, logs: lines }]);
    const other = await store.createSandbox({ name: 'other-logger' });
    expect(await failure(push(md, [{ sandbox_id: id, logs: [] }, { sandbox_id: other.id, logs: [] }]))).toMatchObject({ code: Status.PERMISSION_DENIED });

    const all = await unary<{ logs: Array<{ message: string; source: string; level: string }>; buffer_total: number }>(client, 'GetSandboxLogs', { sandbox_id: id });
    const pushed = all.logs.filter((l) => l.message.startsWith('line '));
    expect(pushed).toHaveLength(100);
    expect(new Set(pushed.map((l) => l.source))).toEqual(new Set(['sandbox']));
    const warn = await unary<{ logs: Array<{ message: string }> }>(client, 'GetSandboxLogs', { sandbox_id: id, min_level: 'WARN', since_ms: 1090 });
    expect(warn.logs.map((l) => l.message)).toEqual(['line 90', 'line 92', 'line 94', 'line 96', 'line 98']);
    const gatewayOnly = await unary<{ logs: unknown[] }>(client, 'GetSandboxLogs', { sandbox_id: id, sources: ['gateway'] });
    expect(gatewayOnly.logs).toHaveLength(0);
    expect(await failure(unary(client, 'GetSandboxLogs', { sandbox_id: randomUUID() }))).toMatchObject({ code: Status.NOT_FOUND });
    // The supervisor's own lifetime push (started before ConnectSupervisor) landed here too.
    expect(all.logs.some((l) => l.message === 'supervisor starting')).toBe(true);
    // A log tail of 0 means 200 in WatchSandbox.
    const many = Array.from({ length: 250 }, (_, i) => ({ message: `bulk ${i}` }));
    await push(md, [{ sandbox_id: id, logs: many.slice(0, 100) }, { sandbox_id: id, logs: many.slice(100, 200) }, { sandbox_id: id, logs: many.slice(200) }]);
    const w = await collectStream<StreamEvent>(client, 'WatchSandbox', { id, follow_logs: true, log_tail_lines: 0 }, { untilMs: 1500 });
    expect(w.messages[0]?.sandbox).toBeTruthy();
    // A tail of 0 means 200 lines: the first 200 log messages are the buffer's last 200 lines, and lines
    // pushed after the watch opened follow them. The supervisor's lifetime push lands its own two lines
    // ("supervisor session accepted…", "Acknowledged initial policy…") a second or two after Ready, so
    // they fall after the tail, or (rarely, under load) inside it, in place of the oldest bulk lines.
    const logs = w.messages.filter((m) => m.log).map((m) => m.log?.message ?? '');
    const supervisorLine = (l: string): boolean => l.startsWith('supervisor ') || l.startsWith('Acknowledged initial policy');
    const tail = logs.slice(0, 200);
    expect(tail).toHaveLength(200);
    const bulk = tail.filter((l) => l.startsWith('bulk '));
    expect(bulk.length).toBeGreaterThanOrEqual(198);
    expect(bulk).toEqual(Array.from({ length: bulk.length }, (_, i) => `bulk ${250 - bulk.length + i}`));
    expect(tail.filter((l) => !l.startsWith('bulk ')).every(supervisorLine)).toBe(true);
    expect(logs.slice(200).every(supervisorLine)).toBe(true);
  });
});

describe('2026-08 phase writes', () => {
  it('connect/disconnect writes skip Deleting, Error, Stopping, Stopped; disconnect only demotes Ready', () => {
    for (const p of [Phase.DELETING, Phase.ERROR, Phase.STOPPING, Phase.STOPPED]) {
      expect(decideSessionPhase(p, true).write).toBe(false);
      expect(decideSessionPhase(p, false).write).toBe(false);
    }
    expect(decideSessionPhase(Phase.PROVISIONING, true)).toEqual({ write: true, phase: Phase.READY });
    expect(decideSessionPhase(Phase.STARTING, true)).toEqual({ write: true, phase: Phase.READY });
    expect(decideSessionPhase(Phase.PROVISIONING, false).write).toBe(false);
    expect(decideSessionPhase(Phase.READY, false)).toEqual({ write: true, phase: Phase.PROVISIONING });
  });

  it('phase writes are compare-and-swap on resource_version', async () => {
    const s = await store.insertSandbox({ name: 'cas' });
    const first = await store.updateSandboxCas(s.id, s.resourceVersion, (m) => ((m.status ??= {}).phase = Phase.READY));
    expect(first).not.toBe('conflict');
    expect(first && first !== 'conflict' ? first.resourceVersion : 0).toBe(s.resourceVersion + 1);
    // A writer holding the old version loses.
    expect(await store.updateSandboxCas(s.id, s.resourceVersion, (m) => ((m.status ??= {}).phase = Phase.PROVISIONING))).toBe('conflict');
    expect((await store.sandboxById(s.id))?.phase).toBe(Phase.READY);
  });

  it('a supervisor disconnect demotes Ready to Provisioning and records it', async () => {
    const s = await createReady('flaky');
    fleet.supervisors.get(s.metadata.id)!.supervisor.dropConnection();
    await expect
      .poll(async () => (await store.phaseHistory(s.metadata.id)).map((w) => w.phase), { timeout: 10_000 })
      .toEqual([Phase.READY, Phase.PROVISIONING, Phase.READY]);
    // The seed layout's field 4 stays empty: readers must look at status.phase (reference §8).
    expect((await store.getSandboxMessage(s.metadata.id))?.phase).toBeUndefined();
    expect(await failure(unaryMd(client, 'GetSandbox', { name: 'flaky' }))).toBeNull();
  });
});
