// Many sandboxes at once: one SSH server and one supervisor emulator per sandbox id (and, for the
// 2026-08 generation, optionally an HTTP/WebSocket echo service and a compute-driver stand-in that
// starts a supervisor for every sandbox the gateway creates).
import pg from 'pg';
import type { Logger } from 'pino';
import { DRIVER_EVENT_CHANNEL, type DriverEventKind } from '../gateway/gen2/reconciler.ts';
import { Gen2Store } from '../gateway/gen2/store.ts';
import { SandboxJwt } from '../gateway/gen2/jwt.ts';
import type { Protocol } from '../proto.ts';
import { startEchoService, type EchoService } from './echo-service.ts';
import { startSandboxSshServer } from './ssh-server.ts';
import type { SandboxSshServer } from './ssh-server.ts';
import { SupervisorEmulator } from './supervisor.ts';

/** The sandbox port the echo service answers on (what ExposeService should target). */
export const DEFAULT_ECHO_TARGET_PORT = 8080;

export interface SupervisorFleetOptions {
  /** host:port of the gateway or balancer every supervisor dials. */
  endpoint: string;
  sandboxIds: string[];
  backoff?: { initialMs: number; maxMs: number };
  heartbeatSecsOverride?: number;
  logger?: Logger;
  /** Protocol generation; default '2026-04' (seed). */
  protocol?: Protocol;
  /** 2026-08: sandbox JWT per sandbox id; missing ones are minted from `jwtKeyDir`. */
  tokens?: Record<string, string>;
  /** 2026-08: key directory (signing.pem, public.pem, kid) to mint sandbox JWTs from. */
  jwtKeyDir?: string;
  gatewayId?: string;
  /** 2026-08: extra target port → local port mappings for tcp relay targets. */
  servicePorts?: Record<number, number>;
  /** 2026-08: run an HTTP + WebSocket echo service per sandbox, reachable as tcp target `targetPort` (default 8080). */
  echoService?: boolean | { targetPort: number };
  /**
   * 2026-08 compute-driver stand-in (emulator instrumentation): poll `emulator_sandbox_tokens` in this
   * database and start a supervisor, with the token CreateSandbox minted, for every new sandbox.
   */
  watchDatabaseUrl?: string;
  watchIntervalMs?: number;
  /**
   * 2026-08 compute-driver stand-in: LISTEN for the gateways' driver events in this database and do
   * what a compute driver does to the sandbox's process: `stopped` stops its supervisor (it stays
   * gone, as upstream's supervisor does when the driver stops the sandbox), `started` starts a
   * fresh one (a new process: a new instance id). Without it a "stopped" sandbox's supervisor keeps
   * reconnecting.
   */
  driverEventsDatabaseUrl?: string;
}

export interface FleetMember {
  /** The current supervisor process (replaced when the driver stand-in restarts the sandbox). */
  supervisor: SupervisorEmulator;
  ssh: SandboxSshServer;
  echo?: EchoService;
}

export interface SupervisorFleet {
  supervisors: Map<string, FleetMember>;
  /** Starts a member for one more sandbox (no-op if it exists). */
  add(sandboxId: string, token?: string): Promise<FleetMember>;
  /** Resolves once every supervisor holds an accepted session; rejects naming the stragglers. */
  waitAllConnected(timeoutMs: number): Promise<void>;
  stop(): Promise<void>;
}

async function stopMembers(members: Iterable<FleetMember>): Promise<void> {
  const list = [...members];
  await Promise.all(list.map((m) => m.supervisor.stop()));
  await Promise.all(list.map((m) => Promise.all([m.ssh.close(), m.echo?.close()])));
}

export async function startSupervisorFleet(opts: SupervisorFleetOptions): Promise<SupervisorFleet> {
  const supervisors = new Map<string, FleetMember>();
  const gen2 = opts.protocol === '2026-08';
  const jwt = gen2 && opts.jwtKeyDir ? await SandboxJwt.load(opts.jwtKeyDir, opts.gatewayId ? { gatewayId: opts.gatewayId } : {}) : undefined;
  const echoTarget = opts.echoService === true ? DEFAULT_ECHO_TARGET_PORT : opts.echoService ? opts.echoService.targetPort : null;
  let stopping: Promise<void> | undefined;

  const settings = new Map<string, { token: string | undefined; servicePorts: Record<number, number> }>();
  const newSupervisor = (sandboxId: string, sshPort: number, token: string | undefined, servicePorts: Record<number, number>): SupervisorEmulator =>
    new SupervisorEmulator({
      endpoint: opts.endpoint,
      sandboxId,
      sshPort,
      backoff: opts.backoff,
      heartbeatSecsOverride: opts.heartbeatSecsOverride,
      logger: opts.logger,
      ...(gen2 ? { protocol: '2026-08' as const, token, servicePorts } : {}),
    });

  const add = async (sandboxId: string, givenToken?: string): Promise<FleetMember> => {
    const existing = supervisors.get(sandboxId);
    if (existing) return existing;
    const token = givenToken ?? opts.tokens?.[sandboxId] ?? (jwt ? await jwt.mint(sandboxId) : undefined);
    const ssh = await startSandboxSshServer({ sandboxId, logger: opts.logger });
    let echo: EchoService | undefined;
    const servicePorts: Record<number, number> = { ...opts.servicePorts };
    if (gen2 && echoTarget !== null) {
      echo = await startEchoService({ sandboxId });
      servicePorts[echoTarget] = echo.port;
    }
    const supervisor = newSupervisor(sandboxId, ssh.port, token, servicePorts);
    const member: FleetMember = { supervisor, ssh, ...(echo ? { echo } : {}) };
    settings.set(sandboxId, { token, servicePorts });
    supervisors.set(sandboxId, member);
    if (stopping) {
      await stopMembers([member]);
      return member;
    }
    supervisor.start();
    return member;
  };

  try {
    for (const sandboxId of opts.sandboxIds) await add(sandboxId);
  } catch (err) {
    await stopMembers(supervisors.values());
    throw err;
  }

  let watchTimer: NodeJS.Timeout | undefined;
  let watchStore: Gen2Store | undefined;
  let watching: Promise<void> = Promise.resolve();
  if (opts.watchDatabaseUrl) {
    watchStore = new Gen2Store(opts.watchDatabaseUrl, { poolSize: 1 });
    let lastSeq = 0;
    const poll = async (): Promise<void> => {
      if (!watchStore || stopping) return;
      try {
        for (const row of await watchStore.sandboxTokensAfter(lastSeq)) {
          lastSeq = row.seq;
          await add(row.sandboxId, row.token);
        }
      } catch (err) {
        // The table appears once a gateway has migrated; until then there is nothing to start.
        opts.logger?.debug({ err }, 'sandbox token watch failed');
      }
    };
    watchTimer = setInterval(() => {
      watching = watching.then(poll);
    }, opts.watchIntervalMs ?? 250);
    watchTimer.unref();
  }

  // Driver events, one at a time per fleet, in the order the gateways sent them.
  let events: pg.Client | undefined;
  let driverWork: Promise<void> = Promise.resolve();
  const onDriverEvent = async (sandboxId: string, event: DriverEventKind): Promise<void> => {
    const member = supervisors.get(sandboxId);
    const s = settings.get(sandboxId);
    if (!member || !s || stopping) return;
    if (event === 'stopped') {
      await member.supervisor.stop();
    } else if (event === 'started') {
      await member.supervisor.stop();
      member.supervisor = newSupervisor(sandboxId, member.ssh.port, s.token, s.servicePorts);
      member.supervisor.start();
    }
  };
  if (opts.driverEventsDatabaseUrl && gen2) {
    events = new pg.Client({ connectionString: opts.driverEventsDatabaseUrl });
    events.on('error', (err) => opts.logger?.debug({ err }, 'driver event listener failed'));
    events.on('notification', (n) => {
      if (n.channel !== DRIVER_EVENT_CHANNEL || !n.payload) return;
      let msg: { sandboxId?: string; event?: DriverEventKind };
      try {
        msg = JSON.parse(n.payload) as typeof msg;
      } catch {
        return;
      }
      const { sandboxId, event } = msg;
      if (!sandboxId || !event) return;
      driverWork = driverWork.then(() => onDriverEvent(sandboxId, event)).catch((err: unknown) => opts.logger?.warn({ err, sandboxId, event }, 'driver event failed'));
    });
    try {
      await events.connect();
      await events.query(`LISTEN ${DRIVER_EVENT_CHANNEL}`);
    } catch (err) {
      if (watchTimer) clearInterval(watchTimer);
      await watchStore?.close();
      await events.end().catch(() => undefined);
      await stopMembers(supervisors.values());
      throw err;
    }
  }

  return {
    supervisors,
    add,
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
      stopping ??= (async () => {
        if (watchTimer) clearInterval(watchTimer);
        await events?.end().catch(() => undefined);
        await driverWork;
        await watching;
        await watchStore?.close();
        await stopMembers(supervisors.values());
      })();
      return stopping;
    },
  };
}
