// Issue: one gateway emulator replica, used directly (no sidecar). Proves the emulator answers
// like the seed gateway: SSH over CONNECT, status codes of reference §2.3, exec and logs.
import { randomUUID } from 'node:crypto';
import type net from 'node:net';
import { status as Status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startGateway, type Gateway } from '../../emulator/gateway/server.ts';
import { waitSandboxesReady } from '../helpers/wait.ts';
import { startSupervisorFleet } from '../../emulator/supervisor/fleet.ts';
import { exec, gatewayClient, grpcCode, pushLogs, unary, type OpenShellClient } from '../helpers/grpc-client.ts';
import { createTestDatabase, type TestDatabase } from '../helpers/services.ts';
import { openConnectTunnel, sshViaGateway } from '../../emulator/ssh-client.ts';

let db: TestDatabase;
let gw: Gateway;
let fleet: Awaited<ReturnType<typeof startSupervisorFleet>>;
let client: OpenShellClient;
let sandboxA: string;
let sandboxB: string;
let notReady: string;

async function token(sandboxId: string): Promise<string> {
  const res = await unary<{ token: string }>(client, 'CreateSshSession', { sandbox_id: sandboxId });
  return res.token;
}

beforeAll(async () => {
  db = await createTestDatabase('gateway_direct');
  gw = await startGateway({ databaseUrl: db.url, replica: 'gw-direct' });
  sandboxA = (await gw.store.createSandbox()).id;
  sandboxB = (await gw.store.createSandbox()).id;
  notReady = (await gw.store.createSandbox()).id;
  fleet = await startSupervisorFleet({ endpoint: `127.0.0.1:${gw.port}`, sandboxIds: [sandboxA, sandboxB] });
  await fleet.waitAllConnected(15_000);
  await waitSandboxesReady(gw.store, [sandboxA, sandboxB]);
  client = gatewayClient(`127.0.0.1:${gw.port}`);
});

afterAll(async () => {
  client?.close();
  await fleet?.stop();
  await gw?.close();
  await db?.drop();
});

describe('gateway emulator, one replica, direct', () => {
  it('ssh through CONNECT /connect/ssh reaches the sandbox it asked for', async () => {
    for (const id of [sandboxA, sandboxB]) {
      const res = await sshViaGateway({ host: '127.0.0.1', port: gw.port, sandboxId: id, token: await token(id), command: 'sandbox-id' });
      expect(res.status).toBe(200);
      expect(res.stdout.trim()).toBe(id);
      expect(res.code).toBe(0);
    }
  });

  it('a supervisor connecting makes the sandbox Ready in the shared table', async () => {
    expect((await gw.store.getSandbox(sandboxA))?.phase).toBe(2);
    expect((await gw.store.getSandbox(notReady))?.phase).toBe(1);
  });

  it('answers the seed status codes in the gateway order', async () => {
    const base = { host: '127.0.0.1', port: gw.port };
    const tokA = await token(sandboxA);
    expect((await openConnectTunnel({ ...base, sandboxId: sandboxA, token: 'not-a-token' })).status).toBe(401);
    expect((await openConnectTunnel({ ...base, sandboxId: sandboxB, token: tokA })).status).toBe(401);
    expect((await openConnectTunnel({ ...base, token: tokA })).status).toBe(401);
    expect((await openConnectTunnel({ ...base, sandboxId: sandboxA })).status).toBe(401);
    expect((await openConnectTunnel({ ...base, sandboxId: '', token: tokA })).status).toBe(400);
    expect((await openConnectTunnel({ ...base, sandboxId: sandboxA, token: tokA, method: 'GET' })).status).toBe(405);

    const unknown = randomUUID();
    const unknownTok = await gw.store.createSshSession(unknown, 3600);
    expect((await openConnectTunnel({ ...base, sandboxId: unknown, token: unknownTok.token })).status).toBe(404);

    const nrTok = await gw.store.createSshSession(notReady, 3600);
    expect((await openConnectTunnel({ ...base, sandboxId: notReady, token: nrTok.token })).status).toBe(412);

    const expired = await gw.store.createSshSession(sandboxA, 3600);
    await gw.store.updateSshSession(expired.token, { expiresAtMs: Date.now() - 1000 });
    expect((await openConnectTunnel({ ...base, sandboxId: sandboxA, token: expired.token })).status).toBe(401);
    const revoked = await gw.store.createSshSession(sandboxA, 3600);
    await gw.store.updateSshSession(revoked.token, { revoked: true });
    expect((await openConnectTunnel({ ...base, sandboxId: sandboxA, token: revoked.token })).status).toBe(401);
  });

  it('refuses a 4th concurrent tunnel on one token with 429', async () => {
    const tok = await token(sandboxA);
    const held: net.Socket[] = [];
    try {
      for (let i = 0; i < 3; i++) {
        const t = await openConnectTunnel({ host: '127.0.0.1', port: gw.port, sandboxId: sandboxA, token: tok });
        expect(t.status).toBe(200);
        held.push(t.socket!);
      }
      const fourth = await openConnectTunnel({ host: '127.0.0.1', port: gw.port, sandboxId: sandboxA, token: tok });
      expect(fourth.status).toBe(429);
    } finally {
      for (const s of held) s.destroy();
    }
    // Slots are released when tunnels close.
    await expect.poll(() => gw.slots.held().tokens, { timeout: 5000 }).toBe(0);
    const again = await sshViaGateway({ host: '127.0.0.1', port: gw.port, sandboxId: sandboxA, token: tok, command: 'echo again' });
    expect(again.stdout).toBe('again\n');
  });

  it('refuses a 21st concurrent tunnel on one sandbox with 429', async () => {
    const held: net.Socket[] = [];
    try {
      const tokens = await Promise.all(Array.from({ length: 7 }, () => token(sandboxB)));
      for (let i = 0; i < 20; i++) {
        const t = await openConnectTunnel({ host: '127.0.0.1', port: gw.port, sandboxId: sandboxB, token: tokens[Math.floor(i / 3)]! });
        expect(t.status).toBe(200);
        held.push(t.socket!);
      }
      const extra = await openConnectTunnel({ host: '127.0.0.1', port: gw.port, sandboxId: sandboxB, token: await token(sandboxB) });
      expect(extra.status).toBe(429);
    } finally {
      for (const s of held) s.destroy();
    }
  });

  it('ExecSandbox streams output and the exit code', async () => {
    const ok = await exec(client, sandboxA, ['echo', 'hello', 'world']);
    expect(ok).toEqual({ stdout: 'hello world\n', stderr: '', exitCode: 0 });
    const withStdin = await exec(client, sandboxA, ['cat'], 'piped input');
    expect(withStdin.stdout).toBe('piped input');
    const failing = await exec(client, sandboxA, ['exit', '3']);
    expect(failing.exitCode).toBe(3);
    const missing = await exec(client, sandboxA, ['no-such-command']);
    expect(missing.exitCode).toBe(127);
    expect(missing.stderr).toContain('command not found');
    expect(await grpcCode(exec(client, notReady, ['echo']))).toBe(Status.FAILED_PRECONDITION);
    expect(await grpcCode(exec(client, randomUUID(), ['echo']))).toBe(Status.NOT_FOUND);
  });

  it('pushed logs are readable on the replica that received them', async () => {
    await pushLogs(client, [
      { sandbox_id: sandboxA, logs: [{ message: 'first line' }, { message: 'second line' }] },
      // The gateway skips batches with an empty sandbox id (reference §2.0).
      { sandbox_id: '', logs: [{ message: 'dropped' }] },
    ]);
    const res = await unary<{ logs: Array<{ message: string }>; buffer_total: number }>(client, 'GetSandboxLogs', { sandbox_id: sandboxA });
    expect(res.logs.map((l) => l.message)).toEqual(['first line', 'second line']);
    expect(res.buffer_total).toBe(2);
  });
});
