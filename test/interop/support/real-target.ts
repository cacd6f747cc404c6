// The real-gateway implementation of the shared-check target (test/helpers/gen2-target.ts): the
// interop suite's RealCluster (3 upstream gateways v0.0.111, each behind a sidecar, our compute
// driver starting upstream's supervisor per sandbox). Sandboxes are created with CreateSandbox
// through the Service, as the CLI and the SDK do; their supervisors run upstream's code.
import { existsSync, readFileSync } from 'node:fs';
import { gatewayClient, unary } from '../../helpers/grpc-client.ts';
import { ClusterTables, sidecarMetricSum, type Gen2Target, type HeldSandbox, type TargetReplica, type TargetSandbox } from '../../helpers/gen2-target.ts';
import { freePort } from '../../helpers/own-redis.ts';
import { createSshSession } from './openshell-rpc.ts';
import type { RealCluster } from './real-cluster.ts';

const PHASE_READY = 2;
export const PYTHON = '/usr/bin/python3';

/** Why the real sandbox cannot serve HTTP here, or undefined when it can. */
export function realServiceSkipReason(): string | undefined {
  return existsSync(PYTHON) ? undefined : `no ${PYTHON} on this machine for the sandbox's HTTP server`;
}

export class RealTarget implements Gen2Target {
  readonly kind = 'real' as const;
  /**
   * Smaller than the emulator's where each unit is a real SSH session or a real relay on debug
   * builds sharing 2 cores with the rest of the suite; the same shape otherwise.
   */
  readonly scale = {
    sshSessions: 60,
    sshConcurrency: 6,
    forgedHellos: Number(process.env.OHS_INTEROP_FORGED_HELLOS ?? 1000),
    limitSandboxes: 2,
    limitTokensPerSandbox: 10,
    limitAttempts: 200,
    junkAttempts: 60,
  };
  /** The driver's per-sandbox workdir (the supervisor's --workdir, the SSH session's cwd) holds the id. */
  readonly whoamiCommand = 'pwd';
  private readonly tables: ClusterTables;
  private readonly ports = new Map<string, number>();

  constructor(readonly cluster: RealCluster) {
    this.tables = new ClusterTables(cluster.db.url);
  }

  get endpoint(): string {
    return this.cluster.serviceEndpoint;
  }

  get replicas(): TargetReplica[] {
    return this.cluster.replicas
      .filter((r) => !r.killed && r.sidecar && r.sidecarPort !== undefined)
      .map((r) => ({ name: r.id, publicPort: r.sidecarPort as number, adminPort: r.sidecar!.ready.adminPort as number, gatewayPort: r.gatewayPort }));
  }

  private async create(name: string, service: boolean): Promise<TargetSandbox> {
    const port = await freePort();
    const main = service
      ? `echo ${name} > marker; exec ${PYTHON} -m http.server ${port} --bind 127.0.0.1`
      : `echo ${name} > marker; exec sleep 1000000`;
    const client = gatewayClient(this.endpoint);
    try {
      const res = await unary<{ sandbox: { metadata: { id: string; name: string; workspace: string } } }>(
        client,
        'CreateSandbox',
        { name, spec: { command: ['/bin/sh', '-c', main], tty: false }, workspace: '' },
        60_000,
      );
      const m = res.sandbox.metadata;
      this.ports.set(m.id, port);
      return { id: m.id, name: m.name, workspace: m.workspace || 'default' };
    } finally {
      client.close();
    }
  }

  async createSandboxes(prefix: string, n: number, opts: { service?: boolean } = {}): Promise<TargetSandbox[]> {
    const service = !!opts.service && realServiceSkipReason() === undefined;
    const out = await Promise.all(Array.from({ length: n }, (_, i) => this.create(`${prefix}-${i}`, service)));
    const deadline = Date.now() + 90_000;
    for (const s of out) {
      for (;;) {
        if ((await this.phaseOf(s.id)) === PHASE_READY && (await this.ownerOf(s.id))) break;
        if (Date.now() > deadline) throw new Error(`sandbox ${s.name} not Ready and owned within 90 s (phase ${await this.phaseOf(s.id)})`);
        await new Promise((r) => setTimeout(r, 200));
      }
    }
    // The service's listener comes up after Ready (the workload starts with the session).
    if (service) await new Promise((r) => setTimeout(r, 1_000));
    return out;
  }

  async createHeldSandbox(name: string): Promise<HeldSandbox> {
    this.cluster.holdNames.add(name);
    const sandbox = await this.create(name, false);
    return {
      sandbox,
      startSupervisor: (replica) => this.cluster.driver.release(sandbox.id, { endpoint: `http://127.0.0.1:${replica.publicPort}` }),
    };
  }

  servicePort(sandbox: TargetSandbox): number {
    const p = this.ports.get(sandbox.id);
    if (p === undefined) throw new Error(`no service port for ${sandbox.name}`);
    return p;
  }

  /** The sandbox's main process wrote its name to `marker` in its workdir, which http.server serves. */
  serviceMarker(sandbox: TargetSandbox): string {
    return sandbox.name;
  }

  async mintSshToken(sandboxId: string): Promise<string> {
    return (await createSshSession(this.endpoint, sandboxId)).token;
  }

  async sandboxJwt(sandboxId: string): Promise<string> {
    const view = this.cluster.driver.sandbox(sandboxId);
    if (!view) throw new Error(`the driver has no sandbox ${sandboxId}`);
    return readFileSync(view.paths.tokenFile, 'utf8').trim();
  }

  /** Sessions the gateways accepted for the sandbox (`supervisor session: accepted`, the supervisor's and the sidecars' shadows). */
  async sessionMark(sandboxId: string): Promise<string> {
    const accepted = this.cluster.gatewayLogLines(/supervisor session: accepted/).filter((l) => l.includes(sandboxId));
    return `${accepted.length} accepted (${accepted.map((l) => l.slice(0, 2)).join(',')})`;
  }

  ownerOf(sandboxId: string): Promise<{ replicaId: string; epoch: number } | undefined> {
    return this.tables.ownerOf(sandboxId);
  }

  phaseOf(sandboxId: string): Promise<number | undefined> {
    return this.tables.phaseOf(sandboxId);
  }

  async lostReadyWrites(): Promise<number> {
    return this.cluster.gatewayLogLines(/failed to mark sandbox ready/).length;
  }

  metricSum(name: string, labels?: (l: string) => boolean): Promise<number> {
    return sidecarMetricSum(this.replicas, name, labels);
  }

  async close(): Promise<void> {
    await this.tables.close();
  }
}
