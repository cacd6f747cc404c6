// The relay-backed calls of the 2026-08 gateway: ForwardTcp (SSH and loopback TCP targets) and
// ExecSandbox / ExecSandboxInteractive (an SSH client over an ssh-target relay). Each waits up to
// 15 s for a LOCAL supervisor session and 10 s for the relay claim (reference §2.3 HEAD, §2.4, §6).
import type { Duplex } from 'node:stream';
import { Metadata, status as Status, type ServerDuplexStream, type ServerWritableStream } from '@grpc/grpc-js';
import { Client as SshClient, type ClientChannel } from 'ssh2';
import type { ExecSandboxEvent } from '../../proto.ts';
import { SANDBOX_SSH_PASSWORD, SANDBOX_SSH_USER } from '../../supervisor/ssh-server.ts';
import { GatewayError, type RelayTarget } from '../registry.ts';
import type { Gen2Context } from './context.ts';
import { invalid, toServiceError, tonicStatusDisplay, withTimeout } from './rpc.ts';
import { requireReady, sandboxById } from './service.ts';

export const RELAY_SESSION_WAIT_MS = 15_000;
export const RELAY_CLAIM_WAIT_MS = 10_000;

interface TcpForwardFrame {
  payload?: 'init' | 'data';
  init?: {
    sandbox_id: string;
    service_id: string;
    target?: 'ssh' | 'tcp';
    ssh?: Record<string, never> | null;
    tcp?: { host: string; port: number } | null;
    authorization_token: string;
  } | null;
  data?: Buffer | null;
}

interface ExecRequest {
  sandbox_id: string;
  command: string[];
  workdir: string;
  environment: Record<string, string>;
  timeout_seconds: number;
  stdin: Buffer;
  tty: boolean;
  cols: number;
  rows: number;
}

interface ExecInput {
  payload?: 'start' | 'stdin' | 'resize';
  start?: ExecRequest | null;
  stdin?: Buffer | null;
  resize?: { cols: number; rows: number } | null;
}

/** The first inbound message, with the stream paused behind it; null if the client ended first. */
function firstMessage<T>(call: NodeJS.EventEmitter & { pause(): unknown }): Promise<T | null> {
  return new Promise((resolve) => {
    const onData = (m: T): void => {
      call.pause();
      cleanup();
      resolve(m);
    };
    const onEnd = (): void => {
      cleanup();
      resolve(null);
    };
    const cleanup = (): void => {
      call.off('data', onData);
      call.off('end', onEnd);
      call.off('cancelled', onEnd);
    };
    call.on('data', onData);
    call.on('end', onEnd);
    call.on('cancelled', onEnd);
  });
}

/** Opens a relay (15 s session wait) and waits for its claim (10 s), as open_relay + await_relay_stream. */
async function openRelay(
  ctx: Gen2Context,
  sandboxId: string,
  target: RelayTarget,
  serviceId: string,
  afterOpen: () => void,
): Promise<Duplex> {
  let stream: Promise<Duplex>;
  try {
    ({ stream } = await ctx.registry.openRelay(sandboxId, RELAY_SESSION_WAIT_MS, { target, serviceId }));
  } catch (err) {
    // Upstream wraps open_relay's Status in another (`supervisor relay failed: {e}`), so the message
    // carries tonic's rendering of the inner one: `code: 'The service is currently unavailable',
    // message: "supervisor session not connected"` (docs/interop.md, difference 1).
    const inner = err instanceof GatewayError ? tonicStatusDisplay(err.code, err.message) : tonicStatusDisplay(Status.INTERNAL, String(err));
    throw new GatewayError(Status.UNAVAILABLE, `supervisor relay failed: ${inner}`);
  }
  // Upstream returns the response (headers) here and reports later failures inside the stream (reference §8).
  afterOpen();
  return withTimeout(stream, RELAY_CLAIM_WAIT_MS, () => new GatewayError(Status.DEADLINE_EXCEEDED, 'relay open timed out')).catch(
    (err: unknown) => {
      if (err instanceof GatewayError && err.code === Status.DEADLINE_EXCEEDED) {
        throw new GatewayError(Status.DEADLINE_EXCEEDED, 'relay open timed out');
      }
      throw err;
    },
  );
}

/** validate_tcp_forward_init / validate_tcp_target_parts (grpc/sandbox.rs@v0.0.111:1457-1519). */
export function validateForwardTarget(init: NonNullable<TcpForwardFrame['init']>): RelayTarget {
  if (!init.sandbox_id) throw invalid('sandbox_id is required');
  if (init.target === 'ssh') return { kind: 'ssh' };
  if (init.target !== 'tcp' || !init.tcp) throw invalid('tcp forward target is required');
  const { port } = init.tcp;
  if (port === 0 || port > 65535) throw invalid('tcp target port must be between 1 and 65535');
  const host = init.tcp.host.trim();
  if (!host) throw invalid('tcp target host is required');
  if (host.toLowerCase() === 'localhost') return { kind: 'tcp', host: '127.0.0.1', port };
  if (/^127(\.\d{1,3}){3}$/.test(host) && host.split('.').every((o) => Number(o) <= 255)) return { kind: 'tcp', host, port };
  if (host === '::1' || host === '0:0:0:0:0:0:0:1') return { kind: 'tcp', host: '::1', port };
  throw invalid('tcp target host must be loopback');
}

/**
 * ForwardTcp (grpc/sandbox.rs@v0.0.111:1280-1560), checks in upstream's order: init first; target;
 * sandbox by id (NOT_FOUND); Ready (FAILED_PRECONDITION); authorization_token required and checked
 * against its ssh_session row (UNAUTHENTICATED); per-process slots 3/token, 20/sandbox
 * (RESOURCE_EXHAUSTED); relay (15 s session wait → UNAVAILABLE); 10 s claim; then data both ways.
 */
export async function forwardTcp(ctx: Gen2Context, call: ServerDuplexStream<TcpForwardFrame, TcpForwardFrame>): Promise<void> {
  const first = await firstMessage<TcpForwardFrame>(call);
  if (!first) throw invalid('empty ForwardTcp stream');
  if (first.payload !== 'init' || !first.init) throw invalid('first TcpForwardFrame must be init');
  const init = first.init;
  const target = validateForwardTarget(init);
  const sandbox = await sandboxById(ctx, init.sandbox_id);
  requireReady(sandbox);
  const token = init.authorization_token.trim();
  if (!token) throw new GatewayError(Status.UNAUTHENTICATED, 'authorization_token is required for ForwardTcp');
  const session = await ctx.store.getSshSession(token);
  if (!session) throw new GatewayError(Status.UNAUTHENTICATED, 'SSH session token not found');
  if (session.revoked || session.sandboxId !== sandbox.id) throw new GatewayError(Status.UNAUTHENTICATED, 'SSH session token is not valid');
  if (session.expiresAtMs > 0 && Date.now() > session.expiresAtMs) throw new GatewayError(Status.UNAUTHENTICATED, 'SSH session token expired');
  const slot = ctx.slots.acquire(token, sandbox.id);
  if (slot === 'token') throw new GatewayError(Status.RESOURCE_EXHAUSTED, 'SSH session connection limit reached');
  if (slot === 'sandbox') throw new GatewayError(Status.RESOURCE_EXHAUSTED, 'sandbox SSH connection limit reached');
  let released = false;
  const release = (): void => {
    if (released) return;
    released = true;
    ctx.slots.release(token, sandbox.id);
  };
  call.once('close', release);
  call.once('cancelled', release);
  let relay: Duplex;
  try {
    relay = await openRelay(ctx, sandbox.id, target, init.service_id, () => call.sendMetadata(new Metadata()));
  } catch (err) {
    release();
    throw err;
  }
  if (call.cancelled) {
    relay.destroy();
    release();
    return;
  }
  bridgeForward(call, relay, release);
}

/** bridge_forward_tcp_stream: client data frames → relay; relay bytes → data frames; either end closes both. */
function bridgeForward(call: ServerDuplexStream<TcpForwardFrame, TcpForwardFrame>, relay: Duplex, release: () => void): void {
  let done = false;
  const cleanup = (): void => {
    if (done) return;
    done = true;
    release();
    call.off('data', onFrame);
    relay.off('data', onRelayData);
    relay.destroy();
  };
  const onFrame = (frame: TcpForwardFrame): void => {
    if (frame.payload !== 'data') {
      // A non-data frame after init ends the inbound direction (upstream logs and breaks).
      call.off('data', onFrame);
      relay.end();
      return;
    }
    if (!frame.data || frame.data.length === 0) return;
    if (!relay.write(frame.data)) {
      call.pause();
      relay.once('drain', () => call.resume());
    }
  };
  const onRelayData = (chunk: Buffer): void => {
    if (call.cancelled || call.writableEnded) return;
    if (!call.write({ data: chunk })) {
      relay.pause();
      call.once('drain', () => relay.resume());
    }
  };
  call.on('data', onFrame);
  call.on('end', () => relay.end());
  call.on('cancelled', cleanup);
  call.on('close', cleanup);
  relay.on('data', onRelayData);
  relay.on('end', () => {
    if (!call.cancelled && !call.writableEnded) call.end();
  });
  relay.on('error', () => {
    if (!call.cancelled && !call.writableEnded) call.emit('error', toServiceError(new GatewayError(Status.UNAVAILABLE, 'relay read failed')));
    cleanup();
  });
  relay.on('close', () => {
    if (!call.cancelled && !call.writableEnded) call.end();
  });
  call.resume();
}

// --- exec -------------------------------------------------------------------------------

/** shell_escape (grpc/sandbox.rs@v0.0.111:1856-1871). */
export function shellEscape(value: string): string {
  if (value.includes('\0')) throw invalid('command construction failed: value contains null bytes');
  if (value === '') return "''";
  if (/^[A-Za-z0-9./_-]+$/.test(value)) return value;
  return `'${value.replace(/'/g, `'"'"'`)}'`;
}

/** build_remote_exec_command (grpc/sandbox.rs@v0.0.111:1906-1929): sorted env assignments, escaped argv, `cd` for workdir. */
export function buildRemoteCommand(req: Pick<ExecRequest, 'environment' | 'command' | 'workdir'>): string {
  const parts: string[] = [];
  for (const key of Object.keys(req.environment).sort()) parts.push(`${key}=${shellEscape(req.environment[key] ?? '')}`);
  for (const arg of req.command) parts.push(shellEscape(arg));
  const command = parts.join(' ');
  return req.workdir ? `cd ${shellEscape(req.workdir)} && ${command}` : command;
}

function validateExecRequest(req: ExecRequest): void {
  if (!req.sandbox_id) throw invalid('sandbox_id is required');
  if (req.command.length === 0) throw invalid('command is required');
  if (Object.keys(req.environment).some((k) => !/^[A-Za-z_][A-Za-z0-9_]*$/.test(k))) {
    throw invalid('environment keys must match ^[A-Za-z_][A-Za-z0-9_]*$');
  }
}

interface SshExecIo {
  onStdout(d: Buffer): void;
  onStderr(d: Buffer): void;
  /** Called with the channel once the command runs (stdin, resize). */
  onChannel(ch: ClientChannel): void;
}

/** Runs `command` over SSH on the relay; resolves with the exit status, or null if none came. */
function sshExec(relay: Duplex, command: string, pty: { cols: number; rows: number } | null, io: SshExecIo, signal: AbortSignal): Promise<number | null> {
  return new Promise((resolve, reject) => {
    const ssh = new SshClient();
    let exitCode: number | null = null;
    let settled = false;
    const settle = (fn: () => void): void => {
      if (settled) return;
      settled = true;
      signal.removeEventListener('abort', onAbort);
      ssh.end();
      relay.destroy();
      fn();
    };
    const onAbort = (): void => settle(() => resolve(exitCode));
    signal.addEventListener('abort', onAbort, { once: true });
    ssh.on('error', (err) => settle(() => reject(new GatewayError(Status.UNAVAILABLE, `ssh failed: ${err.message}`))));
    ssh.on('close', () => settle(() => resolve(exitCode)));
    ssh.on('ready', () => {
      const cb = (err: Error | undefined, channel: ClientChannel): void => {
        if (err) return settle(() => reject(new GatewayError(Status.INTERNAL, err.message)));
        channel.on('data', (d: Buffer) => io.onStdout(d));
        channel.stderr.on('data', (d: Buffer) => io.onStderr(d));
        channel.on('exit', (code: number | null) => {
          exitCode = typeof code === 'number' ? code : null;
        });
        channel.on('close', () => settle(() => resolve(exitCode)));
        io.onChannel(channel);
      };
      if (pty) ssh.exec(command, { pty: { cols: pty.cols, rows: pty.rows, term: 'xterm' } }, cb);
      else ssh.exec(command, cb);
    });
    ssh.connect({ sock: relay, username: SANDBOX_SSH_USER, password: SANDBOX_SSH_PASSWORD, readyTimeout: 10_000 });
  });
}

/** A missing exit status is a relay failure, not exit code 1 (exec_loop_result, grpc/sandbox.rs@v0.0.111:1895-1904). */
function noExitStatus(): GatewayError {
  return new GatewayError(Status.UNAVAILABLE, 'exec relay closed before the command reported an exit status');
}

async function runExec(
  ctx: Gen2Context,
  call: ServerWritableStream<unknown, ExecSandboxEvent> | ServerDuplexStream<unknown, ExecSandboxEvent>,
  req: ExecRequest,
  onChannel: (ch: ClientChannel) => void,
): Promise<void> {
  const sandbox = await sandboxById(ctx, req.sandbox_id);
  requireReady(sandbox);
  const command = buildRemoteCommand(req);
  const relay = await openRelay(ctx, sandbox.id, { kind: 'ssh' }, '', () => call.sendMetadata(new Metadata()));
  const ac = new AbortController();
  call.on('cancelled', () => ac.abort());
  let timedOut = false;
  let timer: NodeJS.Timeout | undefined;
  if (req.timeout_seconds > 0) {
    timer = setTimeout(() => {
      timedOut = true;
      ac.abort();
    }, req.timeout_seconds * 1000);
    timer.unref();
  }
  const pty = req.tty ? { cols: req.cols || 80, rows: req.rows || 24 } : null;
  try {
    const code = await sshExec(
      relay,
      command,
      pty,
      {
        onStdout: (d) => call.write({ stdout: { data: d } }),
        onStderr: (d) => call.write({ stderr: { data: d } }),
        onChannel,
      },
      ac.signal,
    );
    if (call.cancelled) return;
    // A timeout reports exit 124 like `timeout(1)` (grpc/sandbox.rs@v0.0.111:2060-2070).
    if (timedOut) call.write({ exit: { exit_code: 124 } });
    else if (code === null) throw noExitStatus();
    else call.write({ exit: { exit_code: code } });
    call.end();
  } finally {
    clearTimeout(timer);
  }
}

/** ExecSandbox (grpc/sandbox.rs@v0.0.111:1172-1240): an empty command is refused before the sandbox lookup. */
export async function execSandbox(ctx: Gen2Context, call: ServerWritableStream<ExecRequest, ExecSandboxEvent>): Promise<void> {
  const req = call.request;
  validateExecRequest(req);
  await runExec(ctx, call, req, (ch) => {
    if (req.stdin && req.stdin.length > 0) ch.write(req.stdin);
    ch.end();
  });
}

/** ExecSandboxInteractive (grpc/sandbox.rs@v0.0.111:1593-1700): start first, then stdin and resize frames. */
export async function execSandboxInteractive(ctx: Gen2Context, call: ServerDuplexStream<ExecInput, ExecSandboxEvent>): Promise<void> {
  const first = await firstMessage<ExecInput>(call);
  if (!first) throw invalid('empty stream: expected start message');
  if (first.payload !== 'start' || !first.start) throw invalid('first message must be a start payload');
  const req = first.start;
  validateExecRequest(req);
  await runExec(ctx, call, req, (ch) => {
    call.on('data', (msg: ExecInput) => {
      if (msg.payload === 'stdin' && msg.stdin && msg.stdin.length > 0) ch.write(msg.stdin);
      else if (msg.payload === 'resize' && msg.resize) ch.setWindow(msg.resize.rows, msg.resize.cols, 0, 0);
    });
    // The end of the input stream is EOF *and* close of the SSH channel (run_interactive_exec_with_russh,
    // grpc/sandbox.rs@v0.0.111:2160-2180: eof() then close()): a command still running then never
    // reports its exit status, and the call fails with UNAVAILABLE "exec relay closed before the
    // command reported an exit status". A client keeps its input open until the exit event.
    call.on('end', () => {
      ch.end();
      ch.close();
    });
    call.resume();
  });
}
