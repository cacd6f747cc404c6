// A limit rule keyed by the client address (`limitRules`, key `client-address`) counts CONNECT
// tunnels by the address they come from. The tunnel path reads the address only when such a rule
// exists for its class (SlotLimiter.readsClientAddress), so this is the test that it still reads it.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startGateway, type Gateway } from '../../emulator/gateway/server.ts';
import { startProcess, tsEntry, type ManagedProcess } from '../../emulator/process.ts';
import { openConnectTunnel } from '../../emulator/ssh-client.ts';
import { startSupervisorFleet } from '../../emulator/supervisor/fleet.ts';

let dir: string;
let gw: Gateway;
let sidecar: ManagedProcess;
let fleet: Awaited<ReturnType<typeof startSupervisorFleet>>;
let port: number;
let sandbox: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ohs-limits-client-'));
  const config = join(dir, 'config.json');
  writeFileSync(config, JSON.stringify({ limitRules: [{ name: 'ssh-per-client', trafficClass: 'ssh-tunnel', key: 'client-address', max: 1 }] }));
  gw = await startGateway({ replica: 'gw-limits-client' });
  sandbox = (await gw.store.createSandbox()).id;
  sidecar = await startProcess('sidecar', [
    ...tsEntry('src/main.ts'),
    '--config', config,
    '--listen', '127.0.0.1:0', '--peer-listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0',
    '--gateway', `http://127.0.0.1:${gw.port}`, '--replica-id', 'limits-client',
  ]);
  port = sidecar.ready.listenPort as number;
  fleet = await startSupervisorFleet({ endpoint: `127.0.0.1:${port}`, sandboxIds: [sandbox] });
  await fleet.waitAllConnected(15_000);
});

afterAll(async () => {
  await fleet?.stop();
  await sidecar?.kill('SIGTERM');
  await gw?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

it('a second tunnel from the same client address is refused by the client-address rule, and admitted once the first closed', async () => {
  // Two tokens: the default per-token rule must not be what refuses the second tunnel.
  const [first, second] = await Promise.all([gw.store.createSshSession(sandbox, 300), gw.store.createSshSession(sandbox, 300)]);
  const open = (token: string) => openConnectTunnel({ host: '127.0.0.1', port, sandboxId: sandbox, token, timeoutMs: 20_000 });

  const held = await open(first.token);
  expect(held.status).toBe(200);
  const refused = await open(second.token);
  expect(refused.status).toBe(429);
  expect(refused.body).toContain('limit ssh-per-client reached: at most 1 concurrent ssh tunnels per client address');

  await new Promise<void>((resolve) => {
    held.socket?.once('close', () => resolve());
    held.socket?.destroy();
  });
  // The slot is given back when the sidecar sees the tunnel close, a moment after the client did.
  let again = await open(second.token);
  for (let i = 0; i < 20 && again.status === 429; i++) {
    await new Promise((r) => setTimeout(r, 100));
    again = await open(second.token);
  }
  expect(again.status).toBe(200);
  again.socket?.destroy();
});
