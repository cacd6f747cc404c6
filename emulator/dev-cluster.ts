// `openshell-emulator dev-cluster`: a real local cluster (gateway emulators + sidecars +
// supervisors) on loopback, using the local Postgres (and Redis when reachable). Stays up until
// SIGTERM/SIGINT. With --json it prints one JSON document describing the cluster.
import { randomBytes } from 'node:crypto';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import { Redis } from 'ioredis';
import pg from 'pg';
import { Cluster } from './cluster.ts';
import { startGateway } from './gateway/server.ts';
import { Gen2Store } from './gateway/gen2/store.ts';
import { GatewayStore, type GatewayPersistence } from './gateway/store.ts';
import { sshViaForwardTcp } from './forward-tcp-client.ts';
import { startProcess, tsEntry } from './process.ts';
import { DEFAULT_ECHO_TARGET_PORT, startSupervisorFleet } from './supervisor/fleet.ts';
import { sshViaGateway } from './ssh-client.ts';

const DEFAULT_DATABASE_URL = 'postgres://postgres@127.0.0.1:5432/test';
const DEFAULT_REDIS_URL = 'redis://127.0.0.1:6379';

/** How to start the emulator CLI again (from source through tsx, or the built bundle). */
function emulatorCommand(): string[] {
  if (import.meta.url.endsWith('.ts')) return tsEntry('emulator/main.ts');
  return [process.execPath, process.argv[1] as string];
}

/** How to start the sidecar: from source through tsx, or the bundle built next to this one. */
function sidecarCommand(): string[] {
  if (import.meta.url.endsWith('.ts')) return tsEntry('src/main.ts');
  return [process.execPath, join(dirname(process.argv[1] as string), 'main.js')];
}

async function redisReachable(url: string): Promise<boolean> {
  const r = new Redis(url, { lazyConnect: true, connectTimeout: 1000, maxRetriesPerRequest: 0, retryStrategy: () => null, enableOfflineQueue: false });
  r.on('error', () => undefined);
  try {
    await r.connect();
    return (await r.ping()) === 'PONG';
  } catch {
    return false;
  } finally {
    r.disconnect();
  }
}

async function createDatabase(adminUrl: string): Promise<{ url: string; drop: () => Promise<void> }> {
  const name = `ohs_dev_${randomBytes(4).toString('hex')}`;
  const admin = new pg.Client({ connectionString: adminUrl, connectionTimeoutMillis: 2000 });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${name}`);
  } finally {
    await admin.end();
  }
  const u = new URL(adminUrl);
  u.pathname = `/${name}`;
  return {
    url: u.toString(),
    drop: async () => {
      const c = new pg.Client({ connectionString: adminUrl });
      await c.connect();
      await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`).finally(() => c.end());
    },
  };
}

interface DevSandbox {
  id: string;
  name: string;
  workspace: string;
  /** An SSH session token (CreateSshSession) for it. */
  token: string;
  /** Service hostnames (2026-08) that reach its HTTP/WebSocket echo through the Service. */
  services: string[];
}

async function metricSum(adminPort: number, name: string, filter: (labels: string) => boolean): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
  let sum = 0;
  for (const line of text.split('\n')) {
    const m = /^(\w+)(\{[^}]*\})? ([0-9.e+-]+)$/.exec(line);
    if (m && m[1] === name && filter(m[2] ?? '')) sum += Number(m[3]);
  }
  return sum;
}

export async function runDevCluster(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      replicas: { type: 'string', default: '3' },
      sandboxes: { type: 'string', default: '5' },
      json: { type: 'boolean', default: false },
      'database-url': { type: 'string' },
      'redis-url': { type: 'string' },
      'log-level': { type: 'string', default: 'warn' },
      embedded: { type: 'boolean', default: false },
      protocol: { type: 'string', default: '2026-08' },
    },
  });
  const protocol = values.protocol;
  if (protocol !== '2026-04' && protocol !== '2026-08') {
    console.error(`dev-cluster: --protocol must be 2026-04 or 2026-08, got ${protocol}`);
    process.exit(2);
  }
  const gen2 = protocol === '2026-08';
  const replicas = Math.max(1, Number(values.replicas));
  const sandboxCount = Math.max(1, Number(values.sandboxes));
  const say = (line: string): void => {
    if (!values.json) process.stderr.write(`${line}\n`);
  };
  const adminUrl = values['database-url'] ?? process.env.OHS_DATABASE_URL ?? process.env.TEST_DATABASE_URL ?? DEFAULT_DATABASE_URL;
  let db;
  if (!values.embedded) {
    try {
      db = await createDatabase(adminUrl);
    } catch (err) {
      say(`postgres not reachable at ${adminUrl} (${(err as Error).message}): starting one embedded replica instead`);
    }
  }
  if (!db) {
    // The 2026-08 emulator keeps its state in Postgres only; in memory the seed generation runs.
    if (gen2) say('no database: the embedded replica speaks the 2026-04 generation (the 2026-08 emulator needs Postgres)');
    await runEmbedded(sandboxCount, values.json ?? false, values['log-level'] ?? 'warn', say);
    return;
  }
  const redisUrl = values['redis-url'] ?? process.env.OHS_REDIS_URL ?? DEFAULT_REDIS_URL;
  const useRedis = await redisReachable(redisUrl);
  say(`postgres: ${db.url}`);
  say(useRedis ? `redis: ${redisUrl}` : `redis: not reachable at ${redisUrl}; sidecars run without the Redis cache`);

  const store: GatewayPersistence & { pool: pg.Pool } = gen2 ? new Gen2Store(db.url) : new GatewayStore(db.url);
  await store.migrate();
  const cluster = await Cluster.start({
    replicas,
    databaseUrl: db.url,
    protocol,
    logLevel: values['log-level'] ?? 'warn',
    gatewayCommand: [...emulatorCommand(), 'gateway'],
    sidecars: {
      command: sidecarCommand(),
      peerSecret: randomBytes(24).toString('hex'),
      ...(useRedis ? { redisUrl, redisKeyPrefix: `ohs-dev:${randomBytes(3).toString('hex')}:` } : {}),
    },
  });
  const sandboxes: DevSandbox[] = [];
  for (let i = 0; i < sandboxCount; i++) {
    const name = `demo-${i + 1}`;
    const row = await store.createSandbox({ name });
    sandboxes.push({ id: row.id, name, workspace: 'default', token: '', services: [] });
  }
  // At 2026-08 the fleet also plays the compute driver: a sandbox created through the Service (CLI,
  // SDK) gets its supervisor too; each sandbox serves an HTTP/WebSocket echo on port 8080.
  const fleet = await startSupervisorFleet({
    endpoint: cluster.endpoint,
    sandboxIds: sandboxes.map((s) => s.id),
    protocol,
    ...(gen2 ? { jwtKeyDir: cluster.jwtKeyDir, echoService: true, watchDatabaseUrl: db.url } : {}),
  });
  await fleet.waitAllConnected(30_000);
  for (const s of sandboxes) {
    s.token = (await store.createSshSession(s.id, 86_400)).token;
    if (store instanceof Gen2Store) {
      await store.upsertServiceEndpoint({ workspace: s.workspace, sandboxId: s.id, sandboxName: s.name, service: 'web', targetPort: DEFAULT_ECHO_TARGET_PORT, domain: true });
      s.services.push(`${s.workspace}--${s.name}--web.openshell.localhost`);
    }
  }
  const ssh = (port: number, s: DevSandbox): Promise<{ ok: boolean; why: string }> =>
    gen2
      ? sshViaForwardTcp({ endpoint: `127.0.0.1:${port}`, sandboxId: s.id, token: s.token, command: 'sandbox-id' }).then((r) => ({
          ok: r.grpcCode === null && r.stdout.trim() === s.id,
          why: r.grpcCode === null ? 'wrong sandbox' : r.grpcDetails,
        }))
      : sshViaGateway({ host: '127.0.0.1', port, sandboxId: s.id, token: s.token, command: 'sandbox-id' }).then((r) => ({
          ok: r.status === 200 && r.stdout.trim() === s.id,
          why: String(r.status),
        }));

  const shutdown = async (): Promise<void> => {
    say('stopping dev cluster…');
    await fleet.stop();
    await cluster.close();
    await store.close();
    await db.drop().catch(() => undefined);
  };

  const owners = async (): Promise<Map<string, string>> => {
    const res = await store.pool.query<{ sandbox_id: string; replica_id: string; epoch: string }>('SELECT sandbox_id, replica_id, epoch FROM ohs_owners');
    return new Map(res.rows.map((r) => [r.sandbox_id, `${r.replica_id}@${r.epoch}`]));
  };

  if (values.json) {
    process.stdout.write(
      `${JSON.stringify({
        database: db.url,
        redis: useRedis ? redisUrl : null,
        protocol,
        balancer: `127.0.0.1:${cluster.balancer.port}`,
        replicas: cluster.replicas.map((r) => ({
          name: r.name,
          public: `127.0.0.1:${r.publicPort}`,
          peer: `127.0.0.1:${r.sidecarPorts?.peer}`,
          admin: `127.0.0.1:${r.sidecarPorts?.admin}`,
          gateway: `127.0.0.1:${r.gatewayPort}`,
        })),
        sandboxes,
      })}\n`,
    );
  } else {
    say('');
    say(`OpenShell HA dev cluster (${protocol} generation): ${replicas} replicas (gateway emulator + sidecar each), ${sandboxCount} sandboxes`);
    say(`  Service (round-robin balancer): 127.0.0.1:${cluster.balancer.port}`);
    for (const r of cluster.replicas) {
      say(`  ${r.name}: public 127.0.0.1:${r.publicPort}  peer 127.0.0.1:${r.sidecarPorts?.peer}  admin http://127.0.0.1:${r.sidecarPorts?.admin}/metrics  gateway 127.0.0.1:${r.gatewayPort}`);
    }
    const own = await owners();
    say('');
    say('Ownership (sandbox → replica@epoch), claimed when each supervisor connected through the Service:');
    for (const s of sandboxes) say(`  ${s.workspace}/${s.name} ${s.id}  →  ${own.get(s.id) ?? 'none'}`);
    say('');
    say(`SSH to every sandbox through every replica (${gen2 ? 'gRPC ForwardTcp' : 'CONNECT /connect/ssh'}, real ssh2 client):`);
    let ok = 0;
    let total = 0;
    for (const s of sandboxes) {
      for (const r of cluster.replicas) {
        total++;
        const res = await ssh(r.publicPort, s);
        if (res.ok) ok++;
        const owner = (own.get(s.id) ?? '').split('@')[0];
        const path = owner === r.name ? 'owner, local gateway' : `forwarded to ${owner}`;
        say(`  via ${r.name}: ${s.name.padEnd(8)} ${path.padEnd(22)} → ${res.ok ? 'ok' : `FAILED (${res.why})`}`);
      }
    }
    say(`  ${ok}/${total} succeeded`);
    say('');
    for (const r of cluster.replicas) {
      const port = r.sidecarPorts?.admin;
      if (!port) continue;
      const out = await metricSum(port, 'ohs_forwards_total', (l) => l.includes('outcome="ok"') && !l.includes('peer="inbound"'));
      const inbound = await metricSum(port, 'ohs_forwards_total', (l) => l.includes('peer="inbound"') && l.includes('outcome="accepted"'));
      say(`  ${r.name}: forwarded ${out} streams/tunnels to peers, served ${inbound} for peers`);
    }
    say('');
    say('Try it yourself (one sandbox):');
    const s = sandboxes[0]!;
    if (gen2) {
      say(`  curl -s -H 'Host: ${s.services[0]}' http://127.0.0.1:${cluster.balancer.port}/hello     # the sandbox's service, by subdomain`);
      say(`  ssh -o ProxyCommand='openshell ssh-proxy --gateway http://127.0.0.1:${cluster.balancer.port} --sandbox-id ${s.id} --token ${s.token}' sandbox@${s.name}`);
      say('  (with the upstream CLI; SSH user "sandbox", password "openshell"; metrics on each admin port)');
    } else {
      say(`  printf 'CONNECT /connect/ssh HTTP/1.1\\r\\nx-sandbox-id: ${s.id}\\r\\nx-sandbox-token: ${s.token}\\r\\n\\r\\n' | nc 127.0.0.1 ${cluster.balancer.port} | head -1`);
      say('  (SSH user "sandbox", password "openshell"; metrics on each admin port)');
    }
    say('');
    say('Cluster is up; Ctrl-C (SIGINT) or SIGTERM stops it.');
  }

  await new Promise<void>((resolve) => {
    process.once('SIGINT', () => resolve());
    process.once('SIGTERM', () => resolve());
  });
  await shutdown();
}

/**
 * No Postgres: one gateway emulator with in-memory state (in this process) behind one sidecar in
 * embedded mode (no database, no Redis), the sidecar's documented single-replica default.
 */
async function runEmbedded(sandboxCount: number, json: boolean, logLevel: string, say: (line: string) => void): Promise<void> {
  const gw = await startGateway({ replica: 'gateway-embedded' });
  let sidecar;
  try {
    sidecar = await startProcess('sidecar', [
      ...sidecarCommand(),
      '--listen', '127.0.0.1:0', '--peer-listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0',
      '--gateway', `http://127.0.0.1:${gw.port}`, '--replica-id', 'embedded', '--log-level', logLevel,
    ]);
  } catch (err) {
    await gw.close();
    throw err;
  }
  const publicPort = sidecar.ready.listenPort as number;
  const adminPort = sidecar.ready.adminPort as number;
  const ids: string[] = [];
  for (let i = 0; i < sandboxCount; i++) ids.push((await gw.store.createSandbox({ name: `demo-${i + 1}` })).id);
  const fleet = await startSupervisorFleet({ endpoint: `127.0.0.1:${publicPort}`, sandboxIds: ids });
  await fleet.waitAllConnected(30_000);
  const tokens = await Promise.all(ids.map((id) => gw.store.createSshSession(id, 86_400)));
  if (json) {
    process.stdout.write(
      `${JSON.stringify({
        mode: 'embedded',
        database: null,
        redis: null,
        balancer: `127.0.0.1:${publicPort}`,
        replicas: [{ name: 'embedded', public: `127.0.0.1:${publicPort}`, peer: null, admin: `127.0.0.1:${adminPort}`, gateway: `127.0.0.1:${gw.port}` }],
        protocol: '2026-04',
        sandboxes: tokens.map((t, i) => ({ id: t.sandboxId, name: `demo-${i + 1}`, workspace: 'default', token: t.token, services: [] })),
      })}\n`,
    );
  } else {
    say('');
    say(`OpenShell HA dev cluster, embedded: 1 gateway emulator (in-memory state) behind 1 sidecar (no database, no Redis), ${sandboxCount} sandboxes`);
    say(`  sidecar public 127.0.0.1:${publicPort}  admin http://127.0.0.1:${adminPort}/metrics  gateway 127.0.0.1:${gw.port}`);
    say('');
    let ok = 0;
    for (const t of tokens) {
      const res = await sshViaGateway({ host: '127.0.0.1', port: publicPort, sandboxId: t.sandboxId, token: t.token, command: 'sandbox-id' });
      const good = res.status === 200 && res.stdout.trim() === t.sandboxId;
      if (good) ok++;
      say(`  ssh ${t.sandboxId.slice(0, 8)}… through the sidecar → ${good ? 'ok' : `FAILED (${res.status})`}`);
    }
    say(`  ${ok}/${tokens.length} succeeded`);
    say('');
    say('Running; Ctrl-C (SIGINT) or SIGTERM stops it.');
  }
  await new Promise<void>((resolve) => {
    process.once('SIGINT', () => resolve());
    process.once('SIGTERM', () => resolve());
  });
  say('stopping…');
  await fleet.stop();
  await sidecar.kill('SIGTERM');
  await gw.close();
}
