// deploy/compose validated by real Compose implementations (`config`, which needs no engine):
// Docker Compose v2 (built from its Go module) and docker-compose 1.29 (Debian). Then the pod-like
// shape of the normalised model: pairs share a network namespace, the sidecar stops before its
// gateway, ports line up, and the sidecar's own config loader accepts every sidecar's environment.
import { spawnSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import tls from 'node:tls';
import pino from 'pino';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { CONFIG_OPTIONS, loadConfig } from '../../src/config/load.ts';
import { certificateNamesReplica } from '../../src/peers/peer-identity.ts';
import { createPeerTlsMaterial } from '../../src/peers/peer-tls.ts';
import { repoRoot } from './support/manifests.ts';
import { composeV1, composeV2, skipUnless } from './support/tools.ts';

type Json = Record<string, unknown>;
const DIR = path.join(repoRoot, 'deploy/compose');
const FILE = path.join(DIR, 'compose.yaml');
const V2 = composeV2();
const V1 = composeV1();
const PAIRS = [1, 2, 3];

const scratch = mkdtempSync(path.join(os.tmpdir(), 'ohs-compose-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));
const envFile = path.join(scratch, '.env');
writeFileSync(
  envFile,
  readFileSync(path.join(DIR, '.env.example'), 'utf8')
    .replace(/^OHS_PEER_SECRET=$/m, 'OHS_PEER_SECRET=0123456789abcdef01234567')
    .replace(/^OPENSHELL_KEK=$/m, 'OPENSHELL_KEK=MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=')
    .replace(/^POSTGRES_PASSWORD=$/m, 'POSTGRES_PASSWORD=openshell-pw'),
);

function compose(bin: string, args: string[], withEnv = true, files = [FILE]): { code: number | null; stdout: string; stderr: string } {
  // A clean environment: only the env file decides the interpolation.
  const r = spawnSync(bin, [...(withEnv ? ['--env-file', envFile] : []), ...files.flatMap((f) => ['-f', f]), ...args], {
    cwd: DIR,
    env: { PATH: process.env.PATH ?? '', HOME: scratch },
    encoding: 'utf8',
    timeout: 60_000,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Services in the order `docker compose stop` stops them: dependents first (reverse dependency order). */
function stopOrder(services: Record<string, Json>): string[] {
  const deps = (name: string): string[] => {
    const s = services[name] as Json;
    const d = s['depends_on'];
    const list = Array.isArray(d) ? (d as string[]) : Object.keys((d as Json | undefined) ?? {});
    const nm = /^service:(.+)$/.exec(String(s['network_mode'] ?? ''))?.[1];
    return nm ? [...new Set([...list, nm])] : list;
  };
  const start: string[] = [];
  const seen = new Set<string>();
  const visit = (n: string): void => {
    if (seen.has(n)) return;
    seen.add(n);
    for (const d of deps(n)) visit(d);
    start.push(n);
  };
  for (const n of Object.keys(services).sort()) visit(n);
  return start.reverse();
}

function checkModel(model: Json, label: string): void {
  const services = model['services'] as Record<string, Json>;
  expect(Object.keys(services).sort()).toEqual(['front', 'gateway-1', 'gateway-2', 'gateway-3', 'pair1', 'pair2', 'pair3', 'postgres', 'redis', 'sidecar-1', 'sidecar-2', 'sidecar-3']);
  const order = stopOrder(services);
  const envOf = (s: Json): Record<string, string> => {
    const e = s['environment'];
    if (Array.isArray(e)) return Object.fromEntries((e as string[]).map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]));
    return Object.fromEntries(Object.entries((e as Json | undefined) ?? {}).map(([k, v]) => [k, String(v)]));
  };
  const known = new Set(CONFIG_OPTIONS.map((o) => o.env));
  const pending: string[] = [];
  for (const n of PAIRS) {
    const gw = services[`gateway-${n}`] as Json;
    const sc = services[`sidecar-${n}`] as Json;
    const pair = services[`pair${n}`] as Json;
    // One network namespace per pair, owned by the pause container; only the owner publishes.
    expect(gw['network_mode']).toBe(`service:pair${n}`);
    expect(sc['network_mode']).toBe(`service:pair${n}`);
    expect(gw['ports'] ?? []).toEqual([]);
    expect(sc['ports'] ?? []).toEqual([]);
    // The sidecar stops (and drains) while its gateway still runs; the gateway before its netns owner.
    expect(order.indexOf(`sidecar-${n}`)).toBeLessThan(order.indexOf(`gateway-${n}`));
    expect(order.indexOf(`gateway-${n}`)).toBeLessThan(order.indexOf(`pair${n}`));
    const gwEnv = envOf(gw);
    const scEnv = envOf(sc);
    // The gateway on the pair's loopback, on the port the sidecar forwards to and the owner publishes
    // for the Docker driver's callbacks (which land on the sidecar).
    expect(gwEnv['OPENSHELL_BIND_ADDRESS']).toBe('127.0.0.1');
    expect(gw['command']).toEqual([]);
    const port = gwEnv['OPENSHELL_SERVER_PORT'] as string;
    expect(scEnv['OHS_GATEWAY_URL']).toBe(`http://127.0.0.1:${port}`);
    const published = ((pair['ports'] as Array<Json | string>) ?? []).map((p) => (typeof p === 'string' ? p : `${String(p['published'])}:${String(p['target'])}`));
    expect(published.some((p) => p.endsWith(`${port}:8080`))).toBe(true);
    expect(scEnv['OHS_PEER_URL']).toBe(`http://pair${n}:8443`);
    expect(gwEnv['OPENSHELL_DB_URL']).toBe(scEnv['OHS_DATABASE_URL']);
    expect(gwEnv['OPENSHELL_REPLICA_ID']).toBe(scEnv['OHS_REPLICA_ID']);
    // The sidecar's own loader accepts exactly this environment (cluster mode, no unknown keys).
    const cfg = loadConfig({ argv: [], env: scEnv });
    expect(cfg.mode).toBe('cluster');
    expect(cfg.peerUrl).toBe(`http://pair${n}:8443`);
    for (const k of Object.keys(scEnv)) if (!known.has(k as never)) pending.push(k);
  }
  // Every variable the compose file gives the sidecar is one it reads.
  expect([...new Set(pending)]).toEqual([]);
  console.log(`${label}: stop order ${order.join(' → ')}`);
}

describe('deploy/compose under real Compose implementations', () => {
  it.skipIf(skipUnless(V2))('Docker Compose v2 `config` accepts it; the normalised model has the pod shape', () => {
    const r = compose(V2.bin as string, ['config', '--format', 'json']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    checkModel(JSON.parse(r.stdout) as Json, `compose ${spawnSync(V2.bin as string, ['version', '--short'], { encoding: 'utf8' }).stdout.trim()}`);
    const quiet = compose(V2.bin as string, ['config', '--quiet']);
    expect(quiet.code).toBe(0);
  });

  it.skipIf(skipUnless(V1))('docker-compose 1.29 `config` accepts it too (the file stays inside the 1.29 subset)', () => {
    const version = spawnSync(V1.bin as string, ['version', '--short'], { encoding: 'utf8' }).stdout.trim();
    const r = compose(V1.bin as string, ['config']);
    expect(r.code, r.stderr).toBe(0);
    checkModel(parse(r.stdout) as Json, `docker-compose ${version}`);
  });

  it.skipIf(skipUnless(V2))('a missing secret stops `config` with the variable named', () => {
    const r = compose(V2.bin as string, ['config'], false);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/required variable (OPENSHELL_GATEWAY_TAG|POSTGRES_PASSWORD|OHS_PEER_SECRET|OPENSHELL_KEK) is missing a value/);
  });

  it('the front balances over exactly the pairs, health-checked on the sidecars’ /readyz', () => {
    const cfg = readFileSync(path.join(DIR, 'haproxy.cfg'), 'utf8');
    expect([...cfg.matchAll(/^\s*server (\S+) (\S+)$/gm)].map((m) => `${m[1]}=${m[2]}`)).toEqual(PAIRS.map((n) => `pair${n}=pair${n}:8080`));
    expect(cfg).toMatch(/option httpchk GET \/readyz/);
    expect(cfg).toMatch(/check port 9091/);
  });
});

const PEER_FILE = path.join(DIR, 'compose.peer-mtls.yaml');

/** The sidecars' environment and volumes in a normalised model (v2 JSON or 1.29 YAML). */
function sidecarsOf(model: Json): Array<{ n: number; env: Record<string, string>; volumes: string[] }> {
  const services = model['services'] as Record<string, Json>;
  return PAIRS.map((n) => {
    const sc = services[`sidecar-${n}`] as Json;
    const e = sc['environment'];
    const env = Array.isArray(e)
      ? Object.fromEntries((e as string[]).map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]))
      : Object.fromEntries(Object.entries((e as Json | undefined) ?? {}).map(([k, v]) => [k, String(v)]));
    const volumes = ((sc['volumes'] as unknown[] | undefined) ?? []).map((v) =>
      typeof v === 'string' ? v : `${String((v as Json)['source'])}:${String((v as Json)['target'])}:${(v as Json)['read_only'] === true ? 'ro' : 'rw'}`,
    );
    return { n, env, volumes };
  });
}

function checkPeerTlsModel(model: Json): void {
  for (const { n, env, volumes } of sidecarsOf(model)) {
    expect(env).toMatchObject({
      OHS_PEER_TLS_CA_FILE: '/etc/ohs/peer-tls/ca.crt',
      OHS_PEER_TLS_CERT_FILE: '/etc/ohs/peer-tls/tls.crt',
      OHS_PEER_TLS_KEY_FILE: '/etc/ohs/peer-tls/tls.key',
      OHS_PEER_IDENTITY: 'san',
      OHS_PEER_URL: `https://pair${n}:8443`,
    });
    // Only its own pair's directory, read-only.
    expect(volumes).toEqual([`${path.join(DIR, 'pki/peer', `pair${n}`)}:/etc/ohs/peer-tls:ro`]);
    const cfg = loadConfig({ argv: [], env });
    expect(cfg.peerTls).toMatchObject({ identity: 'san', certFile: '/etc/ohs/peer-tls/tls.crt' });
    expect(cfg.peerUrl).toBe(`https://pair${n}:8443`);
  }
}

describe('deploy/compose with peer mTLS (compose.peer-mtls.yaml)', () => {
  it.skipIf(skipUnless(V2))('Docker Compose v2 merges it: each sidecar mounts its own pair directory, gets the peer TLS variables and an https peer URL', () => {
    const r = compose(V2.bin as string, ['config', '--format', 'json'], true, [FILE, PEER_FILE]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    checkPeerTlsModel(JSON.parse(r.stdout) as Json);
  });

  it.skipIf(skipUnless(V1))('docker-compose 1.29 merges it alike', () => {
    const r = compose(V1.bin as string, ['config'], true, [FILE, PEER_FILE]);
    expect(r.code, r.stderr).toBe(0);
    checkPeerTlsModel(parse(r.stdout) as Json);
  });

  it('the openssl commands of the README make certificates that name their pair, and two pairs complete an mTLS handshake with them', async () => {
    const readme = readFileSync(path.join(DIR, 'README.md'), 'utf8');
    const block = /<!-- peer-pki:start -->\n```sh\n([\s\S]*?)```\n<!-- peer-pki:end -->/.exec(readme)?.[1];
    expect(block).toBeDefined();
    const dir = path.join(scratch, 'peer-pki');
    // As written, except the chown to the containers' uid (needs root; not what is checked here).
    const script = (block as string).replace(/^sudo .*$/m, '');
    const r = spawnSync('bash', ['-euo', 'pipefail', '-c', script], { cwd: (() => (spawnSync('mkdir', ['-p', dir]), dir))(), encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const peer = path.join(dir, 'pki/peer');
    const ca = new X509Certificate(readFileSync(path.join(peer, 'ca.crt')));
    for (const n of PAIRS) {
      const pem = readFileSync(path.join(peer, `pair${n}`, 'tls.crt'));
      const cert = new X509Certificate(pem);
      expect(cert.verify(ca.publicKey)).toBe(true);
      expect(readFileSync(path.join(peer, `pair${n}`, 'ca.crt'))).toEqual(readFileSync(path.join(peer, 'ca.crt')));
      // The sidecars' own identity rule: the SAN names the host of pair n's peer URL, and no other pair.
      expect(certificateNamesReplica(cert.raw, 'san', `pair${n}`, `https://pair${n}:8443`)).toBe(`DNS:pair${n}`);
      expect(certificateNamesReplica(cert.raw, 'san', 'other', `https://pair${(n % 3) + 1}:8443`)).toBeUndefined();
    }
    // pair1 dials pair2 with the sidecars' own TLS material, as their peer pools do (server name pair2).
    const material = (n: number): ReturnType<typeof createPeerTlsMaterial> =>
      createPeerTlsMaterial({
        config: { certFile: path.join(peer, `pair${n}`, 'tls.crt'), keyFile: path.join(peer, `pair${n}`, 'tls.key'), caFile: path.join(peer, `pair${n}`, 'ca.crt'), identity: 'san' },
        logger: pino({ level: 'silent' }),
      });
    const [m1, m2] = [material(1), material(2)];
    const seen: string[] = [];
    const server = tls.createServer({ ...m2.serverOptions(), ALPNProtocols: ['h2'] }, (sock) => {
      seen.push(new X509Certificate(sock.getPeerCertificate().raw).subject);
      sock.end();
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      const port = (server.address() as AddressInfo).port;
      const dial = (servername: string): Promise<string> =>
        new Promise((resolve) => {
          const sock = tls.connect({ ...m1.clientOptions('pair2'), host: '127.0.0.1', port, servername, ALPNProtocols: ['h2'] });
          // Connected once the server, having read our certificate, ends the connection.
          let connected = false;
          sock.once('secureConnect', () => (connected = true));
          sock.on('data', () => undefined);
          sock.once('close', () => resolve(connected ? 'connected' : 'closed'));
          sock.once('error', (err: Error & { code?: string }) => resolve(err.code ?? err.message));
        });
      expect(await dial('pair2')).toBe('connected');
      // Dialled as pair3, pair2's certificate does not do.
      expect(await dial('pair3')).toBe('ERR_TLS_CERT_ALTNAME_INVALID');
      expect(new Set(seen)).toEqual(new Set(['CN=pair1']));
    } finally {
      m1.close();
      m2.close();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });
});
