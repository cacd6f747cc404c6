// gRPC handlers of the gateway emulator for the seed (2026-04) protocol. Each handler follows
// the order of checks and the status codes recorded in the reference.
import { randomUUID } from 'node:crypto';
import type { Duplex } from 'node:stream';
import {
  status as Status,
  type ServerDuplexStream,
  type ServerReadableStream,
  type ServerUnaryCall,
  type ServerWritableStream,
  type UntypedServiceImplementation,
  type sendUnaryData,
} from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { Client as SshClient } from 'ssh2';
import {
  HEARTBEAT_INTERVAL_SECS,
  Phase,
  type ExecSandboxEvent,
  type GatewayMessage,
  type RelayFrame,
  type SandboxLogLine,
  type SupervisorMessage,
} from '../proto.ts';
import { SANDBOX_SSH_PASSWORD, SANDBOX_SSH_USER } from '../supervisor/ssh-server.ts';
import type { LogBus, WatchBus } from './buses.ts';
import { GatewayError, type LiveSession, type SessionRegistry } from './registry.ts';
import { relayDuplex } from './relay-duplex.ts';
import type { GatewayPersistence } from './store.ts';

export const EXEC_SESSION_WAIT_MS = 15_000;
export const SSH_SESSION_TTL_SECS = 86_400;

export interface GatewayContext {
  replica: string;
  version: string;
  store: GatewayPersistence;
  registry: SessionRegistry;
  logs: LogBus;
  watch: WatchBus;
  logger: Logger;
  heartbeatIntervalSecs: number;
  /** Where CreateSshSession tells clients to connect (the gateway's own bind address). */
  advertised: () => { host: string; port: number; scheme: 'http' | 'https' };
}

type ServiceError = { code: Status; details: string; message: string };

function grpcError(err: unknown): ServiceError {
  if (err instanceof GatewayError) return { code: err.code, details: err.message, message: err.message };
  const message = err instanceof Error ? err.message : String(err);
  return { code: Status.INTERNAL, details: message, message };
}

/** Phase write + local watch notification (the seed gateway's compute.supervisor_session_*). */
async function writePhase(ctx: GatewayContext, sandboxId: string, phase: number, reason: string): Promise<void> {
  try {
    await ctx.store.writePhase(sandboxId, phase as 0, ctx.replica, reason);
    ctx.watch.notify(sandboxId);
  } catch (err) {
    ctx.logger.warn({ err, sandboxId, phase }, 'phase write failed');
  }
}

function connectSupervisor(ctx: GatewayContext) {
  return (call: ServerDuplexStream<SupervisorMessage, GatewayMessage>): void => {
    let session: LiveSession | undefined;
    let heartbeat: NodeJS.Timeout | undefined;
    let finished = false;
    let gotFirst = false;
    let endedBeforeRegistered = false;
    const log = ctx.logger.child({ rpc: 'ConnectSupervisor' });
    call.on('error', (err) => log.debug({ err }, 'supervisor stream error'));

    const fail = (code: Status, message: string): void => {
      finished = true;
      call.emit('error', { code, details: message, message });
    };
    const finish = (reason: string): void => {
      if (finished) return;
      finished = true;
      if (heartbeat) clearInterval(heartbeat);
      if (session) {
        const s = session;
        log.info({ sandboxId: s.sandboxId, sessionId: s.sessionId, reason }, 'supervisor session ended');
        if (ctx.registry.removeIfCurrent(s.sandboxId, s.sessionId)) {
          void writePhase(ctx, s.sandboxId, Phase.PROVISIONING, `disconnected: ${reason}`);
        }
      }
      try {
        call.end();
      } catch {
        // already closed
      }
    };

    call.once('data', (first: SupervisorMessage) => {
      gotFirst = true;
      void (async () => {
        const sandboxId = first.hello?.sandbox_id ?? '';
        if (first.payload !== 'hello' || !first.hello) {
          fail(Status.INVALID_ARGUMENT, 'expected hello as first supervisor message');
          return;
        }
        if (!sandboxId) {
          fail(Status.INVALID_ARGUMENT, 'sandbox_id is required');
          return;
        }
        let exists = false;
        try {
          exists = (await ctx.store.getSandbox(sandboxId)) !== null;
        } catch (err) {
          fail(Status.INTERNAL, `failed to load sandbox: ${String(err)}`);
          return;
        }
        if (!exists) {
          fail(Status.NOT_FOUND, `sandbox ${sandboxId} not found`);
          return;
        }
        if (call.cancelled || finished) return;
        const sessionId = randomUUID();
        session = {
          sandboxId,
          sessionId,
          send: (msg) => {
            if (!finished) call.write(msg);
          },
          shutdown: (reason) => finish(reason),
        };
        const superseded = ctx.registry.register(session);
        call.write({ session_accepted: { session_id: sessionId, heartbeat_interval_secs: HEARTBEAT_INTERVAL_SECS } });
        if (superseded) ctx.registry.replayPendingRelays(session);
        log.info({ sandboxId, sessionId, instanceId: first.hello.instance_id, superseded: !!superseded }, 'supervisor session accepted');
        if (endedBeforeRegistered) {
          finish('stream ended');
          return;
        }
        await writePhase(ctx, sandboxId, Phase.READY, 'supervisor connected');
        heartbeat = setInterval(() => session?.send({ heartbeat: {} }), ctx.heartbeatIntervalSecs * 1000);
        heartbeat.unref();
        call.on('data', (msg: SupervisorMessage) => {
          if (msg.payload === 'relay_close' && msg.relay_close) {
            log.debug({ channelId: msg.relay_close.channel_id }, 'supervisor closed relay');
          }
          // Heartbeats are ignored: the gateway enforces no heartbeat timeout (reference §2.1).
        });
      })();
    });
    call.on('end', () => {
      if (!gotFirst) fail(Status.INVALID_ARGUMENT, 'stream ended before hello');
      else if (session) finish('stream ended');
      else endedBeforeRegistered = true;
    });
    call.on('cancelled', () => finish('cancelled'));
    call.on('close', () => finish('closed'));
  };
}

function relayStream(ctx: GatewayContext) {
  return (call: ServerDuplexStream<RelayFrame, RelayFrame>): void => {
    const log = ctx.logger.child({ rpc: 'RelayStream' });
    call.on('error', (err) => log.debug({ err }, 'relay stream error'));
    call.once('data', (first: RelayFrame) => {
      if (first.payload !== 'init' || !first.init?.channel_id) {
        call.emit('error', { code: Status.INVALID_ARGUMENT, details: 'first relay frame must be init' });
        return;
      }
      call.pause();
      try {
        const pending = ctx.registry.claimRelay(first.init.channel_id);
        pending.resolve(relayDuplex(call));
      } catch (err) {
        call.emit('error', grpcError(err));
      }
    });
  };
}

/** Opens a relay to the sandbox's supervisor and returns the byte stream once it is claimed. */
export async function openRelayStream(ctx: GatewayContext, sandboxId: string, sessionWaitMs: number): Promise<Duplex> {
  const { stream } = await ctx.registry.openRelay(sandboxId, sessionWaitMs);
  return stream;
}

async function requireReadySandbox(ctx: GatewayContext, sandboxId: string): Promise<void> {
  if (!sandboxId) throw new GatewayError(Status.INVALID_ARGUMENT, 'sandbox_id is required');
  const sandbox = await ctx.store.getSandbox(sandboxId);
  if (!sandbox) throw new GatewayError(Status.NOT_FOUND, 'sandbox not found');
  if (sandbox.phase !== Phase.READY) throw new GatewayError(Status.FAILED_PRECONDITION, 'sandbox is not ready');
}

function shellJoin(args: string[]): string {
  return args.join(' ');
}

function execSandbox(ctx: GatewayContext) {
  return (call: ServerWritableStream<{ sandbox_id: string; command: string[]; stdin: Buffer; timeout_seconds: number }, ExecSandboxEvent>): void => {
    call.on('error', () => undefined);
    const req = call.request;
    void (async () => {
      let relay: Duplex;
      try {
        await requireReadySandbox(ctx, req.sandbox_id);
        if (req.command.length === 0) throw new GatewayError(Status.INVALID_ARGUMENT, 'command is required');
        try {
          relay = await openRelayStream(ctx, req.sandbox_id, EXEC_SESSION_WAIT_MS);
        } catch (err) {
          const msg = err instanceof Error ? err.message : String(err);
          throw new GatewayError(Status.UNAVAILABLE, `supervisor relay failed: ${msg}`);
        }
      } catch (err) {
        call.emit('error', grpcError(err));
        return;
      }
      const ssh = new SshClient();
      let timer: NodeJS.Timeout | undefined;
      const done = (err?: ServiceError): void => {
        if (timer) clearTimeout(timer);
        ssh.end();
        relay.destroy();
        if (err) call.emit('error', err);
        else call.end();
      };
      call.on('cancelled', () => done());
      ssh.on('error', (err) => done({ code: Status.UNAVAILABLE, details: `ssh failed: ${err.message}`, message: err.message }));
      ssh.on('ready', () => {
        ssh.exec(shellJoin(req.command), (err, channel) => {
          if (err) {
            done({ code: Status.INTERNAL, details: err.message, message: err.message });
            return;
          }
          let exitCode = -1;
          channel.on('data', (d: Buffer) => call.write({ stdout: { data: d } }));
          channel.stderr.on('data', (d: Buffer) => call.write({ stderr: { data: d } }));
          channel.on('exit', (code: number | null) => {
            exitCode = code ?? -1;
          });
          channel.on('close', () => {
            call.write({ exit: { exit_code: exitCode } });
            done();
          });
          if (req.stdin && req.stdin.length > 0) channel.write(req.stdin);
          channel.end();
          if (req.timeout_seconds > 0) {
            timer = setTimeout(() => {
              call.write({ exit: { exit_code: 124 } });
              done();
            }, req.timeout_seconds * 1000);
            timer.unref();
          }
        });
      });
      ssh.connect({ sock: relay, username: SANDBOX_SSH_USER, password: SANDBOX_SSH_PASSWORD, readyTimeout: 10_000 });
    })();
  };
}

function pushSandboxLogs(ctx: GatewayContext) {
  return (
    call: ServerReadableStream<{ sandbox_id: string; logs: SandboxLogLine[] }, Record<string, never>>,
    callback: sendUnaryData<Record<string, never>>,
  ): void => {
    call.on('data', (batch: { sandbox_id: string; logs: SandboxLogLine[] }) => {
      // The real handler `continue`s past batches with an empty sandbox id (reference §2.0).
      if (!batch.sandbox_id) return;
      for (const line of batch.logs) {
        ctx.logs.publish({ ...line, sandbox_id: batch.sandbox_id, source: line.source || 'sandbox' });
      }
    });
    call.on('end', () => callback(null, {}));
    call.on('error', () => undefined);
  };
}

function getSandboxLogs(ctx: GatewayContext) {
  return (
    call: ServerUnaryCall<{ sandbox_id: string; lines: number }, unknown>,
    callback: sendUnaryData<unknown>,
  ): void => {
    const { sandbox_id: sandboxId, lines } = call.request;
    if (!sandboxId) {
      callback(grpcError(new GatewayError(Status.INVALID_ARGUMENT, 'sandbox_id is required')));
      return;
    }
    const { lines: logs, total } = ctx.logs.tail(sandboxId, lines || 2000);
    callback(null, { logs, buffer_total: total });
  };
}

function watchSandbox(ctx: GatewayContext) {
  return (
    call: ServerWritableStream<
      { id: string; follow_status: boolean; follow_logs: boolean; log_tail_lines: number; stop_on_terminal: boolean },
      unknown
    >,
  ): void => {
    call.on('error', () => undefined);
    const req = call.request;
    const unsubs: Array<() => void> = [];
    const stop = (): void => {
      for (const u of unsubs.splice(0)) u();
    };
    call.on('cancelled', stop);
    call.on('close', stop);
    void (async () => {
      const snapshot = await ctx.store.getSandboxMessage(req.id).catch(() => null);
      if (!snapshot) {
        call.emit('error', grpcError(new GatewayError(Status.NOT_FOUND, 'sandbox not found')));
        return;
      }
      const terminal = (s: Record<string, unknown>): boolean => s.phase === Phase.READY || s.phase === Phase.ERROR;
      if (req.follow_status) {
        call.write({ sandbox: snapshot });
        if (req.stop_on_terminal && terminal(snapshot)) {
          call.end();
          return;
        }
        unsubs.push(
          ctx.watch.subscribe(req.id, () => {
            void ctx.store.getSandboxMessage(req.id).then((s) => {
              if (!s || call.cancelled) return;
              call.write({ sandbox: s });
              if (req.stop_on_terminal && terminal(s)) {
                stop();
                call.end();
              }
            }, () => undefined);
          }),
        );
      }
      if (req.follow_logs) {
        for (const line of ctx.logs.tail(req.id, req.log_tail_lines).lines) call.write({ log: line });
        unsubs.push(ctx.logs.subscribe(req.id, (line) => call.write({ log: line })));
      }
      if (!req.follow_status && !req.follow_logs) call.end();
    })();
  };
}

function createSshSession(ctx: GatewayContext) {
  return (call: ServerUnaryCall<{ sandbox_id: string }, unknown>, callback: sendUnaryData<unknown>): void => {
    void (async () => {
      try {
        await requireReadySandbox(ctx, call.request.sandbox_id);
        const row = await ctx.store.createSshSession(call.request.sandbox_id, SSH_SESSION_TTL_SECS);
        const adv = ctx.advertised();
        callback(null, {
          sandbox_id: row.sandboxId,
          token: row.token,
          gateway_host: adv.host,
          gateway_port: adv.port,
          gateway_scheme: adv.scheme,
          connect_path: '/connect/ssh',
          expires_at_ms: row.expiresAtMs,
        });
      } catch (err) {
        callback(grpcError(err));
      }
    })();
  };
}

export function gatewayServiceImplementation(ctx: GatewayContext): UntypedServiceImplementation {
  return {
    Health: (_call: ServerUnaryCall<unknown, unknown>, cb: sendUnaryData<unknown>) =>
      cb(null, { status: 1, version: ctx.version }),
    CreateSshSession: createSshSession(ctx),
    ExecSandbox: execSandbox(ctx),
    GetSandboxLogs: getSandboxLogs(ctx),
    PushSandboxLogs: pushSandboxLogs(ctx),
    ConnectSupervisor: connectSupervisor(ctx),
    RelayStream: relayStream(ctx),
    WatchSandbox: watchSandbox(ctx),
  };
}
