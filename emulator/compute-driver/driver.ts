// A compute driver of our own for upstream's real gateway: serves `openshell.compute.v1.ComputeDriver`
// on a Unix socket (reference §9) and runs each sandbox as a real supervisor process on this host.
//
// One driver serves every gateway replica. With Postgres only the reconciler-lease holder lists and
// watches the driver (reference §10), and any replica may create, stop or delete: a per-replica
// driver would hide replica A's sandboxes from holder B, whose reconciler prunes rows its driver
// does not list (300 s orphan grace), and B could not delete what A created. One shared backend is
// also what every replica of a Kubernetes deployment sees.
import { rmSync, unlinkSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import * as grpc from '@grpc/grpc-js';
import {
  computeDriverClient,
  type DriverCondition,
  type DriverSandbox,
  type DriverSandboxSpec,
  type DriverSandboxStatus,
  type SandboxRef,
  type WatchSandboxesEvent,
} from './proto.ts';
import { killSandbox, launchSupervisor, sandboxPaths, signalSupervisor, waitSandboxGone, type SandboxPaths } from './supervisor-process.ts';

export const DRIVER_NAME = 'ohs-process';
export const DRIVER_VERSION = '0.1.0';

/** `held`: created, its supervisor not started yet (`holdStart`; started by `release`). */
export type SandboxState = 'held' | 'running' | 'stopping' | 'stopped' | 'exited' | 'deleting';

export interface ComputeDriverOptions {
  /** Unix socket to serve on (a stale file there is replaced). */
  socketPath: string;
  /** Upstream's `openshell-sandbox` binary. */
  supervisorBin: string;
  /** OPENSHELL_ENDPOINT for every supervisor: the Service in front of the replicas, e.g. http://127.0.0.1:PORT. */
  endpoint: string;
  /** Each sandbox gets `<stateDir>/<sandbox id>/` (workdir, home, SSH socket, token file, log). */
  stateDir: string;
  /** Supervisor log level when the create request carries none (default `info`). */
  supervisorLogLevel?: string;
  runAs?: { uid: number; gid: number };
  extraEnv?: Record<string, string>;
  /** SIGTERM → SIGKILL grace on stop and delete (default 10 s). */
  stopTimeoutMs?: number;
  /** Keep a deleted sandbox's scratch directory (logs) instead of removing it. */
  keepDeleted?: boolean;
  /** One call per RPC and per process transition, for logs and tests. */
  onEvent?: (event: DriverEvent) => void;
  /**
   * Test instrumentation: a created sandbox for which this returns true is accepted but its
   * supervisor is not started until `release(id)` (a pod that is still being scheduled). The
   * gateway sees it as Provisioning; a client can watch it before any supervisor connects.
   */
  holdStart?: (sandbox: { id: string; name: string }) => boolean;
}

export type DriverEvent =
  | { kind: 'rpc'; method: string; sandboxId?: string }
  | { kind: 'started'; sandboxId: string; name: string; pid: number; instance: number }
  | { kind: 'exited'; sandboxId: string; name: string; code: number | null; signal: string | null; state: SandboxState }
  | { kind: 'deleted'; sandboxId: string; name: string }
  | { kind: 'watch'; open: boolean; watchers: number };

export interface SandboxView {
  id: string;
  name: string;
  workspace: string;
  state: SandboxState;
  pid: number | undefined;
  /** Increments on every (re)start of the supervisor. */
  instance: number;
  exitCode: number | null;
  paths: SandboxPaths;
}

export interface ComputeDriver {
  readonly socketPath: string;
  sandboxes(): SandboxView[];
  sandbox(id: string): SandboxView | undefined;
  /** RPC counts by method name. */
  readonly calls: Readonly<Record<string, number>>;
  watcherCount(): number;
  /**
   * Starts the supervisor of a held sandbox (see `holdStart`); `endpoint` replaces the driver's
   * OPENSHELL_ENDPOINT for this sandbox (e.g. one replica instead of the Service).
   */
  release(id: string, opts?: { endpoint?: string }): Promise<void>;
  /** Kills every supervisor (process groups), ends watch streams, closes the socket. */
  close(): Promise<void>;
}

interface SandboxRecord {
  id: string;
  name: string;
  namespace: string;
  workspace: string;
  spec: DriverSandboxSpec;
  state: SandboxState;
  child: ChildProcess | undefined;
  exited: Promise<void>;
  instance: number;
  exitCode: number | null;
  exitSignal: string | null;
  transitionAt: string;
  paths: SandboxPaths;
  /** OPENSHELL_ENDPOINT for this sandbox when not the driver's. */
  endpoint?: string;
}

type Callback<T> = grpc.sendUnaryData<T>;
type Unary<Req, Res> = (call: grpc.ServerUnaryCall<Req, Res>, cb: Callback<Res>) => void;

function grpcError(code: grpc.status, details: string): grpc.ServiceError {
  return Object.assign(new Error(details), { code, details, metadata: new grpc.Metadata() });
}

function condition(type: string, status: string, reason: string, message: string, at: string): DriverCondition {
  return { type, status, reason, message, last_transition_time: at };
}

/**
 * What the gateway derives the phase from (upstream compute/mod.rs `derive_phase`): `deleting` →
 * Deleting; `Suspended=True` → Stopped; `Ready=True` → Ready; `Ready=False` with a reason outside
 * its transient list → Error. The gateway then keeps Ready only where the supervisor session is.
 */
export function driverStatus(r: Pick<SandboxRecord, 'name' | 'state' | 'child' | 'instance' | 'exitCode' | 'exitSignal' | 'transitionAt'>): DriverSandboxStatus {
  const pid = r.child?.pid;
  const at = r.transitionAt;
  let conditions: DriverCondition[];
  switch (r.state) {
    case 'held':
      // A transient reason (upstream derive_phase): the gateway keeps the sandbox Provisioning.
      conditions = [condition('Ready', 'False', 'DependenciesNotReady', 'supervisor not started yet (held by the driver)', at)];
      break;
    case 'running':
      conditions = [condition('Ready', 'True', 'ProcessRunning', `supervisor running (pid ${pid ?? '?'})`, at)];
      break;
    case 'stopping':
    case 'stopped':
      conditions = [condition('Suspended', 'True', 'ProcessStopped', 'supervisor stopped; scratch directory kept', at)];
      break;
    case 'exited': {
      const how = r.exitSignal ? `signal ${r.exitSignal}` : `code ${String(r.exitCode)}`;
      conditions = [condition('Ready', 'False', 'ProcessExited', `supervisor exited (${how})`, at)];
      break;
    }
    case 'deleting':
      conditions = [condition('Ready', 'False', 'Deleting', 'sandbox is being deleted', at)];
      break;
  }
  return {
    sandbox_name: r.name,
    instance_id: pid === undefined ? '' : `process-${pid}-${r.instance}`,
    agent_fd: '',
    sandbox_fd: '',
    conditions,
    deleting: r.state === 'deleting',
  };
}

export async function startComputeDriver(opts: ComputeDriverOptions): Promise<ComputeDriver> {
  const records = new Map<string, SandboxRecord>();
  const watchers = new Set<grpc.ServerWritableStream<unknown, WatchSandboxesEvent>>();
  const workspaces = new Set<string>(['default']);
  const calls: Record<string, number> = {};
  const stopTimeoutMs = opts.stopTimeoutMs ?? 10_000;
  const emit = (e: DriverEvent): void => opts.onEvent?.(e);
  let closing = false;

  const count = (method: string, sandboxId?: string): void => {
    calls[method] = (calls[method] ?? 0) + 1;
    emit({ kind: 'rpc', method, ...(sandboxId ? { sandboxId } : {}) });
  };

  // Specs are echoed back without the sandbox JWT: ListSandboxes answers must not spread it.
  const toWire = (r: SandboxRecord): DriverSandbox => ({
    id: r.id,
    name: r.name,
    namespace: r.namespace,
    workspace: r.workspace,
    spec: { ...r.spec, sandbox_token: '' },
    status: driverStatus(r),
  });

  const broadcast = (event: WatchSandboxesEvent): void => {
    for (const w of watchers) {
      if (!w.writable || w.cancelled) continue;
      w.write(event);
    }
  };

  const publish = (r: SandboxRecord, reason: string, message: string, type: 'Normal' | 'Warning'): void => {
    broadcast({ sandbox: { sandbox: toWire(r) } });
    broadcast({
      platform_event: {
        sandbox_id: r.id,
        event: { timestamp_ms: Date.now(), source: DRIVER_NAME, type, reason, message, metadata: { instance: String(r.instance) } },
      },
    });
  };

  const find = (ref: SandboxRef): SandboxRecord | undefined => {
    if (ref.sandbox_id) return records.get(ref.sandbox_id);
    if (ref.sandbox_name) return [...records.values()].find((r) => r.name === ref.sandbox_name);
    return undefined;
  };

  /** Starts the supervisor; resolves once it is running, rejects when it could not be spawned. */
  const start = (r: SandboxRecord): Promise<void> => {
    const spec = r.spec;
    const env = { ...(spec.template?.environment ?? {}), ...spec.environment };
    const { child } = launchSupervisor(
      {
        id: r.id,
        name: r.name,
        token: spec.sandbox_token,
        command: spec.command,
        tty: spec.tty,
        logLevel: spec.log_level || opts.supervisorLogLevel || 'info',
        userEnvironment: env,
      },
      {
        bin: opts.supervisorBin,
        endpoint: r.endpoint ?? opts.endpoint,
        dir: r.paths.dir,
        ...(opts.runAs ? { runAs: opts.runAs } : {}),
        ...(opts.extraEnv ? { extraEnv: opts.extraEnv } : {}),
      },
    );
    r.child = child;
    r.instance += 1;
    r.exitCode = null;
    r.exitSignal = null;
    r.exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.once('exit', (code, signal) => {
      if (r.child !== child) return;
      r.exitCode = code;
      r.exitSignal = signal;
      r.transitionAt = new Date().toISOString();
      if (r.state === 'stopping') r.state = 'stopped';
      else if (r.state === 'running') r.state = 'exited';
      emit({ kind: 'exited', sandboxId: r.id, name: r.name, code, signal, state: r.state });
      if (r.state === 'deleting' || closing) return;
      const how = signal ? `signal ${signal}` : `code ${String(code)}`;
      publish(r, r.state === 'stopped' ? 'Stopped' : 'Exited', `supervisor exited (${how})`, r.state === 'stopped' ? 'Normal' : 'Warning');
    });
    return new Promise<void>((resolve, reject) => {
      child.once('spawn', () => {
        r.state = 'running';
        r.transitionAt = new Date().toISOString();
        emit({ kind: 'started', sandboxId: r.id, name: r.name, pid: child.pid ?? -1, instance: r.instance });
        publish(r, 'Started', `supervisor started (pid ${child.pid ?? '?'})`, 'Normal');
        resolve();
      });
      child.once('error', (err) => {
        r.state = 'exited';
        r.exitCode = null;
        r.transitionAt = new Date().toISOString();
        reject(err);
      });
    });
  };

  /**
   * SIGTERM to the supervisor, SIGKILL to everything of the sandbox after the grace; resolves when
   * the supervisor is gone, and leaves nothing of the sandbox behind.
   */
  const terminate = async (r: SandboxRecord): Promise<void> => {
    const child = r.child;
    if (!child) return;
    signalSupervisor(child, 'SIGTERM');
    const timer = setTimeout(() => killSandbox(child), stopTimeoutMs);
    timer.unref();
    await r.exited;
    clearTimeout(timer);
    // The workload may outlive its supervisor.
    killSandbox(child);
    await waitSandboxGone(child);
  };

  const handlers: Record<string, unknown> = {
    GetCapabilities: ((_call, cb) => {
      count('GetCapabilities');
      // gateway_manages_lifecycle=false, as the Kubernetes driver: sandboxes outlive a gateway
      // restart, and one replica's graceful shutdown must not stop every sandbox (reference §10).
      cb(null, { driver_name: DRIVER_NAME, driver_version: DRIVER_VERSION, default_image: 'host-process', gateway_manages_lifecycle: false });
    }) as Unary<unknown, unknown>,

    GetGatewayListenerRequirements: ((_call, cb) => {
      count('GetGatewayListenerRequirements');
      cb(null, { requirements: [] });
    }) as Unary<unknown, unknown>,

    // The gateway treats any error here, even UNIMPLEMENTED, as a failed create (NOTES §4.2).
    ValidateSandboxCreate: ((call, cb) => {
      const sb = call.request.sandbox;
      count('ValidateSandboxCreate', sb?.id);
      const gpus = sb?.spec?.resource_requirements?.gpu?.count ?? 0;
      if (gpus > 0) return cb(grpcError(grpc.status.FAILED_PRECONDITION, `${DRIVER_NAME}: GPUs are not available to host processes`));
      cb(null, {});
    }) as Unary<{ sandbox: DriverSandbox | null }, unknown>,

    CreateSandbox: ((call, cb) => {
      const sb = call.request.sandbox;
      count('CreateSandbox', sb?.id);
      if (!sb?.id || !sb.spec) return cb(grpcError(grpc.status.INVALID_ARGUMENT, 'sandbox id and spec are required'));
      if (records.has(sb.id)) return cb(grpcError(grpc.status.ALREADY_EXISTS, `sandbox ${sb.id} already exists`));
      if (!sb.spec.sandbox_token) {
        return cb(grpcError(grpc.status.FAILED_PRECONDITION, `${DRIVER_NAME}: no sandbox token in the spec; configure the gateway's sandbox JWT signer`));
      }
      const r: SandboxRecord = {
        id: sb.id,
        name: sb.name,
        namespace: sb.namespace,
        workspace: sb.workspace || 'default',
        spec: sb.spec,
        state: opts.holdStart?.({ id: sb.id, name: sb.name }) ? 'held' : 'running',
        child: undefined,
        exited: Promise.resolve(),
        instance: 0,
        exitCode: null,
        exitSignal: null,
        transitionAt: new Date().toISOString(),
        paths: sandboxPaths(join(opts.stateDir, sb.id)),
      };
      records.set(r.id, r);
      if (r.state === 'held') {
        publish(r, 'Held', 'supervisor start held', 'Normal');
        return cb(null, {});
      }
      start(r).then(
        () => cb(null, {}),
        (err: unknown) => {
          records.delete(r.id);
          cb(grpcError(grpc.status.FAILED_PRECONDITION, `${DRIVER_NAME}: cannot start ${opts.supervisorBin}: ${String(err)}`));
        },
      );
    }) as Unary<{ sandbox: DriverSandbox | null }, unknown>,

    GetSandbox: ((call, cb) => {
      count('GetSandbox', call.request.sandbox_id);
      const r = find(call.request);
      if (!r) return cb(grpcError(grpc.status.NOT_FOUND, 'sandbox not found'));
      cb(null, { sandbox: toWire(r) });
    }) as Unary<SandboxRef, unknown>,

    ListSandboxes: ((_call, cb) => {
      count('ListSandboxes');
      cb(null, { sandboxes: [...records.values()].map(toWire) });
    }) as Unary<unknown, unknown>,

    StopSandbox: ((call, cb) => {
      count('StopSandbox', call.request.sandbox_id);
      const r = find(call.request);
      if (!r) return cb(grpcError(grpc.status.NOT_FOUND, 'sandbox not found'));
      if (r.state === 'held') {
        r.state = 'stopped';
        r.transitionAt = new Date().toISOString();
        publish(r, 'Stopped', 'held sandbox stopped', 'Normal');
        return cb(null, {});
      }
      if (r.state !== 'running') return cb(null, {});
      r.state = 'stopping';
      r.transitionAt = new Date().toISOString();
      void terminate(r).then(() => cb(null, {}));
    }) as Unary<SandboxRef, unknown>,

    StartSandbox: ((call, cb) => {
      count('StartSandbox', call.request.sandbox_id);
      const r = find(call.request);
      if (!r) return cb(grpcError(grpc.status.NOT_FOUND, 'sandbox not found'));
      if (r.state === 'running') return cb(null, {});
      if (r.state === 'stopping' || r.state === 'deleting') return cb(grpcError(grpc.status.FAILED_PRECONDITION, `sandbox is ${r.state}`));
      start(r).then(
        () => cb(null, {}),
        (err: unknown) => cb(grpcError(grpc.status.FAILED_PRECONDITION, `cannot start supervisor: ${String(err)}`)),
      );
    }) as Unary<SandboxRef, unknown>,

    DeleteSandbox: ((call, cb) => {
      count('DeleteSandbox', call.request.sandbox_id);
      const r = find(call.request);
      if (!r) return cb(null, { deleted: false });
      if (r.state === 'deleting') return cb(null, { deleted: true });
      r.state = 'deleting';
      r.transitionAt = new Date().toISOString();
      broadcast({ sandbox: { sandbox: toWire(r) } });
      void terminate(r).then(() => {
        records.delete(r.id);
        if (!opts.keepDeleted) rmSync(r.paths.dir, { recursive: true, force: true });
        emit({ kind: 'deleted', sandboxId: r.id, name: r.name });
        broadcast({ deleted: { sandbox_id: r.id } });
        cb(null, { deleted: true });
      });
    }) as Unary<SandboxRef, unknown>,

    // A held stream: one per watching gateway (with Postgres, the reconciler-lease holder).
    WatchSandboxes: (call: grpc.ServerWritableStream<unknown, WatchSandboxesEvent>) => {
      count('WatchSandboxes');
      watchers.add(call);
      emit({ kind: 'watch', open: true, watchers: watchers.size });
      const drop = (): void => {
        if (!watchers.delete(call)) return;
        emit({ kind: 'watch', open: false, watchers: watchers.size });
      };
      call.on('cancelled', drop);
      call.on('close', drop);
      call.on('error', drop);
    },

    EnsureWorkspace: ((call, cb) => {
      count('EnsureWorkspace');
      if (call.request.workspace) workspaces.add(call.request.workspace);
      cb(null, {});
    }) as Unary<{ workspace: string }, unknown>,

    DeleteWorkspace: ((call, cb) => {
      count('DeleteWorkspace');
      workspaces.delete(call.request.workspace);
      cb(null, {});
    }) as Unary<{ workspace: string }, unknown>,
  };

  const server = new grpc.Server();
  server.addService(computeDriverClient().service, handlers as grpc.UntypedServiceImplementation);
  if (existsSync(opts.socketPath)) unlinkSync(opts.socketPath);
  await new Promise<void>((resolve, reject) =>
    server.bindAsync(`unix:${opts.socketPath}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())),
  );

  // Supervisors must not outlive a driver process that exits without close().
  const onExit = (): void => {
    for (const r of records.values()) if (r.child) killSandbox(r.child);
  };
  process.once('exit', onExit);

  const view = (r: SandboxRecord): SandboxView => ({
    id: r.id,
    name: r.name,
    workspace: r.workspace,
    state: r.state,
    pid: r.child?.pid,
    instance: r.instance,
    exitCode: r.exitCode,
    paths: r.paths,
  });

  return {
    socketPath: opts.socketPath,
    calls,
    sandboxes: () => [...records.values()].map(view),
    sandbox: (id) => {
      const r = records.get(id);
      return r ? view(r) : undefined;
    },
    watcherCount: () => watchers.size,
    async release(id, releaseOpts = {}) {
      const r = records.get(id);
      if (!r) throw new Error(`no sandbox ${id}`);
      if (r.state !== 'held') throw new Error(`sandbox ${id} is ${r.state}, not held`);
      if (releaseOpts.endpoint) r.endpoint = releaseOpts.endpoint;
      await start(r);
    },
    async close() {
      if (closing) return;
      closing = true;
      process.removeListener('exit', onExit);
      const all = [...records.values()];
      for (const r of all) if (r.child) killSandbox(r.child);
      await Promise.race([Promise.all(all.map((r) => r.exited)), new Promise((res) => setTimeout(res, 5000).unref())]);
      // Whatever a dying supervisor started in its last moments.
      for (const r of all) if (r.child) killSandbox(r.child);
      for (const w of watchers) w.end();
      watchers.clear();
      server.forceShutdown();
      if (existsSync(opts.socketPath)) unlinkSync(opts.socketPath);
    },
  };
}
