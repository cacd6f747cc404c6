// The published Python SDK (PyPI `openshell` 0.0.113, a real upstream client of the 2026-08
// generation) against one 2026-08 gateway emulator: health, create by name + workspace, wait_ready
// (GetSandbox polling), exec `echo hi`, stop by name. The SDK lives in a venv outside the repository
// (OHS_PYSDK_DIR, else $XDG_CACHE_HOME/ohs-pysdk, else <tmp>/ohs-pysdk); the test is skipped only
// when pip cannot reach the package index.
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { Cluster } from '../../emulator/cluster.ts';
import { Gen2Store } from '../../emulator/gateway/gen2/store.ts';
import { startGateway, type Gateway } from '../../emulator/gateway/server.ts';
import { repoRoot } from '../../emulator/process.ts';
import { Phase } from '../../emulator/proto.ts';
import { startSupervisorFleet, type SupervisorFleet } from '../../emulator/supervisor/fleet.ts';
import { createTestDatabase, TEST_REDIS_URL, testRedisPrefix, type TestDatabase } from '../helpers/services.ts';

const run = promisify(execFile);
const SDK_VERSION = '0.0.113';
const sdkDir = process.env.OHS_PYSDK_DIR ?? path.join(process.env.XDG_CACHE_HOME ?? os.tmpdir(), 'ohs-pysdk');
const python = path.join(sdkDir, 'venv', 'bin', 'python');

/** Creates the venv and installs the SDK once; returns why not when pip cannot reach the index. */
async function ensureSdk(): Promise<string | null> {
  if (existsSync(python)) {
    try {
      const { stdout } = await run(python, ['-c', 'import importlib.metadata as m; print(m.version("openshell"))']);
      if (stdout.trim() === SDK_VERSION) return null;
    } catch {
      // not installed yet
    }
  } else {
    await run('python3', ['-m', 'venv', path.join(sdkDir, 'venv')], { timeout: 120_000 });
  }
  try {
    await run(python, ['-m', 'pip', 'install', '--disable-pip-version-check', '-q', `openshell==${SDK_VERSION}`], { timeout: 240_000 });
    return null;
  } catch (err) {
    const text = String((err as { stderr?: string }).stderr ?? err);
    if (/connection|resolve|network|timed out|No matching distribution|Could not find/i.test(text)) return `pip could not fetch openshell==${SDK_VERSION}: ${text.split('\n').slice(-3).join(' ')}`;
    throw err;
  }
}

let db: TestDatabase;
let gw: Gateway;
let fleet: SupervisorFleet;
let clusterDb: TestDatabase;
let cluster: Cluster;
let clusterFleet: SupervisorFleet;
let skipReason: string | null = null;

beforeAll(async () => {
  skipReason = await ensureSdk();
  db = await createTestDatabase('gen2_pysdk');
  gw = await startGateway({ databaseUrl: db.url, replica: 'gw-pysdk', protocol: '2026-08' });
  // The compute-driver stand-in starts a supervisor for the sandbox the SDK creates.
  fleet = await startSupervisorFleet({ endpoint: `127.0.0.1:${gw.port}`, sandboxIds: [], protocol: '2026-08', watchDatabaseUrl: db.url });
  // And three replicas behind sidecars and a round-robin Service, where the SDK's calls land anywhere.
  clusterDb = await createTestDatabase('gen2_pysdk_cluster');
  cluster = await Cluster.start({ replicas: 3, databaseUrl: clusterDb.url, protocol: '2026-08', sidecars: { redisUrl: TEST_REDIS_URL, redisKeyPrefix: testRedisPrefix('gen2_pysdk') } });
  clusterFleet = await startSupervisorFleet({ endpoint: cluster.endpoint, sandboxIds: [], protocol: '2026-08', watchDatabaseUrl: clusterDb.url });
}, 300_000);

afterAll(async () => {
  await fleet?.stop();
  await gw?.close();
  await db?.drop();
  await clusterFleet?.stop();
  await cluster?.close();
  await clusterDb?.drop();
});

it('the Python SDK 0.0.113 drives a 3-replica cluster through the sidecars and the Service', async (ctx) => {
  if (skipReason) {
    console.log(`skipping Python SDK interop: ${skipReason}`);
    ctx.skip();
    return;
  }
  const script = path.join(repoRoot, 'test', 'interop-sdk', 'sdk_smoke.py');
  for (const [name, workspace] of [['sdk-a', 'default'], ['sdk-b', 'team'], ['sdk-c', 'team']] as const) {
    const { stdout } = await run(python, [script, cluster.endpoint, name, workspace], { timeout: 90_000 });
    const seen = JSON.parse(stdout.trim().split('\n').at(-1) ?? '{}') as { ready_phase: number; exec: { exit_code: number; stdout: string }; stopped_phase: number };
    expect(seen.ready_phase).toBe(Phase.READY);
    expect(seen.exec).toEqual({ exit_code: 0, stdout: 'hi\n' });
    expect(seen.stopped_phase).toBe(Phase.STOPPED);
  }
  const reader = new Gen2Store(clusterDb.url);
  const owners = await reader.pool.query<{ replica_id: string }>('SELECT replica_id FROM ohs_owners').finally(() => reader.close());
  console.log(`python SDK ${SDK_VERSION} through the Service: 3 sandboxes created, Ready, exec'd and stopped by name; owners ${owners.rows.map((r) => r.replica_id).join(',')}`);
}, 180_000);

it('the Python SDK 0.0.113 creates, waits for Ready, execs and stops a sandbox by name', async (ctx) => {
  if (skipReason) {
    console.log(`skipping Python SDK interop: ${skipReason}`);
    ctx.skip();
    return;
  }
  const script = path.join(repoRoot, 'test', 'interop-sdk', 'sdk_smoke.py');
  const { stdout } = await run(python, [script, `127.0.0.1:${gw.port}`, 'sdk-box', 'sdk-team'], { timeout: 90_000 });
  const seen = JSON.parse(stdout.trim().split('\n').at(-1) ?? '{}') as {
    health: number;
    created: { id: string; workspace: string; phase: number };
    ready_phase: number;
    exec: { exit_code: number; stdout: string };
    stopped_phase: number;
    listed: string[];
  };
  expect(seen.health).toBe(1);
  expect(seen.created.workspace).toBe('sdk-team');
  expect(seen.created.phase).toBe(Phase.PROVISIONING);
  expect(seen.ready_phase).toBe(Phase.READY);
  expect(seen.exec).toEqual({ exit_code: 0, stdout: 'hi\n' });
  expect(seen.stopped_phase).toBe(Phase.STOPPED);
  expect(seen.listed).toEqual([seen.created.id]);
  const row = await gw.gen2!.store.sandboxByName('sdk-team', 'sdk-box');
  expect(row?.phase).toBe(Phase.STOPPED);
}, 120_000);
