// Cluster launcher for tests, benches and the demo: N gateway replicas as separate OS
// processes (optionally each behind its sidecar process) and a round-robin balancer standing in
// for the Kubernetes Service in front of them.
import { rmSync } from 'node:fs';
import { startBalancer, type Backend, type Balancer, type BalancerPick } from './balancer.ts';
import { createJwtKeyDir } from './gateway/gen2/jwt.ts';
import type { Protocol } from './proto.ts';
import { startProcess, sidecarCommand, gatewayEmulatorCommand, type ManagedProcess } from './process.ts';

export interface SidecarOptions {
  /** Command prefix that starts the sidecar CLI (default: src/main.ts through tsx). */
  command?: string[];
  redisUrl?: string;
  redisKeyPrefix?: string;
  /** The shared peer secret; `false` starts the sidecars without one (peer mTLS alone). */
  peerSecret?: string | false;
  /** Extra CLI flags for every sidecar. */
  extraArgs?: string[];
  /** Extra CLI flags for one sidecar (e.g. its own peer certificate), by replica. */
  replicaArgs?: (replica: { index: number; name: string }) => string[];
  /** Run sidecars in embedded mode (no database/redis flags). */
  embedded?: boolean;
}

export interface ClusterOptions {
  replicas: number;
  /** Command prefix that starts one gateway emulator (default: its main.ts through tsx). */
  gatewayCommand?: string[];
  databaseUrl: string;
  sidecars?: SidecarOptions;
  gatewayHeartbeatSecs?: number;
  echo?: boolean;
  logLevel?: string;
  /** Gateway protocol generation of every replica; default '2026-04' (seed). */
  protocol?: Protocol;
  /** 2026-08: the sandbox JWT key directory all replicas share; the launcher creates one if absent. */
  jwtKeyDir?: string;
  /** Extra CLI flags for every gateway emulator. */
  gatewayExtraArgs?: string[];
  /**
   * Probe each sidecar's /readyz this often and list only ready replicas in the Service, as
   * Kubernetes does with a pod's endpoint (a draining replica leaves the Service). Off by default.
   */
  readinessProbeMs?: number;
  /** How the Service picks a replica for a new connection (default round robin). */
  balancerPick?: BalancerPick;
  /**
   * Gateways serve TLS with this certificate (as a gateway without disable_tls does) and sidecars
   * reach them over `https://`, trusting `ca`. Clients still talk plaintext to the sidecars.
   */
  gatewayTls?: { cert: string; key: string; ca: string };
}

export interface Replica {
  index: number;
  /** `r0`, `r1`, …: the sidecar's --replica-id and the gateway's OPENSHELL_REPLICA_ID (lease holder id). */
  name: string;
  gateway: ManagedProcess;
  gatewayPort: number;
  gatewayHealthPort: number;
  sidecar?: ManagedProcess;
  sidecarPorts?: { public: number; peer: number; admin: number };
  /** Where clients of this replica connect: the sidecar's public port, or the gateway itself. */
  publicPort: number;
}

export class Cluster {
  readonly replicas: Replica[] = [];
  /** 2026-08: the key directory the replicas share (mint supervisor tokens from it). */
  readonly jwtKeyDir: string | undefined;
  private readonly ownsJwtKeyDir: boolean;

  private constructor(
    readonly opts: ClusterOptions,
    readonly balancer: Balancer,
  ) {
    const gen2 = opts.protocol === '2026-08';
    this.ownsJwtKeyDir = gen2 && !opts.jwtKeyDir;
    this.jwtKeyDir = gen2 ? (opts.jwtKeyDir ?? createJwtKeyDir()) : undefined;
  }

  get protocol(): Protocol {
    return this.opts.protocol ?? '2026-04';
  }

  static async start(opts: ClusterOptions): Promise<Cluster> {
    const balancer = await startBalancer([], '127.0.0.1', 0, opts.balancerPick);
    const cluster = new Cluster(opts, balancer);
    try {
      const results = await Promise.allSettled(Array.from({ length: opts.replicas }, (_, i) => cluster.launch(i)));
      for (const r of results) if (r.status === 'fulfilled') cluster.replicas.push(r.value);
      const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (failed) throw failed.reason;
      cluster.refreshBalancer();
      if (opts.readinessProbeMs && opts.sidecars) cluster.startReadinessProbe(opts.readinessProbeMs);
    } catch (err) {
      await cluster.close();
      throw err;
    }
    return cluster;
  }

  get endpoint(): string {
    return `127.0.0.1:${this.balancer.port}`;
  }

  replica(i: number): Replica {
    const r = this.replicas[i];
    if (!r) throw new Error(`no replica ${i}`);
    return r;
  }

  private async launch(index: number): Promise<Replica> {
    const name = `r${index}`;
    const gateway = await startProcess(
      `gateway-${name}`,
      [
        ...(this.opts.gatewayCommand ?? gatewayEmulatorCommand()),
        '--database-url',
        this.opts.databaseUrl,
        '--replica',
        `gateway-${name}`,
        '--heartbeat-interval-secs',
        String(this.opts.gatewayHeartbeatSecs ?? 15),
        '--log-level',
        this.opts.logLevel ?? 'warn',
        ...(this.opts.protocol ? ['--protocol', this.opts.protocol] : []),
        ...(this.jwtKeyDir ? ['--jwt-key-dir', this.jwtKeyDir] : []),
        ...(this.opts.gatewayTls ? ['--tls-cert', this.opts.gatewayTls.cert, '--tls-key', this.opts.gatewayTls.key] : []),
        ...(this.opts.gatewayExtraArgs ?? []),
      ],
      // 2026-08: the reconciler-lease holder id is the replica's name, the same string as its sidecar's
      // --replica-id, so a lease holder read from the table maps to a replica (reference §10).
      { echo: this.opts.echo ?? false, env: { OPENSHELL_REPLICA_ID: name } },
    );
    const gatewayPort = gateway.ready.port as number;
    const gatewayHealthPort = gateway.ready.healthPort as number;
    const replica: Replica = { index, name, gateway, gatewayPort, gatewayHealthPort, publicPort: gatewayPort };
    const sc = this.opts.sidecars;
    if (sc) {
      const args = [
        '--replica-id',
        name,
        '--listen',
        '127.0.0.1:0',
        '--peer-listen',
        '127.0.0.1:0',
        '--admin-listen',
        '127.0.0.1:0',
        '--gateway',
        `${this.opts.gatewayTls ? 'https' : 'http'}://127.0.0.1:${gatewayPort}`,
        ...(this.opts.gatewayTls ? ['--gateway-ca', this.opts.gatewayTls.ca] : []),
        '--log-level',
        this.opts.logLevel ?? 'warn',
      ];
      if (!sc.embedded) {
        args.push('--database-url', this.opts.databaseUrl);
        if (sc.peerSecret !== false) args.push('--peer-secret', sc.peerSecret ?? 'test-peer-secret-0123456789');
        if (sc.redisUrl) args.push('--redis-url', sc.redisUrl);
        if (sc.redisKeyPrefix) args.push('--redis-key-prefix', sc.redisKeyPrefix);
      }
      args.push(...(sc.extraArgs ?? []), ...(sc.replicaArgs?.({ index, name }) ?? []));
      try {
        const sidecar = await startProcess(`sidecar-${name}`, [...(sc.command ?? sidecarCommand()), ...args], {
          echo: this.opts.echo ?? false,
        });
        const ports = {
          public: sidecar.ready.listenPort as number,
          peer: sidecar.ready.peerPort as number,
          admin: sidecar.ready.adminPort as number,
        };
        replica.sidecar = sidecar;
        replica.sidecarPorts = ports;
        replica.publicPort = ports.public;
      } catch (err) {
        await gateway.kill('SIGKILL');
        throw err;
      }
    }
    return replica;
  }

  private readonly notReady = new Set<string>();
  private probeTimer: NodeJS.Timeout | undefined;

  private refreshBalancer(): void {
    const backends: Backend[] = this.replicas.filter((r) => !this.notReady.has(r.name)).map((r) => ({ host: '127.0.0.1', port: r.publicPort }));
    this.balancer.setBackends(backends);
  }

  private startReadinessProbe(everyMs: number): void {
    const probe = async (): Promise<void> => {
      let changed = false;
      await Promise.all(
        this.replicas.map(async (r) => {
          const admin = r.sidecarPorts?.admin;
          if (!admin) return;
          let ready = false;
          try {
            ready = (await fetch(`http://127.0.0.1:${admin}/readyz`, { signal: AbortSignal.timeout(everyMs) })).status === 200;
          } catch {
            ready = false;
          }
          if (ready === this.notReady.has(r.name)) {
            changed = true;
            if (ready) this.notReady.delete(r.name);
            else this.notReady.add(r.name);
          }
        }),
      );
      if (changed) this.refreshBalancer();
    };
    const loop = (): void => {
      this.probeTimer = setTimeout(() => void probe().finally(loop), everyMs);
      this.probeTimer.unref();
    };
    loop();
  }

  /**
   * Stops a replica the way Kubernetes stops a pod with the sidecar injected as a native sidecar
   * (the default on Kubernetes 1.29+): the gateway's preStop runs the drain (GET /drain/wait on the
   * sidecar's admin port), then the gateway gets SIGTERM, and the sidecar only once the gateway is
   * gone. Resolves with how long the drain took.
   */
  async stop(i: number, timeoutMs = 60_000): Promise<number> {
    const r = this.replica(i);
    const took = await this.preStopDrain(r, timeoutMs);
    await r.gateway.kill('SIGTERM', 10_000);
    if (r.sidecar) await r.sidecar.kill('SIGTERM', timeoutMs);
    return took;
  }

  /**
   * Stops a replica the way Kubernetes stops a pod with the sidecar injected as a plain container:
   * both containers' preStop runs the drain, then both get SIGTERM at once. Resolves with how long
   * the drain took.
   */
  async stopContainerPod(i: number, timeoutMs = 60_000): Promise<number> {
    const r = this.replica(i);
    const took = await this.preStopDrain(r, timeoutMs);
    await Promise.all([r.gateway.kill('SIGTERM', 10_000), r.sidecar?.kill('SIGTERM', timeoutMs)]);
    return took;
  }

  /** The preStop hook's call: GET /drain/wait, answered when the drain is over. Resolves with its duration. */
  private async preStopDrain(r: Replica, timeoutMs: number): Promise<number> {
    const started = Date.now();
    const admin = r.sidecarPorts?.admin;
    if (admin) {
      await fetch(`http://127.0.0.1:${admin}/drain/wait`, { signal: AbortSignal.timeout(timeoutMs) }).then(
        (res) => res.arrayBuffer(),
        () => undefined,
      );
    }
    return Date.now() - started;
  }

  /**
   * Stops a replica the way Kubernetes stops a pod with the sidecar injected as a plain container,
   * and as Compose stops it: SIGTERM to the sidecar (it drains), and to the gateway only once the
   * sidecar is gone (the gateway's preStop waits for it). Resolves with how long the sidecar took to
   * exit.
   */
  async terminate(i: number, timeoutMs = 60_000): Promise<number> {
    const r = this.replica(i);
    const started = Date.now();
    if (r.sidecar) await r.sidecar.kill('SIGTERM', timeoutMs);
    const took = Date.now() - started;
    await r.gateway.kill('SIGTERM', 10_000);
    return took;
  }

  /** kill -9 (or another signal) the replica's processes: `which` picks gateway, sidecar or both. */
  async kill(i: number, signal: NodeJS.Signals = 'SIGKILL', which: 'both' | 'gateway' | 'sidecar' = 'both'): Promise<void> {
    const r = this.replica(i);
    const jobs: Array<Promise<void>> = [];
    if (which !== 'gateway' && r.sidecar) jobs.push(r.sidecar.kill(signal));
    if (which !== 'sidecar') jobs.push(r.gateway.kill(signal));
    await Promise.all(jobs);
  }

  /** Scale-up: one more replica (gateway and sidecar), added to the Service. */
  async add(): Promise<Replica> {
    const fresh = await this.launch(this.replicas.length);
    this.replicas.push(fresh);
    this.refreshBalancer();
    return fresh;
  }

  /** Starts the replica again (new processes, new ports) and points the balancer at it. */
  async restart(i: number): Promise<Replica> {
    await this.kill(i, 'SIGKILL');
    const fresh = await this.launch(i);
    this.replicas[i] = fresh;
    this.notReady.delete(fresh.name);
    this.refreshBalancer();
    return fresh;
  }

  async close(): Promise<void> {
    clearTimeout(this.probeTimer);
    await Promise.all(this.replicas.map((_, i) => this.kill(i, 'SIGKILL').catch(() => undefined)));
    await this.balancer.close();
    if (this.ownsJwtKeyDir && this.jwtKeyDir) rmSync(this.jwtKeyDir, { recursive: true, force: true });
  }
}
