// One bad client must never hurt anyone else (DESIGN §3 rules, STYLE "Sockets and streams"): a
// sidecar in front of one gateway emulator gets malformed first messages, protocol garbage and
// clients that vanish mid-stream, and keeps serving a long-lived SSH session opened before them.
import http2 from 'node:http2';
import type net from 'node:net';
import * as grpc from '@grpc/grpc-js';
import ssh2 from 'ssh2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startGateway, type Gateway } from '../../emulator/gateway/server.ts';
import { waitSandboxesReady } from '../helpers/wait.ts';
import { startProcess, sidecarCommand, type ManagedProcess } from '../../emulator/process.ts';
import { encodeMessage, type ExecSandboxEvent } from '../../emulator/proto.ts';
import { SANDBOX_SSH_PASSWORD, SANDBOX_SSH_USER } from '../../emulator/supervisor/ssh-server.ts';
import { startSupervisorFleet } from '../../emulator/supervisor/fleet.ts';
import { exec, gatewayClient, grpcCode, unary, type OpenShellClient } from '../helpers/grpc-client.ts';
import { createTestDatabase, type TestDatabase } from '../helpers/services.ts';
import { openConnectTunnel, sshViaGateway } from '../../emulator/ssh-client.ts';
import { grpcFrame, rawExchange } from '../helpers/raw.ts';

let db: TestDatabase;
let gw: Gateway;
let sidecar: ManagedProcess;
let port: number;
let adminPort: number;
let fleet: Awaited<ReturnType<typeof startSupervisorFleet>>;
let client: OpenShellClient;
const sandboxes: string[] = [];
/** Opened before any bad input; must still work after all of it. */
let longLived: { ssh: ssh2.Client; socket: net.Socket } | undefined;

beforeAll(async () => {
  db = await createTestDatabase('sidecar_robustness');
  gw = await startGateway({ databaseUrl: db.url, replica: 'gw-robust' });
  sidecar = await startProcess('sidecar', [
    ...sidecarCommand(),
    '--listen', '127.0.0.1:0', '--peer-listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0',
    '--gateway', `http://127.0.0.1:${gw.port}`, '--replica-id', 'robust', '--log-level', 'info',
  ]);
  port = sidecar.ready.listenPort as number;
  adminPort = sidecar.ready.adminPort as number;
  for (let i = 0; i < 3; i++) sandboxes.push((await gw.store.createSandbox()).id);
  fleet = await startSupervisorFleet({ endpoint: `127.0.0.1:${port}`, sandboxIds: sandboxes });
  await fleet.waitAllConnected(15_000);
  await waitSandboxesReady(gw.store, sandboxes);
  client = gatewayClient(`127.0.0.1:${port}`);
});

afterAll(async () => {
  longLived?.ssh.end();
  longLived?.socket.destroy();
  client?.close();
  await fleet?.stop();
  await sidecar?.kill('SIGTERM');
  await gw?.close();
  await db?.drop();
});

// --- helpers ---------------------------------------------------------------------------------

function sandbox(i: number): string {
  const id = sandboxes[i];
  if (id === undefined) throw new Error(`no sandbox ${i}`);
  return id;
}

/** Sum of every series of `name` on the admin /metrics whose labels include `labels`. */
async function metric(name: string, labels: Record<string, string> = {}): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
  let sum = 0;
  for (const line of text.split('\n')) {
    const m = /^([a-z_]+)(\{[^}]*\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const lbl = m[2] ?? '';
    if (Object.entries(labels).every(([k, v]) => lbl.includes(`${k}="${v}"`))) sum += Number(m[3]);
  }
  return sum;
}


interface RawGrpcResult {
  status: string | undefined;
  message: string | undefined;
  httpStatus: number | undefined;
  /** The response was HEADERS with END_STREAM (trailers-only). */
  trailersOnly: boolean;
  /** RST_STREAM code the stream ended with (0 = none or NO_ERROR). */
  rstCode: number;
  elapsedMs: number;
}

/** One gRPC call with a hand-made body; `end: false` leaves the request stream open. */
function rawGrpc(method: string, body: Buffer, opts: { end?: boolean } = {}): Promise<RawGrpcResult> {
  return new Promise((resolve, reject) => {
    const start = Date.now();
    const session = http2.connect(`http://127.0.0.1:${port}`);
    session.on('error', reject);
    const req = session.request({
      ':method': 'POST',
      ':path': `/openshell.v1.OpenShell/${method}`,
      'content-type': 'application/grpc',
      te: 'trailers',
    });
    let headers: http2.IncomingHttpHeaders = {};
    let trailersOnly = false;
    const timer = setTimeout(() => req.close(http2.constants.NGHTTP2_CANCEL), 15_000);
    // Node never sets endAfterHeaders on client streams; the HEADERS frame flags tell.
    req.on('response', (h, flags: number) => {
      headers = h;
      trailersOnly = (flags & http2.constants.NGHTTP2_FLAG_END_STREAM) !== 0;
    });
    req.on('trailers', (t) => (headers = { ...headers, ...t }));
    req.on('data', () => undefined);
    req.on('error', () => undefined);
    req.on('close', () => {
      clearTimeout(timer);
      session.destroy();
      resolve({
        status: headers['grpc-status'] as string | undefined,
        message: headers['grpc-message'] === undefined ? undefined : decodeURIComponent(String(headers['grpc-message'])),
        httpStatus: headers[':status'] as number | undefined,
        trailersOnly,
        rstCode: req.rstCode ?? 0,
        elapsedMs: Date.now() - start,
      });
    });
    if (opts.end ?? true) req.end(body);
    else req.write(body);
  });
}


function countOutput(...needles: string[]): number {
  return sidecar.output.filter((l) => needles.every((n) => l.includes(n))).length;
}

function sshConnect(socket: net.Socket): Promise<ssh2.Client> {
  return new Promise((resolve, reject) => {
    const c = new ssh2.Client();
    c.once('ready', () => resolve(c));
    c.once('error', reject);
    c.connect({ sock: socket, username: SANDBOX_SSH_USER, password: SANDBOX_SSH_PASSWORD, readyTimeout: 15_000 });
  });
}

function sshExec(c: ssh2.Client, command: string): Promise<string> {
  return new Promise((resolve, reject) => {
    c.exec(command, (err, channel) => {
      if (err) return reject(err);
      let out = '';
      channel.on('data', (d: Buffer) => (out += d.toString()));
      channel.stderr.on('data', () => undefined);
      channel.on('close', () => resolve(out));
      channel.end();
    });
  });
}

async function openTunnel(sandboxId: string): Promise<{ socket: net.Socket; token: string }> {
  const { token } = await unary<{ token: string }>(client, 'CreateSshSession', { sandbox_id: sandboxId });
  const t = await openConnectTunnel({ host: '127.0.0.1', port, sandboxId, token });
  if (t.status !== 200 || !t.socket) throw new Error(`tunnel refused: ${t.status} ${t.body}`);
  return { socket: t.socket, token };
}

// --- tests -----------------------------------------------------------------------------------

describe('sidecar robustness against bad clients', () => {
  it('a long-lived ssh session opens before anything bad happens', async () => {
    const { socket } = await openTunnel(sandbox(0));
    const ssh = await sshConnect(socket);
    ssh.on('error', () => undefined);
    longLived = { ssh, socket };
    expect((await sshExec(ssh, 'sandbox-id')).trim()).toBe(sandbox(0));
  });

  it('a malformed first gRPC message gets INVALID_ARGUMENT, trailers-only, and is logged once', async () => {
    const before = countOutput('rejected stream', 'ExecSandbox');
    const r = await rawGrpc('ExecSandbox', grpcFrame(Buffer.from([0x0a, 0x7f, 0x01])));
    expect(r.httpStatus).toBe(200);
    expect(r.trailersOnly).toBe(true);
    expect(r.status).toBe(String(grpc.status.INVALID_ARGUMENT));
    expect(r.message).toMatch(/\S/);
    await expect.poll(() => countOutput('rejected stream', 'ExecSandbox'), { timeout: 3000 }).toBe(before + 1);
    await new Promise((res) => setTimeout(res, 300));
    expect(countOutput('rejected stream', 'ExecSandbox')).toBe(before + 1);
    // The payload bytes are never logged.
    expect(sidecar.output.some((l) => l.includes('0a7f01') || l.includes('CnoB'))).toBe(false);
  });

  it('a gateway trailers-only error passes through as trailers-only', async () => {
    const body = encodeMessage('ExecSandboxRequest', { sandbox_id: '00000000-0000-4000-8000-000000000000', command: ['sandbox-id'] });
    const r = await rawGrpc('ExecSandbox', grpcFrame(body));
    expect(r.status).toBe(String(grpc.status.NOT_FOUND));
    expect(r.trailersOnly).toBe(true);
    expect(r.rstCode).toBe(0);
  });

  it('a sandbox id that is not a valid id gets INVALID_ARGUMENT', async () => {
    const body = encodeMessage('ExecSandboxRequest', { sandbox_id: 'not a valid id', command: ['sandbox-id'] });
    const r = await rawGrpc('ExecSandbox', grpcFrame(body));
    expect(r.status).toBe(String(grpc.status.INVALID_ARGUMENT));
    // A real gRPC client sees the same status (the refusal's RST_STREAM NO_ERROR comes after it).
    expect(await grpcCode(exec(client, 'not a valid id', ['sandbox-id']))).toBe(grpc.status.INVALID_ARGUMENT);
    expect(await grpcCode(unary(client, 'GetSandboxLogs', { sandbox_id: 'bad id' }))).toBe(grpc.status.INVALID_ARGUMENT);
  });

  it('a first message over the cap is refused at once, without waiting for its bytes', async () => {
    const header = Buffer.alloc(5);
    header.writeUInt32BE(70_000, 1);
    // Only the prefix is sent and the request stays open: an answer proves nobody waited.
    const r = await rawGrpc('GetSandboxLogs', header, { end: false });
    expect(r.status).toBe(String(grpc.status.INVALID_ARGUMENT));
    expect(r.message).toMatch(/70000/);
    expect(r.trailersOnly).toBe(true);
    expect(r.elapsedMs).toBeLessThan(3000);
    await expect.poll(() => countOutput('rejected stream', 'OHS_ERR_MESSAGE_TOO_LARGE'), { timeout: 3000 }).toBe(1);
  });

  it('a compressed first message gets INVALID_ARGUMENT', async () => {
    const body = encodeMessage('WatchSandboxRequest', { id: sandbox(0) });
    const r = await rawGrpc('WatchSandbox', grpcFrame(body, 1));
    expect(r.status).toBe(String(grpc.status.INVALID_ARGUMENT));
    expect(r.message).toMatch(/compress/);
  });

  it('a request that ends before its first message is complete gets INVALID_ARGUMENT', async () => {
    const r = await rawGrpc('ExecSandbox', Buffer.from([0, 0, 0, 0, 10, 0x0a]));
    expect(r.status).toBe(String(grpc.status.INVALID_ARGUMENT));
  });

  it('CONNECT /connect/ssh without the sandbox headers gets the gateway\'s 401; a bad sandbox id a 4xx', async () => {
    const bare = await openConnectTunnel({ host: '127.0.0.1', port });
    expect(bare.status).toBe(401);
    expect(bare.body).toMatch(/x-sandbox-id/);
    const { token } = await unary<{ token: string }>(client, 'CreateSshSession', { sandbox_id: sandbox(1) });
    const bad = await openConnectTunnel({ host: '127.0.0.1', port, sandboxId: 'no such sandbox', token });
    expect(bad.status).toBeGreaterThanOrEqual(400);
    expect(bad.status).toBeLessThan(500);
    expect(bad.body).toMatch(/\S/);
    const noToken = await openConnectTunnel({ host: '127.0.0.1', port, sandboxId: sandbox(1) });
    expect(noToken.status).toBe(401);
  });

  it('garbage bytes get HTTP/1.1 400 and the connection closes', async () => {
    const { reply, closedByPeer } = await rawExchange(port, Buffer.from('\x00\x01\x02garbage\r\n\r\n', 'latin1'));
    expect(reply.toString('latin1')).toMatch(/^HTTP\/1\.1 400/);
    expect(closedByPeer).toBe(true);
  });

  it('a TLS ClientHello on the plaintext port is closed', async () => {
    // Record header (handshake, TLS 1.0 record version) and the start of a ClientHello.
    const hello = Buffer.from([0x16, 0x03, 0x01, 0x00, 0x2f, 0x01, 0x00, 0x00, 0x2b, 0x03, 0x03, ...Buffer.alloc(40, 7)]);
    const { reply, closedByPeer } = await rawExchange(port, hello);
    expect(closedByPeer).toBe(true);
    expect(reply.length).toBe(0);
  });

  it('an h2 preface followed by garbage is closed', async () => {
    const bytes = Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1'), Buffer.alloc(64, 0xff)]);
    const { reply, closedByPeer } = await rawExchange(port, bytes);
    expect(closedByPeer).toBe(true);
    expect(reply.toString('latin1').includes('HTTP/1.1')).toBe(false);
  });

  it('HTTP/1.1 headers over 16 KiB get 431', async () => {
    const big = `GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: ${'a'.repeat(20_000)}\r\n\r\n`;
    const get = await rawExchange(port, Buffer.from(big, 'latin1'));
    expect(get.reply.toString('latin1')).toMatch(/^HTTP\/1\.1 431/);
    const connect = `CONNECT /connect/ssh HTTP/1.1\r\nhost: x\r\nx-sandbox-id: ${sandbox(0)}\r\nx-big: ${'a'.repeat(20_000)}\r\n\r\n`;
    const tunnel = await rawExchange(port, Buffer.from(connect, 'latin1'));
    expect(tunnel.reply.toString('latin1')).toMatch(/^HTTP\/1\.1 431/);
  });

  it('an exec cancelled mid-stream releases its stream on the sidecar and its relay on the gateway', async () => {
    const member = fleet.supervisors.get(sandbox(1));
    if (!member) throw new Error('no supervisor');
    expect(await metric('ohs_active_streams', { class: 'exec' })).toBe(0);
    const call = (client.ExecSandbox as (r: unknown) => grpc.ClientReadableStream<ExecSandboxEvent>).call(client, {
      sandbox_id: sandbox(1),
      command: ['sleep', '5'],
    });
    call.on('data', () => undefined);
    const ended = new Promise<number>((resolve) => call.on('status', (s: grpc.StatusObject) => resolve(s.code)));
    call.on('error', () => undefined);
    await expect.poll(() => metric('ohs_active_streams', { class: 'exec' }), { timeout: 5000, interval: 50 }).toBe(1);
    await expect.poll(() => member.supervisor.activeRelays, { timeout: 5000, interval: 50 }).toBe(1);
    const cancelledAt = Date.now();
    call.cancel();
    expect(await ended).toBe(grpc.status.CANCELLED);
    // Well before `sleep 5` would have finished on its own.
    await expect.poll(() => metric('ohs_active_streams', { class: 'exec' }), { timeout: 3000, interval: 50 }).toBe(0);
    await expect.poll(() => member.supervisor.activeRelays, { timeout: 3000, interval: 50 }).toBe(0);
    expect(Date.now() - cancelledAt).toBeLessThan(4000);
  });

  it('an ssh tunnel whose client vanishes mid-session releases the tunnel and the gateway slot', async () => {
    const sbx = sandbox(2);
    // The long-lived session holds one tunnel throughout this file.
    const baseline = await metric('ohs_active_tunnels');
    expect(baseline).toBe(1);
    const { socket } = await openTunnel(sbx);
    const ssh = await sshConnect(socket);
    ssh.on('error', () => undefined);
    await expect.poll(() => metric('ohs_active_tunnels'), { timeout: 3000, interval: 50 }).toBe(baseline + 1);
    expect(gw.slots.held().sandboxes[sbx]).toBe(1);
    // Start a command, then drop the TCP connection under it.
    ssh.exec('sleep 5', () => undefined);
    await new Promise((res) => setTimeout(res, 200));
    socket.destroy();
    await expect.poll(() => metric('ohs_active_tunnels'), { timeout: 3000, interval: 50 }).toBe(baseline);
    await expect.poll(() => gw.slots.held().sandboxes[sbx], { timeout: 3000, interval: 50 }).toBeUndefined();
    await expect.poll(() => fleet.supervisors.get(sbx)?.supervisor.activeRelays, { timeout: 3000, interval: 50 }).toBe(0);
    ssh.end();
  });

  it('a CONNECT with a duplicated x-sandbox-id or x-sandbox-token is refused 400 and takes no slot', async () => {
    const sbx = sandbox(1);
    const { token } = await unary<{ token: string }>(client, 'CreateSshSession', { sandbox_id: sbx });
    for (const extra of [`X-Sandbox-Id: ${sandbox(0)}`, `x-sandbox-token: ${token}`]) {
      const head = `CONNECT /connect/ssh HTTP/1.1\r\nHost: x\r\nx-sandbox-id: ${sbx}\r\nx-sandbox-token: ${token}\r\n${extra}\r\n\r\n`;
      const { reply } = await rawExchange(port, Buffer.from(head, 'latin1'));
      expect(reply.toString('latin1')).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n[\s\S]*duplicate x-sandbox-(id|token) header/);
    }
    expect(gw.slots.held().sandboxes[sbx]).toBeUndefined();
  });

  it('a request pipelined after a refused CONNECT never reaches the gateway raw', async () => {
    // The gateway refuses the CONNECT (401, unknown token); the bytes after it are a gRPC preface
    // that, spliced through, would reach the gateway unclassified and with x-ohs-* headers intact.
    const head = `CONNECT /connect/ssh HTTP/1.1\r\nHost: x\r\nx-sandbox-id: ${sandbox(1)}\r\nx-sandbox-token: not-a-token\r\n\r\n`;
    const pipelined = 'GET /healthz HTTP/1.1\r\nHost: x\r\nx-ohs-peer-auth: forged\r\n\r\n';
    const { reply, closedByPeer } = await rawExchange(port, Buffer.from(head + pipelined, 'latin1'));
    const text = reply.toString('latin1');
    expect(text).toMatch(/^HTTP\/1\.1 401 /);
    // Exactly one response: the gateway's refusal; the pipelined request got no answer of its own.
    expect(text.match(/HTTP\/1\.1 /g)?.length).toBe(1);
    expect(closedByPeer).toBe(true);
  });

  it('after all of the above, the long-lived session, a fresh ssh and an exec still work', async () => {
    if (!longLived) throw new Error('long-lived session missing');
    expect((await sshExec(longLived.ssh, 'sandbox-id')).trim()).toBe(sandbox(0));
    const { token } = await unary<{ token: string }>(client, 'CreateSshSession', { sandbox_id: sandbox(1) });
    const fresh = await sshViaGateway({ host: '127.0.0.1', port, sandboxId: sandbox(1), token, command: 'sandbox-id' });
    expect(fresh.status).toBe(200);
    expect(fresh.stdout.trim()).toBe(sandbox(1));
    expect(await exec(client, sandbox(2), ['sandbox-id'])).toEqual({ stdout: `${sandbox(2)}\n`, stderr: '', exitCode: 0 });
    expect(sidecar.alive()).toBe(true);
    expect(sidecar.output.filter((l) => /unhandled|uncaught/i.test(l))).toEqual([]);
    expect(await metric('ohs_active_streams', { class: 'exec' })).toBe(0);
  });
});
