// A real multi-replica OpenShell deployment on one machine, for the interop suite: N upstream gateways
// sharing one fresh Postgres database, each behind our sidecar (or not), one compute driver of ours
// serving all of them, and round-robin balancers standing in for the Kubernetes Service.
//
// Every upstream process gets its own HOME/XDG_* and workdir under one per-run directory, and
// supervisors run as an ordinary user when we are root: upstream's supervisor writes /var/log,
// rewrites /etc/passwd (with OPENSHELL_SANDBOX_UID/GID) and chmods its SSH socket's parent to 0700
// when it runs as root (docs/interop.md "Host side effects").
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, createWriteStream, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import pg from 'pg';
import { startBalancer, type Balancer } from '../../../emulator/balancer.ts';
import { startComputeDriver, type ComputeDriver, type DriverEvent } from '../../../emulator/compute-driver/driver.ts';
import { startProcess, sidecarCommand, type ManagedProcess } from '../../../emulator/process.ts';
import { sandboxPayloadPhase } from '../../../src/wire/gateway-payloads.ts';
import { freePort } from '../../helpers/own-redis.ts';
import { createTestDatabase, testRedisPrefix, TEST_REDIS_URL, type TestDatabase } from '../../helpers/services.ts';
import type { UpstreamBins } from './bins.ts';

const NOBODY = { uid: 65534, gid: 65534 };
const PEER_SECRET = 'interop-peer-secret-0123456789';
const TAIL_LINES = 300;

/** An upstream program we started: output to a log file and a bounded in-memory tail. */
export class UpstreamProcess {
  readonly tail: string[] = [];
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private readonly waiters = new Set<{ re: RegExp; resolve: (line: string) => void }>();

  constructor(
    readonly name: string,
    readonly child: ChildProcess,
    readonly logFile: string,
  ) {
    const log = createWriteStream(logFile, { flags: 'a' });
    const onLine = (line: string): void => {
      this.tail.push(line);
      if (this.tail.length > TAIL_LINES) this.tail.shift();
      for (const w of this.waiters) {
        if (w.re.test(line)) {
          this.waiters.delete(w);
          w.resolve(line);
        }
      }
    };
    for (const stream of [child.stdout, child.stderr]) {
      let buf = '';
      stream?.on('data', (d: Buffer) => {
        log.write(d);
        buf += d.toString('utf8');
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          onLine(buf.slice(0, nl));
          buf = buf.slice(nl + 1);
        }
      });
    }
    this.exited = new Promise((resolve) =>
      child.once('exit', (code, signal) => {
        log.end();
        resolve({ code, signal });
      }),
    );
  }

  alive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Resolves with the first later output line matching `re`. */
  waitForLine(re: RegExp, timeoutMs: number): Promise<string> {
    return new Promise((resolve, reject) => {
      const w = { re, resolve: (l: string) => (clearTimeout(timer), resolve(l)) };
      const timer = setTimeout(() => {
        this.waiters.delete(w);
        reject(new Error(`${this.name}: no line matching ${re} within ${timeoutMs} ms; last lines:\n${this.tail.slice(-20).join('\n')}`));
      }, timeoutMs);
      this.waiters.add(w);
    });
  }

  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    if (!this.alive()) return;
    this.child.kill(signal);
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 10_000);
    await this.exited;
    clearTimeout(timer);
  }
}

const upstreamLive = new Set<ChildProcess>();
let exitHook = false;
function spawnUpstream(name: string, bin: string, args: string[], env: Record<string, string>, logFile: string, cwd: string): UpstreamProcess {
  if (!exitHook) {
    exitHook = true;
    process.once('exit', () => {
      for (const c of upstreamLive) c.kill('SIGKILL');
    });
  }
  const child = spawn(bin, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
  upstreamLive.add(child);
  child.once('exit', () => upstreamLive.delete(child));
  child.on('error', () => undefined); // surfaces as the readiness timeout, with the log
  return new UpstreamProcess(name, child, logFile);
}

export interface RealReplica {
  index: number;
  /** OPENSHELL_REPLICA_ID of the gateway (the reconciler-lease holder id) and the sidecar's --replica-id. */
  id: string;
  gateway: UpstreamProcess;
  gatewayPort: number;
  healthPort: number;
  /** When this gateway process was started (a restarted replica keeps its id, not this). */
  startedAtMs: number;
  sidecar?: ManagedProcess;
  sidecarPort?: number;
  killed: boolean;
}

export interface RealClusterOptions {
  bins: UpstreamBins;
  replicas: number;
  /** Put a sidecar in front of every gateway (the Service then balances over sidecars). */
  sidecars: boolean;
  gatewayLogLevel?: string;
  sidecarLogLevel?: string;
  /** Keep the run directory (logs, supervisor logs) after close(). */
  keepRunDir?: boolean;
  onDriverEvent?: (e: DriverEvent & { at: number }) => void;
}

export interface ReplicaStop {
  order: 'native' | 'container';
  /** Container order: SIGTERM to the sidecar → its exit (its drain). Native order: the drain (GET /drain/wait). */
  sidecarMs: number;
  sidecarExit?: { code: number | null; signal: NodeJS.Signals | null };
  /** SIGTERM to the gateway → its exit. */
  gatewayMs: number;
  gatewayExit: { code: number | null; signal: NodeJS.Signals | null };
}

export interface SandboxRow {
  id: string;
  name: string;
  phase: number;
  updatedAtMs: number;
}

export interface OwnerRow {
  sandboxId: string;
  replicaId: string;
  epoch: number;
}

export class RealCluster {
  readonly replicas: RealReplica[] = [];
  service!: Balancer;
  /** Round robin straight to the gateways: the deployment without sidecars (the baseline). */
  direct!: Balancer;
  driver!: ComputeDriver;
  db!: TestDatabase;
  pool!: pg.Pool;
  readonly redisPrefix = testRedisPrefix('interop');
  /** Sandboxes created with one of these names are held by the driver until `driver.release(id)`. */
  readonly holdNames = new Set<string>();
  readonly runDir: string;
  private readonly configFile: string;
  private readonly kek = randomBytes(32).toString('base64');

  private constructor(readonly opts: RealClusterOptions) {
    this.runDir = mkdtempSync(join(tmpdir(), 'ohs-interop-'));
    // Supervisors run as `nobody` and must traverse to their own scratch directory.
    chmodSync(this.runDir, 0o711);
    this.configFile = join(this.runDir, 'gateway.toml');
  }

  static async start(opts: RealClusterOptions): Promise<RealCluster> {
    const c = new RealCluster(opts);
    try {
      await c.boot();
    } catch (err) {
      await c.close();
      throw err;
    }
    return c;
  }

  get serviceEndpoint(): string {
    return `127.0.0.1:${this.service.port}`;
  }

  get serviceUrl(): string {
    return `http://${this.serviceEndpoint}`;
  }

  get directUrl(): string {
    return `http://127.0.0.1:${this.direct.port}`;
  }

  /** HOME and XDG_* of one upstream process, all inside the run directory. */
  scratchEnv(who: string): Record<string, string> {
    const home = join(this.runDir, 'home', who);
    mkdirSync(home, { recursive: true });
    return {
      PATH: process.env.PATH ?? '/usr/bin:/bin',
      HOME: home,
      XDG_CONFIG_HOME: join(home, '.config'),
      XDG_STATE_HOME: join(home, '.local', 'state'),
      XDG_DATA_HOME: join(home, '.local', 'share'),
      XDG_CACHE_HOME: join(home, '.cache'),
      TMPDIR: join(this.runDir, 'tmp'),
      NO_COLOR: '1',
    };
  }

  private async boot(): Promise<void> {
    const { bins } = this.opts;
    mkdirSync(join(this.runDir, 'tmp'), { recursive: true });
    const sandboxesDir = join(this.runDir, 'sandboxes');
    mkdirSync(sandboxesDir, { recursive: true });
    chmodSync(sandboxesDir, 0o711);

    // The sandbox JWT signer every replica shares (NOTES §4.4); generate-certs also copies a client
    // bundle into $XDG_CONFIG_HOME, which is ours here.
    const pki = join(this.runDir, 'pki');
    const gen = spawnUpstream('generate-certs', bins.gateway, ['generate-certs', '--output-dir', pki], this.scratchEnv('certgen'), join(this.runDir, 'generate-certs.log'), this.runDir);
    const genExit = await gen.exited;
    if (genExit.code !== 0) throw new Error(`generate-certs failed (${JSON.stringify(genExit)}):\n${gen.tail.join('\n')}`);
    writeFileSync(
      this.configFile,
      [
        '[openshell.gateway.auth]',
        'allow_unauthenticated_users = true',
        '',
        '[openshell.gateway.gateway_jwt]',
        `signing_key_path = ${JSON.stringify(join(pki, 'jwt', 'signing.pem'))}`,
        `public_key_path = ${JSON.stringify(join(pki, 'jwt', 'public.pem'))}`,
        `kid_path = ${JSON.stringify(join(pki, 'jwt', 'kid'))}`,
        '',
        // One key-encryption key for all replicas (else each would make its own under its HOME).
        '[openshell.gateway.credential_storage]',
        'key_encryption_key_env = "OHS_INTEROP_KEK"',
        '',
      ].join('\n'),
    );

    this.db = await createTestDatabase('interop');
    this.pool = new pg.Pool({ connectionString: this.db.url, max: 4 });
    // The database is dropped WITH (FORCE) at close: a connection still closing then errors.
    this.pool.on('error', () => undefined);
    this.service = await startBalancer([]);
    this.direct = await startBalancer([]);

    const t0 = Date.now();
    this.driver = await startComputeDriver({
      socketPath: join(this.runDir, 'driver.sock'),
      supervisorBin: bins.sandbox,
      endpoint: this.serviceUrl,
      stateDir: sandboxesDir,
      supervisorLogLevel: 'info',
      keepDeleted: true,
      // Root-only process setup off (no `sandbox` user needed); see docs/interop.md.
      extraEnv: { OPENSHELL_SUPERVISOR_TOPOLOGY: 'sidecar' },
      ...(typeof process.getuid === 'function' && process.getuid() === 0 ? { runAs: NOBODY } : {}),
      onEvent: (e) => this.opts.onDriverEvent?.({ ...e, at: Date.now() - t0 }),
      holdStart: (sb) => this.holdNames.has(sb.name),
    });

    const launched = await Promise.allSettled(Array.from({ length: this.opts.replicas }, (_, i) => this.launchGateway(i)));
    for (const r of launched) if (r.status === 'fulfilled') this.replicas.push(r.value);
    const failed = launched.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    this.replicas.sort((a, b) => a.index - b.index);
    if (this.opts.sidecars) await Promise.all(this.replicas.map((r) => this.launchSidecar(r)));
    this.refreshBalancers();
  }

  private async launchGateway(index: number): Promise<RealReplica> {
    const id = `r${index}`;
    const [gatewayPort, healthPort] = [await freePort(), await freePort()];
    const dir = join(this.runDir, `gateway-${id}`);
    mkdirSync(dir, { recursive: true });
    const startedAtMs = Date.now();
    const gateway = spawnUpstream(
      `gateway-${id}`,
      this.opts.bins.gateway,
      [
        '--config', this.configFile,
        '--disable-tls',
        '--bind-address', '127.0.0.1',
        '--port', String(gatewayPort),
        '--health-port', String(healthPort),
        '--db-url', this.db.url,
        '--drivers', 'ohs-process',
        '--compute-driver-socket', this.driver.socketPath,
        '--log-level', this.opts.gatewayLogLevel ?? 'info',
      ],
      { ...this.scratchEnv(`gateway-${id}`), OPENSHELL_REPLICA_ID: id, OHS_INTEROP_KEK: this.kek },
      join(this.runDir, `gateway-${id}.log`),
      dir,
    );
    try {
      // Listeners are bound only after the driver answered GetCapabilities (NOTES §3).
      await Promise.race([
        gateway.waitForLine(/Gateway listener bound/, 60_000),
        gateway.exited.then((e) => {
          throw new Error(`gateway-${id} exited (${JSON.stringify(e)}):\n${gateway.tail.join('\n')}`);
        }),
      ]);
    } catch (err) {
      await gateway.kill('SIGKILL');
      throw err;
    }
    return { index, id, gateway, gatewayPort, healthPort, startedAtMs, killed: false };
  }

  private async launchSidecar(r: RealReplica): Promise<void> {
    const args = [
      '--replica-id', r.id,
      '--listen', '127.0.0.1:0',
      '--peer-listen', '127.0.0.1:0',
      '--admin-listen', '127.0.0.1:0',
      '--gateway', `http://127.0.0.1:${r.gatewayPort}`,
      '--database-url', this.db.url,
      '--redis-url', TEST_REDIS_URL,
      '--redis-key-prefix', this.redisPrefix,
      '--peer-secret', PEER_SECRET,
      '--log-level', this.opts.sidecarLogLevel ?? 'warn',
    ];
    const sidecar = await startProcess(`sidecar-${r.id}`, [...sidecarCommand(), ...args], { readyTimeoutMs: 30_000 });
    // The launcher keeps a bounded tail; the whole log goes to the run directory.
    const log = createWriteStream(join(this.runDir, `sidecar-${r.id}.log`), { flags: 'a' });
    sidecar.child.stdout?.on('data', (d: Buffer) => log.write(d));
    sidecar.child.stderr?.on('data', (d: Buffer) => log.write(d));
    sidecar.child.once('exit', () => log.end());
    r.sidecar = sidecar;
    r.sidecarPort = sidecar.ready.listenPort as number;
  }

  private refreshBalancers(): void {
    const live = this.replicas.filter((r) => !r.killed);
    this.direct.setBackends(live.map((r) => ({ host: '127.0.0.1', port: r.gatewayPort })));
    this.service.setBackends(live.map((r) => ({ host: '127.0.0.1', port: r.sidecarPort ?? r.gatewayPort })));
  }

  replica(id: string): RealReplica {
    const r = this.replicas.find((x) => x.id === id);
    if (!r) throw new Error(`no replica ${id}`);
    return r;
  }

  /**
   * kill -9 of a replica's gateway and sidecar, then its removal from the balancers (what the
   * endpoints controller does once the pod is gone; here at once).
   */
  async killReplica(id: string): Promise<void> {
    const r = this.replica(id);
    r.killed = true;
    await Promise.all([r.gateway.kill('SIGKILL'), r.sidecar?.kill('SIGKILL')]);
    this.refreshBalancers();
  }

  /**
   * A graceful pod stop, the way Kubernetes stops a replica with the sidecar injected: its endpoint
   * leaves the balancers at once (a terminating pod leaves the Service). Container order (default;
   * Kubernetes < 1.29, Compose): SIGTERM to the sidecar (it drains: its supervisor sessions move to
   * the other replicas, then it exits), then SIGTERM to the gateway once the sidecar is gone (the
   * gateway's preStop waits for the sidecar's drain). Native order: see below. Each gets SIGKILL
   * after its grace. Resolves with how long each took and how each exited.
   */
  async stopReplica(id: string, opts: { sidecarGraceMs?: number; gatewayGraceMs?: number; order?: 'native' | 'container' } = {}): Promise<ReplicaStop> {
    const r = this.replica(id);
    r.killed = true;
    this.refreshBalancers();
    const started = Date.now();
    const stopSidecar = async (): Promise<ReplicaStop['sidecarExit']> => {
      if (!r.sidecar) return undefined;
      await r.sidecar.kill('SIGTERM', opts.sidecarGraceMs ?? 60_000);
      return r.sidecar.exited;
    };
    /** SIGTERM to the gateway, SIGKILL after its grace; resolves with how long it took. */
    const stopGateway = async (): Promise<number> => {
      const gatewayStarted = Date.now();
      if (r.gateway.alive()) {
        r.gateway.child.kill('SIGTERM');
        const timer = setTimeout(() => r.gateway.child.kill('SIGKILL'), opts.gatewayGraceMs ?? 10_000);
        await r.gateway.exited;
        clearTimeout(timer);
      }
      return Date.now() - gatewayStarted;
    };
    if (opts.order === 'native') {
      // Native sidecar (Kubernetes 1.29+): the gateway's preStop drains the sidecar, the gateway gets
      // SIGTERM, and the sidecar only once the gateway is gone.
      const admin = r.sidecar?.ready.adminPort as number | undefined;
      if (admin) {
        await fetch(`http://127.0.0.1:${admin}/drain/wait`, { signal: AbortSignal.timeout(opts.sidecarGraceMs ?? 60_000) }).then(
          (res) => res.arrayBuffer(),
          () => undefined,
        );
      }
      const sidecarMs = Date.now() - started;
      const gatewayMs = await stopGateway();
      const sidecarExit = await stopSidecar();
      return { order: 'native', sidecarMs, sidecarExit, gatewayMs, gatewayExit: await r.gateway.exited };
    }
    const sidecarExit = await stopSidecar();
    const sidecarMs = Date.now() - started;
    const gatewayMs = await stopGateway();
    return { order: 'container', sidecarMs, sidecarExit, gatewayMs, gatewayExit: await r.gateway.exited };
  }

  /**
   * Starts replica `id` again after a stop or a kill, as a new pod: a new gateway (same replica id)
   * and sidecar on new ports, put back in the balancers once both are up.
   */
  async restartReplica(id: string): Promise<RealReplica> {
    const old = this.replica(id);
    await Promise.all([old.gateway.kill('SIGKILL'), old.sidecar?.kill('SIGKILL')]);
    const fresh = await this.launchGateway(old.index);
    try {
      if (this.opts.sidecars) await this.launchSidecar(fresh);
    } catch (err) {
      await fresh.gateway.kill('SIGKILL');
      throw err;
    }
    this.replicas[this.replicas.indexOf(old)] = fresh;
    this.refreshBalancers();
    return fresh;
  }

  /**
   * kill -9 of one sandbox's supervisor process (its workload stays, as the driver's stop would
   * find it). The driver restarts nothing by itself: it reports the exit (`Ready=False
   * ProcessExited`) and starts a supervisor again only on StartSandbox. Returns the pid killed.
   */
  killSupervisor(sandboxId: string): number {
    const view = this.driver.sandbox(sandboxId);
    if (!view || view.state !== 'running' || view.pid === undefined) throw new Error(`sandbox ${sandboxId} has no running supervisor (${view?.state ?? 'unknown'})`);
    process.kill(view.pid, 'SIGKILL');
    return view.pid;
  }

  async sandboxRows(): Promise<SandboxRow[]> {
    const res = await this.pool.query<{ id: string; name: string; payload: Buffer; updated_at_ms: string }>(
      "SELECT id, name, payload, updated_at_ms FROM objects WHERE object_type = 'sandbox'",
    );
    return res.rows.map((row) => ({
      id: row.id,
      name: row.name,
      phase: sandboxPayloadPhase(row.payload).phase,
      updatedAtMs: Number(row.updated_at_ms),
    }));
  }

  async owners(): Promise<Map<string, OwnerRow>> {
    if (!this.opts.sidecars) return new Map();
    const res = await this.pool.query<{ sandbox_id: string; replica_id: string; epoch: string }>('SELECT sandbox_id, replica_id, epoch FROM ohs_owners');
    return new Map(res.rows.map((r) => [r.sandbox_id, { sandboxId: r.sandbox_id, replicaId: r.replica_id, epoch: Number(r.epoch) }]));
  }

  /** The reconciler-lease holder (reference §10), or undefined when no lease row exists. */
  async leaseHolder(): Promise<string | undefined> {
    const res = await this.pool.query<{ payload: Buffer }>("SELECT payload FROM objects WHERE object_type = 'reconciler_lease' AND id = 'singleton'");
    const row = res.rows[0];
    if (!row) return undefined;
    try {
      return (JSON.parse(row.payload.toString('utf8')) as { holder?: string }).holder;
    } catch {
      return undefined;
    }
  }

  /**
   * The reconciler-lease row: its holder and when it was last written (taken or renewed; upstream
   * renews every 10 s, TTL 30 s). A graceful shutdown deletes it when it can; a kill -9 leaves it to expire.
   */
  async lease(): Promise<{ holder: string; updatedAtMs: number } | undefined> {
    const res = await this.pool.query<{ payload: Buffer; updated_at_ms: string }>(
      "SELECT payload, updated_at_ms FROM objects WHERE object_type = 'reconciler_lease' AND id = 'singleton'",
    );
    const row = res.rows[0];
    if (!row) return undefined;
    try {
      const holder = (JSON.parse(row.payload.toString('utf8')) as { holder?: string }).holder;
      return holder === undefined ? undefined : { holder, updatedAtMs: Number(row.updated_at_ms) };
    } catch {
      return undefined;
    }
  }

  /** Lines of every gateway's log file matching `re` (prefixed with the replica id). */
  gatewayLogLines(re: RegExp): string[] {
    const out: string[] = [];
    for (const r of this.replicas) {
      let text = '';
      try {
        text = readFileSync(r.gateway.logFile, 'utf8');
      } catch {
        continue;
      }
      for (const line of text.split('\n')) if (re.test(line)) out.push(`${r.id}: ${line}`);
    }
    return out;
  }

  /** Every sidecar's JSON log entries (pino) for which `keep` holds. */
  sidecarLogEntries(keep: (entry: Record<string, unknown>) => boolean): Array<Record<string, unknown>> {
    const out: Array<Record<string, unknown>> = [];
    for (const r of this.replicas) {
      let text = '';
      try {
        text = readFileSync(join(this.runDir, `sidecar-${r.id}.log`), 'utf8');
      } catch {
        continue;
      }
      for (const line of text.split('\n')) {
        if (!line.startsWith('{')) continue;
        try {
          const entry = JSON.parse(line) as Record<string, unknown>;
          if (keep(entry)) out.push(entry);
        } catch {
          // a line cut by a kill -9
        }
      }
    }
    return out;
  }

  /** Lines of every live upstream and sidecar process, for failure reports. */
  diagnostics(lines = 15): string {
    const parts: string[] = [];
    for (const r of this.replicas) {
      parts.push(`--- gateway-${r.id} (${r.gateway.alive() ? 'alive' : 'dead'})\n${r.gateway.tail.slice(-lines).join('\n')}`);
      if (r.sidecar) parts.push(`--- sidecar-${r.id}\n${r.sidecar.output.slice(-lines).join('\n')}`);
    }
    return parts.join('\n');
  }

  async close(): Promise<void> {
    await Promise.all(this.replicas.map((r) => Promise.all([r.sidecar?.kill('SIGKILL'), r.gateway.kill('SIGKILL')]).catch(() => undefined)));
    await this.driver?.close().catch(() => undefined);
    await this.service?.close();
    await this.direct?.close();
    await this.pool?.end().catch(() => undefined);
    await this.db?.drop().catch(() => undefined);
    await dropRedisKeys(this.redisPrefix).catch(() => undefined);
    if (!this.opts.keepRunDir) rmSync(this.runDir, { recursive: true, force: true });
  }
}

/** The sidecars' Redis keys of this run (owner cache, limit slots). */
async function dropRedisKeys(prefix: string): Promise<void> {
  const redis = new Redis(TEST_REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 1 });
  try {
    await redis.connect();
    let cursor = '0';
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 500);
      cursor = next;
      if (keys.length > 0) await redis.del(...keys);
    } while (cursor !== '0');
  } finally {
    redis.disconnect();
  }
}

/** `stat -c %a /tmp` must stay 1777; an upstream process given a shared dir could change it. */
export function tmpMode(): string {
  return (statSync('/tmp').mode & 0o7777).toString(8);
}
