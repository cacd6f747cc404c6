import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { spliceAfterResponseHead, type HeadFailure, type ResponseHeadOptions } from '../../../src/proxy/tunnel.ts';

// Both ends of loopback TCP connections, closed after each case.
const sockets: net.Socket[] = [];
const servers: net.Server[] = [];

async function pair(): Promise<[net.Socket, net.Socket]> {
  const server = net.createServer();
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const accepted = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
  const near = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
  const far = await accepted;
  for (const s of [near, far]) {
    s.on('error', () => undefined);
    sockets.push(s);
  }
  return [near, far];
}

/** Everything `socket` receives until the other side closes. */
function readAll(socket: net.Socket): Promise<string> {
  const chunks: Buffer[] = [];
  socket.on('data', (c: Buffer) => chunks.push(c));
  return new Promise((resolve) => socket.once('close', () => resolve(Buffer.concat(chunks).toString('latin1'))));
}

/** A client and an upstream joined by spliceAfterResponseHead, with what the client receives until its close. */
async function tunnel(opts: ResponseHeadOptions = {}): Promise<{
  received: Promise<string>;
  clientApp: net.Socket;
  upstream: net.Socket;
  gateway: net.Socket;
  closes: () => number;
  failures: Array<HeadFailure | undefined>;
}> {
  const [clientApp, client] = await pair();
  const [upstream, gateway] = await pair();
  let closes = 0;
  const failures: Array<HeadFailure | undefined> = [];
  spliceAfterResponseHead(client, upstream, (status) => status === 200, (_bytes, failure) => {
    closes++;
    failures.push(failure);
  }, opts);
  return { received: readAll(clientApp), clientApp, upstream, gateway, closes: () => closes, failures };
}

afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  await Promise.all(servers.splice(0).map((s) => new Promise((resolve) => s.close(resolve))));
});

describe('a tunnel whose upstream never answers its request', () => {
  it('gets a 502 when the upstream closes before a response head, and is counted closed once', async () => {
    const { received, upstream, gateway, closes, failures } = await tunnel();
    gateway.end();
    const text = await received;
    expect(text).toMatch(/^HTTP\/1\.1 502 Bad Gateway\r\n/);
    expect(text).toMatch(/\r\n\r\ngateway closed the connection before answering\n$/);
    expect(closes()).toBe(1);
    expect(failures).toEqual(['closed']);
    expect(upstream.destroyed).toBe(true);
  });

  it('gets a 502 when the response head is longer than it reads, and the upstream is cut', async () => {
    const { received, gateway, closes } = await tunnel();
    const gatewayClosed = new Promise((resolve) => gateway.once('close', resolve));
    gateway.write(`HTTP/1.1 200 OK\r\nx-long: ${'a'.repeat(20 * 1024)}`);
    const text = await received;
    expect(text).toMatch(/^HTTP\/1\.1 502 Bad Gateway\r\n/);
    expect(text).toContain('gateway response head too long');
    // None of the upstream's bytes reached the client.
    expect(text).not.toContain('x-long');
    await gatewayClosed;
    expect(closes()).toBe(1);
  });

  it('gets a 504 when no response head comes within the bound, and the upstream is cut', async () => {
    const { received, gateway, closes, failures } = await tunnel({ headTimeoutMs: 200 });
    const gatewayClosed = new Promise((resolve) => gateway.once('close', resolve));
    // Part of a head is not an answer.
    gateway.write('HTTP/1.1 200 OK\r\n');
    const text = await received;
    expect(text).toMatch(/^HTTP\/1\.1 504 Gateway Timeout\r\n/);
    expect(text).toContain('gateway sent no response within 200 ms');
    expect(text).not.toContain('200 OK');
    await gatewayClosed;
    expect(closes()).toBe(1);
    expect(failures).toEqual(['timeout']);
  });

  it('a client that leaves first is reported as such, and the upstream is cut', async () => {
    const { clientApp, gateway, closes, failures } = await tunnel({ headTimeoutMs: 60_000 });
    const gatewayClosed = new Promise((resolve) => gateway.once('close', resolve));
    clientApp.destroy();
    await gatewayClosed;
    expect(closes()).toBe(1);
    expect(failures).toEqual(['client-closed']);
  });

  it('an answer within the bound is not cut when the bound passes later', async () => {
    const { clientApp, gateway, closes } = await tunnel({ headTimeoutMs: 200 });
    const first = new Promise<string>((resolve) => clientApp.once('data', (c: Buffer) => resolve(c.toString('latin1'))));
    gateway.write('HTTP/1.1 200 OK\r\n\r\n');
    expect(await first).toBe('HTTP/1.1 200 OK\r\n\r\n');
    await new Promise((resolve) => setTimeout(resolve, 400));
    const echoed = new Promise<string>((resolve) => gateway.once('data', (c: Buffer) => resolve(c.toString('latin1'))));
    clientApp.write('still open');
    expect(await echoed).toBe('still open');
    expect(closes()).toBe(0);
  });

  it('relays an answer that came: the head, then bytes both ways', async () => {
    const [clientApp, client] = await pair();
    const [upstream, gateway] = await pair();
    spliceAfterResponseHead(client, upstream, (status) => status === 200, () => undefined);
    const first = new Promise<string>((resolve) => clientApp.once('data', (c: Buffer) => resolve(c.toString('latin1'))));
    gateway.write('HTTP/1.1 200 OK\r\n\r\n');
    expect(await first).toBe('HTTP/1.1 200 OK\r\n\r\n');
    const echoed = new Promise<string>((resolve) => gateway.once('data', (c: Buffer) => resolve(c.toString('latin1'))));
    clientApp.write('ping');
    expect(await echoed).toBe('ping');
  });
});
