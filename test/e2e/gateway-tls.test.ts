// The gateway emulator's optional TLS listener (one port, ALPN h2 and http/1.1): gRPC and the
// HTTP/1.1 CONNECT route both work over TLS with a client certificate, and a client without a
// certificate is refused when a client CA is configured.
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import tls from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startGateway, type Gateway } from '../../emulator/gateway/server.ts';
import { openShellClient } from '../../emulator/proto.ts';
import { makeTestPki, type TestPki } from '../helpers/certs.ts';
import { unary, type OpenShellClient } from '../helpers/grpc-client.ts';
import { createTestDatabase, type TestDatabase } from '../helpers/services.ts';

let pki: TestPki;
let db: TestDatabase;
let gw: Gateway;
const clients: OpenShellClient[] = [];
const sockets: tls.TLSSocket[] = [];

beforeAll(async () => {
  pki = makeTestPki();
  db = await createTestDatabase('gateway_tls');
  gw = await startGateway({
    databaseUrl: db.url,
    replica: 'gw-tls',
    tls: { certFile: pki.serverCert, keyFile: pki.serverKey, clientCaFile: pki.ca },
  });
}, 60_000);

afterAll(async () => {
  for (const c of clients) c.close();
  for (const s of sockets) s.destroy();
  await gw?.close();
  await db?.drop();
  pki?.cleanup();
});

function client(withClientCert: boolean): OpenShellClient {
  const Ctor = openShellClient();
  const ca = readFileSync(pki.ca);
  // Default identity check. grpc-js would send the IP target as SNI (a DEP0123 warning), so the
  // name is overridden to localhost, which the server certificate also carries.
  const creds = withClientCert
    ? grpc.credentials.createSsl(ca, readFileSync(pki.clientKey), readFileSync(pki.clientCert))
    : grpc.credentials.createSsl(ca, null, null);
  const c = new Ctor(`127.0.0.1:${gw.port}`, creds, {
    'grpc.use_local_subchannel_pool': 1,
    'grpc.ssl_target_name_override': 'localhost',
  }) as unknown as OpenShellClient;
  clients.push(c);
  return c;
}

/** A TLS connection to the gateway port without ALPN, optionally presenting the client cert. */
function tlsSocket(withClientCert: boolean): tls.TLSSocket {
  const sock = tls.connect({
    host: '127.0.0.1',
    port: gw.port,
    ca: readFileSync(pki.ca),
    ...(withClientCert ? { key: readFileSync(pki.clientKey), cert: readFileSync(pki.clientCert) } : {}),
  });
  sockets.push(sock);
  return sock;
}

/** Sends `CONNECT /connect/ssh` over a fresh TLS connection and returns the whole response. */
async function connectSsh(sandboxId: string, token: string): Promise<{ response: string; alpn: string | false | null }> {
  const sock = tlsSocket(true);
  await new Promise<void>((resolve, reject) => {
    sock.once('secureConnect', () => resolve());
    sock.once('error', reject);
  });
  const alpn = sock.alpnProtocol;
  sock.write(`CONNECT /connect/ssh HTTP/1.1\r\nHost: x\r\nx-sandbox-id: ${sandboxId}\r\nx-sandbox-token: ${token}\r\n\r\n`);
  // Error statuses are written with `connection: close` and the socket ended after them.
  const response = await new Promise<string>((resolve, reject) => {
    let buf = '';
    sock.on('data', (d: Buffer) => (buf += d.toString('latin1')));
    sock.once('end', () => resolve(buf));
    sock.once('error', reject);
  });
  sock.destroy();
  return { response, alpn };
}

describe('gateway emulator TLS with a client CA', () => {
  it('gRPC Health over TLS with a client certificate answers status 1', async () => {
    const res = await unary<{ status: number; version: string }>(client(true), 'Health', {});
    expect(res.status).toBe(1);
  });

  it('HTTP/1.1 CONNECT over TLS (no ALPN) answers 401 for a bad token', async () => {
    const sandbox = (await gw.store.createSandbox()).id;
    const { response, alpn } = await connectSsh(sandbox, randomUUID());
    expect(alpn).toBe(false);
    expect(response.split('\r\n')[0]).toBe('HTTP/1.1 401 Unauthorized');
  });

  it('HTTP/1.1 CONNECT over TLS (no ALPN) answers 412 for a valid token of a sandbox that is not Ready', async () => {
    // createSandbox() starts in Provisioning and no supervisor is connected.
    const sandbox = (await gw.store.createSandbox()).id;
    const token = (await gw.store.createSshSession(sandbox, 3600)).token;
    const { response } = await connectSsh(sandbox, token);
    expect(response.split('\r\n')[0]).toBe('HTTP/1.1 412 Precondition Failed');
  });

  it('a gRPC client without a certificate fails with UNAVAILABLE', async () => {
    await expect(unary(client(false), 'Health', {}, 10_000)).rejects.toMatchObject({ code: grpc.status.UNAVAILABLE });
  });

  it('a TLS client without a certificate gets no HTTP response; the handshake is refused', async () => {
    const sock = tlsSocket(false);
    // With TLS 1.3 the client may see secureConnect before the server's certificate_required
    // alert arrives, so send a request anyway and check that nothing but an error comes back.
    sock.once('secureConnect', () =>
      sock.write(`CONNECT /connect/ssh HTTP/1.1\r\nHost: x\r\nx-sandbox-id: x\r\nx-sandbox-token: y\r\n\r\n`),
    );
    let received = '';
    sock.on('data', (d: Buffer) => (received += d.toString('latin1')));
    const outcome = await new Promise<string>((resolve) => {
      sock.once('error', (err: NodeJS.ErrnoException) => resolve(`error ${err.code ?? err.message}`));
      sock.once('close', () => resolve('close'));
    });
    expect(received).toBe('');
    expect(outcome).toMatch(/^error /);
  });
});
