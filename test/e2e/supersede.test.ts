// Supersede inside one replica, and the cross-replica stale-disconnect hazard (reference §6).
import { randomUUID } from 'node:crypto';
import type * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startGateway, type Gateway } from '../../emulator/gateway/server.ts';
import { Phase, type GatewayMessage, type SupervisorMessage } from '../../emulator/proto.ts';
import { gatewayClient, pushLogs, unary, type OpenShellClient } from '../helpers/grpc-client.ts';
import { createTestDatabase, type TestDatabase } from '../helpers/services.ts';

let db: TestDatabase;
let gwA: Gateway;
let gwB: Gateway;
const clients: OpenShellClient[] = [];

interface RawSession {
  call: grpc.ClientDuplexStream<SupervisorMessage, GatewayMessage>;
  accepted: Promise<string>;
  ended: Promise<string>;
}

/** A bare ConnectSupervisor stream on its own connection, without the emulator's reconnect loop. */
function rawSession(port: number, sandboxId: string): RawSession {
  const client = gatewayClient(`127.0.0.1:${port}`);
  clients.push(client);
  const call = (client.ConnectSupervisor as () => grpc.ClientDuplexStream<SupervisorMessage, GatewayMessage>).call(client);
  const accepted = new Promise<string>((resolve, reject) => {
    call.on('data', (m: GatewayMessage) => {
      if (m.session_accepted) resolve(m.session_accepted.session_id);
    });
    call.on('error', reject);
  });
  const ended = new Promise<string>((resolve) => {
    call.on('error', (e: grpc.ServiceError) => resolve(`error ${e.code}`));
    call.on('end', () => resolve('end'));
  });
  accepted.catch(() => undefined);
  call.write({ hello: { sandbox_id: sandboxId, instance_id: randomUUID() } });
  return { call, accepted, ended };
}

beforeAll(async () => {
  db = await createTestDatabase('supersede');
  gwA = await startGateway({ databaseUrl: db.url, replica: 'gateway-a' });
  gwB = await startGateway({ databaseUrl: db.url, replica: 'gateway-b' });
});

afterAll(async () => {
  for (const c of clients) c.close();
  await gwA?.close();
  await gwB?.close();
  await db?.drop();
});

describe('supervisor sessions', () => {
  it('a second session on the same replica supersedes and closes the older stream', async () => {
    const sandbox = (await gwA.store.createSandbox()).id;
    const first = rawSession(gwA.port, sandbox);
    const firstId = await first.accepted;
    const second = rawSession(gwA.port, sandbox);
    const secondId = await second.accepted;
    expect(secondId).not.toBe(firstId);
    expect(await first.ended).toBe('end');
    expect(gwA.registry.get(sandbox)?.sessionId).toBe(secondId);
    // remove_if_current: the superseded session must not write Provisioning.
    await new Promise((r) => setTimeout(r, 200));
    const history = await gwA.store.phaseHistory(sandbox);
    expect(history.map((h) => h.phase)).toEqual([Phase.READY, Phase.READY]);
    expect((await gwA.store.getSandbox(sandbox))?.phase).toBe(Phase.READY);
    second.call.cancel();
  });

  it('across two replicas a late disconnect writes Provisioning over the other replica\'s Ready', async () => {
    const sandbox = (await gwA.store.createSandbox()).id;
    const onA = rawSession(gwA.port, sandbox);
    await onA.accepted;
    // A's Ready write follows its SessionAccepted: let it land before the supervisor moves.
    await expect.poll(async () => (await gwA.store.phaseHistory(sandbox)).length).toBe(1);
    // The supervisor reconnects to B while A still holds its (half-dead) stream.
    const onB = rawSession(gwB.port, sandbox);
    await onB.accepted;
    await expect.poll(async () => (await gwB.store.phaseHistory(sandbox)).length).toBe(2);
    // A finally notices its stream is gone: its session is still "current" locally.
    onA.call.cancel();
    await expect.poll(async () => (await gwA.store.phaseHistory(sandbox)).length, { timeout: 5000 }).toBe(3);
    const history = await gwA.store.phaseHistory(sandbox);
    expect(history.map((h) => [h.replica, h.phase])).toEqual([
      ['gateway-a', Phase.READY],
      ['gateway-b', Phase.READY],
      ['gateway-a', Phase.PROVISIONING],
    ]);
    // B still holds the live session, but the shared row now says Provisioning.
    expect(gwB.registry.has(sandbox)).toBe(true);
    expect((await gwB.store.getSandbox(sandbox))?.phase).toBe(Phase.PROVISIONING);
    onB.call.cancel();
  });
});

describe('log buffers', () => {
  it('logs pushed to one replica are not readable on another', async () => {
    const sandbox = (await gwA.store.createSandbox()).id;
    const viaA = gatewayClient(`127.0.0.1:${gwA.port}`);
    const viaB = gatewayClient(`127.0.0.1:${gwB.port}`);
    clients.push(viaA, viaB);
    await pushLogs(viaA, [{ sandbox_id: sandbox, logs: [{ message: 'line one' }, { message: 'line two' }] }]);
    type LogsResponse = { logs: Array<{ message: string }>; buffer_total: number };
    const onA = await unary<LogsResponse>(viaA, 'GetSandboxLogs', { sandbox_id: sandbox });
    expect(onA.logs.map((l) => l.message)).toEqual(['line one', 'line two']);
    expect(onA.buffer_total).toBe(2);
    // The log buffer is per process: the other replica never saw the push.
    const onB = await unary<LogsResponse>(viaB, 'GetSandboxLogs', { sandbox_id: sandbox });
    expect(onB.logs).toEqual([]);
    expect(onB.buffer_total).toBe(0);
  });
});
