// Limit rules for gRPC classes come from the config file (`limitRules`) and are enforced at the
// ingress with the gateway's gRPC answer for a cap, RESOURCE_EXHAUSTED (reference §2.3 at HEAD).
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { status as Status } from '@grpc/grpc-js';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startGateway, type Gateway } from '../../emulator/gateway/server.ts';
import { startProcess, tsEntry, type ManagedProcess } from '../../emulator/process.ts';
import { startSupervisorFleet } from '../../emulator/supervisor/fleet.ts';
import { exec, gatewayClient, type OpenShellClient } from '../helpers/grpc-client.ts';

let dir: string;
let gw: Gateway;
let sidecar: ManagedProcess;
let fleet: Awaited<ReturnType<typeof startSupervisorFleet>>;
let client: OpenShellClient;
let sandbox: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ohs-limits-grpc-'));
  const config = join(dir, 'config.json');
  writeFileSync(config, JSON.stringify({ limitRules: [{ name: 'exec-per-sandbox', trafficClass: 'exec', key: 'sandbox', max: 1 }] }));
  gw = await startGateway({ replica: 'gw-limits-grpc' });
  sandbox = (await gw.store.createSandbox()).id;
  sidecar = await startProcess('sidecar', [
    ...tsEntry('src/main.ts'),
    '--config', config,
    '--listen', '127.0.0.1:0', '--peer-listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0',
    '--gateway', `http://127.0.0.1:${gw.port}`, '--replica-id', 'limits-grpc',
  ]);
  const port = sidecar.ready.listenPort as number;
  fleet = await startSupervisorFleet({ endpoint: `127.0.0.1:${port}`, sandboxIds: [sandbox] });
  await fleet.waitAllConnected(15_000);
  client = gatewayClient(`127.0.0.1:${port}`);
});

afterAll(async () => {
  client?.close();
  await fleet?.stop();
  await sidecar?.kill('SIGTERM');
  await gw?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

it('a configured exec limit refuses the second concurrent exec with RESOURCE_EXHAUSTED and frees the slot after', async () => {
  const first = exec(client, sandbox, ['sleep', '1']);
  // Let the first stream take its slot.
  await new Promise((r) => setTimeout(r, 300));
  const second = await exec(client, sandbox, ['echo', 'hi']).then(
    () => ({ code: Status.OK, details: '' }),
    (err: { code: number; details: string }) => ({ code: err.code, details: err.details }),
  );
  expect(second.code).toBe(Status.RESOURCE_EXHAUSTED);
  expect(second.details).toContain('exec-per-sandbox');
  expect((await first).exitCode).toBe(0);
  // Released when the first stream closed.
  expect((await exec(client, sandbox, ['echo', 'again'])).stdout).toBe('again\n');
});
