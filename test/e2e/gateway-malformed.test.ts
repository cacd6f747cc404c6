// Malformed input to the gateway emulator gets the real gateway's error and never crashes it.
import { randomUUID } from 'node:crypto';
import http2 from 'node:http2';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startGateway, type Gateway } from '../../emulator/gateway/server.ts';
import type { GatewayMessage, RelayFrame, SupervisorMessage } from '../../emulator/proto.ts';
import { gatewayClient, unary, type OpenShellClient } from '../helpers/grpc-client.ts';
import { createTestDatabase, type TestDatabase } from '../helpers/services.ts';
import { grpcFrame, rawExchange } from '../helpers/raw.ts';

let db: TestDatabase;
let gw: Gateway;
let client: OpenShellClient;

beforeAll(async () => {
  db = await createTestDatabase('gateway_malformed');
  gw = await startGateway({ databaseUrl: db.url, replica: 'gw-malformed' });
  client = gatewayClient(`127.0.0.1:${gw.port}`);
});

afterAll(async () => {
  client?.close();
  await gw?.close();
  await db?.drop();
});


function streamStatus<T>(call: grpc.ClientDuplexStream<T, unknown>): Promise<number> {
  return new Promise((resolve) => {
    call.on('data', () => undefined);
    call.on('error', (e: grpc.ServiceError) => resolve(e.code));
    call.on('status', (s: grpc.StatusObject) => resolve(s.code));
  });
}

/** Sends one raw gRPC message body (already framed) on a fresh h2 stream; returns grpc-status. */
function rawGrpc(port: number, method: string, framed: Buffer): Promise<{ status: string | undefined; message: string | undefined }> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(`http://127.0.0.1:${port}`);
    session.on('error', reject);
    const req = session.request({
      ':method': 'POST',
      ':path': `/openshell.v1.OpenShell/${method}`,
      'content-type': 'application/grpc',
      te: 'trailers',
    });
    let headers: http2.IncomingHttpHeaders = {};
    req.on('response', (h) => (headers = h));
    req.on('trailers', (t) => (headers = { ...headers, ...t }));
    req.on('data', () => undefined);
    req.on('error', () => undefined);
    req.on('close', () => {
      session.close();
      resolve({ status: headers['grpc-status'] as string | undefined, message: headers['grpc-message'] as string | undefined });
    });
    req.end(framed);
  });
}


describe('gateway emulator under malformed input', () => {
  it('garbage bytes get an HTTP 400 and the connection closes', async () => {
    const reply = (await rawExchange(gw.port, Buffer.from('\x00\x01\x02garbage\r\n\r\n', 'latin1'), 2000)).reply.toString('latin1');
    expect(reply).toMatch(/^HTTP\/1\.1 400/);
  });

  it('an h2 preface followed by garbage is dropped without harm', async () => {
    const reply = (await rawExchange(gw.port, Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'), Buffer.alloc(64, 0xff)]), 2000)).reply.toString('latin1');
    expect(reply.includes('HTTP/1.1')).toBe(false);
  });

  it('a first ConnectSupervisor message that is not hello gets INVALID_ARGUMENT', async () => {
    const call = (client.ConnectSupervisor as () => grpc.ClientDuplexStream<SupervisorMessage, GatewayMessage>).call(client);
    const code = streamStatus(call);
    call.write({ heartbeat: {} });
    expect(await code).toBe(grpc.status.INVALID_ARGUMENT);
  });

  it('a hello with an empty sandbox id gets INVALID_ARGUMENT; an unknown sandbox NOT_FOUND', async () => {
    const empty = (client.ConnectSupervisor as () => grpc.ClientDuplexStream<SupervisorMessage, GatewayMessage>).call(client);
    const emptyCode = streamStatus(empty);
    empty.write({ hello: { sandbox_id: '', instance_id: 'x' } });
    expect(await emptyCode).toBe(grpc.status.INVALID_ARGUMENT);
    const unknown = (client.ConnectSupervisor as () => grpc.ClientDuplexStream<SupervisorMessage, GatewayMessage>).call(client);
    const unknownCode = streamStatus(unknown);
    unknown.write({ hello: { sandbox_id: randomUUID(), instance_id: 'x' } });
    expect(await unknownCode).toBe(grpc.status.NOT_FOUND);
  });

  it('RelayStream needs init first and a known channel', async () => {
    const noInit = (client.RelayStream as () => grpc.ClientDuplexStream<RelayFrame, RelayFrame>).call(client);
    const noInitCode = streamStatus(noInit);
    noInit.write({ data: Buffer.from('hi') });
    expect(await noInitCode).toBe(grpc.status.INVALID_ARGUMENT);
    const unknown = (client.RelayStream as () => grpc.ClientDuplexStream<RelayFrame, RelayFrame>).call(client);
    const unknownCode = streamStatus(unknown);
    unknown.write({ init: { channel_id: randomUUID() } });
    expect(await unknownCode).toBe(grpc.status.NOT_FOUND);
  });

  it('an undecodable protobuf body gets INTERNAL, an oversize one RESOURCE_EXHAUSTED', async () => {
    // 0x0A with a length running past the end: not a valid SupervisorMessage.
    const bad = await rawGrpc(gw.port, 'ConnectSupervisor', grpcFrame(Buffer.from([0x0a, 0x7f, 0x01])));
    expect(bad.status).toBe(String(grpc.status.INTERNAL));
    const huge = await rawGrpc(gw.port, 'ExecSandbox', grpcFrame(Buffer.alloc(1024 * 1024 + 10, 0)));
    expect(huge.status).toBe(String(grpc.status.RESOURCE_EXHAUSTED));
  });

  it('keeps serving after all of the above', async () => {
    const health = await unary<{ status: number }>(client, 'Health', {});
    expect(health.status).toBe(1);
    const res = await fetch(`http://127.0.0.1:${gw.healthPort}/readyz`);
    expect(res.status).toBe(200);
  });
});
