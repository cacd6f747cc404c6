// The public listener with TLS: gRPC (ALPN h2) and HTTP/1.1 CONNECT both work over TLS, and a
// client without a certificate is refused when a client CA is configured.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import { Client as SshClient } from 'ssh2';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startGateway, type Gateway } from '../harness/gateway/server.ts';
import { startProcess, tsEntry, type ManagedProcess } from '../harness/process.ts';
import { openShellClient } from '../harness/proto.ts';
import { startSupervisorFleet } from '../harness/supervisor/fleet.ts';
import { exec, type OpenShellClient } from '../helpers/grpc-client.ts';
import { createTestDatabase, type TestDatabase } from '../helpers/services.ts';

let dir: string;
let db: TestDatabase;
let gw: Gateway;
let sidecar: ManagedProcess;
let fleet: Awaited<ReturnType<typeof startSupervisorFleet>>;
let sandbox: string;

function openssl(args: string[]): void {
  execFileSync('openssl', args, { stdio: 'ignore' });
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ohs-tls-'));
  const f = (n: string): string => join(dir, n);
  // A CA, a server cert for 127.0.0.1 and a client cert, all signed by that CA.
  openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', f('ca.key'), '-out', f('ca.crt'), '-days', '1', '-subj', '/CN=ohs-test-ca']);
  for (const who of ['server', 'client']) {
    openssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', f(`${who}.key`), '-out', f(`${who}.csr`), '-subj', `/CN=${who}`]);
    openssl(['x509', '-req', '-in', f(`${who}.csr`), '-CA', f('ca.crt'), '-CAkey', f('ca.key'), '-CAcreateserial', '-out', f(`${who}.crt`), '-days', '1']);
  }
  db = await createTestDatabase('sidecar_tls');
  gw = await startGateway({ databaseUrl: db.url, replica: 'gw-tls' });
  sandbox = (await gw.store.createSandbox()).id;
  // The supervisor talks to the gateway directly here; this test is about the client side.
  fleet = await startSupervisorFleet({ endpoint: `127.0.0.1:${gw.port}`, sandboxIds: [sandbox] });
  await fleet.waitAllConnected(15_000);
  sidecar = await startProcess('sidecar-tls', [
    ...tsEntry('src/main.ts'),
    '--listen', '127.0.0.1:0', '--peer-listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0',
    '--gateway', `http://127.0.0.1:${gw.port}`, '--replica-id', 'tls',
    '--tls-cert', f('server.crt'), '--tls-key', f('server.key'), '--tls-client-ca', f('ca.crt'),
  ]);
}, 60_000);

afterAll(async () => {
  await sidecar?.kill('SIGTERM');
  await fleet?.stop();
  await gw?.close();
  await db?.drop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

function creds(withClientCert: boolean): grpc.ChannelCredentials {
  const f = (n: string): Buffer => readFileSync(join(dir, n));
  return withClientCert
    ? grpc.credentials.createSsl(f('ca.crt'), f('client.key'), f('client.crt'), { checkServerIdentity: () => undefined })
    : grpc.credentials.createSsl(f('ca.crt'), null, null, { checkServerIdentity: () => undefined });
}

it('gRPC over TLS with a client certificate reaches the gateway through the sidecar', async () => {
  const Ctor = openShellClient();
  const client = new Ctor(`127.0.0.1:${sidecar.ready.listenPort as number}`, creds(true)) as unknown as OpenShellClient;
  try {
    const r = await exec(client, sandbox, ['sandbox-id']);
    expect(r.stdout.trim()).toBe(sandbox);
  } finally {
    client.close();
  }
});

it('CONNECT over TLS (HTTP/1.1, no ALPN) carries an SSH session', async () => {
  const f = (n: string): Buffer => readFileSync(join(dir, n));
  const token = (await gw.store.createSshSession(sandbox, 3600)).token;
  const sock = tls.connect({ host: '127.0.0.1', servername: 'server', port: sidecar.ready.listenPort as number, ca: f('ca.crt'), key: f('client.key'), cert: f('client.crt'), checkServerIdentity: () => undefined });
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
  const client = new Ctor(`127.0.0.1:${sidecar.ready.listenPort as number}`, creds(false)) as unknown as OpenShellClient;
  try {
    await expect(exec(client, sandbox, ['echo'])).rejects.toMatchObject({ code: grpc.status.UNAVAILABLE });
  } finally {
    client.close();
  }
});
