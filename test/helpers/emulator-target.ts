// The emulator implementation of the shared-check target (test/helpers/gen2-target.ts): three
// 2026-08 gateway emulators, each behind a sidecar process, a round-robin Service, and supervisor
// emulators with an HTTP/WebSocket echo service per sandbox.
import { Cluster } from '../../emulator/cluster.ts';
import { SandboxJwt } from '../../emulator/gateway/gen2/jwt.ts';
import { Gen2Store } from '../../emulator/gateway/gen2/store.ts';
import { Phase } from '../../emulator/proto.ts';
import { DEFAULT_ECHO_TARGET_PORT, startSupervisorFleet, type SupervisorFleet } from '../../emulator/supervisor/fleet.ts';
import { startSandboxSshServer, type SandboxSshServer } from '../../emulator/supervisor/ssh-server.ts';
import { SupervisorEmulator } from '../../emulator/supervisor/supervisor.ts';
import { ClusterTables, sidecarMetricSum, type Gen2Target, type HeldSandbox, type TargetReplica, type TargetSandbox } from './gen2-target.ts';
import { createTestDatabase, TEST_REDIS_URL, testRedisPrefix, type TestDatabase } from './services.ts';
import { waitUntil } from './wait.ts';

export class EmulatorTarget implements Gen2Target {
  readonly kind = 'emulator' as const;
  readonly scale = {
    sshSessions: 300,
    sshConcurrency: 9,
    forgedHellos: 1000,
    limitSandboxes: 5,
    limitTokensPerSandbox: 10,
    limitAttempts: 1000,
    junkAttempts: 200,
  };
  readonly whoamiCommand = 'sandbox-id';
  private readonly extras: Array<{ supervisor: SupervisorEmulator; ssh: SandboxSshServer }> = [];
  private jwt: SandboxJwt | undefined;

  private constructor(
    readonly db: TestDatabase,
    readonly store: Gen2Store,
    readonly tables: ClusterTables,
    readonly cluster: Cluster,
    readonly fleet: SupervisorFleet,
  ) {}

  /** `label` names the test database and Redis prefix. */
  static async start(label: string): Promise<EmulatorTarget> {
    const db = await createTestDatabase(label);
    const store = new Gen2Store(db.url);
    await store.migrate();
    const cluster = await Cluster.start({
      replicas: 3,
      databaseUrl: db.url,
      protocol: '2026-08',
      echo: process.env.OHS_TEST_ECHO === '1',
      ...(process.env.OHS_TEST_LOG_LEVEL ? { logLevel: process.env.OHS_TEST_LOG_LEVEL } : {}),
      // Ownership stays where the supervisors connected (owner-before/after checks); moving sessions
      // for balance has its own test (rebalance.test.ts).
      sidecars: { redisUrl: TEST_REDIS_URL, redisKeyPrefix: testRedisPrefix(label), extraArgs: ['--rebalance', 'off'] },
    }).catch(async (err: unknown) => {
      await store.close();
      await db.drop();
      throw err;
    });
    // The fleet plays the compute driver for stop and start too, as upstream's drivers do.
    const fleet = await startSupervisorFleet({
      endpoint: cluster.endpoint,
      sandboxIds: [],
      protocol: '2026-08',
      jwtKeyDir: cluster.jwtKeyDir,
      echoService: true,
      driverEventsDatabaseUrl: db.url,
    }).catch(async (err: unknown) => {
      await cluster.close();
      await store.close();
      await db.drop();
      throw err;
    });
    return new EmulatorTarget(db, store, new ClusterTables(db.url), cluster, fleet);
  }

  get endpoint(): string {
    return this.cluster.endpoint;
  }

  get replicas(): TargetReplica[] {
    return this.cluster.replicas.map((r) => ({ name: r.name, publicPort: r.publicPort, adminPort: r.sidecarPorts!.admin, gatewayPort: r.gatewayPort }));
  }

  async createSandboxes(prefix: string, n: number): Promise<TargetSandbox[]> {
    const out: TargetSandbox[] = [];
    for (let i = 0; i < n; i++) {
      const row = await this.store.createSandbox({ name: `${prefix}-${i}` });
      out.push({ id: row.id, name: row.name, workspace: 'default' });
    }
    const members = await Promise.all(out.map((s) => this.fleet.add(s.id)));
    await Promise.all(members.map((m) => m.supervisor.waitConnected(30_000)));
    for (const s of out) {
      await waitUntil(`sandbox ${s.name} Ready and owned`, async () => ((await this.phaseOf(s.id)) === Phase.READY ? await this.ownerOf(s.id) : undefined), (o) => o !== undefined, {
        timeoutMs: 15_000,
      });
    }
    return out;
  }

  async createHeldSandbox(name: string): Promise<HeldSandbox> {
    const row = await this.store.createSandbox({ name });
    const sandbox = { id: row.id, name: row.name, workspace: 'default' };
    return {
      sandbox,
      startSupervisor: async (replica) => {
        const ssh = await startSandboxSshServer({ sandboxId: row.id });
        const supervisor = new SupervisorEmulator({
          endpoint: `127.0.0.1:${replica.publicPort}`,
          sandboxId: row.id,
          sshPort: ssh.port,
          protocol: '2026-08',
          token: await this.sandboxJwt(row.id),
          logPush: false,
        });
        this.extras.push({ supervisor, ssh });
        supervisor.start();
      },
    };
  }

  servicePort(): number {
    return DEFAULT_ECHO_TARGET_PORT;
  }

  /** The echo service answers with JSON naming its sandbox id. */
  serviceMarker(sandbox: TargetSandbox): string {
    return sandbox.id;
  }

  async mintSshToken(sandboxId: string): Promise<string> {
    return (await this.store.createSshSession(sandboxId, 3600)).token;
  }

  async sandboxJwt(sandboxId: string): Promise<string> {
    this.jwt ??= await SandboxJwt.load(this.cluster.jwtKeyDir!);
    return this.jwt.mint(sandboxId);
  }

  async sessionMark(sandboxId: string): Promise<string> {
    const s = this.fleet.supervisors.get(sandboxId)?.supervisor;
    return s ? `${s.sessionsStarted}:${s.sessionId ?? 'none'}` : 'no supervisor';
  }

  ownerOf(sandboxId: string): Promise<{ replicaId: string; epoch: number } | undefined> {
    return this.tables.ownerOf(sandboxId);
  }

  phaseOf(sandboxId: string): Promise<number | undefined> {
    return this.tables.phaseOf(sandboxId);
  }

  async lostReadyWrites(): Promise<number> {
    let n = 0;
    for (const r of this.cluster.replicas) {
      const res = await fetch(`http://127.0.0.1:${r.gatewayHealthPort}/debug/sessions`);
      n += ((await res.json()) as { lostSessionWrites?: { ready: number } }).lostSessionWrites?.ready ?? 0;
    }
    return n;
  }

  metricSum(name: string, labels?: (l: string) => boolean): Promise<number> {
    return sidecarMetricSum(this.replicas, name, labels);
  }

  async close(): Promise<void> {
    await Promise.all(this.extras.map((e) => e.supervisor.stop()));
    await Promise.all(this.extras.map((e) => e.ssh.close()));
    await this.fleet.stop();
    await this.cluster.close();
    await this.tables.close();
    await this.store.close();
    await this.db.drop();
  }
}
