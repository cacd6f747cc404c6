// Many sandboxes at once: one SSH server and one supervisor emulator per sandbox id.
import type { Logger } from 'pino';
import { startSandboxSshServer } from './ssh-server.ts';
import type { SandboxSshServer } from './ssh-server.ts';
import { SupervisorEmulator } from './supervisor.ts';

export interface SupervisorFleetOptions {
  /** host:port of the gateway or balancer every supervisor dials. */
  endpoint: string;
  sandboxIds: string[];
  backoff?: { initialMs: number; maxMs: number };
  heartbeatSecsOverride?: number;
  logger?: Logger;
}

export interface FleetMember {
  supervisor: SupervisorEmulator;
  ssh: SandboxSshServer;
}

export interface SupervisorFleet {
  supervisors: Map<string, FleetMember>;
  /** Resolves once every supervisor holds an accepted session; rejects naming the stragglers. */
  waitAllConnected(timeoutMs: number): Promise<void>;
  stop(): Promise<void>;
}

async function stopMembers(members: Iterable<FleetMember>): Promise<void> {
  const list = [...members];
  await Promise.all(list.map((m) => m.supervisor.stop()));
  await Promise.all(list.map((m) => m.ssh.close()));
}

export async function startSupervisorFleet(opts: SupervisorFleetOptions): Promise<SupervisorFleet> {
  const supervisors = new Map<string, FleetMember>();
  try {
    for (const sandboxId of opts.sandboxIds) {
      if (supervisors.has(sandboxId)) continue;
      const ssh = await startSandboxSshServer({ sandboxId, logger: opts.logger });
      const supervisor = new SupervisorEmulator({
        endpoint: opts.endpoint,
        sandboxId,
        sshPort: ssh.port,
        backoff: opts.backoff,
        heartbeatSecsOverride: opts.heartbeatSecsOverride,
        logger: opts.logger,
      });
      supervisors.set(sandboxId, { supervisor, ssh });
      supervisor.start();
    }
  } catch (err) {
    await stopMembers(supervisors.values());
    throw err;
  }

  let stopping: Promise<void> | undefined;
  return {
    supervisors,
    async waitAllConnected(timeoutMs) {
      const results = await Promise.allSettled(
        [...supervisors.values()].map(({ supervisor }) => supervisor.waitConnected(timeoutMs)),
      );
      const missing = [...supervisors.keys()].filter((_, i) => results[i]?.status === 'rejected');
      if (missing.length > 0) {
        throw new Error(`${missing.length} supervisor(s) not connected after ${timeoutMs} ms: ${missing.join(', ')}`);
      }
    },
    stop() {
      stopping ??= stopMembers(supervisors.values());
      return stopping;
    },
  };
}
