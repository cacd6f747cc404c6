// Peer transport security (issue 10 item 3): sidecars speak mTLS to each other on the peer port, a
// peer's certificate must name the replica it claims to be (SPIFFE id or SAN, checked against the
// replica registry), and rotated certificates are picked up without dropping what is open.
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import http2 from 'node:http2';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import pg from 'pg';
import { Client as SshClient } from 'ssh2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cluster, type Replica } from '../../emulator/cluster.ts';
import { GatewayStore } from '../../emulator/gateway/store.ts';
import { startProcess, sidecarCommand } from '../../emulator/process.ts';
import { openConnectTunnel } from '../../emulator/ssh-client.ts';
import { startSandboxSshServer, type SandboxSshServer } from '../../emulator/supervisor/ssh-server.ts';
import { SupervisorEmulator } from '../../emulator/supervisor/supervisor.ts';
import { issueCert, makeTestPki, type IssuedCert, type TestPki } from '../helpers/certs.ts';
import { exec, gatewayClient, grpcCode, type OpenShellClient } from '../helpers/grpc-client.ts';
import { createTestDatabase, type TestDatabase } from '../helpers/services.ts';

const TRUST_DOMAIN = 'spiffe://ohs.test/replica/';
const SPIFFE_TEMPLATE = `${TRUST_DOMAIN}{replica}`;
const BACKOFF = { initialMs: 100, maxMs: 500 };

interface Rig {
  db: TestDatabase;
  store: GatewayStore;
  cluster: Cluster;
  certs: IssuedCert[];
  clients: OpenShellClient[];
  supervisors: SupervisorEmulator[];
  ssh: SandboxSshServer[];
}

function sidecarPorts(r: Replica): { public: number; peer: number; admin: number } {
  if (!r.sidecarPorts) throw new Error('replica without sidecar');
  return r.sidecarPorts;
}

/** Sum of the series of `name` on a replica's /metrics whose labels include `labels`. */
async function metric(r: Replica, name: string, labels: Record<string, string> = {}): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${sidecarPorts(r).admin}/metrics`)).text();
  let sum = 0;
  for (const line of text.split('\n')) {
    const m = /^([a-z_]+)(\{[^}]*\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    if (Object.entries(labels).every(([k, v]) => (m[2] ?? '').includes(`${k}="${v}"`))) sum += Number(m[3]);
  }
  return sum;
}

/** 'peer session verified' log lines of a sidecar (origin, fingerprint). */
function verifiedSessions(r: Replica): Array<{ origin: string; fingerprint: string }> {
  const out: Array<{ origin: string; fingerprint: string }> = [];
  for (const line of r.sidecar?.output ?? []) {
    if (!line.includes('peer session verified')) continue;
    const j = JSON.parse(line) as { origin: string; fingerprint: string };
    out.push({ origin: j.origin, fingerprint: j.fingerprint });
  }
  return out;
}

interface PeerAnswer {
  status: number | undefined;
  error: string | undefined;
  failed?: string;
}

/** One request on a fresh TLS connection to a peer port, presenting `cert` (or none). */
function peerCall(port: number, pki: TestPki, cert: { cert: string; key: string } | undefined, headers: http2.OutgoingHttpHeaders): Promise<PeerAnswer> {
  return new Promise((resolve) => {
    const session = http2.connect(`https://127.0.0.1:${port}`, {
      ca: readFileSync(pki.ca),
      ...(cert ? { cert: readFileSync(cert.cert), key: readFileSync(cert.key) } : {}),
      // The peer's server certificate names its SPIFFE id, not 127.0.0.1; the chain is what matters here.
      checkServerIdentity: () => undefined,
    });
    let done = false;
    const finish = (a: PeerAnswer): void => {
      if (done) return;
      done = true;
      session.destroy();
      resolve(a);
    };
    session.on('error', (err: Error & { code?: string }) => finish({ status: undefined, error: undefined, failed: err.code ?? err.message }));
    session.on('close', () => finish({ status: undefined, error: undefined, failed: 'closed' }));
    let req: http2.ClientHttp2Stream;
    try {
      req = session.request({ ':method': 'GET', ':path': '/ohs/v1/inspect', 'x-ohs-hop': '1', 'x-ohs-sandbox': '-', 'x-ohs-class': 'inspect', ...headers }, { endStream: true });
    } catch (err) {
      finish({ status: undefined, error: undefined, failed: (err as Error).message });
      return;
    }
    req.on('response', (h) => finish({ status: Number(h[':status']), error: h['x-ohs-error'] as string | undefined }));
    req.on('error', (err: Error & { code?: string }) => finish({ status: undefined, error: undefined, failed: err.code ?? err.message }));
    setTimeout(() => finish({ status: undefined, error: undefined, failed: 'timeout' }), 5_000).unref();
  });
}

/** The certificate a TLS server presents to a new connection. */
function serverFingerprint(port: number, pki: TestPki, client: { cert: string; key: string }): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = tls.connect({ host: '127.0.0.1', port, ca: readFileSync(pki.ca), cert: readFileSync(client.cert), key: readFileSync(client.key), ALPNProtocols: ['h2'], checkServerIdentity: () => undefined });
    sock.once('secureConnect', () => {
      resolve(sock.getPeerCertificate().fingerprint256);
      sock.destroy();
    });
    sock.once('error', reject);
  });
}

function sshSession(sock: Duplex): Promise<SshClient> {
  return new Promise((resolve, reject) => {
    const c = new SshClient();
    c.on('error', reject);
    c.on('ready', () => resolve(c));
    c.connect({ sock, username: 'sandbox', password: 'openshell', readyTimeout: 10_000 });
  });
}

function sshExec(c: SshClient, command: string): Promise<string> {
  return new Promise((resolve, reject) => {
    c.exec(command, (err, ch) => {
      if (err) return reject(err);
      let out = '';
      ch.on('data', (d: Buffer) => (out += d.toString()));
      ch.on('close', () => resolve(out));
      ch.end();
    });
  });
}

async function closeRig(rig: Partial<Rig>): Promise<void> {
  for (const c of rig.clients ?? []) c.close();
  await Promise.all((rig.supervisors ?? []).map((s) => s.stop()));
  await Promise.all((rig.ssh ?? []).map((s) => s.close()));
  await rig.cluster?.close();
  await rig.store?.close();
  await rig.db?.drop();
}

// ---------------------------------------------------------------------------------------------

describe('peer mTLS with SPIFFE identities', () => {
  let pki: TestPki;
  const rig: Partial<Rig> = { certs: [], clients: [], supervisors: [], ssh: [] };
  let sandboxA: string;
  const names = (i: number): { uri: string[]; ip: string[] } => ({ uri: [`${TRUST_DOMAIN}r${i}`], ip: ['127.0.0.1'] });
  const r = (i: number): Replica => rig.cluster!.replica(i);

  beforeAll(async () => {
    pki = makeTestPki();
    for (const i of [0, 1]) rig.certs!.push(issueCert(pki, `r${i}`, names(i)));
    rig.db = await createTestDatabase('peer_mtls');
    rig.store = new GatewayStore(rig.db.url);
    await rig.store.migrate();
    rig.cluster = await Cluster.start({
      replicas: 2,
      databaseUrl: rig.db.url,
      sidecars: {
        // No shared secret at all: the certificates authenticate.
        peerSecret: false,
        extraArgs: ['--log-level', 'info', '--peer-tls-ca', pki.ca, '--peer-identity', 'spiffe', '--peer-spiffe-id', SPIFFE_TEMPLATE,
          '--peer-tls-reload-interval-ms', '200', '--rebalance', 'off', '--readiness-mode', 'off', '--owner-wait-ms', '2000'],
        replicaArgs: ({ index }) => ['--peer-tls-cert', rig.certs![index]!.cert, '--peer-tls-key', rig.certs![index]!.key],
      },
    });
    sandboxA = (await rig.store.createSandbox()).id;
    const ssh = await startSandboxSshServer({ sandboxId: sandboxA });
    rig.ssh!.push(ssh);
    const sup = new SupervisorEmulator({ endpoint: `127.0.0.1:${r(0).publicPort}`, sandboxId: sandboxA, sshPort: ssh.port, backoff: BACKOFF });
    rig.supervisors!.push(sup);
    sup.start();
    await sup.waitConnected(15_000);
  }, 90_000);

  afterAll(async () => {
    await closeRig(rig);
    pki?.cleanup();
  });

  const client = (i: number): OpenShellClient => {
    const c = gatewayClient(`127.0.0.1:${r(i).publicPort}`);
    rig.clients!.push(c);
    return c;
  };

  it('advertises an https peer URL and forwards exec between replicas over mTLS, no shared secret needed', async () => {
    expect(String(r(0).sidecar?.ready.peerUrl)).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    const okBefore = await metric(r(1), 'ohs_forwards_total', { class: 'exec', peer: 'r0', outcome: 'ok' });
    expect(await exec(client(1), sandboxA, ['sandbox-id'])).toEqual({ stdout: `${sandboxA}\n`, stderr: '', exitCode: 0 });
    expect(await metric(r(1), 'ohs_forwards_total', { class: 'exec', peer: 'r0', outcome: 'ok' })).toBe(okBefore + 1);
    // r0 checked r1's certificate: the SPIFFE id for r1, and r1's certificate.
    expect(verifiedSessions(r(0))).toContainEqual({ origin: 'r1', fingerprint: rig.certs![1]!.fingerprint256 });
    expect(r(0).sidecar?.output.some((l) => l.includes('cleartext'))).toBe(false);
  });

  it('the peer port refuses cleartext, clients without a certificate and certificates of another CA', async () => {
    const before = await metric(r(0), 'ohs_peer_identity_refusals_total', { reason: 'handshake' });
    const port = sidecarPorts(r(0)).peer;
    // h2c, as peers spoke before: no TLS, no service.
    const h2c = await new Promise<string>((resolve) => {
      const s = http2.connect(`http://127.0.0.1:${port}`);
      s.on('error', (err: Error & { code?: string }) => resolve(err.code ?? err.message));
      s.on('close', () => resolve('closed'));
      const req = s.request({ ':path': '/ohs/v1/inspect' }, { endStream: true });
      req.on('error', () => undefined);
      req.on('response', () => resolve('answered'));
    });
    expect(h2c).not.toBe('answered');
    // TLS, but no client certificate.
    const noCert = await peerCall(port, pki, undefined, { 'x-ohs-origin': 'r1' });
    expect(noCert.status).toBeUndefined();
    // A certificate naming r1 from a CA of someone else's.
    const rogue = makeTestPki();
    try {
      const forged = issueCert(rogue, 'rogue', names(1));
      const other = await peerCall(port, pki, forged, { 'x-ohs-origin': 'r1' });
      expect(other.status).toBeUndefined();
    } finally {
      rogue.cleanup();
    }
    await expect.poll(() => metric(r(0), 'ohs_peer_identity_refusals_total', { reason: 'handshake' }), { timeout: 3000 }).toBeGreaterThanOrEqual(before + 3);
    expect(r(0).sidecar?.alive()).toBe(true);
  });

  it('a certificate of one replica claiming to be another, or an unregistered one, is refused with 403', async () => {
    const port = sidecarPorts(r(0)).peer;
    const mismatchBefore = await metric(r(0), 'ohs_peer_identity_refusals_total', { reason: 'mismatch' });
    const unregisteredBefore = await metric(r(0), 'ohs_peer_identity_refusals_total', { reason: 'unregistered' });
    // r0's own certificate (valid, from the right CA) presented as r1.
    expect(await peerCall(port, pki, rig.certs![0]!, { 'x-ohs-origin': 'r1' })).toMatchObject({ status: 403, error: 'peer-identity-mismatch' });
    // A certificate for a replica that never registered.
    const stranger = issueCert(pki, 'r9', names(9));
    expect(await peerCall(port, pki, stranger, { 'x-ohs-origin': 'r9' })).toMatchObject({ status: 403, error: 'peer-identity-unregistered' });
    expect(await metric(r(0), 'ohs_peer_identity_refusals_total', { reason: 'mismatch' })).toBe(mismatchBefore + 1);
    expect(await metric(r(0), 'ohs_peer_identity_refusals_total', { reason: 'unregistered' })).toBe(unregisteredBefore + 1);
    expect(r(0).sidecar?.output.some((l) => l.includes('its certificate does not name the replica it claims to be'))).toBe(true);
    // The right certificate for the claimed replica is enough: there is no shared secret in this cluster.
    expect(await peerCall(port, pki, rig.certs![1]!, { 'x-ohs-origin': 'r1' })).toMatchObject({ status: 200 });
    // The label set stays bounded whatever a caller claims.
    const text = await (await fetch(`http://127.0.0.1:${sidecarPorts(r(0)).admin}/metrics`)).text();
    expect(text.match(/ohs_peer_identity_refusals_total\{/g)?.length).toBe(6);
  });

  it('rotated certificates: open sessions keep working, new connections present the new certificates', async () => {
    const { token } = await rig.store!.createSshSession(sandboxA, 3600);
    // An SSH session through r1, so over r1's pooled peer session to r0, opened before the rotation.
    const tunnel = await openConnectTunnel({ host: '127.0.0.1', port: r(1).publicPort, sandboxId: sandboxA, token });
    expect(tunnel.status).toBe(200);
    const ssh = await sshSession(tunnel.socket!);
    try {
      expect((await sshExec(ssh, 'sandbox-id')).trim()).toBe(sandboxA);
      const oldServer = await serverFingerprint(sidecarPorts(r(0)).peer, pki, rig.certs![1]!);
      expect(oldServer).toBe(rig.certs![0]!.fingerprint256);

      // A fake replica rx, registered and owning sandbox F: r1 dials it with r1's client certificate.
      const fake = await startFakePeer(pki, 'rx');
      const admin = new pg.Client({ connectionString: rig.db!.url });
      await admin.connect();
      try {
        const sandboxF = `fake-${Date.now()}`;
        const beat = (): Promise<unknown> =>
          admin.query(
            `INSERT INTO ohs_replicas (replica_id, peer_url, state, heartbeat_at, sessions, started_at, version) VALUES ('rx', $1, 'active', now(), 0, now(), 'fake')
             ON CONFLICT (replica_id) DO UPDATE SET peer_url = EXCLUDED.peer_url, heartbeat_at = now()`,
            [`https://127.0.0.1:${fake.port}`],
          );
        await beat();
        await admin.query(`INSERT INTO ohs_owners (sandbox_id, replica_id, epoch, claimed_at) VALUES ($1, 'rx', 1, now())`, [sandboxF]);
        await admin.query(`SELECT pg_notify('ohs_owners', $1)`, [sandboxF]);
        expect(await grpcCode(exec(client(1), sandboxF, ['true']))).toBe(14);
        expect(fake.clientFingerprints).toEqual([rig.certs![1]!.fingerprint256]);

        // Rotation: new keys and certificates for both replicas, written over the files in use.
        const next = [0, 1].map((i) => issueCert(pki, `r${i}`, names(i), { cert: rig.certs![i]!.cert, key: rig.certs![i]!.key }));
        for (const i of [0, 1]) {
          await expect.poll(() => metric(r(i), 'ohs_peer_tls_reloads_total', { outcome: 'applied' }), { timeout: 5000, interval: 100 }).toBe(1);
        }
        // The SSH session opened before goes on, on the same connections.
        expect((await sshExec(ssh, 'sandbox-id')).trim()).toBe(sandboxA);
        // So does r1's pooled session to r0: another exec rides it, r0 verifies no new session.
        const verifiedBefore = verifiedSessions(r(0)).filter((v) => v.origin === 'r1').length;
        expect((await exec(client(1), sandboxA, ['sandbox-id'])).stdout).toBe(`${sandboxA}\n`);
        expect(verifiedSessions(r(0)).filter((v) => v.origin === 'r1').length).toBe(verifiedBefore);

        // New connections: r0's listener presents its new certificate...
        expect(await serverFingerprint(sidecarPorts(r(0)).peer, pki, next[1]!)).toBe(next[0]!.fingerprint256);
        // ...and r1 presents its new one when it dials anew (rx drops its connection).
        fake.dropSessions();
        await beat();
        expect(await grpcCode(exec(client(1), sandboxF, ['true']))).toBe(14);
        expect(fake.clientFingerprints).toEqual([rig.certs![1]!.fingerprint256, next[1]!.fingerprint256]);
        // r1's status page asks r0 on a connection of its own: with the new certificate too.
        expect((await fetch(`http://127.0.0.1:${sidecarPorts(r(1)).admin}/v1/status`)).status).toBe(200);
        await expect.poll(() => verifiedSessions(r(0)).filter((v) => v.origin === 'r1').map((v) => v.fingerprint), { timeout: 3000 }).toContain(next[1]!.fingerprint256);
        await admin.query(`DELETE FROM ohs_owners WHERE sandbox_id = $1`, [sandboxF]);
        await admin.query(`DELETE FROM ohs_replicas WHERE replica_id = 'rx'`);
      } finally {
        await admin.end();
        await fake.close();
      }
    } finally {
      ssh.end();
    }
  });

  it("the dialling side refuses a peer presenting another replica's valid SPIFFE certificate", async () => {
    // Replica ry is registered at an address where the server holds r0's certificate (valid, same
    // CA): a taken-over address, or a stolen key. r1 means to reach ry, so it must see ry's id.
    const impostor = await startFakePeer(pki, 'ry', rig.certs![0]!);
    const admin = new pg.Client({ connectionString: rig.db!.url });
    await admin.connect();
    const sandboxG = `impostor-${Date.now()}`;
    try {
      await admin.query(
        `INSERT INTO ohs_replicas (replica_id, peer_url, state, heartbeat_at, sessions, started_at, version) VALUES ('ry', $1, 'active', now(), 0, now(), 'fake')`,
        [`https://127.0.0.1:${impostor.port}`],
      );
      await admin.query(`INSERT INTO ohs_owners (sandbox_id, replica_id, epoch, claimed_at) VALUES ($1, 'ry', 1, now())`, [sandboxG]);
      await admin.query(`SELECT pg_notify('ohs_owners', $1)`, [sandboxG]);
      const started = Date.now();
      // The owner is unreachable (not trusted): held for another owner, then the local gateway
      // answers as it would without us (it has no such sandbox: NOT_FOUND).
      expect(await grpcCode(exec(client(1), sandboxG, ['true']))).toBe(5);
      // r1 dialled it, saw r0's id where ry's was due, and sent it nothing.
      expect(impostor.streams()).toBe(0);
      expect(Date.now() - started).toBeLessThan(10_000);
      expect(r(1).sidecar?.output.some((l) => l.includes(`not ${TRUST_DOMAIN}ry`))).toBe(true);
      // The real r0, reached at its own registered address with the same certificate, still works.
      expect((await exec(client(1), sandboxA, ['sandbox-id'])).stdout).toBe(`${sandboxA}\n`);
    } finally {
      await admin.query(`DELETE FROM ohs_owners WHERE sandbox_id = $1`, [sandboxG]);
      await admin.query(`DELETE FROM ohs_replicas WHERE replica_id = 'ry'`);
      await admin.end();
      await impostor.close();
    }
  });

  it('a half-written rotation (a key that does not fit the certificate) is refused and the old pair kept', async () => {
    const before = await metric(r(0), 'ohs_peer_tls_reloads_total', { outcome: 'refused' });
    // Only a new key: the certificate on disk no longer matches it.
    const spare = issueCert(pki, 'spare', names(0));
    const keyPath = rig.certs![0]!.key;
    const oldKey = readFileSync(keyPath);
    copyFileSync(spare.key, keyPath);
    try {
      await expect.poll(() => metric(r(0), 'ohs_peer_tls_reloads_total', { outcome: 'refused' }), { timeout: 5000, interval: 100 }).toBe(before + 1);
      // Still serving with the pair it had.
      expect((await exec(client(1), sandboxA, ['sandbox-id'])).stdout).toBe(`${sandboxA}\n`);
      expect(await peerCall(sidecarPorts(r(0)).peer, pki, rig.certs![1]!, { 'x-ohs-origin': 'r1' })).toMatchObject({ status: 200 });
    } finally {
      writeFileSync(keyPath, oldKey);
    }
  });
});

/** A TLS h2 server standing in for a replica's peer port: records the client certificates it sees. */
async function startFakePeer(
  pki: TestPki,
  replicaId: string,
  presenting?: { cert: string; key: string },
): Promise<{ port: number; clientFingerprints: string[]; streams: () => number; dropSessions(): void; close(): Promise<void> }> {
  const own = presenting ?? issueCert(pki, replicaId, { uri: [`${TRUST_DOMAIN}${replicaId}`], ip: ['127.0.0.1'] });
  const clientFingerprints: string[] = [];
  let streams = 0;
  const sessions = new Set<http2.ServerHttp2Session>();
  const server = http2.createSecureServer({ cert: readFileSync(own.cert), key: readFileSync(own.key), ca: readFileSync(pki.ca), requestCert: true, rejectUnauthorized: true });
  server.on('secureConnection', (sock: tls.TLSSocket) => clientFingerprints.push(sock.getPeerCertificate().fingerprint256));
  server.on('session', (s) => {
    sessions.add(s);
    s.on('close', () => sessions.delete(s));
    s.on('error', () => undefined);
  });
  server.on('stream', (stream) => {
    streams++;
    stream.on('error', () => undefined);
    stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '14', 'grpc-message': 'fake peer' }, { endStream: true });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    clientFingerprints,
    streams: () => streams,
    dropSessions() {
      for (const s of sessions) s.destroy();
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sessions) s.destroy();
        server.close(() => resolve());
      }),
  };
}

// ---------------------------------------------------------------------------------------------

describe('peer mTLS with SAN identities', () => {
  let pki: TestPki;
  const rig: Partial<Rig> = { certs: [], clients: [], supervisors: [], ssh: [] };
  let sandboxA: string;
  const r = (i: number): Replica => rig.cluster!.replica(i);

  beforeAll(async () => {
    pki = makeTestPki();
    // Both replicas register https://127.0.0.1:<port>: the certificate names that address.
    for (const i of [0, 1]) rig.certs!.push(issueCert(pki, `r${i}`, { ip: ['127.0.0.1'] }));
    rig.db = await createTestDatabase('peer_mtls_san');
    rig.store = new GatewayStore(rig.db.url);
    await rig.store.migrate();
    rig.cluster = await Cluster.start({
      replicas: 2,
      databaseUrl: rig.db.url,
      // The shared secret as well: both must hold.
      sidecars: {
        peerSecret: 'peer-mtls-san-secret-0123456789',
        extraArgs: ['--peer-tls-ca', pki.ca, '--rebalance', 'off', '--readiness-mode', 'off'],
        replicaArgs: ({ index }) => ['--peer-tls-cert', rig.certs![index]!.cert, '--peer-tls-key', rig.certs![index]!.key],
      },
    });
    sandboxA = (await rig.store.createSandbox()).id;
    const ssh = await startSandboxSshServer({ sandboxId: sandboxA });
    rig.ssh!.push(ssh);
    const sup = new SupervisorEmulator({ endpoint: `127.0.0.1:${r(0).publicPort}`, sandboxId: sandboxA, sshPort: ssh.port, backoff: BACKOFF });
    rig.supervisors!.push(sup);
    sup.start();
    await sup.waitConnected(15_000);
  }, 90_000);

  afterAll(async () => {
    await closeRig(rig);
    pki?.cleanup();
  });

  it('forwards between replicas whose certificates name their registered address', async () => {
    const c = gatewayClient(`127.0.0.1:${r(1).publicPort}`);
    rig.clients!.push(c);
    expect(await exec(c, sandboxA, ['sandbox-id'])).toEqual({ stdout: `${sandboxA}\n`, stderr: '', exitCode: 0 });
    expect(await metric(r(1), 'ohs_forwards_total', { class: 'exec', peer: 'r0', outcome: 'ok' })).toBe(1);
  });

  it('a certificate for another address is refused (403), and the secret is still required', async () => {
    const port = sidecarPorts(r(0)).peer;
    const elsewhere = issueCert(pki, 'elsewhere', { ip: ['10.1.2.3'], dns: ['r1.peers.example'] });
    expect(await peerCall(port, pki, elsewhere, { 'x-ohs-origin': 'r1', 'x-ohs-peer-auth': 'peer-mtls-san-secret-0123456789' })).toMatchObject({ status: 403, error: 'peer-identity-mismatch' });
    // The right certificate without the secret: 401, as before peer TLS.
    expect(await peerCall(port, pki, rig.certs![1]!, { 'x-ohs-origin': 'r1' })).toMatchObject({ status: 401 });
    expect(await peerCall(port, pki, rig.certs![1]!, { 'x-ohs-origin': 'r1', 'x-ohs-peer-auth': 'peer-mtls-san-secret-0123456789' })).toMatchObject({ status: 200 });
  });

  it('warns at startup when peer traffic is cleartext on a non-loopback listener, and only then', async () => {
    const start = async (extra: string[]): Promise<string[]> => {
      const p = await startProcess('sidecar-warn', [
        ...sidecarCommand(),
        '--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0', '--gateway', `http://127.0.0.1:${r(0).gatewayPort}`,
        '--database-url', rig.db!.url, '--peer-secret', 'peer-warn-secret-0123456789', '--log-level', 'warn', ...extra,
      ]);
      const out = [...p.output];
      await p.kill('SIGKILL');
      return out;
    };
    const cleartext = await start(['--replica-id', 'warn-a', '--peer-listen', '0.0.0.0:0', '--peer-host', '127.0.0.1']);
    expect(cleartext.some((l) => /peer traffic is cleartext h2c on 0\.0\.0\.0:0/.test(l))).toBe(true);
    const loopback = await start(['--replica-id', 'warn-b', '--peer-listen', '127.0.0.1:0']);
    expect(loopback.some((l) => l.includes('cleartext'))).toBe(false);
    const encrypted = await start(['--replica-id', 'warn-c', '--peer-listen', '0.0.0.0:0', '--peer-host', '127.0.0.1', '--peer-tls-ca', pki.ca, '--peer-tls-cert', rig.certs![0]!.cert, '--peer-tls-key', rig.certs![0]!.key]);
    expect(encrypted.some((l) => l.includes('cleartext'))).toBe(false);
  });
});
