// What the shared 2026-08 checks (test/helpers/gen2-checks.ts) need from a cluster, so the same
// test bodies run against the gateway emulator (test/helpers/emulator-target.ts, `make test`) and
// against upstream's real gateway (test/interop/support/real-target.ts, `make interop`). Both
// targets are three gateway replicas, each behind our sidecar, on one Postgres database, with a
// round-robin Service in front; only the gateway, the supervisors and what starts them differ.
import pg from 'pg';
import { sandboxPayloadPhase } from '../../src/wire/gateway-payloads.ts';

export interface TargetSandbox {
  id: string;
  name: string;
  workspace: string;
}

export interface TargetReplica {
  /** The sidecar's --replica-id (what `ohs_owners.replica_id` holds). */
  name: string;
  /** The sidecar's public port (the replica past the Service). */
  publicPort: number;
  /** The sidecar's admin port (/metrics). */
  adminPort: number;
  /** The gateway itself, past its sidecar (what a deployment without sidecars would expose). */
  gatewayPort: number;
}

/** A sandbox whose supervisor has not started: a watch can be opened before anything connects. */
export interface HeldSandbox {
  sandbox: TargetSandbox;
  /** Starts its supervisor, dialling `replica`'s public port instead of the Service. */
  startSupervisor(replica: TargetReplica): Promise<void>;
}

/** How big the shared checks are on this target (the real programs are debug builds on 2 cores). */
export interface TargetScale {
  /** ForwardTcp SSH sessions of the routing check, spread over the ready sandboxes. */
  sshSessions: number;
  /** Concurrent sessions in that check. */
  sshConcurrency: number;
  /** Forged Hellos for one live sandbox. */
  forgedHellos: number;
  /** The limit storm: sandboxes, tokens per sandbox, attempts. */
  limitSandboxes: number;
  limitTokensPerSandbox: number;
  limitAttempts: number;
  /** Junk-token ForwardTcp attempts for one sandbox. */
  junkAttempts: number;
}

export interface Gen2Target {
  readonly kind: 'emulator' | 'real';
  /** host:port of the Service. */
  readonly endpoint: string;
  readonly replicas: readonly TargetReplica[];
  readonly scale: TargetScale;
  /**
   * An SSH command whose output contains the sandbox id (emulator: its `sandbox-id` built-in; real:
   * `pwd`, the driver's per-sandbox workdir holds the id).
   */
  readonly whoamiCommand: string;
  /**
   * Sandboxes whose supervisors run and are Ready and owned. With `service`, each serves HTTP on
   * loopback port `servicePort(sandbox)`, answering `GET /marker` with `serviceMarker(sandbox)`.
   */
  createSandboxes(prefix: string, n: number, opts?: { service?: boolean }): Promise<TargetSandbox[]>;
  createHeldSandbox(name: string): Promise<HeldSandbox>;
  servicePort(sandbox: TargetSandbox): number;
  serviceMarker(sandbox: TargetSandbox): string;
  /** A fresh SSH session token for the sandbox (what CreateSshSession hands out). */
  mintSshToken(sandboxId: string): Promise<string>;
  /** The sandbox JWT its supervisor holds (to forge a Hello for *another* sandbox with it). */
  sandboxJwt(sandboxId: string): Promise<string>;
  /** Changes whenever the sandbox's supervisor gets a new session (a forged Hello must not cause one). */
  sessionMark(sandboxId: string): Promise<string>;
  /** `ohs_owners` of the sidecars. */
  ownerOf(sandboxId: string): Promise<{ replicaId: string; epoch: number } | undefined>;
  /** The gateway's stored phase (objects.payload), or undefined without a row. */
  phaseOf(sandboxId: string): Promise<number | undefined>;
  /**
   * Supervisor-session Ready writes the gateways lost to a compare-and-swap conflict so far
   * (docs/interop.md U1; upstream only logs them: "failed to mark sandbox ready").
   */
  lostReadyWrites(): Promise<number>;
  /** Sum of a sidecar metric over every replica, for series whose labels pass `labels`. */
  metricSum(name: string, labels?: (labels: string) => boolean): Promise<number>;
  close(): Promise<void>;
}

/** Reads owner and phase rows the same way on both targets: the sidecars' table and the gateway's. */
export class ClusterTables {
  readonly pool: pg.Pool;

  constructor(databaseUrl: string) {
    this.pool = new pg.Pool({ connectionString: databaseUrl, max: 3 });
    this.pool.on('error', () => undefined);
  }

  async ownerOf(sandboxId: string): Promise<{ replicaId: string; epoch: number } | undefined> {
    const res = await this.pool.query<{ replica_id: string; epoch: string }>('SELECT replica_id, epoch FROM ohs_owners WHERE sandbox_id = $1', [sandboxId]);
    const row = res.rows[0];
    return row ? { replicaId: row.replica_id, epoch: Number(row.epoch) } : undefined;
  }

  async phaseOf(sandboxId: string): Promise<number | undefined> {
    const res = await this.pool.query<{ payload: Buffer }>("SELECT payload FROM objects WHERE object_type = 'sandbox' AND id = $1", [sandboxId]);
    const row = res.rows[0];
    return row ? sandboxPayloadPhase(row.payload).phase : undefined;
  }

  close(): Promise<void> {
    return this.pool.end();
  }
}

/** Sum of `name` over the sidecars' /metrics for the series whose label text passes `labels`. */
export async function sidecarMetricSum(replicas: readonly TargetReplica[], name: string, labels: (l: string) => boolean = () => true): Promise<number> {
  let sum = 0;
  for (const r of replicas) {
    const text = await (await fetch(`http://127.0.0.1:${r.adminPort}/metrics`)).text();
    for (const m of text.matchAll(new RegExp(`^${name}(?:\\{([^}]*)\\})? (\\S+)`, 'gm'))) if (labels(m[1] ?? '')) sum += Number(m[2]);
  }
  return sum;
}
