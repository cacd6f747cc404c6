// The acceptance tests' SSH helper against a tiny CONNECT endpoint (not the gateway emulator): headers
// sent, refusals parsed, bytes that arrive with the 200 kept.
import http from 'node:http';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openConnectTunnel, sshViaGateway } from '../../emulator/ssh-client.ts';
import { startSandboxSshServer } from '../../emulator/supervisor/ssh-server.ts';
import type { SandboxSshServer } from '../../emulator/supervisor/ssh-server.ts';

const SANDBOX = 'sbx-ssh-client-test';
const TOKEN = 'tok-1';

let ssh: SandboxSshServer;
let proxy: http.Server;
let port: number;
const seen: http.IncomingHttpHeaders[] = [];

beforeAll(async () => {
  ssh = await startSandboxSshServer({ sandboxId: SANDBOX });
  proxy = http.createServer((req, res) => {
    res.writeHead(405, { 'content-type': 'text/plain' }).end(`method ${req.method} not allowed`);
  });
  proxy.on('connect', (req: http.IncomingMessage, client: net.Socket) => {
    seen.push(req.headers);
    client.on('error', () => undefined);
    const id = req.headers['x-sandbox-id'];
    if (id === 'chunked') {
      client.end('HTTP/1.1 502 Bad Gateway\r\ntransfer-encoding: chunked\r\n\r\n5\r\nrelay\r\n7\r\n failed\r\n0\r\n\r\n');
      return;
    }
    if (id !== SANDBOX || req.headers['x-sandbox-token'] !== TOKEN) {
      client.end('HTTP/1.1 401 Unauthorized\r\ncontent-type: text/plain\r\ncontent-length: 12\r\n\r\nunauthorized');
      return;
    }
    // Send the 200 together with the server's first bytes, so the client's parser sees them as `head`.
    const upstream = net.connect({ host: '127.0.0.1', port: ssh.port });
    upstream.on('error', () => client.destroy());
    client.on('close', () => upstream.destroy());
    upstream.once('data', (first: Buffer) => {
      client.write(Buffer.concat([Buffer.from('HTTP/1.1 200 OK\r\n\r\n'), first]));
      upstream.pipe(client);
      client.pipe(upstream);
    });
  });
  await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
  port = (proxy.address() as net.AddressInfo).port;
});

afterAll(async () => {
  proxy?.closeAllConnections();
  await new Promise<void>((resolve) => (proxy ? proxy.close(() => resolve()) : resolve()));
  await ssh?.close();
});

describe('ssh client helper', () => {
  it('runs a command through a CONNECT tunnel, keeping bytes that came with the 200', async () => {
    const res = await sshViaGateway({ host: '127.0.0.1', port, sandboxId: SANDBOX, token: TOKEN, command: 'cat', stdin: 'through the tunnel' });
    expect(res).toEqual({ status: 200, body: '', stdout: 'through the tunnel', stderr: '', code: 0 });
    expect(seen.at(-1)).toMatchObject({ 'x-sandbox-id': SANDBOX, 'x-sandbox-token': TOKEN, host: `127.0.0.1:${port}` });
  });

  it('returns the status and body of a refused tunnel', async () => {
    const res = await openConnectTunnel({ host: '127.0.0.1', port, sandboxId: SANDBOX, token: 'wrong', extraHeaders: { 'x-extra': '1' } });
    expect(res).toMatchObject({ status: 401, body: 'unauthorized', socket: null });
    expect(res.headers['content-type']).toBe('text/plain');
    expect(seen.at(-1)?.['x-extra']).toBe('1');
    const viaGateway = await sshViaGateway({ host: '127.0.0.1', port, sandboxId: SANDBOX, token: 'wrong', command: 'sandbox-id' });
    expect(viaGateway).toEqual({ status: 401, body: 'unauthorized', stdout: '', stderr: '', code: null });
  });

  it('decodes a chunked refusal body', async () => {
    const res = await openConnectTunnel({ host: '127.0.0.1', port, sandboxId: 'chunked', token: TOKEN });
    expect(res).toMatchObject({ status: 502, body: 'relay failed', socket: null });
  });

  it('leaves out headers that are not given and sends empty ones', async () => {
    await openConnectTunnel({ host: '127.0.0.1', port, token: TOKEN });
    expect(seen.at(-1)).not.toHaveProperty('x-sandbox-id');
    await openConnectTunnel({ host: '127.0.0.1', port, sandboxId: '', token: TOKEN });
    expect(seen.at(-1)?.['x-sandbox-id']).toBe('');
  });

  it('a non-CONNECT method gets an ordinary response', async () => {
    const res = await openConnectTunnel({ host: '127.0.0.1', port, sandboxId: SANDBOX, token: TOKEN, method: 'GET' });
    expect(res).toMatchObject({ status: 405, body: 'method GET not allowed', socket: null });
  });

  it('a dead endpoint is an error, not a hang', async () => {
    const srv = net.createServer();
    await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
    const dead = (srv.address() as net.AddressInfo).port;
    await new Promise<void>((resolve) => srv.close(() => resolve()));
    await expect(openConnectTunnel({ host: '127.0.0.1', port: dead, sandboxId: SANDBOX, token: TOKEN })).rejects.toThrow(/ECONNREFUSED/);
  });
});
