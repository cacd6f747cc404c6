// Sidecar processes for the raw benches: the built bundle (what the image runs, with its node flags) when it exists, else
// the sources through tsx; optionally CPU-profiled (`--cpu-prof`, written when the process exits) and
// with a raised open-file limit. Plus the smallest supervisor that makes a sidecar a sandbox's owner.
import { existsSync } from 'node:fs';
import type http2 from 'node:http2';
import { join } from 'node:path';
import pg from 'pg';
import { repoRoot, startProcess, tsEntry, type ManagedProcess } from '../../emulator/process.ts';
import { NODE_FLAGS } from '../../src/node-flags.ts';
import { CONNECT_SUPERVISOR, connectH2, helloFrame } from './raw-clients.ts';

export interface BenchSidecar {
  name: string;
  proc: ManagedProcess;
  publicPort: number;
  peerPort: number;
  adminPort: number;
  /** SIGTERM (drain, then exit: a CPU profile is written), SIGKILL after a grace. */
  stop(): Promise<void>;
}

export interface BenchSidecarOptions {
  gatewayPort: number;
  databaseUrl: string;
  redisUrl: string;
  redisKeyPrefix: string;
  peerSecret: string;
  extraArgs?: string[];
  /** Directory for a `--cpu-prof` profile named after the sidecar. */
  cpuProfDir?: string;
  /** Open-file limit for the process (`ulimit -n` in a shell before exec). */
  noFile?: number;
  nodeArgs?: string[];
  /** Print the sidecar's output lines, prefixed with its name. */
  echo?: boolean;
}

/** How the sidecar is started: the bundle `make build` wrote, or the sources. */
export function sidecarEntry(): { command: string[]; what: string } {
  const bundle = join(repoRoot, 'dist', 'main.js');
  // With the image's node flags, so that a bench measures what the image runs.
  if (existsSync(bundle)) return { command: [process.execPath, ...NODE_FLAGS, bundle], what: 'dist/main.js' };
  const [node, ...rest] = tsEntry('src/main.ts');
  return { command: [node as string, ...NODE_FLAGS, ...rest], what: 'src/main.ts (tsx)' };
}

export async function startBenchSidecar(name: string, opts: BenchSidecarOptions): Promise<BenchSidecar> {
  const [node, ...rest] = sidecarEntry().command;
  const prof = opts.cpuProfDir ? ['--cpu-prof', '--cpu-prof-dir', opts.cpuProfDir, '--cpu-prof-name', `${name}.cpuprofile`] : [];
  const args = [
    ...(opts.nodeArgs ?? []),
    ...prof,
    ...rest,
    '--replica-id',
    name,
    '--listen',
    '127.0.0.1:0',
    '--peer-listen',
    '127.0.0.1:0',
    '--admin-listen',
    '127.0.0.1:0',
    '--gateway',
    `http://127.0.0.1:${opts.gatewayPort}`,
    '--database-url',
    opts.databaseUrl,
    '--redis-url',
    opts.redisUrl,
    '--redis-key-prefix',
    opts.redisKeyPrefix,
    '--peer-secret',
    opts.peerSecret,
    // A bench moves no sessions: no rebalancing, no shadows (seed Hellos are not JWT-verified anyway).
    '--rebalance',
    'off',
    '--readiness-mode',
    'off',
    '--shutdown-grace-ms',
    '4000',
    ...(opts.extraArgs ?? []),
  ];
  const command = opts.noFile ? ['sh', '-c', `ulimit -n ${opts.noFile} && exec "$0" "$@"`, node as string, ...args] : [node as string, ...args];
  const proc = await startProcess(`sidecar-${name}`, command, { readyTimeoutMs: 30_000, echo: opts.echo ?? false });
  return {
    name,
    proc,
    publicPort: proc.ready.listenPort as number,
    peerPort: proc.ready.peerPort as number,
    adminPort: proc.ready.adminPort as number,
    stop: () => proc.kill('SIGTERM', 15_000),
  };
}

export interface HeldSupervisor {
  session: http2.ClientHttp2Session;
  close(): void;
}

/** A ConnectSupervisor stream with a seed Hello (no JWT: a plaintext seed gateway authenticates nobody). */
export async function holdSupervisor(port: number, sandboxId: string): Promise<HeldSupervisor> {
  const session = await connectH2(port);
  const stream = session.request({ ':method': 'POST', ':path': CONNECT_SUPERVISOR, 'content-type': 'application/grpc', te: 'trailers' }, { endStream: false });
  stream.on('error', () => undefined);
  stream.write(helloFrame(sandboxId));
  stream.resume();
  return { session, close: () => session.destroy() };
}

/** Waits until `ohs_owners` names `replicaId` as the sandbox's owner. */
export async function waitForOwner(databaseUrl: string, sandboxId: string, replicaId: string, timeoutMs = 15_000): Promise<void> {
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  try {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const res = await client.query<{ replica_id: string }>('SELECT replica_id FROM ohs_owners WHERE sandbox_id = $1', [sandboxId]);
      if (res.rows[0]?.replica_id === replicaId) return;
      if (Date.now() > deadline) throw new Error(`${sandboxId} not owned by ${replicaId} after ${timeoutMs} ms (row: ${JSON.stringify(res.rows[0] ?? null)})`);
      await new Promise((r) => setTimeout(r, 50));
    }
  } finally {
    await client.end();
  }
}
