// gRPC handlers of the gateway emulator for the 2026-08 protocol (upstream v0.0.111): sandboxes
// by name + workspace, SSH sessions, service endpoints, logs and watch (process-local buses), and
// the supervisor session. Relay-backed calls (ForwardTcp, exec) are in relay-calls.ts.
import { randomUUID } from 'node:crypto';
import {
  status as Status,
  type ServerDuplexStream,
  type ServerReadableStream,
  type ServerWritableStream,
  type UntypedServiceImplementation,
} from '@grpc/grpc-js';
import { HEARTBEAT_INTERVAL_SECS, Phase, type GatewayMessage, type RelayFrame, type SandboxLogLine, type SupervisorMessage } from '../../proto.ts';
import { GatewayError, type LiveSession } from '../registry.ts';
import { relayDuplex } from '../relay-duplex.ts';
import { ensureSandboxPrincipalScope, ensureSandboxScope, type Principal } from './auth.ts';
import type { Gen2Context } from './context.ts';
import { PHASE_NAMES, supervisorSessionChanged, writeLifecyclePhase } from './phase.ts';
import { emitDriverEvent } from './reconciler.ts';
import { execSandbox, execSandboxInteractive, forwardTcp } from './relay-calls.ts';
import { clientStreamRpc, invalid, streamRpc, unaryRpc } from './rpc.ts';
import { endpointKey, normalizeWorkspace, type Gen2Sandbox, type ServiceEndpointRow } from './store.ts';

export const SSH_SESSION_TTL_SECS = 86_400;
/** PushSandboxLogs keeps at most this many lines of a batch (grpc/policy.rs@v0.0.111:3581). */
export const MAX_LOG_LINES_PER_BATCH = 100;
const DEFAULT_LOG_LINES = 2000;
const DEFAULT_WATCH_LOG_TAIL = 200;

const notFound = (what = 'sandbox not found'): GatewayError => new GatewayError(Status.NOT_FOUND, what);

async function sandboxByName(ctx: Gen2Context, workspace: string, name: string): Promise<Gen2Sandbox> {
  if (!name) throw invalid('name is required');
  const s = await ctx.store.sandboxByName(normalizeWorkspace(workspace), name);
  if (!s) throw notFound();
  return s;
}

/** fetch_and_authorize_sandbox (grpc/sandbox.rs@v0.0.111:115-142): by id, NOT_FOUND otherwise. */
export async function sandboxById(ctx: Gen2Context, id: string): Promise<Gen2Sandbox> {
  const s = await ctx.store.sandboxById(id);
  if (!s) throw notFound();
  return s;
}

export function requireReady(s: Gen2Sandbox): void {
  if (s.phase !== Phase.READY) throw new GatewayError(Status.FAILED_PRECONDITION, 'sandbox is not ready');
}

// --- sandboxes --------------------------------------------------------------------------

interface CreateSandboxRequest {
  spec: Record<string, unknown> | null;
  name: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
  workspace: string;
}

async function createSandbox(ctx: Gen2Context, req: CreateSandboxRequest): Promise<unknown> {
  if (!req.spec) throw invalid('spec is required');
  const spec = { ...req.spec };
  // Every sandbox gets one canonical main process (handle_create_sandbox_inner).
  if (!Array.isArray(spec.command) || spec.command.length === 0) {
    spec.command = ['/bin/bash', '-l'];
    spec.tty = true;
  }
  // Workspace and sandbox names cannot hold `--`: it separates them in service hosts (reference §2.7).
  if (req.name.includes('--')) throw invalid('sandbox name must not contain consecutive hyphens');
  const sandbox = await ctx.store.insertSandbox({
    name: req.name || `sandbox-${randomUUID().slice(0, 8)}`,
    workspace: req.workspace,
    spec,
    labels: req.labels,
    annotations: req.annotations,
  });
  // The real gateway mints the sandbox JWT and passes it to the compute driver as
  // spec.sandbox_token; the emulator's "driver" is a table a supervisor fleet can watch.
  const token = await ctx.jwt.mint(sandbox.id);
  await ctx.store.recordSandboxToken(sandbox.id, token);
  // The driver's watch reports the new (still pending) backend to the lease holder, wherever that is.
  emitDriverEvent(ctx, sandbox.id, 'created');
  ctx.watch.notify(sandbox.id);
  ctx.logger.info({ sandboxId: sandbox.id, name: sandbox.name, workspace: sandbox.workspace }, 'sandbox created');
  return { sandbox: sandbox.message };
}

async function listSandboxes(
  ctx: Gen2Context,
  req: { limit: number; offset: number; workspace: string; all_workspaces: boolean },
): Promise<unknown> {
  if (req.all_workspaces && req.workspace) throw invalid('all_workspaces and workspace are mutually exclusive');
  const limit = Math.min(req.limit || 100, 1000);
  const rows = await ctx.store.listSandboxes(req.all_workspaces ? null : normalizeWorkspace(req.workspace), limit, req.offset);
  return { sandboxes: rows.map((s) => s.message) };
}

/** Removes the sandbox's SSH tokens (cleanup_stopped_sandbox_sessions, compute/mod.rs@v0.0.111:3052-3060). */
async function dropSessions(ctx: Gen2Context, s: Gen2Sandbox): Promise<void> {
  ctx.registry.disconnect(s.id);
  await ctx.store.deleteSshSessionsForSandbox(s.id);
}

/**
 * StopSandbox (compute/mod.rs@v0.0.111:999-1150): Ready → Stopping → (driver stop) → Stopped, then the
 * LOCAL supervisor session is disconnected, which is why StopSandbox is owner-bound (reference §2.9).
 */
async function stopSandbox(ctx: Gen2Context, req: { name: string; workspace: string }): Promise<unknown> {
  const current = await sandboxByName(ctx, req.workspace, req.name);
  if (current.phase === Phase.STOPPED) {
    await dropSessions(ctx, current);
    return { sandbox: current.message };
  }
  if (current.phase !== Phase.READY && current.phase !== Phase.STOPPING) {
    throw new GatewayError(Status.FAILED_PRECONDITION, `sandbox must be Ready to stop (current phase: ${PHASE_NAMES[current.phase] ?? 'Unknown'})`);
  }
  const stopping =
    current.phase === Phase.STOPPING ? current : await writeLifecyclePhase(ctx, current, Phase.STOPPING, 'Stopping', 'Sandbox stop requested');
  const stopped = await writeLifecyclePhase(ctx, stopping, Phase.STOPPED, 'Stopped', 'Sandbox compute is stopped');
  await dropSessions(ctx, stopped);
  emitDriverEvent(ctx, stopped.id, 'stopped');
  return { sandbox: stopped.message };
}

/**
 * StartSandbox (compute/mod.rs@v0.0.111:1154-1280): Stopped → Starting; Ready comes from the next
 * supervisor connect. Emulator stand-in for the driver restarting compute: the local session (the
 * supervisor emulator kept reconnecting while "stopped") is dropped so it connects afresh.
 */
async function startSandbox(ctx: Gen2Context, req: { name: string; workspace: string }): Promise<unknown> {
  const current = await sandboxByName(ctx, req.workspace, req.name);
  if (current.phase === Phase.READY) return { sandbox: current.message };
  if (current.phase !== Phase.STOPPED && current.phase !== Phase.STARTING) {
    throw new GatewayError(Status.FAILED_PRECONDITION, `sandbox must be Stopped to start (current phase: ${PHASE_NAMES[current.phase] ?? 'Unknown'})`);
  }
  const starting =
    current.phase === Phase.STARTING ? current : await writeLifecyclePhase(ctx, current, Phase.STARTING, 'Starting', 'Sandbox start requested');
  ctx.registry.disconnect(starting.id);
  emitDriverEvent(ctx, starting.id, 'started');
  const latest = await ctx.store.sandboxById(starting.id);
  return { sandbox: (latest ?? starting).message };
}

/**
 * DeleteSandbox (compute/mod.rs@v0.0.111:1440-1530): Deleting, then the row and its SSH tokens and
 * service endpoints go; only this process's watchers hear of it. The emulator drops the local
 * session as the driver tearing down compute would.
 */
async function deleteSandbox(ctx: Gen2Context, req: { name: string; workspace: string }): Promise<unknown> {
  const current = await sandboxByName(ctx, req.workspace, req.name);
  if (current.phase !== Phase.DELETING) {
    await writeLifecyclePhase(ctx, current, Phase.DELETING, 'Deleting', 'Sandbox delete requested');
  }
  await dropSessions(ctx, current);
  await ctx.store.deleteServiceEndpointsForSandbox(current.id);
  await ctx.store.deleteSandboxRow(current.id);
  ctx.watch.notify(current.id);
  return { deleted: true };
}

// --- ssh sessions -----------------------------------------------------------------------

async function createSshSession(ctx: Gen2Context, req: { sandbox_id: string }): Promise<unknown> {
  if (!req.sandbox_id) throw invalid('sandbox_id is required');
  const s = await sandboxById(ctx, req.sandbox_id);
  requireReady(s);
  const row = await ctx.store.createSshSession(s.id, SSH_SESSION_TTL_SECS, s.workspace);
  const adv = ctx.advertised();
  // No connect_path at 2026-08; host/port are the gateway's bind address (reference §2.3 HEAD).
  return {
    sandbox_id: row.sandboxId,
    token: row.token,
    gateway_host: adv.host,
    gateway_port: adv.port,
    gateway_scheme: adv.scheme,
    expires_at_ms: row.expiresAtMs,
  };
}

// --- service endpoints ------------------------------------------------------------------

export function serviceUrl(ctx: Gen2Context, e: ServiceEndpointRow): string {
  const base = ctx.serviceBaseDomains[0] ?? '';
  const host = e.serviceName ? `${e.workspace}--${e.sandboxName}--${e.serviceName}.${base}` : `${e.workspace}--${e.sandboxName}.${base}`;
  const adv = ctx.advertised();
  const includePort = !((adv.scheme === 'https' && adv.port === 443) || (adv.scheme === 'http' && adv.port === 80));
  return `${adv.scheme}://${host}${includePort ? `:${adv.port}` : ''}/`;
}

function endpointResponse(ctx: Gen2Context, e: ServiceEndpointRow): unknown {
  return { endpoint: e.message, url: e.domain ? serviceUrl(ctx, e) : '' };
}

async function exposeService(
  ctx: Gen2Context,
  req: { sandbox: string; service: string; target_port: number; domain: boolean; workspace: string },
): Promise<unknown> {
  if (!req.sandbox) throw invalid('sandbox is required');
  if (req.service.includes('--')) throw invalid('service name must not contain consecutive hyphens');
  if (req.target_port === 0 || req.target_port > 65535) throw invalid('target_port must be between 1 and 65535');
  const s = await sandboxByName(ctx, req.workspace, req.sandbox);
  const e = await ctx.store.upsertServiceEndpoint({
    workspace: s.workspace,
    sandboxId: s.id,
    sandboxName: s.name,
    service: req.service,
    targetPort: req.target_port,
    domain: req.domain,
  });
  return endpointResponse(ctx, e);
}

// --- policy -----------------------------------------------------------------------------

/** The one policy revision the emulator serves per sandbox (upstream: the policy history table). */
export const EMULATED_POLICY_VERSION = 1;
const EMULATED_POLICY_HASH = 'emulator-policy-v1';
const POLICY_STATUS_LOADED = 2;
const POLICY_STATUS_FAILED = 3;

/**
 * GetSandboxConfig (grpc/policy.rs@v0.0.111:1790-1900), reduced to what the supervisor's start-up
 * needs: the sandbox scope check, NOT_FOUND for an unknown id, the policy version and workspace.
 */
async function getSandboxConfig(ctx: Gen2Context, req: { sandbox_id: string }, principal: Principal | null): Promise<unknown> {
  ensureSandboxScope(principal, req.sandbox_id);
  const s = await sandboxById(ctx, req.sandbox_id);
  return { version: EMULATED_POLICY_VERSION, policy_hash: EMULATED_POLICY_HASH, config_revision: EMULATED_POLICY_VERSION, workspace: s.workspace };
}

/**
 * ReportPolicyStatus (grpc/policy.rs@v0.0.111:3426-3504): a LOADED report rewrites the sandbox row
 * (current_policy_version) with a read-then-CAS under this replica's sync_lock only. Sent by the
 * supervisor on its own connection while its ConnectSupervisor is on the way, it can land on another
 * replica than the session and make the session's Ready CAS lose (docs/interop.md U1).
 */
async function reportPolicyStatus(
  ctx: Gen2Context,
  req: { sandbox_id: string; version: number; status: number; load_error: string },
  principal: Principal | null,
): Promise<unknown> {
  ensureSandboxScope(principal, req.sandbox_id);
  if (!req.sandbox_id) throw invalid('sandbox_id is required');
  if (req.version === 0) throw invalid('version is required');
  if (req.status !== POLICY_STATUS_LOADED && req.status !== POLICY_STATUS_FAILED) throw invalid('status must be LOADED or FAILED');
  // update_policy_status finds no revision for an unknown sandbox or version.
  if (req.version !== EMULATED_POLICY_VERSION || !(await ctx.store.sandboxById(req.sandbox_id))) {
    throw new GatewayError(Status.NOT_FOUND, 'policy revision not found');
  }
  if (req.status === POLICY_STATUS_LOADED) {
    await ctx.syncLock.run(async () => {
      // update_message_cas with expected version 0: CAS against the version read just now.
      const current = await ctx.store.sandboxById(req.sandbox_id);
      if (!current) throw new GatewayError(Status.INTERNAL, `update current_policy_version failed: database error: object ${req.sandbox_id} not found`);
      const res = await ctx.store.updateSandboxCas(current.id, current.resourceVersion, (m) => {
        (m.status ??= {}).current_policy_version = req.version;
      });
      if (res === 'conflict') {
        const now = await ctx.store.sandboxById(req.sandbox_id);
        throw new GatewayError(
          Status.ABORTED,
          `update current_policy_version failed due to concurrent modification (current resource_version: ${now?.resourceVersion ?? 'unknown'})`,
        );
      }
    });
    ctx.watch.notify(req.sandbox_id);
  }
  ctx.logger.info({ sandboxId: req.sandbox_id, version: req.version, loaded: req.status === POLICY_STATUS_LOADED }, 'ReportPolicyStatus: sandbox reported policy load result');
  return {};
}

// --- logs -------------------------------------------------------------------------------

/** source_matches / level_matches (grpc/validation.rs@v0.0.111:946-971). */
export function sourceMatches(source: string, filters: string[]): boolean {
  const effective = source || 'gateway';
  return filters.some((f) => f === effective);
}

export function levelMatches(level: string, minLevel: string): boolean {
  if (!minLevel) return true;
  const rank = (s: string): number => ({ ERROR: 0, WARN: 1, INFO: 2, OCSF: 2, DEBUG: 3, TRACE: 4 })[s.toUpperCase()] ?? 5;
  return rank(level) <= rank(minLevel);
}

function logFilter(sinceMs: number, sources: string[], minLevel: string): (l: SandboxLogLine) => boolean {
  return (l) =>
    !(sinceMs > 0 && Number(l.timestamp_ms) < sinceMs) && (sources.length === 0 || sourceMatches(l.source, sources)) && levelMatches(l.level, minLevel);
}

async function getSandboxLogs(
  ctx: Gen2Context,
  req: { sandbox_id: string; lines: number; since_ms: number; sources: string[]; min_level: string },
): Promise<unknown> {
  if (!req.sandbox_id) throw invalid('sandbox_id is required');
  await sandboxById(ctx, req.sandbox_id);
  const { lines } = ctx.logs.tail(req.sandbox_id, req.lines || DEFAULT_LOG_LINES);
  return { logs: lines.filter(logFilter(Number(req.since_ms), req.sources, req.min_level)), buffer_total: lines.length };
}

/**
 * PushSandboxLogs (grpc/policy.rs@v0.0.111:3552-3610): batches with an empty id are skipped; the first
 * id is validated (scope, row exists → NOT_FOUND) and may not change (PERMISSION_DENIED); at most 100
 * lines per batch; source forced to "sandbox". Published on this process's log bus only.
 */
async function pushSandboxLogs(
  ctx: Gen2Context,
  call: ServerReadableStream<{ sandbox_id: string; logs: SandboxLogLine[] }, unknown>,
  principal: Principal | null,
): Promise<unknown> {
  let validated: string | null = null;
  for await (const raw of call) {
    const batch = raw as { sandbox_id: string; logs: SandboxLogLine[] };
    if (!batch.sandbox_id) continue;
    if (validated !== null) {
      if (batch.sandbox_id !== validated) throw new GatewayError(Status.PERMISSION_DENIED, 'log stream sandbox_id changed after validation');
    } else {
      ensureSandboxScope(principal, batch.sandbox_id);
      await sandboxById(ctx, batch.sandbox_id);
      validated = batch.sandbox_id;
    }
    for (const line of batch.logs.slice(0, MAX_LOG_LINES_PER_BATCH)) {
      ctx.logs.publish({ ...line, sandbox_id: batch.sandbox_id, source: 'sandbox' });
    }
  }
  return {};
}

// --- watch ------------------------------------------------------------------------------

interface WatchRequest {
  id: string;
  follow_status: boolean;
  follow_logs: boolean;
  follow_events: boolean;
  log_tail_lines: number;
  stop_on_terminal: boolean;
  log_since_ms: number;
  log_sources: string[];
  log_min_level: string;
}

/**
 * WatchSandbox (grpc/sandbox.rs@v0.0.111:932-1184): NOT_FOUND for an unknown id; subscribe, then always
 * a snapshot; stop_on_terminal ends only on Ready; a log tail of 0 means 200; the stream ends when
 * the row is gone; with no follow flag it never ends. Status pushes come only from this process's
 * writes (reference §2.8); the emulator has no platform events, so follow_events only subscribes.
 */
async function watchSandbox(ctx: Gen2Context, call: ServerWritableStream<WatchRequest, unknown>): Promise<void> {
  const req = call.request;
  await sandboxById(ctx, req.id);
  const unsubs: Array<() => void> = [];
  let over = false;
  const stop = (): void => {
    over = true;
    for (const u of unsubs.splice(0)) u();
  };
  const end = (): void => {
    if (over) return;
    stop();
    call.end();
  };
  call.on('cancelled', stop);
  call.on('close', stop);
  const send = (ev: unknown): void => {
    if (!over && !call.cancelled) call.write(ev);
  };
  // Status re-reads are serialised so snapshots go out in write order.
  let chain = Promise.resolve();
  const onStatus = (): void => {
    chain = chain.then(async () => {
      if (over) return;
      const s = await ctx.store.sandboxById(req.id).catch(() => undefined);
      if (s === undefined) return;
      if (s === null) return end();
      send({ sandbox: s.message });
      if (req.stop_on_terminal && s.phase === Phase.READY) end();
    });
  };
  const filter = logFilter(Number(req.log_since_ms), req.log_sources, req.log_min_level);
  if (req.follow_status) unsubs.push(ctx.watch.subscribe(req.id, onStatus));
  const pendingLogs: SandboxLogLine[] = [];
  let snapshotSent = false;
  if (req.follow_logs) {
    unsubs.push(
      ctx.logs.subscribe(req.id, (line) => {
        if (!filter(line)) return;
        if (snapshotSent) send({ log: line });
        else pendingLogs.push(line);
      }),
    );
  }
  const snapshot = await ctx.store.sandboxById(req.id);
  if (!snapshot) {
    stop();
    throw notFound();
  }
  send({ sandbox: snapshot.message });
  if (req.stop_on_terminal && snapshot.phase === Phase.READY) return end();
  if (req.follow_logs) {
    const tail = ctx.logs.tail(req.id, req.log_tail_lines || DEFAULT_WATCH_LOG_TAIL).lines;
    for (const line of tail) if (filter(line)) send({ log: line });
    for (const line of pendingLogs.splice(0)) if (!tail.includes(line)) send({ log: line });
  }
  snapshotSent = true;
}

// --- supervisor session -----------------------------------------------------------------

/**
 * ConnectSupervisor (supervisor_session.rs@v0.0.111:679-800): Hello first; the principal must be this
 * sandbox; the row must exist; register (supersede), SessionAccepted, replay pending relays after a
 * supersede, then the CAS Ready write with the supervisor's instance id.
 */
function connectSupervisor(ctx: Gen2Context, call: ServerDuplexStream<SupervisorMessage, GatewayMessage>, principal: Principal | null): void {
  let session: LiveSession | undefined;
  let heartbeat: NodeJS.Timeout | undefined;
  let finished = false;
  let gotFirst = false;
  let endedBeforeRegistered = false;
  const log = ctx.logger.child({ rpc: 'ConnectSupervisor' });
  const fail = (err: unknown): void => {
    finished = true;
    const e = err instanceof GatewayError ? err : new GatewayError(Status.INTERNAL, String(err));
    call.emit('error', { code: e.code, details: e.message, message: e.message });
  };
  const finish = (reason: string): void => {
    if (finished) return;
    finished = true;
    if (heartbeat) clearInterval(heartbeat);
    if (session) {
      const s = session;
      log.info({ sandboxId: s.sandboxId, sessionId: s.sessionId, reason }, 'supervisor session ended');
      // A shutting-down gateway drops its session tasks: no disconnect write (see registry.closing).
      if (ctx.registry.removeIfCurrent(s.sandboxId, s.sessionId) && !ctx.registry.closing) void supervisorSessionChanged(ctx, s.sandboxId, false);
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
      if (first.payload !== 'hello' || !first.hello) return fail(invalid('expected SupervisorHello'));
      const { sandbox_id: sandboxId, instance_id: instanceId } = first.hello;
      if (!sandboxId) return fail(invalid('sandbox_id is required'));
      try {
        ensureSandboxPrincipalScope(principal, sandboxId);
        await sandboxById(ctx, sandboxId);
      } catch (err) {
        return fail(err);
      }
      if (call.cancelled || finished) return;
      const sessionId = randomUUID();
      // Everything for the supervisor waits behind SessionAccepted in one queue, as upstream's mpsc
      // channel does; the response stream (headers, SessionAccepted, replayed RelayOpens) only goes
      // out once the Ready write is done (supervisor_session.rs@v0.0.111:716-778 returns the stream
      // after supervisor_session_connected), so a supervisor that sees SessionAccepted finds its
      // sandbox Ready unless that write was lost.
      const queued: GatewayMessage[] = [{ session_accepted: { session_id: sessionId, heartbeat_interval_secs: HEARTBEAT_INTERVAL_SECS } }];
      let flowing = false;
      session = {
        sandboxId,
        sessionId,
        send: (msg) => {
          if (finished) return;
          if (flowing) call.write(msg);
          else queued.push(msg);
        },
        shutdown: (reason) => finish(reason),
      };
      const superseded = ctx.registry.register(session);
      if (superseded) ctx.registry.replayPendingRelays(session);
      log.info({ sandboxId, sessionId, instanceId, superseded: !!superseded }, 'supervisor session: accepted');
      if (endedBeforeRegistered) return finish('stream ended');
      await supervisorSessionChanged(ctx, sandboxId, true, instanceId);
      if (finished) return;
      flowing = true;
      for (const msg of queued.splice(0)) call.write(msg);
      heartbeat = setInterval(() => session?.send({ heartbeat: {} }), ctx.heartbeatIntervalSecs * 1000);
      heartbeat.unref();
      call.on('data', (msg: SupervisorMessage) => {
        // A failed RelayOpenResult fails the waiter at once (supervisor_session.rs@v0.0.111:917-937);
        // heartbeats are ignored (no heartbeat timeout, reference §2.1).
        if (msg.payload === 'relay_open_result' && msg.relay_open_result && !msg.relay_open_result.success) {
          ctx.registry.failRelay(msg.relay_open_result.channel_id, msg.relay_open_result.error);
        }
      });
    })();
  });
  call.on('end', () => {
    if (!gotFirst) fail(invalid('stream closed before hello'));
    else if (session) finish('stream ended');
    else endedBeforeRegistered = true;
  });
  call.on('cancelled', () => finish('cancelled'));
  call.on('close', () => finish('closed'));
}

/** RelayStream (supervisor_session.rs@v0.0.111:490-540, 357-402): init first, claim scoped to the principal. */
function relayStream(call: ServerDuplexStream<RelayFrame, RelayFrame>, principal: Principal | null, ctx: Gen2Context): void {
  call.once('data', (first: RelayFrame) => {
    if (first.payload !== 'init' || !first.init?.channel_id) {
      call.emit('error', { code: Status.INVALID_ARGUMENT, details: 'first RelayFrame must be init with non-empty channel_id', message: '' });
      return;
    }
    call.pause();
    try {
      const pending = ctx.registry.claimRelay(first.init.channel_id, Date.now(), {
        authorize: (sandboxId) => ensureSandboxPrincipalScope(principal, sandboxId),
        expiredMessage: 'relay channel timed out',
      });
      pending.resolve(relayDuplex(call));
    } catch (err) {
      const e = err instanceof GatewayError ? err : new GatewayError(Status.INTERNAL, String(err));
      call.emit('error', { code: e.code, details: e.message, message: e.message });
    }
  });
}

export function gen2ServiceImplementation(ctx: Gen2Context): UntypedServiceImplementation {
  type Named = { name: string; workspace: string };
  return {
    Health: unaryRpc(ctx, 'Health', async () => ({ status: 1, version: ctx.version })),
    CreateSandbox: unaryRpc(ctx, 'CreateSandbox', (req: CreateSandboxRequest) => createSandbox(ctx, req)),
    GetSandbox: unaryRpc(ctx, 'GetSandbox', async (req: Named) => ({ sandbox: (await sandboxByName(ctx, req.workspace, req.name)).message })),
    ListSandboxes: unaryRpc(ctx, 'ListSandboxes', (req: { limit: number; offset: number; workspace: string; all_workspaces: boolean }) =>
      listSandboxes(ctx, req),
    ),
    DeleteSandbox: unaryRpc(ctx, 'DeleteSandbox', (req: Named) => deleteSandbox(ctx, req)),
    StopSandbox: unaryRpc(ctx, 'StopSandbox', (req: Named) => stopSandbox(ctx, req)),
    StartSandbox: unaryRpc(ctx, 'StartSandbox', (req: Named) => startSandbox(ctx, req)),
    CreateSshSession: unaryRpc(ctx, 'CreateSshSession', (req: { sandbox_id: string }) => createSshSession(ctx, req)),
    ExposeService: unaryRpc(ctx, 'ExposeService', (req: { sandbox: string; service: string; target_port: number; domain: boolean; workspace: string }) =>
      exposeService(ctx, req),
    ),
    GetService: unaryRpc(ctx, 'GetService', async (req: { sandbox: string; service: string; workspace: string }) => {
      const e = await ctx.store.serviceEndpoint(normalizeWorkspace(req.workspace), endpointKey(req.sandbox, req.service));
      if (!e) throw notFound('service endpoint not found');
      return endpointResponse(ctx, e);
    }),
    ListServices: unaryRpc(ctx, 'ListServices', async (req: { sandbox: string; workspace: string; all_workspaces: boolean }) => {
      const rows = await ctx.store.listServiceEndpoints(req.all_workspaces ? null : normalizeWorkspace(req.workspace), req.sandbox || undefined);
      return { services: rows.map((e) => endpointResponse(ctx, e)) };
    }),
    DeleteService: unaryRpc(ctx, 'DeleteService', async (req: { sandbox: string; service: string; workspace: string }) => ({
      deleted: await ctx.store.deleteServiceEndpoint(normalizeWorkspace(req.workspace), endpointKey(req.sandbox, req.service)),
    })),
    GetSandboxLogs: unaryRpc(ctx, 'GetSandboxLogs', (req: { sandbox_id: string; lines: number; since_ms: number; sources: string[]; min_level: string }) =>
      getSandboxLogs(ctx, req),
    ),
    PushSandboxLogs: clientStreamRpc(ctx, 'PushSandboxLogs', (call: ServerReadableStream<{ sandbox_id: string; logs: SandboxLogLine[] }, unknown>, p) =>
      pushSandboxLogs(ctx, call, p),
    ),
    WatchSandbox: streamRpc(ctx, 'WatchSandbox', (call: ServerWritableStream<WatchRequest, unknown>) => watchSandbox(ctx, call)),
    ConnectSupervisor: streamRpc(ctx, 'ConnectSupervisor', (call: ServerDuplexStream<SupervisorMessage, GatewayMessage>, p) =>
      connectSupervisor(ctx, call, p),
    ),
    RelayStream: streamRpc(ctx, 'RelayStream', (call: ServerDuplexStream<RelayFrame, RelayFrame>, p) => relayStream(call, p, ctx)),
    ExecSandbox: streamRpc(ctx, 'ExecSandbox', (call: Parameters<typeof execSandbox>[1]) => execSandbox(ctx, call)),
    ExecSandboxInteractive: streamRpc(ctx, 'ExecSandboxInteractive', (call: Parameters<typeof execSandboxInteractive>[1]) =>
      execSandboxInteractive(ctx, call),
    ),
    ForwardTcp: streamRpc(ctx, 'ForwardTcp', (call: Parameters<typeof forwardTcp>[1]) => forwardTcp(ctx, call)),
    GetSandboxConfig: unaryRpc(ctx, 'GetSandboxConfig', (req: { sandbox_id: string }, p) => getSandboxConfig(ctx, req, p)),
    ReportPolicyStatus: unaryRpc(ctx, 'ReportPolicyStatus', (req: { sandbox_id: string; version: number; status: number; load_error: string }, p) =>
      reportPolicyStatus(ctx, req, p),
    ),
  };
}

