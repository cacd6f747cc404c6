// One sidecar in front of an emulated gateway with limit rules from a config file (`limitRules`),
// and a supervisor for one sandbox connected through it: what the limit e2e tests share.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startGateway, type Gateway } from '../../emulator/gateway/server.ts';
import { startProcess, sidecarCommand } from '../../emulator/process.ts';
import { startSupervisorFleet } from '../../emulator/supervisor/fleet.ts';

export interface LimitedSidecar {
  gw: Gateway;
  /** The sidecar's public port. */
  port: number;
  sandbox: string;
  stop(): Promise<void>;
}

export async function startLimitedSidecar(name: string, limitRules: unknown[]): Promise<LimitedSidecar> {
  const dir = mkdtempSync(join(tmpdir(), `ohs-${name}-`));
  const config = join(dir, 'config.json');
  writeFileSync(config, JSON.stringify({ limitRules }));
  // What was started so far, stopped in reverse order (also when a later step fails).
  const stops: Array<() => Promise<void>> = [async () => rmSync(dir, { recursive: true, force: true })];
  const stop = async (): Promise<void> => {
    for (const s of stops.splice(0).reverse()) await s();
  };
  try {
    const gw = await startGateway({ replica: `gw-${name}` });
    stops.push(() => gw.close());
    const sandbox = (await gw.store.createSandbox()).id;
    const sidecar = await startProcess('sidecar', [
      ...sidecarCommand(),
      '--config', config,
      '--listen', '127.0.0.1:0', '--peer-listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0',
      '--gateway', `http://127.0.0.1:${gw.port}`, '--replica-id', name,
    ]);
    stops.push(async () => void (await sidecar.kill('SIGTERM')));
    const port = sidecar.ready.listenPort as number;
    const fleet = await startSupervisorFleet({ endpoint: `127.0.0.1:${port}`, sandboxIds: [sandbox] });
    stops.push(() => fleet.stop());
    await fleet.waitAllConnected(15_000);
    return { gw, port, sandbox, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}
