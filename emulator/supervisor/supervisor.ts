// A stand-in for the Rust OpenShell sandbox supervisor: holds the `ConnectSupervisor` control stream,
// reconnects like the real one, and answers `RelayOpen` by bridging a `RelayStream` to the sandbox's
// SSH server (reference §2.1, §2.2, §6). With protocol 2026-08 it also sends its sandbox JWT as
// `authorization: Bearer` on every call, pushes its lifetime logs on a separate connection started
// before ConnectSupervisor (reference §8), dials a relay's target before reporting RelayOpenResult
// (reference §2.2 step 5 HEAD), and keeps one instance id for its whole life (reference §2.1).
import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import net from 'node:net';
import { constants as osConstants } from 'node:os';
import * as grpc from '@grpc/grpc-js';
import { pino } from 'pino';
import type { Logger } from 'pino';
import { openShellClient } from '../proto.ts';
import type { GatewayMessage, Protocol, RelayFrame, RelayOpenMessage, SupervisorMessage } from '../proto.ts';
import { LogPusher } from './log-push.ts';
import { wakeableSleep } from '../wakeable-sleep.ts';

/** Reference §2.1 "Heartbeat": the supervisor never heartbeats faster than every 5 s. */
const MIN_HEARTBEAT_SECS = 5;
/** After one side of a relay finishes, how long the other gets to flush before both are destroyed. */
const RELAY_CLOSE_GRACE_MS = 5000;

const CHANNEL_OPTIONS: grpc.ChannelOptions = {
  // A private subchannel pool makes every attempt a fresh TCP connection, as the Rust supervisor's new
  // tonic Channel per attempt is (reference §2.1 "Reconnect"), so a balancer can land it anywhere.
  'grpc.use_local_subchannel_pool': 1,
  'grpc.keepalive_time_ms': 10_000,
  'grpc.keepalive_timeout_ms': 20_000,
  'grpc.keepalive_permit_without_calls': 1,
};

type ControlCall = grpc.ClientDuplexStream<SupervisorMessage, GatewayMessage>;
type RelayCall = grpc.ClientDuplexStream<RelayFrame, RelayFrame>;

type UnaryCallback = (err: grpc.ServiceError | null, res?: Record<string, unknown>) => void;

interface OpenShellRpcClient extends grpc.Client {
  ConnectSupervisor(metadata?: grpc.Metadata, options?: grpc.CallOptions): ControlCall;
  RelayStream(metadata?: grpc.Metadata, options?: grpc.CallOptions): RelayCall;
  GetSandboxConfig(req: unknown, metadata: grpc.Metadata, options: grpc.CallOptions, cb: UnaryCallback): grpc.ClientUnaryCall;
  ReportPolicyStatus(req: unknown, metadata: grpc.Metadata, options: grpc.CallOptions, cb: UnaryCallback): grpc.ClientUnaryCall;
}

const POLICY_STATUS_LOADED = 2;

/** strerror(3) on Linux for the errors a relay target dial meets. */
const STRERROR: Record<string, string> = {
  ECONNREFUSED: 'Connection refused',
  ECONNRESET: 'Connection reset by peer',
  ETIMEDOUT: 'Connection timed out',
  EHOSTUNREACH: 'No route to host',
  ENETUNREACH: 'Network is unreachable',
  EADDRNOTAVAIL: 'Cannot assign requested address',
  EACCES: 'Permission denied',
  ENOENT: 'No such file or directory',
};

/**
 * What upstream's supervisor reports for a failed dial: Rust's `std::io::Error` Display,
 * e.g. `Connection refused (os error 111)` (supervisor_session.rs@v0.0.111:579, `err.to_string()`).
 */
export function rustIoErrorText(err: NodeJS.ErrnoException): string {
  const code = err.code ?? '';
  const errno = (osConstants.errno as Record<string, number | undefined>)[code];
  const text = STRERROR[code];
  return text && errno !== undefined ? `${text} (os error ${errno})` : err.message;
}
/** Codes upstream's supervisor retries (is_retryable_error, openshell-sandbox lib.rs@v0.0.111:2035-2052). */
const RETRYABLE: readonly grpc.status[] = [
  grpc.status.UNAVAILABLE,
  grpc.status.DEADLINE_EXCEEDED,
  grpc.status.RESOURCE_EXHAUSTED,
  grpc.status.ABORTED,
  grpc.status.INTERNAL,
  grpc.status.UNKNOWN,
];

export interface SupervisorEmulatorOptions {
  /** host:port of the gateway or of the balancer in front of the replicas. */
  endpoint: string;
  sandboxId: string;
  /** Loopback port of the sandbox's SSH server that relays are bridged to. */
  sshPort: number;
  /** Fixed instance id; by default a fresh UUID per attempt (reference §2.1, seed behaviour). */
  instanceId?: string;
  backoff?: { initialMs: number; maxMs: number };
  /** Supervisor heartbeat period in seconds, replacing max(heartbeat_interval_secs, 5). */
  heartbeatSecsOverride?: number;
  logger?: Logger;
  /** Protocol generation; default '2026-04' (seed). */
  protocol?: Protocol;
  /** 2026-08: the sandbox JWT (OPENSHELL_SANDBOX_TOKEN) sent as `authorization: Bearer` on every call. */
  token?: string;
  /** 2026-08: where a `tcp` relay target's port is served locally (target port → local port); unmapped ports are dialled as given. */
  servicePorts?: Record<number, number>;
  /** 2026-08: run the lifetime PushSandboxLogs stream (default true). */
  logPush?: boolean;
  /**
   * 2026-08: upstream's start-up policy calls (default true): GetSandboxConfig before anything else,
   * then GetSandboxConfig + ReportPolicyStatus(LOADED) on a connection of their own while the session
   * connects (reference §8; docs/interop.md U1).
   */
  policySync?: boolean;
}

export interface SupervisorEmulatorEvents {
  session: [{ sessionId: string }];
  disconnected: [{ reason: string; sessionId: string | null }];
  relay: [{ channelId: string }];
}

/** One connection attempt: its own grpc-js client (own HTTP/2 connection), control call and relays. */
class Link {
  control: ControlCall | null = null;
  readonly relays = new Map<string, { destroy(): void }>();
  sessionOver = false;
  private clientClosed = false;

  constructor(
    readonly client: OpenShellRpcClient,
    private readonly onClosed: (link: Link) => void,
  ) {}

  /** Relays whose target is being dialled: like open relays, they keep the connection (below). */
  dialling = 0;

  /**
   * Relays outlive their control stream, as in the Rust supervisor (each relay task holds a clone of
   * the channel from the moment it handles the RelayOpen); the connection goes when both are done.
   */
  closeIfIdle(): void {
    if (this.sessionOver && this.relays.size === 0 && this.dialling === 0) this.closeClient();
  }

  /** Abrupt end: every call on this connection is cancelled. */
  kill(): void {
    for (const relay of [...this.relays.values()]) relay.destroy();
    this.control?.cancel();
    this.closeClient();
  }

  private closeClient(): void {
    if (this.clientClosed) return;
    this.clientClosed = true;
    this.client.close();
    this.onClosed(this);
  }
}

export class SupervisorEmulator extends EventEmitter<SupervisorEmulatorEvents> {
  connected = false;
  sessionId: string | null = null;
  sessionsStarted = 0;
  /** Delay slept before the current (or next) attempt; 0 before the first. */
  currentAttemptDelayMs = 0;
  /** Every backoff delay slept so far, in order. */
  readonly delays: number[] = [];

  private readonly opts: SupervisorEmulatorOptions;
  private readonly log: Logger;
  private readonly backoff: { initialMs: number; maxMs: number };
  private readonly links = new Set<Link>();
  private current: Link | null = null;
  private relayCount = 0;
  /** stop() waiting for the relays it cut to finish closing. */
  private readonly relaysGone = new Set<() => void>();
  private stopped = false;
  private loop: Promise<void> | null = null;
  /** Sleeps in progress (the reconnect backoff, the policy retries): stop() cuts them all short. */
  private readonly wakers = new Set<() => void>();
  private readonly gen2: boolean;
  /** 2026-08: one main-process instance id per supervisor process (reference §2.1 "Reconnect"). */
  private readonly fixedInstanceId: string | undefined;
  private logPusher: LogPusher | null = null;
  /** The policy report started beside the first session attempt (2026-08). */
  private policyReport: Promise<void> | null = null;
  /** Clients of the start-up policy calls, closed by stop(). */
  private readonly policyClients = new Set<grpc.Client>();
  private readonly policyCalls = new Set<grpc.ClientUnaryCall>();

  constructor(opts: SupervisorEmulatorOptions) {
    super();
    this.opts = opts;
    this.gen2 = opts.protocol === '2026-08';
    this.fixedInstanceId = opts.instanceId ?? (this.gen2 ? randomUUID() : undefined);
    this.backoff = opts.backoff ?? { initialMs: 1000, maxMs: 30_000 };
    this.log = (opts.logger ?? pino({ level: 'silent' })).child({
      component: 'supervisor-emulator',
      sandbox: opts.sandboxId,
    });
  }

  get activeRelays(): number {
    return this.relayCount;
  }

  /** The instance id sent in Hello (fixed at 2026-08; per attempt at seed, so null). */
  get instanceId(): string | null {
    return this.fixedInstanceId ?? null;
  }

  /** Per-call metadata: at 2026-08 the sandbox JWT on every call (grpc_client.rs AuthInterceptor). */
  private metadata(): grpc.Metadata {
    const md = new grpc.Metadata();
    if (this.gen2 && this.opts.token) md.set('authorization', `Bearer ${this.opts.token}`);
    return md;
  }

  /** Queues one line for the lifetime log push (2026-08 only). */
  pushLog(message: string, level = 'INFO'): void {
    this.logPusher?.push(message, level);
  }

  start(): void {
    if (this.loop || this.stopped) return;
    // The supervisor starts its log push before ConnectSupervisor (reference §8, main.rs@v0.0.111:577-591).
    if (this.gen2 && (this.opts.logPush ?? true)) {
      this.logPusher = new LogPusher({ endpoint: this.opts.endpoint, sandboxId: this.opts.sandboxId, metadata: () => this.metadata(), logger: this.log });
      this.logPusher.start();
      this.logPusher.push('supervisor starting');
      this.logPusher.flush();
    }
    this.loop = this.gen2 && (this.opts.policySync ?? true) ? this.startUp() : this.reconnectLoop();
  }

  /**
   * Upstream's order (openshell-sandbox lib.rs@v0.0.111): load_policy fetches the sandbox's config
   * (GetSandboxConfig, `grpc_retry`: 5 attempts, 1-4 s apart, transient codes only) before anything
   * runs; then the policy poll loop and the supervisor session are spawned side by side, so the poll
   * loop's GetSandboxConfig and ReportPolicyStatus(LOADED), each on the poll loop's own connection,
   * race the session's Hello. The report rewrites the sandbox row on whichever replica it lands.
   * Where upstream's supervisor would exit after a failed fetch, the emulator logs it and connects
   * anyway, so a test's supervisor never vanishes silently.
   */
  private async startUp(): Promise<void> {
    for (let attempt = 1; attempt <= 5 && !this.stopped; attempt++) {
      const client = this.policyClient();
      try {
        // Upstream syncs a policy discovered on disk (UpdateConfig) when the answer has none; the
        // emulator's gateway always has revision 1, and that sync finishes before the session starts.
        await this.unary(client, 'GetSandboxConfig', { sandbox_id: this.opts.sandboxId });
        break;
      } catch (err) {
        const code = (err as grpc.ServiceError).code;
        this.log.warn({ attempt, code, err: (err as Error).message }, 'Policy fetch failed');
        if (!RETRYABLE.includes(code) || attempt === 5) break;
        await this.sleep(Math.min(1000 * 2 ** (attempt - 1), 4000));
      } finally {
        this.closePolicyClient(client);
      }
    }
    if (this.stopped) return;
    this.policyReport = this.reportPolicyLoaded().catch((err: unknown) => this.log.warn({ err }, 'policy status report failed'));
    await this.reconnectLoop();
  }

  /**
   * The poll loop's first poll and the initial acknowledgement, on one connection. A transient failure
   * (an ABORTED from a lost CAS included) is retried after 1, 2, 4 … 32 s until it lands, any other
   * discards the update (run_policy_status_reporter, lib.rs@v0.0.111:2992-3070).
   */
  private async reportPolicyLoaded(): Promise<void> {
    const client = this.policyClient();
    try {
      const cfg = await this.unary(client, 'GetSandboxConfig', { sandbox_id: this.opts.sandboxId });
      const version = Number(cfg.version ?? 0);
      if (version === 0) return;
      for (let attempt = 1; !this.stopped; attempt++) {
        try {
          await this.unary(client, 'ReportPolicyStatus', { sandbox_id: this.opts.sandboxId, version, status: POLICY_STATUS_LOADED, load_error: '' });
          this.pushLog(`Acknowledged initial policy revision as loaded [version:${version}]`);
          return;
        } catch (err) {
          const code = (err as grpc.ServiceError).code;
          if (!RETRYABLE.includes(code)) {
            this.log.warn({ code, err: (err as Error).message, version }, 'Discarding terminal policy status update');
            return;
          }
          this.log.info({ code, attempt, version }, 'Initial policy acknowledgement failed transiently; retaining ordered update');
          await this.sleep(1000 * 2 ** Math.min(attempt - 1, 5));
        }
      }
    } finally {
      this.closePolicyClient(client);
    }
  }

  private policyClient(): OpenShellRpcClient {
    const Ctor = openShellClient();
    const client = new Ctor(this.opts.endpoint, grpc.credentials.createInsecure(), CHANNEL_OPTIONS) as unknown as OpenShellRpcClient;
    this.policyClients.add(client);
    return client;
  }

  private closePolicyClient(client: grpc.Client): void {
    this.policyClients.delete(client);
    client.close();
  }

  private unary(client: OpenShellRpcClient, method: 'GetSandboxConfig' | 'ReportPolicyStatus', req: unknown): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      const call = client[method](req, this.metadata(), { deadline: Date.now() + 10_000 }, (err, res) => {
        this.policyCalls.delete(call);
        if (err) reject(err);
        else resolve(res ?? {});
      });
      this.policyCalls.add(call);
    });
  }

  /** Stops reconnecting, cancels every call, closes every client and relay socket. */
  async stop(): Promise<void> {
    this.stopped = true;
    for (const wake of [...this.wakers]) wake();
    for (const link of [...this.links]) link.kill();
    for (const call of [...this.policyCalls]) call.cancel();
    for (const c of [...this.policyClients]) this.closePolicyClient(c);
    await this.loop;
    await this.policyReport;
    await this.logPusher?.stop();
    // A cut relay is accounted for once its socket closed and its call reported a status: both are
    // events still to come when kill() returns.
    if (this.relayCount > 0) await wakeableSleep(RELAY_CLOSE_GRACE_MS, this.relaysGone);
  }

  /** Simulates a network drop: the current connection and everything on it goes; the loop reconnects. */
  dropConnection(): void {
    this.current?.kill();
  }

  /** Resolves with the session id once a session is accepted. */
  waitConnected(timeoutMs: number): Promise<string> {
    if (this.connected && this.sessionId) return Promise.resolve(this.sessionId);
    return new Promise((resolve, reject) => {
      const onSession = ({ sessionId }: { sessionId: string }): void => {
        clearTimeout(timer);
        resolve(sessionId);
      };
      const timer = setTimeout(() => {
        this.off('session', onSession);
        reject(new Error(`supervisor ${this.opts.sandboxId} not connected after ${timeoutMs} ms`));
      }, timeoutMs);
      timer.unref();
      this.once('session', onSession);
    });
  }

  private async reconnectLoop(): Promise<void> {
    // Reference §2.1 "Reconnect": starts at initial, doubles, caps, never resets after a good session.
    let delay = this.backoff.initialMs;
    while (!this.stopped) {
      let reason = await this.attempt();
      const sessionId = this.sessionId;
      if (this.stopped) reason = 'stopped';
      this.connected = false;
      this.sessionId = null;
      this.log.info({ reason, sessionId }, 'supervisor session ended');
      this.emit('disconnected', { reason, sessionId });
      if (this.stopped) break;
      this.delays.push(delay);
      this.currentAttemptDelayMs = delay;
      await this.sleep(delay);
      delay = Math.min(delay * 2, this.backoff.maxMs);
    }
  }

  /** Backoff sleep that `stop()` cuts short. */
  private sleep(ms: number): Promise<void> {
    if (this.stopped) return Promise.resolve();
    return wakeableSleep(ms, this.wakers, { unref: true });
  }

  /** One session attempt; resolves with why it ended. */
  private attempt(): Promise<string> {
    const { endpoint, sandboxId } = this.opts;
    const instanceId = this.fixedInstanceId ?? randomUUID();
    let client: OpenShellRpcClient | undefined;
    let call: ControlCall;
    try {
      const Ctor = openShellClient();
      client = new Ctor(endpoint, grpc.credentials.createInsecure(), CHANNEL_OPTIONS) as unknown as OpenShellRpcClient;
      call = client.ConnectSupervisor(this.metadata());
    } catch (err) {
      client?.close();
      this.log.warn({ err }, 'supervisor could not create client');
      return Promise.resolve(`client error: ${(err as Error).message}`);
    }
    const link = new Link(client, (closed) => this.links.delete(closed));
    link.control = call;
    this.links.add(link);
    this.current = link;

    return new Promise((resolve) => {
      let heartbeat: NodeJS.Timeout | undefined;
      let over = false;
      const end = (reason: string): void => {
        if (over) return;
        over = true;
        clearInterval(heartbeat);
        call.cancel();
        if (this.current === link) this.current = null;
        link.sessionOver = true;
        link.closeIfIdle();
        resolve(reason);
      };
      const write = (msg: SupervisorMessage): void => {
        if (!over) call.write(msg);
      };

      call.on('data', (msg: GatewayMessage) => {
        if (msg.session_accepted) {
          const { session_id, heartbeat_interval_secs } = msg.session_accepted;
          this.connected = true;
          this.sessionId = session_id;
          this.sessionsStarted++;
          const secs = this.opts.heartbeatSecsOverride ?? Math.max(heartbeat_interval_secs, MIN_HEARTBEAT_SECS);
          heartbeat = setInterval(() => write({ heartbeat: {} }), secs * 1000);
          heartbeat.unref();
          this.log.info({ sessionId: session_id, instanceId }, 'supervisor session accepted');
          this.pushLog(`supervisor session accepted: ${session_id}`);
          this.emit('session', { sessionId: session_id });
        } else if (msg.session_rejected) {
          end(`rejected: ${msg.session_rejected.reason}`);
        } else if (msg.relay_open) {
          if (this.gen2) this.dialThenRelay(link, msg.relay_open, write);
          else this.bridgeRelay(link, msg.relay_open.channel_id, () => net.connect({ host: '127.0.0.1', port: this.opts.sshPort }));
        } else if (msg.relay_close) {
          link.relays.get(msg.relay_close.channel_id)?.destroy();
        }
        // Gateway heartbeats need no answer (reference §2.1: neither side enforces a timeout).
      });
      call.on('error', (err: grpc.ServiceError) => end(`stream error: ${grpc.status[err.code] ?? err.code} ${err.details}`));
      // grpc-js reports every ending through 'status' (after 'error' for a non-OK one).
      call.on('status', (status: grpc.StatusObject) =>
        end(status.code === grpc.status.OK ? 'gateway closed stream' : `stream status: ${grpc.status[status.code] ?? status.code}`),
      );
      write({ hello: { sandbox_id: sandboxId, instance_id: instanceId } });
    });
  }

  /**
   * Reference §2.2 step 5 (2026-08): dial the target first (ssh → the sandbox's SSH server; tcp → a
   * loopback port, through `servicePorts`), report RelayOpenResult on the control stream, and only on
   * success open the RelayStream (supervisor_session.rs@v0.0.111 of the supervisor, :559-605).
   */
  private dialThenRelay(link: Link, open: RelayOpenMessage, write: (msg: SupervisorMessage) => void): void {
    const channelId = open.channel_id;
    const log = this.log.child({ channel: channelId });
    let host = '127.0.0.1';
    let port = this.opts.sshPort;
    if (open.target === 'tcp' && open.tcp) {
      host = open.tcp.host === '::1' ? '::1' : '127.0.0.1';
      port = this.opts.servicePorts?.[open.tcp.port] ?? open.tcp.port;
    }
    const sock = net.connect({ host, port });
    link.dialling++;
    const dialled = (): void => {
      link.dialling--;
    };
    const onError = (err: Error): void => {
      dialled();
      sock.destroy();
      log.info({ err: err.message, port }, 'relay target dial failed');
      this.pushLog(`relay target dial failed: ${err.message}`, 'WARN');
      write({ relay_open_result: { channel_id: channelId, success: false, error: rustIoErrorText(err) } });
      link.closeIfIdle();
    };
    sock.once('error', onError);
    sock.once('connect', () => {
      sock.off('error', onError);
      if (this.stopped) {
        dialled();
        sock.destroy();
        link.closeIfIdle();
        return;
      }
      write({ relay_open_result: { channel_id: channelId, success: true, error: '' } });
      this.pushLog(`relay opened: ${channelId}`);
      this.bridgeRelay(link, channelId, () => sock);
      dialled();
      link.closeIfIdle();
    });
  }

  /**
   * Reference §2.2 step 5: open `RelayStream` on the same client as the control stream, so it rides the
   * same HTTP/2 connection and reaches the replica holding the pending relay, send `init` first, and
   * bridge the target socket (seed: dialled only now; 2026-08: already connected) both ways.
   */
  private bridgeRelay(link: Link, channelId: string, dial: () => net.Socket): void {
    const log = this.log.child({ channel: channelId });
    if (link.relays.has(channelId)) {
      log.warn('duplicate relay_open ignored');
      return;
    }
    let call: RelayCall;
    try {
      call = link.client.RelayStream(this.metadata());
    } catch (err) {
      log.warn({ err }, 'relay stream could not be opened');
      return;
    }
    const sock = dial();
    // SSH bytes to and from the sandbox's SSH server: no Nagle stalls on this leg (see ssh-server.ts).
    sock.setNoDelay(true);
    let sockClosed = false;
    let callDone = false;
    let finalized = false;
    let force: NodeJS.Timeout | undefined;

    const hardClose = (): void => {
      sock.destroy();
      call.cancel();
    };
    const armForce = (): void => {
      if (force || finalized) return;
      force = setTimeout(hardClose, RELAY_CLOSE_GRACE_MS);
      force.unref();
    };
    const resumeSock = (): void => {
      sock.resume();
    };
    const resumeCall = (): void => {
      call.resume();
    };
    const onSockData = (chunk: Buffer): void => {
      if (callDone || call.writableEnded) return;
      if (!call.write({ data: chunk })) {
        sock.pause();
        call.once('drain', resumeSock);
      }
    };
    const onFrame = (frame: RelayFrame): void => {
      if (!frame.data || frame.data.length === 0 || sock.destroyed || sock.writableEnded) return;
      if (!sock.write(frame.data)) {
        call.pause();
        sock.once('drain', resumeCall);
      }
    };
    // Each direction's end is passed on after its bytes are flushed; when both sides are gone, one
    // place removes every listener and accounts for the relay.
    const onCallEnd = (): void => {
      if (!sock.writableEnded) sock.end();
      armForce();
    };
    const onSockEnd = (): void => {
      if (!callDone && !call.writableEnded) call.end();
      armForce();
    };
    const onSockClose = (): void => {
      sockClosed = true;
      onSockEnd();
      finalize();
    };
    const onSockError = (err: Error): void => {
      log.debug({ err }, 'relay socket error');
      hardClose();
    };
    const onCallError = (err: grpc.ServiceError): void => {
      if (err.code !== grpc.status.CANCELLED) log.debug({ err }, 'relay stream error');
      hardClose();
    };
    const onCallStatus = (status: grpc.StatusObject): void => {
      callDone = true;
      if (status.code !== grpc.status.OK) sock.destroy();
      finalize();
    };
    const finalize = (): void => {
      if (finalized || !sockClosed || !callDone) return;
      finalized = true;
      clearTimeout(force);
      sock.off('data', onSockData).off('end', onSockEnd).off('close', onSockClose).off('drain', resumeCall);
      call.off('data', onFrame).off('end', onCallEnd).off('status', onCallStatus).off('drain', resumeSock);
      // The error listeners stay: a late error from a finished stream must not become an unhandled event.
      link.relays.delete(channelId);
      this.relayCount--;
      if (this.relayCount === 0) for (const done of [...this.relaysGone]) done();
      link.closeIfIdle();
      log.debug('relay closed');
    };

    link.relays.set(channelId, { destroy: hardClose });
    this.relayCount++;
    sock.on('data', onSockData).on('end', onSockEnd).on('close', onSockClose).on('error', onSockError);
    call.on('data', onFrame).on('end', onCallEnd).on('status', onCallStatus).on('error', onCallError);
    call.write({ init: { channel_id: channelId } });
    log.debug('relay opened');
    this.emit('relay', { channelId });
  }
}
