// The public listener with TLS: gRPC (ALPN h2) and HTTP/1.1 CONNECT both work over TLS, and a
// client without a certificate is refused when a client CA is configured.
import { readFileSync } from 'node:fs';
import tls from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import { Client as SshClient } from 'ssh2';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startGateway, type Gateway } from '../../emulator/gateway/server.ts';
import { startProcess, sidecarCommand, type ManagedProcess } from '../../emulator/process.ts';
import { openShellClient } from '../../emulator/proto.ts';
import { startSupervisorFleet } from '../../emulator/supervisor/fleet.ts';
import { makeTestPki, type TestPki } from '../helpers/certs.ts';
import { exec, type OpenShellClient } from '../helpers/grpc-client.ts';
import { createTestDatabase, type TestDatabase } from '../helpers/services.ts';

let pki: TestPki;
let db: TestDatabase;
let gw: Gateway;
let sidecar: ManagedProcess;
let fleet: Awaited<ReturnType<typeof startSupervisorFleet>>;
let sandbox: string;

beforeAll(async () => {
  // A CA, a server cert for 127.0.0.1 and a client cert, all signed by that CA.
  pki = makeTestPki();
  db = await createTestDatabase('sidecar_tls');
  gw = await startGateway({ databaseUrl: db.url, replica: 'gw-tls' });
  sandbox = (await gw.store.createSandbox()).id;
  // The supervisor talks to the gateway directly here; this test is about the client side.
  fleet = await startSupervisorFleet({ endpoint: `127.0.0.1:${gw.port}`, sandboxIds: [sandbox] });
  await fleet.waitAllConnected(15_000);
  sidecar = await startProcess('sidecar-tls', [
    ...sidecarCommand(),
    '--listen', '127.0.0.1:0', '--peer-listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0',
    '--gateway', `http://127.0.0.1:${gw.port}`, '--replica-id', 'tls',
    '--tls-cert', pki.serverCert, '--tls-key', pki.serverKey, '--tls-client-ca', pki.ca,
  ]);
}, 60_000);

afterAll(async () => {
  await sidecar?.kill('SIGTERM');
  await fleet?.stop();
  await gw?.close();
  await db?.drop();
  pki?.cleanup();
});

// grpc-js would send the IP target as SNI (a DEP0123 warning); verify against localhost instead.
const CLIENT_OPTIONS = { 'grpc.ssl_target_name_override': 'localhost' };

function creds(withClientCert: boolean): grpc.ChannelCredentials {
  // Default identity check: the server certificate carries DNS:localhost (and IP:127.0.0.1).
  const ca = readFileSync(pki.ca);
  return withClientCert
    ? grpc.credentials.createSsl(ca, readFileSync(pki.clientKey), readFileSync(pki.clientCert))
    : grpc.credentials.createSsl(ca, null, null);
}

it('gRPC over TLS with a client certificate reaches the gateway through the sidecar', async () => {
  const Ctor = openShellClient();
  const client = new Ctor(`127.0.0.1:${sidecar.ready.listenPort as number}`, creds(true), CLIENT_OPTIONS) as unknown as OpenShellClient;
  try {
    const r = await exec(client, sandbox, ['sandbox-id']);
    expect(r.stdout.trim()).toBe(sandbox);
  } finally {
    client.close();
  }
});

it('CONNECT over TLS (HTTP/1.1, no ALPN) carries an SSH session', async () => {
  const token = (await gw.store.createSshSession(sandbox, 3600)).token;
  const sock = tls.connect({
    host: '127.0.0.1',
    port: sidecar.ready.listenPort as number,
    ca: readFileSync(pki.ca),
    key: readFileSync(pki.clientKey),
    cert: readFileSync(pki.clientCert),
  });
  await new Promise<void>((resolve, reject) => {
    sock.once('secureConnect', () => resolve());
    sock.once('error', reject);
  });
  sock.write(`CONNECT /connect/ssh HTTP/1.1\r\nHost: x\r\nx-sandbox-id: ${sandbox}\r\nx-sandbox-token: ${token}\r\n\r\n`);
  const head = await new Promise<string>((resolve) => {
    let buf = '';
    const onData = (d: Buffer): void => {
      buf += d.toString('latin1');
      const end = buf.indexOf('\r\n\r\n');
      if (end >= 0) {
        sock.off('data', onData);
        sock.pause();
        const rest = Buffer.from(buf.slice(end + 4), 'latin1');
        if (rest.length) sock.unshift(rest);
        resolve(buf.slice(0, end));
      }
    };
    sock.on('data', onData);
  });
  expect(head.split('\r\n')[0]).toBe('HTTP/1.1 200 OK');
  const out = await new Promise<string>((resolve, reject) => {
    const ssh = new SshClient();
    ssh.on('error', reject);
    ssh.on('ready', () =>
      ssh.exec('sandbox-id', (err, ch) => {
        if (err) return reject(err);
        let s = '';
        ch.on('data', (d: Buffer) => (s += d.toString()));
        ch.on('close', () => {
          ssh.end();
          resolve(s);
        });
      }),
    );
    ssh.connect({ sock, username: 'sandbox', password: 'openshell' });
  });
  expect(out.trim()).toBe(sandbox);
});

it('a client without a certificate is refused when a client CA is configured', async () => {
  const Ctor = openShellClient();
  const client = new Ctor(`127.0.0.1:${sidecar.ready.listenPort as number}`, creds(false), CLIENT_OPTIONS) as unknown as OpenShellClient;
  try {
    await expect(exec(client, sandbox, ['echo'])).rejects.toMatchObject({ code: grpc.status.UNAVAILABLE });
  } finally {
    client.close();
  }
});
