// Embedded default: one sidecar in front of one gateway emulator with no database or Redis
// configured for the sidecar (in-memory ownership). SSH, exec and logs pass through it.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startGateway, type Gateway } from '../../emulator/gateway/server.ts';
import { waitSandboxesReady } from '../helpers/wait.ts';
import { startProcess, sidecarCommand, type ManagedProcess } from '../../emulator/process.ts';
import { startSupervisorFleet } from '../../emulator/supervisor/fleet.ts';
import { exec, gatewayClient, pushLogs, unary, type OpenShellClient } from '../helpers/grpc-client.ts';
import { createTestDatabase, type TestDatabase } from '../helpers/services.ts';
import { sshViaGateway } from '../../emulator/ssh-client.ts';

let db: TestDatabase;
let gw: Gateway;
let sidecar: ManagedProcess;
let port: number;
let fleet: Awaited<ReturnType<typeof startSupervisorFleet>>;
let client: OpenShellClient;
const sandboxes: string[] = [];

beforeAll(async () => {
  db = await createTestDatabase('sidecar_embedded');
  gw = await startGateway({ databaseUrl: db.url, replica: 'gw-embedded' });
  sidecar = await startProcess('sidecar', [
    ...sidecarCommand(),
    '--listen', '127.0.0.1:0', '--peer-listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0',
    '--gateway', `http://127.0.0.1:${gw.port}`, '--replica-id', 'solo', '--log-level', 'info',
  ]);
  port = sidecar.ready.listenPort as number;
  for (let i = 0; i < 3; i++) sandboxes.push((await gw.store.createSandbox()).id);
  fleet = await startSupervisorFleet({ endpoint: `127.0.0.1:${port}`, sandboxIds: sandboxes });
  await fleet.waitAllConnected(15_000);
  await waitSandboxesReady(gw.store, sandboxes);
  client = gatewayClient(`127.0.0.1:${port}`);
});

afterAll(async () => {
  client?.close();
  await fleet?.stop();
  await sidecar?.kill('SIGTERM');
  await gw?.close();
  await db?.drop();
});

describe('embedded single-replica sidecar', () => {
  it('announces embedded mode at startup', () => {
    expect(sidecar.ready.mode).toBe('embedded');
    expect(sidecar.output.some((l) => l.includes('embedded single-replica mode'))).toBe(true);
  });

  it('ssh through the sidecar reaches each sandbox', async () => {
    for (const id of sandboxes) {
      const { token } = await unary<{ token: string }>(client, 'CreateSshSession', { sandbox_id: id });
      const res = await sshViaGateway({ host: '127.0.0.1', port, sandboxId: id, token, command: 'sandbox-id' });
      expect(res.status).toBe(200);
      expect(res.stdout.trim()).toBe(id);
    }
  });

  it('exec and logs pass through with trailers intact', async () => {
    const r = await exec(client, sandboxes[0]!, ['exit', '4']);
    expect(r.exitCode).toBe(4);
    await pushLogs(client, [{ sandbox_id: sandboxes[0]!, logs: [{ message: 'via sidecar' }] }]);
    const logs = await unary<{ logs: Array<{ message: string }> }>(client, 'GetSandboxLogs', { sandbox_id: sandboxes[0]! });
    expect(logs.logs.map((l) => l.message)).toEqual(['via sidecar']);
  });

  it('a log push whose first batch has no sandbox id goes to the gateway, which skips that batch', async () => {
    await pushLogs(client, [
      { sandbox_id: '', logs: [{ message: 'no id' }] },
      { sandbox_id: sandboxes[1]!, logs: [{ message: 'after an empty batch' }] },
    ]);
    const logs = await unary<{ logs: Array<{ message: string }> }>(client, 'GetSandboxLogs', { sandbox_id: sandboxes[1]! });
    expect(logs.logs.map((l) => l.message)).toEqual(['after an empty batch']);
  });

  it('gateway errors keep their status through the sidecar', async () => {
    const tok = await unary<{ token: string }>(client, 'CreateSshSession', { sandbox_id: sandboxes[0]! });
    const res = await sshViaGateway({ host: '127.0.0.1', port, sandboxId: sandboxes[1]!, token: tok.token, command: 'echo' });
    expect(res.status).toBe(401);
  });
});
