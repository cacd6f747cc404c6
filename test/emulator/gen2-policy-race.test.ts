// docs/interop.md U1, reproduced by the emulator: upstream's supervisor reports its policy load
// (ReportPolicyStatus) on a connection of its own while its ConnectSupervisor is on the way. The
// report rewrites the sandbox row under the *receiving* replica's sync_lock only; landing on another
// replica than the session, it can make the session's Ready compare-and-swap lose. The gateway only
// logs that, so the sandbox stays Provisioning with a live session and refuses SSH and exec.
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createJwtKeyDir, SandboxJwt } from '../../emulator/gateway/gen2/jwt.ts';
import { startGateway, type Gateway } from '../../emulator/gateway/server.ts';
import { Phase } from '../../emulator/proto.ts';
import { startSandboxSshServer, type SandboxSshServer } from '../../emulator/supervisor/ssh-server.ts';
import { SupervisorEmulator } from '../../emulator/supervisor/supervisor.ts';
import { bearer, failure, unaryMd } from '../helpers/gen2.ts';
import { gatewayClient, unary, type OpenShellClient } from '../helpers/grpc-client.ts';
import { createTestDatabase, type TestDatabase } from '../helpers/services.ts';

let db: TestDatabase;
let sessionGw: Gateway;
let otherGw: Gateway;
let jwt: SandboxJwt;
const closers: Array<() => Promise<void>> = [];

beforeAll(async () => {
  db = await createTestDatabase('gen2_policy_race');
  const jwtKeyDir = createJwtKeyDir();
  // The session's replica pauses 600 ms between reading the row and its Ready CAS, so the report
  // on the other replica lands inside the window every time instead of now and then.
  sessionGw = await startGateway({ databaseUrl: db.url, replica: 'gw-session', protocol: '2026-08', jwtKeyDir, replicaId: 'r-session', debugSessionWriteDelayMs: 600 });
  otherGw = await startGateway({ databaseUrl: db.url, replica: 'gw-other', protocol: '2026-08', jwtKeyDir, replicaId: 'r-other' });
  jwt = await SandboxJwt.load(jwtKeyDir);
});

afterAll(async () => {
  for (const close of closers.reverse()) await close();
  await sessionGw?.close();
  await otherGw?.close();
  await db?.drop();
});

async function supervisorFor(gw: Gateway, sandboxId: string): Promise<{ supervisor: SupervisorEmulator; ssh: SandboxSshServer }> {
  const ssh = await startSandboxSshServer({ sandboxId });
  const supervisor = new SupervisorEmulator({
    endpoint: `127.0.0.1:${gw.port}`,
    sandboxId,
    sshPort: ssh.port,
    protocol: '2026-08',
    token: await jwt.mint(sandboxId),
    logPush: false,
    policySync: false,
  });
  closers.push(async () => {
    await supervisor.stop();
    await ssh.close();
  });
  return { supervisor, ssh };
}

describe('U1: a Ready write lost to a compare-and-swap conflict', () => {
  it('ReportPolicyStatus on another replica during the session’s Ready write leaves the sandbox Provisioning with a live session', async () => {
    const row = await sessionGw.gen2!.store.createSandbox({ name: 'u1' });
    const { supervisor } = await supervisorFor(sessionGw, row.id);
    const other: OpenShellClient = gatewayClient(`127.0.0.1:${otherGw.port}`);
    const onSession: OpenShellClient = gatewayClient(`127.0.0.1:${sessionGw.port}`);
    closers.push(async () => {
      other.close();
      onSession.close();
    });
    supervisor.start();
    // The Hello is in; the Ready write has read the row and waits before its CAS.
    await expect.poll(() => sessionGw.registry.has(row.id), { timeout: 5000, interval: 20 }).toBe(true);
    const md = bearer(await jwt.mint(row.id));
    const cfg = await unaryMd<{ version: number }>(other, 'GetSandboxConfig', { sandbox_id: row.id }, md);
    await unaryMd(other, 'ReportPolicyStatus', { sandbox_id: row.id, version: cfg.version, status: 2, load_error: '' }, md);
    await supervisor.waitConnected(5000);

    const stored = await sessionGw.gen2!.store.sandboxById(row.id);
    expect(stored?.message.status?.current_policy_version).toBe(1);
    expect(stored?.phase).toBe(Phase.PROVISIONING);
    expect(sessionGw.registry.has(row.id)).toBe(true);
    expect((await sessionGw.gen2!.store.phaseHistory(row.id)).map((w) => w.phase)).not.toContain(Phase.READY);
    const refused = await failure(unary(onSession, 'CreateSshSession', { sandbox_id: row.id }));
    expect(refused).toEqual({ code: grpc.status.FAILED_PRECONDITION, details: 'sandbox is not ready' });
  });

  it('without a competing write the same delayed Ready write lands', async () => {
    const row = await sessionGw.gen2!.store.createSandbox({ name: 'u1-control' });
    const { supervisor } = await supervisorFor(sessionGw, row.id);
    supervisor.start();
    await supervisor.waitConnected(5000);
    expect((await sessionGw.gen2!.store.sandboxById(row.id))?.phase).toBe(Phase.READY);
  });

  it('ReportPolicyStatus: sandbox principals only, version and status required, unknown revisions NOT_FOUND', async () => {
    const row = await otherGw.gen2!.store.createSandbox({ name: 'u1-validation' });
    const client = gatewayClient(`127.0.0.1:${otherGw.port}`);
    closers.push(async () => client.close());
    const md = bearer(await jwt.mint(row.id));
    const report = (req: Record<string, unknown>, m = md): Promise<{ code: number; details: string } | null> =>
      failure(unaryMd(client, 'ReportPolicyStatus', { sandbox_id: row.id, version: 1, status: 2, load_error: '', ...req }, m));
    expect(await report({}, new grpc.Metadata())).toMatchObject({ code: grpc.status.PERMISSION_DENIED });
    expect(await report({ version: 0 })).toEqual({ code: grpc.status.INVALID_ARGUMENT, details: 'version is required' });
    expect(await report({ status: 1 })).toEqual({ code: grpc.status.INVALID_ARGUMENT, details: 'status must be LOADED or FAILED' });
    expect(await report({ version: 7 })).toEqual({ code: grpc.status.NOT_FOUND, details: 'policy revision not found' });
    expect(await report({})).toBeNull();
    expect((await otherGw.gen2!.store.sandboxById(row.id))?.message.status?.current_policy_version).toBe(1);
  });
});
